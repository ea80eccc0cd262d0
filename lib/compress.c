/*
 * lib/compress.c - one-shot, thread-safe compression for encoders that run
 * on many threads at once (convert's workers call format drivers'
 * encode_cluster): each thread keeps its own compressor contexts, made on
 * first use and freed when the thread exits, so no call allocates on the
 * hot path and no context is shared.
 *
 * zlib-wrapped deflate (RFC 1950, what streamOptimized VMDK grains hold)
 * comes from libdeflate, which compresses about three times faster than
 * zlib at the same level with a slightly smaller output (measured on
 * filesystem data: see README "keel convert"). Raw deflate with a small
 * window (qcow2 clusters, which qemu inflates with a 4 KiB window) needs
 * zlib's windowBits, which libdeflate lacks, so it stays on zlib.
 */
#include "kl.h"

#include <libdeflate.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#define KL_LEVELS 13 /* libdeflate levels 0..12 */

struct kl_ctx {
	struct libdeflate_compressor *ld[KL_LEVELS];
	ZSTD_CCtx *zstd;
	int zstd_level;
	z_stream zs;
	bool zs_ready;
	int zs_level, zs_bits;
};

static pthread_key_t kl_ctx_key;
static pthread_once_t kl_ctx_once = PTHREAD_ONCE_INIT;

static void kl_ctx_free(void *p)
{
	struct kl_ctx *c = p;

	if (!c)
		return;
	for (int i = 0; i < KL_LEVELS; i++)
		libdeflate_free_compressor(c->ld[i]);
	ZSTD_freeCCtx(c->zstd);
	if (c->zs_ready)
		deflateEnd(&c->zs);
	kl_free(c);
}

static void kl_ctx_init(void)
{
	(void)pthread_key_create(&kl_ctx_key, kl_ctx_free);
}

static struct kl_ctx *kl_ctx(void)
{
	struct kl_ctx *c;

	pthread_once(&kl_ctx_once, kl_ctx_init);
	c = pthread_getspecific(kl_ctx_key);
	if (c)
		return c;
	/* owned by the thread, freed by the key's destructor when it exits */
	c = kl_calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	if (pthread_setspecific(kl_ctx_key, c) != 0) {
		kl_free(c);
		kl_err(-ENOMEM, "cannot keep compressor state");
		return NULL;
	}
	return c;
}

ssize_t kl_zlib_compress(int level, const void *in, size_t len, void *out, size_t cap)
{
	struct kl_ctx *c = kl_ctx();
	size_t n;

	if (!c)
		return -ENOMEM;
	if (level < 0)
		level = 6;
	if (level >= KL_LEVELS)
		level = KL_LEVELS - 1;
	if (!c->ld[level] && !(c->ld[level] = libdeflate_alloc_compressor(level)))
		return kl_err(-ENOMEM, "cannot set up a deflate compressor (level %d)", level);
	n = libdeflate_zlib_compress(c->ld[level], in, len, out, cap);
	return (ssize_t)n; /* 0: did not fit */
}

ssize_t kl_zstd_compress(int level, const void *in, size_t len, void *out, size_t cap)
{
	struct kl_ctx *c = kl_ctx();
	size_t r;

	if (!c)
		return -ENOMEM;
	if (!c->zstd) {
		c->zstd = ZSTD_createCCtx();
		if (!c->zstd)
			return kl_err(-ENOMEM, "cannot set up zstd");
		c->zstd_level = INT32_MIN;
	}
	if (c->zstd_level != level) {
		ZSTD_CCtx_reset(c->zstd, ZSTD_reset_session_and_parameters);
		ZSTD_CCtx_setParameter(c->zstd, ZSTD_c_compressionLevel, level);
		c->zstd_level = level;
	}
	r = ZSTD_compress2(c->zstd, out, cap, in, len);
	if (ZSTD_isError(r))
		return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall
			       ? 0
			       : kl_err(-EIO, "zstd: %s", ZSTD_getErrorName(r));
	return (ssize_t)r;
}

ssize_t kl_deflate_raw_compress(int level, int window_bits, const void *in, size_t len, void *out,
				size_t cap)
{
	struct kl_ctx *c = kl_ctx();
	int r;

	if (!c)
		return -ENOMEM;
	if (window_bits < 9 || window_bits > 15)
		return kl_err(-EINVAL, "deflate window of 2^%d bytes", window_bits);
	if (c->zs_ready && (c->zs_level != level || c->zs_bits != window_bits)) {
		deflateEnd(&c->zs);
		c->zs_ready = false;
	}
	if (!c->zs_ready) {
		memset(&c->zs, 0, sizeof(c->zs));
		if (deflateInit2(&c->zs, level, Z_DEFLATED, -window_bits, 9, Z_DEFAULT_STRATEGY) !=
		    Z_OK)
			return kl_err(-ENOMEM, "cannot set up zlib");
		c->zs_ready = true;
		c->zs_level = level;
		c->zs_bits = window_bits;
	} else {
		deflateReset(&c->zs);
	}
	c->zs.next_in = (Bytef *)(uintptr_t)in;
	c->zs.avail_in = (uInt)len;
	c->zs.next_out = out;
	c->zs.avail_out = (uInt)cap;
	r = deflate(&c->zs, Z_FINISH);
	if (r != Z_STREAM_END)
		return 0; /* did not fit */
	return (ssize_t)(cap - c->zs.avail_out);
}
