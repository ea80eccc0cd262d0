/*
 * format/qcow2-snapshot.c - the qcow2 internal snapshot table, read-only:
 * parse and validate it, list it for `keel info`, and find the snapshot
 * that `image.qcow2@NAME` selects (qcow2.rst "Snapshots").
 *
 * Entry: u64 L1 offset, u32 L1 entries, u16 id length, u16 name length,
 * u32 date seconds, u32 date nanoseconds, u64 VM clock ns, u32 VM state
 * size, u32 extra data size, extra data (u64 VM state size, u64 disk
 * size, ...), id, name, padding to 8 bytes.
 */
#include "format/qcow2.h"

#include <string.h>

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
		    uint64_t *next)
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
	*next = KL_ALIGN_UP(pos + QCOW2_SNAP_FIXED + varlen, 8);
	return 0;
}

int qcow2_snapshots_load(struct blk_dev *d, uint64_t vsize)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t pos, limit;
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
		rc = load_one(d, i, pos, limit, vsize, &pos);
		if (rc < 0)
			return rc;
	}
	s->snapshots_size = pos - s->snapshots_offset;
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
