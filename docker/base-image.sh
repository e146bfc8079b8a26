#!/usr/bin/env bash
# Build a minimal Debian bookworm base image with Python 3.11 and import it into podman,
# for machines where no container registry (and so no python:3.11-slim) is reachable.
#
#   docker/base-image.sh [TAG] [WORKDIR]      (default TAG localhost/debian:bookworm, WORKDIR build/base)
#
# Idempotent: does nothing when TAG already exists. Needs root, debootstrap and podman;
# fetches only Debian packages (about 40 s and 60 MB here). Bookworm's python3 is 3.11, the same
# ABI as the wheels in ./wheelhouse.
set -euo pipefail
TAG=${1:-localhost/debian:bookworm}
WORK=${2:-build/base}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}
# python3-venv brings ensurepip (pip + setuptools wheels) so `python3 -m venv` works in the image.
INCLUDE=${BASE_INCLUDE:-python3,python3-venv,ca-certificates}

if podman image exists "$TAG"; then
  echo "base image $TAG exists; skipping (podman rmi $TAG to rebuild)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing: run 'make tools-podman'" >&2; exit 1; }

rootfs="$WORK/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $SUITE ($INCLUDE) into $rootfs"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
# Trim what a container never uses: package caches and lists, docs, man pages, locales.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log
tar --numeric-owner -C "$rootfs" -c . | podman import \
  --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
  --message "debootstrap --variant=minbase --include=$INCLUDE $SUITE" - "$TAG"
podman image inspect --format '{{.Id}} {{.Size}}' "$TAG"
