/*
 * cli/cmd_s3_replicate.c - keel replicate FILE s3://BUCKET/PREFIX, called by
 * cmd_replicate when the target is an s3:// URL.
 */
#include "cli/s3-cli.h"

#include <string.h>

const char cmd_s3_replicate_usage[] =
	"usage: keel replicate [options] FILE s3://BUCKET[/PREFIX]\n"
	"\n"
	"Copies every snapshot of FILE that the repository does not have yet, oldest\n"
	"first, to an S3-compatible object store (AWS S3, Ceph RGW, MinIO). An image\n"
	"without snapshots is replicated as its current content under --name (default\n"
	"FILE's name and the UTC time). Chunks already in the repository (from any\n"
	"snapshot or image sharing the repository) are never uploaded again. A\n"
	"snapshot becomes visible only once everything it needs is stored: an\n"
	"interrupted run leaves no half snapshot, and the next run uploads only what\n"
	"is missing. The first run creates the repository (config object, key\n"
	"derived from the passphrase with scrypt).\n"
	"\n"
	"  --name NAME         snapshot name for the current content\n"
	"  --current           replicate the current content even when FILE has snapshots\n"
	"  --no-init           fail instead of creating a missing repository\n"
	"  -f FMT              format of FILE (probed when absent)\n"
	"  --image-key-file F  secret of an encrypted FILE\n"
	"\n" CLI_S3_USAGE
	"\n"
	"example: AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\\n"
	"         keel replicate --endpoint http://127.0.0.1:7480 --key-file pass \\\n"
	"         vm.raw s3://backups/vm\n";

int cmd_s3_replicate(int argc, char **argv)
{
	enum { O_NAME = 0x3001, O_CURRENT, O_NO_INIT, O_IMAGE_KEY };
	static const struct option lo[] = {
		CLI_S3_LONGOPTS,
		{ "name", required_argument, NULL, O_NAME },
		{ "current", no_argument, NULL, O_CURRENT },
		{ "no-init", no_argument, NULL, O_NO_INIT },
		{ "image-key-file", required_argument, NULL, O_IMAGE_KEY },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_s3 s = { 0 };
	struct cli_open ik = { 0 };
	struct repl_s3_replicate_opts ro = { .init = true };
	struct repl_s3_stats st = { 0 };
	const char *image, *target;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:ph", lo, NULL)) != -1) {
		int h = cli_s3_option(&s, "replicate", opt, optarg);

		if (h < 0)
			return CLI_EXIT_USAGE;
		if (h)
			continue;
		switch (opt) {
		case O_NAME:
			ro.name = optarg;
			break;
		case O_CURRENT:
			ro.current = true;
			break;
		case O_NO_INIT:
			ro.init = false;
			break;
		case O_IMAGE_KEY:
			ik.key_file = optarg;
			break;
		case 'f':
			ro.format = optarg;
			break;
		case 'h':
			printf("%s", cmd_s3_replicate_usage);
			return 0;
		default:
			return cli_usage("replicate", NULL);
		}
	}
	if (optind != argc - 2)
		return cli_usage("replicate", "expected FILE and a target");
	image = argv[optind];
	target = argv[optind + 1];
	if (!repl_s3_is_url(target))
		return cli_usage("replicate", "target '%s': only s3://BUCKET/PREFIX targets are "
				 "supported", target);
	rc = cli_s3_finish(&s, target);
	if (rc == 0 && ik.key_file)
		rc = cli_load_key(&ik, false, false);
	if (rc < 0) {
		cli_s3_release(&s);
		cli_open_release(&ik);
		return cli_fail(rc);
	}
	ro.image_key = ik.key;
	ro.image_key_len = ik.key_len;
	rc = repl_s3_replicate(image, &s.o, &ro, &st);
	if (s.json)
		cli_s3_json("replicate", target, &st, rc);
	if (rc < 0) {
		cli_fail(rc);
	} else if (!s.json && !cli_quiet) {
		for (size_t i = 0; i < st.nnames; i++)
			printf("replicated %s@%s\n", target, st.names[i]);
		printf("%llu snapshots replicated, %llu already there; %llu chunks new, %llu "
		       "deduplicated, %llu zero; %s uploaded in %llu requests, %.2fs\n",
		       (unsigned long long)st.snapshots_done,
		       (unsigned long long)st.snapshots_skipped, (unsigned long long)st.chunks_new,
		       (unsigned long long)st.chunks_skipped, (unsigned long long)st.chunks_zero,
		       cli_size(st.bytes_uploaded), (unsigned long long)st.requests, st.seconds);
	}
	repl_s3_stats_release(&st);
	cli_s3_release(&s);
	cli_open_release(&ik);
	return rc < 0 ? CLI_EXIT_FAIL : 0;
}
