/*
 * format/luks-image.c - LUKS1 volumes as disk images: qemu-img's "luks"
 * format, and images of disks that cryptsetup formatted (luksFormat
 * --type luks1). The file is the LUKS header and key material, then the
 * payload from payload_offset sectors on, encrypted sector by sector with
 * IVs counted from the payload's start. The guest sees the decrypted
 * payload, all of it data (a hole in the file decrypts to noise, as under
 * qemu, so nothing is reported as zero, and a copy into a new volume writes
 * its zeros too: BLK_DRV_NO_ZERO_INIT).
 *
 * keel also creates volumes (create: what qemu-img create -f luks makes
 * with its defaults) and writes into them, encrypting each sector.
 */
#include "format/format_int.h"
#include "format/luks.h"

#include <string.h>

#define LUKSIMG_MAGIC "LUKS\xba\xbe"
/* qemu and cryptsetup put the payload 2 MiB in; this bounds what we load */
#define LUKSIMG_MAX_HEADER (64u << 20)

struct luksimg_state {
	struct luks *luks;
	uint64_t payload; /* byte offset of the payload */
};

static int luksimg_probe(const struct blk_probe_buf *pb)
{
	/* version 2 too: open then says which version it is */
	return pb->head_len >= 8 && !memcmp(pb->head, LUKSIMG_MAGIC, 6) ? 100 : 0;
}

/* The payload's offset and the virtual size, from the header's first sector. */
static int read_layout(struct blk_dev *d, uint8_t *hdr, uint64_t *payload, uint64_t *fsize)
{
	KL_TRY(kl_io_size(d->file, fsize));
	KL_TRY(kl_io_pread_full(d->file, 0, hdr, LUKS_HEADER_LEN, "LUKS header"));
	if (memcmp(hdr, LUKSIMG_MAGIC, 6) != 0)
		return kl_err(-EUCLEAN, "%s: no LUKS magic at offset 0", d->filename);
	if (get_be16(hdr + 6) != 1)
		return kl_err(-ENOTSUP, "%s: LUKS version %u; keel reads version 1", d->filename,
			      get_be16(hdr + 6));
	*payload = (uint64_t)get_be32(hdr + 104) * LUKS_SECTOR;
	if (*payload < LUKS_HEADER_LEN || *payload > LUKSIMG_MAX_HEADER || *payload > *fsize)
		return kl_err(-EUCLEAN, "%s: LUKS payload offset %llu (header field at 104) lies "
			      "inside the header, past %u MiB or past the end of the file (%llu)",
			      d->filename, (unsigned long long)*payload, LUKSIMG_MAX_HEADER >> 20,
			      (unsigned long long)*fsize);
	return 0;
}

static int luksimg_open(struct blk_dev *d, const struct blk_open_opts *o)
{
	struct luksimg_state *s = d->priv;
	uint8_t hdr[LUKS_HEADER_LEN];
	uint64_t fsize;

	(void)o;
	KL_TRY(read_layout(d, hdr, &s->payload, &fsize));
	/* writes go in whole sectors (write_align): the last must be whole too */
	if (!d->read_only && (fsize - s->payload) % LUKS_SECTOR)
		return kl_err(-EUCLEAN, "%s: LUKS payload of %llu bytes is not whole %u-byte "
			      "sectors; it opens read-only only", d->filename,
			      (unsigned long long)(fsize - s->payload), LUKS_SECTOR);
	KL_TRY(luks_open_file(d->file, 0, (size_t)s->payload, d->key, d->key_len,
			      d->key_nl, d->filename, &s->luks));
	d->size = fsize - s->payload;
	d->cluster_size = 65536;
	d->write_align = LUKS_SECTOR;
	return 0;
}

static int luksimg_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len)
{
	struct luksimg_state *s = d->priv;

	return luks_read(s->luks, d->file, s->payload + off, s->payload, buf, len);
}

static int luksimg_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len)
{
	struct luksimg_state *s = d->priv;

	return luks_write(s->luks, d->file, s->payload + off, s->payload, buf, len);
}

static int luksimg_flush(struct blk_dev *d)
{
	return kl_io_sync(d->file);
}

/*
 * A new volume: the header area (key slot 0 opened by o->key), then size
 * bytes of payload rounded up to whole sectors, left unwritten as qemu-img
 * create leaves it (it decrypts to noise) except for a partial last sector,
 * whose rounding is written as encrypted zeros.
 */
static int luksimg_create(const char *path, const struct blk_create_opts *o)
{
	const char *it = kl_opts_get(o->opts, "iter-time");
	uint64_t size = KL_ALIGN_UP(o->size, (uint64_t)LUKS_SECTOR), payload = 0;
	uint64_t ms = 2000; /* qemu's and cryptsetup's default */
	struct kl_file *f = NULL;
	uint8_t *area = NULL;
	size_t alen = 0;
	int rc;

	if (o->parent)
		return kl_err(-ENOTSUP, "luks: a LUKS volume has no backing file");
	if (it && (kl_parse_u64(it, &ms) < 0 || ms < 1 || ms > 60000))
		return kl_err(-EINVAL, "luks: iter-time=%s: milliseconds of PBKDF2 per unlock, 1 to "
			      "60000", it);
	/* a key file's final newline counts here, as qemu and cryptsetup count it */
	KL_TRY(luks_format((uint32_t)ms, o->key, o->key ? o->key_len + o->key_nl : 0, &area,
			   &alen));
	payload = alen;
	rc = kl_io_open(path, blk_create_kl_flags(o), &f);
	if (rc == 0)
		rc = kl_io_pwrite(f, 0, area, alen);
	if (rc == 0)
		rc = kl_io_truncate(f, payload + size);
	kl_wipe(area, alen);
	kl_free(area);
	if (rc == 0 && size != o->size) {
		struct luks *l = NULL;
		uint8_t zero[LUKS_SECTOR] = { 0 };

		rc = luks_open_file(f, 0, (size_t)payload, o->key, o->key_len, o->key_nl,
				    path, &l);
		if (rc == 0)
			rc = luks_write(l, f, payload + size - LUKS_SECTOR, payload, zero,
					LUKS_SECTOR);
		luks_close(l);
	}
	if (rc == 0)
		rc = kl_io_sync(f);
	if (f)
		kl_io_close(f);
	if (rc < 0)
		kl_io_unlink(path);
	return rc;
}

/* The header area, then every sector of the disk: written, zeros or not. */
static int luksimg_measure(const struct blk_create_opts *o, struct blk_dev *in,
			   struct blk_measure *m)
{
	uint64_t size = KL_ALIGN_UP(o->size, (uint64_t)LUKS_SECTOR);

	(void)in;
	m->required = luks_format_payload() + size;
	m->fully_allocated = m->required;
	m->data = size;
	return 0;
}

static int luksimg_block_status(struct blk_dev *d, uint64_t off, uint64_t len,
				struct blk_extent *e)
{
	struct luksimg_state *s = d->priv;

	(void)len;
	e->type = BLK_DATA;
	e->len = d->size - off;
	e->host_off = s->payload + off;
	return 0;
}

static void luksimg_close(struct blk_dev *d)
{
	struct luksimg_state *s = d->priv;

	if (!s)
		return;
	luks_close(s->luks);
	s->luks = NULL;
}

static int luksimg_info(struct blk_dev *d, struct blk_info *out)
{
	struct luksimg_state *s = d->priv;

	KL_TRY(blk_info_add_kv(out, "encryption", "LUKS, %s", luks_describe(s->luks)));
	return blk_info_add_kv(out, "payload offset", "%llu", (unsigned long long)s->payload);
}

static int luksimg_info_nokey(struct blk_dev *d, struct blk_info *out)
{
	struct luksimg_state *s = d->priv;
	uint8_t hdr[LUKS_HEADER_LEN];
	uint64_t fsize;
	char what[160];

	KL_TRY(read_layout(d, hdr, &s->payload, &fsize));
	out->virtual_size = fsize - s->payload;
	KL_TRY(luks_peek(hdr, sizeof(hdr), d->filename, what, sizeof(what)));
	KL_TRY(blk_info_add_kv(out, "encryption", "LUKS, %s; locked (no key given)", what));
	return blk_info_add_kv(out, "payload offset", "%llu", (unsigned long long)s->payload);
}

const struct blk_driver blk_luks_driver = {
	.name = "luks",
	.ext = "luks",
	.desc = "LUKS1 volume (qemu luks, cryptsetup), opened with a passphrase",
	.create_help =
		"  iter-time=MS  PBKDF2 time to unlock the key slot, milliseconds (2000)\n",
	.instance_size = sizeof(struct luksimg_state),
	.flags = BLK_DRV_FLAT | BLK_DRV_CAN_CREATE | BLK_DRV_CREATE_KEY | BLK_DRV_NO_ZERO_INIT,
	.probe = luksimg_probe,
	.open = luksimg_open,
	.create = luksimg_create,
	.pread = luksimg_pread,
	.pwrite = luksimg_pwrite,
	.flush = luksimg_flush,
	.measure = luksimg_measure,
	.block_status = luksimg_block_status,
	.close = luksimg_close,
	.info = luksimg_info,
	.info_nokey = luksimg_info_nokey,
};
