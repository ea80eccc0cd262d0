/*
 * cli/cmd_scrub.c - keel scrub s3://BUCKET/PREFIX | IMAGE
 *
 * On an S3 repository: verify every object it references. On an image:
 * read and verify every cluster (blk_check with BLK_CHECK_DATA). Local
 * vaults plug in here by dispatching on the argument.
 */
#include "cli/s3-cli.h"

#include <string.h>

const char cmd_s3_scrub_usage[] =
	"usage: keel scrub [options] s3://BUCKET[/PREFIX]\n"
	"       keel scrub [-f FMT] IMAGE\n"
	"\n"
	"On a repository: downloads and verifies every object it references: the\n"
	"config, every snapshot manifest, every index, and every chunk of every pack\n"
	"(decrypted, decompressed, keyed hash compared with its name), and checks that\n"
	"every chunk a snapshot names is indexed. On an image: reads every cluster\n"
	"and verifies its checksum where the format has one.\n"
	"Exit status 3 when damage is found; each damaged object is named.\n"
	"\n" CLI_S3_USAGE
	"\n"
	"example: keel scrub --key-file pass s3://backups/vm\n";

static int scrub_image(const char *spec, const char *fmt)
{
	struct cli_open co = { .format = fmt };
	struct blk_check_report rep = { 0 };
	struct blk_dev *d;
	int rc = cli_open_image(&co, spec, 0, &d);

	if (rc < 0)
		return cli_fail(rc);
	rc = blk_check(d, &rep, BLK_CHECK_DATA);
	blk_close(d);
	if (rc < 0) {
		blk_check_report_release(&rep);
		return cli_fail(rc);
	}
	for (size_t i = 0; i < rep.nmsgs; i++)
		fprintf(stderr, "keel: damage: %s\n", rep.msgs[i]);
	rc = rep.corruptions || rep.data_errors ? CLI_EXIT_DIFF : 0;
	if (!cli_quiet)
		printf("%s: %llu units checked, %llu corruptions, %llu data errors\n", spec,
		       (unsigned long long)rep.checked, (unsigned long long)rep.corruptions,
		       (unsigned long long)rep.data_errors);
	blk_check_report_release(&rep);
	return rc;
}

int cmd_s3_scrub(int argc, char **argv)
{
	static const struct option lo[] = {
		CLI_S3_LONGOPTS,
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_s3 s = { 0 };
	struct repl_s3_stats st = { 0 };
	const char *url, *fmt = NULL;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:ph", lo, NULL)) != -1) {
		int h = cli_s3_option(&s, "scrub", opt, optarg);

		if (h < 0)
			return CLI_EXIT_USAGE;
		if (h)
			continue;
		switch (opt) {
		case 'f':
			fmt = optarg;
			break;
		case 'h':
			printf("%s", cmd_s3_scrub_usage);
			return 0;
		default:
			return cli_usage("scrub", NULL);
		}
	}
	if (optind != argc - 1)
		return cli_usage("scrub", "expected one repository or image");
	url = argv[optind];
	if (!repl_s3_is_url(url))
		return scrub_image(url, fmt);
	rc = cli_s3_finish(&s, url);
	if (rc == 0)
		rc = repl_s3_scrub(&s.o, &st);
	if (s.json)
		cli_s3_json("scrub", url, &st, rc);
	if (!s.json)
		for (size_t i = 0; i < st.nnames; i++)
			fprintf(stderr, "keel: damage: %s\n", st.names[i]);
	if (rc < 0 && rc != -EBADMSG)
		cli_fail(rc);
	else if (rc == -EBADMSG)
		fprintf(stderr, "keel: error: %s\n", kl_errmsg());
	else if (!s.json && !cli_quiet)
		printf("%s: %llu snapshots, %llu objects and %llu chunks verified, no damage; "
		       "%s downloaded, %.2fs\n", url, (unsigned long long)st.snapshots_done,
		       (unsigned long long)st.objects_checked, (unsigned long long)st.chunks_total,
		       cli_size(st.bytes_downloaded), st.seconds);
	repl_s3_stats_release(&st);
	cli_s3_release(&s);
	if (rc == -EBADMSG && st.damaged)
		return CLI_EXIT_DIFF;
	return rc < 0 ? CLI_EXIT_FAIL : 0;
}
