/*
 * replicate/s3-format.c - encoders and decoders of the objects in an S3
 * repository (replicate/S3-LAYOUT.md): the config object, sealed objects
 * (manifests, indexes, gc marks), blobs inside packs.
 *
 * Every decoder takes bytes that came over the network: it bounds-checks
 * each length and count against the buffer before use, allocates only in
 * proportion to the input, and names what is wrong. They are fuzzed by
 * tests/fuzz/fuzz_s3_*.c.
 */
#include "replicate/s3_int.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ cursor */

struct rd {
	const uint8_t *p;
	size_t len, off;
	const char *what;
};

static int rd_need(struct rd *r, size_t n)
{
	if (n > r->len - r->off)
		return kl_err(-EUCLEAN, "%s: truncated at byte %zu (need %zu more of %zu)", r->what,
			      r->off, n, r->len);
	return 0;
}

static int rd_u32(struct rd *r, uint32_t *v)
{
	KL_TRY(rd_need(r, 4));
	*v = get_le32(r->p + r->off);
	r->off += 4;
	return 0;
}

static int rd_u64(struct rd *r, uint64_t *v)
{
	KL_TRY(rd_need(r, 8));
	*v = get_le64(r->p + r->off);
	r->off += 8;
	return 0;
}

static int rd_bytes(struct rd *r, void *out, size_t n)
{
	KL_TRY(rd_need(r, n));
	memcpy(out, r->p + r->off, n);
	r->off += n;
	return 0;
}

/* u16 length + bytes, no NUL inside, at most 1024 */
static int rd_str(struct rd *r, char **out)
{
	uint16_t n;

	KL_TRY(rd_need(r, 2));
	n = get_le16(r->p + r->off);
	r->off += 2;
	if (n > 1024)
		return kl_err(-EUCLEAN, "%s: string of %u bytes at %zu (at most 1024)", r->what, n,
			      r->off - 2);
	KL_TRY(rd_need(r, n));
	if (memchr(r->p + r->off, 0, n))
		return kl_err(-EUCLEAN, "%s: NUL inside a string at %zu", r->what, r->off);
	*out = kl_strndup((const char *)r->p + r->off, n);
	if (!*out)
		return -ENOMEM;
	r->off += n;
	return 0;
}

struct wr {
	uint8_t *p;
	size_t len, cap;
	int err;
};

static void wr_grow(struct wr *w, size_t n)
{
	if (w->err || n <= w->cap - w->len)
		return;
	size_t cap = KL_MAX(w->cap * 2, w->len + n);
	uint8_t *p = kl_realloc(w->p, cap);

	if (!p) {
		w->err = -ENOMEM;
		return;
	}
	w->p = p;
	w->cap = cap;
}

static void wr_bytes(struct wr *w, const void *b, size_t n)
{
	wr_grow(w, n);
	if (w->err)
		return;
	memcpy(w->p + w->len, b, n);
	w->len += n;
}

static void wr_u32(struct wr *w, uint32_t v)
{
	uint8_t b[4];

	put_le32(b, v);
	wr_bytes(w, b, 4);
}

static void wr_u64(struct wr *w, uint64_t v)
{
	uint8_t b[8];

	put_le64(b, v);
	wr_bytes(w, b, 8);
}

static void wr_str(struct wr *w, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	uint8_t b[2];

	if (n > 1024)
		n = 1024;
	put_le16(b, (uint16_t)n);
	wr_bytes(w, b, 2);
	if (n)
		wr_bytes(w, s, n);
}

/* ------------------------------------------------------------------ config
 *
 *   0  magic "KEELS3R1"     8  version (1)      12  chunk size
 *  16  repository id (16)  32  kdf (1 = scrypt) 33  log2 N   34 reserved (2)
 *  36  r                   40  p               44  salt (32)
 *  76  wrapped master key: nonce (12) | ciphertext (32) | tag (16),
 *      AES-256-GCM under scrypt(passphrase), aad = bytes 0..75
 * 136  CRC-32C of bytes 0..135 (tells damage from a wrong passphrase)
 */
#define CFG_AAD_LEN 76

int repl_config_encode(const struct repl_config *cfg, uint8_t out[REPL_CONFIG_LEN])
{
	memset(out, 0, REPL_CONFIG_LEN);
	memcpy(out, REPL_CONFIG_MAGIC, 8);
	put_le32(out + 8, cfg->version);
	put_le32(out + 12, cfg->chunk_size);
	memcpy(out + 16, cfg->repo_id, 16);
	out[32] = 1;
	out[33] = cfg->kdf_log2n;
	put_le32(out + 36, cfg->kdf_r);
	put_le32(out + 40, cfg->kdf_p);
	memcpy(out + 44, cfg->salt, 32);
	memcpy(out + 76, cfg->wrapped, sizeof(cfg->wrapped));
	put_le32(out + 136, kl_crc32c(0, out, 136));
	return 0;
}

int repl_config_decode(const uint8_t *buf, size_t len, struct repl_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	if (len != REPL_CONFIG_LEN || memcmp(buf, REPL_CONFIG_MAGIC, 8))
		return kl_err(-EUCLEAN, "config: not a keel S3 repository config (%zu bytes)", len);
	if (get_le32(buf + 136) != kl_crc32c(0, buf, 136))
		return kl_err(-EBADMSG, "config: checksum mismatch (damaged object)");
	cfg->version = get_le32(buf + 8);
	if (cfg->version != 1)
		return kl_err(-ENOTSUP, "config: repository version %u (this keel knows 1)",
			      cfg->version);
	cfg->chunk_size = get_le32(buf + 12);
	if (!KL_IS_POW2(cfg->chunk_size) || cfg->chunk_size < 4096 ||
	    cfg->chunk_size > REPL_CHUNK_MAX)
		return kl_err(-EUCLEAN, "config: chunk size %u is not a power of two in 4K..4M",
			      cfg->chunk_size);
	memcpy(cfg->repo_id, buf + 16, 16);
	if (buf[32] != 1)
		return kl_err(-ENOTSUP, "config: key derivation %u unknown (1 = scrypt)", buf[32]);
	cfg->kdf_log2n = buf[33];
	cfg->kdf_r = get_le32(buf + 36);
	cfg->kdf_p = get_le32(buf + 40);
	if (cfg->kdf_log2n < 10 || cfg->kdf_log2n > 22 || cfg->kdf_r < 1 || cfg->kdf_r > 32 ||
	    cfg->kdf_p < 1 || cfg->kdf_p > 16)
		return kl_err(-EUCLEAN, "config: scrypt parameters out of range");
	memcpy(cfg->salt, buf + 44, 32);
	memcpy(cfg->wrapped, buf + 76, sizeof(cfg->wrapped));
	return 0;
}

/* scrypt cost: N = 2^15, r = 8, p = 1: 32 MiB and ~0.1 s, as OpenSSL and
 * restic's defaults; KEEL_S3_TEST_KDF=1 lowers N to 2^10 for unit tests. */
static unsigned default_log2n(void)
{
	const char *t = getenv("KEEL_S3_TEST_KDF");

	return t && *t == '1' ? 10 : 15;
}

int repl_config_create(const uint8_t *pass, size_t pass_len, struct repl_config *cfg,
		       struct repl_s3_keys *keys)
{
	uint8_t master[REPL_KEY_LEN], kek[REPL_KEY_LEN], hdr[REPL_CONFIG_LEN];
	int rc;

	if (!pass || !pass_len)
		return kl_err(-EINVAL,
			      "a repository passphrase is needed (--key-file or --key-env)");
	memset(cfg, 0, sizeof(*cfg));
	cfg->version = 1;
	cfg->chunk_size = REPL_CHUNK_SIZE;
	cfg->kdf_log2n = (uint8_t)default_log2n();
	cfg->kdf_r = 8;
	cfg->kdf_p = 1;
	rc = repl_s3_random(cfg->repo_id, 16);
	if (!rc)
		rc = repl_s3_random(cfg->salt, 32);
	if (!rc)
		rc = repl_s3_random(master, sizeof(master));
	if (!rc)
		rc = repl_scrypt(pass, pass_len, cfg->salt, 32, cfg->kdf_log2n, cfg->kdf_r,
				 cfg->kdf_p, kek);
	if (!rc) {
		repl_config_encode(cfg, hdr);
		rc = repl_seal(kek, hdr, CFG_AAD_LEN, master, sizeof(master), cfg->wrapped);
	}
	if (!rc)
		rc = repl_s3_keys_derive(master, cfg->repo_id, keys);
	OPENSSL_cleanse(master, sizeof(master));
	OPENSSL_cleanse(kek, sizeof(kek));
	return rc;
}

int repl_config_unlock(const struct repl_config *cfg, const uint8_t *pass, size_t pass_len,
		       struct repl_s3_keys *keys)
{
	uint8_t master[REPL_KEY_LEN], kek[REPL_KEY_LEN], hdr[REPL_CONFIG_LEN];
	int rc;

	if (!pass || !pass_len)
		return kl_err(-EINVAL, "the repository is encrypted: give its passphrase "
			      "(--key-file or --key-env)");
	rc = repl_scrypt(pass, pass_len, cfg->salt, 32, cfg->kdf_log2n, cfg->kdf_r, cfg->kdf_p,
			 kek);
	if (rc < 0)
		return rc;
	repl_config_encode(cfg, hdr);
	rc = repl_open(kek, hdr, CFG_AAD_LEN, cfg->wrapped, sizeof(cfg->wrapped), master);
	if (rc == -EBADMSG)
		rc = kl_err(-EBADMSG, "wrong passphrase for this repository");
	if (!rc)
		rc = repl_s3_keys_derive(master, cfg->repo_id, keys);
	OPENSSL_cleanse(master, sizeof(master));
	OPENSSL_cleanse(kek, sizeof(kek));
	return rc;
}

/* ------------------------------------------------------------------ sealed objects */

static const char *type_name(enum repl_obj_type t)
{
	switch (t) {
	case REPL_OBJ_MANIFEST:
		return "manifest";
	case REPL_OBJ_INDEX:
		return "index";
	case REPL_OBJ_MARK:
		return "gc mark";
	}
	return "object";
}

static uint8_t *obj_aad(const uint8_t hdr[REPL_OBJ_HDR], const char *context, size_t *len)
{
	size_t cl = context ? strlen(context) : 0;
	uint8_t *a = kl_malloc(REPL_OBJ_HDR + cl);

	if (!a)
		return NULL;
	memcpy(a, hdr, REPL_OBJ_HDR);
	if (cl)
		memcpy(a + REPL_OBJ_HDR, context, cl);
	*len = REPL_OBJ_HDR + cl;
	return a;
}

int repl_obj_seal(const struct repl_s3_keys *k, enum repl_obj_type type, const char *context,
		  const void *pt, size_t pt_len, uint8_t **out, size_t *out_len)
{
	size_t bound = ZSTD_compressBound(pt_len), zlen, aad_len = 0;
	uint8_t hdr[REPL_OBJ_HDR], *z, *o, *aad;
	int rc;

	*out = NULL;
	if (pt_len > REPL_OBJ_MAX_PLAIN)
		return kl_err(-EFBIG, "%s of %zu bytes is too large", type_name(type), pt_len);
	z = kl_malloc(bound);
	if (!z)
		return -ENOMEM;
	zlen = ZSTD_compress(z, bound, pt, pt_len, 3);
	if (ZSTD_isError(zlen)) {
		kl_free(z);
		return kl_err(-EIO, "zstd: %s", ZSTD_getErrorName(zlen));
	}
	memcpy(hdr, "KS3O", 4);
	hdr[4] = (uint8_t)type;
	hdr[5] = 1;
	put_le16(hdr + 6, 1); /* zstd */
	put_le64(hdr + 8, pt_len);
	aad = obj_aad(hdr, context, &aad_len);
	o = kl_malloc(REPL_OBJ_HDR + zlen + REPL_SEAL_OVERHEAD);
	if (!aad || !o) {
		kl_free(aad);
		kl_free(o);
		kl_free(z);
		return -ENOMEM;
	}
	memcpy(o, hdr, REPL_OBJ_HDR);
	rc = repl_seal(k->data, aad, aad_len, z, zlen, o + REPL_OBJ_HDR);
	kl_free(aad);
	kl_free(z);
	if (rc < 0) {
		kl_free(o);
		return rc;
	}
	*out = o;
	*out_len = REPL_OBJ_HDR + zlen + REPL_SEAL_OVERHEAD;
	return 0;
}

int repl_obj_open(const struct repl_s3_keys *k, enum repl_obj_type type, const char *context,
		  const uint8_t *in, size_t in_len, uint8_t **out, size_t *out_len)
{
	const char *tn = type_name(type);
	uint8_t *z = NULL, *pt = NULL, *aad;
	size_t aad_len = 0, zlen, got;
	uint64_t plain;
	uint16_t flags;
	int rc;

	*out = NULL;
	if (in_len < REPL_OBJ_HDR + REPL_SEAL_OVERHEAD || memcmp(in, "KS3O", 4))
		return kl_err(-EUCLEAN, "%s %s: not a keel sealed object (%zu bytes)", tn,
			      context ? context : "", in_len);
	if (in[4] != type)
		return kl_err(-EUCLEAN, "%s %s: holds object type %u", tn, context ? context : "",
			      in[4]);
	if (in[5] != 1)
		return kl_err(-ENOTSUP, "%s %s: version %u", tn, context ? context : "", in[5]);
	flags = get_le16(in + 6);
	plain = get_le64(in + 8);
	if (flags > 1 || plain > REPL_OBJ_MAX_PLAIN)
		return kl_err(-EUCLEAN, "%s %s: bad header (flags %u, length %llu)", tn,
			      context ? context : "", flags, (unsigned long long)plain);
	zlen = in_len - REPL_OBJ_HDR - REPL_SEAL_OVERHEAD;
	if (!flags && zlen != plain)
		return kl_err(-EUCLEAN, "%s %s: stored length %zu is not %llu", tn,
			      context ? context : "", zlen, (unsigned long long)plain);
	aad = obj_aad(in, context, &aad_len);
	z = kl_malloc(zlen ? zlen : 1);
	if (!aad || !z) {
		kl_free(aad);
		kl_free(z);
		return -ENOMEM;
	}
	rc = repl_open(k->data, aad, aad_len, in + REPL_OBJ_HDR, in_len - REPL_OBJ_HDR, z);
	kl_free(aad);
	if (rc < 0) {
		kl_free(z);
		return kl_err_prefix(rc, "%s %s", tn, context ? context : "");
	}
	if (!flags) {
		*out = z;
		*out_len = zlen;
		return 0;
	}
	/* authenticated, so the frame is ours; still check its claimed size */
	if (ZSTD_getFrameContentSize(z, zlen) != plain) {
		kl_free(z);
		return kl_err(-EUCLEAN, "%s %s: compressed frame does not hold %llu bytes", tn,
			      context ? context : "", (unsigned long long)plain);
	}
	pt = kl_malloc(plain ? (size_t)plain : 1);
	if (!pt) {
		kl_free(z);
		return -ENOMEM;
	}
	got = ZSTD_decompress(pt, (size_t)plain, z, zlen);
	kl_free(z);
	if (ZSTD_isError(got) || got != plain) {
		kl_free(pt);
		return kl_err(-EUCLEAN, "%s %s: decompression failed", tn, context ? context : "");
	}
	*out = pt;
	*out_len = (size_t)plain;
	return 0;
}

/* ------------------------------------------------------------------ blobs */

size_t repl_blob_bound(size_t plain_len)
{
	return 1 + REPL_SEAL_OVERHEAD + KL_MAX(ZSTD_compressBound(plain_len), plain_len);
}

int repl_blob_encode(const struct repl_s3_keys *k, const uint8_t id[REPL_ID_LEN], const void *chunk,
		     size_t len, ZSTD_CCtx *cctx, int level, uint8_t *out, size_t *out_len)
{
	size_t bound = ZSTD_compressBound(len), zlen;
	uint8_t aad[REPL_ID_LEN + 1], *z;
	const void *payload = chunk;
	size_t plen = len;
	int rc;

	if (len == 0 || len > REPL_CHUNK_MAX)
		return kl_err(-EINVAL, "chunk of %zu bytes", len);
	z = kl_malloc(bound);
	if (!z)
		return -ENOMEM;
	zlen = cctx ? ZSTD_compressCCtx(cctx, z, bound, chunk, len, level) :
		      ZSTD_compress(z, bound, chunk, len, level);
	out[0] = 0;
	if (!ZSTD_isError(zlen) && zlen < len) {
		out[0] = REPL_BLOB_ZSTD;
		payload = z;
		plen = zlen;
	}
	memcpy(aad, id, REPL_ID_LEN);
	aad[REPL_ID_LEN] = out[0];
	rc = repl_seal(k->data, aad, sizeof(aad), payload, plen, out + 1);
	kl_free(z);
	if (rc < 0)
		return rc;
	*out_len = 1 + plen + REPL_SEAL_OVERHEAD;
	return 0;
}

int repl_blob_decode(const struct repl_s3_keys *k, const uint8_t id[REPL_ID_LEN],
		     const uint8_t *in, size_t in_len, uint8_t *out, size_t plain_len)
{
	uint8_t aad[REPL_ID_LEN + 1], *z, mac[REPL_ID_LEN];
	char hex[2 * 8 + 1];
	size_t plen;
	int rc;

	repl_s3_hex(id, 8, hex);
	if (in_len < 1 + REPL_SEAL_OVERHEAD || in[0] > REPL_BLOB_ZSTD || plain_len == 0 ||
	    plain_len > REPL_CHUNK_MAX)
		return kl_err(-EUCLEAN, "chunk %s: malformed blob (%zu bytes, flags %u)", hex,
			      in_len, in_len ? in[0] : 0);
	plen = in_len - 1 - REPL_SEAL_OVERHEAD;
	if (in[0] == 0 && plen != plain_len)
		return kl_err(-EUCLEAN, "chunk %s: stored blob of %zu bytes, expected %zu", hex,
			      plen, plain_len);
	if (plen > repl_blob_bound(plain_len))
		return kl_err(-EUCLEAN, "chunk %s: blob of %zu bytes for %zu", hex, plen,
			      plain_len);
	memcpy(aad, id, REPL_ID_LEN);
	aad[REPL_ID_LEN] = in[0];
	z = in[0] ? kl_malloc(plen ? plen : 1) : out;
	if (!z)
		return -ENOMEM;
	rc = repl_open(k->data, aad, sizeof(aad), in + 1, in_len - 1, z);
	if (rc < 0) {
		if (z != out)
			kl_free(z);
		return kl_err(rc, "chunk %s: authentication failed (damaged blob)", hex);
	}
	if (in[0]) {
		size_t got = ZSTD_decompress(out, plain_len, z, plen);

		kl_free(z);
		if (ZSTD_isError(got) || got != plain_len)
			return kl_err(-EUCLEAN, "chunk %s: decompression failed", hex);
	}
	KL_TRY(repl_hmac(k->id, out, plain_len, mac));
	if (CRYPTO_memcmp(mac, id, REPL_ID_LEN))
		return kl_err(-EBADMSG, "chunk %s: content does not match its name", hex);
	return 0;
}

/* ------------------------------------------------------------------ index
 *
 * magic "KS3IDX01" | version u32 (1) | count u32 | pack id (32) |
 * count x { chunk id (32) | offset u64 | length u32 | plain length u32 }
 * Entries are in pack order, non-overlapping, after the pack header.
 */
#define IDX_ENTRY 48

int repl_index_encode(const struct repl_index *ix, uint8_t **out, size_t *len)
{
	struct wr w = { 0 };

	wr_bytes(&w, REPL_INDEX_MAGIC, 8);
	wr_u32(&w, 1);
	wr_u32(&w, (uint32_t)ix->n);
	wr_bytes(&w, ix->pack, REPL_ID_LEN);
	for (size_t i = 0; i < ix->n; i++) {
		wr_bytes(&w, ix->e[i].id, REPL_ID_LEN);
		wr_u64(&w, ix->e[i].off);
		wr_u32(&w, ix->e[i].len);
		wr_u32(&w, ix->e[i].plain_len);
	}
	if (w.err) {
		kl_free(w.p);
		return w.err;
	}
	*out = w.p;
	*len = w.len;
	return 0;
}

int repl_index_decode(const uint8_t *buf, size_t len, struct repl_index *ix)
{
	struct rd r = { buf, len, 0, "index" };
	uint8_t magic[8];
	uint32_t ver, n;
	uint64_t next = REPL_PACK_HDR;

	memset(ix, 0, sizeof(*ix));
	KL_TRY(rd_bytes(&r, magic, 8));
	if (memcmp(magic, REPL_INDEX_MAGIC, 8))
		return kl_err(-EUCLEAN, "index: bad magic");
	KL_TRY(rd_u32(&r, &ver));
	if (ver != 1)
		return kl_err(-ENOTSUP, "index: version %u", ver);
	KL_TRY(rd_u32(&r, &n));
	KL_TRY(rd_bytes(&r, ix->pack, REPL_ID_LEN));
	if ((uint64_t)n * IDX_ENTRY != len - r.off)
		return kl_err(-EUCLEAN, "index: %u entries need %llu bytes, %zu present", n,
			      (unsigned long long)n * IDX_ENTRY, len - r.off);
	ix->e = kl_calloc(n ? n : 1, sizeof(*ix->e));
	if (!ix->e)
		return -ENOMEM;
	ix->n = n;
	for (uint32_t i = 0; i < n; i++) {
		struct repl_index_entry *e = &ix->e[i];

		rd_bytes(&r, e->id, REPL_ID_LEN);
		rd_u64(&r, &e->off);
		rd_u32(&r, &e->len);
		rd_u32(&r, &e->plain_len);
		if (e->plain_len == 0 || e->plain_len > REPL_CHUNK_MAX ||
		    e->len < 1 + REPL_SEAL_OVERHEAD || e->len > repl_blob_bound(e->plain_len) ||
		    e->off < next || e->off > UINT64_MAX - e->len) {
			int rc = kl_err(-EUCLEAN, "index: entry %u (offset %llu, length %u, plain "
					"%u) is out of order or out of range", i,
					(unsigned long long)e->off, e->len, e->plain_len);

			repl_index_release(ix);
			return rc;
		}
		next = e->off + e->len;
	}
	return 0;
}

void repl_index_release(struct repl_index *ix)
{
	kl_free(ix->e);
	ix->e = NULL;
	ix->n = 0;
}

/* ------------------------------------------------------------------ manifest
 *
 * magic "KS3MAN01" | version u32 (1) | flags u32 (0) | chunk size u32 |
 * reserved u32 | virtual size u64 | created ns u64 | replicated ns u64 |
 * uuid (16) | name, image, format (u16 length + bytes each) |
 * positions u64 | runs u64 | runs x { kind u8 | count u64 | kind 1:
 * count x chunk id (32) }. Kind 0 is a run of zero positions (elided),
 * kind 1 a run of data positions. The counts add up to the positions.
 */

int repl_manifest_encode(const struct repl_manifest *m, uint8_t **out, size_t *len)
{
	struct wr w = { 0 };
	uint64_t nruns = 0, pos = 0, i = 0;
	size_t runs_at;

	wr_bytes(&w, REPL_MANIFEST_MAGIC, 8);
	wr_u32(&w, 1);
	wr_u32(&w, 0);
	wr_u32(&w, m->chunk_size);
	wr_u32(&w, 0);
	wr_u64(&w, m->vsize);
	wr_u64(&w, m->created_ns);
	wr_u64(&w, m->replicated_ns);
	wr_bytes(&w, m->uuid, 16);
	wr_str(&w, m->name);
	wr_str(&w, m->image);
	wr_str(&w, m->format);
	wr_u64(&w, m->nchunks);
	runs_at = w.len;
	wr_u64(&w, 0);
	while (pos < m->nchunks && !w.err) {
		uint8_t kind;
		uint64_t cnt;

		if (i < m->ndata && m->pos[i] == pos) {
			uint64_t j = i;

			while (j < m->ndata && m->pos[j] == pos + (j - i))
				j++;
			cnt = j - i;
			if (cnt > m->nchunks - pos) {
				w.err = kl_err(-EINVAL, "manifest: data position past the image");
				break;
			}
			kind = 1;
			wr_bytes(&w, &kind, 1);
			wr_u64(&w, cnt);
			wr_bytes(&w, m->ids[i], (size_t)cnt * REPL_ID_LEN);
			i = j;
		} else {
			uint64_t stop = i < m->ndata ? m->pos[i] : m->nchunks;

			if (stop <= pos || stop > m->nchunks) {
				w.err = kl_err(-EINVAL, "manifest: data positions not increasing "
					       "inside the image");
				break;
			}
			cnt = stop - pos;
			kind = 0;
			wr_bytes(&w, &kind, 1);
			wr_u64(&w, cnt);
		}
		pos += cnt;
		nruns++;
	}
	if (!w.err && (i != m->ndata || pos != m->nchunks))
		w.err = kl_err(-EINVAL, "manifest: data positions not increasing inside the image");
	if (w.err) {
		kl_free(w.p);
		return w.err;
	}
	put_le64(w.p + runs_at, nruns);
	*out = w.p;
	*len = w.len;
	return 0;
}

int repl_manifest_decode(const uint8_t *buf, size_t len, struct repl_manifest *m)
{
	struct rd r = { buf, len, 0, "manifest" };
	uint8_t magic[8];
	uint32_t ver, flags, cs, resv;
	uint64_t nruns, pos = 0, cap = 0;
	int rc;

	memset(m, 0, sizeof(*m));
	KL_TRY(rd_bytes(&r, magic, 8));
	if (memcmp(magic, REPL_MANIFEST_MAGIC, 8))
		return kl_err(-EUCLEAN, "manifest: bad magic");
	KL_TRY(rd_u32(&r, &ver));
	if (ver != 1)
		return kl_err(-ENOTSUP, "manifest: version %u", ver);
	KL_TRY(rd_u32(&r, &flags));
	KL_TRY(rd_u32(&r, &cs));
	KL_TRY(rd_u32(&r, &resv));
	if (flags || !KL_IS_POW2(cs) || cs < 4096 || cs > REPL_CHUNK_MAX)
		return kl_err(-EUCLEAN, "manifest: flags %u / chunk size %u not supported", flags,
			      cs);
	m->chunk_size = cs;
	rc = rd_u64(&r, &m->vsize);
	if (!rc)
		rc = rd_u64(&r, &m->created_ns);
	if (!rc)
		rc = rd_u64(&r, &m->replicated_ns);
	if (!rc)
		rc = rd_bytes(&r, m->uuid, 16);
	if (!rc)
		rc = rd_str(&r, &m->name);
	if (!rc)
		rc = rd_str(&r, &m->image);
	if (!rc)
		rc = rd_str(&r, &m->format);
	if (!rc)
		rc = rd_u64(&r, &m->nchunks);
	if (!rc)
		rc = rd_u64(&r, &nruns);
	if (rc < 0)
		goto err;
	if (m->vsize > (1ULL << 56) || m->nchunks != KL_DIV_ROUND_UP(m->vsize, cs)) {
		rc = kl_err(-EUCLEAN, "manifest: %llu positions for a virtual size of %llu",
			    (unsigned long long)m->nchunks, (unsigned long long)m->vsize);
		goto err;
	}
	/* every run takes at least 9 bytes: bounds nruns by the input */
	if (nruns > (len - r.off) / 9) {
		rc = kl_err(-EUCLEAN, "manifest: %llu runs cannot fit in %zu bytes",
			    (unsigned long long)nruns, len - r.off);
		goto err;
	}
	for (uint64_t k = 0; k < nruns; k++) {
		uint8_t kind;
		uint64_t cnt;

		rc = rd_bytes(&r, &kind, 1);
		if (!rc)
			rc = rd_u64(&r, &cnt);
		if (rc < 0)
			goto err;
		if (kind > 1 || cnt == 0 || cnt > m->nchunks - pos) {
			rc = kl_err(-EUCLEAN,
				    "manifest: run %llu (kind %u, %llu positions at %llu) "
				    "is invalid",
				    (unsigned long long)k, kind, (unsigned long long)cnt,
				    (unsigned long long)pos);
			goto err;
		}
		if (kind == 1) {
			if (cnt > (len - r.off) / REPL_ID_LEN) {
				rc = kl_err(-EUCLEAN, "manifest: run %llu of %llu chunk ids is "
					    "truncated", (unsigned long long)k,
					    (unsigned long long)cnt);
				goto err;
			}
			if (m->ndata + cnt > cap) {
				uint64_t nc = KL_MAX(cap * 2, m->ndata + cnt);
				void *p1 = kl_realloc(m->pos, (size_t)nc * sizeof(*m->pos));
				void *p2;

				if (!p1) {
					rc = -ENOMEM;
					goto err;
				}
				m->pos = p1;
				p2 = kl_realloc(m->ids, (size_t)nc * REPL_ID_LEN);
				if (!p2) {
					rc = -ENOMEM;
					goto err;
				}
				m->ids = p2;
				cap = nc;
			}
			for (uint64_t j = 0; j < cnt; j++) {
				m->pos[m->ndata] = pos + j;
				memcpy(m->ids[m->ndata], r.p + r.off, REPL_ID_LEN);
				r.off += REPL_ID_LEN;
				m->ndata++;
			}
		}
		pos += cnt;
	}
	if (pos != m->nchunks || r.off != len) {
		rc = kl_err(-EUCLEAN, "manifest: runs cover %llu of %llu positions, %zu bytes left",
			    (unsigned long long)pos, (unsigned long long)m->nchunks, len - r.off);
		goto err;
	}
	return 0;
err:
	repl_manifest_release(m);
	return rc;
}

void repl_manifest_release(struct repl_manifest *m)
{
	kl_free(m->name);
	kl_free(m->image);
	kl_free(m->format);
	kl_free(m->pos);
	kl_free(m->ids);
	memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------------ gc marks
 *
 * magic "KS3MRK01" | version u32 (1) | count u32 | count x pack id (32)
 */
int repl_mark_encode(const uint8_t (*packs)[REPL_ID_LEN], size_t n, uint8_t **out, size_t *len)
{
	struct wr w = { 0 };

	wr_bytes(&w, REPL_MARK_MAGIC, 8);
	wr_u32(&w, 1);
	wr_u32(&w, (uint32_t)n);
	if (n)
		wr_bytes(&w, packs, n * REPL_ID_LEN);
	if (w.err) {
		kl_free(w.p);
		return w.err;
	}
	*out = w.p;
	*len = w.len;
	return 0;
}

int repl_mark_decode(const uint8_t *buf, size_t len, uint8_t (**packs)[REPL_ID_LEN], size_t *n)
{
	struct rd r = { buf, len, 0, "gc mark" };
	uint8_t magic[8];
	uint32_t ver, cnt;

	*packs = NULL;
	*n = 0;
	KL_TRY(rd_bytes(&r, magic, 8));
	if (memcmp(magic, REPL_MARK_MAGIC, 8))
		return kl_err(-EUCLEAN, "gc mark: bad magic");
	KL_TRY(rd_u32(&r, &ver));
	if (ver != 1)
		return kl_err(-ENOTSUP, "gc mark: version %u", ver);
	KL_TRY(rd_u32(&r, &cnt));
	if ((uint64_t)cnt * REPL_ID_LEN != len - r.off)
		return kl_err(-EUCLEAN, "gc mark: %u pack ids need %llu bytes, %zu present", cnt,
			      (unsigned long long)cnt * REPL_ID_LEN, len - r.off);
	*packs = kl_malloc(cnt ? (size_t)cnt * REPL_ID_LEN : 1);
	if (!*packs)
		return -ENOMEM;
	if (cnt)
		memcpy(*packs, buf + r.off, (size_t)cnt * REPL_ID_LEN);
	*n = cnt;
	return 0;
}
