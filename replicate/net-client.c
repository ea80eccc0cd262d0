/*
 * replicate/net-client.c - keel replicate to keel:// (push) and fetch from
 * it (STREAM-FORMAT.md §10).
 *
 * Replicate asks the server what the target holds (snapshot guids, an
 * interrupted receive's token, the key of its content map), continues an
 * interrupted receive when the image still has that snapshot, then sends
 * the newest snapshot incrementally from the newest one both hold. While
 * sending, each batch of clusters is first offered by keyed hash; what the
 * server holds goes as a REF record. The token from the server is
 * validated by repl_send against the image and the snapshots chosen here,
 * never trusted to choose them.
 */
#include "replicate/repl_int.h"
#include "format/format.h"

#include <openssl/ssl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#define CL_CHUNK (256u << 10)

struct client {
	struct repl_conn *c;
	struct repl_url u;
	struct repl_welcome w;
	uint32_t qid;
	uint8_t *buf;
	size_t len;
};

static int server_error(const uint8_t *p, size_t len)
{
	char msg[1024];
	int code;

	KL_TRY(repl_msg_error_decode(p, len, &code, msg, sizeof(msg)));
	return kl_err(code, "server: %s", msg);
}

/* The next message, which must be of type want (an ERROR becomes the error). */
static int expect(struct client *cl, uint16_t want, uint8_t **p, size_t *len)
{
	uint16_t type;

	KL_TRY(repl_conn_read_msg(cl->c, &type, p, len));
	if (type == REPL_MSG_ERROR)
		return server_error(*p, *len);
	if (type != want)
		return kl_err(-EPROTO, "server sent message type %u where %u belongs", type, want);
	return 0;
}

static int flush_stream(struct client *cl)
{
	int rc = 0;

	/* an early refusal from the server is the error worth reporting */
	if (repl_conn_readable(cl->c)) {
		uint16_t type;
		uint8_t *p;
		size_t len;

		KL_TRY(repl_conn_read_msg(cl->c, &type, &p, &len));
		if (type == REPL_MSG_ERROR)
			return server_error(p, len);
		return kl_err(-EPROTO, "server sent message type %u during the stream", type);
	}
	if (cl->len)
		rc = repl_conn_write_msg(cl->c, REPL_MSG_STREAM, cl->buf, cl->len);
	cl->len = 0;
	return rc;
}

static int cl_write(void *opaque, const void *buf, size_t len)
{
	struct client *cl = opaque;
	const uint8_t *p = buf;

	while (len) {
		size_t n = KL_MIN(len, CL_CHUNK - cl->len);

		memcpy(cl->buf + cl->len, p, n);
		cl->len += n;
		p += n;
		len -= n;
		if (cl->len == CL_CHUNK)
			KL_TRY(flush_stream(cl));
	}
	return 0;
}

static int cl_have(void *opaque, const uint8_t (*hashes)[32], size_t n, bool *held)
{
	struct client *cl = opaque;
	uint8_t hdr[8];
	uint8_t *p;
	size_t len;
	uint32_t id = ++cl->qid;

	if (n > REPL_HAVE_BATCH)
		return kl_err(-EINVAL, "have query of %zu hashes", n);
	/* the server answers after applying every record sent before */
	KL_TRY(flush_stream(cl));
	put_le32(hdr, id);
	put_le32(hdr + 4, (uint32_t)n);
	KL_TRY(repl_conn_write_msg2(cl->c, REPL_MSG_HAVE_Q, hdr, sizeof(hdr), hashes, n * 32));
	KL_TRY(expect(cl, REPL_MSG_HAVE_R, &p, &len));
	return repl_msg_haver_decode(p, len, id, n, held);
}

static int read_welcome(struct client *cl)
{
	uint8_t *p;
	size_t len;
	int rc;

	repl_msg_welcome_release(&cl->w);
	rc = expect(cl, REPL_MSG_WELCOME, &p, &len);
	if (rc == -ECONNRESET || rc == -EPIPE || rc == -EPROTO)
		/* TLS 1.3: the server checks our certificate after the handshake */
		return kl_err_prefix(rc, "the server ended the session (is this client's "
				     "certificate signed by the CA the server trusts?)");
	if (rc < 0)
		return rc;
	return repl_msg_welcome_decode(p, len, &cl->w);
}

static int cl_connect(struct client *cl, const char *url, const struct repl_tls_opts *tls,
		      struct ssl_ctx_st **ctx)
{
	KL_TRY(repl_url_parse(url, &cl->u));
	KL_TRY(repl_tls_ctx(tls, false, ctx));
	signal(SIGPIPE, SIG_IGN);
	return repl_tls_connect(*ctx, cl->u.host, cl->u.port, tls->timeout, &cl->c);
}

static int hello(struct client *cl, uint16_t op, uint32_t flags, const char *snap,
		 struct repl_snapref *have, size_t nhave)
{
	struct repl_hello h = { .version = REPL_NET_VERSION, .op = op, .flags = flags,
				.have = have, .nhave = nhave };
	uint8_t *msg;
	size_t len;
	int rc;

	snprintf(h.name, sizeof(h.name), "%s", cl->u.name);
	snprintf(h.snapshot, sizeof(h.snapshot), "%s", snap ? snap : "");
	KL_TRY(repl_msg_hello_encode(&h, &msg, &len));
	rc = repl_conn_write_msg(cl->c, REPL_MSG_HELLO, msg, len);
	kl_free(msg);
	return rc;
}

static void cl_release(struct client *cl, struct ssl_ctx_st *ctx)
{
	repl_conn_close(cl->c);
	repl_tls_ctx_free(ctx);
	repl_msg_welcome_release(&cl->w);
	repl_url_release(&cl->u);
	kl_free(cl->buf);
}

/* ------------------------------------------------------------------ replicate */

static const struct blk_snapshot_info *by_guid(struct blk_snapshot_info *v, size_t n,
					       const uint8_t guid[16])
{
	for (size_t i = 0; i < n; i++)
		if (!memcmp(v[i].guid, guid, 16))
			return &v[i];
	return NULL;
}

static bool target_has(const struct repl_welcome *w, const uint8_t guid[16])
{
	for (size_t i = 0; i < w->nsnaps; i++)
		if (!memcmp(w->snaps[i].guid, guid, 16))
			return true;
	return false;
}

static int target_add(struct repl_welcome *w, const struct blk_snapshot_info *sn)
{
	struct repl_snapref *v = kl_realloc(w->snaps, (w->nsnaps + 1) * sizeof(*v));

	if (!v)
		return -ENOMEM;
	w->snaps = v;
	memset(&v[w->nsnaps], 0, sizeof(*v));
	memcpy(v[w->nsnaps].guid, sn->guid, 16);
	v[w->nsnaps].generation = sn->generation;
	snprintf(v[w->nsnaps].name, sizeof(v[w->nsnaps].name), "%s", sn->name);
	w->nsnaps++;
	return 0;
}

static int send_one(struct client *cl, const struct repl_replicate_opts *o,
		    const struct blk_snapshot_info *snap, const struct blk_snapshot_info *from,
		    const char *resume, struct repl_replicate_stats *st)
{
	struct repl_have_ops have = { .query = cl_have, .opaque = cl };
	struct repl_send_opts so = { .image = o->image, .snapshot = snap->name,
				     .from = from ? from->name : NULL, .open_flags = o->open_flags,
				     .key = o->key, .key_len = o->key_len, .raw = o->raw,
				     .resume = resume, .mark_bytes = o->mark_bytes,
				     .threads = o->threads, .progress = o->progress,
				     .kdf_n = o->kdf_n, .kdf_r = o->kdf_r, .kdf_p = o->kdf_p };
	struct repl_writer wr = { .write = cl_write, .opaque = cl };
	struct repl_send_stats ss;
	uint8_t *p;
	size_t len;
	int rc;

	if (resume)
		so.resume_target = cl->w.target_uuid;
	if (cl->w.have_dedup && !o->no_dedup && !o->raw) {
		memcpy(have.key, cl->w.have_key, 32);
		so.have = &have;
	}
	rc = repl_send(&so, &wr, &ss);
	if (rc == 0)
		rc = flush_stream(cl);
	if (rc == 0)
		rc = repl_conn_write_msg(cl->c, REPL_MSG_END, NULL, 0);
	if (rc == 0)
		rc = expect(cl, REPL_MSG_DONE, &p, &len);
	if (rc == 0 && (len < 16 || memcmp(p, snap->guid, 16) != 0))
		rc = kl_err(-EPROTO, "server confirmed another snapshot than '%s'", snap->name);
	st->streams += rc == 0;
	st->stream_bytes += ss.stream_bytes;
	st->changed_bytes += ss.changed_bytes;
	st->payload_bytes += ss.payload_bytes;
	st->clusters_sent += ss.clusters_sent;
	st->clusters_skipped += ss.clusters_skipped;
	st->clusters_zero += ss.clusters_zero;
	if (rc == 0) {
		snprintf(st->snapshot, sizeof(st->snapshot), "%s", snap->name);
		snprintf(st->base, sizeof(st->base), "%s", from ? from->name : "");
		rc = target_add(&cl->w, snap);
	}
	return rc;
}

static int list_source(const struct repl_replicate_opts *o, struct blk_snapshot_info **v,
		       size_t *n)
{
	struct blk_open_opts bo = { .format = "keel", .flags = o->open_flags, .key = o->key,
				    .key_len = o->key_len };
	struct blk_dev *d;
	int rc;

	KL_TRY(blk_open(o->image, &bo, &d));
	rc = blk_snapshot_list(d, v, n);
	blk_close(d);
	if (rc == 0 && *n == 0)
		rc = kl_err(-ENOENT, "%s has no snapshot to replicate (keel snapshot create first)",
			    o->image);
	return rc;
}

/* An interrupted receive at the target: continue it if this image can, else drop it. */
static int handle_token(struct client *cl, const struct repl_replicate_opts *o,
			struct blk_snapshot_info *v, size_t n, struct repl_replicate_stats *st)
{
	const struct blk_snapshot_info *snap, *from = NULL;
	struct repl_token t;
	char text[REPL_TOKEN_TEXT];
	bool usable;
	int rc;

	rc = repl_token_decode(cl->w.token, cl->w.token_len, &t);
	snap = rc == 0 ? by_guid(v, n, t.snap_guid) : NULL;
	if (snap && !repl_guid_zero(t.from_guid))
		from = by_guid(v, n, t.from_guid);
	usable = snap && snap->generation == t.snap_gen &&
		 (repl_guid_zero(t.from_guid) || (from && from->generation == t.from_gen)) &&
		 !!(t.flags & REPL_HF_RAW) == o->raw &&
		 !!(t.flags & REPL_HF_KEYED) == (o->key && o->key_len);
	kl_err_clear();
	if (!usable) {
		/* the image no longer has what that receive was for: start over */
		KL_TRY(repl_conn_write_msg(cl->c, REPL_MSG_ABORT, NULL, 0));
		return read_welcome(cl);
	}
	repl_token_to_text(&t, text);
	rc = send_one(cl, o, snap, from, text, st);
	if (rc == 0) {
		st->resumed = true;
		cl->w.token_len = 0;
	}
	return rc;
}

int repl_replicate(const struct repl_replicate_opts *o, struct repl_replicate_stats *st)
{
	struct client cl = { 0 };
	struct ssl_ctx_st *ctx = NULL;
	struct blk_snapshot_info *v = NULL;
	const struct blk_snapshot_info *newest = NULL;
	double t0 = kl_now();
	size_t n = 0;
	int rc;

	memset(st, 0, sizeof(*st));
	rc = list_source(o, &v, &n);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++)
		if (!newest || v[i].generation > newest->generation)
			newest = &v[i];
	cl.buf = kl_malloc(CL_CHUNK);
	rc = cl.buf ? cl_connect(&cl, o->url, &o->tls, &ctx) : -ENOMEM;
	if (rc < 0)
		goto out;
	repl_conn_set_rate(cl.c, o->limit_rate);
	rc = hello(&cl, REPL_OP_PUSH, o->raw ? REPL_HELLO_RAW : 0, NULL, NULL, 0);
	/* a refused certificate can break the first write already: the reason is in the read */
	if (rc == 0 || rc == -ECONNRESET || rc == -EPIPE)
		rc = read_welcome(&cl);
	for (int round = 0; rc == 0 && round < 8; round++) {
		const struct blk_snapshot_info *base = NULL;

		if (cl.w.token_len) {
			rc = handle_token(&cl, o, v, n, st);
			continue;
		}
		if (target_has(&cl.w, newest->guid)) {
			st->up_to_date = st->streams == 0;
			if (st->up_to_date)
				snprintf(st->snapshot, sizeof(st->snapshot), "%s", newest->name);
			break;
		}
		for (size_t i = 0; i < n; i++)
			if (target_has(&cl.w, v[i].guid) && v[i].generation < newest->generation &&
			    (!base || v[i].generation > base->generation))
				base = &v[i];
		if (!base && cl.w.nsnaps) {
			rc = kl_err(-ESTALE, "%s holds snapshots but none of %s's: refusing to "
				    "replace it (use another target name)", o->url, o->image);
			break;
		}
		rc = send_one(&cl, o, newest, base, NULL, st);
	}
out:
	if (cl.c) {
		st->wire_out = repl_conn_bytes_out(cl.c);
		st->wire_in = repl_conn_bytes_in(cl.c);
	}
	cl_release(&cl, ctx);
	blk_snapshot_list_free(v, n);
	st->seconds = kl_now() - t0;
	return rc;
}

/* ------------------------------------------------------------------ fetch */

struct fetch_reader {
	struct client *cl;
	const uint8_t *p;
	size_t len, pos;
	bool ended;
};

static ssize_t fetch_read(void *opaque, void *buf, size_t len)
{
	struct fetch_reader *r = opaque;
	size_t n;

	while (r->pos == r->len) {
		uint16_t type;
		uint8_t *p;
		size_t l;

		if (r->ended)
			return 0;
		KL_TRY(repl_conn_read_msg(r->cl->c, &type, &p, &l));
		if (type == REPL_MSG_ERROR)
			return server_error(p, l);
		if (type == REPL_MSG_END) {
			r->ended = true;
			return 0;
		}
		if (type != REPL_MSG_STREAM)
			return kl_err(-EPROTO, "server sent message type %u inside a stream", type);
		r->p = p;
		r->len = l;
		r->pos = 0;
	}
	n = KL_MIN(len, r->len - r->pos);
	memcpy(buf, r->p + r->pos, n);
	r->pos += n;
	return (ssize_t)n;
}

static int local_snaps(const struct repl_fetch_opts *o, struct repl_snapref **out, size_t *n)
{
	struct blk_open_opts bo = { .format = "keel", .key = o->key, .key_len = o->key_len };
	struct blk_snapshot_info *v = NULL;
	struct blk_dev *d;
	struct stat sb;
	size_t k = 0;
	int rc;

	*out = NULL;
	*n = 0;
	if (stat(o->local, &sb) != 0)
		return 0;
	KL_TRY(blk_open(o->local, &bo, &d));
	rc = blk_snapshot_list(d, &v, &k);
	blk_close(d);
	if (rc < 0)
		return rc;
	k = KL_MIN(k, (size_t)REPL_NET_MAX_SNAPS);
	*out = kl_calloc(k ? k : 1, sizeof(**out));
	if (!*out) {
		blk_snapshot_list_free(v, k);
		return -ENOMEM;
	}
	for (size_t i = 0; i < k; i++) {
		memcpy((*out)[i].guid, v[i].guid, 16);
		(*out)[i].generation = v[i].generation;
	}
	*n = k;
	blk_snapshot_list_free(v, k);
	return 0;
}

int repl_fetch(const struct repl_fetch_opts *o, struct repl_recv_stats *st)
{
	struct client cl = { 0 };
	struct ssl_ctx_st *ctx = NULL;
	struct repl_snapref *have = NULL;
	size_t nhave = 0;
	double t0 = kl_now();
	int rc;

	memset(st, 0, sizeof(*st));
	rc = local_snaps(o, &have, &nhave);
	if (rc == 0)
		rc = cl_connect(&cl, o->url, &o->tls, &ctx);
	if (rc == 0)
		rc = hello(&cl, REPL_OP_FETCH, 0, cl.u.snapshot, have, nhave);
	if (rc == 0 || rc == -ECONNRESET || rc == -EPIPE)
		rc = read_welcome(&cl);
	if (rc == 0 && cl.w.kind == REPL_TARGET_NONE)
		rc = kl_err(-ENOENT, "%s: no such target on the server", o->url);
	while (rc == 0) {
		uint16_t type;
		uint8_t *p;
		size_t len;

		rc = repl_conn_read_msg(cl.c, &type, &p, &len);
		if (rc < 0)
			break;
		if (type == REPL_MSG_ERROR) {
			rc = server_error(p, len);
		} else if (type == REPL_MSG_DONE) {
			size_t nl = KL_MIN(len - KL_MIN(len, (size_t)16), (size_t)REPL_NAME_MAX);

			if (len >= 16) {
				memcpy(st->guid, p, 16);
				memcpy(st->name, p + 16, nl);
				st->name[nl] = '\0';
			}
			st->finished = true;
			break;
		} else if (type == REPL_MSG_STREAM) {
			struct fetch_reader r = { .cl = &cl, .p = p, .len = len };
			struct repl_reader rd = { .read = fetch_read, .opaque = &r };
			struct repl_recv_opts ro = { .target = o->local, .key = o->key,
						     .key_len = o->key_len,
						     .create_opts = o->create_opts,
						     .progress = o->progress };
			struct repl_recv_stats one;

			rc = repl_recv(&rd, &ro, &one);
			if (rc < 0)
				break;
			st->created |= one.created;
			st->keyed |= one.keyed;
			st->incremental |= one.incremental;
			st->stream_bytes += one.stream_bytes;
			st->records += one.records;
			st->data_bytes += one.data_bytes;
			st->zero_bytes += one.zero_bytes;
		} else {
			rc = kl_err(-EPROTO, "server sent message type %u", type);
		}
	}
	cl_release(&cl, ctx);
	kl_free(have);
	st->seconds = kl_now() - t0;
	return rc;
}
