/*
 * format/keel-alloc.c - refcounts, the block allocator and the refcount
 * tree of .keel images (KEEL-FORMAT.md §5).
 *
 * Every 4 KiB block of the file has a 32-bit reference count. For a
 * writable open (and for check) the whole table is loaded into memory:
 * 4 bytes per 4 KiB block, 0.1% of the file. The copy on disk is a
 * two-or-more-level tree that is copy-on-write like everything else: at
 * commit, every refcount node whose content changed moves to a new block,
 * which itself changes refcounts, so the moves repeat until nothing new
 * needs a home (a few rounds at most, since a leaf covers 4 MiB).
 *
 * Blocks freed since the last commit are still referenced by the committed
 * state that a crash would bring back, so they are "pinned" and not reused
 * until the next header is durable. Blocks allocated and freed within one
 * transaction are not referenced by anything on disk and are reused at once.
 */
#include "format/keel.h"

#include <string.h>

static inline bool bit_get(const uint8_t *map, uint64_t i)
{
	return (map[i >> 3] >> (i & 7)) & 1;
}

static inline void bit_set(uint8_t *map, uint64_t i)
{
	map[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static inline void bit_clear(uint8_t *map, uint64_t i)
{
	map[i >> 3] &= (uint8_t)~(1u << (i & 7));
}

/* Node counts per level for a tree covering nblocks; returns the height. */
static unsigned rc_shape(uint64_t nblocks, uint64_t count[KF_MAX_HEIGHT + 4])
{
	unsigned h = 0;
	uint64_t n = KL_DIV_ROUND_UP(nblocks ? nblocks : 1, KF_RC_PER_LEAF);

	for (;;) {
		count[h++] = n;
		if (n == 1 || h == KF_MAX_HEIGHT + 3)
			break;
		n = KL_DIV_ROUND_UP(n, KF_FANOUT);
	}
	return h;
}

/* Make room for refcounts of blocks [0, want). */
static int rc_reserve(struct kf_state *s, uint64_t want)
{
	uint64_t cap = s->rc_cap;
	uint32_t *rc;
	uint8_t *pin, *tn;

	if (want <= cap)
		return 0;
	while (cap < want)
		cap = cap ? cap * 2 : 8192;
	cap = KL_ALIGN_UP(cap, KF_RC_PER_LEAF);
	rc = kl_realloc(s->rc, cap * sizeof(*rc));
	if (!rc)
		return -ENOMEM;
	s->rc = rc;
	memset(rc + s->rc_cap, 0, (cap - s->rc_cap) * sizeof(*rc));
	pin = kl_realloc(s->pinned, cap / 8);
	if (!pin)
		return -ENOMEM;
	s->pinned = pin;
	memset(pin + s->rc_cap / 8, 0, (cap - s->rc_cap) / 8);
	tn = kl_realloc(s->txn_new, cap / 8);
	if (!tn)
		return -ENOMEM;
	s->txn_new = tn;
	memset(tn + s->rc_cap / 8, 0, (cap - s->rc_cap) / 8);
	s->rc_cap = cap;
	return 0;
}

/* Resize the per-level node records to the shape for s->nblocks. */
static int rc_reshape(struct kf_state *s)
{
	uint64_t count[KF_MAX_HEIGHT + 4] = { 0 };
	unsigned h = rc_shape(s->nblocks, count);

	for (unsigned l = 0; l < h; l++) {
		struct kf_rcnode *v;

		if (count[l] <= s->rcn_count[l])
			continue;
		v = kl_realloc(s->rcn[l], count[l] * sizeof(*v));
		if (!v)
			return -ENOMEM;
		for (uint64_t i = s->rcn_count[l]; i < count[l]; i++)
			v[i] = (struct kf_rcnode){ .dirty = true };
		s->rcn[l] = v;
		s->rcn_count[l] = count[l];
	}
	if (h > s->rc_height) {
		/* a new root level above the old root: its path is new */
		s->rc_height = h;
		s->rc_dirty = true;
	}
	return 0;
}

/* A refcount in leaf `block / 1024` changed: it and its ancestors move at commit. */
static void rc_touch(struct kf_state *s, uint64_t block)
{
	uint64_t idx = block / KF_RC_PER_LEAF;

	for (unsigned l = 0; l < s->rc_height; l++) {
		if (idx < s->rcn_count[l])
			s->rcn[l][idx].dirty = true;
		idx /= KF_FANOUT;
	}
	s->rc_dirty = true;
}

uint32_t kf_rc_get(struct kf_state *s, uint64_t block)
{
	return block < s->nblocks ? s->rc[block] : 0;
}

bool kf_is_txn_new(struct kf_state *s, uint64_t addr)
{
	uint64_t b = addr / KF_BLOCK;

	return b < s->nblocks && bit_get(s->txn_new, b);
}

/* ------------------------------------------------------------------ loading */

static int rc_bad(struct blk_dev *d, const char *what, uint64_t addr)
{
	return kl_err(-EUCLEAN, "%s: refcount tree: %s at offset %llu", d->filename, what,
		      (unsigned long long)addr);
}

static int rc_check_ptr(struct blk_dev *d, const struct kf_ptr *p, uint64_t nblocks)
{
	if (p->addr % KF_BLOCK || p->addr / KF_BLOCK >= nblocks || p->addr < 2 * KF_BLOCK)
		return rc_bad(d, "node address out of range", p->addr);
	return 0;
}

/*
 * Read the refcount tree rooted at root (height h, covering nblocks) into
 * rc[]; record node homes into recs when non-NULL (writable load).
 */
static int rc_read_tree(struct blk_dev *d, const struct kf_ptr *root, unsigned h, uint64_t nblocks,
			uint32_t *rc, struct kf_rcnode **recs)
{
	uint64_t count[KF_MAX_HEIGHT + 4] = { 0 };
	unsigned want_h = rc_shape(nblocks, count);
	uint8_t *buf = kl_malloc(KF_BLOCK);
	struct kf_ptr *level_ptrs = NULL, *next = NULL;
	int rc_ = 0;

	if (!buf)
		return -ENOMEM;
	if (h != want_h) {
		rc_ = kl_err(-EUCLEAN, "%s: refcount tree height %u, expected %u for %llu blocks",
			     d->filename, h, want_h, (unsigned long long)nblocks);
		goto out;
	}
	level_ptrs = kl_malloc(sizeof(*level_ptrs));
	if (!level_ptrs) {
		rc_ = -ENOMEM;
		goto out;
	}
	level_ptrs[0] = *root;
	for (int l = (int)h - 1; l >= 0; l--) {
		uint64_t n = count[l];

		if (l > 0) {
			next = kl_calloc(count[l - 1], sizeof(*next));
			if (!next) {
				rc_ = -ENOMEM;
				goto out;
			}
		}
		for (uint64_t i = 0; i < n; i++) {
			const struct kf_ptr *p = &level_ptrs[i];

			rc_ = rc_check_ptr(d, p, nblocks);
			if (rc_ < 0)
				goto out;
			rc_ = kl_io_pread_full(d->file, p->addr, buf, KF_BLOCK, "refcount node");
			if (rc_ < 0)
				goto out;
			if (kf_sum(d->priv, buf, KF_BLOCK) != p->crc) {
				rc_ = kl_err(-EBADMSG,
					     "%s: refcount node at offset %llu fails its checksum",
					     d->filename, (unsigned long long)p->addr);
				goto out;
			}
			if (recs)
				recs[l][i] = (struct kf_rcnode){ .addr = p->addr, .crc = p->crc };
			if (l == 0) {
				uint64_t base = i * KF_RC_PER_LEAF;

				for (uint64_t k = 0; k < KF_RC_PER_LEAF; k++) {
					uint32_t v = get_le32(buf + 4 * k);

					if (base + k < nblocks)
						rc[base + k] = v;
					else if (v)
						rc_ = rc_bad(d, "refcount past the end of the file",
							     p->addr);
				}
				if (rc_ < 0)
					goto out;
			} else {
				for (uint64_t k = 0; k < KF_FANOUT; k++) {
					uint64_t ci = i * KF_FANOUT + k;
					struct kf_ptr c;

					kf_ptr_get(buf + 16 * k, &c);
					if (ci < count[l - 1]) {
						next[ci] = c;
					} else if (c.addr) {
						rc_ = rc_bad(d, "pointer past the last node", p->addr);
						goto out;
					}
				}
			}
		}
		kl_free(level_ptrs);
		level_ptrs = next;
		next = NULL;
	}
out:
	kl_free(level_ptrs);
	kl_free(next);
	kl_free(buf);
	return rc_;
}

int kf_rc_read_all(struct blk_dev *d, uint32_t **out, uint64_t *nblocks)
{
	struct kf_state *s = d->priv;
	uint32_t *rc;
	int r;

	*out = NULL;
	rc = kl_calloc(KL_ALIGN_UP(s->nblocks_committed, KF_RC_PER_LEAF), sizeof(*rc));
	if (!rc)
		return -ENOMEM;
	r = rc_read_tree(d, &s->rc_root, s->rc_height, s->nblocks_committed, rc, NULL);
	if (r < 0) {
		kl_free(rc);
		return r;
	}
	*out = rc;
	*nblocks = s->nblocks_committed;
	return 0;
}

int kf_rc_load(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	uint64_t count[KF_MAX_HEIGHT + 4] = { 0 };
	unsigned h;
	int r;

	if (s->rc_loaded)
		return 0;
	h = rc_shape(s->nblocks_committed, count);
	if (h != s->rc_height)
		return kl_err(-EUCLEAN, "%s: refcount tree height %u, expected %u", d->filename,
			      s->rc_height, h);
	KL_TRY(rc_reserve(s, s->nblocks_committed));
	for (unsigned l = 0; l < h; l++) {
		s->rcn[l] = kl_calloc(count[l], sizeof(struct kf_rcnode));
		if (!s->rcn[l])
			return -ENOMEM;
		s->rcn_count[l] = count[l];
	}
	s->nblocks = s->nblocks_committed;
	r = rc_read_tree(d, &s->rc_root, h, s->nblocks, s->rc, s->rcn);
	if (r < 0)
		return r;
	s->free_hint = 2;
	s->rc_loaded = true;
	return 0;
}

void kf_rc_free(struct kf_state *s)
{
	kl_free(s->rc);
	kl_free(s->pinned);
	kl_free(s->txn_new);
	s->rc = NULL;
	s->pinned = s->txn_new = NULL;
	s->rc_cap = 0;
	for (unsigned l = 0; l < KL_ARRAY_SIZE(s->rcn); l++) {
		kl_free(s->rcn[l]);
		s->rcn[l] = NULL;
		s->rcn_count[l] = 0;
	}
	s->rc_loaded = false;
}

/* ------------------------------------------------------------------ changes */

int kf_rc_set(struct blk_dev *d, uint64_t block, uint32_t v)
{
	struct kf_state *s = d->priv;

	if (block >= s->nblocks)
		return kl_err(-EUCLEAN, "%s: block %llu beyond the end of the image", d->filename,
			      (unsigned long long)block);
	if (s->rc[block] != v) {
		s->rc[block] = v;
		rc_touch(s, block);
	}
	return 0;
}

int kf_rc_inc(struct blk_dev *d, uint64_t addr, uint64_t n)
{
	struct kf_state *s = d->priv;
	uint64_t b0 = addr / KF_BLOCK;

	if (addr % KF_BLOCK || b0 < 2 || b0 >= s->nblocks || n > s->nblocks - b0)
		return kf_corrupt(d, -EUCLEAN, "reference to blocks %llu+%llu outside the image",
				  (unsigned long long)b0, (unsigned long long)n);
	for (uint64_t b = b0; b < b0 + n; b++) {
		if (s->rc[b] == 0 || s->rc[b] == UINT32_MAX)
			return kf_corrupt(d, -EUCLEAN, "refcount of block %llu is %u on increment",
					  (unsigned long long)b, s->rc[b]);
		s->rc[b]++;
		rc_touch(s, b);
	}
	return 0;
}

int kf_rc_dec(struct blk_dev *d, uint64_t addr, uint64_t n)
{
	struct kf_state *s = d->priv;
	uint64_t b0 = addr / KF_BLOCK;

	if (addr % KF_BLOCK || b0 < 2 || b0 >= s->nblocks || n > s->nblocks - b0)
		return kf_corrupt(d, -EUCLEAN, "release of blocks %llu+%llu outside the image",
				  (unsigned long long)b0, (unsigned long long)n);
	for (uint64_t b = b0; b < b0 + n; b++) {
		if (s->rc[b] == 0)
			return kf_corrupt(d, -EUCLEAN, "refcount of block %llu underflows",
					  (unsigned long long)b);
		s->rc[b]--;
		rc_touch(s, b);
		if (s->rc[b])
			continue;
		if (bit_get(s->txn_new, b)) {
			bit_clear(s->txn_new, b);
			s->scan_fail_n = 0;
			if (b < s->free_hint)
				s->free_hint = b;
		} else {
			bit_set(s->pinned, b);
			s->pinned_blocks++;
		}
	}
	return 0;
}

static inline bool block_free(const struct kf_state *s, uint64_t b)
{
	return s->rc[b] == 0 && !bit_get(s->pinned, b);
}

int kf_alloc(struct blk_dev *d, uint64_t n, uint64_t *addr)
{
	struct kf_state *s = d->priv;
	uint64_t start = UINT64_MAX, run = 0, b;

	if (n == 0)
		return kl_err(-EINVAL, "allocation of zero blocks");
	/*
	 * First fit from the hint inside the file. A scan for at least as
	 * many blocks that failed since the last free cannot succeed now, so
	 * skip it: without this, leftover small holes make every larger
	 * allocation rescan the whole file.
	 */
	b = s->scan_fail_n && n >= s->scan_fail_n ? s->nblocks : KL_MAX(s->free_hint, 2);
	for (; b < s->nblocks; b++) {
		if (!block_free(s, b)) {
			run = 0;
			continue;
		}
		if (run++ == 0)
			start = b;
		if (run == n)
			break;
	}
	if (run < n) {
		s->scan_fail_n = s->scan_fail_n ? KL_MIN(s->scan_fail_n, n) : n;
		/* grow the file: reuse a free tail run, if any */
		if (run == 0)
			start = s->nblocks;
		if (start > (UINT64_MAX / KF_BLOCK) - n)
			return kl_err(-ENOSPC, "%s: image would exceed the maximum size", d->filename);
		KL_TRY(rc_reserve(s, start + n));
		s->nblocks = start + n;
		KL_TRY(rc_reshape(s));
		/* the hint stays: holes below it may fit later, smaller requests */
	} else if (start == KL_MAX(s->free_hint, 2)) {
		s->free_hint = start + n;
	}
	for (b = start; b < start + n; b++) {
		s->rc[b] = 1;
		bit_set(s->txn_new, b);
		rc_touch(s, b);
	}
	*addr = start * KF_BLOCK;
	return 0;
}

/* ------------------------------------------------------------------ commit */

int kf_rc_commit(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	uint8_t *buf;
	bool moved_any;
	int r = 0;

	if (!s->rc_dirty)
		return 0;
	KL_TRY(rc_reshape(s));
	/* give every changed node a new home; homes change refcounts, repeat */
	do {
		moved_any = false;
		for (unsigned l = 0; l < s->rc_height; l++) {
			for (uint64_t i = 0; i < s->rcn_count[l]; i++) {
				struct kf_rcnode *n = &s->rcn[l][i];
				uint64_t old = n->addr, fresh;

				if (!n->dirty || n->moved)
					continue;
				n->moved = true;
				moved_any = true;
				KL_TRY(kf_alloc(d, 1, &fresh));
				n = &s->rcn[l][i]; /* kf_alloc may have grown the arrays */
				n->addr = fresh;
				if (old)
					KL_TRY(kf_rc_dec(d, old, 1));
			}
		}
	} while (moved_any);

	buf = kl_aligned_alloc(KF_BLOCK);
	if (!buf)
		return -ENOMEM;
	for (unsigned l = 0; l < s->rc_height && r == 0; l++) {
		for (uint64_t i = 0; i < s->rcn_count[l] && r == 0; i++) {
			struct kf_rcnode *n = &s->rcn[l][i];

			if (!n->moved)
				continue;
			memset(buf, 0, KF_BLOCK);
			if (l == 0) {
				for (uint64_t k = 0; k < KF_RC_PER_LEAF; k++) {
					uint64_t blk = i * KF_RC_PER_LEAF + k;

					if (blk < s->nblocks)
						put_le32(buf + 4 * k, s->rc[blk]);
				}
			} else {
				for (uint64_t k = 0; k < KF_FANOUT; k++) {
					uint64_t ci = i * KF_FANOUT + k;
					struct kf_ptr c = { 0 };

					if (ci >= s->rcn_count[l - 1])
						break;
					c.addr = s->rcn[l - 1][ci].addr;
					c.crc = s->rcn[l - 1][ci].crc;
					kf_ptr_put(buf + 16 * k, &c);
				}
			}
			n->crc = kf_sum(s, buf, KF_BLOCK);
			r = kl_io_pwrite(d->file, n->addr, buf, KF_BLOCK);
		}
	}
	kl_free(buf);
	if (r < 0)
		return r;
	s->rc_root.addr = s->rcn[s->rc_height - 1][0].addr;
	s->rc_root.crc = s->rcn[s->rc_height - 1][0].crc;
	s->rc_root.aux = 0;
	return 0;
}

/*
 * Give runs of blocks that this commit freed back to the filesystem, so a
 * vault shrinks on disk after a delete or a dedup. Only a speed-up: the
 * blocks are free either way, so a failure is ignored.
 */
static void punch_freed(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	uint64_t run = 0, start = 0;

	for (uint64_t b = 0; b <= s->nblocks; b++) {
		bool freed = b < s->nblocks && bit_get(s->pinned, b) && s->rc[b] == 0;

		if (freed) {
			if (run++ == 0)
				start = b;
			continue;
		}
		if (run >= 16)
			kl_io_discard_hint(d->file, start * KF_BLOCK, run * KF_BLOCK);
		run = 0;
	}
}

void kf_rc_committed(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	uint64_t lowest = s->free_hint;

	if (!s->rc_loaded)
		return;
	if (s->pinned_blocks >= 16)
		punch_freed(d);
	for (uint64_t i = 0; i < s->rc_cap / 8; i++) {
		if (s->pinned[i]) {
			uint64_t b = i * 8 + (uint64_t)__builtin_ctz(s->pinned[i]);

			if (b < lowest)
				lowest = b;
			s->pinned[i] = 0;
		}
		s->txn_new[i] = 0;
	}
	if (s->pinned_blocks)
		s->scan_fail_n = 0;
	s->pinned_blocks = 0;
	s->free_hint = lowest;
	for (unsigned l = 0; l < s->rc_height; l++)
		for (uint64_t i = 0; i < s->rcn_count[l]; i++)
			s->rcn[l][i].dirty = s->rcn[l][i].moved = false;
	s->rc_dirty = false;
	s->nblocks_committed = s->nblocks;
}

int kf_rc_walk_nodes(struct blk_dev *d, int (*fn)(void *opaque, uint64_t addr), void *opaque)
{
	struct kf_state *s = d->priv;
	uint64_t count[KF_MAX_HEIGHT + 4] = { 0 };
	unsigned h = rc_shape(s->nblocks_committed, count);
	struct kf_ptr *cur, *next;
	uint8_t *buf;
	int r = 0;

	if (h != s->rc_height)
		return kl_err(-EUCLEAN, "%s: refcount tree height %u, expected %u", d->filename,
			      s->rc_height, h);
	buf = kl_malloc(KF_BLOCK);
	cur = kl_malloc(sizeof(*cur));
	if (!buf || !cur) {
		kl_free(buf);
		kl_free(cur);
		return -ENOMEM;
	}
	cur[0] = s->rc_root;
	for (int l = (int)h - 1; l >= 0 && r == 0; l--) {
		next = l > 0 ? kl_calloc(count[l - 1], sizeof(*next)) : NULL;
		if (l > 0 && !next) {
			r = -ENOMEM;
			break;
		}
		for (uint64_t i = 0; i < count[l] && r == 0; i++) {
			r = rc_check_ptr(d, &cur[i], s->nblocks_committed);
			if (r == 0)
				r = fn(opaque, cur[i].addr);
			if (r < 0 || l == 0)
				continue;
			r = kl_io_pread_full(d->file, cur[i].addr, buf, KF_BLOCK, "refcount node");
			if (r == 0 && kf_sum(s, buf, KF_BLOCK) != cur[i].crc)
				r = kl_err(-EBADMSG, "%s: refcount node at %llu fails its checksum",
					   d->filename, (unsigned long long)cur[i].addr);
			for (uint64_t k = 0; r == 0 && k < KF_FANOUT; k++) {
				uint64_t ci = i * KF_FANOUT + k;

				if (ci < count[l - 1])
					kf_ptr_get(buf + 16 * k, &next[ci]);
			}
		}
		kl_free(cur);
		cur = next;
	}
	kl_free(cur);
	kl_free(buf);
	return r;
}
