/*
 * snapshot/commit.c - keel commit: fold a child image into its parent.
 *
 * Order, for crash safety with .keel images: the child first records that
 * its parent may change (parent_commit_begin), then the parent receives the
 * data in one flush, then the child is emptied, then it records the new
 * parent identity. A crash between any two steps leaves a chain that reads
 * the same as before.
 */
#include "snapshot/snapshot.h"

#include <string.h>

#define COMMIT_CHUNK (4u << 20)

int snap_commit(const char *spec, const struct blk_open_opts *o, bool progress,
		struct snap_stats *st)
{
	struct blk_open_opts oo = *o;
	struct blk_dev *top = NULL, *par;
	struct kl_progress *prog = NULL;
	struct blk_info info = { 0 };
	uint8_t *buf = NULL;
	uint64_t off = 0, size;
	double t0 = kl_now();
	int rc;

	memset(st, 0, sizeof(*st));
	oo.flags |= BLK_OPEN_RDWR | BLK_OPEN_PARENT_RDWR;
	KL_TRY(blk_open(spec, &oo, &top));
	par = blk_parent(top);
	if (!par) {
		rc = kl_err(-EINVAL, "%s has no parent to commit into", spec);
		goto out;
	}
	size = blk_size(top);
	if (size > blk_size(par)) {
		rc = kl_err(-ENOTSUP, "%s (%llu bytes) is larger than its parent %s (%llu bytes)",
			    spec, (unsigned long long)size, blk_filename(par),
			    (unsigned long long)blk_size(par));
		goto out;
	}
	rc = blk_info(top, &info);
	if (rc < 0)
		goto out;
	buf = kl_aligned_alloc(COMMIT_CHUNK);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	rc = blk_parent_commit_begin(top);
	if (rc < 0)
		goto out;
	prog = kl_progress_start("committing", size, progress);
	while (off < size) {
		struct blk_extent e;
		size_t n;

		rc = blk_block_status(top, off, size - off, &e);
		if (rc < 0)
			goto out;
		n = (size_t)KL_MIN(e.len, (uint64_t)COMMIT_CHUNK);
		if (e.type == BLK_DATA) {
			rc = blk_pread(top, off, buf, n);
			if (rc == 0)
				rc = blk_pwrite(par, off, buf, n);
			st->bytes_copied += n;
		} else if (e.type == BLK_ZERO) {
			rc = blk_pwrite_zeroes(par, off, n, 0);
			st->bytes_zeroed += n;
		} else {
			n = (size_t)KL_MIN(e.len, size - off);
		}
		if (rc < 0)
			goto out;
		off += e.type == BLK_UNALLOC ? e.len : n;
		kl_progress_set(prog, KL_MIN(off, size));
	}
	rc = blk_flush(par);
	if (rc < 0)
		goto out;
	rc = blk_make_empty(top);
	if (rc == -ENOTSUP) {
		kl_err_clear();
		rc = 0; /* the top keeps its data; the chain still reads the same */
	} else if (rc == 0 && info.parent) {
		rc = blk_set_parent(top, info.parent, info.parent_format, o->flags);
		if (rc == -ENOTSUP) {
			kl_err_clear();
			rc = 0;
		}
	}
	if (rc == 0)
		rc = blk_flush(top);
out:
	kl_progress_finish(prog);
	st->seconds = kl_now() - t0;
	blk_info_release(&info);
	kl_free(buf);
	blk_close(top);
	return rc;
}
