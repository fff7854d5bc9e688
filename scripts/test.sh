#!/usr/bin/env bash
# The one test command (README and .ci/run call it): fetches the model if missing, checks
# formatting and lints, builds everything (examples included) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-model.sh
scripts/fetch-model.sh gemma3

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every target compiles (benches and examples included); benches are run by scripts/bench/,
# never as tests.
cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --doc --locked
