//! The HTTP front: axum routes for the OpenAI API, the adapter admin API, `/health` and
//! `/metrics`. Handlers validate and translate; the [`Engine`] generates.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::closed_loop::trace::{user_of, Trace};
use crate::closed_loop::ClosedLoop;
use crate::completion::{CompletionBody, RequestRecord};
use crate::engine::{Engine, Event};
use crate::error::{openai_errors, ApiError};
use crate::fine_tuning::FineTuning;
use crate::metrics::Metrics;
use crate::openai::{ChatRequest, CompletionRequest, ModelCard};
use crate::registry::Registry;
use crate::request::Plan;

/// Limits and credentials of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests must send `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted `max_tokens`.
    pub max_tokens_limit: usize,
    /// Longest a request may take from arrival, waiting included, before its choices end
    /// with `finish_reason: "length"` (0 = no limit).
    pub max_request_seconds: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            max_body_bytes: 1 << 20,
            max_tokens_limit: 4096,
            // The OpenAI Python client's own default timeout.
            max_request_seconds: 600.0,
        }
    }
}

/// What every handler reads.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The generator.
    pub engine: Engine,
    /// Adapters by name.
    pub registry: Arc<Registry>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub config: Arc<ServerConfig>,
    /// The files and fine-tuning jobs API, when the server has a state directory.
    pub fine_tuning: Option<Arc<FineTuning>>,
    /// Versions, canaries, the request log and feedback, on the fine-tuning store.
    pub closed_loop: Option<Arc<ClosedLoop>>,
    started: Instant,
    created: u64,
}

/// The OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct Server {
    state: AppState,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Server {
    /// A server over `engine` with the adapters of `registry`.
    pub fn new(engine: Engine, registry: Arc<Registry>, config: ServerConfig) -> Self {
        Self {
            state: AppState {
                engine,
                registry,
                metrics: Arc::new(Metrics::default()),
                config: Arc::new(config),
                fine_tuning: None,
                closed_loop: None,
                started: Instant::now(),
                created: unix_now(),
            },
        }
    }

    /// Serves OpenAI's files and fine-tuning jobs API through `fine_tuning`.
    pub fn with_fine_tuning(mut self, fine_tuning: Arc<FineTuning>) -> Self {
        self.state.fine_tuning = Some(fine_tuning);
        self
    }

    /// Routes adapter names through `closed_loop` (versions, canaries, request log, feedback).
    pub fn with_closed_loop(mut self, closed_loop: Arc<ClosedLoop>) -> Self {
        self.state.closed_loop = Some(closed_loop);
        self
    }

    /// The shared state (engine, registry, metrics).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// All routes, with the API-key check and the body limit.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let max_upload_bytes = state
            .fine_tuning
            .as_ref()
            .map_or(state.config.max_body_bytes, |f| f.max_upload_bytes());
        Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(list_models))
            .route(
                "/v1/models/{model}",
                get(retrieve_model).delete(crate::fine_tuning::delete_model),
            )
            .route("/v1/adapters", get(list_adapters).post(load_adapter))
            .route("/v1/adapters/{name}", delete(unload_adapter))
            .route("/metrics", get(metrics))
            .route("/health", get(health))
            .merge(FineTuning::routes(max_upload_bytes))
            .merge(crate::closed_loop::routes())
            .fallback(|| async { ApiError::not_found("no such endpoint") })
            .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
            .layer(middleware::from_fn_with_state(state.clone(), authorize))
            .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
            // Outermost, so that a rejection from any layer above gets the OpenAI shape.
            .layer(middleware::from_fn(openai_errors))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` resolves, then stops the engine.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let engine = self.state.engine.clone();
        let fine_tuning = self.state.fine_tuning.clone();
        let closed_loop = self.state.closed_loop.clone();
        // Stop the engine as soon as the signal comes: running streams then end at once
        // instead of holding the graceful shutdown open until they finish generating.
        let stop_engine = engine.clone();
        let signal = async move {
            shutdown.await;
            stop_engine.shutdown();
        };
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(signal)
            .await;
        engine.shutdown();
        if let Some(closed_loop) = closed_loop {
            let _ = tokio::task::spawn_blocking(move || closed_loop.shutdown()).await;
        }
        if let Some(fine_tuning) = fine_tuning {
            // The running job checkpoints after its current step and goes back to the queue.
            let _ = tokio::task::spawn_blocking(move || fine_tuning.shutdown()).await;
        }
        result
    }
}

/// 401 unless the request carries the API key (`/health` is open for probes).
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = &state.config.api_key else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let expected = format!("Bearer {key}");
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
        next.run(request).await
    } else {
        let path = request.uri().path().to_string();
        state.metrics.request_finished("", &path, 401, 0.0);
        ApiError::unauthorized().into_response()
    }
}

/// Compares without stopping at the first difference, so timing does not leak the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body as bytes, or the OpenAI-shaped 400/413.
pub(crate) fn body_bytes(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.config.max_body_bytes)
        } else {
            ApiError::bad_body(rejection.body_text())
        }
    })
}

/// Parses a JSON body, naming the position or field on failure.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_body(format!("invalid request body: {e}")))
}

/// Parses, validates and runs a request of either completion endpoint.
///
/// With the closed loop on, a request for an adapter name under rollout goes to the version
/// of its user's bucket, reports that version (`system_fingerprint`, `x-ft-adapter-version`),
/// and is logged for the rollout's numbers and for feedback.
async fn complete<R: CompletionBody>(
    state: AppState,
    endpoint: &'static str,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut record = RequestRecord::new(&state, endpoint);
    let mut request = body_bytes(&state, body).and_then(|b| parse_json::<R>(&b));
    let mut routed = None;
    if let Ok(request) = &mut request {
        record.model = request.model().to_string();
        if let Some(closed_loop) = &state.closed_loop {
            let user = user_of(request.params().user.as_deref(), &headers);
            routed = closed_loop.route(request.model(), &user);
            let keep = closed_loop.keeps_content(request.params().store);
            let prompt = request.prompt_value();
            record.trace = Some(Trace::new(
                closed_loop,
                &user,
                request.model(),
                routed.as_ref(),
                &prompt,
                keep,
            ));
            if let Some(routed) = &routed {
                request.set_model(routed.tag());
            }
        }
    }
    let mut plan = request.and_then(|request| request.plan(&state));
    if let Ok(plan) = &mut plan {
        if let Some(routed) = &routed {
            plan.report_as(routed.name.clone(), routed.tag());
        }
        if let Some(trace) = &mut record.trace {
            trace.planned(plan.id(), plan.prompt_tokens(), plan.adapter_version());
        }
    }
    if let (Some(routed), Some(closed_loop), true) = (&routed, &state.closed_loop, plan.is_ok()) {
        if closed_loop.inject_failure(&routed.tag()) {
            plan = Err(ApiError::internal(format!(
                "injected failure for {} (--fault-injection)",
                routed.tag()
            )));
        }
    }
    let mut response = run(state, plan, record).await;
    if let Some(routed) = routed {
        let headers = response.headers_mut();
        if let Ok(tag) = HeaderValue::from_str(&routed.tag()) {
            headers.insert("x-ft-adapter-version", tag);
        }
        if let Some(percent) = routed.percent {
            headers.insert("x-ft-canary-percent", HeaderValue::from(percent));
        }
    }
    response
}

async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete::<ChatRequest>(state, "/v1/chat/completions", headers, body).await
}

async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete::<CompletionRequest>(state, "/v1/completions", headers, body).await
}

/// Submits a validated request and answers as JSON or as a stream.
async fn run(state: AppState, plan: Result<Plan, ApiError>, mut record: RequestRecord) -> Response {
    let plan = match plan {
        Ok(plan) => plan,
        Err(error) => {
            record.status = error.status.as_u16();
            return error.into_response();
        }
    };
    let (sender, receiver) = mpsc::unbounded_channel();
    if let Err(error) = state.engine.submit(plan.sequences(sender)) {
        record.status = error.status.as_u16();
        return error.into_response();
    }
    state
        .metrics
        .tokens(&plan.model, "prompt", plan.prompt_tokens());
    if plan.stream {
        stream_response(state, plan, receiver, record)
    } else {
        collect_response(state, plan, receiver, record).await
    }
}

async fn collect_response(
    state: AppState,
    plan: Plan,
    mut receiver: mpsc::UnboundedReceiver<Event>,
    mut record: RequestRecord,
) -> Response {
    let mut outputs = plan.empty_outputs();
    let mut pending = outputs.len();
    while pending > 0 {
        let Some(event) = receiver.recv().await else {
            record.status = 503;
            return ApiError::unavailable("the engine stopped before the request finished")
                .into_response();
        };
        match event {
            Event::Delta { index, text } => {
                record.text(&text);
                if let Some(output) = outputs.get_mut(index) {
                    output.text.push_str(&text);
                }
            }
            Event::Done {
                index,
                finish,
                completion_tokens,
                cached_tokens,
            } => {
                record.finished(finish);
                record.generated(completion_tokens);
                if let Some(output) = outputs.get_mut(index) {
                    output.finish = Some(finish);
                    output.completion_tokens = completion_tokens;
                    output.cached_tokens = cached_tokens;
                }
                pending -= 1;
            }
            Event::Failed { message, .. } => {
                record.status = 500;
                return ApiError::internal(message).into_response();
            }
        }
    }
    let completion_tokens = outputs.iter().map(|o| o.completion_tokens).sum();
    state
        .metrics
        .tokens(&plan.model, "completion", completion_tokens);
    Json(plan.response_body(&outputs)).into_response()
}

/// State of an SSE response while it streams.
struct StreamState {
    plan: Plan,
    receiver: mpsc::UnboundedReceiver<Event>,
    record: RequestRecord,
    metrics: Arc<Metrics>,
    queued: std::collections::VecDeque<String>,
    pending: usize,
    completion_tokens: usize,
    cached_tokens: usize,
    finished: bool,
}

fn stream_response(
    state: AppState,
    plan: Plan,
    receiver: mpsc::UnboundedReceiver<Event>,
    record: RequestRecord,
) -> Response {
    let pending = plan.choices();
    let queued = plan.opening_chunks().into();
    let stream_state = StreamState {
        plan,
        receiver,
        record,
        metrics: state.metrics.clone(),
        queued,
        pending,
        completion_tokens: 0,
        cached_tokens: 0,
        finished: false,
    };
    let stream = futures_util::stream::unfold(stream_state, |mut s| async move {
        loop {
            if let Some(data) = s.queued.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.finished {
                return None;
            }
            if s.pending == 0 {
                s.metrics
                    .tokens(&s.plan.model, "completion", s.completion_tokens);
                if let Some(usage) = s.plan.usage_chunk(s.completion_tokens, s.cached_tokens) {
                    s.queued.push_back(usage);
                }
                s.queued.push_back("[DONE]".to_string());
                s.finished = true;
                continue;
            }
            match s.receiver.recv().await {
                Some(Event::Delta { index, text }) => {
                    s.record.text(&text);
                    s.queued.push_back(s.plan.delta_chunk(index, &text));
                }
                Some(Event::Done {
                    index,
                    finish,
                    completion_tokens,
                    cached_tokens,
                }) => {
                    s.record.finished(finish);
                    s.record.generated(completion_tokens);
                    s.completion_tokens += completion_tokens;
                    s.cached_tokens = s.cached_tokens.max(cached_tokens);
                    s.pending -= 1;
                    s.queued.push_back(s.plan.finish_chunk(index, finish));
                }
                Some(Event::Failed { message, .. }) => {
                    s.record.status = 500;
                    let error = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
                    s.queued.push_back(error.to_string());
                    s.queued.push_back("[DONE]".to_string());
                    s.finished = true;
                }
                None => {
                    s.record.status = 503;
                    s.finished = true;
                }
            }
        }
    });
    Sse::new(stream).into_response()
}

/// The base and every adapter, as `/v1/models` lists them.
fn model_cards(state: &AppState) -> Vec<ModelCard> {
    let registry = &state.registry;
    let base = registry.base_id();
    let mut cards = vec![ModelCard {
        id: base.clone(),
        object: "model",
        created: state.created,
        owned_by: "ft",
        root: registry.base().model.source.display().to_string(),
        parent: None,
    }];
    cards.extend(registry.list().into_iter().map(|adapter| ModelCard {
        id: adapter.name,
        object: "model",
        created: adapter.created,
        owned_by: "ft",
        root: adapter.path,
        parent: Some(base.clone()),
    }));
    cards
}

async fn list_models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": model_cards(&state)}))
}

/// `GET /v1/models/{model}` (the id arrives URL-decoded: `ft:…` names have colons).
async fn retrieve_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    // A model another process published (or a pinned `name@N`) is known once asked for.
    let _ = state.registry.knows(&model);
    model_cards(&state)
        .into_iter()
        .find(|card| card.id == model)
        .map(Json)
        .ok_or_else(|| ApiError::model_not_found(&model))
}

async fn list_adapters(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": state.registry.list()}))
}

/// `POST /v1/adapters` body.
#[derive(Debug, Deserialize)]
struct LoadAdapterBody {
    name: String,
    path: String,
}

async fn load_adapter(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body: LoadAdapterBody = parse_json(&body_bytes(&state, body)?)?;
    let dir = state.registry.confine(&body.path)?;
    let registry = state.registry.clone();
    let name = body.name.clone();
    // Reading and checking an adapter is blocking file work: keep it off the async workers.
    let loaded = tokio::task::spawn_blocking(move || registry.load(&name, &dir))
        .await
        .map_err(|e| ApiError::internal(format!("adapter load task failed: {e}")))??;
    tracing::info!(adapter = %loaded.name, version = loaded.version, "adapter loaded");
    Ok(Json(json!({
        "object": "adapter",
        "name": loaded.name,
        "version": loaded.version,
        "system_fingerprint": loaded.tag(),
    })))
}

async fn unload_adapter(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.registry.remove(&name)?;
    tracing::info!(adapter = %name, "adapter unloaded");
    Ok(Json(
        json!({"object": "adapter", "name": name, "deleted": true}),
    ))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render(
        state.engine.queue_depth(),
        state.engine.running(),
        state.engine.prefix_cache_stats(),
    );
    if let Some(closed_loop) = &state.closed_loop {
        text.push_str(&closed_loop.render_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    let registry = &state.registry;
    let adapters: Vec<String> = registry.list().into_iter().map(|a| a.name).collect();
    Json(json!({
        "status": "ok",
        "model": registry.base_id(),
        "model_path": registry.base().model.source.display().to_string(),
        "base_fingerprint": registry.base().model.fingerprint,
        "adapters": adapters,
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "queue_depth": state.engine.queue_depth(),
        "running": state.engine.running(),
    }))
}
