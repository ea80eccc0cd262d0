/*
 * tests/unit/convert/test_convert.c - conv_run and conv_measure through the
 * library: content and sparseness at any thread count, an I/O error at
 * every I/O point leaves neither DST nor a temporary, interruption, and
 * the measure of raw.
 */
#include "tests/common/testutil.h"
#include "convert/convert.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SRC_SIZE (5u * 1048576 + 4096 * 3)

static void make_src(const char *path)
{
	static uint8_t buf[65536];
	struct kl_file *f;

	ck_assert_ok(kl_io_open(path, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC, &f));
	ck_assert_ok(kl_io_truncate(f, SRC_SIZE));
	/* data, a zero-filled block (data that turns out zero), holes */
	for (uint64_t off = 0; off < SRC_SIZE; off += 3 * sizeof(buf)) {
		size_t n = (size_t)KL_MIN((uint64_t)sizeof(buf), SRC_SIZE - off);

		tu_fill(buf, n, 1, off);
		if ((off / sizeof(buf)) % 4 == 3)
			memset(buf, 0, n);
		ck_assert_ok(kl_io_pwrite(f, off, buf, n));
	}
	kl_io_close(f);
}

static bool same_content(const char *a, const char *b)
{
	struct blk_open_opts o = { .format = "raw" };
	struct blk_dev *da, *db;
	struct conv_compare_result r;

	ck_assert_ok(blk_open(a, &o, &da));
	ck_assert_ok(blk_open(b, &o, &db));
	ck_assert_ok(conv_compare(da, db, true, &r));
	blk_close(da);
	blk_close(db);
	return r.identical;
}

static int count_temps(void)
{
	DIR *d = opendir(tu_tmpdir());
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		n += strstr(e->d_name, ".keel-tmp.") != NULL;
	closedir(d);
	return n;
}

static void opts_for(struct conv_opts *o, const char *dst, int threads)
{
	static char src[4096];

	snprintf(src, sizeof(src), "%s", tu_path("src.raw"));
	memset(o, 0, sizeof(*o));
	o->src = src;
	o->src_fmt = "raw";
	o->dst = dst;
	o->dst_fmt = "raw";
	o->threads = threads;
}

START_TEST(any_thread_count)
{
	struct conv_opts o;
	struct conv_stats st;
	static const int js[] = { 1, 2, 3, 8 };

	make_src(tu_path("src.raw"));
	for (size_t i = 0; i < KL_ARRAY_SIZE(js); i++) {
		char dst[4096];

		snprintf(dst, sizeof(dst), "%s", tu_path("out.raw"));
		opts_for(&o, dst, js[i]);
		o.verify = true;
		ck_assert_ok(conv_run(&o, &st));
		ck_assert(st.verified);
		ck_assert_int_eq(st.threads, js[i]);
		ck_assert_uint_eq(st.virtual_size, SRC_SIZE);
		ck_assert_uint_gt(st.zero_detected, 0);
		ck_assert_uint_le(st.memory_bound, 192u << 20);
		ck_assert(same_content(tu_path("src.raw"), dst));
		unlink(dst);
	}
	ck_assert_int_eq(count_temps(), 0);
}
END_TEST

START_TEST(io_error_at_every_point)
{
	struct conv_opts o;
	struct conv_stats st;
	struct kl_fault_rule r = { .mode = KL_FAULT_NONE };
	char dst[4096];
	uint64_t points;

	make_src(tu_path("src.raw"));
	snprintf(dst, sizeof(dst), "%s", tu_path("e.raw"));
	opts_for(&o, dst, 2);
	kl_fault_arm(&r);
	ck_assert_ok(conv_run(&o, &st));
	points = kl_fault_points();
	kl_fault_reset();
	unlink(dst);
	ck_assert_uint_gt(points, 3);
	for (uint64_t n = 1; n <= points; n++) {
		struct kl_fault_rule fr = { .mode = KL_FAULT_ERROR, .at = n, .err = EIO };
		int rc;

		kl_fault_arm(&fr);
		rc = conv_run(&o, &st);
		kl_fault_reset();
		if (rc < 0) {
			ck_assert_msg(access(dst, F_OK) != 0, "point %llu: DST left after an error",
				      (unsigned long long)n);
		} else {
			/* a fault on a best-effort call (directory sync) may not fail the run */
			ck_assert(same_content(tu_path("src.raw"), dst));
			unlink(dst);
		}
		ck_assert_msg(count_temps() == 0, "point %llu: temporary left",
			      (unsigned long long)n);
	}
}
END_TEST

START_TEST(malloc_failure_leaves_nothing)
{
	struct conv_opts o;
	struct conv_stats st;
	char dst[4096];

	make_src(tu_path("src.raw"));
	snprintf(dst, sizeof(dst), "%s", tu_path("m.raw"));
	opts_for(&o, dst, 2);
	for (uint64_t n = 1; n <= 60; n++) {
		struct kl_fault_rule fr = { .mode = KL_FAULT_ERROR, .malloc_at = n };
		int rc;

		kl_fault_arm(&fr);
		rc = conv_run(&o, &st);
		kl_fault_reset();
		if (rc < 0)
			ck_assert(access(dst, F_OK) != 0);
		else
			unlink(dst);
		ck_assert_int_eq(count_temps(), 0);
	}
}
END_TEST

START_TEST(measure_raw)
{
	struct conv_opts o;
	struct conv_measure m;

	make_src(tu_path("src.raw"));
	opts_for(&o, NULL, 1);
	ck_assert_ok(conv_measure(&o, 0, &m));
	ck_assert_uint_eq(m.required, SRC_SIZE);
	ck_assert_uint_eq(m.fully_allocated, SRC_SIZE);
	o.src = NULL;
	ck_assert_ok(conv_measure(&o, 1ULL << 40, &m));
	ck_assert_uint_eq(m.required, 1ULL << 40);
	o.dst_fmt = "nosuch";
	ck_assert_int_lt(conv_measure(&o, 4096, &m), 0);
}
END_TEST

static Suite *convert_suite(void)
{
	Suite *s = suite_create("convert");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, any_thread_count);
	tcase_add_test(tc, io_error_at_every_point);
	tcase_add_test(tc, malloc_failure_leaves_nothing);
	tcase_add_test(tc, measure_raw);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(convert_suite());
}
