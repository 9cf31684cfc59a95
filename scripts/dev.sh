#!/usr/bin/env bash
# Runs a local Gigafactory fleet: builds `gf`, installs nats-server if missing, and runs
# `gf dev` (NATS, a coordinator, three workers, demo jobs), secured by default (see
# docs/security.md, "gf dev"). Extra arguments go to `gf dev` (see `gf dev --help`).
# Ctrl-C (or SIGTERM, or closing the terminal) stops everything it started.
#
# GF_DEV_PROFILE=debug builds and runs the debug `gf` instead of the release one (much
# quicker to build when a debug build is already warm).
set -euo pipefail
cd "$(dirname "$0")/.."
GF_NATS_SERVER="$(scripts/install-nats.sh | tail -1)"
export GF_NATS_SERVER
case "${GF_DEV_PROFILE:-release}" in
  release) cargo build --release -p gf; bin="${CARGO_TARGET_DIR:-target}/release/gf" ;;
  debug | dev) cargo build -p gf; bin="${CARGO_TARGET_DIR:-target}/debug/gf" ;;
  *) echo "GF_DEV_PROFILE must be release or debug, not ${GF_DEV_PROFILE}" >&2; exit 2 ;;
esac
exec "$bin" dev "$@"
