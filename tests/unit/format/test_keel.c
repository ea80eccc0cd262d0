/*
 * tests/unit/format/test_keel.c - the native .keel format.
 *
 *  - model: thousands of random writes, zero-writes, discards, snapshot
 *    create/delete/revert and reopens, applied to an image and to an
 *    in-memory model; after every step the image reads as the model, and
 *    a check runs clean at intervals.
 *  - crash loops: every I/O point of a write burst, snapshot create, delete
 *    and revert, commit and rebase is failed (error), cut (crash) or cut
 *    with torn writes; the reopened image reads as the state before or after
 *    the operation and checks clean. The same for allocation failures.
 *  - corruption: every byte flipped in a data cluster is detected by a read
 *    and by check --verify-data; random metadata bytes give clean errors.
 */
#include "tests/common/testutil.h"
#include "snapshot/snapshot.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ helpers */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static char ctx[256] = "setup";

#define TEST_PASS "test-pass"

/* Images whose name says "enc" are encrypted with TEST_PASS. */
static void key_for(const char *path, struct blk_open_opts *o)
{
	if (strstr(path, "enc")) {
		o->key = (const uint8_t *)TEST_PASS;
		o->key_len = strlen(TEST_PASS);
	}
}

static struct blk_dev *open_img(const char *path, bool rw)
{
	struct blk_open_opts o = { .format = "keel", .flags = rw ? BLK_OPEN_RDWR : 0 };
	struct blk_dev *d = NULL;
	int rc;

	key_for(path, &o);
	rc = blk_open(path, &o, &d);
	ck_assert_msg(rc == 0, "%s: opening %s: %s", ctx, path, kl_errmsg());
	return d;
}

static void create_img(const char *path, uint64_t size, const char *opts, const char *parent)
{
	struct blk_create_opts co = { .size = size, .parent = parent };
	struct blk_open_opts ko_key = { 0 };
	struct kl_opts *ko = NULL;

	key_for(path, &ko_key);
	co.key = ko_key.key;
	co.key_len = ko_key.key_len;
	if (opts)
		ck_assert_ok(kl_opts_parse(opts, &ko));
	co.opts = ko;
	unlink(path);
	ck_assert_ok(blk_create(path, "keel", &co));
	kl_opts_free(ko);
}

static uint8_t *read_all(struct blk_dev *d)
{
	uint8_t *b = kl_malloc(blk_size(d));

	ck_assert_ptr_nonnull(b);
	ck_assert_ok(blk_pread(d, 0, b, blk_size(d)));
	return b;
}

static void assert_clean(struct blk_dev *d, unsigned flags)
{
	struct blk_check_report r;

	ck_assert_ok(blk_check(d, &r, flags));
	ck_assert_msg(r.corruptions == 0 && r.leaks == 0 && r.data_errors == 0,
		      "%s: check: %llu corruptions, %llu leaks, %llu data errors: %s", ctx,
		      (unsigned long long)r.corruptions, (unsigned long long)r.leaks,
		      (unsigned long long)r.data_errors, r.nmsgs ? r.msgs[0] : "");
	blk_check_report_release(&r);
}

/* Data that compresses sometimes and sometimes not. */
static void fill_data(uint8_t *b, size_t n, uint64_t seed)
{
	switch (seed % 3) {
	case 0:
		tu_fill(b, n, seed, 0);
		break;
	case 1:
		memset(b, (int)(seed & 0xff) | 1, n);
		break;
	default:
		for (size_t i = 0; i < n; i++)
			b[i] = (uint8_t)("keel-model "[i % 11] + (seed & 3));
	}
}

/* ------------------------------------------------------------------ basics */

START_TEST(create_open_info)
{
	const char *p = tu_path("a.keel");
	struct blk_info in;
	struct blk_dev *d;

	create_img(p, 100 << 20, "cluster_size=4K,compression=zlib", NULL);
	d = open_img(p, false);
	ck_assert_uint_eq(blk_size(d), 100 << 20);
	ck_assert_uint_eq(blk_cluster_size(d), 4096);
	ck_assert_ok(blk_info(d, &in));
	ck_assert_str_eq(in.format, "keel");
	ck_assert_str_eq(in.compression, "zlib");
	ck_assert(in.has_uuid);
	blk_info_release(&in);
	assert_clean(d, BLK_CHECK_DATA);
	blk_close(d);
}
END_TEST

START_TEST(bad_create_options)
{
	struct blk_create_opts co = { .size = 1 << 20 };
	struct kl_opts *ko = NULL;

	ck_assert_ok(kl_opts_parse("cluster_size=3000", &ko));
	co.opts = ko;
	ck_assert_int_lt(blk_create(tu_path("b.keel"), "keel", &co), 0);
	kl_opts_free(ko);
	ko = NULL;
	ck_assert_ok(kl_opts_parse("frobnicate=1", &ko));
	co.opts = ko;
	ck_assert_int_lt(blk_create(tu_path("b.keel"), "keel", &co), 0);
	ck_assert(strstr(kl_errmsg(), "frobnicate") != NULL);
	ck_assert_int_ne(access(tu_path("b.keel"), F_OK), 0);
	kl_opts_free(ko);
}
END_TEST

START_TEST(large_virtual_size)
{
	const char *p = tu_path("big.keel");
	uint8_t buf[8192], got[8192];
	struct blk_dev *d;
	uint64_t far = (16ULL << 40) - 8192;

	create_img(p, 16ULL << 40, NULL, NULL);
	d = open_img(p, true);
	tu_fill(buf, sizeof(buf), 7, far);
	ck_assert_ok(blk_pwrite(d, far, buf, sizeof(buf)));
	ck_assert_ok(blk_pwrite(d, 5ULL << 32, buf, sizeof(buf)));
	ck_assert_ok(blk_flush(d));
	blk_close(d);
	d = open_img(p, false);
	ck_assert_ok(blk_pread(d, far, got, sizeof(got)));
	ck_assert(memcmp(buf, got, sizeof(buf)) == 0);
	ck_assert_ok(blk_pread(d, 5ULL << 32, got, sizeof(got)));
	ck_assert(memcmp(buf, got, sizeof(buf)) == 0);
	assert_clean(d, BLK_CHECK_DATA);
	blk_close(d);
}
END_TEST

/* ------------------------------------------------------------------ the model */

struct model {
	uint64_t size;
	uint8_t *cur;
	char names[16][16];
	uint8_t *snap[16];
	int nsnap;
};

static void model_check(struct blk_dev *d, const struct model *m, int step)
{
	uint8_t *got = read_all(d);

	if (memcmp(got, m->cur, m->size) != 0) {
		uint64_t i = 0;

		while (got[i] == m->cur[i])
			i++;
		ck_abort_msg("step %d: image differs from the model at offset %llu", step,
			     (unsigned long long)i);
	}
	kl_free(got);
}

static void run_model(const char *opts, uint64_t size, int steps, uint64_t seed)
{
	const char *p = tu_path("model.keel");
	struct model m = { .size = size };
	uint8_t *buf = kl_malloc(256 << 10);
	struct blk_dev *d;
	int next_name = 0;

	rng_state = seed;
	create_img(p, size, opts, NULL);
	m.cur = kl_calloc(1, size);
	d = open_img(p, true);
	for (int step = 0; step < steps; step++) {
		unsigned op = (unsigned)(rnd() % 100);
		uint64_t off = rnd() % size;
		uint64_t len = 1 + rnd() % KL_MIN(size - off, (uint64_t)(256 << 10));

		if (rnd() % 4 == 0) { /* aligned, whole clusters often */
			off &= ~(uint64_t)4095;
			len = KL_MIN(KL_ALIGN_UP(len, 4096), size - off);
		}
		if (op < 45) {
			fill_data(buf, len, rnd());
			ck_assert_ok(blk_pwrite(d, off, buf, len));
			memcpy(m.cur + off, buf, len);
		} else if (op < 55) {
			ck_assert_ok(blk_pwrite_zeroes(d, off, len, (rnd() & 1) ? BLK_ZERO_MAY_UNMAP : 0));
			memset(m.cur + off, 0, len);
		} else if (op < 62) {
			ck_assert_ok(blk_discard(d, off, len));
			memset(m.cur + off, 0, len);
		} else if (op < 68) {
			ck_assert_ok(blk_flush(d));
		} else if (op < 76 && m.nsnap < 16) {
			snprintf(m.names[m.nsnap], sizeof(m.names[0]), "s%d", next_name++);
			ck_assert_ok(blk_snapshot_create(d, m.names[m.nsnap]));
			m.snap[m.nsnap] = kl_malloc(size);
			memcpy(m.snap[m.nsnap], m.cur, size);
			m.nsnap++;
		} else if (op < 82 && m.nsnap > 0) {
			int k = (int)(rnd() % (uint64_t)m.nsnap);

			ck_assert_ok(blk_snapshot_delete(d, m.names[k]));
			kl_free(m.snap[k]);
			memmove(&m.snap[k], &m.snap[k + 1], (size_t)(m.nsnap - k - 1) * sizeof(m.snap[0]));
			memmove(m.names[k], m.names[k + 1], (size_t)(m.nsnap - k - 1) * sizeof(m.names[0]));
			m.nsnap--;
		} else if (op < 86 && m.nsnap > 0) {
			int k = (int)(rnd() % (uint64_t)m.nsnap);

			ck_assert_ok(blk_snapshot_revert(d, m.names[k]));
			memcpy(m.cur, m.snap[k], size);
		} else if (op < 92) {
			blk_close(d);
			d = open_img(p, true);
		} else if (m.nsnap > 0) {
			/* read a snapshot through its own read-only view */
			int k = (int)(rnd() % (uint64_t)m.nsnap);
			char spec[1024];
			struct blk_dev *v;
			uint8_t *got;

			ck_assert_ok(blk_flush(d));
			snprintf(spec, sizeof(spec), "%s@%s", p, m.names[k]);
			v = open_img(spec, false);
			got = read_all(v);
			ck_assert_msg(memcmp(got, m.snap[k], size) == 0, "step %d: snapshot %s differs",
				      step, m.names[k]);
			kl_free(got);
			blk_close(v);
		}
		model_check(d, &m, step);
		if (step % 25 == 24)
			assert_clean(d, (step % 100 == 99) ? BLK_CHECK_DATA : 0);
	}
	assert_clean(d, BLK_CHECK_DATA);
	blk_close(d);
	for (int i = 0; i < m.nsnap; i++)
		kl_free(m.snap[i]);
	kl_free(m.cur);
	kl_free(buf);
}

START_TEST(model_small_clusters)
{
	/* 4 KiB clusters over 1.5 MiB: a two-level tree */
	run_model("cluster_size=4K", 1536 << 10, 1500 / tu_scale_down(), 0x1234);
}
END_TEST

START_TEST(model_default_clusters)
{
	run_model(NULL, 24 << 20, 600 / tu_scale_down(), 0xbeef);
}
END_TEST

START_TEST(model_uncompressed_zlib)
{
	run_model("cluster_size=8K,compression=none", 3 << 20, 500 / tu_scale_down(), 0x77);
	run_model("cluster_size=16K,compression=zlib", 5 << 20, 400 / tu_scale_down(), 0x78);
}
END_TEST

/* ------------------------------------------------------------------ crash loops */

struct scenario {
	const char *name;
	/* other files the scenario touches: checked after each run too */
	const char *files[2];
	int (*run)(void);
	/* the file whose content is compared, and the expected before/after content */
	const char *top;
	uint8_t *before, *after;
	uint64_t size;
};

static int sc_burst(void)
{
	struct blk_open_opts o = { .format = "keel", .flags = BLK_OPEN_RDWR };
	struct blk_dev *d;
	uint8_t buf[20000];
	int rc;

	rc = blk_open(tu_path("c-top.keel"), &o, &d);
	if (rc < 0)
		return rc;
	for (int i = 0; i < 6 && rc == 0; i++) {
		fill_data(buf, sizeof(buf), (uint64_t)i + 100);
		rc = blk_pwrite(d, (uint64_t)i * 300000 + 777, buf, sizeof(buf));
	}
	if (rc == 0)
		rc = blk_discard(d, 1 << 20, 128 << 10);
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	return rc;
}

static int sc_snap(const char *verb)
{
	struct blk_open_opts o = { .format = "keel", .flags = BLK_OPEN_RDWR };
	struct blk_dev *d;
	int rc;

	rc = blk_open(tu_path("c-top.keel"), &o, &d);
	if (rc < 0)
		return rc;
	if (!strcmp(verb, "create"))
		rc = blk_snapshot_create(d, "new");
	else if (!strcmp(verb, "delete"))
		rc = blk_snapshot_delete(d, "base");
	else
		rc = blk_snapshot_revert(d, "base");
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	return rc;
}

static int sc_snap_create(void)
{
	return sc_snap("create");
}

static int sc_snap_delete(void)
{
	return sc_snap("delete");
}

static int sc_snap_revert(void)
{
	return sc_snap("revert");
}

static int sc_commit(void)
{
	struct blk_open_opts o = { .format = "keel" };
	struct snap_stats st;

	return snap_commit(tu_path("c-child.keel"), &o, false, &st);
}

static int sc_rebase(void)
{
	struct blk_open_opts o = { .format = "keel" };
	struct snap_stats st;

	return snap_rebase(tu_path("c-child.keel"), &o, "c-other.keel", "keel", false, false, &st);
}

static int sc_dedup_writes(void)
{
	struct blk_open_opts o = { .format = "keel", .flags = BLK_OPEN_RDWR };
	struct blk_dev *d;
	uint8_t buf[32768];
	int rc;

	key_for(tu_path("c-dedup.keel"), &o);
	rc = blk_open(tu_path("c-dedup.keel"), &o, &d);
	if (rc < 0)
		return rc;
	fill_data(buf, sizeof(buf), 3); /* content the image holds already */
	for (int i = 0; i < 4 && rc == 0; i++)
		rc = blk_pwrite(d, (uint64_t)(1 << 20) + (uint64_t)i * 32768, buf, sizeof(buf));
	fill_data(buf, sizeof(buf), 11);
	if (rc == 0)
		rc = blk_pwrite(d, 0, buf, sizeof(buf)); /* replaces a shared original */
	if (rc == 0)
		rc = blk_pwrite_zeroes(d, 65536, 65536, 0);
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	return rc;
}

static int sc_enc_writes(void)
{
	struct blk_open_opts o = { .format = "keel", .flags = BLK_OPEN_RDWR };
	struct blk_dev *d;
	uint8_t buf[40000];
	int rc;

	key_for(tu_path("c-enc.keel"), &o);
	rc = blk_open(tu_path("c-enc.keel"), &o, &d);
	if (rc < 0)
		return rc;
	for (int i = 0; i < 3 && rc == 0; i++) {
		fill_data(buf, sizeof(buf), (uint64_t)i + 20);
		rc = blk_pwrite(d, (uint64_t)i * 500000 + 123, buf, sizeof(buf));
	}
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	return rc;
}

static int sc_key(enum blk_key_op op)
{
	struct blk_open_opts o = { .format = "keel", .flags = BLK_OPEN_RDWR };
	struct blk_dev *d;
	int rc, slot;

	key_for(tu_path("c-enc.keel"), &o);
	rc = blk_open(tu_path("c-enc.keel"), &o, &d);
	if (rc < 0)
		return rc;
	if (op == BLK_KEY_REMOVE)
		rc = blk_key_op(d, op, NULL, 0, 1, &slot);
	else
		rc = blk_key_op(d, op, (const uint8_t *)"other", 5, -1, &slot);
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	return rc;
}

static int sc_key_add(void)
{
	return sc_key(BLK_KEY_ADD);
}

static int sc_key_remove(void)
{
	return sc_key(BLK_KEY_REMOVE);
}

static int sc_backup(void)
{
	struct snap_backup_opts o = { .src = tu_path("c-src.raw"), .src_fmt = "raw",
				      .vault = tu_path("c-vault.keel"), .name = "n2",
				      .threads = 2 };
	struct snap_backup_stats st;

	return snap_backup(&o, &st);
}

static int sc_recv_finish(void)
{
	struct blk_open_opts o = { .format = "keel", .flags = BLK_OPEN_RDWR | BLK_OPEN_RECV };
	static const uint8_t guid[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
	struct blk_dev *d;
	uint8_t buf[30000];
	int rc;

	rc = blk_open(tu_path("c-recv.keel"), &o, &d);
	if (rc < 0)
		return rc;
	fill_data(buf, sizeof(buf), 41);
	rc = blk_pwrite(d, 900000, buf, sizeof(buf));
	if (rc == 0)
		rc = blk_recv_checkpoint(d, "t2", 2);
	if (rc == 0)
		rc = blk_pwrite(d, 1900000, buf, sizeof(buf));
	if (rc == 0)
		rc = blk_recv_finish(d, "received", guid);
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	return rc;
}

static uint8_t *content_of(const char *path)
{
	struct blk_dev *d = open_img(path, false);
	uint8_t *b = read_all(d);

	blk_close(d);
	return b;
}

/* c-top.keel: data, a snapshot "base", more data. c-child.keel over it. */
static void make_templates(void)
{
	uint8_t buf[150000];
	struct blk_dev *d;

	create_img(tu_path("c-top.keel"), 3 << 20, "cluster_size=8K", NULL);
	d = open_img(tu_path("c-top.keel"), true);
	fill_data(buf, sizeof(buf), 3);
	ck_assert_ok(blk_pwrite(d, 4096, buf, sizeof(buf)));
	ck_assert_ok(blk_pwrite(d, 2 << 20, buf, sizeof(buf)));
	ck_assert_ok(blk_snapshot_create(d, "base"));
	fill_data(buf, sizeof(buf), 4);
	ck_assert_ok(blk_pwrite(d, 100000, buf, sizeof(buf)));
	blk_close(d);

	create_img(tu_path("c-other.keel"), 3 << 20, "cluster_size=8K", NULL);
	d = open_img(tu_path("c-other.keel"), true);
	fill_data(buf, sizeof(buf), 5);
	ck_assert_ok(blk_pwrite(d, 40000, buf, sizeof(buf)));
	blk_close(d);

	create_img(tu_path("c-dedup.keel"), 3 << 20, "cluster_size=32K,dedup=on", NULL);
	d = open_img(tu_path("c-dedup.keel"), true);
	fill_data(buf, 32768, 3);
	ck_assert_ok(blk_pwrite(d, 0, buf, 32768));
	ck_assert_ok(blk_pwrite(d, 32768, buf, 32768));
	ck_assert_ok(blk_snapshot_create(d, "base"));
	blk_close(d);

	create_img(tu_path("c-enc.keel"), 2 << 20, "cluster_size=8K,encrypt=on,dedup=on", NULL);
	d = open_img(tu_path("c-enc.keel"), true);
	fill_data(buf, sizeof(buf), 8);
	ck_assert_ok(blk_pwrite(d, 0, buf, sizeof(buf)));
	ck_assert_ok(blk_key_op(d, BLK_KEY_ADD, (const uint8_t *)"second", 6, -1, NULL));
	blk_close(d);

	{
		/* a raw source and a vault holding one backup of an older version of it */
		struct snap_backup_opts bo = { .src = tu_path("c-src.raw"), .src_fmt = "raw",
					       .vault = tu_path("c-vault.keel"), .name = "n1" };
		struct snap_backup_stats bst;
		FILE *f = fopen(tu_path("c-src.raw"), "wb");

		fill_data(buf, sizeof(buf), 30);
		fwrite(buf, 1, sizeof(buf), f);
		fseek(f, 1 << 20, SEEK_SET);
		fwrite(buf, 1, sizeof(buf), f);
		ck_assert_int_eq(ftruncate(fileno(f), 2 << 20), 0);
		fclose(f);
		unlink(tu_path("c-vault.keel"));
		ck_assert_ok(snap_backup(&bo, &bst));
		f = fopen(tu_path("c-src.raw"), "r+b");
		fill_data(buf, 20000, 31);
		fseek(f, 70000, SEEK_SET);
		fwrite(buf, 1, 20000, f);
		fseek(f, 1500000, SEEK_SET);
		fwrite(buf, 1, 20000, f);
		fclose(f);
	}

	create_img(tu_path("c-recv.keel"), 3 << 20, "cluster_size=16K", NULL);
	d = open_img(tu_path("c-recv.keel"), true);
	fill_data(buf, sizeof(buf), 40);
	ck_assert_ok(blk_pwrite(d, 0, buf, sizeof(buf)));
	ck_assert_ok(blk_snapshot_create(d, "base"));
	ck_assert_ok(blk_recv_begin(d, "base"));
	ck_assert_ok(blk_pwrite(d, 50000, buf, 5000));
	ck_assert_ok(blk_recv_checkpoint(d, "t1", 2));
	blk_close(d);

	create_img(tu_path("c-child.keel"), 0, "cluster_size=8K", "c-top.keel");
	d = open_img(tu_path("c-child.keel"), true);
	fill_data(buf, sizeof(buf), 6);
	ck_assert_ok(blk_pwrite(d, 70000, buf, sizeof(buf)));
	ck_assert_ok(blk_pwrite_zeroes(d, 2 << 20, 32768, 0));
	blk_close(d);
	for (const char *const *f = (const char *const[]){ "c-top.keel", "c-other.keel",
							  "c-child.keel", "c-dedup.keel",
							  "c-enc.keel", "c-vault.keel", "c-recv.keel",
							  NULL };
	     *f; f++) {
		char t[256];

		snprintf(t, sizeof(t), "%s.tmpl", *f);
		ck_assert_ok(tu_copy(tu_path(*f), tu_path(t)));
	}
}

static void restore_templates(void)
{
	const char *files[] = { "c-top.keel", "c-other.keel", "c-child.keel", "c-dedup.keel",
				"c-enc.keel", "c-vault.keel", "c-recv.keel" };

	for (size_t i = 0; i < KL_ARRAY_SIZE(files); i++) {
		char t[256];

		snprintf(t, sizeof(t), "%s.tmpl", files[i]);
		ck_assert_ok(tu_copy(tu_path(t), tu_path(files[i])));
	}
}

static void verify_outcome(struct scenario *sc, const char *how, uint64_t n)
{
	const char *imgs[] = { sc->top, sc->files[0], sc->files[1] };
	uint8_t *got;
	struct blk_dev *d;

	snprintf(ctx, sizeof(ctx), "%s: %s at point %llu", sc->name, how, (unsigned long long)n);
	got = content_of(tu_path(sc->top));
	ck_assert_msg(memcmp(got, sc->before, sc->size) == 0 ||
			      memcmp(got, sc->after, sc->size) == 0,
		      "%s: %s at point %llu: content is neither the old nor the new state",
		      sc->name, how, (unsigned long long)n);
	kl_free(got);
	for (size_t i = 0; i < KL_ARRAY_SIZE(imgs) && imgs[i]; i++) {
		struct blk_open_opts o = { .format = "keel", .flags = BLK_OPEN_NO_PARENT };

		key_for(imgs[i], &o);
		ck_assert_msg(blk_open(tu_path(imgs[i]), &o, &d) == 0, "%s: %s at %llu: %s: %s",
			      sc->name, how, (unsigned long long)n, imgs[i], kl_errmsg());
		assert_clean(d, tu_quick() ? 0 : BLK_CHECK_DATA);
		blk_close(d);
	}
}

static void crash_loop(struct scenario *sc)
{
	static const enum kl_fault_mode modes[] = { KL_FAULT_ERROR, KL_FAULT_CRASH,
						    KL_FAULT_CRASH_TORN };
	static const char *mode_names[] = { "error", "crash", "torn" };
	struct kl_fault_rule count = { .mode = KL_FAULT_NONE };
	const char *only = getenv("KEEL_CRASH_ONLY"); /* for debugging one scenario */
	uint64_t points, mallocs;

	if (only && !strstr(sc->name, only))
		return;
	make_templates();
	sc->before = content_of(tu_path(sc->top));
	{
		struct blk_dev *d = open_img(tu_path(sc->top), false);

		sc->size = blk_size(d);
		blk_close(d);
	}
	kl_fault_arm(&count);
	ck_assert_ok(sc->run());
	points = kl_fault_points();
	mallocs = kl_fault_mallocs();
	kl_fault_reset();
	sc->after = content_of(tu_path(sc->top));
	ck_assert_uint_gt(points, 2);
	printf("crash loop '%s': %llu I/O points x 3 modes, %llu allocations\n", sc->name,
	       (unsigned long long)points, (unsigned long long)mallocs);
	for (size_t m = 0; m < KL_ARRAY_SIZE(modes); m++) {
		for (uint64_t n = 1; n <= points; n++) {
			struct kl_fault_rule r = { .mode = modes[m], .at = n, .seed = n * 7 + m };
			int rc;

			restore_templates();
			kl_fault_arm(&r);
			rc = sc->run();
			if (kl_fault_fired())
				ck_assert_msg(rc < 0, "%s: %s at point %llu fired but the call succeeded",
					      sc->name, mode_names[m], (unsigned long long)n);
			kl_fault_settle();
			kl_fault_reset();
			verify_outcome(sc, mode_names[m], n);
		}
	}
	/* allocation failures: every one of them, once */
	for (uint64_t n = 1; n <= mallocs; n += (mallocs > 400 ? mallocs / 400 : 1)) {
		struct kl_fault_rule r = { .mode = KL_FAULT_NONE, .malloc_at = n };
		int rc;

		restore_templates();
		kl_fault_arm(&r);
		rc = sc->run();
		if (kl_fault_fired())
			ck_assert_msg(rc < 0, "%s: malloc %llu failed but the call succeeded",
				      sc->name, (unsigned long long)n);
		kl_fault_reset();
		verify_outcome(sc, "malloc", n);
	}
	kl_free(sc->before);
	kl_free(sc->after);
}

START_TEST(crash_write_burst)
{
	struct scenario sc = { .name = "write burst", .run = sc_burst, .top = "c-top.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_snapshot_create)
{
	struct scenario sc = { .name = "snapshot create", .run = sc_snap_create,
			       .top = "c-top.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_snapshot_delete)
{
	struct scenario sc = { .name = "snapshot delete", .run = sc_snap_delete,
			       .top = "c-top.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_snapshot_revert)
{
	struct scenario sc = { .name = "snapshot revert", .run = sc_snap_revert,
			       .top = "c-top.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_commit)
{
	struct scenario sc = { .name = "commit", .run = sc_commit, .top = "c-child.keel",
			       .files = { "c-top.keel" } };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_dedup_writes)
{
	struct scenario sc = { .name = "dedup writes", .run = sc_dedup_writes,
			       .top = "c-dedup.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_encrypted_writes)
{
	struct scenario sc = { .name = "encrypted writes", .run = sc_enc_writes,
			       .top = "c-enc.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_key_add)
{
	struct scenario sc = { .name = "key add", .run = sc_key_add, .top = "c-enc.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_key_remove)
{
	struct scenario sc = { .name = "key remove", .run = sc_key_remove, .top = "c-enc.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_backup)
{
	struct scenario sc = { .name = "backup", .run = sc_backup, .top = "c-vault.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(crash_recv_finish)
{
	struct scenario sc = { .name = "receive finish", .run = sc_recv_finish,
			       .top = "c-recv.keel" };

	crash_loop(&sc);
}
END_TEST

START_TEST(recv_staging)
{
	const char *p = tu_path("r.keel");
	static const uint8_t guid[16] = { 9, 9, 9 };
	struct blk_open_opts o = { .format = "keel", .flags = BLK_OPEN_RDWR };
	struct blk_snapshot_info *v;
	uint8_t a[8192], b[8192], got[8192];
	char tok[16];
	size_t n, tl = sizeof(tok);
	bool active;
	struct blk_dev *d;

	memset(a, 0xa, sizeof(a));
	memset(b, 0xb, sizeof(b));
	create_img(p, 1 << 20, "cluster_size=4K", NULL);
	d = open_img(p, true);
	ck_assert_ok(blk_pwrite(d, 0, a, sizeof(a)));
	ck_assert_ok(blk_snapshot_create(d, "s1"));
	ck_assert_ok(blk_recv_begin(d, "s1"));
	ck_assert_ok(blk_pwrite(d, 4096, b, 4096));
	ck_assert_ok(blk_recv_checkpoint(d, "tok-1", 5));
	blk_close(d);
	/* readers see the old state and the token */
	d = open_img(p, false);
	ck_assert_ok(blk_pread(d, 0, got, sizeof(got)));
	ck_assert(memcmp(got, a, sizeof(a)) == 0);
	ck_assert_ok(blk_recv_status(d, &active, tok, &tl));
	ck_assert(active);
	ck_assert_uint_eq(tl, 5);
	ck_assert(memcmp(tok, "tok-1", 5) == 0);
	assert_clean(d, BLK_CHECK_DATA);
	blk_close(d);
	/* a plain writer is refused while the receive is in progress */
	ck_assert_int_eq(blk_open(p, &o, &d), -EBUSY);
	o.flags |= BLK_OPEN_RECV;
	ck_assert_ok(blk_open(p, &o, &d));
	ck_assert_ok(blk_pread(d, 4096, got, 4096));
	ck_assert(memcmp(got, b, 4096) == 0); /* the working state continues */
	ck_assert_ok(blk_recv_finish(d, "s2", guid));
	blk_close(d);
	d = open_img(p, true);
	ck_assert_ok(blk_pread(d, 0, got, sizeof(got)));
	ck_assert(memcmp(got, a, 4096) == 0 && memcmp(got + 4096, b, 4096) == 0);
	ck_assert_ok(blk_snapshot_list(d, &v, &n));
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(v[1].name, "s2");
	ck_assert(memcmp(v[1].guid, guid, 16) == 0);
	blk_snapshot_list_free(v, n);
	/* abort drops the working state */
	ck_assert_ok(blk_recv_begin(d, "s2"));
	ck_assert_ok(blk_pwrite(d, 0, b, 4096));
	ck_assert_ok(blk_recv_abort(d));
	ck_assert_ok(blk_pread(d, 0, got, 4096));
	ck_assert(memcmp(got, a, 4096) == 0);
	assert_clean(d, BLK_CHECK_DATA);
	blk_close(d);
}
END_TEST

START_TEST(crash_rebase)
{
	struct scenario sc = { .name = "rebase", .run = sc_rebase, .top = "c-child.keel",
			       .files = { "c-top.keel", "c-other.keel" } };

	crash_loop(&sc);
}
END_TEST

/* ------------------------------------------------------------------ chains */

START_TEST(parent_identity_checked)
{
	const char *base = tu_path("p-base.keel"), *child = tu_path("p-child.keel");
	uint8_t buf[4096];
	struct blk_open_opts o = { .format = "keel" };
	struct blk_dev *d;

	create_img(base, 1 << 20, NULL, NULL);
	create_img(child, 0, NULL, "p-base.keel");
	/* modifying the parent afterwards invalidates the child */
	d = open_img(base, true);
	memset(buf, 1, sizeof(buf));
	ck_assert_ok(blk_pwrite(d, 0, buf, sizeof(buf)));
	blk_close(d);
	ck_assert_int_eq(blk_open(child, &o, &d), -ESTALE);
	ck_assert(strstr(kl_errmsg(), "changed since") != NULL);
	/* a different image under the parent's name is refused too */
	create_img(base, 1 << 20, NULL, NULL);
	ck_assert_int_eq(blk_open(child, &o, &d), -ESTALE);
	ck_assert(strstr(kl_errmsg(), "UUID") != NULL);
}
END_TEST

START_TEST(parent_escape_and_loops)
{
	struct blk_create_opts co = { .size = 1 << 20, .parent = "../outside.keel" };
	struct blk_open_opts o = { .format = "keel" };
	struct blk_dev *d;
	char sub[600];

	snprintf(sub, sizeof(sub), "%s/sub", tu_tmpdir());
	tu_sh("mkdir -p '%s'", sub);
	create_img(tu_path("outside.keel"), 1 << 20, NULL, NULL);
	snprintf(sub, sizeof(sub), "%s/sub/in.keel", tu_tmpdir());
	ck_assert_int_eq(blk_create(sub, "keel", &co), -EPERM);
	co.flags = BLK_OPEN_ALLOW_EXTERNAL;
	ck_assert_ok(blk_create(sub, "keel", &co));
	ck_assert_int_eq(blk_open(sub, &o, &d), -EPERM);
	ck_assert(strstr(kl_errmsg(), "outside") != NULL);
	o.flags = BLK_OPEN_ALLOW_EXTERNAL;
	ck_assert_ok(blk_open(sub, &o, &d));
	blk_close(d);
	/* a -> b -> a */
	create_img(tu_path("la.keel"), 1 << 20, NULL, NULL);
	create_img(tu_path("lb.keel"), 0, NULL, "la.keel");
	o.flags = BLK_OPEN_RDWR;
	ck_assert_ok(blk_open(tu_path("la.keel"), &o, &d));
	ck_assert_int_eq(blk_set_parent(d, "lb.keel", "keel", 0), -ELOOP);
	blk_close(d);
}
END_TEST

/* ------------------------------------------------------------------ corruption */

START_TEST(flip_every_byte_of_a_cluster)
{
	const char *p = tu_path("flip.keel");
	uint8_t buf[4096], got[4096];
	struct blk_extent e;
	struct blk_dev *d;
	int fails = 0;

	create_img(p, 1 << 20, "cluster_size=4K,compression=none", NULL);
	d = open_img(p, true);
	tu_fill(buf, sizeof(buf), 9, 0);
	ck_assert_ok(blk_pwrite(d, 8192, buf, sizeof(buf)));
	blk_close(d);
	d = open_img(p, false);
	ck_assert_ok(blk_block_status(d, 8192, 4096, &e));
	ck_assert_int_eq(e.type, BLK_DATA);
	blk_close(d);
	for (size_t i = 0; i < 4096; i += 1) {
		FILE *f = fopen(p, "r+b");
		struct blk_check_report r;
		int c;

		fseek(f, (long)(e.host_off + i), SEEK_SET);
		c = fgetc(f);
		fseek(f, (long)(e.host_off + i), SEEK_SET);
		fputc(c ^ (1 << (i % 8)), f);
		fclose(f);
		d = open_img(p, false);
		ck_assert_int_eq(blk_pread(d, 8192, got, sizeof(got)), -EBADMSG);
		ck_assert(strstr(kl_errmsg(), "virtual offset 8192") != NULL);
		ck_assert_ok(blk_check(d, &r, BLK_CHECK_DATA));
		fails += r.data_errors == 1;
		blk_check_report_release(&r);
		blk_close(d);
		f = fopen(p, "r+b");
		fseek(f, (long)(e.host_off + i), SEEK_SET);
		fputc(c, f);
		fclose(f);
	}
	ck_assert_int_eq(fails, 4096);
}
END_TEST

START_TEST(random_metadata_damage)
{
	const char *p = tu_path("meta.keel"), *q = tu_path("meta2.keel");
	uint8_t buf[65536];
	struct blk_dev *d;
	uint64_t fsize;
	FILE *f;

	create_img(p, 8 << 20, "cluster_size=4K", NULL);
	d = open_img(p, true);
	for (int i = 0; i < 40; i++) {
		fill_data(buf, 5000, (uint64_t)i);
		ck_assert_ok(blk_pwrite(d, (uint64_t)i * 200000, buf, 5000));
		if (i % 10 == 0)
			ck_assert_ok(blk_snapshot_create(d, i == 0 ? "a" : i == 10 ? "b" : i == 20 ? "c" : "d"));
	}
	blk_close(d);
	f = fopen(p, "rb");
	fseek(f, 0, SEEK_END);
	fsize = (uint64_t)ftell(f);
	fclose(f);
	rng_state = 99;
	for (int iter = 0; iter < 300; iter++) {
		struct blk_open_opts o = { .format = "keel" };
		struct blk_check_report r;

		ck_assert_ok(tu_copy(p, q));
		f = fopen(q, "r+b");
		for (int k = 0; k < 1 + (int)(rnd() % 8); k++) {
			/* hit headers and metadata often, anything sometimes */
			uint64_t at = (rnd() & 1) ? rnd() % 8192 : rnd() % fsize;

			fseek(f, (long)at, SEEK_SET);
			fputc((int)(rnd() & 0xff), f);
		}
		fclose(f);
		if (blk_open(q, &o, &d) < 0) {
			ck_assert(strlen(kl_errmsg()) > 0);
			continue;
		}
		/* whatever happens must be an error code or correct data, never a crash */
		for (uint64_t off = 0; off < blk_size(d); off += sizeof(buf))
			if (blk_pread(d, off, buf, sizeof(buf)) < 0)
				break;
		if (blk_check(d, &r, BLK_CHECK_DATA) == 0)
			blk_check_report_release(&r);
		blk_close(d);
	}
}
END_TEST

struct diff_acc {
	uint64_t bytes, n;
};

static int diff_cb(void *o, const struct blk_extent *e)
{
	((struct diff_acc *)o)->bytes += e->len;
	((struct diff_acc *)o)->n++;
	return 0;
}

START_TEST(diff_from_metadata)
{
	const char *p = tu_path("diff.keel");
	uint8_t buf[70000];
	struct blk_dev *d;
	struct diff_acc acc = { 0, 0 };

	create_img(p, 64 << 20, NULL, NULL);
	d = open_img(p, true);
	memset(buf, 5, sizeof(buf));
	ck_assert_ok(blk_pwrite(d, 0, buf, sizeof(buf)));
	ck_assert_ok(blk_snapshot_create(d, "one"));
	ck_assert_ok(blk_pwrite(d, 10 << 20, buf, 100)); /* one cluster */
	ck_assert_ok(blk_pwrite(d, 0, buf, 100));	  /* rewrite, same content */
	ck_assert_ok(blk_snapshot_create(d, "two"));
	ck_assert_ok(blk_snapshot_diff(d, "one", "two", diff_cb, &acc));
	ck_assert_uint_eq(acc.bytes, 2 * 65536);
	acc.bytes = acc.n = 0;
	ck_assert_ok(blk_snapshot_diff(d, "two", NULL, diff_cb, &acc));
	ck_assert_uint_eq(acc.n, 0);
	blk_close(d);
}
END_TEST

static Suite *keel_suite(void)
{
	Suite *s = suite_create("keel");
	TCase *basic = tcase_create("basic");
	TCase *model = tcase_create("model");
	TCase *crash = tcase_create("crash");
	TCase *bad = tcase_create("bad-input");

	tcase_add_test(basic, create_open_info);
	tcase_add_test(basic, bad_create_options);
	tcase_add_test(basic, large_virtual_size);
	tcase_add_test(basic, parent_identity_checked);
	tcase_add_test(basic, parent_escape_and_loops);
	tcase_add_test(basic, diff_from_metadata);
	tcase_add_test(basic, recv_staging);
	tcase_add_test(model, model_small_clusters);
	tcase_add_test(model, model_default_clusters);
	tcase_add_test(model, model_uncompressed_zlib);
	tcase_add_test(crash, crash_write_burst);
	tcase_add_test(crash, crash_snapshot_create);
	tcase_add_test(crash, crash_snapshot_delete);
	tcase_add_test(crash, crash_snapshot_revert);
	tcase_add_test(crash, crash_commit);
	tcase_add_test(crash, crash_rebase);
	tcase_add_test(crash, crash_dedup_writes);
	tcase_add_test(crash, crash_encrypted_writes);
	tcase_add_test(crash, crash_key_add);
	tcase_add_test(crash, crash_key_remove);
	tcase_add_test(crash, crash_backup);
	tcase_add_test(crash, crash_recv_finish);
	tcase_add_test(bad, flip_every_byte_of_a_cluster);
	tcase_add_test(bad, random_metadata_damage);
	tcase_set_timeout(model, 900);
	tcase_set_timeout(crash, 900);
	tcase_set_timeout(bad, 900);
	suite_add_tcase(s, basic);
	suite_add_tcase(s, model);
	suite_add_tcase(s, crash);
	suite_add_tcase(s, bad);
	return s;
}

int main(void)
{
	return tu_run_suite(keel_suite());
}
