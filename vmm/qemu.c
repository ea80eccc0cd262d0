/*
 * vmm/qemu.c - the qemu engine: the same appliance, command line and virtual
 * hardware (pc machine without ACPI, MP table, 8250 on 0x3f8, legacy
 * virtio-blk over PCI) run by qemu-system-x86_64, for hosts whose /dev/kvm is
 * not hardware-backed.
 *
 * The disk reaches QEMU over NBD from a thread of this process (vmm/nbd.c)
 * serving the format layer with the write overlay: every keel format and
 * snapshot works, QEMU never opens the image, and the image cannot change.
 * The socket is abstract (no file); QEMU's console is a pipe; QEMU runs with
 * PR_SET_PDEATHSIG so it dies with us, and is killed and reaped on timeout,
 * cancel or error. Nothing is left behind on any path.
 */
#define _GNU_SOURCE
#include "vmm/vmm_int.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define QEMU_MAX_ARGS 48

struct qemu_args {
	char *v[QEMU_MAX_ARGS];
	int n;
};

static int qa_add(struct qemu_args *a, const char *fmt, ...) KL_PRINTF(2, 3);
static int qa_add(struct qemu_args *a, const char *fmt, ...)
{
	char buf[PATH_MAX + 256];
	va_list ap;
	char *s;
	int n;

	if (a->n + 1 >= QEMU_MAX_ARGS)
		return kl_err(-E2BIG, "too many QEMU arguments");
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return kl_err(-E2BIG, "QEMU argument too long");
	s = kl_strdup(buf);
	if (!s)
		return -ENOMEM;
	a->v[a->n++] = s;
	a->v[a->n] = NULL;
	return 0;
}

static void qa_free(struct qemu_args *a)
{
	for (int i = 0; i < a->n; i++)
		kl_free(a->v[i]);
	a->n = 0;
}

/* QEMU may use KVM only where it is hardware-backed; elsewhere TCG. */
static bool qemu_can_kvm(void)
{
	int fd;

	if (vmm_kvm_is_pvm())
		return false;
	fd = open(getenv("KEEL_KVM_DEV") && *getenv("KEEL_KVM_DEV") ? getenv("KEEL_KVM_DEV")
								    : "/dev/kvm",
		  O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static int build_args(const struct vmm_opts *o, const char *qemu, const char *kernel,
		      const char *initrd, const char *cmdline, const char *sock, bool disk,
		      struct qemu_args *a)
{
	uint64_t mem = o->mem_size ? o->mem_size : VMM_DEFAULT_MEM;
	const char *accel = qemu_can_kvm() ? "kvm" : "tcg";

	KL_TRY(qa_add(a, "%s", qemu));
	KL_TRY(qa_add(a, "-nodefaults"));
	KL_TRY(qa_add(a, "-no-user-config"));
	KL_TRY(qa_add(a, "-display"));
	KL_TRY(qa_add(a, "none"));
	KL_TRY(qa_add(a, "-no-reboot"));
	KL_TRY(qa_add(a, "-machine"));
	if (o->qemu_stock)
		KL_TRY(qa_add(a, "pc,accel=%s", accel));
	else
		KL_TRY(qa_add(a, "pc,accel=%s,acpi=off", accel));
	if (!strcmp(accel, "kvm")) {
		KL_TRY(qa_add(a, "-cpu"));
		KL_TRY(qa_add(a, "host"));
	}
	KL_TRY(qa_add(a, "-m"));
	KL_TRY(qa_add(a, "%lluM", (unsigned long long)(mem >> 20)));
	KL_TRY(qa_add(a, "-serial"));
	KL_TRY(qa_add(a, "stdio"));
	KL_TRY(qa_add(a, "-kernel"));
	KL_TRY(qa_add(a, "%s", kernel));
	if (initrd) {
		KL_TRY(qa_add(a, "-initrd"));
		KL_TRY(qa_add(a, "%s", initrd));
	}
	KL_TRY(qa_add(a, "-append"));
	KL_TRY(qa_add(a, "%s", cmdline));
	if (disk) {
		KL_TRY(qa_add(a, "-blockdev"));
		KL_TRY(qa_add(a, "driver=nbd,node-name=disk0,server.type=unix,server.path=%s,"
			      "server.abstract=on,read-only=%s", sock,
			      o->disk_writable ? "off" : "on"));
		KL_TRY(qa_add(a, "-device"));
		if (o->qemu_stock)
			KL_TRY(qa_add(a, "virtio-blk-pci,drive=disk0"));
		else
			KL_TRY(qa_add(a, "virtio-blk-pci,drive=disk0,disable-modern=on,"
				      "disable-legacy=off"));
	}
	return 0;
}

static void child_exec(struct qemu_args *a, int out_fd, int err_fd, pid_t parent)
{
	int null = open("/dev/null", O_RDONLY);

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(127);
	if (null >= 0)
		dup2(null, 0);
	dup2(out_fd, 1);
	dup2(err_fd, 2);
	execv(a->v[0], a->v);
	_exit(127);
}

int vmm_run_qemu(const struct vmm_opts *o, struct vmm_run_result *r)
{
	char qemu[PATH_MAX], sock[64], errbuf[1024];
	char *kernel = NULL, *initrd = NULL, *cmdline = NULL;
	unsigned timeout = o->timeout_s ? o->timeout_s : VMM_DEFAULT_TIMEOUT;
	struct qemu_args args = { 0 };
	struct vmm_disk *disk = NULL;
	struct vmm_nbd *nbd = NULL;
	int outp[2] = { -1, -1 }, errp[2] = { -1, -1 };
	size_t errlen = 0;
	pid_t pid = -1;
	struct vmm *con;
	int status = 0, rc;
	bool out_open = true, err_open = true, exited = false;

	con = kl_calloc(1, sizeof(*con));
	if (!con)
		return -ENOMEM;
	con->opts = o;
	con->t0 = kl_now();
	pthread_mutex_init(&con->con_lock, NULL);
	con->con = kl_malloc(VMM_CONSOLE_MAX);
	if (!con->con) {
		rc = -ENOMEM;
		goto out;
	}
	con->con[0] = 0;
	if (o->console_log) {
		con->con_log = fopen(o->console_log, "we");
		if (!con->con_log) {
			rc = kl_err(-errno, "console log %s: %s", o->console_log, strerror(errno));
			goto out;
		}
		setvbuf(con->con_log, NULL, _IOLBF, 0);
	}
	rc = vmm_find_qemu(o, qemu, sizeof(qemu));
	if (rc < 0)
		goto out;
	/* the tuned appliance enters the PVH vmlinux; stock QEMU boots the bzImage */
	rc = vmm_boot_files(o, !o->qemu_stock, &kernel, &initrd, &cmdline);
	if (rc < 0)
		goto out;
	if (o->qemu_stock && !o->cmdline) {
		kl_free(cmdline);
		cmdline = kl_strdup("console=ttyS0 panic=-1 rdinit=/init");
		if (!cmdline) {
			rc = -ENOMEM;
			goto out;
		}
	}
	if (o->disk || o->image) {
		rc = vmm_disk_open(o, &disk);
		if (rc < 0)
			goto out;
		snprintf(sock, sizeof(sock), "keel-verify-boot-%d-%llx", (int)getpid(),
			 (unsigned long long)kl_wallclock_ns());
		rc = vmm_nbd_start(disk, o->disk_writable, sock, &nbd);
		if (rc < 0)
			goto out;
	}
	rc = build_args(o, qemu, kernel, initrd, cmdline, sock, disk != NULL, &args);
	if (rc < 0)
		goto out;
	if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
		rc = kl_err(-errno, "pipe: %s", strerror(errno));
		goto out;
	}
	{
		pid_t parent = getpid();

		pid = fork();
		if (pid == 0)
			child_exec(&args, outp[1], errp[1], parent);
	}
	if (pid < 0) {
		rc = kl_err(-errno, "fork: %s", strerror(errno));
		goto out;
	}
	if (nbd)
		vmm_nbd_set_peer(nbd, pid);
	close(outp[1]);
	close(errp[1]);
	outp[1] = errp[1] = -1;
	r->t_setup = kl_now() - con->t0;

	while (out_open || err_open) {
		struct pollfd p[2] = { { outp[0], POLLIN, 0 }, { errp[0], POLLIN, 0 } };
		uint8_t buf[4096];
		int pr;

		if (o->cancel && *o->cancel) {
			r->exit = VMM_EXIT_CANCELLED;
			snprintf(r->detail, sizeof(r->detail), "cancelled");
			break;
		}
		if (kl_now() - con->t0 > timeout) {
			r->exit = VMM_EXIT_WATCHDOG;
			snprintf(r->detail, sizeof(r->detail), "watchdog: QEMU still running after "
				 "%u s; killed", timeout);
			break;
		}
		p[0].fd = out_open ? outp[0] : -1;
		p[1].fd = err_open ? errp[0] : -1;
		pr = poll(p, 2, 100);
		if (pr < 0 && errno != EINTR)
			break;
		if (pr <= 0)
			continue;
		if (p[0].revents) {
			ssize_t n = read(outp[0], buf, sizeof(buf));

			if (n > 0)
				vmm_console_write(con, buf, (size_t)n);
			else if (n == 0 || errno != EINTR)
				out_open = false;
		}
		if (p[1].revents) {
			ssize_t n = read(errp[0], buf, sizeof(buf));

			if (n > 0) {
				size_t take = KL_MIN((size_t)n, sizeof(errbuf) - 1 - errlen);

				memcpy(errbuf + errlen, buf, take);
				errlen += take;
				if (o->verbose)
					fwrite(buf, 1, (size_t)n, stderr);
			} else if (n == 0 || errno != EINTR) {
				err_open = false;
			}
		}
	}
	if (out_open || err_open) {
		kill(pid, SIGKILL);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	exited = true;
	errbuf[errlen] = 0;
	if (r->exit == VMM_EXIT_NONE) {
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			/* -no-reboot: the guest's reset (or poweroff) ends QEMU with 0 */
			r->exit = VMM_EXIT_RESET;
		} else {
			r->exit = VMM_EXIT_CRASH;
			snprintf(r->detail, sizeof(r->detail), "QEMU %s %d: %.900s",
				 WIFEXITED(status) ? "exited with status" : "killed by signal",
				 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
				 errlen ? errbuf : "(no message)");
		}
	}
	r->t_total = kl_now() - con->t0;
	r->t_init = con->t_init_line;
	r->t_verdict = con->t_verdict_line;
	r->pvh = !o->qemu_stock;
	rc = 0;
out:
	if (pid > 0 && !exited) {
		kill(pid, SIGKILL);
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
	}
	for (int i = 0; i < 2; i++) {
		if (outp[i] >= 0)
			close(outp[i]);
		if (errp[i] >= 0)
			close(errp[i]);
	}
	vmm_nbd_stop(nbd);
	if (disk) {
		vmm_disk_stats(disk, &r->disk_reads, &r->disk_writes, &r->overlay_bytes);
		vmm_disk_close(disk);
	}
	if (rc == 0) {
		r->console = con->con;
		r->console_len = con->con_len;
		con->con = NULL;
	}
	if (con->con_log)
		fclose(con->con_log);
	kl_free(con->con);
	pthread_mutex_destroy(&con->con_lock);
	kl_free(con);
	qa_free(&args);
	kl_free(kernel);
	kl_free(initrd);
	kl_free(cmdline);
	return rc;
}
