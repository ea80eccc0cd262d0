/*
 * convert/compare.c - guest-visible comparison of two images.
 */
#include "convert/convert.h"

#include <string.h>

#define CMP_CHUNK (4u << 20)

/*
 * One image's extent at the comparison's position, asked for the whole
 * remaining range and kept until the position passes it: each extent is
 * looked up once, however small the reads it is compared in.
 */
struct cmp_side {
	struct blk_dev *d;
	int type; /* BLK_DATA or BLK_ZERO: the chain resolves the rest */
	uint64_t end; /* of the extent; 0 = none yet */
};

static int side_at(struct cmp_side *c, uint64_t off, uint64_t limit)
{
	struct blk_extent e;

	if (off < c->end)
		return 0;
	if (off >= blk_size(c->d)) {
		/* past the smaller image: it reads as zeros */
		c->type = BLK_ZERO;
		c->end = limit;
		return 0;
	}
	KL_TRY(blk_block_status_chain(c->d, off, limit - off, &e));
	c->type = e.type;
	c->end = off + e.len;
	return 0;
}

int conv_compare(struct blk_dev *a, struct blk_dev *b, bool strict, struct conv_compare_result *r)
{
	uint64_t sa = blk_size(a), sb = blk_size(b);
	uint64_t end = KL_MAX(sa, sb);
	struct cmp_side ca = { a, 0, 0 }, cb = { b, 0, 0 };
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
		uint64_t n;

		rc = side_at(&ca, off, end);
		if (rc == 0)
			rc = side_at(&cb, off, end);
		if (rc < 0)
			goto out;
		n = KL_MIN(KL_MIN(ca.end, cb.end), end) - off;
		if (ca.type == BLK_ZERO && cb.type == BLK_ZERO) {
			off += n;
			continue;
		}
		n = KL_MIN(n, (uint64_t)CMP_CHUNK);
		if (ca.type == BLK_ZERO)
			memset(ba, 0, (size_t)n);
		else if ((rc = blk_pread_padded(a, off, ba, (size_t)n)) < 0)
			goto out;
		if (cb.type == BLK_ZERO)
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
