//! Text in and out of `ft`: tokenizers (from `tokenizer.json` or GGUF metadata, giving the same
//! ids as transformers) and chat templates (the model's own Jinja template, rendered with
//! minijinja as transformers renders it with jinja2).
//!
//! Dataset formats, loss masks and batching build on these (and live here too); the model
//! itself is in `ft-model`.
//!
//! ```no_run
//! let tokenizer = ft_data::Tokenizer::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! let ids = tokenizer.encode("Hello world", false)?;
//! let messages = [ft_data::Message::new("user", "What is the capital of France?")];
//! let prompt = tokenizer.chat_template()?.render(&messages, true)?;
//! # Ok::<(), ft_data::Error>(())
//! ```

pub mod batch;
pub mod chat;
pub mod dataset;
pub mod error;
pub mod format;
pub mod mask;
pub mod prepare;
mod spm;
pub mod tokenize;
pub mod tokenizer;

pub use batch::{Batch, BatchConfig, Batcher, Cursor};
pub use chat::{ChatTemplate, Message};
pub use dataset::{read_dataset, LineError, ReadOptions, Report};
pub use error::{Error, Result};
pub use format::{Example, Format};
pub use tokenize::{ExampleTokenizer, TokenizedExample};
pub use tokenizer::Tokenizer;
