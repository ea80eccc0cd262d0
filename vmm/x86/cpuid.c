/*
 * vmm/x86/cpuid.c - what the vCPU looks like: CPUID, boot MSRs, FPU state and
 * the LAPIC's LINT pins.
 *
 * CPUID is KVM_GET_SUPPORTED_CPUID filtered the way kvmtool does (hypervisor
 * bit on, no PMU, no energy-perf bias, one CPU in the topology leaves). On
 * kvm_pvm the instruction emulator lacks CMPXCHG16B, so CX16 is cleared and
 * the kernel falls back (measured: SLUB dies on cmpxchg16b otherwise).
 * Only the MSRs a booting kernel expects zeroed are set, never the host's
 * list; the count KVM_SET_MSRS returns is checked.
 */
#define _GNU_SOURCE
#include "vmm/vmm_int.h"

#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>

#define CPUID_1_ECX_CX16 (1u << 13)
#define CPUID_1_ECX_HYPERVISOR (1u << 31)
#define CPUID_1_ECX_TSC_DEADLINE (1u << 24)
#define CPUID_6_ECX_EPB (1u << 3)

static int setup_cpuid(struct vmm *vm)
{
	struct kvm_cpuid2 *c = NULL;
	int nent = 64, rc;

	for (;;) {
		c = kl_calloc(1, sizeof(*c) + (size_t)nent * sizeof(c->entries[0]));
		if (!c)
			return -ENOMEM;
		c->nent = (uint32_t)nent;
		if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0)
			break;
		kl_free(c);
		if (errno != E2BIG || nent >= 1024)
			return kl_err(-errno, "KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
		nent *= 2;
	}
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		switch (e->function) {
		case 1:
			e->ecx |= CPUID_1_ECX_HYPERVISOR;
			if (vm->pvm)
				e->ecx &= ~CPUID_1_ECX_CX16;
			/* initial APIC id 0, one logical processor */
			e->ebx = (e->ebx & 0x0000ffffu) | (1u << 16);
			break;
		case 4:
			/* cores per package - 1 = 0 */
			e->eax &= 0x03ffffffu;
			break;
		case 6:
			e->ecx &= ~CPUID_6_ECX_EPB;
			break;
		case 0xa:
			/* no architectural PMU */
			e->eax = e->ebx = e->ecx = e->edx = 0;
			break;
		case 0xb:
		case 0x1f:
			/* x2APIC id 0 */
			e->edx = 0;
			break;
		default:
			break;
		}
	}
	rc = ioctl(vm->vcpu_fd, KVM_SET_CPUID2, c);
	kl_free(c);
	if (rc < 0)
		return kl_err(-errno, "KVM_SET_CPUID2: %s", strerror(errno));
	return 0;
}

static const struct {
	uint32_t index;
	uint64_t value;
	bool optional;
} boot_msrs[] = {
	{ 0x174, 0, false },	     /* IA32_SYSENTER_CS */
	{ 0x175, 0, false },	     /* IA32_SYSENTER_ESP */
	{ 0x176, 0, false },	     /* IA32_SYSENTER_EIP */
	{ 0xc0000081, 0, false },    /* STAR */
	{ 0xc0000082, 0, false },    /* LSTAR */
	{ 0xc0000083, 0, false },    /* CSTAR */
	{ 0xc0000084, 0, false },    /* SYSCALL_MASK */
	{ 0xc0000102, 0, false },    /* KERNEL_GS_BASE */
	{ 0x10, 0, false },	     /* TSC */
	{ 0x1a0, 1, true },	     /* MISC_ENABLE: fast strings */
	{ 0x2ff, (1 << 11) | 6, true }, /* MTRRdefType: enabled, write-back */
};

static int setup_msrs(struct vmm *vm)
{
	union {
		struct kvm_msrs hdr;
		uint8_t bytes[sizeof(struct kvm_msrs) + sizeof(struct kvm_msr_entry)];
	} one;

	/* one at a time, so a refused optional MSR does not hide the others */
	for (size_t i = 0; i < KL_ARRAY_SIZE(boot_msrs); i++) {
		int rc;

		memset(&one, 0, sizeof(one));
		one.hdr.nmsrs = 1;
		one.hdr.entries[0].index = boot_msrs[i].index;
		one.hdr.entries[0].data = boot_msrs[i].value;
		rc = ioctl(vm->vcpu_fd, KVM_SET_MSRS, &one);
		if (rc != 1 && !boot_msrs[i].optional)
			return kl_err(-EIO, "KVM_SET_MSRS: MSR %#x refused", boot_msrs[i].index);
	}
	return 0;
}

static int setup_fpu(struct vmm *vm)
{
	struct kvm_fpu fpu;

	memset(&fpu, 0, sizeof(fpu));
	fpu.fcw = 0x37f;
	fpu.mxcsr = 0x1f80;
	if (ioctl(vm->vcpu_fd, KVM_SET_FPU, &fpu) < 0)
		return kl_err(-errno, "KVM_SET_FPU: %s", strerror(errno));
	return 0;
}

/* LINT0 = ExtINT (the 8259 behind the LAPIC), LINT1 = NMI, as a BIOS leaves them */
static int setup_lapic(struct vmm *vm)
{
	struct kvm_lapic_state l;
	uint32_t v;

	if (ioctl(vm->vcpu_fd, KVM_GET_LAPIC, &l) < 0)
		return kl_err(-errno, "KVM_GET_LAPIC: %s", strerror(errno));
	v = get_le32(l.regs + 0x350);
	put_le32(l.regs + 0x350, (v & ~0x700u) | (7u << 8));
	v = get_le32(l.regs + 0x360);
	put_le32(l.regs + 0x360, (v & ~0x700u) | (4u << 8));
	if (ioctl(vm->vcpu_fd, KVM_SET_LAPIC, &l) < 0)
		return kl_err(-errno, "KVM_SET_LAPIC: %s", strerror(errno));
	return 0;
}

int vmm_x86_setup_vcpu(struct vmm *vm)
{
	KL_TRY(setup_cpuid(vm));
	KL_TRY(setup_msrs(vm));
	KL_TRY(setup_fpu(vm));
	KL_TRY(setup_lapic(vm));
	return 0;
}
