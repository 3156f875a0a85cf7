#!/usr/bin/env bash
# Benchmarks telehub's telemetry pipeline with telehub-loadgen, on SQLite and on
# PostgreSQL, and prints a markdown table of medians (docs/perf.md, "Ingest and query",
# explains the numbers).
#
# Scenarios (each run starts telehub fresh: SQLite in a new temp dir, PostgreSQL in a new
# schema of the database at POSTGRES_URL, dropped afterwards):
#   mqtt        PUBLISHERS devices publish JSON telemetry (FIELDS numbers, ts, msg_id)
#               at QoS 1 with WINDOW unacknowledged each, for DURATION; then the stored
#               points are counted through the API: lost = acked × FIELDS − stored
#   http-data   CONNECTIONS keep-alive clients POST /data (the tutorial's body), DURATION
#   http-batch  CONNECTIONS clients POST BATCH documents of FIELDS numbers per request to
#               /api/v1/devices/{id}/telemetry (a JSON array), DURATION
#   series      loads DAYS × 86 400 points of one metric at 1 Hz through batched POSTs,
#               then times the DAYS-long step=1h&agg=mean,min,max query (QUERIES times,
#               median; and again with curl as a cross-check)
# Runs alternate the backends (sqlite, postgres, sqlite, ...) so that other load on the
# machine hits both alike; telehub is stopped by its PID after each run.
#
# The tutorial baseline (not telehub; add the scenarios to SCENARIOS, each runs RUNS
# times; a venv with paho-mqtt, flask and gunicorn is made in TUTORIAL_VENV,
# /tmp/telehub-tutorial-venv, if missing):
#   tutorial-mqtt  Mosquitto (stock settings) + bench/tutorial/subscriber.py (paho-mqtt,
#                  one INSERT and commit per message into SQLite), the same generator
#                  as mqtt; stored = rows in its table once they stop growing
#   tutorial-http  bench/tutorial/app.py (Flask, one INSERT and commit per request)
#                  under gunicorn -w 2, the same generator as http-data
#
#   bash bench/ingest.sh                          # everything, 3 runs: ~12 min plus the build
#   SCENARIOS="mqtt series" RUNS=1 BACKENDS=sqlite bash bench/ingest.sh
#   bash bench/ingest.sh --table results.txt      # the table again from a kept run
#
# Environment: RUNS (3), DURATION (10s), BACKENDS (sqlite postgres), SCENARIOS (mqtt
# http-data http-batch series), PUBLISHERS (8), WINDOW (100), FIELDS (5), CONNECTIONS
# (64), BATCH (500), DAYS (30), QUERIES (20), PORT (28840; HTTP on PORT+1), KEEP (set to
# keep the work directory), POSTGRES_URL and DB_PID (a database to use and its
# postmaster's PID; by default scripts/postgres.sh starts a cluster of our own in PG_DIR,
# /tmp/telehub-ingest-postgres, and stops it at the end), TELEHUB_ADMIN_TOKEN (telehub's
# admin token, sent on every /api/v1 call; a random one by default). telehub runs with
# --allow-anonymous and without the per-IP connection and HTTP request rate limits.
set -euo pipefail
table_file=""
if [ "${1:-}" = --table ]; then table_file=$(realpath "$2"); fi
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
BACKENDS=${BACKENDS:-sqlite postgres}
SCENARIOS=${SCENARIOS:-mqtt http-data http-batch series}
PUBLISHERS=${PUBLISHERS:-8}
WINDOW=${WINDOW:-100}
FIELDS=${FIELDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
BATCH=${BATCH:-500}
DAYS=${DAYS:-30}
QUERIES=${QUERIES:-20}
PORT=${PORT:-28840}
HTTP_PORT=$((PORT + 1))

# median FILE SCENARIO BACKEND KEY: the median of KEY over the runs (or "-")
median() {
  { grep "^$2 backend=$3 " "$1" || true; } | tr ' ' '\n' | sed -n "s/^$4=//p" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else { m = (v[NR / 2] + v[NR / 2 + 1]) / 2; if (m == int(m)) print m; else if (m >= 100) printf "%.0f\n", m; else printf "%.2f\n", m } }'
}

# range FILE SCENARIO BACKEND KEY: "min–max" of KEY over the runs
range() {
  { grep "^$2 backend=$3 " "$1" || true; } | tr ' ' '\n' | sed -n "s/^$4=//p" | sort -g |
    awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR == 0) print "-"; else if (lo == hi) print lo; else print lo "–" hi }'
}

# sum FILE SCENARIO BACKEND KEY: the sum of KEY over the runs (lost points: every run counts)
sum() {
  { grep "^$2 backend=$3 " "$1" || true; } | tr ' ' '\n' | sed -n "s/^$4=//p" |
    awk '{ s += $1 } END { if (NR == 0) print "-"; else print s }'
}

# met CONDITION: "yes" or "**no**" (awk expression; "-" when a value is missing)
met() {
  case $1 in *-*) echo "-"; return ;; esac
  awk "BEGIN { print (($1) ? \"yes\" : \"**no**\") }" 2>/dev/null || echo "-"
}

# row FILE SCENARIO LABEL METRIC KEY TARGET CONDITION-ON-x: one table row, SQLite and
# PostgreSQL side by side; CONDITION uses x for the median (e.g. "x >= 100000")
row() {
  local f=$1 scenario=$2 label=$3 metric=$4 key=$5 target=$6 cond=$7 s p
  s=$(median "$f" "$scenario" sqlite "$key") p=$(median "$f" "$scenario" postgres "$key")
  local verdict=""
  if [ -n "$cond" ]; then verdict="$(met "${cond//x/$s}") / $(met "${cond//x/$p}")"; fi
  echo "| $label | $metric | $s ($(range "$f" "$scenario" sqlite "$key")) | $p ($(range "$f" "$scenario" postgres "$key")) | $target | $verdict |" |
    sed 's/|  |/| |/g'
}

# cpu_rows FILE SCENARIO WHAT: telehub's, PostgreSQL's and other processes' CPU, and WHAT
# per CPU-second of telehub (+ PostgreSQL)
cpu_rows() {
  local f=$1 scenario=$2 what=$3
  row "$f" "$scenario" "" "$what per telehub CPU-second" points_per_broker_cpu_s "" ""
  row "$f" "$scenario" "" "$what per CPU-second of telehub + PostgreSQL" points_per_stack_cpu_s "" ""
  row "$f" "$scenario" "" "CPU, % of one core: telehub" broker_cpu_pct "" ""
  row "$f" "$scenario" "" "CPU: PostgreSQL server" db_cpu_pct "" ""
  row "$f" "$scenario" "" "CPU: generator" gen_cpu_pct "" ""
  row "$f" "$scenario" "" "CPU: other processes" others_cpu_pct "" ""
  row "$f" "$scenario" "" "I/O stall (PSI some), % of the time" io_stall_pct "" ""
  row "$f" "$scenario" "" "disk before the run: µs per 4 KiB write + fsync" fsync_probe_us "" ""
}

# table FILE: the markdown table of medians, then every run
table() {
  local f=$1 scenario kv
  # the parameters of the run, for the labels (KEY=number only)
  for kv in $(sed -n 's/^#params //p' "$f"); do
    [[ $kv =~ ^(PUBLISHERS|WINDOW|FIELDS|CONNECTIONS|BATCH|DAYS|QUERIES)=[0-9]+$ ]] && declare -g "$kv"
  done
  echo
  sed -n 's/^# //p' "$f"
  echo
  if grep -v '^#' "$f" | grep -qv '^tutorial-'; then
    echo "| scenario | metric | SQLite: median (range) | PostgreSQL: median (range) | target | met (SQLite / PostgreSQL) |"
    echo "| --- | --- | ---: | ---: | --- | --- |"
  fi
  for scenario in $(grep -v '^#' "$f" | cut -d' ' -f1 | awk '!seen[$0]++'); do
    case $scenario in
      mqtt)
        row "$f" mqtt "MQTT QoS 1 telemetry, $PUBLISHERS devices, window $WINDOW, $FIELDS fields" "points/s committed (acked × fields)" points_rate "≥ 100 000" "x >= 100000"
        row "$f" mqtt "" "messages/s acknowledged" rate "" ""
        echo "| | lost points (acked × fields − stored), all runs | $(sum "$f" mqtt sqlite lost) | $(sum "$f" mqtt postgres lost) | 0 | $(met "$(sum "$f" mqtt sqlite lost) == 0") / $(met "$(sum "$f" mqtt postgres lost) == 0") |"
        cpu_rows "$f" mqtt points
        ;;
      http-data)
        row "$f" http-data "HTTP POST /data, $CONNECTIONS connections, 1 document (2 fields)" "requests/s (2xx)" rate "≥ 20 000" "x >= 20000"
        row "$f" http-data "" "latency p50 ms" p50_ms "" ""
        echo "| | 429s / lost points, all runs | $(sum "$f" http-data sqlite refused_429) / $(sum "$f" http-data sqlite lost) | $(sum "$f" http-data postgres refused_429) / $(sum "$f" http-data postgres lost) | 0 lost | $(met "$(sum "$f" http-data sqlite lost) == 0") / $(met "$(sum "$f" http-data postgres lost) == 0") |"
        row "$f" http-data "" "requests per telehub CPU-second" req_per_broker_cpu_s "" ""
        cpu_rows "$f" http-data points
        ;;
      http-batch)
        row "$f" http-batch "HTTP batched POST …/telemetry, $CONNECTIONS connections × $BATCH documents × $FIELDS fields" "points/s (2xx)" points_rate "≥ 300 000" "x >= 300000"
        row "$f" http-batch "" "requests/s" rate "" ""
        echo "| | 429s / lost points, all runs | $(sum "$f" http-batch sqlite refused_429) / $(sum "$f" http-batch sqlite lost) | $(sum "$f" http-batch postgres refused_429) / $(sum "$f" http-batch postgres lost) | 0 lost | $(met "$(sum "$f" http-batch sqlite lost) == 0") / $(met "$(sum "$f" http-batch postgres lost) == 0") |"
        cpu_rows "$f" http-batch points
        ;;
      series)
        row "$f" series "$DAYS-day aggregate, 1 series at 1 Hz ($((DAYS * 86400)) points)" "step=1h&agg=mean,min,max: median of $QUERIES, ms (loadgen)" p50_ms "< 50 ms" "x < 50"
        row "$f" series "" "the same with curl (time_total), median of $QUERIES, ms" curl_p50_ms "< 50 ms" "x < 50"
        row "$f" series "" "first query after loading, ms" first_ms "" ""
        row "$f" series "" "same range, step=61m (1-minute rollup), ms" minute_p50_ms "" ""
        row "$f" series "" "same range, step=3601s (raw points), ms" raw_p50_ms "" ""
        row "$f" series "" "loading: points/s (batched POSTs of 5000)" load_points_rate "" ""
        row "$f" series "" "points stored (of $((DAYS * 86400)))" stored_points "" ""
        row "$f" series "" "loading: CPU, % of one core: telehub" broker_cpu_pct "" ""
        row "$f" series "" "loading: CPU: PostgreSQL server" db_cpu_pct "" ""
        row "$f" series "" "loading: CPU: other processes" others_cpu_pct "" ""
        row "$f" series "" "loading: I/O stall (PSI some), % of the time" io_stall_pct "" ""
        ;;
    esac
  done
  if grep -q '^tutorial-' "$f"; then
    echo
    echo "The tutorial stack (not telehub), same generator and parameters:"
    echo
    echo "| scenario | metric | tutorial stack: median (range) | runs |"
    echo "| --- | --- | ---: | ---: |"
    tut() { echo "| $1 | $2 | $(median "$f" "$3" tutorial "$4") ($(range "$f" "$3" tutorial "$4")) | $(grep -c "^$3 " "$f") |" | sed 's/|  |/| |/g'; }
    if grep -q '^tutorial-mqtt ' "$f"; then
      tut "Mosquitto 2.0 (stock) + paho subscriber, INSERT + commit per message, $PUBLISHERS publishers, window $WINDOW" "messages/s acknowledged by Mosquitto" tutorial-mqtt rate
      tut "" "rows/s stored (first to last row)" tutorial-mqtt rows_rate
      tut "" "points/s stored (rows × $FIELDS)" tutorial-mqtt stored_points_rate
      tut "" "messages acknowledged" tutorial-mqtt acked
      tut "" "rows stored" tutorial-mqtt stored_rows
      tut "" "acknowledged but never stored" tutorial-mqtt lost_msgs
    fi
    if grep -q '^tutorial-http ' "$f"; then
      tut "Flask + gunicorn -w 2, INSERT + commit per request, $CONNECTIONS connections" "POST /data requests/s (2xx)" tutorial-http rate
      tut "" "failed requests (non-2xx)" tutorial-http failed
      tut "" "2xx without a stored row" tutorial-http lost
      tut "" "CPU: gunicorn (master + workers), % of one core" tutorial-http db_cpu_pct
    fi
  fi
  echo
  echo "Every run (medians above are over these):"
  echo
  echo '```'
  grep -v '^#' "$f"
  echo '```'
}

if [ -n "$table_file" ]; then
  table "$table_file"
  exit 0
fi

# PostgreSQL: our own cluster (nobody else's tests load it or restart it mid-run), so
# that its CPU, reported by the generator (--db-pid), is ours alone
pg_started="" DB_PID=${DB_PID:-}
if [[ " $BACKENDS " == *" postgres "* ]] && [ -z "${POSTGRES_URL:-}" ] &&
  [ -n "$(tr ' ' '\n' <<<"$SCENARIOS" | grep -v '^tutorial-' | grep .)" ]; then
  export TELEHUB_PG_DIR=${PG_DIR:-/tmp/telehub-ingest-postgres}
  pid_file=$TELEHUB_PG_DIR/data/postmaster.pid
  if ! { [ -f "$pid_file" ] && kill -0 "$(head -n 1 "$pid_file")" 2>/dev/null; }; then pg_started=1; fi
  eval "$(bash scripts/postgres.sh start)"
  POSTGRES_URL=$TELEHUB_TEST_POSTGRES_URL
  DB_PID=$(head -n 1 "$pid_file")
fi
command -v curl >/dev/null || { echo "ingest.sh: curl not found" >&2; exit 2; }

echo "ingest.sh: building release binaries" >&2
cargo build --release --locked -p telehub -p telehub-loadgen >&2

work=$(mktemp -d /tmp/telehub-ingest.XXXXXX)
mkdir -p "$work/bin"
# our own copies: other builds may replace target/release/* while we measure
cp target/release/telehub target/release/telehub-loadgen "$work/bin/"
results="$work/results.txt"
commit=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain --untracked-files=no | wc -l)
echo "# commit $commit$([ "$dirty" -gt 0 ] && echo " (+ $dirty uncommitted files)"), $(date -u +%Y-%m-%dT%H:%MZ)," \
  "$(nproc) × $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $RUNS runs, DURATION=$DURATION," \
  "PostgreSQL $(psql -V 2>/dev/null | awk '{print $3}')" >"$results"
echo "#params PUBLISHERS=$PUBLISHERS WINDOW=$WINDOW FIELDS=$FIELDS CONNECTIONS=$CONNECTIONS BATCH=$BATCH DAYS=$DAYS QUERIES=$QUERIES" >>"$results"

# telehub: anonymous devices (--allow-anonymous); no per-IP connection rate and no HTTP
# request rate: every benchmark client comes from 127.0.0.1, and the API calls all use
# one token
printf '%s\n' "[auth.rate]" "connections_per_ip = 0" "http_requests = 0" >"$work/telehub.toml"

# telehub's admin API (/api/v1) needs a token: ours, set before it starts; the generator
# reads it from the environment as well, curl gets it in a header
TELEHUB_ADMIN_TOKEN=${TELEHUB_ADMIN_TOKEN:-bench-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')}
export TELEHUB_ADMIN_TOKEN

hub_pid="" schema=""
pg_admin() { psql "$POSTGRES_URL" -q -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning; $1" >/dev/null; }
stop_hub() {
  if [ -n "$hub_pid" ]; then
    kill "$hub_pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$hub_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$hub_pid" 2>/dev/null || true
    wait "$hub_pid" 2>/dev/null || true
    hub_pid=""
  fi
  if [ -n "$schema" ]; then
    pg_admin "DROP SCHEMA $schema CASCADE" || echo "ingest.sh: could not drop schema $schema" >&2
    schema=""
  fi
}
cleanup() {
  stop_hub
  stop_tutorial
  if [ -n "$pg_started" ]; then bash scripts/postgres.sh stop || true; fi
  if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "ingest.sh: kept $work" >&2; fi
}
trap cleanup EXIT

# start_hub BACKEND: a fresh telehub (new data dir; PostgreSQL: a new schema); sets hub_pid
start_hub() {
  local backend=$1 db=()
  rm -rf "$work/data"
  if [ "$backend" = postgres ]; then
    schema="bench_$$_$((++schemas))"
    pg_admin "CREATE SCHEMA $schema"
    local sep='?'
    [[ $POSTGRES_URL == *\?* ]] && sep='&'
    db=(--database-url "${POSTGRES_URL}${sep}options=-csearch_path%3D${schema}")
  fi
  "$work/bin/telehub" serve --config "$work/telehub.toml" --data-dir "$work/data" --allow-anonymous "${db[@]}" \
    --mqtt-listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$HTTP_PORT" >>"$work/telehub.log" 2>&1 &
  hub_pid=$!
  for _ in $(seq 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/readyz" 2>/dev/null; then
      return 0
    fi
    kill -0 "$hub_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "ingest.sh: telehub ($backend) did not start; see $work/telehub.log" >&2
  exit 1
}
schemas=0

args_of() {
  case $1 in
    mqtt) echo "telemetry --publishers $PUBLISHERS --window $WINDOW --fields $FIELDS --duration $DURATION" ;;
    http-data) echo "http --endpoint data --connections $CONNECTIONS --duration $DURATION" ;;
    http-batch) echo "http --endpoint batch --connections $CONNECTIONS --batch $BATCH --fields $FIELDS --duration $DURATION" ;;
    series) echo "series --days $DAYS --queries $QUERIES" ;;
  esac
}

# curl_median LINE: the series query timed with curl, median time_total in ms
curl_median() {
  local line=$1 device end from url
  device=$(sed -n 's/.* device=\([^ ]*\).*/\1/p' <<<"$line")
  end=$(sed -n 's/.* end_ms=\([0-9]*\).*/\1/p' <<<"$line")
  from=$((end - DAYS * 86400000))
  url="http://127.0.0.1:$HTTP_PORT/api/v1/devices/$device/telemetry?metric=x&from=$from&to=$end&step=1h&agg=mean,min,max"
  local auth=(-H "Authorization: Bearer $TELEHUB_ADMIN_TOKEN")
  curl -fsS "${auth[@]}" -o /dev/null "$url" # warm-up, like the generator's
  for _ in $(seq "$QUERIES"); do
    curl -fsS "${auth[@]}" -o /dev/null -w '%{time_total}\n' "$url"
  done | sort -g | awk '{ v[NR] = $1 * 1000 } END { if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

TUTORIAL_VENV=${TUTORIAL_VENV:-/tmp/telehub-tutorial-venv}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
tutorial_pids=()

setup_tutorial() {
  if [ ! -x "$TUTORIAL_VENV/bin/gunicorn" ] || [ ! -x "$TUTORIAL_VENV/bin/python" ]; then
    echo "ingest.sh: making $TUTORIAL_VENV (paho-mqtt, flask, gunicorn)" >&2
    python3 -m venv "$TUTORIAL_VENV"
    "$TUTORIAL_VENV/bin/pip" install -q paho-mqtt flask gunicorn >&2
  fi
  command -v "$MOSQUITTO" >/dev/null || { echo "ingest.sh: $MOSQUITTO not found (apt-get install mosquitto)" >&2; exit 2; }
  {
    echo "listener $PORT 127.0.0.1"
    echo "allow_anonymous true"
    echo "persistence false"
  } >"$work/mosquitto.conf"
}

# stop_pid PID: SIGTERM, then SIGKILL after 10 s
stop_pid() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

stop_tutorial() {
  local pid
  for pid in "${tutorial_pids[@]}"; do stop_pid "$pid"; done
  tutorial_pids=()
}

# rows DB: rows in the tutorial's table
rows() {
  "$TUTORIAL_VENV/bin/python" -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1], timeout=30).execute("SELECT count(*) FROM readings").fetchone()[0])' "$1"
}

# settled_rows DB: waits until the row count stops growing (2 s, at most 120 s), prints it
settled_rows() {
  local n last=-1 same=0
  for _ in $(seq 120); do
    n=$(rows "$1")
    if [ "$n" = "$last" ]; then same=$((same + 1)); else same=0; fi
    [ "$same" -ge 2 ] && break
    last=$n
    sleep 1
  done
  echo "$n"
}

# wait_port PORT PID: until PORT accepts connections (10 s at most)
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "ingest.sh: nothing listens on port $1; see $work/*.log" >&2
  exit 1
}

# run_tutorial SCENARIO RUN: one measurement of the tutorial stack, appended to $results
run_tutorial() {
  local scenario=$1 run=$2 line probe db=$work/tutorial.db server_pid stored stats acked ok
  rm -f "$db"
  probe=$(fsync_probe)
  if [ "$scenario" = tutorial-mqtt ]; then
    "$MOSQUITTO" -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
    server_pid=$!
    tutorial_pids+=("$server_pid")
    wait_port "$PORT" "$server_pid"
    "$TUTORIAL_VENV/bin/python" -u bench/tutorial/subscriber.py --port "$PORT" --db "$db" >"$work/subscriber.out" 2>>"$work/subscriber.log" &
    local sub_pid=$!
    tutorial_pids+=("$sub_pid")
    for _ in $(seq 100); do grep -q subscribed "$work/subscriber.out" && break; sleep 0.1; done
    # shellcheck disable=SC2046
    line=$(timeout 600 "$work/bin/telehub-loadgen" --host "127.0.0.1:$PORT" --broker-pid "$server_pid" \
      telemetry --no-verify $(args_of mqtt | cut -d' ' -f2-) 2>>"$work/loadgen.log" | grep '^RESULT') || line=""
    stored=$(settled_rows "$db")
    stop_pid "$sub_pid"
    stats=$(tail -n 1 "$work/subscriber.out")
    acked=$(sed -n 's/.* acked=\([0-9]*\).*/\1/p' <<<"$line")
    line="${line#RESULT } stored_rows=$stored lost_msgs=$((acked - stored)) lost=$(((acked - stored) * FIELDS)) $stats"
    line="$line stored_points_rate=$(sed -n 's/.*rows_rate=\([0-9]*\).*/\1/p' <<<"$stats" | awk -v f="$FIELDS" '{ print $1 * f }')"
  else
    TUTORIAL_DB=$db "$TUTORIAL_VENV/bin/gunicorn" -w 2 -b "127.0.0.1:$HTTP_PORT" --chdir bench/tutorial \
      app:app >>"$work/gunicorn.log" 2>&1 &
    server_pid=$!
    tutorial_pids+=("$server_pid")
    wait_port "$HTTP_PORT" "$server_pid"
    sleep 1 # the workers
    # --db-pid: the gunicorn master and its workers; its CPU is reported as db_cpu_*
    # shellcheck disable=SC2046
    line=$(timeout 600 "$work/bin/telehub-loadgen" --http "127.0.0.1:$HTTP_PORT" --broker-pid "$server_pid" \
      --db-pid "$server_pid" $(args_of http-data) --no-verify 2>>"$work/loadgen.log" | grep '^RESULT') || line=""
    stored=$(settled_rows "$db")
    ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$line")
    line="${line#RESULT } stored_rows=$stored lost=$((ok - stored))"
  fi
  stop_tutorial
  echo "$scenario backend=tutorial run=$run load=$(cut -d' ' -f1 /proc/loadavg) fsync_probe_us=$probe $line" |
    tee -a "$results" >&2
}

# fsync_probe: the disk's latency before a run, in µs per 4 KiB write + fsync (dd
# oflag=dsync, 50 writes into the work directory); other I/O on the machine shows here
fsync_probe() {
  dd if=/dev/zero of="$work/probe" bs=4k count=50 oflag=dsync 2>&1 |
    awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") { printf "%.0f\n", $(i - 1) * 1e6 / 50 } }'
  rm -f "$work/probe"
}

# run_one SCENARIO BACKEND RUN: one measurement, appended to $results
run_one() {
  local scenario=$1 backend=$2 run=$3 line extra="" db=() probe
  start_hub "$backend"
  probe=$(fsync_probe)
  if [ "$backend" = postgres ] && [ -n "$DB_PID" ]; then db=(--db-pid "$DB_PID"); fi
  # shellcheck disable=SC2046 # word splitting of the arguments is wanted
  if line=$(timeout 600 "$work/bin/telehub-loadgen" --host "127.0.0.1:$PORT" --http "127.0.0.1:$HTTP_PORT" \
    --broker-pid "$hub_pid" "${db[@]}" $(args_of "$scenario") 2>>"$work/loadgen.log" | grep '^RESULT'); then
    if [ "$scenario" = series ]; then extra=" curl_p50_ms=$(curl_median "$line")"; fi
    echo "$scenario backend=$backend run=$run load=$(cut -d' ' -f1 /proc/loadavg) fsync_probe_us=$probe ${line#RESULT }$extra" |
      tee -a "$results" >&2
  else
    echo "ingest.sh: $scenario on $backend failed (run $run); see $work/loadgen.log" >&2
  fi
  stop_hub
}

if [[ " $SCENARIOS " == *" tutorial-"* ]]; then setup_tutorial; fi
for scenario in $SCENARIOS; do
  for run in $(seq "$RUNS"); do
    case $scenario in
      tutorial-*) run_tutorial "$scenario" "$run" ;;
      *) for backend in $BACKENDS; do run_one "$scenario" "$backend" "$run"; done ;;
    esac
  done
done

table "$results"
