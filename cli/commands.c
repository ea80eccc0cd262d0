/*
 * cli/commands.c - the one table of keel subcommands.
 */
#include "cli/cli.h"

#include <string.h>

#define CMD(name) \
	int cmd_##name(int argc, char **argv); \
	extern const char cmd_##name##_usage[];
CMD(help)
CMD(create)
CMD(info)
CMD(map)
CMD(compare)
CMD(convert)
CMD(measure)
CMD(io)
CMD(check)
CMD(snapshot)
CMD(commit)
CMD(rebase)
CMD(diff)
CMD(send)
CMD(recv)
CMD(serve)
CMD(scrub)
CMD(key)
CMD(dedup)
CMD(backup)
CMD(prune)
CMD(restore)
CMD(drill)
CMD(verify_boot)
CMD(replicate)
CMD(s3_replicate)
CMD(s3_restore)
CMD(s3_prune)
CMD(s3_scrub)
#undef CMD

const struct cli_cmd cli_commands[] = {
	{ "create", cmd_create, "create an empty image (any format, optional parent)",
	  cmd_create_usage, CLI_WRITES, NULL },
	{ "info", cmd_info, "show an image, its snapshots and its parent chain", cmd_info_usage, 0, NULL },
	{ "map", cmd_map, "print the extent map (data / zero / unallocated)", cmd_map_usage, 0, NULL },
	{ "compare", cmd_compare, "compare what a guest sees in two images", cmd_compare_usage, 0, NULL },
	{ "convert", cmd_convert, "convert an image to another format", cmd_convert_usage,
	  CLI_WRITES, NULL },
	{ "measure", cmd_measure, "predict the size of a converted image", cmd_measure_usage, 0,
	  NULL },
	{ "io", cmd_io, "read, write, discard through the block layer (like qemu-io)",
	  cmd_io_usage, CLI_WRITES, NULL },
	{ "check", cmd_check, "check metadata and (with --verify-data) every checksum",
	  cmd_check_usage, 0, NULL },
	{ "snapshot", cmd_snapshot, "create, list, delete, revert internal snapshots",
	  cmd_snapshot_usage, CLI_WRITES, NULL },
	{ "diff", cmd_diff, "extents changed between two snapshots (from metadata)",
	  cmd_diff_usage, 0, NULL },
	{ "commit", cmd_commit, "write an image's data into its parent", cmd_commit_usage,
	  CLI_WRITES, NULL },
	{ "rebase", cmd_rebase, "change an image's parent, keeping its content",
	  cmd_rebase_usage, CLI_WRITES, NULL },
	{ "send", cmd_send, "write a snapshot (or the changes since another) as a stream",
	  cmd_send_usage, 0, NULL },
	{ "recv", cmd_recv, "apply a stream from keel send to an image or a raw store",
	  cmd_recv_usage, CLI_WRITES, NULL },
	{ "serve", cmd_serve, "receive replicas over TLS (keel:// targets under one directory)",
	  cmd_serve_usage, CLI_WRITES, NULL },
	{ "scrub", cmd_scrub, "verify every stored cluster of every snapshot (vault, s3://)",
	  cmd_scrub_usage, 0, cmd_s3_scrub_usage },
	{ "key", cmd_key, "add, remove, change key slots of an encrypted image", cmd_key_usage,
	  CLI_WRITES, NULL },
	{ "dedup", cmd_dedup, "deduplicate an existing .keel image offline", cmd_dedup_usage,
	  CLI_WRITES, NULL },
	{ "backup", cmd_backup, "store a disk image as a new snapshot of a vault",
	  cmd_backup_usage, CLI_WRITES, NULL },
	{ "verify-boot", cmd_verify_boot, "boot a verifier VM on an image and report a verdict",
	  cmd_verify_boot_usage, CLI_NEEDS_KVM, NULL },
	{ "prune", cmd_prune, "delete snapshots a retention policy does not keep (vault, s3://)",
	  cmd_prune_usage, CLI_WRITES, cmd_s3_prune_usage },
	{ "restore", cmd_restore, "restore a snapshot (vault, keel://, s3://) to any format",
	  cmd_restore_usage, CLI_WRITES, cmd_s3_restore_usage },
	{ "drill", cmd_drill, "restore, scrub and boot-verify a snapshot; report RPO/RTO",
	  cmd_drill_usage, CLI_NEEDS_KVM, NULL },
	{ "replicate", cmd_replicate, "replicate a vault's snapshots off-site (keel://, s3://)",
	  cmd_replicate_usage, 0, cmd_s3_replicate_usage },
	{ "help", cmd_help, "describe a command or list formats", cmd_help_usage, 0, NULL },
	{ NULL, NULL, NULL, NULL, 0, NULL },
};

const struct cli_cmd *cli_find(const char *name)
{
	for (const struct cli_cmd *c = cli_commands; c->name; c++)
		if (!strcmp(c->name, name))
			return c;
	return NULL;
}
