#!/usr/bin/env bash
# Build a one-layer OCI image archive from Debian's busybox-static, for the
# integration tests and `make demo` (no registry is reachable here, so test
# images are built locally and loaded with `ctr images import`).
#
#   scripts/build-oci-image.sh OUT.tar NAME:TAG [ENTRYPOINT...]
#
#   OUT.tar     OCI image layout archive (oci-layout, index.json, blobs/)
#   NAME:TAG    e.g. skiff.local/busybox:latest; what `ctr images import`
#               names the image (no --base-name / --index-name needed)
#   ENTRYPOINT  optional image Entrypoint; without it the image has Cmd ["sh"]
#
# Examples:
#   scripts/build-oci-image.sh build/busybox.tar skiff.local/busybox:latest
#   scripts/build-oci-image.sh build/pause.tar skiff.local/pause:latest sleep inf
#   ctr -a SOCK -n NS images import build/busybox.tar
#
# Rootfs: /bin/busybox + applet symlinks, /etc/passwd and /etc/group (root,
# nobody), empty /tmp /proc /sys /dev /root.  The output is deterministic
# (fixed mtimes, owners, gzip header), so the same inputs give the same
# digests.  Cached: nothing is done when OUT.tar is newer than this script
# and /bin/busybox and was built from the same NAME:TAG and ENTRYPOINT.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf 'oci-image: %s\n' "$*" >&2; }
die() { printf 'oci-image: ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=apt-install.sh
. "$here/apt-install.sh"

[ $# -ge 2 ] || die "usage: $0 OUT.tar NAME:TAG [ENTRYPOINT...]"
out=$1 ref=$2
shift 2
# A reference must carry a tag: ctr and the CRI look images up by full name.
[[ "$ref" =~ ^[a-z0-9][a-z0-9._/-]*(:[0-9]+)?[a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] \
    || die "NAME:TAG expected (e.g. skiff.local/busybox:latest), got '$ref'"
busybox=/bin/busybox

apt_install busybox-static
[ -x "$busybox" ] || die "$busybox missing after installing busybox-static"
command -v python3 >/dev/null || die "python3 is needed to write the image"

# Cache key: the reference and the entrypoint, stored as an index.json
# annotation so a stale archive with other arguments is rebuilt.
key=$(printf '%s\0' "$ref" "$@" | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$out" -nt "${BASH_SOURCE[0]}" ] && [ "$out" -nt "$busybox" ] \
    && tar -xOf "$out" index.json 2>/dev/null | grep -qF "$key"; then
    log "$out is up to date ($ref)"
    exit 0
fi

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
applets=$("$busybox" --list)
case "$(uname -m)" in
    x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;;
esac

python3 - "$tmp" "$ref" "$key" "$arch" "$busybox" "$applets" "$@" <<'PY'
import gzip, hashlib, io, json, sys, tarfile

tmp, ref, key, arch, busybox, applets = sys.argv[1:7]
entrypoint = sys.argv[7:]
have = set(applets.split())
# Common applets linked into /bin (only those this busybox has); the shell
# runs any other applet itself, and `busybox APPLET` always works.
wanted = """sh ash echo cat ls sleep id hostname ip ps wc md5sum sha256sum head
 tail dd mkdir rmdir rm cp mv ln true false env kill mount umount grep sed awk
 find sort uniq tr cut xargs uname printf test [ touch chmod chown stat date
 df du free dmesg sync seq tee which nproc pwd readlink realpath mknod mkfifo
 ifconfig route ping nc wget vi less more timeout watch top pidof killall
 basename dirname expr yes nsenter unshare setsid hexdump od xxd gzip zcat
 tar base64 whoami""".split()
links = sorted(a for a in set(wanted) if a in have)

def layer_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        def add(name, type_=tarfile.DIRTYPE, mode=0o755, data=b"", target=""):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = type_, mode, 0
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.linkname = target
            ti.size = len(data) if type_ == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(data) if ti.size else None)
        for d, mode in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755),
                        ("proc", 0o555), ("root", 0o700), ("sys", 0o555),
                        ("tmp", 0o1777)]:
            add(d, mode=mode)
        with open(busybox, "rb") as f:
            add("bin/busybox", tarfile.REGTYPE, 0o755, f.read())
        for a in links:
            add("bin/" + a, tarfile.SYMTYPE, 0o777, target="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnobody:x:65534:\n")
    return buf.getvalue()

blobs = {}
def blob(media_type, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}

def js(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

raw = layer_tar()
layer = blob("application/vnd.oci.image.layer.v1.tar+gzip",
             gzip.compress(raw, compresslevel=6, mtime=0))
cfg = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
       "WorkingDir": "/"}
if entrypoint:
    cfg["Entrypoint"] = entrypoint
else:
    cfg["Cmd"] = ["sh"]
config = blob("application/vnd.oci.image.config.v1+json", js({
    "architecture": arch, "os": "linux", "created": "1970-01-01T00:00:00Z",
    "config": cfg,
    "rootfs": {"type": "layers",
               "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    "history": [{"created": "1970-01-01T00:00:00Z",
                 "created_by": "scripts/build-oci-image.sh (busybox-static)"}],
}))
manifest = blob("application/vnd.oci.image.manifest.v1+json", js({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": config, "layers": [layer]}))
# containerd 1.6 `ctr images import` names an image from the manifest's
# io.containerd.image.name annotation (full reference) before falling back
# to org.opencontainers.image.ref.name (per the OCI spec just the tag, which
# ctr would prefix with "import-DATE" unless given --base-name).
tag = ref.rsplit(":", 1)[1]
manifest["annotations"] = {"io.containerd.image.name": ref,
                           "org.opencontainers.image.ref.name": tag}
manifest["platform"] = {"architecture": arch, "os": "linux"}
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [manifest],
         "annotations": {"dev.skiff.build-key": key}}

with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as t:
    def add(name, data=None):
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uname, ti.gname = 0, "root", "root"
        if data is None:
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        else:
            ti.mode, ti.size = 0o644, len(data)
            t.addfile(ti, io.BytesIO(data))
    add("oci-layout", js({"imageLayoutVersion": "1.0.0"}))
    add("index.json", js(index))
    add("blobs")
    add("blobs/sha256")
    for digest in sorted(blobs):
        add("blobs/sha256/" + digest.split(":", 1)[1], blobs[digest])
PY
mv -f "$tmp" "$out"
trap - EXIT
log "wrote $out ($ref, $(stat -c %s "$out") bytes)"
