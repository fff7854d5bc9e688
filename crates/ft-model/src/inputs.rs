//! What a forward pass reads ([`Inputs`]) and the attention mask built from it.

use candle_core::{DType, Device, Result, Tensor};

/// What one forward pass reads: the new tokens of each row, their positions, and which keys
/// (cached and new) each row may attend to.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// `(batch, seq)` u32 token ids.
    pub tokens: Tensor,
    /// `(batch, seq)` u32 RoPE positions of those tokens.
    pub positions: Tensor,
    /// `(batch, past + seq)` 0/1: which keys are real (not padding), cached ones first.
    pub key_mask: Vec<Vec<u8>>,
    /// `(batch, seq)` example index of each token in packed rows: a query attends only to
    /// keys of its own example. `None` when each row is one sequence.
    pub segments: Option<Vec<Vec<u32>>>,
}

impl Inputs {
    /// Right-padded training rows: positions `0..seq`, keys masked by `attention_mask`
    /// (`(batch, seq)` of 0/1, as HF's `attention_mask`).
    pub fn from_attention_mask(tokens: &Tensor, attention_mask: &[Vec<u8>]) -> Result<Self> {
        let (batch, seq) = tokens.dims2()?;
        let positions = Tensor::arange(0u32, seq as u32, tokens.device())?
            .unsqueeze(0)?
            .repeat((batch, 1))?;
        Ok(Self {
            tokens: tokens.clone(),
            positions,
            key_mask: attention_mask.to_vec(),
            segments: None,
        })
    }

    /// The inputs of a training batch from `ft-data` (padded or packed).
    pub fn from_batch(batch: &ft_data::Batch, device: &Device) -> Result<Self> {
        let rows = batch.input_ids.len();
        let width = batch.input_ids.first().map_or(0, Vec::len);
        let flat =
            |rows_of: &[Vec<u32>]| -> Vec<u32> { rows_of.iter().flatten().copied().collect() };
        Ok(Self {
            tokens: Tensor::from_vec(flat(&batch.input_ids), (rows, width), device)?,
            positions: Tensor::from_vec(flat(&batch.positions), (rows, width), device)?,
            key_mask: batch.attention_mask.clone(),
            segments: batch.segments.clone(),
        })
    }
}

/// The additive attention bias `(batch, 1, 1, seq, past + seq)`: 0 where a query may look,
/// a large negative number where the key is in the future, is padding, belongs to another
/// packed example or (with a sliding `window`) is `window` or more tokens back.
pub(crate) fn attention_bias(
    key_mask: &[Vec<u8>],
    segments: Option<&[Vec<u32>]>,
    seq: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let batch = key_mask.len();
    let total = key_mask.first().map_or(0, Vec::len);
    let past = total.saturating_sub(seq);
    // Not -inf: a row whose keys are all masked (a left-padding query) must not become NaN.
    const MASKED: f32 = -1e30;
    let mut bias = vec![0f32; batch * seq * total];
    for (row, keys) in key_mask.iter().enumerate() {
        if keys.len() != total {
            candle_core::bail!("key_mask rows have different lengths");
        }
        let row_segments = segments.and_then(|s| s.get(row));
        for query in 0..seq {
            let offset = (row * seq + query) * total;
            for (key, &real) in keys.iter().enumerate() {
                let other_example = row_segments.is_some_and(|s| s.get(past + query) != s.get(key));
                let outside_window = window.is_some_and(|w| key + w <= past + query);
                if key > past + query || real == 0 || other_example || outside_window {
                    bias[offset + key] = MASKED;
                }
            }
        }
    }
    Tensor::from_vec(bias, (batch, 1, 1, seq, total), device)?.to_dtype(dtype)
}
