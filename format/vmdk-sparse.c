/*
 * format/vmdk-sparse.c - hosted sparse extents ("KDMV"): the header, the
 * grain directory (GD) and grain tables (GT), plain and compressed grain
 * reads, allocating writes, and the layout of a new monolithicSparse file.
 *
 * Lookup (shared/specs/vmdk.md "Grain directory"): grain g lives in the
 * table gd[g / gtes] at entry g % gtes; an entry is the grain's sector, 0
 * for "not here" (the parent shows through), 1 for "zeros" when the header
 * has the zeroed-grain flag. In compressed (stream) extents an entry names
 * the sector of a grain marker: u64 LBA, u32 size, then a zlib stream.
 *
 * Writes keep the file consistent at every step: new grains are appended
 * past the end of the file, their table entries change in the cached table
 * only, and a table goes to disk (primary, then the redundant copy) only
 * after a sync made the grain data durable: on flush or when the cache
 * evicts it. A crash leaks grains but never points a table at unwritten
 * data.
 */
#include "format/vmdk.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define VMDK_MAGIC 0x564d444bu /* "KDMV" read little-endian */

static const uint8_t vmdk_nl_check[4] = { '\n', ' ', '\r', '\n' };

/* ------------------------------------------------------------------ header */

void vmdk_hdr_encode(const struct vmdk_hdr *h, uint8_t *p)
{
	memset(p, 0, VMDK_SECTOR);
	put_le32(p, VMDK_MAGIC);
	put_le32(p + 4, h->version);
	put_le32(p + 8, h->flags);
	put_le64(p + 12, h->capacity);
	put_le64(p + 20, h->grain);
	put_le64(p + 28, h->desc_off);
	put_le64(p + 36, h->desc_size);
	put_le32(p + 44, h->gtes);
	put_le64(p + 48, h->rgd_off);
	put_le64(p + 56, h->gd_off);
	put_le64(p + 64, h->overhead);
	p[72] = h->unclean;
	memcpy(p + 73, vmdk_nl_check, 4);
	put_le16(p + 77, h->compress);
}

int vmdk_hdr_decode(const uint8_t *p, const char *name, const char *what, uint64_t file_size,
		    struct vmdk_hdr *h)
{
	memset(h, 0, sizeof(*h));
	if (get_le32(p) != VMDK_MAGIC)
		return kl_err(-EUCLEAN, "%s: %s has no KDMV magic (found %02x %02x %02x %02x)", name,
			      what, p[0], p[1], p[2], p[3]);
	h->version = get_le32(p + 4);
	h->flags = get_le32(p + 8);
	h->capacity = get_le64(p + 12);
	h->grain = get_le64(p + 20);
	h->desc_off = get_le64(p + 28);
	h->desc_size = get_le64(p + 36);
	h->gtes = get_le32(p + 44);
	h->rgd_off = get_le64(p + 48);
	h->gd_off = get_le64(p + 56);
	h->overhead = get_le64(p + 64);
	h->unclean = p[72];
	h->compress = get_le16(p + 77);
	if (h->version < 1 || h->version > 3)
		return kl_err(-ENOTSUP, "%s: %s: sparse extent version %u is not supported (1-3)",
			      name, what, h->version);
	if ((h->flags & VMDK_FLAG_NL_CHECK) && memcmp(p + 73, vmdk_nl_check, 4) != 0)
		return kl_err(-EUCLEAN,
			      "%s: %s: newline check bytes at offset 73 are %02x %02x %02x %02x, "
			      "expected 0a 20 0d 0a: the file was damaged by a text-mode transfer",
			      name, what, p[73], p[74], p[75], p[76]);
	if (!KL_IS_POW2(h->grain) || h->grain > VMDK_MAX_GRAIN_SECTORS)
		return kl_err(-EUCLEAN,
			      "%s: %s: grain size %llu sectors is not a power of two up to %u",
			      name, what, (unsigned long long)h->grain, VMDK_MAX_GRAIN_SECTORS);
	if (h->gtes == 0 || h->gtes > VMDK_MAX_GTES)
		return kl_err(-EUCLEAN, "%s: %s: %u grain table entries per table (expected 1-%u)",
			      name, what, h->gtes, VMDK_MAX_GTES);
	if (h->capacity > VMDK_MAX_SIZE / VMDK_SECTOR)
		return kl_err(-EUCLEAN, "%s: %s: capacity of %llu sectors is larger than %llu TiB",
			      name, what, (unsigned long long)h->capacity,
			      (unsigned long long)(VMDK_MAX_SIZE >> 40));
	if (h->compress != VMDK_COMPRESS_NONE && h->compress != VMDK_COMPRESS_DEFLATE)
		return kl_err(-ENOTSUP, "%s: %s: compression algorithm %u is not supported", name,
			      what, h->compress);
	if (h->desc_off) {
		if (h->desc_size > VMDK_MAX_DESC / VMDK_SECTOR)
			return kl_err(-EUCLEAN, "%s: %s: descriptor of %llu sectors is too large",
				      name, what, (unsigned long long)h->desc_size);
		if (h->desc_off > file_size / VMDK_SECTOR ||
		    h->desc_size > file_size / VMDK_SECTOR - h->desc_off)
			return kl_err(-EUCLEAN,
				      "%s: %s: descriptor at sector %llu (%llu sectors) lies past "
				      "the end of the file (%llu bytes)",
				      name, what, (unsigned long long)h->desc_off,
				      (unsigned long long)h->desc_size, (unsigned long long)file_size);
	}
	return 0;
}

/*
 * vmfsSparse (COWD): the ESXi snapshot delta ("-delta.vmdk" on VMFS 5). A
 * 2048-byte little-endian header after the magic: version 1, flags, the
 * capacity and grain size in sectors, the grain directory's sector and
 * entry count, the file's sector count, then geometry. Tables are fixed at
 * 4096 entries of 32-bit sector numbers, there is no redundant directory
 * and no zeroed-grain entry (qemu's vmdk_open_vmfs_sparse reads it the same
 * way). Mapped onto the hosted header so the sparse code reads it.
 */
#define VMDK_COWD_MAGIC 0x44574f43u /* "COWD" read little-endian */
#define VMDK_COWD_HEADER_SECTORS 4u
#define VMDK_COWD_GTES 4096u

static int cowd_hdr_decode(const uint8_t *p, const char *name, struct vmdk_hdr *h)
{
	uint32_t version = get_le32(p + 4), ngd = get_le32(p + 24);
	uint64_t span;

	memset(h, 0, sizeof(*h));
	if (version != 1)
		return kl_err(-ENOTSUP, "%s: vmfsSparse (COWD) version %u is not supported (1)",
			      name, version);
	h->version = 1;
	h->capacity = get_le32(p + 12);
	h->grain = get_le32(p + 16);
	h->gd_off = get_le32(p + 20);
	h->gtes = VMDK_COWD_GTES;
	/* what keel check counts as laid out up front: the header and the directory */
	h->overhead = h->gd_off + KL_DIV_ROUND_UP((uint64_t)ngd * 4, VMDK_SECTOR);
	if (!KL_IS_POW2(h->grain) || h->grain > VMDK_MAX_GRAIN_SECTORS)
		return kl_err(-EUCLEAN,
			      "%s: vmfsSparse header: grain size %llu sectors is not a power of two "
			      "up to %u", name, (unsigned long long)h->grain, VMDK_MAX_GRAIN_SECTORS);
	span = (uint64_t)h->gtes * h->grain;
	if (ngd < KL_DIV_ROUND_UP(h->capacity, span))
		return kl_err(-EUCLEAN,
			      "%s: vmfsSparse header: %u grain directory entries cannot map %llu "
			      "sectors (%llu needed)", name, ngd, (unsigned long long)h->capacity,
			      (unsigned long long)KL_DIV_ROUND_UP(h->capacity, span));
	if (h->gd_off < VMDK_COWD_HEADER_SECTORS)
		return kl_err(-EUCLEAN, "%s: vmfsSparse header: grain directory at sector %llu lies "
			      "inside the header", name, (unsigned long long)h->gd_off);
	return 0;
}

/*
 * The stream footer: a copy of the header with the real GD offset, in the
 * sector before the end-of-stream marker, itself after a FOOTER marker.
 * Tools pad files after the EOS marker, so skip zero sectors from the end.
 */
static int find_footer(struct vmdk_extent *x, struct vmdk_hdr *h)
{
	uint8_t sec[2 * VMDK_SECTOR];
	uint64_t pos = x->file_size - x->file_size % VMDK_SECTOR;
	int skipped = 0;

	for (;;) {
		if (pos < 3 * VMDK_SECTOR)
			return kl_err(-EUCLEAN,
				      "%s: stream header says the grain directory is in the footer, "
				      "but no footer was found before the end of the file (%llu bytes)",
				      x->name, (unsigned long long)x->file_size);
		KL_TRY(kl_io_pread_full(x->file, pos - 2 * VMDK_SECTOR, sec, sizeof(sec),
					"stream footer"));
		if (!kl_is_zero(sec + VMDK_SECTOR, VMDK_SECTOR))
			break;
		pos -= VMDK_SECTOR;
		if (++skipped > 256)
			return kl_err(-EUCLEAN,
				      "%s: stream header says the grain directory is in the footer, "
				      "but the last 128 KiB of the file are zeros",
				      x->name);
	}
	if (get_le32(sec + 8) != 0 || get_le32(sec + 12) != VMDK_MARKER_FOOTER)
		return kl_err(-EUCLEAN,
			      "%s: no footer marker at offset %llu (size %u, type %u; expected a "
			      "type-3 marker): the stream is incomplete or damaged",
			      x->name, (unsigned long long)(pos - 2 * VMDK_SECTOR), get_le32(sec + 8),
			      get_le32(sec + 12));
	KL_TRY(vmdk_hdr_decode(sec + VMDK_SECTOR, x->name, "stream footer", x->file_size, h));
	if (h->gd_off == VMDK_GD_AT_END)
		return kl_err(-EUCLEAN, "%s: stream footer at offset %llu names no grain directory",
			      x->name, (unsigned long long)(pos - VMDK_SECTOR));
	return 0;
}

/* ------------------------------------------------------------------ open */

static int load_dir(struct vmdk_extent *x, uint64_t sector, const char *what, uint32_t **out)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t bytes = (uint64_t)s->ngd * 4;
	uint8_t *raw;
	uint32_t *gd;
	int rc;

	*out = NULL;
	if (sector > x->file_size / VMDK_SECTOR || bytes > x->file_size - sector * VMDK_SECTOR)
		return kl_err(-EUCLEAN,
			      "%s: %s (%u entries at sector %llu) extends past the end of the file "
			      "(%llu bytes)",
			      x->name, what, s->ngd, (unsigned long long)sector,
			      (unsigned long long)x->file_size);
	raw = kl_malloc((size_t)bytes);
	gd = kl_malloc((size_t)bytes);
	if (!raw || !gd) {
		kl_free(raw);
		kl_free(gd);
		return -ENOMEM;
	}
	rc = kl_io_pread_full(x->file, sector * VMDK_SECTOR, raw, (size_t)bytes, what);
	if (rc == 0) {
		for (uint32_t i = 0; i < s->ngd; i++)
			gd[i] = get_le32(raw + 4 * (size_t)i);
		*out = gd;
	} else {
		kl_free(gd);
	}
	kl_free(raw);
	return rc;
}

int vmdk_sparse_open(struct vmdk_extent *x, bool rw)
{
	uint8_t hdr[VMDK_SECTOR];
	struct vmdk_sparse *s;
	struct vmdk_hdr h;
	uint64_t span;
	int rc;

	if (x->file_size < VMDK_SECTOR)
		return kl_err(-EUCLEAN, "%s: truncated: %llu bytes, a sparse extent header needs 512",
			      x->name, (unsigned long long)x->file_size);
	KL_TRY(kl_io_pread_full(x->file, 0, hdr, sizeof(hdr), "sparse extent header"));
	if (get_le32(hdr) == VMDK_COWD_MAGIC) {
		if (rw)
			return kl_err(-ENOTSUP, "%s: vmfsSparse (COWD) extents are read-only in keel",
				      x->name);
		KL_TRY(cowd_hdr_decode(hdr, x->name, &h));
	} else {
		KL_TRY(vmdk_hdr_decode(hdr, x->name, "sparse extent header", x->file_size, &h));
	}
	s = kl_calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	x->sp = s;
	memcpy(s->raw, hdr, sizeof(hdr));
	s->gbuf_grain = UINT64_MAX;
	if (h.gd_off == VMDK_GD_AT_END) {
		struct vmdk_hdr f;

		rc = find_footer(x, &f);
		if (rc < 0)
			goto fail;
		/* the footer is authoritative (VMware 5.0 notes); keep the header's descriptor */
		f.desc_off = h.desc_off;
		f.desc_size = h.desc_size;
		s->h = f;
	} else {
		s->h = h;
	}
	s->cowd = get_le32(hdr) == VMDK_COWD_MAGIC;
	s->compressed = s->h.compress == VMDK_COMPRESS_DEFLATE;
	s->markers = s->h.flags & VMDK_FLAG_MARKERS;
	s->zero_grain = s->h.flags & VMDK_FLAG_ZERO_GRAIN;
	if (rw && s->h.version == 3 && !s->compressed) {
		rc = kl_err(-ENOTSUP,
			    "%s: version 3 sparse extent (VMware change tracking) can only be "
			    "opened read-only",
			    x->name);
		goto fail;
	}
	s->grain_bytes = (uint32_t)(s->h.grain * VMDK_SECTOR);
	s->grain_shift = (unsigned)__builtin_ctzll(s->grain_bytes);
	s->gt_bytes = KL_ALIGN_UP((uint64_t)s->h.gtes * 4, VMDK_SECTOR);
	span = (uint64_t)s->h.gtes * s->h.grain;
	s->ngd = (uint32_t)KL_DIV_ROUND_UP(s->h.capacity, span);
	if (s->ngd) {
		rc = load_dir(x, s->h.gd_off, "grain directory", &s->gd);
		if (rc < 0)
			goto fail;
	}
	for (int i = 0; i < VMDK_GT_CACHE; i++) {
		s->cache[i].ent = kl_malloc((size_t)s->h.gtes * 4);
		if (!s->cache[i].ent) {
			rc = -ENOMEM;
			goto fail;
		}
	}
	s->next_sector = KL_MAX(s->h.overhead, KL_DIV_ROUND_UP(x->file_size, VMDK_SECTOR));
	if (rw && s->compressed) {
		bool empty = true;

		for (uint32_t i = 0; i < s->ngd; i++)
			empty &= s->gd[i] == 0;
		if (!s->markers || h.gd_off != VMDK_GD_AT_END || !empty) {
			rc = kl_err(-ENOTSUP,
				    "%s: streamOptimized images are append-only and this one %s; open "
				    "it read-only (or convert it to monolithicSparse to modify it)",
				    x->name, !s->markers || h.gd_off != VMDK_GD_AT_END ?
						     "is not in the footer layout keel appends to" :
						     "already holds data");
			goto fail;
		}
	}
	if (rw && !s->compressed && (s->h.flags & VMDK_FLAG_RGD) && s->h.rgd_off && s->ngd) {
		rc = load_dir(x, s->h.rgd_off, "redundant grain directory", &s->rgd);
		if (rc < 0)
			goto fail;
	}
	return 0;
fail:
	vmdk_sparse_close(x);
	return rc;
}

void vmdk_sparse_close(struct vmdk_extent *x)
{
	struct vmdk_sparse *s = x->sp;

	if (!s)
		return;
	vmdk_stream_end(x);
	kl_free(s->gd);
	kl_free(s->rgd);
	for (int i = 0; i < VMDK_GT_CACHE; i++)
		kl_free(s->cache[i].ent);
	kl_free(s->cbuf);
	kl_free(s->gbuf);
	kl_free(s);
	x->sp = NULL;
}

/* ------------------------------------------------------------------ tables */

static int gt_read(struct vmdk_extent *x, uint32_t sector, uint32_t *ent, const char *what,
		   uint32_t gdi)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t off = (uint64_t)sector * VMDK_SECTOR, bytes = (uint64_t)s->h.gtes * 4;
	uint8_t *raw;
	int rc;

	if (!kl_range_ok(off, bytes, x->file_size))
		return kl_err(-EUCLEAN,
			      "%s: %s %u at sector %u (%llu bytes) lies past the end of the file "
			      "(%llu bytes)",
			      x->name, what, gdi, sector, (unsigned long long)bytes,
			      (unsigned long long)x->file_size);
	raw = kl_malloc((size_t)bytes);
	if (!raw)
		return -ENOMEM;
	rc = kl_io_pread_full(x->file, off, raw, (size_t)bytes, what);
	if (rc == 0)
		for (uint32_t i = 0; i < s->h.gtes; i++)
			ent[i] = get_le32(raw + 4 * (size_t)i);
	kl_free(raw);
	return rc;
}

/* Write entries [i0, i1) of the table for gdi (primary, then the redundant copy). */
static int gt_store(struct vmdk_extent *x, struct vmdk_gt_slot *c, uint32_t i0, uint32_t i1)
{
	struct vmdk_sparse *s = x->sp;
	uint8_t raw[4 * 64];

	while (i0 < i1) {
		uint32_t n = KL_MIN(i1 - i0, (uint32_t)(sizeof(raw) / 4));

		for (uint32_t i = 0; i < n; i++)
			put_le32(raw + 4 * i, c->ent[i0 + i]);
		KL_TRY(kl_io_pwrite(x->file, (uint64_t)s->gd[c->gdi] * VMDK_SECTOR + 4ULL * i0, raw,
				    4 * (size_t)n));
		if (s->rgd && s->rgd[c->gdi])
			KL_TRY(kl_io_pwrite(x->file,
					    (uint64_t)s->rgd[c->gdi] * VMDK_SECTOR + 4ULL * i0, raw,
					    4 * (size_t)n));
		i0 += n;
	}
	return 0;
}


/* Write back a changed table: the data it names first becomes durable. */
static int gt_writeback(struct vmdk_extent *x, struct vmdk_gt_slot *c)
{
	struct vmdk_sparse *s = x->sp;

	if (!c->dirty)
		return 0;
	if (s->data_unsynced) {
		KL_TRY(kl_io_sync(x->file));
		s->data_unsynced = false;
	}
	KL_TRY(gt_store(x, c, c->dlo, c->dhi));
	c->dirty = false;
	return 0;
}

static void gt_mark(struct vmdk_gt_slot *c, uint32_t i0, uint32_t i1)
{
	if (!c->dirty) {
		c->dlo = i0;
		c->dhi = i1;
		c->dirty = true;
		return;
	}
	c->dlo = KL_MIN(c->dlo, i0);
	c->dhi = KL_MAX(c->dhi, i1);
}

int vmdk_sparse_flush(struct vmdk_extent *x)
{
	struct vmdk_sparse *s = x->sp;

	if (!s || s->w)
		return 0;
	for (int i = 0; i < VMDK_GT_CACHE; i++)
		if (s->cache[i].valid)
			KL_TRY(gt_writeback(x, &s->cache[i]));
	return 0;
}

/* The cached table for directory entry gdi (which must be allocated). */
static int gt_get(struct vmdk_extent *x, uint32_t gdi, struct vmdk_gt_slot **out)
{
	struct vmdk_sparse *s = x->sp;
	struct vmdk_gt_slot *victim = &s->cache[0];
	int rc;

	for (int i = 0; i < VMDK_GT_CACHE; i++) {
		struct vmdk_gt_slot *c = &s->cache[i];

		if (c->valid && c->gdi == gdi) {
			c->used = ++s->tick;
			*out = c;
			return 0;
		}
		if (!c->valid || c->used < victim->used)
			victim = c;
	}
	if (victim->valid)
		KL_TRY(gt_writeback(x, victim));
	victim->valid = false;
	rc = gt_read(x, s->gd[gdi], victim->ent, "grain table", gdi);
	if (rc < 0)
		return rc;
	victim->gdi = gdi;
	victim->valid = true;
	victim->used = ++s->tick;
	*out = victim;
	return 0;
}

int vmdk_sparse_gte(struct vmdk_extent *x, uint64_t g, uint32_t *gte)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t gdi = g / s->h.gtes;
	struct vmdk_gt_slot *c;

	*gte = 0;
	if (gdi >= s->ngd || s->gd[gdi] == 0)
		return 0;
	KL_TRY(gt_get(x, (uint32_t)gdi, &c));
	*gte = c->ent[g % s->h.gtes];
	return 0;
}

enum vmdk_cls { CLS_UNALLOC, CLS_ZERO, CLS_DATA, CLS_CDATA };

static int classify(struct vmdk_extent *x, uint64_t g, uint32_t gte, enum vmdk_cls *cls)
{
	struct vmdk_sparse *s = x->sp;

	if (gte == 0)
		*cls = CLS_UNALLOC;
	else if (gte == VMDK_GTE_ZERO && s->zero_grain)
		*cls = CLS_ZERO;
	else if (gte == VMDK_GTE_ZERO)
		/* sector 1 is the descriptor: this is how a damaged table looks */
		return kl_err(-EUCLEAN,
			      "%s: grain %llu has table entry 1 (a zeroed grain) but the header's "
			      "zeroed-grain flag is not set",
			      x->name, (unsigned long long)g);
	else
		*cls = s->compressed ? CLS_CDATA : CLS_DATA;
	return 0;
}

/* ------------------------------------------------------------------ status */

/* How many grains one status call may look at beyond whole missing tables. */
#define VMDK_STATUS_SCAN 8192

int vmdk_sparse_status(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, uint64_t len,
		       struct blk_extent *e)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t g = rel >> s->grain_shift, end = rel + len, run_end, next_host = 0;
	uint64_t span_bytes = (uint64_t)s->h.gtes << s->grain_shift;
	enum vmdk_cls cls = CLS_UNALLOC, c2 = CLS_UNALLOC;
	struct vmdk_gt_slot *gt = NULL; /* the table of gdi gt_gdi, looked up once */
	uint64_t gt_gdi = UINT64_MAX;
	uint32_t gte;
	int scanned = 0;

	(void)d;
	KL_TRY(vmdk_sparse_gte(x, g, &gte));
	KL_TRY(classify(x, g, gte, &cls));
	run_end = KL_MIN((g + 1) << s->grain_shift, x->len);
	e->host_off = BLK_NO_HOST_OFFSET;
	if (cls == CLS_DATA) {
		e->host_off = (uint64_t)gte * VMDK_SECTOR + (rel & (s->grain_bytes - 1));
		next_host = ((uint64_t)gte + s->h.grain) * VMDK_SECTOR;
	}
	while (run_end < end && scanned < VMDK_STATUS_SCAN) {
		uint64_t g2 = run_end >> s->grain_shift, gdi = g2 / s->h.gtes;

		if (gdi >= s->ngd || s->gd[gdi] == 0) {
			if (cls != CLS_UNALLOC)
				break;
			run_end = KL_MIN((gdi + 1) * span_bytes, x->len);
			continue;
		}
		if (gdi != gt_gdi) {
			KL_TRY(gt_get(x, (uint32_t)gdi, &gt));
			gt_gdi = gdi;
		}
		if (cls == CLS_UNALLOC || cls == CLS_ZERO) {
			/* a run of one entry value, to the table's end or len */
			uint32_t want = cls == CLS_UNALLOC ? 0 : VMDK_GTE_ZERO;
			uint64_t k0 = g2 % s->h.gtes, k = k0;
			uint64_t kmax = KL_MIN((uint64_t)s->h.gtes,
					       k0 + ((end - run_end + s->grain_bytes - 1) >> s->grain_shift));

			while (k < kmax && gt->ent[k] == want)
				k++;
			if (k == k0)
				break;
			run_end = KL_MIN(run_end + ((k - k0) << s->grain_shift), x->len);
			scanned += (int)(k - k0);
			continue;
		}
		gte = gt->ent[g2 % s->h.gtes];
		KL_TRY(classify(x, g2, gte, &c2));
		if (c2 != cls)
			break;
		if (cls == CLS_DATA) {
			if ((uint64_t)gte * VMDK_SECTOR != next_host)
				break;
			next_host += s->grain_bytes;
		}
		run_end = KL_MIN(run_end + s->grain_bytes, x->len);
		scanned++;
	}
	e->len = run_end - rel;
	switch (cls) {
	case CLS_UNALLOC:
		e->type = BLK_UNALLOC;
		break;
	case CLS_ZERO:
		e->type = BLK_ZERO;
		break;
	case CLS_CDATA:
		e->type = BLK_DATA;
		e->flags |= BLK_EXT_COMPRESSED;
		break;
	default:
		e->type = BLK_DATA;
		break;
	}
	return 0;
}

/* ------------------------------------------------------------------ reads */

static size_t cbuf_cap(uint32_t grain_bytes)
{
	return KL_ALIGN_UP(compressBound(grain_bytes) + 4096, VMDK_SECTOR);
}

static int inflate_into(struct vmdk_sparse *s, const uint8_t *in, size_t in_len, int wbits,
			size_t *out_len, const char **msg)
{
	z_stream zs;
	int zr;

	memset(&zs, 0, sizeof(zs));
	if (inflateInit2(&zs, wbits) != Z_OK)
		return -ENOMEM;
	zs.next_in = (Bytef *)in;
	zs.avail_in = (uInt)in_len;
	zs.next_out = s->gbuf;
	zs.avail_out = s->grain_bytes + 1;
	zr = inflate(&zs, Z_FINISH);
	*out_len = zs.total_out;
	*msg = zs.msg ? zs.msg : (zr == Z_BUF_ERROR ? (zs.avail_out ? "truncated stream" :
								      "output overflow") :
						   "bad data");
	inflateEnd(&zs);
	if (zr == Z_STREAM_END)
		return 0;
	if (zr == Z_BUF_ERROR && zs.avail_out == 0)
		return -EOVERFLOW;
	return -EBADMSG;
}

/* Inflate grain g (table entry gte) of a compressed extent into s->gbuf. */
static int grain_inflate(struct vmdk_extent *x, uint64_t g, uint32_t gte)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t off = (uint64_t)gte * VMDK_SECTOR, data, need;
	uint64_t gstart = g << s->grain_shift;
	size_t clen, out_len;
	const char *msg;
	int rc;

	if (s->gbuf_grain == g)
		return 0;
	if (!s->gbuf) {
		s->cbuf_cap = cbuf_cap(s->grain_bytes);
		s->gbuf = kl_malloc((size_t)s->grain_bytes + 1);
		s->cbuf = kl_malloc(s->cbuf_cap);
		if (!s->gbuf || !s->cbuf)
			return -ENOMEM;
	}
	s->gbuf_grain = UINT64_MAX;
	if (off >= x->file_size)
		return kl_err(-EUCLEAN, "%s: grain %llu at sector %u lies past the end of the file",
			      x->name, (unsigned long long)g, gte);
	if (s->markers) {
		uint64_t lba;
		uint32_t size, type;

		KL_TRY(vmdk_marker_read(x, off, &lba, &size, &type));
		if (size == 0)
			return kl_err(-EUCLEAN,
				      "%s: grain %llu points at sector %u, which holds a type-%u "
				      "metadata marker, not a grain",
				      x->name, (unsigned long long)g, gte, type);
		if (size > s->cbuf_cap)
			return kl_err(-EUCLEAN,
				      "%s: compressed grain %llu at sector %u claims %u bytes, more "
				      "than a %u-byte grain can need",
				      x->name, (unsigned long long)g, gte, size, s->grain_bytes);
		if (lba != gstart / VMDK_SECTOR)
			return kl_err(-EUCLEAN,
				      "%s: grain marker at sector %u is for sector %llu, but the grain "
				      "table uses it for sector %llu",
				      x->name, gte, (unsigned long long)lba,
				      (unsigned long long)(gstart / VMDK_SECTOR));
		data = off + 12;
		clen = size;
		if (!kl_range_ok(data, clen, x->file_size))
			return kl_err(-EUCLEAN,
				      "%s: compressed grain %llu at sector %u (%zu bytes) runs past "
				      "the end of the file",
				      x->name, (unsigned long long)g, gte, clen);
	} else {
		data = off;
		clen = (size_t)KL_MIN((uint64_t)s->cbuf_cap, x->file_size - off);
	}
	KL_TRY(kl_io_pread_full(x->file, data, s->cbuf, clen, "compressed grain"));
	rc = inflate_into(s, s->cbuf, clen, 15, &out_len, &msg);
	if (rc == -EBADMSG && out_len == 0)
		/* VMware's notes say DEFLATE; accept a raw deflate stream too */
		rc = inflate_into(s, s->cbuf, clen, -15, &out_len, &msg);
	if (rc == -EOVERFLOW || out_len > s->grain_bytes)
		return kl_err(-EUCLEAN,
			      "%s: compressed grain %llu at sector %u inflates past the %u-byte grain",
			      x->name, (unsigned long long)g, gte, s->grain_bytes);
	if (rc < 0)
		return kl_err(-EUCLEAN, "%s: compressed grain %llu at sector %u is corrupt (zlib: %s)",
			      x->name, (unsigned long long)g, gte, msg);
	need = KL_MIN((uint64_t)s->grain_bytes, x->len - gstart);
	if (out_len < need)
		return kl_err(-EUCLEAN,
			      "%s: compressed grain %llu at sector %u inflates to %zu bytes, "
			      "expected %llu",
			      x->name, (unsigned long long)g, gte, out_len, (unsigned long long)need);
	memset(s->gbuf + out_len, 0, s->grain_bytes - out_len);
	s->gbuf_grain = g;
	return 0;
}

int vmdk_sparse_read(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, uint8_t *buf,
		     size_t len)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t mask = s->grain_bytes - 1;

	while (len > 0) {
		uint64_t g = rel >> s->grain_shift, host;
		size_t n = (size_t)KL_MIN((uint64_t)len, s->grain_bytes - (rel & mask));
		enum vmdk_cls cls;
		uint32_t gte;

		KL_TRY(vmdk_sparse_gte(x, g, &gte));
		KL_TRY(classify(x, g, gte, &cls));
		switch (cls) {
		case CLS_UNALLOC:
			KL_TRY(blk_read_below(d, x->start + rel, buf, n));
			break;
		case CLS_ZERO:
			memset(buf, 0, n);
			break;
		case CLS_CDATA:
			KL_TRY(grain_inflate(x, g, gte));
			memcpy(buf, s->gbuf + (rel & mask), n);
			break;
		default:
			host = (uint64_t)gte * VMDK_SECTOR + (rel & mask);
			/* one read for a run of grains that are contiguous in the file */
			while (n < len) {
				uint32_t g2;
				size_t more = (size_t)KL_MIN((uint64_t)(len - n), s->grain_bytes);

				KL_TRY(vmdk_sparse_gte(x, g + 1, &g2));
				if (g2 <= VMDK_GTE_ZERO ||
				    (uint64_t)g2 * VMDK_SECTOR != host + n)
					break;
				n += more;
				g++;
			}
			if (!kl_range_ok(host, n, x->file_size))
				return kl_err(-EUCLEAN,
					      "%s: grain data at offset %llu (%zu bytes) lies past the "
					      "end of the file (%llu bytes)",
					      x->name, (unsigned long long)host, n,
					      (unsigned long long)x->file_size);
			KL_TRY(kl_io_pread_full(x->file, host, buf, n, "grain data"));
			break;
		}
		buf += n;
		rel += n;
		len -= n;
	}
	return 0;
}

/* ------------------------------------------------------------------ writes */

/* Reserve sectors at the end of the extent file. */
static int alloc_sectors(struct vmdk_extent *x, uint64_t sectors, uint64_t *out)
{
	struct vmdk_sparse *s = x->sp;

	if (s->next_sector > VMDK_MAX_EXTENT_SECTORS ||
	    sectors > VMDK_MAX_EXTENT_SECTORS - s->next_sector)
		return kl_err(-ENOSPC,
			      "%s: sparse extent is full: grain pointers are 32-bit sectors, so one "
			      "extent file holds at most 2 TiB",
			      x->name);
	*out = s->next_sector;
	s->next_sector += sectors;
	return 0;
}

static int grow_to(struct vmdk_extent *x, uint64_t end)
{
	if (end > x->file_size) {
		KL_TRY(kl_io_truncate(x->file, end));
		x->file_size = end;
	}
	return 0;
}

/* Allocate the grain table (and its redundant copy) for gdi. */
static int gt_alloc(struct vmdk_extent *x, uint32_t gdi)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t sec = 0, rsec = 0;
	uint8_t ent[4];

	KL_TRY(alloc_sectors(x, s->gt_bytes / VMDK_SECTOR, &sec));
	if (s->rgd)
		KL_TRY(alloc_sectors(x, s->gt_bytes / VMDK_SECTOR, &rsec));
	/* the new tables read as zeros once the file covers them, durably */
	KL_TRY(grow_to(x, s->next_sector * VMDK_SECTOR));
	KL_TRY(kl_io_sync(x->file));
	s->data_unsynced = false;
	if (s->rgd) {
		put_le32(ent, (uint32_t)rsec);
		KL_TRY(kl_io_pwrite(x->file, s->h.rgd_off * VMDK_SECTOR + 4ULL * gdi, ent, 4));
		s->rgd[gdi] = (uint32_t)rsec;
	}
	put_le32(ent, (uint32_t)sec);
	KL_TRY(kl_io_pwrite(x->file, s->h.gd_off * VMDK_SECTOR + 4ULL * gdi, ent, 4));
	s->gd[gdi] = (uint32_t)sec;
	return 0;
}

static int gt_get_for_write(struct vmdk_extent *x, uint64_t g, struct vmdk_gt_slot **out)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t gdi = g / s->h.gtes;

	if (gdi >= s->ngd)
		return kl_err(-EUCLEAN,
			      "%s: grain %llu lies beyond the grain directory (%u tables); the "
			      "descriptor claims more than the extent's header covers",
			      x->name, (unsigned long long)g, s->ngd);
	if (s->gd[gdi] == 0)
		KL_TRY(gt_alloc(x, (uint32_t)gdi));
	return gt_get(x, (uint32_t)gdi, out);
}

/*
 * Content of grain g before a partial write: its own data, zeros, or what
 * lies below (parent or zeros) when unallocated. buf holds grain_bytes.
 */
static int grain_old(struct blk_dev *d, struct vmdk_extent *x, uint64_t g, uint32_t gte,
		     uint8_t *buf)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t gstart = g << s->grain_shift;
	size_t visible = (size_t)KL_MIN((uint64_t)s->grain_bytes, x->len - gstart);

	memset(buf, 0, s->grain_bytes);
	if (gte == 0)
		return blk_read_below(d, x->start + gstart, buf, visible);
	return 0;
}

int vmdk_sparse_write(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, const uint8_t *buf,
		      size_t len)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t mask = s->grain_bytes - 1;
	uint8_t *tmp = NULL;
	int rc = 0;

	if (s->w)
		return vmdk_stream_write(x, rel, buf, len);
	if (s->compressed)
		return kl_err(-ENOTSUP, "%s: compressed extents are not writable", x->name);
	while (len > 0 && rc == 0) {
		uint64_t g = rel >> s->grain_shift, gstart = g << s->grain_shift, host;
		uint32_t idx = (uint32_t)(g % s->h.gtes), i1;
		size_t n = (size_t)KL_MIN((uint64_t)len, s->grain_bytes - (rel & mask));
		size_t visible = (size_t)KL_MIN((uint64_t)s->grain_bytes, x->len - gstart);
		struct vmdk_gt_slot *c;
		uint32_t gte;

		rc = gt_get_for_write(x, g, &c);
		if (rc < 0)
			break;
		gte = c->ent[idx];
		if (gte == VMDK_GTE_ZERO && !s->zero_grain) {
			rc = classify(x, g, gte, &(enum vmdk_cls){ 0 });
			break;
		}
		if (gte > VMDK_GTE_ZERO) {
			/* overwrite in place, merging grains contiguous in the file */
			host = (uint64_t)gte * VMDK_SECTOR + (rel & mask);
			for (i1 = idx + 1; n < len && i1 < s->h.gtes; i1++) {
				if ((uint64_t)c->ent[i1] * VMDK_SECTOR != host + n)
					break;
				n += (size_t)KL_MIN((uint64_t)(len - n), s->grain_bytes);
			}
			rc = kl_io_pwrite(x->file, host, buf, n);
			if (rc == 0 && host + n > x->file_size)
				x->file_size = host + n;
		} else if ((rel & mask) == 0 && n >= visible && visible == s->grain_bytes) {
			/* whole new grains: one allocation and one write for the run */
			uint64_t k = 1, sec = 0;

			for (i1 = idx + 1; i1 < s->h.gtes && len - n >= s->grain_bytes; i1++) {
				if (c->ent[i1] > VMDK_GTE_ZERO ||
				    (c->ent[i1] == VMDK_GTE_ZERO && !s->zero_grain))
					break;
				if (x->len - (gstart + n) < s->grain_bytes)
					break;
				n += s->grain_bytes;
				k++;
			}
			rc = alloc_sectors(x, k * s->h.grain, &sec);
			if (rc == 0)
				rc = kl_io_pwrite(x->file, sec * VMDK_SECTOR, buf, n);
			if (rc == 0)
				rc = grow_to(x, s->next_sector * VMDK_SECTOR);
			if (rc == 0) {
				for (uint64_t i = 0; i < k; i++)
					c->ent[idx + i] = (uint32_t)(sec + i * s->h.grain);
				s->data_unsynced = true;
				gt_mark(c, idx, idx + (uint32_t)k);
			}
		} else {
			/* part of a grain (or the short last one): build it whole */
			uint64_t sec = 0;

			if (!tmp && !(tmp = kl_malloc(s->grain_bytes))) {
				rc = -ENOMEM;
				break;
			}
			n = (size_t)KL_MIN((uint64_t)n, visible - (rel & mask));
			rc = grain_old(d, x, g, gte, tmp);
			if (rc == 0) {
				memcpy(tmp + (rel & mask), buf, n);
				rc = alloc_sectors(x, s->h.grain, &sec);
			}
			if (rc == 0)
				rc = kl_io_pwrite(x->file, sec * VMDK_SECTOR, tmp, s->grain_bytes);
			if (rc == 0)
				rc = grow_to(x, s->next_sector * VMDK_SECTOR);
			if (rc == 0) {
				c->ent[idx] = (uint32_t)sec;
				s->data_unsynced = true;
				gt_mark(c, idx, idx + 1);
			}
		}
		buf += n;
		rel += n;
		len -= n;
	}
	kl_free(tmp);
	return rc;
}

int vmdk_sparse_zero(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, uint64_t len,
		     bool has_parent, unsigned flags)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t mask = s->grain_bytes - 1;
	uint8_t *z = NULL;
	int rc = 0;

	if (s->w)
		return vmdk_stream_zero(x, rel, len);
	while (len > 0 && rc == 0) {
		uint64_t g = rel >> s->grain_shift, gstart = g << s->grain_shift;
		size_t n = (size_t)KL_MIN(len, s->grain_bytes - (rel & mask));
		size_t visible = (size_t)KL_MIN((uint64_t)s->grain_bytes, x->len - gstart);
		bool whole = (rel & mask) == 0 && n >= visible;
		uint32_t gte, want;
		bool set = false;

		rc = vmdk_sparse_gte(x, g, &gte);
		if (rc < 0)
			break;
		if (gte == 0 && !has_parent) {
			want = 0; /* already reads as zeros */
		} else if (gte == VMDK_GTE_ZERO && s->zero_grain) {
			want = gte;
		} else if (whole && s->zero_grain) {
			want = VMDK_GTE_ZERO;
			set = true;
		} else if (whole && !has_parent && (flags & BLK_ZERO_MAY_UNMAP)) {
			want = 0;
			set = true;
		} else {
			if (!z && !(z = kl_calloc(1, s->grain_bytes))) {
				rc = -ENOMEM;
				break;
			}
			rc = vmdk_sparse_write(d, x, rel, z, n);
			goto next;
		}
		if (set && gte != want) {
			struct vmdk_gt_slot *c;

			rc = gt_get_for_write(x, g, &c);
			if (rc == 0) {
				c->ent[g % s->h.gtes] = want;
				gt_mark(c, (uint32_t)(g % s->h.gtes), (uint32_t)(g % s->h.gtes) + 1);
			}
		}
next:
		rel += n;
		len -= n;
	}
	kl_free(z);
	return rc;
}

/* ------------------------------------------------------------------ check */

/*
 * A run of sectors some metadata names: a grain or a grain table (sectors
 * are 32-bit in the tables; 12 bytes a grain keeps a full 2 TiB extent of
 * 64 KiB grains under 400 MiB).
 */
struct vmdk_span {
	uint32_t sec, n;
	uint8_t what;
};

static const char *const span_what[] = { "grain", "grain table", "redundant grain table" };

struct vmdk_spans {
	struct vmdk_span *v;
	size_t n, cap;
};

static int span_cmp(const void *a, const void *b)
{
	const struct vmdk_span *x = a, *y = b;

	return x->sec < y->sec ? -1 : x->sec > y->sec;
}

static int span_add(struct vmdk_spans *sp, uint32_t sec, uint32_t n, uint8_t what)
{
	if (sp->n == sp->cap) {
		size_t nc = sp->cap ? sp->cap * 2 : 1024;
		struct vmdk_span *nv = kl_realloc(sp->v, nc * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		sp->v = nv;
		sp->cap = nc;
	}
	sp->v[sp->n++] = (struct vmdk_span){ sec, n, what };
	return 0;
}

/*
 * Sorted spans: two that overlap corrupt each other on the next write
 * through either. Space past the header's overhead (where everything is
 * appended) that no span covers was allocated by a writer that crashed
 * before its table entry or directory entry reached the disk: a leak. *tail is where a leak at the end of the file starts (0
 * when there is none): -r leaks cuts that off; the writer appends past the
 * end, so a leak inside the file stays (reported only).
 */
static void check_spans(struct vmdk_extent *x, struct blk_check_report *r, unsigned flags,
			struct vmdk_spans *sp, uint64_t *tail)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t end = KL_DIV_ROUND_UP(x->file_size, VMDK_SECTOR);
	uint64_t cur = s->h.overhead;
	size_t far = 0; /* the span reaching furthest so far */

	*tail = 0;
	if (sp->n > 1)
		qsort(sp->v, sp->n, sizeof(*sp->v), span_cmp);
	for (size_t i = 0; i < sp->n; i++) {
		const struct vmdk_span *a = &sp->v[i], *f = &sp->v[far];

		if (i > 0 && a->sec < (uint64_t)f->sec + f->n) {
			blk_check_msg(r, "%s: %s at sector %llu overlaps %s at sector %llu", x->name,
				      span_what[a->what], (unsigned long long)a->sec,
				      span_what[f->what], (unsigned long long)f->sec);
			r->corruptions++;
		}
		if ((uint64_t)a->sec + a->n > (uint64_t)f->sec + f->n)
			far = i;
		if (a->sec > cur && a->sec < end) {
			blk_check_msg(r, "%s: sectors %llu-%llu are used by nothing (leaked)",
				      x->name, (unsigned long long)cur,
				      (unsigned long long)a->sec - 1);
			r->leaks += KL_DIV_ROUND_UP(a->sec - cur, s->h.grain);
		}
		cur = KL_MAX(cur, (uint64_t)a->sec + a->n);
	}
	if (end <= cur)
		return;
	blk_check_msg(r, "%s: the %llu sectors at the end of the file (from sector %llu) are "
		      "used by nothing (leaked)%s", x->name, (unsigned long long)(end - cur),
		      (unsigned long long)cur,
		      flags & BLK_CHECK_REPAIR_LEAKS ? "" : "; -r leaks cuts them off");
	r->leaks += KL_DIV_ROUND_UP(end - cur, s->h.grain);
	*tail = cur;
}

static void check_grain(struct vmdk_extent *x, struct blk_check_report *r, unsigned flags,
			uint64_t g, uint32_t gte)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t off = (uint64_t)gte * VMDK_SECTOR;
	bool bad;

	if (off >= x->file_size || gte < s->h.desc_off + s->h.desc_size) {
		blk_check_msg(r, "%s: grain %llu points at sector %u, %s", x->name,
			      (unsigned long long)g, gte,
			      off >= x->file_size ? "past the end of the file" :
						    "inside the header/descriptor");
		r->corruptions++;
		return;
	}
	if (!s->compressed) {
		if (off + s->grain_bytes > x->file_size && (g + 1) * s->grain_bytes <= x->len) {
			blk_check_msg(r, "%s: grain %llu at sector %u runs past the end of the file",
				      x->name, (unsigned long long)g, gte);
			r->corruptions++;
		}
		return;
	}
	if (flags & BLK_CHECK_DATA) {
		s->gbuf_grain = UINT64_MAX;
		bad = grain_inflate(x, g, gte) < 0;
	} else if (s->markers) {
		uint64_t lba;
		uint32_t size, type;

		bad = vmdk_marker_read(x, off, &lba, &size, &type) < 0;
		if (!bad && (size == 0 || lba != g * s->h.grain)) {
			kl_err(-EUCLEAN, "%s: grain %llu: bad grain marker at sector %u", x->name,
			       (unsigned long long)g, gte);
			bad = true;
		}
	} else {
		bad = false;
	}
	if (bad) {
		blk_check_msg(r, "%s", kl_errmsg());
		if (flags & BLK_CHECK_DATA)
			r->data_errors++;
		else
			r->corruptions++;
	}
}

/*
 * -r: copy primary grain tables over redundant copies that differ (a crash
 * between the two writes leaves them apart; readers use the primary), then
 * cut a leaked tail off. Neither while the tables have damage -r cannot
 * fix: then the primary may be the broken copy, and the "leaked" space may
 * be grains a damaged entry no longer names.
 */
static int check_repair(struct vmdk_extent *x, struct blk_check_report *r, unsigned flags,
			const uint8_t *differs, uint64_t structural, uint64_t tail)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t end = KL_DIV_ROUND_UP(x->file_size, VMDK_SECTOR);
	bool all = (flags & BLK_CHECK_REPAIR_ALL) == BLK_CHECK_REPAIR_ALL;

	if (!(flags & BLK_CHECK_REPAIR_LEAKS) || (!tail && !(all && differs)))
		return 0;
	if (structural) {
		blk_check_msg(r, "%s: nothing repaired: %llu error(s) in the grain tables cannot "
			      "be, so the redundant tables and the space the damage cut off "
			      "(reported as leaked) may hold the data", x->name,
			      (unsigned long long)structural);
		return 0;
	}
	/* each copy is whole by itself: one sync after all of them is enough */
	for (uint32_t gdi = 0; all && differs && gdi < s->ngd; gdi++) {
		struct vmdk_gt_slot *c;

		if (!differs[gdi])
			continue;
		KL_TRY(gt_get(x, gdi, &c));
		KL_TRY(gt_store(x, c, 0, s->h.gtes));
		r->repaired++;
	}
	if (all && differs)
		KL_TRY(kl_io_sync(x->file));
	if (!tail)
		return 0;
	KL_TRY(kl_io_truncate(x->file, tail * VMDK_SECTOR));
	KL_TRY(kl_io_sync(x->file));
	x->file_size = tail * VMDK_SECTOR;
	s->next_sector = KL_MAX(s->h.overhead, tail);
	r->repaired += KL_DIV_ROUND_UP(end - tail, s->h.grain);
	return 0;
}

int vmdk_sparse_check(struct vmdk_extent *x, struct blk_check_report *r, unsigned flags)
{
	struct vmdk_sparse *s = x->sp;
	uint64_t ngrains = KL_DIV_ROUND_UP(x->len, s->grain_bytes);
	uint32_t *rgd = NULL, *rgt = NULL;
	uint8_t *differs = NULL; /* per directory entry: the redundant table differs */
	struct vmdk_spans sp = { 0 };
	uint32_t gt_secs = (uint32_t)(s->gt_bytes / VMDK_SECTOR);
	uint64_t corrupt0 = r->corruptions, ndiffer = 0, tail = 0;
	struct kl_progress *prog = NULL;
	int rc = 0;

	r->total_clusters += ngrains;
	if (flags & BLK_CHECK_DATA)
		prog = kl_progress_start("verifying", x->len, flags & BLK_CHECK_PROGRESS);
	if ((s->h.flags & VMDK_FLAG_RGD) && s->h.rgd_off && s->ngd && !s->compressed) {
		if (load_dir(x, s->h.rgd_off, "redundant grain directory", &rgd) < 0) {
			blk_check_msg(r, "%s", kl_errmsg());
			r->corruptions++;
		}
		rgt = kl_malloc((size_t)s->h.gtes * 4);
		if (!rgt) {
			rc = -ENOMEM;
			goto out;
		}
	}
	for (uint32_t gdi = 0; gdi < s->ngd; gdi++) {
		struct vmdk_gt_slot *c;

		kl_progress_set(prog, KL_MIN(x->len, (uint64_t)gdi * s->h.gtes * s->grain_bytes));
		if (s->gd[gdi] == 0 && rgd && rgd[gdi] && rgd[gdi] < s->h.overhead) {
			/*
			 * Tables inside the overhead were laid out at create and are
			 * never unlinked; a writer that crashed while linking a new
			 * one leaves it past the overhead. So this is a damaged
			 * directory (a flipped header offset reads one full of
			 * zeros), and the grains it lost would look leaked.
			 */
			blk_check_msg(r, "%s: grain directory entry %u names no table, but the "
				      "redundant directory names one at sector %u", x->name, gdi,
				      rgd[gdi]);
			r->corruptions++;
		}
		if (s->gd[gdi] == 0)
			continue;
		if (gt_get(x, gdi, &c) < 0) {
			blk_check_msg(r, "%s", kl_errmsg());
			r->corruptions++;
			continue;
		}
		if ((rc = span_add(&sp, s->gd[gdi], gt_secs, 1)) < 0 ||
		    (rgd && rgd[gdi] && (rc = span_add(&sp, rgd[gdi], gt_secs, 2)) < 0))
			goto out;
		if (rgd && rgd[gdi]) {
			if (gt_read(x, rgd[gdi], rgt, "redundant grain table", gdi) < 0) {
				blk_check_msg(r, "%s", kl_errmsg());
				r->corruptions++;
			} else if (memcmp(rgt, c->ent, (size_t)s->h.gtes * 4) != 0) {
				blk_check_msg(r, "%s: redundant grain table %u differs from the primary",
					      x->name, gdi);
				r->corruptions++;
				if (!differs && !(differs = kl_calloc(s->ngd, 1))) {
					rc = -ENOMEM;
					goto out;
				}
				differs[gdi] = 1;
				ndiffer++;
			}
		}
		for (uint32_t i = 0; i < s->h.gtes; i++) {
			uint64_t g = (uint64_t)gdi * s->h.gtes + i;
			uint32_t gte = c->ent[i];
			enum vmdk_cls cls;

			if (gte == 0)
				continue;
			r->checked++;
			if (g >= ngrains) {
				blk_check_msg(r, "%s: table entry for grain %llu beyond the capacity",
					      x->name, (unsigned long long)g);
				r->corruptions++;
				continue;
			}
			if (classify(x, g, gte, &cls) < 0) {
				blk_check_msg(r, "%s", kl_errmsg());
				r->corruptions++;
				continue;
			}
			if (cls == CLS_ZERO)
				continue;
			r->allocated_clusters++;
			check_grain(x, r, flags, g, gte);
			if (cls == CLS_DATA && (rc = span_add(&sp, gte, (uint32_t)s->h.grain, 0)) < 0)
				goto out;
		}
	}
	if (s->compressed)
		goto out;
	check_spans(x, r, flags, &sp, &tail);
	/* all corruptions but the differing redundant tables are beyond -r */
	rc = check_repair(x, r, flags, differs, r->corruptions - corrupt0 - ndiffer, tail);
out:
	kl_progress_set(prog, x->len);
	kl_progress_finish(prog);
	kl_free(sp.v);
	kl_free(differs);
	kl_free(rgd);
	kl_free(rgt);
	kl_err_clear();
	return rc;
}

/* ------------------------------------------------------------------ create */

int vmdk_sparse_create(struct kl_file *f, const char *name, const struct vmdk_layout *l)
{
	uint64_t span = (uint64_t)l->gtes * l->grain;
	uint64_t ngd = KL_DIV_ROUND_UP(l->capacity, span);
	uint64_t gd_sectors = KL_DIV_ROUND_UP(ngd * 4, VMDK_SECTOR);
	uint64_t gt_sectors = KL_DIV_ROUND_UP((uint64_t)l->gtes * 4, VMDK_SECTOR);
	size_t dlen = strlen(l->desc);
	struct vmdk_hdr h = { 0 };
	uint8_t *buf = NULL;
	size_t buf_len;
	int rc;

	if (dlen > l->desc_sectors * VMDK_SECTOR)
		return kl_err(-EINVAL, "%s: descriptor of %zu bytes does not fit in %llu sectors",
			      name, dlen, (unsigned long long)l->desc_sectors);
	h.capacity = l->capacity;
	h.grain = l->grain;
	h.desc_off = 1;
	h.desc_size = l->desc_sectors;
	h.gtes = l->gtes;
	if (l->stream) {
		h.version = 3;
		h.flags = VMDK_FLAG_NL_CHECK | VMDK_FLAG_COMPRESSED | VMDK_FLAG_MARKERS;
		h.compress = VMDK_COMPRESS_DEFLATE;
		h.gd_off = VMDK_GD_AT_END;
		h.overhead = KL_ALIGN_UP(1 + l->desc_sectors, l->grain);
	} else {
		h.version = l->zero_grain ? 2 : 1;
		h.flags = VMDK_FLAG_NL_CHECK | VMDK_FLAG_RGD | (l->zero_grain ? VMDK_FLAG_ZERO_GRAIN : 0);
		h.rgd_off = 1 + l->desc_sectors;
		h.gd_off = h.rgd_off + gd_sectors + ngd * gt_sectors;
		h.overhead = KL_ALIGN_UP(h.gd_off + gd_sectors + ngd * gt_sectors, l->grain);
		if (h.overhead >= VMDK_MAX_EXTENT_SECTORS)
			return kl_err(-EINVAL, "%s: %llu sectors of grain tables do not fit in one "
				      "sparse extent", name, (unsigned long long)h.overhead);
	}
	buf_len = (size_t)((1 + l->desc_sectors) * VMDK_SECTOR);
	buf = kl_calloc(1, buf_len);
	if (!buf)
		return -ENOMEM;
	vmdk_hdr_encode(&h, buf);
	memcpy(buf + VMDK_SECTOR, l->desc, dlen);
	rc = kl_io_pwrite(f, 0, buf, buf_len);
	kl_free(buf);
	buf = NULL;
	if (rc < 0)
		return rc;
	if (l->stream) {
		uint32_t *gd = kl_calloc((size_t)ngd, 4);
		uint64_t end;

		if (!gd)
			return -ENOMEM;
		rc = vmdk_stream_write_trailer(f, h.overhead * VMDK_SECTOR, &h, gd, (uint32_t)ngd,
					       &end);
		kl_free(gd);
		if (rc == 0)
			rc = kl_io_truncate(f, end);
		return rc;
	}
	/* RGD then GD, each pointing at its own (zero, sparse) tables */
	buf_len = (size_t)(gd_sectors * VMDK_SECTOR);
	buf = kl_calloc(1, buf_len);
	if (!buf)
		return -ENOMEM;
	for (uint64_t i = 0; i < ngd; i++)
		put_le32(buf + 4 * i, (uint32_t)(h.rgd_off + gd_sectors + i * gt_sectors));
	rc = kl_io_pwrite(f, h.rgd_off * VMDK_SECTOR, buf, buf_len);
	for (uint64_t i = 0; rc == 0 && i < ngd; i++)
		put_le32(buf + 4 * i, (uint32_t)(h.gd_off + gd_sectors + i * gt_sectors));
	if (rc == 0)
		rc = kl_io_pwrite(f, h.gd_off * VMDK_SECTOR, buf, buf_len);
	kl_free(buf);
	if (rc == 0)
		rc = kl_io_truncate(f, h.overhead * VMDK_SECTOR);
	return rc;
}
