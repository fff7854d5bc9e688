#!/usr/bin/env bash
# Compatibility check with the official OpenAI Python SDK (pinned in scripts/serve/requirements.txt)
# against a live `ft serve`: models, chat (plain and streamed with usage), an adapter by name,
# completions, and the SDK's typed errors for an unknown model and a wrong key.
#   scripts/openai-sdk-check.sh [ADAPTER_DIR]
# ADAPTER_DIR is served as model "demo"; without it, a copy of the PEFT fixture adapter
# (tests/fixtures/smollm2/peft-adapter, made for this base) is used. Builds nothing: expects
# target/release/ft or $FT_BIN. Exits non-zero on any failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/serve/_common.sh
scripts/fetch-model.sh >/dev/null
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf

tmp=$(mktemp -d)
cleanup() {
  stop_ft_serve
  rm -rf "$tmp"
}
trap cleanup EXIT

if [ $# -ge 1 ]; then
  adapter=$1
else
  # A copy, so the run never touches the checked-in fixture.
  adapter="$tmp/demo-adapter"
  cp -r tests/fixtures/smollm2/peft-adapter "$adapter"
fi

# A fresh random key per run: the check must see the server enforce it.
api_key="ft-check-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
echo "starting $FT_BIN serve (adapter demo=$adapter) ..."
start_ft_serve "$tmp/serve.log" --model "$MODEL" --adapter "demo=$adapter" --api-key "$api_key"
echo "ft serve is up at $FT_SERVE_URL"

status=0
"$OPENAI_PYTHON" scripts/serve/openai_sdk_check.py --base-url "$FT_SERVE_URL/v1" --api-key "$api_key" \
  --base-model "$(basename "$MODEL" .gguf)" --adapter demo || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- ft serve log ($tmp/serve.log) ---" >&2
  cat "$tmp/serve.log" >&2
fi
exit "$status"
