/*
 * tests/unit/format/test_vhdx.c - the VHDX driver: header and region table
 * selection, metadata, create/write/read/reopen for both sector sizes,
 * differencing chains with sector bitmaps, log replay from a hand-built log
 * (in memory on a read-only open, to the file on a writable one), and bad
 * input. Layout of files keel creates (format/vhdx.c): log at 1 MiB,
 * metadata at 1 MiB + log size, BAT 1 MiB later, payload after the BAT.
 */
#include "tests/common/testutil.h"
#include "format/vhdx.h"
#include "snapshot/snapshot.h"

#include <string.h>

#define MiB (1024ULL * 1024)
#define LOG_OFF MiB
#define META_OFF (2 * MiB)
#define BAT_OFF (3 * MiB)

/* ------------------------------------------------------------------ file helpers */

static void fpatch(const char *path, uint64_t off, const void *buf, size_t len)
{
	struct kl_file *f;

	ck_assert_ok(kl_io_open(path, KL_O_RDWR, &f));
	ck_assert_ok(kl_io_pwrite(f, off, buf, len));
	kl_io_close(f);
}

static void fread_at(const char *path, uint64_t off, void *buf, size_t len)
{
	struct kl_file *f;

	ck_assert_ok(kl_io_open(path, KL_O_RDONLY, &f));
	ck_assert_int_ge(kl_io_pread(f, off, buf, len), 0);
	kl_io_close(f);
}

static void patch_le64(const char *path, uint64_t off, uint64_t v)
{
	uint8_t b[8];

	put_le64(b, v);
	fpatch(path, off, b, 8);
}

static void patch_le32(const char *path, uint64_t off, uint32_t v)
{
	uint8_t b[4];

	put_le32(b, v);
	fpatch(path, off, b, 4);
}

static uint64_t read_le64(const char *path, uint64_t off)
{
	uint8_t b[8];

	fread_at(path, off, b, 8);
	return get_le64(b);
}

/* Recompute the CRC-32C of the structure of len bytes at off (checksum at +4). */
static void fix_crc(const char *path, uint64_t off, size_t len)
{
	uint8_t *b = kl_malloc(len);

	fread_at(path, off, b, len);
	put_le32(b + 4, 0);
	put_le32(b + 4, kl_crc32c(0, b, len));
	fpatch(path, off, b, len);
	kl_free(b);
}

/* Whole file into memory (images in these tests are a few MiB). */
static uint8_t *slurp(const char *path, uint64_t *size)
{
	struct kl_file *f;
	uint8_t *b;

	ck_assert_ok(kl_io_open(path, KL_O_RDONLY, &f));
	ck_assert_ok(kl_io_size(f, size));
	b = kl_malloc(*size ? *size : 1);
	ck_assert_int_ge(kl_io_pread(f, 0, b, *size), 0);
	kl_io_close(f);
	return b;
}

static void create(const char *path, uint64_t size, const char *opts)
{
	struct kl_opts *o = NULL;
	struct blk_create_opts co = { .size = size };

	if (opts)
		ck_assert_ok(kl_opts_parse(opts, &o));
	co.opts = o;
	ck_assert_ok(blk_create(path, "vhdx", &co));
	kl_opts_free(o);
}

static struct blk_dev *open_img(const char *path, bool rw)
{
	struct blk_open_opts o = { .format = "vhdx", .flags = rw ? BLK_OPEN_RDWR : 0 };
	struct blk_dev *d = NULL;

	ck_assert_ok(blk_open(path, &o, &d));
	return d;
}

static int try_open(const char *path, bool rw)
{
	struct blk_open_opts o = { .format = "vhdx", .flags = rw ? BLK_OPEN_RDWR : 0 };
	struct blk_dev *d = NULL;
	int rc = blk_open(path, &o, &d);

	blk_close(d);
	return rc;
}

static void write_pattern(struct blk_dev *d, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *b = kl_malloc(len);

	tu_fill(b, len, seed, off);
	ck_assert_ok(blk_pwrite(d, off, b, len));
	kl_free(b);
}

static void expect_pattern(struct blk_dev *d, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *b = kl_malloc(len), *w = kl_malloc(len);

	tu_fill(w, len, seed, off);
	ck_assert_ok(blk_pread(d, off, b, len));
	ck_assert_msg(memcmp(b, w, len) == 0, "pattern %llu at %llu differs",
		      (unsigned long long)seed, (unsigned long long)off);
	kl_free(b);
	kl_free(w);
}

static void expect_fill(struct blk_dev *d, uint64_t off, size_t len, uint8_t v)
{
	uint8_t *b = kl_malloc(len);

	size_t i = 0;

	ck_assert_ok(blk_pread(d, off, b, len));
	/* one assertion, not one per byte: Check reports every passing assertion */
	while (i < len && b[i] == v)
		i++;
	ck_assert_msg(i == len, "byte %llu is %u, expected %u", (unsigned long long)(off + i),
		      i < len ? b[i] : 0, v);
	kl_free(b);
}

static const char *info_kv(const struct blk_info *in, const char *key)
{
	for (size_t i = 0; i < in->nextra; i++)
		if (strcmp(in->extra[i].key, key) == 0)
			return in->extra[i].val;
	return NULL;
}

/* ------------------------------------------------------------------ GUIDs, probe */

START_TEST(guid_byte_order)
{
	uint8_t g[16];
	char t[39];
	/* BAT region GUID as stored on disk (observed in qemu-img output) */
	static const uint8_t bat[16] = { 0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
					 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };

	ck_assert_ok(vhdx_guid_parse(VHDX_GUID_BAT, g));
	ck_assert(memcmp(g, bat, 16) == 0);
	vhdx_guid_format(g, t, true);
	ck_assert_str_eq(t, "{2dc27766-f623-4200-9d64-115e9bfd4a08}");
	ck_assert_ok(vhdx_guid_parse(t, g));
	ck_assert(memcmp(g, bat, 16) == 0);
	ck_assert_int_lt(vhdx_guid_parse("{2dc27766-f623-4200-9d64-115e9bfd4a0}", g), 0);
	ck_assert_int_lt(vhdx_guid_parse("2dc27766+f623-4200-9d64-115e9bfd4a08", g), 0);
}
END_TEST

START_TEST(probe_and_layout)
{
	const char *p = tu_path("l.vhdx");
	const struct blk_driver *drv;
	uint8_t b[128];

	create(p, 100 * MiB, "block_size=1M");
	ck_assert_ok(blk_probe_file(p, &drv));
	ck_assert_str_eq(blk_driver_name(drv), "vhdx");
	fread_at(p, 0, b, 8);
	ck_assert(memcmp(b, "vhdxfile", 8) == 0);
	/* header signature, version 1, log at 1 MiB, LogGuid zero */
	fread_at(p, 64 * 1024, b, 128);
	ck_assert_uint_eq(get_le32(b), 0x64616568);
	ck_assert_uint_eq(get_le16(b + 66), 1);
	ck_assert(kl_is_zero(b + 48, 16));
	ck_assert_uint_eq(read_le64(p, 64 * 1024 + 72), LOG_OFF);
	/* region table: BAT and metadata, Required set */
	fread_at(p, 192 * 1024, b, 128);
	ck_assert_uint_eq(get_le32(b), 0x69676572);
	ck_assert_uint_eq(get_le32(b + 8), 2);
	ck_assert_uint_eq(get_le64(b + 32), BAT_OFF);
	ck_assert_uint_eq(get_le32(b + 44), 1);
	ck_assert_uint_eq(get_le64(b + 64), META_OFF);
	fread_at(p, META_OFF, b, 16);
	ck_assert(memcmp(b, "metadata", 8) == 0);
	ck_assert_uint_eq(get_le16(b + 10), 5);
}
END_TEST

/* ------------------------------------------------------------------ create / read / write */

static void roundtrip(uint32_t lss, const char *opts)
{
	const char *p = tu_path("rt.vhdx");
	uint64_t size = 40 * MiB + 3 * lss;
	struct blk_dev *d;
	struct blk_info in;
	struct blk_extent e;
	char buf[16];

	create(p, size, opts);
	d = open_img(p, true);
	ck_assert_uint_eq(blk_size(d), size);
	ck_assert_uint_eq(d->write_align, lss);
	write_pattern(d, 0, 3 * MiB, 1);
	write_pattern(d, 9 * MiB + lss, 2 * lss, 2);  /* inside a block */
	write_pattern(d, size - 5 * lss, 5 * lss, 3); /* the tail */
	write_pattern(d, 20 * MiB + 100, 1000, 4);    /* unaligned: core read-modify-write */
	ck_assert_ok(blk_flush(d));
	blk_close(d);

	d = open_img(p, false);
	expect_pattern(d, 0, 3 * MiB, 1);
	expect_pattern(d, 9 * MiB + lss, 2 * lss, 2);
	expect_fill(d, 9 * MiB, lss, 0);
	expect_pattern(d, size - 5 * lss, 5 * lss, 3);
	expect_pattern(d, 20 * MiB + 100, 1000, 4);
	expect_fill(d, 20 * MiB, 100, 0);
	expect_fill(d, 30 * MiB, MiB, 0);
	ck_assert_ok(blk_block_status(d, 0, size, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert_ok(blk_info(d, &in));
	snprintf(buf, sizeof(buf), "%u", lss);
	ck_assert_str_eq(info_kv(&in, "logical sector size"), buf);
	ck_assert_str_eq(info_kv(&in, "log"), "empty");
	blk_info_release(&in);
	blk_close(d);
}

START_TEST(roundtrip_512)
{
	roundtrip(512, "block_size=1M");
}
END_TEST

START_TEST(roundtrip_4096)
{
	roundtrip(4096, "block_size=2M,logical_sector_size=4096");
}
END_TEST

START_TEST(roundtrip_fixed_32m)
{
	roundtrip(512, "subformat=fixed");
}
END_TEST

START_TEST(bat_interleave_4096)
{
	/* 4096-byte sectors, 1 MiB blocks: chunk ratio 32768, block 32768 at entry 32769 */
	const char *p = tu_path("i.vhdx");
	uint64_t size = 40ULL << 30, bat_len;
	struct blk_dev *d;
	struct blk_extent e;

	create(p, size, "block_size=1M,logical_sector_size=4096");
	bat_len = KL_ALIGN_UP((40960 + 1) * 8, MiB);
	d = open_img(p, true);
	write_pattern(d, 32768 * MiB, 8192, 7);
	write_pattern(d, 32767 * MiB, 4096, 8);
	blk_close(d);
	ck_assert_uint_eq(read_le64(p, BAT_OFF + 32767 * 8) & 7, VHDX_PAYLOAD_FULLY_PRESENT);
	ck_assert_uint_eq(read_le64(p, BAT_OFF + 32768 * 8), 0); /* sector bitmap entry */
	ck_assert_uint_eq(read_le64(p, BAT_OFF + 32769 * 8),
			  (BAT_OFF + bat_len) | VHDX_PAYLOAD_FULLY_PRESENT);
	d = open_img(p, false);
	expect_pattern(d, 32768 * MiB, 8192, 7);
	expect_pattern(d, 32767 * MiB, 4096, 8);
	ck_assert_ok(blk_block_status(d, 32768 * MiB, MiB, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert_uint_eq(e.host_off, BAT_OFF + bat_len);
	ck_assert_ok(blk_block_status(d, 0, size, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	blk_close(d);
}
END_TEST

START_TEST(fixed_and_block_state_zero)
{
	const char *f = tu_path("f.vhdx"), *z = tu_path("z.vhdx"), *y = tu_path("y.vhdx");
	uint64_t data_off = BAT_OFF + MiB;
	struct blk_dev *d;
	struct blk_info in;

	create(f, 3 * MiB, "subformat=fixed,block_size=1M");
	/* Hyper-V style: every payload block FULLY_PRESENT at its place */
	for (int i = 0; i < 3; i++)
		ck_assert_uint_eq(read_le64(f, BAT_OFF + 8 * (uint64_t)i),
				  (data_off + (uint64_t)i * MiB) | VHDX_PAYLOAD_FULLY_PRESENT);
	d = open_img(f, false);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.subformat, "fixed");
	blk_info_release(&in);
	expect_fill(d, 0, 3 * MiB, 0);
	blk_close(d);

	create(z, 3 * MiB, "subformat=fixed,block_size=1M,block_state_zero=on");
	ck_assert_uint_eq(read_le64(z, BAT_OFF + 8), (data_off + MiB) | VHDX_PAYLOAD_ZERO);
	/* a write to a ZERO block of a fixed disk reuses the block's own space */
	d = open_img(z, true);
	write_pattern(d, MiB + 4096, 4096, 9);
	blk_close(d);
	ck_assert_uint_eq(read_le64(z, BAT_OFF + 8), (data_off + MiB) | VHDX_PAYLOAD_FULLY_PRESENT);
	d = open_img(z, false);
	expect_fill(d, MiB, 4096, 0);
	expect_pattern(d, MiB + 4096, 4096, 9);
	expect_fill(d, MiB + 8192, MiB - 8192, 0);
	blk_close(d);

	create(y, 3 * MiB, "block_size=1M,block_state_zero=on");
	ck_assert_uint_eq(read_le64(y, BAT_OFF + 16), VHDX_PAYLOAD_ZERO);
	d = open_img(y, false);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.subformat, "dynamic");
	blk_info_release(&in);
	blk_close(d);
}
END_TEST

START_TEST(write_zeroes_and_status)
{
	const char *p = tu_path("wz.vhdx");
	struct blk_dev *d;
	struct blk_extent e;

	create(p, 8 * MiB, "block_size=1M");
	d = open_img(p, true);
	write_pattern(d, 0, 2 * MiB, 11);
	ck_assert_ok(blk_pwrite_zeroes(d, 4096, 8192, 0));
	ck_assert_ok(blk_pwrite_zeroes(d, 4 * MiB, MiB, 0)); /* unallocated: no-op */
	blk_close(d);
	d = open_img(p, false);
	expect_pattern(d, 0, 4096, 11);
	expect_fill(d, 4096, 8192, 0);
	expect_pattern(d, 12288, 2 * MiB - 12288, 11);
	/* two contiguous blocks merge into one DATA extent with its host offset */
	ck_assert_ok(blk_block_status(d, 0, 8 * MiB, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert_uint_eq(e.len, 2 * MiB);
	ck_assert_uint_eq(e.host_off, BAT_OFF + MiB);
	ck_assert_ok(blk_block_status(d, 2 * MiB, 6 * MiB, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	ck_assert_uint_eq(e.len, 6 * MiB);
	blk_close(d);
}
END_TEST

/* ------------------------------------------------------------------ headers, GUIDs */

START_TEST(headers_sequence_and_guids)
{
	const char *p = tu_path("h.vhdx");
	uint8_t h1[4096], h2[4096], fwg[16], dwg[16];
	uint64_t s1, s2;
	struct blk_dev *d;

	create(p, 4 * MiB, "block_size=1M");
	fread_at(p, 64 * 1024, h1, 4096);
	memcpy(fwg, h1 + 16, 16);
	memcpy(dwg, h1 + 32, 16);
	/* a writable open updates both headers with a new FileWriteGuid only */
	d = open_img(p, true);
	blk_close(d);
	fread_at(p, 64 * 1024, h1, 4096);
	fread_at(p, 128 * 1024, h2, 4096);
	s1 = get_le64(h1 + 8);
	s2 = get_le64(h2 + 8);
	ck_assert_uint_eq(KL_MAX(s1, s2), 4);
	ck_assert_uint_eq(s1 + s2, 7);
	ck_assert(memcmp(h1 + 16, h2 + 16, 48) == 0);
	ck_assert(memcmp(h1 + 16, fwg, 16) != 0);
	ck_assert(memcmp(h1 + 32, dwg, 16) == 0);
	/* a write changes DataWriteGuid, once per session */
	d = open_img(p, true);
	write_pattern(d, 0, 4096, 1);
	write_pattern(d, MiB, 4096, 2);
	blk_close(d);
	fread_at(p, 64 * 1024, h1, 4096);
	fread_at(p, 128 * 1024, h2, 4096);
	ck_assert_uint_eq(KL_MAX(get_le64(h1 + 8), get_le64(h2 + 8)), 8);
	ck_assert(memcmp(h1 + 32, dwg, 16) != 0);
	ck_assert(memcmp(h1 + 32, h2 + 32, 16) == 0);
	/* a read-only open changes nothing */
	d = open_img(p, false);
	expect_pattern(d, MiB, 4096, 2);
	blk_close(d);
	fread_at(p, 64 * 1024, h2, 4096);
	ck_assert(memcmp(h1, h2, 4096) == 0);
}
END_TEST

START_TEST(header_selection)
{
	const char *p = tu_path("hs.vhdx");
	uint8_t h[4096];
	struct blk_dev *d;

	create(p, 4 * MiB, "block_size=1M");
	d = open_img(p, true);
	write_pattern(d, 0, 4096, 5);
	blk_close(d);
	/* header 2 has the higher sequence number after two updates; break it */
	ck_assert_uint_gt(read_le64(p, 128 * 1024 + 8), read_le64(p, 64 * 1024 + 8));
	patch_le32(p, 128 * 1024 + 100, 0xdeadbeef);
	d = open_img(p, false);
	expect_pattern(d, 0, 4096, 5);
	blk_close(d);
	/* the valid header with the higher sequence number is the current one */
	fread_at(p, 64 * 1024, h, 4096);
	put_le64(h + 8, 1000);
	put_le32(h + 4, 0);
	put_le32(h + 4, kl_crc32c(0, h, 4096));
	fpatch(p, 128 * 1024, h, 4096);
	d = open_img(p, true);
	blk_close(d);
	ck_assert_uint_eq(KL_MAX(read_le64(p, 64 * 1024 + 8), read_le64(p, 128 * 1024 + 8)), 1002);
	/* both broken */
	patch_le32(p, 64 * 1024 + 200, 1);
	patch_le32(p, 128 * 1024 + 200, 1);
	ck_assert_int_eq(try_open(p, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "no valid VHDX header"));
	/* equal sequence numbers with different content: no current header */
	create(p, 4 * MiB, "block_size=1M");
	fread_at(p, 64 * 1024, h, 4096);
	put_le64(h + 8, 9);
	fpatch(p, 64 * 1024, h, 4096);
	fix_crc(p, 64 * 1024, 4096);
	h[16] ^= 1;
	fpatch(p, 128 * 1024, h, 4096);
	fix_crc(p, 128 * 1024, 4096);
	ck_assert_int_eq(try_open(p, false), -EUCLEAN);
}
END_TEST

START_TEST(region_table_copy)
{
	const char *p = tu_path("r.vhdx");
	struct blk_dev *d;

	create(p, 4 * MiB, "block_size=1M");
	patch_le32(p, 192 * 1024 + 1000, 7); /* CRC of copy 1 now wrong */
	d = open_img(p, false);
	blk_close(d);
	patch_le32(p, 256 * 1024 + 1000, 7);
	ck_assert_int_eq(try_open(p, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "region table"));
}
END_TEST

/* ------------------------------------------------------------------ differencing */

static void make_parent(const char *p)
{
	struct blk_dev *d;

	create(p, 16 * MiB, "block_size=1M");
	d = open_img(p, true);
	write_pattern(d, 0, 16 * MiB, 100);
	blk_close(d);
}

static void make_child(const char *child, const char *parent_ref)
{
	struct blk_create_opts co = { .parent = parent_ref };

	ck_assert_ok(blk_create(child, "vhdx", &co));
}

START_TEST(differencing_chain)
{
	const char *p = tu_path("base.vhdx"), *c = tu_path("child.vhdx");
	struct blk_dev *d;
	struct blk_extent e;
	struct blk_info in;
	uint64_t sb, blk0;
	uint8_t bits[2];

	make_parent(p);
	make_child(c, "base.vhdx");
	d = open_img(c, true);
	ck_assert_uint_eq(blk_size(d), 16 * MiB);
	ck_assert_ptr_nonnull(blk_parent(d));
	write_pattern(d, 4096, 1024, 200);	  /* sectors 8, 9: PARTIALLY_PRESENT */
	write_pattern(d, 2 * MiB, 2 * MiB, 201); /* a whole 2 MiB block: FULLY_PRESENT */
	ck_assert_ok(blk_pwrite_zeroes(d, 8 * MiB, 2 * MiB, 0)); /* hides the parent */
	blk_close(d);

	/* on disk: block 0 PARTIALLY_PRESENT, its chunk's bitmap has bits 8 and 9 (LSB first) */
	blk0 = read_le64(c, BAT_OFF);
	ck_assert_uint_eq(blk0 & 7, VHDX_PAYLOAD_PARTIALLY_PRESENT);
	sb = read_le64(c, BAT_OFF + 8 * 2048); /* chunk ratio 2048 with 2 MiB blocks */
	ck_assert_uint_eq(sb & 7, VHDX_SB_PRESENT);
	fread_at(c, VHDX_BAT_OFF(sb), bits, 2);
	ck_assert_uint_eq(bits[0], 0);
	ck_assert_uint_eq(bits[1], 0x03);
	ck_assert_uint_eq(read_le64(c, BAT_OFF + 8) & 7, VHDX_PAYLOAD_FULLY_PRESENT);
	/* zeroing is a block of zeros (a hole), not the ZERO state libvhdi reads through */
	ck_assert_uint_eq(read_le64(c, BAT_OFF + 32) & 7, VHDX_PAYLOAD_FULLY_PRESENT);
	/* every chunk has its (zeroed) sector bitmap from the start */
	ck_assert_uint_eq(VHDX_BAT_OFF(sb), BAT_OFF + MiB);

	d = open_img(c, false);
	expect_pattern(d, 0, 4096, 100);
	expect_pattern(d, 4096, 1024, 200);
	expect_pattern(d, 5120, 2 * MiB - 5120, 100);
	expect_pattern(d, 2 * MiB, 2 * MiB, 201);
	expect_pattern(d, 4 * MiB, 4 * MiB, 100);
	expect_fill(d, 8 * MiB, 2 * MiB, 0);
	expect_pattern(d, 10 * MiB, 6 * MiB, 100);
	/* status at sector granularity */
	ck_assert_ok(blk_block_status(d, 0, 16 * MiB, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	ck_assert_uint_eq(e.len, 4096);
	ck_assert_ok(blk_block_status(d, 4096, 16 * MiB, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert_uint_eq(e.len, 1024);
	ck_assert_uint_eq(e.host_off, VHDX_BAT_OFF(blk0) + 4096);
	ck_assert_ok(blk_block_status(d, 6 * MiB, MiB, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.subformat, "differencing");
	ck_assert_str_eq(in.parent, "base.vhdx");
	ck_assert_str_eq(info_kv(&in, "has parent"), "yes");
	ck_assert_ptr_nonnull(info_kv(&in, "parent locator parent_linkage"));
	ck_assert_str_eq(info_kv(&in, "parent locator relative_path"), "base.vhdx");
	blk_info_release(&in);
	blk_close(d);
}
END_TEST

START_TEST(differencing_wrong_parent)
{
	const char *p = tu_path("wp.vhdx"), *c = tu_path("wc.vhdx");
	struct blk_dev *d;

	make_parent(p);
	make_child(c, "wp.vhdx");
	/* writing to the parent gives it a new DataWriteGuid: the child is stale */
	d = open_img(p, true);
	write_pattern(d, 0, 4096, 1);
	blk_close(d);
	ck_assert_int_eq(try_open(c, false), -ESTALE);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "wrong parent"));
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "parent_linkage"));
	/* missing parent */
	ck_assert_int_eq(tu_sh("rm -f '%s'", p), 0);
	ck_assert_int_eq(try_open(c, false), -ENOENT);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "not found"));
}
END_TEST

START_TEST(differencing_loop)
{
	const char *a = tu_path("la.vhdx"), *b = tu_path("lb.vhdx"), *c = tu_path("lc.vhdx");

	make_parent(a);
	make_child(b, "la.vhdx");
	make_child(c, "lb.vhdx");
	/* lc becomes la: la -> lb -> la */
	ck_assert_int_eq(tu_sh("mv '%s' '%s'", c, a), 0);
	ck_assert_int_eq(try_open(b, false), -ELOOP);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "loop"));
}
END_TEST

/* ------------------------------------------------------------------ log replay */

struct desc {
	bool zero;
	uint64_t file_off;
	uint64_t zero_len;
	const uint8_t *data; /* 4096 bytes for data descriptors */
};

/*
 * Build one log entry (MS-VHDX 2.3.1) into out; returns its length.
 * Descriptor sector(s), then one data sector per data descriptor.
 */
static size_t build_entry(uint8_t *out, uint64_t seq, uint32_t tail, const uint8_t guid[16],
			  const struct desc *ds, int n, uint64_t flushed, uint64_t last)
{
	int ndata = 0, k = 0;
	size_t len;

	for (int i = 0; i < n; i++)
		ndata += !ds[i].zero;
	len = 4096 * (size_t)(1 + ndata);
	memset(out, 0, len);
	put_le32(out, 0x65676F6C);
	put_le32(out + 8, (uint32_t)len);
	put_le32(out + 12, tail);
	put_le64(out + 16, seq);
	put_le32(out + 24, (uint32_t)n);
	memcpy(out + 32, guid, 16);
	put_le64(out + 48, flushed);
	put_le64(out + 56, last);
	for (int i = 0; i < n; i++) {
		uint8_t *e = out + 64 + 32 * i;

		put_le64(e + 16, ds[i].file_off);
		put_le64(e + 24, seq);
		if (ds[i].zero) {
			put_le32(e, 0x6F72657A);
			put_le64(e + 8, ds[i].zero_len);
		} else {
			uint8_t *sec = out + 4096 * (size_t)(1 + k++);

			put_le32(e, 0x63736564);
			memcpy(e + 4, ds[i].data + 4092, 4);
			memcpy(e + 8, ds[i].data, 8);
			put_le32(sec, 0x61746164);
			put_le32(sec + 4, (uint32_t)(seq >> 32));
			memcpy(sec + 8, ds[i].data + 8, 4084);
			put_le32(sec + 4092, (uint32_t)seq);
		}
	}
	put_le32(out + 4, kl_crc32c(0, out, len));
	return len;
}

/* Point the current header at a log with this LogGuid (a new header, seq + 1). */
static void set_log_guid(const char *p, const uint8_t guid[16])
{
	uint8_t h1[4096], h2[4096], *h;

	fread_at(p, 64 * 1024, h1, 4096);
	fread_at(p, 128 * 1024, h2, 4096);
	h = get_le64(h1 + 8) > get_le64(h2 + 8) ? h1 : h2;
	put_le64(h + 8, get_le64(h + 8) + 1);
	memcpy(h + 48, guid, 16);
	put_le32(h + 4, 0);
	put_le32(h + 4, kl_crc32c(0, h, 4096));
	fpatch(p, h == h1 ? 128 * 1024 : 64 * 1024, h, 4096);
}

/*
 * An image with blocks 0 and 1 written (patterns 1, 2), then a log holding:
 * an old valid sequence (seq 5) writing 'O' over block 0, a newer one
 * (seq 41, 42; the second entry's tail points at the first) writing 'L'
 * into block 0's first 4 KiB, zeroing 4 KiB at 8 KiB, and turning block 1
 * into a ZERO block through its BAT sector; an entry with another LogGuid;
 * and a torn entry (bad CRC). Expected after replay: 'L' x 4096, pattern 1,
 * zeros, pattern 1...; block 1 zeros.
 */
static uint64_t make_logged_image(const char *p, uint8_t guid[16])
{
	uint8_t *log = kl_calloc(1, MiB), *sec = kl_malloc(4096), *osec = kl_malloc(4096);
	uint8_t *bat = kl_malloc(4096), other[16];
	struct blk_dev *d;
	uint64_t blk0, pos = 0, size;
	struct desc ds[2];

	create(p, 8 * MiB, "block_size=1M");
	d = open_img(p, true);
	write_pattern(d, 0, 2 * MiB, 1);
	blk_close(d);
	blk0 = VHDX_BAT_OFF(read_le64(p, BAT_OFF));
	ck_assert_uint_eq(blk0, 4 * MiB);
	size = 6 * MiB;
	kl_uuid_generate(guid);
	kl_uuid_generate(other);
	memset(osec, 'O', 4096);
	memset(sec, 'L', 4096);
	fread_at(p, BAT_OFF, bat, 4096);
	put_le64(bat + 8, VHDX_PAYLOAD_ZERO);

	ds[0] = (struct desc){ .file_off = blk0, .data = osec };
	pos += build_entry(log + pos, 5, 0, guid, ds, 1, size, size);
	ds[0] = (struct desc){ .file_off = blk0, .data = sec };
	ds[1] = (struct desc){ .zero = true, .file_off = blk0 + 8192, .zero_len = 4096 };
	{
		uint64_t first = pos;

		pos += build_entry(log + pos, 41, (uint32_t)first, guid, ds, 2, size, size);
		ds[0] = (struct desc){ .file_off = BAT_OFF, .data = bat };
		pos += build_entry(log + pos, 42, (uint32_t)first, guid, ds, 1, size, 7 * MiB);
	}
	ds[0] = (struct desc){ .file_off = blk0, .data = osec };
	pos += build_entry(log + pos, 43, 0, other, ds, 1, size, size);
	pos += build_entry(log + pos, 44, 0, guid, ds, 1, size, size);
	log[pos - 10] ^= 0xff; /* torn */
	fpatch(p, LOG_OFF, log, MiB);
	set_log_guid(p, guid);
	kl_free(log);
	kl_free(sec);
	kl_free(osec);
	kl_free(bat);
	return size;
}

static void expect_replayed(struct blk_dev *d)
{
	expect_fill(d, 0, 4096, 'L');
	expect_pattern(d, 4096, 4096, 1);
	expect_fill(d, 8192, 4096, 0);
	expect_pattern(d, 12288, MiB - 12288, 1);
	expect_fill(d, MiB, MiB, 0);
}

START_TEST(log_replay_read_only)
{
	const char *p = tu_path("log.vhdx");
	uint8_t guid[16], *before, *after;
	uint64_t n1, n2;
	struct blk_dev *d;
	struct blk_info in;

	make_logged_image(p, guid);
	before = slurp(p, &n1);
	d = open_img(p, false);
	expect_replayed(d);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(info_kv(&in, "log"),
			 "replayed in memory (2 entries; read-only open, file unchanged)");
	blk_info_release(&in);
	blk_close(d);
	/* never a byte written: same size (not extended to LastFileOffset), same content */
	after = slurp(p, &n2);
	ck_assert_uint_eq(n1, n2);
	ck_assert(memcmp(before, after, n1) == 0);
	kl_free(before);
	kl_free(after);
}
END_TEST

START_TEST(log_replay_writable)
{
	const char *p = tu_path("logw.vhdx");
	uint8_t guid[16], hdr[4096];
	uint64_t size;
	struct blk_dev *d;
	struct blk_info in;
	struct kl_file *f;

	make_logged_image(p, guid);
	d = open_img(p, true);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(info_kv(&in, "log"), "replayed to the file (2 entries)");
	blk_info_release(&in);
	expect_replayed(d);
	blk_close(d);
	/* on disk: block 0 rewritten, BAT entry 1 ZERO, file extended, LogGuid cleared */
	fread_at(p, 4 * MiB, hdr, 4096);
	ck_assert(hdr[0] == 'L' && memcmp(hdr, hdr + 1, 4095) == 0);
	ck_assert_uint_eq(read_le64(p, BAT_OFF + 8), VHDX_PAYLOAD_ZERO);
	ck_assert_ok(kl_io_open(p, KL_O_RDONLY, &f));
	ck_assert_ok(kl_io_size(f, &size));
	kl_io_close(f);
	ck_assert_uint_ge(size, 7 * MiB);
	fread_at(p, read_le64(p, 64 * 1024 + 8) > read_le64(p, 128 * 1024 + 8) ? 64 * 1024
										 : 128 * 1024,
		 hdr, 4096);
	ck_assert(kl_is_zero(hdr + 48, 16));
	d = open_img(p, false);
	expect_replayed(d);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(info_kv(&in, "log"), "empty");
	blk_info_release(&in);
	blk_close(d);
}
END_TEST

START_TEST(log_bad)
{
	const char *p = tu_path("logbad.vhdx");
	uint8_t guid[16], junk[4096];

	/* LogGuid set, log full of garbage: corrupt (MS-VHDX 2.3.3), never silently ignored */
	make_logged_image(p, guid);
	memset(junk, 0x5c, sizeof(junk));
	for (uint64_t o = 0; o < MiB; o += 4096)
		fpatch(p, LOG_OFF + o, junk, sizeof(junk));
	ck_assert_int_eq(try_open(p, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "no valid entry sequence"));
	/* FlushedFileOffset beyond the file: truncated */
	make_logged_image(p, guid);
	ck_assert_int_eq(tu_sh("truncate -s 5M '%s'", p), 0);
	ck_assert_int_eq(try_open(p, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "truncated"));
	/* the log region past EOF */
	make_logged_image(p, guid);
	patch_le64(p, 64 * 1024 + 72, 64 * MiB);
	fix_crc(p, 64 * 1024, 4096);
	patch_le64(p, 128 * 1024 + 72, 64 * MiB);
	fix_crc(p, 128 * 1024, 4096);
	ck_assert_int_eq(try_open(p, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "log"));
}
END_TEST

/* ------------------------------------------------------------------ bad input */

START_TEST(bad_input)
{
	const char *p = tu_path("bad.vhdx"), *t = tu_path("bad2.vhdx");
	struct blk_dev *d;
	uint8_t b[8];

	create(p, 8 * MiB, "block_size=1M");
	d = open_img(p, true);
	write_pattern(d, 0, MiB, 1);
	blk_close(d);

	/* truncated below the header section */
	ck_assert_int_eq(tu_sh("head -c 300000 '%s' > '%s'", p, t), 0);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "too short"));
	/* truncated inside the payload: BAT entry past EOF */
	ck_assert_int_eq(tu_sh("head -c %llu '%s' > '%s'", 4 * MiB + 4096, p, t), 0);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "past the end of the file"));
	/* BAT entry overlapping the metadata region */
	tu_copy(p, t);
	patch_le64(t, BAT_OFF, META_OFF | VHDX_PAYLOAD_FULLY_PRESENT);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "overlaps"));
	/* reserved state, PARTIALLY_PRESENT without a parent */
	tu_copy(p, t);
	patch_le64(t, BAT_OFF + 8, 4);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	patch_le64(t, BAT_OFF + 8, (4 * MiB) | VHDX_PAYLOAD_PARTIALLY_PRESENT);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	/* region overlap and region past EOF (CRC fixed up so the table is valid) */
	tu_copy(p, t);
	patch_le64(t, 192 * 1024 + 64, BAT_OFF);
	fix_crc(t, 192 * 1024, 64 * 1024);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "overlaps"));
	tu_copy(p, t);
	patch_le64(t, 192 * 1024 + 32, 1ULL << 40);
	fix_crc(t, 192 * 1024, 64 * 1024);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "inside the file"));
	/* absurd block sizes, virtual sizes and sector sizes (metadata has no CRC) */
	tu_copy(p, t);
	patch_le32(t, META_OFF + 65536, 3 << 20);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "block size"));
	patch_le32(t, META_OFF + 65536, 512u << 20);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	tu_copy(p, t);
	patch_le64(t, META_OFF + 65536 + 8, UINT64_MAX - 511);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	patch_le64(t, META_OFF + 65536 + 8, 60ULL << 40); /* BAT would need 480 MiB */
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "BAT region"));
	tu_copy(p, t);
	patch_le32(t, META_OFF + 65536 + 32, 1024);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "sector size"));
	/* metadata item outside the region, unknown required item */
	tu_copy(p, t);
	patch_le32(t, META_OFF + 32 + 16, 0xFFFFFFF0u);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	tu_copy(p, t);
	fread_at(t, META_OFF + 32, b, 8);
	b[0] ^= 0x55;
	fpatch(t, META_OFF + 32, b, 8);
	ck_assert_int_eq(try_open(t, false), -ENOTSUP);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "required but unknown"));
	/* HasParent without a parent locator */
	tu_copy(p, t);
	patch_le32(t, META_OFF + 65536 + 4, 2);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "parent locator"));
	/* not a VHDX at all */
	ck_assert_int_eq(tu_sh("head -c 2097152 /dev/zero > '%s'", t), 0);
	ck_assert_int_eq(try_open(t, false), -EUCLEAN);
	ck_assert_ptr_nonnull(strstr(kl_errmsg(), "vhdxfile"));
}
END_TEST

START_TEST(create_options)
{
	const char *p = tu_path("o.vhdx");
	struct kl_opts *o = NULL;
	struct blk_create_opts co = { .size = MiB };
	const char *bad[] = { "subformat=sparse",	  "block_size=3M",
			      "block_size=512M",	  "logical_sector_size=1024",
			      "log_size=1536K",		  "physical_sector_size=2" };

	for (size_t i = 0; i < KL_ARRAY_SIZE(bad); i++) {
		o = NULL;
		ck_assert_ok(kl_opts_parse(bad[i], &o));
		co.opts = o;
		ck_assert_int_eq(blk_create(p, "vhdx", &co), -EINVAL);
		kl_opts_free(o);
	}
	co.opts = NULL;
	co.size = 65ULL << 40;
	ck_assert_int_eq(blk_create(p, "vhdx", &co), -EINVAL);
	/* size rounds up to the sector size */
	create(p, 1000, "logical_sector_size=4096,block_size=1M,log_size=2M");
	{
		struct blk_dev *d = open_img(p, false);

		ck_assert_uint_eq(blk_size(d), 4096);
		blk_close(d);
	}
}
END_TEST

/*
 * Crash (and error) at every I/O point of a session's first write + flush:
 * the header update for the new DataWriteGuid, an in-place overwrite,
 * newly allocated blocks, sector bitmap bits (differencing), the BAT. The
 * image must open to the old or the new content: per sector where data is
 * overwritten in place, per block where a block is newly allocated (its BAT
 * entry is written only after a sync of the data).
 */
START_TEST(crash_during_allocation)
{
	static const enum kl_fault_mode modes[] = { KL_FAULT_ERROR, KL_FAULT_CRASH,
						    KL_FAULT_CRASH_TORN };
	const char *p = tu_path("cr.vhdx"), *c = tu_path("crc.vhdx");
	const char *pristine = tu_path("pr.vhdx");
	const uint64_t off = 512 * 1024, len = 3 * MiB;
	uint8_t *old = kl_malloc(len), *neu = kl_malloc(len), *got = kl_malloc(len);
	struct kl_fault_rule count = { .mode = KL_FAULT_NONE };
	uint64_t points;

	for (int diff = 0; diff < 2; diff++) {
		const char *img = diff ? c : p;
		struct blk_dev *d;

		create(p, 8 * MiB, "block_size=1M");
		d = open_img(p, true);
		write_pattern(d, 0, MiB, 30);
		blk_close(d);
		if (diff) {
			struct kl_opts *o = NULL;
			struct blk_create_opts co = { .parent = "cr.vhdx" };

			ck_assert_ok(kl_opts_parse("block_size=1M", &o));
			co.opts = o;
			ck_assert_ok(blk_create(c, "vhdx", &co));
			kl_opts_free(o);
			d = open_img(c, true);
			write_pattern(d, 0, 4096, 29); /* block 0 PARTIALLY_PRESENT */
			blk_close(d);
		}
		ck_assert_ok(tu_copy(img, pristine));
		d = open_img(img, false);
		ck_assert_ok(blk_pread(d, off, old, len));
		blk_close(d);
		tu_fill(neu, len, 31, off);

		d = open_img(img, true);
		kl_fault_arm(&count);
		ck_assert_ok(blk_pwrite(d, off, neu, len));
		ck_assert_ok(blk_flush(d));
		points = kl_fault_points();
		kl_fault_reset();
		blk_close(d);
		ck_assert_uint_ge(points, 6);

		for (size_t m = 0; m < KL_ARRAY_SIZE(modes); m++) {
			for (uint64_t at = 1; at <= points; at++) {
				struct kl_fault_rule r = { .mode = modes[m], .at = at,
							   .seed = at * 7 + m };
				int rc;

				ck_assert_ok(tu_copy(pristine, img));
				d = open_img(img, true);
				kl_fault_arm(&r);
				rc = blk_pwrite(d, off, neu, len);
				if (rc == 0)
					rc = blk_flush(d);
				blk_close(d);
				kl_fault_settle();
				kl_fault_reset();
				ck_assert_int_lt(rc, 0);
				d = open_img(img, false);
				ck_assert_ok(blk_pread(d, off, got, len));
				{
					/* keel check agrees: nothing corrupt, counts sane */
					struct blk_check_report cr;

					ck_assert_ok(blk_check(d, &cr, 0));
					ck_assert_msg(cr.corruptions == 0 && cr.leaks == 0 &&
							      cr.allocated_clusters <= cr.total_clusters,
						      "diff=%d mode %zu point %llu: check: %s", diff,
						      m, (unsigned long long)at,
						      cr.nmsgs ? cr.msgs[0] : "counts");
					blk_check_report_release(&cr);
				}
				blk_close(d);
				/* [512K, 1M): block 0, in place (bitmap bits in the child) */
				for (uint64_t o = 0; o < MiB - off; o += 512)
					ck_assert_msg(memcmp(got + o, old + o, 512) == 0 ||
						      memcmp(got + o, neu + o, 512) == 0,
						      "diff=%d mode %zu point %llu: sector at "
						      "%llu torn",
						      diff, m, (unsigned long long)at,
						      (unsigned long long)(off + o));
				/* blocks 1, 2 and the first half of 3: newly allocated */
				for (uint64_t o = MiB - off; o < len; o += MiB)
					ck_assert_msg(memcmp(got + o, old + o,
							     KL_MIN(MiB, len - o)) == 0 ||
						      memcmp(got + o, neu + o,
							     KL_MIN(MiB, len - o)) == 0,
						      "diff=%d mode %zu point %llu: block at %llu "
						      "neither old nor new",
						      diff, m, (unsigned long long)at,
						      (unsigned long long)(off + o));
			}
		}
	}
	kl_free(old);
	kl_free(neu);
	kl_free(got);
}
END_TEST

/*
 * keel commit of a differencing VHDX into its VHDX parent, with a crash at
 * every I/O point: the child must open with its parent (parent_linkage2
 * carries the parent's new DataWriteGuid before the parent gets it) and
 * the chain must read the same at every point.
 */
START_TEST(commit_crash_loop)
{
	const char *p = tu_path("cm.vhdx"), *c = tu_path("cmc.vhdx");
	const char *p0 = tu_path("cm0.vhdx"), *c0 = tu_path("cmc0.vhdx");
	struct blk_open_opts o = { .format = "vhdx" };
	struct kl_fault_rule count = { .mode = KL_FAULT_NONE };
	struct snap_stats st;
	uint8_t *want = kl_malloc(8 * MiB), *got = kl_malloc(8 * MiB);
	struct blk_dev *d;
	uint64_t points;

	make_parent(p);
	make_child(c, "cm.vhdx");
	d = open_img(c, true);
	write_pattern(d, 4096, 8192, 50);	 /* partial block */
	write_pattern(d, 2 * MiB, 2 * MiB, 51); /* whole block */
	ck_assert_ok(blk_pwrite_zeroes(d, 6 * MiB, MiB, 0));
	ck_assert_ok(blk_pread(d, 0, want, 8 * MiB));
	blk_close(d);
	ck_assert_ok(tu_copy(p, p0));
	ck_assert_ok(tu_copy(c, c0));

	kl_fault_arm(&count);
	ck_assert_ok(snap_commit(c, &o, false, &st));
	points = kl_fault_points();
	kl_fault_reset();
	d = open_img(c, false);
	ck_assert_ok(blk_pread(d, 0, got, 8 * MiB));
	ck_assert(memcmp(got, want, 8 * MiB) == 0);
	{
		struct blk_extent e;

		ck_assert_ok(blk_block_status(d, 0, blk_size(d), &e));
		ck_assert_int_eq(e.type, BLK_UNALLOC);
		ck_assert_uint_eq(e.len, blk_size(d)); /* the child is empty */
	}
	blk_close(d);
	d = open_img(p, false);
	ck_assert_ok(blk_pread(d, 0, got, 8 * MiB));
	ck_assert(memcmp(got, want, 8 * MiB) == 0);
	blk_close(d);

	for (uint64_t at = 1; at <= points; at++) {
		for (int torn = 0; torn < 2; torn++) {
			struct kl_fault_rule r = {
				.mode = torn ? KL_FAULT_CRASH_TORN : KL_FAULT_CRASH,
				.at = at,
				.seed = at * 3 + (uint64_t)torn,
			};

			ck_assert_ok(tu_copy(p0, p));
			ck_assert_ok(tu_copy(c0, c));
			kl_fault_arm(&r);
			ck_assert_int_lt(snap_commit(c, &o, false, &st), 0);
			kl_fault_settle();
			kl_fault_reset();
			d = NULL;
			ck_assert_msg(blk_open(c, &o, &d) == 0, "point %llu torn %d: %s",
				      (unsigned long long)at, torn, kl_errmsg());
			ck_assert_ok(blk_pread(d, 0, got, 8 * MiB));
			ck_assert_msg(memcmp(got, want, 8 * MiB) == 0,
				      "point %llu torn %d: the chain reads differently",
				      (unsigned long long)at, torn);
			blk_close(d);
		}
	}
	kl_free(want);
	kl_free(got);
}
END_TEST

START_TEST(rebase_unsafe)
{
	const char *p = tu_path("rb.vhdx"), *q = tu_path("rb2.vhdx"), *c = tu_path("rbc.vhdx");
	struct blk_dev *d;
	struct blk_info in;

	make_parent(p);
	make_child(c, "rb.vhdx");
	d = open_img(c, true);
	write_pattern(d, MiB, 4096, 60);
	blk_close(d);
	/* a copy of the parent has the same DataWriteGuid: repoint the child */
	ck_assert_ok(tu_copy(p, q));
	d = open_img(c, true);
	ck_assert_ok(blk_set_parent(d, "rb2.vhdx", "vhdx", 0));
	blk_close(d);
	ck_assert_int_eq(tu_sh("rm '%s'", p), 0);
	d = open_img(c, false);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.parent, "rb2.vhdx");
	ck_assert_str_eq(info_kv(&in, "parent locator relative_path"), "rb2.vhdx");
	blk_info_release(&in);
	expect_pattern(d, 0, MiB, 100);
	expect_pattern(d, MiB, 4096, 60);
	blk_close(d);
	/* removing the parent, or a parent of another format, is refused */
	d = open_img(c, true);
	ck_assert_int_eq(blk_set_parent(d, NULL, NULL, 0), -ENOTSUP);
	blk_close(d);
}
END_TEST

static Suite *vhdx_suite(void)
{
	Suite *s = suite_create("vhdx");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, guid_byte_order);
	tcase_add_test(tc, probe_and_layout);
	tcase_add_test(tc, roundtrip_512);
	tcase_add_test(tc, roundtrip_4096);
	tcase_add_test(tc, roundtrip_fixed_32m);
	tcase_add_test(tc, bat_interleave_4096);
	tcase_add_test(tc, fixed_and_block_state_zero);
	tcase_add_test(tc, write_zeroes_and_status);
	tcase_add_test(tc, headers_sequence_and_guids);
	tcase_add_test(tc, header_selection);
	tcase_add_test(tc, region_table_copy);
	tcase_add_test(tc, differencing_chain);
	tcase_add_test(tc, differencing_wrong_parent);
	tcase_add_test(tc, differencing_loop);
	tcase_add_test(tc, log_replay_read_only);
	tcase_add_test(tc, log_replay_writable);
	tcase_add_test(tc, log_bad);
	tcase_add_test(tc, bad_input);
	tcase_add_test(tc, create_options);
	tcase_add_test(tc, crash_during_allocation);
	tcase_add_test(tc, commit_crash_loop);
	tcase_add_test(tc, rebase_unsafe);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(vhdx_suite());
}
