/*
 * snapshot/rebase.c - keel rebase: change an image's parent.
 *
 * Safe mode keeps the guest-visible content: wherever the image has
 * nothing of its own and the old chain shows different bytes than the new
 * parent, the old bytes are copied into the image first. Only then is the
 * parent reference switched, in one metadata commit.
 */
#define _GNU_SOURCE
#include "snapshot/snapshot.h"

#include <libgen.h>
#include <string.h>

/*
 * The run from p (below end) over which the old chain (d, where d itself
 * has nothing) and the new parent np (none: zeros) keep their block status;
 * *zero when both read as zeros there, which needs no comparing. A 4 TiB
 * sparse chain is then rebased by its data, not read whole.
 */
static int status_run(struct blk_dev *d, struct blk_dev *np, uint64_t p, uint64_t end, bool *zero,
		      uint64_t *run_end)
{
	struct blk_extent e;
	uint64_t lim;

	KL_TRY(blk_block_status_chain(d, p, end - p, &e));
	*zero = e.type == BLK_ZERO;
	lim = KL_MIN(end, p + e.len);
	if (np && p < blk_size(np)) {
		KL_TRY(blk_block_status_chain(np, p, lim - p, &e));
		*zero = *zero && e.type == BLK_ZERO;
		lim = KL_MIN(lim, p + e.len);
	}
	*run_end = lim;
	return 0;
}

int snap_rebase(const char *spec, const struct blk_open_opts *o, const char *new_parent,
		const char *new_fmt, bool unsafe, bool progress, struct snap_stats *st)
{
	struct blk_open_opts oo = *o;
	struct blk_dev *d = NULL, *np = NULL;
	struct kl_progress *prog = NULL;
	uint8_t *a = NULL, *b = NULL;
	uint64_t off = 0, size;
	uint32_t cs;
	double t0 = kl_now();
	int rc;

	memset(st, 0, sizeof(*st));
	/*
	 * Ask the format first, on a read-only open: safe mode would otherwise
	 * copy clusters into an image whose parent then cannot be switched, and
	 * a writable open without the parent fails with a message about
	 * something else for formats that refuse it.
	 */
	oo.flags = (oo.flags & ~(unsigned)BLK_OPEN_RDWR) | BLK_OPEN_NO_PARENT;
	KL_TRY(blk_open(spec, &oo, &d));
	rc = blk_can_set_parent(d);
	blk_close(d);
	d = NULL;
	if (rc < 0)
		return rc;
	oo = *o;
	oo.flags |= BLK_OPEN_RDWR;
	if (unsafe)
		oo.flags |= BLK_OPEN_NO_PARENT;
	KL_TRY(blk_open(spec, &oo, &d));
	if (unsafe)
		goto switch_parent;
	if (new_parent) {
		struct blk_open_opts po = { .format = new_fmt,
					    .flags = o->flags & BLK_OPEN_ALLOW_EXTERNAL,
					    .key = o->key,
					    .key_len = o->key_len };
		char *c = kl_strdup(blk_filename(d));
		char *path = NULL;

		if (c)
			path = new_parent[0] == '/' ? kl_strdup(new_parent)
						    : kl_asprintf("%s/%s", dirname(c), new_parent);
		kl_free(c);
		if (!path) {
			rc = -ENOMEM;
			goto out;
		}
		rc = blk_open(path, &po, &np);
		kl_free(path);
		if (rc < 0) {
			rc = kl_err_prefix(rc, "new parent '%s'", new_parent);
			goto out;
		}
	}
	size = blk_size(d);
	cs = blk_cluster_size(d);
	a = kl_aligned_alloc(cs);
	b = kl_aligned_alloc(cs);
	if (!a || !b) {
		rc = -ENOMEM;
		goto out;
	}
	prog = kl_progress_start("rebasing", size, progress);
	while (off < size) {
		struct blk_extent e;
		uint64_t end;

		rc = blk_block_status(d, off, size - off, &e);
		if (rc < 0)
			goto out;
		end = off + e.len;
		if (e.type == BLK_UNALLOC) {
			/* compare old chain and new parent cluster by cluster */
			bool zero = false;

			for (uint64_t p = off, run_end = off; p < end;) {
				uint64_t cend;
				size_t n;

				if (p >= run_end) {
					rc = status_run(d, np, p, end, &zero, &run_end);
					if (rc < 0)
						goto out;
				}
				if (zero) {
					p = run_end;
					continue;
				}
				cend = KL_MIN((p / cs + 1) * cs, run_end);
				n = (size_t)(cend - p);

				rc = blk_pread(d, p, a, n);
				if (rc == 0 && np)
					rc = blk_pread_padded(np, p, b, n);
				else if (rc == 0)
					memset(b, 0, n);
				if (rc < 0)
					goto out;
				if (memcmp(a, b, n) != 0) {
					/* zeros over a parent with data: a zero cluster where the format has them */
					rc = kl_is_zero(a, n) ? blk_pwrite_zeroes(d, p, n, 0)
							      : blk_pwrite(d, p, a, n);
					if (rc < 0)
						goto out;
					st->bytes_copied += n;
				}
				p = cend;
			}
		}
		off = end;
		kl_progress_set(prog, off);
	}
	rc = blk_flush(d);
	if (rc < 0)
		goto out;
switch_parent:
	rc = blk_set_parent(d, new_parent, new_fmt, o->flags);
	if (rc == 0)
		rc = blk_flush(d);
out:
	kl_progress_finish(prog);
	st->seconds = kl_now() - t0;
	kl_free(a);
	kl_free(b);
	blk_close(np);
	blk_close(d);
	return rc;
}
