//! `softmax(scores·scale + bias)` over the last dimension, in place, reading the additive
//! attention bias: masked keys (bias at or below [`MASKED`]) are skipped, not exponentiated.
//!
//! The composed path adds the `(t, total)` bias into a fresh `(heads·t, total)` buffer, then
//! softmaxes it into another; about half of a causal row is masked and each of those `exp`
//! calls takes libm's underflow path. This kernel does one pass per row in the scores' own
//! buffer.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result};
use rayon::prelude::*;

use crate::host::f32_slice;

/// A bias at or below this is a masked key (the model writes −1e30).
pub const MASKED: f32 = -1e29;

/// Rows of scores per rayon task.
const ROWS_PER_TASK: usize = 8;

/// The in-place op over `scores: (rows, total)` with `bias: (t, total)`: row `r` is query
/// `r % t` (the query heads of one kv head are stacked).
pub(crate) struct MaskedSoftmax {
    pub t: usize,
    pub scale: f32,
}

impl InplaceOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "ft-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        scores: &mut CpuStorage,
        scores_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<()> {
        let bias = f32_slice(bias, bias_layout, self.name())?;
        let total = scores_layout.shape().dims().last().copied().unwrap_or(0);
        let CpuStorage::F32(data) = scores else {
            candle_core::bail!("masked softmax: scores are not f32");
        };
        let Some((start, end)) = scores_layout.contiguous_offsets() else {
            candle_core::bail!("masked softmax: scores are not contiguous");
        };
        if total == 0 || bias.len() != self.t * total {
            candle_core::bail!(
                "masked softmax: bias of {} for {} queries of {total} keys",
                bias.len(),
                self.t
            );
        }
        let scores = &mut data[start..end];
        scores
            .par_chunks_mut(total * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, rows)| {
                for (i, row) in rows.chunks_mut(total).enumerate() {
                    let query = (task * ROWS_PER_TASK + i) % self.t;
                    let bias = &bias[query * total..(query + 1) * total];
                    softmax_row(row, bias, self.scale);
                }
            });
        Ok(())
    }
}

/// One row: as `softmax(row·scale + bias)` with masked keys exactly 0. A row with every key
/// masked gets what the composed path gives it, a uniform distribution.
pub(crate) fn softmax_row(row: &mut [f32], bias: &[f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for (s, &b) in row.iter_mut().zip(bias) {
        if b > MASKED {
            *s = *s * scale + b;
            max = max.max(*s);
        }
    }
    if max == f32::NEG_INFINITY {
        row.fill(1.0 / row.len() as f32);
        return;
    }
    let mut sum = 0f32;
    for (s, &b) in row.iter_mut().zip(bias) {
        if b > MASKED {
            *s = (*s - max).exp();
            sum += *s;
        } else {
            *s = 0.0;
        }
    }
    let inv = 1.0 / sum;
    for s in row.iter_mut() {
        *s *= inv;
    }
}
