#!/usr/bin/env bash
# critest (cri-tools 1.36.0, the CRI validation suite) against runc and
# Skiff side by side, through one private containerd; prints a Markdown
# table of each test's result and time per runtime.  Not part of
# `make test`: a full run boots a Skiff sandbox per test and takes hours
# where KVM emulates the guest kernel.
#
#   scripts/critest.sh [OPTIONS] [-- CRITEST_ARGS...]
#
#   --containerd 1.6|2  Debian's containerd (1.6.20, default), or 2.x: the
#                       release in $SKIFF_CONTAINERD_DIR when that is a 2.x,
#                       else the one scripts/containerd-releases.sh unpacks
#   --focus REGEX       the tests to run (ginkgo --focus on the full test
#                       name); default: the PodSandbox, Container,
#                       Streaming, Networking and Security Context groups
#   --skip REGEX        tests to leave out (ginkgo --skip)
#   --runtimes "LIST"   CRI runtime handlers, in order (default "runc skiff")
#   --out DIR           where the reports go (default build/critest/DATE-...)
#   --seed N            ginkgo's random seed; the same one for every runtime
#                       so they run the tests in the same order (default:
#                       a new one, printed)
#   --timeout DURATION  the whole critest run of one runtime (default 12h)
#   CRITEST_ARGS        passed to critest as they are
#
# What it does: builds critest's test images (scripts/critest-images.sh,
# cached under $SKIFF_CACHE/critest-images), serves them from a local
# registry (Debian's docker-registry on $SKIFF_CRITEST_REGISTRY, default
# 127.0.0.1:5000, storage kept in the cache) and starts a private
# containerd (scripts/containerd-private.sh) whose CRI plugin reaches that
# registry as a mirror of registry.k8s.io, gcr.io and k8s.gcr.io (hosts.toml
# files, SKIFF_REGISTRY_HOSTS_DIR).  Every image is pulled into namespace
# k8s.io before the tests (through the same mirrors, by ctr), so no test's
# time includes a pull and both runtimes start alike (the sandbox image,
# skiff.local/pause:latest, is the pause stand-in).  Pods get a CNI bridge
# ($SKIFF_CRITEST_BRIDGE, default skiffcri0, 10.214.0.0/24) with portmap
# chained for the port-mapping tests (containerd adds loopback itself).
# Then critest runs once per runtime handler; OUT keeps each one's log
# (critest-RUNTIME.log), ginkgo JSON and JUnit reports (RUNTIME.json,
# RUNTIME.xml), containerd's log and the table (results.md, also printed).
# Everything it started (containerd and its shims, the registry, the
# bridge, portmap's NAT chains when it made them) is stopped or removed on
# exit, also on failure or ^C.
#
# With --containerd 2 the runc handler needs a 2.x containerd-shim-runc-v2
# on PATH; Debian has only 1.6's (its pods then fail to start).
# The skiff handler needs this build's shim (target/release, or
# $SKIFF_SHIM_DIR) and guest (make build guest); SKIFF_RUNTIME_CONFIG is
# passed on to its shims (see containerd-private.sh).  critest itself comes
# from $SKIFF_CACHE/cri-tools/1.36.0, unpacked there from
# ../shared/cri-tools/1.36.0 (or $SKIFF_CRI_TOOLS) when missing.  Runs as
# root; the host ports 12000-12003 must be free (critest's port tests).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cache=${SKIFF_CACHE:-$HOME/.cache/skiff}
log() { printf 'critest: %s\n' "$*" >&2; }
die() { printf 'critest: ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=apt-install.sh
. "$here/apt-install.sh"

cri_tools_version=1.36.0
# The Describe groups (ginkgo names them "[k8s.io] GROUP CONTEXT... TEST"):
# the second word keeps "Container Mount Propagation", "Container OOM" and
# "Container Mount Readonly" out of "Container", and the benchmarks out.
default_focus='\[k8s\.io\] (PodSandbox|Container|Streaming|Networking|Security Context) (runtime|NamespaceOption|bucket|SupplementalGroupsPolicy|SeccompProfilePath|NoNewPrivs|UserNamespaces) '

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2; exit "${1:-2}"; }

containerd_version=1.6 focus=$default_focus skip='' runtimes="runc skiff" out='' seed='' suite_timeout=12h
critest_args=()
while [ $# -gt 0 ]; do
    case $1 in
        -h | --help) usage 0 ;;
        --) shift; critest_args=("$@"); break ;;
        --*=*) opt=${1%%=*} val=${1#*=}; shift; set -- "$opt" "$val" "$@"; continue ;;
        --containerd | --focus | --skip | --runtimes | --out | --seed | --timeout)
            [ $# -ge 2 ] || die "$1 needs a value"
            case $1 in
                --containerd) containerd_version=$2 ;;
                --focus) focus=$2 ;;
                --skip) skip=$2 ;;
                --runtimes) runtimes=$2 ;;
                --out) out=$2 ;;
                --seed) seed=$2 ;;
                --timeout) suite_timeout=$2 ;;
            esac
            shift 2 ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (containerd, CNI and the tests' mounts need it)"
read -r -a runtime_list <<<"$runtimes"
[ ${#runtime_list[@]} -gt 0 ] || die "--runtimes is empty"
for rt in "${runtime_list[@]}"; do
    case $rt in runc | skiff) ;; *) die "unknown runtime handler '$rt' (runc or skiff)" ;; esac
done
[ "$(printf '%s\n' "${runtime_list[@]}" | sort -u | wc -l)" -eq ${#runtime_list[@]} ] \
    || die "--runtimes names a handler twice"
[ -z "$seed" ] || [[ $seed =~ ^[0-9]+$ ]] || die "--seed takes a number"
[ -n "$seed" ] || seed=$(( (RANDOM << 15 | RANDOM) + 1 ))

# The containerd: the system's, or a 2.x release directory.
containerd_major() { sed -nE 's/.* v?([0-9]+)\.[0-9]+\.[0-9]+.*/\1/p' <<<"$("$1/containerd" --version 2>/dev/null)"; }
case $containerd_version in
    1.6 | 1.6.*) unset SKIFF_CONTAINERD_DIR ;;
    2 | 2.*)
        if [ -z "${SKIFF_CONTAINERD_DIR:-}" ] || [ "$(containerd_major "$SKIFF_CONTAINERD_DIR")" != 2 ]; then
            SKIFF_CONTAINERD_DIR=
            IFS=: read -r -a release_dirs <<<"$("$here/containerd-releases.sh")"
            for d in "${release_dirs[@]}"; do
                if [ "$(containerd_major "$d")" = 2 ]; then SKIFF_CONTAINERD_DIR=$d; break; fi
            done
            [ -n "$SKIFF_CONTAINERD_DIR" ] || die "no containerd 2.x release found (scripts/containerd-releases.sh); set SKIFF_CONTAINERD_DIR"
        fi
        export SKIFF_CONTAINERD_DIR ;;
    *) die "--containerd takes 1.6 or 2, not '$containerd_version'" ;;
esac
ctr_bin=${SKIFF_CONTAINERD_DIR:+$SKIFF_CONTAINERD_DIR/}ctr
# The runc handler starts the containerd-shim-runc-v2 on PATH, Debian's
# 1.6 one: containerd 2.x cannot start it (it writes BootstrapParams to the
# shim's stdin; that shim reads runtime options there and fails with "type
# with url SANDBOX_ID: not found").
if [ -n "${SKIFF_CONTAINERD_DIR:-}" ] && [[ " ${runtime_list[*]} " == *" runc "* ]]; then
    runc_shim=$(command -v containerd-shim-runc-v2 || true)
    if [ -z "$runc_shim" ] || ! "$runc_shim" -v 2>/dev/null | grep -qE 'Version:[[:space:]]+v?2\.'; then
        log "warning: ${runc_shim:-no containerd-shim-runc-v2} is not a 2.x shim: with containerd 2.x every runc pod fails to start"
    fi
fi

shim_dir=${SKIFF_SHIM_DIR:-$root/target/release}
if [[ " ${runtime_list[*]} " == *" skiff "* ]]; then
    [ -x "$shim_dir/containerd-shim-skiff-v2" ] \
        || die "$shim_dir/containerd-shim-skiff-v2 is missing: run make build guest (or leave skiff out of --runtimes)"
fi

# critest and crictl 1.36.0: unpacked once from the shared copy.
cri_tools() {
    local dir=$cache/cri-tools/$cri_tools_version src=${SKIFF_CRI_TOOLS:-} origin tmp f
    if [ -x "$dir/critest" ] && [ -x "$dir/crictl" ]; then echo "$dir"; return 0; fi
    if [ -z "$src" ]; then
        src=$root/../shared/cri-tools
        origin=$(git -C "$root" config --get remote.origin.url 2>/dev/null || true)
        if [ ! -d "$src" ] && [ -n "$origin" ] && [ -d "$origin/../shared/cri-tools" ]; then
            src=$origin/../shared/cri-tools
        fi
    fi
    src=$src/$cri_tools_version
    if [ ! -f "$src/critest.xz" ] || [ ! -f "$src/crictl.xz" ] || [ ! -f "$src/SHA256SUMS" ]; then
        die "no critest/crictl $cri_tools_version in $dir nor in $src (set SKIFF_CRI_TOOLS)"
    fi
    log "unpacking cri-tools $cri_tools_version into $dir"
    mkdir -p "$cache/cri-tools"
    tmp=$(mktemp -d "$cache/cri-tools/.unpack.XXXXXX")
    for f in critest crictl; do
        xz -dc "$src/$f.xz" >"$tmp/$f"
        chmod 0755 "$tmp/$f"
    done
    (cd "$tmp" && sha256sum --quiet -c "$src/SHA256SUMS") || { rm -rf "$tmp"; die "cri-tools checksum mismatch"; }
    rm -rf "$dir"
    mv "$tmp" "$dir"
    echo "$dir"
}
tools=$(cri_tools)
critest_bin=$tools/critest crictl_bin=$tools/crictl

apt_install docker-registry skopeo containernetworking-plugins iptables iproute2 util-linux
for p in bridge host-local portmap loopback; do
    [ -x "/usr/lib/cni/$p" ] || die "the CNI plugin /usr/lib/cni/$p is missing"
done

registry=${SKIFF_CRITEST_REGISTRY:-127.0.0.1:5000}
bridge=${SKIFF_CRITEST_BRIDGE:-skiffcri0}
if [ -z "$out" ]; then
    out=$root/build/critest/$(date +%Y%m%d-%H%M%S)-containerd$containerd_version
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Short: containerd's socket paths must fit in sun_path.
work=$(mktemp -d /tmp/skiff-critest.XXXXXX)
ctrd=$work/ctrd
registry_pid=
# portmap's NAT chains, which it leaves behind empty: removed at the end
# unless they were there before.
portmap_chains_before=0
iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 && portmap_chains_before=1

portmap_cleanup() {
    [ "$portmap_chains_before" = 0 ] || return 0
    iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 || return 0
    # Still forwarding a port for someone: leave them.
    [ -z "$(iptables -t nat -S CNI-HOSTPORT-DNAT | grep '^-A' || true)" ] || return 0
    iptables -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT 2>/dev/null || true
    iptables -t nat -D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT 2>/dev/null || true
    iptables -t nat -D POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ 2>/dev/null || true
    local chain
    for chain in CNI-HOSTPORT-DNAT CNI-HOSTPORT-MASQ CNI-HOSTPORT-SETMARK; do
        iptables -t nat -F "$chain" 2>/dev/null || true
        iptables -t nat -X "$chain" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -f "$ctrd/containerd.log" ] && cp "$ctrd/containerd.log" "$out/containerd.log" 2>/dev/null
    if [ -e "$ctrd" ]; then
        "$here/containerd-private.sh" stop "$ctrd" >/dev/null || log "containerd-private.sh stop $ctrd failed"
    fi
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    ip link del "$bridge" 2>/dev/null || true
    portmap_cleanup
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# HTTP GET status of $1 (000 when nothing answers), without curl.
http_status() {
    python3 - "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
}

# 1. The images.
images_dir=$cache/critest-images
"$here/critest-images.sh" build "$images_dir" >/dev/null

# 2. The registry, its storage in the cache so the next run pushes nothing.
[ "$(http_status "http://$registry/v2/")" = 000 ] \
    || die "something already answers on $registry (set SKIFF_CRITEST_REGISTRY to a free HOST:PORT)"
mkdir -p "$images_dir/registry"
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $images_dir/registry
  delete:
    enabled: true
http:
  addr: $registry
EOF
docker-registry serve "$work/registry.yml" </dev/null >"$work/registry.log" 2>&1 &
registry_pid=$!
for ((i = 0; i < 300; i++)); do
    [ "$(http_status "http://$registry/v2/")" = 200 ] && break
    kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; die "docker-registry exited"; }
    sleep 0.1
done
[ "$(http_status "http://$registry/v2/")" = 200 ] || die "the registry does not answer on $registry"
"$here/critest-images.sh" push "$images_dir" "$registry"

# 3. Mirrors: each registry host critest names (and the sandbox image's),
# served by ours.
for host in registry.k8s.io gcr.io k8s.gcr.io skiff.local; do
    mkdir -p "$work/hosts/$host"
    cat >"$work/hosts/$host/hosts.toml" <<EOF
server = "https://$host"

[host."http://$registry"]
  capabilities = ["pull", "resolve"]
EOF
done

# 4. containerd.
grep -q SKIFF_REGISTRY_HOSTS_DIR "$here/containerd-private.sh" \
    || log "warning: containerd-private.sh has no SKIFF_REGISTRY_HOSTS_DIR: the CRI pulls from the real registries (unreachable); the images are pulled beforehand, but the Image tests will fail"
extra_path=()
[ -d "$shim_dir" ] && extra_path=("$shim_dir")
sock=$(SKIFF_REGISTRY_HOSTS_DIR=$work/hosts "$here/containerd-private.sh" start "$ctrd" "${extra_path[@]}")
ctr() { command "$ctr_bin" --address "$sock" --namespace k8s.io "$@"; }
crictl() { command "$crictl_bin" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" --timeout 60s "$@"; }

# 5. The pod network: bridge + host-local, then portmap for HostPort.
cat >"$ctrd/cni/conf/10-skiff-critest.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "skiff-critest",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.214.0.0/24", "gateway": "10.214.0.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$ctrd/cni/ipam"
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
EOF

# 6. Every image, pulled through the mirrors.  Among them the sandbox
# image containerd-private.sh names (skiff.local/pause:latest): a pause
# stand-in, not the busybox `sleep inf` of the Rust tests, which critest's
# `pgrep sleep` would find in pods sharing the sandbox's PID namespace.
while read -r _ ref; do
    ctr images pull --hosts-dir "$work/hosts" "$ref" >"$work/pull.log" 2>&1 \
        || { tail -n 5 "$work/pull.log" >&2; die "pulling $ref through $registry failed"; }
done < <("$here/critest-images.sh" list)
log "images pulled into k8s.io: $("$here/critest-images.sh" list | wc -l) references"

# 7. Wait for the CRI to see the network.
for ((i = 0; i < 120; i++)); do
    if crictl info 2>/dev/null | python3 -c '
import json, sys
conds = json.load(sys.stdin)["status"]["conditions"]
sys.exit(0 if any(c["type"] == "NetworkReady" and c["status"] for c in conds) else 1)'; then
        break
    fi
    sleep 0.5
done
((i < 120)) || die "the CRI plugin never reported NetworkReady (log: $ctrd/containerd.log)"

busy=$(ss -Hltn '( sport >= :12000 and sport <= :12003 )' 2>/dev/null || true)
[ -z "$busy" ] || log "warning: host ports 12000-12003 are in use; the port mapping and portforward tests will fail: $busy"

# 8. critest, one runtime handler after the other, the same seed for all.
log "focus: $focus${skip:+; skip: $skip}; seed $seed; reports in $out"
# A ^C stops critest (it gets the signal too and writes its reports), then
# the runtimes left are skipped and the table shows what ran.
interrupted=0
trap 'interrupted=1' INT
for rt in "${runtime_list[@]}"; do
    if [ "$interrupted" = 1 ]; then log "$rt: skipped (interrupted)"; continue; fi
    args=(--runtime-endpoint="unix://$sock" --image-endpoint="unix://$sock"
        --runtime-handler="$rt"
        --runtime-service-timeout=10m --image-service-timeout=10m
        --ginkgo.focus="$focus" --ginkgo.seed="$seed" --ginkgo.timeout="$suite_timeout"
        --ginkgo.no-color --ginkgo.poll-progress-after=5m --ginkgo.poll-progress-interval=5m
        --ginkgo.json-report="$out/$rt.json" --ginkgo.junit-report="$out/$rt.xml")
    [ -z "$skip" ] || args+=(--ginkgo.skip="$skip")
    rm -f "$out/$rt.json" "$out/$rt.xml"
    log "$rt: running critest (log: $out/critest-$rt.log)"
    t0=$SECONDS rc=0
    (cd "$work" && "$critest_bin" "${args[@]}" "${critest_args[@]}") >"$out/critest-$rt.log" 2>&1 || rc=$?
    log "$rt: critest exited $rc after $((SECONDS - t0))s: $(grep -E '^(SUCCESS|FAIL)!' "$out/critest-$rt.log" | tail -n 1 || true)"
done
trap 'exit 130' INT

# 9. The table; exit status 1 when a runtime left no report.
table_rc=0
python3 - "$out" "${runtime_list[@]}" <<'PY' || table_rc=$?
import json, os, sys

out, runtimes = sys.argv[1], sys.argv[2:]
CELL = {"passed": "pass", "failed": "fail", "skipped": "skip", "pending": "pending",
        "panicked": "fail (panic)", "timedout": "fail (timeout)",
        "interrupted": "interrupted", "aborted": "aborted"}

def esc(s):
    return s.replace("|", "\\|").replace("\n", " ")

results, missing = {}, []
for rt in runtimes:
    path = os.path.join(out, rt + ".json")
    results[rt] = {}
    if not os.path.exists(path):
        missing.append(rt)
        continue
    for suite in json.load(open(path)):
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                continue
            # Left out by --focus/--skip: skipped without an attempt.
            if spec["State"] == "skipped" and not spec.get("NumAttempts") \
                    and not (spec.get("Failure") or {}).get("Message"):
                continue
            name = " ".join(spec["ContainerHierarchyTexts"] + [spec["LeafNodeText"]])
            name = name.replace("[k8s.io] ", "", 1)
            results[rt][name] = spec

names = sorted(set().union(*(r.keys() for r in results.values())))
lines = ["| test | " + " | ".join(runtimes) + " |",
         "| --- |" + " --- |" * len(runtimes)]
totals = {rt: {"pass": 0, "fail": 0, "skip": 0, "other": 0, "secs": 0.0} for rt in runtimes}
for name in names:
    cells = []
    for rt in runtimes:
        spec = results[rt].get(name)
        if spec is None:
            cells.append("—")
            continue
        state = CELL.get(spec["State"], spec["State"])
        secs = spec.get("RunTime", 0) / 1e9
        t = totals[rt]
        t[state if state in ("pass", "skip") else "fail" if state.startswith("fail") else "other"] += 1
        t["secs"] += secs
        cells.append(state if state == "skip" else "%s %.1fs" % (state, secs))
    lines.append("| " + esc(name) + " | " + " | ".join(cells) + " |")
lines.append("| **total** | " + " | ".join(
    "%d pass, %d fail, %d skip%s, %.0fs" % (t["pass"], t["fail"], t["skip"],
                                          ", %d other" % t["other"] if t["other"] else "", t["secs"])
    for t in (totals[rt] for rt in runtimes)) + " |")

notes = []
for rt in runtimes:
    for name in names:
        spec = results[rt].get(name)
        if spec is None or spec["State"] == "passed":
            continue
        msg = " ".join(((spec.get("Failure") or {}).get("Message") or "").split())
        if len(msg) > 300:
            msg = msg[:300] + "..."
        notes.append("- %s, %s: %s%s" % (rt, esc(name), CELL.get(spec["State"], spec["State"]),
                                        (": " + esc(msg)) if msg else ""))
text = "\n".join(lines) + "\n"
if notes:
    text += "\nNot passed (skipped or failed; the message, cut at 300 characters; the rest in critest-RUNTIME.log):\n\n" + "\n".join(notes) + "\n"
if missing:
    text += "\nNo report from: %s (see critest-RUNTIME.log)\n" % ", ".join(missing)
with open(os.path.join(out, "results.md"), "w") as f:
    f.write(text)
sys.stdout.write(text)
sys.exit(1 if missing else 0)
PY
[ "$interrupted" = 0 ] || table_rc=130
(exit "$table_rc")
