"""Shared pieces of the VMM benchmarks: run a VMM process, read its serial
console as it arrives, and sample its threads' CPU time and memory from
/proc. Used by bench_boot.py and bench_devices.py, the same way for Skiff
and for QEMU, so both are measured from the outside alike."""
import os
import re
import subprocess
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid):
    """{"name/tid": cpu seconds} from /proc/PID/task/*/stat."""
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
    """Process RSS minus the RSS of mappings at least as large as guest RAM,
    in MiB, or None when the process is gone."""
    total = guest = size = 0
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


def is_vcpu_thread(name):
    """Skiff names vCPU threads skiff-vcpuN; QEMU names them "CPU N/KVM"."""
    return name.startswith("skiff-vcpu") or re.match(r"CPU \d+/KVM", name) is not None


class Snapshot:
    def __init__(self, start, cpu):
        self.wall = time.monotonic() - start
        self.vcpu = sum(v for k, v in cpu.items() if is_vcpu_thread(k))
        self.other = sum(v for k, v in cpu.items() if not is_vcpu_thread(k))


def run(cmd, guest_bytes, markers=(), env=None):
    """Runs `cmd` to completion. Records the wall time of the first console
    byte and of each line containing one of `markers` (with a CPU snapshot
    taken when the line arrives), and samples CPU and memory every 50 ms."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    result = {"marks": {}, "cpu": {}, "rss_outside_guest": []}
    console = bytearray()

    def read_console():
        pending = b""
        while True:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                return
            now_cpu = thread_cpu(proc.pid)
            result["marks"].setdefault("first_byte", Snapshot(start, now_cpu))
            console.extend(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                for marker in markers:
                    if marker.encode() in line and marker not in result["marks"]:
                        result["marks"][marker] = Snapshot(start, now_cpu)

    reader = threading.Thread(target=read_console)
    reader.start()
    while proc.poll() is None:
        sample = thread_cpu(proc.pid)
        if sample:
            result["cpu"].update(sample)
        rss = rss_outside_guest(proc.pid, guest_bytes)
        if rss is not None:
            result["rss_outside_guest"].append(rss)
        time.sleep(0.05)
    result["exit"] = time.monotonic() - start
    reader.join()
    result["rc"] = proc.returncode
    result["stderr"] = proc.stderr.read().decode(errors="replace")
    result["console"] = console.decode(errors="replace")
    result["vcpu_cpu"] = sum(v for k, v in result["cpu"].items() if is_vcpu_thread(k))
    result["vmm_cpu"] = sum(v for k, v in result["cpu"].items() if not is_vcpu_thread(k))
    return result


def qemu_microvm(kernel, initrd, cmdline, memory_mib, extra=(), qemu="qemu-system-x86_64",
                 machine_options=""):
    """The QEMU peer: microvm with virtio-mmio, no option ROMs, named
    threads (so vCPU time can be told apart), serial
    console on stdio, an i8042 for the guest's reset (reboot=k), exit on
    guest reset. `-cpu host` minus arch-capabilities, which this host's
    KVM cannot set."""
    return [qemu, "-name", "bench,debug-threads=on",
            "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on"
            + (f",{machine_options}" if machine_options else ""),
            "-device", "i8042",
            "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", str(memory_mib), "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", cmdline, *extra]
