/*
 * format/ova.c - OVA packages (an OVF descriptor, a manifest and disk
 * files in one uncompressed tar), read-only. See shared/specs/ova.md.
 *
 * The tar is walked with libarchive (headers only: member data is skipped,
 * never read), the descriptor parsed with libxml2 (ova-desc.c). A disk is
 * served without extracting it: an uncompressed, non-sparse tar member is
 * a contiguous byte range of the package (a disk split with ovf:chunkSize
 * is a list of them), so the selected disk is opened through the normal
 * format layer on a kl_io_open_window view of those ranges (probed; a
 * streamOptimized VMDK in practice). Every read goes to that inner image.
 *
 * "vm.ova@SEL" selects the disk (BLK_DRV_SELECT): SEL is its number
 * (1, 2, ... in DiskSection order), its ovf:diskId or its file name. The
 * first disk is served when nothing is selected.
 *
 * Integrity: the descriptor's digest is checked against the manifest at
 * open. The disk's member(s) are hashed before the first read of data, so
 * `keel info` stays fast while convert/compare never see data from a
 * package whose manifest does not match (-EBADMSG). A file the manifest
 * does not list is refused when there is a manifest. Verdicts are cached
 * per process by (device, inode, size, mtime, member), so the handles a
 * parallel convert opens hash the package once.
 */
#define _GNU_SOURCE
#include "format/ova.h"
#include "lib/lazy.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

#define OVA_MAX_MEMBERS 4096
#define OVA_READ_BUF (64u << 10)

struct ova_member {
	char *name;
	uint64_t data_off;
	uint64_t size;
	bool contiguous; /* regular, not sparse */
};

struct ova_state {
	struct ova_member *m;
	size_t nm;
	struct ova_desc desc;
	struct ova_mf_entry *mf;
	size_t nmf;
	char *mf_name;
	char *ovf_name;
	size_t disk;	      /* selected index into desc.disks */
	struct blk_dev *inner;
	struct kl_io_seg *segs;
	size_t nsegs;
	size_t *seg_member;   /* member index of each segment */
	bool verified;
	int verify_rc;
};

/* ------------------------------------------------------------------ probe */

static bool ends_with(const char *s, size_t n, const char *suffix)
{
	size_t l = strlen(suffix);

	return n >= l && strncasecmp(s + n - l, suffix, l) == 0;
}

static int ova_probe(const struct blk_probe_buf *pb)
{
	const uint8_t *h = pb->head;
	size_t nl;

	if (pb->head_len < 512 || memcmp(h + 257, "ustar", 5) != 0)
		return 0;
	nl = strnlen((const char *)h, 100);
	/* the descriptor comes first in an OVA (DSP0243); pax/GNU long names first are rare */
	if (ends_with((const char *)h, nl, ".ovf"))
		return 100;
	if (h[156] == 'x' || h[156] == 'L')
		return 20;
	return 0;
}

/* ------------------------------------------------------------------ tar walk */

struct tar_reader {
	struct kl_file *f;
	uint64_t pos;
	uint64_t size;
	uint8_t *buf;
};

static la_ssize_t tar_read(struct archive *a, void *opaque, const void **out)
{
	struct tar_reader *r = opaque;
	size_t n = (size_t)KL_MIN((uint64_t)OVA_READ_BUF, r->size - r->pos);
	ssize_t got;

	*out = r->buf;
	if (n == 0)
		return 0;
	got = kl_io_pread(r->f, r->pos, r->buf, n);
	if (got < 0) {
		kl_la.archive_set_error(a, EIO, "%s", kl_errmsg());
		return -1;
	}
	r->pos += (uint64_t)got;
	return got;
}

static la_int64_t tar_skip(struct archive *a, void *opaque, la_int64_t request)
{
	struct tar_reader *r = opaque;
	uint64_t n;

	(void)a;
	if (request <= 0)
		return 0;
	n = KL_MIN((uint64_t)request, r->size - r->pos);
	r->pos += n;
	return (la_int64_t)n;
}

static int walk_tar(struct blk_dev *d, struct ova_state *s)
{
	struct tar_reader r = { .f = d->file };
	struct archive *a;
	struct archive_entry *e;
	int rc = 0, ar;

	KL_TRY(kl_archive_load());
	a = kl_la.archive_read_new();
	if (!a)
		return -ENOMEM;
	r.buf = kl_malloc(OVA_READ_BUF);
	if (!r.buf) {
		rc = -ENOMEM;
		goto out;
	}
	rc = kl_io_size(d->file, &r.size);
	if (rc < 0)
		goto out;
	kl_la.archive_read_support_format_tar(a);
	kl_la.archive_read_set_read_callback(a, tar_read);
	kl_la.archive_read_set_skip_callback(a, tar_skip);
	kl_la.archive_read_set_callback_data(a, &r);
	if (kl_la.archive_read_open1(a) != ARCHIVE_OK) {
		rc = kl_err(-EUCLEAN, "%s: not a tar archive: %s", d->filename,
			    kl_la.archive_error_string(a) ? kl_la.archive_error_string(a) : "unknown");
		goto out;
	}
	while ((ar = kl_la.archive_read_next_header(a, &e)) == ARCHIVE_OK || ar == ARCHIVE_WARN) {
		const char *name = kl_la.archive_entry_pathname(e);
		struct ova_member *nv, *m;
		la_int64_t pos = kl_la.archive_filter_bytes(a, -1);

		if (kl_la.archive_filter_count(a) != 1 ||
		    kl_la.archive_filter_code(a, 0) != ARCHIVE_FILTER_NONE) {
			rc = kl_err(-ENOTSUP, "%s: compressed tar: an OVA is an uncompressed tar "
					      "(decompress it first)",
				    d->filename);
			goto out;
		}
		if (s->nm >= OVA_MAX_MEMBERS) {
			rc = kl_err(-EUCLEAN, "%s: more than %d tar members", d->filename,
				    OVA_MAX_MEMBERS);
			goto out;
		}
		if (!name || pos < 0 || kl_la.archive_entry_size(e) < 0) {
			rc = kl_err(-EUCLEAN, "%s: tar member %zu has no name or size", d->filename,
				    s->nm);
			goto out;
		}
		nv = kl_realloc(s->m, (s->nm + 1) * sizeof(*nv));
		if (!nv) {
			rc = -ENOMEM;
			goto out;
		}
		s->m = nv;
		m = &nv[s->nm];
		memset(m, 0, sizeof(*m));
		m->name = kl_strdup(blk_tar_member_name(name));
		if (!m->name) {
			rc = -ENOMEM;
			goto out;
		}
		s->nm++;
		m->data_off = (uint64_t)pos;
		m->size = (uint64_t)kl_la.archive_entry_size(e);
		m->contiguous = kl_la.archive_entry_filetype(e) == AE_IFREG &&
				kl_la.archive_entry_sparse_count(e) == 0;
		if (!kl_range_ok(m->data_off, m->size, r.size)) {
			rc = kl_err(-EUCLEAN, "%s: tar member '%s' (%llu bytes at %llu) runs past the "
					      "end of the file (%llu bytes)",
				    d->filename, m->name, (unsigned long long)m->size,
				    (unsigned long long)m->data_off, (unsigned long long)r.size);
			goto out;
		}
		if (kl_la.archive_read_data_skip(a) != ARCHIVE_OK) {
			const char *why = kl_la.archive_error_string(a);

			rc = kl_err(-EUCLEAN, "%s: tar member '%s': %s", d->filename, m->name,
				    why ? why : "damaged");
			goto out;
		}
	}
	if (ar != ARCHIVE_EOF) {
		rc = kl_err(-EUCLEAN, "%s: damaged tar after member %zu: %s", d->filename, s->nm,
			    kl_la.archive_error_string(a) ? kl_la.archive_error_string(a) : "unknown");
		goto out;
	}
out:
	kl_la.archive_read_free(a);
	kl_free(r.buf);
	return rc;
}

static const struct ova_member *find_member(const struct ova_state *s, const char *name)
{
	for (size_t i = 0; i < s->nm; i++)
		if (strcmp(s->m[i].name, name) == 0)
			return &s->m[i];
	return NULL;
}

static int read_member(struct blk_dev *d, const struct ova_member *m, size_t cap, char **out)
{
	char *buf;
	int rc;

	*out = NULL;
	if (m->size > cap)
		return kl_err(-EUCLEAN, "%s: member '%s' is %llu bytes, more than the %zu allowed",
			      d->filename, m->name, (unsigned long long)m->size, cap);
	buf = kl_malloc((size_t)m->size + 1);
	if (!buf)
		return -ENOMEM;
	rc = kl_io_pread_full(d->file, m->data_off, buf, (size_t)m->size, m->name);
	if (rc < 0) {
		kl_free(buf);
		return rc;
	}
	buf[m->size] = '\0';
	*out = buf;
	return 0;
}

/* ------------------------------------------------------------------ digests */

static const EVP_MD *algo_md(enum ova_algo a)
{
	switch (a) {
	case OVA_SHA1:
		return EVP_sha1();
	case OVA_SHA512:
		return EVP_sha512();
	default:
		return EVP_sha256();
	}
}

static const struct ova_mf_entry *mf_find(const struct ova_state *s, const char *name)
{
	for (size_t i = 0; i < s->nmf; i++)
		if (strcmp(s->mf[i].name, name) == 0)
			return &s->mf[i];
	return NULL;
}

/* Hash [off, off+len) of f and compare with the manifest entry. */
static int check_digest(struct kl_file *f, const char *pkg, const char *member, uint64_t off,
			uint64_t len, const struct ova_mf_entry *e)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t *buf = kl_malloc(1u << 20);
	uint8_t dg[EVP_MAX_MD_SIZE];
	unsigned int dl = 0;
	int rc = 0;

	if (!ctx || !buf || !EVP_DigestInit_ex(ctx, algo_md(e->algo), NULL)) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint64_t done = 0; done < len;) {
		size_t n = (size_t)KL_MIN(len - done, (uint64_t)(1u << 20));

		rc = kl_io_pread_full(f, off + done, buf, n, member);
		if (rc < 0)
			goto out;
		EVP_DigestUpdate(ctx, buf, n);
		done += n;
	}
	EVP_DigestFinal_ex(ctx, dg, &dl);
	if (dl != e->dlen || memcmp(dg, e->digest, dl) != 0)
		rc = kl_err(-EBADMSG, "%s: '%s' does not match its digest in the manifest "
				      "(damaged or tampered package)",
			    pkg, member);
out:
	EVP_MD_CTX_free(ctx);
	kl_free(buf);
	return rc;
}

/* Process-wide cache of verified members, so parallel handles hash once. */
struct ova_verdict {
	uint64_t dev, ino, size, mtime_ns, off;
	int rc;
	struct ova_verdict *next;
};
#define OVA_CACHE_MAX 32
static pthread_mutex_t ova_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ova_verdict *ova_cache; /* newest first, at most OVA_CACHE_MAX */

static int verify_member(struct blk_dev *d, struct ova_state *s, const struct ova_member *m)
{
	const struct ova_mf_entry *e = mf_find(s, m->name);
	struct ova_verdict *v, key = { 0 };
	struct stat st;
	int rc;

	if (!s->mf)
		return 0;
	if (!e)
		return kl_err(-EBADMSG, "%s: '%s' is not listed in the manifest %s", d->filename,
			      m->name, s->mf_name);
	if (fstat(kl_io_fd(d->file), &st) < 0)
		return kl_err(-errno, "%s: stat: %s", d->filename, strerror(errno));
	key.dev = (uint64_t)st.st_dev;
	key.ino = (uint64_t)st.st_ino;
	key.size = (uint64_t)st.st_size;
	key.mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ULL + (uint64_t)st.st_mtim.tv_nsec;
	key.off = m->data_off;
	pthread_mutex_lock(&ova_cache_lock);
	for (v = ova_cache; v; v = v->next) {
		if (v->dev == key.dev && v->ino == key.ino && v->size == key.size &&
		    v->mtime_ns == key.mtime_ns && v->off == key.off) {
			rc = v->rc;
			pthread_mutex_unlock(&ova_cache_lock);
			if (rc < 0)
				return kl_err(rc, "%s: '%s' does not match its digest in the "
						  "manifest (damaged or tampered package)",
					      d->filename, m->name);
			return 0;
		}
	}
	/* hashing under the lock: the other handles of this package wait for the verdict */
	rc = check_digest(d->file, d->filename, m->name, m->data_off, m->size, e);
	if (rc == 0 || rc == -EBADMSG) {
		v = kl_malloc(sizeof(*v));
		if (v) {
			struct ova_verdict *p = v;
			int n = 0;

			*v = key;
			v->rc = rc;
			v->next = ova_cache;
			ova_cache = v;
			/* forget the oldest verdicts: a long-running process stays bounded */
			while (p->next && ++n < OVA_CACHE_MAX)
				p = p->next;
			while (p->next) {
				struct ova_verdict *old = p->next;

				p->next = old->next;
				kl_free(old);
			}
		}
	}
	pthread_mutex_unlock(&ova_cache_lock);
	return rc;
}

static int ensure_verified(struct blk_dev *d)
{
	struct ova_state *s = d->priv;

	if (!s->verified) {
		s->verify_rc = 0;
		for (size_t i = 0; i < s->nsegs && s->verify_rc == 0; i++)
			s->verify_rc = verify_member(d, s, &s->m[s->seg_member[i]]);
		s->verified = true;
		return s->verify_rc;
	}
	if (s->verify_rc < 0)
		return kl_err(s->verify_rc, "%s: refusing to read: the manifest does not match",
			      d->filename);
	return 0;
}

/* ------------------------------------------------------------------ open */

static int select_disk(struct blk_dev *d, struct ova_state *s)
{
	const char *sel = d->snapshot;
	char *end;
	unsigned long n;

	if (s->desc.ndisks == 0)
		return kl_err(-ENOENT, "%s: the descriptor lists no disks", d->filename);
	if (!sel) {
		s->disk = 0;
		return 0;
	}
	n = strtoul(sel, &end, 10);
	if (*sel && !*end) {
		if (n < 1 || n > s->desc.ndisks)
			return kl_err(-ENOENT, "%s: no disk %s (it holds %zu)", d->filename, sel,
				      s->desc.ndisks);
		s->disk = n - 1;
		return 0;
	}
	for (size_t i = 0; i < s->desc.ndisks; i++) {
		const struct ova_disk *dk = &s->desc.disks[i];

		if (strcmp(dk->id, sel) == 0) {
			s->disk = i;
			return 0;
		}
		for (size_t k = 0; dk->file_ref && k < s->desc.nfiles; k++) {
			if (strcmp(s->desc.files[k].id, dk->file_ref) == 0 &&
			    strcmp(s->desc.files[k].href, sel) == 0) {
				s->disk = i;
				return 0;
			}
		}
	}
	return kl_err(-ENOENT, "%s: no disk '%s' (select by number 1..%zu, disk id or file name)",
		      d->filename, sel, s->desc.ndisks);
}

static int add_segment(struct blk_dev *d, struct ova_state *s, const char *name)
{
	const struct ova_member *m = find_member(s, name);
	struct kl_io_seg *ns;
	size_t *nm;

	if (!m)
		return kl_err(-EUCLEAN, "%s: the descriptor names '%s', which is not in the tar",
			      d->filename, name);
	if (!m->contiguous)
		return kl_err(-ENOTSUP, "%s: member '%s' is not a plain file (sparse or special)",
			      d->filename, name);
	ns = kl_realloc(s->segs, (s->nsegs + 1) * sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	s->segs = ns;
	nm = kl_realloc(s->seg_member, (s->nsegs + 1) * sizeof(*nm));
	if (!nm)
		return -ENOMEM;
	s->seg_member = nm;
	ns[s->nsegs].off = m->data_off;
	ns[s->nsegs].len = m->size;
	nm[s->nsegs] = (size_t)(m - s->m);
	s->nsegs++;
	return 0;
}

static int disk_segments(struct blk_dev *d, struct ova_state *s, const struct ova_file **fout)
{
	const struct ova_disk *dk = &s->desc.disks[s->disk];
	const struct ova_file *f = NULL;
	uint64_t total = 0;

	*fout = NULL;
	if (!dk->file_ref)
		return kl_err(-ENOTSUP, "%s: disk '%s' has no file (a blank disk)", d->filename,
			      dk->id);
	for (size_t k = 0; k < s->desc.nfiles; k++)
		if (strcmp(s->desc.files[k].id, dk->file_ref) == 0)
			f = &s->desc.files[k];
	if (!f)
		return kl_err(-EUCLEAN, "%s: no file '%s'", d->filename, dk->file_ref);
	if (f->compression && strcmp(f->compression, "identity") != 0)
		return kl_err(-ENOTSUP, "%s: file '%s' is %s-compressed inside the package; not "
					"supported",
			      d->filename, f->href, f->compression);
	if (f->chunk_size) {
		for (unsigned i = 0;; i++) {
			char *cn = kl_asprintf("%s.%09u", f->href, i);
			int rc;

			if (!cn)
				return -ENOMEM;
			if (!find_member(s, cn)) {
				kl_free(cn);
				break;
			}
			rc = add_segment(d, s, cn);
			kl_free(cn);
			KL_TRY(rc);
			if (s->nsegs > OVA_MAX_MEMBERS)
				break;
		}
		if (s->nsegs == 0)
			return kl_err(-EUCLEAN, "%s: chunked file '%s' has no '%s.000000000' member",
				      d->filename, f->href, f->href);
	} else {
		KL_TRY(add_segment(d, s, f->href));
	}
	for (size_t i = 0; i < s->nsegs; i++)
		total += s->segs[i].len;
	if (f->has_size && f->size != total)
		return kl_err(-EUCLEAN, "%s: file '%s' is %llu bytes in the tar, the descriptor "
					"says %llu",
			      d->filename, f->href, (unsigned long long)total,
			      (unsigned long long)f->size);
	*fout = f;
	return 0;
}

static void ova_close(struct blk_dev *d)
{
	struct ova_state *s = d->priv;

	blk_close(s->inner);
	for (size_t i = 0; i < s->nm; i++)
		kl_free(s->m[i].name);
	kl_free(s->m);
	ova_desc_release(&s->desc);
	ova_mf_free(s->mf, s->nmf);
	kl_free(s->mf_name);
	kl_free(s->ovf_name);
	kl_free(s->segs);
	kl_free(s->seg_member);
	memset(s, 0, sizeof(*s));
}

static int ova_open_inner(struct blk_dev *d, struct ova_state *s, const struct ova_file *f)
{
	struct blk_open_opts io = { .flags = BLK_OPEN_NO_PARENT };
	struct kl_file *w;
	char *wname = kl_asprintf("%s/%s", d->filename, f->href);
	int rc;

	if (!wname)
		return -ENOMEM;
	rc = kl_io_open_window(d->file, s->segs, s->nsegs, wname, &w);
	kl_free(wname);
	KL_TRY(rc);
	rc = blk_open_file(w, &io, &s->inner);
	if (rc < 0)
		return kl_err_prefix(rc, "%s: disk '%s'", d->filename, s->desc.disks[s->disk].id);
	return 0;
}

static int ova_open(struct blk_dev *d, const struct blk_open_opts *o)
{
	struct ova_state *s = d->priv;
	const struct ova_member *ovf = NULL, *mf = NULL;
	const struct ova_file *f;
	char *buf = NULL;
	int rc;

	(void)o;
	if (!d->read_only)
		return kl_err(-EROFS, "%s: OVA packages are read-only in keel (convert from them)",
			      d->filename);
	rc = walk_tar(d, s);
	if (rc < 0)
		goto err;
	for (size_t i = 0; i < s->nm; i++) {
		size_t nl = strlen(s->m[i].name);

		if (!ovf && ends_with(s->m[i].name, nl, ".ovf"))
			ovf = &s->m[i];
		if (!mf && ends_with(s->m[i].name, nl, ".mf"))
			mf = &s->m[i];
	}
	if (!ovf) {
		rc = kl_err(-EUCLEAN, "%s: no .ovf descriptor in the package", d->filename);
		goto err;
	}
	s->ovf_name = kl_strdup(ovf->name);
	if (!s->ovf_name) {
		rc = -ENOMEM;
		goto err;
	}
	if (mf) {
		s->mf_name = kl_strdup(mf->name);
		rc = s->mf_name ? read_member(d, mf, OVA_MAX_MF, &buf) : -ENOMEM;
		if (rc == 0)
			rc = ova_parse_mf(buf, (size_t)mf->size, s->mf_name, &s->mf, &s->nmf);
		kl_free(buf);
		buf = NULL;
		if (rc < 0)
			goto err;
	}
	if (s->mf) {
		/* the descriptor is small: check it now, before trusting what it says */
		const struct ova_mf_entry *e = mf_find(s, ovf->name);

		if (!e) {
			rc = kl_err(-EBADMSG, "%s: the descriptor '%s' is not listed in the manifest",
				    d->filename, ovf->name);
			goto err;
		}
		rc = check_digest(d->file, d->filename, ovf->name, ovf->data_off, ovf->size, e);
		if (rc < 0)
			goto err;
	}
	rc = read_member(d, ovf, OVA_MAX_OVF, &buf);
	if (rc == 0)
		rc = ova_parse_ovf(buf, (size_t)ovf->size, s->ovf_name, &s->desc);
	kl_free(buf);
	if (rc < 0)
		goto err;
	rc = select_disk(d, s);
	if (rc == 0)
		rc = disk_segments(d, s, &f);
	if (rc == 0)
		rc = ova_open_inner(d, s, f);
	if (rc < 0)
		goto err;
	d->size = blk_size(s->inner);
	d->cluster_size = blk_cluster_size(s->inner);
	return 0;
err:
	ova_close(d);
	return rc;
}

/* ------------------------------------------------------------------ I/O */

static int ova_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	struct ova_state *s = d->priv;

	KL_TRY(ensure_verified(d));
	return blk_pread(s->inner, off, buf, len);
}

static int ova_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	struct ova_state *s = d->priv;
	struct blk_extent ie;

	KL_TRY(ensure_verified(d));
	KL_TRY(blk_block_status_chain(s->inner, off, len, &ie));
	e->type = ie.type;
	e->len = ie.len;
	e->flags = ie.flags;
	e->host_off = BLK_NO_HOST_OFFSET;
	return 0;
}

static const char *algo_name(enum ova_algo a)
{
	return a == OVA_SHA1 ? "SHA1" : a == OVA_SHA512 ? "SHA512" : "SHA256";
}

static int ova_info(struct blk_dev *d, struct blk_info *out)
{
	struct ova_state *s = d->priv;
	struct blk_info ii;

	out->subformat = kl_asprintf("OVF %d.x", s->desc.version ? s->desc.version : 1);
	if (!out->subformat)
		return -ENOMEM;
	if (blk_info(s->inner, &ii) == 0) {
		KL_TRY(blk_info_add_kv(out, "disk format", "%s%s%s%s", ii.format,
				       ii.subformat ? " (" : "", ii.subformat ? ii.subformat : "",
				       ii.subformat ? ")" : ""));
		blk_info_release(&ii);
	}
	if (s->desc.vm_name)
		KL_TRY(blk_info_add_kv(out, "vm name", "%s", s->desc.vm_name));
	if (s->desc.cpus)
		KL_TRY(blk_info_add_kv(out, "cpus", "%llu", (unsigned long long)s->desc.cpus));
	if (s->desc.memory_mib)
		KL_TRY(blk_info_add_kv(out, "memory", "%llu MiB",
				       (unsigned long long)s->desc.memory_mib));
	KL_TRY(blk_info_add_kv(out, "descriptor", "%s", s->ovf_name));
	if (s->mf)
		KL_TRY(blk_info_add_kv(out, "manifest", "%s (%s, %zu entries; the descriptor "
							"matches)",
				       s->mf_name, algo_name(s->mf[0].algo), s->nmf));
	else
		KL_TRY(blk_info_add_kv(out, "manifest", "none (no integrity check)"));
	KL_TRY(blk_info_add_kv(out, "disks", "%zu", s->desc.ndisks));
	for (size_t i = 0; i < s->desc.ndisks; i++) {
		const struct ova_disk *dk = &s->desc.disks[i];
		const char *href = "-";
		char key[48];
		char cap[32];

		for (size_t k = 0; dk->file_ref && k < s->desc.nfiles; k++)
			if (strcmp(s->desc.files[k].id, dk->file_ref) == 0)
				href = s->desc.files[k].href;
		kl_format_size(dk->capacity, cap, sizeof(cap));
		snprintf(key, sizeof(key), "disk %zu%s", i + 1, i == s->disk ? " (selected)" : "");
		KL_TRY(blk_info_add_kv(out, key, "id=%s file=%s capacity=%s (%llu bytes)%s%s", dk->id,
				       href, cap, (unsigned long long)dk->capacity,
				       dk->format ? " format=" : "", dk->format ? dk->format : ""));
	}
	return 0;
}

/* Check = verify every manifest digest of the package. */
static int ova_check(struct blk_dev *d, struct blk_check_report *r, unsigned flags)
{
	struct ova_state *s = d->priv;

	(void)flags;
	if (!s->mf) {
		blk_check_msg(r, "no manifest: nothing to verify");
		return 0;
	}
	for (size_t i = 0; i < s->nmf; i++) {
		const struct ova_member *m = find_member(s, s->mf[i].name);
		int rc;

		r->checked++;
		if (!m) {
			r->corruptions++;
			blk_check_msg(r, "manifest lists '%s', which is not in the package",
				      s->mf[i].name);
			continue;
		}
		rc = check_digest(d->file, d->filename, m->name, m->data_off, m->size, &s->mf[i]);
		if (rc == -EBADMSG) {
			r->data_errors++;
			blk_check_msg(r, "%s", kl_errmsg());
		} else if (rc < 0) {
			return rc;
		}
	}
	return 0;
}

const struct blk_driver blk_ova_driver = {
	.name = "ova",
	.ext = "ova",
	.desc = "OVF package (tar): serves one of its disks; -O ova writes one",
	.instance_size = sizeof(struct ova_state),
	.flags = BLK_DRV_SELECT,
	.probe = ova_probe,
	.open = ova_open,
	.pread = ova_pread,
	.block_status = ova_block_status,
	.close = ova_close,
	.info = ova_info,
	.check = ova_check,
};
