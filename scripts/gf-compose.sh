#!/usr/bin/env bash
# Runs a gf command as the operator of the docker-compose deployment: inside the
# coordinator-1 container, logged in to NATS as gf-admin (its password is in the
# secrets mounted there), over TLS. For example:
#   scripts/gf-compose.sh submit --wait -- sh -c 'echo hello from a container'
#   scripts/gf-compose.sh factory list
# docker-compose's own variables choose the project: COMPOSE_PROJECT_NAME, COMPOSE_FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
exec docker-compose exec -T coordinator-1 /bin/sh -ec \
  'export GF_NATS_URL="tls://gf-admin:$(cat /etc/gigafactory/secrets/admin.pass)@nats:4222"; exec gf "$@"' \
  gf "$@"
