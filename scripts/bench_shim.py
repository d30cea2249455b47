#!/usr/bin/env python3
"""End-to-end container start and shim memory: Skiff next to runc.

Starts a private containerd (scripts/containerd-private.sh) with this
build's containerd-shim-skiff-v2, imports the busybox image, then in one
run, alternating the two runtimes:

- `ctr run --rm IMAGE ID true`, wall time end to end (median of --runs);
- a detached `sleep` container per runtime: the shim's RSS (VmRSS), and
  for Skiff the part of it that is not guest memory (RSS minus the resident
  pages of the guest RAM mapping, from /proc/PID/smaps).

Prints a Markdown table for docs/benchmarks.md.

    scripts/bench_shim.py [--runs 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMAGE = "skiff.local/busybox:latest"
SKIFF = "io.containerd.skiff.v2"
RUNC = "io.containerd.runc.v2"


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, text=True, capture_output=True, **kw)


class Ctrd:
    def __init__(self, work):
        self.dir = os.path.join(work, "ctrd")
        shim_dir = os.path.join(ROOT, "target/release")
        self.sock = sh(os.path.join(HERE, "containerd-private.sh"), "start", self.dir, shim_dir).stdout.strip()

    def ctr(self, *args, check=True):
        return sh("ctr", "-a", self.sock, "-n", "bench", *args, check=check, stdin=subprocess.DEVNULL)

    def stop(self):
        subprocess.run([os.path.join(HERE, "containerd-private.sh"), "stop", self.dir], capture_output=True)


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def guest_ram_rss_kib(pid, memory_mib):
    """Resident KiB of the guest RAM mapping: the anonymous mapping of the
    guest's size (the kernel may merge a neighbouring anonymous mapping of
    a few KiB into it, which is then counted as guest RAM)."""
    total, size, rss = 0, None, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                if memory_mib * 1024 <= size < memory_mib * 1024 + 8192:
                    total += rss
    return total


def shim_pid_of(ctrd, runtime, cid):
    if runtime == SKIFF:
        with open(f"/run/skiff/sbs/{cid}/persist.json") as f:
            return json.load(f)["shim_pid"]
    # runc's shim: the parent of the container's init process.
    task_pid = ctrd.ctr("task", "ls").stdout.split(cid, 1)[1].split()[0]
    with open(f"/proc/{task_pid}/stat") as f:
        return int(f.read().rsplit(") ", 1)[1].split()[1])


def wait_running(ctrd, cid, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in ctrd.ctr("task", "ls").stdout.splitlines():
            if line.split()[:1] == [cid] and "RUNNING" in line:
                return
        time.sleep(0.2)
    raise SystemExit(f"{cid} never ran")


def remove(ctrd, cid):
    """Kills container `cid`'s task and removes it and the container."""
    ctrd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    for _ in range(600):
        if ctrd.ctr("task", "rm", cid, check=False).returncode == 0:
            break
        time.sleep(0.2)
    ctrd.ctr("containers", "rm", cid, check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memory-mib", type=int, default=256, help="guest memory in the Skiff configuration in use")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="skiff-bench-", dir="/tmp")
    cache = os.environ.get("SKIFF_CACHE", os.path.expanduser("~/.cache/skiff"))
    archive = os.path.join(cache, "images", "skiff.local_busybox_latest.tar")
    os.makedirs(os.path.dirname(archive), exist_ok=True)
    sh(os.path.join(HERE, "build-oci-image.sh"), archive, IMAGE)
    ctrd = Ctrd(work)
    try:
        ctrd.ctr("images", "import", archive)
        times = {SKIFF: [], RUNC: []}
        for i in range(args.runs):
            for rt in (SKIFF, RUNC):
                cid = f"b{i}-{'skiff' if rt == SKIFF else 'runc'}"
                t0 = time.monotonic()
                out = ctrd.ctr("run", "--rm", "--runtime", rt, IMAGE, cid, "true", check=False)
                dt = time.monotonic() - t0
                if out.returncode != 0:
                    raise SystemExit(f"{rt} run failed: {out.stderr}")
                times[rt].append(dt)
                print(f"run {i} {rt}: {dt * 1e3:.0f} ms", file=sys.stderr)

        mem = {}
        for rt in (SKIFF, RUNC):
            cid = f"mem-{'skiff' if rt == SKIFF else 'runc'}"
            ctrd.ctr("run", "-d", "--runtime", rt, IMAGE, cid, "sleep", "1000")
            wait_running(ctrd, cid)
            time.sleep(2)
            pid = shim_pid_of(ctrd, rt, cid)
            rss = status_kib(pid, "VmRSS")
            guest = guest_ram_rss_kib(pid, args.memory_mib) if rt == SKIFF else 0
            mem[rt] = (rss, guest)
            remove(ctrd, cid)
    finally:
        ctrd.stop()
        subprocess.run(["rm", "-rf", work])

    ms = {rt: statistics.median(v) * 1e3 for rt, v in times.items()}
    mib = lambda kib: kib / 1024
    s_rss, s_guest = mem[SKIFF]
    r_rss, _ = mem[RUNC]
    print(f"| metric | Skiff | runc | Skiff / runc |")
    print(f"|---|---|---|---|")
    print(f"| `ctr run --rm busybox true`, median of {args.runs} | {ms[SKIFF]:.0f} ms | {ms[RUNC]:.0f} ms | {ms[SKIFF] / ms[RUNC]:.1f} |")
    print(f"| shim RSS (one running container) | {mib(s_rss):.1f} MiB | {mib(r_rss):.1f} MiB | {s_rss / r_rss:.1f} |")
    print(f"| of which guest RAM resident | {mib(s_guest):.1f} MiB | - | |")
    print(f"| VMM + shim overhead (RSS minus guest RAM) | {mib(s_rss - s_guest):.1f} MiB | {mib(r_rss):.1f} MiB | {(s_rss - s_guest) / r_rss:.1f} |")


if __name__ == "__main__":
    main()
