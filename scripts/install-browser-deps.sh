#!/usr/bin/env bash
# What the browser and API-fuzz tests need: Debian's chromium (driven headless), and
# Python's playwright (used with executable_path: no browser download) and
# schemathesis. Idempotent; quick when everything is present.
set -euo pipefail
command -v chromium >/dev/null 2>&1 || "$(dirname "$0")/apt-install.sh" chromium
if ! python3 -c "import playwright, schemathesis" 2>/dev/null; then
  echo "installing playwright and schemathesis (Python)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check "playwright>=1.40" "schemathesis>=4,<5" >&2
fi
