//! The LM head and the cross-entropy as one op: per-token NLL of `targets` under
//! `hidden·Wᵀ`, without keeping a `(tokens, vocab)` buffer for backward.
//!
//! With a 49k vocabulary the logits of a batch's label tokens, their log-softmax and its
//! gradient are the largest buffers of a training step. Each token's NLL depends on its own
//! hidden state only, so its gradient is `(softmax − onehot)·W` times the upstream gradient of
//! that NLL (a scalar per token). The forward computes those `(tokens, hidden)` rows chunk by
//! chunk (as Liger's fused linear cross-entropy does) and the backward only scales them.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::host::{fused_backward_applies, with_f32};

/// Tokens whose logits are materialised at once: 128 × 49k × 4 bytes = 25 MB.
const CHUNK_TOKENS: usize = 128;

/// The loss of the label tokens, and how many of them the head predicts.
#[derive(Debug, Clone)]
pub struct LmHeadLoss {
    /// Per-token NLL `(n)` (differentiable).
    pub nll: Tensor,
    /// Tokens whose target is the argmax of their logits (the first maximum): the numerator
    /// of TRL's `mean_token_accuracy`.
    pub correct: usize,
}

/// Per-token NLL `(n)` of `targets` under the logits `hidden·weightᵀ`, and how many targets
/// are the logits' argmax.
///
/// With a gradient on the CPU, the fused op above; otherwise (inference, another device,
/// [`crate::backward_path::with_composed`]) the frozen linear and
/// [`crate::masked_cross_entropy`], whose autograd keeps the logits.
///
/// # Shapes
/// `hidden: (n, hidden)`, `weight: (vocab, hidden)` frozen, `targets: n` ids → `(n)`.
pub fn lm_head_nll(hidden: &Tensor, weight: &Tensor, targets: &[u32]) -> Result<LmHeadLoss> {
    fused_or_composed(
        hidden,
        weight.dim(0)?,
        targets,
        |chunk| match crate::small_matmul::x_wt_tensor(chunk, weight)? {
            Some(logits) => Ok(logits),
            None => chunk.matmul(&weight.t()?),
        },
        |d_logits| match crate::small_matmul::x_w_tensor(d_logits, weight)? {
            Some(d) => Ok(d),
            None => d_logits.matmul(weight),
        },
        |hidden| crate::frozen_linear(hidden, weight),
    )
}

/// As [`lm_head_nll`] for a head kept quantized (training on a quantized base): each chunk's
/// logits and its `(softmax − onehot)·W` are gemms over weight tiles dequantized on the fly, so
/// neither the `(tokens, vocab)` logits nor an f32 copy of the head outlive a chunk.
pub fn lm_head_nll_quantized(
    hidden: &Tensor,
    weight: &std::sync::Arc<crate::quant::QuantMatrix>,
    targets: &[u32],
) -> Result<LmHeadLoss> {
    fused_or_composed(
        hidden,
        weight.rows(),
        targets,
        |chunk| crate::quant::dequantized_gemm(chunk, weight),
        |d_logits| crate::quant::dequantized_gemm_backward_tensor(d_logits, weight),
        |hidden| crate::quant::quantized_linear(hidden, weight),
    )
}

/// The fused op over a head given by its two products (`x·Wᵀ` and `dY·W`), or the composed
/// path (`head` then [`crate::masked_cross_entropy`]) where the fused one does not apply.
fn fused_or_composed(
    hidden: &Tensor,
    vocab: usize,
    targets: &[u32],
    logits_of: impl Fn(&Tensor) -> Result<Tensor>,
    d_hidden_of: impl Fn(&Tensor) -> Result<Tensor>,
    head: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<LmHeadLoss> {
    let (n, _) = hidden.dims2()?;
    if targets.len() != n {
        candle_core::bail!("lm-head loss: {n} hidden states, {} targets", targets.len());
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("lm-head loss: target {bad} is outside the vocabulary of {vocab}");
    }
    if !fused_backward_applies(hidden) || crate::backward_path::composed() {
        let logits = head(hidden)?;
        let predicted: Vec<u32> = logits.detach().argmax(1)?.to_vec1()?;
        let correct = predicted
            .iter()
            .zip(targets)
            .filter(|(p, t)| p == t)
            .count();
        let targets = Tensor::from_slice(targets, n, hidden.device())?;
        let ones = Tensor::ones(n, DType::F32, hidden.device())?;
        let nll = crate::masked_cross_entropy(&logits, &targets, &ones)?.1;
        return Ok(LmHeadLoss { nll, correct });
    }
    let frozen = hidden.detach().contiguous()?;
    let mut nll = Vec::with_capacity(n);
    let mut correct = 0;
    let mut d_hidden = Vec::new();
    for start in (0..n).step_by(CHUNK_TOKENS) {
        let len = CHUNK_TOKENS.min(n - start);
        let chunk = frozen.narrow(0, start, len)?.contiguous()?;
        let logits = logits_of(&chunk)?; // (len, vocab)
        let chunk_targets = &targets[start..start + len];
        let (chunk_nll, d_logits) = softmax_minus_onehot(&logits, chunk_targets, vocab)?;
        drop(logits);
        correct += chunk_nll.iter().filter(|(_, hit)| *hit).count();
        nll.extend(chunk_nll.into_iter().map(|(value, _)| value));
        let d_logits = Tensor::from_vec(d_logits, (len, vocab), hidden.device())?;
        d_hidden.push(d_hidden_of(&d_logits)?);
    }
    let op = LmHeadNll {
        nll: Mutex::new(Some(nll)),
        d_hidden: Tensor::cat(&d_hidden, 0)?,
    };
    let nll = hidden.contiguous()?.apply_op1(op)?;
    Ok(LmHeadLoss { nll, correct })
}

/// A token's NLL and whether its target is the argmax of its logits.
type TokenLoss = (f32, bool);

/// Per row of `logits`: its NLL of `targets[row]` and whether the target is the row's argmax
/// (its first maximum), and `softmax(row) − onehot(target)`.
fn softmax_minus_onehot(
    logits: &Tensor,
    targets: &[u32],
    vocab: usize,
) -> Result<(Vec<TokenLoss>, Vec<f32>)> {
    with_f32(logits, "lm-head loss", |logits| {
        let mut grad = vec![0f32; logits.len()];
        let nll = grad
            .par_chunks_mut(vocab)
            .zip(logits.par_chunks(vocab))
            .zip(targets.par_iter())
            .map(|((grad, row), &target)| {
                let (argmax, max) =
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |(i, m), (j, &l)| {
                                if l > m {
                                    (j, l)
                                } else {
                                    (i, m)
                                }
                            },
                        );
                let mut sum = 0f64;
                for (g, &l) in grad.iter_mut().zip(row) {
                    let e = (l - max).exp();
                    *g = e;
                    sum += e as f64;
                }
                let log_sum = sum.ln() as f32;
                let inv = (1.0 / sum) as f32;
                for g in grad.iter_mut() {
                    *g *= inv;
                }
                grad[target as usize] -= 1.0;
                (
                    max + log_sum - row[target as usize],
                    argmax == target as usize,
                )
            })
            .collect();
        Ok((nll, grad))
    })
}

struct LmHeadNll {
    nll: Mutex<Option<Vec<f32>>>,
    /// `(softmax − onehot)·W` per token: the gradient of its NLL with respect to its hidden state.
    d_hidden: Tensor,
}

impl CustomOp1 for LmHeadNll {
    fn name(&self) -> &'static str {
        "ft-lm-head-nll"
    }

    fn cpu_fwd(&self, _hidden: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let nll = self.nll.lock().ok().and_then(|mut nll| nll.take());
        let Some(nll) = nll else {
            candle_core::bail!("lm-head loss: the op ran twice");
        };
        let (n, _) = layout.shape().dims2()?;
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, _hidden: &Tensor, _nll: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            self.d_hidden.broadcast_mul(&grad.detach().unsqueeze(1)?)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, grad_of};
    use candle_core::{Device, Var};

    #[test]
    fn fused_nll_and_gradient_equal_autograd_of_the_composition() -> Result<()> {
        let device = Device::Cpu;
        // More tokens than one chunk, and a chunk that is not full.
        let (n, hidden, vocab) = (CHUNK_TOKENS + 37, 48, 1003);
        let h = Var::randn(0f32, 1., (n, hidden), &device)?;
        let w = Tensor::randn(0f32, 0.5, (vocab, hidden), &device)?;
        let targets = some_predicted_targets(&h.as_tensor().matmul(&w.t()?)?)?;
        let upstream = Tensor::randn(0f32, 1., n, &device)?;
        let fused = lm_head_nll(h.as_tensor(), &w, &targets)?;
        let composed =
            crate::backward_path::with_composed(|| lm_head_nll(h.as_tensor(), &w, &targets))?;
        let expected = reference_correct(&h.as_tensor().matmul(&w.t()?)?, &targets)?;
        assert!(expected > 0 && expected < n, "{expected} of {n}");
        assert_eq!((fused.correct, composed.correct), (expected, expected));
        let (fused, composed) = (fused.nll, composed.nll);
        assert_close(&fused, &composed, 1e-5)?;
        let g_fused = grad_of(&fused, &upstream, h.as_tensor())?;
        let g_composed = grad_of(&composed, &upstream, h.as_tensor())?;
        assert_close(&g_fused, &g_composed, 1e-5)
    }

    #[test]
    fn fused_quantized_head_equals_autograd_of_the_composition() -> Result<()> {
        use crate::quant::{QuantMatrix, QuantType};
        let device = Device::Cpu;
        let (n, hidden, vocab) = (CHUNK_TOKENS + 21, 64, 1100);
        let h = Var::randn(0f32, 1., (n, hidden), &device)?;
        let dense = Tensor::randn(0f32, 0.5, (vocab, hidden), &device)?;
        let q = candle_core::quantized::QTensor::quantize(&dense, QuantType::Q4_0.to_ggml())?;
        let bytes = q.data()?.to_vec();
        let w = std::sync::Arc::new(QuantMatrix::new(QuantType::Q4_0, vocab, hidden, bytes)?);
        let dequantized = Tensor::from_vec(w.dequantize(), (vocab, hidden), &device)?;
        let logits = h.as_tensor().matmul(&dequantized.t()?)?;
        let targets = some_predicted_targets(&logits)?;
        let upstream = Tensor::randn(0f32, 1., n, &device)?;
        let fused = lm_head_nll_quantized(h.as_tensor(), &w, &targets)?;
        // The composed path on the same (dequantized) weights, dense.
        let composed = crate::backward_path::with_composed(|| {
            lm_head_nll(h.as_tensor(), &dequantized, &targets)
        })?;
        let expected = reference_correct(&logits, &targets)?;
        assert!(expected > 0 && expected < n, "{expected} of {n}");
        assert_eq!((fused.correct, composed.correct), (expected, expected));
        let (fused, composed) = (fused.nll, composed.nll);
        assert_close(&fused, &composed, 1e-5)?;
        let g_fused = grad_of(&fused, &upstream, h.as_tensor())?;
        let g_composed = grad_of(&composed, &upstream, h.as_tensor())?;
        assert_close(&g_fused, &g_composed, 1e-5)
    }

    /// Every third token's target is its logits' argmax (found by a plain loop), the others
    /// spread over the vocabulary: some hits, some misses.
    fn some_predicted_targets(logits: &Tensor) -> Result<Vec<u32>> {
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        Ok(rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                if i % 3 == 0 {
                    first_max(row) as u32
                } else {
                    ((i * 7919) % row.len()) as u32
                }
            })
            .collect())
    }

    fn first_max(row: &[f32]) -> usize {
        let mut best = 0;
        for (j, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = j;
            }
        }
        best
    }

    /// Targets that are their row's first maximum, counted by plain loops.
    fn reference_correct(logits: &Tensor, targets: &[u32]) -> Result<usize> {
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        Ok(rows
            .iter()
            .zip(targets)
            .filter(|(row, &t)| first_max(row) == t as usize)
            .count())
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error() -> Result<()> {
        let device = Device::Cpu;
        let h = Var::randn(0f32, 1., (2, 4), &device)?;
        let w = Tensor::randn(0f32, 1., (5, 4), &device)?;
        assert!(lm_head_nll(h.as_tensor(), &w, &[1, 5]).is_err());
        Ok(())
    }
}
