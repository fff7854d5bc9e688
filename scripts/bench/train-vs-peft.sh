#!/usr/bin/env bash
# LoRA training tokens/s and peak RSS: `ft train` vs a PyTorch + PEFT loop, same data (80 chat
# examples of ~130-250 tokens: the support set's conversations merged three to a row), same
# hyperparameters (batch 4, r 8, alpha 16, all linear, dropout 0, lr 2e-4, clip 1.0), f32, CPU,
# 2 threads, same number of steps, in one invocation.
#   scripts/bench/train-vs-peft.sh [--steps 8]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/_venv.sh
scripts/fetch-model.sh >/dev/null
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
STEPS=8
if [ "${1:-}" = "--steps" ]; then STEPS=$2; fi

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

cargo build --release --locked --quiet
FT="${CARGO_TARGET_DIR:-target}/release/ft"
/usr/bin/time -f "%M" -o "$work/ft.rss" "$FT" train --data "$work/data.jsonl" --out "$work/run" \
  --max-steps "$STEPS" --batch-size 4 --grad-accum 1 --lr 2e-4 --warmup-steps 0 --lora-dropout 0 \
  --save-steps 0 --device cpu 2>/dev/null
ours=$(python3 - "$work/run/metrics.jsonl" "$work/ft.rss" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
steps = rows[1:]  # the first step includes one-off setup
tokens = sum(r["tokens_per_sec"] * (r["elapsed_s"] - p["elapsed_s"]) for p, r in zip(rows, steps))
seconds = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
rss = int(open(sys.argv[2]).read().split()[-1]) / 1024
print(f"ft: {len(rows)} steps, batch 4, {tokens / seconds:.1f} tokens/s, peak RSS {rss:.0f} MiB")
print(f"RESULT tokens_per_sec={tokens / seconds:.3f} peak_rss_mib={rss:.1f}")
PY
)
theirs=$("$PYTHON" scripts/bench/train_peft.py --data "$work/data.jsonl" --steps "$STEPS" 2>/dev/null)
printf '%s\n' "$ours" "$theirs" | grep -v '^RESULT'
value() { printf '%s\n' "$1" | sed -n "s/^RESULT.*$2=\([0-9.]*\).*/\1/p"; }
python3 - "$(value "$ours" tokens_per_sec)" "$(value "$theirs" tokens_per_sec)" "$(value "$ours" peak_rss_mib)" "$(value "$theirs" peak_rss_mib)" <<'PY'
import sys
ours, peft, ours_rss, peft_rss = map(float, sys.argv[1:])
print(f"ratio ft/PEFT tokens/s: {ours / peft:.2f}x   peak RSS ft/PEFT: {ours_rss / peft_rss:.2f}x")
PY
