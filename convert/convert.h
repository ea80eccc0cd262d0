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

struct conv_opts {
	const char *src;	/* path[@snap] */
	const char *src_fmt;	/* NULL = probe */
	unsigned src_flags;	/* BLK_OPEN_* for the source */
	const char *dst;
	const char *dst_fmt;	/* required */
	struct kl_opts *dst_opts;
	const char *backing;	/* -B: output is an overlay over this image */
	const char *backing_fmt;
	bool compress;		/* -c */
	bool verify;		/* --verify: re-read DST and compare digests */
	bool progress;		/* force the progress bar */
	bool keep_chain;
	int threads;		/* 0 = number of CPUs */
	const uint8_t *key;	/* source secret */
	size_t key_len;
	const uint8_t *dst_key; /* destination secret */
	size_t dst_key_len;
};

struct conv_stats {
	uint64_t virtual_size;
	uint64_t bytes_read;	 /* data read from the source */
	uint64_t bytes_written;	 /* guest bytes written as data */
	uint64_t zero_skipped;	 /* bytes never read or written because zero/unallocated */
	uint64_t zero_detected;	 /* data that turned out to be zeros */
	uint64_t output_size;	 /* bytes of the output file */
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
 */
int conv_run(const struct conv_opts *o, struct conv_stats *st);

/* Install SIGINT/SIGTERM handlers that make conv_run stop and clean up. */
void conv_install_signal_handlers(void);
/* Nonzero once SIGINT/SIGTERM arrived. */
int conv_interrupted(void);

#endif
