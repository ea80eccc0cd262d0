/*
 * convert/convert.c - keel convert: copy the guest-visible content of any
 * image into a new image of any format, or into a package (OVA, GCE).
 *
 * The copying itself is the parallel pipeline of pipeline.c: driven by
 * block_status over the whole chain, so zero and unallocated ranges are
 * never read; data blocks that turn out to be all zeros are not written
 * either, so the output stays sparse. This file wraps it in the safety
 * rules: the output is built under a temporary name beside DST (removed
 * on any failure or signal, and by the next run when a SIGKILL left it),
 * synced, verified with --verify, and only then renamed into place.
 *
 * The verification digest is canonical: SHA-256 over (block index, SHA-256
 * of block) for every non-zero 64 KiB block, then the virtual size. It does
 * not depend on how either image splits its extents, so the same function
 * run over DST must give the same value.
 */
#define _GNU_SOURCE
#include "convert/conv_int.h"

#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t conv_sig;

static void conv_on_signal(int sig)
{
	conv_sig = sig;
}

void conv_install_signal_handlers(void)
{
	struct sigaction sa = { 0 };

	sa.sa_handler = conv_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	kl_io_set_interrupt(conv_interrupted);
}

int conv_interrupted(void)
{
	return conv_sig;
}

/* ------------------------------------------------------------------ temp names */

char *conv_temp_name(const char *dst, const char *tag)
{
	char *c1 = kl_strdup(dst), *c2 = kl_strdup(dst), *t = NULL;

	if (c1 && c2)
		t = kl_asprintf("%s/.%s.keel-tmp.%ld%s%s", dirname(c1), basename(c2),
				(long)getpid(), tag ? "." : "", tag ? tag : "");
	kl_free(c1);
	kl_free(c2);
	return t;
}

void conv_remove_stale_temps(const char *dst)
{
	char *c1 = kl_strdup(dst), *c2 = kl_strdup(dst);
	char *dir, *base, *prefix = NULL;
	struct dirent *de;
	DIR *dh;

	if (!c1 || !c2)
		goto out;
	dir = dirname(c1);
	base = basename(c2);
	prefix = kl_asprintf(".%s.keel-tmp.", base);
	if (!prefix || !(dh = opendir(dir)))
		goto out;
	while ((de = readdir(dh))) {
		long pid;
		char *end;

		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
			continue;
		pid = strtol(de->d_name + strlen(prefix), &end, 10);
		if ((*end && *end != '.') || pid <= 0 ||
		    (kill((pid_t)pid, 0) < 0 && errno == ESRCH)) {
			char *p = kl_asprintf("%s/%s", dir, de->d_name);

			if (p)
				kl_io_unlink(p);
			kl_free(p);
		}
	}
	closedir(dh);
out:
	kl_free(prefix);
	kl_free(c1);
	kl_free(c2);
}

/* ------------------------------------------------------------------ one image */

void conv_src_open_opts(const struct conv_opts *o, struct blk_open_opts *so)
{
	memset(so, 0, sizeof(*so));
	so->format = o->src_fmt;
	so->flags = o->src_flags & ~(unsigned)BLK_OPEN_RDWR;
	so->key = o->key;
	so->key_len = o->key_len;
	so->key_nl = o->key_nl;
	so->snapshot = o->src_select;
}

/* Run the pipeline from src into dst and flush dst. */
static int conv_copy(const struct conv_opts *o, const struct blk_open_opts *so,
		     struct blk_dev *src, struct blk_dev *dst, bool zero_fill,
		     struct conv_stats *st)
{
	struct conv_pipe_cfg pc = { 0 };

	pc.src = o->src;
	pc.so = *so;
	pc.src_dev = src;
	pc.dst = dst;
	pc.backing = o->backing != NULL;
	pc.backing_fmt = o->backing_fmt;
	pc.backing_flags = o->src_flags & BLK_OPEN_ALLOW_EXTERNAL;
	pc.digest = o->verify;
	pc.zero_fill = zero_fill;
	pc.threads = o->threads;
	pc.progress = o->progress;
	pc.label = "converting";
	KL_TRY(conv_pipe_run(&pc, st));
	return blk_flush(dst);
}

/*
 * DST must not be an image that SRC or the new image reads through: the
 * rename would swap a backing file under every image above it (for -B onto
 * itself: the new overlay would be its own parent, the old data gone). SRC
 * itself may be DST: what replaces it is its own content.
 */
static int check_dst_not_backing(const struct conv_opts *o, struct blk_dev *src,
				 struct blk_dev *dst)
{
	struct stat st;

	if (stat(o->dst, &st) != 0)
		return 0;
	if (blk_chain_uses(blk_parent(src), (uint64_t)st.st_dev, (uint64_t)st.st_ino))
		return kl_err(-EINVAL, "%s is a backing image of %s: replacing it would change "
				       "what every image over it reads; nothing was written",
			      o->dst, o->src);
	if (blk_chain_uses(blk_parent(dst), (uint64_t)st.st_dev, (uint64_t)st.st_ino))
		return kl_err(-EINVAL, "%s is the backing image (-B) of the new image, or in its "
				       "chain: it cannot also be replaced by it; nothing was written",
			      o->dst);
	return 0;
}

int conv_into(const struct conv_opts *o, const char *path, struct conv_stats *st)
{
	struct blk_open_opts so;
	struct blk_open_opts dop = { .format = o->dst_fmt,
				     .flags = BLK_OPEN_RDWR | conv_blk_cache_flags(o),
				     .key = o->dst_key, .key_len = o->dst_key_len,
				     .key_nl = o->dst_key_nl };
	struct blk_create_opts co = { 0 };
	struct kl_opts *oo = NULL;
	struct blk_dev *src = NULL, *dst = NULL;
	bool created = false;
	struct stat sst;
	int rc;

	conv_src_open_opts(o, &so);
	rc = blk_open(o->src, &so, &src);
	if (rc < 0)
		return rc;
	st->virtual_size = blk_size(src);
	co.size = blk_size(src);
	/* formats that name their own file inside (VMDK extents) see the final name */
	co.final_path = o->dst;
	co.opts = o->dst_opts;
	co.key = o->dst_key;
	co.key_len = o->dst_key_len;
	co.key_nl = o->dst_key_nl;
	co.flags = conv_blk_cache_flags(o) & BLK_OPEN_UNSAFE;
	if (o->compress) {
		/* creation and every open of the output see the request */
		rc = kl_opts_set(&oo, "compress", "on");
		if (rc < 0)
			goto out;
		if (o->dst_opts) {
			const char *v = kl_opts_peek(o->dst_opts, "compress");

			if (!v)
				rc = kl_opts_set(&co.opts, "compress", "on");
		} else {
			co.opts = oo;
		}
		if (rc < 0)
			goto out;
		dop.opts = oo;
	}
	if (o->backing) {
		co.parent = o->backing;
		co.parent_format = o->backing_fmt;
		co.flags |= o->src_flags & BLK_OPEN_ALLOW_EXTERNAL;
		dop.flags |= o->src_flags & BLK_OPEN_ALLOW_EXTERNAL;
	}
	rc = blk_create(path, o->dst_fmt, &co);
	if (rc < 0)
		goto out;
	created = true;
	rc = blk_open(path, &dop, &dst);
	if (rc < 0)
		goto out;
	rc = check_dst_not_backing(o, src, dst);
	if (rc < 0)
		goto out;
	if (o->compress && !blk_can_encode(dst) && getenv("KEEL_CONV_DEBUG"))
		fprintf(stderr, "keel: compression runs inside the %s driver\n", o->dst_fmt);
	/* a new LUKS volume reads as noise where unwritten: zeros are written too */
	rc = conv_copy(o, &so, src, dst, !blk_zero_init(dst), st);
	if (rc < 0)
		goto out;
	blk_close(dst);
	dst = NULL;
	if (stat(path, &sst) == 0)
		st->output_size = (uint64_t)sst.st_size;
out:
	blk_close(dst);
	blk_close(src);
	if (co.opts != o->dst_opts && co.opts != oo)
		kl_opts_free(co.opts);
	kl_opts_free(oo);
	if (rc < 0 && created)
		kl_io_unlink(path);
	return rc;
}

/*
 * Digest of what a guest sees in path (format fmt), with the same pipeline;
 * head_only: of its first size bytes only (a device larger than the image).
 */
static int digest_file(const struct conv_opts *o, const char *path, const char *fmt,
		       uint64_t size, bool head_only, uint8_t out[32])
{
	struct blk_open_opts vo = { .format = fmt,
				    .flags = o->src_flags & BLK_OPEN_ALLOW_EXTERNAL,
				    .key = o->dst_key,
				    .key_len = o->dst_key_len,
				    .key_nl = o->dst_key_nl };
	struct conv_pipe_cfg pc = { 0 };
	struct conv_stats vst = { 0 };
	struct blk_dev *v;
	int rc;

	KL_TRY(blk_open(path, &vo, &v));
	pc.src = path;
	pc.so = vo;
	pc.src_dev = v;
	pc.digest = true;
	pc.digest_size = size;
	pc.walk_size = head_only ? size : 0;
	pc.threads = o->threads;
	pc.progress = o->progress;
	pc.label = "verifying";
	rc = conv_pipe_run(&pc, &vst);
	blk_close(v);
	if (rc == 0)
		memcpy(out, vst.digest, 32);
	return rc;
}

/* --verify: path's digest against the copy's; head_only as for digest_file */
static int verify_as(const struct conv_opts *o, const char *path, const char *fmt,
		     bool head_only, struct conv_stats *st)
{
	uint8_t dg[32];

	KL_TRY(digest_file(o, path, fmt, st->virtual_size, head_only, dg));
	if (memcmp(dg, st->digest, 32) != 0) {
		st->verify_failed = true;
		return kl_err(-EBADMSG, "verification failed: %s does not read back as %s", o->dst,
			      o->src);
	}
	st->verified = true;
	return 0;
}

int conv_verify_file(const struct conv_opts *o, const char *path, const char *fmt,
		     struct conv_stats *st)
{
	return verify_as(o, path, fmt, false, st);
}

static int commit_temp(const struct conv_opts *o, const char *tmp, struct conv_stats *st)
{
	struct stat sst;
	const char *dst = o->dst;

	KL_TRY(kl_io_rename(tmp, dst));
	if (o->cache != CONV_CACHE_UNSAFE)
		kl_io_sync_dir(dst);
	if (stat(dst, &sst) == 0)
		st->output_size = (uint64_t)sst.st_size;
	return 0;
}

/* Convert one image through a temporary name into o->dst. */
static int conv_one(const struct conv_opts *o, struct conv_stats *st)
{
	char *tmp = conv_temp_name(o->dst, NULL);
	int rc;

	if (!tmp)
		return -ENOMEM;
	rc = conv_into(o, tmp, st);
	if (rc == 0 && o->verify)
		rc = conv_verify_file(o, tmp, o->dst_fmt, st);
	if (rc == 0 && conv_interrupted())
		rc = kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
	if (rc == 0)
		rc = commit_temp(o, tmp, st);
	if (rc < 0)
		kl_io_unlink(tmp);
	kl_free(tmp);
	st->layers = rc == 0;
	return rc;
}

/* ------------------------------------------------------------------ --keep-chain */

/*
 * Converting a chain layer by layer: the base first, flattened; then each
 * layer above it as an overlay (-B) of the layer just converted, holding
 * only what differs from it; DST last. Parents are written beside DST,
 * named after the source layer with the target's extension. If any layer
 * fails, the layers this run wrote are removed again.
 */
static int conv_chain(const struct conv_opts *o, struct conv_stats *st)
{
	const struct blk_driver *drv = blk_driver_find(o->dst_fmt);
	struct blk_open_opts so;
	struct blk_dev *top = NULL;
	char **paths = NULL, **outs = NULL;
	int n = 0, done = 0, rc;

	if (!drv)
		return kl_err(-EINVAL, "unknown format '%s' (see 'keel help formats')", o->dst_fmt);
	conv_src_open_opts(o, &so);
	KL_TRY(blk_open(o->src, &so, &top));
	for (struct blk_dev *d = top; d; d = blk_parent(d))
		n++;
	paths = kl_calloc((size_t)n, sizeof(*paths));
	outs = kl_calloc((size_t)n, sizeof(*outs));
	if (!paths || !outs) {
		rc = -ENOMEM;
		goto out;
	}
	/* paths[0] = base ... paths[n-1] = top */
	{
		int i = n - 1;

		for (struct blk_dev *d = top; d; d = blk_parent(d), i--)
			paths[i] = kl_strdup(blk_filename(d));
	}
	for (int i = 0; i < n; i++) {
		if (!paths[i]) {
			rc = -ENOMEM;
			goto out;
		}
	}
	blk_close(top);
	top = NULL;
	if (n > 1 && !blk_driver_can_create(drv)) {
		rc = kl_err(-ENOTSUP, "format %s cannot be created", o->dst_fmt);
		goto out;
	}
	for (int i = 0; i < n - 1; i++) {
		char *c1 = kl_strdup(o->dst), *c2 = kl_strdup(paths[i]), *dot;

		if (!c1 || !c2) {
			kl_free(c1);
			kl_free(c2);
			rc = -ENOMEM;
			goto out;
		}
		dot = strrchr(basename(c2), '.');
		if (dot)
			*dot = '\0';
		outs[i] = kl_asprintf("%s/%s.%s", dirname(c1), basename(c2), blk_driver_name(drv));
		kl_free(c1);
		kl_free(c2);
		if (!outs[i]) {
			rc = -ENOMEM;
			goto out;
		}
		if (access(outs[i], F_OK) == 0) {
			rc = kl_err(-EEXIST, "--keep-chain: %s (for layer %s) already exists", outs[i],
				    paths[i]);
			goto out;
		}
	}
	outs[n - 1] = kl_strdup(o->dst);
	if (!outs[n - 1]) {
		rc = -ENOMEM;
		goto out;
	}
	for (int i = 0; i < n; i++) {
		struct conv_opts lo = *o;
		struct conv_stats ls = { 0 };
		char *ref = NULL;

		lo.src = paths[i];
		lo.src_fmt = NULL;
		lo.src_select = NULL;
		lo.dst = outs[i];
		lo.keep_chain = false;
		lo.backing = NULL;
		lo.backing_fmt = NULL;
		if (i > 0) {
			char *c = kl_strdup(outs[i - 1]);

			ref = c ? kl_strdup(basename(c)) : NULL;
			kl_free(c);
			if (!ref) {
				rc = -ENOMEM;
				goto out;
			}
			lo.backing = ref;
			lo.backing_fmt = blk_driver_name(drv);
		} else if (o->backing) {
			lo.backing = o->backing;
			lo.backing_fmt = o->backing_fmt;
		}
		rc = conv_one(&lo, &ls);
		kl_free(ref);
		st->bytes_read += ls.bytes_read;
		st->bytes_written += ls.bytes_written;
		st->bytes_stored += ls.bytes_stored;
		st->zero_skipped += ls.zero_skipped;
		st->zero_detected += ls.zero_detected;
		st->virtual_size = ls.virtual_size;
		st->output_size = ls.output_size;
		st->threads = ls.threads;
		st->memory_bound = ls.memory_bound;
		st->verified = ls.verified;
		st->verify_failed = ls.verify_failed;
		memcpy(st->digest, ls.digest, 32);
		if (rc < 0) {
			rc = kl_err_prefix(rc, "--keep-chain: layer %s", paths[i]);
			goto out;
		}
		done++;
		st->layers = done;
	}
	rc = 0;
out:
	if (rc < 0) {
		for (int i = 0; i < done; i++)
			kl_io_unlink(outs[i]);
	}
	blk_close(top);
	for (int i = 0; paths && i < n; i++)
		kl_free(paths[i]);
	for (int i = 0; outs && i < n; i++)
		kl_free(outs[i]);
	kl_free(paths);
	kl_free(outs);
	return rc;
}

/* ------------------------------------------------------------------ packages */

static const struct conv_package conv_packages[] = {
	{ "ova", "OVF package (tar: vm.ovf, vm.mf, streamOptimized VMDK) for ESXi/VirtualBox",
	  "  name=NAME                  the VM's name, and the members' (DST's base name)\n"
	  "  cpus=1..128                virtual CPUs (1)\n"
	  "  memory=MiB                 memory (1024)\n"
	  "  manifest=sha256|sha1|none  digests in NAME.mf; sha1 for old vSphere (sha256)\n"
	  "  network=NAME|none          the NIC's network (VM Network)\n"
	  "  controller=scsi|sata|ide   the disks' controller (scsi)\n"
	  "  vmx=4..99                  virtual hardware family vmx-N (10)\n"
	  "  os=0..200                  CIM operating system type (1: other)\n"
	  "  chunk_size=4K..8G          split each disk member into chunks of this size\n"
	  "                             (split only past tar's 8 GiB member limit)\n",
	  conv_ova_write },
	{ "gce", "Google Compute Engine import: sparse disk.raw in a gzip-compressed tar",
	  "  sparse=on|off              keep disk.raw's holes (a pax GNU 1.0 sparse\n"
	  "                             map) (on)\n"
	  "  level=1..9                 gzip level (6)\n",
	  conv_gce_write },
};

const struct conv_package *conv_package_find(const char *name)
{
	for (size_t i = 0; i < KL_ARRAY_SIZE(conv_packages); i++)
		if (name && strcmp(conv_packages[i].name, name) == 0)
			return &conv_packages[i];
	return NULL;
}

const char *conv_format_help(const char *name)
{
	const struct conv_package *pkg = conv_package_find(name);
	const struct blk_driver *drv = blk_driver_find(name);

	return pkg ? pkg->help : drv ? blk_driver_create_help(drv) : NULL;
}

bool conv_package_at(size_t i, const char **name, const char **desc)
{
	if (i >= KL_ARRAY_SIZE(conv_packages))
		return false;
	*name = conv_packages[i].name;
	*desc = conv_packages[i].desc;
	return true;
}

static int conv_pkg_checks(const struct conv_package *pkg, const struct conv_opts *o)
{
	if (o->backing || o->keep_chain)
		return kl_err(-ENOTSUP, "-O %s writes a single flat disk: -B and --keep-chain do "
					"not apply",
			      pkg->name);
	return 0;
}

static int conv_pkg(const struct conv_package *pkg, const struct conv_opts *o,
		    struct conv_stats *st)
{
	char *tmp;
	int rc;

	KL_TRY(conv_pkg_checks(pkg, o));
	tmp = conv_temp_name(o->dst, NULL);
	if (!tmp)
		return -ENOMEM;
	rc = pkg->run(o, tmp, st);
	if (rc == 0 && conv_interrupted())
		rc = kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
	if (rc == 0)
		rc = commit_temp(o, tmp, st);
	if (rc < 0)
		kl_io_unlink(tmp);
	kl_free(tmp);
	st->layers = rc == 0;
	return rc;
}

/* ------------------------------------------------------------------ into a device */

/*
 * DST is a block device (an LVM volume, a disk, a loop device). There is
 * no temporary name to write and rename there (renaming over the device
 * node would replace it with a regular file), so the image goes in place,
 * raw, over the device's first bytes; whatever lies past the image's end
 * is left alone. The device is opened O_EXCL first and held: the kernel
 * refuses that while it is mounted or claimed (a volume group, RAID, an
 * exclusive opener) and keeps it from being mounted during the copy. The
 * device does not read as zeros, so SRC's zero ranges are written as zeros
 * too (discard-with-zeroing where the device offers it). An error or a
 * signal leaves the device partly written, and the error says so.
 */
static int conv_device(const struct conv_opts *o, struct conv_stats *st)
{
	struct blk_open_opts so;
	struct blk_open_opts dop = { .format = "raw",
				     .flags = BLK_OPEN_RDWR | conv_blk_cache_flags(o) };
	struct blk_dev *src = NULL, *dst = NULL;
	struct stat dst_st;
	uint64_t dsize = 0;
	bool touched = false;
	int hold, rc;

	if (strcmp(o->dst_fmt, "raw") != 0)
		return kl_err(-ENOTSUP, "%s is a block device: keel writes into devices only raw "
					"(-O raw), not %s; nothing was written",
			      o->dst, o->dst_fmt);
	if (o->backing || o->keep_chain)
		return kl_err(-ENOTSUP, "%s is a block device: -B and --keep-chain need image "
					"files; nothing was written",
			      o->dst);
	do {
		hold = open(o->dst, O_RDWR | O_EXCL | O_CLOEXEC);
	} while (hold < 0 && errno == EINTR);
	if (hold < 0 && errno == EBUSY)
		return kl_err(-EBUSY, "%s is in use (mounted, part of a volume group or RAID, or "
				      "held by another program): nothing was written",
			      o->dst);
	if (hold < 0)
		return kl_err(-errno, "%s: %s", o->dst, strerror(errno));
	if (ioctl(hold, BLKGETSIZE64, &dsize) < 0) {
		rc = kl_err(-errno, "%s: size of the device: %s", o->dst, strerror(errno));
		goto out;
	}
	conv_src_open_opts(o, &so);
	rc = blk_open(o->src, &so, &src);
	if (rc < 0)
		goto out;
	st->virtual_size = blk_size(src);
	if (fstat(hold, &dst_st) == 0 &&
	    blk_chain_uses(src, (uint64_t)dst_st.st_dev, (uint64_t)dst_st.st_ino)) {
		rc = kl_err(-EINVAL, "%s is %s itself or one of its backing images: it cannot be "
				     "written in place with its own content; nothing was written",
			    o->dst, o->src);
		goto out;
	}
	if (dsize < st->virtual_size) {
		rc = kl_err(-ENOSPC, "%s holds %llu bytes, %s needs %llu: nothing was written",
			    o->dst, (unsigned long long)dsize, o->src,
			    (unsigned long long)st->virtual_size);
		goto out;
	}
	rc = blk_open(o->dst, &dop, &dst);
	if (rc < 0)
		goto out;
	touched = true;
	rc = conv_copy(o, &so, src, dst, true, st);
	if (rc < 0)
		goto out;
	blk_close(dst);
	dst = NULL;
	if (o->verify) {
		rc = verify_as(o, o->dst, "raw", true, st);
		if (rc < 0)
			goto out;
	}
	st->output_size = st->virtual_size;
	st->layers = 1;
out:
	blk_close(dst);
	blk_close(src);
	close(hold);
	if (rc < 0 && touched && !st->verify_failed) {
		char *m = kl_strdup(kl_errmsg());

		rc = kl_err(rc, "%s (%s is now partly written)", m ? m : kl_strerror(rc), o->dst);
		kl_free(m);
	}
	return rc;
}

/* ------------------------------------------------------------------ run */

int conv_run(const struct conv_opts *uo, struct conv_stats *st)
{
	const struct conv_package *pkg;
	struct conv_opts lo = *uo, *o = &lo;
	double t0 = kl_now();
	struct stat sst, lst;
	char *real = NULL;
	int rc;

	memset(st, 0, sizeof(*st));
	if (lo.dst_opts)
		KL_TRY(conv_apply_profiles(&lo.dst_opts, &lo.dst_fmt));
	if (!o->dst_fmt)
		return kl_err(-EINVAL, "an output format is needed (-O)");
	pkg = conv_package_find(o->dst_fmt);
	if (!pkg && !blk_driver_find(o->dst_fmt))
		return kl_err(-EINVAL, "unknown output format '%s' (see 'keel help formats')",
			      o->dst_fmt);
	if (o->n_extra_srcs && !(pkg && pkg->run == conv_ova_write))
		return kl_err(-EINVAL, "several sources make one output only with -O ova");
	if (strcmp(o->dst, "-") == 0) {
		/*
		 * Standard output: only a format written strictly front to
		 * back, with nothing to go back and patch (-O gce). It cannot
		 * be renamed into place, so an error leaves what was written.
		 */
		if (!pkg || pkg->run != conv_gce_write)
			return kl_err(-EINVAL, "DST '-' (standard output) takes only -O gce, which "
					       "is written front to back; -O %s needs a file (./- "
					       "for one named '-')",
				      o->dst_fmt);
		if (o->verify)
			return kl_err(-EINVAL, "--verify reads DST back: not possible on standard "
					       "output");
		if (isatty(STDOUT_FILENO))
			return kl_err(-EINVAL, "standard output is a terminal: redirect it to a "
					       "file or a pipe");
		rc = conv_pkg_checks(pkg, o);
		if (rc == 0)
			rc = pkg->run(o, "-", st);
		st->output_size = rc == 0 ? st->bytes_stored : 0; /* what went down the pipe */
		st->layers = rc == 0;
		st->seconds = kl_now() - t0;
		return rc;
	}
	/*
	 * An existing DST that is not a plain file must never meet the
	 * write-a-temporary-then-rename path, which would replace it.
	 */
	if (lstat(o->dst, &lst) == 0) {
		if (stat(o->dst, &sst) < 0)
			return kl_err(-ENOENT, "%s is a symbolic link to nothing: not followed, "
					       "nothing was written",
				      o->dst);
		if (S_ISDIR(sst.st_mode))
			return kl_err(-EISDIR, "%s is a directory", o->dst);
		if (S_ISBLK(sst.st_mode)) {
			rc = conv_device(o, st);
			st->seconds = kl_now() - t0;
			return rc;
		}
		if (!S_ISREG(sst.st_mode))
			return kl_err(-EINVAL, "%s is not a regular file or a block device: "
					       "nothing was written",
				      o->dst);
		if (S_ISLNK(lst.st_mode)) {
			/* replace the file the link names, not the link */
			real = realpath(o->dst, NULL);
			if (!real)
				return kl_err(-errno, "%s: %s", o->dst, strerror(errno));
			lo.dst = real;
		}
	}
	conv_remove_stale_temps(o->dst);
	if (pkg)
		rc = conv_pkg(pkg, o, st);
	else if (o->keep_chain)
		rc = conv_chain(o, st);
	else
		rc = conv_one(o, st);
	st->seconds = kl_now() - t0;
	free(real);
	return rc;
}
