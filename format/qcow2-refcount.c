/*
 * format/qcow2-refcount.c - reference counts, cluster allocation and the
 * consistency check (qcow2.rst "Host cluster management").
 *
 * Every host cluster in use has a refcount: the header, the refcount table
 * and blocks, L1 and L2 tables, data clusters (once per L1 table that
 * reaches them, so snapshots share), compressed clusters (once per
 * compressed cluster that touches them), the snapshot table and bitmaps.
 *
 * Allocation scans for refcount-0 clusters from a hint that only moves
 * back when something is freed; a range without a refcount block is free
 * as a whole, and its new block is placed at the range's first cluster so
 * it counts itself. Dropped references are queued and applied only after
 * the L2 tables that stopped using the clusters are on disk (qcow2_flush),
 * so a crash can leak clusters but never leave one in use with refcount 0.
 */
#include "format/qcow2.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ entries */

static uint64_t rb_get(const struct qcow2_state *s, const uint8_t *blk, uint64_t i)
{
	uint64_t bit;

	switch (s->refcount_order) {
	case 0:
	case 1:
	case 2:
		/* sub-byte widths are packed from the least significant bit up */
		bit = i << s->refcount_order;
		return (blk[bit / 8] >> (bit % 8)) & ((1u << s->refcount_bits) - 1);
	case 3:
		return blk[i];
	case 4:
		return get_be16(blk + i * 2);
	case 5:
		return get_be32(blk + i * 4);
	default:
		return get_be64(blk + i * 8);
	}
}

static void rb_set(const struct qcow2_state *s, uint8_t *blk, uint64_t i, uint64_t v)
{
	uint64_t bit;
	uint8_t mask;

	switch (s->refcount_order) {
	case 0:
	case 1:
	case 2:
		bit = i << s->refcount_order;
		mask = (uint8_t)(((1u << s->refcount_bits) - 1) << (bit % 8));
		blk[bit / 8] = (uint8_t)((blk[bit / 8] & ~mask) | ((v << (bit % 8)) & mask));
		break;
	case 3:
		blk[i] = (uint8_t)v;
		break;
	case 4:
		put_be16(blk + i * 2, (uint16_t)v);
		break;
	case 5:
		put_be32(blk + i * 4, (uint32_t)v);
		break;
	default:
		put_be64(blk + i * 8, v);
		break;
	}
}

/* Offset of the refcount block for table index ti, 0 when there is none. */
static int rb_offset(struct blk_dev *d, uint64_t ti, uint64_t *out)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t off;

	*out = 0;
	if (ti >= s->rt_entries)
		return 0;
	off = s->rt[ti] & QCOW2_RT_OFFSET_MASK;
	if (!off)
		return 0;
	if (off % s->cluster_size || off < s->cluster_size)
		return qcow2_corrupt(d, "%s: refcount table entry %llu: block offset %llu is not "
				     "cluster aligned or lies in the header", d->filename,
				     (unsigned long long)ti, (unsigned long long)off);
	*out = off;
	return 0;
}

int qcow2_get_refcount(struct blk_dev *d, uint64_t cluster, uint64_t *out)
{
	struct qcow2_state *s = qcow2_s(d);
	struct qcow2_cache_entry *e;
	uint64_t off;

	*out = 0;
	KL_TRY(rb_offset(d, cluster / s->rb_entries, &off));
	if (!off)
		return 0;
	KL_TRY(qcow2_cache_get(d, &s->rbc, off, true, &e));
	*out = rb_get(s, e->buf, cluster % s->rb_entries);
	return 0;
}

/* ------------------------------------------------------------------ overlap checks */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

int qcow2_index_refblocks(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);
	size_t n = 0;

	kl_free(s->rb_offsets);
	s->rb_offsets = kl_calloc((size_t)(s->rt_entries ? s->rt_entries : 1), sizeof(uint64_t));
	if (!s->rb_offsets)
		return -ENOMEM;
	for (uint64_t i = 0; i < s->rt_entries; i++)
		if (s->rt[i] & QCOW2_RT_OFFSET_MASK)
			s->rb_offsets[n++] = s->rt[i] & QCOW2_RT_OFFSET_MASK;
	qsort(s->rb_offsets, n, sizeof(uint64_t), cmp_u64);
	s->n_rb_offsets = n;
	return 0;
}

static int add_rb_offset(struct blk_dev *d, uint64_t off)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t *nv = kl_realloc(s->rb_offsets, (s->n_rb_offsets + 1) * sizeof(uint64_t));
	size_t i;

	if (!nv)
		return -ENOMEM;
	s->rb_offsets = nv;
	for (i = s->n_rb_offsets; i > 0 && nv[i - 1] > off; i--)
		nv[i] = nv[i - 1];
	nv[i] = off;
	s->n_rb_offsets++;
	return 0;
}

static bool overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return alen && blen && a < b + blen && b < a + alen;
}

bool qcow2_overlaps_metadata(struct blk_dev *d, uint64_t off, uint64_t len)
{
	struct qcow2_state *s = qcow2_s(d);
	size_t lo = 0, hi = s->n_rb_offsets;

	if (overlap(off, len, 0, s->cluster_size) ||
	    overlap(off, len, s->active_l1_offset, (uint64_t)s->active_l1_size * 8) ||
	    overlap(off, len, s->rt_offset, (uint64_t)s->rt_clusters * s->cluster_size) ||
	    overlap(off, len, s->snapshots_offset, s->snapshots_size))
		return true;
	for (uint32_t i = 0; s->snaps && i < s->nb_snapshots; i++)
		if (overlap(off, len, s->snaps[i].l1_offset, (uint64_t)s->snaps[i].l1_size * 8))
			return true;
	/* first refcount block that ends after off */
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (s->rb_offsets[mid] + s->cluster_size <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->n_rb_offsets && s->rb_offsets[lo] < off + len;
}

/* ------------------------------------------------------------------ updates */

/* Set the refcount of a cluster whose refcount block exists. */
static int set_refcount(struct blk_dev *d, uint64_t cluster, uint64_t v)
{
	struct qcow2_state *s = qcow2_s(d);
	struct qcow2_cache_entry *e;
	uint64_t off;

	KL_TRY(rb_offset(d, cluster / s->rb_entries, &off));
	if (!off)
		return qcow2_corrupt(d, "%s: no refcount block for cluster %llu", d->filename,
				     (unsigned long long)cluster);
	KL_TRY(qcow2_cache_get(d, &s->rbc, off, true, &e));
	rb_set(s, e->buf, cluster % s->rb_entries, v);
	qcow2_cache_dirty(e);
	return 0;
}

static bool check_ref_free(const struct qcow2_state *s, uint64_t c)
{
	return !s->check_refs || c >= s->check_nclusters || s->check_refs[c] == 0;
}

/* A new refcount block for table index ti, placed in the range it covers. */
static int create_refblock(struct blk_dev *d, uint64_t ti)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t c = ti * s->rb_entries, off;
	uint8_t *buf, be[8];
	int rc;

	while (!check_ref_free(s, c) && c < (ti + 1) * s->rb_entries - 1)
		c++;
	off = c << s->cluster_bits;
	if (c == 0 || qcow2_overlaps_metadata(d, off, s->cluster_size) || !check_ref_free(s, c))
		return qcow2_corrupt(d, "%s: refcount table entry %llu is empty but its range holds "
				     "metadata", d->filename, (unsigned long long)ti);
	buf = kl_calloc(1, s->cluster_size);
	if (!buf)
		return -ENOMEM;
	rb_set(s, buf, c % s->rb_entries, 1);
	rc = qcow2_file_write(d, off, buf, s->cluster_size);
	kl_free(buf);
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc < 0)
		return rc;
	put_be64(be, off);
	KL_TRY(qcow2_file_write(d, s->rt_offset + ti * 8, be, 8));
	s->rt[ti] = off;
	if (s->check_refs && c < s->check_nclusters)
		s->check_refs[c]++;
	s->alloc_end = KL_MAX(s->alloc_end, c + 1);
	return add_rb_offset(d, off);
}

/*
 * Grow the refcount table so it has an entry for index min_ti. The new
 * table goes past everything the old one covers, after the refcount
 * blocks that describe the new clusters themselves; it is written and
 * synced before the header points at it, and the old table is freed last.
 */
static int grow_table(struct blk_dev *d, uint64_t min_ti)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t cs = s->cluster_size, rbe = s->rb_entries;
	uint64_t E = s->rt_entries * rbe, T = 0, B = 0, entries, first = s->rt_entries, last;
	uint64_t *nrt = NULL, old_off = s->rt_offset, old_len = (uint64_t)s->rt_clusters * cs;
	uint8_t *tbuf = NULL, *bbuf = NULL, hdr[12];
	int rc = 0;

	for (;;) {
		uint64_t nT, nB;

		last = (E + B + T - 1 + (B + T == 0)) / rbe;
		entries = KL_MAX(KL_MAX(min_ti + 1, last + 1), s->rt_entries + s->rt_entries / 2);
		nT = KL_DIV_ROUND_UP(entries * 8, cs);
		nB = (E + B + nT - 1) / rbe - first + 1;
		if (nT == T && nB == B)
			break;
		T = nT;
		B = nB;
	}
	if (T * cs > QCOW2_MAX_RT_BYTES || ((E + B + T) << s->cluster_bits) >= QCOW2_MAX_HOST_OFFSET)
		return kl_err(-ENOSPC, "%s: the image outgrew the largest refcount table qcow2 "
			      "allows (%u MiB); use larger clusters", d->filename,
			      QCOW2_MAX_RT_BYTES >> 20);
	entries = T * cs / 8;
	nrt = kl_calloc((size_t)entries, sizeof(uint64_t));
	tbuf = kl_calloc((size_t)T, (size_t)cs);
	bbuf = kl_calloc(1, (size_t)cs);
	if (!nrt || !tbuf || !bbuf) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(nrt, s->rt, (size_t)s->rt_entries * 8);
	for (uint64_t j = 0; j < B; j++) {
		uint64_t range = first + j, boff = (E + j) * cs;

		memset(bbuf, 0, (size_t)cs);
		for (uint64_t c = KL_MAX(E, range * rbe); c < E + B + T && c < (range + 1) * rbe; c++)
			rb_set(s, bbuf, c % rbe, 1);
		rc = qcow2_file_write(d, boff, bbuf, (size_t)cs);
		if (rc < 0)
			goto out;
		nrt[range] = boff;
	}
	for (uint64_t i = 0; i < entries; i++)
		put_be64(tbuf + i * 8, nrt[i]);
	rc = qcow2_file_write(d, (E + B) * cs, tbuf, (size_t)(T * cs));
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc < 0)
		goto out;
	put_be64(hdr, (E + B) * cs);
	put_be32(hdr + 8, (uint32_t)T);
	rc = qcow2_file_write(d, QCOW2_HDR_RT_OFFSET, hdr, sizeof(hdr));
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc < 0)
		goto out;
	kl_free(s->rt);
	s->rt = nrt;
	nrt = NULL;
	s->rt_entries = entries;
	s->rt_offset = (E + B) * cs;
	s->rt_clusters = (uint32_t)T;
	s->alloc_end = KL_MAX(s->alloc_end, E + B + T);
	for (uint64_t j = 0; j < B && rc == 0; j++)
		rc = add_rb_offset(d, (E + j) * cs);
	if (rc == 0)
		rc = qcow2_defer_free(d, old_off, old_len);
out:
	kl_free(nrt);
	kl_free(tbuf);
	kl_free(bbuf);
	return rc;
}

int qcow2_update_refcount(struct blk_dev *d, uint64_t off, uint64_t len, int64_t delta)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t first, last;

	if (len == 0)
		return 0;
	first = off >> s->cluster_bits;
	last = (off + len - 1) >> s->cluster_bits;
	for (uint64_t c = first; c <= last; c++) {
		uint64_t ti = c / s->rb_entries, boff = 0, v;

		if (delta > 0 && ti >= s->rt_entries)
			KL_TRY(grow_table(d, ti));
		KL_TRY(rb_offset(d, ti, &boff));
		if (!boff && delta > 0)
			KL_TRY(create_refblock(d, ti));
		v = 0;
		if (boff || delta > 0)
			KL_TRY(qcow2_get_refcount(d, c, &v));
		if (delta < 0 && v < (uint64_t)-delta)
			return qcow2_corrupt(d, "%s: refcount of cluster %llu (offset %llu) would drop "
					     "below zero", d->filename, (unsigned long long)c,
					     (unsigned long long)(c << s->cluster_bits));
		if (delta > 0 && s->refcount_max - v < (uint64_t)delta) {
			/*
			 * Not damage: a snapshot shared a cluster more often than
			 * refcount_bits can count. What this update changed so far
			 * must never reach the file, so the handle stops writing.
			 */
			s->broken = true;
			return kl_err(-EOVERFLOW, "%s: cluster %llu (offset %llu) would be shared by "
				      "more than %llu references, the most refcount_bits=%u counts; "
				      "the image keeps its last saved state", d->filename,
				      (unsigned long long)c, (unsigned long long)(c << s->cluster_bits),
				      (unsigned long long)s->refcount_max, s->refcount_bits);
		}
		v += (uint64_t)delta;
		KL_TRY(set_refcount(d, c, v));
		if (v == 0) {
			uint64_t coff = c << s->cluster_bits;

			qcow2_cache_drop(&s->l2c, coff);
			qcow2_cache_drop(&s->rbc, coff);
			if (c < s->free_hint)
				s->free_hint = c;
			if (s->free_byte_offset >> s->cluster_bits == c)
				s->free_byte_offset = 0;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------ allocation */

/* First free cluster at or after the hint (refcount 0, or in a range without a block). */
static int find_free(struct blk_dev *d, uint64_t *out)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t idx = s->free_hint;
	uint64_t max_idx = QCOW2_MAX_HOST_OFFSET >> s->cluster_bits;
	/*
	 * Past the end of the file (and of what this session allocated) only
	 * a few leaked clusters can have references; hostile refcount blocks
	 * claiming billions must not keep us scanning.
	 */
	uint64_t end = KL_MAX(KL_DIV_ROUND_UP(s->file_size, s->cluster_size), s->alloc_end);
	uint64_t limit = end + 65536;

	for (;;) {
		uint64_t boff, v = 0;

		if (idx >= max_idx)
			return kl_err(-ENOSPC, "%s: no room left below the 64 PiB qcow2 offset limit",
				      d->filename);
		if (idx >= limit)
			return qcow2_corrupt(d, "%s: refcounts claim clusters far past the end of the "
					     "file (cluster %llu); run 'keel check'", d->filename,
					     (unsigned long long)idx);
		KL_TRY(rb_offset(d, idx / s->rb_entries, &boff));
		if (boff)
			KL_TRY(qcow2_get_refcount(d, idx, &v));
		if (v == 0 && check_ref_free(s, idx)) {
			*out = idx;
			return 0;
		}
		idx++;
	}
}

int qcow2_alloc_clusters(struct blk_dev *d, uint64_t n, uint64_t *off, uint64_t *got)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t st = 0, k, ti, boff;

	for (;;) {
		KL_TRY(find_free(d, &st));
		ti = st / s->rb_entries;
		if (ti >= s->rt_entries) {
			KL_TRY(grow_table(d, ti));
			continue;
		}
		KL_TRY(rb_offset(d, ti, &boff));
		if (!boff) {
			/* the new block takes the range's first cluster; search again */
			KL_TRY(create_refblock(d, ti));
			continue;
		}
		/* extend the run while clusters are free and already have a refcount block */
		for (k = 1; k < n; k++) {
			uint64_t c = st + k, v;

			if (c / s->rb_entries != ti) {
				ti = c / s->rb_entries;
				if (ti >= s->rt_entries)
					break;
				KL_TRY(rb_offset(d, ti, &boff));
				if (!boff)
					break;
			}
			KL_TRY(qcow2_get_refcount(d, c, &v));
			if (v || !check_ref_free(s, c))
				break;
		}
		if (k < n && !got) {
			/* the caller needs n contiguous clusters: look further on */
			s->free_hint = st + k;
			continue;
		}
		break;
	}
	if (qcow2_overlaps_metadata(d, st << s->cluster_bits, k << s->cluster_bits))
		return qcow2_corrupt(d, "%s: clusters %llu..%llu have refcount 0 but hold metadata",
				     d->filename, (unsigned long long)st,
				     (unsigned long long)(st + k - 1));
	for (uint64_t c = st; c < st + k; c++)
		KL_TRY(set_refcount(d, c, 1));
	if (s->check_refs)
		for (uint64_t c = st; c < st + k && c < s->check_nclusters; c++)
			s->check_refs[c]++;
	s->free_hint = st + k;
	s->alloc_end = KL_MAX(s->alloc_end, st + k);
	*off = st << s->cluster_bits;
	if (got)
		*got = k;
	return 0;
}

int qcow2_alloc_bytes(struct blk_dev *d, uint64_t size, uint64_t *off)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t o = s->free_byte_offset, cs = s->cluster_size, v = 0, newc;

	if (o) {
		KL_TRY(qcow2_get_refcount(d, o >> s->cluster_bits, &v));
		if (v == s->refcount_max)
			o = 0; /* that cluster cannot take another reference */
	}
	if (o && cs - (o & (cs - 1)) >= size) {
		KL_TRY(qcow2_update_refcount(d, o, size, 1));
	} else {
		KL_TRY(qcow2_alloc_clusters(d, 1, &newc, NULL));
		if (o && KL_ALIGN_UP(o, cs) == newc) {
			/* spill into the next cluster: the partial one gains a reference too */
			KL_TRY(qcow2_update_refcount(d, o, 1, 1));
		} else {
			o = newc;
		}
	}
	*off = o;
	s->free_byte_offset = (o + size) & (cs - 1) ? o + size : 0;
	return 0;
}

/* ------------------------------------------------------------------ frees */

int qcow2_defer_free(struct blk_dev *d, uint64_t off, uint64_t len)
{
	struct qcow2_state *s = qcow2_s(d);

	if (s->nfrees == s->cap_frees) {
		size_t cap = s->cap_frees ? s->cap_frees * 2 : 64;
		struct qcow2_free *nv = kl_realloc(s->frees, cap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		s->frees = nv;
		s->cap_frees = cap;
	}
	s->frees[s->nfrees].off = off;
	s->frees[s->nfrees].len = len;
	s->nfrees++;
	return 0;
}

int qcow2_free_entry(struct blk_dev *d, uint64_t entry)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t off, len;

	if (entry & QCOW2_OFLAG_COMPRESSED) {
		qcow2_compressed_range(s, entry, &off, &len);
		return qcow2_defer_free(d, off, len);
	}
	off = entry & QCOW2_OFFSET_MASK;
	if (!off)
		return 0;
	return qcow2_defer_free(d, off, s->cluster_size);
}

int qcow2_apply_frees(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);

	/* grow_table may queue another free while we run: index, not pointer */
	for (size_t i = 0; i < s->nfrees; i++)
		KL_TRY(qcow2_update_refcount(d, s->frees[i].off, s->frees[i].len, -1));
	s->nfrees = 0;
	return 0;
}

/* ------------------------------------------------------------------ check */

/* A 32-bit counter and a kind byte per host cluster: 1.25 GiB of memory at most */
#define QCOW2_CHECK_MAX_CLUSTERS (1u << 28)

/*
 * What a reference uses a cluster as. Data, compressed data and L2 tables
 * may be shared (internal snapshots); every other structure owns its
 * clusters. A cluster used as two different things, or a second time as an
 * owned one, is structural damage, not a refcount to raise.
 */
enum ck_kind { CK_NONE, CK_DATA, CK_COMPRESSED, CK_L2, CK_OWNED };

static const char *const ck_kind_name[] = { "nothing", "data", "compressed data", "an L2 table",
					    "metadata" };

struct check_ctx {
	struct blk_dev *d;
	struct blk_check_report *r;
	uint32_t *refs;
	uint8_t *kind; /* enum ck_kind per cluster */
	uint64_t nclusters;
	uint64_t guest_allocated;
};

static void ck_corrupt(struct check_ctx *k, const char *fmt, ...) KL_PRINTF(2, 3);
static void ck_corrupt(struct check_ctx *k, const char *fmt, ...)
{
	char buf[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	k->r->corruptions++;
	blk_check_msg(k->r, "ERROR %s", buf);
}

/* Count one reference to every cluster touched by [off, off+len). */
static void ck_ref(struct check_ctx *k, uint64_t off, uint64_t len, const char *what,
		   enum ck_kind kind)
{
	struct qcow2_state *s = qcow2_s(k->d);
	uint64_t first, last;

	if (len == 0)
		return;
	first = off >> s->cluster_bits;
	last = (off + len - 1) >> s->cluster_bits;
	for (uint64_t c = first; c <= last; c++) {
		if (c >= k->nclusters) {
			ck_corrupt(k, "%s at offset %llu lies past the end of the file", what,
				   (unsigned long long)(c << s->cluster_bits));
			return;
		}
		if (k->refs[c] != UINT32_MAX)
			k->refs[c]++;
		if (k->kind[c] == CK_NONE) {
			k->kind[c] = (uint8_t)kind;
		} else if (k->kind[c] != kind || kind == CK_OWNED) {
			ck_corrupt(k, "cluster %llu is used twice: as %s, and already as %s",
				   (unsigned long long)c, what, ck_kind_name[k->kind[c]]);
		}
	}
}

static int ck_l2(struct check_ctx *k, uint64_t l2_off, uint32_t l1i, bool active)
{
	struct blk_dev *d = k->d;
	struct qcow2_state *s = qcow2_s(d);
	struct qcow2_cache_entry *e;
	uint8_t *tab;
	int rc;

	tab = kl_malloc(s->cluster_size);
	if (!tab)
		return -ENOMEM;
	rc = qcow2_cache_get(d, &s->l2c, l2_off, true, &e);
	if (rc < 0) {
		ck_corrupt(k, "L2 table at %llu cannot be read: %s", (unsigned long long)l2_off,
			   kl_errmsg());
		kl_err_clear();
		kl_free(tab);
		return 0;
	}
	memcpy(tab, e->buf, s->cluster_size);
	for (uint32_t i = 0; i < s->l2_entries; i++) {
		uint64_t ent = qcow2_l2_entry(s, tab, i), bm = qcow2_l2_bitmap(s, tab, i);
		uint64_t host = ent & QCOW2_OFFSET_MASK;

		if (ent & QCOW2_OFLAG_COMPRESSED) {
			uint64_t coff, clen;

			if (s->dfile)
				ck_corrupt(k, "compressed cluster in L2 table %llu entry %u of an "
					   "image with an external data file",
					   (unsigned long long)l2_off, i);
			if (ent & QCOW2_OFLAG_COPIED)
				ck_corrupt(k, "compressed cluster in L2 table %llu entry %u has the "
					   "copied flag", (unsigned long long)l2_off, i);
			qcow2_compressed_range(s, ent, &coff, &clen);
			ck_ref(k, coff, clen, "compressed cluster", CK_COMPRESSED);
			if (active)
				k->guest_allocated++;
			continue;
		}
		if (!s->ext_l2 && (ent & QCOW2_OFLAG_ZERO) && s->version < 3)
			ck_corrupt(k, "zero flag in a version 2 image (L2 table %llu entry %u)",
				   (unsigned long long)l2_off, i);
		if (s->ext_l2 && !qcow2_has_host(s, ent) && (bm & QCOW2_L2_BITMAP_ALL_ALLOC))
			ck_corrupt(k, "unallocated cluster with allocated subclusters (L2 table %llu "
				   "entry %u)", (unsigned long long)l2_off, i);
		if (s->ext_l2 && host && ((bm >> 32) & bm))
			ck_corrupt(k, "subclusters both allocated and zero (L2 table %llu entry %u)",
				   (unsigned long long)l2_off, i);
		if (!qcow2_has_host(s, ent))
			continue;
		if (host % s->cluster_size) {
			ck_corrupt(k, "data cluster offset %llu is not cluster aligned (L2 table %llu "
				   "entry %u)", (unsigned long long)host, (unsigned long long)l2_off, i);
			continue;
		}
		if (s->dfile) {
			/* in the data file, at its guest offset, and not refcounted */
			uint64_t guest = (((uint64_t)l1i << s->l2_bits) + i) << s->cluster_bits;

			if (host != guest)
				ck_corrupt(k, "data cluster of guest offset %llu at data file offset "
					   "%llu (L2 table %llu entry %u); the two must be equal",
					   (unsigned long long)guest, (unsigned long long)host,
					   (unsigned long long)l2_off, i);
		} else {
			ck_ref(k, host, s->cluster_size, "data cluster", CK_DATA);
		}
		if (active)
			k->guest_allocated++;
	}
	kl_free(tab);
	return 0;
}

static int ck_l1(struct check_ctx *k, const uint64_t *l1, uint32_t n, bool active)
{
	struct qcow2_state *s = qcow2_s(k->d);
	uint64_t *seen = kl_malloc(((size_t)n + 1) * sizeof(uint64_t));
	uint64_t *dups = kl_malloc(((size_t)n + 1) * sizeof(uint64_t));
	bool *walked = kl_calloc((size_t)n + 1, sizeof(bool));
	size_t nseen = 0, ndup = 0;
	int rc = 0;

	if (!seen || !dups || !walked) {
		rc = -ENOMEM;
		goto out;
	}
	/* an L2 table used twice by one L1 table is corrupt; walk it once only */
	for (uint32_t i = 0; i < n; i++)
		if (l1[i] & QCOW2_OFFSET_MASK)
			seen[nseen++] = l1[i] & QCOW2_OFFSET_MASK;
	qsort(seen, nseen, sizeof(uint64_t), cmp_u64);
	for (size_t j = 1; j < nseen; j++)
		if (seen[j] == seen[j - 1] && (ndup == 0 || dups[ndup - 1] != seen[j]))
			dups[ndup++] = seen[j];
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
		uint64_t *hit;

		if (!l2)
			continue;
		hit = ndup ? bsearch(&l2, dups, ndup, sizeof(uint64_t), cmp_u64) : NULL;
		if (hit) {
			if (walked[hit - dups])
				continue;
			walked[hit - dups] = true;
			ck_corrupt(k, "L2 table at %llu is used by more than one L1 entry (first: %u)",
				   (unsigned long long)l2, i);
		}
		if (l2 % s->cluster_size || l2 < s->cluster_size) {
			ck_corrupt(k, "L1 entry %u: L2 table offset %llu is misaligned or in the "
				   "header", i, (unsigned long long)l2);
			continue;
		}
		ck_ref(k, l2, s->cluster_size, "L2 table", CK_L2);
		if ((l2 >> s->cluster_bits) < k->nclusters)
			rc = ck_l2(k, l2, i, active);
	}
out:
	kl_free(seen);
	kl_free(dups);
	kl_free(walked);
	return rc;
}

static int ck_read_l1(struct check_ctx *k, uint64_t off, uint32_t n, uint64_t **out)
{
	struct qcow2_state *s = qcow2_s(k->d);
	uint8_t *raw;
	uint64_t *t;
	int rc;

	*out = NULL;
	if ((uint64_t)n * 8 > QCOW2_MAX_L1_BYTES || !kl_range_ok(off, (uint64_t)n * 8, s->file_size)) {
		ck_corrupt(k, "L1 table at %llu (%u entries) lies past the end of the file",
			   (unsigned long long)off, n);
		return 0;
	}
	raw = kl_malloc((size_t)n * 8 + 1);
	t = kl_calloc((size_t)n + 1, 8);
	if (!raw || !t) {
		kl_free(raw);
		kl_free(t);
		return -ENOMEM;
	}
	rc = n ? kl_io_pread_full(k->d->file, off, raw, (size_t)n * 8, "L1 table") : 0;
	for (uint32_t i = 0; rc == 0 && i < n; i++)
		t[i] = get_be64(raw + (size_t)i * 8);
	kl_free(raw);
	if (rc < 0) {
		kl_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

static int ck_bitmaps(struct check_ctx *k)
{
	struct blk_dev *d = k->d;
	struct qcow2_state *s = qcow2_s(d);
	uint8_t *dir;
	uint64_t pos = 0;
	int rc = 0;

	if (!s->has_bitmaps || !s->bitmap_dir_size)
		return 0;
	if (s->bitmap_dir_size > (64u << 20) ||
	    !kl_range_ok(s->bitmap_dir_offset, s->bitmap_dir_size, s->file_size)) {
		ck_corrupt(k, "bitmap directory at %llu (%llu bytes) lies past the end of the file",
			   (unsigned long long)s->bitmap_dir_offset,
			   (unsigned long long)s->bitmap_dir_size);
		return 0;
	}
	ck_ref(k, s->bitmap_dir_offset, s->bitmap_dir_size, "bitmap directory", CK_OWNED);
	dir = kl_malloc((size_t)s->bitmap_dir_size);
	if (!dir)
		return -ENOMEM;
	rc = kl_io_pread_full(d->file, s->bitmap_dir_offset, dir, (size_t)s->bitmap_dir_size,
			      "bitmap directory");
	while (rc == 0 && pos + 24 <= s->bitmap_dir_size) {
		uint64_t toff = get_be64(dir + pos);
		uint32_t tsize = get_be32(dir + pos + 8);
		uint32_t nlen = get_be16(dir + pos + 18), xlen = get_be32(dir + pos + 20);
		uint8_t *tab;

		if ((uint64_t)tsize * 8 > (64u << 20) ||
		    !kl_range_ok(toff, (uint64_t)tsize * 8, s->file_size)) {
			ck_corrupt(k, "bitmap table at %llu lies past the end of the file",
				   (unsigned long long)toff);
			break;
		}
		ck_ref(k, toff, (uint64_t)tsize * 8, "bitmap table", CK_OWNED);
		tab = kl_malloc((size_t)tsize * 8 + 1);
		if (!tab) {
			rc = -ENOMEM;
			break;
		}
		rc = tsize ? kl_io_pread_full(d->file, toff, tab, (size_t)tsize * 8, "bitmap table") : 0;
		for (uint32_t i = 0; rc == 0 && i < tsize; i++) {
			uint64_t o = get_be64(tab + (size_t)i * 8) & QCOW2_OFFSET_MASK;

			if (o)
				ck_ref(k, o, s->cluster_size, "bitmap data", CK_OWNED);
		}
		kl_free(tab);
		pos = KL_ALIGN_UP(pos + 24 + xlen + nlen, 8);
	}
	kl_free(dir);
	return rc;
}

static int ck_copied_one(struct check_ctx *k, const uint64_t *l1, uint32_t i, bool fix);

/* Make the copied flags of the active tables say exactly "refcount is 1". */
static int ck_copied(struct check_ctx *k, const uint64_t *l1, uint32_t n, bool fix)
{
	struct blk_dev *d = k->d;
	struct qcow2_state *s = qcow2_s(d);
	uint64_t *uniq = kl_malloc(((size_t)n + 1) * sizeof(uint64_t));
	bool *done = kl_calloc((size_t)n + 1, sizeof(bool));
	size_t nu = 0;
	int rc = 0;

	if (!uniq || !done) {
		kl_free(uniq);
		kl_free(done);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++)
		if (l1[i] & QCOW2_OFFSET_MASK)
			uniq[nu++] = l1[i] & QCOW2_OFFSET_MASK;
	qsort(uniq, nu, sizeof(uint64_t), cmp_u64);
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
		size_t u;

		if (!l2 || l2 % s->cluster_size || (l2 >> s->cluster_bits) >= k->nclusters)
			continue;
		u = (size_t)((uint64_t *)bsearch(&l2, uniq, nu, sizeof(uint64_t), cmp_u64) - uniq);
		if (done[u])
			continue; /* each table once, however many entries point at it */
		done[u] = true;
		rc = ck_copied_one(k, l1, i, fix);
	}
	kl_free(uniq);
	kl_free(done);
	return rc;
}

static int ck_copied_one(struct check_ctx *k, const uint64_t *l1, uint32_t i, bool fix)
{
	struct blk_dev *d = k->d;
	struct qcow2_state *s = qcow2_s(d);
	uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK, rc1;
	struct qcow2_cache_entry *e;

	KL_TRY(qcow2_get_refcount(d, l2 >> s->cluster_bits, &rc1));
	if ((rc1 == 1) != !!(l1[i] & QCOW2_OFLAG_COPIED)) {
		ck_corrupt(k, "L1 entry %u: copied flag %s but the L2 table's refcount is %llu",
			   i, l1[i] & QCOW2_OFLAG_COPIED ? "set" : "clear",
			   (unsigned long long)rc1);
		if (fix && s->cur_snap < 0) {
			s->l1[i] = rc1 == 1 ? s->l1[i] | QCOW2_OFLAG_COPIED
					    : s->l1[i] & ~QCOW2_OFLAG_COPIED;
			s->l1_dirty_lo = KL_MIN(s->l1_dirty_lo, i);
			s->l1_dirty_hi = KL_MAX(s->l1_dirty_hi, i);
			k->r->repaired++;
		}
	}
	for (uint32_t j = 0; j < s->l2_entries; j++) {
		uint64_t ent, host, rc2;

		if (qcow2_cache_get(d, &s->l2c, l2, true, &e) < 0) {
			kl_err_clear();
			break;
		}
		ent = qcow2_l2_entry(s, e->buf, j);
		host = ent & QCOW2_OFFSET_MASK;
		if ((ent & QCOW2_OFLAG_COMPRESSED) || !host || s->dfile || host % s->cluster_size ||
		    (host >> s->cluster_bits) >= k->nclusters)
			continue;
		KL_TRY(qcow2_get_refcount(d, host >> s->cluster_bits, &rc2));
		if ((rc2 == 1) == !!(ent & QCOW2_OFLAG_COPIED))
			continue;
		ck_corrupt(k, "data cluster %llu (L2 table %llu entry %u): copied flag %s "
			   "but refcount %llu", (unsigned long long)host,
			   (unsigned long long)l2, j, ent & QCOW2_OFLAG_COPIED ? "set" : "clear",
			   (unsigned long long)rc2);
		if (fix && (rc1 == 1)) {
			KL_TRY(qcow2_cache_get(d, &s->l2c, l2, true, &e));
			qcow2_set_l2(s, e->buf, j,
				     rc2 == 1 ? ent | QCOW2_OFLAG_COPIED
					      : ent & ~QCOW2_OFLAG_COPIED,
				     qcow2_l2_bitmap(s, e->buf, j));
			qcow2_cache_dirty(e);
			k->r->repaired++;
		}
	}
	return 0;
}

static int check_pass(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	struct qcow2_state *s = qcow2_s(d);
	struct check_ctx k = { .d = d, .r = r };
	uint64_t *active = NULL;
	bool own_active = false;
	int rc;

	k.nclusters = KL_DIV_ROUND_UP(s->file_size, s->cluster_size);
	if (k.nclusters > QCOW2_CHECK_MAX_CLUSTERS)
		return kl_err(-EFBIG, "%s: %llu clusters are more than check counts in memory (%u)",
			      d->filename, (unsigned long long)k.nclusters,
			      QCOW2_CHECK_MAX_CLUSTERS);
	k.refs = kl_calloc((size_t)(k.nclusters ? k.nclusters : 1), sizeof(uint32_t));
	k.kind = kl_calloc((size_t)(k.nclusters ? k.nclusters : 1), 1);
	if (!k.refs || !k.kind) {
		kl_free(k.refs);
		kl_free(k.kind);
		return -ENOMEM;
	}
	ck_ref(&k, 0, s->cluster_size, "header", CK_OWNED);
	if (s->cur_snap < 0) {
		active = s->l1;
	} else {
		rc = ck_read_l1(&k, s->active_l1_offset, s->active_l1_size, &active);
		if (rc < 0)
			goto out;
		own_active = true;
	}
	ck_ref(&k, s->active_l1_offset, (uint64_t)s->active_l1_size * 8, "L1 table", CK_OWNED);
	if (active) {
		rc = ck_l1(&k, active, s->active_l1_size, true);
		if (rc < 0)
			goto out;
	}
	for (uint32_t i = 0; s->snaps && i < s->nb_snapshots; i++) {
		uint64_t *l1;

		ck_ref(&k, s->snaps[i].l1_offset, (uint64_t)s->snaps[i].l1_size * 8,
		       "snapshot L1 table", CK_OWNED);
		rc = ck_read_l1(&k, s->snaps[i].l1_offset, s->snaps[i].l1_size, &l1);
		if (rc == 0 && l1)
			rc = ck_l1(&k, l1, s->snaps[i].l1_size, false);
		kl_free(l1);
		if (rc < 0)
			goto out;
	}
	ck_ref(&k, s->snapshots_offset, s->snapshots_size, "snapshot table", CK_OWNED);
	if (s->crypt_method == 2)
		ck_ref(&k, s->crypt_off, s->crypt_len, "LUKS header", CK_OWNED);
	ck_ref(&k, s->rt_offset, (uint64_t)s->rt_clusters * s->cluster_size, "refcount table",
	       CK_OWNED);
	for (uint64_t i = 0; i < s->rt_entries; i++) {
		uint64_t b = s->rt[i] & QCOW2_RT_OFFSET_MASK;

		if (!b)
			continue;
		if (b % s->cluster_size) {
			ck_corrupt(&k, "refcount block %llu at %llu is not cluster aligned",
				   (unsigned long long)i, (unsigned long long)b);
			continue;
		}
		ck_ref(&k, b, s->cluster_size, "refcount block", CK_OWNED);
	}
	rc = ck_bitmaps(&k);
	if (rc < 0)
		goto out;

	/*
	 * Everything found so far is structural (a table past the end of the
	 * file, misaligned, unreadable, overlapping): -r cannot fix it, and
	 * what a damaged table no longer reaches shows up as leaks. Freeing
	 * those would give the clusters holding the lost tables and data to
	 * the next write, so nothing is repaired while such damage remains
	 * (qemu-img check -r does free them).
	 */
	if (r->corruptions && (flags & BLK_CHECK_REPAIR_LEAKS)) {
		blk_check_msg(r, "nothing repaired: %llu error(s) in the table structure cannot "
			      "be, and the clusters they cut off (reported as leaked) may hold "
			      "the data; copy what still reads with keel convert",
			      (unsigned long long)r->corruptions);
		flags &= ~(unsigned)BLK_CHECK_REPAIR_ALL;
	}

	/* compare with what is stored, repairing when asked */
	s->check_refs = k.refs;
	s->check_nclusters = k.nclusters;
	for (uint64_t c = 0; c < k.nclusters; c++) {
		uint64_t v;

		rc = qcow2_get_refcount(d, c, &v);
		if (rc < 0) {
			ck_corrupt(&k, "refcount of cluster %llu cannot be read: %s",
				   (unsigned long long)c, kl_errmsg());
			kl_err_clear();
			s->broken = false;
			continue;
		}
		if (v == k.refs[c])
			continue;
		if (v > k.refs[c]) {
			r->leaks++;
			blk_check_msg(r, "Leaked cluster %llu refcount=%llu reference=%u",
				      (unsigned long long)c, (unsigned long long)v, k.refs[c]);
			if (!(flags & BLK_CHECK_REPAIR_LEAKS))
				continue;
		} else {
			ck_corrupt(&k, "cluster %llu refcount=%llu reference=%u",
				   (unsigned long long)c, (unsigned long long)v, k.refs[c]);
			if ((flags & BLK_CHECK_REPAIR_ALL) != BLK_CHECK_REPAIR_ALL)
				continue;
		}
		if (k.refs[c] > s->refcount_max)
			continue;
		rc = qcow2_update_refcount(d, c << s->cluster_bits, 1,
					   (int64_t)k.refs[c] - (int64_t)v);
		if (rc < 0)
			goto out;
		r->repaired++;
	}
	if (active)
		rc = ck_copied(&k, active, s->active_l1_size,
			       (flags & BLK_CHECK_REPAIR_ALL) == BLK_CHECK_REPAIR_ALL);
	r->checked = k.nclusters;
	r->allocated_clusters = k.guest_allocated;
	r->total_clusters = KL_DIV_ROUND_UP(d->size, s->cluster_size);
out:
	s->check_refs = NULL;
	s->check_nclusters = 0;
	if (own_active)
		kl_free(active);
	kl_free(k.refs);
	kl_free(k.kind);
	return rc;
}

static int check_run(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;
	bool all = (flags & BLK_CHECK_REPAIR_ALL) == BLK_CHECK_REPAIR_ALL;
	struct blk_check_report again;
	uint64_t found, left;
	uint8_t b[8];
	int rc;

	if (d->read_only)
		flags = 0;
	if (!d->read_only) {
		s->broken = false;
		KL_TRY(qcow2_flush(d));
	}
	KL_TRY(check_pass(d, r, flags));
	if (!(flags & BLK_CHECK_REPAIR_LEAKS))
		return 0;
	KL_TRY(qcow2_flush(d));
	if (r->repaired == 0 && !(all && (s->incompat & bits)))
		return 0;
	/*
	 * Counts stay what was found; repaired is what a second pass no longer
	 * finds, so "found > repaired" means problems remain (cmd_check).
	 */
	memset(&again, 0, sizeof(again));
	rc = check_pass(d, &again, 0);
	blk_check_report_release(&again);
	if (rc < 0)
		return rc;
	found = r->corruptions + r->leaks;
	left = again.corruptions + again.leaks;
	r->repaired = found > left ? found - left : 0;
	if (all && !again.corruptions && (s->incompat & bits)) {
		s->incompat &= ~bits;
		put_be64(b, s->incompat);
		KL_TRY(qcow2_file_write(d, QCOW2_HDR_INCOMPAT, b, 8));
		KL_TRY(kl_io_sync(d->file));
	}
	return 0;
}

int qcow2_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	int rc = check_run(d, r, flags);

	/* a failed check leaves nothing for the caller to free */
	if (rc < 0)
		blk_check_report_release(r);
	return rc;
}
