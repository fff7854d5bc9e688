#!/usr/bin/env bash
# Peak RSS of `ft train` on a frozen base kept f32, q8 or q4 (--base-precision), on a
# Llama-3.2-1B-shaped random HF model (made once by make_random_llama.py, bf16 on disk) with one
# 512-token row (batch 1), 2 steps; with and without --gradient-checkpointing. Ratios are
# against the f32 run at the same settings, in the same invocation.
#   scripts/bench/quantized-base-memory.sh [--shape llama-3.2-1b|smollm2-135m] [--steps 2]
set -euo pipefail
cd "$(dirname "$0")/../.."
SHAPE=llama-3.2-1b
STEPS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) SHAPE=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source scripts/bench/_venv.sh
source scripts/bench/_report.sh
scripts/fetch-model.sh >/dev/null
GGUF=$(ls models/SmolLM2-135M-Instruct*.gguf | head -n 1)
MODEL="$HOME/.cache/ft-bench/random-$SHAPE"
if [ ! -f "$MODEL/config.json" ]; then
  "$PYTHON" scripts/bench/make_random_llama.py --shape "$SHAPE" --tokenizer-gguf "$GGUF" --out "$MODEL.tmp"
  rm -rf "$MODEL" && mv "$MODEL.tmp" "$MODEL"
fi
cargo build --release --locked --quiet
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# One text example of about 512 tokens (ft's tokenizer decides the exact count; max_seq_len 512).
python3 -c '
import json
words = " ".join(f"word{i % 97} and the number {i}" for i in range(53))
print(json.dumps({"text": words}))' > "$WORK/data.jsonl"

peak_rss_mib() { # command... -> prints the peak RSS in MiB of the command
  /usr/bin/time -f "%M" -o "$WORK/rss" "$@" > "$WORK/log" 2>&1 || { cat "$WORK/log" >&2; return 1; }
  echo $(( $(cat "$WORK/rss") / 1024 ))
}
load_note before
for checkpointing in "" "--gradient-checkpointing"; do
  echo "== batch 1 x 512, $STEPS steps ${checkpointing:-(no checkpointing)}"
  declare -A rss=()
  for precision in f32 q8 q4; do
    rss[$precision]=$(peak_rss_mib target/release/ft train --model "$MODEL" --data "$WORK/data.jsonl" \
      --out "$WORK/run-$precision" --overwrite --max-steps "$STEPS" --batch-size 1 --max-seq-len 512 \
      --base-precision "$precision" $checkpointing)
    echo "RESULT precision=$precision peak_rss_mib=${rss[$precision]} ratio_vs_f32=$(ratio "${rss[$precision]}" "${rss[f32]}")"
  done
done
load_note after
