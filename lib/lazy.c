/*
 * lib/lazy.c - libarchive, libxml2 and libcurl, loaded on first use
 * (lib/lazy.h says why). Each is opened once per process and never closed
 * (curl keeps global state for the life of the process); a failure is
 * remembered and reported again to every later caller.
 */
#include "lib/lazy.h"
#include "kl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>

struct kl_archive_api kl_la;
struct kl_xml_api kl_lx;
struct kl_curl_api kl_lc;

struct lazy_sym {
	const char *name;
	size_t off; /* of its pointer in the table */
};

#define KL_LAZY_SYM(api, f) { #f, offsetof(struct api, f) },
#define LA_SYM(f) KL_LAZY_SYM(kl_archive_api, f)
#define LX_SYM(f) KL_LAZY_SYM(kl_xml_api, f)
#define LC_SYM(f) KL_LAZY_SYM(kl_curl_api, f)
static const struct lazy_sym la_syms[] = { KL_ARCHIVE_FUNCS(LA_SYM) };
static const struct lazy_sym lx_syms[] = { KL_XML_FUNCS(LX_SYM) };
static const struct lazy_sym lc_syms[] = { KL_CURL_FUNCS(LC_SYM) };

/* The Makefile passes the sonames the build's dev libraries carry. */
#ifndef KL_ARCHIVE_SONAME
#define KL_ARCHIVE_SONAME "libarchive.so.13"
#endif
#ifndef KL_XML_SONAME
#define KL_XML_SONAME "libxml2.so.2"
#endif
#ifndef KL_CURL_SONAME
#define KL_CURL_SONAME "libcurl.so.4"
#endif

struct lazy_lib {
	const char *soname;  /* the ABI the build compiled against */
	const char *package; /* Debian's, for the message */
	const struct lazy_sym *syms;
	size_t nsyms;
	void *table;
	pthread_once_t once;
	char err[256]; /* empty once loaded */
};

static struct lazy_lib la_lib = { KL_ARCHIVE_SONAME, "libarchive13", la_syms,
				  KL_ARRAY_SIZE(la_syms), &kl_la, PTHREAD_ONCE_INIT, "" };
static struct lazy_lib lx_lib = { KL_XML_SONAME, "libxml2", lx_syms, KL_ARRAY_SIZE(lx_syms),
				  &kl_lx, PTHREAD_ONCE_INIT, "" };
static struct lazy_lib lc_lib = { KL_CURL_SONAME, "libcurl4", lc_syms, KL_ARRAY_SIZE(lc_syms),
				  &kl_lc, PTHREAD_ONCE_INIT, "" };

/* Fills l's table, or l->err. Pointers are copied, not cast, from dlsym's void *. */
static bool lazy_open(struct lazy_lib *l)
{
	void *h = dlopen(l->soname, RTLD_NOW | RTLD_LOCAL);

	if (!h) {
		snprintf(l->err, sizeof(l->err), "cannot load %s (%s); install the package that "
			 "provides it (Debian: %s)", l->soname, dlerror(), l->package);
		return false;
	}
	for (size_t i = 0; i < l->nsyms; i++) {
		void *p = dlsym(h, l->syms[i].name);

		if (!p) {
			snprintf(l->err, sizeof(l->err), "%s lacks %s (another version than keel "
				 "was built with?)", l->soname, l->syms[i].name);
			return false;
		}
		memcpy((char *)l->table + l->syms[i].off, &p, sizeof(p));
	}
	return true;
}

static void archive_once(void)
{
	lazy_open(&la_lib);
}

static void xml_once(void)
{
	if (lazy_open(&lx_lib))
		kl_lx.xmlInitParser();
}

static void curl_once(void)
{
	CURLcode rc;

	if (!lazy_open(&lc_lib))
		return;
	rc = kl_lc.curl_global_init(CURL_GLOBAL_DEFAULT);
	if (rc != CURLE_OK)
		snprintf(lc_lib.err, sizeof(lc_lib.err), "libcurl initialisation failed: %s",
			 kl_lc.curl_easy_strerror(rc));
}

static int lazy_result(const struct lazy_lib *l)
{
	return l->err[0] ? kl_err(-ENOTSUP, "%s", l->err) : 0;
}

int kl_archive_load(void)
{
	pthread_once(&la_lib.once, archive_once);
	return lazy_result(&la_lib);
}

int kl_xml_load(void)
{
	pthread_once(&lx_lib.once, xml_once);
	return lazy_result(&lx_lib);
}

int kl_curl_load(void)
{
	pthread_once(&lc_lib.once, curl_once);
	return lazy_result(&lc_lib);
}
