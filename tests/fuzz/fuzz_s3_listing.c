/*
 * tests/fuzz/fuzz_s3_listing.c - the parsers of S3's XML answers
 * (ListObjectsV2 results, error bodies, timestamps) in replicate/s3-http.c.
 */
#include "replicate/s3_int.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct repl_s3_listing l = { 0 };
	char code[64], ts[40];
	uint64_t ns;

	repl_s3_parse_listing((const char *)data, size, size ? data[0] % 8 : 0, &l);
	repl_s3_listing_release(&l);
	repl_s3_parse_error((const char *)data, size, code, sizeof(code));
	if (size < sizeof(ts)) {
		memcpy(ts, data, size);
		ts[size] = '\0';
		repl_s3_parse_iso8601(ts, &ns);
	}
	kl_err_clear();
	return 0;
}
