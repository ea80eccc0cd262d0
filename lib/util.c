/*
 * lib/util.c - parsing of sizes and option lists, UUIDs, time, zero test.
 */
#define _GNU_SOURCE
#include "kl.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uuid/uuid.h>

bool kl_is_zero(const void *buf, size_t n)
{
	const uint8_t *p = buf;
	size_t head = (8 - ((uintptr_t)p & 7)) & 7;

	if (head > n)
		head = n;
	for (size_t i = 0; i < head; i++)
		if (p[i])
			return false;
	p += head;
	n -= head;
	/* 64 bytes at a time, OR-ed, so the compiler vectorises it */
	while (n >= 64) {
		const uint64_t *w = (const uint64_t *)(const void *)p;

		if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
			return false;
		p += 64;
		n -= 64;
	}
	while (n--)
		if (*p++)
			return false;
	return true;
}

void kl_uuid_generate(uint8_t out[16])
{
	static uint64_t n;
	const char *fake = getenv("KEEL_FAKE_UUID");

	if (!fake || !*fake) {
		uuid_generate_random(out);
		return;
	}
	/*
	 * Tests that compare outputs byte for byte (convert -j 1 vs -j 4) need
	 * the same identities on every run: a counter from the given seed,
	 * mixed (splitmix64), shaped as a version-4 UUID.
	 */
	for (int h = 0; h < 2; h++) {
		uint64_t z = strtoull(fake, NULL, 0) + 0x9E3779B97F4A7C15ULL *
						       (__atomic_add_fetch(&n, 1, __ATOMIC_RELAXED));

		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
		z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
		z ^= z >> 31;
		put_le64(out + 8 * h, z);
	}
	out[6] = (uint8_t)((out[6] & 0x0f) | 0x40);
	out[8] = (uint8_t)((out[8] & 0x3f) | 0x80);
}

void kl_uuid_format(const uint8_t u[16], char out[37])
{
	uuid_unparse_lower(u, out);
}

bool kl_uuid_is_null(const uint8_t u[16])
{
	return kl_is_zero(u, 16);
}

int kl_parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-' || isspace((unsigned char)*s))
		return kl_err(-EINVAL, "'%s' is not a number", s ? s : "");
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end)
		return kl_err(-EINVAL, "'%s' is not a number", s);
	*out = v;
	return 0;
}

int kl_parse_size(const char *s, uint64_t *out)
{
	char *end;
	double v;
	uint64_t mul = 1;
	const char *units = "KMGTPE";
	const char *u;

	if (!s || !*s || *s == '-' || isspace((unsigned char)*s))
		return kl_err(-EINVAL, "'%s' is not a size", s ? s : "");
	/* integers exactly, so 16T does not go through double rounding */
	errno = 0;
	unsigned long long iv = strtoull(s, &end, 10);
	if (errno == 0 && end != s && *end != '.') {
		if (*end) {
			u = strchr(units, toupper((unsigned char)*end));
			if (!u || !*end)
				return kl_err(-EINVAL, "'%s': unknown size suffix", s);
			for (int i = 0; i <= u - units; i++)
				mul *= 1024;
			end++;
			if (*end == 'i' || *end == 'I')
				end++;
			if (*end == 'b' || *end == 'B')
				end++;
		}
		if (*end)
			return kl_err(-EINVAL, "'%s' is not a size", s);
		if (kl_mul_overflow(iv, mul, out))
			return kl_err(-EINVAL, "'%s' is too large", s);
		return 0;
	}
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || v < 0)
		return kl_err(-EINVAL, "'%s' is not a size", s);
	if (*end) {
		u = strchr(units, toupper((unsigned char)*end));
		if (!u)
			return kl_err(-EINVAL, "'%s': unknown size suffix", s);
		for (int i = 0; i <= u - units; i++)
			mul *= 1024;
		end++;
		if (*end == 'i' || *end == 'I')
			end++;
		if (*end == 'b' || *end == 'B')
			end++;
		if (*end)
			return kl_err(-EINVAL, "'%s' is not a size", s);
	}
	v *= (double)mul;
	if (v >= 18446744073709551615.0)
		return kl_err(-EINVAL, "'%s' is too large", s);
	*out = (uint64_t)llround(v);
	return 0;
}

void kl_format_size(uint64_t n, char *out, size_t outlen)
{
	static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)n;
	int u = 0;

	while (v >= 1024 && u < 6) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(out, outlen, "%llu B", (unsigned long long)n);
	else if (v >= 999.5)
		snprintf(out, outlen, "%.0f %s", v, units[u]); /* %.3g would say 1.02e+03 */
	else
		snprintf(out, outlen, "%.3g %s", v, units[u]);
}

/* ---------------------------------------------------------------- options */

struct kl_opt {
	char *key;
	char *val;
	bool used;
};

struct kl_opts {
	struct kl_opt *v;
	size_t n, cap;
};

int kl_opts_set(struct kl_opts **inout, const char *key, const char *val)
{
	struct kl_opts *o = *inout;

	if (!o) {
		o = kl_calloc(1, sizeof(*o));
		if (!o)
			return -ENOMEM;
		*inout = o;
	}
	for (size_t i = 0; i < o->n; i++) {
		if (strcmp(o->v[i].key, key) == 0) {
			char *nv = kl_strdup(val);

			if (!nv)
				return -ENOMEM;
			kl_free(o->v[i].val);
			o->v[i].val = nv;
			return 0;
		}
	}
	if (o->n == o->cap) {
		size_t ncap = o->cap ? o->cap * 2 : 8;
		struct kl_opt *nv = kl_realloc(o->v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		o->v = nv;
		o->cap = ncap;
	}
	o->v[o->n].key = kl_strdup(key);
	o->v[o->n].val = kl_strdup(val);
	o->v[o->n].used = false;
	if (!o->v[o->n].key || !o->v[o->n].val) {
		kl_free(o->v[o->n].key);
		kl_free(o->v[o->n].val);
		return -ENOMEM;
	}
	o->n++;
	return 0;
}

int kl_opts_parse(const char *s, struct kl_opts **inout)
{
	size_t len = strlen(s);
	char *item = kl_malloc(len + 1);
	size_t i = 0;
	int rc = 0;

	if (!item)
		return -ENOMEM;
	while (i <= len && rc == 0) {
		size_t n = 0;
		char *eq;

		while (i < len) {
			if (s[i] == ',' && s[i + 1] == ',') {
				item[n++] = ',';
				i += 2;
				continue;
			}
			if (s[i] == ',')
				break;
			item[n++] = s[i++];
		}
		i++;
		item[n] = '\0';
		if (n == 0)
			continue;
		eq = strchr(item, '=');
		if (eq) {
			*eq = '\0';
			rc = kl_opts_set(inout, item, eq + 1);
		} else {
			/* a bare word is a flag: "-o azure" means azure=on */
			rc = kl_opts_set(inout, item, "on");
		}
	}
	kl_free(item);
	return rc;
}

const char *kl_opts_get(struct kl_opts *o, const char *key)
{
	if (!o)
		return NULL;
	for (size_t i = 0; i < o->n; i++) {
		if (strcmp(o->v[i].key, key) == 0) {
			o->v[i].used = true;
			return o->v[i].val;
		}
	}
	return NULL;
}

const char *kl_opts_peek(const struct kl_opts *o, const char *key)
{
	if (!o)
		return NULL;
	for (size_t i = 0; i < o->n; i++)
		if (strcmp(o->v[i].key, key) == 0)
			return o->v[i].val;
	return NULL;
}

int kl_opts_get_size(struct kl_opts *o, const char *key, uint64_t *out, bool *found)
{
	const char *v = kl_opts_get(o, key);

	if (found)
		*found = v != NULL;
	if (!v)
		return 0;
	if (kl_parse_size(v, out) < 0)
		return kl_err(-EINVAL, "option %s: '%s' is not a size", key, v);
	return 0;
}

int kl_opts_get_bool(struct kl_opts *o, const char *key, bool *out, bool *found)
{
	const char *v = kl_opts_get(o, key);

	if (found)
		*found = v != NULL;
	if (!v)
		return 0;
	if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "1"))
		*out = true;
	else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "0"))
		*out = false;
	else
		return kl_err(-EINVAL, "option %s: '%s' is not on/off", key, v);
	return 0;
}

int kl_opts_check_unused(const struct kl_opts *o, const char *context)
{
	if (!o)
		return 0;
	for (size_t i = 0; i < o->n; i++)
		if (!o->v[i].used)
			return kl_err(-EINVAL, "%s: unknown option '%s'", context, o->v[i].key);
	return 0;
}

void kl_opts_free(struct kl_opts *o)
{
	if (!o)
		return;
	for (size_t i = 0; i < o->n; i++) {
		kl_free(o->v[i].key);
		kl_free(o->v[i].val);
	}
	kl_free(o->v);
	kl_free(o);
}

/* ---------------------------------------------------------------- time */

double kl_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

uint64_t kl_wallclock_ns(void)
{
	const char *fake = getenv("KEEL_FAKE_TIME");
	struct timespec ts;

	if (fake && *fake)
		return strtoull(fake, NULL, 10) * 1000000000ULL;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

const char *kl_tmpdir(const char *prefer)
{
	const char *t = getenv("TMPDIR");

	if (prefer && *prefer)
		return prefer;
	return t && *t ? t : "/tmp";
}

int kl_scratch_dir(const char *prefer, const char *tag, char **out)
{
	char *d = kl_asprintf("%s/%s.XXXXXX", kl_tmpdir(prefer), tag);
	int rc;

	*out = NULL;
	if (!d)
		return -ENOMEM;
	if (!mkdtemp(d)) {
		rc = kl_err(-errno, "cannot make a scratch directory %s: %s", d, strerror(errno));
		kl_free(d);
		return rc;
	}
	*out = d;
	return 0;
}

void kl_scratch_remove(char *dir)
{
	DIR *dh;
	struct dirent *e;

	if (!dir)
		return;
	/* one level of files: the directory was made private for our own */
	dh = opendir(dir);
	if (dh) {
		while ((e = readdir(dh)) != NULL) {
			char *p;

			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			p = kl_asprintf("%s/%s", dir, e->d_name);
			if (p)
				unlink(p);
			kl_free(p);
		}
		closedir(dh);
	}
	rmdir(dir);
	kl_free(dir);
}
