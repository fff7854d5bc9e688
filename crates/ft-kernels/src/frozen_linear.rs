//! `x·Wᵀ` for a frozen weight: backward computes `dX = dY·W` and never `dW`.
//!
//! candle's `matmul` backward always computes both operand gradients; for a LoRA model that is
//! the weight gradient of every base linear layer, computed and thrown away. Wrapping the product
//! in a `CustomOp1` over `x` alone keeps `W` out of the graph.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

static NAIVE: AtomicBool = AtomicBool::new(false);

/// Makes [`frozen_linear`] use candle's plain matmul in training too, which computes and
/// discards the weight gradient. For benchmarks that measure what the frozen op saves;
/// results are identical either way.
pub fn set_naive_frozen_linear(naive: bool) {
    NAIVE.store(naive, Ordering::Relaxed);
}

/// Multiplies `x` (`(.., in)`) by the transpose of the frozen `weight` (`(out, in)`).
///
/// When `x` carries a gradient, the result's backward yields `dX` only. When it does not
/// (inference), this is a plain matmul.
///
/// # Shapes
/// `x: (.., in)`, `weight: (out, in)` → `(.., out)`.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (out_features, in_features) = weight.dims2()?;
    let mut out_dims = x.dims().to_vec();
    let last = out_dims.len() - 1;
    if out_dims[last] != in_features {
        candle_core::bail!(
            "frozen_linear: input has {} features, weight expects {in_features}",
            out_dims[last]
        );
    }
    out_dims[last] = out_features;
    let rows = x.elem_count() / in_features;
    let x2 = x.reshape((rows, in_features))?;
    let y = if x.track_op() && x.device().is_cpu() && !NAIVE.load(Ordering::Relaxed) {
        x2.contiguous()?.apply_op1(FrozenLinear {
            weight: weight.clone(),
        })?
    } else {
        x2.matmul(&weight.t()?)?
    };
    y.reshape(out_dims)
}

/// The graph node: forward runs candle's gemm on the two storages with no copies; backward
/// returns only the input gradient.
struct FrozenLinear {
    weight: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, in_features) = x_layout.shape().dims2()?;
        let (out_features, _) = self.weight.dims2()?;
        let weight_t = self.weight.t()?;
        let (w_storage, w_layout) = weight_t.storage_and_layout();
        let Storage::Cpu(w) = &*w_storage else {
            candle_core::bail!("frozen-linear: the weight is not on the CPU");
        };
        let y = x.matmul(w, (1, rows, out_features, in_features), x_layout, w_layout)?;
        Ok((y, Shape::from((rows, out_features))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_y.matmul(&self.weight)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn grad_matches_plain_matmul_and_skips_weight() -> Result<()> {
        let device = Device::Cpu;
        let x = Var::randn(0f32, 1., (2, 3, 5), &device)?;
        let w = Tensor::randn(0f32, 1., (4, 5), &device)?;
        let ours = frozen_linear(x.as_tensor(), &w)?;
        let plain = x.as_tensor().broadcast_matmul(&w.t()?)?;
        let diff = (&ours - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "forward differs by {diff}");

        let grads_ours = ours.sqr()?.sum_all()?.backward()?;
        let grads_plain = plain.sqr()?.sum_all()?.backward()?;
        let (gx_ours, gx_plain) = (
            grads_ours.get(x.as_tensor()).expect("x is a variable"),
            grads_plain.get(x.as_tensor()).expect("x is a variable"),
        );
        let diff = (gx_ours - gx_plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "dX differs by {diff}");
        assert!(
            grads_ours.get(&w).is_none(),
            "the frozen weight got a gradient"
        );
        Ok(())
    }
}
