/*
 * replicate/stream-have.c - what a keel:// receiver already holds, by keyed
 * content hash (STREAM-FORMAT.md §7).
 *
 * The map sends nothing twice over a live connection: the sender asks
 * about each cluster's BLAKE2b-256 MAC under the target's random 32-byte
 * key, and content the receiver holds travels as a REF record, which the
 * receiver resolves by copying from where it holds it: a snapshot of the
 * target (immutable while it exists) or an earlier offset of the receive in
 * progress. Entries are (hash -> snapshot guid, offset, length); entries of
 * snapshots that no longer exist are dropped when the map is loaded, and
 * every copy is hashed again before it is written, so a stale map can fail
 * a receive but never corrupt one. The map lives beside the target (the
 * server keeps it in ROOT/.keel/NAME.have); losing it only costs bandwidth.
 */
#include "replicate/repl_int.h"
#include "format/format.h"

#include <string.h>
#include <sys/stat.h>

#define HAVE_MAGIC "KHAV"
#define HAVE_HDR 64
#define HAVE_ENT 64
#define HAVE_NONE UINT32_MAX

struct have_ent {
	uint8_t h[32];
	uint8_t guid[16];
	uint64_t off;
	uint32_t len;
	bool pending; /* written by the receive in progress, not yet a snapshot */
	bool dead;
};

struct have_snap {
	uint8_t guid[16];
	char *name;
	struct blk_dev *d; /* opened on first use */
};

struct repl_have_map {
	char *path;
	char *target;
	const uint8_t *key_pass; /* the target's passphrase, borrowed */
	size_t key_pass_len;
	uint8_t key[32];
	uint8_t uuid[16];
	struct have_ent *v;
	size_t n, cap, max;
	uint32_t *tab; /* open addressing over v, tcap slots */
	size_t tcap;
	struct have_snap *snaps;
	size_t nsnaps;
};

static size_t slot_of(const struct repl_have_map *m, const uint8_t h[32])
{
	return (size_t)get_le64(h) & (m->tcap - 1);
}

static int tab_rebuild(struct repl_have_map *m, size_t tcap)
{
	uint32_t *t = kl_malloc(tcap * sizeof(*t));

	if (!t)
		return -ENOMEM;
	for (size_t i = 0; i < tcap; i++)
		t[i] = HAVE_NONE;
	kl_free(m->tab);
	m->tab = t;
	m->tcap = tcap;
	for (size_t i = 0; i < m->n; i++) {
		size_t s;

		if (m->v[i].dead)
			continue;
		for (s = slot_of(m, m->v[i].h); m->tab[s] != HAVE_NONE; s = (s + 1) & (tcap - 1))
			;
		m->tab[s] = (uint32_t)i;
	}
	return 0;
}

static struct have_ent *find(const struct repl_have_map *m, const uint8_t h[32])
{
	if (!m->tcap)
		return NULL;
	for (size_t s = slot_of(m, h); m->tab[s] != HAVE_NONE; s = (s + 1) & (m->tcap - 1)) {
		struct have_ent *e = &m->v[m->tab[s]];

		if (!memcmp(e->h, h, 32))
			return e;
	}
	return NULL;
}

static int add(struct repl_have_map *m, const uint8_t h[32], const uint8_t guid[16],
	       uint64_t off, uint32_t len, bool pending)
{
	size_t s;

	if (find(m, h) || m->n >= m->max)
		return 0; /* known already, or full: the map only saves bandwidth */
	if (m->n == m->cap) {
		size_t cap = m->cap ? 2 * m->cap : 1024;
		struct have_ent *nv = kl_realloc(m->v, cap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		m->v = nv;
		m->cap = cap;
	}
	if (2 * (m->n + 1) > m->tcap)
		KL_TRY(tab_rebuild(m, m->tcap ? 2 * m->tcap : 4096));
	memcpy(m->v[m->n].h, h, 32);
	memset(m->v[m->n].guid, 0, 16);
	if (guid)
		memcpy(m->v[m->n].guid, guid, 16);
	m->v[m->n].off = off;
	m->v[m->n].len = len;
	m->v[m->n].pending = pending;
	m->v[m->n].dead = false;
	for (s = slot_of(m, h); m->tab[s] != HAVE_NONE; s = (s + 1) & (m->tcap - 1))
		;
	m->tab[s] = (uint32_t)m->n++;
	return 0;
}

static struct have_snap *snap_of(struct repl_have_map *m, const uint8_t guid[16])
{
	for (size_t i = 0; i < m->nsnaps; i++)
		if (!memcmp(m->snaps[i].guid, guid, 16))
			return &m->snaps[i];
	return NULL;
}

static int load(struct repl_have_map *m, const uint8_t *buf, size_t len)
{
	uint64_t count;

	if (len < HAVE_HDR + 4 || memcmp(buf, HAVE_MAGIC, 4) || get_le32(buf + 4) != 1 ||
	    get_le32(buf + len - 4) != kl_crc32c(0, buf, len - 4))
		return -EUCLEAN;
	count = get_le64(buf + 56);
	if (count > (len - HAVE_HDR - 4) / HAVE_ENT || HAVE_HDR + count * HAVE_ENT + 4 != len)
		return -EUCLEAN;
	if (memcmp(buf + 8, m->uuid, 16) != 0)
		return -ESTALE; /* another image under this name: start over */
	memcpy(m->key, buf + 24, 32);
	for (uint64_t i = 0; i < count; i++) {
		const uint8_t *p = buf + HAVE_HDR + i * HAVE_ENT;

		/* only content of snapshots the target still has */
		if (snap_of(m, p + 32))
			KL_TRY(add(m, p, p + 32, get_le64(p + 48), get_le32(p + 56), false));
	}
	return 0;
}

int repl_have_open(const char *path, const char *target, struct blk_dev *d, size_t max_entries,
		   struct repl_have_map **out)
{
	struct repl_have_map *m = kl_calloc(1, sizeof(*m));
	struct blk_snapshot_info *v = NULL;
	struct blk_identity id;
	struct kl_file *f = NULL;
	struct stat sb;
	uint8_t *buf = NULL;
	size_t n = 0;
	int rc;

	*out = NULL;
	if (!m)
		return -ENOMEM;
	m->max = max_entries ? max_entries : (1u << 18);
	m->path = kl_strdup(path);
	m->target = kl_strdup(target);
	rc = !m->path || !m->target ? -ENOMEM : 0;
	memset(&id, 0, sizeof(id));
	if (rc == 0 && d)
		rc = blk_identity(d, &id);
	if (rc == 0 && d)
		rc = blk_snapshot_list(d, &v, &n);
	if (rc < 0)
		goto fail;
	memcpy(m->uuid, id.uuid, 16);
	m->snaps = kl_calloc(n ? n : 1, sizeof(*m->snaps));
	if (!m->snaps) {
		rc = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		memcpy(m->snaps[i].guid, v[i].guid, 16);
		m->snaps[i].name = kl_strdup(v[i].name);
		if (!m->snaps[i].name) {
			rc = -ENOMEM;
			goto fail;
		}
		m->nsnaps++;
	}
	rc = -ENOENT;
	if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) &&
	    (uint64_t)sb.st_size <= HAVE_HDR + 4 + (uint64_t)m->max * HAVE_ENT &&
	    kl_io_open(path, KL_O_RDONLY, &f) == 0) {
		buf = kl_malloc((size_t)sb.st_size + 1);
		rc = buf ? kl_io_pread_full(f, 0, buf, (size_t)sb.st_size, path) : -ENOMEM;
		if (rc == 0)
			rc = load(m, buf, (size_t)sb.st_size);
		kl_io_close(f);
	}
	if (rc < 0) {
		/* a missing, damaged or foreign map: start a new one with a new key */
		m->n = 0;
		kl_err_clear();
		rc = repl_random(m->key, 32);
		if (rc < 0)
			goto fail;
	}
	kl_free(buf);
	blk_snapshot_list_free(v, n);
	*out = m;
	return 0;
fail:
	kl_free(buf);
	blk_snapshot_list_free(v, n);
	repl_have_close(m);
	return rc;
}

void repl_have_set_key(struct repl_have_map *m, const uint8_t *pass, size_t len)
{
	m->key_pass = pass;
	m->key_pass_len = len;
}

void repl_have_close(struct repl_have_map *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nsnaps; i++) {
		blk_close(m->snaps[i].d);
		kl_free(m->snaps[i].name);
	}
	kl_free(m->snaps);
	kl_free(m->v);
	kl_free(m->tab);
	kl_free(m->path);
	kl_free(m->target);
	kl_wipe(m->key, sizeof(m->key));
	kl_free(m);
}

void repl_have_set_uuid(struct repl_have_map *m, const uint8_t uuid[16])
{
	memcpy(m->uuid, uuid, 16);
}

const uint8_t *repl_have_key(const struct repl_have_map *m)
{
	return m->key;
}

bool repl_have_lookup(struct repl_have_map *m, const uint8_t h[32])
{
	return find(m, h) != NULL;
}

int repl_have_read(struct repl_have_map *m, struct blk_dev *work, const uint8_t h[32],
		   uint8_t *buf, size_t len)
{
	struct have_ent *e = find(m, h);
	struct have_snap *sn;

	if (!e || e->len != len)
		return kl_err(-EUCLEAN, "ref record for content this receiver does not hold");
	if (e->pending)
		return blk_pread(work, e->off, buf, len);
	sn = snap_of(m, e->guid);
	if (!sn)
		return kl_err(-EUCLEAN, "ref record for content of a deleted snapshot");
	if (!sn->d) {
		struct blk_open_opts bo = { .format = "keel", .key = m->key_pass,
					    .key_len = m->key_pass_len };
		char *spec = kl_asprintf("%s@%s", m->target, sn->name);
		int rc;

		if (!spec)
			return -ENOMEM;
		rc = blk_open(spec, &bo, &sn->d);
		kl_free(spec);
		if (rc < 0)
			return rc;
	}
	return blk_pread(sn->d, e->off, buf, len);
}

int repl_have_note(struct repl_have_map *m, const uint8_t h[32], uint64_t off, uint32_t len)
{
	return add(m, h, NULL, off, len, true);
}

void repl_have_forget_pending(struct repl_have_map *m)
{
	size_t j = 0;

	for (size_t i = 0; i < m->n; i++)
		if (!m->v[i].pending)
			m->v[j++] = m->v[i];
	m->n = j;
	if (tab_rebuild(m, m->tcap ? m->tcap : 4096) < 0)
		m->n = 0; /* no memory: forget everything, which is always safe */
}

int repl_have_commit(struct repl_have_map *m, const uint8_t guid[16], const char *name)
{
	struct kl_file *f = NULL;
	size_t len = HAVE_HDR + m->n * HAVE_ENT + 4;
	struct have_snap *ns;
	uint8_t *buf;
	char *tmp;
	int rc;

	/* the new snapshot is where the pending content now lives */
	ns = kl_realloc(m->snaps, (m->nsnaps + 1) * sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	m->snaps = ns;
	memset(&ns[m->nsnaps], 0, sizeof(*ns));
	memcpy(ns[m->nsnaps].guid, guid, 16);
	ns[m->nsnaps].name = kl_strdup(name);
	if (!ns[m->nsnaps].name)
		return -ENOMEM;
	m->nsnaps++;

	for (size_t i = 0; i < m->n; i++) {
		if (m->v[i].pending) {
			memcpy(m->v[i].guid, guid, 16);
			m->v[i].pending = false;
		}
	}
	buf = kl_calloc(1, len);
	tmp = kl_asprintf("%s.tmp", m->path);
	if (!buf || !tmp) {
		kl_free(buf);
		kl_free(tmp);
		return -ENOMEM;
	}
	memcpy(buf, HAVE_MAGIC, 4);
	put_le32(buf + 4, 1);
	memcpy(buf + 8, m->uuid, 16);
	memcpy(buf + 24, m->key, 32);
	put_le64(buf + 56, m->n);
	for (size_t i = 0; i < m->n; i++) {
		uint8_t *p = buf + HAVE_HDR + i * HAVE_ENT;

		memcpy(p, m->v[i].h, 32);
		memcpy(p + 32, m->v[i].guid, 16);
		put_le64(p + 48, m->v[i].off);
		put_le32(p + 56, m->v[i].len);
	}
	put_le32(buf + len - 4, kl_crc32c(0, buf, len - 4));
	/* no fsync: after a crash a torn map fails its CRC and is started over */
	rc = kl_io_open(tmp, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC, &f);
	if (rc == 0) {
		rc = kl_io_pwrite(f, 0, buf, len);
		kl_io_close(f);
	}
	if (rc == 0)
		rc = kl_io_rename(tmp, m->path);
	if (rc < 0)
		kl_io_unlink(tmp);
	kl_wipe(buf, len);
	kl_free(buf);
	kl_free(tmp);
	return rc;
}
