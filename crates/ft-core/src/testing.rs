//! Helpers for the workspace's tests: where the default model lives, and the rule that a test
//! needing it fails under `CI=true` when it is missing instead of being skipped.

use std::path::PathBuf;

/// The repository root (this crate is `crates/ft-core`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default SmolLM2 GGUF fetched by `scripts/fetch-model.sh`, or `None` (with a note on
/// stderr) when it is missing outside CI.
///
/// # Panics
/// Under `CI=true` when the model is missing: a test that needs the model is never silently
/// skipped in CI.
pub fn default_gguf() -> Option<PathBuf> {
    model_file(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "scripts/fetch-model.sh",
    )
}

/// Gemma 3 270M (Q4_K_M) fetched by `scripts/fetch-model.sh gemma3`, as [`default_gguf`].
///
/// # Panics
/// Under `CI=true` when the model is missing.
pub fn gemma3_gguf() -> Option<PathBuf> {
    model_file(
        "models/gemma-3-270m-q4_k_m.gguf",
        "scripts/fetch-model.sh gemma3",
    )
}

fn model_file(relative: &str, fetch: &str) -> Option<PathBuf> {
    let path = repo_root().join(relative);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: run {fetch}",
        path.display()
    );
    eprintln!("skipping: {} is missing (run {fetch})", path.display());
    None
}
