/*
 * format/keel.h - private header of the native .keel driver (prefix kf_).
 *
 * The on-disk format is specified in format/KEEL-FORMAT.md; section numbers
 * below refer to it. Files:
 *   keel.c           open/create/header, I/O paths, driver table
 *   keel-alloc.c     refcounts, the block allocator, the refcount tree
 *   keel-tree.c      the cluster map tree: lookup, copy-on-write, write-out
 *   keel-snapshot.c  the snapshot table and snapshot operations
 *   keel-check.c     consistency check and repair
 */
#ifndef KEEL_FORMAT_KEEL_H
#define KEEL_FORMAT_KEEL_H

#include "format/format_int.h"

/* ------------------------------------------------------------------ constants (§2) */
#define KF_MAGIC "KEELIMG\n"
#define KF_VERSION 1
#define KF_BLOCK_BITS 12
#define KF_BLOCK 4096u
#define KF_HDR_FIXED 512      /* bytes of fixed header fields in use */
#define KF_HDR_PARENT_OFF 512 /* parent path */
#define KF_HDR_PARENT_MAX 1024
#define KF_HDR_PFMT_OFF 1536 /* parent format name */
#define KF_HDR_PFMT_MAX 16
#define KF_HDR_MAC_OFF 4060 /* encrypted images: HMAC-SHA-256 of bytes 0..4059 */
#define KF_HDR_CRC_OFF 4092

#define KF_MIN_CLUSTER_BITS 12
#define KF_MAX_CLUSTER_BITS 21
#define KF_FANOUT_BITS 8 /* 256 16-byte entries per 4 KiB node */
#define KF_FANOUT 256u
#define KF_MAX_HEIGHT 7
#define KF_RC_PER_LEAF 1024u /* u32 refcounts per 4 KiB refcount leaf */
#define KF_MAX_VSIZE (1ULL << 56)
#define KF_SNAP_TABLE_MAX (64u << 20)
#define KF_MAX_SNAPSHOTS 65536
#define KF_NAME_MAX 255

/* feature bits (§2.2) */
#define KF_INCOMPAT_ENCRYPTION (1ULL << 0)
#define KF_INCOMPAT_KNOWN KF_INCOMPAT_ENCRYPTION
#define KF_COMPAT_DEDUP (1ULL << 0)
#define KF_AUTOCLEAR_DEDUP_INDEX (1ULL << 0)
#define KF_AUTOCLEAR_RECV (1ULL << 1) /* staging_root and recv_token are valid */

/* leaf entry info word (§4.1) */
#define KF_LEN_MASK 0x00ffffffu
#define KF_TYPE_SHIFT 24
#define KF_TYPE_MASK (3u << KF_TYPE_SHIFT)
#define KF_T_UNALLOC 0u
#define KF_T_DATA 1u
#define KF_T_ZERO 2u
#define KF_COMP_SHIFT 26
#define KF_COMP_MASK (3u << KF_COMP_SHIFT)
#define KF_COMP_NONE 0u
#define KF_COMP_ZSTD 1u
#define KF_COMP_ZLIB 2u
#define KF_ENCRYPTED (1u << 28)
#define KF_INFO_RESERVED 0xe0000000u

/* encryption (§10) */
#define KF_MAX_SLOTS 8
#define KF_SLOT_OFF 48
#define KF_SLOT_LEN 128
#define KF_CRYPTO_LEN (KF_SLOT_OFF + KF_MAX_SLOTS * KF_SLOT_LEN)
#define KF_SEAL_OVERHEAD 28 /* 12-byte nonce + 16-byte tag */
/* scrypt for new key slots: 32 MiB and ~0.1 s per attempt on one core */
#define KF_SCRYPT_N 32768
#define KF_SCRYPT_R 8
#define KF_SCRYPT_P 1

struct kf_keyslot {
	uint32_t state, kdf;
	uint64_t n;
	uint32_t r, p;
	uint8_t salt[32];
	uint8_t nonce[12];
	uint8_t wrapped[48];
};

struct kf_crypto;
struct kf_dedup;

/* a 16-byte pointer: to a node, a data blob or a table (§3) */
struct kf_ptr {
	uint64_t addr; /* byte offset, multiple of KF_BLOCK; 0 = none */
	uint32_t crc;  /* CRC-32C of what it points to */
	uint32_t aux;  /* leaf entries: info word; tables: length in bytes */
};

static inline void kf_ptr_get(const uint8_t *p, struct kf_ptr *out)
{
	out->addr = get_le64(p);
	out->crc = get_le32(p + 8);
	out->aux = get_le32(p + 12);
}

static inline void kf_ptr_put(uint8_t *p, const struct kf_ptr *v)
{
	put_le64(p, v->addr);
	put_le32(p + 8, v->crc);
	put_le32(p + 12, v->aux);
}

static inline unsigned kf_type(uint32_t info)
{
	return (info & KF_TYPE_MASK) >> KF_TYPE_SHIFT;
}

static inline unsigned kf_comp(uint32_t info)
{
	return (info & KF_COMP_MASK) >> KF_COMP_SHIFT;
}

static inline uint64_t kf_blocks_of(uint64_t bytes)
{
	return (bytes + KF_BLOCK - 1) / KF_BLOCK;
}

/* ------------------------------------------------------------------ in memory */

/* A node of the current map tree, loaded on demand (keel-tree.c). */
struct kf_node {
	uint8_t *buf;		/* KF_BLOCK bytes as on disk */
	struct kf_node **child; /* interior nodes: KF_FANOUT lazily loaded children */
	uint64_t addr;		/* on-disk home while clean; 0 while dirty (new home at commit) */
	bool dirty;
	int level;		/* 0 = leaf */
};

struct kf_snap {
	uint64_t id;
	uint64_t generation;
	uint64_t ctime_ns;
	uint64_t vsize;
	struct kf_ptr root;
	uint8_t height;
	uint8_t guid[16];
	char *name;
};

/* Refcount tree bookkeeping (keel-alloc.c): one record per node. */
struct kf_rcnode {
	uint64_t addr; /* current on-disk home, 0 = none yet */
	uint32_t crc;
	bool dirty;    /* content differs from what lies at addr */
	bool moved;    /* got a new home during this commit */
};

struct kf_state {
	/* header (§2) */
	uint8_t uuid[16];
	uint64_t generation;
	uint64_t incompat, compat, autoclear;
	unsigned cluster_bits;
	uint32_t cluster_size;
	uint64_t vsize;
	unsigned height;
	unsigned comp;	 /* default compression for new clusters */
	int comp_level;
	uint64_t ctime_ns;
	uint64_t next_snap_id;
	int slot;	 /* header slot holding the current generation */
	char *parent;	 /* recorded parent reference, or NULL */
	char *parent_fmt;
	uint8_t parent_uuid[16];
	uint64_t parent_gen, parent_gen_alt;
	struct kf_ptr dedup_root, crypto_hdr; /* reserved (§2.1) */
	uint8_t hdr_extra[KF_BLOCK];	     /* the header slot as read, to keep unknown bytes */

	/* current map tree */
	struct kf_ptr root;	/* as committed */
	struct kf_node *rootn;	/* loaded root, or NULL */
	uint64_t dirty_nodes;

	/* snapshots (keel-snapshot.c) */
	struct kf_snap *snaps;
	size_t nsnaps;
	struct kf_ptr snap_table; /* as committed */
	bool snaps_dirty;
	bool snap_pending;	/* the last snapshot takes the root of the next commit */
	const struct kf_snap *view; /* opened @snapshot: read-only view */

	/* allocation (keel-alloc.c): loaded for writable opens and check */
	bool rc_loaded;
	uint32_t *rc;		/* refcount per block, rc_cap entries */
	uint64_t rc_cap;
	uint64_t nblocks;	/* blocks covered by refcounts (file high-water mark) */
	uint64_t nblocks_committed;
	uint8_t *pinned;	/* bitmap: freed since the last commit, still referenced by it */
	uint8_t *txn_new;	/* bitmap: allocated since the last commit */
	uint64_t free_hint;
	uint64_t scan_fail_n;	/* a scan for this many blocks failed since the last free */
	uint64_t pinned_blocks;
	unsigned rc_height;
	struct kf_ptr rc_root;	/* as committed */
	struct kf_rcnode *rcn[KF_MAX_HEIGHT + 4]; /* per level, level 0 = leaves */
	uint64_t rcn_count[KF_MAX_HEIGHT + 4];
	bool rc_dirty;

	/* I/O scratch */
	uint8_t *cbuf;		/* one cluster, decoded */
	uint8_t *sbuf;		/* one cluster, stored form (compressed) + slack */
	uint8_t *ebuf;		/* sealed or unsealed form, encrypted images */
	uint64_t cached_cluster; /* cluster held decoded in cbuf, or UINT64_MAX */
	void *zstd_c, *zstd_d;
	bool broken;		/* corruption seen on a writable handle: stop writing */
	bool batch;		/* no commits until flush (BLK_OPEN_BATCH) */

	struct kf_crypto *crypto; /* keys, when encrypted and unlocked */
	bool crypto_dirty;
	struct kf_dedup *dedup;	  /* content index, when dedup is on and writable */
	bool dedup_incomplete;	  /* index was missing or stale: `keel dedup` rebuilds it */
	struct blk_stats stats;

	/* staged receive (keel-recv.c) */
	bool staging;		  /* writable: s->root is the working state */
	struct kf_ptr shown_root; /* staging: what the header shows as current */
	struct kf_ptr staging_root; /* as read from the header (read-only opens, check) */
	struct kf_ptr token_ptr;  /* committed token blob */
	uint8_t *token;
	size_t token_len;
	bool token_dirty;
	uint8_t pending_guid[16];
	bool pending_guid_set;
};

/* ------------------------------------------------------------------ keel.c */
int kf_commit(struct blk_dev *d);
int kf_corrupt(struct blk_dev *d, int code, const char *fmt, ...) KL_PRINTF(3, 4);
int kf_read_blob(struct blk_dev *d, uint64_t vcluster, const struct kf_ptr *e, uint8_t *out);
unsigned kf_height_for(uint64_t vsize, unsigned cluster_bits);

/* ------------------------------------------------------------------ keel-alloc.c */
int kf_rc_load(struct blk_dev *d);
void kf_rc_free(struct kf_state *s);
uint32_t kf_rc_get(struct kf_state *s, uint64_t block);
int kf_rc_inc(struct blk_dev *d, uint64_t addr, uint64_t nblocks);
/* Drops one reference per block; blocks reaching 0 become free (pinned if committed). */
int kf_rc_dec(struct blk_dev *d, uint64_t addr, uint64_t nblocks);
int kf_rc_set(struct blk_dev *d, uint64_t block, uint32_t v);
/* Allocates n contiguous blocks with refcount 1; returns the byte address. */
int kf_alloc(struct blk_dev *d, uint64_t n, uint64_t *addr);
bool kf_is_txn_new(struct kf_state *s, uint64_t addr);
/* Writes the refcount tree of the current refcounts (part of kf_commit). */
int kf_rc_commit(struct blk_dev *d);
/* After the header is durable: pinned blocks become free. */
void kf_rc_committed(struct blk_dev *d);
/* Visit every refcount-tree node on disk (check). */
int kf_rc_walk_nodes(struct blk_dev *d, int (*fn)(void *opaque, uint64_t addr), void *opaque);
/* Load the stored refcount of every block into out[nblocks] (check, read-only allowed). */
int kf_rc_read_all(struct blk_dev *d, uint32_t **out, uint64_t *nblocks);

/* ------------------------------------------------------------------ keel-tree.c */
/* Is a leaf entry well formed? -EUCLEAN naming cluster c when not. */
int kf_entry_check(struct blk_dev *d, uint64_t c, const struct kf_ptr *e);
/* Reads and verifies the node a pointer names. */
int kf_node_read(struct blk_dev *d, const struct kf_ptr *p, int level, uint8_t *buf);
/* Entry of virtual cluster c in the current view; run = clusters sharing a null subtree. */
int kf_lookup(struct blk_dev *d, uint64_t c, struct kf_ptr *e, uint64_t *run);
/* Replaces the entry of cluster c (current tree, writable); returns the old one. */
int kf_set_entry(struct blk_dev *d, uint64_t c, const struct kf_ptr *e, struct kf_ptr *old);
int kf_tree_commit(struct blk_dev *d);
void kf_tree_drop(struct kf_state *s);
/* Drop one reference to the subtree at p (level = height-1 for roots). */
int kf_tree_decref(struct blk_dev *d, const struct kf_ptr *p, int level);
int kf_tree_incref_root(struct blk_dev *d, const struct kf_ptr *p);
/* Drop one reference to a data entry's blocks. */
int kf_entry_decref(struct blk_dev *d, const struct kf_ptr *e);
typedef int (*kf_diff_cb)(void *opaque, uint64_t cluster, const struct kf_ptr *a,
			  const struct kf_ptr *b);
int kf_tree_diff(struct blk_dev *d, const struct kf_ptr *ra, const struct kf_ptr *rb,
		 unsigned height, kf_diff_cb cb, void *opaque);
typedef int (*kf_walk_cb)(void *opaque, int level, uint64_t first_cluster, const struct kf_ptr *p);
/* Depth-first walk of a tree from disk; cb sees every pointer (nodes and data entries). */
int kf_tree_walk(struct blk_dev *d, const struct kf_ptr *root, unsigned height, kf_walk_cb cb,
		 void *opaque);

/* ------------------------------------------------------------------ keel-snapshot.c */
int kf_snap_load(struct blk_dev *d);
int kf_snap_commit(struct blk_dev *d);
void kf_snap_free(struct kf_state *s);
const struct kf_snap *kf_snap_find(struct kf_state *s, const char *name);
int kf_snapshot_list(struct blk_dev *d, struct blk_snapshot_info **out, size_t *n);
int kf_snapshot_create(struct blk_dev *d, const char *name);
int kf_snapshot_create_guid(struct blk_dev *d, const char *name, const uint8_t guid[16]);
int kf_snapshot_delete(struct blk_dev *d, const char *name);
int kf_snapshot_revert(struct blk_dev *d, const char *name);
int kf_snapshot_diff(struct blk_dev *d, const char *a, const char *b, blk_extent_cb cb,
		     void *opaque);

/* ------------------------------------------------------------------ keel-crypto.c */
/* Checksum of metadata: CRC-32C, or truncated HMAC-SHA-256 when encrypted. */
uint32_t kf_sum(const struct kf_state *s, const void *buf, size_t len);
void kf_header_mac(const struct kf_state *s, const uint8_t *hdr, uint8_t out[32]);
int kf_hash_content(const struct kf_state *s, const void *buf, size_t len, uint8_t out[32]);
int kf_seal(struct kf_state *s, uint64_t addr, const uint8_t *in, size_t len, uint8_t *out);
int kf_unseal(struct kf_state *s, uint64_t addr, const uint8_t *in, size_t len, uint8_t *out);
int kf_crypto_parse(const uint8_t *b, size_t len, struct kf_keyslot *slots, unsigned *nslots);
int kf_crypto_create(struct kf_state *s, const uint8_t *pass, size_t plen);
int kf_crypto_open(struct blk_dev *d, const uint8_t *pass, size_t plen);
/* Key slots in use, from the table alone (no key needed): keel info without a key. */
int kf_crypto_slots_in_use(struct blk_dev *d, unsigned *used);
int kf_crypto_commit(struct blk_dev *d);
void kf_crypto_free(struct kf_state *s);
void kf_crypto_blob_copy(const struct kf_state *s, uint8_t *out);
int kf_key_op(struct blk_dev *d, enum blk_key_op op, const uint8_t *key, size_t klen, int slot,
	      int *out_slot);
int kf_key_list(struct blk_dev *d, struct blk_key_slot *out, size_t max, size_t *n);

/* ------------------------------------------------------------------ keel-dedup.c */
int kf_dedup_parse(const uint8_t *b, size_t len, uint64_t *count);
int kf_dedup_load(struct blk_dev *d);
int kf_dedup_commit(struct blk_dev *d);
void kf_dedup_free(struct kf_state *s);
bool kf_dedup_lookup(const struct kf_state *s, const uint8_t h[32], struct kf_ptr *e);
bool kf_dedup_hash_of(const struct kf_state *s, uint64_t addr, uint8_t h[32]);
int kf_dedup_insert(struct kf_state *s, const uint8_t h[32], const struct kf_ptr *e);
void kf_dedup_forget(struct kf_state *s, uint64_t addr);
size_t kf_dedup_count(const struct kf_state *s);
int kf_dedup_each(const struct kf_state *s,
		  int (*fn)(void *o, const uint8_t h[32], const struct kf_ptr *e), void *o);
void kf_dedup_clear(struct kf_state *s);

/* ------------------------------------------------------------------ keel-recv.c */
int kf_recv_open(struct blk_dev *d);
int kf_token_commit(struct blk_dev *d);
void kf_recv_free(struct kf_state *s);
int kf_recv_begin(struct blk_dev *d, const char *base);
int kf_recv_status(struct blk_dev *d, bool *active, void *token, size_t *len);
int kf_recv_checkpoint(struct blk_dev *d, const void *token, size_t len);
int kf_recv_finish(struct blk_dev *d, const char *name, const uint8_t guid[16]);
int kf_recv_abort(struct blk_dev *d);

/* ------------------------------------------------------------------ keel-check.c */
/* One reference to a data blob: from tree (-1 current, else snapshot index) at cluster. */
struct kf_ref {
	uint64_t addr;
	uint64_t cluster;
	uint32_t aux, crc;
	int tree;
};
/* Every data reference of every tree, sorted by blob address. */
int kf_collect_refs(struct blk_dev *d, struct kf_ref **out, size_t *n);
int kf_dedup_offline(struct blk_dev *d, bool progress, struct blk_stats *st);
int kf_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags);
int kf_scrub(struct blk_dev *d, blk_scrub_cb cb, void *opaque, bool progress,
	     struct blk_scrub_report *r);

#endif
