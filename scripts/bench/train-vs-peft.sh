#!/usr/bin/env bash
# LoRA training tokens/s and peak RSS: `ft train` vs a PyTorch + PEFT loop, same data (80 chat
# examples of ~130-250 tokens: the support set's conversations merged three to a row), same
# hyperparameters (batch 4, r 8, alpha 16, all linear, dropout 0, lr 2e-4, clip 1.0), f32, CPU,
# 2 threads, same number of steps, in one invocation.
#   scripts/bench/train-vs-peft.sh [--steps 8] [--data FILE --batch-size N] [--precision f32|bf16]
# --precision bf16 runs ft's frozen products in bf16 (AVX512_BF16), and PEFT both in f32 (the
# loop a user replaces) and under torch.autocast("cpu", bfloat16) (PyTorch's own bf16).
# With --data (e.g. datasets/seed-demo.jsonl --batch-size 1 --steps 30: the seed demo's loop)
# that file is used as it is instead of the merged support set.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/_venv.sh
scripts/fetch-model.sh >/dev/null
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
STEPS=8
DATA=""
BATCH=4
PRECISION=f32
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --batch-size) BATCH=$2; shift 2 ;;
    --precision) PRECISION=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/data.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open("datasets/support/train.jsonl")]
with open(sys.argv[1], "w") as out:
    for i in range(0, 240, 3):
        system = rows[i]["messages"][0]
        turns = [m for r in rows[i:i + 3] for m in r["messages"][1:]]
        out.write(json.dumps({"messages": [system] + turns}) + "\n")
PY
if [ -n "$DATA" ]; then cp "$DATA" "$work/data.jsonl"; fi

cargo build --release --locked --quiet
FT="${CARGO_TARGET_DIR:-target}/release/ft"
/usr/bin/time -f "%M" -o "$work/ft.rss" "$FT" train --data "$work/data.jsonl" --out "$work/run" \
  --max-steps "$STEPS" --batch-size "$BATCH" --grad-accum 1 --lr 2e-4 --warmup-steps 0 --lora-dropout 0 \
  --save-steps 0 --device cpu --precision "$PRECISION" 2>/dev/null
ours=$(python3 - "$work/run/metrics.jsonl" "$work/ft.rss" "$PRECISION" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
steps = rows[1:]  # the first step includes one-off setup
tokens = sum(r["tokens_per_sec"] * (r["elapsed_s"] - p["elapsed_s"]) for p, r in zip(rows, steps))
seconds = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
rss = int(open(sys.argv[2]).read().split()[-1]) / 1024
print(f"ft ({sys.argv[3]}): {len(rows)} steps, {tokens / seconds:.1f} tokens/s, steps 2.. in {seconds:.2f} s, peak RSS {rss:.0f} MiB")
print(f"RESULT tokens_per_sec={tokens / seconds:.3f} peak_rss_mib={rss:.1f}")
PY
)
# compare LABEL PEFT_OUTPUT: prints PEFT's line and the ratios of ft against it.
value() { printf '%s\n' "$1" | sed -n "s/^RESULT.*$2=\([0-9.]*\).*/\1/p"; }
compare() {
  printf '%s\n' "$2" | grep -v '^RESULT'
  python3 - "$1" "$(value "$ours" tokens_per_sec)" "$(value "$2" tokens_per_sec)" "$(value "$ours" peak_rss_mib)" "$(value "$2" peak_rss_mib)" <<'PY'
import sys
label = sys.argv[1]
ours, peft, ours_rss, peft_rss = map(float, sys.argv[2:])
print(f"ratio ft/{label} tokens/s: {ours / peft:.2f}x (wall time of the steps {peft / ours:.2f}x)   peak RSS ft/{label}: {ours_rss / peft_rss:.2f}x")
PY
}
printf '%s\n' "$ours" | grep -v '^RESULT'
peft_args=(--data "$work/data.jsonl" --steps "$STEPS" --batch-size "$BATCH")
compare PEFT "$("$PYTHON" scripts/bench/train_peft.py "${peft_args[@]}" 2>/dev/null)"
if [ "$PRECISION" = bf16 ]; then
  compare "PEFT-autocast-bf16" "$("$PYTHON" scripts/bench/train_peft.py "${peft_args[@]}" --autocast-bf16 2>/dev/null)"
fi
