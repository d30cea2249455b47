#!/bin/bash
# Boots a guest with virtio-net on a tap inside a throwaway network
# namespace and checks ping and TCP transfers both ways (md5).
# Usage: scripts/net-tap-check.sh [MiB]   (as root; needs python3)
set -u
cd "$(dirname "$0")/.."
MIB=${1:-4}
NS=skiff-nettest-$$
TAP=sktap0
WORK=$(mktemp -d)
ip netns add "$NS" || exit 1
cleanup() {
    [ -n "${SRV:-}" ] && kill "$SRV" 2>/dev/null
    ip netns del "$NS"
    rm -rf "$WORK"
}
trap cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up

head -c $((MIB << 20)) /dev/urandom > "$WORK/to-guest"
echo "host: to-guest md5 $(md5sum < "$WORK/to-guest")"

# Host side: port 5001 takes MIB MiB from the guest, 5002 sends to it.
cat > "$WORK/srv.py" <<PY
import hashlib, socket, threading
size = $MIB << 20
def recv():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 5001)); s.listen(1); s.settimeout(900)
    c, _ = s.accept(); h = hashlib.md5(); n = 0
    while n < size:
        b = c.recv(65536)
        if not b: break
        h.update(b); n += len(b)
    print(f"host: from-guest {n} bytes md5 {h.hexdigest()}", flush=True); c.close()
def send():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 5002)); s.listen(1); s.settimeout(900)
    c, _ = s.accept(); c.sendall(open("$WORK/to-guest", "rb").read())
    c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
    print("host: to-guest sent", flush=True)
t = [threading.Thread(target=f) for f in (recv, send)]
[x.start() for x in t]; [x.join() for x in t]
PY
in_ns python3 "$WORK/srv.py" &
SRV=$!

GUEST='ip link set eth0 up; ip addr add 10.213.0.2/24 dev eth0; echo guest: mac $(cat /sys/class/net/eth0/address); ping -c 3 10.213.0.1; dd if=/dev/urandom of=/tmp/out bs=64k count='$((MIB * 16))' 2>/dev/null; echo guest: from-guest md5 $(md5sum < /tmp/out); nc 10.213.0.1 5001 < /tmp/out; echo guest: sent rc=$?; nc 10.213.0.1 5002 > /tmp/in; echo guest: received rc=$? $(stat -c %s /tmp/in) bytes; echo guest: to-guest md5 $(md5sum < /tmp/in); for f in rx_packets rx_dropped rx_errors tx_packets tx_dropped tx_errors; do echo guest: $f $(cat /sys/class/net/eth0/statistics/$f); done'

in_ns target/release/vm-run --kernel build/guest/vmlinux \
    --initrd build/guest/initramfs-debug.cpio --memory 256 --timeout 600 \
    --net tap=$TAP,mac=02:00:0a:d5:00:02 -- sh -c "$GUEST" &
VM=$!
for _ in $(seq 100); do in_ns ip link show $TAP >/dev/null 2>&1 && break; sleep 0.1; done
in_ns ip addr add 10.213.0.1/24 dev $TAP
in_ns ip link set $TAP up
wait $VM
echo "host: vm-run exit $?"
in_ns ip -s link show $TAP 2>&1 | head -1 | sed 's/^/host: after exit: /'
sleep 1
kill $SRV 2>/dev/null
