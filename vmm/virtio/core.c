/*
 * vmm/virtio/core.c - split virtqueues in the legacy layout (virtio 0.9.5,
 * "Virtqueue Layout"; virtio 1.x section 2.7 for the ring semantics).
 *
 * For a queue of num entries at guest page pfn:
 *   desc  = pfn * 4096                        16 bytes per entry
 *   avail = desc + 16 * num                   flags, idx, ring[num], used_event
 *   used  = align_up(avail + 6 + 2 * num, 4096)  flags, idx, ring[num] of {id, len}
 * The ring lives in guest memory the guest controls: every index is taken
 * modulo num, every descriptor's address and length is checked against
 * guest RAM, chains are bounded by num (a loop cannot spin us), and a
 * malformed chain is consumed with zero length rather than trusted.
 * No indirect descriptors and no event index are offered.
 */
#include "vmm/vmm_int.h"

#include <string.h>

int virtio_queue_setup(struct virtio_dev *vd, struct virtio_queue *q, uint32_t pfn)
{
	uint64_t desc = (uint64_t)pfn * VIRTIO_PCI_VRING_ALIGN;
	uint64_t avail = desc + 16ULL * q->num;
	uint64_t used = KL_ALIGN_UP(avail + 6 + 2ULL * q->num, VIRTIO_PCI_VRING_ALIGN);
	uint64_t end = used + 6 + 8ULL * q->num;

	q->pfn = 0;
	if (!pfn)
		return 0;
	if (!vmm_gpa(vd->vm, desc, end - desc))
		return -EFAULT;
	q->pfn = pfn;
	q->desc = desc;
	q->avail = avail;
	q->used = used;
	q->last_avail = 0;
	q->used_idx = 0;
	return 0;
}

void virtio_dev_reset(struct virtio_dev *vd)
{
	for (unsigned i = 0; i < vd->nvq; i++) {
		uint16_t num = vd->vq[i].num;

		memset(&vd->vq[i], 0, sizeof(vd->vq[i]));
		vd->vq[i].num = num;
	}
	vd->guest_features = 0;
	vd->status = 0;
	vd->isr = 0;
	vd->queue_sel = 0;
	if (vd->ops->reset)
		vd->ops->reset(vd);
}

/* Collect the chain starting at head into iov; false when it is malformed. */
static bool collect_chain(struct virtio_dev *vd, struct virtio_queue *q, uint16_t head,
			  struct virtio_iov *iov, unsigned *niov)
{
	uint16_t idx = head;
	bool seen_write = false;

	*niov = 0;
	for (unsigned steps = 0; steps < q->num; steps++) {
		uint8_t *d = vmm_gpa(vd->vm, q->desc + 16ULL * idx, 16);
		uint64_t addr;
		uint32_t len;
		uint16_t flags;

		if (!d)
			return false;
		addr = get_le64(d);
		len = get_le32(d + 8);
		flags = get_le16(d + 12);
		if (flags & VIRTQ_DESC_F_INDIRECT)
			return false;
		if (*niov >= VIRTIO_MAX_IOV)
			return false;
		iov[*niov].p = vmm_gpa(vd->vm, addr, len);
		if (!iov[*niov].p)
			return false;
		iov[*niov].len = len;
		iov[*niov].wr = flags & VIRTQ_DESC_F_WRITE;
		/* device-readable parts come before device-writable ones */
		if (!iov[*niov].wr && seen_write)
			return false;
		seen_write |= iov[*niov].wr;
		(*niov)++;
		if (!(flags & VIRTQ_DESC_F_NEXT))
			return true;
		idx = get_le16(d + 14);
		if (idx >= q->num)
			return false;
	}
	return false; /* longer than the queue: a loop */
}

bool virtio_queue_process(struct virtio_dev *vd, struct virtio_queue *q)
{
	struct virtio_iov iov[VIRTIO_MAX_IOV];
	uint8_t *avail, *used;
	bool notify = false;
	uint16_t avail_idx;
	unsigned budget;

	if (!q->pfn || !q->num)
		return false;
	avail = vmm_gpa(vd->vm, q->avail, 6 + 2ULL * q->num);
	used = vmm_gpa(vd->vm, q->used, 6 + 8ULL * q->num);
	if (!avail || !used)
		return false;
	avail_idx = get_le16(avail + 2);
	/* a guest claiming more than num new entries is broken; take at most num */
	budget = q->num;
	while (q->last_avail != avail_idx && budget--) {
		uint16_t head = get_le16(avail + 4 + 2 * (q->last_avail % q->num));
		unsigned niov = 0;
		uint32_t written = 0;
		uint8_t *u;

		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (head < q->num && collect_chain(vd, q, head, iov, &niov))
			written = vd->ops->handle(vd, iov, niov);
		else
			vd->bad_requests++;
		u = used + 4 + 8 * (q->used_idx % q->num);
		put_le32(u, head);
		put_le32(u + 4, written);
		q->used_idx++;
		q->last_avail++;
		/* the used element is visible before the index that publishes it */
		__atomic_thread_fence(__ATOMIC_RELEASE);
		put_le16(used + 2, q->used_idx);
		notify = true;
	}
	if (notify && (get_le16(avail) & VIRTQ_AVAIL_F_NO_INTERRUPT))
		notify = false;
	return notify;
}
