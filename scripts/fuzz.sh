#!/usr/bin/env bash
# Fuzzes the native protocol's frame and message decoders with libFuzzer
# (cargo fuzz) for FUZZ_SECONDS (default 60). A crash fails the run and
# leaves its input under proto/fuzz/artifacts/.
set -uo pipefail
cd "$(dirname "$0")/../proto"
export PATH=$HOME/.cargo/bin:$PATH
seconds=${FUZZ_SECONDS:-60}
# Its own target directory: the fuzz build uses nightly and sanitizer flags.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/../target}/fuzz
rm -rf fuzz/artifacts
mkdir -p fuzz/corpus/wire_decode
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo +nightly fuzz run wire_decode -- -max_total_time="$seconds" -max_len=4096 \
  -print_final_stats=1 >"$log" 2>&1
status=$?
grep -E "^(Done|stat::number_of_executed_units)|panicked|SUMMARY" "$log"
if ((status != 0)); then
  tail -n 40 "$log"
  echo "fuzzing failed (exit $status)"
  exit "$status"
fi
echo "fuzz: wire_decode ran ${seconds}s without a crash"
