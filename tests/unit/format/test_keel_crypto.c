/*
 * tests/unit/format/test_keel_crypto.c - dedup, encryption, key slots and
 * scrub of .keel images. (The crash loops for these live in test_keel.c.)
 */
#define _GNU_SOURCE
#include "tests/common/testutil.h"
#include "snapshot/snapshot.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PASS "correct horse battery staple"

static void create(const char *path, uint64_t size, const char *opts, const char *key)
{
	struct blk_create_opts co = { .size = size };
	struct kl_opts *ko = NULL;

	ck_assert_ok(kl_opts_parse(opts, &ko));
	co.opts = ko;
	co.key = (const uint8_t *)key;
	co.key_len = key ? strlen(key) : 0;
	unlink(path);
	ck_assert_ok(blk_create(path, "keel", &co));
	kl_opts_free(ko);
}

static int try_open(const char *path, bool rw, const char *key, struct blk_dev **d)
{
	struct blk_open_opts o = { .format = "keel", .flags = rw ? BLK_OPEN_RDWR : 0 };

	o.key = (const uint8_t *)key;
	o.key_len = key ? strlen(key) : 0;
	return blk_open(path, &o, d);
}

static struct blk_dev *open_k(const char *path, bool rw, const char *key)
{
	struct blk_dev *d = NULL;

	ck_assert_ok(try_open(path, rw, key, &d));
	return d;
}

static uint64_t file_size(const char *path)
{
	FILE *f = fopen(path, "rb");
	long n;

	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fclose(f);
	return (uint64_t)n;
}

static void clean(struct blk_dev *d)
{
	struct blk_check_report r;

	ck_assert_ok(blk_check(d, &r, BLK_CHECK_DATA));
	ck_assert_msg(r.corruptions + r.leaks + r.data_errors == 0, "check: %s",
		      r.nmsgs ? r.msgs[0] : "?");
	blk_check_report_release(&r);
}

/* ------------------------------------------------------------------ dedup */

START_TEST(identical_clusters_stored_once)
{
	const char *p = tu_path("d.keel");
	uint8_t buf[65536];
	struct blk_stats st;
	struct blk_dev *d;
	uint64_t before, after;

	create(p, 64 << 20, "dedup=on,compression=none", NULL);
	d = open_k(p, true, NULL);
	tu_fill(buf, sizeof(buf), 1, 0);
	for (int i = 0; i < 100; i++)
		ck_assert_ok(blk_pwrite(d, (uint64_t)i * 65536 * 3, buf, sizeof(buf)));
	ck_assert_ok(blk_get_stats(d, &st));
	ck_assert_uint_eq(st.clusters_written, 1);
	ck_assert_uint_eq(st.clusters_deduped, 99);
	blk_close(d);
	/* one 64 KiB blob for 100 clusters */
	ck_assert_uint_lt(file_size(p), 6 * 65536);
	d = open_k(p, false, NULL);
	clean(d);
	blk_close(d);
	/* survive reopen: the index is persistent */
	d = open_k(p, true, NULL);
	ck_assert_ok(blk_pwrite(d, 50 << 20, buf, sizeof(buf)));
	ck_assert_ok(blk_get_stats(d, &st));
	ck_assert_uint_eq(st.clusters_deduped, 1);
	ck_assert_uint_eq(st.clusters_written, 0);
	/* deleting references frees the blob only with the last one */
	ck_assert_ok(blk_snapshot_create(d, "s"));
	for (int i = 0; i < 100; i++)
		ck_assert_ok(blk_discard(d, (uint64_t)i * 65536 * 3, 65536));
	ck_assert_ok(blk_discard(d, 50 << 20, 65536));
	ck_assert_ok(blk_flush(d));
	before = file_size(p);
	clean(d);
	ck_assert_ok(blk_snapshot_delete(d, "s"));
	clean(d);
	/* the blob is free now: a new distinct cluster reuses its space */
	tu_fill(buf, sizeof(buf), 2, 0);
	ck_assert_ok(blk_pwrite(d, 0, buf, sizeof(buf)));
	ck_assert_ok(blk_flush(d));
	after = file_size(p);
	ck_assert_uint_le(after, before + 4 * 4096);
	clean(d);
	blk_close(d);
}
END_TEST

START_TEST(offline_dedup)
{
	const char *p = tu_path("o.keel");
	uint8_t buf[65536];
	struct blk_stats st;
	struct blk_dev *d;

	create(p, 16 << 20, "compression=none", NULL);
	d = open_k(p, true, NULL);
	tu_fill(buf, sizeof(buf), 5, 0);
	for (int i = 0; i < 20; i++)
		ck_assert_ok(blk_pwrite(d, (uint64_t)i * 65536, buf, sizeof(buf)));
	ck_assert_ok(blk_get_stats(d, &st));
	ck_assert_uint_eq(st.clusters_written, 20);
	ck_assert_ok(blk_dedup(d, false, &st));
	ck_assert_uint_eq(st.clusters_deduped, 19);
	clean(d);
	blk_close(d);
	d = open_k(p, false, NULL);
	for (int i = 0; i < 20; i++) {
		uint8_t got[65536];

		ck_assert_ok(blk_pread(d, (uint64_t)i * 65536, got, sizeof(got)));
		ck_assert(memcmp(got, buf, sizeof(buf)) == 0);
	}
	blk_close(d);
}
END_TEST

/* ------------------------------------------------------------------ encryption */

/* a 64-byte window of known plaintext must appear nowhere in the file */
static bool file_contains(const char *path, const uint8_t *needle, size_t n)
{
	FILE *f = fopen(path, "rb");
	uint64_t size = file_size(path);
	uint8_t *all = kl_malloc(size);
	bool found;

	ck_assert_uint_eq(fread(all, 1, size, f), size);
	fclose(f);
	found = memmem(all, size, needle, n) != NULL;
	kl_free(all);
	return found;
}

START_TEST(no_plaintext_in_file)
{
	const char *p = tu_path("e.keel");
	uint8_t buf[65536], win[64];
	struct blk_dev *d;

	/* compressible text (compressed then encrypted) and random data */
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)("The quick brown fox jumps over the lazy dog 0123456789"[i % 54]);
	create(p, 8 << 20, "encrypt=on,dedup=on", PASS);
	d = open_k(p, true, PASS);
	ck_assert_ok(blk_pwrite(d, 0, buf, sizeof(buf)));
	ck_assert_ok(blk_snapshot_create(d, "plain"));
	tu_fill(buf + 32768, 32768, 9, 0);
	ck_assert_ok(blk_pwrite(d, 1 << 20, buf, sizeof(buf)));
	blk_close(d);
	memcpy(win, buf, 64);
	ck_assert(!file_contains(p, win, 64));
	memcpy(win, buf + 40000, 64);
	ck_assert(!file_contains(p, win, 64));
	/* sanity: the same data unencrypted is found */
	create(tu_path("u.keel"), 8 << 20, "compression=none", NULL);
	d = open_k(tu_path("u.keel"), true, NULL);
	ck_assert_ok(blk_pwrite(d, 0, buf, sizeof(buf)));
	blk_close(d);
	ck_assert(file_contains(tu_path("u.keel"), win, 64));
	/* and the encrypted image reads back */
	d = open_k(p, false, PASS);
	{
		uint8_t got[65536];

		ck_assert_ok(blk_pread(d, 1 << 20, got, sizeof(got)));
		ck_assert(memcmp(got, buf, sizeof(got)) == 0);
	}
	clean(d);
	blk_close(d);
}
END_TEST

START_TEST(wrong_or_missing_key)
{
	const char *p = tu_path("w.keel");
	struct blk_dev *d = NULL;

	create(p, 1 << 20, "encrypt=on", PASS);
	ck_assert_int_eq(try_open(p, false, "not it", &d), -EKEYREJECTED);
	ck_assert(strstr(kl_errmsg(), "wrong passphrase") != NULL);
	ck_assert_int_eq(try_open(p, false, NULL, &d), -ENOKEY);
	ck_assert_ptr_null(d);
	/* creating an encrypted image needs a key */
	{
		struct blk_create_opts co = { .size = 1 << 20 };
		struct kl_opts *ko = NULL;

		ck_assert_ok(kl_opts_parse("encrypt=on", &ko));
		co.opts = ko;
		ck_assert_int_eq(blk_create(tu_path("w2.keel"), "keel", &co), -ENOKEY);
		kl_opts_free(ko);
	}
}
END_TEST

/* Host offsets of the data clusters at virtual offsets a and b. */
static void hosts(const char *p, uint64_t a, uint64_t b, uint64_t *ha, uint64_t *hb)
{
	struct blk_dev *d = open_k(p, false, PASS);
	struct blk_extent e;

	ck_assert_ok(blk_block_status(d, a, 65536, &e));
	*ha = e.host_off;
	ck_assert_ok(blk_block_status(d, b, 65536, &e));
	*hb = e.host_off;
	blk_close(d);
}

static void rd(const char *p, uint64_t off, size_t n, uint8_t *out)
{
	FILE *f = fopen(p, "rb");

	fseek(f, (long)off, SEEK_SET);
	ck_assert_uint_eq(fread(out, 1, n, f), n);
	fclose(f);
}

static void wr(const char *p, uint64_t off, size_t n, const uint8_t *in)
{
	FILE *f = fopen(p, "r+b");

	fseek(f, (long)off, SEEK_SET);
	ck_assert_uint_eq(fwrite(in, 1, n, f), n);
	fclose(f);
}

static int read_at(const char *p, uint64_t off)
{
	struct blk_dev *d = open_k(p, false, PASS);
	uint8_t got[65536];
	int rc = blk_pread(d, off, got, sizeof(got));

	blk_close(d);
	return rc;
}

START_TEST(swap_replay_flip_detected)
{
	const char *p = tu_path("t.keel");
	const char *orig = tu_path("t.orig");
	uint8_t a[65536], b[65536], blob[65536 + 28], blob2[65536 + 28], old[65536 + 28];
	uint64_t ha, hb;
	struct blk_dev *d;
	size_t n = sizeof(blob);

	/* incompressible clusters: equal stored sizes, so blobs can be swapped */
	create(p, 8 << 20, "encrypt=on,compression=none", PASS);
	d = open_k(p, true, PASS);
	tu_fill(a, sizeof(a), 11, 0);
	tu_fill(b, sizeof(b), 12, 0);
	ck_assert_ok(blk_pwrite(d, 0, a, sizeof(a)));
	ck_assert_ok(blk_pwrite(d, 1 << 20, b, sizeof(b)));
	blk_close(d);
	hosts(p, 0, 1 << 20, &ha, &hb);
	ck_assert_ok(tu_copy(p, orig));

	/* swap the two stored clusters */
	rd(p, ha, n, blob);
	rd(p, hb, n, blob2);
	wr(p, ha, n, blob2);
	wr(p, hb, n, blob);
	ck_assert_int_eq(read_at(p, 0), -EBADMSG);
	ck_assert_msg(strstr(kl_errmsg(), "virtual offset 0") != NULL, "%s", kl_errmsg());
	ck_assert_int_eq(read_at(p, 1 << 20), -EBADMSG);
	ck_assert(strstr(kl_errmsg(), "virtual offset 1048576") != NULL);

	/* replay: an older version of cluster 0 put back where the new one lives */
	ck_assert_ok(tu_copy(orig, p));
	rd(p, ha, n, old);
	d = open_k(p, true, PASS);
	ck_assert_ok(blk_pwrite(d, 0, b, sizeof(b)));
	blk_close(d);
	hosts(p, 0, 1 << 20, &ha, &hb);
	wr(p, ha, n, old);
	ck_assert_int_eq(read_at(p, 0), -EBADMSG);
	ck_assert(strstr(kl_errmsg(), "virtual offset 0") != NULL);

	/* one flipped bit anywhere in a stored cluster */
	ck_assert_ok(tu_copy(orig, p));
	hosts(p, 0, 1 << 20, &ha, &hb);
	for (size_t i = 0; i < n; i += 4099) {
		uint8_t c;

		rd(p, ha + i, 1, &c);
		c ^= 0x10;
		wr(p, ha + i, 1, &c);
		ck_assert_int_eq(read_at(p, 0), -EBADMSG);
		c ^= 0x10;
		wr(p, ha + i, 1, &c);
	}
	ck_assert_ok(read_at(p, 0));
}
END_TEST

START_TEST(tampered_metadata_detected)
{
	const char *p = tu_path("m.keel");
	uint8_t a[65536], h[4096];
	struct blk_dev *d = NULL;

	create(p, 8 << 20, "encrypt=on", PASS);
	d = open_k(p, true, PASS);
	tu_fill(a, sizeof(a), 13, 0);
	ck_assert_ok(blk_pwrite(d, 0, a, sizeof(a)));
	blk_close(d);
	/* rewriting a header field and fixing its CRC is not enough without the key */
	for (int slot = 0; slot < 2; slot++) {
		rd(p, (uint64_t)slot * 4096, 4096, h);
		if (get_le64(h + 40) < 2)
			continue;
		put_le64(h + 72, get_le64(h + 72) * 2); /* virtual size */
		h[80] = 1;
		put_le32(h + 4092, kl_crc32c(0, h, 4092));
		wr(p, (uint64_t)slot * 4096, 4096, h);
	}
	ck_assert_int_lt(try_open(p, false, PASS, &d), 0);
}
END_TEST

START_TEST(key_slots)
{
	const char *p = tu_path("k.keel");
	uint8_t a[65536], got[65536];
	struct blk_key_slot ks[8];
	struct blk_dev *d = NULL;
	size_t n;
	int slot;

	create(p, 8 << 20, "encrypt=on", PASS);
	d = open_k(p, true, PASS);
	tu_fill(a, sizeof(a), 14, 0);
	ck_assert_ok(blk_pwrite(d, 0, a, sizeof(a)));
	ck_assert_ok(blk_key_op(d, BLK_KEY_ADD, (const uint8_t *)"second", 6, -1, &slot));
	ck_assert_int_eq(slot, 1);
	ck_assert_ok(blk_key_list(d, ks, 8, &n));
	ck_assert_uint_eq(n, 2);
	blk_close(d);

	/* both open it and read the same data */
	d = open_k(p, false, "second");
	ck_assert_ok(blk_pread(d, 0, got, sizeof(got)));
	ck_assert(memcmp(got, a, sizeof(a)) == 0);
	blk_close(d);

	/* change the first passphrase: the old one stops working */
	d = open_k(p, true, PASS);
	ck_assert_ok(blk_key_op(d, BLK_KEY_CHANGE, (const uint8_t *)"third", 5, -1, &slot));
	ck_assert_int_eq(slot, 0);
	blk_close(d);
	ck_assert_int_eq(try_open(p, false, PASS, &d), -EKEYREJECTED);
	d = open_k(p, false, "third");
	ck_assert_ok(blk_pread(d, 0, got, sizeof(got)));
	ck_assert(memcmp(got, a, sizeof(a)) == 0);
	blk_close(d);

	/* remove the slot "second" opens; it stops working; the last slot stays */
	d = open_k(p, true, "third");
	ck_assert_ok(blk_key_op(d, BLK_KEY_REMOVE, (const uint8_t *)"second", 6, -1, &slot));
	ck_assert_int_eq(slot, 1);
	ck_assert_int_eq(blk_key_op(d, BLK_KEY_REMOVE, NULL, 0, 0, &slot), -EPERM);
	clean(d);
	blk_close(d);
	ck_assert_int_eq(try_open(p, false, "second", &d), -EKEYREJECTED);
	d = open_k(p, false, "third");
	ck_assert_ok(blk_pread(d, 0, got, sizeof(got)));
	ck_assert(memcmp(got, a, sizeof(a)) == 0);
	clean(d);
	blk_close(d);
}
END_TEST

/* ------------------------------------------------------------------ scrub */

struct dmg {
	int n;
	bool current, snap;
	uint64_t off;
};

static int on_dmg(void *o, const struct blk_scrub_damage *dm)
{
	struct dmg *x = o;

	x->n++;
	if (dm->snapshot)
		x->snap = !strcmp(dm->snapshot, "monday");
	else
		x->current = true;
	x->off = dm->offset;
	return 0;
}

START_TEST(scrub_names_offsets_and_snapshots)
{
	const char *p = tu_path("s.keel");
	struct blk_scrub_report r;
	struct dmg x = { 0 };
	uint8_t a[65536], c;
	struct blk_extent e;
	struct blk_dev *d;

	create(p, 8 << 20, "encrypt=on,compression=none", PASS);
	d = open_k(p, true, PASS);
	tu_fill(a, sizeof(a), 15, 0);
	ck_assert_ok(blk_pwrite(d, 3 << 20, a, sizeof(a)));
	ck_assert_ok(blk_pwrite(d, 5 << 20, a + 1, sizeof(a) - 1));
	ck_assert_ok(blk_snapshot_create(d, "monday"));
	ck_assert_ok(blk_block_status(d, 3 << 20, 65536, &e));
	ck_assert_ok(blk_scrub(d, on_dmg, &x, false, &r));
	ck_assert_uint_eq(r.damaged, 0);
	ck_assert_uint_eq(r.blobs, 2);
	blk_close(d);
	rd(p, e.host_off + 100, 1, &c);
	c ^= 1;
	wr(p, e.host_off + 100, 1, &c);
	d = open_k(p, false, PASS);
	ck_assert_ok(blk_scrub(d, on_dmg, &x, false, &r));
	ck_assert_uint_eq(r.damaged, 1);
	ck_assert_int_eq(x.n, 2); /* the current state and the snapshot share it */
	ck_assert(x.current && x.snap);
	ck_assert_uint_eq(x.off, 3 << 20);
	blk_close(d);
}
END_TEST

/* ------------------------------------------------------------------ backup */

START_TEST(backup_nights)
{
	const char *src = tu_path("disk.raw"), *v = tu_path("vault.keel");
	struct snap_backup_opts o = { .src = src, .src_fmt = "raw", .vault = v, .threads = 2 };
	struct snap_backup_stats st;
	uint8_t buf[200000];
	struct blk_dev *d;
	FILE *f;

	f = fopen(src, "wb");
	tu_fill(buf, sizeof(buf), 21, 0);
	fwrite(buf, 1, sizeof(buf), f);
	fseek(f, 3 << 20, SEEK_SET);
	fwrite(buf, 1, sizeof(buf), f);
	ck_assert_int_eq(ftruncate(fileno(f), 8 << 20), 0);
	fclose(f);
	unlink(v);
	o.name = "mon";
	ck_assert_ok(snap_backup(&o, &st));
	ck_assert(st.created);
	ck_assert_uint_gt(st.zero_skipped, 6 << 20); /* holes never read */
	/* night two: one small change; only it is stored */
	f = fopen(src, "r+b");
	fseek(f, 3 << 20, SEEK_SET);
	fputc('X', f);
	fclose(f);
	o.name = "tue";
	ck_assert_ok(snap_backup(&o, &st));
	ck_assert(!st.created);
	ck_assert_uint_eq(st.clusters_new, 1);
	ck_assert_uint_ge(st.clusters_unchanged, 5);
	/* the same name twice is refused and changes nothing */
	ck_assert_int_eq(snap_backup(&o, &st), -EEXIST);
	/* both nights read back exactly */
	d = open_k(v, false, NULL);
	clean(d);
	blk_close(d);
	{
		struct blk_open_opts ro = { .format = "raw" };
		struct blk_dev *a, *b;
		uint8_t x[65536], y[65536];

		ck_assert_ok(blk_open(src, &ro, &a));
		b = open_k(tu_path("vault.keel@tue"), false, NULL);
		for (uint64_t off = 0; off < (8 << 20); off += sizeof(x)) {
			ck_assert_ok(blk_pread(a, off, x, sizeof(x)));
			ck_assert_ok(blk_pread(b, off, y, sizeof(y)));
			ck_assert(memcmp(x, y, sizeof(x)) == 0);
		}
		blk_close(a);
		blk_close(b);
	}
}
END_TEST

static Suite *crypto_suite(void)
{
	Suite *s = suite_create("keel-crypto");
	TCase *tc = tcase_create("all");

	tcase_add_test(tc, identical_clusters_stored_once);
	tcase_add_test(tc, offline_dedup);
	tcase_add_test(tc, no_plaintext_in_file);
	tcase_add_test(tc, wrong_or_missing_key);
	tcase_add_test(tc, swap_replay_flip_detected);
	tcase_add_test(tc, tampered_metadata_detected);
	tcase_add_test(tc, key_slots);
	tcase_add_test(tc, scrub_names_offsets_and_snapshots);
	tcase_add_test(tc, backup_nights);
	tcase_set_timeout(tc, 600);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(crypto_suite());
}
