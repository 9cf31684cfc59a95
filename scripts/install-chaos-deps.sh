#!/usr/bin/env bash
# What the full chaos suite needs beyond the Rust toolchain: nats-server, and Debian's
# `faketime` (libfaketime) for the clock-skew scenario. Idempotent and quick when both
# are present: `apt-get update` runs only when faketime is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-nats.sh >/dev/null
command -v faketime >/dev/null 2>&1 || scripts/apt-install.sh faketime
