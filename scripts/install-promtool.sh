#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package) and amtool (`prometheus-alertmanager`)
# for the deploy tests. Idempotent and quick when both are present: `apt-get update`
# runs only when a package is missing. Prints the path of promtool on its last line.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)

if [ "${#missing[@]}" -gt 0 ]; then
  "$(dirname "$0")/apt-install.sh" "${missing[@]}"
fi
command -v promtool
