/*
 * cli/cmd_help.c - keel help [COMMAND | formats]
 */
#include "cli/cli.h"

#include <string.h>

static const char usage[] = "usage: keel help [COMMAND | formats]\n"
			    "\n"
			    "Without an argument, lists the commands. With a command name, prints its\n"
			    "usage. 'keel help formats' lists the image formats and what keel can do\n"
			    "with each.\n";

static void list_formats(void)
{
	const struct blk_driver *drv;

	printf("%-8s %-7s %s\n", "FORMAT", "CREATE", "DESCRIPTION");
	for (size_t i = 0; (drv = blk_driver_at(i)); i++)
		printf("%-8s %-7s %s\n", blk_driver_name(drv),
		       blk_driver_create_needs_key(drv) ? "key" :
		       blk_driver_can_create(drv) ? "yes" : "no", blk_driver_desc(drv));
	printf("\nCREATE key: writing one needs a passphrase (--key-file or --key-env).\n"
	       "A format's -o options: keel create -f FORMAT -o help\n");
}

int cmd_help(int argc, char **argv)
{
	const struct cli_cmd *c;

	if (argc < 2) {
		printf("usage: keel [-p] [-q] COMMAND [ARGS...]\n\ncommands:\n");
		for (c = cli_commands; c->name; c++)
			printf("  %-12s %s\n", c->name, c->summary);
		printf("\n'keel help COMMAND' for details, 'keel help formats' for formats.\n");
		return 0;
	}
	if (!strcmp(argv[1], "formats")) {
		list_formats();
		return 0;
	}
	c = cli_find(argv[1]);
	if (!c) {
		fprintf(stderr, "keel: no such command '%s'\n%s", argv[1], usage);
		return CLI_EXIT_USAGE;
	}
	printf("%s", c->usage);
	if (c->usage_more)
		printf("\n%s", c->usage_more);
	return 0;
}

const char cmd_help_usage[] = "usage: keel help [COMMAND | formats]\n";
