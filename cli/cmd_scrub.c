/*
 * cli/cmd_scrub.c - keel scrub [--output json] FILE
 */
#include "cli/cli.h"

const char cmd_scrub_usage[] =
	"usage: keel scrub [-f FMT] [--output json] [-p] [--key-file F | --key-env V]\n"
	"                  FILE\n"
	"\n"
	"Reads every stored cluster of every snapshot and of the current state\n"
	"once and verifies its checksum (and its authentication tag when the image\n"
	"is encrypted). Damage is reported per virtual offset and per snapshot\n"
	"that uses the damaged cluster. Formats without checksums are read in full.\n"
	"Exit status: 0 no damage, 3 damage found, 1 the scrub could not run.\n"
	"\n"
	"example: keel scrub --output json vault.keel\n";

struct scrub_out {
	bool json;
	struct kl_json *j;
};

static int on_damage(void *opaque, const struct blk_scrub_damage *dm)
{
	struct scrub_out *o = opaque;

	if (o->json) {
		kl_json_obj_open(o->j, NULL);
		kl_json_str(o->j, "snapshot", dm->snapshot ? dm->snapshot : "");
		kl_json_bool(o->j, "current", dm->snapshot == NULL);
		kl_json_u64(o->j, "offset", dm->offset);
		kl_json_u64(o->j, "length", dm->length);
		if (dm->host_off != BLK_NO_HOST_OFFSET)
			kl_json_u64(o->j, "host_offset", dm->host_off);
		kl_json_str(o->j, "error", dm->error);
		kl_json_obj_close(o->j);
	} else {
		printf("damaged: %s offset %llu (+%llu): %s\n",
		       dm->snapshot ? dm->snapshot : "(current)", (unsigned long long)dm->offset,
		       (unsigned long long)dm->length, dm->error);
	}
	return 0;
}

int cmd_s3_scrub(int argc, char **argv);

int cmd_scrub(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "progress", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct scrub_out o = { 0 };
	struct blk_scrub_report r;
	struct blk_dev *d;
	struct kl_json j;
	bool progress = cli_force_progress;
	double t0 = kl_now();
	int opt, rc;

	/* s3:// repositories have their own implementation (replicate/s3.h) */
	if (cli_has_s3_arg(argc, argv))
		return cmd_s3_scrub(argc, argv);
	while ((opt = getopt_long(argc, argv, "f:ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		if (opt == CLI_OPT_OUTPUT) {
			if (cli_parse_output(optarg, &o.json) < 0)
				return cli_usage("scrub", "bad --output '%s'", optarg);
		} else if (opt == 'p') {
			progress = true;
		} else if (opt == 'h') {
			printf("%s", cmd_scrub_usage);
			return 0;
		} else {
			return cli_usage("scrub", NULL);
		}
	}
	if (optind != argc - 1)
		return cli_usage("scrub", "expected one image");
	co.flags |= BLK_OPEN_NO_PARENT;
	rc = cli_open_image(&co, argv[optind], 0, &d);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	o.j = &j;
	if (o.json) {
		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "filename", argv[optind]);
		kl_json_arr_open(&j, "damage");
	}
	rc = blk_scrub(d, on_damage, &o, progress, &r);
	blk_close(d);
	if (o.json) {
		kl_json_arr_close(&j);
		kl_json_u64(&j, "clusters_verified", r.blobs);
		kl_json_u64(&j, "bytes_read", r.bytes);
		kl_json_u64(&j, "damaged_clusters", r.damaged);
		kl_json_u64(&j, "damaged_references", r.damaged_refs);
		kl_json_double(&j, "seconds", kl_now() - t0);
		kl_json_bool(&j, "ok", rc == 0 && r.damaged == 0);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	}
	if (rc < 0)
		return cli_fail(rc);
	if (!o.json)
		printf("scrubbed %s: %llu stored clusters (%s) verified, %llu damaged "
		       "(%llu references) in %.2fs\n",
		       argv[optind], (unsigned long long)r.blobs, cli_size(r.bytes),
		       (unsigned long long)r.damaged, (unsigned long long)r.damaged_refs,
		       kl_now() - t0);
	return r.damaged ? CLI_EXIT_DIFF : 0;
}
