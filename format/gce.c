/*
 * format/gce.c - a raw disk inside a tar, gzip-compressed or not: what
 * `gcloud compute images export` writes and Compute Engine imports
 * (image.tar.gz holding disk.raw, GNU or pax sparse), read-only. -O gce
 * writes the same (convert/gce.c).
 *
 * A gzip stream cannot be read at an offset without inflating everything
 * before it, so this driver reads forward: one cursor walks the member's
 * data blocks in order, and a read behind it starts the stream over
 * (slow, but correct; nothing in keel's sequential paths does it: convert
 * reads such a source on one thread, BLK_DRV_SEQUENTIAL). Holes need no
 * reading at all: the tar's sparse map, which libarchive parses from the
 * headers, is the block status.
 *
 * The layers: file -> zlib (gzip, with its CRC-32 and length checks:
 * libarchive's own gzip filter does not check them) -> tar bytes ->
 * libarchive (ustar, GNU, pax, every sparse dialect) -> member blocks.
 * When a read reaches the end of the member's data, the rest of the
 * stream is read too, so the gzip trailer is checked before the last
 * bytes are handed out: a damaged archive fails the convert instead of
 * yielding a disk that is wrong somewhere in the middle.
 *
 * "image.tar.gz@NAME" selects a member; without it the first regular file
 * named disk.raw is served. A member that is itself an image (a qcow2 in a
 * tar) is refused: it must be extracted and opened as what it is.
 */
#define _GNU_SOURCE
#include "format/format_int.h"
#include "lib/lazy.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define GCE_IN_BUF (256u << 10)
#define GCE_OUT_BUF (1u << 20)
#define GCE_MAX_MEMBERS 4096
#define GCE_MAX_EXTENTS (1u << 20)
#define GCE_LIST 8 /* member names an error lists */
#define GCE_DEFAULT "disk.raw"

struct gce_ext {
	uint64_t off, len;
};

struct gce_state {
	struct blk_dev *d;
	bool gzip;
	uint64_t file_size;

	/* the stream: file -> zlib -> tar bytes -> libarchive */
	struct archive *a;
	z_stream z;
	bool z_ready;
	bool z_member_end; /* a gzip member ended; another may follow */
	bool stream_end;   /* all of the file was consumed and checked */
	uint8_t *in, *out;
	uint64_t in_pos;   /* next byte of the file to read */
	int err;	   /* what our read callback failed with (message in kl_err) */

	/* the member */
	char *member;
	size_t member_index;
	struct gce_ext *map;
	size_t nmap;
	uint64_t data_end; /* end of the last data extent */
	uint64_t stored;   /* bytes in data extents */

	/* the read cursor */
	const uint8_t *blk;
	size_t blen;
	uint64_t boff;
	uint64_t next_min; /* where the next block may start */
	bool data_eof;
	bool verified;	   /* the whole stream was read and checked */
	bool one_pass;	   /* KEEL_GCE_ONE_PASS: tests prove a path reads once */

	/* the member's first bytes, kept: probing them must not cost a second pass */
	uint8_t *head;
	size_t head_len;

	char *seen[GCE_LIST];
	size_t nseen;
};

/* ------------------------------------------------------------------ probe */

static bool tar_header(const uint8_t *h, size_t len)
{
	return len >= 512 && memcmp(h + 257, "ustar", 5) == 0;
}

/* Inflate the start of a gzip stream into out without touching the heap. */
struct probe_arena {
	uint8_t mem[48 << 10];
	size_t used;
};

static voidpf arena_alloc(voidpf opaque, uInt items, uInt size)
{
	struct probe_arena *pa = opaque;
	size_t n = ((size_t)items * size + 15) & ~(size_t)15;

	if (n > sizeof(pa->mem) - pa->used)
		return Z_NULL;
	pa->used += n;
	return pa->mem + pa->used - n;
}

static void arena_free(voidpf opaque, voidpf p)
{
	(void)opaque;
	(void)p;
}

static size_t gunzip_head(const uint8_t *in, size_t in_len, uint8_t *out, size_t cap)
{
	struct probe_arena pa;
	z_stream z;
	size_t n;

	memset(&z, 0, sizeof(z));
	pa.used = 0;
	z.zalloc = arena_alloc;
	z.zfree = arena_free;
	z.opaque = &pa;
	if (inflateInit2(&z, 16 + 15) != Z_OK)
		return 0;
	z.next_in = (Bytef *)in;
	z.avail_in = (uInt)in_len;
	z.next_out = out;
	z.avail_out = (uInt)cap;
	(void)inflate(&z, Z_SYNC_FLUSH);
	n = cap - z.avail_out;
	inflateEnd(&z);
	return n;
}

/* Does the tar start with a member named disk.raw (in its header or a pax/GNU record)? */
static bool names_default(const uint8_t *t, size_t len)
{
	size_t scan = KL_MIN(len, (size_t)2048);

	return memmem(t, scan, GCE_DEFAULT, strlen(GCE_DEFAULT)) != NULL &&
	       !memmem(t, scan, ".ovf", 4);
}

static int gce_probe(const struct blk_probe_buf *pb)
{
	uint8_t t[2048];
	size_t n;

	if (pb->head_len >= 3 && memcmp(pb->head, "\x1f\x8b\x08", 3) == 0) {
		n = gunzip_head(pb->head, pb->head_len, t, sizeof(t));
		if (!tar_header(t, n))
			return 0; /* gzip, but not of a tar: core.c names it */
		/* any tar.gz is ours: open explains what it holds if not a disk */
		return names_default(t, n) ? 90 : 50;
	}
	/* a plain tar: only when it leads with disk.raw (an OVA leads with .ovf) */
	if (tar_header(pb->head, pb->head_len) && names_default(pb->head, pb->head_len))
		return 30;
	return 0;
}

/* ------------------------------------------------------------------ the stream */

/* Refill s->in, keeping what is left unread. */
static int fill_in(struct gce_state *s)
{
	size_t keep = s->z.avail_in, want;
	ssize_t n;

	if (keep && s->z.next_in != s->in)
		memmove(s->in, s->z.next_in, keep);
	s->z.next_in = s->in;
	want = (size_t)KL_MIN((uint64_t)(GCE_IN_BUF - keep), s->file_size - s->in_pos);
	if (want == 0)
		return 0;
	n = kl_io_pread(s->d->file, s->in_pos, s->in + keep, want);
	if (n < 0)
		return (int)n;
	if (n == 0 && kl_io_is_stream(s->d->file)) {
		s->file_size = s->in_pos; /* the pipe's end: now its size is known */
		return 0;
	}
	if (n == 0)
		return kl_err(-EIO, "%s: the file shrank while being read", s->d->filename);
	s->in_pos += (uint64_t)n;
	s->z.avail_in = (uInt)(keep + (size_t)n);
	return 0;
}

/* After a gzip member: another member, zero padding to the end, or an error. */
static int member_boundary(struct gce_state *s)
{
	if (s->z.avail_in < 2 && s->in_pos < s->file_size)
		KL_TRY(fill_in(s));
	if (s->z.avail_in == 0) {
		s->stream_end = true;
		return 0;
	}
	if (s->z.avail_in >= 2 && s->z.next_in[0] == 0x1f && s->z.next_in[1] == 0x8b) {
		inflateReset(&s->z);
		s->z_member_end = false;
		return 0;
	}
	/* tape-style padding after the stream is zeros, all the way */
	for (;;) {
		uint64_t at = s->in_pos - s->z.avail_in;

		if (!kl_is_zero(s->z.next_in, s->z.avail_in) && kl_io_is_stream(s->d->file))
			return kl_err(-EUCLEAN, "%s: trailing data after the gzip stream (at byte "
						"%llu): not a gzip file as written",
				      s->d->filename, (unsigned long long)at);
		if (!kl_is_zero(s->z.next_in, s->z.avail_in))
			return kl_err(-EUCLEAN, "%s: %llu bytes of trailing data after the gzip "
						"stream (at byte %llu): not a gzip file as written",
				      s->d->filename, (unsigned long long)(s->file_size - at),
				      (unsigned long long)at);
		s->z.avail_in = 0;
		if (s->in_pos >= s->file_size)
			break;
		KL_TRY(fill_in(s));
	}
	s->stream_end = true;
	return 0;
}

/* Produce the next tar bytes into s->out: their count, 0 at the end, or -errno. */
static ssize_t next_tar_bytes(struct gce_state *s)
{
	if (!s->gzip) {
		size_t want = (size_t)KL_MIN((uint64_t)GCE_OUT_BUF, s->file_size - s->in_pos);
		ssize_t n;

		if (want == 0) {
			s->stream_end = true;
			return 0;
		}
		n = kl_io_pread(s->d->file, s->in_pos, s->out, want);
		if (n == 0 && kl_io_is_stream(s->d->file)) {
			s->file_size = s->in_pos;
			s->stream_end = true;
			return 0;
		}
		if (n <= 0)
			return n < 0 ? n : kl_err(-EIO, "%s: the file shrank while being read",
						  s->d->filename);
		s->in_pos += (uint64_t)n;
		return n;
	}
	s->z.next_out = s->out;
	s->z.avail_out = GCE_OUT_BUF;
	while (s->z.avail_out == GCE_OUT_BUF) {
		int r;

		if (s->stream_end)
			return 0;
		if (s->z_member_end) {
			KL_TRY(member_boundary(s));
			continue;
		}
		if (s->z.avail_in == 0) {
			if (s->in_pos >= s->file_size)
				return kl_err(-EUCLEAN, "%s: gzip stream cut short: the file ends "
							"(%llu bytes) before the stream does",
					      s->d->filename, (unsigned long long)s->file_size);
			KL_TRY(fill_in(s));
		}
		r = inflate(&s->z, Z_NO_FLUSH);
		if (r == Z_STREAM_END)
			s->z_member_end = true;
		else if (r == Z_MEM_ERROR)
			return -ENOMEM;
		else if (r != Z_OK && !(r == Z_BUF_ERROR && s->z.avail_in == 0))
			return kl_err(-EUCLEAN, "%s: gzip data damaged at or before byte %llu: %s",
				      s->d->filename,
				      (unsigned long long)(s->in_pos - s->z.avail_in),
				      s->z.msg ? s->z.msg : "inflate failed");
	}
	return (ssize_t)(GCE_OUT_BUF - s->z.avail_out);
}

static la_ssize_t gce_read_cb(struct archive *a, void *opaque, const void **out)
{
	struct gce_state *s = opaque;
	ssize_t n = next_tar_bytes(s);

	*out = s->out;
	if (n < 0) {
		s->err = (int)n;
		kl_la.archive_set_error(a, EIO, "%s", kl_errmsg());
		return -1;
	}
	return n;
}

/* The error of a failed libarchive call: ours from the callback, or its own. */
static int arch_err(struct gce_state *s, const char *what)
{
	const char *why = kl_la.archive_error_string(s->a);

	if (s->err < 0)
		return s->err; /* kl_err already names the file and the offset */
	return kl_err(-EUCLEAN, "%s: %s: %s", s->d->filename, what, why ? why : "damaged tar");
}

static void stream_close(struct gce_state *s)
{
	if (s->a)
		kl_la.archive_read_free(s->a);
	s->a = NULL;
	s->blk = NULL;
	s->blen = 0;
}

static void remember(struct gce_state *s, const char *name)
{
	if (s->nseen < GCE_LIST)
		s->seen[s->nseen] = kl_strdup(name); /* NULL: the list is one shorter */
	if (s->nseen < GCE_LIST && s->seen[s->nseen])
		s->nseen++;
}

static int not_found(struct gce_state *s, const char *sel, size_t n)
{
	char list[512] = "";
	size_t l = 0;

	for (size_t i = 0; i < s->nseen && l < sizeof(list); i++)
		l += (size_t)snprintf(list + l, sizeof(list) - l, "%s%s", i ? ", " : "",
				      s->seen[i]);
	if (n == 0)
		return kl_err(-EUCLEAN, "%s: the archive holds no files", s->d->filename);
	for (size_t i = 0; i < s->nseen; i++) {
		size_t nl = strlen(s->seen[i]);

		if (s->gzip && nl >= 4 && strcasecmp(s->seen[i] + nl - 4, ".ovf") == 0)
			return kl_err(-ENOTSUP, "%s: a gzip-compressed OVA: an OVA is an "
						"uncompressed tar (gunzip it, then open the .ova)",
				      s->d->filename);
	}
	return kl_err(-ENOENT, "%s: no file '%s' in the archive (it holds %zu: %s%s)%s",
		      s->d->filename, sel, n, list, n > s->nseen ? ", ..." : "",
		      s->d->snapshot ? "" : "; pick one with FILE@NAME");
}

static int load_map(struct gce_state *s, struct archive_entry *e);

/*
 * KEEL_GCE_ONE_PASS: tests prove that a command reads a package's stream
 * once: a second start, by this handle or by another one on the same file
 * in this process, fails instead.
 */
static int one_pass_check(struct gce_state *s)
{
	static struct kl_io_seen started = { .lock = PTHREAD_MUTEX_INITIALIZER };

	if (s->one_pass && !kl_io_first_time(&started, s->d->file))
		return kl_err(-ESPIPE, "%s: a second pass over the stream (KEEL_GCE_ONE_PASS)",
			      s->d->filename);
	return 0;
}

/* (Re)start the stream and stop at the member's first data. */
static int stream_open(struct gce_state *s)
{
	const char *sel = s->d->snapshot ? s->d->snapshot : GCE_DEFAULT;
	struct archive_entry *e;
	size_t idx;
	int ar;

	stream_close(s);
	KL_TRY(one_pass_check(s));
	s->in_pos = 0;
	s->err = 0;
	s->stream_end = s->z_member_end = false;
	s->data_eof = false;
	s->next_min = 0;
	s->boff = 0;
	if (s->gzip) {
		if (!s->z_ready) {
			if (inflateInit2(&s->z, 16 + 15) != Z_OK)
				return -ENOMEM;
			s->z_ready = true;
		} else {
			inflateReset(&s->z);
		}
		s->z.avail_in = 0;
	}
	s->a = kl_la.archive_read_new();
	if (!s->a)
		return -ENOMEM;
	kl_la.archive_read_support_format_tar(s->a);
	kl_la.archive_read_set_read_callback(s->a, gce_read_cb);
	kl_la.archive_read_set_callback_data(s->a, s);
	if (kl_la.archive_read_open1(s->a) != ARCHIVE_OK)
		return arch_err(s, s->gzip ? "not a gzip-compressed tar" : "not a tar archive");
	for (idx = 0;; idx++) {
		const char *name;
		bool reg;

		ar = kl_la.archive_read_next_header(s->a, &e);
		if (ar == ARCHIVE_EOF) {
			if (s->member)
				return kl_err(-EIO, "%s: '%s' is gone on a second read: the file "
						    "changed while keel read it",
					      s->d->filename, s->member);
			return not_found(s, sel, idx);
		}
		if (ar != ARCHIVE_OK && ar != ARCHIVE_WARN)
			return arch_err(s, idx ? "damaged tar after its first members"
					       : "damaged tar header");
		if (idx >= GCE_MAX_MEMBERS)
			return kl_err(-EUCLEAN, "%s: no '%s' in the first %d members", s->d->filename,
				      sel, GCE_MAX_MEMBERS);
		name = kl_la.archive_entry_pathname(e);
		if (!name)
			return kl_err(-EUCLEAN, "%s: tar member %zu has no name", s->d->filename, idx);
		name = blk_tar_member_name(name);
		reg = kl_la.archive_entry_filetype(e) == AE_IFREG;
		if (s->member ? idx == s->member_index : reg && strcmp(name, sel) == 0)
			break;
		if (!s->member && reg)
			remember(s, name);
		if (kl_la.archive_read_data_skip(s->a) != ARCHIVE_OK)
			return arch_err(s, "damaged tar member");
	}
	if (!s->member) {
		s->member = kl_strdup(blk_tar_member_name(kl_la.archive_entry_pathname(e)));
		s->member_index = idx;
		if (!s->member)
			return -ENOMEM;
		/* 64 PiB: past anything a disk is, and far from offset overflows */
		if (kl_la.archive_entry_size(e) < 0 || kl_la.archive_entry_size(e) > (1LL << 56))
			return kl_err(-EUCLEAN, "%s: '%s' has no size or an impossible one (%lld)",
				      s->d->filename, s->member, (long long)kl_la.archive_entry_size(e));
		s->d->size = (uint64_t)kl_la.archive_entry_size(e);
		KL_TRY(load_map(s, e));
	} else if ((uint64_t)kl_la.archive_entry_size(e) != s->d->size) {
		return kl_err(-EIO, "%s: '%s' changed size on a second read: the file changed "
				    "while keel read it",
			      s->d->filename, s->member);
	}
	return 0;
}

/* The member's extent map: the tar's sparse map, checked, or one extent. */
static int load_map(struct gce_state *s, struct archive_entry *e)
{
	int n = kl_la.archive_entry_sparse_count(e);
	uint64_t end = 0;
	la_int64_t o, l;

	if (n <= 0) {
		if (s->d->size == 0)
			return 0;
		s->map = kl_malloc(sizeof(*s->map));
		if (!s->map)
			return -ENOMEM;
		s->map[0] = (struct gce_ext){ 0, s->d->size };
		s->nmap = 1;
		s->data_end = s->stored = s->d->size;
		return 0;
	}
	if ((unsigned)n > GCE_MAX_EXTENTS)
		return kl_err(-EUCLEAN, "%s: '%s' has a sparse map of %d entries (at most %u)",
			      s->d->filename, s->member, n, GCE_MAX_EXTENTS);
	s->map = kl_calloc((size_t)n, sizeof(*s->map));
	if (!s->map)
		return -ENOMEM;
	kl_la.archive_entry_sparse_reset(e);
	while (kl_la.archive_entry_sparse_next(e, &o, &l) == ARCHIVE_OK) {
		if (o < 0 || l < 0 || (uint64_t)o < end ||
		    !kl_range_ok((uint64_t)o, (uint64_t)l, s->d->size))
			return kl_err(-EUCLEAN, "%s: '%s': sparse map entry %zu (%lld bytes at "
						"%lld) overlaps the one before it or runs past the "
						"file's size (%llu)",
				      s->d->filename, s->member, s->nmap, (long long)l, (long long)o,
				      (unsigned long long)s->d->size);
		if (l == 0)
			continue;
		if (s->nmap && s->map[s->nmap - 1].off + s->map[s->nmap - 1].len == (uint64_t)o)
			s->map[s->nmap - 1].len += (uint64_t)l;
		else if (s->nmap < (size_t)n)
			s->map[s->nmap++] = (struct gce_ext){ (uint64_t)o, (uint64_t)l };
		end = (uint64_t)o + (uint64_t)l;
		s->stored += (uint64_t)l;
	}
	s->data_end = end;
	return 0;
}

/* ------------------------------------------------------------------ reading */

/* Read the rest of the archive and check the stream's trailer. */
static int finish(struct gce_state *s)
{
	struct archive_entry *e;
	const void *b;
	size_t n;
	la_int64_t o;
	int ar;

	if (s->verified)
		return 0;
	while (!s->data_eof && (ar = kl_la.archive_read_data_block(s->a, &b, &n, &o)) != ARCHIVE_EOF) {
		if (ar != ARCHIVE_OK && ar != ARCHIVE_WARN)
			return arch_err(s, "damaged tar data");
	}
	s->data_eof = true;
	s->blk = NULL;
	s->blen = 0;
	while ((ar = kl_la.archive_read_next_header(s->a, &e)) != ARCHIVE_EOF) {
		if ((ar != ARCHIVE_OK && ar != ARCHIVE_WARN) ||
		    kl_la.archive_read_data_skip(s->a) != ARCHIVE_OK)
			return arch_err(s, "damaged tar after the disk");
	}
	/* libarchive stops at the end-of-archive blocks; the stream may go on */
	for (;;) {
		ssize_t r = next_tar_bytes(s);

		if (r < 0)
			return (int)r;
		if (r == 0)
			break;
	}
	s->verified = true;
	return 0;
}

/* Move the cursor to the block holding off, or past off when it is in a gap. */
static int seek_block(struct gce_state *s, uint64_t off)
{
	if (s->blk ? off < s->boff : off < s->next_min)
		KL_TRY(stream_open(s)); /* behind the cursor: from the start again */
	while (!(s->blk && off < s->boff + s->blen)) {
		const void *b;
		size_t n;
		la_int64_t o;
		int ar;

		if (s->data_eof)
			return 0;
		ar = kl_la.archive_read_data_block(s->a, &b, &n, &o);
		if (ar == ARCHIVE_EOF) {
			s->data_eof = true;
			s->blk = NULL;
			return 0;
		}
		if (ar != ARCHIVE_OK && ar != ARCHIVE_WARN)
			return arch_err(s, "damaged tar data");
		if (o < 0 || (uint64_t)o < s->next_min || !kl_range_ok((uint64_t)o, n, s->d->size))
			return kl_err(-EUCLEAN, "%s: '%s': a data block (%zu bytes at %lld) lies "
						"outside the file or before the one read last",
				      s->d->filename, s->member, n, (long long)o);
		s->blk = b;
		s->blen = n;
		s->boff = (uint64_t)o;
		s->next_min = (uint64_t)o + n;
		if (s->boff > off)
			return 0; /* off lies in a gap the archive leaves unwritten */
	}
	return 0;
}

static int gce_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	struct gce_state *s = d->priv;
	uint8_t *p = buf;
	uint64_t end = off + len;

	if (off < s->head_len) {
		size_t n = (size_t)KL_MIN(end, (uint64_t)s->head_len) - (size_t)off;

		memcpy(p, s->head + off, n);
		p += n;
		off += n;
	}
	while (off < end) {
		uint64_t n;

		KL_TRY(seek_block(s, off));
		if (s->blk && off >= s->boff && off < s->boff + s->blen) {
			n = KL_MIN(end - off, s->boff + s->blen - off);
			memcpy(p, s->blk + (off - s->boff), (size_t)n);
		} else {
			/* never written in the archive: reads as zeros, as tar extracts it */
			n = s->blk ? KL_MIN(end, s->boff) - off : end - off;
			memset(p, 0, (size_t)n);
		}
		p += n;
		off += n;
	}
	/* the last bytes go out only after the trailer checked out */
	if (end >= s->data_end)
		KL_TRY(finish(s));
	return 0;
}

static int gce_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	struct gce_state *s = d->priv;
	size_t lo = 0, hi = s->nmap;

	(void)len;
	/* first extent ending after off */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (s->map[mid].off + s->map[mid].len <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	e->host_off = BLK_NO_HOST_OFFSET;
	e->flags = 0;
	if (lo < s->nmap && s->map[lo].off <= off) {
		e->type = BLK_DATA;
		e->len = s->map[lo].off + s->map[lo].len - off;
	} else {
		e->type = BLK_ZERO;
		e->len = (lo < s->nmap ? s->map[lo].off : d->size) - off;
	}
	return 0;
}

/* ------------------------------------------------------------------ open */

static void gce_close(struct blk_dev *d)
{
	struct gce_state *s = d->priv;

	stream_close(s);
	if (s->z_ready)
		inflateEnd(&s->z);
	kl_free(s->in);
	kl_free(s->out);
	kl_free(s->member);
	kl_free(s->map);
	kl_free(s->head);
	for (size_t i = 0; i < s->nseen; i++)
		kl_free(s->seen[i]);
	memset(s, 0, sizeof(*s));
}

/* A member that is itself an image would be served as its container's bytes. */
static int refuse_image_member(struct gce_state *s)
{
	struct blk_probe_buf pb = { 0 };
	uint8_t *head;
	const struct blk_driver *best = NULL;
	int score = 0, rc;

	if (s->nmap == 0 || s->map[0].off != 0)
		return 0; /* starts with a hole: no image magic there */
	pb.head_len = (size_t)KL_MIN(s->map[0].len, (uint64_t)BLK_PROBE_HEAD);
	head = kl_malloc(pb.head_len);
	if (!head)
		return -ENOMEM;
	rc = gce_pread(s->d, 0, head, pb.head_len);
	pb.head = head;
	if (rc == 0) {
		s->head = head; /* served from here from now on */
		s->head_len = pb.head_len;
	}
	pb.file_size = s->d->size;
	pb.filename = s->member;
	if (rc == 0)
		best = blk_probe_best(&pb, &score);
	if (rc < 0)
		kl_free(head);
	KL_TRY(rc);
	/* a magic-number match, not raw's "could be anything" */
	if (best && score >= 50)
		return kl_err(-EMEDIUMTYPE, "%s: '%s' in the archive is a %s image, not a raw disk: "
					    "extract it (tar xf) and open it as what it is",
			      s->d->filename, s->member, best->name);
	return 0;
}

static int gce_open(struct blk_dev *d, const struct blk_open_opts *o)
{
	struct gce_state *s = d->priv;
	uint8_t magic[3];
	ssize_t n;
	int rc;

	(void)o;
	if (!d->read_only)
		return kl_err(-EROFS, "%s: tar packages are read-only in keel (convert from them)",
			      d->filename);
	KL_TRY(kl_archive_load());
	s->d = d;
	s->one_pass = getenv("KEEL_GCE_ONE_PASS") != NULL;
	/* a pipe's size is known at its end (fill_in) */
	s->file_size = UINT64_MAX;
	rc = kl_io_is_stream(d->file) ? 0 : kl_io_size(d->file, &s->file_size);
	if (rc < 0)
		goto err;
	n = kl_io_pread(d->file, 0, magic, sizeof(magic));
	s->gzip = n == (ssize_t)sizeof(magic) && memcmp(magic, "\x1f\x8b\x08", 3) == 0;
	s->in = s->gzip ? kl_malloc(GCE_IN_BUF) : NULL;
	s->out = kl_malloc(GCE_OUT_BUF);
	if ((s->gzip && !s->in) || !s->out) {
		rc = -ENOMEM;
		goto err;
	}
	rc = stream_open(s);
	if (rc == 0)
		rc = refuse_image_member(s);
	if (rc < 0)
		goto err;
	return 0;
err:
	gce_close(d);
	return rc;
}

static int gce_info(struct blk_dev *d, struct blk_info *out)
{
	struct gce_state *s = d->priv;
	char sz[32];

	out->subformat = kl_strdup(s->gzip ? "gzip-compressed tar" : "tar");
	if (!out->subformat)
		return -ENOMEM;
	KL_TRY(blk_info_add_kv(out, "member", "%s", s->member));
	kl_format_size(s->stored, sz, sizeof(sz));
	KL_TRY(blk_info_add_kv(out, "stored data", "%s in %zu extent%s (the rest is sparse)", sz,
			       s->nmap, s->nmap == 1 ? "" : "s"));
	KL_TRY(blk_info_add_kv(out, "access", "sequential (a read behind the last one starts the "
					      "stream over)"));
	return 0;
}

/* Check = read the whole stream: the tar's structure and the gzip CRC-32. */
static int gce_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	struct gce_state *s = d->priv;
	int rc;

	(void)flags;
	r->checked = 1;
	rc = s->verified ? 0 : seek_block(s, d->size);
	if (rc == 0)
		rc = finish(s);
	if (rc == -EUCLEAN || rc == -EIO) {
		r->corruptions++;
		blk_check_msg(r, "%s", kl_errmsg());
		return 0;
	}
	KL_TRY(rc);
	blk_check_msg(r, "'%s' and the rest of the %s read through: no damage%s", s->member,
		      s->gzip ? "gzip stream" : "tar", s->gzip ? " (CRC-32 and length match)" : "");
	return 0;
}

const struct blk_driver blk_gce_driver = {
	.name = "gce",
	.ext = "tar.gz",
	.desc = "raw disk in a tar or tar.gz (GCE export); -O gce writes one",
	.instance_size = sizeof(struct gce_state),
	.flags = BLK_DRV_SELECT | BLK_DRV_SEQUENTIAL,
	.probe = gce_probe,
	.open = gce_open,
	.pread = gce_pread,
	.block_status = gce_block_status,
	.close = gce_close,
	.info = gce_info,
	.check = gce_check,
};
