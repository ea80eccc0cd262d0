/*
 * vmm/cpu.c - the vCPU: creation, its thread and the run loop.
 *
 * The run loop is one switch on the exit reason (kvmtool's kvm_cpu__start):
 * port I/O and MMIO go to the bus, shutdown and system events stop the VM,
 * anything unknown stops it with a register dump (VMM_EXIT_CRASH).
 *
 * Kicking: the watchdog and cancel paths set run->immediate_exit and send
 * VMM_KICK_SIGNAL to the vCPU thread. immediate_exit closes the race with a
 * signal that lands just before KVM_RUN: KVM checks it on entry and returns
 * EINTR at once.
 */
#define _GNU_SOURCE
#include "vmm/vmm_int.h"

#include <linux/kvm.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define VMM_KICK_SIGNAL (SIGRTMIN + 3)

static void kick_handler(int sig)
{
	(void)sig;
}

int vmm_cpu_init(struct vmm *vm)
{
	int sz;

	vm->vcpu_fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, 0);
	if (vm->vcpu_fd < 0)
		return kl_err(-errno, "KVM_CREATE_VCPU: %s", strerror(errno));
	sz = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (sz < (int)sizeof(struct kvm_run))
		return kl_err(-EIO, "KVM_GET_VCPU_MMAP_SIZE: %d", sz);
	vm->run_size = (size_t)sz;
	vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd, 0);
	if (vm->run == MAP_FAILED) {
		vm->run = NULL;
		return kl_err(-errno, "mmap kvm_run: %s", strerror(errno));
	}
	KL_TRY(vmm_x86_setup_vcpu(vm));
	KL_TRY(vmm_x86_setup_regs(vm));
	return 0;
}

static void dump_regs(struct vmm *vm, const char *what)
{
	struct kvm_regs r;
	struct kvm_sregs s;
	char *p = vm->detail;
	size_t left = sizeof(vm->detail);
	int n;

	n = snprintf(p, left, "%s", what);
	if (n < 0 || (size_t)n >= left)
		return;
	p += n;
	left -= (size_t)n;
	if (ioctl(vm->vcpu_fd, KVM_GET_REGS, &r) == 0) {
		n = snprintf(p, left,
			     "; rip=%#llx rsp=%#llx rflags=%#llx rax=%#llx rbx=%#llx rcx=%#llx "
			     "rdx=%#llx rsi=%#llx rdi=%#llx",
			     r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi);
		if (n < 0 || (size_t)n >= left)
			return;
		p += n;
		left -= (size_t)n;
	}
	if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &s) == 0)
		snprintf(p, left, " cr0=%#llx cr3=%#llx cr4=%#llx efer=%#llx cs=%#x", s.cr0, s.cr3,
			 s.cr4, s.efer, s.cs.selector);
}

static void handle_io(struct vmm *vm)
{
	struct kvm_run *run = vm->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	unsigned size = run->io.size;
	bool wr = run->io.direction == KVM_EXIT_IO_OUT;

	if (size != 1 && size != 2 && size != 4)
		return;
	/* string I/O (rep outsb) arrives as count items back to back */
	for (uint32_t i = 0; i < run->io.count; i++) {
		if ((uint64_t)run->io.data_offset + (uint64_t)(i + 1) * size > vm->run_size)
			break;
		vmm_pio_dispatch(vm, run->io.port, data + (size_t)i * size, size, wr);
	}
}

static void *vcpu_thread(void *arg)
{
	struct vmm *vm = arg;
	struct kvm_run *run = vm->run;
	char what[160];

	vm->t_first_run = kl_now() - vm->t0;
	while (!atomic_load(&vm->stop)) {
		int rc = ioctl(vm->vcpu_fd, KVM_RUN, 0);

		if (rc < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				run->immediate_exit = 0;
				continue;
			}
			snprintf(what, sizeof(what), "KVM_RUN failed: %s", strerror(errno));
			dump_regs(vm, what);
			vmm_request_stop(vm, VMM_EXIT_CRASH, NULL);
			break;
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			handle_io(vm);
			break;
		case KVM_EXIT_MMIO:
			if (run->mmio.len <= 8)
				vmm_mmio_dispatch(vm, run->mmio.phys_addr, run->mmio.data,
						  run->mmio.len, run->mmio.is_write);
			break;
		case KVM_EXIT_HLT:
			/* with an in-kernel LAPIC, HLT only exits when nothing can wake us */
			dump_regs(vm, "guest halted with interrupts disabled");
			vmm_request_stop(vm, VMM_EXIT_CRASH, NULL);
			break;
		case KVM_EXIT_SHUTDOWN:
			/* triple fault: Linux's reboot=t, or a crash; both end the run */
			vmm_request_stop(vm, VMM_EXIT_RESET, "triple fault (shutdown)");
			break;
		case KVM_EXIT_SYSTEM_EVENT:
			if (run->system_event.type == KVM_SYSTEM_EVENT_RESET)
				vmm_request_stop(vm, VMM_EXIT_RESET, "system event: reset");
			else
				vmm_request_stop(vm, VMM_EXIT_SHUTDOWN, "system event: shutdown");
			break;
		case KVM_EXIT_INTR:
			break;
		case KVM_EXIT_FAIL_ENTRY:
			snprintf(what, sizeof(what), "KVM_EXIT_FAIL_ENTRY reason %#llx",
				 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			dump_regs(vm, what);
			vmm_request_stop(vm, VMM_EXIT_CRASH, NULL);
			break;
		case KVM_EXIT_INTERNAL_ERROR:
			snprintf(what, sizeof(what), "KVM internal error, suberror %u",
				 run->internal.suberror);
			dump_regs(vm, what);
			vmm_request_stop(vm, VMM_EXIT_CRASH, NULL);
			break;
		default:
			snprintf(what, sizeof(what), "unhandled KVM exit reason %u", run->exit_reason);
			dump_regs(vm, what);
			vmm_request_stop(vm, VMM_EXIT_CRASH, NULL);
			break;
		}
	}
	if (vm->exit_reason == VMM_EXIT_WATCHDOG) {
		/* where a stuck guest was: the first thing anyone debugging asks */
		char w[128];

		snprintf(w, sizeof(w), "%.100s", vm->detail);
		dump_regs(vm, w);
	}
	atomic_store(&vm->done, 1);
	return NULL;
}

int vmm_cpu_start(struct vmm *vm)
{
	struct sigaction sa = { .sa_handler = kick_handler };
	struct sigaction old;
	sigset_t set;
	int rc;

	/* no SA_RESTART: the kick must interrupt KVM_RUN */
	sigemptyset(&sa.sa_mask);
	if (sigaction(VMM_KICK_SIGNAL, NULL, &old) == 0 && old.sa_handler != kick_handler)
		sigaction(VMM_KICK_SIGNAL, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, VMM_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	rc = pthread_create(&vm->vcpu_thread, NULL, vcpu_thread, vm);
	if (rc)
		return kl_err(-rc, "cannot start the vCPU thread: %s", strerror(rc));
	return 0;
}

void vmm_cpu_kick(struct vmm *vm)
{
	if (vm->run)
		vm->run->immediate_exit = 1;
	if (!atomic_load(&vm->done))
		pthread_kill(vm->vcpu_thread, VMM_KICK_SIGNAL);
}

void vmm_cpu_join(struct vmm *vm)
{
	pthread_join(vm->vcpu_thread, NULL);
}
