/*
 * tests/fuzz/fuzz_vmdk_desc.c - the VMDK text descriptor parser alone, and
 * the in-place CID rewrite on whatever it accepted.
 */
#include "format/vmdk.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vmdk_desc d;
	char *text;

	if (vmdk_desc_parse((const char *)data, size, "fuzz", &d) == 0) {
		(void)vmdk_desc_get(&d, "ddb.adapterType");
		for (size_t i = 0; i < d.next; i++)
			(void)vmdk_ext_type_name(d.ext[i].type);
		vmdk_desc_release(&d);
		text = kl_malloc(size + 1);
		if (text) {
			memcpy(text, data, size);
			text[size] = '\0';
			if (vmdk_desc_set_cid(&text, 0x12345678) == 0 &&
			    vmdk_desc_parse(text, strlen(text), "fuzz", &d) == 0)
				vmdk_desc_release(&d);
			kl_free(text);
		}
	}
	kl_err_clear();
	return 0;
}
