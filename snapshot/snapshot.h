/*
 * snapshot/snapshot.h - operations on image chains: commit a child into its
 * parent, rebase onto another parent. Snapshot primitives themselves live
 * in the format drivers (blk_snapshot_* in format/format.h).
 */
#ifndef KEEL_SNAPSHOT_H
#define KEEL_SNAPSHOT_H

#include "format/format.h"

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

#endif
