/*
 * tests/fuzz/fuzz_qcow2.c - libFuzzer target for the qcow2 reader: header,
 * extensions, L1/L2/refcount/snapshot tables, compressed clusters (zlib,
 * zstd), extended L2 bitmaps. Seeds: tests/fuzz/corpus.d/qcow2.sh.
 */
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_image(data, size, "qcow2", 0);
}
