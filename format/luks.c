/*
 * format/luks.c - LUKS version 1: the header qemu writes into encrypted
 * qcow2 images (qcow2.rst "Full disk encryption header pointer"; the LUKS1
 * on-disk format specification, version 1.2.3), and LUKS1 volumes, which
 * keel also formats and writes (luks_format, luks_write).
 *
 * A passphrase opens a key slot: PBKDF2 over the slot's salt gives a key
 * that decrypts the slot's key material, whose anti-forensic stripes merge
 * (AF merge: XOR and diffuse with the header's hash) into the master key;
 * PBKDF2 of that must equal the header's master key digest. The payload is
 * then decrypted in 512-byte sectors, the sector number giving each IV.
 *
 * OpenSSL does PBKDF2, the hashes, the ciphers and the random bytes. What
 * is LUKS's own, the header layout and the AF split and merge, is here. Supported: AES in XTS, CBC and
 * ECB modes with plain, plain64 and essiv:HASH IVs, which is every AES
 * choice qemu offers; other ciphers (serpent, twofish, cast5) are refused
 * by name. Everything read from the header is bounded before use: lengths,
 * stripe counts and iteration counts (a hostile image must not make us
 * allocate gigabytes or run PBKDF2 for hours).
 */
#include "format/luks.h"

#include "lib/kl.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define LUKS_MAGIC "LUKS\xba\xbe"
#define LUKS_SLOTS 8
#define LUKS_SLOT_ACTIVE 0x00ac71f3u
#define LUKS_SLOT_INACTIVE 0x0000deadu
#define LUKS_DIGEST_LEN 20
#define LUKS_SALT_LEN 32
/* qemu and cryptsetup use 4000 stripes */
#define LUKS_MAX_STRIPES 65536u
/*
 * PBKDF2 rounds we are willing to run per slot: qemu's default (2 s of
 * PBKDF2-SHA256) is about 8 million here; this is 8 times that. Fuzzing
 * gets a small cap so a hostile header cannot time the target out.
 */
#ifdef KEEL_FUZZ
#define LUKS_MAX_ITER 65536u
#else
#define LUKS_MAX_ITER (1u << 26)
#endif

enum luks_iv { IV_NONE, IV_PLAIN, IV_PLAIN64, IV_ESSIV };

struct luks_cipher {
	EVP_CIPHER_CTX *ctx;
	EVP_CIPHER_CTX *essiv; /* ECB, keyed with hash(key), for IV_ESSIV */
};

struct luks {
	char cipher[33], mode[33], hash[33];
	const EVP_CIPHER *evp;
	const EVP_CIPHER *essiv_evp;
	const EVP_MD *essiv_md;
	enum luks_iv iv;
	uint32_t key_bytes;
	int slot;
	struct luks_cipher payload;	/* decrypts */
	struct luks_cipher payload_enc; /* encrypts (luks_write) */
	char desc[128];
};

static void cipher_release(struct luks_cipher *c)
{
	EVP_CIPHER_CTX_free(c->ctx);
	EVP_CIPHER_CTX_free(c->essiv);
	memset(c, 0, sizeof(*c));
}

/* A cipher context for key: decrypting, or encrypting when enc. */
static int cipher_init(const struct luks *l, const uint8_t *key, struct luks_cipher *c, bool enc)
{
	uint8_t salt[EVP_MAX_MD_SIZE];
	unsigned slen = 0;
	int ok;

	memset(c, 0, sizeof(*c));
	c->ctx = EVP_CIPHER_CTX_new();
	ok = c->ctx && EVP_CipherInit_ex(c->ctx, l->evp, NULL, key, NULL, enc) == 1 &&
	     EVP_CIPHER_CTX_set_padding(c->ctx, 0) == 1;
	if (ok && l->iv == IV_ESSIV) {
		/* ESSIV: the IV is the sector number encrypted under hash(key) */
		c->essiv = EVP_CIPHER_CTX_new();
		ok = c->essiv && EVP_Digest(key, l->key_bytes, salt, &slen, l->essiv_md, NULL) == 1 &&
		     EVP_EncryptInit_ex(c->essiv, l->essiv_evp, NULL, salt, NULL) == 1 &&
		     EVP_CIPHER_CTX_set_padding(c->essiv, 0) == 1;
		kl_wipe(salt, sizeof(salt));
	}
	if (!ok) {
		cipher_release(c);
		return kl_err(-EIO, "LUKS: cannot set up %s-%s", l->cipher, l->mode);
	}
	return 0;
}

static int cipher_run(const struct luks *l, struct luks_cipher *c, uint64_t sector, uint8_t *buf,
		      size_t len)
{
	uint8_t iv[16] = { 0 }, plain[16];
	int n, ok = 1;

	for (size_t done = 0; ok && done < len; done += LUKS_SECTOR, sector++) {
		uint8_t *p = buf + done;

		memset(iv, 0, sizeof(iv));
		switch (l->iv) {
		case IV_NONE:
			break;
		case IV_PLAIN:
			put_le32(iv, (uint32_t)sector);
			break;
		case IV_PLAIN64:
			put_le64(iv, sector);
			break;
		case IV_ESSIV:
			memset(plain, 0, sizeof(plain));
			put_le64(plain, sector);
			ok = EVP_EncryptUpdate(c->essiv, iv, &n, plain, 16) == 1 && n == 16;
			break;
		}
		/* -1: the direction cipher_init chose */
		ok = ok && EVP_CipherInit_ex(c->ctx, NULL, NULL, NULL, l->iv == IV_NONE ? NULL : iv,
					     -1) == 1 &&
		     EVP_CipherUpdate(c->ctx, p, &n, p, (int)LUKS_SECTOR) == 1 && n == (int)LUKS_SECTOR;
	}
	return ok ? 0 : kl_err(-EIO, "LUKS: %s-%s failed at sector %llu", l->cipher, l->mode,
			       (unsigned long long)sector);
}

/* A NUL-terminated string field of 32 bytes. */
static int str_field(const uint8_t *p, char out[33], const char *who, const char *what)
{
	if (!memchr(p, 0, 32))
		return kl_err(-EUCLEAN, "%s: LUKS header: %s is not NUL-terminated", who, what);
	memcpy(out, p, 32);
	out[32] = 0;
	return 0;
}

/* Cipher, mode and IV generator from the header's names and key size. */
static int pick_cipher(struct luks *l, const char *who)
{
	const char *ivs = strchr(l->mode, '-');
	size_t mlen = ivs ? (size_t)(ivs - l->mode) : strlen(l->mode);
	uint32_t kb = l->key_bytes;
	bool xts = mlen == 3 && !strncmp(l->mode, "xts", 3);
	bool cbc = mlen == 3 && !strncmp(l->mode, "cbc", 3);
	bool ecb = mlen == 3 && !strncmp(l->mode, "ecb", 3);

	if (strcmp(l->cipher, "aes") != 0)
		return kl_err(-ENOTSUP, "%s: LUKS cipher '%s' is not supported (keel decrypts aes)",
			      who, l->cipher);
	if (xts)
		l->evp = kb == 32 ? EVP_aes_128_xts() : kb == 64 ? EVP_aes_256_xts() : NULL;
	else if (cbc)
		l->evp = kb == 16 ? EVP_aes_128_cbc() : kb == 24 ? EVP_aes_192_cbc() :
			 kb == 32 ? EVP_aes_256_cbc() : NULL;
	else if (ecb)
		l->evp = kb == 16 ? EVP_aes_128_ecb() : kb == 24 ? EVP_aes_192_ecb() :
			 kb == 32 ? EVP_aes_256_ecb() : NULL;
	else
		return kl_err(-ENOTSUP, "%s: LUKS cipher mode '%s' is not supported (xts, cbc and "
			      "ecb are)", who, l->mode);
	if (!l->evp)
		return kl_err(-EUCLEAN, "%s: LUKS header: %u key bytes do not fit aes-%s", who, kb,
			      l->mode);
	if (ecb) {
		/* ECB takes no IV; qemu still names its default ("ecb-plain64") */
		l->iv = IV_NONE;
		return 0;
	}
	if (!ivs)
		return kl_err(-EUCLEAN, "%s: LUKS header: cipher mode '%s' names no IV", who, l->mode);
	ivs++;
	if (!strcmp(ivs, "plain")) {
		l->iv = IV_PLAIN;
	} else if (!strcmp(ivs, "plain64")) {
		l->iv = IV_PLAIN64;
	} else if (!strncmp(ivs, "essiv:", 6)) {
		int mdlen;

		l->iv = IV_ESSIV;
		l->essiv_md = EVP_get_digestbyname(ivs + 6);
		mdlen = l->essiv_md ? EVP_MD_get_size(l->essiv_md) : 0;
		l->essiv_evp = mdlen == 16 ? EVP_aes_128_ecb() : mdlen == 24 ? EVP_aes_192_ecb() :
			       mdlen == 32 ? EVP_aes_256_ecb() : NULL;
		if (!l->essiv_evp)
			return kl_err(-ENOTSUP, "%s: LUKS ESSIV hash '%s' is unknown or gives no AES "
				      "key size", who, ivs + 6);
	} else {
		return kl_err(-ENOTSUP, "%s: LUKS IV generator '%s' is not supported (plain, "
			      "plain64 and essiv are)", who, ivs);
	}
	return 0;
}

/*
 * The AF diffusion (LUKS1 spec section 2.4): each digest-sized block of
 * d[0, kb) becomes hash(be32(block index) || block).
 */
static bool diffuse(EVP_MD_CTX *mc, const EVP_MD *md, uint8_t *d, uint32_t kb)
{
	size_t ds = (size_t)EVP_MD_get_size(md);
	uint8_t h[EVP_MAX_MD_SIZE], be[4];
	bool ok = true;

	for (uint32_t b = 0; ok && (size_t)b * ds < kb; b++) {
		size_t off = (size_t)b * ds, n = KL_MIN(ds, kb - off);
		unsigned hl;

		put_be32(be, b);
		ok = EVP_DigestInit_ex(mc, md, NULL) == 1 && EVP_DigestUpdate(mc, be, 4) == 1 &&
		     EVP_DigestUpdate(mc, d + off, n) == 1 && EVP_DigestFinal_ex(mc, h, &hl) == 1;
		memcpy(d + off, h, n);
	}
	kl_wipe(h, sizeof(h));
	return ok;
}

/*
 * AF merge: XOR each stripe in and diffuse, all but the last, which XORed
 * with the result is the key. With split, stripes 0..n-2 are random and
 * the last is made so; merge undoes it.
 */
static int af_run(const EVP_MD *md, uint8_t *stripes_buf, uint32_t kb, uint32_t stripes,
		  uint8_t *key, bool split)
{
	uint8_t d[64];
	EVP_MD_CTX *mc = EVP_MD_CTX_new();
	uint8_t *last = stripes_buf + (size_t)(stripes - 1) * kb;
	bool ok = mc != NULL;

	memset(d, 0, sizeof(d));
	if (ok && split)
		ok = RAND_bytes(stripes_buf, (int)((size_t)(stripes - 1) * kb)) == 1;
	for (uint32_t s = 0; ok && s + 1 < stripes; s++) {
		for (uint32_t i = 0; i < kb; i++)
			d[i] ^= stripes_buf[(size_t)s * kb + i];
		ok = diffuse(mc, md, d, kb);
	}
	for (uint32_t i = 0; i < kb; i++) {
		if (split)
			last[i] = d[i] ^ key[i];
		else
			key[i] = d[i] ^ last[i];
	}
	EVP_MD_CTX_free(mc);
	kl_wipe(d, sizeof(d));
	return ok ? 0 : kl_err(-EIO, "LUKS: hashing or random bytes failed in the AF %s",
			       split ? "split" : "merge");
}

/* One active slot: 1 and the master key when the passphrase opens it, 0 when not. */
static int try_slot(struct luks *l, const EVP_MD *md, const uint8_t *area, const uint8_t *slot,
		    const uint8_t *hdr, const uint8_t *pass, size_t pass_len, uint8_t *mk)
{
	uint32_t iter = get_be32(slot + 4), ko = get_be32(slot + 40), stripes = get_be32(slot + 44);
	size_t mlen = KL_ALIGN_UP((size_t)l->key_bytes * stripes, LUKS_SECTOR);
	uint8_t key[64], digest[LUKS_DIGEST_LEN];
	struct luks_cipher c;
	uint8_t *mat = kl_malloc(mlen);
	int rc;

	if (!mat)
		return -ENOMEM;
	memcpy(mat, area + (size_t)ko * LUKS_SECTOR, mlen);
	/* tests count these: one unlock per process (unlocked_before) */
	kl_debug("LUKS: PBKDF2 on a key slot, %u iterations", iter);
	rc = PKCS5_PBKDF2_HMAC((const char *)pass, (int)pass_len, slot + 8, LUKS_SALT_LEN, (int)iter,
			       md, (int)l->key_bytes, key) == 1 ? 0 : kl_err(-EIO, "LUKS: PBKDF2 failed");
	if (rc == 0 && (rc = cipher_init(l, key, &c, false)) == 0) {
		rc = cipher_run(l, &c, 0, mat, mlen);
		cipher_release(&c);
	}
	if (rc == 0)
		rc = af_run(md, mat, l->key_bytes, stripes, mk, false);
	if (rc == 0)
		rc = PKCS5_PBKDF2_HMAC((const char *)mk, (int)l->key_bytes, hdr + 132, LUKS_SALT_LEN,
				       (int)get_be32(hdr + 164), md, LUKS_DIGEST_LEN, digest) == 1
			     ? 0 : kl_err(-EIO, "LUKS: PBKDF2 failed");
	if (rc == 0)
		rc = memcmp(digest, hdr + 112, LUKS_DIGEST_LEN) == 0;
	kl_wipe(key, sizeof(key));
	kl_wipe(mat, mlen);
	kl_free(mat);
	return rc;
}

/* A LUKS header of the one version keel reads. */
static int check_magic(const uint8_t *h, size_t len, const char *who)
{
	if (len < LUKS_HEADER_LEN || memcmp(h, LUKS_MAGIC, 6) != 0)
		return kl_err(-EUCLEAN, "%s: no LUKS header (magic) in the encryption header area",
			      who);
	if (get_be16(h + 6) != 1)
		return kl_err(-ENOTSUP, "%s: LUKS version %u; keel reads version 1", who,
			      get_be16(h + 6));
	return 0;
}

int luks_peek(const uint8_t *hdr, size_t len, const char *who, char *out, size_t cap)
{
	char cipher[33], mode[33], hash[33];
	int active = 0;

	KL_TRY(check_magic(hdr, len, who));
	KL_TRY(str_field(hdr + 8, cipher, who, "cipher name"));
	KL_TRY(str_field(hdr + 40, mode, who, "cipher mode"));
	KL_TRY(str_field(hdr + 72, hash, who, "hash"));
	for (int i = 0; i < LUKS_SLOTS; i++)
		active += get_be32(hdr + 208 + 48 * i) == LUKS_SLOT_ACTIVE;
	snprintf(out, cap, "%s %s, %s, %d of %d key slots active", cipher, mode, hash, active,
		 LUKS_SLOTS);
	return 0;
}

/*
 * Unlocking costs what the header asks for: qemu's default is 2 seconds of
 * PBKDF2 per try (8 million rounds here), and keel convert opens its source
 * once per worker thread, and measure once more. So the master key of the
 * last header unlocked is kept for the process, with SHA-256 digests of the
 * header area and of the passphrase that opened it: the same area and
 * passphrase give the same key without PBKDF2. The key is in every open
 * image's cipher context anyway; nothing is written anywhere.
 */
static struct {
	pthread_mutex_t lock;
	bool valid;
	uint8_t area[32], pass[32]; /* digests of what key came from */
	uint8_t key[64];
	int slot;
} unlock_memo = { .lock = PTHREAD_MUTEX_INITIALIZER };

/*
 * The digests of area and pass into da and dp; when they were unlocked
 * before, also the key into mk and its slot into *slot (else *slot stays).
 */
static int unlocked_before(const uint8_t *area, size_t len, const uint8_t *pass, size_t pass_len,
			   uint8_t da[32], uint8_t dp[32], uint8_t *mk, uint32_t kb, int *slot)
{
	if (EVP_Digest(area, len, da, NULL, EVP_sha256(), NULL) != 1 ||
	    EVP_Digest(pass, pass_len, dp, NULL, EVP_sha256(), NULL) != 1)
		return kl_err(-EIO, "LUKS: SHA-256 failed");
	pthread_mutex_lock(&unlock_memo.lock);
	if (unlock_memo.valid && !memcmp(unlock_memo.area, da, 32) &&
	    !memcmp(unlock_memo.pass, dp, 32)) {
		memcpy(mk, unlock_memo.key, kb);
		*slot = unlock_memo.slot;
	}
	pthread_mutex_unlock(&unlock_memo.lock);
	return 0;
}

/* Whether area and pass were unlocked before (by an earlier open of this process). */
static bool unlocked_with(const uint8_t *area, size_t len, const uint8_t *pass, size_t pass_len)
{
	uint8_t da[32], dp[32], mk[64];
	int slot = -1;

	if (unlocked_before(area, len, pass, pass_len, da, dp, mk, sizeof(mk), &slot) < 0)
		kl_err_clear(); /* then PBKDF2 decides */
	kl_wipe(mk, sizeof(mk));
	return slot >= 0;
}

static void remember_unlock(const uint8_t da[32], const uint8_t dp[32], const uint8_t *mk,
			    uint32_t kb, int slot)
{
	pthread_mutex_lock(&unlock_memo.lock);
	memcpy(unlock_memo.area, da, 32);
	memcpy(unlock_memo.pass, dp, 32);
	memcpy(unlock_memo.key, mk, kb);
	unlock_memo.slot = slot;
	unlock_memo.valid = true;
	pthread_mutex_unlock(&unlock_memo.lock);
}

int luks_open(const uint8_t *area, size_t len, const uint8_t *pass, size_t pass_len,
	      const char *who, struct luks **out)
{
	const uint8_t *h = area;
	const EVP_MD *md;
	uint8_t mk[64] = { 0 }, da[32] = { 0 }, dp[32] = { 0 };
	struct luks *l;
	uint32_t mk_iter;
	int rc, nactive = 0;

	*out = NULL;
	KL_TRY(check_magic(h, len, who));
	l = kl_calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->slot = -1;
	rc = str_field(h + 8, l->cipher, who, "cipher name");
	if (rc == 0)
		rc = str_field(h + 40, l->mode, who, "cipher mode");
	if (rc == 0)
		rc = str_field(h + 72, l->hash, who, "hash");
	if (rc < 0)
		goto err;
	l->key_bytes = get_be32(h + 108);
	mk_iter = get_be32(h + 164);
	if (l->key_bytes == 0 || l->key_bytes > 64) {
		rc = kl_err(-EUCLEAN, "%s: LUKS header: %u key bytes (1..64 allowed)", who,
			    l->key_bytes);
		goto err;
	}
	if (mk_iter == 0 || mk_iter > LUKS_MAX_ITER) {
		rc = kl_err(-EUCLEAN, "%s: LUKS header: master key digest iterations %u (1..%u "
			    "allowed)", who, mk_iter, LUKS_MAX_ITER);
		goto err;
	}
	md = EVP_get_digestbyname(l->hash);
	if (!md || EVP_MD_get_size(md) <= 0) {
		rc = kl_err(-ENOTSUP, "%s: LUKS hash '%s' is not known", who, l->hash);
		goto err;
	}
	rc = pick_cipher(l, who);
	if (rc < 0)
		goto err;
	/* every slot is checked before any is tried: damage is reported, not skipped */
	for (int i = 0; i < LUKS_SLOTS; i++) {
		const uint8_t *s = h + 208 + 48 * i;
		uint32_t st = get_be32(s), iter = get_be32(s + 4);
		uint32_t ko = get_be32(s + 40), stripes = get_be32(s + 44);

		if (st == LUKS_SLOT_INACTIVE)
			continue;
		if (st != LUKS_SLOT_ACTIVE) {
			rc = kl_err(-EUCLEAN, "%s: LUKS key slot %d: state %#x is neither active "
				    "nor inactive", who, i, st);
			goto err;
		}
		if (iter == 0 || iter > LUKS_MAX_ITER || stripes == 0 ||
		    stripes > LUKS_MAX_STRIPES || ko < LUKS_HEADER_LEN / LUKS_SECTOR + 1 ||
		    (uint64_t)ko * LUKS_SECTOR +
			    KL_ALIGN_UP((uint64_t)l->key_bytes * stripes, LUKS_SECTOR) > len) {
			rc = kl_err(-EUCLEAN, "%s: LUKS key slot %d: iterations %u, %u stripes at "
				    "sector %u do not fit the %zu-byte header area", who, i, iter,
				    stripes, ko, len);
			goto err;
		}
		nactive++;
	}
	if (!nactive) {
		rc = kl_err(-EKEYREJECTED, "%s: LUKS header has no active key slot", who);
		goto err;
	}
	if (!pass || !pass_len) {
		rc = kl_err(-ENOKEY, "%s is encrypted (LUKS): a passphrase is needed (--key-file "
			    "FILE or --key-env VAR)", who);
		goto err;
	}
	rc = unlocked_before(area, len, pass, pass_len, da, dp, mk, l->key_bytes, &l->slot);
	if (rc < 0)
		goto err;
	for (int i = 0; i < LUKS_SLOTS && l->slot < 0; i++) {
		const uint8_t *s = h + 208 + 48 * i;

		if (get_be32(s) != LUKS_SLOT_ACTIVE)
			continue;
		rc = try_slot(l, md, area, s, h, pass, pass_len, mk);
		if (rc < 0)
			goto err;
		if (rc == 1) {
			l->slot = i;
			remember_unlock(da, dp, mk, l->key_bytes, i);
		}
	}
	if (l->slot < 0) {
		rc = kl_err(-EKEYREJECTED, "%s: wrong passphrase: no LUKS key slot opens with it",
			    who);
		goto err;
	}
	rc = cipher_init(l, mk, &l->payload, false);
	if (rc == 0)
		rc = cipher_init(l, mk, &l->payload_enc, true);
	kl_wipe(mk, sizeof(mk));
	kl_wipe(dp, sizeof(dp));
	if (rc < 0)
		goto err;
	snprintf(l->desc, sizeof(l->desc), "%s-%u %s, %s, key slot %d", l->cipher,
		 (l->evp == EVP_aes_128_xts() || l->evp == EVP_aes_256_xts() ? l->key_bytes / 2
									      : l->key_bytes) * 8,
		 l->mode, l->hash, l->slot);
	*out = l;
	return 0;
err:
	kl_wipe(mk, sizeof(mk));
	kl_wipe(dp, sizeof(dp));
	luks_close(l);
	return rc;
}

int luks_decrypt(struct luks *l, uint64_t sector, uint8_t *buf, size_t len)
{
	if (len % LUKS_SECTOR)
		return kl_err(-EINVAL, "LUKS: %zu bytes are not whole sectors", len);
	return cipher_run(l, &l->payload, sector, buf, len);
}

int luks_open_file(struct kl_file *f, uint64_t off, size_t len, const uint8_t *pass,
		   size_t pass_len, size_t pass_nl, const char *who, struct luks **out)
{
	size_t first, second;
	uint8_t *area;
	int rc;

	*out = NULL;
	area = kl_malloc(len);
	if (!area)
		return -ENOMEM;
	rc = kl_io_pread_full(f, off, area, len, "LUKS header and key material");
	/*
	 * qemu's secret file= and cryptsetup --key-file take the file
	 * verbatim: `echo pass > key` made a passphrase ending in a newline,
	 * which reading the key file cut off. Without it first, unless an
	 * earlier open of this process found that the newline belongs.
	 */
	first = pass_len;
	second = pass_len + pass_nl;
	if (rc == 0 && pass_nl && unlocked_with(area, len, pass, second)) {
		first = second;
		second = pass_len;
	}
	if (rc == 0)
		rc = luks_open(area, len, pass, first, who, out);
	if (rc == -EKEYREJECTED && pass_nl) {
		rc = luks_open(area, len, pass, second, who, out);
		if (rc == -EKEYREJECTED)
			kl_err_prefix(rc, "the key file, with and without its final newline");
	}
	kl_wipe(area, len);
	kl_free(area);
	return rc;
}

int luks_read(struct luks *l, struct kl_file *f, uint64_t pos, uint64_t base, void *buf, size_t n)
{
	uint8_t *b = buf;
	ssize_t r;

	if (pos < base || base % LUKS_SECTOR)
		return kl_err(-EINVAL, "LUKS: read at %llu before the payload at %llu",
			      (unsigned long long)pos, (unsigned long long)base);
	while (n > 0) {
		size_t in = (size_t)((pos - base) % LUKS_SECTOR), take;
		uint64_t sector = (pos - base) / LUKS_SECTOR;

		if (in || n < LUKS_SECTOR) {
			/* a partial sector: decrypt it whole, copy the part asked for */
			uint8_t t[LUKS_SECTOR];

			take = KL_MIN(LUKS_SECTOR - in, n);
			r = kl_io_pread(f, pos - in, t, LUKS_SECTOR);
			if (r < 0)
				return (int)r;
			KL_TRY(luks_decrypt(l, sector, t, LUKS_SECTOR));
			memcpy(b, t + in, take);
			kl_wipe(t, sizeof(t));
		} else {
			take = n - n % LUKS_SECTOR;
			r = kl_io_pread(f, pos, b, take);
			if (r < 0)
				return (int)r;
			KL_TRY(luks_decrypt(l, sector, b, take));
		}
		pos += take;
		b += take;
		n -= take;
	}
	return 0;
}

const char *luks_describe(const struct luks *l)
{
	return l->desc;
}

void luks_close(struct luks *l)
{
	if (!l)
		return;
	cipher_release(&l->payload);
	cipher_release(&l->payload_enc);
	kl_free(l);
}

/* ------------------------------------------------------------------ writing */

int luks_write(struct luks *l, struct kl_file *f, uint64_t pos, uint64_t base, const void *buf,
	       size_t n)
{
	uint8_t t[64 << 10];
	const uint8_t *b = buf;
	int rc = 0;

	if (pos < base || base % LUKS_SECTOR || (pos - base) % LUKS_SECTOR || n % LUKS_SECTOR)
		return kl_err(-EINVAL, "LUKS: write of %zu bytes at %llu is not whole sectors of "
			      "the payload at %llu", n, (unsigned long long)pos,
			      (unsigned long long)base);
	while (rc == 0 && n > 0) {
		size_t take = KL_MIN(n, sizeof(t));

		memcpy(t, b, take);
		rc = cipher_run(l, &l->payload_enc, (pos - base) / LUKS_SECTOR, t, take);
		if (rc == 0)
			rc = kl_io_pwrite(f, pos, t, take);
		pos += take;
		b += take;
		n -= take;
	}
	kl_wipe(t, sizeof(t));
	return rc;
}

/* Key material per slot: key_bytes * stripes, in whole 4 KiB (as qemu aligns it). */
#define LUKS_MATERIAL_ALIGN 8u /* sectors */
/*
 * The payload follows the key material, 4 KiB aligned, as qemu-img puts it
 * (4040 sectors in for aes-256-xts; cryptsetup rounds up to 1 MiB).
 */
#define LUKS_PAYLOAD_ALIGN 8u /* sectors */
#define LUKS_STRIPES 4000u

/* PBKDF2-SHA256 rounds that take about ms milliseconds here (at least 1000). */
static uint32_t pbkdf2_rounds(const EVP_MD *md, uint32_t kb, uint32_t ms)
{
	const uint32_t probe = 20000;
	uint8_t out[64], salt[LUKS_SALT_LEN] = { 0 };
	struct timespec a, b;
	double took, want;

	clock_gettime(CLOCK_MONOTONIC, &a);
	(void)PKCS5_PBKDF2_HMAC("probe", 5, salt, sizeof(salt), (int)probe, md, (int)kb, out);
	clock_gettime(CLOCK_MONOTONIC, &b);
	took = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
	want = took > 0 ? (double)probe * ms / took : (double)LUKS_MAX_ITER;
	if (want > LUKS_MAX_ITER / 2)
		want = LUKS_MAX_ITER / 2; /* what we read back must stay under the cap */
	return want < 1000 ? 1000 : (uint32_t)want;
}

/* Sectors of key material per slot, and of the header area, for kb key bytes. */
static uint32_t material_sectors(uint32_t kb)
{
	return KL_ALIGN_UP(KL_DIV_ROUND_UP(kb * LUKS_STRIPES, LUKS_SECTOR), LUKS_MATERIAL_ALIGN);
}

static uint32_t payload_sectors(uint32_t kb)
{
	return KL_ALIGN_UP(LUKS_MATERIAL_ALIGN + LUKS_SLOTS * material_sectors(kb),
			   LUKS_PAYLOAD_ALIGN);
}

uint64_t luks_format_payload(void)
{
	return (uint64_t)payload_sectors(64) * LUKS_SECTOR;
}

int luks_format(uint32_t iter_ms, const uint8_t *pass, size_t pass_len, uint8_t **area_out,
		size_t *area_len)
{
	const EVP_MD *md = EVP_sha256();
	struct luks l = { .cipher = "aes", .mode = "xts-plain64", .hash = "sha256",
			  .evp = EVP_aes_256_xts(), .iv = IV_PLAIN64, .key_bytes = 64 };
	uint32_t mat_sectors = material_sectors(l.key_bytes), pay = payload_sectors(l.key_bytes);
	size_t len = (size_t)pay * LUKS_SECTOR, mlen = (size_t)l.key_bytes * LUKS_STRIPES;
	uint8_t mk[64], key[64], da[32], dp[32], uuid[16];
	uint32_t slot_iter, mk_iter;
	struct luks_cipher c;
	char us[37];
	uint8_t *h, *s0;
	int rc;

	*area_out = NULL;
	if (!pass || !pass_len)
		return kl_err(-ENOKEY, "a LUKS volume needs a passphrase (--key-file FILE or "
			      "--key-env VAR)");
	h = kl_calloc(1, len);
	if (!h)
		return -ENOMEM;
	slot_iter = pbkdf2_rounds(md, l.key_bytes, iter_ms);
	mk_iter = KL_MAX(slot_iter / 8, 1000u); /* cryptsetup's share for the digest */
	memcpy(h, LUKS_MAGIC, 6);
	put_be16(h + 6, 1);
	strcpy((char *)h + 8, l.cipher);
	strcpy((char *)h + 40, l.mode);
	strcpy((char *)h + 72, l.hash);
	put_be32(h + 104, pay);
	put_be32(h + 108, l.key_bytes);
	put_be32(h + 164, mk_iter);
	kl_uuid_generate(uuid);
	kl_uuid_format(uuid, us);
	memcpy(h + 168, us, 36);
	for (uint32_t i = 0; i < LUKS_SLOTS; i++) {
		uint8_t *s = h + 208 + 48 * i;

		put_be32(s, LUKS_SLOT_INACTIVE);
		put_be32(s + 40, LUKS_MATERIAL_ALIGN + i * mat_sectors);
		put_be32(s + 44, LUKS_STRIPES);
	}
	s0 = h + 208;
	put_be32(s0, LUKS_SLOT_ACTIVE);
	put_be32(s0 + 4, slot_iter);
	/* the master key, the salts; then the digest and slot 0's material */
	rc = RAND_bytes(mk, (int)l.key_bytes) == 1 && RAND_bytes(h + 132, LUKS_SALT_LEN) == 1 &&
	     RAND_bytes(s0 + 8, LUKS_SALT_LEN) == 1 ? 0 : kl_err(-EIO, "LUKS: no random bytes");
	if (rc == 0)
		rc = PKCS5_PBKDF2_HMAC((const char *)mk, (int)l.key_bytes, h + 132, LUKS_SALT_LEN,
				       (int)mk_iter, md, LUKS_DIGEST_LEN, h + 112) == 1
			     ? 0 : kl_err(-EIO, "LUKS: PBKDF2 failed");
	if (rc == 0)
		rc = af_run(md, h + (size_t)LUKS_MATERIAL_ALIGN * LUKS_SECTOR, l.key_bytes,
			    LUKS_STRIPES, mk, true);
	if (rc == 0)
		rc = PKCS5_PBKDF2_HMAC((const char *)pass, (int)pass_len, s0 + 8, LUKS_SALT_LEN,
				       (int)slot_iter, md, (int)l.key_bytes, key) == 1
			     ? 0 : kl_err(-EIO, "LUKS: PBKDF2 failed");
	if (rc == 0 && (rc = cipher_init(&l, key, &c, true)) == 0) {
		rc = cipher_run(&l, &c, 0, h + (size_t)LUKS_MATERIAL_ALIGN * LUKS_SECTOR,
				KL_ALIGN_UP(mlen, LUKS_SECTOR));
		cipher_release(&c);
	}
	/* the volume opens right after without running PBKDF2 again */
	if (rc == 0 && EVP_Digest(h, len, da, NULL, EVP_sha256(), NULL) == 1 &&
	    EVP_Digest(pass, pass_len, dp, NULL, EVP_sha256(), NULL) == 1)
		remember_unlock(da, dp, mk, l.key_bytes, 0);
	kl_wipe(mk, sizeof(mk));
	kl_wipe(key, sizeof(key));
	if (rc < 0) {
		kl_free(h);
		return rc;
	}
	*area_out = h;
	*area_len = len;
	return 0;
}
