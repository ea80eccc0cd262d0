/* tests/vmm/guests/pci.c - enumerate bus 0 through 0xCF8/0xCFC */
#include "guest.h"

void guest_main(void *boot)
{
	(void)boot;
	outl(0xcf8, 0x80000000u);
	puts("PCI: cf8 readback "); put_hex(inl(0xcf8)); putc('\n');
	for (u32 slot = 0; slot < 32; slot++) {
		u32 id = pci_read(slot, 0);

		if (id == 0xffffffffu)
			continue;
		puts("PCI: 00:"); put_dec(slot); puts(".0 id "); put_hex(id);
		puts(" class "); put_hex(pci_read(slot, 8) >> 8);
		puts(" sub "); put_hex(pci_read(slot, 0x2c));
		puts(" irq "); put_hex(pci_read(slot, 0x3c) & 0xffff); putc('\n');
		if (slot) {
			u32 bar = pci_read(slot, 0x10), size;

			pci_write(slot, 0x10, 0xffffffffu);
			size = pci_read(slot, 0x10);
			pci_write(slot, 0x10, bar);
			puts("PCI: bar0 "); put_hex(bar); puts(" sizing "); put_hex(size);
			puts(" restored "); put_hex(pci_read(slot, 0x10)); putc('\n');
		}
	}
	puts("PCI: absent "); put_hex(pci_read(31, 0)); putc('\n');
	puts("PCI: done\n");
}
