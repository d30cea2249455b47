#!/usr/bin/env python3
"""Sandboxes from a template next to cold-booted ones, in one run.

Starts a private containerd (scripts/containerd-private.sh) with this
build's containerd-shim-skiff-v2 and two runtime configurations that differ
only in `[factory] template`, builds the template ahead of time
(`containerd-shim-skiff-v2 factory init`, timed), then:

- `ctr run --rm IMAGE ID true`, wall time end to end, the two modes
  alternating (median of --runs), and the VMM-side part of each start from
  the shim's boot timeline ("restored from template" against "first
  KVM_RUN");
- --pods detached `sleep` pods per mode, all running at once: the sum of
  the shims' PSS (/proc/PID/smaps_rollup), which splits the pages the
  restored VMs share (the template's memory file) between them.

Prints a Markdown table for docs/benchmarks.md.

    scripts/bench_template.py [--runs 3] [--pods 10]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import bench_shim
from bench_shim import IMAGE, SKIFF, sh

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHIM = os.path.join(ROOT, "target/release/containerd-shim-skiff-v2")


class Ctrd(bench_shim.Ctrd):
    def log(self):
        try:
            with open(os.path.join(self.dir, "containerd.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def shim_pid(cid):
    with open(f"/run/skiff/sbs/{cid}/persist.json") as f:
        return json.load(f)["shim_pid"]


def vmm_ms(log, cid, label):
    """The timeline milestone `label` of sandbox `cid` in the shim's log."""
    m = re.search(rf"sandbox {re.escape(cid)} boot timeline: [^\n]*?{re.escape(label)} ([0-9.]+) ms", log)
    return float(m.group(1)) if m else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pods", type=int, default=10)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="skiff-bench-template-", dir="/tmp")
    configs = {
        "cold": os.path.join(work, "cold.toml"),
        "template": os.path.join(work, "template.toml"),
    }
    with open(configs["cold"], "w") as f:
        f.write("[factory]\ntemplate = false\n")
    with open(configs["template"], "w") as f:
        f.write(f'[factory]\ntemplate = true\ntemplate_dir = "{work}/templates"\n')
    cache = os.environ.get("SKIFF_CACHE", os.path.expanduser("~/.cache/skiff"))
    archive = os.path.join(cache, "images", "skiff.local_busybox_latest.tar")
    os.makedirs(os.path.dirname(archive), exist_ok=True)
    sh(os.path.join(HERE, "build-oci-image.sh"), archive, IMAGE)

    t0 = time.monotonic()
    sh(SHIM, "factory", "init", "--config", configs["template"])
    build_s = time.monotonic() - t0
    print(f"template built in {build_s:.1f} s", file=sys.stderr)

    ctrd = Ctrd(work)
    times = {"cold": [], "template": []}
    vmm = {"cold": [], "template": []}
    pss = {}
    try:
        ctrd.ctr("images", "import", archive)
        for i in range(args.runs):
            for mode in ("cold", "template"):
                cid = f"r{i}-{mode}"
                t0 = time.monotonic()
                out = ctrd.ctr("run", "--rm", "--runtime", SKIFF, "--runtime-config-path", configs[mode],
                               IMAGE, cid, "true", check=False)
                dt = time.monotonic() - t0
                if out.returncode != 0:
                    raise SystemExit(f"{mode} run failed: {out.stderr}")
                times[mode].append(dt)
                label = "restored from template" if mode == "template" else "first KVM_RUN"
                vmm[mode].append(vmm_ms(ctrd.log(), cid, label))
                print(f"run {i} {mode}: {dt * 1e3:.0f} ms (VMM {vmm[mode][-1]:.1f} ms)", file=sys.stderr)

        for mode in ("cold", "template"):
            cids = [f"p{n}-{mode}" for n in range(args.pods)]
            for cid in cids:
                ctrd.ctr("run", "-d", "--runtime", SKIFF, "--runtime-config-path", configs[mode],
                         IMAGE, cid, "sleep", "100000")
            for cid in cids:
                bench_shim.wait_running(ctrd, cid, timeout=1800)
            time.sleep(5)
            pss[mode] = sum(pss_kib(shim_pid(c)) for c in cids)
            print(f"{args.pods} {mode} pods: PSS {pss[mode] / 1024:.1f} MiB", file=sys.stderr)
            for cid in cids:
                bench_shim.remove(ctrd, cid)
    finally:
        ctrd.stop()
        sh(SHIM, "factory", "destroy", "--config", configs["template"], check=False)
        subprocess.run(["rm", "-rf", work])

    ms = {m: statistics.median(v) * 1e3 for m, v in times.items()}
    vm = {m: statistics.median(v) for m, v in vmm.items()}
    mib = lambda kib: kib / 1024
    print("| metric | cold boot | from template | cold / template |")
    print("|---|---|---|---|")
    print(f"| `ctr run --rm busybox true`, median of {args.runs} | {ms['cold']:.0f} ms | {ms['template']:.0f} ms | {ms['cold'] / ms['template']:.1f} |")
    print(f"| VMM side: first KVM_RUN / restored, from the request | {vm['cold']:.1f} ms | {vm['template']:.1f} ms | {vm['cold'] / vm['template']:.1f} |")
    print(f"| {args.pods} idle pods, sum of the shims' PSS | {mib(pss['cold']):.1f} MiB | {mib(pss['template']):.1f} MiB | {pss['cold'] / pss['template']:.1f} |")
    print(f"| template build (`factory init`, once) | - | {build_s * 1e3:.0f} ms | |")


if __name__ == "__main__":
    main()
