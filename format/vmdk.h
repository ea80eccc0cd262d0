/*
 * format/vmdk.h - private header of the VMDK driver (format/vmdk*.c).
 *
 * A VMDK disk is a text descriptor plus one or more extents (VMware
 * "Virtual Disk Format 1.1/5.0"; digest in shared/specs/vmdk.md):
 *   vmdk.c         driver table: probing, open of both shapes, extent
 *                  dispatch for read/write/status, info, identity, check,
 *                  create options
 *   vmdk-desc.c    the text descriptor: parser, builder, CID rewrite
 *   vmdk-sparse.c  hosted sparse extents ("KDMV"): header, grain directory
 *                  and tables, grain reads (plain and compressed), allocating
 *                  writes, the monolithicSparse layout
 *   vmdk-stream.c  streamOptimized output: compressed grains, markers, GT/GD,
 *                  footer and end-of-stream marker, appended in offset order
 *
 * Every offset and size in sparse headers, grain directories and grain
 * tables is in 512-byte sectors; everything in these structs is bytes unless
 * the name says sectors.
 */
#ifndef KEEL_FORMAT_VMDK_H
#define KEEL_FORMAT_VMDK_H

#include "format/format_int.h"

#define VMDK_SECTOR 512u
#define VMDK_GD_AT_END UINT64_MAX
#define VMDK_STREAM_COMBINE (1u << 20) /* stream writer: bytes gathered per write */

/* sparse header flags */
#define VMDK_FLAG_NL_CHECK 0x1
#define VMDK_FLAG_RGD 0x2
#define VMDK_FLAG_ZERO_GRAIN 0x4
#define VMDK_FLAG_COMPRESSED 0x10000
#define VMDK_FLAG_MARKERS 0x20000

#define VMDK_COMPRESS_NONE 0
#define VMDK_COMPRESS_DEFLATE 1

/* stream marker types (metadata markers; a grain marker has size > 0) */
#define VMDK_MARKER_EOS 0
#define VMDK_MARKER_GT 1
#define VMDK_MARKER_GD 2
#define VMDK_MARKER_FOOTER 3

/* grain table entry 1 means "reads as zeros" when VMDK_FLAG_ZERO_GRAIN is set */
#define VMDK_GTE_ZERO 1u

/*
 * Limits on what files may claim, so a hostile header never makes us
 * allocate or loop without bound. Real images use 64 KiB grains and 512
 * entries per table; VMware caps disks at 62 TiB.
 */
#define VMDK_MAX_DESC (1u << 20)	    /* descriptor text, bytes */
#define VMDK_MAX_LINE 8192		    /* one descriptor line */
#define VMDK_MAX_EXTENTS 4096
#define VMDK_MAX_GRAIN_SECTORS 4096u	    /* 2 MiB grains */
#define VMDK_MAX_GTES 4096u		    /* entries per grain table */
#define VMDK_MAX_SIZE (1ULL << 48)	    /* 256 TiB virtual */
#define VMDK_MAX_EXTENT_SECTORS (1ULL << 32) /* u32 sector pointers */
#define VMDK_GT_CACHE 16		    /* grain tables kept in memory per extent */

/* ------------------------------------------------------------------ vmdk-desc.c */

enum vmdk_access {
	VMDK_ACC_RW,
	VMDK_ACC_RDONLY,
	VMDK_ACC_NOACCESS,
};

enum vmdk_ext_type {
	VMDK_EXT_FLAT,
	VMDK_EXT_SPARSE,
	VMDK_EXT_ZERO,
	VMDK_EXT_VMFS,
	VMDK_EXT_VMFSSPARSE,
	VMDK_EXT_VMFSRDM,
	VMDK_EXT_VMFSRAW,
	VMDK_EXT_SESPARSE,
};

struct vmdk_desc_extent {
	enum vmdk_access access;
	uint64_t sectors;
	enum vmdk_ext_type type;
	char *file;	 /* NULL for ZERO extents */
	uint64_t offset; /* start sector inside the file (FLAT, VMFS) */
	unsigned line;	 /* 1-based line number, for messages */
};

struct vmdk_desc {
	unsigned version; /* descriptor "version=", 0 when absent */
	bool has_cid, has_parent_cid;
	uint32_t cid, parent_cid;
	char *create_type;  /* NULL when absent */
	char *parent_hint;  /* parentFileNameHint, NULL when absent */
	struct blk_kv *kv;  /* every key = value in file order, quotes stripped */
	size_t nkv;
	struct vmdk_desc_extent *ext;
	size_t next;
};

#define VMDK_CID_NONE 0xffffffffu

/*
 * Parses descriptor text (len bytes; parsing stops at the first NUL, as
 * qemu and VMware pad the area with zeros). Accepts LF and CRLF, comments,
 * quoted and unquoted values and unknown keys. who names the file in
 * messages. Returns 0, -EUCLEAN (malformed; the message names the line) or
 * -ENOTSUP (a version this parser does not know). On failure out is empty.
 * Having no extent line is not an error here: callers decide.
 */
int vmdk_desc_parse(const char *text, size_t len, const char *who, struct vmdk_desc *out);
void vmdk_desc_release(struct vmdk_desc *d);
/* Value of key (case-sensitive), or NULL; borrowed from d. */
const char *vmdk_desc_get(const struct vmdk_desc *d, const char *key);
const char *vmdk_ext_type_name(enum vmdk_ext_type t);
const char *vmdk_access_name(enum vmdk_access a);

struct vmdk_desc_params {
	uint32_t cid, parent_cid;
	const char *create_type;
	const char *parent_hint; /* NULL: none */
	const char *extent_file;
	uint64_t sectors;
	const char *adapter_type;
	const char *hw_version;
	const char *tools_version;
};
/* A new descriptor for a single-extent SPARSE disk; kl_free the result. */
char *vmdk_desc_build(const struct vmdk_desc_params *p);
/*
 * Replaces the value of the "CID=" line of *text (NUL-terminated) with cid.
 * Returns 0 and may reallocate *text; -ENOENT when there is no CID line.
 */
int vmdk_desc_set_cid(char **text, uint32_t cid);
/* A random content id that is not VMDK_CID_NONE. */
uint32_t vmdk_new_cid(void);

/* ------------------------------------------------------------------ vmdk-sparse.c */

/* Decoded hosted sparse extent header (sector 0, or the stream footer). */
struct vmdk_hdr {
	uint32_t version;
	uint32_t flags;
	uint64_t capacity;	/* sectors */
	uint64_t grain;		/* sectors */
	uint64_t desc_off;	/* sectors */
	uint64_t desc_size;	/* sectors */
	uint32_t gtes;		/* entries per grain table */
	uint64_t rgd_off;	/* sectors */
	uint64_t gd_off;	/* sectors, or VMDK_GD_AT_END */
	uint64_t overhead;	/* sectors */
	uint8_t unclean;
	uint16_t compress;
};

struct vmdk_gt_slot {
	uint32_t gdi;	/* which grain directory entry this table belongs to */
	bool valid;
	uint64_t used;	/* LRU tick */
	uint32_t *ent;	/* gtes entries, host order */
	bool dirty;	/* entries [dlo, dhi) changed in memory, not yet on disk */
	uint32_t dlo, dhi;
};

struct vmdk_streamw; /* vmdk-stream.c */

struct vmdk_sparse {
	struct vmdk_hdr h;
	uint8_t raw[VMDK_SECTOR]; /* the header sector as read or written */
	uint32_t grain_bytes;
	unsigned grain_shift;	  /* log2(grain_bytes) */
	uint32_t ngd;		  /* grain directory entries */
	uint32_t *gd;		  /* primary directory, host order */
	uint32_t *rgd;		  /* redundant directory when written too, else NULL */
	uint64_t gt_bytes;	  /* one grain table on disk, whole sectors */
	bool compressed, markers, zero_grain;
	bool cowd;		  /* a vmfsSparse (COWD) extent: read only */
	struct vmdk_gt_slot cache[VMDK_GT_CACHE];
	uint64_t tick;
	uint64_t next_sector;	  /* allocation point for writes */
	bool data_unsynced;	  /* grain data written since the last sync */
	/* compressed reads */
	uint8_t *cbuf;		  /* compressed bytes of one grain */
	size_t cbuf_cap;
	uint8_t *gbuf;		  /* one inflated grain (+1 byte to catch overruns) */
	uint64_t gbuf_grain;	  /* grain index held in gbuf, UINT64_MAX = none */
	struct vmdk_streamw *w;	  /* set while a stream is being appended to */
};

struct vmdk_extent {
	enum vmdk_ext_type type; /* FLAT (also VMFS), SPARSE or ZERO */
	enum vmdk_access access;
	struct kl_file *file;	 /* NULL for ZERO */
	bool own_file;		 /* false when file is d->file */
	char *name;		 /* for messages: the path as opened */
	uint64_t start;		 /* first virtual byte */
	uint64_t len;		 /* bytes */
	uint64_t flat_off;	 /* FLAT: byte offset of the extent in its file */
	uint64_t file_size;	 /* tracked across our own writes */
	struct vmdk_sparse *sp;	 /* SPARSE */
	struct vmdk_sesparse *se; /* SESPARSE (vmdk-sesparse.c) */
};

/*
 * Reads and validates the sparse header of x->file (x->name, x->file_size
 * set), following the stream footer when the header says GD_AT_END, and
 * loads the grain directory. Sets x->sp. rw asks for a writable extent
 * (refused for version 3 plain sparse and for non-empty streams).
 */
int vmdk_sparse_open(struct vmdk_extent *x, bool rw);
void vmdk_sparse_close(struct vmdk_extent *x);
/* Decode and validate a 512-byte header; what names it in messages. */
int vmdk_hdr_decode(const uint8_t *p, const char *name, const char *what, uint64_t file_size,
		    struct vmdk_hdr *h);
void vmdk_hdr_encode(const struct vmdk_hdr *h, uint8_t *p);

/* Grain table entry of grain g (0 when the table is not allocated). */
int vmdk_sparse_gte(struct vmdk_extent *x, uint64_t g, uint32_t *gte);

/*
 * Status of [rel, rel+len) inside extent x (rel relative to the extent).
 * Fills e->type/len/host_off/flags; e->len covers at least one byte.
 * host_off is in x->file (the caller names the file when it is not d's).
 */
int vmdk_sparse_status(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, uint64_t len,
		       struct blk_extent *e);
/* Read [rel, rel+len) of extent x; unallocated parts come from below d. */
int vmdk_sparse_read(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, uint8_t *buf,
		     size_t len);
/* Write [rel, rel+len); allocates grains (and tables) as needed. */
int vmdk_sparse_write(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, const uint8_t *buf,
		      size_t len);
/*
 * Write back changed grain table entries. Table entries reach the disk only
 * after the grain data they name was synced (here or on cache eviction), so
 * after a crash every entry points at old or new data, never at garbage.
 */
int vmdk_sparse_flush(struct vmdk_extent *x);
/* Make [rel, rel+len) read as zeros; has_parent: unallocated would show a parent. */
int vmdk_sparse_zero(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, uint64_t len,
		     bool has_parent, unsigned flags);
/* Consistency walk for `keel check`. */
int vmdk_sparse_check(struct vmdk_extent *x, struct blk_check_report *r, unsigned flags);

/*
 * seSparse extents (ESXi on VMFS 6), read only: open validates both headers
 * and loads the grain directory (x->file, x->file_size, x->name set); the
 * capacity is in sectors. Status and reads as for sparse extents.
 */
int vmdk_sesparse_open(struct vmdk_extent *x);
void vmdk_sesparse_close(struct vmdk_extent *x);
uint64_t vmdk_sesparse_capacity(const struct vmdk_extent *x);
int vmdk_sesparse_status(struct vmdk_extent *x, uint64_t rel, uint64_t len,
			 struct blk_extent *e);
int vmdk_sesparse_read(struct blk_dev *d, struct vmdk_extent *x, uint64_t rel, uint8_t *buf,
		       size_t len);
int vmdk_sesparse_check(struct vmdk_extent *x, struct blk_check_report *r);

struct vmdk_layout {
	uint64_t capacity;   /* sectors */
	uint64_t grain;	     /* sectors */
	uint32_t gtes;
	bool zero_grain;     /* version 2 with zeroed-grain entries */
	bool stream;	     /* streamOptimized: version 3, compressed, markers */
	const char *desc;    /* embedded descriptor text */
	uint64_t desc_sectors;
};
/* Write a new, empty hosted sparse file (monolithicSparse or stream) into f. */
int vmdk_sparse_create(struct kl_file *f, const char *name, const struct vmdk_layout *l);

/* ------------------------------------------------------------------ vmdk-stream.c */

/*
 * Start appending to x, an empty stream extent (vmdk_sparse_open checked
 * that): grains must then arrive in increasing order. level is the zlib
 * level (-1 = default).
 */
int vmdk_stream_begin(struct vmdk_extent *x, int level);
/* Buffer/emit [rel, rel+len) of the extent; earlier grains are refused. */
int vmdk_stream_write(struct vmdk_extent *x, uint64_t rel, const uint8_t *buf, size_t len);
/*
 * Encoded writes (convert): vmdk_stream_encode returns the bytes the
 * stream would append for the grain at rel (marker, zlib data, padding),
 * pure and thread-safe; vmdk_stream_put appends them in order.
 */
ssize_t vmdk_stream_encode(const struct vmdk_extent *x, uint64_t rel, const void *buf, size_t len,
			   void *out, size_t cap);
int vmdk_stream_put(struct vmdk_extent *x, uint64_t rel, const uint8_t *enc, size_t len,
		    const uint8_t *raw, size_t raw_len);
/* Zeros need no data in a stream; only the ordering rule is enforced. */
int vmdk_stream_zero(struct vmdk_extent *x, uint64_t rel, uint64_t len);
/*
 * Emit the pending grain and write the grain table in progress, the grain
 * directory, the footer and the end-of-stream marker, then sync: the file
 * is a complete stream afterwards. Later writes continue after the last
 * grain (the trailer is rewritten by the next flush).
 */
int vmdk_stream_flush(struct vmdk_extent *x);
void vmdk_stream_end(struct vmdk_extent *x);

/*
 * Write the stream trailer at byte pos of f: GD marker + grain directory
 * (ngd entries), footer marker + footer (h with the real GD offset), and
 * the end-of-stream marker. *end is the byte after it.
 */
int vmdk_stream_write_trailer(struct kl_file *f, uint64_t pos, const struct vmdk_hdr *h,
			      const uint32_t *gd, uint32_t ngd, uint64_t *end);
/* Read a grain marker header (and check it) at byte off of x. */
int vmdk_marker_read(struct vmdk_extent *x, uint64_t off, uint64_t *lba, uint32_t *size,
		     uint32_t *type);

#endif
