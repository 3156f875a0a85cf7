#!/usr/bin/env bash
# Webhook delivery throughput: MESSAGES QoS 1 messages published to one topic, each
# matching ENDPOINTS webhook endpoints, delivered to a local receiver
# (crates/telehub/tests/python/webhook_tools.py receive: a threaded Python http.server
# that verifies every signature with its own HMAC code). Prints deliveries/s from the
# first publish to the last delivery accepted, and the CPU seconds telehub and the
# receiver used.
#
#   TELEHUB_BIN=target/release/telehub MESSAGES=5000 ENDPOINTS=4 bash bench/webhooks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${TELEHUB_BIN:-target/release/telehub}
MESSAGES=${MESSAGES:-5000}
ENDPOINTS=${ENDPOINTS:-4}
PY=${PYTHON:-/usr/bin/python3}
TOOLS=crates/telehub/tests/python/webhook_tools.py
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
TOKEN=bench-admin-token-0123456789abcdef
work=$(mktemp -d)
cleanup() { kill "${hub:-}" "${rx:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$PY" -u "$TOOLS" receive --port 0 --secret "$SECRET" > "$work/rx.out" &
rx=$!
until grep -q '^PORT ' "$work/rx.out" 2>/dev/null; do sleep 0.05; done
rx_port=$(awk '/^PORT /{print $2}' "$work/rx.out")

printf '[auth.rate]\nconnections_per_ip = 0\nmessages_per_device = 0\nhttp_requests = 0\n' > "$work/telehub.toml"
TELEHUB_ADMIN_TOKEN=$TOKEN RUST_LOG=info "$BIN" serve --config "$work/telehub.toml" \
  --data-dir "$work/data" --allow-anonymous --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --log-format json 2> "$work/hub.err" &
hub=$!
until grep -q "telehub started" "$work/hub.err" 2>/dev/null; do kill -0 "$hub" 2>/dev/null || { cat "$work/hub.err"; exit 1; }; sleep 0.05; done
mqtt_port=$(grep -o '"mqtt":"127.0.0.1:[0-9]*"' "$work/hub.err" | head -1 | grep -o '[0-9]*"$' | tr -d '"')
http_port=$(grep -o '"http":"127.0.0.1:[0-9]*"' "$work/hub.err" | head -1 | grep -o '[0-9]*"$' | tr -d '"')

for _ in $(seq "$ENDPOINTS"); do
  curl -sf -X POST "http://127.0.0.1:$http_port/api/v1/webhooks" -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d "{\"url\":\"http://127.0.0.1:$rx_port/in\",\"topics\":[\"bench/#\"],\"secret\":\"$SECRET\"}" > /dev/null
done

want=$((MESSAGES * ENDPOINTS))
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
hub_cpu0=$(cpu "$hub"); rx_cpu0=$(cpu "$rx")
start=$(date +%s.%N)
"$PY" -u "$TOOLS" publish --port "$mqtt_port" --topic bench/t --to "$MESSAGES" > /dev/null
while [ "$(grep -c '^OK ' "$work/rx.out")" -lt "$want" ]; do sleep 0.05; done
end=$(date +%s.%N)
hub_cpu=$(echo "$(cpu "$hub") - $hub_cpu0" | bc -l); rx_cpu=$(echo "$(cpu "$rx") - $rx_cpu0" | bc -l)
secs=$(echo "$end - $start" | bc -l)
printf 'messages %d, endpoints %d: %d deliveries in %.2f s = %.0f deliveries/s (telehub CPU %.2f s, receiver CPU %.2f s)\n' \
  "$MESSAGES" "$ENDPOINTS" "$want" "$secs" "$(echo "$want / $secs" | bc -l)" "$hub_cpu" "$rx_cpu"
