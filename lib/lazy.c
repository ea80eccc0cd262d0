/*
 * lib/lazy.c - libarchive and libxml2, loaded on first use (lib/lazy.h says
 * why). Each is opened once per process and never closed; a failure is
 * remembered and reported again to every later caller.
 */
#include "lib/lazy.h"
#include "kl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

struct kl_archive_api kl_la;
struct kl_xml_api kl_lx;

struct lazy_lib {
	const char *soname;  /* the ABI the build compiled against */
	const char *package; /* Debian's, for the message */
	pthread_once_t once;
	char err[256];	     /* empty once loaded */
};

static struct lazy_lib la_lib = { "libarchive.so.13", "libarchive13", PTHREAD_ONCE_INIT, "" };
static struct lazy_lib lx_lib = { "libxml2.so.2", "libxml2", PTHREAD_ONCE_INIT, "" };

/* dlsym into a function pointer field without a cast between object and function pointers */
static bool lazy_sym(void *h, const char *name, void *field, struct lazy_lib *l)
{
	void *p = dlsym(h, name);

	if (!p) {
		snprintf(l->err, sizeof(l->err), "%s lacks %s (a different version than keel was "
			 "built with?)", l->soname, name);
		return false;
	}
	memcpy(field, &p, sizeof(p));
	return true;
}

static void *lazy_open(struct lazy_lib *l)
{
	void *h = dlopen(l->soname, RTLD_NOW | RTLD_LOCAL);

	if (!h)
		snprintf(l->err, sizeof(l->err), "cannot load %s (%s); install the %s package",
			 l->soname, dlerror(), l->package);
	return h;
}

static void archive_once(void)
{
	void *h = lazy_open(&la_lib);

	if (!h)
		return;
#define X(f)                                                                                   \
	if (!la_lib.err[0])                                                                    \
		lazy_sym(h, #f, &kl_la.f, &la_lib);
	KL_ARCHIVE_FUNCS(X)
#undef X
}

static void xml_once(void)
{
	void *h = lazy_open(&lx_lib);

	if (!h)
		return;
#define X(f)                                                                                   \
	if (!lx_lib.err[0])                                                                    \
		lazy_sym(h, #f, &kl_lx.f, &lx_lib);
	KL_XML_FUNCS(X)
#undef X
	if (!lx_lib.err[0])
		kl_lx.xmlInitParser();
}

int kl_archive_load(void)
{
	pthread_once(&la_lib.once, archive_once);
	return la_lib.err[0] ? kl_err(-ENOTSUP, "%s", la_lib.err) : 0;
}

int kl_xml_load(void)
{
	pthread_once(&lx_lib.once, xml_once);
	return lx_lib.err[0] ? kl_err(-ENOTSUP, "%s", lx_lib.err) : 0;
}
