#!/usr/bin/env bash
# One LoRA training step (forward + backward of `ft train`'s loss) tokens/s and peak RSS: ft,
# ft with --gradient-checkpointing, and PyTorch+PEFT, same model (the default GGUF, f32), same
# tokens (every one a label), same LoRA (all linear layers), CPU, 2 threads, one invocation.
#   scripts/bench/lora-step-vs-peft.sh [--batch 4] [--seq 128] [--steps 5] [--rank 8] [--composed]
# `--composed` also runs ft's old path (candle's autograd of composed ops) for comparison.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/_venv.sh
scripts/fetch-model.sh >/dev/null
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2

args=()
composed=0
for a in "$@"; do
  if [ "$a" = "--composed" ]; then composed=1; else args+=("$a"); fi
done
cargo bench --quiet --bench lora_step --no-run >/dev/null 2>&1 || cargo bench --bench lora_step --no-run
ours=$(cargo bench --quiet --bench lora_step -- "${args[@]}")
checkpointed=$(cargo bench --quiet --bench lora_step -- "${args[@]}" --gradient-checkpointing)
old=""
if [ "$composed" = 1 ]; then old=$(cargo bench --quiet --bench lora_step -- "${args[@]}" --composed); fi
peft=$("$PYTHON" scripts/bench/lora_step_peft.py "${args[@]}" 2>/dev/null)
printf '%s\n' "$ours" "$checkpointed" "$old" "$peft" | grep -v '^RESULT' | grep -v '^$'

value() { printf '%s\n' "$1" | sed -n "s/^RESULT.*$2=\([0-9.]*\).*/\1/p"; }
python3 - "$(value "$ours" tokens_per_sec)" "$(value "$peft" tokens_per_sec)" "$(value "$ours" peak_rss_mib)" "$(value "$peft" peak_rss_mib)" "$(value "$checkpointed" tokens_per_sec)" "$(value "$checkpointed" peak_rss_mib)" <<'PY'
import sys
ours, peft, ours_rss, peft_rss, ckpt, ckpt_rss = map(float, sys.argv[1:])
print(f"ratio ft/PEFT tokens/s: {ours / peft:.2f}x   peak RSS ft/PEFT: {ours_rss / peft_rss:.2f}x")
print(f"ratio ft --gradient-checkpointing/PEFT tokens/s: {ckpt / peft:.2f}x   peak RSS: {ckpt_rss / peft_rss:.2f}x")
PY
