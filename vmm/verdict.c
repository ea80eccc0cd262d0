/*
 * vmm/verdict.c - reading the appliance's answer, and verify-boot itself.
 *
 * The console is guest output, so untrusted: a hostile image can make the
 * appliance print anything its files contain. The JSON reader is bounded
 * (input 64 KiB, depth 16, 4096 values, strings 4 KiB), allocates only what
 * it parsed, and a verdict is believed only when it is a well-formed object
 * whose "verdict" member is the string "ok" and whose "reasons" are empty.
 */
#define _GNU_SOURCE
#include "vmm/vmm_int.h"

#include <stdlib.h>
#include <string.h>

#define JSON_MAX_INPUT (64u << 10)
#define JSON_MAX_DEPTH 16
#define JSON_MAX_NODES 4096
#define JSON_MAX_STR 4096

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct vmm_json {
	int type;
	char *key; /* member name inside an object */
	char *str;
	double num;
	bool b;
	struct vmm_json *kids;
	size_t n;
};

struct jp {
	const char *s;
	size_t len, pos;
	unsigned nodes;
};

static void json_release(struct vmm_json *j)
{
	for (size_t i = 0; i < j->n; i++)
		json_release(&j->kids[i]);
	kl_free(j->kids);
	kl_free(j->key);
	kl_free(j->str);
}

void vmm_json_free(struct vmm_json *j)
{
	if (!j)
		return;
	json_release(j);
	kl_free(j);
}

static void jp_ws(struct jp *p)
{
	while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
				   p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
		p->pos++;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int jp_string(struct jp *p, char **out)
{
	char *buf;
	size_t n = 0;

	if (p->pos >= p->len || p->s[p->pos] != '"')
		return -EBADMSG;
	p->pos++;
	buf = kl_malloc(JSON_MAX_STR + 4);
	if (!buf)
		return -ENOMEM;
	while (p->pos < p->len) {
		unsigned char c = (unsigned char)p->s[p->pos++];

		if (n > JSON_MAX_STR)
			break;
		if (c == '"') {
			buf[n] = 0;
			*out = buf;
			return 0;
		}
		if (c < 0x20)
			break;
		if (c != '\\') {
			buf[n++] = (char)c;
			continue;
		}
		if (p->pos >= p->len)
			break;
		c = (unsigned char)p->s[p->pos++];
		switch (c) {
		case '"': case '\\': case '/': buf[n++] = (char)c; break;
		case 'b': buf[n++] = '\b'; break;
		case 'f': buf[n++] = '\f'; break;
		case 'n': buf[n++] = '\n'; break;
		case 'r': buf[n++] = '\r'; break;
		case 't': buf[n++] = '\t'; break;
		case 'u': {
			unsigned v = 0;

			if (p->len - p->pos < 4)
				goto bad;
			for (int i = 0; i < 4; i++) {
				int h = hexval(p->s[p->pos++]);

				if (h < 0)
					goto bad;
				v = v << 4 | (unsigned)h;
			}
			/* keep it simple and safe: BMP as UTF-8, surrogates as '?' */
			if (v >= 0xd800 && v <= 0xdfff) {
				buf[n++] = '?';
			} else if (v < 0x80) {
				buf[n++] = (char)v;
			} else if (v < 0x800) {
				buf[n++] = (char)(0xc0 | v >> 6);
				buf[n++] = (char)(0x80 | (v & 0x3f));
			} else {
				buf[n++] = (char)(0xe0 | v >> 12);
				buf[n++] = (char)(0x80 | ((v >> 6) & 0x3f));
				buf[n++] = (char)(0x80 | (v & 0x3f));
			}
			break;
		}
		default:
			goto bad;
		}
	}
bad:
	kl_free(buf);
	return -EBADMSG;
}

static int jp_value(struct jp *p, struct vmm_json *v, int depth);

static int jp_container(struct jp *p, struct vmm_json *v, int depth, bool obj)
{
	char close = obj ? '}' : ']';
	size_t cap = 0;

	v->type = obj ? J_OBJ : J_ARR;
	p->pos++;
	jp_ws(p);
	if (p->pos < p->len && p->s[p->pos] == close) {
		p->pos++;
		return 0;
	}
	for (;;) {
		struct vmm_json *kid;
		char *key = NULL;

		jp_ws(p);
		if (obj) {
			KL_TRY(jp_string(p, &key));
			jp_ws(p);
			if (p->pos >= p->len || p->s[p->pos] != ':') {
				kl_free(key);
				return -EBADMSG;
			}
			p->pos++;
		}
		if (v->n == cap) {
			size_t ncap = cap ? cap * 2 : 8;
			struct vmm_json *nk = kl_realloc(v->kids, ncap * sizeof(*nk));

			if (!nk) {
				kl_free(key);
				return -ENOMEM;
			}
			v->kids = nk;
			cap = ncap;
		}
		kid = &v->kids[v->n++];
		memset(kid, 0, sizeof(*kid));
		kid->key = key;
		KL_TRY(jp_value(p, kid, depth + 1));
		jp_ws(p);
		if (p->pos >= p->len)
			return -EBADMSG;
		if (p->s[p->pos] == ',') {
			p->pos++;
			continue;
		}
		if (p->s[p->pos] == close) {
			p->pos++;
			return 0;
		}
		return -EBADMSG;
	}
}

static int jp_value(struct jp *p, struct vmm_json *v, int depth)
{
	char c;

	if (depth > JSON_MAX_DEPTH || ++p->nodes > JSON_MAX_NODES)
		return -EBADMSG;
	jp_ws(p);
	if (p->pos >= p->len)
		return -EBADMSG;
	c = p->s[p->pos];
	if (c == '{' || c == '[')
		return jp_container(p, v, depth, c == '{');
	if (c == '"') {
		v->type = J_STR;
		return jp_string(p, &v->str);
	}
	if (p->len - p->pos >= 4 && !memcmp(p->s + p->pos, "true", 4)) {
		v->type = J_BOOL;
		v->b = true;
		p->pos += 4;
		return 0;
	}
	if (p->len - p->pos >= 5 && !memcmp(p->s + p->pos, "false", 5)) {
		v->type = J_BOOL;
		p->pos += 5;
		return 0;
	}
	if (p->len - p->pos >= 4 && !memcmp(p->s + p->pos, "null", 4)) {
		v->type = J_NULL;
		p->pos += 4;
		return 0;
	}
	if (c == '-' || (c >= '0' && c <= '9')) {
		char num[40];
		size_t n = 0;
		char *end;

		while (p->pos < p->len && n < sizeof(num) - 1 &&
		       strchr("+-0123456789.eE", p->s[p->pos]))
			num[n++] = p->s[p->pos++];
		num[n] = 0;
		v->type = J_NUM;
		v->num = strtod(num, &end);
		return *end ? -EBADMSG : 0;
	}
	return -EBADMSG;
}

int vmm_json_parse(const char *s, size_t len, struct vmm_json **out)
{
	struct jp p = { s, len, 0, 0 };
	struct vmm_json *j;
	int rc;

	*out = NULL;
	if (len > JSON_MAX_INPUT)
		return kl_err(-EBADMSG, "verdict: %zu bytes of JSON is more than %u", len,
			      JSON_MAX_INPUT);
	j = kl_calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	rc = jp_value(&p, j, 0);
	if (rc == 0) {
		jp_ws(&p);
		if (p.pos != p.len)
			rc = -EBADMSG;
	}
	if (rc < 0) {
		vmm_json_free(j);
		if (rc == -EBADMSG)
			return kl_err(rc, "verdict: malformed JSON near byte %zu", p.pos);
		return rc;
	}
	*out = j;
	return 0;
}

const struct vmm_json *vmm_json_get(const struct vmm_json *obj, const char *key)
{
	if (!obj || obj->type != J_OBJ)
		return NULL;
	for (size_t i = 0; i < obj->n; i++)
		if (obj->kids[i].key && !strcmp(obj->kids[i].key, key))
			return &obj->kids[i];
	return NULL;
}

const char *vmm_json_str(const struct vmm_json *j)
{
	return j && j->type == J_STR ? j->str : NULL;
}

bool vmm_json_is_true(const struct vmm_json *j)
{
	return j && j->type == J_BOOL && j->b;
}

size_t vmm_json_len(const struct vmm_json *arr)
{
	return arr && arr->type == J_ARR ? arr->n : 0;
}

const struct vmm_json *vmm_json_at(const struct vmm_json *arr, size_t i)
{
	return arr && arr->type == J_ARR && i < arr->n ? &arr->kids[i] : NULL;
}

static double json_num(const struct vmm_json *j)
{
	return j && j->type == J_NUM ? j->num : 0;
}

/* ------------------------------------------------------------------ verdict */

static int add_reason(struct vmm_report *r, const char *s)
{
	char **n = kl_realloc(r->reasons, (r->nreasons + 1) * sizeof(*n));

	if (!n)
		return -ENOMEM;
	r->reasons = n;
	r->reasons[r->nreasons] = kl_strdup(s);
	if (!r->reasons[r->nreasons])
		return -ENOMEM;
	r->nreasons++;
	return 0;
}

static char *dup_or_null(const char *s)
{
	return s && *s ? kl_strdup(s) : NULL;
}

int vmm_verdict_parse(const char *console, size_t len, struct vmm_report *r)
{
	static const char vtag[] = "VERDICT: ";
	static const char itag[] = "KEEL-APPLIANCE: init ";
	const char *vline = NULL, *p = console, *end = console + len;
	size_t vlen = 0;
	double init_uptime = -1;
	struct vmm_json *j = NULL;
	const struct vmm_json *reasons;
	const char *verdict;
	int rc;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		size_t ll = (size_t)(le - p);

		while (ll && (p[ll - 1] == '\r' || p[ll - 1] == 0))
			ll--;
		if (ll >= sizeof(vtag) - 1 && !memcmp(p, vtag, sizeof(vtag) - 1)) {
			vline = p + sizeof(vtag) - 1;
			vlen = ll - (sizeof(vtag) - 1);
		} else if (ll > sizeof(itag) - 1 && ll < 64 && !memcmp(p, itag, sizeof(itag) - 1)) {
			char num[64];

			memcpy(num, p + sizeof(itag) - 1, ll - (sizeof(itag) - 1));
			num[ll - (sizeof(itag) - 1)] = 0;
			init_uptime = strtod(num, NULL);
		}
		p = nl ? nl + 1 : end;
	}
	if (!vline)
		return kl_err(-EBADMSG, "the appliance printed no VERDICT line");
	KL_TRY(vmm_json_parse(vline, vlen, &j));
	verdict = vmm_json_str(vmm_json_get(j, "verdict"));
	reasons = vmm_json_get(j, "reasons");
	if (j->type != J_OBJ || !verdict || (reasons && reasons->type != J_ARR)) {
		vmm_json_free(j);
		return kl_err(-EBADMSG, "verdict: JSON object without a \"verdict\" string");
	}
	r->verdict_json = kl_strndup(vline, vlen);
	if (!r->verdict_json) {
		rc = -ENOMEM;
		goto out;
	}
	r->passed = !strcmp(verdict, "ok") && vmm_json_len(reasons) == 0;
	for (size_t i = 0; i < vmm_json_len(reasons); i++) {
		const char *s = vmm_json_str(vmm_json_at(reasons, i));

		rc = add_reason(r, s ? s : "(not a string)");
		if (rc < 0)
			goto out;
	}
	if (!r->passed && !r->nreasons) {
		rc = add_reason(r, verdict);
		if (rc < 0)
			goto out;
	}
	r->os_id = dup_or_null(vmm_json_str(vmm_json_get(vmm_json_get(j, "os"), "id")));
	r->os_name = dup_or_null(vmm_json_str(vmm_json_get(vmm_json_get(j, "os"), "name")));
	r->ptable = dup_or_null(vmm_json_str(vmm_json_get(vmm_json_get(j, "disk"), "ptable")));
	if (init_uptime >= 0 && init_uptime < 1e6) {
		double up = json_num(vmm_json_get(j, "uptime"));

		r->t_kernel = init_uptime;
		if (up >= init_uptime && up < 1e6)
			r->t_checks = up - init_uptime;
	}
	rc = 0;
out:
	vmm_json_free(j);
	return rc;
}

void vmm_report_release(struct vmm_report *r)
{
	for (size_t i = 0; i < r->nreasons; i++)
		kl_free(r->reasons[i]);
	kl_free(r->reasons);
	kl_free(r->verdict_json);
	kl_free(r->os_id);
	kl_free(r->os_name);
	kl_free(r->ptable);
	vmm_run_result_release(&r->run);
	memset(r, 0, sizeof(*r));
}

/* The last few console lines, for an error message. */
static const char *console_tail(const struct vmm_run_result *run)
{
	const char *s = run->console;
	size_t n = run->console_len, lines = 0;

	if (!s || !n)
		return "(no console output)";
	while (n > 0 && lines < 4) {
		n--;
		if (s[n] == '\n' && n + 1 < run->console_len)
			lines++;
	}
	return s + n + (s[n] == '\n');
}

int vmm_verify_boot(const struct vmm_opts *o, struct vmm_report *r)
{
	struct vmm_opts ro = *o;
	int rc;

	memset(r, 0, sizeof(*r));
	if (!o->image && !o->disk)
		return kl_err(-EINVAL, "verify-boot needs an image");
	/* the appliance never needs to write; the guest sees a read-only disk */
	ro.disk_writable = false;
	ro.kernel = ro.initrd = NULL;
	KL_TRY(vmm_choose_engine(&ro, &r->engine, r->engine_why, sizeof(r->engine_why)));
	ro.engine = r->engine;
	rc = vmm_run(&ro, &r->run);
	if (rc < 0)
		return rc;
	r->t_total = r->run.t_total;
	rc = vmm_verdict_parse(r->run.console ? r->run.console : "", r->run.console_len, r);
	if (rc < 0) {
		switch (r->run.exit) {
		case VMM_EXIT_WATCHDOG:
			return kl_err(-ETIMEDOUT, "no verdict within %u s (%s engine); last console "
				      "output: %s", o->timeout_s ? o->timeout_s : VMM_DEFAULT_TIMEOUT,
				      vmm_engine_name(r->engine), console_tail(&r->run));
		case VMM_EXIT_CANCELLED:
			return kl_err(-EINTR, "cancelled before the verdict");
		case VMM_EXIT_CRASH:
			return kl_err(-EIO, "the VM stopped before the verdict: %s", r->run.detail);
		default:
			return kl_err_prefix(rc, "the appliance ended without a verdict (last console "
					     "output: %s)", console_tail(&r->run));
		}
	}
	if (r->run.t_init > 0 && r->t_kernel > 0) {
		/* launch -> guest kernel start: wall time at /init minus guest uptime then */
		double s = r->run.t_init - r->t_kernel;

		r->t_vmm_start = s > 0 ? s : 0;
	}
	if (r->engine == VMM_ENGINE_KVM && r->run.t_setup > 0)
		r->t_vmm_start = r->run.t_setup;
	if (o->expect_os && (!r->os_id || strcmp(r->os_id, o->expect_os) != 0)) {
		char msg[256];

		snprintf(msg, sizeof(msg), "expected-os-absent: wanted '%s', found '%s'",
			 o->expect_os, r->os_id ? r->os_id : "none");
		KL_TRY(add_reason(r, msg));
		r->passed = false;
	}
	return 0;
}
