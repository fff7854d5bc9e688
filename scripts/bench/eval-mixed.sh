#!/usr/bin/env bash
# `ft eval` with 4 adapters in one pass (rows of all adapters share each batch) vs 4 separate
# runs of one adapter each: generated examples per second, ratio printed. Same test split,
# same greedy settings, CPU, 2 threads, one invocation.
#   scripts/bench/eval-mixed.sh [ADAPTER_DIR]   (default: the PEFT fixture adapter, copied 4×)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/fetch-model.sh >/dev/null
export RAYON_NUM_THREADS=2
cargo build --release --locked --quiet
FT=target/release/ft
ADAPTER=${1:-tests/fixtures/smollm2/peft-adapter}
DATA=datasets/support/test.jsonl
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Four distinct adapter objects (separate directories), as four fine-tunes would be.
for i in 0 1 2 3; do cp -r "$ADAPTER" "$WORK/a$i"; done
EXAMPLES=$(grep -c . "$DATA")
COMMON=(--data "$DATA" --metrics em,f1,rougeL,bleu --max-tokens 32 --batch-size 16)

now() { date +%s.%N; }
start=$(now)
"$FT" eval "${COMMON[@]}" --adapter a0="$WORK/a0" --adapter a1="$WORK/a1" \
  --adapter a2="$WORK/a2" --adapter a3="$WORK/a3" >/dev/null 2>&1
one_pass=$(python3 -c "print($(now) - $start)")
start=$(now)
for i in 0 1 2 3; do
  "$FT" eval "${COMMON[@]}" --adapter a$i="$WORK/a$i" >/dev/null 2>&1
done
separate=$(python3 -c "print($(now) - $start)")
python3 - "$EXAMPLES" "$one_pass" "$separate" <<'PY'
import sys
examples, one_pass, separate = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
rows = 4 * examples
print(f"4 adapters × {examples} examples = {rows} answers")
print(f"one pass (mixed-adapter batches): {one_pass:7.1f} s  {rows / one_pass:6.2f} examples/s")
print(f"4 separate runs:                  {separate:7.1f} s  {rows / separate:6.2f} examples/s")
print(f"ratio one pass / separate runs: {separate / one_pass:.2f}x")
PY
