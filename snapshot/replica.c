/*
 * snapshot/replica.c - bring a snapshot of a keel:// replica to this machine
 * for keel restore and keel drill.
 *
 * The replica is fetched with repl_fetch into a fresh .keel image inside a
 * private temporary directory: every stream record is authenticated on the
 * way in and the snapshot appears only once its trailer verified, so what
 * the caller then restores or drills is exactly what the server holds. The
 * directory (mode 0700, made with mkdtemp) keeps the fetch's staging files
 * together, and removing it removes everything the fetch left behind.
 */
#define _GNU_SOURCE
#include "snapshot/snapshot.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void snap_replica_release(struct snap_replica *rp)
{
	/* only files the fetch made, one level: nothing else can be in there */
	kl_scratch_remove(rp->dir);
	kl_free(rp->image);
	memset(rp, 0, sizeof(*rp));
}

int snap_replica_fetch(const char *url, const struct repl_tls_opts *tls, const uint8_t *key,
		       size_t key_len, const char *near, bool progress, struct snap_replica *rp)
{
	struct repl_fetch_opts fo = { .url = url, .key = key, .key_len = key_len,
				      .progress = progress };
	struct repl_recv_stats st;
	struct repl_url u;
	double t0;
	int rc;

	memset(rp, 0, sizeof(*rp));
	if (!tls || !tls->cert || !tls->key || !tls->ca)
		return kl_err(-EINVAL, "%s: a keel:// replica needs --cert, --key and --ca", url);
	KL_TRY(repl_url_parse(url, &u));
	snprintf(rp->target, sizeof(rp->target), "keel://%s:%s/%s", u.host, u.port, u.name);
	repl_url_release(&u);

	KL_TRY(kl_scratch_dir(near, ".keel-fetch", &rp->dir));
	rp->image = kl_asprintf("%s/replica.keel", rp->dir);
	if (!rp->image) {
		snap_replica_release(rp);
		return -ENOMEM;
	}
	fo.local = rp->image;
	fo.tls = *tls;
	t0 = kl_now();
	rc = repl_fetch(&fo, &st);
	rp->seconds = kl_now() - t0;
	if (rc < 0) {
		snap_replica_release(rp);
		return rc;
	}
	snprintf(rp->snapshot, sizeof(rp->snapshot), "%s", st.name);
	rp->stream_bytes = st.stream_bytes;
	return 0;
}
