//! RMSNorm with a working backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::host::{f32_slice, fused_backward_applies, with_f32};

/// Rows handed to one rayon task by the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension, as HF's `LlamaRMSNorm`.
///
/// With no gradient, candle's fused kernel. With a gradient through `x` only (a frozen norm
/// weight) on the CPU, a fused op whose backward is written by hand and keeps nothing but `x`.
/// Otherwise (another device, a trainable weight, or [`crate::backward_path::with_composed`]),
/// a composition of differentiable primitives.
///
/// # Shapes
/// `x: (.., hidden)`, `weight: (hidden)` → `(.., hidden)`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.track_op() && !weight.track_op() {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    if fused_backward_applies(x) && !weight.track_op() && !crate::backward_path::composed() {
        return x.contiguous()?.apply_op1(RmsNorm {
            weight: weight.contiguous()?,
            eps: eps as f32,
        });
    }
    rms_norm_composed(x, weight, eps)
}

/// The composition candle's autograd differentiates: the reference for the fused op.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_rms = (mean_square + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?.broadcast_mul(weight)
}

/// The gradient of [`rms_norm`] with respect to `x` (the weight frozen), given `dy`:
/// `dx = inv·w·dy − x·inv³·mean(w·dy·x)` per row, with `inv = 1/sqrt(mean(x²) + eps)`.
/// A fused kernel on the CPU, candle ops elsewhere.
pub fn rms_norm_backward(x: &Tensor, weight: &Tensor, eps: f64, dy: &Tensor) -> Result<Tensor> {
    let (x, dy) = (x.detach(), dy.detach());
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let backward = RmsNormBackward {
            weight: weight.contiguous()?,
            eps: eps as f32,
        };
        return x
            .contiguous()?
            .apply_op2_no_bwd(&dy.contiguous()?, &backward);
    }
    let hidden = x.dim(D::Minus1)? as f64;
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let weighted = dy.broadcast_mul(weight)?;
    let dot = (&weighted * &x)?.sum_keepdim(D::Minus1)?;
    let coef = ((inv.powf(3.0)? * dot)? / hidden)?;
    weighted.broadcast_mul(&inv)? - x.broadcast_mul(&coef)?
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (mean_square + eps).sqrt()
}

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "ft-rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let hidden = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let out = with_f32(&self.weight, self.name(), |w| {
            if w.len() != hidden {
                candle_core::bail!("rms-norm: weight of {} for rows of {hidden}", w.len());
            }
            let mut out = vec![0f32; x.len()];
            out.par_chunks_mut(hidden * ROWS_PER_TASK)
                .zip(x.par_chunks(hidden * ROWS_PER_TASK))
                .for_each(|(out, x)| {
                    for (out, x) in out.chunks_mut(hidden).zip(x.chunks(hidden)) {
                        let inv = inv_rms(x, self.eps);
                        for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
                            *o = (x * inv) * w;
                        }
                    }
                });
            Ok(out)
        })?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(rms_norm_backward(
            x,
            &self.weight,
            self.eps as f64,
            grad_y,
        )?))
    }
}

/// `dx = inv·w·dy − x·inv³·mean(w·dy·x)` per row, from `x` and `dy`.
struct RmsNormBackward {
    weight: Tensor,
    eps: f32,
}

impl CustomOp2 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "ft-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        dy: &CpuStorage,
        dy_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(x, x_layout, self.name())?;
        let dy = f32_slice(dy, dy_layout, self.name())?;
        if x.len() != dy.len() {
            candle_core::bail!(
                "rms-norm backward: {} inputs, {} gradients",
                x.len(),
                dy.len()
            );
        }
        let hidden = x_layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let dx = with_f32(&self.weight, self.name(), |w| {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(hidden * ROWS_PER_TASK)
                .zip(x.par_chunks(hidden * ROWS_PER_TASK))
                .zip(dy.par_chunks(hidden * ROWS_PER_TASK))
                .for_each(|((dx, x), dy)| {
                    let rows = dx
                        .chunks_mut(hidden)
                        .zip(x.chunks(hidden))
                        .zip(dy.chunks(hidden));
                    for ((dx, x), dy) in rows {
                        let inv = inv_rms(x, self.eps);
                        let dot: f32 = x.iter().zip(dy).zip(w).map(|((x, dy), w)| x * dy * w).sum();
                        let coef = inv * inv * inv * dot / hidden as f32;
                        for (((d, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                            *d = inv * w * dy - x * coef;
                        }
                    }
                });
            Ok(dx)
        })?;
        Ok((CpuStorage::F32(dx), x_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_of};
    use candle_core::{Device, Var};

    #[test]
    fn fused_and_composed_agree_and_grad_flows() -> Result<()> {
        let device = Device::Cpu;
        let x = Var::randn(0f32, 1., (2, 3, 8), &device)?;
        let w = Tensor::randn(1f32, 0.1, 8, &device)?;
        let composed = rms_norm_composed(x.as_tensor(), &w, 1e-5)?;
        let fused = rms_norm(&x.as_tensor().detach(), &w, 1e-5)?;
        assert_close(&fused, &composed, 1e-5)?;
        let grads = composed.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).expect("x is a variable");
        assert!(gx.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    #[test]
    fn hand_written_backward_equals_autograd_of_the_composition() -> Result<()> {
        let device = Device::Cpu;
        // 37 rows: not a multiple of the rows per task; 576 wide as SmolLM2.
        let x = Var::randn(0f32, 1., (37, 576), &device)?;
        let w = Tensor::randn(1f32, 0.2, 576, &device)?;
        let upstream = Tensor::randn(0f32, 1., (37, 576), &device)?;
        let fused = rms_norm(x.as_tensor(), &w, 1e-5)?;
        let composed = rms_norm_composed(x.as_tensor(), &w, 1e-5)?;
        assert_close(&fused, &composed, 1e-5)?;
        let g_fused = grad_of(&fused, &upstream, x.as_tensor())?;
        let g_composed = grad_of(&composed, &upstream, x.as_tensor())?;
        assert_close(&g_fused, &g_composed, 1e-5)
    }
}
