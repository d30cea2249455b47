#!/usr/bin/env bash
# Host-only device benchmarks under callgrind: instructions per request for
# each virtio device's queue processing (no guest), from one build.
#
#   scripts/bench_callgrind.sh [N]      (default N=10000)
#
# For each bench, Ir(N) - Ir(0) divided by N removes set-up costs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
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

printf '| device | request | Ir per request | command |\n|---|---|---:|---|\n'
for spec in "block_queue:4 KiB read (batch 1):1" "block_queue:4 KiB read (batch 32):32" \
            "fs_queue:4 KiB FUSE READ:" "net_queue:1500 B TX frame:" "vsock_queue:4 KiB TX packet:"; do
    IFS=: read -r name what extra <<<"$spec"
    bin=$(bench_bin "$name")
    [ -n "$bin" ] || { echo "no binary for $name" >&2; exit 1; }
    base=$(ir "$bin" 0 $extra)
    full=$(ir "$bin" "$N" $extra)
    per=$(( (full - base) / N ))
    printf '| %s | %s | %d | `valgrind --tool=callgrind %s {0,%d} %s` |\n' \
        "${name%_queue}" "$what" "$per" "target/release/deps/${name}-*" "$N" "$extra"
done
