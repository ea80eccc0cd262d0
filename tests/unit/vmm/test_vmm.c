/*
 * tests/unit/vmm/test_vmm.c - the VMM's host-side pieces that need no KVM:
 * bzImage and ELF/PVH header parsing, the verdict reader, the disk overlay,
 * the MP table bytes, the NBD server, and engine selection errors.
 */
#define _GNU_SOURCE
#include "tests/common/testutil.h"
#include "vmm/vmm_int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static uint8_t *fake_bzimage(size_t *len)
{
	uint8_t *b = calloc(1, 8192);

	ck_assert(b);
	b[0x1f1] = 1;
	put_le16(b + 0x1fe, 0xaa55);
	b[0x201] = 0x66;
	memcpy(b + 0x202, "HdrS", 4);
	put_le16(b + 0x206, 0x020f);
	b[0x211] = 1;
	put_le32(b + 0x22c, 0x7fffffff);
	put_le16(b + 0x236, 1);
	put_le32(b + 0x238, 2047);
	put_le32(b + 0x260, 0x100000);
	*len = 8192;
	return b;
}

START_TEST(test_bzimage_parse)
{
	struct vmm_bzimage bz;
	size_t len;
	uint8_t *b = fake_bzimage(&len);

	ck_assert_ok(vmm_bzimage_parse(b, len, "k", &bz));
	ck_assert_uint_eq(bz.setup_len, 1024);
	ck_assert_uint_eq(bz.kernel_len, 8192 - 1024);
	ck_assert_uint_eq(bz.cmdline_size, 2047);
	ck_assert_int_eq(vmm_bzimage_parse(b, 0x200, "k", &bz), -EINVAL);
	put_le16(b + 0x236, 0);
	ck_assert_int_eq(vmm_bzimage_parse(b, len, "k", &bz), -ENOTSUP);
	put_le16(b + 0x236, 1);
	put_le16(b + 0x206, 0x0204);
	ck_assert_int_eq(vmm_bzimage_parse(b, len, "k", &bz), -ENOTSUP);
	put_le16(b + 0x206, 0x020f);
	b[0x1f1] = 200; /* setup larger than the file */
	ck_assert_int_eq(vmm_bzimage_parse(b, len, "k", &bz), -EINVAL);
	b[0x1f1] = 1;
	memcpy(b + 0x202, "HdrX", 4);
	ck_assert_int_eq(vmm_bzimage_parse(b, len, "k", &bz), -EINVAL);
	ck_assert_msg(strstr(kl_errmsg(), "not a bzImage"), "%s", kl_errmsg());
	free(b);
}
END_TEST

static size_t fake_elf(uint8_t *b, size_t cap, uint64_t entry)
{
	size_t n = 64 + 2 * 56 + 24;

	ck_assert(cap >= n + 64);
	memset(b, 0, cap);
	memcpy(b, "\177ELF", 4);
	b[4] = 2;
	b[5] = 1;
	put_le16(b + 18, 62);
	put_le64(b + 32, 64);
	put_le16(b + 54, 56);
	put_le16(b + 56, 2);
	/* PT_LOAD: 64 bytes at file 0 -> 1 MiB, memsz 4096 */
	put_le32(b + 64, 1);
	put_le64(b + 64 + 8, 0);
	put_le64(b + 64 + 24, 0x100000);
	put_le64(b + 64 + 32, 64);
	put_le64(b + 64 + 40, 4096);
	/* PT_NOTE: the Xen PHYS32_ENTRY note */
	put_le32(b + 120, 4);
	put_le64(b + 120 + 8, 64 + 2 * 56);
	put_le64(b + 120 + 32, 24);
	put_le32(b + 176, 4);
	put_le32(b + 180, 4);
	put_le32(b + 184, 18);
	memcpy(b + 188, "Xen", 4);
	put_le32(b + 192, (uint32_t)entry);
	return n;
}

START_TEST(test_elf_parse)
{
	uint8_t b[512];
	struct vmm_elf e;
	size_t n = fake_elf(b, sizeof(b), 0x100040);

	ck_assert_ok(vmm_elf_parse(b, n, "v", &e));
	ck_assert_uint_eq(e.nsegs, 1);
	ck_assert_uint_eq(e.segs[0].paddr, 0x100000);
	ck_assert_uint_eq(e.pvh_entry, 0x100040);
	/* note length past its segment: ignored, no entry */
	put_le32(b + 180, 1000);
	ck_assert_ok(vmm_elf_parse(b, n, "v", &e));
	ck_assert_uint_eq(e.pvh_entry, 0);
	/* program headers past the end */
	put_le64(b + 32, 1ULL << 40);
	ck_assert_int_eq(vmm_elf_parse(b, n, "v", &e), -EINVAL);
	put_le64(b + 32, 64);
	/* segment past the end of the file */
	put_le64(b + 64 + 32, 1ULL << 62);
	ck_assert_int_eq(vmm_elf_parse(b, n, "v", &e), -EINVAL);
	ck_assert_int_eq(vmm_elf_parse(b, 10, "v", &e), -EINVAL);
}
END_TEST

START_TEST(test_verdict_ok)
{
	static const char con[] =
		"[ 0.1] boot noise\r\n"
		"KEEL-APPLIANCE: init 2.50\r\n"
		"VERDICT: {\"verdict\":\"ok\",\"reasons\":[],\"disk\":{\"ptable\":\"gpt\"},"
		"\"os\":{\"id\":\"debian\",\"name\":\"Debian \\\"12\\\" \\u00e9\"},\"uptime\":4.25}\r\n"
		"reboot: Restarting system\n";
	struct vmm_report r = { 0 };

	ck_assert_ok(vmm_verdict_parse(con, sizeof(con) - 1, &r));
	ck_assert(r.passed);
	ck_assert_uint_eq(r.nreasons, 0);
	ck_assert_str_eq(r.os_id, "debian");
	ck_assert_str_eq(r.os_name, "Debian \"12\" \xc3\xa9");
	ck_assert_str_eq(r.ptable, "gpt");
	ck_assert(r.t_kernel > 2.49 && r.t_kernel < 2.51);
	ck_assert(r.t_checks > 1.74 && r.t_checks < 1.76);
	vmm_report_release(&r);
}
END_TEST

START_TEST(test_verdict_fail_and_bad)
{
	static const char fail[] = "VERDICT: {\"verdict\":\"fail\",\"reasons\":[\"no-os: x\","
				   "\"nothing-bootable\"]}\n";
	static const char liar[] = "VERDICT: {\"verdict\":\"ok\",\"reasons\":[\"fsck-errors\"]}\n";
	static const char *bad[] = {
		"no verdict here\n",
		"VERDICT: {\"verdict\":\"ok\"\n",
		"VERDICT: {\"verdict\":1}\n",
		"VERDICT: [\"verdict\",\"ok\"]\n",
		"VERDICT: {\"verdict\":\"ok\",\"reasons\":\"none\"}\n",
		"VERDICT: {\"verdict\":\"ok\"} trailing\n",
		"VERDICT: {\"a\":\"\\x\"}\n",
		"VERDICT: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
	};
	struct vmm_report r = { 0 };

	ck_assert_ok(vmm_verdict_parse(fail, sizeof(fail) - 1, &r));
	ck_assert(!r.passed);
	ck_assert_uint_eq(r.nreasons, 2);
	ck_assert_str_eq(r.reasons[1], "nothing-bootable");
	vmm_report_release(&r);
	/* "ok" with reasons is not a pass */
	ck_assert_ok(vmm_verdict_parse(liar, sizeof(liar) - 1, &r));
	ck_assert(!r.passed);
	vmm_report_release(&r);
	for (size_t i = 0; i < KL_ARRAY_SIZE(bad); i++) {
		ck_assert_msg(vmm_verdict_parse(bad[i], strlen(bad[i]), &r) == -EBADMSG, "case %zu", i);
		vmm_report_release(&r);
	}
}
END_TEST

START_TEST(test_disk_overlay)
{
	const char *img = tu_path("ov.raw");
	struct vmm_opts o = { .image = img, .image_format = "raw" };
	struct vmm_disk *d;
	uint8_t orig[16384], buf[16384], w[700];
	uint64_t rd, wr, ov;
	FILE *f = fopen(img, "wb");

	tu_fill(orig, sizeof(orig), 3, 0);
	ck_assert(f && fwrite(orig, 1, sizeof(orig), f) == sizeof(orig));
	fclose(f);
	ck_assert_ok(vmm_disk_open(&o, &d));
	ck_assert_uint_eq(vmm_disk_size(d), sizeof(orig));
	memset(w, 0x5a, sizeof(w));
	/* straddles the first chunk boundary */
	ck_assert_ok(vmm_disk_write(d, 4000, w, sizeof(w)));
	ck_assert_ok(vmm_disk_read(d, 0, buf, sizeof(buf)));
	ck_assert(!memcmp(buf, orig, 4000));
	ck_assert(!memcmp(buf + 4000, w, sizeof(w)));
	ck_assert(!memcmp(buf + 4700, orig + 4700, sizeof(orig) - 4700));
	ck_assert_int_eq(vmm_disk_write(d, sizeof(orig) - 10, w, 20), -EINVAL);
	ck_assert_int_eq(vmm_disk_read(d, UINT64_MAX - 5, buf, 20), -EINVAL);
	vmm_disk_stats(d, &rd, &wr, &ov);
	ck_assert_uint_eq(wr, sizeof(w));
	ck_assert_uint_eq(ov, 2 * VMM_OVERLAY_CHUNK);
	vmm_disk_close(d);
	/* the file is unchanged */
	f = fopen(img, "rb");
	ck_assert(f && fread(buf, 1, sizeof(buf), f) == sizeof(buf));
	fclose(f);
	ck_assert(!memcmp(buf, orig, sizeof(orig)));
}
END_TEST

static uint8_t mp_sum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

START_TEST(test_mptable_bytes)
{
	struct vmm vm = { 0 };
	struct vmm_pci_dev pd = { 0 };
	uint8_t *fp, *cfg;

	vm.mem_size = 2 << 20;
	vm.mem = calloc(1, vm.mem_size);
	ck_assert(vm.mem);
	ck_assert_ok(vmm_pci_init(&vm));
	pd.irq_pin = 1;
	pd.bar_size[0] = 0x40;
	pd.bar_io[0] = true;
	ck_assert_ok(vmm_pci_add(&vm, &pd));
	ck_assert_uint_eq(pd.slot, 1);
	ck_assert_uint_eq(pd.gsi, 16);
	ck_assert_ok(vmm_mptable_write(&vm));
	fp = vm.mem + VMM_MPTABLE_ADDR;
	ck_assert(!memcmp(fp, "_MP_", 4));
	ck_assert_uint_eq(mp_sum(fp, 16), 0);
	cfg = vm.mem + get_le32(fp + 4);
	ck_assert(!memcmp(cfg, "PCMP", 4));
	ck_assert_uint_eq(mp_sum(cfg, get_le16(cfg + 4)), 0);
	ck_assert_uint_eq(get_le16(cfg + 34), 22);
	vmm_pci_exit(&vm);
	free(vm.mem);
}
END_TEST

static void wr_all(int fd, const void *p, size_t n)
{
	ck_assert_int_eq(write(fd, p, n), (ssize_t)n);
}

static void rd_all(int fd, void *p, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, (uint8_t *)p + got, n - got);

		ck_assert(r > 0);
		got += (size_t)r;
	}
}

START_TEST(test_nbd_server)
{
	const char *img = tu_path("nbd.raw");
	struct vmm_opts o = { .image = img, .image_format = "raw" };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct vmm_disk *d;
	struct vmm_nbd *n;
	uint8_t orig[65536], hello[18], opt[16 + 6], rep[20], info[12], q[28], r[16], data[4096];
	char name[64];
	int fd;
	FILE *f = fopen(img, "wb");

	tu_fill(orig, sizeof(orig), 5, 0);
	ck_assert(f && fwrite(orig, 1, sizeof(orig), f) == sizeof(orig));
	fclose(f);
	ck_assert_ok(vmm_disk_open(&o, &d));
	snprintf(name, sizeof(name), "keel-test-nbd-%d", (int)getpid());
	ck_assert_ok(vmm_nbd_start(d, false, name, &n));
	vmm_nbd_set_peer(n, getpid());
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	memcpy(sa.sun_path + 1, name, strlen(name));
	ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa,
				 (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name))), 0);
	rd_all(fd, hello, sizeof(hello));
	ck_assert(!memcmp(hello, "NBDMAGICIHAVEOPT", 16));
	wr_all(fd, "\0\0\0\3", 4); /* FIXED_NEWSTYLE | NO_ZEROES */
	/* NBD_OPT_GO, empty name, no info requests */
	put_be64(opt, 0x49484156454f5054ULL);
	put_be32(opt + 8, 7);
	put_be32(opt + 12, 6);
	memset(opt + 16, 0, 6);
	wr_all(fd, opt, sizeof(opt));
	rd_all(fd, rep, sizeof(rep));
	ck_assert_uint_eq(get_be32(rep + 12), 3); /* NBD_REP_INFO */
	ck_assert_uint_eq(get_be32(rep + 16), 12);
	rd_all(fd, info, sizeof(info));
	ck_assert_uint_eq(get_be64(info + 2), sizeof(orig));
	ck_assert(get_be16(info + 10) & 2); /* read-only */
	rd_all(fd, rep, sizeof(rep));
	ck_assert_uint_eq(get_be32(rep + 12), 1); /* ACK */
	/* READ 4096 at 8192 */
	put_be32(q, 0x25609513);
	put_be16(q + 4, 0);
	put_be16(q + 6, 0);
	memcpy(q + 8, "handle01", 8);
	put_be64(q + 16, 8192);
	put_be32(q + 24, 4096);
	wr_all(fd, q, sizeof(q));
	rd_all(fd, r, sizeof(r));
	ck_assert_uint_eq(get_be32(r), 0x67446698);
	ck_assert_uint_eq(get_be32(r + 4), 0);
	ck_assert(!memcmp(r + 8, "handle01", 8));
	rd_all(fd, data, sizeof(data));
	ck_assert(!memcmp(data, orig + 8192, sizeof(data)));
	/* WRITE is refused on a read-only export */
	put_be16(q + 6, 1);
	put_be32(q + 24, 512);
	wr_all(fd, q, sizeof(q));
	wr_all(fd, data, 512);
	rd_all(fd, r, sizeof(r));
	ck_assert_uint_eq(get_be32(r + 4), EPERM);
	/* READ past the end: EINVAL, no data */
	put_be16(q + 6, 0);
	put_be64(q + 16, sizeof(orig));
	wr_all(fd, q, sizeof(q));
	rd_all(fd, r, sizeof(r));
	ck_assert_uint_eq(get_be32(r + 4), EINVAL);
	/* DISC */
	put_be16(q + 6, 2);
	wr_all(fd, q, sizeof(q));
	close(fd);
	vmm_nbd_stop(n);
	vmm_disk_close(d);
}
END_TEST

START_TEST(test_engine_choice)
{
	struct vmm_opts o = { 0 };
	enum vmm_engine e;
	char why[256];

	ck_assert_ok(vmm_engine_parse("qemu", &e));
	ck_assert_int_eq(e, VMM_ENGINE_QEMU);
	ck_assert_int_eq(vmm_engine_parse("xen", &e), -EINVAL);
	o.kvm_dev = "/nonexistent/kvm";
	o.qemu_bin = "/nonexistent/qemu";
	ck_assert_int_eq(vmm_choose_engine(&o, &e, why, sizeof(why)), -ENOENT);
	ck_assert_msg(strstr(kl_errmsg(), "no engine can run") &&
		      strstr(kl_errmsg(), "/nonexistent/kvm does not exist"), "%s", kl_errmsg());
	o.engine = VMM_ENGINE_QEMU;
	ck_assert_ok(vmm_choose_engine(&o, &e, why, sizeof(why)));
	ck_assert_int_eq(e, VMM_ENGINE_QEMU);
}
END_TEST

static Suite *vmm_suite(void)
{
	Suite *s = suite_create("vmm");
	TCase *tc = tcase_create("host");

	tcase_add_test(tc, test_bzimage_parse);
	tcase_add_test(tc, test_elf_parse);
	tcase_add_test(tc, test_verdict_ok);
	tcase_add_test(tc, test_verdict_fail_and_bad);
	tcase_add_test(tc, test_disk_overlay);
	tcase_add_test(tc, test_mptable_bytes);
	tcase_add_test(tc, test_nbd_server);
	tcase_add_test(tc, test_engine_choice);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(vmm_suite());
}
