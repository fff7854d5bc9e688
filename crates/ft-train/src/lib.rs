//! LoRA training for `ft`: our own AdamW ([`optim`]) with PyTorch's semantics and saveable
//! state, warmup + cosine/linear/constant schedules ([`schedule`]), the training loop with
//! gradient accumulation, clipping, evaluation and early stopping ([`trainer`]), and
//! checkpoints that resume to the same bytes ([`checkpoint`]).

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use config::{BasePrecision, TrainConfig, TrainPrecision};
pub use error::{Error, Result};
pub use trainer::{Event, Resume, TrainOptions, TrainOutcome, Trainer};

/// Loads `path` as training needs it for `base_precision`: dense f32 for the exact path, or
/// with the base linears quantized (a GGUF's blocks as they are; an HF base quantized to
/// Q8_0 / Q4_0 at load) for `q8` / `q4`.
pub fn load_model(
    path: &std::path::Path,
    device: &candle_core::Device,
    base_precision: BasePrecision,
) -> ft_model::Result<ft_model::TextModel> {
    use ft_kernels::quant::QuantType;
    let quantize = match base_precision {
        BasePrecision::F32 => return ft_model::TextModel::load(path, device),
        BasePrecision::Q4 => QuantType::Q4_0,
        BasePrecision::Q8 => QuantType::Q8_0,
    };
    let options = ft_model::ModelOptions {
        precision: ft_model::Precision::Quantized,
        quantize: Some(quantize),
    };
    ft_model::TextModel::load_with(path, device, &options)
}
