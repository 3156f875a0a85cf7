#!/usr/bin/env bash
# What security costs: telehub's connection rate anonymous, with a device token and with
# device-signed JWTs (RS256, ES256), and its fan-in QoS 0 publish throughput anonymous
# and authenticated with ACL checks, each beside Mosquitto measured the same way where
# Mosquitto can (anonymous; a password file; a password file and an ACL file). Prints a
# markdown table of medians (docs/perf.md, "Security", explains the numbers).
#
# Scenarios (telehub-loadgen connect-rate and fan-in):
#   conn-none         WORKERS workers connect one connection after the other (CONNECT,
#                     CONNACK, DISCONNECT) for DURATION, anonymously
#   conn-token        the same with user name = device id, password = a device token
#                     (Mosquitto: a password_file made by mosquitto_passwd -b)
#   conn-rs256        a device-signed RS256 JWT as the password, signed afresh for every
#                     connection by the generator (as devices do); telehub only
#   conn-rs256-once   the same JWT signed once per worker and reused: only the broker's
#                     verification is in the loop
#   conn-es256, conn-es256-once   the same with an ES256 (P-256) key
#   fanin-none        PUBLISHERS publishers → 1 subscriber, QoS 0, PAYLOAD bytes, each in
#                     its device's lane devices/{id}/bench, subscribed as devices/+/bench;
#                     anonymous
#   fanin-acl         the same, every client authenticated with a device token, the
#                     subscriber allowed devices/+/bench by an ACL rule (telehub: POST
#                     /api/v1/acl; Mosquitto: acl_file with "pattern write
#                     devices/%u/bench" and "user sub / topic read devices/+/bench")
#
# Each measurement starts its broker fresh on a private loopback port (telehub: a new data
# directory, TELEHUB_ADMIN_TOKEN, the devices, credentials and ACL rule registered with
# curl through the REST API), Mosquitto and telehub alternating, and stops it by its PID.
# telehub runs with --allow-anonymous (for the anonymous rows; the authenticated ones
# authenticate all the same) and with the rate limits that would throttle one loopback
# address off: connections per IP, messages per device, HTTP requests.
#
#   bash bench/auth.sh                           # everything: ~10 minutes plus the build
#   RUNS=3 DURATION=5s bash bench/auth.sh
#   SCENARIOS="conn-none conn-token" bash bench/auth.sh
#   bash bench/auth.sh --table results.txt       # the table again from a kept run
#
# Environment: RUNS (3), DURATION (10s), WORKERS (8), PUBLISHERS (8), PAYLOAD (64), PORT
# (28850; HTTP on PORT+1), SCENARIOS (all of the above), MOSQUITTO (/usr/sbin/mosquitto),
# KEEP (set to keep the work directory).
set -euo pipefail
table_file=""
if [ "${1:-}" = --table ]; then table_file=$(realpath "$2"); fi
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WORKERS=${WORKERS:-8}
PUBLISHERS=${PUBLISHERS:-8}
PAYLOAD=${PAYLOAD:-64}
PORT=${PORT:-28850}
HTTP_PORT=$((PORT + 1))
SCENARIOS=${SCENARIOS:-conn-none conn-token conn-rs256 conn-rs256-once conn-es256 conn-es256-once fanin-none fanin-acl}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}

# median FILE SCENARIO BROKER KEY: the median of KEY over the runs of BROKER (telehub, or
# mosquitto in any of its configurations), or "-"
median() {
  { grep "^$2 broker=$3[^ ]* " "$1" || true; } | tr ' ' '\n' | sed -n "s/^$4=//p" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else { m = (v[NR / 2] + v[NR / 2 + 1]) / 2; if (m >= 100) printf "%.0f\n", m; else printf "%.2f\n", m } }'
}

# ratio A B: A / B with two decimals
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f\n", a / b }'
}

# sum FILE SCENARIO BROKER KEY: the sum of KEY over the runs
sum() {
  { grep "^$2 broker=$3[^ ]* " "$1" || true; } | tr ' ' '\n' | sed -n "s/^$4=//p" |
    awk '{ s += $1 } END { if (NR == 0) print "-"; else print s }'
}

label_of() {
  case $1 in
    conn-none) echo "connections/s, anonymous" ;;
    conn-token) echo "connections/s, device token (Mosquitto: password file)" ;;
    conn-rs256) echo "connections/s, JWT RS256, signed per connection" ;;
    conn-rs256-once) echo "connections/s, JWT RS256, pre-signed per worker" ;;
    conn-es256) echo "connections/s, JWT ES256, signed per connection" ;;
    conn-es256-once) echo "connections/s, JWT ES256, pre-signed per worker" ;;
    fanin-none) echo "fan-in QoS 0 msg/s received, anonymous" ;;
    fanin-acl) echo "fan-in QoS 0 msg/s received, authenticated + ACL (Mosquitto: password + ACL file)" ;;
  esac
}

# table FILE: the markdown table of medians, then every run
table() {
  local f=$1 scenario m t base notes
  echo
  sed -n 's/^# //p' "$f"
  echo
  echo "| measurement | Mosquitto 2.0 | telehub | telehub / Mosquitto | telehub / telehub anonymous | per broker CPU-second (M / t) | broker CPU % (M / t) | generator CPU % (M / t) | notes (M / t) |"
  echo "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- |"
  for scenario in $(grep -v '^#' "$f" | cut -d' ' -f1 | awk '!seen[$0]++'); do
    m=$(median "$f" "$scenario" mosquitto rate) t=$(median "$f" "$scenario" telehub rate)
    case $scenario in
      conn-*)
        base=$(median "$f" conn-none telehub rate)
        notes="handshake p50 $(median "$f" "$scenario" mosquitto p50_ms) / $(median "$f" "$scenario" telehub p50_ms) ms; refused + failed, all runs: $(sum "$f" "$scenario" mosquitto refused) + $(sum "$f" "$scenario" mosquitto failed) / $(sum "$f" "$scenario" telehub refused) + $(sum "$f" "$scenario" telehub failed)"
        case $scenario in
          conn-rs256 | conn-es256) notes="$notes; generator µs per signature: $(median "$f" "$scenario" telehub sign_us)" ;;
        esac
        ;;
      fanin-*)
        base=$(median "$f" fanin-none telehub rate)
        notes="dropped, all runs: $(sum "$f" "$scenario" mosquitto dropped) / $(sum "$f" "$scenario" telehub dropped)"
        ;;
    esac
    echo "| $(label_of "$scenario") | $m | $t | $(ratio "$t" "$m") | $(ratio "$t" "$base") |" \
      "$(median "$f" "$scenario" mosquitto per_broker_cpu_s) / $(median "$f" "$scenario" telehub per_broker_cpu_s) |" \
      "$(median "$f" "$scenario" mosquitto broker_cpu_pct) / $(median "$f" "$scenario" telehub broker_cpu_pct) |" \
      "$(median "$f" "$scenario" mosquitto gen_cpu_pct) / $(median "$f" "$scenario" telehub gen_cpu_pct) |" \
      "$notes |"
  done
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

for tool in "$MOSQUITTO" mosquitto_passwd curl jq openssl; do
  command -v "$tool" >/dev/null || { echo "auth.sh: $tool not found" >&2; exit 2; }
done

echo "auth.sh: building release binaries" >&2
cargo build --release --locked -p telehub -p telehub-loadgen >&2

work=$(mktemp -d /tmp/telehub-auth.XXXXXX)
mkdir -p "$work/bin"
# our own copies: other builds may replace target/release/* while we measure
cp target/release/telehub target/release/telehub-loadgen "$work/bin/"
results="$work/results.txt"
commit=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain --untracked-files=no | wc -l)
echo "# commit $commit$([ "$dirty" -gt 0 ] && echo " (+ $dirty uncommitted files)"), $(date -u +%Y-%m-%dT%H:%MZ)," \
  "$(nproc) × $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $RUNS runs, DURATION=$DURATION," \
  "WORKERS=$WORKERS, PUBLISHERS=$PUBLISHERS, PAYLOAD=$PAYLOAD, $("$MOSQUITTO" -h 2>/dev/null | sed -n 's/^mosquitto version /Mosquitto /p')," \
  "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$results"

# telehub: the rate limits that would throttle one loopback address off (every client
# of the benchmark is 127.0.0.1; the publishers send far more than 1000 msg/s each)
printf '%s\n' "[auth.rate]" "connections_per_ip = 0" "messages_per_device = 0" "http_requests = 0" \
  >"$work/telehub.toml"

# telehub's admin token, set before it starts; the generator reads it as well
TELEHUB_ADMIN_TOKEN=${TELEHUB_ADMIN_TOKEN:-bench-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')}
export TELEHUB_ADMIN_TOKEN

broker_pid=""
cleanup() {
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "auth.sh: kept $work" >&2; fi
}
trap cleanup EXIT

# the devices' keys (the private halves stay with the generator)
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rs256.key" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/es256.key" 2>/dev/null
openssl pkey -in "$work/rs256.key" -pubout -out "$work/rs256.pub"
openssl pkey -in "$work/es256.key" -pubout -out "$work/es256.pub"

# random secret for the Mosquitto users (as high-entropy as telehub's tokens)
secret() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

# Mosquitto: the same users, in a password file (mosquitto_passwd's default hash), and
# an ACL file giving each publisher its lane and the subscriber devices/+/bench
: >"$work/mosquitto.passwd" && chmod 600 "$work/mosquitto.passwd"
: >"$work/mosquitto-pubs.txt"
for i in $(seq 0 $((PUBLISHERS - 1))); do
  pw=$(secret)
  mosquitto_passwd -b "$work/mosquitto.passwd" "dev-p$i" "$pw"
  echo "dev-p$i $pw" >>"$work/mosquitto-pubs.txt"
done
mosquitto_sub_pw=$(secret) mosquitto_conn_pw=$(secret)
mosquitto_passwd -b "$work/mosquitto.passwd" dev-sub "$mosquitto_sub_pw"
mosquitto_passwd -b "$work/mosquitto.passwd" dev-c "$mosquitto_conn_pw"
printf '%s\n' "user dev-sub" "topic read devices/+/bench" "" "pattern write devices/%u/bench" >"$work/mosquitto.acl"

# mosquitto_conf NAME EXTRA...: a config listening on $PORT
mosquitto_conf() {
  local name=$1
  shift
  {
    echo "listener $PORT 127.0.0.1"
    # run as us: Mosquitto started by root would switch to its own user, which cannot
    # read the password and ACL files in our private work directory
    echo "user $(id -un)"
    echo "persistence false"
    echo "log_dest stderr"
    echo "log_type error"
    echo "log_type warning"
    printf '%s\n' "$@"
  } >"$work/$name.conf"
}
mosquitto_conf mosquitto "allow_anonymous true"
mosquitto_conf mosquitto-passwd "allow_anonymous false" "password_file $work/mosquitto.passwd"
mosquitto_conf mosquitto-acl "allow_anonymous false" "password_file $work/mosquitto.passwd" "acl_file $work/mosquitto.acl"

api() {
  curl -fsS --max-time 10 -H "Authorization: Bearer $TELEHUB_ADMIN_TOKEN" -H 'Content-Type: application/json' "$@"
}

# register_telehub: the devices, their credentials and the subscriber's ACL rule, through
# the REST API; writes the publishers' credentials file and sets telehub_sub_token and
# telehub_conn_token
api_base="http://127.0.0.1:$HTTP_PORT/api/v1"
# device ID: registers it
device() { api -X POST "$api_base/devices" -d "{\"id\":\"$1\"}" >/dev/null; }
# new_token ID: a new token credential of the device, printed (the API shows it once)
new_token() { api -X POST "$api_base/devices/$1/credentials" -d '{"kind":"token"}' | jq -er .token; }

register_telehub() {
  local id i token alg
  : >"$work/telehub-pubs.txt"
  for i in $(seq 0 $((PUBLISHERS - 1))); do
    id="dev-p$i"
    device "$id"
    token=$(new_token "$id")
    echo "$id $token" >>"$work/telehub-pubs.txt"
  done
  device dev-sub
  telehub_sub_token=$(new_token dev-sub)
  device dev-c
  telehub_conn_token=$(new_token dev-c)
  for alg in rs256 es256; do
    device "dev-$alg"
    jq -n --arg kind "jwt_$alg" --rawfile key "$work/$alg.pub" '{kind: $kind, public_key: $key}' |
      api -X POST "$api_base/devices/dev-$alg/credentials" -d @- >/dev/null
  done
  api -X POST "$api_base/acl" \
    -d '{"effect":"allow","action":"subscribe","filter":"devices/+/bench","device":"dev-sub"}' >/dev/null
}

# start_broker KIND: telehub (registered), or Mosquitto in configuration KIND; sets broker_pid
start_broker() {
  local kind=$1
  case $kind in
    telehub)
      rm -rf "$work/data"
      "$work/bin/telehub" serve --config "$work/telehub.toml" --data-dir "$work/data" --allow-anonymous \
        --mqtt-listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$HTTP_PORT" >>"$work/telehub.log" 2>&1 &
      ;;
    mosquitto*)
      "$MOSQUITTO" -c "$work/$kind.conf" >>"$work/mosquitto.log" 2>&1 &
      ;;
  esac
  broker_pid=$!
  for _ in $(seq 100); do
    if [ "$kind" = telehub ]; then
      if curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$HTTP_PORT/readyz" 2>/dev/null; then
        register_telehub
        sleep 0.3
        return 0
      fi
    elif (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      sleep 0.3 # let it finish starting (and the probe connection go away)
      return 0
    fi
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "auth.sh: $kind did not start; see $work/*.log" >&2
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

# Brokers of each scenario, in the order they alternate
brokers_of() {
  case $1 in
    conn-none | fanin-none) echo "mosquitto telehub" ;;
    conn-token) echo "mosquitto-passwd telehub" ;;
    fanin-acl) echo "mosquitto-acl telehub" ;;
    *) echo "telehub" ;; # JWTs: Mosquitto has none without a plugin
  esac
}

# args_of SCENARIO KIND: the generator's arguments (after the broker started: telehub's
# tokens come from its registration)
args_of() {
  local scenario=$1 kind=$2 conn="connect-rate --workers $WORKERS --duration $DURATION"
  local fanin="fan-in --qos 0 --publishers $PUBLISHERS --payload $PAYLOAD --duration $DURATION --lanes"
  case $scenario in
    conn-none) echo "$conn --auth none" ;;
    conn-token)
      if [ "$kind" = telehub ]; then
        echo "$conn --auth token --username dev-c --password $telehub_conn_token"
      else
        echo "$conn --auth token --username dev-c --password $mosquitto_conn_pw"
      fi
      ;;
    conn-rs256 | conn-es256 | conn-rs256-once | conn-es256-once)
      local alg=${scenario#conn-} sign=connection
      if [[ $alg == *-once ]]; then alg=${alg%-once} sign=once; fi
      echo "$conn --auth jwt --jwt-key $work/$alg.key --jwt-alg $alg --jwt-sign $sign --device dev-$alg --audience telehub"
      ;;
    fanin-none) echo "$fanin" ;;
    fanin-acl)
      if [ "$kind" = telehub ]; then
        echo "$fanin --pub-credentials $work/telehub-pubs.txt --sub-username dev-sub --sub-password $telehub_sub_token"
      else
        echo "$fanin --pub-credentials $work/mosquitto-pubs.txt --sub-username dev-sub --sub-password $mosquitto_sub_pw"
      fi
      ;;
  esac
}

# run_one SCENARIO KIND RUN: one measurement, appended to $results
run_one() {
  local scenario=$1 kind=$2 run=$3 line
  start_broker "$kind"
  # shellcheck disable=SC2046 # word splitting of the arguments is wanted
  if line=$(timeout 120 "$work/bin/telehub-loadgen" --host "127.0.0.1:$PORT" --broker-pid "$broker_pid" \
    $(args_of "$scenario" "$kind") 2>>"$work/loadgen.log" | grep '^RESULT'); then
    echo "$scenario broker=$kind run=$run load=$(cut -d' ' -f1 /proc/loadavg) ${line#RESULT }" | tee -a "$results" >&2
  else
    echo "auth.sh: $scenario on $kind failed (run $run); see $work/loadgen.log" >&2
  fi
  stop_broker
}

for scenario in $SCENARIOS; do
  for run in $(seq "$RUNS"); do
    for kind in $(brokers_of "$scenario"); do
      run_one "$scenario" "$kind" "$run"
    done
  done
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$results"

table "$results"
