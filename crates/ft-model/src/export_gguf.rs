//! GGUF exports for llama.cpp: the adapter alone as a GGUF LoRA (`llama-cli --lora`), and the
//! base GGUF with the adapter merged in.
//!
//! llama.cpp's LoRA format (`llama-adapter.cpp`): `general.type = adapter`,
//! `adapter.type = lora`, `adapter.lora.alpha`, and per target `<base tensor>.lora_a` (ggml
//! `[in, r]`, PEFT's `A` as stored) and `.lora_b` (`[r, out]`, PEFT's `B`); llama.cpp scales by
//! `alpha / r`, so `alpha` is written as `scale · r` (rsLoRA included). For the llama
//! architecture llama.cpp's converter permutes q/k rows, so `B` of q/k (and merged q/k
//! weights) get the same permutation.

use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::{Architecture, Config};
use crate::loader::{config_from_gguf, LINEAR_NAMES};
use crate::lora::LoraAdapter;
use crate::{Error, Result};

/// The llama.cpp name of an HF linear module path (`model.layers.3.self_attn.q_proj` →
/// `blk.3.attn_q`).
fn gguf_module(hf_path: &str) -> Option<String> {
    let rest = hf_path.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let (short, _) = LINEAR_NAMES.iter().find(|(_, hf)| *hf == module)?;
    Some(format!("blk.{layer}.{short}"))
}

/// llama.cpp's q/k row permutation for `heads` heads (inverse of the loader's unpermute).
fn permute_rows(tensor: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    tensor
        .reshape((heads, 2, rows / heads / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// The heads whose permutation a module's output rows get in a llama GGUF, if any.
fn permuted_heads(config: &Config, hf_path: &str) -> Option<usize> {
    if config.architecture != Architecture::Llama {
        return None;
    }
    if hf_path.ends_with("self_attn.q_proj") {
        Some(config.num_attention_heads)
    } else if hf_path.ends_with("self_attn.k_proj") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

fn read_content(base: &Path) -> Result<(Content, BufReader<std::fs::File>)> {
    let file = std::fs::File::open(base).map_err(|e| Error::io(base, e))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| Error::Gguf {
        path: base.to_path_buf(),
        reason: ft_core::error::one_line(&e),
    })?;
    Ok((content, reader))
}

fn gguf_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes `metadata` and `tensors` as a GGUF file at `out`, through a temporary file that is
/// fsynced and renamed.
fn write_gguf(
    out: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let tmp = out.with_extension("gguf.partial");
    let write = || -> candle_core::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let named: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut file, &meta, &named)?;
        file.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(gguf_error(out, e));
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

/// The adapter as a llama.cpp GGUF LoRA for the GGUF `base`.
pub fn export_gguf_lora(base: &Path, adapter: &LoraAdapter, out: &Path) -> Result<()> {
    let (content, _) = read_content(base)?;
    let architecture_name = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| gguf_error(base, "missing `general.architecture`"))?;
    let config = config_from_gguf(&content, base)?;
    let mut tensors = Vec::new();
    let mut rank = None;
    for (path, module) in adapter.modules() {
        let name = gguf_module(path)
            .ok_or_else(|| gguf_error(base, format!("no llama.cpp name for module `{path}`")))?;
        let a = module.a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let mut b = module.b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if let Some(heads) = permuted_heads(&config, path) {
            b = permute_rows(&b, heads)?;
        }
        rank = Some(a.dim(0)?);
        tensors.push((
            format!("{name}.weight.lora_a"),
            QTensor::quantize(&a, GgmlDType::F32)?,
        ));
        tensors.push((
            format!("{name}.weight.lora_b"),
            QTensor::quantize(&b, GgmlDType::F32)?,
        ));
    }
    let rank = rank.ok_or_else(|| gguf_error(base, "the adapter has no modules"))?;
    let scale = adapter.modules().values().next().map_or(1.0, |m| m.scale);
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(architecture_name),
        ),
        ("general.type".to_string(), Value::String("adapter".into())),
        (
            "general.name".to_string(),
            Value::String("ft LoRA adapter".into()),
        ),
        ("adapter.type".to_string(), Value::String("lora".into())),
        (
            "adapter.lora.alpha".to_string(),
            Value::F32((scale * rank as f64) as f32),
        ),
    ];
    let mut metadata = metadata;
    if let Some(fp) = adapter.base_fingerprint() {
        metadata.push((FINGERPRINT_KEY.to_string(), Value::String(fp.to_string())));
    }
    write_gguf(out, &metadata, &tensors)
}

/// The GGUF `base` with `adapter` merged into the linears it targets, each merged weight
/// stored as `merged_type`; every other tensor and all metadata as the base has them.
pub fn export_merged_gguf(
    base: &Path,
    adapter: &LoraAdapter,
    merged_type: GgmlDType,
    out: &Path,
) -> Result<()> {
    let (content, mut reader) = read_content(base)?;
    let config = config_from_gguf(&content, base)?;
    let mut deltas = std::collections::HashMap::new();
    for (path, module) in adapter.modules() {
        let name = gguf_module(path)
            .ok_or_else(|| gguf_error(base, format!("no llama.cpp name for module `{path}`")))?;
        let a = module.a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let b = module.b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let mut delta = (b.matmul(&a)? * module.scale)?;
        if let Some(heads) = permuted_heads(&config, path) {
            delta = permute_rows(&delta, heads)?;
        }
        deltas.insert(format!("{name}.weight"), delta);
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| gguf_error(base, format!("tensor `{name}`: {e}")))?;
        let tensor = match deltas.remove(name.as_str()) {
            Some(delta) => {
                let merged = (tensor.dequantize(&Device::Cpu)? + delta)?;
                let ty = if merged.dim(1)? % merged_type.block_size() == 0 {
                    merged_type
                } else {
                    GgmlDType::F16
                };
                QTensor::quantize(&merged, ty)?
            }
            None => tensor,
        };
        tensors.push((name.clone(), tensor));
    }
    if let Some(missing) = deltas.keys().next() {
        return Err(gguf_error(
            base,
            format!("the adapter targets `{missing}`, which this GGUF does not have"),
        ));
    }
    let mut metadata: Vec<(String, Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    write_gguf(out, &metadata, &tensors)
}

/// The HF module path of a llama.cpp LoRA tensor name (`blk.3.attn_q.weight.lora_a` →
/// (`model.layers.3.self_attn.q_proj`, 'A')).
fn hf_module_of_lora(name: &str) -> Option<(String, char)> {
    let (module, matrix) = match name.strip_suffix(".weight.lora_a") {
        Some(m) => (m, 'A'),
        None => (name.strip_suffix(".weight.lora_b")?, 'B'),
    };
    let rest = module.strip_prefix("blk.")?;
    let (layer, short) = rest.split_once('.')?;
    let (_, hf) = LINEAR_NAMES.iter().find(|(gguf, _)| *gguf == short)?;
    Some((format!("model.layers.{layer}.{hf}"), matrix))
}

/// Loads a llama.cpp GGUF LoRA (as [`export_gguf_lora`] writes it, or llama.cpp's
/// `convert_lora_to_gguf.py`) for `model`. Refused when it is not a LoRA, is for another
/// architecture, names a module or shape the model does not have, or records another base
/// fingerprint (unless `allow_base_mismatch`).
pub fn load_gguf_lora(
    file: &Path,
    model: &crate::model::Transformer,
    model_fingerprint: &str,
    allow_base_mismatch: bool,
) -> Result<LoraAdapter> {
    let refuse = |reason: String| Error::Adapter {
        path: file.to_path_buf(),
        reason,
    };
    let (content, mut reader) = read_content(file)?;
    let text = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .cloned()
    };
    if text("general.type").as_deref() != Some("adapter")
        || text("adapter.type").as_deref() != Some("lora")
    {
        return Err(refuse(
            "not a GGUF LoRA (general.type must be `adapter`, adapter.type `lora`)".into(),
        ));
    }
    let config = model.config();
    let ours = match config.architecture {
        Architecture::Llama => "llama",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
        Architecture::Gemma3 => "gemma3",
    };
    let theirs = text("general.architecture").unwrap_or_default();
    // llama.cpp writes Mistral checkpoints as `llama` too.
    if theirs != ours && !(ours == "llama" && theirs == "mistral") {
        return Err(refuse(format!(
            "a LoRA for architecture `{theirs}`; this model is `{ours}` (adapter for another base)"
        )));
    }
    let recorded = text(FINGERPRINT_KEY);
    if let Some(fp) = &recorded {
        if fp != model_fingerprint && !allow_base_mismatch {
            return Err(Error::BaseMismatch {
                path: file.to_path_buf(),
                expected: fp.clone(),
                actual: model_fingerprint.to_string(),
            });
        }
    }
    let linears: std::collections::HashMap<&str, (usize, usize)> = model
        .linears()
        .into_iter()
        .map(|l| (l.path(), l.shape()))
        .collect();
    let mut pairs: std::collections::BTreeMap<String, (Option<Tensor>, Option<Tensor>)> =
        std::collections::BTreeMap::new();
    for name in content.tensor_infos.keys() {
        let (module, matrix) = hf_module_of_lora(name).ok_or_else(|| {
            refuse(format!(
                "unexpected tensor `{name}` (only .lora_a/.lora_b of block linears)"
            ))
        })?;
        let &(out_features, in_features) = linears
            .get(module.as_str())
            .ok_or_else(|| refuse(format!("`{name}` targets `{module}`, which this model does not have (adapter for another base)")))?;
        let tensor = content
            .tensor(&mut reader, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(|e| refuse(format!("tensor `{name}`: {e}")))?;
        let (rows, cols) = tensor
            .dims2()
            .map_err(|e| refuse(format!("`{name}`: {e}")))?;
        let fits = if matrix == 'A' {
            cols == in_features
        } else {
            rows == out_features
        };
        if !fits {
            return Err(refuse(format!("`{name}` has shape ({rows}, {cols}), which does not fit `{module}` ({out_features} x {in_features}) (adapter for another base)")));
        }
        let tensor = match (matrix, config.architecture) {
            ('B', Architecture::Llama) if module.ends_with("q_proj") => {
                crate::loader::unpermute_rows(&tensor, config.num_attention_heads)?
            }
            ('B', Architecture::Llama) if module.ends_with("k_proj") => {
                crate::loader::unpermute_rows(&tensor, config.num_key_value_heads)?
            }
            _ => tensor,
        };
        let tensor = tensor.to_device(model.device())?;
        let entry = pairs.entry(module).or_default();
        if matrix == 'A' {
            entry.0 = Some(tensor);
        } else {
            entry.1 = Some(tensor);
        }
    }
    let mut matrices = Vec::new();
    let mut rank = None;
    for (module, pair) in pairs {
        let (Some(a), Some(b)) = pair else {
            return Err(refuse(format!(
                "`{module}` has only one of lora_a / lora_b"
            )));
        };
        let r = a.dim(0)?;
        if b.dim(1)? != r || rank.is_some_and(|rank| rank != r) {
            return Err(refuse(format!(
                "`{module}`: lora_a and lora_b ranks disagree"
            )));
        }
        rank = Some(r);
        let short = module.rsplit('.').next().unwrap_or_default().to_string();
        matrices.push((module, short, a, b));
    }
    let rank = rank.ok_or_else(|| refuse("holds no LoRA tensors".into()))?;
    let alpha = content
        .metadata
        .get("adapter.lora.alpha")
        .and_then(|v| v.to_f32().ok())
        .map_or(rank as f64, f64::from);
    let mut names: Vec<String> = matrices.iter().map(|m| m.1.clone()).collect();
    names.sort();
    names.dedup();
    let lora_config = crate::lora::LoraConfig {
        r: rank,
        alpha,
        dropout: 0.0,
        target_modules: crate::lora::TargetModules::Names(names),
        use_rslora: false,
    };
    let matrices = matrices.into_iter().map(|(m, _, a, b)| (m, a, b)).collect();
    Ok(LoraAdapter::from_modules(lora_config, matrices, recorded))
}

/// Where [`export_gguf_lora`] records the base's fingerprint (llama.cpp ignores the key).
const FINGERPRINT_KEY: &str = "ft.base_fingerprint";
