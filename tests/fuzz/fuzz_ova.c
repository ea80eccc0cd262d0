/*
 * tests/fuzz/fuzz_ova.c - the OVA reading path: tar walk (libarchive),
 * descriptor (libxml2) and manifest parsing, disk selection and the
 * windowed inner image, through blk_open with the format forced.
 *
 * The first input byte picks what is fuzzed, so one target covers both
 * the whole package and the descriptor and manifest parsers alone:
 *   0..199  the rest is an OVA package (opened, info, extents read)
 *   200..227 the rest is an OVF descriptor
 *   228..255 the rest is a manifest
 */
#include "fuzz_common.h"
#include "format/ova.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] < 200)
		return fuzz_image(data + 1, size - 1, "ova", 0);
	if (data[0] < 228) {
		struct ova_desc d;

		if (ova_parse_ovf(data + 1, size - 1, "fuzz.ovf", &d) == 0)
			ova_desc_release(&d);
	} else {
		struct ova_mf_entry *e;
		size_t n;

		if (ova_parse_mf((const char *)data + 1, size - 1, "fuzz.mf", &e, &n) == 0)
			ova_mf_free(e, n);
	}
	kl_err_clear();
	return 0;
}
