/*
 * cli/cmd_compare.c - keel compare [-f FMT] [-F FMT] A B
 */
#include "cli/cli.h"
#include "convert/convert.h"

#include <string.h>

const char cmd_compare_usage[] =
	"usage: keel compare [-f FMT_A] [-F FMT_B] [-s] [--output json] A[@SNAP] B[@SNAP]\n"
	"\n"
	"Compares what a guest sees in two images of any formats. Ranges that\n"
	"both images report as zero or unallocated are not read. When the sizes\n"
	"differ, the images are identical only if the extra part of the larger\n"
	"one reads as zeros (-s: a size difference alone is a difference).\n"
	"Exit status: 0 identical, 3 different (the first differing offset is\n"
	"printed), 1 error.\n"
	"\n"
	"  --key-file F, --key-env V  passphrase of encrypted images (.keel, LUKS\n"
	"                             qcow2)\n"
	"\n"
	"example: keel compare disk.raw disk.vmdk\n";

int cmd_compare(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "strict", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open ca = { 0 }, cb = { 0 };
	struct blk_dev *a = NULL, *b = NULL;
	struct conv_compare_result res;
	struct kl_json j;
	bool json = false, strict = false;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:F:sh", lo, NULL)) != -1) {
		switch (opt) {
		case 'f':
			ca.format = optarg;
			break;
		case 'F':
			cb.format = optarg;
			break;
		case 's':
			strict = true;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("compare", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_compare_usage);
			return 0;
		default:
			if (cli_open_option(&ca, opt, optarg)) {
				cli_open_option(&cb, opt, optarg);
				break;
			}
			return cli_usage("compare", NULL);
		}
	}
	if (optind != argc - 2)
		return cli_usage("compare", "expected two images");
	rc = cli_open_image(&ca, argv[optind], 0, &a);
	if (rc == 0)
		rc = cli_open_image(&cb, argv[optind + 1], 0, &b);
	cli_open_release(&ca);
	cli_open_release(&cb);
	if (rc < 0) {
		blk_close(a);
		return cli_fail(rc);
	}
	rc = conv_compare(a, b, strict, &res);
	blk_close(a);
	blk_close(b);
	if (rc < 0)
		return cli_fail(rc);
	if (json) {
		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_bool(&j, "identical", res.identical);
		kl_json_bool(&j, "size_mismatch", res.size_mismatch);
		if (!res.identical)
			kl_json_u64(&j, "first_difference", res.first_diff);
		kl_json_u64(&j, "bytes_compared", res.bytes_read);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else {
		if (res.size_mismatch)
			fprintf(stderr, "Warning: image size mismatch!\n");
		if (res.identical)
			printf("Images are identical.\n");
		else
			printf("Content mismatch at offset %llu!\n", (unsigned long long)res.first_diff);
	}
	return res.identical ? 0 : CLI_EXIT_DIFF;
}
