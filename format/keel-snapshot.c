/*
 * format/keel-snapshot.c - internal snapshots of .keel images
 * (KEEL-FORMAT.md §6).
 *
 * A snapshot is a named, refcounted reference to a map-tree root. Creating
 * one costs one reference; deleting one releases what only it held; the
 * clusters changed between two snapshots come from comparing their trees,
 * skipping every subtree whose node they share.
 */
#include "format/keel.h"

#include <stdlib.h>
#include <string.h>

#define SNAP_HDR 16
#define SNAP_FIXED 72

void kf_snap_free(struct kf_state *s)
{
	for (size_t i = 0; i < s->nsnaps; i++)
		kl_free(s->snaps[i].name);
	kl_free(s->snaps);
	s->snaps = NULL;
	s->nsnaps = 0;
}

const struct kf_snap *kf_snap_find(struct kf_state *s, const char *name)
{
	for (size_t i = 0; i < s->nsnaps; i++)
		if (strcmp(s->snaps[i].name, name) == 0)
			return &s->snaps[i];
	/* an id works too, as with qemu-img snapshot */
	for (size_t i = 0; i < s->nsnaps; i++) {
		char id[24];

		snprintf(id, sizeof(id), "%llu", (unsigned long long)s->snaps[i].id);
		if (strcmp(id, name) == 0)
			return &s->snaps[i];
	}
	return NULL;
}

static int snap_bad(struct blk_dev *d, const char *what, uint64_t off)
{
	return kl_err(-EUCLEAN, "%s: snapshot table: %s (table offset %llu)", d->filename, what,
		      (unsigned long long)off);
}

int kf_snap_load(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	const struct kf_ptr *t = &s->snap_table;
	uint64_t len = t->aux, pos = SNAP_HDR, count;
	uint8_t *buf;
	int rc = 0;

	if (!t->addr) {
		if (len)
			return snap_bad(d, "length without a table", 0);
		return 0;
	}
	if (t->addr % KF_BLOCK || t->addr < 2 * KF_BLOCK || len < SNAP_HDR ||
	    len > KF_SNAP_TABLE_MAX ||
	    !kl_range_ok(t->addr / KF_BLOCK, kf_blocks_of(len), s->nblocks_committed))
		return snap_bad(d, "table location or length out of range", 0);
	buf = kl_malloc(len);
	if (!buf)
		return -ENOMEM;
	rc = kl_io_pread_full(d->file, t->addr, buf, len, "snapshot table");
	if (rc < 0)
		goto out;
	if (kf_sum(s, buf, len) != t->crc) {
		rc = kl_err(-EBADMSG, "%s: snapshot table at offset %llu fails its checksum",
			    d->filename, (unsigned long long)t->addr);
		goto out;
	}
	if (memcmp(buf, "KSNP", 4) != 0) {
		rc = snap_bad(d, "bad magic", 0);
		goto out;
	}
	count = get_le32(buf + 4);
	if (count > KF_MAX_SNAPSHOTS || count > (len - SNAP_HDR) / SNAP_FIXED) {
		rc = snap_bad(d, "snapshot count does not fit the table", 4);
		goto out;
	}
	s->snaps = kl_calloc(count ? count : 1, sizeof(*s->snaps));
	if (!s->snaps) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < count; i++) {
		struct kf_snap *sn = &s->snaps[i];
		uint16_t nlen, xlen;
		uint64_t rec;

		if (len - pos < SNAP_FIXED) {
			rc = snap_bad(d, "entry past the end", pos);
			goto out;
		}
		sn->id = get_le64(buf + pos);
		sn->generation = get_le64(buf + pos + 8);
		sn->ctime_ns = get_le64(buf + pos + 16);
		sn->vsize = get_le64(buf + pos + 24);
		kf_ptr_get(buf + pos + 32, &sn->root);
		sn->height = buf[pos + 48];
		nlen = get_le16(buf + pos + 52);
		xlen = get_le16(buf + pos + 54);
		memcpy(sn->guid, buf + pos + 56, 16);
		rec = KL_ALIGN_UP(SNAP_FIXED + (uint64_t)nlen + xlen, 8);
		if (nlen == 0 || nlen > KF_NAME_MAX || rec > len - pos) {
			rc = snap_bad(d, "entry name length out of range", pos);
			goto out;
		}
		if (memchr(buf + pos + SNAP_FIXED, 0, nlen)) {
			rc = snap_bad(d, "entry name contains NUL", pos);
			goto out;
		}
		if (sn->vsize == 0 || sn->vsize > KF_MAX_VSIZE ||
		    sn->height != kf_height_for(sn->vsize, s->cluster_bits)) {
			rc = snap_bad(d, "entry size or tree height out of range", pos);
			goto out;
		}
		sn->name = kl_strndup((const char *)buf + pos + SNAP_FIXED, nlen);
		if (!sn->name) {
			rc = -ENOMEM;
			goto out;
		}
		s->nsnaps = i + 1;
		if (kf_snap_find(s, sn->name) != sn) {
			rc = snap_bad(d, "duplicate snapshot name", pos);
			goto out;
		}
		pos += rec;
	}
out:
	kl_free(buf);
	if (rc < 0)
		kf_snap_free(s);
	return rc;
}

int kf_snap_commit(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	uint64_t len = SNAP_HDR, pos = SNAP_HDR, addr;
	struct kf_ptr old = s->snap_table;
	uint8_t *buf;
	int rc;

	if (!s->snaps_dirty)
		return 0;
	if (s->nsnaps == 0) {
		s->snap_table = (struct kf_ptr){ 0 };
	} else {
		for (size_t i = 0; i < s->nsnaps; i++)
			len += KL_ALIGN_UP(SNAP_FIXED + strlen(s->snaps[i].name), 8);
		if (len > KF_SNAP_TABLE_MAX)
			return kl_err(-ENOSPC, "%s: too many snapshots for the snapshot table",
				      d->filename);
		buf = kl_calloc(1, KL_ALIGN_UP(len, KF_BLOCK));
		if (!buf)
			return -ENOMEM;
		memcpy(buf, "KSNP", 4);
		put_le32(buf + 4, (uint32_t)s->nsnaps);
		for (size_t i = 0; i < s->nsnaps; i++) {
			const struct kf_snap *sn = &s->snaps[i];
			size_t nlen = strlen(sn->name);

			put_le64(buf + pos, sn->id);
			put_le64(buf + pos + 8, sn->generation);
			put_le64(buf + pos + 16, sn->ctime_ns);
			put_le64(buf + pos + 24, sn->vsize);
			kf_ptr_put(buf + pos + 32, &sn->root);
			buf[pos + 48] = sn->height;
			put_le16(buf + pos + 52, (uint16_t)nlen);
			put_le16(buf + pos + 54, 0);
			memcpy(buf + pos + 56, sn->guid, 16);
			memcpy(buf + pos + SNAP_FIXED, sn->name, nlen);
			pos += KL_ALIGN_UP(SNAP_FIXED + nlen, 8);
		}
		rc = kf_alloc(d, kf_blocks_of(len), &addr);
		if (rc == 0)
			rc = kl_io_pwrite(d->file, addr, buf, KL_ALIGN_UP(len, KF_BLOCK));
		if (rc == 0) {
			s->snap_table.addr = addr;
			s->snap_table.crc = kf_sum(s, buf, len);
			s->snap_table.aux = (uint32_t)len;
		}
		kl_free(buf);
		if (rc < 0)
			return rc;
	}
	if (old.addr)
		KL_TRY(kf_rc_dec(d, old.addr, kf_blocks_of(old.aux)));
	s->snaps_dirty = false;
	return 0;
}

/* ------------------------------------------------------------------ operations */

int kf_snapshot_list(struct blk_dev *d, struct blk_snapshot_info **out, size_t *n)
{
	struct kf_state *s = d->priv;
	struct blk_snapshot_info *v;

	*out = NULL;
	*n = 0;
	if (s->nsnaps == 0)
		return 0;
	v = kl_calloc(s->nsnaps, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < s->nsnaps; i++) {
		v[i].id = kl_asprintf("%llu", (unsigned long long)s->snaps[i].id);
		v[i].name = kl_strdup(s->snaps[i].name);
		v[i].vsize = s->snaps[i].vsize;
		v[i].date_ns = s->snaps[i].ctime_ns;
		v[i].generation = s->snaps[i].generation;
		memcpy(v[i].guid, s->snaps[i].guid, 16);
		if (!v[i].id || !v[i].name) {
			blk_snapshot_list_free(v, i + 1);
			return -ENOMEM;
		}
	}
	*out = v;
	*n = s->nsnaps;
	return 0;
}

int kf_snapshot_create(struct blk_dev *d, const char *name)
{
	return kf_snapshot_create_guid(d, name, NULL);
}

int kf_snapshot_create_guid(struct blk_dev *d, const char *name, const uint8_t guid[16])
{
	struct kf_state *s = d->priv;
	struct kf_snap *v, *sn;
	int rc;

	if (s->snap_pending)
		return kl_err(-EBUSY, "%s: a snapshot is already being created", d->filename);
	if (strlen(name) > KF_NAME_MAX)
		return kl_err(-EINVAL, "snapshot name longer than %d bytes", KF_NAME_MAX);
	if (kf_snap_find(s, name))
		return kl_err(-EEXIST, "%s: a snapshot named '%s' exists", d->filename, name);
	if (s->nsnaps >= KF_MAX_SNAPSHOTS)
		return kl_err(-ENOSPC, "%s: at most %d snapshots", d->filename, KF_MAX_SNAPSHOTS);
	/*
	 * The snapshot takes the root the next commit writes, so pending
	 * changes and the snapshot become durable together (keel backup relies
	 * on this: the vault shows the new state only with its snapshot).
	 */
	KL_TRY(kl_io_event("kf.snapshot_create"));
	v = kl_realloc(s->snaps, (s->nsnaps + 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	s->snaps = v;
	sn = &v[s->nsnaps];
	memset(sn, 0, sizeof(*sn));
	sn->name = kl_strdup(name);
	if (!sn->name)
		return -ENOMEM;
	/* from here on, a failure leaves memory ahead of the disk: stop writing */
	sn->id = s->next_snap_id++;
	sn->generation = s->generation + 1;
	sn->ctime_ns = kl_wallclock_ns();
	sn->vsize = s->vsize;
	sn->height = (uint8_t)s->height;
	if (guid && !kl_uuid_is_null(guid))
		memcpy(sn->guid, guid, 16);
	else
		kl_uuid_generate(sn->guid);
	s->nsnaps++;
	s->snaps_dirty = true;
	s->snap_pending = true;
	rc = kf_commit(d);
	(void)v;
	return rc;
}

int kf_snapshot_delete(struct blk_dev *d, const char *name)
{
	struct kf_state *s = d->priv;
	const struct kf_snap *sn = kf_snap_find(s, name);
	size_t i;
	int rc;

	if (!sn)
		return kl_err(-ENOENT, "%s: no snapshot named '%s'", d->filename, name);
	if (s->snap_pending)
		return kl_err(-EBUSY, "%s: a snapshot is being created", d->filename);
	/* in batch mode (prune) several deletes become one commit at flush */
	if (!s->batch)
		KL_TRY(kf_commit(d));
	KL_TRY(kl_io_event("kf.snapshot_delete"));
	i = (size_t)(sn - s->snaps);
	rc = kf_tree_decref(d, &sn->root, (int)sn->height - 1);
	if (rc < 0) {
		s->broken = true; /* refcounts half released: never commit them */
		return rc;
	}
	kl_free(s->snaps[i].name);
	memmove(&s->snaps[i], &s->snaps[i + 1], (s->nsnaps - i - 1) * sizeof(*s->snaps));
	s->nsnaps--;
	s->snaps_dirty = true;
	return s->batch ? 0 : kf_commit(d);
}

int kf_snapshot_revert(struct blk_dev *d, const char *name)
{
	struct kf_state *s = d->priv;
	const struct kf_snap *sn = kf_snap_find(s, name);
	struct kf_ptr old;
	int rc;

	if (!sn)
		return kl_err(-ENOENT, "%s: no snapshot named '%s'", d->filename, name);
	KL_TRY(kf_commit(d));
	KL_TRY(kl_io_event("kf.snapshot_revert"));
	rc = kf_tree_incref_root(d, &sn->root);
	old = s->root;
	if (rc == 0)
		rc = kf_tree_decref(d, &old, (int)s->height - 1);
	if (rc < 0) {
		s->broken = true;
		return rc;
	}
	kf_tree_drop(s);
	s->root = sn->root;
	s->vsize = sn->vsize;
	s->height = sn->height;
	d->size = sn->vsize;
	s->cached_cluster = UINT64_MAX;
	s->snaps_dirty = true; /* forces a header write even when nothing else moved */
	return kf_commit(d);
}

/* ------------------------------------------------------------------ diff */

struct diff_ctx {
	struct blk_dev *d;
	struct blk_extent_merge m;
};

static int diff_one(void *opaque, uint64_t c, const struct kf_ptr *a, const struct kf_ptr *b)
{
	struct diff_ctx *x = opaque;
	struct kf_state *s = x->d->priv;
	uint64_t off = c << s->cluster_bits;

	(void)a;
	return blk_merge_add(&x->m, off, KL_MIN((uint64_t)s->cluster_size, s->vsize - off),
			     kf_type(b->aux) == KF_T_DATA ? BLK_DATA : BLK_ZERO);
}

static int resolve_root(struct blk_dev *d, const char *name, struct kf_ptr *root, unsigned *h,
			uint64_t *vsize)
{
	struct kf_state *s = d->priv;
	const struct kf_snap *sn;

	if (!name) {
		if (!d->read_only)
			KL_TRY(kf_commit(d));
		*root = s->root;
		*h = s->height;
		*vsize = s->vsize;
		return 0;
	}
	sn = kf_snap_find(s, name);
	if (!sn)
		return kl_err(-ENOENT, "%s: no snapshot named '%s'", d->filename, name);
	*root = sn->root;
	*h = sn->height;
	*vsize = sn->vsize;
	return 0;
}

int kf_snapshot_diff(struct blk_dev *d, const char *a, const char *b, blk_extent_cb cb,
		     void *opaque)
{
	struct kf_state *s = d->priv;
	struct diff_ctx x = { .d = d, .m = { .cb = cb, .opaque = opaque } };
	struct kf_ptr ra, rb;
	unsigned ha, hb;
	uint64_t va, vb, saved = s->vsize;
	int rc;

	if (s->view && !a)
		return kl_err(-EINVAL, "%s: open the image, not a snapshot, to diff", d->filename);
	KL_TRY(resolve_root(d, a, &ra, &ha, &va));
	KL_TRY(resolve_root(d, b, &rb, &hb, &vb));
	if (ha != hb)
		return kl_err(-ENOTSUP, "%s: snapshots of different sizes (%llu, %llu) cannot be "
			      "compared from metadata", d->filename, (unsigned long long)va,
			      (unsigned long long)vb);
	s->vsize = KL_MAX(va, vb);
	rc = kf_tree_diff(d, &ra, &rb, ha, diff_one, &x);
	if (rc == 0)
		rc = blk_merge_flush(&x.m);
	s->vsize = saved;
	return rc;
}
