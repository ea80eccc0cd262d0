/*
 * cli/cmd_restore.c - keel restore VAULT[@SNAP] -O FMT OUT
 */
#include "cli/cli.h"
#include "convert/convert.h"
#include "snapshot/snapshot.h"

#include <string.h>
#include <sys/stat.h>

const char cmd_restore_usage[] =
	"usage: keel restore [-O FMT] [-o OPTIONS] [--verify] [-p] [--output json]\n"
	"                    [--key-file F | --key-env V] [--cert C --key K --ca CA]\n"
	"                    VAULT.keel[@SNAP] | keel://HOST:PORT/NAME[@SNAP]  OUT\n"
	"\n"
	"Restores a snapshot of a vault (the newest without @SNAP) to an image of\n"
	"any format (default raw), sparse, written under a temporary name and\n"
	"renamed when complete. --verify re-reads OUT and compares its content\n"
	"digest with the snapshot's (exit 3 when they differ; OUT is not created).\n"
	"OUT may be a block device (an LVM volume, a disk): the snapshot is then\n"
	"written into it in place, raw, as keel convert does (keel help convert).\n"
	"\n"
	"From a replica on a keel serve (keel://...), the snapshot is first fetched\n"
	"over TLS (--cert, --key, --ca as for keel replicate; every record\n"
	"authenticated) into a temporary image next to OUT, removed afterwards;\n"
	"the key options give the replica's passphrase (needed for --raw replicas).\n"
	"\n"
	"example: keel restore --verify -O qcow2 web.keel@nightly-3 web.qcow2\n"
	"         keel restore --cert c.crt --key c.key --ca ca.crt --key-file pass \\\n"
	"             -O vmdk keel://dr.example:7457/web web.vmdk\n";

int cmd_s3_restore(int argc, char **argv);

int cmd_restore(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "verify", no_argument, NULL, 'V' },
		{ "progress", no_argument, NULL, 'p' },
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		CLI_TLS_LONGOPTS,
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct conv_opts o = { 0 };
	struct conv_stats st;
	struct kl_opts *opts = NULL;
	struct repl_tls_opts tls = { 0 };
	struct snap_replica rp = { 0 };
	struct kl_json j;
	char spec[4096], snap[256];
	bool json = false;
	int opt, rc;

	o.dst_fmt = "raw";
	/* s3:// repositories have their own implementation (replicate/s3.h) */
	if (cli_has_s3_arg(argc, argv))
		return cmd_s3_restore(argc, argv);
	while ((opt = getopt_long(argc, argv, "O:o:ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg) || cli_tls_option(&tls, opt, optarg))
			continue;
		switch (opt) {
		case 'O':
			o.dst_fmt = optarg;
			break;
		case 'o':
			if (kl_opts_parse(optarg, &opts) < 0)
				return cli_usage("restore", "bad -o '%s'", optarg);
			break;
		case 'V':
			o.verify = true;
			break;
		case 'p':
			o.progress = true;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("restore", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_restore_usage);
			return 0;
		default:
			kl_opts_free(opts);
			return cli_usage("restore", NULL);
		}
	}
	if (optind != argc - 2) {
		kl_opts_free(opts);
		return cli_usage("restore", "expected VAULT[@SNAP] and OUT");
	}
	if ((co.key_file || co.key_env) && (rc = cli_load_key(&co, false, false)) < 0) {
		kl_opts_free(opts);
		return cli_fail(rc);
	}
	o.progress = o.progress || cli_force_progress;
	if (repl_is_url(argv[optind])) {
		char *near = kl_strdup(argv[optind + 1]), *slash;
		const char *dir;
		struct stat ost;

		if (!near) {
			kl_opts_free(opts);
			cli_open_release(&co);
			return cli_fail(-ENOMEM);
		}
		slash = strrchr(near, '/');
		if (slash)
			slash[slash == near ? 1 : 0] = '\0';
		/*
		 * The fetched copy goes beside OUT (same filesystem, room for
		 * it), except beside a device node: /dev is memory. $TMPDIR then.
		 */
		dir = slash ? near : ".";
		if (stat(argv[optind + 1], &ost) == 0 && !S_ISREG(ost.st_mode))
			dir = NULL;
		rc = snap_replica_fetch(argv[optind], &tls, co.key, co.key_len, dir, o.progress,
					&rp);
		kl_free(near);
		if (rc < 0) {
			kl_opts_free(opts);
			cli_open_release(&co);
			return cli_fail(rc);
		}
		snprintf(spec, sizeof(spec), "%s@%s", rp.image, rp.snapshot);
	} else {
		snprintf(spec, sizeof(spec), "%s", argv[optind]);
	}
	if (!strchr(spec, '@')) {
		struct blk_open_opts vo = { .format = "keel", .flags = BLK_OPEN_NO_PARENT,
					    .key = co.key, .key_len = co.key_len };
		struct blk_dev *d;

		rc = blk_open(spec, &vo, &d);
		if (rc == 0) {
			rc = snap_latest(d, snap, sizeof(snap));
			blk_close(d);
		}
		if (rc < 0) {
			kl_opts_free(opts);
			cli_open_release(&co);
			return cli_fail(rc);
		}
		snprintf(spec, sizeof(spec), "%s@%s", argv[optind], snap);
	}
	o.src = spec;
	o.src_fmt = "keel";
	o.dst = argv[optind + 1];
	o.dst_opts = opts;
	o.key = co.key;
	o.key_len = co.key_len;
	conv_install_signal_handlers();
	rc = conv_run(&o, &st);
	kl_opts_free(opts);
	cli_open_release(&co);
	if (rp.dir) {
		/* report the replica, not the temporary image it was fetched into */
		snprintf(spec, sizeof(spec), "%s@%s", rp.target, rp.snapshot);
		st.seconds += rp.seconds;
		snap_replica_release(&rp);
	}
	if (rc < 0 && !st.verify_failed)
		return cli_fail(rc);
	if (st.verify_failed) {
		fprintf(stderr, "keel: error: %s\n", kl_errmsg());
		return CLI_EXIT_DIFF;
	}
	if (json) {
		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "snapshot", spec);
		kl_json_str(&j, "output", o.dst);
		kl_json_str(&j, "format", o.dst_fmt);
		kl_json_u64(&j, "bytes_written", st.bytes_written);
		kl_json_u64(&j, "output_size", st.output_size);
		kl_json_bool(&j, "verified", st.verified);
		kl_json_double(&j, "seconds", st.seconds);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else if (!cli_quiet) {
		printf("restored %s -> %s (%s): %s written in %.2fs%s\n", spec, o.dst, o.dst_fmt,
		       cli_size(st.bytes_written), st.seconds, st.verified ? ", verified" : "");
	}
	return 0;
}
