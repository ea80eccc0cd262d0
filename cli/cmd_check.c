/*
 * cli/cmd_check.c - keel check [--verify-data] [-r leaks|all] FILE
 */
#include "cli/cli.h"

#include <string.h>

const char cmd_check_usage[] =
	"usage: keel check [-f FMT] [--verify-data] [-p] [-r leaks|all] [--output json]\n"
	"                  FILE\n"
	"\n"
	"Checks an image's metadata: every reference is counted and compared with\n"
	"the stored refcounts (corruptions: a block used more often than counted;\n"
	"leaks: counted but unused). --verify-data also reads every cluster and\n"
	"verifies its checksum, with a progress bar on a terminal (or with -p).\n"
	"-r leaks frees leaked space; -r all also fixes counts that are too low\n"
	"(keel and qcow2 images). Nothing is repaired\n"
	"without -r, nor while the tables have damage -r cannot repair (what it\n"
	"cut off shows as leaked and may be the data).\n"
	"VHD, VHDX, VDI and VMDK images have their structure checked as they open\n"
	"(every block inside the file, none overlapping another); check then\n"
	"reports damage that opening tolerated (a bad checksum, a lost VHD end\n"
	"footer), header counts that disagree with the tables, and file space no\n"
	"block uses (leaks; not VHDX, whose files may keep free space).\n"
	"There, -r leaks cuts leaked space off the end of the file, and -r all\n"
	"also rebuilds a lost VHD end footer from its copy at offset 0, raises a\n"
	"VDI allocated-block count that is below a block in use, and copies a\n"
	"VMDK's grain tables over redundant copies that differ from them.\n"
	"Exit status: 0 clean (or everything found was repaired), 3 problems\n"
	"found, 1 the check could not run.\n"
	"\n"
	"example: keel check --verify-data vault.keel\n";

int cmd_check(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "verify-data", no_argument, NULL, 'V' },
		{ "repair", required_argument, NULL, 'r' },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "progress", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct blk_check_report r;
	struct blk_dev *d;
	struct kl_json j;
	unsigned flags = cli_force_progress ? BLK_CHECK_PROGRESS : 0;
	bool json = false, problems;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:r:ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case 'V':
			flags |= BLK_CHECK_DATA;
			break;
		case 'p':
			flags |= BLK_CHECK_PROGRESS;
			break;
		case 'r':
			if (!strcmp(optarg, "leaks"))
				flags |= BLK_CHECK_REPAIR_LEAKS;
			else if (!strcmp(optarg, "all"))
				flags |= BLK_CHECK_REPAIR_ALL;
			else
				return cli_usage("check", "-r takes leaks or all");
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("check", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_check_usage);
			return 0;
		default:
			return cli_usage("check", NULL);
		}
	}
	if (optind != argc - 1)
		return cli_usage("check", "expected one image");
	/* the parent is not needed to check this image's own metadata */
	co.flags |= BLK_OPEN_NO_PARENT;
	rc = cli_open_image(&co, argv[optind],
			    (flags & BLK_CHECK_REPAIR_ALL) ? BLK_OPEN_RDWR | BLK_OPEN_REPAIR : 0, &d);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	rc = blk_check(d, &r, flags);
	if (rc == 0 && (flags & BLK_CHECK_REPAIR_ALL))
		rc = blk_flush(d);
	blk_close(d);
	if (rc < 0) {
		blk_check_report_release(&r);
		return cli_fail(rc);
	}
	problems = r.corruptions + r.leaks + r.data_errors > r.repaired;
	if (json) {
		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "filename", argv[optind]);
		kl_json_u64(&j, "corruptions", r.corruptions);
		kl_json_u64(&j, "leaks", r.leaks);
		kl_json_u64(&j, "data_errors", r.data_errors);
		kl_json_u64(&j, "repaired", r.repaired);
		kl_json_u64(&j, "clusters_verified", r.checked);
		kl_json_u64(&j, "allocated_clusters", r.allocated_clusters);
		kl_json_u64(&j, "total_clusters", r.total_clusters);
		kl_json_bool(&j, "clean", !problems);
		kl_json_arr_open(&j, "messages");
		for (size_t i = 0; i < r.nmsgs; i++)
			kl_json_str(&j, NULL, r.msgs[i]);
		kl_json_arr_close(&j);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else {
		for (size_t i = 0; i < r.nmsgs; i++)
			printf("%s\n", r.msgs[i]);
		if (r.dropped_msgs)
			printf("... and %llu more\n", (unsigned long long)r.dropped_msgs);
		if (!problems && r.repaired)
			printf("%llu problems were found and repaired; the image is clean now.\n",
			       (unsigned long long)r.repaired);
		else if (!problems)
			printf("No errors were found on the image.\n");
		else
			printf("%llu corruptions, %llu leaks, %llu data errors found (%llu repaired)\n",
			       (unsigned long long)r.corruptions, (unsigned long long)r.leaks,
			       (unsigned long long)r.data_errors, (unsigned long long)r.repaired);
		if (r.total_clusters)
			printf("%llu/%llu = %.2f%% allocated\n",
			       (unsigned long long)r.allocated_clusters,
			       (unsigned long long)r.total_clusters,
			       100.0 * (double)r.allocated_clusters / (double)r.total_clusters);
		if (flags & BLK_CHECK_DATA)
			printf("%llu clusters verified\n", (unsigned long long)r.checked);
	}
	blk_check_report_release(&r);
	return problems ? CLI_EXIT_DIFF : 0;
}
