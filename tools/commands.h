/* SPDX-License-Identifier: MIT */
/* The subcommands of the uffdwp command; each returns the exit status. */
#ifndef UFFDWP_COMMANDS_H
#define UFFDWP_COMMANDS_H

int cmd_probe(int argc, char **argv);     /* tools/probe.c */
int cmd_bench(int argc, char **argv);     /* bench/harness.c */
int cmd_snapshot(int argc, char **argv);  /* tools/snapshot_cmd.c */
int cmd_demo(int argc, char **argv);      /* tools/demo.c */
int cmd_core(int argc, char **argv);      /* tools/core_cmd.c */

#endif
