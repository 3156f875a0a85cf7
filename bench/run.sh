#!/usr/bin/env bash
# Benchmarks telehub against Mosquitto on this machine with telehub-loadgen, and
# prints a markdown table of medians (docs/perf.md explains the numbers).
#
# Each scenario runs RUNS times; each run starts every broker fresh on a private
# loopback port, one after the other (Mosquitto, telehub, Mosquitto, ...), so that
# load from other processes hits both alike; each broker is stopped by its PID.
#
#   bash bench/run.sh                      # everything: ~7 minutes plus the build
#   SCENARIOS="fan-in-qos0 latency" RUNS=5 DURATION=5s bash bench/run.sh
#   bash bench/run.sh --table results.txt  # the table again from a kept run
#
# Environment: RUNS (3), DURATION (10s), IDLE_CONNECTIONS (10000), IDLE_SOURCES (1:
# loopback source addresses for idle; 50 000 connections need 2 or more), PORT (28830),
# SCENARIOS (default: fan-in-qos0 fan-in-qos1 fan-out latency idle; also
# fan-in-qos1-durable: the subscriber keeps its session, so telehub writes every message
# for it to disk before the PUBACK, against Mosquitto with `persistence true`), MOSQUITTO
# (/usr/sbin/mosquitto), KEEP (set to keep the work directory), TELEHUB_ADMIN_TOKEN (telehub's
# admin token; a random one by default). telehub runs with --allow-anonymous and without
# the per-IP connection rate limit (all clients are on 127.0.0.1).
set -euo pipefail
table_file=""
if [ "${1:-}" = --table ]; then table_file=$(realpath "$2"); fi
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
IDLE_SOURCES=${IDLE_SOURCES:-1}
PORT=${PORT:-28830}
SCENARIOS=${SCENARIOS:-fan-in-qos0 fan-in-qos1 fan-out latency idle}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}

# median FILE SCENARIO KIND KEY: the median of KEY over the runs (or "-")
median() {
  grep "^$2 broker=$3 " "$1" | tr ' ' '\n' | sed -n "s/^$4=//p" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B: A / B with two decimals
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f\n", a / b }'
}

# met CONDITION: "yes" or "**no**" (awk expression)
met() {
  awk "BEGIN { print (($1) ? \"yes\" : \"**no**\") }" 2>/dev/null || echo "-"
}

# table FILE: the markdown table of medians, then every run
table() {
  local f=$1 scenario m t r lost p
  local scenarios
  scenarios=$(grep -v '^#' "$f" | cut -d' ' -f1 | awk '!seen[$0]++')
  echo
  sed -n 's/^# //p' "$f"
  echo
  echo "| scenario | metric | Mosquitto | telehub | telehub / Mosquitto | target | met | generator CPU (M / t) | broker CPU (M / t) | other load (M / t) |"
  echo "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- | --- |"
  for scenario in $scenarios; do
    case $scenario in
      fan-in-qos0)
        m=$(median "$f" "$scenario" mosquitto rate) t=$(median "$f" "$scenario" telehub rate) r=$(ratio "$t" "$m")
        echo "| fan-in QoS 0, 8 → 1, 64 B | msg/s received | $m | $t | $r | ≥ 1.5 × | $(met "$r >= 1.5") | $(cpu_cols "$f" "$scenario" mosquitto) |"
        efficiency "$f" "$scenario" mosquitto msg
        echo "| | dropped (QoS 0) | $(median "$f" "$scenario" mosquitto dropped) | $(median "$f" "$scenario" telehub dropped) | | | | | | |"
        ;;
      fan-in-qos1)
        m=$(median "$f" "$scenario" mosquitto-lifted rate) t=$(median "$f" "$scenario" telehub rate) r=$(ratio "$t" "$m")
        lost=$(median "$f" "$scenario" telehub lost)
        echo "| fan-in QoS 1, 8 → 1, 64 B, window 100 | msg/s received (Mosquitto limits lifted) | $m | $t | $r | ≥ 1.5 ×, 0 lost | $(met "$r >= 1.5 && $lost == 0") | $(cpu_cols "$f" "$scenario" mosquitto-lifted) |"
        efficiency "$f" "$scenario" mosquitto-lifted msg
        echo "| | lost = acked − received | $(median "$f" "$scenario" mosquitto-lifted lost) | $lost | | 0 | $(met "$lost == 0") | | | |"
        echo "| | Mosquitto stock limits: msg/s, lost of acked | $(median "$f" "$scenario" mosquitto rate), $(median "$f" "$scenario" mosquitto lost) of $(median "$f" "$scenario" mosquitto acked) | | | | | | | |"
        ;;
      fan-out)
        m=$(median "$f" "$scenario" mosquitto rate) t=$(median "$f" "$scenario" telehub rate) r=$(ratio "$t" "$m")
        echo "| fan-out QoS 0, 1 → 100, 64 B | deliveries/s | $m | $t | $r | ≥ 2 × | $(met "$r >= 2") | $(cpu_cols "$f" "$scenario" mosquitto) |"
        efficiency "$f" "$scenario" mosquitto deliveries
        echo "| | dropped (QoS 0) | $(median "$f" "$scenario" mosquitto dropped) | $(median "$f" "$scenario" telehub dropped) | | | | | | |"
        ;;
      latency)
        for p in p50 p99 p999; do
          m=$(median "$f" "$scenario" mosquitto "${p}_us") t=$(median "$f" "$scenario" telehub "${p}_us") r=$(ratio "$t" "$m")
          case $p in
            p50) echo "| latency QoS 0, 10 k msg/s, 64 B | p50 µs | $m | $t | $r | | | $(cpu_cols "$f" "$scenario" mosquitto) |" ;;
            p99) echo "| | p99 µs | $m | $t | $r | ≤ Mosquitto | $(met "$t <= $m") | | | |" ;;
            *) echo "| | $p µs | $m | $t | $r | | | | | |" ;;
          esac
        done
        ;;
      fan-in-qos1-durable)
        m=$(median "$f" "$scenario" mosquitto-durable rate) t=$(median "$f" "$scenario" telehub rate) r=$(ratio "$t" "$m")
        echo "| fan-in QoS 1 to a persistent session, 8 → 1, 64 B, window 100 | msg/s received (Mosquitto persistence on, limits lifted) | $m | $t | $r | | | $(cpu_cols "$f" "$scenario" mosquitto-durable) |"
        efficiency "$f" "$scenario" mosquitto-durable msg
        echo "| | lost = acked − received | $(median "$f" "$scenario" mosquitto-durable lost) | $(median "$f" "$scenario" telehub lost) | | 0 | | | | |"
        ;;
      idle)
        m=$(median "$f" "$scenario" mosquitto bytes_per_conn) t=$(median "$f" "$scenario" telehub bytes_per_conn) r=$(ratio "$t" "$m")
        echo "| $(median "$f" "$scenario" telehub connections) idle connections | RSS bytes per connection | $m | $t | $r | ≤ 2048 | $(met "$t <= 2048") | | | |"
        ;;
    esac
  done
  echo
  echo "Every run (medians above are over these):"
  echo
  echo '```'
  grep -v '^#' "$f"
  echo '```'
}

cpu_cols() { # FILE SCENARIO MOSQUITTO-KIND
  echo "$(median "$1" "$2" "$3" gen_cpu_pct) % / $(median "$1" "$2" telehub gen_cpu_pct) %" \
    "| $(median "$1" "$2" "$3" broker_cpu_pct) % / $(median "$1" "$2" telehub broker_cpu_pct) %" \
    "| $(median "$1" "$2" "$3" others_cpu_pct) % / $(median "$1" "$2" telehub others_cpu_pct) %"
}

# efficiency FILE SCENARIO MOSQUITTO-KIND WHAT: a row of WHAT per second of broker CPU
efficiency() {
  local m t
  m=$(median "$1" "$2" "$3" per_broker_cpu_s) t=$(median "$1" "$2" telehub per_broker_cpu_s)
  echo "| | $4 per broker CPU-second | $m | $t | $(ratio "$t" "$m") | | | | | |"
}

if [ -n "$table_file" ]; then
  table "$table_file"
  exit 0
fi

command -v "$MOSQUITTO" >/dev/null || { echo "run.sh: $MOSQUITTO not found (apt-get install mosquitto)" >&2; exit 2; }

# idle connections need a descriptor each, in the generator and in the broker (root may
# raise the hard limit too)
ulimit -n $((IDLE_CONNECTIONS + 1000)) 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNECTIONS + 100)) ]; then
  echo "run.sh: ulimit -n is $(ulimit -n), below IDLE_CONNECTIONS=$IDLE_CONNECTIONS + 100" >&2
  exit 2
fi

echo "run.sh: building release binaries" >&2
cargo build --release --locked -p telehub -p telehub-loadgen >&2

work=$(mktemp -d /tmp/telehub-bench.XXXXXX)
mkdir -p "$work/bin"
# our own copies: other builds may replace target/release/* while we measure
cp target/release/telehub target/release/telehub-loadgen "$work/bin/"
results="$work/results.txt"
commit=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain --untracked-files=no | wc -l)
echo "# commit $commit$([ "$dirty" -gt 0 ] && echo " (+ $dirty uncommitted files)"), $(date -u +%Y-%m-%dT%H:%MZ)," \
  "$(nproc) × $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $RUNS runs, DURATION=$DURATION" >"$results"

# telehub: anonymous clients (--allow-anonymous), and no per-IP connection rate or HTTP
# request rate: every benchmark client comes from 127.0.0.1 (idle opens thousands of
# connections)
printf '%s\n' "[auth.rate]" "connections_per_ip = 0" "http_requests = 0" >"$work/telehub.toml"

# telehub's admin API needs a token: ours, set before it starts (the generator reads it
# from the environment as well)
TELEHUB_ADMIN_TOKEN=${TELEHUB_ADMIN_TOKEN:-bench-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')}
export TELEHUB_ADMIN_TOKEN

broker_pid=""
cleanup() {
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "run.sh: kept $work" >&2; fi
}
trap cleanup EXIT

# mosquitto_conf NAME EXTRA...: a config listening on $PORT
mosquitto_conf() {
  local name=$1
  shift
  {
    echo "listener $PORT 127.0.0.1"
    echo "allow_anonymous true"
    case " $* " in *" persistence true"*) ;; *) echo "persistence false" ;; esac
    echo "log_dest stderr"
    echo "log_type error"
    echo "log_type warning"
    printf '%s\n' "$@"
  } >"$work/$name.conf"
}
mosquitto_conf mosquitto
# "limits lifted": no in-flight or queue limit per client (mosquitto.conf(5))
mosquitto_conf mosquitto-lifted "max_inflight_messages 0" "max_queued_messages 0"
# persistence on, as mosquitto.conf(5) ships it otherwise (the database is written at
# autosave_interval, 30 min, and at exit: not per message)
mkdir -p "$work/mosquitto-db"
mosquitto_conf mosquitto-durable "max_inflight_messages 0" "max_queued_messages 0" \
  "persistence true" "persistence_location $work/mosquitto-db/"

# start_broker KIND: starts telehub, mosquitto or mosquitto-lifted; sets broker_pid
start_broker() {
  local kind=$1
  case $kind in
    telehub)
      rm -rf "$work/data"
      "$work/bin/telehub" serve --config "$work/telehub.toml" --data-dir "$work/data" --allow-anonymous \
        --mqtt-listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$((PORT + 1))" \
        >>"$work/telehub.log" 2>&1 &
      ;;
    mosquitto*)
      rm -f "$work/mosquitto-db/"*
      "$MOSQUITTO" -c "$work/$kind.conf" >>"$work/mosquitto.log" 2>&1 &
      ;;
  esac
  broker_pid=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      sleep 0.3 # let it finish starting (and the probe connection go away)
      return 0
    fi
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "run.sh: $kind did not start; see $work/*.log" >&2
  exit 1
}

stop_broker() {
  kill "$broker_pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
}

# run_one SCENARIO KIND RUN LOADGEN-ARGS...: one measurement, appended to $results
run_one() {
  local scenario=$1 kind=$2 run=$3
  shift 3
  start_broker "$kind"
  local line
  # the generator bounds itself; the timeout is a last resort
  if line=$(timeout 180 "$work/bin/telehub-loadgen" --host "127.0.0.1:$PORT" --broker-pid "$broker_pid" "$@" \
    2>>"$work/loadgen.log" | grep '^RESULT'); then
    echo "$scenario broker=$kind run=$run load=$(cut -d' ' -f1 /proc/loadavg) ${line#RESULT }" | tee -a "$results" >&2
  else
    echo "run.sh: $scenario on $kind failed (run $run); see $work/loadgen.log" >&2
  fi
  stop_broker
}

# Brokers of each scenario, in the order they alternate; the last is telehub.
brokers_of() {
  case $1 in
    fan-in-qos1) echo "mosquitto mosquitto-lifted telehub" ;;
    fan-in-qos1-durable) echo "mosquitto-durable telehub" ;;
    *) echo "mosquitto telehub" ;;
  esac
}

args_of() {
  case $1 in
    fan-in-qos0) echo "fan-in --qos 0 --duration $DURATION" ;;
    fan-in-qos1) echo "fan-in --qos 1 --duration $DURATION" ;;
    fan-in-qos1-durable) echo "fan-in --qos 1 --persistent-sub --duration $DURATION" ;;
    fan-out) echo "fan-out --duration $DURATION" ;;
    latency) echo "latency --duration $DURATION" ;;
    idle) echo "idle --connections $IDLE_CONNECTIONS --sources $IDLE_SOURCES" ;;
  esac
}

for scenario in $SCENARIOS; do
  for run in $(seq "$RUNS"); do
    for kind in $(brokers_of "$scenario"); do
      # shellcheck disable=SC2046 # word splitting of the arguments is wanted
      run_one "$scenario" "$kind" "$run" $(args_of "$scenario")
    done
  done
done

table "$results"
