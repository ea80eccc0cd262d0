/*
 * convert/conv_int.h - private pieces shared by the files of convert/.
 */
#ifndef KEEL_CONV_INT_H
#define KEEL_CONV_INT_H

#include "convert/convert.h"

#include <openssl/evp.h>

/* Digest granularity: the canonical content digest hashes 64 KiB blocks. */
#define CONV_BLOCK (64u << 10)
/* Unit of work of the pipeline (a job), unless the target cluster is larger. */
#define CONV_CHUNK (2u << 20)
/* The writer asks the kernel to start writeback every this many bytes. */
#define CONV_WRITEBACK (64u << 20)
/* Buffers of the pipeline stay under this, whatever the image size. */
#define CONV_MEM_BUDGET (192u << 20)

/*
 * One run of the copy pipeline: a walker (the calling thread) follows the
 * source's extent map and hands chunks that hold data to a pool of
 * workers; each worker reads its chunk through its own handle on the
 * source, finds the zero blocks, compares with the backing image, hashes
 * blocks for the digest and encodes (compresses) clusters; the calling
 * thread commits finished chunks strictly in offset order, so the output
 * is the same whatever the number of workers.
 */
struct conv_pipe_cfg {
	const char *src;	  /* spec, reopened once per worker */
	struct blk_open_opts so;  /* how to open it */
	struct blk_dev *src_dev;  /* the walker's handle (borrowed) */
	struct blk_dev *dst;	  /* NULL: digest only, nothing written */
	bool backing;		  /* write only what differs from dst's parent */
	const char *backing_fmt;
	unsigned backing_flags;	  /* BLK_OPEN_* for the per-worker backing handles */
	bool digest;		  /* compute the canonical digest into st->digest */
	uint64_t digest_size;	  /* digest as an image of this size (0: the source's); past it
				   * the source must read as zeros (a target rounded up) */
	bool count_only;	  /* encode but do not write; st->bytes_stored gets the sizes */
	bool zero_fill;		  /* dst does not read as zeros (a block device): write zeros
				   * wherever the source is zero, instead of skipping */
	uint64_t walk_size;	  /* copy only [0, walk_size) of the source (0: all of it) */
	int threads;		  /* workers; 0 = number of CPUs */
	bool progress;
	const char *label;
};

int conv_pipe_run(const struct conv_pipe_cfg *c, struct conv_stats *st);

/* The options that open o's source read-only (its format, flags, key, snapshot). */
void conv_src_open_opts(const struct conv_opts *o, struct blk_open_opts *so);

/* Number of CPUs online (at least 1). */
int conv_ncpus(void);

/* Temp names beside dst: ".NAME.keel-tmp.PID" or ".NAME.keel-tmp.PID.TAG". */
char *conv_temp_name(const char *dst, const char *tag);
/* Remove temporaries of earlier runs for dst whose process is gone. */
void conv_remove_stale_temps(const char *dst);

/* Target "formats" that are packages around an image (ova, gce). */
struct conv_package {
	const char *name;
	const char *desc;
	const char *help; /* its -o keys, as blk_driver_create_help */
	int (*run)(const struct conv_opts *o, const char *tmp, struct conv_stats *st);
};
const struct conv_package *conv_package_find(const char *name);

/* Convert o->src into a new image at path (format o->dst_fmt); removes path on failure. */
int conv_into(const struct conv_opts *o, const char *path, struct conv_stats *st);
/* The BLK_OPEN_* / KL_O_* flags that carry -t to an output file. */
static inline unsigned conv_blk_cache_flags(const struct conv_opts *o)
{
	return o->cache == CONV_CACHE_DIRECT ? BLK_OPEN_DIRECT :
	       o->cache == CONV_CACHE_UNSAFE ? BLK_OPEN_UNSAFE : 0;
}
static inline unsigned conv_kl_cache_flags(const struct conv_opts *o)
{
	return o->cache == CONV_CACHE_UNSAFE ? KL_O_NOSYNC : 0;
}

/*
 * Expand target profiles (-o azure, -o esxi) found in *opts into driver
 * options; sets *fmt when it is NULL, refuses a conflicting -O.
 */
int conv_apply_profiles(struct kl_opts **opts, const char **fmt);

/*
 * The canonical content digest, for code that reads a source itself, in
 * offset order: conv_block_hash() for each CONV_BLOCK-aligned block
 * (*zero: known zero; set when it reads as zeros, and then not recorded),
 * conv_digest_record() for each block that is not zero, conv_digest_final()
 * with the size the digest describes. The pipeline computes the same.
 */
int conv_block_hash(const uint8_t *d, size_t bl, uint64_t boff, uint64_t dsize, bool *zero,
		    uint8_t hash[32]);
void conv_digest_record(EVP_MD_CTX *outer, uint64_t boff, const uint8_t hash[32]);
void conv_digest_final(EVP_MD_CTX *outer, uint64_t dsize, uint8_t out[32]);

/* Re-read path (format fmt) and compare its digest with st->digest; sets st->verified. */
int conv_verify_file(const struct conv_opts *o, const char *path, const char *fmt,
		     struct conv_stats *st);

/* A growing text buffer (OVF descriptors, manifests). */
struct conv_buf {
	char *s;
	size_t len, cap;
	int rc;	/* first error; appends after one are ignored */
};
void conv_buf_add(struct conv_buf *b, const char *fmt, ...) KL_PRINTF(2, 3);
/* Appends s with XML's five special characters escaped. */
void conv_buf_xml(struct conv_buf *b, const char *s);

int conv_ova_write(const struct conv_opts *o, const char *tmp, struct conv_stats *st);
int conv_gce_write(const struct conv_opts *o, const char *tmp, struct conv_stats *st);

#endif
