/*
 * lib/mem.c - allocation through one seam, so tests can fail the Nth call.
 */
#include "kl.h"
#include "kl_int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define KL_HUGE_PAGE (2u << 20)

void *kl_malloc(size_t n)
{
	void *p;

	if (kl_fault_malloc_hit()) {
		kl_err(-ENOMEM, "out of memory (injected) allocating %zu bytes", n);
		return NULL;
	}
	p = malloc(n ? n : 1);
	if (!p)
		kl_err(-ENOMEM, "out of memory allocating %zu bytes", n);
	return p;
}

void *kl_calloc(size_t nmemb, size_t size)
{
	void *p;

	if (kl_fault_malloc_hit()) {
		kl_err(-ENOMEM, "out of memory (injected) allocating %zu x %zu bytes", nmemb, size);
		return NULL;
	}
	p = calloc(nmemb ? nmemb : 1, size ? size : 1);
	if (!p)
		kl_err(-ENOMEM, "out of memory allocating %zu x %zu bytes", nmemb, size);
	return p;
}

void *kl_realloc(void *old, size_t n)
{
	void *p;

	if (kl_fault_malloc_hit()) {
		kl_err(-ENOMEM, "out of memory (injected) growing to %zu bytes", n);
		return NULL;
	}
	p = realloc(old, n ? n : 1);
	if (!p)
		kl_err(-ENOMEM, "out of memory growing to %zu bytes", n);
	return p;
}

void *kl_aligned_alloc(size_t n)
{
	void *p = NULL;

	if (kl_fault_malloc_hit()) {
		kl_err(-ENOMEM, "out of memory (injected) allocating %zu bytes", n);
		return NULL;
	}
	if (n >= KL_HUGE_PAGE) {
		/*
		 * Pipeline buffers (megabytes, reused for the whole run): in
		 * huge pages when the kernel has them, one fault per 2 MiB
		 * instead of 512. First touches are costly, very much so in
		 * virtual machines with shadow paging.
		 */
		if (posix_memalign(&p, KL_HUGE_PAGE, n) == 0) {
			(void)madvise(p, n - n % KL_HUGE_PAGE, MADV_HUGEPAGE);
			return p;
		}
	}
	if (posix_memalign(&p, 4096, n ? n : 1) != 0) {
		kl_err(-ENOMEM, "out of memory allocating %zu aligned bytes", n);
		return NULL;
	}
	return p;
}

char *kl_strdup(const char *s)
{
	return kl_strndup(s, strlen(s));
}

char *kl_strndup(const char *s, size_t n)
{
	size_t len = strnlen(s, n);
	char *p = kl_malloc(len + 1);

	if (!p)
		return NULL;
	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

char *kl_asprintf(const char *fmt, ...)
{
	va_list ap;
	int n;
	char *p;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	p = kl_malloc((size_t)n + 1);
	if (!p)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(p, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return p;
}

void kl_free(void *p)
{
	free(p);
}

void kl_wipe(void *p, size_t n)
{
	volatile uint8_t *v = p;

	while (n--)
		*v++ = 0;
}
