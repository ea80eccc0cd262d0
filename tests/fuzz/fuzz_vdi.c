/*
 * tests/fuzz/fuzz_vdi.c - format/vdi.c on hostile bytes: header, block map,
 * data offsets, differencing links.
 */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_image(data, size, "vdi", 0);
	fuzz_image(data, size, "vdi", BLK_OPEN_NO_PARENT);
	return 0;
}
