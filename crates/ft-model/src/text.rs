//! Text in, text out: a [`Model`] with its tokenizer and chat template.

use std::path::Path;

use candle_core::Device;
use ft_data::{Message, Tokenizer};
use serde::Serialize;

use crate::generate::{generate, token_nll, GenerateParams, SamplingParams};
use crate::lora::LoraAdapter;
use crate::pretrained::{Model, ModelOptions};
use crate::Result;

/// A base model plus the tokenizer that came with it.
#[derive(Debug, Clone)]
pub struct TextModel {
    /// The network and its fingerprint.
    pub model: Model,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
}

/// Per-token negative log-likelihoods of a text (see [`TextModel::score`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// The text's token ids, no special tokens added.
    pub token_ids: Vec<u32>,
    /// `nll[i]` = −log p(token_ids[i+1] | token_ids[..=i]).
    pub nll: Vec<f32>,
    /// Mean of `nll`.
    pub nll_mean: f32,
    /// Number of predicted tokens (`token_ids.len() - 1`).
    pub n_pred: usize,
}

/// What to generate and how (see [`TextModel::generate`]).
#[derive(Debug, Clone)]
pub struct TextRequest {
    /// The user's prompt.
    pub prompt: String,
    /// Send `prompt` as-is instead of through the chat template.
    pub raw: bool,
    /// The most new tokens.
    pub max_new_tokens: usize,
    /// Sampling (temperature 0 = greedy).
    pub sampling: SamplingParams,
}

impl TextModel {
    /// Loads weights and tokenizer from one GGUF file or HF directory.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, device, &ModelOptions::default())
    }

    /// As [`TextModel::load`], with `options` (e.g. a quantized base for fast inference).
    pub fn load_with(path: &Path, device: &Device, options: &ModelOptions) -> Result<Self> {
        // Weights first: an unsupported architecture or quantization is the more useful error.
        let model = Model::load_with(path, device, options)?;
        let tokenizer = Tokenizer::load(path)?;
        Ok(Self { model, tokenizer })
    }

    /// Token ids of `request`'s prompt: chat-templated with a generation prompt, or raw.
    pub fn prompt_ids(&self, request: &TextRequest) -> Result<Vec<u32>> {
        if request.raw {
            return Ok(self.tokenizer.encode(&request.prompt, true)?);
        }
        let text = self
            .tokenizer
            .chat_template()?
            .render(&[Message::new("user", request.prompt.clone())], true)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// Generates the answer to `request`, with `adapter` applied when given. Returns the text
    /// without special tokens.
    pub fn generate(&self, request: &TextRequest, adapter: Option<&LoraAdapter>) -> Result<String> {
        let prompt = self.prompt_ids(request)?;
        let params = GenerateParams {
            max_new_tokens: request.max_new_tokens,
            stop_ids: self.tokenizer.eos_ids().to_vec(),
            sampling: request.sampling.clone(),
        };
        let ids = generate(&self.model.transformer, &[prompt], &params, adapter)?;
        Ok(self.tokenizer.decode(&ids[0], true)?)
    }

    /// Scores `text` (tokenized with no special tokens).
    pub fn score(&self, text: &str, adapter: Option<&LoraAdapter>) -> Result<Score> {
        let token_ids = self.tokenizer.encode(text, false)?;
        let nll = token_nll(&self.model.transformer, &token_ids, adapter)?;
        let n_pred = nll.len();
        let nll_mean = nll.iter().sum::<f32>() / n_pred as f32;
        Ok(Score {
            token_ids,
            nll,
            nll_mean,
            n_pred,
        })
    }
}
