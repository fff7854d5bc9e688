//! Flags shared by commands that load a model.

use std::path::PathBuf;

use anyhow::Context;
use ft::kernels::quant::QuantType;
use ft::model::adapter_io::LoadOptions;
use ft::model::{LoraAdapter, ModelOptions, Precision, TextModel};

/// `--precision`, `--quantize`: how the frozen base is computed.
#[derive(Debug, clap::Args)]
pub struct PrecisionArgs {
    /// f32 (exact: transformers' numbers) or quantized (GGUF weights kept in their block type,
    /// integer kernels: several times faster, NLL within ~1e-3 of f32) [default: quantized,
    /// except `ft score`: f32].
    #[arg(long)]
    pub precision: Option<Precision>,
    /// With --precision quantized and an HF safetensors base: quantize its linear weights at
    /// load (q8_0, q4_0, q4_1, q5_0, q5_1; q4_k, q5_k, q6_k need rows of a multiple of 256).
    #[arg(long, value_parser = parse_quant_type)]
    pub quantize: Option<QuantType>,
}

impl PrecisionArgs {
    /// The base of `ft serve` and `ft worker` on `--device`: quantized unless --precision
    /// says otherwise.
    pub fn load_serving_base(
        &self,
        path: &std::path::Path,
        device: &str,
    ) -> anyhow::Result<std::sync::Arc<TextModel>> {
        let device = ft::core::device::select(device.parse()?)?;
        let options = self.options(Precision::Quantized);
        Ok(std::sync::Arc::new(TextModel::load_with(
            path, &device, &options,
        )?))
    }

    /// The load options, with `default` when --precision is not given.
    pub fn options(&self, default: Precision) -> ModelOptions {
        ModelOptions {
            precision: self.precision.unwrap_or(default),
            quantize: self.quantize,
        }
    }
}

fn parse_quant_type(name: &str) -> Result<QuantType, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "q4_0" => QuantType::Q4_0,
        "q4_1" => QuantType::Q4_1,
        "q5_0" => QuantType::Q5_0,
        "q5_1" => QuantType::Q5_1,
        "q8_0" => QuantType::Q8_0,
        "q4_k" => QuantType::Q4K,
        "q5_k" => QuantType::Q5K,
        "q6_k" => QuantType::Q6K,
        other => {
            return Err(format!(
                "unknown block type `{other}`; use q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k or q6_k"
            ))
        }
    })
}

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
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

impl ModelArgs {
    /// Loads the model (with `default` precision unless --precision says otherwise), its
    /// tokenizer and the adapter, if any.
    pub fn load(&self, default: Precision) -> anyhow::Result<(TextModel, Option<LoraAdapter>)> {
        let path = ft::hub::resolve_model(self.model.as_deref())?;
        let device = ft::core::device::select(self.device.parse()?)?;
        let model = TextModel::load_with(&path, &device, &self.precision.options(default))?;
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
