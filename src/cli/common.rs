//! Flags shared by commands that load a model.

use std::path::PathBuf;

use anyhow::Context;
use ft::model::adapter_io::LoadOptions;
use ft::model::{LoraAdapter, TextModel};

/// `--model`, `--adapter`, `--device`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// A GGUF file, an HF directory, or a Hub id [default: models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    pub model: Option<String>,
    /// A PEFT-format LoRA adapter directory to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Load the adapter even if it was trained on another base model.
    #[arg(long)]
    pub allow_base_mismatch: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl ModelArgs {
    /// Loads the model, its tokenizer and the adapter, if any.
    pub fn load(&self) -> anyhow::Result<(TextModel, Option<LoraAdapter>)> {
        let path = ft::hub::resolve_model(self.model.as_deref())?;
        let device = ft::core::device::select(self.device.parse()?)?;
        let model = TextModel::load(&path, &device)?;
        let adapter = match &self.adapter {
            Some(dir) => Some(
                model
                    .model
                    .load_adapter(
                        dir,
                        &LoadOptions {
                            allow_base_mismatch: self.allow_base_mismatch,
                        },
                    )
                    .with_context(|| format!("loading adapter {}", dir.display()))?,
            ),
            None => None,
        };
        Ok((model, adapter))
    }
}
