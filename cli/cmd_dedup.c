/*
 * cli/cmd_dedup.c - keel dedup FILE
 */
#include "cli/cli.h"

const char cmd_dedup_usage[] =
	"usage: keel dedup [-p] [--key-file F | --key-env V] FILE\n"
	"\n"
	"Deduplicates an existing .keel image offline: (re)builds its content\n"
	"index from every stored cluster, points duplicate clusters of the current\n"
	"state at one stored copy, and turns dedup on for later writes. Snapshots\n"
	"keep the clusters they hold. Also rebuilds an index that a crash or an\n"
	"older keel left incomplete.\n"
	"\n"
	"example: keel dedup vm.keel\n";

int cmd_dedup(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "progress", no_argument, NULL, 'p' },
		{ "wait", no_argument, NULL, CLI_OPT_WAIT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct blk_stats st;
	struct blk_dev *d;
	bool progress = cli_force_progress;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		if (opt == 'p')
			progress = true;
		else if (opt == 'h') {
			printf("%s", cmd_dedup_usage);
			return 0;
		} else
			return cli_usage("dedup", NULL);
	}
	if (optind != argc - 1)
		return cli_usage("dedup", "expected one image");
	co.flags |= BLK_OPEN_NO_PARENT;
	rc = cli_open_image(&co, argv[optind], BLK_OPEN_RDWR, &d);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	rc = blk_dedup(d, progress, &st);
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	if (rc < 0)
		return cli_fail(rc);
	if (!cli_quiet)
		printf("dedup %s: %llu clusters now share a stored copy\n", argv[optind],
		       (unsigned long long)st.clusters_deduped);
	return 0;
}
