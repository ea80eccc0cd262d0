/*
 * tests/unit/replicate/test_s3.c - the S3 repository code that needs no
 * network: URLs, key derivation and wrapping, sealed objects, blobs,
 * index, manifest and gc-mark codecs (round trips and hostile input), the
 * chunk map, S3's XML answers, the worker pool.
 */
#include "tests/common/testutil.h"
#include "replicate/s3_int.h"

#include <stdlib.h>
#include <string.h>

static void test_keys(struct repl_s3_keys *k)
{
	uint8_t master[REPL_KEY_LEN], rid[16];

	memset(master, 7, sizeof(master));
	memset(rid, 9, sizeof(rid));
	ck_assert_ok(repl_s3_keys_derive(master, rid, k));
}

START_TEST(url_parsing)
{
	struct repl_s3_url u;

	ck_assert_ok(repl_s3_url_parse("s3://my-bucket/a/b@snap-1", &u));
	ck_assert_str_eq(u.bucket, "my-bucket");
	ck_assert_str_eq(u.prefix, "a/b");
	ck_assert_str_eq(u.snapshot, "snap-1");
	repl_s3_url_release(&u);
	ck_assert_ok(repl_s3_url_parse("s3://bkt", &u));
	ck_assert_str_eq(u.prefix, "");
	ck_assert_ptr_null(u.snapshot);
	repl_s3_url_release(&u);
	ck_assert_ok(repl_s3_url_parse("s3://bkt/p/@x", &u));
	ck_assert_str_eq(u.prefix, "p");
	ck_assert_str_eq(u.snapshot, "x");
	repl_s3_url_release(&u);
	ck_assert_ok(repl_s3_url_parse("s3://bkt@x", &u));
	ck_assert_str_eq(u.bucket, "bkt");
	repl_s3_url_release(&u);
	ck_assert_int_eq(repl_s3_url_parse("s3://Bad_Bucket/p", &u), -EINVAL);
	ck_assert_int_eq(repl_s3_url_parse("s3://ab/p", &u), -EINVAL);
	ck_assert_int_eq(repl_s3_url_parse("s3://bkt/a b", &u), -EINVAL);
	ck_assert_int_eq(repl_s3_url_parse("s3://bkt/a/../b", &u), -EINVAL);
	ck_assert_int_eq(repl_s3_url_parse("s3://bkt/a//b", &u), -EINVAL);
	ck_assert_int_eq(repl_s3_url_parse("s3://bkt/a@", &u), -EINVAL);
	ck_assert_int_eq(repl_s3_url_parse("http://bkt/a", &u), -EINVAL);
	ck_assert(repl_s3_is_url("s3://x"));
	ck_assert(!repl_s3_is_url("/tmp/s3://x"));
}
END_TEST

START_TEST(hmac_and_hex)
{
	/* RFC 4231 test case 2 shape: our HMAC takes 32-byte keys */
	uint8_t key[REPL_KEY_LEN] = { 0 }, a[REPL_ID_LEN], b[REPL_ID_LEN], back[REPL_ID_LEN];
	char hex[2 * REPL_ID_LEN + 1];

	ck_assert_ok(repl_hmac(key, "abc", 3, a));
	ck_assert_ok(repl_hmac(key, "abc", 3, b));
	ck_assert_mem_eq(a, b, REPL_ID_LEN);
	key[0] = 1;
	ck_assert_ok(repl_hmac(key, "abc", 3, b));
	ck_assert(memcmp(a, b, REPL_ID_LEN) != 0);
	repl_s3_hex(a, REPL_ID_LEN, hex);
	ck_assert_uint_eq(strlen(hex), 64);
	ck_assert_ok(repl_s3_unhex(hex, back, REPL_ID_LEN));
	ck_assert_mem_eq(a, back, REPL_ID_LEN);
	ck_assert_int_lt(repl_s3_unhex("zz", back, 1), 0);
	ck_assert_int_lt(repl_s3_unhex("ABCD", back, 2), 0); /* upper case is not ours */
}
END_TEST

START_TEST(seal_open)
{
	uint8_t key[REPL_KEY_LEN], pt[100], ct[100 + REPL_SEAL_OVERHEAD], ct2[sizeof(ct)], out[100];

	memset(key, 3, sizeof(key));
	tu_fill(pt, sizeof(pt), 1, 0);
	ck_assert_ok(repl_seal(key, "aad", 3, pt, sizeof(pt), ct));
	ck_assert_ok(repl_seal(key, "aad", 3, pt, sizeof(pt), ct2));
	/* a fresh nonce each time: same input, different output */
	ck_assert(memcmp(ct, ct2, sizeof(ct)) != 0);
	ck_assert_ok(repl_open(key, "aad", 3, ct, sizeof(ct), out));
	ck_assert_mem_eq(out, pt, sizeof(pt));
	ck_assert_int_eq(repl_open(key, "aae", 3, ct, sizeof(ct), out), -EBADMSG);
	ct[20] ^= 1;
	ck_assert_int_eq(repl_open(key, "aad", 3, ct, sizeof(ct), out), -EBADMSG);
	ck_assert_int_eq(repl_open(key, "aad", 3, ct, 10, out), -EBADMSG);
}
END_TEST

START_TEST(config_roundtrip)
{
	struct repl_config c, d;
	struct repl_s3_keys k1, k2;
	uint8_t enc[REPL_CONFIG_LEN];
	const uint8_t pass[] = "secret";

	setenv("KEEL_S3_TEST_KDF", "1", 1);
	ck_assert_ok(repl_config_create(pass, 6, &c, &k1));
	ck_assert_ok(repl_config_encode(&c, enc));
	ck_assert_ok(repl_config_decode(enc, sizeof(enc), &d));
	ck_assert_ok(repl_config_unlock(&d, pass, 6, &k2));
	ck_assert_mem_eq(&k1, &k2, sizeof(k1));
	ck_assert_int_eq(repl_config_unlock(&d, (const uint8_t *)"wrong", 5, &k2), -EBADMSG);
	ck_assert(strstr(kl_errmsg(), "wrong passphrase") != NULL);
	ck_assert_int_eq(repl_config_unlock(&d, NULL, 0, &k2), -EINVAL);
	/* a damaged field is damage, not a wrong passphrase */
	enc[40] ^= 1;
	ck_assert_int_eq(repl_config_decode(enc, sizeof(enc), &d), -EBADMSG);
	ck_assert_int_eq(repl_config_decode(enc, 10, &d), -EUCLEAN);
	/* the CRC is not the protection: a re-CRCed change fails the unwrap */
	enc[40] ^= 1;
	enc[44] ^= 1; /* salt */
	put_le32(enc + 136, kl_crc32c(0, enc, 136));
	ck_assert_ok(repl_config_decode(enc, sizeof(enc), &d));
	ck_assert_int_eq(repl_config_unlock(&d, pass, 6, &k2), -EBADMSG);
	/* scrypt asking for more than 1 GiB (2^21 * 8 * 128 = 2 GiB) is refused
	 * before any memory is taken: the config is not proven ours yet */
	enc[44] ^= 1;
	enc[33] = 21;
	put_le32(enc + 136, kl_crc32c(0, enc, 136));
	ck_assert_ok(repl_config_decode(enc, sizeof(enc), &d));
	ck_assert_int_eq(repl_config_unlock(&d, pass, 6, &k2), -EUCLEAN);
	ck_assert(strstr(kl_errmsg(), "1 GiB") != NULL);
	repl_s3_keys_wipe(&k1);
}
END_TEST

START_TEST(sealed_objects)
{
	struct repl_s3_keys k;
	uint8_t pt[5000], *obj, *back;
	size_t ol, bl;

	test_keys(&k);
	memset(pt, 'x', sizeof(pt));
	ck_assert_ok(repl_obj_seal(&k, REPL_OBJ_INDEX, "ctx", pt, sizeof(pt), &obj, &ol));
	ck_assert_uint_lt(ol, sizeof(pt)); /* compressed */
	ck_assert_ok(repl_obj_open(&k, REPL_OBJ_INDEX, "ctx", obj, ol, &back, &bl));
	ck_assert_uint_eq(bl, sizeof(pt));
	ck_assert_mem_eq(back, pt, bl);
	kl_free(back);
	/* another name, another type, a flipped bit: all refused */
	ck_assert_int_eq(repl_obj_open(&k, REPL_OBJ_INDEX, "other", obj, ol, &back, &bl), -EBADMSG);
	ck_assert_int_eq(repl_obj_open(&k, REPL_OBJ_MANIFEST, "ctx", obj, ol, &back, &bl),
			 -EUCLEAN);
	obj[ol - 1] ^= 1;
	ck_assert_int_eq(repl_obj_open(&k, REPL_OBJ_INDEX, "ctx", obj, ol, &back, &bl), -EBADMSG);
	obj[ol - 1] ^= 1;
	obj[8] ^= 1; /* the length is authenticated too */
	ck_assert_int_lt(repl_obj_open(&k, REPL_OBJ_INDEX, "ctx", obj, ol, &back, &bl), 0);
	ck_assert_int_lt(repl_obj_open(&k, REPL_OBJ_INDEX, "ctx", obj, 20, &back, &bl), 0);
	kl_free(obj);
}
END_TEST

START_TEST(blobs)
{
	struct repl_s3_keys k;
	uint8_t chunk[REPL_CHUNK_SIZE], id[REPL_ID_LEN], out[REPL_CHUNK_SIZE];
	uint8_t *blob = kl_malloc(repl_blob_bound(sizeof(chunk)));
	size_t bl;

	test_keys(&k);
	/* compressible */
	memset(chunk, 'a', sizeof(chunk));
	ck_assert_ok(repl_hmac(k.id, chunk, sizeof(chunk), id));
	ck_assert_ok(repl_blob_encode(&k, id, chunk, sizeof(chunk), NULL, 3, blob, &bl));
	ck_assert_uint_eq(blob[0], REPL_BLOB_ZSTD);
	ck_assert_uint_lt(bl, 1000);
	ck_assert_ok(repl_blob_decode(&k, id, blob, bl, out, sizeof(out)));
	ck_assert_mem_eq(out, chunk, sizeof(chunk));
	ck_assert_int_lt(repl_blob_decode(&k, id, blob, bl, out, sizeof(out) - 1), 0);
	/* incompressible: stored */
	tu_fill(chunk, sizeof(chunk), 5, 0);
	ck_assert_ok(repl_hmac(k.id, chunk, sizeof(chunk), id));
	ck_assert_ok(repl_blob_encode(&k, id, chunk, sizeof(chunk), NULL, 3, blob, &bl));
	ck_assert_uint_eq(blob[0], 0);
	ck_assert_uint_eq(bl, 1 + sizeof(chunk) + REPL_SEAL_OVERHEAD);
	ck_assert_ok(repl_blob_decode(&k, id, blob, bl, out, sizeof(out)));
	ck_assert_mem_eq(out, chunk, sizeof(chunk));
	/* under another id (swapped blob) it does not open */
	id[0] ^= 1;
	ck_assert_int_eq(repl_blob_decode(&k, id, blob, bl, out, sizeof(out)), -EBADMSG);
	id[0] ^= 1;
	/* the flags byte is authenticated */
	blob[0] = REPL_BLOB_ZSTD;
	ck_assert_int_lt(repl_blob_decode(&k, id, blob, bl, out, sizeof(out)), 0);
	kl_free(blob);
}
END_TEST

START_TEST(index_codec)
{
	struct repl_index ix = { 0 }, back;
	struct repl_index_entry e[3];
	uint8_t *buf;
	size_t len;

	memset(ix.pack, 0xab, REPL_ID_LEN);
	for (int i = 0; i < 3; i++) {
		memset(e[i].id, i + 1, REPL_ID_LEN);
		e[i].off = REPL_PACK_HDR + (uint64_t)i * 1000;
		e[i].len = 900;
		e[i].plain_len = 65536;
	}
	ix.e = e;
	ix.n = 3;
	ck_assert_ok(repl_index_encode(&ix, &buf, &len));
	ck_assert_ok(repl_index_decode(buf, len, &back));
	ck_assert_uint_eq(back.n, 3);
	ck_assert_mem_eq(back.pack, ix.pack, REPL_ID_LEN);
	ck_assert_mem_eq(back.e, e, sizeof(e));
	repl_index_release(&back);
	/* truncated, extended, overlapping */
	ck_assert_int_eq(repl_index_decode(buf, len - 1, &back), -EUCLEAN);
	put_le32(buf + 12, 1000000);
	ck_assert_int_eq(repl_index_decode(buf, len, &back), -EUCLEAN);
	put_le32(buf + 12, 3);
	put_le64(buf + 48 + 48 + 32, REPL_PACK_HDR + 500); /* entry 1 overlaps entry 0 */
	ck_assert_int_eq(repl_index_decode(buf, len, &back), -EUCLEAN);
	kl_free(buf);
}
END_TEST

START_TEST(manifest_codec)
{
	struct repl_manifest m = { 0 }, back;
	uint64_t pos[] = { 0, 1, 2, 10, 99 };
	uint8_t ids[5][REPL_ID_LEN];
	uint8_t *buf;
	size_t len;

	for (int i = 0; i < 5; i++)
		memset(ids[i], 0x10 + i, REPL_ID_LEN);
	m.name = "night-1";
	m.image = "vm.raw";
	m.format = "raw";
	m.vsize = 100 * 65536ULL - 100; /* a short last chunk */
	m.chunk_size = 65536;
	m.nchunks = 100;
	m.ndata = 5;
	m.pos = pos;
	m.ids = ids;
	m.created_ns = 123;
	ck_assert_ok(repl_manifest_encode(&m, &buf, &len));
	ck_assert_ok(repl_manifest_decode(buf, len, &back));
	ck_assert_str_eq(back.name, "night-1");
	ck_assert_str_eq(back.image, "vm.raw");
	ck_assert_uint_eq(back.vsize, m.vsize);
	ck_assert_uint_eq(back.ndata, 5);
	ck_assert_mem_eq(back.pos, pos, sizeof(pos));
	ck_assert_mem_eq(back.ids, ids, sizeof(ids));
	ck_assert_uint_eq(back.created_ns, 123);
	repl_manifest_release(&back);
	/* zero runs are elided: 5 ids + small header, not 100 entries */
	ck_assert_uint_lt(len, 5 * REPL_ID_LEN + 200);
	for (size_t cut = 0; cut < len; cut += 7)
		ck_assert_int_lt(repl_manifest_decode(buf, cut, &back), 0);
	/* a position count that does not match the size */
	put_le64(buf + 8 + 4 + 4 + 4 + 4, 1ULL << 40);
	ck_assert_int_eq(repl_manifest_decode(buf, len, &back), -EUCLEAN);
	kl_free(buf);
	/* positions must increase */
	pos[3] = 1;
	ck_assert_int_lt(repl_manifest_encode(&m, &buf, &len), 0);
}
END_TEST

START_TEST(manifest_hostile_runs)
{
	/* a valid header claiming 2^40 runs of 2^60 positions must not allocate */
	struct repl_manifest m = { 0 }, back;
	uint8_t *buf;
	size_t len;

	m.name = "x";
	m.image = "y";
	m.format = "raw";
	m.vsize = 1ULL << 40;
	m.chunk_size = 65536;
	m.nchunks = (1ULL << 40) / 65536;
	ck_assert_ok(repl_manifest_encode(&m, &buf, &len));
	ck_assert_ok(repl_manifest_decode(buf, len, &back));
	ck_assert_uint_eq(back.ndata, 0);
	repl_manifest_release(&back);
	put_le64(buf + len - 9 - 8, 1ULL << 40); /* runs */
	ck_assert_int_eq(repl_manifest_decode(buf, len, &back), -EUCLEAN);
	kl_free(buf);
}
END_TEST

START_TEST(mark_codec)
{
	uint8_t packs[2][REPL_ID_LEN], (*back)[REPL_ID_LEN];
	uint8_t *buf;
	size_t len, n;

	memset(packs, 0x55, sizeof(packs));
	ck_assert_ok(repl_mark_encode((const uint8_t (*)[REPL_ID_LEN])packs, 2, &buf, &len));
	ck_assert_ok(repl_mark_decode(buf, len, &back, &n));
	ck_assert_uint_eq(n, 2);
	ck_assert_mem_eq(back, packs, sizeof(packs));
	kl_free(back);
	ck_assert_int_lt(repl_mark_decode(buf, len - 1, &back, &n), 0);
	kl_free(buf);
}
END_TEST

START_TEST(chunk_map)
{
	struct repl_chunk_map m = { 0 };
	struct repl_loc l = { 0 };

	for (uint32_t i = 0; i < 5000; i++) {
		ck_assert_ok(repl_hmac((const uint8_t *)"0123456789abcdef0123456789abcdef", &i,
				       sizeof(i), l.id));
		l.pack = i;
		l.len = 1;
		ck_assert_int_eq(repl_map_put(&m, &l), 1);
	}
	ck_assert_uint_eq(m.n, 5000);
	for (uint32_t i = 0; i < 5000; i += 77) {
		struct repl_loc *g;

		ck_assert_ok(repl_hmac((const uint8_t *)"0123456789abcdef0123456789abcdef", &i,
				       sizeof(i), l.id));
		g = repl_map_get(&m, l.id);
		ck_assert_ptr_nonnull(g);
		ck_assert_uint_eq(g->pack, i);
		l.pack = 99999;
		ck_assert_int_eq(repl_map_put(&m, &l), 0); /* first location stays */
		ck_assert_uint_eq(repl_map_get(&m, l.id)->pack, i);
	}
	memset(l.id, 0xee, REPL_ID_LEN);
	ck_assert_ptr_null(repl_map_get(&m, l.id));
	repl_map_release(&m);
}
END_TEST

START_TEST(xml_answers)
{
	const char *list =
		"<?xml "
		"version=\"1.0\"?><ListBucketResult><Name>b</Name><IsTruncated>true</IsTruncated>"
		"<Contents><Key>p/index/aa</Key><LastModified>2026-11-22T03:00:01.500Z</"
		"LastModified>"
		"<Size>77</Size></Contents><Contents><Key>p/a&amp;b</Key><Size>1</Size></Contents>"
		"<NextContinuationToken>tok/en=</NextContinuationToken></ListBucketResult>";
	struct repl_s3_listing l = { 0 };
	char code[64];
	uint64_t ns;

	ck_assert_ok(repl_s3_parse_listing(list, strlen(list), 2, &l));
	ck_assert_uint_eq(l.n, 2);
	ck_assert_str_eq(l.objs[0].key, "index/aa");
	ck_assert_uint_eq(l.objs[0].size, 77);
	ck_assert_uint_eq(l.objs[0].mtime_ns, 1795316401500000000ULL);
	ck_assert_str_eq(l.objs[1].key, "a&b");
	ck_assert(l.truncated);
	ck_assert_str_eq(l.next_token, "tok/en=");
	repl_s3_listing_release(&l);
	ck_assert_int_lt(repl_s3_parse_listing("<Error/>", 8, 0, &l), 0);
	repl_s3_listing_release(&l);
	ck_assert_int_lt(repl_s3_parse_listing("<ListBucketResult><Contents><Key>x", 34, 0, &l), 0);
	repl_s3_listing_release(&l);
	repl_s3_parse_error("<Error><Code>NoSuchBucket</Code></Error>", 40, code, sizeof(code));
	ck_assert_str_eq(code, "NoSuchBucket");
	repl_s3_parse_error("<Error><Code>NoSuch", 19, code, sizeof(code));
	ck_assert_str_eq(code, "");
	ck_assert_ok(repl_s3_parse_iso8601("1970-01-01T00:00:10Z", &ns));
	ck_assert_uint_eq(ns, 10000000000ULL);
	ck_assert_int_lt(repl_s3_parse_iso8601("yesterday", &ns), 0);
	ck_assert_int_lt(repl_s3_parse_iso8601("2026-13-01T00:00:00Z", &ns), 0);
}
END_TEST

static int add_job(void *arg)
{
	__atomic_fetch_add((int *)arg, 1, __ATOMIC_RELAXED);
	return 0;
}

static int fail_job(void *arg)
{
	return kl_err(-EIO, "job %d failed", *(int *)arg);
}

START_TEST(pool)
{
	struct repl_pool *p;
	int count = 0, id = 7;

	ck_assert_ok(repl_pool_new(3, 2, &p));
	for (int i = 0; i < 100; i++)
		ck_assert_ok(repl_pool_submit(p, add_job, &count));
	ck_assert_ok(repl_pool_wait(p));
	ck_assert_int_eq(count, 100);
	ck_assert_ok(repl_pool_submit(p, fail_job, &id));
	ck_assert_int_eq(repl_pool_wait(p), -EIO);
	ck_assert_str_eq(kl_errmsg(), "job 7 failed");
	ck_assert_int_eq(repl_pool_submit(p, add_job, &count), -EIO);
	repl_pool_free(p);
}
END_TEST

START_TEST(client_options)
{
	struct repl_s3_opts o = { 0 };
	struct repl_s3_url u;
	struct repl_s3 *c;

	ck_assert_ok(repl_s3_url_parse("s3://bucket/p", &u));
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	ck_assert_int_eq(repl_s3_new(&o, &u, &c), -EINVAL);
	ck_assert(strstr(kl_errmsg(), "AWS_ACCESS_KEY_ID") != NULL);
	o.access_key = "AK";
	o.secret_key = "SK";
	o.endpoint = "ftp://x";
	ck_assert_int_eq(repl_s3_new(&o, &u, &c), -EINVAL);
	o.endpoint = "http://127.0.0.1:1/path";
	ck_assert_int_eq(repl_s3_new(&o, &u, &c), -EINVAL);
	o.endpoint = "http://127.0.0.1:1/";
	ck_assert_ok(repl_s3_new(&o, &u, &c));
	ck_assert_str_eq(repl_s3_where(c), "s3://bucket/p");
	repl_s3_free(c);
	repl_s3_url_release(&u);
}
END_TEST

static Suite *s3_suite(void)
{
	Suite *s = suite_create("replicate-s3");
	TCase *tc = tcase_create("offline");

	tcase_add_test(tc, url_parsing);
	tcase_add_test(tc, hmac_and_hex);
	tcase_add_test(tc, seal_open);
	tcase_add_test(tc, config_roundtrip);
	tcase_add_test(tc, sealed_objects);
	tcase_add_test(tc, blobs);
	tcase_add_test(tc, index_codec);
	tcase_add_test(tc, manifest_codec);
	tcase_add_test(tc, manifest_hostile_runs);
	tcase_add_test(tc, mark_codec);
	tcase_add_test(tc, chunk_map);
	tcase_add_test(tc, xml_answers);
	tcase_add_test(tc, pool);
	tcase_add_test(tc, client_options);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(s3_suite());
}
