/*
 * convert/convert.h - copying images between formats, comparing them, and
 * predicting output sizes.
 */
#ifndef KEEL_CONVERT_H
#define KEEL_CONVERT_H

#include "format/format.h"

struct conv_compare_result {
	bool identical;
	bool size_mismatch;
	uint64_t first_diff; /* valid when !identical */
	uint64_t bytes_read;
};

/*
 * Compares the guest-visible content of a and b. Ranges both report as
 * zero are not read. With different sizes the tail of the larger image
 * must read as zeros, unless strict (then a size difference is a
 * difference at the smaller size).
 */
int conv_compare(struct blk_dev *a, struct blk_dev *b, bool strict, struct conv_compare_result *r);

/* -t: how the output reaches the disk */
enum conv_cache {
	CONV_CACHE_DIRECT = 0,	/* data runs O_DIRECT, fsync before the rename (default) */
	CONV_CACHE_WRITEBACK,	/* everything through the page cache, fsync before the rename */
	CONV_CACHE_UNSAFE,	/* page cache, never fsynced: fast, lost on a power cut */
};

struct conv_opts {
	const char *src;	/* path[@snap] */
	const char *src_fmt;	/* NULL = probe */
	unsigned src_flags;	/* BLK_OPEN_* for the source */
	const char *dst;
	const char *dst_fmt;	/* required */
	struct kl_opts *dst_opts;
	const char *src_select; /* --disk N: sub-image of a package source (OVA), or NULL */
	const char *const *extra_srcs; /* -O ova: the second, third... disk of the package */
	size_t n_extra_srcs;
	const char *backing;	/* -B: output is an overlay over this image */
	const char *backing_fmt;
	bool compress;		/* -c */
	bool verify;		/* --verify: re-read DST and compare digests */
	bool progress;		/* force the progress bar */
	bool keep_chain;
	enum conv_cache cache;	/* -t */
	int threads;		/* 0 = number of CPUs */
	const uint8_t *key;	/* source secret */
	size_t key_len;
	size_t key_nl;		/* blk_open_opts.key_nl */
	const uint8_t *dst_key; /* destination secret */
	size_t dst_key_len;
	size_t dst_key_nl;	/* blk_open_opts.key_nl */
};

struct conv_stats {
	uint64_t virtual_size;
	uint64_t bytes_read;	 /* data read from the source */
	uint64_t bytes_written;	 /* guest bytes written as data */
	uint64_t zero_skipped;	 /* bytes never read or written because zero/unallocated */
	uint64_t zero_detected;	 /* data that turned out to be zeros */
	uint64_t bytes_stored;	 /* bytes the data took once encoded (compressed) */
	uint64_t output_size;	 /* bytes of the output file */
	uint64_t memory_bound;	 /* bytes of pipeline buffers */
	int threads;		 /* workers used */
	int layers;		 /* images written (--keep-chain: one per layer) */
	double seconds;
	bool verified;
	bool verify_failed;
	uint8_t digest[32];	 /* SHA-256 of the guest-visible source content */
};

/*
 * Converts o->src into o->dst. The output is written under a temporary
 * name in DST's directory, synced, and renamed into place only on success;
 * on failure (or SIGINT/SIGTERM) nothing is left under either name.
 * Returns 0, or -EBADMSG when --verify found a difference (st->verify_failed).
 *
 * o->dst_fmt is a format driver name, or a package: "ova" (OVF package
 * with a streamOptimized VMDK) or "gce" (Google Compute Engine import
 * format: disk.raw in a gzip-compressed tar). Thread-safe with respect to
 * other conversions; uses o->threads worker threads.
 */
int conv_run(const struct conv_opts *o, struct conv_stats *st);

/* Package targets conv_run accepts besides the format drivers; i = 0, 1, ... until false. */
bool conv_package_at(size_t i, const char **name, const char **desc);
/* The -o keys a -O target (format or package) takes, a line each; NULL: none known. */
const char *conv_format_help(const char *name);

/* ------------------------------------------------------------------ measure */
struct conv_measure {
	uint64_t required;	  /* bytes the converted image will take */
	uint64_t fully_allocated; /* bytes with every cluster allocated */
	uint64_t data;		  /* guest data bytes counted in required */
	bool exact_data;	  /* data was measured by encoding it (-c) */
};

/*
 * Predicts the size of converting o->src to o->dst_fmt with o->dst_opts
 * (like qemu-img measure). With o->src NULL, size is the virtual size of
 * an empty image. With o->compress the data is read and encoded by the
 * pipeline (o->threads workers), so the prediction is exact but costs a
 * read of SRC.
 */
int conv_measure(const struct conv_opts *o, uint64_t size, struct conv_measure *m);

/* Install SIGINT/SIGTERM handlers that make conv_run stop and clean up. */
void conv_install_signal_handlers(void);
/* Nonzero once SIGINT/SIGTERM arrived. */
int conv_interrupted(void);

#endif
