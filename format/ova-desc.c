/*
 * format/ova-desc.c - OVF descriptor (XML, through libxml2) and manifest
 * (.mf) parsing for the ova driver. See shared/specs/ova.md.
 *
 * Only what reading a package needs is extracted: References/File,
 * DiskSection/Disk, and for `keel info` the VirtualSystem name, CPU count
 * and memory. Elements and attributes are matched by local name, so OVF
 * 1.x and 2.x envelopes (different namespaces) both work.
 */
#include "format/ova.h"
#include "lib/lazy.h"

#include <stdlib.h>
#include <string.h>

static bool is_elem(const xmlNode *n, const char *local)
{
	return n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, local) == 0;
}

/* Attribute by local name, whatever its namespace prefix; borrowed from the tree. */
static const char *attr(const xmlNode *n, const char *local)
{
	for (const xmlAttr *a = n->properties; a; a = a->next) {
		if (strcmp((const char *)a->name, local) == 0 && a->children &&
		    a->children->type == XML_TEXT_NODE && a->children->content)
			return (const char *)a->children->content;
	}
	return NULL;
}

static int dup_attr(const xmlNode *n, const char *local, char **out)
{
	const char *v = attr(n, local);

	*out = NULL;
	if (!v)
		return 0;
	*out = kl_strdup(v);
	return *out ? 0 : -ENOMEM;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

/* "byte", "byte * 2^20", "byte*2^30", "byte * 1024" -> multiplier. */
static int parse_units(const char *s, uint64_t *mult)
{
	uint64_t e;
	const char *p;

	*mult = 1;
	if (!s)
		return 0;
	while (*s == ' ')
		s++;
	if (strncmp(s, "byte", 4) != 0)
		return -EINVAL;
	p = s + 4;
	while (*p == ' ')
		p++;
	if (!*p)
		return 0;
	if (*p++ != '*')
		return -EINVAL;
	while (*p == ' ')
		p++;
	if (strncmp(p, "2^", 2) == 0) {
		if (parse_u64(p + 2, &e) < 0 || e > 62)
			return -EINVAL;
		*mult = 1ULL << e;
		return 0;
	}
	return parse_u64(p, mult) < 0 || *mult == 0 ? -EINVAL : 0;
}

static const char *text_of(const xmlNode *n)
{
	for (const xmlNode *c = n->children; c; c = c->next)
		if (c->type == XML_TEXT_NODE && c->content)
			return (const char *)c->content;
	return NULL;
}

static const xmlNode *child(const xmlNode *n, const char *local)
{
	for (const xmlNode *c = n->children; c; c = c->next)
		if (is_elem(c, local))
			return c;
	return NULL;
}

static int parse_file(const xmlNode *n, const char *name, struct ova_file *f)
{
	const char *v;

	KL_TRY(dup_attr(n, "id", &f->id));
	KL_TRY(dup_attr(n, "href", &f->href));
	KL_TRY(dup_attr(n, "compression", &f->compression));
	if (!f->id || !f->href || !*f->href)
		return kl_err(-EUCLEAN, "%s: References/File without ovf:id or ovf:href (line %d)",
			      name, n->line);
	if ((v = attr(n, "size"))) {
		if (parse_u64(v, &f->size) < 0)
			return kl_err(-EUCLEAN, "%s: File '%s' has a bad ovf:size '%s'", name,
				      f->id, v);
		f->has_size = true;
	}
	if ((v = attr(n, "chunkSize")) &&
	    (parse_u64(v, &f->chunk_size) < 0 || f->chunk_size == 0))
		return kl_err(-EUCLEAN, "%s: File '%s' has a bad ovf:chunkSize '%s'", name, f->id,
			      v);
	return 0;
}

static int parse_disk(const xmlNode *n, const char *name, struct ova_disk *dk)
{
	const char *v;
	uint64_t cap, mult;

	KL_TRY(dup_attr(n, "diskId", &dk->id));
	KL_TRY(dup_attr(n, "fileRef", &dk->file_ref));
	KL_TRY(dup_attr(n, "format", &dk->format));
	if (!dk->id)
		return kl_err(-EUCLEAN, "%s: DiskSection/Disk without ovf:diskId (line %d)", name,
			      n->line);
	v = attr(n, "capacity");
	if (!v || parse_u64(v, &cap) < 0)
		return kl_err(-EUCLEAN, "%s: Disk '%s' has no usable ovf:capacity ('%s')", name,
			      dk->id, v ? v : "");
	if (parse_units(attr(n, "capacityAllocationUnits"), &mult) < 0)
		return kl_err(-ENOTSUP, "%s: Disk '%s': capacity units '%s' not understood", name,
			      dk->id, attr(n, "capacityAllocationUnits"));
	if (kl_mul_overflow(cap, mult, &dk->capacity))
		return kl_err(-EUCLEAN, "%s: Disk '%s': capacity overflows", name, dk->id);
	if ((v = attr(n, "populatedSize")) && parse_u64(v, &dk->populated) < 0)
		dk->populated = 0;
	return 0;
}

/* VirtualSystem facts for keel info; missing or odd values are just left out. */
static void parse_system(const xmlNode *vs, struct ova_desc *out)
{
	const xmlNode *hw = child(vs, "VirtualHardwareSection");
	const xmlNode *nm = child(vs, "Name");
	const char *v = nm ? text_of(nm) : attr(vs, "id");

	if (v && !out->vm_name)
		out->vm_name = kl_strdup(v);
	for (const xmlNode *it = hw ? hw->children : NULL; it; it = it->next) {
		const xmlNode *rt, *q;
		uint64_t type, qty;

		if (!is_elem(it, "Item"))
			continue;
		rt = child(it, "ResourceType");
		q = child(it, "VirtualQuantity");
		if (!rt || !q || parse_u64(text_of(rt), &type) < 0 ||
		    parse_u64(text_of(q), &qty) < 0)
			continue;
		if (type == 3)
			out->cpus = qty;
		else if (type == 4)
			out->memory_mib = qty;
	}
}

int ova_parse_ovf(const void *buf, size_t len, const char *name, struct ova_desc *out)
{
	xmlDoc *doc;
	const xmlNode *root;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	if (len > OVA_MAX_OVF || len > INT32_MAX)
		return kl_err(-EUCLEAN, "%s: descriptor of %zu bytes is larger than %u", name, len,
			      OVA_MAX_OVF);
	KL_TRY(kl_xml_load()); /* once; it also runs xmlInitParser */
	doc = kl_lx.xmlReadMemory(buf, (int)len, name, NULL,
				  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	if (!doc) {
		const xmlError *e = kl_lx.xmlGetLastError();

		return kl_err(-EUCLEAN, "%s: descriptor is not well-formed XML%s%s", name,
			      e && e->message ? ": " : "", e && e->message ? e->message : "");
	}
	root = kl_lx.xmlDocGetRootElement(doc);
	if (!root || !is_elem(root, "Envelope")) {
		rc = kl_err(-EUCLEAN, "%s: the root element is not an OVF Envelope", name);
		goto out;
	}
	if (root->ns && root->ns->href) {
		const char *ns = (const char *)root->ns->href;

		if (strcmp(ns, "http://schemas.dmtf.org/ovf/envelope/1") == 0)
			out->version = 1;
		else if (strcmp(ns, "http://schemas.dmtf.org/ovf/envelope/2") == 0)
			out->version = 2;
	}
	for (const xmlNode *n = root->children; n && rc == 0; n = n->next) {
		if (is_elem(n, "References")) {
			for (const xmlNode *f = n->children; f && rc == 0; f = f->next) {
				struct ova_file *nv;

				if (!is_elem(f, "File"))
					continue;
				if (out->nfiles >= OVA_MAX_FILES) {
					rc = kl_err(-EUCLEAN, "%s: more than %d files referenced",
						    name, OVA_MAX_FILES);
					break;
				}
				nv = kl_realloc(out->files, (out->nfiles + 1) * sizeof(*nv));
				if (!nv) {
					rc = -ENOMEM;
					break;
				}
				out->files = nv;
				memset(&nv[out->nfiles], 0, sizeof(*nv));
				out->nfiles++;
				rc = parse_file(f, name, &nv[out->nfiles - 1]);
			}
		} else if (is_elem(n, "DiskSection")) {
			for (const xmlNode *dn = n->children; dn && rc == 0; dn = dn->next) {
				struct ova_disk *nv;

				if (!is_elem(dn, "Disk"))
					continue;
				if (out->ndisks >= OVA_MAX_DISKS) {
					rc = kl_err(-EUCLEAN, "%s: more than %d disks", name,
						    OVA_MAX_DISKS);
					break;
				}
				nv = kl_realloc(out->disks, (out->ndisks + 1) * sizeof(*nv));
				if (!nv) {
					rc = -ENOMEM;
					break;
				}
				out->disks = nv;
				memset(&nv[out->ndisks], 0, sizeof(*nv));
				out->ndisks++;
				rc = parse_disk(dn, name, &nv[out->ndisks - 1]);
			}
		} else if (is_elem(n, "VirtualSystem")) {
			parse_system(n, out);
		} else if (is_elem(n, "VirtualSystemCollection")) {
			for (const xmlNode *vs = n->children; vs; vs = vs->next)
				if (is_elem(vs, "VirtualSystem"))
					parse_system(vs, out);
		}
	}
	for (size_t i = 0; rc == 0 && i < out->ndisks; i++) {
		const struct ova_disk *dk = &out->disks[i];
		bool found = false;

		for (size_t k = 0; dk->file_ref && k < out->nfiles; k++)
			found = found || strcmp(out->files[k].id, dk->file_ref) == 0;
		if (dk->file_ref && !found)
			rc = kl_err(-EUCLEAN, "%s: Disk '%s' refers to file '%s', which References "
					      "does not list",
				    name, dk->id, dk->file_ref);
		for (size_t k = 0; rc == 0 && k < i; k++)
			if (strcmp(out->disks[k].id, dk->id) == 0)
				rc = kl_err(-EUCLEAN, "%s: disk id '%s' appears twice", name,
					    dk->id);
	}
out:
	kl_lx.xmlFreeDoc(doc);
	if (rc < 0)
		ova_desc_release(out);
	return rc;
}

void ova_desc_release(struct ova_desc *d)
{
	for (size_t i = 0; i < d->nfiles; i++) {
		kl_free(d->files[i].id);
		kl_free(d->files[i].href);
		kl_free(d->files[i].compression);
	}
	for (size_t i = 0; i < d->ndisks; i++) {
		kl_free(d->disks[i].id);
		kl_free(d->disks[i].file_ref);
		kl_free(d->disks[i].format);
	}
	kl_free(d->files);
	kl_free(d->disks);
	kl_free(d->vm_name);
	memset(d, 0, sizeof(*d));
}

/* ------------------------------------------------------------------ manifest */

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

static int parse_mf_line(const char *l, size_t n, const char *name, unsigned lineno,
			 struct ova_mf_entry *e)
{
	static const struct {
		const char *word;
		enum ova_algo algo;
		size_t dlen;
	} algos[] = { { "SHA1(", OVA_SHA1, 20 }, { "SHA256(", OVA_SHA256, 32 },
		      { "SHA512(", OVA_SHA512, 64 } };
	const char *p = NULL, *close, *end = l + n;
	size_t hex;

	memset(e, 0, sizeof(*e));
	for (size_t i = 0; i < KL_ARRAY_SIZE(algos); i++) {
		size_t wl = strlen(algos[i].word);

		if (n > wl && strncmp(l, algos[i].word, wl) == 0) {
			e->algo = algos[i].algo;
			e->dlen = algos[i].dlen;
			p = l + wl;
		}
	}
	if (!p)
		return kl_err(-EUCLEAN, "%s: line %u: expected SHA1(...), SHA256(...) or "
					"SHA512(...)",
			      name, lineno);
	/* the name may hold ')': the last ")=" ends it */
	close = NULL;
	for (const char *q = p; q + 1 < end; q++)
		if (q[0] == ')' && q[1] == '=')
			close = q;
	if (!close || close == p)
		return kl_err(-EUCLEAN, "%s: line %u: no ')=' after the file name", name, lineno);
	e->name = kl_strndup(p, (size_t)(close - p));
	if (!e->name)
		return -ENOMEM;
	p = close + 2;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	hex = (size_t)(end - p);
	while (hex && (p[hex - 1] == ' ' || p[hex - 1] == '\t' || p[hex - 1] == '\r'))
		hex--;
	if (hex != 2 * e->dlen)
		goto bad;
	for (size_t i = 0; i < e->dlen; i++) {
		int hi = hexval(p[2 * i]), lo = hexval(p[2 * i + 1]);

		if (hi < 0 || lo < 0)
			goto bad;
		e->digest[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
bad:
	kl_free(e->name);
	e->name = NULL;
	return kl_err(-EUCLEAN, "%s: line %u: digest is not %zu hex digits", name, lineno,
		      2 * e->dlen);
}

int ova_parse_mf(const char *buf, size_t len, const char *name, struct ova_mf_entry **out,
		 size_t *n)
{
	struct ova_mf_entry *v = NULL;
	size_t cnt = 0, pos = 0;
	unsigned lineno = 0;
	int rc = 0;

	*out = NULL;
	*n = 0;
	if (len > OVA_MAX_MF)
		return kl_err(-EUCLEAN, "%s: manifest of %zu bytes is larger than %u", name, len,
			      OVA_MAX_MF);
	while (pos < len && rc == 0) {
		const char *l = buf + pos;
		const char *nl = memchr(l, '\n', len - pos);
		size_t ll = nl ? (size_t)(nl - l) : len - pos;
		struct ova_mf_entry *nv;

		pos += ll + (nl ? 1 : 0);
		lineno++;
		while (ll && (l[ll - 1] == '\r' || l[ll - 1] == ' '))
			ll--;
		if (ll == 0)
			continue;
		if (memchr(l, '\0', ll)) {
			rc = kl_err(-EUCLEAN, "%s: line %u holds a NUL byte", name, lineno);
			break;
		}
		nv = kl_realloc(v, (cnt + 1) * sizeof(*nv));
		if (!nv) {
			rc = -ENOMEM;
			break;
		}
		v = nv;
		rc = parse_mf_line(l, ll, name, lineno, &v[cnt]);
		if (rc == 0)
			cnt++;
		if (cnt > OVA_MAX_FILES * 4)
			rc = kl_err(-EUCLEAN, "%s: too many manifest lines", name);
	}
	if (rc < 0) {
		ova_mf_free(v, cnt);
		return rc;
	}
	*out = v;
	*n = cnt;
	return 0;
}

void ova_mf_free(struct ova_mf_entry *e, size_t n)
{
	for (size_t i = 0; e && i < n; i++)
		kl_free(e[i].name);
	kl_free(e);
}
