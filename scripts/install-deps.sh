#!/usr/bin/env bash
# Installs what building and testing Cairn needs on Debian/Ubuntu, if missing.
# Idempotent and quiet when everything is already there.
set -euo pipefail

# libclang-dev: RocksDB's bindings. fuse3: fusermount3 for mounts. The rest are
# the real clients and baselines the tests and benchmarks drive.
PACKAGES=(build-essential pkg-config libclang-dev curl ca-certificates python3 python3-requests
          fuse3 nginx fio b3sum iproute2 nftables util-linux procps strace rsync git sqlite3 tar)

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  if [[ -x $HOME/.cargo/bin/cargo ]]; then
    export PATH=$HOME/.cargo/bin:$PATH
  else
    echo "installing the Rust toolchain (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
  fi
fi

# The fuzzer (`scripts/fuzz.sh`): cargo fuzz needs a nightly compiler,
# which comes through rustup (installed here if Rust came from elsewhere).
if ! command -v rustup >/dev/null && [[ ! -x $HOME/.cargo/bin/rustup ]]; then
  echo "installing rustup (for the nightly toolchain cargo fuzz needs)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --no-modify-path
fi
export PATH=$HOME/.cargo/bin:$PATH
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "installing the nightly Rust toolchain (for cargo fuzz)"
  rustup toolchain install nightly --profile minimal >/dev/null
fi
if ! command -v cargo-fuzz >/dev/null && [[ ! -x $HOME/.cargo/bin/cargo-fuzz ]]; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
