/*
 * format/qcow2-cluster.c - guest offset -> host offset through the L1 and
 * L2 tables: block_status, reads (raw deflate and zstd compressed clusters
 * included), writes with copy-on-write, zero writes and discard
 * (qcow2.rst "Cluster mapping", "Compressed Clusters Descriptor",
 * "Extended L2 Entries").
 *
 * Writes: a cluster this image owns (copied flag, refcount 1) is written in
 * place; runs of such clusters with contiguous host offsets are one write.
 * Anything else gets new clusters: whole clusters go straight from the
 * caller's buffer (a run of them into one contiguous allocation, one
 * write), a partial cluster is first read whole through the chain (our
 * data, the backing file's, or zeros), patched, then written. With
 * extended L2 entries every cluster we write ends fully allocated.
 */
#include "format/qcow2.h"

#include <string.h>

/* L2 entries one map call may look at: bounds the work of one block_status */
#define QCOW2_MAP_MAX_ENTRIES 8192
/* Unallocated and zero runs are reported this far past the asked length */
#define QCOW2_MAP_FAR (1ULL << 30)
/* Apply queued frees (a flush) once this many are pending */
#define QCOW2_MAX_PENDING_FREES 4096

static uint32_t run_of_ones(uint32_t bits, uint32_t from)
{
	uint32_t x = bits >> from;

	if (x == 0xffffffffu >> from)
		return 32 - from;
	return (uint32_t)__builtin_ctz(~x);
}

int qcow2_l2_load(struct blk_dev *d, uint64_t l2_off, struct qcow2_cache_entry **out)
{
	struct qcow2_state *s = qcow2_s(d);

	if (l2_off % s->cluster_size || l2_off < s->cluster_size)
		return qcow2_corrupt(d, "%s: L2 table offset %llu (from the L1 table) is not cluster "
				     "aligned or lies in the header", d->filename,
				     (unsigned long long)l2_off);
	return qcow2_cache_get(d, &s->l2c, l2_off, true, out);
}

/* Kind of subcluster sc of an L2 entry, and how many subclusters from sc share it. */
static int classify(struct blk_dev *d, uint64_t l2_off, uint32_t l2i, uint64_t ent, uint64_t bm,
		    uint32_t sc, enum qcow2_piece_type *type, uint32_t *count)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t host = ent & QCOW2_OFFSET_MASK;
	uint32_t alloc = (uint32_t)bm, zero = (uint32_t)(bm >> 32);

	if (ent & QCOW2_OFLAG_COMPRESSED) {
		if (s->dfile || s->crypt_method)
			return qcow2_corrupt(d, "%s: L2 table at %llu entry %u: compressed cluster in "
					     "an image with %s", d->filename,
					     (unsigned long long)l2_off, l2i,
					     s->dfile ? "an external data file" : "encryption");
		*type = QCOW2_P_COMPRESSED;
		*count = (s->ext_l2 ? QCOW2_SUBCLUSTERS : 1) - sc;
		return 0;
	}
	if (host % s->cluster_size)
		return qcow2_corrupt(d, "%s: L2 table at %llu entry %u: cluster offset %llu is not "
				     "cluster aligned", d->filename, (unsigned long long)l2_off, l2i,
				     (unsigned long long)host);
	if (!s->ext_l2) {
		*count = 1;
		if (ent & QCOW2_OFLAG_ZERO) {
			if (s->version < 3)
				return qcow2_corrupt(d, "%s: L2 table at %llu entry %u: zero flag in "
						     "a version 2 image", d->filename,
						     (unsigned long long)l2_off, l2i);
			*type = QCOW2_P_ZERO;
		} else {
			*type = qcow2_has_host(s, ent) ? QCOW2_P_DATA : QCOW2_P_UNALLOC;
		}
		return 0;
	}
	if (!qcow2_has_host(s, ent) && alloc)
		return qcow2_corrupt(d, "%s: L2 table at %llu entry %u: subclusters allocated but no "
				     "host cluster", d->filename, (unsigned long long)l2_off, l2i);
	if (alloc & zero)
		return qcow2_corrupt(d, "%s: L2 table at %llu entry %u: subclusters both allocated "
				     "and zero (bitmap %016llx)", d->filename,
				     (unsigned long long)l2_off, l2i, (unsigned long long)bm);
	if ((alloc >> sc) & 1) {
		*type = QCOW2_P_DATA;
		*count = run_of_ones(alloc, sc);
	} else if ((zero >> sc) & 1) {
		*type = QCOW2_P_ZERO;
		*count = run_of_ones(zero, sc);
	} else {
		*type = QCOW2_P_UNALLOC;
		*count = run_of_ones(~(alloc | zero), sc);
	}
	return 0;
}

int qcow2_map(struct blk_dev *d, uint64_t off, uint64_t maxlen, bool merge_compressed,
	      struct qcow2_piece *p)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t pos = off, end, far, total = 0;
	uint32_t visited = 0;
	bool first = true;

	end = off + KL_MIN(KL_MAX(maxlen, (uint64_t)1), d->size - off);
	far = off + KL_MIN(KL_MAX(maxlen, QCOW2_MAP_FAR), d->size - off);
	memset(p, 0, sizeof(*p));
	while (visited < QCOW2_MAP_MAX_ENTRIES) {
		uint64_t ci = pos >> s->cluster_bits, cstart = ci << s->cluster_bits;
		uint64_t l1i = ci >> s->l2_bits, l2_off, len, host = 0;
		enum qcow2_piece_type t = QCOW2_P_UNALLOC;

		if (pos >= end && (first || pos >= far ||
				   (p->type != QCOW2_P_UNALLOC && p->type != QCOW2_P_ZERO)))
			break;
		if (l1i >= s->l1_size)
			return qcow2_corrupt(d, "%s: guest offset %llu lies beyond the L1 table",
					     d->filename, (unsigned long long)pos);
		l2_off = s->l1[l1i] & QCOW2_OFFSET_MASK;
		if (!l2_off) {
			t = QCOW2_P_UNALLOC;
			len = ((l1i + 1) << (s->l2_bits + s->cluster_bits)) - pos;
		} else {
			struct qcow2_cache_entry *e;
			uint32_t l2i = (uint32_t)(ci & (s->l2_entries - 1)), sc = 0, count;
			uint64_t ent, bm;

			KL_TRY(qcow2_l2_load(d, l2_off, &e));
			ent = qcow2_l2_entry(s, e->buf, l2i);
			bm = qcow2_l2_bitmap(s, e->buf, l2i);
			if (s->ext_l2)
				sc = (uint32_t)((pos - cstart) / s->sc_size);
			KL_TRY(classify(d, l2_off, l2i, ent, bm, sc, &t, &count));
			len = cstart + (uint64_t)(sc + count) * s->sc_size - pos;
			if (t == QCOW2_P_DATA)
				host = (ent & QCOW2_OFFSET_MASK) + (pos - cstart);
			else if (t == QCOW2_P_COMPRESSED)
				host = ent;
		}
		if (first) {
			p->type = t;
			p->host = host;
			first = false;
		} else if (t != p->type || (t == QCOW2_P_DATA && host != p->host + total) ||
			   (t == QCOW2_P_COMPRESSED && !merge_compressed)) {
			break;
		}
		total += len;
		pos += len;
		visited++;
		if (t == QCOW2_P_COMPRESSED && !merge_compressed)
			break;
		if (pos >= d->size)
			break;
	}
	p->len = KL_MIN(total, d->size - off);
	return 0;
}

int qcow2_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	struct qcow2_state *s = qcow2_s(d);
	struct qcow2_piece p;

	KL_TRY(qcow2_pend_flush(d));
	KL_TRY(qcow2_map(d, off, len, true, &p));
	e->len = p.len;
	switch (p.type) {
	case QCOW2_P_DATA:
		e->type = BLK_DATA;
		e->host_off = p.host;
		e->file = s->dfile ? s->data_file : NULL;
		break;
	case QCOW2_P_COMPRESSED:
		e->type = BLK_DATA;
		e->flags |= BLK_EXT_COMPRESSED;
		e->host_off = p.host & s->coffset_mask;
		break;
	case QCOW2_P_ZERO:
		e->type = BLK_ZERO;
		break;
	default:
		e->type = BLK_UNALLOC;
		break;
	}
	return 0;
}

/* ------------------------------------------------------------------ reads */

/* n bytes of data at host offset host of f, decrypted (IVs from host offsets) when encrypted. */
static int read_data(struct blk_dev *d, struct kl_file *f, uint64_t host, uint8_t *b, size_t n)
{
	struct qcow2_state *s = qcow2_s(d);
	ssize_t r;

	if (s->luks)
		return luks_read(s->luks, f, host, 0, b, n);
	r = kl_io_pread(f, host, b, n);
	return r < 0 ? (int)r : 0;
}

/*
 * n bytes of guest data to host offset host, encrypted when the image is
 * (whole sectors: write_align is the sector size then).
 */
static int write_data(struct blk_dev *d, uint64_t host, const uint8_t *b, size_t n)
{
	struct qcow2_state *s = qcow2_s(d);

	if (!s->luks)
		return qcow2_file_write(d, host, b, n);
	KL_TRY(luks_write(s->luks, d->file, host, 0, b, n));
	s->unsynced = true;
	s->file_size = KL_MAX(s->file_size, host + n);
	return 0;
}

int qcow2_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	struct qcow2_state *s = qcow2_s(d);
	uint8_t *b = buf;

	KL_TRY(qcow2_pend_flush(d));
	while (len > 0) {
		struct qcow2_piece p;
		size_t n;

		KL_TRY(qcow2_map(d, off, len, false, &p));
		n = (size_t)KL_MIN(p.len, (uint64_t)len);
		switch (p.type) {
		case QCOW2_P_DATA:
			if (s->dfile) {
				/* reads past the data file's end are zeros, as under qemu */
				if (p.host != off)
					return qcow2_corrupt(d, "%s: guest offset %llu maps to offset "
							     "%llu of the external data file; the "
							     "two must be equal", d->filename,
							     (unsigned long long)off,
							     (unsigned long long)p.host);
				KL_TRY(read_data(d, s->dfile, p.host, b, n));
				break;
			}
			if (p.host >= s->file_size)
				return qcow2_corrupt(d, "%s: data of guest offset %llu at host offset "
						     "%llu lies past the end of the file (%llu)",
						     d->filename, (unsigned long long)off,
						     (unsigned long long)p.host,
						     (unsigned long long)s->file_size);
			KL_TRY(read_data(d, d->file, p.host, b, n));
			break;
		case QCOW2_P_COMPRESSED:
			if ((off & (s->cluster_size - 1)) == 0 && len >= 2 * (size_t)s->cluster_size) {
				/* a run of whole compressed clusters: decompress them together */
				uint64_t descs[QCOW2_BATCH];
				unsigned k = 1, max = qcow2_batch_clusters(s);

				descs[0] = p.host;
				while (k < max && (k + 1) * (size_t)s->cluster_size <= len) {
					struct qcow2_piece q;

					KL_TRY(qcow2_map(d, off + (uint64_t)k * s->cluster_size,
							 s->cluster_size, false, &q));
					if (q.type != QCOW2_P_COMPRESSED || q.len < s->cluster_size)
						break;
					descs[k++] = q.host;
				}
				if (k > 1) {
					KL_TRY(qcow2_decompress_batch(d, descs, k, b));
					n = (size_t)k * s->cluster_size;
					break;
				}
			}
			KL_TRY(qcow2_decompress(d, p.host));
			memcpy(b, s->dbuf + (off & (s->cluster_size - 1)), n);
			break;
		case QCOW2_P_ZERO:
			memset(b, 0, n);
			break;
		default:
			KL_TRY(blk_read_below(d, off, b, n));
			break;
		}
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* ------------------------------------------------------------------ writes */

static void l1_mark(struct qcow2_state *s, uint32_t i)
{
	s->l1_dirty_lo = KL_MIN(s->l1_dirty_lo, i);
	s->l1_dirty_hi = KL_MAX(s->l1_dirty_hi, i);
}

/* Copied flag for a cluster now referenced from an active table: set iff refcount is 1. */
static int copied_flag(struct blk_dev *d, uint64_t ent, uint64_t *out)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t host = ent & QCOW2_OFFSET_MASK, rc;

	*out = ent & ~QCOW2_OFLAG_COPIED;
	if ((ent & QCOW2_OFLAG_COMPRESSED) || !host)
		return 0;
	KL_TRY(qcow2_get_refcount(d, host >> s->cluster_bits, &rc));
	if (rc == 1)
		*out |= QCOW2_OFLAG_COPIED;
	return 0;
}

/*
 * The L2 table of L1 index l1i, ready to be modified: allocated when
 * missing, copied when shared with a snapshot (refcount above 1).
 */
static int l2_for_write(struct blk_dev *d, uint32_t l1i, struct qcow2_cache_entry **out)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t l1e = s->l1[l1i], old = l1e & QCOW2_OFFSET_MASK, rc1, new_off;
	struct qcow2_cache_entry *e;
	uint8_t *copy = NULL;
	int rc;

	if (old && qcow2_overlaps_metadata(d, old, s->cluster_size))
		return qcow2_corrupt(d, "%s: L2 table at %llu (L1 entry %u) overlaps other metadata; "
				     "refusing to write through it", d->filename,
				     (unsigned long long)old, l1i);
	if (old) {
		if (l1e & QCOW2_OFLAG_COPIED)
			return qcow2_l2_load(d, old, out);
		KL_TRY(qcow2_get_refcount(d, old >> s->cluster_bits, &rc1));
		if (rc1 == 0)
			return qcow2_corrupt(d, "%s: L2 table at %llu is in use but has refcount 0",
					     d->filename, (unsigned long long)old);
		if (rc1 == 1) {
			s->l1[l1i] |= QCOW2_OFLAG_COPIED;
			l1_mark(s, l1i);
			return qcow2_l2_load(d, old, out);
		}
		/* shared with a snapshot: this image gets its own copy */
		KL_TRY(qcow2_l2_load(d, old, &e));
		copy = kl_malloc(s->cluster_size);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, e->buf, s->cluster_size);
		for (uint32_t i = 0; i < s->l2_entries; i++) {
			uint64_t ent;

			rc = copied_flag(d, qcow2_l2_entry(s, copy, i), &ent);
			if (rc < 0)
				goto out;
			qcow2_set_l2(s, copy, i, ent, qcow2_l2_bitmap(s, copy, i));
		}
	}
	rc = qcow2_alloc_clusters(d, 1, &new_off, NULL);
	if (rc < 0)
		goto out;
	rc = qcow2_cache_get(d, &s->l2c, new_off, false, &e);
	if (rc < 0)
		goto out;
	if (copy)
		memcpy(e->buf, copy, s->cluster_size);
	qcow2_cache_dirty(e);
	s->l1[l1i] = new_off | QCOW2_OFLAG_COPIED;
	l1_mark(s, l1i);
	if (old)
		rc = qcow2_defer_free(d, old, s->cluster_size);
	*out = e;
out:
	kl_free(copy);
	return rc;
}

/* True when the cluster of this entry is ours alone and fully allocated. */
static int in_place(struct blk_dev *d, uint64_t ent, uint64_t bm, bool *ok)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t host = ent & QCOW2_OFFSET_MASK, rc;

	*ok = false;
	if ((ent & QCOW2_OFLAG_COMPRESSED) || !(ent & QCOW2_OFLAG_COPIED) || !host ||
	    host % s->cluster_size)
		return 0;
	if (!s->ext_l2 && (ent & QCOW2_OFLAG_ZERO))
		return 0;
	if (s->ext_l2 && (bm & QCOW2_L2_BITMAP_ALL_ALLOC) != QCOW2_L2_BITMAP_ALL_ALLOC)
		return 0;
	if (s->nb_snapshots) {
		/* with snapshots around, do not trust the flag alone */
		KL_TRY(qcow2_get_refcount(d, host >> s->cluster_bits, &rc));
		if (rc != 1)
			return 0;
	}
	*ok = true;
	return 0;
}

/* Point L2 entry l2i of l1i's table at a new value, dropping what the old one held. */
static int set_entry(struct blk_dev *d, uint32_t l1i, uint32_t l2i, uint64_t ent, uint64_t bm)
{
	struct qcow2_state *s = qcow2_s(d);
	struct qcow2_cache_entry *e;
	uint64_t old;

	KL_TRY(l2_for_write(d, l1i, &e));
	old = qcow2_l2_entry(s, e->buf, l2i);
	qcow2_set_l2(s, e->buf, l2i, ent, bm);
	qcow2_cache_dirty(e);
	if ((old & QCOW2_OFFSET_MASK) == (ent & QCOW2_OFFSET_MASK) &&
	    !(old & QCOW2_OFLAG_COMPRESSED) && !(ent & QCOW2_OFLAG_COMPRESSED))
		return 0;
	return qcow2_free_entry(d, old);
}

/* Store zlen compressed bytes as guest cluster ci (qemu's descriptor rules). */
static int store_compressed(struct blk_dev *d, uint64_t ci, const uint8_t *z, size_t zlen)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t coff, nsec, desc;

	/* they land back to back: write them in MiB pieces (a no-op once on) */
	KL_TRY(kl_io_combine(d->file, QCOW2_COMBINE_BYTES));
	KL_TRY(qcow2_alloc_bytes(d, zlen, &coff));
	if (coff + zlen > s->coffset_mask)
		return kl_err(-ENOSPC, "%s: compressed data offset %llu past the descriptor's limit",
			      d->filename, (unsigned long long)coff);
	KL_TRY(qcow2_file_write(d, coff, z, zlen));
	nsec = ((coff + zlen - 1) / QCOW2_CSECTOR) - (coff / QCOW2_CSECTOR);
	desc = QCOW2_OFLAG_COMPRESSED | (nsec << s->csize_shift) | coff;
	return set_entry(d, (uint32_t)(ci >> s->l2_bits), (uint32_t)(ci & (s->l2_entries - 1)), desc,
			 0);
}

/* Whole cluster contents into a newly allocated, uncompressed cluster. */
static int write_plain_cluster(struct blk_dev *d, uint64_t ci, const uint8_t *data)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t host;

	KL_TRY(qcow2_alloc_clusters(d, 1, &host, NULL));
	KL_TRY(write_data(d, host, data, s->cluster_size));
	return set_entry(d, (uint32_t)(ci >> s->l2_bits), (uint32_t)(ci & (s->l2_entries - 1)),
			 host | QCOW2_OFLAG_COPIED, QCOW2_L2_BITMAP_ALL_ALLOC);
}

/*
 * n whole clusters from data into new clusters from ci on, compressed
 * (in parallel) where that saves space when compress=on.
 */
static int write_new_clusters(struct blk_dev *d, uint64_t ci, const uint8_t *data, unsigned n)
{
	struct qcow2_state *s = qcow2_s(d);

	if (!s->compress || s->encoder_active) {
		for (unsigned j = 0; j < n; j++)
			KL_TRY(write_plain_cluster(d, ci + j, data + (size_t)j * s->cluster_size));
		return 0;
	}
	KL_TRY(qcow2_compress_batch(d, data, n));
	for (unsigned j = 0; j < n; j++) {
		if (qcow2_compressed_ok(s, j))
			KL_TRY(store_compressed(d, ci + j, s->zout + (size_t)j * s->cluster_size,
						s->zlen[j]));
		else
			KL_TRY(write_plain_cluster(d, ci + j, data + (size_t)j * s->cluster_size));
	}
	return 0;
}

/* Write whole cluster contents (cs bytes) into a newly allocated cluster. */
static int write_new_cluster(struct blk_dev *d, uint64_t ci, const uint8_t *data)
{
	return write_new_clusters(d, ci, data, 1);
}

int qcow2_pend_flush(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);

	if (!s->pend)
		return 0;
	s->pend = false;
	return write_new_cluster(d, s->pend_ci, s->pbuf);
}

/*
 * compress=on and a write covering part of a cluster that is not ours yet:
 * collect the cluster in pbuf (starting from what it reads as now) and
 * store it, compressed, once it is full or something else happens. This
 * is what lets `convert -c`, which writes 64 KiB at a time and skips zero
 * blocks, produce compressed clusters larger than that.
 */
static int stage_write(struct blk_dev *d, uint64_t ci, uint64_t coff, const uint8_t *src, size_t n)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t cstart = ci << s->cluster_bits;
	uint64_t clen = KL_MIN((uint64_t)s->cluster_size, d->size - cstart);

	if (s->pend && s->pend_ci != ci)
		KL_TRY(qcow2_pend_flush(d));
	if (!s->pend) {
		if (!s->pbuf && !(s->pbuf = kl_aligned_alloc(s->cluster_size)))
			return -ENOMEM;
		KL_TRY(blk_pread(d, cstart, s->pbuf, (size_t)clen));
		memset(s->pbuf + clen, 0, s->cluster_size - clen);
		s->pend_ci = ci;
		s->pend = true;
	}
	memcpy(s->pbuf + coff, src, n);
	if (coff + n == clen)
		return qcow2_pend_flush(d); /* filled up to its end: store it now */
	return 0;
}

/* A write covering part of cluster ci: read the cluster whole, patch it, write it. */
static int cow_cluster(struct blk_dev *d, uint64_t ci, uint64_t coff, const uint8_t *src, size_t n)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t cstart = ci << s->cluster_bits, clen, ent, host;
	uint32_t l1i = (uint32_t)(ci >> s->l2_bits), l2i = (uint32_t)(ci & (s->l2_entries - 1));
	struct qcow2_cache_entry *e;

	clen = KL_MIN((uint64_t)s->cluster_size, d->size - cstart);
	if (!s->wbuf && !(s->wbuf = kl_aligned_alloc(s->cluster_size)))
		return -ENOMEM;
	KL_TRY(blk_pread(d, cstart, s->wbuf, (size_t)clen));
	memset(s->wbuf + clen, 0, s->cluster_size - clen);
	memcpy(s->wbuf + coff, src, n);
	KL_TRY(l2_for_write(d, l1i, &e));
	ent = qcow2_l2_entry(s, e->buf, l2i);
	host = ent & QCOW2_OFFSET_MASK;
	if (s->ext_l2 && host && (ent & QCOW2_OFLAG_COPIED) && !(ent & QCOW2_OFLAG_COMPRESSED)) {
		uint64_t rc = 1;

		if (s->nb_snapshots)
			KL_TRY(qcow2_get_refcount(d, host >> s->cluster_bits, &rc));
		if (rc == 1) {
			/* partly allocated cluster of ours: complete it in place */
			if (qcow2_overlaps_metadata(d, host, s->cluster_size) || host >= s->file_size)
				return qcow2_corrupt(d, "%s: data cluster at %llu overlaps metadata "
						     "or lies past the end of the file", d->filename,
						     (unsigned long long)host);
			KL_TRY(write_data(d, host, s->wbuf, s->cluster_size));
			KL_TRY(l2_for_write(d, l1i, &e));
			qcow2_set_l2(s, e->buf, l2i, ent, QCOW2_L2_BITMAP_ALL_ALLOC);
			qcow2_cache_dirty(e);
			return 0;
		}
	}
	if (!(s->compress && coff == 0 && n == clen)) {
		bool c = s->compress;
		int rc;

		/* only whole-cluster writes are stored compressed */
		s->compress = false;
		rc = write_new_cluster(d, ci, s->wbuf);
		s->compress = c;
		return rc;
	}
	return write_new_cluster(d, ci, s->wbuf);
}

int qcow2_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len)
{
	struct qcow2_state *s = qcow2_s(d);
	const uint8_t *b = buf;

	KL_TRY(qcow2_prepare_write(d));
	while (len > 0) {
		uint64_t ci = off >> s->cluster_bits, cstart = ci << s->cluster_bits;
		uint64_t coff = off - cstart, clen, ent, bm, host;
		uint32_t l1i = (uint32_t)(ci >> s->l2_bits), l2i = (uint32_t)(ci & (s->l2_entries - 1));
		struct qcow2_cache_entry *e;
		size_t n, run;
		bool ok;

		if (s->pend && s->pend_ci != ci)
			KL_TRY(qcow2_pend_flush(d));
		if (s->nfrees > QCOW2_MAX_PENDING_FREES)
			KL_TRY(qcow2_flush(d));
		clen = KL_MIN((uint64_t)s->cluster_size, d->size - cstart);
		n = (size_t)KL_MIN((uint64_t)len, clen - coff);
		if (s->pend) {
			/* more of the cluster being collected */
			KL_TRY(stage_write(d, ci, coff, b, n));
			b += n;
			off += n;
			len -= n;
			continue;
		}
		KL_TRY(l2_for_write(d, l1i, &e));
		ent = qcow2_l2_entry(s, e->buf, l2i);
		bm = qcow2_l2_bitmap(s, e->buf, l2i);
		KL_TRY(in_place(d, ent, bm, &ok));
		if (ok) {
			/* overwrite: extend over following clusters that are ours and contiguous */
			host = ent & QCOW2_OFFSET_MASK;
			run = n;
			for (uint32_t k = 1; run < len && l2i + k < s->l2_entries; k++) {
				uint64_t e2 = qcow2_l2_entry(s, e->buf, l2i + k);
				uint64_t c2 = cstart + ((uint64_t)k << s->cluster_bits);

				KL_TRY(in_place(d, e2, qcow2_l2_bitmap(s, e->buf, l2i + k), &ok));
				if (!ok || (e2 & QCOW2_OFFSET_MASK) != host + ((uint64_t)k << s->cluster_bits))
					break;
				run += (size_t)KL_MIN((uint64_t)(len - run),
						      KL_MIN((uint64_t)s->cluster_size, d->size - c2));
			}
			if (qcow2_overlaps_metadata(d, host + coff, run))
				return qcow2_corrupt(d, "%s: data for guest offset %llu at host %llu "
						     "overlaps metadata", d->filename,
						     (unsigned long long)off,
						     (unsigned long long)(host + coff));
			if (host >= s->file_size)
				return qcow2_corrupt(d, "%s: data cluster of guest offset %llu at host "
						     "%llu lies past the end of the file (%llu)",
						     d->filename, (unsigned long long)off,
						     (unsigned long long)host,
						     (unsigned long long)s->file_size);
			KL_TRY(write_data(d, host + coff, b, run));
			n = run;
		} else if (coff == 0 && n == s->cluster_size && !s->compress) {
			/* whole clusters into one new contiguous run, one write */
			uint64_t k = 1;

			while (l2i + k < s->l2_entries && (k + 1) * s->cluster_size <= len) {
				uint64_t e2 = qcow2_l2_entry(s, e->buf, (uint32_t)(l2i + k));

				KL_TRY(in_place(d, e2, qcow2_l2_bitmap(s, e->buf, (uint32_t)(l2i + k)),
						&ok));
				if (ok)
					break;
				k++;
			}
			KL_TRY(qcow2_alloc_clusters(d, k, &host, &k));
			KL_TRY(write_data(d, host, b, (size_t)(k * s->cluster_size)));
			for (uint64_t i = 0; i < k; i++)
				KL_TRY(set_entry(d, l1i, (uint32_t)(l2i + i),
						 (host + i * s->cluster_size) | QCOW2_OFLAG_COPIED,
						 QCOW2_L2_BITMAP_ALL_ALLOC));
			n = (size_t)(k * s->cluster_size);
		} else if (coff == 0 && n == s->cluster_size) {
			/* compress=on: a run of whole clusters, compressed together */
			unsigned k = 1, max = qcow2_batch_clusters(s);

			while (k < max && l2i + k < s->l2_entries &&
			       (uint64_t)(k + 1) * s->cluster_size <= len) {
				uint64_t e2 = qcow2_l2_entry(s, e->buf, l2i + k);

				KL_TRY(in_place(d, e2, qcow2_l2_bitmap(s, e->buf, l2i + k), &ok));
				if (ok)
					break;
				k++;
			}
			KL_TRY(write_new_clusters(d, ci, b, k));
			n = (size_t)k * s->cluster_size;
		} else if (s->compress && !s->encoder_active &&
			   !(s->ext_l2 && (ent & QCOW2_OFFSET_MASK))) {
			KL_TRY(stage_write(d, ci, coff, b, n));
		} else {
			KL_TRY(cow_cluster(d, ci, coff, b, n));
		}
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* Make a whole cluster read as zeros; *done false when only writing zeros can (v2 + backing). */
static int zero_cluster(struct blk_dev *d, uint64_t ci, unsigned flags, bool *done)
{
	struct qcow2_state *s = qcow2_s(d);
	uint32_t l1i = (uint32_t)(ci >> s->l2_bits), l2i = (uint32_t)(ci & (s->l2_entries - 1));
	bool unmap = !s->backing_file && (flags & BLK_ZERO_MAY_UNMAP);
	struct qcow2_cache_entry *e;
	uint64_t ent = 0, bm = 0;

	*done = true;
	if (s->version < 3 && s->backing_file) {
		*done = false;
		return 0;
	}
	if (s->ext_l2)
		bm = unmap || s->version < 3 ? 0 : QCOW2_L2_BITMAP_ALL_ZERO;
	else if (!unmap && s->version >= 3)
		ent = QCOW2_OFLAG_ZERO;
	KL_TRY(l2_for_write(d, l1i, &e));
	if (qcow2_l2_entry(s, e->buf, l2i) == ent && qcow2_l2_bitmap(s, e->buf, l2i) == bm)
		return 0;
	return set_entry(d, l1i, l2i, ent, bm);
}

int qcow2_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags)
{
	struct qcow2_state *s = qcow2_s(d);

	KL_TRY(qcow2_prepare_write(d));
	KL_TRY(qcow2_pend_flush(d));
	while (len > 0) {
		uint64_t ci = off >> s->cluster_bits, cstart = ci << s->cluster_bits;
		uint64_t coff = off - cstart, clen, n;
		uint32_t l1i = (uint32_t)(ci >> s->l2_bits);
		struct qcow2_piece p;
		bool done = false;

		if (s->nfrees > QCOW2_MAX_PENDING_FREES)
			KL_TRY(qcow2_flush(d));
		clen = KL_MIN((uint64_t)s->cluster_size, d->size - cstart);
		n = KL_MIN(len, clen - coff);
		if (!(s->l1[l1i] & QCOW2_OFFSET_MASK) && !s->backing_file) {
			/* no L2 table and nothing below: the whole range already reads as zeros */
			uint64_t end = ((uint64_t)l1i + 1) << (s->l2_bits + s->cluster_bits);

			n = KL_MIN(len, end - off);
			done = true;
		} else if (coff == 0 && n == clen) {
			KL_TRY(zero_cluster(d, ci, flags, &done));
		} else {
			KL_TRY(qcow2_map(d, off, n, false, &p));
			done = p.len >= n && (p.type == QCOW2_P_ZERO ||
					      (p.type == QCOW2_P_UNALLOC && !s->backing_file));
		}
		if (!done) {
			uint8_t *z = kl_calloc(1, (size_t)n);
			int rc;

			if (!z)
				return -ENOMEM;
			rc = qcow2_pwrite(d, off, z, (size_t)n);
			kl_free(z);
			KL_TRY(rc);
		}
		off += n;
		len -= n;
	}
	return 0;
}

/*
 * measure -c: what qcow2_alloc_bytes would do, in whole host clusters.
 * Compressed clusters pack into the open host cluster, spill into the
 * next one only when that is the next cluster allocated, and otherwise
 * start a new one, leaving the rest of the open one unused; plain clusters
 * take a cluster each, after the open one. (Metadata clusters allocated in
 * between are the prediction's part, not simulated here.)
 */
uint64_t qcow2_encoded_footprint(struct blk_dev *d, size_t enc_len, size_t raw_len)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t cs = s->cluster_size;

	if (enc_len == 0) {
		s->sim_contig = false;
		return KL_DIV_ROUND_UP(raw_len, cs) * cs;
	}
	if (s->sim_used && cs - s->sim_used >= enc_len) {
		s->sim_used = (s->sim_used + enc_len) % cs;
		return 0;
	}
	if (s->sim_used && s->sim_contig) {
		s->sim_used = (s->sim_used + enc_len) % cs; /* spill: the tail in a new cluster */
		return cs;
	}
	s->sim_used = enc_len % cs;
	s->sim_contig = true;
	return cs;
}

int qcow2_write_encoded(struct blk_dev *d, uint64_t off, const void *enc, size_t enc_len,
			const void *raw, size_t raw_len)
{
	struct qcow2_state *s = qcow2_s(d);

	(void)raw;
	(void)raw_len;
	KL_TRY(qcow2_prepare_write(d));
	KL_TRY(qcow2_pend_flush(d));
	/* the caller compresses from now on; clusters it sends plain stay plain */
	s->encoder_active = true;
	if (s->nfrees > QCOW2_MAX_PENDING_FREES)
		KL_TRY(qcow2_flush(d));
	if (enc_len == 0 || enc_len >= s->cluster_size || off % s->cluster_size)
		return kl_err(-EINVAL, "%s: encoded cluster of %zu bytes at %llu", d->filename,
			      enc_len, (unsigned long long)off);
	return store_compressed(d, off >> s->cluster_bits, enc, enc_len);
}

int qcow2_discard(struct blk_dev *d, uint64_t off, uint64_t len)
{
	return qcow2_pwrite_zeroes(d, off, len, BLK_ZERO_MAY_UNMAP);
}
