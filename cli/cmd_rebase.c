/*
 * cli/cmd_rebase.c - keel rebase [-u] -b NEWPARENT FILE
 */
#include "cli/cli.h"
#include "snapshot/snapshot.h"

#include <string.h>

const char cmd_rebase_usage[] =
	"usage: keel rebase [-f FMT] [-u] -b NEWPARENT [-F NEWPARENT_FMT] [-p] FILE\n"
	"\n"
	"Makes NEWPARENT the parent of FILE (-b \"\" removes the parent). By default\n"
	"keel first copies into FILE whatever the old chain shows differently from\n"
	"NEWPARENT, so FILE's content does not change. -u (unsafe) only rewrites\n"
	"the reference, for when a parent was moved or renamed. NEWPARENT is\n"
	"recorded relative to FILE's directory and must lie inside it unless\n"
	"--allow-external-backing.\n"
	"\n"
	"example: keel rebase -b new-base.keel overlay.keel\n";

int cmd_rebase(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "progress", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct blk_open_opts o = { 0 };
	struct snap_stats st;
	const char *np = NULL, *nf = NULL;
	bool unsafe = false, have_b = false, progress = cli_force_progress;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:ub:F:ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case 'u':
			unsafe = true;
			break;
		case 'b':
			np = optarg;
			have_b = true;
			break;
		case 'F':
			nf = optarg;
			break;
		case 'p':
			progress = true;
			break;
		case 'h':
			printf("%s", cmd_rebase_usage);
			return 0;
		default:
			return cli_usage("rebase", NULL);
		}
	}
	if (optind != argc - 1 || !have_b)
		return cli_usage("rebase", "expected -b NEWPARENT and one image");
	if (np && !*np)
		np = NULL;
	if ((co.key_file || co.key_env) && (rc = cli_load_key(&co, false, false)) < 0)
		return cli_fail(rc);
	o.format = co.format;
	o.flags = co.flags;
	o.key = co.key;
	o.key_len = co.key_len;
	rc = snap_rebase(argv[optind], &o, np, nf, unsafe, progress, &st);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	if (!cli_quiet)
		printf("rebased %s onto %s%s: %s copied\n", argv[optind], np ? np : "(no parent)",
		       unsafe ? " (unsafe)" : "", cli_size(st.bytes_copied));
	return 0;
}
