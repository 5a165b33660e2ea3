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
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
cargo build --release --workspace --bins
cargo test --release --workspace --no-fail-fast -- --test-threads="${CAIRN_TEST_THREADS:-4}"
