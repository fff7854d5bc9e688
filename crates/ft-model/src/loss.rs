//! The causal language-modelling loss of a training batch.

use candle_core::{DType, Result, Tensor};
use ft_data::Batch;

use crate::lora::LoraAdapter;
use crate::model::{Inputs, Transformer};

/// The loss of one batch.
#[derive(Debug, Clone)]
pub struct BatchLoss {
    /// Mean NLL over the label tokens of the whole batch (what training minimises).
    pub mean: Tensor,
    /// `(rows, len - 1)` NLL of predicting token `t + 1` at position `t`; 0 where it is not a label.
    pub per_token: Tensor,
    /// Number of label tokens.
    pub num_labels: usize,
}

/// Mean NLL over the batch's label tokens: position `t` predicts token `t + 1` where
/// `labels[t + 1]` is set (a packed example's first token never is).
pub fn causal_lm_loss(
    model: &Transformer,
    batch: &Batch,
    lora: Option<&LoraAdapter>,
) -> Result<BatchLoss> {
    let device = model.device();
    let inputs = Inputs::from_batch(batch, device)?;
    let (rows, width) = inputs.tokens.dims2()?;
    if width < 2 {
        candle_core::bail!("a batch needs rows of at least two tokens");
    }
    let logits = model.forward(&inputs, None, lora)?; // (rows, width, vocab)
    let predicting = logits.narrow(1, 0, width - 1)?.flatten_to(1)?; // (rows*(width-1), vocab)
    let targets = inputs.tokens.narrow(1, 1, width - 1)?.flatten_all()?;
    let mask: Vec<f32> = batch
        .labels
        .iter()
        .flat_map(|row| row.iter().skip(1).map(|&l| f32::from(u8::from(l))))
        .collect();
    let num_labels = mask.iter().filter(|m| **m > 0.0).count();
    let mask = Tensor::from_vec(mask, rows * (width - 1), device)?;
    let (mean, per_token) = ft_kernels::masked_cross_entropy(&predicting, &targets, &mask)?;
    Ok(BatchLoss {
        mean,
        per_token: per_token.to_dtype(DType::F32)?.reshape((rows, width - 1))?,
        num_labels,
    })
}

/// Sums `per_token` NLL of each example in `batch` (by the order of `batch.examples`).
pub fn per_example_nll(batch: &Batch, per_token: &Tensor) -> Result<Vec<f32>> {
    let per_token: Vec<Vec<f32>> = per_token.to_vec2()?;
    let mut sums = Vec::with_capacity(batch.examples.len());
    for (row, nll) in per_token.iter().enumerate() {
        match &batch.segments {
            None => sums.push(nll.iter().sum()),
            Some(segments) => {
                let segments = &segments[row];
                let count = segments
                    .iter()
                    .filter(|s| **s != u32::MAX)
                    .max()
                    .map_or(0, |m| *m as usize + 1);
                let mut row_sums = vec![0f32; count];
                // nll[t] is for token t + 1, which belongs to segment segments[t + 1].
                for (t, value) in nll.iter().enumerate() {
                    if let Some(&s) = segments.get(t + 1) {
                        if s != u32::MAX {
                            row_sums[s as usize] += value;
                        }
                    }
                }
                sums.extend(row_sums);
            }
        }
    }
    Ok(sums)
}
