#include "convert/conv_int.h"
int conv_ova_write(const struct conv_opts *o, const char *tmp, struct conv_stats *st)
{
	(void)o; (void)tmp; (void)st;
	return kl_err(-ENOTSUP, "ova: not yet");
}
