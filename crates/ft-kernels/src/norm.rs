//! RMSNorm with a working backward.

use candle_core::{Result, Tensor, D};

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension, as HF's `LlamaRMSNorm`.
///
/// Uses candle's fused kernel when no gradient flows through `x` (its fused op has no backward),
/// and a composition of differentiable primitives otherwise.
///
/// # Shapes
/// `x: (.., hidden)`, `weight: (hidden)` → `(.., hidden)`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.track_op() && !weight.track_op() {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_rms = (mean_square + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?.broadcast_mul(weight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_and_composed_agree_and_grad_flows() -> Result<()> {
        let device = Device::Cpu;
        let x = Var::randn(0f32, 1., (2, 3, 8), &device)?;
        let w = Tensor::randn(1f32, 0.1, 8, &device)?;
        let composed = rms_norm(x.as_tensor(), &w, 1e-5)?;
        let fused = rms_norm(&x.as_tensor().detach(), &w, 1e-5)?;
        let diff = (&composed - &fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "fused and composed differ by {diff}");
        let grads = composed.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).expect("x is a variable");
        assert!(gx.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }
}
