/*
 * replicate/s3_int.h - private declarations of the S3 replication code,
 * grouped by file. Only replicate/s3-*.c include this (and the unit tests
 * and fuzz targets, which test these pieces directly).
 */
#ifndef KEEL_REPLICATE_S3_INT_H
#define KEEL_REPLICATE_S3_INT_H

#include "replicate/s3.h"

#include <pthread.h>
#include <zstd.h>

/* ================================================================== s3-http.c
 *
 * The S3 client: libcurl with its built-in AWS Signature V4 signer. One
 * client serves many threads; each request borrows an easy handle (and so
 * a kept-alive connection) from a free list.
 */
struct repl_s3;

struct repl_s3_req {
	const char *method; /* GET PUT HEAD DELETE */
	const char *key;    /* key below the repository prefix; NULL: the bucket itself */
	const char *query;  /* already sorted and %-encoded (curl does not sort when signing) */
	const void *body;   /* PUT body, borrowed */
	size_t body_len;
	uint64_t range_off; /* range_len > 0: GET bytes [off, off+len) */
	uint64_t range_len;
	size_t max_body;    /* refuse longer responses; 0 = 256 MiB */
};

struct repl_s3_resp {
	long status;
	uint8_t *body; /* NUL-terminated, kl_free */
	size_t len;
	char code[64]; /* S3 error code from the XML body, "" if none */
	uint64_t date_ns; /* server's Date header, 0 if absent */
};

struct repl_s3_counters {
	uint64_t requests, get, put, head, list, del, retries, up, down;
};

/*
 * Builds a client from o (environment for NULL fields) for the bucket and
 * prefix of url. Fails with -EINVAL naming what is missing (credentials,
 * bucket).
 */
int repl_s3_new(const struct repl_s3_opts *o, const struct repl_s3_url *url, struct repl_s3 **out);
void repl_s3_free(struct repl_s3 *c);
/* "s3://bucket/prefix" for messages. Borrowed. */
const char *repl_s3_where(const struct repl_s3 *c);
int repl_s3_connections(const struct repl_s3 *c);
void repl_s3_counters(const struct repl_s3 *c, struct repl_s3_counters *out);

/*
 * Sends rq with retries (exponential backoff with jitter on connection
 * errors, 429, 500, 502, 503, 504 and S3 RequestTimeout/SlowDown). Returns
 * 0 for 2xx with rs filled (release with repl_s3_resp_release), else a
 * negative errno with a message naming the method, key, status and S3
 * error code: -ENOENT (404), -EACCES (403), -EIO (gave up), -EINVAL (4xx).
 * rs is filled for errors too when a response arrived.
 */
int repl_s3_request(struct repl_s3 *c, const struct repl_s3_req *rq, struct repl_s3_resp *rs);
void repl_s3_resp_release(struct repl_s3_resp *rs);

/* Convenience wrappers; *out/len freshly allocated. */
int repl_s3_get(struct repl_s3 *c, const char *key, size_t max, uint8_t **out, size_t *len);
int repl_s3_get_range(struct repl_s3 *c, const char *key, uint64_t off, uint64_t len,
		      uint8_t **out);
int repl_s3_put(struct repl_s3 *c, const char *key, const void *body, size_t len);
int repl_s3_delete(struct repl_s3 *c, const char *key);
/* 0 when the object exists, -ENOENT when not. */
int repl_s3_head(struct repl_s3 *c, const char *key);
/* Checks the bucket exists and the credentials work (HEAD bucket). */
int repl_s3_check_bucket(struct repl_s3 *c);

struct repl_s3_obj {
	char *key;	  /* below the repository prefix */
	uint64_t size;
	uint64_t mtime_ns; /* LastModified, server clock */
};
/* Lists every key under prefix/sub (ListObjectsV2, following continuation). */
int repl_s3_list_keys(struct repl_s3 *c, const char *sub, struct repl_s3_obj **out, size_t *n);
void repl_s3_objs_free(struct repl_s3_obj *v, size_t n);

/* Parsers for S3's XML answers (fuzzed): bounded, never trust the input. */
struct repl_s3_listing {
	struct repl_s3_obj *objs;
	size_t n, cap;
	bool truncated;
	char *next_token;
};
int repl_s3_parse_listing(const char *xml, size_t len, size_t strip, struct repl_s3_listing *l);
void repl_s3_listing_release(struct repl_s3_listing *l);
/* Copies <Code> of an error body into code (cap bytes). */
void repl_s3_parse_error(const char *xml, size_t len, char *code, size_t cap);
/* "2024-03-01T10:00:00.000Z" -> ns since the epoch; -EINVAL if malformed. */
int repl_s3_parse_iso8601(const char *s, uint64_t *ns);

/* ================================================================== s3-pool.c
 *
 * A few worker threads running jobs from a bounded queue; submit blocks
 * while the queue is full (back-pressure on the producer). The first
 * failure is kept (code and message) and later jobs are skipped.
 */
struct repl_pool;
typedef int (*repl_job_fn)(void *arg);

int repl_pool_new(int threads, int queue, struct repl_pool **out);
/* Queues fn(arg); after a failure returns that failure without queueing. */
int repl_pool_submit(struct repl_pool *p, repl_job_fn fn, void *arg);
/* Waits for every queued job; returns the first failure (message restored). */
int repl_pool_wait(struct repl_pool *p);
void repl_pool_free(struct repl_pool *p);

/* ================================================================== s3-crypto.c */
#define REPL_ID_LEN 32
#define REPL_KEY_LEN 32
#define REPL_NONCE_LEN 12
#define REPL_TAG_LEN 16

struct repl_s3_keys {
	uint8_t data[REPL_KEY_LEN]; /* AES-256-GCM for every encrypted object */
	uint8_t id[REPL_KEY_LEN];   /* HMAC-SHA-256: chunk ids */
	uint8_t name[REPL_KEY_LEN]; /* HMAC-SHA-256: manifest object names */
	uint8_t repo_id[16];
};

/* Derive the three subkeys from the master key (HKDF-SHA-256). */
int repl_s3_keys_derive(const uint8_t master[REPL_KEY_LEN], const uint8_t repo_id[16],
		     struct repl_s3_keys *k);
void repl_s3_keys_wipe(struct repl_s3_keys *k);

/* HMAC-SHA-256(key, data). */
int repl_hmac(const uint8_t key[REPL_KEY_LEN], const void *data, size_t len,
	      uint8_t out[REPL_ID_LEN]);
void repl_s3_hex(const uint8_t *b, size_t n, char *out); /* 2n chars + NUL */
int repl_s3_unhex(const char *s, uint8_t *out, size_t n);
int repl_s3_random(void *buf, size_t n);

/*
 * AES-256-GCM seal: out = nonce(12) | ciphertext | tag(16), a fresh random
 * nonce each call. aad is authenticated, not stored.
 */
int repl_seal(const uint8_t key[REPL_KEY_LEN], const void *aad, size_t aad_len,
	      const void *pt, size_t pt_len, uint8_t *out);
/* Inverse; -EBADMSG when the tag fails. out holds in_len - 28 bytes. */
int repl_open(const uint8_t key[REPL_KEY_LEN], const void *aad, size_t aad_len,
	      const uint8_t *in, size_t in_len, uint8_t *out);
#define REPL_SEAL_OVERHEAD (REPL_NONCE_LEN + REPL_TAG_LEN)

/* scrypt (OpenSSL EVP_KDF "SCRYPT"). */
int repl_scrypt(const uint8_t *pass, size_t pass_len, const uint8_t *salt, size_t salt_len,
		unsigned log2n, uint32_t r, uint32_t p, uint8_t out[REPL_KEY_LEN]);

/* ================================================================== s3-format.c
 *
 * The repository objects (replicate/S3-LAYOUT.md). Encoders produce the
 * final bytes to upload; decoders take the downloaded bytes and validate
 * everything before use (fuzzed: tests/fuzz/fuzz_s3_*.c).
 */
#define REPL_CHUNK_SIZE (64u * 1024)
#define REPL_PACK_TARGET (8u << 20)

/* config object: plaintext KDF parameters + the wrapped master key */
#define REPL_CONFIG_MAGIC "KEELS3R1"
#define REPL_CONFIG_LEN 140
struct repl_config {
	uint32_t version;
	uint32_t chunk_size;
	uint8_t repo_id[16];
	uint8_t kdf_log2n;
	uint32_t kdf_r, kdf_p;
	uint8_t salt[32];
	uint8_t wrapped[REPL_KEY_LEN + REPL_SEAL_OVERHEAD];
};
/* Fresh repository: random id, salt and master key wrapped under pass. */
int repl_config_create(const uint8_t *pass, size_t pass_len, struct repl_config *cfg,
		       struct repl_s3_keys *keys);
int repl_config_encode(const struct repl_config *cfg, uint8_t out[REPL_CONFIG_LEN]);
int repl_config_decode(const uint8_t *buf, size_t len, struct repl_config *cfg);
/* Unwrap with pass; -EBADMSG "wrong passphrase" when it does not open. */
int repl_config_unlock(const struct repl_config *cfg, const uint8_t *pass, size_t pass_len,
		       struct repl_s3_keys *keys);

/*
 * Sealed objects (manifest, index, gc mark): a 16-byte header
 * "KS3O" | type | version | flags(2) | plain length (8), then
 * repl_seal(data key, aad = header | context, zstd(plaintext)).
 */
enum repl_obj_type {
	REPL_OBJ_MANIFEST = 1,
	REPL_OBJ_INDEX = 2,
	REPL_OBJ_MARK = 3,
};
#define REPL_OBJ_HDR 16
#define REPL_OBJ_MAX_PLAIN (1024u << 20)
int repl_obj_seal(const struct repl_s3_keys *k, enum repl_obj_type type, const char *context,
		  const void *pt, size_t pt_len, uint8_t **out, size_t *out_len);
int repl_obj_open(const struct repl_s3_keys *k, enum repl_obj_type type, const char *context,
		  const uint8_t *in, size_t in_len, uint8_t **out, size_t *out_len);

/*
 * Blobs inside packs: flags(1) | sealed(chunk), aad = id | flags.
 * flags 1 = zstd-compressed, 0 = stored.
 */
#define REPL_BLOB_ZSTD 0x1
#define REPL_PACK_MAGIC "KS3PACK1"
#define REPL_PACK_HDR 8
/* Bound on an encoded blob for plain_len bytes. */
size_t repl_blob_bound(size_t plain_len);
/*
 * Encode chunk (len <= REPL_CHUNK_MAX) into out (repl_blob_bound bytes):
 * compressed with cctx (NULL: a one-shot context) at level when that
 * shrinks it, then sealed. *out_len receives the blob's length.
 */
#define REPL_CHUNK_MAX (4u << 20)
int repl_blob_encode(const struct repl_s3_keys *k, const uint8_t id[REPL_ID_LEN], const void *chunk,
		     size_t len, ZSTD_CCtx *cctx, int level, uint8_t *out, size_t *out_len);
/* Decode and verify: decrypt, decompress to exactly plain_len, HMAC == id. */
int repl_blob_decode(const struct repl_s3_keys *k, const uint8_t id[REPL_ID_LEN],
		     const uint8_t *in, size_t in_len, uint8_t *out, size_t plain_len);

/* Index: what a pack holds. */
struct repl_index_entry {
	uint8_t id[REPL_ID_LEN];
	uint64_t off;	    /* in the pack object */
	uint32_t len;	    /* encoded blob length */
	uint32_t plain_len; /* chunk bytes */
};
struct repl_index {
	uint8_t pack[REPL_ID_LEN]; /* the pack's name */
	struct repl_index_entry *e;
	size_t n;
};
#define REPL_INDEX_MAGIC "KS3IDX01"
int repl_index_encode(const struct repl_index *ix, uint8_t **out, size_t *len);
int repl_index_decode(const uint8_t *buf, size_t len, struct repl_index *ix);
void repl_index_release(struct repl_index *ix);

/* Manifest: one snapshot. */
struct repl_manifest {
	char *name;
	char *image;	    /* file name of the image, for humans */
	char *format;	    /* its format */
	uint8_t uuid[16];   /* image identity when it has one */
	uint64_t vsize;
	uint64_t created_ns;
	uint64_t replicated_ns;
	uint32_t chunk_size;
	uint64_t nchunks; /* ceil(vsize / chunk_size) positions */
	/* positions holding data, increasing, and their chunk ids; the
	 * other positions are zero (elided runs) */
	uint64_t ndata;
	uint64_t *pos;
	uint8_t (*ids)[REPL_ID_LEN];
};
#define REPL_MANIFEST_MAGIC "KS3MAN01"
int repl_manifest_encode(const struct repl_manifest *m, uint8_t **out, size_t *len);
int repl_manifest_decode(const uint8_t *buf, size_t len, struct repl_manifest *m);
void repl_manifest_release(struct repl_manifest *m);

/* GC mark: packs condemned at the mark object's LastModified. */
#define REPL_MARK_MAGIC "KS3MRK01"
int repl_mark_encode(const uint8_t (*packs)[REPL_ID_LEN], size_t n, uint8_t **out, size_t *len);
int repl_mark_decode(const uint8_t *buf, size_t len, uint8_t (**packs)[REPL_ID_LEN], size_t *n);

/* ================================================================== s3-repo.c */

/* Where a chunk lives. */
struct repl_loc {
	uint8_t id[REPL_ID_LEN];
	uint32_t pack;	    /* index into repo->packs */
	uint32_t len;
	uint32_t plain_len;
	uint64_t off;
};

struct repl_pack {
	uint8_t id[REPL_ID_LEN];
	uint64_t mtime_ns; /* index object's LastModified */
	bool condemned;	   /* named by a gc mark: never dedup against it */
	bool have_data;	   /* the data object is listed (gc/scrub) */
	uint64_t size;	   /* of the data object, when listed */
};

/* Open hash table of chunk id -> location (ids are keyed hashes: uniform). */
struct repl_chunk_map {
	struct repl_loc *slots;
	size_t cap, n;
};
int repl_map_put(struct repl_chunk_map *m, const struct repl_loc *loc);
/* Borrowed pointer valid until the next put. */
struct repl_loc *repl_map_get(const struct repl_chunk_map *m, const uint8_t id[REPL_ID_LEN]);
void repl_map_release(struct repl_chunk_map *m);

struct repl_repo {
	struct repl_s3 *s3;
	struct repl_s3_url url;
	struct repl_config cfg;
	struct repl_s3_keys keys;
	char *cache; /* cache directory for this repository, or NULL */
	struct repl_pack *packs;
	size_t npacks, cap_packs;
	struct repl_chunk_map map; /* every chunk in a live (not condemned) pack first */
	uint64_t condemned_seen;   /* number of mark objects read */
	char **marks;		   /* mark keys already applied */
	size_t nmarks;
	uint32_t *sorted;	   /* pack indices sorted by id (repl_repo_find_pack) */
	size_t nsorted;
	bool keep_all;		   /* scrub: also keep every index entry in all[] */
	struct repl_loc *all;
	size_t nall, cap_all;
	const struct repl_s3_opts *o;
};

/*
 * Opens the repository named by o->url: reads config (or creates it when
 * init and it is missing), unlocks it with o->key. On failure the request
 * counters so far go to st (when not NULL).
 */
int repl_repo_open(const struct repl_s3_opts *o, bool init, struct repl_repo **out,
		   struct repl_s3_stats *st);
void repl_repo_close(struct repl_repo *r);
/*
 * Loads every index object (via the local cache) and every gc mark, and
 * fills r->packs / r->map. Indexes that do not open are an error unless
 * tolerate (scrub), where they are counted in *bad.
 */
int repl_repo_load_index(struct repl_repo *r, bool tolerate, struct repl_s3_stats *st);
/* Reads gc marks not seen yet; *changed when a known pack became condemned. */
int repl_repo_refresh_marks(struct repl_repo *r, bool *changed);
/* Index of the pack with this id in r->packs, or -1. */
int repl_repo_find_pack(struct repl_repo *r, const uint8_t id[REPL_ID_LEN]);
/* Appends a pack entry (no chunks yet); *idx is its index in r->packs. */
int repl_repo_new_pack(struct repl_repo *r, const uint8_t id[REPL_ID_LEN], uint64_t mtime,
		       uint32_t *idx);
/*
 * Lists index/ and treats every known pack whose index is gone (swept by a
 * prune, which deletes the index before the pack and the mark after both)
 * as condemned; *changed is set when that happens.
 */
int repl_repo_check_packs(struct repl_repo *r, bool *changed);
/* Adds a pack (just uploaded) and its entries to the in-memory index. */
int repl_repo_add_pack(struct repl_repo *r, const struct repl_index *ix, uint64_t mtime_ns);
/* The server's clock (Date of a HEAD request), for grace periods. */
int repl_repo_server_time(struct repl_repo *r, uint64_t *ns);
/* Object keys. */
char *repl_key_pack(const uint8_t id[REPL_ID_LEN]);
char *repl_key_index(const uint8_t id[REPL_ID_LEN]);
char *repl_key_manifest(const struct repl_repo *r, const char *name);
int repl_repo_get_manifest(struct repl_repo *r, const char *key, const char *name,
			   struct repl_manifest *m);
/* All manifests: keys and decoded contents. */
int repl_repo_load_manifests(struct repl_repo *r, struct repl_manifest **out, char ***keys,
			     size_t *n);
void repl_manifests_free(struct repl_manifest *m, char **keys, size_t n);
void repl_stats_from_counters(struct repl_repo *r, struct repl_s3_stats *st);
int repl_stats_add_name(struct repl_s3_stats *st, const char *name);

#endif
