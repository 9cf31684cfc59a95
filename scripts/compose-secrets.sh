#!/usr/bin/env bash
# The secrets of the secured docker-compose deployment, made on this host with no
# network: a local CA and NATS' certificate (Debian's openssl), and `gf admin init`
# (run in the gf image). Idempotent: what exists and is still good is kept, so running
# it again changes nothing (scripts/docker-images.sh runs it after building the images).
#
#   DIR/ca/ca.pem, ca.key    the local CA (10 years). Only this host holds its key:
#                            it is mounted into no container.
#   DIR/ca.pem               the CA's certificate: every gf container trusts it
#                            (SSL_CERT_FILE); so do operators' clients on the host.
#   DIR/nats/                NATS' certificate and key (for the names nats, nats-1,
#                            nats-2, nats-3, localhost and 127.0.0.1, client and server
#                            use: client TLS and the mutually authenticated routes),
#                            and ca.pem; remade when it expires within 30 days or was
#                            not signed by the CA in DIR/ca.
#   DIR/gf/                  `gf admin init`: the callout issuer key, the coordinators'
#                            nkey, the passwords of gf-auth, gf-admin (operators) and
#                            gf-sys, and nats.conf (accounts, the auth callout, TLS),
#                            which every NATS node includes. Made once; `--force`
#                            replaces every credential (then `docker-compose down -v`:
#                            the stores hold factories enrolled under the old issuer).
#   DIR/gf/api-tokens        the hash of the operator's HTTP API token, the file the
#                            coordinators' `--api-tokens-file` reads;
#   DIR/api/operator.token   the token itself (mode 0600, mounted into no container):
#                            the dashboard's `#token=` and `Authorization: Bearer`.
#
# Environment: GF_COMPOSE_SECRETS (the default DIR, as docker-compose.yml reads it),
# GF_IMAGE (the gf image that runs `gf admin init`, default gigafactory/gf:local),
# GF_BIN (run this gf binary instead of the image).
# Usage: scripts/compose-secrets.sh [--force] [DIR]   (default: deploy/secrets)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

force=
if [ "${1:-}" = --force ]; then force=1; shift; fi
dir="${1:-${GF_COMPOSE_SECRETS:-$root/deploy/secrets}}"
mkdir -p "$dir/ca" "$dir/nats" "$dir/gf"
dir=$(cd "$dir" && pwd)
cd "$root"
chmod 700 "$dir" "$dir/ca"
command -v openssl >/dev/null 2>&1 || scripts/apt-install.sh openssl

# 1. The CA.
if [ ! -s "$dir/ca/ca.key" ] || [ ! -s "$dir/ca/ca.pem" ]; then
  (umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca/ca.key")
  openssl req -x509 -new -key "$dir/ca/ca.key" -sha256 -days 3650 \
    -subj "/O=Gigafactory/CN=Gigafactory compose local CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca/ca.pem" 2>/dev/null
  rm -f "$dir/nats/server.pem"
  echo "compose secrets: made a local CA in $dir/ca" >&2
fi
cp "$dir/ca/ca.pem" "$dir/ca.pem"
cp "$dir/ca/ca.pem" "$dir/nats/ca.pem"

# 2. NATS' certificate: client TLS on :4222 and the routes between the nodes (mutual
# TLS, so it is also a client certificate).
if [ ! -s "$dir/nats/server.pem" ] || [ ! -s "$dir/nats/server.key" ] ||
  ! openssl x509 -checkend $((30 * 86400)) -noout -in "$dir/nats/server.pem" >/dev/null 2>&1 ||
  ! openssl verify -CAfile "$dir/ca/ca.pem" "$dir/nats/server.pem" >/dev/null 2>&1; then
  (umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out "$dir/nats/server.key")
  openssl req -new -key "$dir/nats/server.key" -subj "/O=Gigafactory/CN=nats" \
    -out "$dir/nats/server.csr"
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=DNS:nats,DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1" \
    >"$dir/nats/server.ext"
  openssl x509 -req -in "$dir/nats/server.csr" -CA "$dir/ca/ca.pem" -CAkey "$dir/ca/ca.key" \
    -CAcreateserial -days 825 -sha256 -extfile "$dir/nats/server.ext" \
    -out "$dir/nats/server.pem" 2>/dev/null
  rm -f "$dir/nats/server.csr" "$dir/nats/server.ext" "$dir/ca/ca.srl"
  echo "compose secrets: made NATS' certificate in $dir/nats" >&2
fi

# 3. gf admin init, once. The TLS paths are where the NATS containers mount DIR/nats.
# A `docker-compose up` run before this script leaves an empty directory where Docker
# found no file to bind-mount (nats.conf, api-tokens): those are removed, and an init
# that did not finish (no nats.conf beside the issuer key) is done again.
for f in "$dir/gf/nats.conf" "$dir/gf/api-tokens"; do
  if [ -d "$f" ]; then
    rmdir "$f" 2>/dev/null || {
      echo "compose secrets: $f is a directory with files in it; move it away and run again" >&2
      exit 1
    }
  fi
done
if [ ! -s "$dir/gf/issuer.nk" ] || [ ! -s "$dir/gf/nats.conf" ] || [ -n "$force" ]; then
  image="${GF_IMAGE:-gigafactory/gf:local}"
  if [ -z "${GF_BIN:-}" ] && ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "compose secrets: image $image not found; build it first (scripts/docker-images.sh gf)" >&2
    echo "  or point GF_BIN at a gf binary (e.g. GF_BIN=target/release/gf)" >&2
    exit 1
  fi
  args=(admin init --tls-cert /etc/nats/tls/server.pem --tls-key /etc/nats/tls/server.key)
  # An unfinished init (keys but no nats.conf) was never used by a server: redo it.
  if [ -n "$force" ] || [ -s "$dir/gf/issuer.nk" ]; then args+=(--force); fi
  if [ -n "${GF_BIN:-}" ]; then
    "$GF_BIN" "${args[@]}" "$dir/gf" >/dev/null
  else
    docker run --rm --user "$(id -u):$(id -g)" -v "$dir/gf:/secrets" \
      "$image" "${args[@]}" /secrets >/dev/null
  fi
  echo "compose secrets: gf admin init $dir/gf" >&2
fi

# 4. The HTTP API's operator token: the coordinators hold only its SHA-256.
if [ ! -s "$dir/gf/api-tokens" ] || [ ! -s "$dir/api/operator.token" ] || [ -n "$force" ]; then
  mkdir -p "$dir/api"
  chmod 700 "$dir/api"
  token="gf_$(openssl rand -hex 24)"
  (umask 077 && printf '%s\n' "$token" >"$dir/api/operator.token")
  {
    echo "# HTTP API tokens (NAME:ROLE:SHA256 of the token), read by gf coordinator --api-tokens-file"
    printf 'operator:operator:%s\n' "$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)"
  } >"$dir/gf/api-tokens"
  echo "compose secrets: made the HTTP API's operator token in $dir/api/operator.token" >&2
fi
echo "$dir"
