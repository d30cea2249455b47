#!/usr/bin/env bash
# Unpack the containerd releases kept beside the work tree so the shim and
# CRI tests can run on them besides the system's containerd (Debian 12's
# 1.6.20): each VERSION/ under $SKIFF_CONTAINERD_RELEASES (default
# ../shared/containerd) holds containerd.xz, ctr.xz and SHA256SUMS of the
# uncompressed files.  Each is unpacked once into
# $SKIFF_CACHE/containerd-VERSION (checked against SHA256SUMS) and the
# directories are printed on stdout, colon-separated, for
# SKIFF_CONTAINERD_DIRS.  Without any, it prints nothing and says so in
# one line on stderr; it never fails the caller for a missing release.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf 'containerd-releases: %s\n' "$*" >&2; }
repo=$(cd "$here/.." && pwd)
src=${SKIFF_CONTAINERD_RELEASES:-}
if [ -z "$src" ]; then
    src=$repo/../shared/containerd
    origin=$(git -C "$repo" config --get remote.origin.url 2>/dev/null || true)
    if [ ! -d "$src" ] && [ -n "$origin" ] && [ -d "$origin/../shared/containerd" ]; then
        src=$origin/../shared/containerd
    fi
fi
cache=${SKIFF_CACHE:-$HOME/.cache/skiff}

dirs=()
for rel in "$src"/*/; do
    [ -f "$rel/SHA256SUMS" ] && [ -f "$rel/containerd.xz" ] && [ -f "$rel/ctr.xz" ] || continue
    version=$(basename "$rel")
    out=$cache/containerd-$version
    if ! (cd "$out" 2>/dev/null && sha256sum --quiet -c "$rel/SHA256SUMS" >/dev/null 2>&1); then
        log "unpacking containerd $version into $out"
        tmp=$(mktemp -d "$cache/.containerd-$version.XXXXXX")
        xz -dc "$rel/containerd.xz" >"$tmp/containerd"
        xz -dc "$rel/ctr.xz" >"$tmp/ctr"
        chmod 0755 "$tmp/containerd" "$tmp/ctr"
        if ! (cd "$tmp" && sha256sum --quiet -c "$rel/SHA256SUMS"); then
            rm -rf "$tmp"
            log "containerd $version: checksum mismatch, skipped"
            continue
        fi
        rm -rf "$out"
        mv "$tmp" "$out"
    fi
    dirs+=("$out")
done

if [ ${#dirs[@]} -eq 0 ]; then
    log "no containerd release in $src: the shim and CRI tests run on the system's containerd only"
    exit 0
fi
log "the shim and CRI tests run on the system's containerd and on ${dirs[*]##*/containerd-}"
(IFS=:; echo "${dirs[*]}")
