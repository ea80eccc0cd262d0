/*
 * tests/fuzz/fuzz_verdict.c - the verify-boot console reader: a hostile image
 * can make the appliance print anything, so the VERDICT line, its JSON and
 * the /init timing line are parsed from arbitrary bytes.
 */
#include "vmm/vmm_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vmm_report r = { 0 };

	vmm_verdict_parse((const char *)data, size, &r);
	vmm_report_release(&r);
	kl_err_clear();
	return 0;
}
