#!/usr/bin/env bash
# A private, throwaway PostgreSQL cluster for the store conformance tests and the
# ingest benchmark.
#
#   eval "$(scripts/postgres.sh start)"   # installs postgresql if missing (Debian, as
#                                         # root or with sudo), starts a cluster on a
#                                         # free 127.0.0.1 port, prints
#                                         # export TELEHUB_TEST_POSTGRES_URL=postgres://…
#   scripts/postgres.sh stop              # stops it (by its postmaster PID)
#
# State lives in $TELEHUB_PG_DIR (default /tmp/telehub-postgres): data/, sock/, log,
# url. Starting again while it runs prints the same URL. Everything but the export line
# goes to stderr, so the output can be eval'ed.
set -euo pipefail

state=${TELEHUB_PG_DIR:-/tmp/telehub-postgres}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
  return 0
}

# initdb and the server refuse to run as root: run them as the `postgres` user then.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

postmaster_pid() {
  [ -f "$state/data/postmaster.pid" ] && head -n 1 "$state/data/postmaster.pid"
  return 0
}

is_running() {
  local pid
  pid=$(postmaster_pid)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

free_port() {
  local p
  for p in $(seq 55432 55532); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "postgres.sh: no free port in 55432-55532" >&2
  return 1
}

start() {
  if is_running && [ -f "$state/url" ]; then
    echo "postgres.sh: already running (pid $(postmaster_pid))" >&2
    echo "export TELEHUB_TEST_POSTGRES_URL=$(cat "$state/url")"
    return 0
  fi
  local bin
  bin=$(pg_bin)
  if [ -z "$bin" ]; then
    echo "postgres.sh: installing postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >&2
    $sudo apt-get install -y -q --no-install-recommends postgresql >&2
    bin=$(pg_bin)
    [ -n "$bin" ] || { echo "postgres.sh: initdb not found after installing postgresql" >&2; exit 1; }
  fi

  $sudo rm -rf "$state"
  $sudo mkdir -p "$state/data" "$state/sock"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$state"
  fi
  chmod 700 "$state/data"

  local port password url
  port=$(free_port)
  password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  as_owner "$bin/initdb" -D "$state/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$state/initdb.log" 2>&1 \
    || { cat "$state/initdb.log" >&2; exit 1; }
  as_owner "$bin/pg_ctl" -D "$state/data" -l "$state/log" -w -t 60 \
    -o "-p $port -k $state/sock -c listen_addresses=127.0.0.1 -c max_connections=200" start >&2 \
    || { cat "$state/log" >&2; exit 1; }
  as_owner "$bin/psql" -q -v ON_ERROR_STOP=1 -h "$state/sock" -p "$port" -U postgres -d postgres >&2 <<SQL
CREATE ROLE telehub LOGIN PASSWORD '$password';
CREATE DATABASE telehub OWNER telehub;
SQL
  url="postgres://telehub:$password@127.0.0.1:$port/telehub"
  echo "$url" | as_owner tee "$state/url" >/dev/null
  echo "postgres.sh: started $("$bin/postgres" --version) on 127.0.0.1:$port (pid $(postmaster_pid)), data in $state" >&2
  echo "export TELEHUB_TEST_POSTGRES_URL=$url"
}

stop() {
  if ! is_running; then
    echo "postgres.sh: not running" >&2
    return 0
  fi
  local pid bin
  pid=$(postmaster_pid)
  bin=$(pg_bin)
  if [ -n "$bin" ]; then
    as_owner "$bin/pg_ctl" -D "$state/data" -m fast -w -t 30 stop >&2 || kill -TERM "$pid"
  else
    kill -TERM "$pid"
  fi
  echo "postgres.sh: stopped (pid $pid)" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
