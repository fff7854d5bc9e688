//! Adapters as data: a name → directory table with at most N adapters resident in memory.
//!
//! A request resolves its adapter once, to an `Arc` of one version, and keeps it until it
//! finishes; loading under an existing name makes a new version for later requests only. An
//! adapter evicted by the LRU bound reloads from its directory on the next request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ft_model::adapter_io::LoadOptions;
use ft_model::{LoraAdapter, TextModel};

use crate::error::ApiError;

/// One version of an adapter, as a request sees it.
#[derive(Debug, Clone)]
pub struct ResolvedAdapter {
    /// Its name.
    pub name: String,
    /// Increases each time the name is loaded anew (1 for the first load).
    pub version: u64,
    /// The weights.
    pub adapter: Arc<LoraAdapter>,
}

impl ResolvedAdapter {
    /// `name@version`: what responses report as `system_fingerprint`.
    pub fn tag(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// What `GET /v1/adapters` reports about one adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterInfo {
    /// The name used in `model`.
    pub name: String,
    /// Its directory.
    pub path: String,
    /// The current version.
    pub version: u64,
    /// Whether its weights are in memory now.
    pub resident: bool,
    /// Unix seconds of its (re)load by name.
    pub created: u64,
}

#[derive(Debug)]
struct Entry {
    dir: PathBuf,
    version: u64,
    created: u64,
    weights: Option<Arc<LoraAdapter>>,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Table {
    entries: BTreeMap<String, Entry>,
    clock: u64,
    next_version: BTreeMap<String, u64>,
}

/// The adapters a server knows, loaded against one base model.
#[derive(Debug)]
pub struct Registry {
    base: Arc<TextModel>,
    adapters_dir: Option<PathBuf>,
    max_resident: usize,
    table: Mutex<Table>,
    miss_handler: std::sync::OnceLock<MissHook>,
}

struct MissHook(MissHandler);

impl std::fmt::Debug for MissHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MissHook")
    }
}

/// Asked when a name is not in the registry; it may register the name (a version another
/// process published, or a pinned `name@N`) and returns whether it did.
pub type MissHandler = Box<dyn Fn(&str) -> bool + Send + Sync>;

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Adapter names become `model` values and URL path segments: keep them plain.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            format!("adapter name `{name}` must be 1-128 characters of letters, digits, - _ . : @"),
        ))
    }
}

impl Registry {
    /// An empty registry for `base`. `adapters_dir` confines `POST /v1/adapters` paths (none:
    /// loading over HTTP is refused); `max_resident` bounds adapters kept in memory.
    pub fn new(base: Arc<TextModel>, adapters_dir: Option<PathBuf>, max_resident: usize) -> Self {
        Self {
            base,
            adapters_dir,
            max_resident: max_resident.max(1),
            table: Mutex::new(Table::default()),
            miss_handler: std::sync::OnceLock::new(),
        }
    }

    /// Sets what a miss asks (the fine-tuning service's store); the first handler set stays.
    pub fn on_miss(&self, handler: MissHandler) {
        let _ = self.miss_handler.set(MissHook(handler));
    }

    /// Whether `name` is known, asking the miss handler when it is not.
    pub fn knows(&self, name: &str) -> bool {
        self.lock().entries.contains_key(name)
            || self.miss_handler.get().is_some_and(|ask| (ask.0)(name))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent (every update is
        // one insert or field write), so a poisoned lock is still safe to use.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves a path given over HTTP inside the adapters directory, refusing anything that
    /// escapes it (`..`, absolute paths elsewhere, symlinks out).
    pub fn confine(&self, requested: &str) -> Result<PathBuf, ApiError> {
        let Some(root) = &self.adapters_dir else {
            return Err(ApiError::forbidden(
                "loading adapters over HTTP is off: start `ft serve` with --adapters-dir DIR",
            ));
        };
        let root = root.canonicalize().map_err(|e| {
            ApiError::internal(format!("adapters directory {}: {e}", root.display()))
        })?;
        let candidate = root.join(requested);
        let resolved = candidate.canonicalize().map_err(|_| {
            ApiError::invalid(
                "path",
                format!("no adapter directory `{requested}` under the adapters directory"),
            )
        })?;
        if !resolved.starts_with(&root) {
            return Err(ApiError::invalid(
                "path",
                format!("adapter path `{requested}` is outside the adapters directory"),
            ));
        }
        Ok(resolved)
    }

    /// Loads the adapter in `dir` under `name` (replacing any adapter of that name for new
    /// requests) and returns the new version. The base fingerprint is checked.
    pub fn load(&self, name: &str, dir: &Path) -> Result<ResolvedAdapter, ApiError> {
        self.load_version(name, dir, None)
    }

    /// As [`Registry::load`], numbering it `version` when given (a version the store
    /// recorded, so that `name@N` means the same adapter across restarts) instead of the next
    /// number of this process.
    pub fn load_version(
        &self,
        name: &str,
        dir: &Path,
        version: Option<u64>,
    ) -> Result<ResolvedAdapter, ApiError> {
        check_name(name)?;
        if name == self.base_id() {
            return Err(ApiError::invalid(
                "name",
                format!("`{name}` is the base model's id; pick another adapter name"),
            ));
        }
        // Read outside the lock: loading takes a while and requests keep resolving meanwhile.
        let weights = Arc::new(self.read(dir)?);
        let mut table = self.lock();
        let version = {
            let next = table.next_version.entry(name.to_string()).or_insert(0);
            *next = version.unwrap_or(*next + 1).max(*next);
            *next
        };
        table.clock += 1;
        let entry = Entry {
            dir: dir.to_path_buf(),
            version,
            created: unix_now(),
            weights: Some(weights.clone()),
            last_used: table.clock,
        };
        table.entries.insert(name.to_string(), entry);
        self.evict(&mut table, name);
        Ok(ResolvedAdapter {
            name: name.to_string(),
            version,
            adapter: weights,
        })
    }

    /// Makes `name` (version `version`) servable from `dir` without reading it now: its weights
    /// load on the first request, like an evicted adapter's. For what a restarted server knew
    /// (checked when it was first loaded), so that start-up does not read every adapter.
    pub fn register(&self, name: &str, dir: &Path, version: u64) -> Result<(), ApiError> {
        check_name(name)?;
        let mut table = self.lock();
        let next = table.next_version.entry(name.to_string()).or_insert(0);
        *next = (*next).max(version);
        let entry = Entry {
            dir: dir.to_path_buf(),
            version,
            created: unix_now(),
            weights: None,
            last_used: 0,
        };
        table.entries.insert(name.to_string(), entry);
        Ok(())
    }

    fn read(&self, dir: &Path) -> Result<LoraAdapter, ApiError> {
        self.base
            .model
            .load_adapter(dir, &LoadOptions::default())
            .map_err(|e| ApiError::invalid("path", e.to_string()))
    }

    /// Drops the weights of the least recently used adapters beyond the bound (never `keep`).
    fn evict(&self, table: &mut Table, keep: &str) {
        loop {
            let resident: Vec<(&String, u64)> = table
                .entries
                .iter()
                .filter(|(_, e)| e.weights.is_some())
                .map(|(n, e)| (n, e.last_used))
                .collect();
            if resident.len() <= self.max_resident {
                return;
            }
            let Some(oldest) = resident
                .iter()
                .filter(|(n, _)| n.as_str() != keep)
                .min_by_key(|(_, used)| *used)
                .map(|(n, _)| (*n).clone())
            else {
                return;
            };
            if let Some(entry) = table.entries.get_mut(&oldest) {
                tracing::info!(adapter = %oldest, "evicted from memory (reloads on demand)");
                entry.weights = None;
            }
        }
    }

    /// The current version of `name`, reloading it from its directory if it was evicted.
    pub fn resolve(&self, name: &str) -> Result<ResolvedAdapter, ApiError> {
        if !self.knows(name) {
            return Err(ApiError::model_not_found(name));
        }
        let (dir, version) = {
            let mut table = self.lock();
            table.clock += 1;
            let clock = table.clock;
            let Some(entry) = table.entries.get_mut(name) else {
                return Err(ApiError::model_not_found(name));
            };
            entry.last_used = clock;
            if let Some(weights) = &entry.weights {
                return Ok(ResolvedAdapter {
                    name: name.to_string(),
                    version: entry.version,
                    adapter: weights.clone(),
                });
            }
            (entry.dir.clone(), entry.version)
        };
        let weights = Arc::new(self.read(&dir)?);
        let mut table = self.lock();
        // Store it unless the name was replaced or removed while we read.
        if let Some(entry) = table.entries.get_mut(name) {
            if entry.version == version {
                entry.weights = Some(weights.clone());
            }
        }
        self.evict(&mut table, name);
        Ok(ResolvedAdapter {
            name: name.to_string(),
            version,
            adapter: weights,
        })
    }

    /// Forgets `name`; requests already running on it finish.
    pub fn remove(&self, name: &str) -> Result<(), ApiError> {
        match self.lock().entries.remove(name) {
            Some(_) => Ok(()),
            None => Err(ApiError::not_found(format!("no adapter named `{name}`"))),
        }
    }

    /// Every adapter, by name.
    pub fn list(&self) -> Vec<AdapterInfo> {
        self.lock()
            .entries
            .iter()
            .map(|(name, e)| AdapterInfo {
                name: name.clone(),
                path: e.dir.display().to_string(),
                version: e.version,
                resident: e.weights.is_some(),
                created: e.created,
            })
            .collect()
    }

    /// The id clients use for the base model: the model file's stem (directory name for HF).
    pub fn base_id(&self) -> String {
        base_id(&self.base.model.source)
    }

    /// The base model.
    pub fn base(&self) -> &Arc<TextModel> {
        &self.base
    }
}

/// The id of a base model at `path`: `models/SmolLM2-135M-Instruct.Q4_1.gguf` →
/// `SmolLM2-135M-Instruct.Q4_1`.
pub fn base_id(path: &Path) -> String {
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.map_or_else(|| "base".to_string(), |n| n.to_string_lossy().into_owned())
}
