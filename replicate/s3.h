/*
 * replicate/s3.h - off-site replication of image snapshots to an
 * S3-compatible object store (AWS S3, Ceph RGW, MinIO).
 *
 * A repository lives at s3://BUCKET/PREFIX. It holds content-addressed,
 * compressed, encrypted chunks grouped into pack objects, one index object
 * per pack, one encrypted manifest per snapshot and a config object with
 * the wrapped repository key; replicate/S3-LAYOUT.md describes every byte.
 * Nothing at the far end runs keel: a fresh machine with the URL, the
 * store's credentials and the repository passphrase can restore.
 *
 * All entry points return 0 or a negative errno with a message (lib/kl.h):
 *   -EACCES   the store refused the credentials
 *   -ENOENT   no such bucket, repository or snapshot
 *   -EBADMSG  an object failed authentication (damage, or a wrong passphrase)
 *   -EUCLEAN  an object decrypted but its content is malformed
 *   -EIO      the store kept failing after every retry
 * They are thread-safe with respect to each other on different options.
 */
#ifndef KEEL_REPLICATE_S3_H
#define KEEL_REPLICATE_S3_H

#include "lib/kl.h"

/* ------------------------------------------------------------------ URLs */
struct repl_s3_url {
	char *bucket;	/* 3..63 characters, S3 bucket naming rules */
	char *prefix;	/* "" or "a/b" without leading or trailing '/' */
	char *snapshot; /* the part after '@', or NULL */
};

/* True when s starts with "s3://". */
bool repl_s3_is_url(const char *s);
/*
 * Splits "s3://BUCKET[/PREFIX][@SNAP]". The prefix may hold letters,
 * digits, '.', '_', '-' and '/'; anything else is -EINVAL naming it.
 */
int repl_s3_url_parse(const char *url, struct repl_s3_url *out);
void repl_s3_url_release(struct repl_s3_url *u);

/* ------------------------------------------------------------------ options */
enum repl_s3_addressing {
	REPL_S3_ADDR_AUTO = 0, /* path-style with a custom endpoint, virtual-host on AWS */
	REPL_S3_ADDR_PATH,     /* http://host/BUCKET/KEY */
	REPL_S3_ADDR_VIRTUAL,  /* http://BUCKET.host/KEY */
};

/*
 * Where the repository is and how to reach it. Every string is borrowed
 * for the duration of the call. NULL fields come from the environment:
 *   endpoint     KEEL_S3_ENDPOINT, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL;
 *                none: https://s3.REGION.amazonaws.com
 *   region       AWS_REGION, AWS_DEFAULT_REGION; none: us-east-1
 *   access_key   AWS_ACCESS_KEY_ID
 *   secret_key   AWS_SECRET_ACCESS_KEY
 *   session_token AWS_SESSION_TOKEN (optional)
 */
struct repl_s3_opts {
	const char *url; /* s3://BUCKET/PREFIX[@SNAP] */
	const char *endpoint;
	const char *region;
	const char *access_key;
	const char *secret_key;
	const char *session_token;
	enum repl_s3_addressing addressing;
	int connections;     /* parallel requests, 1..32; 0 = 4 */
	uint64_t limit_rate; /* bytes per second over all connections, 0 = unlimited */
	int retries;	     /* attempts after the first on 5xx/429/connection errors; <0: 0 */
	bool retries_set;    /* retries given (else 6) */
	int timeout;	     /* seconds a request may stall before it is retried; 0 = 60 */
	/* repository passphrase (--key-file/--key-env); borrowed */
	const uint8_t *key;
	size_t key_len;
	/* local cache of index objects; NULL = $XDG_CACHE_HOME/keel/s3, "" = no cache */
	const char *cache_dir;
	bool progress;	     /* force the progress bar */
};

/* What a command did, for --output json and the one-line summary. */
struct repl_s3_stats {
	uint64_t requests; /* HTTP requests sent, retries included */
	uint64_t req_get, req_put, req_head, req_list, req_delete;
	uint64_t retries;	    /* requests repeated after a transient failure */
	uint64_t bytes_uploaded;    /* request bodies sent */
	uint64_t bytes_downloaded;  /* response bodies received */
	uint64_t bytes_scanned;	    /* image bytes examined (replicate) / written (restore) */
	uint64_t chunks_total;	    /* chunk positions holding data */
	uint64_t chunks_zero;	    /* chunk positions that are all zero (not stored) */
	uint64_t chunks_new;	    /* chunks uploaded by this run */
	uint64_t chunks_skipped;    /* data chunks already in the repository (or this run) */
	uint64_t chunks_reused;	    /* positions unchanged since the previous snapshot
				     * (snapshot diff): not even read */
	uint64_t bytes_new;	    /* plaintext bytes of the new chunks */
	uint64_t packs_uploaded;
	uint64_t snapshots_done;    /* replicated / restored / removed by prune */
	uint64_t snapshots_skipped; /* already in the repository (replicate) / kept (prune) */
	uint64_t objects_deleted;   /* packs, indexes and due marks removed by gc */
	uint64_t packs_condemned;   /* packs named by the gc mark this prune wrote */
	uint64_t objects_checked;   /* scrub */
	uint64_t damaged;	    /* scrub: objects or chunks that failed */
	double seconds;
	char **names; /* snapshots replicated, restored or removed */
	size_t nnames;
};
void repl_s3_stats_release(struct repl_s3_stats *st);

/* ------------------------------------------------------------------ commands */
struct repl_s3_replicate_opts {
	/* name for the current content when the image has no snapshots;
	 * NULL: "<basename>-<UTC date>T<time>Z" */
	const char *name;
	bool current;	   /* replicate the current content even when snapshots exist */
	bool init;	   /* create the repository when the config object is missing */
	const char *format; /* image format, NULL to probe */
	unsigned open_flags; /* BLK_OPEN_* for the source */
	const uint8_t *image_key; /* secret of an encrypted source image */
	size_t image_key_len;
};

/*
 * Replicates every snapshot of image (blk_snapshot_list) that the
 * repository does not have yet, oldest first, or the current content as a
 * new snapshot when the image has none (or r->current). Chunks already in
 * the repository are never uploaded again. A snapshot becomes visible only
 * when its manifest is written, after everything it references: an
 * interrupted run leaves no half-visible snapshot, and the next run
 * uploads only what is missing.
 */
int repl_s3_replicate(const char *image, const struct repl_s3_opts *o,
		      const struct repl_s3_replicate_opts *r, struct repl_s3_stats *st);

/*
 * Restores snapshot snap (NULL: the one in o->url) to a new image out of
 * format fmt through blk_create/blk_pwrite: written under a temporary name
 * beside out, zero chunks left unwritten (sparse), synced, renamed into
 * place. With verify the output is re-read and every chunk's keyed hash
 * compared with the manifest. This is the library call `keel drill --from
 * s3://...` uses. After conv_install_signal_handlers(), SIGINT/SIGTERM
 * stop it with -EINTR and nothing is left under out or the temporary name.
 */
int repl_s3_restore(const struct repl_s3_opts *o, const char *snap, const char *fmt,
		    const char *out, bool verify, struct repl_s3_stats *st);

struct repl_s3_snapshot {
	char *name;
	char *image;	       /* the image's file name when replicated */
	uint64_t vsize;
	uint64_t created_ns;   /* snapshot time (image's, or replication time) */
	uint64_t replicated_ns;
	uint64_t chunks;       /* data chunk references */
};
/* Lists the snapshots in the repository, oldest first. */
int repl_s3_list(const struct repl_s3_opts *o, struct repl_s3_snapshot **out, size_t *n);
void repl_s3_list_free(struct repl_s3_snapshot *list, size_t n);

struct repl_s3_prune_opts {
	/* keep policies, as restic's forget: 0 = not used */
	unsigned keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly;
	const char *keep_name; /* never remove this snapshot (NULL: none) */
	bool dry_run;	       /* say what would go; change nothing */
	bool no_gc;	       /* only remove manifests */
	/*
	 * Garbage collection is two-phase: an unreferenced pack is first
	 * condemned (a mark object), and deleted by a later run only when
	 * the mark is older than grace_s and the pack is still unreferenced.
	 * See replicate/S3-LAYOUT.md for why this is safe while replicates
	 * run. 0 = default (3600 s); use grace_set for a real 0.
	 */
	uint64_t grace_s;
	bool grace_set;
};
int repl_s3_prune(const struct repl_s3_opts *o, const struct repl_s3_prune_opts *p,
		  struct repl_s3_stats *st);

/*
 * Verifies every object the repository references: the config, every
 * manifest, every index and every blob of every pack (downloaded,
 * decrypted, decompressed, keyed hash compared with its name), and that
 * every chunk a manifest names is present. Returns 0 when all is well,
 * -EBADMSG when something is damaged (st->damaged; the first problems are
 * in st->names), another error when the scrub itself could not run.
 */
int repl_s3_scrub(const struct repl_s3_opts *o, struct repl_s3_stats *st);

#endif
