#include "convert/conv_int.h"
int conv_gce_write(const struct conv_opts *o, const char *tmp, struct conv_stats *st)
{
	(void)o; (void)tmp; (void)st;
	return kl_err(-ENOTSUP, "gce: not yet");
}
