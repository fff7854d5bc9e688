//! `ft eval`: evaluate the base model and adapters on a held-out test split, side by side.
//!
//! - [`evaluate`](evaluate::evaluate): teacher-forced loss/perplexity with the training masks
//!   (the same function as `ft train`'s evaluation), then batched greedy generation in which
//!   rows of every adapter share each batch.
//! - [`text_metrics`]: exact match and F1 (SQuAD), ROUGE-L (rouge-score), BLEU (sacreBLEU),
//!   JSON validity — each checked against the reference library on committed fixtures.
//! - [`judge`]: pairwise LLM-as-judge through any OpenAI-compatible endpoint, both orders,
//!   robust to malformed verdicts, with Wilson intervals.
//! - [`report`]: `report.json`, `report.md`, `chart.svg`; [`gate`]: `--gate` expressions for CI.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ft_eval::evaluate::{evaluate, Candidate, EvalOptions};
//! let device = candle_core::Device::Cpu;
//! let model = ft_model::TextModel::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &device)?;
//! let adapter = model.model.load_adapter("runs/support/adapter".as_ref(), &Default::default())?;
//! let candidates = [
//!     Candidate { name: "base".into(), adapter: None, source: None },
//!     Candidate { name: "support".into(), adapter: Some(Arc::new(adapter)), source: Some("runs/support/adapter".into()) },
//! ];
//! let report = evaluate(&model, "datasets/support/test.jsonl".as_ref(), &candidates, &EvalOptions::default())?;
//! report.write("runs/support/eval".as_ref())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

pub mod evaluate;
pub mod gate;
pub mod judge;
pub mod report;
pub mod text_metrics;

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A line of the test split is not a usable example.
    #[error("{}:{line}: {reason}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A bad option.
    #[error("{0}")]
    Setting(String),
    /// Reading or tokenizing the dataset failed.
    #[error(transparent)]
    Dataset(#[from] ft_data::Error),
    /// A report file could not be written.
    #[error(transparent)]
    Report(#[from] ft_model::Error),
    /// The model failed.
    #[error("model: {}", ft_core::error::one_line(.0))]
    Model(#[from] candle_core::Error),
}

impl Error {
    fn io(path: &Path, cause: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
