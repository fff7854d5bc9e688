//! A loaded base model: the transformer plus where it came from and its fingerprint.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarBuilder;

use crate::adapter_io::{load_adapter, LoadOptions};
use crate::loader::{fingerprint, load_weights};
use crate::lora::LoraAdapter;
use crate::model::Transformer;
use crate::{Error, Result};

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
        let dtype = ft_core::device::compute_dtype(device);
        let weights = load_weights(path, dtype, device)?;
        let vb = VarBuilder::from_tensors(weights.tensors, dtype, device);
        let transformer = Transformer::load(vb, &weights.config).map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            reason: ft_core::error::one_line(&e),
        })?;
        let fingerprint = fingerprint(&weights.config, transformer.embed_tokens())?;
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
