//! Rotary position embeddings (HF's non-interleaved "rotate half" form) with a working backward.

use candle_core::{DType, Device, Result, Tensor, D};

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
/// Uses candle's fused kernel when no gradient flows (it has no backward), and differentiable
/// primitives otherwise.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &cos.contiguous()?,
            &sin.contiguous()?,
        );
    }
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
        let composed = rope(x.as_tensor(), &cos, &sin)?;
        let fused = rope(&x.as_tensor().detach(), &cos, &sin)?;
        let diff = (&composed - &fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "fused and composed differ by {diff}");
        let grads = composed.sqr()?.sum_all()?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        Ok(())
    }
}
