// SPDX-License-Identifier: Apache-2.0
/*
 * /init of the Skiff debug initramfs (x86_64 only).
 *
 * Freestanding: no libc, raw system calls.  On a software-emulated KVM the
 * kernel unpacks the initramfs at ~2 s per MB and every fork+exec costs
 * seconds, so /init is a few KB (a static glibc binary is ~700 KB) and
 * does its work with plain system calls instead of a shell.
 *
 *  1. mount /proc, /sys and devtmpfs on /dev; make sure fds 0-2 are open
 *     on /dev/console;
 *  2. write the boot-timer magic 0x7b to I/O port 0x440 (ioperm + outb; the
 *     VMM records time-to-init when it sees it); a fault is caught;
 *  3. print "SKIFF-GUEST-READY";
 *  4. with arguments (the words after "--" on the kernel command line):
 *     run them with PATH=/bin:/sbin:/usr/bin:/usr/sbin (a command that is
 *     not found there runs as a busybox applet), reap every child, print
 *     "SKIFF-GUEST-EXIT <code>" or "SKIFF-GUEST-EXIT signal <n>";
 *     without arguments run /bin/sh if the command line has
 *     "skiff.debug_shell", else nothing;
 *  5. sync and reboot(RB_AUTOBOOT) (the kernel is booted with reboot=k: the
 *     i8042 reset becomes a clean VM exit).
 *
 * Build: gcc -static -nostdlib -ffreestanding -fno-stack-protector -no-pie
 *            -Os -s -o init init.c
 */

typedef unsigned long size_t;
typedef long ssize_t;

#define NULL ((void *)0)

/* x86_64 system call numbers */
#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_rt_sigaction 13
#define SYS_rt_sigreturn 15
#define SYS_ioctl 16
#define SYS_dup2 33
#define SYS_fork 57
#define SYS_execve 59
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_fcntl 72
#define SYS_mkdir 83
#define SYS_setsid 112
#define SYS_sync 162
#define SYS_mount 165
#define SYS_reboot 169
#define SYS_ioperm 173

#define O_RDONLY 0
#define O_RDWR 2
#define O_NOCTTY 0400
#define O_CLOEXEC 02000000
#define F_GETFD 1
#define TIOCSCTTY 0x540E
#define MS_NOSUID 2
#define MS_NODEV 4
#define MS_NOEXEC 8
#define WNOHANG 1
#define EINTR 4
#define ENOENT 2
#define EACCES 13
#define EBUSY 16
#define SIGBUS 7
#define SIGSEGV 11
#define SA_SIGINFO 4
#define SA_RESTORER 0x04000000
#define LINUX_REBOOT_MAGIC1 0xfee1dead
#define LINUX_REBOOT_MAGIC2 672274793
#define LINUX_REBOOT_CMD_RESTART 0x01234567

/* The boot-timer contract, defined in guest/abi/src/boot_timer.rs (whose
 * tests check these two lines). */
#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_MAGIC 0x7b

static long syscall6(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8),
			   "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

#define sc0(n) syscall6(n, 0, 0, 0, 0, 0, 0)
#define sc1(n, a) syscall6(n, (long)(a), 0, 0, 0, 0, 0)
#define sc2(n, a, b) syscall6(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define sc3(n, a, b, c) syscall6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define sc4(n, a, b, c, d) \
	syscall6(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define sc5(n, a, b, c, d, e) \
	syscall6(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

/* The compiler may emit calls to these even when freestanding. */
void *memset(void *s, int c, size_t n)
{
	unsigned char *p = s;

	while (n--)
		*p++ = (unsigned char)c;
	return s;
}

void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;

	while (n--)
		*dp++ = *sp++;
	return d;
}

static size_t str_len(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

static int starts_with(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

static int has_char(const char *s, char c)
{
	for (; *s; s++)
		if (*s == c)
			return 1;
	return 0;
}

/* Append src to the buffer at *pos (bounded by end); returns dst. */
static char *append(char *dst, size_t *pos, size_t size, const char *src)
{
	while (*src && *pos + 1 < size)
		dst[(*pos)++] = *src++;
	dst[*pos] = '\0';
	return dst;
}

static char *append_num(char *dst, size_t *pos, size_t size, long v)
{
	char tmp[24];
	int i = 0;

	if (v < 0) {
		append(dst, pos, size, "-");
		v = -v;
	}
	do {
		tmp[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v && i < (int)sizeof(tmp));
	while (i > 0 && *pos + 1 < size)
		dst[(*pos)++] = tmp[--i];
	dst[*pos] = '\0';
	return dst;
}

static void say(const char *s)
{
	size_t len = str_len(s);

	while (len > 0) {
		long n = sc3(SYS_write, 1, s, len);

		if (n == -EINTR)
			continue;
		if (n <= 0)
			return;
		s += n;
		len -= (size_t)n;
	}
}

static void warn(const char *what, long err)
{
	char buf[128];
	size_t pos = 0;

	append(buf, &pos, sizeof(buf), "init: ");
	append(buf, &pos, sizeof(buf), what);
	append(buf, &pos, sizeof(buf), ": error ");
	append_num(buf, &pos, sizeof(buf), -err);
	append(buf, &pos, sizeof(buf), "\n");
	say(buf);
}

static void do_mount(const char *src, const char *dir, const char *type,
		     unsigned long flags)
{
	long r;

	sc2(SYS_mkdir, dir, 0755);
	r = sc5(SYS_mount, src, dir, type, flags, 0);
	if (r < 0 && r != -EBUSY)
		warn(dir, r);
}

/* Make fds 0, 1 and 2 refer to the console if the kernel left them closed. */
static void setup_console(void)
{
	long fd;
	int i;

	if (sc2(SYS_fcntl, 0, F_GETFD) >= 0 && sc2(SYS_fcntl, 1, F_GETFD) >= 0 &&
	    sc2(SYS_fcntl, 2, F_GETFD) >= 0)
		return;
	fd = sc3(SYS_open, "/dev/console", O_RDWR | O_NOCTTY, 0);
	if (fd < 0)
		return;
	for (i = 0; i <= 2; i++)
		if (sc2(SYS_fcntl, i, F_GETFD) < 0)
			sc2(SYS_dup2, fd, i);
	if (fd > 2)
		sc1(SYS_close, fd);
}

/*
 * Boot-timer write.  It must never kill init: if the OUT faults anyway,
 * the signal handler skips the one-byte "out %al,(%dx)" instruction.
 */
struct k_sigaction {
	void (*handler)(int, void *, void *);
	unsigned long flags;
	void (*restorer)(void);
	unsigned long mask;
};

/* Offset of uc_mcontext.gregs[REG_RIP] in the x86_64 ucontext. */
#define UC_RIP_OFFSET (8 + 8 + 24 + 16 * 8)

static volatile int port_faulted;

void skiff_sigreturn(void);
__asm__(".text\n"
	".type skiff_sigreturn,@function\n"
	"skiff_sigreturn:\n"
	"	mov $15, %eax\n" /* SYS_rt_sigreturn */
	"	syscall\n"
	"	hlt\n");

static void on_port_fault(int sig, void *info, void *uc)
{
	(void)sig;
	(void)info;
	*(unsigned long *)((char *)uc + UC_RIP_OFFSET) += 1;
	port_faulted = 1;
}

static void signal_boot_timer(void)
{
	struct k_sigaction sa = {
		.handler = on_port_fault,
		.flags = SA_SIGINFO | SA_RESTORER,
		.restorer = skiff_sigreturn,
	};
	struct k_sigaction dfl = { 0 };
	long r = sc3(SYS_ioperm, BOOT_TIMER_PORT, 1, 1);

	if (r < 0) {
		warn("ioperm", r);
		return;
	}
	sc4(SYS_rt_sigaction, SIGSEGV, &sa, NULL, 8);
	sc4(SYS_rt_sigaction, SIGBUS, &sa, NULL, 8);
	__asm__ volatile("outb %b0, %w1"
			 :
			 : "a"(BOOT_TIMER_MAGIC), "d"(BOOT_TIMER_PORT)
			 : "memory");
	sc4(SYS_rt_sigaction, SIGSEGV, &dfl, NULL, 8);
	sc4(SYS_rt_sigaction, SIGBUS, &dfl, NULL, 8);
	sc3(SYS_ioperm, BOOT_TIMER_PORT, 1, 0);
	if (port_faulted)
		say("init: boot-timer port write faulted\n");
}

static int cmdline_has(const char *word)
{
	static char buf[4096];
	size_t wlen = str_len(word);
	long fd = sc3(SYS_open, "/proc/cmdline", O_RDONLY | O_CLOEXEC, 0);
	long n;

	if (fd < 0)
		return 0;
	n = sc3(SYS_read, fd, buf, sizeof(buf) - 1);
	sc1(SYS_close, fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	for (long i = 0; i + (long)wlen <= n; i++) {
		int start = i == 0 || buf[i - 1] == ' ';
		char after = buf[i + wlen];

		if (start && starts_with(buf + i, word) &&
		    (after == '\0' || after == ' ' || after == '\n'))
			return 1;
	}
	return 0;
}

static const char path_env[] = "PATH=/bin:/sbin:/usr/bin:/usr/sbin";
static const char *const path_dirs[] = { "/bin/", "/sbin/", "/usr/bin/",
					 "/usr/sbin/" };

/* In the child: exec argv[0] like execvp() with our PATH; never returns. */
static void exec_command(char **argv, char **envp)
{
	static char path[4096];
	long r = -ENOENT, err = -ENOENT;

	if (has_char(argv[0], '/')) {
		err = sc3(SYS_execve, argv[0], argv, envp);
	} else {
		for (unsigned i = 0; i < sizeof(path_dirs) / sizeof(path_dirs[0]); i++) {
			size_t pos = 0;

			append(path, &pos, sizeof(path), path_dirs[i]);
			append(path, &pos, sizeof(path), argv[0]);
			r = sc3(SYS_execve, path, argv, envp);
			if (r != -ENOENT)
				err = r;
		}
		/* Not found: try it as a busybox applet (argv[0] names it). */
		if (err == -ENOENT)
			err = sc3(SYS_execve, "/bin/busybox", argv, envp);
	}
	warn(argv[0], err);
	sc1(SYS_exit, err == -ENOENT ? 127 : 126);
}

/* Run argv, reaping every child; return the wait status of argv's process. */
static int run(char **argv, char **envp)
{
	long pid = sc0(SYS_fork);
	int status = 0;

	if (pid < 0) {
		warn("fork", pid);
		return 127 << 8;
	}
	if (pid == 0) {
		/* Own session with the console as controlling terminal. */
		sc0(SYS_setsid);
		sc3(SYS_ioctl, 0, TIOCSCTTY, 1);
		exec_command(argv, envp);
	}
	for (;;) {
		int st = 0;
		long w = sc4(SYS_wait4, -1, &st, 0, 0);

		if (w == -EINTR)
			continue;
		if (w < 0)
			break;
		if (w == pid) {
			status = st;
			break;
		}
	}
	/* Reap whatever else has already exited (orphans re-parented to us). */
	while (sc4(SYS_wait4, -1, NULL, WNOHANG, 0) > 0)
		;
	return status;
}

static void report(int st)
{
	char msg[64];
	size_t pos = 0;

	append(msg, &pos, sizeof(msg), "SKIFF-GUEST-EXIT ");
	if ((st & 0x7f) != 0 && (st & 0x7f) != 0x7f) { /* WIFSIGNALED */
		append(msg, &pos, sizeof(msg), "signal ");
		append_num(msg, &pos, sizeof(msg), st & 0x7f);
	} else {
		append_num(msg, &pos, sizeof(msg), (st >> 8) & 0xff);
	}
	append(msg, &pos, sizeof(msg), "\n");
	say(msg);
}

__attribute__((used, noreturn)) void init_main(long *sp)
{
	static char *envp[64];
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	char **kenv = argv + argc + 1;
	int n = 0;

	/* Environment from the kernel, with our PATH. */
	envp[n++] = (char *)path_env;
	for (int i = 0; kenv[i] && n < 63; i++)
		if (!starts_with(kenv[i], "PATH="))
			envp[n++] = kenv[i];
	envp[n] = NULL;

	do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID);
	setup_console();

	signal_boot_timer();
	say("SKIFF-GUEST-READY\n");

	if (argc > 1) {
		report(run(argv + 1, envp));
	} else if (cmdline_has("skiff.debug_shell")) {
		char *sh[] = { "sh", NULL };

		report(run(sh, envp));
	}

	sc0(SYS_sync);
	sc4(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
	    LINUX_REBOOT_CMD_RESTART, 0);
	warn("reboot", -1);
	for (;;)
		sc1(SYS_exit, 1);
}

/* Entry point: the stack holds argc, argv[], NULL, envp[], NULL. */
__asm__(".text\n"
	".global _start\n"
	".type _start,@function\n"
	"_start:\n"
	"	xor %ebp, %ebp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call init_main\n"
	"	hlt\n");
