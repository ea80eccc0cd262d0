/*
 * format/vdi.c - VirtualBox VDI, header version 1.1: dynamic ("normal"),
 * fixed and differencing images, read and write.
 *
 * Layout (digest: shared/specs/vdi.md; VirtualBox VDICore.h): a 512-byte
 * sector holding the pre-header (text, signature, version) and the header,
 * then a block map of u32 entries at offset_bmap, then data blocks at
 * offset_data in allocation order. Everything is little-endian; UUIDs are
 * stored in the Microsoft mixed-endian layout and shown in RFC 4122 order.
 *
 * Block map entries: an index into the data area, 0xFFFFFFFF never
 * allocated (zeros in a base image, the parent's data in a differencing
 * image), 0xFFFFFFFE a zero block (zeros, the parent is not consulted).
 *
 * A differencing image names its parent only by UUID (VirtualBox keeps
 * paths in its media registry), so keel looks for the parent among the
 * *.vdi files next to the child (and in the directory above, where
 * VirtualBox keeps the base of a Snapshots/ folder, when external parents
 * are allowed) and opens the one whose image UUID matches the link UUID.
 */
#define _GNU_SOURCE
#include "format/format_int.h"

#include <dirent.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#define VDI_SIGNATURE 0xBEDA107Fu
#define VDI_VERSION_1_1 0x00010001u
#define VDI_HEADER_SECTOR 512u
#define VDI_PRE_HEADER 0x48u
#define VDI_HEADER_V1 0x180u	  /* header size of a v1 header (qemu) */
#define VDI_HEADER_V1PLUS 0x190u  /* v1plus: adds the LCHS geometry (VirtualBox) */
#define VDI_TYPE_NORMAL 1u
#define VDI_TYPE_FIXED 2u
#define VDI_TYPE_UNDO 3u
#define VDI_TYPE_DIFF 4u
#define VDI_FREE 0xFFFFFFFFu
#define VDI_ZERO 0xFFFFFFFEu
#define VDI_BLOCK_SIZE (1u << 20)
#define VDI_MAX_BLOCKS 0x3FFFFFFFu
#define VDI_MIN_BLOCK 512u
#define VDI_MAX_BLOCK (256u << 20)
#define VDI_MAX_EXTRA (1u << 20)
#define VDI_DATA_ALIGN (1u << 20)
#define VDI_MAX_MAP_BYTES (1ULL << 30)
#define VDI_MAX_SCAN 4096	/* directory entries examined when looking for a parent */
#define VDI_TEXT "<<< keel Virtual Disk Image >>>\n"

/* header fields, offsets from the start of the file */
#define V_TEXT 0x000
#define V_SIGNATURE 0x040
#define V_VERSION 0x044
#define V_HEADER_SIZE 0x048
#define V_TYPE 0x04C
#define V_FLAGS 0x050
#define V_DESCRIPTION 0x054
#define V_DESCRIPTION_LEN 256
#define V_OFFSET_BMAP 0x154
#define V_OFFSET_DATA 0x158
#define V_CYLINDERS 0x15C
#define V_HEADS 0x160
#define V_SECTORS 0x164
#define V_SECTOR_SIZE 0x168
#define V_DISK_SIZE 0x170
#define V_BLOCK_SIZE 0x178
#define V_BLOCK_EXTRA 0x17C
#define V_BLOCKS 0x180
#define V_ALLOCATED 0x184
#define V_UUID_IMAGE 0x188
#define V_UUID_SNAP 0x198
#define V_UUID_LINK 0x1A8
#define V_UUID_PARENT 0x1B8
#define V_LCHS 0x1C8

struct vdi_state {
	uint8_t header[VDI_HEADER_SECTOR];
	uint32_t type;
	uint64_t file_size;
	uint32_t header_size;
	uint64_t offset_bmap;
	uint64_t offset_data;
	uint32_t block_size;
	uint32_t block_extra;
	uint32_t nblocks;
	uint32_t nalloc;	/* allocated map entries (what blocks_allocated should say) */
	uint32_t next_index;	/* data block index of the next allocation */
	uint32_t *map;
	uint8_t *map_dirty;	/* one bit per 512-byte sector of the map changed since flush */
	bool meta_dirty;	/* map entries and blocks_allocated wait for flush */
	uint8_t *blkbuf;	/* one block, for allocating writes that need filling */
	char *parent_ref;
	char *note;
};

/* ------------------------------------------------------------------ helpers */

/* Mixed-endian (u32, u16, u16 little-endian) <-> RFC 4122 byte order; its own inverse. */
static void vdi_uuid_swap(const uint8_t *in, uint8_t *out)
{
	out[0] = in[3];
	out[1] = in[2];
	out[2] = in[1];
	out[3] = in[0];
	out[4] = in[5];
	out[5] = in[4];
	out[6] = in[7];
	out[7] = in[6];
	memcpy(out + 8, in + 8, 8);
}

static void vdi_uuid_str(const uint8_t *stored, char out[37])
{
	uint8_t u[16];

	vdi_uuid_swap(stored, u);
	kl_uuid_format(u, out);
}

static void vdi_note(struct vdi_state *s, const char *fmt, ...) KL_PRINTF(2, 3);
static void vdi_note(struct vdi_state *s, const char *fmt, ...)
{
	char buf[512];
	char *n;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	n = s->note ? kl_asprintf("%s; %s", s->note, buf) : kl_strdup(buf);
	if (n) {
		kl_free(s->note);
		s->note = n;
	}
}

static bool vdi_allocated(uint32_t e)
{
	return e < VDI_ZERO;
}

static uint64_t vdi_block_off(const struct vdi_state *s, uint32_t index)
{
	return s->offset_data + (uint64_t)index * ((uint64_t)s->block_size + s->block_extra) +
	       s->block_extra;
}

static void vdi_state_release(struct vdi_state *s)
{
	kl_free(s->map);
	s->map = NULL;
	kl_free(s->map_dirty);
	s->map_dirty = NULL;
	kl_free(s->blkbuf);
	s->blkbuf = NULL;
	kl_free(s->parent_ref);
	s->parent_ref = NULL;
	kl_free(s->note);
	s->note = NULL;
}

/* ------------------------------------------------------------------ probe */

static int vdi_probe(const struct blk_probe_buf *pb)
{
	if (pb->head_len < V_VERSION + 4 || get_le32(pb->head + V_SIGNATURE) != VDI_SIGNATURE)
		return 0;
	return get_le32(pb->head + V_VERSION) >> 16 == 1 ? 100 : 60;
}

/* ------------------------------------------------------------------ open */

static int vdi_parse_header(struct blk_dev *d)
{
	struct vdi_state *s = d->priv;
	const uint8_t *h = s->header;
	uint32_t ver, ssize;
	uint64_t disk_size, need, map_bytes;

	if (s->file_size < VDI_PRE_HEADER + VDI_HEADER_V1)
		return kl_err(-EUCLEAN, "%s: file of %llu bytes is too small for a VDI header "
			      "(%u bytes)", d->filename, (unsigned long long)s->file_size,
			      VDI_PRE_HEADER + VDI_HEADER_V1);
	if (get_le32(h + V_SIGNATURE) != VDI_SIGNATURE)
		return kl_err(-EUCLEAN, "%s: not a VDI: signature at offset 0x40 is 0x%08x, "
			      "expected 0x%08x", d->filename, get_le32(h + V_SIGNATURE),
			      VDI_SIGNATURE);
	ver = get_le32(h + V_VERSION);
	if (ver >> 16 != 1)
		return kl_err(-ENOTSUP, "%s: VDI version %u.%u is not supported (expected 1.1)",
			      d->filename, ver >> 16, ver & 0xffff);
	s->header_size = get_le32(h + V_HEADER_SIZE);
	if (s->header_size < VDI_HEADER_V1 || s->header_size > VDI_HEADER_SECTOR - VDI_PRE_HEADER)
		return kl_err(-EUCLEAN, "%s: VDI header size %u at offset 0x48 is outside %u..%u",
			      d->filename, s->header_size, VDI_HEADER_V1,
			      VDI_HEADER_SECTOR - VDI_PRE_HEADER);
	s->type = get_le32(h + V_TYPE);
	if (s->type == VDI_TYPE_UNDO)
		return kl_err(-ENOTSUP, "%s: VDI undo images (type 3) are not supported",
			      d->filename);
	if (s->type != VDI_TYPE_NORMAL && s->type != VDI_TYPE_FIXED && s->type != VDI_TYPE_DIFF)
		return kl_err(-EUCLEAN, "%s: VDI image type %u at offset 0x4c is not 1 (dynamic), "
			      "2 (fixed) or 4 (differencing)", d->filename, s->type);
	ssize = get_le32(h + V_SECTOR_SIZE);
	if (ssize != 512)
		return kl_err(-ENOTSUP, "%s: VDI sector size %u is not supported (only 512)",
			      d->filename, ssize);
	s->block_size = get_le32(h + V_BLOCK_SIZE);
	if (!KL_IS_POW2(s->block_size) || s->block_size < VDI_MIN_BLOCK ||
	    s->block_size > VDI_MAX_BLOCK)
		return kl_err(-EUCLEAN, "%s: VDI block size %u at offset 0x178 is not a power of two "
			      "between 512 bytes and 256 MiB", d->filename, s->block_size);
	s->block_extra = get_le32(h + V_BLOCK_EXTRA);
	if (s->block_extra > VDI_MAX_EXTRA)
		return kl_err(-EUCLEAN, "%s: VDI block extra data of %u bytes is larger than 1 MiB",
			      d->filename, s->block_extra);
	disk_size = get_le64(h + V_DISK_SIZE);
	s->nblocks = get_le32(h + V_BLOCKS);
	s->nalloc = get_le32(h + V_ALLOCATED);
	/* not KL_DIV_ROUND_UP: a hostile size near 2^64 would wrap to 0 blocks */
	need = disk_size / s->block_size + (disk_size % s->block_size != 0);
	if (need > s->nblocks)
		return kl_err(-EUCLEAN, "%s: disk size %llu needs %llu blocks of %u bytes but the "
			      "header says %u blocks", d->filename, (unsigned long long)disk_size,
			      (unsigned long long)need, s->block_size, s->nblocks);
	if (s->nblocks > VDI_MAX_BLOCKS)
		return kl_err(-EUCLEAN, "%s: %u blocks is more than VDI allows (%u)", d->filename,
			      s->nblocks, VDI_MAX_BLOCKS);
	s->offset_bmap = get_le32(h + V_OFFSET_BMAP);
	s->offset_data = get_le32(h + V_OFFSET_DATA);
	map_bytes = (uint64_t)s->nblocks * 4;
	if (s->offset_bmap < VDI_PRE_HEADER + s->header_size)
		return kl_err(-EUCLEAN, "%s: block map offset %llu overlaps the header",
			      d->filename, (unsigned long long)s->offset_bmap);
	if (!kl_range_ok(s->offset_bmap, map_bytes, s->file_size))
		return kl_err(-EUCLEAN, "%s: block map at offset %llu (%u entries) extends past the "
			      "end of the file (%llu bytes)", d->filename,
			      (unsigned long long)s->offset_bmap, s->nblocks,
			      (unsigned long long)s->file_size);
	if ((uint64_t)s->nblocks * 4 > VDI_MAX_MAP_BYTES)
		return kl_err(-ENOTSUP, "%s: a block map of %u entries is larger than keel's limit "
			      "of 1 GiB", d->filename, s->nblocks);
	if (s->offset_data < s->offset_bmap + map_bytes)
		return kl_err(-EUCLEAN, "%s: data area offset %llu overlaps the block map at %llu "
			      "(%llu bytes)", d->filename, (unsigned long long)s->offset_data,
			      (unsigned long long)s->offset_bmap, (unsigned long long)map_bytes);
	d->size = disk_size;
	return 0;
}

static int vdi_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int vdi_load_map(struct blk_dev *d)
{
	struct vdi_state *s = d->priv;
	uint64_t span = (uint64_t)s->block_size + s->block_extra;
	uint64_t slots = s->file_size > s->offset_data ? (s->file_size - s->offset_data) / span : 0;
	uint64_t *pairs = NULL;
	uint32_t count = 0;
	int rc = 0;

	if (s->nblocks == 0)
		return 0;
	s->map = kl_malloc((size_t)s->nblocks * 4);
	if (!s->map)
		return -ENOMEM;
	KL_TRY(kl_io_pread_full(d->file, s->offset_bmap, s->map, (size_t)s->nblocks * 4,
				"VDI block map"));
	for (uint32_t i = 0; i < s->nblocks; i++)
		s->map[i] = get_le32((const uint8_t *)s->map + 4 * (size_t)i);
	s->map_dirty = kl_calloc(1, (size_t)KL_DIV_ROUND_UP((uint64_t)s->nblocks * 4, 512ULL * 8));
	if (!s->map_dirty)
		return -ENOMEM;
	/* (data index, map index) pairs, sorted: two entries sharing a block sit together */
	for (uint32_t i = 0; i < s->nblocks; i++)
		count += vdi_allocated(s->map[i]);
	pairs = kl_malloc((size_t)KL_MAX(count, 1u) * sizeof(*pairs));
	if (!pairs)
		return -ENOMEM;
	count = 0;
	for (uint32_t i = 0; i < s->nblocks; i++) {
		uint32_t e = s->map[i];

		if (!vdi_allocated(e))
			continue;
		if (e >= slots) {
			rc = kl_err(-EUCLEAN, "%s: block map entry %u (virtual offset %llu) points to "
				    "data block %u at offset %llu, past the end of the file (%llu "
				    "bytes)", d->filename, i, (unsigned long long)i * s->block_size,
				    e, (unsigned long long)vdi_block_off(s, e),
				    (unsigned long long)s->file_size);
			goto out;
		}
		pairs[count++] = (uint64_t)e << 32 | i;
		if (e + 1 > s->next_index)
			s->next_index = e + 1;
	}
	qsort(pairs, count, sizeof(*pairs), vdi_cmp_u64);
	for (uint32_t k = 1; k < count; k++) {
		if (pairs[k] >> 32 != pairs[k - 1] >> 32)
			continue;
		rc = kl_err(-EUCLEAN, "%s: block map entries %u and %u both point to data block %u",
			    d->filename, (uint32_t)pairs[k - 1], (uint32_t)pairs[k],
			    (uint32_t)(pairs[k] >> 32));
		goto out;
	}
	if (count != s->nalloc)
		vdi_note(s, "header says %u blocks allocated, the block map has %u", s->nalloc,
			 count);
	s->nalloc = count;
out:
	kl_free(pairs);
	return rc;
}

#define VDI_MAX_CAND 16

/* A *.vdi file whose image UUID matches the link UUID. */
struct vdi_cand {
	char *ref;	/* relative to the child's directory */
	bool exact;	/* its modification UUID is the one the child recorded */
};

/* 1 when the VDI at path has image UUID link (exact: modification UUID too). */
static int vdi_peek(const char *path, const uint8_t *link, const uint8_t *modify, bool *exact)
{
	uint8_t h[VDI_HEADER_SECTOR];
	struct kl_file *f;
	ssize_t n;

	if (kl_io_open(path, KL_O_RDONLY, &f) < 0) {
		kl_err_clear();
		return 0;
	}
	n = kl_io_pread(f, 0, h, sizeof(h));
	kl_io_close(f);
	kl_err_clear();
	if (n < (ssize_t)sizeof(h) || get_le32(h + V_SIGNATURE) != VDI_SIGNATURE ||
	    memcmp(h + V_UUID_IMAGE, link, 16) != 0)
		return 0;
	*exact = memcmp(h + V_UUID_SNAP, modify, 16) == 0;
	return 1;
}

static bool vdi_name_is_vdi(const char *n)
{
	size_t l = strlen(n);

	return l > 4 && strcasecmp(n + l - 4, ".vdi") == 0;
}

static int vdi_cand_cmp(const void *a, const void *b)
{
	const struct vdi_cand *x = a, *y = b;

	if (x->exact != y->exact)
		return x->exact ? -1 : 1;
	return strcmp(x->ref, y->ref);
}

/* Add the *.vdi files in dir whose image UUID is link to c[] (refs: prefix + name). */
static int vdi_scan_dir(struct blk_dev *d, const char *dir, const char *prefix,
			const uint8_t *link, const uint8_t *modify, struct vdi_cand *c, int *nc)
{
	const char *self = strrchr(d->filename, '/');
	DIR *dh = opendir(dir);
	struct dirent *de;
	int seen = 0;

	self = self ? self + 1 : d->filename;
	if (!dh)
		return 0;
	while ((de = readdir(dh)) && seen < VDI_MAX_SCAN && *nc < VDI_MAX_CAND) {
		bool exact = false;
		char *p;

		if (!vdi_name_is_vdi(de->d_name) || (!*prefix && strcmp(de->d_name, self) == 0))
			continue;
		seen++;
		p = kl_asprintf("%s/%s", dir, de->d_name);
		if (!p) {
			closedir(dh);
			return -ENOMEM;
		}
		if (vdi_peek(p, link, modify, &exact)) {
			c[*nc].ref = kl_asprintf("%s%s", prefix, de->d_name);
			c[*nc].exact = exact;
			if (!c[*nc].ref) {
				kl_free(p);
				closedir(dh);
				return -ENOMEM;
			}
			(*nc)++;
		}
		kl_free(p);
	}
	closedir(dh);
	return 0;
}

/*
 * Candidates are tried best first: the one whose modification UUID is the
 * one recorded at link time, then by name. One that fails to open (a
 * damaged copy of the parent) is skipped; if all fail, the first failure
 * is the error.
 */
static int vdi_open_parent(struct blk_dev *d)
{
	struct vdi_state *s = d->priv;
	const uint8_t *link = s->header + V_UUID_LINK;
	struct vdi_cand c[VDI_MAX_CAND];
	char link_s[37], *dcopy, *dir, *up = NULL, *first_err = NULL;
	int nc = 0, rc, first_rc = 0;

	vdi_uuid_str(link, link_s);
	if (kl_uuid_is_null(link))
		return kl_err(-EUCLEAN, "%s: differencing VDI with a null parent (link) UUID",
			      d->filename);
	dcopy = kl_strdup(d->filename);
	if (!dcopy)
		return -ENOMEM;
	dir = dirname(dcopy);
	rc = vdi_scan_dir(d, dir, "", link, s->header + V_UUID_PARENT, c, &nc);
	if (rc == 0 && nc == 0 && (d->flags & BLK_OPEN_ALLOW_EXTERNAL)) {
		up = kl_asprintf("%s/..", dir);
		if (!up)
			rc = -ENOMEM;
		else
			rc = vdi_scan_dir(d, up, "../", link, s->header + V_UUID_PARENT, c, &nc);
	}
	if (rc < 0)
		goto out;
	if (nc == 0) {
		rc = kl_err(-ENOENT, "%s: parent not found: no *.vdi file in %s has image UUID %s "
			    "(the differencing image's link UUID; VirtualBox records the parent's "
			    "path only in its media registry)%s", d->filename, dir, link_s,
			    (d->flags & BLK_OPEN_ALLOW_EXTERNAL) ? " nor in the directory above"
								   : "; with --allow-external-backing "
								     "keel also looks in the directory above");
		goto out;
	}
	qsort(c, (size_t)nc, sizeof(c[0]), vdi_cand_cmp);
	rc = -ENOENT;
	for (int i = 0; i < nc; i++) {
		struct vdi_state *ps;

		rc = blk_open_parent(d, c[i].ref, "vdi");
		if (rc < 0) {
			if (!first_err) {
				first_rc = rc;
				first_err = kl_strdup(kl_errmsg());
			}
			continue;
		}
		ps = d->parent->priv;
		if (!kl_uuid_is_null(s->header + V_UUID_PARENT) &&
		    memcmp(ps->header + V_UUID_SNAP, s->header + V_UUID_PARENT, 16) != 0) {
			char a[37], b[37];

			vdi_uuid_str(s->header + V_UUID_PARENT, a);
			vdi_uuid_str(ps->header + V_UUID_SNAP, b);
			vdi_note(s, "parent %s was modified after this image was made (expected "
				 "modification UUID %s, found %s)", c[i].ref, a, b);
		}
		s->parent_ref = c[i].ref;
		c[i].ref = NULL;
		break;
	}
	if (rc < 0)
		rc = first_err ? kl_err(first_rc, "%s", first_err) : rc;
out:
	for (int i = 0; i < nc; i++)
		kl_free(c[i].ref);
	kl_free(first_err);
	kl_free(up);
	kl_free(dcopy);
	return rc;
}

static int vdi_open(struct blk_dev *d, const struct blk_open_opts *o)
{
	struct vdi_state *s = d->priv;
	ssize_t n;
	int rc;

	(void)o;
	KL_TRY(kl_io_size(d->file, &s->file_size));
	n = kl_io_pread(d->file, 0, s->header, sizeof(s->header));
	if (n < 0)
		return (int)n;
	rc = vdi_parse_header(d);
	if (rc == 0)
		rc = vdi_load_map(d);
	if (rc == 0 && s->type == VDI_TYPE_DIFF && !(d->flags & BLK_OPEN_NO_PARENT))
		rc = vdi_open_parent(d);
	if (rc < 0) {
		vdi_state_release(s);
		return rc;
	}
	d->cluster_size = s->block_size;
	d->write_align = 1;
	return 0;
}

static void vdi_close(struct blk_dev *d)
{
	vdi_state_release(d->priv);
}

/* ------------------------------------------------------------------ I/O */

static int vdi_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	struct vdi_state *s = d->priv;
	uint32_t blk = (uint32_t)(off / s->block_size);
	uint32_t ent = s->map[blk];
	uint64_t end = KL_MIN((uint64_t)(blk + 1) * s->block_size, d->size);
	int type;

	if (vdi_allocated(ent)) {
		e->type = BLK_DATA;
		e->len = end - off;
		e->host_off = vdi_block_off(s, ent) + off % s->block_size;
		return 0;
	}
	type = ent == VDI_FREE && s->type == VDI_TYPE_DIFF ? BLK_UNALLOC : BLK_ZERO;
	while (end < off + len && end < d->size) {
		uint32_t n = s->map[end / s->block_size];
		int t;

		if (vdi_allocated(n))
			break;
		t = n == VDI_FREE && s->type == VDI_TYPE_DIFF ? BLK_UNALLOC : BLK_ZERO;
		if (t != type)
			break;
		end = KL_MIN(end + s->block_size, d->size);
	}
	e->type = type;
	e->len = end - off;
	return 0;
}

static int vdi_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	struct vdi_state *s = d->priv;
	uint8_t *b = buf;

	while (len) {
		uint32_t blk = (uint32_t)(off / s->block_size);
		uint64_t in = off % s->block_size;
		size_t n = (size_t)KL_MIN((uint64_t)len, s->block_size - in);
		uint32_t ent = s->map[blk];

		if (vdi_allocated(ent))
			KL_TRY(kl_io_pread_full(d->file, vdi_block_off(s, ent) + in, b, n,
						"VDI data block"));
		else if (ent == VDI_FREE && s->type == VDI_TYPE_DIFF)
			KL_TRY(blk_read_below(d, off, b, n));
		else
			memset(b, 0, n);
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* Mark a map entry changed; flush writes it after syncing the data it points to. */
static void vdi_map_dirty(struct vdi_state *s, uint32_t blk)
{
	uint32_t sec = blk / 128;

	s->map_dirty[sec / 8] |= (uint8_t)(1u << (sec % 8));
	s->meta_dirty = true;
}

/*
 * Allocate a data block for blk and write [in, in+len) into it. The rest of
 * the block is zeros, or the parent's data when a differencing image's
 * entry was never allocated. The map entry and blocks_allocated are written
 * by the next flush after a sync of the data; a crash before that leaves a
 * block no entry points to, which the next open reuses.
 */
static int vdi_alloc_write(struct blk_dev *d, uint32_t blk, uint64_t in, const uint8_t *buf,
			   size_t len)
{
	struct vdi_state *s = d->priv;
	uint32_t index = s->next_index;
	uint64_t boff, bend;
	bool from_parent = s->map[blk] == VDI_FREE && s->type == VDI_TYPE_DIFF && d->parent;
	bool whole = in == 0 && len == s->block_size;

	if (index >= s->nblocks)
		return kl_err(-ENOSPC, "%s: no free VDI data block index below %u (the block map "
			      "uses indexes up to %u)", d->filename, s->nblocks, index);
	boff = vdi_block_off(s, index);
	bend = boff + s->block_size;
	if (whole) {
		KL_TRY(kl_io_pwrite(d->file, boff, buf, len));
	} else if (!from_parent && boff - s->block_extra >= s->file_size) {
		/* fresh space past EOF reads as zeros: write only the data, keep it sparse */
		KL_TRY(kl_io_pwrite(d->file, boff + in, buf, len));
		if (bend > s->file_size && boff + in + len < bend)
			KL_TRY(kl_io_truncate(d->file, bend));
	} else {
		uint64_t vstart = (uint64_t)blk * s->block_size;

		if (!s->blkbuf && !(s->blkbuf = kl_malloc(s->block_size)))
			return -ENOMEM;
		if (from_parent)
			KL_TRY(blk_read_below(d, vstart, s->blkbuf, s->block_size));
		else
			memset(s->blkbuf, 0, s->block_size);
		memcpy(s->blkbuf + in, buf, len);
		if (s->block_extra) {
			uint8_t *z = kl_calloc(1, s->block_extra);
			int rc;

			if (!z)
				return -ENOMEM;
			rc = kl_io_pwrite(d->file, boff - s->block_extra, z, s->block_extra);
			kl_free(z);
			KL_TRY(rc);
		}
		KL_TRY(kl_io_pwrite(d->file, boff, s->blkbuf, s->block_size));
	}
	s->file_size = KL_MAX(s->file_size, bend);
	KL_TRY(kl_io_event("vdi.block_written"));
	s->map[blk] = index;
	vdi_map_dirty(s, blk);
	s->next_index = index + 1;
	s->nalloc++;
	return 0;
}

static int vdi_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len)
{
	struct vdi_state *s = d->priv;
	const uint8_t *b = buf;

	while (len) {
		uint32_t blk = (uint32_t)(off / s->block_size);
		uint64_t in = off % s->block_size;
		size_t n = (size_t)KL_MIN((uint64_t)len, s->block_size - in);

		if (vdi_allocated(s->map[blk]))
			KL_TRY(kl_io_pwrite(d->file, vdi_block_off(s, s->map[blk]) + in, b, n));
		else
			KL_TRY(vdi_alloc_write(d, blk, in, b, n));
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

static int vdi_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags)
{
	struct vdi_state *s = d->priv;
	static const uint8_t zero[65536];

	(void)flags;
	while (len) {
		uint32_t blk = (uint32_t)(off / s->block_size);
		uint64_t in = off % s->block_size;
		uint64_t n = KL_MIN(len, s->block_size - in);
		uint32_t ent = s->map[blk];

		if (ent == VDI_ZERO || (ent == VDI_FREE && s->type != VDI_TYPE_DIFF)) {
			/* already reads as zeros */
		} else if (!vdi_allocated(ent) &&
			   (n == s->block_size || off + n == d->size) && in == 0) {
			/* a whole block over a parent: mark it zero, nothing to write */
			s->map[blk] = VDI_ZERO;
			vdi_map_dirty(s, blk);
		} else {
			for (uint64_t done = 0; done < n;) {
				size_t k = (size_t)KL_MIN(n - done, (uint64_t)sizeof(zero));

				KL_TRY(vdi_pwrite(d, off + done, zero, k));
				done += k;
			}
		}
		off += n;
		len -= n;
	}
	return 0;
}

/*
 * Metadata after data, and blocks_allocated before the map entries that
 * use new blocks: VirtualBox and qemu put their next block at index
 * blocks_allocated, so a count below a block in use would have them
 * overwrite it. Written first and synced, the count can only run ahead of
 * the map after a crash (blocks no entry uses: leaks keel check reports).
 * It is the next free index (next_index), which is also the number of
 * entries unless a crash left a hole.
 */
static int vdi_write_count(struct blk_dev *d, uint32_t count)
{
	struct vdi_state *s = d->priv;
	uint8_t cnt[4];

	if (get_le32(s->header + V_ALLOCATED) == count)
		return 0;
	put_le32(cnt, count);
	KL_TRY(kl_io_pwrite(d->file, V_ALLOCATED, cnt, 4));
	put_le32(s->header + V_ALLOCATED, count);
	return 0;
}

static int vdi_flush(struct blk_dev *d)
{
	struct vdi_state *s = d->priv;
	uint64_t nsec = KL_DIV_ROUND_UP((uint64_t)s->nblocks * 4, 512);
	uint32_t count = KL_MAX(s->nalloc, s->next_index);
	uint8_t buf[512];

	if (!s->meta_dirty)
		return kl_io_sync(d->file);
	KL_TRY(kl_io_sync(d->file));
	KL_TRY(kl_io_event("vdi.data_synced"));
	if (count > get_le32(s->header + V_ALLOCATED)) {
		KL_TRY(vdi_write_count(d, count));
		KL_TRY(kl_io_sync(d->file));
		KL_TRY(kl_io_event("vdi.count_synced"));
	}
	for (uint64_t k = 0; k < nsec; k++) {
		uint32_t first = (uint32_t)(k * 128);
		uint32_t n = KL_MIN(s->nblocks - first, 128u);

		if (!(s->map_dirty[k / 8] & (1u << (k % 8))))
			continue;
		for (uint32_t i = 0; i < n; i++)
			put_le32(buf + 4 * i, s->map[first + i]);
		KL_TRY(kl_io_pwrite(d->file, s->offset_bmap + (uint64_t)first * 4, buf,
				    (size_t)n * 4));
		s->map_dirty[k / 8] &= (uint8_t)~(1u << (k % 8));
	}
	KL_TRY(vdi_write_count(d, count));
	s->meta_dirty = false;
	return kl_io_sync(d->file);
}

/* ------------------------------------------------------------------ info */

static int vdi_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Data blocks from..to-1 are in the file but in no map entry. */
static void vdi_check_gap(struct blk_dev *d, struct blk_check_report *r, uint64_t from,
			  uint64_t to)
{
	struct vdi_state *s = d->priv;
	uint64_t off = s->offset_data + from * ((uint64_t)s->block_size + s->block_extra);

	if (from >= to)
		return;
	if (to - from == 1)
		blk_check_msg(r, "%s: data block %llu at offset %llu is not in the block map "
			      "(leaked)", d->filename, (unsigned long long)from,
			      (unsigned long long)off);
	else
		blk_check_msg(r, "%s: data blocks %llu-%llu from offset %llu are not in the block "
			      "map (leaked)", d->filename, (unsigned long long)from,
			      (unsigned long long)(to - 1), (unsigned long long)off);
	r->leaks += to - from;
}

/*
 * keel check. Opening already proved the structure (every map entry inside
 * the file, no data block named by two entries), so what is left is
 * bookkeeping. blocks_allocated is where VirtualBox and qemu put their next
 * block: below a block in use it is a corruption (their next write lands
 * on it); above the blocks in use, like data blocks no entry points to,
 * it is a leak (an allocation cut off before its map entry was written).
 * VirtualBox keeps the data area dense (discard and compaction move the
 * last block into the hole), so any unreferenced block is a leak. -r all
 * raises a low count; -r leaks (and all) gives back the blocks after the
 * last one in use. Holes between blocks in use stay (reported).
 */
static int vdi_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	struct vdi_state *s = d->priv;
	uint64_t span = (uint64_t)s->block_size + s->block_extra;
	uint64_t slots = s->file_size > s->offset_data ? (s->file_size - s->offset_data) / span : 0;
	uint32_t hdr = get_le32(s->header + V_ALLOCATED);
	uint64_t next = 0, need;
	bool fix_count;
	uint32_t *used;
	size_t n = 0;
	int rc = 0;

	r->total_clusters = s->nblocks;
	used = kl_malloc((size_t)KL_MAX(s->nblocks, 1u) * sizeof(*used));
	if (!used)
		return -ENOMEM;
	for (uint32_t i = 0; i < s->nblocks; i++)
		if (vdi_allocated(s->map[i]))
			used[n++] = s->map[i];
	r->allocated_clusters = n;
	/* open proved every entry unique and below slots: the gaps between them leak */
	qsort(used, n, sizeof(*used), vdi_cmp_u32);
	for (size_t k = 0; k < n; k++) {
		vdi_check_gap(d, r, next, used[k]);
		next = (uint64_t)used[k] + 1;
	}
	need = next; /* blocks 0..need-1 hold the last block in use */
	kl_free(used);
	if (hdr < need) {
		blk_check_msg(r, "%s: the header (offset 0x184) says %u blocks are allocated, but "
			      "data block %llu is in use: VirtualBox and qemu would put their next "
			      "block over it", d->filename, hdr, (unsigned long long)(need - 1));
		r->corruptions++;
	}
	if (slots > need)
		vdi_check_gap(d, r, need, slots);
	if (hdr > KL_MAX(slots, need)) {
		blk_check_msg(r, "%s: the header (offset 0x184) counts %u blocks, the file holds "
			      "%llu (counted but unused: leaked)", d->filename, hdr,
			      (unsigned long long)slots);
		r->leaks += hdr - KL_MAX(slots, need);
	}
	if (!(flags & BLK_CHECK_REPAIR_LEAKS))
		return 0;
	/* a count below a used block is a corruption: only -r all raises it */
	fix_count = hdr > need ||
		    (hdr < need && (flags & BLK_CHECK_REPAIR_ALL) == BLK_CHECK_REPAIR_ALL);
	if (slots > need) {
		rc = kl_io_truncate(d->file, s->offset_data + need * span);
		if (rc == 0)
			s->file_size = s->offset_data + need * span;
	}
	if (rc == 0 && fix_count)
		rc = vdi_write_count(d, (uint32_t)need);
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc < 0)
		return rc;
	s->next_index = (uint32_t)need;
	r->repaired += (slots > need ? slots - need : 0) +
		       (fix_count && hdr > KL_MAX(slots, need) ? hdr - KL_MAX(slots, need) : 0) +
		       (fix_count && hdr < need);
	return 0;
}

static int vdi_info(struct blk_dev *d, struct blk_info *out)
{
	struct vdi_state *s = d->priv;
	const uint8_t *h = s->header;
	char u[37], desc[V_DESCRIPTION_LEN + 1];
	uint32_t ver = get_le32(h + V_VERSION);

	out->subformat = kl_strdup(s->type == VDI_TYPE_FIXED ? "fixed" :
				   s->type == VDI_TYPE_NORMAL ? "dynamic" : "differencing");
	if (!out->subformat)
		return -ENOMEM;
	vdi_uuid_swap(h + V_UUID_IMAGE, out->uuid);
	out->has_uuid = true;
	if (s->type == VDI_TYPE_DIFF) {
		char link[37];

		vdi_uuid_str(h + V_UUID_LINK, link);
		out->parent = s->parent_ref ? kl_strdup(s->parent_ref)
					    : kl_asprintf("{%s} (found by UUID)", link);
		out->parent_format = kl_strdup("vdi");
		if (!out->parent || !out->parent_format)
			return -ENOMEM;
	}
	KL_TRY(blk_info_add_kv(out, "version", "%u.%u", ver >> 16, ver & 0xffff));
	KL_TRY(blk_info_add_kv(out, "header size", "%u", s->header_size));
	vdi_uuid_str(h + V_UUID_SNAP, u);
	KL_TRY(blk_info_add_kv(out, "modification uuid", "%s", u));
	if (s->type == VDI_TYPE_DIFF) {
		vdi_uuid_str(h + V_UUID_LINK, u);
		KL_TRY(blk_info_add_kv(out, "parent uuid", "%s", u));
		vdi_uuid_str(h + V_UUID_PARENT, u);
		KL_TRY(blk_info_add_kv(out, "parent modification uuid", "%s", u));
	}
	KL_TRY(blk_info_add_kv(out, "block size", "%u", s->block_size));
	if (s->block_extra)
		KL_TRY(blk_info_add_kv(out, "block extra", "%u", s->block_extra));
	KL_TRY(blk_info_add_kv(out, "blocks allocated", "%u of %u", s->nalloc, s->nblocks));
	for (int i = 0; i < V_DESCRIPTION_LEN; i++) {
		uint8_t c = h[V_DESCRIPTION + i];

		desc[i] = (char)(c >= 0x20 && c < 0x7f ? c : c ? '?' : 0);
		if (!c)
			break;
	}
	desc[V_DESCRIPTION_LEN] = '\0';
	if (desc[0])
		KL_TRY(blk_info_add_kv(out, "description", "%s", desc));
	if (s->note)
		KL_TRY(blk_info_add_kv(out, "warning", "%s", s->note));
	return 0;
}

static int vdi_identity(struct blk_dev *d, struct blk_identity *id)
{
	struct vdi_state *s = d->priv;

	vdi_uuid_swap(s->header + V_UUID_IMAGE, id->uuid);
	id->valid = BLK_ID_UUID;
	return 0;
}

/* ------------------------------------------------------------------ create */

static int vdi_create(const char *path, const struct blk_create_opts *o)
{
	const char *sub = kl_opts_get(o->opts, "subformat");
	bool stat_on = false, stat_found, fixed;
	uint8_t h[VDI_HEADER_SECTOR], u[16];
	uint64_t size = KL_ALIGN_UP(o->size, 512);
	uint64_t nblocks, map_bytes, offset_data;
	struct kl_file *f = NULL;
	uint8_t *chunk = NULL;
	int rc;

	KL_TRY(kl_opts_get_bool(o->opts, "static", &stat_on, &stat_found));
	if (sub && strcmp(sub, "fixed") != 0 && strcmp(sub, "dynamic") != 0)
		return kl_err(-EINVAL, "vdi: subformat must be dynamic or fixed, not '%s'", sub);
	fixed = sub ? strcmp(sub, "fixed") == 0 : stat_on;
	if (sub && stat_found && fixed != stat_on)
		return kl_err(-EINVAL, "vdi: subformat=%s conflicts with static=%s", sub,
			      stat_on ? "on" : "off");
	if (o->parent && fixed)
		return kl_err(-EINVAL, "vdi: a differencing image cannot be fixed");
	nblocks = KL_DIV_ROUND_UP(size, (uint64_t)VDI_BLOCK_SIZE);
	if (nblocks > VDI_MAX_BLOCKS)
		return kl_err(-EFBIG, "vdi: %llu bytes is larger than the VDI maximum of %u MiB",
			      (unsigned long long)size, VDI_MAX_BLOCKS);
	map_bytes = nblocks * 4;
	offset_data = KL_ALIGN_UP(VDI_HEADER_SECTOR + map_bytes, (uint64_t)VDI_DATA_ALIGN);
	if (offset_data > UINT32_MAX)
		return kl_err(-EFBIG, "vdi: block map too large for a 32-bit data offset");

	memset(h, 0, sizeof(h));
	memcpy(h + V_TEXT, VDI_TEXT, sizeof(VDI_TEXT) - 1);
	put_le32(h + V_SIGNATURE, VDI_SIGNATURE);
	put_le32(h + V_VERSION, VDI_VERSION_1_1);
	put_le32(h + V_HEADER_SIZE, VDI_HEADER_V1PLUS);
	put_le32(h + V_TYPE, o->parent ? VDI_TYPE_DIFF : fixed ? VDI_TYPE_FIXED : VDI_TYPE_NORMAL);
	put_le32(h + V_OFFSET_BMAP, VDI_HEADER_SECTOR);
	put_le32(h + V_OFFSET_DATA, (uint32_t)offset_data);
	put_le32(h + V_SECTOR_SIZE, 512);
	put_le64(h + V_DISK_SIZE, size);
	put_le32(h + V_BLOCK_SIZE, VDI_BLOCK_SIZE);
	put_le32(h + V_BLOCKS, (uint32_t)nblocks);
	put_le32(h + V_ALLOCATED, fixed ? (uint32_t)nblocks : 0);
	kl_uuid_generate(u);
	vdi_uuid_swap(u, h + V_UUID_IMAGE);
	kl_uuid_generate(u);
	vdi_uuid_swap(u, h + V_UUID_SNAP);
	if (o->parent) {
		struct blk_open_opts po = { .format = "vdi",
					    .flags = o->flags & BLK_OPEN_ALLOW_EXTERNAL };
		struct blk_dev *p = NULL;
		struct vdi_state *ps;
		char *dcopy = NULL, *ppath;

		if (o->parent_format && strcmp(o->parent_format, "vdi") != 0)
			return kl_err(-ENOTSUP, "%s: a differencing VDI needs a VDI parent, not %s",
				      path, o->parent_format);
		if (o->parent[0] == '/') {
			ppath = kl_strdup(o->parent);
		} else {
			dcopy = kl_strdup(path);
			ppath = dcopy ? kl_asprintf("%s/%s", dirname(dcopy), o->parent) : NULL;
		}
		kl_free(dcopy);
		if (!ppath)
			return -ENOMEM;
		rc = blk_open(ppath, &po, &p);
		kl_free(ppath);
		if (rc < 0)
			return kl_err_prefix(rc, "%s: parent '%s'", path, o->parent);
		ps = p->priv;
		if (size != KL_ALIGN_UP(blk_size(p), 512)) {
			blk_close(p);
			return kl_err(-EINVAL, "vdi: a differencing image has its parent's size (%llu "
				      "bytes), not %llu", (unsigned long long)blk_size(p),
				      (unsigned long long)size);
		}
		put_le64(h + V_DISK_SIZE, get_le64(ps->header + V_DISK_SIZE));
		memcpy(h + V_UUID_LINK, ps->header + V_UUID_IMAGE, 16);
		memcpy(h + V_UUID_PARENT, ps->header + V_UUID_SNAP, 16);
		blk_close(p);
	}

	KL_TRY(kl_io_open(path, blk_create_kl_flags(o), &f));
	rc = kl_io_pwrite(f, 0, h, sizeof(h));
	if (rc < 0)
		goto out;
	chunk = kl_malloc(65536);
	if (!chunk) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < nblocks && rc == 0;) {
		uint64_t n = KL_MIN(nblocks - i, (uint64_t)65536 / 4);

		for (uint64_t k = 0; k < n; k++)
			put_le32(chunk + 4 * k, fixed ? (uint32_t)(i + k) : VDI_FREE);
		rc = kl_io_pwrite(f, VDI_HEADER_SECTOR + i * 4, chunk, (size_t)n * 4);
		i += n;
	}
	if (rc == 0)
		rc = kl_io_truncate(f, fixed ? offset_data + nblocks * VDI_BLOCK_SIZE : offset_data);
	if (rc == 0)
		rc = kl_io_sync(f);
out:
	kl_free(chunk);
	kl_io_close(f);
	if (rc < 0)
		kl_io_unlink(path);
	return rc;
}

const struct blk_driver blk_vdi_driver = {
	.name = "vdi",
	.ext = "vdi",
	.desc = "VirtualBox VDI 1.1: dynamic, fixed, differencing",
	.create_help =
		"  subformat=dynamic|fixed    sparse or fully allocated (dynamic)\n"
		"  static=on|off              qemu-img's name: on means fixed (off)\n",
	.instance_size = sizeof(struct vdi_state),
	.flags = BLK_DRV_CAN_CREATE | BLK_DRV_HAS_PARENT,
	.probe = vdi_probe,
	.open = vdi_open,
	.create = vdi_create,
	.pread = vdi_pread,
	.pwrite = vdi_pwrite,
	.pwrite_zeroes = vdi_pwrite_zeroes,
	.block_status = vdi_block_status,
	.flush = vdi_flush,
	.close = vdi_close,
	.info = vdi_info,
	.check = vdi_check,
	.identity = vdi_identity,
};
