/*
 * lib/err.c - the thread-local error slot behind kl_err().
 */
#include "kl.h"

#include <stdlib.h>
#include <string.h>

#define KL_ERRMSG_MAX 1024

static _Thread_local char err_msg[KL_ERRMSG_MAX];
static _Thread_local int err_code;

int kl_err(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_msg, sizeof(err_msg), fmt, ap);
	va_end(ap);
	err_code = code;
	return code;
}

int kl_err_prefix(int code, const char *fmt, ...)
{
	char prefix[KL_ERRMSG_MAX];
	char old[KL_ERRMSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	if (err_msg[0] == '\0')
		snprintf(old, sizeof(old), "%s", kl_strerror(code));
	else
		memcpy(old, err_msg, sizeof(old));
	/*
	 * The cause is at the end of old (each layer prefixes its context):
	 * when it is long (a deep parent chain), drop its middle, not its end.
	 */
	if (strlen(old) > 600)
		snprintf(err_msg, sizeof(err_msg), "%.400s: %.200s ... %.395s", prefix, old,
			 old + strlen(old) - 395);
	else
		snprintf(err_msg, sizeof(err_msg), "%.400s: %.600s", prefix, old);
	err_code = code;
	return code;
}

const char *kl_errmsg(void)
{
	if (err_msg[0] == '\0')
		return kl_strerror(err_code ? err_code : -EIO);
	return err_msg;
}

void kl_err_clear(void)
{
	err_msg[0] = '\0';
	err_code = 0;
}

const char *kl_strerror(int code)
{
	switch (-code) {
	case 0:
		return "success";
	case EUCLEAN:
		return "corrupt metadata";
	case EBADMSG:
		return "checksum or authentication failure";
	case ENOTSUP:
		return "unsupported feature";
	case ESTALE:
		return "wrong parent image";
	default:
		return strerror(-code);
	}
}

static bool debug_on(void)
{
	static int enabled = -1;

	if (enabled < 0) {
		const char *e = getenv("KEEL_DEBUG");
		enabled = e && *e && strcmp(e, "0") != 0;
	}
	return enabled;
}

void kl_debug_site(const char *file, int line, int code)
{
	if (debug_on())
		fprintf(stderr, "keel: debug: %s:%d: %s (%d)\n", file, line, kl_strerror(code), code);
}

void kl_debug(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (!debug_on())
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "keel: debug: %s\n", msg);
}
