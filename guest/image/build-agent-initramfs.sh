#!/usr/bin/env bash
# Build the Skiff sandbox initramfs: an uncompressed newc cpio whose /init
# is skiff-agent (static, profile `agent`), plus the empty mount points and
# /dev/console it needs. No shell or busybox: container root filesystems
# come from the host (virtio-fs or a block device), and every file here
# costs guest boot time (the emulated kernel unpacks ~2 s per MB).
#
#   guest/image/build-agent-initramfs.sh [OUT_DIR]   (default: $SKIFF_GUEST_OUT or build/guest)
#
# SKIFF_AGENT_BIN=PATH uses a prebuilt agent instead of building one.
# Result cached in ${SKIFF_CACHE:-$HOME/.cache/skiff}/initramfs-agent/<key>/
# (key = sha256 of this script, mkcpio.py and the agent binary) and linked
# as OUT_DIR/initramfs.cpio.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_dir=${1:-${SKIFF_GUEST_OUT:-$repo/build/guest}}
cache=${SKIFF_CACHE:-$HOME/.cache/skiff}
cargo=${CARGO:-cargo}

log() { printf 'initramfs-agent: %s\n' "$*" >&2; }
die() { printf 'initramfs-agent: ERROR: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is missing (apt-get install python3)"

agent=${SKIFF_AGENT_BIN:-}
if [ -z "$agent" ]; then
    log "building skiff-agent (static, profile agent)"
    (cd "$repo" && nice "$cargo" rustc --locked --profile agent -p skiff-agent --bin skiff-agent \
        -- -C target-feature=+crt-static) >&2
    agent=$repo/target/agent/skiff-agent
fi
[ -x "$agent" ] || die "$agent is not an executable"
if command -v readelf >/dev/null && LC_ALL=C readelf -l "$agent" | grep -q INTERP; then
    die "$agent is dynamically linked: PID 1 in the guest has no libraries"
fi

key=$({
    cat "${BASH_SOURCE[0]}" "$here/mkcpio.py"
    sha256sum < "$agent"
} | sha256sum | cut -c1-16)
result_dir=$cache/initramfs-agent/$key
result=$result_dir/initramfs.cpio

link_result() {
    mkdir -p "$out_dir"
    ln -sfn "$result" "$out_dir/initramfs.cpio"
    log "$out_dir/initramfs.cpio -> $result"
}

if [ -f "$result" ]; then
    log "cached ($key)"
    link_result
    exit 0
fi

mkdir -p "$result_dir"
work=$(mktemp -d "$result_dir/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

{
    # Mount points the agent uses (proc, sys, dev, run) and /etc for the
    # resolv.conf it writes; /tmp and /mnt for storages.
    for d in dev proc sys run tmp etc mnt root; do
        echo "dir /$d 0755 0 0"
    done
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "file /init $agent 0755 0 0"
} > "$work/list"

python3 "$here/mkcpio.py" "$work/list" "$work/initramfs.cpio"
mv -f "$work/initramfs.cpio" "$result"
log "built $(stat -c %s "$result") bytes (agent $(stat -c %s "$agent")), cached as $key"
link_result
