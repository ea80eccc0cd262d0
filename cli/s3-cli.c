/*
 * cli/s3-cli.c - option parsing and summaries shared by the S3 commands.
 */
#include "cli/s3-cli.h"

#include <stdlib.h>
#include <string.h>

int cli_s3_option(struct cli_s3 *s, const char *cmd, int opt, const char *arg)
{
	uint64_t v;

	switch (opt) {
	case CLI_S3_ENDPOINT:
		s->o.endpoint = arg;
		return 1;
	case CLI_S3_REGION:
		s->o.region = arg;
		return 1;
	case CLI_S3_ACCESS_KEY:
		s->o.access_key = arg;
		return 1;
	case CLI_S3_SECRET_FILE:
		s->secret_file = arg;
		return 1;
	case CLI_S3_ADDRESSING:
		if (!strcmp(arg, "path"))
			s->o.addressing = REPL_S3_ADDR_PATH;
		else if (!strcmp(arg, "virtual") || !strcmp(arg, "vhost"))
			s->o.addressing = REPL_S3_ADDR_VIRTUAL;
		else if (!strcmp(arg, "auto"))
			s->o.addressing = REPL_S3_ADDR_AUTO;
		else
			return cli_usage(cmd, "--addressing takes path, virtual or auto"), -1;
		return 1;
	case CLI_S3_LIMIT_RATE:
		if (kl_parse_size(arg, &v) < 0 || v < 1024)
			return cli_usage(cmd, "--limit-rate takes a rate of at least 1K"), -1;
		s->o.limit_rate = v;
		return 1;
	case CLI_S3_RETRIES:
		if (kl_parse_u64(arg, &v) < 0 || v > 100)
			return cli_usage(cmd, "--retries takes 0 to 100"), -1;
		s->o.retries = (int)v;
		s->o.retries_set = true;
		return 1;
	case CLI_S3_TIMEOUT:
		if (kl_parse_u64(arg, &v) < 0 || v < 1 || v > 86400)
			return cli_usage(cmd, "--timeout takes 1 to 86400 seconds"), -1;
		s->o.timeout = (int)v;
		return 1;
	case CLI_S3_CONNECTIONS:
		if (kl_parse_u64(arg, &v) < 0 || v < 1 || v > 32)
			return cli_usage(cmd, "--connections takes 1 to 32"), -1;
		s->o.connections = (int)v;
		return 1;
	case CLI_S3_CACHE_DIR:
		s->o.cache_dir = arg;
		return 1;
	case CLI_S3_NO_CACHE:
		s->o.cache_dir = "";
		return 1;
	case CLI_OPT_KEY_FILE:
		s->key.key_file = arg;
		return 1;
	case CLI_OPT_KEY_ENV:
		s->key.key_env = arg;
		return 1;
	case CLI_OPT_OUTPUT:
		if (cli_parse_output(arg, &s->json) < 0)
			return cli_usage(cmd, "bad --output '%s'", arg), -1;
		return 1;
	case 'p':
		s->o.progress = true;
		return 1;
	default:
		return 0;
	}
}

static int read_secret(const char *path, char **out)
{
	struct kl_file *f;
	uint64_t size;
	char *b;
	ssize_t n;
	int rc;

	KL_TRY(kl_io_open(path, KL_O_RDONLY, &f));
	rc = kl_io_size(f, &size);
	if (rc == 0 && (size == 0 || size > 1024))
		rc = kl_err(-EINVAL, "secret key file %s must hold 1 to 1024 bytes", path);
	if (rc < 0) {
		kl_io_close(f);
		return rc;
	}
	b = kl_calloc(1, (size_t)size + 1);
	if (!b) {
		kl_io_close(f);
		return -ENOMEM;
	}
	n = kl_io_pread(f, 0, b, (size_t)size);
	kl_io_close(f);
	if (n < 0) {
		kl_free(b);
		return (int)n;
	}
	while (n > 0 && (b[n - 1] == '\n' || b[n - 1] == '\r' || b[n - 1] == ' '))
		b[--n] = '\0';
	*out = b;
	return 0;
}

int cli_s3_finish(struct cli_s3 *s, const char *url)
{
	s->o.url = url;
	s->o.progress = s->o.progress || cli_force_progress;
	if (s->secret_file) {
		KL_TRY(read_secret(s->secret_file, &s->secret));
		s->o.secret_key = s->secret;
	}
	KL_TRY(cli_load_key(&s->key, true, false));
	if (!s->key.key)
		return kl_err(-EINVAL,
			      "the repository passphrase is needed: --key-file or --key-env");
	s->o.key = s->key.key;
	s->o.key_len = s->key.key_len;
	return 0;
}

void cli_s3_release(struct cli_s3 *s)
{
	cli_open_release(&s->key);
	if (s->secret) {
		kl_wipe(s->secret, strlen(s->secret));
		kl_free(s->secret);
		s->secret = NULL;
	}
}

void cli_s3_json(const char *cmd, const char *url, const struct repl_s3_stats *st, int rc)
{
	struct kl_json j;

	kl_json_begin(&j, stdout);
	kl_json_obj_open(&j, NULL);
	kl_json_str(&j, "command", cmd);
	kl_json_str(&j, "repository", url);
	kl_json_bool(&j, "ok", rc == 0);
	if (rc < 0)
		kl_json_str(&j, "error", kl_errmsg());
	kl_json_arr_open(&j, "snapshots");
	for (size_t i = 0; i < st->nnames && strcmp(cmd, "scrub"); i++)
		kl_json_str(&j, NULL, st->names[i]);
	kl_json_arr_close(&j);
	if (!strcmp(cmd, "scrub")) {
		kl_json_arr_open(&j, "damage");
		for (size_t i = 0; i < st->nnames; i++)
			kl_json_str(&j, NULL, st->names[i]);
		kl_json_arr_close(&j);
	}
	kl_json_obj_open(&j, "requests");
	kl_json_u64(&j, "total", st->requests);
	kl_json_u64(&j, "get", st->req_get);
	kl_json_u64(&j, "put", st->req_put);
	kl_json_u64(&j, "head", st->req_head);
	kl_json_u64(&j, "list", st->req_list);
	kl_json_u64(&j, "delete", st->req_delete);
	kl_json_u64(&j, "retries", st->retries);
	kl_json_obj_close(&j);
	kl_json_u64(&j, "bytes_uploaded", st->bytes_uploaded);
	kl_json_u64(&j, "bytes_downloaded", st->bytes_downloaded);
	kl_json_u64(&j, "bytes_scanned", st->bytes_scanned);
	kl_json_u64(&j, "chunks_total", st->chunks_total);
	kl_json_u64(&j, "chunks_new", st->chunks_new);
	kl_json_u64(&j, "chunks_skipped", st->chunks_skipped);
	kl_json_u64(&j, "chunks_zero", st->chunks_zero);
	kl_json_u64(&j, "chunks_unchanged_not_read", st->chunks_reused);
	kl_json_u64(&j, "bytes_new", st->bytes_new);
	kl_json_u64(&j, "packs_uploaded", st->packs_uploaded);
	kl_json_u64(&j, "snapshots_done", st->snapshots_done);
	kl_json_u64(&j, "snapshots_skipped", st->snapshots_skipped);
	kl_json_u64(&j, "objects_deleted", st->objects_deleted);
	kl_json_u64(&j, "packs_condemned", st->packs_condemned);
	kl_json_u64(&j, "objects_checked", st->objects_checked);
	kl_json_u64(&j, "damaged", st->damaged);
	kl_json_double(&j, "seconds", st->seconds);
	kl_json_obj_close(&j);
	kl_json_end(&j);
}
