/*
 * cli/cmd_drill.c - keel drill VAULT[@SNAP]: restore, scrub, boot-verify, report.
 */
#include "cli/cli.h"
#include "snapshot/snapshot.h"

#include <string.h>
#include <time.h>

const char cmd_drill_usage[] =
	"usage: keel drill [--engine auto|kvm|qemu] [--expect-os ID] [--timeout S]\n"
	"                  [--log FILE] [--output json] [-p] [--key-file F | --key-env V]\n"
	"                  [--cert C --key K --ca CA]\n"
	"                  VAULT.keel[@SNAP] | --from keel://HOST:PORT/NAME[@SNAP]\n"
	"                                    | --from s3://BUCKET/PREFIX[@SNAP]\n"
	"\n"
	"A restore-and-verify drill: restores the snapshot (the newest without @SNAP)\n"
	"to a temporary image with verification, scrubs the vault, boot-verifies the\n"
	"restored image (keel verify-boot), removes it, and reports the recovery\n"
	"point (age of the snapshot), the time to restore, the time to a verified\n"
	"boot (recovery time), the verdict and the engine. --log appends the JSON\n"
	"report as one line to FILE, to keep drill history.\n"
	"\n"
	"--from keel://... drills a replica on a keel serve: the snapshot is fetched\n"
	"over TLS (--cert, --key, --ca as for keel replicate; every record\n"
	"authenticated) to a temporary image, which is then drilled as above; the\n"
	"fetch counts in the restore time. The key options give the replica's\n"
	"passphrase (needed for --raw replicas). --from s3://... drills a\n"
	"replica in an S3 repository (the store from AWS_ACCESS_KEY_ID,\n"
	"AWS_SECRET_ACCESS_KEY, AWS_REGION, KEEL_S3_ENDPOINT; the key options give\n"
	"the repository passphrase): the fetch is the restore, the repository scrub\n"
	"the scrub.\n"
	"Exit status: 0 everything passed, 3 a step failed, 1 the drill could not run.\n"
	"\n"
	"example: keel drill --log /var/log/keel-drills.jsonl --output json web.keel\n";

static void report_json(FILE *fp, const struct snap_drill_report *r, bool pretty)
{
	struct kl_json j;
	char date[32];
	time_t t = (time_t)(r->snapshot_time_ns / 1000000000ULL);
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
	kl_json_begin(&j, fp);
	j.pretty = pretty;
	kl_json_obj_open(&j, NULL);
	kl_json_str(&j, "vault", r->vault);
	kl_json_str(&j, "snapshot", r->snapshot);
	kl_json_str(&j, "snapshot_time", date);
	kl_json_double(&j, "recovery_point_age_s", r->age_s);
	kl_json_double(&j, "restore_s", r->t_restore);
	kl_json_double(&j, "scrub_s", r->t_scrub);
	kl_json_double(&j, "boot_s", r->t_boot);
	kl_json_double(&j, "recovery_time_s", r->rto_s);
	kl_json_u64(&j, "restored_bytes", r->restored_bytes);
	kl_json_bool(&j, "restore_ok", r->restore_ok);
	kl_json_bool(&j, "scrub_ok", r->scrub_ok);
	kl_json_bool(&j, "boot_ok", r->boot_ok);
	kl_json_str(&j, "engine", r->engine);
	kl_json_str(&j, "os", r->os_id);
	kl_json_str(&j, "verdict", r->passed ? "pass" : "fail");
	if (r->reason[0])
		kl_json_str(&j, "reason", r->reason);
	kl_json_u64(&j, "time", kl_wallclock_ns() / 1000000000ULL);
	kl_json_obj_close(&j);
	kl_json_end(&j);
}

int cmd_drill(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "engine", required_argument, NULL, 'e' },
		{ "expect-os", required_argument, NULL, 'x' },
		{ "timeout", required_argument, NULL, 't' },
		{ "log", required_argument, NULL, 'l' },
		{ "workdir", required_argument, NULL, 'W' },
		{ "skip-boot", no_argument, NULL, 'S' },
		{ "from", required_argument, NULL, 'F' },
		{ "progress", no_argument, NULL, 'p' },
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		CLI_TLS_LONGOPTS,
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct snap_drill_opts o = { 0 };
	struct snap_drill_report r;
	struct repl_tls_opts tls = { 0 };
	const char *log = NULL;
	char vault[4096];
	bool json = false;
	uint64_t v;
	int opt, rc;
	char *at;

	o.progress = cli_force_progress;
	while ((opt = getopt_long(argc, argv, "ph", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg) || cli_tls_option(&tls, opt, optarg))
			continue;
		switch (opt) {
		case 'e':
			o.engine = optarg;
			break;
		case 'x':
			o.expect_os = optarg;
			break;
		case 't':
			if (kl_parse_u64(optarg, &v) < 0 || v == 0 || v > 86400)
				return cli_usage("drill", "--timeout takes seconds");
			o.timeout_s = (unsigned)v;
			break;
		case 'l':
			log = optarg;
			break;
		case 'W':
			o.workdir = optarg;
			break;
		case 'S':
			o.skip_boot = true;
			break;
		case 'F':
			o.from = optarg;
			break;
		case 'p':
			o.progress = true;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("drill", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_drill_usage);
			return 0;
		default:
			return cli_usage("drill", NULL);
		}
	}
	if (o.from ? optind != argc : optind != argc - 1)
		return cli_usage("drill", "expected one vault, or --from URL");
	if (o.from && strncmp(o.from, "s3://", 5) && !repl_is_url(o.from))
		return cli_usage("drill", "--from takes a keel:// replica or an s3:// repository");
	if (o.from && repl_is_url(o.from) && (!tls.cert || !tls.key || !tls.ca))
		return cli_usage("drill", "--from keel://... needs --cert, --key and --ca");
	o.tls = &tls;
	if ((co.key_file || co.key_env) && (rc = cli_load_key(&co, false, false)) < 0)
		return cli_fail(rc);
	snprintf(vault, sizeof(vault), "%s", o.from ? o.from : argv[optind]);
	at = o.from ? NULL : strrchr(vault, '@');
	if (at && at != vault) {
		*at = '\0';
		o.snapshot = at + 1;
	}
	o.vault = vault;
	o.key = co.key;
	o.key_len = co.key_len;
	rc = snap_drill(&o, &r);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	if (log) {
		FILE *fp = fopen(log, "a");

		if (!fp)
			return cli_failf("cannot append to %s", log);
		report_json(fp, &r, false);
		fclose(fp);
	}
	if (json) {
		report_json(stdout, &r, true);
	} else {
		printf("drill %s@%s: %s\n", r.vault, r.snapshot, r.passed ? "PASS" : "FAIL");
		printf("  recovery point: snapshot is %.0f s old\n", r.age_s);
		printf("  restore: %s in %.2f s (%s written, verified)\n", r.restore_ok ? "ok" : "FAILED",
		       r.t_restore, cli_size(r.restored_bytes));
		printf("  scrub: %s in %.2f s\n", r.scrub_ok ? "ok" : "FAILED", r.t_scrub);
		printf("  boot: %s in %.2f s (engine %s%s%s)\n", r.boot_ok ? "ok" : "FAILED", r.t_boot,
		       r.engine[0] ? r.engine : "-", r.os_id[0] ? ", os " : "", r.os_id);
		printf("  recovery time (restore + verified boot): %.2f s\n", r.rto_s);
		if (r.reason[0])
			printf("  reason: %s\n", r.reason);
	}
	return r.passed ? 0 : CLI_EXIT_DIFF;
}
