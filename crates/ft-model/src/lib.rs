//! The llama-family transformer of `ft`, used unchanged for training and for serving.
//!
//! Owns: configuration ([`Config`]), weight loading from GGUF (dequantized, q/k un-permuted)
//! and HF safetensors ([`loader`]), the model ([`Transformer`]: plain structs with `load` and
//! `forward`), LoRA ([`LoraAdapter`], PEFT-format I/O in [`adapter_io`]), the KV cache
//! ([`Cache`]) and sampling ([`generate`]). Tokenizers and chat templates live in `ft-data`;
//! the training loop in `ft-train`.
//!
//! The KV cache and the adapter are arguments of `forward`, never model state, so one
//! `Transformer` can be shared by `Arc` between training, evaluation and serving.
//!
//! ```no_run
//! use ft_model::{generate::{generate, GenerateParams}, Model};
//! let model = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &candle_core::Device::Cpu)?;
//! let params = GenerateParams { max_new_tokens: 8, stop_ids: vec![2], sampling: Default::default() };
//! let new_tokens = generate(&model.transformer, &[vec![1, 9690, 198]], &params, None)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod adapter_io;
mod block_backward;
mod cache;
pub mod config;
pub mod error;
pub mod export;
pub mod export_gguf;
pub mod fused_decode;
pub mod generate;
mod inputs;
pub mod linear;
pub mod loader;
pub mod lora;
pub mod loss;
pub mod manifest;
pub mod model;
pub mod pretrained;
mod safetensors_stream;
pub mod text;

pub use cache::Cache;
pub use config::{Architecture, Config};
pub use error::{Error, Result};
pub use linear::{QuantizedWeights, Weight};
pub use lora::{Lora, LoraAdapter, LoraConfig, RowAdapters, TargetModules};
pub use model::{Inputs, KvSource, Transformer};
pub use pretrained::{Model, ModelOptions, Precision};
pub use text::TextModel;
