/*
 * format/keel-recv.c - staged receives for replication (KEEL-FORMAT.md §12).
 *
 * While a stream is received, writes build a working tree whose root the
 * header keeps in staging_root, next to map_root, which still names the
 * state readers see. Both roots hold a reference, so the working tree
 * survives commits, crashes and reopening, and a resume continues it. The
 * receiver's opaque progress token rides along in a small blob. Finishing
 * turns the working root into a snapshot and the current state in one
 * commit; aborting drops it.
 */
#include "format/keel.h"

#include <string.h>

void kf_recv_free(struct kf_state *s)
{
	kl_free(s->token);
	s->token = NULL;
	s->token_len = 0;
}

static int token_load(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	const struct kf_ptr *p = &s->token_ptr;
	uint8_t *buf;
	int rc;

	if (!p->addr)
		return 0;
	if (p->addr % KF_BLOCK || p->aux > BLK_RECV_TOKEN_MAX ||
	    !kl_range_ok(p->addr / KF_BLOCK, 1, s->nblocks_committed))
		return kl_err(-EUCLEAN, "%s: receive token location out of range", d->filename);
	buf = kl_malloc(KF_BLOCK);
	if (!buf)
		return -ENOMEM;
	rc = kl_io_pread_full(d->file, p->addr, buf, KF_BLOCK, "receive token");
	if (rc == 0 && kf_sum(s, buf, KF_BLOCK) != p->crc)
		rc = kl_err(-EBADMSG, "%s: receive token at offset %llu fails its checksum",
			    d->filename, (unsigned long long)p->addr);
	if (rc == 0) {
		kl_free(s->token);
		s->token = buf;
		s->token_len = p->aux;
		return 0;
	}
	kl_free(buf);
	return rc;
}

/* Writable open of an image with a receive in progress. */
int kf_recv_open(struct blk_dev *d)
{
	struct kf_state *s = d->priv;

	if (!(s->autoclear & KF_AUTOCLEAR_RECV))
		return 0;
	if (!(d->flags & BLK_OPEN_RECV))
		return kl_err(-EBUSY, "%s: a receive is in progress; resume it with keel recv or "
			      "drop it with keel recv --abort", d->filename);
	KL_TRY(token_load(d));
	s->shown_root = s->root;
	s->root = s->staging_root;
	s->staging = true;
	return 0;
}

int kf_token_commit(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	struct kf_ptr old = s->token_ptr;
	uint8_t *buf;
	uint64_t addr;
	int rc;

	if (!s->token_dirty)
		return 0;
	s->token_ptr = (struct kf_ptr){ 0 };
	if (s->staging && s->token_len) {
		buf = kl_aligned_alloc(KF_BLOCK);
		if (!buf)
			return -ENOMEM;
		memset(buf, 0, KF_BLOCK);
		memcpy(buf, s->token, s->token_len);
		rc = kf_alloc(d, 1, &addr);
		if (rc == 0)
			rc = kl_io_pwrite(d->file, addr, buf, KF_BLOCK);
		if (rc == 0) {
			s->token_ptr.addr = addr;
			s->token_ptr.crc = kf_sum(s, buf, KF_BLOCK);
			s->token_ptr.aux = (uint32_t)s->token_len;
		}
		kl_free(buf);
		if (rc < 0)
			return rc;
	}
	if (old.addr)
		KL_TRY(kf_rc_dec(d, old.addr, 1));
	s->token_dirty = false;
	return 0;
}

int kf_recv_begin(struct blk_dev *d, const char *base)
{
	struct kf_state *s = d->priv;
	const struct kf_snap *sn = NULL;
	int rc;

	if (s->staging)
		return kl_err(-EBUSY, "%s: a receive is already in progress", d->filename);
	if (base && !(sn = kf_snap_find(s, base)))
		return kl_err(-ENOENT, "%s: no snapshot named '%s' to receive onto", d->filename,
			      base);
	if (sn && sn->vsize != s->vsize)
		return kl_err(-ENOTSUP, "%s: snapshot '%s' has another size than the image",
			      d->filename, base);
	KL_TRY(kf_commit(d));
	KL_TRY(kl_io_event("kf.recv_begin"));
	rc = sn ? kf_tree_incref_root(d, &sn->root) : 0;
	if (rc < 0) {
		s->broken = true;
		return rc;
	}
	/* the current root keeps its one reference, now as the shown state */
	s->shown_root = s->root;
	kf_tree_drop(s);
	s->root = sn ? sn->root : (struct kf_ptr){ 0 };
	s->cached_cluster = UINT64_MAX;
	s->staging = true;
	kf_recv_free(s);
	s->token_dirty = true;
	s->snaps_dirty = true; /* the header changes */
	return kf_commit(d);
}

int kf_recv_status(struct blk_dev *d, bool *active, void *token, size_t *len)
{
	struct kf_state *s = d->priv;
	size_t cap = *len;

	*active = s->staging || (s->autoclear & KF_AUTOCLEAR_RECV);
	*len = 0;
	if (!*active)
		return 0;
	if (!s->staging && !s->token)
		KL_TRY(token_load(d)); /* read-only open: the header's token */
	*len = s->token_len;
	if (token && s->token_len <= cap && s->token)
		memcpy(token, s->token, s->token_len);
	return 0;
}

int kf_recv_checkpoint(struct blk_dev *d, const void *token, size_t len)
{
	struct kf_state *s = d->priv;
	uint8_t *t;

	if (!s->staging)
		return kl_err(-EINVAL, "%s: no receive in progress", d->filename);
	t = kl_malloc(len ? len : 1);
	if (!t)
		return -ENOMEM;
	memcpy(t, token, len);
	kl_free(s->token);
	s->token = t;
	s->token_len = len;
	s->token_dirty = true;
	KL_TRY(kl_io_event("kf.recv_checkpoint"));
	return kf_commit(d);
}

int kf_recv_finish(struct blk_dev *d, const char *name, const uint8_t guid[16])
{
	struct kf_state *s = d->priv;
	struct kf_ptr shown;
	int rc;

	if (!s->staging)
		return kl_err(-EINVAL, "%s: no receive in progress", d->filename);
	if (kf_snap_find(s, name))
		return kl_err(-EEXIST, "%s: a snapshot named '%s' exists", d->filename, name);
	if (strlen(name) > KF_NAME_MAX)
		return kl_err(-EINVAL, "snapshot name longer than %d bytes", KF_NAME_MAX);
	KL_TRY(kl_io_event("kf.recv_finish"));
	/*
	 * One commit: the working root becomes a snapshot (the pending one
	 * takes the root the commit writes) and the current state, the shown
	 * root loses the header's reference, the token goes.
	 */
	shown = s->shown_root;
	rc = kf_tree_decref(d, &shown, (int)s->height - 1);
	if (rc < 0) {
		s->broken = true;
		return rc;
	}
	s->staging = false;
	s->shown_root = (struct kf_ptr){ 0 };
	kf_recv_free(s);
	s->token_dirty = true;
	return kf_snapshot_create_guid(d, name, guid);
}

int kf_recv_abort(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	struct kf_ptr work;
	int rc;

	if (!s->staging)
		return kl_err(-EINVAL, "%s: no receive in progress", d->filename);
	KL_TRY(kf_commit(d));
	KL_TRY(kl_io_event("kf.recv_abort"));
	work = s->root;
	rc = kf_tree_decref(d, &work, (int)s->height - 1);
	if (rc < 0) {
		s->broken = true;
		return rc;
	}
	kf_tree_drop(s);
	s->root = s->shown_root;
	s->shown_root = (struct kf_ptr){ 0 };
	s->cached_cluster = UINT64_MAX;
	s->staging = false;
	kf_recv_free(s);
	s->token_dirty = true;
	s->snaps_dirty = true;
	return kf_commit(d);
}
