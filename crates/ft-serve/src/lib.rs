//! `ft serve`: an OpenAI-compatible HTTP server over one frozen base model, with LoRA
//! adapters chosen per request through `model` and loaded, replaced or unloaded while it runs.
//!
//! The pieces, in the order a request meets them:
//! - [`Server`] (axum): routes, API key, body limit, OpenAI request/response shapes
//!   ([`openai`], [`request`]), SSE streaming, `/metrics` ([`metrics`]) and `/health`.
//! - [`Registry`]: adapters as data — name → directory, at most N resident (LRU), base
//!   fingerprint checked at load; a request pins one adapter version until it finishes.
//! - [`Engine`]: one scheduler thread that owns the model and runs continuous batching —
//!   sequences join and leave the decode batch at every step, each with its own KV cache and
//!   adapter; rows of different adapters share one batch.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ft_serve::{Engine, EngineConfig, Registry, Server, ServerConfig};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let device = candle_core::Device::Cpu;
//! let model = Arc::new(ft_model::TextModel::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &device)?);
//! let registry = Arc::new(Registry::new(model.clone(), None, 10));
//! registry.load("demo", "runs/demo/adapter".as_ref())?;
//! let engine = Engine::start(model, EngineConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::new(engine, registry, ServerConfig::default())
//!     .serve(listener, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! # Ok(()) }
//! ```

pub mod closed_loop;
mod completion;
pub mod engine;
pub mod error;
pub mod fine_tuning;
pub mod metrics;
pub mod openai;
pub mod prefix_cache;
pub mod registry;
pub mod request;
pub mod server;

pub use closed_loop::{ClosedLoop, ClosedLoopConfig};
pub use engine::{Engine, EngineConfig};
pub use error::ApiError;
pub use fine_tuning::{FineTuning, FineTuningConfig};
pub use registry::Registry;
pub use server::{Server, ServerConfig};
