/*
 * lib/kdf.c - the key derivations every encrypted thing in keel shares
 * (.keel key slots, replication streams, the S3 repository): scrypt to turn
 * a passphrase into a key, HKDF-SHA-256 to split a key into subkeys. Both
 * are OpenSSL's; this only spells out the parameters once.
 */
#include "kl.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <string.h>

int kl_scrypt(const void *pass, size_t pass_len, const uint8_t *salt, size_t salt_len, uint64_t n,
	      uint32_t r, uint32_t p, uint8_t *out, size_t out_len)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "SCRYPT", NULL);
	EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[7], *q = params;
	/*
	 * OpenSSL refuses to use more than maxmem: V is 128 * r * (N + 2)
	 * bytes and B 128 * r * p. The callers refuse parameters that need
	 * over 1 GiB (from files, they are untrusted) with their own message;
	 * the ceiling here holds whatever a caller lets through.
	 */
	uint64_t need = 128ULL * r * (n + 2) + 128ULL * r * p + (1ULL << 20);
	uint64_t maxmem = KL_MIN(need, KL_SCRYPT_MAX_MEM);
	int ok;

	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)pass, pass_len);
	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
	*q++ = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n);
	*q++ = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r);
	*q++ = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p);
	*q++ = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem);
	*q = OSSL_PARAM_construct_end();
	ok = ctx && EVP_KDF_derive(ctx, out, out_len, params) == 1;
	EVP_KDF_CTX_free(ctx);
	EVP_KDF_free(kdf);
	return ok ? 0 : kl_err(-EIO, "scrypt key derivation failed (N=%llu r=%u p=%u)",
			       (unsigned long long)n, r, p);
}

int kl_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
		   const char *info, uint8_t *out, size_t out_len)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[5], *q = params;
	int ok;

	*q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikm_len);
	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info));
	*q = OSSL_PARAM_construct_end();
	ok = ctx && EVP_KDF_derive(ctx, out, out_len, params) == 1;
	EVP_KDF_CTX_free(ctx);
	EVP_KDF_free(kdf);
	return ok ? 0 : kl_err(-EIO, "HKDF-SHA-256 key derivation failed");
}
