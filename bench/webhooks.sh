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
. bench/lib.sh
MESSAGES=${MESSAGES:-5000}
ENDPOINTS=${ENDPOINTS:-4}
PY=${PYTHON:-/usr/bin/python3}
TOOLS=crates/telehub/tests/python/webhook_tools.py
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
work=$(mktemp -d)
cleanup() { kill "${hub:-}" "${rx:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$PY" -u "$TOOLS" receive --port 0 --secret "$SECRET" > "$work/rx.out" &
rx=$!
until grep -q '^PORT ' "$work/rx.out" 2>/dev/null; do sleep 0.05; done
rx_port=$(awk '/^PORT /{print $2}' "$work/rx.out")

start_telehub "$work"

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
