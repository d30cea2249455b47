#!/usr/bin/env python3
"""Pod-to-host TCP throughput: a Skiff pod next to a runc pod on one bridge.

Builds what a CNI bridge plugin would: a Linux bridge with the gateway
address and, per pod, a network namespace joined to it by a veth with an
address and a default route. Starts a private containerd
(scripts/containerd-private.sh) with this build's shim, runs one busybox
container per runtime in its pod namespace (`ctr run --with-ns network:`),
and has each send --mib MiB of zeros with `nc` to a server on the host side
of the bridge. The host measures from the first to the last byte received:
throughput, and host CPU (all processes, /proc/stat) per MiB.

Prints a Markdown table for docs/benchmarks.md.

    scripts/bench_net.py [--mib 2]
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMAGE = "skiff.local/busybox:latest"
RUNTIMES = {"skiff": "io.containerd.skiff.v2", "runc": "io.containerd.runc.v2"}
BRIDGE = "skiffbench0"
GATEWAY = "10.214.0.1"
HZ = os.sysconf("SC_CLK_TCK")


def sh(*args, check=True):
    return subprocess.run(args, check=check, text=True, capture_output=True)


def cpu_seconds():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle, iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / HZ


def make_pod(index):
    ns = f"skiffbench{index}"
    host_if = f"skbh{index}"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", host_if, "master", BRIDGE, "up")
    sh("ip", "-n", ns, "addr", "add", f"10.214.0.{10 + index}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)
    return ns


def receive(server, nbytes, result):
    conn, _ = server.accept()
    got, first, cpu0 = 0, None, None
    while got < nbytes:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        if first is None:
            first, cpu0 = time.monotonic(), cpu_seconds()
        got += len(chunk)
    result.update(bytes=got, secs=time.monotonic() - first, cpu=cpu_seconds() - cpu0)
    conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=2)
    args = ap.parse_args()
    nbytes = args.mib << 20

    work = tempfile.mkdtemp(prefix="skiff-netbench-", dir="/tmp")
    cache = os.environ.get("SKIFF_CACHE", os.path.expanduser("~/.cache/skiff"))
    archive = os.path.join(cache, "images", "skiff.local_busybox_latest.tar")
    os.makedirs(os.path.dirname(archive), exist_ok=True)
    sh(os.path.join(HERE, "build-oci-image.sh"), archive, IMAGE)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    ctrd_dir = os.path.join(work, "ctrd")
    namespaces = []
    results = {}
    try:
        sock = sh(os.path.join(HERE, "containerd-private.sh"), "start", ctrd_dir,
                  os.path.join(ROOT, "target/release")).stdout.strip()
        ctr = lambda *a, check=True: sh("ctr", "-a", sock, "-n", "bench", *a, check=check)
        ctr("images", "import", archive)
        for index, (name, runtime) in enumerate(RUNTIMES.items()):
            ns = make_pod(index)
            namespaces.append(ns)
            server = socket.create_server((GATEWAY, 0))
            port = server.getsockname()[1]
            result = {}
            t = threading.Thread(target=receive, args=(server, nbytes, result))
            t.start()
            script = (f"dd if=/dev/zero of=/tmp/blob bs=64k count={nbytes >> 16} 2>/dev/null"
                      f" && nc {GATEWAY} {port} < /tmp/blob")
            out = ctr("run", "--rm", "--runtime", runtime, "--with-ns", f"network:/var/run/netns/{ns}",
                      IMAGE, f"net-{name}", "sh", "-c", script, check=False)
            t.join(timeout=600)
            server.close()
            if result.get("bytes") != nbytes:
                raise SystemExit(f"{name}: received {result.get('bytes')} of {nbytes}: {out.stderr}")
            results[name] = result
            print(f"{name}: {nbytes / result['secs'] / 2**20:.3f} MiB/s", file=sys.stderr)
    finally:
        subprocess.run([os.path.join(HERE, "containerd-private.sh"), "stop", ctrd_dir], capture_output=True)
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        subprocess.run(["rm", "-rf", work])

    mib = nbytes / 2**20
    tput = {n: mib / r["secs"] for n, r in results.items()}
    cpu = {n: r["cpu"] / mib for n, r in results.items()}
    print("| pod -> host TCP over the bridge | Skiff | runc | Skiff / runc |")
    print("|---|---|---|---|")
    print(f"| throughput ({args.mib} MiB, nc) | {tput['skiff']:.3f} MiB/s | {tput['runc']:.1f} MiB/s "
          f"| {tput['skiff'] / tput['runc']:.4f} |")
    print(f"| host CPU per MiB (all processes) | {cpu['skiff'] * 1e3:.0f} ms | {cpu['runc'] * 1e3:.1f} ms "
          f"| {cpu['skiff'] / max(cpu['runc'], 1e-9):.0f} |")


if __name__ == "__main__":
    main()
