/*
 * cli/cmd_commit.c - keel commit FILE
 */
#include "cli/cli.h"
#include "snapshot/snapshot.h"

const char cmd_commit_usage[] =
	"usage: keel commit [-f FMT] [-p] [--allow-external-backing] FILE\n"
	"\n"
	"Writes everything FILE holds into its parent image, then empties FILE\n"
	"(where its format allows) so that it reads through to the parent. What a\n"
	"guest sees through FILE is the same before, after, and after a crash at\n"
	"any point.\n"
	"\n"
	"example: keel commit overlay.keel\n";

int cmd_commit(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "progress", no_argument, NULL, 'p' },
		{ "wait", no_argument, NULL, CLI_OPT_WAIT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct blk_open_opts o = { 0 };
	struct snap_stats st;
	bool progress = cli_force_progress;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		if (opt == 'p')
			progress = true;
		else if (opt == 'h') {
			printf("%s", cmd_commit_usage);
			return 0;
		} else
			return cli_usage("commit", NULL);
	}
	if (optind != argc - 1)
		return cli_usage("commit", "expected one image");
	if ((co.key_file || co.key_env) && (rc = cli_load_key(&co, false, false)) < 0)
		return cli_fail(rc);
	o.format = co.format;
	o.flags = co.flags;
	o.key = co.key;
	o.key_len = co.key_len;
	rc = snap_commit(argv[optind], &o, progress, &st);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	if (!cli_quiet)
		printf("committed %s into its parent: %s copied, %s zeroed in %.2fs\n",
		       argv[optind], cli_size(st.bytes_copied), cli_size(st.bytes_zeroed), st.seconds);
	return 0;
}
