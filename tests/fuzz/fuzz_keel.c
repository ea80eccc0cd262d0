/*
 * tests/fuzz/fuzz_keel.c - the .keel open and metadata path on hostile bytes,
 * also encrypted images (seeds use the passphrase below).
 */
#include "tests/fuzz/fuzz_common.h"

#define FUZZ_KEEL_PASS "fuzz-pass"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* parents are never followed from fuzz input */
	return fuzz_image_key(data, size, "keel", BLK_OPEN_NO_PARENT, FUZZ_KEEL_PASS);
}
