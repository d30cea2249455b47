#!/usr/bin/env bash
# Build the Skiff debug initramfs: an uncompressed newc cpio with
# busybox-static (+ applet links in /bin and /sbin), /dev/console, a
# static, libc-free C /init (init.c) and /bin/vsock-test (vsock-test.c).
#
# Applet links: on a software-emulated KVM the kernel spends ~18 ms per
# initramfs entry, so by default only a core set of applets is linked
# (SKIFF_INITRAMFS_APPLETS=all links all ~400).  Nothing is lost: busybox's
# shell runs its applets directly, and /init runs a command it cannot find
# in PATH as a busybox applet.
#
#   guest/image/build-initramfs.sh [OUT_DIR]   (default: $SKIFF_GUEST_OUT or build/guest)
#
# Result cached in ${SKIFF_CACHE:-$HOME/.cache/skiff}/initramfs/<key>/ (key =
# sha256 of this script, init.c, mkcpio.py, the busybox binary and the
# compiler version) and linked as OUT_DIR/initramfs-debug.cpio.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_dir=${1:-${SKIFF_GUEST_OUT:-$repo/build/guest}}
cache=${SKIFF_CACHE:-$HOME/.cache/skiff}
busybox=/bin/busybox
applets=${SKIFF_INITRAMFS_APPLETS:-core}
# Core set (the rest: `busybox APPLET`, or from `sh`, or as an /init argument).
core_applets="sh ash cat ls echo printf mount umount mkdir rmdir rm cp mv ln
 ps kill sleep grep sed awk find head tail wc sort uniq tr cut xargs uname
 hostname dmesg df du free ip ifconfig route ping nc wget env chmod chown
 touch true false test [ sync stat dd date vi id which mknod tee seq
 reboot poweroff halt sysctl switch_root pivot_root mdev top"

log() { printf 'initramfs: %s\n' "$*" >&2; }
die() { printf 'initramfs: ERROR: %s\n' "$*" >&2; exit 1; }

# shellcheck source=../../scripts/apt-install.sh
source "$repo/scripts/apt-install.sh"
apt_install busybox-static gcc libc6-dev python3

"$busybox" --list-full >/dev/null 2>&1 || die "$busybox is not a working busybox"
file_is_static() { ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'INTERP'; }
if command -v readelf >/dev/null; then
    file_is_static "$busybox" || die "$busybox is not static (install busybox-static)"
fi

key=$({
    cat "${BASH_SOURCE[0]}" "$here/init.c" "$here/vsock-test.c" "$here/mkcpio.py"
    echo "applets=$applets"
    sha256sum < "$busybox"
    gcc --version | head -n1
} | sha256sum | cut -c1-16)
result_dir=$cache/initramfs/$key
result=$result_dir/initramfs-debug.cpio

link_result() {
    mkdir -p "$out_dir"
    ln -sfn "$result" "$out_dir/initramfs-debug.cpio"
    log "$out_dir/initramfs-debug.cpio -> $result"
}

if [ -f "$result" ]; then
    log "cached ($key)"
    link_result
    exit 0
fi

mkdir -p "$result_dir"
work=$(mktemp -d "$result_dir/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

gcc -static -nostdlib -ffreestanding -fno-stack-protector \
    -fno-asynchronous-unwind-tables -no-pie -Os -s -Wl,--build-id=none \
    -Wall -Wextra -Werror -o "$work/init" "$here/init.c"
# vsock checker (busybox nc has no AF_VSOCK), libc-free too: ~9 KB.
gcc -static -nostdlib -ffreestanding -fno-stack-protector \
    -fno-asynchronous-unwind-tables -no-pie -Os -s -Wl,--build-id=none \
    -Wall -Wextra -Werror -o "$work/vsock-test" "$here/vsock-test.c"

{
    for d in bin sbin dev proc sys tmp run root etc mnt var usr; do
        echo "dir /$d 0755 0 0"
    done
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "file /init $work/init 0755 0 0"
    echo "file /bin/busybox $busybox 0755 0 0"
    echo "file /bin/vsock-test $work/vsock-test 0755 0 0"
    # Applets: bin/ and usr/bin/ ones in /bin, sbin/ and usr/sbin/ ones in /sbin.
    "$busybox" --list-full | LC_ALL=C sort | while read -r path; do
        name=${path##*/}
        if [ "$applets" != all ] && ! grep -qxF -- "$name" <<<"${core_applets// /$'\n'}"; then
            continue
        fi
        case $path in
            bin/busybox|linuxrc|sbin/init) continue ;;
            bin/*|usr/bin/*) echo "slink /bin/$name /bin/busybox 0777 0 0" ;;
            sbin/*|usr/sbin/*) echo "slink /sbin/$name /bin/busybox 0777 0 0" ;;
        esac
    done
} > "$work/list"

python3 "$here/mkcpio.py" "$work/list" "$work/initramfs.cpio"
mv -f "$work/initramfs.cpio" "$result"
log "built $(stat -c %s "$result") bytes, cached as $key"
link_result
