/*
 * cli/cmd_map.c - keel map [--output json] FILE[@SNAP]
 */
#include "cli/cli.h"

#include <string.h>

const char cmd_map_usage[] =
	"usage: keel map [-f FMT] [--output json] FILE[@SNAP]\n"
	"\n"
	"Prints the extent map a guest sees: each range is data (with the layer\n"
	"of the parent chain that holds it and its offset in that file: a VMDK\n"
	"extent file or a qcow2 data file where the data lives there), zero, or\n"
	"unallocated (no layer holds it; reads as zeros). Only metadata is read.\n"
	"\n"
	"example: keel map --output json disk.qcow2\n";

struct map_run {
	uint64_t off, len, host;
	int type, depth;
	unsigned flags;
	bool valid;
	const char *file; /* the driver's, when the data is not in the layer's own file */
};

static const char *type_name(const struct map_run *r)
{
	if (r->type == BLK_DATA)
		return "data";
	return (r->flags & BLK_EXT_NOT_ALLOCATED) ? "unallocated" : "zero";
}

static const char *layer_file(struct blk_dev *d, const struct map_run *r)
{
	int depth = r->depth;

	if (r->file)
		return r->file;
	while (depth-- > 0 && blk_parent(d))
		d = blk_parent(d);
	return blk_filename(d);
}

static void emit(struct blk_dev *d, const struct map_run *r, bool json, struct kl_json *j)
{
	if (json) {
		kl_json_obj_open(j, NULL);
		kl_json_u64(j, "start", r->off);
		kl_json_u64(j, "length", r->len);
		kl_json_str(j, "type", type_name(r));
		kl_json_bool(j, "data", r->type == BLK_DATA);
		kl_json_bool(j, "zero", r->type != BLK_DATA);
		kl_json_i64(j, "depth", r->depth);
		if (r->type == BLK_DATA && r->host != BLK_NO_HOST_OFFSET)
			kl_json_u64(j, "offset", r->host);
		if (r->flags & BLK_EXT_COMPRESSED)
			kl_json_bool(j, "compressed", true);
		if (r->type == BLK_DATA)
			kl_json_str(j, "file", layer_file(d, r));
		kl_json_obj_close(j);
		return;
	}
	if (r->type == BLK_DATA && r->host != BLK_NO_HOST_OFFSET)
		printf("%#-18llx %#-18llx %-11s %5d %#-18llx %s\n", (unsigned long long)r->off,
		       (unsigned long long)r->len, type_name(r), r->depth,
		       (unsigned long long)r->host, layer_file(d, r));
	else
		printf("%#-18llx %#-18llx %-11s %5d %-18s %s\n", (unsigned long long)r->off,
		       (unsigned long long)r->len, type_name(r), r->depth, "-",
		       r->type == BLK_DATA ? layer_file(d, r) : "");
}

int cmd_map(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct blk_dev *d;
	struct map_run run = { 0 };
	struct kl_json j;
	bool json = false;
	uint64_t off = 0, size;
	int opt, rc = 0;

	while ((opt = getopt_long(argc, argv, "f:h", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		if (opt == CLI_OPT_OUTPUT) {
			if (cli_parse_output(optarg, &json) < 0)
				return cli_usage("map", "bad --output '%s'", optarg);
		} else if (opt == 'h') {
			printf("%s", cmd_map_usage);
			return 0;
		} else {
			return cli_usage("map", NULL);
		}
	}
	if (optind != argc - 1)
		return cli_usage("map", "expected one image");
	rc = cli_open_image(&co, argv[optind], 0, &d);
	cli_open_release(&co);
	if (rc < 0)
		return cli_fail(rc);
	size = blk_size(d);
	if (json) {
		kl_json_begin(&j, stdout);
		kl_json_arr_open(&j, NULL);
	} else {
		printf("%-18s %-18s %-11s %5s %-18s %s\n", "OFFSET", "LENGTH", "TYPE", "DEPTH",
		       "HOST_OFFSET", "FILE");
	}
	while (off < size) {
		struct blk_extent e;
		bool same;

		rc = blk_block_status_chain(d, off, size - off, &e);
		if (rc < 0)
			break;
		same = run.valid && run.type == e.type && run.depth == e.depth &&
		       (run.flags & BLK_EXT_NOT_ALLOCATED) == (e.flags & BLK_EXT_NOT_ALLOCATED) &&
		       (run.flags & BLK_EXT_COMPRESSED) == (e.flags & BLK_EXT_COMPRESSED);
		if (same && e.type == BLK_DATA)
			same = run.host != BLK_NO_HOST_OFFSET && e.host_off == run.host + run.len &&
			       (run.file == e.file || (run.file && e.file && !strcmp(run.file, e.file)));
		if (same) {
			run.len += e.len;
		} else {
			if (run.valid)
				emit(d, &run, json, &j);
			run = (struct map_run){ off, e.len, e.host_off, e.type, e.depth, e.flags, true,
						e.file };
		}
		off += e.len;
	}
	if (rc == 0 && run.valid)
		emit(d, &run, json, &j);
	if (json) {
		kl_json_arr_close(&j);
		kl_json_end(&j);
	}
	blk_close(d);
	return rc < 0 ? cli_fail(rc) : 0;
}
