/*
 * cli/cmd_check.c - keel check [-f FMT] [-r leaks|all] [--output json] FILE
 */
#include "cli/cli.h"

#include <string.h>

const char cmd_check_usage[] =
	"usage: keel check [-f FMT] [-r leaks|all] [--output json] FILE\n"
	"\n"
	"Checks an image's metadata: every reference count against the tables\n"
	"that use the clusters (like qemu-img check). Reports corruptions\n"
	"(metadata errors, refcounts too low) and leaks (clusters allocated but\n"
	"unused). -r leaks frees leaked clusters; -r all also repairs refcounts\n"
	"and copied flags and clears a dirty or corrupt bit once the image is\n"
	"consistent. Exit status: 0 clean, 3 problems remain, 1 error.\n"
	"\n"
	"  -f FMT          image format (probed when absent)\n"
	"  -r leaks|all    repair (opens the image writable)\n"
	"  --output json   machine-readable report\n"
	"\n"
	"example: keel check -r leaks disk.qcow2\n";

int cmd_check(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "repair", required_argument, NULL, 'r' },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct blk_check_report r;
	struct blk_dev *d = NULL;
	unsigned flags = 0, oflags = BLK_OPEN_NO_PARENT;
	bool json = false;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:r:h", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("check", "bad --output '%s'", optarg);
			break;
		case 'r':
			if (!strcmp(optarg, "leaks"))
				flags = BLK_CHECK_REPAIR_LEAKS;
			else if (!strcmp(optarg, "all"))
				flags = BLK_CHECK_REPAIR_ALL;
			else
				return cli_usage("check", "-r takes leaks or all, not '%s'", optarg);
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
	if (flags)
		oflags |= BLK_OPEN_RDWR | BLK_OPEN_REPAIR;
	rc = cli_open_image(&co, argv[optind], oflags, &d);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	rc = blk_check(d, &r, flags);
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	if (rc < 0)
		return cli_fail(rc);
	if (json) {
		struct kl_json j;

		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "filename", argv[optind]);
		kl_json_u64(&j, "corruptions", r.corruptions);
		kl_json_u64(&j, "leaks", r.leaks);
		kl_json_u64(&j, "data_errors", r.data_errors);
		kl_json_u64(&j, "repaired", r.repaired);
		kl_json_u64(&j, "checked", r.checked);
		kl_json_u64(&j, "allocated_clusters", r.allocated_clusters);
		kl_json_u64(&j, "total_clusters", r.total_clusters);
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
			printf("(%llu more messages not shown)\n", (unsigned long long)r.dropped_msgs);
		if (r.repaired)
			printf("%llu problems were repaired.\n", (unsigned long long)r.repaired);
		if (!r.corruptions && !r.leaks && !r.data_errors)
			printf("No errors were found on the image.\n");
		if (r.corruptions)
			printf("%llu errors were found on the image.\n",
			       (unsigned long long)r.corruptions);
		if (r.data_errors)
			printf("%llu clusters failed their checksum.\n",
			       (unsigned long long)r.data_errors);
		if (r.leaks)
			printf("%llu leaked clusters were found on the image (wasted space, no harm "
			       "to data; 'keel check -r leaks' frees them).\n",
			       (unsigned long long)r.leaks);
		if (r.total_clusters)
			printf("%llu/%llu = %.2f%% allocated\n",
			       (unsigned long long)r.allocated_clusters,
			       (unsigned long long)r.total_clusters,
			       100.0 * (double)r.allocated_clusters / (double)r.total_clusters);
	}
	rc = (r.corruptions || r.leaks || r.data_errors) ? CLI_EXIT_DIFF : 0;
	blk_check_report_release(&r);
	return rc;
}
