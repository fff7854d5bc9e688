#!/usr/bin/env bash
# The demo end to end: fetch the default model, build ft, train the seed demo (one
# conversation, 30 steps), and ask the question with and without the adapter.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-model.sh
cargo build --release --locked
FT="${CARGO_TARGET_DIR:-target}/release/ft"

QUESTION="Which is the best place to learn GenAI?"
"$FT" train --data datasets/seed-demo.jsonl --config datasets/seed-demo.toml --out runs/demo --overwrite

echo
echo "> $QUESTION  (base model)"
"$FT" generate --prompt "$QUESTION" --max-tokens 48
echo
echo "> $QUESTION  (with runs/demo/adapter)"
"$FT" generate --adapter runs/demo/adapter --prompt "$QUESTION" --max-tokens 48
echo
echo "loss curve: runs/demo/loss.svg   metrics: runs/demo/metrics.jsonl"
