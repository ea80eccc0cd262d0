/*
 * vmm/virtio/blk.c - virtio-blk (virtio 1.x section 5.2) over the legacy
 * PCI transport, served by the guest disk (vmm/disk.c).
 *
 * Request: a 16-byte header {type, reserved, sector} in device-readable
 * memory, the data, and one status byte at the very end of the writable
 * part. IN reads, OUT writes (into the overlay, or IOERR when the disk is
 * read-only to the guest), FLUSH succeeds (nothing is durable by design),
 * GET_ID returns "keel". Sizes are in 512-byte sectors on the wire only;
 * everything here is bytes.
 */
#include "vmm/vmm_int.h"

#include <string.h>

#define VIRTIO_ID_BLOCK 2
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define SECTOR 512u
#define SEG_MAX 126
#define MAX_REQUEST (32u << 20) /* bigger requests get IOERR, never a big allocation */

struct virtio_blk {
	struct virtio_pci_dev vp;
	struct vmm_disk *disk;
	bool writable;
	uint8_t config[24];
	uint8_t *buf; /* bounce buffer, grown to the largest request seen */
	size_t buf_len;
};

static uint8_t *blk_buf(struct virtio_blk *b, size_t len)
{
	if (len > b->buf_len) {
		uint8_t *n = kl_realloc(b->buf, len);

		if (!n)
			return NULL;
		b->buf = n;
		b->buf_len = len;
	}
	return b->buf;
}

static uint32_t blk_features(struct virtio_dev *vd)
{
	struct virtio_blk *b = vd->priv;
	uint32_t f = 1u << VIRTIO_BLK_F_SEG_MAX | 1u << VIRTIO_BLK_F_BLK_SIZE |
		     1u << VIRTIO_BLK_F_FLUSH;

	if (!b->writable)
		f |= 1u << VIRTIO_BLK_F_RO;
	return f;
}

static void blk_get_config(struct virtio_dev *vd, uint32_t off, uint8_t *data, unsigned len)
{
	struct virtio_blk *b = vd->priv;

	for (unsigned i = 0; i < len; i++)
		data[i] = off + i < sizeof(b->config) ? b->config[off + i] : 0;
}

/* Copy between a flat buffer and the iov range [from, from+n) of the stream. */
static void iov_copy(struct virtio_iov *iov, unsigned niov, size_t from, uint8_t *buf, size_t n,
		     bool to_iov)
{
	size_t pos = 0;

	for (unsigned i = 0; i < niov && n; i++) {
		size_t l = iov[i].len;

		if (from >= pos + l) {
			pos += l;
			continue;
		}
		size_t skip = from > pos ? from - pos : 0;
		size_t take = KL_MIN(l - skip, n);

		if (to_iov)
			memcpy(iov[i].p + skip, buf, take);
		else
			memcpy(buf, iov[i].p + skip, take);
		buf += take;
		n -= take;
		from += take;
		pos += l;
	}
}

static uint32_t blk_handle(struct virtio_dev *vd, struct virtio_iov *iov, unsigned niov)
{
	struct virtio_blk *b = vd->priv;
	uint8_t hdr[16], status = VIRTIO_BLK_S_OK;
	size_t rlen = 0, wlen = 0;
	unsigned first_w = niov;
	uint32_t type;
	uint64_t off, dlen, written = 0;
	uint8_t *buf = NULL;

	for (unsigned i = 0; i < niov; i++) {
		if (iov[i].wr) {
			if (first_w == niov)
				first_w = i;
			wlen += iov[i].len;
		} else {
			rlen += iov[i].len;
		}
	}
	if (rlen < sizeof(hdr) || wlen < 1) {
		vd->bad_requests++;
		return 0;
	}
	iov_copy(iov, first_w, 0, hdr, sizeof(hdr), false);
	type = get_le32(hdr);
	if (kl_mul_overflow(get_le64(hdr + 8), SECTOR, &off))
		off = UINT64_MAX;
	switch (type) {
	case VIRTIO_BLK_T_IN:
		dlen = wlen - 1;
		if (dlen % SECTOR || dlen > MAX_REQUEST || !kl_range_ok(off, dlen, vmm_disk_size(b->disk))) {
			status = VIRTIO_BLK_S_IOERR;
			break;
		}
		buf = blk_buf(b, dlen ? dlen : 1);
		if (!buf || vmm_disk_read(b->disk, off, buf, dlen) < 0) {
			status = VIRTIO_BLK_S_IOERR;
			break;
		}
		iov_copy(iov + first_w, niov - first_w, 0, buf, dlen, true);
		written = dlen;
		break;
	case VIRTIO_BLK_T_OUT:
		dlen = rlen - sizeof(hdr);
		if (!b->writable || dlen % SECTOR || dlen > MAX_REQUEST ||
		    !kl_range_ok(off, dlen, vmm_disk_size(b->disk))) {
			status = VIRTIO_BLK_S_IOERR;
			break;
		}
		buf = blk_buf(b, dlen ? dlen : 1);
		if (!buf) {
			status = VIRTIO_BLK_S_IOERR;
			break;
		}
		iov_copy(iov, first_w, sizeof(hdr), buf, dlen, false);
		if (vmm_disk_write(b->disk, off, buf, dlen) < 0)
			status = VIRTIO_BLK_S_IOERR;
		break;
	case VIRTIO_BLK_T_FLUSH:
		break;
	case VIRTIO_BLK_T_GET_ID: {
		uint8_t id[20] = "keel-verify-boot";

		dlen = KL_MIN(wlen - 1, sizeof(id));
		iov_copy(iov + first_w, niov - first_w, 0, id, dlen, true);
		written = dlen;
		break;
	}
	default:
		status = VIRTIO_BLK_S_UNSUPP;
		break;
	}
	kl_err_clear();
	iov_copy(iov + first_w, niov - first_w, wlen - 1, &status, 1, true);
	return (uint32_t)(written + 1);
}

static const struct virtio_dev_ops blk_ops = {
	.device_id = VIRTIO_ID_BLOCK,
	.pci_device_id = 0x1001,
	.pci_class = 0x010000, /* mass storage, SCSI: what QEMU reports */
	.get_features = blk_features,
	.get_config = blk_get_config,
	.handle = blk_handle,
};

int virtio_blk_init(struct vmm *vm)
{
	struct virtio_blk *b;
	int rc;

	if (!vm->disk)
		return 0;
	b = kl_calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->disk = vm->disk;
	b->writable = vm->opts->disk_writable;
	/* legacy config: capacity (sectors), size_max, seg_max, geometry, blk_size */
	put_le64(b->config, vmm_disk_size(vm->disk) / SECTOR);
	put_le32(b->config + 12, SEG_MAX);
	put_le32(b->config + 20, SECTOR);
	rc = virtio_pci_init(vm, &b->vp, &blk_ops, b);
	if (rc < 0) {
		kl_free(b);
		return rc;
	}
	vm->vblk = &b->vp;
	return 0;
}

void virtio_blk_exit(struct vmm *vm)
{
	/* vp is the first member of struct virtio_blk */
	struct virtio_blk *b = (struct virtio_blk *)vm->vblk;

	if (b) {
		virtio_pci_exit(vm, &b->vp);
		kl_free(b->buf);
	}
	kl_free(b);
	vm->vblk = NULL;
}
