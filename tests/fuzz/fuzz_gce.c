/*
 * tests/fuzz/fuzz_gce.c - reading a raw disk out of a tar (format/gce.c):
 * the gzip layer, libarchive's tar and sparse-map parsing under it, the
 * map checks, member selection and the forward-only read cursor, through
 * blk_open with the format forced.
 *
 * The first input byte picks the shape, so that mutations reach the tar
 * structure and not only the deflate bits:
 *   0..127   the rest is the file as it is (a tar.gz, or a plain tar)
 *   128..255 the rest is a tar, gzip-compressed here before it is opened
 */
#include "fuzz_common.h"

#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t gz[1 << 20];
	z_stream z;

	if (size < 1)
		return 0;
	if (data[0] < 128 || size - 1 > sizeof(gz) / 2)
		return fuzz_image(data + 1, size - 1, "gce", 0);
	memset(&z, 0, sizeof(z));
	if (deflateInit2(&z, 1, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		return 0;
	z.next_in = (Bytef *)data + 1;
	z.avail_in = (uInt)(size - 1);
	z.next_out = gz;
	z.avail_out = sizeof(gz);
	if (deflate(&z, Z_FINISH) == Z_STREAM_END)
		fuzz_image(gz, sizeof(gz) - z.avail_out, "gce", 0);
	deflateEnd(&z);
	return 0;
}
