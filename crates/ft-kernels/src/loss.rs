//! Cross-entropy over label tokens only (candle's `cross_entropy` has no ignore index).

use candle_core::{DType, Result, Tensor, D};

/// Mean negative log-likelihood of `labels` under `logits`, over positions where `mask` is 1.
///
/// Returns `(mean_loss, per_position_nll)`; `per_position_nll` is 0 where `mask` is 0.
/// Matches `torch.nn.functional.cross_entropy(.., ignore_index=-100)` when masked positions are
/// the ignored ones. The caller shifts logits and labels (position `i` predicts token `i+1`).
///
/// # Shapes
/// `logits: (n, vocab)`, `labels: (n)` u32, `mask: (n)` f32 of 0/1 → `(scalar, (n))`.
pub fn masked_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let log_probs = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = log_probs.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?; // (n)
    let nll = picked.neg()?.mul(mask)?;
    let count = mask.sum_all()?.to_scalar::<f32>()?;
    if count == 0.0 {
        candle_core::bail!("masked_cross_entropy: no position has a label");
    }
    let mean = (nll.sum_all()? / count as f64)?;
    Ok((mean, nll))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_hand_computed_values() -> Result<()> {
        let device = Device::Cpu;
        // log_softmax([0, ln 3]) = [ln 1/4, ln 3/4]
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [0., 0.]], &device)?;
        let labels = Tensor::new(&[1u32, 0], &device)?;
        let mask = Tensor::new(&[1f32, 0.], &device)?;
        let (mean, nll) = masked_cross_entropy(&logits, &labels, &mask)?;
        let expected = -(0.75f32).ln();
        assert!((mean.to_scalar::<f32>()? - expected).abs() < 1e-6);
        assert_eq!(nll.to_vec1::<f32>()?[1], 0.0);
        Ok(())
    }
}
