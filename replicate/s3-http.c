/*
 * replicate/s3-http.c - a small S3 client on libcurl.
 *
 * Signing is libcurl's own AWS Signature V4 (CURLOPT_AWS_SIGV4, curl >=
 * 7.75). Two things curl 7.88 does not do for us, both of which make
 * every request fail with SignatureDoesNotMatch on RGW and AWS:
 *  - it never sends x-amz-content-sha256; we send the hex SHA-256 of the
 *    body ourselves (a signed payload, so the store also rejects a body
 *    damaged in transit), and curl then signs with that value;
 *  - it neither sorts nor encodes query parameters; callers pass them
 *    sorted and %-encoded (repl_s3_list_keys does).
 * Object keys are restricted to unreserved characters and '/', so the
 * canonical URI curl signs is the path as sent.
 *
 * libcurl is loaded when the first S3 target is opened, not linked
 * (lib/lazy.h); calls go through kl_lc.
 */
#define _GNU_SOURCE
#include "replicate/s3_int.h"
#include "lib/lazy.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define S3_DEFAULT_CONNS 4
#define S3_DEFAULT_RETRIES 6
#define S3_DEFAULT_TIMEOUT 60
#define S3_MAX_BODY (256u << 20)
#define S3_MAX_HANDLES 64

struct s3_handle {
	CURL *curl;
	struct s3_handle *next;
};

struct repl_s3 {
	char *scheme_host; /* "http://127.0.0.1:8000" or "https://bucket.s3.amazonaws.com" */
	char *bucket_path; /* "/bucket" (path-style) or "" (virtual-host) */
	char *prefix;	   /* "" or "pfx/" */
	char *where;	   /* s3://bucket/prefix */
	char *sigv4;	   /* "aws:amz:REGION:s3" */
	char *userpwd;	   /* "AK:SK" (secret: wiped) */
	char *token_hdr;   /* "x-amz-security-token: ..." or NULL */
	int conns;
	int retries;
	int timeout;
	long backoff_ms;
	curl_off_t rate; /* per handle */
	pthread_mutex_t lock;
	struct s3_handle *free_list;
	struct repl_s3_counters cnt;
};

/* ------------------------------------------------------------------ URLs */

bool repl_s3_is_url(const char *s)
{
	return s && !strncmp(s, "s3://", 5);
}

static bool bucket_ok(const char *b, size_t n)
{
	if (n < 3 || n > 63)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = b[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
			return false;
	}
	return b[0] != '-' && b[0] != '.' && b[n - 1] != '-' && b[n - 1] != '.';
}

static bool key_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.' || c == '/';
}

int repl_s3_url_parse(const char *url, struct repl_s3_url *out)
{
	const char *p, *slash, *at;
	size_t blen;

	memset(out, 0, sizeof(*out));
	if (!repl_s3_is_url(url))
		return kl_err(-EINVAL, "'%s' is not an s3://BUCKET/PREFIX URL", url ? url : "");
	p = url + 5;
	at = strchr(p, '@');
	slash = strchr(p, '/');
	if (slash && at && slash > at)
		slash = NULL;
	blen = slash ? (size_t)(slash - p) : at ? (size_t)(at - p) : strlen(p);
	if (!bucket_ok(p, blen))
		return kl_err(-EINVAL,
			      "%s: bucket name must be 3-63 characters of a-z, 0-9, '.', '-'", url);
	out->bucket = kl_strndup(p, blen);
	if (!out->bucket)
		return -ENOMEM;
	if (slash) {
		const char *s = slash, *e = at ? at : s + strlen(s);

		while (s < e && *s == '/')
			s++;
		while (e > s && e[-1] == '/')
			e--;
		if (e - s > 512) {
			repl_s3_url_release(out);
			return kl_err(-EINVAL, "%s: prefix longer than 512 characters", url);
		}
		for (const char *q = s; q < e; q++) {
			if (!key_char_ok(*q) || (*q == '/' && q[1] == '/') ||
			    (*q == '.' && (q == s || q[-1] == '/') &&
			     (q[1] == '/' || q + 1 == e ||
			      (q[1] == '.' && (q[2] == '/' || q + 2 == e))))) {
				repl_s3_url_release(out);
				return kl_err(-EINVAL,
					      "%s: the prefix may hold only letters, digits, "
					      "'.', '_', '-' and single '/' (found '%c')",
					      url, *q);
			}
		}
		out->prefix = kl_strndup(s, (size_t)(e - s));
	} else {
		out->prefix = kl_strdup("");
	}
	if (!out->prefix) {
		repl_s3_url_release(out);
		return -ENOMEM;
	}
	if (at) {
		if (!at[1] || strchr(at + 1, '@')) {
			repl_s3_url_release(out);
			return kl_err(-EINVAL, "%s: empty or doubled '@SNAPSHOT'", url);
		}
		out->snapshot = kl_strdup(at + 1);
		if (!out->snapshot) {
			repl_s3_url_release(out);
			return -ENOMEM;
		}
	}
	return 0;
}

void repl_s3_url_release(struct repl_s3_url *u)
{
	kl_free(u->bucket);
	kl_free(u->prefix);
	kl_free(u->snapshot);
	memset(u, 0, sizeof(*u));
}

/* ------------------------------------------------------------------ client */

static const char *env_first(const char *a, const char *b, const char *c)
{
	const char *names[3] = { a, b, c };

	for (int i = 0; i < 3; i++) {
		const char *v = names[i] ? getenv(names[i]) : NULL;

		if (v && *v)
			return v;
	}
	return NULL;
}

int repl_s3_new(const struct repl_s3_opts *o, const struct repl_s3_url *url, struct repl_s3 **out)
{
	const char *endpoint = o->endpoint ? o->endpoint
					   : env_first("KEEL_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3",
						       "AWS_ENDPOINT_URL");
	const char *region =
		o->region ? o->region : env_first("AWS_REGION", "AWS_DEFAULT_REGION", NULL);
	const char *ak = o->access_key ? o->access_key : env_first("AWS_ACCESS_KEY_ID", NULL, NULL);
	const char *sk =
		o->secret_key ? o->secret_key : env_first("AWS_SECRET_ACCESS_KEY", NULL, NULL);
	const char *tok =
		o->session_token ? o->session_token : env_first("AWS_SESSION_TOKEN", NULL, NULL);
	const char *bo = getenv("KEEL_S3_BACKOFF_MS");
	enum repl_s3_addressing addr = o->addressing;
	struct repl_s3 *c;
	char *ep = NULL;
	int rc = -ENOMEM;

	*out = NULL;
	KL_TRY(kl_curl_load());
	if (!ak || !sk)
		return kl_err(-EINVAL, "no S3 credentials: set AWS_ACCESS_KEY_ID and "
			      "AWS_SECRET_ACCESS_KEY (or --access-key / --secret-key-file)");
	if (!region)
		region = "us-east-1";
	for (const char *q = region; *q; q++)
		if (!key_char_ok(*q) || *q == '/')
			return kl_err(-EINVAL, "bad region '%s'", region);
	c = kl_calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->lock, NULL);
	if (endpoint) {
		size_t n;

		if (strncmp(endpoint, "http://", 7) && strncmp(endpoint, "https://", 8)) {
			rc = kl_err(-EINVAL, "S3 endpoint '%s' must start with http:// or https://",
				    endpoint);
			goto err;
		}
		ep = kl_strdup(endpoint);
		if (!ep)
			goto err;
		n = strlen(ep);
		while (n > 0 && ep[n - 1] == '/')
			ep[--n] = '\0';
		if (strchr(strstr(ep, "://") + 3, '/')) {
			rc = kl_err(-EINVAL, "S3 endpoint '%s' must not have a path", endpoint);
			goto err;
		}
		if (addr == REPL_S3_ADDR_AUTO)
			addr = REPL_S3_ADDR_PATH;
	} else {
		ep = kl_asprintf("https://s3.%s.amazonaws.com", region);
		if (!ep)
			goto err;
		if (addr == REPL_S3_ADDR_AUTO)
			addr = strchr(url->bucket, '.') ? REPL_S3_ADDR_PATH : REPL_S3_ADDR_VIRTUAL;
	}
	if (addr == REPL_S3_ADDR_VIRTUAL) {
		char *hostpart = strstr(ep, "://") + 3;

		c->scheme_host = kl_asprintf("%.*s%s.%s", (int)(hostpart - ep), ep, url->bucket,
					     hostpart);
		c->bucket_path = kl_strdup("");
	} else {
		c->scheme_host = kl_strdup(ep);
		c->bucket_path = kl_asprintf("/%s", url->bucket);
	}
	c->prefix = url->prefix[0] ? kl_asprintf("%s/", url->prefix) : kl_strdup("");
	c->where = kl_asprintf("s3://%s%s%s", url->bucket, url->prefix[0] ? "/" : "", url->prefix);
	c->sigv4 = kl_asprintf("aws:amz:%s:s3", region);
	c->userpwd = kl_asprintf("%s:%s", ak, sk);
	if (tok)
		c->token_hdr = kl_asprintf("x-amz-security-token: %s", tok);
	if (!c->scheme_host || !c->bucket_path || !c->prefix || !c->where || !c->sigv4 ||
	    !c->userpwd || (tok && !c->token_hdr))
		goto err;
	c->conns = o->connections > 0 ? KL_MIN(o->connections, 32) : S3_DEFAULT_CONNS;
	c->retries = o->retries_set ? KL_MAX(o->retries, 0) : S3_DEFAULT_RETRIES;
	c->timeout = o->timeout > 0 ? o->timeout : S3_DEFAULT_TIMEOUT;
	c->backoff_ms = bo && *bo ? strtol(bo, NULL, 10) : 250;
	if (c->backoff_ms < 0)
		c->backoff_ms = 0;
	c->rate = o->limit_rate ? (curl_off_t)KL_MAX(o->limit_rate / (uint64_t)c->conns, 1) : 0;
	kl_free(ep);
	*out = c;
	return 0;
err:
	kl_free(ep);
	repl_s3_free(c);
	return rc;
}

void repl_s3_free(struct repl_s3 *c)
{
	if (!c)
		return;
	while (c->free_list) {
		struct s3_handle *h = c->free_list;

		c->free_list = h->next;
		kl_lc.curl_easy_cleanup(h->curl);
		kl_free(h);
	}
	if (c->userpwd)
		kl_wipe(c->userpwd, strlen(c->userpwd));
	kl_free(c->userpwd);
	kl_free(c->token_hdr);
	kl_free(c->scheme_host);
	kl_free(c->bucket_path);
	kl_free(c->prefix);
	kl_free(c->where);
	kl_free(c->sigv4);
	pthread_mutex_destroy(&c->lock);
	kl_free(c);
}

const char *repl_s3_where(const struct repl_s3 *c)
{
	return c->where;
}

int repl_s3_connections(const struct repl_s3 *c)
{
	return c->conns;
}

void repl_s3_counters(const struct repl_s3 *c, struct repl_s3_counters *out)
{
	out->requests = __atomic_load_n(&c->cnt.requests, __ATOMIC_RELAXED);
	out->get = __atomic_load_n(&c->cnt.get, __ATOMIC_RELAXED);
	out->put = __atomic_load_n(&c->cnt.put, __ATOMIC_RELAXED);
	out->head = __atomic_load_n(&c->cnt.head, __ATOMIC_RELAXED);
	out->list = __atomic_load_n(&c->cnt.list, __ATOMIC_RELAXED);
	out->del = __atomic_load_n(&c->cnt.del, __ATOMIC_RELAXED);
	out->retries = __atomic_load_n(&c->cnt.retries, __ATOMIC_RELAXED);
	out->up = __atomic_load_n(&c->cnt.up, __ATOMIC_RELAXED);
	out->down = __atomic_load_n(&c->cnt.down, __ATOMIC_RELAXED);
}

#define CNT_ADD(c, f, v) __atomic_fetch_add(&(c)->cnt.f, (v), __ATOMIC_RELAXED)

static struct s3_handle *handle_get(struct repl_s3 *c)
{
	struct s3_handle *h;

	pthread_mutex_lock(&c->lock);
	h = c->free_list;
	if (h)
		c->free_list = h->next;
	pthread_mutex_unlock(&c->lock);
	if (h)
		return h;
	h = kl_calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->curl = kl_lc.curl_easy_init();
	if (!h->curl) {
		kl_free(h);
		kl_err(-ENOMEM, "curl_easy_init failed");
		return NULL;
	}
	return h;
}

static void handle_put(struct repl_s3 *c, struct s3_handle *h, bool keep)
{
	if (!keep) {
		kl_lc.curl_easy_cleanup(h->curl);
		kl_free(h);
		return;
	}
	pthread_mutex_lock(&c->lock);
	h->next = c->free_list;
	c->free_list = h;
	pthread_mutex_unlock(&c->lock);
}

/* ------------------------------------------------------------------ transfer */

struct xfer {
	struct repl_s3 *c;
	const uint8_t *up;
	size_t up_len, up_pos;
	uint8_t *down;
	size_t down_len, down_cap, down_max;
	bool too_long;
	uint64_t date_ns;
};

static size_t xfer_read(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	size_t n = KL_MIN(size * nmemb, x->up_len - x->up_pos);

	memcpy(buf, x->up + x->up_pos, n);
	x->up_pos += n;
	CNT_ADD(x->c, up, n);
	return n;
}

static size_t xfer_write(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	size_t n = size * nmemb;

	if (n > x->down_max - x->down_len) {
		x->too_long = true;
		return 0;
	}
	if (x->down_len + n + 1 > x->down_cap) {
		size_t cap = KL_MAX(x->down_cap * 2, x->down_len + n + 1);
		uint8_t *p;

		cap = KL_MAX(cap, (size_t)16384);
		p = kl_realloc(x->down, cap);
		if (!p)
			return 0;
		x->down = p;
		x->down_cap = cap;
	}
	memcpy(x->down + x->down_len, buf, n);
	x->down_len += n;
	CNT_ADD(x->c, down, n);
	return n;
}

static const char *const month_names[12] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

/* "Date: Sun, 22 Nov 2026 03:00:00 GMT" */
static size_t xfer_header(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	size_t n = size * nmemb;
	char line[128], mon[4] = "";
	struct tm tm;
	int d, y, hh, mm, ss;

	if (n > 6 && n < sizeof(line) && !strncasecmp(buf, "date:", 5)) {
		memcpy(line, buf, n);
		line[n] = '\0';
		int got = sscanf(line + 5, " %*3s, %d %3s %d %d:%d:%d", &d, mon, &y, &hh, &mm,
				 &ss);

		if (got == 6) {
			for (int i = 0; i < 12; i++) {
				if (strcmp(mon, month_names[i]))
					continue;
				memset(&tm, 0, sizeof(tm));
				tm.tm_mday = d;
				tm.tm_mon = i;
				tm.tm_year = y - 1900;
				tm.tm_hour = hh;
				tm.tm_min = mm;
				tm.tm_sec = ss;
				x->date_ns = (uint64_t)timegm(&tm) * 1000000000ULL;
			}
		}
	}
	return n;
}

static void sha256_hex(const void *data, size_t len, char out[65])
{
	uint8_t md[32];
	unsigned int mdlen = 0;

	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	repl_s3_hex(md, 32, out);
}

static bool transient_curl(CURLcode e)
{
	switch (e) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_READ_ERROR:
		return true;
	default:
		return false;
	}
}

static bool transient_http(long status, const char *code)
{
	if (status == 429 || status == 500 || status == 502 || status == 503 || status == 504 ||
	    status == 408)
		return true;
	return !strcmp(code, "RequestTimeout") || !strcmp(code, "SlowDown") ||
	       !strcmp(code, "InternalError");
}

static void backoff(struct repl_s3 *c, int attempt)
{
	uint64_t ms = (uint64_t)c->backoff_ms << KL_MIN(attempt, 10);
	uint32_t r;

	if (ms > 20000)
		ms = 20000;
	if (repl_s3_random(&r, sizeof(r)) < 0)
		r = 0;
	/* full jitter in [ms/2, ms) so parallel workers do not retry in step */
	ms = ms / 2 + (ms / 2 ? r % (ms / 2 + 1) : 0);
	if (ms)
		usleep((useconds_t)(ms * 1000));
}

static int once(struct repl_s3 *c, CURL *h, const struct repl_s3_req *rq, struct xfer *x,
		long *status, CURLcode *cc, char *errbuf)
{
	struct curl_slist *hdrs = NULL, *t;
	char *url, hash[65], hdr[128], range[64];
	int rc = 0;

	url = kl_asprintf("%s%s%s%s%s%s%s", c->scheme_host, c->bucket_path,
			  rq->key ? "/" : "/", rq->key ? c->prefix : "", rq->key ? rq->key : "",
			  rq->query ? "?" : "", rq->query ? rq->query : "");
	if (!url)
		return -ENOMEM;
	if (rq->body)
		sha256_hex(rq->body, rq->body_len, hash);
	else
		sha256_hex("", 0, hash);
	snprintf(hdr, sizeof(hdr), "x-amz-content-sha256: %s", hash);
	t = kl_lc.curl_slist_append(hdrs, hdr);
	if (t)
		hdrs = t;
	/*
	 * "Expect:" (to skip the 100-continue round trip) must not be added:
	 * curl 7.88 then signs an empty expect header it never sends.
	 */
	if (t && c->token_hdr) {
		t = kl_lc.curl_slist_append(hdrs, c->token_hdr);
		if (t)
			hdrs = t;
	}
	if (!t) {
		kl_lc.curl_slist_free_all(hdrs);
		kl_free(url);
		return kl_err(-ENOMEM, "out of memory building a request");
	}
	kl_lc.curl_easy_reset(h);
	kl_lc.curl_easy_setopt(h, CURLOPT_URL, url);
	kl_lc.curl_easy_setopt(h, CURLOPT_AWS_SIGV4, c->sigv4);
	kl_lc.curl_easy_setopt(h, CURLOPT_USERPWD, c->userpwd);
	kl_lc.curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	kl_lc.curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	kl_lc.curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	kl_lc.curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 15L);
	kl_lc.curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, c->rate && c->rate < 2048 ? 1L : 1024L);
	kl_lc.curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)c->timeout);
	kl_lc.curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, xfer_write);
	kl_lc.curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
	kl_lc.curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, xfer_header);
	kl_lc.curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
	kl_lc.curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	if (c->rate) {
		kl_lc.curl_easy_setopt(h, CURLOPT_MAX_SEND_SPEED_LARGE, c->rate);
		kl_lc.curl_easy_setopt(h, CURLOPT_MAX_RECV_SPEED_LARGE, c->rate);
	}
	if (!strcmp(rq->method, "PUT")) {
		kl_lc.curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
		kl_lc.curl_easy_setopt(h, CURLOPT_READFUNCTION, xfer_read);
		kl_lc.curl_easy_setopt(h, CURLOPT_READDATA, x);
		kl_lc.curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)rq->body_len);
	} else if (!strcmp(rq->method, "HEAD")) {
		kl_lc.curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	} else if (strcmp(rq->method, "GET")) {
		kl_lc.curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, rq->method);
	}
	if (rq->range_len) {
		snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)rq->range_off,
			 (unsigned long long)(rq->range_off + rq->range_len - 1));
		kl_lc.curl_easy_setopt(h, CURLOPT_RANGE, range);
	}
	errbuf[0] = '\0';
	*cc = kl_lc.curl_easy_perform(h);
	*status = 0;
	if (*cc == CURLE_OK)
		kl_lc.curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
	kl_lc.curl_slist_free_all(hdrs);
	kl_free(url);
	return rc;
}

int repl_s3_request(struct repl_s3 *c, const struct repl_s3_req *rq, struct repl_s3_resp *rs)
{
	char errbuf[CURL_ERROR_SIZE];
	const char *key = rq->key ? rq->key : "";
	struct s3_handle *h;
	struct xfer x;
	int rc = 0;

	memset(rs, 0, sizeof(*rs));
	h = handle_get(c);
	if (!h)
		return -ENOMEM;
	for (int attempt = 0;; attempt++) {
		CURLcode cc = CURLE_OK;
		long status = 0;

		memset(&x, 0, sizeof(x));
		x.c = c;
		x.up = rq->body;
		x.up_len = rq->body_len;
		x.down_max = rq->max_body ? rq->max_body : S3_MAX_BODY;
		CNT_ADD(c, requests, 1);
		if (attempt)
			CNT_ADD(c, retries, 1);
		if (!strcmp(rq->method, "GET") && rq->query && strstr(rq->query, "list-type="))
			CNT_ADD(c, list, 1);
		else if (!strcmp(rq->method, "GET"))
			CNT_ADD(c, get, 1);
		else if (!strcmp(rq->method, "PUT"))
			CNT_ADD(c, put, 1);
		else if (!strcmp(rq->method, "HEAD"))
			CNT_ADD(c, head, 1);
		else if (!strcmp(rq->method, "DELETE"))
			CNT_ADD(c, del, 1);
		rc = once(c, h->curl, rq, &x, &status, &cc, errbuf);
		if (rc < 0)
			break;
		if (x.too_long) {
			rc = kl_err(-EUCLEAN, "%s %s/%s: response longer than %zu bytes",
				    rq->method, c->where, key, x.down_max);
			break;
		}
		if (cc != CURLE_OK) {
			if (transient_curl(cc) && attempt < c->retries) {
				kl_free(x.down);
				backoff(c, attempt);
				continue;
			}
			rc = kl_err(-EIO, "%s %s/%s: %s%s%s", rq->method, c->where, key,
				    kl_lc.curl_easy_strerror(cc), errbuf[0] ? ": " : "", errbuf);
			if (attempt)
				kl_err_prefix(rc, "gave up after %d attempts", attempt + 1);
			break;
		}
		rs->status = status;
		rs->date_ns = x.date_ns;
		if (status < 200 || status > 299)
			repl_s3_parse_error((const char *)x.down, x.down_len, rs->code,
					    sizeof(rs->code));
		if (status >= 200 && status <= 299) {
			rs->body = x.down ? x.down : kl_calloc(1, 1);
			x.down = NULL;
			rs->len = x.down_len;
			if (!rs->body)
				rc = -ENOMEM;
			else
				rs->body[rs->len] = '\0';
			break;
		}
		if (transient_http(status, rs->code) && attempt < c->retries) {
			kl_free(x.down);
			backoff(c, attempt);
			continue;
		}
		if (status == 404 && !strcmp(rs->code, "NoSuchBucket"))
			rc = kl_err(-ENOENT, "bucket of %s does not exist (NoSuchBucket)",
				    c->where);
		else if (status == 404)
			rc = kl_err(-ENOENT, "%s/%s: no such object", c->where, key);
		else if (status == 403)
			rc = kl_err(-EACCES, "%s %s/%s: access denied (HTTP 403 %s): check the "
				    "access key and secret", rq->method, c->where, key,
				    rs->code[0] ? rs->code : "Forbidden");
		else if (status == 301 || status == 307 || (status == 400 &&
			 !strcmp(rs->code, "AuthorizationHeaderMalformed")))
			rc = kl_err(-EINVAL, "%s %s/%s: HTTP %ld %s: wrong region or endpoint "
				    "for this bucket", rq->method, c->where, key, status, rs->code);
		else if (status >= 500 || status == 429)
			rc = kl_err(-EIO, "%s %s/%s: HTTP %ld %s, gave up after %d attempts",
				    rq->method, c->where, key, status, rs->code, attempt + 1);
		else
			rc = kl_err(-EINVAL, "%s %s/%s: HTTP %ld %s", rq->method, c->where, key,
				    status, rs->code);
		break;
	}
	kl_free(x.down);
	handle_put(c, h, rc == 0 || rs->status != 0);
	return rc;
}

void repl_s3_resp_release(struct repl_s3_resp *rs)
{
	kl_free(rs->body);
	rs->body = NULL;
	rs->len = 0;
}

int repl_s3_get(struct repl_s3 *c, const char *key, size_t max, uint8_t **out, size_t *len)
{
	struct repl_s3_req rq = { .method = "GET", .key = key, .max_body = max };
	struct repl_s3_resp rs;

	KL_TRY(repl_s3_request(c, &rq, &rs));
	*out = rs.body;
	*len = rs.len;
	return 0;
}

int repl_s3_get_range(struct repl_s3 *c, const char *key, uint64_t off, uint64_t len,
		      uint8_t **out)
{
	struct repl_s3_req rq = { .method = "GET", .key = key, .range_off = off, .range_len = len,
				  .max_body = (size_t)len };
	struct repl_s3_resp rs;

	if (len == 0 || len > S3_MAX_BODY)
		return kl_err(-EINVAL, "bad range length %llu", (unsigned long long)len);
	KL_TRY(repl_s3_request(c, &rq, &rs));
	if (rs.len != len) {
		repl_s3_resp_release(&rs);
		return kl_err(-EUCLEAN, "%s/%s: asked for %llu bytes at %llu, got %zu", c->where,
			      key, (unsigned long long)len, (unsigned long long)off, rs.len);
	}
	*out = rs.body;
	return 0;
}

int repl_s3_put(struct repl_s3 *c, const char *key, const void *body, size_t len)
{
	struct repl_s3_req rq = { .method = "PUT", .key = key, .body = body, .body_len = len };
	struct repl_s3_resp rs;

	KL_TRY(repl_s3_request(c, &rq, &rs));
	repl_s3_resp_release(&rs);
	return 0;
}

int repl_s3_delete(struct repl_s3 *c, const char *key)
{
	struct repl_s3_req rq = { .method = "DELETE", .key = key };
	struct repl_s3_resp rs;
	int rc = repl_s3_request(c, &rq, &rs);

	repl_s3_resp_release(&rs);
	/* deleting what is already gone is success (S3 answers 204 anyway) */
	if (rc == -ENOENT && strcmp(rs.code, "NoSuchBucket"))
		rc = 0;
	return rc;
}

int repl_s3_head(struct repl_s3 *c, const char *key)
{
	struct repl_s3_req rq = { .method = "HEAD", .key = key };
	struct repl_s3_resp rs;
	int rc = repl_s3_request(c, &rq, &rs);

	repl_s3_resp_release(&rs);
	return rc;
}

int repl_s3_check_bucket(struct repl_s3 *c)
{
	struct repl_s3_req rq = { .method = "HEAD", .key = NULL };
	struct repl_s3_resp rs;
	int rc = repl_s3_request(c, &rq, &rs);

	repl_s3_resp_release(&rs);
	if (rc == -ENOENT)
		return kl_err(-ENOENT, "bucket of %s does not exist (or is not visible with these "
			      "credentials)", c->where);
	return rc;
}

/* ------------------------------------------------------------------ listing */

static void urlencode(const char *s, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (; *s && o + 4 < cap; s++) {
		unsigned char ch = (unsigned char)*s;

		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' || ch == '~') {
			out[o++] = (char)ch;
		} else {
			out[o++] = '%';
			out[o++] = hex[ch >> 4];
			out[o++] = hex[ch & 15];
		}
	}
	out[o] = '\0';
}

int repl_s3_list_keys(struct repl_s3 *c, const char *sub, struct repl_s3_obj **out, size_t *n)
{
	struct repl_s3_listing l = { 0 };
	char *full = kl_asprintf("%s%s", c->prefix, sub);
	char enc_prefix[1024], enc_tok[2048];
	int rc = 0;

	*out = NULL;
	*n = 0;
	if (!full)
		return -ENOMEM;
	urlencode(full, enc_prefix, sizeof(enc_prefix));
	for (int pages = 0;; pages++) {
		struct repl_s3_req rq = { .method = "GET", .key = NULL, .max_body = 16u << 20 };
		struct repl_s3_resp rs;
		char *q;

		if (pages > 1000000) {
			rc = kl_err(-ELOOP, "listing %s/%s: too many pages", c->where, sub);
			break;
		}
		/* sorted: continuation-token < list-type < prefix */
		if (l.next_token) {
			urlencode(l.next_token, enc_tok, sizeof(enc_tok));
			q = kl_asprintf("continuation-token=%s&list-type=2&prefix=%s", enc_tok,
					enc_prefix);
		} else {
			q = kl_asprintf("list-type=2&prefix=%s", enc_prefix);
		}
		if (!q) {
			rc = -ENOMEM;
			break;
		}
		rq.query = q;
		rc = repl_s3_request(c, &rq, &rs);
		kl_free(q);
		if (rc < 0) {
			repl_s3_resp_release(&rs);
			if (rc == -ENOENT && !strcmp(rs.code, "NoSuchBucket"))
				rc = kl_err(-ENOENT, "bucket of %s does not exist", c->where);
			break;
		}
		kl_free(l.next_token);
		l.next_token = NULL;
		l.truncated = false;
		rc = repl_s3_parse_listing((const char *)rs.body, rs.len, strlen(c->prefix), &l);
		repl_s3_resp_release(&rs);
		if (rc < 0) {
			kl_err_prefix(rc, "listing %s/%s", c->where, sub);
			break;
		}
		if (!l.truncated)
			break;
		if (!l.next_token) {
			rc = kl_err(-EUCLEAN,
				    "listing %s/%s: truncated without a continuation token",
				    c->where, sub);
			break;
		}
	}
	kl_free(full);
	kl_free(l.next_token);
	if (rc < 0) {
		repl_s3_objs_free(l.objs, l.n);
		return rc;
	}
	*out = l.objs;
	*n = l.n;
	return 0;
}

void repl_s3_objs_free(struct repl_s3_obj *v, size_t n)
{
	for (size_t i = 0; i < n && v; i++)
		kl_free(v[i].key);
	kl_free(v);
}

/* ------------------------------------------------------------------ XML
 *
 * S3 answers are flat enough that a bounded tag scanner suffices; it
 * never reads outside [xml, xml+len) and caps every value.
 */

static const char *memfind(const char *h, const char *end, const char *needle)
{
	size_t nl = strlen(needle);

	if (!h || h >= end || (size_t)(end - h) < nl)
		return NULL;
	return memmem(h, (size_t)(end - h), needle, nl);
}

/* Text of <tag>...</tag> within [p, end); decodes the five XML entities. */
static char *tag_text(const char *p, const char *end, const char *tag, const char **after)
{
	char open[64], close[64];
	const char *s, *e;
	char *out;
	size_t o = 0;

	snprintf(open, sizeof(open), "<%s>", tag);
	snprintf(close, sizeof(close), "</%s>", tag);
	s = memfind(p, end, open);
	if (!s)
		return NULL;
	s += strlen(open);
	e = memfind(s, end, close);
	if (!e || e - s > 4096)
		return NULL;
	out = kl_malloc((size_t)(e - s) + 1);
	if (!out)
		return NULL;
	while (s < e) {
		static const struct {
			const char *ent;
			char c;
		} ents[] = { { "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' },
			     { "&quot;", '"' }, { "&apos;", '\'' } };
		bool done = false;

		if (*s == '&') {
			for (size_t i = 0; i < KL_ARRAY_SIZE(ents); i++) {
				size_t l = strlen(ents[i].ent);

				if ((size_t)(e - s) >= l && !memcmp(s, ents[i].ent, l)) {
					out[o++] = ents[i].c;
					s += l;
					done = true;
					break;
				}
			}
		}
		if (!done)
			out[o++] = *s++;
	}
	out[o] = '\0';
	if (after)
		*after = e + strlen(close);
	return out;
}

void repl_s3_parse_error(const char *xml, size_t len, char *code, size_t cap)
{
	char *t;

	code[0] = '\0';
	if (!xml || !len)
		return;
	t = tag_text(xml, xml + len, "Code", NULL);
	if (t) {
		snprintf(code, cap, "%s", t);
		kl_free(t);
	}
}

int repl_s3_parse_iso8601(const char *s, uint64_t *ns)
{
	int y, mo, d, h, mi, sec, n = 0;
	unsigned frac = 0;
	struct tm tm;
	time_t t;

	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
		return kl_err(-EINVAL, "bad timestamp '%.40s'", s);
	if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
	    sec > 60 || h < 0 || mi < 0 || sec < 0)
		return kl_err(-EINVAL, "bad timestamp '%.40s'", s);
	if (s[19] == '.') {
		int k = 0;

		for (const char *q = s + 20; *q >= '0' && *q <= '9'; q++, k++)
			if (k < 9)
				frac = frac * 10 + (unsigned)(*q - '0');
		for (; k < 9; k++)
			frac *= 10;
	}
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	t = timegm(&tm);
	if (t < 0)
		return kl_err(-EINVAL, "bad timestamp '%.40s'", s);
	*ns = (uint64_t)t * 1000000000ULL + frac;
	return 0;
}

int repl_s3_parse_listing(const char *xml, size_t len, size_t strip, struct repl_s3_listing *l)
{
	const char *p, *end;
	char *tr;

	if (!xml)
		return kl_err(-EUCLEAN, "not a ListBucketResult");
	p = xml;
	end = xml + len;
	if (!memfind(xml, end, "<ListBucketResult"))
		return kl_err(-EUCLEAN, "not a ListBucketResult");
	tr = tag_text(p, end, "IsTruncated", NULL);
	l->truncated = tr && !strcmp(tr, "true");
	kl_free(tr);
	l->next_token = tag_text(p, end, "NextContinuationToken", NULL);
	for (;;) {
		const char *cs = memfind(p, end, "<Contents>"), *ce;
		char *key, *mt, *sz;
		struct repl_s3_obj *o;
		uint64_t size = 0;

		if (!cs)
			break;
		ce = memfind(cs, end, "</Contents>");
		if (!ce)
			return kl_err(-EUCLEAN, "unterminated <Contents>");
		key = tag_text(cs, ce, "Key", NULL);
		mt = tag_text(cs, ce, "LastModified", NULL);
		sz = tag_text(cs, ce, "Size", NULL);
		p = ce + 11;
		if (!key || strlen(key) < strip) {
			kl_free(key);
			kl_free(mt);
			kl_free(sz);
			return kl_err(-EUCLEAN, "listing entry without a key under the prefix");
		}
		if (sz)
			size = strtoull(sz, NULL, 10);
		kl_free(sz);
		if (l->n == l->cap) {
			size_t cap = l->cap ? l->cap * 2 : 64;
			struct repl_s3_obj *v = kl_realloc(l->objs, cap * sizeof(*v));

			if (!v) {
				kl_free(key);
				kl_free(mt);
				return -ENOMEM;
			}
			l->objs = v;
			l->cap = cap;
		}
		o = &l->objs[l->n];
		memset(o, 0, sizeof(*o));
		o->key = kl_strdup(key + strip);
		kl_free(key);
		o->size = size;
		if (mt && repl_s3_parse_iso8601(mt, &o->mtime_ns) < 0)
			o->mtime_ns = 0;
		kl_free(mt);
		kl_err_clear();
		if (!o->key)
			return -ENOMEM;
		l->n++;
	}
	return 0;
}

void repl_s3_listing_release(struct repl_s3_listing *l)
{
	repl_s3_objs_free(l->objs, l->n);
	kl_free(l->next_token);
	memset(l, 0, sizeof(*l));
}
