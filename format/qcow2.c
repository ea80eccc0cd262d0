/*
 * format/qcow2.c - QEMU's qcow2 (versions 2 and 3): probe, open (header,
 * extensions and every table offset validated against the file), create,
 * info, flush and the driver table. Mapping lives in qcow2-cluster.c,
 * refcounts and allocation in qcow2-refcount.c, snapshots in
 * qcow2-snapshot.c (see qcow2.h; format digest in shared/specs/qcow2.md).
 *
 * Writing keeps the image consistent for `qemu-img check` at every flush:
 * refcount increments reach the disk before the L2 tables that use the
 * clusters, L2 tables before the L1 entries that point at them, and
 * references are dropped only after the tables no longer hold them.
 */
#define _GNU_SOURCE
#include "format/qcow2.h"

#include <pthread.h>
#include <string.h>

/* ------------------------------------------------------------------ helpers */

int qcow2_corrupt(struct blk_dev *d, const char *fmt, ...)
{
	struct qcow2_state *s = qcow2_s(d);
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (!d->read_only)
		s->broken = true;
	return kl_err(-EUCLEAN, "%s", buf);
}

int qcow2_file_write(struct blk_dev *d, uint64_t off, const void *buf, size_t len)
{
	struct qcow2_state *s = qcow2_s(d);

	KL_TRY(kl_io_pwrite(d->file, off, buf, len));
	s->unsynced = true;
	if (off + len > s->file_size)
		s->file_size = off + len;
	return 0;
}

int qcow2_write_l1(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);
	uint32_t lo = s->l1_dirty_lo, hi = s->l1_dirty_hi;
	uint8_t *buf;
	int rc;

	if (lo > hi)
		return 0;
	buf = kl_malloc((size_t)(hi - lo + 1) * 8);
	if (!buf)
		return -ENOMEM;
	for (uint32_t i = lo; i <= hi; i++)
		put_be64(buf + (size_t)(i - lo) * 8, s->l1[i]);
	rc = qcow2_file_write(d, s->l1_offset + (uint64_t)lo * 8, buf, (size_t)(hi - lo + 1) * 8);
	kl_free(buf);
	if (rc < 0)
		return kl_err_prefix(rc, "%s: writing the L1 table", d->filename);
	s->l1_dirty_lo = UINT32_MAX;
	s->l1_dirty_hi = 0;
	return 0;
}

int qcow2_prepare_write(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);
	uint8_t b[8];

	if (s->broken)
		return kl_err(-EUCLEAN,
			      "%s: corrupt metadata was found earlier; refusing further writes "
			      "(run 'keel check %s')",
			      d->filename, d->filename);
	if (s->cur_snap >= 0)
		return kl_err(-EROFS, "%s: a snapshot is never writable", d->filename);
	if (s->backing_file && !d->parent)
		return kl_err(-EINVAL, "%s: opened without its backing file '%s'; writing would lose "
			      "the data it provides", d->filename, s->backing_file);
	if (s->wrote_header_bits)
		return 0;
	/*
	 * Autoclear bits promise things (consistent dirty bitmaps) that our
	 * writes would break; the spec says a writer that does not maintain
	 * them clears them before its first write.
	 */
	if (s->version >= 3 && s->autoclear) {
		s->autoclear = 0;
		put_be64(b, 0);
		KL_TRY(qcow2_file_write(d, QCOW2_HDR_AUTOCLEAR, b, 8));
		KL_TRY(kl_io_sync(d->file));
	}
	s->wrote_header_bits = true;
	return 0;
}

/*
 * compress=on is a create option (keel convert -c sets it), but writes
 * happen through the handle opened afterwards. The create call marks the
 * new file (device + inode); the first writable open in this process takes
 * the mark. An explicit compress=on in the open options works as well.
 */
static pthread_mutex_t qcow2_mark_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	uint64_t dev, ino;
	bool used;
} qcow2_marks[16];
static unsigned qcow2_mark_next;

static void qcow2_put_compress_mark(struct kl_file *f)
{
	uint64_t dev, ino;

	if (kl_io_identity(f, &dev, &ino) < 0) {
		kl_err_clear();
		return;
	}
	pthread_mutex_lock(&qcow2_mark_lock);
	qcow2_marks[qcow2_mark_next % KL_ARRAY_SIZE(qcow2_marks)].dev = dev;
	qcow2_marks[qcow2_mark_next % KL_ARRAY_SIZE(qcow2_marks)].ino = ino;
	qcow2_marks[qcow2_mark_next % KL_ARRAY_SIZE(qcow2_marks)].used = true;
	qcow2_mark_next++;
	pthread_mutex_unlock(&qcow2_mark_lock);
}

bool qcow2_take_compress_mark(struct kl_file *f)
{
	uint64_t dev, ino;
	bool found = false;

	if (kl_io_identity(f, &dev, &ino) < 0) {
		kl_err_clear();
		return false;
	}
	pthread_mutex_lock(&qcow2_mark_lock);
	for (size_t i = 0; i < KL_ARRAY_SIZE(qcow2_marks); i++) {
		if (qcow2_marks[i].used && qcow2_marks[i].dev == dev && qcow2_marks[i].ino == ino) {
			qcow2_marks[i].used = false;
			found = true;
		}
	}
	pthread_mutex_unlock(&qcow2_mark_lock);
	return found;
}

/* ------------------------------------------------------------------ probe */

static int qcow2_probe(const struct blk_probe_buf *pb)
{
	if (pb->head_len < 8 || get_be32(pb->head) != QCOW2_MAGIC)
		return 0;
	/*
	 * Any version bids: qcow version 1 shares the magic, and reading it as
	 * raw would be silently wrong; open then refuses it by name.
	 */
	return 100;
}

/* ------------------------------------------------------------------ open */

static const char *feature_name(struct qcow2_state *s, unsigned type, unsigned bit, char *buf,
				size_t len)
{
	for (uint32_t i = 0; i + 48 <= s->feature_table_len; i += 48) {
		const uint8_t *e = s->feature_table + i;

		if (e[0] == type && e[1] == bit) {
			size_t n = 0;

			while (n < 46 && e[2 + n] && e[2 + n] >= 0x20 && e[2 + n] < 0x7f)
				n++;
			snprintf(buf, len, "'%.*s'", (int)n, (const char *)e + 2);
			return buf;
		}
	}
	snprintf(buf, len, "no name in the image's feature table");
	return buf;
}

static bool printable(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] < 0x20 || p[i] >= 0x7f)
			return false;
	return true;
}

static int parse_extensions(struct blk_dev *d, const uint8_t *c0, uint32_t start, uint32_t end)
{
	struct qcow2_state *s = qcow2_s(d);
	uint32_t pos = start;

	while (end >= 8 && pos <= end - 8) {
		uint32_t type = get_be32(c0 + pos);
		uint32_t len = get_be32(c0 + pos + 4);
		const uint8_t *p = c0 + pos + 8;

		if (type == QCOW2_EXT_END)
			return 0;
		if (len > end - pos - 8)
			return kl_err(-EUCLEAN,
				      "%s: header extension 0x%08x at offset %u: length %u runs past "
				      "the end of the header area (%u)",
				      d->filename, type, pos, len, end);
		switch (type) {
		case QCOW2_EXT_BACKING_FORMAT:
			if (len == 0 || len > 63 || !printable(p, len))
				return kl_err(-EUCLEAN,
					      "%s: backing format extension at offset %u: %u bytes "
					      "is not a format name",
					      d->filename, pos, len);
			kl_free(s->backing_format);
			s->backing_format = kl_strndup((const char *)p, len);
			if (!s->backing_format)
				return -ENOMEM;
			break;
		case QCOW2_EXT_FEATURE_TABLE:
			kl_free(s->feature_table);
			s->feature_table = kl_malloc(len);
			if (!s->feature_table)
				return -ENOMEM;
			memcpy(s->feature_table, p, len);
			s->feature_table_len = len;
			break;
		case QCOW2_EXT_BITMAPS:
			if (len < 24)
				return kl_err(-EUCLEAN,
					      "%s: bitmaps extension at offset %u: %u bytes, at least "
					      "24 expected",
					      d->filename, pos, len);
			s->has_bitmaps = true;
			s->nb_bitmaps = get_be32(p);
			s->bitmap_dir_size = get_be64(p + 8);
			s->bitmap_dir_offset = get_be64(p + 16);
			break;
		case QCOW2_EXT_CRYPTO:
			if (len != 16)
				return kl_err(-EUCLEAN,
					      "%s: encryption header extension at offset %u: %u bytes, "
					      "16 expected", d->filename, pos, len);
			s->crypt_off = get_be64(p);
			s->crypt_len = get_be64(p + 8);
			break;
		case QCOW2_EXT_DATA_FILE:
			if (len == 0 || len > QCOW2_MAX_BACKING_NAME || memchr(p, 0, len))
				return kl_err(-EUCLEAN,
					      "%s: data file name extension at offset %u: %u bytes%s "
					      "(1..%u without NUL bytes allowed)",
					      d->filename, pos, len, len && memchr(p, 0, len) ?
					      " with a NUL byte" : "", QCOW2_MAX_BACKING_NAME);
			kl_free(s->data_file);
			s->data_file = kl_strndup((const char *)p, len);
			if (!s->data_file)
				return -ENOMEM;
			break;
		default:
			break; /* unknown extensions are skipped (qcow2.rst) */
		}
		pos += 8 + (uint32_t)KL_ALIGN_UP(len, 8);
	}
	return 0;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return alen && blen && a < b + blen && b < a + alen;
}

static int load_table(struct blk_dev *d, uint64_t off, uint64_t entries, const char *what,
		      uint64_t **out)
{
	struct qcow2_state *s = qcow2_s(d);
	uint8_t *raw;
	uint64_t *t;
	int rc;

	*out = NULL;
	if (!kl_range_ok(off, entries * 8, s->file_size))
		return kl_err(-EUCLEAN, "%s: %s at %llu (%llu bytes) lies past the end of the file (%llu)",
			      d->filename, what, (unsigned long long)off,
			      (unsigned long long)(entries * 8), (unsigned long long)s->file_size);
	t = kl_calloc((size_t)(entries ? entries : 1), 8);
	raw = kl_malloc((size_t)(entries ? entries * 8 : 1));
	if (!t || !raw) {
		kl_free(t);
		kl_free(raw);
		return -ENOMEM;
	}
	rc = entries ? kl_io_pread_full(d->file, off, raw, (size_t)entries * 8, what) : 0;
	if (rc < 0) {
		kl_free(t);
		kl_free(raw);
		return rc;
	}
	for (uint64_t i = 0; i < entries; i++)
		t[i] = get_be64(raw + i * 8);
	kl_free(raw);
	*out = t;
	return 0;
}

/* Select which L1 table this handle reads: the active one or a snapshot's. */
static int load_l1(struct blk_dev *d, uint64_t l1_off, uint32_t l1_size, uint64_t vsize,
		   const char *what)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t cover = (uint64_t)s->l2_entries << s->cluster_bits;
	uint64_t need = vsize / cover + (vsize % cover ? 1 : 0);

	if ((uint64_t)l1_size * 8 > QCOW2_MAX_L1_BYTES)
		return kl_err(-EUCLEAN, "%s: %s has %u entries, more than the %u allowed", d->filename,
			      what, l1_size, QCOW2_MAX_L1_BYTES / 8);
	if (need > l1_size)
		return kl_err(-EUCLEAN,
			      "%s: %s has %u entries but the virtual size %llu needs %llu",
			      d->filename, what, l1_size, (unsigned long long)vsize,
			      (unsigned long long)need);
	if (l1_size && (l1_off % s->cluster_size || l1_off < s->cluster_size))
		return kl_err(-EUCLEAN, "%s: %s offset %llu is not a cluster-aligned offset past the "
			      "header", d->filename, what, (unsigned long long)l1_off);
	KL_TRY(load_table(d, l1_off, l1_size, what, &s->l1));
	s->l1_offset = l1_off;
	s->l1_size = l1_size;
	s->l1_dirty_lo = UINT32_MAX;
	s->l1_dirty_hi = 0;
	return 0;
}

static void qcow2_close(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);

	if (!s)
		return;
	qcow2_cache_release(&s->l2c);
	qcow2_cache_release(&s->rbc);
	kl_free(s->l1);
	kl_free(s->rt);
	qcow2_snapshots_free(d);
	kl_free(s->backing_file);
	kl_free(s->backing_format);
	kl_free(s->data_file);
	kl_io_close(s->dfile);
	luks_close(s->luks);
	kl_free(s->feature_table);
	qcow2_workers_release(d);
	kl_free(s->wbuf);
	kl_free(s->pbuf);
	kl_free(s->frees);
	kl_free(s->rb_offsets);
	kl_free(s->check_refs);
	memset(s, 0, sizeof(*s));
}

static int parse_header(struct blk_dev *d, uint64_t *vsize)
{
	struct qcow2_state *s = qcow2_s(d);
	uint8_t head[QCOW2_V3_HEADER_WRITE] = { 0 };
	uint8_t *c0 = NULL;
	uint64_t backing_off, l1_off, size;
	uint32_t backing_len, crypt, l1_size, ext_end, c0len;
	char fname[80];
	ssize_t n;
	int rc;

	if (s->file_size < QCOW2_V2_HEADER_LEN)
		return kl_err(-EUCLEAN, "%s: file is %llu bytes, too short for a qcow2 header (%u)",
			      d->filename, (unsigned long long)s->file_size, QCOW2_V2_HEADER_LEN);
	n = kl_io_pread(d->file, 0, head, sizeof(head));
	if (n < 0)
		return (int)n;
	if (get_be32(head) != QCOW2_MAGIC)
		return kl_err(-EUCLEAN, "%s: not a qcow2 image (magic %08x, expected %08x)",
			      d->filename, get_be32(head), QCOW2_MAGIC);
	s->version = get_be32(head + 4);
	if (s->version == 1)
		return kl_err(-ENOTSUP, "%s: qcow version 1 images are not supported (convert with "
			      "qemu-img first)", d->filename);
	if (s->version != 2 && s->version != 3)
		return kl_err(-ENOTSUP, "%s: qcow2 version %u is not supported (2 and 3 are)",
			      d->filename, s->version);
	s->cluster_bits = get_be32(head + 20);
	if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
		return kl_err(-EUCLEAN, "%s: cluster_bits %u at offset 20 is outside %u..%u",
			      d->filename, s->cluster_bits, QCOW2_MIN_CLUSTER_BITS,
			      QCOW2_MAX_CLUSTER_BITS);
	s->cluster_size = 1u << s->cluster_bits;
	if (s->version == 2) {
		s->header_length = QCOW2_V2_HEADER_LEN;
		s->refcount_order = 4;
	} else {
		s->header_length = get_be32(head + 100);
		s->incompat = get_be64(head + 72);
		s->compat = get_be64(head + 80);
		s->autoclear = get_be64(head + 88);
		s->refcount_order = get_be32(head + 96);
		if (s->header_length < QCOW2_V3_HEADER_LEN || s->header_length % 8 ||
		    s->header_length > s->cluster_size)
			return kl_err(-EUCLEAN,
				      "%s: header_length %u at offset 100 must be a multiple of 8 "
				      "between %u and the cluster size %u",
				      d->filename, s->header_length, QCOW2_V3_HEADER_LEN,
				      s->cluster_size);
		if (s->file_size < s->header_length)
			return kl_err(-EUCLEAN, "%s: file is %llu bytes, shorter than its header (%u)",
				      d->filename, (unsigned long long)s->file_size,
				      s->header_length);
		if (s->header_length > 104)
			s->compression_type = head[104];
	}
	if (s->refcount_order > 6)
		return kl_err(-EUCLEAN, "%s: refcount_order %u at offset 96 is above 6 (64 bits)",
			      d->filename, s->refcount_order);

	/* cluster 0 holds the header, the extensions and the backing file name */
	c0len = (uint32_t)KL_MIN((uint64_t)s->cluster_size, s->file_size);
	c0 = kl_malloc(c0len);
	if (!c0)
		return -ENOMEM;
	rc = kl_io_pread_full(d->file, 0, c0, c0len, "qcow2 header cluster");
	if (rc < 0)
		goto out;
	backing_off = get_be64(c0 + 8);
	backing_len = get_be32(c0 + 16);
	size = get_be64(c0 + 24);
	crypt = get_be32(c0 + 32);
	l1_size = get_be32(c0 + 36);
	l1_off = get_be64(c0 + 40);
	s->rt_offset = get_be64(c0 + 48);
	s->rt_clusters = get_be32(c0 + 56);
	s->nb_snapshots = get_be32(c0 + 60);
	s->snapshots_offset = get_be64(c0 + 64);

	ext_end = c0len;
	if (backing_off) {
		if (backing_len == 0 || backing_len > QCOW2_MAX_BACKING_NAME ||
		    backing_off < s->header_length || !kl_range_ok(backing_off, backing_len, c0len)) {
			rc = kl_err(-EUCLEAN,
				    "%s: backing file name at offset %llu (%u bytes) must lie in the "
				    "header cluster after the header and be 1..%u bytes",
				    d->filename, (unsigned long long)backing_off, backing_len,
				    QCOW2_MAX_BACKING_NAME);
			goto out;
		}
		ext_end = (uint32_t)backing_off;
		s->backing_file = kl_strndup((const char *)c0 + backing_off, backing_len);
		if (!s->backing_file) {
			rc = -ENOMEM;
			goto out;
		}
		if (strlen(s->backing_file) != backing_len) {
			rc = kl_err(-EUCLEAN, "%s: backing file name at offset %llu contains a NUL byte",
				    d->filename, (unsigned long long)backing_off);
			goto out;
		}
	}
	rc = parse_extensions(d, c0, s->header_length, ext_end);
	if (rc < 0)
		goto out;

	/* feature bits: refuse what we cannot honour, naming it */
	if (s->incompat & ~QCOW2_INCOMPAT_KNOWN) {
		unsigned bit = (unsigned)__builtin_ctzll(s->incompat & ~QCOW2_INCOMPAT_KNOWN);

		rc = kl_err(-ENOTSUP, "%s: unsupported incompatible feature bit %u (%s)", d->filename,
			    bit, feature_name(s, 0, bit, fname, sizeof(fname)));
		goto out;
	}
	s->crypt_method = crypt;
	if (crypt == 1) {
		rc = kl_err(-ENOTSUP, "%s: encrypted qcow2 (crypt_method 1, legacy AES) is not "
			    "supported; LUKS (crypt_method 2) is", d->filename);
		goto out;
	}
	if (crypt > 2) {
		rc = kl_err(-EUCLEAN, "%s: unknown encryption method %u at offset 32", d->filename,
			    crypt);
		goto out;
	}
	if (crypt == 2 && (s->crypt_len < LUKS_HEADER_LEN || s->crypt_len > QCOW2_MAX_CRYPT_HDR ||
			   s->crypt_off % s->cluster_size || s->crypt_off < s->cluster_size ||
			   s->crypt_off > s->file_size || s->crypt_len > s->file_size - s->crypt_off)) {
		rc = kl_err(-EUCLEAN, "%s: LUKS header area of %llu bytes at %llu (from extension "
			    "0x0537be77) is missing, misplaced or past the end of the file (%llu)",
			    d->filename, (unsigned long long)s->crypt_len,
			    (unsigned long long)s->crypt_off, (unsigned long long)s->file_size);
		goto out;
	}
	if (s->incompat & QCOW2_INCOMPAT_COMPRESSION) {
		if (s->compression_type == QCOW2_COMP_ZLIB) {
			rc = kl_err(-EUCLEAN, "%s: compression type feature bit set but the type "
				    "(offset 104) is zlib", d->filename);
			goto out;
		}
		if (s->compression_type != QCOW2_COMP_ZSTD) {
			rc = kl_err(-ENOTSUP, "%s: unknown compression type %u at offset 104",
				    d->filename, s->compression_type);
			goto out;
		}
	} else if (s->compression_type != QCOW2_COMP_ZLIB) {
		rc = kl_err(-EUCLEAN, "%s: compression type %u at offset 104 without the "
			    "compression type feature bit", d->filename, s->compression_type);
		goto out;
	}
	s->ext_l2 = s->incompat & QCOW2_INCOMPAT_EXTL2;
	if (s->ext_l2 && s->cluster_bits < 14) {
		rc = kl_err(-EUCLEAN, "%s: extended L2 entries need clusters of 16 KiB or more "
			    "(cluster_bits %u)", d->filename, s->cluster_bits);
		goto out;
	}

	/* derived geometry */
	s->l2_entry_size = s->ext_l2 ? 16 : 8;
	s->l2_entries = s->cluster_size / s->l2_entry_size;
	s->l2_bits = (uint32_t)__builtin_ctz(s->l2_entries);
	s->sc_size = s->ext_l2 ? s->cluster_size / QCOW2_SUBCLUSTERS : s->cluster_size;
	s->refcount_bits = 1u << s->refcount_order;
	s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX : (1ULL << s->refcount_bits) - 1;
	s->rb_entries = (uint32_t)((uint64_t)s->cluster_size * 8 / s->refcount_bits);
	s->csize_shift = 62 - (s->cluster_bits - 8);
	s->csize_mask = (1ULL << (s->cluster_bits - 8)) - 1;
	s->coffset_mask = (1ULL << s->csize_shift) - 1;

	/* refcount table */
	if (s->rt_clusters == 0 ||
	    (uint64_t)s->rt_clusters * s->cluster_size > QCOW2_MAX_RT_BYTES) {
		rc = kl_err(-EUCLEAN, "%s: refcount table of %u clusters (offset 56); 1..%u allowed",
			    d->filename, s->rt_clusters, QCOW2_MAX_RT_BYTES / s->cluster_size);
		goto out;
	}
	if (s->rt_offset % s->cluster_size || s->rt_offset < s->cluster_size) {
		rc = kl_err(-EUCLEAN, "%s: refcount table offset %llu is not a cluster-aligned "
			    "offset past the header", d->filename, (unsigned long long)s->rt_offset);
		goto out;
	}
	s->rt_entries = (uint64_t)s->rt_clusters * s->cluster_size / 8;
	rc = load_table(d, s->rt_offset, s->rt_entries, "refcount table", &s->rt);
	if (rc < 0)
		goto out;

	/* the active L1 table (a snapshot's replaces it below) */
	s->active_l1_offset = l1_off;
	s->active_l1_size = l1_size;
	*vsize = size;
	rc = load_l1(d, l1_off, l1_size, size, "L1 table");
	if (rc < 0)
		goto out;
	if (ranges_overlap(l1_off, (uint64_t)l1_size * 8, s->rt_offset,
			   (uint64_t)s->rt_clusters * s->cluster_size)) {
		rc = kl_err(-EUCLEAN, "%s: L1 table at %llu overlaps the refcount table at %llu",
			    d->filename, (unsigned long long)l1_off,
			    (unsigned long long)s->rt_offset);
		goto out;
	}
	rc = qcow2_snapshots_load(d, size);
out:
	kl_free(c0);
	return rc;
}

/*
 * External data file (incompatible bit 2): the guest's clusters live in
 * another file, each at its guest offset (qcow2.rst: "The offset field in
 * the Standard Cluster Descriptor must match the guest offset"), and this
 * file keeps only the metadata. keel reads such images (info, map,
 * compare, check, convert from them); it does not write them, which would
 * mean allocating in the data file and, for a raw data file (autoclear
 * bit 1), writing zeros there instead of setting zero flags. The name is
 * resolved like a backing file's: inside the image's directory unless
 * --allow-external-backing.
 */
static int open_data_file(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);

	if (!s->data_file)
		return kl_err(-EUCLEAN, "%s: external data file bit set (incompatible bit 2) but "
			      "no data file name extension", d->filename);
	if (!d->read_only)
		return kl_err(-ENOTSUP, "%s: guest data lives in the external data file '%s'; "
			      "keel reads such images but does not write them (convert it to "
			      "another image first)", d->filename, s->data_file);
	if (s->nb_snapshots)
		return kl_err(-EUCLEAN, "%s: %u internal snapshots in an image with an external "
			      "data file, which cannot have any", d->filename, s->nb_snapshots);
	if ((s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW) && s->backing_file)
		return kl_err(-EUCLEAN, "%s: raw external data file (autoclear bit 1) together "
			      "with a backing file, which qcow2 does not allow", d->filename);
	return blk_open_aux(d, s->data_file, KL_O_RDONLY, &s->dfile);
}

/*
 * LUKS encryption (crypt_method 2): the LUKS header and key material live
 * in clusters of the image (extension 0x0537be77); each data cluster is
 * encrypted in 512-byte sectors whose IVs count from the start of the file
 * (host offsets: qemu's crypt_physical_offset). Reads decrypt; writes
 * encrypt (qcow2-cluster.c write_data) in whole sectors (write_align), and
 * are never compressed (qemu refuses compressed clusters in an encrypted
 * image too).
 */
static int open_luks(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);

	return luks_open_file(d->file, s->crypt_off, (size_t)s->crypt_len, d->key, d->key_len,
			      d->key_nl, d->filename, &s->luks);
}

static int qcow2_open(struct blk_dev *d, const struct blk_open_opts *o)
{
	struct qcow2_state *s = qcow2_s(d);
	uint64_t vsize = 0;
	size_t n;
	int rc;

	s->cur_snap = -1;
	rc = kl_io_size(d->file, &s->file_size);
	if (rc < 0)
		return rc;
	rc = parse_header(d, &vsize);
	if (rc < 0)
		goto err;
	if (s->incompat & QCOW2_INCOMPAT_DATA_FILE) {
		rc = open_data_file(d);
		if (rc < 0)
			goto err;
	}
	if (s->crypt_method == 2) {
		rc = open_luks(d);
		if (rc < 0)
			goto err;
	}
	if (d->snapshot) {
		int i = qcow2_snapshot_find(d, d->snapshot);
		char what[64];

		if (i < 0) {
			rc = kl_err(-ENOENT, "%s: no snapshot named '%s' (keel info lists them)",
				    d->filename, d->snapshot);
			goto err;
		}
		kl_free(s->l1);
		s->l1 = NULL;
		snprintf(what, sizeof(what), "L1 table of snapshot %s", s->snaps[i].id);
		rc = load_l1(d, s->snaps[i].l1_offset, s->snaps[i].l1_size, s->snaps[i].vsize, what);
		if (rc < 0)
			goto err;
		s->cur_snap = i;
		vsize = s->snaps[i].vsize;
	}
	if (!d->read_only) {
		bool repair = d->flags & BLK_OPEN_REPAIR;

		if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && !repair) {
			rc = kl_err(-EUCLEAN, "%s: image is marked corrupt (incompatible bit 1); it "
				    "opens read-only only; 'keel check -r all %s' repairs it",
				    d->filename, d->filename);
			goto err;
		}
		if ((s->incompat & QCOW2_INCOMPAT_DIRTY) && !repair) {
			rc = kl_err(-EUCLEAN, "%s: dirty bit set: refcounts may be stale (lazy "
				    "refcounts); run 'keel check -r all %s' before writing",
				    d->filename, d->filename);
			goto err;
		}
		rc = qcow2_index_refblocks(d);
		if (rc < 0)
			goto err;
		if (kl_opts_peek(o->opts, "compress")) {
			rc = kl_opts_get_bool(o->opts, "compress", &s->compress, NULL);
			if (rc < 0)
				goto err;
		}
		if (qcow2_take_compress_mark(d->file))
			s->compress = true;
		if (s->compress && s->luks) {
			rc = kl_err(-ENOTSUP, "%s is encrypted: its clusters cannot be stored "
				    "compressed (qemu refuses them too)", d->filename);
			goto err;
		}
		/* convert then compresses on its own threads (encode_cluster) */
		d->encoded_writes = s->compress;
	}
	n = KL_MIN(KL_MAX((size_t)(8u << 20) >> s->cluster_bits, (size_t)16), (size_t)256);
	rc = qcow2_cache_init(&s->l2c, n, s->cluster_size, "L2 table");
	if (rc < 0)
		goto err;
	n = KL_MIN(KL_MAX((size_t)(2u << 20) >> s->cluster_bits, (size_t)8), (size_t)64);
	rc = qcow2_cache_init(&s->rbc, n, s->cluster_size, "refcount block");
	if (rc < 0)
		goto err;
	s->l2c.depends = &s->rbc;
	d->size = vsize;
	d->cluster_size = s->cluster_size;
	d->write_align = s->luks ? LUKS_SECTOR : 1;
	if (s->backing_file) {
		rc = blk_open_parent(d, s->backing_file, s->backing_format);
		if (rc < 0)
			goto err;
	}
	return 0;
err:
	qcow2_close(d);
	return rc;
}

/* ------------------------------------------------------------------ flush */

int qcow2_flush(struct blk_dev *d)
{
	struct qcow2_state *s = qcow2_s(d);
	bool wrote;

	if (d->read_only || !s->l2c.e)
		return 0;
	if (s->broken)
		return -EUCLEAN; /* the detection site set the message; keep it */
	KL_TRY(qcow2_pend_flush(d));
	/* 1: refcount increments, so nothing below points at an unreferenced cluster */
	KL_TRY(qcow2_cache_flush(d, &s->rbc, &wrote));
	if (wrote)
		KL_TRY(kl_io_sync(d->file));
	/* 2: L2 tables, then the L1 entries pointing at new ones */
	KL_TRY(qcow2_cache_flush(d, &s->l2c, &wrote));
	if (s->l1_dirty_lo <= s->l1_dirty_hi) {
		if (wrote)
			KL_TRY(kl_io_sync(d->file));
		KL_TRY(qcow2_write_l1(d));
	}
	/* 3: references the tables no longer hold */
	if (s->nfrees) {
		KL_TRY(kl_io_sync(d->file));
		KL_TRY(qcow2_apply_frees(d));
		KL_TRY(qcow2_cache_flush(d, &s->rbc, NULL));
	}
	if (!s->unsynced)
		return 0;
	KL_TRY(kl_io_sync(d->file));
	s->unsynced = false;
	return 0;
}

/* ------------------------------------------------------------------ create */

struct qcow2_feature {
	uint8_t type, bit;
	const char *name;
};

/* The feature name table qemu writes, with the spec's names (qcow2.rst). */
static const struct qcow2_feature qcow2_features[] = {
	{ 0, 0, "dirty bit" },
	{ 0, 1, "corrupt bit" },
	{ 0, 2, "external data file" },
	{ 0, 3, "compression type" },
	{ 0, 4, "extended L2 entries" },
	{ 1, 0, "lazy refcounts" },
	{ 2, 0, "bitmaps" },
	{ 2, 1, "raw external data" },
};

static int parse_create_opts(const struct blk_create_opts *o, uint32_t *cluster_bits,
			     uint32_t *version, uint8_t *ctype, uint32_t *refcount_order,
			     bool *ext_l2, bool *compress)
{
	uint64_t cs = 65536, rb = 16;
	const char *v;
	bool b = false, found;

	KL_TRY(kl_opts_get_size(o->opts, "cluster_size", &cs, &found));
	if (!KL_IS_POW2(cs) || cs < 512 || cs > (2u << 20))
		return kl_err(-EINVAL, "qcow2: cluster_size %llu must be a power of two from 512 "
			      "to 2M", (unsigned long long)cs);
	*cluster_bits = (uint32_t)__builtin_ctzll(cs);
	*version = 3;
	v = kl_opts_get(o->opts, "compat");
	if (v) {
		if (!strcmp(v, "1.1") || !strcmp(v, "v3") || !strcmp(v, "3"))
			*version = 3;
		else if (!strcmp(v, "0.10") || !strcmp(v, "v2") || !strcmp(v, "2"))
			*version = 2;
		else
			return kl_err(-EINVAL, "qcow2: compat '%s': use 1.1 (v3) or 0.10 (v2)", v);
	}
	*ctype = QCOW2_COMP_ZLIB;
	v = kl_opts_get(o->opts, "compression_type");
	if (!v)
		v = kl_opts_get(o->opts, "compression");
	else
		kl_opts_get(o->opts, "compression");
	if (v) {
		if (!strcmp(v, "zlib") || !strcmp(v, "deflate"))
			*ctype = QCOW2_COMP_ZLIB;
		else if (!strcmp(v, "zstd"))
			*ctype = QCOW2_COMP_ZSTD;
		else
			return kl_err(-EINVAL, "qcow2: compression type '%s': use zlib or zstd", v);
	}
	v = kl_opts_get(o->opts, "refcount_bits");
	if (v && (kl_parse_u64(v, &rb) < 0 || !KL_IS_POW2(rb) || rb > 64))
		return kl_err(-EINVAL, "qcow2: refcount_bits '%s': use 1, 2, 4, 8, 16, 32 or 64", v);
	*refcount_order = (uint32_t)__builtin_ctzll(rb);
	*ext_l2 = false;
	KL_TRY(kl_opts_get_bool(o->opts, "extended_l2", ext_l2, NULL));
	KL_TRY(kl_opts_get_bool(o->opts, "lazy_refcounts", &b, NULL));
	if (b)
		return kl_err(-ENOTSUP, "qcow2: keel writes images with lazy_refcounts=off only");
	v = kl_opts_get(o->opts, "preallocation");
	if (v && strcmp(v, "off") != 0)
		return kl_err(-ENOTSUP, "qcow2: preallocation=%s is not supported (off only)", v);
	*compress = false;
	KL_TRY(kl_opts_get_bool(o->opts, "compress", compress, NULL));
	if (*version == 2 && (rb != 16 || *ctype != QCOW2_COMP_ZLIB || *ext_l2))
		return kl_err(-EINVAL, "qcow2: compat=0.10 (v2) allows only refcount_bits=16, zlib "
			      "compression and no extended_l2");
	if (*ext_l2 && cs < 16384)
		return kl_err(-EINVAL, "qcow2: extended_l2 needs cluster_size of 16K or more");
	return 0;
}

/*
 * -o encrypt.format=luks (qemu-img's name; encrypt.iter-time=MS): *iter_ms
 * is 0 when the image is not encrypted.
 */
static int parse_encrypt_opts(const struct blk_create_opts *o, uint32_t *iter_ms)
{
	const char *f = kl_opts_get(o->opts, "encrypt.format");
	const char *it = kl_opts_get(o->opts, "encrypt.iter-time");
	uint64_t ms = 2000; /* qemu's default */

	*iter_ms = 0;
	if (!f || !strcmp(f, "off")) {
		if (it)
			return kl_err(-EINVAL, "qcow2: encrypt.iter-time without encrypt.format=luks");
		return 0;
	}
	if (strcmp(f, "luks") != 0)
		return kl_err(-ENOTSUP, "qcow2: encrypt.format=%s: keel writes luks (aes-256 "
			      "xts-plain64) only", f);
	if (it && (kl_parse_u64(it, &ms) < 0 || ms < 1 || ms > 60000))
		return kl_err(-EINVAL, "qcow2: encrypt.iter-time=%s: milliseconds, 1 to 60000", it);
	*iter_ms = (uint32_t)ms;
	return 0;
}

static int qcow2_create(const char *path, const struct blk_create_opts *o)
{
	uint32_t cb = 16, version = 3, rorder = 4, cs, l2e, rbe, hlen, pos;
	uint64_t size, cover, l1_entries, l1c, T = 1, B = 0, total, crypt_len = 0, cc = 0, crypt_off;
	uint8_t ctype = 0, *hdr = NULL, *rt = NULL, *rb = NULL, *area = NULL;
	bool ext_l2 = false, compress = false;
	struct kl_file *f = NULL;
	uint32_t iter_ms;
	size_t alen = 0;
	int rc;

	KL_TRY(parse_create_opts(o, &cb, &version, &ctype, &rorder, &ext_l2, &compress));
	KL_TRY(parse_encrypt_opts(o, &iter_ms));
	if (iter_ms && compress)
		return kl_err(-ENOTSUP, "qcow2: an encrypted image cannot store compressed clusters "
			      "(-c or compress=on; qemu refuses them too)");
	cs = 1u << cb;
	/* qemu counts the virtual size in 512-byte sectors and drops a partial one */
	size = KL_ALIGN_UP(o->size, 512);
	if (size < o->size)
		return kl_err(-EINVAL, "qcow2: virtual size %llu too large",
			      (unsigned long long)o->size);
	l2e = cs / (ext_l2 ? 16 : 8);
	cover = (uint64_t)l2e * cs;
	l1_entries = size / cover + (size % cover ? 1 : 0);
	if (l1_entries * 8 > QCOW2_MAX_L1_BYTES)
		return kl_err(-EFBIG, "qcow2: virtual size %llu needs an L1 table over %u MiB; use a "
			      "larger cluster_size", (unsigned long long)size,
			      QCOW2_MAX_L1_BYTES >> 20);
	if (o->parent && strlen(o->parent) > QCOW2_MAX_BACKING_NAME)
		return kl_err(-EINVAL, "qcow2: backing file name longer than %u bytes",
			      QCOW2_MAX_BACKING_NAME);
	l1c = KL_MAX(KL_DIV_ROUND_UP(l1_entries * 8, cs), (uint64_t)1);
	rbe = (uint32_t)((uint64_t)cs * 8 >> rorder);
	if (iter_ms) {
		/* the LUKS header and key material, in clusters after the L1 table */
		crypt_len = luks_format_payload();
		cc = KL_DIV_ROUND_UP(crypt_len, cs);
	}
	/* header + refcount table + refcount blocks + L1 (+ LUKS), each block counting itself */
	for (;;) {
		uint64_t nB, nT;

		total = 1 + T + B + l1c + cc;
		nB = KL_DIV_ROUND_UP(total, rbe);
		nT = KL_DIV_ROUND_UP(nB * 8, cs);
		if (nB == B && nT == T)
			break;
		B = nB;
		T = nT;
	}
	if (T * cs > QCOW2_MAX_RT_BYTES)
		return kl_err(-EFBIG, "qcow2: metadata too large for the refcount table; use a larger "
			      "cluster_size or refcount_bits");
	crypt_off = (1 + T + B + l1c) * cs; /* the LUKS area, if any, follows the L1 table */

	if (iter_ms) {
		/* qemu and cryptsetup take the key file verbatim, final newline too */
		KL_TRY(luks_format(iter_ms, o->key, o->key ? o->key_len + o->key_nl : 0, &area,
				   &alen));
	}
	hdr = kl_calloc(1, cs);
	rt = kl_calloc((size_t)T, cs);
	rb = kl_calloc((size_t)B, cs);
	if (!hdr || !rt || !rb) {
		rc = -ENOMEM;
		goto out;
	}
	hlen = version == 3 ? QCOW2_V3_HEADER_WRITE : QCOW2_V2_HEADER_LEN;
	put_be32(hdr, QCOW2_MAGIC);
	put_be32(hdr + 4, version);
	put_be32(hdr + 20, cb);
	put_be64(hdr + 24, size);
	put_be32(hdr + 32, iter_ms ? 2 : 0); /* crypt_method: 2 is LUKS */
	put_be32(hdr + 36, (uint32_t)l1_entries);
	put_be64(hdr + 40, (1 + T + B) * cs);
	put_be64(hdr + 48, (uint64_t)cs);
	put_be32(hdr + 56, (uint32_t)T);
	if (version == 3) {
		uint64_t incompat = 0;

		if (ctype == QCOW2_COMP_ZSTD)
			incompat |= QCOW2_INCOMPAT_COMPRESSION;
		if (ext_l2)
			incompat |= QCOW2_INCOMPAT_EXTL2;
		put_be64(hdr + 72, incompat);
		put_be32(hdr + 96, rorder);
		put_be32(hdr + 100, hlen);
		hdr[104] = ctype;
	}
	pos = hlen;
	if (o->parent && o->parent_format) {
		uint32_t n = (uint32_t)strlen(o->parent_format);

		if (pos + 8 + KL_ALIGN_UP(n, 8) + 8 > cs) {
			rc = kl_err(-EINVAL, "qcow2: backing format name does not fit the header");
			goto out;
		}
		put_be32(hdr + pos, QCOW2_EXT_BACKING_FORMAT);
		put_be32(hdr + pos + 4, n);
		memcpy(hdr + pos + 8, o->parent_format, n);
		pos += 8 + (uint32_t)KL_ALIGN_UP(n, 8);
	}
	if (iter_ms) {
		if (pos + 8 + 16 + 8 > cs) {
			rc = kl_err(-EINVAL, "qcow2: the encryption extension does not fit the header");
			goto out;
		}
		put_be32(hdr + pos, QCOW2_EXT_CRYPTO);
		put_be32(hdr + pos + 4, 16);
		put_be64(hdr + pos + 8, crypt_off);
		put_be64(hdr + pos + 16, crypt_len);
		pos += 8 + 16;
	}
	/* the optional feature name table, as qemu writes it for clusters above 4 KiB */
	if (cs > 4096) {
		put_be32(hdr + pos, QCOW2_EXT_FEATURE_TABLE);
		put_be32(hdr + pos + 4, (uint32_t)(48 * KL_ARRAY_SIZE(qcow2_features)));
		pos += 8;
		for (size_t i = 0; i < KL_ARRAY_SIZE(qcow2_features); i++, pos += 48) {
			hdr[pos] = qcow2_features[i].type;
			hdr[pos + 1] = qcow2_features[i].bit;
			memcpy(hdr + pos + 2, qcow2_features[i].name, strlen(qcow2_features[i].name));
		}
	}
	pos += 8; /* end-of-extensions marker: type 0, length 0 */
	if (o->parent) {
		uint32_t n = (uint32_t)strlen(o->parent);

		if (pos + n > cs) {
			rc = kl_err(-EINVAL, "qcow2: backing file name '%s' does not fit in a %u-byte "
				    "header cluster; use a larger cluster_size", o->parent, cs);
			goto out;
		}
		put_be64(hdr + 8, pos);
		put_be32(hdr + 16, n);
		memcpy(hdr + pos, o->parent, n);
	}
	for (uint64_t i = 0; i < B; i++)
		put_be64(rt + i * 8, (1 + T + i) * cs);
	for (uint64_t c = 0; c < total; c++) {
		uint64_t bit = c << rorder;

		/* refcount 1 in the entry's lowest byte/bits (big-endian for widths >= 8) */
		if (rorder < 3)
			rb[bit / 8] |= (uint8_t)(1u << (bit % 8));
		else
			rb[(bit >> 3) + (1u << (rorder - 3)) - 1] = 1;
	}

	rc = kl_io_open(path, blk_create_kl_flags(o), &f);
	if (rc < 0)
		goto out;
	rc = kl_io_pwrite(f, 0, hdr, cs);
	if (rc == 0)
		rc = kl_io_pwrite(f, cs, rt, (size_t)(T * cs));
	if (rc == 0)
		rc = kl_io_pwrite(f, (1 + T) * cs, rb, (size_t)(B * cs));
	if (rc == 0 && area)
		rc = kl_io_pwrite(f, crypt_off, area, alen);
	if (rc == 0)
		rc = kl_io_truncate(f, total * cs);
	if (rc == 0)
		rc = kl_io_sync(f);
	if (rc == 0 && compress)
		qcow2_put_compress_mark(f);
	kl_io_close(f);
	if (rc < 0)
		kl_io_unlink(path);
out:
	if (area)
		kl_wipe(area, alen);
	kl_free(area);
	kl_free(hdr);
	kl_free(rt);
	kl_free(rb);
	return rc;
}

/* ------------------------------------------------------------------ measure */


/*
 * What create + writes of in's data would make, counted the way qemu-img
 * measure does: the metadata of a fully allocated image (header, L1, every
 * L2 table, refcount table and blocks covering it all) plus the clusters
 * that hold data.
 */
static int qcow2_measure(const struct blk_create_opts *o, struct blk_dev *in, struct blk_measure *m)
{
	uint32_t cb = 16, version = 3, rorder = 4;
	uint64_t cs, size, cover, l2e, l1c, l2c, data = 0, meta, T = 0, B = 0, rbe, cc;
	uint8_t ctype = 0;
	bool ext_l2 = false, compress = false;
	uint32_t iter_ms;

	KL_TRY(parse_create_opts(o, &cb, &version, &ctype, &rorder, &ext_l2, &compress));
	KL_TRY(parse_encrypt_opts(o, &iter_ms));
	cs = 1ULL << cb;
	size = KL_ALIGN_UP(o->size, 512);
	l2e = cs / (ext_l2 ? 16 : 8);
	cover = l2e * cs;
	l2c = size / cover + (size % cover ? 1 : 0);
	l1c = KL_MAX(KL_DIV_ROUND_UP(l2c * 8, cs), (uint64_t)1);
	rbe = (cs * 8) >> rorder;
	if (in)
		KL_TRY(blk_measure_allocated(in, cs, &data));
	/* with encryption, the LUKS header area's clusters */
	cc = iter_ms ? KL_DIV_ROUND_UP(luks_format_payload(), cs) : 0;
	for (;;) {
		uint64_t n = 1 + l1c + l2c + cc + KL_DIV_ROUND_UP(size, cs) + T + B;
		uint64_t nB = KL_DIV_ROUND_UP(n, rbe), nT = KL_DIV_ROUND_UP(nB * 8, cs);

		if (nB == B && nT == T)
			break;
		B = nB;
		T = nT;
	}
	meta = (1 + l1c + l2c + cc + T + B) * cs;
	m->fully_allocated = meta + KL_ALIGN_UP(size, cs);
	m->required = meta + data;
	m->data = data;
	return 0;
}

/* ------------------------------------------------------------------ info */

static int qcow2_info(struct blk_dev *d, struct blk_info *out)
{
	struct qcow2_state *s = qcow2_s(d);
	const char *ctype = s->compression_type == QCOW2_COMP_ZSTD ? "zstd" : "zlib";

	out->subformat = kl_strdup(s->version == 2 ? "v2" : "v3");
	out->compression = kl_strdup(ctype);
	if (!out->subformat || !out->compression)
		return -ENOMEM;
	if (s->luks)
		KL_TRY(blk_info_add_kv(out, "encryption", "LUKS, %s", luks_describe(s->luks)));
	if (s->data_file)
		KL_TRY(blk_info_add_kv(out, "data file", "%s%s", s->data_file,
				       s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW ? " (raw)" : ""));
	if (s->backing_file) {
		out->parent = kl_strdup(s->backing_file);
		if (!out->parent)
			return -ENOMEM;
		if (s->backing_format && !(out->parent_format = kl_strdup(s->backing_format)))
			return -ENOMEM;
	}
	out->dirty = s->incompat & QCOW2_INCOMPAT_DIRTY;
	out->corrupt = s->incompat & QCOW2_INCOMPAT_CORRUPT;
	KL_TRY(blk_info_add_kv(out, "compat", "%s", s->version == 2 ? "0.10" : "1.1"));
	KL_TRY(blk_info_add_kv(out, "compression type", "%s", ctype));
	KL_TRY(blk_info_add_kv(out, "refcount bits", "%u", s->refcount_bits));
	KL_TRY(blk_info_add_kv(out, "lazy refcounts", "%s",
			       s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS ? "true" : "false"));
	KL_TRY(blk_info_add_kv(out, "extended l2", "%s", s->ext_l2 ? "true" : "false"));
	if (s->has_bitmaps)
		KL_TRY(blk_info_add_kv(out, "bitmaps", "%u", s->nb_bitmaps));
	if (s->cur_snap >= 0)
		KL_TRY(blk_info_add_kv(out, "reading snapshot", "%s (id %s)",
				       s->snaps[s->cur_snap].name, s->snaps[s->cur_snap].id));
	if (s->incompat & QCOW2_INCOMPAT_DIRTY)
		KL_TRY(blk_info_add_feature(out, "dirty"));
	if (s->incompat & QCOW2_INCOMPAT_CORRUPT)
		KL_TRY(blk_info_add_feature(out, "corrupt"));
	if (s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS)
		KL_TRY(blk_info_add_feature(out, "lazy_refcounts"));
	if (s->ext_l2)
		KL_TRY(blk_info_add_feature(out, "extended_l2"));
	if (s->incompat & QCOW2_INCOMPAT_COMPRESSION)
		KL_TRY(blk_info_add_feature(out, "compression_type=zstd"));
	if (s->has_bitmaps)
		KL_TRY(blk_info_add_feature(out, "bitmaps"));
	return qcow2_snapshot_list(d, &out->snaps, &out->nsnaps);
}

/* An encrypted image and no key: what the header says (cmd_info's info_nokey). */
static int qcow2_info_nokey(struct blk_dev *d, struct blk_info *out)
{
	struct qcow2_state *s = qcow2_s(d);
	uint8_t hdr[LUKS_HEADER_LEN];
	uint64_t vsize = 0;
	char what[160];

	s->cur_snap = -1;
	KL_TRY(kl_io_size(d->file, &s->file_size));
	KL_TRY(parse_header(d, &vsize));
	/* not encrypted itself: the key was wanted further down its chain */
	if (s->crypt_method != 2)
		return kl_err(-ENOKEY, "%s is not encrypted", d->filename);
	out->virtual_size = vsize;
	out->cluster_size = s->cluster_size;
	KL_TRY(kl_io_pread_full(d->file, s->crypt_off, hdr, sizeof(hdr), "LUKS header"));
	KL_TRY(luks_peek(hdr, sizeof(hdr), d->filename, what, sizeof(what)));
	KL_TRY(blk_info_add_kv(out, "encryption", "LUKS, %s; locked (no key given)", what));
	return qcow2_info(d, out);
}

/* ------------------------------------------------------------------ rebase */

#define QCOW2_COMMIT_SECTOR 512u

/*
 * keel rebase: point the image at another backing file, or at none.
 *
 * qemu rewrites the whole header cluster in one write, which a power cut
 * can tear. Here the change commits with one 512-byte write of the
 * header's first sector, which cannot tear (the unit every disk writes
 * whole): the new name first goes, and is synced, into bytes of the header
 * cluster that the current header does not use (after the extensions'
 * end marker, clear of the current name), and everything else that
 * changes (backing file offset and length, the backing format extension)
 * lies in that first sector. A header whose layout would need more (a
 * backing format extension outside the first sector or of another padded
 * length, no room left in the cluster) is refused, naming why.
 */
static int qcow2_set_parent(struct blk_dev *d, const char *ref, const char *fmt)
{
	struct qcow2_state *s = qcow2_s(d);
	const uint32_t cs = s->cluster_size, sec = QCOW2_COMMIT_SECTOR;
	uint32_t old_off, old_len, ext_end, pos, fmt_pos = 0, fmt_len = 0, end_pos = 0;
	uint32_t nlen = ref ? (uint32_t)strlen(ref) : 0, name_off = 0;
	size_t flen = fmt ? strlen(fmt) : 0;
	bool have_end = false, fmt_written = false;
	char *nref = NULL, *nfmt = NULL;
	uint8_t *c0;
	int rc;

	if (s->cur_snap >= 0)
		return kl_err(-EROFS, "%s: a snapshot is never writable", d->filename);
	if (s->broken)
		return kl_err(-EUCLEAN, "%s: corrupt metadata was found earlier; run 'keel check %s'",
			      d->filename, d->filename);
	if (ref && (nlen == 0 || nlen > QCOW2_MAX_BACKING_NAME))
		return kl_err(-EINVAL, "qcow2: backing file name must be 1..%u bytes",
			      QCOW2_MAX_BACKING_NAME);
	if (fmt && (flen == 0 || flen > 63))
		return kl_err(-EINVAL, "qcow2: backing format name must be 1..63 bytes");
	if (s->header_length + 8 > sec)
		return kl_err(-ENOTSUP, "%s: header of %u bytes leaves no room to change the backing "
			      "file in its first sector", d->filename, s->header_length);
	KL_TRY(qcow2_flush(d));
	if (s->file_size < cs)
		return kl_err(-EUCLEAN, "%s: file shorter than its header cluster", d->filename);
	c0 = kl_malloc(cs);
	if (!c0)
		return -ENOMEM;
	rc = kl_io_pread_full(d->file, 0, c0, cs, "qcow2 header cluster");
	if (rc < 0)
		goto out;
	old_off = (uint32_t)KL_MIN(get_be64(c0 + 8), (uint64_t)cs);
	old_len = old_off ? get_be32(c0 + 16) : 0;
	ext_end = old_off ? old_off : cs;
	/* the open validated all of this; find the format extension and the end marker */
	for (pos = s->header_length; ext_end >= 8 && pos <= ext_end - 8;) {
		uint32_t type = get_be32(c0 + pos), len = get_be32(c0 + pos + 4);

		if (type == QCOW2_EXT_END) {
			have_end = true;
			end_pos = pos;
			break;
		}
		if (len > ext_end - pos - 8)
			break;
		if (type == QCOW2_EXT_BACKING_FORMAT) {
			fmt_pos = pos;
			fmt_len = len;
		}
		pos += 8 + (uint32_t)KL_ALIGN_UP(len, 8);
	}
	if (!have_end) {
		rc = kl_err(-ENOTSUP, "%s: header extensions have no end marker before the backing "
			    "file name; nowhere to put a new one", d->filename);
		goto out;
	}
	if (ref && fmt && fmt_pos) {
		/* rewrite it in place: same padded size, inside the commit sector */
		if (KL_ALIGN_UP(flen, 8) != KL_ALIGN_UP(fmt_len, 8) ||
		    fmt_pos + 8 + KL_ALIGN_UP(flen, 8) > sec) {
			rc = kl_err(-ENOTSUP, "%s: the backing format extension at offset %u cannot "
				    "take '%s' in place", d->filename, fmt_pos, fmt);
			goto out;
		}
		put_be32(c0 + fmt_pos + 4, (uint32_t)flen);
		memset(c0 + fmt_pos + 8, 0, KL_ALIGN_UP(flen, 8));
		memcpy(c0 + fmt_pos + 8, fmt, flen);
		fmt_written = true;
	} else if (ref && fmt) {
		/* none yet: it takes the end marker's place when all of it fits the sector */
		uint32_t need = 8 + (uint32_t)KL_ALIGN_UP(flen, 8) + 8;

		if (end_pos + need <= sec && (!old_off || end_pos + need <= old_off)) {
			put_be32(c0 + end_pos, QCOW2_EXT_BACKING_FORMAT);
			put_be32(c0 + end_pos + 4, (uint32_t)flen);
			memset(c0 + end_pos + 8, 0, need - 8);
			memcpy(c0 + end_pos + 8, fmt, flen);
			end_pos += need - 8;
			fmt_written = true;
		}
		/* else: no extension; the parent's format is probed when opened */
	}
	if (ref) {
		uint32_t c1 = (uint32_t)KL_ALIGN_UP(end_pos + 8, 8);
		uint32_t c2 = (uint32_t)KL_ALIGN_UP((uint64_t)old_off + old_len, 8);

		if (!ranges_overlap(c1, nlen, old_off, old_len) && (uint64_t)c1 + nlen <= cs)
			name_off = c1;
		else if (old_off && c2 >= c1 && (uint64_t)c2 + nlen <= cs)
			name_off = c2;
		if (!name_off) {
			rc = kl_err(-ENOSPC, "%s: no room for a %u-byte backing file name in the "
				    "%u-byte header cluster beside the current one", d->filename, nlen,
				    cs);
			goto out;
		}
		memcpy(c0 + name_off, ref, nlen);
		if (name_off + nlen > sec) {
			uint32_t from = KL_MAX(name_off, sec);

			rc = qcow2_file_write(d, from, c0 + from, name_off + nlen - from);
			if (rc == 0)
				rc = kl_io_sync(d->file);
			if (rc < 0)
				goto out;
		}
	}
	put_be64(c0 + 8, name_off);
	put_be32(c0 + 16, nlen);
	if ((ref && !(nref = kl_strdup(ref))) || (fmt_written && !(nfmt = kl_strdup(fmt)))) {
		rc = -ENOMEM;
		goto out;
	}
	rc = kl_io_event("qcow2.set_parent");
	if (rc == 0)
		rc = qcow2_file_write(d, 0, c0, sec);
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc < 0)
		goto out;
	s->unsynced = false;
	kl_free(s->backing_file);
	s->backing_file = nref;
	nref = NULL;
	if (fmt_written || !ref) {
		kl_free(s->backing_format);
		s->backing_format = nfmt;
		nfmt = NULL;
	}
out:
	kl_free(nref);
	kl_free(nfmt);
	kl_free(c0);
	return rc;
}

const struct blk_driver blk_qcow2_driver = {
	.name = "qcow2",
	.ext = "qcow2",
	.desc = "QEMU v2/v3: compression, backing files, internal snapshots",
	.create_help =
		"  cluster_size=512..2M       cluster size, a power of two (64K)\n"
		"  compression_type=zlib|zstd how compressed clusters are stored (zlib;\n"
		"                             'compression' is accepted too)\n"
		"  compress=on|off            store every whole-cluster write compressed when\n"
		"                             that saves space; what convert -c sets (off)\n"
		"  refcount_bits=1..64        width of a refcount, a power of two (16)\n"
		"  extended_l2=on|off         subcluster allocation, 16K clusters or more (off)\n"
		"  compat=1.1|0.10            image version 3 or 2 (1.1)\n"
		"  lazy_refcounts=off         accepted for qemu-img compatibility; on is refused\n"
		"  preallocation=off          accepted for qemu-img compatibility; others refused\n"
		"  encrypt.format=luks|off    LUKS encryption (aes-256 xts-plain64) with the\n"
		"                             passphrase of --key-file/--key-env (off)\n"
		"  encrypt.iter-time=MS       PBKDF2 time to unlock it, milliseconds (2000)\n",
	.instance_size = sizeof(struct qcow2_state),
	.flags = BLK_DRV_CAN_CREATE | BLK_DRV_SNAPSHOTS | BLK_DRV_HAS_PARENT,
	.probe = qcow2_probe,
	.open = qcow2_open,
	.create = qcow2_create,
	.pread = qcow2_pread,
	.pwrite = qcow2_pwrite,
	.pwrite_zeroes = qcow2_pwrite_zeroes,
	.discard = qcow2_discard,
	.block_status = qcow2_block_status,
	.flush = qcow2_flush,
	.close = qcow2_close,
	.info_nokey = qcow2_info_nokey,
	.info = qcow2_info,
	.check = qcow2_check,
	.snapshot_list = qcow2_snapshot_list,
	.snapshot_create = qcow2_snapshot_create,
	.snapshot_delete = qcow2_snapshot_delete,
	.snapshot_revert = qcow2_snapshot_revert,
	.snapshot_diff = qcow2_snapshot_diff,
	.set_parent = qcow2_set_parent,
	.measure = qcow2_measure,
	.encode_cluster = qcow2_encode_cluster,
	.write_encoded = qcow2_write_encoded,
	.encoded_footprint = qcow2_encoded_footprint,
};
