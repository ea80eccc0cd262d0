/*
 * lib/pgzip.c - one gzip stream compressed on several threads (the way
 * pigz does it), for outputs that must be plain gzip (GCE's image.tar.gz).
 *
 * The input is cut into fixed 1 MiB blocks. Each block is deflated on its
 * own, primed with the last 32 KiB of the block before it as the
 * dictionary, so matches still reach across the cut and the output is as
 * small as one stream's. Every block but the last ends with a sync flush
 * (an empty stored block: byte-aligned, not final), so the pieces simply
 * follow each other; the last one ends the stream. The CRC-32 of the
 * whole is combined from the blocks' (crc32_combine), and the result is
 * one ordinary gzip member that gzip, zlib and Go's reader take.
 *
 * The bytes depend only on the input, the level and the block size, never
 * on the number of threads. The calling thread fills blocks and writes
 * finished ones in order; the workers compress. Memory: nslots blocks of
 * input and output, a few MiB.
 */
#include "kl.h"

#include <pthread.h>
#include <string.h>
#include <zlib.h>

#define PGZ_BLOCK (1u << 20)
#define PGZ_DICT (32u << 10)
#define PGZ_OUT_CAP (PGZ_BLOCK + PGZ_BLOCK / 8 + 4096) /* > deflateBound of a block */

enum { SLOT_FREE, SLOT_QUEUED, SLOT_BUSY, SLOT_DONE };

struct pgz_slot {
	int state;
	uint64_t seq;
	bool last;
	uint8_t *in;	 /* PGZ_DICT bytes of dictionary, then the block */
	size_t dict_len; /* 0 for the first block */
	size_t len;
	uint8_t *out;
	size_t out_len;
	uint32_t crc;
	int rc;
};

struct kl_pgz {
	int level;
	kl_pgz_write_fn write;
	void *opaque;
	pthread_t *th;
	int nthreads;
	int nstarted;
	unsigned nslots;
	struct pgz_slot *slots;
	pthread_mutex_t lock;
	pthread_cond_t work_cv, done_cv;
	uint64_t next_fill;  /* the slot being filled */
	uint64_t next_write; /* the next slot to write out */
	bool quit;
	uint32_t crc;
	uint64_t total;
	uint8_t dict[PGZ_DICT]; /* the tail of the last block handed out */
	size_t dict_len;
	bool header_done;
	int err;
};

static int deflate_slot(struct kl_pgz *z, struct pgz_slot *s)
{
	z_stream st;
	int r;

	memset(&st, 0, sizeof(st));
	if (deflateInit2(&st, z->level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return -ENOMEM;
	if (s->dict_len &&
	    deflateSetDictionary(&st, s->in + PGZ_DICT - s->dict_len, (uInt)s->dict_len) != Z_OK) {
		deflateEnd(&st);
		return -EIO;
	}
	st.next_in = s->in + PGZ_DICT;
	st.avail_in = (uInt)s->len;
	st.next_out = s->out;
	st.avail_out = PGZ_OUT_CAP;
	r = deflate(&st, s->last ? Z_FINISH : Z_SYNC_FLUSH);
	s->out_len = PGZ_OUT_CAP - st.avail_out;
	deflateEnd(&st);
	if (s->last ? r != Z_STREAM_END : (r != Z_OK || st.avail_in != 0))
		return -EIO; /* cannot happen: the output buffer bounds deflate's worst case */
	s->crc = (uint32_t)crc32(0L, s->in + PGZ_DICT, (uInt)s->len);
	return 0;
}

static void *pgz_worker(void *arg)
{
	struct kl_pgz *z = arg;

	pthread_mutex_lock(&z->lock);
	for (;;) {
		struct pgz_slot *s = NULL;

		for (unsigned i = 0; i < z->nslots && !s; i++) {
			struct pgz_slot *c = &z->slots[(z->next_write + i) % z->nslots];

			if (c->state == SLOT_QUEUED)
				s = c;
		}
		if (!s) {
			if (z->quit)
				break;
			pthread_cond_wait(&z->work_cv, &z->lock);
			continue;
		}
		s->state = SLOT_BUSY;
		pthread_mutex_unlock(&z->lock);
		s->rc = deflate_slot(z, s);
		pthread_mutex_lock(&z->lock);
		s->state = SLOT_DONE;
		pthread_cond_broadcast(&z->done_cv);
	}
	pthread_mutex_unlock(&z->lock);
	return NULL;
}

static int emit(struct kl_pgz *z, const void *p, size_t n)
{
	int rc = z->write(z->opaque, p, n);

	return rc < 0 ? rc : 0;
}

/* Write out the oldest slot once it is compressed (wait for it if must). */
static int drain_one(struct kl_pgz *z, bool wait)
{
	struct pgz_slot *s = &z->slots[z->next_write % z->nslots];
	int rc;

	pthread_mutex_lock(&z->lock);
	while (wait && (s->state == SLOT_QUEUED || s->state == SLOT_BUSY))
		pthread_cond_wait(&z->done_cv, &z->lock);
	if (s->state != SLOT_DONE) {
		pthread_mutex_unlock(&z->lock);
		return 0;
	}
	pthread_mutex_unlock(&z->lock);
	if (s->rc < 0)
		return kl_err(s->rc, "gzip: compressing block %llu failed",
			      (unsigned long long)s->seq);
	rc = emit(z, s->out, s->out_len);
	if (rc < 0)
		return rc;
	z->crc = (uint32_t)crc32_combine(z->crc, s->crc, (z_off_t)s->len);
	z->total += s->len;
	pthread_mutex_lock(&z->lock);
	s->state = SLOT_FREE;
	s->len = 0;
	z->next_write++;
	pthread_mutex_unlock(&z->lock);
	return 1;
}

/* Hand the slot being filled to the workers; with nthreads 0, compress it here. */
static int submit(struct kl_pgz *z, bool last)
{
	struct pgz_slot *s = &z->slots[z->next_fill % z->nslots];
	size_t keep;

	s->seq = z->next_fill;
	s->last = last;
	/* the next block's dictionary: this one's tail, topped up from the one before */
	keep = KL_MIN((size_t)PGZ_DICT, s->len);
	if (keep < PGZ_DICT) {
		size_t old = KL_MIN(z->dict_len, (size_t)PGZ_DICT - keep);

		memmove(z->dict, z->dict + z->dict_len - old, old);
		z->dict_len = old;
	} else {
		z->dict_len = 0;
	}
	memcpy(z->dict + z->dict_len, s->in + PGZ_DICT + s->len - keep, keep);
	z->dict_len += keep;
	z->next_fill++;
	if (z->nstarted == 0) {
		int rc;

		s->rc = deflate_slot(z, s);
		s->state = SLOT_DONE;
		rc = drain_one(z, false);
		return rc < 0 ? rc : 0;
	}
	pthread_mutex_lock(&z->lock);
	s->state = SLOT_QUEUED;
	pthread_cond_signal(&z->work_cv);
	pthread_mutex_unlock(&z->lock);
	/* write out what is done; block only when the ring is full */
	while (z->next_fill - z->next_write >= z->nslots) {
		int rc = drain_one(z, true);

		if (rc < 0)
			return rc;
	}
	while (z->next_write < z->next_fill) {
		int rc = drain_one(z, false);

		if (rc <= 0)
			return rc;
	}
	return 0;
}

/* Start filling the next slot: the dictionary goes in front of its block. */
static void begin_slot(struct kl_pgz *z)
{
	struct pgz_slot *s = &z->slots[z->next_fill % z->nslots];

	s->dict_len = z->dict_len;
	memcpy(s->in + PGZ_DICT - z->dict_len, z->dict, z->dict_len);
	s->len = 0;
}

int kl_pgz_open(int level, int threads, kl_pgz_write_fn write, void *opaque, struct kl_pgz **out)
{
	struct kl_pgz *z = kl_calloc(1, sizeof(*z));

	*out = NULL;
	if (!z)
		return -ENOMEM;
	z->level = level < 1 || level > 9 ? 6 : level;
	z->write = write;
	z->opaque = opaque;
	z->nthreads = threads > 0 ? threads : kl_ncpus();
	if (z->nthreads == 1)
		z->nthreads = 0; /* compress on the calling thread */
	z->nslots = (unsigned)(z->nthreads ? 2 * z->nthreads + 2 : 1);
	z->crc = (uint32_t)crc32(0L, Z_NULL, 0);
	pthread_mutex_init(&z->lock, NULL);
	pthread_cond_init(&z->work_cv, NULL);
	pthread_cond_init(&z->done_cv, NULL);
	z->slots = kl_calloc(z->nslots, sizeof(*z->slots));
	z->th = kl_calloc((size_t)z->nthreads + 1, sizeof(*z->th));
	if (!z->slots || !z->th)
		goto nomem;
	for (unsigned i = 0; i < z->nslots; i++) {
		z->slots[i].in = kl_malloc(PGZ_DICT + PGZ_BLOCK);
		z->slots[i].out = kl_malloc(PGZ_OUT_CAP);
		if (!z->slots[i].in || !z->slots[i].out)
			goto nomem;
	}
	for (int i = 0; i < z->nthreads; i++) {
		if (pthread_create(&z->th[i], NULL, pgz_worker, z) != 0)
			break; /* fewer workers: slower, not wrong */
		z->nstarted++;
	}
	begin_slot(z);
	*out = z;
	return 0;
nomem:
	kl_pgz_free(z);
	return -ENOMEM;
}

int kl_pgz_write(struct kl_pgz *z, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	if (z->err)
		return z->err;
	if (!z->header_done) {
		/* no name, no mtime (reproducible), maximum-effort flags unset, OS unix */
		static const uint8_t hdr[10] = { 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3 };
		int rc = emit(z, hdr, sizeof(hdr));

		if (rc < 0)
			return z->err = rc;
		z->header_done = true;
	}
	while (len) {
		struct pgz_slot *s = &z->slots[z->next_fill % z->nslots];
		size_t n = KL_MIN(len, (size_t)PGZ_BLOCK - s->len);

		memcpy(s->in + PGZ_DICT + s->len, p, n);
		s->len += n;
		p += n;
		len -= n;
		if (s->len == PGZ_BLOCK) {
			int rc = submit(z, false);

			if (rc < 0)
				return z->err = rc;
			begin_slot(z);
		}
	}
	return 0;
}

int kl_pgz_finish(struct kl_pgz *z)
{
	uint8_t tail[8];
	int rc;

	if (z->err)
		return z->err;
	if (!z->header_done && (rc = kl_pgz_write(z, NULL, 0)) < 0)
		return rc;
	rc = submit(z, true);
	while (rc >= 0 && z->next_write < z->next_fill)
		rc = drain_one(z, true);
	if (rc < 0)
		return z->err = rc;
	for (int i = 0; i < 4; i++) {
		tail[i] = (uint8_t)(z->crc >> (8 * i));
		tail[4 + i] = (uint8_t)(z->total >> (8 * i)); /* ISIZE: the length mod 2^32 */
	}
	rc = emit(z, tail, sizeof(tail));
	return rc < 0 ? (z->err = rc) : 0;
}

void kl_pgz_free(struct kl_pgz *z)
{
	if (!z)
		return;
	pthread_mutex_lock(&z->lock);
	z->quit = true;
	pthread_cond_broadcast(&z->work_cv);
	pthread_mutex_unlock(&z->lock);
	for (int i = 0; i < z->nstarted; i++)
		pthread_join(z->th[i], NULL);
	for (unsigned i = 0; z->slots && i < z->nslots; i++) {
		kl_free(z->slots[i].in);
		kl_free(z->slots[i].out);
	}
	kl_free(z->slots);
	kl_free(z->th);
	pthread_mutex_destroy(&z->lock);
	pthread_cond_destroy(&z->work_cv);
	pthread_cond_destroy(&z->done_cv);
	kl_free(z);
}
