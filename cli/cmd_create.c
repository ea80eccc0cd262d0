/*
 * cli/cmd_create.c - keel create [-f FMT] [-o opts] [-b PARENT [-F PFMT]] FILE [SIZE]
 */
#include "cli/cli.h"

#include <string.h>

const char cmd_create_usage[] =
	"usage: keel create [-f FMT] [-o OPTIONS] [-b PARENT [-F PARENT_FMT]]\n"
	"                   [--key-file F | --key-env V] [--allow-external-backing]\n"
	"                   FILE [SIZE]\n"
	"\n"
	"Creates an empty image. SIZE takes K, M, G, T suffixes (powers of 1024);\n"
	"with a parent it defaults to the parent's size. The default format is\n"
	"keel. The parent is recorded relative to FILE's directory and must lie\n"
	"inside it unless --allow-external-backing.\n"
	"An encrypted image (-o encrypt=on, -f luks, qcow2's -o\n"
	"encrypt.format=luks) takes its passphrase from --key-file F or the\n"
	"environment variable --key-env V names (or the terminal, asked twice).\n"
	"\n"
	"keel options (-o): cluster_size=4K..2M (64K), compression=zstd|zlib|none\n"
	"  (zstd), compression_level=N, dedup=on, encrypt=on\n"
	"Other formats: keel help formats; their options are listed by\n"
	"'keel create -f FMT -o help'.\n"
	"\n"
	"example: keel create -o cluster_size=64K vault.keel 20G\n"
	"         keel create -b base.keel overlay.keel\n";

int cmd_create(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct blk_create_opts o = { 0 };
	struct kl_opts *opts = NULL;
	const char *fmt = "keel";
	const char *enc;
	const struct blk_driver *drv;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:o:b:F:h", lo, NULL)) != -1) {
		switch (opt) {
		case 'f':
			fmt = optarg;
			break;
		case 'o':
			if (kl_opts_parse(optarg, &opts) < 0)
				return cli_usage("create", "bad -o '%s'", optarg);
			break;
		case 'b':
			o.parent = optarg;
			break;
		case 'F':
			o.parent_format = optarg;
			break;
		case 'h':
			printf("%s", cmd_create_usage);
			return 0;
		default:
			if (cli_open_option(&co, opt, optarg))
				break;
			kl_opts_free(opts);
			return cli_usage("create", NULL);
		}
	}
	if (kl_opts_peek(opts, "help")) {
		kl_opts_free(opts);
		return cli_opts_help("create", fmt, false);
	}
	if (optind >= argc || argc - optind > 2 || (argc - optind == 1 && !o.parent)) {
		kl_opts_free(opts);
		return cli_usage("create", "expected FILE and SIZE");
	}
	if (argc - optind == 2 && kl_parse_size(argv[optind + 1], &o.size) < 0) {
		kl_opts_free(opts);
		return cli_usage("create", "bad size '%s'", argv[optind + 1]);
	}
	o.opts = opts;
	o.flags = co.flags;
	enc = kl_opts_peek(opts, "encrypt");
	if (!enc)
		enc = kl_opts_peek(opts, "encrypt.format"); /* qcow2's LUKS */
	drv = blk_driver_find(fmt);
	if ((enc && strcmp(enc, "off") != 0) || (drv && blk_driver_create_needs_key(drv))) {
		rc = cli_load_key(&co, true, true);
		if (rc < 0) {
			kl_opts_free(opts);
			return cli_fail(rc);
		}
	}
	if (o.parent && (co.key_file || co.key_env) && !co.key)
		cli_load_key(&co, false, false);
	o.key = co.key;
	o.key_len = co.key_len;
	o.key_nl = co.key_nl;
	rc = blk_create(argv[optind], fmt, &o);
	kl_opts_free(opts);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	if (!cli_quiet)
		printf("created %s (%s)\n", argv[optind], fmt);
	return 0;
}
