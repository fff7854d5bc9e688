//! Fine-tuning as a service: OpenAI's files and `fine_tuning.jobs` API inside `ft serve`.
//!
//! Uploaded files, jobs, their events and checkpoints, and the adapters jobs produce live in
//! one [`ft_store::Store`] under the state directory, so a restarted server (even after
//! `kill -9`) has them all and resumes the job that was running from its last checkpoint. Jobs
//! run one at a time on a training thread of this process ([`runner`]) with kernel threads of
//! its own (`--train-threads`), so that requests keep the rest of the machine. A job that
//! succeeds becomes an adapter version in the [`Registry`], served under its
//! `fine_tuned_model` name at once.
//!
//! The life of a job: `validating_files` (the training file read by the same validator as
//! `ft data validate`) → `queued` → `running` → `succeeded` | `failed` | `cancelled`, and
//! `paused` between `running` and `queued` again.

mod files;
mod jobs;
pub(crate) use files::blob_key as file_blob_key;
pub(crate) use jobs::{create_job, delete_model};
pub mod objects;
pub(crate) mod runner;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use axum::Router;
use ft_store::Store;
use ft_train::TrainConfig;
use serde_json::Value;

use crate::error::ApiError;
use crate::registry::Registry;
use crate::server::AppState;

/// How `ft serve` runs fine-tuning jobs.
#[derive(Debug, Clone)]
pub struct FineTuningConfig {
    /// Where the store, uploaded files, job runs and adapters live.
    pub state_dir: PathBuf,
    /// The base model file or directory jobs train on (the one being served).
    pub base_model_path: PathBuf,
    /// The recipe every job starts from (LoRA rank, targets, learning rate, ...); a job's
    /// hyperparameters override epochs, batch size and scale the learning rate.
    pub recipe: TrainConfig,
    /// `organization_id` of jobs and the org slot of model names.
    pub organization: String,
    /// Largest accepted upload.
    pub max_upload_bytes: usize,
    /// Kernel threads of the training thread (1: it trains alone on its own core).
    pub train_threads: usize,
    /// The store's rows in this PostgreSQL database instead of SQLite in the state directory:
    /// then several servers and `ft worker`s share the jobs (each needs the same state
    /// directory, e.g. on a shared filesystem, for the blobs).
    pub database_url: Option<String>,
    /// Run jobs in this process (`ft serve --no-train` leaves them to `ft worker`s).
    pub run_jobs: bool,
    /// How long a job's lease lasts unless its worker renews it; a worker that died loses
    /// its jobs to others after this.
    pub lease_seconds: i64,
}

impl FineTuningConfig {
    /// The defaults for a state directory and base.
    pub fn new(state_dir: PathBuf, base_model_path: PathBuf, recipe: TrainConfig) -> Self {
        Self {
            state_dir,
            base_model_path,
            recipe,
            organization: "local".to_string(),
            max_upload_bytes: 512 << 20,
            train_threads: 1,
            database_url: None,
            run_jobs: true,
            lease_seconds: 60,
        }
    }
}

/// Why the running job was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopRequest {
    Cancel,
    Pause,
    Shutdown,
    /// Another worker holds the job now (this one's lease ran out): leave the job to it.
    LeaseLost,
}

impl StopRequest {
    /// As recorded in a job for the process that runs it (`_ft.stop_request`).
    fn name(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Pause => "pause",
            Self::Shutdown => "shutdown",
            Self::LeaseLost => "lease_lost",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Cancel, Self::Pause]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// The running job's stop flag (the trainer's) and what set it.
#[derive(Debug, Default)]
struct Controls {
    running: Option<(String, Arc<AtomicBool>, Option<StopRequest>)>,
    stopping: bool,
    /// Bumped by [`FineTuning::notify`], so that a wake-up between the runner's look at the
    /// queue and its wait is not lost.
    wakeups: u64,
}

/// The fine-tuning service of one server.
#[derive(Debug)]
pub struct FineTuning {
    store: Store,
    registry: Arc<Registry>,
    config: FineTuningConfig,
    base_id: String,
    /// Who holds leases on jobs: this process.
    owner: String,
    /// Serializes every read-modify-write of a job object (routes, validation, runner).
    jobs_lock: Mutex<()>,
    controls: Mutex<Controls>,
    wake: Condvar,
    runner: Mutex<Option<JoinHandle<()>>>,
    /// With SQLite, held (locked) while the server runs: one server per state directory.
    _state_lock: Option<File>,
}

/// Locks `state_dir/serve.lock` for this process, or says which directory is taken.
fn lock_state_dir(state_dir: &Path) -> Result<File, String> {
    let lock_path = state_dir.join("serve.lock");
    let file = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    file.try_lock().map_err(|_| {
        format!(
            "{}: another `ft serve` uses this state directory; give each server its own \
             --state-dir, or share one PostgreSQL --database-url",
            state_dir.display()
        )
    })?;
    Ok(file)
}

/// The store's failures are the server's.
fn store_error(error: ft_store::Error) -> ApiError {
    ApiError::internal(error.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a field write or one store call: a panic elsewhere
    // cannot leave them half-done.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl FineTuning {
    /// Opens the store in `config.state_dir`, recovers what a previous run left (a running
    /// job goes back to the queue, adapters and checkpoints are served again) and starts the
    /// training thread.
    pub fn start(config: FineTuningConfig, registry: Arc<Registry>) -> Result<Arc<Self>, String> {
        let store = Store::connect(&config.state_dir, config.database_url.as_deref())
            .map_err(|e| e.to_string())?;
        // With SQLite this process is the state directory's only user; with PostgreSQL the
        // processes coordinate through leases in the database.
        let state_lock = match config.database_url {
            Some(_) => None,
            None => Some(lock_state_dir(&config.state_dir)?),
        };
        let service = Arc::new(Self {
            store,
            base_id: registry.base_id(),
            registry,
            config,
            owner: format!("ft-{}-{}", std::process::id(), ft_store::new_id("")),
            jobs_lock: Mutex::new(()),
            controls: Mutex::new(Controls::default()),
            wake: Condvar::new(),
            runner: Mutex::new(None),
            _state_lock: state_lock,
        });
        service.recover().map_err(|e| e.to_string())?;
        let weak = Arc::downgrade(&service);
        service.registry.on_miss(Box::new(move |name| {
            weak.upgrade()
                .is_some_and(|service| service.serve_from_store(name))
        }));
        if service.config.run_jobs {
            let worker = service.clone();
            let handle = std::thread::Builder::new()
                .name("ft-train".to_string())
                .spawn(move || runner::run(&worker))
                .map_err(|e| format!("cannot start the training thread: {e}"))?;
            *lock(&service.runner) = Some(handle);
        }
        Ok(service)
    }

    /// Registers `requested` from the store when it names an adapter version of this base
    /// that the registry lacks: one another process published, or `name@N` (version N of
    /// `name`, pinned). True when it did.
    fn serve_from_store(&self, requested: &str) -> bool {
        if requested.contains(":ckpt-step-") {
            return self.serve_checkpoint_from_store(requested);
        }
        let (name, pinned) = match requested.rsplit_once('@') {
            Some((name, n)) => match n.parse::<u32>() {
                Ok(n) => (name, Some(n)),
                Err(_) => return false,
            },
            None => (requested, None),
        };
        let versions = match self.store.adapter_versions() {
            Ok(versions) => versions,
            Err(e) => {
                tracing::error!("cannot read adapter versions: {e}");
                return false;
            }
        };
        let Some(found) = versions
            .iter()
            .filter(|v| v.name == name && v.base == self.base_id)
            .filter(|v| pinned.map_or(v.state == "stable", |n| v.version == n))
            .max_by_key(|v| v.version)
        else {
            return false;
        };
        let dir = self.resolve_dir(&found.dir);
        self.registry
            .register(requested, &dir, u64::from(found.version))
            .is_ok()
    }

    /// Largest accepted upload.
    pub fn max_upload_bytes(&self) -> usize {
        self.config.max_upload_bytes
    }

    /// The store (files, jobs, events, checkpoints, adapter versions).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The id of the base jobs train (`model` of a create request).
    pub fn base_id(&self) -> &str {
        &self.base_id
    }

    /// Registers checkpoint `name` (`…:ckpt-step-N`) that another process recorded.
    fn serve_checkpoint_from_store(&self, name: &str) -> bool {
        let checkpoints = match self.store.all_checkpoints() {
            Ok(checkpoints) => checkpoints,
            Err(e) => {
                tracing::error!("cannot read checkpoints: {e}");
                return false;
            }
        };
        checkpoints
            .iter()
            .find(|(c, _)| c["fine_tuned_model_checkpoint"] == name)
            .is_some_and(|(_, dir)| {
                self.registry
                    .register(name, &self.resolve_dir(dir), 1)
                    .is_ok()
            })
    }

    fn recover(&self) -> Result<(), ft_store::Error> {
        // With PostgreSQL another worker may be running these; an orphaned one is claimed
        // again when its lease runs out.
        let orphaned = match self.config.database_url {
            Some(_) => Vec::new(),
            None => self.store.jobs_with_status("running")?,
        };
        for job in orphaned {
            let id = job["id"].as_str().unwrap_or_default().to_string();
            let mut job = job;
            job["status"] = "queued".into();
            self.store.update_job(&job)?;
            self.store.release_lease(&id)?;
            self.event(
                &id,
                "warn",
                "The server restarted while the job ran; it resumes from its last checkpoint",
                None,
            );
        }
        for job in self.store.jobs_with_status("validating_files")? {
            if let Some(id) = job["id"].as_str() {
                jobs::validate(self, id);
            }
        }
        let versions = self.store.adapter_versions()?;
        // The stable version per name (the newest stable one, should there be several).
        let mut newest: HashMap<&str, &ft_store::AdapterVersion> = HashMap::new();
        for version in versions.iter().filter(|v| v.state == "stable") {
            newest.insert(version.name.as_str(), version);
        }
        for version in newest.values() {
            if version.base != self.base_id {
                tracing::warn!(
                    adapter = %version.name,
                    base = %version.base,
                    "not serving an adapter trained on another base"
                );
                continue;
            }
            let dir = self.resolve_dir(&version.dir);
            if let Err(e) = self
                .registry
                .register(&version.name, &dir, u64::from(version.version))
            {
                tracing::warn!(adapter = %version.name, "cannot serve it again: {e}");
            }
        }
        for (checkpoint, dir) in self.store.all_checkpoints()? {
            let Some(name) = checkpoint["fine_tuned_model_checkpoint"].as_str() else {
                continue;
            };
            let job_live = checkpoint["fine_tuning_job_id"]
                .as_str()
                .and_then(|id| self.store.job(id).ok().flatten())
                .is_some();
            if job_live && !self.registry.list().iter().any(|a| a.name == name) {
                let _ = self.registry.register(name, &self.resolve_dir(&dir), 1);
            }
        }
        Ok(())
    }

    /// The registry this service publishes into.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The state directory.
    pub(crate) fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// A directory recorded relative to the state directory (or absolute).
    pub(crate) fn resolve_dir(&self, dir: &str) -> PathBuf {
        self.config.state_dir.join(dir)
    }

    /// Appends an event to job `id`; a store failure is logged, not fatal to the job.
    fn event(&self, id: &str, level: &str, message: &str, data: Option<Value>) {
        let event = objects::event(id, level, message, data);
        if let Err(e) = self.store.add_event(id, &event) {
            tracing::error!(job = id, "cannot record an event: {e}");
        }
    }

    /// Reads job `id`, lets `change` edit it, and stores it, as one step against every other
    /// writer of jobs in this process.
    fn update_job<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Value) -> Result<T, ApiError>,
    ) -> Result<(T, Value), ApiError> {
        let _guard = lock(&self.jobs_lock);
        let mut job = self
            .store
            .job(id)
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found(format!("no fine-tuning job `{id}`")))?;
        let result = change(&mut job)?;
        self.store.update_job(&job).map_err(store_error)?;
        Ok((result, job))
    }

    /// Wakes the training thread (a job was queued).
    fn notify(&self) {
        let mut controls = lock(&self.controls);
        controls.wakeups += 1;
        self.wake.notify_all();
    }

    /// Asks the running job `id` to stop after its current step; false when it is not the
    /// running one.
    fn request_stop(&self, id: &str, request: StopRequest) -> bool {
        let mut controls = lock(&self.controls);
        match &mut controls.running {
            Some((running, stop, why)) if running == id => {
                *why = Some(request);
                stop.store(true, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// Withdraws a pause of job `id` that has not taken effect yet.
    fn withdraw_pause(&self, id: &str) -> bool {
        let mut controls = lock(&self.controls);
        match &mut controls.running {
            Some((running, stop, why)) if running == id && *why == Some(StopRequest::Pause) => {
                *why = None;
                stop.store(false, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// Stops the training thread: the running job saves a checkpoint after its current step
    /// and goes back to the queue, to resume when a server starts on this state directory.
    pub fn shutdown(&self) {
        {
            let mut controls = lock(&self.controls);
            controls.stopping = true;
            if let Some((_, stop, why)) = &mut controls.running {
                *why = Some(StopRequest::Shutdown);
                stop.store(true, Ordering::SeqCst);
            }
            self.wake.notify_all();
        }
        if let Some(handle) = lock(&self.runner).take() {
            let _ = handle.join();
        }
    }

    /// The API's routes (files, jobs, checkpoints, fine-tuned models).
    pub fn routes(max_upload_bytes: usize) -> Router<AppState> {
        files::routes(max_upload_bytes).merge(jobs::routes())
    }
}

/// The service behind a request, or the 404 that says how to turn it on.
fn service(state: &AppState) -> Result<Arc<FineTuning>, ApiError> {
    state.fine_tuning.clone().ok_or_else(|| {
        ApiError::not_found(
            "fine-tuning is off on this server: start `ft serve` with --state-dir DIR",
        )
    })
}

/// `after` and `limit` of a list request.
#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
    purpose: Option<String>,
}

impl ListQuery {
    fn page(&self, default_limit: usize) -> Result<ft_store::PageQuery, ApiError> {
        let limit = self.limit.unwrap_or(default_limit);
        if !(1..=10_000).contains(&limit) {
            return Err(ApiError::invalid(
                "limit",
                format!("`limit` must be from 1 to 10000, got {limit}"),
            ));
        }
        Ok(ft_store::PageQuery {
            after: self.after.clone(),
            limit,
        })
    }
}

/// Path of a directory relative to the state directory, as the store records it.
fn relative_to(root: &Path, dir: &Path) -> String {
    dir.strip_prefix(root)
        .unwrap_or(dir)
        .to_string_lossy()
        .into_owned()
}
