/*
 * replicate/repl_int.h - private header of the send/receive streams, the raw
 * store and the keel:// transport (prefix repl_). Only replicate/stream*.c
 * and replicate/net*.c include it. Byte layouts are specified in
 * replicate/STREAM-FORMAT.md; section numbers below refer to it.
 *
 * Files:
 *   stream-crypto.c  keys (scrypt, HKDF), AES-256-GCM records, chain digest, keyed hash
 *   stream-format.c  header, token, record framing: encode and bounds-checked decode
 *   stream-send.c    the sender: snapshot diff -> records
 *   stream-recv.c    the receiver: records -> staged receive of a .keel image
 *   stream-raw.c     the raw store: verified records kept as they came, restore
 *   stream-have.c    the receiver's map from keyed content hash to held content
 *   net-proto.c      keel:// protocol messages: encode and bounds-checked decode
 *   net-tls.c        TLS 1.3 with mutual certificates, message I/O, rate limit
 *   net-server.c     keel serve
 *   net-client.c     keel replicate, fetch
 */
#ifndef KEEL_REPLICATE_REPL_INT_H
#define KEEL_REPLICATE_REPL_INT_H

#include "replicate/replicate.h"

static inline bool repl_guid_zero(const uint8_t g[16])
{
	for (int i = 0; i < 16; i++)
		if (g[i])
			return false;
	return true;
}

/* ------------------------------------------------------------------ records (§2) */
#define REPL_REC_HDR 32		/* fixed record header */
#define REPL_TAG 16		/* GCM tag closing every record body */
#define REPL_NONCE 12
#define REPL_AD_LEN 40		/* "KEELSTR1" || stream id || header bytes 0..15 */
/* largest body: a 2 MiB cluster that did not compress, its prefix and the tag */
#define REPL_REC_MAX_BODY ((2u << 20) + 4096u)
#define REPL_SEQ_MAX (1ULL << 48)

enum repl_rec_type {
	REPL_REC_HEADER = 1,
	REPL_REC_DATA = 2,
	REPL_REC_ZERO = 3,
	REPL_REC_REF = 4,
	REPL_REC_MARK = 5,
	REPL_REC_TRAILER = 6,
};

#define REPL_RF_SEALED 0x1 /* payload encrypted under the record key */
#define REPL_RF_ZSTD 0x2   /* the data part of a DATA payload is one zstd frame */
#define REPL_RF_KNOWN (REPL_RF_SEALED | REPL_RF_ZSTD)

struct repl_rec_hdr {
	uint32_t body_len; /* payload + tag */
	uint16_t type;
	uint16_t flags;
	uint64_t seq;
	uint8_t nonce[REPL_NONCE];
	uint32_t crc;
};

/* ------------------------------------------------------------------ header (§3) */
#define REPL_HDR_MAGIC "KEELSTRM"
#define REPL_VERSION 1
#define REPL_HDR_FIXED 256
#define REPL_NAME_MAX 255

#define REPL_HF_INCREMENTAL 0x1
#define REPL_HF_KEYED 0x2
#define REPL_HF_RAW 0x4
#define REPL_HF_RESUME 0x8
#define REPL_HF_SRC_ENCRYPTED 0x10
#define REPL_HF_HASHED 0x20
#define REPL_HF_KNOWN 0x3f

#define REPL_KDF_NONE 0
#define REPL_KDF_SCRYPT 1
#define REPL_SCRYPT_N 32768
#define REPL_SCRYPT_R 8
#define REPL_SCRYPT_P 1
#define REPL_SCRYPT_MAX_N (1ULL << 20)
#define REPL_SCRYPT_MAX_R 32
#define REPL_SCRYPT_MAX_P 16

struct repl_hdr {
	uint32_t flags;
	uint32_t cluster_size;
	uint8_t stream_id[16];
	uint8_t src_uuid[16];
	uint8_t snap_guid[16];
	uint64_t snap_gen;
	uint64_t snap_time;
	uint8_t from_guid[16];
	uint64_t from_gen;
	uint64_t vsize;
	uint32_t kdf;
	uint32_t kdf_r, kdf_p;
	uint64_t kdf_n;
	uint8_t kdf_salt[32];
	uint64_t estimate; /* data bytes the stream will carry (progress only) */
	/* RESUME: where this stream continues (the receiver's token) */
	uint64_t resume_seq;
	uint64_t resume_off;
	uint64_t resume_bytes;
	uint8_t resume_digest[32];
	uint8_t target_uuid[16];
	char name[REPL_NAME_MAX + 1];
};

/* ------------------------------------------------------------------ token (§6) */
#define REPL_TOKEN_MAGIC "KTOK"
#define REPL_TOKEN_CORE 224 /* bytes covered by the MAC */
#define REPL_TOKEN_MARK 256 /* core + MAC: the payload of a MARK record */
#define REPL_TOKEN_LEN 272  /* + the receiver's target uuid */
#define REPL_TOKEN_PREFIX "keel1-"
#define REPL_TOKEN_TEXT (sizeof(REPL_TOKEN_PREFIX) + 2 * REPL_TOKEN_LEN)

struct repl_token {
	uint32_t flags; /* header flags without RESUME and HASHED */
	uint32_t cluster_size;
	uint8_t stream_id[16];
	uint8_t src_uuid[16];
	uint8_t snap_guid[16];
	uint64_t snap_gen;
	uint8_t from_guid[16];
	uint64_t from_gen;
	uint64_t vsize;
	uint32_t kdf, kdf_r, kdf_p;
	uint64_t kdf_n;
	uint8_t kdf_salt[32];
	uint64_t next_seq;
	uint64_t offset;
	uint8_t digest[32];
	uint64_t bytes;
	uint8_t mac[32];
	uint8_t target_uuid[16];
};

/* ------------------------------------------------------------------ payloads (§4, §5) */
#define REPL_DATA_PREFIX 16 /* off, len, dflags */
#define REPL_DF_HASH 0x1    /* a 32-byte keyed content hash follows the prefix */
#define REPL_REF_LEN 48
#define REPL_ZERO_LEN 16
#define REPL_TRAILER_LEN 64

struct repl_trailer {
	uint64_t seq;	     /* the trailer's own sequence number */
	uint64_t data_bytes; /* sum of DATA lengths */
	uint64_t zero_bytes;
	uint64_t ref_bytes;
	uint8_t digest[32];
};

/* ------------------------------------------------------------------ keys, crypto */
struct repl_keys {
	uint8_t rec[32]; /* record key */
	uint8_t tok[32]; /* token MAC key */
	bool keyed;	 /* derived from a passphrase (else the public keys) */
};

/* scrypt (keyed) or the public IKM, then HKDF with the stream id as salt. */
int repl_keys_derive(struct repl_keys *k, const struct repl_hdr *h, const uint8_t *pass,
		     size_t plen);
void repl_keys_wipe(struct repl_keys *k);
int repl_kdf_check(uint32_t kdf, uint64_t n, uint32_t r, uint32_t p);

/* AD of a record (§2.2). */
void repl_rec_ad(const uint8_t stream_id[16], const uint8_t hdr16[16], uint8_t ad[REPL_AD_LEN]);
/*
 * Seals (encrypt=true: AES-256-GCM of payload) or authenticates (GMAC over
 * AD || payload) one record body in place; buf holds payload_len bytes and
 * room for the tag after them. ctx may be NULL (one is made).
 */
int repl_rec_protect(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *ad,
		     bool encrypt, uint8_t *buf, size_t payload_len, uint8_t tag[16]);
/* The inverse: -EBADMSG when the tag does not verify. */
int repl_rec_unprotect(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *ad,
		       bool encrypted, uint8_t *buf, size_t payload_len, const uint8_t tag[16]);

void repl_chain_init(uint8_t d[32], const struct repl_hdr *h);
void repl_chain_step(uint8_t d[32], const uint8_t rec_hdr[REPL_REC_HDR], const uint8_t tag[16]);

/* Token MAC: HMAC-SHA-256 under the token key of the first REPL_TOKEN_CORE bytes. */
void repl_token_mac(const uint8_t key[32], const uint8_t *core, uint8_t out[32]);

/* Keyed content hash of the live dedup (§7): BLAKE2b-256 MAC. Thread-safe. */
int repl_have_hash(const uint8_t key[32], const void *buf, size_t len, uint8_t out[32]);

int repl_random(void *buf, size_t len);
void repl_hex(const uint8_t *in, size_t len, char *out);
int repl_unhex(const char *in, uint8_t *out, size_t len);

/* ------------------------------------------------------------------ encode/decode */
size_t repl_hdr_encode(const struct repl_hdr *h, uint8_t *out); /* REPL_HDR_FIXED + name */
int repl_hdr_decode(const uint8_t *p, size_t len, struct repl_hdr *h);
void repl_rec_hdr_encode(const struct repl_rec_hdr *r, uint8_t out[REPL_REC_HDR]);
int repl_rec_hdr_decode(const uint8_t in[REPL_REC_HDR], struct repl_rec_hdr *r);
uint32_t repl_rec_crc(const uint8_t stream_id[16], const uint8_t hdr[REPL_REC_HDR],
		      const uint8_t *body, size_t len);
void repl_token_encode(const struct repl_token *t, uint8_t out[REPL_TOKEN_LEN]);
int repl_token_decode(const uint8_t *p, size_t len, struct repl_token *t);
int repl_token_from_text(const char *text, struct repl_token *t);
void repl_token_to_text(const struct repl_token *t, char out[REPL_TOKEN_TEXT]);
/* The identity part of a header as a token (flags, ids, kdf). */
void repl_token_from_hdr(struct repl_token *t, const struct repl_hdr *h);
/* True when the identity fields of a and b agree. */
bool repl_token_same_stream(const struct repl_token *a, const struct repl_token *b);
void repl_trailer_encode(const struct repl_trailer *t, uint8_t out[REPL_TRAILER_LEN]);
int repl_trailer_decode(const uint8_t *p, size_t len, struct repl_trailer *t);

/* ------------------------------------------------------------------ record reader */
/*
 * Reads records from a byte source, checking framing, CRC, sequence and
 * (with keys) the tag. Holds one record; the payload is valid until the
 * next call.
 */
struct repl_rd {
	const struct repl_reader *in;
	const char *what;	/* name for messages ("stdin", "stream file x") */
	uint8_t stream_id[16];
	bool have_id;
	uint64_t next_seq;
	uint64_t bytes;		/* bytes consumed */
	uint8_t hdr_raw[REPL_REC_HDR];
	struct repl_rec_hdr rh;
	uint8_t *body;		/* REPL_REC_MAX_BODY */
	size_t payload_len;
	const uint8_t *tag;
	bool eof_clean;		/* the last read hit EOF at a record boundary */
};

int repl_rd_init(struct repl_rd *rd, const struct repl_reader *in, const char *what);
void repl_rd_release(struct repl_rd *rd);
/*
 * Next record: 0 and the record, 1 at a clean end of input (no partial
 * record), -errno otherwise. The HEADER record is accepted at seq 0 (or, for
 * a resumed stream, also sets the expected sequence from its fields).
 */
int repl_rd_next(struct repl_rd *rd);
/* Verify (and decrypt) the current record with k; -EBADMSG naming the record. */
int repl_rd_open(struct repl_rd *rd, const struct repl_keys *k);

/* ------------------------------------------------------------------ receiver sinks */
struct repl_rx;
struct repl_sink_ops {
	/* A header arrived (fresh or resumed): prepare the target. */
	int (*begin)(struct repl_rx *rx);
	/* frame: the zstd frame buf came from (NULL when it travelled uncompressed) */
	int (*data)(struct repl_rx *rx, uint64_t off, const uint8_t *buf, size_t len,
		    const uint8_t *hash, const uint8_t *frame, size_t flen);
	int (*zero)(struct repl_rx *rx, uint64_t off, uint64_t len);
	int (*ref)(struct repl_rx *rx, uint64_t off, size_t len, const uint8_t hash[32]);
	/* Raw stores keep each verified record as it came. */
	int (*raw_record)(struct repl_rx *rx, const uint8_t *hdr, const uint8_t *body,
			  size_t body_len);
	/* A resume point: make everything so far durable with this token. */
	int (*checkpoint)(struct repl_rx *rx, const struct repl_token *t);
	/* The trailer verified: make the snapshot visible. */
	int (*finish)(struct repl_rx *rx);
	/* The stream failed; keep_resumable says a checkpoint exists in the target. */
	void (*fail)(struct repl_rx *rx, bool keep_resumable);
};

struct repl_have_map;

struct repl_rx {
	const struct repl_recv_opts *o;
	struct repl_recv_stats *st;
	const struct repl_sink_ops *ops;
	void *sink;		/* sink state */
	struct repl_hdr h;	/* as sent (for a resumed stream: its resume header) */
	struct repl_keys keys;
	bool decrypt;		/* keys available: verify tags, open sealed records */
	uint8_t digest[32];
	uint64_t next_off;	/* records must not go backwards */
	uint64_t data_bytes, zero_bytes, ref_bytes;
	bool checkpointed;	/* a token is durable in the target (this run or before) */
	bool began_here;	/* this run started the receive */
	struct repl_token stored; /* the target's token when resuming */
	bool have_stored;
	uint8_t target_uuid[16];
	struct kl_progress *prog;
	struct repl_have_map *have;
};

/* stream-recv.c: run a receive with a sink; used by the image and raw targets. */
int repl_rx_run(struct repl_rx *rx, const struct repl_reader *in);

/* stream-raw.c */
int repl_raw_sink_init(struct repl_rx *rx, const char *dir);
void repl_raw_sink_free(struct repl_rx *rx);
/* The token of a raw store's partial receive; *active false when none. */
int repl_raw_status(const char *dir, bool *active, struct repl_token *t);
/* The store's identity (what its tokens name as their target). */
int repl_raw_uuid(const char *dir, uint8_t uuid[16]);
int repl_raw_abort(const char *dir);

/* stream-have.c */
struct blk_dev;
/* d: the target image (NULL for a target the receive will create). */
int repl_have_open(const char *path, const char *target, struct blk_dev *d, size_t max_entries,
		   struct repl_have_map **out);
void repl_have_set_uuid(struct repl_have_map *m, const uint8_t uuid[16]);
void repl_have_close(struct repl_have_map *m);
const uint8_t *repl_have_key(const struct repl_have_map *m);
bool repl_have_lookup(struct repl_have_map *m, const uint8_t h[32]);
/* Copy held content into buf (len bytes); -ENOENT when not held. */
int repl_have_read(struct repl_have_map *m, struct blk_dev *work, const uint8_t h[32],
		   uint8_t *buf, size_t len);
/* Content written by the receive in progress at off (pending until commit). */
int repl_have_note(struct repl_have_map *m, const uint8_t h[32], uint64_t off, uint32_t len);
void repl_have_forget_pending(struct repl_have_map *m);
/* The pending entries now belong to snapshot guid (name); write the map file. */
int repl_have_commit(struct repl_have_map *m, const uint8_t guid[16], const char *name);
/* The target's passphrase, to read its snapshots (borrowed). */
void repl_have_set_key(struct repl_have_map *m, const uint8_t *pass, size_t len);

/* ------------------------------------------------------------------ network (net-*.c) */
#define REPL_NET_MAGIC "KEELNET1"
#define REPL_NET_VERSION 1
#define REPL_MSG_HDR 8
#define REPL_MSG_MAX (4u << 20)
#define REPL_HAVE_BATCH 1024 /* hashes per HAVE query */
#define REPL_NET_MAX_SNAPS 4096

enum repl_msg_type {
	REPL_MSG_HELLO = 1,
	REPL_MSG_WELCOME = 2,
	REPL_MSG_ERROR = 3,
	REPL_MSG_STREAM = 4,
	REPL_MSG_HAVE_Q = 5,
	REPL_MSG_HAVE_R = 6,
	REPL_MSG_DONE = 7,
	REPL_MSG_ABORT = 8,
	REPL_MSG_END = 9,
};

enum repl_op {
	REPL_OP_PUSH = 1,
	REPL_OP_FETCH = 2,
};

#define REPL_HELLO_RAW 0x1

enum repl_target_kind {
	REPL_TARGET_NONE = 0,
	REPL_TARGET_IMAGE = 1,
	REPL_TARGET_RAW = 2,
};

struct repl_snapref {
	uint8_t guid[16];
	uint64_t generation;
	char name[REPL_NAME_MAX + 1];
};

struct repl_hello {
	uint16_t version;
	uint16_t op;
	uint32_t flags;
	char name[REPL_NAME_MAX + 1];
	char snapshot[REPL_NAME_MAX + 1]; /* FETCH: wanted snapshot, "" = newest */
	struct repl_snapref *have;	   /* FETCH: snapshots the client holds */
	size_t nhave;
};

struct repl_welcome {
	uint16_t version;
	uint16_t kind;
	uint32_t flags;
	uint8_t target_uuid[16];
	uint64_t vsize;
	uint32_t cluster_size;
	uint8_t have_key[32];
	bool have_dedup;
	struct repl_snapref *snaps;
	size_t nsnaps;
	uint8_t token[REPL_TOKEN_LEN];
	size_t token_len; /* 0 = no receive in progress */
};

int repl_msg_hello_encode(const struct repl_hello *h, uint8_t **out, size_t *len);
int repl_msg_hello_decode(const uint8_t *p, size_t len, struct repl_hello *h);
void repl_msg_hello_release(struct repl_hello *h);
int repl_msg_welcome_encode(const struct repl_welcome *w, uint8_t **out, size_t *len);
int repl_msg_welcome_decode(const uint8_t *p, size_t len, struct repl_welcome *w);
void repl_msg_welcome_release(struct repl_welcome *w);
int repl_msg_error_decode(const uint8_t *p, size_t len, int *code, char *msg, size_t cap);
size_t repl_msg_error_encode(int code, const char *msg, uint8_t *out, size_t cap);
int repl_msg_haveq_decode(const uint8_t *p, size_t len, uint32_t *id, const uint8_t **hashes,
			  size_t *n);
int repl_msg_haver_decode(const uint8_t *p, size_t len, uint32_t id, size_t n, bool *held);
/* The name rules of server targets: [A-Za-z0-9._-], no leading '.', 1..200 bytes. */
int repl_target_name_check(const char *name);

/* A TLS connection (net-tls.c). */
struct repl_conn;
int repl_conn_read_msg(struct repl_conn *c, uint16_t *type, uint8_t **payload, size_t *len);
int repl_conn_write_msg(struct repl_conn *c, uint16_t type, const void *payload, size_t len);
/* Two buffers as one message (header fields + bulk), no copy of the bulk. */
int repl_conn_write_msg2(struct repl_conn *c, uint16_t type, const void *a, size_t alen,
			 const void *b, size_t blen);
int repl_conn_send_error(struct repl_conn *c, int code, const char *msg);
/* True when a message can be read without waiting. */
bool repl_conn_readable(struct repl_conn *c);
void repl_conn_set_rate(struct repl_conn *c, uint64_t bytes_per_sec);
uint64_t repl_conn_bytes_out(const struct repl_conn *c);
uint64_t repl_conn_bytes_in(const struct repl_conn *c);
const char *repl_conn_peer(const struct repl_conn *c);
void repl_conn_close(struct repl_conn *c);

struct ssl_ctx_st;
int repl_tls_ctx(const struct repl_tls_opts *t, bool server, struct ssl_ctx_st **out);
void repl_tls_ctx_free(struct ssl_ctx_st *ctx);
int repl_tls_connect(struct ssl_ctx_st *ctx, const char *host, const char *port, int timeout,
		     struct repl_conn **out);
int repl_tls_accept(struct ssl_ctx_st *ctx, int fd, int timeout, struct repl_conn **out);

#endif
