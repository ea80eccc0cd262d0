/*
 * lib/json.c - a streaming JSON writer for --output json.
 */
#include "kl.h"

#include <math.h>

static void put_escaped(FILE *fp, const char *s);

static void sep(struct kl_json *j, const char *key)
{
	if (j->depth > 0 && j->need_comma[j->depth])
		fputc(',', j->fp);
	if (j->depth > 0)
		j->need_comma[j->depth] = true;
	if (j->pretty && j->depth > 0) {
		fputc('\n', j->fp);
		for (int i = 0; i < j->depth; i++)
			fputs("  ", j->fp);
	}
	if (key) {
		put_escaped(j->fp, key);
		fputs(j->pretty ? ": " : ":", j->fp);
	}
}

static void put_escaped(FILE *fp, const char *s)
{
	fputc('"', fp);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"':
			fputs("\\\"", fp);
			break;
		case '\\':
			fputs("\\\\", fp);
			break;
		case '\n':
			fputs("\\n", fp);
			break;
		case '\r':
			fputs("\\r", fp);
			break;
		case '\t':
			fputs("\\t", fp);
			break;
		default:
			if (*p < 0x20 || *p == 0x7f)
				fprintf(fp, "\\u%04x", *p);
			else
				fputc(*p, fp);
		}
	}
	fputc('"', fp);
}

void kl_json_begin(struct kl_json *j, FILE *fp)
{
	j->fp = fp;
	j->depth = 0;
	j->pretty = true;
	for (size_t i = 0; i < KL_ARRAY_SIZE(j->need_comma); i++)
		j->need_comma[i] = false;
}

void kl_json_end(struct kl_json *j)
{
	fputc('\n', j->fp);
	fflush(j->fp);
}

void kl_json_obj_open(struct kl_json *j, const char *key)
{
	sep(j, key);
	fputc('{', j->fp);
	if (j->depth < (int)KL_ARRAY_SIZE(j->need_comma) - 1)
		j->depth++;
	j->need_comma[j->depth] = false;
}

static void close_common(struct kl_json *j, char c)
{
	bool had = j->need_comma[j->depth];

	if (j->depth > 0)
		j->depth--;
	if (j->pretty && had) {
		fputc('\n', j->fp);
		for (int i = 0; i < j->depth; i++)
			fputs("  ", j->fp);
	}
	fputc(c, j->fp);
}

void kl_json_obj_close(struct kl_json *j)
{
	close_common(j, '}');
}

void kl_json_arr_open(struct kl_json *j, const char *key)
{
	sep(j, key);
	fputc('[', j->fp);
	if (j->depth < (int)KL_ARRAY_SIZE(j->need_comma) - 1)
		j->depth++;
	j->need_comma[j->depth] = false;
}

void kl_json_arr_close(struct kl_json *j)
{
	close_common(j, ']');
}

void kl_json_str(struct kl_json *j, const char *key, const char *val)
{
	sep(j, key);
	put_escaped(j->fp, val ? val : "");
}

void kl_json_u64(struct kl_json *j, const char *key, uint64_t v)
{
	sep(j, key);
	fprintf(j->fp, "%llu", (unsigned long long)v);
}

void kl_json_i64(struct kl_json *j, const char *key, int64_t v)
{
	sep(j, key);
	fprintf(j->fp, "%lld", (long long)v);
}

void kl_json_double(struct kl_json *j, const char *key, double v)
{
	sep(j, key);
	if (isfinite(v))
		fprintf(j->fp, "%.6g", v);
	else
		fputs("null", j->fp);
}

void kl_json_bool(struct kl_json *j, const char *key, bool v)
{
	sep(j, key);
	fputs(v ? "true" : "false", j->fp);
}

void kl_json_null(struct kl_json *j, const char *key)
{
	sep(j, key);
	fputs("null", j->fp);
}
