//! Rotary position embeddings (HF's non-interleaved "rotate half" form) with a working backward.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::host::{f32_slice, fused_backward_applies, with_f32};

/// Precomputed `cos` and `sin` for every position up to a maximum, `(max_positions, head_dim/2)`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    /// Builds the tables from per-pair inverse frequencies (`head_dim/2` values, already scaled
    /// by any rope scaling).
    pub fn new(
        inv_freq: &[f32],
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let inv_freq = Tensor::new(inv_freq, device)?;
        let positions = Tensor::arange(0u32, max_positions as u32, device)?.to_dtype(DType::F32)?;
        let angles = positions
            .unsqueeze(1)?
            .broadcast_mul(&inv_freq.unsqueeze(0)?)?; // (max_positions, head_dim/2)
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// `(cos, sin)` as host vectors, `(max_positions, head_dim/2)` row-major.
    pub fn host(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        Ok((flat(&self.cos)?, flat(&self.sin)?))
    }

    /// The number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// `cos` and `sin` gathered for `positions` (`(batch, seq)`, u32): each `(batch, seq, head_dim/2)`.
    pub fn gather(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (batch, seq) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = self.cos.dim(1)?;
        let cos = self
            .cos
            .index_select(&flat, 0)?
            .reshape((batch, seq, half))?;
        let sin = self
            .sin
            .index_select(&flat, 0)?
            .reshape((batch, seq, half))?;
        Ok((cos, sin))
    }
}

/// Rotates `x` (`(batch, heads, seq, head_dim)`) by the angles in `cos`/`sin`
/// (`(batch, seq, head_dim/2)`): `x·cos + rotate_half(x)·sin` with the halves duplicated, as HF.
///
/// With no gradient, candle's fused kernel. With one on the CPU, a fused op whose backward
/// rotates the gradient back by `-θ` and keeps nothing. Elsewhere (another device, or
/// [`crate::backward_path::with_composed`]) differentiable primitives.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &cos.contiguous()?,
            &sin.contiguous()?,
        );
    }
    if fused_backward_applies(x) && !crate::backward_path::composed() {
        return x.contiguous()?.apply_op1(Rope {
            cos: cos.contiguous()?,
            sin: sin.contiguous()?,
            inverse: false,
        });
    }
    rope_composed(x, cos, sin)
}

/// The composition candle's autograd differentiates: the reference for the fused op.
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let head_dim = x.dim(D::Minus1)?;
    let half = head_dim / 2;
    // (batch, 1, seq, head_dim): the halves duplicated, broadcast over heads.
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// The gradient of [`rope`] given `dy`: the rotation by `-θ` (the rotation is orthogonal).
/// A fused kernel on the CPU, candle's rope with `-sin` elsewhere.
pub fn rope_backward(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dy = dy.detach().contiguous()?;
    if dy.device().is_cpu() && dy.dtype() == DType::F32 {
        let back = Rope {
            cos: cos.contiguous()?,
            sin: sin.contiguous()?,
            inverse: true,
        };
        return dy.apply_op1_no_bwd(&back);
    }
    candle_nn::rotary_emb::rope(&dy, &cos.contiguous()?, &sin.neg()?.contiguous()?)
}

/// The rotation by `θ` (or by `-θ`, `inverse`: the backward, since the rotation is orthogonal).
struct Rope {
    cos: Tensor,
    sin: Tensor,
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "ft-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let (batch, heads, seq, head_dim) = layout.shape().dims4()?;
        let half = head_dim / 2;
        if self.cos.dims() != [batch, seq, half] || self.sin.dims() != [batch, seq, half] {
            candle_core::bail!(
                "rope: tables {:?} for input {:?}",
                self.cos.dims(),
                layout.shape()
            );
        }
        let sign = if self.inverse { -1f32 } else { 1f32 };
        let mut out = vec![0f32; x.len()];
        with_f32(&self.cos, self.name(), |cos| {
            with_f32(&self.sin, self.name(), |sin| {
                // One task per (batch, head): `seq · head_dim` elements.
                out.par_chunks_mut(seq * head_dim)
                    .zip(x.par_chunks(seq * head_dim))
                    .enumerate()
                    .for_each(|(task, (out, x))| {
                        let b = task / heads.max(1);
                        let rows = out.chunks_mut(head_dim).zip(x.chunks(head_dim));
                        for (t, (out, x)) in rows.enumerate() {
                            let at = (b * seq + t) * half;
                            let (c, s) = (&cos[at..at + half], &sin[at..at + half]);
                            let (x1, x2) = x.split_at(half);
                            let (o1, o2) = out.split_at_mut(half);
                            for i in 0..half {
                                let s = sign * s[i];
                                o1[i] = x1[i] * c[i] + (-x2[i]) * s;
                                o2[i] = x2[i] * c[i] + x1[i] * s;
                            }
                        }
                    });
                Ok(())
            })
        })?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(rope_backward(grad_y, &self.cos, &self.sin)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn fused_and_composed_agree_and_grad_flows() -> Result<()> {
        let device = Device::Cpu;
        let inv_freq: Vec<f32> = (0..4)
            .map(|i| 1.0 / 10000f32.powf(i as f32 / 4.0))
            .collect();
        let tables = RopeTables::new(&inv_freq, 16, DType::F32, &device)?;
        let positions = Tensor::new(&[[0u32, 1, 2], [5, 6, 7]], &device)?;
        let (cos, sin) = tables.gather(&positions)?;
        let x = Var::randn(0f32, 1., (2, 3, 3, 8), &device)?;
        let composed = rope_composed(x.as_tensor(), &cos, &sin)?;
        let inference = rope(&x.as_tensor().detach(), &cos, &sin)?;
        let fused = rope(x.as_tensor(), &cos, &sin)?;
        crate::testing::assert_close(&inference, &composed, 1e-6)?;
        crate::testing::assert_close(&fused, &composed, 1e-6)?;
        let upstream = Tensor::randn(0f32, 1., (2, 3, 3, 8), &device)?;
        let g_fused = crate::testing::grad_of(&fused, &upstream, x.as_tensor())?;
        let g_composed = crate::testing::grad_of(&composed, &upstream, x.as_tensor())?;
        crate::testing::assert_close(&g_fused, &g_composed, 1e-6)
    }
}
