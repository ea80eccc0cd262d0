/*
 * vmm/vmm.h - keel's micro-VMM and `verify-boot`.
 *
 * A small KVM VMM in the style of kvmtool and Firecracker boots a Linux
 * kernel (bzImage through the 64-bit boot protocol, or an uncompressed
 * vmlinux through its PVH entry) with an initramfs, an 8250 UART on 0x3f8,
 * a PCI host bridge and a legacy virtio-blk device over PCI whose disk is
 * served by the format layer read-only, behind a throw-away in-memory write
 * overlay. The same virtual hardware is available through QEMU (engine
 * "qemu") where /dev/kvm is not backed by hardware virtualization.
 *
 * vmm_verify_boot() boots the verifier appliance (scripts/build-appliance.sh)
 * with an image attached and returns the guest's verdict. Nothing here
 * prints; nothing here ever writes to the image. Errors are negative errno
 * codes with a message (lib/kl.h).
 */
#ifndef KEEL_VMM_H
#define KEEL_VMM_H

#include "format/format.h"

#include <signal.h>

enum vmm_engine {
	VMM_ENGINE_AUTO = 0,
	VMM_ENGINE_KVM,	 /* keel's own VMM on /dev/kvm */
	VMM_ENGINE_QEMU, /* qemu-system-x86_64 (TCG, or KVM when hardware-backed) */
};

const char *vmm_engine_name(enum vmm_engine e);
/* "kvm", "qemu", "auto" -> engine; -EINVAL naming the word otherwise. */
int vmm_engine_parse(const char *s, enum vmm_engine *out);

#define VMM_DEFAULT_MEM (256ULL << 20)
#define VMM_DEFAULT_TIMEOUT 60

struct vmm_opts {
	enum vmm_engine engine;
	/* the disk: an IMAGE[@SNAP] spec opened read-only through blk_open, or an
	 * already open device (borrowed for the whole call); neither = no disk */
	const char *image;
	struct blk_dev *disk;
	const char *image_format;   /* force the format of image, NULL to probe */
	bool disk_writable;	    /* guest sees a writable disk; writes stay in the overlay */
	const char *kernel;	    /* bzImage or ELF vmlinux with a PVH note; NULL = appliance */
	const char *initrd;	    /* NULL = appliance's (when kernel is NULL), else none */
	const char *cmdline;	    /* NULL = keel's appliance command line */
	const char *appliance_dir;  /* NULL = $KEEL_APPLIANCE_DIR, else beside the keel binary */
	uint64_t mem_size;	    /* guest RAM, 0 = VMM_DEFAULT_MEM */
	unsigned timeout_s;	    /* watchdog, 0 = VMM_DEFAULT_TIMEOUT */
	const char *console_log;    /* copy of the guest console, or NULL */
	bool verbose;		    /* also echo the console to stderr */
	const char *kvm_dev;	    /* NULL = $KEEL_KVM_DEV or /dev/kvm */
	const char *qemu_bin;	    /* NULL = $KEEL_QEMU or qemu-system-x86_64 on PATH */
	bool qemu_stock;	    /* bench: QEMU's defaults (ACPI, bzImage, no quiet) */
	const char *expect_os;	    /* verify-boot: os-release ID that must be found */
	/* set by the caller's signal handler: the guest is stopped, children
	 * killed, and the call returns -EINTR */
	volatile sig_atomic_t *cancel;
};

/* How a run ended. */
enum vmm_exit {
	VMM_EXIT_NONE = 0,
	VMM_EXIT_RESET,	    /* guest reset (i8042 0xFE, triple fault, QEMU -no-reboot) */
	VMM_EXIT_SHUTDOWN,  /* guest powered off (system event, QEMU exit 0) */
	VMM_EXIT_WATCHDOG,  /* the timeout fired; the guest was stopped */
	VMM_EXIT_CANCELLED, /* o->cancel was set */
	VMM_EXIT_CRASH,	    /* unknown/unhandled exit, internal error, QEMU died: see detail */
};
const char *vmm_exit_name(enum vmm_exit e);

#define VMM_CONSOLE_MAX (1u << 20)

struct vmm_run_result {
	enum vmm_engine engine;
	enum vmm_exit exit;
	char *console;	     /* the console output (first VMM_CONSOLE_MAX bytes), NUL-ended */
	size_t console_len;
	char detail[1024];   /* register dump or QEMU's last words for VMM_EXIT_CRASH */
	double t_setup;	     /* launch until the guest's first instruction (s) */
	double t_total;	     /* launch until the VM stopped (s) */
	double t_verdict;    /* launch until the VERDICT line, or 0 */
	double t_init;	     /* launch until /init's first line, or 0 */
	uint64_t disk_reads; /* bytes the guest read / wrote (writes went to the overlay) */
	uint64_t disk_writes;
	uint64_t overlay_bytes; /* memory the overlay held at the end */
	bool pvh;	     /* kvm engine: booted through the PVH entry */
};

/*
 * Boots o->kernel (or the appliance) with the disk and runs until the guest
 * resets or powers off, the watchdog fires, or o->cancel is set. Returns 0
 * with r->exit saying how it ended (a guest crash is a result, not an error),
 * or a negative code when the VM could not be started (no /dev/kvm, no QEMU,
 * a bad kernel file, ...). Release r with vmm_run_result_release.
 */
int vmm_run(const struct vmm_opts *o, struct vmm_run_result *r);
void vmm_run_result_release(struct vmm_run_result *r);

/*
 * The engine --engine auto picks on this host, and why, in words
 * ("kvm: /dev/kvm is hardware-backed", "qemu: /dev/kvm is kvm_pvm ...").
 * A negative code (with the message naming what is missing) when no engine
 * can run.
 */
int vmm_choose_engine(const struct vmm_opts *o, enum vmm_engine *out, char *why, size_t whylen);

/* ----------------------------------------------------------- verify-boot */
struct vmm_report {
	enum vmm_engine engine;
	char engine_why[256];
	bool passed;	     /* verdict ok (and the expected OS found) */
	char **reasons;	     /* why it failed (guest reasons + host checks) */
	size_t nreasons;
	char *verdict_json;  /* the guest's VERDICT object, validated JSON */
	char *os_id;	     /* os-release ID found, or NULL */
	char *os_name;
	char *ptable;
	double t_vmm_start;  /* launch until the guest kernel started (s) */
	double t_kernel;     /* kernel start until /init */
	double t_checks;     /* /init until the verdict */
	double t_total;	     /* launch until the VM was gone */
	struct vmm_run_result run;
};

/*
 * Boots the appliance with o->image attached and reads its verdict.
 * Returns 0 when a verdict was obtained (r->passed says which), a negative
 * code when none was (no engine, the VM could not start, the watchdog fired,
 * the guest crashed before answering). Release r with vmm_report_release.
 */
int vmm_verify_boot(const struct vmm_opts *o, struct vmm_report *r);
void vmm_report_release(struct vmm_report *r);

/*
 * Parses a console transcript: finds the last "VERDICT: {...}" line and the
 * appliance's "KEEL-APPLIANCE: init UPTIME" line. The JSON is untrusted
 * guest output: bounded, validated, never trusted for lengths. Fills the
 * verdict part of r (passed, reasons, verdict_json, os_*, ptable, guest
 * timings). -EBADMSG when there is no well-formed verdict.
 */
int vmm_verdict_parse(const char *console, size_t len, struct vmm_report *r);

/* Where the appliance lives (directory), per o->appliance_dir and defaults. */
int vmm_appliance_dir(const struct vmm_opts *o, char *out, size_t outlen);

#endif
