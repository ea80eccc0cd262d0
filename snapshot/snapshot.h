/*
 * snapshot/snapshot.h - operations on image chains: commit a child into its
 * parent, rebase onto another parent. Snapshot primitives themselves live
 * in the format drivers (blk_snapshot_* in format/format.h).
 */
#ifndef KEEL_SNAPSHOT_H
#define KEEL_SNAPSHOT_H

#include "format/format.h"
#include "replicate/replicate.h"

struct snap_stats {
	uint64_t bytes_copied;
	uint64_t bytes_zeroed;
	double seconds;
};

/*
 * Writes everything the top image `spec` holds into its parent, then
 * empties the top (where its format can) so it reads through to the
 * parent. What a guest sees through the top never changes, also after a
 * crash at any point.
 */
int snap_commit(const char *spec, const struct blk_open_opts *o, bool progress,
		struct snap_stats *st);

/*
 * Points `spec` at new_parent (NULL: no parent). Unless unsafe, first
 * copies into the image every range where the old and the new parent
 * differ and the image itself has nothing, so its content is unchanged.
 * new_parent is resolved relative to the image's directory.
 */
int snap_rebase(const char *spec, const struct blk_open_opts *o, const char *new_parent,
		const char *new_fmt, bool unsafe, bool progress, struct snap_stats *st);

struct snap_backup_opts {
	const char *src;	 /* any image, path[@snap] */
	const char *src_fmt;
	unsigned src_flags;	 /* BLK_OPEN_* for the source */
	const uint8_t *src_key;
	size_t src_key_len;
	const char *vault;	 /* .keel file, created on first use */
	struct kl_opts *create_opts; /* for the first use (default dedup=on) */
	const uint8_t *key;	 /* vault passphrase when encrypted */
	size_t key_len;
	const char *name;	 /* snapshot name; NULL: UTC time of the run */
	unsigned vault_flags;	 /* extra BLK_OPEN_* for the vault (BLK_OPEN_WAIT) */
	bool progress;
	int threads;		 /* hashing threads, 0: one per CPU */
};

struct snap_backup_stats {
	char name[256];
	bool created;		 /* the vault was made by this run */
	uint64_t virtual_size;
	uint64_t scanned;	 /* bytes of data read from the source */
	uint64_t zero_skipped;	 /* bytes known zero from metadata, never read */
	uint64_t new_bytes;	 /* bytes of new blobs stored in the vault */
	uint64_t clusters_new, clusters_deduped, clusters_unchanged;
	double seconds;
};

/*
 * Ingests what a guest sees in o->src as a new snapshot of the vault: holes
 * cost nothing, each cluster is hashed (in parallel), unchanged clusters
 * cost nothing, known content is referenced, the rest is stored. The
 * snapshot appears in one commit at the end; an interrupted or failed
 * backup leaves the vault exactly as it was (and removes a vault it made).
 */
int snap_backup(const struct snap_backup_opts *o, struct snap_backup_stats *st);

/* ------------------------------------------------------------------ retention */

enum snap_keep_rule {
	SNAP_KEEP_LAST,
	SNAP_KEEP_HOURLY,
	SNAP_KEEP_DAILY,
	SNAP_KEEP_WEEKLY,
	SNAP_KEEP_MONTHLY,
	SNAP_KEEP_YEARLY,
	SNAP_KEEP_RULES,
};
const char *snap_keep_rule_name(enum snap_keep_rule r);

/* Per rule: 0 off, N > 0 periods to keep, -1 every period. */
struct snap_retention {
	int64_t keep[SNAP_KEEP_RULES];
};

struct snap_prune_item {
	const char *name;
	uint64_t time_ns;
	int kept_by;	/* enum snap_keep_rule that keeps it, -1: to prune */
	bool oldest;	/* kept as the oldest because the rule's count was not reached */
};

/*
 * borg's retention semantics (borg prune): snapshots newest first; each rule
 * in the order last, hourly, daily, weekly, monthly, yearly keeps the newest
 * snapshot of each of its periods (UTC; ISO weeks), counting only periods
 * whose newest snapshot no earlier rule kept, until it has kept N; when a
 * rule runs out of snapshots before N, it keeps the oldest one. Pure: fills
 * kept_by/oldest. At least one rule must be on.
 */
int snap_prune_select(struct snap_prune_item *v, size_t n, const struct snap_retention *r);

struct snap_prune_result {
	struct snap_prune_item *items; /* every snapshot, newest first */
	size_t n;
	size_t pruned;
	uint64_t freed_bytes; /* file bytes given back */
};

/*
 * Deletes the snapshots the retention does not keep, in one commit (or only
 * reports with dry_run). The current state is never touched.
 */
int snap_prune(const char *vault, const struct blk_open_opts *o, const struct snap_retention *r,
	       bool dry_run, struct snap_prune_result *res);
void snap_prune_result_release(struct snap_prune_result *res);

/* ------------------------------------------------------------------ replicas */

/* A snapshot of a keel:// replica fetched to a private temporary image. */
struct snap_replica {
	char *dir;		/* the temporary directory (mkdtemp) */
	char *image;		/* dir/replica.keel */
	char target[1024];	/* keel://HOST:PORT/NAME, without @SNAP */
	char snapshot[256];	/* the snapshot fetched */
	uint64_t stream_bytes;
	double seconds;		/* time the fetch took */
};

/*
 * Fetches url (keel://HOST:PORT/NAME[@SNAP], the newest without SNAP) into a
 * new image in a temporary directory under near (NULL: $TMPDIR or /tmp),
 * verified record by record. key opens raw stores' streams and an encrypted
 * replica. snap_replica_release removes the directory and all in it.
 */
int snap_replica_fetch(const char *url, const struct repl_tls_opts *tls, const uint8_t *key,
		       size_t key_len, const char *near, bool progress, struct snap_replica *rp);
void snap_replica_release(struct snap_replica *rp);

/* ------------------------------------------------------------------ drill */

struct snap_drill_opts {
	const char *vault;	/* local vault (or the image a replica fetch made) */
	const char *snapshot;	/* NULL: the newest */
	const uint8_t *key;
	size_t key_len;
	const char *engine;	/* verify-boot engine: auto, kvm, qemu */
	unsigned timeout_s;	/* boot watchdog, 0: default */
	const char *expect_os;	/* os-release ID that must be found, or NULL */
	const char *workdir;	/* where the restored image goes; NULL: $TMPDIR or /tmp */
	bool progress;
	bool skip_boot;		/* restore and scrub only (tests, machines without any engine) */
	/*
	 * Drill a replica instead of a local vault: a keel:// URL
	 * (keel://HOST:PORT/NAME[@SNAP], reached with tls), or an S3 repository
	 * (s3://BUCKET/PREFIX[@SNAP], the store reached through the environment:
	 * AWS_*, KEEL_S3_ENDPOINT); key is the replica's passphrase.
	 */
	const char *from;
	const struct repl_tls_opts *tls;
};

struct snap_drill_report {
	char vault[1024];
	char snapshot[256];
	uint64_t snapshot_time_ns;
	double age_s;		/* recovery point: how old the restored state is */
	double t_restore;	/* restore with verification */
	double t_scrub;
	double t_boot;
	double rto_s;		/* restore + boot: time to a verified boot */
	bool restore_ok, scrub_ok, boot_ok, passed;
	uint64_t restored_bytes;
	uint64_t scrub_damaged;
	char engine[16];
	char os_id[64];
	char reason[512];	/* first failure */
};

/*
 * Restores the snapshot into a temporary raw image (verified), scrubs the
 * vault, boot-verifies the restored image, removes it, and reports. Returns
 * 0 when the drill ran (see passed), < 0 when it could not run.
 */
int snap_drill(const struct snap_drill_opts *o, struct snap_drill_report *r);

/* Name of the newest snapshot (by creation time, then generation). */
int snap_latest(struct blk_dev *d, char *name, size_t len);

#endif
