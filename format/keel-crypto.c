/*
 * format/keel-crypto.c - encryption of .keel images (KEEL-FORMAT.md §10).
 *
 * A random 256-bit master key is wrapped (AES-256-GCM) by up to eight key
 * slots, each with its own passphrase-derived key (scrypt). From the master
 * key, HKDF-SHA-256 derives the cluster key and the MAC key. Clusters are
 * compressed, then sealed with AES-256-GCM under a fresh random nonce, with
 * the image UUID and the blob's file offset as associated data. With a key,
 * every metadata checksum (node pointers, tables) is a truncated
 * HMAC-SHA-256 instead of a CRC, and the header carries a full HMAC, so
 * nobody without the key can rewrite which blob a cluster uses.
 */
#include "format/keel.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

struct kf_crypto {
	uint8_t master[32];
	uint8_t k_enc[32];
	uint8_t k_mac[32];
	uint8_t blob[KF_CRYPTO_LEN]; /* the key-slot table as on disk */
	int slot_used;
	EVP_CIPHER_CTX *ctx;
};

/* ------------------------------------------------------------------ primitives */

/* AES-256-GCM seal/open with a caller's nonce; tag follows the ciphertext. */
static int gcm(EVP_CIPHER_CTX *ctx, bool seal, const uint8_t key[32], const uint8_t nonce[12],
	       const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t len, uint8_t *out,
	       uint8_t tag[16])
{
	int n = 0, ok;

	ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, seal) == 1 &&
	     EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1 &&
	     EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, seal) == 1 &&
	     EVP_CipherUpdate(ctx, NULL, &n, aad, (int)aadlen) == 1 &&
	     EVP_CipherUpdate(ctx, out, &n, in, (int)len) == 1;
	if (ok && !seal)
		ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1;
	if (ok)
		ok = EVP_CipherFinal_ex(ctx, out + n, &n) == 1;
	if (ok && seal)
		ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
	return ok ? 0 : -EBADMSG;
}

static int derive_subkeys(struct kf_state *s)
{
	KL_TRY(kl_hkdf_sha256(s->crypto->master, 32, s->uuid, 16, "keel-v1 cluster encryption",
			      s->crypto->k_enc, 32));
	return kl_hkdf_sha256(s->crypto->master, 32, s->uuid, 16, "keel-v1 metadata mac",
			      s->crypto->k_mac, 32);
}

uint32_t kf_sum(const struct kf_state *s, const void *buf, size_t len)
{
	uint8_t mac[32];
	unsigned int n = 0;

	if (!s->crypto)
		return kl_crc32c(0, buf, len);
	HMAC(EVP_sha256(), s->crypto->k_mac, 32, buf, len, mac, &n);
	return get_le32(mac);
}

void kf_header_mac(const struct kf_state *s, const uint8_t *hdr, uint8_t out[32])
{
	unsigned int n = 0;

	HMAC(EVP_sha256(), s->crypto->k_mac, 32, hdr, KF_HDR_MAC_OFF, out, &n);
}

int kf_hash_content(const struct kf_state *s, const void *buf, size_t len, uint8_t out[32])
{
	unsigned int n = 0;

	/* keyed when encrypted: the dedup index must not reveal content */
	if (s->crypto) {
		if (!HMAC(EVP_sha256(), s->crypto->k_mac, 32, buf, len, out, &n))
			return kl_err(-EIO, "HMAC-SHA-256 failed");
		return 0;
	}
	if (EVP_Digest(buf, len, out, &n, EVP_sha256(), NULL) != 1)
		return kl_err(-EIO, "SHA-256 failed");
	return 0;
}

/* ------------------------------------------------------------------ clusters */

static void blob_aad(const struct kf_state *s, uint64_t addr, uint8_t aad[32])
{
	memcpy(aad, "keel-v1\0", 8);
	memcpy(aad + 8, s->uuid, 16);
	put_le64(aad + 24, addr);
}

int kf_seal(struct kf_state *s, uint64_t addr, const uint8_t *in, size_t len, uint8_t *out)
{
	uint8_t aad[32];

	if (!s->crypto->ctx && !(s->crypto->ctx = EVP_CIPHER_CTX_new()))
		return -ENOMEM;
	if (RAND_bytes(out, 12) != 1)
		return kl_err(-EIO, "no randomness for a nonce");
	blob_aad(s, addr, aad);
	if (gcm(s->crypto->ctx, true, s->crypto->k_enc, out, aad, sizeof(aad), in, len, out + 12,
		out + 12 + len) < 0)
		return kl_err(-EIO, "AES-256-GCM encryption failed");
	return 0;
}

int kf_unseal(struct kf_state *s, uint64_t addr, const uint8_t *in, size_t len, uint8_t *out)
{
	uint8_t aad[32], tag[16];

	if (len < KF_SEAL_OVERHEAD)
		return -EBADMSG;
	if (!s->crypto->ctx && !(s->crypto->ctx = EVP_CIPHER_CTX_new()))
		return -ENOMEM;
	blob_aad(s, addr, aad);
	memcpy(tag, in + len - 16, 16);
	return gcm(s->crypto->ctx, false, s->crypto->k_enc, in, aad, sizeof(aad), in + 12,
		   len - KF_SEAL_OVERHEAD, out, tag);
}

/* ------------------------------------------------------------------ key slots */

/* Parse and sanity-check a key-slot table; pure, for the fuzzer too. */
int kf_crypto_parse(const uint8_t *b, size_t len, struct kf_keyslot *slots, unsigned *nslots)
{
	unsigned n;

	if (len != KF_CRYPTO_LEN || memcmp(b, "KCRY", 4) != 0)
		return kl_err(-EUCLEAN, "key-slot table: bad magic or length %zu", len);
	if (get_le32(b + 4) != 1 || get_le32(b + 12) != 1)
		return kl_err(-ENOTSUP, "key-slot table: version %u, cipher %u not supported",
			      get_le32(b + 4), get_le32(b + 12));
	n = get_le32(b + 8);
	if (n != KF_MAX_SLOTS)
		return kl_err(-EUCLEAN, "key-slot table: %u slots, expected %d", n, KF_MAX_SLOTS);
	for (unsigned i = 0; i < n; i++) {
		const uint8_t *p = b + KF_SLOT_OFF + i * KF_SLOT_LEN;
		struct kf_keyslot *k = &slots[i];

		k->state = get_le32(p);
		k->kdf = get_le32(p + 4);
		k->n = get_le64(p + 8);
		k->r = get_le32(p + 16);
		k->p = get_le32(p + 20);
		memcpy(k->salt, p + 24, 32);
		memcpy(k->nonce, p + 56, 12);
		memcpy(k->wrapped, p + 68, 48);
		if (k->state > 1)
			return kl_err(-EUCLEAN, "key slot %u: state %u", i, k->state);
		if (k->state == 0)
			continue;
		/* bound the work and memory a hostile file can demand */
		if (k->kdf != 1 || !KL_IS_POW2(k->n) || k->n < 1024 || k->n > (1u << 20) ||
		    k->r == 0 || k->r > 32 || k->p == 0 || k->p > 16 ||
		    128ULL * k->n * k->r > (1ULL << 30))
			return kl_err(-EUCLEAN, "key slot %u: KDF parameters out of range "
				      "(kdf %u, N %llu, r %u, p %u)", i, k->kdf,
				      (unsigned long long)k->n, k->r, k->p);
	}
	*nslots = n;
	return 0;
}

static void slot_put(uint8_t *b, unsigned i, const struct kf_keyslot *k)
{
	uint8_t *p = b + KF_SLOT_OFF + i * KF_SLOT_LEN;

	memset(p, 0, KF_SLOT_LEN);
	put_le32(p, k->state);
	put_le32(p + 4, k->kdf);
	put_le64(p + 8, k->n);
	put_le32(p + 16, k->r);
	put_le32(p + 20, k->p);
	memcpy(p + 24, k->salt, 32);
	memcpy(p + 56, k->nonce, 12);
	memcpy(p + 68, k->wrapped, 48);
}

static void slot_aad(const struct kf_state *s, unsigned i, uint8_t aad[20])
{
	memcpy(aad, s->uuid, 16);
	put_le32(aad + 16, i);
}

static int slot_unwrap(struct kf_state *s, unsigned i, const struct kf_keyslot *k,
		       const uint8_t *pass, size_t plen, uint8_t master[32])
{
	uint8_t kek[32], aad[20], tag[16];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int rc;

	if (!ctx)
		return -ENOMEM;
	rc = kl_scrypt(pass, plen, k->salt, 32, k->n, k->r, k->p, kek, 32);
	if (rc == 0) {
		slot_aad(s, i, aad);
		memcpy(tag, k->wrapped + 32, 16);
		rc = gcm(ctx, false, kek, k->nonce, aad, sizeof(aad), k->wrapped, 32, master, tag);
	}
	kl_wipe(kek, sizeof(kek));
	EVP_CIPHER_CTX_free(ctx);
	return rc;
}

static int slot_wrap(struct kf_state *s, unsigned i, const uint8_t *pass, size_t plen,
		     struct kf_keyslot *k)
{
	uint8_t kek[32], aad[20];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int rc;

	if (!ctx)
		return -ENOMEM;
	memset(k, 0, sizeof(*k));
	k->state = 1;
	k->kdf = 1;
	k->n = KF_SCRYPT_N;
	k->r = KF_SCRYPT_R;
	k->p = KF_SCRYPT_P;
	rc = RAND_bytes(k->salt, 32) == 1 && RAND_bytes(k->nonce, 12) == 1 ? 0 : -EIO;
	if (rc == 0)
		rc = kl_scrypt(pass, plen, k->salt, 32, k->n, k->r, k->p, kek, 32);
	if (rc == 0) {
		slot_aad(s, i, aad);
		rc = gcm(ctx, true, kek, k->nonce, aad, sizeof(aad), s->crypto->master, 32,
			 k->wrapped, k->wrapped + 32);
	}
	kl_wipe(kek, sizeof(kek));
	EVP_CIPHER_CTX_free(ctx);
	return rc < 0 ? kl_err(rc, "wrapping the key failed") : 0;
}

void kf_crypto_free(struct kf_state *s)
{
	if (!s->crypto)
		return;
	EVP_CIPHER_CTX_free(s->crypto->ctx);
	kl_wipe(s->crypto, sizeof(*s->crypto));
	kl_free(s->crypto);
	s->crypto = NULL;
}

/* A new image: fresh master key in slot 0. */
int kf_crypto_create(struct kf_state *s, const uint8_t *pass, size_t plen)
{
	struct kf_keyslot k;

	if (!pass || plen == 0)
		return kl_err(-ENOKEY, "encryption needs a passphrase (--key-file or --key-env)");
	s->crypto = kl_calloc(1, sizeof(*s->crypto));
	if (!s->crypto)
		return -ENOMEM;
	if (RAND_bytes(s->crypto->master, 32) != 1)
		return kl_err(-EIO, "no randomness for the master key");
	memcpy(s->crypto->blob, "KCRY", 4);
	put_le32(s->crypto->blob + 4, 1);
	put_le32(s->crypto->blob + 8, KF_MAX_SLOTS);
	put_le32(s->crypto->blob + 12, 1);
	KL_TRY(slot_wrap(s, 0, pass, plen, &k));
	slot_put(s->crypto->blob, 0, &k);
	s->crypto->slot_used = 0;
	return derive_subkeys(s);
}

/* Read, check (plain CRC) and parse the key-slot table the header points at. */
static int crypto_read(struct blk_dev *d, uint8_t *blob, struct kf_keyslot *slots, unsigned *n)
{
	struct kf_state *s = d->priv;
	int rc;

	if (s->crypto_hdr.addr % KF_BLOCK || s->crypto_hdr.addr < 2 * KF_BLOCK ||
	    s->crypto_hdr.aux != KF_CRYPTO_LEN ||
	    !kl_range_ok(s->crypto_hdr.addr / KF_BLOCK, 1, s->nblocks_committed))
		return kl_err(-EUCLEAN, "%s: key-slot table location out of range", d->filename);
	KL_TRY(kl_io_pread_full(d->file, s->crypto_hdr.addr, blob, KF_CRYPTO_LEN,
				"key-slot table"));
	/* plain CRC: the keys to check anything stronger are inside */
	if (kl_crc32c(0, blob, KF_CRYPTO_LEN) != s->crypto_hdr.crc)
		return kl_err(-EBADMSG, "%s: key-slot table at offset %llu fails its checksum",
			      d->filename, (unsigned long long)s->crypto_hdr.addr);
	rc = kf_crypto_parse(blob, KF_CRYPTO_LEN, slots, n);
	return rc < 0 ? kl_err_prefix(rc, "%s", d->filename) : 0;
}

int kf_crypto_slots_in_use(struct blk_dev *d, unsigned *used)
{
	struct kf_keyslot slots[KF_MAX_SLOTS];
	uint8_t *blob = kl_malloc(KF_CRYPTO_LEN);
	unsigned n;
	int rc;

	if (!blob)
		return -ENOMEM;
	rc = crypto_read(d, blob, slots, &n);
	*used = 0;
	for (unsigned i = 0; rc == 0 && i < n; i++)
		*used += slots[i].state == 1;
	kl_free(blob);
	return rc;
}

int kf_crypto_open(struct blk_dev *d, const uint8_t *pass, size_t plen)
{
	struct kf_state *s = d->priv;
	struct kf_keyslot slots[KF_MAX_SLOTS];
	unsigned n;

	if (!pass || plen == 0)
		return kl_err(-ENOKEY, "%s is encrypted: a key is needed (--key-file FILE or "
			      "--key-env VAR)", d->filename);
	s->crypto = kl_calloc(1, sizeof(*s->crypto));
	if (!s->crypto)
		return -ENOMEM;
	KL_TRY(crypto_read(d, s->crypto->blob, slots, &n));
	for (unsigned i = 0; i < n; i++) {
		if (slots[i].state != 1)
			continue;
		if (slot_unwrap(s, i, &slots[i], pass, plen, s->crypto->master) == 0) {
			s->crypto->slot_used = (int)i;
			return derive_subkeys(s);
		}
	}
	return kl_err(-EKEYREJECTED, "%s: wrong passphrase: no key slot opens with it",
		      d->filename);
}

/* The key-slot table goes to a new block at each change (copy-on-write). */
int kf_crypto_commit(struct blk_dev *d)
{
	struct kf_state *s = d->priv;
	struct kf_ptr old = s->crypto_hdr;
	uint8_t *buf;
	uint64_t addr;
	int rc;

	if (!s->crypto || !s->crypto_dirty)
		return 0;
	buf = kl_aligned_alloc(KF_BLOCK);
	if (!buf)
		return -ENOMEM;
	memset(buf, 0, KF_BLOCK);
	memcpy(buf, s->crypto->blob, KF_CRYPTO_LEN);
	rc = kf_alloc(d, 1, &addr);
	if (rc == 0)
		rc = kl_io_pwrite(d->file, addr, buf, KF_BLOCK);
	kl_free(buf);
	if (rc < 0)
		return rc;
	s->crypto_hdr.addr = addr;
	s->crypto_hdr.crc = kl_crc32c(0, s->crypto->blob, KF_CRYPTO_LEN);
	s->crypto_hdr.aux = KF_CRYPTO_LEN;
	if (old.addr)
		KL_TRY(kf_rc_dec(d, old.addr, 1));
	s->crypto_dirty = false;
	return 0;
}

void kf_crypto_blob_copy(const struct kf_state *s, uint8_t *out)
{
	memcpy(out, s->crypto->blob, KF_CRYPTO_LEN);
}

/* ------------------------------------------------------------------ key operations */

static int find_slot(struct kf_state *s, const uint8_t *pass, size_t plen, int *slot)
{
	struct kf_keyslot slots[KF_MAX_SLOTS];
	uint8_t m[32];
	unsigned n;

	KL_TRY(kf_crypto_parse(s->crypto->blob, KF_CRYPTO_LEN, slots, &n));
	for (unsigned i = 0; i < n; i++) {
		if (slots[i].state == 1 && slot_unwrap(s, i, &slots[i], pass, plen, m) == 0) {
			kl_wipe(m, sizeof(m));
			*slot = (int)i;
			return 0;
		}
	}
	return kl_err(-EKEYREJECTED, "no key slot opens with that passphrase");
}

int kf_key_op(struct blk_dev *d, enum blk_key_op op, const uint8_t *key, size_t klen, int slot,
	      int *out_slot)
{
	struct kf_state *s = d->priv;
	struct kf_keyslot slots[KF_MAX_SLOTS], k;
	unsigned n, active = 0;
	int target = -1;

	if (!s->crypto)
		return kl_err(-EINVAL, "%s is not encrypted", d->filename);
	KL_TRY(kf_crypto_parse(s->crypto->blob, KF_CRYPTO_LEN, slots, &n));
	for (unsigned i = 0; i < n; i++)
		active += slots[i].state == 1;
	switch (op) {
	case BLK_KEY_ADD:
		for (unsigned i = 0; i < n && target < 0; i++)
			if (slots[i].state == 0)
				target = (int)i;
		if (target < 0)
			return kl_err(-ENOSPC, "%s: all %d key slots are in use", d->filename,
				      KF_MAX_SLOTS);
		break;
	case BLK_KEY_CHANGE:
		target = s->crypto->slot_used; /* the slot the current key opened */
		break;
	case BLK_KEY_REMOVE:
		if (slot < 0)
			KL_TRY(find_slot(s, key, klen, &slot));
		if (slot >= (int)n || slots[slot].state != 1)
			return kl_err(-ENOENT, "%s: key slot %d is not in use", d->filename, slot);
		if (active <= 1)
			return kl_err(-EPERM, "%s: refusing to remove the last key slot (the data "
				      "would be unreadable forever)", d->filename);
		memset(&k, 0, sizeof(k));
		slot_put(s->crypto->blob, (unsigned)slot, &k);
		goto commit;
	}
	KL_TRY(kf_commit(d));
	KL_TRY(slot_wrap(s, (unsigned)target, key, klen, &k));
	slot_put(s->crypto->blob, (unsigned)target, &k);
	slot = target;
commit:
	KL_TRY(kl_io_event("kf.key_change"));
	s->crypto_dirty = true;
	if (out_slot)
		*out_slot = slot;
	return kf_commit(d);
}

int kf_key_list(struct blk_dev *d, struct blk_key_slot *out, size_t max, size_t *n)
{
	struct kf_state *s = d->priv;
	struct kf_keyslot slots[KF_MAX_SLOTS];
	unsigned ns;

	*n = 0;
	if (!s->crypto)
		return 0;
	KL_TRY(kf_crypto_parse(s->crypto->blob, KF_CRYPTO_LEN, slots, &ns));
	for (unsigned i = 0; i < ns && *n < max; i++) {
		if (slots[i].state != 1)
			continue;
		out[*n].slot = (int)i;
		out[*n].kdf_n = slots[i].n;
		out[*n].kdf_r = slots[i].r;
		out[*n].kdf_p = slots[i].p;
		out[*n].in_use = (int)i == s->crypto->slot_used;
		(*n)++;
	}
	return 0;
}
