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
BIN=${TELEHUB_BIN:-target/release/telehub}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
COUNT=${COUNT:-1000}
PY=${PYTHON:-/usr/bin/python3}
TOKEN=bench-admin-token-0123456789abcdef
work=$(mktemp -d)
cleanup() { kill "${hub:-}" "${mosq:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

printf '[auth.rate]\nconnections_per_ip = 0\nmessages_per_device = 0\nhttp_requests = 0\n' > "$work/telehub.toml"
TELEHUB_ADMIN_TOKEN=$TOKEN RUST_LOG=warn,telehub=info "$BIN" serve --config "$work/telehub.toml" \
  --data-dir "$work/data" --allow-anonymous --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --log-format json 2> "$work/hub.err" &
hub=$!
until grep -q "telehub started" "$work/hub.err" 2>/dev/null; do kill -0 "$hub" 2>/dev/null || { cat "$work/hub.err"; exit 1; }; sleep 0.05; done
mqtt_port=$(grep -o '"mqtt":"127.0.0.1:[0-9]*"' "$work/hub.err" | head -1 | grep -o '[0-9]*"$' | tr -d '"')
http_port=$(grep -o '"http":"127.0.0.1:[0-9]*"' "$work/hub.err" | head -1 | grep -o '[0-9]*"$' | tr -d '"')

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
