/*
 * cli/cmd_diff.c - keel diff FILE SNAP_A [SNAP_B]
 */
#include "cli/cli.h"

#include <string.h>

const char cmd_diff_usage[] =
	"usage: keel diff [--output json] FILE SNAP_A [SNAP_B]\n"
	"\n"
	"Lists the extents that differ between two snapshots of FILE, a .keel or\n"
	"qcow2 image (SNAP_B defaults to the current state; '.' also names it).\n"
	"Computed from metadata alone: no data is read, so a cluster rewritten\n"
	"with the bytes it held counts as changed. Each extent is 'data' (changed\n"
	"content) or 'zero' (now zero, or unallocated without a backing file).\n"
	"\n"
	"example: keel diff --output json vault.keel night-1 night-2\n";

struct diff_out {
	bool json;
	struct kl_json *j;
	uint64_t bytes, extents;
};

static int on_extent(void *opaque, const struct blk_extent *e)
{
	struct diff_out *x = opaque;

	x->bytes += e->len;
	x->extents++;
	if (x->json) {
		kl_json_obj_open(x->j, NULL);
		kl_json_u64(x->j, "start", e->off);
		kl_json_u64(x->j, "length", e->len);
		kl_json_str(x->j, "type", e->type == BLK_DATA ? "data" : "zero");
		kl_json_obj_close(x->j);
	} else {
		printf("%#-18llx %#-18llx %s\n", (unsigned long long)e->off,
		       (unsigned long long)e->len, e->type == BLK_DATA ? "data" : "zero");
	}
	return 0;
}

int cmd_diff(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct diff_out x = { 0 };
	struct blk_dev *d;
	struct kl_json j;
	const char *a, *b = NULL;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:h", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		if (opt == CLI_OPT_OUTPUT) {
			if (cli_parse_output(optarg, &x.json) < 0)
				return cli_usage("diff", "bad --output '%s'", optarg);
		} else if (opt == 'h') {
			printf("%s", cmd_diff_usage);
			return 0;
		} else {
			return cli_usage("diff", NULL);
		}
	}
	if (argc - optind < 2 || argc - optind > 3)
		return cli_usage("diff", "expected FILE SNAP_A [SNAP_B]");
	a = argv[optind + 1];
	if (argc - optind == 3 && strcmp(argv[optind + 2], "."))
		b = argv[optind + 2];
	if (!strcmp(a, "."))
		a = NULL;
	co.flags |= BLK_OPEN_NO_PARENT;
	rc = cli_open_image(&co, argv[optind], 0, &d);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	x.j = &j;
	if (x.json) {
		kl_json_begin(&j, stdout);
		kl_json_arr_open(&j, NULL);
	}
	rc = blk_snapshot_diff(d, a, b, on_extent, &x);
	if (x.json) {
		kl_json_arr_close(&j);
		kl_json_end(&j);
	} else if (rc == 0 && !cli_quiet) {
		printf("%llu extents, %s changed\n", (unsigned long long)x.extents, cli_size(x.bytes));
	}
	blk_close(d);
	return rc < 0 ? cli_fail(rc) : 0;
}
