//! Resolving `--model`: a GGUF file, an HF-format directory, or a Hugging Face Hub id
//! (downloaded with `hf-hub` into its usual cache).

use std::path::{Path, PathBuf};

/// Where the default model lives, relative to the working directory (fetched by
/// `scripts/fetch-model.sh`). `FT_MODEL` overrides it.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Why a `--model` value could not be turned into a local path.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No `--model` was given and the default model is missing.
    #[error("no --model given and the default model {0} is missing; run scripts/fetch-model.sh or pass --model")]
    DefaultMissing(PathBuf),
    /// A path that does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    /// A Hub id that could not be fetched.
    #[error("model {id}: cannot fetch from the Hugging Face Hub ({reason}); if you are offline, pass a local GGUF file or HF directory with --model")]
    Hub {
        /// The id.
        id: String,
        /// What failed.
        reason: String,
    },
}

/// Whether `spec` looks like `owner/name` rather than a path.
fn looks_like_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    valid(owner) && valid(name) && !name.ends_with(".gguf")
}

/// Turns a `--model` value into a local GGUF file or HF directory.
///
/// `None` means the default model ([`DEFAULT_MODEL`], or `FT_MODEL`). An existing path is used
/// as is. `owner/name` is fetched from the Hub (config, tokenizer, safetensors) unless
/// `HF_HUB_OFFLINE=1`, in which case only the local cache is consulted.
pub fn resolve_model(spec: Option<&str>) -> Result<PathBuf, ResolveError> {
    let Some(spec) = spec else {
        let path =
            PathBuf::from(std::env::var("FT_MODEL").unwrap_or_else(|_| DEFAULT_MODEL.into()));
        return if path.exists() {
            Ok(path)
        } else {
            Err(ResolveError::DefaultMissing(path))
        };
    };
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_hub_id(spec) {
        return Err(ResolveError::NotFound(path.to_path_buf()));
    }
    fetch_from_hub(spec)
}

fn fetch_from_hub(id: &str) -> Result<PathBuf, ResolveError> {
    let hub_error = |reason: String| ResolveError::Hub {
        id: id.to_string(),
        reason,
    };
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    let get = |file: &str| -> Result<PathBuf, String> {
        if offline {
            hf_hub::Cache::from_env()
                .model(id.to_string())
                .get(file)
                .ok_or_else(|| {
                    format!("{file} is not in the local cache and HF_HUB_OFFLINE is set")
                })
        } else {
            let api = hf_hub::api::sync::ApiBuilder::from_env()
                .with_progress(false)
                .build()
                .map_err(|e| e.to_string())?;
            api.model(id.to_string())
                .get(file)
                .map_err(|e| e.to_string())
        }
    };
    let config = get("config.json").map_err(hub_error)?;
    get("tokenizer.json").map_err(hub_error)?;
    let _ = get("tokenizer_config.json");
    if get("model.safetensors").is_err() {
        let index = get("model.safetensors.index.json").map_err(hub_error)?;
        let text = std::fs::read_to_string(&index).map_err(|e| hub_error(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| hub_error(e.to_string()))?;
        let mut shards: Vec<&str> = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| m.values().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            get(shard).map_err(hub_error)?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| hub_error("unexpected cache layout".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_hub_ids_from_paths() {
        assert!(looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!looks_like_hub_id("models/model.gguf"));
        assert!(!looks_like_hub_id("./x/y"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
    }
}
