#!/usr/bin/env bash
# Time of `ft data validate` on one chat line of 500, 2,000, 10,000 and 50,000 user/assistant
# turns (the assistant masks are computed for every turn: --max-seq-len is set high so no line
# is refused for its length). The goal is linear cost: 50,000 turns under 2 s. The startup of
# `ft` (loading the tokenizer) is measured on a 1-turn line and shown apart.
#   scripts/bench/validate-scaling.sh [TURNS...]
# FT_BIN picks the binary (default: a release build, made if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/fetch-model.sh >/dev/null
if [ -z "${FT_BIN:-}" ]; then
  cargo build --release --quiet --bin ft
  FT_BIN=target/release/ft
fi
turns=("$@")
[ ${#turns[@]} -gt 0 ] || turns=(500 2000 10000 50000)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

line() {
  awk -v n="$1" 'BEGIN {
    printf "{\"messages\": [";
    for (i = 0; i < n; i++) {
      if (i) printf ",";
      printf "{\"role\": \"user\", \"content\": \"Question %d: what is %d plus %d?\"},", i, i, i;
      printf "{\"role\": \"assistant\", \"content\": \"The answer is %d.\"}", 2 * i;
    }
    print "]}";
  }'
}

seconds() {
  local file=$1 start end
  start=$(date +%s.%N)
  "$FT_BIN" data validate "$file" --max-seq-len 100000000 >/dev/null
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

line 1 >"$dir/1.jsonl"
base=$(seconds "$dir/1.jsonl")
echo "startup (1-turn line): ${base} s"
for n in "${turns[@]}"; do
  line "$n" >"$dir/$n.jsonl"
  total=$(seconds "$dir/$n.jsonl")
  size=$(wc -c <"$dir/$n.jsonl")
  awk -v n="$n" -v t="$total" -v b="$base" -v s="$size" \
    'BEGIN { printf "%6d turns (%8d bytes): %.3f s total, %.3f s for the line\n", n, s, t, t - b }'
done
