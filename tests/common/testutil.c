/*
 * tests/common/testutil.c - helpers shared by the Check unit tests.
 */
#define _GNU_SOURCE
#include "tests/common/testutil.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[512];

const char *tu_tmpdir(void)
{
	if (!tmpdir[0]) {
		const char *base = getenv("KEEL_TEST_TMP");

		snprintf(tmpdir, sizeof(tmpdir), "%s/unit.XXXXXX", base && *base ? base : "/tmp");
		if (!mkdtemp(tmpdir))
			abort();
	}
	return tmpdir;
}

const char *tu_path(const char *name)
{
	static char paths[8][640];
	static int k;

	k = (k + 1) % 8;
	snprintf(paths[k], sizeof(paths[k]), "%s/%s", tu_tmpdir(), name);
	return paths[k];
}

void tu_cleanup(void)
{
	if (tmpdir[0]) {
		tu_sh("rm -rf '%s'", tmpdir);
		tmpdir[0] = '\0';
	}
}

void tu_fill(void *buf, size_t len, uint64_t seed, uint64_t off)
{
	uint8_t *b = buf;

	for (size_t i = 0; i < len; i++) {
		uint64_t x = (off + i) / 8 * 0x9E3779B97F4A7C15ULL ^ seed * 0xD1B54A32D192ED03ULL;

		x ^= x >> 29;
		x *= 0xBF58476D1CE4E5B9ULL;
		x ^= x >> 32;
		b[i] = (uint8_t)(x >> (((off + i) % 8) * 8));
	}
}

int tu_sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	int rc;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	rc = system(cmd);
	if (rc < 0)
		return -1;
	return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

bool tu_have(const char *prog)
{
	return tu_sh("command -v '%s' >/dev/null 2>&1", prog) == 0;
}

int tu_copy(const char *from, const char *to)
{
	FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
	char buf[65536];
	size_t n;
	int rc = 0;

	if (!in || !out)
		rc = -EIO;
	while (rc == 0 && (n = fread(buf, 1, sizeof(buf), in)) > 0)
		if (fwrite(buf, 1, n, out) != n)
			rc = -EIO;
	if (in)
		fclose(in);
	if (out && fclose(out) != 0)
		rc = -EIO;
	return rc;
}

int tu_run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	tu_tmpdir(); /* made in the parent, so forked tests share and cleanup sees it */
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	tu_cleanup();
	return failed ? 1 : 0;
}

bool tu_quick(void)
{
	const char *q = getenv("KEEL_TEST_QUICK");

	return q && *q && strcmp(q, "0") != 0;
}

int tu_scale_down(void)
{
	return tu_quick() ? 4 : 1;
}
