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
    let path = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    eprintln!(
        "skipping: {} is missing (run scripts/fetch-model.sh)",
        path.display()
    );
    None
}
