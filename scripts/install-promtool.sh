#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package) and amtool (`prometheus-alertmanager`)
# for the deploy tests. Idempotent and quick when both are present: `apt-get update`
# runs only when a package is missing. Prints the path of promtool on its last line.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "error: need root (or sudo) to install ${missing[*]}" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${missing[*]} (Debian packages)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >&2
  # The packages ship services; policy-rc.d keeps apt from starting them here.
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v promtool
