#!/usr/bin/env bash
# Stand-ins for the images critest (cri-tools 1.36.0) pulls, built locally
# (no registry is reachable here) and served by scripts/critest.sh from a
# local registry that containerd reaches through registry mirrors, under
# the images' usual names.
#
#   scripts/critest-images.sh list
#       Prints "NAME REFERENCE" lines: NAME is the image in the layout,
#       REFERENCE the name critest uses (one NAME may have several).
#   scripts/critest-images.sh build DIR
#       Writes the OCI image layout DIR/layout (every image, blobs shared,
#       each tagged NAME through org.opencontainers.image.ref.name) and
#       prints DIR/layout.  Cached: nothing is done when the layout was
#       built by this script from the same inputs.
#   scripts/critest-images.sh push DIR HOST:PORT
#       Copies each image to the plain-HTTP registry HOST:PORT as
#       REFERENCE without its registry host (registry.k8s.io/pause:3.9 ->
#       HOST:PORT/pause:3.9), skipping those the registry already has with
#       the same manifest digest.
#
# The base of every image is Debian's dynamically linked busybox (package
# `busybox`, downloaded and unpacked here, never installed: it conflicts
# with busybox-static), its applets as hard links in /bin, and the host's
# shared libraries it needs.  Dynamic rather than busybox-static because
# the static build runs applets inside the shell: with /bin/ls masked
# (MaskedPaths) `sh -c ls` must fail with "/bin/sh: ls: Permission denied".
# Hard links rather than symlinks because a runtime masking /bin/ls through
# a symlink masks /bin/busybox itself.  busybox has no pgrep or ipcs, which
# critest runs (`pgrep sleep`, `ipcs -m`): the host's procps and util-linux
# ones are copied with their libraries.  What each image adds is in the
# table in the Python code below.  The pause image is a static /pause
# alone, as upstream, and so is the sandbox image critest.sh gives
# containerd (skiff.local/pause:latest, another image ID).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf 'critest-images: %s\n' "$*" >&2; }
die() { printf 'critest-images: ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=apt-install.sh
. "$here/apt-install.sh"

case "$(uname -m)" in
    x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;;
esac

# NAME REFERENCE: what the layout holds and the names critest pulls.
list() {
    local s=gcr.io/k8s-staging-cri-tools e=registry.k8s.io/e2e-test-images
    cat <<EOF
busybox $e/busybox:1.29-2
nginx $e/nginx:1.14-2
httpd $e/httpd:2.4.39-4
nonewprivs $e/nonewprivs:1.3
hostnet-nginx $s/hostnet-nginx-$arch:latest
user-uid $s/test-image-user-uid:latest
user-username $s/test-image-user-username:latest
user-uid-group $s/test-image-user-uid-group:latest
user-username-group $s/test-image-user-username-group:latest
predefined-group $s/test-image-predefined-group:latest
test-latest $s/test-image-latest:latest
test-tag-test $s/test-image-tag:test
test-tag-all $s/test-image-tag:all
test-1 $s/test-image-1:latest
test-2 $s/test-image-2:latest
test-3 $s/test-image-3:latest
test-tags $s/test-image-tags:1
test-tags $s/test-image-tags:2
test-tags $s/test-image-tags:3
test-digest $s/test-image-digest:latest
pause registry.k8s.io/pause:3.9
pause k8s.gcr.io/pause:3.9
sandbox skiff.local/pause:latest
EOF
}

# The setuid program of the nonewprivs image (upstream: a Go program).
nnp_c='#include <stdio.h>
#include <unistd.h>
/* Setuid root in the image: prints the effective uid, 0 unless the
 * container runs with no_new_privs. */
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }'

# The pause image's /pause (upstream: build/pause/linux/pause.c): waits,
# reaping children, until SIGINT or SIGTERM.  A process named "pause", not
# "sleep": critest's `pgrep sleep` runs in pods that share the sandbox's
# PID namespace.
pause_c='#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}'

build() {
    local dir=$1 src layout
    mkdir -p "$dir/src"
    dir=$(cd "$dir" && pwd)
    src=$dir/src layout=$dir/layout
    command -v python3 >/dev/null || die "python3 is needed to write the images"
    apt_install procps util-linux gcc libc6-dev

    # Debian's busybox, unpacked (a download already here is reused).
    local deb
    deb=$(find "$src" -maxdepth 1 -name 'busybox_*.deb' | sort | tail -n 1)
    if [ -z "$deb" ]; then
        log "downloading Debian's busybox package"
        if ! (cd "$src" && apt-get download busybox >/dev/null 2>&1); then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            (cd "$src" && apt-get download busybox >/dev/null) || die "apt-get download busybox failed"
        fi
        deb=$(find "$src" -maxdepth 1 -name 'busybox_*.deb' | sort | tail -n 1)
    fi
    if [ ! -x "$src/busybox-root/bin/busybox" ] || [ "$deb" -nt "$src/busybox-root/bin/busybox" ]; then
        rm -rf "$src/busybox-root"
        dpkg-deb -x "$deb" "$src/busybox-root"
        touch "$src/busybox-root/bin/busybox"
    fi
    local busybox=$src/busybox-root/bin/busybox
    "$busybox" true 2>/dev/null || die "$busybox does not run here"

    local prog
    for prog in nnp pause; do
        if [ $prog = nnp ]; then printf '%s\n' "$nnp_c"; else printf '%s\n' "$pause_c"; fi >"$src/$prog.c.new"
        if [ ! -x "$src/$prog" ] || ! cmp -s "$src/$prog.c.new" "$src/$prog.c"; then
            mv "$src/$prog.c.new" "$src/$prog.c"
            gcc -static -O2 -o "$src/$prog" "$src/$prog.c" || die "compiling $prog failed"
        fi
        rm -f "$src/$prog.c.new"
    done

    local pgrep=/usr/bin/pgrep ipcs=/usr/bin/ipcs libs
    # The shared libraries (as ldd names them) of the dynamic executables.
    libs=$(ldd "$busybox" "$pgrep" "$ipcs" | grep -oE '/[^ ]+\.so[^ ]*' | sort -u)
    [ -n "$libs" ] || die "ldd found no libraries for $busybox"

    # Cache key: the contents of this script and of every input file.
    local key f
    key=$( { for f in "${BASH_SOURCE[0]}" "$busybox" "$src/nnp" "$src/pause" "$pgrep" "$ipcs" $libs; do
                 sha256sum <"$f"
             done
             echo "$arch"; } | sha256sum | cut -d' ' -f1)
    if [ -f "$layout/index.json" ] && grep -qF "$key" "$layout/index.json"; then
        log "$layout is up to date"
        echo "$layout"
        return 0
    fi

    local tmp=$dir/layout.tmp.$$
    rm -rf "$tmp"
    # shellcheck disable=SC2086  # $libs: one path a word
    python3 - "$tmp" "$key" "$arch" "$busybox" "$src/nnp" "$src/pause" "$pgrep" "$ipcs" "$(list)" \
        "$("$busybox" --list)" $libs <<'PY' || { rm -rf "$tmp"; die "writing the layout failed"; }
import gzip, hashlib, io, json, os, sys, tarfile

tmp, key, arch, busybox, nnp, pause, pgrep, ipcs, image_list, applets = sys.argv[1:11]
libs = sys.argv[11:]

def read(path):
    with open(path, "rb") as f:
        return f.read()

class Layer:
    """A deterministic layer tar: fixed mtimes, owners root unless given."""
    def __init__(self):
        self.buf = io.BytesIO()
        self.t = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.GNU_FORMAT)
        self.seen = set()

    def _add(self, name, type_, mode, data=b"", link="", uid=0, gid=0):
        assert name not in self.seen, name
        self.seen.add(name)
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = type_, mode, 0, uid, gid
        ti.uname = ti.gname = ""
        ti.linkname = link
        ti.size = len(data) if type_ == tarfile.REGTYPE else 0
        self.t.addfile(ti, io.BytesIO(data) if ti.size else None)

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self._add(name, tarfile.DIRTYPE, mode, uid=uid, gid=gid)

    def file(self, name, data, mode=0o644, uid=0, gid=0):
        if isinstance(data, str):
            data = data.encode()
        self._add(name, tarfile.REGTYPE, mode, data, uid=uid, gid=gid)

    def hardlink(self, name, target):
        self._add(name, tarfile.LNKTYPE, 0o755, link=target)

    def tar(self):
        self.t.close()
        return self.buf.getvalue()

# busybox's /etc/passwd and /etc/group (the users upstream busybox images
# have, www-data among them: test-image-user-username uses it).
PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:12:
www-data:x:33:
operator:x:37:
staff:x:50:
users:x:100:
nogroup:x:65534:
"""

def base_layer():
    l = Layer()
    for d, mode in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755),
                    ("lib", 0o755), ("lib/x86_64-linux-gnu", 0o755), ("lib64", 0o755),
                    ("proc", 0o555), ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777),
                    ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755),
                    ("usr/local", 0o755), ("usr/local/bin", 0o755),
                    ("var", 0o755), ("var/run", 0o755), ("var/www", 0o755)]:
        l.dir(d, mode)
    l.file("bin/busybox", read(busybox), 0o755)
    for a in sorted(set(applets.split())):
        if a != "busybox":
            l.hardlink("bin/" + a, "bin/busybox")
    l.file("usr/bin/pgrep", read(pgrep), 0o755)
    l.file("usr/bin/ipcs", read(ipcs), 0o755)
    for lib in libs:
        name = lib.lstrip("/")
        if name.startswith("usr/lib/"):     # merged /usr: keep them in /lib
            name = name[len("usr/"):]
        if name not in l.seen:
            parent = os.path.dirname(name)
            if parent not in l.seen:
                l.dir(parent)
            l.file(name, read(os.path.realpath(lib)), 0o755)
    l.file("etc/passwd", PASSWD)
    l.file("etc/group", GROUP)
    return l.tar()

# nginx:1.14-2 and hostnet-nginx stand-in: busybox httpd, run so that it
# looks like nginx to the Security Context tests: its executable is named
# nginx (`pidof nginx`), its pid is in /var/run/nginx.pid and its command
# line says "nginx: master process" (the ContainerPID test greps
# /proc/1/cmdline).  busybox picks the applet from argv[0]'s basename:
# "...daemon off;/httpd" runs httpd.
NGINX_START = """#!/bin/sh
# Stand-in for nginx: busybox httpd on $NGINX_PORT (critest-images.sh).
echo $$ >/var/run/nginx.pid
exec -a "nginx: master process nginx -g daemon off;/httpd" /usr/sbin/nginx \\
    -f -v -p "${NGINX_PORT:-80}" -h /usr/share/nginx/html
"""
INDEX = "<!DOCTYPE html>\n<html><body><h1>Welcome to nginx!</h1></body></html>\n"

def nginx_layer():
    l = Layer()
    for d in ["etc/nginx", "usr/share/nginx", "usr/share/nginx/html", "var/log/nginx"]:
        l.dir(d)
    l.file("usr/sbin/nginx", read(busybox), 0o755)  # a copy: comm is "nginx"
    l.file("etc/nginx/start.sh", NGINX_START, 0o755)
    l.file("usr/share/nginx/html/index.html", INDEX)
    l.file("usr/share/nginx/html/50x.html", "<html><body>error</body></html>\n")
    return l.tar()

# httpd:2.4.39-4 stand-in: the Multiple Containers test wants port 80 and
# "httpd" in the container's log.
HTTPD_START = """#!/bin/sh
# Stand-in for httpd-foreground: busybox httpd on port 80 (critest-images.sh).
echo "httpd: busybox httpd serving /usr/local/apache2/htdocs on port 80" >&2
exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs
"""

def httpd_layer():
    l = Layer()
    for d in ["usr/local/apache2", "usr/local/apache2/htdocs"]:
        l.dir(d)
    l.file("usr/local/bin/httpd-foreground", HTTPD_START, 0o755)
    l.file("usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n")
    return l.tar()

def nnp_layer():
    l = Layer()
    l.file("usr/local/bin/nnp", read(nnp), 0o4755)
    return l.tar()

def pause_layer():
    l = Layer()
    l.file("pause", read(pause), 0o755)
    return l.tar()

def predefined_group_layer():
    # `adduser -u 1000 -D default-user; addgroup -g 50000
    # group-defined-in-image; addgroup default-user group-defined-in-image`.
    l = Layer()
    l.file("etc/passwd", PASSWD + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n")
    l.file("etc/group", GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
    l.dir("home/default-user", 0o755, uid=1000, gid=1000)
    return l.tar()

def marker_layer(name):
    # images/image-test/Dockerfile: `ADD ${TEST} ${TEST}` (an empty file).
    l = Layer()
    l.file(name, b"")
    return l.tar()

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# NAME: (the layer on top of busybox's, or None; image config).
images = {
    "busybox": (None, {"Cmd": ["sh"]}),
    "nginx": (nginx_layer, {"Cmd": ["/etc/nginx/start.sh"], "Env": ["NGINX_PORT=80"],
                            "ExposedPorts": {"80/tcp": {}}}),
    "hostnet-nginx": (nginx_layer, {"Cmd": ["/etc/nginx/start.sh"], "Env": ["NGINX_PORT=12003"],
                                    "ExposedPorts": {"12003/tcp": {}}}),
    "httpd": (httpd_layer, {"Cmd": ["/usr/local/bin/httpd-foreground"],
                            "WorkingDir": "/usr/local/apache2",
                            "ExposedPorts": {"80/tcp": {}}}),
    "nonewprivs": (nnp_layer, {"Cmd": ["/usr/local/bin/nnp"]}),
    # images/build: IMAGE_USERS.
    "user-uid": (None, {"Cmd": ["sh"], "User": "1002"}),
    "user-username": (None, {"Cmd": ["sh"], "User": "www-data"}),
    "user-uid-group": (None, {"Cmd": ["sh"], "User": "1003:1004"}),
    "user-username-group": (None, {"Cmd": ["sh"], "User": "www-data:1004"}),
    "predefined-group": (predefined_group_layer, {"Cmd": ["sh"], "User": "1000"}),
    "test-latest": (lambda: marker_layer("test-image-latest"), {"Cmd": ["sh"]}),
    "test-tag-test": (lambda: marker_layer("test"), {"Cmd": ["sh"]}),
    "test-tag-all": (lambda: marker_layer("all"), {"Cmd": ["sh"]}),
    "test-1": (lambda: marker_layer("test-image-1"), {"Cmd": ["sh"]}),
    "test-2": (lambda: marker_layer("test-image-2"), {"Cmd": ["sh"]}),
    "test-3": (lambda: marker_layer("test-image-3"), {"Cmd": ["sh"]}),
    "test-tags": (lambda: marker_layer("same-image"), {"Cmd": ["sh"]}),
    "test-digest": (lambda: marker_layer("test-image-digest"), {"Cmd": ["sh"]}),
    "pause": (pause_layer, {"Entrypoint": ["/pause"]}),  # pause_layer alone
    # The sandbox image containerd-private.sh names: the same /pause, but
    # another image (its own config, so its own ID), so that critest
    # removing pause:3.9 (Image Identifier Consistency) leaves it.
    "sandbox": (pause_layer, {"Entrypoint": ["/pause"],
                              "Labels": {"dev.skiff.critest": "sandbox image"}}),
}
listed = {line.split()[0] for line in image_list.splitlines() if line.strip()}
assert listed == set(images), (listed ^ set(images))

os.makedirs(os.path.join(tmp, "blobs", "sha256"))
def blob(media_type, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(tmp, "blobs", "sha256", digest)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

def js(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

layer_cache = {}
def layer(fn):
    if fn not in layer_cache:
        raw = fn()
        desc = blob("application/vnd.oci.image.layer.v1.tar+gzip",
                    gzip.compress(raw, compresslevel=6, mtime=0))
        layer_cache[fn] = (desc, "sha256:" + hashlib.sha256(raw).hexdigest())
    return layer_cache[fn]

manifests = []
for name, (extra, cfg) in sorted(images.items()):
    if extra is pause_layer:  # like upstream: /pause and nothing else
        layers = [layer(pause_layer)]
    else:
        layers = [layer(base_layer)] + ([layer(extra)] if extra else [])
    config = {"Env": [PATH], "WorkingDir": "/"}
    for k, v in cfg.items():
        config[k] = [PATH] + v if k == "Env" else v
    config_desc = blob("application/vnd.oci.image.config.v1+json", js({
        "architecture": arch, "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        "history": [{"created": "1970-01-01T00:00:00Z",
                     "created_by": "scripts/critest-images.sh " + name}],
    }))
    manifest = blob("application/vnd.oci.image.manifest.v1+json", js({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc, "layers": [d for d, _ in layers]}))
    manifest["annotations"] = {"org.opencontainers.image.ref.name": name}
    manifest["platform"] = {"architecture": arch, "os": "linux"}
    manifests.append(manifest)

with open(os.path.join(tmp, "oci-layout"), "wb") as f:
    f.write(js({"imageLayoutVersion": "1.0.0"}))
with open(os.path.join(tmp, "index.json"), "wb") as f:
    f.write(js({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests, "annotations": {"dev.skiff.build-key": key}}))
PY
    rm -rf "$layout"
    mv "$tmp" "$layout"
    log "wrote $layout ($(du -sh "$layout" | cut -f1))"
    echo "$layout"
}

# The manifest digest of image NAME in the layout $1.
layout_digest() {
    python3 - "$1/index.json" "$2" <<'PY'
import json, sys
for m in json.load(open(sys.argv[1]))["manifests"]:
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == sys.argv[2]:
        print(m["digest"])
PY
}

push() {
    local layout=$1/layout registry=$2 name ref dest want have pushed=0 kept=0
    [ -f "$layout/index.json" ] || die "no layout in $1 (run: $0 build $1)"
    apt_install skopeo
    # Our own policy: the host's /etc/containers/policy.json may be missing.
    local policy=$1/policy.json
    echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$policy"
    while read -r name ref; do
        dest=docker://$registry/${ref#*/}
        want=$(layout_digest "$layout" "$name")
        [ -n "$want" ] || die "image $name is not in $layout"
        have=$( { skopeo --policy "$policy" inspect --raw --tls-verify=false "$dest" 2>/dev/null || true; } \
            | sha256sum | cut -d' ' -f1)
        if [ "sha256:$have" = "$want" ]; then
            kept=$((kept + 1))
            continue
        fi
        skopeo --policy "$policy" copy -q --preserve-digests --dest-tls-verify=false \
            "oci:$layout:$name" "$dest" >/dev/null || die "pushing $name to $dest failed"
        pushed=$((pushed + 1))
    done < <(list)
    log "registry $registry: $pushed images pushed, $kept already there"
}

case ${1:-} in
    list) [ $# -eq 1 ] || die "usage: $0 list"; list ;;
    build) [ $# -eq 2 ] || die "usage: $0 build DIR"; build "$2" ;;
    push) [ $# -eq 3 ] || die "usage: $0 push DIR HOST:PORT"; push "$2" "$3" ;;
    *) die "usage: $0 list | build DIR | push DIR HOST:PORT" ;;
esac
