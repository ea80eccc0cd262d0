/*
 * replicate/net-proto.c - the messages of the keel:// protocol
 * (STREAM-FORMAT.md §10): encoding, and decoding that checks every length
 * and count against the message before use. Pure functions; the fuzz
 * target tests/fuzz/fuzz_proto.c drives the decoders.
 */
#include "replicate/repl_int.h"

#include <string.h>

int repl_target_name_check(const char *name)
{
	size_t n = strlen(name);

	if (n < 1 || n > 200 || name[0] == '.')
		goto bad;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			goto bad;
	}
	return 0;
bad:
	return kl_err(-EINVAL, "target name '%.64s' refused: 1 to 200 of [A-Za-z0-9._-], not "
		      "starting with '.' (no paths)", name);
}

/* ------------------------------------------------------------------ HELLO */

int repl_msg_hello_encode(const struct repl_hello *h, uint8_t **out, size_t *len)
{
	size_t nl = strlen(h->name), sl = strlen(h->snapshot);
	size_t n = 24 + nl + sl + h->nhave * 24;
	uint8_t *p;

	if (nl > REPL_NAME_MAX || sl > REPL_NAME_MAX || h->nhave > REPL_NET_MAX_SNAPS)
		return kl_err(-EINVAL, "hello: name or list too long");
	p = kl_calloc(1, n);
	if (!p)
		return -ENOMEM;
	memcpy(p, REPL_NET_MAGIC, 8);
	put_le16(p + 8, h->version);
	put_le16(p + 10, h->op);
	put_le32(p + 12, h->flags);
	put_le16(p + 16, (uint16_t)nl);
	put_le16(p + 18, (uint16_t)sl);
	put_le32(p + 20, (uint32_t)h->nhave);
	memcpy(p + 24, h->name, nl);
	memcpy(p + 24 + nl, h->snapshot, sl);
	for (size_t i = 0; i < h->nhave; i++) {
		uint8_t *q = p + 24 + nl + sl + i * 24;

		memcpy(q, h->have[i].guid, 16);
		put_le64(q + 16, h->have[i].generation);
	}
	*out = p;
	*len = n;
	return 0;
}

static int take_string(const uint8_t *p, size_t n, char *out, const char *what)
{
	memcpy(out, p, n);
	out[n] = '\0';
	if (strlen(out) != n)
		return kl_err(-EPROTO, "%s: NUL byte inside", what);
	return 0;
}

int repl_msg_hello_decode(const uint8_t *p, size_t len, struct repl_hello *h)
{
	size_t nl, sl, nh;

	memset(h, 0, sizeof(*h));
	if (len < 24 || memcmp(p, REPL_NET_MAGIC, 8) != 0)
		return kl_err(-EPROTO, "hello: not a keel client (no KEELNET1 greeting)");
	h->version = get_le16(p + 8);
	h->op = get_le16(p + 10);
	h->flags = get_le32(p + 12);
	nl = get_le16(p + 16);
	sl = get_le16(p + 18);
	nh = get_le32(p + 20);
	if (h->version != REPL_NET_VERSION)
		return kl_err(-EPROTO, "hello: protocol version %u (this server speaks %u)",
			      h->version, REPL_NET_VERSION);
	if (h->op != REPL_OP_PUSH && h->op != REPL_OP_FETCH)
		return kl_err(-EPROTO, "hello: unknown operation %u", h->op);
	if (h->flags & ~(uint32_t)REPL_HELLO_RAW)
		return kl_err(-EPROTO, "hello: unknown flags 0x%x", h->flags);
	if (nl > REPL_NAME_MAX || sl > REPL_NAME_MAX || nh > REPL_NET_MAX_SNAPS ||
	    len != 24 + nl + sl + nh * 24)
		return kl_err(-EPROTO, "hello: lengths (%zu, %zu, %zu) do not add up to %zu bytes",
			      nl, sl, nh, len);
	KL_TRY(take_string(p + 24, nl, h->name, "hello: target name"));
	KL_TRY(take_string(p + 24 + nl, sl, h->snapshot, "hello: snapshot name"));
	if (nh) {
		h->have = kl_calloc(nh, sizeof(*h->have));
		if (!h->have)
			return -ENOMEM;
		for (size_t i = 0; i < nh; i++) {
			const uint8_t *q = p + 24 + nl + sl + i * 24;

			memcpy(h->have[i].guid, q, 16);
			h->have[i].generation = get_le64(q + 16);
		}
		h->nhave = nh;
	}
	return 0;
}

void repl_msg_hello_release(struct repl_hello *h)
{
	kl_free(h->have);
	h->have = NULL;
	h->nhave = 0;
}

/* ------------------------------------------------------------------ WELCOME */

#define WELCOME_FIXED 80

int repl_msg_welcome_encode(const struct repl_welcome *w, uint8_t **out, size_t *len)
{
	size_t n = WELCOME_FIXED + w->token_len, off;
	uint8_t *p;

	if (w->nsnaps > REPL_NET_MAX_SNAPS || w->token_len > REPL_TOKEN_LEN)
		return kl_err(-EINVAL, "welcome: too many snapshots");
	for (size_t i = 0; i < w->nsnaps; i++)
		n += 26 + strlen(w->snaps[i].name);
	p = kl_calloc(1, n);
	if (!p)
		return -ENOMEM;
	put_le16(p, w->version);
	put_le16(p + 2, w->kind);
	put_le32(p + 4, w->have_dedup ? 1 : 0);
	memcpy(p + 8, w->target_uuid, 16);
	put_le64(p + 24, w->vsize);
	put_le32(p + 32, w->cluster_size);
	put_le32(p + 36, (uint32_t)w->token_len);
	memcpy(p + 40, w->have_key, 32);
	put_le32(p + 72, (uint32_t)w->nsnaps);
	memcpy(p + WELCOME_FIXED, w->token, w->token_len);
	off = WELCOME_FIXED + w->token_len;
	for (size_t i = 0; i < w->nsnaps; i++) {
		size_t nl = strlen(w->snaps[i].name);

		memcpy(p + off, w->snaps[i].guid, 16);
		put_le64(p + off + 16, w->snaps[i].generation);
		put_le16(p + off + 24, (uint16_t)nl);
		memcpy(p + off + 26, w->snaps[i].name, nl);
		off += 26 + nl;
	}
	*out = p;
	*len = n;
	return 0;
}

int repl_msg_welcome_decode(const uint8_t *p, size_t len, struct repl_welcome *w)
{
	size_t ns, off;
	int rc;

	memset(w, 0, sizeof(*w));
	if (len < WELCOME_FIXED)
		return kl_err(-EPROTO, "welcome: %zu bytes", len);
	w->version = get_le16(p);
	w->kind = get_le16(p + 2);
	w->flags = get_le32(p + 4);
	w->have_dedup = w->flags & 1;
	memcpy(w->target_uuid, p + 8, 16);
	w->vsize = get_le64(p + 24);
	w->cluster_size = get_le32(p + 32);
	w->token_len = get_le32(p + 36);
	memcpy(w->have_key, p + 40, 32);
	ns = get_le32(p + 72);
	if (w->version != REPL_NET_VERSION || w->kind > REPL_TARGET_RAW || w->flags & ~1u)
		return kl_err(-EPROTO, "welcome: version %u, kind %u, flags 0x%x", w->version,
			      w->kind, w->flags);
	if ((w->token_len != 0 && w->token_len != REPL_TOKEN_LEN) || ns > REPL_NET_MAX_SNAPS ||
	    len < WELCOME_FIXED + w->token_len)
		return kl_err(-EPROTO, "welcome: token of %zu bytes, %zu snapshots", w->token_len,
			      ns);
	memcpy(w->token, p + WELCOME_FIXED, w->token_len);
	off = WELCOME_FIXED + w->token_len;
	w->snaps = kl_calloc(ns ? ns : 1, sizeof(*w->snaps));
	if (!w->snaps)
		return -ENOMEM;
	for (size_t i = 0; i < ns; i++) {
		size_t nl;

		if (len - off < 26)
			goto bad;
		nl = get_le16(p + off + 24);
		if (nl > REPL_NAME_MAX || len - off - 26 < nl)
			goto bad;
		memcpy(w->snaps[i].guid, p + off, 16);
		w->snaps[i].generation = get_le64(p + off + 16);
		rc = take_string(p + off + 26, nl, w->snaps[i].name, "welcome: snapshot name");
		if (rc < 0) {
			repl_msg_welcome_release(w);
			return rc;
		}
		w->nsnaps++;
		off += 26 + nl;
	}
	if (off != len)
		goto bad;
	return 0;
bad:
	repl_msg_welcome_release(w);
	return kl_err(-EPROTO, "welcome: snapshot list does not fit the message");
}

void repl_msg_welcome_release(struct repl_welcome *w)
{
	kl_free(w->snaps);
	w->snaps = NULL;
	w->nsnaps = 0;
}

/* ------------------------------------------------------------------ ERROR, HAVE */

size_t repl_msg_error_encode(int code, const char *msg, uint8_t *out, size_t cap)
{
	size_t n = strlen(msg);

	if (n > cap - 8)
		n = cap - 8;
	put_le32(out, (uint32_t)code);
	put_le32(out + 4, (uint32_t)n);
	memcpy(out + 8, msg, n);
	return 8 + n;
}

int repl_msg_error_decode(const uint8_t *p, size_t len, int *code, char *msg, size_t cap)
{
	size_t n;

	if (len < 8 || (n = get_le32(p + 4)) != len - 8)
		return kl_err(-EPROTO, "error message of %zu bytes is malformed", len);
	*code = (int)get_le32(p);
	if (*code >= 0 || *code < -4095)
		*code = -EIO;
	n = KL_MIN(n, cap - 1);
	for (size_t i = 0; i < n; i++)
		msg[i] = p[8 + i] >= 0x20 && p[8 + i] < 0x7f ? (char)p[8 + i] : '?';
	msg[n] = '\0';
	return 0;
}

int repl_msg_haveq_decode(const uint8_t *p, size_t len, uint32_t *id, const uint8_t **hashes,
			  size_t *n)
{
	if (len < 8)
		return kl_err(-EPROTO, "have query of %zu bytes", len);
	*id = get_le32(p);
	*n = get_le32(p + 4);
	if (*n > REPL_HAVE_BATCH || len != 8 + *n * 32)
		return kl_err(-EPROTO, "have query: %zu hashes in %zu bytes", *n, len);
	*hashes = p + 8;
	return 0;
}

int repl_msg_haver_decode(const uint8_t *p, size_t len, uint32_t id, size_t n, bool *held)
{
	if (len < 8 || get_le32(p) != id || get_le32(p + 4) != n || len != 8 + (n + 7) / 8)
		return kl_err(-EPROTO, "have reply does not answer query %u of %zu hashes", id, n);
	for (size_t i = 0; i < n; i++)
		held[i] = (p[8 + i / 8] >> (i % 8)) & 1;
	return 0;
}
