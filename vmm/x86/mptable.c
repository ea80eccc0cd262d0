/*
 * vmm/x86/mptable.c - the Intel MultiProcessor table (MP spec 1.4), which is
 * how a kernel booted with acpi=off finds the CPU, the IOAPIC and the PCI
 * interrupt routing.
 *
 * Layout at VMM_MPTABLE_ADDR (inside the e820-reserved area the kernel scans,
 * 0xf0000-0xfffff): the 16-byte floating pointer "_MP_", then the
 * configuration table "PCMP" with its entries:
 *   one processor (LAPIC id 0, boot processor), bus 0 = PCI, bus 1 = ISA,
 *   one IOAPIC (id 1 at 0xfec00000),
 *   ISA IRQ 0 -> pin 2 and 1, 3..15 -> the same pin (edge, as on a PC),
 *   one INT per PCI device: bus irq (slot << 2 | INTx) -> pin 16 + n
 *     (level, active low by "conforms to bus"),
 *   LINT0 = ExtINT, LINT1 = NMI.
 * Both checksums make their structure sum to zero.
 */
#define _GNU_SOURCE
#include "vmm/vmm_int.h"

#include <string.h>

#define MP_IOAPIC_ID 1
#define MP_IOAPIC_ADDR 0xfec00000u
#define MP_LAPIC_ADDR 0xfee00000u
#define MP_BUS_PCI 0
#define MP_BUS_ISA 1

static uint8_t mp_sum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

int vmm_mptable_write(struct vmm *vm)
{
	uint8_t *base = vmm_gpa(vm, VMM_MPTABLE_ADDR, 0x1000);
	uint8_t *cfg, *p;
	uint16_t count = 0;
	size_t len;

	if (!base)
		return kl_err(-ENOSPC, "no guest RAM for the MP table");
	memset(base, 0, 0x1000);
	cfg = base + 16;
	p = cfg + 44;

	/* processor: type 0, LAPIC id, version, flags EN|BP, signature, features */
	p[0] = 0;
	p[1] = 0;
	p[2] = 0x14;
	p[3] = 0x3;
	put_le32(p + 4, 0x600);	  /* family 6 */
	put_le32(p + 8, 0x201);	  /* FPU, APIC */
	p += 20;
	count++;
	/* buses */
	p[0] = 1;
	p[1] = MP_BUS_PCI;
	memcpy(p + 2, "PCI   ", 6);
	p += 8;
	p[0] = 1;
	p[1] = MP_BUS_ISA;
	memcpy(p + 2, "ISA   ", 6);
	p += 8;
	count += 2;
	/* IOAPIC: type 2, id, version 0x11, flags EN, address */
	p[0] = 2;
	p[1] = MP_IOAPIC_ID;
	p[2] = 0x11;
	p[3] = 1;
	put_le32(p + 4, MP_IOAPIC_ADDR);
	p += 8;
	count++;
	/* ISA interrupts (type 3, INT) */
	for (unsigned irq = 0; irq < VMM_PIC_IRQS; irq++) {
		if (irq == 2)
			continue;
		p[0] = 3;
		p[1] = 0; /* INT */
		put_le16(p + 2, 0);
		p[4] = MP_BUS_ISA;
		p[5] = (uint8_t)irq;
		p[6] = MP_IOAPIC_ID;
		p[7] = (uint8_t)(irq == 0 ? 2 : irq);
		p += 8;
		count++;
	}
	/* PCI interrupts */
	for (size_t i = 0; i < vmm_pci_count(vm); i++) {
		const struct vmm_pci_dev *pd = vmm_pci_at(vm, i);

		if (!pd->irq_pin)
			continue;
		p[0] = 3;
		p[1] = 0;
		put_le16(p + 2, 0);
		p[4] = MP_BUS_PCI;
		p[5] = (uint8_t)(pd->slot << 2 | (pd->irq_pin - 1));
		p[6] = MP_IOAPIC_ID;
		p[7] = (uint8_t)pd->gsi;
		p += 8;
		count++;
	}
	/* local interrupts (type 4): LINT0 ExtINT, LINT1 NMI, to all LAPICs */
	p[0] = 4;
	p[1] = 3;
	p[4] = MP_BUS_ISA;
	p[6] = 0xff;
	p[7] = 0;
	p += 8;
	p[0] = 4;
	p[1] = 1;
	p[4] = MP_BUS_ISA;
	p[6] = 0xff;
	p[7] = 1;
	p += 8;
	count += 2;

	len = (size_t)(p - cfg);
	memcpy(cfg, "PCMP", 4);
	put_le16(cfg + 4, (uint16_t)len);
	cfg[6] = 4; /* spec 1.4 */
	memcpy(cfg + 8, "KEEL    ", 8);
	memcpy(cfg + 16, "VERIFY-BOOT ", 12);
	put_le16(cfg + 34, count);
	put_le32(cfg + 36, MP_LAPIC_ADDR);
	cfg[7] = (uint8_t)-mp_sum(cfg, len);

	/* floating pointer */
	memcpy(base, "_MP_", 4);
	put_le32(base + 4, VMM_MPTABLE_ADDR + 16);
	base[8] = 1; /* length in 16-byte units */
	base[9] = 4;
	base[10] = (uint8_t)-mp_sum(base, 16);
	return 0;
}
