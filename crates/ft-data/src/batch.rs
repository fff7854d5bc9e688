//! Tokenized examples → padded batches: length-bucketed, or packed several to a row with
//! positions restarting and attention kept inside each example. The order is a pure function
//! of the seed and the epoch, so training resumes from a [`Cursor`].

use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};

use crate::tokenize::TokenizedExample;

/// How batches are formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Rows per batch.
    pub batch_size: usize,
    /// Longest row; longer examples are truncated.
    pub max_seq_len: usize,
    /// Pack several examples into each row instead of padding one per row.
    pub packing: bool,
    /// Seed of the example order.
    pub seed: u64,
    /// Id written into padding positions (masked out, never a label).
    pub pad_id: u32,
}

/// A position in the stream of batches: the next batch to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Epoch, from 0.
    pub epoch: usize,
    /// Batch within the epoch, from 0.
    pub batch: usize,
}

/// One batch, every row padded to the same length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `(rows, len)` token ids.
    pub input_ids: Vec<Vec<u32>>,
    /// `(rows, len)`: 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u8>>,
    /// `(rows, len)`: whether predicting this token (from the ones before) is in the loss.
    pub labels: Vec<Vec<bool>>,
    /// `(rows, len)` RoPE positions, restarting at 0 for each packed example.
    pub positions: Vec<Vec<u32>>,
    /// `(rows, len)` example index within the row, for packed rows (attention stays inside
    /// one example); `None` when each row holds one example.
    pub segments: Option<Vec<Vec<u32>>>,
    /// Indices of the examples in this batch.
    pub examples: Vec<usize>,
}

impl Batch {
    /// Real (non-padding) tokens.
    pub fn num_tokens(&self) -> usize {
        self.attention_mask
            .iter()
            .flatten()
            .filter(|m| **m == 1)
            .count()
    }

    /// Tokens in the loss.
    pub fn num_labels(&self) -> usize {
        self.labels
            .iter()
            .map(|row| row.iter().skip(1).filter(|l| **l).count())
            .sum()
    }
}

/// Serves batches of a fixed set of examples.
#[derive(Debug, Clone)]
pub struct Batcher {
    examples: Vec<TokenizedExample>,
    config: BatchConfig,
}

/// How many batches of shuffled examples are sorted by length together: big enough that rows
/// in a batch have similar lengths, small enough that batch order stays random.
const BUCKET_BATCHES: usize = 16;

impl Batcher {
    /// Truncates every example to `config.max_seq_len` and keeps them for batching.
    pub fn new(mut examples: Vec<TokenizedExample>, config: BatchConfig) -> Self {
        let config = BatchConfig {
            batch_size: config.batch_size.max(1),
            max_seq_len: config.max_seq_len.max(2),
            ..config
        };
        for example in &mut examples {
            example.input_ids.truncate(config.max_seq_len);
            example.labels.truncate(config.max_seq_len);
        }
        Self { examples, config }
    }

    /// The examples, truncated.
    pub fn examples(&self) -> &[TokenizedExample] {
        &self.examples
    }

    /// The batches of `epoch`, as lists of rows, each row a list of example indices.
    pub fn plan(&self, epoch: usize) -> Vec<Vec<Vec<usize>>> {
        let mut rng = StdRng::seed_from_u64(
            self.config
                .seed
                .wrapping_add((epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        order.shuffle(&mut rng);
        let size = self.config.batch_size;
        let rows: Vec<Vec<usize>> = if self.config.packing {
            self.pack(&order)
        } else {
            // Sort each bucket of shuffled examples by length so a batch pads little.
            let mut rows = Vec::with_capacity(order.len());
            for bucket in order.chunks(size * BUCKET_BATCHES) {
                let mut bucket = bucket.to_vec();
                bucket.sort_by_key(|&i| self.examples[i].len());
                rows.extend(bucket.into_iter().map(|i| vec![i]));
            }
            rows
        };
        let mut batches: Vec<Vec<Vec<usize>>> = rows.chunks(size).map(<[_]>::to_vec).collect();
        if !self.config.packing {
            batches.shuffle(&mut rng);
        }
        batches
    }

    /// Next-fit packing of examples (in `order`) into rows of at most `max_seq_len` tokens.
    fn pack(&self, order: &[usize]) -> Vec<Vec<usize>> {
        let mut rows = Vec::new();
        let mut row: Vec<usize> = Vec::new();
        let mut used = 0;
        for &i in order {
            let len = self.examples[i].len();
            if used + len > self.config.max_seq_len && !row.is_empty() {
                rows.push(std::mem::take(&mut row));
                used = 0;
            }
            row.push(i);
            used += len;
        }
        if !row.is_empty() {
            rows.push(row);
        }
        rows
    }

    /// Number of batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan(0).len()
    }

    /// Builds the padded batch for `rows` (from [`Batcher::plan`]).
    pub fn batch(&self, rows: &[Vec<usize>]) -> Batch {
        let width = rows
            .iter()
            .map(|row| row.iter().map(|&i| self.examples[i].len()).sum::<usize>())
            .max()
            .unwrap_or(0);
        let mut batch = Batch {
            input_ids: Vec::with_capacity(rows.len()),
            attention_mask: Vec::with_capacity(rows.len()),
            labels: Vec::with_capacity(rows.len()),
            positions: Vec::with_capacity(rows.len()),
            segments: self.config.packing.then(Vec::new),
            examples: rows.iter().flatten().copied().collect(),
        };
        for row in rows {
            let mut ids = Vec::with_capacity(width);
            let mut labels = Vec::with_capacity(width);
            let mut positions = Vec::with_capacity(width);
            let mut segments = Vec::with_capacity(width);
            for (segment, &i) in row.iter().enumerate() {
                let example = &self.examples[i];
                ids.extend(&example.input_ids);
                // The first token of a packed example is never predicted from the previous one.
                labels.push(false);
                labels.extend(example.labels.iter().skip(1));
                positions.extend(0..example.len() as u32);
                segments.extend(std::iter::repeat_n(segment as u32, example.len()));
            }
            let real = ids.len();
            let mut mask = vec![1u8; real];
            ids.resize(width, self.config.pad_id);
            labels.resize(width, false);
            positions.resize(width, 0);
            segments.resize(width, u32::MAX);
            mask.resize(width, 0);
            batch.input_ids.push(ids);
            batch.attention_mask.push(mask);
            batch.labels.push(labels);
            batch.positions.push(positions);
            if let Some(all) = batch.segments.as_mut() {
                all.push(segments);
            }
        }
        batch
    }

    /// Batches from `cursor` on, forever (epoch after epoch), each with the cursor of the batch
    /// that follows it — save that cursor to resume exactly after this batch.
    pub fn iter_from(&self, cursor: Cursor) -> impl Iterator<Item = (Batch, Cursor)> + '_ {
        let mut cursor = cursor;
        let mut plan = self.plan(cursor.epoch);
        std::iter::from_fn(move || {
            if plan.is_empty() {
                return None;
            }
            while cursor.batch >= plan.len() {
                cursor = Cursor {
                    epoch: cursor.epoch + 1,
                    batch: 0,
                };
                plan = self.plan(cursor.epoch);
            }
            let batch = self.batch(&plan[cursor.batch]);
            cursor.batch += 1;
            Some((batch, cursor))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Vec<TokenizedExample> {
        (0..10)
            .map(|i| TokenizedExample {
                input_ids: (0..(3 + i as u32 % 4))
                    .map(|t| 100 * i as u32 + t)
                    .collect(),
                labels: (0..(3 + i % 4)).map(|t| t % 2 == 1).collect(),
            })
            .collect()
    }

    fn config(packing: bool) -> BatchConfig {
        BatchConfig {
            batch_size: 3,
            max_seq_len: 8,
            packing,
            seed: 42,
            pad_id: 0,
        }
    }

    #[test]
    fn every_example_once_per_epoch_and_order_depends_on_seed_and_epoch() {
        let batcher = Batcher::new(examples(), config(false));
        let seen: Vec<usize> = batcher.plan(0).into_iter().flatten().flatten().collect();
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(
            batcher.plan(0),
            Batcher::new(examples(), config(false)).plan(0)
        );
        assert_ne!(batcher.plan(0), batcher.plan(1));
    }

    #[test]
    fn resuming_from_a_cursor_continues_the_same_stream() {
        let batcher = Batcher::new(examples(), config(false));
        let straight: Vec<Batch> = batcher
            .iter_from(Cursor::default())
            .take(7)
            .map(|b| b.0)
            .collect();
        let (_, cursor) = batcher
            .iter_from(Cursor::default())
            .nth(2)
            .expect("3 batches");
        let resumed: Vec<Batch> = batcher.iter_from(cursor).take(4).map(|b| b.0).collect();
        assert_eq!(&straight[3..], &resumed[..]);
    }

    #[test]
    fn packed_rows_fit_and_restart_positions() {
        let batcher = Batcher::new(examples(), config(true));
        for rows in batcher.plan(0) {
            let batch = batcher.batch(&rows);
            for (r, row) in rows.iter().enumerate() {
                let real: usize = row.iter().map(|&i| batcher.examples()[i].len()).sum();
                assert!(real <= 8 || row.len() == 1);
                let segments = &batch.segments.as_ref().expect("packed")[r];
                for t in 1..real {
                    let restarted = segments[t] != segments[t - 1];
                    assert_eq!(batch.positions[r][t] == 0, restarted);
                    if restarted {
                        assert!(!batch.labels[r][t], "a segment start is never a label");
                    }
                }
            }
        }
    }
}
