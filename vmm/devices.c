/*
 * vmm/devices.c - the one ordered list of the VM's devices.
 *
 * Started top to bottom, stopped bottom to top. The order matters where a
 * device needs another: virtio-blk registers on the PCI bus, so the bus comes
 * first; the MP table describes the PCI devices' interrupts, so it is
 * written after every PCI device exists.
 */
#include "vmm/vmm_int.h"

struct vmm_device {
	const char *name;
	int (*start)(struct vmm *vm);
	void (*stop)(struct vmm *vm);
};

static int mptable_start(struct vmm *vm)
{
	return vmm_mptable_write(vm);
}

static const struct vmm_device vmm_devices[] = {
	{ "serial 8250 @0x3f8", vmm_serial_init, vmm_serial_exit },
	{ "legacy ports (i8042, CMOS, POST)", vmm_legacy_init, vmm_legacy_exit },
	{ "PCI host bridge", vmm_pci_init, vmm_pci_exit },
	{ "virtio-blk (legacy PCI)", virtio_blk_init, virtio_blk_exit },
	{ "MP table", mptable_start, NULL },
};

int vmm_devices_start(struct vmm *vm)
{
	size_t i;
	int rc;

	for (i = 0; i < KL_ARRAY_SIZE(vmm_devices); i++) {
		rc = vmm_devices[i].start(vm);
		if (rc < 0) {
			kl_err_prefix(rc, "starting %s", vmm_devices[i].name);
			goto unwind;
		}
	}
	return 0;
unwind:
	/* the failed device too: stop functions accept a half-started device */
	for (size_t k = i + 1; k-- > 0;)
		if (vmm_devices[k].stop)
			vmm_devices[k].stop(vm);
	return rc;
}

void vmm_devices_stop(struct vmm *vm)
{
	for (size_t i = KL_ARRAY_SIZE(vmm_devices); i-- > 0;)
		if (vmm_devices[i].stop)
			vmm_devices[i].stop(vm);
}
