//! `/v1/fine_tuning/jobs`: create (with validation of the files), list, retrieve, cancel,
//! pause, resume, events and checkpoints; and deleting a fine-tuned model.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use ft_data::dataset::{read_dataset, ReadOptions};
use ft_data::ExampleTokenizer;
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::objects::{self, CreateJob, Setting};
use super::{lock, service, store_error, FineTuning, ListQuery, StopRequest};
use crate::error::ApiError;
use crate::server::AppState;

/// A retried create with the same body within this many seconds returns the first job.
const RETRY_WINDOW_SECONDS: i64 = 60;

/// Job keys of ft's own (the examples' token count), kept in the stored object and never
/// shown.
pub(super) const PRIVATE: &str = "_ft";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/fine_tuning/jobs", post(create).get(list))
        .route("/v1/fine_tuning/jobs/{id}", get(retrieve))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(cancel))
        .route("/v1/fine_tuning/jobs/{id}/pause", post(pause))
        .route("/v1/fine_tuning/jobs/{id}/resume", post(resume))
        .route("/v1/fine_tuning/jobs/{id}/events", get(events))
        .route("/v1/fine_tuning/jobs/{id}/checkpoints", get(checkpoints))
}

/// The job as the API shows it.
pub(super) fn public(mut job: Value) -> Value {
    if let Some(map) = job.as_object_mut() {
        map.remove(PRIVATE);
    }
    job
}

fn status(job: &Value) -> &str {
    job["status"].as_str().unwrap_or("")
}

/// The `file-…` a job names, as a 400 on `param` when it is missing or not for fine-tuning.
fn training_input(service: &FineTuning, id: &str, param: &str) -> Result<(), ApiError> {
    let file = service
        .store
        .file(id)
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::invalid(
                param,
                format!("no file `{id}`: upload it with POST /v1/files first"),
            )
        })?;
    if file["purpose"] != "fine-tune" {
        return Err(ApiError::invalid(
            param,
            format!(
                "file `{id}` has purpose `{}`; upload it with purpose `fine-tune`",
                file["purpose"].as_str().unwrap_or("")
            ),
        ));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    let bytes = crate::server::body_bytes(&state, body)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    create_job(&service, &bytes, key.as_deref()).map(Json)
}

/// Creates a job from a `POST /v1/fine_tuning/jobs` body (or returns the job a retry of it
/// made) and starts validating its files; the retrain trigger calls it too.
pub(crate) fn create_job(
    service: &Arc<FineTuning>,
    bytes: &[u8],
    key: Option<&str>,
) -> Result<Value, ApiError> {
    let request = CreateJob::parse(bytes)?;
    if request.model != service.base_id {
        return Err(ApiError::invalid(
            "model",
            format!(
                "this server fine-tunes the base it serves, `{}`; got `{}`",
                service.base_id, request.model
            ),
        ));
    }
    training_input(service, &request.training_file, "training_file")?;
    if let Some(validation) = &request.validation_file {
        training_input(service, validation, "validation_file")?;
    }
    let sha = format!("{:x}", Sha256::digest(bytes));
    let now = ft_store::unix_now();
    let job = {
        let _guard = lock(&service.jobs_lock);
        let retried = service
            .store
            .find_retried_job(key, &sha, now - RETRY_WINDOW_SECONDS)
            .map_err(store_error)?;
        if let Some(job) = retried {
            return Ok(public(job));
        }
        let id = ft_store::new_id("ftjob-");
        let seed = request
            .seed
            .unwrap_or_else(|| rand::rng().random_range(0..i64::from(i32::MAX)));
        let job = objects::new_job(&id, now, &request, &service.config.organization, seed);
        let row = ft_store::JobRow {
            id: &id,
            created_at: now,
            idempotency_key: key,
            request_sha256: &sha,
            object: &job,
        };
        service.store.insert_job(&row).map_err(store_error)?;
        job
    };
    let id = job["id"].as_str().unwrap_or_default().to_string();
    tracing::info!(job = %id, "fine-tuning job created");
    service.event(
        &id,
        "info",
        &format!("Validating training file: {}", request.training_file),
        None,
    );
    let validator = service.clone();
    // Reading and tokenizing the file is blocking work: off the async workers.
    std::thread::Builder::new()
        .name("ft-validate".into())
        .spawn(move || validate(&validator, &id))
        .map_err(|e| ApiError::internal(format!("cannot start validating: {e}")))?;
    Ok(job)
}

/// What is wrong with a job's files, in OpenAI's `error` shape.
fn file_error(code: &str, param: &str, message: String) -> Value {
    json!({"code": code, "param": param, "message": message})
}

/// Reads one input file with the validator of `ft data validate`: its example and token
/// counts, or the error naming the first bad line.
fn check_file(service: &FineTuning, id: &str, param: &str) -> Result<(usize, usize), Value> {
    let invalid = if param == "training_file" {
        "invalid_training_file"
    } else {
        "invalid_validation_file"
    };
    let path = service
        .store
        .blobs()
        .path(&format!("files/{id}"))
        .map_err(|e| file_error(invalid, param, e.to_string()))?;
    let recipe = &service.config.recipe;
    let tokenizer =
        ExampleTokenizer::new(&service.registry.base().tokenizer, recipe.train_on_prompt);
    let options = ReadOptions {
        max_seq_len: recipe.max_seq_len,
        train_on_prompt: recipe.train_on_prompt,
        ..ReadOptions::default()
    };
    let (examples, report) = read_dataset(&path, &tokenizer, &options).map_err(|_| {
        file_error(
            invalid,
            param,
            format!("file `{id}` cannot be read; upload it again"),
        )
    })?;
    if let Some(first) = report.errors.first() {
        let field = first
            .field
            .as_deref()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default();
        return Err(file_error(
            invalid,
            param,
            format!(
                "The {} has {} invalid example(s) of {}; the first is on line {}{field}: {}",
                param.replace('_', " "),
                report.invalid_lines,
                report.lines,
                first.line,
                first.message
            ),
        ));
    }
    if examples.is_empty() {
        return Err(file_error(
            "invalid_n_examples",
            param,
            format!(
                "The {} has no examples; it needs at least 1",
                param.replace('_', " ")
            ),
        ));
    }
    Ok((examples.len(), report.tokens))
}

/// Validates the files of job `id` (blocking): it becomes `queued` with its hyperparameters
/// resolved, or `failed` with the reason.
pub(super) fn validate(service: &FineTuning, id: &str) {
    let Ok(Some(job)) = service.store.job(id) else {
        return;
    };
    let training = job["training_file"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let checked = check_file(service, &training, "training_file").and_then(|counts| {
        match job["validation_file"].as_str() {
            Some(v) => check_file(service, v, "validation_file").map(|_| counts),
            None => Ok(counts),
        }
    });
    let recipe = &service.config.recipe;
    let updated = service.update_job(id, |job| {
        if status(job) != "validating_files" {
            // Cancelled meanwhile.
            return Ok(None);
        }
        match &checked {
            Ok((examples, tokens)) => {
                let sent = objects::Hyperparameters::from_json(&job["hyperparameters"]);
                let epochs = match sent.n_epochs {
                    Setting::Value(n) => n,
                    Setting::Auto => objects::auto_epochs(*examples),
                };
                let batch = match sent.batch_size {
                    Setting::Value(n) => n,
                    Setting::Auto => (recipe.batch_size * recipe.grad_accum) as u64,
                };
                let multiplier = match sent.learning_rate_multiplier {
                    Setting::Value(x) => x,
                    Setting::Auto => 1.0,
                };
                let resolved = json!({"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": multiplier});
                job["hyperparameters"] = resolved.clone();
                job["method"]["supervised"]["hyperparameters"] = resolved;
                job["status"] = "queued".into();
                job[PRIVATE] = json!({"examples": examples, "tokens_per_epoch": tokens});
                Ok(Some(format!("Files validated: {examples} examples, {tokens} tokens; the job is queued")))
            }
            Err(error) => {
                job["status"] = "failed".into();
                job["error"] = error.clone();
                job["finished_at"] = ft_store::unix_now().into();
                Ok(Some(error["message"].as_str().unwrap_or("").to_string()))
            }
        }
    });
    match updated {
        Ok((Some(message), _)) => {
            let level = if checked.is_ok() { "info" } else { "error" };
            service.event(id, level, &message, None);
            service.notify();
        }
        Ok((None, _)) => {}
        Err(e) => tracing::error!(job = id, "cannot record the validation: {e}"),
    }
}

async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    let mut page = service
        .store
        .list_jobs(&query.page(20)?)
        .map_err(store_error)?;
    page.items = page.items.into_iter().map(public).collect();
    Ok(Json(objects::list(page, false)))
}

fn job(service: &FineTuning, id: &str) -> Result<Value, ApiError> {
    service
        .store
        .job(id)
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no fine-tuning job `{id}`")))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    Ok(Json(public(job(&service, &id)?)))
}

fn not_now(job: &Value, action: &str) -> ApiError {
    ApiError::invalid(
        "fine_tuning_job_id",
        format!(
            "cannot {action} job `{}`: it is {}",
            job["id"].as_str().unwrap_or(""),
            status(job)
        ),
    )
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    let (stopping, job) = service.update_job(&id, |job| match status(job) {
        "running" if service.request_stop(&id, StopRequest::Cancel) => Ok(true),
        "running" => {
            // Another process runs it: it reads the request at its next step.
            job[PRIVATE]["stop_request"] = StopRequest::Cancel.name().into();
            Ok(true)
        }
        "validating_files" | "queued" | "paused" => {
            job["status"] = "cancelled".into();
            job["finished_at"] = ft_store::unix_now().into();
            Ok(false)
        }
        _ => Err(not_now(job, "cancel")),
    })?;
    let message = if stopping {
        "Cancelling: the job stops after its current step"
    } else {
        "The job was cancelled"
    };
    service.event(&id, "info", message, None);
    Ok(Json(public(job)))
}

async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    let (_, job) = service.update_job(&id, |job| match status(job) {
        "running" if service.request_stop(&id, StopRequest::Pause) => Ok(()),
        "running" => {
            job[PRIVATE]["stop_request"] = StopRequest::Pause.name().into();
            Ok(())
        }
        "queued" => {
            job["status"] = "paused".into();
            Ok(())
        }
        _ => Err(not_now(job, "pause")),
    })?;
    service.event(
        &id,
        "info",
        "Pausing: the job stops after its current step and keeps its checkpoint",
        None,
    );
    Ok(Json(public(job)))
}

async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    let (_, job) = service.update_job(&id, |job| match status(job) {
        "paused" => {
            job["status"] = "queued".into();
            Ok(())
        }
        "running" if service.withdraw_pause(&id) => Ok(()),
        "running" if job[PRIVATE]["stop_request"] == StopRequest::Pause.name() => {
            if let Some(private) = job[PRIVATE].as_object_mut() {
                private.remove("stop_request");
            }
            Ok(())
        }
        _ => Err(not_now(job, "resume")),
    })?;
    service.event(
        &id,
        "info",
        "Resumed: the job continues from its last checkpoint",
        None,
    );
    service.notify();
    Ok(Json(public(job)))
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    job(&service, &id)?;
    let page = service
        .store
        .list_events(&id, &query.page(20)?)
        .map_err(store_error)?;
    Ok(Json(objects::list(page, false)))
}

async fn checkpoints(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let service = service(&state)?;
    job(&service, &id)?;
    let page = service
        .store
        .list_checkpoints(&id, &query.page(10)?)
        .map_err(store_error)?;
    Ok(Json(objects::list(page, true)))
}

/// `DELETE /v1/models/{model}`: forgets a fine-tuned model (or an adapter loaded by name);
/// requests already running on it finish. The base cannot be deleted.
pub(crate) async fn delete_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if model == state.registry.base_id() {
        return Err(ApiError::forbidden(format!(
            "`{model}` is the base model; it cannot be deleted"
        )));
    }
    let in_store = match &state.fine_tuning {
        Some(service) => service.store.delete_adapter(&model).map_err(store_error)?,
        None => false,
    };
    let in_registry = state.registry.remove(&model).is_ok();
    if !(in_store || in_registry) {
        return Err(ApiError::model_not_found(&model));
    }
    tracing::info!(%model, "model deleted");
    Ok(Json(
        json!({"id": model, "object": "model", "deleted": true}),
    ))
}
