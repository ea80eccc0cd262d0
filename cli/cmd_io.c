/*
 * cli/cmd_io.c - keel io [-c CMD]... FILE[@SNAP]: a qemu-io-like exerciser.
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

const char cmd_io_usage[] =
	"usage: keel io [-f FMT] [-c CMD]... [-q] FILE[@SNAP]\n"
	"\n"
	"Runs I/O commands on an image through the block layer, like qemu-io.\n"
	"Without -c, commands are read from standard input, one per line.\n"
	"Offsets and lengths take K, M, G suffixes.\n"
	"\n"
	"  write [-P BYTE] [-z] OFF LEN   write LEN bytes of BYTE (default 0xcd),\n"
	"                                 or zeros with -z\n"
	"  read [-P BYTE] OFF LEN         read; with -P, fail if any byte differs\n"
	"  discard OFF LEN                drop the range (it then reads as zeros)\n"
	"  flush                          make writes durable\n"
	"\n"
	"The image opens writable when any command writes. Exit status 3 when a\n"
	"read -P found different data.\n"
	"\n"
	"example: keel io -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' disk.keel\n";

#define IO_CHUNK (4u << 20)

struct io_ctx {
	struct blk_dev *d;
	uint8_t *buf;
	bool quiet;
	bool mismatch;
	uint64_t ops;
};

static int split_words(char *line, char **w, int max)
{
	int n = 0;

	for (char *t = strtok(line, " \t\r\n"); t && n < max; t = strtok(NULL, " \t\r\n"))
		w[n++] = t;
	return n;
}

static int parse_pattern(const char *s, int *pat)
{
	uint64_t v;

	if (kl_parse_u64(s, &v) < 0 || v > 255)
		return kl_err(-EINVAL, "pattern '%s' is not a byte value", s);
	*pat = (int)v;
	return 0;
}

static int io_write(struct io_ctx *c, uint64_t off, uint64_t len, int pat, bool zero)
{
	if (zero)
		return blk_pwrite_zeroes(c->d, off, len, BLK_ZERO_MAY_UNMAP);
	memset(c->buf, pat, (size_t)KL_MIN(len, (uint64_t)IO_CHUNK));
	for (uint64_t done = 0; done < len;) {
		size_t n = (size_t)KL_MIN(len - done, (uint64_t)IO_CHUNK);

		KL_TRY(blk_pwrite(c->d, off + done, c->buf, n));
		done += n;
	}
	return 0;
}

static int io_read(struct io_ctx *c, uint64_t off, uint64_t len, int pat)
{
	for (uint64_t done = 0; done < len;) {
		size_t n = (size_t)KL_MIN(len - done, (uint64_t)IO_CHUNK);

		KL_TRY(blk_pread(c->d, off + done, c->buf, n));
		if (pat >= 0) {
			for (size_t i = 0; i < n; i++) {
				if (c->buf[i] != (uint8_t)pat) {
					printf("Pattern verification failed at offset %llu: "
					       "0x%02x, expected 0x%02x\n",
					       (unsigned long long)(off + done + i), c->buf[i], pat);
					c->mismatch = true;
					return 0;
				}
			}
		}
		done += n;
	}
	return 0;
}

static int run_one(struct io_ctx *c, char *line)
{
	char *w[16];
	int n = split_words(line, w, 16), i = 1, pat = -1;
	bool zero = false;
	uint64_t off, len;

	if (n == 0 || w[0][0] == '#')
		return 0;
	if (!strcmp(w[0], "flush"))
		return blk_flush(c->d);
	for (; i < n && w[i][0] == '-' && w[i][1]; i++) {
		if (!strcmp(w[i], "-P") && i + 1 < n) {
			KL_TRY(parse_pattern(w[++i], &pat));
		} else if (!strcmp(w[i], "-z")) {
			zero = true;
		} else if (!strcmp(w[i], "-q")) {
			; /* accepted for qemu-io compatibility */
		} else {
			return kl_err(-EINVAL, "%s: unknown flag '%s'", w[0], w[i]);
		}
	}
	if (n - i != 2)
		return kl_err(-EINVAL, "%s: expected OFFSET and LENGTH", w[0]);
	if (kl_parse_size(w[i], &off) < 0 || kl_parse_size(w[i + 1], &len) < 0)
		return kl_err(-EINVAL, "%s: bad offset or length", w[0]);
	c->ops++;
	if (!strcmp(w[0], "write")) {
		KL_TRY(io_write(c, off, len, pat < 0 ? 0xcd : pat, zero));
		if (!c->quiet)
			printf("wrote %llu/%llu bytes at offset %llu\n", (unsigned long long)len,
			       (unsigned long long)len, (unsigned long long)off);
	} else if (!strcmp(w[0], "read")) {
		KL_TRY(io_read(c, off, len, pat));
		if (!c->quiet)
			printf("read %llu/%llu bytes at offset %llu\n", (unsigned long long)len,
			       (unsigned long long)len, (unsigned long long)off);
	} else if (!strcmp(w[0], "discard")) {
		KL_TRY(blk_discard(c->d, off, len));
		if (!c->quiet)
			printf("discard %llu/%llu bytes at offset %llu\n", (unsigned long long)len,
			       (unsigned long long)len, (unsigned long long)off);
	} else {
		return kl_err(-EINVAL, "unknown io command '%s'", w[0]);
	}
	return 0;
}

static bool writes(const char *cmd)
{
	while (*cmd == ' ' || *cmd == '\t')
		cmd++;
	return !strncmp(cmd, "write", 5) || !strncmp(cmd, "discard", 7) || !strncmp(cmd, "flush", 5);
}

int cmd_io(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "wait", no_argument, NULL, CLI_OPT_WAIT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct io_ctx c = { 0 };
	char **cmds = NULL;
	size_t ncmds = 0;
	bool rw = false, from_stdin;
	char *line = NULL;
	size_t cap = 0;
	int opt, rc = 0;
	double t0;

	cmds = kl_calloc((size_t)argc, sizeof(*cmds));
	if (!cmds)
		return cli_fail(-ENOMEM);
	while ((opt = getopt_long(argc, argv, "f:c:qh", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case 'c':
			cmds[ncmds++] = optarg;
			rw |= writes(optarg);
			break;
		case 'q':
			c.quiet = true;
			break;
		case 'h':
			kl_free(cmds);
			printf("%s", cmd_io_usage);
			return 0;
		default:
			kl_free(cmds);
			return cli_usage("io", NULL);
		}
	}
	if (optind != argc - 1) {
		kl_free(cmds);
		return cli_usage("io", "expected one image");
	}
	from_stdin = ncmds == 0;
	/* commands from stdin may write: open writable unless a snapshot */
	if (from_stdin)
		rw = strchr(argv[optind], '@') == NULL;
	c.quiet |= cli_quiet;
	rc = cli_open_image(&co, argv[optind], rw ? BLK_OPEN_RDWR : 0, &c.d);
	cli_open_release(&co);
	if (rc < 0) {
		kl_free(cmds);
		return cli_fail(rc);
	}
	c.buf = kl_aligned_alloc(IO_CHUNK);
	if (!c.buf) {
		rc = -ENOMEM;
		goto out;
	}
	t0 = kl_now();
	if (from_stdin) {
		while (getline(&line, &cap, stdin) > 0) {
			rc = run_one(&c, line);
			if (rc < 0)
				break;
		}
	} else {
		for (size_t i = 0; i < ncmds && rc == 0; i++) {
			char *copy = kl_strdup(cmds[i]);

			if (!copy) {
				rc = -ENOMEM;
				break;
			}
			rc = run_one(&c, copy);
			kl_free(copy);
		}
	}
	if (rc == 0 && rw)
		rc = blk_flush(c.d);
	if (rc == 0 && !c.quiet && c.ops > 1)
		printf("%llu ops in %.3f s\n", (unsigned long long)c.ops, kl_now() - t0);
out:
	free(line);
	kl_free(c.buf);
	kl_free(cmds);
	blk_close(c.d);
	if (rc < 0)
		return cli_fail(rc);
	return c.mismatch ? CLI_EXIT_DIFF : 0;
}
