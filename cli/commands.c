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
CMD(io)
CMD(check)
CMD(snapshot)
CMD(commit)
CMD(rebase)
CMD(diff)
CMD(replicate)
CMD(send)
CMD(recv)
CMD(serve)
CMD(scrub)
CMD(key)
CMD(dedup)
CMD(backup)
CMD(verify_boot)
#undef CMD

const struct cli_cmd cli_commands[] = {
	{ "create", cmd_create, "create an empty image (any format, optional parent)",
	  cmd_create_usage, CLI_WRITES },
	{ "info", cmd_info, "show an image, its snapshots and its parent chain", cmd_info_usage, 0 },
	{ "map", cmd_map, "print the extent map (data / zero / unallocated)", cmd_map_usage, 0 },
	{ "compare", cmd_compare, "compare what a guest sees in two images", cmd_compare_usage, 0 },
	{ "convert", cmd_convert, "convert an image to another format", cmd_convert_usage,
	  CLI_WRITES },
	{ "io", cmd_io, "read, write, discard through the block layer (like qemu-io)",
	  cmd_io_usage, CLI_WRITES },
	{ "check", cmd_check, "check metadata and (with --verify-data) every checksum",
	  cmd_check_usage, 0 },
	{ "snapshot", cmd_snapshot, "create, list, delete, revert internal snapshots",
	  cmd_snapshot_usage, CLI_WRITES },
	{ "diff", cmd_diff, "extents changed between two snapshots (from metadata)",
	  cmd_diff_usage, 0 },
	{ "commit", cmd_commit, "write an image's data into its parent", cmd_commit_usage,
	  CLI_WRITES },
	{ "rebase", cmd_rebase, "change an image's parent, keeping its content",
	  cmd_rebase_usage, CLI_WRITES },
	{ "send", cmd_send, "write a snapshot (or the changes since another) as a stream",
	  cmd_send_usage, 0 },
	{ "recv", cmd_recv, "apply a stream from keel send to an image or a raw store",
	  cmd_recv_usage, CLI_WRITES },
	{ "serve", cmd_serve, "receive replicas over TLS (keel:// targets under one directory)",
	  cmd_serve_usage, CLI_WRITES },
	{ "replicate", cmd_replicate, "bring a keel:// (or s3://) replica up to date",
	  cmd_replicate_usage, 0 },
	{ "scrub", cmd_scrub, "verify every stored cluster of every snapshot", cmd_scrub_usage,
	  0 },
	{ "key", cmd_key, "add, remove, change key slots of an encrypted image", cmd_key_usage,
	  CLI_WRITES },
	{ "dedup", cmd_dedup, "deduplicate an existing .keel image offline", cmd_dedup_usage,
	  CLI_WRITES },
	{ "backup", cmd_backup, "store a disk image as a new snapshot of a vault",
	  cmd_backup_usage, CLI_WRITES },
	{ "verify-boot", cmd_verify_boot, "boot a verifier VM on an image and report a verdict",
	  cmd_verify_boot_usage, CLI_NEEDS_KVM },
	{ "help", cmd_help, "describe a command or list formats", cmd_help_usage, 0 },
	{ NULL, NULL, NULL, NULL, 0 },
};

const struct cli_cmd *cli_find(const char *name)
{
	for (const struct cli_cmd *c = cli_commands; c->name; c++)
		if (!strcmp(c->name, name))
			return c;
	return NULL;
}
