/*
 * format/vmdk-sesparse.c - seSparse extents, read only: the snapshot
 * deltas ESXi writes on VMFS 6 (and for disks over 2 TiB on VMFS 5).
 *
 * VMware has not published the layout; this follows what qemu reads
 * (block/vmdk.c, "strict checks"), with everything from the file bounded:
 *  - sector 0, the constant header, little-endian u64 fields: magic
 *    0xcafebabe, version 0x200000001, capacity, grain size (8 sectors),
 *    grain table size (64 sectors: 4096 entries), flags (0), four reserved
 *    (0), then (offset, size) in sectors of the volatile header, journal
 *    header, journal, grain directory, grain tables, free bitmap, back map
 *    and grains;
 *  - the volatile header: magic 0xcafecafe, and replay_journal 0 (else the
 *    journal needs replaying, which neither qemu nor keel does);
 *  - grain directory entries (u64): 0 = no table, else 0x10000000 in the
 *    top 32 bits and the table's index in the grain tables area;
 *  - grain table entries (u64), by the top nibble: 0 unallocated (the
 *    parent shows through; the rest must be 0), 1 unmapped and 2 zero
 *    (both read as zeros), 3 allocated: grain index bits 0-47 of the entry
 *    shifted up by 12, or'ed with bits 48-59 shifted down by 48, in grains
 *    from the grains area.
 */
#include "format/vmdk.h"

#include <string.h>

#define SE_CONST_MAGIC 0xcafebabeULL
#define SE_VOLATILE_MAGIC 0xcafecafeULL
#define SE_VERSION 0x200000001ULL
#define SE_GRAIN_SECTORS 8u
#define SE_GT_SECTORS 64u
#define SE_GTES (SE_GT_SECTORS * VMDK_SECTOR / 8)
#define SE_GDE_ALLOCATED 0x1000000000000000ULL
/* a directory entry for every 16 MiB of a disk under 64 TiB */
#define SE_MAX_GDES (1u << 22)

struct vmdk_sesparse {
	uint64_t capacity;	/* sectors */
	uint64_t gt_off;	/* grain tables area, sectors */
	uint64_t grains_off;	/* grains area, sectors */
	uint64_t ngd;
	uint64_t *gd;		/* host order */
	uint64_t *gt;		/* the table last read */
	uint64_t gt_gdi;	/* its directory index, UINT64_MAX = none */
};

enum se_kind { SE_UNALLOC, SE_ZERO, SE_DATA };

int vmdk_sesparse_open(struct vmdk_extent *x)
{
	uint8_t h[VMDK_SECTOR], v[VMDK_SECTOR];
	struct vmdk_sesparse *s;
	uint64_t gd_off, gd_secs, vol_off, need;
	size_t bytes;
	int rc;

	KL_TRY(kl_io_pread_full(x->file, 0, h, sizeof(h), "seSparse header"));
	if (get_le64(h) != SE_CONST_MAGIC)
		return kl_err(-EUCLEAN, "%s: no seSparse header magic", x->name);
	if (get_le64(h + 8) != SE_VERSION)
		return kl_err(-ENOTSUP, "%s: seSparse version %#llx is not supported (0x200000001)",
			      x->name, (unsigned long long)get_le64(h + 8));
	if (get_le64(h + 24) != SE_GRAIN_SECTORS || get_le64(h + 32) != SE_GT_SECTORS)
		return kl_err(-ENOTSUP, "%s: seSparse grains of %llu sectors and tables of %llu "
			      "sectors are not supported (8 and 64)", x->name,
			      (unsigned long long)get_le64(h + 24),
			      (unsigned long long)get_le64(h + 32));
	if (get_le64(h + 40) || get_le64(h + 48) || get_le64(h + 56) || get_le64(h + 64) ||
	    get_le64(h + 72))
		return kl_err(-ENOTSUP, "%s: seSparse flags or reserved fields are set", x->name);
	vol_off = get_le64(h + 80);
	gd_off = get_le64(h + 128);
	gd_secs = get_le64(h + 136);
	need = KL_DIV_ROUND_UP(get_le64(h + 16), (uint64_t)SE_GTES * SE_GRAIN_SECTORS);
	if (gd_secs > (uint64_t)SE_MAX_GDES * 8 / VMDK_SECTOR || gd_secs * VMDK_SECTOR / 8 < need)
		return kl_err(-EUCLEAN, "%s: seSparse grain directory of %llu sectors cannot map "
			      "%llu sectors", x->name, (unsigned long long)gd_secs,
			      (unsigned long long)get_le64(h + 16));
	if (!kl_range_ok(vol_off * VMDK_SECTOR, VMDK_SECTOR, x->file_size) || vol_off == 0 ||
	    vol_off > x->file_size / VMDK_SECTOR)
		return kl_err(-EUCLEAN, "%s: seSparse volatile header at sector %llu lies past the "
			      "end of the file", x->name, (unsigned long long)vol_off);
	KL_TRY(kl_io_pread_full(x->file, vol_off * VMDK_SECTOR, v, sizeof(v),
				"seSparse volatile header"));
	if (get_le64(v) != SE_VOLATILE_MAGIC)
		return kl_err(-EUCLEAN, "%s: no seSparse volatile header magic at sector %llu",
			      x->name, (unsigned long long)vol_off);
	if (get_le64(v + 24))
		return kl_err(-ENOTSUP, "%s: seSparse journal needs replaying (the VM was not shut "
			      "down cleanly); ESXi replays it when it opens the disk", x->name);
	if (gd_off > x->file_size / VMDK_SECTOR ||
	    gd_secs > x->file_size / VMDK_SECTOR - gd_off)
		return kl_err(-EUCLEAN, "%s: seSparse grain directory at sector %llu (%llu sectors) "
			      "lies past the end of the file", x->name, (unsigned long long)gd_off,
			      (unsigned long long)gd_secs);
	if (get_le64(h + 144) > x->file_size / VMDK_SECTOR ||
	    get_le64(h + 192) > x->file_size / VMDK_SECTOR)
		return kl_err(-EUCLEAN, "%s: seSparse grain tables (sector %llu) or grains (sector "
			      "%llu) start past the end of the file", x->name,
			      (unsigned long long)get_le64(h + 144),
			      (unsigned long long)get_le64(h + 192));
	s = kl_calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	x->se = s;
	s->capacity = get_le64(h + 16);
	s->gt_off = get_le64(h + 144);
	s->grains_off = get_le64(h + 192);
	s->ngd = need;
	s->gt_gdi = UINT64_MAX;
	bytes = (size_t)(need ? need : 1) * 8;
	s->gd = kl_malloc(bytes);
	s->gt = kl_malloc((size_t)SE_GTES * 8);
	if (!s->gd || !s->gt) {
		vmdk_sesparse_close(x);
		return -ENOMEM;
	}
	rc = need ? kl_io_pread_full(x->file, gd_off * VMDK_SECTOR, s->gd, (size_t)need * 8,
				     "seSparse grain directory") : 0;
	if (rc < 0) {
		vmdk_sesparse_close(x);
		return rc;
	}
	for (uint64_t i = 0; i < need; i++)
		s->gd[i] = get_le64(&s->gd[i]);
	return 0;
}

void vmdk_sesparse_close(struct vmdk_extent *x)
{
	if (!x->se)
		return;
	kl_free(x->se->gd);
	kl_free(x->se->gt);
	kl_free(x->se);
	x->se = NULL;
}

uint64_t vmdk_sesparse_capacity(const struct vmdk_extent *x)
{
	return x->se->capacity;
}

/* Grain g's kind, and its byte offset in the file when it has data. */
static int grain(struct vmdk_extent *x, uint64_t g, enum se_kind *kind, uint64_t *host)
{
	struct vmdk_sesparse *s = x->se;
	uint64_t gdi = g / SE_GTES, gde, e, idx, sec;

	*kind = SE_UNALLOC;
	if (gdi >= s->ngd || !(gde = s->gd[gdi]))
		return 0;
	if ((gde & 0xffffffff00000000ULL) != SE_GDE_ALLOCATED)
		return kl_err(-EUCLEAN, "%s: seSparse grain directory entry %llu is %#llx, not an "
			      "allocated table", x->name, (unsigned long long)gdi,
			      (unsigned long long)gde);
	if (gdi != s->gt_gdi) {
		uint64_t at = s->gt_off + (gde & 0xffffffffULL) * SE_GT_SECTORS;

		if (!kl_range_ok(at * VMDK_SECTOR, (uint64_t)SE_GTES * 8, x->file_size))
			return kl_err(-EUCLEAN, "%s: seSparse grain table %llu at sector %llu lies "
				      "past the end of the file", x->name,
				      (unsigned long long)gdi, (unsigned long long)at);
		s->gt_gdi = UINT64_MAX;
		KL_TRY(kl_io_pread_full(x->file, at * VMDK_SECTOR, s->gt, (size_t)SE_GTES * 8,
					"seSparse grain table"));
		for (unsigned i = 0; i < SE_GTES; i++)
			s->gt[i] = get_le64(&s->gt[i]);
		s->gt_gdi = gdi;
	}
	e = s->gt[g % SE_GTES];
	switch (e >> 60) {
	case 0:
		if (e)
			break;
		return 0;
	case 1: /* unmapped by the guest (SCSI UNMAP) */
	case 2:
		*kind = SE_ZERO;
		return 0;
	case 3:
		idx = ((e & 0x0fff000000000000ULL) >> 48) | ((e & 0x0000ffffffffffffULL) << 12);
		sec = s->grains_off + idx * SE_GRAIN_SECTORS;
		if (idx > (UINT64_MAX / VMDK_SECTOR - s->grains_off) / SE_GRAIN_SECTORS ||
		    !kl_range_ok(sec * VMDK_SECTOR, SE_GRAIN_SECTORS * VMDK_SECTOR, x->file_size))
			return kl_err(-EUCLEAN, "%s: seSparse grain %llu lies past the end of the "
				      "file (table entry %#llx)", x->name, (unsigned long long)g,
				      (unsigned long long)e);
		*kind = SE_DATA;
		*host = sec * VMDK_SECTOR;
		return 0;
	default:
		break;
	}
	return kl_err(-EUCLEAN, "%s: seSparse grain %llu has table entry %#llx (unknown kind)",
		      x->name, (unsigned long long)g, (unsigned long long)e);
}

#define SE_GRAIN_BYTES (SE_GRAIN_SECTORS * VMDK_SECTOR)
/* grains one status call looks at */
#define SE_STATUS_SCAN 8192

int vmdk_sesparse_status(struct vmdk_extent *x, uint64_t rel, uint64_t len,
			 struct blk_extent *e)
{
	uint64_t g = rel / SE_GRAIN_BYTES, end = rel + len, run_end, host = 0, h2 = 0;
	enum se_kind kind, k2;

	KL_TRY(grain(x, g, &kind, &host));
	run_end = KL_MIN((g + 1) * SE_GRAIN_BYTES, x->len);
	for (int n = 0; run_end < end && n < SE_STATUS_SCAN; n++) {
		uint64_t g2 = run_end / SE_GRAIN_BYTES;

		KL_TRY(grain(x, g2, &k2, &h2));
		if (k2 != kind || (kind == SE_DATA && h2 != host + (g2 - g) * SE_GRAIN_BYTES))
			break;
		run_end = KL_MIN(run_end + SE_GRAIN_BYTES, x->len);
	}
	e->type = kind == SE_DATA ? BLK_DATA : kind == SE_ZERO ? BLK_ZERO : BLK_UNALLOC;
	e->len = run_end - rel;
	e->host_off = kind == SE_DATA ? host + rel % SE_GRAIN_BYTES : BLK_NO_HOST_OFFSET;
	return 0;
}

int vmdk_sesparse_read(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, uint8_t *buf,
		       size_t len)
{
	while (len > 0) {
		uint64_t g = rel / SE_GRAIN_BYTES, in = rel % SE_GRAIN_BYTES, host = 0;
		size_t n = (size_t)KL_MIN((uint64_t)len, SE_GRAIN_BYTES - in);
		enum se_kind kind;

		KL_TRY(grain(x, g, &kind, &host));
		if (kind == SE_DATA)
			KL_TRY(kl_io_pread_full(x->file, host + in, buf, n, "seSparse grain"));
		else if (kind == SE_ZERO)
			memset(buf, 0, n);
		else
			KL_TRY(blk_read_below(d, x->start + rel, buf, n));
		buf += n;
		rel += n;
		len -= n;
	}
	return 0;
}

/*
 * keel check: every grain table the directory names, every entry in it
 * (kind, and data inside the file). Damage is reported and counted, not
 * repaired: keel does not write seSparse.
 */
int vmdk_sesparse_check(struct vmdk_extent *x, struct blk_check_report *r)
{
	struct vmdk_sesparse *s = x->se;
	uint64_t ngrains = KL_DIV_ROUND_UP(x->len, SE_GRAIN_BYTES);

	r->total_clusters += ngrains;
	for (uint64_t gdi = 0; gdi < s->ngd; gdi++) {
		if (!s->gd[gdi])
			continue;
		for (uint64_t g = gdi * SE_GTES; g < KL_MIN((gdi + 1) * SE_GTES, ngrains); g++) {
			enum se_kind kind;
			uint64_t host;

			if (grain(x, g, &kind, &host) < 0) {
				blk_check_msg(r, "%s", kl_errmsg());
				kl_err_clear();
				r->corruptions++;
				if (s->gt_gdi != gdi)
					break; /* the table itself is unreadable */
				continue;
			}
			if (kind == SE_DATA)
				r->allocated_clusters++;
		}
	}
	return 0;
}
