/*
 * cli/cmd_recv.c - keel recv TARGET [-i IN]
 */
#include "cli/cli.h"
#include "convert/convert.h"
#include "replicate/replicate.h"

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char cmd_recv_usage[] =
	"usage: keel recv [-i IN] [--raw] [--key-file F | --key-env V] [-o OPTIONS]\n"
	"                 [--force] [-s SNAP] [--verify] [-p] [--output json] TARGET\n"
	"       keel recv --status TARGET | --abort TARGET\n"
	"\n"
	"Applies a stream from keel send (stdin unless -i) to TARGET. A full stream\n"
	"makes a new .keel image (options from -o, the stream's cluster size, and\n"
	"encrypted with the passphrase when the source was); an incremental one\n"
	"needs its base snapshot in TARGET and refuses otherwise. The new snapshot\n"
	"appears in one commit once the trailer verifies: until then, and after any\n"
	"failure, readers see TARGET as it was. An interrupted receive keeps what it\n"
	"verified up to the last resume point; keel info TARGET (or --status) prints\n"
	"its token for keel send --resume.\n"
	"\n"
	"  -i IN          the stream file; a raw store directory (rebuilds its newest\n"
	"                 snapshot, or -s SNAP, into TARGET with the key); or\n"
	"                 keel://HOST:PORT/NAME[@SNAP] to fetch from keel serve (with\n"
	"                 --cert C --key K --ca CA, as for keel replicate)\n"
	"  --raw          TARGET is a raw store directory: keep the encrypted records as\n"
	"                 they come, without the key (streams sent with --raw)\n"
	"  --force        discard changes made to TARGET since the base snapshot\n"
	"  --verify       check the stream completely, write nothing\n"
	"  --status       print the resume token of an interrupted receive\n"
	"  --abort        drop an interrupted receive; TARGET keeps its previous state\n"
	"\n"
	"example: keel send vm.keel@mon | keel recv /backup/vm.keel\n";

static int print_json(const char *target, const struct repl_recv_stats *st, FILE *fp)
{
	struct kl_json j;
	char g[37];

	kl_json_begin(&j, fp);
	kl_json_obj_open(&j, NULL);
	kl_json_str(&j, "target", target);
	kl_json_str(&j, "snapshot", st->name);
	kl_uuid_format(st->guid, g);
	kl_json_str(&j, "guid", g);
	kl_json_bool(&j, "finished", st->finished);
	kl_json_bool(&j, "incremental", st->incremental);
	kl_json_bool(&j, "encrypted", st->keyed);
	kl_json_bool(&j, "raw", st->raw);
	kl_json_bool(&j, "resumed", st->resumed);
	kl_json_bool(&j, "created", st->created);
	kl_json_u64(&j, "stream_bytes", st->stream_bytes);
	kl_json_u64(&j, "records", st->records);
	kl_json_u64(&j, "resume_points", st->marks);
	kl_json_u64(&j, "data_bytes", st->data_bytes);
	kl_json_u64(&j, "zero_bytes", st->zero_bytes);
	kl_json_u64(&j, "ref_bytes", st->ref_bytes);
	if (st->token[0])
		kl_json_str(&j, "resume_token", st->token);
	kl_json_double(&j, "seconds", st->seconds);
	kl_json_obj_close(&j);
	kl_json_end(&j);
	return 0;
}

int cmd_recv(int argc, char **argv)
{
	enum { O_RAW = 0x2101, O_FORCE, O_VERIFY, O_STATUS, O_ABORT };
	static const struct option lo[] = {
		{ "raw", no_argument, NULL, O_RAW },
		{ "force", no_argument, NULL, O_FORCE },
		{ "verify", no_argument, NULL, O_VERIFY },
		{ "status", no_argument, NULL, O_STATUS },
		{ "abort", no_argument, NULL, O_ABORT },
		{ "snapshot", required_argument, NULL, 's' },
		CLI_TLS_LONGOPTS,
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "progress", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct repl_recv_opts o = { 0 };
	struct repl_recv_stats st;
	struct repl_tls_opts tls = { 0 };
	struct cli_open co = { 0 };
	struct kl_opts *opts = NULL;
	struct repl_reader r;
	struct kl_file *f = NULL;
	const char *in = NULL, *snap = NULL;
	bool json = false, status = false, abort_it = false;
	struct stat sb;
	int opt, rc;

	memset(&st, 0, sizeof(st));
	o.progress = cli_force_progress;
	while ((opt = getopt_long(argc, argv, "i:o:s:ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg) || cli_tls_option(&tls, opt, optarg))
			continue;
		switch (opt) {
		case 'i':
			in = optarg;
			break;
		case 'o':
			if (kl_opts_parse(optarg, &opts) < 0)
				return cli_usage("recv", "bad -o '%s'", optarg);
			break;
		case 's':
			snap = optarg;
			break;
		case 'p':
			o.progress = true;
			break;
		case O_RAW:
			o.raw = true;
			break;
		case O_FORCE:
			o.force = true;
			break;
		case O_VERIFY:
			o.verify_only = true;
			break;
		case O_STATUS:
			status = true;
			break;
		case O_ABORT:
			abort_it = true;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("recv", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_recv_usage);
			return 0;
		default:
			kl_opts_free(opts);
			return cli_usage("recv", NULL);
		}
	}
	if (optind != argc - 1 && !(o.verify_only && optind == argc)) {
		kl_opts_free(opts);
		return cli_usage("recv", "expected TARGET");
	}
	o.target = optind < argc ? argv[optind] : NULL;
	o.create_opts = opts;
	o.open_flags = co.flags;
	rc = cli_load_key(&co, false, false);
	if (rc < 0)
		goto fail;
	o.key = co.key;
	o.key_len = co.key_len;
	if (status || abort_it) {
		char token[600];
		bool active = false;

		if (abort_it) {
			rc = repl_recv_abort(o.target, o.key, o.key_len);
			if (rc == 0 && !cli_quiet)
				printf("dropped the interrupted receive at %s\n", o.target);
		} else {
			rc = repl_recv_status(o.target, o.key, o.key_len, &active, token,
					      sizeof(token));
			if (rc == 0)
				printf("%s\n", !active ? "no receive in progress" :
					       token[0] ? token : "in progress, no resume point yet");
		}
		if (rc < 0)
			goto fail;
		goto done;
	}
	conv_install_signal_handlers();
	if (in && repl_is_url(in)) {
		struct repl_fetch_opts fo = { .url = in, .local = o.target, .tls = tls,
					      .key = o.key, .key_len = o.key_len,
					      .create_opts = opts, .progress = o.progress };

		rc = repl_fetch(&fo, &st);
	} else if (in && stat(in, &sb) == 0 && S_ISDIR(sb.st_mode)) {
		rc = repl_raw_restore(in, snap, o.target, o.key, o.key_len, opts, o.progress, &st);
	} else {
		if (in)
			rc = kl_io_open(in, KL_O_RDONLY, &f);
		else if (isatty(STDIN_FILENO))
			rc = kl_err(-EINVAL, "no stream on stdin (a terminal); use -i or a pipe");
		else
			rc = kl_io_fdopen(dup(STDIN_FILENO), "stdin", KL_O_RDONLY, &f);
		if (rc < 0)
			goto fail;
		repl_reader_file(&r, f);
		rc = repl_recv(&r, &o, &st);
	}
	if (rc < 0) {
		cli_fail(rc);
		if (st.token[0])
			fprintf(stderr, "keel: the receive can resume from its last resume point: "
				"keel send --resume %s ...\n", st.token);
		if (json)
			print_json(o.target ? o.target : "", &st, stdout);
		rc = CLI_EXIT_FAIL;
		goto out;
	}
	if (json)
		print_json(o.target ? o.target : "", &st, stdout);
	else if (!cli_quiet)
		printf("received %s%s%s: %s of stream, %s data, %s zero%s, %.2fs\n",
		       o.target ? o.target : "(verify only)", st.name[0] ? "@" : "", st.name,
		       cli_size(st.stream_bytes), cli_size(st.data_bytes), cli_size(st.zero_bytes),
		       st.resumed ? ", resumed" : "", st.seconds);
done:
	rc = 0;
out:
	kl_io_close(f);
	kl_opts_free(opts);
	cli_open_release(&co);
	return rc;
fail:
	kl_io_close(f);
	kl_opts_free(opts);
	cli_open_release(&co);
	return cli_fail(rc);
}
