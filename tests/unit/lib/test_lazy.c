/*
 * tests/unit/lib/test_lazy.c - lib/lazy.c's failure path, compiled here with
 * sonames no system has: every entry point must fail with -ENOTSUP naming
 * the library and the package, and keep failing the same way (the outcome
 * is remembered, not retried). The success path runs in every OVA, GCE and
 * S3 test.
 */
#define KL_ARCHIVE_SONAME "libkeel-absent-archive.so.0"
#define KL_XML_SONAME "libkeel-absent-xml.so.0"
#define KL_CURL_SONAME "libkeel-absent-curl.so.0"
/* the test's own copy: libkeel.a's lazy.o is then never linked in */
#include "lib/lazy.c"

#include "tests/common/testutil.h"

static void expect_fails(int (*load)(void), const char *soname, const char *package)
{
	for (int round = 0; round < 2; round++) {
		ck_assert_int_eq(load(), -ENOTSUP);
		ck_assert_msg(strstr(kl_errmsg(), soname) != NULL, "message: %s", kl_errmsg());
		ck_assert_msg(strstr(kl_errmsg(), package) != NULL, "message: %s", kl_errmsg());
	}
}

START_TEST(missing_libraries_fail_clearly)
{
	expect_fails(kl_archive_load, KL_ARCHIVE_SONAME, "libarchive13");
	expect_fails(kl_xml_load, KL_XML_SONAME, "libxml2");
	expect_fails(kl_curl_load, KL_CURL_SONAME, "libcurl4");
	/* nothing was filled in that a caller could jump through */
	ck_assert_ptr_null(kl_la.archive_read_new);
	ck_assert_ptr_null(kl_lx.xmlReadMemory);
	ck_assert_ptr_null(kl_lc.curl_easy_init);
}
END_TEST

static Suite *lazy_suite(void)
{
	Suite *s = suite_create("lazy");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, missing_libraries_fail_clearly);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(lazy_suite());
}
