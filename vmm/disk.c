/*
 * vmm/disk.c - the guest's disk: an image opened read-only through the
 * format layer, with a throw-away in-memory overlay for guest writes.
 *
 * The overlay is an open-addressing hash of 4 KiB chunks keyed by chunk
 * index. A write into a chunk not yet present first reads the chunk from the
 * image (read-modify-write), so partial-chunk writes keep the rest. Reads
 * take each chunk from the overlay when present, from the image otherwise.
 * Nothing here can write to the image: the blk_dev is opened without
 * BLK_OPEN_RDWR, and a borrowed device is only ever read.
 */
#include "vmm/vmm_int.h"

#include <string.h>

struct ov_slot {
	uint64_t key; /* chunk index + 1; 0 = empty */
	uint8_t *data;
};

struct vmm_disk {
	struct blk_dev *dev;
	bool own;
	uint64_t size;
	struct ov_slot *slots;
	size_t cap; /* power of two */
	size_t used;
	uint64_t reads, writes;
};

int vmm_disk_open(const struct vmm_opts *o, struct vmm_disk **out)
{
	struct vmm_disk *d;
	int rc;

	*out = NULL;
	d = kl_calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	if (o->disk) {
		d->dev = o->disk;
	} else {
		struct blk_open_opts bo = { .format = o->image_format, .flags = 0 };

		rc = blk_open(o->image, &bo, &d->dev);
		if (rc < 0) {
			kl_free(d);
			return rc;
		}
		d->own = true;
	}
	d->size = blk_size(d->dev) & ~511ULL;
	*out = d;
	return 0;
}

void vmm_disk_close(struct vmm_disk *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->cap; i++)
		kl_free(d->slots[i].data);
	kl_free(d->slots);
	if (d->own)
		blk_close(d->dev);
	kl_free(d);
}

uint64_t vmm_disk_size(const struct vmm_disk *d)
{
	return d->size;
}

void vmm_disk_stats(const struct vmm_disk *d, uint64_t *reads, uint64_t *writes,
		    uint64_t *overlay)
{
	*reads = d->reads;
	*writes = d->writes;
	*overlay = (uint64_t)d->used * VMM_OVERLAY_CHUNK;
}

static struct ov_slot *ov_find(struct vmm_disk *d, uint64_t chunk)
{
	if (!d->cap)
		return NULL;
	for (size_t i = (size_t)(chunk * 0x9e3779b97f4a7c15ULL) & (d->cap - 1);;
	     i = (i + 1) & (d->cap - 1)) {
		if (d->slots[i].key == chunk + 1)
			return &d->slots[i];
		if (!d->slots[i].key)
			return NULL;
	}
}

static int ov_grow(struct vmm_disk *d)
{
	size_t ncap = d->cap ? d->cap * 2 : 256;
	struct ov_slot *ns = kl_calloc(ncap, sizeof(*ns));

	if (!ns)
		return -ENOMEM;
	for (size_t k = 0; k < d->cap; k++) {
		size_t i;

		if (!d->slots[k].key)
			continue;
		i = (size_t)((d->slots[k].key - 1) * 0x9e3779b97f4a7c15ULL) & (ncap - 1);
		while (ns[i].key)
			i = (i + 1) & (ncap - 1);
		ns[i] = d->slots[k];
	}
	kl_free(d->slots);
	d->slots = ns;
	d->cap = ncap;
	return 0;
}

static int ov_insert(struct vmm_disk *d, uint64_t chunk, struct ov_slot **out)
{
	uint8_t *data;
	size_t i;
	int rc;

	if ((uint64_t)(d->used + 1) * VMM_OVERLAY_CHUNK > VMM_OVERLAY_LIMIT)
		return kl_err(-ENOSPC, "guest wrote more than %llu MiB; the write overlay is full",
			      (unsigned long long)(VMM_OVERLAY_LIMIT >> 20));
	if ((d->used + 1) * 2 > d->cap)
		KL_TRY(ov_grow(d));
	data = kl_malloc(VMM_OVERLAY_CHUNK);
	if (!data)
		return -ENOMEM;
	rc = blk_pread_padded(d->dev, chunk * VMM_OVERLAY_CHUNK, data, VMM_OVERLAY_CHUNK);
	if (rc < 0) {
		kl_free(data);
		return rc;
	}
	i = (size_t)(chunk * 0x9e3779b97f4a7c15ULL) & (d->cap - 1);
	while (d->slots[i].key)
		i = (i + 1) & (d->cap - 1);
	d->slots[i].key = chunk + 1;
	d->slots[i].data = data;
	d->used++;
	*out = &d->slots[i];
	return 0;
}

int vmm_disk_read(struct vmm_disk *d, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;

	if (!kl_range_ok(off, len, d->size))
		return kl_err(-EINVAL, "guest read at %llu+%zu past the disk end %llu",
			      (unsigned long long)off, len, (unsigned long long)d->size);
	d->reads += len;
	if (!d->used)
		return blk_pread(d->dev, off, buf, len);
	while (len) {
		uint64_t chunk = off / VMM_OVERLAY_CHUNK;
		size_t in = (size_t)(off % VMM_OVERLAY_CHUNK);
		size_t n = KL_MIN(len, (size_t)VMM_OVERLAY_CHUNK - in);
		struct ov_slot *s = ov_find(d, chunk);

		if (s)
			memcpy(p, s->data + in, n);
		else
			KL_TRY(blk_pread(d->dev, off, p, n));
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

int vmm_disk_write(struct vmm_disk *d, uint64_t off, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	if (!kl_range_ok(off, len, d->size))
		return kl_err(-EINVAL, "guest write at %llu+%zu past the disk end %llu",
			      (unsigned long long)off, len, (unsigned long long)d->size);
	d->writes += len;
	while (len) {
		uint64_t chunk = off / VMM_OVERLAY_CHUNK;
		size_t in = (size_t)(off % VMM_OVERLAY_CHUNK);
		size_t n = KL_MIN(len, (size_t)VMM_OVERLAY_CHUNK - in);
		struct ov_slot *s = ov_find(d, chunk);

		if (!s)
			KL_TRY(ov_insert(d, chunk, &s));
		memcpy(s->data + in, p, n);
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}
