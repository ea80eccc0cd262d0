/*
 * replicate/net-tls.c - the keel:// transport: TLS 1.3 only, both sides
 * present a certificate that must chain to the configured CA (a client
 * without one, with a self-signed one or one from another CA fails the
 * handshake), the client checks the server's name or address. Messages
 * are an 8-byte header (length, type) and a payload of at most
 * REPL_MSG_MAX bytes. Sockets carry send and receive timeouts so a silent
 * peer ends the connection instead of holding it; writes can be paced to a
 * rate.
 */
#define _GNU_SOURCE
#include "replicate/repl_int.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct repl_conn {
	SSL *ssl;
	int fd;
	int timeout;
	uint8_t *buf;	/* last message payload */
	size_t cap;
	uint64_t out, in; /* application bytes */
	uint64_t wire_out, wire_in; /* bytes through the socket: TLS records, handshake */
	uint64_t rate;	  /* bytes per second, 0 = unlimited */
	double rate_t0;
	uint64_t rate_bytes;
	char peer[256];
};

static int ssl_fail(int code, const char *what)
{
	char buf[256] = "";
	unsigned long e = ERR_get_error();

	if (e)
		ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return kl_err(code, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

int repl_tls_ctx(const struct repl_tls_opts *t, bool server, SSL_CTX **out)
{
	SSL_CTX *ctx;

	*out = NULL;
	if (!t->cert || !t->key || !t->ca)
		return kl_err(-EINVAL, "TLS needs --cert, the private key and --ca");
	ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!ctx)
		return ssl_fail(-ENOMEM, "TLS context");
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1)
		goto fail_proto;
	if (SSL_CTX_use_certificate_chain_file(ctx, t->cert) != 1) {
		SSL_CTX_free(ctx);
		return ssl_fail(-EINVAL, t->cert);
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, t->key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		SSL_CTX_free(ctx);
		return ssl_fail(-EINVAL, t->key);
	}
	if (SSL_CTX_load_verify_locations(ctx, t->ca, NULL) != 1) {
		SSL_CTX_free(ctx);
		return ssl_fail(-EINVAL, t->ca);
	}
	SSL_CTX_set_verify(ctx, server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT :
					 SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_verify_depth(ctx, 4);
	SSL_CTX_set_mode(ctx, SSL_MODE_AUTO_RETRY);
	if (server) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->ca);

		if (names)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_num_tickets(ctx, 0); /* no resumption: every client proves itself */
	}
	*out = ctx;
	return 0;
fail_proto:
	SSL_CTX_free(ctx);
	return ssl_fail(-ENOTSUP, "TLS 1.3 unavailable");
}

void repl_tls_ctx_free(SSL_CTX *ctx)
{
	SSL_CTX_free(ctx);
}

static void set_timeouts(int fd, int timeout)
{
	struct timeval tv = { .tv_sec = timeout };
	int one = 1;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	/* small queries wait for their answers: no Nagle delay */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void peer_name(struct repl_conn *c)
{
	X509 *x = SSL_get1_peer_certificate(c->ssl);

	snprintf(c->peer, sizeof(c->peer), "?");
	if (x) {
		X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, c->peer,
					  (int)sizeof(c->peer));
		X509_free(x);
	}
}

/* Counts what crosses the socket, so "bytes on the wire" include TLS itself. */
static long wire_count(BIO *b, int oper, const char *argp, size_t len, int argi, long argl,
		       int ret, size_t *processed)
{
	struct repl_conn *c = (struct repl_conn *)BIO_get_callback_arg(b);

	(void)argp;
	(void)len;
	(void)argi;
	(void)argl;
	if (c && ret > 0 && processed) {
		if (oper == (BIO_CB_WRITE | BIO_CB_RETURN))
			c->wire_out += *processed;
		else if (oper == (BIO_CB_READ | BIO_CB_RETURN))
			c->wire_in += *processed;
	}
	return ret;
}

static void count_wire(struct repl_conn *c)
{
	BIO *b = SSL_get_rbio(c->ssl);

	BIO_set_callback_ex(b, wire_count);
	BIO_set_callback_arg(b, (char *)c);
}

static struct repl_conn *conn_new(int fd, int timeout)
{
	struct repl_conn *c = kl_calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->fd = fd;
	c->timeout = timeout > 0 ? timeout : 120;
	return c;
}

static int io_fail(struct repl_conn *c, int r, const char *what)
{
	int e = SSL_get_error(c->ssl, r);

	if (e == SSL_ERROR_ZERO_RETURN)
		return kl_err(-ECONNRESET, "%s: the peer closed the connection", what);
	if ((e == SSL_ERROR_SYSCALL || e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) &&
	    (errno == EAGAIN || errno == EWOULDBLOCK)) {
		ERR_clear_error();
		return kl_err(-ETIMEDOUT, "%s: the peer was silent for %d s", what, c->timeout);
	}
	if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
		int code = errno ? -errno : -ECONNRESET;

		return kl_err(code, "%s: connection lost (%s)", what,
			      errno ? strerror(errno) : "unexpected end");
	}
	return ssl_fail(-EPROTO, what);
}

int repl_tls_connect(SSL_CTX *ctx, const char *host, const char *port, int timeout,
		     struct repl_conn **out)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *ai;
	struct in6_addr a6;
	struct in_addr a4;
	struct repl_conn *c;
	int fd = -1, rc, r;

	*out = NULL;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0)
		return kl_err(-EHOSTUNREACH, "%s:%s: %s", host, port, gai_strerror(rc));
	rc = -ECONNREFUSED;
	for (ai = res; ai; ai = ai->ai_next) {
		struct pollfd pf;

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    ai->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS) {
			int err = 0;
			socklen_t el = sizeof(err);

			pf.fd = fd;
			pf.events = POLLOUT;
			if (poll(&pf, 1, (timeout > 0 ? timeout : 120) * 1000) == 1 &&
			    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0)
				break;
			rc = -(err ? err : ETIMEDOUT);
		} else {
			rc = -errno;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return kl_err(rc, "connecting to %s:%s: %s", host, port, strerror(-rc));
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	set_timeouts(fd, timeout > 0 ? timeout : 120);
	c = conn_new(fd, timeout);
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	c->ssl = SSL_new(ctx);
	if (!c->ssl) {
		repl_conn_close(c);
		return ssl_fail(-ENOMEM, "TLS connection");
	}
	SSL_set_fd(c->ssl, fd);
	count_wire(c);
	/* the server must prove it is HOST: a name in its certificate, or the address */
	if (inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host);
	} else {
		SSL_set_tlsext_host_name(c->ssl, host);
		SSL_set1_host(c->ssl, host);
	}
	r = SSL_connect(c->ssl);
	if (r != 1) {
		long v = SSL_get_verify_result(c->ssl);

		rc = v != X509_V_OK ? kl_err(-EACCES, "TLS with %s:%s: the server's certificate is "
					     "not trusted: %s", host, port,
					     X509_verify_cert_error_string(v)) :
				      io_fail(c, r, "TLS handshake");
		if (v == X509_V_OK)
			kl_err_prefix(rc, "TLS with %s:%s (is this client's certificate signed by "
				      "the server's CA?)", host, port);
		repl_conn_close(c);
		return rc;
	}
	peer_name(c);
	*out = c;
	return 0;
}

int repl_tls_accept(SSL_CTX *ctx, int fd, int timeout, struct repl_conn **out)
{
	struct repl_conn *c = conn_new(fd, timeout);
	int r, rc;

	*out = NULL;
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	/* a client that connects and says nothing holds a process: not for long */
	set_timeouts(fd, KL_MIN(c->timeout, 30));
	c->ssl = SSL_new(ctx);
	if (!c->ssl) {
		repl_conn_close(c);
		return ssl_fail(-ENOMEM, "TLS connection");
	}
	SSL_set_fd(c->ssl, fd);
	count_wire(c);
	r = SSL_accept(c->ssl);
	if (r != 1) {
		long v = SSL_get_verify_result(c->ssl);

		if (v != X509_V_OK)
			rc = kl_err(-EACCES, "client refused: its certificate is not trusted: %s",
				    X509_verify_cert_error_string(v));
		else
			rc = io_fail(c, r, "TLS handshake");
		repl_conn_close(c);
		return rc;
	}
	peer_name(c);
	set_timeouts(fd, c->timeout);
	*out = c;
	return 0;
}

void repl_conn_close(struct repl_conn *c)
{
	if (!c)
		return;
	if (c->ssl) {
		SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
	}
	if (c->fd >= 0)
		close(c->fd);
	kl_free(c->buf);
	kl_free(c);
}

static int read_exact(struct repl_conn *c, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		int r = SSL_read(c->ssl, (uint8_t *)buf + done, (int)KL_MIN(len - done, 1u << 30));

		if (r <= 0)
			return io_fail(c, r, "reading from the peer");
		done += (size_t)r;
	}
	c->in += len;
	return 0;
}

static void pace(struct repl_conn *c, size_t len)
{
	double want, now;

	if (!c->rate)
		return;
	now = kl_now();
	if (!c->rate_bytes)
		c->rate_t0 = now;
	c->rate_bytes += len;
	want = c->rate_t0 + (double)c->rate_bytes / (double)c->rate;
	if (want > now) {
		struct timespec ts = { .tv_sec = (time_t)(want - now),
				       .tv_nsec = (long)((want - now - (double)(time_t)(want - now)) *
							 1e9) };

		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
	}
}

static int write_all(struct repl_conn *c, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		/* with a rate limit, go in pieces so the pacing stays smooth */
		size_t n = KL_MIN(len - done, c->rate ? (size_t)65536 : (size_t)1 << 30);
		int r;

		pace(c, n);
		r = SSL_write(c->ssl, (const uint8_t *)buf + done, (int)n);
		if (r <= 0)
			return io_fail(c, r, "writing to the peer");
		done += (size_t)r;
	}
	c->out += len;
	return 0;
}

int repl_conn_read_msg(struct repl_conn *c, uint16_t *type, uint8_t **payload, size_t *len)
{
	uint8_t h[REPL_MSG_HDR];
	uint32_t n;

	KL_TRY(read_exact(c, h, sizeof(h)));
	n = get_le32(h);
	*type = get_le16(h + 4);
	if (n > REPL_MSG_MAX || get_le16(h + 6) != 0)
		return kl_err(-EPROTO, "message of %u bytes from %s (limit %u): not a keel peer?",
			      n, c->peer, REPL_MSG_MAX);
	if (n > c->cap) {
		uint8_t *b = kl_realloc(c->buf, n);

		if (!b)
			return -ENOMEM;
		c->buf = b;
		c->cap = n;
	}
	if (n)
		KL_TRY(read_exact(c, c->buf, n));
	*payload = c->buf;
	*len = n;
	return 0;
}

int repl_conn_write_msg2(struct repl_conn *c, uint16_t type, const void *a, size_t alen,
			 const void *b, size_t blen)
{
	uint8_t h[REPL_MSG_HDR + 64];

	if (alen + blen > REPL_MSG_MAX)
		return kl_err(-EINVAL, "message of %zu bytes too large", alen + blen);
	put_le32(h, (uint32_t)(alen + blen));
	put_le16(h + 4, type);
	put_le16(h + 6, 0);
	if (alen <= 64) {
		/* header and small fields in one TLS record (a may be NULL when alen is 0) */
		if (alen)
			memcpy(h + REPL_MSG_HDR, a, alen);
		KL_TRY(write_all(c, h, REPL_MSG_HDR + alen));
	} else {
		KL_TRY(write_all(c, h, REPL_MSG_HDR));
		KL_TRY(write_all(c, a, alen));
	}
	return blen ? write_all(c, b, blen) : 0;
}

int repl_conn_write_msg(struct repl_conn *c, uint16_t type, const void *payload, size_t len)
{
	return repl_conn_write_msg2(c, type, payload, len, NULL, 0);
}

int repl_conn_send_error(struct repl_conn *c, int code, const char *msg)
{
	uint8_t buf[1024];
	size_t n = repl_msg_error_encode(code, msg, buf, sizeof(buf));

	return repl_conn_write_msg(c, REPL_MSG_ERROR, buf, n);
}

bool repl_conn_readable(struct repl_conn *c)
{
	struct pollfd pf = { .fd = c->fd, .events = POLLIN };

	return SSL_pending(c->ssl) > 0 || poll(&pf, 1, 0) == 1;
}

void repl_conn_set_rate(struct repl_conn *c, uint64_t bytes_per_sec)
{
	c->rate = bytes_per_sec;
	c->rate_bytes = 0;
}

uint64_t repl_conn_bytes_out(const struct repl_conn *c)
{
	return c->wire_out;
}

uint64_t repl_conn_bytes_in(const struct repl_conn *c)
{
	return c->wire_in;
}

const char *repl_conn_peer(const struct repl_conn *c)
{
	return c->peer;
}

/* ------------------------------------------------------------------ URLs */

bool repl_is_url(const char *s)
{
	return s && strncmp(s, "keel://", 7) == 0;
}

void repl_url_release(struct repl_url *u)
{
	kl_free(u->host);
	kl_free(u->port);
	kl_free(u->name);
	kl_free(u->snapshot);
	memset(u, 0, sizeof(*u));
}

int repl_url_parse(const char *s, struct repl_url *u)
{
	const char *p, *hs, *he, *slash, *at;

	memset(u, 0, sizeof(*u));
	if (!repl_is_url(s))
		return kl_err(-EINVAL, "'%s' is not a keel://HOST:PORT/NAME URL", s);
	p = s + 7;
	slash = strchr(p, '/');
	if (!slash)
		goto bad;
	if (*p == '[') {
		hs = p + 1;
		he = memchr(hs, ']', (size_t)(slash - hs));
		if (!he)
			goto bad;
		p = he + 1;
	} else {
		hs = p;
		he = memchr(p, ':', (size_t)(slash - p));
		if (!he)
			he = slash;
		p = he;
	}
	if (he == hs)
		goto bad;
	u->host = kl_strndup(hs, (size_t)(he - hs));
	if (*p == ':' && p + 1 < slash)
		u->port = kl_strndup(p + 1, (size_t)(slash - p - 1));
	else if (p == slash)
		u->port = kl_strdup("7457");
	else
		goto bad;
	at = strchr(slash + 1, '@');
	u->name = at ? kl_strndup(slash + 1, (size_t)(at - slash - 1)) : kl_strdup(slash + 1);
	if (at && at[1])
		u->snapshot = kl_strdup(at + 1);
	if (!u->host || !u->port || !u->name || (at && at[1] && !u->snapshot)) {
		repl_url_release(u);
		return -ENOMEM;
	}
	for (const char *q = u->port; *q; q++)
		if (*q < '0' || *q > '9')
			goto bad;
	if (repl_target_name_check(u->name) < 0) {
		repl_url_release(u);
		return kl_err_prefix(-EINVAL, "%s", s);
	}
	return 0;
bad:
	repl_url_release(u);
	return kl_err(-EINVAL, "'%s' is not a keel://HOST[:PORT]/NAME[@SNAP] URL", s);
}
