/* SPDX-License-Identifier: MIT */
/* The subcommands of the uffdwp command; each returns the exit status. */
#ifndef UFFDWP_COMMANDS_H
#define UFFDWP_COMMANDS_H

int cmd_probe(int argc, char **argv);     /* tools/probe.c */

#endif
