/*
 * vmm/vmm_int.h - private to vmm/: the VM object, the I/O buses, the device
 * table, the x86 boot pieces, the virtio transport and the disk overlay.
 *
 * Grouped by the file that implements each part.
 */
#ifndef KEEL_VMM_INT_H
#define KEEL_VMM_INT_H

#include "vmm/vmm.h"

#include <pthread.h>
#include <stdatomic.h>

struct vmm;

/* ------------------------------------------------------------ vmm/disk.c
 * The guest's disk: the format layer read-only, with writes absorbed by an
 * in-memory overlay of 4 KiB chunks that is thrown away at close. Not
 * thread-safe: one user at a time (the vCPU thread, or the NBD thread).
 */
struct vmm_disk;
#define VMM_OVERLAY_CHUNK 4096u
#define VMM_OVERLAY_LIMIT (512ULL << 20) /* past this a guest write fails with -ENOSPC */

int vmm_disk_open(const struct vmm_opts *o, struct vmm_disk **out);
void vmm_disk_close(struct vmm_disk *d);
uint64_t vmm_disk_size(const struct vmm_disk *d);
int vmm_disk_read(struct vmm_disk *d, uint64_t off, void *buf, size_t len);
int vmm_disk_write(struct vmm_disk *d, uint64_t off, const void *buf, size_t len);
void vmm_disk_stats(const struct vmm_disk *d, uint64_t *reads, uint64_t *writes,
		    uint64_t *overlay);

/* ------------------------------------------------------------ vmm/kvm.c */
/*
 * A port-I/O or MMIO handler. data holds len (1, 2, 4 or 8) bytes in guest
 * (little-endian) order: the handler fills it on a read, consumes it on a
 * write. addr is absolute; off = addr - base of the registered range.
 */
typedef void (*vmm_io_fn)(struct vmm *vm, void *opaque, uint64_t off, uint8_t *data,
			  unsigned len, bool is_write);

struct vmm_io_range {
	uint64_t base;
	uint64_t len;
	vmm_io_fn fn;
	void *opaque;
};

#define VMM_MAX_IO 32
#define VMM_PIC_IRQS 16
#define VMM_PCI_IRQ_BASE 16 /* PCI INTx go to IOAPIC pins 16+ (MP table) */

/* guest physical layout (below 1 MiB; see x86/boot.c) */
#define VMM_GDT_ADDR 0x500
#define VMM_IDT_ADDR 0x520
#define VMM_PVH_INFO_ADDR 0x6000
#define VMM_ZERO_PAGE_ADDR 0x7000
#define VMM_BOOT_STACK 0x8ff0
#define VMM_PML4_ADDR 0x9000 /* PML4, PDPT, 4 PDs: 0x9000..0xefff */
#define VMM_CMDLINE_ADDR 0x20000
#define VMM_CMDLINE_MAX 4096
#define VMM_EBDA_ADDR 0x9fc00
#define VMM_MPTABLE_ADDR 0xf0000
#define VMM_KERNEL_ADDR 0x100000
#define VMM_TSS_ADDR 0xfffbd000ULL
#define VMM_IDMAP_ADDR 0xfffbc000ULL
#define VMM_MAX_MEM (3ULL << 30) /* below the 32-bit PCI hole; no gap handling */

struct vmm_serial;
struct vmm_pci;
struct virtio_pci_dev;

struct vmm {
	const struct vmm_opts *opts;
	int kvm_fd;
	int vm_fd;
	int vcpu_fd;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *mem;
	uint64_t mem_size;
	bool pvm; /* /dev/kvm is kvm_pvm (software) */

	struct vmm_io_range pio[VMM_MAX_IO];
	size_t npio;
	struct vmm_io_range mmio[VMM_MAX_IO];
	size_t nmmio;

	/* boot: filled by x86/boot.c, used by cpu.c */
	uint64_t entry;
	bool pvh;

	struct vmm_disk *disk;
	struct vmm_serial *serial;
	struct vmm_pci *pci;
	struct virtio_pci_dev *vblk;
	void *legacy;

	/* console capture */
	pthread_mutex_t con_lock;
	char *con;
	size_t con_len;
	FILE *con_log;
	double t0;
	double t_init_line;
	double t_verdict_line;
	size_t line_start;

	/* run state */
	pthread_t vcpu_thread;
	atomic_int stop;	  /* set by anyone: the vCPU leaves its loop */
	atomic_int done;	  /* set by the vCPU thread when it has left */
	enum vmm_exit exit_reason;
	char detail[1024];
	double t_first_run;
};

int vmm_kvm_open(struct vmm *vm, const char *dev);
void vmm_kvm_close(struct vmm *vm);
/* True when /sys/module/kvm_pvm exists (/dev/kvm without VT-x/SVM). */
bool vmm_kvm_is_pvm(void);
int vmm_register_pio(struct vmm *vm, uint64_t base, uint64_t len, vmm_io_fn fn, void *opaque);
int vmm_register_mmio(struct vmm *vm, uint64_t base, uint64_t len, vmm_io_fn fn, void *opaque);
/* Move a registered port range (a PCI BAR reprogrammed by the guest). */
void vmm_move_pio(struct vmm *vm, void *opaque, uint64_t new_base);
/* Dispatch to the bus; unclaimed reads are all ones, unclaimed writes ignored. */
void vmm_pio_dispatch(struct vmm *vm, uint64_t addr, uint8_t *data, unsigned len, bool wr);
void vmm_mmio_dispatch(struct vmm *vm, uint64_t addr, uint8_t *data, unsigned len, bool wr);
/* Set the level of a GSI (in-kernel PIC/IOAPIC). */
void vmm_irq_line(struct vmm *vm, unsigned gsi, int level);
/* Guest physical -> host pointer when [gpa, gpa+len) is RAM, else NULL. */
void *vmm_gpa(struct vmm *vm, uint64_t gpa, uint64_t len);
/* Stop the VM from any thread (device, watchdog): the vCPU exits its loop. */
void vmm_request_stop(struct vmm *vm, enum vmm_exit why, const char *detail);
/* Console bytes from the UART: captured, logged, echoed with -v. */
void vmm_console_write(struct vmm *vm, const uint8_t *buf, size_t len);

/* ------------------------------------------------------------ vmm/cpu.c */
int vmm_cpu_init(struct vmm *vm);
/* Start the vCPU thread; returns at once. */
int vmm_cpu_start(struct vmm *vm);
/* Wait until the vCPU thread has left its loop (after vmm_request_stop or a guest exit). */
void vmm_cpu_join(struct vmm *vm);
/* Kick the vCPU out of KVM_RUN (watchdog, cancel). */
void vmm_cpu_kick(struct vmm *vm);

/* ------------------------------------------------------------ vmm/x86/ */
struct vmm_bzimage {
	uint16_t version;
	uint8_t setup_sects;
	uint32_t setup_len;	/* bytes before the protected-mode kernel */
	uint32_t hdr_end;	/* end of the setup header inside the file */
	uint32_t kernel_off;	/* = setup_len */
	uint64_t kernel_len;
	uint32_t initrd_addr_max;
	uint32_t kernel_alignment;
	uint32_t cmdline_size;
	uint64_t pref_address;
	uint32_t init_size;
	uint16_t xloadflags;
	bool relocatable;
};
/* Decode and check a bzImage's setup header (untrusted bytes). */
int vmm_bzimage_parse(const uint8_t *buf, size_t len, const char *name, struct vmm_bzimage *out);

#define VMM_ELF_MAX_SEGS 16
struct vmm_elf_seg {
	uint64_t off;	/* in the file */
	uint64_t filesz;
	uint64_t paddr;
	uint64_t memsz;
};
struct vmm_elf {
	struct vmm_elf_seg segs[VMM_ELF_MAX_SEGS];
	size_t nsegs;
	uint64_t pvh_entry; /* XEN_ELFNOTE_PHYS32_ENTRY, 0 if absent */
};
/* Decode an ELF64 x86-64 kernel: PT_LOAD segments and the PVH entry note. */
int vmm_elf_parse(const uint8_t *buf, size_t len, const char *name, struct vmm_elf *out);

/* Load kernel + initrd + command line and build the boot data (zero page or PVH start info). */
int vmm_boot_load(struct vmm *vm, const char *kernel, const char *initrd, const char *cmdline);
/* Write the MP table (x86/mptable.c) for the PCI devices in vm->pci. */
int vmm_mptable_write(struct vmm *vm);
/* CPUID, MSRs, FPU, LAPIC LINTs (x86/cpuid.c) */
int vmm_x86_setup_vcpu(struct vmm *vm);
/* Registers and segments for the boot entry (x86/boot.c) */
int vmm_x86_setup_regs(struct vmm *vm);

/* ------------------------------------------------------------ vmm/hw/ */
int vmm_serial_init(struct vmm *vm);
void vmm_serial_exit(struct vmm *vm);
/* i8042 reset line, CMOS/RTC, POST port (hw/legacy.c) */
int vmm_legacy_init(struct vmm *vm);
void vmm_legacy_exit(struct vmm *vm);

/* ------------------------------------------------------------ vmm/pci.c */
struct vmm_pci_dev {
	uint8_t cfg[256];
	uint8_t wmask[256]; /* which config bits the guest may write */
	uint32_t bar_size[6];
	bool bar_io[6];
	uint8_t slot;
	uint8_t irq_pin; /* 1 = INTA, 0 = none */
	unsigned gsi;
	void (*bar_moved)(struct vmm_pci_dev *pd, int bar, uint32_t addr);
	void *opaque;
};
#define VMM_PCI_MAX_SLOTS 8
int vmm_pci_init(struct vmm *vm);
void vmm_pci_exit(struct vmm *vm);
/* Put a device on bus 0 at the next free slot; fills slot and gsi. */
int vmm_pci_add(struct vmm *vm, struct vmm_pci_dev *pd);
size_t vmm_pci_count(const struct vmm *vm);
struct vmm_pci_dev *vmm_pci_at(const struct vmm *vm, size_t i);

/* ------------------------------------------------------------ vmm/virtio/ */
/* virtio-pci legacy (0.9.5) register block in I/O BAR 0 */
#define VIRTIO_PCI_HOST_FEATURES 0
#define VIRTIO_PCI_GUEST_FEATURES 4
#define VIRTIO_PCI_QUEUE_PFN 8
#define VIRTIO_PCI_QUEUE_NUM 12
#define VIRTIO_PCI_QUEUE_SEL 14
#define VIRTIO_PCI_QUEUE_NOTIFY 16
#define VIRTIO_PCI_STATUS 18
#define VIRTIO_PCI_ISR 19
#define VIRTIO_PCI_CONFIG 20
#define VIRTIO_PCI_BAR_SIZE 0x40
#define VIRTIO_PCI_VRING_ALIGN 4096

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtio_queue {
	uint16_t num;	     /* size (power of two) */
	uint32_t pfn;	     /* guest page of the ring, 0 = not set up */
	uint64_t desc, avail, used; /* guest physical addresses of the three parts */
	uint16_t last_avail;
	uint16_t used_idx;
};

/* one guest buffer segment of a request */
struct virtio_iov {
	uint8_t *p;
	uint32_t len;
	bool wr; /* device writes into it */
};
#define VIRTIO_MAX_IOV 130

struct virtio_dev;
/* What a device type provides (kvmtool's virtio_ops, reduced). */
struct virtio_dev_ops {
	uint16_t device_id;    /* virtio device type: 2 = block */
	uint16_t pci_device_id; /* transitional PCI id: 0x1001 = block */
	uint32_t pci_class;
	uint32_t (*get_features)(struct virtio_dev *vd);
	/* device config space read (legacy: starts at VIRTIO_PCI_CONFIG) */
	void (*get_config)(struct virtio_dev *vd, uint32_t off, uint8_t *data, unsigned len);
	/* handle one request (a descriptor chain); returns bytes written into it */
	uint32_t (*handle)(struct virtio_dev *vd, struct virtio_iov *iov, unsigned niov);
	void (*reset)(struct virtio_dev *vd);
};

struct virtio_dev {
	const struct virtio_dev_ops *ops;
	struct vmm *vm;
	void *priv;
	uint32_t guest_features;
	uint8_t status;
	uint8_t isr;
	uint16_t queue_sel;
	struct virtio_queue vq[1];
	unsigned nvq;
	uint64_t bad_requests; /* chains the device refused as malformed */
};

/* core.c: walk the avail ring, hand each chain to ops->handle, fill used. */
int virtio_queue_setup(struct virtio_dev *vd, struct virtio_queue *q, uint32_t pfn);
/* Returns true when something was put in the used ring (an interrupt is due). */
bool virtio_queue_process(struct virtio_dev *vd, struct virtio_queue *q);
void virtio_dev_reset(struct virtio_dev *vd);

/* pci.c: legacy transport */
struct virtio_pci_dev {
	struct vmm_pci_dev pci;
	struct virtio_dev vd;
	uint16_t io_base;
};
int virtio_pci_init(struct vmm *vm, struct virtio_pci_dev *vp, const struct virtio_dev_ops *ops,
		    void *priv);
void virtio_pci_exit(struct vmm *vm, struct virtio_pci_dev *vp);

/* blk.c */
int virtio_blk_init(struct vmm *vm);
void virtio_blk_exit(struct vmm *vm);

/* ------------------------------------------------------------ vmm/devices.c */
int vmm_devices_start(struct vmm *vm);
void vmm_devices_stop(struct vmm *vm);

/* ------------------------------------------------------------ vmm/run.c */
/* The appliance's default command line, shared by both engines. */
extern const char vmm_appliance_cmdline[];
/* The kvm engine (run_kvm.c) and the qemu engine (qemu.c). */
int vmm_run_kvm(const struct vmm_opts *o, struct vmm_run_result *r);
int vmm_run_qemu(const struct vmm_opts *o, struct vmm_run_result *r);
/* Resolve kernel/initrd/cmdline defaults from the appliance. Strings are allocated. */
int vmm_boot_files(const struct vmm_opts *o, bool want_pvh, char **kernel, char **initrd,
		   char **cmdline);
/* Path to a usable qemu-system-x86_64 or -ENOENT with a message. */
int vmm_find_qemu(const struct vmm_opts *o, char *out, size_t outlen);

/* ------------------------------------------------------------ vmm/nbd.c
 * A minimal NBD server (fixed newstyle, simple replies) serving a vmm_disk to
 * exactly one client on an abstract Unix socket; runs on its own thread.
 */
struct vmm_nbd;
/* Listen on the abstract socket "\0name"; only peer_pid (0 = any) may connect. */
int vmm_nbd_start(struct vmm_disk *disk, bool writable, const char *name, struct vmm_nbd **out);
void vmm_nbd_set_peer(struct vmm_nbd *n, pid_t pid);
void vmm_nbd_stop(struct vmm_nbd *n);

/* ------------------------------------------------------------ vmm/verdict.c */
/* A small bounded JSON reader for the verdict (untrusted guest output). */
struct vmm_json;
int vmm_json_parse(const char *s, size_t len, struct vmm_json **out);
void vmm_json_free(struct vmm_json *j);
const struct vmm_json *vmm_json_get(const struct vmm_json *obj, const char *key);
const char *vmm_json_str(const struct vmm_json *j);
bool vmm_json_is_true(const struct vmm_json *j);
size_t vmm_json_len(const struct vmm_json *arr);
const struct vmm_json *vmm_json_at(const struct vmm_json *arr, size_t i);

#endif
