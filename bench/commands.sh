#!/usr/bin/env bash
# Command round-trip latency (bench/commands.py), one command at a time:
#   * telehub's command service: POST /api/v1/devices/{id}/commands -> the device
#     (paho-mqtt, its own token) gets it on devices/{id}/commands and answers on
#     devices/{id}/commands/ack -> the app sees `succeeded` on the live stream (SSE);
#   * the same exchange over a bare broker, app and device both MQTT clients
#     (publish QoS 1 -> device -> answer QoS 1 -> app): Mosquitto, and telehub as a
#     broker, started the same way on private loopback ports (Mosquitto with
#     set_tcp_nodelay true, as telehub and the clients here set TCP_NODELAY).
#
#   TELEHUB_BIN=target/release/telehub COUNT=1000 bash bench/commands.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
COUNT=${COUNT:-1000}
PY=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d)
cleanup() { kill "${hub:-}" "${mosq:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_telehub "$work"

mosq_port=${MOSQUITTO_PORT:-28870}
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n' "$mosq_port" > "$work/mosquitto.conf"
"$MOSQUITTO" -c "$work/mosquitto.conf" 2> "$work/mosquitto.err" &
mosq=$!
until "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $mosq_port), 1)" 2>/dev/null; do
  kill -0 "$mosq" 2>/dev/null || { cat "$work/mosquitto.err"; exit 1; }; sleep 0.05
done

echo "commit $(git rev-parse --short HEAD), $(date -u +%F), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), COUNT=$COUNT"
echo "telehub command service (API -> device -> ack -> SSE): $("$PY" -u bench/commands.py hub --mqtt-port "$mqtt_port" --http-port "$http_port" --token "$TOKEN" --count "$COUNT")"
echo "telehub as a bare broker (publish -> device -> answer): $("$PY" -u bench/commands.py broker --mqtt-port "$mqtt_port" --count "$COUNT")"
echo "Mosquitto as a bare broker (publish -> device -> answer): $("$PY" -u bench/commands.py broker --mqtt-port "$mosq_port" --count "$COUNT")"
