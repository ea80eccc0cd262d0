/*
 * lib/io.c - the one I/O seam (SQLite's VFS in miniature) and its faults.
 *
 * Normal operation is a thin layer over pread/pwrite/fsync with EINTR and
 * short-transfer handling. When a test arms a fault rule (kl_fault_arm),
 * every mutating call becomes a numbered "I/O point" that can fail, and in
 * crash modes every write not yet covered by a sync is journaled with its
 * pre-image so that kl_fault_settle() can undo, keep or tear it, the way
 * SQLite's crash VFS (src/test6.c) models a power cut.
 */
#define _GNU_SOURCE
#include "kl.h"
#include "kl_int.h"

#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct kl_file {
	int fd;
	unsigned flags;
	char *name;
	struct kl_io_seg *segs; /* a window (kl_io_open_window), or NULL */
	size_t nsegs;
	uint64_t wsize;		/* bytes of the window */
	bool dio;		/* dio_fd is open (KL_O_DIRECT took effect) */
	int dio_fd;		/* the same file opened O_DIRECT, for bulk writes */
	uint32_t dio_mem;	/* buffer address alignment direct I/O needs */
	uint32_t dio_off;	/* offset and length alignment direct I/O needs */
	struct kl_stream *stream; /* a pipe read forward, or NULL */
	struct kl_wcomb *wc;	/* write combining (kl_io_combine), or NULL */
};

/*
 * Write combining: a file whose writer appends many small pieces back to
 * back (qcow2's compressed clusters, 20-40 KiB each, packed byte after
 * byte) gets them gathered here and written in large pieces. Those go
 * direct where the file allows it (every piece but the first after a
 * break starts on an alignment boundary: the partial block at the end
 * stays here until more follows), where 24,000 buffered pwrites of a
 * 2 GiB disk's clusters cost a copy each, a page-cache walk per 4 KiB
 * and the writeback the final fsync waits for. A full buffer is written
 * behind, by a thread of the file's own, while the caller fills the
 * other one: a direct write blocks for its device time, and the caller
 * (convert's committing thread) also computes.
 *
 * The bytes reach the file in exactly the order the caller wrote them:
 * anything other than the next append (a write elsewhere, a read of the
 * range, sync, truncate, size, seek, close) first waits for the write
 * behind and writes out what is gathered. A failed write is sticky:
 * every later write-out, sync and read of gathered bytes fails with it,
 * since the file no longer holds what its writer believes.
 */
struct kl_wcomb {
	uint8_t *buf;	/* filling */
	uint8_t *spare;	/* the other buffer: being written behind, or free */
	size_t cap;
	uint64_t off;	/* file offset of buf[0] */
	size_t len;	/* bytes gathered */
	uint64_t eof;	/* the file's size, gathered bytes included (UINT64_MAX: not known) */
	bool threaded;	/* a write-behind thread runs */
	bool behind;	/* spare[0, io_len) went to it at io_off, not waited for yet */
	uint64_t io_off;
	size_t io_len;
	pthread_t tid;
	pthread_mutex_t lock; /* guards busy, stop, and err and msg while it runs */
	pthread_cond_t cv;
	bool busy;	/* the thread has a write to do or is doing it */
	bool stop;
	int err;	/* sticky: the first failed write */
	char msg[256];	/* ...and what it said */
};

static int wc_flush(struct kl_file *f);
static bool wc_overlaps(const struct kl_file *f, uint64_t off, uint64_t len);
static void wc_free(struct kl_file *f);

/*
 * A pipe (FIFO, socket, "-" for standard input) cannot be read at an
 * offset. Such a file opened read-only is read forward: a read ahead of
 * what was consumed skips the bytes between, and the first KL_STREAM_HEAD
 * bytes stay readable again (probing reads the head, then the driver
 * reads it once more). Anything else behind the position is -ESPIPE.
 * Only sequential formats (BLK_DRV_SEQUENTIAL) accept such a file, and
 * each pipe can be opened once per process: a second open would go on
 * from wherever the first left off.
 */
#define KL_STREAM_HEAD (1u << 20)

struct kl_stream {
	uint8_t *head;
	uint64_t pos; /* bytes consumed from the pipe */
	bool eof;
};

/* Writes shorter than this stay buffered even when aligned: metadata. */
#define KL_DIO_MIN (128u << 10)

/* ------------------------------------------------------------ fault state */

struct kl_journal {
	int fd;		  /* dup of the writer's fd, owned here */
	uint64_t off;
	size_t len;
	uint8_t *pre;	  /* bytes before the write (zeros past old EOF) */
	uint64_t base_size; /* file size at the last sync */
	struct kl_journal *next;
};

static struct {
	bool on;	/* any rule armed: the one branch the fast path pays */
	bool fired;
	bool crashed;
	bool from_env;
	struct kl_fault_rule rule;
	uint64_t points;
	uint64_t mallocs;
	uint64_t rng;
	struct kl_journal *journal; /* newest first */
	pthread_mutex_t lock;
} fs = { .lock = PTHREAD_MUTEX_INITIALIZER };

static uint64_t fault_rand(void)
{
	/* xorshift64*: deterministic per seed, good enough to pick subsets */
	fs.rng ^= fs.rng >> 12;
	fs.rng ^= fs.rng << 25;
	fs.rng ^= fs.rng >> 27;
	return fs.rng * 2685821657736338717ULL;
}

static bool is_crash_mode(void)
{
	return fs.rule.mode == KL_FAULT_CRASH || fs.rule.mode == KL_FAULT_CRASH_TORN;
}

static void journal_free_all(void)
{
	struct kl_journal *j = fs.journal, *n;

	for (; j; j = n) {
		n = j->next;
		close(j->fd);
		free(j->pre);
		free(j);
	}
	fs.journal = NULL;
}

void kl_fault_reset(void)
{
	pthread_mutex_lock(&fs.lock);
	journal_free_all();
	fs.on = false;
	fs.fired = false;
	fs.crashed = false;
	memset(&fs.rule, 0, sizeof(fs.rule));
	fs.points = 0;
	fs.mallocs = 0;
	pthread_mutex_unlock(&fs.lock);
}

void kl_fault_arm(const struct kl_fault_rule *r)
{
	kl_fault_reset();
	pthread_mutex_lock(&fs.lock);
	fs.rule = *r;
	if (fs.rule.err == 0)
		fs.rule.err = EIO;
	fs.rng = r->seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
	if (fs.rng == 0)
		fs.rng = 1;
	fs.on = true;
	pthread_mutex_unlock(&fs.lock);
}

uint64_t kl_fault_points(void)
{
	return __atomic_load_n(&fs.points, __ATOMIC_RELAXED);
}

uint64_t kl_fault_mallocs(void)
{
	return __atomic_load_n(&fs.mallocs, __ATOMIC_RELAXED);
}

bool kl_fault_fired(void)
{
	return fs.fired;
}

bool kl_fault_malloc_hit(void)
{
	uint64_t n;

	if (__builtin_expect(!fs.on, 1))
		return false;
	n = __atomic_add_fetch(&fs.mallocs, 1, __ATOMIC_RELAXED);
	if (fs.rule.malloc_at == 0)
		return false;
	if (n == fs.rule.malloc_at || (fs.rule.malloc_persist && n > fs.rule.malloc_at)) {
		fs.fired = true;
		return true;
	}
	return false;
}

/* Keep the sectors of a write that no later kept write covers already. */
struct kept_range {
	int fd;
	uint64_t off, len;
};

static bool range_kept(struct kept_range *k, size_t nk, int fd, uint64_t off)
{
	for (size_t i = 0; i < nk; i++)
		if (k[i].fd == fd && off >= k[i].off && off < k[i].off + k[i].len)
			return true;
	return false;
}

static void restore_sector(struct kl_journal *j, uint64_t soff, uint64_t slen)
{
	ssize_t rc = pwrite(j->fd, j->pre + (soff - j->off), slen, (off_t)soff);
	(void)rc;
}

void kl_fault_settle(void)
{
	struct kept_range *kept = NULL;
	size_t nkept = 0, cap = 0;
	struct kl_journal *j;

	pthread_mutex_lock(&fs.lock);
	/* newest first: a later kept write wins over an earlier dropped one */
	for (j = fs.journal; j; j = j->next) {
		unsigned choice = (unsigned)(fault_rand() % 3);
		bool torn = fs.rule.mode == KL_FAULT_CRASH_TORN && choice == 2;

		if (!torn && choice == 2)
			choice = fault_rand() & 1;
		for (uint64_t s = j->off; s < j->off + j->len;) {
			uint64_t next = (s & ~511ULL) + 512;
			uint64_t slen = KL_MIN(next, j->off + j->len) - s;
			bool keep = torn ? (fault_rand() & 1) : (choice == 0);

			if (range_kept(kept, nkept, j->fd, s)) {
				s += slen;
				continue;
			}
			if (keep) {
				if (nkept == cap) {
					cap = cap ? cap * 2 : 64;
					kept = realloc(kept, cap * sizeof(*kept));
					if (!kept)
						abort(); /* test-only path */
				}
				kept[nkept++] = (struct kept_range){ j->fd, s, slen };
			} else {
				restore_sector(j, s, slen);
			}
			s += slen;
		}
	}
	/* the file ends at its synced size or at the last kept byte past it */
	for (j = fs.journal; j; j = j->next) {
		uint64_t end = j->base_size;
		struct stat st;

		for (size_t i = 0; i < nkept; i++)
			if (kept[i].fd == j->fd)
				end = KL_MAX(end, kept[i].off + kept[i].len);
		if (fstat(j->fd, &st) == 0 && (uint64_t)st.st_size > end) {
			int rc = ftruncate(j->fd, (off_t)end);
			(void)rc;
		}
	}
	free(kept);
	journal_free_all();
	fs.on = false;
	pthread_mutex_unlock(&fs.lock);
}

static void fire(void)
{
	fs.fired = true;
	if (is_crash_mode()) {
		fs.crashed = true;
		if (fs.from_env) {
			/* CLI tests: the process dies here, as the machine would */
			pthread_mutex_unlock(&fs.lock);
			kl_fault_settle();
			_exit(99);
		}
	}
}

/* Count an I/O point and decide its fate: 0 to go ahead, or -errno. */
static int fault_point(void)
{
	int rc = 0;
	uint64_t n;

	if (__builtin_expect(!fs.on, 1))
		return 0;
	pthread_mutex_lock(&fs.lock);
	if (fs.crashed) {
		pthread_mutex_unlock(&fs.lock);
		return -EIO;
	}
	n = ++fs.points;
	if (fs.rule.at && (n == fs.rule.at || (fs.rule.mode == KL_FAULT_ERROR_PERSIST && n > fs.rule.at))) {
		fire();
		rc = is_crash_mode() ? -EIO : -fs.rule.err;
	}
	pthread_mutex_unlock(&fs.lock);
	return rc;
}

static bool fault_crashed(void)
{
	return __builtin_expect(fs.on, 0) && fs.crashed;
}

int kl_io_event(const char *name)
{
	int rc = 0;

	if (__builtin_expect(!fs.on, 1))
		return 0;
	pthread_mutex_lock(&fs.lock);
	if (fs.crashed) {
		rc = -EIO;
	} else if (fs.rule.event && strcmp(fs.rule.event, name) == 0 && !fs.fired) {
		fire();
		rc = is_crash_mode() ? -EIO : -fs.rule.err;
	}
	pthread_mutex_unlock(&fs.lock);
	if (rc)
		kl_err(rc, "injected fault at event %s", name);
	return rc;
}

/* Record the pre-image of a write for a later power-cut (crash modes only). */
static void journal_write(struct kl_file *f, uint64_t off, size_t len)
{
	struct kl_journal *j;
	struct stat st;
	ssize_t n;

	if (__builtin_expect(!fs.on, 1) || !is_crash_mode())
		return;
	pthread_mutex_lock(&fs.lock);
	j = calloc(1, sizeof(*j));
	if (!j || !(j->pre = calloc(1, len ? len : 1)))
		abort(); /* test-only path */
	j->fd = dup(f->fd);
	j->off = off;
	j->len = len;
	n = pread(f->fd, j->pre, len, (off_t)off);
	(void)n; /* past EOF stays zero */
	/* base size: the size at the last sync of this file, or now */
	j->base_size = fstat(f->fd, &st) == 0 ? (uint64_t)st.st_size : 0;
	for (struct kl_journal *o = fs.journal; o; o = o->next) {
		struct stat so;

		if (fstat(o->fd, &so) == 0 && fstat(f->fd, &st) == 0 && so.st_ino == st.st_ino &&
		    so.st_dev == st.st_dev) {
			j->base_size = o->base_size;
			break;
		}
	}
	j->next = fs.journal;
	fs.journal = j;
	pthread_mutex_unlock(&fs.lock);
}

/* A sync makes this file's journaled writes durable. */
static void journal_synced(struct kl_file *f)
{
	struct kl_journal **pp, *j;
	struct stat st, so;

	if (__builtin_expect(!fs.on, 1) || !is_crash_mode())
		return;
	if (fstat(f->fd, &st) != 0)
		return;
	pthread_mutex_lock(&fs.lock);
	for (pp = &fs.journal; (j = *pp);) {
		if (fstat(j->fd, &so) == 0 && so.st_ino == st.st_ino && so.st_dev == st.st_dev) {
			*pp = j->next;
			close(j->fd);
			free(j->pre);
			free(j);
		} else {
			pp = &j->next;
		}
	}
	pthread_mutex_unlock(&fs.lock);
}

void kl_fault_from_env(void)
{
	const char *e = getenv("KEEL_FAULT");
	const char *seed = getenv("KEEL_FAULT_SEED");
	struct kl_fault_rule r = { 0 };
	static char event[128];
	const char *at;

	if (!e || !*e)
		return;
	if (strncmp(e, "error@", 6) == 0)
		r.mode = KL_FAULT_ERROR;
	else if (strncmp(e, "crash@", 6) == 0)
		r.mode = KL_FAULT_CRASH;
	else if (strncmp(e, "torn@", 5) == 0)
		r.mode = KL_FAULT_CRASH_TORN;
	else if (strncmp(e, "count", 5) == 0)
		r.mode = KL_FAULT_NONE;
	else
		return;
	at = strchr(e, '@');
	if (at && strncmp(at + 1, "ev:", 3) == 0) {
		snprintf(event, sizeof(event), "%s", at + 4);
		r.event = event;
	} else if (at) {
		r.at = strtoull(at + 1, NULL, 10);
	}
	r.seed = seed ? strtoull(seed, NULL, 10) : 1;
	kl_fault_arm(&r);
	fs.from_env = true;
}

/* ------------------------------------------------------------ files */

/*
 * KL_O_DIRECT: a second descriptor on the same file, opened O_DIRECT,
 * carries the large aligned writes (a converter's data runs) straight from
 * the caller's buffer to the device. Buffered writes of the same volume
 * cost a copy into fresh page-cache pages (the largest single cost of a
 * conversion here, more than reading the source) plus the writeback the
 * final fsync waits for, and they evict the page cache of everything else
 * on the host. Metadata and anything unaligned keep using the buffered
 * descriptor; the kernel keeps the two coherent (a direct write flushes
 * and drops cached pages of its range), and fdatasync on either covers
 * the file. Where O_DIRECT is refused (tmpfs, some FUSE and network
 * filesystems) the file simply stays buffered.
 */
static void dio_setup(struct kl_file *f, const char *path)
{
	uint32_t mem = 4096, off = 4096;
	struct stat a, b;
	int fd;

#ifdef STATX_DIOALIGN
	struct statx sx;

	if (statx(f->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
	    (sx.stx_mask & STATX_DIOALIGN)) {
		if (sx.stx_dio_offset_align == 0)
			return; /* the filesystem says: no direct I/O here */
		mem = KL_MAX(sx.stx_dio_mem_align, 1u);
		off = sx.stx_dio_offset_align;
	}
#endif
	if (!KL_IS_POW2(mem) || !KL_IS_POW2(off) || off > KL_DIO_MIN)
		return;
	do {
		fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
	} while (fd < 0 && errno == EINTR);
	if (fd < 0)
		return;
	/* the path must still name the file we opened a moment ago */
	if (fstat(f->fd, &a) < 0 || fstat(fd, &b) < 0 || a.st_dev != b.st_dev ||
	    a.st_ino != b.st_ino || !S_ISREG(b.st_mode)) {
		close(fd);
		return;
	}
	f->dio_fd = fd;
	f->dio_mem = mem;
	f->dio_off = off;
	f->dio = true;
}

static void dio_stop(struct kl_file *f)
{
	if (f->dio)
		close(f->dio_fd);
	f->dio = false;
}

/* How many bytes of this write may go direct: all, a leading part, or 0. */
static size_t dio_len(const struct kl_file *f, const void *buf, uint64_t off, size_t len)
{
	size_t n;

	if (!f->dio || len < KL_DIO_MIN || (uintptr_t)buf % f->dio_mem || off % f->dio_off)
		return 0;
	n = len - len % f->dio_off;
	return n >= KL_DIO_MIN ? n : 0;
}

bool kl_io_first_time(struct kl_io_seen *set, struct kl_file *f)
{
	struct stat st;
	bool first = true;

	if (fstat(f->fd, &st) != 0)
		return true;
	pthread_mutex_lock(&set->lock);
	for (size_t i = 0; i < set->n; i++)
		if (set->id[i].dev == (uint64_t)st.st_dev && set->id[i].ino == (uint64_t)st.st_ino)
			first = false;
	if (first && set->n < KL_ARRAY_SIZE(set->id)) {
		set->id[set->n].dev = (uint64_t)st.st_dev;
		set->id[set->n].ino = (uint64_t)st.st_ino;
		set->n++;
	}
	pthread_mutex_unlock(&set->lock);
	return first;
}

static int stream_setup(struct kl_file *f)
{
	static struct kl_io_seen pipes = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct stat st;

	if (fstat(f->fd, &st) < 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		return 0;
	if (!kl_io_first_time(&pipes, f))
		return kl_err(-ESPIPE, "%s is a pipe this command already reads: it cannot be "
				       "opened twice",
			      f->name);
	f->stream = kl_calloc(1, sizeof(*f->stream));
	if (f->stream)
		f->stream->head = kl_malloc(KL_STREAM_HEAD);
	if (!f->stream || !f->stream->head)
		return -ENOMEM;
	return 0;
}

bool kl_io_is_stream(const struct kl_file *f)
{
	return f->stream != NULL;
}

static int (*io_interrupted)(void);

void kl_io_set_interrupt(int (*interrupted)(void))
{
	io_interrupted = interrupted;
}

/*
 * Wait until the pipe has data (or its end), asking io_interrupted every
 * 100 ms: the signal that sets the flag may have gone to another thread,
 * and a blocked read() would wait for the writer however long it stalls.
 */
static int stream_wait(struct kl_file *f)
{
	struct pollfd pfd = { .fd = f->fd, .events = POLLIN };

	for (;;) {
		int r = poll(&pfd, 1, 100);

		if (io_interrupted && io_interrupted())
			return kl_err(-EINTR, "%s: interrupted by signal %d while waiting for the "
					      "pipe", f->name, io_interrupted());
		if (r > 0 || (r < 0 && errno != EINTR))
			return 0; /* data, its end, or an error read() will report */
	}
}

/* Consume up to len bytes of the pipe into buf (NULL: discard); the count, 0 at its end. */
static ssize_t stream_read(struct kl_file *f, uint8_t *buf, size_t len)
{
	struct kl_stream *st = f->stream;
	uint8_t scratch[4096];
	ssize_t n;

	if (st->eof)
		return 0;
	if (!buf)
		len = KL_MIN(len, sizeof(scratch));
	do {
		KL_TRY(stream_wait(f));
		n = read(f->fd, buf ? buf : scratch, len);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return kl_err(-errno, "%s: read at %llu: %s", f->name, (unsigned long long)st->pos,
			      strerror(errno));
	if (n == 0) {
		st->eof = true;
		return 0;
	}
	if (st->pos < KL_STREAM_HEAD)
		memcpy(st->head + st->pos, buf ? buf : scratch,
		       (size_t)KL_MIN((uint64_t)n, KL_STREAM_HEAD - st->pos));
	st->pos += (uint64_t)n;
	return n;
}

static ssize_t stream_pread(struct kl_file *f, uint64_t off, uint8_t *buf, size_t len)
{
	struct kl_stream *st = f->stream;
	uint64_t kept = KL_MIN(st->pos, (uint64_t)KL_STREAM_HEAD);
	size_t done = 0;

	if (off < st->pos) {
		if (off >= kept || off + KL_MIN((uint64_t)len, st->pos - off) > kept)
			return kl_err(-ESPIPE, "%s is a pipe: it cannot be read again at %llu "
					       "(already read to %llu)",
				      f->name, (unsigned long long)off,
				      (unsigned long long)st->pos);
		done = (size_t)KL_MIN((uint64_t)len, st->pos - off);
		memcpy(buf, st->head + off, done);
	}
	while (off + done > st->pos) { /* skip ahead */
		ssize_t n = stream_read(f, NULL, (size_t)KL_MIN(off + done - st->pos, (uint64_t)SIZE_MAX));

		if (n < 0)
			return n;
		if (n == 0)
			break;
	}
	while (done < len && off + done == st->pos) {
		ssize_t n = stream_read(f, buf + done, len - done);

		if (n < 0)
			return n;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	memset(buf + done, 0, len - done);
	return (ssize_t)done;
}

int kl_io_open(const char *path, unsigned flags, struct kl_file **out)
{
	int oflags = O_CLOEXEC;
	struct kl_file *f;
	int fd;

	*out = NULL;
	if (fault_crashed())
		return kl_err(-EIO, "%s: I/O after simulated crash", path);
	oflags |= (flags & KL_O_RDWR) ? O_RDWR : O_RDONLY;
	if (flags & KL_O_CREAT)
		oflags |= O_CREAT;
	if (flags & KL_O_EXCL)
		oflags |= O_EXCL;
	if (flags & KL_O_TRUNC)
		oflags |= O_TRUNC;
	do {
		/* "-": standard input, for reading only */
		fd = open(strcmp(path, "-") == 0 && !(flags & KL_O_RDWR) ? "/dev/stdin" : path,
			  oflags, 0644);
	} while (fd < 0 && errno == EINTR);
	if (fd < 0)
		return kl_err(-errno, "%s: %s", path, strerror(errno));
	f = kl_calloc(1, sizeof(*f));
	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	f->fd = fd;
	f->flags = flags;
	f->name = kl_strdup(path);
	if (!f->name) {
		close(fd);
		kl_free(f);
		return -ENOMEM;
	}
	if (!(flags & KL_O_RDWR)) {
		int rc = stream_setup(f);

		if (rc < 0) {
			kl_io_close(f);
			return rc;
		}
	}
	if ((flags & (KL_O_DIRECT | KL_O_RDWR)) == (KL_O_DIRECT | KL_O_RDWR))
		dio_setup(f, path);
	*out = f;
	return 0;
}

int kl_io_fdopen(int fd, const char *name, unsigned flags, struct kl_file **out)
{
	struct kl_file *f = kl_calloc(1, sizeof(*f));

	*out = NULL;
	if (!f)
		return -ENOMEM;
	f->fd = fd;
	f->flags = flags;
	f->name = kl_strdup(name);
	if (!f->name) {
		kl_free(f);
		return -ENOMEM;
	}
	*out = f;
	return 0;
}

int kl_io_open_window(struct kl_file *base, const struct kl_io_seg *segs, size_t nsegs,
		      const char *name, struct kl_file **out)
{
	struct kl_file *f;
	uint64_t total = 0, bsize;

	*out = NULL;
	KL_TRY(kl_io_size(base, &bsize));
	for (size_t i = 0; i < nsegs; i++) {
		if (!kl_range_ok(segs[i].off, segs[i].len, bsize) ||
		    kl_add_overflow(total, segs[i].len, &total))
			return kl_err(-EUCLEAN, "%s: window segment %zu (%llu bytes at %llu) lies "
						"outside the file (%llu bytes)",
				      name, i, (unsigned long long)segs[i].len,
				      (unsigned long long)segs[i].off, (unsigned long long)bsize);
	}
	f = kl_calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->fd = fcntl(base->fd, F_DUPFD_CLOEXEC, 0);
	f->name = kl_strdup(name);
	f->segs = kl_calloc(nsegs ? nsegs : 1, sizeof(*segs));
	if (f->fd < 0 || !f->name || !f->segs) {
		int rc = f->fd < 0 ? kl_err(-errno, "%s: dup: %s", name, strerror(errno)) : -ENOMEM;

		if (f->fd >= 0)
			close(f->fd);
		kl_free(f->name);
		kl_free(f->segs);
		kl_free(f);
		return rc;
	}
	if (nsegs)
		memcpy(f->segs, segs, nsegs * sizeof(*segs));
	f->nsegs = nsegs;
	f->wsize = total;
	f->flags = KL_O_RDONLY;
	*out = f;
	return 0;
}

void kl_io_close(struct kl_file *f)
{
	if (!f)
		return;
	/* callers sync (and hear of errors) before they close; this is the last chance */
	if (f->wc) {
		if (!fault_crashed())
			(void)wc_flush(f);
		wc_free(f);
	}
	dio_stop(f);
	close(f->fd);
	kl_free(f->name);
	kl_free(f->segs);
	if (f->stream)
		kl_free(f->stream->head);
	kl_free(f->stream);
	kl_free(f);
}

static ssize_t window_pread(struct kl_file *f, uint64_t off, void *buf, size_t len)
{
	uint64_t base = 0;
	size_t done = 0;

	for (size_t i = 0; i < f->nsegs && done < len; i++) {
		const struct kl_io_seg *s = &f->segs[i];
		uint64_t pos = off + done;

		if (pos < base + s->len) {
			size_t n = (size_t)KL_MIN((uint64_t)(len - done), base + s->len - pos);
			ssize_t r = pread(f->fd, (uint8_t *)buf + done, n,
					  (off_t)(s->off + (pos - base)));

			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return kl_err(-errno, "%s: read at %llu: %s", f->name,
					      (unsigned long long)pos, strerror(errno));
			if (r == 0)
				break; /* the file shrank under us */
			done += (size_t)r;
			if ((size_t)r < n) {
				i--; /* short read inside the segment: go on in it */
				continue;
			}
		}
		base += s->len;
	}
	if (done < len)
		memset((uint8_t *)buf + done, 0, len - done);
	return (ssize_t)done;
}

ssize_t kl_io_pread(struct kl_file *f, uint64_t off, void *buf, size_t len)
{
	size_t done = 0;

	if (fault_crashed())
		return kl_err(-EIO, "%s: read after simulated crash", f->name);
	if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off)
		return kl_err(-EINVAL, "%s: read offset %llu out of range", f->name,
			      (unsigned long long)off);
	if (f->segs)
		return window_pread(f, off, buf, len);
	if (f->stream)
		return stream_pread(f, off, buf, len);
	if (wc_overlaps(f, off, len))
		KL_TRY(wc_flush(f));
	while (done < len) {
		ssize_t n = pread(f->fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return kl_err(-errno, "%s: read at %llu: %s", f->name,
				      (unsigned long long)(off + done), strerror(errno));
		}
		if (n == 0) {
			memset((uint8_t *)buf + done, 0, len - done);
			break;
		}
		done += (size_t)n;
	}
	return (ssize_t)done;
}

int kl_io_pread_full(struct kl_file *f, uint64_t off, void *buf, size_t len, const char *what)
{
	ssize_t n = kl_io_pread(f, off, buf, len);

	if (n < 0)
		return (int)n;
	if ((size_t)n < len)
		return kl_err(-EUCLEAN, "%s: %s at offset %llu (%zu bytes) lies past end of file",
			      f->name, what, (unsigned long long)off, len);
	return 0;
}

/*
 * Writes through the page cache go in pieces that do not cross a 1 MiB
 * boundary. The kernel sizes a page-cache folio by the write that creates
 * it, so a 2 MiB-aligned 2 MiB write takes a 2 MiB (order-9) folio, and on
 * a VM whose balloon reports free memory to the host (virtio-balloon free
 * page reporting: Firecracker, many cloud and CI VMs) free order-9 blocks
 * are exactly the ones the host has taken back: every byte copied into
 * them faults on the host. Measured on such a VM (2 vCPU, 24 GiB, after
 * 13 s idle), writing 1.5 GB with dd: bs=2M 2.8-3.0 s, bs=1M 0.71-0.75 s,
 * bs=512K 0.71-0.74 s; keel convert -t unsafe qcow2->vhdx (2 MiB-aligned
 * blocks) 2.5-2.7 s against qemu-img's 1.0-1.1 s, whose writes happen to
 * sit 1 MiB off. Smaller folios come from the lower-order free lists,
 * which the host has not taken back. Elsewhere the split costs one more
 * syscall per MiB. It is no general cure, though: on another day, with
 * 1 s (not 13 s) between freeing and writing, the same 1.5 GB dd took
 * 0.37-3.9 s at bs=1M, 2M and 4M alike, depending only on what the
 * balloon had handed back by then (NOTE of stop 19).
 */
#define KL_IO_BUFFERED_PIECE ((size_t)1 << 20)

static size_t buffered_piece(uint64_t off, size_t len)
{
	return KL_MIN(len, KL_IO_BUFFERED_PIECE - (size_t)(off % KL_IO_BUFFERED_PIECE));
}

static int raw_pwrite(struct kl_file *f, uint64_t off, const void *buf, size_t len)
{
	size_t done = 0;
	int rc;

	if (f->segs)
		return kl_err(-EROFS, "%s: a file window is read-only", f->name);
	if ((rc = fault_point()) < 0)
		return kl_err(rc, "%s: write at %llu: %s (injected)", f->name,
			      (unsigned long long)off, strerror(-rc));
	if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off)
		return kl_err(-EINVAL, "%s: write offset %llu out of range", f->name,
			      (unsigned long long)off);
	journal_write(f, off, len);
	while (done < len) {
		const uint8_t *p = (const uint8_t *)buf + done;
		size_t want = dio_len(f, p, off + done, len - done);
		int fd = want ? f->dio_fd : f->fd;
		ssize_t n;

		if (!want)
			want = buffered_piece(off + done, len - done);
		n = pwrite(fd, p, want, (off_t)(off + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EINVAL && fd != f->fd) {
				/* alignment rules stricter than announced: go buffered */
				dio_stop(f);
				continue;
			}
			return kl_err(-errno, "%s: write at %llu: %s", f->name,
				      (unsigned long long)(off + done), strerror(errno));
		}
		done += (size_t)n;
	}
	return 0;
}

/* Remember the first failed write-out and what it said (under lock while the thread runs). */
static int wc_failed(struct kl_wcomb *wc, int rc)
{
	if (rc < 0 && !wc->err) {
		wc->err = rc;
		snprintf(wc->msg, sizeof(wc->msg), "%s", kl_errmsg());
	}
	return rc;
}

static void *wc_thread(void *arg)
{
	struct kl_file *f = arg;
	struct kl_wcomb *wc = f->wc;

	pthread_mutex_lock(&wc->lock);
	for (;;) {
		int rc;

		while (!wc->busy && !wc->stop)
			pthread_cond_wait(&wc->cv, &wc->lock);
		if (!wc->busy)
			break;
		pthread_mutex_unlock(&wc->lock);
		rc = raw_pwrite(f, wc->io_off, wc->spare, wc->io_len);
		pthread_mutex_lock(&wc->lock);
		wc_failed(wc, rc);
		wc->busy = false;
		pthread_cond_broadcast(&wc->cv);
	}
	pthread_mutex_unlock(&wc->lock);
	return NULL;
}

/* Wait for the write behind; its error, if it ever failed. */
static int wc_wait(struct kl_file *f)
{
	struct kl_wcomb *wc = f->wc;
	int rc;

	if (!wc->threaded)
		return wc->err ? kl_err(wc->err, "%s", wc->msg) : 0;
	pthread_mutex_lock(&wc->lock);
	while (wc->busy)
		pthread_cond_wait(&wc->cv, &wc->lock);
	rc = wc->err;
	pthread_mutex_unlock(&wc->lock);
	wc->behind = false;
	return rc ? kl_err(rc, "%s", wc->msg) : 0;
}

/* Write out all that is gathered, after what is being written behind. */
static int wc_flush(struct kl_file *f)
{
	struct kl_wcomb *wc = f->wc;

	if (!wc)
		return 0;
	KL_TRY(wc_wait(f));
	if (!wc->len)
		return 0;
	/* no write runs behind now: no lock needed */
	KL_TRY(wc_failed(wc, raw_pwrite(f, wc->off, wc->buf, wc->len)));
	wc->len = 0;
	return 0;
}

/*
 * The buffer is full: hand it over up to its last alignment boundary to
 * be written behind, and go on in the other one with the rest.
 */
static int wc_drain(struct kl_file *f)
{
	struct kl_wcomb *wc = f->wc;
	uint64_t align, end = wc->off + wc->len, cut;
	uint8_t *full = wc->buf;
	size_t n;

	KL_TRY(wc_wait(f)); /* and only then read f->dio, which a failed write may clear */
	align = f->dio ? f->dio_off : 4096;
	cut = end - end % align;
	if (cut <= wc->off)
		return wc_flush(f);
	n = (size_t)(cut - wc->off);
	memcpy(wc->spare, full + n, wc->len - n);
	wc->buf = wc->spare;
	wc->spare = full;
	wc->len -= n;
	if (!wc->threaded) {
		uint64_t at = wc->off;

		wc->off = cut;
		return wc_failed(wc, raw_pwrite(f, at, full, n));
	}
	wc->io_off = wc->off;
	wc->io_len = n;
	wc->behind = true;
	pthread_mutex_lock(&wc->lock);
	wc->busy = true;
	pthread_mutex_unlock(&wc->lock);
	pthread_cond_broadcast(&wc->cv);
	wc->off = cut;
	return 0;
}

static bool wc_overlaps(const struct kl_file *f, uint64_t off, uint64_t len)
{
	const struct kl_wcomb *wc = f->wc;
	uint64_t start;

	if (!wc || (!wc->len && !wc->behind))
		return false;
	/* what is being written behind counts too: wait for it */
	start = wc->behind ? wc->io_off : wc->off;
	return off < wc->off + wc->len && start < off + len;
}

static void wc_free(struct kl_file *f)
{
	struct kl_wcomb *wc = f->wc;

	if (wc->threaded) {
		pthread_mutex_lock(&wc->lock);
		wc->stop = true;
		pthread_cond_broadcast(&wc->cv);
		pthread_mutex_unlock(&wc->lock);
		pthread_join(wc->tid, NULL);
		pthread_mutex_destroy(&wc->lock);
		pthread_cond_destroy(&wc->cv);
	}
	kl_free(wc->buf);
	kl_free(wc->spare);
	kl_free(wc);
	f->wc = NULL;
}

int kl_io_combine(struct kl_file *f, size_t bytes)
{
	struct kl_wcomb *wc;
	struct stat st;
	int rc;

	if (!bytes) {
		if (!f->wc)
			return 0;
		rc = wc_flush(f);
		wc_free(f);
		return rc;
	}
	if (f->wc || f->segs || !(f->flags & KL_O_RDWR))
		return 0;
	wc = kl_calloc(1, sizeof(*wc));
	bytes = KL_ALIGN_UP(KL_MAX(bytes, (size_t)2 * KL_DIO_MIN), (size_t)4096);
	if (wc) {
		wc->buf = kl_aligned_alloc(bytes);
		wc->spare = kl_aligned_alloc(bytes);
	}
	if (!wc || !wc->buf || !wc->spare) {
		if (wc) {
			kl_free(wc->buf);
			kl_free(wc->spare);
		}
		kl_free(wc);
		return -ENOMEM;
	}
	wc->cap = bytes;
	wc->eof = fstat(f->fd, &st) == 0 && S_ISREG(st.st_mode) ? (uint64_t)st.st_size : UINT64_MAX;
	f->wc = wc;
	pthread_mutex_init(&wc->lock, NULL);
	pthread_cond_init(&wc->cv, NULL);
	/* without a thread, the full buffer is written on the spot */
	wc->threaded = pthread_create(&wc->tid, NULL, wc_thread, f) == 0;
	if (!wc->threaded) {
		pthread_mutex_destroy(&wc->lock);
		pthread_cond_destroy(&wc->cv);
	}
	return 0;
}

/* Gather len bytes of buf (NULL: zeros) at off, the end of what is gathered. */
static int wc_append(struct kl_file *f, uint64_t off, const void *buf, size_t len)
{
	struct kl_wcomb *wc = f->wc;

	if (wc->len + len > wc->cap)
		KL_TRY(wc_drain(f));
	if (!wc->len)
		wc->off = off;
	if (buf)
		memcpy(wc->buf + wc->len, buf, len);
	else
		memset(wc->buf + wc->len, 0, len);
	wc->len += len;
	return 0;
}

int kl_io_pwrite(struct kl_file *f, uint64_t off, const void *buf, size_t len)
{
	struct kl_wcomb *wc = f->wc;
	uint64_t end;

	if (!wc)
		return raw_pwrite(f, off, buf, len);
	if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off)
		return kl_err(-EINVAL, "%s: write offset %llu out of range", f->name,
			      (unsigned long long)off);
	end = wc->off + wc->len;
	if (wc->len && off > end && end >= wc->eof && off - end <= wc->cap / 8) {
		/*
		 * A little past the end of the file (qcow2: a plain cluster
		 * after the last one holding compressed data): the gap reads
		 * as zeros whether or not it is written, so it is gathered
		 * as zeros and the stream goes on unbroken.
		 */
		KL_TRY(wc_append(f, end, NULL, (size_t)(off - end)));
	} else if (wc->len && off != end) {
		KL_TRY(wc_flush(f)); /* not the next append: keep the order */
	}
	if (len >= wc->cap / 2) {
		KL_TRY(wc_flush(f));
		KL_TRY(raw_pwrite(f, off, buf, len));
	} else {
		KL_TRY(wc_append(f, off, buf, len));
	}
	if (wc->eof != UINT64_MAX)
		wc->eof = KL_MAX(wc->eof, off + len);
	return 0;
}

bool kl_io_direct(const struct kl_file *f)
{
	return f->dio;
}

ssize_t kl_io_read(struct kl_file *f, void *buf, size_t len)
{
	for (;;) {
		ssize_t n;

		if (fault_crashed())
			return kl_err(-EIO, "%s: read after simulated crash", f->name);
		n = read(f->fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return kl_err(-errno, "%s: read: %s", f->name, strerror(errno));
		return n;
	}
}

int kl_io_write(struct kl_file *f, const void *buf, size_t len)
{
	size_t done = 0;
	int rc;

	KL_TRY(wc_flush(f));
	if (f->wc)
		f->wc->eof = UINT64_MAX; /* wherever the descriptor's position was */
	if ((rc = fault_point()) < 0)
		return kl_err(rc, "%s: write: %s (injected)", f->name, strerror(-rc));
	while (done < len) {
		ssize_t n = write(f->fd, (const uint8_t *)buf + done, len - done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return kl_err(-errno, "%s: write: %s", f->name, strerror(errno));
		}
		done += (size_t)n;
	}
	return 0;
}

int kl_io_sync(struct kl_file *f)
{
	int rc;

	KL_TRY(wc_flush(f));
	if ((rc = fault_point()) < 0)
		return kl_err(rc, "%s: fsync: %s (injected)", f->name, strerror(-rc));
	if (f->flags & KL_O_NOSYNC)
		return 0;
	if (fdatasync(f->fd) < 0 && errno != EINVAL && errno != EROFS)
		return kl_err(-errno, "%s: fsync: %s", f->name, strerror(errno));
	journal_synced(f);
	return 0;
}

void kl_io_writeback(struct kl_file *f)
{
	if (f->wc && wc_flush(f) < 0)
		return; /* sticky: kl_io_sync reports it */
	if (!f->segs && (f->flags & (KL_O_RDWR | KL_O_NOSYNC)) == KL_O_RDWR && !fault_crashed())
		(void)sync_file_range(f->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

int kl_io_truncate(struct kl_file *f, uint64_t size)
{
	int rc;

	if (f->segs)
		return kl_err(-EROFS, "%s: a file window is read-only", f->name);
	KL_TRY(wc_flush(f));
	if ((rc = fault_point()) < 0)
		return kl_err(rc, "%s: truncate: %s (injected)", f->name, strerror(-rc));
	if (ftruncate(f->fd, (off_t)size) < 0)
		return kl_err(-errno, "%s: truncate to %llu: %s", f->name,
			      (unsigned long long)size, strerror(errno));
	if (f->wc)
		f->wc->eof = size;
	return 0;
}

int kl_io_punch(struct kl_file *f, uint64_t off, uint64_t len)
{
	int rc;

	if (f->segs)
		return kl_err(-EROFS, "%s: a file window is read-only", f->name);
	KL_TRY(wc_flush(f));
	if ((rc = fault_point()) < 0)
		return kl_err(rc, "%s: punch: %s (injected)", f->name, strerror(-rc));
	journal_write(f, off, (size_t)len);
	if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
		return -errno == -EOPNOTSUPP ? -ENOTSUP : -errno;
	return 0;
}

void kl_io_discard_hint(struct kl_file *f, uint64_t off, uint64_t len)
{
	if (fault_crashed())
		return;
	if (wc_overlaps(f, off, len) && wc_flush(f) < 0)
		return;
	if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
		return; /* only space goes unreclaimed */
}

int kl_io_size(struct kl_file *f, uint64_t *size)
{
	struct stat st;

	if (f->segs) {
		*size = f->wsize;
		return 0;
	}
	if (f->stream)
		return kl_err(-ESPIPE, "%s is a pipe: its size is not known before its end",
			      f->name);
	KL_TRY(wc_flush(f));
	if (fstat(f->fd, &st) < 0)
		return kl_err(-errno, "%s: stat: %s", f->name, strerror(errno));
	if (S_ISBLK(st.st_mode)) {
		off_t end = lseek(f->fd, 0, SEEK_END);

		if (end < 0)
			return kl_err(-errno, "%s: size: %s", f->name, strerror(errno));
		*size = (uint64_t)end;
		return 0;
	}
	*size = (uint64_t)st.st_size;
	return 0;
}

static int seek_common(struct kl_file *f, uint64_t off, int whence, uint64_t *out)
{
	off_t r;

	if (f->segs) {
		/* a window is all data: its holes, if any, are the base file's business */
		if (off >= f->wsize)
			return -ENXIO;
		*out = whence == SEEK_DATA ? off : f->wsize;
		return 0;
	}
	KL_TRY(wc_flush(f));
	r = lseek(f->fd, (off_t)off, whence);

	if (r < 0) {
		if (errno == ENXIO)
			return -ENXIO;
		return -errno;
	}
	*out = (uint64_t)r;
	return 0;
}

int kl_io_seek_data(struct kl_file *f, uint64_t off, uint64_t *out)
{
	return seek_common(f, off, SEEK_DATA, out);
}

int kl_io_seek_hole(struct kl_file *f, uint64_t off, uint64_t *out)
{
	return seek_common(f, off, SEEK_HOLE, out);
}

int kl_io_fd(const struct kl_file *f)
{
	return f->fd;
}

const char *kl_io_name(const struct kl_file *f)
{
	return f->name;
}

bool kl_io_writable(const struct kl_file *f)
{
	return (f->flags & KL_O_RDWR) != 0;
}

int kl_io_identity(struct kl_file *f, uint64_t *dev, uint64_t *ino)
{
	struct stat st;

	if (fstat(f->fd, &st) < 0)
		return kl_err(-errno, "%s: stat: %s", f->name, strerror(errno));
	*dev = (uint64_t)st.st_dev;
	*ino = (uint64_t)st.st_ino;
	return 0;
}

int kl_io_rename(const char *from, const char *to)
{
	struct stat st;
	int rc;

	if ((rc = fault_point()) < 0)
		return kl_err(rc, "rename %s -> %s: %s (injected)", from, to, strerror(-rc));
	/*
	 * Commits replace a file with its new version. Over a device node, a
	 * FIFO or a socket the rename would succeed and silently swap that
	 * node for a regular file (keel convert ... /dev/sdb once did); refuse.
	 */
	if (lstat(to, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
		return kl_err(-EEXIST, "%s exists and is not a regular file: not replaced", to);
	if (rename(from, to) < 0)
		return kl_err(-errno, "rename %s -> %s: %s", from, to, strerror(errno));
	return 0;
}

int kl_io_unlink(const char *path)
{
	if (fault_crashed())
		return -EIO;
	if (unlink(path) < 0 && errno != ENOENT)
		return kl_err(-errno, "unlink %s: %s", path, strerror(errno));
	return 0;
}

int kl_io_sync_dir(const char *path)
{
	char *copy = kl_strdup(path);
	int fd, rc;

	if (!copy)
		return -ENOMEM;
	if ((rc = fault_point()) < 0) {
		kl_free(copy);
		return kl_err(rc, "sync directory of %s (injected)", path);
	}
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	kl_free(copy);
	if (fd < 0)
		return kl_err(-errno, "open directory of %s: %s", path, strerror(errno));
	if (fsync(fd) < 0 && errno != EINVAL) {
		rc = -errno;
		close(fd);
		return kl_err(rc, "fsync directory of %s: %s", path, strerror(-rc));
	}
	close(fd);
	return 0;
}

int kl_io_lock(struct kl_file *f, bool wait)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	int rc;

	do {
		rc = fcntl(f->fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl);
	} while (rc < 0 && errno == EINTR && wait);
	if (rc == 0)
		return 0;
	if (errno == EAGAIN || errno == EACCES)
		return kl_err(-EBUSY, "%s is in use by another keel writer", f->name);
	return kl_err(-errno, "%s: lock: %s", f->name, strerror(errno));
}

bool kl_io_writer_active(struct kl_file *f)
{
	/*
	 * qemu's file locking (block/file-posix.c) takes a shared OFD lock on
	 * byte 100 + n for each permission n it holds; n = 1 is "write". A
	 * write-lock probe of that byte conflicts with it, and with the
	 * whole-file write lock of a keel writer. F_OFD_GETLK only asks.
	 */
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 101, .l_len = 1 };

	if (f->segs || fcntl(f->fd, F_OFD_GETLK, &fl) < 0)
		return false;
	return fl.l_type != F_UNLCK;
}
