/*
 * vmm/virtio/pci.c - the legacy virtio-pci transport: a transitional device
 * (vendor 0x1af4, device 0x1000 + type - 1, revision 0, subsystem = the
 * virtio type) with the 0.9.5 register block in I/O BAR 0 and INTx.
 *
 * Without MSI-X the device config starts at offset 20. Reading ISR returns
 * it, clears it and drops the (level) interrupt line. Queue notifications are
 * handled synchronously on the vCPU thread that wrote QUEUE_NOTIFY. Writing
 * 0 to STATUS resets the device.
 */
#include "vmm/vmm_int.h"

#include <string.h>

static void vp_set_irq(struct virtio_pci_dev *vp)
{
	vmm_irq_line(vp->vd.vm, vp->pci.gsi, vp->vd.isr ? 1 : 0);
}

static void vp_write(struct virtio_pci_dev *vp, uint64_t off, const uint8_t *data, unsigned len)
{
	struct virtio_dev *vd = &vp->vd;
	uint32_t v = len == 4 ? get_le32(data) : len == 2 ? get_le16(data) : data[0];

	switch (off) {
	case VIRTIO_PCI_GUEST_FEATURES:
		if (len == 4)
			vd->guest_features = v & vd->ops->get_features(vd);
		break;
	case VIRTIO_PCI_QUEUE_PFN:
		if (len == 4 && vd->queue_sel < vd->nvq &&
		    virtio_queue_setup(vd, &vd->vq[vd->queue_sel], v) < 0)
			vd->status |= 0x40; /* NEEDS_RESET: ring outside RAM */
		break;
	case VIRTIO_PCI_QUEUE_SEL:
		vd->queue_sel = (uint16_t)v;
		break;
	case VIRTIO_PCI_QUEUE_NOTIFY:
		if (v < vd->nvq && virtio_queue_process(vd, &vd->vq[v])) {
			vd->isr |= 1;
			vp_set_irq(vp);
		}
		break;
	case VIRTIO_PCI_STATUS:
		if (len != 1)
			break;
		if (v == 0) {
			virtio_dev_reset(vd);
			vp_set_irq(vp);
		} else {
			vd->status = (uint8_t)v;
		}
		break;
	default:
		break; /* config space is read-only for virtio-blk */
	}
}

static void vp_read(struct virtio_pci_dev *vp, uint64_t off, uint8_t *data, unsigned len)
{
	struct virtio_dev *vd = &vp->vd;
	uint32_t v = 0;

	if (off >= VIRTIO_PCI_CONFIG) {
		vd->ops->get_config(vd, (uint32_t)(off - VIRTIO_PCI_CONFIG), data, len);
		return;
	}
	switch (off) {
	case VIRTIO_PCI_HOST_FEATURES:
		v = vd->ops->get_features(vd);
		break;
	case VIRTIO_PCI_GUEST_FEATURES:
		v = vd->guest_features;
		break;
	case VIRTIO_PCI_QUEUE_PFN:
		v = vd->queue_sel < vd->nvq ? vd->vq[vd->queue_sel].pfn : 0;
		break;
	case VIRTIO_PCI_QUEUE_NUM:
		v = vd->queue_sel < vd->nvq ? vd->vq[vd->queue_sel].num : 0;
		break;
	case VIRTIO_PCI_QUEUE_SEL:
		v = vd->queue_sel;
		break;
	case VIRTIO_PCI_STATUS:
		v = vd->status;
		break;
	case VIRTIO_PCI_ISR:
		v = vd->isr;
		vd->isr = 0;
		vp_set_irq(vp);
		break;
	default:
		v = 0xffffffffu;
		break;
	}
	if (len == 4)
		put_le32(data, v);
	else if (len == 2)
		put_le16(data, (uint16_t)v);
	else
		data[0] = (uint8_t)v;
}

static void vp_io(struct vmm *vm, void *opaque, uint64_t off, uint8_t *data, unsigned len, bool wr)
{
	struct virtio_pci_dev *vp = opaque;

	(void)vm;
	if (!(vp->pci.cfg[0x04] & 0x01)) { /* I/O decoding disabled */
		if (!wr)
			memset(data, 0xff, len);
		return;
	}
	if (wr)
		vp_write(vp, off, data, len);
	else
		vp_read(vp, off, data, len);
}

static void vp_bar_moved(struct vmm_pci_dev *pd, int bar, uint32_t addr)
{
	struct virtio_pci_dev *vp = pd->opaque;

	if (bar != 0)
		return;
	vp->io_base = (uint16_t)addr;
	vmm_move_pio(vp->vd.vm, vp, addr);
}

int virtio_pci_init(struct vmm *vm, struct virtio_pci_dev *vp, const struct virtio_dev_ops *ops,
		    void *priv)
{
	struct vmm_pci_dev *pd = &vp->pci;

	memset(vp, 0, sizeof(*vp));
	vp->vd.ops = ops;
	vp->vd.vm = vm;
	vp->vd.priv = priv;
	vp->vd.nvq = 1;
	vp->vd.vq[0].num = 256;
	put_le16(pd->cfg + 0x00, 0x1af4);
	put_le16(pd->cfg + 0x02, ops->pci_device_id);
	pd->cfg[0x08] = 0; /* revision 0: legacy/transitional */
	pd->cfg[0x09] = (uint8_t)ops->pci_class;
	pd->cfg[0x0a] = (uint8_t)(ops->pci_class >> 8);
	pd->cfg[0x0b] = (uint8_t)(ops->pci_class >> 16);
	put_le16(pd->cfg + 0x2c, 0x1af4);
	put_le16(pd->cfg + 0x2e, ops->device_id);
	pd->bar_size[0] = VIRTIO_PCI_BAR_SIZE;
	pd->bar_io[0] = true;
	pd->irq_pin = 1;
	pd->bar_moved = vp_bar_moved;
	pd->opaque = vp;
	KL_TRY(vmm_pci_add(vm, pd));
	vp->io_base = (uint16_t)(get_le32(pd->cfg + 0x10) & ~0x3u);
	return vmm_register_pio(vm, vp->io_base, VIRTIO_PCI_BAR_SIZE, vp_io, vp);
}

void virtio_pci_exit(struct vmm *vm, struct virtio_pci_dev *vp)
{
	(void)vm;
	(void)vp;
}
