/*
 * cli/cmd_measure.c - keel measure [-f FMT] -O FMT [-o opts] [-c] (SRC | --size N)
 */
#include "cli/cli.h"
#include "convert/convert.h"

#include <string.h>

const char cmd_measure_usage[] =
	"usage: keel measure [-f FMT] -O FMT [-o OPTIONS] [-c] [-j N] [--output json]\n"
	"                    (SRC[@SNAP] | --size SIZE)\n"
	"\n"
	"Predicts how large `keel convert -O FMT [-o OPTIONS] SRC DST` would make\n"
	"DST, like qemu-img measure: the required size (SRC's data plus the\n"
	"format's metadata) and the fully allocated size (every cluster stored).\n"
	"Only SRC's extent map is read, except with -c, or for a target that\n"
	"always compresses (.keel by default, streamOptimized VMDK, -o esxi):\n"
	"then its data is read and compressed by the convert pipeline (nothing\n"
	"is written), so the compressed size is measured rather than guessed.\n"
	"With --size, an empty image of that size is measured.\n"
	"\n"
	"  -f FMT         source format (probed when absent)\n"
	"  -O FMT         output format (keel help formats)\n"
	"  -o OPTIONS     output format options, as for keel convert (profiles too;\n"
	"                 '-O FMT -o help' lists them)\n"
	"  -c             compressed output\n"
	"  --size SIZE    measure an empty image of SIZE bytes (K, M, G, T suffixes)\n"
	"  -j N           worker threads for -c (default: number of CPUs)\n"
	"  --output json  {\"required\": N, \"fully-allocated\": N, ...}\n"
	"\n"
	"example: keel measure -O qcow2 disk.raw\n";

int cmd_measure(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "size", required_argument, NULL, 'S' },
		{ "disk", required_argument, NULL, 'D' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct conv_opts o = { 0 };
	struct conv_measure m;
	struct kl_opts *opts = NULL;
	uint64_t size = 0, n;
	bool json = false, have_size = false;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:O:o:cj:h", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case 'O':
			o.dst_fmt = optarg;
			break;
		case 'o':
			if (kl_opts_parse(optarg, &opts) < 0) {
				kl_opts_free(opts);
				return cli_usage("measure", "bad -o '%s'", optarg);
			}
			break;
		case 'c':
			o.compress = true;
			break;
		case 'j':
			if (kl_parse_u64(optarg, &n) < 0 || n < 1 || n > 256) {
				kl_opts_free(opts);
				return cli_usage("measure", "-j takes 1 to 256");
			}
			o.threads = (int)n;
			break;
		case 'S':
			if (kl_parse_size(optarg, &size) < 0 || size == 0) {
				kl_opts_free(opts);
				return cli_usage("measure", "bad --size '%s'", optarg);
			}
			have_size = true;
			break;
		case 'D':
			o.src_select = optarg;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0) {
				kl_opts_free(opts);
				return cli_usage("measure", "bad --output '%s'", optarg);
			}
			break;
		case 'h':
			kl_opts_free(opts);
			printf("%s", cmd_measure_usage);
			return 0;
		default:
			kl_opts_free(opts);
			return cli_usage("measure", NULL);
		}
	}
	if (kl_opts_peek(opts, "help")) {
		kl_opts_free(opts);
		if (!o.dst_fmt)
			return cli_usage("measure", "-o help lists the options of one -O FMT");
		return cli_opts_help("measure", o.dst_fmt, true);
	}
	if ((have_size ? optind != argc : optind != argc - 1) || (!o.dst_fmt && !opts)) {
		kl_opts_free(opts);
		return cli_usage("measure", "expected -O FMT and SRC (or --size)");
	}
	if (co.key_file || co.key_env) {
		rc = cli_load_key(&co, false, false);
		if (rc < 0) {
			kl_opts_free(opts);
			return cli_fail(rc);
		}
	}
	o.src = have_size ? NULL : argv[optind];
	o.src_fmt = co.format;
	o.src_flags = co.flags;
	o.dst_opts = opts;
	o.key = co.key;
	o.key_len = co.key_len;
	o.key_nl = co.key_nl;
	o.progress = cli_force_progress;
	rc = conv_measure(&o, size, &m);
	kl_opts_free(opts);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	if (json) {
		struct kl_json j;

		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_u64(&j, "required", m.required);
		kl_json_u64(&j, "fully-allocated", m.fully_allocated);
		kl_json_u64(&j, "data", m.data);
		kl_json_bool(&j, "compressed-data-measured", m.exact_data);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else {
		printf("required size: %llu\n", (unsigned long long)m.required);
		printf("fully allocated size: %llu\n", (unsigned long long)m.fully_allocated);
	}
	return 0;
}
