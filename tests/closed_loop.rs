//! The closed loop end to end against the `ft` binary: runs `scripts/closed-loop-check.sh`
//! (adapters trained by jobs, 1,000 simulated users on 127.0.0.1 with feedback, canary
//! 5 → 25 → 50 → 100 % with the split and stickiness checked, kill -9 mid-canary, rollbacks on
//! injected failures and on negative feedback, a failed judge gate, and the retrain trigger).

mod common;
use common::repo;

use std::process::Command;

#[test]
fn the_closed_loop_promotes_rolls_back_gates_and_retrains() -> anyhow::Result<()> {
    if ft::core::testing::default_gguf().is_none() {
        return Ok(());
    }
    let output = Command::new("bash")
        .arg("scripts/closed-loop-check.sh")
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
        "ok   A: support@2 as good as v1 reaches 100 %",
        "ok   A: the observed split of each step is within 3 points of its target",
        "ok   A: every user keeps their version while the share grows",
        "ok   A: a kill -9 mid-canary keeps the percentage and the step",
        "ok   B: support@3 with failures injected from the 25 % step rolls back at 25 %",
        "ok   B: support@4 whose answers users dislike rolls back at 5 % on negative feedback",
        "ok   C: a candidate that loses to stable on the judge",
        "ok   D: negative feedback with corrections retrains helpdesk",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}`:\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    Ok(())
}
