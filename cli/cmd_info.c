/*
 * cli/cmd_info.c - keel info [--output json] [-f FMT] FILE[@SNAP]
 */
#include "cli/cli.h"
#include "replicate/replicate.h"

#include <string.h>
#include <time.h>

const char cmd_info_usage[] =
	"usage: keel info [-f FMT] [--output json] [--allow-external-backing] FILE[@SNAP]\n"
	"\n"
	"Shows an image: format, virtual size, bytes allocated, cluster size,\n"
	"compression, snapshots, feature bits, and every image of its parent chain.\n"
	"FILE@SNAP shows an internal snapshot. The format is probed from content\n"
	"unless -f names it.\n"
	"\n"
	"  -f FMT                    image format (keel help formats)\n"
	"  --output json             machine-readable output\n"
	"  --allow-external-backing  follow parents outside the image's directory\n"
	"  --key-file F, --key-env V passphrase for an encrypted image; without\n"
	"                            one, an encrypted .keel or LUKS qcow2 shows its\n"
	"                            header only (size, cluster size, UUID, parent,\n"
	"                            key slots in use), marked unverified, and JSON\n"
	"                            has \"locked\"\n"
	"\n"
	"example: keel info --output json vault.keel\n";

static void fmt_date(uint64_t ns, char *buf, size_t len)
{
	time_t t = (time_t)(ns / 1000000000ULL);
	struct tm tm;

	if (!ns) {
		snprintf(buf, len, "-");
		return;
	}
	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

static void print_human(const struct blk_info *in, int depth)
{
	char uuid[37];

	if (depth)
		printf("\nparent image (depth %d):\n", depth);
	printf("image: %s\n", in->filename);
	printf("file format: %s%s%s%s\n", in->format, in->subformat ? " (" : "",
	       in->subformat ? in->subformat : "", in->subformat ? ")" : "");
	printf("virtual size: %s (%llu bytes)\n", cli_size(in->virtual_size),
	       (unsigned long long)in->virtual_size);
	printf("disk size: %s\n", cli_size(in->allocated));
	if (in->cluster_size)
		printf("cluster size: %u\n", in->cluster_size);
	if (in->compression)
		printf("compression: %s\n", in->compression);
	if (in->has_uuid) {
		kl_uuid_format(in->uuid, uuid);
		printf("uuid: %s\n", uuid);
	}
	if (in->parent)
		printf("parent: %s%s%s%s\n", in->parent, in->parent_format ? " (format " : "",
		       in->parent_format ? in->parent_format : "", in->parent_format ? ")" : "");
	if (in->dirty)
		printf("dirty: yes\n");
	if (in->corrupt)
		printf("corrupt: yes\n");
	for (size_t i = 0; i < in->nextra; i++)
		printf("%s: %s\n", in->extra[i].key, in->extra[i].val);
	if (in->nfeatures) {
		printf("features:");
		for (size_t i = 0; i < in->nfeatures; i++)
			printf(" %s", in->features[i]);
		printf("\n");
	}
	if (in->nsnaps) {
		printf("snapshots:\n  %-6s %-24s %-20s %12s\n", "ID", "NAME", "DATE (UTC)", "VSIZE");
		for (size_t i = 0; i < in->nsnaps; i++) {
			char date[32];

			fmt_date(in->snaps[i].date_ns, date, sizeof(date));
			printf("  %-6s %-24s %-20s %12s\n", in->snaps[i].id, in->snaps[i].name, date,
			       cli_size(in->snaps[i].vsize));
		}
	}
}

/* A staged receive in progress (keel recv): its resume token, text or JSON. */
static void print_recv(struct blk_dev *d, struct kl_json *j)
{
	uint8_t blob[BLK_RECV_TOKEN_MAX];
	size_t len = sizeof(blob);
	char text[1024];
	bool active = false;

	if (blk_recv_status(d, &active, blob, &len) < 0 || !active) {
		kl_err_clear();
		return;
	}
	if (!len || repl_token_text(blob, len, text, sizeof(text)) < 0)
		snprintf(text, sizeof(text), "none yet");
	kl_err_clear();
	if (j) {
		kl_json_bool(j, "receive_in_progress", true);
		kl_json_str(j, "resume_token", text);
	} else {
		printf("receive in progress: yes (readers see the state before it)\n");
		printf("resume token: %s\n", text);
	}
}

static void print_json(struct kl_json *j, const struct blk_info *in)
{
	char uuid[37];

	kl_json_str(j, "filename", in->filename);
	kl_json_str(j, "format", in->format);
	if (in->subformat)
		kl_json_str(j, "subformat", in->subformat);
	kl_json_u64(j, "virtual_size", in->virtual_size);
	kl_json_u64(j, "file_size", in->file_size);
	kl_json_u64(j, "allocated", in->allocated);
	if (in->cluster_size)
		kl_json_u64(j, "cluster_size", in->cluster_size);
	if (in->compression)
		kl_json_str(j, "compression", in->compression);
	if (in->has_uuid) {
		kl_uuid_format(in->uuid, uuid);
		kl_json_str(j, "uuid", uuid);
	}
	if (in->parent) {
		kl_json_str(j, "parent", in->parent);
		if (in->parent_format)
			kl_json_str(j, "parent_format", in->parent_format);
	}
	kl_json_bool(j, "dirty", in->dirty);
	kl_json_bool(j, "corrupt", in->corrupt);
	kl_json_arr_open(j, "features");
	for (size_t i = 0; i < in->nfeatures; i++)
		kl_json_str(j, NULL, in->features[i]);
	kl_json_arr_close(j);
	kl_json_obj_open(j, "details");
	for (size_t i = 0; i < in->nextra; i++)
		kl_json_str(j, in->extra[i].key, in->extra[i].val);
	kl_json_obj_close(j);
	kl_json_arr_open(j, "snapshots");
	for (size_t i = 0; i < in->nsnaps; i++) {
		kl_json_obj_open(j, NULL);
		kl_json_str(j, "id", in->snaps[i].id);
		kl_json_str(j, "name", in->snaps[i].name);
		kl_json_u64(j, "virtual_size", in->snaps[i].vsize);
		kl_json_u64(j, "date_ns", in->snaps[i].date_ns);
		kl_json_u64(j, "generation", in->snaps[i].generation);
		kl_json_obj_close(j);
	}
	kl_json_arr_close(j);
}

/*
 * An encrypted image and no key: show what its header says (size, cluster
 * size, UUID, parent, key slots), marked unverified, rather than nothing;
 * qemu-img info does the same for LUKS. Anything the format cannot show
 * without the key keeps the original error.
 */
static int info_nokey(struct cli_open *co, const char *path, bool json)
{
	char *why = kl_strdup(kl_errmsg());
	struct blk_info in;
	struct kl_json j;
	int rc;

	rc = blk_info_nokey(path, co->format, &in);
	if (rc < 0) {
		/* damage found on the way is the news; otherwise the key is */
		if (rc == -ENOKEY || rc == -ENOENT) /* ENOENT: FILE@SNAP */
			rc = kl_err(-ENOKEY, "%s", why ? why : "a key is needed");
		kl_free(why);
		cli_open_release(co);
		return cli_fail(rc);
	}
	kl_free(why);
	if (json) {
		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
		print_json(&j, &in);
		kl_json_bool(&j, "locked", true);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else {
		cli_warn("%s is encrypted and no key was given: its header only, unverified", path);
		print_human(&in, 0);
	}
	blk_info_release(&in);
	cli_open_release(co);
	return 0;
}

int cmd_info(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "no-parent", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct blk_dev *d = NULL;
	struct kl_json j;
	bool json = false;
	int opt, rc, depth = 0;

	while ((opt = getopt_long(argc, argv, "f:hn", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("info", "bad --output '%s'", optarg);
			break;
		case 'n':
			co.flags |= BLK_OPEN_NO_PARENT;
			break;
		case 'h':
			printf("%s", cmd_info_usage);
			return 0;
		default:
			return cli_usage("info", NULL);
		}
	}
	if (optind != argc - 1)
		return cli_usage("info", "expected one image");
	rc = cli_open_image(&co, argv[optind], 0, &d);
	if (rc == -ENOKEY && !co.key_file && !co.key_env)
		return info_nokey(&co, argv[optind], json);
	if (rc < 0 && rc != -ENOKEY && !(co.flags & BLK_OPEN_NO_PARENT)) {
		/*
		 * A broken chain (missing or wrong parent) must not hide the
		 * image itself: show it alone when it opens without its parent.
		 */
		char *why = kl_strdup(kl_errmsg());

		if (why && cli_open_image(&co, argv[optind], BLK_OPEN_NO_PARENT, &d) == 0) {
			cli_warn("%s", why);
			cli_warn("showing the image without its parent chain");
			rc = 0;
		} else if (why) {
			kl_err(rc, "%s", why);
		}
		kl_free(why);
	}
	if (rc < 0) {
		cli_open_release(&co);
		return cli_fail(rc);
	}
	if (json) {
		kl_json_begin(&j, stdout);
		kl_json_obj_open(&j, NULL);
	}
	for (struct blk_dev *cur = d; cur; cur = blk_parent(cur), depth++) {
		struct blk_info in;

		rc = blk_info(cur, &in);
		if (rc < 0)
			break;
		if (json) {
			if (depth == 0) {
				print_json(&j, &in);
				print_recv(cur, &j);
				kl_json_arr_open(&j, "parent_chain");
			} else {
				kl_json_obj_open(&j, NULL);
				print_json(&j, &in);
				kl_json_obj_close(&j);
			}
		} else {
			print_human(&in, depth);
			if (depth == 0)
				print_recv(cur, NULL);
		}
		blk_info_release(&in);
	}
	if (json) {
		kl_json_arr_close(&j);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	}
	blk_close(d);
	cli_open_release(&co);
	return rc < 0 ? cli_fail(rc) : 0;
}
