/*
 * format/vhd.c - Microsoft VHD ("vpc" in qemu): fixed, dynamic and
 * differencing disks, read and write.
 *
 * On-disk layout (digest: shared/specs/vhd.md; Microsoft "Virtual Hard Disk
 * Image Format Specification" 1.0). Everything is big-endian.
 *   fixed:        guest data, then a 512-byte footer at the very end.
 *   dynamic/diff: footer copy @0, dynamic header (1024 bytes), BAT of u32
 *                 sector numbers, blocks of [sector bitmap][block data],
 *                 footer at the end. Differencing disks add the parent's
 *                 unique id and parent locators to the header.
 *
 * Policy decisions (documented in README "### VHD"):
 * - The virtual size is the footer's current_size, as Hyper-V and Azure use
 *   it. CHS geometry is shown by info, with a note when it disagrees.
 * - Bad footer or dynamic-header checksums refuse the image (-EBADMSG)
 *   naming the checksum and its offset, unless the caller opened with
 *   BLK_OPEN_NO_CHECKSUM; then info carries a warning. A damaged footer at
 *   the end with a good copy at offset 0 opens read-only from the copy, as
 *   the spec asks, and info says so.
 * - In dynamic disks the sector bitmap is not consulted for reads (a block
 *   is all data, as qemu reads it; unwritten sectors are zero on disk by
 *   the spec). In differencing disks a clear bit reads from the parent.
 * - Creation rounds the size up to a whole CHS geometry like qemu-img,
 *   unless force_size (exact size) or azure (fixed, exact size rounded up
 *   to a whole MiB). The creator application is "keel".
 */
#define _GNU_SOURCE
#include "format/format_int.h"

#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define VHD_SECTOR 512u
#define VHD_FOOTER_SIZE 512u
#define VHD_HEADER_SIZE 1024u
#define VHD_TYPE_FIXED 2u
#define VHD_TYPE_DYNAMIC 3u
#define VHD_TYPE_DIFF 4u
#define VHD_BAT_FREE 0xFFFFFFFFu
#define VHD_EPOCH 946684800ULL /* 2000-01-01 00:00:00 UTC in Unix seconds */
#define VHD_VERSION 0x00010000u
#define VHD_MAX_SIZE (0xFF000000ULL * VHD_SECTOR) /* 2040 GiB, as qemu and Hyper-V */
#define VHD_CHS_MAX_C 65535u
#define VHD_CHS_MAX_H 16u
#define VHD_CHS_MAX_S 255u
#define VHD_CHS_MAX_SECTORS (65535ULL * 16 * 255)
#define VHD_MIN_BLOCK 512u
#define VHD_MAX_BLOCK (256u << 20)
#define VHD_MIN_CREATE_BLOCK 4096u
#define VHD_DEFAULT_BLOCK (2u << 20)
#define VHD_MAX_BAT_BYTES (1ULL << 30)
#define VHD_NLOC 8
#define VHD_LOC_MAX_LEN 65536u
#define VHD_BM_CACHE 16
#define VHD_CREATOR "keel"
#define VHD_CREATOR_VERSION 0x00000001u /* keel 0.1 */

/* footer fields (spec "Hard Disk Footer Format") */
#define F_COOKIE 0
#define F_FEATURES 8
#define F_VERSION 12
#define F_DATA_OFF 16
#define F_TIME 24
#define F_CREATOR 28
#define F_CREATOR_VER 32
#define F_CREATOR_OS 36
#define F_ORIG_SIZE 40
#define F_CUR_SIZE 48
#define F_CYL 56
#define F_HEADS 58
#define F_SPT 59
#define F_TYPE 60
#define F_CHECKSUM 64
#define F_UUID 68
#define F_SAVED 84

/* dynamic disk header fields (spec "Dynamic Disk Header Format") */
#define H_COOKIE 0
#define H_DATA_OFF 8
#define H_TABLE_OFF 16
#define H_VERSION 24
#define H_MAX_ENTRIES 28
#define H_BLOCK_SIZE 32
#define H_CHECKSUM 36
#define H_PARENT_UUID 40
#define H_PARENT_TIME 56
#define H_PARENT_NAME 64
#define H_PARENT_NAME_LEN 512
#define H_LOCATORS 576
#define LOC_ENTRY 24

/* parent locator platform codes */
#define LOC_W2RU 0x57327275u /* "W2ru": relative path, UTF-16LE */
#define LOC_W2KU 0x57326B75u /* "W2ku": absolute path, UTF-16LE */
#define LOC_WI2R 0x57693272u /* "Wi2r": deprecated relative */
#define LOC_WI2K 0x5769326Bu /* "Wi2k": deprecated absolute */
#define LOC_MACX 0x4D616358u /* "MacX": UTF-8 file URL */

struct vhd_locator {
	uint32_t code;
	uint32_t len;
	uint64_t off;
	uint64_t space;
	char *text;	/* decoded path as stored (UTF-8), NULL if unreadable */
	const char *bad; /* why it is unusable, or NULL */
};

struct vhd_bm_slot {
	uint32_t block;
	bool valid;
	bool dirty;	/* bits set in memory, written at the next flush */
};

struct vhd_state {
	uint8_t footer[VHD_FOOTER_SIZE]; /* the footer in use (end copy preferred) */
	uint32_t type;
	uint64_t file_size;
	uint64_t footer_off;	/* offset of the end footer; file_size when damaged */
	bool used_copy;		/* end footer damaged: read from the copy at 0 */
	char *note;		/* warnings for info, "; "-joined, or NULL */
	char *damage;		/* the notes that are damage, for check: "\n"-joined */
	/* dynamic and differencing */
	uint64_t header_off;
	uint8_t header[VHD_HEADER_SIZE];
	uint64_t bat_off;
	uint32_t max_entries;
	uint32_t nblocks;	/* BAT entries in use: ceil(size / block_size) */
	uint32_t *bat;
	uint8_t *bat_dirty;	/* one bit per BAT sector changed since the last flush */
	bool meta_dirty;	/* BAT entries or bitmaps wait for flush */
	uint32_t block_size;
	uint32_t bitmap_size;	/* bytes, a multiple of 512 */
	uint64_t next_off;	/* where the next block goes (the end footer's place) */
	/* differencing */
	struct vhd_locator loc[VHD_NLOC];
	char *parent_name;	/* header's parent name field (UTF-16BE), UTF-8 */
	char *parent_ref;	/* locator in POSIX form that found the parent */
	struct vhd_bm_slot bm[VHD_BM_CACHE];
	uint8_t *bm_buf;	/* VHD_BM_CACHE * bitmap_size */
};

/* ------------------------------------------------------------------ helpers */

static uint32_t vhd_checksum(const uint8_t *b, size_t n, size_t csum_off)
{
	uint32_t sum = 0;

	for (size_t i = 0; i < n; i++)
		if (i < csum_off || i >= csum_off + 4)
			sum += b[i];
	return ~sum;
}

static void vhd_note_add(char **list, const char *sep, const char *text)
{
	char *n = *list ? kl_asprintf("%s%s%s", *list, sep, text) : kl_strdup(text);

	if (n) {
		kl_free(*list);
		*list = n;
	}
}

/*
 * Something open tolerated, for `keel info`; damage (a checksum that does
 * not match, a lost footer) is also what `keel check` reports as corrupt.
 */
static void vhd_note(struct vhd_state *s, bool damage, const char *fmt, ...) KL_PRINTF(3, 4);
static void vhd_note(struct vhd_state *s, bool damage, const char *fmt, ...)
{
	char buf[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	vhd_note_add(&s->note, "; ", buf);
	if (damage)
		vhd_note_add(&s->damage, "\n", buf);
}

/*
 * Spec appendix "CHS calculation": the geometry for a sector count. The
 * product may be less than total (geometry rounds down).
 */
static void vhd_chs(uint64_t total, uint16_t *c, uint8_t *h, uint8_t *spt)
{
	uint64_t cth, heads, sec;

	if (total > VHD_CHS_MAX_SECTORS)
		total = VHD_CHS_MAX_SECTORS;
	if (total >= 65535ULL * 16 * 63) {
		sec = 255;
		heads = 16;
		cth = total / sec;
	} else {
		sec = 17;
		cth = total / sec;
		heads = (cth + 1023) / 1024;
		if (heads < 4)
			heads = 4;
		if (cth >= heads * 1024 || heads > 16) {
			sec = 31;
			heads = 16;
			cth = total / sec;
		}
		if (cth >= heads * 1024) {
			sec = 63;
			heads = 16;
			cth = total / sec;
		}
	}
	*c = (uint16_t)(cth / heads);
	*h = (uint8_t)heads;
	*spt = (uint8_t)sec;
}

static uint64_t vhd_chs_sectors(const uint8_t *footer)
{
	return (uint64_t)get_be16(footer + F_CYL) * footer[F_HEADS] * footer[F_SPT];
}

static bool vhd_chs_is_max(const uint8_t *footer)
{
	return get_be16(footer + F_CYL) == VHD_CHS_MAX_C && footer[F_HEADS] == VHD_CHS_MAX_H &&
	       footer[F_SPT] == VHD_CHS_MAX_S;
}

/* Four printable characters of a creator field ("tap\0" -> "tap"). */
static void vhd_fourcc(const uint8_t *p, char out[5])
{
	int n = 0;

	for (int i = 0; i < 4; i++)
		if (p[i] >= 0x20 && p[i] < 0x7f)
			out[n++] = (char)p[i];
	while (n > 0 && out[n - 1] == ' ')
		n--;
	out[n] = '\0';
}

static void vhd_uuid_str(const uint8_t *u, char out[37])
{
	kl_uuid_format(u, out);
}

/* ----- UTF-16 <-> UTF-8 for parent names and locators ----- */

static size_t utf8_put(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/*
 * Decode n bytes of UTF-16 (big- or little-endian) up to the first NUL.
 * Unpaired surrogates and control characters become U+FFFD / '?', so the
 * result is printable and never contains a NUL or a newline.
 */
static char *vhd_utf16_decode(const uint8_t *p, size_t n, bool be)
{
	size_t units = n / 2, k = 0;
	char *o = kl_malloc(units * 3 + 1);

	if (!o)
		return NULL;
	for (size_t i = 0; i < units; i++) {
		uint32_t u = be ? get_be16(p + 2 * i) : get_le16(p + 2 * i);

		if (u == 0)
			break;
		if (u >= 0xD800 && u < 0xDC00 && i + 1 < units) {
			uint32_t lo = be ? get_be16(p + 2 * i + 2) : get_le16(p + 2 * i + 2);

			if (lo >= 0xDC00 && lo < 0xE000) {
				/* 2 units -> 4 bytes: fits the 3-per-unit budget */
				k += utf8_put(o + k, 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00));
				i++;
				continue;
			}
		}
		if (u >= 0xD800 && u < 0xE000)
			u = 0xFFFD;
		if (u < 0x20 || u == 0x7f)
			u = '?';
		k += utf8_put(o + k, u);
	}
	o[k] = '\0';
	return o;
}

/* Encode UTF-8 as UTF-16; returns bytes written or -EINVAL (bad UTF-8, too long). */
static int vhd_utf16_encode(const char *s, bool be, uint8_t *out, size_t cap)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t k = 0;

	while (*p) {
		uint32_t cp;
		int extra;

		if (*p < 0x80) {
			cp = *p;
			extra = 0;
		} else if ((*p & 0xE0) == 0xC0) {
			cp = *p & 0x1F;
			extra = 1;
		} else if ((*p & 0xF0) == 0xE0) {
			cp = *p & 0x0F;
			extra = 2;
		} else if ((*p & 0xF8) == 0xF0) {
			cp = *p & 0x07;
			extra = 3;
		} else {
			return -EINVAL;
		}
		p++;
		for (int i = 0; i < extra; i++, p++) {
			if ((*p & 0xC0) != 0x80)
				return -EINVAL;
			cp = cp << 6 | (*p & 0x3F);
		}
		if (cp >= 0x110000 || (cp >= 0xD800 && cp < 0xE000))
			return -EINVAL;
		if (cp >= 0x10000) {
			if (k + 4 > cap)
				return -EINVAL;
			cp -= 0x10000;
			if (be) {
				put_be16(out + k, (uint16_t)(0xD800 + (cp >> 10)));
				put_be16(out + k + 2, (uint16_t)(0xDC00 + (cp & 0x3FF)));
			} else {
				put_le16(out + k, (uint16_t)(0xD800 + (cp >> 10)));
				put_le16(out + k + 2, (uint16_t)(0xDC00 + (cp & 0x3FF)));
			}
			k += 4;
		} else {
			if (k + 2 > cap)
				return -EINVAL;
			if (be)
				put_be16(out + k, (uint16_t)cp);
			else
				put_le16(out + k, (uint16_t)cp);
			k += 2;
		}
	}
	return (int)k;
}

/*
 * Windows path from a locator -> POSIX path keel can open. ".\x" and
 * "..\x" become relative paths; "\dir\x" an absolute one. Drive-letter
 * ("C:\...") and UNC ("\\server\...") paths name places that do not exist
 * here: *why says so and the result is NULL.
 */
static char *vhd_win_to_posix(const char *win, const char **why)
{
	char *p, *q;

	*why = NULL;
	if (!win || !*win) {
		*why = "empty path";
		return NULL;
	}
	if (((win[0] >= 'A' && win[0] <= 'Z') || (win[0] >= 'a' && win[0] <= 'z')) &&
	    win[1] == ':') {
		*why = "an absolute Windows path with a drive letter, which cannot be resolved here";
		return NULL;
	}
	if (win[0] == '\\' && win[1] == '\\') {
		*why = "a Windows network (UNC) path, which cannot be resolved here";
		return NULL;
	}
	p = kl_strdup(win);
	if (!p)
		return NULL;
	for (q = p; *q; q++)
		if (*q == '\\')
			*q = '/';
	q = p;
	while (q[0] == '.' && q[1] == '/')
		q += 2;
	if (!*q) {
		kl_free(p);
		*why = "names a directory, not a file";
		return NULL;
	}
	memmove(p, q, strlen(q) + 1);
	return p;
}

/* A "file://host/path" URL (MacX locator) -> path. */
static char *vhd_url_to_posix(const char *url, const char **why)
{
	const char *p = url;

	*why = NULL;
	if (strncmp(p, "file://", 7) != 0) {
		*why = "not a file:// URL";
		return NULL;
	}
	p += 7;
	p = strchr(p, '/');
	if (!p) {
		*why = "a file:// URL without a path";
		return NULL;
	}
	return kl_strdup(p);
}

static void vhd_state_release(struct vhd_state *s)
{
	kl_free(s->bat);
	s->bat = NULL;
	kl_free(s->bat_dirty);
	s->bat_dirty = NULL;
	kl_free(s->bm_buf);
	s->bm_buf = NULL;
	kl_free(s->note);
	kl_free(s->damage);
	s->note = NULL;
	kl_free(s->parent_name);
	s->parent_name = NULL;
	kl_free(s->parent_ref);
	s->parent_ref = NULL;
	for (int i = 0; i < VHD_NLOC; i++) {
		kl_free(s->loc[i].text);
		s->loc[i].text = NULL;
	}
}

/* ------------------------------------------------------------------ probe */

static bool vhd_cookie(const uint8_t *p)
{
	return memcmp(p, "conectix", 8) == 0;
}

static int vhd_probe(const struct blk_probe_buf *pb)
{
	/* the footer at the end: 512 bytes, or 511 from old Virtual PC versions */
	if (pb->tail_len >= VHD_FOOTER_SIZE && pb->file_size >= VHD_FOOTER_SIZE &&
	    vhd_cookie(pb->tail + pb->tail_len - VHD_FOOTER_SIZE))
		return 100;
	if (pb->tail_len >= VHD_FOOTER_SIZE - 1 && vhd_cookie(pb->tail + pb->tail_len - 511))
		return 100;
	/* dynamic/differencing disk whose end footer is damaged: the copy at 0 */
	if (pb->head_len >= 8 && vhd_cookie(pb->head))
		return 95;
	return 0;
}

/* ------------------------------------------------------------------ open */

struct vhd_footer_cand {
	uint8_t buf[VHD_FOOTER_SIZE];
	uint64_t off;
	size_t len;	/* 512, or 511 for the old short footer */
	bool cookie;
	bool sum_ok;
	uint32_t stored, computed;
};

static void vhd_footer_eval(struct vhd_footer_cand *c)
{
	c->cookie = vhd_cookie(c->buf);
	c->stored = get_be32(c->buf + F_CHECKSUM);
	c->computed = vhd_checksum(c->buf, VHD_FOOTER_SIZE, F_CHECKSUM);
	c->sum_ok = c->cookie && c->stored == c->computed;
}

/*
 * Pick the footer: the one at the end when its checksum holds, else the
 * copy at offset 0 (spec: Virtual PC falls back to it), else an error
 * naming both checksums and where they are.
 */
static int vhd_read_footer(struct blk_dev *d)
{
	struct vhd_state *s = d->priv;
	struct vhd_footer_cand end = { .len = VHD_FOOTER_SIZE };
	struct vhd_footer_cand copy = { .off = 0, .len = VHD_FOOTER_SIZE };
	bool no_sum = d->flags & BLK_OPEN_NO_CHECKSUM;
	bool copy_usable;

	if (s->file_size < VHD_FOOTER_SIZE)
		return kl_err(-EUCLEAN, "%s: file of %llu bytes is too small for a VHD "
			      "(the footer alone is 512 bytes)", d->filename,
			      (unsigned long long)s->file_size);
	end.off = s->file_size - VHD_FOOTER_SIZE;
	KL_TRY(kl_io_pread_full(d->file, end.off, end.buf, VHD_FOOTER_SIZE, "VHD footer"));
	if (!vhd_cookie(end.buf) && vhd_cookie(end.buf + 1)) {
		/* a 511-byte footer: the missing byte is reserved (zero) */
		memmove(end.buf, end.buf + 1, VHD_FOOTER_SIZE - 1);
		end.buf[VHD_FOOTER_SIZE - 1] = 0;
		end.off++;
		end.len = VHD_FOOTER_SIZE - 1;
	}
	KL_TRY(kl_io_pread_full(d->file, 0, copy.buf, VHD_FOOTER_SIZE, "VHD footer copy"));
	vhd_footer_eval(&end);
	vhd_footer_eval(&copy);
	/* a fixed disk has no copy: guest data at 0 that looks like one is not one */
	copy_usable = copy.cookie && get_be32(copy.buf + F_TYPE) != VHD_TYPE_FIXED &&
		      s->file_size >= 2 * VHD_FOOTER_SIZE;

	if (end.sum_ok || (no_sum && end.cookie)) {
		memcpy(s->footer, end.buf, VHD_FOOTER_SIZE);
		s->footer_off = end.off;
		if (!end.sum_ok)
			vhd_note(s, true, "footer checksum at offset %llu is wrong (stored 0x%08x, "
				 "computed 0x%08x); read anyway because checksum verification is off",
				 (unsigned long long)end.off, end.stored, end.computed);
		if (end.len != VHD_FOOTER_SIZE)
			vhd_note(s, false, "511-byte footer (written by an old Virtual PC)");
		return 0;
	}
	if (copy_usable && (copy.sum_ok || no_sum)) {
		memcpy(s->footer, copy.buf, VHD_FOOTER_SIZE);
		s->footer_off = s->file_size;
		s->used_copy = true;
		if (end.cookie)
			vhd_note(s, true, "the footer at the end (offset %llu) is damaged "
				 "(checksum stored 0x%08x, computed 0x%08x); using the copy at "
				 "offset 0",
				 (unsigned long long)end.off, end.stored, end.computed);
		else
			vhd_note(s, true, "no footer at the end of the file (offset %llu has "
				 "no 'conectix' cookie; truncated or interrupted write?); using "
				 "the copy at offset 0",
				 (unsigned long long)end.off);
		if (!copy.sum_ok)
			vhd_note(s, true, "footer copy checksum at offset 0 is wrong (stored "
				 "0x%08x, computed 0x%08x); read anyway because checksum "
				 "verification is off",
				 copy.stored, copy.computed);
		return 0;
	}
	if (!end.cookie && !copy.cookie)
		return kl_err(-EUCLEAN, "%s: not a VHD: no 'conectix' footer at offset %llu "
			      "(end of file) or at offset 0", d->filename,
			      (unsigned long long)end.off);
	if (end.cookie && copy_usable)
		return kl_err(-EBADMSG, "%s: VHD footer checksum mismatch at offset %llu (end of "
			      "file): stored 0x%08x, computed 0x%08x; the footer copy at offset 0 "
			      "is bad too: stored 0x%08x, computed 0x%08x", d->filename,
			      (unsigned long long)end.off, end.stored, end.computed, copy.stored,
			      copy.computed);
	if (end.cookie)
		return kl_err(-EBADMSG, "%s: VHD footer checksum mismatch at offset %llu (end of "
			      "file): stored 0x%08x, computed 0x%08x (no usable copy at offset 0)",
			      d->filename, (unsigned long long)end.off, end.stored, end.computed);
	if (copy_usable)
		return kl_err(-EBADMSG, "%s: no VHD footer at the end of the file (offset %llu) and "
			      "the footer copy at offset 0 fails its checksum: stored 0x%08x, "
			      "computed 0x%08x", d->filename, (unsigned long long)end.off,
			      copy.stored, copy.computed);
	return kl_err(-EUCLEAN, "%s: no VHD footer at the end of the file (offset %llu); the "
		      "'conectix' record at offset 0 describes a fixed disk, which has no copy there",
		      d->filename, (unsigned long long)end.off);
}

static int vhd_open_fixed(struct blk_dev *d)
{
	struct vhd_state *s = d->priv;
	uint64_t size = get_be64(s->footer + F_CUR_SIZE);

	if (size > s->footer_off)
		return kl_err(-EUCLEAN, "%s: fixed VHD of %llu bytes (footer current size) needs "
			      "that many bytes before the footer at offset %llu; the file is "
			      "truncated", d->filename, (unsigned long long)size,
			      (unsigned long long)s->footer_off);
	d->size = size;
	return 0;
}

struct vhd_range {
	uint64_t start, end;
	uint32_t index; /* BAT index, or UINT32_MAX for metadata */
};

static int vhd_range_cmp(const void *a, const void *b)
{
	const struct vhd_range *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

static const char *vhd_range_name(const struct vhd_range *r, char *buf, size_t len)
{
	if (r->index == UINT32_MAX)
		snprintf(buf, len, "metadata at offset %llu", (unsigned long long)r->start);
	else
		snprintf(buf, len, "block %u at offset %llu", r->index,
			 (unsigned long long)r->start);
	return buf;
}

/*
 * Every allocated block must lie inside the file, after the metadata, and
 * no two may overlap: a BAT entry pointing at the BAT itself or at another
 * block would make writes corrupt the image.
 */
static int vhd_check_bat(struct blk_dev *d, const struct vhd_range *meta, size_t nmeta)
{
	struct vhd_state *s = d->priv;
	uint64_t span = (uint64_t)s->bitmap_size + s->block_size;
	uint64_t limit = s->footer_off;
	struct vhd_range *r;
	size_t n = 0;
	int rc = 0;

	r = kl_calloc((size_t)s->nblocks + nmeta, sizeof(*r));
	if (!r)
		return -ENOMEM;
	for (size_t i = 0; i < nmeta; i++)
		r[n++] = meta[i];
	for (uint32_t i = 0; i < s->nblocks; i++) {
		uint64_t start;

		if (s->bat[i] == VHD_BAT_FREE)
			continue;
		start = (uint64_t)s->bat[i] * VHD_SECTOR;
		if (!kl_range_ok(start, span, limit)) {
			rc = kl_err(-EUCLEAN, "%s: BAT entry %u (virtual offset %llu) points to file "
				    "offset %llu, but the block (%llu bytes with its bitmap) would end "
				    "past %llu, the end of the data area", d->filename, i,
				    (unsigned long long)i * s->block_size,
				    (unsigned long long)start, (unsigned long long)span,
				    (unsigned long long)limit);
			goto out;
		}
		r[n].start = start;
		r[n].end = start + span;
		r[n].index = i;
		n++;
	}
	qsort(r, n, sizeof(*r), vhd_range_cmp);
	/*
	 * Sorted by start, a range overlaps an earlier one iff it starts
	 * before the largest end seen so far. Metadata may overlap metadata
	 * (locator space around the BAT), nothing else may overlap.
	 */
	for (size_t i = 0, all = SIZE_MAX, blocks = SIZE_MAX; i < n; i++) {
		size_t hit = SIZE_MAX;
		char a[64], b[64];

		if (blocks != SIZE_MAX && r[i].start < r[blocks].end)
			hit = blocks;
		else if (r[i].index != UINT32_MAX && all != SIZE_MAX && r[i].start < r[all].end)
			hit = all;
		if (hit != SIZE_MAX) {
			rc = kl_err(-EUCLEAN, "%s: VHD %s overlaps %s", d->filename,
				    vhd_range_name(&r[hit], a, sizeof(a)),
				    vhd_range_name(&r[i], b, sizeof(b)));
			goto out;
		}
		if (all == SIZE_MAX || r[i].end > r[all].end)
			all = i;
		if (r[i].index != UINT32_MAX && (blocks == SIZE_MAX || r[i].end > r[blocks].end))
			blocks = i;
		s->next_off = KL_MAX(s->next_off, r[i].end);
	}
out:
	kl_free(r);
	return rc;
}

static int vhd_read_locators(struct blk_dev *d, struct vhd_range *meta, size_t *nmeta)
{
	struct vhd_state *s = d->priv;

	for (int i = 0; i < VHD_NLOC; i++) {
		const uint8_t *e = s->header + H_LOCATORS + i * LOC_ENTRY;
		struct vhd_locator *l = &s->loc[i];
		uint32_t space = get_be32(e + 4);
		uint8_t *buf;
		int rc;

		l->code = get_be32(e);
		l->len = get_be32(e + 8);
		l->off = get_be64(e + 16);
		if (l->code == 0)
			continue;
		/*
		 * "Platform data space" is sectors in the spec and bytes in
		 * files Microsoft writes: Xen's rule tells them apart.
		 */
		if (space < VHD_SECTOR)
			l->space = (uint64_t)space * VHD_SECTOR;
		else if (space % VHD_SECTOR == 0)
			l->space = space;
		else
			l->space = 0;
		if (l->len == 0 || l->len > VHD_LOC_MAX_LEN) {
			l->bad = "data length is zero or larger than 64 KiB";
			continue;
		}
		if (l->space && l->len > l->space) {
			l->bad = "data length exceeds its data space";
			continue;
		}
		if (!kl_range_ok(l->off, l->len, s->file_size)) {
			l->bad = "data lies past the end of the file";
			continue;
		}
		buf = kl_malloc(l->len);
		if (!buf)
			return -ENOMEM;
		rc = kl_io_pread_full(d->file, l->off, buf, l->len, "VHD parent locator");
		if (rc < 0) {
			kl_free(buf);
			return rc;
		}
		switch (l->code) {
		case LOC_W2RU:
		case LOC_W2KU:
			l->text = vhd_utf16_decode(buf, l->len, false);
			break;
		case LOC_WI2R:
		case LOC_WI2K: {
			/* deprecated: single-byte text, or UTF-16LE in some writers */
			bool wide = l->len >= 2 && buf[1] == 0;

			if (wide) {
				l->text = vhd_utf16_decode(buf, l->len, false);
			} else {
				l->text = kl_malloc(l->len + 1);
				if (l->text) {
					for (uint32_t k = 0; k < l->len; k++)
						l->text[k] = buf[k] >= 0x20 && buf[k] < 0x7f ? (char)buf[k]
											    : '?';
					l->text[l->len] = '\0';
					l->text[strnlen(l->text, l->len)] = '\0';
				}
			}
			break;
		}
		case LOC_MACX:
			l->text = kl_malloc(l->len + 1);
			if (l->text) {
				for (uint32_t k = 0; k < l->len; k++)
					l->text[k] = buf[k] >= 0x20 && buf[k] != 0x7f ? (char)buf[k] : '?';
				l->text[l->len] = '\0';
			}
			break;
		default:
			l->bad = "platform code not supported";
			break;
		}
		kl_free(buf);
		if (!l->text && !l->bad)
			return -ENOMEM;
		if (l->text && l->space && *nmeta < 2 * VHD_NLOC + 3) {
			meta[*nmeta].start = l->off;
			meta[*nmeta].end = l->off + KL_MAX(l->space, (uint64_t)l->len);
			if (meta[*nmeta].end > s->file_size)
				meta[*nmeta].end = l->off + l->len;
			meta[*nmeta].index = UINT32_MAX;
			(*nmeta)++;
		}
	}
	return 0;
}

static const char *vhd_loc_name(uint32_t code, char out[5])
{
	uint8_t b[4];

	put_be32(b, code);
	vhd_fourcc(b, out);
	return out;
}

/* Relative locators first (they survive moving the pair), then absolute. */
static const uint32_t vhd_loc_order[] = { LOC_W2RU, LOC_WI2R, LOC_W2KU, LOC_WI2K, LOC_MACX };

static char *vhd_loc_posix(const struct vhd_locator *l, const char **why)
{
	if (!l->text) {
		*why = l->bad ? l->bad : "unreadable";
		return NULL;
	}
	if (l->code == LOC_MACX)
		return vhd_url_to_posix(l->text, why);
	return vhd_win_to_posix(l->text, why);
}

/* The reference info shows: the first locator keel can use, in POSIX form. */
static void vhd_pick_display_ref(struct vhd_state *s)
{
	for (size_t k = 0; k < KL_ARRAY_SIZE(vhd_loc_order) && !s->parent_ref; k++)
		for (int i = 0; i < VHD_NLOC && !s->parent_ref; i++) {
			const char *why;

			if (s->loc[i].code == vhd_loc_order[k])
				s->parent_ref = vhd_loc_posix(&s->loc[i], &why);
		}
}

/* Parent lookup state: what was tried, for the error message and to skip repeats. */
struct vhd_lookup {
	char tried[1536];
	size_t tl;
	char *seen[VHD_NLOC + 1]; /* real paths already opened or found missing */
	int nseen;
	bool stale;
	const char *dir;
};

static void vhd_tried(struct vhd_lookup *lk, const char *fmt, ...) KL_PRINTF(2, 3);
static void vhd_tried(struct vhd_lookup *lk, const char *fmt, ...)
{
	va_list ap;

	if (lk->tl >= sizeof(lk->tried) - 1)
		return;
	if (lk->tl)
		lk->tl += (size_t)snprintf(lk->tried + lk->tl, sizeof(lk->tried) - lk->tl, "; ");
	if (lk->tl >= sizeof(lk->tried) - 1)
		return;
	va_start(ap, fmt);
	lk->tl += (size_t)vsnprintf(lk->tried + lk->tl, sizeof(lk->tried) - lk->tl, fmt, ap);
	va_end(ap);
	lk->tl = KL_MIN(lk->tl, sizeof(lk->tried) - 1);
}

/*
 * Try one parent reference (POSIX, relative to the child's directory).
 * Returns 1 when it is the parent (d->parent set), 0 to try the next one,
 * or a negative error that ends the search (corrupt parent, loop, escape).
 */
static int vhd_try_parent(struct blk_dev *d, struct vhd_lookup *lk, const char *label,
			  const char *text, const char *ref)
{
	struct vhd_state *s = d->priv;
	const uint8_t *want = s->header + H_PARENT_UUID;
	struct blk_identity id;
	char *path, *real, got_s[37];
	int rc;

	path = ref[0] == '/' ? kl_strdup(ref) : kl_asprintf("%s/%s", lk->dir, ref);
	if (!path)
		return -ENOMEM;
	real = realpath(path, NULL);
	/* the same file again (W2ru and W2ku usually agree): its verdict stands */
	for (int i = 0; i < lk->nseen; i++)
		if (strcmp(lk->seen[i], real ? real : path) == 0) {
			free(real);
			kl_free(path);
			return 0;
		}
	if (lk->nseen < (int)KL_ARRAY_SIZE(lk->seen)) {
		lk->seen[lk->nseen] = kl_strdup(real ? real : path);
		if (lk->seen[lk->nseen])
			lk->nseen++;
	}
	free(real);
	rc = blk_open_parent(d, ref, "vhd");
	if (rc == -ENOENT) {
		vhd_tried(lk, "%s '%s': %s not found", label, text, path);
		kl_free(path);
		return 0;
	}
	if (rc == -EPERM) {
		/* outside the child's directory: say so, and let other locators try */
		vhd_tried(lk, "%s '%s': %s is outside the image's directory (follow it with "
			  "--allow-external-backing)", label, text, path);
		kl_free(path);
		return 0;
	}
	kl_free(path);
	if (rc < 0)
		return rc;
	KL_TRY(blk_identity(d->parent, &id));
	if ((id.valid & BLK_ID_UUID) && memcmp(id.uuid, want, 16) == 0)
		return 1;
	if (id.valid & BLK_ID_UUID)
		vhd_uuid_str(id.uuid, got_s);
	else
		snprintf(got_s, sizeof(got_s), "none");
	vhd_tried(lk, "%s '%s': %s has unique id %s", label, text, blk_filename(d->parent), got_s);
	lk->stale = true;
	blk_close(d->parent);
	d->parent = NULL;
	return 0;
}

/*
 * Find and open the parent: relative locators first, then absolute ones,
 * then (as libvhdi does) the parent name field, whose last path component
 * is looked up next to the child. The parent's footer unique id must equal
 * the id the child recorded.
 */
static int vhd_open_parent(struct blk_dev *d)
{
	struct vhd_state *s = d->priv;
	struct vhd_lookup lk = { .tl = 0 };
	char want_s[37], *dcopy, *rdir;
	bool any = false;
	int rc = 0;

	lk.tried[0] = '\0';
	vhd_uuid_str(s->header + H_PARENT_UUID, want_s);
	dcopy = kl_strdup(d->filename);
	if (!dcopy)
		return -ENOMEM;
	lk.dir = dirname(dcopy);
	rdir = realpath(lk.dir, NULL);
	if (rdir)
		lk.dir = rdir;
	for (size_t k = 0; k < KL_ARRAY_SIZE(vhd_loc_order) && rc == 0; k++) {
		for (int i = 0; i < VHD_NLOC && rc == 0; i++) {
			struct vhd_locator *l = &s->loc[i];
			const char *why = NULL;
			char name[5], *ref;

			if (l->code != vhd_loc_order[k])
				continue;
			any = true;
			vhd_loc_name(l->code, name);
			ref = vhd_loc_posix(l, &why);
			if (!ref && !why) {
				rc = -ENOMEM;
				break;
			}
			if (!ref) {
				vhd_tried(&lk, "%s '%s': %s", name, l->text ? l->text : "", why);
				continue;
			}
			rc = vhd_try_parent(d, &lk, name, l->text, ref);
			if (rc == 1) {
				kl_free(s->parent_ref);
				s->parent_ref = ref;
				ref = NULL;
			}
			kl_free(ref);
		}
	}
	if (rc == 0 && s->parent_name && *s->parent_name) {
		const char *base = strrchr(s->parent_name, '\\');
		const char *why = NULL;
		char *ref;

		any = true;
		base = base ? base + 1 : s->parent_name;
		ref = vhd_win_to_posix(base, &why);
		if (ref) {
			rc = vhd_try_parent(d, &lk, "parent name", s->parent_name, ref);
			if (rc == 1) {
				kl_free(s->parent_ref);
				s->parent_ref = ref;
				ref = NULL;
			}
			kl_free(ref);
		} else if (why) {
			vhd_tried(&lk, "parent name '%s': %s", s->parent_name, why);
		} else {
			rc = -ENOMEM;
		}
	}
	if (rc == 1)
		rc = 0;
	else if (rc < 0)
		;
	else if (!any)
		rc = kl_err(-EUCLEAN, "%s: differencing VHD names no parent (no locator, empty parent "
			    "name; expected parent unique id %s)", d->filename, want_s);
	else if (lk.stale)
		rc = kl_err(-ESTALE, "%s: wrong parent: this differencing VHD expects parent unique "
			    "id %s; %s", d->filename, want_s, lk.tried);
	else
		rc = kl_err(-ENOENT, "%s: parent not found: %s (expected parent unique id %s)",
			    d->filename, lk.tried, want_s);
	for (int i = 0; i < lk.nseen; i++)
		kl_free(lk.seen[i]);
	free(rdir);
	kl_free(dcopy);
	return rc;
}

static int vhd_open_dynamic(struct blk_dev *d)
{
	struct vhd_state *s = d->priv;
	struct vhd_range meta[2 * VHD_NLOC + 3];
	size_t nmeta = 0;
	uint64_t size = get_be64(s->footer + F_CUR_SIZE);
	uint64_t need, bat_bytes, cap;
	uint32_t stored, computed, ver, bits;
	int rc;

	s->header_off = get_be64(s->footer + F_DATA_OFF);
	if (s->header_off < VHD_FOOTER_SIZE ||
	    !kl_range_ok(s->header_off, VHD_HEADER_SIZE, s->file_size))
		return kl_err(-EUCLEAN, "%s: dynamic disk header offset %llu (footer data offset) "
			      "is outside the file (%llu bytes)", d->filename,
			      (unsigned long long)s->header_off, (unsigned long long)s->file_size);
	KL_TRY(kl_io_pread_full(d->file, s->header_off, s->header, VHD_HEADER_SIZE,
				"VHD dynamic disk header"));
	if (memcmp(s->header + H_COOKIE, "cxsparse", 8) != 0)
		return kl_err(-EUCLEAN, "%s: no 'cxsparse' dynamic disk header at offset %llu",
			      d->filename, (unsigned long long)s->header_off);
	stored = get_be32(s->header + H_CHECKSUM);
	computed = vhd_checksum(s->header, VHD_HEADER_SIZE, H_CHECKSUM);
	if (stored != computed) {
		if (!(d->flags & BLK_OPEN_NO_CHECKSUM))
			return kl_err(-EBADMSG, "%s: VHD dynamic disk header checksum mismatch at "
				      "offset %llu: stored 0x%08x, computed 0x%08x", d->filename,
				      (unsigned long long)s->header_off, stored, computed);
		vhd_note(s, true, "dynamic disk header checksum at offset %llu is wrong (stored "
			 "0x%08x, computed 0x%08x); read anyway because checksum verification "
			 "is off",
			 (unsigned long long)s->header_off, stored, computed);
	}
	ver = get_be32(s->header + H_VERSION);
	if (ver >> 16 != 1)
		return kl_err(-ENOTSUP, "%s: dynamic disk header version %u.%u is not supported "
			      "(expected 1.x)", d->filename, ver >> 16, ver & 0xffff);
	s->block_size = get_be32(s->header + H_BLOCK_SIZE);
	if (!KL_IS_POW2(s->block_size) || s->block_size < VHD_MIN_BLOCK ||
	    s->block_size > VHD_MAX_BLOCK)
		return kl_err(-EUCLEAN, "%s: VHD block size %u at offset %llu is not a power of two "
			      "between 512 bytes and 256 MiB", d->filename, s->block_size,
			      (unsigned long long)s->header_off + H_BLOCK_SIZE);
	s->max_entries = get_be32(s->header + H_MAX_ENTRIES);
	/* not KL_DIV_ROUND_UP: a hostile size near 2^64 would wrap to 0 blocks */
	need = size / s->block_size + (size % s->block_size != 0);
	if (need > s->max_entries)
		return kl_err(-EUCLEAN, "%s: virtual size %llu needs %llu blocks of %u bytes but the "
			      "BAT has only %u entries", d->filename, (unsigned long long)size,
			      (unsigned long long)need, s->block_size, s->max_entries);
	s->nblocks = (uint32_t)need;
	s->bat_off = get_be64(s->header + H_TABLE_OFF);
	bat_bytes = need * 4;
	if (!kl_range_ok(s->bat_off, bat_bytes, s->file_size))
		return kl_err(-EUCLEAN, "%s: BAT at offset %llu (%llu entries) extends past the end "
			      "of the file (%llu bytes)", d->filename, (unsigned long long)s->bat_off,
			      (unsigned long long)need, (unsigned long long)s->file_size);
	if (bat_bytes > VHD_MAX_BAT_BYTES)
		return kl_err(-ENOTSUP, "%s: BAT of %llu entries is larger than keel's limit of "
			      "1 GiB", d->filename, (unsigned long long)need);
	d->size = size;
	bits = s->block_size / VHD_SECTOR;
	s->bitmap_size = (uint32_t)KL_ALIGN_UP(KL_DIV_ROUND_UP(bits, 8u), VHD_SECTOR);
	if (need) {
		s->bat = kl_malloc((size_t)bat_bytes);
		if (!s->bat)
			return -ENOMEM;
		KL_TRY(kl_io_pread_full(d->file, s->bat_off, s->bat, (size_t)bat_bytes,
					"VHD block allocation table"));
		for (uint32_t i = 0; i < s->nblocks; i++)
			s->bat[i] = get_be32((const uint8_t *)s->bat + 4 * (size_t)i);
		s->bat_dirty = kl_calloc(1, (size_t)KL_DIV_ROUND_UP(bat_bytes, VHD_SECTOR * 8ULL));
		if (!s->bat_dirty)
			return -ENOMEM;
	}

	meta[nmeta++] = (struct vhd_range){ 0, VHD_FOOTER_SIZE, UINT32_MAX };
	meta[nmeta++] = (struct vhd_range){ s->header_off, s->header_off + VHD_HEADER_SIZE,
					    UINT32_MAX };
	if (bat_bytes)
		meta[nmeta++] = (struct vhd_range){ s->bat_off, s->bat_off + bat_bytes,
						    UINT32_MAX };
	if (s->type == VHD_TYPE_DIFF) {
		s->parent_name = vhd_utf16_decode(s->header + H_PARENT_NAME, H_PARENT_NAME_LEN, true);
		if (!s->parent_name)
			return -ENOMEM;
		KL_TRY(vhd_read_locators(d, meta, &nmeta));
		s->bm_buf = kl_malloc((size_t)VHD_BM_CACHE * s->bitmap_size);
		if (!s->bm_buf)
			return -ENOMEM;
	}
	/* BAT area as written is padded to a sector: allocate past the padding */
	s->next_off = KL_ALIGN_UP(s->bat_off + bat_bytes, VHD_SECTOR);
	KL_TRY(vhd_check_bat(d, meta, nmeta));
	if (!s->used_copy)
		s->next_off = KL_MAX(s->next_off, s->footer_off);
	s->next_off = KL_ALIGN_UP(s->next_off, VHD_SECTOR);
	cap = (uint64_t)UINT32_MAX * VHD_SECTOR;
	if (s->next_off > cap)
		s->next_off = cap; /* allocation will refuse: BAT entries are u32 sectors */
	d->cluster_size = s->block_size;

	if (s->type == VHD_TYPE_DIFF) {
		if (d->flags & BLK_OPEN_NO_PARENT) {
			vhd_pick_display_ref(s);
			return 0;
		}
		rc = vhd_open_parent(d);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int vhd_open(struct blk_dev *d, const struct blk_open_opts *o)
{
	struct vhd_state *s = d->priv;
	uint32_t ver;
	int rc;

	(void)o;
	rc = kl_io_size(d->file, &s->file_size);
	if (rc < 0)
		return rc;
	rc = vhd_read_footer(d);
	if (rc < 0)
		goto err;
	ver = get_be32(s->footer + F_VERSION);
	if (ver >> 16 != 1) {
		rc = kl_err(-ENOTSUP, "%s: VHD file format version %u.%u is not supported (expected "
			    "1.x)", d->filename, ver >> 16, ver & 0xffff);
		goto err;
	}
	s->type = get_be32(s->footer + F_TYPE);
	switch (s->type) {
	case VHD_TYPE_FIXED:
		rc = vhd_open_fixed(d);
		break;
	case VHD_TYPE_DYNAMIC:
	case VHD_TYPE_DIFF:
		rc = vhd_open_dynamic(d);
		break;
	default:
		rc = kl_err(-ENOTSUP, "%s: VHD disk type %u is not supported (2 fixed, 3 dynamic, "
			    "4 differencing)", d->filename, s->type);
		break;
	}
	if (rc < 0)
		goto err;
	/* `keel check -r all` is the one writer that may: it rebuilds the footer */
	if (!d->read_only && s->used_copy && !(d->flags & BLK_OPEN_REPAIR)) {
		rc = kl_err(-EUCLEAN, "%s: %s; refusing to write to it (it opens read-only; "
			    "'keel check -r all' rebuilds the end footer)", d->filename,
			    s->note ? s->note : "the footer at the end is damaged");
		goto err;
	}
	d->write_align = VHD_SECTOR;
	return 0;
err:
	vhd_state_release(s);
	return rc;
}

static void vhd_close(struct blk_dev *d)
{
	vhd_state_release(d->priv);
}

/* ------------------------------------------------------------------ reads */

/* Write a cached bitmap whose bits changed; the data it covers must be synced. */
static int vhd_bm_writeback(struct blk_dev *d, int i)
{
	struct vhd_state *s = d->priv;
	struct vhd_bm_slot *slot = &s->bm[i];

	if (!slot->valid || !slot->dirty)
		return 0;
	KL_TRY(kl_io_pwrite(d->file, (uint64_t)s->bat[slot->block] * VHD_SECTOR,
			    s->bm_buf + (size_t)i * s->bitmap_size, s->bitmap_size));
	slot->dirty = false;
	return 0;
}

/* The sector bitmap of an allocated block of a differencing disk. */
static int vhd_bitmap(struct blk_dev *d, uint32_t blk, uint8_t **out)
{
	struct vhd_state *s = d->priv;
	int i = (int)(blk % VHD_BM_CACHE);
	struct vhd_bm_slot *slot = &s->bm[i];
	uint8_t *bits = s->bm_buf + (size_t)i * s->bitmap_size;

	if (!slot->valid || slot->block != blk) {
		if (slot->valid && slot->dirty) {
			/* data before the bits that make it visible */
			KL_TRY(kl_io_sync(d->file));
			KL_TRY(vhd_bm_writeback(d, i));
		}
		slot->valid = false;
		KL_TRY(kl_io_pread_full(d->file, (uint64_t)s->bat[blk] * VHD_SECTOR, bits,
					s->bitmap_size, "VHD sector bitmap"));
		slot->block = blk;
		slot->valid = true;
		slot->dirty = false;
	}
	*out = bits;
	return 0;
}

static bool bm_test(const uint8_t *bits, uint64_t i)
{
	return bits[i / 8] & (0x80 >> (i % 8));
}

static int vhd_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	struct vhd_state *s = d->priv;
	uint32_t blk;
	uint64_t inblk, blk_end;

	if (s->type == VHD_TYPE_FIXED) {
		uint64_t data, hole;
		int rc = kl_io_seek_data(d->file, off, &data);

		e->host_off = off;
		if (rc == 0 && data > off) {
			e->type = BLK_ZERO;
			e->len = KL_MIN(data, d->size) - off;
			e->host_off = BLK_NO_HOST_OFFSET;
			return 0;
		}
		if (rc == -ENXIO) {
			e->type = BLK_ZERO;
			e->len = d->size - off;
			e->host_off = BLK_NO_HOST_OFFSET;
			return 0;
		}
		kl_err_clear();
		e->type = BLK_DATA;
		e->len = d->size - off;
		if (rc == 0 && kl_io_seek_hole(d->file, off, &hole) == 0 && hole > off)
			e->len = KL_MIN(hole, d->size) - off;
		kl_err_clear();
		return 0;
	}
	blk = (uint32_t)(off / s->block_size);
	inblk = off % s->block_size;
	blk_end = KL_MIN((uint64_t)(blk + 1) * s->block_size, d->size);
	if (s->bat[blk] == VHD_BAT_FREE) {
		uint64_t end = blk_end;

		/* merge a run of free blocks, up to what was asked */
		while (end < off + len && end < d->size && s->bat[end / s->block_size] == VHD_BAT_FREE)
			end = KL_MIN(end + s->block_size, d->size);
		e->type = s->type == VHD_TYPE_DIFF ? BLK_UNALLOC : BLK_ZERO;
		e->len = end - off;
		return 0;
	}
	e->host_off = (uint64_t)s->bat[blk] * VHD_SECTOR + s->bitmap_size + inblk;
	if (s->type == VHD_TYPE_DYNAMIC) {
		e->type = BLK_DATA;
		e->len = blk_end - off;
		return 0;
	}
	{
		uint8_t *bits;
		uint64_t sec = inblk / VHD_SECTOR;
		uint64_t nsec = KL_DIV_ROUND_UP(blk_end - (uint64_t)blk * s->block_size, VHD_SECTOR);
		bool set;
		uint64_t i;

		KL_TRY(vhd_bitmap(d, blk, &bits));
		set = bm_test(bits, sec);
		i = sec + 1;
		while (i < nsec) {
			if (i % 8 == 0 && i + 8 <= nsec && bits[i / 8] == (set ? 0xFF : 0x00)) {
				i += 8;
				continue;
			}
			if (bm_test(bits, i) != set)
				break;
			i++;
		}
		e->type = set ? BLK_DATA : BLK_UNALLOC;
		e->len = KL_MIN((uint64_t)blk * s->block_size + i * VHD_SECTOR, blk_end) - off;
		if (!set)
			e->host_off = BLK_NO_HOST_OFFSET;
	}
	return 0;
}

static int vhd_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	struct vhd_state *s = d->priv;
	uint8_t *b = buf;

	if (s->type == VHD_TYPE_FIXED)
		return kl_io_pread_full(d->file, off, buf, len, "VHD data");
	while (len) {
		uint32_t blk = (uint32_t)(off / s->block_size);
		uint64_t inblk = off % s->block_size;
		size_t n = (size_t)KL_MIN((uint64_t)len, s->block_size - inblk);

		if (s->bat[blk] == VHD_BAT_FREE) {
			KL_TRY(blk_read_below(d, off, b, n));
		} else {
			KL_TRY(kl_io_pread_full(d->file, (uint64_t)s->bat[blk] * VHD_SECTOR +
						s->bitmap_size + inblk, b, n, "VHD data block"));
		}
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* ------------------------------------------------------------------ writes */

static void vhd_bm_set_range(uint8_t *bits, uint64_t first, uint64_t count)
{
	for (uint64_t i = first; i < first + count; i++)
		bits[i / 8] |= (uint8_t)(0x80 >> (i % 8));
}

/*
 * Allocate block blk at the end of the file and write [inblk, inblk+len)
 * into it: first the footer after the new block, then bitmap and data
 * where the old footer was. The BAT entry that makes the block visible is
 * written by the next flush, after a sync of the data. qemu writes the
 * bitmap first, so an error between the two writes (ENOSPC on a full
 * disk, EIO) leaves a file without an end footer: Windows and keel then
 * refuse to write to it. In this order such an error leaves either the
 * old file or a valid one with an unreferenced block (a leak `keel check`
 * reports), and a crash can lose the end footer only if the new footer's
 * sector was dropped while the file's new size survived.
 */
static int vhd_alloc_write(struct blk_dev *d, uint32_t blk, uint64_t inblk, const uint8_t *buf,
			   size_t len)
{
	struct vhd_state *s = d->priv;
	uint64_t at = s->next_off;
	uint64_t end = at + s->bitmap_size + s->block_size;
	uint8_t *bm;
	int rc;

	if (at / VHD_SECTOR >= VHD_BAT_FREE || end + VHD_FOOTER_SIZE > (uint64_t)UINT32_MAX * 512)
		return kl_err(-ENOSPC, "%s: a new block at offset %llu would not be addressable "
			      "(VHD block offsets are 32-bit sector numbers, files stay below 2 TiB)",
			      d->filename, (unsigned long long)at);
	bm = kl_calloc(1, s->bitmap_size);
	if (!bm)
		return -ENOMEM;
	if (s->type == VHD_TYPE_DIFF)
		vhd_bm_set_range(bm, inblk / VHD_SECTOR, KL_DIV_ROUND_UP(len, VHD_SECTOR));
	else
		memset(bm, 0xFF, s->bitmap_size);
	rc = kl_io_pwrite(d->file, end, s->footer, VHD_FOOTER_SIZE);
	if (rc == 0)
		rc = kl_io_event("vhd.footer_moved");
	if (rc < 0) {
		kl_free(bm);
		return rc;
	}
	/* from here on the file ends in a valid footer, so the space is ours */
	s->next_off = end;
	s->footer_off = end;
	rc = kl_io_pwrite(d->file, at, bm, s->bitmap_size);
	kl_free(bm);
	if (rc < 0)
		return rc;
	KL_TRY(kl_io_pwrite(d->file, at + s->bitmap_size + inblk, buf, len));
	KL_TRY(kl_io_event("vhd.block_written"));
	s->bat[blk] = (uint32_t)(at / VHD_SECTOR);
	s->bat_dirty[blk / (VHD_SECTOR / 4) / 8] |= (uint8_t)(1u << (blk / (VHD_SECTOR / 4) % 8));
	s->meta_dirty = true;
	return 0;
}

/*
 * Differencing disk: mark written sectors of an allocated block as present.
 * The bits stay in the cache until flush (or eviction) writes them after
 * the data is synced.
 */
static int vhd_bitmap_mark(struct blk_dev *d, uint32_t blk, uint64_t inblk, size_t len)
{
	struct vhd_state *s = d->priv;
	uint64_t first = inblk / VHD_SECTOR, count = KL_DIV_ROUND_UP(len, VHD_SECTOR);
	uint8_t *bits;
	bool all = true;

	KL_TRY(vhd_bitmap(d, blk, &bits));
	for (uint64_t i = first; i < first + count && all; i++)
		all = bm_test(bits, i);
	if (all)
		return 0;
	vhd_bm_set_range(bits, first, count);
	s->bm[blk % VHD_BM_CACHE].dirty = true;
	s->meta_dirty = true;
	return 0;
}

static int vhd_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len)
{
	struct vhd_state *s = d->priv;
	const uint8_t *b = buf;

	if (s->type == VHD_TYPE_FIXED)
		return kl_io_pwrite(d->file, off, buf, len);
	while (len) {
		uint32_t blk = (uint32_t)(off / s->block_size);
		uint64_t inblk = off % s->block_size;
		size_t n = (size_t)KL_MIN((uint64_t)len, s->block_size - inblk);

		if (s->bat[blk] == VHD_BAT_FREE) {
			KL_TRY(vhd_alloc_write(d, blk, inblk, b, n));
		} else {
			KL_TRY(kl_io_pwrite(d->file, (uint64_t)s->bat[blk] * VHD_SECTOR +
					    s->bitmap_size + inblk, b, n));
			if (s->type == VHD_TYPE_DIFF)
				KL_TRY(vhd_bitmap_mark(d, blk, inblk, n));
		}
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

static int vhd_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags)
{
	struct vhd_state *s = d->priv;
	static const uint8_t zero[65536];

	(void)flags;
	if (s->type == VHD_TYPE_FIXED && kl_io_punch(d->file, off, len) == 0)
		return 0;
	kl_err_clear();
	while (len) {
		uint64_t n = len;

		if (s->type != VHD_TYPE_FIXED) {
			uint32_t blk = (uint32_t)(off / s->block_size);

			n = KL_MIN(len, s->block_size - off % s->block_size);
			/* a free block of a dynamic disk already reads as zeros */
			if (s->type == VHD_TYPE_DYNAMIC && s->bat[blk] == VHD_BAT_FREE) {
				off += n;
				len -= n;
				continue;
			}
		}
		n = KL_MIN(n, (uint64_t)sizeof(zero));
		KL_TRY(vhd_pwrite(d, off, zero, (size_t)n));
		off += n;
		len -= n;
	}
	return 0;
}

/*
 * Make writes durable: sync the data, then write the metadata that points
 * at it (dirty bitmaps, dirty BAT sectors), then sync again. Only the bytes
 * of entries below nblocks are written, so BAT padding is left as found.
 */
static int vhd_flush(struct blk_dev *d)
{
	struct vhd_state *s = d->priv;
	uint64_t nsec;
	uint8_t buf[VHD_SECTOR];

	if (!s->meta_dirty)
		return kl_io_sync(d->file);
	KL_TRY(kl_io_sync(d->file));
	KL_TRY(kl_io_event("vhd.data_synced"));
	if (s->bm_buf)
		for (int i = 0; i < VHD_BM_CACHE; i++)
			KL_TRY(vhd_bm_writeback(d, i));
	nsec = KL_DIV_ROUND_UP((uint64_t)s->nblocks * 4, VHD_SECTOR);
	for (uint64_t k = 0; k < nsec; k++) {
		uint32_t first = (uint32_t)(k * (VHD_SECTOR / 4));
		uint32_t n = KL_MIN(s->nblocks - first, VHD_SECTOR / 4);

		if (!(s->bat_dirty[k / 8] & (1u << (k % 8))))
			continue;
		for (uint32_t i = 0; i < n; i++)
			put_be32(buf + 4 * i, s->bat[first + i]);
		KL_TRY(kl_io_pwrite(d->file, s->bat_off + (uint64_t)first * 4, buf, (size_t)n * 4));
		s->bat_dirty[k / 8] &= (uint8_t)~(1u << (k % 8));
	}
	s->meta_dirty = false;
	return kl_io_sync(d->file);
}

/* ------------------------------------------------------------------ info */

/*
 * Repair: write the footer in use right after the last block (or metadata)
 * and cut the file there. Fixes a lost end footer (from the copy at 0) and
 * leaked space at the end. Footer first, synced, then the truncate: a crash
 * in between leaves the file as it was, with a spare footer inside.
 */
static int vhd_move_footer(struct blk_dev *d, uint64_t end)
{
	struct vhd_state *s = d->priv;

	end = KL_ALIGN_UP(end, VHD_SECTOR);
	KL_TRY(kl_io_pwrite(d->file, end, s->footer, VHD_FOOTER_SIZE));
	KL_TRY(kl_io_sync(d->file));
	KL_TRY(kl_io_truncate(d->file, end + VHD_FOOTER_SIZE));
	KL_TRY(kl_io_sync(d->file));
	s->file_size = end + VHD_FOOTER_SIZE;
	s->footer_off = s->next_off = end;
	s->used_copy = false;
	return 0;
}

/*
 * keel check. Opening proved the structure (every block inside the file,
 * none overlapping another or the metadata) and tolerated some damage,
 * which it noted: checksums that do not match, a lost end footer. Those
 * are reported here, with a footer copy at 0 that disagrees with the end
 * footer, and file space no block uses, counted in whole blocks: an
 * allocation cut off after the block and the footer were written but
 * before the BAT named it. Smaller gaps are alignment padding, which
 * Windows leaves after the BAT and before the footer (fat-differential.vhd
 * in the interop samples: 3584 bytes). -r all (or -r leaks) rebuilds a
 * lost end footer and gives back leaked space at the end; gaps inside stay.
 */
static int vhd_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	struct vhd_state *s = d->priv;
	uint64_t span = (uint64_t)s->bitmap_size + s->block_size, end = 0;
	uint8_t copy[VHD_FOOTER_SIZE];
	struct vhd_range *rg = NULL;
	size_t n = 0;

	for (const char *p = s->damage, *nl; p && *p; p = nl ? nl + 1 : NULL) {
		size_t len;

		nl = strchr(p, '\n');
		len = nl ? (size_t)(nl - p) : strlen(p);
		blk_check_msg(r, "%s: %.*s", d->filename, (int)len, p);
		r->corruptions++;
	}
	if (s->type == VHD_TYPE_FIXED)
		return 0; /* the footer is all the metadata */
	if (!s->used_copy) {
		KL_TRY(kl_io_pread_full(d->file, 0, copy, sizeof(copy), "VHD footer copy"));
		if (memcmp(copy, s->footer, sizeof(copy)) != 0) {
			blk_check_msg(r, "%s: the footer copy at offset 0 differs from the footer "
				      "at offset %llu", d->filename,
				      (unsigned long long)s->footer_off);
			r->corruptions++;
		}
	}
	r->total_clusters = s->nblocks;
	rg = kl_calloc((size_t)s->nblocks + 3 + VHD_NLOC, sizeof(*rg));
	if (!rg)
		return -ENOMEM;
	rg[n++] = (struct vhd_range){ 0, VHD_FOOTER_SIZE, UINT32_MAX };
	rg[n++] = (struct vhd_range){ s->header_off, s->header_off + VHD_HEADER_SIZE, UINT32_MAX };
	rg[n++] = (struct vhd_range){ s->bat_off,
				      s->bat_off + KL_ALIGN_UP((uint64_t)s->max_entries * 4,
							       VHD_SECTOR),
				      UINT32_MAX };
	for (int i = 0; i < VHD_NLOC; i++) {
		const struct vhd_locator *l = &s->loc[i];
		uint64_t lend = l->off + KL_MAX(l->space, (uint64_t)l->len);

		if (l->code && l->off < s->file_size)
			rg[n++] = (struct vhd_range){ l->off, KL_MIN(s->file_size, lend),
						      UINT32_MAX };
	}
	for (uint32_t i = 0; i < s->nblocks; i++) {
		if (s->bat[i] == VHD_BAT_FREE)
			continue;
		r->allocated_clusters++;
		rg[n].start = (uint64_t)s->bat[i] * VHD_SECTOR;
		rg[n].end = rg[n].start + span;
		rg[n].index = i;
		n++;
	}
	qsort(rg, n, sizeof(*rg), vhd_range_cmp);
	for (size_t i = 0; i < n; i++) {
		if (end && rg[i].start >= end + span) {
			blk_check_msg(r, "%s: %llu bytes at offset %llu belong to no block "
				      "(leaked)", d->filename,
				      (unsigned long long)(rg[i].start - end),
				      (unsigned long long)end);
			r->leaks += (rg[i].start - end) / span;
		}
		end = KL_MAX(end, rg[i].end);
	}
	kl_free(rg);
	if (s->used_copy) {
		if (!(flags & BLK_CHECK_REPAIR_ALL))
			return 0;
		/* the damage messages above are all about the lost footer (or checksums) */
		KL_TRY(vhd_move_footer(d, end));
		blk_check_msg(r, "%s: repaired: end footer rebuilt from the copy at offset 0",
			      d->filename);
		r->repaired++;
		return 0;
	}
	if (s->footer_off >= end + span) {
		uint64_t lost = (s->footer_off - end) / span;

		blk_check_msg(r, "%s: %llu bytes at offset %llu, before the footer, belong to no "
			      "block (leaked: an interrupted allocation?)", d->filename,
			      (unsigned long long)(s->footer_off - end), (unsigned long long)end);
		r->leaks += lost;
		if (flags & BLK_CHECK_REPAIR_LEAKS) {
			KL_TRY(vhd_move_footer(d, end));
			r->repaired += lost;
		}
	}
	return 0;
}

static int vhd_info(struct blk_dev *d, struct blk_info *out)
{
	struct vhd_state *s = d->priv;
	const uint8_t *f = s->footer;
	char creator[5], os[5], u[37];
	uint64_t chs = vhd_chs_sectors(f) * VHD_SECTOR;
	uint32_t cver = get_be32(f + F_CREATOR_VER);
	time_t t = (time_t)(get_be32(f + F_TIME) + VHD_EPOCH);
	struct tm tm;
	char date[32];

	out->subformat = kl_strdup(s->type == VHD_TYPE_FIXED ? "fixed" :
				   s->type == VHD_TYPE_DYNAMIC ? "dynamic" : "differencing");
	if (!out->subformat)
		return -ENOMEM;
	memcpy(out->uuid, f + F_UUID, 16);
	out->has_uuid = true;
	if (s->type == VHD_TYPE_DIFF) {
		const char *ref = s->parent_ref ? s->parent_ref : s->parent_name;

		if (ref && *ref) {
			out->parent = kl_strdup(ref);
			out->parent_format = kl_strdup("vhd");
			if (!out->parent || !out->parent_format)
				return -ENOMEM;
		}
	}
	vhd_fourcc(f + F_CREATOR, creator);
	vhd_fourcc(f + F_CREATOR_OS, os);
	KL_TRY(blk_info_add_kv(out, "creator", "%s %u.%u (%s)", creator, cver >> 16, cver & 0xffff,
			       os));
	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", &tm);
	KL_TRY(blk_info_add_kv(out, "created", "%s", date));
	KL_TRY(blk_info_add_kv(out, "geometry", "%u/%u/%u (C/H/S)", get_be16(f + F_CYL),
			       f[F_HEADS], f[F_SPT]));
	if (chs != d->size && vhd_chs_is_max(f)) {
		KL_TRY(blk_info_add_kv(out, "chs size", "maximum geometry: every reader sizes the "
				       "disk by current_size"));
	} else if (chs != d->size) {
		/* qemu sizes by CHS unless the creator is one it knows to use current_size */
		static const char *const cur[] = { "win", "qem2", "d2v", "CTXS", "tap" };
		bool qemu_chs = true;

		for (size_t i = 0; i < KL_ARRAY_SIZE(cur); i++)
			if (strcmp(creator, cur[i]) == 0)
				qemu_chs = false;
		KL_TRY(blk_info_add_kv(out, "chs size", "%llu bytes, not the current size keel uses "
				       "(as Hyper-V and Azure do); Virtual PC%s would show %llu",
				       (unsigned long long)chs, qemu_chs ? " and qemu" : "",
				       (unsigned long long)chs));
	}
	if (get_be64(f + F_ORIG_SIZE) != d->size)
		KL_TRY(blk_info_add_kv(out, "original size", "%llu",
				       (unsigned long long)get_be64(f + F_ORIG_SIZE)));
	if (s->type != VHD_TYPE_FIXED) {
		uint64_t used = 0;

		for (uint32_t i = 0; i < s->nblocks; i++)
			used += s->bat[i] != VHD_BAT_FREE;
		KL_TRY(blk_info_add_kv(out, "block size", "%u", s->block_size));
		KL_TRY(blk_info_add_kv(out, "blocks allocated", "%llu of %u",
				       (unsigned long long)used, s->nblocks));
	}
	if (s->type == VHD_TYPE_DIFF) {
		vhd_uuid_str(s->header + H_PARENT_UUID, u);
		KL_TRY(blk_info_add_kv(out, "parent uuid", "%s", u));
		if (s->parent_name && *s->parent_name)
			KL_TRY(blk_info_add_kv(out, "parent name", "%s", s->parent_name));
		for (int i = 0; i < VHD_NLOC; i++) {
			const struct vhd_locator *l = &s->loc[i];
			char key[32], name[5];

			if (!l->code)
				continue;
			snprintf(key, sizeof(key), "parent locator %d", i);
			KL_TRY(blk_info_add_kv(out, key, "%s %s%s%s", vhd_loc_name(l->code, name),
					       l->text ? l->text : "", l->bad ? "unusable: " : "",
					       l->bad ? l->bad : ""));
		}
	}
	if (s->note)
		KL_TRY(blk_info_add_kv(out, "warning", "%s", s->note));
	return 0;
}

static int vhd_identity(struct blk_dev *d, struct blk_identity *id)
{
	struct vhd_state *s = d->priv;

	memcpy(id->uuid, s->footer + F_UUID, 16);
	id->valid = BLK_ID_UUID;
	return 0;
}

/* ------------------------------------------------------------------ create */

static uint32_t vhd_now(void)
{
	uint64_t sec = kl_wallclock_ns() / 1000000000ULL;

	return sec > VHD_EPOCH ? (uint32_t)(sec - VHD_EPOCH) : 0;
}

static void vhd_make_footer(uint8_t *f, uint32_t type, uint64_t size, uint16_t c, uint8_t h,
			    uint8_t spt, uint64_t data_off)
{
	memset(f, 0, VHD_FOOTER_SIZE);
	memcpy(f + F_COOKIE, "conectix", 8);
	put_be32(f + F_FEATURES, 2);
	put_be32(f + F_VERSION, VHD_VERSION);
	put_be64(f + F_DATA_OFF, data_off);
	put_be32(f + F_TIME, vhd_now());
	memcpy(f + F_CREATOR, VHD_CREATOR, 4);
	put_be32(f + F_CREATOR_VER, VHD_CREATOR_VERSION);
	memcpy(f + F_CREATOR_OS, "Wi2k", 4);
	put_be64(f + F_ORIG_SIZE, size);
	put_be64(f + F_CUR_SIZE, size);
	put_be16(f + F_CYL, c);
	f[F_HEADS] = h;
	f[F_SPT] = spt;
	put_be32(f + F_TYPE, type);
	kl_uuid_generate(f + F_UUID);
	put_be32(f + F_CHECKSUM, vhd_checksum(f, VHD_FOOTER_SIZE, F_CHECKSUM));
}

/*
 * Size and geometry for a new disk. Default (qemu-img compatible): the
 * smallest CHS geometry covering the size, and that size; past the CHS
 * range (~127 GiB) the maximum geometry and the exact size. force_size:
 * the exact size; the geometry multiplies out to it when the spec's
 * algorithm allows, else the maximum geometry, which tells every reader
 * (qemu included) to use current_size.
 */
static void vhd_size_geometry(uint64_t *size, bool force, uint16_t *c, uint8_t *h, uint8_t *spt)
{
	uint64_t total = *size / VHD_SECTOR;

	if (total > VHD_CHS_MAX_SECTORS) {
		*c = VHD_CHS_MAX_C;
		*h = VHD_CHS_MAX_H;
		*spt = VHD_CHS_MAX_S;
		return;
	}
	vhd_chs(total, c, h, spt);
	if (force) {
		if ((uint64_t)*c * *h * *spt != total) {
			*c = VHD_CHS_MAX_C;
			*h = VHD_CHS_MAX_H;
			*spt = VHD_CHS_MAX_S;
		}
		return;
	}
	for (uint64_t i = 1; (uint64_t)*c * *h * *spt < total; i++)
		vhd_chs(total + i, c, h, spt);
	*size = (uint64_t)*c * *h * *spt * VHD_SECTOR;
}

static int vhd_write_zeros_ff(struct kl_file *f, uint64_t off, uint64_t len)
{
	uint8_t *buf = kl_malloc(65536);
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	memset(buf, 0xFF, 65536);
	while (len && rc == 0) {
		size_t n = (size_t)KL_MIN(len, (uint64_t)65536);

		rc = kl_io_pwrite(f, off, buf, n);
		off += n;
		len -= n;
	}
	kl_free(buf);
	return rc;
}

struct vhd_parent_info {
	uint8_t footer[VHD_FOOTER_SIZE];
	uint32_t mtime;
	char *abs_path;
};

static int vhd_load_parent(const char *path, const struct blk_create_opts *o,
			   struct vhd_parent_info *pi)
{
	struct blk_open_opts po = { .format = "vhd", .flags = o->flags & BLK_OPEN_ALLOW_EXTERNAL };
	char *dcopy = NULL, *ppath;
	struct blk_dev *p = NULL;
	struct stat st;
	int rc;

	if (o->parent_format && blk_driver_find(o->parent_format) != blk_driver_find("vhd"))
		return kl_err(-ENOTSUP, "%s: a VHD differencing disk needs a VHD parent, not %s "
			      "(%s)", path, o->parent_format, o->parent);
	if (o->parent[0] == '/') {
		ppath = kl_strdup(o->parent);
	} else {
		dcopy = kl_strdup(path);
		if (!dcopy)
			return -ENOMEM;
		ppath = kl_asprintf("%s/%s", dirname(dcopy), o->parent);
	}
	kl_free(dcopy);
	if (!ppath)
		return -ENOMEM;
	rc = blk_open(ppath, &po, &p);
	if (rc < 0) {
		kl_free(ppath);
		return kl_err_prefix(rc, "%s: parent '%s'", path, o->parent);
	}
	memcpy(pi->footer, ((struct vhd_state *)p->priv)->footer, VHD_FOOTER_SIZE);
	blk_close(p);
	pi->mtime = 0;
	if (stat(ppath, &st) == 0 && (uint64_t)st.st_mtime > VHD_EPOCH)
		pi->mtime = (uint32_t)((uint64_t)st.st_mtime - VHD_EPOCH);
	pi->abs_path = realpath(ppath, NULL);
	kl_free(ppath);
	if (!pi->abs_path)
		return kl_err(-errno, "%s: cannot resolve parent '%s'", path, o->parent);
	return 0;
}

/* "a/b.vhd" -> ".\a\b.vhd"; "../b.vhd" -> "..\b.vhd"; "/x/y" -> "\x\y". */
static char *vhd_posix_to_win(const char *p, bool relative)
{
	char *w = kl_asprintf("%s%s", relative && strncmp(p, "../", 3) != 0 ? ".\\" : "", p);

	if (w)
		for (char *q = w; *q; q++)
			if (*q == '/')
				*q = '\\';
	return w;
}

static int vhd_create(const char *path, const struct blk_create_opts *o)
{
	const char *sub = kl_opts_get(o->opts, "subformat");
	bool azure = false, force = false, force_found, bs_found, fixed;
	uint64_t size = o->size, bs64 = VHD_DEFAULT_BLOCK;
	struct vhd_parent_info pi = { .abs_path = NULL };
	uint8_t footer[VHD_FOOTER_SIZE], *hdr = NULL;
	uint8_t *locbuf[2] = { NULL, NULL };
	uint32_t loclen[2] = { 0, 0 }, loccode[2] = { 0, 0 };
	uint64_t locoff[2] = { 0, 0 };
	struct kl_file *f = NULL;
	uint16_t c;
	uint8_t h, spt;
	int rc;

	KL_TRY(kl_opts_get_bool(o->opts, "azure", &azure, NULL));
	KL_TRY(kl_opts_get_bool(o->opts, "force_size", &force, &force_found));
	KL_TRY(kl_opts_get_size(o->opts, "block_size", &bs64, &bs_found));
	if (sub && strcmp(sub, "fixed") != 0 && strcmp(sub, "dynamic") != 0)
		return kl_err(-EINVAL, "vhd: subformat must be fixed or dynamic, not '%s'", sub);
	fixed = sub && strcmp(sub, "fixed") == 0;
	if (azure) {
		if (sub && !fixed)
			return kl_err(-EINVAL, "vhd: azure images are fixed; subformat=%s conflicts",
				      sub);
		if (force_found && !force)
			return kl_err(-EINVAL, "vhd: azure keeps the exact size; force_size=off "
				      "conflicts");
		fixed = true;
		force = true;
		size = KL_ALIGN_UP(size, (uint64_t)1 << 20);
	}
	if (o->parent && fixed)
		return kl_err(-EINVAL, "vhd: a differencing disk cannot be fixed");
	if (fixed && bs_found)
		return kl_err(-EINVAL, "vhd: block_size applies to dynamic disks only");
	if (!KL_IS_POW2(bs64) || bs64 < VHD_MIN_CREATE_BLOCK || bs64 > VHD_MAX_BLOCK)
		return kl_err(-EINVAL, "vhd: block_size %llu must be a power of two from 4 KiB to "
			      "256 MiB", (unsigned long long)bs64);
	if (size > VHD_MAX_SIZE)
		return kl_err(-EFBIG, "vhd: %llu bytes is larger than the VHD maximum of 2040 GiB",
			      (unsigned long long)size);
	size = KL_ALIGN_UP(size, VHD_SECTOR);
	if (o->parent) {
		uint64_t psize, rounded = size;

		rc = vhd_load_parent(path, o, &pi);
		if (rc < 0)
			goto out;
		/*
		 * The parent may have been made from this same size, rounded up
		 * to a CHS geometry (keel and qemu-img do that by default: convert
		 * --keep-chain makes the base from the source's size, then this
		 * layer from the same size): the child takes the parent's size.
		 */
		psize = get_be64(pi.footer + F_CUR_SIZE);
		vhd_size_geometry(&rounded, force, &c, &h, &spt);
		if (size != psize && rounded != psize) {
			rc = kl_err(-EINVAL, "vhd: a differencing disk has its parent's size (%llu "
				    "bytes), not %llu", (unsigned long long)psize,
				    (unsigned long long)size);
			goto out;
		}
		size = psize;
		c = get_be16(pi.footer + F_CYL);
		h = pi.footer[F_HEADS];
		spt = pi.footer[F_SPT];
	} else {
		vhd_size_geometry(&size, force, &c, &h, &spt);
	}

	rc = kl_io_open(path, blk_create_kl_flags(o), &f);
	if (rc < 0)
		goto out;
	if (fixed) {
		vhd_make_footer(footer, VHD_TYPE_FIXED, size, c, h, spt, UINT64_MAX);
		rc = kl_io_truncate(f, size);
		if (rc == 0)
			rc = kl_io_pwrite(f, size, footer, VHD_FOOTER_SIZE);
	} else {
		uint32_t bs = (uint32_t)bs64;
		uint64_t entries = KL_DIV_ROUND_UP(size, (uint64_t)bs);
		uint64_t bat_off = VHD_FOOTER_SIZE + VHD_HEADER_SIZE;
		uint64_t end = bat_off + KL_ALIGN_UP(entries * 4, VHD_SECTOR);

		hdr = kl_calloc(1, VHD_HEADER_SIZE);
		if (!hdr) {
			rc = -ENOMEM;
			goto out;
		}
		vhd_make_footer(footer, o->parent ? VHD_TYPE_DIFF : VHD_TYPE_DYNAMIC, size, c, h,
				spt, VHD_FOOTER_SIZE);
		if (o->parent) {
			/* keep the parent's original size, as Hyper-V does */
			memcpy(footer + F_ORIG_SIZE, pi.footer + F_ORIG_SIZE, 8);
			put_be32(footer + F_CHECKSUM, vhd_checksum(footer, VHD_FOOTER_SIZE, F_CHECKSUM));
		}
		memcpy(hdr + H_COOKIE, "cxsparse", 8);
		put_be64(hdr + H_DATA_OFF, UINT64_MAX);
		put_be64(hdr + H_TABLE_OFF, bat_off);
		put_be32(hdr + H_VERSION, VHD_VERSION);
		put_be32(hdr + H_MAX_ENTRIES, (uint32_t)entries);
		put_be32(hdr + H_BLOCK_SIZE, bs);
		if (o->parent) {
			bool rel = o->parent[0] != '/';
			char *wname = vhd_posix_to_win(o->parent, false);
			char *wrel = rel ? vhd_posix_to_win(o->parent, true) : NULL;
			char *wabs = vhd_posix_to_win(pi.abs_path, false);
			int n;

			memcpy(hdr + H_PARENT_UUID, pi.footer + F_UUID, 16);
			put_be32(hdr + H_PARENT_TIME, pi.mtime);
			if (!wname || !wabs || (rel && !wrel)) {
				kl_free(wname);
				kl_free(wrel);
				kl_free(wabs);
				rc = -ENOMEM;
				goto out;
			}
			n = vhd_utf16_encode(wname, true, hdr + H_PARENT_NAME, H_PARENT_NAME_LEN - 2);
			if (n < 0) {
				rc = kl_err(-EINVAL, "vhd: parent name '%s' is not UTF-8 or longer than "
					    "255 UTF-16 units", o->parent);
			}
			/* W2ru first: relative locators survive moving the pair */
			for (int i = 0; i < 2 && rc == 0; i++) {
				const char *txt = i == 0 ? wrel : wabs;

				if (!txt)
					continue;
				locbuf[i] = kl_malloc(VHD_LOC_MAX_LEN);
				if (!locbuf[i]) {
					rc = -ENOMEM;
					break;
				}
				n = vhd_utf16_encode(txt, false, locbuf[i], VHD_LOC_MAX_LEN);
				if (n <= 0) {
					rc = kl_err(-EINVAL, "vhd: parent path '%s' is not UTF-8 or too "
						    "long", txt);
					break;
				}
				loccode[i] = i == 0 ? LOC_W2RU : LOC_W2KU;
				loclen[i] = (uint32_t)n;
				locoff[i] = end;
				end += KL_ALIGN_UP((uint64_t)n, VHD_SECTOR);
			}
			kl_free(wname);
			kl_free(wrel);
			kl_free(wabs);
			if (rc < 0)
				goto out;
			for (int i = 0, slot = 0; i < 2; i++) {
				uint8_t *e = hdr + H_LOCATORS + slot * LOC_ENTRY;

				if (!loccode[i])
					continue;
				put_be32(e, loccode[i]);
				put_be32(e + 4, (uint32_t)KL_ALIGN_UP(loclen[i], VHD_SECTOR));
				put_be32(e + 8, loclen[i]);
				put_be64(e + 16, locoff[i]);
				slot++;
			}
		}
		put_be32(hdr + H_CHECKSUM, vhd_checksum(hdr, VHD_HEADER_SIZE, H_CHECKSUM));
		rc = kl_io_pwrite(f, 0, footer, VHD_FOOTER_SIZE);
		if (rc == 0)
			rc = kl_io_pwrite(f, VHD_FOOTER_SIZE, hdr, VHD_HEADER_SIZE);
		if (rc == 0)
			rc = vhd_write_zeros_ff(f, bat_off, KL_ALIGN_UP(entries * 4, VHD_SECTOR));
		for (int i = 0; i < 2 && rc == 0; i++)
			if (loccode[i]) {
				uint64_t pad = KL_ALIGN_UP(loclen[i], VHD_SECTOR);

				memset(locbuf[i] + loclen[i], 0, (size_t)(pad - loclen[i]));
				rc = kl_io_pwrite(f, locoff[i], locbuf[i], (size_t)pad);
			}
		if (rc == 0)
			rc = kl_io_pwrite(f, end, footer, VHD_FOOTER_SIZE);
	}
	if (rc == 0)
		rc = kl_io_sync(f);
out:
	if (f) {
		kl_io_close(f);
		if (rc < 0)
			kl_io_unlink(path);
	}
	kl_free(hdr);
	kl_free(locbuf[0]);
	kl_free(locbuf[1]);
	free(pi.abs_path);
	return rc;
}

const struct blk_driver blk_vhd_driver = {
	.name = "vhd",
	.ext = "vhd",
	.desc = "Hyper-V/Azure VHD (qemu 'vpc'): fixed, dynamic, differencing",
	.create_help =
		"  subformat=dynamic|fixed    sparse with a block table, or flat (dynamic)\n"
		"  block_size=4K..256M        dynamic disks' block size, a power of two (2M)\n"
		"  force_size=on|off          keep the exact size instead of rounding it to\n"
		"                             a CHS geometry, as qemu-img does (off)\n"
		"  azure                      Azure's rules: fixed, the size rounded up to a\n"
		"                             whole MiB and kept exact\n",
	.instance_size = sizeof(struct vhd_state),
	.flags = BLK_DRV_CAN_CREATE | BLK_DRV_HAS_PARENT,
	.probe = vhd_probe,
	.open = vhd_open,
	.create = vhd_create,
	.pread = vhd_pread,
	.pwrite = vhd_pwrite,
	.pwrite_zeroes = vhd_pwrite_zeroes,
	.block_status = vhd_block_status,
	.flush = vhd_flush,
	.close = vhd_close,
	.info = vhd_info,
	.check = vhd_check,
	.identity = vhd_identity,
};
