//! The causal language-modelling loss of a training batch.

use candle_core::{DType, Result, Tensor};
use ft_data::Batch;

use crate::linear::Weight;
use crate::lora::LoraAdapter;
use crate::model::{Inputs, Transformer};

/// The loss of one batch.
#[derive(Debug, Clone)]
pub struct BatchLoss {
    /// Summed NLL over the batch's label tokens (differentiable; divide by the label count of
    /// the whole accumulation group for a token-weighted mean).
    pub sum: Tensor,
    /// Mean NLL over the batch's label tokens (differentiable).
    pub mean: Tensor,
    /// `(rows, len - 1)` NLL of predicting token `t + 1` at position `t`; 0 where it is not a
    /// label. Values only, outside the autograd graph.
    pub per_token: Tensor,
    /// Number of label tokens.
    pub num_labels: usize,
    /// Label tokens the model predicts (their logits' argmax), for the token accuracy.
    pub correct: usize,
}

/// NLL over the batch's label tokens: position `t` predicts token `t + 1` where
/// `labels[t + 1]` is set (a packed example's first token never is).
///
/// Only the label positions go through the LM head and the cross-entropy: with a 49k
/// vocabulary those dominate activation memory, and prompt positions contribute nothing.
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
    let hidden = model.forward_hidden(&inputs, None, lora)?; // (rows, width, hidden)
    let hidden_size = hidden.dim(2)?;
    let predicting = hidden
        .narrow(1, 0, width - 1)?
        .reshape((rows * (width - 1), hidden_size))?;
    let positions: Vec<u32> = batch
        .labels
        .iter()
        .enumerate()
        .flat_map(|(r, row)| {
            row.iter()
                .skip(1)
                .enumerate()
                .filter(|(_, l)| **l)
                .map(move |(t, _)| (r * (width - 1) + t) as u32)
        })
        .collect();
    let num_labels = positions.len();
    if num_labels == 0 {
        candle_core::bail!("the batch has no label tokens");
    }
    let index = Tensor::from_vec(positions.clone(), num_labels, device)?;
    let targets: Vec<u32> = inputs
        .tokens
        .narrow(1, 1, width - 1)?
        .flatten_all()?
        .index_select(&index, 0)?
        .to_vec1()?;
    let predicting = predicting.index_select(&index, 0)?; // (labels, hidden)
    let head = match model.lm_head() {
        // The LM head and the cross-entropy in one op: no (labels, vocab) buffer kept.
        Weight::Dense(w) => ft_kernels::lm_head_nll(&predicting, w, &targets)?,
        Weight::Quantized(w) => ft_kernels::lm_head_nll_quantized(&predicting, w, &targets)?,
    };
    let (nll, correct) = (head.nll, head.correct);
    let sum = nll.sum_all()?;
    let mean = (&sum / num_labels as f64)?;
    let mut per_token = vec![0f32; rows * (width - 1)];
    for (&p, v) in positions.iter().zip(nll.detach().to_vec1::<f32>()?) {
        per_token[p as usize] = v;
    }
    Ok(BatchLoss {
        sum,
        mean,
        per_token: Tensor::from_vec(per_token, (rows, width - 1), device)?,
        num_labels,
        correct,
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

/// Teacher-forced NLL of a whole dataset: the mean over every label token, and per example.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetNll {
    /// Mean NLL per label token over the dataset (what `ft train` logs as `eval_loss`).
    pub mean: f64,
    /// Label tokens in the dataset.
    pub num_labels: usize,
    /// `(NLL sum, label tokens)` of each example, by its index in the batcher.
    pub per_example: Vec<(f64, usize)>,
}

/// Runs `batcher`'s batches (epoch 0 order; build it without packing) through the model with
/// `lora` and no gradient. The one evaluation loss of `ft train` and `ft eval`.
pub fn dataset_nll(
    model: &Transformer,
    batcher: &ft_data::Batcher,
    lora: Option<&LoraAdapter>,
) -> Result<DatasetNll> {
    let frozen = lora.map(LoraAdapter::detached);
    let (mut total, mut count) = (0f64, 0usize);
    let mut per_example = vec![(0f64, 0usize); batcher.examples().len()];
    for rows in batcher.plan(0) {
        let batch = batcher.batch(&rows);
        let loss = causal_lm_loss(model, &batch, frozen.as_ref())?;
        total += loss
            .per_token
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        count += loss.num_labels;
        if batch.segments.is_none() {
            let sums = per_example_nll(&batch, &loss.per_token)?;
            for ((example, sum), labels) in batch.examples.iter().zip(sums).zip(&batch.labels) {
                let n = labels.iter().skip(1).filter(|l| **l).count();
                if let Some(slot) = per_example.get_mut(*example) {
                    *slot = (sum as f64, n);
                }
            }
        }
    }
    Ok(DatasetNll {
        mean: total / count.max(1) as f64,
        num_labels: count,
        per_example,
    })
}
