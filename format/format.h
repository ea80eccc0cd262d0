/*
 * format/format.h - the block-device layer: one API over every image format.
 *
 * An image is opened into a struct blk_dev; reads, writes and extent
 * queries use byte offsets and byte lengths (never sectors). A format
 * driver that has a parent (backing file, differencing parent) opens it
 * through this same layer, so any format can back any other.
 *
 * A blk_dev is not thread-safe: use one handle from one thread at a time.
 * Errors are negative errno codes with a message set (lib/kl.h).
 */
#ifndef KEEL_FORMAT_H
#define KEEL_FORMAT_H

#include "lib/kl.h"

struct blk_dev;
struct blk_driver;

/* ------------------------------------------------------------------ extents */
enum blk_status {
	BLK_DATA = 1,	 /* this layer holds data for the range */
	BLK_ZERO = 2,	 /* reads as zeros (and hides any parent data) */
	BLK_UNALLOC = 3, /* not in this layer: read from the parent, zeros without one */
};

#define BLK_EXT_COMPRESSED 0x1
#define BLK_EXT_ENCRYPTED 0x2
#define BLK_EXT_NOT_ALLOCATED 0x4 /* chain query: zero because no layer allocates it */
#define BLK_NO_HOST_OFFSET UINT64_MAX

struct blk_extent {
	uint64_t off;	   /* virtual offset, the one asked for */
	uint64_t len;	   /* > 0; may exceed what was asked, never past the virtual size */
	int type;	   /* enum blk_status */
	uint64_t host_off; /* offset of the data in the image file, or BLK_NO_HOST_OFFSET */
	const char *file;  /* the file host_off is in when not the image file (a qcow2
			    * external data file): the driver's, valid while it is open */
	unsigned flags;	   /* BLK_EXT_* */
	int depth;	   /* chain queries: 0 this image, 1 its parent, ... */
};

/* ------------------------------------------------------------------ open */
#define BLK_OPEN_RDWR 0x1
#define BLK_OPEN_NO_PARENT 0x2	     /* do not open the parent (info on a broken chain) */
#define BLK_OPEN_ALLOW_EXTERNAL 0x4  /* allow parents/extents outside the image's directory */
#define BLK_OPEN_PARENT_RDWR 0x8     /* open the immediate parent writable (commit) */
#define BLK_OPEN_ALLOW_PROBED_RAW_RW 0x10 /* internal: never set by probing */
#define BLK_OPEN_NO_CHECKSUM 0x20    /* skip per-cluster checksum verification (check -r) */
#define BLK_OPEN_BATCH 0x40	     /* no metadata commits until blk_flush (all-or-nothing jobs) */
#define BLK_OPEN_WAIT 0x100	     /* writable opens wait for another writer instead of failing */
#define BLK_OPEN_REPAIR 0x200	     /* check -r: open writable an image that needs repair (dirty) */
#define BLK_OPEN_DIRECT 0x400	     /* bulk data writes bypass the page cache (KL_O_DIRECT) */
#define BLK_OPEN_UNSAFE 0x800	     /* flushes never reach the disk (KL_O_NOSYNC): scratch outputs */
#define BLK_OPEN_NO_WRITER 0x1000    /* read-only: refuse a file another program is writing */

/*
 * Deepest parent chain we follow (loops are found by device and inode, so
 * this bounds open files and recursion, not loops). Nightly external
 * snapshots make chains of a few hundred; deeper is refused, naming it.
 */
#define BLK_MAX_CHAIN 512

struct blk_open_opts {
	const char *format;   /* driver name to force, NULL to probe by content */
	unsigned flags;	      /* BLK_OPEN_* */
	const char *snapshot; /* internal snapshot to read (read-only), NULL = current */
	struct kl_opts *opts; /* driver options, borrowed for the duration of the call */
	/* secret for encrypted images; borrowed, never stored by the caller's handle */
	const uint8_t *key;
	size_t key_len;
	/*
	 * Newline bytes that followed the key in its file and were cut off;
	 * they follow key_len bytes in the buffer. LUKS (qemu, cryptsetup)
	 * takes key files verbatim, so it tries the key with them too.
	 */
	size_t key_nl;
};

/*
 * Opens SPEC, which is a path or PATH@SNAPSHOT (the @ split is used only
 * when PATH@SNAPSHOT itself is not an existing file). The format is probed
 * from content unless o->format is set. A file probed as raw never opens
 * writable: pass format "raw" explicitly for that.
 */
int blk_open(const char *spec, const struct blk_open_opts *o, struct blk_dev **out);
/*
 * As blk_open, on a file that is already open (a kl_io_open_window view of
 * an image stored inside another file, a memfd, ...). f's name stands for
 * the path (messages, relative parent references); o->snapshot selects.
 * Ownership of f passes to the device, also when this fails.
 */
int blk_open_file(struct kl_file *f, const struct blk_open_opts *o, struct blk_dev **out);
/* Flushes (best effort) and closes, parents included. Accepts NULL. */
void blk_close(struct blk_dev *d);
/*
 * Closes without flushing: with BLK_OPEN_BATCH, what was not flushed is
 * dropped and the image stays at its last flushed state. Accepts NULL.
 */
void blk_close_discard(struct blk_dev *d);

/* ------------------------------------------------------------------ create */
struct blk_create_opts {
	uint64_t size;		   /* virtual size in bytes (0 with a parent: the parent's) */
	const char *parent;	   /* parent reference as it will be recorded, or NULL */
	const char *parent_format; /* parent's format name, NULL to probe read-only */
	struct kl_opts *opts;	   /* -o key=value options; drivers mark what they use */
	unsigned flags;		   /* BLK_OPEN_ALLOW_EXTERNAL, BLK_OPEN_UNSAFE */
	const uint8_t *key;	   /* secret for encrypted images */
	size_t key_len;
	size_t key_nl;		   /* as blk_open_opts.key_nl (LUKS keeps them) */
	/*
	 * Where the image will live once complete when the caller builds it
	 * under a temporary name (convert does), or NULL for path itself.
	 * Formats that record their own file name (VMDK extent lines) use it.
	 */
	const char *final_path;
};

/*
 * Creates a new image at path (which must not exist unless opts allow) with
 * driver `format`. Unknown -o keys are an error naming the key.
 */
int blk_create(const char *path, const char *format, const struct blk_create_opts *o);

/* ------------------------------------------------------------------ I/O */
/* Reads len bytes at off; the range must lie inside the virtual size. */
int blk_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len);
/* As blk_pread, but the part of the range past the virtual size reads as zeros. */
int blk_pread_padded(struct blk_dev *d, uint64_t off, void *buf, size_t len);
int blk_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len);
#define BLK_ZERO_MAY_UNMAP 0x1 /* the range may become unallocated (if no parent shows through) */
int blk_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags);
/* Drops data in the range; it then reads as zeros (never as stale parent data). */
int blk_discard(struct blk_dev *d, uint64_t off, uint64_t len);
int blk_flush(struct blk_dev *d);
/*
 * Hint for long writers (convert): start writing d's dirty data to the
 * device without waiting, so that the final blk_flush is short. No
 * durability promise; no effect on read-only handles.
 */
void blk_writeback(struct blk_dev *d);

/*
 * Encoded writes, for copy pipelines (convert): the CPU-heavy part of
 * writing a cluster (compression) is split from placing it, so that many
 * threads can encode while one writes. Usable when blk_can_encode(d).
 *
 * blk_encode_cluster: thread-safe and pure (no I/O, d unchanged), may run
 * on any thread concurrently with writes on d. off must be aligned to
 * blk_cluster_size(d) and len be the cluster size (or the rest of the
 * image for the last cluster); buf must not be all zeros; out must hold
 * BLK_ENCODE_BOUND(blk_cluster_size(d)) bytes. Returns the encoded length
 * (> 0), 0 when the cluster is to be stored as plain data, or -errno.
 *
 * blk_write_encoded: serial, like blk_pwrite: stores the cluster at off
 * from what blk_encode_cluster returned (enc_len 0: plain data, written
 * with blk_pwrite). raw/raw_len are the cluster's guest data. Formats that
 * only append (streamOptimized VMDK) need increasing offsets.
 */
#define BLK_ENCODE_BOUND(cs) ((size_t)(cs) + (size_t)(cs) / 16 + 4096)
#define BLK_ENCODE_MAX_CLUSTER (4u << 20)
bool blk_can_encode(const struct blk_dev *d);
/*
 * True when d or an image under it reads cheaply only front to back (a
 * gzip-compressed tar): such a chain must be read through one handle, in
 * increasing offset order.
 */
bool blk_sequential(const struct blk_dev *d);
/*
 * False when what was never written to d does not read as zeros (a LUKS
 * volume: the file's zeros decrypt to noise), so a copy into it must write
 * the source's zeros too.
 */
bool blk_zero_init(const struct blk_dev *d);
ssize_t blk_encode_cluster(const struct blk_dev *d, uint64_t off, const void *buf, size_t len,
			   void *out, size_t cap);
int blk_write_encoded(struct blk_dev *d, uint64_t off, const void *enc, size_t enc_len,
		      const void *raw, size_t raw_len);
/*
 * Counting instead of writing (keel measure -c): the file bytes the next
 * cluster would take, encoded (enc_len > 0) or plain (enc_len 0, raw_len
 * bytes); called in offset order, writes nothing.
 */
uint64_t blk_encoded_footprint(struct blk_dev *d, size_t enc_len, size_t raw_len);

/* Status of this layer alone at off: DATA, ZERO or UNALLOC, with its length. */
int blk_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e);
/*
 * Status seen by a guest: UNALLOC ranges are resolved through the parent
 * chain, so the result is DATA or ZERO; e->depth says which layer answered.
 */
int blk_block_status_chain(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e);

/* ------------------------------------------------------------------ properties */
uint64_t blk_size(const struct blk_dev *d);
const char *blk_format_name(const struct blk_dev *d);
const char *blk_filename(const struct blk_dev *d);
/* Borrowed; valid until d is closed. NULL when there is no (open) parent. */
struct blk_dev *blk_parent(const struct blk_dev *d);
/* Is the file dev:ino d's own or one of its parents'? (d may be NULL: no.) */
bool blk_chain_uses(const struct blk_dev *d, uint64_t dev, uint64_t ino);
bool blk_is_writable(const struct blk_dev *d);
/* Preferred I/O unit (the cluster or block size; 64 KiB when the format has none). */
uint32_t blk_cluster_size(const struct blk_dev *d);

struct blk_kv {
	char *key;
	char *val;
};

struct blk_snapshot_info {
	char *id;	     /* format's identifier ("3", "2026-11-21") */
	char *name;
	uint64_t vsize;
	uint64_t date_ns;    /* creation time, ns since the epoch, 0 if unknown */
	uint64_t generation; /* format-specific ordering, 0 if unknown */
	uint64_t stored;     /* bytes exclusively held, 0 if unknown */
	uint8_t guid[16];    /* identity kept by replication; zero if unknown */
};

struct blk_info {
	const char *format;	/* driver name (static) */
	char *subformat;	/* "monolithicSparse", "dynamic", "v3", or NULL */
	char *filename;
	uint64_t virtual_size;
	uint64_t file_size;	/* bytes of the image file(s) */
	uint64_t allocated;	/* bytes allocated on the host */
	uint32_t cluster_size;	/* 0 when the format has none */
	char *compression;	/* NULL when none */
	uint8_t uuid[16];
	bool has_uuid;
	char *parent;		/* reference as recorded, NULL if none */
	char *parent_format;
	bool dirty, corrupt;
	struct blk_snapshot_info *snaps;
	size_t nsnaps;
	char **features;
	size_t nfeatures;
	struct blk_kv *extra;	/* driver-specific facts, in order */
	size_t nextra;
};

int blk_info(struct blk_dev *d, struct blk_info *out);
/*
 * For an encrypted image opened without its key: what its format can show
 * from the header alone (keel info), unauthenticated. format NULL probes.
 * -ENOKEY when the format shows nothing without the key.
 */
int blk_info_nokey(const char *path, const char *format, struct blk_info *out);
void blk_info_release(struct blk_info *info);
int blk_info_add_feature(struct blk_info *info, const char *name);
int blk_info_add_kv(struct blk_info *info, const char *key, const char *fmt, ...) KL_PRINTF(3, 4);

/* ------------------------------------------------------------------ check */
#define BLK_CHECK_DATA 0x1	    /* read every cluster and verify its checksum */
#define BLK_CHECK_REPAIR_LEAKS 0x2
#define BLK_CHECK_REPAIR_ALL 0x6
#define BLK_CHECK_PROGRESS 0x8	    /* with DATA: a progress bar even off a terminal */

#define BLK_CHECK_MAX_MSGS 64

struct blk_check_report {
	uint64_t corruptions;	     /* metadata errors (including refcount too low) */
	uint64_t leaks;		     /* allocated but unreferenced units */
	uint64_t data_errors;	     /* clusters whose checksum failed */
	uint64_t repaired;	     /* problems fixed by -r */
	uint64_t checked;	     /* clusters or units examined */
	uint64_t allocated_clusters;
	uint64_t total_clusters;
	char *msgs[BLK_CHECK_MAX_MSGS]; /* first problems, human readable */
	size_t nmsgs;
	uint64_t dropped_msgs;
};
/* -ENOTSUP when the format has nothing to check. Fills r; returns 0 if it ran. */
int blk_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags);
void blk_check_report_release(struct blk_check_report *r);
void blk_check_msg(struct blk_check_report *r, const char *fmt, ...) KL_PRINTF(2, 3);

/* ------------------------------------------------------------------ snapshots */
typedef int (*blk_extent_cb)(void *opaque, const struct blk_extent *e);

int blk_snapshot_list(struct blk_dev *d, struct blk_snapshot_info **out, size_t *n);
void blk_snapshot_list_free(struct blk_snapshot_info *list, size_t n);
int blk_snapshot_create(struct blk_dev *d, const char *name);
int blk_snapshot_delete(struct blk_dev *d, const char *name);
int blk_snapshot_revert(struct blk_dev *d, const char *name);
/*
 * Calls cb for each extent (type DATA for changed data, ZERO for ranges that
 * became zero or unallocated) that differs between snapshots a and b; NULL
 * names the current state. Formats that cannot answer from metadata return
 * -ENOTSUP.
 */
int blk_snapshot_diff(struct blk_dev *d, const char *a, const char *b, blk_extent_cb cb,
		      void *opaque);

/*
 * As blk_snapshot_create, with the snapshot's identity given (replication
 * keeps the source's guid so a later incremental can name it).
 */
int blk_snapshot_create_guid(struct blk_dev *d, const char *name, const uint8_t guid[16]);

/* ------------------------------------------------------------------ receiving
 *
 * A staged receive (keel recv): writes go to a working state that readers
 * never see; the image shows its previous state until blk_recv_finish makes
 * the working state a snapshot and the current state in one commit. A
 * receive survives close and crash: blk_recv_checkpoint records an opaque
 * token (at most BLK_RECV_TOKEN_MAX bytes, replicate/ decides its meaning)
 * durably with everything written so far, and a later open resumes it. While
 * a receive is in progress the image opens writable only with
 * BLK_OPEN_RECV.
 */
#define BLK_RECV_TOKEN_MAX 2048
#define BLK_OPEN_RECV 0x80
/* Start: the working state begins as snapshot base (NULL: empty). */
int blk_recv_begin(struct blk_dev *d, const char *base);
/* In progress? *len = 0 when none; token copied when buf is large enough. */
int blk_recv_status(struct blk_dev *d, bool *active, void *token, size_t *len);
int blk_recv_checkpoint(struct blk_dev *d, const void *token, size_t len);
int blk_recv_finish(struct blk_dev *d, const char *name, const uint8_t guid[16]);
int blk_recv_abort(struct blk_dev *d);

/* ------------------------------------------------------------------ chains */
struct blk_identity {
	uint8_t uuid[16];   /* image identity (keel UUID, VHD unique id, VHDX DataWriteGuid) */
	uint64_t generation; /* keel generation, VMDK CID; 0 if none */
	unsigned valid;	    /* BLK_ID_UUID | BLK_ID_GENERATION */
};
#define BLK_ID_UUID 0x1
#define BLK_ID_GENERATION 0x2
int blk_identity(struct blk_dev *d, struct blk_identity *id);

/*
 * Points d at a new parent reference without copying data (rebase -u).
 * The new parent is opened and its identity recorded where the format can.
 */
int blk_set_parent(struct blk_dev *d, const char *ref, const char *fmt, unsigned flags);
/* 0 if d's format can change its parent reference, else -ENOTSUP (message set). */
int blk_can_set_parent(struct blk_dev *d);
/* Drops every cluster of d so it reads entirely from its parent (commit). */
int blk_make_empty(struct blk_dev *d);
/* Before writing d's data into its parent: tell d to accept the changed parent. */
int blk_parent_commit_begin(struct blk_dev *d);

/* ------------------------------------------------------------------ content hashing
 *
 * For deduplicating formats (.keel with dedup): blk_hash_cluster computes
 * the content hash the image's index uses (SHA-256, or HMAC-SHA-256 under
 * the image's key when encrypted). It is thread-safe and pure, so callers
 * hash in parallel; blk_write_hashed then stores one full, cluster-aligned
 * cluster with that hash: unchanged content costs nothing, known content a
 * reference. Formats without an index: -ENOTSUP / a plain write.
 */
int blk_hash_cluster(const struct blk_dev *d, const void *buf, size_t len, uint8_t out[32]);
int blk_write_hashed(struct blk_dev *d, uint64_t off, const void *buf, size_t len,
		     const uint8_t hash[32]);

/*
 * Stores one full, cluster-aligned cluster (buf, len) whose compressed form
 * the caller already has, e.g. from a replication stream: frame (flen
 * bytes, codec BLK_CODEC_*) must decode to exactly buf. A driver that stores
 * clusters with that codec may keep the frame as it is instead of
 * compressing again; otherwise, and for other formats, this is blk_pwrite.
 */
#define BLK_CODEC_ZSTD 1
int blk_write_compressed(struct blk_dev *d, uint64_t off, const void *buf, size_t len,
			 unsigned codec, const void *frame, size_t flen);

struct blk_stats {
	uint64_t clusters_written;   /* new blobs stored */
	uint64_t clusters_deduped;   /* writes that referenced an existing blob */
	uint64_t clusters_unchanged; /* writes of the content already there */
	uint64_t bytes_stored;	     /* bytes of new blobs */
};
/* Counters since open; zeros for formats that do not count. */
int blk_get_stats(struct blk_dev *d, struct blk_stats *st);
/*
 * Offline dedup: (re)builds the content index from every stored cluster and
 * points the current state's duplicate clusters at one copy. Turns dedup on
 * for the image. -ENOTSUP for formats without an index.
 */
int blk_dedup(struct blk_dev *d, bool progress, struct blk_stats *st);

/* ------------------------------------------------------------------ scrub */
struct blk_scrub_damage {
	const char *snapshot; /* NULL: the current state */
	uint64_t offset;      /* virtual offset of the damaged cluster */
	uint64_t length;
	uint64_t host_off;    /* where it is stored, or BLK_NO_HOST_OFFSET */
	const char *error;
};
typedef int (*blk_scrub_cb)(void *opaque, const struct blk_scrub_damage *dm);
struct blk_scrub_report {
	uint64_t blobs;	     /* stored units verified */
	uint64_t bytes;	     /* bytes read */
	uint64_t damaged;    /* stored units that failed */
	uint64_t damaged_refs; /* (snapshot, offset) pairs affected */
};
/*
 * Verifies every stored cluster of every snapshot and the current state
 * (checksum, and authentication tag when encrypted); cb sees each damaged
 * (snapshot, offset). Formats without checksums get every range read.
 */
int blk_scrub(struct blk_dev *d, blk_scrub_cb cb, void *opaque, bool progress,
	      struct blk_scrub_report *r);

/* ------------------------------------------------------------------ keys */
enum blk_key_op {
	BLK_KEY_ADD,	/* a new slot for key */
	BLK_KEY_REMOVE, /* the slot `slot`, or (slot < 0) the slot key opens */
	BLK_KEY_CHANGE, /* the slot the image was opened with now opens with key */
};
struct blk_key_slot {
	int slot;
	uint64_t kdf_n;
	uint32_t kdf_r, kdf_p;
	bool in_use; /* the slot this handle was opened with */
};
/* Key-slot management of encrypted images; data is not rewritten. */
int blk_key_op(struct blk_dev *d, enum blk_key_op op, const uint8_t *key, size_t klen, int slot,
	       int *out_slot);
int blk_key_list(struct blk_dev *d, struct blk_key_slot *out, size_t max, size_t *n);

/* ------------------------------------------------------------------ measure */
struct blk_measure {
	uint64_t required;	  /* bytes of the image file holding in's data */
	uint64_t fully_allocated; /* bytes with every cluster allocated */
	uint64_t data;		  /* the guest-data part of required */
};
/*
 * Predicts the size of an image of `format` created with o holding what a
 * guest sees in `in` (NULL: an empty image of o->size bytes), from
 * metadata only. -ENOTSUP when the driver cannot predict.
 */
int blk_measure(const char *format, const struct blk_create_opts *o, struct blk_dev *in,
		struct blk_measure *m);
/*
 * Bytes of in that hold data (DATA anywhere in its chain), counted in
 * whole units of gran (a power of two) that contain any; metadata only.
 */
int blk_measure_allocated(struct blk_dev *in, uint64_t gran, uint64_t *bytes);

/* ------------------------------------------------------------------ drivers */
const struct blk_driver *blk_driver_find(const char *name);
/* Iterate the registry: i = 0, 1, ... until NULL. */
const struct blk_driver *blk_driver_at(size_t i);
const char *blk_driver_name(const struct blk_driver *drv);
const char *blk_driver_desc(const struct blk_driver *drv);
bool blk_driver_can_create(const struct blk_driver *drv);
/* Creating one needs a passphrase (LUKS): "key" in keel help formats. */
bool blk_driver_create_needs_key(const struct blk_driver *drv);
/* The driver's -o keys for create, a line each; NULL when it cannot create. */
const char *blk_driver_create_help(const struct blk_driver *drv);
/* Probe a file read-only; returns the winning driver (raw when nothing bids). */
int blk_probe_file(const char *path, const struct blk_driver **out);

#endif
