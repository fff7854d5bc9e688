//! The closed loop: gated promotion of adapter versions, canary steps with automatic
//! rollback, a request log with user feedback joined to it, drift signals, and a retrain
//! trigger, all on the fine-tuning service's store.
//!
//! - Each version of an adapter has a state: `candidate` → `canary` → `stable` → `retired`,
//!   or `rolled_back`. A request for `NAME` gets the stable version, or, while a rollout
//!   runs, the candidate when `bucket(NAME, user) < percent` ([`rollout::bucket`]; the user is
//!   the request's `user`, else `x-ft-user`, else the API key), so a user keeps the version
//!   as the percentage grows.
//! - A controller thread ([`controller`]) flushes the request log every check and judges each
//!   rollout's step on the log once the step is one window old ([`rollout::decide`]).
//! - `POST /v1/feedback` joins a verdict to a logged response ([`routes`]); corrections on
//!   stored responses become training examples when `--auto-retrain` starts a job.

pub mod controller;
mod retrain;
pub mod rollout;
mod routes;
pub mod trace;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::fine_tuning::FineTuning;
use rollout::{Policy, Rollout, Status};

pub(crate) use routes::routes;

/// When the retrain trigger fires and how its candidate is rolled out.
#[derive(Debug, Clone)]
pub struct RetrainPolicy {
    /// Fire when the share of negative feedback on the stable version exceeds this.
    pub negative_rate: f64,
    /// ... over at least this many verdicts ...
    pub min_samples: u64,
    /// ... within this window.
    pub window_seconds: u64,
    /// How the retrained candidate is promoted; its gate (if any) is evaluated on the
    /// corrected conversations.
    pub promote: Policy,
}

/// How the closed loop runs.
#[derive(Debug, Clone)]
pub struct ClosedLoopConfig {
    /// This server's API (`http://127.0.0.1:PORT/v1`): the default judge of gates.
    pub self_url: String,
    /// The key requests to it carry.
    pub api_key: Option<String>,
    /// Keep every request's conversation in the request log, not only `store: true` ones.
    pub store_completions: bool,
    /// Allow `POST /v1/admin/faults` (failure injection for tests and drills).
    pub fault_injection: bool,
    /// `--auto-retrain`.
    pub retrain: Option<RetrainPolicy>,
    /// How often the controller flushes the log and judges rollouts.
    pub check_interval: Duration,
}

/// Where a request for an adapter name was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The name asked for.
    pub name: String,
    /// The version that answers.
    pub version: u32,
    /// The candidate's share at the time, while a rollout runs.
    pub percent: Option<u32>,
}

impl Routed {
    /// `name@version`: the registry key that serves it, and what responses report.
    pub fn tag(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The closed loop of one server.
#[derive(Debug)]
pub struct ClosedLoop {
    service: Arc<FineTuning>,
    config: ClosedLoopConfig,
    /// The latest rollout of each name (what routing reads on every request).
    rollouts: Mutex<HashMap<String, Rollout>>,
    /// Requests not yet written to the store.
    pending_log: Mutex<Vec<ft_store::RequestLogRow>>,
    /// Held while queued rows are written, so that a flush returns only once every row
    /// queued before it is in the store (feedback looks its response up right after).
    flush_lock: Mutex<()>,
    /// Injected failure rate per `name@version`.
    faults: Mutex<HashMap<String, f64>>,
    /// Rendered closed-loop metrics, refreshed by the controller.
    metrics_text: Mutex<String>,
    /// Retrain jobs started and not yet turned into candidates: name → job id.
    retraining: Mutex<HashMap<String, String>>,
    /// When each name last started a retrain (unix ms): feedback before it is spent.
    retrained_at: Mutex<HashMap<String, i64>>,
    stopping: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is one insert or field write: a panic elsewhere cannot
    // leave them half-done.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// sha256 in hex.
pub(crate) fn sha256_hex(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

fn store_error(error: ft_store::Error) -> ApiError {
    ApiError::internal(error.to_string())
}

impl ClosedLoop {
    /// Starts the closed loop on `service`'s store: reads the rollouts, resumes a gate that
    /// was running, and starts the controller thread.
    pub fn start(service: Arc<FineTuning>, config: ClosedLoopConfig) -> Result<Arc<Self>, String> {
        let closed_loop = Arc::new(Self {
            service,
            config,
            rollouts: Mutex::new(HashMap::new()),
            pending_log: Mutex::new(Vec::new()),
            flush_lock: Mutex::new(()),
            faults: Mutex::new(HashMap::new()),
            metrics_text: Mutex::new(String::new()),
            retraining: Mutex::new(HashMap::new()),
            retrained_at: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            wake: Condvar::new(),
            wake_lock: Mutex::new(()),
            thread: Mutex::new(None),
        });
        closed_loop.reload().map_err(|e| e.to_string())?;
        closed_loop.recover_retrains().map_err(|e| e.to_string())?;
        let gating: Vec<String> = lock(&closed_loop.rollouts)
            .values()
            .filter(|r| r.status == Status::Gating)
            .map(|r| r.name.clone())
            .collect();
        for name in gating {
            controller::start_gate(&closed_loop, &name);
        }
        let worker = closed_loop.clone();
        let handle = std::thread::Builder::new()
            .name("ft-closed-loop".into())
            .spawn(move || controller::run(&worker))
            .map_err(|e| format!("cannot start the closed-loop thread: {e}"))?;
        *lock(&closed_loop.thread) = Some(handle);
        Ok(closed_loop)
    }

    /// Rereads every rollout from the store (another process may have changed one).
    fn reload(&self) -> Result<(), ft_store::Error> {
        let mut fresh = HashMap::new();
        for value in self.service.store().rollouts()? {
            match serde_json::from_value::<Rollout>(value) {
                Ok(rollout) => {
                    fresh.insert(rollout.name.clone(), rollout);
                }
                Err(e) => tracing::error!("a stored rollout is unreadable: {e}"),
            }
        }
        *lock(&self.rollouts) = fresh;
        Ok(())
    }

    /// The rollout of `name`.
    pub fn rollout(&self, name: &str) -> Option<Rollout> {
        lock(&self.rollouts).get(name).cloned()
    }

    /// Stores `rollout` and makes routing use it.
    fn save(&self, rollout: &Rollout) -> Result<(), ApiError> {
        let value = serde_json::to_value(rollout)
            .map_err(|e| ApiError::internal(format!("rollout: {e}")))?;
        self.service
            .store()
            .put_rollout(&rollout.name, &value)
            .map_err(store_error)?;
        lock(&self.rollouts).insert(rollout.name.clone(), rollout.clone());
        Ok(())
    }

    /// Records a registry event about `name` (logged too).
    fn event(&self, name: &str, version: Option<u32>, kind: &str, message: &str) {
        self.event_with(name, version, kind, message, serde_json::Value::Null);
    }

    /// As [`ClosedLoop::event`], with machine-readable `data`.
    fn event_with(
        &self,
        name: &str,
        version: Option<u32>,
        kind: &str,
        message: &str,
        data: serde_json::Value,
    ) {
        tracing::info!(adapter = name, version, kind, "{message}");
        let event = serde_json::json!({
            "data": data,
            "object": "adapter.event",
            "name": name,
            "version": version,
            "kind": kind,
            "message": message,
            "created_at": ft_store::unix_now(),
        });
        if let Err(e) = self
            .service
            .store()
            .add_registry_event(name, version, kind, &event)
        {
            tracing::error!(adapter = name, "cannot record a registry event: {e}");
        }
    }

    /// Where a request for `model` by `user` goes: `None` when `model` has no rollout (the
    /// registry's entry for the name, its stable version, answers).
    pub fn route(&self, model: &str, user: &str) -> Option<Routed> {
        let rollouts = lock(&self.rollouts);
        let rollout = rollouts.get(model)?;
        let version = rollout.version_for(user);
        let percent = (rollout.status == Status::Canary).then_some(rollout.percent);
        Some(Routed {
            name: model.to_string(),
            version,
            percent,
        })
    }

    /// Whether the request served by `tag` (`name@version`) should fail now (an injected
    /// fault).
    pub fn inject_failure(&self, tag: &str) -> bool {
        if !self.config.fault_injection {
            return false;
        }
        let rate = lock(&self.faults).get(tag).copied().unwrap_or(0.0);
        rate > 0.0 && rand::random::<f64>() < rate
    }

    /// Whether a request's conversation goes into the log (`store: true`, or always with
    /// `--store-completions`).
    pub fn keeps_content(&self, requested: Option<bool>) -> bool {
        requested.unwrap_or(self.config.store_completions)
    }

    /// Queues a finished request for the log (written by the controller within a check).
    pub fn log(&self, row: ft_store::RequestLogRow) {
        lock(&self.pending_log).push(row);
    }

    /// Writes the queued requests to the store.
    pub fn flush_log(&self) {
        let _writing = lock(&self.flush_lock);
        let rows = std::mem::take(&mut *lock(&self.pending_log));
        if let Err(e) = self.service.store().log_requests(&rows) {
            tracing::error!("cannot write {} request log rows: {e}", rows.len());
            // Keep them for the next try rather than lose them.
            let mut pending = lock(&self.pending_log);
            let newer = std::mem::replace(&mut *pending, rows);
            pending.extend(newer);
        }
    }

    /// The closed loop's lines of `/metrics`.
    pub fn render_metrics(&self) -> String {
        let mut text = lock(&self.metrics_text).clone();
        let rollouts = lock(&self.rollouts);
        let mut names: Vec<&String> = rollouts.keys().collect();
        names.sort();
        text.push_str("# HELP ft_rollout_percent Share of users the candidate answers.\n");
        text.push_str("# TYPE ft_rollout_percent gauge\n");
        for name in names {
            let r = &rollouts[name];
            let percent = match r.status {
                Status::Canary => r.percent,
                Status::Promoted => 100,
                _ => 0,
            };
            let _ = writeln!(
                text,
                "ft_rollout_percent{{model=\"{name}\",candidate=\"{}\",status=\"{}\"}} {percent}",
                r.candidate,
                serde_json::to_value(r.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            );
        }
        text
    }

    /// Stops the controller thread after writing the log.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        {
            let _guard = lock(&self.wake_lock);
            self.wake.notify_all();
        }
        if let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
        self.flush_log();
    }

    /// The fine-tuning service underneath.
    pub fn service(&self) -> &Arc<FineTuning> {
        &self.service
    }
}
