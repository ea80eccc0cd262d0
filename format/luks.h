/*
 * format/luks.h - LUKS version 1 key slots and sector encryption, for the
 * images qemu encrypts (qcow2 encrypt.format=luks, read only) and LUKS
 * volumes (read, written and formatted).
 */
#ifndef KEEL_FORMAT_LUKS_H
#define KEEL_FORMAT_LUKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LUKS_SECTOR 512u
#define LUKS_HEADER_LEN 592u

struct luks;

/*
 * Unlock the LUKS header in area[0, len) (header and key material, as one
 * buffer) with a passphrase. who names the image in errors. -ENOKEY without
 * a passphrase, -EKEYREJECTED when no key slot opens, -ENOTSUP for a cipher
 * keel does not do, -EUCLEAN for a damaged header.
 */
int luks_open(const uint8_t *area, size_t len, const uint8_t *pass, size_t pass_len,
	      const char *who, struct luks **out);
/*
 * What the header says without a passphrase, for keel info: "aes
 * xts-plain64, sha256, 1 of 8 key slots active". Nothing is verified.
 */
int luks_peek(const uint8_t *hdr, size_t len, const char *who, char *out, size_t cap);
/* Decrypt len bytes (whole sectors) in place; sector numbers the IVs. */
int luks_decrypt(struct luks *l, uint64_t sector, uint8_t *buf, size_t len);
struct kl_file;
/*
 * luks_open on the header area [off, off+len) of f (read, unlocked, then
 * wiped from memory). pass_nl: newline bytes that follow pass_len in pass
 * (blk_open_opts.key_nl), tried as part of the passphrase when it does not
 * open a slot without them.
 */
int luks_open_file(struct kl_file *f, uint64_t off, size_t len, const uint8_t *pass,
		   size_t pass_len, size_t pass_nl, const char *who, struct luks **out);
/*
 * Read n bytes at pos of f and decrypt them, sector numbers counting from
 * base (the payload's start; a multiple of the sector size, <= pos). Partial
 * first and last sectors are read and decrypted whole, then cut.
 */
int luks_read(struct luks *l, struct kl_file *f, uint64_t pos, uint64_t base, void *buf, size_t n);
/*
 * Encrypt n bytes of buf (whole sectors) and write them at pos of f,
 * sector numbers counting from base as in luks_read.
 */
int luks_write(struct luks *l, struct kl_file *f, uint64_t pos, uint64_t base, const void *buf,
	       size_t n);
/*
 * A new LUKS1 header area, as qemu-img create -f luks and cryptsetup
 * luksFormat --type luks1 make by default: aes-256 xts-plain64, sha256,
 * key slot 0 opened by pass with about iter_ms milliseconds of PBKDF2, a
 * random master key. *area_out (kl_free it) holds the *area_len bytes
 * for the start of the file, up to the payload where qemu puts it
 * (2068480 bytes in: luks_format_payload()). This process then opens it
 * without PBKDF2.
 */
uint64_t luks_format_payload(void);
int luks_format(uint32_t iter_ms, const uint8_t *pass, size_t pass_len, uint8_t **area_out,
		size_t *area_len);
/* "aes-256 xts-plain64, sha256, key slot 0" */
const char *luks_describe(const struct luks *l);
void luks_close(struct luks *l);

#endif
