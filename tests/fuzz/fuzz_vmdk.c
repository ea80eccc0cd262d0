/*
 * tests/fuzz/fuzz_vmdk.c - hostile bytes as a single-file VMDK
 * (monolithicSparse or streamOptimized): sparse header, stream footer,
 * embedded descriptor, grain directory and tables, grain markers and zlib
 * streams. Descriptor files that name other files are covered by
 * fuzz_vmdk_desc (the parser alone).
 */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* parents resolve next to /proc/self/fd: never opened in practice */
	return fuzz_image(data, size, "vmdk", BLK_OPEN_NO_PARENT);
}
