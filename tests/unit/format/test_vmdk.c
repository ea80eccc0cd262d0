/*
 * tests/unit/format/test_vmdk.c - the VMDK driver: descriptor parsing,
 * create/write/read/reopen of monolithicSparse and streamOptimized, block
 * status, parent chains with the CID check, descriptor files with flat and
 * zero extents, extent paths that try to leave the directory, and crash
 * consistency of allocating writes.
 */
#include "tests/common/testutil.h"
#include "format/vmdk.h"

#include <stdio.h>
#include <string.h>

#define MIB (1024 * 1024)

static const char *const desc_sample =
	"\xef\xbb\xbf# Disk DescriptorFile\r\n"
	"version=1\r\n"
	"encoding=\"UTF-8\"\r\n"
	"CID=fffe1234\r\n"
	"parentCID=ffffffff\r\n"
	"  createType = \"twoGbMaxExtentSparse\"  \r\n"
	"someFutureKey=unquoted value\r\n"
	"\r\n"
	"# Extent description\r\n"
	"RW 4194304 SPARSE \"disk with spaces-s001.vmdk\"\r\n"
	"RDONLY 100 FLAT \"flat.bin\" 2048\r\n"
	"NOACCESS 10 ZERO\r\n"
	"\r\n"
	"#DDB\r\n"
	"ddb.adapterType = \"lsilogic\"\r\n"
	"ddb.uuid = \"60 00 C2 9a\"\r\n"
	"a line VMware would never write but that is harmless\r\n";

START_TEST(desc_parse_sample)
{
	struct vmdk_desc d;

	ck_assert_ok(vmdk_desc_parse(desc_sample, strlen(desc_sample) + 1, "t", &d));
	ck_assert_uint_eq(d.version, 1);
	ck_assert(d.has_cid);
	ck_assert_uint_eq(d.cid, 0xfffe1234u);
	ck_assert(d.has_parent_cid);
	ck_assert_uint_eq(d.parent_cid, VMDK_CID_NONE);
	ck_assert_str_eq(d.create_type, "twoGbMaxExtentSparse");
	ck_assert_ptr_null(d.parent_hint);
	ck_assert_str_eq(vmdk_desc_get(&d, "encoding"), "UTF-8");
	ck_assert_str_eq(vmdk_desc_get(&d, "someFutureKey"), "unquoted value");
	ck_assert_str_eq(vmdk_desc_get(&d, "ddb.adapterType"), "lsilogic");
	ck_assert_str_eq(vmdk_desc_get(&d, "ddb.uuid"), "60 00 C2 9a");
	ck_assert_uint_eq(d.next, 3);
	ck_assert_int_eq(d.ext[0].access, VMDK_ACC_RW);
	ck_assert_uint_eq(d.ext[0].sectors, 4194304);
	ck_assert_int_eq(d.ext[0].type, VMDK_EXT_SPARSE);
	ck_assert_str_eq(d.ext[0].file, "disk with spaces-s001.vmdk");
	ck_assert_int_eq(d.ext[1].access, VMDK_ACC_RDONLY);
	ck_assert_int_eq(d.ext[1].type, VMDK_EXT_FLAT);
	ck_assert_uint_eq(d.ext[1].offset, 2048);
	ck_assert_int_eq(d.ext[2].access, VMDK_ACC_NOACCESS);
	ck_assert_int_eq(d.ext[2].type, VMDK_EXT_ZERO);
	ck_assert_ptr_null(d.ext[2].file);
	vmdk_desc_release(&d);
}
END_TEST

START_TEST(desc_parse_stops_at_nul_and_parent)
{
	char buf[1024];
	struct vmdk_desc d;
	const char *t = "version=2\nCID=0000000a\nparentCID=1b2c3d4e\n"
			"parentFileNameHint=\"../base dir/base.vmdk\"\nRW 8 SPARSE \"x.vmdk\"\n";

	memset(buf, 0, sizeof(buf));
	memcpy(buf, t, strlen(t));
	memcpy(buf + strlen(t) + 1, "garbage\x01\x02", 9); /* after the NUL: ignored */
	ck_assert_ok(vmdk_desc_parse(buf, sizeof(buf), "t", &d));
	ck_assert_uint_eq(d.version, 2);
	ck_assert_uint_eq(d.cid, 10);
	ck_assert_uint_eq(d.parent_cid, 0x1b2c3d4eu);
	ck_assert_str_eq(d.parent_hint, "../base dir/base.vmdk");
	ck_assert_uint_eq(d.next, 1);
	vmdk_desc_release(&d);
}
END_TEST

static int parse_rc(const char *text, const char *expect_in_msg)
{
	struct vmdk_desc d;
	int rc = vmdk_desc_parse(text, strlen(text), "bad.vmdk", &d);

	if (rc == 0) {
		vmdk_desc_release(&d);
		return 0;
	}
	ck_assert_msg(strstr(kl_errmsg(), "bad.vmdk") != NULL, "message names the file: %s",
		      kl_errmsg());
	if (expect_in_msg)
		ck_assert_msg(strstr(kl_errmsg(), expect_in_msg) != NULL, "'%s' in '%s'",
			      expect_in_msg, kl_errmsg());
	return rc;
}

START_TEST(desc_parse_errors)
{
	char *huge = kl_malloc(VMDK_MAX_LINE + 100);

	ck_assert_int_eq(parse_rc("version=1\nRW 10 SPARSE \"a\x01.vmdk\"\n", "control byte"),
			 -EUCLEAN);
	ck_assert_int_eq(parse_rc("version=4\n", "version 4"), -ENOTSUP);
	ck_assert_int_eq(parse_rc("CID=xyz\n", "CID"), -EUCLEAN);
	ck_assert_int_eq(parse_rc("parentCID=123456789\n", "parentCID"), -EUCLEAN);
	ck_assert_int_eq(parse_rc("RW -5 SPARSE \"a\"\n", "extent size"), -EUCLEAN);
	ck_assert_int_eq(parse_rc("RW 99999999999999999999999 SPARSE \"a\"\n", "extent size"),
			 -EUCLEAN);
	ck_assert_int_eq(parse_rc("RW 10 SPARSE \"a\n", "unterminated"), -EUCLEAN);
	ck_assert_int_eq(parse_rc("RW 10 SPARSE a.vmdk\n", "quotes"), -EUCLEAN);
	ck_assert_int_eq(parse_rc("RW 10 SPARSE \"\"\n", "empty"), -EUCLEAN);
	ck_assert_int_eq(parse_rc("RW 10 BOGUS \"a\"\n", "BOGUS"), -ENOTSUP);
	ck_assert_int_eq(parse_rc("RW 10 FLAT \"a\" 12x\n", "offset"), -EUCLEAN);
	ck_assert_int_eq(parse_rc(" = value\n", "without a key"), -EUCLEAN);
	memset(huge, 'a', VMDK_MAX_LINE + 99);
	huge[VMDK_MAX_LINE + 99] = '\0';
	ck_assert_int_eq(parse_rc(huge, "longer than"), -EUCLEAN);
	kl_free(huge);
	/* no extents is not the parser's business */
	ck_assert_int_eq(parse_rc("# Disk DescriptorFile\nversion=1\n", NULL), 0);
}
END_TEST

START_TEST(desc_set_cid)
{
	char *t = kl_strdup("version=1\nparentCID=ffffffff\nCID=0000abcd\nx=1\n");
	char *u = kl_strdup("version=1\r\nCID = 5\r\nx=1\r\n");
	struct vmdk_desc d;

	ck_assert_ok(vmdk_desc_set_cid(&t, 0x12345678));
	ck_assert_str_eq(t, "version=1\nparentCID=ffffffff\nCID=12345678\nx=1\n");
	ck_assert_ok(vmdk_desc_set_cid(&u, 0xdeadbeef));
	ck_assert_str_eq(u, "version=1\r\nCID = deadbeef\r\nx=1\r\n");
	ck_assert_ok(vmdk_desc_parse(u, strlen(u), "u", &d));
	ck_assert_uint_eq(d.cid, 0xdeadbeefu);
	vmdk_desc_release(&d);
	kl_free(t);
	kl_free(u);
	t = kl_strdup("version=1\n");
	ck_assert_int_eq(vmdk_desc_set_cid(&t, 1), -ENOENT);
	kl_free(t);
}
END_TEST

/* ------------------------------------------------------------------ images */

static int create(const char *path, uint64_t size, const char *opts, const char *parent)
{
	struct blk_create_opts o = { .size = size, .parent = parent };
	int rc;

	if (opts && kl_opts_parse(opts, &o.opts) < 0)
		return -EINVAL;
	rc = blk_create(path, "vmdk", &o);
	kl_opts_free(o.opts);
	return rc;
}

static int open_img(const char *path, unsigned flags, struct blk_dev **d)
{
	struct blk_open_opts o = { .flags = flags };

	return blk_open(path, &o, d);
}

static void check_bytes(struct blk_dev *d, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *got = kl_malloc(len), *want = kl_malloc(len);

	ck_assert_ok(blk_pread(d, off, got, len));
	if (seed)
		tu_fill(want, len, seed, off);
	else
		memset(want, 0, len);
	ck_assert_msg(memcmp(got, want, len) == 0, "bytes at %llu (+%zu) differ", (unsigned long long)off,
		      len);
	kl_free(got);
	kl_free(want);
}

static void put_bytes(struct blk_dev *d, uint64_t off, size_t len, uint64_t seed)
{
	uint8_t *b = kl_malloc(len);

	tu_fill(b, len, seed, off);
	ck_assert_ok(blk_pwrite(d, off, b, len));
	kl_free(b);
}

/* Writes used by several tests: aligned, unaligned, across grains and tables. */
static const struct {
	uint64_t off;
	size_t len;
} wr[] = {
	{ 0, 65536 },
	{ 65536 * 3 + 100, 5000 },
	{ 32 * MIB - 4096, 3 * 65536 },	/* crosses a grain table boundary */
	{ 40 * MIB + 512, 2 * MIB },
	{ 70 * MIB - 1536, 1536 }, /* the short tail of the disk */
};
#define DISK_SIZE (70 * MIB)

static void verify_pattern(struct blk_dev *d, uint64_t seed)
{
	for (size_t i = 0; i < KL_ARRAY_SIZE(wr); i++)
		check_bytes(d, wr[i].off, wr[i].len, seed);
	check_bytes(d, 10 * MIB, 65536, 0);
	check_bytes(d, 65536, 65536 * 2, 0);
}

START_TEST(sparse_create_write_reopen)
{
	const char *p = tu_path("mono.vmdk");
	struct blk_dev *d;
	struct blk_info in;
	struct blk_extent e;
	struct blk_identity id;
	uint32_t cid0;

	ck_assert_ok(create(p, DISK_SIZE, NULL, NULL));
	ck_assert_ok(open_img(p, 0, &d));
	ck_assert_str_eq(blk_format_name(d), "vmdk");
	ck_assert_uint_eq(blk_size(d), DISK_SIZE);
	ck_assert_uint_eq(blk_cluster_size(d), 65536);
	ck_assert_ok(blk_identity(d, &id));
	ck_assert(id.valid & BLK_ID_GENERATION);
	cid0 = (uint32_t)id.generation;
	ck_assert_ok(blk_block_status(d, 0, DISK_SIZE, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	ck_assert_uint_eq(e.len, DISK_SIZE);
	blk_close(d);

	ck_assert_ok(open_img(p, BLK_OPEN_RDWR, &d));
	for (size_t i = 0; i < KL_ARRAY_SIZE(wr); i++)
		put_bytes(d, wr[i].off, wr[i].len, 7);
	verify_pattern(d, 7); /* through the cached tables */
	ck_assert_ok(blk_flush(d));
	blk_close(d);

	ck_assert_ok(open_img(p, 0, &d));
	verify_pattern(d, 7);
	ck_assert_ok(blk_identity(d, &id));
	ck_assert_uint_ne((uint32_t)id.generation, cid0); /* a write changes the CID */
	ck_assert_ok(blk_block_status(d, 0, DISK_SIZE, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert_uint_eq(e.len, 65536);
	ck_assert_uint_ne(e.host_off, BLK_NO_HOST_OFFSET);
	ck_assert_ok(blk_block_status(d, 65536, DISK_SIZE, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	ck_assert_uint_eq(e.len, 2 * 65536);
	/* two grains written by one call sit together in the file: one extent */
	ck_assert_ok(blk_block_status(d, 40 * MIB, DISK_SIZE, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert_uint_eq(e.len, 2 * MIB + 65536);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.subformat, "monolithicSparse");
	ck_assert_uint_eq(in.cluster_size, 65536);
	blk_info_release(&in);
	blk_close(d);
}
END_TEST

START_TEST(sparse_zeroed_grain)
{
	const char *p = tu_path("zg.vmdk");
	struct blk_dev *d;
	struct blk_extent e;

	ck_assert_ok(create(p, 8 * MIB, "zeroed_grain=on", NULL));
	ck_assert_ok(open_img(p, BLK_OPEN_RDWR, &d));
	put_bytes(d, 0, 4 * MIB, 3);
	ck_assert_ok(blk_pwrite_zeroes(d, 65536, 3 * 65536, 0));
	ck_assert_ok(blk_flush(d));
	blk_close(d);
	ck_assert_ok(open_img(p, 0, &d));
	ck_assert_ok(blk_block_status(d, 65536, 8 * MIB, &e));
	ck_assert_int_eq(e.type, BLK_ZERO);
	ck_assert_uint_eq(e.len, 3 * 65536);
	check_bytes(d, 0, 65536, 3);
	check_bytes(d, 65536, 3 * 65536, 0);
	check_bytes(d, 4 * 65536, 65536, 3);
	blk_close(d);
}
END_TEST

START_TEST(stream_create_write_read)
{
	const char *p = tu_path("so.vmdk");
	struct blk_dev *d;
	struct blk_extent e;
	struct blk_info in;
	uint8_t b[4096];

	ck_assert_ok(create(p, DISK_SIZE, "subformat=streamOptimized", NULL));
	/* an empty stream is a complete, readable image */
	ck_assert_ok(open_img(p, 0, &d));
	check_bytes(d, 0, 65536, 0);
	blk_close(d);
	ck_assert_ok(open_img(p, BLK_OPEN_RDWR, &d));
	for (size_t i = 0; i < KL_ARRAY_SIZE(wr); i++)
		put_bytes(d, wr[i].off, wr[i].len, 9);
	/* append-only: going back is refused with a clear message */
	memset(b, 1, sizeof(b));
	ck_assert_int_eq(blk_pwrite(d, 0, b, sizeof(b)), -ENOTSUP);
	ck_assert(strstr(kl_errmsg(), "append-only") != NULL);
	ck_assert_int_eq(blk_pread(d, 0, b, sizeof(b)), -ENOTSUP);
	ck_assert_ok(blk_flush(d));
	blk_close(d);

	ck_assert_ok(open_img(p, 0, &d));
	verify_pattern(d, 9);
	ck_assert_ok(blk_block_status(d, 0, DISK_SIZE, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert(e.flags & BLK_EXT_COMPRESSED);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.subformat, "streamOptimized");
	ck_assert_str_eq(in.compression, "zlib");
	blk_info_release(&in);
	blk_close(d);
	/* a stream holding data is never reopened for writing */
	ck_assert_int_eq(open_img(p, BLK_OPEN_RDWR, &d), -ENOTSUP);
}
END_TEST

START_TEST(stream_flush_then_continue)
{
	const char *p = tu_path("so2.vmdk");
	struct blk_dev *d;

	ck_assert_ok(create(p, 80 * MIB, "esxi", NULL));
	ck_assert_ok(open_img(p, BLK_OPEN_RDWR, &d));
	put_bytes(d, 0, 65536, 5);
	ck_assert_ok(blk_flush(d)); /* a complete stream now ... */
	put_bytes(d, 65536 * 2, 65536, 5); /* ... and still appendable, same table */
	ck_assert_ok(blk_flush(d));
	put_bytes(d, 64 * MIB, 65536, 5); /* a later table */
	blk_close(d);
	ck_assert_ok(open_img(p, 0, &d));
	check_bytes(d, 0, 65536, 5);
	check_bytes(d, 65536, 65536, 0);
	check_bytes(d, 65536 * 2, 65536, 5);
	check_bytes(d, 64 * MIB, 65536, 5);
	blk_close(d);
}
END_TEST

START_TEST(parent_chain_cid)
{
	const char *base = tu_path("base.vmdk"), *child = tu_path("child.vmdk");
	struct blk_dev *d;
	struct blk_extent e;
	uint8_t b[512];

	ck_assert_ok(create(base, 8 * MIB, NULL, NULL));
	ck_assert_ok(open_img(base, BLK_OPEN_RDWR, &d));
	put_bytes(d, 0, 8 * MIB, 11);
	blk_close(d);
	ck_assert_ok(create(child, 0, NULL, "base.vmdk"));
	ck_assert_ok(open_img(child, BLK_OPEN_RDWR, &d));
	ck_assert_uint_eq(blk_size(d), 8 * MIB);
	ck_assert_ptr_nonnull(blk_parent(d));
	put_bytes(d, 65536 + 1000, 3000, 12); /* partial grain: the rest comes from the parent */
	blk_close(d);

	ck_assert_ok(open_img(child, 0, &d));
	ck_assert_ok(blk_block_status(d, 0, 8 * MIB, &e));
	ck_assert_int_eq(e.type, BLK_UNALLOC);
	ck_assert_uint_eq(e.len, 65536);
	ck_assert_ok(blk_block_status(d, 65536, 8 * MIB, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	check_bytes(d, 0, 65536 + 1000, 11);
	check_bytes(d, 65536 + 1000, 3000, 12);
	check_bytes(d, 65536 + 4000, 8 * MIB - 65536 - 4000, 11);
	blk_close(d);

	/* the parent changes: its CID moves and the child is refused */
	ck_assert_ok(open_img(base, BLK_OPEN_RDWR, &d));
	memset(b, 0, sizeof(b));
	ck_assert_ok(blk_pwrite(d, 0, b, sizeof(b)));
	blk_close(d);
	ck_assert_int_eq(open_img(child, 0, &d), -ESTALE);
	ck_assert(strstr(kl_errmsg(), "CID") != NULL);
	ck_assert(strstr(kl_errmsg(), "child.vmdk") != NULL);
	/* without opening the parent, the child still opens (keel info --no-parent) */
	ck_assert_ok(open_img(child, BLK_OPEN_NO_PARENT, &d));
	blk_close(d);
}
END_TEST

START_TEST(parent_must_be_vmdk)
{
	struct blk_create_opts o = { .size = MIB };
	struct kl_opts *opts = NULL;

	ck_assert_ok(kl_opts_parse("subformat=monolithicSparse", &opts));
	ck_assert_ok(blk_create(tu_path("p.raw"), "raw", &o));
	ck_assert_int_eq(create(tu_path("c2.vmdk"), 0, NULL, "p.raw"), -ENOTSUP);
	ck_assert_int_eq(create(tu_path("c3.vmdk"), MIB, "subformat=streamOptimized", NULL), 0);
	ck_assert_int_eq(create(tu_path("c4.vmdk"), MIB, "subformat=twoGbMaxExtentFlat", NULL),
			 -ENOTSUP);
	ck_assert_int_eq(create(tu_path("c5.vmdk"), MIB, "adapter_type=scsi", NULL), -EINVAL);
	kl_opts_free(opts);
}
END_TEST

START_TEST(stream_padded_after_eos)
{
	const char *p = tu_path("pad.vmdk");
	struct blk_dev *d;

	ck_assert_ok(create(p, 4 * MIB, "subformat=streamOptimized", NULL));
	ck_assert_ok(open_img(p, BLK_OPEN_RDWR, &d));
	put_bytes(d, MIB, 65536, 4);
	blk_close(d);
	/* tools pad stream files (to 64 KiB, in tar members): the footer is found anyway */
	ck_assert_int_eq(tu_sh("truncate -s +40000 '%s'", p), 0);
	ck_assert_ok(open_img(p, 0, &d));
	check_bytes(d, MIB, 65536, 4);
	check_bytes(d, 0, 65536, 0);
	blk_close(d);
}
END_TEST

/* Version 3 plain sparse (VMware change tracking) reads, but never opens writable. */
START_TEST(sparse_version3_read_only)
{
	const char *p = tu_path("v3.vmdk");
	struct blk_dev *d;
	struct kl_file *f;
	uint8_t v[4];

	ck_assert_ok(create(p, 2 * MIB, NULL, NULL));
	ck_assert_ok(open_img(p, BLK_OPEN_RDWR, &d));
	put_bytes(d, 0, 65536, 8);
	blk_close(d);
	put_le32(v, 3);
	ck_assert_ok(kl_io_open(p, KL_O_RDWR, &f));
	ck_assert_ok(kl_io_pwrite(f, 4, v, 4));
	kl_io_close(f);
	ck_assert_int_eq(open_img(p, BLK_OPEN_RDWR, &d), -ENOTSUP);
	ck_assert(strstr(kl_errmsg(), "read-only") != NULL);
	ck_assert_ok(open_img(p, 0, &d));
	check_bytes(d, 0, 65536, 8);
	blk_close(d);
}
END_TEST

START_TEST(check_finds_damage)
{
	const char *p = tu_path("chk.vmdk");
	struct blk_check_report r;
	struct blk_dev *d;
	struct kl_file *f;
	uint8_t hdr[512], ent[4];
	uint64_t gd;
	uint32_t gt;

	ck_assert_ok(create(p, 4 * MIB, NULL, NULL));
	ck_assert_ok(open_img(p, BLK_OPEN_RDWR, &d));
	put_bytes(d, 0, 2 * 65536, 6);
	blk_close(d);
	ck_assert_ok(open_img(p, 0, &d));
	ck_assert_ok(blk_check(d, &r, BLK_CHECK_DATA));
	ck_assert_uint_eq(r.corruptions, 0);
	ck_assert_uint_eq(r.allocated_clusters, 2);
	blk_check_report_release(&r);
	blk_close(d);
	/* point the second grain at the first: overlapping grains */
	ck_assert_ok(kl_io_open(p, KL_O_RDWR, &f));
	ck_assert_int_eq(kl_io_pread(f, 0, hdr, 512), 512);
	gd = get_le64(hdr + 56);
	ck_assert_int_eq(kl_io_pread(f, gd * 512, ent, 4), 4);
	gt = get_le32(ent);
	ck_assert_int_eq(kl_io_pread(f, (uint64_t)gt * 512, ent, 4), 4);
	ck_assert_ok(kl_io_pwrite(f, (uint64_t)gt * 512 + 4, ent, 4));
	kl_io_close(f);
	ck_assert_ok(open_img(p, 0, &d));
	ck_assert_ok(blk_check(d, &r, 0));
	/* both the primary vs redundant table mismatch and the overlap are found */
	ck_assert_uint_ge(r.corruptions, 2);
	ck_assert_uint_ge(r.nmsgs, 2);
	blk_check_report_release(&r);
	blk_close(d);
}
END_TEST

START_TEST(child_without_parent_is_read_only)
{
	const char *base = tu_path("nb.vmdk"), *child = tu_path("nc.vmdk");
	struct blk_dev *d;

	ck_assert_ok(create(base, MIB, NULL, NULL));
	ck_assert_ok(create(child, 0, NULL, "nb.vmdk"));
	ck_assert_int_eq(open_img(child, BLK_OPEN_RDWR | BLK_OPEN_NO_PARENT, &d), -EINVAL);
	ck_assert_ok(open_img(child, BLK_OPEN_NO_PARENT, &d));
	blk_close(d);
}
END_TEST

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

START_TEST(descriptor_flat_and_zero)
{
	const char *dp = tu_path("fl.vmdk");
	struct blk_dev *d;
	struct blk_extent e;
	uint8_t *buf = kl_malloc(MIB);
	FILE *f;

	/* flat data file with 1 MiB of junk before the extent */
	f = fopen(tu_path("fl-flat.bin"), "w");
	ck_assert_ptr_nonnull(f);
	memset(buf, 0xee, MIB);
	fwrite(buf, 1, MIB, f);
	tu_fill(buf, MIB, 21, 0);
	fwrite(buf, 1, MIB, f);
	fclose(f);
	write_text(dp, "# Disk DescriptorFile\nversion=1\nCID=00000001\nparentCID=ffffffff\n"
		       "createType=\"monolithicFlat\"\n"
		       "RW 2048 FLAT \"fl-flat.bin\" 2048\nRW 2048 ZERO\n");
	ck_assert_ok(open_img(dp, 0, &d));
	ck_assert_uint_eq(blk_size(d), 2 * MIB);
	check_bytes(d, 0, MIB, 21);
	check_bytes(d, MIB, MIB, 0);
	ck_assert_ok(blk_block_status(d, 0, 2 * MIB, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	ck_assert_uint_eq(e.len, MIB);
	ck_assert_ok(blk_block_status(d, MIB, MIB, &e));
	ck_assert_int_eq(e.type, BLK_ZERO);
	blk_close(d);
	/* an ESXi datastore descriptor: VMFS extents are flat, with no offset */
	write_text(dp, "# Disk DescriptorFile\nversion=1\nCID=00000002\nparentCID=ffffffff\n"
		       "createType=\"vmfsThin\"\nRW 4096 VMFS \"fl-flat.bin\"\n"
		       "ddb.thinProvisioned = \"1\"\n");
	ck_assert_ok(open_img(dp, 0, &d));
	ck_assert_uint_eq(blk_size(d), 2 * MIB);
	ck_assert_ok(blk_pread(d, MIB, buf, MIB)); /* file offset MIB holds fill(21, 0) */
	{
		uint8_t *want = kl_malloc(MIB);

		tu_fill(want, MIB, 21, 0);
		ck_assert(memcmp(buf, want, MIB) == 0);
		kl_free(want);
	}
	blk_close(d);
	/* flat extent file shorter than the descriptor says */
	write_text(dp, "# Disk DescriptorFile\nversion=1\nRW 8192 FLAT \"fl-flat.bin\" 0\n");
	ck_assert_int_eq(open_img(dp, 0, &d), -EUCLEAN);
	kl_free(buf);
}
END_TEST

START_TEST(descriptor_paths_stay_inside)
{
	const char *dp = tu_path("esc.vmdk");
	struct blk_dev *d;

	tu_sh("mkdir -p '%s/sub' && truncate -s 1M '%s/outside.bin'", tu_tmpdir(), tu_tmpdir());
	dp = tu_path("sub/esc.vmdk");
	write_text(dp, "# Disk DescriptorFile\nversion=1\nRW 2048 FLAT \"../outside.bin\" 0\n");
	ck_assert_int_eq(open_img(dp, 0, &d), -EPERM);
	ck_assert(strstr(kl_errmsg(), "outside") != NULL);
	ck_assert_ok(open_img(dp, BLK_OPEN_ALLOW_EXTERNAL, &d));
	blk_close(d);
	write_text(dp, "# Disk DescriptorFile\nversion=1\nRW 1 FLAT \"/etc/passwd\" 0\n");
	ck_assert_int_eq(open_img(dp, 0, &d), -EPERM);
	write_text(dp, "# Disk DescriptorFile\nversion=1\nRW 1 FLAT \"missing.bin\" 0\n");
	ck_assert_int_eq(open_img(dp, 0, &d), -ENOENT);
	ck_assert(strstr(kl_errmsg(), "missing.bin") != NULL);
	write_text(dp, "# Disk DescriptorFile\nversion=1\nCID=00000001\n");
	ck_assert_int_eq(open_img(dp, 0, &d), -EUCLEAN);
	ck_assert(strstr(kl_errmsg(), "no extents") != NULL);
}
END_TEST

/*
 * Allocating writes under a power cut at every I/O point, in a child whose
 * parent holds other data: afterwards the image opens and every sector
 * reads as its old content (the child's or the parent's) or its new one. A
 * grain table entry that reached the disk before its grain would read as
 * neither.
 */
static void crash_run(const char *p, bool arm, const struct kl_fault_rule *r)
{
	struct blk_dev *d;
	uint8_t *b = kl_malloc(2 * 65536);

	kl_fault_reset();
	if (arm)
		kl_fault_arm(r);
	if (open_img(p, BLK_OPEN_RDWR, &d) == 0) {
		tu_fill(b, 65536, 2, 0);
		(void)blk_pwrite(d, 0, b, 65536);
		tu_fill(b, 2 * 65536, 2, 3 * 65536 + 17);
		(void)blk_pwrite(d, 3 * 65536 + 17, b, 2 * 65536);
		(void)blk_flush(d);
		blk_close(d);
	}
	kl_free(b);
}

START_TEST(sparse_crash_consistency)
{
	const char *base = tu_path("crash-base.vmdk"), *ref = tu_path("crash-ref.vmdk");
	const char *p = tu_path("crash.vmdk");
	const size_t size = 512 * 1024;
	struct kl_fault_rule count = { .mode = KL_FAULT_ERROR, .at = UINT64_MAX };
	uint8_t *got = kl_malloc(size), *oldb = kl_malloc(size), *newb = kl_malloc(size);
	uint64_t points;
	struct blk_dev *d;

	ck_assert_ok(create(base, size, NULL, NULL));
	ck_assert_ok(open_img(base, BLK_OPEN_RDWR, &d));
	put_bytes(d, 0, size, 1);
	blk_close(d);
	ck_assert_ok(create(ref, 0, NULL, "crash-base.vmdk"));
	ck_assert_ok(open_img(ref, BLK_OPEN_RDWR, &d));
	put_bytes(d, 0, 65536, 3); /* one grain the update overwrites in place */
	blk_close(d);
	ck_assert_ok(open_img(ref, 0, &d));
	ck_assert_ok(blk_pread(d, 0, oldb, size));
	blk_close(d);
	memcpy(newb, oldb, size);
	tu_fill(newb, 65536, 2, 0);
	tu_fill(newb + 3 * 65536 + 17, 2 * 65536, 2, 3 * 65536 + 17);

	ck_assert_ok(tu_copy(ref, p));
	crash_run(p, true, &count);
	points = kl_fault_points();
	kl_fault_reset();
	ck_assert_uint_gt(points, 3);
	for (int torn = 0; torn < 2; torn++) {
		for (uint64_t n = 1; n <= points; n++) {
			struct kl_fault_rule r = { .mode = torn ? KL_FAULT_CRASH_TORN :
								 KL_FAULT_CRASH,
						   .at = n,
						   .seed = n * 7 + (uint64_t)torn };

			ck_assert_ok(tu_copy(ref, p));
			crash_run(p, true, &r);
			kl_fault_settle();
			kl_fault_reset();
			ck_assert_msg(open_img(p, 0, &d) == 0, "crash at %llu: %s",
				      (unsigned long long)n, kl_errmsg());
			ck_assert_ok(blk_pread(d, 0, got, size));
			blk_close(d);
			/*
			 * keel check: at most a redundant grain table that missed the
			 * update (primary first, then the copy), which -r all copies
			 * back, and grains appended at the end that no table names yet
			 * (leaks, cut off); then the image checks clean.
			 */
			{
				struct blk_check_report cr;

				ck_assert_ok(open_img(p, 0, &d));
				ck_assert_ok(blk_check(d, &cr, 0));
				for (size_t i = 0; i < cr.nmsgs; i++)
					ck_assert_msg(strstr(cr.msgs[i], "differs from the primary") ||
							      strstr(cr.msgs[i], "at the end of the file"),
						      "crash at %llu (torn %d): %s",
						      (unsigned long long)n, torn, cr.msgs[i]);
				blk_check_report_release(&cr);
				blk_close(d);
				ck_assert_ok(open_img(p, BLK_OPEN_RDWR | BLK_OPEN_REPAIR, &d));
				ck_assert_ok(blk_check(d, &cr, BLK_CHECK_REPAIR_ALL));
				ck_assert_uint_eq(cr.corruptions + cr.leaks, cr.repaired);
				blk_check_report_release(&cr);
				blk_close(d);
				ck_assert_ok(open_img(p, 0, &d));
				ck_assert_ok(blk_check(d, &cr, 0));
				ck_assert_msg(cr.corruptions == 0 && cr.leaks == 0,
					      "crash at %llu (torn %d): after -r: %s",
					      (unsigned long long)n, torn, cr.nmsgs ? cr.msgs[0] : "");
				blk_check_report_release(&cr);
				ck_assert_ok(blk_pread(d, 0, got, size));
				blk_close(d);
			}
			for (size_t o = 0; o < size; o += 512)
				ck_assert_msg(memcmp(got + o, oldb + o, 512) == 0 ||
						      memcmp(got + o, newb + o, 512) == 0,
					      "crash at point %llu (torn %d): sector at %zu is neither "
					      "old nor new",
					      (unsigned long long)n, torn, o);
		}
	}
	kl_free(got);
	kl_free(oldb);
	kl_free(newb);
}
END_TEST

static Suite *vmdk_suite(void)
{
	Suite *s = suite_create("vmdk");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, desc_parse_sample);
	tcase_add_test(tc, desc_parse_stops_at_nul_and_parent);
	tcase_add_test(tc, desc_parse_errors);
	tcase_add_test(tc, desc_set_cid);
	tcase_add_test(tc, sparse_create_write_reopen);
	tcase_add_test(tc, sparse_zeroed_grain);
	tcase_add_test(tc, stream_create_write_read);
	tcase_add_test(tc, stream_flush_then_continue);
	tcase_add_test(tc, stream_padded_after_eos);
	tcase_add_test(tc, sparse_version3_read_only);
	tcase_add_test(tc, check_finds_damage);
	tcase_add_test(tc, child_without_parent_is_read_only);
	tcase_add_test(tc, parent_chain_cid);
	tcase_add_test(tc, parent_must_be_vmdk);
	tcase_add_test(tc, descriptor_flat_and_zero);
	tcase_add_test(tc, descriptor_paths_stay_inside);
	tcase_add_test(tc, sparse_crash_consistency);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(vmdk_suite());
}
