#!/usr/bin/env bash
# Builds tokenwatch's container image from scratch with buildah: no
# registry, no Docker daemon, no base image. It holds the agent binary
# (debug info stripped), the shared libraries it links (glibc's loader,
# libc, libm, libgcc_s) and the system's CA bundle (rustls loads it for the
# Kubernetes client and for an OTLP collector with a public certificate),
# and nothing else: no shell, no package manager.
#
#   deploy/image/build.sh BINARY IMAGE [OCI_ARCHIVE]
#
# BINARY is a built `tokenwatch` (`cargo xtask image` builds the release one
# and calls this). IMAGE is the name to commit, e.g. tokenwatch:0.1.0. With
# OCI_ARCHIVE the image is also written there as an OCI archive, which
# `ctr -n k8s.io images import` loads into containerd. To publish it:
#   buildah push IMAGE docker://REGISTRY/tokenwatch:TAG
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 BINARY IMAGE [OCI_ARCHIVE]" >&2
    exit 2
fi
binary=$1 image=$2 archive=${3:-}
[ -x "$binary" ] || { echo "$0: $binary is not an executable" >&2; exit 2; }
command -v buildah >/dev/null || { echo "$0: buildah is not installed (cargo xtask setup installs it)" >&2; exit 2; }
# vfs works everywhere (inside containers and on any filesystem); the
# image is small, so its copies cost little.
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}

stage=$(mktemp -d)
container=""
cleanup() {
    rm -rf "$stage"
    if [ -n "$container" ]; then buildah rm "$container" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

mkdir -p "$stage/usr/bin"
objcopy --strip-debug "$binary" "$stage/usr/bin/tokenwatch"
# The dynamic loader and every library ldd resolves, at the paths the
# binary asks for (copied, not linked).
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
done

ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || { echo "$0: $ca_bundle is missing (Debian's ca-certificates)" >&2; exit 2; }
mkdir -p "$stage/etc/ssl/certs"
cp -L "$ca_bundle" "$stage$ca_bundle"

container=$(buildah from scratch)
buildah copy --quiet "$container" "$stage" / >/dev/null
buildah config \
    --entrypoint '["/usr/bin/tokenwatch"]' \
    --cmd agent \
    --user 0:0 \
    --workingdir / \
    --label org.opencontainers.image.title=tokenwatch \
    --label org.opencontainers.image.description="Who is using our ServiceAccount tokens? A node agent." \
    "$container"
buildah commit --quiet "$container" "$image" >/dev/null
echo "built $image ($(du -sh "$stage" | cut -f1) on disk)" >&2
if [ -n "$archive" ]; then
    rm -f "$archive"
    buildah push --quiet "$image" "oci-archive:$archive:$image"
    echo "wrote $archive" >&2
fi
