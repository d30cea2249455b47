// SPDX-License-Identifier: Apache-2.0
/*
 * /init of the Skiff debug initramfs.
 *
 * A static C program rather than a shell script: on a software-emulated
 * KVM every fork+exec costs seconds, so init does its work with plain
 * system calls.
 *
 *  1. mount /proc, /sys and devtmpfs on /dev; make sure fds 0-2 are open
 *     on /dev/console;
 *  2. write the boot-timer magic 0x7b to I/O port 0x440 (the VMM records
 *     time-to-init when it sees it);
 *  3. print "SKIFF-GUEST-READY";
 *  4. with arguments (the words after "--" on the kernel command line):
 *     run them (PATH=/bin:/sbin), wait, print "SKIFF-GUEST-EXIT <code>"
 *     or "SKIFF-GUEST-EXIT signal <n>"; without arguments run /bin/sh if
 *     the command line has "skiff.debug_shell", else nothing;
 *  5. sync and reboot (the kernel is booted with reboot=k: the i8042 reset
 *     becomes a clean VM exit).
 *
 * Build: gcc -static -Os -o init init.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_MAGIC 0x7b

static void say(const char *s)
{
	size_t len = strlen(s);

	while (len > 0) {
		ssize_t n = write(STDOUT_FILENO, s, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		s += n;
		len -= (size_t)n;
	}
}

static void warn(const char *what)
{
	char buf[256];

	snprintf(buf, sizeof(buf), "init: %s: %s\n", what, strerror(errno));
	say(buf);
}

static void do_mount(const char *src, const char *dir, const char *type,
		     unsigned long flags)
{
	mkdir(dir, 0755);
	if (mount(src, dir, type, flags, NULL) < 0 && errno != EBUSY) {
		char what[64];

		snprintf(what, sizeof(what), "mount %s", dir);
		warn(what);
	}
}

/* Make fds 0, 1 and 2 refer to the console if the kernel left them closed. */
static void setup_console(void)
{
	int fd;

	if (fcntl(0, F_GETFD) >= 0 && fcntl(1, F_GETFD) >= 0 &&
	    fcntl(2, F_GETFD) >= 0)
		return;
	fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return;
	for (int i = 0; i <= 2; i++)
		if (fcntl(i, F_GETFD) < 0)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

static sigjmp_buf port_fault;

static void on_port_fault(int sig)
{
	siglongjmp(port_fault, sig);
}

/* Boot-timer write; must never kill init, so a fault is caught. */
static void signal_boot_timer(void)
{
	struct sigaction sa = { .sa_handler = on_port_fault }, old_segv, old_bus;

	if (ioperm(BOOT_TIMER_PORT, 1, 1) < 0) {
		warn("ioperm");
		return;
	}
	sigaction(SIGSEGV, &sa, &old_segv);
	sigaction(SIGBUS, &sa, &old_bus);
	if (sigsetjmp(port_fault, 1) == 0)
		outb(BOOT_TIMER_MAGIC, BOOT_TIMER_PORT);
	else
		say("init: boot-timer port write faulted\n");
	sigaction(SIGSEGV, &old_segv, NULL);
	sigaction(SIGBUS, &old_bus, NULL);
	ioperm(BOOT_TIMER_PORT, 1, 0);
}

static int cmdline_has(const char *word)
{
	char buf[4096];
	size_t wlen = strlen(word);
	ssize_t n;
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	for (char *p = buf; (p = strstr(p, word)) != NULL; p += wlen) {
		int start = p == buf || p[-1] == ' ';
		int end = p[wlen] == '\0' || p[wlen] == ' ' || p[wlen] == '\n';

		if (start && end)
			return 1;
	}
	return 0;
}

static void report(int st)
{
	char msg[64];

	if (WIFSIGNALED(st))
		snprintf(msg, sizeof(msg), "SKIFF-GUEST-EXIT signal %d\n",
			 WTERMSIG(st));
	else
		snprintf(msg, sizeof(msg), "SKIFF-GUEST-EXIT %d\n",
			 WEXITSTATUS(st));
	say(msg);
}

/* Wait for pid, reaping every other child too; return pid's wait status. */
static int wait_for(pid_t pid)
{
	int status = 0;

	for (;;) {
		int st;
		pid_t w = waitpid(-1, &st, 0);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (w == pid) {
			status = st;
			break;
		}
	}
	/* Reap whatever else has already exited (orphans re-parented to us). */
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	return status;
}

/* Run argv (vfork: a full fork is slow on an emulated kernel). */
static int run(char **argv)
{
	pid_t pid = vfork();

	if (pid < 0) {
		warn("vfork");
		return 127 << 8;
	}
	if (pid == 0) {
		/* Own session with the console as controlling terminal. */
		setsid();
		ioctl(STDIN_FILENO, TIOCSCTTY, 1);
		execvp(argv[0], argv);
		_exit(errno == ENOENT ? 127 : 126);
	}
	return wait_for(pid);
}

int main(int argc, char **argv)
{
	do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID);
	setup_console();
	setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin", 1);
	if (!getenv("HOME"))
		setenv("HOME", "/", 1);

	signal_boot_timer();
	say("SKIFF-GUEST-READY\n");

	if (argc > 1) {
		report(run(&argv[1]));
	} else if (cmdline_has("skiff.debug_shell")) {
		char *sh[] = { "/bin/sh", NULL };

		report(run(sh));
	}

	sync();
	reboot(RB_AUTOBOOT);
	warn("reboot");
	return 1;
}
