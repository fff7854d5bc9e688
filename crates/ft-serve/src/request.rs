//! From a parsed OpenAI request to the sequences the engine runs, and back to OpenAI's
//! response objects. All validation happens here, each error naming its field.

use ft_data::Message;
use ft_model::generate::SamplingParams;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::engine::{Event, FinishReason, SequenceRequest};
use crate::error::ApiError;
use crate::openai::{
    ChatMessage, ChatRequest, CommonParams, CompletionRequest, PromptSpec, PromptTokensDetails,
    StreamOptions, Usage,
};
use crate::registry::ResolvedAdapter;
use crate::server::AppState;

/// Most choices per request.
pub const MAX_N: usize = 16;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// `max_tokens` of `/v1/completions` when the request has none (OpenAI's and vLLM's default;
/// chat completions default to the rest of the context).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// Which endpoint a request came through: it decides the response's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// The accumulated result of one choice.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Generated text.
    pub text: String,
    /// Why it ended.
    pub finish: Option<FinishReason>,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens that came from the prefix store.
    pub cached_tokens: usize,
}

/// A validated request, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    endpoint: Endpoint,
    /// The `model` the client asked for.
    pub model: String,
    adapter: Option<ResolvedAdapter>,
    prompts: Vec<Vec<u32>>,
    max_tokens: Vec<usize>,
    n: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    /// Answer over server-sent events.
    pub stream: bool,
    include_usage: bool,
    id: String,
    created: u64,
    fingerprint: String,
    /// When every sequence must end (`--max-request-seconds`, counted from arrival).
    deadline: Option<Instant>,
}

/// Checks `stream_options`: absent or null, or an object with an optional boolean
/// `include_usage`, and only on a streamed request.
fn stream_options(value: Option<&Value>, stream: bool) -> Result<StreamOptions, ApiError> {
    let object = match value {
        None | Some(Value::Null) => return Ok(StreamOptions::default()),
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options must be an object, e.g. {\"include_usage\": true}",
            ))
        }
    };
    if !stream {
        return Err(ApiError::invalid(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    match object.get("include_usage") {
        None | Some(Value::Null) => Ok(StreamOptions::default()),
        Some(Value::Bool(include_usage)) => Ok(StreamOptions {
            include_usage: *include_usage,
        }),
        Some(_) => Err(ApiError::invalid(
            "stream_options.include_usage",
            "include_usage must be a boolean",
        )),
    }
}

fn random_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// The text of a chat message's `content` (a string, or a list of text parts).
fn content_text(content: &Option<Value>, index: usize) -> Result<String, ApiError> {
    let param = format!("messages[{index}].content");
    match content {
        // OpenAI lets only an assistant message with `tool_calls` omit its content; there
        // are no tools here, so every message needs one.
        None | Some(Value::Null) => Err(ApiError::invalid(
            &param,
            "content is required (a string or a list of text parts)",
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{param}[{i}]"),
                            "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid(
            &param,
            "content must be a string or a list of text parts",
        )),
    }
}

fn chat_messages(messages: &[ChatMessage]) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                "system" | "user" | "assistant" => m.role.as_str(),
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!(
                            "unsupported role `{other}` (use system, developer, user or assistant)"
                        ),
                    ))
                }
            };
            Ok(Message::new(role, content_text(&m.content, i)?))
        })
        .collect()
}

impl Plan {
    /// Validates a chat request and renders its messages through the chat template.
    pub fn chat(state: &AppState, request: ChatRequest) -> Result<Self, ApiError> {
        let messages = chat_messages(&request.messages)?;
        let tokenizer = &state.registry.base().tokenizer;
        let template = tokenizer
            .chat_template()
            .map_err(|e| ApiError::internal(format!("chat template: {e}")))?;
        let text = template
            .render(&messages, true)
            .map_err(|e| ApiError::invalid("messages", format!("chat template: {e}")))?;
        let ids = tokenizer
            .encode(&text, false)
            .map_err(|e| ApiError::internal(format!("tokenizer: {e}")))?;
        Self::build(
            state,
            Endpoint::Chat,
            request.model,
            vec![ids],
            request.params,
        )
    }

    /// Validates a completion request (raw prompts, special tokens added as in training).
    pub fn completion(state: &AppState, request: CompletionRequest) -> Result<Self, ApiError> {
        let prompts = match request.prompt {
            PromptSpec::One(p) => vec![p],
            PromptSpec::Many(ps) => ps,
        };
        if prompts.is_empty() || prompts.len() > MAX_N {
            return Err(ApiError::invalid(
                "prompt",
                format!("give 1 to {MAX_N} prompts"),
            ));
        }
        let tokenizer = &state.registry.base().tokenizer;
        let ids = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ids = tokenizer
                    .encode(p, true)
                    .map_err(|e| ApiError::internal(format!("tokenizer: {e}")))?;
                if ids.is_empty() {
                    return Err(ApiError::invalid(
                        &format!("prompt[{i}]"),
                        "the prompt is empty",
                    ));
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::build(
            state,
            Endpoint::Completion,
            request.model,
            ids,
            request.params,
        )
    }

    fn build(
        state: &AppState,
        endpoint: Endpoint,
        model: String,
        prompts: Vec<Vec<u32>>,
        params: CommonParams,
    ) -> Result<Self, ApiError> {
        let adapter = if model == state.registry.base_id() {
            None
        } else {
            Some(state.registry.resolve(&model)?)
        };
        let temperature = params.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        let top_p = params.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
        }
        let top_k = match params.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(_) => {
                return Err(ApiError::invalid(
                    "top_k",
                    "top_k must be -1, 0 (off) or positive",
                ))
            }
        };
        let n = match params.n {
            None => 1,
            Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
            Some(_) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("n must be between 1 and {MAX_N}"),
                ))
            }
        };
        let stop = params.stop.map(|s| s.into_vec()).unwrap_or_default();
        if stop.len() > MAX_STOP || stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop",
                format!("stop takes up to {MAX_STOP} non-empty strings"),
            ));
        }
        let limit = state.config.max_tokens_limit;
        let (requested, param) = match (params.max_completion_tokens, params.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        let requested = match requested {
            None => None,
            Some(m) if m >= 1 && m as usize <= limit => Some(m as usize),
            Some(_) => {
                return Err(ApiError::invalid(
                    param,
                    format!("{param} must be between 1 and {limit}"),
                ))
            }
        };
        let context = state
            .registry
            .base()
            .model
            .transformer
            .config()
            .max_position_embeddings;
        let max_tokens = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if p.len() >= context {
                    let field = if endpoint == Endpoint::Chat {
                        "messages".to_string()
                    } else {
                        format!("prompt[{i}]")
                    };
                    return Err(ApiError::invalid(
                        &field,
                        format!(
                            "the prompt has {} tokens; the model's context is {context}",
                            p.len()
                        ),
                    ));
                }
                let default = match endpoint {
                    Endpoint::Completion => DEFAULT_COMPLETION_MAX_TOKENS.min(limit),
                    Endpoint::Chat => limit,
                };
                Ok(requested.unwrap_or(default).min(context - p.len()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let seed = params.seed.map_or_else(rand::random::<u64>, |s| s as u64);
        let stream_options = stream_options(params.stream_options.as_ref(), params.stream)?;
        let seconds = state.config.max_request_seconds;
        let deadline = (seconds > 0.0)
            .then(|| Duration::try_from_secs_f64(seconds).ok())
            .flatten()
            .and_then(|d| Instant::now().checked_add(d));
        let fingerprint = adapter
            .as_ref()
            .map_or_else(|| "base".to_string(), ResolvedAdapter::tag);
        Ok(Self {
            endpoint,
            model,
            adapter,
            prompts,
            max_tokens,
            n,
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k,
                seed,
            },
            stop,
            stream: params.stream,
            include_usage: params.stream && stream_options.include_usage,
            id: random_id(if endpoint == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            }),
            created: crate::registry::unix_now(),
            fingerprint,
            deadline,
        })
    }

    /// The response id (`chatcmpl-…`, `cmpl-…`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The adapter version that answers, when one does.
    pub fn adapter_version(&self) -> Option<u32> {
        self.adapter.as_ref().map(|a| a.version as u32)
    }

    /// Reports the response as `model` (the name asked for) with `fingerprint` (the version
    /// that answered) when routing picked a pinned version for it.
    pub fn report_as(&mut self, model: String, fingerprint: String) {
        self.model = model;
        self.fingerprint = fingerprint;
    }

    /// Total choices: prompts × `n`.
    pub fn choices(&self) -> usize {
        self.prompts.len() * self.n
    }

    /// Prompt tokens, counted once per prompt as OpenAI does.
    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum()
    }

    /// One engine sequence per choice; choice `i` of a prompt samples with `seed + i`.
    pub fn sequences(&self, events: UnboundedSender<Event>) -> Vec<crate::engine::SequenceRequest> {
        (0..self.choices())
            .map(|index| {
                let prompt = index / self.n;
                SequenceRequest {
                    prompt_ids: self.prompts[prompt].clone(),
                    adapter: self.adapter.clone(),
                    sampling: SamplingParams {
                        seed: self.sampling.seed.wrapping_add((index % self.n) as u64),
                        ..self.sampling.clone()
                    },
                    max_tokens: self.max_tokens[prompt],
                    stop: self.stop.clone(),
                    index,
                    events: events.clone(),
                    deadline: self.deadline,
                }
            })
            .collect()
    }

    /// Empty outputs, one per choice.
    pub fn empty_outputs(&self) -> Vec<Output> {
        vec![Output::default(); self.choices()]
    }

    /// The request's usage. The prompt counts once however many choices, so its cached
    /// tokens are those of the choice that reused the most.
    fn usage(&self, completion_tokens: usize, cached_tokens: usize) -> Usage {
        let prompt_tokens = self.prompt_tokens();
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached_tokens.min(prompt_tokens),
            },
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    /// The non-streaming response.
    pub fn response_body(&self, outputs: &[Output]) -> Value {
        let choices: Vec<Value> = outputs
            .iter()
            .enumerate()
            .map(|(index, o)| {
                let finish = o.finish.map(FinishReason::as_str);
                match self.endpoint {
                    Endpoint::Chat => json!({
                        "index": index,
                        "message": {"role": "assistant", "content": o.text},
                        "logprobs": null,
                        "finish_reason": finish,
                    }),
                    Endpoint::Completion => json!({
                        "index": index, "text": o.text, "logprobs": null, "finish_reason": finish,
                    }),
                }
            })
            .collect();
        let completion_tokens = outputs.iter().map(|o| o.completion_tokens).sum();
        let cached_tokens = outputs.iter().map(|o| o.cached_tokens).max().unwrap_or(0);
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "usage": self.usage(completion_tokens, cached_tokens),
        })
    }

    fn chunk(&self, choices: Value) -> String {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk.to_string()
    }

    /// Chunks sent before any text: chat streams open each choice with the assistant role.
    pub fn opening_chunks(&self) -> Vec<String> {
        match self.endpoint {
            Endpoint::Chat => (0..self.choices())
                .map(|index| {
                    self.chunk(json!([{
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": null,
                        "finish_reason": null,
                    }]))
                })
                .collect(),
            Endpoint::Completion => Vec::new(),
        }
    }

    /// A chunk carrying new text of choice `index`.
    pub fn delta_chunk(&self, index: usize, text: &str) -> String {
        self.chunk(match self.endpoint {
            Endpoint::Chat => json!([{
                "index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null,
            }]),
            Endpoint::Completion => json!([{
                "index": index, "text": text, "logprobs": null, "finish_reason": null,
            }]),
        })
    }

    /// The chunk that ends choice `index`.
    pub fn finish_chunk(&self, index: usize, finish: FinishReason) -> String {
        self.chunk(match self.endpoint {
            Endpoint::Chat => json!([{
                "index": index, "delta": {}, "logprobs": null, "finish_reason": finish.as_str(),
            }]),
            Endpoint::Completion => json!([{
                "index": index, "text": "", "logprobs": null, "finish_reason": finish.as_str(),
            }]),
        })
    }

    /// The usage chunk (`stream_options.include_usage`): no choices, the request's usage.
    pub fn usage_chunk(&self, completion_tokens: usize, cached_tokens: usize) -> Option<String> {
        if !self.include_usage {
            return None;
        }
        let mut chunk: Value = serde_json::from_str(&self.chunk(json!([]))).ok()?;
        chunk["usage"] = json!(self.usage(completion_tokens, cached_tokens));
        Some(chunk.to_string())
    }
}
