#!/usr/bin/env bash
# Dataset tokenization examples/s: ft (parse + chat template + tokenize + assistant mask,
# parallel over 2 threads) vs transformers (apply_chat_template + tokenize, no mask), same
# examples and tokenizer, one invocation.
#   scripts/bench/tokenize-vs-transformers.sh [--repeat 20]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/_venv.sh
scripts/fetch-model.sh >/dev/null
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2

cargo bench --quiet --bench tokenize --no-run >/dev/null 2>&1 || cargo bench --bench tokenize --no-run
ours=$(cargo bench --quiet --bench tokenize -- "$@")
theirs=$("$PYTHON" scripts/bench/tokenize_transformers.py "$@" 2>/dev/null)
printf '%s\n' "$ours" "$theirs" | grep -v '^RESULT'
value() { printf '%s\n' "$1" | sed -n "s/^RESULT.*examples_per_sec=\([0-9.]*\).*/\1/p"; }
python3 -c "import sys; print(f'ratio ft/transformers examples/s: {float(sys.argv[1]) / float(sys.argv[2]):.2f}x')" "$(value "$ours")" "$(value "$theirs")"
