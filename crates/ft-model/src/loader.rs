//! Reading weights into HF-named tensors: from a GGUF file (dequantized, q/k un-permuted) or
//! from an HF directory (`config.json` + single or sharded safetensors).
//!
//! Both loaders hand the same names to [`crate::Transformer::load`], so there is one model.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::config::{Activation, Architecture, Config, HfConfig, RopeScaling};
use crate::linear::QuantizedWeights;
use crate::pretrained::{ModelOptions, Precision};
use crate::{Error, Result};
use ft_core::error::one_line;
use ft_kernels::quant::{QuantMatrix, QuantType};

/// A model's configuration and weights, named as in Hugging Face checkpoints.
pub struct LoadedWeights {
    /// The resolved configuration.
    pub config: Config,
    /// Weights by HF name (`model.layers.0.self_attn.q_proj.weight`), in the compute dtype.
    pub tensors: HashMap<String, Tensor>,
    /// Weights kept in their block type (with [`Precision::Quantized`]); these are not in
    /// `tensors`.
    pub quantized: QuantizedWeights,
    /// The file or directory they came from.
    pub source: PathBuf,
    /// The first rows of the token embedding as the source has them, when the embedding was
    /// quantized at load: the fingerprint is taken from these, so adapters trained on the
    /// full-precision base still match.
    pub fingerprint_rows: Option<Tensor>,
}

/// Rows of the token embedding the fingerprint reads.
pub const FINGERPRINT_ROWS: usize = 64;

/// Loads a GGUF file or an HF directory in full precision, choosing by what `path` is.
pub fn load_weights(path: &Path, dtype: DType, device: &Device) -> Result<LoadedWeights> {
    load_weights_with(path, dtype, device, &ModelOptions::default())
}

/// As [`load_weights`], keeping the linear weights quantized when `options` asks.
pub fn load_weights_with(
    path: &Path,
    dtype: DType,
    device: &Device,
    options: &ModelOptions,
) -> Result<LoadedWeights> {
    let metadata = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let quantized = options.precision == Precision::Quantized && device.is_cpu();
    if metadata.is_dir() {
        let quantize = options.quantize.filter(|_| quantized);
        load_hf_dir(path, dtype, device, quantize)
    } else {
        load_gguf(path, dtype, device, quantized)
    }
}

/// Weights that the quantized path multiplies in their block type: the linears, the token
/// embedding (rows are dequantized on lookup) and the LM head. Norms and biases stay dense.
fn is_quantizable(hf_name: &str) -> bool {
    hf_name.ends_with("_proj.weight")
        || hf_name == "model.embed_tokens.weight"
        || hf_name == "lm_head.weight"
}

/// The row order that undoes llama.cpp's q/k permutation (see [`unpermute_rows`]).
fn unpermuted_order(rows: usize, heads: usize) -> Vec<usize> {
    let half = rows / heads / 2;
    // HF row (h, i, j) of (heads, 2, half) came from llama.cpp row (h, j, i) of (heads, half, 2).
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                order.push(h * 2 * half + j * 2 + i);
            }
        }
    }
    order
}

fn gguf_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// candle's GGUF errors as one line, with the unknown-type case spelled out.
fn describe_gguf_error(err: &candle_core::Error) -> String {
    let message = one_line(err);
    match message.strip_prefix("unknown dtype for tensor ") {
        Some(type_id) => format!(
            "ggml tensor type {type_id} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q8_K)"
        ),
        None => message,
    }
}

fn meta_u64(value: &Value) -> Option<u64> {
    match value {
        Value::U8(v) => Some(*v as u64),
        Value::U16(v) => Some(*v as u64),
        Value::U32(v) => Some(*v as u64),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn meta_f64(value: &Value) -> Option<f64> {
    match value {
        Value::F32(v) => Some(*v as f64),
        Value::F64(v) => Some(*v),
        other => meta_u64(other).map(|v| v as f64),
    }
}

/// Builds a [`Config`] from GGUF metadata (`general.architecture`, `{arch}.block_count`, ...).
pub fn config_from_gguf(content: &Content, path: &Path) -> Result<Config> {
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| gguf_error(path, "missing `general.architecture`"))?
        .clone();
    let architecture = match arch.as_str() {
        "llama" | "mistral" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        "gemma3" => Architecture::Gemma3,
        _ => {
            return Err(Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                architecture: arch,
            })
        }
    };
    let get = |key: &str| content.metadata.get(&format!("{arch}.{key}"));
    let need_usize = |key: &str| -> Result<usize> {
        get(key)
            .and_then(meta_u64)
            .map(|v| v as usize)
            .ok_or_else(|| gguf_error(path, format!("missing or non-integer `{arch}.{key}`")))
    };
    let hidden_size = need_usize("embedding_length")?;
    let num_attention_heads = need_usize("attention.head_count")?;
    let vocab_size = match get("vocab_size").and_then(meta_u64) {
        Some(v) => v as usize,
        None => content
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.len())
            .or_else(|| {
                content
                    .tensor_infos
                    .get("token_embd.weight")
                    .map(|t| t.shape.dims()[0])
            })
            .ok_or_else(|| gguf_error(path, "cannot tell the vocabulary size"))?,
    };
    if num_attention_heads == 0 {
        return Err(gguf_error(path, "attention.head_count is 0"));
    }
    let num_hidden_layers = need_usize("block_count")?;
    let head_dim = get("attention.key_length")
        .and_then(meta_u64)
        .map_or(hidden_size / num_attention_heads, |v| v as usize);
    let gemma = architecture == Architecture::Gemma3;
    // llama.cpp's Gemma 3: every sixth layer global, the others a window with RoPE base 1e4;
    // scores scaled by 1/sqrt(head_dim), except the 62-layer 27B's 1/sqrt(hidden/heads).
    let sliding_window = get("attention.sliding_window")
        .and_then(meta_u64)
        .map(|v| v as usize)
        .filter(|_| gemma);
    let pattern = get("attention.sliding_window_pattern")
        .and_then(meta_u64)
        .map_or(6, |v| v as usize)
        .max(1);
    let sliding_layers = match sliding_window {
        Some(_) => (0..num_hidden_layers)
            .map(|i| (i + 1) % pattern != 0)
            .collect(),
        None => Vec::new(),
    };
    let query_pre_attn_scalar =
        (gemma && num_hidden_layers == 62).then(|| (hidden_size / num_attention_heads) as f64);
    let rope_scaling = match (
        get("rope.scaling.type")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str),
        get("rope.scaling.factor").and_then(meta_f64),
    ) {
        (Some("linear"), Some(factor)) if factor != 1.0 => RopeScaling::Linear { factor },
        _ => RopeScaling::None,
    };
    let config = Config {
        architecture,
        hidden_size,
        intermediate_size: need_usize("feed_forward_length")?,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads: get("attention.head_count_kv")
            .and_then(meta_u64)
            .map_or(num_attention_heads, |v| v as usize),
        head_dim,
        vocab_size,
        rms_norm_eps: get("attention.layer_norm_rms_epsilon")
            .and_then(meta_f64)
            .unwrap_or(1e-5),
        rope_theta: get("rope.freq_base").and_then(meta_f64).unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: get("context_length")
            .and_then(meta_u64)
            .map_or(4096, |v| v as usize),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        qk_norm: content
            .tensor_infos
            .contains_key("blk.0.attn_q_norm.weight"),
        activation: if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        sandwich_norms: gemma,
        embedding_scale: gemma.then(|| (hidden_size as f64).sqrt()),
        query_pre_attn_scalar,
        sliding_window,
        sliding_layers,
        rope_local_theta: sliding_window.map(|_| 10000.0),
    };
    config
        .validate()
        .map_err(|reason| gguf_error(path, reason))?;
    Ok(config)
}

/// The block linears' llama.cpp names and their HF module paths within a block.
pub(crate) const LINEAR_NAMES: [(&str, &str); 7] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Maps a llama.cpp tensor name to its Hugging Face name (`ffn_norm` is the MLP's input norm:
/// Gemma's `pre_feedforward_layernorm`, llama's `post_attention_layernorm`).
fn hf_name(gguf_name: &str, architecture: Architecture) -> Option<String> {
    let top = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = top {
        return Some(name.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    if let Some(&(_, hf)) = LINEAR_NAMES.iter().find(|(gguf, _)| *gguf == module) {
        return Some(format!("model.layers.{layer}.{hf}.{kind}"));
    }
    let hf_module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" if architecture == Architecture::Gemma3 => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{kind}"))
}

/// Undoes llama.cpp's row permutation of q/k (its converter interleaves the two rotary halves
/// of each head; HF keeps them as two blocks). Same as transformers' `reverse_permute_weights`.
pub(crate) fn unpermute_rows(tensor: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let Some(&rows) = dims.first() else {
        candle_core::bail!("q/k weight has no dimensions");
    };
    let rest: usize = dims[1..].iter().product();
    tensor
        .reshape((heads, rows / heads / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

fn load_gguf(
    path: &Path,
    dtype: DType,
    device: &Device,
    keep_quantized: bool,
) -> Result<LoadedWeights> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content =
        Content::read(&mut reader).map_err(|e| gguf_error(path, describe_gguf_error(&e)))?;
    let mut config = config_from_gguf(&content, path)?;
    let mut tensors = HashMap::new();
    let mut quantized = QuantizedWeights::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let info = &content.tensor_infos[name];
        let weights_error = |e: candle_core::Error| Error::Weights {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}` ({:?}): {}", info.ggml_dtype, one_line(&e)),
        };
        let quant_type = QuantType::from_ggml(info.ggml_dtype);
        if let (true, Some(ty), Some(hf)) = (
            keep_quantized,
            quant_type,
            hf_name(name, config.architecture),
        ) {
            if is_quantizable(&hf) && info.shape.rank() == 2 {
                let (rows, cols) = info.shape.dims2().map_err(weights_error)?;
                let read = |reader: &mut BufReader<File>| -> candle_core::Result<QuantMatrix> {
                    let q = info.read(reader, content.tensor_data_offset, &Device::Cpu)?;
                    let matrix = QuantMatrix::new(ty, rows, cols, q.data()?.into_owned())?;
                    let heads = match (config.architecture, hf.as_str()) {
                        (Architecture::Llama, n) if n.contains("self_attn.q_proj") => {
                            Some(config.num_attention_heads)
                        }
                        (Architecture::Llama, n) if n.contains("self_attn.k_proj") => {
                            Some(config.num_key_value_heads)
                        }
                        _ => None,
                    };
                    match heads {
                        Some(heads) => matrix.permute_rows(&unpermuted_order(rows, heads)),
                        None => Ok(matrix),
                    }
                };
                let matrix = read(&mut reader).map_err(weights_error)?;
                quantized.insert(hf, Arc::new(matrix));
                continue;
            }
        }
        let read = |reader: &mut BufReader<File>| -> candle_core::Result<Tensor> {
            info.read(reader, content.tensor_data_offset, &Device::Cpu)?
                .dequantize(&Device::Cpu)
        };
        let tensor = read(&mut reader).map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}` ({:?}): {}", info.ggml_dtype, one_line(&e)),
        })?;
        if name == "rope_freqs.weight" {
            config.rope_scaling = RopeScaling::Factors(tensor.to_dtype(DType::F32)?.to_vec1()?);
            continue;
        }
        let Some(hf) = hf_name(name, config.architecture) else {
            tracing::debug!("ignoring GGUF tensor {name}");
            continue;
        };
        // llama.cpp permutes q/k only for the llama architecture.
        let tensor = match (config.architecture, hf.as_str()) {
            (Architecture::Llama, n) if n.contains("self_attn.q_proj") => {
                unpermute_rows(&tensor, config.num_attention_heads)?
            }
            (Architecture::Llama, n) if n.contains("self_attn.k_proj") => {
                unpermute_rows(&tensor, config.num_key_value_heads)?
            }
            _ => tensor,
        };
        tensors.insert(hf, tensor.to_dtype(dtype)?.to_device(device)?);
    }
    Ok(LoadedWeights {
        config,
        tensors,
        quantized,
        source: path.to_path_buf(),
        // GGUF blocks dequantize to the same values on both paths.
        fingerprint_rows: None,
    })
}

/// The safetensors files of an HF directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.is_file() {
        return Err(Error::ModelPath {
            path: dir.to_path_buf(),
            reason: "no model.safetensors or model.safetensors.index.json in this directory"
                .to_string(),
        });
    }
    let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
    let index: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: index_path.clone(),
        reason: e.to_string(),
    })?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config {
            path: index_path.clone(),
            reason: "missing `weight_map`".to_string(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

fn load_hf_dir(
    dir: &Path,
    dtype: DType,
    device: &Device,
    quantize: Option<QuantType>,
) -> Result<LoadedWeights> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::ModelPath {
            path: dir.to_path_buf(),
            reason: "not a model directory: config.json is missing".to_string(),
        });
    }
    let config = HfConfig::read(&config_path)?.into_config(&config_path)?;
    let mut tensors = HashMap::new();
    let mut quantized = QuantizedWeights::new();
    let mut fingerprint_rows = None;
    for file in safetensors_files(dir)? {
        crate::safetensors_stream::for_each_tensor(&file, |name, tensor| {
            if let Some(ty) = quantize.filter(|ty| is_quantizable(&name) && fits(&tensor, *ty)) {
                if name == "model.embed_tokens.weight" {
                    let rows = tensor.dim(0)?.min(FINGERPRINT_ROWS);
                    fingerprint_rows = Some(tensor.narrow(0, 0, rows)?.to_dtype(DType::F32)?);
                }
                let matrix = quantize_tensor(&tensor, ty).map_err(|e| Error::Weights {
                    path: file.clone(),
                    reason: format!("quantizing `{name}` to {ty:?}: {}", one_line(&e)),
                })?;
                quantized.insert(name, Arc::new(matrix));
                return Ok(());
            }
            // Gemma's norms scale by (1 + w); llama.cpp's converter stores 1 + w, and so do we.
            let tensor =
                if config.architecture == Architecture::Gemma3 && name.ends_with("norm.weight") {
                    (tensor.to_dtype(DType::F32)? + 1.0)?
                } else {
                    tensor
                };
            tensors.insert(name, tensor.to_dtype(dtype)?.to_device(device)?);
            Ok(())
        })?;
    }
    Ok(LoadedWeights {
        config,
        tensors,
        quantized,
        source: dir.to_path_buf(),
        fingerprint_rows,
    })
}

/// Whether `tensor` is a matrix whose rows split into `ty`'s blocks (others stay dense).
fn fits(tensor: &Tensor, ty: QuantType) -> bool {
    tensor
        .dims2()
        .is_ok_and(|(_, cols)| cols.is_multiple_of(ty.block_len()))
}

/// Quantizes a full-precision `(rows, cols)` weight with candle's ggml port.
fn quantize_tensor(tensor: &Tensor, ty: QuantType) -> candle_core::Result<QuantMatrix> {
    let (rows, cols) = tensor.dims2()?;
    let q = candle_core::quantized::QTensor::quantize(&tensor.to_dtype(DType::F32)?, ty.to_ggml())?;
    QuantMatrix::new(ty, rows, cols, q.data()?.into_owned())
}

/// A short identifier of the exact base weights: SHA-256 over the configuration's shape and the
/// first rows of the token embedding. Two loads of the same file agree; another model, or the
/// same model quantized differently, does not.
pub fn fingerprint(config: &Config, embed_tokens: &Tensor) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(
        format!(
            "{:?} h{} i{} l{} a{} kv{} d{} v{}",
            config.architecture,
            config.hidden_size,
            config.intermediate_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            config.vocab_size
        )
        .as_bytes(),
    );
    let rows = embed_tokens.dim(0)?.min(FINGERPRINT_ROWS);
    let sample: Vec<f32> = embed_tokens
        .narrow(0, 0, rows)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    for value in sample {
        hasher.update(value.to_le_bytes());
    }
    let digest = hasher.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_gguf_names_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight", Architecture::Llama).as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", Architecture::Llama).as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight", Architecture::Llama).as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.0.unknown.weight", Architecture::Llama), None);
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight", Architecture::Gemma3).as_deref(),
            Some("model.layers.3.pre_feedforward_layernorm.weight")
        );
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> candle_core::Result<()> {
        // llama.cpp: w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, rows, cols) = (2, 8, 3);
        let w = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)?.reshape((rows, cols))?;
        let permuted = w
            .reshape((heads, 2, rows / heads / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))?;
        let back = unpermute_rows(&permuted, heads)?;
        assert_eq!(back.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        Ok(())
    }
}
