//! One request's entry in the request log, filled in while it runs and queued when it ends
//! (however it ends: answered, failed, or the client gone).

use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderMap;
use serde_json::{json, Value};

use super::{sha256_hex, ClosedLoop, Routed};

/// Who a request is for the traffic split: the body's `user`, else the `x-ft-user` header,
/// else the API key, else everyone is one anonymous user.
pub fn user_of(body_user: Option<&str>, headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    body_user
        .filter(|u| !u.is_empty())
        .or_else(|| header("x-ft-user").filter(|u| !u.is_empty()))
        .or_else(|| header("authorization").and_then(|a| a.strip_prefix("Bearer ")))
        .unwrap_or("anonymous")
        .to_string()
}

/// A request on its way into the log.
#[derive(Debug)]
pub struct Trace {
    closed_loop: Arc<ClosedLoop>,
    started: Instant,
    arrived_ms: i64,
    user_hash: String,
    model: String,
    version: Option<u32>,
    prompt_sha256: String,
    /// The conversation, when it is to be kept.
    content: Option<Value>,
    id: String,
    prompt_tokens: usize,
    /// The answer so far (all choices, in order of arrival).
    pub response: String,
    /// Tokens generated.
    pub completion_tokens: usize,
}

impl Trace {
    /// Starts the entry of a request for `model` by `user`, with the prompt as sent
    /// (`messages` or `prompt`) and where routing sent it.
    pub fn new(
        closed_loop: &Arc<ClosedLoop>,
        user: &str,
        model: &str,
        routed: Option<&Routed>,
        prompt: &Value,
        keep_content: bool,
    ) -> Self {
        let prompt_text = prompt.to_string();
        let field = if prompt.is_array() && prompt.get(0).is_some_and(Value::is_object) {
            "messages"
        } else {
            "prompt"
        };
        Self {
            closed_loop: closed_loop.clone(),
            started: Instant::now(),
            arrived_ms: ft_store::unix_now_ms(),
            user_hash: sha256_hex(user),
            model: model.to_string(),
            version: routed.map(|r| r.version),
            prompt_sha256: sha256_hex(&prompt_text),
            content: keep_content.then(|| json!({ field: prompt })),
            id: String::new(),
            prompt_tokens: 0,
            response: String::new(),
            completion_tokens: 0,
        }
    }

    /// The response id and prompt size, once the request is planned.
    pub fn planned(&mut self, id: &str, prompt_tokens: usize, version: Option<u32>) {
        self.id = id.to_string();
        self.prompt_tokens = prompt_tokens;
        if self.version.is_none() {
            self.version = version;
        }
    }

    /// Queues the entry with the request's final HTTP status.
    pub fn finish(mut self, status: u16) {
        if self.id.is_empty() {
            return; // never planned: a bad request, not traffic
        }
        if let Some(content) = &mut self.content {
            content["response"] = Value::String(self.response.clone());
        }
        self.closed_loop.log(ft_store::RequestLogRow {
            id: self.id,
            created_at_ms: self.arrived_ms,
            user_hash: self.user_hash,
            model: self.model,
            version: self.version,
            status,
            failed: status >= 500,
            latency_ms: self.started.elapsed().as_millis() as i64,
            prompt_tokens: self.prompt_tokens as i64,
            completion_tokens: self.completion_tokens as i64,
            cache_hit: false,
            prompt_sha256: self.prompt_sha256,
            response_sha256: sha256_hex(&self.response),
            content: self.content.map(|c| c.to_string()),
        });
    }
}
