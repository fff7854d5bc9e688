//! The OpenAI wire format: request bodies as clients send them and the response objects
//! (`chat.completion`, `chat.completion.chunk`, `text_completion`, `list`, `error`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl StopSpec {
    /// The stop strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`, once checked (see [`CommonParams::stream_options`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Send a last chunk with token usage before `[DONE]`.
    pub include_usage: bool,
}

/// The sampling and length fields shared by both completion endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonParams {
    /// Sampling temperature (0 = greedy); OpenAI's default is 1.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens (a vLLM extension; 0 or -1 = off).
    pub top_k: Option<i64>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Stop strings (not included in the output).
    pub stop: Option<StopSpec>,
    /// Most new tokens.
    pub max_tokens: Option<i64>,
    /// Most new tokens (the newer name; wins over `max_tokens`).
    pub max_completion_tokens: Option<i64>,
    /// Number of choices.
    pub n: Option<i64>,
    /// Stream chunks over server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options: an object, and only with `stream: true` (as OpenAI checks). Kept as
    /// JSON so that a wrong shape (`[]`, which serde would read as an empty struct) is a 400
    /// naming this field.
    pub stream_options: Option<Value>,
    /// Who asked (OpenAI's end-user id): the key of the canary traffic split.
    pub user: Option<String>,
    /// Keep the conversation in the request log (OpenAI's stored completions), so feedback
    /// can correct it.
    pub store: Option<bool>,
}

/// A message of a chat request: `content` is a string or a list of `{"type": "text", ...}` parts.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (`developer` is read as `system`).
    pub role: String,
    /// The text, or text parts.
    #[serde(default)]
    pub content: Option<Value>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The base model's id or an adapter's name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling, length, streaming.
    #[serde(flatten)]
    pub params: CommonParams,
}

/// `prompt` of a completion request: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptSpec {
    /// One prompt.
    One(String),
    /// Several prompts, one choice group each.
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The base model's id or an adapter's name.
    pub model: String,
    /// The raw prompt text (no chat template).
    pub prompt: PromptSpec,
    /// Sampling, length, streaming.
    #[serde(flatten)]
    pub params: CommonParams,
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt(s).
    pub prompt_tokens: usize,
    /// Tokens generated over all choices.
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
    /// More about the prompt tokens, as OpenAI reports it.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix store instead of computed.
    pub cached_tokens: usize,
}

/// `{"error": {...}}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The fields OpenAI's error objects carry.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorDetail {
    /// Human-readable, names the field or file at fault.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `invalid_api_key`, ...).
    pub code: Option<String>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// The name to put in `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds when it was loaded.
    pub created: u64,
    /// `ft`.
    pub owned_by: &'static str,
    /// The base model's path, or the adapter's directory.
    pub root: String,
    /// For adapters: the base model id.
    pub parent: Option<String>,
}
