/*
 * replicate/s3-crypto.c - the cryptography of S3 repositories, all through
 * OpenSSL's EVP interfaces: scrypt to turn a passphrase into a key-
 * encryption key, HKDF-SHA-256 for subkeys, HMAC-SHA-256 for keyed chunk
 * names, AES-256-GCM with a fresh random 96-bit nonce for every object.
 */
#include "replicate/s3_int.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <string.h>

int repl_s3_random(void *buf, size_t n)
{
	if (RAND_bytes(buf, (int)n) != 1)
		return kl_err(-EIO, "no randomness (RAND_bytes failed)");
	return 0;
}

void repl_s3_hex(const uint8_t *b, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int repl_s3_unhex(const char *s, uint8_t *out, size_t n)
{
	if (strlen(s) != 2 * n)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int repl_s3_keys_derive(const uint8_t master[REPL_KEY_LEN], const uint8_t repo_id[16],
		     struct repl_s3_keys *k)
{
	memcpy(k->repo_id, repo_id, 16);
	KL_TRY(kl_hkdf_sha256(master, REPL_KEY_LEN, repo_id, 16, "keel-s3 data v1", k->data,
			      REPL_KEY_LEN));
	KL_TRY(kl_hkdf_sha256(master, REPL_KEY_LEN, repo_id, 16, "keel-s3 chunk-id v1", k->id,
			      REPL_KEY_LEN));
	KL_TRY(kl_hkdf_sha256(master, REPL_KEY_LEN, repo_id, 16, "keel-s3 name v1", k->name,
			      REPL_KEY_LEN));
	return 0;
}

void repl_s3_keys_wipe(struct repl_s3_keys *k)
{
	OPENSSL_cleanse(k, sizeof(*k));
}

/*
 * EVP_Q_mac would fetch the algorithm on every call; a chunk id is
 * computed for every 64 KiB of every image, so fetch HMAC once (a fetched
 * EVP_MAC is shareable between threads) and keep it for the process.
 */
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;
static EVP_MAC *hmac_alg;

static void hmac_fetch(void)
{
	hmac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

int repl_hmac(const uint8_t key[REPL_KEY_LEN], const void *data, size_t len,
	      uint8_t out[REPL_ID_LEN])
{
	EVP_MAC_CTX *ctx;
	OSSL_PARAM params[2];
	size_t olen = 0;
	int rc = 0;

	pthread_once(&hmac_once, hmac_fetch);
	if (!hmac_alg)
		return kl_err(-EIO, "HMAC is not available in OpenSSL");
	ctx = EVP_MAC_CTX_new(hmac_alg);
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	if (!ctx || EVP_MAC_init(ctx, key, REPL_KEY_LEN, params) != 1 ||
	    EVP_MAC_update(ctx, data, len) != 1 ||
	    EVP_MAC_final(ctx, out, &olen, REPL_ID_LEN) != 1 || olen != REPL_ID_LEN)
		rc = kl_err(-EIO, "HMAC-SHA-256 failed");
	EVP_MAC_CTX_free(ctx);
	return rc;
}

int repl_seal(const uint8_t key[REPL_KEY_LEN], const void *aad, size_t aad_len, const void *pt,
	      size_t pt_len, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx;
	uint8_t *nonce = out, *ct = out + REPL_NONCE_LEN;
	int l1 = 0, l2 = 0, rc = 0;

	if (pt_len > INT32_MAX || aad_len > INT32_MAX)
		return kl_err(-EINVAL, "object too large to encrypt");
	KL_TRY(repl_s3_random(nonce, REPL_NONCE_LEN));
	ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return kl_err(-ENOMEM, "EVP_CIPHER_CTX_new failed");
	if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
	    (aad_len && EVP_EncryptUpdate(ctx, NULL, &l1, aad, (int)aad_len) != 1) ||
	    EVP_EncryptUpdate(ctx, ct, &l1, pt, (int)pt_len) != 1 ||
	    EVP_EncryptFinal_ex(ctx, ct + l1, &l2) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, REPL_TAG_LEN, ct + pt_len) != 1)
		rc = kl_err(-EIO, "AES-256-GCM encryption failed");
	EVP_CIPHER_CTX_free(ctx);
	return rc;
}

int repl_open(const uint8_t key[REPL_KEY_LEN], const void *aad, size_t aad_len,
	      const uint8_t *in, size_t in_len, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx;
	size_t ct_len;
	int l1 = 0, l2 = 0, rc = 0;

	if (in_len < REPL_SEAL_OVERHEAD || in_len - REPL_SEAL_OVERHEAD > INT32_MAX)
		return kl_err(-EBADMSG, "sealed data of %zu bytes is too short", in_len);
	ct_len = in_len - REPL_SEAL_OVERHEAD;
	ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return kl_err(-ENOMEM, "EVP_CIPHER_CTX_new failed");
	if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, in) != 1 ||
	    (aad_len && EVP_DecryptUpdate(ctx, NULL, &l1, aad, (int)aad_len) != 1) ||
	    EVP_DecryptUpdate(ctx, out, &l1, in + REPL_NONCE_LEN, (int)ct_len) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, REPL_TAG_LEN,
				(void *)(in + REPL_NONCE_LEN + ct_len)) != 1)
		rc = kl_err(-EIO, "AES-256-GCM decryption setup failed");
	else if (EVP_DecryptFinal_ex(ctx, out + l1, &l2) != 1)
		rc = kl_err(-EBADMSG, "authentication failed (damaged, or another key)");
	EVP_CIPHER_CTX_free(ctx);
	if (rc < 0)
		OPENSSL_cleanse(out, ct_len);
	return rc;
}

int repl_scrypt(const uint8_t *pass, size_t pass_len, const uint8_t *salt, size_t salt_len,
		unsigned log2n, uint32_t r, uint32_t p, uint8_t out[REPL_KEY_LEN])
{
	/* the config is read before anything proves it ours: bound what it asks */
	if (log2n < 10 || log2n > 22 || r < 1 || r > 32 || p < 1 || p > 16 ||
	    (128ULL << log2n) * r > (1ULL << 30))
		return kl_err(-EUCLEAN, "scrypt parameters out of range (N=2^%u r=%u p=%u; at most "
			      "1 GiB of memory)", log2n, r, p);
	return kl_scrypt(pass, pass_len, salt, salt_len, 1ULL << log2n, r, p, out, REPL_KEY_LEN);
}
