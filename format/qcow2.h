/*
 * format/qcow2.h - private declarations of the qcow2 driver, grouped by the
 * file that implements them (QEMU's block/qcow2.h splits the same way).
 *
 * On-disk layout: qemu/qemu:docs/interop/qcow2.rst, digested in
 * shared/specs/qcow2.md. Everything on disk is big-endian.
 *
 *   qcow2.c           probe, open (header, extensions, validation), create,
 *                     info, flush, close, the driver table
 *   qcow2-cache.c     a small write-back cache of L2 tables / refcount blocks
 *   qcow2-cluster.c   L1/L2 mapping: block_status, pread (with decompression),
 *                     pwrite, zero writes, discard
 *   qcow2-refcount.c  refcounts, cluster allocation, deferred frees, check
 *   qcow2-snapshot.c  the snapshot table: parse, list, select
 */
#ifndef KEEL_QCOW2_H
#define KEEL_QCOW2_H

#include "format/format_int.h"
#include "format/luks.h"

#include <zlib.h>
#include <zstd.h>

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN 72
#define QCOW2_V3_HEADER_LEN 104 /* minimum for version 3 */
#define QCOW2_V3_HEADER_WRITE 112 /* what we (and qemu 7.2) write */

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21

/* incompatible_features */
#define QCOW2_INCOMPAT_DIRTY (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1fULL
/* compatible_features */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
/* autoclear_features */
#define QCOW2_AUTOCLEAR_BITMAPS (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ULL << 1)

/* Header field offsets (qcow2.rst "Header") */
#define QCOW2_HDR_BACKING_OFFSET 8
#define QCOW2_HDR_RT_OFFSET 48
#define QCOW2_HDR_INCOMPAT 72
#define QCOW2_HDR_AUTOCLEAR 88

/* Header extension types */
#define QCOW2_EXT_END 0
#define QCOW2_EXT_BACKING_FORMAT 0xE2792ACAu
#define QCOW2_EXT_FEATURE_TABLE 0x6803F857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537BE77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

/* L1/L2/refcount-table entries */
#define QCOW2_OFLAG_COPIED (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW2_OFLAG_ZERO 1ULL
#define QCOW2_OFFSET_MASK 0x00fffffffffffe00ULL /* bits 9-55 */
#define QCOW2_RT_OFFSET_MASK 0xfffffffffffffe00ULL
#define QCOW2_L2_BITMAP_ALL_ALLOC 0x00000000ffffffffULL
#define QCOW2_L2_BITMAP_ALL_ZERO 0xffffffff00000000ULL
#define QCOW2_SUBCLUSTERS 32

/* Compressed clusters are sized in 512-byte sectors */
#define QCOW2_CSECTOR 512

/* Limits qemu 7.2 enforces too (block/qcow2.h), so no header field makes us allocate more */
#define QCOW2_MAX_L1_BYTES (32u << 20)
#define QCOW2_MAX_RT_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_MAX_SNAPSHOT_TABLE (64u << 20)
#define QCOW2_MAX_BACKING_NAME 1023u
/* a LUKS header area: qemu's is 2 MiB (8 slots of 4000 stripes of 64 bytes) */
#define QCOW2_MAX_CRYPT_HDR (64u << 20)
#define QCOW2_MAX_HOST_OFFSET (1ULL << 56)

#define QCOW2_COMP_ZLIB 0
#define QCOW2_COMP_ZSTD 1
#define QCOW2_ZSTD_LEVEL 2 /* writing: see w_compress */
#define QCOW2_COMBINE_BYTES (1u << 20) /* compressed clusters gathered per write */
#define QCOW2_ZSTD_SMALL_CLUSTER (128u << 10)
#define QCOW2_ZSTD_SMALL_HASHLOG 12

/* ------------------------------------------------------------------ qcow2-cache.c */

struct qcow2_cache_entry {
	uint64_t off;	/* host offset of the table; valid only when buf is in use */
	uint8_t *buf;	/* one cluster, raw big-endian bytes */
	uint64_t lru;
	bool valid;
	bool dirty;
};

struct qcow2_cache {
	struct qcow2_cache_entry *e;
	size_t n;
	size_t last;		     /* most recent hit: sequential access hits it */
	uint64_t tick;
	uint32_t cluster_size;
	const char *what;	     /* "L2 table", "refcount block": for messages */
	struct qcow2_cache *depends; /* flushed (and synced) before we write a dirty entry */
};

int qcow2_cache_init(struct qcow2_cache *c, size_t n, uint32_t cluster_size, const char *what);
void qcow2_cache_release(struct qcow2_cache *c);
/*
 * The table at host offset off. With load, read it from the file (which
 * must hold it whole); without, return a zeroed buffer (a new table).
 * The pointer stays valid until the next qcow2_cache_get/flush on the
 * same cache.
 */
int qcow2_cache_get(struct blk_dev *d, struct qcow2_cache *c, uint64_t off, bool load,
		    struct qcow2_cache_entry **out);
static inline void qcow2_cache_dirty(struct qcow2_cache_entry *e)
{
	e->dirty = true;
}
/* Write every dirty entry; *wrote tells whether anything was written. */
int qcow2_cache_flush(struct blk_dev *d, struct qcow2_cache *c, bool *wrote);
/* Forget the table at off (its cluster was freed). */
void qcow2_cache_drop(struct qcow2_cache *c, uint64_t off);
bool qcow2_cache_has_dirty(const struct qcow2_cache *c);

/* ------------------------------------------------------------------ qcow2-snapshot.c */

struct qcow2_snap {
	uint64_t l1_offset;
	uint32_t l1_size;
	char *id;
	char *name;
	uint64_t date_ns;
	uint64_t vm_clock_ns;
	uint64_t vm_state_size;
	uint64_t vsize;		/* disk size when taken */
	uint64_t ent_off, ent_len; /* its entry's bytes in the table (padding included) */
};

/*
 * Parse the snapshot table named by the header (bounded, validated);
 * vsize is the active virtual size, used for snapshots that do not record theirs.
 */
int qcow2_snapshots_load(struct blk_dev *d, uint64_t vsize);
void qcow2_snapshots_free(struct blk_dev *d);
/* Index of the snapshot called name (matched by name first, then by id), or -ENOENT. */
int qcow2_snapshot_find(struct blk_dev *d, const char *name);
int qcow2_snapshot_list(struct blk_dev *d, struct blk_snapshot_info **out, size_t *n);
int qcow2_snapshot_create(struct blk_dev *d, const char *name);
int qcow2_snapshot_delete(struct blk_dev *d, const char *name);
int qcow2_snapshot_revert(struct blk_dev *d, const char *name);
int qcow2_snapshot_diff(struct blk_dev *d, const char *a, const char *b, blk_extent_cb cb,
			void *opaque);

/* ------------------------------------------------------------------ state */

/* Threads that compress or decompress runs of clusters, and the run length */
#define QCOW2_MAX_WORKERS 8
#define QCOW2_BATCH 32

struct qcow2_worker {
	z_stream inflate;
	bool inflate_ready;
	ZSTD_DCtx *zd;
	z_stream deflate;
	bool deflate_ready;
	ZSTD_CCtx *zc;
};

struct qcow2_free {
	uint64_t off;	/* host byte offset */
	uint64_t len;	/* bytes; every cluster the range touches loses one reference */
};

struct qcow2_state {
	/* header */
	uint32_t version;
	uint32_t cluster_bits;
	uint32_t cluster_size;
	uint32_t header_length;
	uint64_t incompat, compat, autoclear;
	uint32_t refcount_order;
	uint32_t refcount_bits;
	uint64_t refcount_max;
	uint32_t rb_entries;	 /* refcounts per refcount block */
	uint8_t compression_type;
	bool ext_l2;
	uint32_t l2_entry_size;	 /* 8, or 16 with extended L2 */
	uint32_t l2_bits;	 /* log2(entries per L2 table) */
	uint32_t l2_entries;
	uint32_t sc_size;	 /* subcluster size (== cluster size without extended L2) */
	uint32_t csize_shift;	 /* compressed descriptor: sector count starts here */
	uint64_t csize_mask;
	uint64_t coffset_mask;

	/* the L1 table in use (the active one, or the selected snapshot's) */
	uint64_t l1_offset;
	uint32_t l1_size;
	uint64_t *l1;		 /* host-endian copy */
	uint32_t l1_dirty_lo, l1_dirty_hi; /* entries to write at flush; lo > hi = none */
	uint64_t active_l1_offset; /* the header's, for overlap checks */
	uint32_t active_l1_size;

	/* refcount table */
	uint64_t rt_offset;
	uint32_t rt_clusters;
	uint64_t *rt;		 /* host-endian copy */
	uint64_t rt_entries;

	/* snapshots */
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t snapshots_size; /* bytes of the table */
	struct qcow2_snap *snaps;
	int cur_snap;		 /* selected snapshot, -1 for the active state */

	/* extensions */
	char *backing_file;
	char *backing_format;
	char *data_file;
	struct kl_file *dfile;	 /* the external data file, open (read-only) */
	uint32_t crypt_method;	 /* 0 none, 1 legacy AES, 2 LUKS */
	uint64_t crypt_off, crypt_len; /* the LUKS header area (extension 0x0537be77) */
	struct luks *luks;	 /* unlocked: data clusters are decrypted on read */
	uint8_t *feature_table;	 /* raw 48-byte entries */
	uint32_t feature_table_len;
	bool has_bitmaps;
	uint32_t nb_bitmaps;
	uint64_t bitmap_dir_offset, bitmap_dir_size;

	uint64_t file_size;	 /* current end of the file */

	struct qcow2_cache l2c;
	struct qcow2_cache rbc;

	/* compressed clusters (qcow2-compress.c): per-worker codecs, batch buffers */
	struct qcow2_worker wk[QCOW2_MAX_WORKERS];
	unsigned nworkers;
	uint8_t *zin;		 /* compressed bytes of a batch being read */
	uint8_t *zout;		 /* compressed output of a batch, one cluster per job */
	uint8_t *dbuf;		 /* the last cluster decompressed alone */
	uint64_t dbuf_desc;	 /* its L2 descriptor, 0 = none */
	size_t zlen[QCOW2_BATCH];
	int zrc[QCOW2_BATCH];
	size_t zsrc[QCOW2_BATCH];
	uint64_t zsrclen[QCOW2_BATCH];
	uint64_t zcoff[QCOW2_BATCH];

	/* writing */
	bool compress;		 /* compress=on: full-cluster writes compressed when it helps */
	bool encoder_active;	 /* the caller compresses (write_encoded): pwrite stores plain */
	uint8_t *wbuf;		 /* one cluster of scratch for COW */
	uint8_t *pbuf;		 /* compress=on: a cluster being filled by partial writes */
	uint64_t pend_ci;	 /* its guest cluster index */
	bool pend;		 /* pbuf holds data not yet stored */
	uint64_t free_byte_offset; /* where the next compressed cluster is packed, 0 = none */
	uint64_t sim_used;	 /* measure -c: bytes used in the open compressed cluster, 0 none */
	bool sim_contig;	 /* ...and it is the last cluster allocated (a spill may follow) */
	uint64_t free_hint;	 /* no free cluster below this index */
	uint64_t alloc_end;	 /* one past the highest cluster allocated by this handle */
	struct qcow2_free *frees; /* references dropped, applied after the L2 tables are durable */
	size_t nfrees, cap_frees;
	uint64_t *rb_offsets;	 /* sorted refcount block offsets, for overlap checks */
	size_t n_rb_offsets;
	bool unsynced;		 /* written since the last sync */
	bool wrote_header_bits;	 /* autoclear bits cleared before the first write */
	bool broken;		 /* corruption seen while writing: refuse further writes */
	uint32_t *check_refs;	 /* during check -r: computed references per cluster */
	uint64_t check_nclusters;
};

static inline struct qcow2_state *qcow2_s(struct blk_dev *d)
{
	return d->priv;
}

static inline uint64_t qcow2_l2_entry(const struct qcow2_state *s, const uint8_t *l2, uint32_t i)
{
	return get_be64(l2 + (size_t)i * s->l2_entry_size);
}

/*
 * A standard L2 entry has a host cluster when its offset is non-zero, or,
 * with an external data file, when the copied flag marks offset 0 as the
 * data file's first cluster (qcow2.rst, "Standard Cluster Descriptor").
 */
static inline bool qcow2_has_host(const struct qcow2_state *s, uint64_t ent)
{
	return (ent & QCOW2_OFFSET_MASK) || (s->dfile && (ent & QCOW2_OFLAG_COPIED));
}

static inline uint64_t qcow2_l2_bitmap(const struct qcow2_state *s, const uint8_t *l2, uint32_t i)
{
	return s->ext_l2 ? get_be64(l2 + (size_t)i * s->l2_entry_size + 8) : 0;
}

static inline void qcow2_set_l2(const struct qcow2_state *s, uint8_t *l2, uint32_t i, uint64_t entry,
				uint64_t bitmap)
{
	put_be64(l2 + (size_t)i * s->l2_entry_size, entry);
	if (s->ext_l2)
		put_be64(l2 + (size_t)i * s->l2_entry_size + 8, bitmap);
}

/* Byte range [*off, *off+*len) of the compressed data an L2 descriptor names. */
static inline void qcow2_compressed_range(const struct qcow2_state *s, uint64_t desc, uint64_t *off,
					  uint64_t *len)
{
	uint64_t o = desc & s->coffset_mask;
	uint64_t nsec = ((desc >> s->csize_shift) & s->csize_mask) + 1;

	*off = o;
	*len = nsec * QCOW2_CSECTOR - (o & (QCOW2_CSECTOR - 1));
}

/* ------------------------------------------------------------------ qcow2.c */

/* Refuse writing unless the image is in a writable state; clears autoclear bits once. */
int qcow2_prepare_write(struct blk_dev *d);
/* A write found corrupt metadata: stop writing, return -EUCLEAN with the message. */
int qcow2_corrupt(struct blk_dev *d, const char *fmt, ...) KL_PRINTF(2, 3);
/* Write bytes into the image file, tracking its size. */
int qcow2_file_write(struct blk_dev *d, uint64_t off, const void *buf, size_t len);
/* Write the in-memory L1 entries changed since the last flush. */
int qcow2_write_l1(struct blk_dev *d);
int qcow2_flush(struct blk_dev *d);
/* Open-time hand-off of compress=on from create to the first writable open. */
bool qcow2_take_compress_mark(struct kl_file *f);

/* ------------------------------------------------------------------ qcow2-cluster.c */

enum qcow2_piece_type {
	QCOW2_P_UNALLOC,
	QCOW2_P_ZERO,
	QCOW2_P_DATA,
	QCOW2_P_COMPRESSED,
};

struct qcow2_piece {
	enum qcow2_piece_type type;
	uint64_t len;	/* bytes from the asked offset */
	uint64_t host;	/* DATA: host offset of the asked offset; COMPRESSED: descriptor */
};

/*
 * Map guest offset off (inside the virtual size): the longest run of the
 * same kind (DATA only while host offsets are contiguous; COMPRESSED one
 * cluster at a time unless merge_compressed) up to about maxlen bytes.
 */
int qcow2_map(struct blk_dev *d, uint64_t off, uint64_t maxlen, bool merge_compressed,
	      struct qcow2_piece *p);
int qcow2_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e);
int qcow2_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len);
int qcow2_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len);
int qcow2_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags);
int qcow2_discard(struct blk_dev *d, uint64_t off, uint64_t len);
/* The driver's write_encoded: place what qcow2_encode_cluster made. */
uint64_t qcow2_encoded_footprint(struct blk_dev *d, size_t enc_len, size_t raw_len);
int qcow2_write_encoded(struct blk_dev *d, uint64_t off, const void *enc, size_t enc_len,
			const void *raw, size_t raw_len);
/* Store the cluster compress=on is still filling (every entry point calls this first). */
int qcow2_pend_flush(struct blk_dev *d);
/* Load an L2 table through the cache, checking its offset first. */
int qcow2_l2_load(struct blk_dev *d, uint64_t l2_off, struct qcow2_cache_entry **out);

/* ------------------------------------------------------------------ qcow2-compress.c */

/* Clusters per parallel batch (a few MiB in flight). */
unsigned qcow2_batch_clusters(const struct qcow2_state *s);
/*
 * Compress n whole clusters at in, in parallel: job j's output is at
 * s->zout + j * cluster_size, s->zlen[j] bytes, usable when
 * qcow2_compressed_ok(s, j) (it did not fit in cluster_size - 1 otherwise).
 */
int qcow2_compress_batch(struct blk_dev *d, const uint8_t *in, unsigned n);
bool qcow2_compressed_ok(const struct qcow2_state *s, unsigned j);
/* Decompress the cluster an L2 descriptor names into s->dbuf (cached). */
int qcow2_decompress(struct blk_dev *d, uint64_t desc);
/* Decompress n clusters (descriptors) into out, one after another, in parallel. */
int qcow2_decompress_batch(struct blk_dev *d, const uint64_t *descs, unsigned n, uint8_t *out);
void qcow2_workers_release(struct blk_dev *d);
/* The driver's encode_cluster: compress one cluster (pure, thread-safe). */
ssize_t qcow2_encode_cluster(const struct blk_dev *d, uint64_t off, const void *buf, size_t len,
			     void *out, size_t cap);

/* ------------------------------------------------------------------ qcow2-refcount.c */

int qcow2_get_refcount(struct blk_dev *d, uint64_t cluster, uint64_t *out);
/*
 * Allocate up to n contiguous clusters with refcount 1; *off is the host
 * byte offset of the first, *got how many (at least 1). With got NULL
 * exactly n are allocated. Creates refcount blocks and grows the table
 * as needed.
 */
int qcow2_alloc_clusters(struct blk_dev *d, uint64_t n, uint64_t *off, uint64_t *got);
/* Allocate size bytes (< one cluster) for a compressed cluster, packed after the last one. */
int qcow2_alloc_bytes(struct blk_dev *d, uint64_t size, uint64_t *off);
/* Add delta to the refcount of every cluster touched by [off, off+len). */
int qcow2_update_refcount(struct blk_dev *d, uint64_t off, uint64_t len, int64_t delta);
/* Drop one reference of every cluster touched by [off, off+len), after the next L2 flush. */
int qcow2_defer_free(struct blk_dev *d, uint64_t off, uint64_t len);
/* Drop the references an L2 entry held (normal, zero-allocated or compressed cluster). */
int qcow2_free_entry(struct blk_dev *d, uint64_t entry);
/* Apply the deferred frees (called by flush once the L2 tables are durable). */
int qcow2_apply_frees(struct blk_dev *d);
/* Build the sorted list of refcount block offsets (writable opens). */
int qcow2_index_refblocks(struct blk_dev *d);
/* True when [off, off+len) overlaps a metadata structure we know of. */
bool qcow2_overlaps_metadata(struct blk_dev *d, uint64_t off, uint64_t len);
int qcow2_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags);

#endif
