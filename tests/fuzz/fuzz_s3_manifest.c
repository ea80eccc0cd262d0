/*
 * tests/fuzz/fuzz_s3_manifest.c - the decrypted-manifest parser of S3
 * repositories (replicate/s3-format.c): whatever it accepts must re-encode
 * to a manifest that decodes to the same content.
 */
#include "replicate/s3_int.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct repl_manifest m, m2;
	uint8_t *buf;
	size_t len;

	if (repl_manifest_decode(data, size, &m) == 0) {
		if (repl_manifest_encode(&m, &buf, &len) == 0) {
			if (repl_manifest_decode(buf, len, &m2) != 0 || m2.ndata != m.ndata ||
			    m2.vsize != m.vsize ||
			    (m.ndata && memcmp(m2.ids, m.ids, (size_t)m.ndata * REPL_ID_LEN)))
				__builtin_trap();
			repl_manifest_release(&m2);
			kl_free(buf);
		}
		repl_manifest_release(&m);
	}
	kl_err_clear();
	return 0;
}
