#!/usr/bin/env bash
# The whole test suite: installs the real clients the end-to-end tests drive
# (mosquitto clients, paho-mqtt) if they are missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients python3-paho-mqtt python3-requests python3-jwt python3-cryptography curl openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
cargo test --workspace --locked --doc
