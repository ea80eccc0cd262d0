/*
 * tests/fuzz/fuzz_vhdx.c - libFuzzer target for the VHDX driver.
 *
 * A VHDX keeps everything past its 1 MiB header section at 1 MiB-aligned
 * offsets, so a file small enough to fuzz would never reach the log, the
 * metadata or the BAT. The input is therefore a compact image, expanded
 * before fuzz_image() sees it; piece i of the input goes to file offset
 * map[i].at (keel and qemu put the log, BAT and metadata at 1-3 MiB and
 * payload blocks from 4 MiB), and the file ends at the next MiB after the
 * last piece present:
 *
 *   identifier 4K, header 1 4K, header 2 4K, region tables 2 x 64K,
 *   1 MiB: 64K (log), 2 MiB: 128K, 3 MiB: 128K (BAT / metadata),
 *   4..15 MiB: 4K each (start of the payload blocks)
 *
 * Unless bit 1 of the last input byte is set, the CRC-32C of both headers
 * and both region tables is recomputed, so mutations there reach the
 * checks behind the checksum. Bit 0 of the last byte picks a read-only
 * open (log replay in memory) or a writable one (log replay to the file,
 * header updates); either way the file is in memory. Seeds are real images
 * squeezed the same way (tests/fuzz/corpus.d/vhdx.sh).
 */
#include "tests/fuzz/fuzz_common.h"

#include <stdlib.h>
#include <string.h>

#define KIB 1024u
#define MIB (1024u * 1024u)

static const struct {
	uint32_t at, len;
} map[] = {
	{ 0, 4 * KIB },	       { 64 * KIB, 4 * KIB },	{ 128 * KIB, 4 * KIB },
	{ 192 * KIB, 64 * KIB }, { 256 * KIB, 64 * KIB }, { 1 * MIB, 64 * KIB },
	{ 2 * MIB, 128 * KIB },  { 3 * MIB, 128 * KIB },  { 4 * MIB, 4 * KIB },
	{ 5 * MIB, 4 * KIB },	 { 6 * MIB, 4 * KIB },	  { 7 * MIB, 4 * KIB },
	{ 8 * MIB, 4 * KIB },	 { 9 * MIB, 4 * KIB },	  { 10 * MIB, 4 * KIB },
	{ 11 * MIB, 4 * KIB },	 { 12 * MIB, 4 * KIB },	  { 13 * MIB, 4 * KIB },
	{ 14 * MIB, 4 * KIB },	 { 15 * MIB, 4 * KIB },
};

static void fix_crc(uint8_t *p, size_t len)
{
	put_le32(p + 4, 0);
	put_le32(p + 4, kl_crc32c(0, p, len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t *img;
	static size_t dirty;
	size_t in = 0, end = MIB;
	uint8_t last = size ? data[size - 1] : 0;

	if (!img && !(img = calloc(1, 16 * MIB)))
		return 0;
	memset(img, 0, dirty);
	for (size_t i = 0; i < KL_ARRAY_SIZE(map) && in < size; i++) {
		size_t n = KL_MIN(size - in, (size_t)map[i].len);

		memcpy(img + map[i].at, data + in, n);
		in += n;
		end = KL_MAX(end, (size_t)map[i].at / MIB * MIB + MIB);
	}
	dirty = end;
	if (!(last & 2)) {
		fix_crc(img + 64 * KIB, 4 * KIB);
		fix_crc(img + 128 * KIB, 4 * KIB);
		fix_crc(img + 192 * KIB, 64 * KIB);
		fix_crc(img + 256 * KIB, 64 * KIB);
	}
	fuzz_image(img, end, "vhdx", (last & 1) ? BLK_OPEN_RDWR : 0);
	return 0;
}
