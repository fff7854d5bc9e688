#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests that need one.
#   scripts/postgres.sh start DIR   installs PostgreSQL if it is missing (Debian's package),
#                                   creates a cluster in DIR, starts it on a free loopback port
#                                   and prints `export FT_TEST_DATABASE_URL=postgres://…`
#   scripts/postgres.sh stop DIR    stops it (DIR can then be removed)
# The server trusts local connections and runs with fsync off: it holds test data only.
set -euo pipefail
action=${1:?start|stop}
dir=${2:?DIR}

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bin=$(find_bin)
if [ -z "$bin" ] && [ "$action" = start ]; then
  echo "installing PostgreSQL (apt-get install postgresql) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  bin=$(find_bin)
fi
[ -n "$bin" ] || { echo "PostgreSQL's programs are not under /usr/lib/postgresql" >&2; exit 1; }

# initdb and the server refuse to run as root: as root, run them as the package's user.
owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$action" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    owner "$bin/initdb" -D "$dir/data" -U ft --auth=trust >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
    owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
      start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "export FT_TEST_DATABASE_URL=postgres://ft@127.0.0.1:$port/postgres"
    ;;
  stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
      owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    ;;
  *)
    echo "usage: scripts/postgres.sh start|stop DIR" >&2
    exit 2
    ;;
esac
