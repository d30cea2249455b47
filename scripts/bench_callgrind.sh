#!/usr/bin/env bash
# Host-only device benchmarks under callgrind: instructions per request for
# each virtio device's queue processing (no guest), from one build.
#
#   scripts/bench_callgrind.sh [N]                    (default N=10000)
#   scripts/bench_callgrind.sh N --seccomp [ROUNDS]   (default ROUNDS=5)
#
# For each bench, Ir(N) - Ir(0) divided by N removes set-up costs.
#
# --seccomp compares each bench with and without its device worker's
# seccomp filter on the timed loop (docs/seccomp.md), in one run: wall-clock
# ns per request, the median of ROUNDS alternating runs of N*10 requests,
# which includes the kernel's evaluation of the filter. (Callgrind counts
# user space only, where the filter adds nothing, and valgrind 3.19 cannot
# run a program that installs one: it does not know the seccomp syscall.)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
SECCOMP=${2:-}
ROUNDS=${3:-5}
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
cargo bench -p skiff-devices --no-run --benches 2>&1 | grep -v '^ *Compiling' >&2 || true

bench_bin() {
    ls -t target/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -n1
}

ir() { # binary args...
    local out
    out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null)
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' <<<"$out"
}

per_request() { # binary args... -> Ir per request
    local bin=$1
    shift
    local base full
    base=$(ir "$bin" 0 "$@")
    full=$(ir "$bin" "$N" "$@")
    echo $(( (full - base) / N ))
}

ns() { # binary args... -> ns per request of one run
    local rate
    rate=$("$@" | sed -n 's/.* \([0-9]*\) \(requests\|frames\|packets\)\/s.*/\1/p')
    awk -v r="$rate" 'BEGIN {printf "%.0f\n", 1e9 / r}'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

if [ "$SECCOMP" = --seccomp ]; then
    printf '| device | request | Ir/request | ns/request | ns/request, filtered | filtered/unfiltered |\n'
    printf '|---|---|---:|---:|---:|---:|\n'
else
    printf '| device | request | Ir per request | command |\n|---|---|---:|---|\n'
fi
for spec in "block_queue:4 KiB read (batch 1):1" "block_queue:4 KiB read (batch 32):32" \
            "fs_queue:4 KiB FUSE READ:" "net_queue:1500 B TX frame:" "vsock_queue:4 KiB TX packet:"; do
    IFS=: read -r name what extra <<<"$spec"
    bin=$(bench_bin "$name")
    [ -n "$bin" ] || { echo "no binary for $name" >&2; exit 1; }
    if [ "$SECCOMP" = --seccomp ]; then
        plain=$(per_request "$bin" $extra)
        # Alternate the two, round by round, so drift hits both alike.
        ns_off=() ns_on=()
        for _ in $(seq "$ROUNDS"); do
            ns_off+=("$(ns "$bin" $((N * 10)) $extra)")
            ns_on+=("$(ns "$bin" $((N * 10)) $extra --seccomp)")
        done
        off=$(printf '%s\n' "${ns_off[@]}" | median)
        on=$(printf '%s\n' "${ns_on[@]}" | median)
        printf '| %s | %s | %d | %s | %s | %s |\n' "${name%_queue}" "$what" "$plain" \
            "$off" "$on" "$(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.2f", a / b}')"
    else
        printf '| %s | %s | %d | `valgrind --tool=callgrind %s {0,%d} %s` |\n' \
            "${name%_queue}" "$what" "$(per_request "$bin" $extra)" "target/release/deps/${name}-*" "$N" "$extra"
    fi
done
