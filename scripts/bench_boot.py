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
import re
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY = b"SKIFF-GUEST-READY"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid):
    """{thread name: cpu seconds} from /proc/PID/task/*/stat."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def rss_outside_guest(pid, guest_bytes):
    """Process RSS minus the RSS of mappings at least as large as guest RAM."""
    total = guest = 0
    size = rss = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line.startswith("Size:"):
                    size = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                    total += rss
                    if size >= guest_bytes:
                        guest += rss
    except OSError:
        return None
    return (total - guest) / (1 << 20)


def measure(cmd, guest_bytes, is_vcpu):
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    marks = {}
    captured = bytearray()

    def read_console():
        while True:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                return
            now = time.monotonic() - start
            marks.setdefault("first_byte", now)
            captured.extend(chunk)
            if "init" not in marks and READY in captured:
                marks["init"] = now

    reader = threading.Thread(target=read_console)
    reader.start()
    cpu, rss = {}, []
    while proc.poll() is None:
        sample = thread_cpu(proc.pid)
        if sample:
            cpu.update(sample)
        r = rss_outside_guest(proc.pid, guest_bytes)
        if r is not None:
            rss.append(r)
        time.sleep(0.05)
    marks["exit"] = time.monotonic() - start
    reader.join()
    stderr = proc.stderr.read().decode(errors="replace")
    vcpu = sum(v for k, v in cpu.items() if is_vcpu(k))
    other = sum(v for k, v in cpu.items() if not is_vcpu(k))
    return {
        "rc": proc.returncode,
        "first_byte": marks.get("first_byte"),
        "init": marks.get("init"),
        "exit": marks["exit"],
        "vcpu_cpu": vcpu,
        "vmm_cpu": other,
        "rss_outside_guest": max(rss) if rss else None,
        "stderr": stderr,
        "console": captured.decode(errors="replace"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--kernel", default=os.path.join(REPO, "build/guest/vmlinux"))
    ap.add_argument("--initrd", default=os.path.join(REPO, "build/guest/initramfs-debug.cpio"))
    ap.add_argument("--vm-run", default=os.path.join(REPO, "target/release/vm-run"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    args = ap.parse_args()
    guest_bytes = args.memory << 20

    skiff_cmd = [args.vm_run, "--kernel", args.kernel, "--initrd", args.initrd,
                 "--memory", str(args.memory), "--json", "--", "true"]
    results = {"skiff": [], "qemu": []}
    cmdline = None
    for i in range(args.runs):
        r = measure(skiff_cmd, guest_bytes, lambda k: k.startswith("skiff-vcpu"))
        if r["rc"] != 0:
            sys.exit(f"vm-run failed (rc {r['rc']}):\n{r['stderr']}")
        report = json.loads([l for l in r["stderr"].splitlines() if l.startswith("{")][-1])
        cmdline = report["cmdline"]
        marks = {m["milestone"]: m for m in report["timeline"]["marks"]}
        r["first_kvm_run"] = marks["first_kvm_run"]["wall_ms"] / 1e3
        r["self_init"] = marks["guest_init"]["wall_ms"] / 1e3 if "guest_init" in marks else None
        results["skiff"].append(r)
        print(f"run {i + 1}/{args.runs} skiff: init {r['init']:.2f} s", file=sys.stderr)

        qemu_cmd = [args.qemu, "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on",
                    "-enable-kvm", "-cpu", "host", "-m", str(args.memory), "-smp", "1",
                    "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                    "-no-reboot", "-kernel", args.kernel, "-initrd", args.initrd,
                    "-append", cmdline]
        q = measure(qemu_cmd, guest_bytes, lambda k: re.match(r"CPU \d+/KVM", k) is not None)
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
        ("VMM CPU outside vCPU threads (ms)", "vmm_cpu", 1e3),
        ("peak RSS minus guest RAM (MiB)", "rss_outside_guest", 1),
    ]
    print(f"\nBoot benchmark: {args.runs} runs each, median; 1 vCPU, {args.memory} MiB; "
          f"cmdline: {cmdline} -- true")
    print(f"| metric | skiff | qemu microvm | skiff/qemu |")
    print(f"|---|---:|---:|---:|")
    for label, key, scale in rows:
        s, q = med("skiff", key), med("qemu", key)
        fmt = lambda v: "n/a" if v is None else f"{v * scale:.1f}"
        ratio = "n/a" if s is None or not q else f"{s / q:.2f}"
        print(f"| {label} | {fmt(s)} | {fmt(q)} | {ratio} |")


if __name__ == "__main__":
    main()
