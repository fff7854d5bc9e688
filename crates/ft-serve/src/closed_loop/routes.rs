//! The closed loop's HTTP API: versions, promotion, rollback, registry events, feedback, and
//! (with `--fault-injection`) injected failures.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::rollout::{parse_duration, Policy};
use super::{controller, lock, store_error, ClosedLoop};
use crate::error::ApiError;
use crate::server::{body_bytes, parse_json, AppState};

/// The routes (merged into the server's router).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/feedback", post(feedback))
        .route(
            "/v1/adapters/{name}/versions",
            get(list_versions).post(add_version),
        )
        .route("/v1/adapters/{name}/promote", post(promote))
        .route("/v1/adapters/{name}/rollout", get(rollout))
        .route("/v1/adapters/{name}/rollback", post(rollback))
        .route("/v1/adapters/{name}/events", get(events))
        .route("/v1/admin/faults", post(faults))
}

fn closed_loop(state: &AppState) -> Result<Arc<ClosedLoop>, ApiError> {
    state.closed_loop.clone().ok_or_else(|| {
        ApiError::not_found(
            "versions, promotion and feedback need a store: start `ft serve` with --state-dir DIR",
        )
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    parse_json(&body_bytes(state, body)?)
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("task failed: {e}")))?
}

/// `POST /v1/feedback`.
#[derive(Debug, Deserialize)]
struct FeedbackBody {
    response_id: String,
    score: i64,
    comment: Option<String>,
    correction: Option<String>,
}

async fn feedback(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let closed_loop = closed_loop(&state)?;
    let body: FeedbackBody = parse(&state, body)?;
    if body.score != 1 && body.score != -1 {
        return Err(ApiError::invalid("score", "score must be 1 or -1"));
    }
    for (field, text) in [("comment", &body.comment), ("correction", &body.correction)] {
        if text.as_ref().is_some_and(|t| t.len() > 16_384) {
            return Err(ApiError::invalid(
                field,
                format!("{field} is longer than 16384 bytes"),
            ));
        }
    }
    blocking(move || {
        // The response may still be queued for the log.
        closed_loop.flush_log();
        let store = closed_loop.service().store();
        let Some(ft_store::LoggedRequest {
            model,
            version,
            content,
        }) = store.logged_request(&body.response_id).map_err(store_error)?
        else {
            return Err(ApiError::not_found(format!(
                "no response `{}` in the request log",
                body.response_id
            )));
        };
        if body.correction.is_some() && content.is_none() {
            return Err(ApiError::invalid(
                "correction",
                "a correction needs the conversation: send the request with \"store\": true (or run ft serve --store-completions)",
            ));
        }
        store
            .upsert_feedback(&ft_store::FeedbackRow {
                response_id: body.response_id.clone(),
                model: model.clone(),
                version,
                score: body.score,
                comment: body.comment,
                correction: body.correction,
            })
            .map_err(store_error)?;
        Ok(Json(json!({
            "object": "feedback",
            "response_id": body.response_id,
            "model": model,
            "version": version,
            "score": body.score,
        })))
    })
    .await
}

async fn list_versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let closed_loop = closed_loop(&state)?;
    let versions: Vec<Value> = closed_loop
        .service()
        .store()
        .adapter_versions()
        .map_err(store_error)?
        .into_iter()
        .filter(|v| v.name == name)
        .map(|v| {
            json!({"object": "adapter.version", "name": v.name, "version": v.version,
                   "state": v.state, "base": v.base, "job_id": v.job_id,
                   "content_sha256": v.content_sha256, "created_at": v.created_at})
        })
        .collect();
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no adapter named `{name}`")));
    }
    Ok(Json(json!({"object": "list", "data": versions})))
}

/// `POST /v1/adapters/{name}/versions`: the adapter of a served model (`model`, e.g. a job's
/// `fine_tuned_model`) or of a directory under `--adapters-dir` (`path`).
#[derive(Debug, Deserialize)]
struct AddVersionBody {
    model: Option<String>,
    path: Option<String>,
}

async fn add_version(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let closed_loop = closed_loop(&state)?;
    let body: AddVersionBody = parse(&state, body)?;
    let registry = state.registry.clone();
    blocking(move || {
        let service = closed_loop.service();
        let store = service.store();
        let base = service.base_id().to_string();
        let (dir, sha, job_id) = match (&body.model, &body.path) {
            (Some(model), None) => {
                let found = store
                    .adapter_versions()
                    .map_err(store_error)?
                    .into_iter()
                    .filter(|v| &v.name == model && v.state == "stable")
                    .max_by_key(|v| v.version)
                    .ok_or_else(|| {
                        ApiError::invalid("model", format!("no stored adapter `{model}`"))
                    })?;
                (found.dir, found.content_sha256, found.job_id)
            }
            (None, Some(path)) => {
                let source = registry.confine(path)?;
                let copy = service
                    .state_dir()
                    .join("adapters")
                    .join(ft_store::new_id("upload-"));
                crate::fine_tuning::runner::copy_adapter(&source, &copy)
                    .map_err(ApiError::internal)?;
                // Refuse an adapter of another base before it becomes a version.
                if let Err(e) = registry
                    .base()
                    .model
                    .load_adapter(&copy, &Default::default())
                {
                    let _ = std::fs::remove_dir_all(&copy);
                    return Err(ApiError::invalid("path", e.to_string()));
                }
                let sha = crate::fine_tuning::runner::content_sha256(&copy)
                    .map_err(ApiError::internal)?;
                let relative = copy
                    .strip_prefix(service.state_dir())
                    .unwrap_or(&copy)
                    .to_string_lossy()
                    .into_owned();
                (relative, sha, None)
            }
            _ => {
                return Err(ApiError::invalid(
                    "model",
                    "give exactly one of `model` or `path`",
                ))
            }
        };
        if name == base {
            return Err(ApiError::invalid(
                "name",
                format!("`{name}` is the base model's id"),
            ));
        }
        let version = store
            .add_adapter_version(&name, &dir, &sha, &base, job_id.as_deref())
            .map_err(store_error)?;
        let state = if version == 1 { "stable" } else { "candidate" };
        if version == 1 {
            registry.register(&name, &service.resolve_dir(&dir), 1)?;
        }
        closed_loop.event(
            &name,
            Some(version),
            "version_added",
            &format!("{name}@{version} added as {state}"),
        );
        Ok(Json(
            json!({"object": "adapter.version", "name": name, "version": version,
                       "state": state, "content_sha256": sha}),
        ))
    })
    .await
}

/// `POST /v1/adapters/{name}/promote`.
#[derive(Debug, Deserialize)]
struct PromoteBody {
    version: u32,
    steps: Option<Vec<u32>>,
    min_requests: Option<u64>,
    /// Seconds, or a duration such as `10m`.
    window: Option<Value>,
    max_error_ratio: Option<f64>,
    feedback_signal: Option<bool>,
    min_feedback: Option<u64>,
    gate: Option<String>,
    eval_data: Option<String>,
    judge_model: Option<String>,
}

async fn promote(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let closed_loop = closed_loop(&state)?;
    let body: PromoteBody = parse(&state, body)?;
    let defaults = Policy::default();
    let window_seconds = match &body.window {
        None => defaults.window_seconds,
        Some(value) => parse_duration(value).map_err(|e| ApiError::invalid("window", e))?,
    };
    let policy = Policy {
        steps: body.steps.unwrap_or(defaults.steps),
        min_requests: body.min_requests.unwrap_or(defaults.min_requests),
        window_seconds,
        max_error_ratio: body.max_error_ratio.unwrap_or(defaults.max_error_ratio),
        feedback_signal: body.feedback_signal.unwrap_or(defaults.feedback_signal),
        min_feedback: body.min_feedback.unwrap_or(defaults.min_feedback),
        gate: body.gate,
        eval_data: body.eval_data,
        judge_model: body.judge_model,
    };
    blocking(move || {
        let rollout = controller::promote(&closed_loop, &name, body.version, policy)?;
        Ok(Json(controller::describe(&closed_loop, &rollout)))
    })
    .await
}

async fn rollout(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let closed_loop = closed_loop(&state)?;
    blocking(move || {
        let rollout = closed_loop
            .rollout(&name)
            .ok_or_else(|| ApiError::not_found(format!("`{name}` has never been promoted")))?;
        Ok(Json(controller::describe(&closed_loop, &rollout)))
    })
    .await
}

async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let closed_loop = closed_loop(&state)?;
    blocking(move || {
        let rollout = controller::roll_back(&closed_loop, &name, "rolled back by an admin")?;
        Ok(Json(controller::describe(&closed_loop, &rollout)))
    })
    .await
}

async fn events(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let closed_loop = closed_loop(&state)?;
    let events = closed_loop
        .service()
        .store()
        .registry_events(&name)
        .map_err(store_error)?;
    Ok(Json(json!({"object": "list", "data": events})))
}

/// `POST /v1/admin/faults`: `{"model": "name@N", "error_rate": 0.3}`.
#[derive(Debug, Deserialize)]
struct FaultBody {
    model: String,
    error_rate: f64,
}

async fn faults(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let closed_loop = closed_loop(&state)?;
    if !closed_loop.config.fault_injection {
        return Err(ApiError::not_found(
            "failure injection is off: start `ft serve` with --fault-injection",
        ));
    }
    let body: FaultBody = parse(&state, body)?;
    if !(0.0..=1.0).contains(&body.error_rate) {
        return Err(ApiError::invalid(
            "error_rate",
            "error_rate must be from 0 to 1",
        ));
    }
    lock(&closed_loop.faults).insert(body.model.clone(), body.error_rate);
    tracing::warn!(model = %body.model, rate = body.error_rate, "failure injection set");
    Ok(Json(
        json!({"object": "fault", "model": body.model, "error_rate": body.error_rate}),
    ))
}
