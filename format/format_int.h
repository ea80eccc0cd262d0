/*
 * format/format_int.h - the contract between the block-device core and the
 * format drivers. Only format/ includes this (QEMU's block_int-common.h).
 *
 * The core is smart, drivers are dumb: blk_pread/blk_pwrite in core.c clamp
 * to the virtual size, reject overflow, split unaligned writes into
 * read-modify-write when the driver asks for alignment, resolve UNALLOC
 * ranges through the parent chain, and refuse writes on read-only handles.
 * A driver only maps its own clusters.
 */
#ifndef KEEL_FORMAT_INT_H
#define KEEL_FORMAT_INT_H

#include "format/format.h"

/* What probing sees: the head and the tail of the file (VHD keeps its footer last). */
#define BLK_PROBE_HEAD 65536
#define BLK_PROBE_TAIL 4096

struct blk_probe_buf {
	const uint8_t *head; /* first min(size, BLK_PROBE_HEAD) bytes */
	size_t head_len;
	const uint8_t *tail; /* last min(size, BLK_PROBE_TAIL) bytes */
	size_t tail_len;
	uint64_t file_size;
	const char *filename; /* for messages only: probing never uses the name */
};

/* Driver flags */
#define BLK_DRV_CAN_CREATE 0x1
#define BLK_DRV_FLAT 0x2	 /* pread works on any range: no block_status per read */
#define BLK_DRV_SNAPSHOTS 0x4	 /* internal snapshots */
#define BLK_DRV_APPEND_ONLY 0x8	 /* writes must come in increasing offset order (streamOptimized) */
#define BLK_DRV_NO_PROBE 0x10	 /* never chosen by probing */
#define BLK_DRV_HAS_PARENT 0x20	 /* can record a parent */
#define BLK_DRV_SELECT 0x40	 /* "FILE@NAME" selects a member (a disk of a package), not a snapshot */
#define BLK_DRV_SEQUENTIAL 0x80 /* reads are cheap only in increasing order (a compressed stream) */
#define BLK_DRV_NO_ZERO_INIT 0x100 /* unwritten ranges of a new image do not read as zeros */
#define BLK_DRV_CREATE_KEY 0x200 /* create needs a passphrase (o->key) */

struct blk_chain; /* loop detection during open, private to core.c */

struct blk_dev {
	const struct blk_driver *drv;
	void *priv;		 /* instance_size bytes, zeroed, owned by the core */
	struct kl_file *file;	 /* the image file, opened by the core */
	char *filename;		 /* path as opened (without @snapshot) */
	char *snapshot;		 /* selected internal snapshot, or NULL */
	uint64_t size;		 /* virtual size: the driver's open must set it */
	unsigned flags;		 /* BLK_OPEN_* as opened */
	bool read_only;
	bool probed;		 /* format came from probing */
	uint32_t write_align;	 /* driver's write unit; the core read-modify-writes around it */
	uint32_t cluster_size;	 /* preferred I/O unit, set by the driver (0: 64 KiB) */
	struct blk_dev *parent;	 /* owned: closed with this device */
	struct blk_chain *chain; /* valid during open only */
	int depth;		 /* 0 for the top image */
	const uint8_t *key;	 /* borrowed secret, valid during open only */
	size_t key_len;
	size_t key_nl;		 /* blk_open_opts.key_nl */
	bool encoded_writes;	 /* set by open: encode_cluster/write_encoded apply (see below) */
};

/*
 * The driver table. Every member documents what the core guarantees and
 * what it expects back. Optional members may be NULL.
 */
struct blk_driver {
	const char *name; /* "qcow2": the -f/-O name */
	const char *ext;  /* default file extension, without dot */
	const char *desc; /* one line for `keel help formats` */
	/*
	 * What `keel create -f NAME -o help` prints: the -o keys create
	 * understands, a line each ("  key=VALUES  what it does (default)").
	 * NULL for drivers that cannot create.
	 */
	const char *create_help;
	size_t instance_size;
	unsigned flags; /* BLK_DRV_* */

	/*
	 * Score 0..100 for the bytes in pb: 100 = magic and structure match,
	 * 1 = "could be anything" (raw only). Never allocates, never does I/O.
	 */
	int (*probe)(const struct blk_probe_buf *pb);

	/*
	 * d->file is open (writable iff !d->read_only), d->filename set, priv
	 * zeroed. Parse and validate all metadata; set d->size, and
	 * d->cluster_size/write_align where they apply. Open the parent with
	 * blk_open_parent() unless d->flags has BLK_OPEN_NO_PARENT. When
	 * d->snapshot is set, present that snapshot (read-only) or fail with
	 * -ENOENT naming it. On failure free what was allocated and set a
	 * message naming the file, the offset and what is wrong. A read-only
	 * open never writes a byte.
	 */
	int (*open)(struct blk_dev *d, const struct blk_open_opts *o);

	/*
	 * Create a new image at path. o->size is the virtual size (the core
	 * fills it from the parent when 0 and a parent is given). Consume the
	 * -o keys you understand with kl_opts_get*; the core rejects the rest.
	 */
	int (*create)(const char *path, const struct blk_create_opts *o);

	/*
	 * Read [off, off+len), which the core guarantees lies inside d->size
	 * and, unless BLK_DRV_FLAT, inside one range this driver's
	 * block_status reported as DATA. Return 0 or -errno.
	 */
	int (*pread)(struct blk_dev *d, uint64_t off, void *buf, size_t len);

	/*
	 * Write [off, off+len) inside d->size, aligned to d->write_align.
	 * For partially written clusters the driver fills the rest from its
	 * own data or, when unallocated, with blk_read_below() (parent or zeros).
	 */
	int (*pwrite)(struct blk_dev *d, uint64_t off, const void *buf, size_t len);

	/* Optional; aligned like pwrite. Without it the core writes zero buffers. */
	int (*pwrite_zeroes)(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags);

	/* Optional: drop the range; it must then read as zeros. */
	int (*discard)(struct blk_dev *d, uint64_t off, uint64_t len);

	/*
	 * Status of this layer at off (inside d->size, len > 0). Fill e->type,
	 * e->len (> 0; may be more or less than len but must not pass d->size),
	 * e->host_off and e->flags. The core sets e->off and e->depth.
	 */
	int (*block_status)(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e);

	/* Make everything written so far durable. Optional for read-only drivers. */
	int (*flush)(struct blk_dev *d);

	/* Free what open allocated inside priv. The core closes the file and parent. */
	void (*close)(struct blk_dev *d);

	/* Fill the format-specific parts; the core fills format, sizes, parent. */
	int (*info)(struct blk_dev *d, struct blk_info *out);
	/*
	 * What an encrypted image shows without its key (keel info): d is bare
	 * (file open read-only, priv zeroed, open() never called); close() is
	 * called after it, whatever it returns.
	 */
	int (*info_nokey)(struct blk_dev *d, struct blk_info *out);

	int (*check)(struct blk_dev *d, struct blk_check_report *r, unsigned flags);
	int (*identity)(struct blk_dev *d, struct blk_identity *id);

	int (*snapshot_list)(struct blk_dev *d, struct blk_snapshot_info **out, size_t *n);
	int (*snapshot_create)(struct blk_dev *d, const char *name);
	int (*snapshot_delete)(struct blk_dev *d, const char *name);
	int (*snapshot_revert)(struct blk_dev *d, const char *name);
	int (*snapshot_diff)(struct blk_dev *d, const char *a, const char *b, blk_extent_cb cb,
			     void *opaque);

	/* Record a new parent reference (already opened as d->parent by the core). */
	int (*set_parent)(struct blk_dev *d, const char *ref, const char *fmt);
	int (*make_empty)(struct blk_dev *d);
	/*
	 * Optional: the parent is about to receive this image's data (commit);
	 * until the next set_parent, accept the parent in its old or new state.
	 */
	int (*parent_commit_begin)(struct blk_dev *d);

	int (*key_op)(struct blk_dev *d, enum blk_key_op op, const uint8_t *key, size_t klen,
		      int slot, int *out_slot);
	int (*key_list)(struct blk_dev *d, struct blk_key_slot *out, size_t max, size_t *n);

	/* Content hashing (optional): hash_cluster must be thread-safe. */
	int (*hash_cluster)(const struct blk_dev *d, const void *buf, size_t len, uint8_t out[32]);
	int (*write_hashed)(struct blk_dev *d, uint64_t off, const void *buf, size_t len,
			    const uint8_t hash[32]);
	/*
	 * Optional: one full aligned cluster with its compressed form (the core
	 * checks alignment and length); the driver may store frame instead of
	 * compressing buf, and must fall back to a normal write when it cannot.
	 */
	int (*write_compressed)(struct blk_dev *d, uint64_t off, const void *buf, size_t len,
				unsigned codec, const void *frame, size_t flen);
	int (*stats)(struct blk_dev *d, struct blk_stats *st);
	int (*dedup)(struct blk_dev *d, bool progress, struct blk_stats *st);

	int (*snapshot_create_guid)(struct blk_dev *d, const char *name, const uint8_t guid[16]);
	int (*recv_begin)(struct blk_dev *d, const char *base);
	int (*recv_status)(struct blk_dev *d, bool *active, void *token, size_t *len);
	int (*recv_checkpoint)(struct blk_dev *d, const void *token, size_t len);
	int (*recv_finish)(struct blk_dev *d, const char *name, const uint8_t guid[16]);
	int (*recv_abort)(struct blk_dev *d);
	int (*scrub)(struct blk_dev *d, blk_scrub_cb cb, void *opaque, bool progress,
		     struct blk_scrub_report *r);

	/*
	 * Encoded writes (optional, both or neither; used by convert so that
	 * compression runs on many threads while the file is written by one).
	 * They apply to a handle only when its open set d->encoded_writes
	 * (e.g. because compression was asked for); the core never calls them
	 * otherwise.
	 *
	 * encode_cluster: turn the guest data of one whole cluster into the
	 * bytes this format will store for it (compressed, with any per-cluster
	 * framing). The core guarantees off is aligned to d->cluster_size and
	 * len == d->cluster_size, or len is the shorter rest of the image for
	 * its last cluster; buf is never all zeros (zero clusters are not
	 * encoded); out has cap >= BLK_ENCODE_BOUND(d->cluster_size) bytes.
	 * MUST be pure and thread-safe: it may be called from several threads
	 * at once, concurrently with write_encoded on the same handle, so it
	 * reads only state that open fixed, never does I/O, never changes d.
	 * Returns the number of bytes written to out (> 0), 0 for "store this
	 * cluster as plain data" (e.g. it did not shrink; the core then uses
	 * pwrite), or -errno.
	 *
	 * write_encoded: place enc (enc_len > 0, exactly what encode_cluster
	 * returned for this off and data) as the cluster at off. Serial: called
	 * from one thread, like pwrite, and in increasing offset order when the
	 * driver has BLK_DRV_APPEND_ONLY. The cluster's guest data is passed
	 * too (raw, raw_len) for drivers that need it (e.g. a checksum of the
	 * plain data). The cluster must then read back as raw.
	 */
	ssize_t (*encode_cluster)(const struct blk_dev *d, uint64_t off, const void *buf, size_t len,
				  void *out, size_t cap);
	int (*write_encoded)(struct blk_dev *d, uint64_t off, const void *enc, size_t enc_len,
			     const void *raw, size_t raw_len);
	/*
	 * Optional, for keel measure -c (a copy that counts instead of
	 * writing): the file bytes that storing the next cluster would add,
	 * in offset order, with nothing written: an encoded one (enc_len > 0)
	 * or raw_len plain bytes (enc_len 0). Drivers whose allocation is not
	 * just the sum of lengths (blocks a blob is rounded up to, compressed
	 * clusters packed into host clusters) keep what they need to simulate
	 * it in their state. Without it, the bytes themselves are counted.
	 */
	uint64_t (*encoded_footprint)(struct blk_dev *d, size_t enc_len, size_t raw_len);

	/*
	 * Optional: predict the size of the file create(o) would make once it
	 * holds the guest data of in (qemu's bdrv_measure). o->size is the
	 * virtual size; in is NULL for an empty image, else an open image to
	 * walk (blk_measure_allocated counts its data at a granularity). Fill
	 * m->required (data + metadata), m->fully_allocated (every cluster
	 * allocated) and m->data (the guest-data part of required, so a caller
	 * can put compressed sizes in its place). Reads only metadata of in.
	 */
	int (*measure)(const struct blk_create_opts *o, struct blk_dev *in, struct blk_measure *m);
};

/* ------------------------------------------------------------------ for drivers */

/*
 * Open the parent named by ref (as recorded in d), read-only unless
 * BLK_OPEN_PARENT_RDWR was asked of d. ref is resolved against the
 * directory of d; references leaving that directory are refused unless
 * BLK_OPEN_ALLOW_EXTERNAL. Loops and chains deeper than BLK_MAX_CHAIN are
 * refused. fmt may be NULL to probe (a probed parent is always read-only).
 * On success d->parent is set. Errors name d, ref and the resolved path.
 */
int blk_open_parent(struct blk_dev *d, const char *ref, const char *fmt);

/*
 * Resolve name (an extent file, a parent) against d's directory under the
 * same escape rules; returns a newly allocated path in *out.
 */
int blk_resolve_path(struct blk_dev *d, const char *name, char **out);

/* Open an auxiliary file (VMDK extent) next to d, under the same rules. */
int blk_open_aux(struct blk_dev *d, const char *name, unsigned kl_flags, struct kl_file **out);

/* Read what lies beneath d at [off, off+len): the parent's data, or zeros. */
int blk_read_below(struct blk_dev *d, uint64_t off, void *buf, size_t len);

/* kl_io_open flags for a file of an image opened with BLK_OPEN_* flags. */
static inline unsigned blk_file_kl_flags(bool rw, unsigned blk_flags)
{
	if (!rw)
		return KL_O_RDONLY;
	return KL_O_RDWR | ((blk_flags & BLK_OPEN_DIRECT) ? KL_O_DIRECT : 0) |
	       ((blk_flags & BLK_OPEN_UNSAFE) ? KL_O_NOSYNC : 0);
}

/*
 * kl_io_open flags for the file a driver's create writes. BLK_OPEN_UNSAFE in
 * the create options (convert -t unsafe) reaches the new file too: the empty
 * image's header is as disposable as the data written after it, and one
 * fdatasync there waits behind whatever the disk is still busy with.
 */
static inline unsigned blk_create_kl_flags(const struct blk_create_opts *o)
{
	return KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC | ((o->flags & BLK_OPEN_UNSAFE) ? KL_O_NOSYNC : 0);
}

/*
 * Snapshot diffs: extents handed over one cluster at a time, merged into
 * runs of one type before they reach the caller's callback (format/core.c).
 */
struct blk_extent_merge {
	blk_extent_cb cb;
	void *opaque;
	struct blk_extent run;
	bool have;
};
int blk_merge_add(struct blk_extent_merge *m, uint64_t off, uint64_t len, int type);
int blk_merge_flush(struct blk_extent_merge *m);

/* The registry (format/registry.c), NULL-terminated, in probing order. */
extern const struct blk_driver *const blk_drivers[];

/*
 * The driver whose probe bids highest on pb (ties: registry order), with
 * its bid in *score; NULL (and 0) when none bids. Raw bids 1 on anything.
 */
const struct blk_driver *blk_probe_best(const struct blk_probe_buf *pb, int *score);

/* A tar member's name without its leading "./" (OVA and GCE packages). */
static inline const char *blk_tar_member_name(const char *name)
{
	while (name[0] == '.' && name[1] == '/')
		name += 2;
	return name;
}

#endif
