#!/usr/bin/env bash
# Quick start: install what is missing, build release binaries, run a local
# cluster in the foreground (Ctrl-C stops it). Extra arguments go to `cairn dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH=$HOME/.cargo/bin:$PATH
cargo build --release --bins
exec ./target/release/cairn dev "$@"
