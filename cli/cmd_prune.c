/*
 * cli/cmd_prune.c - keel prune VAULT --keep-...
 */
#include "cli/cli.h"
#include "snapshot/snapshot.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

const char cmd_prune_usage[] =
	"usage: keel prune [--keep-last N] [--keep-hourly N] [--keep-daily N]\n"
	"                  [--keep-weekly N] [--keep-monthly N] [--keep-yearly N]\n"
	"                  [--dry-run] [--wait] [--output json] VAULT.keel\n"
	"\n"
	"Deletes the snapshots no retention rule keeps, all in one atomic update,\n"
	"and gives their space back. Rules follow borg prune: snapshots newest\n"
	"first; --keep-last keeps the N newest; each later rule keeps the newest\n"
	"snapshot of each hour/day/ISO week/month/year (UTC) for N periods, counting\n"
	"only periods whose newest snapshot an earlier rule did not keep; -1 keeps\n"
	"every period; when a rule runs out of snapshots before N it keeps the\n"
	"oldest one. At least one rule is needed. --dry-run lists without deleting.\n"
	"\n"
	"example: keel prune --keep-daily 7 --keep-weekly 4 --keep-monthly 6 vault.keel\n";

int cmd_s3_prune(int argc, char **argv);

int cmd_prune(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "keep-last", required_argument, NULL, 'L' },
		{ "keep-hourly", required_argument, NULL, 'H' },
		{ "keep-daily", required_argument, NULL, 'd' },
		{ "keep-weekly", required_argument, NULL, 'w' },
		{ "keep-monthly", required_argument, NULL, 'm' },
		{ "keep-yearly", required_argument, NULL, 'y' },
		{ "dry-run", no_argument, NULL, 'n' },
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "wait", no_argument, NULL, CLI_OPT_WAIT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct snap_retention ret = { { 0 } };
	struct snap_prune_result res;
	struct blk_open_opts o = { 0 };
	struct kl_json j;
	bool json = false, dry = false;
	int opt, rc, rule;
	char *end;

	/* s3:// repositories have their own implementation (replicate/s3.h) */
	if (cli_has_s3_arg(argc, argv))
		return cmd_s3_prune(argc, argv);
	while ((opt = getopt_long(argc, argv, "nh", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		rule = -1;
		switch (opt) {
		case 'L': rule = SNAP_KEEP_LAST; break;
		case 'H': rule = SNAP_KEEP_HOURLY; break;
		case 'd': rule = SNAP_KEEP_DAILY; break;
		case 'w': rule = SNAP_KEEP_WEEKLY; break;
		case 'm': rule = SNAP_KEEP_MONTHLY; break;
		case 'y': rule = SNAP_KEEP_YEARLY; break;
		case 'n':
			dry = true;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("prune", "bad --output '%s'", optarg);
			break;
		case 'h':
			printf("%s", cmd_prune_usage);
			return 0;
		default:
			return cli_usage("prune", NULL);
		}
		if (rule >= 0) {
			long long v = strtoll(optarg, &end, 10);

			if (*end || v < -1)
				return cli_usage("prune", "--keep-%s takes a count or -1",
						 snap_keep_rule_name(rule));
			ret.keep[rule] = v;
		}
	}
	if (optind != argc - 1)
		return cli_usage("prune", "expected one vault");
	if ((co.key_file || co.key_env) && (rc = cli_load_key(&co, false, false)) < 0)
		return cli_fail(rc);
	o.flags = co.flags;
	o.key = co.key;
	o.key_len = co.key_len;
	o.format = "keel";
	rc = snap_prune(argv[optind], &o, &ret, dry, &res);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	if (json) {
		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "vault", argv[optind]);
		kl_json_bool(&j, "dry_run", dry);
		kl_json_u64(&j, "kept", res.n - res.pruned);
		kl_json_u64(&j, "pruned", res.pruned);
		kl_json_u64(&j, "freed_bytes", res.freed_bytes);
		kl_json_arr_open(&j, "snapshots");
		for (size_t i = 0; i < res.n; i++) {
			kl_json_obj_open(&j, NULL);
			kl_json_str(&j, "name", res.items[i].name);
			kl_json_u64(&j, "date_ns", res.items[i].time_ns);
			kl_json_bool(&j, "keep", res.items[i].kept_by >= 0);
			if (res.items[i].kept_by >= 0)
				kl_json_str(&j, "rule", snap_keep_rule_name(res.items[i].kept_by));
			kl_json_bool(&j, "oldest", res.items[i].oldest);
			kl_json_obj_close(&j);
		}
		kl_json_arr_close(&j);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else {
		for (size_t i = 0; i < res.n && !cli_quiet; i++) {
			time_t t = (time_t)(res.items[i].time_ns / 1000000000ULL);
			struct tm tm;
			char date[32];

			gmtime_r(&t, &tm);
			strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
			printf("%-6s %-32s %s %s%s\n", res.items[i].kept_by >= 0 ? "keep" : "prune",
			       res.items[i].name, date,
			       res.items[i].kept_by >= 0 ? snap_keep_rule_name(res.items[i].kept_by)
							 : "",
			       res.items[i].oldest ? " (oldest)" : "");
		}
		printf("prune %s: %zu kept, %zu %s, %s freed\n", argv[optind], res.n - res.pruned,
		       res.pruned, dry ? "would be pruned" : "pruned", cli_size(res.freed_bytes));
	}
	snap_prune_result_release(&res);
	return 0;
}
