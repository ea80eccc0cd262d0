/*
 * format/qcow2-cache.c - a small write-back cache of one-cluster tables (L2
 * tables, refcount blocks), in the spirit of qemu/qemu:block/qcow2-cache.c.
 *
 * Lookups try the most recent hit first (sequential I/O walks one table
 * for a long time), then scan; eviction takes the least recently used
 * entry; buffers are allocated on first use. A dirty entry is written back on eviction or flush, but only
 * after the cache it depends on has been flushed and synced: the L2 cache
 * depends on the refcount cache, so a cluster never becomes reachable
 * from an L2 table before its refcount is on disk.
 */
#include "format/qcow2.h"

#include <string.h>

int qcow2_cache_init(struct qcow2_cache *c, size_t n, uint32_t cluster_size, const char *what)
{
	memset(c, 0, sizeof(*c));
	c->what = what;
	c->e = kl_calloc(n, sizeof(*c->e));
	if (!c->e)
		return -ENOMEM;
	c->n = n;
	c->cluster_size = cluster_size;
	return 0;
}

void qcow2_cache_release(struct qcow2_cache *c)
{
	if (!c->e)
		return;
	for (size_t i = 0; i < c->n; i++)
		kl_free(c->e[i].buf);
	kl_free(c->e);
	memset(c, 0, sizeof(*c));
}

static int cache_write_entry(struct blk_dev *d, struct qcow2_cache *c, struct qcow2_cache_entry *e)
{
	struct qcow2_state *s = qcow2_s(d);
	int rc;

	if (!e->dirty)
		return 0;
	if (c->depends && qcow2_cache_has_dirty(c->depends)) {
		bool wrote = false;

		KL_TRY(qcow2_cache_flush(d, c->depends, &wrote));
		if (wrote)
			KL_TRY(kl_io_sync(d->file));
	}
	if (qcow2_overlaps_metadata(d, e->off, s->cluster_size) && c != &s->rbc)
		return qcow2_corrupt(d, "%s: %s at %llu would overwrite other metadata", d->filename,
				     c->what, (unsigned long long)e->off);
	rc = qcow2_file_write(d, e->off, e->buf, s->cluster_size);
	if (rc < 0)
		return kl_err_prefix(rc, "%s: writing %s at %llu", d->filename, c->what,
				     (unsigned long long)e->off);
	e->dirty = false;
	return 0;
}

bool qcow2_cache_has_dirty(const struct qcow2_cache *c)
{
	for (size_t i = 0; i < c->n; i++)
		if (c->e[i].valid && c->e[i].dirty)
			return true;
	return false;
}

int qcow2_cache_get(struct blk_dev *d, struct qcow2_cache *c, uint64_t off, bool load,
		    struct qcow2_cache_entry **out)
{
	struct qcow2_state *s = qcow2_s(d);
	struct qcow2_cache_entry *e = NULL;
	size_t victim = 0;
	uint64_t oldest = UINT64_MAX;
	int rc;

	*out = NULL;
	if (c->e[c->last].valid && c->e[c->last].off == off) {
		e = &c->e[c->last];
		e->lru = ++c->tick;
		*out = e;
		return 0;
	}
	for (size_t i = 0; i < c->n; i++) {
		if (c->e[i].valid && c->e[i].off == off) {
			c->last = i;
			c->e[i].lru = ++c->tick;
			*out = &c->e[i];
			return 0;
		}
		if (!c->e[i].valid) {
			if (oldest) {
				oldest = 0;
				victim = i;
			}
		} else if (c->e[i].lru < oldest) {
			oldest = c->e[i].lru;
			victim = i;
		}
	}
	e = &c->e[victim];
	if (e->valid && e->dirty)
		KL_TRY(cache_write_entry(d, c, e));
	e->valid = false;
	if (!e->buf && !(e->buf = kl_aligned_alloc(s->cluster_size)))
		return -ENOMEM;
	if (load) {
		rc = kl_io_pread_full(d->file, off, e->buf, s->cluster_size, c->what);
		if (rc < 0)
			return rc; /* the message names the file, the table and the offset */
	} else {
		memset(e->buf, 0, s->cluster_size);
	}
	e->off = off;
	e->valid = true;
	e->dirty = false;
	e->lru = ++c->tick;
	c->last = victim;
	*out = e;
	return 0;
}

int qcow2_cache_flush(struct blk_dev *d, struct qcow2_cache *c, bool *wrote)
{
	if (wrote)
		*wrote = false;
	for (size_t i = 0; i < c->n; i++) {
		if (c->e[i].valid && c->e[i].dirty) {
			KL_TRY(cache_write_entry(d, c, &c->e[i]));
			if (wrote)
				*wrote = true;
		}
	}
	return 0;
}

void qcow2_cache_drop(struct qcow2_cache *c, uint64_t off)
{
	for (size_t i = 0; i < c->n; i++)
		if (c->e[i].valid && c->e[i].off == off)
			c->e[i].valid = false;
}
