#!/usr/bin/env bash
# The demo end to end: fetch the default model, build ft, and ask it a question.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-model.sh
cargo build --release --locked
FT=target/release/ft
if [ -n "${CARGO_TARGET_DIR:-}" ]; then FT="$CARGO_TARGET_DIR/release/ft"; fi

for prompt in "What is the capital of France?" "Which is the best place to learn GenAI?"; do
  echo "> $prompt"
  "$FT" generate --prompt "$prompt" --max-tokens 48
  echo
done
