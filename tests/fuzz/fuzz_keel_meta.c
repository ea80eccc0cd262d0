/*
 * tests/fuzz/fuzz_keel_meta.c - the .keel key-slot table and dedup index
 * parsers on hostile bytes. The first input byte picks the parser.
 */
#include "format/keel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kf_keyslot slots[KF_MAX_SLOTS];
	unsigned n;
	uint64_t count;

	if (size < 1)
		return 0;
	if (data[0] & 1)
		kf_crypto_parse(data + 1, size - 1, slots, &n);
	else
		kf_dedup_parse(data + 1, size - 1, &count);
	kl_err_clear();
	return 0;
}
