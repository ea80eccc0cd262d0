/*
 * cli/cmd_serve.c - keel serve --listen ADDR:PORT --cert C --key K --ca CA --root DIR
 */
#include "cli/cli.h"
#include "replicate/replicate.h"

#include <string.h>
#include <time.h>
#include <unistd.h>

const char cmd_serve_usage[] =
	"usage: keel serve --listen ADDR:PORT --cert C --key K --ca CA --root DIR\n"
	"                  [--max-clients N] [--timeout SECONDS]\n"
	"                  [--key-file F | --key-env V] [--port-file F]\n"
	"                  [--max-sessions N]\n"
	"\n"
	"Receives replicas from keel replicate (and serves them back to keel recv -i\n"
	"keel://...) over TLS 1.3. Clients must present a certificate signed by CA;\n"
	"anything else is refused during the handshake. keel://HOST:PORT/NAME is\n"
	"DIR/NAME: a .keel image, or a raw store directory for --raw replicas. NAME\n"
	"is a plain name (letters, digits, '.', '_', '-'; no '/', no leading '.'),\n"
	"so nothing outside DIR can be reached; symbolic links are refused. Each\n"
	"client runs in its own process; a client silent for --timeout seconds\n"
	"(default 120) is dropped, and its receive stays resumable. One client per\n"
	"target at a time. Logs one line per event on stderr; SIGINT/SIGTERM stop\n"
	"it (receives in progress keep their last resume point).\n"
	"\n"
	"  --cert C, --key K   this server's certificate (PEM, with chain) and key\n"
	"  --ca CA             the CA that signs client certificates\n"
	"  --key-file F        passphrase for encrypted streams into images and for\n"
	"                      encrypted targets (raw stores never need it)\n"
	"  --port-file F       write the bound port to F (with --listen ADDR:0)\n"
	"  --max-sessions N    exit after N client sessions (tests)\n"
	"\n"
	"example: keel serve --listen 0.0.0.0:7457 --cert srv.crt --key srv.key \\\n"
	"             --ca ca.crt --root /srv/replicas\n";

static void serve_log(void *opaque, const char *line)
{
	char ts[32];
	time_t t = time(NULL);
	struct tm tm;

	(void)opaque;
	gmtime_r(&t, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(stderr, "%s keel serve[%d]: %s\n", ts, (int)getpid(), line);
	fflush(stderr);
}

int cmd_serve(int argc, char **argv)
{
	enum { O_LISTEN = 0x2201, O_ROOT, O_MAXC, O_TIMEOUT, O_PORTFILE,
	       O_MAXS };
	static const struct option lo[] = {
		{ "listen", required_argument, NULL, O_LISTEN },
		CLI_TLS_LONGOPTS,
		{ "root", required_argument, NULL, O_ROOT },
		{ "max-clients", required_argument, NULL, O_MAXC },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "port-file", required_argument, NULL, O_PORTFILE },
		{ "max-sessions", required_argument, NULL, O_MAXS },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct repl_serve_opts o = { .log = serve_log };
	struct cli_open co = { 0 };
	uint64_t n;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg) || cli_tls_option(&o.tls, opt, optarg))
			continue;
		switch (opt) {
		case O_LISTEN:
			o.listen = optarg;
			break;
		case O_ROOT:
			o.root = optarg;
			break;
		case O_PORTFILE:
			o.port_file = optarg;
			break;
		case O_MAXC:
		case O_TIMEOUT:
		case O_MAXS:
			if (kl_parse_u64(optarg, &n) < 0 || n < 1 || n > 100000)
				return cli_usage("serve", "bad number '%s'", optarg);
			if (opt == O_MAXC)
				o.max_clients = (int)n;
			else if (opt == O_TIMEOUT)
				o.tls.timeout = (int)n;
			else
				o.max_sessions = (int)n;
			break;
		case 'h':
			printf("%s", cmd_serve_usage);
			return 0;
		default:
			return cli_usage("serve", NULL);
		}
	}
	if (optind != argc || !o.listen || !o.tls.cert || !o.tls.key || !o.tls.ca || !o.root)
		return cli_usage("serve", "--listen, --cert, --key, --ca and --root are needed");
	rc = cli_load_key(&co, false, false);
	if (rc == 0) {
		o.key = co.key;
		o.key_len = co.key_len;
		rc = repl_serve(&o);
	}
	cli_open_release(&co);
	return rc < 0 ? cli_fail(rc) : 0;
}
