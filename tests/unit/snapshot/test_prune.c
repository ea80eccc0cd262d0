/*
 * tests/unit/snapshot/test_prune.c - retention over a synthetic 400-day
 * calendar, checked against a second, independent implementation that
 * computes periods with integer calendar arithmetic instead of strftime.
 */
#include "tests/common/testutil.h"
#include "snapshot/snapshot.h"

#include <stdlib.h>
#include <string.h>

/* ---- the reference: days-from-civil arithmetic (H. Hinnant's algorithms) */
static void civil(int64_t days, int64_t *y, unsigned *m, unsigned *d)
{
	int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;

	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

/* ISO week key: the Monday that starts the week (weeks never straddle keys) */
static int64_t iso_week_key(int64_t days)
{
	int64_t wd = ((days % 7) + 7 + 3) % 7; /* 1970-01-01 was a Thursday: Monday = 0 */

	return days - wd;
}

static int64_t ref_period(int rule, uint64_t t, size_t idx)
{
	int64_t secs = (int64_t)(t / 1000000000ULL), days = secs / 86400, y;
	unsigned m, d;

	civil(days, &y, &m, &d);
	switch (rule) {
	case SNAP_KEEP_LAST:
		return (int64_t)idx;
	case SNAP_KEEP_HOURLY:
		return secs / 3600;
	case SNAP_KEEP_DAILY:
		return days;
	case SNAP_KEEP_WEEKLY:
		return iso_week_key(days);
	case SNAP_KEEP_MONTHLY:
		return y * 12 + m;
	default:
		return y;
	}
}

/* keep[i] = rule index or -1; times sorted newest first */
static void reference(const uint64_t *t, size_t n, const struct snap_retention *r, int *keep)
{
	for (size_t i = 0; i < n; i++)
		keep[i] = -1;
	for (int k = 0; k < SNAP_KEEP_RULES; k++) {
		int64_t got = 0;
		bool have = false;
		int64_t last = 0;

		if (!r->keep[k])
			continue;
		for (size_t i = 0; i < n && (r->keep[k] < 0 || got < r->keep[k]); i++) {
			int64_t p = ref_period(k, t[i], i);

			if (have && p == last)
				continue;
			have = true;
			last = p;
			if (keep[i] < 0) {
				keep[i] = k;
				got++;
			}
		}
		if (n && r->keep[k] > 0 && got < r->keep[k] && keep[n - 1] < 0)
			keep[n - 1] = k;
	}
}

static int cmp_desc(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x > y ? -1 : x < y;
}

START_TEST(calendar_400_days)
{
	static const int64_t policies[][SNAP_KEEP_RULES] = {
		{ 0, 0, 7, 4, 6, 2 },	{ 3, 24, 7, 4, 12, -1 }, { 1, 0, 0, 0, 0, 0 },
		{ 0, 0, -1, 0, 0, 0 },	{ 5, 0, 14, 0, 0, 0 },	 { 0, 48, 0, 10, 0, 3 },
		{ 2, 2, 2, 2, 2, 2 },	{ 0, 0, 0, 0, -1, 0 },	 { 0, 0, 30, 0, 0, 0 },
	};
	uint64_t start = (uint64_t)days_from_civil(2025, 10, 15) * 86400;
	uint64_t *t;
	size_t n = 0, cap = 4096;
	uint64_t seed = 42;

	t = kl_malloc(cap * sizeof(*t));
	/* 400 days, 0-6 snapshots a day at irregular hours, some gaps */
	for (int day = 0; day < 400; day++) {
		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		int per = (int)((seed >> 33) % 7);

		if ((seed >> 40) % 11 == 0)
			per = 0; /* a day without backups */
		for (int j = 0; j < per; j++) {
			seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
			t[n++] = (start + (uint64_t)day * 86400 + (seed >> 33) % 86400) * 1000000000ULL;
		}
	}
	qsort(t, n, sizeof(*t), cmp_desc);
	for (size_t p = 0; p < KL_ARRAY_SIZE(policies); p++) {
		struct snap_prune_item *v = kl_calloc(n, sizeof(*v));
		struct snap_retention r;
		int *want = kl_calloc(n, sizeof(*want));
		char (*names)[24] = kl_calloc(n, sizeof(*names));

		memcpy(r.keep, policies[p], sizeof(r.keep));
		for (size_t i = 0; i < n; i++) {
			snprintf(names[i], sizeof(names[i]), "s%05zu", n - i);
			v[i].name = names[i];
			v[i].time_ns = t[i];
		}
		/* shuffle: the selection must sort by itself */
		for (size_t i = n - 1; i > 0; i--) {
			size_t j = (size_t)((seed = seed * 6364136223846793005ULL + 1) >> 33) % (i + 1);
			struct snap_prune_item tmp = v[i];

			v[i] = v[j];
			v[j] = tmp;
		}
		ck_assert_ok(snap_prune_select(v, n, &r));
		reference(t, n, &r, want);
		for (size_t i = 0; i < n; i++) {
			ck_assert_uint_eq(v[i].time_ns, t[i]);
			ck_assert_msg(v[i].kept_by == want[i],
				      "policy %zu: snapshot %zu (t=%llu) kept_by %d, expected %d", p, i,
				      (unsigned long long)t[i], v[i].kept_by, want[i]);
		}
		kl_free(v);
		kl_free(want);
		kl_free(names);
	}
	ck_assert_uint_gt(n, 800);
	kl_free(t);
}
END_TEST

START_TEST(no_rule_refused)
{
	struct snap_prune_item v[1] = { { "a", 1, 0, false } };
	struct snap_retention r = { { 0 } };

	ck_assert_int_eq(snap_prune_select(v, 1, &r), -EINVAL);
}
END_TEST

START_TEST(borg_documented_example)
{
	/* borg's docs: --keep-daily 7 --keep-weekly 4 over daily backups keeps
	 * the last 7 days and then 4 more week ends (Sundays' backups). */
	struct snap_retention r = { { 0, 0, 7, 4, 0, 0 } };
	struct snap_prune_item v[60];
	char names[60][16];
	uint64_t sunday = (uint64_t)days_from_civil(2026, 11, 22); /* a Sunday */
	size_t kept = 0;

	for (int i = 0; i < 60; i++) {
		snprintf(names[i], sizeof(names[i]), "d%02d", i);
		v[i].name = names[i];
		v[i].time_ns = ((sunday - (uint64_t)i) * 86400 + 3600) * 1000000000ULL;
	}
	ck_assert_ok(snap_prune_select(v, 60, &r));
	for (int i = 0; i < 60; i++)
		kept += v[i].kept_by >= 0;
	ck_assert_uint_eq(kept, 11);
	for (int i = 0; i < 7; i++)
		ck_assert_int_eq(v[i].kept_by, SNAP_KEEP_DAILY);
	/* the weeks: Sundays 7, 14, 21, 28 days back (the current week's is kept daily) */
	for (int i = 7; i <= 28; i += 7)
		ck_assert_int_eq(v[i].kept_by, SNAP_KEEP_WEEKLY);
}
END_TEST

static Suite *prune_suite(void)
{
	Suite *s = suite_create("prune");
	TCase *tc = tcase_create("select");

	tcase_add_test(tc, calendar_400_days);
	tcase_add_test(tc, no_rule_refused);
	tcase_add_test(tc, borg_documented_example);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(prune_suite());
}
