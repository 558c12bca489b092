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
#include <time.h>
#include "uffdwp.h"

#define UFFDWP__HIDDEN __attribute__((visibility("hidden")))

/* Called in the faulting thread (emulated in-thread mode), outside any
 * read section: must be async-signal-safe, may block. page: the mapping's
 * page size (huge on hugetlbfs). Returns 0 when it resolved the fault (page
 * writable), a positive value when it kept the page protected (the writer
 * waits, taking signals, until the generation moves, then faults again), a
 * negative errno when it failed to resolve it (the write is retried: it
 * faults again rather than sleep). */
typedef int (*uffdwp__fault_hook)(void *arg, struct uffdwp *ctx,
				  const struct uffdwp_event *ev, size_t page);

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

/* What an in-thread engine did with a SIGBUS. */
enum uffdwp__resolved {
	UFFDWP__NOT_MINE,  /* not its page */
	UFFDWP__RESOLVED,  /* un-protected: the write retries and succeeds */
	UFFDWP__FAILED,    /* its page, but the un-protect failed: it retries */
	UFFDWP__KEPT,      /* its page, left protected (UFFDWP_KEEP): the writer
			    * waits for the generation to move, then retries */
};

/* The ranges a kernel SIGBUS context registered (context.c), for the
 * SIGBUS claimant: sorted, disjoint, immutable once published. */
struct uffdwp__range_set {
	size_t n;
	struct { uintptr_t start, end; } r[];
};

/* In private memory: fault handlers read it. */
struct uffdwp {
	const struct uffdwp__backend_ops *ops;
	enum uffdwp_backend backend;
	int fd;
	uint64_t features;
	void *priv;  /* the backend's own state */
	pid_t pid;   /* 0: this process; else the process whose memory it acts on */

	/* SIGBUS contexts: what is registered; readers count lookups. */
	_Atomic(struct uffdwp__range_set *) sigbus_ranges;
	_Atomic uint32_t sigbus_range_readers;

	/* The engine running on it (engine.c, under its lock), and how close
	 * stops it: uffdwp_close() calls engine_detach(ctx) first. */
	void *engine;
	void (*engine_detach)(struct uffdwp *ctx);
	/* Kernel SIGBUS contexts: their registry slot from open to close, else
	 * -1; their running in-thread engine, and how it resolves a fault (set
	 * before the engine is published). */
	int registry_slot;
	_Atomic(void *) inthread_engine;
	enum uffdwp__resolved (*inthread_resolve)(void *engine, uintptr_t addr, uint64_t t0);
};

/* Whether a SIGBUS context registered addr. Async-signal-safe. */
bool uffdwp__context_covers(struct uffdwp *ctx, uintptr_t addr) UFFDWP__HIDDEN;

extern const struct uffdwp__backend_ops uffdwp__kernel_ops UFFDWP__HIDDEN;
extern const struct uffdwp__backend_ops uffdwp__emulated_ops UFFDWP__HIDDEN;

/* The features the emulated backend can offer. */
#define UFFDWP__EMULATED_FEATURES (UFFDWP_FEATURE_PAGEFAULT_FLAG_WP | \
				   UFFDWP_FEATURE_WP_UNPOPULATED | \
				   UFFDWP_FEATURE_WP_HUGETLBFS_SHMEM | \
				   UFFDWP_FEATURE_THREAD_ID)

/* Every feature bit this library knows. */
#define UFFDWP__KNOWN_FEATURES ((UFFDWP_FEATURE_MOVE << 1) - 1)

/* ---------------------------------------------------------------------------
 * The library's private memory (private.c)
 *
 * Everything a fault path writes must live here, never in the program's
 * heap, which the program may protect (a whole-heap snapshot). Modules
 * that keep state a fault handler or handler thread writes (the emulated
 * backend, the engine, the tracker, snapshots) allocate it with these.
 * uffdwp_register() refuses memory overlapping these mappings (-EBUSY).
 * ------------------------------------------------------------------------- */

/* Zeroed memory for at least size bytes, or NULL. Any thread; not from a
 * signal handler. 16-byte aligned. */
void *uffdwp__private_alloc(size_t size) UFFDWP__HIDDEN;
/* uffdwp__private_alloc() of n * size bytes; NULL if that overflows. */
void *uffdwp__private_calloc(size_t n, size_t size) UFFDWP__HIDDEN;
/* Grow a block to size bytes, as realloc(3): NULL (p kept) when out of
 * memory. */
void *uffdwp__private_realloc(void *p, size_t size) UFFDWP__HIDDEN;
/* Give back a block of uffdwp__private_alloc() (NULL is fine). */
void uffdwp__private_free(void *p) UFFDWP__HIDDEN;
/* A zeroed mapping of len bytes (a multiple of the page size) that is
 * never given back, or NULL. Async-signal-safe. */
void *uffdwp__private_map(size_t len) UFFDWP__HIDDEN;
/* Whether [start, start+len) overlaps private memory. Async-signal-safe. */
bool uffdwp__private_overlaps(uintptr_t start, size_t len) UFFDWP__HIDDEN;
void uffdwp__private_prepare_fork(void) UFFDWP__HIDDEN;
void uffdwp__private_after_fork(void) UFFDWP__HIDDEN;

/* ---------------------------------------------------------------------------
 * The fault-signal layer (signals.c): see the comment at its top and
 * uffdwp_engine(3), uffdwp_emulated(7).
 * ------------------------------------------------------------------------- */

/* Checked in every build: these guard against hangs and corruption. */
#define UFFDWP__ASSERT(cond) \
	do { if (!(cond)) __builtin_trap(); } while (0)

/* Futexes and a lock usable in a signal handler (0 free, 1 held, 2 held
 * with waiters). A thread inside a no-sleep section (uffdwp__no_sleep_*)
 * must not wait on a futex: the library asserts it. */
typedef _Atomic uint32_t uffdwp__lock_t;
void uffdwp__futex_wait(_Atomic uint32_t *word, uint32_t expected) UFFDWP__HIDDEN;
void uffdwp__futex_wake(_Atomic uint32_t *word, int count) UFFDWP__HIDDEN;
void uffdwp__lock(uffdwp__lock_t *l) UFFDWP__HIDDEN;
void uffdwp__unlock(uffdwp__lock_t *l) UFFDWP__HIDDEN;
void uffdwp__no_sleep_enter(void) UFFDWP__HIDDEN;
void uffdwp__no_sleep_exit(void) UFFDWP__HIDDEN;

/* A clock in ns; uffdwp__now_ns(): CLOCK_MONOTONIC. Async-signal-safe. */
uint64_t uffdwp__clock_ns(clockid_t clock) UFFDWP__HIDDEN;
uint64_t uffdwp__now_ns(void) UFFDWP__HIDDEN;

/* Around every change that can make protected memory writable: un-protect,
 * unregister, close. */
void uffdwp__unprotect_begin(void) UFFDWP__HIDDEN;
void uffdwp__unprotect_end(void) UFFDWP__HIDDEN;
/* Moves when an uffdwp__unprotect_end() or uffdwp__generation_move() has
 * run. */
uint32_t uffdwp__generation(void) UFFDWP__HIDDEN;
/* Move it without an un-protect, for what else a waiting writer waits on:
 * an engine's start, room for a kept page (UFFDWP_KEEP). It faults again. */
void uffdwp__generation_move(void) UFFDWP__HIDDEN;

/* What a claimant says about a fault at f->addr. */
enum uffdwp__claim {
	UFFDWP__NOT_OURS,  /* not protected by an open context (as far as it knows) */
	UFFDWP__RETRY,     /* handled: resolved, or waited for: retry the write */
	UFFDWP__WAIT,      /* protected by an open context nobody resolves now,
			    * or kept by its resolver: wait for the generation */
	UFFDWP__FOREIGN,   /* known not to be a write-protect fault: forward now */
};

struct uffdwp__fault {
	uintptr_t addr;
	uint32_t seq;           /* uffdwp__generation() when the handler began */
	const ucontext_t *uc;   /* the interrupted context (its signal mask) */
};

typedef enum uffdwp__claim (*uffdwp__claim_fn)(const struct uffdwp__fault *f);

/* Block every signal but the synchronous ones (a fault, SIGSEGV and SIGBUS
 * among them, still reaches its handler: blocked, it would kill the
 * process), for a thread of ours to inherit; the old mask into *old. */
void uffdwp__block_async_signals(sigset_t *old) UFFDWP__HIDDEN;

/* Install the handler of sig (SIGSEGV; SIGBUS is the layer's own) with
 * its claimant; it is never removed. If the program replaced it meanwhile
 * it is installed again, in front of the program's. Returns 0 or -errno. */
int uffdwp__signals_install(int sig, uffdwp__claim_fn claim) UFFDWP__HIDDEN;

/* The registry of open kernel SIGBUS contexts, which the SIGBUS handler
 * looks through: a context joins at open (the handler is installed then)
 * and leaves at close. A slot's owner is pinned while a handler uses it. */
#define UFFDWP__REGISTRY_SLOTS UFFDWP_ENGINE_MAX_INTHREAD
int uffdwp__sigbus_join(struct uffdwp *ctx) UFFDWP__HIDDEN;  /* 0, -EMFILE, -errno */
/* (Re)install the SIGBUS handler in front of the program's: 0 or -errno. */
int uffdwp__sigbus_install(void) UFFDWP__HIDDEN;
/* Returns once no handler uses ctx. No-op in a fork child (the registry
 * is emptied there). */
void uffdwp__sigbus_leave(struct uffdwp *ctx) UFFDWP__HIDDEN;
void uffdwp__registry_wait_unpinned(int slot) UFFDWP__HIDDEN;

/* fork(): every module's locks taken in this order before, released after. */
enum uffdwp__fork_order {
	UFFDWP__FORK_ENGINE,
	UFFDWP__FORK_CONTEXT,
	UFFDWP__FORK_EMULATED,
	UFFDWP__FORK_PRIVATE,
	UFFDWP__FORK_ORDERS,
};

struct uffdwp__fork_hooks {
	void (*prepare)(void), (*parent)(void), (*child)(void);
};

void uffdwp__at_fork(enum uffdwp__fork_order order,
		     const struct uffdwp__fork_hooks *hooks) UFFDWP__HIDDEN;

/* A kernel context over fd, a userfaultfd of process pid that no
 * UFFDIO_API has touched yet (remote.c): the handshake asks for features
 * (0: UFFDWP_FEATURES_DEFAULT where available). On success ctx owns fd; on
 * failure fd is closed. Errors as for uffdwp_open() (context.c). */
int uffdwp__open_fd(struct uffdwp **ctx, int fd, pid_t pid, uint64_t features) UFFDWP__HIDDEN;

/* The kernel backend's open over a given fd (kernel.c): as ops->open. */
int uffdwp__kernel_adopt(struct uffdwp *ctx, int fd, uint64_t features) UFFDWP__HIDDEN;

/* Check a caller's uffdwp_opts (NULL: the defaults) into *o, as
 * uffdwp_open() takes them: 0, -EINVAL (sz too small, unknown features) or
 * -E2BIG (a newer caller's non-zero fields) (context.c). */
int uffdwp__take_opts(struct uffdwp_opts *o, const struct uffdwp_opts *opts) UFFDWP__HIDDEN;

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
