//! Sampling and a plain batched generate loop over [`Transformer`] with a KV cache.

use candle_core::{DType, Result, Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::lora::Lora;
use crate::model::{Inputs, Transformer};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy (argmax); higher flattens the distribution.
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability sums to at least this (1.0 = off).
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy decoding.
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// Picks tokens from logits according to [`SamplingParams`], with its own seeded RNG.
#[derive(Debug, Clone)]
pub struct LogitsProcessor {
    params: SamplingParams,
    rng: StdRng,
}

impl LogitsProcessor {
    /// A processor seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// Chooses a token id from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0 as u32
        };
        if self.params.temperature <= 0.0 {
            return argmax();
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, ((v - max) as f64 * inv_t).exp()))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            probs.truncate(self.params.top_k);
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = 0;
            for (_, p) in &probs {
                cumulative += p / total;
                keep += 1;
                if cumulative >= self.params.top_p {
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (id, p) in &probs {
            draw -= p;
            if draw <= 0.0 {
                return *id;
            }
        }
        probs.last().map_or_else(argmax, |p| p.0)
    }
}

/// A request to [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// The most tokens to generate per row.
    pub max_new_tokens: usize,
    /// Token ids that end a row (generated, returned, then the row stops).
    pub stop_ids: Vec<u32>,
    /// Sampling settings; each row gets its own RNG seeded with `seed + row`.
    pub sampling: SamplingParams,
}

/// Generates continuations of every prompt in one batch (prompts of different lengths are
/// left-padded and masked). Returns the new token ids of each row, stop token included.
/// With [`Lora::Rows`], each prompt decodes under its own adapter in the same batch.
pub fn generate<'a>(
    model: &Transformer,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    lora: impl Into<Lora<'a>>,
) -> Result<Vec<Vec<u32>>> {
    let lora = lora.into();
    let device = model.device();
    let batch = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if batch == 0 || prompts.iter().any(Vec::is_empty) {
        candle_core::bail!("generate: every prompt needs at least one token");
    }
    let mut tokens = Vec::with_capacity(batch * longest);
    let mut positions = Vec::with_capacity(batch * longest);
    let mut key_mask = Vec::with_capacity(batch);
    for prompt in prompts {
        let pad = longest - prompt.len();
        tokens.extend(std::iter::repeat_n(0u32, pad).chain(prompt.iter().copied()));
        positions.extend((0..longest).map(|i| i.saturating_sub(pad) as u32));
        key_mask.push(
            (0..longest)
                .map(|i| u8::from(i >= pad))
                .collect::<Vec<u8>>(),
        );
    }
    let mut inputs = Inputs {
        tokens: Tensor::from_vec(tokens, (batch, longest), device)?,
        positions: Tensor::from_vec(positions, (batch, longest), device)?,
        key_mask,
        segments: None,
    };
    let mut next_position: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let mut processors: Vec<LogitsProcessor> = (0..batch)
        .map(|row| {
            LogitsProcessor::new(SamplingParams {
                seed: params.sampling.seed.wrapping_add(row as u64),
                ..params.sampling.clone()
            })
        })
        .collect();
    let mut outputs = vec![Vec::new(); batch];
    let mut done = vec![false; batch];
    let mut cache = model.new_cache_for(longest + params.max_new_tokens);
    for _ in 0..params.max_new_tokens {
        let hidden = model.forward_hidden(&inputs, Some(&mut cache), lora)?;
        let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?;
        let logits = model.logits(&last)?.squeeze(1)?.to_dtype(DType::F32)?;
        let logits: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut next = Vec::with_capacity(batch);
        for row in 0..batch {
            let id = processors[row].sample(&logits[row]);
            if !done[row] {
                outputs[row].push(id);
                done[row] = params.stop_ids.contains(&id);
            }
            next.push(id);
        }
        if done.iter().all(|d| *d) {
            break;
        }
        for mask in inputs.key_mask.iter_mut() {
            mask.push(1);
        }
        inputs.tokens = Tensor::from_vec(next, (batch, 1), device)?;
        inputs.positions = Tensor::from_vec(next_position.clone(), (batch, 1), device)?;
        for p in next_position.iter_mut() {
            *p += 1;
        }
    }
    Ok(outputs)
}

/// Negative log-likelihood of each token given the ones before it: `nll[i]` is for
/// `tokens[i + 1]`. One row, no padding.
pub fn token_nll<'a>(
    model: &Transformer,
    tokens: &[u32],
    lora: impl Into<Lora<'a>>,
) -> Result<Vec<f32>> {
    if tokens.len() < 2 {
        candle_core::bail!("scoring needs at least two tokens, got {}", tokens.len());
    }
    let lora = lora.into();
    let n = tokens.len();
    let input = Tensor::new(tokens, model.device())?.unsqueeze(0)?;
    let inputs = Inputs::from_attention_mask(&input, &[vec![1u8; n]])?;
    let logits = model
        .forward(&inputs, None, lora)?
        .squeeze(0)?
        .to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits.narrow(0, 0, n - 1)?, D::Minus1)?;
    let targets = Tensor::new(&tokens[1..], model.device())?.unsqueeze(1)?;
    log_probs.gather(&targets, 1)?.squeeze(1)?.neg()?.to_vec1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_top_k_one_is_greedy() {
        let logits = [0.1f32, 2.0, -1.0, 1.5];
        assert_eq!(
            LogitsProcessor::new(SamplingParams::default()).sample(&logits),
            1
        );
        let mut sampler = LogitsProcessor::new(SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..SamplingParams::default()
        });
        assert!((0..20).all(|_| sampler.sample(&logits) == 1));
    }

    #[test]
    fn same_seed_same_samples() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
            ..SamplingParams::default()
        };
        let mut a = LogitsProcessor::new(params.clone());
        let mut b = LogitsProcessor::new(params);
        let xs: Vec<u32> = (0..30).map(|_| a.sample(&logits)).collect();
        let ys: Vec<u32> = (0..30).map(|_| b.sample(&logits)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().any(|&x| x != xs[0]), "sampling never varied");
    }
}
