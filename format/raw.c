/*
 * format/raw.c - raw disk images: the guest's bytes, nothing else.
 *
 * Sparse-aware: block_status uses SEEK_DATA/SEEK_HOLE, so holes are
 * reported as ZERO and walkers never read them. Raw bids 1 in probing, the
 * lowest score, so it wins only when no format recognises the file; the
 * core then refuses to open it writable (see core.c).
 */
#define _GNU_SOURCE
#include "format/format_int.h"

#include <string.h>

struct raw_state {
	bool no_seek_data; /* filesystem without SEEK_DATA: everything is data */
};

static int raw_probe(const struct blk_probe_buf *pb)
{
	(void)pb;
	return 1;
}

static int raw_open(struct blk_dev *d, const struct blk_open_opts *o)
{
	uint64_t size;

	(void)o;
	KL_TRY(kl_io_size(d->file, &size));
	d->size = size;
	d->cluster_size = 65536;
	return 0;
}

static int raw_create(const char *path, const struct blk_create_opts *o)
{
	struct kl_file *f;
	bool prealloc = false;
	const char *pa = kl_opts_get(o->opts, "preallocation");
	int rc;

	if (pa && strcmp(pa, "off") != 0) {
		if (strcmp(pa, "full") != 0 && strcmp(pa, "falloc") != 0)
			return kl_err(-EINVAL, "raw: preallocation must be off, falloc or full");
		prealloc = true;
	}
	KL_TRY(kl_io_open(path, blk_create_kl_flags(o), &f));
	rc = kl_io_truncate(f, o->size);
	if (rc == 0 && prealloc) {
		uint8_t *z = kl_calloc(1, 1 << 20);

		if (!z)
			rc = -ENOMEM;
		for (uint64_t off = 0; rc == 0 && off < o->size; off += 1 << 20)
			rc = kl_io_pwrite(f, off, z, (size_t)KL_MIN(o->size - off, (uint64_t)1 << 20));
		kl_free(z);
	}
	if (rc == 0)
		rc = kl_io_sync(f);
	kl_io_close(f);
	if (rc < 0)
		kl_io_unlink(path);
	return rc;
}

static int raw_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	ssize_t n = kl_io_pread(d->file, off, buf, len);

	return n < 0 ? (int)n : 0;
}

static int raw_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len)
{
	return kl_io_pwrite(d->file, off, buf, len);
}

static int raw_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags)
{
	(void)flags;
	/* punching keeps the file sparse; fall back to writing zeros */
	if (kl_io_punch(d->file, off, len) == 0)
		return 0;
	kl_err_clear();
	for (uint64_t done = 0; done < len;) {
		static const uint8_t zero[65536];
		size_t n = (size_t)KL_MIN(len - done, (uint64_t)sizeof(zero));

		KL_TRY(kl_io_pwrite(d->file, off + done, zero, n));
		done += n;
	}
	return 0;
}

static int raw_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	struct raw_state *s = d->priv;
	uint64_t data, hole;
	int rc;

	(void)len;
	if (s->no_seek_data)
		goto all_data;
	rc = kl_io_seek_data(d->file, off, &data);
	if (rc == -ENXIO) {
		/* no data from here to EOF */
		e->type = BLK_ZERO;
		e->len = d->size - off;
		return 0;
	}
	if (rc < 0) {
		s->no_seek_data = true;
		goto all_data;
	}
	if (data > off) {
		e->type = BLK_ZERO;
		e->len = KL_MIN(data, d->size) - off;
		return 0;
	}
	rc = kl_io_seek_hole(d->file, off, &hole);
	if (rc < 0 || hole <= off)
		hole = d->size;
	e->type = BLK_DATA;
	e->len = KL_MIN(hole, d->size) - off;
	e->host_off = off;
	return 0;
all_data:
	e->type = BLK_DATA;
	e->len = d->size - off;
	e->host_off = off;
	return 0;
}

static int raw_flush(struct blk_dev *d)
{
	return kl_io_sync(d->file);
}

/* A raw file is as large as the disk, whatever it holds (holes are the filesystem's business). */
static int raw_measure(const struct blk_create_opts *o, struct blk_dev *in, struct blk_measure *m)
{
	m->required = o->size;
	m->fully_allocated = o->size;
	if (in)
		KL_TRY(blk_measure_allocated(in, 4096, &m->data));
	return 0;
}

const struct blk_driver blk_raw_driver = {
	.name = "raw",
	.ext = "raw",
	.desc = "raw disk image (sparse-aware)",
	.create_help =
		"  preallocation=off|falloc|full  reserve the disk's blocks up front (off)\n",
	.instance_size = sizeof(struct raw_state),
	.flags = BLK_DRV_CAN_CREATE | BLK_DRV_FLAT,
	.probe = raw_probe,
	.open = raw_open,
	.create = raw_create,
	.pread = raw_pread,
	.pwrite = raw_pwrite,
	.pwrite_zeroes = raw_pwrite_zeroes,
	.block_status = raw_block_status,
	.flush = raw_flush,
	.measure = raw_measure,
};
