/*
 * replicate/stream-format.c - encoding and bounds-checked decoding of the
 * stream's header, records, token and trailer (STREAM-FORMAT.md §2-§6),
 * and the record reader every receiver shares. Nothing read from a stream
 * is used before its length, range and sequence are checked.
 */
#include "replicate/repl_int.h"

#include <string.h>

static const char *rec_name(unsigned type)
{
	static const char *const names[] = { "?", "header", "data", "zero", "ref", "mark",
					     "trailer" };

	return type < KL_ARRAY_SIZE(names) ? names[type] : "unknown";
}

/* ------------------------------------------------------------------ header (§3) */

size_t repl_hdr_encode(const struct repl_hdr *h, uint8_t *p)
{
	size_t nl = strlen(h->name);

	memset(p, 0, REPL_HDR_FIXED);
	memcpy(p, REPL_HDR_MAGIC, 8);
	put_le16(p + 8, REPL_VERSION);
	put_le32(p + 12, h->flags);
	memcpy(p + 16, h->stream_id, 16);
	memcpy(p + 32, h->src_uuid, 16);
	memcpy(p + 48, h->snap_guid, 16);
	put_le64(p + 64, h->snap_gen);
	put_le64(p + 72, h->snap_time);
	memcpy(p + 80, h->from_guid, 16);
	put_le64(p + 96, h->from_gen);
	put_le64(p + 104, h->vsize);
	put_le32(p + 112, h->cluster_size);
	put_le32(p + 116, h->kdf);
	put_le64(p + 120, h->kdf_n);
	put_le32(p + 128, h->kdf_r);
	put_le32(p + 132, h->kdf_p);
	memcpy(p + 136, h->kdf_salt, 32);
	put_le64(p + 168, h->estimate);
	put_le64(p + 176, h->resume_seq);
	put_le64(p + 184, h->resume_off);
	put_le64(p + 192, h->resume_bytes);
	memcpy(p + 200, h->resume_digest, 32);
	memcpy(p + 232, h->target_uuid, 16);
	put_le16(p + 248, (uint16_t)nl);
	memcpy(p + REPL_HDR_FIXED, h->name, nl);
	return REPL_HDR_FIXED + nl;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

int repl_hdr_decode(const uint8_t *p, size_t len, struct repl_hdr *h)
{
	unsigned ver;
	size_t nl;

	memset(h, 0, sizeof(*h));
	if (len < REPL_HDR_FIXED || memcmp(p, REPL_HDR_MAGIC, 8) != 0)
		return kl_err(-EUCLEAN, "stream: not a keel stream (no KEELSTRM header)");
	ver = get_le16(p + 8);
	if (ver != REPL_VERSION)
		return kl_err(-ENOTSUP, "stream: format version %u; this keel reads version %u",
			      ver, REPL_VERSION);
	h->flags = get_le32(p + 12);
	if (h->flags & ~(uint32_t)REPL_HF_KNOWN)
		return kl_err(-ENOTSUP, "stream: unknown header flags 0x%x",
			      h->flags & ~(uint32_t)REPL_HF_KNOWN);
	memcpy(h->stream_id, p + 16, 16);
	memcpy(h->src_uuid, p + 32, 16);
	memcpy(h->snap_guid, p + 48, 16);
	h->snap_gen = get_le64(p + 64);
	h->snap_time = get_le64(p + 72);
	memcpy(h->from_guid, p + 80, 16);
	h->from_gen = get_le64(p + 96);
	h->vsize = get_le64(p + 104);
	h->cluster_size = get_le32(p + 112);
	h->kdf = get_le32(p + 116);
	h->kdf_n = get_le64(p + 120);
	h->kdf_r = get_le32(p + 128);
	h->kdf_p = get_le32(p + 132);
	memcpy(h->kdf_salt, p + 136, 32);
	h->estimate = get_le64(p + 168);
	h->resume_seq = get_le64(p + 176);
	h->resume_off = get_le64(p + 184);
	h->resume_bytes = get_le64(p + 192);
	memcpy(h->resume_digest, p + 200, 32);
	memcpy(h->target_uuid, p + 232, 16);
	nl = get_le16(p + 248);
	if (nl < 1 || nl > REPL_NAME_MAX || len != REPL_HDR_FIXED + nl)
		return kl_err(-EUCLEAN, "stream header: snapshot name of %zu bytes in a %zu-byte "
			      "header (1..255 bytes expected)", nl, len);
	memcpy(h->name, p + REPL_HDR_FIXED, nl);
	h->name[nl] = '\0';
	if (strlen(h->name) != nl)
		return kl_err(-EUCLEAN, "stream header: NUL byte in the snapshot name");
	if (!KL_IS_POW2(h->cluster_size) || h->cluster_size < 4096 || h->cluster_size > (2u << 20))
		return kl_err(-EUCLEAN, "stream header: cluster size %u (4 KiB..2 MiB, a power of "
			      "two expected)", h->cluster_size);
	if (h->vsize == 0 || h->vsize > (1ULL << 56) || h->vsize % 512)
		return kl_err(-EUCLEAN, "stream header: virtual size %llu out of range",
			      (unsigned long long)h->vsize);
	if (all_zero(h->stream_id, 16) || all_zero(h->snap_guid, 16))
		return kl_err(-EUCLEAN, "stream header: zero stream id or snapshot guid");
	if (!!(h->flags & REPL_HF_INCREMENTAL) == all_zero(h->from_guid, 16))
		return kl_err(-EUCLEAN, "stream header: the incremental flag and the FROM guid "
			      "disagree");
	if (h->flags & REPL_HF_KEYED) {
		KL_TRY(repl_kdf_check(h->kdf, h->kdf_n, h->kdf_r, h->kdf_p));
	} else if (h->kdf != REPL_KDF_NONE) {
		return kl_err(-EUCLEAN, "stream header: key derivation %u in a stream without a key",
			      h->kdf);
	}
	if ((h->flags & REPL_HF_RAW) && !(h->flags & REPL_HF_KEYED))
		return kl_err(-EUCLEAN, "stream header: raw stream without a key");
	if (h->flags & REPL_HF_RESUME) {
		if (h->resume_seq < 2 || h->resume_seq >= REPL_SEQ_MAX ||
		    h->resume_off > h->vsize)
			return kl_err(-EUCLEAN, "stream header: resume point (record %llu, offset "
				      "%llu) out of range", (unsigned long long)h->resume_seq,
				      (unsigned long long)h->resume_off);
	} else if (h->resume_seq || h->resume_off || h->resume_bytes ||
		   !all_zero(h->resume_digest, 32) || !all_zero(h->target_uuid, 16)) {
		return kl_err(-EUCLEAN, "stream header: resume fields set in a fresh stream");
	}
	return 0;
}

/* ------------------------------------------------------------------ records (§2) */

void repl_rec_hdr_encode(const struct repl_rec_hdr *r, uint8_t out[REPL_REC_HDR])
{
	put_le32(out, r->body_len);
	put_le16(out + 4, r->type);
	put_le16(out + 6, r->flags);
	put_le64(out + 8, r->seq);
	memcpy(out + 16, r->nonce, REPL_NONCE);
	put_le32(out + 28, r->crc);
}

int repl_rec_hdr_decode(const uint8_t in[REPL_REC_HDR], struct repl_rec_hdr *r)
{
	r->body_len = get_le32(in);
	r->type = get_le16(in + 4);
	r->flags = get_le16(in + 6);
	r->seq = get_le64(in + 8);
	memcpy(r->nonce, in + 16, REPL_NONCE);
	r->crc = get_le32(in + 28);
	if (r->body_len < REPL_TAG || r->body_len > REPL_REC_MAX_BODY)
		return kl_err(-EUCLEAN, "record body of %u bytes (%u..%u expected)", r->body_len,
			      REPL_TAG, REPL_REC_MAX_BODY);
	if (r->type < REPL_REC_HEADER || r->type > REPL_REC_TRAILER)
		return kl_err(-EUCLEAN, "unknown record type %u", r->type);
	if (r->flags & ~(unsigned)REPL_RF_KNOWN)
		return kl_err(-EUCLEAN, "unknown record flags 0x%x", r->flags);
	if ((r->flags & REPL_RF_ZSTD) && r->type != REPL_REC_DATA)
		return kl_err(-EUCLEAN, "compression flag on a %s record", rec_name(r->type));
	if (r->seq >= REPL_SEQ_MAX)
		return kl_err(-EUCLEAN, "record sequence number %llu out of range",
			      (unsigned long long)r->seq);
	return 0;
}

uint32_t repl_rec_crc(const uint8_t stream_id[16], const uint8_t hdr[REPL_REC_HDR],
		      const uint8_t *body, size_t len)
{
	uint32_t c = kl_crc32c(0, stream_id, 16);

	c = kl_crc32c(c, hdr, 28);
	return kl_crc32c(c, body, len);
}

/* ------------------------------------------------------------------ token (§6) */

void repl_token_encode(const struct repl_token *t, uint8_t p[REPL_TOKEN_LEN])
{
	memset(p, 0, REPL_TOKEN_LEN);
	memcpy(p, REPL_TOKEN_MAGIC, 4);
	put_le16(p + 4, REPL_VERSION);
	put_le32(p + 8, t->flags);
	put_le32(p + 12, t->cluster_size);
	memcpy(p + 16, t->stream_id, 16);
	memcpy(p + 32, t->src_uuid, 16);
	memcpy(p + 48, t->snap_guid, 16);
	put_le64(p + 64, t->snap_gen);
	memcpy(p + 72, t->from_guid, 16);
	put_le64(p + 88, t->from_gen);
	put_le64(p + 96, t->vsize);
	put_le32(p + 104, t->kdf);
	put_le32(p + 108, t->kdf_r);
	put_le64(p + 112, t->kdf_n);
	put_le32(p + 120, t->kdf_p);
	memcpy(p + 128, t->kdf_salt, 32);
	put_le64(p + 160, t->next_seq);
	put_le64(p + 168, t->offset);
	memcpy(p + 176, t->digest, 32);
	put_le64(p + 208, t->bytes);
	memcpy(p + 224, t->mac, 32);
	memcpy(p + 256, t->target_uuid, 16);
}

int repl_token_decode(const uint8_t *p, size_t len, struct repl_token *t)
{
	memset(t, 0, sizeof(*t));
	if ((len != REPL_TOKEN_MARK && len != REPL_TOKEN_LEN) || memcmp(p, REPL_TOKEN_MAGIC, 4))
		return kl_err(-EUCLEAN, "resume token: %zu bytes without the KTOK magic (%d or %d "
			      "expected)", len, REPL_TOKEN_MARK, REPL_TOKEN_LEN);
	if (get_le16(p + 4) != REPL_VERSION)
		return kl_err(-ENOTSUP, "resume token: version %u", get_le16(p + 4));
	t->flags = get_le32(p + 8);
	t->cluster_size = get_le32(p + 12);
	memcpy(t->stream_id, p + 16, 16);
	memcpy(t->src_uuid, p + 32, 16);
	memcpy(t->snap_guid, p + 48, 16);
	t->snap_gen = get_le64(p + 64);
	memcpy(t->from_guid, p + 72, 16);
	t->from_gen = get_le64(p + 88);
	t->vsize = get_le64(p + 96);
	t->kdf = get_le32(p + 104);
	t->kdf_r = get_le32(p + 108);
	t->kdf_n = get_le64(p + 112);
	t->kdf_p = get_le32(p + 120);
	memcpy(t->kdf_salt, p + 128, 32);
	t->next_seq = get_le64(p + 160);
	t->offset = get_le64(p + 168);
	memcpy(t->digest, p + 176, 32);
	t->bytes = get_le64(p + 208);
	memcpy(t->mac, p + 224, 32);
	if (len == REPL_TOKEN_LEN)
		memcpy(t->target_uuid, p + 256, 16);
	if (t->flags & ~(uint32_t)(REPL_HF_INCREMENTAL | REPL_HF_KEYED | REPL_HF_RAW |
				   REPL_HF_SRC_ENCRYPTED))
		return kl_err(-EUCLEAN, "resume token: flags 0x%x", t->flags);
	if (t->next_seq < 2 || t->next_seq >= REPL_SEQ_MAX || t->offset > t->vsize ||
	    t->vsize > (1ULL << 56))
		return kl_err(-EUCLEAN, "resume token: position (record %llu, offset %llu) out of "
			      "range", (unsigned long long)t->next_seq,
			      (unsigned long long)t->offset);
	return 0;
}

int repl_token_from_text(const char *text, struct repl_token *t)
{
	uint8_t buf[REPL_TOKEN_LEN];
	size_t pl = strlen(REPL_TOKEN_PREFIX);

	if (strncmp(text, REPL_TOKEN_PREFIX, pl) != 0 || strlen(text) != pl + 2 * REPL_TOKEN_LEN ||
	    repl_unhex(text + pl, buf, REPL_TOKEN_LEN) < 0)
		return kl_err(-EINVAL, "resume token: not a keel token (keel1- and %d hex digits "
			      "expected)", 2 * REPL_TOKEN_LEN);
	return repl_token_decode(buf, sizeof(buf), t);
}

void repl_token_to_text(const struct repl_token *t, char out[REPL_TOKEN_TEXT])
{
	uint8_t buf[REPL_TOKEN_LEN];
	size_t pl = strlen(REPL_TOKEN_PREFIX);

	repl_token_encode(t, buf);
	memcpy(out, REPL_TOKEN_PREFIX, pl);
	repl_hex(buf, sizeof(buf), out + pl);
}

int repl_token_text(const void *blob, size_t len, char *out, size_t cap)
{
	struct repl_token t;

	if (cap < REPL_TOKEN_TEXT)
		return kl_err(-ENOSPC, "resume token: %zu bytes of room for %zu", cap,
			      (size_t)REPL_TOKEN_TEXT);
	KL_TRY(repl_token_decode(blob, len, &t));
	repl_token_to_text(&t, out);
	return 0;
}

void repl_token_from_hdr(struct repl_token *t, const struct repl_hdr *h)
{
	memset(t, 0, sizeof(*t));
	t->flags = h->flags & ~(uint32_t)(REPL_HF_RESUME | REPL_HF_HASHED);
	t->cluster_size = h->cluster_size;
	memcpy(t->stream_id, h->stream_id, 16);
	memcpy(t->src_uuid, h->src_uuid, 16);
	memcpy(t->snap_guid, h->snap_guid, 16);
	t->snap_gen = h->snap_gen;
	memcpy(t->from_guid, h->from_guid, 16);
	t->from_gen = h->from_gen;
	t->vsize = h->vsize;
	t->kdf = h->kdf;
	t->kdf_r = h->kdf_r;
	t->kdf_n = h->kdf_n;
	t->kdf_p = h->kdf_p;
	memcpy(t->kdf_salt, h->kdf_salt, 32);
}

bool repl_token_same_stream(const struct repl_token *a, const struct repl_token *b)
{
	return a->flags == b->flags && a->cluster_size == b->cluster_size &&
	       !memcmp(a->stream_id, b->stream_id, 16) && !memcmp(a->src_uuid, b->src_uuid, 16) &&
	       !memcmp(a->snap_guid, b->snap_guid, 16) && a->snap_gen == b->snap_gen &&
	       !memcmp(a->from_guid, b->from_guid, 16) && a->from_gen == b->from_gen &&
	       a->vsize == b->vsize && a->kdf == b->kdf && a->kdf_r == b->kdf_r &&
	       a->kdf_n == b->kdf_n && a->kdf_p == b->kdf_p && !memcmp(a->kdf_salt, b->kdf_salt, 32);
}

/* ------------------------------------------------------------------ trailer (§5) */

void repl_trailer_encode(const struct repl_trailer *t, uint8_t p[REPL_TRAILER_LEN])
{
	put_le64(p, t->seq);
	put_le64(p + 8, t->data_bytes);
	put_le64(p + 16, t->zero_bytes);
	put_le64(p + 24, t->ref_bytes);
	memcpy(p + 32, t->digest, 32);
}

int repl_trailer_decode(const uint8_t *p, size_t len, struct repl_trailer *t)
{
	if (len != REPL_TRAILER_LEN)
		return kl_err(-EUCLEAN, "stream trailer of %zu bytes (%d expected)", len,
			      REPL_TRAILER_LEN);
	t->seq = get_le64(p);
	t->data_bytes = get_le64(p + 8);
	t->zero_bytes = get_le64(p + 16);
	t->ref_bytes = get_le64(p + 24);
	memcpy(t->digest, p + 32, 32);
	return 0;
}

/* ------------------------------------------------------------------ record reader */

static ssize_t read_full(struct repl_rd *rd, uint8_t *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = rd->in->read(rd->in->opaque, buf + done, len - done);

		if (n < 0)
			return n;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	rd->bytes += done;
	return (ssize_t)done;
}

int repl_rd_init(struct repl_rd *rd, const struct repl_reader *in, const char *what)
{
	memset(rd, 0, sizeof(*rd));
	rd->in = in;
	rd->what = what;
	rd->body = kl_malloc(REPL_REC_MAX_BODY);
	return rd->body ? 0 : -ENOMEM;
}

void repl_rd_release(struct repl_rd *rd)
{
	kl_free(rd->body);
	rd->body = NULL;
}

int repl_rd_next(struct repl_rd *rd)
{
	uint64_t at = rd->bytes;
	ssize_t n;

	rd->eof_clean = false;
	n = read_full(rd, rd->hdr_raw, REPL_REC_HDR);
	if (n < 0)
		return (int)n;
	if (n == 0) {
		rd->eof_clean = true;
		return 1;
	}
	if (n < REPL_REC_HDR)
		return kl_err(-EUCLEAN, "%s: stream truncated inside a record header at byte %llu",
			      rd->what, (unsigned long long)at);
	if (repl_rec_hdr_decode(rd->hdr_raw, &rd->rh) < 0)
		return kl_err_prefix(-EUCLEAN, "%s: record at byte %llu", rd->what,
				     (unsigned long long)at);
	n = read_full(rd, rd->body, rd->rh.body_len);
	if (n < 0)
		return (int)n;
	if ((size_t)n < rd->rh.body_len)
		return kl_err(-EUCLEAN, "%s: stream truncated inside %s record %llu at byte %llu "
			      "(%zd of %u bytes)", rd->what, rec_name(rd->rh.type),
			      (unsigned long long)rd->rh.seq, (unsigned long long)at, n,
			      rd->rh.body_len);
	rd->payload_len = rd->rh.body_len - REPL_TAG;
	rd->tag = rd->body + rd->payload_len;
	if (rd->rh.type == REPL_REC_HEADER) {
		if (rd->have_id || rd->rh.seq != 0)
			return kl_err(-EUCLEAN, "%s: header record %llu at byte %llu in the middle "
				      "of a stream (streams spliced together?)", rd->what,
				      (unsigned long long)rd->rh.seq, (unsigned long long)at);
		if (rd->payload_len < 32 || (rd->rh.flags & REPL_RF_SEALED))
			return kl_err(-EUCLEAN, "%s: malformed header record", rd->what);
		memcpy(rd->stream_id, rd->body + 16, 16);
		rd->have_id = true;
	} else if (!rd->have_id) {
		return kl_err(-EUCLEAN, "%s: the stream does not start with a header record",
			      rd->what);
	}
	if (repl_rec_crc(rd->stream_id, rd->hdr_raw, rd->body, rd->rh.body_len) != rd->rh.crc)
		return kl_err(-EBADMSG, "%s: %s record %llu at byte %llu fails its CRC (damaged, "
			      "or from another stream)", rd->what, rec_name(rd->rh.type),
			      (unsigned long long)rd->rh.seq, (unsigned long long)at);
	if (rd->rh.type != REPL_REC_HEADER) {
		if (rd->rh.seq != rd->next_seq)
			return kl_err(-EUCLEAN, "%s: %s record %llu at byte %llu where record %llu "
				      "belongs (records dropped, reordered or replayed)", rd->what,
				      rec_name(rd->rh.type), (unsigned long long)rd->rh.seq,
				      (unsigned long long)at, (unsigned long long)rd->next_seq);
		rd->next_seq++;
	}
	return 0;
}

int repl_rd_open(struct repl_rd *rd, const struct repl_keys *k)
{
	uint8_t ad[REPL_AD_LEN];
	bool sealed = rd->rh.flags & REPL_RF_SEALED;

	if (sealed && !k->keyed)
		return kl_err(-EUCLEAN, "%s: encrypted record %llu in a stream without a key",
			      rd->what, (unsigned long long)rd->rh.seq);
	repl_rec_ad(rd->stream_id, rd->hdr_raw, ad);
	if (repl_rec_unprotect(k->rec, rd->rh.nonce, ad, sealed,
			       rd->body, rd->payload_len, rd->tag) < 0)
		return kl_err(-EBADMSG, "%s: %s record %llu fails authentication (damaged, spliced "
			      "from another stream, or a wrong passphrase)", rd->what,
			      rec_name(rd->rh.type), (unsigned long long)rd->rh.seq);
	return 0;
}
