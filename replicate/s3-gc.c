/*
 * replicate/s3-gc.c - keel prune (forget snapshots by policy, then collect
 * garbage) and keel scrub (verify everything) on S3 repositories.
 *
 * Garbage collection runs while replicates may be running, with no lock:
 *
 *  1. A pack no manifest needs, whose index object is older than the grace
 *     period, is not deleted but condemned: its id goes into a gc mark
 *     object (gc/...), whose LastModified (the store's clock) dates it.
 *  2. A later prune deletes a condemned pack only when its mark is older
 *     than the grace period and the pack is still not needed by any
 *     manifest it lists then; packs that became needed are rescued (their
 *     mark is dropped).
 *  3. A replicate never dedups against a condemned pack. Before it writes
 *     its manifest it re-reads the marks; if a pack it dedups against was
 *     condemned meanwhile it uploads those chunks again elsewhere.
 *
 * Why nothing referenced is deleted: a manifest visible when step 2 lists
 * manifests protects its packs. A manifest M that appears later was
 * committed by a replicate whose commit check (step 3) ran at time c. If
 * c came after the mark was written, M does not use the pack: the check
 * sees the mark, or, when a sweep already finished (it deletes the index,
 * then the pack, then the mark), the missing index. If c came before, the
 * pack is deleted at the earliest one grace period after the mark, so M
 * would have to take longer than the grace period between its commit
 * check and its PUT, which is one request (the default grace is an hour).
 * Packs of a running replicate that no manifest names yet are
 * spared while their index is younger than the grace period, and caught
 * by the same commit check after that.
 */
#define _GNU_SOURCE
#include "replicate/s3_int.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_GRACE_S 3600

/* ------------------------------------------------------------------ policy */

static void period_key(uint64_t ns, int kind, char *out, size_t cap)
{
	time_t t = (time_t)(ns / 1000000000ULL);
	struct tm tm;
	static const char *const fmts[] = { "%Y%m%d%H", "%Y%m%d", "%G%V", "%Y%m", "%Y" };

	gmtime_r(&t, &tm);
	strftime(out, cap, fmts[kind], &tm);
}

/* Marks keep[i] for the snapshots (sorted oldest first) a policy keeps. */
static void apply_policy(const struct repl_manifest *ms, size_t n,
			 const struct repl_s3_prune_opts *p, bool *keep)
{
	unsigned counts[5] = { p->keep_hourly, p->keep_daily, p->keep_weekly, p->keep_monthly,
			       p->keep_yearly };

	for (size_t i = 0; i < n; i++) {
		size_t k = n - 1 - i; /* newest first */

		if (i < p->keep_last)
			keep[k] = true;
		if (p->keep_name && !strcmp(ms[k].name, p->keep_name))
			keep[k] = true;
	}
	for (int kind = 0; kind < 5; kind++) {
		char last[32] = "", cur[32];
		unsigned left = counts[kind];

		for (size_t i = 0; i < n && left; i++) {
			size_t k = n - 1 - i;

			period_key(ms[k].created_ns, kind, cur, sizeof(cur));
			if (!strcmp(cur, last))
				continue;
			memcpy(last, cur, sizeof(last));
			keep[k] = true;
			left--;
		}
	}
}

/* ------------------------------------------------------------------ marks */

struct mark {
	char *key;
	uint64_t mtime;
	uint8_t (*packs)[REPL_ID_LEN];
	size_t n;
};

static void marks_free(struct mark *v, size_t n)
{
	for (size_t i = 0; v && i < n; i++) {
		kl_free(v[i].key);
		kl_free(v[i].packs);
	}
	kl_free(v);
}

static int load_marks(struct repl_repo *r, struct mark **out, size_t *n)
{
	struct repl_s3_obj *objs = NULL;
	struct mark *v;
	size_t no = 0, k = 0;
	int rc = 0;

	*out = NULL;
	*n = 0;
	KL_TRY(repl_s3_list_keys(r->s3, "gc/", &objs, &no));
	v = kl_calloc(no ? no : 1, sizeof(*v));
	if (!v) {
		repl_s3_objs_free(objs, no);
		return -ENOMEM;
	}
	for (size_t i = 0; i < no; i++) {
		uint8_t *buf = NULL, *pt = NULL;
		size_t len = 0, ptl = 0;

		rc = repl_s3_get(r->s3, objs[i].key, 64u << 20, &buf, &len);
		if (rc == -ENOENT) {
			rc = 0;
			kl_err_clear();
			continue;
		}
		if (rc == 0)
			rc = repl_obj_open(&r->keys, REPL_OBJ_MARK, objs[i].key, buf, len, &pt,
					   &ptl);
		kl_free(buf);
		if (rc == 0)
			rc = repl_mark_decode(pt, ptl, &v[k].packs, &v[k].n);
		kl_free(pt);
		if (rc < 0) {
			kl_err_prefix(rc, "%s/%s", repl_s3_where(r->s3), objs[i].key);
			break;
		}
		v[k].key = kl_strdup(objs[i].key);
		v[k].mtime = objs[i].mtime_ns;
		k++;
		if (!v[k - 1].key) {
			rc = -ENOMEM;
			break;
		}
	}
	repl_s3_objs_free(objs, no);
	if (rc < 0) {
		marks_free(v, k);
		return rc;
	}
	*out = v;
	*n = k;
	return 0;
}

/* ------------------------------------------------------------------ deletion jobs */

struct del_job {
	struct repl_repo *r;
	uint8_t id[REPL_ID_LEN];
};

static int del_pack_job(void *arg)
{
	struct del_job *j = arg;
	char *ik = repl_key_index(j->id), *pk = repl_key_pack(j->id);
	int rc = -ENOMEM;

	/* index first: from then on nobody finds the pack; then the pack */
	if (ik && pk) {
		rc = repl_s3_delete(j->r->s3, ik);
		if (rc == 0)
			rc = repl_s3_delete(j->r->s3, pk);
	}
	kl_free(ik);
	kl_free(pk);
	return rc;
}

static int gc_run(struct repl_repo *r, uint64_t grace_ns, bool dry_run, struct repl_s3_stats *st)
{
	struct repl_manifest *ms = NULL;
	struct repl_s3_obj *data = NULL;
	struct mark *marks = NULL;
	struct del_job *jobs = NULL;
	struct repl_pool *pool = NULL;
	bool *needed = NULL, *in_mark = NULL, *deleting = NULL;
	uint8_t (*cand)[REPL_ID_LEN] = NULL;
	char **keys = NULL;
	size_t nm = 0, nmarks = 0, ndata = 0, njobs = 0, ncand = 0;
	uint64_t now;
	int rc;

	/* order matters: indexes, then marks, then manifests (see the top) */
	rc = repl_repo_load_index(r, false, NULL);
	if (rc == 0)
		rc = load_marks(r, &marks, &nmarks);
	if (rc == 0)
		rc = repl_repo_load_manifests(r, &ms, &keys, &nm);
	if (rc == 0)
		rc = repl_s3_list_keys(r->s3, "data/", &data, &ndata);
	if (rc == 0)
		rc = repl_repo_server_time(r, &now);
	if (rc < 0)
		goto out;
	needed = kl_calloc(r->npacks + 1, 1);
	in_mark = kl_calloc(r->npacks + 1, 1);
	deleting = kl_calloc(r->npacks + 1, 1);
	jobs = kl_calloc(r->npacks + ndata + 1, sizeof(*jobs));
	cand = kl_calloc(r->npacks + 1, REPL_ID_LEN);
	if (!needed || !in_mark || !deleting || !jobs || !cand) {
		rc = -ENOMEM;
		goto out;
	}
	/* what the manifests need; the map prefers live packs */
	for (size_t i = 0; i < nm; i++) {
		for (uint64_t k = 0; k < ms[i].ndata; k++) {
			struct repl_loc *loc = repl_map_get(&r->map, ms[i].ids[k]);

			if (loc)
				needed[loc->pack] = true;
			else
				st->damaged++;
		}
	}
	/* sweep: due marks delete their packs that are still not needed */
	for (size_t i = 0; i < nmarks; i++) {
		bool due = marks[i].mtime + grace_ns <= now;

		for (size_t k = 0; k < marks[i].n; k++) {
			int pi = repl_repo_find_pack(r, marks[i].packs[k]);

			if (pi < 0)
				continue; /* already gone */
			in_mark[pi] = true;
			if (due && !needed[pi] && !deleting[pi]) {
				deleting[pi] = true;
				jobs[njobs].r = r;
				memcpy(jobs[njobs++].id, marks[i].packs[k], REPL_ID_LEN);
			}
		}
	}
	/* new mark: unneeded, old enough, not condemned yet */
	for (size_t pi = 0; pi < r->npacks; pi++) {
		if (needed[pi] || in_mark[pi] || r->packs[pi].mtime_ns + grace_ns > now)
			continue;
		memcpy(cand[ncand++], r->packs[pi].id, REPL_ID_LEN);
	}
	/* pack data without an index: a replicate died between the two PUTs */
	for (size_t i = 0; i < ndata; i++) {
		const char *hx = strrchr(data[i].key, '/');
		uint8_t id[REPL_ID_LEN];

		if (!hx || repl_s3_unhex(hx + 1, id, REPL_ID_LEN) < 0 ||
		    repl_repo_find_pack(r, id) >= 0)
			continue;
		/* the two PUTs are seconds apart, retries included: an hour is generous */
		if (data[i].mtime_ns + KL_MAX(grace_ns, 3600ULL * 1000000000ULL) > now)
			continue;
		jobs[njobs].r = r;
		memcpy(jobs[njobs++].id, id, REPL_ID_LEN);
	}
	if (dry_run) {
		st->objects_deleted = 0;
		goto out;
	}
	if (njobs) {
		rc = repl_pool_new(repl_s3_connections(r->s3), 2 * repl_s3_connections(r->s3),
				   &pool);
		for (size_t i = 0; i < njobs && rc == 0; i++)
			rc = repl_pool_submit(pool, del_pack_job, &jobs[i]);
		if (pool) {
			int rc2 = repl_pool_wait(pool);

			if (rc == 0)
				rc = rc2;
		}
		if (rc < 0)
			goto out;
		st->objects_deleted += 2 * njobs;
	}
	/* due marks are done: their packs are deleted or rescued */
	for (size_t i = 0; i < nmarks; i++) {
		if (marks[i].mtime + grace_ns > now)
			continue;
		rc = repl_s3_delete(r->s3, marks[i].key);
		if (rc < 0)
			goto out;
		st->objects_deleted++;
	}
	if (ncand) {
		uint8_t *pt = NULL, *sealed = NULL, rnd[4];
		size_t ptl = 0, sl = 0;
		char key[64], hex[9];

		rc = repl_s3_random(rnd, sizeof(rnd));
		repl_s3_hex(rnd, sizeof(rnd), hex);
		snprintf(key, sizeof(key), "gc/%020llu-%s", (unsigned long long)now, hex);
		if (rc == 0)
			rc = repl_mark_encode((const uint8_t(*)[REPL_ID_LEN])cand, ncand, &pt,
					      &ptl);
		if (rc == 0)
			rc = repl_obj_seal(&r->keys, REPL_OBJ_MARK, key, pt, ptl, &sealed, &sl);
		if (rc == 0)
			rc = repl_s3_put(r->s3, key, sealed, sl);
		kl_free(pt);
		kl_free(sealed);
	}
out:
	st->packs_condemned = ncand;
	repl_pool_free(pool);
	repl_manifests_free(ms, keys, nm);
	repl_s3_objs_free(data, ndata);
	marks_free(marks, nmarks);
	kl_free(jobs);
	kl_free(cand);
	kl_free(needed);
	kl_free(in_mark);
	kl_free(deleting);
	return rc;
}

int repl_s3_prune(const struct repl_s3_opts *o, const struct repl_s3_prune_opts *p,
		  struct repl_s3_stats *st)
{
	struct repl_repo *r = NULL;
	struct repl_manifest *ms = NULL;
	char **keys = NULL;
	size_t nm = 0;
	bool *keep = NULL, any_policy;
	uint64_t grace_ns = (p->grace_set ? p->grace_s : DEFAULT_GRACE_S) * 1000000000ULL;
	double t0 = kl_now();
	int rc;

	memset(st, 0, sizeof(*st));
	any_policy = p->keep_last || p->keep_hourly || p->keep_daily || p->keep_weekly ||
		     p->keep_monthly || p->keep_yearly || p->keep_name;
	rc = repl_repo_open(o, false, &r, st);
	if (rc < 0)
		return rc;
	rc = repl_repo_load_manifests(r, &ms, &keys, &nm);
	if (rc < 0)
		goto out;
	keep = kl_calloc(nm + 1, 1);
	if (!keep) {
		rc = -ENOMEM;
		goto out;
	}
	if (any_policy)
		apply_policy(ms, nm, p, keep);
	else
		memset(keep, 1, nm); /* no policy: only collect garbage */
	for (size_t i = 0; i < nm; i++) {
		if (keep[i]) {
			st->snapshots_skipped++;
			continue;
		}
		if (!p->dry_run) {
			rc = repl_s3_delete(r->s3, keys[i]);
			if (rc < 0)
				goto out;
		}
		st->snapshots_done++;
		rc = repl_stats_add_name(st, ms[i].name);
		if (rc < 0)
			goto out;
	}
	if (!p->no_gc)
		rc = gc_run(r, grace_ns, p->dry_run, st);
out:
	repl_manifests_free(ms, keys, nm);
	kl_free(keep);
	repl_stats_from_counters(r, st);
	st->seconds = kl_now() - t0;
	repl_repo_close(r);
	return rc;
}

/* ------------------------------------------------------------------ scrub */

struct scrub_job {
	struct repl_repo *r;
	uint32_t pack;
	struct repl_loc **locs; /* the pack's index entries */
	size_t n;
	uint64_t size; /* listed size of the data object, 0 = missing */
	pthread_mutex_t *lock;
	struct repl_s3_stats *st;
};

static void damage(struct scrub_job *j, const char *fmt, ...) KL_PRINTF(2, 3);
static void damage(struct scrub_job *j, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(j->lock);
	j->st->damaged++;
	if (j->st->nnames < 100)
		repl_stats_add_name(j->st, msg);
	pthread_mutex_unlock(j->lock);
}

static int scrub_pack(void *arg)
{
	struct scrub_job *j = arg;
	struct repl_repo *r = j->r;
	char *key = repl_key_pack(r->packs[j->pack].id);
	uint8_t *buf = NULL, *plain = kl_malloc(REPL_CHUNK_MAX);
	size_t len = 0;
	int rc;

	if (!key || !plain) {
		kl_free(key);
		kl_free(plain);
		return -ENOMEM;
	}
	rc = repl_s3_get(r->s3, key, 64u << 20, &buf, &len);
	if (rc == -ENOENT) {
		damage(j, "%s: pack missing (its index names %zu chunks)", key, j->n);
		rc = 0;
		goto out;
	}
	if (rc < 0)
		goto out;
	if (len < REPL_PACK_HDR || memcmp(buf, REPL_PACK_MAGIC, REPL_PACK_HDR))
		damage(j, "%s: not a keel pack", key);
	for (size_t i = 0; i < j->n; i++) {
		struct repl_loc *l = j->locs[i];
		char hex[17];

		repl_s3_hex(l->id, 8, hex);
		if (!kl_range_ok(l->off, l->len, len)) {
			damage(j, "%s: chunk %s at %llu+%u lies past the end (%zu bytes)", key, hex,
			       (unsigned long long)l->off, l->len, len);
			continue;
		}
		if (repl_blob_decode(&r->keys, l->id, buf + l->off, l->len, plain, l->plain_len) <
		    0)
			damage(j, "%s: chunk %s at %llu: %s", key, hex, (unsigned long long)l->off,
			       kl_errmsg());
	}
	pthread_mutex_lock(j->lock);
	j->st->objects_checked++;
	j->st->chunks_total += j->n;
	pthread_mutex_unlock(j->lock);
out:
	kl_err_clear();
	kl_free(key);
	kl_free(buf);
	kl_free(plain);
	return rc;
}

static int cmp_loc_pack(const void *a, const void *b)
{
	const struct repl_loc *x = *(struct repl_loc *const *)a, *y = *(struct repl_loc *const *)b;

	if (x->pack != y->pack)
		return x->pack < y->pack ? -1 : 1;
	return x->off < y->off ? -1 : x->off > y->off;
}

int repl_s3_scrub(const struct repl_s3_opts *o, struct repl_s3_stats *st)
{
	struct repl_repo *r = NULL;
	struct repl_s3_obj *snaps = NULL;
	struct scrub_job *jobs = NULL;
	struct repl_loc **order = NULL;
	struct repl_pool *pool = NULL;
	pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	size_t nsnaps = 0, njobs = 0;
	double t0 = kl_now();
	int rc;

	memset(st, 0, sizeof(*st));
	rc = repl_repo_open(o, false, &r, st); /* the config authenticates here */
	if (rc < 0)
		return rc;
	st->objects_checked++;
	r->keep_all = true;
	rc = repl_repo_load_index(r, true, st);
	if (rc < 0)
		goto out;
	/* every manifest opens, and every chunk it names is indexed */
	rc = repl_s3_list_keys(r->s3, "snapshots/", &snaps, &nsnaps);
	if (rc < 0)
		goto out;
	for (size_t i = 0; i < nsnaps; i++) {
		struct repl_manifest m;
		struct scrub_job dj = { .lock = &lock, .st = st };
		uint64_t missing = 0;

		rc = repl_repo_get_manifest(r, snaps[i].key, NULL, &m);
		if (rc == -ENOENT)
			continue;
		if (rc < 0) {
			damage(&dj, "%s", kl_errmsg());
			continue;
		}
		st->objects_checked++;
		st->snapshots_done++;
		for (uint64_t k = 0; k < m.ndata; k++)
			if (!repl_map_get(&r->map, m.ids[k]))
				missing++;
		if (missing)
			damage(&dj, "snapshot '%s': %llu chunks are in no index (first at offset "
			       "%llu)", m.name, (unsigned long long)missing,
			       (unsigned long long)m.pos[0] * m.chunk_size);
		repl_manifest_release(&m);
	}
	rc = 0;
	/* every blob of every indexed pack */
	order = kl_calloc(r->nall + 1, sizeof(*order));
	jobs = kl_calloc(r->npacks + 1, sizeof(*jobs));
	if (!order || !jobs) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < r->nall; i++)
		order[i] = &r->all[i];
	qsort(order, r->nall, sizeof(*order), cmp_loc_pack);
	for (size_t i = 0; i < r->nall;) {
		size_t k = i;

		while (k < r->nall && order[k]->pack == order[i]->pack)
			k++;
		jobs[njobs++] = (struct scrub_job){ r, order[i]->pack, &order[i], k - i, 0, &lock,
						     st };
		i = k;
	}
	rc = repl_pool_new(repl_s3_connections(r->s3), repl_s3_connections(r->s3), &pool);
	for (size_t i = 0; i < njobs && rc == 0; i++)
		rc = repl_pool_submit(pool, scrub_pack, &jobs[i]);
	if (pool) {
		int rc2 = repl_pool_wait(pool);

		if (rc == 0)
			rc = rc2;
	}
	if (rc == 0 && st->damaged)
		rc = kl_err(-EBADMSG, "%s: %llu damaged objects or chunks", repl_s3_where(r->s3),
			    (unsigned long long)st->damaged);
out:
	repl_pool_free(pool);
	kl_free(order);
	kl_free(jobs);
	repl_s3_objs_free(snaps, nsnaps);
	repl_stats_from_counters(r, st);
	st->seconds = kl_now() - t0;
	repl_repo_close(r);
	return rc;
}
