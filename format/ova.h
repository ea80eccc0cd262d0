/*
 * format/ova.h - OVF descriptor and manifest parsing for the ova driver.
 * Private to format/ (and the fuzz target); see shared/specs/ova.md.
 */
#ifndef KEEL_OVA_H
#define KEEL_OVA_H

#include "format/format_int.h"

/* Caps on what a descriptor may declare (far above real packages). */
#define OVA_MAX_FILES 1024
#define OVA_MAX_DISKS 256
#define OVA_MAX_OVF (16u << 20)
#define OVA_MAX_MF (1u << 20)

struct ova_file {
	char *id;
	char *href;
	uint64_t size;	     /* ovf:size, valid when has_size */
	bool has_size;
	uint64_t chunk_size; /* ovf:chunkSize, 0 when the file is one member */
	char *compression;   /* ovf:compression ("gzip"), NULL when none */
};

struct ova_disk {
	char *id;	/* ovf:diskId */
	char *file_ref; /* ovf:fileRef (NULL: a blank disk with no file) */
	uint64_t capacity; /* bytes */
	uint64_t populated; /* ovf:populatedSize, 0 when absent */
	char *format;	/* ovf:format URL */
};

struct ova_desc {
	struct ova_file *files;
	size_t nfiles;
	struct ova_disk *disks;
	size_t ndisks;
	char *vm_name;
	uint64_t cpus;	     /* 0 when not stated */
	uint64_t memory_mib; /* 0 when not stated */
	int version;	     /* 1 or 2, from the envelope namespace; 0 unknown */
};

/*
 * Parses an OVF descriptor with libxml2 (no network, no external entities,
 * no DTD loading). Checks the references: every disk's fileRef names a
 * File. Errors are -EUCLEAN/-ENOTSUP naming `name` and what is wrong.
 */
int ova_parse_ovf(const void *buf, size_t len, const char *name, struct ova_desc *out);
void ova_desc_release(struct ova_desc *d);

enum ova_algo { OVA_SHA1 = 1, OVA_SHA256, OVA_SHA512 };

struct ova_mf_entry {
	enum ova_algo algo;
	char *name;
	uint8_t digest[64];
	size_t dlen;
};

/* Parses "ALGO(name)= hex" lines (SHA1, SHA256, SHA512). */
int ova_parse_mf(const char *buf, size_t len, const char *name, struct ova_mf_entry **out,
		 size_t *n);
void ova_mf_free(struct ova_mf_entry *e, size_t n);

#endif
