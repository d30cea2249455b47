#!/usr/bin/env python3
"""Side-by-side boot benchmark: Skiff's vm-run against QEMU microvm.

Both boot the same vmlinux, initramfs and kernel command line, 1 vCPU and
the same memory, with the guest's init running `true` and rebooting. Runs
alternate (skiff, qemu, skiff, ...) so both see the same machine state.

Measured from outside each VMM process, the same way for both:
  first byte   process start -> first guest byte on the serial console
  init         process start -> "SKIFF-GUEST-READY" (guest init running)
  exit         process start -> process exit
  vcpu cpu     CPU time of the vCPU threads (skiff-vcpu*, "CPU n/KVM")
  vmm cpu      CPU time of every other thread (the VMM's own work)
  rss-guest    peak of (process RSS - RSS of the guest RAM mapping), MiB
and from Skiff's own timeline (vm-run --json): process start -> first
KVM_RUN, which QEMU does not report.

Usage: scripts/bench_boot.py [--runs N] [--memory MiB] [--kernel K] [--initrd I]
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmmbench  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY = "SKIFF-GUEST-READY"


def measure(cmd, guest_bytes):
    r = vmmbench.run(cmd, guest_bytes, markers=(READY,))
    marks = r["marks"]
    r["first_byte"] = marks["first_byte"].wall if "first_byte" in marks else None
    r["init"] = marks[READY].wall if READY in marks else None
    r["rss_outside_guest"] = max(r["rss_outside_guest"], default=None)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--kernel", default=os.path.join(REPO, "build/guest/vmlinux"))
    ap.add_argument("--initrd", default=os.path.join(REPO, "build/guest/initramfs-debug.cpio"))
    ap.add_argument("--vm-run", default=os.path.join(REPO, "target/release/vm-run"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--seccomp", default="enforce",
                    help="vm-run --seccomp modes, comma-separated: each is run every round "
                         "(e.g. enforce,off to see what the confinement costs)")
    args = ap.parse_args()
    modes = args.seccomp.split(",")
    guest_bytes = args.memory << 20

    names = [f"skiff {m}" if len(modes) > 1 else "skiff" for m in modes]
    results = {name: [] for name in names + ["qemu"]}
    cmdline = None
    for i in range(args.runs):
        for mode, name in zip(modes, names):
            skiff_cmd = [args.vm_run, "--kernel", args.kernel, "--initrd", args.initrd,
                         "--memory", str(args.memory), "--seccomp", mode, "--json", "--", "true"]
            r = measure(skiff_cmd, guest_bytes)
            if r["rc"] != 0:
                sys.exit(f"vm-run failed (rc {r['rc']}):\n{r['stderr']}")
            report = json.loads([l for l in r["stderr"].splitlines() if l.startswith("{")][-1])
            cmdline = report["cmdline"].split(" -- ")[0]
            r["self_vmm_cpu"] = report["vmm_cpu_ms"] / 1e3
            marks = {m["milestone"]: m for m in report["timeline"]["marks"]}
            r["first_kvm_run"] = marks["first_kvm_run"]["wall_ms"] / 1e3
            r["self_init"] = marks["guest_init"]["wall_ms"] / 1e3 if "guest_init" in marks else None
            results[name].append(r)
            print(f"run {i + 1}/{args.runs} {name}: init {r['init']:.2f} s", file=sys.stderr)

        qemu_cmd = vmmbench.qemu_microvm(args.kernel, args.initrd, cmdline, args.memory,
                                         qemu=args.qemu)
        q = measure(qemu_cmd, guest_bytes)
        if q["rc"] != 0 or q["init"] is None:
            sys.exit(f"qemu failed (rc {q['rc']}):\n{q['stderr']}\n{q['console'][-2000:]}")
        results["qemu"].append(q)
        print(f"run {i + 1}/{args.runs} qemu:  init {q['init']:.2f} s", file=sys.stderr)

    def med(name, key):
        values = [r[key] for r in results[name] if r.get(key) is not None]
        return statistics.median(values) if values else None

    rows = [
        ("process start -> first KVM_RUN (ms)", "first_kvm_run", 1e3),
        ("process start -> first serial byte (ms)", "first_byte", 1e3),
        ("process start -> guest init (s)", "init", 1),
        ("process start -> VM exit (s)", "exit", 1),
        ("vCPU threads CPU (s)", "vcpu_cpu", 1),
        ("VMM CPU outside vCPU threads, /proc (ms, 10 ms ticks)", "vmm_cpu", 1e3),
        ("VMM CPU outside vCPU threads, own clock (ms)", "self_vmm_cpu", 1e3),
        ("peak RSS minus guest RAM (MiB)", "rss_outside_guest", 1),
    ]
    print(f"\nBoot benchmark: {args.runs} runs each, median; 1 vCPU, {args.memory} MiB; "
          f"cmdline: {cmdline} -- true")
    ratios = [(names[0], "qemu")] + [(names[0], n) for n in names[1:]]
    head = " | ".join(names + ["qemu microvm"] + [f"{a}/{b}" for a, b in ratios])
    print(f"| metric | {head} |")
    print("|---|" + "---:|" * (len(names) + 1 + len(ratios)))
    fmt = lambda v, scale: "n/a" if v is None else f"{v * scale:.1f}"
    for label, key, scale in rows:
        values = {n: med(n, key) for n in names + ["qemu"]}
        cells = [fmt(values[n], scale) for n in names + ["qemu"]]
        for a, b in ratios:
            x, y = values[a], values[b]
            cells.append("n/a" if x is None or not y else f"{x / y:.2f}")
        print(f"| {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
