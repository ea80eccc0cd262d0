/*
 * cli/cmd_prune.c - keel prune s3://BUCKET/PREFIX --keep-...
 *
 * Today S3 repositories; local vaults (keel backup) plug in here by
 * dispatching on the argument.
 */
#include "cli/s3-cli.h"

#include <string.h>

const char cmd_s3_prune_usage[] =
	"usage: keel prune [options] s3://BUCKET[/PREFIX] --keep-last N\n"
	"                  [--keep-daily N ...]\n"
	"\n"
	"Removes the snapshots no --keep rule keeps, then collects garbage: packs no\n"
	"snapshot needs are first condemned (a gc mark object) and deleted by a later\n"
	"prune once the mark is older than --grace and they are still unneeded. This\n"
	"is safe while replicates run at the same time (replicate/S3-LAYOUT.md says\n"
	"why). Without any --keep rule no snapshot is removed: only garbage goes.\n"
	"\n"
	"  --keep-last N       the N newest snapshots\n"
	"  --keep-hourly N     the newest of each of the last N hours with snapshots\n"
	"  --keep-daily N      ... days     --keep-weekly N  ... ISO weeks\n"
	"  --keep-monthly N    ... months   --keep-yearly N  ... years\n"
	"  --keep-name NAME    never remove snapshot NAME\n"
	"  --grace SECONDS     age of a gc mark before its packs go (default 3600)\n"
	"  --no-gc             only remove snapshots\n"
	"  -n, --dry-run       say what would be removed; change nothing\n"
	"\n" CLI_S3_USAGE
	"\n"
	"example: keel prune --key-file pass s3://backups/vm --keep-daily 7 \\\n"
	"             --keep-weekly 4\n";

int cmd_s3_prune(int argc, char **argv)
{
	enum { O_LAST = 0x3001, O_HOURLY, O_DAILY, O_WEEKLY, O_MONTHLY, O_YEARLY, O_NAME, O_GRACE,
	       O_NO_GC };
	static const struct option lo[] = {
		CLI_S3_LONGOPTS,
		{ "keep-last", required_argument, NULL, O_LAST },
		{ "keep-hourly", required_argument, NULL, O_HOURLY },
		{ "keep-daily", required_argument, NULL, O_DAILY },
		{ "keep-weekly", required_argument, NULL, O_WEEKLY },
		{ "keep-monthly", required_argument, NULL, O_MONTHLY },
		{ "keep-yearly", required_argument, NULL, O_YEARLY },
		{ "keep-name", required_argument, NULL, O_NAME },
		{ "grace", required_argument, NULL, O_GRACE },
		{ "no-gc", no_argument, NULL, O_NO_GC },
		{ "dry-run", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_s3 s = { 0 };
	struct repl_s3_prune_opts po = { 0 };
	struct repl_s3_stats st = { 0 };
	const char *url;
	uint64_t v;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "nph", lo, NULL)) != -1) {
		unsigned *slot = NULL;
		int h = cli_s3_option(&s, "prune", opt, optarg);

		if (h < 0)
			return CLI_EXIT_USAGE;
		if (h)
			continue;
		switch (opt) {
		case O_LAST: slot = &po.keep_last; break;
		case O_HOURLY: slot = &po.keep_hourly; break;
		case O_DAILY: slot = &po.keep_daily; break;
		case O_WEEKLY: slot = &po.keep_weekly; break;
		case O_MONTHLY: slot = &po.keep_monthly; break;
		case O_YEARLY: slot = &po.keep_yearly; break;
		case O_NAME:
			po.keep_name = optarg;
			break;
		case O_GRACE:
			if (kl_parse_u64(optarg, &v) < 0 || v > 10 * 365 * 86400ULL)
				return cli_usage("prune", "--grace takes seconds");
			po.grace_s = v;
			po.grace_set = true;
			break;
		case O_NO_GC:
			po.no_gc = true;
			break;
		case 'n':
			po.dry_run = true;
			break;
		case 'h':
			printf("%s", cmd_s3_prune_usage);
			return 0;
		default:
			return cli_usage("prune", NULL);
		}
		if (slot) {
			if (kl_parse_u64(optarg, &v) < 0 || v < 1 || v > 1000000)
				return cli_usage("prune", "--keep-* takes a count of at least 1");
			*slot = (unsigned)v;
		}
	}
	if (optind != argc - 1)
		return cli_usage("prune", "expected one repository");
	url = argv[optind];
	if (!repl_s3_is_url(url))
		return cli_usage("prune", "'%s': only s3://BUCKET/PREFIX repositories are "
				 "supported", url);
	rc = cli_s3_finish(&s, url);
	if (rc == 0)
		rc = repl_s3_prune(&s.o, &po, &st);
	if (s.json)
		cli_s3_json("prune", url, &st, rc);
	if (rc < 0) {
		cli_fail(rc);
	} else if (!s.json && !cli_quiet) {
		for (size_t i = 0; i < st.nnames; i++)
			printf("%s %s@%s\n", po.dry_run ? "would remove" : "removed", url,
			       st.names[i]);
		printf("%llu snapshots %s, %llu kept; %llu packs condemned, %llu objects deleted; "
		       "%.2fs\n",
		       (unsigned long long)st.snapshots_done, po.dry_run ? "to remove" : "removed",
		       (unsigned long long)st.snapshots_skipped,
		       (unsigned long long)st.packs_condemned,
		       (unsigned long long)st.objects_deleted, st.seconds);
	}
	repl_s3_stats_release(&st);
	cli_s3_release(&s);
	return rc < 0 ? CLI_EXIT_FAIL : 0;
}
