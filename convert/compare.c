/*
 * convert/compare.c - guest-visible comparison of two images.
 */
#include "convert/convert.h"

#include <string.h>

#define CMP_CHUNK (4u << 20)

static int status_or_zero(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	if (off >= blk_size(d)) {
		memset(e, 0, sizeof(*e));
		e->type = BLK_ZERO;
		e->len = len;
		return 0;
	}
	return blk_block_status_chain(d, off, len, e);
}

int conv_compare(struct blk_dev *a, struct blk_dev *b, bool strict, struct conv_compare_result *r)
{
	uint64_t sa = blk_size(a), sb = blk_size(b);
	uint64_t end = KL_MAX(sa, sb);
	uint64_t off = 0;
	uint8_t *ba, *bb;
	int rc = 0;

	memset(r, 0, sizeof(*r));
	r->identical = true;
	r->size_mismatch = sa != sb;
	if (strict && sa != sb) {
		end = KL_MIN(sa, sb);
	}
	ba = kl_aligned_alloc(CMP_CHUNK);
	bb = kl_aligned_alloc(CMP_CHUNK);
	if (!ba || !bb) {
		rc = -ENOMEM;
		goto out;
	}
	while (off < end) {
		struct blk_extent ea, eb;
		uint64_t n = KL_MIN(end - off, (uint64_t)CMP_CHUNK);

		rc = status_or_zero(a, off, n, &ea);
		if (rc < 0)
			goto out;
		rc = status_or_zero(b, off, n, &eb);
		if (rc < 0)
			goto out;
		n = KL_MIN(n, KL_MIN(ea.len, eb.len));
		if (ea.type == BLK_ZERO && eb.type == BLK_ZERO) {
			off += n;
			continue;
		}
		if (ea.type == BLK_ZERO)
			memset(ba, 0, (size_t)n);
		else if ((rc = blk_pread_padded(a, off, ba, (size_t)n)) < 0)
			goto out;
		if (eb.type == BLK_ZERO)
			memset(bb, 0, (size_t)n);
		else if ((rc = blk_pread_padded(b, off, bb, (size_t)n)) < 0)
			goto out;
		r->bytes_read += n;
		if (memcmp(ba, bb, (size_t)n) != 0) {
			size_t i = 0;

			while (ba[i] == bb[i])
				i++;
			r->identical = false;
			r->first_diff = off + i;
			goto out;
		}
		off += n;
	}
	if (strict && sa != sb) {
		r->identical = false;
		r->first_diff = end;
	}
out:
	kl_free(ba);
	kl_free(bb);
	return rc;
}
