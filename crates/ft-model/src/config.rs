//! Model configuration: `HfConfig` mirrors `config.json`; [`Config`] is the resolved form the
//! model uses, also built from GGUF metadata.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// The architectures `ft` implements. All are the llama block; they differ in details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2, Mistral: no attention biases.
    Llama,
    /// Qwen2: biases on q, k and v.
    Qwen2,
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Overall factor.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
    /// Per-frequency divisors, as llama.cpp stores them in a `rope_freqs` tensor.
    Factors(Vec<f32>),
}

/// A resolved model configuration, with no optional fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Which variant of the llama block.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have biases.
    pub attention_bias: bool,
}

impl Config {
    /// Checks the relations the model relies on (no zero sizes, heads dividing evenly), so a
    /// malformed file is an error here rather than a division by zero later.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} is 0"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim {} is odd; RoPE needs pairs",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// RoPE inverse frequencies, `head_dim / 2` of them, with scaling applied (as transformers'
    /// `_compute_llama3_parameters`).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / self.head_dim as f64))
            .collect();
        let scaled: Vec<f64> = match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Factors(factors) => base
                .iter()
                .zip(factors.iter().chain(std::iter::repeat(&1.0)))
                .map(|(f, d)| f / *d as f64)
                .collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: original,
            } => {
                let low_freq_wavelen = original / low_freq_factor;
                let high_freq_wavelen = original / high_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_freq_wavelen {
                            freq
                        } else if wavelen > low_freq_wavelen {
                            freq / factor
                        } else {
                            let smooth = (original / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        };
        // transformers computes inv_freq in float32 from an int64 arange; match its rounding.
        scaled.into_iter().map(|f| f as f32).collect()
    }
}

/// `config.json` as transformers writes it (v4 `rope_theta`/`rope_scaling` or v5
/// `rope_parameters`).
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeParameters>,
    rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
}

/// `rope_scaling` (transformers v4) or `rope_parameters` (v5).
#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_max_positions() -> usize {
    4096
}

impl HfConfig {
    /// Reads and parses `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Resolves into a [`Config`]; `path` is used in error messages.
    pub fn into_config(self, path: &Path) -> Result<Config> {
        let model_type = self
            .model_type
            .clone()
            .or_else(|| self.architectures.first().cloned())
            .unwrap_or_default();
        let architecture = match model_type.as_str() {
            "llama" | "mistral" | "LlamaForCausalLM" | "MistralForCausalLM" => Architecture::Llama,
            "qwen2" | "Qwen2ForCausalLM" => Architecture::Qwen2,
            other => {
                return Err(Error::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    architecture: other.to_string(),
                })
            }
        };
        let rope = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let rope_theta = self
            .rope_theta
            .or_else(|| rope.and_then(|r| r.rope_theta))
            .unwrap_or(10000.0);
        let rope_type = rope
            .and_then(|r| r.rope_type.clone().or_else(|| r.legacy_type.clone()))
            .unwrap_or_else(|| "default".to_string());
        let rope_scaling = match (rope_type.as_str(), rope) {
            ("default", _) | (_, None) => RopeScaling::None,
            ("llama3", Some(r)) => {
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| Error::Config {
                        path: path.to_path_buf(),
                        reason: format!("llama3 rope scaling needs `{name}`"),
                    })
                };
                RopeScaling::Llama3 {
                    factor: need(r.factor, "factor")?,
                    low_freq_factor: need(r.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: need(r.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: need(
                        r.original_max_position_embeddings,
                        "original_max_position_embeddings",
                    )?,
                }
            }
            (other, _) => {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    reason: format!(
                        "rope scaling type `{other}` is not supported (supported: default, llama3)"
                    ),
                })
            }
        };
        let heads = self.num_attention_heads;
        if heads == 0 || !self.hidden_size.is_multiple_of(heads) {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "hidden_size {} is not a multiple of num_attention_heads {heads}",
                    self.hidden_size
                ),
            });
        }
        let config = Config {
            architecture,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / heads),
            vocab_size: self.vocab_size,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self
                .attention_bias
                .unwrap_or(architecture == Architecture::Qwen2),
        };
        config.validate().map_err(|reason| Error::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut config = Config {
            architecture: Architecture::Llama,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 1,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            vocab_size: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            attention_bias: false,
        };
        let plain = config.rope_inv_freq();
        // Wavelengths: index 0 is 2π (< 64/4, kept), index 7 is ~19869 (> 64, divided by 8).
        config.rope_scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        };
        let scaled = config.rope_inv_freq();
        assert_eq!(plain[0], scaled[0]);
        assert_eq!(scaled[7], plain[7] / 8.0);
    }
}
