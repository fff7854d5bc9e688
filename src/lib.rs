//! `ft`: fine-tune LoRA adapters on a frozen base model and serve them, on CPU or CUDA, as one
//! binary. This crate is the library facade over the workspace crates and the home of the CLI.
//!
//! - [`model`]: the transformer, loading (GGUF, safetensors), LoRA, generation (`ft-model`).
//! - [`data`]: tokenizers and chat templates (`ft-data`).
//! - [`kernels`]: ops with correct, cheap backward passes (`ft-kernels`).
//! - [`train`]: the LoRA training loop, optimizer and checkpoints (`ft-train`).
//! - [`serve`]: the OpenAI-compatible server, its engine and adapter registry (`ft-serve`).
//! - [`eval`]: test-split metrics, LLM-as-judge, reports and gates (`ft-eval`).
//! - [`hub`]: turning `--model` (a GGUF file, an HF directory or a Hub id) into a local path.
//!
//! ```no_run
//! use ft::model::{text::TextRequest, TextModel};
//! let path = ft::hub::resolve_model(None)?; // models/SmolLM2-135M-Instruct.Q4_1.gguf
//! let model = TextModel::load(&path, &candle_core::Device::Cpu)?;
//! let request = TextRequest {
//!     prompt: "What is the capital of France?".into(),
//!     raw: false,
//!     max_new_tokens: 24,
//!     sampling: Default::default(),
//! };
//! assert_eq!(model.generate(&request, None)?, "The capital of France is Paris.");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod hub;

pub use ft_core as core;
pub use ft_data as data;
pub use ft_eval as eval;
pub use ft_kernels as kernels;
pub use ft_model as model;
pub use ft_serve as serve;
pub use ft_train as train;
