/*
 * format/vmdk-desc.c - the VMDK text descriptor: parsing, building, and the
 * in-place CID rewrite that marks a disk as changed.
 *
 * Grammar (shared/specs/vmdk.md "Descriptor"): lines end in LF or CRLF;
 * '#' starts a comment line; "key = value" with the value optionally in
 * double quotes; extent lines "ACCESS SECTORS TYPE ["FILE" [OFFSET]]".
 * The text ends at the first NUL: qemu and VMware zero-pad the area.
 */
#include "format/vmdk.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static const char *const vmdk_type_names[] = {
	[VMDK_EXT_FLAT] = "FLAT",	   [VMDK_EXT_SPARSE] = "SPARSE",
	[VMDK_EXT_ZERO] = "ZERO",	   [VMDK_EXT_VMFS] = "VMFS",
	[VMDK_EXT_VMFSSPARSE] = "VMFSSPARSE", [VMDK_EXT_VMFSRDM] = "VMFSRDM",
	[VMDK_EXT_VMFSRAW] = "VMFSRAW",	   [VMDK_EXT_SESPARSE] = "SESPARSE",
};

static const char *const vmdk_access_names[] = {
	[VMDK_ACC_RW] = "RW",
	[VMDK_ACC_RDONLY] = "RDONLY",
	[VMDK_ACC_NOACCESS] = "NOACCESS",
};

const char *vmdk_ext_type_name(enum vmdk_ext_type t)
{
	return (size_t)t < KL_ARRAY_SIZE(vmdk_type_names) ? vmdk_type_names[t] : "?";
}

const char *vmdk_access_name(enum vmdk_access a)
{
	return (size_t)a < KL_ARRAY_SIZE(vmdk_access_names) ? vmdk_access_names[a] : "?";
}

void vmdk_desc_release(struct vmdk_desc *d)
{
	if (!d)
		return;
	kl_free(d->create_type);
	kl_free(d->parent_hint);
	for (size_t i = 0; i < d->nkv; i++) {
		kl_free(d->kv[i].key);
		kl_free(d->kv[i].val);
	}
	kl_free(d->kv);
	for (size_t i = 0; i < d->next; i++)
		kl_free(d->ext[i].file);
	kl_free(d->ext);
	memset(d, 0, sizeof(*d));
}

const char *vmdk_desc_get(const struct vmdk_desc *d, const char *key)
{
	const char *v = NULL;

	/* the last assignment wins, as when a tool appends an override */
	for (size_t i = 0; i < d->nkv; i++)
		if (strcmp(d->kv[i].key, key) == 0)
			v = d->kv[i].val;
	return v;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* Trim [*s, *e) of blanks on both sides. */
static void trim(const char **s, const char **e)
{
	while (*s < *e && is_blank(**s))
		(*s)++;
	while (*e > *s && is_blank((*e)[-1]))
		(*e)--;
}

/* Next blank-separated word of [*p, e); returns its length (0 at the end). */
static size_t next_word(const char **p, const char *e, const char **w)
{
	const char *s = *p;

	while (s < e && is_blank(*s))
		s++;
	*w = s;
	while (s < e && !is_blank(*s))
		s++;
	*p = s;
	return (size_t)(s - *w);
}

static bool word_is(const char *w, size_t n, const char *lit)
{
	return strlen(lit) == n && memcmp(w, lit, n) == 0;
}

/* Strict unsigned decimal of n bytes; false on junk or overflow. */
static bool parse_dec(const char *w, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0 || n > 20)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (w[i] < '0' || w[i] > '9')
			return false;
		if (kl_mul_overflow(v, 10, &v) || kl_add_overflow(v, (uint64_t)(w[i] - '0'), &v))
			return false;
	}
	*out = v;
	return true;
}

static bool parse_hex32(const char *s, uint32_t *out)
{
	uint32_t v = 0;
	size_t n = strlen(s);

	if (n == 0 || n > 8)
		return false;
	for (size_t i = 0; i < n; i++) {
		int c = tolower((unsigned char)s[i]);

		if (c >= '0' && c <= '9')
			v = v << 4 | (uint32_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v << 4 | (uint32_t)(c - 'a' + 10);
		else
			return false;
	}
	*out = v;
	return true;
}

static int add_kv(struct vmdk_desc *d, const char *k, size_t kn, const char *v, size_t vn)
{
	struct blk_kv *nv = kl_realloc(d->kv, (d->nkv + 1) * sizeof(*nv));

	if (!nv)
		return -ENOMEM;
	d->kv = nv;
	nv[d->nkv].key = kl_strndup(k, kn);
	nv[d->nkv].val = kl_strndup(v, vn);
	if (!nv[d->nkv].key || !nv[d->nkv].val) {
		kl_free(nv[d->nkv].key);
		kl_free(nv[d->nkv].val);
		return -ENOMEM;
	}
	d->nkv++;
	return 0;
}

static bool access_word(const char *w, size_t n, enum vmdk_access *a)
{
	if (word_is(w, n, "RW"))
		*a = VMDK_ACC_RW;
	else if (word_is(w, n, "RDONLY"))
		*a = VMDK_ACC_RDONLY;
	else if (word_is(w, n, "NOACCESS"))
		*a = VMDK_ACC_NOACCESS;
	else
		return false;
	return true;
}

/* Parse one extent line [s, e) whose first word is an access mode. */
static int parse_extent(struct vmdk_desc *d, const char *s, const char *e, unsigned lineno,
			const char *who)
{
	struct vmdk_desc_extent x = { .line = lineno };
	struct vmdk_desc_extent *nv;
	const char *p = s, *w, *q;
	size_t n;
	bool found = false;

	n = next_word(&p, e, &w);
	access_word(w, n, &x.access);
	n = next_word(&p, e, &w);
	if (!parse_dec(w, n, &x.sectors) || x.sectors == 0 || x.sectors > VMDK_MAX_SIZE / 512)
		return kl_err(-EUCLEAN, "%s: descriptor line %u: bad extent size '%.*s' (sectors)",
			      who, lineno, (int)KL_MIN(n, (size_t)40), w);
	n = next_word(&p, e, &w);
	for (size_t t = 0; t < KL_ARRAY_SIZE(vmdk_type_names); t++) {
		if (word_is(w, n, vmdk_type_names[t])) {
			x.type = (enum vmdk_ext_type)t;
			found = true;
		}
	}
	if (!found)
		return kl_err(-ENOTSUP, "%s: descriptor line %u: unknown extent type '%.*s'", who,
			      lineno, (int)KL_MIN(n, (size_t)40), w);
	while (p < e && is_blank(*p))
		p++;
	if (x.type != VMDK_EXT_ZERO) {
		if (p >= e || *p != '"')
			return kl_err(-EUCLEAN,
				      "%s: descriptor line %u: extent file name must be in quotes", who,
				      lineno);
		q = memchr(p + 1, '"', (size_t)(e - p - 1));
		if (!q)
			return kl_err(-EUCLEAN, "%s: descriptor line %u: unterminated file name",
				      who, lineno);
		if (q == p + 1)
			return kl_err(-EUCLEAN, "%s: descriptor line %u: empty extent file name", who,
				      lineno);
		x.file = kl_strndup(p + 1, (size_t)(q - p - 1));
		if (!x.file)
			return -ENOMEM;
		p = q + 1;
		n = next_word(&p, e, &w);
		if (n && !parse_dec(w, n, &x.offset)) {
			kl_free(x.file);
			return kl_err(-EUCLEAN, "%s: descriptor line %u: bad extent offset '%.*s'",
				      who, lineno, (int)KL_MIN(n, (size_t)40), w);
		}
		if (x.offset > VMDK_MAX_SIZE / 512) {
			kl_free(x.file);
			return kl_err(-EUCLEAN, "%s: descriptor line %u: extent offset too large",
				      who, lineno);
		}
		/* VMware may add fields (RDM partition ids); they do not matter to reads */
	}
	if (d->next >= VMDK_MAX_EXTENTS) {
		kl_free(x.file);
		return kl_err(-EUCLEAN, "%s: descriptor has more than %d extents", who,
			      VMDK_MAX_EXTENTS);
	}
	nv = kl_realloc(d->ext, (d->next + 1) * sizeof(*nv));
	if (!nv) {
		kl_free(x.file);
		return -ENOMEM;
	}
	d->ext = nv;
	nv[d->next++] = x;
	return 0;
}

/* Interpret the keys the driver relies on. */
static int digest_keys(struct vmdk_desc *d, const char *who)
{
	const char *v;

	v = vmdk_desc_get(d, "version");
	if (v) {
		uint64_t ver;

		if (!parse_dec(v, strlen(v), &ver))
			return kl_err(-EUCLEAN, "%s: descriptor version '%s' is not a number", who, v);
		if (ver < 1 || ver > 3)
			return kl_err(-ENOTSUP, "%s: descriptor version %llu is not supported (1-3)",
				      who, (unsigned long long)ver);
		d->version = (unsigned)ver;
	}
	v = vmdk_desc_get(d, "CID");
	if (v) {
		if (!parse_hex32(v, &d->cid))
			return kl_err(-EUCLEAN, "%s: descriptor CID '%s' is not 8 hex digits", who, v);
		d->has_cid = true;
	}
	v = vmdk_desc_get(d, "parentCID");
	if (v) {
		if (!parse_hex32(v, &d->parent_cid))
			return kl_err(-EUCLEAN, "%s: descriptor parentCID '%s' is not 8 hex digits",
				      who, v);
		d->has_parent_cid = true;
	}
	v = vmdk_desc_get(d, "createType");
	if (v && !(d->create_type = kl_strdup(v)))
		return -ENOMEM;
	v = vmdk_desc_get(d, "parentFileNameHint");
	if (v && *v && !(d->parent_hint = kl_strdup(v)))
		return -ENOMEM;
	return 0;
}

int vmdk_desc_parse(const char *text, size_t len, const char *who, struct vmdk_desc *out)
{
	const char *end, *s;
	unsigned lineno = 0;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	end = memchr(text, '\0', len);
	if (end)
		len = (size_t)(end - text);
	if (len > VMDK_MAX_DESC)
		return kl_err(-EUCLEAN, "%s: descriptor of %zu bytes is larger than %u", who, len,
			      VMDK_MAX_DESC);
	end = text + len;
	for (s = text; s < end && rc == 0;) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		const char *le = nl ? nl : end, *ls = s, *eq, *w, *p;
		size_t n;
		enum vmdk_access acc;

		s = nl ? nl + 1 : end;
		lineno++;
		if ((size_t)(le - ls) > VMDK_MAX_LINE) {
			rc = kl_err(-EUCLEAN, "%s: descriptor line %u is longer than %d bytes", who,
				    lineno, VMDK_MAX_LINE);
			break;
		}
		if (le > ls && le[-1] == '\r')
			le--;
		/* a UTF-8 byte order mark on the first line */
		if (lineno == 1 && le - ls >= 3 && memcmp(ls, "\xef\xbb\xbf", 3) == 0)
			ls += 3;
		for (p = ls; p < le; p++) {
			unsigned char c = (unsigned char)*p;

			if (c < 0x20 && c != '\t') {
				rc = kl_err(-EUCLEAN,
					    "%s: descriptor line %u holds control byte 0x%02x at "
					    "column %zu: not a text descriptor",
					    who, lineno, c, (size_t)(p - ls) + 1);
				break;
			}
		}
		if (rc)
			break;
		trim(&ls, &le);
		if (ls == le || *ls == '#')
			continue;
		p = ls;
		n = next_word(&p, le, &w);
		if (access_word(w, n, &acc) && p < le) {
			rc = parse_extent(out, ls, le, lineno, who);
			continue;
		}
		eq = memchr(ls, '=', (size_t)(le - ls));
		if (!eq)
			continue; /* unknown line shapes are tolerated, as VMware does */
		{
			const char *ks = ls, *ke = eq, *vs = eq + 1, *ve = le;

			trim(&ks, &ke);
			trim(&vs, &ve);
			if (ks == ke) {
				rc = kl_err(-EUCLEAN, "%s: descriptor line %u: '=' without a key",
					    who, lineno);
				break;
			}
			if (ve - vs >= 2 && *vs == '"' && ve[-1] == '"') {
				vs++;
				ve--;
			}
			rc = add_kv(out, ks, (size_t)(ke - ks), vs, (size_t)(ve - vs));
		}
	}
	if (rc == 0)
		rc = digest_keys(out, who);
	if (rc < 0)
		vmdk_desc_release(out);
	return rc;
}

char *vmdk_desc_build(const struct vmdk_desc_params *p)
{
	unsigned heads = strcmp(p->adapter_type, "ide") == 0 ? 16 : 255;
	uint64_t cyl = p->sectors / (63ULL * heads);
	char *parent = p->parent_hint ? kl_asprintf("parentFileNameHint=\"%s\"\n", p->parent_hint) :
					kl_strdup("");
	char *text;

	if (!parent)
		return NULL;
	/* the shape VMware and qemu write; qemu finds keys by substring */
	text = kl_asprintf("# Disk DescriptorFile\n"
			   "version=1\n"
			   "CID=%08x\n"
			   "parentCID=%08x\n"
			   "createType=\"%s\"\n"
			   "%s"
			   "\n"
			   "# Extent description\n"
			   "RW %llu SPARSE \"%s\"\n"
			   "\n"
			   "# The Disk Data Base\n"
			   "#DDB\n"
			   "\n"
			   "ddb.virtualHWVersion = \"%s\"\n"
			   "ddb.geometry.cylinders = \"%llu\"\n"
			   "ddb.geometry.heads = \"%u\"\n"
			   "ddb.geometry.sectors = \"63\"\n"
			   "ddb.adapterType = \"%s\"\n"
			   "ddb.toolsVersion = \"%s\"\n",
			   p->cid, p->parent_cid, p->create_type, parent,
			   (unsigned long long)p->sectors, p->extent_file, p->hw_version,
			   (unsigned long long)cyl, heads, p->adapter_type, p->tools_version);
	kl_free(parent);
	return text;
}

int vmdk_desc_set_cid(char **text, uint32_t cid)
{
	char *t = *text, *line = t, *nt;
	char hex[9];

	snprintf(hex, sizeof(hex), "%08x", cid);
	while (line && *line) {
		char *k = line, *eol = strchr(line, '\n');

		while (is_blank(*k))
			k++;
		if (strncmp(k, "CID", 3) == 0) {
			char *v = k + 3, *ve;

			while (is_blank(*v))
				v++;
			if (*v == '=') {
				v++;
				while (is_blank(*v))
					v++;
				ve = v;
				while (*ve && *ve != '\n' && *ve != '\r' && !is_blank(*ve))
					ve++;
				if (ve - v == 8) {
					memcpy(v, hex, 8);
					return 0;
				}
				nt = kl_asprintf("%.*s%s%s", (int)(v - t), t, hex, ve);
				if (!nt)
					return -ENOMEM;
				kl_free(t);
				*text = nt;
				return 0;
			}
		}
		line = eol ? eol + 1 : NULL;
	}
	return -ENOENT;
}

uint32_t vmdk_new_cid(void)
{
	uint8_t u[16];
	uint32_t cid;

	do {
		kl_uuid_generate(u);
		cid = get_le32(u);
	} while (cid == VMDK_CID_NONE || cid == 0xfffffffe);
	return cid;
}
