//! Merged exports: the base weights with an adapter folded in (`W + scale · B·A` on every
//! module it targets), written as an HF directory that transformers (and `ft`) load.
//!
//! The directory is built under a temporary name beside `out`, every file fsynced, then
//! renamed: a crash leaves no half-written export under the final name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::config::{Activation, Architecture, Config, RopeScaling};
use crate::loader::load_weights;
use crate::lora::LoraAdapter;
use crate::{Error, Result};

/// The base's HF-named weights in f32 with `adapter` merged in, plus the base's configuration.
///
/// Gemma's norm weights come back as the checkpoint stores them (`w`, not the `1 + w` the
/// model multiplies by).
pub fn merged_weights(
    base: &Path,
    adapter: &LoraAdapter,
) -> Result<(Config, HashMap<String, Tensor>)> {
    let loaded = load_weights(base, DType::F32, &Device::Cpu)?;
    let mut tensors = loaded.tensors;
    let weights_error = |name: &str, e: candle_core::Error| Error::Weights {
        path: base.to_path_buf(),
        reason: format!(
            "merging the adapter into `{name}`: {}",
            ft_core::error::one_line(&e)
        ),
    };
    for (path, module) in adapter.modules() {
        let name = format!("{path}.weight");
        let weight = tensors.get(&name).ok_or_else(|| Error::Weights {
            path: base.to_path_buf(),
            reason: format!("the adapter targets `{path}`, which this base does not have"),
        })?;
        let merge = || -> candle_core::Result<Tensor> {
            let a = module.a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            let b = module.b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            weight + (b.matmul(&a)? * module.scale)?
        };
        let merged = merge().map_err(|e| weights_error(&name, e))?;
        tensors.insert(name, merged);
    }
    if loaded.config.architecture == Architecture::Gemma3 {
        for (name, tensor) in tensors.iter_mut() {
            if name.ends_with("norm.weight") {
                *tensor = (&*tensor - 1.0).map_err(|e| weights_error(name, e))?;
            }
        }
    }
    if loaded.config.tie_word_embeddings {
        tensors.remove("lm_head.weight");
    }
    Ok((loaded.config, tensors))
}

/// transformers' `config.json` for `config` (classic layout: top-level `rope_theta`).
pub fn hf_config_json(config: &Config, bos_id: Option<u32>, eos_ids: &[u32]) -> Value {
    let (model_type, class) = match config.architecture {
        Architecture::Llama => ("llama", "LlamaForCausalLM"),
        Architecture::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Architecture::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        Architecture::Gemma3 => ("gemma3_text", "Gemma3ForCausalLM"),
    };
    let activation = match config.activation {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
    };
    let mut out = json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "hidden_act": activation,
        "torch_dtype": "float32",
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids.first(),
    });
    let rope_scaling = match &config.rope_scaling {
        RopeScaling::None | RopeScaling::Factors(_) => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    out["rope_scaling"] = rope_scaling;
    if config.architecture == Architecture::Gemma3 {
        out["hidden_activation"] = json!(activation);
        // transformers' config class wants an int here.
        let scalar = config
            .query_pre_attn_scalar
            .unwrap_or(config.head_dim as f64);
        out["query_pre_attn_scalar"] = if scalar.fract() == 0.0 {
            json!(scalar as u64)
        } else {
            json!(scalar)
        };
        out["sliding_window"] = json!(config.sliding_window);
        out["rope_local_base_freq"] = json!(config.rope_local_theta);
        out["final_logit_softcapping"] = Value::Null;
        out["attn_logit_softcapping"] = Value::Null;
        let types: Vec<&str> = (0..config.num_hidden_layers)
            .map(|i| {
                if config.is_sliding(i) {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        out["layer_types"] = json!(types);
    }
    out
}

/// Writes `files` (name → bytes) as the directory `out`: into a temporary sibling first, each
/// file fsynced, then renamed into place. `out` must not exist yet.
pub fn write_directory_atomically(out: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    if out.exists() {
        return Err(Error::ModelPath {
            path: out.to_path_buf(),
            reason: "already exists; choose a new output directory".to_string(),
        });
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".to_string());
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
    let result = (|| {
        for (file, bytes) in files {
            crate::adapter_io::write_atomically(&staging.join(file), bytes)?;
        }
        std::fs::rename(&staging, out).map_err(|e| Error::io(out, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// The bytes of a safetensors file holding `tensors` (sorted by name).
pub fn safetensors_bytes(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<Vec<u8>> {
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize(named, None).map_err(|e| Error::Weights {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
