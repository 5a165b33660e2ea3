#!/usr/bin/env bash
# Quick start: install what is missing, build release binaries, run a local
# cluster in the foreground with its share mounted (Ctrl-C stops it). Extra
# arguments go to `cairn dev` instead of the default `--mount`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH=$HOME/.cargo/bin:$PATH
cargo build --release --bins
# The share is mounted at ./cairn-dev/mnt (FUSE) unless other arguments
# say otherwise (a single node, `--nodes 1`, serves no native protocol).
if [[ $# -eq 0 ]]; then
  set -- --mount "$PWD/cairn-dev/mnt"
fi
exec ./target/release/cairn dev "$@"
