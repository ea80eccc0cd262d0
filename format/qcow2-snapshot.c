/*
 * format/qcow2-snapshot.c - qcow2 internal snapshots (qcow2.rst
 * "Snapshots"): parse and validate the table, list it for `keel info`,
 * find the snapshot that `image.qcow2@NAME` selects, create, delete and
 * revert to snapshots (`keel snapshot`, as qemu-img snapshot), and list
 * what differs between two states from their tables (`keel diff`, and
 * incremental send and replicate).
 *
 * Entry: u64 L1 offset, u32 L1 entries, u16 id length, u16 name length,
 * u32 date seconds, u32 date nanoseconds, u64 VM clock ns, u32 VM state
 * size, u32 extra data size, extra data (u64 VM state size, u64 disk
 * size, ...), id, name, padding to 8 bytes.
 */
#include "format/qcow2.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define QCOW2_SNAP_FIXED 40
#define QCOW2_SNAP_MAX_EXTRA 1024 /* qemu's QCOW_MAX_SNAPSHOT_EXTRA_DATA */

void qcow2_snapshots_free(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);

	if (!s->snaps)
		return;
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		kl_free(s->snaps[i].id);
		kl_free(s->snaps[i].name);
	}
	kl_free(s->snaps);
	s->snaps = NULL;
}

static bool overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return alen && blen && a < b + blen && b < a + alen;
}

static int load_one(struct blk_dev *d, uint32_t i, uint64_t pos, uint64_t limit, uint64_t vsize,
		    uint64_t *next, uint64_t *end)
{
	struct qcow2_state *s = qcow2_s(d);
	struct qcow2_snap *sn = &s->snaps[i];
	uint8_t fixed[QCOW2_SNAP_FIXED];
	uint8_t *var = NULL;
	uint32_t extra, idlen, namelen;
	uint64_t varlen;
	int rc;

	if (!kl_range_ok(pos, QCOW2_SNAP_FIXED, limit))
		return kl_err(-EUCLEAN, "%s: snapshot %u at offset %llu runs past the end of the "
			      "snapshot table or file", d->filename, i, (unsigned long long)pos);
	rc = kl_io_pread_full(d->file, pos, fixed, sizeof(fixed), "snapshot table entry");
	if (rc < 0)
		return rc;
	sn->l1_offset = get_be64(fixed);
	sn->l1_size = get_be32(fixed + 8);
	idlen = get_be16(fixed + 12);
	namelen = get_be16(fixed + 14);
	sn->date_ns = (uint64_t)get_be32(fixed + 16) * 1000000000ULL + get_be32(fixed + 20) % 1000000000u;
	sn->vm_clock_ns = get_be64(fixed + 24);
	sn->vm_state_size = get_be32(fixed + 32);
	extra = get_be32(fixed + 36);
	if (extra > QCOW2_SNAP_MAX_EXTRA)
		return kl_err(-EUCLEAN, "%s: snapshot %u at offset %llu has %u bytes of extra data "
			      "(at most %u)", d->filename, i, (unsigned long long)pos, extra,
			      QCOW2_SNAP_MAX_EXTRA);
	varlen = (uint64_t)extra + idlen + namelen;
	if (!kl_range_ok(pos + QCOW2_SNAP_FIXED, varlen, limit))
		return kl_err(-EUCLEAN, "%s: snapshot %u at offset %llu runs past the end of the "
			      "snapshot table or file", d->filename, i, (unsigned long long)pos);
	var = kl_malloc((size_t)varlen + 1);
	if (!var)
		return -ENOMEM;
	rc = varlen ? kl_io_pread_full(d->file, pos + QCOW2_SNAP_FIXED, var, (size_t)varlen,
				       "snapshot table entry") : 0;
	if (rc < 0) {
		kl_free(var);
		return rc;
	}
	sn->vsize = vsize;
	if (extra >= 8)
		sn->vm_state_size = get_be64(var);
	if (extra >= 16)
		sn->vsize = get_be64(var + 8);
	sn->id = kl_strndup((const char *)var + extra, idlen);
	sn->name = kl_strndup((const char *)var + extra + idlen, namelen);
	kl_free(var);
	if (!sn->id || !sn->name)
		return -ENOMEM;
	if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES || sn->l1_offset % s->cluster_size ||
	    (sn->l1_size && sn->l1_offset < s->cluster_size) ||
	    !kl_range_ok(sn->l1_offset, (uint64_t)sn->l1_size * 8, s->file_size))
		return kl_err(-EUCLEAN, "%s: snapshot '%s' (id %s): L1 table at %llu with %u entries "
			      "is misaligned, too large or past the end of the file", d->filename,
			      sn->name, sn->id, (unsigned long long)sn->l1_offset, sn->l1_size);
	/* entries start 8-aligned; qemu does not pad the last one */
	*end = pos + QCOW2_SNAP_FIXED + varlen;
	*next = KL_ALIGN_UP(*end, 8);
	sn->ent_off = pos - s->snapshots_offset;
	sn->ent_len = *next - pos;
	return 0;
}

int qcow2_snapshots_load(struct blk_dev *d, uint64_t vsize)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t pos, limit, end = 0;
	int rc;

	if (s->nb_snapshots == 0)
		return 0;
	if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
		return kl_err(-EUCLEAN, "%s: %u snapshots (offset 60); at most %u allowed", d->filename,
			      s->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
	if (s->snapshots_offset % s->cluster_size || s->snapshots_offset < s->cluster_size ||
	    s->snapshots_offset >= s->file_size)
		return kl_err(-EUCLEAN, "%s: snapshot table offset %llu is misaligned, inside the "
			      "header or past the end of the file (%llu)", d->filename,
			      (unsigned long long)s->snapshots_offset,
			      (unsigned long long)s->file_size);
	/* the table must fit the file and qemu's size limit; checked entry by entry */
	limit = s->snapshots_offset + KL_MIN(s->file_size - s->snapshots_offset,
					     (uint64_t)QCOW2_MAX_SNAPSHOT_TABLE);
	s->snaps = kl_calloc(s->nb_snapshots, sizeof(*s->snaps));
	if (!s->snaps)
		return -ENOMEM;
	pos = s->snapshots_offset;
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		rc = load_one(d, i, pos, limit, vsize, &pos, &end);
		if (rc < 0)
			return rc;
	}
	s->snapshots_size = end - s->snapshots_offset;
	/* the last entry is not padded */
	s->snaps[s->nb_snapshots - 1].ent_len =
		s->snapshots_size - s->snaps[s->nb_snapshots - 1].ent_off;
	if (overlap(s->snapshots_offset, s->snapshots_size, s->rt_offset,
		    (uint64_t)s->rt_clusters * s->cluster_size) ||
	    overlap(s->snapshots_offset, s->snapshots_size, s->active_l1_offset,
		    (uint64_t)s->active_l1_size * 8))
		return kl_err(-EUCLEAN, "%s: snapshot table at %llu (%llu bytes) overlaps the L1 or "
			      "refcount table", d->filename, (unsigned long long)s->snapshots_offset,
			      (unsigned long long)s->snapshots_size);
	return 0;
}

int qcow2_snapshot_find(struct blk_dev *d, const char *name)
{
	struct qcow2_state *s = qcow2_s(d);

	if (!s->snaps)
		return -ENOENT;
	for (uint32_t i = 0; i < s->nb_snapshots; i++)
		if (!strcmp(s->snaps[i].name, name))
			return (int)i;
	for (uint32_t i = 0; i < s->nb_snapshots; i++)
		if (!strcmp(s->snaps[i].id, name))
			return (int)i;
	return -ENOENT;
}

int qcow2_snapshot_list(struct blk_dev *d, struct blk_snapshot_info **out, size_t *n)
{
	struct qcow2_state *s = qcow2_s(d);
	struct blk_snapshot_info *l;

	*out = NULL;
	*n = 0;
	if (!s->snaps || !s->nb_snapshots)
		return 0;
	l = kl_calloc(s->nb_snapshots, sizeof(*l));
	if (!l)
		return -ENOMEM;
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		l[i].id = kl_strdup(s->snaps[i].id);
		l[i].name = kl_strdup(s->snaps[i].name);
		l[i].vsize = s->snaps[i].vsize;
		l[i].date_ns = s->snaps[i].date_ns;
		l[i].generation = i + 1;
		if (!l[i].id || !l[i].name) {
			blk_snapshot_list_free(l, s->nb_snapshots);
			return -ENOMEM;
		}
	}
	*out = l;
	*n = s->nb_snapshots;
	return 0;
}

/* ------------------------------------------------------------------ writing */

/*
 * Every update below keeps the file openable, to the old state or the new
 * one, at each write: the new structures (an L1 copy, a snapshot table)
 * go to newly allocated clusters, the reference counts are raised before
 * anything new points at a cluster and dropped only after nothing does,
 * and one write of adjacent header fields (at most 12 bytes inside the
 * first sector) switches to the new state. A cut between those steps
 * leaves clusters with a refcount above their references (leaks, which
 * `keel check -r leaks` returns) and, for a moment, copied flags that do
 * not match their refcount (`check -r all`); the guest data is intact in
 * either state. qemu updates the active L1 table in place when it reverts;
 * keel writes a new table and switches the header to it, so a torn write
 * cannot mix two states.
 */

#define QCOW2_HDR_SIZE 24 /* u64 virtual size, u32 crypt method, u32 L1 size, u64 L1 offset */
#define QCOW2_HDR_NB_SNAPSHOTS 60 /* u32, then the u64 table offset at 64 */
#define QCOW2_SNAP_EXTRA 24 /* VM state size, disk size, instruction count */

/* The snapshot table's bytes, as validated when the image was opened. */
static int table_read(struct blk_dev *d, uint8_t **out, size_t *len)
{
	struct qcow2_state *s = qcow2_s(d);
	uint8_t *t;
	int rc;

	*out = NULL;
	*len = 0;
	if (!s->nb_snapshots)
		return 0;
	t = kl_malloc((size_t)s->snapshots_size);
	if (!t)
		return -ENOMEM;
	rc = kl_io_pread_full(d->file, s->snapshots_offset, t, (size_t)s->snapshots_size,
			      "snapshot table");
	if (rc < 0) {
		kl_free(t);
		return rc;
	}
	*out = t;
	*len = (size_t)s->snapshots_size;
	return 0;
}

/* Store buf (len bytes) in newly allocated clusters; *off is where. */
static int write_new(struct blk_dev *d, const void *buf, size_t len, uint64_t *off)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t n = (len + s->cluster_size - 1) >> s->cluster_bits;

	*off = 0;
	if (!len)
		return 0;
	KL_TRY(qcow2_alloc_clusters(d, n, off, NULL));
	return qcow2_file_write(d, *off, buf, len);
}

/* A snapshot's L1 table, host-endian, in n >= its size entries (zeros past it). */
static int read_snap_l1(struct blk_dev *d, const struct qcow2_snap *sn, uint32_t n, uint64_t **out)
{
	uint64_t *l1 = kl_calloc((size_t)n + 1, sizeof(uint64_t));
	int rc = 0;

	*out = NULL;
	if (!l1)
		return -ENOMEM;
	if (sn->l1_size)
		rc = kl_io_pread_full(d->file, sn->l1_offset, l1, (size_t)sn->l1_size * 8,
				      "snapshot L1 table");
	if (rc < 0) {
		kl_free(l1);
		return rc;
	}
	for (uint32_t i = 0; i < sn->l1_size; i++)
		l1[i] = get_be64((const uint8_t *)&l1[i]);
	*out = l1;
	return 0;
}

/*
 * Add delta to the refcount of every cluster an L1 table reaches: its L2
 * tables and the clusters they name. With unshare, the entries of those
 * L2 tables lose their copied flags too (what a new snapshot makes shared).
 */
static int l1_refs(struct blk_dev *d, const uint64_t *l1, uint32_t n, int delta, bool unshare)
{
	struct qcow2_state *s = qcow2_s(d);
	/* clusters are counted whole: the last one may end past the file's end */
	uint64_t limit = KL_ALIGN_UP(s->file_size, s->cluster_size);
	struct qcow2_cache_entry *e;
	uint8_t *t = kl_malloc(s->cluster_size);
	int rc = 0;

	if (!t)
		return -ENOMEM;
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
		bool changed = false;

		if (!l2)
			continue;
		if (l2 + s->cluster_size > limit) {
			rc = qcow2_corrupt(d, "%s: L1 entry %u names an L2 table at %llu, past the end "
					   "of the file", d->filename, i, (unsigned long long)l2);
			break;
		}
		/* a copy: refcount updates may drop cache entries under us */
		rc = qcow2_l2_load(d, l2, &e);
		if (rc < 0)
			break;
		memcpy(t, e->buf, s->cluster_size);
		for (uint32_t j = 0; j < s->l2_entries && rc == 0; j++) {
			uint64_t ent = qcow2_l2_entry(s, t, j), off, len;

			if (ent & QCOW2_OFLAG_COMPRESSED) {
				qcow2_compressed_range(s, ent, &off, &len);
			} else {
				off = ent & QCOW2_OFFSET_MASK;
				len = s->cluster_size;
				if (off && off % s->cluster_size)
					off = UINT64_MAX;
			}
			if (!off)
				continue;
			if (off == UINT64_MAX || off + len > limit) {
				rc = qcow2_corrupt(d, "%s: L2 table at %llu entry %u names a cluster "
						   "that is misaligned or past the end of the file",
						   d->filename, (unsigned long long)l2, j);
				break;
			}
			rc = qcow2_update_refcount(d, off, len, delta);
			if (rc == 0 && unshare && (ent & QCOW2_OFLAG_COPIED)) {
				qcow2_set_l2(s, t, j, ent & ~QCOW2_OFLAG_COPIED, qcow2_l2_bitmap(s, t, j));
				changed = true;
			}
		}
		if (rc == 0)
			rc = qcow2_update_refcount(d, l2, s->cluster_size, delta);
		if (rc == 0 && changed) {
			rc = qcow2_l2_load(d, l2, &e);
			if (rc == 0) {
				memcpy(e->buf, t, s->cluster_size);
				qcow2_cache_dirty(e);
			}
		}
	}
	kl_free(t);
	return rc;
}

static void l1_dirty(struct qcow2_state *s, uint32_t i)
{
	s->l1_dirty_lo = KL_MIN(s->l1_dirty_lo, i);
	s->l1_dirty_hi = KL_MAX(s->l1_dirty_hi, i);
}

/*
 * After refcounts dropped: the copied flags of the active tables say
 * "refcount is 1" again (qemu-img check insists). Entries of an L2 table
 * still shared with a snapshot stay as they are: the snapshot's view.
 */
static int active_copied(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);
	struct qcow2_cache_entry *e;

	for (uint32_t i = 0; i < s->l1_size; i++) {
		uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK, rc1;

		if (!l2)
			continue;
		KL_TRY(qcow2_get_refcount(d, l2 >> s->cluster_bits, &rc1));
		if ((rc1 == 1) != !!(s->l1[i] & QCOW2_OFLAG_COPIED)) {
			s->l1[i] ^= QCOW2_OFLAG_COPIED;
			l1_dirty(s, i);
		}
		if (rc1 != 1)
			continue;
		KL_TRY(qcow2_l2_load(d, l2, &e));
		for (uint32_t j = 0; j < s->l2_entries; j++) {
			uint64_t ent = qcow2_l2_entry(s, e->buf, j), host = ent & QCOW2_OFFSET_MASK, rc;

			if ((ent & QCOW2_OFLAG_COMPRESSED) || !host)
				continue;
			KL_TRY(qcow2_get_refcount(d, host >> s->cluster_bits, &rc));
			/* refcount lookups use the other cache: e stays valid */
			if ((rc == 1) == !!(ent & QCOW2_OFLAG_COPIED))
				continue;
			qcow2_set_l2(s, e->buf, j, ent ^ QCOW2_OFLAG_COPIED, qcow2_l2_bitmap(s, e->buf, j));
			qcow2_cache_dirty(e);
		}
	}
	return 0;
}

/*
 * The commit of every snapshot operation: header fields that sit side by
 * side in the first sector (len bytes at pos, at most 24), written in one
 * write and synced.
 */
static int header_switch(struct blk_dev *d, uint32_t pos, const uint8_t *h, size_t len)
{
	KL_TRY(kl_io_event("qcow2.snapshot"));
	KL_TRY(qcow2_file_write(d, pos, h, len));
	KL_TRY(kl_io_sync(d->file));
	qcow2_s(d)->unsynced = false;
	return 0;
}

/* Switch the header to nb snapshots in the table at off, and reload the table. */
static int commit_table(struct blk_dev *d, uint32_t nb, uint64_t off)
{
	struct qcow2_state *s = qcow2_s(d);
	uint8_t h[12];

	put_be32(h, nb);
	put_be64(h + 4, off);
	KL_TRY(header_switch(d, QCOW2_HDR_NB_SNAPSHOTS, h, sizeof(h)));
	qcow2_snapshots_free(d);
	s->nb_snapshots = nb;
	s->snapshots_offset = off;
	s->snapshots_size = 0;
	return qcow2_snapshots_load(d, d->size);
}

static int find_for_write(struct blk_dev *d, const char *name)
{
	int i = qcow2_snapshot_find(d, name);

	if (i < 0)
		return kl_err(-ENOENT, "%s: no snapshot named '%s' (keel snapshot -l lists them)",
			      d->filename, name);
	return i;
}

int qcow2_snapshot_create(struct blk_dev *d, const char *name)
{
	struct qcow2_state *s = qcow2_s(d);
	size_t nlen = strlen(name), olen = 0, elen, tlen;
	uint8_t *old = NULL, *tab = NULL, *l1b = NULL, *p;
	uint64_t l1_off = 0, t_off, old_off = s->snapshots_offset, id = 0;
	struct timespec now;
	char idbuf[24];
	int rc;

	for (uint32_t i = 0; s->snaps && i < s->nb_snapshots; i++) {
		if (!strcmp(s->snaps[i].name, name))
			return kl_err(-EEXIST, "%s: a snapshot named '%s' exists", d->filename, name);
		id = KL_MAX(id, strtoull(s->snaps[i].id, NULL, 10));
	}
	if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS)
		return kl_err(-ENOSPC, "%s: already %u snapshots, the most qcow2 allows", d->filename,
			      s->nb_snapshots);
	if (nlen > UINT16_MAX)
		return kl_err(-EINVAL, "%s: a snapshot name of %zu bytes; at most %u", d->filename,
			      nlen, UINT16_MAX);
	if (s->refcount_max < 2)
		return kl_err(-ENOTSUP, "%s: refcount_bits=1: a cluster cannot be shared, so this "
			      "image cannot hold snapshots", d->filename);
	KL_TRY(qcow2_prepare_write(d));
	KL_TRY(qcow2_flush(d));
	snprintf(idbuf, sizeof(idbuf), "%llu", (unsigned long long)id + 1);
	elen = KL_ALIGN_UP(QCOW2_SNAP_FIXED + QCOW2_SNAP_EXTRA + strlen(idbuf) + nlen, 8);
	rc = table_read(d, &old, &olen);
	if (rc < 0)
		return rc;
	tlen = KL_ALIGN_UP(olen, 8) + elen; /* the new entry starts 8-aligned */
	if (tlen > QCOW2_MAX_SNAPSHOT_TABLE) {
		rc = kl_err(-ENOSPC, "%s: the snapshot table would pass qemu's %u-byte limit",
			    d->filename, QCOW2_MAX_SNAPSHOT_TABLE);
		goto out;
	}
	/* the snapshot's L1 table: a copy of the active one */
	if (s->l1_size) {
		rc = -ENOMEM;
		l1b = kl_malloc((size_t)s->l1_size * 8);
		if (!l1b)
			goto out;
		for (uint32_t i = 0; i < s->l1_size; i++)
			put_be64(l1b + (size_t)i * 8, s->l1[i] & ~QCOW2_OFLAG_COPIED);
		rc = write_new(d, l1b, (size_t)s->l1_size * 8, &l1_off);
		if (rc < 0)
			goto out;
	}
	/* everything the active tables reach is now shared with it */
	rc = l1_refs(d, s->l1, s->l1_size, 1, true);
	if (rc < 0)
		goto out;
	for (uint32_t i = 0; i < s->l1_size; i++) {
		if (s->l1[i] & QCOW2_OFLAG_COPIED) {
			s->l1[i] &= ~QCOW2_OFLAG_COPIED;
			l1_dirty(s, i);
		}
	}
	rc = -ENOMEM;
	tab = kl_calloc(1, tlen);
	if (!tab)
		goto out;
	if (olen)
		memcpy(tab, old, olen);
	p = tab + KL_ALIGN_UP(olen, 8);
	clock_gettime(CLOCK_REALTIME, &now);
	put_be64(p, l1_off);
	put_be32(p + 8, s->l1_size);
	put_be16(p + 12, (uint16_t)strlen(idbuf));
	put_be16(p + 14, (uint16_t)nlen);
	put_be32(p + 16, (uint32_t)now.tv_sec);
	put_be32(p + 20, (uint32_t)now.tv_nsec);
	put_be64(p + 24, 0);		  /* VM clock: no VM ran */
	put_be32(p + 32, 0);		  /* no VM state */
	put_be32(p + 36, QCOW2_SNAP_EXTRA);
	put_be64(p + 40, 0);		  /* VM state size, 64-bit */
	put_be64(p + 48, d->size);	  /* disk size */
	put_be64(p + 56, UINT64_MAX);	  /* instruction count: not recorded */
	memcpy(p + 64, idbuf, strlen(idbuf));
	memcpy(p + 64 + strlen(idbuf), name, nlen);
	rc = write_new(d, tab, tlen, &t_off);
	if (rc < 0)
		goto out;
	/* refcounts first, then the L2 tables and L1 without copied flags, synced */
	rc = qcow2_flush(d);
	if (rc == 0)
		rc = commit_table(d, s->nb_snapshots + 1, t_off);
	/* the old table is garbage now; a cut before this only leaks it */
	if (rc == 0 && olen)
		rc = qcow2_update_refcount(d, old_off, olen, -1);
	if (rc == 0)
		rc = qcow2_flush(d);
out:
	kl_free(old);
	kl_free(tab);
	kl_free(l1b);
	return rc;
}

int qcow2_snapshot_delete(struct blk_dev *d, const char *name)
{
	struct qcow2_state *s = qcow2_s(d);
	uint8_t *old = NULL, *tab = NULL;
	size_t olen = 0, at, elen;
	uint64_t *l1 = NULL, t_off = 0, old_off = s->snapshots_offset;
	struct qcow2_snap sn;
	int i = find_for_write(d, name), rc;

	if (i < 0)
		return i;
	KL_TRY(qcow2_prepare_write(d));
	KL_TRY(qcow2_flush(d));
	sn = s->snaps[i]; /* its strings die with the table reload below; unused after */
	at = (size_t)sn.ent_off;
	elen = (size_t)sn.ent_len;
	KL_TRY(read_snap_l1(d, &sn, sn.l1_size, &l1));
	rc = table_read(d, &old, &olen);
	if (rc < 0)
		goto out;
	if (olen > elen) {
		rc = -ENOMEM;
		tab = kl_malloc(olen - elen);
		if (!tab)
			goto out;
		memcpy(tab, old, at);
		memcpy(tab + at, old + at + elen, olen - at - elen);
		rc = write_new(d, tab, olen - elen, &t_off);
		if (rc == 0)
			rc = qcow2_flush(d);
		if (rc < 0)
			goto out;
	}
	rc = commit_table(d, s->nb_snapshots - 1, t_off);
	if (rc < 0)
		goto out;
	/* gone from the table: what only it referenced is free; a cut below leaks */
	rc = l1_refs(d, l1, sn.l1_size, -1, false);
	if (rc == 0)
		rc = qcow2_update_refcount(d, sn.l1_offset, (uint64_t)sn.l1_size * 8, -1);
	if (rc == 0)
		rc = qcow2_update_refcount(d, old_off, olen, -1);
	if (rc == 0)
		rc = active_copied(d);
	if (rc == 0)
		rc = qcow2_flush(d);
out:
	kl_free(l1);
	kl_free(old);
	kl_free(tab);
	return rc;
}

/*
 * The active state becomes the snapshot's, at the snapshot's virtual size
 * and with its whole L1 table: a table longer than that size needs is how
 * qemu's savevm keeps VM state past the disk, and qemu's revert keeps
 * those entries active too. One 24-byte write switches the size and the
 * L1 table together.
 */
int qcow2_snapshot_revert(struct blk_dev *d, const char *name)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t *nl1 = NULL, *ol1, new_off, old_off = s->l1_offset;
	uint64_t cover = (uint64_t)s->l2_entries << s->cluster_bits; /* guest bytes per entry */
	uint32_t n, old_n = s->l1_size;
	uint8_t *buf = NULL, h[24];
	struct qcow2_snap sn;
	int i = find_for_write(d, name), rc;

	if (i < 0)
		return i;
	sn = s->snaps[i];
	n = sn.l1_size;
	/* opening checks this only for the snapshot it opens: the size becomes the header's */
	if (sn.vsize / cover + (sn.vsize % cover ? 1 : 0) > n)
		return kl_err(-EUCLEAN, "%s: snapshot '%s' (id %s) has a virtual size of %llu but "
			      "its L1 table of %u entries covers %llu", d->filename, sn.name, sn.id,
			      (unsigned long long)sn.vsize, n, (unsigned long long)(n * cover));
	KL_TRY(qcow2_prepare_write(d));
	KL_TRY(qcow2_flush(d));
	KL_TRY(read_snap_l1(d, &sn, n, &nl1));
	/*
	 * The active state will reference all the snapshot does, so none of
	 * those L2 entries may keep a copied flag (the snapshot's tables can
	 * carry stale ones: check looks only at the active tables).
	 */
	rc = l1_refs(d, nl1, n, 1, true);
	if (rc < 0)
		goto out;
	rc = -ENOMEM;
	buf = kl_malloc((size_t)n * 8 + 8);
	if (!buf)
		goto out;
	for (uint32_t k = 0; k < n; k++) {
		nl1[k] &= QCOW2_OFFSET_MASK; /* shared with the snapshot: not copied */
		put_be64(buf + (size_t)k * 8, nl1[k]);
	}
	/* a new active L1 table, so a torn write cannot mix the two states */
	rc = write_new(d, buf, (size_t)n * 8, &new_off);
	if (rc == 0)
		rc = qcow2_flush(d);
	if (rc < 0)
		goto out;
	put_be64(h, sn.vsize);
	put_be32(h + 8, s->crypt_method); /* unchanged: kept in the same write */
	put_be32(h + 12, n);
	put_be64(h + 16, new_off);
	rc = header_switch(d, QCOW2_HDR_SIZE, h, sizeof(h));
	if (rc < 0)
		goto out;
	ol1 = s->l1;
	s->l1 = nl1;
	nl1 = ol1;
	s->l1_offset = s->active_l1_offset = new_off;
	s->l1_size = s->active_l1_size = n;
	s->l1_dirty_lo = UINT32_MAX;
	s->l1_dirty_hi = 0;
	d->size = sn.vsize;
	/* the old active tables lose a reference; a cut below leaks */
	rc = l1_refs(d, ol1, old_n, -1, false);
	if (rc == 0)
		rc = qcow2_update_refcount(d, old_off, (uint64_t)old_n * 8, -1);
	if (rc == 0)
		rc = active_copied(d);
	if (rc == 0)
		rc = qcow2_flush(d);
out:
	kl_free(nl1);
	kl_free(buf);
	return rc;
}

/* ------------------------------------------------------------------ diff */

/* NULL: the current state (its tables as flushed); else the snapshot's. */
static int qdiff_l1(struct blk_dev *d, const char *name, uint32_t n, uint64_t **l1,
		    uint64_t *vsize)
{
	struct qcow2_state *s = qcow2_s(d);
	int i;

	if (!name) {
		*l1 = kl_calloc((size_t)n + 1, sizeof(uint64_t));
		if (!*l1)
			return -ENOMEM;
		memcpy(*l1, s->l1, (size_t)s->l1_size * 8);
		*vsize = d->size;
		return 0;
	}
	i = find_for_write(d, name);
	if (i < 0)
		return i;
	*vsize = s->snaps[i].vsize;
	return read_snap_l1(d, &s->snaps[i], n, l1);
}

/* The L2 table at off into t (zeros for none). */
static int qdiff_l2(struct blk_dev *d, uint64_t off, uint8_t *t)
{
	struct qcow2_state *s = qcow2_s(d);
	struct qcow2_cache_entry *e;

	if (!off) {
		memset(t, 0, s->cluster_size);
		return 0;
	}
	if (off + s->cluster_size > KL_ALIGN_UP(s->file_size, s->cluster_size))
		return qcow2_corrupt(d, "%s: L2 table at %llu lies past the end of the file",
				     d->filename, (unsigned long long)off);
	KL_TRY(qcow2_l2_load(d, off, &e));
	memcpy(t, e->buf, s->cluster_size);
	return 0;
}

/*
 * What entry eb of the newer state holds, for the consumer: ZERO only when
 * it reads as zeros without looking further (a zero entry or subclusters,
 * or nothing where there is no backing file); DATA otherwise.
 */
static int qdiff_type(const struct qcow2_state *s, uint64_t eb, uint64_t bm, bool backing)
{
	if (eb & QCOW2_OFLAG_COMPRESSED)
		return BLK_DATA;
	if (s->ext_l2) {
		uint32_t alloc = (uint32_t)bm, zero = (uint32_t)(bm >> 32);

		if (alloc && (eb & QCOW2_OFFSET_MASK))
			return BLK_DATA;
		return !backing || zero == UINT32_MAX ? BLK_ZERO : BLK_DATA;
	}
	if (eb & QCOW2_OFLAG_ZERO)
		return BLK_ZERO;
	if (eb & QCOW2_OFFSET_MASK)
		return BLK_DATA;
	return backing ? BLK_DATA : BLK_ZERO;
}

/*
 * Guest clusters whose L2 entries differ between states a and b. A cluster
 * both name identically holds the same bytes: a cluster two states share
 * has a refcount above 1 and is never written in place. Tables shared
 * whole (the same L2 offset) are skipped without being read.
 */
int qcow2_snapshot_diff(struct blk_dev *d, const char *a, const char *b, blk_extent_cb cb,
			void *opaque)
{
	struct qcow2_state *s = qcow2_s(d);
	struct blk_extent_merge x = { .cb = cb, .opaque = opaque };
	uint64_t *la = NULL, *lb = NULL, va = 0, vb = 0;
	uint8_t *ta = NULL, *tb = NULL;
	bool backing = s->backing_file != NULL;
	uint32_t n = s->l1_size;
	int rc;

	if (s->cur_snap >= 0)
		return kl_err(-EINVAL, "%s: open the image, not a snapshot, to diff", d->filename);
	if (!d->read_only)
		KL_TRY(qcow2_flush(d));
	for (uint32_t i = 0; s->snaps && i < s->nb_snapshots; i++)
		n = KL_MAX(n, s->snaps[i].l1_size);
	rc = qdiff_l1(d, a, n, &la, &va);
	if (rc == 0)
		rc = qdiff_l1(d, b, n, &lb, &vb);
	if (rc == 0 && va != vb)
		rc = kl_err(-ENOTSUP, "%s: states of different sizes (%llu, %llu) cannot be compared "
			    "from metadata", d->filename, (unsigned long long)va,
			    (unsigned long long)vb);
	if (rc < 0)
		goto out;
	rc = -ENOMEM;
	ta = kl_malloc(s->cluster_size);
	tb = kl_malloc(s->cluster_size);
	if (!ta || !tb)
		goto out;
	rc = 0;
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		uint64_t oa = la[i] & QCOW2_OFFSET_MASK, ob = lb[i] & QCOW2_OFFSET_MASK;
		uint64_t base = (uint64_t)i << (s->l2_bits + s->cluster_bits);

		if (oa == ob || base >= vb)
			continue;
		rc = qdiff_l2(d, oa, ta);
		if (rc == 0)
			rc = qdiff_l2(d, ob, tb);
		for (uint32_t j = 0; j < s->l2_entries && rc == 0; j++) {
			uint64_t off = base + ((uint64_t)j << s->cluster_bits);
			uint64_t ea = qcow2_l2_entry(s, ta, j) & ~QCOW2_OFLAG_COPIED;
			uint64_t eb = qcow2_l2_entry(s, tb, j) & ~QCOW2_OFLAG_COPIED;
			uint64_t bb = qcow2_l2_bitmap(s, tb, j);

			if (off >= vb)
				break;
			if (ea == eb && qcow2_l2_bitmap(s, ta, j) == bb)
				continue;
			rc = blk_merge_add(&x, off, KL_MIN((uint64_t)s->cluster_size, vb - off),
					   qdiff_type(s, eb, bb, backing));
		}
	}
	if (rc == 0)
		rc = blk_merge_flush(&x);
out:
	kl_free(la);
	kl_free(lb);
	kl_free(ta);
	kl_free(tb);
	return rc;
}
