//! A loaded base model: the transformer plus where it came from and its fingerprint.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use ft_kernels::quant::QuantType;

use crate::adapter_io::{load_adapter, LoadOptions};
use crate::loader::{fingerprint, load_weights_with, FINGERPRINT_ROWS};
use crate::lora::LoraAdapter;
use crate::model::Transformer;
use crate::{Error, Result};

/// How the frozen base is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    /// Every weight dequantized to f32: transformers' numbers exactly, and trainable through.
    #[default]
    F32,
    /// Linear weights kept in their GGUF block type and multiplied by integer kernels with
    /// 8-bit activations (as llama.cpp): several times faster, inference only.
    Quantized,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "exact" => Ok(Self::F32),
            "quantized" | "fast" => Ok(Self::Quantized),
            other => Err(format!("unknown precision `{other}`; use f32 or quantized")),
        }
    }
}

/// How to load a base model (see [`Model::load_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelOptions {
    /// f32 (exact) or quantized (fast) frozen weights.
    pub precision: Precision,
    /// With [`Precision::Quantized`]: the block type that full-precision weights (an HF
    /// safetensors base) are quantized to at load. `None` keeps them dense.
    pub quantize: Option<QuantType>,
}

/// A frozen base model ready for training LoRA on or serving.
#[derive(Debug, Clone)]
pub struct Model {
    /// The network.
    pub transformer: Transformer,
    /// Identifies the exact base weights (see [`crate::loader::fingerprint`]).
    pub fingerprint: String,
    /// The GGUF file or HF directory it was loaded from.
    pub source: PathBuf,
}

impl Model {
    /// Loads a GGUF file or an HF directory onto `device`, in that device's compute dtype
    /// (f32 on CPU, bf16 on CUDA).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, device, &ModelOptions::default())
    }

    /// Loads a GGUF file or an HF directory with `options` (quantized weights stay on the CPU;
    /// other devices load in full precision).
    pub fn load_with(path: &Path, device: &Device, options: &ModelOptions) -> Result<Self> {
        let dtype = ft_core::device::compute_dtype(device);
        let options = if device.is_cpu() {
            *options
        } else {
            ModelOptions::default()
        };
        let weights = load_weights_with(path, dtype, device, &options)?;
        let vb = VarBuilder::from_tensors(weights.tensors, dtype, device);
        let transformer = Transformer::load_quantized(vb, &weights.config, &weights.quantized)
            .map_err(|e| Error::Weights {
                path: path.to_path_buf(),
                reason: ft_core::error::one_line(&e),
            })?;
        let first_rows = match &weights.fingerprint_rows {
            Some(rows) => rows.clone(),
            None => {
                let rows = weights.config.vocab_size.min(FINGERPRINT_ROWS) as u32;
                transformer.embedding_rows(&Tensor::arange(0u32, rows, device)?)?
            }
        };
        let fingerprint = fingerprint(&weights.config, &first_rows)?;
        Ok(Self {
            transformer,
            fingerprint,
            source: weights.source,
        })
    }

    /// Loads a PEFT-format adapter for this model (see [`load_adapter`]).
    pub fn load_adapter(&self, dir: &Path, options: &LoadOptions) -> Result<LoraAdapter> {
        load_adapter(dir, &self.transformer, &self.fingerprint, options)
    }
}
