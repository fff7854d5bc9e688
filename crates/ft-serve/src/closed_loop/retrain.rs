//! The retrain trigger (`ft serve --auto-retrain`): when the stable version's negative
//! feedback passes the threshold over a window with enough verdicts, a fine-tuning job starts
//! on the adapter's training file plus the corrected conversations; when it succeeds its
//! adapter becomes the next version of the name, a candidate, and is promoted (gate on the
//! corrections, then canary) like any other.

use std::sync::Arc;

use ft_store::Blobs;
use serde_json::{json, Value};

use super::{controller, lock, ClosedLoop};
use crate::fine_tuning::{create_job, file_blob_key};

/// Kinds of registry event this module writes.
const STARTED: &str = "retrain_started";
const CANDIDATE: &str = "retrain_candidate";
const FAILED: &str = "retrain_failed";
const SKIPPED: &str = "retrain_skipped";

impl ClosedLoop {
    /// Finds the retrain jobs a previous run started and did not see through.
    pub(super) fn recover_retrains(&self) -> Result<(), ft_store::Error> {
        let store = self.service.store();
        let mut names: Vec<String> = store
            .adapter_versions()?
            .into_iter()
            .map(|v| v.name)
            .collect();
        names.dedup();
        for name in names {
            let mut pending = None;
            for event in store.registry_events(&name)? {
                match event["kind"].as_str() {
                    Some(STARTED) => {
                        pending = event["data"]["job"].as_str().map(str::to_string);
                        let at = event["created_at"].as_i64().unwrap_or(0) * 1000;
                        lock(&self.retrained_at).insert(name.clone(), at);
                    }
                    Some(CANDIDATE | FAILED) => pending = None,
                    _ => {}
                }
            }
            if let Some(job) = pending {
                lock(&self.retraining).insert(name, job);
            }
        }
        Ok(())
    }
}

/// One check of the trigger: finished retrain jobs become candidates; names whose feedback
/// passed the threshold start one.
pub(super) fn check(closed_loop: &Arc<ClosedLoop>, now: i64) {
    let Some(policy) = closed_loop.config.retrain.clone() else {
        return;
    };
    let store = closed_loop.service.store();
    let pending: Vec<(String, String)> = lock(&closed_loop.retraining)
        .iter()
        .map(|(n, j)| (n.clone(), j.clone()))
        .collect();
    for (name, job_id) in pending {
        let job = match store.job(&job_id) {
            Ok(Some(job)) => job,
            Ok(None) => Value::Null,
            Err(e) => {
                tracing::error!("retrain job {job_id}: {e}");
                continue;
            }
        };
        match job["status"].as_str() {
            Some("succeeded") => {
                lock(&closed_loop.retraining).remove(&name);
                if let Err(why) = candidate_from_job(closed_loop, &name, &job, &policy) {
                    closed_loop.event(&name, None, FAILED, &format!("job {job_id}: {why}"));
                }
            }
            Some("failed" | "cancelled") | None => {
                lock(&closed_loop.retraining).remove(&name);
                let why = job["error"]["message"].as_str().unwrap_or("it ended");
                closed_loop.event(
                    &name,
                    None,
                    FAILED,
                    &format!("retrain job {job_id} did not succeed: {why}"),
                );
            }
            _ => {}
        }
    }
    let Ok(versions) = store.adapter_versions() else {
        return;
    };
    let window_ms = (policy.window_seconds as i64).saturating_mul(1000);
    for stable in versions.iter().filter(|v| v.state == "stable") {
        let name = &stable.name;
        let busy = lock(&closed_loop.retraining).contains_key(name)
            || closed_loop.rollout(name).is_some_and(|r| r.status.active());
        if busy || stable.base != closed_loop.service.base_id() {
            continue;
        }
        let since = (now - window_ms).max(
            lock(&closed_loop.retrained_at)
                .get(name)
                .copied()
                .unwrap_or(0),
        );
        let Ok((total, negative)) = store.feedback_counts(name, stable.version, since) else {
            continue;
        };
        if total < policy.min_samples.max(1)
            || (negative as f64) <= policy.negative_rate * total as f64
        {
            continue;
        }
        let evidence = format!(
            "negative feedback on {name}@{} is {:.0} % ({negative} of {total}) over the window, above {:.0} %",
            stable.version,
            100.0 * negative as f64 / total as f64,
            100.0 * policy.negative_rate
        );
        lock(&closed_loop.retrained_at).insert(name.clone(), now);
        match start_job(closed_loop, stable, since) {
            Ok(Some((job_id, corrections))) => {
                lock(&closed_loop.retraining).insert(name.clone(), job_id.clone());
                closed_loop.event_with(
                    name,
                    Some(stable.version),
                    STARTED,
                    &format!("{evidence}: started {job_id} with {corrections} corrected conversation(s)"),
                    json!({"job": job_id, "negative": negative, "feedback": total, "corrections": corrections}),
                );
            }
            Ok(None) => closed_loop.event(
                name,
                Some(stable.version),
                SKIPPED,
                &format!("{evidence}, but no feedback carried a correction on a stored response: nothing new to train on"),
            ),
            Err(why) => closed_loop.event(name, Some(stable.version), FAILED, &why),
        }
    }
}

/// Most examples one retrain takes from corrections.
const MAX_CORRECTIONS: usize = 10_000;

/// The examples the corrections make: the stored conversation with the user's answer, each
/// distinct one once (many users correcting the same answer the same way teach one example).
fn correction_examples(corrections: &[ft_store::Correction]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    corrections
        .iter()
        .filter_map(|c| {
            let content: Value = serde_json::from_str(&c.content).ok()?;
            let example = if let Some(messages) = content["messages"].as_array() {
                let mut messages = messages.clone();
                messages.push(json!({"role": "assistant", "content": c.correction}));
                json!({"messages": messages})
            } else {
                json!({"prompt": content["prompt"].as_str()?, "completion": c.correction})
            };
            Some(example.to_string())
        })
        .filter(|line| seen.insert(line.clone()))
        .take(MAX_CORRECTIONS)
        .collect()
}

/// Uploads the training file (the stable version's, plus the corrections) and creates the
/// job. `None` when there is no correction to learn from.
fn start_job(
    closed_loop: &Arc<ClosedLoop>,
    stable: &ft_store::AdapterVersion,
    since: i64,
) -> Result<Option<(String, usize)>, String> {
    let service = closed_loop.service();
    let store = service.store();
    let corrections = store
        .corrections(&stable.name, since)
        .map_err(|e| e.to_string())?;
    let examples = correction_examples(&corrections);
    if examples.is_empty() {
        return Ok(None);
    }
    // The job that trained the stable version: its training file and hyperparameters.
    let original = match &stable.job_id {
        Some(id) => store.job(id).map_err(|e| e.to_string())?,
        None => None,
    };
    let mut data = Vec::new();
    if let Some(file) = original.as_ref().and_then(|j| j["training_file"].as_str()) {
        data = store
            .blobs()
            .get(&file_blob_key(file))
            .map_err(|e| e.to_string())?;
        if !data.ends_with(b"\n") && !data.is_empty() {
            data.push(b'\n');
        }
    }
    let corrections_text = examples.join("\n") + "\n";
    data.extend_from_slice(corrections_text.as_bytes());
    let file_id = ft_store::new_id("file-");
    store
        .blobs()
        .put(&file_blob_key(&file_id), &data)
        .map_err(|e| e.to_string())?;
    let file = json!({
        "object": "file", "id": file_id, "bytes": data.len(), "created_at": ft_store::unix_now(),
        "filename": format!("retrain-{}.jsonl", stable.name.replace(':', "_")),
        "purpose": "fine-tune", "status": "processed", "status_details": null, "expires_at": null,
    });
    store
        .insert_file(&file, &super::sha256_hex(&String::from_utf8_lossy(&data)))
        .map_err(|e| e.to_string())?;
    // The gate of the retrained candidate evaluates on the corrections.
    let eval_dir = service.state_dir().join("retrain");
    std::fs::create_dir_all(&eval_dir).map_err(|e| format!("{}: {e}", eval_dir.display()))?;
    let eval_path = eval_dir.join(format!("{file_id}.jsonl"));
    ft_model::adapter_io::write_atomically(&eval_path, corrections_text.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut body = json!({
        "model": service.base_id(),
        "training_file": file_id,
        "suffix": "retrain",
        "metadata": {"ft_retrain_of": stable.name, "ft_from_version": stable.version.to_string(),
                     "ft_eval_data": eval_path.display().to_string()},
    });
    if let Some(job) = &original {
        body["hyperparameters"] = job["hyperparameters"].clone();
        body["seed"] = job["seed"].clone();
    }
    let job =
        create_job(service, body.to_string().as_bytes(), None).map_err(|e| e.detail.message)?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    Ok(Some((id, examples.len())))
}

/// A succeeded retrain job: its adapter becomes the next version of `name` and is promoted.
fn candidate_from_job(
    closed_loop: &Arc<ClosedLoop>,
    name: &str,
    job: &Value,
    policy: &super::RetrainPolicy,
) -> Result<(), String> {
    let service = closed_loop.service();
    let store = service.store();
    let job_id = job["id"].as_str().unwrap_or_default();
    let trained = store
        .adapter_versions()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|v| v.job_id.as_deref() == Some(job_id))
        .ok_or_else(|| format!("job {job_id} has no adapter in the store"))?;
    let version = store
        .add_adapter_version(
            name,
            &trained.dir,
            &trained.content_sha256,
            &trained.base,
            Some(job_id),
        )
        .map_err(|e| e.to_string())?;
    closed_loop.event(
        name,
        Some(version),
        CANDIDATE,
        &format!("{name}@{version} is a candidate, trained by {job_id}"),
    );
    let mut promote = policy.promote.clone();
    if promote.gate.is_some() {
        promote.eval_data = job["metadata"]["ft_eval_data"].as_str().map(str::to_string);
    }
    controller::promote(closed_loop, name, version, promote)
        .map(|_| ())
        .map_err(|e| e.detail.message)
}
