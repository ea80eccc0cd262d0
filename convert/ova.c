/*
 * convert/ova.c - keel convert -O ova: an OVF package as one tar, the way
 * ESXi and VirtualBox import it. See shared/specs/ova.md.
 *
 * Layout (DSP0243 order, USTAR through libarchive):
 *   NAME.ovf        the descriptor (References, DiskSection, NetworkSection,
 *                   VirtualSystem with OperatingSystemSection and a
 *                   VirtualHardwareSection of family vmx-NN)
 *   NAME.mf         "SHA256(file)= hex" for the descriptor and every disk member
 *   NAME-disk1.vmdk streamOptimized VMDK (split into NAME-disk1.vmdk.000000000,
 *                   ... with ovf:chunkSize when larger than a USTAR member holds)
 *
 * The descriptor needs the disk's exact size and the manifest its digest,
 * and both precede the disk, so the disk is first converted (by the
 * parallel pipeline) into a temporary VMDK beside DST, hashed, then
 * streamed into the tar. Both temporaries carry the run's pid, so a
 * killed run's leftovers are removed by the next one.
 */
#define _GNU_SOURCE
#include "convert/conv_int.h"
#include "lib/lazy.h"

#include <libgen.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The USTAR size field holds 8 GiB - 1; split above this. */
#define OVA_USTAR_MAX ((8ULL << 30) - 1)
#define OVA_DEFAULT_CHUNK (4ULL << 30)

/* ------------------------------------------------------------------ text */

void conv_buf_add(struct conv_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->rc < 0)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->rc = -EINVAL;
			return;
		}
		if (b->s && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		{
			size_t ncap = KL_MAX(b->cap * 2, b->len + (size_t)n + 256);
			char *ns = kl_realloc(b->s, ncap);

			if (!ns) {
				b->rc = -ENOMEM;
				return;
			}
			b->s = ns;
			b->cap = ncap;
		}
	}
}

void conv_buf_xml(struct conv_buf *b, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '&':
			conv_buf_add(b, "&amp;");
			break;
		case '<':
			conv_buf_add(b, "&lt;");
			break;
		case '>':
			conv_buf_add(b, "&gt;");
			break;
		case '"':
			conv_buf_add(b, "&quot;");
			break;
		case '\'':
			conv_buf_add(b, "&apos;");
			break;
		default:
			if ((unsigned char)*s >= 0x20 || *s == '\t' || *s == '\n')
				conv_buf_add(b, "%c", *s);
		}
	}
}

/* ------------------------------------------------------------------ options */

struct ova_cfg {
	const char *name;
	uint64_t cpus;
	uint64_t memory;      /* MiB */
	const char *manifest; /* "sha256", "sha1", "none" */
	const char *network;  /* NULL: no NIC */
	const char *controller;
	uint64_t vmx;
	uint64_t os;
	uint64_t chunk;	      /* member size limit */
	char *base;	      /* allocated default name */
};

static bool name_ok(const char *s)
{
	if (!*s || strlen(s) > 64)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

static int u64_opt(struct kl_opts *o, const char *key, uint64_t lo, uint64_t hi, uint64_t *v)
{
	const char *s = kl_opts_get(o, key);

	if (!s)
		return 0;
	if (kl_parse_u64(s, v) < 0 || *v < lo || *v > hi)
		return kl_err(-EINVAL, "ova: %s must be a number from %llu to %llu, not '%s'", key,
			      (unsigned long long)lo, (unsigned long long)hi, s);
	return 0;
}

static int parse_cfg(const struct conv_opts *o, struct kl_opts *op, struct ova_cfg *c)
{
	char *copy = kl_strdup(o->dst), *dot;
	bool found;

	memset(c, 0, sizeof(*c));
	if (!copy)
		return -ENOMEM;
	c->base = kl_strdup(basename(copy));
	kl_free(copy);
	if (!c->base)
		return -ENOMEM;
	dot = strrchr(c->base, '.');
	if (dot && dot != c->base)
		*dot = '\0';
	c->name = kl_opts_get(op, "name");
	if (!c->name)
		c->name = name_ok(c->base) ? c->base : "vm";
	if (!name_ok(c->name))
		return kl_err(-EINVAL, "ova: name '%s' must be 1-64 letters, digits, '-', '_' or '.'",
			      c->name);
	c->cpus = 1;
	c->memory = 1024;
	c->vmx = 10;
	c->os = 1;
	KL_TRY(u64_opt(op, "cpus", 1, 128, &c->cpus));
	KL_TRY(u64_opt(op, "memory", 4, 16ULL << 20, &c->memory));
	KL_TRY(u64_opt(op, "vmx", 4, 99, &c->vmx));
	KL_TRY(u64_opt(op, "os", 0, 200, &c->os));
	c->manifest = kl_opts_get(op, "manifest");
	if (!c->manifest)
		c->manifest = "sha256";
	if (strcmp(c->manifest, "sha256") && strcmp(c->manifest, "sha1") &&
	    strcmp(c->manifest, "none"))
		return kl_err(-EINVAL, "ova: manifest must be sha256, sha1 or none, not '%s'",
			      c->manifest);
	c->network = kl_opts_get(op, "network");
	if (!c->network)
		c->network = "VM Network";
	if (!strcmp(c->network, "none") || !*c->network)
		c->network = NULL;
	c->controller = kl_opts_get(op, "controller");
	if (!c->controller)
		c->controller = "scsi";
	if (strcmp(c->controller, "scsi") && strcmp(c->controller, "sata") &&
	    strcmp(c->controller, "ide"))
		return kl_err(-EINVAL, "ova: controller must be scsi, sata or ide, not '%s'",
			      c->controller);
	c->chunk = OVA_DEFAULT_CHUNK;
	KL_TRY(kl_opts_get_size(op, "chunk_size", &c->chunk, &found));
	if (found && (c->chunk < 4096 || c->chunk > OVA_USTAR_MAX || c->chunk % 512))
		return kl_err(-EINVAL, "ova: chunk_size must be a multiple of 512 from 4 KiB to "
				       "8 GiB - 512");
	if (!found)
		c->chunk = 0; /* split only when a member would not fit */
	return 0;
}

/* ------------------------------------------------------------------ descriptor */

static void item_open(struct conv_buf *b, const char *comment)
{
	conv_buf_add(b, "      <Item> <!-- %s -->\n", comment);
}

static void rasd(struct conv_buf *b, const char *key, const char *val)
{
	conv_buf_add(b, "        <rasd:%s>", key);
	conv_buf_xml(b, val);
	conv_buf_add(b, "</rasd:%s>\n", key);
}

static void rasd_u(struct conv_buf *b, const char *key, uint64_t v)
{
	conv_buf_add(b, "        <rasd:%s>%llu</rasd:%s>\n", key, (unsigned long long)v, key);
}

/* One disk of the package. */
struct ova_disk_out {
	const char *src;
	char *vtmp;	   /* the converted VMDK, beside DST */
	char *href;	   /* its member name */
	uint64_t vsize;	   /* bytes of the VMDK */
	uint64_t capacity; /* its virtual size */
	uint64_t populated;
	uint64_t chunk;	   /* member size when split, else 0 */
	uint64_t nchunks;
};

static int make_ovf(const struct ova_cfg *c, const struct ova_disk_out *dk, size_t n,
		    struct conv_buf *b)
{
	char tmp[96];

	conv_buf_add(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
			"<!-- written by keel " KL_VERSION " -->\n"
			"<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"\n"
			"    xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"\n"
			"    xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
			"CIM_ResourceAllocationSettingData\"\n"
			"    xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
			"CIM_VirtualSystemSettingData\">\n");
	conv_buf_add(b, "  <References>\n");
	for (size_t i = 0; i < n; i++) {
		conv_buf_add(b, "    <File ovf:id=\"file%zu\" ovf:href=\"", i + 1);
		conv_buf_xml(b, dk[i].href);
		conv_buf_add(b, "\" ovf:size=\"%llu\"", (unsigned long long)dk[i].vsize);
		if (dk[i].chunk)
			conv_buf_add(b, " ovf:chunkSize=\"%llu\"", (unsigned long long)dk[i].chunk);
		conv_buf_add(b, "/>\n");
	}
	conv_buf_add(b, "  </References>\n  <DiskSection>\n    <Info>Virtual disk information</Info>\n");
	for (size_t i = 0; i < n; i++)
		conv_buf_add(b, "    <Disk ovf:diskId=\"vmdisk%zu\" ovf:fileRef=\"file%zu\" "
				"ovf:capacity=\"%llu\" ovf:capacityAllocationUnits=\"byte\"\n"
				"        ovf:populatedSize=\"%llu\"\n"
				"        ovf:format=\"http://www.vmware.com/interfaces/specifications/"
				"vmdk.html#streamOptimized\"/>\n",
			     i + 1, i + 1, (unsigned long long)dk[i].capacity,
			     (unsigned long long)dk[i].populated);
	conv_buf_add(b, "  </DiskSection>\n");
	if (c->network) {
		conv_buf_add(b, "  <NetworkSection>\n    <Info>Logical networks</Info>\n"
				"    <Network ovf:name=\"");
		conv_buf_xml(b, c->network);
		conv_buf_add(b, "\">\n      <Description>");
		conv_buf_xml(b, c->network);
		conv_buf_add(b, "</Description>\n    </Network>\n  </NetworkSection>\n");
	}
	conv_buf_add(b, "  <VirtualSystem ovf:id=\"");
	conv_buf_xml(b, c->name);
	conv_buf_add(b, "\">\n    <Info>A virtual machine</Info>\n    <Name>");
	conv_buf_xml(b, c->name);
	conv_buf_add(b, "</Name>\n    <OperatingSystemSection ovf:id=\"%llu\">\n"
			"      <Info>Guest operating system</Info>\n"
			"    </OperatingSystemSection>\n",
		     (unsigned long long)c->os);
	conv_buf_add(b, "    <VirtualHardwareSection>\n"
			"      <Info>Virtual hardware requirements</Info>\n"
			"      <System>\n"
			"        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n"
			"        <vssd:InstanceID>0</vssd:InstanceID>\n"
			"        <vssd:VirtualSystemIdentifier>");
	conv_buf_xml(b, c->name);
	conv_buf_add(b, "</vssd:VirtualSystemIdentifier>\n"
			"        <vssd:VirtualSystemType>vmx-%02llu</vssd:VirtualSystemType>\n"
			"      </System>\n",
		     (unsigned long long)c->vmx);
	item_open(b, "CPU");
	rasd(b, "AllocationUnits", "hertz * 10^6");
	snprintf(tmp, sizeof(tmp), "%llu virtual CPU(s)", (unsigned long long)c->cpus);
	rasd(b, "ElementName", tmp);
	rasd_u(b, "InstanceID", 1);
	rasd_u(b, "ResourceType", 3);
	rasd_u(b, "VirtualQuantity", c->cpus);
	conv_buf_add(b, "      </Item>\n");
	item_open(b, "memory");
	rasd(b, "AllocationUnits", "byte * 2^20");
	snprintf(tmp, sizeof(tmp), "%lluMB of memory", (unsigned long long)c->memory);
	rasd(b, "ElementName", tmp);
	rasd_u(b, "InstanceID", 2);
	rasd_u(b, "ResourceType", 4);
	rasd_u(b, "VirtualQuantity", c->memory);
	conv_buf_add(b, "      </Item>\n");
	/* IDE: two devices per controller; SCSI and SATA: one controller holds them all */
	for (size_t k = 0; k < (strcmp(c->controller, "ide") ? 1 : (n + 1) / 2); k++) {
		item_open(b, "disk controller");
		rasd_u(b, "Address", k);
		if (!strcmp(c->controller, "scsi")) {
			rasd(b, "ElementName", "SCSI controller 0");
			rasd_u(b, "InstanceID", 3);
			rasd(b, "ResourceSubType", "lsilogic");
			rasd_u(b, "ResourceType", 6);
		} else if (!strcmp(c->controller, "sata")) {
			rasd(b, "ElementName", "SATA controller 0");
			rasd_u(b, "InstanceID", 3);
			rasd(b, "ResourceSubType", "vmware.sata.ahci");
			rasd_u(b, "ResourceType", 20);
		} else {
			snprintf(tmp, sizeof(tmp), "IDE controller %zu", k);
			rasd(b, "ElementName", tmp);
			rasd_u(b, "InstanceID", 3 + k);
			rasd_u(b, "ResourceType", 5);
		}
		conv_buf_add(b, "      </Item>\n");
	}
	for (size_t i = 0; i < n; i++) {
		bool ide = !strcmp(c->controller, "ide");
		/* SCSI unit 7 is the controller itself */
		uint64_t addr = ide ? i % 2 : (!strcmp(c->controller, "scsi") && i >= 7 ? i + 1 : i);

		item_open(b, "disk");
		rasd_u(b, "AddressOnParent", addr);
		snprintf(tmp, sizeof(tmp), "Hard disk %zu", i + 1);
		rasd(b, "ElementName", tmp);
		snprintf(tmp, sizeof(tmp), "ovf:/disk/vmdisk%zu", i + 1);
		rasd(b, "HostResource", tmp);
		rasd_u(b, "InstanceID", 100 + i);
		rasd_u(b, "Parent", ide ? 3 + i / 2 : 3);
		rasd_u(b, "ResourceType", 17);
		conv_buf_add(b, "      </Item>\n");
	}
	if (c->network) {
		item_open(b, "network adapter");
		rasd_u(b, "AddressOnParent", 7);
		rasd(b, "AutomaticAllocation", "true");
		rasd(b, "Connection", c->network);
		rasd(b, "ElementName", "Network adapter 1");
		rasd_u(b, "InstanceID", 99);
		rasd(b, "ResourceSubType", "E1000");
		rasd_u(b, "ResourceType", 10);
		conv_buf_add(b, "      </Item>\n");
	}
	conv_buf_add(b, "    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
	return b->rc;
}

/* ------------------------------------------------------------------ digests */

static void hexify(const uint8_t *d, size_t n, char *out)
{
	static const char hx[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hx[d[i] >> 4];
		out[2 * i + 1] = hx[d[i] & 15];
	}
	out[2 * n] = '\0';
}

static const EVP_MD *mf_md(const struct ova_cfg *c)
{
	return strcmp(c->manifest, "sha1") == 0 ? EVP_sha1() : EVP_sha256();
}

static const char *mf_word(const struct ova_cfg *c)
{
	return strcmp(c->manifest, "sha1") == 0 ? "SHA1" : "SHA256";
}

static void mf_line(struct conv_buf *b, const struct ova_cfg *c, const char *name,
		    const uint8_t *dg, unsigned dl)
{
	char hex[2 * EVP_MAX_MD_SIZE + 1];

	hexify(dg, dl, hex);
	conv_buf_add(b, "%s(%s)= %s\n", mf_word(c), name, hex);
}

/* Digest of [off, off+len) of f. */
static int hash_range(struct kl_file *f, uint64_t off, uint64_t len, const EVP_MD *md,
		      uint8_t *dg, unsigned *dl, uint8_t *buf, size_t bufsz)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int rc = 0;

	if (!ctx || !EVP_DigestInit_ex(ctx, md, NULL)) {
		EVP_MD_CTX_free(ctx);
		return -ENOMEM;
	}
	for (uint64_t done = 0; done < len && rc == 0;) {
		size_t n = (size_t)KL_MIN(len - done, (uint64_t)bufsz);

		rc = kl_io_pread_full(f, off + done, buf, n, "temporary disk");
		if (rc == 0)
			EVP_DigestUpdate(ctx, buf, n);
		done += n;
	}
	if (rc == 0)
		EVP_DigestFinal_ex(ctx, dg, dl);
	EVP_MD_CTX_free(ctx);
	return rc;
}

/* ------------------------------------------------------------------ tar */

struct tar_out {
	struct kl_file *f;
	uint64_t pos;
	int rc;
};

static la_ssize_t tar_write(struct archive *a, void *opaque, const void *buf, size_t len)
{
	struct tar_out *t = opaque;
	int rc = kl_io_pwrite(t->f, t->pos, buf, len);

	if (rc < 0) {
		t->rc = rc;
		kl_la.archive_set_error(a, -rc, "%s", kl_errmsg());
		return -1;
	}
	t->pos += len;
	return (la_ssize_t)len;
}

static int tar_err(struct archive *a, struct tar_out *t, const char *tmp, const char *what)
{
	if (t->rc < 0)
		return t->rc;
	return kl_err(-EIO, "%s: writing %s: %s", tmp, what,
		      kl_la.archive_error_string(a) ? kl_la.archive_error_string(a) : "libarchive error");
}

static int tar_entry(struct archive *a, struct tar_out *t, const char *tmp, const char *name,
		     uint64_t size, time_t mtime)
{
	struct archive_entry *e = kl_la.archive_entry_new();
	int ar;

	if (!e)
		return -ENOMEM;
	kl_la.archive_entry_set_pathname(e, name);
	kl_la.archive_entry_set_size(e, (la_int64_t)size);
	kl_la.archive_entry_set_filetype(e, AE_IFREG);
	kl_la.archive_entry_set_perm(e, 0644);
	kl_la.archive_entry_set_uid(e, 0);
	kl_la.archive_entry_set_gid(e, 0);
	kl_la.archive_entry_set_mtime(e, mtime, 0);
	ar = kl_la.archive_write_header(a, e);
	kl_la.archive_entry_free(e);
	if (ar != ARCHIVE_OK)
		return tar_err(a, t, tmp, name);
	return 0;
}

static int tar_data(struct archive *a, struct tar_out *t, const char *tmp, const char *name,
		    const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		la_ssize_t n = kl_la.archive_write_data(a, p, len);

		if (n <= 0)
			return tar_err(a, t, tmp, name);
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* ------------------------------------------------------------------ run */

static char *chunk_name(const struct ova_disk_out *dk, uint64_t i)
{
	return dk->chunk ? kl_asprintf("%s.%09llu", dk->href, (unsigned long long)i)
			 : kl_strdup(dk->href);
}

/* Convert disk i into its temporary VMDK and note its sizes. */
static int ova_make_disk(const struct conv_opts *o, struct conv_opts *vo, const struct ova_cfg *c,
			 struct ova_disk_out *dk, size_t i, struct conv_stats *st)
{
	struct blk_open_opts oo = { .format = "vmdk" };
	struct conv_stats ds = { 0 };
	struct blk_dev *vd;
	struct stat sst;
	char tag[32];

	snprintf(tag, sizeof(tag), "disk%zu.vmdk", i + 1);
	dk->vtmp = conv_temp_name(o->dst, tag);
	dk->href = kl_asprintf("%s-disk%zu.vmdk", c->name, i + 1);
	if (!dk->vtmp || !dk->href)
		return -ENOMEM;
	vo->src = dk->src;
	vo->src_select = i == 0 ? o->src_select : NULL;
	/* the disk's final name is its member name (a VMDK records it in its extent line) */
	vo->dst = dk->href;
	KL_TRY(conv_into(vo, dk->vtmp, &ds));
	if (o->verify) {
		KL_TRY(conv_verify_file(vo, dk->vtmp, "vmdk", &ds));
		st->verified = true;
	}
	KL_TRY(blk_open(dk->vtmp, &oo, &vd));
	dk->capacity = blk_size(vd);
	blk_close(vd);
	if (stat(dk->vtmp, &sst) != 0)
		return kl_err(-errno, "%s: %s", dk->vtmp, strerror(errno));
	dk->vsize = (uint64_t)sst.st_size;
	dk->populated = ds.bytes_written;
	dk->chunk = c->chunk;
	if (!dk->chunk && dk->vsize > OVA_USTAR_MAX)
		dk->chunk = OVA_DEFAULT_CHUNK;
	dk->nchunks = dk->chunk ? KL_MAX(1, KL_DIV_ROUND_UP(dk->vsize, dk->chunk)) : 1;
	st->virtual_size += ds.virtual_size;
	st->bytes_read += ds.bytes_read;
	st->bytes_written += ds.bytes_written;
	st->zero_skipped += ds.zero_skipped;
	st->zero_detected += ds.zero_detected;
	st->bytes_stored += dk->vsize;
	st->threads = ds.threads;
	st->memory_bound = ds.memory_bound;
	return 0;
}

int conv_ova_write(const struct conv_opts *o, const char *tmp, struct conv_stats *st)
{
	struct conv_opts vo = *o;
	struct ova_cfg c;
	struct kl_opts *op = o->dst_opts;
	struct conv_buf ovf = { 0 }, mf = { 0 };
	struct tar_out t = { 0 };
	struct archive *a = NULL;
	struct kl_file *vf = NULL;
	struct ova_disk_out *dk = NULL;
	size_t n = 1 + o->n_extra_srcs;
	char *ovf_name = NULL, *mf_name = NULL;
	uint8_t *buf = NULL;
	const size_t bufsz = 1u << 20;
	time_t mtime = (time_t)(kl_wallclock_ns() / 1000000000ULL);
	uint8_t dg[EVP_MAX_MD_SIZE];
	unsigned dl;
	int rc;

	memset(&c, 0, sizeof(c));
	rc = parse_cfg(o, op, &c);
	if (rc < 0)
		goto out;
	if (n > 60 || (!strcmp(c.controller, "ide") && n > 4)) {
		rc = kl_err(-EINVAL, "ova: %zu disks is more than the %s controller%s hold%s", n,
			    c.controller, strcmp(c.controller, "ide") ? "" : "s",
			    strcmp(c.controller, "ide") ? "s" : "");
		goto out;
	}
	/* the disks: streamOptimized with the adapter the controller implies */
	if (!kl_opts_peek(op, "adapter_type"))
		rc = kl_opts_set(&op, "adapter_type",
				 strcmp(c.controller, "scsi") == 0 ? "lsilogic" : "ide");
	if (rc == 0)
		rc = kl_opts_set(&op, "subformat", "streamOptimized");
	if (rc < 0)
		goto out;
	vo.dst_opts = op;
	vo.dst_fmt = "vmdk";
	vo.compress = false;
	if (!blk_driver_find("vmdk")) {
		rc = kl_err(-ENOTSUP, "-O ova needs the vmdk driver, which this keel lacks");
		goto out;
	}
	dk = kl_calloc(n, sizeof(*dk));
	ovf_name = kl_asprintf("%s.ovf", c.name);
	mf_name = kl_asprintf("%s.mf", c.name);
	buf = kl_malloc(bufsz);
	if (!dk || !ovf_name || !mf_name || !buf) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n && rc == 0; i++) {
		dk[i].src = i == 0 ? o->src : o->extra_srcs[i - 1];
		rc = ova_make_disk(o, &vo, &c, &dk[i], i, st);
		if (rc < 0)
			rc = kl_err_prefix(rc, "ova: disk %zu (%s)", i + 1, dk[i].src);
	}
	if (rc == 0)
		rc = make_ovf(&c, dk, n, &ovf);
	if (rc < 0)
		goto out;
	if (strcmp(c.manifest, "none") != 0) {
		if (!EVP_Digest(ovf.s, ovf.len, dg, &dl, mf_md(&c), NULL)) {
			rc = -ENOMEM;
			goto out;
		}
		mf_line(&mf, &c, ovf_name, dg, dl);
		for (size_t d = 0; d < n && rc == 0; d++) {
			rc = kl_io_open(dk[d].vtmp, KL_O_RDONLY, &vf);
			for (uint64_t i = 0; i < dk[d].nchunks && rc == 0; i++) {
				uint64_t off = dk[d].chunk ? i * dk[d].chunk : 0;
				uint64_t len = dk[d].chunk ? KL_MIN(dk[d].chunk, dk[d].vsize - off)
							   : dk[d].vsize;
				char *cn = chunk_name(&dk[d], i);

				if (!cn) {
					rc = -ENOMEM;
					break;
				}
				rc = hash_range(vf, off, len, mf_md(&c), dg, &dl, buf, bufsz);
				if (rc == 0)
					mf_line(&mf, &c, cn, dg, dl);
				kl_free(cn);
			}
			kl_io_close(vf);
			vf = NULL;
		}
		if (rc == 0)
			rc = mf.rc;
		if (rc < 0)
			goto out;
	}
	if (conv_interrupted()) {
		rc = kl_err(-EINTR, "interrupted by signal %d", conv_interrupted());
		goto out;
	}

	rc = kl_io_open(tmp, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC | conv_kl_cache_flags(o), &t.f);
	if (rc < 0)
		goto out;
	rc = kl_archive_load();
	if (rc < 0)
		goto out;
	a = kl_la.archive_write_new();
	if (!a) {
		rc = -ENOMEM;
		goto out;
	}
	if (kl_la.archive_write_set_format_ustar(a) != ARCHIVE_OK ||
	    kl_la.archive_write_open(a, &t, NULL, tar_write, NULL) != ARCHIVE_OK) {
		rc = tar_err(a, &t, tmp, "the archive header");
		goto out;
	}
	rc = tar_entry(a, &t, tmp, ovf_name, ovf.len, mtime);
	if (rc == 0)
		rc = tar_data(a, &t, tmp, ovf_name, ovf.s, ovf.len);
	if (rc == 0 && mf.len) {
		rc = tar_entry(a, &t, tmp, mf_name, mf.len, mtime);
		if (rc == 0)
			rc = tar_data(a, &t, tmp, mf_name, mf.s, mf.len);
	}
	for (size_t d = 0; d < n && rc == 0; d++) {
		rc = kl_io_open(dk[d].vtmp, KL_O_RDONLY, &vf);
		for (uint64_t i = 0; i < dk[d].nchunks && rc == 0; i++) {
			uint64_t off = dk[d].chunk ? i * dk[d].chunk : 0;
			uint64_t len = dk[d].chunk ? KL_MIN(dk[d].chunk, dk[d].vsize - off)
						   : dk[d].vsize;
			char *cn = chunk_name(&dk[d], i);

			if (!cn) {
				rc = -ENOMEM;
				break;
			}
			rc = tar_entry(a, &t, tmp, cn, len, mtime);
			for (uint64_t done = 0; rc == 0 && done < len;) {
				size_t m = (size_t)KL_MIN(len - done, (uint64_t)bufsz);

				if (conv_interrupted()) {
					rc = kl_err(-EINTR, "interrupted by signal %d",
						    conv_interrupted());
					break;
				}
				rc = kl_io_pread_full(vf, off + done, buf, m, "temporary disk");
				if (rc == 0)
					rc = tar_data(a, &t, tmp, cn, buf, m);
				done += m;
			}
			kl_free(cn);
		}
		kl_io_close(vf);
		vf = NULL;
	}
	if (rc == 0 && kl_la.archive_write_close(a) != ARCHIVE_OK)
		rc = tar_err(a, &t, tmp, "the archive trailer");
	if (rc == 0)
		rc = kl_io_sync(t.f);
out:
	if (a)
		kl_la.archive_write_free(a);
	kl_io_close(t.f);
	kl_io_close(vf);
	for (size_t d = 0; dk && d < n; d++) {
		if (dk[d].vtmp)
			kl_io_unlink(dk[d].vtmp);
		kl_free(dk[d].vtmp);
		kl_free(dk[d].href);
	}
	kl_free(dk);
	if (rc < 0)
		kl_io_unlink(tmp);
	if (op != o->dst_opts)
		kl_opts_free(op);
	kl_free(c.base);
	kl_free(ovf.s);
	kl_free(mf.s);
	kl_free(ovf_name);
	kl_free(mf_name);
	kl_free(buf);
	return rc;
}
