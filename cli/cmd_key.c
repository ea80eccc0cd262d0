/*
 * cli/cmd_key.c - keel key add|remove|change|list FILE
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

const char cmd_key_usage[] =
	"usage: keel key list FILE\n"
	"       keel key add    FILE (--key-file F | --key-env V)\n"
	"                       [--new-key-file F2 | --new-key-env V2]\n"
	"       keel key change FILE (--key-file F | --key-env V)\n"
	"                       [--new-key-file F2 | --new-key-env V2]\n"
	"       keel key remove FILE (--key-file F | --key-env V)\n"
	"                       [--slot N | --remove-key-file F3]\n"
	"\n"
	"Manages the key slots of an encrypted .keel image without rewriting data:\n"
	"each of up to 8 slots wraps the image's random data key under a key derived\n"
	"from its own passphrase (scrypt N=32768, r=8, p=1). add puts a new passphrase\n"
	"in a free slot; change replaces the passphrase of the slot the current key\n"
	"opens; remove empties a slot (never the last one). Passphrases come from\n"
	"files or environment variables, or are asked for on the terminal; never\n"
	"from the command line.\n"
	"\n"
	"If every passphrase is lost the data cannot be recovered by anyone: keep a\n"
	"second slot with a passphrase stored offline.\n"
	"\n"
	"example: keel key add vault.keel --key-file /etc/keel/key \\\n"
	"             --new-key-file offline.key\n";

#define OPT_NEW_FILE 0x2001
#define OPT_NEW_ENV 0x2002
#define OPT_SLOT 0x2003
#define OPT_RM_FILE 0x2004

int cmd_key(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "new-key-file", required_argument, NULL, OPT_NEW_FILE },
		{ "new-key-env", required_argument, NULL, OPT_NEW_ENV },
		{ "remove-key-file", required_argument, NULL, OPT_RM_FILE },
		{ "slot", required_argument, NULL, OPT_SLOT },
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "wait", no_argument, NULL, CLI_OPT_WAIT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 }, nk = { 0 };
	struct blk_key_slot slots[16];
	struct blk_dev *d = NULL;
	const char *verb;
	bool json = false;
	int opt, rc, slot = -1, out_slot = -1;
	uint64_t v;
	size_t n;

	while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case OPT_NEW_FILE:
		case OPT_RM_FILE:
			nk.key_file = optarg;
			break;
		case OPT_NEW_ENV:
			nk.key_env = optarg;
			break;
		case OPT_SLOT:
			if (kl_parse_u64(optarg, &v) < 0 || v > 15)
				return cli_usage("key", "--slot takes 0..7");
			slot = (int)v;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("key", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_key_usage);
			return 0;
		default:
			return cli_usage("key", NULL);
		}
	}
	if (argc - optind != 2)
		return cli_usage("key", "expected a verb and FILE");
	verb = argv[optind];
	if (strcmp(verb, "list") && strcmp(verb, "add") && strcmp(verb, "change") &&
	    strcmp(verb, "remove"))
		return cli_usage("key", "unknown verb '%s'", verb);
	rc = cli_load_key(&co, true, false);
	if (rc == 0)
		rc = cli_open_image(&co, argv[optind + 1], strcmp(verb, "list") ? BLK_OPEN_RDWR : 0,
				    &d);
	if (rc < 0)
		goto out;
	if (!strcmp(verb, "list")) {
		rc = blk_key_list(d, slots, 16, &n);
		if (rc < 0)
			goto out;
		if (json) {
			struct kl_json j;

			kl_json_begin(&j, stdout);
			kl_json_arr_open(&j, NULL);
			for (size_t i = 0; i < n; i++) {
				kl_json_obj_open(&j, NULL);
				kl_json_i64(&j, "slot", slots[i].slot);
				kl_json_str(&j, "kdf", "scrypt");
				kl_json_u64(&j, "N", slots[i].kdf_n);
				kl_json_u64(&j, "r", slots[i].kdf_r);
				kl_json_u64(&j, "p", slots[i].kdf_p);
				kl_json_bool(&j, "opened_with", slots[i].in_use);
				kl_json_obj_close(&j);
			}
			kl_json_arr_close(&j);
			kl_json_end(&j);
		} else {
			for (size_t i = 0; i < n; i++)
				printf("slot %d: scrypt N=%llu r=%u p=%u%s\n", slots[i].slot,
				       (unsigned long long)slots[i].kdf_n, slots[i].kdf_r,
				       slots[i].kdf_p, slots[i].in_use ? " (this key)" : "");
		}
		goto out;
	}
	if (!strcmp(verb, "remove")) {
		if (slot < 0 && !nk.key_file && !nk.key_env) {
			rc = kl_err(-EINVAL, "remove needs --slot N or --remove-key-file F");
			goto out;
		}
		if (slot < 0 && (rc = cli_load_key(&nk, false, false)) < 0)
			goto out;
		rc = blk_key_op(d, BLK_KEY_REMOVE, nk.key, nk.key_len, slot, &out_slot);
	} else {
		rc = cli_load_key(&nk, true, true);
		if (rc == 0 && !nk.key)
			rc = kl_err(-EINVAL, "a new passphrase is needed (--new-key-file or "
					     "--new-key-env)");
		if (rc == 0)
			rc = blk_key_op(d, !strcmp(verb, "add") ? BLK_KEY_ADD : BLK_KEY_CHANGE,
					nk.key, nk.key_len, -1, &out_slot);
	}
	if (rc == 0)
		rc = blk_flush(d);
	if (rc == 0 && !cli_quiet)
		printf("key %s: slot %d\n", verb, out_slot);
out:
	blk_close(d);
	cli_open_release(&co);
	cli_open_release(&nk);
	return rc < 0 ? cli_fail(rc) : 0;
}
