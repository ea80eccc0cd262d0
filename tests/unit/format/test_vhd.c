/*
 * tests/unit/format/test_vhd.c - format/vhd.c: create, write, read, reopen
 * for fixed, dynamic and differencing disks; checksums and the footer copy;
 * CHS sizing and the azure profile; bad input; crash safety of allocation.
 */
#include "tests/common/testutil.h"

#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ helpers */

static uint32_t csum(const uint8_t *b, size_t n, size_t off)
{
	uint32_t s = 0;

	for (size_t i = 0; i < n; i++)
		if (i < off || i >= off + 4)
			s += b[i];
	return ~s;
}

static void file_read(const char *path, uint64_t off, void *buf, size_t len)
{
	struct kl_file *f;

	ck_assert_ok(kl_io_open(path, KL_O_RDONLY, &f));
	ck_assert_int_eq(kl_io_pread(f, off, buf, len), (ssize_t)len);
	kl_io_close(f);
}

static void file_write(const char *path, uint64_t off, const void *buf, size_t len)
{
	struct kl_file *f;

	ck_assert_ok(kl_io_open(path, KL_O_RDWR, &f));
	ck_assert_ok(kl_io_pwrite(f, off, buf, len));
	ck_assert_ok(kl_io_sync(f));
	kl_io_close(f);
}

static uint64_t file_size(const char *path)
{
	struct kl_file *f;
	uint64_t sz;

	ck_assert_ok(kl_io_open(path, KL_O_RDONLY, &f));
	ck_assert_ok(kl_io_size(f, &sz));
	kl_io_close(f);
	return sz;
}

/* Patch a big-endian u32/u64 in the footer copies (offset 0 and end) and fix checksums. */
static void footer_patch(const char *path, size_t field, uint64_t v, int width, bool both)
{
	uint64_t offs[2] = { file_size(path) - 512, 0 };

	for (int i = 0; i < (both ? 2 : 1); i++) {
		uint8_t f[512];

		file_read(path, offs[i], f, 512);
		if (width == 8)
			put_be64(f + field, v);
		else
			put_be32(f + field, (uint32_t)v);
		put_be32(f + 64, csum(f, 512, 64));
		file_write(path, offs[i], f, 512);
	}
}

static void header_patch(const char *path, size_t field, uint64_t v, int width)
{
	uint8_t h[1024];

	file_read(path, 512, h, 1024);
	if (width == 8)
		put_be64(h + field, v);
	else
		put_be32(h + field, (uint32_t)v);
	put_be32(h + 36, csum(h, 1024, 36));
	file_write(path, 512, h, 1024);
}

static void bat_patch(const char *path, uint32_t index, uint32_t v)
{
	uint8_t b[4];

	put_be32(b, v);
	file_write(path, 1536 + (uint64_t)index * 4, b, 4);
}

static void mk(const char *path, const char *opts, uint64_t size, const char *parent)
{
	struct blk_create_opts o = { .size = size, .parent = parent };
	struct kl_opts *ko = NULL;

	unlink(path);
	if (opts)
		ck_assert_ok(kl_opts_parse(opts, &ko));
	o.opts = ko;
	ck_assert_ok(blk_create(path, "vhd", &o));
	kl_opts_free(ko);
}

static struct blk_dev *op(const char *path, unsigned flags)
{
	struct blk_open_opts o = { .format = "vhd", .flags = flags };
	struct blk_dev *d = NULL;

	ck_assert_ok(blk_open(path, &o, &d));
	return d;
}

/* Expect blk_open to fail with code and a message containing what. */
static void op_fails(const char *path, unsigned flags, int code, const char *what)
{
	struct blk_open_opts o = { .format = "vhd", .flags = flags };
	struct blk_dev *d = NULL;
	int rc = blk_open(path, &o, &d);

	ck_assert_msg(rc == code, "open %s: got %d (%s), wanted %d", path, rc, kl_errmsg(), code);
	ck_assert_msg(strstr(kl_errmsg(), what) != NULL, "message '%s' lacks '%s'", kl_errmsg(),
		      what);
	ck_assert_msg(strstr(kl_errmsg(), path) != NULL, "message '%s' does not name %s",
		      kl_errmsg(), path);
	ck_assert_ptr_null(d);
}

static void pattern_write(struct blk_dev *d, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *b = kl_malloc(len);

	tu_fill(b, len, seed, off);
	ck_assert_ok(blk_pwrite(d, off, b, len));
	kl_free(b);
}

static void pattern_check(struct blk_dev *d, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *b = kl_malloc(len), *w = kl_malloc(len);

	tu_fill(w, len, seed, off);
	ck_assert_ok(blk_pread(d, off, b, len));
	ck_assert_msg(memcmp(b, w, len) == 0, "data differs at %llu+%zu", (unsigned long long)off,
		      len);
	kl_free(b);
	kl_free(w);
}

static void zero_check(struct blk_dev *d, uint64_t off, size_t len)
{
	uint8_t *b = kl_malloc(len);

	ck_assert_ok(blk_pread(d, off, b, len));
	ck_assert(kl_is_zero(b, len));
	kl_free(b);
}

/* tu_path() rotates 8 buffers: keep paths a test holds on to in its own array. */
#define TP(var, name)                                                      \
	char var[640];                                                     \
	snprintf(var, sizeof(var), "%s", tu_path(name))

static const char *info_kv(struct blk_info *in, const char *key)
{
	for (size_t i = 0; i < in->nextra; i++)
		if (strcmp(in->extra[i].key, key) == 0)
			return in->extra[i].val;
	return NULL;
}

/* ------------------------------------------------------------------ tests */

START_TEST(probe_footer_at_end)
{
	const struct blk_driver *drv;

	mk(tu_path("f.vhd"), "subformat=fixed", 1 << 20, NULL);
	mk(tu_path("d.vhd"), NULL, 1 << 20, NULL);
	ck_assert_ok(blk_probe_file(tu_path("f.vhd"), &drv));
	ck_assert_str_eq(blk_driver_name(drv), "vhd");
	ck_assert_ok(blk_probe_file(tu_path("d.vhd"), &drv));
	ck_assert_str_eq(blk_driver_name(drv), "vhd");
	ck_assert_ptr_eq(blk_driver_find("vpc"), blk_driver_find("vhd"));
}
END_TEST

START_TEST(dynamic_write_read_reopen)
{
	TP(p, "dyn.vhd");
	struct blk_dev *d;
	struct blk_extent e;

	mk(p, "subformat=dynamic", 10 << 20, NULL);
	d = op(p, BLK_OPEN_RDWR);
	/* qemu-img compatible CHS rounding: 10 MiB -> 302/4/17 */
	ck_assert_uint_eq(blk_size(d), 10514432);
	ck_assert_uint_eq(blk_cluster_size(d), 2 << 20);
	ck_assert_ok(blk_block_status(d, 0, blk_size(d), &e));
	ck_assert_int_eq(e.type, BLK_ZERO);
	ck_assert_uint_eq(e.len, blk_size(d));
	pattern_write(d, 1000, 5000, 1);		/* unaligned, inside block 0 */
	pattern_write(d, (2 << 20) - 700, 1400, 2);	/* straddles blocks 0 and 1 */
	pattern_write(d, 8 << 20, 1 << 20, 3);
	pattern_write(d, blk_size(d) - 512, 512, 4);	/* last sector */
	pattern_check(d, 1000, 5000, 1);
	pattern_check(d, (2 << 20) - 700, 1400, 2);
	zero_check(d, 0, 1000);
	zero_check(d, 4 << 20, 4 << 20);
	ck_assert_ok(blk_block_status(d, 4 << 20, 1 << 20, &e));
	ck_assert_int_eq(e.type, BLK_ZERO);
	ck_assert_ok(blk_block_status(d, 8 << 20, 1 << 20, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	blk_close(d);

	d = op(p, 0);
	pattern_check(d, 1000, 5000, 1);
	pattern_check(d, (2 << 20) - 700, 1400, 2);
	pattern_check(d, 8 << 20, 1 << 20, 3);
	pattern_check(d, blk_size(d) - 512, 512, 4);
	zero_check(d, 6000, (2 << 20) - 700 - 6000);
	blk_close(d);
	/* both footer copies are valid and identical */
	{
		uint8_t a[512], b[512];

		file_read(p, 0, a, 512);
		file_read(p, file_size(p) - 512, b, 512);
		ck_assert(memcmp(a, b, 512) == 0);
		ck_assert_uint_eq(get_be32(a + 64), csum(a, 512, 64));
		ck_assert(memcmp(a + 28, "keel", 4) == 0);
	}
}
END_TEST

START_TEST(fixed_write_read_reopen)
{
	TP(p, "fix.vhd");
	struct blk_dev *d;
	struct blk_info in;

	mk(p, "subformat=fixed,force_size=on", 3 << 20, NULL);
	ck_assert_uint_eq(file_size(p), (3 << 20) + 512);
	d = op(p, BLK_OPEN_RDWR);
	ck_assert_uint_eq(blk_size(d), 3 << 20);
	pattern_write(d, 512 * 3, 4096 * 5, 7);
	pattern_write(d, 100, 10, 8); /* sub-sector: read-modify-write */
	blk_close(d);
	d = op(p, 0);
	pattern_check(d, 512 * 3, 4096 * 5, 7);
	pattern_check(d, 100, 10, 8);
	zero_check(d, 1 << 20, 2 << 20);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.subformat, "fixed");
	ck_assert(in.has_uuid);
	ck_assert_ptr_nonnull(info_kv(&in, "geometry"));
	blk_info_release(&in);
	blk_close(d);
}
END_TEST

START_TEST(size_rounding_and_azure)
{
	struct blk_dev *d;
	uint8_t f[512];

	/* odd sizes round up like qemu-img: 20983865 -> 20994048 (603/4/17) */
	mk(tu_path("r.vhd"), NULL, 20983865, NULL);
	d = op(tu_path("r.vhd"), 0);
	ck_assert_uint_eq(blk_size(d), 20994048);
	blk_close(d);
	/* force_size keeps the sector-rounded size; geometry goes to the maximum */
	mk(tu_path("fs.vhd"), "force_size=on", 20983865, NULL);
	d = op(tu_path("fs.vhd"), 0);
	ck_assert_uint_eq(blk_size(d), 20984320);
	blk_close(d);
	file_read(tu_path("fs.vhd"), 0, f, 512);
	ck_assert_uint_eq(get_be16(f + 56), 65535);
	ck_assert_uint_eq(f[58], 16);
	ck_assert_uint_eq(f[59], 255);
	/* past the CHS range the size is exact even without force_size */
	mk(tu_path("big.vhd"), NULL, 200ULL << 30, NULL);
	d = op(tu_path("big.vhd"), 0);
	ck_assert_uint_eq(blk_size(d), 200ULL << 30);
	blk_close(d);
	/* azure: fixed, whole MiB, no CHS rounding */
	mk(tu_path("az.vhd"), "azure", 20983865, NULL);
	d = op(tu_path("az.vhd"), 0);
	ck_assert_uint_eq(blk_size(d), 21 << 20);
	blk_close(d);
	ck_assert_uint_eq(file_size(tu_path("az.vhd")), (21 << 20) + 512);
	file_read(tu_path("az.vhd"), (21 << 20), f, 512);
	ck_assert_uint_eq(get_be32(f + 60), 2);
	ck_assert_uint_eq(get_be64(f + 48), 21 << 20);
	ck_assert_uint_eq(get_be64(f + 40), 21 << 20);
	ck_assert(memcmp(f + 28, "keel", 4) == 0);
	ck_assert_uint_eq(get_be32(f + 64), csum(f, 512, 64));
	/* an exact CHS size keeps its real geometry: 4 MiB = 120/4/17 is not exact */
	{
		struct blk_create_opts o = { .size = 1 << 20 };
		struct kl_opts *ko = NULL;

		ck_assert_ok(kl_opts_parse("azure,subformat=dynamic", &ko));
		o.opts = ko;
		ck_assert_int_eq(blk_create(tu_path("bad.vhd"), "vhd", &o), -EINVAL);
		kl_opts_free(ko);
		ko = NULL;
		ck_assert_ok(kl_opts_parse("block_size=3000", &ko));
		o.opts = ko;
		ck_assert_int_eq(blk_create(tu_path("bad.vhd"), "vhd", &o), -EINVAL);
		kl_opts_free(ko);
		o.opts = NULL;
		o.size = 3000ULL << 30;
		ck_assert_int_eq(blk_create(tu_path("bad.vhd"), "vhd", &o), -EFBIG);
	}
}
END_TEST

START_TEST(block_sizes)
{
	static const char *const opts[] = { "block_size=4K", "block_size=512K", "block_size=16M" };

	for (size_t i = 0; i < KL_ARRAY_SIZE(opts); i++) {
		TP(p, "bs.vhd");
		struct blk_dev *d;

		mk(p, opts[i], 40 << 20, NULL);
		d = op(p, BLK_OPEN_RDWR);
		pattern_write(d, 12345 * 512, 3 << 20, i + 10);
		blk_close(d);
		d = op(p, 0);
		pattern_check(d, 12345 * 512, 3 << 20, i + 10);
		zero_check(d, 0, 12345 * 512);
		blk_close(d);
	}
}
END_TEST

START_TEST(footer_copy_fallback)
{
	TP(p, "fb.vhd");
	struct blk_open_opts o = { .format = "vhd", .flags = BLK_OPEN_RDWR };
	struct blk_dev *d;
	struct blk_info in;
	uint8_t junk[512];

	mk(p, NULL, 4 << 20, NULL);
	d = op(p, BLK_OPEN_RDWR);
	pattern_write(d, 0, 1 << 20, 5);
	blk_close(d);
	/* damage the end footer: reads still work from the copy at 0, with a warning */
	memset(junk, 0x5a, sizeof(junk));
	file_write(p, file_size(p) - 512 + 64, junk, 4);
	d = op(p, 0);
	pattern_check(d, 0, 1 << 20, 5);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_ptr_nonnull(info_kv(&in, "warning"));
	ck_assert(strstr(info_kv(&in, "warning"), "copy at offset 0") != NULL);
	blk_info_release(&in);
	blk_close(d);
	/* but never opens writable that way */
	ck_assert_int_eq(blk_open(p, &o, &d), -EUCLEAN);
	ck_assert(strstr(kl_errmsg(), "refusing to write") != NULL);
	/* damage the copy too: a clear checksum error naming both places */
	file_write(p, 64, junk, 4);
	op_fails(p, 0, -EBADMSG, "footer checksum mismatch at offset");
	ck_assert(strstr(kl_errmsg(), "offset 0") != NULL);
	/* unless checksums are explicitly not verified */
	d = op(p, BLK_OPEN_NO_CHECKSUM);
	pattern_check(d, 0, 1 << 20, 5);
	blk_close(d);
}
END_TEST

START_TEST(header_checksum)
{
	TP(p, "hc.vhd");
	uint8_t b = 0x99;
	struct blk_dev *d;

	mk(p, NULL, 4 << 20, NULL);
	file_write(p, 512 + 100, &b, 1);
	op_fails(p, 0, -EBADMSG, "dynamic disk header checksum mismatch at offset 512");
	d = op(p, BLK_OPEN_NO_CHECKSUM);
	blk_close(d);
}
END_TEST

START_TEST(differencing_chain)
{
	TP(base, "base.vhd");
	TP(child, "child.vhd");
	struct blk_dev *d, *p;
	struct blk_extent e;
	struct blk_info in;
	struct blk_identity id;
	uint8_t hdr[1024];

	mk(base, NULL, 8 << 20, NULL);
	d = op(base, BLK_OPEN_RDWR);
	pattern_write(d, 0, blk_size(d), 20);
	blk_close(d);
	mk(child, NULL, 0, "base.vhd");
	d = op(child, BLK_OPEN_RDWR);
	p = blk_parent(d);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(blk_size(d), blk_size(p));
	/* everything reads through to the parent */
	pattern_check(d, 0, blk_size(d), 20);
	ck_assert_ok(blk_block_status(d, 0, blk_size(d), &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	/* sector-granular writes: the bitmap decides per sector */
	pattern_write(d, 3 * 512, 2 * 512, 21);
	pattern_write(d, (2 << 20) + 7 * 512, 512, 22);
	pattern_write(d, (2 << 20) + 9 * 512, 3 * 512, 23);
	ck_assert_ok(blk_block_status(d, 0, 1 << 20, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	ck_assert_uint_eq(e.len, 3 * 512);
	ck_assert_ok(blk_block_status(d, 3 * 512, 1 << 20, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert_uint_eq(e.len, 2 * 512);
	blk_close(d);

	d = op(child, 0);
	pattern_check(d, 0, 3 * 512, 20);
	pattern_check(d, 3 * 512, 2 * 512, 21);
	pattern_check(d, 5 * 512, (2 << 20) + 2 * 512, 20);
	pattern_check(d, (2 << 20) + 7 * 512, 512, 22);
	pattern_check(d, (2 << 20) + 8 * 512, 512, 20);
	pattern_check(d, (2 << 20) + 9 * 512, 3 * 512, 23);
	pattern_check(d, (2 << 20) + 12 * 512, 4 << 20, 20);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.subformat, "differencing");
	ck_assert_str_eq(in.parent, "base.vhd");
	ck_assert_ok(blk_identity(blk_parent(d), &id));
	{
		char u[37];

		kl_uuid_format(id.uuid, u);
		ck_assert_str_eq(info_kv(&in, "parent uuid"), u);
	}
	ck_assert(strstr(info_kv(&in, "parent locator 0"), "W2ru .\\base.vhd") != NULL);
	blk_info_release(&in);
	blk_close(d);
	/* the bitmap is MSB-first: sectors 3 and 4 are bits 0x10 and 0x08 of byte 0 */
	file_read(child, 512, hdr, 1024);
	{
		uint32_t bat0;
		uint8_t bm[2];

		file_read(child, get_be64(hdr + 16), &bat0, 4);
		file_read(child, (uint64_t)get_be32(&bat0) * 512, bm, 2);
		ck_assert_uint_eq(bm[0], 0x18);
		ck_assert_uint_eq(bm[1], 0);
	}
}
END_TEST

START_TEST(parent_missing_wrong_loop)
{
	TP(base, "pb.vhd");
	TP(child, "pc.vhd");
	struct blk_dev *d;
	struct blk_info in;

	mk(base, NULL, 4 << 20, NULL);
	mk(child, NULL, 0, "pb.vhd");
	/* wrong parent: same name, other unique id */
	mk(base, NULL, 4 << 20, NULL);
	op_fails(child, 0, -ESTALE, "wrong parent");
	/* missing parent: named with the locator resolved against the child's directory */
	unlink(base);
	op_fails(child, 0, -ENOENT, "parent not found");
	ck_assert(strstr(kl_errmsg(), "W2ru '.\\pb.vhd'") != NULL);
	ck_assert(strstr(kl_errmsg(), "/pb.vhd not found") != NULL);
	/* the image alone still opens for info */
	d = op(child, BLK_OPEN_NO_PARENT);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.parent, "pb.vhd");
	blk_info_release(&in);
	zero_check(d, 0, 4 << 20);
	blk_close(d);
	/* loop: the child replaces its own parent */
	ck_assert_int_eq(rename(child, base), 0);
	op_fails(base, 0, -ELOOP, "loops");
}
END_TEST

START_TEST(bad_input)
{
	TP(p, "bad.vhd");
	uint8_t z[600] = { 0 };
	struct kl_file *f;

	/* truncated to nothing useful */
	mk(p, NULL, 4 << 20, NULL);
	ck_assert_ok(kl_io_open(p, KL_O_RDWR, &f));
	ck_assert_ok(kl_io_truncate(f, 300));
	kl_io_close(f);
	op_fails(p, 0, -EUCLEAN, "too small");
	/* not a VHD at all */
	ck_assert_ok(kl_io_open(p, KL_O_RDWR | KL_O_TRUNC, &f));
	ck_assert_ok(kl_io_pwrite(f, 0, z, sizeof(z)));
	kl_io_close(f);
	op_fails(p, 0, -EUCLEAN, "not a VHD");

	/* BAT entry past EOF */
	mk(p, NULL, 4 << 20, NULL);
	bat_patch(p, 1, 0x7FFFFFF0);
	op_fails(p, 0, -EUCLEAN, "BAT entry 1");
	/* BAT entry pointing into the header */
	mk(p, NULL, 4 << 20, NULL);
	{
		struct blk_dev *d = op(p, BLK_OPEN_RDWR);

		pattern_write(d, 0, 4 << 20, 1);
		blk_close(d);
	}
	bat_patch(p, 1, 1);
	op_fails(p, 0, -EUCLEAN, "overlaps");
	/* two entries sharing a block */
	mk(p, NULL, 4 << 20, NULL);
	{
		struct blk_dev *d = op(p, BLK_OPEN_RDWR);

		pattern_write(d, 0, 4 << 20, 1);
		blk_close(d);
	}
	{
		uint8_t b0[4];

		file_read(p, 1536, b0, 4);
		bat_patch(p, 1, get_be32(b0));
	}
	op_fails(p, 0, -EUCLEAN, "overlaps");
	/* BAT too small for the size */
	mk(p, NULL, 4 << 20, NULL);
	header_patch(p, 28, 1, 4);
	op_fails(p, 0, -EUCLEAN, "BAT has only 1 entries");
	/* absurd size: 2^62 bytes with 2^32-1 entries of 2 MiB cannot cover it */
	mk(p, NULL, 4 << 20, NULL);
	header_patch(p, 28, 0xFFFFFFFF, 4);
	footer_patch(p, 48, 1ULL << 62, 8, true);
	op_fails(p, 0, -EUCLEAN, "needs");
	/* absurd count: a BAT the file cannot hold */
	mk(p, NULL, 4 << 20, NULL);
	header_patch(p, 28, 0xFFFFFFFF, 4);
	footer_patch(p, 48, 0xFFFFFFFFULL << 21, 8, true);
	op_fails(p, 0, -EUCLEAN, "extends past the end of the file");
	/* table offset overflow bait */
	mk(p, NULL, 4 << 20, NULL);
	header_patch(p, 16, UINT64_MAX - 2, 8);
	op_fails(p, 0, -EUCLEAN, "BAT at offset");
	/* zero / non-power-of-two block size */
	mk(p, NULL, 4 << 20, NULL);
	header_patch(p, 32, 0, 4);
	op_fails(p, 0, -EUCLEAN, "block size 0");
	mk(p, NULL, 4 << 20, NULL);
	header_patch(p, 32, 3000, 4);
	op_fails(p, 0, -EUCLEAN, "not a power of two");
	/* header offset outside the file */
	mk(p, NULL, 4 << 20, NULL);
	footer_patch(p, 16, 1ULL << 40, 8, true);
	op_fails(p, 0, -EUCLEAN, "header offset");
	/* unknown disk type */
	mk(p, NULL, 4 << 20, NULL);
	footer_patch(p, 60, 7, 4, true);
	op_fails(p, 0, -ENOTSUP, "disk type 7");
	/* fixed disk claiming more data than the file holds */
	mk(p, "subformat=fixed", 1 << 20, NULL);
	footer_patch(p, 48, 1ULL << 40, 8, false);
	op_fails(p, 0, -EUCLEAN, "truncated");
	/* a truncated dynamic disk: the end footer is gone, the copy says the rest */
	mk(p, NULL, 8 << 20, NULL);
	{
		struct blk_dev *d = op(p, BLK_OPEN_RDWR);

		pattern_write(d, 0, 8 << 20, 1);
		blk_close(d);
	}
	ck_assert_ok(kl_io_open(p, KL_O_RDWR, &f));
	ck_assert_ok(kl_io_truncate(f, 5 << 20));
	kl_io_close(f);
	op_fails(p, 0, -EUCLEAN, "past");
}
END_TEST

/*
 * Crash at every I/O point of an allocating write + flush, in every mode:
 * the image opens (read-only) to the old or the new content.
 */
/*
 * After a cut allocation (modes: ERROR, CRASH, CRASH_TORN), keel check
 * finds at most an unreferenced block
 * (a leak) or, when the power cut dropped the new footer but kept the
 * file's new size, a lost end footer; check -r all fixes both, and the
 * image then checks clean, keeps its content and takes writes again.
 */
static void check_after_cut(const char *img, int diff, size_t m, uint64_t at, const uint8_t *want)
{
	struct blk_check_report cr;
	uint8_t *got = kl_malloc(3 << 20);
	struct blk_dev *d;

	d = op(img, BLK_OPEN_NO_PARENT);
	ck_assert_ok(blk_check(d, &cr, 0));
	for (size_t i = 0; i < cr.nmsgs; i++)
		ck_assert_msg(strstr(cr.msgs[i], "footer at the end") ||
				      strstr(cr.msgs[i], "no footer at the end") ||
				      strstr(cr.msgs[i], "(leaked"),
			      "diff=%d mode %zu point %llu: %s", diff, m, (unsigned long long)at,
			      cr.msgs[i]);
	/*
	 * A write error (ENOSPC, EIO: mode 0) never costs the end footer: the
	 * new footer is written before the old one is overwritten.
	 */
	if (m == 0)
		ck_assert_msg(cr.corruptions == 0, "diff=%d point %llu: an I/O error left %s", diff,
			      (unsigned long long)at, cr.nmsgs ? cr.msgs[0] : "");
	blk_check_report_release(&cr);
	blk_close(d);
	d = op(img, BLK_OPEN_RDWR | BLK_OPEN_REPAIR | BLK_OPEN_NO_PARENT);
	ck_assert_ok(blk_check(d, &cr, BLK_CHECK_REPAIR_ALL));
	ck_assert_uint_eq(cr.corruptions + cr.leaks, cr.repaired);
	blk_check_report_release(&cr);
	blk_close(d);
	d = op(img, BLK_OPEN_NO_PARENT);
	ck_assert_ok(blk_check(d, &cr, 0));
	ck_assert_msg(cr.corruptions + cr.leaks == 0, "diff=%d mode %zu point %llu: after -r: %s",
		      diff, m, (unsigned long long)at, cr.nmsgs ? cr.msgs[0] : "");
	blk_check_report_release(&cr);
	blk_close(d);
	d = op(img, BLK_OPEN_RDWR);
	ck_assert_ok(blk_pread(d, 1 << 20, got, 3 << 20));
	ck_assert(memcmp(got, want, 3 << 20) == 0);
	pattern_write(d, 6 << 20, 4096, 33);
	blk_close(d);
	d = op(img, 0);
	pattern_check(d, 6 << 20, 4096, 33);
	blk_close(d);
	kl_free(got);
}

START_TEST(crash_during_allocation)
{
	static const enum kl_fault_mode modes[] = { KL_FAULT_ERROR, KL_FAULT_CRASH,
						    KL_FAULT_CRASH_TORN };
	TP(p, "cr.vhd");
	TP(child, "crc.vhd");
	TP(pristine, "pristine.vhd");
	uint8_t *old = kl_malloc(3 << 20), *neu = kl_malloc(3 << 20), *got = kl_malloc(3 << 20);
	struct kl_fault_rule count = { .mode = KL_FAULT_NONE };
	uint64_t points;

	for (int diff = 0; diff < 2; diff++) {
		const char *img = diff ? child : p;
		struct blk_dev *d;

		/* base: block 0 written; the test writes across blocks 0..1 */
		mk(p, NULL, 8 << 20, NULL);
		d = op(p, BLK_OPEN_RDWR);
		pattern_write(d, 0, 1 << 20, 30);
		blk_close(d);
		if (diff) {
			/* block 0 of the child allocated, so the test also sets bitmap bits */
			mk(child, NULL, 0, "cr.vhd");
			d = op(child, BLK_OPEN_RDWR);
			pattern_write(d, 0, 4096, 29);
			blk_close(d);
		}
		tu_copy(img, pristine);
		d = op(img, 0);
		ck_assert_ok(blk_pread(d, 1 << 20, old, 3 << 20));
		blk_close(d);
		tu_fill(neu, 3 << 20, 31, 1 << 20);

		d = op(img, BLK_OPEN_RDWR);
		kl_fault_arm(&count);
		ck_assert_ok(blk_pwrite(d, 1 << 20, neu, 3 << 20));
		ck_assert_ok(blk_flush(d));
		points = kl_fault_points();
		kl_fault_reset();
		blk_close(d);
		ck_assert_uint_ge(points, 4);

		for (size_t m = 0; m < KL_ARRAY_SIZE(modes); m++) {
			for (uint64_t at = 1; at <= points; at++) {
				struct kl_fault_rule r = { .mode = modes[m], .at = at, .seed = at * 7 + m };
				int rc;

				tu_copy(pristine, img);
				d = op(img, BLK_OPEN_RDWR);
				kl_fault_arm(&r);
				rc = blk_pwrite(d, 1 << 20, neu, 3 << 20);
				if (rc == 0)
					rc = blk_flush(d);
				blk_close(d);
				kl_fault_settle();
				kl_fault_reset();
				ck_assert_int_lt(rc, 0);
				d = op(img, 0);
				ck_assert_ok(blk_pread(d, 1 << 20, got, 3 << 20));
				blk_close(d);
				/*
				 * In-place overwrites (MiB 1 of block 0) are old or new per
				 * sector; the newly allocated block 1 (MiB 2..3) as a whole,
				 * since its BAT entry is written only after a sync.
				 */
				for (uint64_t off = 0; off < (1 << 20); off += 512)
					ck_assert_msg(memcmp(got + off, old + off, 512) == 0 ||
						      memcmp(got + off, neu + off, 512) == 0,
						      "diff=%d mode %zu point %llu: sector %llu torn",
						      diff, m, (unsigned long long)at,
						      (unsigned long long)off / 512);
				ck_assert_msg(memcmp(got + (1 << 20), old + (1 << 20), 2 << 20) == 0 ||
					      memcmp(got + (1 << 20), neu + (1 << 20), 2 << 20) == 0,
					      "diff=%d mode %zu point %llu: block 1 is neither old nor new",
					      diff, m, (unsigned long long)at);
				check_after_cut(img, diff, m, at, got);
			}
		}
	}
	kl_free(old);
	kl_free(neu);
	kl_free(got);
}
END_TEST

START_TEST(short_footer_511)
{
	TP(p, "short.vhd");
	const struct blk_driver *drv;
	struct kl_file *f;
	struct blk_dev *d;
	struct blk_info in;

	/* old Virtual PC wrote 511-byte footers: the reserved last byte is missing */
	mk(p, "subformat=fixed,force_size=on", 1 << 20, NULL);
	d = op(p, BLK_OPEN_RDWR);
	pattern_write(d, 0, 1 << 20, 40);
	blk_close(d);
	ck_assert_ok(kl_io_open(p, KL_O_RDWR, &f));
	ck_assert_ok(kl_io_truncate(f, (1 << 20) + 511));
	kl_io_close(f);
	ck_assert_ok(blk_probe_file(p, &drv));
	ck_assert_str_eq(blk_driver_name(drv), "vhd");
	d = op(p, 0);
	ck_assert_uint_eq(blk_size(d), 1 << 20);
	pattern_check(d, 0, 1 << 20, 40);
	ck_assert_ok(blk_info(d, &in));
	ck_assert(strstr(info_kv(&in, "warning"), "511-byte footer") != NULL);
	blk_info_release(&in);
	blk_close(d);
}
END_TEST

static bool sample(const char *name, const char *out)
{
	if (access("tests/interop/data/ext2.vhd.gz", R_OK) != 0)
		return false;
	return tu_sh("gzip -dc tests/interop/data/%s.gz > '%s'", name, out) == 0;
}

START_TEST(interop_samples)
{
	struct blk_dev *d;
	struct blk_info in;
	char u[37];

	if (!sample("ext2.vhd", tu_path("ext2.vhd")))
		return; /* run from the source tree to use the samples */
	d = op(tu_path("ext2.vhd"), 0);
	ck_assert_uint_eq(blk_size(d), 4212736);
	blk_close(d);

	ck_assert(sample("fat-differential.vhd", tu_path("fat-differential.vhd")));
	op_fails(tu_path("fat-differential.vhd"), 0, -ENOENT, "parent not found");
	ck_assert(strstr(kl_errmsg(), "/fat-parent.vhd not found") != NULL);
	ck_assert(strstr(kl_errmsg(), "C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd") != NULL);
	d = op(tu_path("fat-differential.vhd"), BLK_OPEN_NO_PARENT);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.parent, "fat-parent.vhd");
	ck_assert_str_eq(info_kv(&in, "parent uuid"), "5fa21a55-f394-aa4d-9958-1951a67d5540");
	ck_assert_str_eq(info_kv(&in, "parent name"), "C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd");
	kl_uuid_format(in.uuid, u);
	ck_assert_str_eq(u, "f84f1636-cd9e-9041-a69e-dcc2380e416a");
	blk_info_release(&in);
	blk_close(d);

	ck_assert(sample("image.vhd", tu_path("image.vhd")));
	ck_assert(sample("image-differential.vhd", tu_path("image-differential.vhd")));
	op_fails(tu_path("image.vhd"), 0, -EBADMSG, "footer checksum mismatch");
	op_fails(tu_path("image-differential.vhd"), 0, -EBADMSG, "footer checksum mismatch");
	/* read past the checksums on request: the pair is a real chain (UUIDs match) */
	d = op(tu_path("image-differential.vhd"), BLK_OPEN_NO_CHECKSUM);
	ck_assert_ptr_nonnull(blk_parent(d));
	ck_assert_ok(blk_info(d, &in));
	ck_assert(strstr(info_kv(&in, "warning"), "dynamic disk header checksum") != NULL);
	blk_info_release(&in);
	blk_close(d);
}
END_TEST

static Suite *vhd_suite(void)
{
	Suite *s = suite_create("vhd");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, probe_footer_at_end);
	tcase_add_test(tc, dynamic_write_read_reopen);
	tcase_add_test(tc, fixed_write_read_reopen);
	tcase_add_test(tc, size_rounding_and_azure);
	tcase_add_test(tc, block_sizes);
	tcase_add_test(tc, footer_copy_fallback);
	tcase_add_test(tc, header_checksum);
	tcase_add_test(tc, short_footer_511);
	tcase_add_test(tc, differencing_chain);
	tcase_add_test(tc, parent_missing_wrong_loop);
	tcase_add_test(tc, bad_input);
	tcase_add_test(tc, crash_during_allocation);
	tcase_add_test(tc, interop_samples);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(vhd_suite());
}
