/*
 * vmm/kvm.c - the VM: /dev/kvm, guest memory, the in-kernel irqchip and PIT,
 * the port-I/O and MMIO buses, and the console capture.
 *
 * Order of VM creation follows the KVM API document and kvmtool/Firecracker:
 * the TSS and identity-map addresses are set before any vCPU exists, the
 * irqchip and then the PIT before the vCPU (so its LAPIC is in-kernel).
 */
#define _GNU_SOURCE
#include "vmm/vmm_int.h"

#include <fcntl.h>
#include <stdlib.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

bool vmm_kvm_is_pvm(void)
{
	struct stat st;
	const char *force = getenv("KEEL_KVM_PVM");

	if (force && *force)
		return force[0] == '1';
	return stat("/sys/module/kvm_pvm", &st) == 0;
}

static int kvm_need_cap(struct vmm *vm, int cap, const char *name, const char *dev)
{
	int r = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, cap);

	if (r <= 0)
		return kl_err(-ENOTSUP, "%s: KVM lacks %s", dev, name);
	return 0;
}

int vmm_kvm_open(struct vmm *vm, const char *dev)
{
	struct kvm_userspace_memory_region region = { 0 };
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	uint64_t idmap = VMM_IDMAP_ADDR;
	int api, rc;

	vm->kvm_fd = vm->vm_fd = vm->vcpu_fd = -1;
	vm->kvm_fd = open(dev, O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		int e = errno;

		if (e == ENOENT)
			return kl_err(-ENOENT, "%s does not exist: this host has no KVM "
				      "(load kvm_intel/kvm_amd, or use --engine qemu)", dev);
		if (e == EACCES || e == EPERM)
			return kl_err(-EACCES, "%s: permission denied (add the user to group "
				      "'kvm', or use --engine qemu)", dev);
		return kl_err(-e, "%s: %s", dev, strerror(e));
	}
	api = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION)
		return kl_err(-ENOTSUP, "%s: KVM API version %d, expected %d", dev, api,
			      KVM_API_VERSION);
	KL_TRY(kvm_need_cap(vm, KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", dev));
	KL_TRY(kvm_need_cap(vm, KVM_CAP_PIT2, "KVM_CAP_PIT2", dev));
	KL_TRY(kvm_need_cap(vm, KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", dev));
	KL_TRY(kvm_need_cap(vm, KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", dev));
	KL_TRY(kvm_need_cap(vm, KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", dev));
	KL_TRY(kvm_need_cap(vm, KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", dev));
	vm->pvm = vmm_kvm_is_pvm();

	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		return kl_err(-errno, "%s: KVM_CREATE_VM: %s", dev, strerror(errno));
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)VMM_TSS_ADDR) < 0)
		return kl_err(-errno, "KVM_SET_TSS_ADDR: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0)
		return kl_err(-errno, "KVM_SET_IDENTITY_MAP_ADDR: %s", strerror(errno));
	/* the irqchip first: KVM_CREATE_PIT2 fails with ENOENT without one */
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		return kl_err(-errno, "KVM_CREATE_IRQCHIP: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
		return kl_err(-errno, "KVM_CREATE_PIT2: %s", strerror(errno));

	vm->mem = mmap(NULL, vm->mem_size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (vm->mem == MAP_FAILED) {
		vm->mem = NULL;
		return kl_err(-ENOMEM, "cannot map %llu bytes of guest memory",
			      (unsigned long long)vm->mem_size);
	}
	madvise(vm->mem, vm->mem_size, MADV_MERGEABLE);
	region.slot = 0;
	region.guest_phys_addr = 0;
	region.memory_size = vm->mem_size;
	region.userspace_addr = (uint64_t)(uintptr_t)vm->mem;
	rc = ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region);
	if (rc < 0)
		return kl_err(-errno, "KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));
	return 0;
}

void vmm_kvm_close(struct vmm *vm)
{
	if (vm->run)
		munmap(vm->run, vm->run_size);
	vm->run = NULL;
	if (vm->vcpu_fd >= 0)
		close(vm->vcpu_fd);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	vm->vcpu_fd = vm->vm_fd = vm->kvm_fd = -1;
	if (vm->mem)
		munmap(vm->mem, vm->mem_size);
	vm->mem = NULL;
}

void *vmm_gpa(struct vmm *vm, uint64_t gpa, uint64_t len)
{
	if (!kl_range_ok(gpa, len, vm->mem_size))
		return NULL;
	return vm->mem + gpa;
}

/* ------------------------------------------------------------------ buses */

static int io_register(struct vmm_io_range *tab, size_t *n, uint64_t base, uint64_t len,
		       vmm_io_fn fn, void *opaque, const char *bus)
{
	if (*n >= VMM_MAX_IO)
		return kl_err(-ENOSPC, "vmm: %s bus full", bus);
	for (size_t i = 0; i < *n; i++)
		if (base < tab[i].base + tab[i].len && tab[i].base < base + len)
			return kl_err(-EEXIST, "vmm: %s range 0x%llx+0x%llx overlaps 0x%llx", bus,
				      (unsigned long long)base, (unsigned long long)len,
				      (unsigned long long)tab[i].base);
	tab[*n] = (struct vmm_io_range){ base, len, fn, opaque };
	(*n)++;
	return 0;
}

int vmm_register_pio(struct vmm *vm, uint64_t base, uint64_t len, vmm_io_fn fn, void *opaque)
{
	return io_register(vm->pio, &vm->npio, base, len, fn, opaque, "port I/O");
}

int vmm_register_mmio(struct vmm *vm, uint64_t base, uint64_t len, vmm_io_fn fn, void *opaque)
{
	return io_register(vm->mmio, &vm->nmmio, base, len, fn, opaque, "MMIO");
}

void vmm_move_pio(struct vmm *vm, void *opaque, uint64_t new_base)
{
	for (size_t i = 0; i < vm->npio; i++)
		if (vm->pio[i].opaque == opaque)
			vm->pio[i].base = new_base;
}

static const struct vmm_io_range *io_find(const struct vmm_io_range *tab, size_t n, uint64_t a,
					  unsigned len)
{
	for (size_t i = 0; i < n; i++)
		if (a >= tab[i].base && a - tab[i].base + len <= tab[i].len)
			return &tab[i];
	return NULL;
}

void vmm_pio_dispatch(struct vmm *vm, uint64_t addr, uint8_t *data, unsigned len, bool wr)
{
	const struct vmm_io_range *r = io_find(vm->pio, vm->npio, addr, len);

	if (r)
		r->fn(vm, r->opaque, addr - r->base, data, len, wr);
	else if (!wr)
		memset(data, 0xff, len);
}

void vmm_mmio_dispatch(struct vmm *vm, uint64_t addr, uint8_t *data, unsigned len, bool wr)
{
	const struct vmm_io_range *r = io_find(vm->mmio, vm->nmmio, addr, len);

	if (r)
		r->fn(vm, r->opaque, addr - r->base, data, len, wr);
	else if (!wr)
		memset(data, 0xff, len);
}

void vmm_irq_line(struct vmm *vm, unsigned gsi, int level)
{
	struct kvm_irq_level l = { .irq = gsi, .level = level };

	if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &l) < 0)
		vmm_request_stop(vm, VMM_EXIT_CRASH, "KVM_IRQ_LINE failed");
}

void vmm_request_stop(struct vmm *vm, enum vmm_exit why, const char *detail)
{
	int expected = 0;

	/* the first reason wins: a reset seen before the watchdog is a reset */
	if (atomic_compare_exchange_strong(&vm->stop, &expected, 1)) {
		vm->exit_reason = why;
		if (detail)
			snprintf(vm->detail, sizeof(vm->detail), "%s", detail);
	}
}

/* ------------------------------------------------------------------ console */

static void console_line(struct vmm *vm, const char *line, size_t len)
{
	static const char init_tag[] = "KEEL-APPLIANCE: init";
	static const char verdict_tag[] = "VERDICT: ";

	if (len >= sizeof(init_tag) - 1 && !memcmp(line, init_tag, sizeof(init_tag) - 1) &&
	    !vm->t_init_line)
		vm->t_init_line = kl_now() - vm->t0;
	if (len >= sizeof(verdict_tag) - 1 && !memcmp(line, verdict_tag, sizeof(verdict_tag) - 1))
		vm->t_verdict_line = kl_now() - vm->t0;
}

void vmm_console_write(struct vmm *vm, const uint8_t *buf, size_t len)
{
	pthread_mutex_lock(&vm->con_lock);
	if (vm->con_log)
		fwrite(buf, 1, len, vm->con_log);
	if (vm->opts->verbose) {
		fwrite(buf, 1, len, stderr);
		fflush(stderr);
	}
	for (size_t i = 0; i < len && vm->con; i++) {
		if (vm->con_len + 1 >= VMM_CONSOLE_MAX)
			break;
		vm->con[vm->con_len++] = (char)buf[i];
		vm->con[vm->con_len] = 0;
		if (buf[i] == '\n') {
			console_line(vm, vm->con + vm->line_start, vm->con_len - vm->line_start);
			vm->line_start = vm->con_len;
		}
	}
	pthread_mutex_unlock(&vm->con_lock);
}
