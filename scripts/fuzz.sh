#!/usr/bin/env bash
# Runs each cargo-fuzz target for a while (default 60 s): `bash scripts/fuzz.sh [seconds]`.
# Installs cargo-fuzz if missing. libFuzzer needs nightly compiler flags; on the stable
# toolchain RUSTC_BOOTSTRAP=1 allows them. Each target starts from its committed seeds
# (fuzz/seeds/<target>, read only) and grows fuzz/corpus/<target> (gitignored, the first
# corpus directory, which libFuzzer writes to). Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in mqtt_decode mqtt_session; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048
done
