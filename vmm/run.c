/*
 * vmm/run.c - running a VM with either engine: engine names and choice, the
 * appliance's files and command line, and the kvm engine's life cycle
 * (create, load, start devices, run under the watchdog, tear down).
 */
#define _GNU_SOURCE
#include "vmm/vmm_int.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*
 * The same for both engines. acpi=off: IRQ routing comes from the MP table
 * (measured 1.5 s faster under TCG than ACPI); reboot=k leaves through the
 * i8042 reset line, which both engines turn into "guest finished"; quiet,
 * because every console byte is an exit; panic=-1 reboots at once on a
 * panic instead of hanging until the watchdog.
 */
const char vmm_appliance_cmdline[] =
	"console=ttyS0 quiet acpi=off pci=conf1 reboot=k panic=-1 8250.nr_uarts=1 "
	"i8042.noaux i8042.nokbd i8042.nopnp no_timer_check tsc=reliable cryptomgr.notests "
	"random.trust_cpu=on rdinit=/init";

const char *vmm_engine_name(enum vmm_engine e)
{
	switch (e) {
	case VMM_ENGINE_KVM: return "kvm";
	case VMM_ENGINE_QEMU: return "qemu";
	default: return "auto";
	}
}

int vmm_engine_parse(const char *s, enum vmm_engine *out)
{
	if (!strcmp(s, "kvm"))
		*out = VMM_ENGINE_KVM;
	else if (!strcmp(s, "qemu"))
		*out = VMM_ENGINE_QEMU;
	else if (!strcmp(s, "auto"))
		*out = VMM_ENGINE_AUTO;
	else
		return kl_err(-EINVAL, "unknown engine '%s' (kvm, qemu or auto)", s);
	return 0;
}

const char *vmm_exit_name(enum vmm_exit e)
{
	switch (e) {
	case VMM_EXIT_RESET: return "reset";
	case VMM_EXIT_SHUTDOWN: return "shutdown";
	case VMM_EXIT_WATCHDOG: return "watchdog";
	case VMM_EXIT_CANCELLED: return "cancelled";
	case VMM_EXIT_CRASH: return "crash";
	default: return "none";
	}
}

static const char *kvm_dev_path(const struct vmm_opts *o)
{
	const char *e = getenv("KEEL_KVM_DEV");

	if (o->kvm_dev)
		return o->kvm_dev;
	return e && *e ? e : "/dev/kvm";
}

int vmm_find_qemu(const struct vmm_opts *o, char *out, size_t outlen)
{
	const char *e = getenv("KEEL_QEMU");
	const char *path = getenv("PATH");
	const char *want = o->qemu_bin ? o->qemu_bin : (e && *e ? e : "qemu-system-x86_64");

	if (strchr(want, '/')) {
		if (access(want, X_OK) != 0)
			return kl_err(-ENOENT, "QEMU '%s' is not an executable file", want);
		snprintf(out, outlen, "%s", want);
		return 0;
	}
	while (path && *path) {
		const char *c = strchr(path, ':');
		size_t n = c ? (size_t)(c - path) : strlen(path);

		if (n && (size_t)snprintf(out, outlen, "%.*s/%s", (int)n, path, want) < outlen &&
		    access(out, X_OK) == 0)
			return 0;
		path = c ? c + 1 : NULL;
	}
	return kl_err(-ENOENT, "%s not found on PATH (Debian: apt-get install qemu-system-x86)",
		      want);
}

int vmm_choose_engine(const struct vmm_opts *o, enum vmm_engine *out, char *why, size_t whylen)
{
	const char *dev = kvm_dev_path(o);
	char qemu[PATH_MAX];
	bool have_qemu;
	int kvm_ok = -1, rc;

	if (o->engine != VMM_ENGINE_AUTO) {
		*out = o->engine;
		snprintf(why, whylen, "%s: chosen with --engine", vmm_engine_name(o->engine));
		return 0;
	}
	have_qemu = vmm_find_qemu(o, qemu, sizeof(qemu)) == 0;
	kl_err_clear();
	if (access(dev, F_OK) != 0) {
		kvm_ok = -ENOENT;
	} else {
		int fd = open(dev, O_RDWR | O_CLOEXEC);

		kvm_ok = fd < 0 ? -errno : 0;
		if (fd >= 0)
			close(fd);
	}
	if (kvm_ok == 0 && !vmm_kvm_is_pvm()) {
		*out = VMM_ENGINE_KVM;
		snprintf(why, whylen, "kvm: %s is hardware-backed (VT-x/AMD-V)", dev);
		return 0;
	}
	if (have_qemu) {
		*out = VMM_ENGINE_QEMU;
		if (kvm_ok == 0)
			snprintf(why, whylen, "qemu: %s is kvm_pvm (no VT-x/AMD-V; a kernel boots far "
				 "too slowly there), so QEMU TCG (%s)", dev, qemu);
		else
			snprintf(why, whylen, "qemu: %s is unusable (%s), so QEMU TCG (%s)", dev,
				 strerror(-kvm_ok), qemu);
		return 0;
	}
	if (kvm_ok == 0) {
		/* only kvm_pvm: it works, slowly; say so rather than refuse */
		*out = VMM_ENGINE_KVM;
		snprintf(why, whylen, "kvm: %s is kvm_pvm (software, very slow) and "
			 "qemu-system-x86_64 is not installed", dev);
		return 0;
	}
	rc = kl_err(kvm_ok == -ENOENT ? -ENOENT : kvm_ok,
		    "no engine can run: %s %s, and qemu-system-x86_64 is not on PATH "
		    "(apt-get install qemu-system-x86, or load kvm_intel/kvm_amd)", dev,
		    kvm_ok == -ENOENT ? "does not exist" : kvm_ok == -EACCES ?
		    "is not accessible (permission denied)" : strerror(-kvm_ok));
	snprintf(why, whylen, "none: %s", kl_errmsg());
	return rc;
}

int vmm_appliance_dir(const struct vmm_opts *o, char *out, size_t outlen)
{
	const char *e = getenv("KEEL_APPLIANCE_DIR");
	char exe[PATH_MAX];
	ssize_t n;

	if (o->appliance_dir || (e && *e)) {
		snprintf(out, outlen, "%s", o->appliance_dir ? o->appliance_dir : e);
		return 0;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		char *slash;

		exe[n] = 0;
		slash = strrchr(exe, '/');
		if (slash) {
			*slash = 0;
			snprintf(out, outlen, "%s/appliance", exe);
			if (access(out, F_OK) == 0)
				return 0;
			/* installed: PREFIX/bin/keel -> PREFIX/lib/keel/appliance */
			snprintf(out, outlen, "%s/../lib/keel/appliance", exe);
			if (access(out, F_OK) == 0)
				return 0;
		}
	}
	return kl_err(-ENOENT, "the verifier appliance was not found (build it with 'make "
		      "appliance', or set KEEL_APPLIANCE_DIR)");
}

int vmm_boot_files(const struct vmm_opts *o, bool want_pvh, char **kernel, char **initrd,
		   char **cmdline)
{
	char dir[PATH_MAX];

	*kernel = *initrd = *cmdline = NULL;
	*cmdline = kl_strdup(o->cmdline ? o->cmdline : vmm_appliance_cmdline);
	if (!*cmdline)
		return -ENOMEM;
	if (o->kernel) {
		*kernel = kl_strdup(o->kernel);
		if (o->initrd)
			*initrd = kl_strdup(o->initrd);
		return *kernel ? 0 : -ENOMEM;
	}
	KL_TRY(vmm_appliance_dir(o, dir, sizeof(dir)));
	*kernel = kl_asprintf("%s/%s", dir, want_pvh ? "vmlinux" : "vmlinuz");
	if (*kernel && want_pvh && access(*kernel, R_OK) != 0) {
		kl_free(*kernel);
		*kernel = kl_asprintf("%s/vmlinuz", dir);
	}
	*initrd = kl_asprintf("%s/initrd.cpio", dir);
	if (!*kernel || !*initrd)
		return -ENOMEM;
	if (access(*kernel, R_OK) != 0 || access(*initrd, R_OK) != 0)
		return kl_err(-ENOENT, "appliance in %s is incomplete (no %s or initrd.cpio); "
			      "run 'make appliance'", dir, *kernel);
	return 0;
}

static void free_boot_files(char *k, char *i, char *c)
{
	kl_free(k);
	kl_free(i);
	kl_free(c);
}

/* ------------------------------------------------------------------ kvm engine */

static void kvm_finish(struct vmm *vm, struct vmm_run_result *r)
{
	r->exit = vm->exit_reason;
	snprintf(r->detail, sizeof(r->detail), "%s", vm->detail);
	r->t_setup = vm->t_first_run;
	r->t_total = kl_now() - vm->t0;
	r->t_init = vm->t_init_line;
	r->t_verdict = vm->t_verdict_line;
	r->pvh = vm->pvh;
	if (vm->disk)
		vmm_disk_stats(vm->disk, &r->disk_reads, &r->disk_writes, &r->overlay_bytes);
	r->console = vm->con;
	r->console_len = vm->con_len;
	vm->con = NULL;
}

int vmm_run_kvm(const struct vmm_opts *o, struct vmm_run_result *r)
{
	struct vmm *vm;
	char *kernel = NULL, *initrd = NULL, *cmdline = NULL;
	unsigned timeout = o->timeout_s ? o->timeout_s : VMM_DEFAULT_TIMEOUT;
	bool devices = false;
	int rc;

	vm = kl_calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->opts = o;
	vm->t0 = kl_now();
	vm->kvm_fd = vm->vm_fd = vm->vcpu_fd = -1;
	vm->mem_size = o->mem_size ? o->mem_size : VMM_DEFAULT_MEM;
	pthread_mutex_init(&vm->con_lock, NULL);
	if (vm->mem_size < (16ULL << 20) || vm->mem_size > VMM_MAX_MEM) {
		rc = kl_err(-EINVAL, "guest memory must be 16 MiB .. 3 GiB");
		goto out;
	}
	vm->con = kl_malloc(VMM_CONSOLE_MAX);
	if (!vm->con) {
		rc = -ENOMEM;
		goto out;
	}
	vm->con[0] = 0;
	if (o->console_log) {
		vm->con_log = fopen(o->console_log, "we");
		if (!vm->con_log) {
			rc = kl_err(-errno, "console log %s: %s", o->console_log, strerror(errno));
			goto out;
		}
		setvbuf(vm->con_log, NULL, _IOLBF, 0);
	}
	rc = vmm_boot_files(o, true, &kernel, &initrd, &cmdline);
	if (rc < 0)
		goto out;
	if (o->disk || o->image) {
		rc = vmm_disk_open(o, &vm->disk);
		if (rc < 0)
			goto out;
	}
	rc = vmm_kvm_open(vm, kvm_dev_path(o));
	if (rc < 0)
		goto out;
	rc = vmm_boot_load(vm, kernel, initrd, cmdline);
	if (rc < 0)
		goto out;
	rc = vmm_devices_start(vm);
	if (rc < 0)
		goto out;
	devices = true;
	rc = vmm_cpu_init(vm);
	if (rc < 0)
		goto out;
	rc = vmm_cpu_start(vm);
	if (rc < 0)
		goto out;
	/* the watchdog: poll the vCPU's state, the clock and the cancel flag */
	while (!atomic_load(&vm->done)) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };

		if (o->cancel && *o->cancel) {
			vmm_request_stop(vm, VMM_EXIT_CANCELLED, "cancelled");
			vmm_cpu_kick(vm);
		} else if (kl_now() - vm->t0 > timeout) {
			char d[96];

			snprintf(d, sizeof(d), "watchdog: no exit after %u s", timeout);
			vmm_request_stop(vm, VMM_EXIT_WATCHDOG, d);
			vmm_cpu_kick(vm);
		} else if (atomic_load(&vm->stop)) {
			vmm_cpu_kick(vm);
		}
		nanosleep(&ts, NULL);
	}
	vmm_cpu_join(vm);
	kvm_finish(vm, r);
	rc = 0;
out:
	if (devices)
		vmm_devices_stop(vm);
	vmm_kvm_close(vm);
	vmm_disk_close(vm->disk);
	if (vm->con_log)
		fclose(vm->con_log);
	kl_free(vm->con);
	pthread_mutex_destroy(&vm->con_lock);
	free_boot_files(kernel, initrd, cmdline);
	kl_free(vm);
	return rc;
}

int vmm_run(const struct vmm_opts *o, struct vmm_run_result *r)
{
	char why[256];
	enum vmm_engine e;

	memset(r, 0, sizeof(*r));
	KL_TRY(vmm_choose_engine(o, &e, why, sizeof(why)));
	r->engine = e;
	if (e == VMM_ENGINE_KVM)
		return vmm_run_kvm(o, r);
	return vmm_run_qemu(o, r);
}

void vmm_run_result_release(struct vmm_run_result *r)
{
	kl_free(r->console);
	memset(r, 0, sizeof(*r));
}
