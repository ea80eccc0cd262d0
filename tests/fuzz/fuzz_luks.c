/*
 * tests/fuzz/fuzz_luks.c - LUKS1 on hostile bytes, two ways: the input as
 * a header area (header and key material, as qcow2 keeps it) unlocked by
 * luks_open, and the input as a whole LUKS volume through the "luks"
 * format driver (open, info, reads, and info without the key). Seeds
 * (tests/fuzz/corpus.d/luks.sh) use the passphrase below. Iteration counts
 * are capped low in fuzz builds (format/luks.c), so hostile ones cost
 * milliseconds, not minutes.
 */
#include "tests/fuzz/fuzz_common.h"

#include "format/luks.h"

#define FUZZ_LUKS_PASS "fuzzpass"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t buf[8 * LUKS_SECTOR];
	struct luks *l = NULL;

	if (luks_open(data, size, (const uint8_t *)FUZZ_LUKS_PASS, strlen(FUZZ_LUKS_PASS), "fuzz",
		      &l) == 0) {
		size_t n = KL_MIN(size, sizeof(buf)) / LUKS_SECTOR * LUKS_SECTOR;

		memcpy(buf, data, n);
		(void)luks_decrypt(l, 7, buf, n);
		(void)luks_decrypt(l, 7, buf, n + 1); /* not whole sectors: refused */
		(void)luks_describe(l);
		luks_close(l);
	}
	kl_err_clear();
	return fuzz_image_key(data, size, "luks", 0, FUZZ_LUKS_PASS);
}
