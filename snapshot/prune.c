/*
 * snapshot/prune.c - retention: which snapshots to keep, and keel prune.
 *
 * The selection follows borg prune (see snapshot.h); where restic differs
 * is documented in the README. Deletion happens in a batch-mode open, so
 * every pruned snapshot disappears in one commit: after a crash the vault
 * has all of them or none of them.
 */
#include "snapshot/snapshot.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char *const rule_names[SNAP_KEEP_RULES] = {
	"last", "hourly", "daily", "weekly", "monthly", "yearly",
};

static const char *const rule_formats[SNAP_KEEP_RULES] = {
	NULL, "%Y-%m-%d %H", "%Y-%m-%d", "%G-%V", "%Y-%m", "%Y",
};

const char *snap_keep_rule_name(enum snap_keep_rule r)
{
	return (unsigned)r < SNAP_KEEP_RULES ? rule_names[r] : "?";
}

static void period_of(enum snap_keep_rule rule, const struct snap_prune_item *it, size_t idx,
		      char *out, size_t len)
{
	time_t t = (time_t)(it->time_ns / 1000000000ULL);
	struct tm tm;

	if (rule == SNAP_KEEP_LAST) {
		snprintf(out, len, "#%zu", idx); /* every snapshot is its own period */
		return;
	}
	gmtime_r(&t, &tm);
	strftime(out, len, rule_formats[rule], &tm);
}

static int cmp_newest_first(const void *a, const void *b)
{
	const struct snap_prune_item *x = a, *y = b;

	if (x->time_ns != y->time_ns)
		return x->time_ns > y->time_ns ? -1 : 1;
	return strcmp(y->name, x->name);
}

int snap_prune_select(struct snap_prune_item *v, size_t n, const struct snap_retention *r)
{
	bool any = false;

	for (int k = 0; k < SNAP_KEEP_RULES; k++) {
		if (r->keep[k] < -1)
			return kl_err(-EINVAL, "--keep-%s must be -1 or more", rule_names[k]);
		any |= r->keep[k] != 0;
	}
	if (!any)
		return kl_err(-EINVAL, "no retention rule given: refusing to prune everything");
	qsort(v, n, sizeof(*v), cmp_newest_first);
	for (size_t i = 0; i < n; i++) {
		v[i].kept_by = -1;
		v[i].oldest = false;
	}
	for (int k = 0; k < SNAP_KEEP_RULES; k++) {
		char last[40] = "", cur[40];
		int64_t kept = 0;

		if (r->keep[k] == 0)
			continue;
		for (size_t i = 0; i < n; i++) {
			period_of(k, &v[i], i, cur, sizeof(cur));
			if (!strcmp(cur, last))
				continue;
			snprintf(last, sizeof(last), "%s", cur);
			if (v[i].kept_by >= 0)
				continue; /* an earlier rule has this period's newest */
			v[i].kept_by = k;
			if (++kept == r->keep[k])
				break;
		}
		/* not enough periods for N: keep the oldest snapshot too (borg >= 1.2) */
		if (n && r->keep[k] > 0 && kept < r->keep[k] && v[n - 1].kept_by < 0) {
			v[n - 1].kept_by = k;
			v[n - 1].oldest = true;
		}
	}
	return 0;
}

int snap_latest(struct blk_dev *d, char *name, size_t len)
{
	struct blk_snapshot_info *v;
	size_t n, best = 0;

	KL_TRY(blk_snapshot_list(d, &v, &n));
	if (n == 0) {
		blk_snapshot_list_free(v, n);
		return kl_err(-ENOENT, "%s has no snapshots", blk_filename(d));
	}
	for (size_t i = 1; i < n; i++)
		if (v[i].date_ns > v[best].date_ns ||
		    (v[i].date_ns == v[best].date_ns && v[i].generation > v[best].generation))
			best = i;
	snprintf(name, len, "%s", v[best].name);
	blk_snapshot_list_free(v, n);
	return 0;
}

void snap_prune_result_release(struct snap_prune_result *res)
{
	for (size_t i = 0; i < res->n; i++)
		kl_free((char *)res->items[i].name);
	kl_free(res->items);
	memset(res, 0, sizeof(*res));
}

static uint64_t allocated(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

int snap_prune(const char *vault, const struct blk_open_opts *o, const struct snap_retention *r,
	       bool dry_run, struct snap_prune_result *res)
{
	struct blk_open_opts oo = *o;
	struct blk_snapshot_info *v = NULL;
	struct blk_dev *d = NULL;
	uint64_t before = allocated(vault);
	size_t n = 0;
	int rc;

	memset(res, 0, sizeof(*res));
	oo.flags |= BLK_OPEN_NO_PARENT | BLK_OPEN_BATCH | (dry_run ? 0 : BLK_OPEN_RDWR);
	KL_TRY(blk_open(vault, &oo, &d));
	rc = blk_snapshot_list(d, &v, &n);
	if (rc < 0)
		goto out;
	res->items = kl_calloc(n ? n : 1, sizeof(*res->items));
	if (!res->items) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		res->items[i].name = kl_strdup(v[i].name);
		res->items[i].time_ns = v[i].date_ns;
		if (!res->items[i].name) {
			rc = -ENOMEM;
			goto out;
		}
		res->n++;
	}
	rc = snap_prune_select(res->items, res->n, r);
	if (rc < 0)
		goto out;
	for (size_t i = 0; i < res->n; i++) {
		if (res->items[i].kept_by >= 0)
			continue;
		res->pruned++;
		if (!dry_run && (rc = blk_snapshot_delete(d, res->items[i].name)) < 0)
			goto out;
	}
	if (!dry_run)
		rc = blk_flush(d); /* the one commit */
out:
	blk_snapshot_list_free(v, n);
	if (rc < 0)
		blk_close_discard(d);
	else
		blk_close(d);
	if (rc == 0 && !dry_run) {
		uint64_t after = allocated(vault);

		res->freed_bytes = before > after ? before - after : 0;
	}
	return rc;
}
