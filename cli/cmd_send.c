/*
 * cli/cmd_send.c - keel send [-i FROM] FILE@SNAP [-o OUT]
 */
#include "cli/cli.h"
#include "convert/convert.h"
#include "replicate/replicate.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char cmd_send_usage[] =
	"usage: keel send [-i FROM] [-o OUT] [--raw] [--resume TOKEN]\n"
	"                 [--key-file F | --key-env V] [--checkpoint SIZE] [-j N] [-p]\n"
	"                 [--output json] FILE@SNAP\n"
	"\n"
	"Writes snapshot SNAP of the .keel image FILE as a stream (stdout unless -o):\n"
	"all of it, or with -i only the clusters changed since snapshot FROM, found\n"
	"from metadata. Data is zstd-compressed; every record carries a CRC-32C and an\n"
	"AES-256-GCM tag binding the stream id, its sequence number and its type, and\n"
	"a trailer holds a digest of the whole stream. With a passphrase (--key-file,\n"
	"--key-env; the one that opens an encrypted FILE) the records are encrypted\n"
	"and authenticated under a key derived from it with scrypt.\n"
	"\n"
	"  -i FROM           incremental from snapshot FROM (the receiver must hold it)\n"
	"  -o OUT            write the stream to OUT (a temporary name until complete)\n"
	"  --raw             for a receiver without the key (keel recv --raw): needs a\n"
	"                    key\n"
	"  --resume TOKEN    continue an interrupted receive from its token (keel info\n"
	"                    TARGET prints it); the token must match FILE, SNAP, FROM,\n"
	"                    --raw and the key, or it is refused\n"
	"  --checkpoint SIZE a resume point every SIZE stream bytes (default 64M)\n"
	"  -j N              compression threads (default: one per CPU)\n"
	"  --output json     summary as JSON (on stdout with -o, else on stderr)\n"
	"\n"
	"example: keel send -i mon vm.keel@tue | ssh backup keel recv vm.keel\n";

int cmd_send(int argc, char **argv)
{
	enum { O_RAW = 0x2001, O_RESUME, O_CHECKPOINT };
	static const struct option lo[] = {
		{ "raw", no_argument, NULL, O_RAW },
		{ "resume", required_argument, NULL, O_RESUME },
		{ "checkpoint", required_argument, NULL, O_CHECKPOINT },
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "progress", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct repl_send_opts o = { 0 };
	struct repl_send_stats st;
	struct cli_open co = { 0 };
	struct repl_writer w;
	struct kl_file *f = NULL;
	const char *out = NULL, *env;
	char *image = NULL, *tmp = NULL, *at;
	bool json = false;
	uint64_t n;
	int opt, rc;

	o.progress = cli_force_progress;
	while ((opt = getopt_long(argc, argv, "i:o:j:ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case 'i':
			o.from = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case 'j':
			if (kl_parse_u64(optarg, &n) < 0 || n < 1 || n > 256)
				return cli_usage("send", "-j takes 1 to 256");
			o.threads = (int)n;
			break;
		case 'p':
			o.progress = true;
			break;
		case O_RAW:
			o.raw = true;
			break;
		case O_RESUME:
			o.resume = optarg;
			break;
		case O_CHECKPOINT:
			if (kl_parse_size(optarg, &o.mark_bytes) < 0 || o.mark_bytes < 65536)
				return cli_usage("send", "bad --checkpoint '%s' (at least 64K)", optarg);
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("send", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_send_usage);
			return 0;
		default:
			return cli_usage("send", NULL);
		}
	}
	if (optind != argc - 1)
		return cli_usage("send", "expected FILE@SNAP");
	image = kl_strdup(argv[optind]);
	if (!image)
		return cli_fail(-ENOMEM);
	at = strrchr(image, '@');
	if (!at || at == image || !at[1]) {
		kl_free(image);
		return cli_usage("send", "expected FILE@SNAP (a snapshot to send)");
	}
	*at = '\0';
	o.image = image;
	o.snapshot = at + 1;
	o.open_flags = co.flags;
	/* tests: a stream that breaks after N bytes, as a cut connection would */
	env = getenv("KEEL_SEND_FAIL_AFTER");
	if (env && kl_parse_u64(env, &n) == 0)
		o.fail_after = n;
	/* tests and fuzz seeds: a cheap scrypt for keyed streams */
	env = getenv("KEEL_STREAM_KDF_N");
	if (env && kl_parse_u64(env, &n) == 0)
		o.kdf_n = n;
	rc = cli_load_key(&co, false, false);
	if (rc < 0)
		goto fail;
	o.key = co.key;
	o.key_len = co.key_len;
	if (out) {
		tmp = kl_asprintf("%s.partial", out);
		rc = tmp ? kl_io_open(tmp, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC, &f) : -ENOMEM;
	} else if (isatty(STDOUT_FILENO)) {
		rc = kl_err(-EINVAL, "refusing to write a binary stream to a terminal (use -o or a "
			    "pipe)");
	} else {
		rc = kl_io_fdopen(dup(STDOUT_FILENO), "stdout", KL_O_RDWR, &f);
	}
	if (rc < 0)
		goto fail;
	signal(SIGPIPE, SIG_IGN);
	conv_install_signal_handlers();
	repl_writer_file(&w, f);
	rc = repl_send(&o, &w, &st);
	if (rc == 0 && out)
		rc = kl_io_sync(f);
	kl_io_close(f);
	f = NULL;
	if (rc == 0 && out)
		rc = kl_io_rename(tmp, out);
	if (rc < 0 && tmp)
		kl_io_unlink(tmp);
	if (rc < 0)
		goto fail;
	if (json) {
		struct kl_json j;
		char g[37];

		kl_json_begin(&j, out ? stdout : stderr);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "snapshot", st.name);
		kl_uuid_format(st.guid, g);
		kl_json_str(&j, "guid", g);
		if (o.from)
			kl_json_str(&j, "from", o.from);
		kl_json_bool(&j, "incremental", st.incremental);
		kl_json_bool(&j, "encrypted", st.keyed);
		kl_json_bool(&j, "resumed", st.resumed);
		kl_json_u64(&j, "resume_offset", st.resume_offset);
		kl_json_u64(&j, "stream_bytes", st.stream_bytes);
		kl_json_u64(&j, "records", st.records);
		kl_json_u64(&j, "changed_bytes", st.changed_bytes);
		kl_json_u64(&j, "payload_bytes", st.payload_bytes);
		kl_json_u64(&j, "clusters_sent", st.clusters_sent);
		kl_json_u64(&j, "clusters_zero", st.clusters_zero);
		kl_json_double(&j, "seconds", st.seconds);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else if (!cli_quiet) {
		fprintf(stderr, "sent %s@%s%s%s: %s in %llu records (%s of changed data, %s "
			"compressed)%s, %.2fs\n", o.image, st.name, o.from ? " from " : "",
			o.from ? o.from : "", cli_size(st.stream_bytes),
			(unsigned long long)st.records, cli_size(st.changed_bytes),
			cli_size(st.payload_bytes), st.resumed ? ", resumed" : "", st.seconds);
	}
	kl_free(tmp);
	kl_free(image);
	cli_open_release(&co);
	return 0;
fail:
	kl_io_close(f);
	kl_free(tmp);
	kl_free(image);
	cli_open_release(&co);
	return cli_fail(rc);
}
