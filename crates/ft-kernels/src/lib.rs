//! Tensor ops for `ft` whose backward pass is correct and cheap.
//!
//! candle's fused ops (`rms_norm`, `rope`, `softmax_last_dim`, `sdpa`, `QMatMul`) have no backward
//! and silently stop the gradient, and its matmul backward always computes the weight gradient,
//! even for a frozen weight. This crate owns the replacements the model uses:
//!
//! - [`frozen_linear`]: `x·Wᵀ` for a frozen `W`; backward returns only `dX`.
//! - [`rms_norm`], [`rope`], [`swiglu`], [`attention`], [`lm_head_nll`]: in training on the
//!   CPU, fused ops whose backward is written by hand and keeps only what it needs (no
//!   gradient for frozen weights or constant tables, no softmax intermediates, no logits).
//!   [`backward_path::with_composed`] switches them back to the composition of candle
//!   primitives that candle's autograd differentiates: the reference they are tested against.
//!
//! Each op picks candle's fused kernel when no gradient flows (inference), so training and
//! serving share one model.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let x = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
//! let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &Device::Cpu)?; // (out 3, in 2)
//! let y = ft_kernels::frozen_linear(&x, &w)?;
//! assert_eq!(y.to_vec2::<f32>()?, [[1., 2., 3.], [3., 4., 7.]]);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod attention;
pub mod backward_path;
pub mod bf16_matmul;
mod frozen_linear;
mod host;
mod lm_head_loss;
mod loss;
mod masked_softmax;
mod norm;
pub mod quant;
mod rope;
mod sequence_attention;
pub mod small_matmul;
pub mod spin_pool;
mod swiglu;
#[cfg(test)]
mod testing;
pub mod threads;

pub use frozen_linear::{frozen_linear, set_naive_frozen_linear};
pub use host::hand_over_output;
pub use lm_head_loss::{lm_head_nll, lm_head_nll_quantized, LmHeadLoss};
pub use loss::masked_cross_entropy;
pub use norm::{rms_norm, rms_norm_backward, rms_norm_composed};
pub use rope::{rope, rope_backward, rope_composed, RopeTables};
pub use sequence_attention::{
    attention, attention_backward, attention_composed, attention_forward,
};
pub use swiglu::{swiglu, swiglu_backward, swiglu_composed};
