#!/usr/bin/env python3
"""Snapshot and restore benchmark: a cold boot of the debug guest against
restores of a snapshot of the same guest, in one run, through vm-run.

The snapshot is taken once (`--snapshot-after console:count 1`) of a guest
whose init counts on its console once a second. Then, alternating:
  cold     vm-run boots the guest, which prints `count 1` and powers off
  restore  vm-run --restore, which runs for --restore-seconds and is stopped
Measured, from outside the process (scripts/vmmbench.py) and from vm-run's
own timeline (--json):
  vm ready      process start -> `restored from snapshot` (restore) or
                `kernel loaded` (cold): the VMM-side work before the guest runs
  first run     process start -> first KVM_RUN
  first count   process start -> the first `count` line on the console
  vmm cpu       CPU time outside the vCPU threads, whole run
  rss-guest     peak RSS beside the guest memory mapping, MiB

Usage: scripts/bench_snapshot.py [--runs N] [--memory MiB]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmmbench  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOP = "i=0; while true; do i=$((i+1)); echo count $i; sleep 1; done"


def report(stderr):
    for line in reversed(stderr.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"vm-run printed no report:\n{stderr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--restore-seconds", type=float, default=3.0)
    ap.add_argument("--kernel", default=os.path.join(REPO, "build/guest/vmlinux"))
    ap.add_argument("--initrd", default=os.path.join(REPO, "build/guest/initramfs-debug.cpio"))
    ap.add_argument("--vm-run", default=os.path.join(REPO, "target/release/vm-run"))
    args = ap.parse_args()
    guest_bytes = args.memory << 20
    base = [args.vm_run, "--kernel", args.kernel, "--initrd", args.initrd,
            "--memory", str(args.memory), "--json"]
    work = tempfile.mkdtemp(prefix="skiff-bench-snapshot-")
    try:
        snap = os.path.join(work, "snap")
        print("taking the snapshot (one cold boot) ...", file=sys.stderr)
        built = subprocess.run(
            base + ["--console", f"file:{work}/console.log", "--timeout", "600",
                    "--snapshot-after", "console:count 1", snap, "--", "sh", "-c", LOOP],
            capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"snapshot failed:\n{built.stderr}")
        snapshot_ms = report(built.stderr)["snapshot_ms"]
        mem = os.stat(os.path.join(snap, "memory"))
        on_disk_mib = mem.st_blocks * 512 / (1 << 20)

        rows = {"cold": [], "restore": []}
        for i in range(args.runs):
            print(f"round {i + 1}/{args.runs} ...", file=sys.stderr)
            cold = vmmbench.run(base + ["--console", "stdio", "--timeout", "600", "--",
                                        "sh", "-c", "echo count 1"],
                                guest_bytes, markers=("count",))
            rest = vmmbench.run(base + ["--console", "stdio", "--timeout",
                                        str(args.restore_seconds), "--restore", snap,
                                        "--", "sh", "-c", LOOP],
                                guest_bytes, markers=("count",))
            for name, r, ready in (("cold", cold, "kernel_loaded"),
                                   ("restore", rest, "restored")):
                rep = report(r["stderr"])
                tl = rep["timeline"]
                rows[name].append({
                    "ready": lookup(tl, ready),
                    "first_run": lookup(tl, "first_kvm_run"),
                    "first_count": r["marks"]["count"].wall * 1e3 if "count" in r["marks"] else None,
                    "vmm_cpu": rep["vmm_cpu_ms"],
                    "rss": max(r["rss_outside_guest"], default=None),
                })

        def med(name, key):
            vals = [row[key] for row in rows[name] if row[key] is not None]
            return statistics.median(vals) if vals else None

        def fmt(v, unit):
            return "-" if v is None else f"{v:.1f} {unit}"

        print(f"\nsnapshot of a {args.memory} MiB guest: {snapshot_ms:.1f} ms to write, "
              f"memory file {on_disk_mib:.1f} MiB on disk (sparse)")
        print(f"medians of {args.runs} runs each\n")
        print("| | cold boot | restore | cold / restore |")
        print("|---|---|---|---|")
        for key, label, unit in (("ready", "VM ready (VMM side)", "ms"),
                                 ("first_run", "first KVM_RUN", "ms"),
                                 ("first_count", "first count on the console", "ms"),
                                 ("vmm_cpu", "VMM CPU outside the vCPUs", "ms"),
                                 ("rss", "RSS beside guest memory", "MiB")):
            c, r = med("cold", key), med("restore", key)
            ratio = f"{c / r:.1f}" if c and r else "-"
            print(f"| {label} | {fmt(c, unit)} | {fmt(r, unit)} | {ratio} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def lookup(timeline, milestone):
    """The wall ms of a timeline milestone (vm-run --json names them)."""
    for mark in timeline.get("marks", []):
        if mark.get("milestone") == milestone:
            return mark["wall_ms"]
    return None


if __name__ == "__main__":
    main()
