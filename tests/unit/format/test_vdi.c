/*
 * tests/unit/format/test_vdi.c - format/vdi.c: create, write, read, reopen
 * for dynamic, fixed and differencing images; zero and free block map
 * entries; UUID byte order; bad input; crash safety of allocation.
 */
#include "tests/common/testutil.h"

#include <string.h>
#include <unistd.h>

#define TP(var, name)                                                      \
	char var[640];                                                     \
	snprintf(var, sizeof(var), "%s", tu_path(name))

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

static void le32_patch(const char *path, uint64_t off, uint32_t v)
{
	uint8_t b[4];

	put_le32(b, v);
	file_write(path, off, b, 4);
}

static void mk(const char *path, const char *opts, uint64_t size, const char *parent)
{
	struct blk_create_opts o = { .size = size, .parent = parent };
	struct kl_opts *ko = NULL;

	unlink(path);
	if (opts)
		ck_assert_ok(kl_opts_parse(opts, &ko));
	o.opts = ko;
	ck_assert_ok(blk_create(path, "vdi", &o));
	kl_opts_free(ko);
}

static struct blk_dev *op(const char *path, unsigned flags)
{
	struct blk_open_opts o = { .format = "vdi", .flags = flags };
	struct blk_dev *d = NULL;

	ck_assert_ok(blk_open(path, &o, &d));
	return d;
}

static void op_fails(const char *path, unsigned flags, int code, const char *what)
{
	struct blk_open_opts o = { .format = "vdi", .flags = flags };
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

static const char *info_kv(struct blk_info *in, const char *key)
{
	for (size_t i = 0; i < in->nextra; i++)
		if (strcmp(in->extra[i].key, key) == 0)
			return in->extra[i].val;
	return NULL;
}

START_TEST(probe)
{
	const struct blk_driver *drv;

	mk(tu_path("p.vdi"), NULL, 1 << 20, NULL);
	ck_assert_ok(blk_probe_file(tu_path("p.vdi"), &drv));
	ck_assert_str_eq(blk_driver_name(drv), "vdi");
}
END_TEST

START_TEST(dynamic_write_read_reopen)
{
	TP(p, "dyn.vdi");
	struct blk_dev *d;
	struct blk_extent e;
	uint8_t h[512];
	uint32_t map[10];

	mk(p, NULL, (10 << 20) + 1000, NULL); /* odd size: rounded up to a sector */
	d = op(p, BLK_OPEN_RDWR);
	ck_assert_uint_eq(blk_size(d), (10 << 20) + 1024);
	ck_assert_uint_eq(blk_cluster_size(d), 1 << 20);
	/* allocation order, not LBA order: block 5, then 1, then 0 */
	pattern_write(d, (5 << 20) + 300, 70000, 1);
	pattern_write(d, (1 << 20) - 100, 200, 2); /* straddles blocks 0 and 1 */
	pattern_write(d, (10 << 20), 1024, 3);	  /* the short last block */
	ck_assert_ok(blk_block_status(d, 2 << 20, 8 << 20, &e));
	ck_assert_int_eq(e.type, BLK_ZERO);
	ck_assert_uint_eq(e.len, 3 << 20);
	blk_close(d);
	d = op(p, 0);
	pattern_check(d, (5 << 20) + 300, 70000, 1);
	pattern_check(d, (1 << 20) - 100, 200, 2);
	pattern_check(d, 10 << 20, 1024, 3);
	zero_check(d, 0, (1 << 20) - 100);
	zero_check(d, (5 << 20), 300);
	blk_close(d);
	/* on disk: signature, version 1.1, blocks_allocated, map in allocation order */
	file_read(p, 0, h, 512);
	ck_assert_uint_eq(get_le32(h + 0x40), 0xBEDA107F);
	ck_assert_uint_eq(get_le32(h + 0x44), 0x00010001);
	ck_assert_uint_eq(get_le32(h + 0x184), 4);
	file_read(p, get_le32(h + 0x154), map, sizeof(map));
	ck_assert_uint_eq(get_le32(&map[5]), 0);
	ck_assert_uint_eq(get_le32(&map[0]), 1);
	ck_assert_uint_eq(get_le32(&map[1]), 2);
	ck_assert_uint_eq(get_le32(&map[2]), 0xFFFFFFFF);
}
END_TEST

START_TEST(fixed_and_static)
{
	TP(p, "fix.vdi");
	struct blk_dev *d;
	struct blk_info in;
	uint8_t h[512];

	mk(p, "static=on", 3 << 20, NULL);
	file_read(p, 0, h, 512);
	ck_assert_uint_eq(get_le32(h + 0x4C), 2);
	ck_assert_uint_eq(get_le32(h + 0x184), 3);
	d = op(p, BLK_OPEN_RDWR);
	zero_check(d, 0, 3 << 20);
	pattern_write(d, 12345, 100000, 4);
	blk_close(d);
	d = op(p, 0);
	pattern_check(d, 12345, 100000, 4);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.subformat, "fixed");
	ck_assert_str_eq(info_kv(&in, "blocks allocated"), "3 of 3");
	blk_info_release(&in);
	blk_close(d);
	{
		struct blk_create_opts o = { .size = 1 << 20 };
		struct kl_opts *ko = NULL;

		ck_assert_ok(kl_opts_parse("subformat=fixed,static=off", &ko));
		o.opts = ko;
		ck_assert_int_eq(blk_create(tu_path("x.vdi"), "vdi", &o), -EINVAL);
		kl_opts_free(ko);
	}
}
END_TEST

START_TEST(uuid_byte_order)
{
	TP(p, "u.vdi");
	struct blk_dev *d;
	struct blk_info in;
	uint8_t h[512];
	char want[37];

	mk(p, NULL, 1 << 20, NULL);
	file_read(p, 0, h, 512);
	/* stored mixed-endian: the RFC 4122 version nibble sits in byte 7 */
	ck_assert_uint_eq(h[0x188 + 7] >> 4, 4);
	snprintf(want, sizeof(want), "%02x%02x%02x%02x-%02x%02x-%02x%02x", h[0x18b], h[0x18a],
		 h[0x189], h[0x188], h[0x18d], h[0x18c], h[0x18f], h[0x18e]);
	d = op(p, 0);
	ck_assert_ok(blk_info(d, &in));
	{
		char got[37];

		kl_uuid_format(in.uuid, got);
		ck_assert_msg(strncmp(got, want, 18) == 0, "%s vs %s", got, want);
	}
	ck_assert_ptr_nonnull(info_kv(&in, "modification uuid"));
	blk_info_release(&in);
	blk_close(d);
}
END_TEST

START_TEST(zero_and_free_entries)
{
	TP(p, "z.vdi");
	struct blk_dev *d;
	struct blk_extent e;

	mk(p, NULL, 4 << 20, NULL);
	d = op(p, BLK_OPEN_RDWR);
	pattern_write(d, 0, 4 << 20, 5);
	blk_close(d);
	/* block 2 -> zero block marker: reads zeros, reported ZERO */
	le32_patch(p, 512 + 2 * 4, 0xFFFFFFFE);
	d = op(p, 0);
	ck_assert_ok(blk_block_status(d, 2 << 20, 1 << 20, &e));
	ck_assert_int_eq(e.type, BLK_ZERO);
	zero_check(d, 2 << 20, 1 << 20);
	pattern_check(d, 3 << 20, 1 << 20, 5);
	blk_close(d);
}
END_TEST

START_TEST(differencing_chain)
{
	TP(base, "base.vdi");
	TP(child, "child.vdi");
	TP(other, "other.vdi");
	struct blk_dev *d;
	struct blk_extent e;
	struct blk_info in;

	mk(base, NULL, 4 << 20, NULL);
	d = op(base, BLK_OPEN_RDWR);
	pattern_write(d, 0, 4 << 20, 10);
	blk_close(d);
	mk(other, NULL, 4 << 20, NULL); /* a decoy in the same directory */
	mk(child, NULL, 0, "base.vdi");
	d = op(child, BLK_OPEN_RDWR);
	ck_assert_ptr_nonnull(blk_parent(d));
	pattern_check(d, 0, 4 << 20, 10);
	ck_assert_ok(blk_block_status(d, 0, 4 << 20, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	pattern_write(d, (1 << 20) + 4096, 8192, 11); /* partial: rest comes from the parent */
	ck_assert_ok(blk_pwrite_zeroes(d, 3 << 20, 1 << 20, BLK_ZERO_MAY_UNMAP));
	blk_close(d);
	d = op(child, 0);
	pattern_check(d, 0, (1 << 20) + 4096, 10);
	pattern_check(d, (1 << 20) + 4096, 8192, 11);
	pattern_check(d, (1 << 20) + 4096 + 8192, (2 << 20) - 4096 - 8192, 10);
	zero_check(d, 3 << 20, 1 << 20);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.subformat, "differencing");
	ck_assert_str_eq(in.parent, "base.vdi");
	blk_info_release(&in);
	blk_close(d);
	/* parent gone: a clear error naming the UUID looked for */
	unlink(base);
	op_fails(child, 0, -ENOENT, "parent not found");
	d = op(child, BLK_OPEN_NO_PARENT);
	blk_close(d);
	/* the child copied over the parent's name finds itself only through a loop */
	ck_assert_int_eq(tu_sh("cp '%s' '%s'", child, base), 0);
	{
		uint8_t u[16];

		/* make the copy's image UUID the child's link UUID: child -> base -> child */
		file_read(child, 0x1A8, u, 16);
		file_write(base, 0x188, u, 16);
		file_read(child, 0x188, u, 16);
		file_write(base, 0x1A8, u, 16);
	}
	op_fails(child, 0, -ELOOP, "loops");
}
END_TEST

START_TEST(bad_input)
{
	TP(p, "bad.vdi");
	struct kl_file *f;
	struct blk_dev *d;

	mk(p, NULL, 4 << 20, NULL);
	ck_assert_ok(kl_io_open(p, KL_O_RDWR, &f));
	ck_assert_ok(kl_io_truncate(f, 100));
	kl_io_close(f);
	op_fails(p, 0, -EUCLEAN, "too small");

	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x40, 0x12345678);
	op_fails(p, 0, -EUCLEAN, "not a VDI");
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x44, 0x00020000);
	op_fails(p, 0, -ENOTSUP, "version 2.0");
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x48, 0xFFFFFFF0);
	op_fails(p, 0, -EUCLEAN, "header size");
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x4C, 3);
	op_fails(p, 0, -ENOTSUP, "undo");
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x4C, 9);
	op_fails(p, 0, -EUCLEAN, "image type 9");
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x168, 4096);
	op_fails(p, 0, -ENOTSUP, "sector size");
	/* zero geometry: block size 0 */
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x178, 0);
	op_fails(p, 0, -EUCLEAN, "block size 0");
	/* too few blocks for the disk size (absurd size) */
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x170 + 4, 0x10000);
	op_fails(p, 0, -EUCLEAN, "needs");
	/* absurd count: a block map the file cannot hold */
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x180, 0x3FFFFFFF);
	op_fails(p, 0, -EUCLEAN, "extends past the end");
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x180, 0xFFFFFFFF);
	op_fails(p, 0, -EUCLEAN, "");
	/* data area overlapping the map; map overlapping the header */
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x158, 512);
	op_fails(p, 0, -EUCLEAN, "overlaps the block map");
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x154, 16);
	op_fails(p, 0, -EUCLEAN, "overlaps the header");
	/* map entry past EOF; duplicate entries */
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 512 + 4, 1000);
	op_fails(p, 0, -EUCLEAN, "past the end of the file");
	mk(p, NULL, 4 << 20, NULL);
	d = op(p, BLK_OPEN_RDWR);
	pattern_write(d, 0, 2 << 20, 1);
	blk_close(d);
	le32_patch(p, 512 + 1 * 4, 0);
	op_fails(p, 0, -EUCLEAN, "both point to data block 0");
	/* truncated data area */
	mk(p, NULL, 4 << 20, NULL);
	d = op(p, BLK_OPEN_RDWR);
	pattern_write(d, 0, 4 << 20, 1);
	blk_close(d);
	ck_assert_ok(kl_io_open(p, KL_O_RDWR, &f));
	ck_assert_ok(kl_io_truncate(f, (2 << 20) + 5000));
	kl_io_close(f);
	op_fails(p, 0, -EUCLEAN, "past the end of the file");
	/* a differencing image with a null link UUID */
	mk(p, NULL, 4 << 20, NULL);
	le32_patch(p, 0x4C, 4);
	op_fails(p, 0, -EUCLEAN, "null parent");
}
END_TEST

START_TEST(crash_during_allocation)
{
	static const enum kl_fault_mode modes[] = { KL_FAULT_ERROR, KL_FAULT_CRASH,
						    KL_FAULT_CRASH_TORN };
	TP(p, "cr.vdi");
	TP(pristine, "pristine.vdi");
	uint8_t *old = kl_malloc(3 << 20), *neu = kl_malloc(3 << 20), *got = kl_malloc(3 << 20);
	struct kl_fault_rule count = { .mode = KL_FAULT_NONE };
	struct blk_dev *d;
	uint64_t points;

	mk(p, NULL, 8 << 20, NULL);
	d = op(p, BLK_OPEN_RDWR);
	pattern_write(d, 0, 1 << 20, 30);
	blk_close(d);
	tu_copy(p, pristine);
	d = op(p, 0);
	ck_assert_ok(blk_pread(d, 512 * 1024, old, 3 << 20));
	blk_close(d);
	tu_fill(neu, 3 << 20, 31, 512 * 1024);
	d = op(p, BLK_OPEN_RDWR);
	kl_fault_arm(&count);
	ck_assert_ok(blk_pwrite(d, 512 * 1024, neu, 3 << 20));
	ck_assert_ok(blk_flush(d));
	points = kl_fault_points();
	kl_fault_reset();
	blk_close(d);
	ck_assert_uint_ge(points, 4);
	for (size_t m = 0; m < KL_ARRAY_SIZE(modes); m++) {
		for (uint64_t at = 1; at <= points; at++) {
			struct kl_fault_rule r = { .mode = modes[m], .at = at, .seed = at * 13 + m };
			int rc;

			tu_copy(pristine, p);
			d = op(p, BLK_OPEN_RDWR);
			kl_fault_arm(&r);
			rc = blk_pwrite(d, 512 * 1024, neu, 3 << 20);
			if (rc == 0)
				rc = blk_flush(d);
			blk_close(d);
			kl_fault_settle();
			kl_fault_reset();
			ck_assert_int_lt(rc, 0);
			d = op(p, 0);
			ck_assert_ok(blk_pread(d, 512 * 1024, got, 3 << 20));
			blk_close(d);
			/* in-place half of block 0: per sector; new blocks 1..3: whole */
			for (uint64_t off = 0; off < 512 * 1024; off += 512)
				ck_assert_msg(memcmp(got + off, old + off, 512) == 0 ||
					      memcmp(got + off, neu + off, 512) == 0,
					      "mode %zu point %llu: sector %llu torn", m,
					      (unsigned long long)at, (unsigned long long)off / 512);
			for (uint64_t off = 512 * 1024; off < (3 << 20); off += 1 << 20) {
				size_t n = (size_t)KL_MIN((uint64_t)1 << 20, (3 << 20) - off);

				ck_assert_msg(memcmp(got + off, old + off, n) == 0 ||
					      memcmp(got + off, neu + off, n) == 0,
					      "mode %zu point %llu: block at %llu neither old nor new", m,
					      (unsigned long long)at, (unsigned long long)off);
			}
			/*
			 * keel check finds no corruption: at most leaked blocks,
			 * never a header count below a block in use (qemu and
			 * VirtualBox allocate at blocks_allocated: a stale low
			 * count makes them overwrite that block). check -r all
			 * gives back the leaked tail and leaves it clean.
			 */
			{
				struct blk_check_report cr;

				d = op(p, 0);
				ck_assert_ok(blk_check(d, &cr, 0));
				ck_assert_msg(cr.corruptions == 0, "mode %zu point %llu: %s", m,
					      (unsigned long long)at, cr.nmsgs ? cr.msgs[0] : "");
				blk_check_report_release(&cr);
				blk_close(d);
				d = op(p, BLK_OPEN_RDWR | BLK_OPEN_REPAIR);
				ck_assert_ok(blk_check(d, &cr, BLK_CHECK_REPAIR_ALL));
				blk_check_report_release(&cr);
				blk_close(d);
				d = op(p, 0);
				ck_assert_ok(blk_check(d, &cr, 0));
				ck_assert_msg(cr.corruptions + cr.leaks == 0,
					      "mode %zu point %llu: after -r all: %s", m,
					      (unsigned long long)at, cr.nmsgs ? cr.msgs[0] : "");
				blk_check_report_release(&cr);
				/* and the repair changed no guest byte */
				{
					uint8_t *again = kl_malloc(3 << 20);

					ck_assert_ok(blk_pread(d, 512 * 1024, again, 3 << 20));
					ck_assert(memcmp(again, got, 3 << 20) == 0);
					kl_free(again);
				}
				blk_close(d);
			}
			/* a later writer can still use the image */
			d = op(p, BLK_OPEN_RDWR);
			pattern_write(d, 6 << 20, 4096, 32);
			blk_close(d);
			d = op(p, 0);
			pattern_check(d, 6 << 20, 4096, 32);
			blk_close(d);
		}
	}
	kl_free(old);
	kl_free(neu);
	kl_free(got);
}
END_TEST

static Suite *vdi_suite(void)
{
	Suite *s = suite_create("vdi");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, probe);
	tcase_add_test(tc, dynamic_write_read_reopen);
	tcase_add_test(tc, fixed_and_static);
	tcase_add_test(tc, uuid_byte_order);
	tcase_add_test(tc, zero_and_free_entries);
	tcase_add_test(tc, differencing_chain);
	tcase_add_test(tc, bad_input);
	tcase_add_test(tc, crash_during_allocation);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(vdi_suite());
}
