/*
 * replicate/stream-send.c - keel send: a snapshot of a .keel image becomes
 * a stream (STREAM-FORMAT.md).
 *
 * The clusters to send come from metadata only: a full stream walks the
 * snapshot's extent map (holes and zero ranges are never read), an
 * incremental one the snapshot diff. Clusters go in batches: read in
 * order, then zero detection, content hashes (live dedup), compression and
 * sealing run on the thread pool, then the records are written in order.
 * After a batch, when enough bytes went out, a MARK record carries a resume
 * point signed with the token key; the receiver keeps the last one as its
 * resume token.
 *
 * A resume token is input from the receiver, which may be hostile (the
 * openzfs/zfs#14153 class of bug): it never chooses what is sent. The
 * command line names the image, the snapshot and the base; the token must
 * agree with them on every field, carry a valid MAC under the stream key,
 * and may only choose where in that stream to continue.
 */
#include "replicate/repl_int.h"
#include "convert/convert.h"
#include "format/format.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <string.h>
#include <zstd.h>

#define SEND_BATCH 64
#define SEND_MARK_DEFAULT (64ULL << 20)

enum slot_kind {
	SK_NONE = 0, /* no record (a zero cluster of a full stream) */
	SK_DATA,
	SK_REF,
};

/* One record of a batch, in write order: a slot, or a zero range (slot SIZE_MAX). */
struct send_item {
	size_t slot;
	uint64_t zoff, zlen;
	uint64_t seq;
};

struct send_slot {
	uint64_t off;
	size_t len;
	bool zero;
	bool dup;	  /* same content as an earlier slot of this batch */
	int kind;
	uint64_t seq;
	uint8_t hash[32];
	uint8_t *rec;	  /* encoded record */
	size_t rec_len;
};

struct send_ctx {
	const struct repl_send_opts *o;
	struct repl_send_stats *st;
	const struct repl_writer *out;
	struct blk_dev *rd;	/* the snapshot, for reading */
	struct blk_dev *img;	/* the image, for the diff */
	struct repl_hdr h;
	struct repl_keys keys;
	struct kl_pool *pool;
	struct kl_progress *prog;
	uint32_t cs;
	uint64_t seq;
	uint8_t digest[32];
	uint64_t since_mark;
	uint64_t data_bytes, zero_bytes, ref_bytes;
	uint64_t start;	/* resume offset: nothing before it is sent */
	/* the batch */
	struct send_slot slots[SEND_BATCH];
	size_t n;
	struct send_item items[2 * SEND_BATCH + 1];
	size_t nitems;
	uint8_t *buf;		/* SEND_BATCH clusters */
	uint8_t *recbuf;	/* SEND_BATCH record buffers */
	size_t rec_cap;
	bool *held;
	uint64_t pending_zero_off, pending_zero_len; /* a zero range waiting for a record */
	/* zstd contexts shared by the workers */
	pthread_mutex_t zlock;
	ZSTD_CCtx *zfree[64];
	int nzfree;
	int level;
	int err;		/* first worker error */
	uint64_t written;	/* bytes written (fail_after) */
};

/* ------------------------------------------------------------------ output */

static int send_write(struct send_ctx *x, const void *buf, size_t len)
{
	int rc;

	if (x->o->fail_after && x->written + len > x->o->fail_after) {
		size_t part = (size_t)(x->o->fail_after - x->written);

		if (part)
			x->out->write(x->out->opaque, buf, part);
		x->written += part;
		return kl_err(-EPIPE, "stream output cut after %llu bytes (test)",
			      (unsigned long long)x->written);
	}
	rc = x->out->write(x->out->opaque, buf, len);
	if (rc < 0)
		return rc;
	x->written += len;
	x->st->stream_bytes += len;
	x->since_mark += len;
	return 0;
}

/*
 * Encodes one record into out (REPL_REC_HDR + payload_len + REPL_TAG bytes,
 * the payload already at out + REPL_REC_HDR) and protects it.
 */
static int build_record(const struct send_ctx *x, uint8_t *out, uint16_t type, uint16_t flags,
			uint64_t seq, size_t payload_len)
{
	struct repl_rec_hdr rh = { 0 };
	uint8_t ad[REPL_AD_LEN];
	uint8_t *body = out + REPL_REC_HDR;

	rh.body_len = (uint32_t)(payload_len + REPL_TAG);
	rh.type = type;
	rh.flags = flags;
	rh.seq = seq;
	KL_TRY(repl_random(rh.nonce, REPL_NONCE));
	repl_rec_hdr_encode(&rh, out);
	repl_rec_ad(x->h.stream_id, out, ad);
	KL_TRY(repl_rec_protect(x->keys.rec, rh.nonce, ad, flags & REPL_RF_SEALED, body,
				payload_len, body + payload_len));
	rh.crc = repl_rec_crc(x->h.stream_id, out, body, rh.body_len);
	put_le32(out + 28, rh.crc);
	return 0;
}

/* Write one small record (header, zero, ref, mark, trailer) built in buf. */
static int emit_small(struct send_ctx *x, uint8_t *buf, uint16_t type, size_t payload_len,
		      uint64_t seq, bool chain)
{
	uint16_t flags = x->keys.keyed && (type == REPL_REC_ZERO || type == REPL_REC_REF) ?
				 REPL_RF_SEALED : 0;

	KL_TRY(build_record(x, buf, type, flags, seq, payload_len));
	if (chain)
		repl_chain_step(x->digest, buf, buf + REPL_REC_HDR + payload_len);
	x->st->records++;
	return send_write(x, buf, REPL_REC_HDR + payload_len + REPL_TAG);
}

static int emit_zero(struct send_ctx *x, uint64_t off, uint64_t len, uint64_t seq)
{
	uint8_t buf[REPL_REC_HDR + REPL_ZERO_LEN + REPL_TAG];

	put_le64(buf + REPL_REC_HDR, off);
	put_le64(buf + REPL_REC_HDR + 8, len);
	x->zero_bytes += len;
	x->st->zero_bytes += len;
	return emit_small(x, buf, REPL_REC_ZERO, REPL_ZERO_LEN, seq, true);
}

static int emit_mark(struct send_ctx *x, uint64_t offset)
{
	uint8_t buf[REPL_REC_HDR + REPL_TOKEN_LEN + REPL_TAG];
	uint64_t seq = x->seq++;
	struct repl_token t;

	repl_token_from_hdr(&t, &x->h);
	t.next_seq = seq + 1;
	t.offset = offset;
	memcpy(t.digest, x->digest, 32);
	t.bytes = x->data_bytes;
	repl_token_encode(&t, buf + REPL_REC_HDR);
	repl_token_mac(x->keys.tok, buf + REPL_REC_HDR, buf + REPL_REC_HDR + REPL_TOKEN_CORE);
	x->since_mark = 0;
	/* marks stay out of the chain: their sequence numbers already pin them (§5) */
	return emit_small(x, buf, REPL_REC_MARK, REPL_TOKEN_MARK, seq, false);
}

/* ------------------------------------------------------------------ batch work */

static ZSTD_CCtx *zctx_get(struct send_ctx *x)
{
	ZSTD_CCtx *z = NULL;

	pthread_mutex_lock(&x->zlock);
	if (x->nzfree > 0)
		z = x->zfree[--x->nzfree];
	pthread_mutex_unlock(&x->zlock);
	return z ? z : ZSTD_createCCtx();
}

static void zctx_put(struct send_ctx *x, ZSTD_CCtx *z)
{
	pthread_mutex_lock(&x->zlock);
	if (x->nzfree < (int)KL_ARRAY_SIZE(x->zfree)) {
		x->zfree[x->nzfree++] = z;
		z = NULL;
	}
	pthread_mutex_unlock(&x->zlock);
	ZSTD_freeCCtx(z);
}

static void note_err(struct send_ctx *x, int rc)
{
	__atomic_compare_exchange_n(&x->err, &(int){ 0 }, rc, false, __ATOMIC_SEQ_CST,
				    __ATOMIC_SEQ_CST);
}

/* Worker: zero check and content hash of one cluster. */
static int work_scan(void *arg, size_t i)
{
	struct send_ctx *x = arg;
	struct send_slot *s = &x->slots[i];
	const uint8_t *p = x->buf + i * x->cs;
	int rc;

	s->zero = kl_is_zero(p, s->len);
	if (s->zero || !x->o->have)
		return 0;
	rc = repl_have_hash(x->o->have->key, p, s->len, s->hash);
	if (rc < 0)
		note_err(x, rc);
	return rc;
}

/* Worker: compress and seal one DATA record. */
static int work_data(void *arg, size_t i)
{
	struct send_ctx *x = arg;
	struct send_slot *s = &x->slots[i];
	uint8_t *out = x->recbuf + i * x->rec_cap;
	uint8_t *pl = out + REPL_REC_HDR;
	size_t pre = REPL_DATA_PREFIX + (x->o->have ? 32 : 0);
	size_t cap = x->rec_cap - REPL_REC_HDR - REPL_TAG - pre;
	const uint8_t *src = x->buf + i * x->cs;
	uint16_t flags = x->keys.keyed ? REPL_RF_SEALED : 0;
	ZSTD_CCtx *z;
	size_t clen;
	int rc;

	if (s->kind != SK_DATA)
		return 0;
	put_le64(pl, s->off);
	put_le32(pl + 8, (uint32_t)s->len);
	put_le32(pl + 12, x->o->have ? REPL_DF_HASH : 0);
	if (x->o->have)
		memcpy(pl + REPL_DATA_PREFIX, s->hash, 32);
	z = zctx_get(x);
	clen = z ? ZSTD_compressCCtx(z, pl + pre, cap, src, s->len, x->level) : 0;
	if (z)
		zctx_put(x, z);
	if (z && !ZSTD_isError(clen) && clen < s->len) {
		flags |= REPL_RF_ZSTD;
	} else {
		memcpy(pl + pre, src, s->len);
		clen = s->len;
	}
	s->rec_len = REPL_REC_HDR + pre + clen + REPL_TAG;
	rc = build_record(x, out, REPL_REC_DATA, flags, s->seq, pre + clen);
	if (rc < 0)
		note_err(x, rc);
	s->rec = out;
	return rc;
}

static int flush_zero(struct send_ctx *x)
{
	int rc = 0;

	if (x->pending_zero_len)
		rc = emit_zero(x, x->pending_zero_off, x->pending_zero_len, x->seq++);
	x->pending_zero_len = 0;
	return rc;
}

/* Outside a batch: a zero range is written when the next record needs its place. */
static int add_zero(struct send_ctx *x, uint64_t off, uint64_t len)
{
	if (x->pending_zero_len && x->pending_zero_off + x->pending_zero_len == off) {
		x->pending_zero_len += len;
		return 0;
	}
	KL_TRY(flush_zero(x));
	x->pending_zero_off = off;
	x->pending_zero_len = len;
	return 0;
}

/* Inside a batch: records are only planned; the item list keeps their order. */
static void plan_zero_close(struct send_ctx *x)
{
	struct send_item *it;

	if (!x->pending_zero_len)
		return;
	it = &x->items[x->nitems++];
	it->slot = SIZE_MAX;
	it->zoff = x->pending_zero_off;
	it->zlen = x->pending_zero_len;
	it->seq = x->seq++;
	x->pending_zero_len = 0;
}

static void plan_zero(struct send_ctx *x, uint64_t off, uint64_t len)
{
	if (x->pending_zero_len && x->pending_zero_off + x->pending_zero_len == off) {
		x->pending_zero_len += len;
		return;
	}
	plan_zero_close(x);
	x->pending_zero_off = off;
	x->pending_zero_len = len;
}

static int run_pool(struct send_ctx *x, int (*fn)(void *, size_t))
{
	int rc;

	x->err = 0;
	rc = kl_pool_run(x->pool, x->n, fn, x);
	if (rc < 0 && x->err < 0)
		rc = x->err;
	return rc;
}

static int ask_have(struct send_ctx *x)
{
	uint8_t (*hs)[32] = kl_malloc(sizeof(*hs) * x->n);
	size_t *idx = kl_malloc(sizeof(*idx) * x->n);
	size_t q = 0;
	int rc = 0;

	if (!hs || !idx) {
		kl_free(hs);
		kl_free(idx);
		return -ENOMEM;
	}
	for (size_t i = 0; i < x->n; i++) {
		struct send_slot *s = &x->slots[i];

		if (s->zero)
			continue;
		for (size_t j = 0; j < i && !s->dup; j++)
			s->dup = !x->slots[j].zero && x->slots[j].len == s->len &&
				 !memcmp(x->slots[j].hash, s->hash, 32);
		if (s->dup) {
			s->kind = SK_REF;
			continue;
		}
		s->kind = SK_DATA;
		memcpy(hs[q], s->hash, 32);
		idx[q++] = i;
	}
	if (q)
		rc = x->o->have->query(x->o->have->opaque, (const uint8_t (*)[32])hs, q, x->held);
	for (size_t k = 0; rc == 0 && k < q; k++)
		if (x->held[k])
			x->slots[idx[k]].kind = SK_REF;
	kl_free(hs);
	kl_free(idx);
	return rc;
}

static int write_ref(struct send_ctx *x, const struct send_slot *s)
{
	uint8_t buf[REPL_REC_HDR + REPL_REF_LEN + REPL_TAG];
	uint8_t *pl = buf + REPL_REC_HDR;

	put_le64(pl, s->off);
	put_le32(pl + 8, (uint32_t)s->len);
	put_le32(pl + 12, 0);
	memcpy(pl + 16, s->hash, 32);
	KL_TRY(emit_small(x, buf, REPL_REC_REF, REPL_REF_LEN, s->seq, true));
	x->ref_bytes += s->len;
	x->st->changed_bytes += s->len;
	x->st->clusters_skipped++;
	return 0;
}

static int process_batch(struct send_ctx *x)
{
	bool full = !(x->h.flags & REPL_HF_INCREMENTAL);
	uint64_t end;

	if (!x->n)
		return 0;
	end = x->slots[x->n - 1].off + x->slots[x->n - 1].len;
	KL_TRY(run_pool(x, work_scan));
	if (x->o->have)
		KL_TRY(ask_have(x));
	/* sequence numbers in the order the records will be written */
	x->nitems = 0;
	for (size_t i = 0; i < x->n; i++) {
		struct send_slot *s = &x->slots[i];
		struct send_item *it;

		if (s->zero) {
			/* a full stream starts from nothing: zeros need no record */
			s->kind = SK_NONE;
			x->st->clusters_zero++;
			if (!full)
				plan_zero(x, s->off, s->len);
			continue;
		}
		if (!x->o->have)
			s->kind = SK_DATA;
		plan_zero_close(x);
		s->seq = x->seq++;
		it = &x->items[x->nitems++];
		it->slot = i;
	}
	KL_TRY(run_pool(x, work_data));
	for (size_t k = 0; k < x->nitems; k++) {
		const struct send_item *it = &x->items[k];
		struct send_slot *s;

		if (it->slot == SIZE_MAX) {
			KL_TRY(emit_zero(x, it->zoff, it->zlen, it->seq));
			continue;
		}
		s = &x->slots[it->slot];
		if (s->kind == SK_REF) {
			KL_TRY(write_ref(x, s));
			continue;
		}
		repl_chain_step(x->digest, s->rec, s->rec + s->rec_len - REPL_TAG);
		x->st->records++;
		x->st->clusters_sent++;
		x->st->payload_bytes += s->rec_len - REPL_REC_HDR - REPL_TAG;
		x->st->changed_bytes += s->len;
		x->data_bytes += s->len;
		KL_TRY(send_write(x, s->rec, s->rec_len));
	}
	for (size_t i = 0; i < x->n; i++)
		kl_progress_add(x->prog, x->slots[i].zero ? 0 : x->slots[i].len);
	x->n = 0;
	/* a zero range still open may continue into the next batch; a mark closes it */
	if (x->since_mark >= (x->o->mark_bytes ? x->o->mark_bytes : SEND_MARK_DEFAULT)) {
		KL_TRY(flush_zero(x));
		KL_TRY(emit_mark(x, end));
	}
	return 0;
}

/* ------------------------------------------------------------------ walking */

/* A DATA range of the snapshot: read it cluster by cluster into batches. */
static int add_data(struct send_ctx *x, uint64_t off, uint64_t len)
{
	uint64_t end = off + len;

	while (off < end) {
		uint64_t cend = KL_MIN((off / x->cs + 1) * x->cs, end);
		struct send_slot *s;
		int rc;

		if (conv_interrupted())
			return kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
		s = &x->slots[x->n];
		memset(s, 0, sizeof(*s));
		s->off = off;
		s->len = (size_t)(cend - off);
		rc = blk_pread(x->rd, off, x->buf + x->n * x->cs, s->len);
		if (rc < 0)
			return kl_err_prefix(rc, "reading %s@%s at offset %llu", x->o->image,
					     x->o->snapshot, (unsigned long long)off);
		x->n++;
		off = cend;
		if (x->n == SEND_BATCH)
			KL_TRY(process_batch(x));
	}
	return 0;
}

static int on_extent(struct send_ctx *x, const struct blk_extent *e)
{
	uint64_t off = e->off, len = e->len;

	if (off + len <= x->start)
		return 0;
	if (off < x->start) {
		len -= x->start - off;
		off = x->start;
	}
	if (e->type == BLK_DATA)
		return add_data(x, off, len);
	/* a range that became zero: close the batch so records stay in order */
	KL_TRY(process_batch(x));
	return add_zero(x, off, len);
}

static int diff_cb(void *opaque, const struct blk_extent *e)
{
	return on_extent(opaque, e);
}

struct est {
	uint64_t start, bytes;
};

static int est_cb(void *opaque, const struct blk_extent *e)
{
	struct est *s = opaque;

	if (e->type == BLK_DATA && e->off + e->len > s->start)
		s->bytes += e->off + e->len - KL_MAX(e->off, s->start);
	return 0;
}

/* Full streams: every DATA extent of what the guest sees in the snapshot. */
static int walk_full(struct send_ctx *x, bool estimate_only, uint64_t *est)
{
	uint64_t pos = x->start, size = x->h.vsize;

	while (pos < size) {
		struct blk_extent e;

		KL_TRY(blk_block_status_chain(x->rd, pos, size - pos, &e));
		e.len = KL_MIN(e.len, size - pos);
		if (e.type == BLK_DATA) {
			if (estimate_only)
				*est += e.len;
			else
				KL_TRY(on_extent(x, &e));
		}
		pos += e.len;
	}
	return 0;
}

/* ------------------------------------------------------------------ setup */

static int find_snap(struct blk_snapshot_info *v, size_t n, const char *name, const char *image,
		     const struct blk_snapshot_info **out)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(v[i].name, name)) {
			*out = &v[i];
			return 0;
		}
	return kl_err(-ENOENT, "%s has no snapshot named '%s'", image, name);
}

static bool guid_zero(const uint8_t g[16])
{
	static const uint8_t z[16];

	return !memcmp(g, z, 16);
}

/*
 * The token must name exactly the stream the command line asks for; the
 * caller then derives the keys from its key-derivation fields and checks
 * its MAC. What the token may choose is only where to continue.
 */
static int check_token(const struct repl_token *t, const struct repl_token *want,
		       const struct repl_send_opts *o)
{
	const char *what = NULL;

	if ((t->flags & REPL_HF_RAW) != (want->flags & REPL_HF_RAW))
		what = t->flags & REPL_HF_RAW ? "a raw send (give --raw)" : "a non-raw send";
	else if ((t->flags & REPL_HF_KEYED) != (want->flags & REPL_HF_KEYED))
		what = t->flags & REPL_HF_KEYED ? "an encrypted stream (give its key)" :
						 "a stream without a key";
	else if (memcmp(t->src_uuid, want->src_uuid, 16))
		what = "another image";
	else if (memcmp(t->snap_guid, want->snap_guid, 16) || t->snap_gen != want->snap_gen)
		what = "another snapshot";
	else if (memcmp(t->from_guid, want->from_guid, 16) || t->from_gen != want->from_gen ||
		 (t->flags & REPL_HF_INCREMENTAL) != (want->flags & REPL_HF_INCREMENTAL))
		what = guid_zero(t->from_guid) ? "a full stream (drop -i)" :
						 "an incremental from another base snapshot";
	else if (t->flags != want->flags)
		what = "a stream with other options";
	else if (t->vsize != want->vsize || t->cluster_size != want->cluster_size)
		what = "an image of another size";
	else if (o->resume_target && memcmp(t->target_uuid, o->resume_target, 16))
		what = "another target";
	if (what)
		return kl_err(-EPERM, "resume token: it is for %s; refusing to resume %s@%s with it",
			      what, o->image, o->snapshot);
	if (t->flags & REPL_HF_KEYED)
		KL_TRY(repl_kdf_check(t->kdf, t->kdf_n, t->kdf_r, t->kdf_p));
	else if (t->kdf != REPL_KDF_NONE)
		return kl_err(-EPERM, "resume token: key derivation in a stream without a key");
	if (t->offset > t->vsize || (t->offset % t->cluster_size && t->offset != t->vsize))
		return kl_err(-EPERM, "resume token: offset %llu is not a cluster boundary",
			      (unsigned long long)t->offset);
	return 0;
}

static int setup(struct send_ctx *x)
{
	const struct repl_send_opts *o = x->o;
	struct blk_open_opts bo = { .flags = o->open_flags, .key = o->key, .key_len = o->key_len };
	struct blk_snapshot_info *v = NULL;
	const struct blk_snapshot_info *sn = NULL, *fr = NULL;
	struct blk_identity id;
	struct blk_info info;
	struct repl_token want, t;
	char *spec = NULL;
	size_t n = 0;
	bool encrypted = false;
	int rc;

	KL_TRY(blk_open(o->image, &bo, &x->img));
	if (strcmp(blk_format_name(x->img), "keel") != 0)
		return kl_err(-ENOTSUP, "%s is a %s image: keel send needs a .keel image with "
			      "snapshots (keel convert -O keel, then keel snapshot create)",
			      o->image, blk_format_name(x->img));
	KL_TRY(blk_snapshot_list(x->img, &v, &n));
	rc = find_snap(v, n, o->snapshot, o->image, &sn);
	if (rc == 0 && o->from)
		rc = find_snap(v, n, o->from, o->image, &fr);
	if (rc == 0 && fr && fr->generation >= sn->generation)
		rc = kl_err(-EINVAL, "%s: FROM '%s' is not older than '%s'", o->image, o->from,
			    o->snapshot);
	if (rc == 0 && fr && fr->vsize != sn->vsize)
		rc = kl_err(-ENOTSUP, "%s: '%s' and '%s' have different virtual sizes; send a full "
			    "stream", o->image, o->from, o->snapshot);
	if (rc == 0 && (guid_zero(sn->guid) || (fr && guid_zero(fr->guid))))
		rc = kl_err(-ENOTSUP, "%s: snapshot without a guid", o->image);
	if (rc == 0)
		rc = blk_identity(x->img, &id);
	if (rc < 0)
		goto out;
	spec = kl_asprintf("%s@%s", o->image, o->snapshot);
	if (!spec) {
		rc = -ENOMEM;
		goto out;
	}
	rc = blk_open(spec, &bo, &x->rd);
	if (rc == 0 && blk_info(x->rd, &info) == 0) {
		for (size_t i = 0; i < info.nfeatures; i++)
			encrypted |= !strcmp(info.features[i], "encryption");
		blk_info_release(&info);
	}
	if (rc < 0)
		goto out;
	x->cs = blk_cluster_size(x->rd);
	x->h.cluster_size = x->cs;
	x->h.vsize = sn->vsize;
	memcpy(x->h.src_uuid, id.uuid, 16);
	memcpy(x->h.snap_guid, sn->guid, 16);
	x->h.snap_gen = sn->generation;
	x->h.snap_time = sn->date_ns;
	snprintf(x->h.name, sizeof(x->h.name), "%s", sn->name);
	if (fr) {
		x->h.flags |= REPL_HF_INCREMENTAL;
		memcpy(x->h.from_guid, fr->guid, 16);
		x->h.from_gen = fr->generation;
	}
	if (o->key && o->key_len && !o->keyless_stream) {
		x->h.flags |= REPL_HF_KEYED;
		x->h.kdf = REPL_KDF_SCRYPT;
		x->h.kdf_n = o->kdf_n ? o->kdf_n : REPL_SCRYPT_N;
		x->h.kdf_r = o->kdf_r ? o->kdf_r : REPL_SCRYPT_R;
		x->h.kdf_p = o->kdf_p ? o->kdf_p : REPL_SCRYPT_P;
		rc = repl_kdf_check(x->h.kdf, x->h.kdf_n, x->h.kdf_r, x->h.kdf_p);
		if (rc < 0)
			goto out;
	} else if (o->raw) {
		rc = kl_err(-ENOKEY, "--raw needs the image's passphrase (--key-file or --key-env): "
			    "a raw stream stays encrypted at the receiver");
		goto out;
	}
	if (o->raw)
		x->h.flags |= REPL_HF_RAW;
	if (encrypted && (x->h.flags & REPL_HF_KEYED))
		x->h.flags |= REPL_HF_SRC_ENCRYPTED;
	rc = repl_random(x->h.stream_id, 16);
	if (rc == 0 && (x->h.flags & REPL_HF_KEYED))
		rc = repl_random(x->h.kdf_salt, 32);
	if (rc < 0)
		goto out;
	if (o->resume) {
		rc = repl_token_from_text(o->resume, &t);
		if (rc < 0)
			goto out;
		repl_token_from_hdr(&want, &x->h);
		rc = check_token(&t, &want, o);
		if (rc < 0)
			goto out;
		/* continue the same stream: its id, its key derivation, its chain */
		memcpy(x->h.stream_id, t.stream_id, 16);
		memcpy(x->h.kdf_salt, t.kdf_salt, 32);
		x->h.kdf_n = t.kdf_n;
		x->h.kdf_r = t.kdf_r;
		x->h.kdf_p = t.kdf_p;
	}
	rc = repl_keys_derive(&x->keys, &x->h, o->keyless_stream ? NULL : o->key, o->key_len);
	if (rc < 0)
		goto out;
	repl_chain_init(x->digest, &x->h);
	x->seq = 1;
	if (o->resume) {
		uint8_t enc[REPL_TOKEN_LEN], mac[32];

		repl_token_encode(&t, enc);
		repl_token_mac(x->keys.tok, enc, mac);
		if (CRYPTO_memcmp(mac, t.mac, 32) != 0) {
			rc = kl_err(-EPERM, "resume token: its MAC does not verify under this "
				    "stream's key (forged, damaged, or another passphrase)");
			goto out;
		}
		x->h.flags |= REPL_HF_RESUME;
		x->h.resume_seq = t.next_seq;
		x->h.resume_off = t.offset;
		x->h.resume_bytes = t.bytes;
		memcpy(x->h.resume_digest, t.digest, 32);
		memcpy(x->h.target_uuid, t.target_uuid, 16);
		memcpy(x->digest, t.digest, 32);
		x->seq = t.next_seq;
		x->start = t.offset;
		x->data_bytes = t.bytes;
		x->st->resumed = true;
		x->st->resume_offset = t.offset;
	}
	if (o->have)
		x->h.flags |= REPL_HF_HASHED;
out:
	kl_free(spec);
	blk_snapshot_list_free(v, n);
	return rc;
}

static int send_header(struct send_ctx *x)
{
	uint8_t buf[REPL_REC_HDR + REPL_HDR_FIXED + REPL_NAME_MAX + REPL_TAG];
	size_t len = repl_hdr_encode(&x->h, buf + REPL_REC_HDR);

	return emit_small(x, buf, REPL_REC_HEADER, len, 0, false);
}

static int send_trailer(struct send_ctx *x)
{
	uint8_t buf[REPL_REC_HDR + REPL_TRAILER_LEN + REPL_TAG];
	struct repl_trailer t = { .seq = x->seq, .data_bytes = x->data_bytes,
				  .zero_bytes = x->zero_bytes, .ref_bytes = x->ref_bytes };

	memcpy(t.digest, x->digest, 32);
	repl_trailer_encode(&t, buf + REPL_REC_HDR);
	return emit_small(x, buf, REPL_REC_TRAILER, REPL_TRAILER_LEN, x->seq, false);
}

int repl_send(const struct repl_send_opts *o, const struct repl_writer *out,
	      struct repl_send_stats *st)
{
	struct send_ctx *x = kl_calloc(1, sizeof(*x));
	double t0 = kl_now();
	uint64_t est = 0;
	int rc;

	memset(st, 0, sizeof(*st));
	if (!x)
		return -ENOMEM;
	x->o = o;
	x->st = st;
	x->out = out;
	x->level = o->level ? o->level : 3;
	pthread_mutex_init(&x->zlock, NULL);
	rc = setup(x);
	if (rc < 0)
		goto out;
	snprintf(st->name, sizeof(st->name), "%s", x->h.name);
	memcpy(st->guid, x->h.snap_guid, 16);
	st->incremental = x->h.flags & REPL_HF_INCREMENTAL;
	st->keyed = x->keys.keyed;
	x->rec_cap = REPL_REC_HDR + REPL_DATA_PREFIX + 32 + ZSTD_compressBound(x->cs) + REPL_TAG;
	x->buf = kl_aligned_alloc((size_t)x->cs * SEND_BATCH);
	x->recbuf = kl_malloc(x->rec_cap * SEND_BATCH);
	x->held = kl_calloc(SEND_BATCH, sizeof(bool));
	if (!x->buf || !x->recbuf || !x->held) {
		rc = -ENOMEM;
		goto out;
	}
	rc = kl_pool_new(o->threads, &x->pool);
	if (rc < 0)
		goto out;
	/* the estimate (progress, header) is a metadata-only pass */
	if (x->h.flags & REPL_HF_INCREMENTAL) {
		struct est e = { .start = x->start };

		rc = blk_snapshot_diff(x->img, o->from, o->snapshot, est_cb, &e);
		est = e.bytes;
	} else {
		rc = walk_full(x, true, &est);
	}
	if (rc < 0)
		goto out;
	x->h.estimate = est;
	rc = send_header(x);
	if (rc < 0)
		goto out;
	x->prog = kl_progress_start(st->incremental ? "sending increment" : "sending", est,
				    o->progress);
	if (x->h.flags & REPL_HF_INCREMENTAL)
		rc = blk_snapshot_diff(x->img, o->from, o->snapshot, diff_cb, x);
	else
		rc = walk_full(x, false, NULL);
	if (rc == 0)
		rc = process_batch(x);
	if (rc == 0)
		rc = flush_zero(x);
	if (rc == 0)
		rc = send_trailer(x);
	kl_progress_finish(x->prog);
out:
	st->seconds = kl_now() - t0;
	kl_pool_free(x->pool);
	for (int i = 0; i < x->nzfree; i++)
		ZSTD_freeCCtx(x->zfree[i]);
	pthread_mutex_destroy(&x->zlock);
	kl_free(x->buf);
	kl_free(x->recbuf);
	kl_free(x->held);
	blk_close(x->rd);
	blk_close(x->img);
	repl_keys_wipe(&x->keys);
	kl_free(x);
	return rc;
}

/* ------------------------------------------------------------------ file readers/writers */

static ssize_t file_read(void *opaque, void *buf, size_t len)
{
	return kl_io_read(opaque, buf, len);
}

static int file_write(void *opaque, const void *buf, size_t len)
{
	return kl_io_write(opaque, buf, len);
}

void repl_reader_file(struct repl_reader *r, struct kl_file *f)
{
	r->read = file_read;
	r->opaque = f;
}

void repl_writer_file(struct repl_writer *w, struct kl_file *f)
{
	w->write = file_write;
	w->opaque = f;
}
