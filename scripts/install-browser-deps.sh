#!/usr/bin/env bash
# What the browser and API-fuzz tests need: Debian's chromium (driven headless), and
# Python's playwright (used with executable_path: no browser download) and
# schemathesis. Idempotent; quick when everything is present.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >&2
fi
if ! python3 -c "import playwright, schemathesis" 2>/dev/null; then
  echo "installing playwright and schemathesis (Python)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check "playwright>=1.40" "schemathesis>=4,<5" >&2
fi
