//! The training thread: claims queued jobs one at a time, trains each with [`ft_train`] in its
//! run directory (`jobs/{id}/run`, resumed from its newest checkpoint when it has one, so a
//! job continues exactly after a pause or a crash), records events and checkpoints as they
//! come, and on success publishes the adapter as a new version served at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft_model::TextModel;
use ft_store::Blobs;
use ft_train::metrics::MetricsRow;
use ft_train::{Event, Resume, TrainConfig, TrainOptions, TrainOutcome, Trainer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::jobs::PRIVATE;
use super::{lock, objects, relative_to, FineTuning, StopRequest};

/// How often a job's lease is renewed: four times a lease, so a slow step or two does not
/// lose it.
fn renew_every(service: &FineTuning) -> Duration {
    Duration::from_secs((service.config.lease_seconds / 4).max(1) as u64)
}

/// The files of an adapter directory that serving needs.
const ADAPTER_FILES: &[&str] = &["adapter_config.json", "adapter_model.safetensors"];

/// Runs jobs until the service shuts down.
pub(super) fn run(service: &FineTuning) {
    if let Err(e) = ft_kernels::threads::use_own_threads(service.config.train_threads) {
        tracing::warn!("training shares the request threads: {e}");
    }
    let mut model: Option<TextModel> = None;
    while let Some((job, stop)) = next_job(service) {
        let id = job["id"].as_str().unwrap_or_default().to_string();
        tracing::info!(job = %id, "training");
        let result = train(service, &mut model, &job, stop);
        finish(service, &job, result);
    }
}

/// Waits for a job to claim; `None` once the service stops.
fn next_job(service: &FineTuning) -> Option<(Value, Arc<AtomicBool>)> {
    loop {
        let seen = {
            let controls = lock(&service.controls);
            if controls.stopping {
                return None;
            }
            controls.wakeups
        };
        {
            let _guard = lock(&service.jobs_lock);
            let now = ft_store::unix_now();
            match service
                .store
                .claim_job(&service.owner, now, now + service.config.lease_seconds)
            {
                Ok(Some(job)) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let id = job["id"].as_str().unwrap_or_default().to_string();
                    lock(&service.controls).running = Some((id, stop.clone(), None));
                    return Some((job, stop));
                }
                Ok(None) => {}
                Err(e) => tracing::error!("cannot claim a job: {e}"),
            }
        }
        let controls = lock(&service.controls);
        if controls.stopping {
            return None;
        }
        if controls.wakeups == seen {
            let _ = service.wake.wait_timeout(controls, Duration::from_secs(5));
        }
    }
}

/// Why a job failed, in OpenAI's `error` shape.
struct Failure {
    code: &'static str,
    message: String,
}

/// The recipe with the job's resolved hyperparameters and seed.
fn job_config(recipe: &TrainConfig, job: &Value) -> TrainConfig {
    let mut config = recipe.clone();
    let h = &job["hyperparameters"];
    if let Some(epochs) = h["n_epochs"].as_u64() {
        config.epochs = epochs as usize;
        config.max_steps = None;
    }
    if let Some(batch) = h["batch_size"].as_u64() {
        if batch as usize != recipe.batch_size * recipe.grad_accum {
            config.batch_size = batch as usize;
            config.grad_accum = 1;
        }
    }
    if let Some(multiplier) = h["learning_rate_multiplier"].as_f64() {
        config.lr = recipe.lr * multiplier;
    }
    if let Some(seed) = job["seed"].as_i64() {
        config.seed = seed as u64;
    }
    config
}

fn run_dir(service: &FineTuning, id: &str) -> PathBuf {
    service.config.state_dir.join("jobs").join(id)
}

fn train(
    service: &FineTuning,
    model: &mut Option<TextModel>,
    job: &Value,
    stop: Arc<AtomicBool>,
) -> Result<(TrainOutcome, String), Failure> {
    let id = job["id"].as_str().unwrap_or_default();
    let config = job_config(&service.config.recipe, job);
    if model.is_none() {
        let device = service.registry.base().model.transformer.device().clone();
        let loaded = ft_train::load_model(
            &service.config.base_model_path,
            &device,
            config.base_precision,
        )
        .map_err(|e| Failure {
            code: "internal_error",
            message: format!("cannot load the base for training: {e}"),
        })?;
        *model = Some(loaded);
    }
    let Some(model) = model.as_ref() else {
        unreachable!("loaded above");
    };
    let blob = |file: &str| {
        service
            .store
            .blobs()
            .path(&format!("files/{file}"))
            .map_err(|e| Failure {
                code: "invalid_training_file",
                message: e.to_string(),
            })
    };
    let data = blob(job["training_file"].as_str().unwrap_or_default())?;
    let eval_data = job["validation_file"].as_str().map(blob).transpose()?;
    let out = run_dir(service, id).join("run");
    let resume = (!ft_train::checkpoint::list(&out).is_empty()).then_some(Resume::Latest);
    let base_path = &service.config.base_model_path;
    let options = TrainOptions {
        data,
        eval_data,
        out,
        overwrite: resume.is_none(),
        resume,
        base_model_name: base_path.file_name().map_or_else(
            || base_path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        ..TrainOptions::default()
    };
    let model_name = objects::fine_tuned_model_name(
        &service.base_id,
        &service.config.organization,
        job["user_provided_suffix"].as_str(),
        id,
    );
    let trainer = Trainer::new(model, config, options).with_stop_flag(stop);
    let mut progress = Progress {
        service,
        id,
        model_name: &model_name,
        total_steps: 0,
        last_loss: None,
        last_accuracy: None,
        last_eval: None,
        renewed: Instant::now(),
    };
    let outcome = trainer
        .run(&mut |event| progress.record(event))
        .map_err(|e| Failure {
            code: match e {
                ft_train::Error::InvalidData { .. }
                | ft_train::Error::NoExamples(_)
                | ft_train::Error::Data(_) => "invalid_training_file",
                _ => "training_failed",
            },
            message: e.to_string(),
        })?;
    Ok((outcome, model_name))
}

/// Turns the trainer's progress into events, checkpoints and lease renewals.
struct Progress<'a> {
    service: &'a FineTuning,
    id: &'a str,
    model_name: &'a str,
    total_steps: usize,
    last_loss: Option<(usize, f64)>,
    last_accuracy: Option<f64>,
    last_eval: Option<(usize, f64)>,
    renewed: Instant,
}

impl Progress<'_> {
    fn record(&mut self, event: Event) {
        let service = self.service;
        match event {
            Event::Started {
                start_step,
                total_steps,
            } => {
                self.total_steps = total_steps;
                let message = if start_step > 0 {
                    format!("Resumed at step {start_step} of {total_steps}")
                } else {
                    format!("Training started: {total_steps} steps")
                };
                service.event(self.id, "info", &message, None);
            }
            Event::Step(m) => {
                self.last_loss = Some((m.step, m.loss));
                self.last_accuracy = m.token_accuracy;
                let data = json!({
                    "step": m.step, "train_loss": m.loss, "train_mean_token_accuracy": m.token_accuracy,
                    "total_steps": self.total_steps, "learning_rate": m.lr,
                });
                let message = format!(
                    "Step {}/{}: training loss={:.4}",
                    m.step, self.total_steps, m.loss
                );
                service.event(self.id, "info", &message, Some(data));
                self.heed_requests();
                if self.renewed.elapsed() >= renew_every(service) {
                    self.renewed = Instant::now();
                    self.renew_lease();
                }
            }
            Event::Eval(m) => {
                self.last_eval = Some((m.step, m.eval_loss));
                let data = json!({"step": m.step, "valid_loss": m.eval_loss, "total_steps": self.total_steps});
                let message = format!(
                    "Step {}/{}: validation loss={:.4}",
                    m.step, self.total_steps, m.eval_loss
                );
                service.event(self.id, "info", &message, Some(data));
            }
            Event::Checkpoint(dir) => {
                if let Err(e) = self.checkpoint(dir) {
                    tracing::error!(
                        job = self.id,
                        "cannot record checkpoint {}: {e}",
                        dir.display()
                    );
                }
            }
            Event::DataRead(_) | Event::CheckpointSkipped { .. } => {}
        }
    }

    /// Stops after this step when another process asked (a cancel or pause sent to a server
    /// that does not run the job is recorded in the job as `_ft.stop_request`).
    fn heed_requests(&self) {
        let service = self.service;
        let request = match service.store.job(self.id) {
            Ok(Some(job)) => job[PRIVATE]["stop_request"]
                .as_str()
                .and_then(StopRequest::parse),
            Ok(None) => Some(StopRequest::Cancel),
            Err(e) => {
                tracing::error!(job = self.id, "cannot read the job: {e}");
                None
            }
        };
        if let Some(request) = request {
            service.request_stop(self.id, request);
        }
    }

    /// Extends this worker's lease; when another worker took the job over (this one stalled
    /// past its lease), stops and leaves it to that one.
    fn renew_lease(&self) {
        let service = self.service;
        let until = ft_store::unix_now() + service.config.lease_seconds;
        match service.store.renew_lease(self.id, &service.owner, until) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(job = self.id, "lost the job's lease to another worker");
                service.request_stop(self.id, StopRequest::LeaseLost);
            }
            Err(e) => tracing::error!(job = self.id, "cannot renew the lease: {e}"),
        }
    }

    /// Copies the checkpoint's adapter beside the run (the trainer prunes its checkpoints),
    /// records it and serves it as `…:ckpt-step-N`.
    fn checkpoint(&self, dir: &Path) -> Result<(), String> {
        let service = self.service;
        let Some((step, loss)) = self.last_loss else {
            return Ok(());
        };
        let served = run_dir(service, self.id)
            .join("checkpoints")
            .join(format!("step-{step}"));
        copy_adapter(dir, &served)?;
        let mut metrics = json!({"step": step, "train_loss": loss, "train_mean_token_accuracy": self.last_accuracy});
        if let Some((eval_step, valid)) = self.last_eval {
            if eval_step == step {
                metrics["valid_loss"] = valid.into();
            }
        }
        let object = objects::checkpoint(self.id, self.model_name, step, metrics);
        let relative = relative_to(&service.config.state_dir, &served);
        service
            .store
            .add_checkpoint(self.id, step, &relative, &object)
            .map_err(|e| e.to_string())?;
        let name = objects::checkpoint_model_name(self.model_name, step);
        service
            .registry
            .register(&name, &served, 1)
            .map_err(|e| e.detail.message)
    }
}

/// Copies an adapter's files into `to` (replaced whole: written beside it, then renamed).
pub(crate) fn copy_adapter(from: &Path, to: &Path) -> Result<(), String> {
    let parent = to.parent().unwrap_or(to);
    let tmp = parent.join(format!(".tmp-{}", ft_store::new_id("")));
    let copied = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&tmp)?;
        for name in ADAPTER_FILES {
            std::fs::copy(from.join(name), tmp.join(name))?;
            std::fs::File::open(tmp.join(name))?.sync_all()?;
        }
        if to.exists() {
            std::fs::remove_dir_all(to)?;
        }
        std::fs::rename(&tmp, to)
    })();
    if copied.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    copied.map_err(|e| {
        format!(
            "copying the adapter {} to {}: {e}",
            from.display(),
            to.display()
        )
    })
}

/// sha256 over the adapter's files (name and bytes, in name order): the version's identity.
pub(crate) fn content_sha256(dir: &Path) -> Result<String, String> {
    let mut digest = Sha256::new();
    for name in ADAPTER_FILES {
        let bytes = std::fs::read(dir.join(name))
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))?;
        digest.update(name.as_bytes());
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(&bytes);
    }
    Ok(format!("{:x}", digest.finalize()))
}

/// The per-step metrics as OpenAI's results file (CSV).
fn results_csv(out: &Path) -> String {
    let rows = ft_train::metrics::read(&out.join("metrics.jsonl"));
    let valid: std::collections::HashMap<usize, f64> = rows
        .iter()
        .filter_map(|r| match r {
            MetricsRow::Eval(e) => Some((e.step, e.eval_loss)),
            MetricsRow::Step(_) => None,
        })
        .collect();
    // OpenAI's step_metrics.csv columns, and the learning rate.
    let mut csv = String::from("step,train_loss,train_accuracy,valid_loss,learning_rate\n");
    let cell = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for row in &rows {
        if let MetricsRow::Step(m) = row {
            csv.push_str(&format!(
                "{},{},{},{},{}\n",
                m.step,
                m.loss,
                cell(m.token_accuracy),
                cell(valid.get(&m.step).copied()),
                m.lr
            ));
        }
    }
    csv
}

/// Publishes a finished job's adapter: copied to `adapters/{job}`, recorded as a version,
/// served under its model name. Returns the results file's id.
fn publish(
    service: &FineTuning,
    id: &str,
    outcome: &TrainOutcome,
    model_name: &str,
) -> Result<String, String> {
    let dir = service.config.state_dir.join("adapters").join(id);
    copy_adapter(&outcome.adapter_dir, &dir)?;
    let sha = content_sha256(&dir)?;
    let relative = relative_to(&service.config.state_dir, &dir);
    let version = service
        .store
        .add_adapter_version(model_name, &relative, &sha, &service.base_id, Some(id))
        .map_err(|e| e.to_string())?;
    service
        .registry
        .load_version(model_name, &dir, Some(u64::from(version)))
        .map_err(|e| e.detail.message)?;
    let csv = results_csv(&run_dir(service, id).join("run"));
    let file_id = ft_store::new_id("file-");
    service
        .store
        .blobs()
        .put(&format!("files/{file_id}"), csv.as_bytes())
        .map_err(|e| e.to_string())?;
    let file = json!({
        "object": "file", "id": file_id, "bytes": csv.len(), "created_at": ft_store::unix_now(),
        "filename": "step_metrics.csv", "purpose": "fine-tune-results", "status": "processed",
        "status_details": null, "expires_at": null,
    });
    let file_sha = format!("{:x}", Sha256::digest(csv.as_bytes()));
    service
        .store
        .insert_file(&file, &file_sha)
        .map_err(|e| e.to_string())?;
    Ok(file_id)
}

/// Records how the job ended and frees the training thread for the next one.
fn finish(service: &FineTuning, job: &Value, result: Result<(TrainOutcome, String), Failure>) {
    let id = job["id"].as_str().unwrap_or_default();
    let result = result.and_then(|(outcome, model_name)| {
        if outcome.interrupted {
            return Ok((outcome, model_name, None));
        }
        publish(service, id, &outcome, &model_name)
            .map(|file| (outcome, model_name.clone(), Some(file)))
            .map_err(|message| Failure {
                code: "internal_error",
                message: format!(
                    "the job trained but its adapter could not be published: {message}"
                ),
            })
    });
    let mut message = String::new();
    let mut level = "info";
    let local = lock(&service.controls)
        .running
        .take()
        .and_then(|(_, _, why)| why);
    if local == Some(StopRequest::LeaseLost) {
        // The job is another worker's now: nothing of it is this one's to record.
        return;
    }
    let updated = service.update_job(id, |job| {
        let remote = job[PRIVATE]["stop_request"]
            .as_str()
            .and_then(StopRequest::parse);
        if let Some(private) = job[PRIVATE].as_object_mut() {
            private.remove("stop_request");
        }
        let request = local.or(remote);
        let now = ft_store::unix_now();
        match &result {
            Ok((_, _, None)) => {
                let (status, text) = match request {
                    Some(StopRequest::Cancel) => ("cancelled", "The job was cancelled; its last checkpoint is kept"),
                    Some(StopRequest::Pause) => ("paused", "The job is paused; resume it to continue from its checkpoint"),
                    _ => ("queued", "The server is stopping; the job resumes from its checkpoint when it starts again"),
                };
                job["status"] = status.into();
                if status == "cancelled" {
                    job["finished_at"] = now.into();
                }
                message = text.to_string();
            }
            Ok((_, model_name, Some(file))) => {
                let epochs = job["hyperparameters"]["n_epochs"].as_u64().unwrap_or(1);
                let tokens = job[PRIVATE]["tokens_per_epoch"].as_u64().unwrap_or(0);
                job["status"] = "succeeded".into();
                job["fine_tuned_model"] = model_name.clone().into();
                job["finished_at"] = now.into();
                job["trained_tokens"] = (tokens * epochs).into();
                job["result_files"] = json!([file]);
                message = format!("The job has successfully completed: new fine-tuned model {model_name}");
            }
            Err(failure) => {
                job["status"] = "failed".into();
                job["finished_at"] = now.into();
                job["error"] = json!({"code": failure.code, "param": if failure.code == "invalid_training_file" { json!("training_file") } else { Value::Null }, "message": failure.message});
                message = failure.message.clone();
                level = "error";
            }
        }
        Ok(())
    });
    if let Err(e) = updated {
        tracing::error!(job = id, "cannot record the job's end: {e}");
    }
    if let Err(e) = service.store.release_lease(id) {
        tracing::error!(job = id, "cannot release the lease: {e}");
    }
    service.event(id, level, &message, None);
    tracing::info!(job = id, "{message}");
}
