//! What both completion endpoints share on the way in and out: the body trait that turns a
//! chat or completion request into a [`Plan`], and the record that counts a request in the
//! metrics and queues its request-log entry when it ends.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::closed_loop::trace::Trace;
use crate::engine::FinishReason;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::{ChatRequest, CommonParams, CompletionRequest, PromptSpec};
use crate::request::Plan;
use crate::server::AppState;

/// Counts the request in the metrics when dropped (at the end of the response or stream, or
/// when the client goes away).
pub(crate) struct RequestRecord {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) endpoint: &'static str,
    pub(crate) model: String,
    pub(crate) status: u16,
    pub(crate) started: Instant,
    pub(crate) first_token: bool,
    pub(crate) timed_out: bool,
    /// Its request-log entry, queued when the record drops.
    pub(crate) trace: Option<Trace>,
}

impl RequestRecord {
    pub(crate) fn new(state: &AppState, endpoint: &'static str) -> Self {
        state.metrics.request_started();
        Self {
            metrics: state.metrics.clone(),
            endpoint,
            model: String::new(),
            status: 200,
            started: Instant::now(),
            first_token: false,
            timed_out: false,
            trace: None,
        }
    }

    pub(crate) fn text(&mut self, text: &str) {
        self.saw_text();
        if let Some(trace) = &mut self.trace {
            trace.response.push_str(text);
        }
    }

    pub(crate) fn generated(&mut self, tokens: usize) {
        if let Some(trace) = &mut self.trace {
            trace.completion_tokens += tokens;
        }
    }

    pub(crate) fn finished(&mut self, finish: FinishReason) {
        self.timed_out |= finish == FinishReason::Timeout;
    }

    pub(crate) fn saw_text(&mut self) {
        if !self.first_token {
            self.first_token = true;
            let seconds = self.started.elapsed().as_secs_f64();
            self.metrics.time_to_first_token(&self.model, seconds);
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if let Some(trace) = self.trace.take() {
            trace.finish(self.status);
        }
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics
            .request_finished(&self.model, self.endpoint, self.status, seconds);
        if self.timed_out {
            self.metrics.request_timed_out(&self.model, self.endpoint);
        }
        self.metrics.request_ended();
        tracing::info!(
            endpoint = self.endpoint,
            model = %self.model,
            status = self.status,
            ms = (seconds * 1000.0) as u64,
            "request"
        );
    }
}

/// A request body that names its `model` and becomes a [`Plan`].
pub(crate) trait CompletionBody: serde::de::DeserializeOwned {
    fn model(&self) -> &str;
    fn set_model(&mut self, model: String);
    fn params(&self) -> &CommonParams;
    /// The prompt as sent (`messages` or `prompt`), for the request log.
    fn prompt_value(&self) -> Value;
    fn plan(self, state: &AppState) -> Result<Plan, ApiError>;
}

impl CompletionBody for ChatRequest {
    fn model(&self) -> &str {
        &self.model
    }
    fn set_model(&mut self, model: String) {
        self.model = model;
    }
    fn params(&self) -> &CommonParams {
        &self.params
    }
    fn prompt_value(&self) -> Value {
        self.messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect()
    }
    fn plan(self, state: &AppState) -> Result<Plan, ApiError> {
        Plan::chat(state, self)
    }
}

impl CompletionBody for CompletionRequest {
    fn model(&self) -> &str {
        &self.model
    }
    fn set_model(&mut self, model: String) {
        self.model = model;
    }
    fn params(&self) -> &CommonParams {
        &self.params
    }
    fn prompt_value(&self) -> Value {
        match &self.prompt {
            PromptSpec::One(p) => json!(p),
            PromptSpec::Many(ps) => json!(ps),
        }
    }
    fn plan(self, state: &AppState) -> Result<Plan, ApiError> {
        Plan::completion(state, self)
    }
}
