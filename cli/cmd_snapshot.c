/*
 * cli/cmd_snapshot.c - keel snapshot create|list|delete|revert FILE [NAME]
 */
#include "cli/cli.h"

#include <string.h>
#include <time.h>

const char cmd_snapshot_usage[] =
	"usage: keel snapshot create FILE NAME\n"
	"       keel snapshot list [--output json] FILE\n"
	"       keel snapshot delete FILE NAME\n"
	"       keel snapshot revert FILE NAME\n"
	"       keel snapshot -c|-d|-a NAME FILE, keel snapshot -l FILE (qemu-img's)\n"
	"\n"
	"Internal snapshots of .keel and qcow2 images. create records the\n"
	"current state under NAME (it shares every cluster with it: no data is\n"
	"copied); delete frees what no other snapshot or the current state still\n"
	"uses; revert makes the current state that of NAME, virtual size\n"
	"included. Read a snapshot with FILE@NAME in any command; qcow2\n"
	"snapshots are found by name or ID.\n"
	"Each is one atomic metadata update: after a crash the image is in the\n"
	"state before or after it. In qcow2 a crash can leave clusters with a\n"
	"refcount above their uses (and copied flags behind them), which\n"
	"'keel check -r all' repairs, as for qemu-img snapshot.\n"
	"\n"
	"example: keel snapshot create vault.keel 2026-11-21\n"
	"         keel snapshot list --output json vault.keel\n";

static int do_list(struct blk_dev *d, bool json)
{
	struct blk_snapshot_info *v;
	struct kl_json j;
	size_t n;
	int rc = blk_snapshot_list(d, &v, &n);

	if (rc < 0)
		return rc;
	if (json) {
		kl_json_begin(&j, stdout);
		kl_json_arr_open(&j, NULL);
		for (size_t i = 0; i < n; i++) {
			kl_json_obj_open(&j, NULL);
			kl_json_str(&j, "id", v[i].id);
			kl_json_str(&j, "name", v[i].name);
			kl_json_u64(&j, "virtual_size", v[i].vsize);
			kl_json_u64(&j, "date_ns", v[i].date_ns);
			kl_json_u64(&j, "generation", v[i].generation);
			kl_json_obj_close(&j);
		}
		kl_json_arr_close(&j);
		kl_json_end(&j);
	} else {
		printf("%-6s %-32s %-20s %12s\n", "ID", "NAME", "DATE (UTC)", "VSIZE");
		for (size_t i = 0; i < n; i++) {
			time_t t = (time_t)(v[i].date_ns / 1000000000ULL);
			struct tm tm;
			char date[32] = "-";

			if (v[i].date_ns) {
				gmtime_r(&t, &tm);
				strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
			}
			printf("%-6s %-32s %-20s %12s\n", v[i].id, v[i].name, date,
			       cli_size(v[i].vsize));
		}
	}
	blk_snapshot_list_free(v, n);
	return 0;
}

int cmd_snapshot(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "wait", no_argument, NULL, CLI_OPT_WAIT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct blk_dev *d;
	const char *verb = NULL, *file, *name = NULL;
	bool json = false, list;
	int opt, rc, letter = 0;

	while ((opt = getopt_long(argc, argv, "f:hc:d:a:l", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		if (opt > 0 && opt < 128 && strchr("cdal", opt)) {
			/* qemu-img snapshot's spelling: -c NAME FILE and so on */
			static const char *const verbs[] = { "create", "delete", "revert", "list" };

			if (verb)
				return cli_usage("snapshot", "-c, -d, -a and -l exclude each other");
			verb = verbs[strchr("cdal", opt) - "cdal"];
			letter = opt;
			name = optarg;
		} else if (opt == CLI_OPT_OUTPUT) {
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("snapshot", "bad --output '%s'", optarg);
		} else if (opt == 'h') {
			printf("%s", cmd_snapshot_usage);
			return 0;
		} else {
			return cli_usage("snapshot", NULL);
		}
	}
	if (verb) {
		if (argc - optind != 1)
			return cli_usage("snapshot", "expected one FILE after -%c", letter);
		file = argv[optind];
		list = !strcmp(verb, "list");
	} else {
		if (argc - optind < 2)
			return cli_usage("snapshot", "expected a verb and FILE");
		verb = argv[optind];
		file = argv[optind + 1];
		list = !strcmp(verb, "list");
		if (list ? argc - optind != 2 : argc - optind != 3)
			return cli_usage("snapshot", "wrong number of arguments for '%s'", verb);
		if (!list)
			name = argv[optind + 2];
	}
	if (!list && strcmp(verb, "create") && strcmp(verb, "delete") && strcmp(verb, "revert"))
		return cli_usage("snapshot", "unknown verb '%s'", verb);
	rc = cli_open_image(&co, file, list ? 0 : BLK_OPEN_RDWR, &d);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	if (list)
		rc = do_list(d, json);
	else if (!strcmp(verb, "create"))
		rc = blk_snapshot_create(d, name);
	else if (!strcmp(verb, "delete"))
		rc = blk_snapshot_delete(d, name);
	else
		rc = blk_snapshot_revert(d, name);
	if (rc == 0)
		rc = blk_flush(d);
	blk_close(d);
	if (rc < 0)
		return cli_fail(rc);
	if (!list && !cli_quiet)
		printf("snapshot %s: %s\n", verb, name);
	return 0;
}
