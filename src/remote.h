/* SPDX-License-Identifier: MIT */
/* A stopped process: what the core command reads besides the public API. */
#ifndef UFFDWP_REMOTE_H
#define UFFDWP_REMOTE_H

#include <signal.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/user.h>
#include "uffdwp.h"

/* One thread of the target as it was at the stop (x86_64). */
struct uffdwp__remote_thread {
	pid_t tid;
	struct user_regs_struct regs;
	struct user_fpregs_struct fpregs;
	unsigned char *xstate;   /* NT_X86_XSTATE as the kernel gives it */
	size_t xstate_len;
	char state;              /* /proc state letter before the stop */
	uint64_t sigmask;
	int stop_signal;         /* a signal that arrived during a call of ours, re-raised at resume */
};

/* Thread i (0: the thread group leader when it lives) of a stopped target,
 * or NULL past the last. Valid until uffdwp_remote_free(). */
const struct uffdwp__remote_thread *uffdwp__remote_thread(const struct uffdwp_remote *r,
							   size_t i)
	__attribute__((visibility("hidden")));

/* Tests only: _exit() at step N (1-8) of the injected calls. */
extern int uffdwp__remote_die_at __attribute__((visibility("hidden")));

#endif
