# Sourced by the bench scripts that drive one telehub (commands.sh, webhooks.sh):
# starts it on private loopback ports and stops it by PID.
#
# start_telehub WORK: runs $BIN (default target/release/telehub) with admin token $TOKEN,
# anonymous devices allowed and the rate limits off (every client is on 127.0.0.1),
# data in WORK/data, logs in WORK/hub.err; sets `hub` (its PID), `mqtt_port` and
# `http_port` once it has started. The caller's EXIT trap kills "$hub".

BIN=${TELEHUB_BIN:-target/release/telehub}
TOKEN=${TOKEN:-bench-admin-token-0123456789abcdef}

start_telehub() {
  local work=$1
  printf '[auth.rate]\nconnections_per_ip = 0\nmessages_per_device = 0\nhttp_requests = 0\n' > "$work/telehub.toml"
  TELEHUB_ADMIN_TOKEN=$TOKEN RUST_LOG=${RUST_LOG:-info} "$BIN" serve --config "$work/telehub.toml" \
    --data-dir "$work/data" --allow-anonymous --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --log-format json 2> "$work/hub.err" &
  hub=$!
  until grep -q "telehub started" "$work/hub.err" 2>/dev/null; do
    kill -0 "$hub" 2>/dev/null || { cat "$work/hub.err"; exit 1; }
    sleep 0.05
  done
  mqtt_port=$(grep -o '"mqtt":"127.0.0.1:[0-9]*"' "$work/hub.err" | head -1 | grep -o '[0-9]*"$' | tr -d '"')
  http_port=$(grep -o '"http":"127.0.0.1:[0-9]*"' "$work/hub.err" | head -1 | grep -o '[0-9]*"$' | tr -d '"')
}
