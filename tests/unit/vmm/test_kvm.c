/*
 * tests/unit/vmm/test_kvm.c - keel's VMM on /dev/kvm with the tiny guests of
 * tests/vmm/guests/: boot protocol (bzImage 64-bit entry and PVH), PCI
 * enumeration, virtio-blk reads/writes through the legacy transport, the MP
 * table, resets, and the watchdog. The guests report over the UART; each test
 * checks the console. Without a usable /dev/kvm the suite prints SKIP and
 * exits 77. These guests run a few million instructions, so they are quick
 * even on kvm_pvm (software KVM).
 */
#define _GNU_SOURCE
#include "tests/common/testutil.h"
#include "vmm/vmm_int.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define CMDLINE "keel-test console=ttyS0 answer=42"

static const char *guest(const char *name)
{
	static char p[4][512];
	static int k;
	const char *dir = getenv("KEEL_GUEST_DIR");
	const char *build = getenv("BUILD");

	k = (k + 1) % 4;
	if (dir && *dir)
		snprintf(p[k], sizeof(p[k]), "%s/%s", dir, name);
	else
		snprintf(p[k], sizeof(p[k]), "%s/tests/vmm/guests/%s", build && *build ? build : "build",
			 name);
	return p[k];
}

static void run_guest(const char *name, const char *image, bool writable, unsigned timeout,
		      const char *initrd, struct vmm_run_result *r)
{
	struct vmm_opts o = { 0 };

	o.engine = VMM_ENGINE_KVM;
	o.kernel = guest(name);
	o.initrd = initrd;
	o.cmdline = CMDLINE;
	o.image = image;
	o.image_format = image ? "raw" : NULL;
	o.disk_writable = writable;
	o.mem_size = 64ULL << 20;
	/* generous: the host may be loaded and kvm_pvm is slow; the watchdog test sets its own */
	o.timeout_s = timeout ? timeout : 180;
	o.console_log = tu_path("console.log");
	ck_assert_msg(access(o.kernel, R_OK) == 0, "guest %s not built (make vmm-guests)", o.kernel);
	ck_assert_ok(vmm_run(&o, r));
	ck_assert_int_eq(r->engine, VMM_ENGINE_KVM);
}

static void expect_line(const struct vmm_run_result *r, const char *line)
{
	ck_assert_msg(r->console && strstr(r->console, line), "console lacks '%s'; console:\n%s",
		      line, r->console ? r->console : "(none)");
}

static uint32_t file_crc(const char *path, uint64_t off, size_t len)
{
	uint8_t *b = malloc(len);
	int fd = open(path, O_RDONLY);
	uint32_t c;

	ck_assert(b && fd >= 0);
	ck_assert_int_eq(pread(fd, b, len, (off_t)off), (ssize_t)len);
	close(fd);
	c = (uint32_t)crc32(0, b, (uInt)len);
	free(b);
	return c;
}

START_TEST(test_boot_protocol)
{
	struct vmm_run_result r;
	const char *rd = tu_path("initrd.bin");
	char line[128];
	uint8_t buf[10000];
	FILE *f;

	tu_fill(buf, sizeof(buf), 7, 0);
	f = fopen(rd, "wb");
	ck_assert(f && fwrite(buf, 1, sizeof(buf), f) == sizeof(buf));
	fclose(f);
	run_guest("boot.bin", NULL, false, 0, rd, &r);
	expect_line(&r, "BOOT: zero page 0x7000");
	expect_line(&r, "BOOT: hdr HdrS flag 0xaa55 loader 0xff");
	expect_line(&r, "CMDLINE: " CMDLINE "\n");
	expect_line(&r, "E820: 0x0 0x9fc00 1\n");
	expect_line(&r, "E820: 0x9fc00 0x60400 2\n");
	expect_line(&r, "E820: 0x100000 0x3f00000 1\n");
	snprintf(line, sizeof(line), "INITRD: size 10000 crc 0x%x\n",
		 (unsigned)crc32(0, buf, sizeof(buf)));
	expect_line(&r, line);
	expect_line(&r, "GUEST: reset");
	ck_assert_int_eq(r.exit, VMM_EXIT_RESET);
	ck_assert(!r.pvh);
	vmm_run_result_release(&r);
}
END_TEST

START_TEST(test_pvh_entry)
{
	struct vmm_run_result r;
	const char *rd = tu_path("initrd2.bin");
	uint8_t buf[5000];
	char line[128];
	FILE *f;

	tu_fill(buf, sizeof(buf), 9, 0);
	f = fopen(rd, "wb");
	ck_assert(f && fwrite(buf, 1, sizeof(buf), f) == sizeof(buf));
	fclose(f);
	run_guest("pvh.elf", NULL, false, 0, rd, &r);
	expect_line(&r, "PVH: magic 0x336ec578 version 1");
	expect_line(&r, "CMDLINE: " CMDLINE "\n");
	expect_line(&r, "E820: 0x100000 0x3f00000 1\n");
	snprintf(line, sizeof(line), "INITRD: size 5000 crc 0x%x\n",
		 (unsigned)crc32(0, buf, sizeof(buf)));
	expect_line(&r, line);
	ck_assert_int_eq(r.exit, VMM_EXIT_RESET);
	ck_assert(r.pvh);
	vmm_run_result_release(&r);
}
END_TEST

static const char *make_disk(const char *name, size_t size)
{
	const char *p = tu_path(name);
	uint8_t *b = malloc(size);
	FILE *f = fopen(p, "wb");

	ck_assert(b && f);
	tu_fill(b, size, 1234, 0);
	ck_assert(fwrite(b, 1, size, f) == size);
	fclose(f);
	free(b);
	return p;
}

START_TEST(test_pci_enumeration)
{
	struct vmm_run_result r;
	const char *disk = make_disk("pci.raw", 1 << 20);

	run_guest("pci.bin", disk, false, 0, NULL, &r);
	expect_line(&r, "PCI: cf8 readback 0x80000000\n");
	expect_line(&r, "PCI: 00:0.0 id 0x81b36 class 0x60000");
	expect_line(&r, "PCI: 00:1.0 id 0x10011af4 class 0x10000 sub 0x21af4 irq 0x110\n");
	expect_line(&r, "PCI: bar0 0xc001 sizing 0xffffffc1 restored 0xc001\n");
	expect_line(&r, "PCI: absent 0xffffffff\n");
	expect_line(&r, "PCI: done");
	ck_assert_int_eq(r.exit, VMM_EXIT_RESET);
	vmm_run_result_release(&r);
}
END_TEST

static void blk_case(bool writable)
{
	struct vmm_run_result r;
	const char *disk = make_disk(writable ? "blkw.raw" : "blk.raw", 1 << 20);
	struct stat before, after;
	uint32_t crc_before = file_crc(disk, 0, 1 << 20);
	uint8_t pat[512];
	char line[128];

	ck_assert_int_eq(stat(disk, &before), 0);
	sleep(1); /* an mtime change would show */
	run_guest("blk.bin", disk, writable, 0, NULL, &r);
	snprintf(line, sizeof(line), "BLK: features 0x%x ro %d\n",
		 writable ? 0x244 : 0x264, writable ? 0 : 1);
	expect_line(&r, line);
	expect_line(&r, "BLK: capacity 2048\n");
	expect_line(&r, "BLK: queue size 256\n");
	for (unsigned s = 0; s < 32; s += 8) {
		snprintf(line, sizeof(line), "BLK: read %u status 0 crc 0x%x\n", s,
			 file_crc(disk, s * 512ULL, 4096));
		expect_line(&r, line);
	}
	expect_line(&r, "BLK: isr 1 then 0\n");
	expect_line(&r, "BLK: past end status 1\n");
	memset(pat, 0xa5, sizeof(pat));
	if (writable) {
		/* absorbed by the overlay: the guest reads its own write back */
		snprintf(line, sizeof(line), "BLK: write status 0 crc 0x%x\n",
			 (unsigned)crc32(0, pat, 512));
		expect_line(&r, line);
		snprintf(line, sizeof(line), "BLK: reread status 0 crc 0x%x\n",
			 (unsigned)crc32(0, pat, 512));
		expect_line(&r, line);
		ck_assert_uint_eq(r.disk_writes, 512);
		ck_assert_uint_eq(r.overlay_bytes, VMM_OVERLAY_CHUNK);
	} else {
		/* read-only disk: the write fails, the data is unchanged */
		expect_line(&r, "BLK: write status 1");
		snprintf(line, sizeof(line), "BLK: reread status 0 crc 0x%x\n",
			 file_crc(disk, 512, 512));
		expect_line(&r, line);
		ck_assert_uint_eq(r.overlay_bytes, 0);
	}
	expect_line(&r, "BLK: done");
	ck_assert_int_eq(r.exit, VMM_EXIT_RESET);
	/* the image is untouched either way */
	ck_assert_int_eq(stat(disk, &after), 0);
	ck_assert_uint_eq(file_crc(disk, 0, 1 << 20), crc_before);
	ck_assert(before.st_mtim.tv_sec == after.st_mtim.tv_sec &&
		  before.st_mtim.tv_nsec == after.st_mtim.tv_nsec);
	vmm_run_result_release(&r);
}

START_TEST(test_blk_readonly)
{
	blk_case(false);
}
END_TEST

START_TEST(test_blk_overlay)
{
	blk_case(true);
}
END_TEST

/* virtio-blk served from a snapshot of a .keel image: the guest sees the
 * snapshot's bytes, not the current state, and the image does not change */
START_TEST(test_blk_keel_snapshot)
{
	const char *img = tu_path("vault.keel");
	struct blk_create_opts co = { .size = 1 << 20 };
	struct blk_open_opts oo = { .format = "keel", .flags = BLK_OPEN_RDWR };
	struct vmm_run_result r;
	struct vmm_opts o = { 0 };
	struct blk_dev *d;
	static uint8_t snap[1 << 20], cur[1 << 20];
	char spec[600], line[128];
	struct stat before, after;

	if (!blk_driver_find("keel"))
		return; /* the .keel driver is not in this build */
	tu_fill(snap, sizeof(snap), 77, 0);
	tu_fill(cur, sizeof(cur), 78, 0);
	ck_assert_ok(blk_create(img, "keel", &co));
	ck_assert_ok(blk_open(img, &oo, &d));
	ck_assert_ok(blk_pwrite(d, 0, snap, sizeof(snap)));
	ck_assert_ok(blk_snapshot_create(d, "nightly"));
	ck_assert_ok(blk_pwrite(d, 0, cur, sizeof(cur)));
	blk_close(d);
	ck_assert_int_eq(stat(img, &before), 0);
	snprintf(spec, sizeof(spec), "%s@nightly", img);
	o.engine = VMM_ENGINE_KVM;
	o.kernel = guest("blk.bin");
	o.cmdline = CMDLINE;
	o.image = spec;
	o.mem_size = 64ULL << 20;
	o.timeout_s = 180;
	ck_assert_ok(vmm_run(&o, &r));
	for (unsigned s = 0; s < 32; s += 8) {
		snprintf(line, sizeof(line), "BLK: read %u status 0 crc 0x%x\n", s,
			 (unsigned)crc32(0, snap + s * 512, 4096));
		expect_line(&r, line);
	}
	ck_assert_int_eq(stat(img, &after), 0);
	ck_assert(before.st_size == after.st_size &&
		  before.st_mtim.tv_sec == after.st_mtim.tv_sec &&
		  before.st_mtim.tv_nsec == after.st_mtim.tv_nsec);
	vmm_run_result_release(&r);
}
END_TEST

START_TEST(test_mptable)
{
	struct vmm_run_result r;
	const char *disk = make_disk("mp.raw", 1 << 20);

	run_guest("mptable.bin", disk, false, 0, NULL, &r);
	expect_line(&r, "MP: floating 0xf0000 sum 0\n");
	expect_line(&r, "sig PCMP sum 0 entries 22 lapic 0xfee00000\n");
	expect_line(&r, "MP: cpu 0 flags 3\n");
	expect_line(&r, "MP: bus 0 PCI\n");
	expect_line(&r, "MP: bus 1 ISA\n");
	expect_line(&r, "MP: ioapic 1 0xfec00000\n");
	expect_line(&r, "MP: int bus 1 irq 0x0 pin 2\n");
	expect_line(&r, "MP: int bus 1 irq 0x4 pin 4\n");
	/* virtio-blk at slot 1, INTA -> IOAPIC pin 16 (its PCI interrupt line) */
	expect_line(&r, "MP: int bus 0 irq 0x4 pin 16\n");
	expect_line(&r, "MP: lint type 3 lint 0\n");
	expect_line(&r, "MP: lint type 1 lint 1\n");
	expect_line(&r, "MP: done");
	vmm_run_result_release(&r);
}
END_TEST

START_TEST(test_watchdog)
{
	struct vmm_run_result r;
	double t0 = kl_now();

	run_guest("spin.bin", NULL, false, 2, NULL, &r);
	expect_line(&r, "SPIN: spinning");
	ck_assert_int_eq(r.exit, VMM_EXIT_WATCHDOG);
	ck_assert_msg(strstr(r.detail, "watchdog"), "detail: %s", r.detail);
	ck_assert(kl_now() - t0 < 30);
	vmm_run_result_release(&r);
}
END_TEST

START_TEST(test_triple_fault_reset)
{
	struct vmm_run_result r;

	run_guest("triple.bin", NULL, false, 20, NULL, &r);
	expect_line(&r, "TRIPLE: faulting");
	ck_assert_msg(!strstr(r.console, "TRIPLE: survived"), "%s", r.console);
	if (vmm_kvm_is_pvm()) {
		/*
		 * kvm_pvm emulates guest ring 0 and cannot emulate LIDT: the exit
		 * is KVM_EXIT_INTERNAL_ERROR, which must stop the VM with a
		 * register dump (the "unknown exit" path) instead of a reset.
		 */
		ck_assert_msg(r.exit == VMM_EXIT_CRASH, "exit %s", vmm_exit_name(r.exit));
		ck_assert_msg(strstr(r.detail, "rip=") && strstr(r.detail, "cr0="), "%s", r.detail);
	} else {
		ck_assert_msg(r.exit == VMM_EXIT_RESET, "exit %s (%s)", vmm_exit_name(r.exit),
			      r.detail);
		ck_assert_msg(strstr(r.detail, "triple fault"), "%s", r.detail);
	}
	vmm_run_result_release(&r);
}
END_TEST

START_TEST(test_missing_kvm)
{
	struct vmm_opts o = { 0 };
	struct vmm_run_result r;
	int rc;

	o.engine = VMM_ENGINE_KVM;
	o.kernel = guest("boot.bin");
	o.kvm_dev = "/nonexistent/kvm";
	rc = vmm_run(&o, &r);
	ck_assert_int_eq(rc, -ENOENT);
	ck_assert_msg(strstr(kl_errmsg(), "/nonexistent/kvm does not exist"), "%s", kl_errmsg());
}
END_TEST

START_TEST(test_bad_kernel)
{
	struct vmm_opts o = { 0 };
	struct vmm_run_result r;
	const char *k = make_disk("notakernel", 8192);

	o.engine = VMM_ENGINE_KVM;
	o.kernel = k;
	ck_assert_int_eq(vmm_run(&o, &r), -EINVAL);
	ck_assert_msg(strstr(kl_errmsg(), "not a bzImage"), "%s", kl_errmsg());
}
END_TEST

static Suite *kvm_suite(void)
{
	Suite *s = suite_create("vmm-kvm");
	TCase *tc = tcase_create("guests");

	tcase_set_timeout(tc, 900);
	tcase_add_test(tc, test_boot_protocol);
	tcase_add_test(tc, test_pvh_entry);
	tcase_add_test(tc, test_pci_enumeration);
	tcase_add_test(tc, test_blk_readonly);
	tcase_add_test(tc, test_blk_overlay);
	tcase_add_test(tc, test_blk_keel_snapshot);
	tcase_add_test(tc, test_mptable);
	tcase_add_test(tc, test_watchdog);
	tcase_add_test(tc, test_triple_fault_reset);
	tcase_add_test(tc, test_missing_kvm);
	tcase_add_test(tc, test_bad_kernel);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	const char *dev = getenv("KEEL_KVM_DEV") && *getenv("KEEL_KVM_DEV") ? getenv("KEEL_KVM_DEV")
									    : "/dev/kvm";
	int fd = open(dev, O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		printf("SKIP: %s is not usable (%s); the VMM guest tests need KVM\n", dev,
		       strerror(errno));
		return 77;
	}
	close(fd);
	return tu_run_suite(kvm_suite());
}
