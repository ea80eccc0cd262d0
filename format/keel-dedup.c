/*
 * format/keel-dedup.c - the content-hash index of .keel images
 * (KEEL-FORMAT.md §11).
 *
 * Maps the SHA-256 of a cluster's guest bytes (HMAC-SHA-256 under the MAC
 * key when encrypted, so the index reveals nothing) to the blob holding
 * them. A write whose content is already stored takes a reference on that
 * blob instead of writing. The index is exact: when a blob's last reference
 * goes, its record goes, and the index blob is rewritten in the same commit
 * as the tree, so the index named by a header always matches that header's
 * state. A writer that does not maintain it clears the autoclear bit.
 *
 * In memory: the records in a vector, and two open-addressing tables of
 * record numbers, by hash and by blob address (for "what does cluster X
 * hold", which keel backup asks for every cluster it reads).
 */
#include "format/keel.h"

#include <stdlib.h>
#include <string.h>

#define DD_HDR 32
#define DD_REC 48
#define DD_EMPTY 0u
#define DD_TOMB UINT32_MAX

struct kf_ddrec {
	uint8_t hash[32];
	uint64_t addr; /* 0: deleted */
	uint32_t aux;
	uint32_t crc;
};

struct kf_dedup {
	struct kf_ddrec *v;
	size_t n, cap, live;
	uint32_t *byhash, *byaddr; /* record number + 1, DD_EMPTY or DD_TOMB */
	size_t tcap;		   /* power of two */
	size_t used;		   /* non-empty slots (live + tombstones) */
	bool dirty;
};

static uint64_t h_hash(const uint8_t h[32])
{
	return get_le64(h); /* already uniform */
}

static uint64_t h_addr(uint64_t a)
{
	a ^= a >> 33;
	a *= 0xff51afd7ed558ccdULL;
	a ^= a >> 33;
	return a;
}

static int dd_rehash(struct kf_dedup *x, size_t tcap)
{
	uint32_t *bh = kl_calloc(tcap, sizeof(*bh));
	uint32_t *ba = kl_calloc(tcap, sizeof(*ba));

	if (!bh || !ba) {
		kl_free(bh);
		kl_free(ba);
		return -ENOMEM;
	}
	for (size_t i = 0; i < x->n; i++) {
		size_t j;

		if (!x->v[i].addr)
			continue;
		for (j = h_hash(x->v[i].hash) & (tcap - 1); bh[j]; j = (j + 1) & (tcap - 1))
			;
		bh[j] = (uint32_t)i + 1;
		for (j = h_addr(x->v[i].addr) & (tcap - 1); ba[j]; j = (j + 1) & (tcap - 1))
			;
		ba[j] = (uint32_t)i + 1;
	}
	kl_free(x->byhash);
	kl_free(x->byaddr);
	x->byhash = bh;
	x->byaddr = ba;
	x->tcap = tcap;
	x->used = x->live;
	return 0;
}

static struct kf_ddrec *find_hash(const struct kf_dedup *x, const uint8_t h[32], size_t *slot)
{
	if (!x->tcap)
		return NULL;
	for (size_t j = h_hash(h) & (x->tcap - 1);; j = (j + 1) & (x->tcap - 1)) {
		uint32_t r = x->byhash[j];

		if (r == DD_EMPTY)
			return NULL;
		if (r != DD_TOMB && memcmp(x->v[r - 1].hash, h, 32) == 0) {
			if (slot)
				*slot = j;
			return &x->v[r - 1];
		}
	}
}

static struct kf_ddrec *find_addr(const struct kf_dedup *x, uint64_t addr, size_t *slot)
{
	if (!x->tcap)
		return NULL;
	for (size_t j = h_addr(addr) & (x->tcap - 1);; j = (j + 1) & (x->tcap - 1)) {
		uint32_t r = x->byaddr[j];

		if (r == DD_EMPTY)
			return NULL;
		if (r != DD_TOMB && x->v[r - 1].addr == addr) {
			if (slot)
				*slot = j;
			return &x->v[r - 1];
		}
	}
}

static int dd_add(struct kf_dedup *x, const uint8_t h[32], uint64_t addr, uint32_t aux,
		  uint32_t crc)
{
	size_t j;

	if (x->n >= UINT32_MAX - 2)
		return kl_err(-ENOSPC, "dedup index full");
	if ((x->used + 1) * 2 > x->tcap)
		KL_TRY(dd_rehash(x, x->tcap ? (x->live + 1) * 4 > x->tcap ? x->tcap * 2 : x->tcap
					    : 1024));
	if (x->n == x->cap) {
		size_t ncap = x->cap ? x->cap * 2 : 1024;
		struct kf_ddrec *nv = kl_realloc(x->v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		x->v = nv;
		x->cap = ncap;
	}
	memcpy(x->v[x->n].hash, h, 32);
	x->v[x->n].addr = addr;
	x->v[x->n].aux = aux;
	x->v[x->n].crc = crc;
	for (j = h_hash(h) & (x->tcap - 1); x->byhash[j] && x->byhash[j] != DD_TOMB;
	     j = (j + 1) & (x->tcap - 1))
		;
	if (x->byhash[j] == DD_EMPTY)
		x->used++;
	x->byhash[j] = (uint32_t)x->n + 1;
	for (j = h_addr(addr) & (x->tcap - 1); x->byaddr[j] && x->byaddr[j] != DD_TOMB;
	     j = (j + 1) & (x->tcap - 1))
		;
	x->byaddr[j] = (uint32_t)x->n + 1;
	x->n++;
	x->live++;
	x->dirty = true;
	return 0;
}

void kf_dedup_free(struct kf_state *s)
{
	struct kf_dedup *x = s->dedup;

	if (!x)
		return;
	kl_free(x->v);
	kl_free(x->byhash);
	kl_free(x->byaddr);
	kl_free(x);
	s->dedup = NULL;
}

static int dd_new(struct kf_state *s)
{
	if (s->dedup)
		return 0;
	s->dedup = kl_calloc(1, sizeof(*s->dedup));
	return s->dedup ? 0 : -ENOMEM;
}

/* ------------------------------------------------------------------ the on-disk blob */

int kf_dedup_parse(const uint8_t *b, size_t len, uint64_t *count)
{
	if (len < DD_HDR || memcmp(b, "KDDP", 4) != 0 || get_le32(b + 4) != 1)
		return kl_err(-EUCLEAN, "dedup index: bad magic or version");
	*count = get_le64(b + 8);
	if (*count > (len - DD_HDR) / DD_REC || DD_HDR + *count * DD_REC != len)
		return kl_err(-EUCLEAN, "dedup index: %llu records do not fit %zu bytes",
			      (unsigned long long)*count, len);
	return 0;
}

int kf_dedup_load(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	const struct kf_ptr *p = &s->dedup_root;
	uint64_t count;
	uint8_t *buf;
	int rc;

	KL_TRY(dd_new(s));
	if (!(s->autoclear & KF_AUTOCLEAR_DEDUP_INDEX) || !p->addr) {
		/* none, or left stale by a writer that did not maintain it */
		s->dedup_incomplete = p->addr != 0 || s->root.addr != 0;
		return 0;
	}
	if (p->addr % KF_BLOCK || p->aux < DD_HDR ||
	    !kl_range_ok(p->addr / KF_BLOCK, kf_blocks_of(p->aux), s->nblocks_committed))
		return kl_err(-EUCLEAN, "%s: dedup index location out of range", d->filename);
	buf = kl_malloc(p->aux);
	if (!buf)
		return -ENOMEM;
	rc = kl_io_pread_full(d->file, p->addr, buf, p->aux, "dedup index");
	if (rc == 0 && kf_sum(s, buf, p->aux) != p->crc)
		rc = kl_err(-EBADMSG, "%s: dedup index at offset %llu fails its checksum",
			    d->filename, (unsigned long long)p->addr);
	if (rc == 0)
		rc = kf_dedup_parse(buf, p->aux, &count);
	for (uint64_t i = 0; rc == 0 && i < count; i++) {
		const uint8_t *r = buf + DD_HDR + i * DD_REC;
		uint64_t addr = get_le64(r + 32);

		if (addr % KF_BLOCK || addr < 2 * KF_BLOCK ||
		    addr / KF_BLOCK >= s->nblocks_committed) {
			rc = kl_err(-EUCLEAN, "%s: dedup index record %llu points outside the image",
				    d->filename, (unsigned long long)i);
			break;
		}
		rc = dd_add(s->dedup, r, addr, get_le32(r + 40), get_le32(r + 44));
	}
	kl_free(buf);
	s->dedup->dirty = false;
	return rc;
}

static int cmp_rec(const void *a, const void *b)
{
	return memcmp(((const struct kf_ddrec *)a)->hash, ((const struct kf_ddrec *)b)->hash, 32);
}

int kf_dedup_commit(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	struct kf_dedup *x = s->dedup;
	struct kf_ptr old = s->dedup_root;
	struct kf_ddrec *sorted;
	uint64_t len, addr;
	uint8_t *buf;
	size_t k = 0;
	int rc;

	if (!x || !x->dirty)
		return 0;
	sorted = kl_malloc((x->live ? x->live : 1) * sizeof(*sorted));
	if (!sorted)
		return -ENOMEM;
	for (size_t i = 0; i < x->n; i++)
		if (x->v[i].addr)
			sorted[k++] = x->v[i];
	/* sorted by hash: the same index gives the same bytes */
	qsort(sorted, k, sizeof(*sorted), cmp_rec);
	len = DD_HDR + (uint64_t)k * DD_REC;
	if (len > UINT32_MAX) {
		kl_free(sorted);
		return kl_err(-ENOSPC, "%s: dedup index larger than 4 GiB", d->filename);
	}
	buf = kl_calloc(1, KL_ALIGN_UP(len, KF_BLOCK));
	if (!buf) {
		kl_free(sorted);
		return -ENOMEM;
	}
	memcpy(buf, "KDDP", 4);
	put_le32(buf + 4, 1);
	put_le64(buf + 8, k);
	for (size_t i = 0; i < k; i++) {
		uint8_t *r = buf + DD_HDR + i * DD_REC;

		memcpy(r, sorted[i].hash, 32);
		put_le64(r + 32, sorted[i].addr);
		put_le32(r + 40, sorted[i].aux);
		put_le32(r + 44, sorted[i].crc);
	}
	kl_free(sorted);
	rc = kf_alloc(d, kf_blocks_of(len), &addr);
	if (rc == 0)
		rc = kl_io_pwrite(d->file, addr, buf, KL_ALIGN_UP(len, KF_BLOCK));
	if (rc == 0) {
		s->dedup_root.addr = addr;
		s->dedup_root.crc = kf_sum(s, buf, len);
		s->dedup_root.aux = (uint32_t)len;
	}
	kl_free(buf);
	if (rc < 0)
		return rc;
	if (old.addr)
		KL_TRY(kf_rc_dec(d, old.addr, kf_blocks_of(old.aux)));
	/* compact the vector now that deleted records are gone from disk */
	if (x->n > 2 * x->live + 1024) {
		size_t w = 0;

		for (size_t i = 0; i < x->n; i++)
			if (x->v[i].addr)
				x->v[w++] = x->v[i];
		x->n = w;
		KL_TRY(dd_rehash(x, x->tcap));
	}
	s->autoclear |= KF_AUTOCLEAR_DEDUP_INDEX;
	x->dirty = false;
	return 0;
}

/* ------------------------------------------------------------------ use */

bool kf_dedup_lookup(const struct kf_state *s, const uint8_t h[32], struct kf_ptr *e)
{
	const struct kf_ddrec *r = s->dedup ? find_hash(s->dedup, h, NULL) : NULL;

	if (!r)
		return false;
	e->addr = r->addr;
	e->aux = r->aux;
	e->crc = r->crc;
	return true;
}

bool kf_dedup_hash_of(const struct kf_state *s, uint64_t addr, uint8_t h[32])
{
	const struct kf_ddrec *r = s->dedup ? find_addr(s->dedup, addr, NULL) : NULL;

	if (!r)
		return false;
	memcpy(h, r->hash, 32);
	return true;
}

int kf_dedup_insert(struct kf_state *s, const uint8_t h[32], const struct kf_ptr *e)
{
	if (!s->dedup || find_hash(s->dedup, h, NULL))
		return 0;
	return dd_add(s->dedup, h, e->addr, e->aux, e->crc);
}

/* A blob was freed: its record goes. */
void kf_dedup_forget(struct kf_state *s, uint64_t addr)
{
	struct kf_dedup *x = s->dedup;
	struct kf_ddrec *r;
	size_t sa, sh;

	if (!x || !(r = find_addr(x, addr, &sa)))
		return;
	find_hash(x, r->hash, &sh);
	x->byaddr[sa] = DD_TOMB;
	x->byhash[sh] = DD_TOMB;
	r->addr = 0;
	x->live--;
	x->dirty = true;
}

size_t kf_dedup_count(const struct kf_state *s)
{
	return s->dedup ? s->dedup->live : 0;
}

/* Visit every live record (check). */
int kf_dedup_each(const struct kf_state *s,
		  int (*fn)(void *o, const uint8_t h[32], const struct kf_ptr *e), void *o)
{
	struct kf_dedup *x = s->dedup;

	for (size_t i = 0; x && i < x->n; i++) {
		struct kf_ptr e = { x->v[i].addr, x->v[i].crc, x->v[i].aux };

		if (x->v[i].addr)
			KL_TRY(fn(o, x->v[i].hash, &e));
	}
	return 0;
}

void kf_dedup_clear(struct kf_state *s)
{
	struct kf_dedup *x = s->dedup;

	if (!x)
		return;
	x->n = x->live = x->used = 0;
	if (x->tcap) {
		memset(x->byhash, 0, x->tcap * sizeof(*x->byhash));
		memset(x->byaddr, 0, x->tcap * sizeof(*x->byaddr));
	}
	x->dirty = true;
}

/* ------------------------------------------------------------------ offline dedup */

int kf_dedup_offline(struct blk_dev *d, bool progress, struct blk_stats *st)
{
	struct kf_state *s = d->priv;
	struct kl_progress *prog = NULL;
	struct kf_ref *v = NULL;
	uint8_t *buf = NULL, h[32];
	size_t n = 0;
	int rc;

	KL_TRY(kf_commit(d));
	KL_TRY(dd_new(s));
	s->compat |= KF_COMPAT_DEDUP;
	kf_dedup_clear(s);
	rc = kf_collect_refs(d, &v, &n);
	buf = kl_malloc(s->cluster_size);
	if (rc == 0 && !buf)
		rc = -ENOMEM;
	if (rc < 0)
		goto out;
	prog = kl_progress_start("deduplicating", n, progress);
	/* one pass per distinct blob: the first of each content is canonical */
	for (size_t i = 0; i < n && rc == 0;) {
		struct kf_ptr e = { v[i].addr, v[i].crc, v[i].aux }, canon;
		size_t j = i;

		while (j < n && v[j].addr == v[i].addr)
			j++;
		rc = kf_read_blob(d, v[i].cluster, &e, buf);
		if (rc == 0)
			rc = kf_hash_content(s, buf, s->cluster_size, h);
		if (rc < 0)
			break;
		if (!kf_dedup_lookup(s, h, &canon)) {
			rc = kf_dedup_insert(s, h, &e);
		} else {
			/* repoint the current state's uses; snapshots keep theirs */
			for (size_t k = i; k < j && rc == 0; k++) {
				struct kf_ptr old;

				if (v[k].tree != -1)
					continue;
				rc = kf_rc_inc(d, canon.addr, kf_blocks_of(canon.aux & KF_LEN_MASK));
				if (rc == 0)
					rc = kf_set_entry(d, v[k].cluster, &canon, &old);
				if (rc == 0)
					rc = kf_entry_decref(d, &old);
				st->clusters_deduped++;
			}
		}
		kl_progress_add(prog, j - i);
		i = j;
	}
	if (rc == 0) {
		s->dedup_incomplete = false;
		s->snaps_dirty = true; /* the header changes (feature bits) */
		rc = kf_commit(d);
	} else {
		s->broken = true;
	}
out:
	kl_progress_finish(prog);
	kl_free(buf);
	kl_free(v);
	return rc;
}
