#!/usr/bin/env bash
# What the load suite's peers need (`chaos load --peers`, BENCHMARKS.md "Peers"):
# Debian's redis-server; taskiq + taskiq-nats and Celery (pinned in
# benchmarks/peers/requirements.txt) in a virtualenv at benchmarks/peers/.venv; the
# apalis peer (benchmarks/peers/apalis, its own Cargo.lock) built in release mode.
# Idempotent and quick when everything is present. Prints the three things it made,
# one a line: the redis-server binary, the virtualenv, the apalis binary.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=benchmarks/peers

command -v redis-server >/dev/null 2>&1 || scripts/apt-install.sh redis-server
# Debian's package enables a system service; on a machine with systemd running, the
# suite still starts its own servers on their own ports and never uses that one.

venv="$peers/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$peers/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing the Python peers into $venv..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$peers/requirements.txt" >&2
  echo "$want" > "$stamp"
fi

echo "building the apalis peer..." >&2
cargo build --quiet --release --locked --manifest-path "$peers/apalis/Cargo.toml" >&2

command -v redis-server
echo "$venv"
echo "$peers/apalis/target/release/gf-peer-apalis"
