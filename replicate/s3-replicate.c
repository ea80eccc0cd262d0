/*
 * replicate/s3-replicate.c - keel replicate FILE s3://... and keel restore
 * s3://...@SNAP: chunking, dedup, packing and parallel transfer.
 *
 * The image is read in batches of REPL_BATCH bytes. Each batch goes
 * through three steps: keyed hashes of its chunks on all CPUs, dedup
 * decisions in order on this thread (against the repository's index and
 * what this run already packed), then compression and encryption of the
 * new chunks on all CPUs. New blobs fill pack buffers; a full pack goes to
 * the upload pool, which PUTs the pack and then its index object. The
 * manifest is written last, after every upload succeeded: that PUT is the
 * commit point, so a snapshot is either fully there or invisible.
 */
#define _GNU_SOURCE
#include "replicate/s3_int.h"
#include "convert/convert.h"
#include "format/format.h"

#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REPL_BATCH (16u << 20)
#define ZSTD_LEVEL 3

static int ncpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > 16 ? 16 : (int)n;
}

/* ------------------------------------------------------------------ parallel for */

struct pfor {
	int (*fn)(void *ctx, size_t begin, size_t end);
	void *ctx;
	size_t begin, end;
};

static int pfor_job(void *arg)
{
	struct pfor *p = arg;

	return p->fn(p->ctx, p->begin, p->end);
}

/* Runs fn over [0, n) split into one slice per CPU. */
static int parallel_for(struct repl_pool *cpu, size_t n, int (*fn)(void *, size_t, size_t),
			void *ctx)
{
	struct pfor sl[16];
	int k = ncpus();
	size_t per;

	if (n == 0)
		return 0;
	if (!cpu || k == 1 || n < 4)
		return fn(ctx, 0, n);
	per = KL_DIV_ROUND_UP(n, (size_t)k);
	for (int i = 0; i < k; i++) {
		sl[i].fn = fn;
		sl[i].ctx = ctx;
		sl[i].begin = KL_MIN(n, (size_t)i * per);
		sl[i].end = KL_MIN(n, (size_t)(i + 1) * per);
		if (sl[i].begin < sl[i].end)
			KL_TRY(repl_pool_submit(cpu, pfor_job, &sl[i]));
	}
	return repl_pool_wait(cpu);
}

/* ------------------------------------------------------------------ replicate state */

struct upload {
	struct repl_repo *r;
	int *failed; /* set by the first failed upload: later ones skip their PUTs */
	uint8_t *buf;
	size_t len;
	struct repl_index ix;
};

struct rep {
	struct repl_repo *r;
	struct repl_s3_stats *st;
	struct repl_pool *net; /* uploads */
	struct repl_pool *cpu; /* hashing, compression */
	int failed;
	uint32_t cs;
	/* the pack being filled */
	uint8_t *pbuf;
	size_t plen, pcap;
	struct repl_index pix;
	size_t pix_cap;
	uint32_t ppi; /* its index in r->packs */
	bool popen;
	/* the batch */
	uint8_t *batch;
	size_t nbatch;			/* chunks in the batch */
	size_t blen[REPL_BATCH / 4096]; /* bytes of each chunk */
	bool zero[REPL_BATCH / 4096];
	uint8_t ids[REPL_BATCH / 4096][REPL_ID_LEN];
	bool isnew[REPL_BATCH / 4096];
	bool reuse[REPL_BATCH / 4096]; /* unchanged since prev: id copied, not read */
	/* incremental: the previous snapshot's manifest and what changed since */
	const struct repl_manifest *prev;
	uint8_t *changed; /* bitmap over chunk positions */
	uint64_t prev_k;  /* cursor into prev->pos */
	uint64_t chunks_reused;
	uint8_t *blobs[REPL_BATCH / 4096];
	size_t bloblen[REPL_BATCH / 4096];
};

static int upload_job(void *arg)
{
	struct upload *u = arg;
	struct repl_repo *r = u->r;
	char *pk = repl_key_pack(u->ix.pack), *ik = repl_key_index(u->ix.pack);
	uint8_t *ib = NULL, *sealed = NULL;
	size_t ibl = 0, sl = 0;
	char hex[2 * REPL_ID_LEN + 1];
	int rc = -ENOMEM;

	repl_s3_hex(u->ix.pack, REPL_ID_LEN, hex);
	if (!pk || !ik)
		goto out;
	if (__atomic_load_n(u->failed, __ATOMIC_RELAXED)) {
		rc = 0; /* the run already failed: just free */
		goto out;
	}
	/* pack first, index second: an index never names a missing pack */
	rc = kl_io_event("s3.pack_put");
	if (!rc)
		rc = repl_s3_put(r->s3, pk, u->buf, u->len);
	if (!rc)
		rc = repl_index_encode(&u->ix, &ib, &ibl);
	if (!rc)
		rc = repl_obj_seal(&r->keys, REPL_OBJ_INDEX, hex, ib, ibl, &sealed, &sl);
	if (!rc)
		rc = repl_s3_put(r->s3, ik, sealed, sl);
	if (!rc && r->cache) {
		char *cf = kl_asprintf("%s/%s", r->cache, hex);
		struct kl_file *f;

		if (cf && kl_io_open(cf, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC, &f) == 0) {
			if (kl_io_pwrite(f, 0, sealed, sl) < 0) {
				kl_io_close(f);
				kl_io_unlink(cf);
			} else {
				kl_io_close(f);
			}
		}
		kl_free(cf);
		kl_err_clear();
	}
out:
	if (rc < 0)
		__atomic_store_n(u->failed, 1, __ATOMIC_RELAXED);
	kl_free(pk);
	kl_free(ik);
	kl_free(ib);
	kl_free(sealed);
	kl_free(u->buf);
	repl_index_release(&u->ix);
	kl_free(u);
	return rc;
}

static int pack_open(struct rep *p)
{
	uint8_t id[REPL_ID_LEN];

	KL_TRY(repl_s3_random(id, sizeof(id)));
	p->pcap = REPL_PACK_TARGET + repl_blob_bound(p->cs) + REPL_PACK_HDR;
	p->pbuf = kl_malloc(p->pcap);
	if (!p->pbuf)
		return -ENOMEM;
	memcpy(p->pbuf, REPL_PACK_MAGIC, REPL_PACK_HDR);
	p->plen = REPL_PACK_HDR;
	memset(&p->pix, 0, sizeof(p->pix));
	memcpy(p->pix.pack, id, REPL_ID_LEN);
	p->pix_cap = 0;
	KL_TRY(repl_repo_new_pack(p->r, id, kl_wallclock_ns(), &p->ppi));
	p->popen = true;
	return 0;
}

static int pack_close(struct rep *p)
{
	struct upload *u;

	if (!p->popen)
		return 0;
	p->popen = false;
	if (p->pix.n == 0) {
		kl_free(p->pbuf);
		repl_index_release(&p->pix);
		return 0;
	}
	u = kl_calloc(1, sizeof(*u));
	if (!u) {
		kl_free(p->pbuf);
		repl_index_release(&p->pix);
		return -ENOMEM;
	}
	u->r = p->r;
	u->failed = &p->failed;
	u->buf = p->pbuf;
	u->len = p->plen;
	u->ix = p->pix;
	p->pbuf = NULL;
	memset(&p->pix, 0, sizeof(p->pix));
	p->st->packs_uploaded++;
	return repl_pool_submit(p->net, upload_job, u);
}

static int pack_add(struct rep *p, const uint8_t id[REPL_ID_LEN], const uint8_t *blob,
		    size_t len, size_t plain_len)
{
	struct repl_index_entry *e;
	struct repl_loc loc, *old;

	if (p->popen && p->plen + len > p->pcap)
		KL_TRY(pack_close(p));
	if (!p->popen)
		KL_TRY(pack_open(p));
	if (p->pix.n == p->pix_cap) {
		size_t cap = p->pix_cap ? p->pix_cap * 2 : 256;
		struct repl_index_entry *v = kl_realloc(p->pix.e, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		p->pix.e = v;
		p->pix_cap = cap;
	}
	e = &p->pix.e[p->pix.n++];
	memcpy(e->id, id, REPL_ID_LEN);
	e->off = p->plen;
	e->len = (uint32_t)len;
	e->plain_len = (uint32_t)plain_len;
	memcpy(p->pbuf + p->plen, blob, len);
	p->plen += len;
	memcpy(loc.id, id, REPL_ID_LEN);
	loc.pack = p->ppi;
	loc.off = e->off;
	loc.len = e->len;
	loc.plain_len = e->plain_len;
	old = repl_map_get(&p->r->map, id);
	if (old)
		*old = loc; /* the old location was in a condemned pack */
	else
		KL_TRY(repl_map_put(&p->r->map, &loc));
	if (p->plen - REPL_PACK_HDR >= REPL_PACK_TARGET)
		KL_TRY(pack_close(p));
	return 0;
}

static int hash_slice(void *ctx, size_t b, size_t e)
{
	struct rep *p = ctx;

	for (size_t i = b; i < e; i++) {
		const uint8_t *c = p->batch + i * p->cs;

		if (p->reuse[i])
			continue;
		p->zero[i] = kl_is_zero(c, p->blen[i]);
		if (!p->zero[i])
			KL_TRY(repl_hmac(p->r->keys.id, c, p->blen[i], p->ids[i]));
	}
	return 0;
}

static int encode_slice(void *ctx, size_t b, size_t e)
{
	struct rep *p = ctx;
	ZSTD_CCtx *z = ZSTD_createCCtx();
	int rc = 0;

	for (size_t i = b; i < e && rc == 0; i++) {
		if (!p->isnew[i])
			continue;
		p->blobs[i] = kl_malloc(repl_blob_bound(p->blen[i]));
		if (!p->blobs[i]) {
			rc = -ENOMEM;
			break;
		}
		rc = repl_blob_encode(&p->r->keys, p->ids[i], p->batch + i * p->cs, p->blen[i], z,
				      ZSTD_LEVEL, p->blobs[i], &p->bloblen[i]);
	}
	ZSTD_freeCCtx(z);
	return rc;
}

/* Appends (pos, id) to the manifest's data list. */
static int man_add(struct repl_manifest *m, uint64_t *cap, uint64_t pos,
		   const uint8_t id[REPL_ID_LEN])
{
	if (m->ndata == *cap) {
		uint64_t nc = *cap ? *cap * 2 : 4096;
		void *a = kl_realloc(m->pos, (size_t)nc * sizeof(*m->pos));

		if (!a)
			return -ENOMEM;
		m->pos = a;
		a = kl_realloc(m->ids, (size_t)nc * REPL_ID_LEN);
		if (!a)
			return -ENOMEM;
		m->ids = a;
		*cap = nc;
	}
	m->pos[m->ndata] = pos;
	memcpy(m->ids[m->ndata], id, REPL_ID_LEN);
	m->ndata++;
	return 0;
}

/* Reads [off, off+len) of d into buf; ranges the chain calls zero are not read. */
static int read_range(struct blk_dev *d, uint64_t off, uint8_t *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		struct blk_extent e;
		size_t n;

		KL_TRY(blk_block_status_chain(d, off + done, len - done, &e));
		n = (size_t)KL_MIN(e.len, (uint64_t)(len - done));
		if (e.type == BLK_ZERO)
			memset(buf + done, 0, n);
		else
			KL_TRY(blk_pread(d, off + done, buf + done, n));
		done += n;
	}
	return 0;
}

/*
 * Incremental replication of internal snapshots: a chunk position the
 * snapshot diff does not name is unchanged since the previous snapshot,
 * so its id is taken from that snapshot's manifest without reading the
 * chunk, provided the chunk is still in a live pack (else it is read and
 * stored again like any other).
 */
static void mark_reuse(struct rep *p, uint64_t first)
{
	const struct repl_manifest *pm = p->prev;

	for (size_t i = 0; i < p->nbatch; i++) {
		uint64_t pos = first + i;
		struct repl_loc *loc;

		if (p->changed[pos / 8] & (1u << (pos % 8)))
			continue;
		while (p->prev_k < pm->ndata && pm->pos[p->prev_k] < pos)
			p->prev_k++;
		if (p->prev_k < pm->ndata && pm->pos[p->prev_k] == pos) {
			loc = repl_map_get(&p->r->map, pm->ids[p->prev_k]);
			if (!loc || p->r->packs[loc->pack].condemned)
				continue;
			memcpy(p->ids[i], pm->ids[p->prev_k], REPL_ID_LEN);
			p->zero[i] = false;
		} else {
			p->zero[i] = true;
		}
		p->reuse[i] = true;
		p->chunks_reused++;
	}
}

struct diff_ctx {
	uint8_t *bits;
	uint64_t nchunks;
	uint32_t cs;
};

static int diff_cb(void *opaque, const struct blk_extent *e)
{
	struct diff_ctx *c = opaque;
	uint64_t a, b;

	if (!e->len)
		return 0;
	a = e->off / c->cs;
	b = KL_MIN((e->off + e->len - 1) / c->cs, c->nchunks - 1);
	for (uint64_t k = a; k <= b && k < c->nchunks; k++)
		c->bits[k / 8] |= (uint8_t)(1u << (k % 8));
	return 0;
}

/*
 * Fills p->changed with the chunk positions that differ between snapshots
 * prev and cur of image, from metadata. Returns 0 when the format cannot
 * tell (then everything is read), 1 when p->changed is valid.
 */
static int load_diff(struct rep *p, const char *image, const struct repl_s3_replicate_opts *ro,
		     const struct repl_manifest *prev, const char *cur, uint64_t vsize,
		     const uint8_t uuid[16])
{
	struct blk_open_opts bo = { .format = ro->format, .flags = ro->open_flags,
				    .key = ro->image_key, .key_len = ro->image_key_len };
	struct diff_ctx c = { .cs = p->cs, .nchunks = KL_DIV_ROUND_UP(vsize, p->cs) };
	struct blk_dev *top = NULL;
	int rc;

	if (!prev || prev->vsize != vsize || prev->chunk_size != p->cs ||
	    kl_uuid_is_null(uuid) || memcmp(prev->uuid, uuid, 16))
		return 0;
	c.bits = kl_calloc(c.nchunks / 8 + 1, 1);
	if (!c.bits)
		return -ENOMEM;
	rc = blk_open(image, &bo, &top);
	if (rc == 0)
		rc = blk_snapshot_diff(top, prev->name, cur, diff_cb, &c);
	blk_close(top);
	if (rc < 0) {
		kl_free(c.bits);
		kl_err_clear();
		return 0; /* no diff from metadata: read everything */
	}
	kl_free(p->changed);
	p->changed = c.bits;
	return 1;
}

/*
 * One pass over the image: fills m (data positions and ids) and uploads
 * every chunk that has no live location yet.
 */
static int walk_image(struct rep *p, struct blk_dev *d, struct repl_manifest *m,
		      struct kl_progress *prog)
{
	uint64_t vsize = blk_size(d), off = 0, mcap = 0;
	int rc = 0;

	m->ndata = 0;
	while (off < vsize) {
		struct blk_extent e;
		size_t blen = (size_t)KL_MIN((uint64_t)REPL_BATCH, vsize - off);

		/* a long zero range: skip whole chunks without reading */
		rc = blk_block_status_chain(d, off, vsize - off, &e);
		if (rc < 0)
			return rc;
		if (e.type == BLK_ZERO && e.len >= p->cs) {
			uint64_t skip = e.len - e.len % p->cs;

			if (off + skip >= vsize)
				skip = vsize - off;
			p->st->chunks_zero += KL_DIV_ROUND_UP(skip, p->cs);
			off += skip;
			kl_progress_add(prog, skip);
			continue;
		}
		p->nbatch = KL_DIV_ROUND_UP(blen, p->cs);
		for (size_t i = 0; i < p->nbatch; i++) {
			p->blen[i] = KL_MIN((size_t)p->cs, blen - i * p->cs);
			p->isnew[i] = false;
			p->blobs[i] = NULL;
			p->reuse[i] = false;
		}
		if (p->prev)
			mark_reuse(p, off / p->cs);
		for (size_t i = 0; i < p->nbatch;) {
			size_t j = i;

			if (p->reuse[i]) {
				i++;
				continue;
			}
			while (j < p->nbatch && !p->reuse[j])
				j++;
			rc = read_range(d, off + i * p->cs, p->batch + i * p->cs,
					(j - 1) * p->cs + p->blen[j - 1] - i * p->cs);
			if (rc < 0)
				return rc;
			i = j;
		}
		rc = parallel_for(p->cpu, p->nbatch, hash_slice, p);
		if (rc < 0)
			return rc;
		/* dedup in order, so a chunk repeated in the batch is new only once */
		for (size_t i = 0; i < p->nbatch; i++) {
			struct repl_loc *loc;
			bool dup = false;

			if (p->zero[i]) {
				p->st->chunks_zero++;
				continue;
			}
			p->st->chunks_total++;
			loc = repl_map_get(&p->r->map, p->ids[i]);
			for (size_t k = 0; k < i && !dup; k++)
				dup = p->isnew[k] && !memcmp(p->ids[k], p->ids[i], REPL_ID_LEN);
			if (dup || (loc && !p->r->packs[loc->pack].condemned))
				p->st->chunks_skipped++;
			else
				p->isnew[i] = true;
		}
		rc = parallel_for(p->cpu, p->nbatch, encode_slice, p);
		for (size_t i = 0; i < p->nbatch && rc == 0; i++) {
			if (p->zero[i])
				continue;
			rc = man_add(m, &mcap, off / p->cs + i, p->ids[i]);
			if (rc < 0 || !p->isnew[i])
				continue;
			rc = pack_add(p, p->ids[i], p->blobs[i], p->bloblen[i], p->blen[i]);
			p->st->chunks_new++;
			p->st->bytes_new += p->blen[i];
		}
		for (size_t i = 0; i < p->nbatch; i++) {
			kl_free(p->blobs[i]);
			p->blobs[i] = NULL;
		}
		if (rc < 0)
			return rc;
		p->st->bytes_scanned += blen;
		off += blen;
		kl_progress_add(prog, blen);
	}
	return 0;
}

/* True when some chunk of m now lives only in a condemned pack. */
static bool uses_condemned(struct repl_repo *r, const struct repl_manifest *m)
{
	for (uint64_t i = 0; i < m->ndata; i++) {
		struct repl_loc *loc = repl_map_get(&r->map, m->ids[i]);

		if (!loc || r->packs[loc->pack].condemned)
			return true;
	}
	return false;
}

static char *base_name(const char *path)
{
	char *c = kl_strdup(path), *b;

	if (!c)
		return NULL;
	b = kl_strdup(basename(c));
	kl_free(c);
	return b;
}

static int replicate_one(struct rep *p, const char *image, const char *spec, const char *name,
			 uint64_t created_ns, const struct repl_s3_replicate_opts *ro,
			 const struct repl_manifest *prev)
{
	struct blk_open_opts bo = { .format = ro->format, .flags = ro->open_flags,
				    .key = ro->image_key, .key_len = ro->image_key_len };
	struct repl_manifest m = { 0 };
	struct blk_dev *d = NULL;
	struct kl_progress *prog = NULL;
	struct blk_identity bid;
	uint8_t *enc = NULL, *sealed = NULL;
	size_t el = 0, sl = 0;
	char *key = NULL, *label = NULL;
	int rc;

	rc = blk_open(spec, &bo, &d);
	if (rc < 0)
		return rc;
	m.name = kl_strdup(name);
	m.image = base_name(image);
	m.format = kl_strdup(blk_format_name(d));
	key = repl_key_manifest(p->r, name);
	label = kl_asprintf("replicating %s", name);
	if (!m.name || !m.image || !m.format || !key || !label) {
		rc = -ENOMEM;
		goto out;
	}
	if (blk_identity(d, &bid) == 0 && (bid.valid & BLK_ID_UUID))
		memcpy(m.uuid, bid.uuid, 16);
	kl_err_clear();
	m.vsize = blk_size(d);
	m.chunk_size = p->cs;
	m.nchunks = KL_DIV_ROUND_UP(m.vsize, p->cs);
	m.created_ns = created_ns;
	rc = load_diff(p, image, ro, prev, name, m.vsize, m.uuid);
	if (rc < 0)
		goto out;
	p->prev = rc == 1 ? prev : NULL;
	for (int attempt = 0;; attempt++) {
		bool changed = false;

		p->prev_k = 0;

		prog = kl_progress_start(label, m.vsize, p->r->o->progress);
		rc = walk_image(p, d, &m, prog);
		if (rc == 0)
			rc = pack_close(p);
		/* everything the manifest names must be stored before it is */
		if (rc == 0)
			rc = repl_pool_wait(p->net);
		kl_progress_finish(prog);
		prog = NULL;
		if (rc < 0)
			goto out;
		/*
		 * Commit check: a prune may have condemned a pack this
		 * snapshot dedups against since we loaded the marks, or even
		 * swept it (deleting the mark too) if this run took longer
		 * than the grace period. Do not reference such a pack: walk
		 * again, which re-uploads those chunks (everything else is
		 * found in the index and skipped).
		 */
		rc = repl_repo_refresh_marks(p->r, &changed);
		/* marks first, then indexes: a sweep deletes indexes before its mark */
		if (rc == 0)
			rc = repl_repo_check_packs(p->r, &changed);
		if (rc < 0)
			goto out;
		if (!changed || !uses_condemned(p->r, &m))
			break;
		if (attempt == 3) {
			rc = kl_err(-EAGAIN,
				    "%s: packs keep being condemned by a concurrent prune; "
				    "try again later",
				    name);
			goto out;
		}
	}
	m.replicated_ns = kl_wallclock_ns();
	if (!m.created_ns)
		m.created_ns = m.replicated_ns;
	rc = repl_manifest_encode(&m, &enc, &el);
	if (rc == 0)
		rc = repl_obj_seal(&p->r->keys, REPL_OBJ_MANIFEST, key + 10, enc, el, &sealed, &sl);
	if (rc == 0)
		rc = kl_io_event("s3.manifest_put");
	if (rc == 0)
		rc = repl_s3_put(p->r->s3, key, sealed, sl);
	if (rc == 0) {
		p->st->snapshots_done++;
		rc = repl_stats_add_name(p->st, name);
	}
out:
	p->prev = NULL;
	kl_free(p->changed);
	p->changed = NULL;
	if (prog)
		kl_progress_finish(prog);
	if (rc < 0)
		kl_err_prefix(rc, "replicating %s as '%s'", spec, name);
	repl_manifest_release(&m);
	kl_free(enc);
	kl_free(sealed);
	kl_free(key);
	kl_free(label);
	blk_close(d);
	return rc;
}

static bool name_ok(const char *n)
{
	size_t l = strlen(n);

	if (l == 0 || l > 255)
		return false;
	for (const char *q = n; *q; q++)
		if ((unsigned char)*q < 0x20 || *q == '@' || *q == 0x7f)
			return false;
	return true;
}

/*
 * Is snapshot name already in the repository? 1 yes (same image: same
 * UUID when the image has one, else the same file name), 0 no; -EEXIST
 * when it is there for another image, or at all when strict.
 */
static int have_snapshot(struct repl_repo *r, const char *name, const char *image,
			 const uint8_t uuid[16], bool strict)
{
	struct repl_manifest m;
	char *key = repl_key_manifest(r, name), *base = base_name(image);
	int rc;

	if (!key || !base) {
		kl_free(key);
		kl_free(base);
		return -ENOMEM;
	}
	rc = repl_s3_head(r->s3, key);
	if (rc == -ENOENT) {
		kl_err_clear();
		rc = 0;
		goto out;
	}
	if (rc < 0)
		goto out;
	rc = repl_repo_get_manifest(r, key, name, &m);
	if (rc < 0)
		goto out;
	if (strict || (!kl_uuid_is_null(uuid) ? memcmp(m.uuid, uuid, 16) != 0 :
		       strcmp(m.image, base) != 0))
		rc = strict ? kl_err(-EEXIST, "%s already has a snapshot '%s' (of %s); choose "
				     "another --name", repl_s3_where(r->s3), name, m.image) :
			      kl_err(-EEXIST, "%s already has a snapshot '%s' of another image "
				     "(%s): snapshot names are per repository; rename the "
				     "snapshot or use another prefix", repl_s3_where(r->s3), name,
				     m.image);
	else
		rc = 1;
	repl_manifest_release(&m);
out:
	kl_free(key);
	kl_free(base);
	return rc;
}

int repl_s3_replicate(const char *image, const struct repl_s3_opts *o,
		      const struct repl_s3_replicate_opts *ro, struct repl_s3_stats *st)
{
	struct blk_open_opts bo = { .format = ro->format, .flags = ro->open_flags,
				    .key = ro->image_key, .key_len = ro->image_key_len };
	struct blk_snapshot_info *snaps = NULL;
	struct blk_dev *d = NULL;
	struct rep *p = NULL;
	struct repl_repo *r = NULL;
	size_t nsnaps = 0;
	char *defname = NULL;
	const char *prev_name = NULL;
	uint8_t img_uuid[16] = { 0 };
	double t0 = kl_now();
	int rc;

	memset(st, 0, sizeof(*st));
	rc = blk_open(image, &bo, &d);
	if (rc < 0)
		return rc;
	{
		struct blk_identity bid;

		if (blk_identity(d, &bid) == 0 && (bid.valid & BLK_ID_UUID))
			memcpy(img_uuid, bid.uuid, 16);
		kl_err_clear();
	}
	rc = blk_snapshot_list(d, &snaps, &nsnaps);
	if (rc == -ENOTSUP || rc == -ENOENT) {
		kl_err_clear();
		rc = 0;
		nsnaps = 0;
	}
	blk_close(d);
	if (rc < 0)
		return rc;
	if (ro->name && !name_ok(ro->name)) {
		rc = kl_err(-EINVAL, "bad snapshot name '%s' (1-255 characters, no '@')", ro->name);
		goto out;
	}
	if (!ro->name) {
		char *b = base_name(image);
		time_t t = (time_t)(kl_wallclock_ns() / 1000000000ULL);
		struct tm tm;
		char date[32];

		gmtime_r(&t, &tm);
		strftime(date, sizeof(date), "%Y-%m-%dT%H%M%SZ", &tm);
		defname = b ? kl_asprintf("%s-%s", b, date) : NULL;
		kl_free(b);
		if (!defname) {
			rc = -ENOMEM;
			goto out;
		}
	}
	rc = repl_repo_open(o, ro->init, &r, st);
	if (rc < 0)
		goto out;
	rc = repl_repo_load_index(r, false, NULL);
	if (rc < 0)
		goto out;
	p = kl_calloc(1, sizeof(*p));
	if (!p) {
		rc = -ENOMEM;
		goto out;
	}
	p->r = r;
	p->st = st;
	p->cs = r->cfg.chunk_size;
	if (p->cs > REPL_BATCH / 4 || REPL_BATCH / p->cs > KL_ARRAY_SIZE(p->blen)) {
		rc = kl_err(-ENOTSUP, "chunk size %u is not supported by this keel", p->cs);
		goto out;
	}
	p->batch = kl_aligned_alloc(REPL_BATCH);
	if (!p->batch) {
		rc = -ENOMEM;
		goto out;
	}
	rc = repl_pool_new(repl_s3_connections(r->s3), repl_s3_connections(r->s3), &p->net);
	if (rc == 0 && ncpus() > 1)
		rc = repl_pool_new(ncpus(), ncpus(), &p->cpu);
	if (rc < 0)
		goto out;
	for (size_t i = 0; i < nsnaps && !ro->current; i++) {
		const char *sn = snaps[i].name && *snaps[i].name ? snaps[i].name : snaps[i].id;
		struct repl_manifest prev = { 0 };
		char *spec, *pkey;

		if (!sn || !name_ok(sn)) {
			rc = kl_err(-EINVAL, "%s: snapshot '%s' has a name keel cannot store",
				    image, sn ? sn : "");
			goto out;
		}
		rc = have_snapshot(r, sn, image, img_uuid, false);
		if (rc < 0)
			goto out;
		if (rc == 1) {
			st->snapshots_skipped++;
			prev_name = sn;
			continue;
		}
		spec = kl_asprintf("%s@%s", image, sn);
		if (!spec) {
			rc = -ENOMEM;
			goto out;
		}
		/* the previous snapshot's manifest, for a diff from metadata */
		if (prev_name) {
			pkey = repl_key_manifest(r, prev_name);
			if (!pkey || repl_repo_get_manifest(r, pkey, prev_name, &prev) < 0)
				memset(&prev, 0, sizeof(prev));
			kl_free(pkey);
			kl_err_clear();
		}
		rc = replicate_one(p, image, spec, sn, snaps[i].date_ns, ro,
				   prev.name ? &prev : NULL);
		repl_manifest_release(&prev);
		kl_free(spec);
		if (rc < 0)
			goto out;
		prev_name = sn;
	}
	if (nsnaps == 0 || ro->current) {
		const char *name = ro->name ? ro->name : defname;

		rc = have_snapshot(r, name, image, img_uuid, true);
		if (rc < 0)
			goto out;
		rc = replicate_one(p, image, image, name, 0, ro, NULL);
	}
out:
	if (p) {
		if (p->net) {
			int rc2 = repl_pool_wait(p->net);

			if (rc == 0)
				rc = rc2;
			repl_pool_free(p->net);
		}
		repl_pool_free(p->cpu);
		if (p->popen) {
			kl_free(p->pbuf);
			repl_index_release(&p->pix);
		}
		st->chunks_reused = p->chunks_reused;
		kl_free(p->changed);
		kl_free(p->batch);
		kl_free(p);
	}
	repl_stats_from_counters(r, st);
	st->seconds = kl_now() - t0;
	repl_repo_close(r);
	blk_snapshot_list_free(snaps, nsnaps);
	kl_free(defname);
	return rc;
}

/* ------------------------------------------------------------------ restore */

struct ref {
	uint32_t pack;
	uint32_t len, plain_len;
	uint64_t off; /* in the pack */
	uint64_t pos; /* chunk position in the image */
	const uint8_t *id;
};

struct seg {
	struct rst *rs;
	size_t first, count; /* refs */
};

struct rst {
	struct repl_repo *r;
	struct blk_dev *out;
	struct ref *refs;
	uint32_t cs;
	uint64_t vsize;
	pthread_mutex_t lock;
	struct kl_progress *prog;
	uint64_t written;
	int failed; /* set by the first failed segment: later ones do nothing */
};

static int cmp_ref(const void *a, const void *b)
{
	const struct ref *x = a, *y = b;

	if (x->pack != y->pack)
		return x->pack < y->pack ? -1 : 1;
	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int seg_job(void *arg)
{
	struct seg *s = arg;
	struct rst *rs = s->rs;
	struct ref *f = &rs->refs[s->first], *l = &rs->refs[s->first + s->count - 1];
	uint64_t start = f->off, end = l->off + l->len;
	char *key = repl_key_pack(rs->r->packs[f->pack].id);
	uint8_t *buf = NULL, *plain = kl_malloc(rs->cs);
	int rc = 0;

	if (!key || !plain) {
		rc = -ENOMEM;
		goto out;
	}
	if (__atomic_load_n(&rs->failed, __ATOMIC_RELAXED))
		goto out;
	if (conv_interrupted()) {
		rc = kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
		goto out;
	}
	rc = repl_s3_get_range(rs->r->s3, key, start, end - start, &buf);
	if (rc < 0)
		goto out;
	for (size_t i = 0; i < s->count && rc == 0; i++) {
		struct ref *x = &rs->refs[s->first + i];

		/* the same chunk at several positions is decoded once */
		if (i == 0 || x->off != x[-1].off)
			rc = repl_blob_decode(&rs->r->keys, x->id, buf + (x->off - start), x->len,
					      plain, x->plain_len);
		if (rc < 0) {
			kl_err_prefix(rc, "%s/%s at %llu", repl_s3_where(rs->r->s3), key,
				      (unsigned long long)x->off);
			break;
		}
		pthread_mutex_lock(&rs->lock);
		{
			uint64_t at = x->pos * rs->cs;
			size_t n = (size_t)KL_MIN((uint64_t)x->plain_len, rs->vsize - at);

			rc = blk_pwrite(rs->out, at, plain, n);
			rs->written += n;
		}
		pthread_mutex_unlock(&rs->lock);
		kl_progress_add(rs->prog, x->plain_len);
	}
out:
	if (rc < 0)
		__atomic_store_n(&rs->failed, 1, __ATOMIC_RELAXED);
	kl_free(key);
	kl_free(buf);
	kl_free(plain);
	return rc;
}

static int verify_output(struct rst *rs, const struct repl_manifest *m, const char *path,
			 const char *fmt)
{
	struct blk_open_opts vo = { .format = fmt };
	struct blk_dev *v;
	uint8_t *buf = kl_malloc(rs->cs), mac[REPL_ID_LEN];
	uint64_t k = 0;
	int rc;

	if (!buf)
		return -ENOMEM;
	rc = blk_open(path, &vo, &v);
	if (rc < 0) {
		kl_free(buf);
		return rc;
	}
	for (uint64_t pos = 0; pos < m->nchunks && rc == 0; pos++) {
		uint64_t at = pos * rs->cs;
		size_t n = (size_t)KL_MIN((uint64_t)rs->cs, m->vsize - at);
		bool data = k < m->ndata && m->pos[k] == pos;

		if (!data) {
			struct blk_extent e;

			/* a zero position: cheap when the output says so */
			rc = blk_block_status_chain(v, at, n, &e);
			if (rc == 0 && e.type == BLK_ZERO && e.len >= n)
				continue;
		}
		rc = blk_pread(v, at, buf, n);
		if (rc < 0)
			break;
		if (!data) {
			if (!kl_is_zero(buf, n))
				rc = kl_err(-EBADMSG, "verify: %s is not zero at %llu", path,
					    (unsigned long long)at);
			continue;
		}
		rc = repl_hmac(rs->r->keys.id, buf, n, mac);
		if (rc == 0 && memcmp(mac, m->ids[k], REPL_ID_LEN))
			rc = kl_err(-EBADMSG, "verify: %s differs from snapshot '%s' at %llu", path,
				    m->name, (unsigned long long)at);
		k++;
	}
	blk_close(v);
	kl_free(buf);
	return rc;
}

static char *temp_name(const char *dst)
{
	char *c1 = kl_strdup(dst), *c2 = kl_strdup(dst), *t = NULL;

	if (c1 && c2)
		t = kl_asprintf("%s/.%s.keel-tmp.%ld", dirname(c1), basename(c2), (long)getpid());
	kl_free(c1);
	kl_free(c2);
	return t;
}

int repl_s3_restore(const struct repl_s3_opts *o, const char *snap, const char *fmt,
		    const char *out, bool verify, struct repl_s3_stats *st)
{
	struct blk_open_opts dop = { .format = fmt, .flags = BLK_OPEN_RDWR };
	struct blk_create_opts co = { 0 };
	struct repl_manifest m = { 0 };
	struct repl_repo *r = NULL;
	struct repl_pool *pool = NULL;
	struct seg *segs = NULL;
	struct rst rs = { 0 };
	struct stat sb;
	size_t nsegs = 0;
	char *key = NULL, *tmp = NULL;
	double t0 = kl_now();
	bool created = false;
	int rc;

	memset(st, 0, sizeof(*st));
	pthread_mutex_init(&rs.lock, NULL);
	if (!fmt)
		return kl_err(-EINVAL, "an output format is needed (-O)");
	if (stat(out, &sb) == 0)
		return kl_err(-EEXIST, "%s already exists; restore never overwrites", out);
	rc = repl_repo_open(o, false, &r, st);
	if (rc < 0)
		goto done;
	if (!snap)
		snap = r->url.snapshot;
	if (!snap) {
		rc = kl_err(-EINVAL, "which snapshot? use %s@NAME", o->url);
		goto done;
	}
	key = repl_key_manifest(r, snap);
	tmp = temp_name(out);
	if (!key || !tmp) {
		rc = -ENOMEM;
		goto done;
	}
	rc = repl_repo_get_manifest(r, key, snap, &m);
	if (rc == 0)
		rc = repl_repo_load_index(r, false, NULL);
	if (rc < 0)
		goto done;
	/* locate every chunk before creating anything */
	rs.r = r;
	rs.cs = m.chunk_size;
	rs.vsize = m.vsize;
	rs.refs = kl_calloc(m.ndata ? (size_t)m.ndata : 1, sizeof(*rs.refs));
	if (!rs.refs) {
		rc = -ENOMEM;
		goto done;
	}
	for (uint64_t i = 0; i < m.ndata; i++) {
		struct repl_loc *loc = repl_map_get(&r->map, m.ids[i]);
		char hex[17];

		if (!loc) {
			repl_s3_hex(m.ids[i], 8, hex);
			rc = kl_err(-ENOENT,
				    "%s: snapshot '%s' names chunk %s... at %llu, which no "
				    "index holds (damaged repository: run keel scrub)",
				    repl_s3_where(r->s3), snap, hex,
				    (unsigned long long)(m.pos[i] * m.chunk_size));
			goto done;
		}
		if (loc->plain_len !=
		    KL_MIN((uint64_t)m.chunk_size, m.vsize - m.pos[i] * m.chunk_size)) {
			rc = kl_err(-EUCLEAN, "%s: chunk at %llu has %u bytes, expected %llu",
				    repl_s3_where(r->s3), (unsigned long long)m.pos[i],
				    loc->plain_len,
				    (unsigned long long)KL_MIN((uint64_t)m.chunk_size,
							       m.vsize - m.pos[i] * m.chunk_size));
			goto done;
		}
		rs.refs[i] = (struct ref){ loc->pack, loc->len, loc->plain_len, loc->off, m.pos[i],
					   m.ids[i] };
	}
	qsort(rs.refs, (size_t)m.ndata, sizeof(*rs.refs), cmp_ref);
	/* one ranged GET per run of nearby blobs in a pack, at most 8 MiB */
	segs = kl_calloc(m.ndata ? (size_t)m.ndata : 1, sizeof(*segs));
	if (!segs) {
		rc = -ENOMEM;
		goto done;
	}
	for (size_t i = 0; i < m.ndata; i++) {
		struct seg *s = nsegs ? &segs[nsegs - 1] : NULL;

		if (s) {
			struct ref *f = &rs.refs[s->first], *l = &rs.refs[s->first + s->count - 1];
			struct ref *x = &rs.refs[i];

			if (x->pack == l->pack && x->off >= l->off &&
			    x->off <= l->off + l->len + (256u << 10) &&
			    x->off + x->len - f->off <= (8u << 20)) {
				s->count++;
				continue;
			}
		}
		segs[nsegs++] = (struct seg){ &rs, i, 1 };
	}
	co.size = m.vsize;
	rc = blk_create(tmp, fmt, &co);
	if (rc < 0)
		goto done;
	created = true;
	rc = blk_open(tmp, &dop, &rs.out);
	if (rc < 0)
		goto done;
	rs.prog = kl_progress_start("restoring", m.ndata * m.chunk_size, o->progress);
	rc = repl_pool_new(repl_s3_connections(r->s3), 2 * repl_s3_connections(r->s3), &pool);
	for (size_t i = 0; i < nsegs && rc == 0; i++)
		rc = repl_pool_submit(pool, seg_job, &segs[i]);
	if (pool) {
		int rc2 = repl_pool_wait(pool);

		if (rc == 0)
			rc = rc2;
	}
	kl_progress_finish(rs.prog);
	if (rc == 0)
		rc = blk_flush(rs.out);
	blk_close(rs.out);
	rs.out = NULL;
	if (rc == 0 && verify)
		rc = verify_output(&rs, &m, tmp, fmt);
	if (rc == 0)
		rc = kl_io_rename(tmp, out);
	if (rc == 0) {
		created = false;
		kl_io_sync_dir(out);
		st->snapshots_done = 1;
		st->chunks_total = m.ndata;
		st->chunks_zero = m.nchunks - m.ndata;
		st->bytes_scanned = rs.written;
		rc = repl_stats_add_name(st, snap);
	}
done:
	repl_pool_free(pool);
	if (created)
		kl_io_unlink(tmp);
	kl_free(segs);
	kl_free(rs.refs);
	pthread_mutex_destroy(&rs.lock);
	repl_manifest_release(&m);
	kl_free(key);
	kl_free(tmp);
	repl_stats_from_counters(r, st);
	st->seconds = kl_now() - t0;
	repl_repo_close(r);
	return rc;
}

/* ------------------------------------------------------------------ list */

int repl_s3_list(const struct repl_s3_opts *o, struct repl_s3_snapshot **out, size_t *n)
{
	struct repl_repo *r = NULL;
	struct repl_manifest *ms = NULL;
	struct repl_s3_snapshot *v;
	char **keys = NULL;
	size_t nm = 0;
	int rc;

	*out = NULL;
	*n = 0;
	KL_TRY(repl_repo_open(o, false, &r, NULL));
	rc = repl_repo_load_manifests(r, &ms, &keys, &nm);
	if (rc < 0)
		goto out;
	v = kl_calloc(nm ? nm : 1, sizeof(*v));
	if (!v) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nm; i++) {
		v[i].name = ms[i].name;
		v[i].image = ms[i].image;
		ms[i].name = ms[i].image = NULL;
		v[i].vsize = ms[i].vsize;
		v[i].created_ns = ms[i].created_ns;
		v[i].replicated_ns = ms[i].replicated_ns;
		v[i].chunks = ms[i].ndata;
	}
	*out = v;
	*n = nm;
out:
	repl_manifests_free(ms, keys, nm);
	repl_repo_close(r);
	return rc;
}

void repl_s3_list_free(struct repl_s3_snapshot *list, size_t n)
{
	for (size_t i = 0; list && i < n; i++) {
		kl_free(list[i].name);
		kl_free(list[i].image);
	}
	kl_free(list);
}
