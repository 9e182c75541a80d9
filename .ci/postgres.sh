#!/usr/bin/env bash
# A throw-away PostgreSQL server on 127.0.0.1 for the store tests (services/tests/store.rs).
#
#   bash .ci/postgres.sh [start]   # start it (or reuse the one already running)
#   bash .ci/postgres.sh stop      # stop it (the data directory is kept for the next start)
#   bash .ci/postgres.sh status
#
# `start` prints, as its last line on stdout,
#   export CYPHONIC_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:55432/postgres
# so a CI script can do: eval "$(bash .ci/postgres.sh start | tail -n 1)"
# Everything else goes to stderr.
#
# Works on a fresh Debian 12 machine with only the Rust toolchain (installs the `postgresql`
# package when no server binary exists; needs root for that) and on a machine that already
# has one. The server runs as the `postgres` user (as the current user when not root) with
# its data directory under /tmp/cyphonic-pg, listens only on 127.0.0.1 (port
# $CYPHONIC_PG_PORT, default 55432) and trusts local connections: it is for tests only
# (fsync is off; nothing in it is meant to survive).
set -euo pipefail
# The server's owner may not be able to read the caller's directory.
cd /

cmd=${1:-start}
port=${CYPHONIC_PG_PORT:-55432}
base=${CYPHONIC_PG_DIR:-/tmp/cyphonic-pg}
data=$base/data
log=$base/server.log
url="postgres://postgres@127.0.0.1:${port}/postgres"

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# The newest installed server's bin directory (Debian keeps them in /usr/lib/postgresql/N/bin;
# sort -V so that 15 beats 9).
find_bindir() {
  local d
  {
    for d in /usr/lib/postgresql/*/bin; do echo "$d"; done
    if command -v pg_config >/dev/null 2>&1; then pg_config --bindir 2>/dev/null || true; fi
  } | while read -r d; do
    if [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; fi
  done | sort -V | tail -n 1
}

install_server() {
  [ "$(id -u)" -eq 0 ] || die "no PostgreSQL server found and not root: install the Debian package 'postgresql'"
  command -v apt-get >/dev/null 2>&1 || die "no PostgreSQL server found and no apt-get: install PostgreSQL (>= 13) yourself"
  say "installing the Debian package postgresql"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends postgresql >&2; then
    # A fresh machine has no package lists yet.
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
  fi
  # The package starts its own cluster on 5432; ours is separate, so that one may stay.
}

# Run a command as the server's owner.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    if command -v runuser >/dev/null 2>&1; then
      runuser -u postgres -- "$@"
    else
      su -s /bin/sh postgres -c "$(printf '%q ' "$@")"
    fi
  else
    "$@"
  fi
}

bindir=$(find_bindir)
if [ -z "$bindir" ]; then
  [ "$cmd" = stop ] && { say "no PostgreSQL server installed: nothing to stop"; exit 0; }
  install_server
  bindir=$(find_bindir)
  [ -n "$bindir" ] || die "the postgresql package installed no server binary under /usr/lib/postgresql"
fi

if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  say "creating the system user postgres"
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

is_running() { [ -f "$data/PG_VERSION" ] && as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; }

case "$cmd" in
  stop)
    if is_running; then
      as_owner "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >&2
      say "stopped"
    else
      say "not running"
    fi
    exit 0
    ;;
  status)
    if is_running; then say "running on 127.0.0.1:$port ($data)"; echo "export CYPHONIC_TEST_POSTGRES_URL=$url"; exit 0; fi
    say "not running"
    exit 3
    ;;
  start) ;;
  *) die "unknown command '$cmd': use start, stop or status" ;;
esac

mkdir -p "$base"
[ "$(id -u)" -eq 0 ] && chown postgres: "$base"
chmod 700 "$base"

# One start at a time (two test scripts starting together).
exec 9>"$base.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

version=$("$bindir/postgres" --version | awk '{print $NF}' | cut -d. -f1)
if [ -f "$data/PG_VERSION" ] && [ "$(cat "$data/PG_VERSION")" != "$version" ]; then
  say "data directory is from PostgreSQL $(cat "$data/PG_VERSION"), server is $version: recreating it"
  as_owner "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$data"
fi

if [ ! -f "$data/PG_VERSION" ]; then
  rm -rf "$data"
  say "initialising $data (PostgreSQL $version)"
  as_owner "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C >"$base/initdb.log" 2>&1 \
    || { cat "$base/initdb.log" >&2; die "initdb failed"; }
fi

if is_running; then
  say "already running ($data), reusing it"
else
  say "starting on 127.0.0.1:$port (log: $log)"
  opts="-c listen_addresses=127.0.0.1 -p $port -k $base -c fsync=off -c synchronous_commit=off"
  opts="$opts -c full_page_writes=off -c max_connections=300"
  # 9>&-: the server must not inherit the lock; </dev/null: nor a caller's pipe.
  if ! as_owner "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 60 -o "$opts" start </dev/null >&2 9>&-; then
    tail -n 20 "$log" >&2 || true
    die "the server did not start (is port $port taken? set CYPHONIC_PG_PORT)"
  fi
fi

for _ in $(seq 1 60); do
  if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then
    echo "export CYPHONIC_TEST_POSTGRES_URL=$url"
    exit 0
  fi
  sleep 0.5
done
tail -n 20 "$log" >&2 || true
die "the server runs but does not answer on 127.0.0.1:$port"
