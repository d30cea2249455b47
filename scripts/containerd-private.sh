#!/usr/bin/env bash
# Run a private, real containerd in a directory of its own, for the
# integration tests and `make demo`: nothing under /var/lib/containerd,
# /run/containerd/containerd.sock or /opt/containerd is used, so it can run
# next to a system containerd and several can run at once.
#
#   scripts/containerd-private.sh start DIR [EXTRA_PATH]
#       Writes DIR/config.toml, starts containerd (PATH=EXTRA_PATH:$PATH, so
#       it finds containerd-shim-skiff-v2 there), waits until it answers
#       (SKIFF_CONTAINERD_TIMEOUT seconds, default 30) and prints the socket
#       path DIR/containerd.sock on stdout.  Log: DIR/containerd.log.
#   scripts/containerd-private.sh stop DIR
#       Deletes the tasks, stops containerd and any shim left over, unmounts
#       everything under DIR and removes DIR.  Safe to run twice and on a
#       half-started DIR.
#
# Which containerd: the `containerd` and `ctr` in $SKIFF_CONTAINERD_DIR when
# it is set (e.g. a release unpacked by scripts/containerd-releases.sh),
# else the system's (Debian 12: 1.6.20, installed if missing).  The config
# is the one that version reads: `version = 2` for 1.x, `version = 3` for
# 2.x (whose CRI plugin is split into io.containerd.cri.v1.images and
# io.containerd.cri.v1.runtime).  2.x keeps its CRI defaults, among them
# enable_unprivileged_ports/icmp (each pod spec then carries two sysctls).
#
# The CRI plugin serves runtime.v1 on the same socket; it uses the k8s.io
# namespace, so import its images (skiff.local/pause:latest, the sandbox
# image) with `ctr -a SOCK -n k8s.io images import`.  Runtimes: runc
# (default) and skiff (io.containerd.skiff.v2); with SKIFF_RUNTIME_CONFIG
# set, the skiff handler passes that Skiff configuration file to its shims
# (runtime option ConfigPath), e.g. one with `[factory] template = true`.
# With SKIFF_REGISTRY_HOSTS_DIR set, the CRI plugin pulls through the
# registry hosts configured there (config_path: DIR/HOST/hosts.toml, e.g. a
# mirror of registry.k8s.io on a local registry); without it, from the
# registries themselves (none is reachable here).
#
# Outside DIR, containerd still uses /run/containerd/s (shim sockets),
# /run/containerd/fifo (ctr's stdio FIFOs) and /run/containerd/runc/NS for
# `ctr run` with runc; these are emptied when the tasks are deleted.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf 'containerd-private: %s\n' "$*" >&2; }
die() { printf 'containerd-private: ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=apt-install.sh
. "$here/apt-install.sh"

usage() { die "usage: $0 start DIR [EXTRA_PATH] | stop DIR"; }
[ $# -ge 2 ] || usage
cmd=$1
# Absolute paths: the config, the shims' -address and the stop-time process
# and mount matching all use them.
dir=$(realpath -m -- "$2")
[ "$dir" != / ] || die "refusing to use / as DIR"
sock=$dir/containerd.sock
marker=$dir/.skiff-containerd-private
timeout=${SKIFF_CONTAINERD_TIMEOUT:-30}
sandbox_image=skiff.local/pause:latest
if [ -n "${SKIFF_CONTAINERD_DIR:-}" ]; then
    containerd_bin=$SKIFF_CONTAINERD_DIR/containerd
    ctr_bin=$SKIFF_CONTAINERD_DIR/ctr
else
    containerd_bin=containerd
    ctr_bin=ctr
fi
ctr() { command "$ctr_bin" "$@"; }

# Processes whose argv[0] matches $1 (a glob on the basename) and whose
# command line contains the string $2.
pids_matching() {
    local p cmdline argv0
    for p in /proc/[0-9]*; do
        cmdline=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
        argv0=${cmdline%% *}
        # shellcheck disable=SC2053
        [[ ${argv0##*/} == $1 && $cmdline == *"$2"* ]] && echo "${p#/proc/}"
    done
    return 0
}

# All descendants of the given pids, from the ppid field of /proc/PID/stat
# (this kernel has no /proc/PID/task/TID/children).
descendants() {
    local -A kids=()
    local p c stat ppid todo=("$@")
    for p in /proc/[0-9]*; do
        read -r stat 2>/dev/null <"$p/stat" || continue
        stat=${stat##*) }          # after "PID (comm) ": "STATE PPID ..."
        ppid=${stat#* } ppid=${ppid%% *}
        kids[$ppid]+="${p#/proc/} "
    done
    while [ ${#todo[@]} -gt 0 ]; do
        p=${todo[0]} todo=("${todo[@]:1}")
        for c in ${kids[$p]:-}; do
            echo "$c"
            todo+=("$c")
        done
    done
}

# kill_wait SECONDS PID...: SIGTERM, then SIGKILL whatever is left after
# SECONDS, then wait (briefly) for them to be gone.
kill_wait() {
    local secs=$1 p left i
    shift
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        left=()
        for p in "$@"; do [ -d /proc/"$p" ] && left+=("$p"); done
        [ ${#left[@]} -eq 0 ] && return 0
        sleep 0.1
    done
    log "killing ${left[*]} (still running after ${secs}s)"
    kill -KILL "${left[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        left=()
        for p in "$@"; do [ -d /proc/"$p" ] && left+=("$p"); done
        [ ${#left[@]} -eq 0 ] && return 0
        sleep 0.1
    done
}

# Mount points at or under $dir, deepest first (mountinfo field 5, with its
# octal escapes such as \040 decoded).
mounts_under() {
    local path
    while read -r _ _ _ _ path _; do
        path=$(printf '%b' "$path")
        if [[ $path == "$dir" || $path == "$dir"/* ]]; then
            printf '%s\t%s\n' "${#path}" "$path"
        fi
    done </proc/self/mountinfo | sort -rn | cut -f2-
}

# Settings both config versions share: everything under $dir.
config_common() {
    cat <<EOF
root = "$dir/root"
state = "$dir/state"
# Snapshotters that cannot work here; disabled to keep the log quiet.
disabled_plugins = [$1]

[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
}

# The CRI runtime handlers, under the CRI section $1 (whose name differs
# between 1.x and 2.x): runc, the default, and skiff.
cri_runtimes() {
    cat <<EOF
    [$1.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [$1.runtimes.runc.options]
        # runc state under DIR rather than /run/containerd/runc.
        Root = "$dir/runc"
    [$1.runtimes.skiff]
      runtime_type = "io.containerd.skiff.v2"
      # A privileged container's spec would otherwise list every host
      # device, and the VM would be asked to hot-add each host disk (as
      # Kata advises for its handlers too).
      privileged_without_host_devices = true
EOF
    if [ -n "${SKIFF_RUNTIME_CONFIG:-}" ]; then
        cat <<EOF
      [$1.runtimes.skiff.options]
        ConfigPath = "$SKIFF_RUNTIME_CONFIG"
EOF
    fi
}

# The CRI registry hosts directory, under the CRI image section $1.
cri_registry() {
    [ -n "${SKIFF_REGISTRY_HOSTS_DIR:-}" ] || return 0
    cat <<EOF
  [$1.registry]
    config_path = "$(realpath -- "$SKIFF_REGISTRY_HOSTS_DIR")"
EOF
}

# containerd 1.x.
config_v2() {
    echo "# Written by scripts/containerd-private.sh; removed by its 'stop'."
    echo "version = 2"
    config_common '"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"'
    cat <<EOF

[plugins."io.containerd.grpc.v1.cri"]
  # Local image (no registry is reachable): import it into namespace k8s.io.
  sandbox_image = "$sandbox_image"
  # Pod network namespaces under DIR/state, not /var/run/netns.
  netns_mounts_under_state_dir = true
  # Sandboxes get oom_score_adj -998, which needs CAP_SYS_RESOURCE; hosts
  # (and CI containers) without it fail RunPodSandbox with runc's "can't get
  # final child's PID from pipe".  This clamps it to containerd's own score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
EOF
    cri_runtimes 'plugins."io.containerd.grpc.v1.cri".containerd'
    cri_registry 'plugins."io.containerd.grpc.v1.cri"'
}

# containerd 2.x (it migrates version 3 to its own 4 as it loads it, with
# a warning). The same settings as config_v2, under 2.x's plugin names.
config_v3() {
    echo "# Written by scripts/containerd-private.sh; removed by its 'stop'."
    echo "version = 3"
    config_common '"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"'
    cat <<EOF

# NRI would listen on /var/run/nri/nri.sock, which every containerd shares.
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$sandbox_image"

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$dir/cni/conf"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
EOF
    cri_runtimes 'plugins."io.containerd.cri.v1.runtime".containerd'
    cri_registry 'plugins."io.containerd.cri.v1.images"'
}

start() {
    local extra_path=${1:-}
    if [ -f "$dir/containerd.pid" ] && [ -n "$(pids_matching containerd "$dir/config.toml")" ]; then
        die "a containerd already runs in $dir (stop it first: $0 stop $dir)"
    fi
    # sun_path holds 107 bytes; the ttrpc socket name is the longest.
    [ ${#sock} -le 100 ] || die "DIR is too long for a unix socket path: $sock"
    if [ -n "${SKIFF_CONTAINERD_DIR:-}" ]; then
        apt_install runc
        [ -x "$containerd_bin" ] && [ -x "$ctr_bin" ] \
            || die "SKIFF_CONTAINERD_DIR=$SKIFF_CONTAINERD_DIR has no executable containerd and ctr"
    else
        apt_install containerd runc
        if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then
            die "containerd or ctr not on PATH after installing containerd"
        fi
    fi
    local version major
    version=$("$containerd_bin" --version) || die "$containerd_bin --version failed"
    # "containerd github.com/containerd/containerd/v2 v2.3.4 <commit>"
    major=$(sed -nE 's/.* v?([0-9]+)\.[0-9]+\.[0-9]+.*/\1/p' <<<"$version")
    [ -n "$major" ] || die "cannot tell the version of $containerd_bin: $version"
    if [ -n "$extra_path" ]; then
        [ -d "$extra_path" ] || die "EXTRA_PATH $extra_path is not a directory"
        extra_path=$(realpath -- "$extra_path")
        [ -x "$extra_path/containerd-shim-skiff-v2" ] \
            || log "note: no containerd-shim-skiff-v2 in $extra_path (runtime skiff will fail)"
    fi

    if [ -n "${SKIFF_REGISTRY_HOSTS_DIR:-}" ] && [ ! -d "$SKIFF_REGISTRY_HOSTS_DIR" ]; then
        die "SKIFF_REGISTRY_HOSTS_DIR $SKIFF_REGISTRY_HOSTS_DIR is not a directory"
    fi

    mkdir -p "$dir"
    # The marker lets `stop` remove DIR even if start got no further.
    touch "$marker"
    mkdir -p "$dir/root" "$dir/state" "$dir/opt" "$dir/cni/conf" "$dir/runc"
    if [ "$major" -ge 2 ]; then config_v3; else config_v2; fi >"$dir/config.toml"
    log "$version"

    local t0=$EPOCHREALTIME pid
    # setsid: containerd must not die with the caller's process group (a ^C
    # in make would leave shims without it); all stdio is redirected so a
    # caller's $(...) does not wait for containerd to exit.
    PATH=${extra_path:+$extra_path:}$PATH setsid "$containerd_bin" --config "$dir/config.toml" \
        </dev/null >>"$dir/containerd.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/containerd.pid"

    local deadline=$((SECONDS + timeout))
    until ctr --address "$sock" version >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$dir/containerd.log" >&2 || true
            die "containerd exited during start-up (log: $dir/containerd.log)"
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 20 "$dir/containerd.log" >&2 || true
            die "containerd did not answer on $sock within ${timeout}s (log: $dir/containerd.log; run '$0 stop $dir')"
        fi
        sleep 0.05
    done
    log "containerd $pid ready on $sock in $(awk "BEGIN { printf \"%.2f\", $EPOCHREALTIME - $t0 }")s"

    # The CRI plugin failing to load does not stop containerd; say so early.
    if ! ctr --address "$sock" plugins ls 2>/dev/null | grep -Eq '^io\.containerd\.grpc\.v1[[:space:]]+cri[[:space:]].*[[:space:]]ok[[:space:]]*$'; then
        log "warning: the CRI plugin is not loaded; from $dir/containerd.log:"
        grep -i 'cri' "$dir/containerd.log" | grep -iE 'level=(error|warning)' | tail -n 5 >&2 || true
    fi
    echo "$sock"
}

stop() {
    if [ -e "$dir" ] && [ ! -e "$marker" ]; then
        die "$dir was not made by '$0 start' (no $(basename "$marker")); not touching it"
    fi
    local pids=() shims=() ns id

    # While containerd answers, delete the tasks through it: that also
    # removes the runtime's state outside DIR (e.g. /run/containerd/runc).
    if [ -S "$sock" ] && timeout 5 "$ctr_bin" --address "$sock" version >/dev/null 2>&1; then
        for ns in $(timeout 10 "$ctr_bin" --address "$sock" namespaces ls -q 2>/dev/null); do
            for id in $(timeout 10 "$ctr_bin" --address "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
                timeout 15 "$ctr_bin" --address "$sock" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 \
                    || log "could not delete task $ns/$id; killing its shim below"
            done
        done
    fi

    # containerd itself: the recorded pid, or any started with this config
    # (covers a start interrupted before the pid file was written).
    mapfile -t pids < <(pids_matching containerd "$dir/config.toml")
    if [ ${#pids[@]} -gt 0 ]; then
        kill_wait 10 "${pids[@]}"
    fi

    # Shims outlive containerd by design; those serving this containerd have
    # its socket in their command line.  Their container processes go first
    # (a runc container is reparented to init, not killed, when its shim dies).
    mapfile -t shims < <(pids_matching 'containerd-shim*' "$sock")
    if [ ${#shims[@]} -gt 0 ]; then
        log "stopping leftover shims: ${shims[*]}"
        mapfile -t pids < <(descendants "${shims[@]}")
        if [ ${#pids[@]} -gt 0 ]; then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
        kill_wait 5 "${shims[@]}"
    fi
    # A killed runc shim leaves runc's state (/run/containerd/runc/NS/ID, or
    # DIR/runc/NS for the CRI) and the container's cgroups behind; a later
    # run with the same ID would fail with "container ID already exists".
    local st root
    for st in /run/containerd/runc/*/*/state.json "$dir"/runc/*/*/state.json; do
        if [ ! -f "$st" ] || ! grep -qF "\"$dir/" "$st"; then continue; fi
        root=${st%/*/state.json} id=${st%/state.json} id=${id##*/}
        runc --root "$root" delete --force "$id" >/dev/null 2>&1 \
            || log "could not delete runc container $id (root $root)"
    done

    # Unmount deepest first; lazily when something still holds a mount.
    local m i mnts=()
    for ((i = 0; i < 5; i++)); do
        mapfile -t mnts < <(mounts_under)
        [ ${#mnts[@]} -gt 0 ] || break
        for m in "${mnts[@]}"; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null \
                || log "could not unmount $m"
        done
    done
    mapfile -t mnts < <(mounts_under)
    [ ${#mnts[@]} -eq 0 ] || die "still mounted under $dir: ${mnts[*]}"

    # --one-file-system: never delete through a mount that slipped past.
    rm -rf --one-file-system -- "$dir"
    [ ! -e "$dir" ] || die "could not remove $dir"
    log "stopped and removed $dir"
}

case $cmd in
    start) [ $# -le 3 ] || usage; start "${3:-}" ;;
    stop) [ $# -eq 2 ] || usage; stop ;;
    *) usage ;;
esac
