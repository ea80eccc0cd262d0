/*
 * tests/common/testutil.h - helpers shared by the Check unit tests.
 */
#ifndef KEEL_TESTUTIL_H
#define KEEL_TESTUTIL_H

#include "format/format.h"

#include <check.h>

/* A fresh directory under $KEEL_TEST_TMP (or /tmp), removed by tu_cleanup(). */
const char *tu_tmpdir(void);
/* Path inside tu_tmpdir(); returns a static buffer rotated over 8 slots. */
const char *tu_path(const char *name);
void tu_cleanup(void);
/* Deterministic bytes for (seed, offset): the same call gives the same data. */
void tu_fill(void *buf, size_t len, uint64_t seed, uint64_t off);
/* Run a shell command; returns its exit status (-1 on failure to run). */
int tu_sh(const char *fmt, ...) KL_PRINTF(1, 2);
/* True when a program is on PATH. */
bool tu_have(const char *prog);
/* Copy a file byte for byte. */
int tu_copy(const char *from, const char *to);
/*
 * Sanitizer builds run the long randomized tests shorter: KEEL_TEST_QUICK=1
 * (set by `make SANITIZE=1 check`) divides iteration counts by 4 and skips
 * the per-iteration data verification; every fault point is still visited.
 */
bool tu_quick(void);
int tu_scale_down(void);
/* Run a suite; returns the process exit status (0 when all passed). */
int tu_run_suite(Suite *s);

#define ck_assert_ok(expr)                                                              \
	do {                                                                            \
		int tu_rc_ = (expr);                                                    \
		ck_assert_msg(tu_rc_ >= 0, "%s failed: %d (%s)", #expr, tu_rc_, kl_errmsg()); \
	} while (0)

#endif
