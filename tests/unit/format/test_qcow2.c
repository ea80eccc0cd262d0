/*
 * tests/unit/format/test_qcow2.c - the qcow2 driver through the block API:
 * create, unaligned writes against a model, reopen, compression, zero
 * writes, backing-file copy-on-write, geometry variants, refcount table
 * growth, bad input, and a power-cut loop over every I/O point of an
 * allocating write (the image must open with no corruption and every
 * byte old or new); internal snapshots created, deleted and reverted to,
 * with a power cut at every I/O point of each of those. The writes and the
 * power cuts run on a LUKS-encrypted image too.
 */
#include "tests/common/testutil.h"

#include <stdlib.h>
#include <string.h>

#define MIB (1u << 20)

/* The passphrase of the images of the LUKS cases (NULL: not encrypted). */
static const char *test_key;
#define LUKS_OPTS "encrypt.format=luks,encrypt.iter-time=1"

static struct blk_open_opts img_opts(unsigned flags)
{
	struct blk_open_opts o = { .format = "qcow2", .flags = flags };

	if (test_key) {
		o.key = (const uint8_t *)test_key;
		o.key_len = strlen(test_key);
	}
	return o;
}

static struct blk_dev *open_img(const char *path, unsigned flags)
{
	struct blk_open_opts o = img_opts(flags);
	struct blk_dev *d = NULL;

	ck_assert_ok(blk_open(path, &o, &d));
	return d;
}

static void create_img(const char *path, uint64_t size, const char *opts, const char *parent,
		       const char *pfmt)
{
	struct blk_create_opts co = { .size = size, .parent = parent, .parent_format = pfmt };

	if (test_key) {
		co.key = (const uint8_t *)test_key;
		co.key_len = strlen(test_key);
		if (!opts)
			opts = LUKS_OPTS;
	}
	if (opts)
		ck_assert_ok(kl_opts_parse(opts, &co.opts));
	ck_assert_ok(blk_create(path, "qcow2", &co));
	kl_opts_free(co.opts);
}

/* Whole-image comparison with a model, in odd-sized chunks. */
static void verify(struct blk_dev *d, const uint8_t *model, uint64_t size)
{
	size_t chunk = 300007;
	uint8_t *buf = malloc(chunk);

	ck_assert_uint_eq(blk_size(d), size);
	for (uint64_t off = 0; off < size; off += chunk) {
		size_t n = (size_t)KL_MIN((uint64_t)chunk, size - off);

		ck_assert_ok(blk_pread(d, off, buf, n));
		if (memcmp(buf, model + off, n) != 0) {
			size_t i = 0;

			while (buf[i] == model[off + i])
				i++;
			ck_abort_msg("byte %llu differs: %02x, expected %02x",
				     (unsigned long long)(off + i), buf[i], model[off + i]);
		}
	}
	free(buf);
}

static void check_clean(struct blk_dev *d, bool allow_leaks)
{
	struct blk_check_report r;

	ck_assert_ok(blk_check(d, &r, 0));
	ck_assert_msg(r.corruptions == 0, "%llu corruptions, first: %s",
		      (unsigned long long)r.corruptions, r.nmsgs ? r.msgs[0] : "-");
	if (!allow_leaks)
		ck_assert_msg(r.leaks == 0, "%llu leaks, first: %s", (unsigned long long)r.leaks,
			      r.nmsgs ? r.msgs[0] : "-");
	blk_check_report_release(&r);
}

static void qemu_check(const char *path)
{
	if (!tu_have("qemu-img"))
		return;
	if (test_key)
		ck_assert_int_eq(tu_sh("qemu-img check -q --object secret,id=s0,data='%s' "
				       "--image-opts driver=qcow2,file.filename='%s',"
				       "encrypt.key-secret=s0", test_key, path), 0);
	else
		ck_assert_int_eq(tu_sh("qemu-img check -q -f qcow2 '%s'", path), 0);
}

/* The writes every geometry gets: unaligned, across clusters and L2 tables. */
struct wr {
	uint64_t off, len;
	int pat; /* -1: zeros via pwrite_zeroes, -2: discard */
};

static const struct wr writes[] = {
	{ 1000, 70000, 0x11 },	    { 65535, 2, 0x22 },	     { 3 * MIB - 7, 200000, 0x33 },
	{ 0, 4096, 0x44 },	    { 5 * MIB, 2 * MIB, 0x55 }, { 5 * MIB + 4000, 100, -1 },
	{ 6 * MIB, 300000, -2 },    { 6 * MIB + 1, 1, 0x66 },  { 8 * MIB - 3, 3, 0x77 },
	{ 1 * MIB, 64 * 1024, -1 }, { 2 * MIB - 10, 20, 0x88 },
};

static void apply_writes(struct blk_dev *d, uint8_t *model, uint64_t seed)
{
	for (size_t i = 0; i < KL_ARRAY_SIZE(writes); i++) {
		const struct wr *w = &writes[i];
		uint8_t *buf = malloc(w->len);

		if (w->pat >= 0) {
			tu_fill(buf, w->len, seed + (uint64_t)w->pat, w->off);
			ck_assert_ok(blk_pwrite(d, w->off, buf, w->len));
			memcpy(model + w->off, buf, w->len);
		} else if (w->pat == -1) {
			ck_assert_ok(blk_pwrite_zeroes(d, w->off, w->len, 0));
			memset(model + w->off, 0, w->len);
		} else {
			ck_assert_ok(blk_discard(d, w->off, w->len));
			memset(model + w->off, 0, w->len);
		}
		free(buf);
	}
}

static void geometry_case(const char *opts, const char *name)
{
	const char *p = tu_path(name);
	uint64_t size = 8 * MIB;
	uint8_t *model = calloc(1, size);
	struct blk_dev *d;

	create_img(p, size, opts, NULL, NULL);
	d = open_img(p, BLK_OPEN_RDWR);
	apply_writes(d, model, 1);
	verify(d, model, size);
	ck_assert_ok(blk_flush(d));
	check_clean(d, false);
	blk_close(d);
	d = open_img(p, 0);
	verify(d, model, size);
	check_clean(d, false);
	blk_close(d);
	/* a second round over the written image: overwrites in place and COW */
	d = open_img(p, BLK_OPEN_RDWR);
	apply_writes(d, model, 2);
	blk_close(d);
	d = open_img(p, 0);
	verify(d, model, size);
	check_clean(d, false);
	blk_close(d);
	qemu_check(p);
	free(model);
}

START_TEST(create_and_info)
{
	const char *p = tu_path("info.qcow2");
	struct blk_info in;
	struct blk_dev *d;

	create_img(p, 10 * MIB + 5, NULL, NULL, NULL);
	d = open_img(p, 0);
	/* qemu counts whole 512-byte sectors */
	ck_assert_uint_eq(blk_size(d), 10 * MIB + 512);
	ck_assert_uint_eq(blk_cluster_size(d), 65536);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.format, "qcow2");
	ck_assert_str_eq(in.subformat, "v3");
	ck_assert_str_eq(in.compression, "zlib");
	ck_assert(!in.dirty && !in.corrupt && !in.parent && in.nsnaps == 0);
	blk_info_release(&in);
	check_clean(d, false);
	blk_close(d);
	qemu_check(p);
}
END_TEST

START_TEST(unaligned_writes_default)
{
	geometry_case(NULL, "g64k.qcow2");
}
END_TEST

START_TEST(unaligned_writes_512_rb1)
{
	geometry_case("cluster_size=512,refcount_bits=1", "g512.qcow2");
}
END_TEST

START_TEST(unaligned_writes_4k_rb64)
{
	geometry_case("cluster_size=4K,refcount_bits=64", "g4k.qcow2");
}
END_TEST

START_TEST(unaligned_writes_2m_rb2)
{
	geometry_case("cluster_size=2M,refcount_bits=2", "g2m.qcow2");
}
END_TEST

START_TEST(unaligned_writes_extl2)
{
	geometry_case("extended_l2=on,cluster_size=32K", "gx.qcow2");
}
END_TEST

START_TEST(unaligned_writes_v2)
{
	geometry_case("compat=0.10,cluster_size=1K", "gv2.qcow2");
}
END_TEST

START_TEST(unaligned_writes_compressed)
{
	geometry_case("compress=on", "gz.qcow2");
	geometry_case("compress=on,compression_type=zstd,cluster_size=4K", "gzs.qcow2");
}
END_TEST

static void compressed_case(const char *opts, const char *name)
{
	const char *p = tu_path(name);
	struct blk_open_opts o = { .format = "qcow2", .flags = BLK_OPEN_RDWR };
	uint64_t size = 4 * MIB;
	uint8_t *model = calloc(1, size);
	struct blk_extent e;
	struct blk_dev *d;

	create_img(p, size, opts, NULL, NULL);
	/* compress=on reaches the writes through the open options as well */
	ck_assert_ok(kl_opts_parse("compress=on", &o.opts));
	ck_assert_ok(blk_open(p, &o, &d));
	kl_opts_free(o.opts);
	/* compressible text, one cluster of noise, then text again */
	for (uint64_t i = 0; i < 3 * MIB; i++)
		model[i] = (uint8_t)("keel qcow2 compressed cluster test "[i % 35]);
	tu_fill(model + MIB, 65536, 9, 0);
	ck_assert_ok(blk_pwrite(d, 0, model, 3 * MIB));
	ck_assert_ok(blk_block_status(d, 0, size, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert(e.flags & BLK_EXT_COMPRESSED);
	ck_assert_ok(blk_block_status(d, MIB, size - MIB, &e));
	ck_assert(!(e.flags & BLK_EXT_COMPRESSED)); /* noise did not shrink: stored plain */
	verify(d, model, size);
	/* partial overwrite of a compressed cluster: read, patch, store uncompressed */
	memset(model + 100, 0xee, 1000);
	ck_assert_ok(blk_pwrite(d, 100, model + 100, 1000));
	verify(d, model, size);
	blk_close(d);
	d = open_img(p, 0);
	verify(d, model, size);
	check_clean(d, false);
	blk_close(d);
	qemu_check(p);
	if (tu_have("qemu-img")) {
		/* qemu reads our compressed clusters back */
		FILE *f = fopen(tu_path("model.raw"), "wb");

		ck_assert(fwrite(model, 1, size, f) == size);
		fclose(f);
		ck_assert_int_eq(tu_sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s'",
				       tu_path("model.raw"), p), 0);
	}
	free(model);
}

START_TEST(compressed_zlib)
{
	compressed_case(NULL, "cz.qcow2");
}
END_TEST

START_TEST(compressed_zstd_refcount1)
{
	/* 1-bit refcounts: every compressed cluster needs its own host cluster */
	compressed_case("compression_type=zstd,refcount_bits=1", "czs.qcow2");
	compressed_case("cluster_size=512", "cz512.qcow2");
}
END_TEST

START_TEST(compressed_from_partial_writes)
{
	/* 64 KiB writes into 256 KiB clusters, skipping blocks, as convert -c does */
	const char *p = tu_path("cstage.qcow2");
	uint64_t size = 2 * MIB, cs = 256 * 1024;
	uint8_t *model = calloc(1, size), tmp[100];
	struct blk_extent e;
	struct blk_dev *d;

	create_img(p, size, "cluster_size=256K,compress=on", NULL, NULL);
	d = open_img(p, BLK_OPEN_RDWR);
	for (uint64_t i = 0; i < size; i++)
		model[i] = (uint8_t)("staged compressed write "[i % 24]);
	memset(model + 64 * 1024, 0, 64 * 1024);  /* skipped: reads as zeros */
	memset(model + cs + 3 * 65536, 0, 65536); /* last block of cluster 1 skipped */
	for (uint64_t off = 0; off < size; off += 65536) {
		if (kl_is_zero(model + off, 65536))
			continue;
		ck_assert_ok(blk_pwrite(d, off, model + off, 65536));
		if (off == 5 * cs + 65536) /* a read in the middle stores the cluster early */
			ck_assert_ok(blk_pread(d, off, tmp, sizeof(tmp)));
	}
	verify(d, model, size);
	ck_assert_ok(blk_block_status(d, 0, cs, &e));
	ck_assert(e.flags & BLK_EXT_COMPRESSED);
	ck_assert_ok(blk_block_status(d, cs, cs, &e));
	ck_assert(e.flags & BLK_EXT_COMPRESSED);
	blk_close(d);
	d = open_img(p, 0);
	verify(d, model, size);
	check_clean(d, false);
	blk_close(d);
	qemu_check(p);
	free(model);
}
END_TEST

START_TEST(zero_and_discard_status)
{
	const char *p = tu_path("zero.qcow2");
	uint8_t buf[65536];
	struct blk_extent e;
	struct blk_dev *d;

	create_img(p, 4 * MIB, NULL, NULL, NULL);
	d = open_img(p, BLK_OPEN_RDWR);
	ck_assert_ok(blk_block_status(d, 0, 4 * MIB, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	ck_assert_uint_eq(e.len, 4 * MIB); /* one extent for the whole empty image */
	memset(buf, 0xab, sizeof(buf));
	for (int i = 0; i < 16; i++)
		ck_assert_ok(blk_pwrite(d, (uint64_t)i * 65536, buf, sizeof(buf)));
	ck_assert_ok(blk_block_status(d, 0, 4 * MIB, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert_uint_eq(e.len, MIB); /* contiguous clusters merge into one extent */
	ck_assert_ok(blk_pwrite_zeroes(d, 65536, 2 * 65536, 0));
	ck_assert_ok(blk_block_status(d, 65536, 4 * MIB, &e));
	ck_assert_int_eq(e.type, BLK_ZERO);
	ck_assert_uint_eq(e.len, 2 * 65536);
	ck_assert_ok(blk_discard(d, 4 * 65536, 65536));
	ck_assert_ok(blk_block_status(d, 4 * 65536, 4 * MIB, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	ck_assert_ok(blk_pread(d, 65536, buf, sizeof(buf)));
	ck_assert(kl_is_zero(buf, sizeof(buf)));
	blk_close(d);
	d = open_img(p, 0);
	check_clean(d, false);
	blk_close(d);
	qemu_check(p);
}
END_TEST

START_TEST(backing_cow)
{
	const char *base = tu_path("base.raw"), *ov = tu_path("ov.qcow2");
	uint64_t size = 3 * MIB + 512;
	uint8_t *model = malloc(size), buf[5000];
	struct blk_create_opts co = { .size = size };
	struct blk_open_opts ro = { .format = "raw", .flags = BLK_OPEN_RDWR };
	struct blk_extent e;
	struct blk_dev *d;
	struct blk_info in;

	tu_fill(model, size, 42, 0);
	ck_assert_ok(blk_create(base, "raw", &co));
	ck_assert_ok(blk_open(base, &ro, &d));
	ck_assert_ok(blk_pwrite(d, 0, model, size));
	blk_close(d);
	create_img(ov, 0, NULL, "base.raw", "raw");
	d = open_img(ov, BLK_OPEN_RDWR);
	ck_assert_uint_eq(blk_size(d), size);
	ck_assert_ok(blk_block_status(d, 0, size, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	verify(d, model, size);
	/* partial-cluster writes keep the rest of the cluster from the parent */
	memset(buf, 0x5c, sizeof(buf));
	ck_assert_ok(blk_pwrite(d, 70000, buf, sizeof(buf)));
	memcpy(model + 70000, buf, sizeof(buf));
	ck_assert_ok(blk_pwrite(d, size - 100, buf, 100));
	memcpy(model + size - 100, buf, 100);
	/* zeros over a parent must hide it (zero flag), not unallocate */
	ck_assert_ok(blk_pwrite_zeroes(d, 2 * MIB, 65536, BLK_ZERO_MAY_UNMAP));
	memset(model + 2 * MIB, 0, 65536);
	ck_assert_ok(blk_discard(d, 2 * MIB + 65536 + 10, 1000));
	memset(model + 2 * MIB + 65536 + 10, 0, 1000);
	verify(d, model, size);
	blk_close(d);
	d = open_img(ov, 0);
	verify(d, model, size);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.parent, "base.raw");
	ck_assert_str_eq(in.parent_format, "raw");
	blk_info_release(&in);
	check_clean(d, false);
	blk_close(d);
	/* without its parent the overlay must not take partial writes */
	d = open_img(ov, BLK_OPEN_RDWR | BLK_OPEN_NO_PARENT);
	ck_assert_int_eq(blk_pwrite(d, 3, buf, 10), -EINVAL);
	ck_assert(strstr(kl_errmsg(), "without its backing file"));
	blk_close(d);
	qemu_check(ov);
	free(model);
}
END_TEST

START_TEST(refcount_table_grows)
{
	const char *p = tu_path("grow.qcow2");
	uint64_t size = 16 * MIB;
	uint8_t *model = calloc(1, size);
	struct blk_dev *d;

	/* 512-byte clusters, 64-bit refcounts: one table cluster covers 2 MiB */
	create_img(p, size, "cluster_size=512,refcount_bits=64", NULL, NULL);
	d = open_img(p, BLK_OPEN_RDWR);
	tu_fill(model, size, 7, 0);
	for (uint64_t off = 0; off < size; off += MIB)
		ck_assert_ok(blk_pwrite(d, off, model + off, MIB));
	blk_close(d);
	d = open_img(p, 0);
	verify(d, model, size);
	check_clean(d, false);
	blk_close(d);
	qemu_check(p);
	free(model);
}
END_TEST

START_TEST(check_repairs_leaks)
{
	const char *p = tu_path("leak.qcow2");
	struct blk_check_report r;
	struct blk_dev *d;
	uint8_t be[2];
	struct kl_file *f;

	create_img(p, MIB, NULL, NULL, NULL);
	/* refcount of the L1 table's cluster (3) raised to 2: one leak */
	ck_assert_ok(kl_io_open(p, KL_O_RDWR, &f));
	put_be16(be, 2);
	ck_assert_ok(kl_io_pwrite(f, 2 * 65536 + 3 * 2, be, 2));
	kl_io_close(f);
	d = open_img(p, 0);
	ck_assert_ok(blk_check(d, &r, 0));
	ck_assert_uint_eq(r.leaks, 1);
	ck_assert_uint_eq(r.corruptions, 0);
	blk_check_report_release(&r);
	blk_close(d);
	d = open_img(p, BLK_OPEN_RDWR);
	ck_assert_ok(blk_check(d, &r, BLK_CHECK_REPAIR_LEAKS));
	ck_assert_uint_eq(r.leaks, 1); /* as found */
	ck_assert_uint_eq(r.repaired, 1);
	blk_check_report_release(&r);
	ck_assert_ok(blk_check(d, &r, 0));
	ck_assert_uint_eq(r.leaks, 0);
	blk_check_report_release(&r);
	blk_close(d);
	qemu_check(p);
}
END_TEST

/* Open must fail with code and a message containing want. */
static void expect_open_fail(const char *p, int code, const char *want)
{
	struct blk_open_opts o = { .format = "qcow2" };
	struct blk_dev *d = NULL;
	int rc = blk_open(p, &o, &d);

	ck_assert_msg(rc == code, "%s: got %d (%s), wanted %d", want, rc, kl_errmsg(), code);
	ck_assert_ptr_null(d);
	ck_assert_msg(strstr(kl_errmsg(), want) && strstr(kl_errmsg(), "bad.qcow2"),
		      "message '%s' lacks '%s' or the file name", kl_errmsg(), want);
}

static void poke(const char *p, uint64_t off, const void *b, size_t n)
{
	struct kl_file *f;

	ck_assert_ok(kl_io_open(p, KL_O_RDWR, &f));
	ck_assert_ok(kl_io_pwrite(f, off, b, n));
	kl_io_close(f);
}

START_TEST(bad_input)
{
	const char *good = tu_path("good.qcow2"), *p = tu_path("bad.qcow2");
	uint8_t b[8];

	create_img(good, MIB, NULL, NULL, NULL);

	ck_assert_int_eq(tu_sh("head -c 40 '%s' > '%s'", good, p), 0);
	expect_open_fail(p, -EUCLEAN, "too short for a qcow2 header");

	tu_copy(good, p);
	put_be32(b, 30);
	poke(p, 20, b, 4);
	expect_open_fail(p, -EUCLEAN, "cluster_bits 30");

	tu_copy(good, p);
	put_be32(b, 0xffffffffu);
	poke(p, 36, b, 4);
	expect_open_fail(p, -EUCLEAN, "L1 table has 4294967295 entries");

	tu_copy(good, p);
	put_be64(b, 1ULL << 62);
	poke(p, 40, b, 8);
	expect_open_fail(p, -EUCLEAN, "past the end of the file");

	tu_copy(good, p);
	put_be64(b, 65536);
	poke(p, 40, b, 8); /* L1 onto the refcount table */
	expect_open_fail(p, -EUCLEAN, "overlaps the refcount table");

	tu_copy(good, p);
	put_be64(b, 1ULL << 5);
	poke(p, 72, b, 8);
	expect_open_fail(p, -ENOTSUP, "unsupported incompatible feature bit 5");

	tu_copy(good, p);
	put_be64(b, 1ULL << 2);
	poke(p, 72, b, 8);
	expect_open_fail(p, -EUCLEAN, "external data file bit set (incompatible bit 2) but no "
				       "data file name extension");

	tu_copy(good, p);
	put_be32(b, 1);
	poke(p, 32, b, 4);
	expect_open_fail(p, -ENOTSUP, "legacy AES");

	tu_copy(good, p);
	put_be32(b, 2);
	poke(p, 32, b, 4);
	expect_open_fail(p, -EUCLEAN, "LUKS header area of 0 bytes");
}
END_TEST

START_TEST(dirty_and_corrupt_bits)
{
	const char *p = tu_path("bits.qcow2");
	struct blk_open_opts o = { .format = "qcow2", .flags = BLK_OPEN_RDWR };
	struct blk_check_report r;
	struct blk_dev *d = NULL;
	struct blk_info in;
	uint8_t b[8];

	create_img(p, MIB, NULL, NULL, NULL);
	put_be64(b, 1); /* dirty */
	poke(p, 72, b, 8);
	d = open_img(p, 0);
	ck_assert_ok(blk_info(d, &in));
	ck_assert(in.dirty);
	blk_info_release(&in);
	blk_close(d);
	ck_assert_int_eq(blk_open(p, &o, &d), -EUCLEAN);
	ck_assert(strstr(kl_errmsg(), "keel check -r all"));
	o.flags |= BLK_OPEN_REPAIR;
	ck_assert_ok(blk_open(p, &o, &d));
	ck_assert_ok(blk_check(d, &r, BLK_CHECK_REPAIR_ALL));
	blk_check_report_release(&r);
	blk_close(d);
	o.flags = BLK_OPEN_RDWR;
	ck_assert_ok(blk_open(p, &o, &d)); /* clean again */
	blk_close(d);
	put_be64(b, 2); /* corrupt */
	poke(p, 72, b, 8);
	ck_assert_int_eq(blk_open(p, &o, &d), -EUCLEAN);
	ck_assert(strstr(kl_errmsg(), "marked corrupt"));
	d = open_img(p, 0);
	blk_close(d);
}
END_TEST

/* ------------------------------------------------------------------ power cuts */

static const uint8_t OLD_PAT = 0xa1, NEW_PAT = 0xb2;

/* The image before the update: data at [0, 300K), the rest empty. */
static void crash_setup(const char *p)
{
	uint8_t *buf = malloc(300 * 1024);
	struct blk_dev *d;

	create_img(p, 4 * MIB, NULL, NULL, NULL);
	d = open_img(p, BLK_OPEN_RDWR);
	memset(buf, OLD_PAT, 300 * 1024);
	ck_assert_ok(blk_pwrite(d, 0, buf, 300 * 1024));
	blk_close(d);
	free(buf);
}

/* Open options of the update (compress=on: new clusters gathered and written compressed). */
static const char *crash_opts;

/* The update: in-place, partial-cluster COW and fresh allocating writes, then flush. */
static int crash_update(const char *p)
{
	struct blk_open_opts o = img_opts(BLK_OPEN_RDWR);
	uint8_t *buf = malloc(MIB);
	struct blk_dev *d = NULL;
	int rc;

	memset(buf, NEW_PAT, MIB);
	if (crash_opts)
		ck_assert_ok(kl_opts_parse(crash_opts, &o.opts));
	rc = blk_open(p, &o, &d);
	kl_opts_free(o.opts);
	if (rc == 0)
		rc = blk_pwrite(d, 100 * 1024, buf, 400 * 1024);
	if (rc == 0)
		rc = blk_pwrite(d, MIB + 1000, buf, 700 * 1024);
	if (rc == 0)
		rc = blk_pwrite_zeroes(d, 3 * MIB, 65536, 0);
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	free(buf);
	return rc;
}

/* After the cut: opens, no corruption, each byte old or new. */
static void crash_verify(const char *p, uint64_t n)
{
	uint8_t *buf = malloc(4 * MIB);
	struct blk_dev *d = open_img(p, 0);

	check_clean(d, true);
	ck_assert_ok(blk_pread(d, 0, buf, 4 * MIB));
	for (uint64_t i = 0; i < 4 * MIB; i++) {
		uint8_t old = i < 300 * 1024 ? OLD_PAT : 0;
		uint8_t nw = old;

		if ((i >= 100 * 1024 && i < 500 * 1024) || (i >= MIB + 1000 && i < MIB + 1000 + 700 * 1024))
			nw = NEW_PAT;
		if (buf[i] != old && buf[i] != nw)
			ck_abort_msg("point %llu: byte %llu is %02x, neither old %02x nor new %02x",
				     (unsigned long long)n, (unsigned long long)i, buf[i], old, nw);
	}
	blk_close(d);
	free(buf);
}

static void power_cuts(const char *opts)
{
	const char *p = tu_path("crash.qcow2");
	struct kl_fault_rule count = { .mode = KL_FAULT_ERROR, .at = 0 };
	uint64_t points;

	crash_setup(p);
	crash_opts = opts;
	kl_fault_arm(&count);
	ck_assert_ok(crash_update(p));
	points = kl_fault_points();
	kl_fault_reset();
	ck_assert_uint_gt(points, 3);
	if (opts) {
		/* the update did store compressed clusters */
		struct blk_dev *d = open_img(p, 0);
		struct blk_extent e;

		ck_assert_ok(blk_block_status(d, MIB + 65536, 65536, &e));
		ck_assert(e.flags & BLK_EXT_COMPRESSED);
		blk_close(d);
	}
	for (int mode = 0; mode < 3; mode++) {
		for (uint64_t n = 1; n <= points; n++) {
			struct kl_fault_rule r = { .at = n, .seed = n * 7 + (uint64_t)mode };

			r.mode = mode == 0 ? KL_FAULT_ERROR : mode == 1 ? KL_FAULT_CRASH
									  : KL_FAULT_CRASH_TORN;
			crash_setup(p);
			kl_fault_arm(&r);
			/* the last point is the sync in blk_close, whose result nobody sees */
			ck_assert(crash_update(p) < 0 || n == points);
			ck_assert(kl_fault_fired());
			kl_fault_settle();
			kl_fault_reset();
			kl_err_clear();
			crash_verify(p, n);
		}
	}
	crash_opts = NULL;
}

START_TEST(power_cut_every_point)
{
	power_cuts(NULL);
}
END_TEST

START_TEST(power_cut_every_point_compressed)
{
	/* compressed clusters go out gathered (kl_io_combine), in larger writes */
	power_cuts("compress=on");
}
END_TEST

START_TEST(power_cut_every_point_luks)
{
	/* encrypted data clusters: the same metadata order, the data encrypted */
	test_key = "unit pass";
	power_cuts(NULL);
	test_key = NULL;
}
END_TEST

START_TEST(unaligned_writes_luks)
{
	/* whole sectors only (write_align 512): the core read-modify-writes the rest */
	test_key = "unit pass";
	geometry_case(LUKS_OPTS, "luks.qcow2");
	test_key = NULL;
}
END_TEST


/* ------------------------------------------------------------------ internal snapshots */

#define SN_SIZE (4 * MIB)

/* Opens p@snap (NULL: the current state): size bytes, equal to model. */
static void verify_state_n(const char *p, const char *snap, const uint8_t *model, uint64_t size)
{
	struct blk_open_opts o = { .format = "qcow2", .snapshot = snap };
	struct blk_dev *d = NULL;

	ck_assert_ok(blk_open(p, &o, &d));
	ck_assert_uint_eq(blk_size(d), size);
	verify(d, model, size);
	blk_close(d);
}

static void verify_state(const char *p, const char *snap, const uint8_t *model)
{
	verify_state_n(p, snap, model, SN_SIZE);
}

static void sn_write(struct blk_dev *d, uint8_t *model, uint64_t off, uint64_t len, uint64_t seed)
{
	uint8_t *buf = malloc(len);

	tu_fill(buf, len, seed, off);
	ck_assert_ok(blk_pwrite(d, off, buf, len));
	memcpy(model + off, buf, len);
	free(buf);
}

static size_t snap_count(const char *p)
{
	struct blk_dev *d = open_img(p, 0);
	struct blk_snapshot_info *l;
	size_t n;

	ck_assert_ok(blk_snapshot_list(d, &l, &n));
	blk_snapshot_list_free(l, n);
	blk_close(d);
	return n;
}

static void snap_case(const char *opts, const char *name)
{
	const char *p = tu_path(name);
	uint8_t *m1 = calloc(1, SN_SIZE), *m2, *cur;
	struct blk_dev *d;

	create_img(p, SN_SIZE, opts, NULL, NULL);
	d = open_img(p, BLK_OPEN_RDWR);
	sn_write(d, m1, 0, 300000, 1);
	sn_write(d, m1, 2 * MIB - 5000, 70000, 2);
	ck_assert_ok(blk_snapshot_create(d, "s1"));
	ck_assert_int_eq(blk_snapshot_create(d, "s1"), -EEXIST);
	kl_err_clear();
	m2 = malloc(SN_SIZE);
	memcpy(m2, m1, SN_SIZE);
	/* in place over shared clusters, across a shared L2 table, and fresh */
	sn_write(d, m2, 4096, 100000, 3);
	sn_write(d, m2, 3 * MIB, 65536, 4);
	ck_assert_ok(blk_pwrite_zeroes(d, 2 * MIB, 4096, 0));
	memset(m2 + 2 * MIB, 0, 4096);
	ck_assert_ok(blk_snapshot_create(d, "s2"));
	cur = malloc(SN_SIZE);
	memcpy(cur, m2, SN_SIZE);
	sn_write(d, cur, 0, SN_SIZE / 2, 5);
	verify(d, cur, SN_SIZE);
	check_clean(d, false);
	blk_close(d);
	qemu_check(p);
	verify_state(p, "s1", m1);
	verify_state(p, "s2", m2);
	verify_state(p, NULL, cur);

	/* revert: the current state becomes s1's, s2 keeps its own */
	d = open_img(p, BLK_OPEN_RDWR);
	ck_assert_ok(blk_snapshot_revert(d, "s1"));
	verify(d, m1, SN_SIZE);
	sn_write(d, m1, MIB, 10000, 6); /* and writing after it leaves s1 alone */
	check_clean(d, false);
	blk_close(d);
	qemu_check(p);
	verify_state(p, "s2", m2);
	verify_state(p, NULL, m1);

	/* delete both: every cluster only they held is free again */
	d = open_img(p, BLK_OPEN_RDWR);
	ck_assert_ok(blk_snapshot_delete(d, "s2"));
	ck_assert_int_eq(blk_snapshot_delete(d, "s2"), -ENOENT);
	kl_err_clear();
	ck_assert_ok(blk_snapshot_delete(d, "1")); /* by id, as qemu-img -d */
	check_clean(d, false);
	blk_close(d);
	ck_assert_uint_eq(snap_count(p), 0);
	verify_state(p, NULL, m1);
	qemu_check(p);
	free(m1);
	free(m2);
	free(cur);
}

START_TEST(snapshots_default)
{
	snap_case(NULL, "snap.qcow2");
}
END_TEST

START_TEST(snapshots_geometries)
{
	snap_case("cluster_size=4096,refcount_bits=4", "snap-4k.qcow2");
	snap_case("compat=0.10,cluster_size=512", "snap-v2.qcow2");
	snap_case("extended_l2=on", "snap-ext.qcow2");
	snap_case("compress=on,compression_type=zstd", "snap-z.qcow2");
}
END_TEST

START_TEST(snapshots_refused)
{
	const char *p = tu_path("snap-rb1.qcow2");
	struct blk_dev *d;

	create_img(p, MIB, "refcount_bits=1", NULL, NULL);
	d = open_img(p, BLK_OPEN_RDWR);
	ck_assert_int_eq(blk_snapshot_create(d, "s1"), -ENOTSUP);
	ck_assert(strstr(kl_errmsg(), "cannot hold snapshots"));
	kl_err_clear();
	blk_close(d);
	create_img(p, MIB, NULL, NULL, NULL);
	d = open_img(p, 0);
	ck_assert_int_eq(blk_snapshot_create(d, "s1"), -EROFS);
	kl_err_clear();
	blk_close(d);
	ck_assert_uint_eq(snap_count(p), 0);

	/* refcount_bits=2 counts three references: the third snapshot overflows */
	{
		uint8_t *m = calloc(1, SN_SIZE);

		create_img(p, SN_SIZE, "refcount_bits=2", NULL, NULL);
		d = open_img(p, BLK_OPEN_RDWR);
		sn_write(d, m, 0, 200000, 21);
		ck_assert_ok(blk_snapshot_create(d, "s1"));
		ck_assert_ok(blk_snapshot_create(d, "s2"));
		ck_assert_int_eq(blk_snapshot_create(d, "s3"), -EOVERFLOW);
		ck_assert(strstr(kl_errmsg(), "refcount_bits=2"));
		kl_err_clear();
		blk_close(d);
		ck_assert_uint_eq(snap_count(p), 2);
		verify_state(p, NULL, m);
		verify_state(p, "s2", m);
		d = open_img(p, 0);
		check_clean(d, true);
		blk_close(d);
		free(m);
	}
}
END_TEST

/*
 * Power cuts inside snapshot operations. The setup: data A, snapshot
 * "keep", data B over part of it. Then op runs. After a cut the image
 * opens; the current state is wholly the old one or the new one; each
 * snapshot listed reads back as taken; `check -r all` leaves it clean.
 * SN_REVERT_RESIZED takes "keep" at half the size and grows the image
 * before writing B (as qemu-img resize does when the L1 table already
 * covers the new size: only the header's size changes), so the revert
 * switches the virtual size too.
 */
enum sn_op { SN_CREATE, SN_DELETE, SN_REVERT, SN_REVERT_RESIZED };

static uint8_t *sn_keep, *sn_cur;
static uint64_t sn_keep_size;

static void sn_setup(const char *p, enum sn_op op)
{
	struct blk_dev *d;

	free(sn_keep);
	free(sn_cur);
	sn_keep = calloc(1, SN_SIZE);
	sn_keep_size = op == SN_REVERT_RESIZED ? SN_SIZE / 2 : SN_SIZE;
	create_img(p, sn_keep_size, NULL, NULL, NULL);
	d = open_img(p, BLK_OPEN_RDWR);
	sn_write(d, sn_keep, 0, 700000, 11);
	ck_assert_ok(blk_snapshot_create(d, "keep"));
	if (op == SN_REVERT_RESIZED) {
		uint8_t be[8];

		blk_close(d);
		put_be64(be, SN_SIZE);
		poke(p, 24, be, 8);
		d = open_img(p, BLK_OPEN_RDWR);
	}
	sn_cur = malloc(SN_SIZE);
	memcpy(sn_cur, sn_keep, SN_SIZE);
	sn_write(d, sn_cur, 100000, 200000, 12);
	sn_write(d, sn_cur, 3 * MIB, 100000, 13);
	blk_close(d);
}

static int sn_run(const char *p, enum sn_op op)
{
	struct blk_open_opts o = { .format = "qcow2", .flags = BLK_OPEN_RDWR };
	struct blk_dev *d = NULL;
	int rc = blk_open(p, &o, &d);

	if (rc == 0)
		rc = op == SN_CREATE   ? blk_snapshot_create(d, "new")
		     : op == SN_DELETE ? blk_snapshot_delete(d, "keep")
				       : blk_snapshot_revert(d, "keep");
	if (rc == 0 && op == SN_REVERT_RESIZED && blk_size(d) != sn_keep_size)
		rc = kl_err(-EIO, "the revert left the size at %llu",
			    (unsigned long long)blk_size(d));
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	return rc;
}

static void sn_verify(const char *p, enum sn_op op, uint64_t n)
{
	struct blk_open_opts o = { .format = "qcow2", .flags = BLK_OPEN_RDWR };
	struct blk_snapshot_info *l;
	struct blk_check_report r;
	struct blk_dev *d = NULL;
	uint8_t *buf = malloc(SN_SIZE);
	uint64_t size;
	size_t nsn;

	ck_assert_msg(blk_open(p, &o, &d) == 0, "point %llu: %s", (unsigned long long)n,
		      kl_errmsg());
	size = blk_size(d);
	ck_assert_msg(size == SN_SIZE || (op >= SN_REVERT && size == sn_keep_size),
		      "point %llu: the current size %llu is neither the old nor the new one",
		      (unsigned long long)n, (unsigned long long)size);
	ck_assert_ok(blk_pread(d, 0, buf, size));
	ck_assert_msg((size == SN_SIZE && !memcmp(buf, sn_cur, size)) ||
			      (op >= SN_REVERT && size == sn_keep_size && !memcmp(buf, sn_keep, size)),
		      "point %llu: the current state is neither the old nor the new one",
		      (unsigned long long)n);
	ck_assert_ok(blk_snapshot_list(d, &l, &nsn));
	for (size_t i = 0; i < nsn; i++) {
		ck_assert_msg(!strcmp(l[i].name, "keep") || (op == SN_CREATE && !strcmp(l[i].name, "new")),
			      "point %llu: snapshot '%s'", (unsigned long long)n, l[i].name);
	}
	ck_assert_uint_ge(nsn, op == SN_DELETE ? 0 : 1);
	blk_snapshot_list_free(l, nsn);
	/*
	 * Allowed: leaks, and copied flags that disagree with a refcount for
	 * the moment between the two writes (what -r all repairs). Never a
	 * refcount below its references: the next write would reuse a cluster
	 * still in use.
	 */
	ck_assert_ok(blk_check(d, &r, 0));
	ck_assert_uint_lt(r.nmsgs, BLK_CHECK_MAX_MSGS);
	for (size_t i = 0; i < r.nmsgs; i++)
		ck_assert_msg(strncmp(r.msgs[i], "ERROR", 5) || strstr(r.msgs[i], "copied flag"),
			      "point %llu: %s", (unsigned long long)n, r.msgs[i]);
	blk_check_report_release(&r);
	ck_assert_ok(blk_check(d, &r, BLK_CHECK_REPAIR_ALL));
	blk_check_report_release(&r);
	check_clean(d, false);
	blk_close(d);
	/* what the table lists reads back as it was taken */
	d = open_img(p, 0);
	ck_assert_ok(blk_snapshot_list(d, &l, &nsn));
	blk_close(d);
	for (size_t i = 0; i < nsn; i++) {
		if (!strcmp(l[i].name, "keep"))
			verify_state_n(p, "keep", sn_keep, sn_keep_size);
		else
			verify_state(p, l[i].name, sn_cur);
	}
	blk_snapshot_list_free(l, nsn);
	free(buf);
}

static void sn_power_cuts(enum sn_op op)
{
	const char *p = tu_path("snapcut.qcow2");
	struct kl_fault_rule count = { .mode = KL_FAULT_ERROR, .at = 0 };
	uint64_t points;

	sn_setup(p, op);
	kl_fault_arm(&count);
	ck_assert_ok(sn_run(p, op));
	points = kl_fault_points();
	kl_fault_reset();
	ck_assert_uint_gt(points, 5);
	sn_verify(p, op, 0);
	for (int mode = 0; mode < 3; mode++) {
		for (uint64_t n = 1; n <= points; n++) {
			struct kl_fault_rule r = { .at = n, .seed = n * 13 + (uint64_t)mode };

			r.mode = mode == 0 ? KL_FAULT_ERROR : mode == 1 ? KL_FAULT_CRASH
									  : KL_FAULT_CRASH_TORN;
			sn_setup(p, op);
			kl_fault_arm(&r);
			ck_assert(sn_run(p, op) < 0 || n == points);
			ck_assert(kl_fault_fired());
			kl_fault_settle();
			kl_fault_reset();
			kl_err_clear();
			sn_verify(p, op, n);
		}
	}
	free(sn_keep);
	free(sn_cur);
	sn_keep = sn_cur = NULL;
}

START_TEST(snapshot_create_power_cuts)
{
	sn_power_cuts(SN_CREATE);
}
END_TEST

START_TEST(snapshot_delete_power_cuts)
{
	sn_power_cuts(SN_DELETE);
}
END_TEST

START_TEST(snapshot_revert_power_cuts)
{
	sn_power_cuts(SN_REVERT);
}
END_TEST

START_TEST(snapshot_revert_resized_power_cuts)
{
	sn_power_cuts(SN_REVERT_RESIZED);
}
END_TEST

/* ------------------------------------------------------------------ snapshot diff */

#define DF_SIZE (8 * MIB)
#define DF_CS 4096u /* 4 L2 tables of 2 MiB each */

struct df_seen {
	int8_t type[DF_SIZE / DF_CS]; /* -1: not reported */
};

static int df_cb(void *opaque, const struct blk_extent *e)
{
	struct df_seen *v = opaque;

	ck_assert_uint_eq(e->off % DF_CS, 0);
	ck_assert_uint_le(e->off + e->len, DF_SIZE);
	for (uint64_t c = e->off / DF_CS; c < KL_DIV_ROUND_UP(e->off + e->len, DF_CS); c++) {
		ck_assert_int_eq(v->type[c], -1); /* each cluster once */
		v->type[c] = (int8_t)e->type;
	}
	return 0;
}

/* diff(a, b) must name every cluster whose bytes differ, as b holds them. */
static void df_expect(struct blk_dev *d, const char *a, const char *b, const uint8_t *ma,
		      const uint8_t *mb)
{
	static const uint8_t zero[DF_CS];
	struct df_seen v;
	size_t named = 0;

	memset(v.type, -1, sizeof(v.type));
	ck_assert_ok(blk_snapshot_diff(d, a, b, df_cb, &v));
	for (size_t c = 0; c < DF_SIZE / DF_CS; c++) {
		bool differs = memcmp(ma + c * DF_CS, mb + c * DF_CS, DF_CS) != 0;

		if (v.type[c] < 0) {
			ck_assert_msg(!differs, "%s..%s: cluster %zu differs but is not reported",
				      a ? a : ".", b ? b : ".", c);
			continue;
		}
		named++;
		if (v.type[c] == BLK_ZERO)
			ck_assert_msg(!memcmp(mb + c * DF_CS, zero, DF_CS),
				      "%s..%s: cluster %zu reported zero but holds data", a ? a : ".",
				      b ? b : ".", c);
	}
	ck_assert_uint_gt(named, 0);
	ck_assert_uint_lt(named, DF_SIZE / DF_CS / 2); /* from metadata, not everything */
}

START_TEST(snapshot_diff)
{
	const char *p = tu_path("diff.qcow2");
	uint8_t *m1 = calloc(1, DF_SIZE), *m2 = malloc(DF_SIZE), *m3 = malloc(DF_SIZE);
	struct blk_dev *d;

	create_img(p, DF_SIZE, "cluster_size=4096", NULL, NULL);
	d = open_img(p, BLK_OPEN_RDWR);
	tu_fill(m1, MIB, 31, 0);
	ck_assert_ok(blk_pwrite(d, 0, m1, MIB));
	tu_fill(m1 + 5 * MIB, 300000, 32, 5 * MIB);
	ck_assert_ok(blk_pwrite(d, 5 * MIB, m1 + 5 * MIB, 300000));
	ck_assert_ok(blk_snapshot_create(d, "s1"));
	memcpy(m2, m1, DF_SIZE);
	sn_write(d, m2, 100000, 5000, 33);		  /* inside a shared table */
	sn_write(d, m2, 3 * MIB, 10000, 34);		  /* a table s1 lacks */
	ck_assert_ok(blk_pwrite_zeroes(d, 5 * MIB, 8192, 0)); /* data -> zero */
	memset(m2 + 5 * MIB, 0, 8192);
	ck_assert_ok(blk_discard(d, 512 * 1024, 8192));
	memset(m2 + 512 * 1024, 0, 8192);
	ck_assert_ok(blk_snapshot_create(d, "s2"));
	memcpy(m3, m2, DF_SIZE);
	sn_write(d, m3, 7 * MIB, 4096, 35);
	sn_write(d, m3, 100000, 100, 36);
	df_expect(d, "s1", "s2", m1, m2);
	df_expect(d, "s2", NULL, m2, m3);
	df_expect(d, "s1", NULL, m1, m3);
	df_expect(d, NULL, "s1", m3, m1); /* backwards: as s1 holds it */
	blk_close(d);
	/* read-only too, and s1..s1 is empty */
	d = open_img(p, 0);
	df_expect(d, "s2", "s1", m2, m1);
	{
		struct df_seen v;

		memset(v.type, -1, sizeof(v.type));
		ck_assert_ok(blk_snapshot_diff(d, "s1", "s1", df_cb, &v));
		for (size_t c = 0; c < DF_SIZE / DF_CS; c++)
			ck_assert_int_eq(v.type[c], -1);
	}
	ck_assert_int_eq(blk_snapshot_diff(d, "nope", NULL, df_cb, NULL), -ENOENT);
	kl_err_clear();
	blk_close(d);
	free(m1);
	free(m2);
	free(m3);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("qcow2");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, create_and_info);
	tcase_add_test(tc, unaligned_writes_default);
	tcase_add_test(tc, unaligned_writes_512_rb1);
	tcase_add_test(tc, unaligned_writes_4k_rb64);
	tcase_add_test(tc, unaligned_writes_2m_rb2);
	tcase_add_test(tc, unaligned_writes_extl2);
	tcase_add_test(tc, unaligned_writes_v2);
	tcase_add_test(tc, unaligned_writes_luks);
	tcase_add_test(tc, unaligned_writes_compressed);
	tcase_add_test(tc, compressed_zlib);
	tcase_add_test(tc, compressed_zstd_refcount1);
	tcase_add_test(tc, compressed_from_partial_writes);
	tcase_add_test(tc, zero_and_discard_status);
	tcase_add_test(tc, backing_cow);
	tcase_add_test(tc, refcount_table_grows);
	tcase_add_test(tc, check_repairs_leaks);
	tcase_add_test(tc, bad_input);
	tcase_add_test(tc, dirty_and_corrupt_bits);
	tcase_add_test(tc, power_cut_every_point);
	tcase_add_test(tc, power_cut_every_point_compressed);
	tcase_add_test(tc, power_cut_every_point_luks);
	tcase_add_test(tc, snapshots_default);
	tcase_add_test(tc, snapshots_geometries);
	tcase_add_test(tc, snapshots_refused);
	tcase_add_test(tc, snapshot_create_power_cuts);
	tcase_add_test(tc, snapshot_delete_power_cuts);
	tcase_add_test(tc, snapshot_revert_power_cuts);
	tcase_add_test(tc, snapshot_revert_resized_power_cuts);
	tcase_add_test(tc, snapshot_diff);
	suite_add_tcase(s, tc);
	return tu_run_suite(s);
}
