#!/usr/bin/env bash
# Greedy decode tokens/s, batch 1: ft (quantized path, the goal's, and the exact f32 path) vs
# transformers `generate` (f32 weights dequantized from the same GGUF), same chat prompt, same
# number of new tokens, CPU, 2 threads, one invocation. Prints each figure and the ratios.
#   scripts/bench/decode-vs-transformers.sh [--new-tokens 128] [--threads 2]
# Both sides time generate() from the prompt to the last token (prompt pass included), after a
# short warm-up. The transformers environment is created on first use (scripts/bench/_venv.sh).
# Takes about a minute once the bench binary and the environment exist.
set -euo pipefail
cd "$(dirname "$0")/../.."
new_tokens=128
threads=2
while [ $# -gt 0 ]; do
  case $1 in
    --new-tokens) new_tokens=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "usage: $0 [--new-tokens N] [--threads T]" >&2; exit 2 ;;
  esac
done
source scripts/bench/_report.sh
source scripts/bench/_venv.sh
scripts/fetch-model.sh >/dev/null
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
load_note "before the run"

cargo bench --quiet --bench decode --no-run >/dev/null 2>&1 || cargo bench --bench decode --no-run
declare -A ours
for precision in quantized f32; do
  out=$(cargo bench --quiet --bench decode -- --new-tokens "$new_tokens" --threads "$threads" --precision "$precision")
  printf '%s\n' "$out" | grep -v '^RESULT' | sed "s/^ft /ft ($precision) /"
  ours[$precision]=$(result_value "$out" tokens_per_sec)
done
theirs=$("$PYTHON" scripts/bench/decode_transformers.py --new-tokens "$new_tokens" --threads "$threads" 2>/dev/null)
printf '%s\n' "$theirs" | grep -v '^RESULT'
tf=$(result_value "$theirs" tokens_per_sec)
rq=$(ratio "${ours[quantized]}" "$tf")
rf=$(ratio "${ours[f32]}" "$tf")
echo "ratio ft/transformers decode tokens/s: quantized ${ours[quantized]} / $tf = $rq (goal >= 5x), f32 ${ours[f32]} / $tf = $rf"
load_note "at the end"
echo "RESULT ft_quantized_tokens_per_sec=${ours[quantized]} ft_f32_tokens_per_sec=${ours[f32]} transformers_tokens_per_sec=$tf ratio_quantized=${rq%x} ratio_f32=${rf%x}"
