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
    /// Qwen3: no biases; q and k RMSNorm-ed per head before RoPE.
    Qwen3,
    /// Gemma 3 (text): scaled embeddings, (1 + w) norms around both sublayers, q/k norms,
    /// GeGLU, sliding-window layers with their own RoPE base between global ones.
    Gemma3,
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): llama, Qwen.
    Silu,
    /// GELU, tanh approximation (GeGLU): Gemma.
    GeluTanh,
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
    /// Every frequency divided by `factor` (position interpolation; Gemma 3's global layers).
    Linear {
        /// The divisor.
        factor: f64,
    },
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
    /// Whether queries and keys are RMSNorm-ed per head before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// Whether each sublayer's output is normed before the residual add (Gemma's
    /// `post_attention_layernorm` / `post_feedforward_layernorm`); the MLP's input norm is
    /// then `pre_feedforward_layernorm`.
    pub sandwich_norms: bool,
    /// Factor on the token embeddings (Gemma: sqrt(hidden)).
    pub embedding_scale: Option<f64>,
    /// Attention scores are divided by the square root of this (default `head_dim`).
    pub query_pre_attn_scalar: Option<f64>,
    /// Keys a sliding-window layer sees: the query's own and the `window - 1` before it.
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window (empty: none).
    pub sliding_layers: Vec<bool>,
    /// The RoPE base of the sliding-window layers (unscaled), when they have their own.
    pub rope_local_theta: Option<f64>,
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
        inv_freq(self.head_dim, self.rope_theta, &self.rope_scaling)
    }

    /// The sliding-window layers' inverse frequencies (their own base, no scaling), when
    /// they differ from the global ones.
    pub fn rope_local_inv_freq(&self) -> Option<Vec<f32>> {
        let theta = self.rope_local_theta?;
        self.sliding_layers
            .iter()
            .any(|&sliding| sliding)
            .then(|| inv_freq(self.head_dim, theta, &RopeScaling::None))
    }

    /// Whether layer `index` uses the sliding window.
    pub fn is_sliding(&self, index: usize) -> bool {
        self.sliding_window.is_some() && self.sliding_layers.get(index).copied().unwrap_or(false)
    }

    /// Whether the block is the plain llama block (pre-norms, SwiGLU, no q/k norms, no
    /// window, unscaled embeddings), which the fused training and decode paths implement.
    pub fn is_plain_llama_block(&self) -> bool {
        !self.qk_norm
            && !self.sandwich_norms
            && self.activation == Activation::Silu
            && self.embedding_scale.is_none()
            && self
                .query_pre_attn_scalar
                .is_none_or(|s| s == self.head_dim as f64)
            && !self.sliding_layers.iter().any(|&sliding| sliding)
    }
}

/// RoPE inverse frequencies for `head_dim` and base `theta` with `scaling` applied.
fn inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let half = head_dim / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let scaled: Vec<f64> = match scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
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
    /// transformers 5: one `RopeParameters`, or (Gemma 3) one per layer type.
    rope_parameters: Option<serde_json::Value>,
    /// Gemma 3 (transformers 4): the sliding layers' RoPE base.
    rope_local_base_freq: Option<f64>,
    query_pre_attn_scalar: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    /// Gemma 3 checkpoints older than `layer_types`: every n-th layer is global.
    #[serde(alias = "_sliding_window_pattern")]
    sliding_window_pattern: Option<usize>,
    hidden_activation: Option<String>,
    hidden_act: Option<String>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
}

/// `rope_scaling` (transformers v4) or `rope_parameters` (v5).
#[derive(Debug, Clone, Deserialize)]
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
        let config_error = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        let model_type = self
            .model_type
            .clone()
            .or_else(|| self.architectures.first().cloned())
            .unwrap_or_default();
        let architecture = match model_type.as_str() {
            "llama" | "mistral" | "LlamaForCausalLM" | "MistralForCausalLM" => Architecture::Llama,
            "qwen2" | "Qwen2ForCausalLM" => Architecture::Qwen2,
            "qwen3" | "Qwen3ForCausalLM" => Architecture::Qwen3,
            "gemma3_text" | "Gemma3ForCausalLM" => Architecture::Gemma3,
            other => {
                return Err(Error::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    architecture: other.to_string(),
                })
            }
        };
        for (name, value) in [
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
        ] {
            if value.is_some() {
                return Err(config_error(format!(
                    "`{name}` is set: logit soft-capping (Gemma 2) is not supported"
                )));
            }
        }
        // transformers 5 keeps Gemma 3's two bases as `rope_parameters.{full,sliding}_attention`.
        let (rope, local_rope) = match &self.rope_parameters {
            Some(value) if value.get("full_attention").is_some() => (
                parse_rope(value.get("full_attention"), path)?,
                parse_rope(value.get("sliding_attention"), path)?,
            ),
            Some(value) => (parse_rope(Some(value), path)?, None),
            None => (None, None),
        };
        let rope = rope.as_ref().or(self.rope_scaling.as_ref());
        let rope_theta = self
            .rope_theta
            .or_else(|| rope.and_then(|r| r.rope_theta))
            .unwrap_or(10000.0);
        let rope_scaling = rope_scaling_of(rope, path)?;
        let heads = self.num_attention_heads;
        if heads == 0 || (!self.hidden_size.is_multiple_of(heads) && self.head_dim.is_none()) {
            return Err(config_error(format!(
                "hidden_size {} is not a multiple of num_attention_heads {heads}",
                self.hidden_size
            )));
        }
        let gemma = architecture == Architecture::Gemma3;
        let activation = match self
            .hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref())
        {
            None if gemma => Activation::GeluTanh,
            None | Some("silu") | Some("swish") => Activation::Silu,
            Some("gelu_pytorch_tanh") | Some("gelu_tanh") => Activation::GeluTanh,
            Some(other) => {
                return Err(config_error(format!(
                    "MLP activation `{other}` is not supported (supported: silu, gelu_pytorch_tanh)"
                )))
            }
        };
        let sliding_layers = match (&self.layer_types, self.sliding_window_pattern) {
            (Some(types), _) => {
                if types.len() != self.num_hidden_layers {
                    return Err(config_error(format!(
                        "`layer_types` has {} entries for {} layers",
                        types.len(),
                        self.num_hidden_layers
                    )));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(config_error(format!("unknown layer type `{other}`"))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            (None, Some(pattern)) if pattern > 0 => (0..self.num_hidden_layers)
                .map(|i| (i + 1) % pattern != 0)
                .collect(),
            _ => Vec::new(),
        };
        let sliding_window = self
            .sliding_window
            .filter(|_| sliding_layers.iter().any(|&s| s));
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
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Gemma3),
            activation,
            sandwich_norms: gemma,
            embedding_scale: gemma.then(|| (self.hidden_size as f64).sqrt()),
            query_pre_attn_scalar: self.query_pre_attn_scalar,
            sliding_window,
            rope_local_theta: local_rope
                .and_then(|r| r.rope_theta)
                .or(self.rope_local_base_freq)
                .filter(|_| sliding_window.is_some()),
            sliding_layers: if sliding_window.is_some() {
                sliding_layers
            } else {
                Vec::new()
            },
        };
        config.validate().map_err(config_error)?;
        Ok(config)
    }
}

/// One `rope_parameters` / `rope_scaling` object (or none).
fn parse_rope(value: Option<&serde_json::Value>, path: &Path) -> Result<Option<RopeParameters>> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| Error::Config {
                path: path.to_path_buf(),
                reason: format!("rope parameters: {e}"),
            }),
    }
}

/// The scaling a `rope_scaling` / `rope_parameters` object asks for.
fn rope_scaling_of(rope: Option<&RopeParameters>, path: &Path) -> Result<RopeScaling> {
    let Some(r) = rope else {
        return Ok(RopeScaling::None);
    };
    let need = |v: Option<f64>, name: &str| {
        v.ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            reason: format!("rope scaling needs `{name}`"),
        })
    };
    let rope_type = r
        .rope_type
        .clone()
        .or_else(|| r.legacy_type.clone())
        .unwrap_or_else(|| "default".to_string());
    Ok(match rope_type.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need(r.factor, "factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need(r.factor, "factor")?,
            low_freq_factor: need(r.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(r.high_freq_factor, "high_freq_factor")?,
            original_max_position_embeddings: need(
                r.original_max_position_embeddings,
                "original_max_position_embeddings",
            )?,
        },
        other => {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!(
                "rope scaling type `{other}` is not supported (supported: default, linear, llama3)"
            ),
            })
        }
    })
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
            qk_norm: false,
            activation: Activation::Silu,
            sandwich_norms: false,
            embedding_scale: None,
            query_pre_attn_scalar: None,
            sliding_window: None,
            sliding_layers: Vec::new(),
            rope_local_theta: None,
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
