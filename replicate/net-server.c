/*
 * replicate/net-server.c - keel serve: receives replicas over TLS
 * (STREAM-FORMAT.md §10).
 *
 * The parent only accepts connections and never reads a byte from a client:
 * each client runs in its own process (fork), so a client that stalls,
 * disconnects or sends garbage costs one process that times out or exits,
 * and a crash in one session cannot take the server or another session
 * down. A session handshakes (TLS 1.3, the client's certificate must chain
 * to the CA), reads one HELLO naming a target, and then receives streams
 * into ROOT/NAME (a .keel image, or a raw store directory) or sends from it.
 * Target names are plain names: no '/', no leading '.', so nothing outside
 * ROOT can be named, and a target that is a symbolic link, or resolves
 * outside ROOT, is refused. One client at a time per target (a lock in
 * ROOT/.keel). Memory per session is bounded: messages at most 4 MiB, one
 * record buffer, and the content map at have_max entries.
 */
#define _GNU_SOURCE
#include "replicate/repl_int.h"
#include "convert/convert.h"
#include "format/format.h"

#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t srv_stop;

static void on_stop(int sig)
{
	(void)sig;
	srv_stop = 1;
}

struct session {
	const struct repl_serve_opts *o;
	struct ssl_ctx_st *ctx;
	struct repl_conn *c;
	char root[PATH_MAX];
	char path[PATH_MAX + 256];
	char lockp[PATH_MAX + 256];
	char havep[PATH_MAX + 256];
	struct repl_hello hello;
	int kind;
	int lockfd;
};

static void slog(const struct repl_serve_opts *o, const char *fmt, ...) KL_PRINTF(2, 3);
static void slog(const struct repl_serve_opts *o, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	if (!o->log)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	o->log(o->log_opaque, line);
}

/* ------------------------------------------------------------------ targets */

/* Which kind of target ROOT/NAME is, refusing anything that leaves ROOT. */
static int target_kind(struct session *s)
{
	char real[PATH_MAX];
	struct stat sb;
	size_t rl = strlen(s->root);

	if (lstat(s->path, &sb) != 0)
		return REPL_TARGET_NONE;
	if (S_ISLNK(sb.st_mode))
		return kl_err(-EACCES, "target '%s' is a symbolic link: refused", s->hello.name);
	if (!realpath(s->path, real) || strncmp(real, s->root, rl) != 0 || real[rl] != '/')
		return kl_err(-EACCES, "target '%s' resolves outside the served directory",
			      s->hello.name);
	if (S_ISDIR(sb.st_mode))
		return repl_raw_is_store(s->path) ? REPL_TARGET_RAW :
			kl_err(-EEXIST, "target '%s' is a directory but not a raw store",
			       s->hello.name);
	if (S_ISREG(sb.st_mode))
		return REPL_TARGET_IMAGE;
	return kl_err(-EACCES, "target '%s' is not a regular file or directory", s->hello.name);
}

/*
 * One session per target. A client reconnecting after a cut may find its
 * previous session still finishing (checkpointing what it verified), so
 * wait a little before calling the target busy.
 */
static int lock_target(struct session *s)
{
	double until = kl_now() + 30;

	s->lockfd = open(s->lockp, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (s->lockfd < 0)
		return kl_err(-errno, "%s: %s", s->lockp, strerror(errno));
	while (flock(s->lockfd, LOCK_EX | LOCK_NB) != 0) {
		if (errno != EWOULDBLOCK || kl_now() > until || conv_interrupted())
			return kl_err(-EBUSY, "target '%s' is busy with another client",
				      s->hello.name);
		usleep(100000);
	}
	return 0;
}

static int open_image(struct session *s, struct blk_dev **d)
{
	struct blk_open_opts bo = { .format = "keel", .flags = BLK_OPEN_NO_PARENT,
				    .key = s->o->key, .key_len = s->o->key_len };

	return blk_open(s->path, &bo, d);
}

/* The target's state for the client; *map gets the content map of an image. */
static int welcome(struct session *s, struct repl_have_map **map)
{
	struct repl_welcome w = { .version = REPL_NET_VERSION };
	struct blk_snapshot_info *v = NULL;
	struct repl_raw_entry *re = NULL;
	struct blk_dev *d = NULL;
	size_t n = 0;
	uint8_t *msg = NULL;
	size_t len;
	int rc;

	repl_have_close(*map);
	*map = NULL;
	rc = target_kind(s);
	if (rc < 0)
		return rc;
	s->kind = rc;
	w.kind = (uint16_t)rc;
	if (s->kind == REPL_TARGET_IMAGE) {
		struct blk_identity id;
		uint8_t tok[BLK_RECV_TOKEN_MAX];
		size_t tl = sizeof(tok);
		bool active = false;

		rc = open_image(s, &d);
		if (rc == 0)
			rc = blk_identity(d, &id);
		if (rc == 0)
			rc = blk_snapshot_list(d, &v, &n);
		if (rc == 0)
			rc = blk_recv_status(d, &active, tok, &tl);
		if (rc < 0)
			goto out;
		memcpy(w.target_uuid, id.uuid, 16);
		w.vsize = blk_size(d);
		w.cluster_size = blk_cluster_size(d);
		if (active && tl == REPL_TOKEN_LEN) {
			memcpy(w.token, tok, tl);
			w.token_len = tl;
		}
		if (n > REPL_NET_MAX_SNAPS)
			n = REPL_NET_MAX_SNAPS; /* the client needs the newest: they come last */
		w.snaps = kl_calloc(n ? n : 1, sizeof(*w.snaps));
		if (!w.snaps) {
			rc = -ENOMEM;
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			memcpy(w.snaps[i].guid, v[i].guid, 16);
			w.snaps[i].generation = v[i].generation;
			snprintf(w.snaps[i].name, sizeof(w.snaps[i].name), "%s", v[i].name);
		}
		w.nsnaps = n;
		if (s->hello.op == REPL_OP_PUSH &&
		    repl_have_open(s->havep, s->path, d, s->o->have_max, map) == 0) {
			repl_have_set_key(*map, s->o->key, s->o->key_len);
			memcpy(w.have_key, repl_have_key(*map), 32);
			w.have_dedup = true;
		}
	} else if (s->kind == REPL_TARGET_RAW) {
		struct repl_token t;
		bool active = false;

		rc = repl_raw_list(s->path, &re, &n);
		if (rc == 0)
			rc = repl_raw_status(s->path, &active, &t);
		if (rc == 0)
			rc = repl_raw_uuid(s->path, w.target_uuid);
		if (rc < 0)
			goto out;
		if (active) {
			repl_token_encode(&t, w.token);
			w.token_len = REPL_TOKEN_LEN;
		}
		n = KL_MIN(n, (size_t)REPL_NET_MAX_SNAPS);
		w.snaps = kl_calloc(n ? n : 1, sizeof(*w.snaps));
		if (!w.snaps) {
			rc = -ENOMEM;
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			memcpy(w.snaps[i].guid, re[i].guid, 16);
			w.snaps[i].generation = re[i].generation;
			snprintf(w.snaps[i].name, sizeof(w.snaps[i].name), "%s", re[i].name);
		}
		w.nsnaps = n;
	} else if (s->hello.op == REPL_OP_PUSH && !(s->hello.flags & REPL_HELLO_RAW)) {
		/* a new image target: the map starts with the receive that makes it */
		if (repl_have_open(s->havep, s->path, NULL, s->o->have_max, map) == 0) {
			repl_have_set_key(*map, s->o->key, s->o->key_len);
			memcpy(w.have_key, repl_have_key(*map), 32);
			w.have_dedup = true;
		}
	}
	kl_err_clear();
	rc = repl_msg_welcome_encode(&w, &msg, &len);
	if (rc == 0)
		rc = repl_conn_write_msg(s->c, REPL_MSG_WELCOME, msg, len);
out:
	kl_free(msg);
	kl_free(w.snaps);
	kl_free(re);
	blk_snapshot_list_free(v, n);
	blk_close(d);
	return rc;
}

/* ------------------------------------------------------------------ receiving (PUSH) */

struct srv_reader {
	struct session *s;
	struct repl_have_map *map;
	const uint8_t *p;
	size_t len, pos;
	bool ended;
};

static int answer_have(struct srv_reader *r, const uint8_t *msg, size_t len)
{
	uint8_t out[8 + REPL_HAVE_BATCH / 8];
	const uint8_t *hs;
	uint32_t id;
	size_t n;

	KL_TRY(repl_msg_haveq_decode(msg, len, &id, &hs, &n));
	memset(out, 0, sizeof(out));
	put_le32(out, id);
	put_le32(out + 4, (uint32_t)n);
	for (size_t i = 0; i < n; i++)
		if (r->map && repl_have_lookup(r->map, hs + 32 * i))
			out[8 + i / 8] |= (uint8_t)(1u << (i % 8));
	return repl_conn_write_msg(r->s->c, REPL_MSG_HAVE_R, out, 8 + (n + 7) / 8);
}

static ssize_t srv_read(void *opaque, void *buf, size_t len)
{
	struct srv_reader *r = opaque;
	size_t n;

	while (r->pos == r->len) {
		uint16_t type;
		uint8_t *p;
		size_t l;

		if (r->ended)
			return 0;
		KL_TRY(repl_conn_read_msg(r->s->c, &type, &p, &l));
		switch (type) {
		case REPL_MSG_STREAM:
			r->p = p;
			r->len = l;
			r->pos = 0;
			break;
		case REPL_MSG_HAVE_Q:
			KL_TRY(answer_have(r, p, l));
			break;
		case REPL_MSG_END:
			r->ended = true;
			return 0;
		default:
			return kl_err(-EPROTO, "message type %u in the middle of a stream", type);
		}
	}
	n = KL_MIN(len, r->len - r->pos);
	memcpy(buf, r->p + r->pos, n);
	r->pos += n;
	return (ssize_t)n;
}

static int do_receive(struct session *s, struct repl_have_map *map, const uint8_t *first,
		      size_t flen)
{
	struct srv_reader r = { .s = s, .map = map, .p = first, .len = flen };
	struct repl_reader rd = { .read = srv_read, .opaque = &r };
	struct repl_recv_opts ro = { .target = s->path, .raw = s->hello.flags & REPL_HELLO_RAW,
				     .key = s->o->key, .key_len = s->o->key_len,
				     .have = map, .open_flags = BLK_OPEN_NO_PARENT };
	struct repl_recv_stats st;
	uint8_t done[16 + REPL_NAME_MAX];
	size_t nl;
	int rc;

	if (ro.raw)
		ro.require_flags = REPL_HF_RAW | REPL_HF_KEYED;
	/* a stream whose header lacks the key the server has: fine, unless encrypted */
	rc = repl_recv(&rd, &ro, &st);
	if (rc < 0) {
		slog(s->o, "%s: receive into %s failed: %s%s", repl_conn_peer(s->c), s->hello.name,
		     kl_errmsg(), st.token[0] ? " (resumable)" : "");
		return rc;
	}
	slog(s->o, "%s: %s@%s received (%llu stream bytes%s)", repl_conn_peer(s->c),
	     s->hello.name, st.name, (unsigned long long)st.stream_bytes,
	     st.resumed ? ", resumed" : "");
	nl = strlen(st.name);
	memcpy(done, st.guid, 16);
	memcpy(done + 16, st.name, nl);
	return repl_conn_write_msg(s->c, REPL_MSG_DONE, done, 16 + nl);
}

/* ------------------------------------------------------------------ sending (FETCH) */

struct srv_writer {
	struct repl_conn *c;
	uint8_t *buf;
	size_t len;
};

#define SRV_CHUNK (1u << 20)

static int srv_flush(struct srv_writer *w)
{
	int rc = 0;

	if (w->len)
		rc = repl_conn_write_msg(w->c, REPL_MSG_STREAM, w->buf, w->len);
	w->len = 0;
	return rc;
}

static int srv_write(void *opaque, const void *buf, size_t len)
{
	struct srv_writer *w = opaque;
	const uint8_t *p = buf;

	while (len) {
		size_t n = KL_MIN(len, SRV_CHUNK - w->len);

		memcpy(w->buf + w->len, p, n);
		w->len += n;
		p += n;
		len -= n;
		if (w->len == SRV_CHUNK)
			KL_TRY(srv_flush(w));
	}
	return 0;
}

static bool client_has(const struct repl_hello *h, const uint8_t guid[16])
{
	for (size_t i = 0; i < h->nhave; i++)
		if (!memcmp(h->have[i].guid, guid, 16))
			return true;
	return false;
}

static int fetch_image(struct session *s, struct srv_writer *w)
{
	struct blk_snapshot_info *v = NULL;
	const struct blk_snapshot_info *want = NULL, *base = NULL;
	struct blk_dev *d = NULL;
	size_t n = 0;
	int rc;

	rc = open_image(s, &d);
	if (rc == 0)
		rc = blk_snapshot_list(d, &v, &n);
	blk_close(d);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++)
		if (s->hello.snapshot[0] ? !strcmp(v[i].name, s->hello.snapshot) :
					   !want || v[i].generation > want->generation)
			want = &v[i];
	if (!want) {
		rc = kl_err(-ENOENT, "target '%s' has no snapshot %s", s->hello.name,
			    s->hello.snapshot[0] ? s->hello.snapshot : "yet");
		goto out;
	}
	if (!client_has(&s->hello, want->guid)) {
		struct repl_send_opts so = { .image = s->path, .snapshot = want->name,
					     .open_flags = BLK_OPEN_NO_PARENT, .key = s->o->key,
					     .key_len = s->o->key_len, .keyless_stream = true,
					     .threads = 1 };
		struct repl_writer wr = { .write = srv_write, .opaque = w };
		struct repl_send_stats st;

		for (size_t i = 0; i < n; i++)
			if (v[i].generation < want->generation && client_has(&s->hello, v[i].guid) &&
			    (!base || v[i].generation > base->generation))
				base = &v[i];
		so.from = base ? base->name : NULL;
		rc = repl_send(&so, &wr, &st);
		if (rc == 0)
			rc = srv_flush(w);
		if (rc == 0)
			rc = repl_conn_write_msg(s->c, REPL_MSG_END, NULL, 0);
		if (rc < 0)
			goto out;
	}
	{
		uint8_t done[16 + REPL_NAME_MAX];
		size_t nl = strlen(want->name);

		memcpy(done, want->guid, 16);
		memcpy(done + 16, want->name, nl);
		rc = repl_conn_write_msg(s->c, REPL_MSG_DONE, done, 16 + nl);
	}
out:
	blk_snapshot_list_free(v, n);
	return rc;
}

static int fetch_raw(struct session *s, struct srv_writer *w)
{
	struct repl_raw_entry *v = NULL;
	size_t n = 0, depth = 0, *chain = NULL;
	ssize_t cur = -1;
	uint8_t done[16 + REPL_NAME_MAX];
	size_t dlen;
	int rc;

	KL_TRY(repl_raw_list(s->path, &v, &n));
	for (size_t i = 0; i < n; i++)
		if (!s->hello.snapshot[0] || !strcmp(v[i].name, s->hello.snapshot))
			cur = (ssize_t)i;
	if (cur < 0) {
		rc = kl_err(-ENOENT, "target '%s' has no snapshot %s", s->hello.name,
			    s->hello.snapshot[0] ? s->hello.snapshot : "yet");
		goto out;
	}
	memcpy(done, v[cur].guid, 16);
	dlen = strlen(v[cur].name);
	memcpy(done + 16, v[cur].name, dlen);
	chain = kl_calloc(n, sizeof(*chain));
	rc = chain ? 0 : -ENOMEM;
	/* back from the wanted snapshot to one the client has, or to the full stream */
	while (rc == 0 && cur >= 0 && !client_has(&s->hello, v[cur].guid)) {
		ssize_t from = -1;

		if (depth == n) {
			rc = kl_err(-EUCLEAN, "%s: loop in the raw store index", s->hello.name);
			break;
		}
		chain[depth++] = (size_t)cur;
		if (repl_guid_zero(v[cur].from_guid))
			break;
		for (size_t i = 0; i < n; i++)
			if (!memcmp(v[i].guid, v[cur].from_guid, 16))
				from = (ssize_t)i;
		if (from < 0)
			rc = kl_err(-EUCLEAN, "%s: a base stream is missing", s->hello.name);
		cur = from;
	}
	for (size_t k = depth; rc == 0 && k-- > 0;) {
		char *p = kl_asprintf("%s/%s", s->path, v[chain[k]].file);
		struct kl_file *f = NULL;
		uint64_t off = 0;

		rc = p ? kl_io_open(p, KL_O_RDONLY, &f) : -ENOMEM;
		kl_free(p);
		while (rc == 0) {
			ssize_t got = kl_io_pread(f, off, w->buf, SRV_CHUNK);

			if (got <= 0) {
				rc = (int)got;
				break;
			}
			off += (uint64_t)got;
			rc = repl_conn_write_msg(s->c, REPL_MSG_STREAM, w->buf, (size_t)got);
		}
		kl_io_close(f);
		if (rc == 0)
			rc = repl_conn_write_msg(s->c, REPL_MSG_END, NULL, 0);
	}
	if (rc == 0)
		rc = repl_conn_write_msg(s->c, REPL_MSG_DONE, done, 16 + dlen);
out:
	kl_free(chain);
	kl_free(v);
	return rc;
}

/* ------------------------------------------------------------------ a session */

static int session_run(struct session *s)
{
	struct repl_have_map *map = NULL;
	uint16_t type;
	uint8_t *p;
	size_t len;
	int rc;

	rc = repl_conn_read_msg(s->c, &type, &p, &len);
	if (rc == 0 && type != REPL_MSG_HELLO)
		rc = kl_err(-EPROTO, "expected a hello, got message type %u", type);
	if (rc == 0)
		rc = repl_msg_hello_decode(p, len, &s->hello);
	if (rc == 0)
		rc = repl_target_name_check(s->hello.name);
	if (rc < 0)
		return rc;
	if (strlen(s->root) + strlen(s->hello.name) + 16 > PATH_MAX)
		return kl_err(-ENAMETOOLONG, "target name too long for the served directory");
	snprintf(s->path, sizeof(s->path), "%s/%.200s", s->root, s->hello.name);
	snprintf(s->lockp, sizeof(s->lockp), "%s/.keel/%.200s.lock", s->root, s->hello.name);
	snprintf(s->havep, sizeof(s->havep), "%s/.keel/%.200s.have", s->root, s->hello.name);
	slog(s->o, "%s: %s %s%s", repl_conn_peer(s->c),
	     s->hello.op == REPL_OP_PUSH ? "push to" : "fetch from", s->hello.name,
	     s->hello.flags & REPL_HELLO_RAW ? " (raw)" : "");
	KL_TRY(lock_target(s));
	rc = target_kind(s);
	if (rc < 0)
		return rc;
	if (s->hello.op == REPL_OP_PUSH && rc == REPL_TARGET_IMAGE &&
	    (s->hello.flags & REPL_HELLO_RAW))
		return kl_err(-EEXIST, "target '%s' is an image; a raw replica needs another name",
			      s->hello.name);
	if (s->hello.op == REPL_OP_PUSH && rc == REPL_TARGET_RAW &&
	    !(s->hello.flags & REPL_HELLO_RAW))
		return kl_err(-EEXIST, "target '%s' is a raw store: replicate with --raw",
			      s->hello.name);
	KL_TRY(welcome(s, &map));
	rc = 0;
	if (s->hello.op != REPL_OP_PUSH) {
		struct srv_writer w = { .c = s->c, .buf = kl_malloc(SRV_CHUNK) };

		if (!w.buf)
			rc = -ENOMEM;
		else if (s->kind == REPL_TARGET_IMAGE)
			rc = fetch_image(s, &w);
		else if (s->kind == REPL_TARGET_RAW)
			rc = fetch_raw(s, &w);
		else
			rc = kl_err(-ENOENT, "no target named '%s'", s->hello.name);
		kl_free(w.buf);
		repl_have_close(map);
		return rc;
	}
	while (rc == 0) {
		rc = repl_conn_read_msg(s->c, &type, &p, &len);
		if (rc == -ECONNRESET) {
			rc = 0; /* the client is done */
			break;
		}
		if (rc < 0)
			break;
		if (type == REPL_MSG_STREAM) {
			rc = do_receive(s, map, p, len);
		} else if (type == REPL_MSG_ABORT) {
			rc = repl_recv_abort(s->path, s->o->key, s->o->key_len);
			if (rc == -ENOENT)
				rc = 0;
			if (rc == 0)
				rc = welcome(s, &map);
		} else if (type == REPL_MSG_HAVE_Q) {
			struct srv_reader r = { .s = s, .map = map };

			rc = answer_have(&r, p, len);
		} else {
			rc = kl_err(-EPROTO, "unexpected message type %u", type);
		}
	}
	repl_have_close(map);
	return rc;
}

static void child(struct session *s, int fd)
{
	int rc;

	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	/* from here on SIGTERM stops a receive at a record boundary, resumable */
	conv_install_signal_handlers();
	rc = repl_tls_accept(s->ctx, fd, s->o->tls.timeout, &s->c);
	if (rc < 0) {
		slog(s->o, "connection refused: %s", kl_errmsg());
		_exit(1);
	}
	rc = session_run(s);
	if (rc < 0) {
		char msg[900];

		snprintf(msg, sizeof(msg), "%s", kl_errmsg());
		slog(s->o, "%s: %s: %s", repl_conn_peer(s->c), s->hello.name[0] ? s->hello.name :
		     "(no target)", msg);
		repl_conn_send_error(s->c, rc, msg);
	}
	repl_msg_hello_release(&s->hello);
	repl_conn_close(s->c);
	if (s->lockfd >= 0)
		close(s->lockfd);
	_exit(rc < 0 ? 1 : 0);
}

static int listen_on(const char *spec, int *out)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE }, *res, *ai;
	char host[256];
	const char *port, *h = host;
	const char *colon = strrchr(spec, ':');
	int fd = -1, one = 1, rc;

	if (!colon || colon == spec || !colon[1] || (size_t)(colon - spec) >= sizeof(host))
		return kl_err(-EINVAL, "--listen '%s': expected ADDR:PORT ([::1]:PORT for IPv6)",
			      spec);
	memcpy(host, spec, (size_t)(colon - spec));
	host[colon - spec] = '\0';
	port = colon + 1;
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		host[strlen(host) - 1] = '\0';
		h = host + 1;
	}
	if (!strcmp(h, "*") || !strcmp(h, ""))
		h = NULL;
	rc = getaddrinfo(h, port, &hints, &res);
	if (rc != 0)
		return kl_err(-EINVAL, "--listen '%s': %s", spec, gai_strerror(rc));
	rc = -EADDRNOTAVAIL;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 64) == 0)
			break;
		rc = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return kl_err(rc, "--listen '%s': %s", spec, strerror(-rc));
	*out = fd;
	return 0;
}

static int write_port(const char *path, int fd)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	char buf[32];
	int port;

	if (getsockname(fd, (struct sockaddr *)&ss, &l) != 0)
		return kl_err(-errno, "getsockname: %s", strerror(errno));
	port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port) :
					  ntohs(((struct sockaddr_in *)&ss)->sin_port);
	snprintf(buf, sizeof(buf), "%d\n", port);
	{
		char *tmp = kl_asprintf("%s.tmp", path);
		struct kl_file *f;
		int rc;

		if (!tmp)
			return -ENOMEM;
		rc = kl_io_open(tmp, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC, &f);
		if (rc == 0) {
			rc = kl_io_pwrite(f, 0, buf, strlen(buf));
			kl_io_close(f);
		}
		if (rc == 0)
			rc = kl_io_rename(tmp, path);
		kl_free(tmp);
		return rc;
	}
}

/* Collect finished sessions (all of them when wait). */
static void reap(pid_t *kids, int max, int *nchild, bool wait)
{
	pid_t pid;

	while (*nchild > 0 && (pid = waitpid(-1, NULL, wait ? 0 : WNOHANG)) > 0) {
		for (int i = 0; i < max; i++)
			if (kids[i] == pid)
				kids[i] = 0;
		(*nchild)--;
	}
}

int repl_serve(const struct repl_serve_opts *o)
{
	struct sigaction sa = { .sa_handler = on_stop };
	struct session s = { .o = o, .lockfd = -1 };
	int max = o->max_clients > 0 ? o->max_clients : 16;
	int lfd = -1, nchild = 0, sessions = 0, rc;
	pid_t *kids;
	char keeldir[PATH_MAX + 8];
	struct stat sb;

	if (!o->root || !realpath(o->root, s.root) || stat(s.root, &sb) != 0 ||
	    !S_ISDIR(sb.st_mode))
		return kl_err(-ENOENT, "--root '%s' is not a directory", o->root ? o->root : "");
	snprintf(keeldir, sizeof(keeldir), "%s/.keel", s.root);
	if (mkdir(keeldir, 0700) != 0 && errno != EEXIST)
		return kl_err(-errno, "%s: %s", keeldir, strerror(errno));
	kids = kl_calloc((size_t)max, sizeof(*kids));
	if (!kids)
		return -ENOMEM;
	rc = repl_tls_ctx(&o->tls, true, &s.ctx);
	if (rc < 0) {
		kl_free(kids);
		return rc;
	}
	rc = listen_on(o->listen, &lfd);
	if (rc == 0 && o->port_file)
		rc = write_port(o->port_file, lfd);
	if (rc < 0)
		goto out;
	srv_stop = 0;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	slog(o, "serving %s on %s (at most %d clients)", s.root, o->listen, max);
	while (!srv_stop && (!o->max_sessions || sessions < o->max_sessions)) {
		struct pollfd pf = { .fd = lfd, .events = POLLIN };
		pid_t pid;
		int cfd;

		reap(kids, max, &nchild, false);
		if (poll(&pf, 1, 500) != 1)
			continue;
		cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0)
			continue;
		if (nchild >= max) {
			slog(o, "refusing a connection: %d clients already", nchild);
			close(cfd);
			continue;
		}
		pid = fork();
		if (pid == 0) {
			close(lfd);
			child(&s, cfd);
		}
		close(cfd);
		if (pid > 0) {
			for (int i = 0; i < max; i++)
				if (!kids[i]) {
					kids[i] = pid;
					break;
				}
			nchild++;
			sessions++;
		} else {
			slog(o, "fork: %s", strerror(errno));
		}
	}
	if (srv_stop) {
		/* sessions stop at a record boundary and keep what they verified */
		for (int i = 0; i < max; i++)
			if (kids[i])
				kill(kids[i], SIGTERM);
	}
	reap(kids, max, &nchild, true);
	slog(o, "stopped");
	rc = 0;
out:
	if (lfd >= 0)
		close(lfd);
	repl_tls_ctx_free(s.ctx);
	kl_free(kids);
	return rc;
}
