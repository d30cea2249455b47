#!/usr/bin/env bash
# Boot the guest kernel + debug initramfs under QEMU microvm (a reference
# peer for the Skiff VMM) and report wall-clock time to SKIFF-GUEST-READY.
#
#   guest/image/qemu-boot.sh [-s VCPUS] [-m MIB] [-r RUNS] [-a "EXTRA CMDLINE"] [-- COMMAND...]
#
# Uses build/guest/vmlinux and build/guest/initramfs-debug.cpio (override
# with SKIFF_GUEST_OUT).  Extra QEMU arguments: SKIFF_QEMU_ARGS; a virtio
# device needs its transport on the command line, e.g. the first one:
#   SKIFF_QEMU_ARGS="-device virtio-rng-device" \
#     qemu-boot.sh -a virtio_mmio.device=512@0xfeb00e00:12 -- ...  Adds the software-KVM options when the host CPU
# has no VMX/SVM, like the VMM.  Every boot runs under `timeout`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
guest=${SKIFF_GUEST_OUT:-$repo/build/guest}
vcpus=1 mem=128 runs=1 extra=
while [ $# -gt 0 ]; do
    case $1 in
        -s) vcpus=$2; shift 2 ;;
        -m) mem=$2; shift 2 ;;
        -r) runs=$2; shift 2 ;;
        -a) extra=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "usage: $0 [-s VCPUS] [-m MIB] [-r RUNS] [-a EXTRA] [-- COMMAND...]" >&2; exit 2 ;;
    esac
done

# Keep in sync with guest/abi/src/cmdline.rs (its tests check these lines).
base="console=ttyS0 reboot=k panic=-1 quiet tsc=reliable no_timer_check io_delay=none 8250.nr_uarts=1 rcupdate.rcu_expedited=1"
swkvm="skiff.swkvm clearcpuid=popcnt,cx16,xsave,rdrand,rdseed,fsgsbase,pcid,invpcid,smap,erms,fsrm,rep_good noreplace-smp percpu_alloc=page rodata=off rcupdate.rcu_cpu_stall_suppress=1 GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX_Fast_Unaligned_Load,-FMA,-FMA4"
cmdline=$base
grep -qwE 'vmx|svm' /proc/cpuinfo || cmdline="$cmdline $swkvm"
[ -n "$extra" ] && cmdline="$cmdline $extra"
[ $# -gt 0 ] && cmdline="$cmdline -- $*"

# QEMU cannot set IA32_ARCH_CAPABILITIES on a software KVM.
cpu=host
grep -qwE 'vmx|svm' /proc/cpuinfo || cpu=host,-arch-capabilities

echo "cmdline: $cmdline" >&2
for ((run = 1; run <= runs; run++)); do
    log=$(mktemp)
    start=$(date +%s%N)
    timeout "${SKIFF_BOOT_TIMEOUT:-300}" qemu-system-x86_64 \
        -M microvm,acpi=off,x-option-roms=off,rtc=off,auto-kernel-cmdline=off \
        -device i8042 -enable-kvm -cpu "$cpu" -smp "$vcpus" -m "$mem" \
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -kernel "$guest/vmlinux" -initrd "$guest/initramfs-debug.cpio" \
        -append "$cmdline" ${SKIFF_QEMU_ARGS:-} </dev/null 2>&1 |
    while IFS= read -r line; do
        now=$(date +%s%N)
        printf '%8.3f %s\n' "$(( (now - start) / 1000000 ))e-3" "$line"
    done | tee "$log" >&2 || true
    ready=$(awk '/SKIFF-GUEST-READY/ {print $1; exit}' "$log")
    status=$(awk '/SKIFF-GUEST-EXIT/ {$1=""; print; exit}' "$log")
    total=$(( ($(date +%s%N) - start) / 1000000 ))
    rm -f "$log"
    printf 'run %d: vcpus=%s mem=%sM ready=%ss exit=[%s] total=%ss\n' \
        "$run" "$vcpus" "$mem" "${ready:-none}" "${status# }" "$(awk "BEGIN{print $total/1000}")"
done
