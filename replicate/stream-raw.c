/*
 * replicate/stream-raw.c - the raw store (STREAM-FORMAT.md §9): where a
 * receiver that never holds the key keeps encrypted streams.
 *
 * A .keel image cannot be rebuilt without the key (its cluster encryption
 * binds each blob to the image uuid and file offset, and its metadata
 * checksums are keyed), so a keyless target keeps the records themselves:
 * it checks what it can without the key (framing, CRC-32C, sequence
 * numbers, the resume marks and the trailer's chain digest, which covers
 * every record's header and GCM tag) and stores each verified record as it
 * came. A directory holds one file per complete stream and an index of
 * snapshot guids; the receive in progress lives in partial.kst with its
 * resume state in partial.state. Restoring applies the chain of streams
 * (full, then incrementals) with the key, which authenticates every record.
 */
#include "replicate/repl_int.h"
#include "format/format.h"

#include <dirent.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RAW_MAGIC "keel raw store 1\n"
#define RAW_INDEX_MAGIC "keel raw index 1\n"
#define RAW_STATE_MAGIC "KRST"
#define RAW_STATE_LEN (4 + 4 + 8 + REPL_TOKEN_LEN + 4)
#define RAW_INDEX_MAX (16u << 20)

struct raw_sink {
	char *dir;
	char *partial, *state, *index;
	struct kl_file *f;
	uint64_t len;	/* bytes of partial.kst */
	uint8_t *rec;	/* one record, header and body */
	struct repl_raw_entry *ents;
	size_t nents;
	bool created;
};

static char *raw_path(const char *dir, const char *name)
{
	return kl_asprintf("%s/%s", dir, name);
}

bool repl_raw_is_store(const char *path)
{
	char p[PATH_MAX + 16];
	struct stat sb;

	/* no allocation: a yes/no question must not fail */
	if ((size_t)snprintf(p, sizeof(p), "%s/RAWSTORE", path) >= sizeof(p))
		return false;
	return lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode) && stat(p, &sb) == 0;
}

/* Whole small file into memory (at most max bytes). */
static int slurp(const char *path, size_t max, char **out, size_t *len)
{
	struct kl_file *f;
	uint64_t size;
	char *buf;
	int rc;

	KL_TRY(kl_io_open(path, KL_O_RDONLY, &f));
	rc = kl_io_size(f, &size);
	if (rc == 0 && size > max)
		rc = kl_err(-EUCLEAN, "%s: %llu bytes, more than a raw store file may hold", path,
			    (unsigned long long)size);
	if (rc < 0) {
		kl_io_close(f);
		return rc;
	}
	buf = kl_malloc((size_t)size + 1);
	if (!buf) {
		kl_io_close(f);
		return -ENOMEM;
	}
	rc = kl_io_pread_full(f, 0, buf, (size_t)size, path);
	kl_io_close(f);
	if (rc < 0) {
		kl_free(buf);
		return rc;
	}
	buf[size] = '\0';
	*out = buf;
	*len = (size_t)size;
	return 0;
}

/* Write a small file durably under its final name (temporary name, fsync, rename). */
static int put_file(const char *path, const void *buf, size_t len)
{
	char *tmp = kl_asprintf("%s.tmp", path);
	struct kl_file *f;
	int rc;

	if (!tmp)
		return -ENOMEM;
	rc = kl_io_open(tmp, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC, &f);
	if (rc == 0) {
		rc = kl_io_pwrite(f, 0, buf, len);
		if (rc == 0)
			rc = kl_io_sync(f);
		kl_io_close(f);
	}
	if (rc == 0)
		rc = kl_io_rename(tmp, path);
	if (rc == 0)
		rc = kl_io_sync_dir(path);
	if (rc < 0)
		kl_io_unlink(tmp);
	kl_free(tmp);
	return rc;
}

static int store_uuid(const char *dir, uint8_t uuid[16])
{
	char *p = raw_path(dir, "RAWSTORE"), *buf = NULL;
	size_t len;
	int rc;

	if (!p)
		return -ENOMEM;
	rc = slurp(p, 4096, &buf, &len);
	if (rc == 0 && (strncmp(buf, RAW_MAGIC, strlen(RAW_MAGIC)) != 0 ||
			len < strlen(RAW_MAGIC) + 5 + 32 ||
			strncmp(buf + strlen(RAW_MAGIC), "uuid ", 5) != 0))
		rc = kl_err(-EUCLEAN, "%s: not a keel raw store marker", p);
	if (rc == 0) {
		char hex[33];

		memcpy(hex, buf + strlen(RAW_MAGIC) + 5, 32);
		hex[32] = '\0';
		if (repl_unhex(hex, uuid, 16) < 0)
			rc = kl_err(-EUCLEAN, "%s: bad uuid", p);
	}
	kl_free(buf);
	kl_free(p);
	return rc;
}

int repl_raw_uuid(const char *dir, uint8_t uuid[16])
{
	return store_uuid(dir, uuid);
}

static int store_create(const char *dir)
{
	char text[128], hex[33];
	uint8_t uuid[16];
	char *p;
	int rc;

	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return kl_err(-errno, "%s: cannot make the raw store directory: %s", dir,
			      strerror(errno));
	KL_TRY(repl_random(uuid, 16));
	repl_hex(uuid, 16, hex);
	snprintf(text, sizeof(text), "%suuid %s\n", RAW_MAGIC, hex);
	p = raw_path(dir, "RAWSTORE");
	if (!p)
		return -ENOMEM;
	rc = put_file(p, text, strlen(text));
	kl_free(p);
	return rc;
}

/* ------------------------------------------------------------------ index */

static int parse_index(const char *path, const char *buf, size_t len,
		       struct repl_raw_entry **out, size_t *n)
{
	struct repl_raw_entry *v = NULL;
	size_t cap = 0, cnt = 0, lineno = 1;
	const char *p = buf, *end = buf + len;

	*out = NULL;
	*n = 0;
	if (len < strlen(RAW_INDEX_MAGIC) || strncmp(buf, RAW_INDEX_MAGIC, strlen(RAW_INDEX_MAGIC)))
		return kl_err(-EUCLEAN, "%s: not a raw store index", path);
	p += strlen(RAW_INDEX_MAGIC);
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		char line[1024], g[33], fg[33], nm[2 * 255 + 1], file[64];
		unsigned long long gen, fgen, bytes;
		struct repl_raw_entry *e;
		size_t ll;

		lineno++;
		if (!nl || (ll = (size_t)(nl - p)) >= sizeof(line))
			goto bad;
		memcpy(line, p, ll);
		line[ll] = '\0';
		p = nl + 1;
		if (sscanf(line, "%32s %llu %32s %llu %llu %63s %510s", g, &gen, fg, &fgen, &bytes,
			   file, nm) != 7 || strlen(nm) % 2 || strchr(file, '/'))
			goto bad;
		if (cnt == cap) {
			struct repl_raw_entry *nv;

			cap = cap ? 2 * cap : 16;
			nv = kl_realloc(v, cap * sizeof(*v));
			if (!nv) {
				kl_free(v);
				return -ENOMEM;
			}
			v = nv;
		}
		e = &v[cnt];
		memset(e, 0, sizeof(*e));
		if (repl_unhex(g, e->guid, 16) < 0 || repl_unhex(fg, e->from_guid, 16) < 0 ||
		    repl_unhex(nm, (uint8_t *)e->name, strlen(nm) / 2) < 0)
			goto bad;
		e->name[strlen(nm) / 2] = '\0';
		e->generation = gen;
		e->from_generation = fgen;
		e->bytes = bytes;
		snprintf(e->file, sizeof(e->file), "%s", file);
		cnt++;
	}
	*out = v;
	*n = cnt;
	return 0;
bad:
	kl_free(v);
	return kl_err(-EUCLEAN, "%s: line %zu is malformed", path, lineno);
}

int repl_raw_list(const char *dir, struct repl_raw_entry **out, size_t *n)
{
	char *p = raw_path(dir, "index"), *buf = NULL;
	size_t len;
	struct stat sb;
	int rc;

	*out = NULL;
	*n = 0;
	if (!p)
		return -ENOMEM;
	if (!repl_raw_is_store(dir))
		rc = kl_err(-ENOENT, "%s is not a keel raw store", dir);
	else if (stat(p, &sb) != 0)
		rc = 0; /* no stream yet */
	else if ((rc = slurp(p, RAW_INDEX_MAX, &buf, &len)) == 0)
		rc = parse_index(p, buf, len, out, n);
	kl_free(buf);
	kl_free(p);
	return rc;
}

static int write_index(const char *path, const struct repl_raw_entry *v, size_t n)
{
	size_t cap = strlen(RAW_INDEX_MAGIC) + n * 700 + 1, used;
	char *buf = kl_malloc(cap);
	int rc;

	if (!buf)
		return -ENOMEM;
	used = (size_t)snprintf(buf, cap, "%s", RAW_INDEX_MAGIC);
	for (size_t i = 0; i < n; i++) {
		char g[33], fg[33], nm[2 * 255 + 1];

		repl_hex(v[i].guid, 16, g);
		repl_hex(v[i].from_guid, 16, fg);
		repl_hex((const uint8_t *)v[i].name, strlen(v[i].name), nm);
		used += (size_t)snprintf(buf + used, cap - used, "%s %llu %s %llu %llu %s %s\n", g,
					 (unsigned long long)v[i].generation, fg,
					 (unsigned long long)v[i].from_generation,
					 (unsigned long long)v[i].bytes, v[i].file, nm);
	}
	rc = put_file(path, buf, used);
	kl_free(buf);
	return rc;
}

/* ------------------------------------------------------------------ partial state */

static int read_state(const char *path, struct repl_token *t, uint64_t *len)
{
	char *buf = NULL;
	size_t n;
	int rc;

	KL_TRY(slurp(path, 4096, &buf, &n));
	if (n != RAW_STATE_LEN || memcmp(buf, RAW_STATE_MAGIC, 4) ||
	    get_le32(buf + RAW_STATE_LEN - 4) != kl_crc32c(0, buf, RAW_STATE_LEN - 4))
		rc = kl_err(-EUCLEAN, "%s: damaged resume state", path);
	else
		rc = repl_token_decode((const uint8_t *)buf + 16, REPL_TOKEN_LEN, t);
	if (rc == 0)
		*len = get_le64(buf + 8);
	kl_free(buf);
	return rc;
}

static int write_state(const char *path, const struct repl_token *t, uint64_t len)
{
	uint8_t buf[RAW_STATE_LEN];

	memset(buf, 0, sizeof(buf));
	memcpy(buf, RAW_STATE_MAGIC, 4);
	put_le32(buf + 4, 1);
	put_le64(buf + 8, len);
	repl_token_encode(t, buf + 16);
	put_le32(buf + RAW_STATE_LEN - 4, kl_crc32c(0, buf, RAW_STATE_LEN - 4));
	return put_file(path, buf, sizeof(buf));
}

/* A state left by a finish that committed but could not remove it. */
static bool state_stale(const struct repl_raw_entry *v, size_t n, const struct repl_token *t)
{
	for (size_t i = 0; i < n; i++)
		if (!memcmp(v[i].guid, t->snap_guid, 16))
			return true;
	return false;
}

int repl_raw_status(const char *dir, bool *active, struct repl_token *t)
{
	char *p = raw_path(dir, "partial.state");
	struct stat sb;
	uint64_t len;
	int rc = 0;

	*active = false;
	if (!p)
		return -ENOMEM;
	if (stat(p, &sb) == 0) {
		struct repl_raw_entry *v = NULL;
		size_t n = 0;

		rc = read_state(p, t, &len);
		if (rc == 0)
			rc = repl_raw_list(dir, &v, &n);
		*active = rc == 0 && !state_stale(v, n, t);
		kl_free(v);
	}
	kl_free(p);
	return rc;
}

int repl_raw_abort(const char *dir)
{
	char *st = raw_path(dir, "partial.state"), *pk = raw_path(dir, "partial.kst");
	struct stat sb;
	int rc = 0;

	if (!st || !pk)
		rc = -ENOMEM;
	else if (stat(st, &sb) != 0 && stat(pk, &sb) != 0)
		rc = kl_err(-ENOENT, "%s: no receive in progress", dir);
	else {
		kl_io_unlink(st);
		kl_io_unlink(pk);
		rc = kl_io_sync_dir(st);
	}
	kl_free(st);
	kl_free(pk);
	return rc;
}

/* ------------------------------------------------------------------ the sink */

static int raw_begin(struct repl_rx *rx)
{
	struct raw_sink *k = rx->sink;
	const struct repl_hdr *h = &rx->h;
	struct stat sb;
	bool have_from = false;

	if (!(h->flags & REPL_HF_KEYED) || !(h->flags & REPL_HF_RAW))
		return kl_err(-EPERM, "%s: a raw store keeps encrypted streams only: send with a "
			      "key and --raw", k->dir);
	if (!repl_raw_is_store(k->dir)) {
		if (h->flags & (REPL_HF_INCREMENTAL | REPL_HF_RESUME))
			return kl_err(-ESTALE, "%s is not a raw store: an incremental or resumed "
				      "stream needs one", k->dir);
		if (lstat(k->dir, &sb) == 0) {
			DIR *dd = S_ISDIR(sb.st_mode) ? opendir(k->dir) : NULL;
			struct dirent *de;
			int entries = 0;

			while (dd && (de = readdir(dd)))
				entries += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
			if (dd)
				closedir(dd);
			if (!S_ISDIR(sb.st_mode) || entries)
				return kl_err(-EEXIST, "%s exists and is not a raw store", k->dir);
		}
		KL_TRY(store_create(k->dir));
		k->created = true;
	}
	KL_TRY(store_uuid(k->dir, rx->target_uuid));
	KL_TRY(repl_raw_list(k->dir, &k->ents, &k->nents));
	if (h->flags & REPL_HF_RESUME) {
		struct repl_token want, t;
		uint64_t len;

		if (stat(k->state, &sb) != 0)
			return kl_err(-EPERM, "%s: no interrupted receive to resume", k->dir);
		KL_TRY(read_state(k->state, &t, &len));
		repl_token_from_hdr(&want, h);
		if (!repl_token_same_stream(&t, &want) || t.next_seq != h->resume_seq ||
		    t.offset != h->resume_off || memcmp(t.digest, h->resume_digest, 32) ||
		    memcmp(t.target_uuid, h->target_uuid, 16) ||
		    memcmp(t.target_uuid, rx->target_uuid, 16))
			return kl_err(-EPERM, "%s: the resumed stream does not continue the receive "
				      "in progress", k->dir);
		rx->stored = t;
		rx->have_stored = true;
		rx->checkpointed = true;
		if (stat(k->partial, &sb) != 0) {
			/* a finish that failed after renaming the stream: take it back */
			char g[33], file[64], *final;

			repl_hex(h->snap_guid, 16, g);
			snprintf(file, sizeof(file), "s-%s.kst", g);
			final = raw_path(k->dir, file);
			if (!final)
				return -ENOMEM;
			if (stat(final, &sb) == 0)
				kl_io_rename(final, k->partial);
			kl_free(final);
		}
		KL_TRY(kl_io_open(k->partial, KL_O_RDWR, &k->f));
		KL_TRY(kl_io_truncate(k->f, len));
		k->len = len;
		rx->data_bytes = t.bytes;
		return 0;
	}
	if (stat(k->state, &sb) == 0) {
		struct repl_token t;
		uint64_t len;
		char text[REPL_TOKEN_TEXT];

		KL_TRY(read_state(k->state, &t, &len));
		if (state_stale(k->ents, k->nents, &t)) {
			kl_io_unlink(k->state);
			goto fresh;
		}
		repl_token_to_text(&t, text);
		return kl_err(-EBUSY, "%s: an interrupted receive is waiting: continue it with keel "
			      "send --resume %s, or drop it with keel recv --abort", k->dir, text);
	}
fresh:
	for (size_t i = 0; i < k->nents; i++) {
		if (!memcmp(k->ents[i].guid, h->snap_guid, 16))
			return kl_err(-EEXIST, "%s already holds snapshot '%s'", k->dir,
				      k->ents[i].name);
		have_from |= !memcmp(k->ents[i].guid, h->from_guid, 16);
	}
	if ((h->flags & REPL_HF_INCREMENTAL) && !have_from)
		return kl_err(-ESTALE, "%s does not hold the stream's base snapshot", k->dir);
	if (!(h->flags & REPL_HF_INCREMENTAL) && k->nents)
		return kl_err(-EEXIST, "%s already holds streams: a full stream needs a new store",
			      k->dir);
	KL_TRY(kl_io_open(k->partial, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC, &k->f));
	k->len = 0;
	rx->began_here = true;
	return 0;
}

static int raw_record(struct repl_rx *rx, const uint8_t *hdr, const uint8_t *body,
		      size_t body_len)
{
	struct raw_sink *k = rx->sink;

	/* one write per record */
	if (!k->rec && !(k->rec = kl_malloc(REPL_REC_HDR + REPL_REC_MAX_BODY)))
		return -ENOMEM;
	memcpy(k->rec, hdr, REPL_REC_HDR);
	memcpy(k->rec + REPL_REC_HDR, body, body_len);
	KL_TRY(kl_io_pwrite(k->f, k->len, k->rec, REPL_REC_HDR + body_len));
	k->len += REPL_REC_HDR + body_len;
	return 0;
}

static int raw_checkpoint(struct repl_rx *rx, const struct repl_token *t)
{
	struct raw_sink *k = rx->sink;

	KL_TRY(kl_io_sync(k->f));
	KL_TRY(write_state(k->state, t, k->len));
	rx->stored = *t;
	rx->have_stored = true;
	return 0;
}

static bool index_names(const char *dir, const uint8_t guid[16])
{
	struct repl_raw_entry *v = NULL;
	size_t n = 0;
	bool yes;
	char *keep = kl_strdup(kl_errmsg());

	if (repl_raw_list(dir, &v, &n) < 0)
		n = 0;
	yes = false;
	for (size_t i = 0; i < n; i++)
		yes |= !memcmp(v[i].guid, guid, 16);
	kl_free(v);
	if (keep)
		kl_err(-EIO, "%s", keep); /* the finish's own error is the one to report */
	kl_free(keep);
	return yes;
}

static int raw_finish(struct repl_rx *rx)
{
	struct raw_sink *k = rx->sink;
	struct repl_raw_entry *v, *e;
	char g[33], file[64], *final, *idx;
	int rc;

	KL_TRY(kl_io_sync(k->f));
	kl_io_close(k->f);
	k->f = NULL;
	repl_hex(rx->h.snap_guid, 16, g);
	snprintf(file, sizeof(file), "s-%s.kst", g);
	final = raw_path(k->dir, file);
	v = kl_realloc(k->ents, (k->nents + 1) * sizeof(*v));
	if (v)
		k->ents = v; /* the old array is gone once realloc succeeded */
	if (!final || !v) {
		kl_free(final);
		return -ENOMEM;
	}
	e = &v[k->nents];
	memset(e, 0, sizeof(*e));
	memcpy(e->guid, rx->h.snap_guid, 16);
	e->generation = rx->h.snap_gen;
	memcpy(e->from_guid, rx->h.from_guid, 16);
	e->from_generation = rx->h.from_gen;
	e->bytes = k->len;
	snprintf(e->name, sizeof(e->name), "%s", rx->h.name);
	snprintf(e->file, sizeof(e->file), "%s", file);
	/* the stream under its final name, then the index names it: the index is the commit */
	rc = kl_io_rename(k->partial, final);
	if (rc == 0) {
		rc = kl_io_sync_dir(final);
		idx = rc == 0 ? raw_path(k->dir, "index") : NULL;
		if (rc == 0 && !idx)
			rc = -ENOMEM;
		if (rc == 0)
			rc = write_index(idx, v, k->nents + 1);
		/*
		 * Not committed (the index does not name it): the stream goes back
		 * to being the receive in progress. An index renamed into place
		 * whose directory sync failed already names it: leave it.
		 */
		if (rc < 0 && !index_names(k->dir, rx->h.snap_guid) &&
		    kl_io_rename(final, k->partial) < 0)
			kl_err_clear();
	} else {
		idx = NULL;
	}
	if (rc == 0) {
		k->nents++;
		/* a state left behind is recognized as stale: its snapshot is in the index */
		kl_io_unlink(k->state);
		rc = kl_io_sync_dir(k->state);
	}
	kl_free(idx);
	kl_free(final);
	return rc;
}

static void raw_fail(struct repl_rx *rx, bool keep)
{
	struct raw_sink *k = rx->sink;

	if (k->f) {
		kl_io_close(k->f);
		k->f = NULL;
	}
	if (!keep && rx->began_here) {
		/* nothing durable to resume from, not even a half-written state */
		kl_io_unlink(k->state);
		kl_io_unlink(k->partial);
	} else if (rx->have_stored)
		repl_token_to_text(&rx->stored, rx->st->token);
}

static const struct repl_sink_ops raw_ops = {
	.begin = raw_begin,
	.raw_record = raw_record,
	.checkpoint = raw_checkpoint,
	.finish = raw_finish,
	.fail = raw_fail,
};

static void raw_sink_free(struct raw_sink *k)
{
	if (!k)
		return;
	kl_io_close(k->f);
	kl_free(k->dir);
	kl_free(k->partial);
	kl_free(k->state);
	kl_free(k->index);
	kl_free(k->ents);
	kl_free(k->rec);
	kl_free(k);
}

int repl_raw_sink_init(struct repl_rx *rx, const char *dir)
{
	struct raw_sink *k = kl_calloc(1, sizeof(*k));

	if (!k)
		return -ENOMEM;
	k->dir = kl_strdup(dir);
	k->partial = raw_path(dir, "partial.kst");
	k->state = raw_path(dir, "partial.state");
	if (!k->dir || !k->partial || !k->state) {
		raw_sink_free(k);
		return -ENOMEM;
	}
	rx->sink = k;
	rx->ops = &raw_ops;
	return 0;
}

void repl_raw_sink_free(struct repl_rx *rx)
{
	raw_sink_free(rx->sink);
	rx->sink = NULL;
}

/* ------------------------------------------------------------------ restore */

static int local_has(struct blk_snapshot_info *v, size_t n, const uint8_t guid[16])
{
	for (size_t i = 0; i < n; i++)
		if (!memcmp(v[i].guid, guid, 16))
			return 1;
	return 0;
}

int repl_raw_restore(const char *dir, const char *snap, const char *out, const uint8_t *key,
		     size_t key_len, struct kl_opts *create_opts, bool progress,
		     struct repl_recv_stats *st)
{
	struct repl_raw_entry *v = NULL;
	struct blk_snapshot_info *have = NULL;
	size_t n = 0, nhave = 0, depth = 0, *chain = NULL;
	struct repl_recv_stats one;
	struct stat sb;
	ssize_t cur = -1;
	int rc;

	memset(st, 0, sizeof(*st));
	KL_TRY(repl_raw_list(dir, &v, &n));
	for (size_t i = 0; i < n; i++)
		if (!snap || !strcmp(v[i].name, snap))
			cur = (ssize_t)i; /* the last match: the newest */
	if (cur < 0) {
		rc = kl_err(-ENOENT, "%s holds no snapshot %s%s", dir, snap ? "named " : "",
			    snap ? snap : "yet");
		goto out;
	}
	if (stat(out, &sb) == 0) {
		struct blk_open_opts bo = { .format = "keel", .key = key, .key_len = key_len };
		struct blk_dev *d;

		rc = blk_open(out, &bo, &d);
		if (rc == 0) {
			rc = blk_snapshot_list(d, &have, &nhave);
			blk_close(d);
		}
		if (rc < 0)
			goto out;
	}
	chain = kl_calloc(n + 1, sizeof(*chain));
	if (!chain) {
		rc = -ENOMEM;
		goto out;
	}
	/* from the wanted snapshot back to a full stream, or to one the image has */
	for (;;) {
		const struct repl_raw_entry *e = &v[cur];
		ssize_t from = -1;

		if (local_has(have, nhave, e->guid))
			break;
		if (depth == n) {
			rc = kl_err(-EUCLEAN, "%s: the index has a loop", dir);
			goto out;
		}
		chain[depth++] = (size_t)cur;
		if (repl_guid_zero(e->from_guid)) {
			if (nhave) {
				rc = kl_err(-ESTALE, "%s exists and shares no snapshot with %s", out,
					    dir);
				goto out;
			}
			break;
		}
		for (size_t i = 0; i < n; i++)
			if (!memcmp(v[i].guid, e->from_guid, 16))
				from = (ssize_t)i;
		if (from < 0) {
			rc = kl_err(-EUCLEAN, "%s: the base of '%s' is missing from the store", dir,
				    e->name);
			goto out;
		}
		cur = from;
	}
	rc = 0;
	for (size_t k = depth; rc == 0 && k-- > 0;) {
		const struct repl_raw_entry *e = &v[chain[k]];
		struct repl_recv_opts ro = { .target = out, .key = key, .key_len = key_len,
					     .create_opts = create_opts, .progress = progress };
		struct repl_reader r;
		struct kl_file *f;
		char *p = raw_path(dir, e->file);

		if (!p) {
			rc = -ENOMEM;
			break;
		}
		rc = kl_io_open(p, KL_O_RDONLY, &f);
		kl_free(p);
		if (rc < 0)
			break;
		repl_reader_file(&r, f);
		rc = repl_recv(&r, &ro, &one);
		kl_io_close(f);
		if (rc < 0) {
			kl_err_prefix(rc, "restoring '%s' from %s", e->name, dir);
			break;
		}
		st->created |= one.created;
		st->stream_bytes += one.stream_bytes;
		st->records += one.records;
		st->data_bytes += one.data_bytes;
		st->zero_bytes += one.zero_bytes;
		memcpy(st->guid, one.guid, 16);
		snprintf(st->name, sizeof(st->name), "%s", one.name);
		st->finished = true;
	}
	if (rc == 0 && depth == 0) {
		snprintf(st->name, sizeof(st->name), "%s", v[cur].name);
		st->finished = true;
	}
out:
	kl_free(chain);
	blk_snapshot_list_free(have, nhave);
	kl_free(v);
	return rc;
}
