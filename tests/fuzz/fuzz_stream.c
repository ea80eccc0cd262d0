/*
 * tests/fuzz/fuzz_stream.c - the stream parser (replicate/stream-*.c) on
 * hostile bytes: record framing, CRCs, tags, header, data, zero, ref, mark
 * and trailer payloads, zstd frames. The first input byte picks the mode:
 * bit 0 set = receive with the passphrase "fuzz" (decrypts keyed streams;
 * scrypt is capped in fuzzing builds), clear = without a key (a keyed
 * stream is then checked as a raw store checks it). Nothing is written:
 * the receiver runs in verify-only mode.
 */
#include "replicate/repl_int.h"

#include <string.h>

struct fz_mem {
	const uint8_t *p;
	size_t n, pos;
};

static ssize_t fz_read(void *o, void *buf, size_t len)
{
	struct fz_mem *m = o;
	size_t k = KL_MIN(len, m->n - m->pos);

	memcpy(buf, m->p + m->pos, k);
	m->pos += k;
	return (ssize_t)k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_mem m;
	struct repl_reader r = { .read = fz_read, .opaque = &m };
	struct repl_recv_opts o = { .verify_only = true };
	struct repl_recv_stats st;

	if (size < 1)
		return 0;
	m.p = data + 1;
	m.n = size - 1;
	m.pos = 0;
	if (data[0] & 1) {
		o.key = (const uint8_t *)"fuzz";
		o.key_len = 4;
	}
	repl_recv(&r, &o, &st);
	kl_err_clear();
	return 0;
}
