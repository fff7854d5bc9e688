#!/usr/bin/env bash
# LoRA forward+backward tokens/s and peak RSS: ft vs PyTorch+PEFT, same model (the default GGUF,
# f32), same tokens, same LoRA (all linear layers), CPU, 2 threads, one invocation. Also runs ft
# with candle's plain matmul for the frozen layers, to show what the frozen-linear op saves.
#   scripts/bench/lora-step-vs-peft.sh [--batch 4] [--seq 128] [--steps 5] [--rank 8]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/_venv.sh
scripts/fetch-model.sh >/dev/null
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2

cargo bench --quiet --bench lora_step --no-run >/dev/null 2>&1 || cargo bench --bench lora_step --no-run
ours=$(cargo bench --quiet --bench lora_step -- "$@")
naive=$(cargo bench --quiet --bench lora_step -- "$@" --naive-frozen)
peft=$("$PYTHON" scripts/bench/lora_step_peft.py "$@" 2>/dev/null)
printf '%s\n' "$ours" "$naive" "$peft" | grep -v '^RESULT'

value() { printf '%s\n' "$1" | sed -n "s/^RESULT.*$2=\([0-9.]*\).*/\1/p"; }
python3 - "$(value "$ours" tokens_per_sec)" "$(value "$peft" tokens_per_sec)" "$(value "$ours" peak_rss_mib)" "$(value "$peft" peak_rss_mib)" "$(value "$naive" tokens_per_sec)" "$(value "$naive" peak_rss_mib)" <<'PY'
import sys
ours, peft, ours_rss, peft_rss, naive, naive_rss = map(float, sys.argv[1:])
print(f"ratio ft/PEFT tokens/s: {ours / peft:.2f}x   peak RSS ft/PEFT: {ours_rss / peft_rss:.2f}x")
print(f"frozen-linear op vs naive matmul: {ours / naive:.2f}x tokens/s, peak RSS {ours_rss:.0f} vs {naive_rss:.0f} MiB")
PY
