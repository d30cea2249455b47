/* vsock-test: a tiny AF_VSOCK checker for the debug initramfs (busybox nc
 * has no vsock). Static and libc-free like init.c, so it adds ~10 KB to
 * the image; one poll() loop runs every action at once:
 *
 *   -l PORT:N          listen on PORT and serve N connections: echo every
 *                      byte back until EOF, then print count and FNV-1a
 *   -s CID:PORT:BYTES  connect, send BYTES of the test pattern, shut down
 *                      writing, wait for EOF, print count and FNV-1a
 *   -r CID:PORT        connect where nobody listens: must fail
 *
 * Pattern byte i = (u32)(i * 2654435761) >> 24. Exit status 0 when every
 * action passed. */
#include <linux/poll.h>
#include <linux/socket.h>
#include <linux/vm_sockets.h>
#include <asm/unistd.h>

#define AF_VSOCK_ 40
#define SOCK_STREAM_ 1
#define SOCK_NONBLOCK_ 04000
#define SHUT_WR_ 1
#define EAGAIN_ 11
#define EINTR_ 4
#define MAX_FDS 64
#define BUF 16384

typedef unsigned long u64;
typedef unsigned int u32;

static long sys(long n, long a, long b, long c, long d)
{
	register long r10 __asm__("r10") = d;
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}

/* ---- output ---- */
static char out[256];
static int out_len;
static void puts_(const char *s) { while (*s && out_len < 250) out[out_len++] = *s++; }
static void num(u64 v, int base)
{
	char t[24];
	int n = 0;
	do { t[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
	while (n && out_len < 250) out[out_len++] = t[--n];
}
static void flush_line(void) { out[out_len++] = '\n'; sys(__NR_write, 1, (long)out, out_len, 0); out_len = 0; }
static void err(const char *what, long e) { puts_("vsock-test: "); puts_(what); puts_(" errno="); num(-e, 10); flush_line(); }

static unsigned long parse(const char **s)
{
	unsigned long v = 0;
	while (**s >= '0' && **s <= '9') v = v * 10 + (unsigned long)(*(*s)++ - '0');
	if (**s == ':') (*s)++;
	return v;
}

/* ---- connections ---- */
enum kind { LISTENER, ECHO, SENDER };
struct conn {
	enum kind kind;
	int fd, done_writing;
	u32 port, left; /* LISTENER: connections still to accept */
	u64 total, sent, want, hash;
	unsigned char buf[BUF];
	long buf_off, buf_len;
};
static struct conn conns[MAX_FDS];
static int nconns, failures, active;

#define FNV_INIT 0xcbf29ce484222325UL
static u64 fnv(u64 h, const unsigned char *p, long n) { while (n-- > 0) { h ^= *p++; h *= 0x100000001b3UL; } return h; }
static unsigned char pattern(u64 i) { return (unsigned char)(((u32)i * 2654435761u) >> 24); }

static struct conn *add(enum kind kind, int fd, u32 port)
{
	if (nconns >= MAX_FDS) { err("too many fds", -24); failures++; sys(__NR_close, fd, 0, 0, 0); return 0; }
	struct conn *c = &conns[nconns++];
	c->kind = kind; c->fd = fd; c->port = port; c->hash = FNV_INIT;
	active++;
	return c;
}

static void finish(struct conn *c, const char *what)
{
	puts_("vsock-test: "); puts_(what); puts_(" port="); num(c->port, 10);
	puts_(" bytes="); num(c->kind == SENDER ? c->sent : c->total, 10);
	puts_(" fnv="); num(c->hash, 16); flush_line();
	sys(__NR_close, c->fd, 0, 0, 0);
	c->fd = -1;
	active--;
}

static long vsock_socket(void) { return sys(__NR_socket, AF_VSOCK_, SOCK_STREAM_, 0, 0); }

static void step(struct conn *c, short revents)
{
	long n;
	if (c->kind == LISTENER) {
		while (c->left && (n = sys(__NR_accept4, c->fd, 0, 0, SOCK_NONBLOCK_)) >= 0) {
			c->left--;
			add(ECHO, (int)n, c->port);
		}
		if (!c->left) { sys(__NR_close, c->fd, 0, 0, 0); c->fd = -1; active--; }
		return;
	}
	for (;;) {
		if (c->buf_len) { /* pending output */
			n = sys(__NR_write, c->fd, (long)(c->buf + c->buf_off), c->buf_len, 0);
			if (n == -EAGAIN_) return;
			if (n < 0) { err("write", n); failures++; finish(c, "FAILED"); return; }
			c->buf_off += n; c->buf_len -= n;
			continue;
		}
		if (c->kind == SENDER && c->sent < c->want) {
			long k = c->want - c->sent < BUF ? (long)(c->want - c->sent) : BUF;
			for (long i = 0; i < k; i++) c->buf[i] = pattern(c->sent + i);
			c->hash = fnv(c->hash, c->buf, k);
			c->sent += k; c->buf_off = 0; c->buf_len = k;
			continue;
		}
		if (c->kind == SENDER && !c->done_writing) { sys(__NR_shutdown, c->fd, SHUT_WR_, 0, 0); c->done_writing = 1; }
		n = sys(__NR_read, c->fd, (long)c->buf, BUF, 0);
		if (n == -EAGAIN_) return;
		if (n < 0) { err("read", n); failures++; finish(c, "FAILED"); return; }
		if (n == 0) {
			if (c->kind == ECHO) sys(__NR_shutdown, c->fd, SHUT_WR_, 0, 0);
			finish(c, c->kind == ECHO ? "echo" : "sent");
			return;
		}
		if (c->kind == ECHO) {
			c->hash = fnv(c->hash, c->buf, n);
			c->total += n; c->buf_off = 0; c->buf_len = n;
		}
	}
	(void)revents;
}

static long connect_to(u32 cid, u32 port)
{
	long fd = vsock_socket();
	if (fd < 0) return fd;
	struct sockaddr_vm a = { .svm_family = AF_VSOCK_, .svm_cid = cid, .svm_port = port };
	long r = sys(__NR_connect, fd, (long)&a, sizeof a, 0);
	if (r < 0) { sys(__NR_close, fd, 0, 0, 0); return r; }
	return fd;
}

int vt_main(long *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *s = argv[i + 1];
		char k = argv[i][1];
		if (k == 'l') {
			u32 port = (u32)parse(&s);
			long fd = vsock_socket();
			struct sockaddr_vm a = { .svm_family = AF_VSOCK_, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
			if (fd < 0 || sys(__NR_bind, fd, (long)&a, sizeof a, 0) < 0 || sys(__NR_listen, fd, 16, 0, 0) < 0) {
				err("listen", fd < 0 ? fd : -1); failures++; continue;
			}
			struct conn *c = add(LISTENER, (int)fd, port);
			if (c) c->left = (u32)parse(&s);
			puts_("vsock-test: listening port="); num(port, 10); flush_line();
		}
	}
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *s = argv[i + 1];
		char k = argv[i][1];
		if (k != 's' && k != 'r') continue;
		u32 cid = (u32)parse(&s), port = (u32)parse(&s);
		long fd = connect_to(cid, port);
		if (k == 'r') {
			if (fd >= 0) { puts_("vsock-test: UNEXPECTED connect port="); num(port, 10); flush_line(); failures++; sys(__NR_close, fd, 0, 0, 0); }
			else { puts_("vsock-test: refused port="); num(port, 10); puts_(" errno="); num(-fd, 10); flush_line(); }
			continue;
		}
		if (fd < 0) { err("connect", fd); failures++; continue; }
		sys(__NR_fcntl, fd, 4 /* F_SETFL */, SOCK_NONBLOCK_, 0);
		struct conn *c = add(SENDER, (int)fd, port);
		if (c) c->want = parse(&s);
	}
	struct pollfd p[MAX_FDS];
	while (active > 0) {
		int n = 0, map[MAX_FDS];
		for (int i = 0; i < nconns; i++) {
			struct conn *c = &conns[i];
			if (c->fd < 0) continue;
			int wants_out = c->buf_len || (c->kind == SENDER && c->sent < c->want);
			p[n].fd = c->fd; p[n].events = wants_out ? POLLOUT : POLLIN; p[n].revents = 0;
			map[n++] = i;
		}
		long r = sys(__NR_poll, (long)p, n, -1, 0);
		if (r == -EINTR_) continue;
		if (r < 0) { err("poll", r); failures++; break; }
		for (int i = 0; i < n; i++)
			if (p[i].revents) step(&conns[map[i]], p[i].revents);
	}
	puts_("vsock-test: done failures="); num((u64)failures, 10); flush_line();
	sys(__NR_exit_group, failures ? 1 : 0, 0, 0, 0);
	return 0;
}

/* The stack holds argc, argv[], NULL, envp[], NULL. */
__asm__(".text\n.global _start\n_start:\n"
	"	xor %ebp, %ebp\n	mov %rsp, %rdi\n	and $-16, %rsp\n"
	"	call vt_main\n	hlt\n");
