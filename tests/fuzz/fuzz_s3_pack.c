/*
 * tests/fuzz/fuzz_s3_pack.c - sealed objects and pack blobs under a fixed
 * key (replicate/s3-format.c): header checks, lengths, decompression
 * bounds. Input: a 1-byte selector, then the object bytes. Forged tags do
 * not authenticate, so this covers everything before and around the AEAD;
 * the seeds include valid objects, so mutations of those reach it too.
 */
#include "replicate/s3_int.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct repl_s3_keys k;
	static uint8_t out[REPL_CHUNK_SIZE];
	uint8_t master[REPL_KEY_LEN], rid[16], *pt;
	size_t ptl;

	if (size < 1)
		return 0;
	memset(master, 0x42, sizeof(master));
	memset(rid, 0x24, sizeof(rid));
	if (repl_s3_keys_derive(master, rid, &k) < 0)
		return 0;
	switch (data[0] % 4) {
	case 0:
		if (repl_obj_open(&k, REPL_OBJ_MANIFEST, "m", data + 1, size - 1, &pt, &ptl) == 0)
			kl_free(pt);
		break;
	case 1:
		if (repl_obj_open(&k, REPL_OBJ_INDEX, "i", data + 1, size - 1, &pt, &ptl) == 0)
			kl_free(pt);
		break;
	case 2: {
		/* id (32) | plain length (4) | blob */
		if (size < 1 + REPL_ID_LEN + 4)
			break;
		uint32_t plain = get_le32(data + 1 + REPL_ID_LEN) % (REPL_CHUNK_SIZE + 1);

		repl_blob_decode(&k, data + 1, data + 1 + REPL_ID_LEN + 4,
				 size - 1 - REPL_ID_LEN - 4, out, plain);
		break;
	}
	default: {
		struct repl_config c;

		repl_config_decode(data + 1, size - 1, &c);
		break;
	}
	}
	kl_err_clear();
	return 0;
}
