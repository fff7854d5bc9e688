//! Reading and writing LoRA adapters in PEFT's format: `adapter_config.json` plus
//! `adapter_model.safetensors` with keys like
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
//!
//! `ft` records the base model's fingerprint in the safetensors metadata (`ft.base_fingerprint`),
//! where PEFT ignores it, and checks it when loading.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::lora::{LoraAdapter, LoraConfig, TargetModules};
use crate::model::Transformer;
use crate::{Error, Result};

/// The adapter config file name PEFT uses.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights file name PEFT uses.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const FINGERPRINT_KEY: &str = "ft.base_fingerprint";

fn adapter_error(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Adapter {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced and then
/// renamed, so a crash never leaves a half-written file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Saves `adapter` into `dir` (created if missing) in PEFT's format, plus a `manifest.json`
/// of sha256 digests that [`load_adapter`] verifies.
///
/// `base_model` is written as `base_model_name_or_path`.
pub fn save_adapter(adapter: &LoraAdapter, dir: &Path, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config = adapter.config();
    let target_modules = match &config.target_modules {
        TargetModules::AllLinear => {
            // PEFT saves the resolved names; do the same so older PEFT versions load it too.
            let mut names: Vec<String> = adapter
                .modules()
                .keys()
                .filter_map(|p| p.rsplit('.').next().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names
        }
        TargetModules::Names(names) => names.clone(),
    };
    let config_json = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": target_modules,
        "use_rslora": config.use_rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_dora": false,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": null,
        "layers_pattern": null,
        "revision": null,
    });
    let text = serde_json::to_string_pretty(&config_json)
        .map_err(|e| adapter_error(dir, format!("cannot serialise the adapter config: {e}")))?;
    write_atomically(&dir.join(CONFIG_FILE), text.as_bytes())?;

    let tensors = adapter
        .tensors()
        .into_iter()
        .map(|(key, t)| Ok((key, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
        .collect::<Result<Vec<(String, Tensor)>>>()?;
    let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    if let Some(fp) = adapter.base_fingerprint() {
        metadata.insert(FINGERPRINT_KEY.to_string(), fp.to_string());
    }
    let mut bytes = safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| adapter_error(dir, format!("cannot serialise the weights: {e}")))?;
    canonicalize_header(&mut bytes);
    write_atomically(&dir.join(WEIGHTS_FILE), &bytes)?;
    crate::manifest::write_manifest(dir)
}

/// Rewrites a safetensors header with its JSON keys sorted. The `safetensors` crate writes the
/// metadata from a `HashMap`, whose order changes between runs; sorted keys make the same
/// adapter the same bytes (training resume is checked byte for byte). The header keeps its
/// length, so the tensor offsets are unchanged.
fn canonicalize_header(bytes: &mut [u8]) {
    let Some(len_bytes) = bytes.get(..8) else {
        return;
    };
    let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or([0; 8])) as usize;
    let Some(header) = bytes.get(8..8 + len) else {
        return;
    };
    // serde_json's `Value` keeps object keys sorted (no `preserve_order` feature).
    let Ok(value) = serde_json::from_slice::<Value>(header) else {
        return;
    };
    let Ok(sorted) = serde_json::to_vec(&value) else {
        return;
    };
    if sorted.len() <= len {
        let target = &mut bytes[8..8 + len];
        target[..sorted.len()].copy_from_slice(&sorted);
        target[sorted.len()..].fill(b' ');
    }
}

/// Options for [`load_adapter`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Load even when the adapter records a different base fingerprint.
    pub allow_base_mismatch: bool,
}

/// Parses the LoRA hyperparameters of a PEFT `adapter_config.json`, refusing features `ft`
/// does not implement rather than silently ignoring them.
fn parse_config(dir: &Path, value: &Value) -> Result<LoraConfig> {
    let field = |name: &str| value.get(name).filter(|v| !v.is_null());
    let peft_type = field("peft_type").and_then(Value::as_str).unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(adapter_error(
            dir,
            format!("{CONFIG_FILE}: peft_type is \"{peft_type}\"; only LORA is supported"),
        ));
    }
    let r = field("r")
        .and_then(Value::as_u64)
        .filter(|r| *r > 0)
        .ok_or_else(|| {
            adapter_error(
                dir,
                format!("{CONFIG_FILE}: `r` must be a positive integer"),
            )
        })? as usize;
    let alpha = field("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let dropout = field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let target_modules = match field("target_modules") {
        Some(Value::String(s)) if s == "all-linear" => TargetModules::AllLinear,
        Some(Value::Array(items)) => TargetModules::Names(
            items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        adapter_error(dir, format!("{CONFIG_FILE}: target_modules must hold strings"))
                    })
                })
                .collect::<Result<_>>()?,
        ),
        Some(other) => {
            return Err(adapter_error(
                dir,
                format!("{CONFIG_FILE}: target_modules {other} is not supported; use a list of module names"),
            ))
        }
        None => TargetModules::AllLinear,
    };
    let unsupported = [
        (
            "use_dora",
            field("use_dora").and_then(Value::as_bool) == Some(true),
        ),
        (
            "bias",
            field("bias")
                .and_then(Value::as_str)
                .is_some_and(|b| b != "none"),
        ),
        (
            "fan_in_fan_out",
            field("fan_in_fan_out").and_then(Value::as_bool) == Some(true),
        ),
        (
            "modules_to_save",
            field("modules_to_save")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
        ),
        (
            "rank_pattern",
            field("rank_pattern")
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty()),
        ),
        (
            "alpha_pattern",
            field("alpha_pattern")
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty()),
        ),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, used)| *used) {
        return Err(adapter_error(
            dir,
            format!("{CONFIG_FILE}: `{name}` is set; ft does not support it yet"),
        ));
    }
    Ok(LoraConfig {
        r,
        alpha,
        dropout,
        target_modules,
        use_rslora: field("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// Loads a PEFT-format adapter from `dir` for `model`, whose fingerprint is `model_fingerprint`
/// (or, when `dir` is a `.gguf` file, a llama.cpp GGUF LoRA: [`crate::export_gguf::load_gguf_lora`]).
///
/// A `manifest.json` (written by `ft`) is verified first: a file changed since it was
/// written is an error naming the file. Every key must name a linear layer of `model` with
/// the right shapes. An adapter that
/// records a different base fingerprint is refused unless `options.allow_base_mismatch`.
pub fn load_adapter(
    dir: &Path,
    model: &Transformer,
    model_fingerprint: &str,
    options: &LoadOptions,
) -> Result<LoraAdapter> {
    if dir.is_file() && dir.extension().is_some_and(|e| e == "gguf") {
        return crate::export_gguf::load_gguf_lora(
            dir,
            model,
            model_fingerprint,
            options.allow_base_mismatch,
        );
    }
    if !dir.is_dir() {
        return Err(adapter_error(dir, "no such directory"));
    }
    if !crate::manifest::verify_manifest(dir)? {
        tracing::debug!(
            "adapter {} has no manifest.json; not verified",
            dir.display()
        );
    }
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| adapter_error(dir, format!("{CONFIG_FILE}: {e}")))?;
    let config = parse_config(dir, &value)?;

    let weights_path: PathBuf = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| adapter_error(dir, format!("{WEIGHTS_FILE}: {e}")))?;
    let recorded = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(FINGERPRINT_KEY).cloned());
    match &recorded {
        Some(fp) if fp != model_fingerprint && !options.allow_base_mismatch => {
            return Err(Error::BaseMismatch {
                path: dir.to_path_buf(),
                expected: fp.clone(),
                actual: model_fingerprint.to_string(),
            })
        }
        None => tracing::warn!(
            "adapter {} records no base fingerprint (not made by ft); checking shapes only",
            dir.display()
        ),
        _ => {}
    }
    let device = model.device();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| adapter_error(dir, format!("{WEIGHTS_FILE}: {e}")))?;

    let linears: HashMap<&str, (usize, usize)> = model
        .linears()
        .into_iter()
        .map(|l| (l.path(), l.shape()))
        .collect();
    let mut pairs: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (key, tensor) in tensors {
        let module_and_matrix = key
            .strip_prefix("base_model.model.")
            .and_then(|k| k.strip_suffix(".weight"));
        let parsed = module_and_matrix.and_then(|k| {
            k.strip_suffix(".lora_A")
                .map(|m| (m, 'A'))
                .or_else(|| k.strip_suffix(".lora_B").map(|m| (m, 'B')))
        });
        let Some((module, matrix)) = parsed else {
            return Err(adapter_error(dir, format!("{WEIGHTS_FILE}: unexpected key `{key}` (only lora_A/lora_B of linear layers are supported)")));
        };
        let Some(&(out_features, in_features)) = linears.get(module) else {
            return Err(adapter_error(dir, format!("{WEIGHTS_FILE}: `{key}` targets `{module}`, which this model does not have (adapter for another architecture?)")));
        };
        let expected = if matrix == 'A' {
            (config.r, in_features)
        } else {
            (out_features, config.r)
        };
        if tensor.dims2().ok() != Some(expected) {
            return Err(adapter_error(dir, format!("{WEIGHTS_FILE}: `{key}` has shape {:?}, this model needs {expected:?} (adapter for another base?)", tensor.dims())));
        }
        let tensor = tensor.to_dtype(DType::F32)?.to_device(device)?;
        let entry = pairs.entry(module.to_string()).or_default();
        if matrix == 'A' {
            entry.0 = Some(tensor);
        } else {
            entry.1 = Some(tensor);
        }
    }
    let mut matrices = Vec::new();
    for (module, pair) in pairs {
        match pair {
            (Some(a), Some(b)) => matrices.push((module, a, b)),
            _ => {
                return Err(adapter_error(
                    dir,
                    format!("{WEIGHTS_FILE}: `{module}` has only one of lora_A/lora_B"),
                ))
            }
        }
    }
    if matrices.is_empty() {
        return Err(adapter_error(
            dir,
            format!("{WEIGHTS_FILE}: holds no LoRA weights"),
        ));
    }
    Ok(LoraAdapter::from_modules(config, matrices, recorded))
}
