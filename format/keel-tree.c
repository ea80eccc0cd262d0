/*
 * format/keel-tree.c - the cluster map of a .keel image (KEEL-FORMAT.md §4).
 *
 * A radix tree of 4 KiB nodes, 256 16-byte entries each. Leaves map
 * virtual clusters to stored blobs; interior nodes point at children. Every
 * pointer carries the CRC-32C of what it points to, so a torn or misplaced
 * write anywhere below the header is detected on the way down.
 *
 * The tree is copy-on-write with refcounted nodes (as btrfs does): a
 * snapshot shares the current root; the first change below a shared node
 * copies it and takes a reference on each of its children, so snapshot
 * creation is O(1) and the cost of a change is one path of nodes.
 */
#include "format/keel.h"

#include <string.h>

static uint64_t max_stored_len(const struct kf_state *s)
{
	/* a cluster, plus room for an encryption nonce and tag */
	return (uint64_t)s->cluster_size + 64;
}

static uint64_t limit_blocks(const struct kf_state *s)
{
	return s->rc_loaded ? s->nblocks : s->nblocks_committed;
}

/* Is a leaf entry well formed? Returns 0 or -EUCLEAN naming the cluster. */
int kf_entry_check(struct blk_dev *d, uint64_t c, const struct kf_ptr *e)
{
	struct kf_state *s = d->priv;
	unsigned t = kf_type(e->aux);
	uint32_t len = e->aux & KF_LEN_MASK;

	if (e->aux & KF_INFO_RESERVED)
		goto bad;
	if (t != KF_T_DATA) {
		if (t > KF_T_ZERO || e->addr || len)
			goto bad;
		return 0;
	}
	if (e->addr % KF_BLOCK || e->addr < 2 * KF_BLOCK || len == 0 || len > max_stored_len(s) ||
	    kf_comp(e->aux) > KF_COMP_ZLIB)
		goto bad;
	if (!kl_range_ok(e->addr / KF_BLOCK, kf_blocks_of(len), limit_blocks(s)))
		goto bad;
	if (kf_comp(e->aux) == KF_COMP_NONE && !(e->aux & KF_ENCRYPTED) && len != s->cluster_size)
		goto bad;
	if ((e->aux & KF_ENCRYPTED) && !(s->incompat & KF_INCOMPAT_ENCRYPTION))
		goto bad;
	return 0;
bad:
	return kf_corrupt(d, -EUCLEAN,
			  "map entry of cluster %llu (virtual offset %llu) is invalid "
			  "(addr %llu, info %#x)",
			  (unsigned long long)c, (unsigned long long)(c << s->cluster_bits),
			  (unsigned long long)e->addr, e->aux);
}

int kf_node_read(struct blk_dev *d, const struct kf_ptr *p, int level, uint8_t *buf)
{
	struct kf_state *s = d->priv;

	if (p->addr % KF_BLOCK || p->addr < 2 * KF_BLOCK ||
	    p->addr / KF_BLOCK >= limit_blocks(s))
		return kf_corrupt(d, -EUCLEAN, "map node (level %d) at offset %llu is outside the image",
				  level, (unsigned long long)p->addr);
	KL_TRY(kl_io_pread_full(d->file, p->addr, buf, KF_BLOCK, "map node"));
	if (kf_sum(s, buf, KF_BLOCK) != p->crc)
		return kf_corrupt(d, -EBADMSG,
				  "map node (level %d) at offset %llu fails its checksum", level,
				  (unsigned long long)p->addr);
	return 0;
}

/* ------------------------------------------------------------------ the in-memory tree */

static struct kf_node *node_new(int level)
{
	struct kf_node *n = kl_calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->level = level;
	n->buf = kl_aligned_alloc(KF_BLOCK);
	if (!n->buf) {
		kl_free(n);
		return NULL;
	}
	memset(n->buf, 0, KF_BLOCK);
	if (level > 0) {
		n->child = kl_calloc(KF_FANOUT, sizeof(*n->child));
		if (!n->child) {
			kl_free(n->buf);
			kl_free(n);
			return NULL;
		}
	}
	return n;
}

static void node_free(struct kf_node *n)
{
	if (!n)
		return;
	if (n->child)
		for (unsigned i = 0; i < KF_FANOUT; i++)
			node_free(n->child[i]);
	kl_free(n->child);
	kl_free(n->buf);
	kl_free(n);
}

void kf_tree_drop(struct kf_state *s)
{
	node_free(s->rootn);
	s->rootn = NULL;
	s->dirty_nodes = 0;
}

static int node_load(struct blk_dev *d, const struct kf_ptr *p, int level, struct kf_node **out)
{
	struct kf_node *n = node_new(level);
	int rc;

	*out = NULL;
	if (!n)
		return -ENOMEM;
	rc = kf_node_read(d, p, level, n->buf);
	if (rc < 0) {
		node_free(n);
		return rc;
	}
	n->addr = p->addr;
	*out = n;
	return 0;
}

/* Clusters covered by one entry of a node at `level`. */
static inline uint64_t span(int level)
{
	return 1ULL << (KF_FANOUT_BITS * level);
}

static inline unsigned idx_at(uint64_t c, int level)
{
	return (unsigned)((c >> (KF_FANOUT_BITS * level)) & (KF_FANOUT - 1));
}

int kf_lookup(struct blk_dev *d, uint64_t c, struct kf_ptr *e, uint64_t *run)
{
	struct kf_state *s = d->priv;
	int top = (int)s->height - 1;
	struct kf_node *n;

	memset(e, 0, sizeof(*e));
	if (!s->rootn) {
		if (!s->root.addr) {
			*run = span(top + 1) - c;
			return 0;
		}
		KL_TRY(node_load(d, &s->root, top, &s->rootn));
	}
	n = s->rootn;
	for (int l = top; l > 0; l--) {
		unsigned i = idx_at(c, l);

		if (!n->child[i]) {
			struct kf_ptr p;

			kf_ptr_get(n->buf + 16 * i, &p);
			if (!p.addr) {
				/* a null subtree: everything under it is unallocated */
				*run = span(l) - (c & (span(l) - 1));
				return 0;
			}
			KL_TRY(node_load(d, &p, l - 1, &n->child[i]));
		}
		n = n->child[i];
	}
	kf_ptr_get(n->buf + 16 * idx_at(c, 0), e);
	*run = 1;
	return kf_entry_check(d, c, e);
}

/* Take a reference on everything node n points to (it is being copied). */
static int node_incref_children(struct blk_dev *d, const struct kf_node *n)
{
	for (unsigned i = 0; i < KF_FANOUT; i++) {
		struct kf_ptr p;

		kf_ptr_get(n->buf + 16 * i, &p);
		if (!p.addr)
			continue;
		if (n->level == 0) {
			if (kf_type(p.aux) == KF_T_DATA)
				KL_TRY(kf_rc_inc(d, p.addr, kf_blocks_of(p.aux & KF_LEN_MASK)));
		} else {
			KL_TRY(kf_rc_inc(d, p.addr, 1));
		}
	}
	return 0;
}

/*
 * Prepare a clean node for change. Its on-disk home is released: if other
 * trees share it (refcount > 1) we become a copy and reference its children
 * ourselves; if we were its only user, the old home is freed once this
 * transaction commits. Parents must be made writable first (top-down).
 */
static int node_make_writable(struct blk_dev *d, struct kf_node *n)
{
	struct kf_state *s = d->priv;

	if (n->dirty)
		return 0;
	if (n->addr) {
		if (kf_rc_get(s, n->addr / KF_BLOCK) > 1)
			KL_TRY(node_incref_children(d, n));
		KL_TRY(kf_rc_dec(d, n->addr, 1));
		n->addr = 0;
	}
	n->dirty = true;
	s->dirty_nodes++;
	return 0;
}

int kf_set_entry(struct blk_dev *d, uint64_t c, const struct kf_ptr *e, struct kf_ptr *old)
{
	struct kf_state *s = d->priv;
	int top = (int)s->height - 1;
	struct kf_node *n;

	if (!s->rootn) {
		if (s->root.addr)
			KL_TRY(node_load(d, &s->root, top, &s->rootn));
		else if (!(s->rootn = node_new(top)))
			return -ENOMEM;
	}
	n = s->rootn;
	KL_TRY(node_make_writable(d, n));
	for (int l = top; l > 0; l--) {
		unsigned i = idx_at(c, l);

		if (!n->child[i]) {
			struct kf_ptr p;

			kf_ptr_get(n->buf + 16 * i, &p);
			if (p.addr)
				KL_TRY(node_load(d, &p, l - 1, &n->child[i]));
			else if (!(n->child[i] = node_new(l - 1)))
				return -ENOMEM;
		}
		n = n->child[i];
		KL_TRY(node_make_writable(d, n));
	}
	kf_ptr_get(n->buf + 16 * idx_at(c, 0), old);
	KL_TRY(kf_entry_check(d, c, old));
	kf_ptr_put(n->buf + 16 * idx_at(c, 0), e);
	return 0;
}

/* Write a dirty subtree bottom-up; fills *out with the node's new pointer. */
static int node_commit(struct blk_dev *d, struct kf_node *n, struct kf_ptr *out)
{
	struct kf_state *s = d->priv;

	if (n->child) {
		for (unsigned i = 0; i < KF_FANOUT; i++) {
			struct kf_node *c = n->child[i];
			struct kf_ptr p;

			if (!c || !c->dirty)
				continue;
			KL_TRY(node_commit(d, c, &p));
			kf_ptr_put(n->buf + 16 * i, &p);
		}
	}
	KL_TRY(kf_alloc(d, 1, &n->addr));
	out->addr = n->addr;
	out->crc = kf_sum(s, n->buf, KF_BLOCK);
	out->aux = 0;
	KL_TRY(kl_io_pwrite(d->file, n->addr, n->buf, KF_BLOCK));
	n->dirty = false;
	s->dirty_nodes--;
	return 0;
}

int kf_tree_commit(struct blk_dev *d)
{
	struct kf_state *s = d->priv;

	if (!s->rootn || !s->rootn->dirty)
		return 0;
	return node_commit(d, s->rootn, &s->root);
}

/* ------------------------------------------------------------------ references */

int kf_entry_decref(struct blk_dev *d, const struct kf_ptr *e)
{
	struct kf_state *s = d->priv;

	if (kf_type(e->aux) != KF_T_DATA)
		return 0;
	KL_TRY(kf_rc_dec(d, e->addr, kf_blocks_of(e->aux & KF_LEN_MASK)));
	if (kf_rc_get(s, e->addr / KF_BLOCK) == 0)
		kf_dedup_forget(s, e->addr); /* its content is no longer stored */
	return 0;
}

int kf_tree_incref_root(struct blk_dev *d, const struct kf_ptr *p)
{
	return p->addr ? kf_rc_inc(d, p->addr, 1) : 0;
}

int kf_tree_decref(struct blk_dev *d, const struct kf_ptr *p, int level)
{
	struct kf_state *s = d->priv;
	uint8_t *buf;
	int rc = 0;

	if (!p->addr)
		return 0;
	if (kf_rc_get(s, p->addr / KF_BLOCK) != 1)
		return kf_rc_dec(d, p->addr, 1);
	/* last reference: release what the node points to, then the node */
	buf = kl_malloc(KF_BLOCK);
	if (!buf)
		return -ENOMEM;
	rc = kf_node_read(d, p, level, buf);
	for (unsigned i = 0; rc == 0 && i < KF_FANOUT; i++) {
		struct kf_ptr c;

		kf_ptr_get(buf + 16 * i, &c);
		if (level == 0) {
			rc = kf_entry_check(d, 0, &c);
			if (rc == 0)
				rc = kf_entry_decref(d, &c);
		} else {
			rc = kf_tree_decref(d, &c, level - 1);
		}
	}
	kl_free(buf);
	if (rc < 0)
		return rc;
	return kf_rc_dec(d, p->addr, 1);
}

/* ------------------------------------------------------------------ walks from disk */

static int walk(struct blk_dev *d, const struct kf_ptr *p, int level, uint64_t first,
		kf_walk_cb cb, void *opaque)
{
	uint8_t *buf;
	int rc;

	rc = cb(opaque, level, first, p);
	if (rc != 0)
		return rc < 0 ? rc : 0; /* > 0: do not descend */
	buf = kl_malloc(KF_BLOCK);
	if (!buf)
		return -ENOMEM;
	rc = kf_node_read(d, p, level, buf);
	for (unsigned i = 0; rc == 0 && i < KF_FANOUT; i++) {
		struct kf_ptr c;
		uint64_t cf = first + i * span(level);

		kf_ptr_get(buf + 16 * i, &c);
		if (level == 0) {
			rc = kf_entry_check(d, cf, &c);
			if (rc == 0 && kf_type(c.aux) != KF_T_UNALLOC)
				rc = cb(opaque, -1, cf, &c);
			if (rc > 0)
				rc = 0;
		} else if (c.addr) {
			rc = walk(d, &c, level - 1, cf, cb, opaque);
		}
	}
	kl_free(buf);
	return rc;
}

int kf_tree_walk(struct blk_dev *d, const struct kf_ptr *root, unsigned height, kf_walk_cb cb,
		 void *opaque)
{
	if (!root->addr)
		return 0;
	return walk(d, root, (int)height - 1, 0, cb, opaque);
}

static int diff(struct blk_dev *d, const struct kf_ptr *a, const struct kf_ptr *b, int level,
		uint64_t first, kf_diff_cb cb, void *opaque)
{
	struct kf_state *s = d->priv;
	uint8_t *ba = NULL, *bb = NULL;
	int rc = 0;

	if (a->addr == b->addr)
		return 0; /* the same node: the same subtree */
	ba = kl_calloc(1, KF_BLOCK);
	bb = kl_calloc(1, KF_BLOCK);
	if (!ba || !bb) {
		rc = -ENOMEM;
		goto out;
	}
	if (a->addr)
		rc = kf_node_read(d, a, level, ba);
	if (rc == 0 && b->addr)
		rc = kf_node_read(d, b, level, bb);
	for (unsigned i = 0; rc == 0 && i < KF_FANOUT; i++) {
		struct kf_ptr ca, cb_;
		uint64_t cf = first + i * span(level);

		kf_ptr_get(ba + 16 * i, &ca);
		kf_ptr_get(bb + 16 * i, &cb_);
		if (level > 0) {
			rc = diff(d, &ca, &cb_, level - 1, cf, cb, opaque);
			continue;
		}
		if (cf << s->cluster_bits >= s->vsize)
			break;
		if (ca.addr == cb_.addr && ca.aux == cb_.aux && ca.crc == cb_.crc)
			continue;
		rc = kf_entry_check(d, cf, &ca);
		if (rc == 0)
			rc = kf_entry_check(d, cf, &cb_);
		if (rc == 0)
			rc = cb(opaque, cf, &ca, &cb_);
	}
out:
	kl_free(ba);
	kl_free(bb);
	return rc;
}

int kf_tree_diff(struct blk_dev *d, const struct kf_ptr *ra, const struct kf_ptr *rb,
		 unsigned height, kf_diff_cb cb, void *opaque)
{
	return diff(d, ra, rb, (int)height - 1, 0, cb, opaque);
}
