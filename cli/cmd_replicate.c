/*
 * cli/cmd_replicate.c - keel replicate FILE TARGET, dispatched on TARGET's
 * scheme: keel://HOST:PORT/NAME here (replicate/net-client.c), s3:// by
 * cmd_s3_replicate (cli/cmd_s3_replicate.c).
 */
#include "cli/cli.h"
#include "convert/convert.h"
#include "replicate/replicate.h"

#include <string.h>

int cmd_s3_replicate(int argc, char **argv);

const char cmd_replicate_usage[] =
	"usage: keel replicate [options] FILE keel://HOST[:PORT]/NAME\n"
	"       keel replicate [options] FILE s3://BUCKET[/PREFIX]   (see below)\n"
	"\n"
	"Brings the replica NAME on a keel serve up to date with the newest\n"
	"snapshot of the .keel image FILE, over TLS 1.3 with certificates on both\n"
	"sides. It asks the server which snapshots NAME holds; continues an\n"
	"interrupted receive there from its resume token (when FILE still has\n"
	"that snapshot); then sends the newest snapshot incrementally from the\n"
	"newest one both hold, or in full to a new NAME. Clusters the server\n"
	"already holds (by keyed content hash) are not sent. The new snapshot\n"
	"appears on the server only once its stream verified; run it again after\n"
	"an interruption and it continues where the server stopped.\n"
	"\n"
	"  --cert C, --key K, --ca CA  this client's certificate and key, and the CA\n"
	"                      that signed the server's certificate\n"
	"  --key-file F, --key-env V   passphrase: opens an encrypted FILE and\n"
	"                      encrypts the stream (the server needs it too, unless\n"
	"                      --raw)\n"
	"  --raw               the server stores the encrypted stream without the key\n"
	"                      (a raw store; restore with keel recv -i ... --key-file)\n"
	"  --limit-rate RATE   at most RATE bytes per second on the wire (e.g. 20M)\n"
	"  --no-dedup          do not ask the server what it already holds\n"
	"  --checkpoint SIZE   a resume point every SIZE stream bytes (default 64M)\n"
	"  --timeout SECONDS   give up when the server is silent this long (120)\n"
	"  -j N                compression threads; -p progress; --output json summary\n"
	"\n"
	"example: keel replicate --cert c.crt --key c.key --ca ca.crt vm.keel \\\n"
	"             keel://backup.example:7457/vm\n";

static int replicate_keel(int argc, char **argv)
{
	enum { O_RAW = 0x2301, O_RATE, O_NODEDUP, O_CHECKPOINT,
	       O_TIMEOUT };
	static const struct option lo[] = {
		CLI_TLS_LONGOPTS,
		{ "raw", no_argument, NULL, O_RAW },
		{ "limit-rate", required_argument, NULL, O_RATE },
		{ "no-dedup", no_argument, NULL, O_NODEDUP },
		{ "checkpoint", required_argument, NULL, O_CHECKPOINT },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "progress", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct repl_replicate_opts o = { 0 };
	struct repl_replicate_stats st;
	struct cli_open co = { 0 };
	bool json = false;
	uint64_t n;
	int opt, rc;

	o.progress = cli_force_progress;
	while ((opt = getopt_long(argc, argv, "j:ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg) || cli_tls_option(&o.tls, opt, optarg))
			continue;
		switch (opt) {
		case O_RAW:
			o.raw = true;
			break;
		case O_NODEDUP:
			o.no_dedup = true;
			break;
		case O_RATE:
			if (kl_parse_size(optarg, &o.limit_rate) < 0 || o.limit_rate < 1024)
				return cli_usage("replicate", "bad --limit-rate '%s' (at least 1K)",
						 optarg);
			break;
		case O_CHECKPOINT:
			if (kl_parse_size(optarg, &o.mark_bytes) < 0 || o.mark_bytes < 65536)
				return cli_usage("replicate", "bad --checkpoint '%s'", optarg);
			break;
		case O_TIMEOUT:
			if (kl_parse_u64(optarg, &n) < 0 || n < 1 || n > 86400)
				return cli_usage("replicate", "bad --timeout '%s'", optarg);
			o.tls.timeout = (int)n;
			break;
		case 'j':
			if (kl_parse_u64(optarg, &n) < 0 || n < 1 || n > 256)
				return cli_usage("replicate", "-j takes 1 to 256");
			o.threads = (int)n;
			break;
		case 'p':
			o.progress = true;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("replicate", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_replicate_usage);
			return 0;
		default:
			return cli_usage("replicate", NULL);
		}
	}
	if (optind != argc - 2)
		return cli_usage("replicate", "expected FILE and keel://HOST:PORT/NAME");
	if (!o.tls.cert || !o.tls.key || !o.tls.ca)
		return cli_usage("replicate", "--cert, --key and --ca are needed for keel://");
	o.image = argv[optind];
	o.url = argv[optind + 1];
	o.open_flags = co.flags;
	rc = cli_load_key(&co, false, false);
	if (rc < 0) {
		cli_open_release(&co);
		return cli_fail(rc);
	}
	o.key = co.key;
	o.key_len = co.key_len;
	conv_install_signal_handlers();
	rc = repl_replicate(&o, &st);
	cli_open_release(&co);
	if (json) {
		struct kl_json j;

		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "image", o.image);
		kl_json_str(&j, "target", o.url);
		kl_json_bool(&j, "ok", rc == 0);
		if (rc < 0)
			kl_json_str(&j, "error", kl_errmsg());
		kl_json_str(&j, "snapshot", st.snapshot);
		kl_json_str(&j, "base", st.base);
		kl_json_bool(&j, "up_to_date", st.up_to_date);
		kl_json_bool(&j, "resumed", st.resumed);
		kl_json_u64(&j, "streams", (uint64_t)st.streams);
		kl_json_u64(&j, "wire_bytes_sent", st.wire_out);
		kl_json_u64(&j, "wire_bytes_received", st.wire_in);
		kl_json_u64(&j, "stream_bytes", st.stream_bytes);
		kl_json_u64(&j, "changed_bytes", st.changed_bytes);
		kl_json_u64(&j, "compressed_bytes", st.payload_bytes);
		kl_json_u64(&j, "clusters_sent", st.clusters_sent);
		kl_json_u64(&j, "clusters_skipped", st.clusters_skipped);
		kl_json_u64(&j, "clusters_zero", st.clusters_zero);
		kl_json_double(&j, "seconds", st.seconds);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	}
	if (rc < 0)
		return cli_fail(rc);
	if (!json && !cli_quiet) {
		if (st.up_to_date)
			printf("%s is up to date (%s)\n", o.url, st.snapshot);
		else
			printf("replicated %s@%s to %s%s%s%s: %s on the wire, %llu clusters sent, "
			       "%llu skipped (held), %.2fs\n", o.image, st.snapshot, o.url,
			       st.base[0] ? " from " : " (full)", st.base,
			       st.resumed ? ", resumed" : "", cli_size(st.wire_out),
			       (unsigned long long)st.clusters_sent,
			       (unsigned long long)st.clusters_skipped, st.seconds);
	}
	return 0;
}

int cmd_replicate(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strncmp(argv[i], "s3://", 5))
			return cmd_s3_replicate(argc, argv);
	}
	return replicate_keel(argc, argv);
}
