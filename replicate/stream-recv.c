/*
 * replicate/stream-recv.c - keel recv: a stream becomes a snapshot of a
 * .keel image (STREAM-FORMAT.md §8).
 *
 * The record loop (repl_rx_run) is shared by every target: it checks the
 * framing, CRC, sequence and (with keys) the tag of each record, decodes
 * and bounds-checks the payloads, keeps the chain digest, and hands the
 * results to a sink. The image sink writes into a staged receive
 * (format.h "receiving"): readers keep seeing the previous state, each MARK
 * record makes everything so far durable with its token, and only a
 * verified trailer makes the snapshot visible, in one commit.
 */
#include "replicate/repl_int.h"
#include "convert/convert.h"
#include "format/format.h"

#include <openssl/crypto.h>
#include <string.h>
#include <sys/stat.h>
#include <zstd.h>

static void guid_text(const uint8_t g[16], char out[37])
{
	kl_uuid_format(g, out);
}

/* ------------------------------------------------------------------ record loop */

struct rx_bufs {
	ZSTD_DCtx *z;
	uint8_t *data; /* one cluster */
};

static int rx_data(struct repl_rx *rx, struct repl_rd *rd, struct rx_bufs *b)
{
	const uint8_t *p = rd->body;
	size_t n = rd->payload_len, pre;
	uint64_t off;
	uint32_t len, df;
	const uint8_t *hash = NULL, *src, *frame = NULL;

	if (n < REPL_DATA_PREFIX)
		return kl_err(-EUCLEAN, "%s: data record %llu too short", rd->what,
			      (unsigned long long)rd->rh.seq);
	off = get_le64(p);
	len = get_le32(p + 8);
	df = get_le32(p + 12);
	pre = REPL_DATA_PREFIX + (df & REPL_DF_HASH ? 32 : 0);
	if (df & ~(uint32_t)REPL_DF_HASH || n < pre)
		return kl_err(-EUCLEAN, "%s: data record %llu: bad flags 0x%x", rd->what,
			      (unsigned long long)rd->rh.seq, df);
	if (!!(df & REPL_DF_HASH) != !!(rx->h.flags & REPL_HF_HASHED))
		return kl_err(-EUCLEAN, "%s: data record %llu: content hash %s", rd->what,
			      (unsigned long long)rd->rh.seq,
			      df & REPL_DF_HASH ? "in a stream without hashes" : "missing");
	if (len == 0 || len > rx->h.cluster_size || !kl_range_ok(off, len, rx->h.vsize) ||
	    off < rx->next_off)
		return kl_err(-EUCLEAN, "%s: data record %llu: range %llu+%u outside the image or "
			      "before offset %llu", rd->what, (unsigned long long)rd->rh.seq,
			      (unsigned long long)off, len, (unsigned long long)rx->next_off);
	if (df & REPL_DF_HASH)
		hash = p + REPL_DATA_PREFIX;
	src = p + pre;
	if (rd->rh.flags & REPL_RF_ZSTD) {
		size_t got = ZSTD_decompressDCtx(b->z, b->data, len, src, n - pre);

		if (ZSTD_isError(got) || got != len)
			return kl_err(-EUCLEAN, "%s: data record %llu: compressed data does not "
				      "decode to %u bytes", rd->what, (unsigned long long)rd->rh.seq,
				      len);
		frame = src;
		src = b->data;
	} else if (n - pre != len) {
		return kl_err(-EUCLEAN, "%s: data record %llu: %zu bytes of data for a %u-byte "
			      "range", rd->what, (unsigned long long)rd->rh.seq, n - pre, len);
	}
	rx->next_off = off + len;
	rx->data_bytes += len;
	rx->st->data_bytes += len;
	kl_progress_add(rx->prog, len);
	return rx->ops->data ? rx->ops->data(rx, off, src, len, hash, frame, n - pre) : 0;
}

static int rx_zero(struct repl_rx *rx, struct repl_rd *rd)
{
	uint64_t off, len;

	if (rd->payload_len != REPL_ZERO_LEN)
		return kl_err(-EUCLEAN, "%s: zero record %llu of %zu bytes", rd->what,
			      (unsigned long long)rd->rh.seq, rd->payload_len);
	off = get_le64(rd->body);
	len = get_le64(rd->body + 8);
	if (!(rx->h.flags & REPL_HF_INCREMENTAL) || len == 0 ||
	    !kl_range_ok(off, len, rx->h.vsize) || off < rx->next_off)
		return kl_err(-EUCLEAN, "%s: zero record %llu: range %llu+%llu out of place",
			      rd->what, (unsigned long long)rd->rh.seq, (unsigned long long)off,
			      (unsigned long long)len);
	rx->next_off = off + len;
	rx->zero_bytes += len;
	rx->st->zero_bytes += len;
	return rx->ops->zero ? rx->ops->zero(rx, off, len) : 0;
}

static int rx_ref(struct repl_rx *rx, struct repl_rd *rd)
{
	const uint8_t *p = rd->body;
	uint64_t off;
	uint32_t len;

	if (rd->payload_len != REPL_REF_LEN || !(rx->h.flags & REPL_HF_HASHED))
		return kl_err(-EUCLEAN, "%s: ref record %llu unexpected here", rd->what,
			      (unsigned long long)rd->rh.seq);
	off = get_le64(p);
	len = get_le32(p + 8);
	if (len == 0 || len > rx->h.cluster_size || !kl_range_ok(off, len, rx->h.vsize) ||
	    off < rx->next_off || get_le32(p + 12) != 0)
		return kl_err(-EUCLEAN, "%s: ref record %llu: range %llu+%u out of place", rd->what,
			      (unsigned long long)rd->rh.seq, (unsigned long long)off, len);
	rx->next_off = off + len;
	rx->ref_bytes += len;
	rx->st->ref_bytes += len;
	kl_progress_add(rx->prog, len);
	if (!rx->ops->ref)
		return 0;
	return rx->ops->ref(rx, off, len, p + 16);
}

static int rx_mark(struct repl_rx *rx, struct repl_rd *rd)
{
	struct repl_token t, id;
	uint8_t mac[32];

	if (repl_token_decode(rd->body, rd->payload_len, &t) < 0)
		return kl_err_prefix(-EUCLEAN, "%s: mark record %llu", rd->what,
				     (unsigned long long)rd->rh.seq);
	repl_token_from_hdr(&id, &rx->h);
	if (!repl_token_same_stream(&t, &id) || t.next_seq != rd->rh.seq + 1 ||
	    CRYPTO_memcmp(t.digest, rx->digest, 32) != 0 || t.offset < rx->next_off ||
	    (rx->decrypt && t.bytes != rx->data_bytes))
		return kl_err(-EUCLEAN, "%s: mark record %llu does not match the stream so far",
			      rd->what, (unsigned long long)rd->rh.seq);
	if (rx->decrypt && rx->keys.keyed) {
		repl_token_mac(rx->keys.tok, rd->body, mac);
		if (CRYPTO_memcmp(mac, t.mac, 32) != 0)
			return kl_err(-EBADMSG, "%s: mark record %llu: token MAC does not verify",
				      rd->what, (unsigned long long)rd->rh.seq);
	}
	rx->next_off = t.offset;
	if (!rx->decrypt)
		rx->data_bytes = t.bytes;
	memcpy(t.target_uuid, rx->target_uuid, 16);
	rx->st->marks++;
	if (rx->ops->checkpoint) {
		KL_TRY(rx->ops->checkpoint(rx, &t));
		rx->checkpointed = true;
	}
	return 0;
}

static int rx_trailer(struct repl_rx *rx, struct repl_rd *rd)
{
	struct repl_trailer t;

	KL_TRY(repl_trailer_decode(rd->body, rd->payload_len, &t));
	if (t.seq != rd->rh.seq || CRYPTO_memcmp(t.digest, rx->digest, 32) != 0 ||
	    (rx->decrypt && t.data_bytes != rx->data_bytes))
		return kl_err(-EBADMSG, "%s: the trailer's digest of the stream does not match "
			      "the records received (records lost, added or changed)", rd->what);
	return 0;
}

static int rx_header(struct repl_rx *rx, struct repl_rd *rd)
{
	const struct repl_recv_opts *o = rx->o;
	int rc;

	KL_TRY(repl_hdr_decode(rd->body, rd->payload_len, &rx->h));
	if (memcmp(rx->h.stream_id, rd->stream_id, 16) != 0)
		return kl_err(-EUCLEAN, "%s: header stream id mismatch", rd->what);
	if ((rx->h.flags & o->require_flags) != o->require_flags)
		return kl_err(-EPERM, "%s: the stream lacks required options (flags 0x%x of 0x%x)",
			      rd->what, rx->h.flags, o->require_flags);
	/* a raw store keeps the records as they came: it never opens them, key or not */
	rx->decrypt = !o->raw;
	if ((rx->h.flags & REPL_HF_KEYED) && !(o->key && o->key_len)) {
		if (!o->raw && !o->verify_only)
			return kl_err(-ENOKEY, "%s: the stream is encrypted: give its passphrase "
				      "(--key-file or --key-env)", rd->what);
		rx->decrypt = false;
	}
	if (rx->decrypt) {
		rc = repl_keys_derive(&rx->keys, &rx->h, o->key, o->key_len);
		if (rc < 0)
			return rc;
		if (repl_rd_open(rd, &rx->keys) < 0)
			return kl_err(-EBADMSG, "%s: the stream header fails authentication (a wrong "
				      "passphrase, or a damaged stream)", rd->what);
	}
	rx->st->incremental = rx->h.flags & REPL_HF_INCREMENTAL;
	rx->st->keyed = rx->h.flags & REPL_HF_KEYED;
	rx->st->resumed = rx->h.flags & REPL_HF_RESUME;
	snprintf(rx->st->name, sizeof(rx->st->name), "%s", rx->h.name);
	memcpy(rx->st->guid, rx->h.snap_guid, 16);
	if (rx->h.flags & REPL_HF_RESUME) {
		rd->next_seq = rx->h.resume_seq;
		memcpy(rx->digest, rx->h.resume_digest, 32);
		rx->data_bytes = rx->h.resume_bytes;
		rx->next_off = rx->h.resume_off;
	} else {
		rd->next_seq = 1;
		repl_chain_init(rx->digest, &rx->h);
	}
	return 0;
}

/* After the trailer the input must end: anything more is not part of the stream. */
static int rx_expect_end(struct repl_rd *rd)
{
	uint8_t c;
	ssize_t n = rd->in->read(rd->in->opaque, &c, 1);

	if (n < 0)
		return (int)n;
	if (n > 0)
		return kl_err(-EUCLEAN, "%s: data after the stream's trailer at byte %llu "
			      "(streams concatenated?)", rd->what, (unsigned long long)rd->bytes);
	return 0;
}

static int rx_records(struct repl_rx *rx, struct repl_rd *rd, struct rx_bufs *b)
{
	bool done = false;
	int rc = 0;

	while (!done) {
		bool sealed_unread;

		if (conv_interrupted())
			return kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
		rc = repl_rd_next(rd);
		if (rc == 1)
			return kl_err(-EUCLEAN, "%s: the stream ended after %llu bytes, before its "
				      "trailer (truncated)", rd->what, (unsigned long long)rd->bytes);
		if (rc < 0)
			return rc;
		rx->st->records++;
		if (rx->decrypt)
			KL_TRY(repl_rd_open(rd, &rx->keys));
		sealed_unread = !rx->decrypt && (rd->rh.flags & REPL_RF_SEALED);
		switch (rd->rh.type) {
		case REPL_REC_DATA:
			rc = sealed_unread ? 0 : rx_data(rx, rd, b);
			break;
		case REPL_REC_ZERO:
			rc = sealed_unread ? 0 : rx_zero(rx, rd);
			break;
		case REPL_REC_REF:
			rc = sealed_unread ? 0 : rx_ref(rx, rd);
			break;
		case REPL_REC_MARK:
			rc = 0; /* after the raw copy below: the mark covers itself */
			break;
		case REPL_REC_TRAILER:
			rc = rx_trailer(rx, rd);
			if (rc == 0)
				rc = rx_expect_end(rd);
			done = rc == 0;
			break;
		default:
			rc = kl_err(-EUCLEAN, "unexpected record type %u", rd->rh.type);
			break;
		}
		if (rc == 0 && rx->ops->raw_record)
			rc = rx->ops->raw_record(rx, rd->hdr_raw, rd->body, rd->rh.body_len);
		if (rc == 0 && rd->rh.type == REPL_REC_MARK)
			rc = rx_mark(rx, rd);
		if (rc < 0)
			return rc;
		if (rd->rh.type == REPL_REC_DATA || rd->rh.type == REPL_REC_ZERO ||
		    rd->rh.type == REPL_REC_REF)
			repl_chain_step(rx->digest, rd->hdr_raw, rd->tag);
	}
	return 0;
}

int repl_rx_run(struct repl_rx *rx, const struct repl_reader *in)
{
	struct repl_rd rd;
	struct rx_bufs b = { 0 };
	int rc;

	KL_TRY(repl_rd_init(&rd, in, rx->o->target ? rx->o->target : "stream"));
	b.z = ZSTD_createDCtx();
	b.data = kl_malloc(2u << 20);
	if (!b.z || !b.data) {
		rc = -ENOMEM;
		goto out;
	}
	rc = repl_rd_next(&rd);
	if (rc == 1)
		rc = kl_err(-EUCLEAN, "empty stream");
	if (rc == 0 && rd.rh.type != REPL_REC_HEADER)
		rc = kl_err(-EUCLEAN, "the stream does not start with a header");
	if (rc == 0)
		rc = rx_header(rx, &rd);
	if (rc < 0)
		goto out;
	rc = rx->ops->begin(rx);
	/* a resumed stream's header is not part of what a raw store keeps */
	if (rc == 0 && rx->ops->raw_record && !(rx->h.flags & REPL_HF_RESUME))
		rc = rx->ops->raw_record(rx, rd.hdr_raw, rd.body, rd.rh.body_len);
	if (rc == 0) {
		rx->prog = kl_progress_start("receiving", rx->h.estimate, rx->o->progress);
		kl_progress_add(rx->prog, rx->data_bytes);
		rc = rx_records(rx, &rd, &b);
		if (rc == 0)
			rc = rx->ops->finish(rx);
		kl_progress_finish(rx->prog);
	}
	rx->st->stream_bytes = rd.bytes;
	if (rc < 0)
		rx->ops->fail(rx, rx->checkpointed);
	else
		rx->st->finished = true;
out:
	rx->st->stream_bytes = rd.bytes;
	ZSTD_freeDCtx(b.z);
	kl_free(b.data);
	repl_rd_release(&rd);
	repl_keys_wipe(&rx->keys);
	return rc;
}

/* ------------------------------------------------------------------ image sink */

struct img_sink {
	struct blk_dev *d;
	char *path;
	uint8_t *buf; /* one cluster for refs */
	char base[256];
};

static int img_open(const struct repl_recv_opts *o, const char *path, unsigned flags,
		    struct blk_dev **d)
{
	struct blk_open_opts bo = { .format = "keel", .flags = o->open_flags | flags,
				    .key = o->key, .key_len = o->key_len };

	return blk_open(path, &bo, d);
}

static int stored_token(struct blk_dev *d, bool *active, struct repl_token *t)
{
	uint8_t buf[BLK_RECV_TOKEN_MAX];
	size_t len = sizeof(buf);

	KL_TRY(blk_recv_status(d, active, buf, &len));
	if (!*active || len == 0) {
		memset(t, 0, sizeof(*t));
		return len == 0 && *active ? 1 : 0;
	}
	return repl_token_decode(buf, len, t);
}

static int img_create(struct repl_rx *rx, struct img_sink *k)
{
	const struct repl_recv_opts *o = rx->o;
	struct blk_create_opts co = { .size = rx->h.vsize, .opts = o->create_opts,
				      .key = o->key, .key_len = o->key_len };
	char cs[32];
	int rc;

	/* the replica keeps the source's cluster size and encryption unless -o says otherwise */
	rc = 0;
	if (!kl_opts_peek(co.opts, "cluster_size")) {
		snprintf(cs, sizeof(cs), "%u", rx->h.cluster_size);
		/* co.opts may be a new set even when this fails: freed below */
		rc = kl_opts_set(&co.opts, "cluster_size", cs);
	}
	if (rc == 0 && (rx->h.flags & REPL_HF_SRC_ENCRYPTED) && !kl_opts_peek(co.opts, "encrypt"))
		rc = kl_opts_set(&co.opts, "encrypt", "on");
	if (rc == 0)
		rc = blk_create(k->path, "keel", &co);
	if (co.opts != o->create_opts)
		kl_opts_free(co.opts);
	if (rc < 0)
		return kl_err_prefix(rc, "creating %s", k->path);
	rx->st->created = true;
	return 0;
}

static int img_check_resume(struct repl_rx *rx, struct img_sink *k)
{
	struct repl_token want, t;
	bool active;
	int rc;

	rc = stored_token(k->d, &active, &t);
	if (rc < 0)
		return rc;
	if (!active || rc == 1)
		return kl_err(-EPERM, "%s: no interrupted receive to resume here (the stream is a "
			      "resumed one)", k->path);
	repl_token_from_hdr(&want, &rx->h);
	if (!repl_token_same_stream(&t, &want))
		return kl_err(-EPERM, "%s: the receive in progress is for another stream", k->path);
	if (t.next_seq != rx->h.resume_seq || t.offset != rx->h.resume_off ||
	    t.bytes != rx->h.resume_bytes || memcmp(t.digest, rx->h.resume_digest, 32) ||
	    memcmp(t.target_uuid, rx->h.target_uuid, 16) ||
	    memcmp(t.target_uuid, rx->target_uuid, 16))
		return kl_err(-EPERM, "%s: the resumed stream continues from another point or "
			      "for another target than the receive in progress (use the token "
			      "keel info prints)", k->path);
	rx->stored = t;
	rx->have_stored = true;
	rx->checkpointed = true;
	return 0;
}

static int img_check_base(struct repl_rx *rx, struct img_sink *k)
{
	struct blk_snapshot_info *v = NULL;
	size_t n = 0;
	const struct blk_snapshot_info *base = NULL;
	char g[37];
	int rc;

	KL_TRY(blk_snapshot_list(k->d, &v, &n));
	rc = 0;
	for (size_t i = 0; i < n; i++) {
		if (!memcmp(v[i].guid, rx->h.snap_guid, 16)) {
			rc = kl_err(-EEXIST, "%s already holds snapshot '%s' of this stream (as '%s')",
				    k->path, rx->h.name, v[i].name);
			break;
		}
		if (!strcmp(v[i].name, rx->h.name)) {
			rc = kl_err(-EEXIST, "%s has another snapshot named '%s'", k->path,
				    rx->h.name);
			break;
		}
		if ((rx->h.flags & REPL_HF_INCREMENTAL) && !memcmp(v[i].guid, rx->h.from_guid, 16))
			base = &v[i];
	}
	if (rc == 0 && (rx->h.flags & REPL_HF_INCREMENTAL) && !base) {
		guid_text(rx->h.from_guid, g);
		rc = kl_err(-ESTALE, "%s does not hold the stream's base snapshot (guid %s): send a "
			    "full stream, or an incremental from a snapshot it holds", k->path, g);
	}
	if (rc == 0 && !(rx->h.flags & REPL_HF_INCREMENTAL) && n > 0)
		rc = kl_err(-EEXIST, "%s already holds snapshots: a full stream needs a new "
			    "target (or send incrementally)", k->path);
	if (rc == 0 && base && base->vsize != rx->h.vsize)
		rc = kl_err(-ENOTSUP, "%s: base snapshot '%s' has another size", k->path,
			    base->name);
	if (rc == 0 && base)
		snprintf(k->base, sizeof(k->base), "%s", base->name);
	blk_snapshot_list_free(v, n);
	return rc;
}

static int changed_cb(void *opaque, const struct blk_extent *e)
{
	(void)e;
	*(bool *)opaque = true;
	return -ECANCELED;
}

static int img_begin(struct repl_rx *rx)
{
	struct img_sink *k = rx->sink;
	const struct repl_recv_opts *o = rx->o;
	struct blk_identity id;
	struct repl_token t;
	struct stat sb;
	bool active = false;
	int rc;

	if (o->verify_only)
		return 0;
	if (lstat(k->path, &sb) != 0) {
		if (rx->h.flags & REPL_HF_RESUME)
			return kl_err(-ENOENT, "%s does not exist: nothing to resume", k->path);
		if (rx->h.flags & REPL_HF_INCREMENTAL)
			return kl_err(-ESTALE, "%s does not exist: an incremental stream needs its "
				      "base snapshot there", k->path);
		KL_TRY(img_create(rx, k));
	}
	rc = img_open(o, k->path, BLK_OPEN_RDWR | BLK_OPEN_RECV, &k->d);
	if (rc < 0)
		return rc;
	KL_TRY(blk_identity(k->d, &id));
	memcpy(rx->target_uuid, id.uuid, 16);
	if (rx->have)
		repl_have_set_uuid(rx->have, id.uuid);
	if (rx->h.vsize != blk_size(k->d) && !(rx->h.flags & REPL_HF_INCREMENTAL))
		return kl_err(-EINVAL, "%s is %llu bytes, the stream %llu", k->path,
			      (unsigned long long)blk_size(k->d), (unsigned long long)rx->h.vsize);
	if (rx->h.flags & REPL_HF_RESUME)
		return img_check_resume(rx, k);
	rc = stored_token(k->d, &active, &t);
	if (rc < 0)
		return rc;
	if (active) {
		char text[REPL_TOKEN_TEXT];

		if (rc == 1)
			return kl_err(-EBUSY, "%s: a receive was interrupted before its first resume "
				      "point; drop it with keel recv --abort", k->path);
		repl_token_to_text(&t, text);
		return kl_err(-EBUSY, "%s: an interrupted receive is waiting: continue it with "
			      "keel send --resume %s, or drop it with keel recv --abort", k->path,
			      text);
	}
	KL_TRY(img_check_base(rx, k));
	if (k->base[0] && !o->force) {
		bool changed = false;

		rc = blk_snapshot_diff(k->d, k->base, NULL, changed_cb, &changed);
		if (rc < 0 && rc != -ECANCELED)
			return rc;
		if (changed)
			return kl_err(-EBUSY, "%s was changed since snapshot '%s': --force discards "
				      "those changes", k->path, k->base);
	}
	KL_TRY(blk_recv_begin(k->d, k->base[0] ? k->base : NULL));
	rx->began_here = true;
	return 0;
}

static int img_data(struct repl_rx *rx, uint64_t off, const uint8_t *buf, size_t len,
		    const uint8_t *hash, const uint8_t *frame, size_t flen)
{
	struct img_sink *k = rx->sink;

	if (!k->d)
		return 0;
	if (hash && rx->have)
		KL_TRY(repl_have_note(rx->have, hash, off, (uint32_t)len));
	/* the frame decoded to buf just now: the image may keep it rather than compress again */
	if (frame)
		return blk_write_compressed(k->d, off, buf, len, BLK_CODEC_ZSTD, frame, flen);
	return blk_pwrite(k->d, off, buf, len);
}

static int img_zero(struct repl_rx *rx, uint64_t off, uint64_t len)
{
	struct img_sink *k = rx->sink;

	return k->d ? blk_pwrite_zeroes(k->d, off, len, BLK_ZERO_MAY_UNMAP) : 0;
}

static int img_ref(struct repl_rx *rx, uint64_t off, size_t len, const uint8_t hash[32])
{
	struct img_sink *k = rx->sink;
	uint8_t h[32];

	if (!k->d)
		return 0;
	if (!rx->have)
		return kl_err(-EUCLEAN, "%s: a ref record, but this receiver announced no content",
			      k->path);
	if (!k->buf && !(k->buf = kl_malloc(2u << 20)))
		return -ENOMEM;
	KL_TRY(repl_have_read(rx->have, k->d, hash, k->buf, len));
	/* what we copy must be what the sender meant, or the map is stale */
	KL_TRY(repl_have_hash(repl_have_key(rx->have), k->buf, len, h));
	if (memcmp(h, hash, 32) != 0)
		return kl_err(-EUCLEAN, "%s: held content for offset %llu does not match its hash "
			      "(stale content map)", k->path, (unsigned long long)off);
	KL_TRY(repl_have_note(rx->have, hash, off, (uint32_t)len));
	return blk_pwrite(k->d, off, k->buf, len);
}

static int img_checkpoint(struct repl_rx *rx, const struct repl_token *t)
{
	struct img_sink *k = rx->sink;
	uint8_t buf[REPL_TOKEN_LEN];

	if (!k->d)
		return 0;
	repl_token_encode(t, buf);
	rx->stored = *t;
	rx->have_stored = true;
	return blk_recv_checkpoint(k->d, buf, sizeof(buf));
}

static int img_finish(struct repl_rx *rx)
{
	struct img_sink *k = rx->sink;

	if (!k->d)
		return 0;
	KL_TRY(blk_recv_finish(k->d, rx->h.name, rx->h.snap_guid));
	if (rx->have) {
		int rc = repl_have_commit(rx->have, rx->h.snap_guid, rx->h.name);

		/* the map only saves bandwidth: losing it is not a failed receive */
		if (rc < 0)
			kl_err_clear();
	}
	return 0;
}

static void img_fail(struct repl_rx *rx, bool keep)
{
	struct img_sink *k = rx->sink;
	char *why = kl_strdup(kl_errmsg());

	if (!k->d) {
		if (rx->st->created)
			kl_io_unlink(k->path);
		goto out;
	}
	if (rx->have)
		repl_have_forget_pending(rx->have);
	if (!keep && (rx->began_here || rx->st->created)) {
		/* nothing durable to resume from: the target goes back to what it was */
		blk_recv_abort(k->d);
		blk_close(k->d);
		k->d = NULL;
		if (rx->st->created)
			kl_io_unlink(k->path);
	} else if (rx->have_stored) {
		repl_token_to_text(&rx->stored, rx->st->token);
	}
out:
	if (why)
		kl_err(-EIO, "%s", why);
	kl_free(why);
}

static const struct repl_sink_ops img_ops = {
	.begin = img_begin,
	.data = img_data,
	.zero = img_zero,
	.ref = img_ref,
	.checkpoint = img_checkpoint,
	.finish = img_finish,
	.fail = img_fail,
};

static void sink_fail_noop(struct repl_rx *rx, bool keep)
{
	(void)rx;
	(void)keep;
}

static int sink_ok(struct repl_rx *rx)
{
	(void)rx;
	return 0;
}

static const struct repl_sink_ops verify_ops = {
	.begin = sink_ok,
	.finish = sink_ok,
	.fail = sink_fail_noop,
};

int repl_recv(const struct repl_reader *in, const struct repl_recv_opts *o,
	      struct repl_recv_stats *st)
{
	struct repl_rx rx = { 0 };
	struct img_sink k = { 0 };
	double t0 = kl_now();
	int rc, code;

	memset(st, 0, sizeof(*st));
	rx.o = o;
	rx.st = st;
	rx.have = o->have;
	st->raw = o->raw;
	if (o->verify_only) {
		rx.ops = &verify_ops;
	} else if (o->raw) {
		rc = repl_raw_sink_init(&rx, o->target);
		if (rc < 0)
			return rc;
	} else {
		k.path = (char *)o->target;
		rx.ops = &img_ops;
		rx.sink = &k;
	}
	rc = repl_rx_run(&rx, in);
	code = rc;
	if (o->raw && !o->verify_only)
		repl_raw_sink_free(&rx);
	if (!o->raw && !o->verify_only) {
		if (rc < 0)
			blk_close_discard(k.d);
		else
			blk_close(k.d);
		kl_free(k.buf);
	}
	st->seconds = kl_now() - t0;
	return code;
}

/* ------------------------------------------------------------------ status, abort */

int repl_recv_status(const char *target, const uint8_t *key, size_t key_len, bool *active,
		     char *token, size_t cap)
{
	struct repl_recv_opts o = { .key = key, .key_len = key_len };
	struct blk_dev *d = NULL;
	struct repl_token t;
	int rc;

	*active = false;
	if (token && cap)
		token[0] = '\0';
	if (repl_raw_is_store(target)) {
		KL_TRY(repl_raw_status(target, active, &t));
	} else {
		KL_TRY(img_open(&o, target, BLK_OPEN_NO_PARENT, &d));
		rc = stored_token(d, active, &t);
		blk_close(d);
		if (rc < 0)
			return rc;
		if (rc == 1)
			return 0; /* in progress, but no resume point yet */
	}
	if (*active && token && cap >= REPL_TOKEN_TEXT)
		repl_token_to_text(&t, token);
	return 0;
}

int repl_recv_abort(const char *target, const uint8_t *key, size_t key_len)
{
	struct repl_recv_opts o = { .key = key, .key_len = key_len };
	struct blk_dev *d = NULL;
	bool active;
	int rc;

	if (repl_raw_is_store(target))
		return repl_raw_abort(target);
	KL_TRY(img_open(&o, target, BLK_OPEN_RDWR | BLK_OPEN_RECV, &d));
	rc = blk_recv_status(d, &active, NULL, &(size_t){ 0 });
	if (rc == 0 && !active)
		rc = kl_err(-ENOENT, "%s: no receive in progress", target);
	if (rc == 0)
		rc = blk_recv_abort(d);
	blk_close(d);
	return rc;
}
