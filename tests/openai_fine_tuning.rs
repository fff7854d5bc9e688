//! OpenAI's fine-tuning pipeline with the official `openai` Python SDK against the `ft` binary:
//! runs `scripts/openai-finetune-check.sh` (upload, job, poll, chat with the fine-tuned model,
//! events and checkpoints paging, a bad file, cancel, pause/resume, a wrong key, kill -9 and
//! restart; `ft serve --no-train` and `ft worker` sharing one PostgreSQL store, the worker
//! killed and its job taken over; and the same adapter bytes after every interruption). The SDK is installed from
//! PyPI into a cached venv on first use.

mod common;
use common::repo;

use std::process::Command;

#[test]
fn the_openai_sdk_fine_tunes_and_serves_through_ft() -> anyhow::Result<()> {
    if ft::core::testing::default_gguf().is_none() {
        return Ok(());
    }
    let output = Command::new("bash")
        .arg("scripts/openai-finetune-check.sh")
        .current_dir(repo())
        .env("FT_BIN", env!("CARGO_BIN_EXE_ft"))
        .env("RUST_LOG", "info")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{stdout}\n--- stderr ---\n{stderr}"
    );
    for expected in [
        "ok   jobs.create -> succeeded, and the model answers with the trained sentence",
        "ok   after kill -9",
        "ok   a job run by an ft worker is served by ft serve at once, also as name@1 and its checkpoints",
        "ok   a cancel sent to the server stops the job on the worker",
        "ok   the paused, the killed and the taken-over jobs' adapters are the uninterrupted one's bytes",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}`:\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    Ok(())
}
