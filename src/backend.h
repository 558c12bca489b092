/* SPDX-License-Identifier: MIT */
/*
 * The small internal interface both backends implement, and the context
 * they hang off. Arguments reach a backend already checked by context.c:
 * ranges page-aligned, non-empty, inside user space; mode bits known.
 */
#ifndef UFFDWP_BACKEND_H
#define UFFDWP_BACKEND_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <ucontext.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include "uffdwp.h"

#define UFFDWP__HIDDEN __attribute__((visibility("hidden")))

/* Called in the faulting thread (emulated in-thread mode): must be
 * async-signal-safe. Returns 0 when it resolved the fault (page writable),
 * non-zero to fall back to queueing the event and blocking the writer. */
typedef int (*uffdwp__fault_hook)(void *arg, struct uffdwp *ctx,
				  const struct uffdwp_event *ev);

struct uffdwp__backend_ops {
	/* Set ctx->fd and ctx->features from the requested features
	 * (0 = UFFDWP_FEATURES_DEFAULT where available). */
	int (*open)(struct uffdwp *ctx, uint64_t features);
	void (*close)(struct uffdwp *ctx);
	int (*register_range)(struct uffdwp *ctx, uintptr_t start, size_t len,
			      unsigned mode, uint64_t *ioctls);
	int (*unregister_range)(struct uffdwp *ctx, uintptr_t start, size_t len);
	int (*writeprotect)(struct uffdwp *ctx, uintptr_t start, size_t len, unsigned mode);
	int (*wake)(struct uffdwp *ctx, uintptr_t start, size_t len);
	int (*copy)(struct uffdwp *ctx, uintptr_t dst, const void *src, size_t len,
		    unsigned mode);
	int (*read_events)(struct uffdwp *ctx, struct uffdwp_event *ev, size_t max);
	/* Emulated only (NULL on the kernel): resolve faults in the faulting
	 * thread through hook; hook NULL restores queue-and-block. */
	int (*set_fault_hook)(struct uffdwp *ctx, uffdwp__fault_hook hook, void *arg);
};

struct uffdwp {
	const struct uffdwp__backend_ops *ops;
	enum uffdwp_backend backend;
	int fd;
	uint64_t features;
	void *priv;  /* the backend's own state */
	pid_t pid;   /* 0: this process; else the process whose memory it acts on */
};

extern const struct uffdwp__backend_ops uffdwp__kernel_ops UFFDWP__HIDDEN;
extern const struct uffdwp__backend_ops uffdwp__emulated_ops UFFDWP__HIDDEN;

/* The features the emulated backend can offer. */
#define UFFDWP__EMULATED_FEATURES (UFFDWP_FEATURE_PAGEFAULT_FLAG_WP | \
				   UFFDWP_FEATURE_WP_UNPOPULATED | \
				   UFFDWP_FEATURE_WP_HUGETLBFS_SHMEM | \
				   UFFDWP_FEATURE_THREAD_ID)

/* Every feature bit this library knows. */
#define UFFDWP__KNOWN_FEATURES ((UFFDWP_FEATURE_MOVE << 1) - 1)

/* The action a uffdwp signal handler replaced (chain.c). */
struct uffdwp__chained {
	struct sigaction previous;
	_Atomic bool spent;  /* its SA_RESETHAND was used up */
};

/* Hand sig, not ours, to c->previous as the kernel would have. */
void uffdwp__chain_signal(struct uffdwp__chained *c, int sig, siginfo_t *si,
			  ucontext_t *uc) UFFDWP__HIDDEN;

/* A kernel context over fd, a userfaultfd of process pid that no
 * UFFDIO_API has touched yet (remote.c): the handshake asks for features
 * (0: UFFDWP_FEATURES_DEFAULT where available). On success ctx owns fd; on
 * failure fd is closed. Errors as for uffdwp_open() (context.c). */
int uffdwp__open_fd(struct uffdwp **ctx, int fd, pid_t pid, uint64_t features) UFFDWP__HIDDEN;

/* The kernel backend's open over a given fd (kernel.c): as ops->open. */
int uffdwp__kernel_adopt(struct uffdwp *ctx, int fd, uint64_t features) UFFDWP__HIDDEN;

/* Protect the regions (context.c): the kernel backend protects under the
 * mm lock taken for reading, so large sets are split among up to one
 * thread per CPU (4 at most). 0 or the first error. */
int uffdwp__protect_regions(struct uffdwp *ctx, const struct uffdwp_snapshot_region *regions,
			    size_t nregions) UFFDWP__HIDDEN;

/* The kernel half of uffdwp_probe() (kernel.c). */
void uffdwp__kernel_probe(struct uffdwp_probe *p) UFFDWP__HIDDEN;

/* 1 in a ThreadSanitizer build (gcc or clang), else 0. */
#if defined(__SANITIZE_THREAD__)
#define UFFDWP__UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UFFDWP__UNDER_TSAN 1
#endif
#endif
#ifndef UFFDWP__UNDER_TSAN
#define UFFDWP__UNDER_TSAN 0
#endif

/* sysconf(_SC_PAGESIZE), cached. */
size_t uffdwp__page_size(void) UFFDWP__HIDDEN;

#endif
