/*
 * format/vmdk-stream.c - streamOptimized output, in the layout VMware's
 * "Virtual Disk Format 5.0" describes and ESXi imports
 * (shared/specs/vmdk.md "streamOptimized"):
 *
 *   header (version 3, gdOffset = GD_AT_END) | descriptor | pad to overHead
 *   grain marker + zlib grain ... (increasing LBA)
 *   GT marker + grain table          after the grains of each table
 *   ...
 *   GD marker + grain directory
 *   FOOTER marker + footer (the header with the real gdOffset)
 *   end-of-stream marker (an all-zero sector)
 *
 * Grains are buffered one at a time and emitted when a write moves past
 * them, so writes must come in increasing offset order (convert's walk);
 * an all-zero grain is never stored. A flush writes the trailer after the
 * last grain and syncs, which leaves a complete stream on disk; a later
 * write continues after the last grain and the next flush rewrites the
 * trailer (and the grain table still open) further on.
 */
#include "format/vmdk.h"

#include <string.h>
#include <zlib.h>

struct vmdk_streamw {
	uint64_t pos;	   /* byte offset for the next grain marker */
	uint64_t cur;	   /* grain being assembled in gbuf, UINT64_MAX = none */
	uint64_t low;	   /* first grain that may still be written */
	uint32_t cur_gt;   /* table whose entries are in gt, UINT32_MAX = none */
	uint32_t *gt;	   /* entries of that table (sectors of grain markers) */
	uint8_t *gbuf;	   /* one grain */
	uint8_t *cbuf;	   /* marker + compressed grain, or marker + table */
	size_t cbuf_cap;
	int level;
	int failed;	   /* sticky: once a write failed the stream is incomplete */
};

int vmdk_marker_read(struct vmdk_extent *x, uint64_t off, uint64_t *lba, uint32_t *size,
		     uint32_t *type)
{
	uint8_t m[16];

	if (!kl_range_ok(off, 12, x->file_size))
		return kl_err(-EUCLEAN, "%s: marker at offset %llu lies past the end of the file",
			      x->name, (unsigned long long)off);
	memset(m, 0, sizeof(m));
	KL_TRY(kl_io_pread_full(x->file, off, m, kl_range_ok(off, 16, x->file_size) ? 16 : 12,
				"stream marker"));
	*lba = get_le64(m);
	*size = get_le32(m + 8);
	*type = get_le32(m + 12);
	return 0;
}

int vmdk_stream_write_trailer(struct kl_file *f, uint64_t pos, const struct vmdk_hdr *h,
			      const uint32_t *gd, uint32_t ngd, uint64_t *end)
{
	uint64_t gd_bytes = KL_ALIGN_UP((uint64_t)ngd * 4, VMDK_SECTOR);
	size_t total = (size_t)(VMDK_SECTOR + gd_bytes + 3 * VMDK_SECTOR);
	struct vmdk_hdr fh = *h;
	uint8_t *b, *p;
	int rc;

	b = kl_calloc(1, total);
	if (!b)
		return -ENOMEM;
	p = b;
	put_le64(p, gd_bytes / VMDK_SECTOR);
	put_le32(p + 12, VMDK_MARKER_GD);
	p += VMDK_SECTOR;
	for (uint32_t i = 0; i < ngd; i++)
		put_le32(p + 4 * (size_t)i, gd[i]);
	p += gd_bytes;
	put_le64(p, 1);
	put_le32(p + 12, VMDK_MARKER_FOOTER);
	p += VMDK_SECTOR;
	fh.gd_off = pos / VMDK_SECTOR + 1;
	vmdk_hdr_encode(&fh, p);
	/* the end-of-stream marker is the zero sector that follows */
	rc = kl_io_pwrite(f, pos, b, total);
	kl_free(b);
	*end = pos + total;
	return rc;
}

int vmdk_stream_begin(struct vmdk_extent *x, int level)
{
	struct vmdk_sparse *s = x->sp;
	struct vmdk_streamw *w;
	uint64_t first = s->h.overhead * VMDK_SECTOR;

	if (first < (s->h.desc_off + s->h.desc_size) * VMDK_SECTOR || first < VMDK_SECTOR)
		return kl_err(-EUCLEAN, "%s: stream overHead %llu overlaps the header or descriptor",
			      x->name, (unsigned long long)s->h.overhead);
	w = kl_calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->pos = first;
	w->cur = UINT64_MAX;
	w->cur_gt = UINT32_MAX;
	w->level = level;
	w->cbuf_cap = KL_ALIGN_UP(12 + compressBound(s->grain_bytes), VMDK_SECTOR);
	w->cbuf_cap = KL_MAX(w->cbuf_cap, VMDK_SECTOR + s->gt_bytes);
	w->gt = kl_calloc(s->h.gtes, 4);
	w->gbuf = kl_malloc(s->grain_bytes);
	w->cbuf = kl_malloc(w->cbuf_cap);
	if (!w->gt || !w->gbuf || !w->cbuf) {
		kl_free(w->gt);
		kl_free(w->gbuf);
		kl_free(w->cbuf);
		kl_free(w);
		return -ENOMEM;
	}
	s->w = w;
	/* grains, tables and the footer all land back to back: gather them */
	return kl_io_combine(x->file, VMDK_STREAM_COMBINE);
}

void vmdk_stream_end(struct vmdk_extent *x)
{
	struct vmdk_streamw *w = x->sp ? x->sp->w : NULL;

	if (!w)
		return;
	kl_free(w->gt);
	kl_free(w->gbuf);
	kl_free(w->cbuf);
	kl_free(w);
	x->sp->w = NULL;
}

static int sector_of(struct vmdk_extent *x, uint64_t pos, uint32_t *out)
{
	if (pos / VMDK_SECTOR >= VMDK_MAX_EXTENT_SECTORS)
		return kl_err(-ENOSPC,
			      "%s: stream reached 2 TiB: grain pointers are 32-bit sectors", x->name);
	*out = (uint32_t)(pos / VMDK_SECTOR);
	return 0;
}

/* Write the open table as GT marker + table at byte pos; returns its size in *len. */
static int put_gt(struct vmdk_extent *x, uint64_t pos, uint64_t *len)
{
	struct vmdk_sparse *s = x->sp;
	struct vmdk_streamw *w = s->w;
	size_t total = (size_t)(VMDK_SECTOR + s->gt_bytes);
	uint32_t sec = 0;

	*len = 0;
	if (w->cur_gt == UINT32_MAX)
		return 0;
	for (uint32_t i = 0; i < s->h.gtes; i++)
		if (w->gt[i])
			goto used;
	return 0;
used:
	KL_TRY(sector_of(x, pos + VMDK_SECTOR, &sec));
	memset(w->cbuf, 0, total);
	put_le64(w->cbuf, s->gt_bytes / VMDK_SECTOR);
	put_le32(w->cbuf + 12, VMDK_MARKER_GT);
	for (uint32_t i = 0; i < s->h.gtes; i++)
		put_le32(w->cbuf + VMDK_SECTOR + 4 * (size_t)i, w->gt[i]);
	KL_TRY(kl_io_pwrite(x->file, pos, w->cbuf, total));
	s->gd[w->cur_gt] = sec;
	*len = total;
	return 0;
}

/* Compress and append grain w->cur. */
static int emit_grain(struct vmdk_extent *x)
{
	struct vmdk_sparse *s = x->sp;
	struct vmdk_streamw *w = s->w;
	uint64_t g = w->cur, gstart = g << s->grain_shift, len;
	size_t visible = (size_t)KL_MIN((uint64_t)s->grain_bytes, x->len - gstart);
	uint32_t span = (uint32_t)(g / s->h.gtes), sec = 0;
	uLongf clen = (uLongf)(w->cbuf_cap - 12);
	size_t total;

	w->cur = UINT64_MAX;
	w->low = g + 1;
	if (kl_is_zero(w->gbuf, visible))
		return 0;
	if (span != w->cur_gt) {
		/* the previous table is complete: it goes after its grains */
		KL_TRY(put_gt(x, w->pos, &len));
		w->pos += len;
		w->cur_gt = span;
		memset(w->gt, 0, (size_t)s->h.gtes * 4);
	}
	if (compress2(w->cbuf + 12, &clen, w->gbuf, s->grain_bytes, w->level) != Z_OK)
		return kl_err(-EIO, "%s: zlib failed to compress grain %llu", x->name,
			      (unsigned long long)g);
	put_le64(w->cbuf, gstart / VMDK_SECTOR);
	put_le32(w->cbuf + 8, (uint32_t)clen);
	total = (size_t)KL_ALIGN_UP(12 + (uint64_t)clen, VMDK_SECTOR);
	memset(w->cbuf + 12 + clen, 0, total - 12 - clen);
	KL_TRY(sector_of(x, w->pos, &sec));
	KL_TRY(kl_io_pwrite(x->file, w->pos, w->cbuf, total));
	w->gt[g % s->h.gtes] = sec;
	w->pos += total;
	return 0;
}

static int order_check(struct vmdk_extent *x, uint64_t rel)
{
	struct vmdk_streamw *w = x->sp->w;
	uint64_t g = rel >> x->sp->grain_shift;

	if (w->failed)
		return kl_err(w->failed, "%s: an earlier write failed; the stream is incomplete",
			      x->name);
	if (g < w->low)
		return kl_err(-ENOTSUP,
			      "%s: streamOptimized output is append-only: a write at offset %llu "
			      "comes after data at offset %llu was already written; writes must "
			      "arrive in increasing offset order (use keel convert)",
			      x->name, (unsigned long long)(x->start + rel),
			      (unsigned long long)(x->start + (w->low << x->sp->grain_shift)));
	return 0;
}

int vmdk_stream_write(struct vmdk_extent *x, uint64_t rel, const uint8_t *buf, size_t len)
{
	struct vmdk_sparse *s = x->sp;
	struct vmdk_streamw *w = s->w;
	uint64_t mask = s->grain_bytes - 1;
	int rc;

	KL_TRY(order_check(x, rel));
	while (len > 0) {
		uint64_t g = rel >> s->grain_shift;
		size_t n = (size_t)KL_MIN((uint64_t)len, s->grain_bytes - (rel & mask));

		if (g != w->cur) {
			if (w->cur != UINT64_MAX && (rc = emit_grain(x)) < 0)
				return w->failed = rc;
			w->cur = g;
			memset(w->gbuf, 0, s->grain_bytes);
		}
		memcpy(w->gbuf + (rel & mask), buf, n);
		buf += n;
		rel += n;
		len -= n;
	}
	return 0;
}

int vmdk_stream_zero(struct vmdk_extent *x, uint64_t rel, uint64_t len)
{
	struct vmdk_sparse *s = x->sp;
	struct vmdk_streamw *w = s->w;
	uint64_t mask = s->grain_bytes - 1, g;

	KL_TRY(order_check(x, rel));
	/* only the grain being assembled can hold data there */
	g = rel >> s->grain_shift;
	if (g == w->cur) {
		size_t n = (size_t)KL_MIN(len, s->grain_bytes - (rel & mask));

		memset(w->gbuf + (rel & mask), 0, n);
	}
	return 0;
}

int vmdk_stream_flush(struct vmdk_extent *x)
{
	struct vmdk_sparse *s = x->sp;
	struct vmdk_streamw *w = s->w;
	uint64_t p, len, end;
	int rc;

	if (w->failed)
		return kl_err(w->failed, "%s: an earlier write failed; the stream is incomplete",
			      x->name);
	if (w->cur != UINT64_MAX && (rc = emit_grain(x)) < 0)
		return w->failed = rc;
	/* the open table goes out now and again, further on, if more grains come */
	rc = put_gt(x, w->pos, &len);
	p = w->pos + len;
	if (rc == 0)
		rc = vmdk_stream_write_trailer(x->file, p, &s->h, s->gd, s->ngd, &end);
	if (rc == 0)
		rc = kl_io_truncate(x->file, end);
	if (rc == 0)
		rc = kl_io_sync(x->file);
	if (rc < 0)
		return w->failed = rc;
	x->file_size = end;
	return 0;
}

/* ------------------------------------------------------------------ encoded writes */

ssize_t vmdk_stream_encode(const struct vmdk_extent *x, uint64_t rel, const void *buf, size_t len,
			   void *out, size_t cap)
{
	const struct vmdk_sparse *s = x->sp;
	uint8_t *o = out, *pad = NULL;
	const void *in = buf;
	size_t total;
	ssize_t n;

	if (cap < 12 + VMDK_SECTOR)
		return kl_err(-EINVAL, "%s: encode buffer too small", x->name);
	if (len < s->grain_bytes) {
		/* the last, short grain is compressed whole, zero-padded, as emit_grain does */
		pad = kl_calloc(1, s->grain_bytes);
		if (!pad)
			return -ENOMEM;
		memcpy(pad, buf, len);
		in = pad;
	}
	n = kl_zlib_compress(6, in, s->grain_bytes, o + 12, cap - 12 - VMDK_SECTOR);
	kl_free(pad);
	if (n <= 0)
		return n; /* 0: let the plain path compress it */
	put_le64(o, (x->start + rel) / VMDK_SECTOR);
	put_le32(o + 8, (uint32_t)n);
	total = (size_t)KL_ALIGN_UP(12 + (uint64_t)n, VMDK_SECTOR);
	memset(o + 12 + n, 0, total - 12 - (size_t)n);
	return (ssize_t)total;
}

int vmdk_stream_put(struct vmdk_extent *x, uint64_t rel, const uint8_t *enc, size_t len,
		    const uint8_t *raw, size_t raw_len)
{
	struct vmdk_sparse *s = x->sp;
	struct vmdk_streamw *w = s->w;
	uint64_t g = rel >> s->grain_shift, glen;
	uint32_t span = (uint32_t)(g / s->h.gtes), sec = 0;
	int rc;

	KL_TRY(order_check(x, rel));
	if (g == w->cur) /* part of this grain came as plain writes: finish it that way */
		return vmdk_stream_write(x, rel, raw, raw_len);
	if (w->cur != UINT64_MAX && (rc = emit_grain(x)) < 0)
		return w->failed = rc;
	if (span != w->cur_gt) {
		if ((rc = put_gt(x, w->pos, &glen)) < 0)
			return w->failed = rc;
		w->pos += glen;
		w->cur_gt = span;
		memset(w->gt, 0, (size_t)s->h.gtes * 4);
	}
	if ((rc = sector_of(x, w->pos, &sec)) < 0 || (rc = kl_io_pwrite(x->file, w->pos, enc, len)) < 0)
		return w->failed = rc;
	w->gt[g % s->h.gtes] = sec;
	w->pos += len;
	w->low = g + 1;
	return 0;
}
