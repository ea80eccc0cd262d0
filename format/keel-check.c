/*
 * format/keel-check.c - consistency check and repair of .keel images.
 *
 * Recomputes the reference count of every block from what the committed
 * header reaches (both header slots, the map trees of the current state
 * and of every snapshot, the snapshot table, the refcount tree itself) and
 * compares it with the stored refcounts. Stored < expected is corruption
 * (the block could be handed out while in use); stored > expected is a
 * leak. --verify-data reads every data cluster and checks its checksum and
 * that it decodes to exactly one cluster. Repairs only ever set refcounts:
 * -r leaks lowers too-high counts, -r all also raises too-low ones.
 */
#include "format/keel.h"

#include <stdlib.h>
#include <string.h>

struct chk {
	struct blk_dev *d;
	uint32_t *exp;
	uint64_t *blob;	  /* per block: aux << 32 | crc of the data blob starting there */
	uint64_t nblocks;
	struct blk_check_report *r;
	unsigned flags;
	const char *tree; /* "current" or the snapshot name, for messages */
	uint8_t *cbuf;
	struct kl_progress *prog; /* --verify-data: bytes of blobs read */
};

/* Count one reference to n blocks at addr; true when the first block was unseen. */
static bool ref(struct chk *x, uint64_t addr, uint64_t n, const char *what)
{
	uint64_t b0 = addr / KF_BLOCK;
	bool first;

	if (addr % KF_BLOCK || !kl_range_ok(b0, n, x->nblocks)) {
		x->r->corruptions++;
		blk_check_msg(x->r, "%s at offset %llu (%llu blocks) lies outside the image",
			      what, (unsigned long long)addr, (unsigned long long)n);
		return false;
	}
	first = x->exp[b0] == 0;
	for (uint64_t b = b0; b < b0 + n; b++)
		if (x->exp[b] != UINT32_MAX)
			x->exp[b]++;
	return first;
}

static void verify_cluster(struct chk *x, uint64_t c, const struct kf_ptr *e)
{
	struct kf_state *s = x->d->priv;

	x->r->checked++;
	kl_progress_add(x->prog, kf_blocks_of(e->aux & KF_LEN_MASK) * KF_BLOCK);
	if (kf_read_blob(x->d, c, e, x->cbuf) < 0) {
		x->r->data_errors++;
		blk_check_msg(x->r, "%s: %s", x->tree, kl_errmsg());
	}
	(void)s;
}

static void walk_node(struct chk *x, const struct kf_ptr *p, int level, uint64_t first)
{
	struct kf_state *s = x->d->priv;
	uint8_t *buf;

	if (!ref(x, p->addr, 1, "map node"))
		return; /* shared with a tree already checked, or out of range */
	buf = kl_malloc(KF_BLOCK);
	if (!buf) {
		x->r->corruptions++;
		return;
	}
	if (kf_node_read(x->d, p, level, buf) < 0) {
		x->r->corruptions++;
		blk_check_msg(x->r, "%s: %s", x->tree, kl_errmsg());
		kl_free(buf);
		return;
	}
	for (unsigned i = 0; i < KF_FANOUT; i++) {
		uint64_t c = first + ((uint64_t)i << (KF_FANOUT_BITS * level));
		struct kf_ptr e;

		kf_ptr_get(buf + 16 * i, &e);
		if (level > 0) {
			if (e.addr)
				walk_node(x, &e, level - 1, c);
			continue;
		}
		if (kf_entry_check(x->d, c, &e) < 0) {
			x->r->corruptions++;
			blk_check_msg(x->r, "%s: %s", x->tree, kl_errmsg());
			continue;
		}
		if (kf_type(e.aux) != KF_T_DATA)
			continue;
		if (ref(x, e.addr, kf_blocks_of(e.aux & KF_LEN_MASK), "cluster data")) {
			x->blob[e.addr / KF_BLOCK] = (uint64_t)e.aux << 32 | e.crc;
			if (x->flags & BLK_CHECK_DATA)
				verify_cluster(x, c, &e);
		}
		if (c << s->cluster_bits >= s->vsize && !strcmp(x->tree, "current")) {
			x->r->corruptions++;
			blk_check_msg(x->r, "cluster %llu mapped beyond the virtual size",
				      (unsigned long long)c);
		}
	}
	kl_free(buf);
}

/* Every dedup record must name a live blob exactly as the map does. */
static int check_dedup_rec(void *opaque, const uint8_t h[32], const struct kf_ptr *e)
{
	struct chk *x = opaque;
	struct kf_state *s = x->d->priv;
	uint64_t b = e->addr / KF_BLOCK;
	uint8_t got[32];

	if (b >= x->nblocks || x->blob[b] != ((uint64_t)e->aux << 32 | e->crc)) {
		x->r->corruptions++;
		blk_check_msg(x->r, "dedup index names a blob at offset %llu that the map does "
			      "not use", (unsigned long long)e->addr);
		if ((x->flags & BLK_CHECK_REPAIR_ALL) == BLK_CHECK_REPAIR_ALL) {
			kf_dedup_forget(s, e->addr);
			x->r->repaired++;
		}
		return 0;
	}
	if (!(x->flags & BLK_CHECK_DATA))
		return 0;
	if (kf_read_blob(x->d, 0, e, x->cbuf) < 0 ||
	    kf_hash_content(s, x->cbuf, s->cluster_size, got) < 0 || memcmp(got, h, 32) != 0) {
		x->r->corruptions++;
		blk_check_msg(x->r, "dedup index hash of the blob at offset %llu does not match "
			      "its content", (unsigned long long)e->addr);
		if ((x->flags & BLK_CHECK_REPAIR_ALL) == BLK_CHECK_REPAIR_ALL) {
			kf_dedup_forget(s, e->addr);
			x->r->repaired++;
		}
	}
	return 0;
}

static int ref_rc_node(void *opaque, uint64_t addr)
{
	ref(opaque, addr, 1, "refcount node");
	return 0;
}

struct count_ctx {
	uint64_t n;
};

static int count_data(void *opaque, int level, uint64_t first, const struct kf_ptr *p)
{
	(void)first;
	if (level < 0 && kf_type(p->aux) == KF_T_DATA)
		((struct count_ctx *)opaque)->n++;
	return 0;
}

int kf_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	struct kf_state *s = d->priv;
	struct chk x = { .d = d, .r = r, .flags = flags };
	struct count_ctx cc = { 0 };
	uint32_t *stored = NULL;
	uint64_t nstored = 0;
	bool repair_any = false;
	uint64_t structural;
	bool was_broken;
	int rc;

	if (s->view)
		return kl_err(-EINVAL, "%s: check the image, not a snapshot of it", d->filename);
	if (!d->read_only)
		KL_TRY(kf_commit(d));
	if ((s->compat & KF_COMPAT_DEDUP) && !s->dedup)
		KL_TRY(kf_dedup_load(d)); /* read-only: only to verify it */
	x.nblocks = s->nblocks_committed;
	x.exp = kl_calloc(x.nblocks, sizeof(*x.exp));
	x.blob = kl_calloc(x.nblocks, sizeof(*x.blob));
	x.cbuf = kl_malloc(s->cluster_size);
	if (!x.exp || !x.blob || !x.cbuf) {
		rc = -ENOMEM;
		goto out;
	}
	/*
	 * Damage the walk reads marks a writable handle broken (kf_corrupt), so
	 * that a writer stops; check only reports it, and repairs nothing over
	 * it (below), so a check that ran leaves the handle as usable as it was.
	 */
	was_broken = s->broken;
	if (flags & BLK_CHECK_DATA)
		x.prog = kl_progress_start("verifying", (uint64_t)x.nblocks * KF_BLOCK,
					   flags & BLK_CHECK_PROGRESS);
	/* header slots */
	x.exp[0] = x.exp[1] = 1;
	x.tree = "current";
	if (s->root.addr)
		walk_node(&x, &s->root, (int)s->height - 1, 0);
	for (size_t i = 0; i < s->nsnaps; i++) {
		x.tree = s->snaps[i].name;
		if (s->snaps[i].root.addr)
			walk_node(&x, &s->snaps[i].root, (int)s->snaps[i].height - 1, 0);
	}
	{
		/* a receive in progress holds its working tree and token */
		struct kf_ptr other = s->staging ? s->shown_root
				      : (s->autoclear & KF_AUTOCLEAR_RECV) ? s->staging_root
									   : (struct kf_ptr){ 0 };

		x.tree = s->staging ? "shown state" : "receive in progress";
		if (other.addr)
			walk_node(&x, &other, (int)s->height - 1, 0);
	}
	x.tree = "metadata";
	if (s->token_ptr.addr)
		ref(&x, s->token_ptr.addr, 1, "receive token");
	if (s->snap_table.addr)
		ref(&x, s->snap_table.addr, kf_blocks_of(s->snap_table.aux), "snapshot table");
	if (s->crypto_hdr.addr)
		ref(&x, s->crypto_hdr.addr, 1, "key-slot table");
	if (s->dedup_root.addr)
		ref(&x, s->dedup_root.addr, kf_blocks_of(s->dedup_root.aux), "dedup index");
	structural = r->corruptions;
	if (s->dedup) {
		kf_dedup_each(s, check_dedup_rec, &x);
		if (r->repaired)
			repair_any = true;
	}
	rc = kf_rc_walk_nodes(d, ref_rc_node, &x);
	if (rc < 0) {
		r->corruptions++;
		structural++;
		blk_check_msg(r, "refcount tree: %s", kl_errmsg());
	}
	/*
	 * A map node that does not read, or a pointer out of the image, cuts
	 * off what it referenced, which then counts as leaked. Freeing it
	 * would hand the data a repair of the node could still find to the
	 * next write, so refcounts stay as they are (dedup records a blob does
	 * not back are still dropped: that loses nothing).
	 */
	if (structural && (flags & BLK_CHECK_REPAIR_LEAKS)) {
		blk_check_msg(r, "refcounts not repaired: %llu error(s) in the map cannot be, and "
			      "what they cut off (reported as leaked) may be the data; copy what "
			      "still reads with keel convert", (unsigned long long)structural);
		flags &= ~(unsigned)BLK_CHECK_REPAIR_ALL;
	}
	if (s->rc_loaded) {
		stored = s->rc;
		nstored = s->nblocks;
	} else {
		rc = kf_rc_read_all(d, &stored, &nstored);
		if (rc < 0) {
			r->corruptions++;
			blk_check_msg(r, "refcounts unreadable: %s", kl_errmsg());
			rc = 0;
			goto out;
		}
	}
	for (uint64_t b = 0; b < x.nblocks && b < nstored; b++) {
		uint32_t have = stored[b], want = x.exp[b];

		if (have == want)
			continue;
		if (want > have) {
			r->corruptions++;
			blk_check_msg(r, "block %llu (offset %llu) is referenced %u times but its "
				      "refcount is %u", (unsigned long long)b,
				      (unsigned long long)b * KF_BLOCK, want, have);
			if ((flags & BLK_CHECK_REPAIR_ALL) == BLK_CHECK_REPAIR_ALL && s->rc_loaded) {
				rc = kf_rc_set(d, b, want);
				if (rc < 0)
					goto out;
				r->repaired++;
				repair_any = true;
			}
		} else {
			r->leaks++;
			blk_check_msg(r, "block %llu (offset %llu) leaked: refcount %u, %u references",
				      (unsigned long long)b, (unsigned long long)b * KF_BLOCK, have,
				      want);
			if ((flags & BLK_CHECK_REPAIR_LEAKS) && s->rc_loaded) {
				rc = kf_rc_set(d, b, want);
				if (rc < 0)
					goto out;
				r->repaired++;
				repair_any = true;
			}
		}
	}
	if (kf_tree_walk(d, &s->root, s->height, count_data, &cc) == 0)
		r->allocated_clusters = cc.n;
	r->total_clusters = (s->vsize + s->cluster_size - 1) >> s->cluster_bits;
	rc = 0;
	if (repair_any) {
		s->free_hint = 2;
		s->scan_fail_n = 0;
		rc = kf_commit(d);
	}
out:
	kl_progress_finish(x.prog);
	if (rc == 0)
		s->broken = was_broken;
	if (stored != s->rc)
		kl_free(stored);
	kl_free(x.exp);
	kl_free(x.blob);
	kl_free(x.cbuf);
	return rc;
}

/* ------------------------------------------------------------------ scrub */

struct collect_ctx {
	struct kf_ref *v;
	size_t n, cap;
	int tree;
};

static int collect(void *opaque, int level, uint64_t first, const struct kf_ptr *p)
{
	struct collect_ctx *x = opaque;

	if (level >= 0 || kf_type(p->aux) != KF_T_DATA)
		return 0;
	if (x->n == x->cap) {
		size_t ncap = x->cap ? x->cap * 2 : 4096;
		struct kf_ref *nv = kl_realloc(x->v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		x->v = nv;
		x->cap = ncap;
	}
	x->v[x->n++] = (struct kf_ref){ p->addr, first, p->aux, p->crc, x->tree };
	return 0;
}

static int cmp_ref(const void *a, const void *b)
{
	const struct kf_ref *x = a, *y = b;

	if (x->addr != y->addr)
		return x->addr < y->addr ? -1 : 1;
	if (x->tree != y->tree)
		return x->tree < y->tree ? -1 : 1;
	return x->cluster < y->cluster ? -1 : x->cluster > y->cluster;
}

int kf_collect_refs(struct blk_dev *d, struct kf_ref **out, size_t *n)
{
	struct kf_state *s = d->priv;
	struct collect_ctx x = { 0 };
	int rc;

	x.tree = -1;
	rc = kf_tree_walk(d, &s->root, s->height, collect, &x);
	for (size_t i = 0; rc == 0 && i < s->nsnaps; i++) {
		x.tree = (int)i;
		rc = kf_tree_walk(d, &s->snaps[i].root, s->snaps[i].height, collect, &x);
	}
	if (rc < 0) {
		kl_free(x.v);
		return rc;
	}
	if (x.n)
		qsort(x.v, x.n, sizeof(*x.v), cmp_ref);
	*out = x.v;
	*n = x.n;
	return 0;
}

int kf_scrub(struct blk_dev *d, blk_scrub_cb cb, void *opaque, bool progress,
	     struct blk_scrub_report *r)
{
	struct kf_state *s = d->priv;
	struct collect_ctx x = { 0 };
	struct kl_progress *prog = NULL;
	uint8_t *buf = NULL;
	uint64_t total = 0;
	int rc = 0;

	if (s->view)
		return kl_err(-EINVAL, "%s: scrub the image, not a snapshot of it", d->filename);
	if (!d->read_only)
		KL_TRY(kf_commit(d));
	/* every reference of every tree; a damaged blob is reported per reference */
	rc = kf_collect_refs(d, &x.v, &x.n);
	if (rc < 0)
		goto out;
	for (size_t i = 0; i < x.n; i++)
		if (i == 0 || x.v[i].addr != x.v[i - 1].addr)
			total += x.v[i].aux & KF_LEN_MASK;
	buf = kl_malloc(s->cluster_size);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	prog = kl_progress_start("scrubbing", total, progress);
	for (size_t i = 0; i < x.n && rc == 0;) {
		struct kf_ptr e = { x.v[i].addr, x.v[i].crc, x.v[i].aux };
		size_t j = i;
		int vr;

		while (j < x.n && x.v[j].addr == x.v[i].addr)
			j++;
		r->blobs++;
		r->bytes += e.aux & KF_LEN_MASK;
		vr = kf_read_blob(d, x.v[i].cluster, &e, buf);
		if (vr < 0) {
			char msg[512];

			snprintf(msg, sizeof(msg), "%s", kl_errmsg());
			r->damaged++;
			for (size_t k = i; k < j && rc == 0; k++) {
				struct blk_scrub_damage dm = {
					.snapshot = x.v[k].tree < 0 ? NULL : s->snaps[x.v[k].tree].name,
					.offset = x.v[k].cluster << s->cluster_bits,
					.length = s->cluster_size,
					.host_off = e.addr,
					.error = msg,
				};

				r->damaged_refs++;
				rc = cb ? cb(opaque, &dm) : 0;
			}
		}
		kl_progress_add(prog, e.aux & KF_LEN_MASK);
		i = j;
	}
out:
	kl_progress_finish(prog);
	kl_free(buf);
	kl_free(x.v);
	return rc;
}
