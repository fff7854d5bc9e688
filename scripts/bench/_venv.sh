# Sourced by the benchmark scripts: the pinned Python reference environment (transformers,
# PEFT, torch CPU), created on first use from scripts/reference/requirements.txt.
VENV="${FT_REFERENCE_VENV:-$HOME/.cache/ft-reference-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, peft, gguf" 2>/dev/null; then
  echo "creating the reference environment in $VENV (torch, transformers, peft; several minutes) ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet -r scripts/reference/requirements.txt
fi
PYTHON="$VENV/bin/python"
