/*
 * convert/gce.c - keel convert -O gce: the Google Compute Engine import
 * format, a file named disk.raw inside a gzip-compressed tar (Google's
 * "import a raw disk image": `tar --format=oldgnu -Sczf image.tar.gz
 * disk.raw`), in one streaming pass: libarchive writes the tar and
 * lib/pgzip.c compresses it on every core (libarchive's gzip filter runs
 * on one); no raw temporary file, holes never read and never compressed.
 *
 * disk.raw is stored sparse (pax format with a GNU 1.0 sparse map, which
 * GNU tar, bsdtar and Go's archive/tar extract as a sparse file) unless
 * -o sparse=off asks for a plain member (GNU format). Its size is rounded
 * up to a whole GiB, as Compute Engine requires; the padding is a hole.
 * Holes come from the source's extent map (block_status), coarsened to
 * 1 MiB so that the sparse map stays small.
 */
#define _GNU_SOURCE
#include "convert/conv_int.h"
#include "lib/lazy.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define GCE_GRAIN (1u << 20)
#define GCE_GIB (1ULL << 30)
#define GCE_MAX_EXTENTS 200000

struct gce_ext {
	uint64_t off, len;
};

struct gce_out {
	struct kl_file *f;
	struct kl_pgz *gz;
	uint64_t pos;
	bool stdout_pipe; /* DST "-": standard output, written forward */
	int rc;
};

/* The compressed stream, in order: into the file. */
static int gce_file_write(void *opaque, const void *buf, size_t len)
{
	struct gce_out *t = opaque;
	int rc = t->stdout_pipe ? kl_io_write(t->f, buf, len) : kl_io_pwrite(t->f, t->pos, buf, len);

	if (rc == 0)
		t->pos += len;
	return rc;
}

/* libarchive's tar bytes: into the parallel gzip (libarchive's filter is one thread). */
static la_ssize_t gce_write_cb(struct archive *a, void *opaque, const void *buf, size_t len)
{
	struct gce_out *t = opaque;
	int rc = kl_pgz_write(t->gz, buf, len);

	if (rc < 0) {
		t->rc = rc;
		kl_la.archive_set_error(a, -rc, "%s", kl_errmsg());
		return -1;
	}
	return (la_ssize_t)len;
}

static int gce_err(struct archive *a, struct gce_out *t, const char *what)
{
	if (t->rc < 0)
		return t->rc;
	return kl_err(-EIO, "gce: %s: %s", what,
		      kl_la.archive_error_string(a) ? kl_la.archive_error_string(a) : "libarchive error");
}

/* Data extents of src, merged when less than GCE_GRAIN apart, grain-aligned. */
static int gce_map(struct blk_dev *src, struct gce_ext **out, size_t *n)
{
	uint64_t size = blk_size(src), off = 0;
	struct gce_ext *v = NULL;
	size_t cnt = 0, cap = 0;

	*out = NULL;
	*n = 0;
	while (off < size) {
		struct blk_extent e;
		uint64_t s, end;

		KL_TRY(blk_block_status_chain(src, off, size - off, &e));
		if (e.type == BLK_ZERO) {
			off += e.len;
			continue;
		}
		s = off / GCE_GRAIN * GCE_GRAIN;
		end = KL_MIN(size, KL_ALIGN_UP(off + e.len, GCE_GRAIN));
		if (cnt && s <= v[cnt - 1].off + v[cnt - 1].len) {
			v[cnt - 1].len = KL_MAX(v[cnt - 1].off + v[cnt - 1].len, end) - v[cnt - 1].off;
		} else {
			if (cnt == cap) {
				struct gce_ext *nv;

				cap = cap ? cap * 2 : 64;
				nv = kl_realloc(v, cap * sizeof(*nv));
				if (!nv) {
					kl_free(v);
					return -ENOMEM;
				}
				v = nv;
			}
			v[cnt].off = s;
			v[cnt].len = end - s;
			cnt++;
			if (cnt > GCE_MAX_EXTENTS) {
				kl_free(v);
				return kl_err(-E2BIG, "gce: %s has more than %d separate data "
						      "regions; use -o sparse=off",
					      blk_filename(src), GCE_MAX_EXTENTS);
			}
		}
		off = end;
	}
	*out = v;
	*n = cnt;
	return 0;
}

/* Feed [off, off+len) of the member: data from src, or zeros over holes. */
static int gce_feed(struct archive *a, struct gce_out *t, struct blk_dev *src, uint64_t off,
		    uint64_t len, bool hole, uint8_t *buf, size_t bufsz, const uint8_t *zeros,
		    struct conv_stats *st, struct kl_progress *prog, EVP_MD_CTX *dg)
{
	uint64_t size = blk_size(src);

	while (len) {
		size_t n = (size_t)KL_MIN(len, (uint64_t)bufsz);
		const uint8_t *p = zeros;
		la_ssize_t w;

		if (conv_interrupted())
			return kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
		if (!hole && off < size) {
			KL_TRY(blk_pread_padded(src, off, buf, n));
			st->bytes_read += KL_MIN((uint64_t)n, size - off);
			st->bytes_written += n;
			p = buf;
			/* --verify: the source's digest as it goes by (reading it again
			 * would be a second pass over a pipe or a tar.gz) */
			for (size_t b = 0; dg && b < n; b += CONV_BLOCK) {
				uint8_t h[32];
				bool zero = false;

				KL_TRY(conv_block_hash(buf + b, KL_MIN((size_t)CONV_BLOCK, n - b),
						       off + b, size, &zero, h));
				if (!zero)
					conv_digest_record(dg, off + b, h);
			}
		}
		for (size_t done = 0; done < n; done += (size_t)w) {
			w = kl_la.archive_write_data(a, p + done, n - done);
			if (w <= 0)
				return gce_err(a, t, "writing disk.raw");
		}
		kl_progress_add(prog, n);
		off += n;
		len -= n;
	}
	return 0;
}

int conv_gce_write(const struct conv_opts *o, const char *tmp, struct conv_stats *st)
{
	struct blk_open_opts so;
	struct gce_out t = { 0 };
	struct blk_dev *src = NULL;
	struct archive *a = NULL;
	struct archive_entry *e = NULL;
	struct gce_ext *map = NULL;
	struct kl_progress *prog = NULL;
	uint8_t *buf = NULL, *zeros = NULL;
	EVP_MD_CTX *dg = NULL;
	const size_t bufsz = 1u << 20;
	size_t nmap = 0;
	bool sparse = true, found;
	uint64_t level = 6, vsize, msize, pos = 0;
	int rc;

	rc = kl_opts_get_bool(o->dst_opts, "sparse", &sparse, &found);
	if (rc == 0 && kl_opts_peek(o->dst_opts, "level") &&
	    (kl_parse_u64(kl_opts_get(o->dst_opts, "level"), &level) < 0 || level < 1 ||
	     level > 9))
		rc = kl_err(-EINVAL, "gce: level must be 1 to 9");
	if (rc == 0)
		rc = kl_opts_check_unused(o->dst_opts, "gce");
	if (rc < 0)
		return rc;
	conv_src_open_opts(o, &so);
	KL_TRY(blk_open(o->src, &so, &src));
	vsize = blk_size(src);
	msize = KL_ALIGN_UP(vsize, GCE_GIB);
	st->virtual_size = vsize;
	rc = kl_archive_load();
	if (rc < 0)
		goto out;
	buf = kl_aligned_alloc(bufsz);
	zeros = kl_calloc(1, bufsz);
	if (o->verify && (!(dg = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(dg, EVP_sha256(), NULL))) {
		rc = -ENOMEM;
		goto out;
	}
	a = kl_la.archive_write_new();
	e = kl_la.archive_entry_new();
	if (!buf || !zeros || !a || !e) {
		rc = -ENOMEM;
		goto out;
	}
	if (sparse) {
		rc = gce_map(src, &map, &nmap);
		if (rc < 0)
			goto out;
	} else {
		map = kl_calloc(1, sizeof(*map));
		if (!map) {
			rc = -ENOMEM;
			goto out;
		}
		map[0].off = 0;
		map[0].len = vsize;
		nmap = vsize ? 1 : 0;
	}
	if (strcmp(tmp, "-") == 0) {
		/* a pipe or a redirected file; nothing to sync or rename */
		int fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0);

		if (fd < 0) {
			rc = kl_err(-errno, "standard output: %s", strerror(errno));
			goto out;
		}
		rc = kl_io_fdopen(fd, "standard output", KL_O_RDWR | KL_O_NOSYNC, &t.f);
		if (rc < 0)
			close(fd);
		t.stdout_pipe = true;
	} else {
		rc = kl_io_open(tmp, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC | conv_kl_cache_flags(o),
				&t.f);
	}
	if (rc < 0)
		goto out;
	rc = kl_pgz_open((int)level, o->threads, gce_file_write, &t, &t.gz);
	if (rc < 0)
		goto out;
	if ((sparse ? kl_la.archive_write_set_format_pax(a) : kl_la.archive_write_set_format_gnutar(a)) !=
		    ARCHIVE_OK ||
	    kl_la.archive_write_open(a, &t, NULL, gce_write_cb, NULL) != ARCHIVE_OK) {
		rc = gce_err(a, &t, "setting up the archive");
		goto out;
	}
	kl_la.archive_entry_set_pathname(e, "disk.raw");
	kl_la.archive_entry_set_size(e, (la_int64_t)msize);
	kl_la.archive_entry_set_filetype(e, AE_IFREG);
	kl_la.archive_entry_set_perm(e, 0644);
	kl_la.archive_entry_set_mtime(e, (time_t)(kl_wallclock_ns() / 1000000000ULL), 0);
	for (size_t i = 0; sparse && i < nmap; i++)
		kl_la.archive_entry_sparse_add_entry(e, (la_int64_t)map[i].off, (la_int64_t)map[i].len);
	if (sparse && nmap == 0)
		kl_la.archive_entry_sparse_add_entry(e, (la_int64_t)msize, 0);
	if (kl_la.archive_write_header(a, e) != ARCHIVE_OK) {
		rc = gce_err(a, &t, "writing the header of disk.raw");
		goto out;
	}
	prog = kl_progress_start("converting", msize, o->progress);
	for (size_t i = 0; i <= nmap && rc == 0; i++) {
		uint64_t doff = i < nmap ? map[i].off : msize;

		if (doff > pos) {
			/* a hole: the pax writer skips it, GNU format gets real zeros */
			st->zero_skipped += doff - pos;
			rc = gce_feed(a, &t, src, pos, doff - pos, true, buf, bufsz, zeros, st, prog,
				      dg);
			pos = doff;
		}
		if (rc == 0 && i < nmap) {
			rc = gce_feed(a, &t, src, map[i].off, map[i].len, false, buf, bufsz, zeros,
				      st, prog, dg);
			pos = map[i].off + map[i].len;
		}
	}
	if (rc < 0)
		goto out;
	if (kl_la.archive_write_close(a) != ARCHIVE_OK) {
		rc = gce_err(a, &t, "finishing the archive");
		goto out;
	}
	rc = kl_pgz_finish(t.gz);
	if (rc < 0)
		goto out;
	rc = kl_io_sync(t.f);
	if (rc < 0)
		goto out;
	st->bytes_stored = t.pos;
	if (o->verify) {
		/* the output read back by format/gce.c, against the digest taken while writing */
		conv_digest_final(dg, vsize, st->digest);
		rc = conv_verify_file(o, tmp, "gce", st);
		if (rc < 0)
			goto out;
	}
out:
	if (prog)
		kl_progress_finish(prog);
	if (a)
		kl_la.archive_write_free(a);
	if (e)
		kl_la.archive_entry_free(e);
	kl_pgz_free(t.gz);
	EVP_MD_CTX_free(dg);
	kl_io_close(t.f);
	blk_close(src);
	kl_free(map);
	kl_free(buf);
	kl_free(zeros);
	return rc;
}
