#!/usr/bin/env bash
# The one test command (README and .ci/run call it): fetches the model if missing, checks
# formatting and lints, builds everything (examples included) and runs the whole suite, with a
# throwaway PostgreSQL server for the store's PostgreSQL cases.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-model.sh
scripts/fetch-model.sh gemma3

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every target compiles (benches and examples included); benches are run by scripts/bench/,
# never as tests.
cargo build --workspace --all-targets --locked
# The store's PostgreSQL cases run against a real server, started here and stopped on exit.
pg_dir=$(mktemp -d)
chmod 755 "$pg_dir" # the server runs as the `postgres` user when we are root
stop_postgres() {
  scripts/postgres.sh stop "$pg_dir/server" || true
  rm -rf "$pg_dir"
}
trap stop_postgres EXIT
postgres_env=$(scripts/postgres.sh start "$pg_dir/server")
eval "$postgres_env"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --doc --locked
