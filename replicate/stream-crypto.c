/*
 * replicate/stream-crypto.c - the cryptography of streams (STREAM-FORMAT.md
 * §2.2, §3.2, §6, §7): key derivation, AES-256-GCM record protection, the
 * chain digest of the trailer, token MACs and the keyed content hash of the
 * live dedup. Everything here is pure and thread-safe.
 */
#include "replicate/repl_int.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <string.h>

int repl_kdf_check(uint32_t kdf, uint64_t n, uint32_t r, uint32_t p)
{
	uint64_t mem;

	if (kdf != REPL_KDF_SCRYPT)
		return kl_err(-ENOTSUP, "stream: key derivation %u unknown (1 = scrypt)", kdf);
	if (!KL_IS_POW2(n) || n < 2 || n > REPL_SCRYPT_MAX_N || r < 1 || r > REPL_SCRYPT_MAX_R ||
	    p < 1 || p > REPL_SCRYPT_MAX_P)
		return kl_err(-EUCLEAN, "stream: scrypt parameters N=%llu r=%u p=%u outside N "
			      "2..2^20 (a power of two), r 1..32, p 1..16",
			      (unsigned long long)n, r, p);
	mem = 128ULL * r * n + 128ULL * r * p;
	if (mem > (1ULL << 30))
		return kl_err(-EUCLEAN, "stream: scrypt parameters need %llu bytes (limit 1 GiB)",
			      (unsigned long long)mem);
#ifdef KEEL_FUZZ
	if (n > 1024)
		return kl_err(-EUCLEAN, "stream: scrypt N above 1024 in fuzzing builds");
#endif
	return 0;
}

int repl_keys_derive(struct repl_keys *k, const struct repl_hdr *h, const uint8_t *pass,
		     size_t plen)
{
	uint8_t ikm[32] = { 0 };
	int rc = 0;

	memset(k, 0, sizeof(*k));
	if (h->flags & REPL_HF_KEYED) {
		if (!pass || !plen)
			return kl_err(-ENOKEY, "the stream is encrypted: give its passphrase "
				      "(--key-file or --key-env)");
		KL_TRY(repl_kdf_check(h->kdf, h->kdf_n, h->kdf_r, h->kdf_p));
		KL_TRY(kl_scrypt(pass, plen, h->kdf_salt, 32, h->kdf_n, h->kdf_r, h->kdf_p, ikm, 32));
		k->keyed = true;
	}
	/* keyless streams use the all-zero IKM: public keys, integrity only (§2.2) */
	rc = kl_hkdf_sha256(ikm, 32, h->stream_id, 16, "keel-stream-v1 records", k->rec, 32);
	if (rc == 0)
		rc = kl_hkdf_sha256(ikm, 32, h->stream_id, 16, "keel-stream-v1 token", k->tok, 32);
	OPENSSL_cleanse(ikm, sizeof(ikm));
	if (rc < 0)
		repl_keys_wipe(k);
	return rc;
}

void repl_keys_wipe(struct repl_keys *k)
{
	OPENSSL_cleanse(k, sizeof(*k));
}

void repl_rec_ad(const uint8_t stream_id[16], const uint8_t hdr16[16], uint8_t ad[REPL_AD_LEN])
{
	memcpy(ad, "KEELSTR1", 8);
	memcpy(ad + 8, stream_id, 16);
	memcpy(ad + 24, hdr16, 16);
}

static int gcm_run(bool seal, const uint8_t key[32], const uint8_t nonce[12], const uint8_t *ad,
		   bool encrypt, uint8_t *buf, size_t len, uint8_t tag[16])
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int n = 0, ok;

	if (!ctx)
		return kl_err(-ENOMEM, "stream: out of memory for a cipher context");
	ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, seal) == 1 &&
	     EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, REPL_NONCE, NULL) == 1 &&
	     EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, seal) == 1 &&
	     EVP_CipherUpdate(ctx, NULL, &n, ad, REPL_AD_LEN) == 1;
	if (ok && len) {
		if (encrypt)
			ok = EVP_CipherUpdate(ctx, buf, &n, buf, (int)len) == 1;
		else
			ok = EVP_CipherUpdate(ctx, NULL, &n, buf, (int)len) == 1;
	}
	if (ok && !seal)
		ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, REPL_TAG, tag) == 1;
	if (ok)
		ok = EVP_CipherFinal_ex(ctx, buf + (encrypt ? len : 0), &n) == 1;
	if (ok && seal)
		ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, REPL_TAG, tag) == 1;
	EVP_CIPHER_CTX_free(ctx);
	return ok ? 0 : -EBADMSG;
}

int repl_rec_protect(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *ad,
		     bool encrypt, uint8_t *buf, size_t payload_len, uint8_t tag[16])
{
	int rc = gcm_run(true, key, nonce, ad, encrypt, buf, payload_len, tag);

	return rc < 0 ? kl_err(-EIO, "stream: AES-256-GCM failed") : 0;
}

int repl_rec_unprotect(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *ad,
		       bool encrypted, uint8_t *buf, size_t payload_len, const uint8_t tag[16])
{
	uint8_t t[16];

	memcpy(t, tag, sizeof(t));
	return gcm_run(false, key, nonce, ad, encrypted, buf, payload_len, t);
}

static void sha256_parts(uint8_t out[32], const void *a, size_t al, const void *b, size_t bl,
			 const void *c, size_t cl)
{
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	unsigned int n = 0;

	/* no failure path: a digest of memory only fails without memory, then d stays random-ish
	 * zeros and the trailer comparison fails closed */
	memset(out, 0, 32);
	if (!m)
		return;
	if (EVP_DigestInit_ex(m, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(m, a, al) == 1 &&
	    EVP_DigestUpdate(m, b, bl) == 1 && (!cl || EVP_DigestUpdate(m, c, cl) == 1))
		EVP_DigestFinal_ex(m, out, &n);
	EVP_MD_CTX_free(m);
}

void repl_chain_init(uint8_t d[32], const struct repl_hdr *h)
{
	static const char label[] = "keel-stream-v1 chain";
	uint8_t buf[REPL_HDR_FIXED + REPL_NAME_MAX];
	uint8_t pre[sizeof(label) - 1 + 4];

	repl_hdr_encode(h, buf);
	memcpy(pre, label, sizeof(label) - 1);
	put_le32(pre + sizeof(label) - 1, h->flags & ~(uint32_t)(REPL_HF_RESUME | REPL_HF_HASHED));
	/* bytes 16..167: stream id, identities, sizes and key derivation (§3.2) */
	sha256_parts(d, pre, sizeof(pre), buf + 16, 152, NULL, 0);
}

void repl_chain_step(uint8_t d[32], const uint8_t rec_hdr[REPL_REC_HDR], const uint8_t tag[16])
{
	uint8_t prev[32];

	memcpy(prev, d, 32);
	sha256_parts(d, prev, 32, rec_hdr, REPL_REC_HDR, tag, REPL_TAG);
}

void repl_token_mac(const uint8_t key[32], const uint8_t *core, uint8_t out[32])
{
	unsigned int n = 0;

	if (!HMAC(EVP_sha256(), key, 32, core, REPL_TOKEN_CORE, out, &n))
		memset(out, 0, 32);
}

static EVP_MAC *have_mac;
static pthread_once_t have_once = PTHREAD_ONCE_INIT;

static void have_init(void)
{
	have_mac = EVP_MAC_fetch(NULL, "BLAKE2BMAC", NULL);
}

int repl_have_hash(const uint8_t key[32], const void *buf, size_t len, uint8_t out[32])
{
	OSSL_PARAM params[2];
	size_t size = 32, outl = 0;
	EVP_MAC_CTX *ctx;
	int ok;

	pthread_once(&have_once, have_init);
	if (!have_mac)
		return kl_err(-ENOTSUP, "stream: OpenSSL lacks BLAKE2BMAC for the content hash");
	ctx = EVP_MAC_CTX_new(have_mac);
	if (!ctx)
		return kl_err(-ENOMEM, "stream: out of memory for a MAC context");
	params[0] = OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size);
	params[1] = OSSL_PARAM_construct_end();
	ok = EVP_MAC_init(ctx, key, 32, params) == 1 && EVP_MAC_update(ctx, buf, len) == 1 &&
	     EVP_MAC_final(ctx, out, &outl, 32) == 1 && outl == 32;
	EVP_MAC_CTX_free(ctx);
	return ok ? 0 : kl_err(-EIO, "stream: BLAKE2b MAC failed");
}

int repl_random(void *buf, size_t len)
{
	if (RAND_bytes(buf, (int)len) != 1)
		return kl_err(-EIO, "stream: no random bytes from OpenSSL");
	return 0;
}

void repl_hex(const uint8_t *in, size_t len, char *out)
{
	static const char x[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = x[in[i] >> 4];
		out[2 * i + 1] = x[in[i] & 15];
	}
	out[2 * len] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int repl_unhex(const char *in, uint8_t *out, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		int hi, lo;

		if (!in[2 * i] || !in[2 * i + 1])
			return -EINVAL;
		hi = hexval(in[2 * i]);
		lo = hexval(in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return in[2 * len] ? -EINVAL : 0;
}
