/*
 * tests/fuzz/fuzz_s3_index.c - the decrypted index and gc-mark parsers of
 * S3 repositories (replicate/s3-format.c). The first byte picks which.
 */
#include "replicate/s3_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct repl_index ix;
	uint8_t (*packs)[REPL_ID_LEN];
	size_t n;

	if (size < 1)
		return 0;
	if (data[0] & 1) {
		if (repl_mark_decode(data + 1, size - 1, &packs, &n) == 0)
			kl_free(packs);
	} else if (repl_index_decode(data + 1, size - 1, &ix) == 0) {
		/* accepted entries are in order and inside 64-bit space */
		for (size_t i = 1; i < ix.n; i++)
			if (ix.e[i].off < ix.e[i - 1].off + ix.e[i - 1].len)
				__builtin_trap();
		repl_index_release(&ix);
	}
	kl_err_clear();
	return 0;
}
