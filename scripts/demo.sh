#!/usr/bin/env bash
# `make demo`: run a container in a Skiff sandbox through a real containerd.
# Starts a private containerd (Debian's) on a temporary socket with this
# build's containerd-shim-skiff-v2 on its PATH, imports a locally built
# busybox image, runs one container with `ctr run --runtime
# io.containerd.skiff.v2`, prints its output and the sandbox's boot
# timeline from the shim's log, then stops containerd and removes
# everything it made.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cache=${SKIFF_CACHE:-$HOME/.cache/skiff}
shim_dir=$root/target/release
[ -x "$shim_dir/containerd-shim-skiff-v2" ] || {
    echo "demo: $shim_dir/containerd-shim-skiff-v2 is missing: run make build" >&2
    exit 1
}

work=$(mktemp -d /tmp/skiff-demo.XXXXXX)
cleanup() { "$here/containerd-private.sh" stop "$work/ctrd" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

echo "== starting a private containerd"
sock=$("$here/containerd-private.sh" start "$work/ctrd" "$shim_dir")
ctr() { command ctr -a "$sock" -n skiff "$@"; }

echo "== importing skiff.local/busybox:latest"
mkdir -p "$cache/images"
image=$cache/images/skiff.local_busybox_latest.tar
"$here/build-oci-image.sh" "$image" skiff.local/busybox:latest
ctr images import "$image" >/dev/null

id=demo-$$
echo "== ctr run --rm --runtime io.containerd.skiff.v2 skiff.local/busybox:latest $id"
echo "   (boots the pod's VM inside the shim; tens of seconds where KVM emulates the guest kernel)"
start=$(date +%s.%N)
ctr run --rm --runtime io.containerd.skiff.v2 skiff.local/busybox:latest "$id" \
    sh -c 'echo "Hello from a Skiff sandbox: $(uname -sr) on $(nproc) vCPU"'
end=$(date +%s.%N)

echo "== timeline (shim log)"
grep -E "boot timeline|container $id (created|started)" "$work/ctrd/containerd.log" \
    | sed -e 's/^[^ ]* *INFO */   /'
awk -v s="$start" -v e="$end" 'BEGIN { printf "   ctr run --rm end to end: %.1f s\n", e - s }'
