/*
 * tests/fuzz/fuzz_keel.c - the .keel open and metadata path on hostile bytes.
 */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* parents are never followed from fuzz input */
	return fuzz_image(data, size, "keel", BLK_OPEN_NO_PARENT);
}
