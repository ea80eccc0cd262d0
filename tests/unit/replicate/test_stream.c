/*
 * tests/unit/replicate/test_stream.c - streams (replicate/stream-*.c): the
 * header, token and record encodings and their bad-input checks; full and
 * incremental send/receive through memory; every record flipped, dropped,
 * swapped, replayed or spliced from another stream is refused and leaves
 * the target as it was; a stream cut at points all along resumes to the
 * same content; forged or mismatched resume tokens are refused by the
 * sender; the raw store keeps no plaintext and restores with the key; the
 * content map and the keel:// message decoders.
 */
#define _GNU_SOURCE
#include "tests/common/testutil.h"
#include "replicate/repl_int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CS 16384u
#define SIZE (4u << 20)
#define KEY "unit test passphrase"

/* ------------------------------------------------------------------ memory streams */
struct membuf {
	uint8_t *p;
	size_t len, cap, pos;
};

static int mem_write(void *o, const void *b, size_t n)
{
	struct membuf *m = o;

	if (m->len + n > m->cap) {
		size_t cap = (m->len + n) * 2;
		uint8_t *p = realloc(m->p, cap);

		if (!p)
			return -ENOMEM;
		m->p = p;
		m->cap = cap;
	}
	memcpy(m->p + m->len, b, n);
	m->len += n;
	return 0;
}

static ssize_t mem_read(void *o, void *b, size_t n)
{
	struct membuf *m = o;
	size_t k = KL_MIN(n, m->len - m->pos);

	memcpy(b, m->p + m->pos, k);
	m->pos += k;
	return (ssize_t)k;
}

static void mem_free(struct membuf *m)
{
	free(m->p);
	memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------------ images */

static void fill(uint8_t *b, size_t n, uint64_t seed)
{
	if (seed % 3 == 1)
		memset(b, (int)(seed & 0x7f) | 1, n);
	else
		tu_fill(b, n, seed, 0);
}

static struct blk_dev *img_open(const char *path, bool rw, bool key)
{
	struct blk_open_opts o = { .format = "keel", .flags = rw ? BLK_OPEN_RDWR : 0 };
	struct blk_dev *d = NULL;

	if (key) {
		o.key = (const uint8_t *)KEY;
		o.key_len = strlen(KEY);
	}
	ck_assert_msg(blk_open(path, &o, &d) == 0, "open %s: %s", path, kl_errmsg());
	return d;
}

/* src.keel: snapshots a, b, c, each changing some clusters (data, zeros, text) */
static const char *make_src(const char *name, bool encrypted)
{
	const char *p = tu_path(name);
	struct blk_create_opts co = { .size = SIZE };
	struct kl_opts *ko = NULL;
	struct blk_dev *d;
	uint8_t *buf = malloc(256 * 1024);

	ck_assert_ok(kl_opts_parse(encrypted ? "cluster_size=16K,encrypt=on" : "cluster_size=16K",
				   &ko));
	co.opts = ko;
	if (encrypted) {
		co.key = (const uint8_t *)KEY;
		co.key_len = strlen(KEY);
	}
	unlink(p);
	ck_assert_ok(blk_create(p, "keel", &co));
	kl_opts_free(ko);
	d = img_open(p, true, encrypted);
	for (int i = 0; i < 8; i++) {
		fill(buf, 256 * 1024, (uint64_t)i);
		ck_assert_ok(blk_pwrite(d, (uint64_t)i * 512 * 1024, buf, 256 * 1024));
	}
	ck_assert_ok(blk_snapshot_create(d, "a"));
	fill(buf, 64 * 1024, 100);
	ck_assert_ok(blk_pwrite(d, 48 * 1024, buf, 64 * 1024));
	ck_assert_ok(blk_pwrite_zeroes(d, 1024 * 1024, 128 * 1024, 0));
	fill(buf, 16 * 1024, 101);
	ck_assert_ok(blk_pwrite(d, SIZE - 16 * 1024, buf, 16 * 1024));
	ck_assert_ok(blk_snapshot_create(d, "b"));
	fill(buf, 200 * 1024, 200);
	ck_assert_ok(blk_pwrite(d, 2 * 1024 * 1024 + 4096, buf, 200 * 1024));
	ck_assert_ok(blk_snapshot_create(d, "c"));
	blk_close(d);
	free(buf);
	return p;
}

static void assert_same(const char *a, const char *b, bool key)
{
	struct blk_dev *x = img_open(a, false, key), *y = img_open(b, false, key);
	uint8_t *p = malloc(SIZE), *q = malloc(SIZE);

	ck_assert_uint_eq(blk_size(x), blk_size(y));
	ck_assert_ok(blk_pread(x, 0, p, SIZE));
	ck_assert_ok(blk_pread(y, 0, q, SIZE));
	ck_assert_msg(memcmp(p, q, SIZE) == 0, "%s and %s differ", a, b);
	free(p);
	free(q);
	blk_close(x);
	blk_close(y);
}

static void assert_clean(const char *path, bool key)
{
	struct blk_dev *d = img_open(path, false, key);
	struct blk_check_report r;
	bool active = true;
	size_t tl = 0;

	ck_assert_ok(blk_check(d, &r, BLK_CHECK_DATA));
	ck_assert_msg(r.corruptions == 0 && r.leaks == 0 && r.data_errors == 0,
		      "%s: check: %s", path, r.nmsgs ? r.msgs[0] : "");
	blk_check_report_release(&r);
	ck_assert_ok(blk_recv_status(d, &active, NULL, &tl));
	blk_close(d);
}

static size_t nsnaps(const char *path, bool key)
{
	struct blk_dev *d = img_open(path, false, key);
	struct blk_snapshot_info *v;
	size_t n;

	ck_assert_ok(blk_snapshot_list(d, &v, &n));
	blk_snapshot_list_free(v, n);
	blk_close(d);
	return n;
}

static int blk_snapshot_delete_named(const char *path, const char *name, bool key)
{
	struct blk_dev *d = img_open(path, true, key);
	int rc = blk_snapshot_delete(d, name);

	blk_close(d);
	return rc;
}

static int do_send(const char *img, const char *snap, const char *from, bool key, bool raw,
		   const char *resume, uint64_t fail_after, struct membuf *out)
{
	struct repl_send_opts o = { .image = img, .snapshot = snap, .from = from, .raw = raw,
				    .resume = resume, .fail_after = fail_after, .threads = 2,
				    .mark_bytes = 65536, .kdf_n = 1024, .kdf_r = 8, .kdf_p = 1 };
	struct repl_writer w = { .write = mem_write, .opaque = out };
	struct repl_send_stats st;

	if (key) {
		o.key = (const uint8_t *)KEY;
		o.key_len = strlen(KEY);
	}
	return repl_send(&o, &w, &st);
}

static int do_recv(const char *target, struct membuf *in, bool key, bool raw,
		   struct repl_recv_stats *st)
{
	struct repl_recv_opts o = { .target = target, .raw = raw };
	struct repl_reader r = { .read = mem_read, .opaque = in };
	struct repl_recv_stats tmp;

	if (key) {
		o.key = (const uint8_t *)KEY;
		o.key_len = strlen(KEY);
	}
	in->pos = 0;
	return repl_recv(&r, &o, st ? st : &tmp);
}

/* ------------------------------------------------------------------ encodings */

START_TEST(header_roundtrip_and_bad)
{
	struct repl_hdr h = { 0 }, g;
	uint8_t buf[REPL_HDR_FIXED + REPL_NAME_MAX];
	size_t n;

	h.flags = REPL_HF_INCREMENTAL | REPL_HF_KEYED;
	h.cluster_size = 65536;
	h.vsize = 1 << 30;
	h.kdf = REPL_KDF_SCRYPT;
	h.kdf_n = 1024;
	h.kdf_r = 8;
	h.kdf_p = 1;
	memset(h.stream_id, 1, 16);
	memset(h.snap_guid, 2, 16);
	memset(h.from_guid, 3, 16);
	strcpy(h.name, "nightly-7");
	n = repl_hdr_encode(&h, buf);
	ck_assert_ok(repl_hdr_decode(buf, n, &g));
	ck_assert_str_eq(g.name, "nightly-7");
	ck_assert(memcmp(g.from_guid, h.from_guid, 16) == 0 && g.vsize == h.vsize);
	/* each broken field is refused with a message, never used */
	ck_assert_int_eq(repl_hdr_decode(buf, n - 1, &g), -EUCLEAN);
	buf[8] = 2;
	ck_assert_int_eq(repl_hdr_decode(buf, n, &g), -ENOTSUP);
	buf[8] = 1;
	put_le32(buf + 12, 0x80000000u | h.flags);
	ck_assert_int_eq(repl_hdr_decode(buf, n, &g), -ENOTSUP);
	put_le32(buf + 12, REPL_HF_KEYED); /* incremental flag without: FROM guid disagrees */
	ck_assert_int_eq(repl_hdr_decode(buf, n, &g), -EUCLEAN);
	put_le32(buf + 12, h.flags);
	put_le32(buf + 112, 3000);
	ck_assert_int_eq(repl_hdr_decode(buf, n, &g), -EUCLEAN);
	put_le32(buf + 112, 65536);
	put_le64(buf + 120, 3ULL << 30); /* scrypt N too large */
	ck_assert_int_lt(repl_hdr_decode(buf, n, &g), 0);
	put_le64(buf + 120, 1024);
	put_le16(buf + 248, 300);
	ck_assert_int_eq(repl_hdr_decode(buf, n, &g), -EUCLEAN);
	put_le16(buf + 248, 9);
	put_le64(buf + 176, 5); /* resume fields in a fresh stream */
	ck_assert_int_eq(repl_hdr_decode(buf, n, &g), -EUCLEAN);
	put_le64(buf + 176, 0);
	ck_assert_ok(repl_hdr_decode(buf, n, &g));
}
END_TEST

START_TEST(token_text_and_bad)
{
	struct repl_token t = { 0 }, u;
	char text[REPL_TOKEN_TEXT];
	uint8_t raw[REPL_TOKEN_LEN];

	t.flags = REPL_HF_KEYED;
	t.cluster_size = 65536;
	t.vsize = 1 << 20;
	t.next_seq = 7;
	t.offset = 65536;
	memset(t.mac, 0xab, 32);
	memset(t.target_uuid, 9, 16);
	repl_token_to_text(&t, text);
	ck_assert_int_eq(strlen(text), REPL_TOKEN_TEXT - 1);
	ck_assert_ok(repl_token_from_text(text, &u));
	ck_assert(u.next_seq == 7 && u.offset == 65536 && !memcmp(u.mac, t.mac, 32) &&
		  !memcmp(u.target_uuid, t.target_uuid, 16));
	ck_assert_int_eq(repl_token_from_text("keel1-00", &u), -EINVAL);
	text[100] = 'x';
	ck_assert_int_eq(repl_token_from_text(text, &u), -EINVAL);
	repl_token_encode(&t, raw);
	put_le64(raw + 168, 1ULL << 40); /* offset past the disk */
	ck_assert_int_eq(repl_token_decode(raw, sizeof(raw), &u), -EUCLEAN);
	put_le64(raw + 168, 0);
	put_le64(raw + 160, 1); /* a resume before the first record */
	ck_assert_int_eq(repl_token_decode(raw, sizeof(raw), &u), -EUCLEAN);
}
END_TEST

START_TEST(record_tags)
{
	uint8_t key[32], nonce[12], ad[REPL_AD_LEN], buf[64], tag[16], orig[48];

	memset(key, 5, sizeof(key));
	memset(nonce, 6, sizeof(nonce));
	memset(ad, 7, sizeof(ad));
	for (int i = 0; i < 48; i++)
		orig[i] = (uint8_t)i;
	for (int enc = 0; enc < 2; enc++) {
		memcpy(buf, orig, 48);
		ck_assert_ok(repl_rec_protect(key, nonce, ad, enc, buf, 48, tag));
		ck_assert_int_eq(memcmp(buf, orig, 48) != 0, enc); /* sealed: not plaintext */
		ck_assert_ok(repl_rec_unprotect(key, nonce, ad, enc, buf, 48, tag));
		ck_assert(memcmp(buf, orig, 48) == 0);
		ck_assert_ok(repl_rec_protect(key, nonce, ad, enc, buf, 48, tag));
		buf[3] ^= 1;
		ck_assert_int_eq(repl_rec_unprotect(key, nonce, ad, enc, buf, 48, tag), -EBADMSG);
		buf[3] ^= 1;
		ad[20] ^= 1; /* another stream id or sequence number */
		ck_assert_int_eq(repl_rec_unprotect(key, nonce, ad, enc, buf, 48, tag), -EBADMSG);
		ad[20] ^= 1;
	}
}
END_TEST

/* ------------------------------------------------------------------ send / receive */

START_TEST(full_and_incremental)
{
	for (int keyed = 0; keyed < 2; keyed++) {
		const char *src = make_src(keyed ? "src-k.keel" : "src.keel", keyed);
		const char *dst = tu_path(keyed ? "dst-k.keel" : "dst.keel");
		char spec[512];
		struct membuf m = { 0 };
		struct repl_recv_stats st;

		unlink(dst);
		ck_assert_ok(do_send(src, "a", NULL, keyed, false, NULL, 0, &m));
		ck_assert_ok(do_recv(dst, &m, keyed, false, &st));
		ck_assert(st.finished && st.created && !st.incremental);
		mem_free(&m);
		snprintf(spec, sizeof(spec), "%s@a", src);
		assert_same(spec, dst, keyed);
		ck_assert_ok(do_send(src, "c", "a", keyed, false, NULL, 0, &m));
		ck_assert_ok(do_recv(dst, &m, keyed, false, &st));
		ck_assert(st.finished && st.incremental && st.zero_bytes > 0);
		mem_free(&m);
		snprintf(spec, sizeof(spec), "%s@c", src);
		assert_same(spec, dst, keyed);
		assert_clean(dst, keyed);
		ck_assert_uint_eq(nsnaps(dst, keyed), 2);
		/* the same increment again: already held */
		ck_assert_ok(do_send(src, "c", "a", keyed, false, NULL, 0, &m));
		ck_assert_int_eq(do_recv(dst, &m, keyed, false, NULL), -EEXIST);
		mem_free(&m);
		/* an increment from a base the target lacks */
		ck_assert_ok(blk_snapshot_delete_named(dst, "c", keyed));
		ck_assert_ok(do_send(src, "c", "b", keyed, false, NULL, 0, &m));
		ck_assert_int_eq(do_recv(dst, &m, keyed, false, NULL), -ESTALE);
		mem_free(&m);
		ck_assert_uint_eq(nsnaps(dst, keyed), 1);
		if (keyed) {
			/* no key, and a wrong key, are refused before anything is written */
			struct repl_recv_opts o = { .target = tu_path("nokey.keel") };
			struct repl_reader r = { .read = mem_read, .opaque = &m };
			struct repl_recv_stats s2;

			ck_assert_ok(do_send(src, "a", NULL, true, false, NULL, 0, &m));
			ck_assert_int_eq(repl_recv(&r, &o, &s2), -ENOKEY);
			m.pos = 0;
			o.key = (const uint8_t *)"wrong";
			o.key_len = 5;
			ck_assert_int_eq(repl_recv(&r, &o, &s2), -EBADMSG);
			ck_assert_int_ne(access(tu_path("nokey.keel"), F_OK), 0);
			mem_free(&m);
		}
	}
}
END_TEST

struct rec_pos {
	size_t off, len;
	unsigned type;
};

static size_t records(const struct membuf *m, struct rec_pos *v, size_t max)
{
	size_t n = 0, off = 0;

	while (off + REPL_REC_HDR <= m->len && n < max) {
		size_t bl = get_le32(m->p + off);

		v[n].off = off;
		v[n].len = REPL_REC_HDR + bl;
		v[n].type = get_le16(m->p + off + 4);
		n++;
		off += REPL_REC_HDR + bl;
	}
	return n;
}

/* The target after a failed receive: as before (2 snapshots, content of b, clean). */
static void assert_untouched(const char *dst, const char *src, bool key)
{
	char spec[512];

	ck_assert_uint_eq(nsnaps(dst, key), 1);
	snprintf(spec, sizeof(spec), "%s@a", src);
	assert_same(spec, dst, key);
	assert_clean(dst, key);
}

static void try_bad(const char *dst, const char *base, const char *src, struct membuf *bad,
		    bool key, const char *what, size_t i)
{
	int rc;

	ck_assert_ok(tu_copy(base, dst));
	rc = do_recv(dst, bad, key, false, NULL);
	ck_assert_msg(rc < 0, "%s of record %zu went unnoticed", what, i);
	assert_untouched(dst, src, false);
}

START_TEST(every_record_tampered)
{
	for (int keyed = 0; keyed < 2; keyed++) {
		const char *src = make_src("t-src.keel", false);
		const char *base = tu_path("t-base.keel"), *dst = tu_path("t-dst.keel");
		struct membuf m = { 0 }, other = { 0 }, bad = { 0 };
		struct rec_pos v[512], w[512];
		size_t n, no;

		unlink(base);
		ck_assert_ok(do_send(src, "a", NULL, keyed, false, NULL, 0, &m));
		ck_assert_ok(do_recv(base, &m, keyed, false, NULL));
		mem_free(&m);
		ck_assert_ok(do_send(src, "c", "a", keyed, false, NULL, 0, &m));
		ck_assert_ok(do_send(src, "c", "a", keyed, false, NULL, 0, &other));
		n = records(&m, v, 512);
		no = records(&other, w, 512);
		ck_assert_uint_ge(n, 8);
		for (size_t i = 0; i < n; i++) {
			/* one flipped byte: in the header, and in the body */
			for (int where = 0; where < 2; where++) {
				bad.len = 0;
				mem_write(&bad, m.p, m.len);
				bad.p[v[i].off + (where ? v[i].len - 20 : 9)] ^= 0x10;
				try_bad(dst, base, src, &bad, keyed, "a flipped byte", i);
			}
			if (i == 0)
				continue;
			/* dropped */
			bad.len = 0;
			mem_write(&bad, m.p, v[i].off);
			mem_write(&bad, m.p + v[i].off + v[i].len, m.len - v[i].off - v[i].len);
			try_bad(dst, base, src, &bad, keyed, "dropping", i);
			/* replayed */
			bad.len = 0;
			mem_write(&bad, m.p, v[i].off + v[i].len);
			mem_write(&bad, m.p + v[i].off, m.len - v[i].off);
			try_bad(dst, base, src, &bad, keyed, "replaying", i);
			/* swapped with the next */
			if (i + 1 < n) {
				bad.len = 0;
				mem_write(&bad, m.p, v[i].off);
				mem_write(&bad, m.p + v[i + 1].off, v[i + 1].len);
				mem_write(&bad, m.p + v[i].off, v[i].len);
				mem_write(&bad, m.p + v[i + 1].off + v[i + 1].len,
					  m.len - v[i + 1].off - v[i + 1].len);
				try_bad(dst, base, src, &bad, keyed, "swapping", i);
			}
			/* the same record of another stream of the same snapshot */
			if (i < no && w[i].len == v[i].len) {
				bad.len = 0;
				mem_write(&bad, m.p, v[i].off);
				mem_write(&bad, other.p + w[i].off, w[i].len);
				mem_write(&bad, m.p + v[i].off + v[i].len,
					  m.len - v[i].off - v[i].len);
				try_bad(dst, base, src, &bad, keyed, "splicing", i);
			}
			/* truncated inside the record */
			bad.len = 0;
			mem_write(&bad, m.p, v[i].off + v[i].len / 2);
			try_bad(dst, base, src, &bad, keyed, "truncating", i);
		}
		/* a whole second stream after the trailer */
		bad.len = 0;
		mem_write(&bad, m.p, m.len);
		mem_write(&bad, other.p, other.len);
		try_bad(dst, base, src, &bad, keyed, "concatenating", n);
		/* the untouched stream still applies */
		ck_assert_ok(tu_copy(base, dst));
		ck_assert_ok(do_recv(dst, &m, keyed, false, NULL));
		mem_free(&m);
		mem_free(&other);
		mem_free(&bad);
	}
}
END_TEST

START_TEST(resume_everywhere)
{
	const char *src = make_src("r-src.keel", false);
	const char *dst = tu_path("r-dst.keel");
	char spec[512];
	struct membuf full = { 0 };
	size_t total, step, resumed = 0;

	ck_assert_ok(do_send(src, "c", NULL, true, false, NULL, 0, &full));
	total = full.len;
	mem_free(&full);
	step = total / 23;
	snprintf(spec, sizeof(spec), "%s@c", src);
	for (size_t cut = 100; cut < total; cut += step) {
		struct membuf m = { 0 };
		struct repl_recv_stats st;
		int rc, rounds = 0;
		uint64_t at = cut;

		unlink(dst);
		rc = do_send(src, "c", NULL, true, false, NULL, at, &m);
		ck_assert_int_eq(rc, -EPIPE);
		rc = do_recv(dst, &m, true, false, &st);
		ck_assert_int_lt(rc, 0);
		mem_free(&m);
		while (st.token[0]) {
			char tok[sizeof(st.token)];

			/* the visible state is the empty image until the end */
			ck_assert_uint_eq(nsnaps(dst, false), 0);
			strcpy(tok, st.token);
			ck_assert_int_lt(++rounds, 50);
			at += step;
			rc = do_send(src, "c", NULL, true, false, tok, at, &m);
			memset(&st, 0, sizeof(st));
			rc = do_recv(dst, &m, true, false, &st);
			mem_free(&m);
			if (rc == 0)
				break;
		}
		if (!rounds) {
			/* cut before the first mark: nothing was kept, not even the file */
			ck_assert_int_ne(access(dst, F_OK), 0);
			continue;
		}
		if (rc < 0) {
			/* the last piece: no cut */
			ck_assert(st.token[0] == '\0');
			continue;
		}
		resumed++;
		assert_same(spec, dst, false);
		assert_clean(dst, false);
	}
	ck_assert_uint_ge(resumed, 8);
}
END_TEST

START_TEST(resume_token_refusals)
{
	const char *src = make_src("k-src.keel", false);
	const char *src2 = make_src("k-src2.keel", false);
	const char *dst = tu_path("k-dst.keel");
	struct membuf m = { 0 }, out = { 0 };
	struct repl_recv_stats st;
	char tok[sizeof(st.token)], bad[sizeof(st.token)];
	size_t pl = strlen(REPL_TOKEN_PREFIX), cut;

	unlink(dst);
	ck_assert_ok(do_send(src, "c", NULL, true, false, NULL, 0, &m));
	cut = m.len * 3 / 4;
	mem_free(&m);
	ck_assert_int_eq(do_send(src, "c", NULL, true, false, NULL, cut, &m), -EPIPE);
	ck_assert_int_lt(do_recv(dst, &m, true, false, &st), 0);
	ck_assert(st.token[0]);
	strcpy(tok, st.token);
	mem_free(&m);
	/* the MAC covers every field */
	strcpy(bad, tok);
	bad[pl + 2 * 170] = bad[pl + 2 * 170] == '0' ? '1' : '0'; /* the offset */
	ck_assert_int_eq(do_send(src, "c", NULL, true, false, bad, 0, &out), -EPERM);
	strcpy(bad, tok);
	bad[pl + 2 * 230] = bad[pl + 2 * 230] == '0' ? '1' : '0'; /* the MAC */
	ck_assert_int_eq(do_send(src, "c", NULL, true, false, bad, 0, &out), -EPERM);
	/* another snapshot, another base, another image, raw, no key: refused */
	ck_assert_int_eq(do_send(src, "b", NULL, true, false, tok, 0, &out), -EPERM);
	ck_assert_int_eq(do_send(src, "c", "a", true, false, tok, 0, &out), -EPERM);
	ck_assert_int_eq(do_send(src2, "c", NULL, true, false, tok, 0, &out), -EPERM);
	ck_assert_int_eq(do_send(src, "c", NULL, true, true, tok, 0, &out), -EPERM);
	ck_assert_int_eq(out.len, 0);
	/* the right one continues */
	ck_assert_ok(do_send(src, "c", NULL, true, false, tok, 0, &out));
	/* but only into the target it came from */
	ck_assert_ok(tu_copy(dst, tu_path("k-other.keel")));
	{
		struct membuf m2 = { 0 };
		const char *other = tu_path("k-other2.keel");

		unlink(other);
		ck_assert_int_eq(do_send(src, "c", NULL, true, false, NULL, cut, &m2), -EPIPE);
		ck_assert_int_lt(do_recv(other, &m2, true, false, NULL), 0);
		ck_assert_int_eq(do_recv(other, &out, true, false, NULL), -EPERM);
		mem_free(&m2);
	}
	ck_assert_ok(do_recv(dst, &out, true, false, NULL));
	mem_free(&out);
}
END_TEST

static bool file_has(const char *path, const uint8_t *pat, size_t n)
{
	FILE *f = fopen(path, "rb");
	uint8_t *b;
	long len;
	bool found = false;

	if (!f)
		return false;
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	b = malloc((size_t)len + 1);
	if (fread(b, 1, (size_t)len, f) == (size_t)len)
		found = memmem(b, (size_t)len, pat, n) != NULL;
	fclose(f);
	free(b);
	return found;
}

START_TEST(raw_store)
{
	const char *src = make_src("w-src.keel", false);
	const char *store = tu_path("w-store"), *out = tu_path("w-out.keel");
	char spec[512], path[600];
	struct membuf m = { 0 };
	struct repl_recv_stats st;
	struct repl_raw_entry *v;
	size_t n;
	uint8_t pat[64];
	int rc;

	/* raw needs a key */
	ck_assert_int_eq(do_send(src, "a", NULL, false, true, NULL, 0, &m), -ENOKEY);
	ck_assert_ok(do_send(src, "a", NULL, true, true, NULL, 0, &m));
	ck_assert_ok(do_recv(store, &m, false, true, &st));
	mem_free(&m);
	/* a cut increment resumes into the store, still without the key */
	ck_assert_ok(do_send(src, "c", "a", true, true, NULL, 0, &m));
	rc = (int)(m.len / 2);
	mem_free(&m);
	rc = do_send(src, "c", "a", true, true, NULL, (uint64_t)rc, &m);
	ck_assert_int_eq(rc, -EPIPE);
	ck_assert_int_lt(do_recv(store, &m, false, true, &st), 0);
	mem_free(&m);
	if (st.token[0]) {
		char tok[sizeof(st.token)];

		strcpy(tok, st.token);
		ck_assert_ok(do_send(src, "c", "a", true, true, tok, 0, &m));
	} else {
		ck_assert_ok(do_send(src, "c", "a", true, true, NULL, 0, &m));
	}
	ck_assert_ok(do_recv(store, &m, false, true, &st));
	mem_free(&m);
	ck_assert_ok(repl_raw_list(store, &v, &n));
	ck_assert_uint_eq(n, 2);
	/* no 64-byte run of the written patterns in the store */
	for (int seed = 0; seed < 8; seed++) {
		uint8_t buf[4096];

		fill(buf, sizeof(buf), (uint64_t)seed);
		memcpy(pat, buf + 1000, 64);
		for (size_t i = 0; i < n; i++) {
			snprintf(path, sizeof(path), "%s/%s", store, v[i].file);
			ck_assert_msg(!file_has(path, pat, 64), "plaintext in %s", path);
		}
	}
	kl_free(v);
	/* restore with the key: what the source had */
	unlink(out);
	ck_assert_ok(repl_raw_restore(store, "a", out, (const uint8_t *)KEY, strlen(KEY), NULL,
				      false, &st));
	snprintf(spec, sizeof(spec), "%s@a", src);
	assert_same(spec, out, false);
	ck_assert_ok(repl_raw_restore(store, NULL, out, (const uint8_t *)KEY, strlen(KEY), NULL,
				      false, &st));
	snprintf(spec, sizeof(spec), "%s@c", src);
	assert_same(spec, out, false);
	assert_clean(out, false);
	/* a wrong key restores nothing */
	unlink(out);
	ck_assert_int_eq(repl_raw_restore(store, NULL, out, (const uint8_t *)"nope", 4, NULL,
					  false, &st), -EBADMSG);
	ck_assert_int_ne(access(out, F_OK), 0);
}
END_TEST

/* ------------------------------------------------------------------ crash loops */

/*
 * STYLE.md §6 for receives: every I/O point of a receive fails once, or the
 * power is cut there (with and without torn writes), and every allocation
 * fails once. Afterwards the target shows the old state (nothing, or no
 * snapshot) or the new one (snapshot c with c's content), opens without
 * repair, checks clean, and a retry (resuming when a token was kept)
 * completes it.
 */
static void crash_outcome(const char *src, const char *target, bool raw, struct membuf *m,
			  const char *what, uint64_t n)
{
	char spec[512], tok[REPL_TOKEN_TEXT + 8];
	struct repl_recv_stats st;
	bool active = false;
	size_t ns = 0;
	int rc;

	snprintf(spec, sizeof(spec), "%s@c", src);
	tok[0] = '\0';
	if (raw) {
		struct repl_raw_entry *v;

		if (!repl_raw_is_store(target))
			return;
		rc = repl_raw_list(target, &v, &ns);
		ck_assert_msg(rc == 0 && ns <= 1, "%s at %llu: raw store index: %s", what,
			      (unsigned long long)n, kl_errmsg());
		kl_free(v);
	} else {
		if (access(target, F_OK) != 0)
			return;
		assert_clean(target, false);
		ns = nsnaps(target, false);
		ck_assert_msg(ns <= 1, "%s at %llu: %zu snapshots", what, (unsigned long long)n, ns);
	}
	if (ns == 1) {
		const char *out = tu_path("crash-out.keel");

		if (raw) {
			unlink(out);
			ck_assert_ok(repl_raw_restore(target, NULL, out, (const uint8_t *)KEY,
						      strlen(KEY), NULL, false, &st));
			assert_same(spec, out, false);
		} else {
			assert_same(spec, target, false);
		}
		return;
	}
	/* the old state: finish the receive, resuming when the target kept a token */
	ck_assert_ok(repl_recv_status(target, NULL, 0, &active, tok, sizeof(tok)));
	if (active && tok[0]) {
		struct membuf r = { 0 };

		ck_assert_ok(do_send(src, "c", NULL, true, raw, tok, 0, &r));
		rc = do_recv(target, &r, !raw, raw, &st);
		mem_free(&r);
	} else {
		if (active)
			ck_assert_ok(repl_recv_abort(target, NULL, 0));
		rc = do_recv(target, m, !raw, raw, &st);
	}
	ck_assert_msg(rc == 0, "%s at %llu: the retry failed: %s", what, (unsigned long long)n,
		      kl_errmsg());
	if (raw) {
		const char *out = tu_path("crash-out.keel");

		unlink(out);
		ck_assert_ok(repl_raw_restore(target, NULL, out, (const uint8_t *)KEY, strlen(KEY),
					      NULL, false, &st));
		assert_same(spec, out, false);
	} else {
		assert_same(spec, target, false);
	}
}

static void crash_reset_target(const char *target, bool raw)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", target);
	ck_assert_int_eq(tu_sh("%s", cmd), 0);
	(void)raw;
}

START_TEST(crash_receive)
{
	static const enum kl_fault_mode modes[] = { KL_FAULT_ERROR, KL_FAULT_CRASH,
						    KL_FAULT_CRASH_TORN };
	static const char *names[] = { "error", "crash", "torn" };
	char src[512];

	snprintf(src, sizeof(src), "%s", make_src("c-src.keel", false));
	for (int raw = 0; raw < 2; raw++) {
		char target[512]; /* tu_path's buffers rotate: keep our own copy */
		struct kl_fault_rule count = { .mode = KL_FAULT_NONE };
		struct membuf m = { 0 };
		uint64_t points, mallocs;

		snprintf(target, sizeof(target), "%s", tu_path(raw ? "c-store" : "c-dst.keel"));
		/* a full stream with resume marks along the way */
		ck_assert_ok(do_send(src, "c", NULL, true, raw, NULL, 0, &m));
		crash_reset_target(target, raw);
		kl_fault_reset();
		kl_fault_arm(&count);
		ck_assert_ok(do_recv(target, &m, !raw, raw, NULL));
		points = kl_fault_points();
		mallocs = kl_fault_mallocs();
		kl_fault_reset();
		printf("crash loop receive (%s): %llu I/O points x 3 modes, %llu allocations\n",
		       raw ? "raw store" : "image", (unsigned long long)points,
		       (unsigned long long)mallocs);
		ck_assert_uint_gt(points, 5);
		for (size_t k = 0; k < KL_ARRAY_SIZE(modes); k++) {
			for (uint64_t n = 1; n <= points; n++) {
				struct kl_fault_rule r = { .mode = modes[k], .at = n,
							   .seed = n * 3 + k };
				const char *only = getenv("KEEL_CRASH_AT"); /* debugging one point */
				int rc;

				if (only && strtoull(only, NULL, 10) != n)
					continue;
				crash_reset_target(target, raw);
				kl_fault_arm(&r);
				rc = do_recv(target, &m, !raw, raw, NULL);
				if (kl_fault_fired())
					ck_assert_msg(rc < 0, "%s at %llu fired, the receive succeeded",
						      names[k], (unsigned long long)n);
				kl_fault_settle();
				kl_fault_reset();
				crash_outcome(src, target, raw, &m, names[k], n);
			}
		}
		for (uint64_t n = 1; n <= mallocs; n += mallocs > 300 ? mallocs / 300 : 1) {
			struct kl_fault_rule r = { .mode = KL_FAULT_NONE, .malloc_at = n };
			const char *only = getenv("KEEL_MALLOC_AT");
			int rc;

			if (only && strtoull(only, NULL, 10) != n)
				continue;
			crash_reset_target(target, raw);
			kl_fault_arm(&r);
			rc = do_recv(target, &m, !raw, raw, NULL);
			if (kl_fault_fired())
				ck_assert_msg(rc < 0, "%s: malloc %llu failed, the receive succeeded",
					      raw ? "raw" : "image", (unsigned long long)n);
			kl_fault_reset();
			crash_outcome(src, target, raw, &m, "malloc", n);
		}
		mem_free(&m);
	}
}
END_TEST

/* ------------------------------------------------------------------ content map */

START_TEST(have_map)
{
	const char *src = make_src("h-src.keel", false);
	const char *mp = tu_path("h.have");
	struct repl_have_map *m;
	struct blk_dev *d = img_open(src, true, false);
	uint8_t h[32], buf[CS], got[CS], key[32];

	unlink(mp);
	ck_assert_ok(repl_have_open(mp, src, d, 0, &m));
	memcpy(key, repl_have_key(m), 32);
	ck_assert_ok(blk_pread(d, 0, buf, CS));
	ck_assert_ok(repl_have_hash(key, buf, CS, h));
	ck_assert(!repl_have_lookup(m, h));
	ck_assert_ok(repl_have_note(m, h, 0, CS));
	ck_assert(repl_have_lookup(m, h));
	ck_assert_ok(repl_have_read(m, d, h, got, CS));
	ck_assert(memcmp(got, buf, CS) == 0);
	repl_have_forget_pending(m);
	ck_assert(!repl_have_lookup(m, h));
	ck_assert_ok(repl_have_note(m, h, 0, CS));
	{
		struct blk_snapshot_info *v;
		size_t n;

		ck_assert_ok(blk_snapshot_list(d, &v, &n));
		ck_assert_ok(repl_have_commit(m, v[2].guid, v[2].name));
		blk_snapshot_list_free(v, n);
	}
	repl_have_close(m);
	/* reloaded: same key, held from snapshot c */
	ck_assert_ok(repl_have_open(mp, src, d, 0, &m));
	ck_assert(memcmp(repl_have_key(m), key, 32) == 0);
	ck_assert(repl_have_lookup(m, h));
	memset(got, 0, sizeof(got));
	ck_assert_ok(repl_have_read(m, d, h, got, CS));
	ck_assert(memcmp(got, buf, CS) == 0);
	repl_have_close(m);
	/* snapshot c deleted: its content is no longer offered */
	ck_assert_ok(blk_snapshot_delete(d, "c"));
	ck_assert_ok(repl_have_open(mp, src, d, 0, &m));
	ck_assert(!repl_have_lookup(m, h));
	repl_have_close(m);
	blk_close(d);
}
END_TEST

/* ------------------------------------------------------------------ protocol messages */

START_TEST(proto_messages)
{
	struct repl_hello h = { .version = REPL_NET_VERSION, .op = REPL_OP_FETCH }, g;
	struct repl_welcome w = { .version = REPL_NET_VERSION, .kind = REPL_TARGET_IMAGE }, x;
	struct repl_snapref s[2] = { { .generation = 5, .name = "one" },
				     { .generation = 9, .name = "two" } };
	uint8_t *p, eb[64], hq[8 + 32], hr[9];
	size_t len, n;
	const uint8_t *hashes;
	uint32_t id;
	char msg[64];
	int code;
	bool held[8];

	strcpy(h.name, "vm-1");
	strcpy(h.snapshot, "two");
	h.have = s;
	h.nhave = 2;
	ck_assert_ok(repl_msg_hello_encode(&h, &p, &len));
	ck_assert_ok(repl_msg_hello_decode(p, len, &g));
	ck_assert_str_eq(g.name, "vm-1");
	ck_assert_uint_eq(g.nhave, 2);
	ck_assert_uint_eq(g.have[1].generation, 9);
	repl_msg_hello_release(&g);
	put_le16(p + 16, 200); /* name length beyond the message */
	ck_assert_int_eq(repl_msg_hello_decode(p, len, &g), -EPROTO);
	kl_free(p);
	w.snaps = s;
	w.nsnaps = 2;
	w.token_len = REPL_TOKEN_LEN;
	ck_assert_ok(repl_msg_welcome_encode(&w, &p, &len));
	ck_assert_ok(repl_msg_welcome_decode(p, len, &x));
	ck_assert_uint_eq(x.nsnaps, 2);
	ck_assert_str_eq(x.snaps[1].name, "two");
	repl_msg_welcome_release(&x);
	ck_assert_int_eq(repl_msg_welcome_decode(p, len - 1, &x), -EPROTO);
	put_le32(p + 72, 1000000); /* absurd snapshot count */
	ck_assert_int_eq(repl_msg_welcome_decode(p, len, &x), -EPROTO);
	kl_free(p);
	n = repl_msg_error_encode(-EACCES, "no\x01way", eb, sizeof(eb));
	ck_assert_ok(repl_msg_error_decode(eb, n, &code, msg, sizeof(msg)));
	ck_assert_int_eq(code, -EACCES);
	ck_assert_str_eq(msg, "no?way");
	put_le32(hq, 7);
	put_le32(hq + 4, 1);
	ck_assert_ok(repl_msg_haveq_decode(hq, sizeof(hq), &id, &hashes, &n));
	ck_assert_int_eq(repl_msg_haveq_decode(hq, sizeof(hq) - 1, &id, &hashes, &n), -EPROTO);
	put_le32(hr, 7);
	put_le32(hr + 4, 1);
	hr[8] = 1;
	ck_assert_ok(repl_msg_haver_decode(hr, sizeof(hr), 7, 1, held));
	ck_assert(held[0]);
	ck_assert_int_eq(repl_msg_haver_decode(hr, sizeof(hr), 8, 1, held), -EPROTO);
	ck_assert_ok(repl_target_name_check("vm-1.keel"));
	ck_assert_int_eq(repl_target_name_check("../x"), -EINVAL);
	ck_assert_int_eq(repl_target_name_check("/etc/passwd"), -EINVAL);
	ck_assert_int_eq(repl_target_name_check(".keel"), -EINVAL);
	ck_assert_int_eq(repl_target_name_check(""), -EINVAL);
	{
		struct repl_url u;

		ck_assert_ok(repl_url_parse("keel://[::1]:7000/vm@s1", &u));
		ck_assert_str_eq(u.host, "::1");
		ck_assert_str_eq(u.port, "7000");
		ck_assert_str_eq(u.snapshot, "s1");
		repl_url_release(&u);
		ck_assert_ok(repl_url_parse("keel://backup/vm", &u));
		ck_assert_str_eq(u.port, "7457");
		repl_url_release(&u);
		ck_assert_int_lt(repl_url_parse("keel://host:12/../x", &u), 0);
		ck_assert_int_lt(repl_url_parse("keel://host:x1/vm", &u), 0);
	}
}
END_TEST

static Suite *stream_suite(void)
{
	Suite *s = suite_create("stream");
	const struct {
		const char *name;
		const TTest *test;
	} tests[] = {
		{ "encodings", header_roundtrip_and_bad },
		{ "token", token_text_and_bad },
		{ "tags", record_tags },
		{ "send_recv", full_and_incremental },
		{ "tampered", every_record_tampered },
		{ "resume", resume_everywhere },
		{ "token_refusals", resume_token_refusals },
		{ "raw_store", raw_store },
		{ "crash", crash_receive },
		{ "have_map", have_map },
		{ "proto", proto_messages },
	};

	for (size_t i = 0; i < KL_ARRAY_SIZE(tests); i++) {
		TCase *t = tcase_create(tests[i].name);

		tcase_set_timeout(t, 1200);
		tcase_add_test(t, tests[i].test);
		suite_add_tcase(s, t);
	}
	return s;
}

int main(void)
{
	return tu_run_suite(stream_suite());
}
