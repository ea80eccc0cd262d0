/*
 * replicate/s3-repo.c - opening an S3 repository, its in-memory chunk
 * index (with a local cache of the index objects), gc marks and manifests.
 */
#define _GNU_SOURCE
#include "replicate/s3_int.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ chunk map */

static size_t map_slot(const uint8_t id[REPL_ID_LEN], size_t cap)
{
	/* ids are HMAC outputs: any 8 bytes are uniformly distributed */
	return (size_t)get_le64(id) & (cap - 1);
}

static int map_grow(struct repl_chunk_map *m)
{
	size_t cap = m->cap ? m->cap * 2 : 4096;
	struct repl_loc *s = kl_calloc(cap, sizeof(*s));

	if (!s)
		return -ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		struct repl_loc *o = &m->slots[i];
		size_t k;

		if (!o->len)
			continue;
		for (k = map_slot(o->id, cap); s[k].len; k = (k + 1) & (cap - 1))
			;
		s[k] = *o;
	}
	kl_free(m->slots);
	m->slots = s;
	m->cap = cap;
	return 0;
}

int repl_map_put(struct repl_chunk_map *m, const struct repl_loc *loc)
{
	size_t k;

	if ((m->n + 1) * 2 > m->cap)
		KL_TRY(map_grow(m));
	for (k = map_slot(loc->id, m->cap); m->slots[k].len; k = (k + 1) & (m->cap - 1)) {
		if (!memcmp(m->slots[k].id, loc->id, REPL_ID_LEN))
			return 0; /* the first location stays */
	}
	m->slots[k] = *loc;
	m->n++;
	return 1;
}

struct repl_loc *repl_map_get(const struct repl_chunk_map *m, const uint8_t id[REPL_ID_LEN])
{
	if (!m->cap)
		return NULL;
	for (size_t k = map_slot(id, m->cap); m->slots[k].len; k = (k + 1) & (m->cap - 1))
		if (!memcmp(m->slots[k].id, id, REPL_ID_LEN))
			return &m->slots[k];
	return NULL;
}

void repl_map_release(struct repl_chunk_map *m)
{
	kl_free(m->slots);
	memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------------ keys */

char *repl_key_pack(const uint8_t id[REPL_ID_LEN])
{
	char hex[2 * REPL_ID_LEN + 1];

	repl_s3_hex(id, REPL_ID_LEN, hex);
	return kl_asprintf("data/%.2s/%s", hex, hex);
}

char *repl_key_index(const uint8_t id[REPL_ID_LEN])
{
	char hex[2 * REPL_ID_LEN + 1];

	repl_s3_hex(id, REPL_ID_LEN, hex);
	return kl_asprintf("index/%s", hex);
}

char *repl_key_manifest(const struct repl_repo *r, const char *name)
{
	uint8_t mac[REPL_ID_LEN];
	char hex[2 * REPL_ID_LEN + 1];
	char *msg = kl_asprintf("snapshot:%s", name);

	if (!msg)
		return NULL;
	if (repl_hmac(r->keys.name, msg, strlen(msg), mac) < 0) {
		kl_free(msg);
		return NULL;
	}
	kl_free(msg);
	repl_s3_hex(mac, REPL_ID_LEN, hex);
	return kl_asprintf("snapshots/%s", hex);
}

/* ------------------------------------------------------------------ open */

static char *cache_path(const struct repl_s3_opts *o, const uint8_t repo_id[16])
{
	const char *base = o->cache_dir, *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	char hex[33], *dir = NULL, *p;

	if (base && !*base)
		return NULL;
	repl_s3_hex(repo_id, 16, hex);
	if (base)
		dir = kl_asprintf("%s/%s", base, hex);
	else if (xdg && *xdg)
		dir = kl_asprintf("%s/keel/s3/%s", xdg, hex);
	else if (home && *home)
		dir = kl_asprintf("%s/.cache/keel/s3/%s", home, hex);
	if (!dir)
		return NULL;
	/* mkdir -p */
	for (p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		mkdir(dir, 0700);
		*p = '/';
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		kl_free(dir);
		return NULL; /* no cache: everything still works, just slower */
	}
	return dir;
}

int repl_repo_open(const struct repl_s3_opts *o, bool init, struct repl_repo **out,
		   struct repl_s3_stats *st)
{
	struct repl_repo *r = kl_calloc(1, sizeof(*r));
	uint8_t *buf = NULL, enc[REPL_CONFIG_LEN];
	size_t len = 0;
	int rc;

	*out = NULL;
	if (!r)
		return -ENOMEM;
	r->o = o;
	rc = repl_s3_url_parse(o->url, &r->url);
	if (rc < 0)
		goto err;
	rc = repl_s3_new(o, &r->url, &r->s3);
	if (rc < 0)
		goto err;
	rc = repl_s3_get(r->s3, "config", 4096, &buf, &len);
	if (rc == -ENOENT) {
		/* tell "no bucket" from "no repository in the bucket" */
		rc = repl_s3_check_bucket(r->s3);
		if (rc < 0)
			goto err;
		if (!init) {
			rc = kl_err(-ENOENT, "%s is not a keel repository (no config object; "
				    "`keel replicate` creates one)", repl_s3_where(r->s3));
			goto err;
		}
		rc = repl_config_create(o->key, o->key_len, &r->cfg, &r->keys);
		if (rc < 0)
			goto err;
		repl_config_encode(&r->cfg, enc);
		rc = repl_s3_put(r->s3, "config", enc, sizeof(enc));
		if (rc < 0)
			goto err;
		/*
		 * Two first replicates may race to create the repository; the
		 * last config written wins. Read it back and use what is
		 * there: nothing has been encrypted under our key yet.
		 */
		repl_s3_keys_wipe(&r->keys);
		rc = repl_s3_get(r->s3, "config", 4096, &buf, &len);
	}
	if (rc < 0)
		goto err;
	rc = repl_config_decode(buf, len, &r->cfg);
	if (rc < 0) {
		kl_err_prefix(rc, "%s/config", repl_s3_where(r->s3));
		goto err;
	}
	rc = repl_config_unlock(&r->cfg, o->key, o->key_len, &r->keys);
	if (rc < 0) {
		kl_err_prefix(rc, "%s", repl_s3_where(r->s3));
		goto err;
	}
	r->cache = cache_path(o, r->cfg.repo_id);
	kl_free(buf);
	*out = r;
	return 0;
err:
	kl_free(buf);
	if (st)
		repl_stats_from_counters(r, st);
	repl_repo_close(r);
	return rc;
}

void repl_repo_close(struct repl_repo *r)
{
	if (!r)
		return;
	repl_s3_free(r->s3);
	repl_s3_url_release(&r->url);
	repl_s3_keys_wipe(&r->keys);
	repl_map_release(&r->map);
	for (size_t i = 0; i < r->nmarks; i++)
		kl_free(r->marks[i]);
	kl_free(r->marks);
	kl_free(r->packs);
	kl_free(r->sorted);
	kl_free(r->all);
	kl_free(r->cache);
	kl_free(r);
}

/* ------------------------------------------------------------------ parallel fetch */

struct fetch_job {
	struct repl_repo *r;
	const char *key;
	const char *cache_file; /* read from / write to when set */
	uint64_t size;		/* listed size, to validate a cached copy */
	uint64_t mtime;		/* listed LastModified */
	uint8_t *buf;
	size_t len;
	int rc;
	char err[256];
};

static int read_whole(const char *path, uint64_t want, uint8_t **out, size_t *len)
{
	struct kl_file *f;
	uint64_t size;
	uint8_t *b;
	int rc;

	KL_TRY(kl_io_open(path, KL_O_RDONLY, &f));
	rc = kl_io_size(f, &size);
	if (rc == 0 && size != want)
		rc = -ESTALE;
	if (rc < 0) {
		kl_io_close(f);
		return rc;
	}
	b = kl_malloc(size ? (size_t)size : 1);
	if (!b) {
		kl_io_close(f);
		return -ENOMEM;
	}
	rc = kl_io_pread_full(f, 0, b, (size_t)size, path);
	kl_io_close(f);
	if (rc < 0) {
		kl_free(b);
		return rc;
	}
	*out = b;
	*len = (size_t)size;
	return 0;
}

static void write_cache(const char *path, const uint8_t *b, size_t len)
{
	char *tmp = kl_asprintf("%s.tmp.%ld", path, (long)getpid());
	struct kl_file *f;

	if (!tmp)
		return;
	if (kl_io_open(tmp, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC, &f) == 0) {
		int rc = kl_io_pwrite(f, 0, b, len);

		kl_io_close(f);
		if (rc == 0)
			rc = kl_io_rename(tmp, path);
		if (rc < 0)
			kl_io_unlink(tmp);
	}
	kl_free(tmp);
	kl_err_clear();
}

static int fetch_one(void *arg)
{
	struct fetch_job *j = arg;

	if (j->cache_file && read_whole(j->cache_file, j->size, &j->buf, &j->len) == 0)
		return 0;
	kl_err_clear();
	j->rc = repl_s3_get(j->r->s3, j->key, 64u << 20, &j->buf, &j->len);
	if (j->rc < 0) {
		snprintf(j->err, sizeof(j->err), "%s", kl_errmsg());
		return 0; /* the caller decides what a failure means */
	}
	if (j->cache_file)
		write_cache(j->cache_file, j->buf, j->len);
	return 0;
}

/* Fetches n objects in parallel; failures are per job (rc, err). */
static int fetch_many(struct repl_repo *r, struct fetch_job *jobs, size_t n)
{
	struct repl_pool *p;
	int rc;

	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		jobs[i].r = r;
	if (n == 1)
		return fetch_one(&jobs[0]);
	KL_TRY(repl_pool_new(repl_s3_connections(r->s3), 2 * repl_s3_connections(r->s3), &p));
	for (size_t i = 0; i < n; i++) {
		rc = repl_pool_submit(p, fetch_one, &jobs[i]);
		if (rc < 0)
			break;
	}
	rc = repl_pool_wait(p);
	repl_pool_free(p);
	return rc;
}

/* ------------------------------------------------------------------ index */

int repl_repo_new_pack(struct repl_repo *r, const uint8_t id[REPL_ID_LEN], uint64_t mtime,
		       uint32_t *idx)
{
	if (r->npacks == r->cap_packs) {
		size_t cap = r->cap_packs ? r->cap_packs * 2 : 256;
		struct repl_pack *p = kl_realloc(r->packs, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		r->packs = p;
		r->cap_packs = cap;
	}
	if (r->npacks >= UINT32_MAX)
		return kl_err(-EFBIG, "too many packs");
	memset(&r->packs[r->npacks], 0, sizeof(r->packs[0]));
	memcpy(r->packs[r->npacks].id, id, REPL_ID_LEN);
	r->packs[r->npacks].mtime_ns = mtime;
	*idx = (uint32_t)r->npacks++;
	return 0;
}

int repl_repo_add_pack(struct repl_repo *r, const struct repl_index *ix, uint64_t mtime_ns)
{
	uint32_t pi;

	KL_TRY(repl_repo_new_pack(r, ix->pack, mtime_ns, &pi));
	for (size_t i = 0; i < ix->n; i++) {
		struct repl_loc loc;

		memcpy(loc.id, ix->e[i].id, REPL_ID_LEN);
		loc.pack = pi;
		loc.off = ix->e[i].off;
		loc.len = ix->e[i].len;
		loc.plain_len = ix->e[i].plain_len;
		KL_TRY(repl_map_put(&r->map, &loc));
		if (r->keep_all) {
			if (r->nall == r->cap_all) {
				size_t cap = r->cap_all ? r->cap_all * 2 : 4096;
				struct repl_loc *v = kl_realloc(r->all, cap * sizeof(*v));

				if (!v)
					return -ENOMEM;
				r->all = v;
				r->cap_all = cap;
			}
			r->all[r->nall++] = loc;
		}
	}
	return 0;
}

/* qsort_r-free comparison of pack indices by pack id: the repo rides in a global */
static _Thread_local const struct repl_repo *sort_repo;

static int cmp_pack_idx(const void *a, const void *b)
{
	return memcmp(sort_repo->packs[*(const uint32_t *)a].id,
		      sort_repo->packs[*(const uint32_t *)b].id, REPL_ID_LEN);
}

int repl_repo_find_pack(struct repl_repo *r, const uint8_t id[REPL_ID_LEN])
{
	size_t lo = 0, hi;

	/* packs only get appended: rebuild the sorted view when it is stale */
	if (r->nsorted != r->npacks) {
		uint32_t *v = kl_realloc(r->sorted, (r->npacks ? r->npacks : 1) * sizeof(*v));

		if (!v) {
			for (size_t i = 0; i < r->npacks; i++) /* slow path, no memory */
				if (!memcmp(r->packs[i].id, id, REPL_ID_LEN))
					return (int)i;
			return -1;
		}
		for (size_t i = 0; i < r->npacks; i++)
			v[i] = (uint32_t)i;
		sort_repo = r;
		qsort(v, r->npacks, sizeof(*v), cmp_pack_idx);
		r->sorted = v;
		r->nsorted = r->npacks;
	}
	hi = r->nsorted;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = memcmp(r->packs[r->sorted[mid]].id, id, REPL_ID_LEN);

		if (c == 0)
			return (int)r->sorted[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/*
 * Reads the gc marks not applied yet. A condemned pack is never deduped
 * against again, so its chunks' live locations must come from elsewhere:
 * *changed tells the caller a pack it may be using went away.
 */
int repl_repo_refresh_marks(struct repl_repo *r, bool *changed)
{
	struct repl_s3_obj *objs = NULL;
	struct fetch_job *jobs = NULL;
	size_t n = 0, nj = 0;
	int rc;

	if (changed)
		*changed = false;
	KL_TRY(repl_s3_list_keys(r->s3, "gc/", &objs, &n));
	jobs = kl_calloc(n ? n : 1, sizeof(*jobs));
	if (!jobs) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		bool seen = false;

		for (size_t k = 0; k < r->nmarks && !seen; k++)
			seen = !strcmp(r->marks[k], objs[i].key);
		if (!seen)
			jobs[nj++].key = objs[i].key;
	}
	rc = fetch_many(r, jobs, nj);
	if (rc < 0)
		goto out;
	for (size_t i = 0; i < nj; i++) {
		uint8_t (*packs)[REPL_ID_LEN] = NULL, *pt = NULL;
		size_t np = 0, ptl = 0;
		char **m;

		if (jobs[i].rc == -ENOENT)
			continue; /* swept meanwhile */
		if (jobs[i].rc < 0) {
			rc = kl_err(jobs[i].rc, "%s", jobs[i].err);
			goto out;
		}
		rc = repl_obj_open(&r->keys, REPL_OBJ_MARK, jobs[i].key, jobs[i].buf, jobs[i].len,
				   &pt, &ptl);
		if (rc == 0)
			rc = repl_mark_decode(pt, ptl, &packs, &np);
		kl_free(pt);
		if (rc < 0) {
			kl_err_prefix(rc, "%s/%s", repl_s3_where(r->s3), jobs[i].key);
			goto out;
		}
		for (size_t k = 0; k < np; k++) {
			int pi = repl_repo_find_pack(r, packs[k]);

			if (pi >= 0 && !r->packs[pi].condemned) {
				r->packs[pi].condemned = true;
				if (changed)
					*changed = true;
			}
		}
		kl_free(packs);
		m = kl_realloc(r->marks, (r->nmarks + 1) * sizeof(*m));
		if (!m) {
			rc = -ENOMEM;
			goto out;
		}
		r->marks = m;
		r->marks[r->nmarks] = kl_strdup(jobs[i].key);
		if (!r->marks[r->nmarks]) {
			rc = -ENOMEM;
			goto out;
		}
		r->nmarks++;
	}
	rc = 0;
out:
	for (size_t i = 0; jobs && i < nj; i++)
		kl_free(jobs[i].buf);
	kl_free(jobs);
	repl_s3_objs_free(objs, n);
	return rc;
}

static int cmp_id(const void *a, const void *b)
{
	return memcmp(a, b, REPL_ID_LEN);
}

int repl_repo_check_packs(struct repl_repo *r, bool *changed)
{
	struct repl_s3_obj *objs = NULL;
	uint8_t (*ids)[REPL_ID_LEN];
	size_t n = 0, k = 0;

	KL_TRY(repl_s3_list_keys(r->s3, "index/", &objs, &n));
	ids = kl_malloc((n ? n : 1) * REPL_ID_LEN);
	if (!ids) {
		repl_s3_objs_free(objs, n);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++)
		if (!strncmp(objs[i].key, "index/", 6) &&
		    repl_s3_unhex(objs[i].key + 6, ids[k], REPL_ID_LEN) == 0)
			k++;
	repl_s3_objs_free(objs, n);
	qsort(ids, k, REPL_ID_LEN, cmp_id);
	for (size_t i = 0; i < r->npacks; i++) {
		if (r->packs[i].condemned || bsearch(r->packs[i].id, ids, k, REPL_ID_LEN, cmp_id))
			continue;
		r->packs[i].condemned = true;
		*changed = true;
	}
	kl_free(ids);
	return 0;
}

/* Remove cached index copies whose object is no longer in the bucket. */
static void prune_cache(struct repl_repo *r, struct repl_s3_obj *objs, size_t n)
{
	DIR *d;
	struct dirent *de;

	if (!r->cache || !(d = opendir(r->cache)))
		return;
	while ((de = readdir(d))) {
		bool listed = false;

		if (strlen(de->d_name) < 2 * REPL_ID_LEN)
			continue;
		for (size_t i = 0; i < n && !listed; i++)
			listed = !strcmp(objs[i].key + 6, de->d_name);
		if (!listed) {
			char *p = kl_asprintf("%s/%s", r->cache, de->d_name);

			if (p)
				kl_io_unlink(p);
			kl_free(p);
		}
	}
	closedir(d);
	kl_err_clear();
}

int repl_repo_load_index(struct repl_repo *r, bool tolerate, struct repl_s3_stats *st)
{
	struct repl_s3_obj *objs = NULL;
	struct fetch_job *jobs = NULL;
	char **cfiles = NULL;
	size_t n = 0, nj = 0;
	bool dummy;
	int rc;

	KL_TRY(repl_s3_list_keys(r->s3, "index/", &objs, &n));
	jobs = kl_calloc(n ? n : 1, sizeof(*jobs));
	cfiles = kl_calloc(n ? n : 1, sizeof(*cfiles));
	if (!jobs || !cfiles) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		uint8_t id[REPL_ID_LEN];

		/* ignore what is not ours ("index/<64 hex>") */
		if (strncmp(objs[i].key, "index/", 6) ||
		    repl_s3_unhex(objs[i].key + 6, id, REPL_ID_LEN))
			continue;
		jobs[nj].key = objs[i].key;
		jobs[nj].size = objs[i].size;
		jobs[nj].mtime = objs[i].mtime_ns;
		if (r->cache) {
			cfiles[nj] = kl_asprintf("%s/%s", r->cache, objs[i].key + 6);
			jobs[nj].cache_file = cfiles[nj];
		}
		nj++;
	}
	rc = fetch_many(r, jobs, nj);
	if (rc < 0)
		goto out;
	/*
	 * Two passes so that chunks in packs that are live come first in
	 * the map; marks are read before, so condemned packs are known.
	 */
	for (size_t i = 0; i < nj; i++) {
		struct repl_index ix;
		uint8_t *pt = NULL, id[REPL_ID_LEN];
		size_t ptl = 0;

		repl_s3_unhex(jobs[i].key + 6, id, REPL_ID_LEN);
		if (jobs[i].rc == -ENOENT)
			continue; /* removed by a concurrent gc */
		if (jobs[i].rc < 0) {
			rc = kl_err(jobs[i].rc, "%s", jobs[i].err);
			goto out;
		}
		rc = repl_obj_open(&r->keys, REPL_OBJ_INDEX, jobs[i].key + 6, jobs[i].buf,
				   jobs[i].len, &pt, &ptl);
		if (rc == 0) {
			rc = repl_index_decode(pt, ptl, &ix);
			if (rc == 0 && memcmp(ix.pack, id, REPL_ID_LEN)) {
				repl_index_release(&ix);
				rc = kl_err(-EUCLEAN, "index names another pack");
			}
		}
		kl_free(pt);
		if (rc < 0) {
			kl_err_prefix(rc, "%s/%s", repl_s3_where(r->s3), jobs[i].key);
			if (cfiles[i])
				kl_io_unlink(cfiles[i]);
			if (!tolerate)
				goto out;
			if (st) {
				st->damaged++;
				repl_stats_add_name(st, kl_errmsg());
			}
			kl_err_clear();
			rc = 0;
			continue;
		}
		rc = repl_repo_add_pack(r, &ix, jobs[i].mtime);
		repl_index_release(&ix);
		if (rc < 0)
			goto out;
		if (st)
			st->objects_checked++;
	}
	prune_cache(r, objs, n);
	rc = repl_repo_refresh_marks(r, &dummy);
	if (rc < 0)
		goto out;
	/* rebuild the map with live packs first, so lookups prefer them */
	{
		struct repl_chunk_map old = r->map, live = { 0 }, dead = { 0 };

		for (size_t i = 0; i < old.cap && rc >= 0; i++) {
			if (!old.slots[i].len)
				continue;
			rc = repl_map_put(r->packs[old.slots[i].pack].condemned ? &dead : &live,
					  &old.slots[i]);
		}
		for (size_t i = 0; i < dead.cap && rc >= 0; i++)
			if (dead.slots[i].len)
				rc = repl_map_put(&live, &dead.slots[i]);
		repl_map_release(&dead);
		if (rc < 0) {
			repl_map_release(&live);
			goto out;
		}
		repl_map_release(&old);
		r->map = live;
		rc = 0;
	}
out:
	for (size_t i = 0; jobs && i < nj; i++) {
		kl_free(jobs[i].buf);
		kl_free(cfiles[i]);
	}
	kl_free(jobs);
	kl_free(cfiles);
	repl_s3_objs_free(objs, n);
	return rc;
}

/* ------------------------------------------------------------------ manifests */

int repl_repo_get_manifest(struct repl_repo *r, const char *key, const char *name,
			   struct repl_manifest *m)
{
	uint8_t *buf = NULL, *pt = NULL;
	size_t len = 0, ptl = 0;
	int rc;

	rc = repl_s3_get(r->s3, key, REPL_OBJ_MAX_PLAIN, &buf, &len);
	if (rc == -ENOENT && name)
		return kl_err(-ENOENT, "%s has no snapshot '%s'", repl_s3_where(r->s3), name);
	if (rc < 0)
		return rc;
	rc = repl_obj_open(&r->keys, REPL_OBJ_MANIFEST, key + 10, buf, len, &pt, &ptl);
	kl_free(buf);
	if (rc == 0)
		rc = repl_manifest_decode(pt, ptl, m);
	kl_free(pt);
	if (rc < 0)
		return kl_err_prefix(rc, "%s/%s", repl_s3_where(r->s3), key);
	if (name && strcmp(m->name, name)) {
		repl_manifest_release(m);
		return kl_err(-EUCLEAN, "%s/%s: holds snapshot '%s', not '%s'",
			      repl_s3_where(r->s3), key, m->name, name);
	}
	if (m->chunk_size != r->cfg.chunk_size) {
		repl_manifest_release(m);
		return kl_err(-EUCLEAN, "%s/%s: chunk size %u, repository uses %u",
			      repl_s3_where(r->s3), key, m->chunk_size, r->cfg.chunk_size);
	}
	return 0;
}

static int cmp_manifest_time(const void *a, const void *b)
{
	const struct repl_manifest *x = a, *y = b;

	if (x->created_ns != y->created_ns)
		return x->created_ns < y->created_ns ? -1 : 1;
	return strcmp(x->name, y->name);
}

int repl_repo_load_manifests(struct repl_repo *r, struct repl_manifest **out, char ***keys,
			     size_t *n)
{
	struct repl_s3_obj *objs = NULL;
	struct repl_manifest *ms = NULL;
	char **ks = NULL;
	size_t no = 0, k = 0;
	int rc;

	*out = NULL;
	*keys = NULL;
	*n = 0;
	KL_TRY(repl_s3_list_keys(r->s3, "snapshots/", &objs, &no));
	ms = kl_calloc(no ? no : 1, sizeof(*ms));
	ks = kl_calloc(no ? no : 1, sizeof(*ks));
	if (!ms || !ks) {
		rc = -ENOMEM;
		goto err;
	}
	/* small and few: fetched one by one, in the listing's order */
	for (size_t i = 0; i < no; i++) {
		rc = repl_repo_get_manifest(r, objs[i].key, NULL, &ms[k]);
		if (rc == -ENOENT)
			continue; /* pruned meanwhile */
		if (rc < 0)
			goto err;
		ks[k] = kl_strdup(objs[i].key);
		if (!ks[k]) {
			repl_manifest_release(&ms[k]);
			rc = -ENOMEM;
			goto err;
		}
		k++;
	}
	/* sort both arrays by time: manifests carry their key along */
	{
		struct pair {
			struct repl_manifest m;
			char *k;
		} *pv = kl_calloc(k ? k : 1, sizeof(*pv));

		if (!pv) {
			rc = -ENOMEM;
			goto err;
		}
		for (size_t i = 0; i < k; i++) {
			pv[i].m = ms[i];
			pv[i].k = ks[i];
		}
		qsort(pv, k, sizeof(*pv), cmp_manifest_time);
		for (size_t i = 0; i < k; i++) {
			ms[i] = pv[i].m;
			ks[i] = pv[i].k;
		}
		kl_free(pv);
	}
	repl_s3_objs_free(objs, no);
	*out = ms;
	*keys = ks;
	*n = k;
	return 0;
err:
	repl_manifests_free(ms, ks, k);
	repl_s3_objs_free(objs, no);
	return rc;
}

void repl_manifests_free(struct repl_manifest *m, char **keys, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (m)
			repl_manifest_release(&m[i]);
		if (keys)
			kl_free(keys[i]);
	}
	kl_free(m);
	kl_free(keys);
}

int repl_repo_server_time(struct repl_repo *r, uint64_t *ns)
{
	struct repl_s3_req rq = { .method = "HEAD", .key = "config" };
	struct repl_s3_resp rs;

	KL_TRY(repl_s3_request(r->s3, &rq, &rs));
	repl_s3_resp_release(&rs);
	*ns = rs.date_ns ? rs.date_ns : kl_wallclock_ns();
	return 0;
}

/* ------------------------------------------------------------------ stats */

void repl_stats_from_counters(struct repl_repo *r, struct repl_s3_stats *st)
{
	struct repl_s3_counters c;

	if (!r || !r->s3)
		return;
	repl_s3_counters(r->s3, &c);
	st->requests = c.requests;
	st->req_get = c.get;
	st->req_put = c.put;
	st->req_head = c.head;
	st->req_list = c.list;
	st->req_delete = c.del;
	st->retries = c.retries;
	st->bytes_uploaded = c.up;
	st->bytes_downloaded = c.down;
}

int repl_stats_add_name(struct repl_s3_stats *st, const char *name)
{
	char **v = kl_realloc(st->names, (st->nnames + 1) * sizeof(*v));

	if (!v)
		return -ENOMEM;
	st->names = v;
	st->names[st->nnames] = kl_strdup(name);
	if (!st->names[st->nnames])
		return -ENOMEM;
	st->nnames++;
	return 0;
}

void repl_s3_stats_release(struct repl_s3_stats *st)
{
	for (size_t i = 0; i < st->nnames; i++)
		kl_free(st->names[i]);
	kl_free(st->names);
	st->names = NULL;
	st->nnames = 0;
}
