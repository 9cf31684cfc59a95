#!/usr/bin/env bash
# Runs a local Gigafactory fleet: builds `gf`, installs nats-server if missing, and runs
# `gf dev` (NATS, a coordinator, three workers, demo jobs). Extra arguments go to
# `gf dev` (see `gf dev --help`). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
GF_NATS_SERVER="$(scripts/install-nats.sh | tail -1)"
export GF_NATS_SERVER
cargo build --release -p gf
exec target/release/gf dev "$@"
