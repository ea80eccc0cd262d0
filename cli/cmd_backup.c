/*
 * cli/cmd_backup.c - keel backup SRC VAULT.keel [--name NAME]
 */
#include "cli/cli.h"
#include "convert/convert.h"
#include "snapshot/snapshot.h"

#include <string.h>

const char cmd_backup_usage[] =
	"usage: keel backup [-f SRC_FMT] [-o OPTIONS] [--name NAME] [-j N] [-p]\n"
	"                   [--wait] [-U] [--key-file F | --key-env V]\n"
	"                   [--output json] SRC VAULT.keel\n"
	"\n"
	"Stores what a guest sees in SRC (any format, SRC@SNAP too) as a new\n"
	"snapshot of VAULT. Holes are not read; every cluster is hashed (in\n"
	"parallel, -j threads); clusters the vault already holds at that offset\n"
	"cost nothing and content it holds anywhere is stored once (dedup). The\n"
	"snapshot appears atomically at the end: an interrupted or failed backup\n"
	"leaves the vault exactly as it was. The vault is created on first use\n"
	"with -o options (default dedup=on, compression=zstd; encrypt=on takes\n"
	"the passphrase from --key-file/--key-env or the terminal). NAME defaults\n"
	"to the UTC time, e.g. 2026-11-22T03:00:00Z. One writer at a time: another\n"
	"backup or prune on the same vault makes this one fail at once, or wait\n"
	"with --wait.\n"
	"\n"
	"SRC must not be open for writing by another program (a running VM's\n"
	"disk: qemu's write lock, or a keel writer): a copy of a disk in flux can\n"
	"be torn. Back up a snapshot, or stop the VM; -U (--force-share) copies\n"
	"it anyway.\n"
	"\n"
	"example: keel backup --name nightly-1 /var/lib/libvirt/images/web.qcow2 web.keel\n";

int cmd_backup(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "progress", no_argument, NULL, 'p' },
		{ "wait", no_argument, NULL, CLI_OPT_WAIT },
		{ "force-share", no_argument, NULL, 'U' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct snap_backup_opts o = { 0 };
	struct snap_backup_stats st;
	struct kl_opts *opts = NULL;
	struct kl_json j;
	bool json = false;
	const char *enc;
	uint64_t n;
	int opt, rc;

	o.progress = cli_force_progress;
	while ((opt = getopt_long(argc, argv, "f:o:n:j:phU", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case 'o':
			if (kl_opts_parse(optarg, &opts) < 0)
				return cli_usage("backup", "bad -o '%s'", optarg);
			break;
		case 'n':
			o.name = optarg;
			break;
		case 'j':
			if (kl_parse_u64(optarg, &n) < 0 || n < 1 || n > 256)
				return cli_usage("backup", "-j takes 1 to 256");
			o.threads = (int)n;
			break;
		case 'p':
			o.progress = true;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("backup", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_backup_usage);
			return 0;
		default:
			kl_opts_free(opts);
			return cli_usage("backup", NULL);
		}
	}
	if (optind != argc - 2) {
		kl_opts_free(opts);
		return cli_usage("backup", "expected SRC and VAULT");
	}
	enc = kl_opts_peek(opts, "encrypt");
	rc = cli_load_key(&co, enc && strcmp(enc, "off") != 0, enc && strcmp(enc, "off") != 0);
	if (rc < 0) {
		kl_opts_free(opts);
		return cli_fail(rc);
	}
	o.src = argv[optind];
	o.src_fmt = co.format;
	o.src_flags = CLI_COPY_SRC_FLAGS(&co) & ~(unsigned)BLK_OPEN_WAIT;
	o.vault_flags = co.flags & BLK_OPEN_WAIT;
	o.vault = argv[optind + 1];
	o.create_opts = opts;
	o.key = co.key;
	o.key_len = co.key_len;
	conv_install_signal_handlers();
	rc = snap_backup(&o, &st);
	kl_opts_free(opts);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	if (json) {
		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "vault", o.vault);
		kl_json_str(&j, "snapshot", st.name);
		kl_json_bool(&j, "vault_created", st.created);
		kl_json_u64(&j, "virtual_size", st.virtual_size);
		kl_json_u64(&j, "bytes_scanned", st.scanned);
		kl_json_u64(&j, "zero_bytes_skipped", st.zero_skipped);
		kl_json_u64(&j, "new_bytes_stored", st.new_bytes);
		kl_json_u64(&j, "clusters_new", st.clusters_new);
		kl_json_u64(&j, "clusters_deduplicated", st.clusters_deduped);
		kl_json_u64(&j, "clusters_unchanged", st.clusters_unchanged);
		kl_json_double(&j, "seconds", st.seconds);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else if (!cli_quiet) {
		printf("backup %s -> %s@%s: %s scanned, %s new stored, %llu clusters new, %llu "
		       "deduplicated, %llu unchanged, %.2fs\n",
		       o.src, o.vault, st.name, cli_size(st.scanned), cli_size(st.new_bytes),
		       (unsigned long long)st.clusters_new, (unsigned long long)st.clusters_deduped,
		       (unsigned long long)st.clusters_unchanged, st.seconds);
	}
	return 0;
}
