#!/usr/bin/env bash
# The closed loop end to end (scripts/serve/closed_loop_check.py): adapters trained by jobs,
# 1,000+ simulated users, canary promotion to 100 %, rollbacks on failures and on negative
# feedback, a failed judge gate, a kill -9 mid-canary, and the retrain trigger.
#   scripts/closed-loop-check.sh
# Builds nothing: expects target/release/ft or $FT_BIN. Exits non-zero on any failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/serve/_common.sh
scripts/fetch-model.sh >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
"$OPENAI_PYTHON" scripts/serve/closed_loop_check.py --ft "$FT_BIN" \
  --model models/SmolLM2-135M-Instruct.Q4_1.gguf --data datasets/seed-demo.jsonl \
  --job-config datasets/seed-demo.toml --tmp "$tmp" --users "${FT_CHECK_USERS:-1000}" || status=$?
if [ "$status" -ne 0 ]; then
  for log in "$tmp"/serve-*.log; do
    echo "--- $log (last 80 lines) ---" >&2
    tail -80 "$log" >&2
  done
fi
exit "$status"
