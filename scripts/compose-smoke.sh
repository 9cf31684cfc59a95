#!/usr/bin/env bash
# The compose smoke test (CI, from scripts/test.sh): the docker-compose deployment built
# from this checkout, on the Docker engine of this machine, with no registry.
#   1. builds the images (the gf image from the test build's binary, tagged
#      gigafactory/gf:test; quick when nothing changed);
#   2. `docker-compose up -d --scale worker=2` exactly as docs/compose.md says, secured
#      with secrets made for this run (a fresh machine's first start), waits for every
#      container to be healthy, checks that both workers enrolled as factories, runs a
#      job through it as the operator (scripts/gf-compose.sh), checks that one
#      coordinator reports itself leader on /metrics, and `down -v`;
#   3. the chaos suite's worker-kill scenario on its own compose project: 200 jobs, one
#      worker container killed (docker kill -s KILL) mid-job, every job succeeds and
#      its side effect happens once (the same invariant checker as the full suite).
# Every project is named gfcci<pid>…, bounded in time, and removed at the end even on
# failure. GF_SKIP_COMPOSE_SMOKE=1 skips it (a machine without Docker).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${GF_SKIP_COMPOSE_SMOKE:-}" = 1 ]; then
  echo "compose smoke: skipped (GF_SKIP_COMPOSE_SMOKE=1)"
  exit 0
fi
if ! docker info >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  echo "error: the compose smoke test needs a running Docker engine and docker-compose" >&2
  echo "       (Debian: apt-get install docker.io docker-compose); GF_SKIP_COMPOSE_SMOKE=1 skips it" >&2
  exit 1
fi

started=$(date +%s)
target="${CARGO_TARGET_DIR:-target}"
prefix="gfcci$$"
export GF_IMAGE=gigafactory/gf:test
# This run's secrets, made by scripts/docker-images.sh as on a fresh machine.
GF_COMPOSE_SECRETS=$(mktemp -d /tmp/gfcci-secrets.XXXXXX)
export GF_COMPOSE_SECRETS

cleanup() {
  local ids
  ids=$(docker ps -aq --filter "name=^${prefix}" || true)
  [ -z "$ids" ] || docker rm -f -v $ids >/dev/null 2>&1 || true
  for n in $(docker network ls -q --filter "name=^${prefix}" || true); do
    docker network rm "$n" >/dev/null 2>&1 || true
  done
  for v in $(docker volume ls -q --filter "name=^${prefix}" || true); do
    docker volume rm "$v" >/dev/null 2>&1 || true
  done
  rm -rf "$GF_COMPOSE_SECRETS"
}
trap cleanup EXIT

cargo build --locked -p gf -p chaos
GF_BIN="$target/debug/gf" scripts/docker-images.sh

# 2. The deployment as an operator starts it (without the published ports of
# docker-compose.override.yml, which another project on this machine may hold).
up="${prefix}up"
compose=(docker-compose -p "$up" -f docker-compose.yml)
echo "compose smoke: docker-compose up -d --scale worker=2 ($up)"
timeout 300 "${compose[@]}" up -d --scale worker=2
deadline=$((SECONDS + 180))
while :; do
  # Every service healthy; `enroll`, a one-shot, exited 0.
  states=$(docker ps -a --filter "name=^${up}_" --format '{{.Names}} {{.Status}}')
  if ! grep -v '_enroll_1 Exited (0)' <<<"$states" | grep -qv '(healthy)'; then break; fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "error: not every container is healthy after 180 s:" >&2
    echo "$states" >&2
    "${compose[@]}" logs --tail 30 >&2 || true
    exit 1
  fi
  sleep 1
done
echo "$states"
gf() { COMPOSE_PROJECT_NAME="$up" COMPOSE_FILE=docker-compose.yml timeout 60 scripts/gf-compose.sh "$@"; }
factories=$(gf factory list --json | grep -c '"enrolled_via"' || true)
if [ "$factories" != 2 ]; then
  echo "error: $factories workers enrolled as factories, not 2:" >&2
  gf factory list >&2 || true
  exit 1
fi
id=$(gf submit --wait -- sh -c 'echo compose smoke ok' | head -1)
out=$(gf logs "$id")
if [ "$out" != "compose smoke ok" ]; then
  echo "error: job $id through the compose deployment printed '$out'" >&2
  exit 1
fi
echo "compose smoke: 2 workers enrolled, job $id ran in a worker container over TLS"
# The job ran, so a scheduler leader exists: exactly one coordinator reports it on
# /metrics (what Prometheus, the dashboard and GigafactoryNoSchedulerLeader read).
leaders=0
for c in coordinator-1 coordinator-2; do
  m=$(timeout 30 "${compose[@]}" exec -T "$c" wget -qO- http://127.0.0.1:8080/metrics)
  if grep -qx 'gf_scheduler_leader 1' <<<"$m"; then leaders=$((leaders + 1)); fi
done
if [ "$leaders" != 1 ]; then
  echo "error: $leaders coordinators report gf_scheduler_leader 1 on /metrics, not 1" >&2
  exit 1
fi
timeout 120 "${compose[@]}" down -v -t 5

# 3. A worker container killed mid-job, 200 jobs, the audit's invariants.
CHAOS_COMPOSE_PREFIX="${prefix}k" timeout 600 "$target/debug/chaos" --backend compose \
  scenario worker-kill --jobs 200 --report "$target/compose-smoke.json"

echo "compose smoke: passed in $(($(date +%s) - started)) s"
