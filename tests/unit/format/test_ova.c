/*
 * tests/unit/format/test_ova.c - the ova driver's parsers and the file
 * window it reads disks through: good input parses, bad input gives a
 * clear negative code (never a crash), and a window reads exactly its
 * segments.
 */
#include "tests/common/testutil.h"
#include "format/ova.h"

#include <string.h>

#define ENV_OPEN "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" " \
		 "xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\">"

static int parse(const char *xml, struct ova_desc *d)
{
	return ova_parse_ovf(xml, strlen(xml), "t.ovf", d);
}

START_TEST(ovf_good)
{
	struct ova_desc d;
	const char *x = ENV_OPEN
		"<References><File ovf:id='f1' ovf:href='a.vmdk' ovf:size='1024'/>"
		"<File ovf:id='f2' ovf:href='b.vmdk' ovf:chunkSize='512'/></References>"
		"<DiskSection><Info>i</Info>"
		"<Disk ovf:diskId='d1' ovf:fileRef='f1' ovf:capacity='4' "
		"ovf:capacityAllocationUnits='byte * 2^30'/>"
		"<Disk ovf:diskId='d2' ovf:fileRef='f2' ovf:capacity='1048576'/></DiskSection>"
		"<VirtualSystem ovf:id='vm'><Info>i</Info><Name>web &amp; db</Name>"
		"<VirtualHardwareSection><Info>h</Info>"
		"<Item><ResourceType>3</ResourceType><VirtualQuantity>4</VirtualQuantity></Item>"
		"<Item><ResourceType>4</ResourceType><VirtualQuantity>8192</VirtualQuantity></Item>"
		"</VirtualHardwareSection></VirtualSystem></Envelope>";

	ck_assert_ok(parse(x, &d));
	ck_assert_uint_eq(d.nfiles, 2);
	ck_assert_uint_eq(d.ndisks, 2);
	ck_assert_uint_eq(d.disks[0].capacity, 4ULL << 30);
	ck_assert_uint_eq(d.files[0].size, 1024);
	ck_assert(d.files[0].has_size);
	ck_assert_uint_eq(d.files[1].chunk_size, 512);
	ck_assert_str_eq(d.vm_name, "web & db");
	ck_assert_uint_eq(d.cpus, 4);
	ck_assert_uint_eq(d.memory_mib, 8192);
	ck_assert_int_eq(d.version, 1);
	ova_desc_release(&d);
}
END_TEST

START_TEST(ovf_bad)
{
	static const char *bad[] = {
		"",
		"<notxml",
		"<Other/>",
		ENV_OPEN "<DiskSection><Disk ovf:diskId='d' ovf:fileRef='nope' ovf:capacity='1'/>"
			 "</DiskSection></Envelope>",
		ENV_OPEN "<DiskSection><Disk ovf:diskId='d'/></DiskSection></Envelope>",
		ENV_OPEN "<DiskSection><Disk ovf:diskId='d' ovf:capacity='-1'/></DiskSection></Envelope>",
		ENV_OPEN "<DiskSection><Disk ovf:diskId='d' ovf:capacity='99999999999999999999'/>"
			 "</DiskSection></Envelope>",
		ENV_OPEN "<DiskSection><Disk ovf:diskId='d' ovf:capacity='8' "
			 "ovf:capacityAllocationUnits='byte * 2^62'/></DiskSection></Envelope>",
		ENV_OPEN "<DiskSection><Disk ovf:diskId='d' ovf:capacity='8' "
			 "ovf:capacityAllocationUnits='furlongs'/></DiskSection></Envelope>",
		ENV_OPEN "<References><File ovf:id='f'/></References></Envelope>",
		ENV_OPEN "<References><File ovf:id='f' ovf:href='x' ovf:size='big'/></References>"
			 "</Envelope>",
		ENV_OPEN "<References><File ovf:id='f' ovf:href='x' ovf:chunkSize='0'/></References>"
			 "</Envelope>",
		ENV_OPEN "<DiskSection><Disk ovf:diskId='d' ovf:capacity='1'/>"
			 "<Disk ovf:diskId='d' ovf:capacity='1'/></DiskSection></Envelope>",
		/* an external entity must not be fetched or expanded into data */
		"<?xml version='1.0'?><!DOCTYPE e [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
		"<Envelope xmlns='http://schemas.dmtf.org/ovf/envelope/1'><DiskSection>"
		"<Disk diskId='&x;' capacity='1'/></DiskSection></Envelope>",
	};
	for (size_t i = 0; i < KL_ARRAY_SIZE(bad); i++) {
		struct ova_desc d;
		int rc = parse(bad[i], &d);

		ck_assert_msg(rc < 0, "case %zu parsed", i);
		ck_assert_msg(rc == -EUCLEAN || rc == -ENOTSUP, "case %zu: %d", i, rc);
		ck_assert_ptr_nonnull(kl_errmsg());
	}
}
END_TEST

START_TEST(mf_good_and_bad)
{
	const char *good = "SHA256(vm.ovf)= "
			   "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\r\n"
			   "\nSHA1(a (1).vmdk)= 00112233445566778899AABBCCDDEEFF00112233\n";
	static const char *bad[] = {
		"MD5(x)= 00",
		"SHA256(x)= 0011",
		"SHA256(x)= zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
		"SHA256 x = 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
		"SHA1()= 00112233445566778899aabbccddeeff00112233",
	};
	struct ova_mf_entry *e;
	size_t n;

	ck_assert_ok(ova_parse_mf(good, strlen(good), "m", &e, &n));
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(e[0].name, "vm.ovf");
	ck_assert_int_eq(e[0].algo, OVA_SHA256);
	ck_assert_str_eq(e[1].name, "a (1).vmdk");
	ck_assert_int_eq(e[1].algo, OVA_SHA1);
	ck_assert_uint_eq(e[1].digest[10], 0xaa);
	ova_mf_free(e, n);
	for (size_t i = 0; i < KL_ARRAY_SIZE(bad); i++)
		ck_assert_msg(ova_parse_mf(bad[i], strlen(bad[i]), "m", &e, &n) == -EUCLEAN,
			      "case %zu", i);
}
END_TEST

START_TEST(window_reads_segments)
{
	struct kl_file *f, *w;
	struct kl_io_seg segs[3] = { { 100, 50 }, { 10, 20 }, { 4000, 96 } };
	uint8_t file[4096], got[200], want[166];
	uint64_t sz;
	size_t k = 0;

	tu_fill(file, sizeof(file), 7, 0);
	ck_assert_int_eq(tu_sh("true"), 0);
	{
		struct kl_file *o;

		ck_assert_ok(kl_io_open(tu_path("base"), KL_O_RDWR | KL_O_CREAT, &o));
		ck_assert_ok(kl_io_pwrite(o, 0, file, sizeof(file)));
		kl_io_close(o);
	}
	for (int i = 0; i < 3; i++)
		for (uint64_t b = 0; b < segs[i].len; b++)
			want[k++] = file[segs[i].off + b];
	ck_assert_ok(kl_io_open(tu_path("base"), KL_O_RDONLY, &f));
	ck_assert_ok(kl_io_open_window(f, segs, 3, "win", &w));
	kl_io_close(f); /* the window keeps its own descriptor */
	ck_assert_ok(kl_io_size(w, &sz));
	ck_assert_uint_eq(sz, 166);
	ck_assert_int_eq(kl_io_pread(w, 0, got, 166), 166);
	ck_assert_mem_eq(got, want, 166);
	/* across a segment boundary, and a short read at the end zero-fills */
	ck_assert_int_eq(kl_io_pread(w, 45, got, 10), 10);
	ck_assert_mem_eq(got, want + 45, 10);
	memset(got, 0xee, sizeof(got));
	ck_assert_int_eq(kl_io_pread(w, 160, got, 20), 6);
	ck_assert_mem_eq(got, want + 160, 6);
	ck_assert_uint_eq(got[6], 0);
	ck_assert_int_eq(kl_io_pwrite(w, 0, got, 1), -EROFS);
	ck_assert_int_eq(kl_io_truncate(w, 0), -EROFS);
	kl_io_close(w);
	/* a segment outside the file is refused */
	ck_assert_ok(kl_io_open(tu_path("base"), KL_O_RDONLY, &f));
	segs[0].off = 4090;
	segs[0].len = 7;
	ck_assert_int_eq(kl_io_open_window(f, segs, 1, "bad", &w), -EUCLEAN);
	kl_io_close(f);
}
END_TEST

START_TEST(open_garbage_tar)
{
	/* ustar magic and a .ovf name, then nonsense: a clean error, no crash */
	uint8_t buf[2048] = { 0 };
	struct kl_file *o;
	struct blk_open_opts oo = { .format = "ova" };
	struct blk_dev *d;

	memcpy(buf, "vm.ovf", 6);
	memcpy(buf + 124, "77777777777", 11);
	memcpy(buf + 257, "ustar", 6);
	ck_assert_ok(kl_io_open(tu_path("g.ova"), KL_O_RDWR | KL_O_CREAT, &o));
	ck_assert_ok(kl_io_pwrite(o, 0, buf, sizeof(buf)));
	kl_io_close(o);
	ck_assert_int_lt(blk_open(tu_path("g.ova"), &oo, &d), 0);
	oo.flags = BLK_OPEN_RDWR;
	ck_assert_int_eq(blk_open(tu_path("g.ova"), &oo, &d), -EROFS);
}
END_TEST

static Suite *ova_suite(void)
{
	Suite *s = suite_create("ova");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, ovf_good);
	tcase_add_test(tc, ovf_bad);
	tcase_add_test(tc, mf_good_and_bad);
	tcase_add_test(tc, window_reads_segments);
	tcase_add_test(tc, open_garbage_tar);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(ova_suite());
}
