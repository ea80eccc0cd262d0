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

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void snap_replica_release(struct snap_replica *rp)
{
	DIR *dir;
	struct dirent *e;

	if (rp->dir) {
		/* only files the fetch made, one level: nothing else can be in there */
		dir = opendir(rp->dir);
		if (dir) {
			while ((e = readdir(dir)) != NULL) {
				char *p;

				if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
					continue;
				p = kl_asprintf("%s/%s", rp->dir, e->d_name);
				if (p)
					unlink(p);
				kl_free(p);
			}
			closedir(dir);
		}
		rmdir(rp->dir);
	}
	kl_free(rp->dir);
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

	rp->dir = kl_asprintf("%s/.keel-fetch.XXXXXX", kl_tmpdir(near));
	if (!rp->dir)
		return -ENOMEM;
	if (!mkdtemp(rp->dir)) {
		rc = kl_err(-errno, "%s: cannot make a temporary directory: %s", rp->dir,
			    strerror(errno));
		kl_free(rp->dir);
		rp->dir = NULL;
		return rc;
	}
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
