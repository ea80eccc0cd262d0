/*
 * format/core.c - the block-device core: probing, opening chains, bounds,
 * alignment, and reads that fall through to parents.
 */
#define _GNU_SOURCE
#include "format/format_int.h"

#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct blk_chain {
	uint64_t dev[BLK_MAX_CHAIN + 1];
	uint64_t ino[BLK_MAX_CHAIN + 1];
	int n;
};

/* ------------------------------------------------------------------ registry */

const struct blk_driver *blk_driver_find(const char *name)
{
	if (!name)
		return NULL;
	for (size_t i = 0; blk_drivers[i]; i++)
		if (strcmp(blk_drivers[i]->name, name) == 0)
			return blk_drivers[i];
	/* qemu-img's name for VHD, so -f vpc works for people used to it */
	if (strcmp(name, "vpc") == 0)
		return blk_driver_find("vhd");
	return NULL;
}

const struct blk_driver *blk_driver_at(size_t i)
{
	for (size_t k = 0; blk_drivers[k]; k++)
		if (k == i)
			return blk_drivers[k];
	return NULL;
}

const char *blk_driver_name(const struct blk_driver *drv)
{
	return drv->name;
}

const char *blk_driver_desc(const struct blk_driver *drv)
{
	return drv->desc;
}

bool blk_driver_can_create(const struct blk_driver *drv)
{
	return (drv->flags & BLK_DRV_CAN_CREATE) && drv->create;
}

bool blk_driver_create_needs_key(const struct blk_driver *drv)
{
	return blk_driver_can_create(drv) && (drv->flags & BLK_DRV_CREATE_KEY);
}

const char *blk_driver_create_help(const struct blk_driver *drv)
{
	return blk_driver_can_create(drv) ? drv->create_help : NULL;
}

/* ------------------------------------------------------------------ probing */

/*
 * What a file no format recognised looks like when it is a compressed file
 * or an archive rather than a disk: a GCE image.tar.gz, a cloud image's
 * disk.raw.xz. Read as raw, those convert "successfully" into a disk of
 * garbage, so an open that probed raw refuses them (-f raw still reads the
 * bytes). NULL when nothing matches.
 */
static const char *packed_kind(const struct blk_probe_buf *pb)
{
	static const struct {
		const char *magic;
		size_t off, len;
		const char *what;
	} kinds[] = {
		{ "\x1f\x8b\x08", 0, 3, "gzip-compressed data (not a tar: a gzipped disk?)" },
		{ "\xfd" "7zXZ\0", 0, 6, "xz-compressed data" },
		{ "\x28\xb5\x2f\xfd", 0, 4, "zstd-compressed data" },
		{ "BZh", 0, 3, "bzip2-compressed data" },
		{ "PK\x03\x04", 0, 4, "a zip archive" },
		{ "7z\xbc\xaf\x27\x1c", 0, 6, "a 7-Zip archive" },
		{ "ustar", 257, 5, "a tar archive (not an OVA, no disk.raw first: -f gce FILE@MEMBER reads a raw disk in it)" },
	};

	for (size_t i = 0; i < KL_ARRAY_SIZE(kinds); i++) {
		if (pb->head_len < kinds[i].off + kinds[i].len ||
		    memcmp(pb->head + kinds[i].off, kinds[i].magic, kinds[i].len) != 0)
			continue;
		/* "BZh" then the block size digit and the block magic (pi) */
		if (i == 3 && (pb->head_len < 10 || pb->head[3] < '1' || pb->head[3] > '9' ||
			       memcmp(pb->head + 4, "\x31\x41\x59\x26\x53\x59", 6) != 0))
			continue;
		return kinds[i].what;
	}
	return NULL;
}

const struct blk_driver *blk_probe_best(const struct blk_probe_buf *pb, int *score)
{
	const struct blk_driver *best = NULL;

	*score = 0;
	for (size_t i = 0; blk_drivers[i]; i++) {
		const struct blk_driver *drv = blk_drivers[i];
		int sc;

		if (!drv->probe || (drv->flags & BLK_DRV_NO_PROBE))
			continue;
		sc = drv->probe(pb);
		if (sc > *score) {
			*score = sc;
			best = drv;
		}
	}
	return best;
}

/* *packed (may be NULL): packed_kind() of a file that probed as raw */
static int probe_open_file(struct kl_file *f, const char *name, const struct blk_driver **out,
			   const char **packed)
{
	uint8_t *head = NULL, *tail = NULL;
	struct blk_probe_buf pb = { 0 };
	const struct blk_driver *best = NULL;
	int best_score = 0;
	uint64_t size;
	ssize_t n;
	int rc;

	*out = NULL;
	/* a pipe: its head only (its end is not there yet) */
	if (kl_io_is_stream(f))
		size = UINT64_MAX;
	else
		KL_TRY(kl_io_size(f, &size));
	head = kl_malloc(BLK_PROBE_HEAD);
	tail = kl_malloc(BLK_PROBE_TAIL);
	if (!head || !tail) {
		rc = -ENOMEM;
		goto out;
	}
	n = kl_io_pread(f, 0, head, BLK_PROBE_HEAD);
	if (n < 0) {
		rc = (int)n;
		goto out;
	}
	pb.head = head;
	pb.head_len = (size_t)n;
	pb.tail_len = kl_io_is_stream(f) ? 0 : (size_t)KL_MIN(size, (uint64_t)BLK_PROBE_TAIL);
	n = pb.tail_len ? kl_io_pread(f, size - pb.tail_len, tail, pb.tail_len) : 0;
	if (n < 0) {
		rc = (int)n;
		goto out;
	}
	pb.tail = tail;
	pb.tail_len = (size_t)n;
	pb.file_size = size;
	pb.filename = name;
	best = blk_probe_best(&pb, &best_score);
	rc = 0;
	*out = best ? best : blk_driver_find("raw");
	if (packed)
		*packed = strcmp((*out)->name, "raw") == 0 ? packed_kind(&pb) : NULL;
out:
	kl_free(head);
	kl_free(tail);
	return rc;
}

int blk_probe_file(const char *path, const struct blk_driver **out)
{
	struct kl_file *f;
	int rc;

	KL_TRY(kl_io_open(path, KL_O_RDONLY, &f));
	rc = probe_open_file(f, path, out, NULL);
	kl_io_close(f);
	return rc;
}

/* ------------------------------------------------------------------ paths */

static char *dir_of(const char *path)
{
	char *copy = kl_strdup(path);
	char *d;

	if (!copy)
		return NULL;
	d = kl_strdup(dirname(copy));
	kl_free(copy);
	return d;
}

/*
 * Resolve name against base_dir and enforce that it stays inside it unless
 * allow_external. A missing target is -ENOENT naming the resolved path.
 */
static int resolve_in_dir(const char *base_dir, const char *name, bool allow_external,
			  const char *who, char **out)
{
	char *cand, *real_dir = NULL, *real_cand = NULL;
	size_t dl;
	int rc = 0;

	*out = NULL;
	if (!name || !*name)
		return kl_err(-EUCLEAN, "%s: empty file reference", who);
	if (name[0] == '/')
		cand = kl_strdup(name);
	else
		cand = kl_asprintf("%s/%s", base_dir, name);
	if (!cand)
		return -ENOMEM;
	real_cand = realpath(cand, NULL);
	if (!real_cand) {
		rc = kl_err(-ENOENT, "%s: '%s' not found (resolved to %s)", who, name, cand);
		goto out;
	}
	if (!allow_external) {
		real_dir = realpath(base_dir, NULL);
		if (!real_dir) {
			rc = kl_err(-errno, "%s: directory %s: %s", who, base_dir, strerror(errno));
			goto out;
		}
		dl = strlen(real_dir);
		if (strcmp(real_dir, "/") != 0 &&
		    (strncmp(real_cand, real_dir, dl) != 0 || real_cand[dl] != '/')) {
			rc = kl_err(-EPERM,
				    "%s: reference '%s' resolves to %s, outside the image's directory %s "
				    "(pass --allow-external-backing to follow it)",
				    who, name, real_cand, real_dir);
			goto out;
		}
	}
	*out = cand;
	cand = NULL;
out:
	kl_free(cand);
	free(real_dir);
	free(real_cand);
	return rc;
}

int blk_resolve_path(struct blk_dev *d, const char *name, char **out)
{
	char *dir = dir_of(d->filename);
	int rc;

	if (!dir)
		return -ENOMEM;
	rc = resolve_in_dir(dir, name, d->flags & BLK_OPEN_ALLOW_EXTERNAL, d->filename, out);
	kl_free(dir);
	return rc;
}

int blk_open_aux(struct blk_dev *d, const char *name, unsigned kl_flags, struct kl_file **out)
{
	char *path;
	int rc;

	*out = NULL;
	KL_TRY(blk_resolve_path(d, name, &path));
	if (d->read_only)
		kl_flags &= ~(unsigned)KL_O_RDWR;
	rc = kl_io_open(path, kl_flags, out);
	kl_free(path);
	return rc;
}

/* ------------------------------------------------------------------ open */

static int split_snapshot(const char *spec, char **path, char **snap)
{
	struct stat st;
	const char *at;

	*path = NULL;
	*snap = NULL;
	if (stat(spec, &st) == 0 || !(at = strrchr(spec, '@')) || at == spec) {
		*path = kl_strdup(spec);
		return *path ? 0 : -ENOMEM;
	}
	*path = kl_strndup(spec, (size_t)(at - spec));
	*snap = kl_strdup(at + 1);
	if (!*path || !*snap) {
		kl_free(*path);
		kl_free(*snap);
		*path = *snap = NULL;
		return -ENOMEM;
	}
	if (!**snap) {
		kl_free(*snap);
		*snap = NULL;
	}
	return 0;
}

static void dev_free(struct blk_dev *d)
{
	if (!d)
		return;
	kl_io_close(d->file);
	kl_free(d->priv);
	kl_free(d->filename);
	kl_free(d->snapshot);
	kl_free(d);
}

/* file: an already open file to use (ownership passes to the device), or NULL to open path */
static int open_path(const char *path, const char *snapshot, const struct blk_open_opts *o,
		     struct blk_chain *chain, int depth, struct kl_file *file,
		     struct blk_dev **out)
{
	const struct blk_driver *drv = NULL;
	struct blk_dev *d;
	bool rw = o->flags & BLK_OPEN_RDWR;
	uint64_t dev, ino;
	int rc;

	*out = NULL;
	if (depth > BLK_MAX_CHAIN) {
		kl_io_close(file);
		return kl_err(-ELOOP, "%s: parent chain deeper than %d images", path, BLK_MAX_CHAIN);
	}
	d = kl_calloc(1, sizeof(*d));
	if (!d) {
		kl_io_close(file);
		return -ENOMEM;
	}
	d->file = file;
	d->filename = kl_strdup(path);
	if (!d->filename) {
		rc = -ENOMEM;
		goto err;
	}
	if (snapshot && !(d->snapshot = kl_strdup(snapshot))) {
		rc = -ENOMEM;
		goto err;
	}
	/* snapshots are views of the past: never writable */
	if (snapshot)
		rw = false;
	if (file && rw && !kl_io_writable(file)) {
		rc = kl_err(-EROFS, "%s: opened read-only", path);
		goto err;
	}
	if (!file) {
		rc = kl_io_open(path, blk_file_kl_flags(rw, o->flags), &d->file);
		if (rc < 0)
			goto err;
	}
	/* one writer per image; readers never wait (they see committed states) */
	if (rw) {
		rc = kl_io_lock(d->file, o->flags & BLK_OPEN_WAIT);
		if (rc == -EBUSY)
			rc = kl_err(-EBUSY, "%s is being written by another keel command; try again "
				    "later or pass --wait", path);
		if (rc < 0)
			goto err;
	} else if ((o->flags & BLK_OPEN_NO_WRITER) && kl_io_writer_active(d->file)) {
		rc = kl_err(-EBUSY, "%s is open for writing by another program (a running VM, "
				    "qemu-img, or a keel command): a copy taken now could be torn; "
				    "stop or snapshot the VM first, or pass -U (--force-share) to "
				    "copy it anyway",
			    path);
		goto err;
	}
	rc = kl_io_identity(d->file, &dev, &ino);
	if (rc < 0)
		goto err;
	for (int i = 0; i < chain->n; i++) {
		if (chain->dev[i] == dev && chain->ino[i] == ino) {
			rc = kl_err(-ELOOP, "%s: parent chain loops back to an image already in it",
				    path);
			goto err;
		}
	}
	chain->dev[chain->n] = dev;
	chain->ino[chain->n] = ino;
	chain->n++;

	if (o->format) {
		drv = blk_driver_find(o->format);
		if (!drv) {
			rc = kl_err(-EINVAL, "unknown format '%s' (see 'keel help formats')",
				    o->format);
			goto err;
		}
	} else {
		const char *packed = NULL;

		rc = probe_open_file(d->file, path, &drv, &packed);
		if (rc < 0)
			goto err;
		d->probed = true;
		if (packed) {
			rc = kl_err(-EMEDIUMTYPE, "%s is %s, not a disk image; unpack it first (or "
				    "pass -f raw to read its bytes as a disk)", path, packed);
			goto err;
		}
		/*
		 * A guest can write any header into a raw disk; if we then
		 * opened it as that format and wrote, we would corrupt it.
		 * QEMU restricts probed raw the same way.
		 */
		if (rw && strcmp(drv->name, "raw") == 0 &&
		    !(o->flags & BLK_OPEN_ALLOW_PROBED_RAW_RW)) {
			rc = kl_err(-EPERM,
				    "%s: no image format recognised (probed as raw); pass -f raw "
				    "to open it for writing",
				    path);
			goto err;
		}
	}
	if (kl_io_is_stream(d->file) && !(drv->flags & BLK_DRV_SEQUENTIAL)) {
		rc = kl_err(-ESPIPE, "%s is a pipe, and %s images need random access: only a "
				     "tar or tar.gz (format gce) can be read from a pipe; save it to "
				     "a file first",
			    path, drv->name);
		goto err;
	}
	if (snapshot && !(drv->flags & (BLK_DRV_SNAPSHOTS | BLK_DRV_SELECT))) {
		rc = kl_err(-ENOTSUP, "%s: format %s has no internal snapshots (asked for '@%s')",
			    path, drv->name, snapshot);
		goto err;
	}
	d->drv = drv;
	d->read_only = !rw;
	d->flags = o->flags;
	d->depth = depth;
	d->chain = chain;
	d->key = o->key;
	d->key_len = o->key_len;
	d->key_nl = o->key_nl;
	d->write_align = 1;
	if (drv->instance_size) {
		d->priv = kl_calloc(1, drv->instance_size);
		if (!d->priv) {
			rc = -ENOMEM;
			goto err;
		}
	}
	rc = drv->open(d, o);
	d->chain = NULL;
	d->key = NULL;
	d->key_len = 0;
	d->key_nl = 0;
	if (rc < 0) {
		blk_close(d->parent);
		d->parent = NULL;
		goto err;
	}
	if (d->write_align == 0)
		d->write_align = 1;
	*out = d;
	return 0;
err:
	dev_free(d);
	return rc;
}

int blk_open(const char *spec, const struct blk_open_opts *o, struct blk_dev **out)
{
	static const struct blk_open_opts none;
	struct blk_chain chain = { .n = 0 };
	char *path, *snap;
	int rc;

	*out = NULL;
	if (!o)
		o = &none;
	KL_TRY(split_snapshot(spec, &path, &snap));
	if (o->snapshot) {
		kl_free(snap);
		snap = kl_strdup(o->snapshot);
		if (!snap) {
			kl_free(path);
			return -ENOMEM;
		}
	}
	rc = open_path(path, snap, o, &chain, 0, NULL, out);
	kl_free(path);
	kl_free(snap);
	return rc;
}

int blk_open_file(struct kl_file *f, const struct blk_open_opts *o, struct blk_dev **out)
{
	static const struct blk_open_opts none;
	struct blk_chain chain = { .n = 0 };

	*out = NULL;
	if (!o)
		o = &none;
	return open_path(kl_io_name(f), o->snapshot, o, &chain, 0, f, out);
}

int blk_open_parent(struct blk_dev *d, const char *ref, const char *fmt)
{
	struct blk_open_opts po = { 0 };
	char *path;
	int rc;

	if (d->flags & BLK_OPEN_NO_PARENT)
		return 0;
	if (!d->chain)
		return kl_err(-EINVAL, "%s: parent opened outside of open", d->filename);
	rc = blk_resolve_path(d, ref, &path);
	if (rc < 0)
		return kl_err_prefix(rc, "opening parent of %s", d->filename);
	po.format = fmt;
	/* external permission is inherited; writability is not */
	po.flags = d->flags & (BLK_OPEN_ALLOW_EXTERNAL | BLK_OPEN_NO_CHECKSUM);
	if ((d->flags & BLK_OPEN_PARENT_RDWR) && d->depth == 0) {
		if (!fmt)
			po.flags |= BLK_OPEN_RDWR; /* probed raw is refused in open_path */
		else
			po.flags |= BLK_OPEN_RDWR | BLK_OPEN_ALLOW_PROBED_RAW_RW;
	}
	po.key = d->key;
	po.key_len = d->key_len;
	po.key_nl = d->key_nl;
	rc = open_path(path, NULL, &po, d->chain, d->depth + 1, NULL, &d->parent);
	if (rc < 0)
		rc = kl_err_prefix(rc, "opening parent '%s' of %s", ref, d->filename);
	kl_free(path);
	return rc;
}

void blk_close_discard(struct blk_dev *d)
{
	if (!d)
		return;
	d->read_only = true; /* no flush on the way out */
	blk_close(d);
}

void blk_close(struct blk_dev *d)
{
	if (!d)
		return;
	if (!d->read_only && d->drv->flush)
		d->drv->flush(d);
	if (d->drv->close)
		d->drv->close(d);
	blk_close(d->parent);
	dev_free(d);
}

/* ------------------------------------------------------------------ create */

int blk_create(const char *path, const char *format, const struct blk_create_opts *o)
{
	const struct blk_driver *drv = blk_driver_find(format ? format : "keel");
	struct blk_create_opts co = *o;
	struct stat st;
	int rc;

	if (!drv)
		return kl_err(-EINVAL, "unknown format '%s' (see 'keel help formats')", format);
	if (!blk_driver_can_create(drv))
		return kl_err(-ENOTSUP, "format %s cannot be created", drv->name);
	if (o->parent && !(drv->flags & BLK_DRV_HAS_PARENT))
		return kl_err(-ENOTSUP, "format %s cannot have a parent image", drv->name);
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
		return kl_err(-EINVAL, "%s exists and is not a regular file", path);
	if (o->parent) {
		char *dir = dir_of(path), *ppath = NULL;
		struct blk_dev *p = NULL;
		struct blk_open_opts po = { .format = o->parent_format,
					    .flags = o->flags & BLK_OPEN_ALLOW_EXTERNAL,
					    .key = o->key,
					    .key_len = o->key_len };

		if (!dir)
			return -ENOMEM;
		rc = resolve_in_dir(dir, o->parent, o->flags & BLK_OPEN_ALLOW_EXTERNAL, path, &ppath);
		kl_free(dir);
		if (rc < 0)
			return rc;
		rc = blk_open(ppath, &po, &p);
		kl_free(ppath);
		if (rc < 0)
			return kl_err_prefix(rc, "parent '%s'", o->parent);
		if (co.size == 0)
			co.size = blk_size(p);
		if (!co.parent_format)
			co.parent_format = blk_format_name(p);
		blk_close(p);
	}
	if (co.size == 0 && !o->parent)
		return kl_err(-EINVAL, "%s: a size is needed", path);
	rc = drv->create(path, &co);
	if (rc < 0)
		return rc;
	rc = kl_opts_check_unused(o->opts, drv->name);
	if (rc < 0) {
		kl_io_unlink(path);
		return rc;
	}
	return 0;
}

/* ------------------------------------------------------------------ I/O */

static int check_range(struct blk_dev *d, uint64_t off, uint64_t len, const char *what)
{
	if (!kl_range_ok(off, len, d->size))
		return kl_err(-EINVAL, "%s: %s of %llu bytes at %llu is past the virtual size %llu",
			      d->filename, what, (unsigned long long)len, (unsigned long long)off,
			      (unsigned long long)d->size);
	return 0;
}

static int drv_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	int rc;

	memset(e, 0, sizeof(*e));
	e->host_off = BLK_NO_HOST_OFFSET;
	if (!d->drv->block_status) {
		e->type = BLK_DATA;
		e->len = d->size - off;
	} else {
		rc = d->drv->block_status(d, off, len, e);
		if (rc < 0)
			return rc;
	}
	if (e->len == 0 || (e->type != BLK_DATA && e->type != BLK_ZERO && e->type != BLK_UNALLOC))
		return kl_err(-EIO, "%s: driver %s returned an invalid extent at %llu", d->filename,
			      d->drv->name, (unsigned long long)off);
	if (e->len > d->size - off)
		e->len = d->size - off;
	e->off = off;
	e->depth = 0;
	return 0;
}

int blk_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	if (len == 0 || off >= d->size)
		return kl_err(-EINVAL, "%s: block status at %llu outside the image", d->filename,
			      (unsigned long long)off);
	if (len > d->size - off)
		len = d->size - off;
	return drv_status(d, off, len, e);
}

int blk_block_status_chain(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	struct blk_dev *cur = d;
	uint64_t limit;
	int depth = 0;

	KL_TRY(blk_block_status(d, off, len, e));
	limit = e->len;
	while (e->type == BLK_UNALLOC) {
		struct blk_dev *p = cur->parent;

		if (!p || off >= p->size) {
			e->type = BLK_ZERO;
			e->flags |= BLK_EXT_NOT_ALLOCATED;
			e->host_off = BLK_NO_HOST_OFFSET;
			e->len = limit;
			if (p && off < p->size)
				e->len = KL_MIN(limit, p->size - off);
			break;
		}
		limit = KL_MIN(limit, p->size - off);
		KL_TRY(drv_status(p, off, limit, e));
		limit = KL_MIN(limit, e->len);
		e->len = limit;
		cur = p;
		depth++;
	}
	e->off = off;
	e->depth = depth;
	return 0;
}

int blk_read_below(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	if (!d->parent) {
		memset(buf, 0, len);
		return 0;
	}
	return blk_pread_padded(d->parent, off, buf, len);
}

int blk_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	uint8_t *b = buf;

	KL_TRY(check_range(d, off, len, "read"));
	if (d->drv->flags & BLK_DRV_FLAT)
		return len ? d->drv->pread(d, off, buf, len) : 0;
	while (len > 0) {
		struct blk_extent e;
		size_t n;

		KL_TRY(drv_status(d, off, len, &e));
		n = (size_t)KL_MIN(e.len, (uint64_t)len);
		switch (e.type) {
		case BLK_DATA:
			KL_TRY(d->drv->pread(d, off, b, n));
			break;
		case BLK_ZERO:
			memset(b, 0, n);
			break;
		default:
			KL_TRY(blk_read_below(d, off, b, n));
			break;
		}
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

int blk_pread_padded(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	uint8_t *b = buf;

	if (off >= d->size) {
		memset(buf, 0, len);
		return 0;
	}
	if (len > d->size - off) {
		size_t in = (size_t)(d->size - off);

		memset(b + in, 0, len - in);
		len = in;
	}
	return blk_pread(d, off, b, len);
}

static int check_writable(struct blk_dev *d)
{
	if (d->read_only)
		return kl_err(-EROFS, "%s: image is open read-only%s", d->filename,
			      d->snapshot ? " (a snapshot is never writable)" : "");
	return 0;
}

/* Read-modify-write one write_align unit that a write covers only partly. */
static int rmw_unit(struct blk_dev *d, uint64_t unit_off, uint64_t off, const uint8_t *src,
		    size_t len)
{
	uint32_t a = d->write_align;
	size_t ulen = (size_t)KL_MIN((uint64_t)a, d->size - unit_off);
	uint8_t *tmp = kl_malloc(a);
	int rc;

	if (!tmp)
		return -ENOMEM;
	rc = blk_pread(d, unit_off, tmp, ulen);
	if (rc == 0) {
		if (src)
			memcpy(tmp + (off - unit_off), src, len);
		else
			memset(tmp + (off - unit_off), 0, len);
		rc = d->drv->pwrite(d, unit_off, tmp, ulen);
	}
	kl_free(tmp);
	return rc;
}

int blk_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len)
{
	const uint8_t *b = buf;
	uint32_t a;

	KL_TRY(check_writable(d));
	KL_TRY(check_range(d, off, len, "write"));
	if (len == 0)
		return 0;
	if (!d->drv->pwrite)
		return kl_err(-ENOTSUP, "%s: format %s is read-only in keel", d->filename,
			      d->drv->name);
	a = d->write_align;
	if (a <= 1 || ((off % a) == 0 && ((len % a) == 0 || off + len == d->size)))
		return d->drv->pwrite(d, off, buf, len);
	/* unaligned head */
	if (off % a) {
		uint64_t unit = off - off % a;
		size_t n = (size_t)KL_MIN((uint64_t)len, unit + a - off);

		KL_TRY(rmw_unit(d, unit, off, b, n));
		off += n;
		b += n;
		len -= n;
	}
	if (len >= a) {
		size_t mid = len - len % a;

		KL_TRY(d->drv->pwrite(d, off, b, mid));
		off += mid;
		b += mid;
		len -= mid;
	}
	if (len)
		KL_TRY(rmw_unit(d, off, off, b, len));
	return 0;
}

static int write_zero_buffers(struct blk_dev *d, uint64_t off, uint64_t len)
{
	size_t chunk = (size_t)KL_MIN(len, (uint64_t)1 << 20);
	uint8_t *z = kl_calloc(1, chunk ? chunk : 1);
	int rc = 0;

	if (!z)
		return -ENOMEM;
	while (len && rc == 0) {
		size_t n = (size_t)KL_MIN(len, (uint64_t)chunk);

		rc = blk_pwrite(d, off, z, n);
		off += n;
		len -= n;
	}
	kl_free(z);
	return rc;
}

int blk_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags)
{
	uint32_t a = d->write_align;

	KL_TRY(check_writable(d));
	KL_TRY(check_range(d, off, len, "write"));
	if (len == 0)
		return 0;
	if (!d->drv->pwrite_zeroes)
		return write_zero_buffers(d, off, len);
	if (a <= 1)
		return d->drv->pwrite_zeroes(d, off, len, flags);
	if (off % a) {
		uint64_t unit = off - off % a;
		size_t n = (size_t)KL_MIN(len, unit + a - off);

		KL_TRY(rmw_unit(d, unit, off, NULL, n));
		off += n;
		len -= n;
	}
	if (len >= a || (len && off + len == d->size)) {
		uint64_t mid = off + len == d->size ? len : len - len % a;

		KL_TRY(d->drv->pwrite_zeroes(d, off, mid, flags));
		off += mid;
		len -= mid;
	}
	if (len)
		KL_TRY(rmw_unit(d, off, off, NULL, (size_t)len));
	return 0;
}

int blk_discard(struct blk_dev *d, uint64_t off, uint64_t len)
{
	KL_TRY(check_writable(d));
	KL_TRY(check_range(d, off, len, "discard"));
	if (len == 0)
		return 0;
	if (d->drv->discard && d->write_align <= 1)
		return d->drv->discard(d, off, len);
	return blk_pwrite_zeroes(d, off, len, BLK_ZERO_MAY_UNMAP);
}

void blk_writeback(struct blk_dev *d)
{
	if (!d->read_only)
		kl_io_writeback(d->file);
}

bool blk_zero_init(const struct blk_dev *d)
{
	return !(d->drv->flags & BLK_DRV_NO_ZERO_INIT);
}

bool blk_sequential(const struct blk_dev *d)
{
	for (; d; d = d->parent)
		if (d->drv->flags & BLK_DRV_SEQUENTIAL)
			return true;
	return false;
}

bool blk_can_encode(const struct blk_dev *d)
{
	return d->encoded_writes && !d->read_only && d->drv->encode_cluster &&
	       d->drv->write_encoded && d->cluster_size && d->cluster_size <= BLK_ENCODE_MAX_CLUSTER;
}

static int check_encode_range(const struct blk_dev *d, uint64_t off, size_t len)
{
	uint32_t cs = d->cluster_size;

	if (!blk_can_encode(d))
		return kl_err(-ENOTSUP, "%s: format %s has no encoded writes on this handle",
			      d->filename, d->drv->name);
	if (off % cs || off >= d->size || len == 0 || len != KL_MIN((uint64_t)cs, d->size - off))
		return kl_err(-EINVAL, "%s: encoded write of %zu bytes at %llu is not one cluster",
			      d->filename, len, (unsigned long long)off);
	return 0;
}

ssize_t blk_encode_cluster(const struct blk_dev *d, uint64_t off, const void *buf, size_t len,
			   void *out, size_t cap)
{
	ssize_t n;

	KL_TRY(check_encode_range(d, off, len));
	if (cap < BLK_ENCODE_BOUND(d->cluster_size))
		return kl_err(-EINVAL, "%s: encode buffer of %zu bytes is too small", d->filename, cap);
	n = d->drv->encode_cluster(d, off, buf, len, out, cap);
	if (n > (ssize_t)cap)
		return kl_err(-EIO, "%s: driver %s encoded past its buffer", d->filename,
			      d->drv->name);
	return n;
}

uint64_t blk_encoded_footprint(struct blk_dev *d, size_t enc_len, size_t raw_len)
{
	if (d->drv->encoded_footprint)
		return d->drv->encoded_footprint(d, enc_len, raw_len);
	return enc_len ? enc_len : raw_len;
}

int blk_write_encoded(struct blk_dev *d, uint64_t off, const void *enc, size_t enc_len,
		      const void *raw, size_t raw_len)
{
	KL_TRY(check_writable(d));
	KL_TRY(check_encode_range(d, off, raw_len));
	if (enc_len == 0)
		return blk_pwrite(d, off, raw, raw_len);
	return d->drv->write_encoded(d, off, enc, enc_len, raw, raw_len);
}

int blk_flush(struct blk_dev *d)
{
	if (d->read_only || !d->drv->flush)
		return 0;
	return d->drv->flush(d);
}

/* ------------------------------------------------------------------ measure */

int blk_measure_allocated(struct blk_dev *in, uint64_t gran, uint64_t *bytes)
{
	uint64_t size = blk_size(in), off = 0, last = UINT64_MAX;

	*bytes = 0;
	if (!KL_IS_POW2(gran))
		return kl_err(-EINVAL, "measure granularity %llu is not a power of two",
			      (unsigned long long)gran);
	while (off < size) {
		struct blk_extent e;
		uint64_t first, end;

		KL_TRY(blk_block_status_chain(in, off, size - off, &e));
		if (e.type == BLK_DATA) {
			first = off / gran;
			end = KL_DIV_ROUND_UP(off + e.len, gran);
			if (first == last)
				first++;
			if (end > first)
				*bytes += (end - first) * gran;
			last = end - 1;
		}
		off += e.len;
	}
	return 0;
}

int blk_measure(const char *format, const struct blk_create_opts *o, struct blk_dev *in,
		struct blk_measure *m)
{
	const struct blk_driver *drv = blk_driver_find(format);

	memset(m, 0, sizeof(*m));
	if (!drv)
		return kl_err(-EINVAL, "unknown format '%s' (see 'keel help formats')", format);
	if (!drv->measure)
		return kl_err(-ENOTSUP, "format %s cannot predict its size", drv->name);
	return drv->measure(o, in, m);
}

/* ------------------------------------------------------------------ properties */

uint64_t blk_size(const struct blk_dev *d)
{
	return d->size;
}

const char *blk_format_name(const struct blk_dev *d)
{
	return d->drv->name;
}

const char *blk_filename(const struct blk_dev *d)
{
	return d->filename;
}

struct blk_dev *blk_parent(const struct blk_dev *d)
{
	return d->parent;
}

bool blk_chain_uses(const struct blk_dev *d, uint64_t dev, uint64_t ino)
{
	for (; d; d = d->parent) {
		uint64_t dd, di;

		if (d->file && kl_io_identity(d->file, &dd, &di) == 0 && dd == dev && di == ino)
			return true;
	}
	kl_err_clear();
	return false;
}

bool blk_is_writable(const struct blk_dev *d)
{
	return !d->read_only;
}

uint32_t blk_cluster_size(const struct blk_dev *d)
{
	return d->cluster_size ? d->cluster_size : 65536;
}

/* ------------------------------------------------------------------ info */

int blk_info_add_feature(struct blk_info *info, const char *name)
{
	char **nv = kl_realloc(info->features, (info->nfeatures + 1) * sizeof(*nv));

	if (!nv)
		return -ENOMEM;
	info->features = nv;
	nv[info->nfeatures] = kl_strdup(name);
	if (!nv[info->nfeatures])
		return -ENOMEM;
	info->nfeatures++;
	return 0;
}

int blk_info_add_kv(struct blk_info *info, const char *key, const char *fmt, ...)
{
	struct blk_kv *nv = kl_realloc(info->extra, (info->nextra + 1) * sizeof(*nv));
	char buf[1024];
	va_list ap;

	if (!nv)
		return -ENOMEM;
	info->extra = nv;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	nv[info->nextra].key = kl_strdup(key);
	nv[info->nextra].val = kl_strdup(buf);
	if (!nv[info->nextra].key || !nv[info->nextra].val) {
		kl_free(nv[info->nextra].key);
		kl_free(nv[info->nextra].val);
		return -ENOMEM;
	}
	info->nextra++;
	return 0;
}

/* What every format's info starts with: names and the file's own sizes. */
static int info_base(struct blk_dev *d, struct blk_info *out)
{
	struct stat st;

	out->format = d->drv->name;
	out->filename = kl_strdup(d->filename);
	if (!out->filename)
		return -ENOMEM;
	if (fstat(kl_io_fd(d->file), &st) == 0) {
		out->file_size = (uint64_t)st.st_size;
		out->allocated = (uint64_t)st.st_blocks * 512;
	}
	return 0;
}

int blk_info(struct blk_dev *d, struct blk_info *out)
{
	int rc;

	memset(out, 0, sizeof(*out));
	out->virtual_size = d->size;
	out->cluster_size = d->cluster_size;
	KL_TRY(info_base(d, out));
	if (d->drv->info) {
		rc = d->drv->info(d, out);
		if (rc < 0) {
			blk_info_release(out);
			return rc;
		}
	}
	return 0;
}

int blk_info_nokey(const char *path, const char *format, struct blk_info *out)
{
	const struct blk_driver *drv = format ? blk_driver_find(format) : NULL;
	struct blk_dev *d;
	int rc;

	memset(out, 0, sizeof(*out));
	if (format && !drv)
		return kl_err(-EINVAL, "unknown format '%s'", format);
	if (!drv)
		KL_TRY(blk_probe_file(path, &drv));
	if (!drv->info_nokey)
		return kl_err(-ENOKEY, "%s: format %s shows nothing without its key", path, drv->name);
	d = kl_calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->drv = drv;
	d->read_only = true;
	d->write_align = 1;
	d->filename = kl_strdup(path);
	if (drv->instance_size)
		d->priv = kl_calloc(1, drv->instance_size);
	if (!d->filename || (drv->instance_size && !d->priv)) {
		rc = -ENOMEM;
		goto out;
	}
	rc = kl_io_open(path, KL_O_RDONLY, &d->file);
	if (rc == 0)
		rc = info_base(d, out);
	if (rc < 0)
		goto out;
	rc = drv->info_nokey(d, out);
	if (drv->close)
		drv->close(d);
out:
	if (rc < 0)
		blk_info_release(out);
	dev_free(d);
	return rc;
}

void blk_snapshot_list_free(struct blk_snapshot_info *list, size_t n)
{
	if (!list)
		return;
	for (size_t i = 0; i < n; i++) {
		kl_free(list[i].id);
		kl_free(list[i].name);
	}
	kl_free(list);
}

void blk_info_release(struct blk_info *info)
{
	if (!info)
		return;
	kl_free(info->subformat);
	kl_free(info->filename);
	kl_free(info->compression);
	kl_free(info->parent);
	kl_free(info->parent_format);
	blk_snapshot_list_free(info->snaps, info->nsnaps);
	for (size_t i = 0; i < info->nfeatures; i++)
		kl_free(info->features[i]);
	kl_free(info->features);
	for (size_t i = 0; i < info->nextra; i++) {
		kl_free(info->extra[i].key);
		kl_free(info->extra[i].val);
	}
	kl_free(info->extra);
	memset(info, 0, sizeof(*info));
}

/* ------------------------------------------------------------------ check */

void blk_check_msg(struct blk_check_report *r, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (r->nmsgs >= BLK_CHECK_MAX_MSGS) {
		r->dropped_msgs++;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	r->msgs[r->nmsgs] = kl_strdup(buf);
	if (r->msgs[r->nmsgs])
		r->nmsgs++;
}

void blk_check_report_release(struct blk_check_report *r)
{
	for (size_t i = 0; i < r->nmsgs; i++)
		kl_free(r->msgs[i]);
	memset(r, 0, sizeof(*r));
}

int blk_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	memset(r, 0, sizeof(*r));
	if (!d->drv->check)
		return kl_err(-ENOTSUP, "%s: format %s has no metadata to check", d->filename,
			      d->drv->name);
	if ((flags & BLK_CHECK_REPAIR_ALL) && d->read_only)
		return kl_err(-EROFS, "%s: repair needs a writable image", d->filename);
	return d->drv->check(d, r, flags);
}

/* ------------------------------------------------------------------ snapshots */

static int need_snap_op(struct blk_dev *d, const void *op, const char *what)
{
	if (op)
		return 0;
	return kl_err(-ENOTSUP, "%s: format %s does not support %s", d->filename,
		      d->drv->name, what);
}

int blk_snapshot_list(struct blk_dev *d, struct blk_snapshot_info **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (!d->drv->snapshot_list)
		return 0;
	return d->drv->snapshot_list(d, out, n);
}

int blk_snapshot_create(struct blk_dev *d, const char *name)
{
	KL_TRY(need_snap_op(d, (const void *)d->drv->snapshot_create, "internal snapshots"));
	KL_TRY(check_writable(d));
	if (!name || !*name || strchr(name, '@') || strchr(name, '/'))
		return kl_err(-EINVAL, "snapshot name '%s' is empty or contains '@' or '/'",
			      name ? name : "");
	return d->drv->snapshot_create(d, name);
}

int blk_snapshot_delete(struct blk_dev *d, const char *name)
{
	KL_TRY(need_snap_op(d, (const void *)d->drv->snapshot_delete, "internal snapshots"));
	KL_TRY(check_writable(d));
	return d->drv->snapshot_delete(d, name);
}

int blk_snapshot_revert(struct blk_dev *d, const char *name)
{
	KL_TRY(need_snap_op(d, (const void *)d->drv->snapshot_revert, "internal snapshots"));
	KL_TRY(check_writable(d));
	return d->drv->snapshot_revert(d, name);
}

int blk_merge_flush(struct blk_extent_merge *m)
{
	int rc = 0;

	if (m->have)
		rc = m->cb(m->opaque, &m->run);
	m->have = false;
	return rc;
}

int blk_merge_add(struct blk_extent_merge *m, uint64_t off, uint64_t len, int type)
{
	if (m->have && m->run.type == type && m->run.off + m->run.len == off) {
		m->run.len += len;
		return 0;
	}
	KL_TRY(blk_merge_flush(m));
	memset(&m->run, 0, sizeof(m->run));
	m->run.off = off;
	m->run.len = len;
	m->run.type = type;
	m->run.host_off = BLK_NO_HOST_OFFSET;
	m->have = true;
	return 0;
}

int blk_snapshot_diff(struct blk_dev *d, const char *a, const char *b, blk_extent_cb cb,
		      void *opaque)
{
	KL_TRY(need_snap_op(d, (const void *)d->drv->snapshot_diff,
			    "snapshot differences from metadata"));
	return d->drv->snapshot_diff(d, a, b, cb, opaque);
}

/* ------------------------------------------------------------------ chains */

int blk_identity(struct blk_dev *d, struct blk_identity *id)
{
	memset(id, 0, sizeof(*id));
	if (!d->drv->identity)
		return 0;
	return d->drv->identity(d, id);
}

int blk_can_set_parent(struct blk_dev *d)
{
	return need_snap_op(d, (const void *)d->drv->set_parent, "changing the parent");
}

int blk_set_parent(struct blk_dev *d, const char *ref, const char *fmt, unsigned flags)
{
	struct blk_chain chain = { .n = 0 };
	struct blk_dev *old = d->parent;
	unsigned saved = d->flags;
	uint64_t dev, ino;
	int rc;

	KL_TRY(check_writable(d));
	KL_TRY(blk_can_set_parent(d));
	if (!ref) {
		rc = d->drv->set_parent(d, NULL, NULL);
		if (rc == 0) {
			blk_close(old);
			d->parent = NULL;
		}
		return rc;
	}
	KL_TRY(kl_io_identity(d->file, &dev, &ino));
	chain.dev[0] = dev;
	chain.ino[0] = ino;
	chain.n = 1;
	d->chain = &chain;
	d->flags = (d->flags & ~(unsigned)(BLK_OPEN_NO_PARENT | BLK_OPEN_PARENT_RDWR)) |
		   (flags & BLK_OPEN_ALLOW_EXTERNAL);
	d->parent = NULL;
	rc = blk_open_parent(d, ref, fmt);
	d->chain = NULL;
	d->flags = saved;
	if (rc < 0) {
		d->parent = old;
		return rc;
	}
	rc = d->drv->set_parent(d, ref, fmt ? fmt : blk_format_name(d->parent));
	if (rc < 0) {
		blk_close(d->parent);
		d->parent = old;
		return rc;
	}
	blk_close(old);
	return 0;
}

int blk_make_empty(struct blk_dev *d)
{
	KL_TRY(check_writable(d));
	KL_TRY(need_snap_op(d, (const void *)d->drv->make_empty, "emptying an image"));
	return d->drv->make_empty(d);
}

int blk_parent_commit_begin(struct blk_dev *d)
{
	KL_TRY(check_writable(d));
	if (!d->drv->parent_commit_begin)
		return 0;
	return d->drv->parent_commit_begin(d);
}

int blk_key_op(struct blk_dev *d, enum blk_key_op op, const uint8_t *key, size_t klen, int slot,
	       int *out_slot)
{
	KL_TRY(check_writable(d));
	KL_TRY(need_snap_op(d, (const void *)d->drv->key_op, "key slots"));
	return d->drv->key_op(d, op, key, klen, slot, out_slot);
}

int blk_key_list(struct blk_dev *d, struct blk_key_slot *out, size_t max, size_t *n)
{
	*n = 0;
	if (!d->drv->key_list)
		return 0;
	return d->drv->key_list(d, out, max, n);
}

/* ------------------------------------------------------------------ hashing, scrub */

int blk_hash_cluster(const struct blk_dev *d, const void *buf, size_t len, uint8_t out[32])
{
	if (!d->drv->hash_cluster)
		return kl_err(-ENOTSUP, "%s: format %s has no content index", d->filename,
			      d->drv->name);
	return d->drv->hash_cluster(d, buf, len, out);
}

int blk_write_hashed(struct blk_dev *d, uint64_t off, const void *buf, size_t len,
		     const uint8_t hash[32])
{
	KL_TRY(check_writable(d));
	KL_TRY(check_range(d, off, len, "write"));
	if (!d->drv->write_hashed || off % blk_cluster_size(d) ||
	    (len != blk_cluster_size(d) && off + len != d->size))
		return blk_pwrite(d, off, buf, len);
	return d->drv->write_hashed(d, off, buf, len, hash);
}

int blk_write_compressed(struct blk_dev *d, uint64_t off, const void *buf, size_t len,
			 unsigned codec, const void *frame, size_t flen)
{
	KL_TRY(check_writable(d));
	KL_TRY(check_range(d, off, len, "write"));
	if (!d->drv->write_compressed || off % blk_cluster_size(d) ||
	    len != blk_cluster_size(d) || !frame || !flen)
		return blk_pwrite(d, off, buf, len);
	return d->drv->write_compressed(d, off, buf, len, codec, frame, flen);
}

int blk_get_stats(struct blk_dev *d, struct blk_stats *st)
{
	memset(st, 0, sizeof(*st));
	return d->drv->stats ? d->drv->stats(d, st) : 0;
}

/* Formats without checksums: every range must at least read back. */
static int scrub_generic(struct blk_dev *d, blk_scrub_cb cb, void *opaque, bool progress,
			 struct blk_scrub_report *r)
{
	uint32_t cs = blk_cluster_size(d);
	uint8_t *buf = kl_aligned_alloc(cs);
	struct kl_progress *prog = kl_progress_start("scrubbing", d->size, progress);
	uint64_t off = 0;
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	while (off < d->size && rc == 0) {
		struct blk_extent e;
		uint64_t n;

		rc = blk_block_status_chain(d, off, d->size - off, &e);
		if (rc < 0)
			break;
		n = e.type == BLK_DATA ? KL_MIN(e.len, (uint64_t)cs - off % cs) : e.len;
		if (e.type == BLK_DATA) {
			r->blobs++;
			r->bytes += n;
			if (blk_pread(d, off, buf, (size_t)n) < 0) {
				struct blk_scrub_damage dm = { NULL, off, n, e.host_off, kl_errmsg() };

				r->damaged++;
				r->damaged_refs++;
				rc = cb ? cb(opaque, &dm) : 0;
			}
		}
		off += n;
		kl_progress_set(prog, off);
	}
	kl_progress_finish(prog);
	kl_free(buf);
	return rc;
}

int blk_scrub(struct blk_dev *d, blk_scrub_cb cb, void *opaque, bool progress,
	      struct blk_scrub_report *r)
{
	memset(r, 0, sizeof(*r));
	if (d->drv->scrub)
		return d->drv->scrub(d, cb, opaque, progress, r);
	return scrub_generic(d, cb, opaque, progress, r);
}

int blk_dedup(struct blk_dev *d, bool progress, struct blk_stats *st)
{
	memset(st, 0, sizeof(*st));
	KL_TRY(check_writable(d));
	KL_TRY(need_snap_op(d, (const void *)d->drv->dedup, "dedup"));
	return d->drv->dedup(d, progress, st);
}

/* ------------------------------------------------------------------ receiving */

int blk_snapshot_create_guid(struct blk_dev *d, const char *name, const uint8_t guid[16])
{
	KL_TRY(need_snap_op(d, (const void *)d->drv->snapshot_create_guid, "internal snapshots"));
	KL_TRY(check_writable(d));
	if (!name || !*name || strchr(name, '@') || strchr(name, '/'))
		return kl_err(-EINVAL, "snapshot name '%s' is empty or contains '@' or '/'",
			      name ? name : "");
	return d->drv->snapshot_create_guid(d, name, guid);
}

int blk_recv_begin(struct blk_dev *d, const char *base)
{
	KL_TRY(check_writable(d));
	KL_TRY(need_snap_op(d, (const void *)d->drv->recv_begin, "receiving streams"));
	return d->drv->recv_begin(d, base);
}

int blk_recv_status(struct blk_dev *d, bool *active, void *token, size_t *len)
{
	*active = false;
	if (!d->drv->recv_status) {
		*len = 0;
		return 0;
	}
	return d->drv->recv_status(d, active, token, len);
}

int blk_recv_checkpoint(struct blk_dev *d, const void *token, size_t len)
{
	KL_TRY(check_writable(d));
	KL_TRY(need_snap_op(d, (const void *)d->drv->recv_checkpoint, "receiving streams"));
	if (len > BLK_RECV_TOKEN_MAX)
		return kl_err(-EINVAL, "receive token of %zu bytes is too long", len);
	return d->drv->recv_checkpoint(d, token, len);
}

int blk_recv_finish(struct blk_dev *d, const char *name, const uint8_t guid[16])
{
	KL_TRY(check_writable(d));
	KL_TRY(need_snap_op(d, (const void *)d->drv->recv_finish, "receiving streams"));
	return d->drv->recv_finish(d, name, guid);
}

int blk_recv_abort(struct blk_dev *d)
{
	KL_TRY(check_writable(d));
	KL_TRY(need_snap_op(d, (const void *)d->drv->recv_abort, "receiving streams"));
	return d->drv->recv_abort(d);
}
