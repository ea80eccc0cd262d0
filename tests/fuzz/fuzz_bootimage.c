/*
 * tests/fuzz/fuzz_bootimage.c - the kernel headers the VMM trusts least:
 * a bzImage setup header and an ELF vmlinux's program headers and PVH note.
 * Every segment the parser accepts must lie inside the input.
 */
#include "vmm/vmm_int.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vmm_bzimage bz;
	struct vmm_elf elf;

	if (vmm_bzimage_parse(data, size, "fuzz", &bz) == 0) {
		if (bz.kernel_off + bz.kernel_len != size || bz.hdr_end > 4096)
			abort();
	}
	if (vmm_elf_parse(data, size, "fuzz", &elf) == 0) {
		for (size_t i = 0; i < elf.nsegs; i++)
			if (elf.segs[i].off > size || elf.segs[i].filesz > size - elf.segs[i].off)
				abort();
	}
	kl_err_clear();
	return 0;
}
