//! SwiGLU's gating, `silu(gate) · up`, with a hand-written backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::host::{f32_slice, fused_backward_applies};

/// Elements handed to one rayon task.
const CHUNK: usize = 16 * 1024;

/// `silu(gate) · up`, elementwise.
///
/// With no gradient, candle's ops (as inference always ran). With one on the CPU, a fused op
/// whose backward is written by hand: it keeps `gate` and `up` (the matmul outputs the graph
/// holds anyway) and nothing of the sigmoid or the product. Elsewhere (another device, or
/// [`crate::backward_path::with_composed`]), candle's differentiable ops.
///
/// # Shapes
/// `gate, up: (..)`, equal → `(..)`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let tracked = gate.track_op() || up.track_op();
    if tracked
        && !crate::backward_path::composed()
        && (fused_backward_applies(gate) || fused_backward_applies(up))
        && gate.dtype() == up.dtype()
    {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu);
    }
    swiglu_composed(gate, up)
}

/// The composition of candle ops: the reference for the fused op.
pub fn swiglu_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    candle_nn::Activation::Silu.forward(gate)? * up
}

/// The gradients of [`swiglu`] with respect to `gate` and `up`, given `dy`:
/// `d_gate = dy·up·σ(g)·(1 + g·(1 − σ(g)))`, `d_up = dy·silu(g)`. One fused pass on the CPU,
/// candle ops elsewhere.
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (gate, up, dy) = (gate.detach(), up.detach(), dy.detach());
    if gate.device().is_cpu() && gate.dtype() == candle_core::DType::F32 {
        // Both gradients from one pass, stacked as (2, n).
        let (gate, up, dy) = (gate.contiguous()?, up.contiguous()?, dy.contiguous()?);
        let both = gate.apply_op3_no_bwd(&up, &dy, &SwiGluBackward)?;
        let shape = gate.shape();
        return Ok((both.get(0)?.reshape(shape)?, both.get(1)?.reshape(shape)?));
    }
    let sig = candle_nn::ops::sigmoid(&gate)?;
    let silu = (&gate * &sig)?;
    let d_silu = (&sig * ((&gate * (1.0 - &sig)?)? + 1.0)?)?;
    Ok((((&dy * &up)? * d_silu)?, (&dy * silu)?))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn same_len(op: &str, a: &[f32], b: &[f32]) -> Result<()> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: inputs of {} and {} elements", a.len(), b.len());
    }
    Ok(())
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "ft-swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = f32_slice(gate, gate_layout, self.name())?;
        let up = f32_slice(up, up_layout, self.name())?;
        same_len(self.name(), gate, up)?;
        let mut out = vec![0f32; gate.len()];
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(out, (gate, up))| {
                for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    // candle's silu: x / (1 + e^-x)
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            });
        Ok((CpuStorage::F32(out), gate_layout.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (d_gate, d_up) = swiglu_backward(gate, up, grad)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// `d_gate = dy·up·σ(g)·(1 + g·(1 − σ(g)))` and `d_up = dy·silu(g)`, stacked as `(2, n)`.
struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "ft-swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = f32_slice(gate, gate_layout, self.name())?;
        let up = f32_slice(up, up_layout, self.name())?;
        let grad = f32_slice(grad, grad_layout, self.name())?;
        same_len(self.name(), gate, up)?;
        same_len(self.name(), gate, grad)?;
        let n = gate.len();
        let mut out = vec![0f32; 2 * n];
        let (d_gate, d_up) = out.split_at_mut(n);
        d_gate
            .par_chunks_mut(CHUNK)
            .zip(d_up.par_chunks_mut(CHUNK))
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|(((d_gate, d_up), (gate, up)), grad)| {
                for i in 0..gate.len() {
                    let (g, u, dy) = (gate[i], up[i], grad[i]);
                    let s = sigmoid(g);
                    d_gate[i] = dy * u * s * (1.0 + g * (1.0 - s));
                    d_up[i] = dy * g * s;
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_of};
    use candle_core::{Device, Var};

    #[test]
    fn fused_gradients_equal_autograd_of_the_composition() -> Result<()> {
        let device = Device::Cpu;
        // Not a multiple of the task chunk.
        let shape = (3, 41, 1536);
        let gate = Var::randn(0f32, 2., shape, &device)?;
        let up = Var::randn(0f32, 1., shape, &device)?;
        let upstream = Tensor::randn(0f32, 1., shape, &device)?;
        let fused = swiglu(gate.as_tensor(), up.as_tensor())?;
        let composed = swiglu_composed(gate.as_tensor(), up.as_tensor())?;
        assert_close(&fused, &composed, 1e-6)?;
        for input in [gate.as_tensor(), up.as_tensor()] {
            let g_fused = grad_of(&fused, &upstream, input)?;
            let g_composed = grad_of(&composed, &upstream, input)?;
            assert_close(&g_fused, &g_composed, 1e-5)?;
        }
        Ok(())
    }
}
