#!/usr/bin/env bash
# Fuzzes the targets of fuzz/ (docs/security.md, "Fuzzing") with cargo-fuzz on nightly:
# each target (all, or those named) for FUZZ_SECONDS (default 240), one at a time,
# starting from its kept corpus; then merges what it found into fuzz/corpus/<target>/,
# minimized (only inputs that add coverage stay). Prints one figures line per target.
# A crash leaves its input in fuzz/artifacts/<target>/ and stops the script (exit 1).
#
#   scripts/fuzz.sh                  # every target, 4 minutes each
#   FUZZ_SECONDS=30 scripts/fuzz.sh callout webhook
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-240}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
for t in "${targets[@]}"; do
  work="$(mktemp -d)"
  log="$(mktemp)"
  trap 'rm -rf "$work" "$log"' EXIT
  # New inputs go to $work; the kept corpus is only read.
  if ! cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz $t: CRASH (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
  rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')"
  # Minimize: a fresh corpus of the inputs that cover something, old and new.
  merged="$(mktemp -d)"
  cargo +nightly fuzz run "$t" "$merged" "corpus/$t" "$work" -- -merge=1 >/dev/null 2>&1
  rm -f "corpus/$t"/*
  cp "$merged"/* "corpus/$t/"
  rm -rf "$merged" "$work" "$log"
  trap - EXIT
  echo "fuzz $t: ${secs}s, ${execs:-?} execs (${rate:-?}/s), 0 crashes, cov ${cov:-?}, corpus $(ls "corpus/$t" | wc -l) files $(du -sk "corpus/$t" | cut -f1) KB"
done
