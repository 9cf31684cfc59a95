#!/usr/bin/env bash
# The whole test suite: installs what the tests need (idempotent, quick when present),
# checks formatting and lints, then runs every test with cargo-nextest against real
# nats-servers the tests start themselves, then the docker-compose smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
GF_NATS_SERVER="$(scripts/install-nats.sh | tail -1)"
export GF_NATS_SERVER
echo "using $GF_NATS_SERVER ($("$GF_NATS_SERVER" --version))"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast "$@"
# The docker-compose deployment, up and under a worker kill (~95 s; docs/compose.md).
scripts/compose-smoke.sh
