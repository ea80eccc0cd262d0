/*
 * convert/pipeline.c - the parallel copy pipeline behind keel convert.
 *
 * Stages:
 *   walker  (calling thread): block_status over the source chain; ranges
 *           that read as zero (and, with a backing image, are zero there
 *           too) are skipped without reading; every other CONV_CHUNK-sized,
 *           chunk-aligned window becomes a job in a ring of slots.
 *   workers (pool of threads): read the job's window through their own
 *           source handle (handles are not thread-safe, so each worker
 *           opens its own), find zero units, compare with the backing image,
 *           hash 64 KiB blocks for the digest, and encode (compress) data
 *           clusters with blk_encode_cluster when the target supports it.
 *   writer  (calling thread again): commits finished jobs strictly in
 *           sequence (= offset) order: runs of plain data with blk_pwrite,
 *           encoded clusters with blk_write_encoded, zero runs (only over a
 *           backing image) with blk_pwrite_zeroes; feeds the digest.
 *
 * Memory: nslots jobs, each with its buffers (data, backing data, encoded
 * output); nslots is chosen so that they fit in CONV_MEM_BUDGET. Output
 * bytes depend only on the job boundaries (fixed: aligned windows) and on
 * the commit order (fixed: offsets), never on the number of threads.
 */
#define _GNU_SOURCE
#include "convert/conv_int.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum conv_act { ACT_SKIP = 0, ACT_DATA, ACT_ZERO };
enum job_state { JOB_FREE = 0, JOB_QUEUED, JOB_DONE };

struct conv_job {
	enum job_state state;
	uint64_t seq;
	uint64_t off;
	size_t len;
	bool all_data;	   /* the walker saw one DATA extent cover the window */
	bool preread;	   /* the walker read it already (a sequential source) */
	int rc;
	char *msg;	   /* the worker's error message (thread-local there) */
	uint8_t *buf;	   /* source data */
	uint8_t *bbuf;	   /* backing data */
	uint8_t *enc;	   /* nunits * enc_cap */
	ssize_t *enc_len;  /* per unit: encoded length, 0 = plain */
	uint8_t *act;	   /* per unit: enum conv_act */
	uint8_t *kzero;	   /* per 64 KiB block: zero from metadata, not read */
	uint8_t *bzero;	   /* per 64 KiB block: zero (for the digest) */
	uint8_t (*hash)[32]; /* per 64 KiB block */
	uint64_t bytes_read;
	uint64_t zero_skipped;
	uint64_t zero_detected;
};

struct conv_pipe {
	const struct conv_pipe_cfg *c;
	struct conv_stats *st;
	uint32_t unit;	   /* zero-detection / encoding granularity */
	uint64_t dsize;	   /* size the digest describes */
	uint64_t size;	   /* bytes of the source walked */
	uint32_t chunk;
	size_t enc_cap;	   /* per unit, when encoding */
	bool encode;
	struct blk_dev *back; /* the writer's view of the backing image */
	int nworkers;
	bool seq;	   /* the source reads only front to back: the walker reads */
	bool reader;	   /* ...on a thread of its own (reader_main), not the writer's */
	pthread_t reader_tid;
	bool reader_started;
	unsigned nslots;
	struct conv_job *slots;
	struct blk_dev **wsrc;
	struct blk_dev **wback;
	pthread_t *tids;
	int nstarted;
	unsigned slow_ms;  /* KEEL_CONV_SLOW_MS: tests slow each job down */
	bool flip;	   /* KEEL_CONV_TEST_FLIP: tests corrupt one written byte */

	pthread_mutex_t lock;
	pthread_cond_t work_cv;
	pthread_cond_t done_cv;
	pthread_cond_t free_cv;	/* the writer freed a slot (for the reader) */
	bool walk_done;	   /* the reader walked to the end or failed: */
	int walk_rc;	   /* ...how, */
	char *walk_msg;	   /* ...and what it said */
	uint64_t walk_skipped; /* zero bytes the reader skipped, for the writer to count */
	uint64_t next_submit; /* next sequence number the walker hands out */
	uint64_t next_take;   /* next job a worker takes */
	uint64_t next_write;  /* next job the writer commits */
	bool stop;
	struct blk_extent ext; /* the walker's last extent (ext.len 0: none) */
	uint64_t since_writeback;

	EVP_MD_CTX *outer;
	struct kl_progress *prog;
};

int conv_ncpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : (int)KL_MIN(n, 256L);
}

/* ------------------------------------------------------------------ workers */

/*
 * Read [off, off+len) of d into buf; blocks (CONV_BLOCK) that metadata
 * says are zero are zero-filled and flagged in kzero, never read.
 */
static int read_window(struct blk_dev *d, uint64_t off, uint8_t *buf, size_t len, uint8_t *kzero,
		       uint64_t *read_bytes)
{
	uint64_t pos = off, end = off + len;
	size_t nblk = KL_DIV_ROUND_UP(len, CONV_BLOCK);

	memset(kzero, 1, nblk);
	while (pos < end) {
		struct blk_extent e;
		uint64_t n;

		KL_TRY(blk_block_status_chain(d, pos, end - pos, &e));
		n = KL_MIN(e.len, end - pos);
		if (e.type == BLK_ZERO) {
			memset(buf + (pos - off), 0, (size_t)n);
		} else {
			KL_TRY(blk_pread(d, pos, buf + (pos - off), (size_t)n));
			*read_bytes += n;
			for (uint64_t b = (pos - off) / CONV_BLOCK; b * CONV_BLOCK < pos - off + n; b++)
				kzero[b] = 0;
		}
		pos += n;
	}
	return 0;
}

/* Bytes of the target's cluster at off: whole, or what is left of the target. */
static size_t enc_unit_len(const struct conv_pipe *p, uint64_t off)
{
	uint64_t dsize = blk_size(p->c->dst);

	return (size_t)KL_MIN((uint64_t)p->unit, dsize > off ? dsize - off : 0);
}

struct worker_arg {
	struct conv_pipe *p;
	int w;
};

static int job_work(struct conv_pipe *p, int w, struct conv_job *j)
{
	const struct conv_pipe_cfg *c = p->c;
	size_t nblk = KL_DIV_ROUND_UP(j->len, CONV_BLOCK);
	size_t nunit = KL_DIV_ROUND_UP(j->len, p->unit);

	j->zero_skipped = j->zero_detected = 0;
	if (j->preread) {
		/* read by the walker, in order */
	} else if (j->all_data) {
		/* the walker already knows: one pread, no extent queries */
		KL_TRY(blk_pread(p->wsrc[w], j->off, j->buf, j->len));
		j->bytes_read = j->len;
		memset(j->kzero, 0, nblk);
	} else {
		j->bytes_read = 0;
		KL_TRY(read_window(p->wsrc[w], j->off, j->buf, j->len, j->kzero, &j->bytes_read));
	}
	if (p->wback)
		KL_TRY(blk_pread_padded(p->wback[w], j->off, j->bbuf, j->len));
	for (size_t u = 0; u < nunit; u++) {
		size_t uo = u * p->unit;
		size_t ul = KL_MIN((size_t)p->unit, j->len - uo);
		const uint8_t *d = j->buf + uo;
		bool known = true, zero;

		for (size_t b = uo / CONV_BLOCK; b * CONV_BLOCK < uo + ul; b++)
			known = known && j->kzero[b];
		zero = known || kl_is_zero(d, ul);
		if (known)
			j->zero_skipped += ul;
		else if (zero)
			j->zero_detected += ul;
		if (p->wback && memcmp(d, j->bbuf + uo, ul) == 0)
			j->act[u] = ACT_SKIP;
		else if (zero)
			j->act[u] = p->wback || c->zero_fill ? ACT_ZERO : ACT_SKIP;
		else
			j->act[u] = ACT_DATA;
		j->enc_len[u] = 0;
		if (p->encode && j->act[u] == ACT_DATA) {
			size_t el = enc_unit_len(p, j->off + uo);
			ssize_t n;

			/* a target rounded up past the source's end sees zeros there */
			if (el > ul)
				memset(j->buf + uo + ul, 0, el - ul);
			n = blk_encode_cluster(c->dst, j->off + uo, d, el, j->enc + u * p->enc_cap,
					       p->enc_cap);

			if (n < 0)
				return (int)n;
			j->enc_len[u] = n;
		}
	}
	if (c->digest) {
		for (size_t b = 0; b < nblk; b++) {
			uint64_t boff = j->off + b * CONV_BLOCK;
			size_t bl = KL_MIN((size_t)CONV_BLOCK, j->len - b * CONV_BLOCK);
			bool zero = j->kzero[b];

			KL_TRY(conv_block_hash(j->buf + b * CONV_BLOCK, bl, boff, p->dsize, &zero,
					       j->hash[b]));
			j->bzero[b] = zero;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------ digest */

int conv_block_hash(const uint8_t *d, size_t bl, uint64_t boff, uint64_t dsize, bool *zero,
		    uint8_t hash[32])
{
	size_t hl = boff < dsize ? (size_t)KL_MIN((uint64_t)bl, dsize - boff) : 0;

	*zero = *zero || kl_is_zero(d, bl);
	if (*zero)
		return 0;
	if (hl < bl && !kl_is_zero(d + hl, bl - hl)) {
		/* data past the digest size: make the digest differ */
		memset(hash, 0xff, 32);
		return 0;
	}
	if (!EVP_Digest(d, hl, hash, NULL, EVP_sha256(), NULL))
		return kl_err(-ENOMEM, "SHA-256 of the block at %llu failed",
			      (unsigned long long)boff);
	return 0;
}

void conv_digest_record(EVP_MD_CTX *outer, uint64_t boff, const uint8_t hash[32])
{
	uint8_t rec[40];

	put_le64(rec, boff / CONV_BLOCK);
	memcpy(rec + 8, hash, 32);
	EVP_DigestUpdate(outer, rec, sizeof(rec));
}

void conv_digest_final(EVP_MD_CTX *outer, uint64_t dsize, uint8_t out[32])
{
	uint8_t sz[8];
	unsigned int n;

	put_le64(sz, dsize);
	EVP_DigestUpdate(outer, sz, sizeof(sz));
	EVP_DigestFinal_ex(outer, out, &n);
}

/* Run job j on handle set w and publish the result; called without the lock. */
static void run_job(struct conv_pipe *p, int w, struct conv_job *j)
{
	int rc;

	if (p->slow_ms) {
		struct timespec ts = { p->slow_ms / 1000, (long)(p->slow_ms % 1000) * 1000000L };

		nanosleep(&ts, NULL);
	}
	kl_err_clear();
	rc = job_work(p, w, j);
	pthread_mutex_lock(&p->lock);
	j->rc = rc;
	if (rc < 0) {
		kl_free(j->msg);
		j->msg = kl_strdup(kl_errmsg());
	}
	j->state = JOB_DONE;
	pthread_cond_broadcast(&p->done_cv);
	pthread_mutex_unlock(&p->lock);
}

static void *worker_main(void *arg)
{
	struct worker_arg *wa = arg;
	struct conv_pipe *p = wa->p;

	for (;;) {
		struct conv_job *j;

		pthread_mutex_lock(&p->lock);
		while (!p->stop && p->next_take == p->next_submit)
			pthread_cond_wait(&p->work_cv, &p->lock);
		if (p->stop) {
			pthread_mutex_unlock(&p->lock);
			break;
		}
		j = &p->slots[p->next_take % p->nslots];
		p->next_take++;
		pthread_mutex_unlock(&p->lock);
		run_job(p, wa->w, j);
	}
	kl_free(wa);
	return NULL;
}

/* ------------------------------------------------------------------ writer */

static int write_run(struct conv_pipe *p, enum conv_act act, uint64_t off, const uint8_t *d,
		     size_t len)
{
	struct blk_dev *dst = p->c->dst;

	switch (act) {
	case ACT_DATA:
		p->st->bytes_written += len;
		if (p->c->count_only) {
			p->st->bytes_stored += blk_encoded_footprint(dst, 0, len);
			return 0;
		}
		p->st->bytes_stored += len;
		if (p->flip) {
			/* test hook: prove that --verify notices a wrong byte */
			p->flip = false;
			((uint8_t *)d)[0] ^= 0x5a;
		}
		return blk_pwrite(dst, off, d, len);
	case ACT_ZERO:
		if (p->c->count_only)
			return 0;
		return blk_pwrite_zeroes(dst, off, len, 0);
	default:
		return 0;
	}
}

static int job_commit(struct conv_pipe *p, struct conv_job *j)
{
	const struct conv_pipe_cfg *c = p->c;
	size_t nunit = KL_DIV_ROUND_UP(j->len, p->unit);
	size_t run_start = 0, run_len = 0;
	enum conv_act run_act = ACT_SKIP;

	if (j->rc < 0)
		return kl_err(j->rc, "%s", j->msg ? j->msg : kl_strerror(j->rc));
	p->st->bytes_read += j->bytes_read;
	p->st->zero_skipped += j->zero_skipped;
	p->st->zero_detected += j->zero_detected;
	if (c->digest) {
		for (size_t b = 0; b * CONV_BLOCK < j->len; b++)
			if (!j->bzero[b])
				conv_digest_record(p->outer, j->off + b * CONV_BLOCK, j->hash[b]);
	}
	if (!c->dst)
		return 0;
	for (size_t u = 0; u < nunit; u++) {
		size_t uo = u * p->unit;
		size_t ul = KL_MIN((size_t)p->unit, j->len - uo);
		enum conv_act act = j->act[u];

		if (act == ACT_DATA && p->encode && j->enc_len[u] > 0) {
			if (run_len)
				KL_TRY(write_run(p, run_act, j->off + run_start, j->buf + run_start,
						 run_len));
			run_len = 0;
			p->st->bytes_written += ul;
			p->st->bytes_stored += c->count_only ?
				blk_encoded_footprint(c->dst, (size_t)j->enc_len[u], ul) :
				(uint64_t)j->enc_len[u];
			if (!c->count_only)
				KL_TRY(blk_write_encoded(c->dst, j->off + uo, j->enc + u * p->enc_cap,
							 (size_t)j->enc_len[u], j->buf + uo,
							 enc_unit_len(p, j->off + uo)));
			continue;
		}
		/* encoded targets take plain data one cluster at a time, too */
		if (act != run_act || (p->encode && act == ACT_DATA)) {
			if (run_len)
				KL_TRY(write_run(p, run_act, j->off + run_start, j->buf + run_start,
						 run_len));
			run_len = 0;
		}
		if (run_len == 0) {
			run_start = uo;
			run_act = act;
		}
		run_len += ul;
	}
	if (run_len)
		KL_TRY(write_run(p, run_act, j->off + run_start, j->buf + run_start, run_len));
	return 0;
}

/* ------------------------------------------------------------------ walker */

/*
 * Find the next window holding something to copy, at or after *off
 * (chunk-aligned). Ranges that read as zero in the source, and also in
 * the backing image when there is one, are skipped whole chunks at a time.
 * Returns 1 with the window in *joff and *jlen, 0 at the end, or -errno.
 */
static int walk_next(struct conv_pipe *p, uint64_t *off, uint64_t *joff, size_t *jlen,
		     bool *all_data)
{
	const struct conv_pipe_cfg *c = p->c;
	struct blk_dev *src = c->src_dev;
	uint64_t size = p->size;

	while (*off < size) {
		size_t len = (size_t)KL_MIN(size - *off, (uint64_t)p->chunk);
		struct blk_extent e;
		uint64_t zlen, skip;

		/* one extent query answers for every window it covers */
		if (p->ext.len && *off >= p->ext.off && *off < p->ext.off + p->ext.len) {
			e = p->ext;
			e.len = p->ext.off + p->ext.len - *off;
			e.off = *off;
		} else {
			KL_TRY(blk_block_status_chain(src, *off, size - *off, &e));
			p->ext = e;
		}
		*all_data = e.type == BLK_DATA && e.len >= len;
		if (e.type == BLK_ZERO) {
			zlen = e.len;
			if (p->back && *off < blk_size(p->back)) {
				struct blk_extent eb;

				KL_TRY(blk_block_status_chain(p->back, *off, zlen, &eb));
				zlen = eb.type == BLK_ZERO ? KL_MIN(zlen, eb.len) : 0;
			}
			if (*off + zlen >= size)
				skip = size - *off;
			else
				skip = (*off + zlen) / p->chunk * p->chunk - *off;
			if (skip > 0) {
				/* a target that is not zero already gets its zeros */
				if (c->zero_fill && c->dst && !c->count_only)
					KL_TRY(blk_pwrite_zeroes(c->dst, *off, skip,
								 BLK_ZERO_MAY_UNMAP));
				if (p->reader) {
					/* the writer's thread counts it: stats and progress are its */
					pthread_mutex_lock(&p->lock);
					p->walk_skipped += skip;
					pthread_mutex_unlock(&p->lock);
				} else {
					p->st->zero_skipped += skip;
					kl_progress_add(p->prog, skip);
				}
				*off += skip;
				continue;
			}
		}
		*joff = *off;
		*jlen = len;
		*off += len;
		return 1;
	}
	return 0;
}

/* ------------------------------------------------------------------ setup */

static void job_release(struct conv_job *j)
{
	kl_free(j->buf);
	kl_free(j->bbuf);
	kl_free(j->enc);
	kl_free(j->enc_len);
	kl_free(j->act);
	kl_free(j->kzero);
	kl_free(j->bzero);
	kl_free(j->hash);
	kl_free(j->msg);
}

static int job_alloc(struct conv_pipe *p, struct conv_job *j)
{
	size_t nblk = KL_DIV_ROUND_UP(p->chunk, CONV_BLOCK);
	size_t nunit = KL_DIV_ROUND_UP(p->chunk, p->unit);

	j->buf = kl_aligned_alloc(p->chunk);
	j->enc_len = kl_calloc(nunit, sizeof(*j->enc_len));
	j->act = kl_calloc(nunit, 1);
	j->kzero = kl_calloc(nblk, 1);
	j->bzero = kl_calloc(nblk, 1);
	j->hash = kl_calloc(nblk, sizeof(*j->hash));
	if (!j->buf || !j->enc_len || !j->act || !j->kzero || !j->bzero || !j->hash)
		return -ENOMEM;
	if (p->wback && !(j->bbuf = kl_aligned_alloc(p->chunk)))
		return -ENOMEM;
	if (p->encode && !(j->enc = kl_malloc(nunit * p->enc_cap)))
		return -ENOMEM;
	return 0;
}

static size_t slot_bytes(const struct conv_pipe *p)
{
	size_t nunit = KL_DIV_ROUND_UP(p->chunk, p->unit);
	size_t b = p->chunk;

	if (p->back)
		b += p->chunk;
	if (p->encode)
		b += nunit * p->enc_cap;
	return b;
}

static int open_worker_handles(struct conv_pipe *p)
{
	const struct conv_pipe_cfg *c = p->c;

	p->wsrc = kl_calloc((size_t)p->nworkers + 1, sizeof(*p->wsrc));
	if (!p->wsrc)
		return -ENOMEM;
	if (p->back) {
		p->wback = kl_calloc((size_t)p->nworkers + 1, sizeof(*p->wback));
		if (!p->wback)
			return -ENOMEM;
	}
	/*
	 * One set per worker thread, and one (the last) for the calling
	 * thread, which reads through the walker's handle: same thread.
	 */
	for (int w = 0; w <= p->nworkers; w++) {
		/* a sequential source is read by the walker alone, through its handle */
		int rc = w == p->nworkers || p->seq ? 0 : blk_open(c->src, &c->so, &p->wsrc[w]);

		if (w == p->nworkers)
			p->wsrc[w] = c->src_dev;
		if (rc < 0)
			return kl_err_prefix(rc, "opening %s for worker %d", c->src, w);
		if (p->back) {
			struct blk_open_opts bo = { .format = c->backing_fmt ? c->backing_fmt
									: blk_format_name(p->back),
						    .flags = c->backing_flags };

			rc = blk_open(blk_filename(p->back), &bo, &p->wback[w]);
			if (rc < 0)
				return kl_err_prefix(rc, "opening the backing image for worker %d",
						     w);
		}
	}
	return 0;
}

static void pipe_teardown(struct conv_pipe *p)
{
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->work_cv);
	pthread_cond_broadcast(&p->free_cv);
	pthread_mutex_unlock(&p->lock);
	if (p->reader_started)
		pthread_join(p->reader_tid, NULL);
	for (int i = 0; i < p->nstarted; i++)
		pthread_join(p->tids[i], NULL);
	for (int w = 0; p->wsrc && w < p->nworkers; w++)
		blk_close(p->wsrc[w]); /* the last one is borrowed */
	for (int w = 0; p->wback && w <= p->nworkers; w++)
		blk_close(p->wback[w]);
	for (unsigned s = 0; p->slots && s < p->nslots; s++)
		job_release(&p->slots[s]);
	kl_free(p->slots);
	kl_free(p->wsrc);
	kl_free(p->wback);
	kl_free(p->tids);
	EVP_MD_CTX_free(p->outer);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->work_cv);
	pthread_cond_destroy(&p->done_cv);
	pthread_cond_destroy(&p->free_cv);
	kl_free(p->walk_msg);
}

/* Sleep on done_cv (lock held) for at most 100 ms: signals are polled in between. */
static void wait_done_cv(struct conv_pipe *p)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 100 * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&p->done_cv, &p->lock, &ts);
}

static int wait_done(struct conv_pipe *p, struct conv_job *j)
{
	int rc = 0;

	pthread_mutex_lock(&p->lock);
	while (j->state != JOB_DONE) {
		if (conv_interrupted()) {
			rc = kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
			break;
		}
		if (p->next_take < p->next_submit) {
			/*
			 * Rather than sleep (and later wait to be woken, which
			 * costs milliseconds on a loaded machine), the writer
			 * takes the oldest queued job itself.
			 */
			struct conv_job *t = &p->slots[p->next_take % p->nslots];

			p->next_take++;
			pthread_mutex_unlock(&p->lock);
			run_job(p, p->nworkers, t);
			pthread_mutex_lock(&p->lock);
			continue;
		}
		wait_done_cv(p);
	}
	pthread_mutex_unlock(&p->lock);
	return rc;
}

/*
 * The walker's step: the next window of the source into the next free
 * slot (read here when the source is sequential), queued for the workers.
 * 1: queued; 0: the walk is over; < 0: an error. The caller wakes them.
 */
static int walk_queue(struct conv_pipe *p, uint64_t *off)
{
	struct conv_job *j;
	uint64_t joff;
	size_t jlen;
	bool all_data;
	int rc;

	rc = walk_next(p, off, &joff, &jlen, &all_data);
	if (rc <= 0)
		return rc;
	/* only the walker moves next_submit; the slot is free until queued */
	j = &p->slots[p->next_submit % p->nslots];
	j->preread = p->seq;
	j->bytes_read = 0;
	if (p->seq)
		KL_TRY(read_window(p->c->src_dev, joff, j->buf, jlen, j->kzero, &j->bytes_read));
	pthread_mutex_lock(&p->lock);
	j->seq = p->next_submit;
	j->off = joff;
	j->len = jlen;
	j->all_data = all_data;
	j->rc = 0;
	j->state = JOB_QUEUED;
	p->next_submit++;
	pthread_mutex_unlock(&p->lock);
	return 1;
}

/*
 * A sequential source (a gzip stream) is read by one thread, in order.
 * On the writer's thread, reading (inflating) and committing took turns;
 * here the reader walks and reads ahead into free slots while the writer
 * commits, and the workers do the rest as before.
 */
static void *reader_main(void *arg)
{
	struct conv_pipe *p = arg;
	uint64_t off = 0;
	int rc;

	for (;;) {
		bool stop;

		pthread_mutex_lock(&p->lock);
		while (!p->stop && p->next_submit - p->next_write >= p->nslots)
			pthread_cond_wait(&p->free_cv, &p->lock);
		stop = p->stop;
		pthread_mutex_unlock(&p->lock);
		if (stop) {
			rc = 0;
			break;
		}
		kl_err_clear();
		rc = walk_queue(p, &off);
		if (rc <= 0)
			break;
		pthread_mutex_lock(&p->lock);
		pthread_cond_broadcast(&p->work_cv);
		pthread_cond_broadcast(&p->done_cv);
		pthread_mutex_unlock(&p->lock);
	}
	pthread_mutex_lock(&p->lock);
	p->walk_rc = rc;
	if (rc < 0)
		p->walk_msg = kl_strdup(kl_errmsg());
	p->walk_done = true;
	pthread_cond_broadcast(&p->done_cv);
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/*
 * With a reader thread: wait until the next job to commit is queued.
 * 1: it is; 0: the walk is over and all is committed; < 0: an error.
 */
static int wait_submitted(struct conv_pipe *p, uint64_t *skipped)
{
	int rc = 1;

	pthread_mutex_lock(&p->lock);
	while (p->next_write == p->next_submit && !p->walk_done && !conv_interrupted())
		wait_done_cv(p);
	*skipped = p->walk_skipped;
	p->walk_skipped = 0;
	if (conv_interrupted())
		rc = kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
	else if (p->next_write == p->next_submit)
		rc = p->walk_rc < 0 ? kl_err(p->walk_rc, "%s", p->walk_msg ? p->walk_msg : "")
				    : 0;
	pthread_mutex_unlock(&p->lock);
	return rc;
}

int conv_pipe_run(const struct conv_pipe_cfg *c, struct conv_stats *st)
{
	struct conv_pipe p = { .c = c, .st = st };
	uint64_t off = 0, size = blk_size(c->src_dev);
	const char *slow = getenv("KEEL_CONV_SLOW_MS");
	bool walk_done = false;
	size_t per;
	int rc = 0;

	if (c->walk_size)
		size = KL_MIN(size, c->walk_size);
	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.work_cv, NULL);
	pthread_cond_init(&p.done_cv, NULL);
	pthread_cond_init(&p.free_cv, NULL);
	/*
	 * -j N: N threads compute, the calling thread being one of them.
	 * By default one more than there are CPUs: the calling thread also
	 * walks and commits, and computes only while it waits for a job,
	 * so with one per CPU a CPU idles whenever it blocks on a write.
	 * Measured on 2 CPUs (the bench disk, medians of 5): zstd qcow2
	 * 1.97 s -> 1.88 s, VMDK->raw 2.66 -> 2.39, streamOptimized VMDK
	 * 8.86 -> 8.31, raw->qcow2 0.68 -> 0.66.
	 */
	p.nworkers = c->threads > 0 ? c->threads - 1 : conv_ncpus();
	p.dsize = c->digest_size ? c->digest_size : size;
	p.size = size;
	p.slow_ms = slow ? (unsigned)atoi(slow) : 0;
	p.flip = c->dst && getenv("KEEL_CONV_TEST_FLIP");
	p.back = c->dst && c->backing ? blk_parent(c->dst) : NULL;
	p.encode = c->dst && blk_can_encode(c->dst);
	p.seq = blk_sequential(c->src_dev);
	/*
	 * The walker writes zeros to a target that is not zero already and
	 * reads the backing image's map through the writer's handle: those
	 * keep it on the writer's thread.
	 */
	p.reader = p.seq && !p.back && !(c->zero_fill && c->dst && !c->count_only) &&
		   !getenv("KEEL_CONV_NO_READER");
	if (p.encode) {
		p.unit = blk_cluster_size(c->dst);
		p.enc_cap = BLK_ENCODE_BOUND(p.unit);
	} else {
		uint32_t cs = c->dst ? blk_cluster_size(c->dst) : CONV_BLOCK;

		p.unit = KL_MAX(4096u, KL_MIN(cs, CONV_BLOCK));
		if (!KL_IS_POW2(p.unit))
			p.unit = CONV_BLOCK;
	}
	p.chunk = KL_MAX(CONV_CHUNK, p.unit);
	per = slot_bytes(&p);
	/*
	 * Deep enough that a worker's wake-up latency (milliseconds on some
	 * virtual machines) hides behind the writer's queue, within budget.
	 */
	p.nslots = (unsigned)KL_MIN((size_t)KL_MAX(8, 4 * p.nworkers + 8), CONV_MEM_BUDGET / per);
	if (p.nslots < 4)
		p.nslots = 4;
	st->threads = p.nworkers + 1;
	st->memory_bound = (uint64_t)p.nslots * per;

	p.outer = EVP_MD_CTX_new();
	p.slots = kl_calloc(p.nslots, sizeof(*p.slots));
	p.tids = kl_calloc((size_t)p.nworkers + 1, sizeof(*p.tids));
	if (!p.outer || !p.slots || !p.tids || !EVP_DigestInit_ex(p.outer, EVP_sha256(), NULL)) {
		rc = kl_err(-ENOMEM, "out of memory setting up the copy pipeline");
		goto out;
	}
	rc = open_worker_handles(&p);
	if (rc < 0)
		goto out;
	for (unsigned s = 0; s < p.nslots; s++) {
		rc = job_alloc(&p, &p.slots[s]);
		if (rc < 0)
			goto out;
	}
	for (int w = 0; w < p.nworkers; w++) {
		struct worker_arg *wa = kl_malloc(sizeof(*wa));

		if (!wa) {
			rc = -ENOMEM;
			goto out;
		}
		wa->p = &p;
		wa->w = w;
		if (pthread_create(&p.tids[w], NULL, worker_main, wa) != 0) {
			kl_free(wa);
			rc = kl_err(-EAGAIN, "cannot start worker thread %d", w);
			goto out;
		}
		p.nstarted++;
	}
	p.prog = kl_progress_start(c->label ? c->label : "converting", size, c->progress);
	if (p.reader) {
		if (pthread_create(&p.reader_tid, NULL, reader_main, &p) != 0) {
			rc = kl_err(-EAGAIN, "cannot start the reader thread");
			goto out;
		}
		p.reader_started = true;
	}

	for (;;) {
		struct conv_job *j;

		if (conv_interrupted()) {
			rc = kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
			break;
		}
		/*
		 * Refill in batches (when half the ring is free, or at the end):
		 * one wake-up of the workers per batch, not one per chunk.
		 */
		if (p.reader) {
			uint64_t skipped;

			rc = wait_submitted(&p, &skipped);
			st->zero_skipped += skipped;
			kl_progress_add(p.prog, skipped);
			if (rc <= 0)
				break;
		} else if (p.next_submit - p.next_write > p.nslots / 2 && p.next_write < p.next_submit) {
			/* enough queued: go on committing */
		} else while (!walk_done && p.next_submit - p.next_write < p.nslots) {
			rc = walk_queue(&p, &off);
			if (rc < 0)
				goto out;
			walk_done = rc == 0;
		}
		pthread_mutex_lock(&p.lock);
		if (p.next_take < p.next_submit)
			pthread_cond_broadcast(&p.work_cv);
		pthread_mutex_unlock(&p.lock);
		rc = 0;
		if (!p.reader && p.next_write == p.next_submit)
			break; /* walk done and everything committed */
		j = &p.slots[p.next_write % p.nslots];
		rc = wait_done(&p, j);
		if (rc < 0)
			break;
		rc = job_commit(&p, j);
		if (rc < 0)
			break;
		kl_progress_add(p.prog, j->len);
		/*
		 * Start writing back what is committed so far, without waiting:
		 * the final fsync then finds little left to do.
		 */
		p.since_writeback += j->len;
		if (c->dst && !c->count_only && p.since_writeback >= CONV_WRITEBACK) {
			blk_writeback(c->dst);
			p.since_writeback = 0;
		}
		pthread_mutex_lock(&p.lock);
		j->state = JOB_FREE;
		p.next_write++;
		if (p.reader)
			pthread_cond_signal(&p.free_cv);
		pthread_mutex_unlock(&p.lock);
	}
	if (rc == 0 && c->digest)
		conv_digest_final(p.outer, p.dsize, st->digest);
out:
	if (p.prog)
		kl_progress_finish(p.prog);
	pipe_teardown(&p);
	return rc;
}
