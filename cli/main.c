/*
 * cli/main.c - `keel`: global options, then one subcommand from the table.
 */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

bool cli_force_progress;
bool cli_quiet;

static void main_usage(FILE *fp)
{
	fprintf(fp, "usage: keel [-p] [-q] COMMAND [ARGS...]\n\n"
		    "keel - disaster-recovery toolkit for virtual-machine disk images\n\n"
		    "commands:\n");
	for (const struct cli_cmd *c = cli_commands; c->name; c++)
		fprintf(fp, "  %-12s %s\n", c->name, c->summary);
	fprintf(fp, "\nglobal options:\n"
		    "  -p, --progress  show a progress bar even when stderr is not a terminal\n"
		    "  -q, --quiet     print only errors\n"
		    "  --version       print the version\n\n"
		    "'keel help COMMAND' describes one command; 'keel help formats' lists formats.\n"
		    "Exit status: 0 ok, 1 failure, 2 usage error, 3 difference or damage found.\n");
}

/*
 * A parent chain holds one open file per layer, and convert opens the chain
 * once per worker: a 300-deep chain at -j 4 needs more than the usual soft
 * limit of 1024. Take what the hard limit allows (up to 65536); keel never
 * uses select(), so high descriptor numbers are safe.
 */
static void raise_open_files(void)
{
	struct rlimit r;
	rlim_t want = 65536;

	if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur >= want)
		return;
	if (r.rlim_max != RLIM_INFINITY && r.rlim_max < want)
		want = r.rlim_max;
	if (want > r.rlim_cur) {
		r.rlim_cur = want;
		setrlimit(RLIMIT_NOFILE, &r);
	}
}

int main(int argc, char **argv)
{
	const struct cli_cmd *c;
	int i = 1;

	kl_fault_from_env();
	raise_open_files();
	while (i < argc && argv[i][0] == '-') {
		if (!strcmp(argv[i], "-p") || !strcmp(argv[i], "--progress")) {
			cli_force_progress = true;
		} else if (!strcmp(argv[i], "-q") || !strcmp(argv[i], "--quiet")) {
			cli_quiet = true;
		} else if (!strcmp(argv[i], "--version") || !strcmp(argv[i], "-V")) {
			printf("keel %s\n", KL_VERSION);
			return 0;
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			main_usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "keel: unknown option '%s'\n", argv[i]);
			main_usage(stderr);
			return CLI_EXIT_USAGE;
		}
		i++;
	}
	if (i >= argc) {
		main_usage(stderr);
		return CLI_EXIT_USAGE;
	}
	c = cli_find(argv[i]);
	if (!c) {
		fprintf(stderr, "keel: '%s' is not a keel command\n\n", argv[i]);
		main_usage(stderr);
		return CLI_EXIT_USAGE;
	}
	return c->fn(argc - i, argv + i);
}
