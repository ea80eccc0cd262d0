/*
 * vmm/x86/boot.c - the Linux x86 boot protocol: load a kernel, an initrd and
 * a command line into guest memory and describe them to the kernel.
 *
 * Two entries (Documentation/arch/x86/boot.rst, "64-bit boot protocol";
 * xen/include/public/arch-x86/hvm/start_info.h for PVH):
 * - bzImage: the protected-mode part is loaded at 1 MiB and entered in
 *   64-bit mode at +0x200 with RSI = the zero page (struct boot_params),
 *   identity-mapped page tables and the __BOOT_CS/__BOOT_DS selectors 0x10
 *   and 0x18 in a flat GDT;
 * - ELF vmlinux with a XEN_ELFNOTE_PHYS32_ENTRY note: PT_LOAD segments at
 *   their physical addresses, entered in 32-bit protected mode without
 *   paging at the note's address with EBX = an hvm_start_info. This skips
 *   the decompressor, which is most of the early boot under emulation.
 *
 * Guest physical layout (all below 1 MiB is reserved in e820 from the EBDA):
 *   0x500 GDT, 0x520 IDT, 0x6000 PVH start info, 0x7000 zero page,
 *   0x9000-0xefff page tables (identity map of 4 GiB in 2 MiB pages),
 *   0x20000 command line, 0x9fc00 EBDA, 0xf0000 MP table, 0x100000 kernel,
 *   initrd at the top of RAM.
 *
 * The kernel, bzImage header and ELF headers are untrusted input: every
 * offset and size is checked against the file and against guest RAM.
 */
#define _GNU_SOURCE
#include "vmm/vmm_int.h"

#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>

/* boot_params / setup_header offsets (boot.rst, "The real-mode kernel header") */
#define BP_E820_ENTRIES 0x1e8
#define BP_SETUP_SECTS 0x1f1
#define BP_BOOT_FLAG 0x1fe
#define BP_JUMP 0x200
#define BP_HEADER 0x202
#define BP_VERSION 0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_LOADFLAGS 0x211
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_HEAP_END_PTR 0x224
#define BP_CMD_LINE_PTR 0x228
#define BP_INITRD_ADDR_MAX 0x22c
#define BP_KERNEL_ALIGNMENT 0x230
#define BP_RELOCATABLE 0x234
#define BP_XLOADFLAGS 0x236
#define BP_CMDLINE_SIZE 0x238
#define BP_PREF_ADDRESS 0x258
#define BP_INIT_SIZE 0x260
#define BP_E820_TABLE 0x2d0
#define BP_E820_MAX 128
#define BP_SIZE 4096

#define LOADED_HIGH 0x01
#define CAN_USE_HEAP 0x80
#define XLF_KERNEL_64 0x01

#define E820_RAM 1
#define E820_RESERVED 2

/* ELF */
#define PT_LOAD 1
#define PT_NOTE 4
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC 0x336ec578

int vmm_bzimage_parse(const uint8_t *buf, size_t len, const char *name, struct vmm_bzimage *out)
{
	uint32_t setup_len;

	memset(out, 0, sizeof(*out));
	if (len < BP_INIT_SIZE + 4)
		return kl_err(-EINVAL, "%s: %zu bytes is too small for a bzImage", name, len);
	if (get_le32(buf + BP_HEADER) != 0x53726448) /* "HdrS" */
		return kl_err(-EINVAL, "%s: not a bzImage (no HdrS at 0x202)", name);
	if (get_le16(buf + BP_BOOT_FLAG) != 0xaa55)
		return kl_err(-EINVAL, "%s: bzImage boot_flag at 0x1fe is not 0xaa55", name);
	out->version = get_le16(buf + BP_VERSION);
	if (out->version < 0x020c)
		return kl_err(-ENOTSUP, "%s: boot protocol %u.%02u; the 64-bit entry needs 2.12",
			      name, out->version >> 8, out->version & 0xff);
	out->xloadflags = get_le16(buf + BP_XLOADFLAGS);
	if (!(out->xloadflags & XLF_KERNEL_64))
		return kl_err(-ENOTSUP, "%s: kernel has no 64-bit entry (xloadflags %#x)", name,
			      out->xloadflags);
	if (!(buf[BP_LOADFLAGS] & LOADED_HIGH))
		return kl_err(-ENOTSUP, "%s: kernel is not loaded high (zImage)", name);
	out->setup_sects = buf[BP_SETUP_SECTS] ? buf[BP_SETUP_SECTS] : 4;
	setup_len = ((uint32_t)out->setup_sects + 1) * 512;
	if (setup_len >= len)
		return kl_err(-EINVAL, "%s: setup (%u bytes) covers the whole file (%zu bytes)", name,
			      setup_len, len);
	out->setup_len = setup_len;
	out->kernel_off = setup_len;
	out->kernel_len = len - setup_len;
	/* the setup header ends where the jump at 0x200 lands */
	out->hdr_end = 0x202 + buf[BP_JUMP + 1];
	if (out->hdr_end > setup_len || out->hdr_end > BP_SIZE)
		out->hdr_end = (uint32_t)KL_MIN(setup_len, (uint32_t)BP_INIT_SIZE + 4);
	if (out->hdr_end < BP_INIT_SIZE + 4)
		out->hdr_end = BP_INIT_SIZE + 4;
	out->initrd_addr_max = get_le32(buf + BP_INITRD_ADDR_MAX);
	out->kernel_alignment = get_le32(buf + BP_KERNEL_ALIGNMENT);
	out->relocatable = buf[BP_RELOCATABLE] != 0;
	out->cmdline_size = get_le32(buf + BP_CMDLINE_SIZE);
	out->pref_address = get_le64(buf + BP_PREF_ADDRESS);
	out->init_size = get_le32(buf + BP_INIT_SIZE);
	if (!out->initrd_addr_max)
		out->initrd_addr_max = 0x37ffffff;
	if (!out->cmdline_size)
		out->cmdline_size = 255;
	return 0;
}

int vmm_elf_parse(const uint8_t *buf, size_t len, const char *name, struct vmm_elf *out)
{
	uint64_t phoff;
	uint16_t phentsize, phnum;

	memset(out, 0, sizeof(*out));
	if (len < 64 || memcmp(buf, "\177ELF", 4) != 0)
		return kl_err(-EINVAL, "%s: not an ELF file", name);
	if (buf[4] != 2 || buf[5] != 1)
		return kl_err(-ENOTSUP, "%s: not a 64-bit little-endian ELF", name);
	if (get_le16(buf + 18) != 62)
		return kl_err(-ENOTSUP, "%s: ELF machine %u is not x86-64", name, get_le16(buf + 18));
	phoff = get_le64(buf + 32);
	phentsize = get_le16(buf + 54);
	phnum = get_le16(buf + 56);
	if (phentsize < 56 || !phnum)
		return kl_err(-EINVAL, "%s: ELF program headers of %u bytes x %u", name, phentsize,
			      phnum);
	if (!kl_range_ok(phoff, (uint64_t)phentsize * phnum, len))
		return kl_err(-EINVAL, "%s: ELF program headers at %llu pass the end (%zu bytes)",
			      name, (unsigned long long)phoff, len);
	for (unsigned i = 0; i < phnum; i++) {
		const uint8_t *ph = buf + phoff + (uint64_t)i * phentsize;
		uint32_t type = get_le32(ph);
		uint64_t off = get_le64(ph + 8);
		uint64_t paddr = get_le64(ph + 24);
		uint64_t filesz = get_le64(ph + 32);
		uint64_t memsz = get_le64(ph + 40);

		if (type != PT_LOAD && type != PT_NOTE)
			continue;
		if (!kl_range_ok(off, filesz, len))
			return kl_err(-EINVAL, "%s: ELF segment %u (%llu+%llu) passes the end of the "
				      "file (%zu bytes)", name, i, (unsigned long long)off,
				      (unsigned long long)filesz, len);
		if (type == PT_LOAD) {
			if (memsz < filesz)
				return kl_err(-EINVAL, "%s: ELF segment %u memsz < filesz", name, i);
			if (out->nsegs == VMM_ELF_MAX_SEGS)
				return kl_err(-ENOTSUP, "%s: more than %d loadable segments", name,
					      VMM_ELF_MAX_SEGS);
			out->segs[out->nsegs++] = (struct vmm_elf_seg){ off, filesz, paddr, memsz };
			continue;
		}
		/* notes: namesz, descsz, type, name (4-aligned), desc (4-aligned) */
		for (uint64_t p = 0; p + 12 <= filesz;) {
			const uint8_t *n = buf + off + p;
			uint32_t namesz = get_le32(n), descsz = get_le32(n + 4), ntype = get_le32(n + 8);
			uint64_t nameal = KL_ALIGN_UP((uint64_t)namesz, 4);
			uint64_t descal = KL_ALIGN_UP((uint64_t)descsz, 4);
			uint64_t total = 12 + nameal + descal;

			if (total > filesz - p)
				break;
			if (namesz == 4 && !memcmp(n + 12, "Xen", 4) &&
			    ntype == XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4)
				out->pvh_entry = descsz >= 8 ? get_le64(n + 12 + nameal)
							     : get_le32(n + 12 + nameal);
			p += total;
		}
	}
	if (!out->nsegs)
		return kl_err(-EINVAL, "%s: ELF has no loadable segment", name);
	return 0;
}

/* ------------------------------------------------------------------ loading */

static int read_file(const char *path, uint8_t **buf, size_t *len)
{
	struct kl_file *f;
	uint64_t size;
	int rc;

	*buf = NULL;
	KL_TRY(kl_io_open(path, KL_O_RDONLY, &f));
	rc = kl_io_size(f, &size);
	if (rc < 0)
		goto out;
	if (size > (1ULL << 30)) {
		rc = kl_err(-EFBIG, "%s: %llu bytes is too big to boot", path,
			    (unsigned long long)size);
		goto out;
	}
	*buf = kl_malloc(size ? size : 1);
	if (!*buf) {
		rc = -ENOMEM;
		goto out;
	}
	rc = kl_io_pread_full(f, 0, *buf, size, "kernel/initrd");
	*len = size;
	if (rc < 0) {
		kl_free(*buf);
		*buf = NULL;
	}
out:
	kl_io_close(f);
	return rc;
}

/* e820 as the kernel should see it; also the PVH memory map. */
struct e820 {
	uint64_t addr, size;
	uint32_t type;
};

static size_t build_e820(struct vmm *vm, struct e820 *e)
{
	e[0] = (struct e820){ 0, VMM_EBDA_ADDR, E820_RAM };
	e[1] = (struct e820){ VMM_EBDA_ADDR, VMM_KERNEL_ADDR - VMM_EBDA_ADDR, E820_RESERVED };
	e[2] = (struct e820){ VMM_KERNEL_ADDR, vm->mem_size - VMM_KERNEL_ADDR, E820_RAM };
	/* the IOAPIC and LAPIC pages */
	e[3] = (struct e820){ 0xfec00000ULL, 0x1000, E820_RESERVED };
	e[4] = (struct e820){ 0xfee00000ULL, 0x1000, E820_RESERVED };
	return 5;
}

static int place_initrd(struct vmm *vm, const uint8_t *data, size_t len, uint64_t max_addr,
			uint64_t kernel_end, uint64_t *addr)
{
	uint64_t top = KL_MIN(vm->mem_size, max_addr + 1);
	uint64_t a;

	if (len > top || top - len < kernel_end)
		return kl_err(-ENOSPC, "initrd of %zu bytes does not fit in %llu MiB of guest RAM "
			      "above the kernel", len, (unsigned long long)(vm->mem_size >> 20));
	a = (top - len) & ~0xfffULL;
	if (a < kernel_end)
		return kl_err(-ENOSPC, "initrd does not fit above the kernel");
	memcpy(vm->mem + a, data, len);
	*addr = a;
	return 0;
}

static int load_cmdline(struct vmm *vm, const char *cmdline, uint32_t max)
{
	size_t n = strlen(cmdline);

	if (n + 1 > max || n + 1 > VMM_CMDLINE_MAX)
		return kl_err(-E2BIG, "command line of %zu bytes is longer than the kernel's %u", n,
			      KL_MIN(max, (uint32_t)VMM_CMDLINE_MAX) - 1);
	memcpy(vm->mem + VMM_CMDLINE_ADDR, cmdline, n + 1);
	return 0;
}

static int load_bzimage(struct vmm *vm, const char *path, const uint8_t *k, size_t klen,
			const uint8_t *rd, size_t rdlen, const char *cmdline)
{
	struct vmm_bzimage bz;
	uint8_t *zp = vm->mem + VMM_ZERO_PAGE_ADDR;
	struct e820 e[8];
	uint64_t kend, rdaddr = 0;
	size_t ne;

	KL_TRY(vmm_bzimage_parse(k, klen, path, &bz));
	/* the decompressor runs in place and needs init_size bytes from the load address */
	kend = VMM_KERNEL_ADDR + KL_MAX(bz.kernel_len, (uint64_t)bz.init_size);
	if (kend > vm->mem_size)
		return kl_err(-ENOSPC, "%s: kernel needs %llu MiB, guest has %llu MiB", path,
			      (unsigned long long)(kend >> 20),
			      (unsigned long long)(vm->mem_size >> 20));
	memcpy(vm->mem + VMM_KERNEL_ADDR, k + bz.kernel_off, bz.kernel_len);
	memset(zp, 0, BP_SIZE);
	memcpy(zp + BP_SETUP_SECTS, k + BP_SETUP_SECTS, bz.hdr_end - BP_SETUP_SECTS);
	zp[BP_TYPE_OF_LOADER] = 0xff;
	zp[BP_LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP;
	put_le16(zp + BP_HEAP_END_PTR, 0xfe00);
	KL_TRY(load_cmdline(vm, cmdline, bz.cmdline_size + 1));
	put_le32(zp + BP_CMD_LINE_PTR, VMM_CMDLINE_ADDR);
	if (rd) {
		KL_TRY(place_initrd(vm, rd, rdlen, bz.initrd_addr_max, KL_ALIGN_UP(kend, 4096),
				    &rdaddr));
		put_le32(zp + BP_RAMDISK_IMAGE, (uint32_t)rdaddr);
		put_le32(zp + BP_RAMDISK_SIZE, (uint32_t)rdlen);
	}
	ne = build_e820(vm, e);
	zp[BP_E820_ENTRIES] = (uint8_t)ne;
	for (size_t i = 0; i < ne; i++) {
		uint8_t *p = zp + BP_E820_TABLE + i * 20;

		put_le64(p, e[i].addr);
		put_le64(p + 8, e[i].size);
		put_le32(p + 16, e[i].type);
	}
	vm->entry = VMM_KERNEL_ADDR + 0x200;
	vm->pvh = false;
	return 0;
}

static int load_pvh(struct vmm *vm, const char *path, const uint8_t *k, size_t klen,
		    const uint8_t *rd, size_t rdlen, const char *cmdline, const struct vmm_elf *elf)
{
	uint8_t *si = vm->mem + VMM_PVH_INFO_ADDR;
	uint64_t kend = 0, rdaddr = 0;
	struct e820 e[8];
	size_t ne;

	for (size_t i = 0; i < elf->nsegs; i++) {
		const struct vmm_elf_seg *s = &elf->segs[i];

		if (s->paddr < VMM_KERNEL_ADDR || !kl_range_ok(s->paddr, s->memsz, vm->mem_size))
			return kl_err(-ENOSPC, "%s: segment at %#llx+%#llx does not fit guest RAM "
				      "(%llu MiB) above 1 MiB", path, (unsigned long long)s->paddr,
				      (unsigned long long)s->memsz,
				      (unsigned long long)(vm->mem_size >> 20));
		memcpy(vm->mem + s->paddr, k + s->off, s->filesz);
		memset(vm->mem + s->paddr + s->filesz, 0, s->memsz - s->filesz);
		kend = KL_MAX(kend, s->paddr + s->memsz);
	}
	(void)klen;
	if (elf->pvh_entry >= vm->mem_size)
		return kl_err(-EINVAL, "%s: PVH entry %#llx outside guest RAM", path,
			      (unsigned long long)elf->pvh_entry);
	KL_TRY(load_cmdline(vm, cmdline, VMM_CMDLINE_MAX));
	memset(si, 0, 0x1000);
	/* struct hvm_start_info (version 1): 56 bytes, then one module, then the map */
	put_le32(si + 0, HVM_START_MAGIC);
	put_le32(si + 4, 1);
	put_le64(si + 24, VMM_CMDLINE_ADDR);
	if (rd) {
		KL_TRY(place_initrd(vm, rd, rdlen, 0xffffffffULL, KL_ALIGN_UP(kend, 4096), &rdaddr));
		put_le32(si + 12, 1);			/* nr_modules */
		put_le64(si + 16, VMM_PVH_INFO_ADDR + 0x40); /* modlist_paddr */
		put_le64(si + 0x40, rdaddr);
		put_le64(si + 0x48, rdlen);
	}
	ne = build_e820(vm, e);
	put_le64(si + 40, VMM_PVH_INFO_ADDR + 0x80); /* memmap_paddr */
	put_le32(si + 48, (uint32_t)ne);
	for (size_t i = 0; i < ne; i++) {
		uint8_t *p = si + 0x80 + i * 24;

		put_le64(p, e[i].addr);
		put_le64(p + 8, e[i].size);
		put_le32(p + 16, e[i].type);
	}
	vm->entry = elf->pvh_entry;
	vm->pvh = true;
	return 0;
}

int vmm_boot_load(struct vmm *vm, const char *kernel, const char *initrd, const char *cmdline)
{
	uint8_t *k = NULL, *rd = NULL;
	size_t klen = 0, rdlen = 0;
	int rc;

	KL_TRY(read_file(kernel, &k, &klen));
	if (initrd) {
		rc = read_file(initrd, &rd, &rdlen);
		if (rc < 0)
			goto out;
	}
	if (klen >= 4 && !memcmp(k, "\177ELF", 4)) {
		struct vmm_elf elf;

		rc = vmm_elf_parse(k, klen, kernel, &elf);
		if (rc < 0)
			goto out;
		if (!elf.pvh_entry) {
			rc = kl_err(-ENOTSUP, "%s: ELF kernel has no PVH entry note "
				    "(XEN_ELFNOTE_PHYS32_ENTRY); boot the bzImage instead", kernel);
			goto out;
		}
		rc = load_pvh(vm, kernel, k, klen, rd, rdlen, cmdline, &elf);
	} else {
		rc = load_bzimage(vm, kernel, k, klen, rd, rdlen, cmdline);
	}
out:
	kl_free(k);
	kl_free(rd);
	return rc;
}

/* ------------------------------------------------------------------ registers */

/* GDT entries: null, 32-bit code (PVH), 64-bit code (__BOOT_CS 0x10),
 * data (__BOOT_DS 0x18), TSS (0x20) */
static const uint64_t boot_gdt[] = {
	0,
	0x00cf9b000000ffffULL,
	0x00af9b000000ffffULL,
	0x00cf93000000ffffULL,
	0x00008b0000000067ULL,
};

static void seg_from(struct kvm_segment *s, uint16_t sel, uint64_t desc)
{
	memset(s, 0, sizeof(*s));
	s->selector = sel;
	s->base = (uint32_t)(((desc >> 16) & 0xffffff) | (((desc >> 56) & 0xff) << 24));
	s->limit = (uint32_t)((desc & 0xffff) | (((desc >> 48) & 0xf) << 16));
	s->type = (desc >> 40) & 0xf;
	s->s = (desc >> 44) & 1;
	s->dpl = (desc >> 45) & 3;
	s->present = (desc >> 47) & 1;
	s->avl = (desc >> 52) & 1;
	s->l = (desc >> 53) & 1;
	s->db = (desc >> 54) & 1;
	s->g = (desc >> 55) & 1;
	if (s->g)
		s->limit = (s->limit << 12) | 0xfff;
}

int vmm_x86_setup_regs(struct vmm *vm)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs = { 0 };
	struct kvm_segment code, data, tss;
	uint64_t *pml4 = (uint64_t *)(vm->mem + VMM_PML4_ADDR);
	uint64_t *pdpt = pml4 + 512;
	uint64_t *pd = pdpt + 512;

	memcpy(vm->mem + VMM_GDT_ADDR, boot_gdt, sizeof(boot_gdt));
	memset(vm->mem + VMM_IDT_ADDR, 0, 8);
	if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		return kl_err(-errno, "KVM_GET_SREGS: %s", strerror(errno));
	seg_from(&data, 0x18, boot_gdt[3]);
	seg_from(&tss, 0x20, boot_gdt[4]);
	sregs.gdt.base = VMM_GDT_ADDR;
	sregs.gdt.limit = sizeof(boot_gdt) - 1;
	sregs.idt.base = VMM_IDT_ADDR;
	sregs.idt.limit = 7;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.tr = tss;
	if (vm->pvh) {
		/* 32-bit protected mode, paging off (PVH ABI) */
		seg_from(&code, 0x08, boot_gdt[1]);
		sregs.cs = code;
		sregs.cr0 = 0x11; /* PE | ET */
		sregs.cr3 = 0;
		sregs.cr4 = 0;
		sregs.efer = 0;
		regs.rbx = VMM_PVH_INFO_ADDR;
	} else {
		/* identity map 0..4 GiB with 2 MiB pages */
		memset(pml4, 0, 6 * 4096);
		pml4[0] = (VMM_PML4_ADDR + 0x1000) | 0x3;
		for (int i = 0; i < 4; i++)
			pdpt[i] = (VMM_PML4_ADDR + 0x2000 + 0x1000 * (uint64_t)i) | 0x3;
		for (uint64_t i = 0; i < 4 * 512; i++)
			pd[i] = (i << 21) | 0x83; /* present, writable, 2 MiB */
		seg_from(&code, 0x10, boot_gdt[2]);
		sregs.cs = code;
		sregs.cr3 = VMM_PML4_ADDR;
		sregs.cr4 = 0x20;	      /* PAE */
		sregs.cr0 = 0x80000011;	      /* PG | ET | PE */
		sregs.efer = 0x500;	      /* LME | LMA */
		regs.rsi = VMM_ZERO_PAGE_ADDR;
	}
	if (ioctl(vm->vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
		return kl_err(-errno, "KVM_SET_SREGS: %s", strerror(errno));
	regs.rflags = 2;
	regs.rip = vm->entry;
	regs.rsp = regs.rbp = VMM_BOOT_STACK;
	if (ioctl(vm->vcpu_fd, KVM_SET_REGS, &regs) < 0)
		return kl_err(-errno, "KVM_SET_REGS: %s", strerror(errno));
	return 0;
}
