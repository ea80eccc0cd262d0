/*
 * snapshot/drill.c - the restore-and-verify drill: restore, scrub, boot.
 *
 * The numbers an operator reports after a drill: how old the newest
 * restorable state is (recovery point), how long a verified restore takes
 * and how long until a restored system boots (recovery time). A drill
 * passes only when the restore reads back identical, the vault scrubs
 * clean and the verifier appliance finds a bootable system.
 */
#define _GNU_SOURCE
#include "snapshot/snapshot.h"
#include "convert/convert.h"
#include "replicate/s3.h"
#include "vmm/vmm.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void fail(struct snap_drill_report *r, const char *fmt, const char *what)
{
	if (!r->reason[0])
		snprintf(r->reason, sizeof(r->reason), fmt, what);
}

static int snapshot_time(struct blk_dev *d, const char *name, uint64_t *t)
{
	struct blk_snapshot_info *v;
	size_t n;

	KL_TRY(blk_snapshot_list(d, &v, &n));
	*t = 0;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(v[i].name, name))
			*t = v[i].date_ns;
	blk_snapshot_list_free(v, n);
	return 0;
}

static int boot_step(const struct snap_drill_opts *o, const char *out, struct snap_drill_report *r)
{
	double t0;
	int rc = 0;

	if (r->restore_ok && !o->skip_boot) {
		struct vmm_opts vmo = { .image = out, .image_format = "raw",
					.timeout_s = o->timeout_s, .expect_os = o->expect_os };
		struct vmm_report vr;

		if (o->engine && vmm_engine_parse(o->engine, &vmo.engine) < 0)
			return kl_err(-EINVAL, "unknown engine '%s'", o->engine);
		t0 = kl_now();
		rc = vmm_verify_boot(&vmo, &vr);
		r->t_boot = kl_now() - t0;
		if (rc == 0) {
			r->boot_ok = vr.passed;
			snprintf(r->engine, sizeof(r->engine), "%s", vmm_engine_name(vr.engine));
			if (vr.os_id)
				snprintf(r->os_id, sizeof(r->os_id), "%s", vr.os_id);
			if (!vr.passed)
				fail(r, "boot verification failed: %s",
				     vr.nreasons ? vr.reasons[0] : "no verdict");
			vmm_report_release(&vr);
		} else {
			fail(r, "boot verification could not run: %s", kl_errmsg());
			rc = 0;
		}
	} else if (o->skip_boot) {
		r->boot_ok = true;
		snprintf(r->engine, sizeof(r->engine), "none");
	}
	r->rto_s = r->t_restore + r->t_boot;
	r->passed = r->restore_ok && r->scrub_ok && r->boot_ok;
	return rc;
}

/* The drill from an S3 repository: fetch is the restore, the repository scrub the scrub. */
static int drill_s3(const struct snap_drill_opts *o, const char *out, struct snap_drill_report *r)
{
	struct repl_s3_opts so = { .url = o->from, .key = o->key, .key_len = o->key_len,
				   .progress = o->progress };
	struct repl_s3_snapshot *v = NULL;
	struct repl_s3_stats st;
	const char *at = strrchr(o->from, '@');
	size_t n = 0, pick = 0;
	double t0;
	int rc;

	snprintf(r->vault, sizeof(r->vault), "%s", o->from);
	if (at)
		r->vault[at - o->from] = '\0';
	KL_TRY(repl_s3_list(&so, &v, &n));
	for (size_t i = 0; i < n; i++) {
		if (at ? !strcmp(v[i].name, at + 1) : v[i].created_ns >= v[pick].created_ns)
			pick = i;
	}
	if (n == 0 || (at && strcmp(v[pick].name, at + 1))) {
		repl_s3_list_free(v, n);
		return kl_err(-ENOENT, "%s: no such snapshot in the repository", o->from);
	}
	snprintf(r->snapshot, sizeof(r->snapshot), "%s", v[pick].name);
	r->snapshot_time_ns = v[pick].created_ns;
	repl_s3_list_free(v, n);
	r->age_s = (double)(kl_wallclock_ns() - KL_MIN(r->snapshot_time_ns, kl_wallclock_ns())) / 1e9;
	t0 = kl_now();
	memset(&st, 0, sizeof(st));
	rc = repl_s3_restore(&so, r->snapshot, "raw", out, true, &st);
	repl_s3_stats_release(&st);
	r->t_restore = kl_now() - t0;
	r->restore_ok = rc == 0;
	if (!r->restore_ok)
		fail(r, "restore from the repository failed: %s", kl_errmsg());
	t0 = kl_now();
	memset(&st, 0, sizeof(st));
	rc = repl_s3_scrub(&so, &st);
	r->t_scrub = kl_now() - t0;
	r->scrub_damaged = st.damaged;
	repl_s3_stats_release(&st);
	r->scrub_ok = rc == 0;
	if (!r->scrub_ok)
		fail(r, "repository scrub failed: %s", kl_errmsg());
	return boot_step(o, out, r);
}

/* The drill of a local vault (or of the image a keel:// fetch made). */
static int drill_local(const struct snap_drill_opts *o, const char *out,
		       struct snap_drill_report *r)
{
	struct blk_open_opts vo = { .format = "keel", .flags = BLK_OPEN_NO_PARENT,
				    .key = o->key, .key_len = o->key_len };
	struct blk_scrub_report sr;
	struct conv_stats cst;
	struct blk_dev *d = NULL;
	char spec[1400];
	double t0;
	int rc;

	snprintf(r->vault, sizeof(r->vault), "%s", o->vault);
	rc = blk_open(o->vault, &vo, &d);
	if (rc < 0)
		goto out;
	if (o->snapshot)
		snprintf(r->snapshot, sizeof(r->snapshot), "%s", o->snapshot);
	else if ((rc = snap_latest(d, r->snapshot, sizeof(r->snapshot))) < 0)
		goto out;
	rc = snapshot_time(d, r->snapshot, &r->snapshot_time_ns);
	if (rc < 0)
		goto out;
	if (!r->snapshot_time_ns) {
		rc = kl_err(-ENOENT, "%s: no snapshot named '%s'", o->vault, r->snapshot);
		goto out;
	}
	r->age_s = (double)(kl_wallclock_ns() - KL_MIN(r->snapshot_time_ns, kl_wallclock_ns())) / 1e9;

	/* 1. restore, verified against the snapshot's content */
	snprintf(spec, sizeof(spec), "%s@%s", o->vault, r->snapshot);
	{
		struct conv_opts co = { .src = spec, .src_fmt = "keel", .dst = out, .dst_fmt = "raw",
					.verify = true, .progress = o->progress, .key = o->key,
					.key_len = o->key_len };

		t0 = kl_now();
		rc = conv_run(&co, &cst);
		r->t_restore = kl_now() - t0;
		r->restored_bytes = cst.bytes_written;
		r->restore_ok = rc == 0 && cst.verified;
		if (!r->restore_ok)
			fail(r, "restore failed: %s", kl_errmsg());
		rc = 0;
	}

	/* 2. the vault's checksums and tags, every snapshot */
	t0 = kl_now();
	if (blk_scrub(d, NULL, NULL, o->progress, &sr) == 0) {
		r->scrub_damaged = sr.damaged;
		r->scrub_ok = sr.damaged == 0;
		if (!r->scrub_ok)
			fail(r, "scrub found %s damaged clusters", "some");
	} else {
		fail(r, "scrub failed: %s", kl_errmsg());
	}
	r->t_scrub = kl_now() - t0;

	/* 3. boot the restored image in the verifier appliance */
	rc = boot_step(o, out, r);
out:
	blk_close(d);
	return rc;
}

/*
 * The drill of a keel:// replica: the snapshot is fetched (every record
 * authenticated) to a temporary image, which is then drilled like a local
 * vault. The fetch counts as part of the restore: it is what an operator
 * would wait for before booting anything.
 */
static int drill_keel(const struct snap_drill_opts *o, const char *out,
		      struct snap_drill_report *r)
{
	struct snap_drill_opts lo = *o;
	struct snap_replica rp;
	int rc;

	rc = snap_replica_fetch(o->from, o->tls, o->key, o->key_len, o->workdir, o->progress, &rp);
	if (rc < 0) {
		const char *at = strrchr(o->from, '@');

		/* a replica that cannot be reached or read is a failed drill, reported */
		snprintf(r->vault, sizeof(r->vault), "%.*s",
			 (int)(at && !strchr(at, '/') ? at - o->from : (long)strlen(o->from)),
			 o->from);
		fail(r, "fetch from the replica failed: %s", kl_errmsg());
		return boot_step(o, out, r);
	}
	lo.from = NULL;
	lo.vault = rp.image;
	lo.snapshot = rp.snapshot;
	rc = drill_local(&lo, out, r);
	snprintf(r->vault, sizeof(r->vault), "%s", rp.target);
	r->t_restore += rp.seconds;
	r->rto_s = r->t_restore + r->t_boot;
	snap_replica_release(&rp);
	return rc;
}

int snap_drill(const struct snap_drill_opts *o, struct snap_drill_report *r)
{
	char *out;
	int rc;

	memset(r, 0, sizeof(*r));
	out = kl_asprintf("%s/keel-drill.%ld.raw", kl_tmpdir(o->workdir), (long)getpid());
	if (!out)
		return -ENOMEM;
	if (o->from && repl_is_url(o->from))
		rc = drill_keel(o, out, r);
	else if (o->from)
		rc = drill_s3(o, out, r);
	else
		rc = drill_local(o, out, r);
	kl_io_unlink(out);
	kl_free(out);
	return rc;
}
