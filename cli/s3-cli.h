/*
 * cli/s3-cli.h - options and output shared by the commands that talk to
 * S3 repositories (replicate, restore, prune, scrub). Private to cli/.
 */
#ifndef KEEL_CLI_S3_H
#define KEEL_CLI_S3_H

#include "cli/cli.h"
#include "replicate/s3.h"

enum {
	CLI_S3_ENDPOINT = 0x2001,
	CLI_S3_REGION,
	CLI_S3_ACCESS_KEY,
	CLI_S3_SECRET_FILE,
	CLI_S3_ADDRESSING,
	CLI_S3_LIMIT_RATE,
	CLI_S3_RETRIES,
	CLI_S3_TIMEOUT,
	CLI_S3_CACHE_DIR,
	CLI_S3_NO_CACHE,
	CLI_S3_CONNECTIONS,
};

/* Spliced into each command's getopt_long table. */
#define CLI_S3_LONGOPTS                                                                   \
	{ "endpoint", required_argument, NULL, CLI_S3_ENDPOINT },                         \
	{ "region", required_argument, NULL, CLI_S3_REGION },                             \
	{ "access-key", required_argument, NULL, CLI_S3_ACCESS_KEY },                     \
	{ "secret-key-file", required_argument, NULL, CLI_S3_SECRET_FILE },               \
	{ "addressing", required_argument, NULL, CLI_S3_ADDRESSING },                     \
	{ "limit-rate", required_argument, NULL, CLI_S3_LIMIT_RATE },                     \
	{ "retries", required_argument, NULL, CLI_S3_RETRIES },                           \
	{ "timeout", required_argument, NULL, CLI_S3_TIMEOUT },                           \
	{ "cache-dir", required_argument, NULL, CLI_S3_CACHE_DIR },                       \
	{ "no-cache", no_argument, NULL, CLI_S3_NO_CACHE },                               \
	{ "connections", required_argument, NULL, CLI_S3_CONNECTIONS },                   \
	{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },                        \
	{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },                          \
	{ "output", required_argument, NULL, CLI_OPT_OUTPUT },                            \
	{ "progress", no_argument, NULL, 'p' }

/* The option help every S3 command prints. */
#define CLI_S3_USAGE                                                                      \
	"repository and store:\n"                                                         \
	"  --key-file FILE     repository passphrase from FILE (never on the command\n"    \
	"                      line)\n"                                                   \
	"  --key-env VAR       repository passphrase from environment variable VAR\n"    \
	"  --endpoint URL      S3 endpoint (default: $KEEL_S3_ENDPOINT,\n"                \
	"                      $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS)\n"     \
	"  --region R          signing region (default: $AWS_REGION, else us-east-1)\n"  \
	"  --access-key ID     access key id (default: $AWS_ACCESS_KEY_ID)\n"            \
	"  --secret-key-file F secret access key from F (default: $AWS_SECRET_ACCESS_KEY)\n" \
	"  --addressing path|virtual  bucket in the path or in the host name (default:\n" \
	"                      path with --endpoint, virtual-host on AWS)\n"             \
	"  --connections N     parallel requests (default 4)\n"                         \
	"  --limit-rate RATE   bytes per second over all connections, e.g. 20M\n"        \
	"  --retries N         retries on 5xx, 429 and dropped connections (default 6,\n" \
	"                      exponential backoff)\n"                                  \
	"  --timeout S         seconds a request may stall before it is retried (60)\n"  \
	"  --cache-dir DIR     local cache of index objects (default ~/.cache/keel/s3)\n" \
	"  --no-cache          no local cache\n"                                        \
	"  -p, --progress      progress bar even when stderr is not a terminal\n"        \
	"  --output json       machine-readable summary on stdout\n"

struct cli_s3 {
	struct repl_s3_opts o;
	struct cli_open key;  /* repository passphrase (--key-file / --key-env) */
	char *secret;	      /* from --secret-key-file, wiped on release */
	const char *secret_file;
	bool json;
};

/* 1 when opt was one of CLI_S3_LONGOPTS, 0 when not, -1 on a bad value (usage printed). */
int cli_s3_option(struct cli_s3 *s, const char *cmd, int opt, const char *arg);
/* Loads the passphrase (prompting on a terminal) and the secret key file. */
int cli_s3_finish(struct cli_s3 *s, const char *url);
void cli_s3_release(struct cli_s3 *s);
/* The --output json summary. */
void cli_s3_json(const char *cmd, const char *url, const struct repl_s3_stats *st, int rc);

#endif
