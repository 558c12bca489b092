/* SPDX-License-Identifier: MIT */
/* uffdwp: the command, a thin layer over the library. */
#include <stdio.h>
#include <string.h>
#include "commands.h"

static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
} commands[] = {
	{ "probe", cmd_probe, "what this machine supports, and why [--json]" },
	{ "bench", cmd_bench, "benchmarks: fault, track, snapshot [SUITE...] [--json] [--quick]" },
	{ "snapshot", cmd_snapshot, "snapshot files: info|verify|restore FILE..." },
	{ "core", cmd_core, "an ELF core of a running process, paused for ms [-o FILE] [--json] PID" },
	{ "demo", cmd_demo, "a live snapshot of a busy store, beside fork() [--size MIB]" },
};

static int usage(FILE *out, int status)
{
	fprintf(out, "usage: uffdwp COMMAND [ARGS]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fprintf(out, "\nSee uffdwp(1).\n");
	return status;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage(stderr, 2);
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))
		return usage(stdout, 0);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "uffdwp: unknown command '%s'\n", argv[1]);
	return usage(stderr, 2);
}
