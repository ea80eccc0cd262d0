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

#endif
