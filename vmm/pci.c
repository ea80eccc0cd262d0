/*
 * vmm/pci.c - PCI bus 0 through configuration mechanism #1 (0xCF8 address,
 * 0xCFC-0xCFF data), with a host bridge at 00:00.0.
 *
 * Linux's pci_check_type1() writes 0x80000000 to 0xCF8 and expects to read
 * it back; pci_sanity_check() then wants a host bridge (class 0x0600) on bus
 * 0 when there is no DMI. Devices are added with vmm_pci_add(); each has a
 * 256-byte config space with a write mask. I/O BARs are sized the usual way
 * (write all ones, read ~(size-1) | 1) and moving one moves the device's
 * port range on the bus. Firmware-style, BARs come pre-assigned and I/O
 * decoding enabled, so a kernel without PCI reassignment can use them.
 */
#include "vmm/vmm_int.h"

#include <string.h>

#define PCI_CONFIG_ADDR 0xcf8
#define PCI_CONFIG_DATA 0xcfc
#define PCI_IO_BAR_BASE 0xc000

struct vmm_pci {
	uint32_t addr;
	struct vmm_pci_dev host;
	struct vmm_pci_dev *devs[VMM_PCI_MAX_SLOTS];
	size_t ndevs;
	uint16_t next_io;
	struct vmm *vm;
};

static struct vmm_pci_dev *pci_dev_at_slot(struct vmm_pci *p, unsigned slot)
{
	if (slot == 0)
		return &p->host;
	for (size_t i = 0; i < p->ndevs; i++)
		if (p->devs[i]->slot == slot)
			return p->devs[i];
	return NULL;
}

static void pci_cfg_write(struct vmm_pci_dev *pd, unsigned reg, const uint8_t *data, unsigned len)
{
	for (unsigned i = 0; i < len && reg + i < 256; i++) {
		unsigned r = reg + i;

		pd->cfg[r] = (uint8_t)((pd->cfg[r] & ~pd->wmask[r]) | (data[i] & pd->wmask[r]));
	}
	/* BARs: keep the low type bits, mask to the size */
	for (int b = 0; b < 6; b++) {
		unsigned off = 0x10 + 4 * (unsigned)b;
		uint32_t v, old;

		if (!pd->bar_size[b] || reg > off + 3 || reg + len <= off)
			continue;
		old = v = get_le32(pd->cfg + off);
		v &= ~(pd->bar_size[b] - 1);
		v = pd->bar_io[b] ? (v | 1) : (v & ~0xfu);
		put_le32(pd->cfg + off, v);
		(void)old;
		if (pd->bar_moved && v != 0xffffffffu && (v & ~(pd->bar_size[b] - 1)) !=
		    (uint32_t)~(pd->bar_size[b] - 1))
			pd->bar_moved(pd, b, v & ~0x3u);
	}
}

static void pci_data_io(struct vmm *vm, void *opaque, uint64_t off, uint8_t *data, unsigned len,
			bool wr)
{
	struct vmm_pci *p = opaque;
	unsigned bus = (p->addr >> 16) & 0xff, slot = (p->addr >> 11) & 0x1f;
	unsigned fn = (p->addr >> 8) & 0x7, reg = (p->addr & 0xfc) + (unsigned)off;
	struct vmm_pci_dev *pd = NULL;

	(void)vm;
	if ((p->addr & 0x80000000u) && bus == 0 && fn == 0)
		pd = pci_dev_at_slot(p, slot);
	if (!pd || reg + len > 256) {
		if (!wr)
			memset(data, 0xff, len);
		return;
	}
	if (wr)
		pci_cfg_write(pd, reg, data, len);
	else
		memcpy(data, pd->cfg + reg, len);
}

static void pci_addr_io(struct vmm *vm, void *opaque, uint64_t off, uint8_t *data, unsigned len,
			bool wr)
{
	struct vmm_pci *p = opaque;

	(void)vm;
	/* only dword accesses at 0xcf8 are the address latch (0xcf9 is the reset control) */
	if (off != 0 || len != 4) {
		if (!wr)
			memset(data, 0xff, len);
		return;
	}
	if (wr)
		p->addr = get_le32(data) & 0x80fffffcu;
	else
		put_le32(data, p->addr);
}

static void pci_set_ids(struct vmm_pci_dev *pd, uint16_t vendor, uint16_t device, uint32_t class)
{
	put_le16(pd->cfg + 0x00, vendor);
	put_le16(pd->cfg + 0x02, device);
	pd->cfg[0x08] = 0; /* revision */
	pd->cfg[0x09] = (uint8_t)class;
	pd->cfg[0x0a] = (uint8_t)(class >> 8);
	pd->cfg[0x0b] = (uint8_t)(class >> 16);
}

int vmm_pci_init(struct vmm *vm)
{
	struct vmm_pci *p = kl_calloc(1, sizeof(*p));
	int rc;

	if (!p)
		return -ENOMEM;
	p->vm = vm;
	p->next_io = PCI_IO_BAR_BASE;
	/* Red Hat's id for a generic host bridge; class 06/00/00 is what Linux checks */
	pci_set_ids(&p->host, 0x1b36, 0x0008, 0x060000);
	vm->pci = p;
	rc = vmm_register_pio(vm, PCI_CONFIG_ADDR, 4, pci_addr_io, p);
	if (rc == 0)
		rc = vmm_register_pio(vm, PCI_CONFIG_DATA, 4, pci_data_io, p);
	return rc;
}

void vmm_pci_exit(struct vmm *vm)
{
	kl_free(vm->pci);
	vm->pci = NULL;
}

int vmm_pci_add(struct vmm *vm, struct vmm_pci_dev *pd)
{
	struct vmm_pci *p = vm->pci;

	if (!p || p->ndevs + 1 >= VMM_PCI_MAX_SLOTS)
		return kl_err(-ENOSPC, "vmm: no free PCI slot");
	pd->slot = (uint8_t)(p->ndevs + 1);
	pd->gsi = VMM_PCI_IRQ_BASE + (unsigned)p->ndevs;
	/* command (I/O, memory, bus master, INTx disable) and BAR 0..5 writable */
	put_le16(pd->wmask + 0x04, 0x0407);
	pd->cfg[0x04] |= 0x01; /* I/O decoding on, as firmware leaves it */
	for (int b = 0; b < 6; b++) {
		if (!pd->bar_size[b])
			continue;
		put_le32(pd->wmask + 0x10 + 4 * b, 0xffffffffu);
		if (pd->bar_io[b]) {
			uint16_t a = (uint16_t)KL_ALIGN_UP(p->next_io, pd->bar_size[b]);

			put_le32(pd->cfg + 0x10 + 4 * b, (uint32_t)a | 1);
			p->next_io = (uint16_t)(a + pd->bar_size[b]);
		}
	}
	pd->wmask[0x3c] = 0xff; /* interrupt line */
	pd->cfg[0x3c] = (uint8_t)pd->gsi;
	pd->cfg[0x3d] = pd->irq_pin;
	p->devs[p->ndevs++] = pd;
	return 0;
}

size_t vmm_pci_count(const struct vmm *vm)
{
	return vm->pci ? vm->pci->ndevs : 0;
}

struct vmm_pci_dev *vmm_pci_at(const struct vmm *vm, size_t i)
{
	return i < vm->pci->ndevs ? vm->pci->devs[i] : NULL;
}
