#!/usr/bin/env bash
# Everything the test suite needs beyond the Rust toolchain: nats-server, promtool and
# amtool (deploy tests), the Python packages the cross-language client test uses, and the
# browser and API-fuzz test tools. Idempotent; quick when present.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-nats.sh >/dev/null
scripts/install-promtool.sh >/dev/null
if ! python3 -c "import nats, jsonschema" 2>/dev/null; then
  echo "installing Python test packages..." >&2
  python3 -m pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt >&2
fi
scripts/install-browser-deps.sh
