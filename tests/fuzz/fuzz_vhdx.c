/*
 * tests/fuzz/fuzz_vhdx.c - libFuzzer target for the VHDX driver.
 *
 * A VHDX keeps everything past its 1 MiB header section at 1 MiB-aligned
 * offsets, so a file small enough to fuzz (-max_len=1M) would never reach
 * the log, the metadata or the BAT. The input is therefore a compact image,
 * expanded before fuzz_image() sees it:
 *
 *   input [0, 320K)                -> file [0, 320K)      identifier, headers,
 *                                                          region tables
 *   3 chunks of 128 KiB            -> file [1M, 2M, 3M)   log / BAT / metadata
 *                                    (+128K each)          (keel and qemu put
 *                                                          them there)
 *   up to 12 chunks of 32 KiB      -> file [4M .. 15M]    start of each
 *                                    (+32K each)           payload MiB
 *
 * and the file ends at the next MiB after the last chunk. Seeds are real
 * images squeezed the same way (tests/fuzz/corpus.d/vhdx.sh). Each input is
 * opened read-only (log replay in memory) and then writable (log replay to
 * the file, header updates), both on an in-memory file.
 */
#include "tests/fuzz/fuzz_common.h"

#include <stdlib.h>
#include <string.h>

#define HEAD (320u << 10)
#define BIG_CHUNK (128u << 10)
#define SMALL_CHUNK (32u << 10)
#define MIB (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t *img;
	static size_t dirty;
	size_t in = 0, end = MIB, n;

	if (!img && !(img = calloc(1, 16 * MIB)))
		return 0;
	memset(img, 0, dirty);
	n = KL_MIN(size, (size_t)HEAD);
	memcpy(img, data, n);
	in = n;
	for (unsigned j = 0; j < 3 && in < size; j++) {
		n = KL_MIN(size - in, (size_t)BIG_CHUNK);
		memcpy(img + (j + 1) * MIB, data + in, n);
		in += n;
		end = (j + 2) * MIB;
	}
	for (unsigned k = 0; k < 12 && in < size; k++) {
		n = KL_MIN(size - in, (size_t)SMALL_CHUNK);
		memcpy(img + (k + 4) * MIB, data + in, n);
		in += n;
		end = (k + 5) * MIB;
	}
	dirty = end;
	/* the last input byte picks read-only (overlay) or writable (replay to file) */
	fuzz_image(img, end, "vhdx", size && (data[size - 1] & 1) ? BLK_OPEN_RDWR : 0);
	return 0;
}
