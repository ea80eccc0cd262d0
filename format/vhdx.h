/*
 * format/vhdx.h - private declarations of the VHDX driver (Hyper-V Virtual
 * Hard Disk v2), shared by vhdx.c, vhdx-bat.c and vhdx-log.c only.
 *
 * On-disk structures follow [MS-VHDX] sections 2.2-2.6; our digest with the
 * traps is shared/specs/vhdx.md. Everything is little-endian; GUIDs are kept
 * in their on-disk (Microsoft mixed-endian) byte order everywhere in this
 * driver and converted to text only for messages and locator values.
 */
#ifndef KEEL_FORMAT_VHDX_H
#define KEEL_FORMAT_VHDX_H

#include "format/format_int.h"

#define VHDX_MiB (1024ULL * 1024)
#define VHDX_HEADER_SIZE 4096u	       /* bytes covered by the header CRC */
#define VHDX_HEADER1_OFF (64 * 1024ULL)
#define VHDX_HEADER2_OFF (128 * 1024ULL)
#define VHDX_RT1_OFF (192 * 1024ULL)
#define VHDX_RT2_OFF (256 * 1024ULL)
#define VHDX_RT_SIZE (64 * 1024u)      /* region table, CRC covers all of it */
#define VHDX_META_TABLE_SIZE (64 * 1024u)
#define VHDX_MAX_ENTRIES 2047u	       /* region and metadata table entries */
#define VHDX_MAX_VSIZE (64ULL << 40)   /* 64 TiB */
#define VHDX_MIN_BLOCK (1u << 20)
#define VHDX_MAX_BLOCK (256u << 20)
#define VHDX_SB_SIZE VHDX_MiB	       /* a sector bitmap block */
#define VHDX_LOG_SECTOR 4096u

/* Payload BAT entry states (MS-VHDX 2.5.1.1). qemu's vhdx.h calls 5 UNMAPPED. */
#define VHDX_PAYLOAD_NOT_PRESENT 0
#define VHDX_PAYLOAD_UNDEFINED 1
#define VHDX_PAYLOAD_ZERO 2
#define VHDX_PAYLOAD_UNMAPPED 3
#define VHDX_PAYLOAD_UNMAPPED_QEMU 5
#define VHDX_PAYLOAD_FULLY_PRESENT 6
#define VHDX_PAYLOAD_PARTIALLY_PRESENT 7
/* Sector bitmap entry states (2.5.1.2) */
#define VHDX_SB_NOT_PRESENT 0
#define VHDX_SB_PRESENT 6

#define VHDX_BAT_STATE(e) ((unsigned)((e) & 7))
#define VHDX_BAT_OFF(e) ((e) & ~(uint64_t)0xFFFFF) /* FileOffsetMB << 20 */

/* Well-known GUIDs, text form; vhdx_guid_parse() gives the on-disk bytes. */
#define VHDX_GUID_BAT "2DC27766-F623-4200-9D64-115E9BFD4A08"
#define VHDX_GUID_METADATA "8B7CA206-4790-4B9A-B8FE-575F050F886E"
#define VHDX_GUID_FILE_PARAMS "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
#define VHDX_GUID_VDISK_SIZE "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
#define VHDX_GUID_PAGE83 "BECA12AB-B2E6-4523-93EF-C309E000C746"
#define VHDX_GUID_LOGICAL_SS "8141BF1D-A96F-4709-BA47-F233A8FAAB5F"
#define VHDX_GUID_PHYSICAL_SS "CDA348C7-445D-4471-9CC9-E9885251C556"
#define VHDX_GUID_PARENT_LOC "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"
#define VHDX_GUID_LOCATOR_VHDX "B04AEFB7-D19E-4A81-B789-25B8E9445913"

/* What the log did at open: shown by `keel info`. */
enum vhdx_log_state {
	VHDX_LOG_EMPTY = 0,	   /* LogGuid zero: nothing to replay */
	VHDX_LOG_IN_MEMORY,	   /* replayed into an overlay (read-only open) */
	VHDX_LOG_REPLAYED,	   /* replayed to the file, LogGuid cleared */
};

/*
 * One replayed update: a 4 KiB data sector (its 4084 middle bytes stay in
 * the log at log_pos and are read on demand; leading/trailing bytes come
 * from the descriptor) or a zeroed range (log_pos == UINT64_MAX).
 */
struct vhdx_log_item {
	uint64_t file_off;
	uint64_t len;
	uint64_t log_pos; /* byte offset of the data sector inside the log */
	uint8_t lead[8];
	uint8_t trail[4];
};

/* A cached sector bitmap block (1 MiB: one bit per logical sector of a chunk). */
#define VHDX_SBM_CACHE 8
struct vhdx_sbm {
	uint64_t chunk;
	uint8_t *bits;	       /* NULL: slot free */
	uint8_t dirty[VHDX_SB_SIZE / 4096]; /* per 4 KiB page, written at flush */
	bool any_dirty;
	uint64_t stamp;	       /* LRU */
};

struct vhdx_state {
	/* current header (MS-VHDX 2.2.2) */
	int cur_slot;		   /* 0: header at 64 KiB, 1: at 128 KiB */
	uint64_t seq;
	uint8_t file_write_guid[16];
	uint8_t data_write_guid[16];
	uint8_t log_guid[16];
	uint16_t log_version;
	uint32_t log_len;
	uint64_t log_off;
	bool fwg_updated;	   /* FileWriteGuid changed in this session */
	bool dwg_updated;	   /* DataWriteGuid changed in this session */

	/* regions (2.2.3) */
	uint64_t bat_off;
	uint32_t bat_len;
	uint64_t meta_off;
	uint32_t meta_len;
	uint64_t regions_end;	   /* end of the last region, known or not */

	/* metadata (2.6) */
	uint32_t block_size;
	bool leave_alloc;	   /* fixed */
	bool has_parent;	   /* differencing */
	uint64_t vsize;
	uint32_t lss;		   /* logical sector size */
	uint32_t pss;		   /* physical sector size */
	uint8_t page83[16];
	struct blk_kv *loc;	   /* parent locator entries, decoded to UTF-8 */
	size_t nloc;
	char *parent_ref;	   /* the locator path we opened (or would open) */
	int loc_entry;		   /* metadata table entry of the locator, -1: none */
	uint64_t meta_end;	   /* end of the last metadata item (region-relative) */

	/* BAT (2.5) */
	uint64_t chunk_ratio;	   /* payload blocks per sector bitmap block */
	uint64_t nblocks;	   /* payload blocks */
	uint64_t nchunks;	   /* sector bitmap blocks */
	uint64_t nbat;		   /* entries we use */
	uint64_t *bat;
	uint8_t *bat_dirty;	   /* per 4 KiB page of the BAT */
	bool bat_any_dirty;

	/* allocation */
	uint64_t file_size;	   /* effective size at open (log LastFileOffset included) */
	uint64_t alloc_end;	   /* next free 1 MiB-aligned offset */
	uint8_t *used;		   /* bitmap of MiB units in use, over [0, used_mib) */
	uint64_t used_mib;
	bool data_dirty;	   /* data written since the last flush */
	bool broken;		   /* corruption seen while writable: refuse writes */

	/* log replay (vhdx-log.c) */
	enum vhdx_log_state log_state;
	struct vhdx_log_item *ov;  /* in-memory overlay, in replay order */
	size_t nov, ov_cap;
	uint64_t ov_lo, ov_hi;	   /* file range the overlay touches */
	uint64_t log_entries;	   /* entries in the active sequence */
	uint64_t log_last_file_off;
	uint64_t log_flushed_file_off;

	/* sector bitmaps (differencing) */
	struct vhdx_sbm sbm[VHDX_SBM_CACHE];
	uint64_t sbm_clock;

	/* scratch for zero-filling */
	uint8_t *zbuf;		   /* 1 MiB of zeros, allocated on first use */
};

/* ---- vhdx.c: helpers used by the other files */
int vhdx_guid_parse(const char *text, uint8_t out[16]);
void vhdx_guid_format(const uint8_t g[16], char out[39], bool braces);
/* Read from the image file through the log overlay; zero past EOF. */
int vhdx_read(struct blk_dev *d, uint64_t off, void *buf, size_t len);
/* Header update procedure (2.2.2.1): new FileWriteGuid once per session. */
int vhdx_update_headers(struct blk_dev *d, bool new_data_guid);

/* ---- vhdx-log.c */
/*
 * Find the active log sequence (MS-VHDX 2.3.3) for the current LogGuid and
 * build s->ov from it. Never writes. Fails when LogGuid is set but no valid
 * sequence exists, or when the file is shorter than FlushedFileOffset.
 */
int vhdx_log_load(struct blk_dev *d);
/* Apply s->ov to [off, off+len) of buf, which holds file bytes. */
int vhdx_log_overlay(struct blk_dev *d, uint64_t off, uint8_t *buf, size_t len);
/*
 * Writable open: write the overlay to the file, extend it to
 * LastFileOffset, flush, then clear LogGuid through the header update.
 */
int vhdx_log_commit(struct blk_dev *d);
void vhdx_log_free(struct vhdx_state *s);

/* ---- vhdx-bat.c */
int vhdx_bat_load(struct blk_dev *d);
int vhdx_block_status(struct blk_dev *d, uint64_t off, uint64_t len, struct blk_extent *e);
int vhdx_pread(struct blk_dev *d, uint64_t off, void *buf, size_t len);
int vhdx_pwrite(struct blk_dev *d, uint64_t off, const void *buf, size_t len);
int vhdx_pwrite_zeroes(struct blk_dev *d, uint64_t off, uint64_t len, unsigned flags);
int vhdx_bat_flush(struct blk_dev *d);
/* Every block NOT_PRESENT (the child of a commit then reads its parent). */
int vhdx_bat_make_empty(struct blk_dev *d);
void vhdx_bat_free(struct vhdx_state *s);

#endif
