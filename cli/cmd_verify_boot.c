/*
 * cli/cmd_verify_boot.c - keel verify-boot IMAGE[@SNAP]: boot the verifier
 * appliance with the image attached read-only and report its verdict.
 */
#include "cli/cli.h"
#include "vmm/vmm.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

const char cmd_verify_boot_usage[] =
	"usage: keel verify-boot [--engine kvm|qemu|auto] [--expect-os ID] [--timeout S]\n"
	"                        [--output json] [-v] [--log FILE] [-f FMT] IMAGE[@SNAP]\n"
	"       keel verify-boot --explain [--engine E]\n"
	"\n"
	"Boots a small verifier appliance (a Debian kernel and a busybox initramfs that\n"
	"'make appliance' builds) in a virtual machine with IMAGE attached as a\n"
	"read-only virtio disk, and reports whether the image holds a bootable system.\n"
	"Any format keel reads and any snapshot (vault.keel@2026-11-21) works: the disk\n"
	"is served through keel's block layer, guest writes go to a throw-away memory\n"
	"overlay, and the image's bytes and mtime never change.\n"
	"\n"
	"The appliance checks, and the verdict fails on (-> the reasons it names):\n"
	"  - the partition table (MBR or GPT; a partition or GPT past the end of the\n"
	"    disk, as in a truncated image)\n"
	"      -> no-partition-table, ...-beyond-end\n"
	"  - each partition's filesystem (blkid) and checker run read-only: e2fsck -n,\n"
	"    xfs_repair -n, fsck.fat -n\n"
	"      -> fsck-errors, no-filesystem\n"
	"  - a read-only mount that never replays a journal (ext3/4 noload, xfs\n"
	"    norecovery)\n"
	"  - /etc/os-release or /usr/lib/os-release\n"
	"      -> no-os\n"
	"  - a kernel (and initrd) under /boot, or an EFI system partition with a\n"
	"    bootloader (EFI/BOOT/BOOTX64.EFI or EFI/*/*.efi)\n"
	"      -> nothing-bootable\n"
	"  - with --expect-os, the os-release ID\n"
	"      -> expected-os-absent\n"
	"\n"
	"Engines:\n"
	"  kvm    keel's own micro-VMM on /dev/kvm (64-bit/PVH Linux boot, 8250 UART,\n"
	"         PCI host bridge, legacy virtio-blk, MP table); needs hardware-backed\n"
	"         KVM\n"
	"  qemu   qemu-system-x86_64 with the same virtual hardware and command line\n"
	"         (TCG, or KVM when hardware-backed); the disk reaches QEMU over NBD on\n"
	"         a private abstract socket served by keel's block layer\n"
	"  auto   (default) kvm where /dev/kvm is hardware-backed, else qemu when\n"
	"         installed, else an error naming what is missing\n"
	"\n"
	"  --engine E        kvm, qemu or auto\n"
	"  --explain         print the engine auto would use on this host and why\n"
	"  --expect-os ID    also require os-release ID=ID (debian, ubuntu, rhel, ...)\n"
	"  --timeout S       watchdog: stop the VM after S seconds (default 60)\n"
	"  --output json     machine-readable report (includes the appliance's verdict)\n"
	"  -v, --verbose     show the guest console on stderr\n"
	"  --log FILE        write the guest console to FILE\n"
	"  --mem SIZE        guest memory (default 256M)\n"
	"  -f FMT            image format (default: probed)\n"
	"  --qemu-stock      qemu engine with QEMU's defaults (ACPI, bzImage, no quiet):\n"
	"                    the baseline of `make bench`\n"
	"\n"
	"The report gives the engine, what was checked, and the time of each stage:\n"
	"VMM start (launch until the guest kernel runs), kernel to /init, the checks.\n"
	"Environment: KEEL_APPLIANCE_DIR (appliance folder), KEEL_KVM_DEV (default\n"
	"/dev/kvm), KEEL_QEMU (QEMU binary).\n"
	"Exit status: 0 the verdict passed, 3 it failed, 1 no verdict (internal error).\n"
	"\n"
	"example: keel verify-boot --expect-os debian restored.qcow2\n";

static volatile sig_atomic_t vb_cancel;

static void vb_on_signal(int sig)
{
	(void)sig;
	vb_cancel = 1;
}

static void json_string(FILE *fp, const char *s)
{
	fputc('"', fp);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(fp, "\\%c", c);
		else if (c < 0x20)
			fprintf(fp, "\\u%04x", c);
		else
			fputc(c, fp);
	}
	fputc('"', fp);
}

static void print_json(const char *image, const struct vmm_report *r)
{
	printf("{\"image\":");
	json_string(stdout, image);
	printf(",\"engine\":\"%s\",\"engine_why\":", r->run.engine == VMM_ENGINE_KVM ? "kvm" : "qemu");
	json_string(stdout, r->engine_why);
	printf(",\"passed\":%s,\"reasons\":[", r->passed ? "true" : "false");
	for (size_t i = 0; i < r->nreasons; i++) {
		if (i)
			putchar(',');
		json_string(stdout, r->reasons[i]);
	}
	printf("],\"exit\":\"%s\",\"pvh\":%s", vmm_exit_name(r->run.exit),
	       r->run.pvh ? "true" : "false");
	printf(",\"timings\":{\"vmm_start_s\":%.3f,\"kernel_to_init_s\":%.3f,\"checks_s\":%.3f,"
	       "\"total_s\":%.3f}", r->t_vmm_start, r->t_kernel, r->t_checks, r->t_total);
	printf(",\"disk\":{\"read_bytes\":%llu,\"overlay_bytes\":%llu}",
	       (unsigned long long)r->run.disk_reads, (unsigned long long)r->run.overlay_bytes);
	/* the appliance's object, validated by vmm_verdict_parse */
	printf(",\"verdict\":%s}\n", r->verdict_json ? r->verdict_json : "null");
}

static void print_human(const char *image, const struct vmm_report *r)
{
	printf("image: %s\n", image);
	printf("engine: %s\n", r->engine_why);
	printf("verdict: %s\n", r->passed ? "ok" : "FAIL");
	for (size_t i = 0; i < r->nreasons; i++)
		printf("  reason: %s\n", r->reasons[i]);
	printf("partition table: %s\n", r->ptable ? r->ptable : "none");
	printf("os: %s%s%s%s\n", r->os_id ? r->os_id : "none", r->os_name ? " (" : "",
	       r->os_name ? r->os_name : "", r->os_name ? ")" : "");
	printf("checked: partition table, filesystems (blkid, fsck -n), read-only mounts, "
	       "os-release, /boot kernel+initrd, EFI bootloader\n");
	printf("timings: vmm start %.2f s, kernel to /init %.2f s, checks %.2f s, total %.2f s\n",
	       r->t_vmm_start, r->t_kernel, r->t_checks, r->t_total);
}

int cmd_verify_boot(int argc, char **argv)
{
	enum { O_ENGINE = 0x2001, O_EXPECT, O_TIMEOUT, O_EXPLAIN, O_LOG, O_MEM, O_STOCK };
	static const struct option lopts[] = {
		{ "engine", required_argument, NULL, O_ENGINE },
		{ "expect-os", required_argument, NULL, O_EXPECT },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "explain", no_argument, NULL, O_EXPLAIN },
		{ "log", required_argument, NULL, O_LOG },
		{ "mem", required_argument, NULL, O_MEM },
		{ "qemu-stock", no_argument, NULL, O_STOCK },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vmm_opts o = { 0 };
	struct vmm_report r;
	struct sigaction sa = { .sa_handler = vb_on_signal }, old_int, old_term;
	bool json = false, explain = false;
	uint64_t v;
	int c, rc;

	optind = 1;
	while ((c = getopt_long(argc, argv, "vf:h", lopts, NULL)) != -1) {
		switch (c) {
		case O_ENGINE:
			if (vmm_engine_parse(optarg, &o.engine) < 0)
				return cli_usage("verify-boot", "%s", kl_errmsg());
			break;
		case O_EXPECT:
			o.expect_os = optarg;
			break;
		case O_TIMEOUT:
			if (kl_parse_u64(optarg, &v) < 0 || !v || v > 86400)
				return cli_usage("verify-boot", "bad --timeout '%s'", optarg);
			o.timeout_s = (unsigned)v;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("verify-boot", "bad --output '%s'", optarg);
			break;
		case O_EXPLAIN:
			explain = true;
			break;
		case O_LOG:
			o.console_log = optarg;
			break;
		case O_MEM:
			if (kl_parse_size(optarg, &v) < 0)
				return cli_usage("verify-boot", "bad --mem '%s'", optarg);
			o.mem_size = v;
			break;
		case O_STOCK:
			o.qemu_stock = true;
			break;
		case 'f':
			o.image_format = optarg;
			break;
		case 'v':
			o.verbose = true;
			break;
		case 'h':
			printf("%s", cmd_verify_boot_usage);
			return 0;
		default:
			return cli_usage("verify-boot", NULL);
		}
	}
	if (explain) {
		char why[256], dir[4096];
		enum vmm_engine e;

		rc = vmm_choose_engine(&o, &e, why, sizeof(why));
		printf("engine: %s\n", rc < 0 ? "none" : vmm_engine_name(e));
		printf("why: %s\n", why);
		if (vmm_appliance_dir(&o, dir, sizeof(dir)) == 0)
			printf("appliance: %s\n", dir);
		else
			printf("appliance: missing (%s)\n", kl_errmsg());
		return rc < 0 ? cli_fail(rc) : CLI_EXIT_OK;
	}
	if (optind + 1 != argc)
		return cli_usage("verify-boot", "expected one IMAGE[@SNAP]");
	o.image = argv[optind];
	o.cancel = &vb_cancel;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	rc = vmm_verify_boot(&o, &r);
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);
	if (rc < 0) {
		vmm_report_release(&r);
		return cli_fail(rc);
	}
	if (json)
		print_json(o.image, &r);
	else if (!cli_quiet)
		print_human(o.image, &r);
	rc = r.passed ? CLI_EXIT_OK : CLI_EXIT_DIFF;
	vmm_report_release(&r);
	return rc;
}
