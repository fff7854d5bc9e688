#!/usr/bin/env bash
# Greedy decode tokens/s, batch 1: ft vs transformers `generate`, same GGUF (f32), same chat
# prompt, same number of new tokens, CPU, 2 threads, one invocation.
#   scripts/bench/decode-vs-transformers.sh [--new-tokens 64]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/_venv.sh
scripts/fetch-model.sh >/dev/null
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2

cargo bench --quiet --bench decode --no-run >/dev/null 2>&1 || cargo bench --bench decode --no-run
ours=$(cargo bench --quiet --bench decode -- "$@")
theirs=$("$PYTHON" scripts/bench/decode_transformers.py "$@" 2>/dev/null)
printf '%s\n' "$ours" "$theirs" | grep -v '^RESULT'
value() { printf '%s\n' "$1" | sed -n "s/^RESULT.*tokens_per_sec=\([0-9.]*\).*/\1/p"; }
python3 -c "import sys; print(f'ratio ft/transformers decode tokens/s: {float(sys.argv[1]) / float(sys.argv[2]):.2f}x')" "$(value "$ours")" "$(value "$theirs")"
