//! Checkpoints: `DIR/checkpoints/step-N/` with the adapter (PEFT format), the optimizer state
//! and the trainer state (step, data cursor, best evaluation), with a `manifest.json` of their
//! sha256 digests. Each is written into a temporary directory, fsynced and renamed, so a
//! checkpoint directory is either complete or absent; the manifest catches later corruption.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::Device;
use ft_data::Cursor;
use ft_model::adapter_io::{save_adapter, LoadOptions};
use ft_model::manifest::{verify_manifest, write_manifest};
use ft_model::{LoraAdapter, Model};
use serde::{Deserialize, Serialize};

use crate::optim::{AdamW, AdamWConfig};
use crate::{Error, Result};

/// The loop's position, saved in `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// The next batch of training data.
    pub epoch: usize,
    /// The next batch within `epoch`.
    pub batch: usize,
    /// Lowest evaluation loss so far and its step.
    pub best_eval: Option<(f64, usize)>,
    /// Evaluations since the best one (early stopping).
    pub evals_without_improvement: usize,
}

impl TrainerState {
    /// The data cursor.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch,
            batch: self.batch,
        }
    }
}

/// A checkpoint read back from disk.
pub struct Checkpoint {
    /// Where it is.
    pub dir: PathBuf,
    /// The trainable adapter.
    pub adapter: LoraAdapter,
    /// The optimizer.
    pub optimizer: AdamW,
    /// The loop state.
    pub state: TrainerState,
}

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The checkpoints directory of a run.
pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

fn fsync_dir_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Writes checkpoint `state.step` and returns its directory.
pub fn save(
    out: &Path,
    adapter: &LoraAdapter,
    optimizer: &AdamW,
    state: &TrainerState,
    base_model: &str,
) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    let final_dir = root.join(format!("step-{}", state.step));
    let tmp = root.join(format!(".tmp-step-{}", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    save_adapter(adapter, &tmp, base_model)?;
    optimizer.save(&tmp.join(OPTIMIZER_FILE))?;
    let json = serde_json::to_string_pretty(state).unwrap_or_default();
    std::fs::write(tmp.join(STATE_FILE), json).map_err(|e| Error::io(tmp.join(STATE_FILE), e))?;
    // Last, over every file of the checkpoint (replacing the adapter's own manifest).
    write_manifest(&tmp)?;
    fsync_dir_files(&tmp)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    File::open(&root)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&root, e))?;
    Ok(final_dir)
}

/// Complete checkpoints of a run, newest first, as `(step, dir)`.
pub fn list(out: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(checkpoints_dir(out)) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(c.0));
    found
}

/// Reads the checkpoint in `dir` for `model`, after checking every file against its
/// `manifest.json` (an error names the file that changed).
pub fn load(dir: &Path, model: &Model, config: AdamWConfig, device: &Device) -> Result<Checkpoint> {
    if !verify_manifest(dir)? {
        tracing::warn!(
            "checkpoint {} has no manifest.json (written by an older ft); not verified",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(dir.join(STATE_FILE))
        .map_err(|e| Error::io(dir.join(STATE_FILE), e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: dir.join(STATE_FILE),
        reason: e.to_string(),
    })?;
    let adapter = model
        .load_adapter(dir, &LoadOptions::default())?
        .into_trainable()?;
    let optimizer = AdamW::load(config, &dir.join(OPTIMIZER_FILE), device)?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        adapter,
        optimizer,
        state,
    })
}

/// Deletes all but the newest `keep` checkpoints, sparing `protect` (the best).
pub fn prune(out: &Path, keep: usize, protect: Option<usize>) -> Result<()> {
    for (step, dir) in list(out).into_iter().skip(keep.max(1)) {
        if Some(step) != protect {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
    }
    Ok(())
}
