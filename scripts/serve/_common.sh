# Sourced (from the repository root) by the scripts that drive a live `ft serve`:
# scripts/openai-sdk-check.sh and scripts/bench/serve.sh.
#
# Defines:
#   OPENAI_PYTHON            python of the client venv (openai SDK, httpx), created on first use
#                            from scripts/serve/requirements.txt and rebuilt when that file changes
#   FT_BIN                   the ft binary: $FT_BIN, else target/release/ft (these scripts build
#                            nothing, so they never race a concurrent cargo build)
#   start_ft_serve LOG ARGS  starts `ft serve ARGS` on a free loopback port with its output in
#                            LOG, waits until /health answers; sets FT_SERVE_URL and FT_SERVE_PID
#   stop_ft_serve            stops it (SIGINT, the graceful path, then harder); idempotent, so it
#                            is safe in an EXIT trap

OPENAI_VENV="${FT_OPENAI_VENV:-$HOME/.cache/ft-openai-venv}"
_ft_requirements=scripts/serve/requirements.txt
# A copy of the requirements inside the venv records what it was built from: a changed pin
# rebuilds it instead of silently testing against an old SDK.
if [ ! -x "$OPENAI_VENV/bin/python" ] || ! cmp -s "$_ft_requirements" "$OPENAI_VENV/ft-requirements.txt"; then
  echo "creating the OpenAI client environment in $OPENAI_VENV ..." >&2
  rm -rf "$OPENAI_VENV"
  python3 -m venv "$OPENAI_VENV"
  "$OPENAI_VENV/bin/pip" install --quiet -r "$_ft_requirements" >&2
  cp "$_ft_requirements" "$OPENAI_VENV/ft-requirements.txt"
fi
OPENAI_PYTHON="$OPENAI_VENV/bin/python"

FT_BIN="${FT_BIN:-${CARGO_TARGET_DIR:-target}/release/ft}"
FT_SERVE_PID=""
FT_SERVE_URL=""

_ft_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_ft_serve() {
  local log=$1 port deadline
  shift
  if [ ! -x "$FT_BIN" ]; then
    echo "error: no ft binary at $FT_BIN (run \`cargo build --release\` or set FT_BIN)" >&2
    return 1
  fi
  port=$(_ft_free_port)
  "$FT_BIN" serve --host 127.0.0.1 --port "$port" "$@" >"$log" 2>&1 &
  FT_SERVE_PID=$!
  FT_SERVE_URL="http://127.0.0.1:$port"
  # Loading the model and the adapters takes a few seconds; /health is open without a key.
  deadline=$((SECONDS + ${FT_SERVE_START_TIMEOUT:-180}))
  until curl -sf -o /dev/null "$FT_SERVE_URL/health"; do
    if ! kill -0 "$FT_SERVE_PID" 2>/dev/null; then
      wait "$FT_SERVE_PID" 2>/dev/null || true
      FT_SERVE_PID=""
      echo "error: ft serve exited during startup; its log ($log):" >&2
      cat "$log" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: ft serve did not answer /health within ${FT_SERVE_START_TIMEOUT:-180} s; its log ($log):" >&2
      cat "$log" >&2
      stop_ft_serve
      return 1
    fi
    sleep 0.2
  done
}

stop_ft_serve() {
  [ -n "$FT_SERVE_PID" ] || return 0
  local pid=$FT_SERVE_PID i
  FT_SERVE_PID=""
  # SIGINT is what `ft serve` listens for (graceful shutdown); give it 10 s, then SIGKILL so a
  # hung shutdown cannot hang the calling script, and say so: that would be a bug worth seeing.
  kill -INT "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "warning: ft serve (pid $pid) ignored SIGINT for 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
