#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, and the
# integration tests that run real cairn-server processes with real clients.
# Installs what the tests need first. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH=$HOME/.cargo/bin:$PATH
# Everything builds in the release profile: RocksDB's C++ is compiled once.
cargo fmt --all -- --check
# Build before clippy: clippy then reuses the compiled RocksDB.
cargo build --release --workspace --bins
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --all-targets --no-fail-fast -- \
  --test-threads="${CAIRN_TEST_THREADS:-4}" 2>&1 | tee "$log" || status=$?
# A short fuzz run of the native protocol's decoders.
./scripts/fuzz.sh 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole suite.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
