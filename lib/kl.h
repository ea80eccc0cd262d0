/*
 * lib/kl.h - small shared pieces every keel module uses: errors, memory,
 * the one I/O seam (with its test-time fault injection), byte-order helpers,
 * CRC-32C, a JSON writer, option lists and a progress meter.
 *
 * This is the only header of lib/ that other modules include.
 */
#ifndef KEEL_KL_H
#define KEEL_KL_H

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define KL_VERSION "0.1.0"

#define KL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KL_MAX(a, b) ((a) > (b) ? (a) : (b))
#define KL_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define KL_DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define KL_ALIGN_UP(n, a) (((n) + (a) - 1) & ~((uint64_t)(a) - 1))
#define KL_IS_POW2(x) ((x) != 0 && ((x) & ((x) - 1)) == 0)

#if defined(__GNUC__)
#define KL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define KL_UNUSED __attribute__((unused))
#else
#define KL_PRINTF(f, a)
#define KL_UNUSED
#endif

/* ------------------------------------------------------------------ errors
 *
 * Failing functions return a negative errno. The code that detects the
 * failure records a message with kl_err(); callers add context on the way
 * up with kl_err_prefix(). The slot is thread-local, so convert and send
 * workers each keep their own.
 *
 * Codes with a fixed meaning in keel:
 *   -EUCLEAN  corrupt metadata          -EBADMSG  checksum/authentication failure
 *   -ENOTSUP  unsupported feature       -ESTALE   wrong parent image
 *   -ENOSPC, -EIO, -ENOMEM              -EINVAL   caller mistake
 */
#ifndef EUCLEAN
#define EUCLEAN 117
#endif

/* Records "fmt" as the current message and returns code (negative errno). */
int kl_err(int code, const char *fmt, ...) KL_PRINTF(2, 3);
/* Prepends "fmt: " to the current message; returns code. */
int kl_err_prefix(int code, const char *fmt, ...) KL_PRINTF(2, 3);
/* The current message, or kl_strerror(code) of the last code when none was set. */
const char *kl_errmsg(void);
/* Forget the current message. */
void kl_err_clear(void);
/* Words for a code: "corrupt metadata", "checksum mismatch", ... */
const char *kl_strerror(int code);

/* Debug logging of failure sites, enabled by KEEL_DEBUG=1 in the environment. */
void kl_debug_site(const char *file, int line, int code);
/* A "keel: debug: ..." line when KEEL_DEBUG is on (work worth counting in tests). */
void kl_debug(const char *fmt, ...) KL_PRINTF(1, 2);

#define KL_TRY(expr)                                                              \
	do {                                                                      \
		int kl_try_rc_ = (expr);                                          \
		if (kl_try_rc_ < 0) {                                             \
			kl_debug_site(__FILE__, __LINE__, kl_try_rc_);            \
			return kl_try_rc_;                                        \
		}                                                                 \
	} while (0)

#define KL_CHECK(cond, code, ...)                                                 \
	do {                                                                      \
		if (!(cond)) {                                                    \
			kl_debug_site(__FILE__, __LINE__, (code));                \
			return kl_err((code), __VA_ARGS__);                       \
		}                                                                 \
	} while (0)

/* ------------------------------------------------------------------ memory
 *
 * All allocations go through these so tests can fail the Nth one.
 * kl_malloc and friends set an error message ("out of memory ...") when
 * they fail. kl_free accepts NULL.
 */
void *kl_malloc(size_t n);
void *kl_calloc(size_t nmemb, size_t size);
void *kl_realloc(void *p, size_t n);
/* Page-aligned allocation for I/O buffers; free with kl_free. */
void *kl_aligned_alloc(size_t n);
char *kl_strdup(const char *s);
char *kl_strndup(const char *s, size_t n);
char *kl_asprintf(const char *fmt, ...) KL_PRINTF(1, 2);
/* Where scratch files go: prefer when set and not empty, else $TMPDIR, else /tmp. */
const char *kl_tmpdir(const char *prefer);
/*
 * A fresh private directory (mkdtemp, mode 0700) named TAG.XXXXXX in
 * kl_tmpdir(prefer), its path in *out. kl_scratch_remove deletes the files
 * in it (one level) and the directory, and frees the name; NULL is a no-op.
 */
int kl_scratch_dir(const char *prefer, const char *tag, char **out);
void kl_scratch_remove(char *dir);
void kl_free(void *p);
/* Overwrite a secret before it is freed. */
void kl_wipe(void *p, size_t n);

/* ------------------------------------------------------------------ I/O seam
 *
 * Every file operation in keel goes through kl_io_*, the way SQLite routes
 * everything through its VFS: this is what lets tests fail the Nth write,
 * fail at a named event, or simulate a power cut.
 *
 * Contract (from SQLite's xRead): kl_io_pread reads exactly len bytes or
 * returns an error; reading past EOF is a short read, which zero-fills the
 * rest of the buffer and returns the number of bytes actually present.
 * Nothing is durable until kl_io_sync returns 0.
 */
struct kl_file;

#define KL_O_RDONLY 0x0
#define KL_O_RDWR 0x1
#define KL_O_CREAT 0x2	/* create if missing */
#define KL_O_EXCL 0x4	/* fail if it exists */
#define KL_O_TRUNC 0x8
/*
 * Large aligned writes bypass the page cache (O_DIRECT) where the
 * filesystem allows it; everything else stays buffered. A hint: reads,
 * results and durability rules are the same either way.
 */
#define KL_O_DIRECT 0x10
/*
 * kl_io_sync and kl_io_writeback do nothing (qemu's cache=unsafe): for
 * outputs the user chose to leave in the page cache. The simulated power
 * cut of the fault layer then keeps none of the file's writes, as a real
 * one might.
 */
#define KL_O_NOSYNC 0x20

int kl_io_open(const char *path, unsigned flags, struct kl_file **out);
/* Wrap an already open descriptor (stdin/stdout/socket); takes ownership. */
int kl_io_fdopen(int fd, const char *name, unsigned flags, struct kl_file **out);
void kl_io_close(struct kl_file *f);
/*
 * A read-only view of part of an open file: the concatenation of segs
 * (byte ranges of base, each inside it) reads as a file of its own, with
 * offsets from 0. Used to open an image stored inside another file (a disk
 * member of an uncompressed OVA/tar, possibly split into chunks) without
 * extracting it. The view has its own descriptor (a dup of base's), so
 * base may be closed first. Writes fail with -EROFS; SEEK_DATA/SEEK_HOLE
 * report the whole view as data. name is for messages.
 */
struct kl_io_seg {
	uint64_t off;
	uint64_t len;
};
int kl_io_open_window(struct kl_file *base, const struct kl_io_seg *segs, size_t nsegs,
		      const char *name, struct kl_file **out);
/* Returns bytes read (< len only at EOF, rest zero-filled) or -errno. */
ssize_t kl_io_pread(struct kl_file *f, uint64_t off, void *buf, size_t len);
/* Reads exactly len bytes; a short read is -EUCLEAN naming what was read. */
int kl_io_pread_full(struct kl_file *f, uint64_t off, void *buf, size_t len, const char *what);
int kl_io_pwrite(struct kl_file *f, uint64_t off, const void *buf, size_t len);
/* Stream reads/writes for pipes and sockets (no offsets). */
/*
 * Gather back-to-back kl_io_pwrite appends of this (writable) file in a
 * buffer of about `bytes` and write them in large, aligned pieces (direct
 * with KL_O_DIRECT), a full buffer by a thread of its own while the next
 * fills. Order and results are unchanged: any other access through f
 * writes out the gathered bytes first. Their write errors surface at the
 * next write-out (kl_io_sync at the latest) and stay: every later one
 * fails too. Other handles on the same file do not see the bytes before
 * they are written out. 0 stops it, writing them out; a second call
 * while it is on does nothing.
 */
int kl_io_combine(struct kl_file *f, size_t bytes);
ssize_t kl_io_read(struct kl_file *f, void *buf, size_t len);
int kl_io_write(struct kl_file *f, const void *buf, size_t len);
int kl_io_sync(struct kl_file *f);
/*
 * Hint: start writing f's dirty pages to the device now, without waiting
 * (sync_file_range WRITE). Promises nothing about durability; a later
 * kl_io_sync is still needed, but then has less to do. Never fails.
 */
void kl_io_writeback(struct kl_file *f);
int kl_io_truncate(struct kl_file *f, uint64_t size);
/* Deallocate a byte range (punch a hole); -ENOTSUP where impossible. */
int kl_io_punch(struct kl_file *f, uint64_t off, uint64_t len);
/*
 * Give a range that holds nothing anyone reads back to the filesystem. A
 * hint: no I/O point for fault injection, failures are ignored.
 */
void kl_io_discard_hint(struct kl_file *f, uint64_t off, uint64_t len);
int kl_io_size(struct kl_file *f, uint64_t *size);
/* SEEK_DATA/SEEK_HOLE: next data/hole at or after off; -ENXIO past EOF/no data. */
int kl_io_seek_data(struct kl_file *f, uint64_t off, uint64_t *out);
int kl_io_seek_hole(struct kl_file *f, uint64_t off, uint64_t *out);
int kl_io_fd(const struct kl_file *f);
/* KL_O_DIRECT took effect: bulk writes to f bypass the page cache. */
bool kl_io_direct(const struct kl_file *f);
const char *kl_io_name(const struct kl_file *f);
bool kl_io_writable(const struct kl_file *f);
/*
 * A read waiting on a pipe asks interrupted() every 100 ms and fails with
 * -EINTR once it returns nonzero (a signal number): the commands' signal
 * flag, so that Ctrl-C stops a command whose input pipe has stalled.
 */
void kl_io_set_interrupt(int (*interrupted)(void));
/* A pipe opened read-only: read forward only (see lib/io.c); kl_io_size fails. */
bool kl_io_is_stream(const struct kl_file *f);
/*
 * A process-wide set of files (by device and inode) for "only once" rules:
 * kl_io_first_time records f and says whether it was new. Declare the set
 * static, with .lock = PTHREAD_MUTEX_INITIALIZER; it remembers 16 files.
 */
struct kl_io_seen {
	pthread_mutex_t lock;
	struct {
		uint64_t dev, ino;
	} id[16];
	size_t n;
};
bool kl_io_first_time(struct kl_io_seen *set, struct kl_file *f);
/*
 * Exclusive writer lock on the file (an OFD lock, so it belongs to this
 * open, not the process, and the kernel drops it when the holder dies: a
 * killed writer never leaves a stale lock). wait: block until free;
 * otherwise -EBUSY at once.
 */
int kl_io_lock(struct kl_file *f, bool wait);
/*
 * Does another open file description hold f for writing: a keel writer
 * (kl_io_lock), or qemu with write permission (a running VM, qemu-img,
 * qemu-io)? Only advisory locks can tell, so a writer that takes none
 * goes unseen.
 */
bool kl_io_writer_active(struct kl_file *f);
/* Same file as (dev, ino); for loop detection in parent chains. */
int kl_io_identity(struct kl_file *f, uint64_t *dev, uint64_t *ino);

/* Namespace operations, also through the seam. */
int kl_io_rename(const char *from, const char *to);
int kl_io_unlink(const char *path);
/* fsync the directory holding path, so a rename in it is durable. */
int kl_io_sync_dir(const char *path);

/*
 * A named point in a metadata update ("kf.header_write"). Returns 0, or a
 * negative code when a test rule fails the operation here. Callers must
 * propagate the result: KL_TRY(kl_io_event("kf.commit")).
 */
int kl_io_event(const char *name);

/* ----- fault injection (used by tests; a no-op branch otherwise) -----
 *
 * Every kl_io_pwrite, kl_io_sync, kl_io_truncate and kl_io_rename is an
 * "I/O point", numbered from 1 since kl_fault_reset(). A rule triggers at
 * point N (or at the named event) and either
 *   KL_FAULT_ERROR: that call fails with errno (once, or from then on), or
 *   KL_FAULT_CRASH: the world stops: the call and every later one fail with
 *      -EIO, and writes not yet synced are each kept, dropped or (with
 *      torn) cut at a random 512-byte boundary, as after a power cut.
 * Writes are only journaled for crash simulation while kl_fault_arm() with
 * a crash mode is active, so the normal path pays one predictable branch.
 */
enum kl_fault_mode {
	KL_FAULT_NONE = 0,
	KL_FAULT_ERROR,	   /* fail the Nth point once */
	KL_FAULT_ERROR_PERSIST, /* fail the Nth point and all later ones */
	KL_FAULT_CRASH,	   /* power cut at the Nth point, unsynced writes kept or dropped */
	KL_FAULT_CRASH_TORN,   /* as CRASH, and some writes land partly */
};

struct kl_fault_rule {
	enum kl_fault_mode mode;
	uint64_t at;	    /* I/O point number (1-based); 0 = use event */
	const char *event;  /* named event, or NULL */
	int err;	    /* errno for ERROR modes (positive), default EIO */
	uint64_t seed;	    /* randomness for crash modes */
	uint64_t malloc_at; /* fail the Nth allocation (1-based), 0 = never */
	bool malloc_persist;
};

void kl_fault_reset(void);
void kl_fault_arm(const struct kl_fault_rule *r);
/* Number of I/O points and allocations since reset. */
uint64_t kl_fault_points(void);
uint64_t kl_fault_mallocs(void);
/* True once a rule has fired. */
bool kl_fault_fired(void);
/*
 * After a crash rule fired: apply the power-cut to the files (drop/tear
 * unsynced writes) and disarm. Open handles stay failed; close them.
 */
void kl_fault_settle(void);
/* Parse KEEL_FAULT ("crash@17", "error@write:3", "torn@ev:kf.commit") for CLI tests. */
void kl_fault_from_env(void);

/* ------------------------------------------------------------------ byte order */
static inline uint16_t get_le16(const void *p)
{
	const uint8_t *b = p;
	return (uint16_t)(b[0] | b[1] << 8);
}
static inline uint32_t get_le32(const void *p)
{
	const uint8_t *b = p;
	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static inline uint64_t get_le64(const void *p)
{
	const uint8_t *b = p;
	return (uint64_t)get_le32(b) | (uint64_t)get_le32(b + 4) << 32;
}
static inline uint16_t get_be16(const void *p)
{
	const uint8_t *b = p;
	return (uint16_t)(b[0] << 8 | b[1]);
}
static inline uint32_t get_be32(const void *p)
{
	const uint8_t *b = p;
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}
static inline uint64_t get_be64(const void *p)
{
	const uint8_t *b = p;
	return (uint64_t)get_be32(b) << 32 | get_be32(b + 4);
}
static inline void put_le16(void *p, uint16_t v)
{
	uint8_t *b = p;
	b[0] = (uint8_t)v;
	b[1] = (uint8_t)(v >> 8);
}
static inline void put_le32(void *p, uint32_t v)
{
	uint8_t *b = p;
	b[0] = (uint8_t)v;
	b[1] = (uint8_t)(v >> 8);
	b[2] = (uint8_t)(v >> 16);
	b[3] = (uint8_t)(v >> 24);
}
static inline void put_le64(void *p, uint64_t v)
{
	put_le32(p, (uint32_t)v);
	put_le32((uint8_t *)p + 4, (uint32_t)(v >> 32));
}
static inline void put_be16(void *p, uint16_t v)
{
	uint8_t *b = p;
	b[0] = (uint8_t)(v >> 8);
	b[1] = (uint8_t)v;
}
static inline void put_be32(void *p, uint32_t v)
{
	uint8_t *b = p;
	b[0] = (uint8_t)(v >> 24);
	b[1] = (uint8_t)(v >> 16);
	b[2] = (uint8_t)(v >> 8);
	b[3] = (uint8_t)v;
}
static inline void put_be64(void *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32((uint8_t *)p + 4, (uint32_t)v);
}

/* Overflow-checked arithmetic: true on overflow. */
static inline bool kl_add_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
	return __builtin_add_overflow(a, b, r);
}
static inline bool kl_mul_overflow(uint64_t a, uint64_t b, uint64_t *r)
{
	return __builtin_mul_overflow(a, b, r);
}
/* True when [off, off+len) lies inside [0, limit) without overflow. */
static inline bool kl_range_ok(uint64_t off, uint64_t len, uint64_t limit)
{
	return off <= limit && len <= limit - off;
}

/* True when all n bytes are zero. Fast on aligned buffers. */
bool kl_is_zero(const void *buf, size_t n);

/* ------------------------------------------------------------------ checksums */
/* CRC-32C (Castagnoli), as VHDX and the .keel format use; hardware when present. */
uint32_t kl_crc32c(uint32_t crc, const void *buf, size_t len);

/* ------------------------------------------------------------------ compression
 *
 * One-shot and thread-safe (per-thread contexts, freed at thread exit), for
 * encoders that run on many threads. Each returns the compressed length,
 * 0 when the result does not fit in cap, or -errno.
 */
/* zlib-wrapped deflate (RFC 1950) via libdeflate; level -1 = 6, up to 12. */
ssize_t kl_zlib_compress(int level, const void *in, size_t len, void *out, size_t cap);
/* A zstd frame at level. */
ssize_t kl_zstd_compress(int level, const void *in, size_t len, void *out, size_t cap);
/* Raw deflate (RFC 1951) via zlib with a 2^window_bits window (qcow2: 12). */
ssize_t kl_deflate_raw_compress(int level, int window_bits, const void *in, size_t len, void *out,
				size_t cap);

/* ------------------------------------------------------------------ UUIDs */
/* Random (version 4); KEEL_FAKE_UUID=SEED makes the sequence repeatable for tests. */
void kl_uuid_generate(uint8_t out[16]);
/* Canonical text form, 36 characters + NUL. */
void kl_uuid_format(const uint8_t u[16], char out[37]);
bool kl_uuid_is_null(const uint8_t u[16]);

/* ------------------------------------------------------------------ key derivation
 * (lib/kdf.c, OpenSSL's). kl_scrypt fails rather than use more than
 * KL_SCRYPT_MAX_MEM: 1 GiB of scrypt memory (128 * r * N), which every
 * keel format allows at most, plus OpenSSL's small extras.
 */
#define KL_SCRYPT_MAX_MEM ((1ULL << 30) + (2ULL << 20))
int kl_scrypt(const void *pass, size_t pass_len, const uint8_t *salt, size_t salt_len, uint64_t n,
	      uint32_t r, uint32_t p, uint8_t *out, size_t out_len);
int kl_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
		   const char *info, uint8_t *out, size_t out_len);

/* ------------------------------------------------------------------ parsing */
/* "64K", "1.5G", "4096": bytes; accepts K M G T P (powers of 1024) and a B suffix. */
int kl_parse_size(const char *s, uint64_t *out);
int kl_parse_u64(const char *s, uint64_t *out);
/* Human size with binary units, e.g. "1.5 GiB". */
void kl_format_size(uint64_t n, char *out, size_t outlen);

/*
 * Option lists "k=v,k2=v2" (qemu-img -o style; ",," escapes a comma).
 * Consumers take the keys they know with kl_opts_get*, which marks them
 * used; kl_opts_check_unused then names any key nobody understood.
 */
struct kl_opts;
int kl_opts_parse(const char *s, struct kl_opts **inout);
int kl_opts_set(struct kl_opts **inout, const char *key, const char *val);
const char *kl_opts_get(struct kl_opts *o, const char *key);
/* As kl_opts_get, without marking the key used. */
const char *kl_opts_peek(const struct kl_opts *o, const char *key);
int kl_opts_get_size(struct kl_opts *o, const char *key, uint64_t *out, bool *found);
int kl_opts_get_bool(struct kl_opts *o, const char *key, bool *out, bool *found);
int kl_opts_check_unused(const struct kl_opts *o, const char *context);
void kl_opts_free(struct kl_opts *o);

/* ------------------------------------------------------------------ JSON writer
 *
 * Tiny streaming writer for --output json; handles commas and escaping.
 * Usage: kl_json_begin(&j, stdout); kl_json_obj_open(&j, NULL);
 *        kl_json_str(&j, "format", "qcow2"); ... kl_json_obj_close(&j); kl_json_end(&j);
 */
struct kl_json {
	FILE *fp;
	int depth;
	bool need_comma[32];
	bool pretty;
};
void kl_json_begin(struct kl_json *j, FILE *fp);
void kl_json_end(struct kl_json *j);
void kl_json_obj_open(struct kl_json *j, const char *key);
void kl_json_obj_close(struct kl_json *j);
void kl_json_arr_open(struct kl_json *j, const char *key);
void kl_json_arr_close(struct kl_json *j);
void kl_json_str(struct kl_json *j, const char *key, const char *val);
void kl_json_u64(struct kl_json *j, const char *key, uint64_t v);
void kl_json_i64(struct kl_json *j, const char *key, int64_t v);
void kl_json_double(struct kl_json *j, const char *key, double v);
void kl_json_bool(struct kl_json *j, const char *key, bool v);
void kl_json_null(struct kl_json *j, const char *key);

/* ------------------------------------------------------------------ time */
/* Monotonic seconds, for durations. */
double kl_now(void);
/* Wall clock in nanoseconds since the epoch. KEEL_FAKE_TIME overrides it for tests. */
uint64_t kl_wallclock_ns(void);

/* ------------------------------------------------------------------ parallel gzip
 *
 * One gzip member compressed on several threads (lib/pgzip.c): the same
 * bytes whatever the number of threads. write() receives the compressed
 * stream in order, from the calling thread; it returns 0 or -errno.
 */
typedef int (*kl_pgz_write_fn)(void *opaque, const void *buf, size_t len);
struct kl_pgz;
/* level 1..9; threads 0: one per online CPU, 1: all on the calling thread */
int kl_pgz_open(int level, int threads, kl_pgz_write_fn write, void *opaque, struct kl_pgz **out);
int kl_pgz_write(struct kl_pgz *z, const void *buf, size_t len);
/* Compress what is left and write the trailer. */
int kl_pgz_finish(struct kl_pgz *z);
void kl_pgz_free(struct kl_pgz *z);

/* ------------------------------------------------------------------ threads
 *
 * A small pool of persistent workers for data-parallel loops: kl_pool_run
 * calls fn(arg, i) for every i in [0, n) spread over the workers and the
 * calling thread, and returns when all are done (the first error, if any).
 */
struct kl_pool;
/* nthreads 0: one per online CPU. */
int kl_pool_new(int nthreads, struct kl_pool **out);
int kl_pool_run(struct kl_pool *p, size_t n, int (*fn)(void *arg, size_t i), void *arg);
int kl_pool_threads(const struct kl_pool *p);
void kl_pool_free(struct kl_pool *p);
int kl_ncpus(void);

/* ------------------------------------------------------------------ progress
 *
 * A progress meter on stderr: bytes done of total, rate and ETA, redrawn at
 * most 10 times a second. Enabled when stderr is a terminal or when forced
 * (-p); otherwise every call is a no-op. Thread-safe for kl_progress_add.
 */
struct kl_progress;
struct kl_progress *kl_progress_start(const char *label, uint64_t total, bool force);
void kl_progress_add(struct kl_progress *p, uint64_t done);
void kl_progress_set(struct kl_progress *p, uint64_t done);
void kl_progress_finish(struct kl_progress *p);

#endif
