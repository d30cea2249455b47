#!/usr/bin/env python3
"""Guest-side device throughput: Skiff's virtio-blk, virtio-net and
virtio-vsock against QEMU microvm's virtio-blk and virtio-net, same guest
kernel, initramfs and command line, 1 vCPU, runs alternating.

Each phase is timed inside the guest (/proc/uptime around the transfer)
and the VMM's CPU is sampled from /proc when the phase's console markers
arrive, so CPU per MB counts only that phase:
  total CPU/MB   every thread of the VMM process (mostly the emulated
                 guest kernel on a host without VMX/SVM)
  VMM CPU/MB     threads other than the vCPUs: the device emulation itself
QEMU has no user-space vsock (vhost-vsock needs /dev/vhost-vsock), so vsock
is Skiff only. `--qemu` adds QEMU microvm (virtio-mmio transports 7 and 6,
declared on the command line; `acpi=off` so microvm writes the MP table
our ACPI-less guest routes interrupts by).
Must run as root (tap, netns).

Usage: scripts/bench_devices.py [--runs N] [--blk-mib M] [--net-mib M] [--vsock-mib M]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmmbench  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_IP, GUEST_IP, TAP = "10.213.9.1", "10.213.9.2", "skbench0"
NS = f"skiff-bench-{os.getpid()}"
MEMORY = 256


def sh(*cmd):
    subprocess.run(cmd, check=True)


def guest_script(args, with_vsock):
    phases = [
        ("blk", f"dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null"),
        ("net", f"ip link set eth0 up; ip addr add {GUEST_IP}/24 dev eth0; "
                f"ping -c 1 -W 30 {HOST_IP} >/dev/null; "
                f"dd if=/dev/zero bs=64k count={args.net_mib * 16} 2>/dev/null | nc {HOST_IP} 5001"),
    ]
    if with_vsock:
        phases.append(("vsock", f"vsock-test -s 2:5000:{args.vsock_mib << 20}"))
    parts = []
    for name, cmd in phases:
        parts.append(f"echo BEGIN-{name} $(cut -d' ' -f1 /proc/uptime); {cmd}; "
                     f"echo END-{name} $(cut -d' ' -f1 /proc/uptime)")
    return "; ".join(parts)


def net_sink(expect):
    """Receives `expect` bytes per connection on HOST_IP:5001 (in the netns)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST_IP, 5001))
    srv.listen(4)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            left = expect
            while left > 0:
                data = conn.recv(min(left, 1 << 16))
                if not data:
                    break
                left -= len(data)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()


def vsock_sink(path):
    """Drains guest connections to host port 5000 (a Unix listener)."""
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            while conn.recv(1 << 16):
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()


def phase_stats(result, name, mib):
    console = result["console"]
    try:
        begin = float(console.split(f"BEGIN-{name} ")[1].split()[0])
        end = float(console.split(f"END-{name} ")[1].split()[0])
    except (IndexError, ValueError):
        return None
    marks = result["marks"]
    b, e = marks.get(f"BEGIN-{name}"), marks.get(f"END-{name}")
    if not b or not e or end <= begin:
        return None
    return {
        "mib_s": mib / (end - begin),
        "cpu_ms_per_mib": (e.vcpu + e.other - b.vcpu - b.other) * 1e3 / mib,
        "vmm_cpu_ms_per_mib": (e.other - b.other) * 1e3 / mib,
    }


def inside_netns(args):
    kernel = os.path.join(REPO, "build/guest/vmlinux")
    initrd = os.path.join(REPO, "build/guest/initramfs-debug.cpio")
    vm_run = os.path.join(REPO, "target/release/vm-run")
    work = tempfile.mkdtemp(prefix="skiff-bench-")
    try:
        run_phases(args, kernel, initrd, vm_run, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_phases(args, kernel, initrd, vm_run, work):
    image = os.path.join(work, "disk.img")
    with open(image, "wb") as f:
        f.write(os.urandom(args.blk_mib << 20))
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "tuntap", "add", TAP, "mode", "tap")
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP)
    sh("ip", "link", "set", TAP, "up")
    net_sink(args.net_mib << 20)
    vsock_socket = os.path.join(work, "v.sock")
    vsock_sink(f"{vsock_socket}_5000")

    base = None
    markers = [f"{p}-{n}" for n in ("blk", "net", "vsock") for p in ("BEGIN", "END")]
    sizes = {"blk": args.blk_mib, "net": args.net_mib, "vsock": args.vsock_mib}
    rows = {"skiff": [], "qemu": []}
    for i in range(args.runs):
        script = guest_script(args, with_vsock=True)
        skiff = [vm_run, "--kernel", kernel, "--initrd", initrd, "--memory", str(MEMORY),
                 "--json", "--disk", f"path={image},ro", "--net", f"tap={TAP}",
                 "--vsock", f"cid=3,socket={vsock_socket}", "--", "sh", "-c", script]
        r = vmmbench.run(skiff, MEMORY << 20, markers)
        if r["rc"] != 0:
            sys.exit(f"vm-run failed:\n{r['stderr']}\n{r['console'][-3000:]}")
        if base is None:
            report = json.loads([l for l in r["stderr"].splitlines() if l.startswith("{")][-1])
            base = report["cmdline"].split(" -- ")[0]
        rows["skiff"].append({n: phase_stats(r, n, sizes[n]) for n in sizes})
        print(f"run {i + 1}: skiff {rows['skiff'][-1]}", file=sys.stderr)

        if not args.qemu:
            continue
        qemu = vmmbench.qemu_microvm(
            kernel, initrd,
            f"{base} virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=512@0xfeb00c00:11"
            f" -- sh -c \"{guest_script(args, with_vsock=False)}\"",
            MEMORY, machine_options="acpi=off,auto-kernel-cmdline=off,ioapic2=off", extra=[
                "-global", "virtio-mmio.force-legacy=false",
                "-drive", f"id=d0,file={image},format=raw,if=none,readonly=on",
                "-device", "virtio-blk-device,drive=d0",
                "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                "-device", "virtio-net-device,netdev=n0"])
        q = vmmbench.run(qemu, MEMORY << 20, markers)
        if q["rc"] != 0:
            sys.exit(f"qemu failed:\n{q['stderr']}\n{q['console'][-3000:]}")
        rows["qemu"].append({n: phase_stats(q, n, sizes[n]) for n in ("blk", "net")})
        print(f"run {i + 1}: qemu {rows['qemu'][-1]}", file=sys.stderr)

    def med(vmm, dev, key):
        values = [r[dev][key] for r in rows[vmm] if r.get(dev)]
        return statistics.median(values) if values else None

    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    ratio = lambda a, b: "n/a" if a is None or not b else f"{a / b:.2f}"
    print(f"\nDevice throughput, guest side: {args.runs} runs each, median; 1 vCPU, "
          f"{MEMORY} MiB; blk {args.blk_mib} MiB dd read, net {args.net_mib} MiB TCP "
          f"guest->host, vsock {args.vsock_mib} MiB guest->host")
    print("| device | metric | skiff | qemu microvm | skiff/qemu |")
    print("|---|---|---:|---:|---:|")
    for dev in ("blk", "net", "vsock"):
        for key, label in (("mib_s", "MiB/s"), ("cpu_ms_per_mib", "host CPU ms/MiB (all threads)"),
                           ("vmm_cpu_ms_per_mib", "host CPU ms/MiB (VMM threads)")):
            s, q = med("skiff", dev, key), med("qemu", dev, key)
            print(f"| {dev} | {label} | {fmt(s)} | {fmt(q)} | {ratio(s, q)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--blk-mib", type=int, default=32)
    ap.add_argument("--net-mib", type=int, default=4)
    ap.add_argument("--vsock-mib", type=int, default=4)
    ap.add_argument("--qemu", action="store_true", help="also run QEMU microvm (see above)")
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.in_netns:
        return inside_netns(args)
    sh("ip", "netns", "add", NS)
    try:
        rc = subprocess.run(["ip", "netns", "exec", NS, sys.executable, __file__, "--in-netns",
                             *sys.argv[1:]]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", NS])
    sys.exit(rc)


if __name__ == "__main__":
    main()
