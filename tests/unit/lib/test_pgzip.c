/*
 * tests/unit/lib/test_pgzip.c - lib/pgzip.c: the parallel gzip stream
 * inflates (zlib, gzip mode: CRC-32 and length checked) to its input, is
 * the same bytes at every thread count, is about as small as one deflate
 * stream, and passes a failing writer's error on.
 */
#define _GNU_SOURCE
#include "tests/common/testutil.h"

#include <string.h>
#include <zlib.h>

struct sink {
	uint8_t *buf;
	size_t len, cap;
	int fail_after; /* calls before an -ENOSPC; -1: never */
};

static int sink_write(void *opaque, const void *p, size_t n)
{
	struct sink *s = opaque;

	if (s->fail_after == 0)
		return kl_err(-ENOSPC, "sink: full");
	if (s->fail_after > 0)
		s->fail_after--;
	if (s->len + n > s->cap) {
		s->cap = (s->len + n) * 2;
		s->buf = kl_realloc(s->buf, s->cap);
		ck_assert_ptr_nonnull(s->buf);
	}
	memcpy(s->buf + s->len, p, n);
	s->len += n;
	return 0;
}

/* Text-like data with repeats across the 1 MiB cuts, and a random stretch. */
static uint8_t *make_input(size_t n)
{
	uint8_t *p = kl_malloc(n ? n : 1);
	uint32_t x = 12345;

	ck_assert_ptr_nonnull(p);
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245 + 12345;
		if (i % (3 << 20) > (5u << 19))
			p[i] = (uint8_t)(x >> 16); /* incompressible */
		else
			p[i] = (uint8_t)("the quick brown fox jumps over the lazy dog "[(i / 7 + (x >> 29)) % 44]);
	}
	return p;
}

static struct sink compress_with(const uint8_t *in, size_t n, int threads, size_t piece)
{
	struct sink s = { .fail_after = -1 };
	struct kl_pgz *z;

	ck_assert_int_eq(kl_pgz_open(6, threads, sink_write, &s, &z), 0);
	for (size_t off = 0; off < n; off += piece)
		ck_assert_int_eq(kl_pgz_write(z, in + off, KL_MIN(piece, n - off)), 0);
	ck_assert_int_eq(kl_pgz_finish(z), 0);
	kl_pgz_free(z);
	return s;
}

static void check_inflates_to(const struct sink *s, const uint8_t *in, size_t n)
{
	uint8_t *out = kl_malloc(n + 1);
	z_stream zs;

	ck_assert_ptr_nonnull(out);
	memset(&zs, 0, sizeof(zs));
	ck_assert_int_eq(inflateInit2(&zs, 16 + 15), Z_OK);
	zs.next_in = s->buf;
	zs.avail_in = (uInt)s->len;
	zs.next_out = out;
	zs.avail_out = (uInt)(n + 1);
	ck_assert_int_eq(inflate(&zs, Z_FINISH), Z_STREAM_END); /* trailer checked */
	ck_assert_uint_eq(zs.total_out, n);
	ck_assert_uint_eq(zs.avail_in, 0); /* one member, nothing after it */
	ck_assert(memcmp(out, in, n) == 0);
	inflateEnd(&zs);
	kl_free(out);
}

START_TEST(round_trip_and_thread_independent)
{
	static const size_t sizes[] = { 0, 1, 1u << 20, (1u << 20) + 1, (11u << 19) + 77 };

	for (size_t i = 0; i < KL_ARRAY_SIZE(sizes); i++) {
		size_t n = sizes[i];
		uint8_t *in = make_input(n);
		struct sink one = compress_with(in, n, 1, 10240);

		check_inflates_to(&one, in, n);
		for (int t = 2; t <= 5; t += 3) {
			/* odd write sizes too: the cuts are the block size's, not the caller's */
			struct sink many = compress_with(in, n, t, t == 2 ? 4093 : 1u << 21);

			ck_assert_uint_eq(many.len, one.len);
			ck_assert(memcmp(many.buf, one.buf, one.len) == 0);
			kl_free(many.buf);
		}
		kl_free(one.buf);
		kl_free(in);
	}
}
END_TEST

START_TEST(as_small_as_one_stream)
{
	size_t n = 6u << 20;
	uint8_t *in = make_input(n);
	struct sink s = compress_with(in, n, 2, 65536);
	uLongf one = compressBound((uLong)n);
	uint8_t *ref = kl_malloc(one);

	ck_assert_ptr_nonnull(ref);
	ck_assert_int_eq(compress2(ref, &one, in, (uLong)n, 6), Z_OK);
	/* the dictionary carries matches across the cuts: within 1 % of zlib's one stream */
	ck_assert_msg(s.len <= one + one / 100, "pgzip %zu bytes, zlib %lu", s.len,
		      (unsigned long)one);
	kl_free(ref);
	kl_free(s.buf);
	kl_free(in);
}
END_TEST

START_TEST(writer_error_is_returned)
{
	size_t n = 5u << 20;
	uint8_t *in = make_input(n);

	for (int fail = 0; fail < 4; fail++) {
		struct sink s = { .fail_after = fail };
		struct kl_pgz *z;
		int rc = 0;

		ck_assert_int_eq(kl_pgz_open(6, 2, sink_write, &s, &z), 0);
		for (size_t off = 0; off < n && rc == 0; off += 65536)
			rc = kl_pgz_write(z, in + off, 65536);
		if (rc == 0)
			rc = kl_pgz_finish(z);
		ck_assert_int_eq(rc, -ENOSPC);
		/* and it stays failed */
		ck_assert_int_eq(kl_pgz_write(z, in, 1), -ENOSPC);
		kl_pgz_free(z);
		kl_free(s.buf);
	}
	kl_free(in);
}
END_TEST

static Suite *pgzip_suite(void)
{
	Suite *s = suite_create("pgzip");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, round_trip_and_thread_independent);
	tcase_add_test(tc, as_small_as_one_stream);
	tcase_add_test(tc, writer_error_is_returned);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(pgzip_suite());
}
