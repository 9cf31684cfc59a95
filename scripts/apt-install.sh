#!/usr/bin/env bash
# Installs the Debian packages named as arguments (the callers check what is missing,
# so `apt-get update` only runs when something is). Uses sudo when not root; fails with
# a clear message when neither is possible.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: $0 PACKAGE..." >&2; exit 2; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "error: need root (or sudo) to install $*" >&2
    exit 1
  fi
  sudo="sudo"
fi
echo "installing $* (Debian packages)..." >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends "$@" >&2
