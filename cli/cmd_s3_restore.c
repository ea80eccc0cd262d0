/*
 * cli/cmd_restore.c - keel restore s3://BUCKET/PREFIX@SNAP -O FMT OUT
 *
 * The source decides where the snapshot comes from: today s3://
 * repositories; local vaults (keel backup) plug in here by dispatching on
 * the source argument.
 */
#include "cli/s3-cli.h"
#include "convert/convert.h"

#include <string.h>
#include <time.h>

const char cmd_s3_restore_usage[] =
	"usage: keel restore [options] s3://BUCKET[/PREFIX]@SNAPSHOT -O FMT OUT\n"
	"       keel restore --list [options] s3://BUCKET[/PREFIX]\n"
	"\n"
	"Writes snapshot SNAPSHOT of the repository into a new image OUT of format FMT\n"
	"(any format keel can create). Needs only the URL, the store's credentials\n"
	"and the repository passphrase. Chunks are fetched in parallel with ranged\n"
	"GETs, authenticated, decompressed and written; zero chunks are not written,\n"
	"so OUT is sparse. OUT is built under a temporary name and renamed into\n"
	"place when complete; an existing OUT is never overwritten.\n"
	"\n"
	"  -O FMT              output format (keel help formats)\n"
	"  --verify            re-read OUT and check every chunk's keyed hash against\n"
	"                      the manifest (exit 3 on a difference)\n"
	"  --list              list the repository's snapshots instead\n"
	"\n" CLI_S3_USAGE
	"\n"
	"example: keel restore --key-file pass s3://backups/vm@nightly-7 \\\n"
	"             -O qcow2 vm.qcow2\n";

static int list_snapshots(struct cli_s3 *s, const char *url)
{
	struct repl_s3_snapshot *v = NULL;
	struct kl_json j;
	size_t n = 0;
	int rc = repl_s3_list(&s->o, &v, &n);

	if (rc < 0)
		return cli_fail(rc);
	if (s->json) {
		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "repository", url);
		kl_json_arr_open(&j, "snapshots");
		for (size_t i = 0; i < n; i++) {
			kl_json_obj_open(&j, NULL);
			kl_json_str(&j, "name", v[i].name);
			kl_json_str(&j, "image", v[i].image);
			kl_json_u64(&j, "virtual_size", v[i].vsize);
			kl_json_u64(&j, "created", v[i].created_ns / 1000000000ULL);
			kl_json_u64(&j, "replicated", v[i].replicated_ns / 1000000000ULL);
			kl_json_u64(&j, "data_chunks", v[i].chunks);
			kl_json_obj_close(&j);
		}
		kl_json_arr_close(&j);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else {
		for (size_t i = 0; i < n; i++) {
			time_t t = (time_t)(v[i].created_ns / 1000000000ULL);
			struct tm tm;
			char date[32];

			gmtime_r(&t, &tm);
			strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
			printf("%-40s %s UTC  %10s  %s\n", v[i].name, date, cli_size(v[i].vsize),
			       v[i].image);
		}
	}
	repl_s3_list_free(v, n);
	return 0;
}

int cmd_s3_restore(int argc, char **argv)
{
	enum { O_VERIFY = 0x3001, O_LIST };
	static const struct option lo[] = {
		CLI_S3_LONGOPTS,
		{ "verify", no_argument, NULL, O_VERIFY },
		{ "list", no_argument, NULL, O_LIST },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_s3 s = { 0 };
	struct repl_s3_stats st = { 0 };
	const char *fmt = NULL, *src;
	bool verify = false, list = false;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "O:ph", lo, NULL)) != -1) {
		int h = cli_s3_option(&s, "restore", opt, optarg);

		if (h < 0)
			return CLI_EXIT_USAGE;
		if (h)
			continue;
		switch (opt) {
		case 'O':
			fmt = optarg;
			break;
		case O_VERIFY:
			verify = true;
			break;
		case O_LIST:
			list = true;
			break;
		case 'h':
			printf("%s", cmd_s3_restore_usage);
			return 0;
		default:
			return cli_usage("restore", NULL);
		}
	}
	if (list ? optind != argc - 1 : (optind != argc - 2 || !fmt))
		return cli_usage("restore", list ? "expected a repository" :
				 "expected SOURCE@SNAPSHOT, -O FMT and OUT");
	src = argv[optind];
	if (!repl_s3_is_url(src))
		return cli_usage("restore", "source '%s': only s3://BUCKET/PREFIX@SNAPSHOT "
				 "sources are supported", src);
	rc = cli_s3_finish(&s, src);
	if (rc < 0) {
		cli_s3_release(&s);
		return cli_fail(rc);
	}
	if (list) {
		rc = list_snapshots(&s, src);
		cli_s3_release(&s);
		return rc;
	}
	/* SIGINT/SIGTERM stop the restore and remove the temporary output */
	conv_install_signal_handlers();
	rc = repl_s3_restore(&s.o, NULL, fmt, argv[optind + 1], verify, &st);
	if (s.json)
		cli_s3_json("restore", src, &st, rc);
	if (rc < 0)
		cli_fail(rc);
	else if (!s.json && !cli_quiet)
		printf("restored %s to %s (%s): %s of data, %llu chunks, %s downloaded in %llu "
		       "requests, %.2fs%s\n",
		       src, argv[optind + 1], fmt, cli_size(st.bytes_scanned),
		       (unsigned long long)st.chunks_total, cli_size(st.bytes_downloaded),
		       (unsigned long long)st.requests, st.seconds, verify ? ", verified" : "");
	repl_s3_stats_release(&st);
	cli_s3_release(&s);
	if (rc == -EBADMSG && verify)
		return CLI_EXIT_DIFF;
	return rc < 0 ? CLI_EXIT_FAIL : 0;
}
