#!/usr/bin/env bash
# Runs one fuzz target with libFuzzer for a while:
#
#   scripts/fuzz.sh TARGET SECONDS      (targets: virtio_fs virtio_blk
#                                        virtio_net vsock mmio)
#
# Builds the target instrumented for coverage on stable Rust (RUSTFLAGS
# below, into target/fuzz so the normal build stays as it is), then runs it
# as root in a private mount namespace where every mount is read-only and
# /tmp is a small tmpfs: the shares and sockets the targets make live there
# (TMPDIR), so whatever a bug lets the guest do cannot touch the machine.
# The corpus is a scratch copy seeded from fuzz/corpus/TARGET; crash,
# timeout and OOM inputs land in fuzz/regressions/TARGET/, which the
# normal test run replays (fuzz/tests/replay.rs). Prints libFuzzer's
# executions and coverage at the end; exits non-zero on any finding.
#
# Environment: FUZZ_JOBS (cargo build jobs, default 2), FUZZ_ARGS (more
# libFuzzer flags, e.g. -max_len=8192 or -dict=...), SKIFF_FUZZ_SKIP (known
# findings the targets steer around, see skiff_fuzz::skip).
set -euo pipefail

log() { printf 'fuzz: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TARGETS="virtio_fs virtio_blk virtio_net vsock mmio"
target=${1:-}
seconds=${2:-60}
case " $TARGETS " in
*" $target "*) ;;
*) die "usage: $0 TARGET SECONDS (targets: $TARGETS)" ;;
esac
[[ $seconds =~ ^[0-9]+$ ]] || die "SECONDS must be a number, not '$seconds'"
[ "$(id -u)" = 0 ] || die "needs root (a private mount namespace)"
command -v unshare >/dev/null || die "unshare (util-linux) is missing"

root=$(cd "$(dirname "$0")/.." && pwd)
host=x86_64-unknown-linux-gnu
if command -v rustup >/dev/null; then
	rustup target list --installed | grep -qx "$host" ||
		die "the $host target is not installed (rustup target add $host)"
fi

# Coverage instrumentation for libFuzzer on stable Rust. The explicit
# --target keeps build scripts and proc macros uninstrumented.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="$root/target/fuzz"
# Line tables, so a crash's backtrace names the source.
export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
log "building $target"
(cd "$root" && cargo build --release --locked -j "${FUZZ_JOBS:-2}" --target "$host" \
	--features libfuzzer -p skiff-fuzz --bin "$target")
bin="$CARGO_TARGET_DIR/$host/release/$target"
[ -x "$bin" ] || die "no binary at $bin"

work="$CARGO_TARGET_DIR/run/$target"
rm -rf "$work"
mkdir -p "$work/out"
seeds="$root/fuzz/corpus/$target"
fuzzlog="$work/fuzz.log"

# In the namespace: everything read-only, then a fresh tmpfs on /tmp and
# the output directory made writable again.
inner='
set -eu
mount --make-rprivate /
awk "{print \$5}" /proc/self/mountinfo | sort -u | while read -r m; do
	mount -o remount,bind,ro "$m" 2>/dev/null || true
done
if touch /.skiff-fuzz-rw 2>/dev/null; then
	rm -f /.skiff-fuzz-rw
	echo "fuzz: cannot make / read-only" >&2
	exit 1
fi
mount -t tmpfs -o size=1g,mode=1777 skiff-fuzz /tmp
mount --bind "$OUT" "$OUT"
mount -o remount,bind,rw "$OUT"
mkdir /tmp/corpus
if [ -d "$SEEDS" ]; then cp -r "$SEEDS"/. /tmp/corpus/; fi
export TMPDIR=/tmp RUST_BACKTRACE=1
# shellcheck disable=SC2086
exec "$BIN" -max_total_time="$SECONDS_" -timeout=10 -rss_limit_mb=2048 \
	-print_final_stats=1 -artifact_prefix="$OUT/" $FUZZ_ARGS /tmp/corpus
'
log "running $target for ${seconds}s (log: $fuzzlog)"
set +e
OUT="$work/out" SEEDS="$seeds" BIN="$bin" SECONDS_="$seconds" FUZZ_ARGS="${FUZZ_ARGS:-}" \
	unshare --mount --propagation private bash -c "$inner" >"$fuzzlog" 2>&1
rc=$?
set -e

tail -n 40 "$fuzzlog" | grep -v '^INFO:' >&2 || true
found=0
for f in "$work/out"/crash-* "$work/out"/timeout-* "$work/out"/oom-* "$work/out"/leak-*; do
	[ -f "$f" ] || continue
	mkdir -p "$root/fuzz/regressions/$target"
	cp "$f" "$root/fuzz/regressions/$target/"
	log "finding saved: fuzz/regressions/$target/$(basename "$f")"
	found=1
done

execs=$(grep -oE 'stat::number_of_executed_units:[[:space:]]*[0-9]+' "$fuzzlog" | tail -n 1 | awk '{print $2}')
rate=$(grep -oE 'stat::average_exec_per_sec:[[:space:]]*[0-9]+' "$fuzzlog" | tail -n 1 | awk '{print $2}')
cov=$(grep -E '^#[0-9]+[[:space:]].*cov: ' "$fuzzlog" | tail -n 1)
echo "fuzz $target: ${execs:-?} executions in ${seconds}s (${rate:-?}/s)"
echo "fuzz $target: last status: ${cov:-none}"
if [ "$found" = 1 ] || [ "$rc" != 0 ]; then
	die "$target: libFuzzer exited $rc; see $fuzzlog"
fi
