"""The syscalls each VMM thread made, grouped by thread name, from strace
logs: what a thread's seccomp table (docs/seccomp.md) must allow.

    strace -f -qq -Y -e signal=none -o /tmp/devices.txt \\
        target/release/deps/devices-<hash> --test-threads=1
    python3 scripts/strace-by-thread.py /tmp/devices.txt [more logs...]

A thread's calls before it names itself are counted under its parent.
"""
import re, sys, collections
pat = re.compile(r'^(\d+)<([^>]*)> (?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$')
calls = collections.defaultdict(collections.Counter)
detail = collections.defaultdict(collections.Counter)
for path in sys.argv[1:]:
    for line in open(path, errors='replace'):
        m = pat.match(line)
        if not m: continue
        tid, comm, resumed, name, rest = m.groups()
        if resumed: continue
        comm = re.sub(r'\d+$', 'N', comm) if comm.startswith('skiff-vcpu') else comm
        calls[comm][name] += 1
        if name in ('ioctl', 'fcntl', 'socket', 'prctl', 'madvise', 'futex', 'clock_gettime', 'fallocate', 'epoll_ctl', 'rt_sigprocmask', 'mmap', 'clone3', 'clone'):
            args = rest.split(', ')
            key = args[1] if name in ('ioctl','fcntl','futex','madvise','epoll_ctl','fallocate') and len(args) > 1 else args[0]
            if name == 'mmap' and len(args) > 2: key = args[2]
            if name == 'rt_sigprocmask': key = args[0]
            detail[comm][(name, key.split(' ')[0][:40])] += 1
want = [c for c in calls if c.startswith(('skiff', 'virtio', 'vmm'))]
for comm in sorted(want):
    print(f"### {comm}")
    print(", ".join(f"{n}({c})" for n, c in sorted(calls[comm].items())))
    d = sorted(detail[comm].items())
    if d:
        print("  args: " + "; ".join(f"{n} {k} x{c}" for (n, k), c in d))
    print()
print("other threads:", sorted(c for c in calls if c not in want))
