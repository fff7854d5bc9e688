#!/usr/bin/env bash
# The fine-tuning pipeline OpenAI documents, with the official OpenAI Python SDK (pinned in
# scripts/serve/requirements.txt) unchanged against a live `ft serve --state-dir`:
#   1. files.create -> fine_tuning.jobs.create -> poll -> chat with job.fine_tuned_model gives the
#      seed demo's sentence; events and checkpoints auto-page; a bad file fails with its code and
#      line; cancel mid-run; pause/resume; a retried create returns the same job; a wrong key is
#      401; models.delete.
#   2. kill -9 of the server while a job runs; a restarted server still has the file, the job and
#      its events, and finishes the job.
#   3. One PostgreSQL store (a throwaway server, scripts/postgres.sh) shared by `ft serve
#      --no-train` and `ft worker`: the worker runs the jobs and the server answers with their
#      models at once; a cancel sent to the server stops the worker's job; kill -9 of the
#      worker mid-job and a second worker takes the job over when the lease runs out.
#   4. The adapters of the paused-and-resumed job, of the killed-and-restarted one and of the
#      one taken over by another worker are the same bytes as the uninterrupted job's (same
#      data, seed and hyperparameters).
#   scripts/openai-finetune-check.sh
# Builds nothing: expects target/release/ft or $FT_BIN. Exits non-zero on any failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/serve/_common.sh
scripts/fetch-model.sh >/dev/null
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
BASE=$(basename "$MODEL" .gguf)
DATA=datasets/seed-demo.jsonl

tmp=$(mktemp -d)
worker_pid=""
stop_worker() {
  if [ -n "$worker_pid" ]; then
    kill -INT "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
    worker_pid=""
  fi
}
cleanup() {
  stop_ft_serve
  stop_worker
  scripts/postgres.sh stop "$tmp/postgres" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

max_upload=1048576
api_key="ft-check-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
# Line 2 has no assistant answer: the job must fail naming it.
{
  cat "$DATA"
  echo '{"messages": [{"role": "user", "content": "Hi"}]}'
} >"$tmp/bad.jsonl"

serve() { # STATE_DIR LOG
  start_ft_serve "$2" --model "$MODEL" --api-key "$api_key" --state-dir "$1" \
    --job-config datasets/seed-demo.toml --train-threads 2 --max-upload-bytes "$max_upload"
}
check() { # MODE IDS_FILE [FLAGS]
  "$OPENAI_PYTHON" scripts/serve/openai_finetune_check.py "$1" --base-url "$FT_SERVE_URL/v1" \
    --api-key "$api_key" --base-model "$BASE" --data "$DATA" --bad-data "$tmp/bad.jsonl" \
    --max-upload-bytes "$max_upload" --out "$tmp/$2.json" "${@:3}"
}
show_log() {
  echo "--- ft serve log ($1) ---" >&2
  cat "$1" >&2
}

echo "== the pipeline (state in $tmp/a)"
serve "$tmp/a" "$tmp/a.log"
check main main || { show_log "$tmp/a.log"; exit 1; }
stop_ft_serve

echo "== kill -9 while a job runs (state in $tmp/b)"
serve "$tmp/b" "$tmp/b1.log"
check start start || { show_log "$tmp/b1.log"; exit 1; }
kill -KILL "$FT_SERVE_PID"
wait "$FT_SERVE_PID" 2>/dev/null || true
FT_SERVE_PID=""
serve "$tmp/b" "$tmp/b2.log"
check finish start || { show_log "$tmp/b2.log"; exit 1; }
stop_ft_serve

echo "== one PostgreSQL store: ft serve --no-train and ft worker (state in $tmp/c)"
chmod 755 "$tmp" # the database server runs as the `postgres` user when we are root
postgres_env=$(scripts/postgres.sh start "$tmp/postgres")
eval "$postgres_env"
database_url=${FT_TEST_DATABASE_URL%/*}/ft_check
psql "$FT_TEST_DATABASE_URL" -qc "CREATE DATABASE ft_check"
worker() { # LOG
  RUST_LOG=${RUST_LOG:-info} "$FT_BIN" worker --model "$MODEL" --state-dir "$tmp/c" \
    --database-url "$database_url" --job-config datasets/seed-demo.toml --train-threads 2 \
    --lease-seconds 4 >"$1" 2>&1 &
  worker_pid=$!
}
start_ft_serve "$tmp/c-serve.log" --model "$MODEL" --api-key "$api_key" --state-dir "$tmp/c" \
  --database-url "$database_url" --no-train --max-upload-bytes "$max_upload"
worker "$tmp/c-worker1.log"
check shared shared || { show_log "$tmp/c-serve.log"; show_log "$tmp/c-worker1.log"; exit 1; }
check start taken_over || { show_log "$tmp/c-worker1.log"; exit 1; }
kill -KILL "$worker_pid"
wait "$worker_pid" 2>/dev/null || true
worker "$tmp/c-worker2.log"
check finish taken_over --worker-took-over || { show_log "$tmp/c-worker2.log"; exit 1; }
stop_worker
stop_ft_serve

echo "== interrupted jobs end with the uninterrupted job's bytes"
job() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }
digest() { sha256sum "$1/adapters/$2/adapter_model.safetensors" | cut -d' ' -f1; }
reference=$(digest "$tmp/a" "$(job "$tmp/main.json" uninterrupted)")
paused=$(digest "$tmp/a" "$(job "$tmp/main.json" paused)")
restarted=$(digest "$tmp/b" "$(job "$tmp/start.json" job)")
taken_over=$(digest "$tmp/c" "$(job "$tmp/taken_over.json" job)")
echo "uninterrupted $reference"
echo "paused        $paused"
echo "killed        $restarted"
echo "taken over    $taken_over"
if [ "$paused" != "$reference" ] || [ "$restarted" != "$reference" ] ||
  [ "$taken_over" != "$reference" ]; then
  echo "FAIL the adapters differ" >&2
  exit 1
fi
echo "ok   the paused, the killed and the taken-over jobs' adapters are the uninterrupted one's bytes"
