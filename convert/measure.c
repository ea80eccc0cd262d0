/*
 * convert/measure.c - keel measure: how big will the converted image be?
 *
 * Like qemu-img measure: "required" is what converting SRC would take,
 * "fully allocated" what the image takes with every cluster allocated.
 * The driver predicts from SRC's metadata (blk_measure); a driver without
 * a prediction gets a generic estimate: an empty image made with the same
 * options in a scratch directory gives the fixed overhead and the unit the
 * format allocates in (its cluster or block size); SRC's data counted in
 * those units is added, plus 1/256 of it and a table per region the data
 * touches for mapping tables.
 * With -c, and for targets that always compress (a .keel image unless
 * -o compression=none, a streamOptimized VMDK), the data is read and
 * encoded by the copy pipeline without writing anything, so the
 * compressed size is measured, not guessed; each
 * cluster is counted as the format would store it (blk_encoded_footprint:
 * keel's whole blocks, qcow2's packing into host clusters), so the
 * prediction is never below the file.
 */
#define _GNU_SOURCE
#include "convert/conv_int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Create an empty image with o in a scratch directory; its path in *out. */
static int scratch_image(const char *fmt, const struct blk_create_opts *o, char **dir,
			 char **out)
{
	char *d;
	int rc;

	*dir = *out = NULL;
	rc = kl_scratch_dir(NULL, "keel-measure", &d);
	if (rc < 0)
		return kl_err_prefix(rc, "measure");
	*out = kl_asprintf("%s/probe", d);
	rc = *out ? blk_create(*out, fmt, o) : -ENOMEM;
	if (rc < 0) {
		kl_scratch_remove(d);
		kl_free(*out);
		*out = NULL;
		return rc;
	}
	*dir = d;
	return 0;
}

static void scratch_remove(char *dir, char *path)
{
	kl_free(path);
	kl_scratch_remove(dir);
}

static int generic_estimate(const char *fmt, const struct blk_create_opts *co, struct blk_dev *in,
			    struct blk_measure *m)
{
	struct blk_open_opts oo = { .format = fmt };
	struct blk_dev *probe = NULL;
	char *dir, *path;
	struct stat st;
	uint64_t data = 0, gran = CONV_BLOCK, tables = 0;
	int rc;

	KL_TRY(scratch_image(fmt, co, &dir, &path));
	rc = stat(path, &st) == 0 ? 0 : kl_err(-errno, "measure: %s: %s", path, strerror(errno));
	/* the format allocates in units of its cluster (a VHD block, a VHDX block...) */
	if (rc == 0 && blk_open(path, &oo, &probe) == 0) {
		gran = KL_MAX((uint64_t)4096, (uint64_t)blk_cluster_size(probe));
		if (!KL_IS_POW2(gran))
			gran = CONV_BLOCK;
		blk_close(probe);
	}
	kl_err_clear();
	scratch_remove(dir, path);
	KL_TRY(rc);
	if (in)
		KL_TRY(blk_measure_allocated(in, gran, &data));
	if (in && data) {
		/*
		 * Mapping tables grow with where the data lies, not only with
		 * how much there is: each region the data touches needs its
		 * own table (a .keel leaf maps 256 clusters, 16 MiB at 64 KiB,
		 * and each level above 256 times that; a VMDK grain table 512
		 * grains). Count a 4 KiB table per touched 16 MiB, 4 GiB and
		 * 1 TiB, and two more for the path a copy-on-write commit
		 * rewrites: small and sparse data otherwise came out below the
		 * file.
		 */
		static const unsigned spans[] = { 24, 32, 40 };

		tables = 2 * 4096;
		for (size_t i = 0; i < KL_ARRAY_SIZE(spans); i++) {
			uint64_t t = 0;

			KL_TRY(blk_measure_allocated(in, 1ULL << spans[i], &t));
			tables += (t >> spans[i]) << 12;
		}
	}
	if ((uint64_t)st.st_size >= co->size) {
		/* a preallocated layout: the file already has room for every byte */
		m->required = m->fully_allocated = (uint64_t)st.st_size;
		m->data = data;
		return 0;
	}
	m->data = data;
	m->required = (uint64_t)st.st_size + data + data / 256 + tables;
	m->fully_allocated = (uint64_t)st.st_size + KL_ALIGN_UP(co->size, gran) + co->size / 256;
	m->fully_allocated = KL_MAX(m->fully_allocated, m->required);
	return 0;
}

/*
 * -c, or a target that compresses on its own (a .keel image by default, a
 * streamOptimized VMDK): encode SRC's data with the pipeline into an image
 * that is never written. Without -c, a target that stores data plainly is
 * left to the estimate: 0 and *encoded false.
 */
static int measure_encoded(const struct conv_opts *o, const struct blk_create_opts *co,
			   struct blk_dev *in, uint64_t *stored, bool *encoded)
{
	struct blk_open_opts so;
	struct blk_open_opts dop = { .format = o->dst_fmt, .flags = BLK_OPEN_RDWR };
	struct conv_pipe_cfg pc = { 0 };
	struct conv_stats st = { 0 };
	struct blk_dev *dst = NULL;
	char *dir, *path;
	int rc;

	conv_src_open_opts(o, &so);
	*encoded = false;
	rc = scratch_image(o->dst_fmt, co, &dir, &path);
	if (rc == -ENOKEY) {
		/* encrypted (LUKS): stored plainly, never compressed; the estimate stands */
		kl_err_clear();
		return 0;
	}
	if (rc < 0)
		return rc;
	dop.opts = co->opts;
	rc = blk_open(path, &dop, &dst);
	*encoded = rc == 0 && (o->compress || blk_can_encode(dst));
	if (*encoded) {
		pc.src = o->src;
		pc.so = so;
		pc.src_dev = in;
		pc.dst = dst;
		pc.count_only = true;
		pc.threads = o->threads;
		pc.progress = o->progress;
		pc.label = "measuring";
		rc = conv_pipe_run(&pc, &st);
		*stored = st.bytes_stored;
	}
	blk_close(dst);
	scratch_remove(dir, path);
	return rc;
}

int conv_measure(const struct conv_opts *uo, uint64_t size, struct conv_measure *m)
{
	struct conv_opts lo = *uo, *o = &lo;
	struct blk_open_opts so;
	struct blk_create_opts co = { 0 };
	struct blk_measure bm;
	struct blk_dev *in = NULL;
	struct kl_opts *own = NULL;
	int rc;

	memset(m, 0, sizeof(*m));
	conv_src_open_opts(o, &so);
	if (lo.dst_opts)
		KL_TRY(conv_apply_profiles(&lo.dst_opts, &lo.dst_fmt));
	if (!o->dst_fmt)
		return kl_err(-EINVAL, "an output format is needed (-O)");
	if (conv_package_find(o->dst_fmt))
		return kl_err(-ENOTSUP, "measure: -O %s is a package; measure its disk format "
					"instead (vmdk -o subformat=streamOptimized for ova, raw for gce)",
			      o->dst_fmt);
	if (o->src) {
		KL_TRY(blk_open(o->src, &so, &in));
		size = blk_size(in);
	}
	co.size = size;
	co.opts = o->dst_opts;
	if (o->compress) {
		if (!co.opts) {
			rc = kl_opts_set(&own, "compress", "on");
			co.opts = own;
		} else {
			rc = kl_opts_set(&co.opts, "compress", "on");
		}
		if (rc < 0)
			goto out;
	}
	rc = blk_measure(o->dst_fmt, &co, in, &bm);
	if (rc == -ENOTSUP) {
		kl_err_clear();
		rc = generic_estimate(o->dst_fmt, &co, in, &bm);
	}
	if (rc < 0)
		goto out;
	m->required = bm.required;
	m->fully_allocated = bm.fully_allocated;
	m->data = bm.data;
	if (in) {
		uint64_t stored = 0;
		bool encoded = false;

		rc = measure_encoded(o, &co, in, &stored, &encoded);
		if (rc < 0)
			goto out;
		if (encoded) {
			m->required = m->required - KL_MIN(m->required, bm.data) + stored;
			m->data = stored;
			m->exact_data = true;
		}
	}
out:
	blk_close(in);
	kl_opts_free(own);
	return rc;
}
