/*
 * format/vhdx.c - Hyper-V VHDX images: probing, the header section (file
 * identifier, two headers, two region tables), the metadata region, parent
 * locators, create, info and the driver table.
 *
 * Block mapping and writes live in vhdx-bat.c, log replay in vhdx-log.c;
 * vhdx.h holds what they share. Structures cite [MS-VHDX] sections; our
 * digest with the compatibility traps is shared/specs/vhdx.md.
 *
 * Open order (MS-VHDX 2.3.3: nothing but the headers and the log may be read
 * before the log is replayed): file identifier, headers, log (into an
 * in-memory overlay), region table, metadata, BAT, parent. Only when all of
 * that validated does a writable open touch the file: header update with a
 * new FileWriteGuid, then the overlay is written out and LogGuid cleared.
 * A read-only open never writes; reads go through the overlay instead.
 *
 * Writes (vhdx-bat.c) never use the log: data goes to its block, the BAT and
 * sector bitmaps are kept in memory and written in place by flush after the
 * data has been synced, so a BAT entry never points at data that is not on
 * disk. LogGuid stays zero in files keel writes.
 */
#define _GNU_SOURCE
#include "format/vhdx.h"

#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#define VHDX_SIG_FILE "vhdxfile"
#define VHDX_SIG_HEAD 0x64616568u /* "head" */
#define VHDX_SIG_REGI 0x69676572u /* "regi" */

/* ------------------------------------------------------------------ GUIDs */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * "2DC27766-F623-4200-9D64-115E9BFD4A08" (braces optional) to the on-disk
 * layout: Data1 u32 LE, Data2 u16 LE, Data3 u16 LE, then 8 bytes as written.
 */
int vhdx_guid_parse(const char *text, uint8_t out[16])
{
	uint8_t t[16];
	size_t n = strlen(text);
	int k = 0;

	if (n == 38 && text[0] == '{' && text[37] == '}') {
		text++;
		n = 36;
	}
	if (n != 36)
		return -EINVAL;
	for (size_t i = 0; i < 36;) {
		int hi, lo;

		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (text[i] != '-')
				return -EINVAL;
			i++;
			continue;
		}
		hi = hexval(text[i]);
		lo = hexval(text[i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		t[k++] = (uint8_t)(hi << 4 | lo);
		i += 2;
	}
	out[0] = t[3];
	out[1] = t[2];
	out[2] = t[1];
	out[3] = t[0];
	out[4] = t[5];
	out[5] = t[4];
	out[6] = t[7];
	out[7] = t[6];
	memcpy(out + 8, t + 8, 8);
	return 0;
}

void vhdx_guid_format(const uint8_t g[16], char out[39], bool braces)
{
	snprintf(out, 39, "%s%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x%s", braces ? "{" : "",
		 get_le32(g), get_le16(g + 4), get_le16(g + 6), g[8], g[9], g[10], g[11], g[12],
		 g[13], g[14], g[15], braces ? "}" : "");
}

static bool guid_is(const uint8_t *g, const char *text)
{
	uint8_t b[16];

	return vhdx_guid_parse(text, b) == 0 && memcmp(g, b, 16) == 0;
}

/* ------------------------------------------------------------------ UTF-16 */

/* UTF-16LE (no NUL) to a new UTF-8 string; NUL and broken surrogates become '?'. */
static char *utf16_to_utf8(const uint8_t *p, size_t nbytes)
{
	size_t n = nbytes / 2, o = 0;
	char *out = kl_malloc(n * 3 + 1);

	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		uint32_t c = get_le16(p + 2 * i);

		if (c >= 0xD800 && c <= 0xDBFF && i + 1 < n) {
			uint32_t c2 = get_le16(p + 2 * i + 2);

			if (c2 >= 0xDC00 && c2 <= 0xDFFF) {
				c = 0x10000 + ((c - 0xD800) << 10) + (c2 - 0xDC00);
				i++;
			} else {
				c = '?';
			}
		} else if (c >= 0xD800 && c <= 0xDFFF) {
			c = '?';
		}
		if (c == 0)
			c = '?';
		if (c < 0x80) {
			out[o++] = (char)c;
		} else if (c < 0x800) {
			out[o++] = (char)(0xC0 | c >> 6);
			out[o++] = (char)(0x80 | (c & 0x3F));
		} else if (c < 0x10000) {
			out[o++] = (char)(0xE0 | c >> 12);
			out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
			out[o++] = (char)(0x80 | (c & 0x3F));
		} else {
			/* a pair consumed two units: 6 bytes of room, 4 used */
			out[o++] = (char)(0xF0 | c >> 18);
			out[o++] = (char)(0x80 | ((c >> 12) & 0x3F));
			out[o++] = (char)(0x80 | ((c >> 6) & 0x3F));
			out[o++] = (char)(0x80 | (c & 0x3F));
		}
	}
	out[o] = '\0';
	return out;
}

/* UTF-8 to UTF-16LE into out (room for 2*strlen(s) bytes); returns bytes written. */
static size_t utf8_to_utf16(const char *s, uint8_t *out)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t o = 0;

	while (*p) {
		uint32_t c = *p++;
		int more = 0;

		if (c >= 0xF0 && c < 0xF8) {
			c &= 0x07;
			more = 3;
		} else if (c >= 0xE0) {
			c &= 0x0F;
			more = 2;
		} else if (c >= 0xC0) {
			c &= 0x1F;
			more = 1;
		} else if (c >= 0x80) {
			c = '?';
		}
		for (; more > 0; more--) {
			if ((*p & 0xC0) != 0x80) {
				c = '?';
				break;
			}
			c = c << 6 | (*p++ & 0x3F);
		}
		if (c >= 0x10000 && c <= 0x10FFFF) {
			c -= 0x10000;
			put_le16(out + o, (uint16_t)(0xD800 + (c >> 10)));
			put_le16(out + o + 2, (uint16_t)(0xDC00 + (c & 0x3FF)));
			o += 4;
		} else {
			put_le16(out + o, (uint16_t)(c > 0xFFFF ? '?' : c));
			o += 2;
		}
	}
	return o;
}

/* ------------------------------------------------------------------ file I/O */

int vhdx_read(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	struct vhdx_state *s = d->priv;
	ssize_t n = kl_io_pread(d->file, off, buf, len);

	if (n < 0)
		return (int)n;
	if (s->nov)
		return vhdx_log_overlay(d, off, buf, len);
	return 0;
}

/* ------------------------------------------------------------------ headers */

static void hdr_build(const struct vhdx_state *s, uint64_t seq, uint8_t *b)
{
	memset(b, 0, VHDX_HEADER_SIZE);
	put_le32(b, VHDX_SIG_HEAD);
	put_le64(b + 8, seq);
	memcpy(b + 16, s->file_write_guid, 16);
	memcpy(b + 32, s->data_write_guid, 16);
	memcpy(b + 48, s->log_guid, 16);
	put_le16(b + 64, 0);
	put_le16(b + 66, 1);
	put_le32(b + 68, s->log_len);
	put_le64(b + 72, s->log_off);
	put_le32(b + 4, kl_crc32c(0, b, VHDX_HEADER_SIZE));
}

/*
 * MS-VHDX 2.2.2.1: write the non-current header with sequence + 1, flush;
 * twice, so both copies are up to date. The first update of a session
 * takes a new FileWriteGuid.
 */
int vhdx_update_headers(struct blk_dev *d, bool new_data_guid)
{
	struct vhdx_state *s = d->priv;
	uint8_t *b = kl_malloc(VHDX_HEADER_SIZE);
	int rc = 0;

	if (!b)
		return -ENOMEM;
	if (!s->fwg_updated)
		kl_uuid_generate(s->file_write_guid);
	if (new_data_guid)
		kl_uuid_generate(s->data_write_guid);
	for (int i = 0; i < 2 && rc == 0; i++) {
		int slot = 1 - s->cur_slot;

		hdr_build(s, s->seq + 1, b);
		rc = kl_io_event("vhdx.header_write");
		if (rc == 0)
			rc = kl_io_pwrite(d->file, slot ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF, b,
					  VHDX_HEADER_SIZE);
		if (rc == 0)
			rc = kl_io_sync(d->file);
		if (rc == 0) {
			s->cur_slot = slot;
			s->seq++;
		}
	}
	kl_free(b);
	if (rc < 0) {
		s->broken = true;
		return kl_err_prefix(rc, "%s: updating the VHDX headers", d->filename);
	}
	s->fwg_updated = true;
	if (new_data_guid)
		s->dwg_updated = true;
	return 0;
}

/* A header is valid when signature, CRC-32C and version check (2.2.2). */
static const char *hdr_problem(uint8_t *b)
{
	uint32_t want = get_le32(b + 4), got;

	if (get_le32(b) != VHDX_SIG_HEAD)
		return "no 'head' signature";
	put_le32(b + 4, 0);
	got = kl_crc32c(0, b, VHDX_HEADER_SIZE);
	put_le32(b + 4, want);
	if (got != want)
		return "CRC-32C mismatch";
	if (get_le16(b + 66) != 1)
		return "version is not 1";
	return NULL;
}

static int read_headers(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;
	uint8_t *b = kl_malloc(2 * VHDX_HEADER_SIZE);
	uint8_t *h[2];
	const char *why[2];
	int cur, rc = 0;

	if (!b)
		return -ENOMEM;
	h[0] = b;
	h[1] = b + VHDX_HEADER_SIZE;
	rc = vhdx_read(d, VHDX_HEADER1_OFF, h[0], VHDX_HEADER_SIZE);
	if (rc == 0)
		rc = vhdx_read(d, VHDX_HEADER2_OFF, h[1], VHDX_HEADER_SIZE);
	if (rc < 0)
		goto out;
	why[0] = hdr_problem(h[0]);
	why[1] = hdr_problem(h[1]);
	if (why[0] && why[1]) {
		rc = kl_err(-EUCLEAN,
			    "%s: no valid VHDX header (header 1 at %llu: %s; header 2 at %llu: %s)",
			    d->filename, VHDX_HEADER1_OFF, why[0], VHDX_HEADER2_OFF, why[1]);
		goto out;
	}
	if (why[0]) {
		cur = 1;
	} else if (why[1]) {
		cur = 0;
	} else {
		uint64_t s0 = get_le64(h[0] + 8), s1 = get_le64(h[1] + 8);

		if (s0 == s1 && memcmp(h[0], h[1], VHDX_HEADER_SIZE) != 0) {
			rc = kl_err(-EUCLEAN,
				    "%s: both VHDX headers carry sequence number %llu but differ; "
				    "no current header",
				    d->filename, (unsigned long long)s0);
			goto out;
		}
		cur = s1 > s0 ? 1 : 0;
	}
	s->cur_slot = cur;
	s->seq = get_le64(h[cur] + 8);
	memcpy(s->file_write_guid, h[cur] + 16, 16);
	memcpy(s->data_write_guid, h[cur] + 32, 16);
	memcpy(s->log_guid, h[cur] + 48, 16);
	s->log_version = get_le16(h[cur] + 64);
	s->log_len = get_le32(h[cur] + 68);
	s->log_off = get_le64(h[cur] + 72);
	if (!kl_uuid_is_null(s->log_guid) && s->log_version != 0)
		rc = kl_err(-ENOTSUP, "%s: VHDX log version %u is not supported (only 0)",
			    d->filename, s->log_version);
out:
	kl_free(b);
	return rc;
}

/* ------------------------------------------------------------------ regions */

struct vhdx_span {
	uint64_t off, len;
	const char *what;
};

static bool spans_overlap(const struct vhdx_span *a, const struct vhdx_span *b)
{
	return a->off < b->off + b->len && b->off < a->off + a->len;
}

static const char *rt_problem(uint8_t *b)
{
	uint32_t want = get_le32(b + 4), got;

	if (get_le32(b) != VHDX_SIG_REGI)
		return "no 'regi' signature";
	put_le32(b + 4, 0);
	got = kl_crc32c(0, b, VHDX_RT_SIZE);
	put_le32(b + 4, want);
	if (got != want)
		return "CRC-32C mismatch";
	if (get_le32(b + 8) > VHDX_MAX_ENTRIES)
		return "more than 2047 entries";
	return NULL;
}

static int read_regions(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;
	uint8_t *b = kl_malloc(VHDX_RT_SIZE);
	uint64_t at = VHDX_RT1_OFF;
	const char *why1, *why2;
	struct vhdx_span bat = { 0 }, meta = { 0 }, log = { 0 };
	uint32_t n;
	int rc;

	if (!b)
		return -ENOMEM;
	rc = vhdx_read(d, VHDX_RT1_OFF, b, VHDX_RT_SIZE);
	if (rc < 0)
		goto out;
	why1 = rt_problem(b);
	if (why1) {
		at = VHDX_RT2_OFF;
		rc = vhdx_read(d, VHDX_RT2_OFF, b, VHDX_RT_SIZE);
		if (rc < 0)
			goto out;
		why2 = rt_problem(b);
		if (why2) {
			rc = kl_err(-EUCLEAN,
				    "%s: no valid region table (at %llu: %s; at %llu: %s)",
				    d->filename, VHDX_RT1_OFF, why1, VHDX_RT2_OFF, why2);
			goto out;
		}
	}
	n = get_le32(b + 8);
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *e = b + 16 + 32 * (size_t)i;
		uint64_t off = get_le64(e + 16);
		uint32_t len = get_le32(e + 24);
		bool required = get_le32(e + 28) & 1;
		struct vhdx_span *which = NULL;
		char g[39];

		vhdx_guid_format(e, g, false);
		if (guid_is(e, VHDX_GUID_BAT))
			which = &bat;
		else if (guid_is(e, VHDX_GUID_METADATA))
			which = &meta;
		else if (required) {
			rc = kl_err(-ENOTSUP,
				    "%s: region table at %llu: entry %u has unknown required "
				    "region %s",
				    d->filename, (unsigned long long)at, i, g);
			goto out;
		}
		if (off % VHDX_MiB || off < VHDX_MiB || len % VHDX_MiB || len == 0 ||
		    !kl_range_ok(off, len, s->file_size)) {
			rc = kl_err(-EUCLEAN,
				    "%s: region table at %llu: region %s at %llu, %u bytes, is not "
				    "1 MiB-aligned after the header section and inside the file "
				    "(%llu bytes)",
				    d->filename, (unsigned long long)at, g,
				    (unsigned long long)off, len, (unsigned long long)s->file_size);
			goto out;
		}
		s->regions_end = KL_MAX(s->regions_end, off + len);
		if (!which)
			continue;
		if (which->len) {
			rc = kl_err(-EUCLEAN, "%s: region table at %llu lists region %s twice",
				    d->filename, (unsigned long long)at, g);
			goto out;
		}
		which->off = off;
		which->len = len;
		which->what = which == &bat ? "BAT region" : "metadata region";
	}
	if (!bat.len || !meta.len) {
		rc = kl_err(-EUCLEAN, "%s: region table at %llu has no %s region", d->filename,
			    (unsigned long long)at, bat.len ? "metadata" : "BAT");
		goto out;
	}
	if (spans_overlap(&bat, &meta)) {
		rc = kl_err(-EUCLEAN, "%s: BAT region (%llu+%llu) overlaps the metadata region "
				      "(%llu+%llu)",
			    d->filename, (unsigned long long)bat.off, (unsigned long long)bat.len,
			    (unsigned long long)meta.off, (unsigned long long)meta.len);
		goto out;
	}
	if (!kl_uuid_is_null(s->log_guid)) {
		log.off = s->log_off;
		log.len = s->log_len;
		if (spans_overlap(&log, &bat) || spans_overlap(&log, &meta)) {
			rc = kl_err(-EUCLEAN, "%s: the log (%llu+%u) overlaps the %s", d->filename,
				    (unsigned long long)s->log_off, s->log_len,
				    spans_overlap(&log, &bat) ? "BAT region" : "metadata region");
			goto out;
		}
	}
	s->bat_off = bat.off;
	s->bat_len = (uint32_t)bat.len;
	s->meta_off = meta.off;
	s->meta_len = (uint32_t)meta.len;
out:
	kl_free(b);
	return rc;
}

/* ------------------------------------------------------------------ metadata */

static void loc_free(struct vhdx_state *s)
{
	for (size_t i = 0; i < s->nloc; i++) {
		kl_free(s->loc[i].key);
		kl_free(s->loc[i].val);
	}
	kl_free(s->loc);
	s->loc = NULL;
	s->nloc = 0;
}

static const char *loc_get(const struct vhdx_state *s, const char *key)
{
	for (size_t i = 0; i < s->nloc; i++)
		if (strcmp(s->loc[i].key, key) == 0)
			return s->loc[i].val;
	return NULL;
}

/* MS-VHDX 2.6.2.6: header 20 bytes, then 12-byte entries, UTF-16LE strings. */
static int parse_locator(struct blk_dev *d, const uint8_t *p, uint32_t len, uint64_t where)
{
	struct vhdx_state *s = d->priv;
	uint16_t n;
	char g[39];

	if (len < 20)
		return kl_err(-EUCLEAN, "%s: parent locator at %llu is %u bytes, shorter than its "
					"20-byte header",
			      d->filename, (unsigned long long)where, len);
	if (!guid_is(p, VHDX_GUID_LOCATOR_VHDX)) {
		vhdx_guid_format(p, g, false);
		return kl_err(-ENOTSUP, "%s: parent locator at %llu has type %s, not a VHDX parent",
			      d->filename, (unsigned long long)where, g);
	}
	n = get_le16(p + 18);
	if (20 + 12 * (uint64_t)n > len)
		return kl_err(-EUCLEAN, "%s: parent locator at %llu: %u entries do not fit in %u "
					"bytes",
			      d->filename, (unsigned long long)where, n, len);
	s->loc = kl_calloc(n ? n : 1, sizeof(*s->loc));
	if (!s->loc)
		return -ENOMEM;
	for (uint16_t i = 0; i < n; i++) {
		const uint8_t *e = p + 20 + 12 * (size_t)i;
		uint32_t ko = get_le32(e), vo = get_le32(e + 4);
		uint16_t kn = get_le16(e + 8), vn = get_le16(e + 10);

		if (kn == 0 || kn % 2 || vn % 2 || !kl_range_ok(ko, kn, len) ||
		    !kl_range_ok(vo, vn, len))
			return kl_err(-EUCLEAN,
				      "%s: parent locator at %llu: entry %u (key %u+%u, value "
				      "%u+%u) is malformed or outside the %u-byte item",
				      d->filename, (unsigned long long)where, i, ko, kn, vo, vn,
				      len);
		s->loc[i].key = utf16_to_utf8(p + ko, kn);
		s->loc[i].val = utf16_to_utf8(p + vo, vn);
		s->nloc = i + 1u;
		if (!s->loc[i].key || !s->loc[i].val)
			return -ENOMEM;
		for (uint16_t j = 0; j < i; j++)
			if (strcmp(s->loc[j].key, s->loc[i].key) == 0)
				return kl_err(-EUCLEAN, "%s: parent locator at %llu has key '%s' "
							"twice",
					      d->filename, (unsigned long long)where,
					      s->loc[i].key);
	}
	return 0;
}

enum { MI_PARAMS, MI_VSIZE, MI_PAGE83, MI_LSS, MI_PSS, MI_PARENT, MI_N };

static const struct {
	const char *guid;
	const char *name;
	uint32_t min_len;
} vhdx_items[MI_N] = {
	[MI_PARAMS] = { VHDX_GUID_FILE_PARAMS, "file parameters", 8 },
	[MI_VSIZE] = { VHDX_GUID_VDISK_SIZE, "virtual disk size", 8 },
	[MI_PAGE83] = { VHDX_GUID_PAGE83, "virtual disk id (page 83)", 16 },
	[MI_LSS] = { VHDX_GUID_LOGICAL_SS, "logical sector size", 4 },
	[MI_PSS] = { VHDX_GUID_PHYSICAL_SS, "physical sector size", 4 },
	[MI_PARENT] = { VHDX_GUID_PARENT_LOC, "parent locator", 20 },
};

static int read_metadata(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;
	uint8_t *t = kl_malloc(VHDX_META_TABLE_SIZE);
	uint32_t ioff[MI_N] = { 0 }, ilen[MI_N] = { 0 };
	bool have[MI_N] = { false };
	uint8_t item[16];
	uint8_t *loc = NULL;
	uint16_t n;
	int rc = 0;

	if (!t)
		return -ENOMEM;
	s->loc_entry = -1;
	s->meta_end = VHDX_META_TABLE_SIZE;
	rc = vhdx_read(d, s->meta_off, t, VHDX_META_TABLE_SIZE);
	if (rc < 0)
		goto out;
	if (memcmp(t, "metadata", 8) != 0) {
		rc = kl_err(-EUCLEAN, "%s: no 'metadata' signature at %llu (metadata region)",
			    d->filename, (unsigned long long)s->meta_off);
		goto out;
	}
	n = get_le16(t + 10);
	if (n > VHDX_MAX_ENTRIES) {
		rc = kl_err(-EUCLEAN, "%s: metadata table at %llu has %u entries, more than 2047",
			    d->filename, (unsigned long long)s->meta_off, n);
		goto out;
	}
	for (uint16_t i = 0; i < n; i++) {
		const uint8_t *e = t + 32 + 32 * (size_t)i;
		uint32_t off = get_le32(e + 16), len = get_le32(e + 20), fl = get_le32(e + 24);
		bool is_user = fl & 1, required = fl & 4;
		int k = -1;
		char g[39];

		vhdx_guid_format(e, g, false);
		if (len && off + (uint64_t)len > s->meta_end)
			s->meta_end = off + len;
		if (len > VHDX_MiB || (len == 0 && off != 0) ||
		    (len && (off < VHDX_META_TABLE_SIZE || !kl_range_ok(off, len, s->meta_len)))) {
			rc = kl_err(-EUCLEAN,
				    "%s: metadata entry %u (%s) at offset %u, %u bytes, lies "
				    "outside the %u-byte metadata region at %llu",
				    d->filename, i, g, off, len, s->meta_len,
				    (unsigned long long)s->meta_off);
			goto out;
		}
		for (int j = 0; j < MI_N && !is_user; j++)
			if (guid_is(e, vhdx_items[j].guid))
				k = j;
		if (k < 0) {
			if (required && !is_user) {
				rc = kl_err(-ENOTSUP,
					    "%s: metadata item %s is required but unknown",
					    d->filename, g);
				goto out;
			}
			continue;
		}
		if (have[k]) {
			rc = kl_err(-EUCLEAN, "%s: metadata item '%s' appears twice", d->filename,
				    vhdx_items[k].name);
			goto out;
		}
		if (len < vhdx_items[k].min_len) {
			rc = kl_err(-EUCLEAN, "%s: metadata item '%s' is %u bytes, expected %u",
				    d->filename, vhdx_items[k].name, len, vhdx_items[k].min_len);
			goto out;
		}
		have[k] = true;
		ioff[k] = off;
		ilen[k] = len;
		if (k == MI_PARENT)
			s->loc_entry = i;
	}
	for (int k = MI_PARAMS; k <= MI_LSS; k++) {
		if (!have[k] && k != MI_PAGE83) {
			rc = kl_err(-EUCLEAN, "%s: required metadata item '%s' is missing",
				    d->filename, vhdx_items[k].name);
			goto out;
		}
	}
	rc = vhdx_read(d, s->meta_off + ioff[MI_PARAMS], item, 8);
	if (rc < 0)
		goto out;
	s->block_size = get_le32(item);
	s->leave_alloc = get_le32(item + 4) & 1;
	s->has_parent = get_le32(item + 4) & 2;
	rc = vhdx_read(d, s->meta_off + ioff[MI_VSIZE], item, 8);
	if (rc < 0)
		goto out;
	s->vsize = get_le64(item);
	rc = vhdx_read(d, s->meta_off + ioff[MI_LSS], item, 4);
	if (rc < 0)
		goto out;
	s->lss = get_le32(item);
	s->pss = 512;
	if (have[MI_PSS]) {
		rc = vhdx_read(d, s->meta_off + ioff[MI_PSS], item, 4);
		if (rc < 0)
			goto out;
		s->pss = get_le32(item);
	}
	if (have[MI_PAGE83]) {
		rc = vhdx_read(d, s->meta_off + ioff[MI_PAGE83], s->page83, 16);
		if (rc < 0)
			goto out;
	}
	if (!KL_IS_POW2(s->block_size) || s->block_size < VHDX_MIN_BLOCK ||
	    s->block_size > VHDX_MAX_BLOCK) {
		rc = kl_err(-EUCLEAN,
			    "%s: block size %u is not a power of two from 1 MiB to 256 MiB",
			    d->filename, s->block_size);
		goto out;
	}
	if (s->lss != 512 && s->lss != 4096) {
		rc = kl_err(-EUCLEAN, "%s: logical sector size %u is neither 512 nor 4096",
			    d->filename, s->lss);
		goto out;
	}
	if (s->pss != 512 && s->pss != 4096) {
		rc = kl_err(-EUCLEAN, "%s: physical sector size %u is neither 512 nor 4096",
			    d->filename, s->pss);
		goto out;
	}
	if (s->vsize == 0 || s->vsize > VHDX_MAX_VSIZE || s->vsize % s->lss) {
		rc = kl_err(-EUCLEAN,
			    "%s: virtual disk size %llu is not a non-zero multiple of the %u-byte "
			    "sector size up to 64 TiB",
			    d->filename, (unsigned long long)s->vsize, s->lss);
		goto out;
	}
	if (s->has_parent) {
		if (!have[MI_PARENT]) {
			rc = kl_err(-EUCLEAN, "%s: differencing disk (HasParent) without a parent "
					      "locator",
				    d->filename);
			goto out;
		}
		loc = kl_malloc(ilen[MI_PARENT]);
		if (!loc) {
			rc = -ENOMEM;
			goto out;
		}
		rc = vhdx_read(d, s->meta_off + ioff[MI_PARENT], loc, ilen[MI_PARENT]);
		if (rc == 0)
			rc = parse_locator(d, loc, ilen[MI_PARENT], s->meta_off + ioff[MI_PARENT]);
	}
out:
	kl_free(loc);
	kl_free(t);
	return rc;
}

/* ------------------------------------------------------------------ parent */

/* A Windows path's last component ("\\?\C:\vm\base.vhdx" -> "base.vhdx"). */
static const char *win_basename(const char *p)
{
	const char *b = p;

	for (const char *q = p; *q; q++)
		if (*q == '\\' || *q == '/' || *q == ':')
			b = q + 1;
	return b;
}

/* relative_path uses '\' and ".." (2.6.2.6.3); make it a POSIX relative path. */
static char *win_relative(const char *p)
{
	char *r = kl_strdup(p);

	if (!r)
		return NULL;
	for (char *q = r; *q; q++)
		if (*q == '\\')
			*q = '/';
	return r;
}

static int open_parent(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;
	static const char *const keys[] = { "relative_path", "volume_path",
					    "absolute_win32_path" };
	const char *lk = loc_get(s, "parent_linkage"), *lk2 = loc_get(s, "parent_linkage2");
	uint8_t link[16], link2[16];
	bool have2 = false;
	char *cand[3] = { NULL, NULL, NULL };
	char tried[1024] = "";
	struct blk_identity id;
	char g1[39], g2[39];
	int rc = 0;

	if (!lk || vhdx_guid_parse(lk, link) < 0)
		return kl_err(-EUCLEAN, "%s: parent locator has %s parent_linkage", d->filename,
			      lk ? "a malformed" : "no");
	if (lk2 && vhdx_guid_parse(lk2, link2) == 0)
		have2 = true;
	for (int i = 0; i < 3; i++) {
		const char *v = loc_get(s, keys[i]);

		if (!v || !*v || !*win_basename(v))
			continue;
		cand[i] = i == 0 ? win_relative(v) : kl_strdup(win_basename(v));
		if (!cand[i]) {
			rc = -ENOMEM;
			goto out;
		}
	}
	for (int i = 0; i < 3 && !s->parent_ref; i++)
		if (cand[i] && !(s->parent_ref = kl_strdup(cand[i]))) {
			rc = -ENOMEM;
			goto out;
		}
	if (!s->parent_ref) {
		rc = kl_err(-EUCLEAN, "%s: parent locator has no relative_path, volume_path or "
				      "absolute_win32_path",
			    d->filename);
		goto out;
	}
	if (d->flags & BLK_OPEN_NO_PARENT)
		goto out;
	for (int i = 0; i < 3; i++) {
		char *path = NULL;
		size_t tl = strlen(tried);

		if (!cand[i] || (i > 0 && cand[i - 1] && strcmp(cand[i - 1], cand[i]) == 0) ||
		    (i == 2 && cand[0] && strcmp(cand[0], cand[2]) == 0))
			continue;
		rc = blk_resolve_path(d, cand[i], &path);
		kl_free(path);
		if (rc == -ENOENT) {
			snprintf(tried + tl, sizeof(tried) - tl, "%s%s '%s'", tl ? ", " : "",
				 keys[i], cand[i]);
			kl_err_clear();
			rc = 0;
			continue;
		}
		if (rc < 0)
			goto out;
		kl_free(s->parent_ref);
		s->parent_ref = kl_strdup(cand[i]);
		if (!s->parent_ref) {
			rc = -ENOMEM;
			goto out;
		}
		rc = blk_open_parent(d, cand[i], "vhdx");
		if (rc < 0)
			goto out;
		break;
	}
	if (!d->parent) {
		rc = kl_err(-ENOENT, "%s: parent VHDX not found next to it (tried %s)", d->filename,
			    tried);
		goto out;
	}
	rc = blk_identity(d->parent, &id);
	if (rc < 0)
		goto out;
	if (!(id.valid & BLK_ID_UUID) ||
	    (memcmp(id.uuid, link, 16) != 0 && (!have2 || memcmp(id.uuid, link2, 16) != 0))) {
		vhdx_guid_format(id.uuid, g1, true);
		vhdx_guid_format(link, g2, true);
		rc = kl_err(-ESTALE,
			    "%s: wrong parent: %s has DataWriteGuid %s but parent_linkage is %s "
			    "(the parent was modified or replaced after this differencing disk was "
			    "created)",
			    d->filename, blk_filename(d->parent), g1, g2);
		goto out;
	}
	if (d->parent->drv == d->drv) {
		const struct vhdx_state *ps = d->parent->priv;

		if (ps->lss != s->lss) {
			rc = kl_err(-EUCLEAN,
				    "%s: logical sector size %u differs from the parent's %u (%s)",
				    d->filename, s->lss, ps->lss, blk_filename(d->parent));
			goto out;
		}
	}
out:
	for (int i = 0; i < 3; i++)
		kl_free(cand[i]);
	return rc;
}

/* ------------------------------------------------------------------ open */

static int vhdx_probe(const struct blk_probe_buf *pb)
{
	if (pb->head_len >= 8 && memcmp(pb->head, VHDX_SIG_FILE, 8) == 0)
		return 100;
	return 0;
}

static void vhdx_close(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;

	if (!s)
		return;
	vhdx_bat_free(s);
	vhdx_log_free(s);
	loc_free(s);
	kl_free(s->parent_ref);
	kl_free(s->zbuf);
	s->parent_ref = NULL;
	s->zbuf = NULL;
}

static int vhdx_open(struct blk_dev *d, const struct blk_open_opts *o)
{
	struct vhdx_state *s = d->priv;
	uint8_t id[8];
	uint64_t fsize;
	int rc;

	(void)o;
	KL_TRY(kl_io_size(d->file, &fsize));
	s->file_size = fsize;
	if (fsize < VHDX_MiB)
		return kl_err(-EUCLEAN, "%s: %llu bytes is too short for a VHDX file (the header "
					"section alone is 1 MiB)",
			      d->filename, (unsigned long long)fsize);
	KL_TRY(vhdx_read(d, 0, id, sizeof(id)));
	if (memcmp(id, VHDX_SIG_FILE, 8) != 0)
		return kl_err(-EUCLEAN, "%s: no 'vhdxfile' identifier at offset 0", d->filename);
	rc = read_headers(d);
	if (rc == 0 && !kl_uuid_is_null(s->log_guid)) {
		if (s->log_len == 0 || s->log_len % VHDX_MiB || s->log_off < VHDX_MiB ||
		    s->log_off % VHDX_MiB || !kl_range_ok(s->log_off, s->log_len, fsize))
			rc = kl_err(-EUCLEAN,
				    "%s: the header's log (%llu+%u) is not a 1 MiB-aligned region "
				    "inside the file (%llu bytes)",
				    d->filename, (unsigned long long)s->log_off, s->log_len,
				    (unsigned long long)fsize);
		else
			rc = vhdx_log_load(d);
		if (rc == 0 && s->log_last_file_off > s->file_size)
			s->file_size = s->log_last_file_off;
	}
	if (rc == 0)
		rc = read_regions(d);
	if (rc == 0)
		rc = read_metadata(d);
	if (rc == 0)
		rc = vhdx_bat_load(d);
	if (rc == 0 && s->has_parent)
		rc = open_parent(d);
	if (rc == 0 && !d->read_only) {
		rc = vhdx_update_headers(d, false);
		if (rc == 0 && s->log_state == VHDX_LOG_IN_MEMORY)
			rc = vhdx_log_commit(d);
	}
	if (rc < 0) {
		vhdx_close(d);
		return rc;
	}
	d->size = s->vsize;
	d->cluster_size = s->block_size;
	d->write_align = s->lss;
	return 0;
}

/* ------------------------------------------------------------------ create */

struct vhdx_layout {
	uint64_t vsize;
	uint32_t bs, lss, pss;
	uint32_t log_len;
	uint64_t log_off, meta_off, bat_off, data_off, sb_off;
	uint32_t bat_len;
	uint64_t cr, nblocks, nchunks, nbat;
	uint64_t file_size;
	bool fixed, zero_state;
	uint8_t parent_dwg[16];
	const char *parent_rel; /* relative_path value, '\' separated; NULL: no parent */
	const char *parent_abs; /* absolute_win32_path value, or NULL */
};

static int put_region_tables(struct kl_file *f, const struct vhdx_layout *L)
{
	uint8_t *rt = kl_calloc(1, VHDX_RT_SIZE);
	int rc;

	if (!rt)
		return -ENOMEM;
	put_le32(rt, VHDX_SIG_REGI);
	put_le32(rt + 8, 2);
	vhdx_guid_parse(VHDX_GUID_BAT, rt + 16);
	put_le64(rt + 32, L->bat_off);
	put_le32(rt + 40, L->bat_len);
	put_le32(rt + 44, 1);
	vhdx_guid_parse(VHDX_GUID_METADATA, rt + 48);
	put_le64(rt + 64, L->meta_off);
	put_le32(rt + 72, (uint32_t)VHDX_MiB);
	put_le32(rt + 76, 1);
	put_le32(rt + 4, kl_crc32c(0, rt, VHDX_RT_SIZE));
	rc = kl_io_pwrite(f, VHDX_RT1_OFF, rt, VHDX_RT_SIZE);
	if (rc == 0)
		rc = kl_io_pwrite(f, VHDX_RT2_OFF, rt, VHDX_RT_SIZE);
	kl_free(rt);
	return rc;
}

/* Encode a VHDX parent locator item (2.6.2.6) into p; returns its length. */
static size_t encode_locator(uint8_t *p, const struct blk_kv *kv, size_t n)
{
	size_t o = 20 + 12 * n;

	vhdx_guid_parse(VHDX_GUID_LOCATOR_VHDX, p);
	put_le16(p + 16, 0);
	put_le16(p + 18, (uint16_t)n);
	for (size_t i = 0; i < n; i++) {
		uint8_t *e = p + 20 + 12 * i;
		size_t kn, vn;

		kn = utf8_to_utf16(kv[i].key, p + o);
		put_le32(e, (uint32_t)o);
		put_le16(e + 8, (uint16_t)kn);
		o += kn;
		vn = utf8_to_utf16(kv[i].val, p + o);
		put_le32(e + 4, (uint32_t)o);
		put_le16(e + 10, (uint16_t)vn);
		o += vn;
	}
	return o;
}

/* Room for an encoded locator with these entries. */
static size_t locator_room(const struct blk_kv *kv, size_t n)
{
	size_t r = 20 + 12 * n;

	for (size_t i = 0; i < n; i++)
		r += 2 * (strlen(kv[i].key) + strlen(kv[i].val));
	return r;
}

static size_t put_locator(uint8_t *p, const struct vhdx_layout *L)
{
	char link[39];
	struct blk_kv kv[3] = { { (char *)"parent_linkage", link },
				{ (char *)"relative_path", (char *)L->parent_rel },
				{ (char *)"absolute_win32_path", (char *)L->parent_abs } };

	vhdx_guid_format(L->parent_dwg, link, true);
	return encode_locator(p, kv, L->parent_abs ? 3 : 2);
}

static int put_metadata(struct kl_file *f, const struct vhdx_layout *L)
{
	uint8_t *m = kl_calloc(1, VHDX_META_TABLE_SIZE + 65536);
	uint8_t *it;
	uint32_t n = L->parent_rel ? 6 : 5;
	struct {
		const char *guid;
		uint32_t off, len, flags;
	} ent[6];
	int rc;

	if (!m)
		return -ENOMEM;
	it = m + VHDX_META_TABLE_SIZE;
	/* items packed from 64 KiB, as qemu and Hyper-V do */
	put_le32(it, L->bs);
	put_le32(it + 4, (L->fixed ? 1u : 0u) | (L->parent_rel ? 2u : 0u));
	put_le64(it + 8, L->vsize);
	kl_uuid_generate(it + 16);
	put_le32(it + 32, L->lss);
	put_le32(it + 36, L->pss);
	/* flags: bit1 IsVirtualDisk, bit2 IsRequired (MS-VHDX 2.6.2 table) */
	ent[0].guid = VHDX_GUID_FILE_PARAMS, ent[0].off = 0, ent[0].len = 8, ent[0].flags = 4;
	ent[1].guid = VHDX_GUID_VDISK_SIZE, ent[1].off = 8, ent[1].len = 8, ent[1].flags = 6;
	ent[2].guid = VHDX_GUID_PAGE83, ent[2].off = 16, ent[2].len = 16, ent[2].flags = 6;
	ent[3].guid = VHDX_GUID_LOGICAL_SS, ent[3].off = 32, ent[3].len = 4, ent[3].flags = 6;
	ent[4].guid = VHDX_GUID_PHYSICAL_SS, ent[4].off = 36, ent[4].len = 4, ent[4].flags = 6;
	if (L->parent_rel) {
		ent[5].guid = VHDX_GUID_PARENT_LOC;
		ent[5].off = 64;
		ent[5].len = (uint32_t)put_locator(it + 64, L);
		ent[5].flags = 4;
	}
	memcpy(m, "metadata", 8);
	put_le16(m + 10, (uint16_t)n);
	for (uint32_t i = 0; i < n; i++) {
		uint8_t *e = m + 32 + 32 * i;

		vhdx_guid_parse(ent[i].guid, e);
		put_le32(e + 16, VHDX_META_TABLE_SIZE + ent[i].off);
		put_le32(e + 20, ent[i].len);
		put_le32(e + 24, ent[i].flags);
	}
	rc = kl_io_pwrite(f, L->meta_off, m, VHDX_META_TABLE_SIZE + 65536);
	kl_free(m);
	return rc;
}

static int put_bat(struct kl_file *f, const struct vhdx_layout *L)
{
	const size_t per = 131072; /* entries per 1 MiB write */
	uint8_t *b;
	int rc = 0;

	/* dynamic without ZERO states: all NOT_PRESENT = zeros */
	if (!L->fixed && !L->zero_state && !L->parent_rel)
		return 0;
	b = kl_malloc(per * 8);
	if (!b)
		return -ENOMEM;
	for (uint64_t first = 0; first < L->nbat && rc == 0; first += per) {
		size_t cnt = (size_t)KL_MIN((uint64_t)per, L->nbat - first);

		for (size_t k = 0; k < cnt; k++) {
			uint64_t i = first + k, v = 0;

			if (i % (L->cr + 1) == L->cr) {
				/* differencing: a zeroed bitmap per chunk (vhdx_create) */
				if (L->parent_rel)
					v = (L->sb_off + i / (L->cr + 1) * VHDX_MiB) |
					    VHDX_SB_PRESENT;
			} else if (!L->parent_rel) {
				uint64_t blk = i - i / (L->cr + 1);

				if (L->fixed)
					v = (L->data_off + blk * L->bs) |
					    (L->zero_state ? VHDX_PAYLOAD_ZERO
							   : VHDX_PAYLOAD_FULLY_PRESENT);
				else
					v = VHDX_PAYLOAD_ZERO;
			}
			put_le64(b + 8 * k, v);
		}
		rc = kl_io_pwrite(f, L->bat_off + first * 8, b, cnt * 8);
	}
	kl_free(b);
	return rc;
}

static int write_image(const char *path, const struct vhdx_layout *L, unsigned kl_flags)
{
	struct vhdx_state hs = { 0 };
	struct kl_file *f;
	uint8_t *b = kl_calloc(1, 65536);
	char creator[64];
	int rc;

	if (!b)
		return -ENOMEM;
	rc = kl_io_open(path, kl_flags, &f);
	if (rc < 0) {
		kl_free(b);
		return rc;
	}
	/* File type identifier (2.2.1): signature + UTF-16 creator */
	memcpy(b, VHDX_SIG_FILE, 8);
	snprintf(creator, sizeof(creator), "keel %s", KL_VERSION);
	utf8_to_utf16(creator, b + 8);
	rc = kl_io_truncate(f, L->file_size);
	if (rc == 0)
		rc = kl_io_pwrite(f, 0, b, 65536);
	/* two headers, sequence 1 and 2, LogGuid zero (no log to replay) */
	kl_uuid_generate(hs.file_write_guid);
	kl_uuid_generate(hs.data_write_guid);
	hs.log_len = L->log_len;
	hs.log_off = L->log_off;
	for (int i = 0; i < 2 && rc == 0; i++) {
		hdr_build(&hs, (uint64_t)i + 1, b);
		rc = kl_io_pwrite(f, i ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF, b, VHDX_HEADER_SIZE);
	}
	if (rc == 0)
		rc = put_region_tables(f, L);
	if (rc == 0)
		rc = put_metadata(f, L);
	if (rc == 0)
		rc = put_bat(f, L);
	if (rc == 0)
		rc = kl_io_sync(f);
	kl_io_close(f);
	kl_free(b);
	if (rc < 0)
		kl_io_unlink(path);
	return rc;
}

/*
 * The parent recorded for a new differencing disk: parent_linkage = its
 * DataWriteGuid, relative_path = the reference as given ('\'-separated,
 * MS-VHDX 2.6.2.6.3), and absolute_win32_path = the host path in Windows
 * notation ("\\?\" + path with '\'). Hyper-V tries relative_path first;
 * libvhdi only looks at absolute_win32_path and volume_path (its
 * relative_path lookup compares 12 characters of the 13-character key) and
 * takes the last component of it next to the child.
 */
static int parent_for_create(const char *path, const struct blk_create_opts *o,
			     struct vhdx_layout *L, char **rel, char **abs)
{
	struct blk_open_opts po = { .format = "vhdx", .flags = o->flags & BLK_OPEN_ALLOW_EXTERNAL };
	struct blk_identity id;
	struct blk_dev *p = NULL;
	char *dir = NULL, *ppath = NULL, *real, *copy = kl_strdup(path);
	int rc;

	*rel = NULL;
	*abs = NULL;
	if (o->parent_format && strcmp(o->parent_format, "vhdx") != 0)
		return kl_err(-ENOTSUP, "%s: a differencing VHDX needs a VHDX parent, not %s", path,
			      o->parent_format);
	if (!copy)
		return -ENOMEM;
	dir = kl_strdup(dirname(copy));
	ppath = !dir ? NULL
	       : o->parent[0] == '/' ? kl_strdup(o->parent)
				      : kl_asprintf("%s/%s", dir, o->parent);
	if (!ppath) {
		rc = -ENOMEM;
		goto out;
	}
	rc = blk_open(ppath, &po, &p);
	if (rc < 0) {
		rc = kl_err_prefix(rc, "%s: parent '%s'", path, o->parent);
		goto out;
	}
	rc = blk_identity(p, &id);
	if (rc < 0)
		goto out;
	memcpy(L->parent_dwg, id.uuid, 16);
	L->lss = ((const struct vhdx_state *)p->priv)->lss;
	/* relative_path is '\'-separated (MS-VHDX 2.6.2.6.3) */
	*rel = kl_strdup(o->parent);
	if (!*rel) {
		rc = -ENOMEM;
		goto out;
	}
	for (char *q = *rel; *q; q++)
		if (*q == '/')
			*q = '\\';
	real = realpath(ppath, NULL);
	if (real) {
		*abs = kl_asprintf("\\\\?\\%s", real + (real[0] == '/'));
		free(real);
		if (!*abs) {
			rc = -ENOMEM;
			goto out;
		}
		for (char *q = *abs + 4; *q; q++)
			if (*q == '/')
				*q = '\\';
	}
out:
	blk_close(p);
	kl_free(copy);
	kl_free(dir);
	kl_free(ppath);
	return rc;
}

static int vhdx_create(const char *path, const struct blk_create_opts *o)
{
	struct vhdx_layout L = { 0 };
	const char *sub = kl_opts_get(o->opts, "subformat");
	uint64_t v;
	bool found, bsz = false;
	char *rel = NULL, *abs = NULL;
	int rc;

	L.lss = 512;
	L.pss = 4096;
	if (sub && strcmp(sub, "fixed") == 0)
		L.fixed = true;
	else if (sub && strcmp(sub, "dynamic") != 0)
		return kl_err(-EINVAL, "vhdx: subformat must be dynamic or fixed, not '%s'", sub);
	if (o->parent) {
		if (L.fixed)
			return kl_err(-EINVAL, "vhdx: a differencing disk cannot be fixed");
		rc = parent_for_create(path, o, &L, &rel, &abs);
		if (rc < 0)
			goto out;
		L.parent_rel = rel;
		L.parent_abs = abs;
	}
	rc = kl_opts_get_size(o->opts, "logical_sector_size", &v, &found);
	if (rc == 0 && found) {
		if (v != 512 && v != 4096)
			rc = kl_err(-EINVAL, "vhdx: logical_sector_size must be 512 or 4096");
		else if (rel && v != L.lss)
			rc = kl_err(-EINVAL, "vhdx: logical_sector_size %llu differs from the "
					     "parent's %u",
				    (unsigned long long)v, L.lss);
		L.lss = (uint32_t)v;
	}
	if (rc == 0)
		rc = kl_opts_get_size(o->opts, "physical_sector_size", &v, &found);
	if (rc == 0) {
		if (found)
			L.pss = (uint32_t)v;
		if (found && v != 512 && v != 4096)
			rc = kl_err(-EINVAL, "vhdx: physical_sector_size must be 512 or 4096");
		else if (L.pss < L.lss)
			L.pss = L.lss;
	}
	/*
	 * Dynamic: sized with the disk as qemu-img does (8 MiB up to 1 GiB,
	 * 16 up to 100 GiB, 32 up to 32 TiB, then 64), so the same source
	 * converts to a file of the same size; smaller blocks allocate less
	 * around sparse data. Hyper-V's own default is 32 MiB, which it reads
	 * like any other. Differencing: 2 MiB, as Hyper-V.
	 */
	if (rel)
		L.bs = 2u << 20;
	else if (o->size > (32ull << 40))
		L.bs = 64u << 20;
	else if (o->size > (100ull << 30))
		L.bs = 32u << 20;
	else if (o->size > (1ull << 30))
		L.bs = 16u << 20;
	else
		L.bs = 8u << 20;
	if (rc == 0)
		rc = kl_opts_get_size(o->opts, "block_size", &v, &found);
	if (rc == 0 && found) {
		if (!KL_IS_POW2(v) || v < VHDX_MIN_BLOCK || v > VHDX_MAX_BLOCK)
			rc = kl_err(-EINVAL, "vhdx: block_size must be a power of two from 1M to "
					     "256M");
		L.bs = (uint32_t)v;
	}
	L.log_len = (uint32_t)VHDX_MiB;
	if (rc == 0)
		rc = kl_opts_get_size(o->opts, "log_size", &v, &found);
	if (rc == 0 && found) {
		if (v < VHDX_MiB || v % VHDX_MiB || v > 1024 * VHDX_MiB)
			rc = kl_err(-EINVAL, "vhdx: log_size must be a multiple of 1M from 1M to "
					     "1G");
		L.log_len = (uint32_t)v;
	}
	if (rc == 0)
		rc = kl_opts_get_bool(o->opts, "block_state_zero", &bsz, &found);
	if (rc == 0 && bsz && rel)
		rc = kl_err(-EINVAL, "vhdx: block_state_zero=on would hide the whole parent of a "
				     "differencing disk");
	if (rc < 0)
		goto out;
	L.zero_state = bsz;
	L.vsize = KL_ALIGN_UP(o->size, (uint64_t)L.lss);
	if (L.vsize == 0 || L.vsize > VHDX_MAX_VSIZE || L.vsize < o->size) {
		rc = kl_err(-EINVAL, "vhdx: virtual size %llu is outside 1 byte .. 64 TiB",
			    (unsigned long long)o->size);
		goto out;
	}
	L.cr = ((uint64_t)1 << 23) * L.lss / L.bs;
	L.nblocks = KL_DIV_ROUND_UP(L.vsize, (uint64_t)L.bs);
	L.nchunks = KL_DIV_ROUND_UP(L.nblocks, L.cr);
	L.nbat = rel ? L.nchunks * (L.cr + 1) : L.nblocks + (L.nblocks - 1) / L.cr;
	L.bat_len = (uint32_t)KL_ALIGN_UP(L.nbat * 8, VHDX_MiB);
	L.log_off = VHDX_MiB;
	L.meta_off = L.log_off + L.log_len;
	L.bat_off = L.meta_off + VHDX_MiB;
	L.data_off = L.bat_off + L.bat_len;
	/*
	 * A differencing disk gets a zeroed sector bitmap block for every chunk
	 * up front (sparse: 1 MiB of file per 4 GiB of disk at 512-byte
	 * sectors). MS-VHDX allows either; libvhdi 20210425 reads the bitmap of
	 * a NOT_PRESENT block from the chunk's bitmap entry even when that
	 * entry is NOT_PRESENT (offset 0, the file identifier) and so shows
	 * garbage for untouched blocks of a child without them.
	 */
	if (rel) {
		L.sb_off = L.data_off;
		L.data_off += L.nchunks * VHDX_MiB;
	}
	L.file_size = L.data_off + (L.fixed ? L.nblocks * L.bs : 0);
	rc = write_image(path, &L, blk_create_kl_flags(o));
out:
	kl_free(rel);
	kl_free(abs);
	return rc;
}

/* ------------------------------------------------------------------ info */

/*
 * keel check. Opening is the check: it refuses a BAT entry outside the file,
 * overlapping another block or a region, or in a reserved state, and
 * replays (here: in memory, the check opens read-only) a log left by an
 * interrupted update. What remains is to count. Space no BAT entry uses is
 * not a leak in VHDX: Hyper-V keeps free space inside the file and reuses
 * it, so it is not reported (qemu-img check does not either).
 */
static int vhdx_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	struct vhdx_state *s = d->priv;

	if (flags & BLK_CHECK_REPAIR_ALL)
		return kl_err(-ENOTSUP, "%s: keel does not repair VHDX images (opening one "
			      "writable replays its log)", d->filename);
	r->total_clusters = s->nblocks;
	for (uint64_t blk = 0; blk < s->nblocks; blk++) {
		unsigned st = VHDX_BAT_STATE(s->bat[blk + blk / s->chunk_ratio]);

		r->allocated_clusters += st == VHDX_PAYLOAD_FULLY_PRESENT ||
					 st == VHDX_PAYLOAD_PARTIALLY_PRESENT;
	}
	if (s->log_state == VHDX_LOG_IN_MEMORY)
		blk_check_msg(r, "%s: the log holds updates an interrupted writer left (not an "
			      "error: they were applied in memory for this check, and the next "
			      "writable open applies them to the file)", d->filename);
	return 0;
}

static int vhdx_info(struct blk_dev *d, struct blk_info *out)
{
	struct vhdx_state *s = d->priv;
	char g[39];
	int rc = 0;

	out->subformat = kl_strdup(s->has_parent ? "differencing"
				   : s->leave_alloc ? "fixed"
						    : "dynamic");
	if (!out->subformat)
		return -ENOMEM;
	if (s->has_parent && s->parent_ref) {
		out->parent = kl_strdup(s->parent_ref);
		out->parent_format = kl_strdup("vhdx");
		if (!out->parent || !out->parent_format)
			return -ENOMEM;
	}
	rc = blk_info_add_kv(out, "block size", "%u", s->block_size);
	if (rc == 0)
		rc = blk_info_add_kv(out, "logical sector size", "%u", s->lss);
	if (rc == 0)
		rc = blk_info_add_kv(out, "physical sector size", "%u", s->pss);
	if (rc == 0)
		rc = blk_info_add_kv(out, "has parent", "%s", s->has_parent ? "yes" : "no");
	for (size_t i = 0; rc == 0 && i < s->nloc; i++) {
		char key[96];

		snprintf(key, sizeof(key), "parent locator %s", s->loc[i].key);
		rc = blk_info_add_kv(out, key, "%s", s->loc[i].val);
	}
	vhdx_guid_format(s->page83, g, false);
	if (rc == 0)
		rc = blk_info_add_kv(out, "virtual disk id", "%s", g);
	vhdx_guid_format(s->data_write_guid, g, false);
	if (rc == 0)
		rc = blk_info_add_kv(out, "data write guid", "%s", g);
	vhdx_guid_format(s->file_write_guid, g, false);
	if (rc == 0)
		rc = blk_info_add_kv(out, "file write guid", "%s", g);
	if (rc == 0) {
		switch (s->log_state) {
		case VHDX_LOG_IN_MEMORY:
			rc = blk_info_add_kv(out, "log", "replayed in memory (%llu entr%s; "
							 "read-only open, file unchanged)",
					     (unsigned long long)s->log_entries,
					     s->log_entries == 1 ? "y" : "ies");
			break;
		case VHDX_LOG_REPLAYED:
			rc = blk_info_add_kv(out, "log", "replayed to the file (%llu entr%s)",
					     (unsigned long long)s->log_entries,
					     s->log_entries == 1 ? "y" : "ies");
			break;
		default:
			rc = blk_info_add_kv(out, "log", "empty");
			break;
		}
	}
	if (rc == 0 && !kl_uuid_is_null(s->log_guid))
		rc = blk_info_add_feature(out, "log-pending");
	return rc;
}

static int vhdx_identity(struct blk_dev *d, struct blk_identity *id)
{
	struct vhdx_state *s = d->priv;

	memcpy(id->uuid, s->data_write_guid, 16);
	id->valid = BLK_ID_UUID;
	return 0;
}

/* ------------------------------------------------------------------ commit, rebase */

/*
 * Replace the parent locator: the new item is written into free space after
 * the last metadata item and synced, then its table entry (32 bytes, inside
 * one sector) is pointed at it and synced, so a crash leaves the old or the
 * new locator. MS-VHDX routes metadata updates through the log; this
 * ordering gives the same all-or-nothing result without one.
 */
static int write_locator(struct blk_dev *d, const struct blk_kv *kv, size_t n)
{
	struct vhdx_state *s = d->priv;
	uint64_t at = KL_ALIGN_UP(s->meta_end, 8);
	size_t room = locator_room(kv, n), len;
	uint8_t *p, ent[8];
	int rc;

	if (s->loc_entry < 0)
		return kl_err(-EUCLEAN, "%s: no parent locator to update", d->filename);
	for (size_t i = 0; i < n; i++)
		if (2 * strlen(kv[i].key) > 65535 || 2 * strlen(kv[i].val) > 65535)
			return kl_err(-EINVAL, "%s: parent locator value for %s is too long",
				      d->filename, kv[i].key);
	if (at + room > s->meta_len)
		return kl_err(-ENOSPC, "%s: no room left in the %u-byte metadata region for a new "
				       "parent locator",
			      d->filename, s->meta_len);
	p = kl_calloc(1, room);
	if (!p)
		return -ENOMEM;
	len = encode_locator(p, kv, n);
	rc = kl_io_pwrite(d->file, s->meta_off + at, p, len);
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc == 0)
		rc = kl_io_event("vhdx.locator_switch");
	put_le32(ent, (uint32_t)at);
	put_le32(ent + 4, (uint32_t)len);
	if (rc == 0)
		rc = kl_io_pwrite(d->file, s->meta_off + 32 + 32 * (uint64_t)s->loc_entry + 16, ent,
				  8);
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc == 0) {
		s->meta_end = at + len;
		loc_free(s);
		rc = parse_locator(d, p, (uint32_t)len, s->meta_off + at);
	}
	kl_free(p);
	if (rc < 0)
		s->broken = true;
	return rc;
}

/*
 * The entries of a new locator: linkage (and linkage2 when given), the
 * paths given, and the paths already recorded for those not given.
 */
static int locator_update(struct blk_dev *d, const uint8_t link[16], const uint8_t *link2,
			  const char *rel, const char *abs)
{
	struct vhdx_state *s = d->priv;
	char l1[39], l2[39];
	struct blk_kv kv[5];
	size_t n = 0;
	const char *v;

	vhdx_guid_format(link, l1, true);
	kv[n++] = (struct blk_kv){ (char *)"parent_linkage", l1 };
	if (link2) {
		vhdx_guid_format(link2, l2, true);
		kv[n++] = (struct blk_kv){ (char *)"parent_linkage2", l2 };
	}
	if ((v = rel ? rel : loc_get(s, "relative_path")))
		kv[n++] = (struct blk_kv){ (char *)"relative_path", (char *)v };
	if (!rel && (v = loc_get(s, "volume_path")))
		kv[n++] = (struct blk_kv){ (char *)"volume_path", (char *)v };
	if ((v = abs ? abs : loc_get(s, "absolute_win32_path")))
		kv[n++] = (struct blk_kv){ (char *)"absolute_win32_path", (char *)v };
	return write_locator(d, kv, n);
}

/* "\\?\" + the host path with '\' separators, for absolute_win32_path. */
static char *win32_abs(const char *path)
{
	char *real = realpath(path, NULL), *w;

	if (!real)
		return NULL;
	w = kl_asprintf("\\\\?\\%s", real + (real[0] == '/'));
	free(real);
	for (char *q = w ? w + 4 : NULL; q && *q; q++)
		if (*q == '/')
			*q = '\\';
	return w;
}

/*
 * keel commit is about to write this child's data into its VHDX parent,
 * which changes the parent's DataWriteGuid. Pick that new GUID now, record
 * it as parent_linkage2 (both values are accepted, MS-VHDX 2.6.2.6.3), and
 * only then give it to the parent: after a crash at any point the child
 * still opens with its parent, committed or not.
 */
static int vhdx_parent_commit_begin(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv, *ps;
	uint8_t g[16], link[16];
	const char *lk = loc_get(s, "parent_linkage");

	if (!s->has_parent || !d->parent)
		return 0;
	if (d->parent->drv != d->drv || d->parent->read_only)
		return kl_err(-ENOTSUP, "%s: committing needs a writable VHDX parent", d->filename);
	if (s->broken)
		return kl_err(-EUCLEAN, "%s: refusing to write after an earlier failure",
			      d->filename);
	if (!lk || vhdx_guid_parse(lk, link) < 0)
		return kl_err(-EUCLEAN, "%s: parent locator has no valid parent_linkage",
			      d->filename);
	ps = d->parent->priv;
	kl_uuid_generate(g);
	KL_TRY(locator_update(d, link, g, NULL, NULL));
	memcpy(ps->data_write_guid, g, 16);
	KL_TRY(vhdx_update_headers(d->parent, false));
	ps->dwg_updated = true;
	return 0;
}

static int vhdx_set_parent(struct blk_dev *d, const char *ref, const char *fmt)
{
	struct vhdx_state *s = d->priv;
	struct blk_identity id;
	char *rel, *abs;
	int rc;

	if (!ref)
		return kl_err(-ENOTSUP, "%s: a differencing VHDX cannot drop its parent (convert "
					"it to a standalone image instead)",
			      d->filename);
	if (!s->has_parent)
		return kl_err(-ENOTSUP, "%s: only a differencing VHDX has a parent to change",
			      d->filename);
	if (!d->parent || d->parent->drv != d->drv)
		return kl_err(-ENOTSUP, "%s: the parent of a differencing VHDX must be a VHDX, "
					"not %s",
			      d->filename, fmt ? fmt : "another format");
	if (((const struct vhdx_state *)d->parent->priv)->lss != s->lss)
		return kl_err(-EINVAL, "%s: new parent %s has another logical sector size",
			      d->filename, blk_filename(d->parent));
	KL_TRY(blk_identity(d->parent, &id));
	rel = kl_strdup(ref);
	abs = win32_abs(blk_filename(d->parent));
	if (!rel) {
		kl_free(abs);
		return -ENOMEM;
	}
	for (char *q = rel; *q; q++)
		if (*q == '/')
			*q = '\\';
	rc = locator_update(d, id.uuid, NULL, rel, abs);
	kl_free(rel);
	kl_free(abs);
	if (rc == 0) {
		kl_free(s->parent_ref);
		s->parent_ref = kl_strdup(ref);
		if (!s->parent_ref)
			rc = -ENOMEM;
	}
	return rc;
}

static int vhdx_flush(struct blk_dev *d)
{
	return vhdx_bat_flush(d);
}

const struct blk_driver blk_vhdx_driver = {
	.name = "vhdx",
	.ext = "vhdx",
	.desc = "Hyper-V VHDX (fixed, dynamic, differencing; log replay)",
	.create_help =
		"  subformat=dynamic|fixed    sparse with a block table, or every block\n"
		"                             present (dynamic)\n"
		"  block_size=1M..256M        payload block size, a power of two (by disk size as\n"
		"                             qemu-img: 8M up to 1 GiB, 16M up to 100 GiB, 32M\n"
		"                             up to 32 TiB, then 64M; differencing disks 2M)\n"
		"  logical_sector_size=512|4096   (512; a differencing disk takes its parent's)\n"
		"  physical_sector_size=512|4096  (4096)\n"
		"  log_size=1M..1G            metadata log size, whole MiB (1M)\n"
		"  block_state_zero=on|off    mark blocks ZERO rather than NOT_PRESENT (dynamic)\n"
		"                             or FULLY_PRESENT (fixed), qemu-img's style (off)\n",
	.instance_size = sizeof(struct vhdx_state),
	.flags = BLK_DRV_CAN_CREATE | BLK_DRV_HAS_PARENT,
	.probe = vhdx_probe,
	.open = vhdx_open,
	.create = vhdx_create,
	.pread = vhdx_pread,
	.pwrite = vhdx_pwrite,
	.pwrite_zeroes = vhdx_pwrite_zeroes,
	.block_status = vhdx_block_status,
	.flush = vhdx_flush,
	.close = vhdx_close,
	.info = vhdx_info,
	.check = vhdx_check,
	.identity = vhdx_identity,
	.set_parent = vhdx_set_parent,
	.make_empty = vhdx_bat_make_empty,
	.parent_commit_begin = vhdx_parent_commit_begin,
};
