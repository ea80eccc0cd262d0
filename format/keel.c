/*
 * format/keel.c - the native .keel image: header, open/create, the I/O
 * paths and the driver table (KEEL-FORMAT.md).
 *
 * Crash atomicity comes from three rules: nothing reachable from the
 * committed header is ever overwritten (data and metadata are written to
 * free blocks), every pointer carries the checksum of its target, and a
 * commit makes everything durable before it writes the header into the
 * slot not holding the current generation. After a crash the file opens to
 * whichever slot has the highest valid generation: the old state or the
 * new one, never a mix, and with no repair step.
 *
 * Guest writes change only memory and free blocks until the next commit
 * (flush, close, snapshot, or when enough is dirty): like a disk's volatile
 * write cache, unflushed writes may be lost in a crash, flushed ones never.
 */
#define _GNU_SOURCE
#include "format/keel.h"

#include <libgen.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

/* Commit on our own when this much is waiting, to bound memory. */
#define KF_AUTOCOMMIT_NODES 8192
#define KF_AUTOCOMMIT_PINNED (256u << 20) / KF_BLOCK

/* header flags (§2) */
#define KF_HF_COMMITTING 0x1 /* commit into the parent under way: accept a newer parent */

static const char *comp_name(unsigned c)
{
	switch (c) {
	case KF_COMP_ZSTD:
		return "zstd";
	case KF_COMP_ZLIB:
		return "zlib";
	default:
		return "none";
	}
}

unsigned kf_height_for(uint64_t vsize, unsigned cluster_bits)
{
	uint64_t clusters = (vsize + (1ULL << cluster_bits) - 1) >> cluster_bits;
	unsigned h = 1;

	while (h < KF_MAX_HEIGHT && (clusters >> (KF_FANOUT_BITS * h)) != 0)
		h++;
	return h;
}

int kf_corrupt(struct blk_dev *d, int code, const char *fmt, ...)
{
	struct kf_state *s = d->priv;
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* a writable handle that saw damage stops writing (QEMU's qcow2 does the same) */
	if (!d->read_only)
		s->broken = true;
	return kl_err(code, "%s: %s", d->filename, msg);
}

/* ------------------------------------------------------------------ header (§2) */

struct kf_hdr_slot {
	bool valid;
	uint64_t generation;
	uint8_t raw[KF_BLOCK];
};

static int hdr_parse(struct blk_dev *d, const uint8_t *h)
{
	struct kf_state *s = d->priv;
	uint16_t plen, flen;
	uint64_t unknown;

	if (get_le32(h + 8) != KF_VERSION)
		return kl_err(-ENOTSUP, "%s: .keel version %u is not supported (this keel reads %d)",
			      d->filename, get_le32(h + 8), KF_VERSION);
	s->incompat = get_le64(h + 16);
	s->compat = get_le64(h + 24);
	s->autoclear = get_le64(h + 32);
	unknown = s->incompat & ~(KF_INCOMPAT_KNOWN);
	if (unknown)
		return kl_err(-ENOTSUP, "%s: image uses incompatible features %#llx unknown to this "
			      "keel%s", d->filename, (unsigned long long)unknown,
			      (unknown & KF_INCOMPAT_ENCRYPTION) ? " (encryption)" : "");
	s->generation = get_le64(h + 40);
	memcpy(s->uuid, h + 48, 16);
	s->cluster_bits = get_le32(h + 64);
	if (s->cluster_bits < KF_MIN_CLUSTER_BITS || s->cluster_bits > KF_MAX_CLUSTER_BITS)
		return kl_err(-EUCLEAN, "%s: cluster size 2^%u out of range (4 KiB..2 MiB)",
			      d->filename, s->cluster_bits);
	s->cluster_size = 1u << s->cluster_bits;
	if (get_le32(h + 68) != KF_BLOCK_BITS)
		return kl_err(-EUCLEAN, "%s: block size 2^%u is not 4 KiB", d->filename,
			      get_le32(h + 68));
	s->vsize = get_le64(h + 72);
	if (s->vsize == 0 || s->vsize > KF_MAX_VSIZE || s->vsize % 512)
		return kl_err(-EUCLEAN, "%s: virtual size %llu out of range", d->filename,
			      (unsigned long long)s->vsize);
	s->height = h[80];
	if (s->height != kf_height_for(s->vsize, s->cluster_bits))
		return kl_err(-EUCLEAN, "%s: map tree height %u does not fit the virtual size",
			      d->filename, s->height);
	s->rc_height = h[81];
	s->comp = h[82];
	if (s->comp > KF_COMP_ZLIB)
		return kl_err(-EUCLEAN, "%s: unknown compression %u", d->filename, s->comp);
	s->comp_level = (int8_t)h[83];
	kf_ptr_get(h + 88, &s->root);
	kf_ptr_get(h + 104, &s->rc_root);
	s->nblocks_committed = get_le64(h + 120);
	kf_ptr_get(h + 128, &s->snap_table);
	s->next_snap_id = get_le64(h + 152);
	s->ctime_ns = get_le64(h + 160);
	memcpy(s->parent_uuid, h + 168, 16);
	s->parent_gen = get_le64(h + 184);
	s->parent_gen_alt = get_le64(h + 192);
	if (get_le32(h + 84) & KF_HF_COMMITTING)
		s->parent_gen_alt = UINT64_MAX;
	plen = get_le16(h + 200);
	flen = get_le16(h + 202);
	kf_ptr_get(h + 208, &s->dedup_root);
	kf_ptr_get(h + 224, &s->crypto_hdr);
	if (s->autoclear & KF_AUTOCLEAR_RECV) {
		kf_ptr_get(h + 240, &s->staging_root);
		kf_ptr_get(h + 256, &s->token_ptr);
	}
	if (plen > KF_HDR_PARENT_MAX || flen > KF_HDR_PFMT_MAX)
		return kl_err(-EUCLEAN, "%s: parent name length out of range", d->filename);
	if (plen) {
		s->parent = kl_strndup((const char *)h + KF_HDR_PARENT_OFF, plen);
		if (!s->parent)
			return -ENOMEM;
		if (strlen(s->parent) != plen)
			return kl_err(-EUCLEAN, "%s: parent name contains NUL", d->filename);
		if (flen) {
			s->parent_fmt = kl_strndup((const char *)h + KF_HDR_PFMT_OFF, flen);
			if (!s->parent_fmt)
				return -ENOMEM;
		}
	}
	if (s->nblocks_committed < 3 || s->rc_height == 0 || s->rc_height > KF_MAX_HEIGHT + 2)
		return kl_err(-EUCLEAN, "%s: block count or refcount tree height out of range",
			      d->filename);
	memcpy(s->hdr_extra, h, KF_BLOCK);
	return 0;
}

static void hdr_build(const struct kf_state *s, uint64_t gen, uint8_t *h)
{
	/* start from the slot as read: unknown fields and reserved bytes survive */
	memcpy(h, s->hdr_extra, KF_BLOCK);
	memset(h, 0, KF_HDR_FIXED);
	memcpy(h, KF_MAGIC, 8);
	put_le32(h + 8, KF_VERSION);
	put_le32(h + 12, KF_HDR_FIXED);
	put_le64(h + 16, s->incompat);
	put_le64(h + 24, s->compat);
	put_le64(h + 32, s->autoclear);
	put_le64(h + 40, gen);
	memcpy(h + 48, s->uuid, 16);
	put_le32(h + 64, s->cluster_bits);
	put_le32(h + 68, KF_BLOCK_BITS);
	put_le64(h + 72, s->vsize);
	h[80] = (uint8_t)s->height;
	h[81] = (uint8_t)s->rc_height;
	h[82] = (uint8_t)s->comp;
	h[83] = (uint8_t)(int8_t)s->comp_level;
	put_le32(h + 84, s->parent_gen_alt == UINT64_MAX ? KF_HF_COMMITTING : 0);
	kf_ptr_put(h + 88, s->staging ? &s->shown_root : &s->root);
	kf_ptr_put(h + 104, &s->rc_root);
	put_le64(h + 120, s->nblocks);
	kf_ptr_put(h + 128, &s->snap_table);
	put_le32(h + 144, (uint32_t)s->nsnaps);
	put_le64(h + 152, s->next_snap_id);
	put_le64(h + 160, s->ctime_ns);
	memcpy(h + 168, s->parent_uuid, 16);
	put_le64(h + 184, s->parent_gen);
	put_le64(h + 192, s->parent_gen_alt == UINT64_MAX ? 0 : s->parent_gen_alt);
	put_le16(h + 200, (uint16_t)(s->parent ? strlen(s->parent) : 0));
	put_le16(h + 202, (uint16_t)(s->parent_fmt ? strlen(s->parent_fmt) : 0));
	kf_ptr_put(h + 208, &s->dedup_root);
	kf_ptr_put(h + 224, &s->crypto_hdr);
	if (s->staging) {
		kf_ptr_put(h + 240, &s->root);
		kf_ptr_put(h + 256, &s->token_ptr);
		put_le64(h + 32, s->autoclear | KF_AUTOCLEAR_RECV);
	} else {
		put_le64(h + 32, s->autoclear & ~KF_AUTOCLEAR_RECV);
	}
	memset(h + KF_HDR_PARENT_OFF, 0, KF_HDR_PARENT_MAX + KF_HDR_PFMT_MAX);
	if (s->parent)
		memcpy(h + KF_HDR_PARENT_OFF, s->parent, strlen(s->parent));
	if (s->parent_fmt)
		memcpy(h + KF_HDR_PFMT_OFF, s->parent_fmt, strlen(s->parent_fmt));
	memset(h + KF_HDR_MAC_OFF, 0, KF_HDR_CRC_OFF - KF_HDR_MAC_OFF);
	if (s->crypto)
		kf_header_mac(s, h, h + KF_HDR_MAC_OFF);
	put_le32(h + KF_HDR_CRC_OFF, kl_crc32c(0, h, KF_HDR_CRC_OFF));
}

static bool slot_valid(const uint8_t *h)
{
	return memcmp(h, KF_MAGIC, 8) == 0 &&
	       get_le32(h + KF_HDR_CRC_OFF) == kl_crc32c(0, h, KF_HDR_CRC_OFF);
}

/* ------------------------------------------------------------------ commit */

static bool kf_dirty(const struct kf_state *s)
{
	return s->dirty_nodes || s->snaps_dirty || s->rc_dirty || s->crypto_dirty ||
	       s->token_dirty;
}

int kf_commit(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	uint64_t gen = s->generation + 1;
	uint8_t *h = NULL;
	int rc;

	if (d->read_only)
		return 0;
	if (s->broken)
		return kl_err(-EIO, "%s: image handle unusable after an earlier error; reopen it "
			      "(the file holds the last committed state)", d->filename);
	if (!kf_dirty(s))
		return 0;
	rc = kl_io_event("kf.commit");
	if (rc == 0)
		rc = kf_tree_commit(d);
	if (rc == 0 && s->snap_pending) {
		struct kf_snap *sn = &s->snaps[s->nsnaps - 1];

		sn->root = s->root;
		rc = kf_tree_incref_root(d, &sn->root);
		s->snap_pending = false;
	}
	if (rc == 0)
		rc = kf_snap_commit(d);
	if (rc == 0)
		rc = kf_crypto_commit(d);
	if (rc == 0)
		rc = kf_dedup_commit(d);
	if (rc == 0)
		rc = kf_token_commit(d);
	if (rc == 0)
		rc = kf_rc_commit(d); /* last: the steps above allocate */
	if (rc == 0)
		rc = kl_io_event("kf.before_sync");
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc == 0)
		rc = kl_io_event("kf.header_write");
	if (rc == 0) {
		h = kl_aligned_alloc(KF_BLOCK);
		if (!h)
			rc = -ENOMEM;
	}
	if (rc == 0) {
		hdr_build(s, gen, h);
		rc = kl_io_pwrite(d->file, (gen % 2) * KF_BLOCK, h, KF_BLOCK);
	}
	if (rc == 0)
		rc = kl_io_sync(d->file);
	kl_free(h);
	if (rc < 0) {
		s->broken = true;
		return kl_err_prefix(rc, "%s: commit of generation %llu failed", d->filename,
				     (unsigned long long)gen);
	}
	s->generation = gen;
	s->slot = (int)(gen % 2);
	kf_rc_committed(d);
	return 0;
}

/* Commit when enough is waiting, so memory stays bounded on long write runs. */
static int kf_maybe_commit(struct blk_dev *d)
{
	struct kf_state *s = d->priv;

	if (s->batch)
		return 0;
	if (s->dirty_nodes >= KF_AUTOCOMMIT_NODES || s->pinned_blocks >= KF_AUTOCOMMIT_PINNED)
		return kf_commit(d);
	return 0;
}

/* ------------------------------------------------------------------ clusters */

static int decompress(struct blk_dev *d, unsigned comp, const uint8_t *in, size_t inlen,
		      uint8_t *out, uint64_t c)
{
	struct kf_state *s = d->priv;

	if (comp == KF_COMP_ZSTD) {
		size_t n;

		if (!s->zstd_d && !(s->zstd_d = ZSTD_createDCtx()))
			return -ENOMEM;
		n = ZSTD_decompressDCtx(s->zstd_d, out, s->cluster_size, in, inlen);
		if (ZSTD_isError(n) || n != s->cluster_size)
			return kf_corrupt(d, -EUCLEAN,
					  "cluster %llu (virtual offset %llu): zstd data does not "
					  "decode to one cluster",
					  (unsigned long long)c,
					  (unsigned long long)(c << s->cluster_bits));
		return 0;
	}
	if (comp == KF_COMP_ZLIB) {
		uLongf n = s->cluster_size;

		if (uncompress(out, &n, in, inlen) != Z_OK || n != s->cluster_size)
			return kf_corrupt(d, -EUCLEAN,
					  "cluster %llu (virtual offset %llu): zlib data does not "
					  "decode to one cluster",
					  (unsigned long long)c,
					  (unsigned long long)(c << s->cluster_bits));
		return 0;
	}
	memcpy(out, in, s->cluster_size);
	return 0;
}

static int checksum_error(struct blk_dev *d, uint64_t c, const struct kf_ptr *e)
{
	struct kf_state *s = d->priv;

	return kl_err(-EBADMSG,
		      "%s: cluster %llu (virtual offset %llu) fails its checksum (stored at offset "
		      "%llu, %u bytes)",
		      d->filename, (unsigned long long)c,
		      (unsigned long long)(c << s->cluster_bits), (unsigned long long)e->addr,
		      e->aux & KF_LEN_MASK);
}

int kf_read_blob(struct blk_dev *d, uint64_t c, const struct kf_ptr *e, uint8_t *out)
{
	struct kf_state *s = d->priv;
	uint32_t len = e->aux & KF_LEN_MASK;

	KL_TRY(kl_io_pread_full(d->file, e->addr, s->sbuf, len, "cluster data"));
	if (!(d->flags & BLK_OPEN_NO_CHECKSUM) && kl_crc32c(0, s->sbuf, len) != e->crc)
		return checksum_error(d, c, e);
	if (e->aux & KF_ENCRYPTED) {
		if (!s->crypto)
			return kl_err(-ENOKEY, "%s: cluster %llu is encrypted and no key was given",
				      d->filename, (unsigned long long)c);
		if (kf_unseal(s, e->addr, s->sbuf, len, s->ebuf) < 0)
			return kl_err(-EBADMSG,
				      "%s: cluster %llu (virtual offset %llu) fails authentication "
				      "(stored at offset %llu): tampered, swapped or replayed",
				      d->filename, (unsigned long long)c,
				      (unsigned long long)(c << s->cluster_bits),
				      (unsigned long long)e->addr);
		return decompress(d, kf_comp(e->aux), s->ebuf, len - KF_SEAL_OVERHEAD, out, c);
	}
	return decompress(d, kf_comp(e->aux), s->sbuf, len, out, c);
}

/* Decoded content of cluster c of this layer into s->cbuf (cached). */
static int cluster_get(struct blk_dev *d, uint64_t c)
{
	struct kf_state *s = d->priv;
	struct kf_ptr e;
	uint64_t run, off = c << s->cluster_bits;

	if (s->cached_cluster == c)
		return 0;
	s->cached_cluster = UINT64_MAX;
	KL_TRY(kf_lookup(d, c, &e, &run));
	switch (kf_type(e.aux)) {
	case KF_T_DATA:
		KL_TRY(kf_read_blob(d, c, &e, s->cbuf));
		break;
	case KF_T_ZERO:
		memset(s->cbuf, 0, s->cluster_size);
		break;
	default:
		KL_TRY(blk_read_below(d, off, s->cbuf,
				      (size_t)KL_MIN((uint64_t)s->cluster_size, s->vsize - off)));
		if (s->vsize - off < s->cluster_size)
			memset(s->cbuf + (s->vsize - off), 0,
			       s->cluster_size - (size_t)(s->vsize - off));
		break;
	}
	s->cached_cluster = c;
	return 0;
}

/* Compress one cluster into out when that saves a block; returns the stored length. */
static size_t encode(struct kf_state *s, const uint8_t *data, uint8_t *out, unsigned *comp)
{
	*comp = KF_COMP_NONE;
	if (s->comp == KF_COMP_ZSTD) {
		size_t n;

		if (!s->zstd_c && !(s->zstd_c = ZSTD_createCCtx()))
			return 0;
		n = ZSTD_compressCCtx(s->zstd_c, out, s->cluster_size, data, s->cluster_size,
				      s->comp_level ? s->comp_level : 3);
		if (!ZSTD_isError(n) && kf_blocks_of(n) < kf_blocks_of(s->cluster_size)) {
			*comp = KF_COMP_ZSTD;
			return n;
		}
	} else if (s->comp == KF_COMP_ZLIB) {
		uLongf n = s->cluster_size;

		if (compress2(out, &n, data, s->cluster_size,
			      s->comp_level ? s->comp_level : Z_DEFAULT_COMPRESSION) == Z_OK &&
		    kf_blocks_of(n) < kf_blocks_of(s->cluster_size)) {
			*comp = KF_COMP_ZLIB;
			return n;
		}
	}
	return 0;
}

/*
 * Place a stored form (len bytes at stored, compression comp) for cluster
 * c: sealed first when encrypted, because the seal binds the blob's file
 * offset. Fills *ne.
 */
static int place_blob(struct blk_dev *d, uint64_t addr, const uint8_t *stored, size_t len,
		      unsigned comp, struct kf_ptr *ne)
{
	struct kf_state *s = d->priv;
	uint32_t flags = (KF_T_DATA << KF_TYPE_SHIFT) | (comp << KF_COMP_SHIFT);

	if (s->crypto) {
		KL_TRY(kf_seal(s, addr, stored, len, s->ebuf));
		stored = s->ebuf;
		len += KF_SEAL_OVERHEAD;
		flags |= KF_ENCRYPTED;
	}
	KL_TRY(kl_io_pwrite(d->file, addr, stored, len));
	ne->addr = addr;
	ne->crc = kl_crc32c(0, stored, len);
	ne->aux = flags | (uint32_t)len;
	return 0;
}

static uint64_t sealed_blocks(const struct kf_state *s, size_t len)
{
	return kf_blocks_of(len + (s->crypto ? KF_SEAL_OVERHEAD : 0));
}

/*
 * Place the stored form of cluster c (old: its current entry) and point the
 * map at it; with a content hash, record it in the dedup index.
 */
static int store_cluster(struct blk_dev *d, uint64_t c, const struct kf_ptr *cur,
			 const uint8_t *stored, size_t len, unsigned comp, const uint8_t *hash)
{
	struct kf_state *s = d->priv;
	struct kf_ptr ne = { 0 }, old = *cur;
	uint64_t nb = sealed_blocks(s, len), addr;

	s->stats.clusters_written++;
	s->stats.bytes_stored += nb * KF_BLOCK;
	/*
	 * A cluster first written in this transaction is referenced by
	 * nothing on disk: overwrite it in place when the new form fits.
	 */
	if (kf_type(old.aux) == KF_T_DATA && kf_is_txn_new(s, old.addr) &&
	    kf_rc_get(s, old.addr / KF_BLOCK) == 1 &&
	    kf_blocks_of(old.aux & KF_LEN_MASK) >= nb) {
		uint64_t oldnb = kf_blocks_of(old.aux & KF_LEN_MASK);

		kf_dedup_forget(s, old.addr);
		KL_TRY(place_blob(d, old.addr, stored, len, comp, &ne));
		if (oldnb > nb)
			KL_TRY(kf_rc_dec(d, old.addr + nb * KF_BLOCK, oldnb - nb));
		KL_TRY(kf_set_entry(d, c, &ne, &old));
	} else {
		KL_TRY(kf_alloc(d, nb, &addr));
		KL_TRY(place_blob(d, addr, stored, len, comp, &ne));
		KL_TRY(kf_set_entry(d, c, &ne, &old));
		KL_TRY(kf_entry_decref(d, &old));
	}
	if (hash)
		KL_TRY(kf_dedup_insert(s, hash, &ne));
	return 0;
}

/*
 * Store one full cluster of guest data at virtual cluster c. With dedup,
 * hash is its content hash (computed here when NULL). pre, when set, is
 * data already compressed with codec precomp: kept as the stored form when
 * that is the image's codec and it saves a block.
 */
static int cluster_put_encoded(struct blk_dev *d, uint64_t c, const uint8_t *data,
			       const uint8_t *given, const uint8_t *pre, size_t prelen,
			       unsigned precomp)
{
	struct kf_state *s = d->priv;
	struct kf_ptr ne = { 0 }, old;
	const uint8_t *stored = data;
	uint8_t hash[32];
	uint64_t run;
	size_t len;
	unsigned comp;

	if (s->cached_cluster == c)
		s->cached_cluster = UINT64_MAX;
	if (kl_is_zero(data, s->cluster_size)) {
		ne.aux = KF_T_ZERO << KF_TYPE_SHIFT;
		KL_TRY(kf_set_entry(d, c, &ne, &old));
		return kf_entry_decref(d, &old);
	}
	KL_TRY(kf_lookup(d, c, &old, &run));
	if (s->dedup) {
		uint8_t oh[32];

		if (given)
			memcpy(hash, given, 32);
		else
			KL_TRY(kf_hash_content(s, data, s->cluster_size, hash));
		/* unchanged content: nothing to do */
		if (kf_type(old.aux) == KF_T_DATA && kf_dedup_hash_of(s, old.addr, oh) &&
		    memcmp(oh, hash, 32) == 0) {
			s->stats.clusters_unchanged++;
			return 0;
		}
		if (kf_dedup_lookup(s, hash, &ne)) {
			s->stats.clusters_deduped++;
			KL_TRY(kf_rc_inc(d, ne.addr, kf_blocks_of(ne.aux & KF_LEN_MASK)));
			KL_TRY(kf_set_entry(d, c, &ne, &old));
			return kf_entry_decref(d, &old);
		}
	}
	if (pre && precomp == s->comp && precomp != KF_COMP_NONE && prelen <= KF_LEN_MASK &&
	    kf_blocks_of(prelen) < kf_blocks_of(s->cluster_size)) {
		stored = pre;
		len = prelen;
		comp = precomp;
	} else {
		len = encode(s, data, s->sbuf, &comp);
		if (len)
			stored = s->sbuf;
		else
			len = s->cluster_size;
	}
	return store_cluster(d, c, &old, stored, len, comp, s->dedup ? hash : NULL);
}

static int cluster_put_hashed(struct blk_dev *d, uint64_t c, const uint8_t *data,
			      const uint8_t *given)
{
	return cluster_put_encoded(d, c, data, given, NULL, 0, KF_COMP_NONE);
}

static int cluster_put(struct blk_dev *d, uint64_t c, const uint8_t *data)
{
	return cluster_put_hashed(d, c, data, NULL);
}

/* Set cluster c to an entry without data (zero or unallocated). */
static int cluster_set_empty(struct blk_dev *d, uint64_t c, unsigned type)
{
	struct kf_state *s = d->priv;
	struct kf_ptr ne = { .aux = type << KF_TYPE_SHIFT }, old;
	uint64_t run;

	if (s->cached_cluster == c)
		s->cached_cluster = UINT64_MAX;
	KL_TRY(kf_lookup(d, c, &old, &run));
	if (old.aux == ne.aux && !old.addr)
		return 0; /* already so: do not dirty a path for nothing */
	KL_TRY(kf_set_entry(d, c, &ne, &old));
	return kf_entry_decref(d, &old);
}

/* ------------------------------------------------------------------ driver: I/O */

static int kf_writable_check(struct blk_dev *d)
{
	struct kf_state *s = d->priv;

	if (s->broken)
		return kl_err(-EIO, "%s: image handle unusable after an earlier error; reopen it",
			      d->filename);
	return 0;
}

static int kf_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	struct kf_state *s = d->priv;
	uint8_t *b = buf;

	while (len > 0) {
		uint64_t c = off >> s->cluster_bits;
		size_t in = (size_t)(off & (s->cluster_size - 1));
		size_t n = KL_MIN(len, (size_t)s->cluster_size - in);
		struct kf_ptr e;
		uint64_t run;

		KL_TRY(kf_lookup(d, c, &e, &run));
		if (n == s->cluster_size && kf_type(e.aux) == KF_T_DATA &&
		    kf_comp(e.aux) == KF_COMP_NONE && !(e.aux & KF_ENCRYPTED)) {
			/* whole uncompressed clusters: read straight into the caller's buffer,
			 * merging clusters that lie back to back in the file */
			size_t k = 1;
			uint64_t want = e.addr + s->cluster_size;
			struct kf_ptr next[64];

			next[0] = e;
			while (k < KL_ARRAY_SIZE(next) && len >= (k + 1) * (size_t)s->cluster_size) {
				KL_TRY(kf_lookup(d, c + k, &next[k], &run));
				if (kf_type(next[k].aux) != KF_T_DATA ||
				    kf_comp(next[k].aux) != KF_COMP_NONE ||
				    (next[k].aux & KF_ENCRYPTED) || next[k].addr != want)
					break;
				want += s->cluster_size;
				k++;
			}
			n = k * s->cluster_size;
			KL_TRY(kl_io_pread_full(d->file, e.addr, b, n, "cluster data"));
			for (size_t i = 0; i < k && !(d->flags & BLK_OPEN_NO_CHECKSUM); i++)
				if (kl_crc32c(0, b + i * s->cluster_size, s->cluster_size) !=
				    next[i].crc)
					return checksum_error(d, c + i, &next[i]);
		} else {
			KL_TRY(cluster_get(d, c));
			memcpy(b, s->cbuf + in, n);
		}
		b += n;
		off += n;
		len -= n;
	}
	return 0;
}

static int kf_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len)
{
	struct kf_state *s = d->priv;
	const uint8_t *b = buf;
	int rc = 0;

	KL_TRY(kf_writable_check(d));
	while (len > 0 && rc == 0) {
		uint64_t c = off >> s->cluster_bits;
		size_t in = (size_t)(off & (s->cluster_size - 1));
		size_t n = KL_MIN(len, (size_t)s->cluster_size - in);
		uint64_t coff = c << s->cluster_bits;

		if (n == s->cluster_size) {
			rc = cluster_put(d, c, b);
		} else {
			rc = cluster_get(d, c);
			if (rc == 0) {
				memcpy(s->cbuf + in, b, n);
				if (coff + s->cluster_size > s->vsize)
					memset(s->cbuf + (s->vsize - coff), 0,
					       s->cluster_size - (size_t)(s->vsize - coff));
				s->cached_cluster = UINT64_MAX;
				rc = cluster_put(d, c, s->cbuf);
			}
		}
		b += n;
		off += n;
		len -= n;
		if (rc == 0)
			rc = kf_maybe_commit(d);
	}
	if (rc < 0)
		s->broken = true;
	return rc;
}

/* Zero or drop [off, off+len): whole clusters become entries, edges are written. */
static int zero_range(struct blk_dev *d, uint64_t off, uint64_t len, unsigned whole_type)
{
	struct kf_state *s = d->priv;
	int rc = 0;

	KL_TRY(kf_writable_check(d));
	while (len > 0 && rc == 0) {
		uint64_t c = off >> s->cluster_bits;
		size_t in = (size_t)(off & (s->cluster_size - 1));
		uint64_t n = KL_MIN(len, (uint64_t)s->cluster_size - in);
		uint64_t coff = c << s->cluster_bits;

		if (n == s->cluster_size || (in == 0 && off + n == s->vsize)) {
			rc = cluster_set_empty(d, c, whole_type);
		} else {
			rc = cluster_get(d, c);
			if (rc == 0) {
				memset(s->cbuf + in, 0, (size_t)n);
				if (coff + s->cluster_size > s->vsize)
					memset(s->cbuf + (s->vsize - coff), 0,
					       s->cluster_size - (size_t)(s->vsize - coff));
				s->cached_cluster = UINT64_MAX;
				rc = cluster_put(d, c, s->cbuf);
			}
		}
		off += n;
		len -= n;
		if (rc == 0)
			rc = kf_maybe_commit(d);
	}
	if (rc < 0)
		s->broken = true;
	return rc;
}

static int kf_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags)
{
	/* without a parent, unallocated reads as zeros and costs nothing */
	unsigned t = (flags & BLK_ZERO_MAY_UNMAP) && !d->parent && !((struct kf_state *)d->priv)->parent
			     ? KF_T_UNALLOC
			     : KF_T_ZERO;

	return zero_range(d, off, len, t);
}

static int kf_discard(struct blk_dev *d, uint64_t off, uint64_t len)
{
	struct kf_state *s = d->priv;

	/* a discarded range reads as zeros, never as stale parent data */
	return zero_range(d, off, len, s->parent ? KF_T_ZERO : KF_T_UNALLOC);
}

static int kf_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e)
{
	struct kf_state *s = d->priv;
	uint64_t c = off >> s->cluster_bits;
	uint64_t in = off & (s->cluster_size - 1);
	uint64_t end = off + len, covered;
	struct kf_ptr ent, nx;
	uint64_t run;
	unsigned t;

	KL_TRY(kf_lookup(d, c, &ent, &run));
	if (run > 1) {
		e->type = BLK_UNALLOC;
		e->len = run * s->cluster_size - in;
		return 0;
	}
	t = kf_type(ent.aux);
	e->type = t == KF_T_DATA ? BLK_DATA : t == KF_T_ZERO ? BLK_ZERO : BLK_UNALLOC;
	if (t == KF_T_DATA) {
		bool packed = kf_comp(ent.aux) != KF_COMP_NONE || (ent.aux & KF_ENCRYPTED);

		e->host_off = ent.addr + (packed ? 0 : in);
		if (kf_comp(ent.aux) != KF_COMP_NONE)
			e->flags |= BLK_EXT_COMPRESSED;
		if (ent.aux & KF_ENCRYPTED)
			e->flags |= BLK_EXT_ENCRYPTED;
		covered = s->cluster_size - in;
		/* extend over clusters stored back to back, uncompressed */
		while (!packed && off + covered < end && covered < (64ULL << 20)) {
			KL_TRY(kf_lookup(d, c + 1, &nx, &run));
			if (run > 1 || kf_type(nx.aux) != KF_T_DATA || kf_comp(nx.aux) ||
			    (nx.aux & KF_ENCRYPTED) || nx.addr != ent.addr + s->cluster_size)
				break;
			ent = nx;
			c++;
			covered += s->cluster_size;
		}
		e->len = covered;
		return 0;
	}
	covered = s->cluster_size - in;
	while (off + covered < end && covered < (1ULL << 40)) {
		KL_TRY(kf_lookup(d, c + 1, &nx, &run));
		if (run > 1) {
			if (t != KF_T_UNALLOC)
				break;
			covered += run * s->cluster_size;
			c += run;
			continue;
		}
		if (kf_type(nx.aux) != t)
			break;
		c++;
		covered += s->cluster_size;
	}
	e->len = covered;
	return 0;
}

static int kf_flush(struct blk_dev *d)
{
	return kf_commit(d);
}

/* ------------------------------------------------------------------ open / close */

static int alloc_scratch(struct kf_state *s)
{
	s->cbuf = kl_aligned_alloc(s->cluster_size);
	/* stored form: compressors may exceed the input slightly; room for crypto too */
	s->sbuf = kl_aligned_alloc(KL_MAX((size_t)s->cluster_size + 4096,
					  ZSTD_compressBound(s->cluster_size)));
	s->ebuf = kl_aligned_alloc((size_t)s->cluster_size + 4096);
	s->cached_cluster = UINT64_MAX;
	return s->cbuf && s->sbuf && s->ebuf ? 0 : -ENOMEM;
}

static void kf_close(struct blk_dev *d)
{
	struct kf_state *s = d->priv;

	if (!s)
		return;
	kf_tree_drop(s);
	kf_snap_free(s);
	kf_rc_free(s);
	kl_free(s->parent);
	kl_free(s->parent_fmt);
	kl_free(s->cbuf);
	kl_free(s->sbuf);
	kl_free(s->ebuf);
	kf_crypto_free(s);
	kf_dedup_free(s);
	kf_recv_free(s);
	ZSTD_freeCCtx(s->zstd_c);
	ZSTD_freeDCtx(s->zstd_d);
}

static int check_parent(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	struct blk_identity id;
	char want[37], got[37];

	if (!d->parent || kl_uuid_is_null(s->parent_uuid))
		return 0;
	KL_TRY(blk_identity(d->parent, &id));
	kl_uuid_format(s->parent_uuid, want);
	if (!(id.valid & BLK_ID_UUID) || memcmp(id.uuid, s->parent_uuid, 16) != 0) {
		if (id.valid & BLK_ID_UUID)
			kl_uuid_format(id.uuid, got);
		else
			snprintf(got, sizeof(got), "none");
		return kl_err(-ESTALE, "%s: parent '%s' is not the image this one was made from "
			      "(UUID %s, expected %s)", d->filename, s->parent, got, want);
	}
	if (!(id.valid & BLK_ID_GENERATION))
		return 0;
	if (id.generation == s->parent_gen)
		return 0;
	if (s->parent_gen_alt == UINT64_MAX && id.generation > s->parent_gen)
		return 0; /* a commit into the parent was under way */
	return kl_err(-ESTALE, "%s: parent '%s' changed since this image was made from it "
		      "(generation %llu, expected %llu)", d->filename, s->parent,
		      (unsigned long long)id.generation, (unsigned long long)s->parent_gen);
}

/* Pick the newer valid header slot and parse it (§2); nothing below it is read. */
static int kf_read_header(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	struct kf_hdr_slot *slots;
	uint64_t fsize;
	int best = -1, rc;

	KL_TRY(kl_io_size(d->file, &fsize));
	slots = kl_calloc(2, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (int i = 0; i < 2; i++) {
		ssize_t n = kl_io_pread(d->file, (uint64_t)i * KF_BLOCK, slots[i].raw, KF_BLOCK);

		if (n < 0) {
			kl_free(slots);
			return (int)n;
		}
		slots[i].valid = n == KF_BLOCK && slot_valid(slots[i].raw);
		slots[i].generation = slots[i].valid ? get_le64(slots[i].raw + 40) : 0;
		if (slots[i].valid && (best < 0 || slots[i].generation > slots[best].generation))
			best = i;
	}
	if (best < 0) {
		kl_free(slots);
		return kl_err(-EUCLEAN, "%s: no valid .keel header (both header slots fail their "
			      "checksum or magic)", d->filename);
	}
	rc = hdr_parse(d, slots[best].raw);
	s->slot = best;
	kl_free(slots);
	if (rc < 0)
		return rc;
	if (s->nblocks_committed > KL_DIV_ROUND_UP(fsize, KF_BLOCK))
		return kl_err(-EUCLEAN, "%s: header covers %llu blocks but the file has %llu "
			      "(truncated?)", d->filename, (unsigned long long)s->nblocks_committed,
			      (unsigned long long)KL_DIV_ROUND_UP(fsize, KF_BLOCK));
	s->nblocks = s->nblocks_committed;
	return 0;
}

static int kf_open(struct blk_dev *d, const struct blk_open_opts *o)
{
	struct kf_state *s = d->priv;
	int rc;

	(void)o;
	rc = kf_read_header(d);
	if (rc < 0)
		goto err;
	if (s->incompat & KF_INCOMPAT_ENCRYPTION) {
		uint8_t mac[32];

		rc = kf_crypto_open(d, d->key, d->key_len);
		if (rc < 0)
			goto err;
		kf_header_mac(s, s->hdr_extra, mac);
		if (memcmp(mac, s->hdr_extra + KF_HDR_MAC_OFF, 32) != 0) {
			rc = kl_err(-EBADMSG, "%s: header fails authentication (tampered)",
				    d->filename);
			goto err;
		}
	}
	s->batch = d->flags & BLK_OPEN_BATCH;
	/* parallel compression in convert; dedup hashes plain data, so it writes plainly */
	d->encoded_writes = !d->read_only && s->comp != KF_COMP_NONE &&
			    !(s->compat & KF_COMPAT_DEDUP);
	rc = kf_snap_load(d);
	if (rc < 0)
		goto err;
	if (d->snapshot) {
		const struct kf_snap *sn = kf_snap_find(s, d->snapshot);

		if (!sn) {
			rc = kl_err(-ENOENT, "%s: no snapshot named '%s'", d->filename, d->snapshot);
			goto err;
		}
		s->view = sn;
		s->root = sn->root;
		s->vsize = sn->vsize;
		s->height = sn->height;
	}
	d->size = s->vsize;
	d->cluster_size = s->cluster_size;
	rc = alloc_scratch(s);
	if (rc < 0)
		goto err;
	if (!d->read_only) {
		rc = kf_rc_load(d);
		if (rc < 0)
			goto err;
		if (s->compat & KF_COMPAT_DEDUP) {
			rc = kf_dedup_load(d);
			if (rc < 0)
				goto err;
		}
		rc = kf_recv_open(d);
		if (rc < 0)
			goto err;
		/* a writer clears the autoclear features it does not maintain */
		s->autoclear &= (s->compat & KF_COMPAT_DEDUP) ? KF_AUTOCLEAR_DEDUP_INDEX : 0;
	}
	if (s->parent) {
		rc = blk_open_parent(d, s->parent, s->parent_fmt);
		if (rc < 0)
			goto err;
		rc = check_parent(d);
		if (rc < 0)
			goto err;
	}
	return 0;
err:
	kf_close(d);
	memset(s, 0, sizeof(*s));
	return rc;
}

/* ------------------------------------------------------------------ create */

static int parse_create_opts(const struct blk_create_opts *o, unsigned *cbits, unsigned *comp,
			     int *level, bool *dedup, bool *encrypt)
{
	uint64_t cs = 65536, lvl;
	bool found, on;
	const char *v;

	KL_TRY(kl_opts_get_size(o->opts, "cluster_size", &cs, &found));
	if (!KL_IS_POW2(cs) || cs < (1u << KF_MIN_CLUSTER_BITS) || cs > (1u << KF_MAX_CLUSTER_BITS))
		return kl_err(-EINVAL, "keel: cluster_size must be a power of two from 4K to 2M");
	*cbits = (unsigned)__builtin_ctzll(cs);
	*comp = KF_COMP_ZSTD;
	v = kl_opts_get(o->opts, "compression");
	if (!v)
		v = kl_opts_get(o->opts, "compression_type");
	if (v) {
		if (!strcmp(v, "zstd"))
			*comp = KF_COMP_ZSTD;
		else if (!strcmp(v, "zlib"))
			*comp = KF_COMP_ZLIB;
		else if (!strcmp(v, "none") || !strcmp(v, "off"))
			*comp = KF_COMP_NONE;
		else
			return kl_err(-EINVAL, "keel: compression must be zstd, zlib or none");
	}
	/* `convert -c` asks for compression; keel compresses by default */
	KL_TRY(kl_opts_get_bool(o->opts, "compress", &on, &found));
	if (found && on && *comp == KF_COMP_NONE)
		*comp = KF_COMP_ZSTD;
	*level = 0;
	v = kl_opts_get(o->opts, "compression_level");
	if (v) {
		if (kl_parse_u64(v, &lvl) < 0 || lvl > 22)
			return kl_err(-EINVAL, "keel: compression_level must be 0..22");
		*level = (int)lvl;
	}
	*dedup = false;
	KL_TRY(kl_opts_get_bool(o->opts, "dedup", dedup, &found));
	*encrypt = false;
	KL_TRY(kl_opts_get_bool(o->opts, "encrypt", encrypt, &found));
	return 0;
}

static int kf_create(const char *path, const struct blk_create_opts *o)
{
	struct kf_state st = { 0 };
	struct blk_identity pid = { 0 };
	struct kl_file *f = NULL;
	uint8_t *blk = NULL;
	char *tmp = NULL;
	int level = 0, rc;
	unsigned cbits = 16, comp = KF_COMP_ZSTD;
	bool dedup = false, encrypt = false;
	uint8_t *crypt = NULL;

	KL_TRY(parse_create_opts(o, &cbits, &comp, &level, &dedup, &encrypt));
	if (o->size == 0 || o->size > KF_MAX_VSIZE)
		return kl_err(-EINVAL, "keel: virtual size must be 1 byte to 64 PiB");
	if (o->parent) {
		struct blk_open_opts po = { .format = o->parent_format,
					    .flags = o->flags & BLK_OPEN_ALLOW_EXTERNAL,
					    .key = o->key,
					    .key_len = o->key_len };
		char *c1 = kl_strdup(path), *ppath;
		struct blk_dev *p = NULL;

		if (!c1)
			return -ENOMEM;
		ppath = o->parent[0] == '/' ? kl_strdup(o->parent)
					    : kl_asprintf("%s/%s", dirname(c1), o->parent);
		kl_free(c1);
		if (!ppath)
			return -ENOMEM;
		rc = blk_open(ppath, &po, &p);
		kl_free(ppath);
		if (rc < 0)
			return rc;
		rc = blk_identity(p, &pid);
		blk_close(p);
		if (rc < 0)
			return rc;
		if (strlen(o->parent) > KF_HDR_PARENT_MAX ||
		    (o->parent_format && strlen(o->parent_format) > KF_HDR_PFMT_MAX))
			return kl_err(-EINVAL, "keel: parent name too long");
	}
	st.cluster_bits = cbits;
	st.cluster_size = 1u << cbits;
	st.vsize = KL_ALIGN_UP(o->size, 512);
	st.height = kf_height_for(st.vsize, cbits);
	st.comp = comp;
	st.comp_level = level;
	st.ctime_ns = kl_wallclock_ns();
	st.next_snap_id = 1;
	kl_uuid_generate(st.uuid);
	if (o->parent) {
		st.parent = (char *)o->parent;
		st.parent_fmt = (char *)o->parent_format;
		if (pid.valid & BLK_ID_UUID)
			memcpy(st.parent_uuid, pid.uuid, 16);
		if (pid.valid & BLK_ID_GENERATION)
			st.parent_gen = pid.generation;
	}
	if (dedup) {
		st.compat |= KF_COMPAT_DEDUP;
		st.autoclear |= KF_AUTOCLEAR_DEDUP_INDEX; /* the empty index is complete */
	}
	/* blocks 0-1: header slots; block 2: the one refcount leaf; block 3: key slots */
	st.nblocks = 3;
	if (encrypt) {
		rc = kf_crypto_create(&st, o->key, o->key_len);
		if (rc < 0)
			goto out;
		st.incompat |= KF_INCOMPAT_ENCRYPTION;
		st.nblocks = 4;
		crypt = kl_aligned_alloc(KF_BLOCK);
		if (!crypt) {
			rc = -ENOMEM;
			goto out;
		}
		memset(crypt, 0, KF_BLOCK);
		kf_crypto_blob_copy(&st, crypt);
		st.crypto_hdr.addr = 3 * KF_BLOCK;
		st.crypto_hdr.crc = kl_crc32c(0, crypt, KF_CRYPTO_LEN);
		st.crypto_hdr.aux = KF_CRYPTO_LEN;
	}
	st.rc_height = 1;
	blk = kl_aligned_alloc(KF_BLOCK);
	tmp = kl_asprintf("%s.keel-new.%ld", path, (long)getpid());
	if (!blk || !tmp) {
		rc = -ENOMEM;
		goto out;
	}
	memset(blk, 0, KF_BLOCK);
	for (uint64_t b = 0; b < st.nblocks; b++)
		put_le32(blk + 4 * b, 1);
	st.rc_root.addr = 2 * KF_BLOCK;
	st.rc_root.crc = kf_sum(&st, blk, KF_BLOCK);
	rc = kl_io_open(tmp, blk_create_kl_flags(o), &f);
	if (rc < 0)
		goto out;
	rc = kl_io_pwrite(f, 2 * KF_BLOCK, blk, KF_BLOCK);
	if (rc == 0 && crypt)
		rc = kl_io_pwrite(f, 3 * KF_BLOCK, crypt, KF_BLOCK);
	if (rc == 0) {
		/* generation 1 lives in slot 1; slot 0 stays invalid (zeros) */
		memset(blk, 0, KF_BLOCK);
		rc = kl_io_pwrite(f, 0, blk, KF_BLOCK);
	}
	if (rc == 0) {
		hdr_build(&st, 1, blk);
		rc = kl_io_pwrite(f, KF_BLOCK, blk, KF_BLOCK);
	}
	if (rc == 0)
		rc = kl_io_sync(f);
	kl_io_close(f);
	f = NULL;
	if (rc == 0)
		rc = kl_io_rename(tmp, path);
	if (rc == 0) {
		/* a create that is not durable did not happen (unless asked for) */
		if (!(o->flags & BLK_OPEN_UNSAFE))
			rc = kl_io_sync_dir(path);
		if (rc < 0)
			kl_io_unlink(path);
	} else {
		kl_io_unlink(tmp);
	}
out:
	kf_crypto_free(&st);
	kl_free(crypt);
	kl_free(blk);
	kl_free(tmp);
	return rc;
}

/* ------------------------------------------------------------------ info & chains */

/* What the header alone says: version, compression, UUID, parent (§2). */
static int info_header(const struct kf_state *s, struct blk_info *out)
{
	out->subformat = kl_asprintf("v%d", KF_VERSION);
	out->compression = kl_strdup(comp_name(s->comp));
	if (!out->subformat || !out->compression)
		return -ENOMEM;
	memcpy(out->uuid, s->uuid, 16);
	out->has_uuid = true;
	if (s->parent) {
		out->parent = kl_strdup(s->parent);
		if (!out->parent)
			return -ENOMEM;
		if (s->parent_fmt && !(out->parent_format = kl_strdup(s->parent_fmt)))
			return -ENOMEM;
	}
	return 0;
}

static int info_features(const struct kf_state *s, struct blk_info *out)
{
	if (s->compat & KF_COMPAT_DEDUP)
		KL_TRY(blk_info_add_feature(out, "dedup"));
	if (s->incompat & KF_INCOMPAT_ENCRYPTION)
		KL_TRY(blk_info_add_feature(out, "encryption"));
	KL_TRY(blk_info_add_feature(out, "checksums"));
	return blk_info_add_feature(out, "cow-metadata");
}

static int kf_info(struct blk_dev *d, struct blk_info *out)
{
	struct kf_state *s = d->priv;
	uint64_t refs = 0, cur = 0, blobs = 0, stored = 0, compressed = 0;
	struct kf_ref *v = NULL;
	size_t n = 0;

	KL_TRY(info_header(s, out));
	KL_TRY(kf_snapshot_list(d, &out->snaps, &out->nsnaps));
	if (!d->read_only)
		KL_TRY(kf_commit(d));
	/* every reference of every tree, grouped by blob: logical vs stored */
	if (!s->view) {
		KL_TRY(kf_collect_refs(d, &v, &n));
		for (size_t i = 0; i < n; i++) {
			refs++;
			cur += v[i].tree == -1;
			if (i > 0 && v[i].addr == v[i - 1].addr)
				continue;
			blobs++;
			stored += kf_blocks_of(v[i].aux & KF_LEN_MASK) * KF_BLOCK;
			compressed += kf_comp(v[i].aux) != KF_COMP_NONE;
		}
		kl_free(v);
	}
	KL_TRY(blk_info_add_kv(out, "generation", "%llu", (unsigned long long)s->generation));
	KL_TRY(blk_info_add_kv(out, "data clusters", "%llu", (unsigned long long)cur));
	KL_TRY(blk_info_add_kv(out, "logical bytes", "%llu",
			       (unsigned long long)(cur * s->cluster_size)));
	KL_TRY(blk_info_add_kv(out, "logical bytes, all snapshots", "%llu",
			       (unsigned long long)(refs * s->cluster_size)));
	KL_TRY(blk_info_add_kv(out, "stored bytes", "%llu", (unsigned long long)stored));
	KL_TRY(blk_info_add_kv(out, "dedup ratio", "%.2f", blobs ? (double)refs / (double)blobs : 1.0));
	KL_TRY(blk_info_add_kv(out, "compression ratio", "%.2f",
			       stored ? (double)(blobs * s->cluster_size) / (double)stored : 1.0));
	KL_TRY(blk_info_add_kv(out, "file blocks", "%llu", (unsigned long long)s->nblocks_committed));
	if (s->view)
		KL_TRY(blk_info_add_kv(out, "snapshot view", "%s", s->view->name));
	if (s->parent) {
		char u[37];

		kl_uuid_format(s->parent_uuid, u);
		KL_TRY(blk_info_add_kv(out, "parent uuid", "%s", u));
		KL_TRY(blk_info_add_kv(out, "parent generation", "%llu",
				       (unsigned long long)s->parent_gen));
	}
	return info_features(s, out);
}

/*
 * keel info on an encrypted image without its key: the header as read
 * (its MAC needs the key, so nothing here is authenticated) and how many
 * key slots are in use. Snapshots, allocation and stored bytes live in
 * metadata only the key can authenticate: not shown.
 */
static int kf_info_nokey(struct blk_dev *d, struct blk_info *out)
{
	struct kf_state *s = d->priv;
	unsigned used = 0;
	int rc;

	KL_TRY(kf_read_header(d));
	/* not encrypted itself: the key was wanted further down its chain */
	if (!(s->incompat & KF_INCOMPAT_ENCRYPTION))
		return kl_err(-ENOKEY, "%s is not encrypted", d->filename);
	rc = kf_crypto_slots_in_use(d, &used);
	if (rc < 0)
		return rc;
	out->virtual_size = s->vsize;
	out->cluster_size = s->cluster_size;
	KL_TRY(info_header(s, out));
	KL_TRY(blk_info_add_kv(out, "encryption", "aes-256-gcm, locked (no key given)"));
	KL_TRY(blk_info_add_kv(out, "key slots in use", "%u", used));
	KL_TRY(blk_info_add_kv(out, "authenticated", "no: the header needs the key to verify"));
	KL_TRY(blk_info_add_kv(out, "generation", "%llu", (unsigned long long)s->generation));
	KL_TRY(blk_info_add_kv(out, "file blocks", "%llu", (unsigned long long)s->nblocks_committed));
	return info_features(s, out);
}

static int kf_identity(struct blk_dev *d, struct blk_identity *id)
{
	struct kf_state *s = d->priv;

	memcpy(id->uuid, s->uuid, 16);
	id->generation = s->generation;
	id->valid = BLK_ID_UUID | BLK_ID_GENERATION;
	return 0;
}

static int kf_set_parent(struct blk_dev *d, const char *ref, const char *fmt)
{
	struct kf_state *s = d->priv;
	struct blk_identity id = { 0 };
	char *nr = NULL, *nf = NULL;
	int rc;

	KL_TRY(kf_writable_check(d));
	if (ref && (strlen(ref) > KF_HDR_PARENT_MAX || (fmt && strlen(fmt) > KF_HDR_PFMT_MAX)))
		return kl_err(-EINVAL, "%s: parent name too long", d->filename);
	if (ref) {
		nr = kl_strdup(ref);
		nf = fmt ? kl_strdup(fmt) : NULL;
		if (!nr || (fmt && !nf)) {
			kl_free(nr);
			kl_free(nf);
			return -ENOMEM;
		}
		if (d->parent && (rc = blk_identity(d->parent, &id)) < 0) {
			kl_free(nr);
			kl_free(nf);
			return rc;
		}
	}
	KL_TRY(kf_commit(d));
	rc = kl_io_event("kf.set_parent");
	if (rc < 0) {
		kl_free(nr);
		kl_free(nf);
		return rc;
	}
	kl_free(s->parent);
	kl_free(s->parent_fmt);
	s->parent = nr;
	s->parent_fmt = nf;
	memset(s->parent_uuid, 0, 16);
	s->parent_gen = 0;
	s->parent_gen_alt = 0;
	if (id.valid & BLK_ID_UUID)
		memcpy(s->parent_uuid, id.uuid, 16);
	if (id.valid & BLK_ID_GENERATION)
		s->parent_gen = id.generation;
	s->snaps_dirty = true; /* forces the header write */
	return kf_commit(d);
}

/* Mark that the parent is about to receive this image's data (commit). */
static int kf_parent_commit_begin(struct blk_dev *d)
{
	struct kf_state *s = d->priv;

	KL_TRY(kf_writable_check(d));
	KL_TRY(kf_commit(d));
	s->parent_gen_alt = UINT64_MAX;
	s->snaps_dirty = true;
	return kf_commit(d);
}

static int kf_make_empty(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	struct kf_ptr old;
	int rc;

	KL_TRY(kf_writable_check(d));
	KL_TRY(kf_commit(d));
	KL_TRY(kl_io_event("kf.make_empty"));
	old = s->root;
	rc = kf_tree_decref(d, &old, (int)s->height - 1);
	if (rc < 0) {
		s->broken = true; /* refcounts half released: never commit them */
		return rc;
	}
	kf_tree_drop(s);
	s->root = (struct kf_ptr){ 0 };
	s->cached_cluster = UINT64_MAX;
	s->snaps_dirty = true;
	return kf_commit(d);
}

/* ------------------------------------------------------------------ hashing, stats */

static int kf_hash_cluster(const struct blk_dev *d, const void *buf, size_t len, uint8_t out[32])
{
	const struct kf_state *s = d->priv;

	if (len != s->cluster_size)
		return kl_err(-EINVAL, "%s: content hashes cover whole clusters", d->filename);
	return kf_hash_content(s, buf, len, out);
}

static int kf_write_hashed(struct blk_dev *d, uint64_t off, const void *buf, size_t len,
			   const uint8_t hash[32])
{
	struct kf_state *s = d->priv;
	int rc;

	KL_TRY(kf_writable_check(d));
	if (len != s->cluster_size || off % s->cluster_size)
		return kf_pwrite(d, off, buf, len);
	rc = cluster_put_hashed(d, off >> s->cluster_bits, buf, hash);
	if (rc == 0)
		rc = kf_maybe_commit(d);
	if (rc < 0)
		s->broken = true;
	return rc;
}

static int kf_write_compressed(struct blk_dev *d, uint64_t off, const void *buf, size_t len,
			       unsigned codec, const void *frame, size_t flen)
{
	struct kf_state *s = d->priv;
	int rc;

	KL_TRY(kf_writable_check(d));
	if (len != s->cluster_size || off % s->cluster_size || codec != BLK_CODEC_ZSTD)
		return kf_pwrite(d, off, buf, len);
	rc = cluster_put_encoded(d, off >> s->cluster_bits, buf, NULL, frame, flen,
				 KF_COMP_ZSTD);
	if (rc == 0)
		rc = kf_maybe_commit(d);
	if (rc < 0)
		s->broken = true;
	return rc;
}

static int kf_stats(struct blk_dev *d, struct blk_stats *st)
{
	*st = ((struct kf_state *)d->priv)->stats;
	return 0;
}

/* ------------------------------------------------------------------ encoded writes */

/*
 * convert compresses on many threads: encode is compression alone (pure,
 * per-thread contexts); placing, sealing (encryption binds the blob's file
 * offset) and the map update stay serial in write_encoded.
 */
static ssize_t kf_encode_cluster(const struct blk_dev *d, uint64_t off, const void *buf,
				 size_t len, void *out, size_t cap)
{
	const struct kf_state *s = d->priv;
	ssize_t n;

	(void)off;
	if (len != s->cluster_size)
		return 0; /* the short last cluster goes the plain way */
	if (s->comp == KF_COMP_ZSTD)
		n = kl_zstd_compress(s->comp_level ? s->comp_level : 3, buf, len, out, cap);
	else if (s->comp == KF_COMP_ZLIB)
		n = kl_zlib_compress(s->comp_level ? s->comp_level : -1, buf, len, out, cap);
	else
		return 0;
	if (n <= 0 || kf_blocks_of((uint64_t)n) >= kf_blocks_of(s->cluster_size))
		return n < 0 ? n : 0;
	return n;
}

/* measure -c: a blob takes whole blocks; a plain cluster is cluster_size bytes (§4.1) */
static uint64_t kf_encoded_footprint(struct blk_dev *d, size_t enc_len, size_t raw_len)
{
	if (enc_len)
		return KL_ALIGN_UP((uint64_t)enc_len, KF_BLOCK);
	return KL_DIV_ROUND_UP((uint64_t)raw_len, d->cluster_size) * d->cluster_size;
}

static int kf_write_encoded(struct blk_dev *d, uint64_t off, const void *enc, size_t enc_len,
			    const void *raw, size_t raw_len)
{
	struct kf_state *s = d->priv;
	uint64_t c = off >> s->cluster_bits, run;
	struct kf_ptr old;
	int rc;

	(void)raw;
	(void)raw_len;
	KL_TRY(kf_writable_check(d));
	if (s->cached_cluster == c)
		s->cached_cluster = UINT64_MAX;
	rc = kf_lookup(d, c, &old, &run);
	if (rc == 0)
		rc = store_cluster(d, c, &old, enc, enc_len, s->comp, NULL);
	if (rc == 0)
		rc = kf_maybe_commit(d);
	if (rc < 0)
		s->broken = true;
	return rc;
}

/* ------------------------------------------------------------------ probe & table */

static int kf_probe(const struct blk_probe_buf *pb)
{
	for (int i = 0; i < 2; i++) {
		size_t off = (size_t)i * KF_BLOCK;

		if (pb->head_len >= off + 8 && memcmp(pb->head + off, KF_MAGIC, 8) == 0)
			return 100;
	}
	return 0;
}

const struct blk_driver blk_keel_driver = {
	.name = "keel",
	.ext = "keel",
	.desc = "native: COW snapshots, checksums, compression, crash-atomic",
	.create_help =
		"  cluster_size=4K..2M        allocation unit (64K)\n"
		"  compression=zstd|zlib|none compression of data clusters (zstd)\n"
		"  compression_level=0..22    level for the compressor (0: its default)\n"
		"  dedup=on|off               share identical clusters as they are written (off)\n"
		"  encrypt=on|off             encrypt data and metadata; the key comes from\n"
		"                             --key-file or --key-env (off)\n",
	.instance_size = sizeof(struct kf_state),
	.flags = BLK_DRV_CAN_CREATE | BLK_DRV_SNAPSHOTS | BLK_DRV_HAS_PARENT,
	.probe = kf_probe,
	.open = kf_open,
	.create = kf_create,
	.pread = kf_pread,
	.pwrite = kf_pwrite,
	.pwrite_zeroes = kf_pwrite_zeroes,
	.discard = kf_discard,
	.block_status = kf_block_status,
	.flush = kf_flush,
	.close = kf_close,
	.info = kf_info,
	.info_nokey = kf_info_nokey,
	.check = kf_check,
	.identity = kf_identity,
	.snapshot_list = kf_snapshot_list,
	.snapshot_create = kf_snapshot_create,
	.snapshot_delete = kf_snapshot_delete,
	.snapshot_revert = kf_snapshot_revert,
	.snapshot_diff = kf_snapshot_diff,
	.set_parent = kf_set_parent,
	.make_empty = kf_make_empty,
	.parent_commit_begin = kf_parent_commit_begin,
	.key_op = kf_key_op,
	.key_list = kf_key_list,
	.hash_cluster = kf_hash_cluster,
	.write_hashed = kf_write_hashed,
	.write_compressed = kf_write_compressed,
	.stats = kf_stats,
	.dedup = kf_dedup_offline,
	.encode_cluster = kf_encode_cluster,
	.write_encoded = kf_write_encoded,
	.encoded_footprint = kf_encoded_footprint,
	.snapshot_create_guid = kf_snapshot_create_guid,
	.recv_begin = kf_recv_begin,
	.recv_status = kf_recv_status,
	.recv_checkpoint = kf_recv_checkpoint,
	.recv_finish = kf_recv_finish,
	.recv_abort = kf_recv_abort,
	.scrub = kf_scrub,
};
