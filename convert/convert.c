/*
 * convert/convert.c - keel convert: copy the guest-visible content of any
 * image into a new image of any format.
 *
 * The walk is driven by block_status over the whole chain, so zero and
 * unallocated ranges are never read; data blocks that turn out to be all
 * zeros are not written either, so the output stays sparse. The output is
 * built under a temporary name beside DST and renamed into place only
 * when complete (and verified, with --verify).
 *
 * The verification digest is canonical: SHA-256 over (block index, SHA-256
 * of block) for every non-zero 64 KiB block, then the virtual size. It does
 * not depend on how either image splits its extents, so the same function
 * run over DST must give the same value.
 */
#define _GNU_SOURCE
#include "convert/convert.h"

#include <dirent.h>
#include <libgen.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONV_BLOCK (64u << 10)
#define CONV_WINDOW (1u << 20)

static volatile sig_atomic_t conv_sig;

static void conv_on_signal(int sig)
{
	conv_sig = sig;
}

void conv_install_signal_handlers(void)
{
	struct sigaction sa = { 0 };

	sa.sa_handler = conv_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

int conv_interrupted(void)
{
	return conv_sig;
}

/* ------------------------------------------------------------------ digest */

struct conv_digest {
	EVP_MD_CTX *outer;
	EVP_MD_CTX *inner;
};

static int digest_init(struct conv_digest *g)
{
	g->outer = EVP_MD_CTX_new();
	g->inner = EVP_MD_CTX_new();
	if (!g->outer || !g->inner || !EVP_DigestInit_ex(g->outer, EVP_sha256(), NULL))
		return kl_err(-ENOMEM, "cannot set up SHA-256");
	return 0;
}

static void digest_free(struct conv_digest *g)
{
	EVP_MD_CTX_free(g->outer);
	EVP_MD_CTX_free(g->inner);
}

static void digest_block(struct conv_digest *g, uint64_t idx, const uint8_t *buf, size_t len)
{
	uint8_t rec[40];
	unsigned int n;

	put_le64(rec, idx);
	EVP_DigestInit_ex(g->inner, EVP_sha256(), NULL);
	EVP_DigestUpdate(g->inner, buf, len);
	EVP_DigestFinal_ex(g->inner, rec + 8, &n);
	EVP_DigestUpdate(g->outer, rec, sizeof(rec));
}

static void digest_final(struct conv_digest *g, uint64_t vsize, uint8_t out[32])
{
	uint8_t sz[8];
	unsigned int n;

	put_le64(sz, vsize);
	EVP_DigestUpdate(g->outer, sz, sizeof(sz));
	EVP_DigestFinal_ex(g->outer, out, &n);
}

/*
 * Fill buf with [off, off+len) of d and mark in zmask which CONV_BLOCK
 * blocks are known zero from metadata (bit set = zero, not read).
 */
static int read_window(struct blk_dev *d, uint64_t off, uint8_t *buf, size_t len, uint64_t *zmask,
		       uint64_t *read_bytes)
{
	uint64_t pos = off, end = off + len;

	*zmask = 0;
	for (uint64_t b = 0; b * CONV_BLOCK < len; b++)
		*zmask |= 1ULL << b;
	while (pos < end) {
		struct blk_extent e;
		uint64_t n;

		KL_TRY(blk_block_status_chain(d, pos, end - pos, &e));
		n = KL_MIN(e.len, end - pos);
		if (e.type == BLK_ZERO) {
			memset(buf + (pos - off), 0, (size_t)n);
		} else {
			KL_TRY(blk_pread(d, pos, buf + (pos - off), (size_t)n));
			*read_bytes += n;
			for (uint64_t b = (pos - off) / CONV_BLOCK; b * CONV_BLOCK < pos - off + n; b++)
				*zmask &= ~(1ULL << b);
		}
		pos += n;
	}
	return 0;
}

/* Digest of the guest-visible content of d, the way conv_run computes it. */
static int digest_image(struct blk_dev *d, uint8_t out[32])
{
	struct conv_digest g = { 0 };
	uint64_t size = blk_size(d), off = 0, rb = 0;
	uint8_t *buf = kl_aligned_alloc(CONV_WINDOW);
	int rc;

	if (!buf)
		return -ENOMEM;
	rc = digest_init(&g);
	while (rc == 0 && off < size) {
		size_t len = (size_t)KL_MIN(size - off, (uint64_t)CONV_WINDOW);
		struct blk_extent e;
		uint64_t zmask;

		rc = blk_block_status_chain(d, off, len, &e);
		if (rc < 0)
			break;
		if (e.type == BLK_ZERO && e.len >= CONV_WINDOW) {
			off += e.len - e.len % CONV_WINDOW;
			continue;
		}
		rc = read_window(d, off, buf, len, &zmask, &rb);
		for (size_t b = 0; rc == 0 && b * CONV_BLOCK < len; b++) {
			size_t bl = KL_MIN((size_t)CONV_BLOCK, len - b * CONV_BLOCK);
			const uint8_t *p = buf + b * CONV_BLOCK;

			if ((zmask >> b) & 1 || kl_is_zero(p, bl))
				continue;
			digest_block(&g, (off + b * CONV_BLOCK) / CONV_BLOCK, p, bl);
		}
		off += len;
	}
	if (rc == 0)
		digest_final(&g, size, out);
	digest_free(&g);
	kl_free(buf);
	return rc;
}

/* ------------------------------------------------------------------ temp names */

static char *temp_name(const char *dst)
{
	char *c1 = kl_strdup(dst), *c2 = kl_strdup(dst), *t = NULL;

	if (c1 && c2)
		t = kl_asprintf("%s/.%s.keel-tmp.%ld", dirname(c1), basename(c2), (long)getpid());
	kl_free(c1);
	kl_free(c2);
	return t;
}

/* Remove temporaries of earlier runs for the same DST whose process is gone. */
static void remove_stale_temps(const char *dst)
{
	char *c1 = kl_strdup(dst), *c2 = kl_strdup(dst);
	char *dir, *base, *prefix = NULL;
	struct dirent *de;
	DIR *dh;

	if (!c1 || !c2)
		goto out;
	dir = dirname(c1);
	base = basename(c2);
	prefix = kl_asprintf(".%s.keel-tmp.", base);
	if (!prefix || !(dh = opendir(dir)))
		goto out;
	while ((de = readdir(dh))) {
		long pid;
		char *end;

		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
			continue;
		pid = strtol(de->d_name + strlen(prefix), &end, 10);
		if (*end || pid <= 0 || (kill((pid_t)pid, 0) < 0 && errno == ESRCH)) {
			char *p = kl_asprintf("%s/%s", dir, de->d_name);

			if (p)
				kl_io_unlink(p);
			kl_free(p);
		}
	}
	closedir(dh);
out:
	kl_free(prefix);
	kl_free(c1);
	kl_free(c2);
}

/* ------------------------------------------------------------------ run */

enum conv_act { ACT_SKIP, ACT_DATA, ACT_ZERO };

static int flush_run(struct blk_dev *dst, enum conv_act act, uint64_t off, const uint8_t *p,
		     size_t len, struct conv_stats *st)
{
	switch (act) {
	case ACT_DATA:
		st->bytes_written += len;
		return blk_pwrite(dst, off, p, len);
	case ACT_ZERO:
		return blk_pwrite_zeroes(dst, off, len, 0);
	default:
		return 0;
	}
}

int conv_run(const struct conv_opts *o, struct conv_stats *st)
{
	struct blk_open_opts so = { .format = o->src_fmt, .flags = o->src_flags,
				    .key = o->key, .key_len = o->key_len };
	struct blk_open_opts dop = { .format = o->dst_fmt, .flags = BLK_OPEN_RDWR,
				     .key = o->dst_key, .key_len = o->dst_key_len };
	struct blk_create_opts co = { 0 };
	struct blk_dev *src = NULL, *dst = NULL, *back = NULL;
	struct conv_digest g = { 0 };
	struct kl_progress *prog = NULL;
	uint8_t *buf = NULL, *bbuf = NULL;
	char *tmp = NULL;
	uint64_t size, off = 0;
	double t0 = kl_now();
	struct stat sst;
	int rc;

	memset(st, 0, sizeof(*st));
	if (!o->dst_fmt)
		return kl_err(-EINVAL, "an output format is needed (-O)");
	if (stat(o->dst, &sst) == 0 && S_ISDIR(sst.st_mode))
		return kl_err(-EISDIR, "%s is a directory", o->dst);
	remove_stale_temps(o->dst);
	rc = blk_open(o->src, &so, &src);
	if (rc < 0)
		return rc;
	size = blk_size(src);
	st->virtual_size = size;
	tmp = temp_name(o->dst);
	buf = kl_aligned_alloc(CONV_WINDOW);
	if (!tmp || !buf) {
		rc = -ENOMEM;
		goto out;
	}
	co.size = size;
	co.final_path = o->dst;
	co.opts = o->dst_opts;
	co.key = o->dst_key;
	co.key_len = o->dst_key_len;
	if (o->compress) {
		rc = kl_opts_set(&co.opts, "compress", "on");
		if (rc < 0)
			goto out;
	}
	if (o->backing) {
		co.parent = o->backing;
		co.parent_format = o->backing_fmt;
		co.flags = o->src_flags & BLK_OPEN_ALLOW_EXTERNAL;
		dop.flags |= o->src_flags & BLK_OPEN_ALLOW_EXTERNAL;
	}
	rc = blk_create(tmp, o->dst_fmt, &co);
	if (rc < 0)
		goto out;
	rc = blk_open(tmp, &dop, &dst);
	if (rc < 0)
		goto out_unlink;
	if (o->backing) {
		back = blk_parent(dst);
		bbuf = kl_aligned_alloc(CONV_WINDOW);
		if (!bbuf) {
			rc = -ENOMEM;
			goto out_unlink;
		}
	}
	rc = digest_init(&g);
	if (rc < 0)
		goto out_unlink;
	prog = kl_progress_start("converting", size, o->progress);

	while (off < size) {
		size_t len = (size_t)KL_MIN(size - off, (uint64_t)CONV_WINDOW);
		struct blk_extent e;
		uint64_t zmask;
		size_t run_start = 0, run_len = 0;
		enum conv_act run_act = ACT_SKIP;

		if (conv_interrupted()) {
			rc = kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
			goto out_unlink;
		}
		rc = blk_block_status_chain(src, off, len, &e);
		if (rc < 0)
			goto out_unlink;
		if (e.type == BLK_ZERO && e.len >= CONV_WINDOW && !back) {
			uint64_t skip = e.len - e.len % CONV_WINDOW;

			st->zero_skipped += skip;
			off += skip;
			kl_progress_add(prog, skip);
			continue;
		}
		rc = read_window(src, off, buf, len, &zmask, &st->bytes_read);
		if (rc < 0)
			goto out_unlink;
		if (back && (rc = blk_pread_padded(back, off, bbuf, len)) < 0)
			goto out_unlink;
		for (size_t b = 0; b * CONV_BLOCK < len; b++) {
			size_t bl = KL_MIN((size_t)CONV_BLOCK, len - b * CONV_BLOCK);
			const uint8_t *p = buf + b * CONV_BLOCK;
			bool known_zero = (zmask >> b) & 1;
			bool zero = known_zero || kl_is_zero(p, bl);
			enum conv_act act;

			if (known_zero)
				st->zero_skipped += bl;
			else if (zero)
				st->zero_detected += bl;
			if (!zero)
				digest_block(&g, (off + b * CONV_BLOCK) / CONV_BLOCK, p, bl);
			if (back && memcmp(p, bbuf + b * CONV_BLOCK, bl) == 0)
				act = ACT_SKIP;
			else if (zero)
				act = back ? ACT_ZERO : ACT_SKIP;
			else
				act = ACT_DATA;
			if (act != run_act && run_len) {
				rc = flush_run(dst, run_act, off + run_start, buf + run_start, run_len, st);
				if (rc < 0)
					goto out_unlink;
				run_len = 0;
			}
			if (run_len == 0) {
				run_start = b * CONV_BLOCK;
				run_act = act;
			}
			run_len += bl;
		}
		if (run_len) {
			rc = flush_run(dst, run_act, off + run_start, buf + run_start, run_len, st);
			if (rc < 0)
				goto out_unlink;
		}
		off += len;
		kl_progress_add(prog, len);
	}
	digest_final(&g, size, st->digest);
	rc = blk_flush(dst);
	if (rc < 0)
		goto out_unlink;
	blk_close(dst);
	dst = NULL;
	if (o->verify) {
		struct blk_open_opts vo = { .format = o->dst_fmt,
					    .flags = o->src_flags & BLK_OPEN_ALLOW_EXTERNAL,
					    .key = o->dst_key,
					    .key_len = o->dst_key_len };
		struct blk_dev *v;
		uint8_t dg[32];

		rc = blk_open(tmp, &vo, &v);
		if (rc < 0)
			goto out_unlink;
		rc = digest_image(v, dg);
		blk_close(v);
		if (rc < 0)
			goto out_unlink;
		if (memcmp(dg, st->digest, 32) != 0) {
			st->verify_failed = true;
			rc = kl_err(-EBADMSG, "verification failed: %s does not read back as %s",
				    o->dst, o->src);
			goto out_unlink;
		}
		st->verified = true;
	}
	rc = kl_io_rename(tmp, o->dst);
	if (rc < 0)
		goto out_unlink;
	kl_io_sync_dir(o->dst);
	if (stat(o->dst, &sst) == 0)
		st->output_size = (uint64_t)sst.st_size;
	st->seconds = kl_now() - t0;
	kl_progress_finish(prog);
	prog = NULL;
	goto out;
out_unlink:
	blk_close(dst);
	dst = NULL;
	kl_io_unlink(tmp);
out:
	if (prog)
		kl_progress_finish(prog);
	digest_free(&g);
	blk_close(dst);
	blk_close(src);
	/* co.opts aliases o->dst_opts when that existed; free only our own */
	if (co.opts != o->dst_opts)
		kl_opts_free(co.opts);
	kl_free(buf);
	kl_free(bbuf);
	kl_free(tmp);
	return rc;
}
