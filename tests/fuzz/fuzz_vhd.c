/*
 * tests/fuzz/fuzz_vhd.c - format/vhd.c on hostile bytes: footer and its
 * copy, dynamic header, BAT, locators, bitmaps. Each input is opened twice:
 * as is (checksums verified, parent lookup), and with checksums and the
 * parent skipped, so mutations past the checksums reach the tables.
 */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_image(data, size, "vhd", 0);
	fuzz_image(data, size, "vhd", BLK_OPEN_NO_CHECKSUM | BLK_OPEN_NO_PARENT);
	return 0;
}
