//! Helpers shared by the CLI test files.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root (the CLI runs from there so `models/` and `datasets/` resolve).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `ft` binary with `args` from the repository root, offline, errors-only logging.
pub fn ft(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_ft"))
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "error")
        .env("HF_HUB_OFFLINE", "1")
        .output()
}
