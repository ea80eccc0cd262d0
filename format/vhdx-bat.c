/*
 * format/vhdx-bat.c - the VHDX block allocation table (MS-VHDX 2.5): loading
 * and validating it, mapping virtual offsets, sector bitmaps of
 * differencing disks, and the write path.
 *
 * BAT layout: ChunkRatio payload entries, then one sector-bitmap entry,
 * repeated; payload block i is entry i + i / ChunkRatio. A chunk covers
 * 2^23 logical sectors, one sector bitmap block (1 MiB, bit 0 of byte 0 =
 * first sector of the chunk, 1 = sector present in this file).
 *
 * Write ordering (no log is used): new blocks are appended at a 1 MiB
 * boundary past the end of the file (the file is extended first, so the
 * rest of a new block reads as zeros); data is written in place; BAT
 * entries and sector bitmap bits change only in memory. vhdx_bat_flush
 * syncs the data, then writes the dirty BAT and bitmap pages, then syncs
 * again: after a crash a BAT entry either still has its old value or points
 * at data that is on disk. The header update that changes DataWriteGuid
 * (vhdx.c) is synced before the first data write of a session.
 */
#include "format/vhdx.h"

#include <string.h>

#define BAT_PAGE_ENTRIES 512 /* 4 KiB of BAT */

static uint64_t bat_index(const struct vhdx_state *s, uint64_t blk)
{
	return blk + blk / s->chunk_ratio;
}

static uint64_t sb_index(const struct vhdx_state *s, uint64_t chunk)
{
	return chunk * (s->chunk_ratio + 1) + s->chunk_ratio;
}

/* Mark [off, off+len) as used in the MiB bitmap; false when already taken. */
static bool mark_used(struct vhdx_state *s, uint64_t off, uint64_t len)
{
	uint64_t first = off / VHDX_MiB, last = KL_DIV_ROUND_UP(off + len, VHDX_MiB);

	if (last > s->used_mib)
		last = s->used_mib;
	for (uint64_t m = first; m < last; m++)
		if (s->used[m / 8] & (1u << (m % 8)))
			return false;
	for (uint64_t m = first; m < last; m++)
		s->used[m / 8] |= (uint8_t)(1u << (m % 8));
	return true;
}

static bool range_free(const struct vhdx_state *s, uint64_t off, uint64_t len)
{
	uint64_t first = off / VHDX_MiB, last = KL_DIV_ROUND_UP(off + len, VHDX_MiB);

	if (last > s->used_mib)
		return false;
	for (uint64_t m = first; m < last; m++)
		if (s->used[m / 8] & (1u << (m % 8)))
			return false;
	return true;
}

int vhdx_bat_load(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;
	uint64_t need;
	int rc;

	s->chunk_ratio = ((uint64_t)1 << 23) * s->lss / s->block_size;
	s->nblocks = KL_DIV_ROUND_UP(s->vsize, (uint64_t)s->block_size);
	s->nchunks = KL_DIV_ROUND_UP(s->nblocks, s->chunk_ratio);
	s->nbat = s->has_parent ? s->nchunks * (s->chunk_ratio + 1)
				: s->nblocks + (s->nblocks - 1) / s->chunk_ratio;
	need = s->nbat * 8;
	/* the region lies inside the file, so this caps the table by the file size */
	if (need > s->bat_len)
		return kl_err(-EUCLEAN,
			      "%s: BAT region at %llu holds %u bytes, but %llu entries "
			      "(%llu bytes) are needed for %llu bytes in %u-byte blocks",
			      d->filename, (unsigned long long)s->bat_off, s->bat_len,
			      (unsigned long long)s->nbat, (unsigned long long)need,
			      (unsigned long long)s->vsize, s->block_size);
	s->bat = kl_malloc((size_t)need);
	s->bat_dirty = kl_calloc((size_t)KL_DIV_ROUND_UP(s->nbat, BAT_PAGE_ENTRIES), 1);
	s->used_mib = KL_DIV_ROUND_UP(s->file_size, VHDX_MiB);
	s->used = kl_calloc((size_t)KL_DIV_ROUND_UP(s->used_mib, 8), 1);
	if (!s->bat || !s->bat_dirty || !s->used)
		return -ENOMEM;
	rc = vhdx_read(d, s->bat_off, s->bat, (size_t)need);
	if (rc < 0)
		return rc;
	for (uint64_t i = 0; i < s->nbat; i++)
		s->bat[i] = get_le64(&s->bat[i]);

	mark_used(s, 0, VHDX_MiB);
	mark_used(s, s->bat_off, s->bat_len);
	mark_used(s, s->meta_off, s->meta_len);
	if (s->log_len && s->log_off >= VHDX_MiB && s->log_off % VHDX_MiB == 0 &&
	    kl_range_ok(s->log_off, s->log_len, s->file_size) &&
	    range_free(s, s->log_off, s->log_len))
		mark_used(s, s->log_off, s->log_len);

	for (uint64_t i = 0; i < s->nbat; i++) {
		uint64_t e = s->bat[i], fo = VHDX_BAT_OFF(e), blk, bytes;
		unsigned st = VHDX_BAT_STATE(e);

		if (i % (s->chunk_ratio + 1) == s->chunk_ratio) {
			/*
			 * Sector bitmap entries matter only in differencing
			 * disks; old qemu wrote junk into them in dynamic ones.
			 */
			if (!s->has_parent || st == VHDX_SB_NOT_PRESENT)
				continue;
			if (st != VHDX_SB_PRESENT)
				return kl_err(-EUCLEAN, "%s: BAT entry %llu (sector bitmap) has "
							"reserved state %u",
					      d->filename, (unsigned long long)i, st);
			if (fo < VHDX_MiB || !kl_range_ok(fo, VHDX_SB_SIZE, s->file_size))
				return kl_err(-EUCLEAN,
					      "%s: BAT entry %llu: sector bitmap block at %llu "
					      "lies past the end of the file (%llu bytes)",
					      d->filename, (unsigned long long)i,
					      (unsigned long long)fo,
					      (unsigned long long)s->file_size);
			if (!mark_used(s, fo, VHDX_SB_SIZE))
				return kl_err(-EUCLEAN,
					      "%s: BAT entry %llu: sector bitmap block at %llu "
					      "overlaps another structure",
					      d->filename, (unsigned long long)i,
					      (unsigned long long)fo);
			continue;
		}
		blk = i - i / (s->chunk_ratio + 1);
		if (blk >= s->nblocks)
			continue;
		switch (st) {
		case VHDX_PAYLOAD_NOT_PRESENT:
		case VHDX_PAYLOAD_UNDEFINED:
		case VHDX_PAYLOAD_ZERO:
		case VHDX_PAYLOAD_UNMAPPED:
		case VHDX_PAYLOAD_UNMAPPED_QEMU:
			continue;
		case VHDX_PAYLOAD_PARTIALLY_PRESENT:
			if (!s->has_parent)
				return kl_err(-EUCLEAN,
					      "%s: BAT entry %llu: block %llu is PARTIALLY_PRESENT "
					      "in a disk without a parent",
					      d->filename, (unsigned long long)i,
					      (unsigned long long)blk);
			if (VHDX_BAT_STATE(s->bat[sb_index(s, blk / s->chunk_ratio)]) !=
			    VHDX_SB_PRESENT)
				return kl_err(-EUCLEAN,
					      "%s: BAT entry %llu: block %llu is PARTIALLY_PRESENT "
					      "but its chunk has no sector bitmap",
					      d->filename, (unsigned long long)i,
					      (unsigned long long)blk);
			/* fall through */
		case VHDX_PAYLOAD_FULLY_PRESENT:
			bytes = KL_MIN((uint64_t)s->block_size, s->vsize - blk * s->block_size);
			if (fo < VHDX_MiB || !kl_range_ok(fo, bytes, s->file_size))
				return kl_err(-EUCLEAN,
					      "%s: BAT entry %llu: payload block %llu at %llu lies "
					      "past the end of the file (%llu bytes)",
					      d->filename, (unsigned long long)i,
					      (unsigned long long)blk, (unsigned long long)fo,
					      (unsigned long long)s->file_size);
			if (!mark_used(s, fo, s->block_size))
				return kl_err(-EUCLEAN, "%s: BAT entry %llu: payload block %llu at "
							"%llu overlaps another structure",
					      d->filename, (unsigned long long)i,
					      (unsigned long long)blk, (unsigned long long)fo);
			continue;
		default:
			return kl_err(-EUCLEAN, "%s: BAT entry %llu: block %llu has reserved state "
						"%u",
				      d->filename, (unsigned long long)i, (unsigned long long)blk,
				      st);
		}
	}
	s->alloc_end = KL_ALIGN_UP(s->file_size, VHDX_MiB);
	return 0;
}

void vhdx_bat_free(struct vhdx_state *s)
{
	kl_free(s->bat);
	kl_free(s->bat_dirty);
	kl_free(s->used);
	s->bat = NULL;
	s->bat_dirty = NULL;
	s->used = NULL;
	for (int i = 0; i < VHDX_SBM_CACHE; i++) {
		kl_free(s->sbm[i].bits);
		s->sbm[i].bits = NULL;
	}
}

static void set_bat(struct vhdx_state *s, uint64_t idx, uint64_t v)
{
	s->bat[idx] = v;
	s->bat_dirty[idx / BAT_PAGE_ENTRIES] = 1;
	s->bat_any_dirty = true;
}

/* ------------------------------------------------------------------ sector bitmaps */

/*
 * The bitmap of a chunk, from the cache or the file. With create, a chunk
 * without a bitmap block gets one (zeros: every sector from the parent).
 */
static int sbm_get(struct blk_dev *d, uint64_t chunk, bool create, struct vhdx_sbm **out)
{
	struct vhdx_state *s = d->priv;
	struct vhdx_sbm *slot = NULL;
	uint64_t idx = sb_index(s, chunk), e = s->bat[idx];
	int rc;

	*out = NULL;
	for (int i = 0; i < VHDX_SBM_CACHE; i++) {
		if (s->sbm[i].bits && s->sbm[i].chunk == chunk) {
			s->sbm[i].stamp = ++s->sbm_clock;
			*out = &s->sbm[i];
			return 0;
		}
	}
	if (VHDX_BAT_STATE(e) != VHDX_SB_PRESENT && !create)
		return kl_err(-EUCLEAN, "%s: chunk %llu has no sector bitmap block", d->filename,
			      (unsigned long long)chunk);
	for (int i = 0; i < VHDX_SBM_CACHE; i++) {
		if (!s->sbm[i].bits) {
			slot = &s->sbm[i];
			break;
		}
		if (!slot || s->sbm[i].stamp < slot->stamp)
			slot = &s->sbm[i];
	}
	if (slot->bits && slot->any_dirty)
		KL_TRY(vhdx_bat_flush(d));
	if (!slot->bits) {
		slot->bits = kl_malloc(VHDX_SB_SIZE);
		if (!slot->bits)
			return -ENOMEM;
	}
	slot->any_dirty = false;
	memset(slot->dirty, 0, sizeof(slot->dirty));
	slot->chunk = UINT64_MAX;
	if (VHDX_BAT_STATE(e) == VHDX_SB_PRESENT) {
		rc = vhdx_read(d, VHDX_BAT_OFF(e), slot->bits, VHDX_SB_SIZE);
		if (rc < 0) {
			kl_free(slot->bits);
			slot->bits = NULL;
			return rc;
		}
	} else {
		uint64_t fo = KL_ALIGN_UP(s->alloc_end, VHDX_MiB);

		/* past EOF: the new block reads as zeros once the file is extended */
		rc = kl_io_truncate(d->file, fo + VHDX_SB_SIZE);
		if (rc < 0) {
			kl_free(slot->bits);
			slot->bits = NULL;
			return rc;
		}
		s->alloc_end = fo + VHDX_SB_SIZE;
		memset(slot->bits, 0, VHDX_SB_SIZE);
		set_bat(s, idx, fo | VHDX_SB_PRESENT);
		s->data_dirty = true;
	}
	slot->chunk = chunk;
	slot->stamp = ++s->sbm_clock;
	*out = slot;
	return 0;
}

/* Set the bits of the sectors of virtual range [off, off+len) (inside one chunk). */
static int sbm_set(struct blk_dev *d, uint64_t off, uint64_t len)
{
	struct vhdx_state *s = d->priv;
	uint64_t chunk = off / s->block_size / s->chunk_ratio;
	uint64_t base = chunk * s->chunk_ratio * s->block_size;
	uint64_t b0 = (off - base) / s->lss, b1 = KL_DIV_ROUND_UP(off + len - base, s->lss);
	struct vhdx_sbm *m;

	KL_TRY(sbm_get(d, chunk, true, &m));
	for (uint64_t b = b0; b < b1; b++) {
		m->bits[b / 8] |= (uint8_t)(1u << (b % 8));
		m->dirty[b / 8 / 4096] = 1;
	}
	m->any_dirty = true;
	return 0;
}

/*
 * Length of the run of sectors with the same presence bit starting at off
 * (inside a PARTIALLY_PRESENT block), capped at end.
 */
static int sbm_run(struct blk_dev *d, uint64_t off, uint64_t end, bool *present, uint64_t *run)
{
	struct vhdx_state *s = d->priv;
	uint64_t chunk = off / s->block_size / s->chunk_ratio;
	uint64_t base = chunk * s->chunk_ratio * s->block_size;
	uint64_t b = (off - base) / s->lss, bend = KL_DIV_ROUND_UP(end - base, s->lss);
	struct vhdx_sbm *m;
	bool v;

	KL_TRY(sbm_get(d, chunk, false, &m));
	v = (m->bits[b / 8] >> (b % 8)) & 1;
	b++;
	while (b < bend) {
		if (b % 8 == 0 && b + 8 <= bend && m->bits[b / 8] == (v ? 0xFF : 0x00)) {
			b += 8;
			continue;
		}
		if (((m->bits[b / 8] >> (b % 8)) & 1) != v)
			break;
		b++;
	}
	*present = v;
	*run = KL_MIN(base + b * s->lss, end) - off;
	return 0;
}

/* ------------------------------------------------------------------ mapping */

/* Status of the block containing off, from off up to a run end inside the block. */
static int classify(struct blk_dev *d, uint64_t off, uint64_t *run, int *type, uint64_t *host)
{
	struct vhdx_state *s = d->priv;
	uint64_t blk = off / s->block_size;
	uint64_t end = KL_MIN((blk + 1) * s->block_size, s->vsize);
	uint64_t e = s->bat[bat_index(s, blk)];
	bool present;

	*run = end - off;
	*host = BLK_NO_HOST_OFFSET;
	switch (VHDX_BAT_STATE(e)) {
	case VHDX_PAYLOAD_FULLY_PRESENT:
		*type = BLK_DATA;
		*host = VHDX_BAT_OFF(e) + (off - blk * s->block_size);
		return 0;
	case VHDX_PAYLOAD_PARTIALLY_PRESENT:
		KL_TRY(sbm_run(d, off, end, &present, run));
		*type = present ? BLK_DATA : BLK_UNALLOC;
		if (present)
			*host = VHDX_BAT_OFF(e) + (off - blk * s->block_size);
		return 0;
	case VHDX_PAYLOAD_NOT_PRESENT:
		/* the parent's data in a differencing disk; zeros otherwise */
		*type = BLK_UNALLOC;
		return 0;
	default:
		/* ZERO; UNDEFINED and UNMAPPED may read as zeros (2.5.1.1) */
		*type = BLK_ZERO;
		return 0;
	}
}

int vhdx_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	struct vhdx_state *s = d->priv;
	uint64_t run, host, cur, h2;
	int type, t2, steps = 0;

	KL_TRY(classify(d, off, &run, &type, &host));
	cur = off + run;
	/*
	 * Merge runs of the same kind (DATA only while the host offsets are
	 * contiguous), up to len: a caller stepping through a sparse disk in
	 * small windows must not pay for a scan past each one.
	 */
	while (cur < s->vsize && cur - off < len && steps++ < 4096) {
		KL_TRY(classify(d, cur, &run, &t2, &h2));
		if (t2 != type || (type == BLK_DATA && h2 != host + (cur - off)))
			break;
		cur += run;
	}
	e->type = type;
	e->len = cur - off;
	e->host_off = host;
	return 0;
}

int vhdx_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	struct vhdx_state *s = d->priv;
	uint8_t *b = buf;

	while (len) {
		uint64_t blk = off / s->block_size, in = off - blk * s->block_size;
		uint64_t e = s->bat[bat_index(s, blk)];
		size_t n = (size_t)KL_MIN((uint64_t)len, s->block_size - in);
		unsigned st = VHDX_BAT_STATE(e);

		if (st == VHDX_PAYLOAD_FULLY_PRESENT || st == VHDX_PAYLOAD_PARTIALLY_PRESENT)
			KL_TRY(vhdx_read(d, VHDX_BAT_OFF(e) + in, b, n));
		else
			memset(b, 0, n);
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* ------------------------------------------------------------------ writes */

static int writable(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;

	if (s->broken)
		return kl_err(-EUCLEAN, "%s: refusing to write after an earlier failure left the "
					"metadata uncertain; reopen the image",
			      d->filename);
	/* DataWriteGuid changes before the first guest-visible change (2.2.2) */
	if (!s->dwg_updated)
		KL_TRY(vhdx_update_headers(d, true));
	return 0;
}

/* Zeros into the file at [off, off+len): punch a hole, or write zeros. */
static int zero_file(struct blk_dev *d, uint64_t off, uint64_t len)
{
	struct vhdx_state *s = d->priv;

	if (len == 0)
		return 0;
	if (kl_io_punch(d->file, off, len) == 0)
		return 0;
	kl_err_clear();
	if (!s->zbuf && !(s->zbuf = kl_calloc(1, VHDX_MiB)))
		return -ENOMEM;
	while (len) {
		size_t n = (size_t)KL_MIN(len, VHDX_MiB);

		KL_TRY(kl_io_pwrite(d->file, off, s->zbuf, n));
		off += n;
		len -= n;
	}
	return 0;
}

static int put_data(struct blk_dev *d, uint64_t fo, const uint8_t *src, size_t n)
{
	return src ? kl_io_pwrite(d->file, fo, src, n) : zero_file(d, fo, n);
}

/* A file offset for a payload block: reuse a fixed disk's own, or append. */
static int place_block(struct blk_dev *d, uint64_t e, uint64_t *fo, bool *stale)
{
	struct vhdx_state *s = d->priv;
	uint64_t old = VHDX_BAT_OFF(e);

	*stale = false;
	if (s->leave_alloc && !s->has_parent && old >= VHDX_MiB &&
	    kl_range_ok(old, s->block_size, s->file_size) && range_free(s, old, s->block_size)) {
		/* qemu's fixed disks with block_state_zero=on: ZERO blocks keep their space */
		mark_used(s, old, s->block_size);
		*fo = old;
		*stale = true;
		return 0;
	}
	*fo = KL_ALIGN_UP(s->alloc_end, VHDX_MiB);
	KL_TRY(kl_io_truncate(d->file, *fo + s->block_size));
	s->alloc_end = *fo + s->block_size;
	return 0;
}

/* Write [in, in+n) of block blk from src (NULL: zeros). */
static int write_piece(struct blk_dev *d, uint64_t blk, uint64_t in, const uint8_t *src,
		       size_t n)
{
	struct vhdx_state *s = d->priv;
	uint64_t idx = bat_index(s, blk), e = s->bat[idx], fo;
	uint64_t bytes = KL_MIN((uint64_t)s->block_size, s->vsize - blk * s->block_size);
	unsigned st = VHDX_BAT_STATE(e);
	bool whole = in == 0 && n == bytes, stale;

	switch (st) {
	case VHDX_PAYLOAD_FULLY_PRESENT:
		return put_data(d, VHDX_BAT_OFF(e) + in, src, n);
	case VHDX_PAYLOAD_PARTIALLY_PRESENT:
		KL_TRY(put_data(d, VHDX_BAT_OFF(e) + in, src, n));
		return sbm_set(d, blk * s->block_size + in, n);
	default:
		break;
	}
	KL_TRY(place_block(d, e, &fo, &stale));
	if (stale && !whole) {
		KL_TRY(zero_file(d, fo, in));
		KL_TRY(zero_file(d, fo + in + n, bytes - in - n));
	}
	KL_TRY(put_data(d, fo + in, src, n));
	if (s->has_parent && st == VHDX_PAYLOAD_NOT_PRESENT && !whole) {
		/* the rest of the block still comes from the parent */
		KL_TRY(sbm_set(d, blk * s->block_size + in, n));
		set_bat(s, idx, fo | VHDX_PAYLOAD_PARTIALLY_PRESENT);
	} else {
		set_bat(s, idx, fo | VHDX_PAYLOAD_FULLY_PRESENT);
	}
	return 0;
}

int vhdx_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len)
{
	struct vhdx_state *s = d->priv;
	const uint8_t *b = buf;

	KL_TRY(writable(d));
	s->data_dirty = true;
	while (len) {
		uint64_t blk = off / s->block_size, in = off - blk * s->block_size;
		size_t n = (size_t)KL_MIN((uint64_t)len, s->block_size - in);
		int rc = write_piece(d, blk, in, b, n);

		if (rc < 0)
			return rc;
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

int vhdx_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags)
{
	struct vhdx_state *s = d->priv;

	(void)flags;
	KL_TRY(writable(d));
	s->data_dirty = true;
	while (len) {
		uint64_t blk = off / s->block_size, in = off - blk * s->block_size;
		uint64_t n = KL_MIN(len, s->block_size - in);
		uint64_t idx = bat_index(s, blk), e = s->bat[idx];
		unsigned st = VHDX_BAT_STATE(e);

		if (st == VHDX_PAYLOAD_FULLY_PRESENT) {
			/* fixed disks keep their blocks (no state transitions, 2.5.1.1) */
			KL_TRY(zero_file(d, VHDX_BAT_OFF(e) + in, n));
		} else if (st == VHDX_PAYLOAD_PARTIALLY_PRESENT) {
			KL_TRY(zero_file(d, VHDX_BAT_OFF(e) + in, n));
			KL_TRY(sbm_set(d, off, n));
		} else if (s->has_parent && st == VHDX_PAYLOAD_NOT_PRESENT) {
			/*
			 * The parent shows through: hide it with a block of zeros
			 * (a hole in the file). Not the ZERO state, which libvhdi
			 * reads through to the parent in a differencing disk.
			 */
			KL_TRY(write_piece(d, blk, in, NULL, (size_t)n));
		}
		/* every other state already reads as zeros */
		off += n;
		len -= n;
	}
	return 0;
}

int vhdx_bat_flush(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;
	uint8_t *buf;
	bool sbm_dirty = false;
	int rc = 0;

	for (int i = 0; i < VHDX_SBM_CACHE; i++)
		sbm_dirty |= s->sbm[i].bits && s->sbm[i].any_dirty;
	if (!s->data_dirty && !s->bat_any_dirty && !sbm_dirty)
		return 0;
	buf = kl_malloc(4096);
	if (!buf)
		return -ENOMEM;
	/* 1. the data the new metadata will point at */
	rc = kl_io_sync(d->file);
	if (rc == 0)
		rc = kl_io_event("vhdx.metadata_write");
	/* 2. sector bitmap pages */
	for (int i = 0; i < VHDX_SBM_CACHE && rc == 0; i++) {
		struct vhdx_sbm *m = &s->sbm[i];
		uint64_t fo;

		if (!m->bits || !m->any_dirty)
			continue;
		fo = VHDX_BAT_OFF(s->bat[sb_index(s, m->chunk)]);
		for (size_t p = 0; p < sizeof(m->dirty) && rc == 0; p++) {
			if (!m->dirty[p])
				continue;
			rc = kl_io_pwrite(d->file, fo + p * 4096, m->bits + p * 4096, 4096);
			if (rc == 0)
				m->dirty[p] = 0;
		}
		if (rc == 0)
			m->any_dirty = false;
	}
	/* 3. BAT pages */
	for (uint64_t p = 0; rc == 0 && s->bat_any_dirty && p * BAT_PAGE_ENTRIES < s->nbat; p++) {
		uint64_t first = p * BAT_PAGE_ENTRIES;
		size_t cnt = (size_t)KL_MIN((uint64_t)BAT_PAGE_ENTRIES, s->nbat - first);

		if (!s->bat_dirty[p])
			continue;
		for (size_t k = 0; k < cnt; k++)
			put_le64(buf + 8 * k, s->bat[first + k]);
		rc = kl_io_pwrite(d->file, s->bat_off + first * 8, buf, cnt * 8);
		if (rc == 0)
			s->bat_dirty[p] = 0;
	}
	if (rc == 0)
		s->bat_any_dirty = false;
	/* 4. make them durable */
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc == 0)
		s->data_dirty = false;
	else
		s->broken = true;
	kl_free(buf);
	return rc;
}

/*
 * After keel commit copied this child's data into its parent: clear the
 * sector bitmaps (synced), then set every payload entry NOT_PRESENT
 * (written and synced like any BAT update), then cut the file back to the
 * end of its regions, log and bitmap blocks: the payload blocks are
 * unreferenced. Either intermediate state reads through to the parent,
 * which now holds the same data. Bitmap blocks stay allocated (see
 * vhdx_create). DataWriteGuid stays: what the chain shows has not changed.
 */
int vhdx_bat_make_empty(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;
	uint64_t end = KL_MAX(VHDX_MiB, s->regions_end);
	int rc;

	if (!s->has_parent)
		return kl_err(-ENOTSUP, "%s: only a differencing VHDX can be emptied", d->filename);
	if (s->broken)
		return kl_err(-EUCLEAN, "%s: refusing to write after an earlier failure",
			      d->filename);
	KL_TRY(vhdx_bat_flush(d));
	for (int i = 0; i < VHDX_SBM_CACHE; i++) {
		kl_free(s->sbm[i].bits);
		s->sbm[i].bits = NULL;
		s->sbm[i].any_dirty = false;
	}
	for (uint64_t c = 0; c < s->nchunks; c++) {
		uint64_t e = s->bat[sb_index(s, c)];

		if (VHDX_BAT_STATE(e) != VHDX_SB_PRESENT)
			continue;
		KL_TRY(zero_file(d, VHDX_BAT_OFF(e), VHDX_SB_SIZE));
		end = KL_MAX(end, VHDX_BAT_OFF(e) + VHDX_SB_SIZE);
	}
	KL_TRY(kl_io_sync(d->file));
	for (uint64_t i = 0; i < s->nbat; i++)
		if (i % (s->chunk_ratio + 1) != s->chunk_ratio && s->bat[i])
			set_bat(s, i, VHDX_PAYLOAD_NOT_PRESENT);
	KL_TRY(vhdx_bat_flush(d));
	if (s->log_len && s->log_off >= VHDX_MiB && s->log_off + s->log_len <= s->file_size)
		end = KL_MAX(end, s->log_off + s->log_len);
	if (end < s->alloc_end) {
		rc = kl_io_truncate(d->file, end);
		if (rc == 0)
			rc = kl_io_sync(d->file);
		if (rc < 0)
			return rc;
		s->alloc_end = KL_ALIGN_UP(end, VHDX_MiB);
	}
	return 0;
}
