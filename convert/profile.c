/*
 * convert/profile.c - target profiles: -o azure, -o esxi.
 *
 * A profile is a name for "the format and options a platform accepts".
 * Here it picks the output format when -O is absent and refuses a -O that
 * does not fit; the option itself passes through to the driver, which
 * knows what it implies:
 *   azure  fixed VHD with a whole-MiB size (the vhd driver's "azure" option
 *          does the size rounding and the fixed layout)
 *   esxi   streamOptimized VMDK (version 3) with an lsilogic adapter, what
 *          ESXi imports (the vmdk driver's "esxi" option)
 * The GCE import format is a package (-O gce), not a profile.
 */
#include "convert/conv_int.h"

#include <string.h>

struct conv_profile {
	const char *name;
	const char *format;
	const char *key;   /* option set on the driver, NULL: the profile name passes through */
	const char *val;
};

static const struct conv_profile conv_profiles[] = {
	{ "azure", "vhd", NULL, NULL },
	{ "esxi", "vmdk", NULL, NULL },
};

int conv_apply_profiles(struct kl_opts **opts, const char **fmt)
{
	for (size_t i = 0; i < KL_ARRAY_SIZE(conv_profiles); i++) {
		const struct conv_profile *p = &conv_profiles[i];
		const char *v = kl_opts_peek(*opts, p->name);
		const struct blk_driver *want;

		if (!v || strcmp(v, "on") != 0)
			continue;
		want = blk_driver_find(p->format);
		if (!*fmt)
			*fmt = p->format;
		if (!want || blk_driver_find(*fmt) != want)
			return kl_err(-EINVAL, "-o %s needs -O %s%s", p->name, p->format,
				      want ? "" : " (not built into this keel)");
		if (p->key) {
			(void)kl_opts_get(*opts, p->name); /* consumed here */
			if (kl_opts_peek(*opts, p->key) && strcmp(kl_opts_peek(*opts, p->key), p->val))
				return kl_err(-EINVAL, "-o %s conflicts with %s=%s", p->name, p->key,
					      kl_opts_peek(*opts, p->key));
			KL_TRY(kl_opts_set(opts, p->key, p->val));
		}
	}
	return 0;
}
