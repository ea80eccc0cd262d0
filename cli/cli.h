/*
 * cli/cli.h - shared pieces of the `keel` command line.
 *
 * Each subcommand lives in cli/cmd_<name>.c with its usage text; the table
 * in cli/commands.c lists them once (git's commands[], kvmtool's
 * kvm_commands[]). Only the CLI prints; it maps library codes to exit
 * statuses: 0 ok, 1 failure, 2 usage error, 3 a verification found a
 * difference or damage.
 */
#ifndef KEEL_CLI_H
#define KEEL_CLI_H

#include "format/format.h"

#include <getopt.h>

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2
#define CLI_EXIT_DIFF 3

#define CLI_WRITES 0x1	  /* modifies images */
#define CLI_NEEDS_KVM 0x2 /* needs /dev/kvm (or a fallback engine) */

struct cli_cmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
	const char *usage; /* full text for `keel help NAME` */
	unsigned flags;
	const char *usage_more; /* a second form (s3:// sources), printed after usage */
};

/* True when some non-option argument is an s3:// URL (the command hands over). */
bool cli_has_s3_arg(int argc, char **argv);

extern const struct cli_cmd cli_commands[];
const struct cli_cmd *cli_find(const char *name);

/* Global options, set by main before dispatch. */
extern bool cli_force_progress; /* -p anywhere before the command */
extern bool cli_quiet;

/* "keel: error: <message>" on stderr; returns CLI_EXIT_FAIL. */
int cli_fail(int rc);
int cli_failf(const char *fmt, ...) KL_PRINTF(1, 2);
void cli_warn(const char *fmt, ...) KL_PRINTF(1, 2);
/* Usage of the current command on stderr; returns CLI_EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...) KL_PRINTF(2, 3);

/*
 * `-o help` (create, convert, measure): prints the -o keys of format fmt
 * (or, with packages, of a convert package: ova, gce), as qemu-img does;
 * returns 0, or a usage error for a format without any.
 */
int cli_opts_help(const char *cmd, const char *fmt, bool packages);

/* Options every image-opening command accepts (see cli_add_open_opts). */
struct cli_open {
	const char *format;
	unsigned flags;
	const char *key_file;
	const char *key_env;
	uint8_t *key; /* loaded secret, wiped on release */
	size_t key_len;
	size_t key_nl; /* newline bytes cut off a key file's end (blk_open_opts) */
	bool force_share; /* -U: copy a source another program is writing */
};
/* BLK_OPEN_* flags for the source of a copy (convert, backup): co's, plus
 * the refusal of a source being written unless -U. */
#define CLI_COPY_SRC_FLAGS(co) ((co)->flags | ((co)->force_share ? 0u : BLK_OPEN_NO_WRITER))
#define CLI_OPT_ALLOW_EXTERNAL 0x1001
#define CLI_OPT_KEY_FILE 0x1002
#define CLI_OPT_KEY_ENV 0x1003
#define CLI_OPT_OUTPUT 0x1004
#define CLI_OPT_WAIT 0x1005
#define CLI_OPT_CERT 0x1006
#define CLI_OPT_TLS_KEY 0x1007
#define CLI_OPT_CA 0x1008
/* --cert C --key K (or --tls-key K) --ca CA: this side's TLS identity for keel:// */
#define CLI_TLS_LONGOPTS                                          \
	{ "cert", required_argument, NULL, CLI_OPT_CERT },        \
	{ "key", required_argument, NULL, CLI_OPT_TLS_KEY },      \
	{ "tls-key", required_argument, NULL, CLI_OPT_TLS_KEY },  \
	{ "ca", required_argument, NULL, CLI_OPT_CA }
struct repl_tls_opts;
/* Handle a CLI_TLS_LONGOPTS option; true when it was one. */
bool cli_tls_option(struct repl_tls_opts *t, int opt, const char *arg);
/* Handle an open-related long option; true when it was one. */
bool cli_open_option(struct cli_open *co, int opt, const char *arg);
int cli_open_image(struct cli_open *co, const char *spec, unsigned flags, struct blk_dev **out);
void cli_open_release(struct cli_open *co);
/* Load the secret from --key-file/--key-env, or prompt on a terminal when prompt. */
int cli_load_key(struct cli_open *co, bool prompt, bool confirm);

/* --output json|human */
int cli_parse_output(const char *arg, bool *json);

/* Human-readable size in a static buffer (one per call site is fine). */
const char *cli_size(uint64_t n);

#endif
