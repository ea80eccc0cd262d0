/*
 * replicate/replicate.h - snapshot streams (keel send / keel recv), the raw
 * store, and replication over TLS (keel serve / keel replicate), prefix
 * repl_. The byte layouts are in replicate/STREAM-FORMAT.md.
 *
 * A stream carries one snapshot of a .keel image: all of it (full) or the
 * clusters changed since an older snapshot FROM (incremental, found from
 * metadata). It is a run of length-prefixed records: a header, data, zero
 * and ref records, resume marks, a trailer with a digest of the whole
 * stream. Every record has a CRC-32C and an AES-256-GCM tag with the stream
 * id, its sequence number and its type bound in; with a passphrase the
 * records are encrypted and the tags are real MACs. A receiver writes into
 * a staged receive (format.h "receiving") and makes the snapshot visible
 * only after the trailer verifies; resume marks let an interrupted receive
 * continue where it stopped.
 *
 * All entry points return 0 or a negative errno with a message (lib/kl.h):
 *   -EBADMSG  a record failed its CRC or authentication (damage, splice, wrong key)
 *   -EUCLEAN  a record is malformed, out of order, or the stream is truncated
 *   -ESTALE   an incremental stream's base is not in the target
 *   -EPERM    a resume token does not match this image, snapshot or key
 *   -ENOKEY   the stream or image is encrypted and no key was given
 */
#ifndef KEEL_REPLICATE_REPLICATE_H
#define KEEL_REPLICATE_REPLICATE_H

#include "lib/kl.h"

/* ------------------------------------------------------------------ byte sources and sinks */
struct repl_reader {
	/* Up to len bytes: returns the count, 0 at the end, or -errno. */
	ssize_t (*read)(void *opaque, void *buf, size_t len);
	void *opaque;
};

struct repl_writer {
	/* All len bytes or -errno. */
	int (*write)(void *opaque, const void *buf, size_t len);
	void *opaque;
};

/* Readers and writers over an open kl_file (stdin, stdout, a stream file); borrowed. */
void repl_reader_file(struct repl_reader *r, struct kl_file *f);
void repl_writer_file(struct repl_writer *w, struct kl_file *f);

/* ------------------------------------------------------------------ send */

/*
 * Live dedup (keel:// only): before sending a cluster the sender asks the
 * receiver whether it holds that content, by keyed hash (STREAM-FORMAT.md
 * §7); held content travels as a 48-byte REF record.
 */
struct repl_have_ops {
	uint8_t key[32]; /* the receiver's hash key */
	/* held[i] = whether the receiver holds hashes[i]. */
	int (*query)(void *opaque, const uint8_t (*hashes)[32], size_t n, bool *held);
	void *opaque;
};

struct repl_send_opts {
	const char *image;     /* a .keel image */
	const char *snapshot;  /* the snapshot to send */
	const char *from;      /* -i FROM: incremental from this snapshot; NULL: full */
	unsigned open_flags;   /* BLK_OPEN_* (BLK_OPEN_ALLOW_EXTERNAL) */
	/* passphrase: opens an encrypted image and keys the stream; borrowed */
	const uint8_t *key;
	size_t key_len;
	bool raw;	       /* for a keyless store: the stream must be keyed */
	const char *resume;    /* the receiver's token (keel1-...), or NULL */
	const uint8_t *resume_target; /* keel://: the target's uuid the token must name */
	uint64_t mark_bytes;   /* a resume mark every this many stream bytes (0: 64 MiB) */
	bool keyless_stream;   /* the key only opens the image (keel:// fetch: TLS protects) */
	int threads;	       /* compression threads, 0: one per CPU */
	int level;	       /* zstd level, 0: 3 */
	bool progress;
	const struct repl_have_ops *have; /* NULL: no live dedup */
	/* scrypt for keyed streams, 0: N=32768 r=8 p=1 (tests use less) */
	uint64_t kdf_n;
	uint32_t kdf_r, kdf_p;
	/* Stop after this many bytes as if the output broke (tests); 0: never. */
	uint64_t fail_after;
};

struct repl_send_stats {
	char name[256];
	uint8_t guid[16];
	bool incremental, resumed, keyed;
	uint64_t resume_offset;
	uint64_t stream_bytes;	 /* bytes written */
	uint64_t records;
	uint64_t changed_bytes;	 /* guest bytes of the clusters in the stream (data + ref) */
	uint64_t zero_bytes;	 /* guest bytes sent as zero ranges */
	uint64_t payload_bytes;	 /* compressed data bytes carried */
	uint64_t clusters_sent, clusters_skipped, clusters_zero;
	double seconds;
};

int repl_send(const struct repl_send_opts *o, const struct repl_writer *out,
	      struct repl_send_stats *st);

/* ------------------------------------------------------------------ receive */
struct repl_have_map;

struct repl_recv_opts {
	const char *target;	   /* .keel image (made by a full stream) or raw store dir */
	bool raw;		   /* the target is (or becomes) a raw store */
	const uint8_t *key;	   /* passphrase: keyed streams, encrypted targets; borrowed */
	size_t key_len;
	struct kl_opts *create_opts; /* -o for a new target image */
	bool force;		   /* discard changes made to the target since the base */
	bool verify_only;	   /* check the stream, write nothing */
	bool progress;
	unsigned open_flags;
	struct repl_have_map *have; /* keel://: resolve REF records, learn hashes */
	/* keel://: only this kind of stream is accepted (0: any) */
	uint32_t require_flags;
};

struct repl_recv_stats {
	char name[256];
	uint8_t guid[16];
	bool incremental, resumed, finished, keyed, raw, created;
	uint64_t stream_bytes, records, marks;
	uint64_t data_bytes, zero_bytes, ref_bytes;
	char token[600];	   /* set when the receive stopped and can resume */
	double seconds;
};

/*
 * Applies one stream to o->target. A full stream makes a new image (or a
 * new raw store); an incremental one needs FROM in the target (-ESTALE
 * otherwise). The snapshot appears only after the trailer verifies; on any
 * failure readers still see the previous state, and when a resume mark was
 * reached st->token says how to continue (keel send --resume).
 */
int repl_recv(const struct repl_reader *in, const struct repl_recv_opts *o,
	      struct repl_recv_stats *st);

/* Receive in progress at target (an image or a raw store)? Token text into token. */
int repl_recv_status(const char *target, const uint8_t *key, size_t key_len, bool *active,
		     char *token, size_t cap);
/*
 * Text form (keel1-...) of a token blob as blk_recv_status returns it, for
 * keel info; -EUCLEAN when the blob is not a keel stream token.
 */
int repl_token_text(const void *blob, size_t len, char *out, size_t cap);
/* Drop the receive in progress at target; the target keeps its previous state. */
int repl_recv_abort(const char *target, const uint8_t *key, size_t key_len);

/* ------------------------------------------------------------------ raw store */
struct repl_raw_entry {
	uint8_t guid[16];
	uint64_t generation;
	uint8_t from_guid[16];	/* zero: a full stream */
	uint64_t from_generation;
	uint64_t bytes;		/* stream file size */
	char name[256];
	char file[64];		/* file name inside the store */
};

bool repl_raw_is_store(const char *path);
/* The complete streams a raw store holds, in the order received. */
int repl_raw_list(const char *dir, struct repl_raw_entry **out, size_t *n);
/*
 * Rebuilds snapshot `snap` (NULL: the newest) of a raw store into the new
 * image out by applying the chain of streams (full, then incrementals) with
 * the key; every record is authenticated on the way.
 */
int repl_raw_restore(const char *dir, const char *snap, const char *out, const uint8_t *key,
		     size_t key_len, struct kl_opts *create_opts, bool progress,
		     struct repl_recv_stats *st);

/* ------------------------------------------------------------------ keel:// over TLS */
struct repl_tls_opts {
	const char *cert; /* PEM certificate (chain) of this side */
	const char *key;  /* its PEM private key */
	const char *ca;	  /* PEM CA certificate(s) the peer must chain to */
	int timeout;	  /* seconds a peer may stay silent, 0: 120 */
};

struct repl_url {
	char *host;
	char *port;
	char *name;	/* target name on the server */
	char *snapshot; /* @SNAP, or NULL */
};

bool repl_is_url(const char *s); /* starts with keel:// */
int repl_url_parse(const char *s, struct repl_url *u);
void repl_url_release(struct repl_url *u);

struct repl_serve_opts {
	const char *listen;    /* ADDR:PORT ([::1]:PORT for IPv6) */
	const char *root;      /* every target lives directly in this directory */
	struct repl_tls_opts tls;
	int max_clients;       /* at once, 0: 16 */
	/* passphrase for keyed streams into images and encrypted targets; borrowed */
	const uint8_t *key;
	size_t key_len;
	size_t have_max;       /* entries of each target's content map, 0: 256 Ki (16 MiB) */
	int max_sessions;      /* exit after this many sessions (tests), 0: never */
	const char *port_file; /* write the bound port here (tests with port 0) */
	/* one line per event (connections, refusals, receives); called from any process */
	void (*log)(void *opaque, const char *line);
	void *log_opaque;
};

/* Serves until SIGINT/SIGTERM; each client runs in its own process. */
int repl_serve(const struct repl_serve_opts *o);

struct repl_replicate_opts {
	const char *image;
	const char *url;	/* keel://HOST:PORT/NAME */
	struct repl_tls_opts tls;
	unsigned open_flags;
	const uint8_t *key;	/* passphrase (encrypted image / keyed stream) */
	size_t key_len;
	bool raw;
	bool no_dedup;		/* do not ask the receiver what it holds */
	uint64_t limit_rate;	/* bytes per second on the wire, 0: unlimited */
	uint64_t mark_bytes;
	int threads;
	bool progress;
	uint64_t kdf_n;		/* see repl_send_opts */
	uint32_t kdf_r, kdf_p;
};

struct repl_replicate_stats {
	char snapshot[256];	/* what the target now has as newest */
	char base[256];		/* incremental from, "" = full */
	bool up_to_date;	/* nothing to send */
	bool resumed;		/* an interrupted receive was continued */
	int streams;		/* streams sent this run */
	uint64_t wire_out, wire_in; /* bytes on the TLS connection (payload of TLS records) */
	uint64_t stream_bytes;
	uint64_t changed_bytes;
	uint64_t payload_bytes;
	uint64_t clusters_sent, clusters_skipped, clusters_zero;
	double seconds;
};

/*
 * Brings the server's target up to date with the newest snapshot of
 * o->image: continues an interrupted receive when the server holds a token
 * for a snapshot the image still has, then sends the newest snapshot
 * incrementally from the newest one both hold (or full to a new target).
 */
int repl_replicate(const struct repl_replicate_opts *o, struct repl_replicate_stats *st);

struct repl_fetch_opts {
	const char *url;	/* keel://HOST:PORT/NAME[@SNAP]; no SNAP: the newest */
	const char *local;	/* .keel image: created, or updated incrementally */
	struct repl_tls_opts tls;
	const uint8_t *key;	/* passphrase: raw stores' streams, an encrypted local image */
	size_t key_len;
	struct kl_opts *create_opts;
	bool progress;
};

/*
 * Brings snapshot SNAP of the server's target into the local image: only
 * what the local image lacks travels (incremental from the newest snapshot
 * both hold). From a raw store the stored streams come as they are and are
 * decrypted here with the key. This is what `keel restore` uses for keel://.
 */
int repl_fetch(const struct repl_fetch_opts *o, struct repl_recv_stats *st);

#endif
