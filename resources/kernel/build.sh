#!/usr/bin/env bash
# Build the Skiff guest kernel: an uncompressed x86_64 ELF vmlinux (PVH boot).
#
#   resources/kernel/build.sh [OUT_DIR]      (default: $SKIFF_GUEST_OUT or build/guest)
#
# Inputs: Debian's linux-source-6.1 package, skiff-guest.config (a fragment
# applied on top of `make allnoconfig`) and patches/*.patch.
# Cache:  ${SKIFF_CACHE:-$HOME/.cache/skiff}/kernel/<key>/vmlinux, where key is
#         the sha256 of the linux-source version, the fragment, the patches and
#         this script.  A cached kernel is only linked into OUT_DIR.
# Tree:   ${SKIFF_CACHE}/kernel/src/<source version>/ keeps one unpacked, built
#         source tree so that a changed fragment or patch rebuilds incrementally.
#         Patches are tracked in .skiff-patches/; only those that changed (and
#         the ones after them) are reverted and re-applied.
#
# Environment: SKIFF_CACHE, SKIFF_GUEST_OUT, SKIFF_KERNEL_JOBS (default nproc),
#              SKIFF_KERNEL_SOURCE_PKG (default linux-source-6.1).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_dir=${1:-${SKIFF_GUEST_OUT:-$repo/build/guest}}
cache=${SKIFF_CACHE:-$HOME/.cache/skiff}
src_pkg=${SKIFF_KERNEL_SOURCE_PKG:-linux-source-6.1}
fragment=$here/skiff-guest.config
jobs=${SKIFF_KERNEL_JOBS:-$(nproc)}

log() { printf 'kernel: %s\n' "$*" >&2; }
die() { printf 'kernel: ERROR: %s\n' "$*" >&2; exit 1; }

# --- build dependencies (installed only when missing) ----------------------
# shellcheck source=../../scripts/apt-install.sh
source "$repo/scripts/apt-install.sh"
apt_install "$src_pkg"

src_version=$(dpkg-query -W -f='${Version}' "$src_pkg")
tarball=$(dpkg-query -L "$src_pkg" | grep -E '^/usr/src/linux-source-[^/]*\.tar\.xz$' | head -n1)
[ -n "$tarball" ] && [ -f "$tarball" ] || die "no source tarball in package $src_pkg"

mapfile -t patches < <(find "$here/patches" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)

# --- cache key --------------------------------------------------------------
key=$({
    printf '%s %s\n' "$src_pkg" "$src_version"
    printf 'fragment\n'; cat "$fragment"
    for p in "${patches[@]}"; do printf 'patch %s\n' "$(basename "$p")"; cat "$p"; done
    printf 'build.sh\n'; cat "${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)
result_dir=$cache/kernel/$key
result=$result_dir/vmlinux

link_result() {
    mkdir -p "$out_dir"
    ln -sfn "$result" "$out_dir/vmlinux"
    ln -sfn "$result_dir/config" "$out_dir/vmlinux.config"
    log "vmlinux: $out_dir/vmlinux -> $result"
}

if [ -f "$result" ]; then
    log "cached ($key)"
    link_result
    exit 0
fi

apt_install build-essential flex bison bc libelf-dev xz-utils python3

# --- source tree ------------------------------------------------------------
tree_root=$cache/kernel/src
tree=$tree_root/$src_pkg-$src_version
mkdir -p "$tree_root"
exec 9>"$tree.lock"
flock 9 || die "cannot lock $tree.lock"

# A result may have appeared while we waited for the lock.
if [ -f "$result" ]; then
    log "cached ($key)"
    link_result
    exit 0
fi

if [ ! -f "$tree/.skiff-unpacked" ]; then
    log "unpacking $tarball into $tree"
    rm -rf "$tree" "$tree.tmp"
    mkdir -p "$tree.tmp"
    tar -xf "$tarball" -C "$tree.tmp" --strip-components=1
    mkdir -p "$tree.tmp/.skiff-patches"
    mv "$tree.tmp" "$tree"
    touch "$tree/.skiff-unpacked"
fi

# Bring the applied patch set in line with patches/: keep the longest
# unchanged prefix, revert the rest (newest first), apply the new ones.
mapfile -t applied < <(find "$tree/.skiff-patches" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)
keep=0
while [ $keep -lt ${#applied[@]} ] && [ $keep -lt ${#patches[@]} ] \
      && [ "$(basename "${applied[$keep]}")" = "$(basename "${patches[$keep]}")" ] \
      && cmp -s "${applied[$keep]}" "${patches[$keep]}"; do
    keep=$((keep + 1))
done
for ((i = ${#applied[@]} - 1; i >= keep; i--)); do
    log "reverting $(basename "${applied[$i]}")"
    if ! patch -d "$tree" -p1 -R -s --no-backup-if-mismatch -f < "${applied[$i]}"; then
        log "revert failed; re-unpacking the source tree"
        rm -rf "$tree"
        exec 9>&-
        exec "${BASH_SOURCE[0]}" "$@"
    fi
    rm -f "${applied[$i]}"
done
for ((i = keep; i < ${#patches[@]}; i++)); do
    log "applying $(basename "${patches[$i]}")"
    patch -d "$tree" -p1 -s -N --no-backup-if-mismatch < "${patches[$i]}" \
        || die "patch $(basename "${patches[$i]}") does not apply to $src_pkg $src_version"
    cp "${patches[$i]}" "$tree/.skiff-patches/"
done

# --- configuration ------------------------------------------------------------
export KBUILD_BUILD_USER=skiff KBUILD_BUILD_HOST=skiff
kmake() { nice -n 10 make -C "$tree" ARCH=x86_64 "$@"; }

log "configuring: allnoconfig + $(basename "$fragment")"
kmake -s KCONFIG_ALLCONFIG="$fragment" allnoconfig

# Every option the fragment names must have ended up exactly as requested.
bad=()
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF -- "$line" "$tree/.config" || {
            got=$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$tree/.config" || echo "absent (dependencies not met)")
            bad+=("${BASH_REMATCH[1]}: wanted '${BASH_REMATCH[2]}', got: $got")
        }
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        if got=$(grep -E "^${BASH_REMATCH[1]}=" "$tree/.config"); then
            bad+=("${BASH_REMATCH[1]}: wanted 'not set', got: $got")
        fi
    fi
done < "$fragment"
if [ ${#bad[@]} -gt 0 ]; then
    printf 'kernel: ERROR: config option not set as requested: %s\n' "${bad[@]}" >&2
    exit 1
fi
log "all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set$)' "$fragment") requested options verified"

# --- build --------------------------------------------------------------------
log "building vmlinux in $tree (make -j$jobs; 2-13 min from scratch on 2 cores, seconds when incremental)"
start=$(date +%s)
kmake -j"$jobs" vmlinux
log "built in $(( $(date +%s) - start )) s"

grep -q 'CONFIG_PVH=y' "$tree/.config" || die "PVH disabled?"
if command -v readelf >/dev/null; then
    readelf -n "$tree/vmlinux" | grep -q 'Xen' || die "vmlinux has no PVH (Xen) ELF note"
fi

mkdir -p "$result_dir"
cp "$tree/.config" "$result_dir/config.tmp.$$"
mv -f "$result_dir/config.tmp.$$" "$result_dir/config"
cp "$tree/vmlinux" "$result_dir/vmlinux.tmp.$$"
mv -f "$result_dir/vmlinux.tmp.$$" "$result"
log "cached as $key"
link_result
