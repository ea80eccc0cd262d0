/*
 * cli/common.c - error printing, option helpers and image opening for the
 * subcommands.
 */
#include "cli/cli.h"
#include "convert/convert.h"
#include "replicate/replicate.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

int cli_fail(int rc)
{
	(void)rc;
	fprintf(stderr, "keel: error: %s\n", kl_errmsg());
	return CLI_EXIT_FAIL;
}

int cli_failf(const char *fmt, ...)
{
	va_list ap;

	fputs("keel: error: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return CLI_EXIT_FAIL;
}

void cli_warn(const char *fmt, ...)
{
	va_list ap;

	fputs("keel: warning: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int cli_usage(const char *cmd, const char *fmt, ...)
{
	const struct cli_cmd *c = cli_find(cmd);
	va_list ap;

	if (fmt) {
		fputs("keel: ", stderr);
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fputc('\n', stderr);
	}
	if (c)
		fprintf(stderr, "%s", c->usage);
	return CLI_EXIT_USAGE;
}

int cli_opts_help(const char *cmd, const char *fmt, bool packages)
{
	const struct blk_driver *drv = blk_driver_find(fmt);
	const char *h = packages ? conv_format_help(fmt) : drv ? blk_driver_create_help(drv) : NULL;

	if (!h)
		return cli_usage(cmd, "%s: %s", fmt,
				 drv ? "keel cannot write this format, so it has no -o options" :
				 packages ? "unknown format (see 'keel help formats')" :
					    "unknown format, or one only 'keel convert -O' writes");
	printf("%s options (-o KEY=VALUE,...):\n%s", fmt, h);
	return 0;
}

int cli_parse_output(const char *arg, bool *json)
{
	if (!strcmp(arg, "json"))
		*json = true;
	else if (!strcmp(arg, "human") || !strcmp(arg, "text"))
		*json = false;
	else
		return -EINVAL;
	return 0;
}

const char *cli_size(uint64_t n)
{
	static _Thread_local char buf[4][32];
	static _Thread_local int k;

	k = (k + 1) % 4;
	kl_format_size(n, buf[k], sizeof(buf[k]));
	return buf[k];
}

bool cli_tls_option(struct repl_tls_opts *t, int opt, const char *arg)
{
	switch (opt) {
	case CLI_OPT_CERT:
		t->cert = arg;
		return true;
	case CLI_OPT_TLS_KEY:
		t->key = arg;
		return true;
	case CLI_OPT_CA:
		t->ca = arg;
		return true;
	default:
		return false;
	}
}

bool cli_open_option(struct cli_open *co, int opt, const char *arg)
{
	switch (opt) {
	case 'f':
		co->format = arg;
		return true;
	case CLI_OPT_ALLOW_EXTERNAL:
		co->flags |= BLK_OPEN_ALLOW_EXTERNAL;
		return true;
	case CLI_OPT_KEY_FILE:
		co->key_file = arg;
		return true;
	case CLI_OPT_KEY_ENV:
		co->key_env = arg;
		return true;
	case CLI_OPT_WAIT:
		co->flags |= BLK_OPEN_WAIT;
		return true;
	case 'U':
		co->force_share = true;
		return true;
	default:
		return false;
	}
}

static int read_key_file(const char *path, uint8_t **out, size_t *len, size_t *nl)
{
	struct kl_file *f;
	uint64_t size;
	uint8_t *buf;
	ssize_t n;
	int rc;

	KL_TRY(kl_io_open(path, KL_O_RDONLY, &f));
	rc = kl_io_size(f, &size);
	if (rc == 0 && (size == 0 || size > 4096))
		rc = kl_err(-EINVAL, "key file %s: must hold 1 to 4096 bytes", path);
	if (rc < 0) {
		kl_io_close(f);
		return rc;
	}
	buf = kl_malloc((size_t)size);
	if (!buf) {
		kl_io_close(f);
		return -ENOMEM;
	}
	n = kl_io_pread(f, 0, buf, (size_t)size);
	kl_io_close(f);
	if (n < 0) {
		kl_wipe(buf, (size_t)size);
		kl_free(buf);
		return (int)n;
	}
	/*
	 * A passphrase file usually ends with a newline that is not part of
	 * it; the newline stays in the buffer, after the key, because qemu's
	 * and cryptsetup's key files are taken verbatim (LUKS tries both).
	 */
	*nl = (size_t)n;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	*nl -= (size_t)n;
	if (n == 0) {
		kl_wipe(buf, (size_t)size);
		kl_free(buf);
		return kl_err(-EINVAL, "key file %s is empty", path);
	}
	*out = buf;
	*len = (size_t)n;
	return 0;
}

static int prompt_line(const char *prompt, char *buf, size_t cap)
{
	struct termios old, noecho;
	int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
	size_t n = 0;

	if (fd < 0)
		return kl_err(-ENOTTY, "no key given (--key-file or --key-env) and no terminal to ask on");
	if (write(fd, prompt, strlen(prompt)) < 0) {
		close(fd);
		return -EIO;
	}
	tcgetattr(fd, &old);
	noecho = old;
	noecho.c_lflag &= ~(tcflag_t)ECHO;
	tcsetattr(fd, TCSAFLUSH, &noecho);
	while (n + 1 < cap) {
		char c;
		ssize_t r = read(fd, &c, 1);

		if (r <= 0 || c == '\n')
			break;
		buf[n++] = c;
	}
	buf[n] = '\0';
	tcsetattr(fd, TCSAFLUSH, &old);
	/* the newline after the hidden input is cosmetic: its failure does not matter */
	if (write(fd, "\n", 1) != 1)
		buf[n] = '\0';
	close(fd);
	return (int)n;
}

int cli_load_key(struct cli_open *co, bool prompt, bool confirm)
{
	if (co->key)
		return 0;
	if (co->key_file)
		return read_key_file(co->key_file, &co->key, &co->key_len, &co->key_nl);
	if (co->key_env) {
		const char *v = getenv(co->key_env);

		if (!v || !*v)
			return kl_err(-EINVAL, "environment variable %s is not set or empty", co->key_env);
		co->key = (uint8_t *)kl_strdup(v);
		if (!co->key)
			return -ENOMEM;
		co->key_len = strlen(v);
		return 0;
	}
	if (prompt) {
		char a[1024], b[1024];
		int n = prompt_line("passphrase: ", a, sizeof(a));

		if (n < 0)
			return n;
		if (n == 0)
			return kl_err(-EINVAL, "empty passphrase");
		if (confirm) {
			int m = prompt_line("again: ", b, sizeof(b));

			if (m != n || memcmp(a, b, (size_t)n) != 0) {
				kl_wipe(a, sizeof(a));
				kl_wipe(b, sizeof(b));
				return kl_err(-EINVAL, "passphrases differ");
			}
			kl_wipe(b, sizeof(b));
		}
		co->key = (uint8_t *)kl_strndup(a, (size_t)n);
		kl_wipe(a, sizeof(a));
		if (!co->key)
			return -ENOMEM;
		co->key_len = (size_t)n;
	}
	return 0;
}

int cli_open_image(struct cli_open *co, const char *spec, unsigned flags, struct blk_dev **out)
{
	struct blk_open_opts o = { 0 };
	int rc;

	o.format = co->format;
	o.flags = co->flags | flags;
	if (co->key_file || co->key_env)
		KL_TRY(cli_load_key(co, false, false));
	o.key = co->key;
	o.key_len = co->key_len;
	o.key_nl = co->key_nl;
	rc = blk_open(spec, &o, out);
	if (rc == -ENOKEY && !co->key && isatty(STDIN_FILENO)) {
		/* encrypted and no key given: ask, once */
		KL_TRY(cli_load_key(co, true, false));
		o.key = co->key;
		o.key_len = co->key_len;
		rc = blk_open(spec, &o, out);
	}
	return rc;
}

void cli_open_release(struct cli_open *co)
{
	if (co->key) {
		kl_wipe(co->key, co->key_len + co->key_nl);
		kl_free(co->key);
	}
	co->key = NULL;
	co->key_len = 0;
	co->key_nl = 0;
}

bool cli_has_s3_arg(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (!strncmp(argv[i], "s3://", 5))
			return true;
	return false;
}
