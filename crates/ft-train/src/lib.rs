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
