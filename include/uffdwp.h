/* SPDX-License-Identifier: MIT */
/*
 * uffdwp.h - page write-protection for Linux: userfaultfd write-protect
 * (UFFDIO_WRITEPROTECT) and an emulated backend with the same semantics,
 * a fault-resolution engine, a write tracker and live snapshots.
 *
 * Conventions, everywhere in this header:
 *  - functions that can fail return 0 (or a count) on success and a negative
 *    errno value on failure (-EINVAL, -ENOMEM, ...); they never print, never
 *    exit and leave errno unspecified;
 *  - "page" is the system page size, sysconf(_SC_PAGESIZE);
 *  - options structures start with `size_t sz` = sizeof(the struct) as the
 *    caller compiled it, so fields can be appended without breaking callers;
 *    a NULL options pointer means all defaults.
 */
#ifndef UFFDWP_H
#define UFFDWP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef UFFDWP_API
#define UFFDWP_API __attribute__((visibility("default")))
#endif

#define UFFDWP_VERSION_MAJOR 0
#define UFFDWP_VERSION_MINOR 1

/* ------------------------------------------------------------------------
 * Core: one write-protect context
 * ------------------------------------------------------------------------ */

/* One write-protect context: a userfaultfd, or its emulation. Opaque. */
struct uffdwp;

enum uffdwp_backend {
	UFFDWP_BACKEND_AUTO = 0,  /* kernel when usable, else emulated */
	UFFDWP_BACKEND_KERNEL,    /* userfaultfd(2) write-protect */
	UFFDWP_BACKEND_EMULATED,  /* mprotect(2) + SIGSEGV, in user space */
};

/*
 * Features. The values are the kernel's UFFD_FEATURE_* bits, so a kernel
 * feature word can be read as-is. Features that only the kernel can have are
 * rejected by the emulated backend with -EOPNOTSUPP.
 */
#define UFFDWP_FEATURE_PAGEFAULT_FLAG_WP     (1ULL << 0)  /* write-protect faults (always on) */
#define UFFDWP_FEATURE_EVENT_FORK            (1ULL << 1)
#define UFFDWP_FEATURE_EVENT_REMAP           (1ULL << 2)
#define UFFDWP_FEATURE_EVENT_REMOVE          (1ULL << 3)
#define UFFDWP_FEATURE_MISSING_HUGETLBFS     (1ULL << 4)
#define UFFDWP_FEATURE_MISSING_SHMEM         (1ULL << 5)
#define UFFDWP_FEATURE_EVENT_UNMAP           (1ULL << 6)
#define UFFDWP_FEATURE_SIGBUS                (1ULL << 7)  /* faults raise SIGBUS, no message */
#define UFFDWP_FEATURE_THREAD_ID             (1ULL << 8)
#define UFFDWP_FEATURE_MINOR_HUGETLBFS       (1ULL << 9)
#define UFFDWP_FEATURE_MINOR_SHMEM           (1ULL << 10)
#define UFFDWP_FEATURE_EXACT_ADDRESS         (1ULL << 11)
#define UFFDWP_FEATURE_WP_HUGETLBFS_SHMEM    (1ULL << 12)
#define UFFDWP_FEATURE_WP_UNPOPULATED        (1ULL << 13) /* never-touched pages are protected too */
#define UFFDWP_FEATURE_POISON                (1ULL << 14)
#define UFFDWP_FEATURE_WP_ASYNC              (1ULL << 15) /* the kernel resolves WP faults itself */
#define UFFDWP_FEATURE_MOVE                  (1ULL << 16)

/*
 * What features == 0 asks for: these, where the backend has them (a missing
 * default is left out, not an error).
 */
#define UFFDWP_FEATURES_DEFAULT (UFFDWP_FEATURE_PAGEFAULT_FLAG_WP | \
				 UFFDWP_FEATURE_WP_UNPOPULATED | \
				 UFFDWP_FEATURE_WP_HUGETLBFS_SHMEM | \
				 UFFDWP_FEATURE_THREAD_ID)

struct uffdwp_opts {
	size_t sz;                    /* sizeof(struct uffdwp_opts) */
	enum uffdwp_backend backend;  /* AUTO by default */
	/*
	 * 0: UFFDWP_FEATURES_DEFAULT, each where available.
	 * Otherwise exactly these (PAGEFAULT_FLAG_WP is always added); any
	 * the backend lacks makes uffdwp_open() fail with -EOPNOTSUPP.
	 */
	uint64_t features;
};

/*
 * Open a context. On success *ctx is set and 0 is returned.
 * Errors: -EINVAL bad opts (sz, backend, unknown feature bits); -E2BIG
 * non-zero bytes in opts past the fields this library knows;
 * -EOPNOTSUPP a requested feature is missing from the chosen backend;
 * -ENOSYS the kernel has no userfaultfd (KERNEL backend);
 * -EMFILE also when UFFDWP_ENGINE_MAX_INTHREAD kernel contexts with
 * UFFDWP_FEATURE_SIGBUS are open already;
 * -EPERM / -EACCES neither /dev/userfaultfd nor the syscall may be used
 * (uffdwp_probe() says which obstacle); -EMFILE, -ENOMEM.
 * AUTO falls back to the emulated backend on any kernel-side failure except
 * -EINVAL, -EMFILE and -ENOMEM.
 */
UFFDWP_API int uffdwp_open(struct uffdwp **ctx, const struct uffdwp_opts *opts);

/*
 * Close a context: every range still registered is un-protected and
 * unregistered, and every thread blocked on one of its faults is woken.
 * An engine still running on it is stopped first; it stays allocated until
 * uffdwp_engine_stop() (either order is fine). NULL is fine.
 */
UFFDWP_API void uffdwp_close(struct uffdwp *ctx);

/*
 * The context's file descriptor, always valid while the context is open:
 * poll(2) reports POLLIN while events are pending. It is non-blocking and
 * close-on-exec; do not read or close it yourself. -EINVAL for NULL.
 */
UFFDWP_API int uffdwp_fd(const struct uffdwp *ctx);

/* The features in force (UFFDWP_FEATURE_*); 0 for NULL. */
UFFDWP_API uint64_t uffdwp_features(const struct uffdwp *ctx);

/* The backend in use: UFFDWP_BACKEND_KERNEL or UFFDWP_BACKEND_EMULATED;
 * UFFDWP_BACKEND_AUTO for NULL. */
UFFDWP_API enum uffdwp_backend uffdwp_backend(const struct uffdwp *ctx);

/* Name of a backend ("auto", "kernel", "emulated"), or "?" for others. */
UFFDWP_API const char *uffdwp_backend_name(enum uffdwp_backend backend);

#define UFFDWP_REGISTER_MODE_MISSING (1U << 0)  /* kernel backend only */
#define UFFDWP_REGISTER_MODE_WP      (1U << 1)

/* Bits of the ioctls word returned by uffdwp_register_ioctls() (the kernel's). */
#define UFFDWP_IOCTL_WAKE         (1ULL << 0x02)
#define UFFDWP_IOCTL_COPY         (1ULL << 0x03)
#define UFFDWP_IOCTL_ZEROPAGE     (1ULL << 0x04)
#define UFFDWP_IOCTL_WRITEPROTECT (1ULL << 0x06)
#define UFFDWP_IOCTL_CONTINUE     (1ULL << 0x07)

/*
 * Register [addr, addr+len) with the context. mode must contain
 * UFFDWP_REGISTER_MODE_WP. Registration does not protect anything.
 * Errors: -EINVAL addr/len not page-aligned, len 0, the range wraps or
 * leaves user space, unknown mode bits or no MODE_WP, or nothing at all is
 * mapped in the range (holes inside it are skipped, as the kernel does); -EBUSY the range is registered with
 * another context, or overlaps the library's own memory (the state its
 * fault path writes, kept in mappings of its own, never in the heap);
 * -EOPNOTSUPP the memory type or mode is not supported
 * by this backend or kernel (e.g. shmem without WP_HUGETLBFS_SHMEM).
 */
UFFDWP_API int uffdwp_register(struct uffdwp *ctx, void *addr, size_t len, unsigned mode);

/*
 * The same as uffdwp_register(); on success *ioctls (if not NULL) receives
 * the UFFDWP_IOCTL_* operations available on the range.
 */
UFFDWP_API int uffdwp_register_ioctls(struct uffdwp *ctx, void *addr, size_t len,
				      unsigned mode, uint64_t *ioctls);

/*
 * Unregister a range: its pages are un-protected and threads blocked on
 * faults in it are woken. Unregistering memory that is not registered is
 * not an error. Errors: -EINVAL as for uffdwp_register(), including a range
 * where nothing is mapped.
 */
UFFDWP_API int uffdwp_unregister(struct uffdwp *ctx, void *addr, size_t len);

#define UFFDWP_WRITEPROTECT_MODE_WP       (1U << 0)
#define UFFDWP_WRITEPROTECT_MODE_DONTWAKE (1U << 1)

/*
 * UFFDIO_WRITEPROTECT. With MODE_WP: protect the range; a later write to
 * any of its pages does not complete but raises a fault event. Without it:
 * un-protect the range and wake the threads waiting on faults in it, unless
 * MODE_DONTWAKE is given, in which case they stay blocked until
 * uffdwp_wake().
 * Errors: -EINVAL addr/len not page-aligned, len 0, wrapping or outside user
 * space, unknown mode bits, or DONTWAKE together with WP; -ENOENT the range
 * is not mapped or not registered in WP mode; -EAGAIN the address space is
 * changing (a fork/remap/remove/unmap event is pending on uffdwp_fd()):
 * read the pending events with uffdwp_read_events(), then retry;
 * -EFAULT from the kernel, passed through.
 */
UFFDWP_API int uffdwp_writeprotect(struct uffdwp *ctx, void *addr, size_t len, unsigned mode);

/*
 * Wake the threads waiting on faults in the range (after an un-protect with
 * MODE_DONTWAKE); a range with no waiter is no error. Errors: -EINVAL as
 * for uffdwp_writeprotect().
 */
UFFDWP_API int uffdwp_wake(struct uffdwp *ctx, void *addr, size_t len);

#define UFFDWP_COPY_MODE_DONTWAKE (1U << 0)
#define UFFDWP_COPY_MODE_WP       (1U << 1)

/*
 * Resolve a missing fault (kernel backend, UFFDWP_REGISTER_MODE_MISSING):
 * atomically fill [dst, dst+len) from src, protected if MODE_WP. Returns 0
 * or a negative errno (-EEXIST already populated, -EAGAIN as above,
 * -EOPNOTSUPP on the emulated backend).
 */
UFFDWP_API int uffdwp_copy(struct uffdwp *ctx, void *dst, const void *src, size_t len,
			   unsigned mode);

enum uffdwp_event_type {
	UFFDWP_EVENT_PAGEFAULT = 0x12,
	UFFDWP_EVENT_FORK      = 0x13,
	UFFDWP_EVENT_REMAP     = 0x14,
	UFFDWP_EVENT_REMOVE    = 0x15,
	UFFDWP_EVENT_UNMAP     = 0x16,
};

#define UFFDWP_PAGEFAULT_FLAG_WRITE (1ULL << 0)
#define UFFDWP_PAGEFAULT_FLAG_WP    (1ULL << 1)

struct uffdwp_event {
	enum uffdwp_event_type type;
	union {
		struct {
			uint64_t flags;    /* UFFDWP_PAGEFAULT_FLAG_* */
			uint64_t address;  /* start of the faulting page (of a hugetlbfs
					      mapping: of the huge page); exact with
					      EXACT_ADDRESS */
			uint32_t tid;      /* faulting thread (with THREAD_ID), else 0 */
		} pagefault;
		struct {
			int fd;  /* the child's userfaultfd: yours to close */
		} fork;
		struct {
			uint64_t from, to, len;
		} remap;
		struct {
			uint64_t start, end;  /* REMOVE and UNMAP */
		} remove;
	};
};

/*
 * Read up to max pending events into ev. Returns the number read (>= 1), or
 * -EAGAIN when none is pending; never blocks. Errors: -EINVAL max is 0.
 */
UFFDWP_API int uffdwp_read_events(struct uffdwp *ctx, struct uffdwp_event *ev, size_t max);


/* ------------------------------------------------------------------------
 * Another process (src/remote.c; x86_64 Linux)
 * ------------------------------------------------------------------------ */

/*
 * A running, unmodified process whose memory a context can write-protect:
 * uffdwp_remote_open() creates a userfaultfd inside it (a system call made
 * by one of its threads, stopped for that moment only, whose registers,
 * signal mask and FPU state are restored exactly) and hands it to us as a
 * context acting on the target's address space: register, protect and read
 * faults with the usual calls, addresses being the target's; a
 * uffdwp_snapshot_begin() given it (opts.context) saves the target's
 * memory. uffdwp_remote_attach() stops all its threads (ptrace: no signal
 * is sent) for a consistent instant, uffdwp_remote_resume() lets them run
 * on from where they stopped. The target keeps no descriptor of ours: if
 * we die, the kernel un-protects everything and wakes its writers; if it
 * dies, calls on the context fail with -ESRCH.
 */
struct uffdwp_remote;

/*
 * Open a context on process pid's address space (kernel backend only,
 * faults read by a handler thread: UFFDWP_FEATURE_SIGBUS and
 * UFFDWP_BACKEND_EMULATED are refused with -EOPNOTSUPP). opts as for
 * uffdwp_open(); features 0 asks UFFDWP_FEATURES_DEFAULT where available.
 * One thread of the target (a running one if any) is stopped for the
 * moment of the call; if we die meanwhile it is put back all the same.
 * Errors: -EINVAL bad arguments, pid <= 0 or our own; -E2BIG as for
 * uffdwp_open(); -ESRCH no such process; -EPERM we may not trace it (another user, not dumpable, Yama
 * ptrace_scope, traced by someone else: nothing was changed); -EOPNOTSUPP
 * as above, a requested feature is missing, or not x86_64; -EACCES the
 * target may not create a userfaultfd (its userfaultfd(2) answered EPERM:
 * vm.unprivileged_userfaultfd, seccomp), -ENOSYS its kernel has none;
 * -ENOEXEC no rt_sigreturn trampoline found in the target
 * (needed to undo the call should we die meanwhile); -EBUSY every thread
 * is stopped by job control (SIGSTOP); -ENOMEM.
 */
UFFDWP_API int uffdwp_remote_open(pid_t pid, struct uffdwp **ctx, const struct uffdwp_opts *opts);

/*
 * Stop every thread of process pid (threads born meanwhile too); *r is
 * set. Keep the stop short: call uffdwp_remote_resume() as soon as
 * possible. If we are killed while it is stopped, the kernel lets it run
 * on. Errors: -EINVAL r NULL, pid <= 0 or our own process; -ESRCH no such
 * process (or it exited meanwhile); -EPERM as for uffdwp_remote_open()
 * (nothing was changed); -EOPNOTSUPP not x86_64; -ENOMEM.
 */
UFFDWP_API int uffdwp_remote_attach(struct uffdwp_remote **r, pid_t pid);

/*
 * Let every thread run on from where it stopped (a system call it was in is
 * restarted as after any stop) and detach. Calling it again does nothing.
 * Returns 0, or -ESRCH when the target died meanwhile.
 */
UFFDWP_API int uffdwp_remote_resume(struct uffdwp_remote *r);

/* The target's pid. */
UFFDWP_API pid_t uffdwp_remote_pid(const struct uffdwp_remote *r);

/* How many threads were stopped. */
UFFDWP_API size_t uffdwp_remote_threads(const struct uffdwp_remote *r);

/* How long the target was stopped, first thread stopped to last resumed
 * (ns); 0 while it is still stopped. */
UFFDWP_API uint64_t uffdwp_remote_pause_ns(const struct uffdwp_remote *r);

/* A pidfd of the target: poll(2) reports it readable once the target has
 * exited. Valid until uffdwp_remote_free(); do not close it. */
UFFDWP_API int uffdwp_remote_pidfd(const struct uffdwp_remote *r);

/* Resume the target if still stopped and free r. NULL is fine. */
UFFDWP_API void uffdwp_remote_free(struct uffdwp_remote *r);

/* ------------------------------------------------------------------------
 * Probe: what this machine supports, and why
 * ------------------------------------------------------------------------ */

struct uffdwp_probe {
	size_t sz;                  /* sizeof(struct uffdwp_probe) */
	char kernel_release[65];    /* uname -r */
	uint64_t kernel_features;   /* UFFDWP_FEATURE_* the kernel offers; 0 if unusable */
	uint64_t kernel_ioctls;     /* ioctls the UFFDIO_API handshake returned */
	int dev_error;              /* 0: /dev/userfaultfd usable; else -errno of open/ioctl */
	int syscall_error;          /* 0: userfaultfd(2) usable; else -errno */
	int syscall_user_mode_only; /* 1: the syscall needed UFFD_USER_MODE_ONLY */
	int unprivileged_userfaultfd; /* vm.unprivileged_userfaultfd, -1 unreadable */
	long max_map_count;         /* vm.max_map_count, -1 unreadable */
	char thp_mode[16];          /* "always", "madvise", "never" or "" */
	int pagemap_scan;           /* 1: PAGEMAP_SCAN on /proc/self/pagemap works */
	enum uffdwp_backend auto_backend; /* what UFFDWP_BACKEND_AUTO picks */
	uint64_t emulated_features; /* UFFDWP_FEATURE_* the emulated backend offers */
};

/*
 * Fill *p (p->sz must be set) with what this machine supports. Opens only
 * throwaway descriptors. Returns 0, or -EINVAL (p NULL or p->sz too small).
 */
UFFDWP_API int uffdwp_probe(struct uffdwp_probe *p);

/*
 * The name of one feature bit without prefix ("WP_ASYNC"), or NULL for a
 * value that is not exactly one known bit.
 */
UFFDWP_API const char *uffdwp_feature_name(uint64_t feature);

/* ------------------------------------------------------------------------
 * Engine: fault resolution (src/engine.c)
 * ------------------------------------------------------------------------ */

struct uffdwp_engine;

enum uffdwp_engine_mode {
	UFFDWP_ENGINE_AUTO = 0,  /* the fastest mode correct for the context */
	UFFDWP_ENGINE_THREAD,    /* a handler thread of ours */
	UFFDWP_ENGINE_INTHREAD,  /* the faulting thread resolves its own fault */
	UFFDWP_ENGINE_CALLER,    /* the caller polls uffdwp_fd() and dispatches */
};

/* Return values of a uffdwp_fault_fn for a page fault. */
#define UFFDWP_RESOLVE 0  /* the engine un-protects the page and wakes the writer */
#define UFFDWP_KEEP    1  /* leave it pending; resolve later with uffdwp_writeprotect() */

/*
 * Called for each page fault, before the page is un-protected (the page
 * still holds what it held before the write), and for each other event
 * (fork, remap, remove, unmap; the return value is then ignored). A fork
 * event's fd is the callback's to close; with fn NULL the engine closes it,
 * which un-protects the child's memory. In no mode may it write protected
 * memory of the context (THREAD, CALLER: that fault waits for the thread
 * running fn).
 *
 * THREAD and CALLER modes call it from one thread at a time. In INTHREAD
 * mode it runs inside a signal handler (SIGBUS on the kernel backend,
 * SIGSEGV on the emulated one) in the faulting thread, possibly in several
 * threads at once: it must be async-signal-safe and must not write protected
 * memory. UFFDWP_KEEP leaves the page protected there too: the writer waits
 * in the handler, taking signals, until an un-protect or unregister of any
 * context (or a close) ends, then writes again, and faults again (fn is
 * called again) if the page is still protected.
 */
typedef int (*uffdwp_fault_fn)(void *arg, const struct uffdwp_event *ev);

struct uffdwp_engine_opts {
	size_t sz;                     /* sizeof(struct uffdwp_engine_opts) */
	enum uffdwp_engine_mode mode;  /* AUTO by default */
	uffdwp_fault_fn fn;            /* NULL: resolve every fault at once */
	void *arg;
};

/*
 * Start an engine over ctx; on success *eng is set and 0 returned. Faults
 * already pending are handled as soon as it runs.
 *  - THREAD: a handler thread reads faults in batches, calls fn, un-protects
 *    and wakes. It sleeps in poll(2) when idle and spins briefly while
 *    faults keep coming. A syscall writing into protected memory (read(2)
 *    into a protected buffer) blocks until resolved, as a plain write does.
 *  - INTHREAD: the faulting thread resolves its own fault in a signal
 *    handler: no thread switch, the fastest mode. Kernel backend: ctx must
 *    have been opened with UFFDWP_FEATURE_SIGBUS (opening it installed a
 *    process-wide SIGBUS handler that stays: SIGBUS that is not ours goes
 *    to the handler installed before, with its sa_mask and SA_RESETHAND, or
 *    kills as by default; so does a write-protect SIGBUS in a fork child,
 *    which has none of the parent's engines); a syscall writing into
 *    protected memory fails with EFAULT instead of blocking, on both
 *    backends. Handles write-protect faults only (a range registered with
 *    UFFDWP_REGISTER_MODE_MISSING too is not supported). When ctx has
 *    event features (EVENT_FORK, _REMAP, _REMOVE, _UNMAP) a thread still
 *    reads those events.
 *  - CALLER: no thread of ours; poll uffdwp_fd() and call
 *    uffdwp_engine_dispatch() when it is readable.
 *  - AUTO: INTHREAD on the emulated backend or on a SIGBUS context, else
 *    THREAD; uffdwp_engine_mode() says which.
 * One engine per context.
 * Errors: -EINVAL eng or ctx NULL, opts->sz too small, unknown mode;
 * -E2BIG non-zero bytes in opts past the fields this library knows;
 * -EOPNOTSUPP INTHREAD on a kernel context without SIGBUS, or THREAD/CALLER
 * on a SIGBUS context (its faults are never queued); -EBUSY ctx already has
 * an engine; -ENOMEM; -EAGAIN, -EMFILE (no
 * thread or eventfd could be created).
 */
/* At most this many kernel contexts with UFFDWP_FEATURE_SIGBUS open at
 * once (the SIGBUS handler's registry). */
#define UFFDWP_ENGINE_MAX_INTHREAD 16
UFFDWP_API int uffdwp_engine_start(struct uffdwp_engine **eng, struct uffdwp *ctx,
				   const struct uffdwp_engine_opts *opts);

/*
 * Stop and free the engine. Every fault pending when it is called is handed
 * to fn and resolved (unless kept) before it returns; then no thread of the
 * engine runs, no signal handler uses it, and nothing of it is left
 * blocked. Faults that arrive after it returns wait for whoever resolves
 * them next (uffdwp_writeprotect(), uffdwp_unregister(), a new engine, or
 * closing the context) - on a SIGBUS context too: such a write waits in
 * the SIGBUS handler instead of raising SIGBUS to the program. Safe while
 * faults are arriving; not from fn itself. After uffdwp_close() of its
 * context it only frees. NULL is fine.
 */
UFFDWP_API void uffdwp_engine_stop(struct uffdwp_engine *eng);

/*
 * CALLER mode only: handle every pending event without blocking (other than
 * on a concurrent dispatch or flush). Not from fn. Returns
 * the number of events handled (0 if none was pending), or a negative
 * errno: -EINVAL eng NULL or not in CALLER mode; -EBADF its context was
 * closed; errors of
 * uffdwp_read_events() other than -EAGAIN.
 */
UFFDWP_API int uffdwp_engine_dispatch(struct uffdwp_engine *eng);

/*
 * Wait until every event the engine had read when the call began has been
 * handed to fn and resolved. A change that raises an event (madvise(2),
 * munmap(2), mremap(2), fork(2)) returns as soon as the engine has *read*
 * it, possibly before fn has run: call this after it to see fn's effects.
 * It waits as long as fn blocks: not from fn, and never while fn waits for
 * the calling thread (deadlock). INTHREAD: covers events read from the fd,
 * not faults being resolved in signal handlers. Returns 0, or -EINVAL
 * (eng NULL).
 */
UFFDWP_API int uffdwp_engine_flush(struct uffdwp_engine *eng);

/* The mode in force (never AUTO). */
UFFDWP_API enum uffdwp_engine_mode uffdwp_engine_mode(const struct uffdwp_engine *eng);

#define UFFDWP_ENGINE_LATENCY_BUCKETS 40
#define UFFDWP_ENGINE_BATCH_BUCKETS   8

/* What an engine has done since it started (counters only grow). */
struct uffdwp_engine_stats {
	size_t sz;           /* sizeof(struct uffdwp_engine_stats), set by the caller */
	uint64_t faults;     /* page faults handed to fn (or resolved, fn NULL) */
	uint64_t resolved;   /* of those, un-protected by the engine */
	uint64_t kept;       /* of those, left pending by fn (UFFDWP_KEEP); in
				INTHREAD mode a kept writer faults again at each
				un-protect, and each fault counts */
	uint64_t events;     /* fork, remap, remove and unmap events */
	uint64_t eagain;     /* un-protects retried because the address space changed */
	uint64_t errors;     /* faults whose un-protect failed other than with -ENOENT;
				their writers were woken to fault again */
	uint64_t batches;    /* reads that returned events (THREAD, CALLER) */
	/*
	 * Resolution latency, log2 ns: [i] counts faults resolved in
	 * [2^i, 2^(i+1)) ns (the last bucket: that or more), measured from the
	 * moment the engine read the fault (INTHREAD: entered the signal
	 * handler) to the return of the call that woke the writer.
	 */
	uint64_t latency_log2_ns[UFFDWP_ENGINE_LATENCY_BUCKETS];
	/* Events per read, log2: [i] counts batches of [2^i, 2^(i+1)) events. */
	uint64_t batch_log2[UFFDWP_ENGINE_BATCH_BUCKETS];
};

/*
 * Copy the engine's counters into *st (st->sz must be set; fields beyond
 * it are left alone). Counters of different fields are not one atomic
 * snapshot while faults are being resolved. Returns 0, or -EINVAL (NULL,
 * or st->sz smaller than the fields up to batches).
 */
UFFDWP_API int uffdwp_engine_stats(const struct uffdwp_engine *eng,
				   struct uffdwp_engine_stats *st);

/* ------------------------------------------------------------------------
 * Write tracker: which pages changed since the last reset (src/tracker.c)
 * ------------------------------------------------------------------------ */

/*
 * A tracker watches ranges of the caller's memory and answers which pages
 * were written since they were last reset (GetWriteWatch/ResetWriteWatch,
 * a garbage collector's dirty bits). It owns its own context (and, for the
 * SYNC and EMULATED methods, an engine thread): the tracked ranges must not
 * be registered with another context. Costs and caveats of each method:
 * uffdwp_tracker(3). All calls may be made from any thread; collects and
 * resets are serialised with each other.
 *
 * After fork(2) the child's copy is not tracked (its writes are never
 * reported, its memory is not protected) and every call on it but destroy
 * fails with -ECHILD; the parent's tracking is unaffected. (The child is
 * recognised by a pthread_atfork(3) handler: a child made by a raw
 * clone(2), which runs no such handler, must not use the tracker.)
 */
struct uffdwp_tracker;

/* A run of written pages: [addr, addr + len), len a multiple of the page. */
struct uffdwp_run {
	void *addr;
	size_t len;
};

enum uffdwp_track_method {
	UFFDWP_TRACK_AUTO = 0,  /* async where the kernel has it, else sync, else emulated */
	UFFDWP_TRACK_ASYNC,     /* WP_ASYNC + PAGEMAP_SCAN: no fault message, no thread */
	UFFDWP_TRACK_SYNC,      /* kernel WP faults resolved by the engine */
	UFFDWP_TRACK_EMULATED,  /* the emulated backend */
};

/*
 * Accept huge-page granularity: tracked ranges keep transparent huge pages
 * (without it the tracker applies MADV_NOHUGEPAGE to them), and SYNC and
 * EMULATED record and un-protect a whole huge-page-aligned block of
 * uffdwp_tracker_granule() bytes on its first write, so a run may include
 * pages of that block that were not written. Fewer faults, coarser answers.
 */
#define UFFDWP_TRACK_HUGE (1U << 0)

struct uffdwp_tracker_opts {
	size_t sz;                        /* sizeof(struct uffdwp_tracker_opts) */
	enum uffdwp_track_method method;  /* AUTO by default */
	unsigned flags;                   /* UFFDWP_TRACK_* flags */
};

/*
 * Create a tracker with no ranges. Errors: -EINVAL bad opts (sz, method,
 * unknown flags); -E2BIG non-zero bytes in opts past the fields this
 * library knows; -EOPNOTSUPP the method is not available here (ASYNC needs
 * Linux 6.7's WP_ASYNC, WP_UNPOPULATED and PAGEMAP_SCAN; SYNC a usable
 * kernel userfaultfd); the errors of uffdwp_open() and
 * uffdwp_engine_start(); -ENOMEM.
 */
UFFDWP_API int uffdwp_tracker_create(struct uffdwp_tracker **t,
				     const struct uffdwp_tracker_opts *opts);

/* Stop tracking everything (the memory is left writable) and free. NULL is fine. */
UFFDWP_API void uffdwp_tracker_destroy(struct uffdwp_tracker *t);

/* The method in force (never AUTO). */
UFFDWP_API enum uffdwp_track_method uffdwp_tracker_method(const struct uffdwp_tracker *t);

/* Name of a method ("auto", "async", "sync", "emulated"), or "?". */
UFFDWP_API const char *uffdwp_track_method_name(enum uffdwp_track_method method);

/*
 * The unit of tracking in bytes: the page, or the PMD huge-page size with
 * UFFDWP_TRACK_HUGE under SYNC and EMULATED.
 */
UFFDWP_API size_t uffdwp_tracker_granule(const struct uffdwp_tracker *t);

/*
 * Start tracking [addr, addr+len) of private anonymous (or, where the kernel
 * allows, shmem) memory: every page counts as clean from now, including
 * pages never touched. len and addr are page-aligned, and with
 * UFFDWP_TRACK_HUGE granule-aligned under SYNC and EMULATED.
 * Errors: -EINVAL bad alignment, len 0, or nothing mapped there; -EEXIST
 * the range overlaps one already tracked; -EBUSY registered with another
 * context; -EOPNOTSUPP a memory type the method cannot track; -ECHILD.
 */
UFFDWP_API int uffdwp_tracker_add(struct uffdwp_tracker *t, void *addr, size_t len);

/*
 * Stop tracking a range given to uffdwp_tracker_add() (the same addr and
 * len): its pages become writable and are forgotten. It is fine to call
 * after the memory was unmapped. Errors: -ENOENT no such range; -ECHILD.
 */
UFFDWP_API int uffdwp_tracker_remove(struct uffdwp_tracker *t, void *addr, size_t len);

/* With collect and bitmap: the pages reported become clean again, atomically. */
#define UFFDWP_COLLECT_RESET (1U << 0)

/*
 * Written runs in address order, from *cursor on (0 = from the start), at
 * most max of them into runs; *cursor is moved past them, so calling again
 * resumes. Returns the number of runs, 0 when the pass is done (no written
 * page left after *cursor); iterate without allocating:
 *
 *   uintptr_t cur = 0;
 *   while ((n = uffdwp_tracker_collect(t, &cur, runs, 64, UFFDWP_COLLECT_RESET)) > 0)
 *       save(runs, n);
 *
 * With UFFDWP_COLLECT_RESET each reported page is clean from the instant it
 * is reported: a write racing the collect is reported by this pass or by the
 * next one, never lost. Runs never cross the boundary of a tracked range;
 * one written stretch may be split across two calls.
 * Errors: -EINVAL NULL arguments, max 0 or unknown flags; -ENOENT part of a
 * tracked range is no longer mapped or was replaced (munmap, mremap, a new
 * mmap over it; SYNC may learn of a replacement a moment after the call
 * that made it returns, uffdwp_tracker(3)): uffdwp_tracker_remove() it;
 * -ECHILD; -ENOMEM.
 */
UFFDWP_API int uffdwp_tracker_collect(struct uffdwp_tracker *t, uintptr_t *cursor,
				      struct uffdwp_run *runs, size_t max, unsigned flags);

/*
 * The written pages of [addr, addr+len) (page-aligned) as a bitmap: bit i
 * (bit i % 64 of bitmap[i / 64]) is set when page i is written; pages not
 * tracked read as clean. bitmap has room for len / page bits. With
 * UFFDWP_COLLECT_RESET those pages become clean, as for collect. Returns
 * the number of written pages, or a negative errno as for collect.
 */
UFFDWP_API long uffdwp_tracker_bitmap(struct uffdwp_tracker *t, void *addr, size_t len,
				      uint64_t *bitmap, unsigned flags);

/*
 * Make every tracked page of [addr, addr+len) clean (addr NULL and len 0:
 * all of them), as a collect with reset would, without reporting.
 * Errors as for collect.
 */
UFFDWP_API int uffdwp_tracker_reset(struct uffdwp_tracker *t, void *addr, size_t len);

/* ------------------------------------------------------------------------
 * Snapshot files: the format, read and checked (src/format.c, src/snapfile.c)
 * ------------------------------------------------------------------------ */

/*
 * A snapshot file (format: uffdwp-snapshot(5)) holds the pages of some
 * regions of memory at one instant. A full snapshot stands alone; an
 * incremental one holds only what changed since its parent and names it.
 * A chain is a full snapshot followed by incrementals, each the parent of
 * the next. The functions below read files (they never write one: that is
 * the live snapshot's job) and describe the first problem they find in an
 * optional struct uffdwp_snapshot_error: its message is set for a problem
 * in a file's bytes (with the byte offset), and left empty for a failure
 * around them (open, memory, the restore target): then the errno says it.
 *
 * Errors common to them: -EINVAL bad arguments (NULL path, sz too small);
 * -ESPIPE (info, restore) the file is not a regular file (a FIFO is never
 * waited for: verify reads one without a writer as an empty stream);
 * -EBADMSG the file is corrupt (bad magic, checksum mismatch, a record
 * outside the regions, totals that do not match); -ENODATA it ends before
 * its trailer (truncated, or still being written); -ENOTSUP a format
 * version this library does not know; -ENOMEM; and the errno of open(2),
 * read(2) and friends (-ENOENT, -EACCES, -EISDIR, -EIO ...).
 */

/* One region of memory in a snapshot: [addr, addr + len), page-aligned. */
struct uffdwp_snapshot_region {
	uint64_t addr;
	uint64_t len;
};

/* What a snapshot file says about itself. */
struct uffdwp_snapshot_info {
	size_t sz;              /* sizeof(struct uffdwp_snapshot_info), set by the caller */
	uint32_t version;       /* format version */
	uint32_t page_size;     /* of the machine that wrote it */
	uint64_t snapshot_id;   /* non-zero */
	uint64_t parent_id;     /* 0: a full snapshot; else its parent's snapshot_id */
	uint64_t time_ns;       /* the snapshot instant, ns since the epoch (as recorded) */
	uint32_t region_count;
	uint64_t region_bytes;  /* the regions' total length: the size of a restored image */
	uint64_t record_count;  /* page and zero records */
	uint64_t page_count;    /* pages stored with their contents */
	uint64_t zero_count;    /* pages recorded as zero (in zero records) */
	uint64_t file_size;
};

/* Where and why a snapshot file was found wanting. */
struct uffdwp_snapshot_error {
	size_t sz;              /* sizeof(struct uffdwp_snapshot_error), set by the caller */
	size_t file;            /* which file of a chain, from 0; npaths: the restore target */
	uint64_t offset;        /* byte offset in that file of the header or record at fault */
	char message[200];      /* one sentence, without the file name; "" if none */
};

/*
 * Read a snapshot file's header and trailer (not its records): fills *info
 * and up to max_regions entries of regions (NULL if max_regions is 0; the
 * regions are sorted by address; info->region_count says how many there
 * are). The trailer's checksum is checked and the file size must match its
 * totals, so truncation is found; corrupt page contents are not: see
 * uffdwp_snapshot_file_verify(). err, if not NULL, describes a failure.
 * Returns 0 or a negative errno (above).
 */
UFFDWP_API int uffdwp_snapshot_file_info(const char *path, struct uffdwp_snapshot_info *info,
					 struct uffdwp_snapshot_region *regions,
					 size_t max_regions, struct uffdwp_snapshot_error *err);

/*
 * Check a whole snapshot file: every checksum, every address, every count,
 * no page recorded twice, nothing after the trailer. info (may be NULL) is
 * filled as by uffdwp_snapshot_file_info() when the file is sound; err (may
 * be NULL) describes the first problem and its byte offset.
 * Returns 0 when the file is sound, else a negative errno (above).
 */
UFFDWP_API int uffdwp_snapshot_file_verify(const char *path, struct uffdwp_snapshot_info *info,
					   struct uffdwp_snapshot_error *err);

/*
 * Restoring a chain: paths[0] must be a full snapshot, and each later file
 * an incremental whose parent_id is the snapshot_id of the file before it,
 * with the same page size and regions; all regular files. A restore reads
 * the chain twice, one file open at a time (any length of chain, bounded
 * memory): first every file is checked whole, as
 * uffdwp_snapshot_file_verify() checks it, with the links; only then is the
 * target written. So a corrupt, truncated or broken chain changes nothing.
 * Errors, besides the common ones: -EINVAL npaths is 0, or the files do not
 * form a chain (err says which link is broken); -ESTALE a file was replaced
 * or changed between the check and the replay (the target is then partly
 * restored).
 *
 * The image of a snapshot is its regions laid end to end in address order:
 * the byte at address A of region i is at offset (len of regions 0..i-1) +
 * (A - addr of region i); its size is info.region_bytes.
 */

/*
 * Restore the chain into the regular file open for writing as fd: it is
 * truncated to the image size, zero pages are left as holes (or punched
 * out when a later file zeroes them), and it is not synced. Returns 0 or a
 * negative errno (above; -EBADF fd is not open for writing (O_RDONLY,
 * O_PATH); -EINVAL fd is open with O_APPEND, or is one of the chain's files
 * (same inode, under any name: err->message says which), both refused
 * before anything is written; -ESPIPE fd is not a regular file; -ENOSPC,
 * -EFBIG ... from the writes).
 */
UFFDWP_API int uffdwp_snapshot_restore_fd(const char *const *paths, size_t npaths, int fd,
					  struct uffdwp_snapshot_error *err);

/*
 * Restore the chain into a fresh private anonymous mapping holding the
 * image: on success *mapping and *mapping_len describe it (yours to
 * munmap(2)); on failure nothing stays mapped. Zero pages (also those a
 * later file zeroes) are never populated. Returns 0 or a negative errno
 * (above; -ENOMEM when the image cannot be mapped).
 */
UFFDWP_API int uffdwp_snapshot_restore_mapping(const char *const *paths, size_t npaths,
					       void **mapping, size_t *mapping_len,
					       struct uffdwp_snapshot_error *err);

/*
 * Restore the chain into the memory at the addresses it was taken from
 * (a program restoring its own state): every region must be mapped
 * writable in this process (mapped: checked, -EFAULT; writable: a
 * read-only region crashes the process). Pages the chain says are zero
 * are made zero without populating memory: private anonymous memory is
 * dropped (MADV_DONTNEED), shared memory punched out (MADV_REMOVE), other
 * memory written where it is not zero already. Returns 0 or a negative
 * errno (above; -EINVAL the recorded page size is not this machine's;
 * -EFAULT a region is not mapped).
 */
UFFDWP_API int uffdwp_snapshot_restore_in_place(const char *const *paths, size_t npaths,
						struct uffdwp_snapshot_error *err);

/* ------------------------------------------------------------------------
 * Live snapshots (src/snapshot.c)
 * ------------------------------------------------------------------------ */

/*
 * A live snapshot saves the pages of some regions as they were at one
 * instant, while the program keeps writing them, without fork(). Begin
 * write-protects the regions and returns: that instant is the snapshot's
 * point in time. A background thread then saves every page and lets it go
 * (un-protects it); a write to a page not yet saved first copies the old
 * contents into a bounded side buffer and goes on at once
 * (copy-before-write), so a writer waits only when the side buffer is full
 * (back-pressure: it then waits for the sink, memory stays bounded).
 *
 * Consistency is per instant, not per transaction: a write that completes
 * before begin returns may be in the snapshot, one that starts after it
 * never is. A program whose data holds invariants only at quiescent points
 * (e.g. under its own lock) calls begin at such a point (under that lock).
 *
 * Writes made by the kernel on behalf of a system call (read(2) into a
 * region) while a page is still protected: with the in-thread engine mode
 * (the default where available) they fail with EFAULT, as do all such writes
 * under UFFDWP_FEATURE_SIGBUS and the emulated backend; with
 * UFFDWP_ENGINE_THREAD they wait like any writer.
 *
 * Discarding, unmapping or moving part of a region (MADV_DONTNEED, munmap,
 * mremap) while its snapshot runs makes the snapshot fail with -ESTALE
 * (-EFAULT or -ENOENT when the saver finds the memory gone first), never
 * hang and never report success: the kernel lets the discarding thread go
 * before the old contents can be saved. The emulated backend sees no such
 * call and checks each page as it copies it (uffdwp_snapshot(3) says what
 * that check cannot see). A child forked during a snapshot gets its
 * memory writable and is not part of the snapshot; if part of the regions
 * is MAP_SHARED, the child could write pages not yet saved, so a fork(2)
 * while such a snapshot runs fails it with -ESTALE.
 *
 * Options structs: sz is the caller's sizeof; the fields a smaller sz
 * leaves out get their defaults, and bytes past what this library knows
 * (a newer caller's fields) must be zero, or the call fails with -E2BIG.
 */

struct uffdwp_snapshot;

/*
 * The callback sink: called from the snapshot's thread with len bytes
 * (a multiple of the page) holding the pages from addr as they were at the
 * snapshot instant; every page of the snapshot is passed exactly once, in
 * no particular order. data is valid during the call only. Return 0, or a
 * negative errno to stop the snapshot with that error. It must not write
 * the snapshot's regions (its allocations must not come from a heap they
 * cover): the snapshot's thread would wait on itself.
 */
typedef int (*uffdwp_snapshot_sink_fn)(void *arg, uint64_t addr, const void *data,
				       size_t len);

/*
 * How the pages of an fd sink's file are stored (uffdwp-snapshot(5)):
 * batches of up to 128 consecutive pages compressed in the snapshot's own
 * thread, never in a writer's fault path; a batch a codec does not shrink
 * is stored raw.
 */
enum uffdwp_codec {
	UFFDWP_CODEC_DEFAULT = 0,  /* UFFDWP_CODEC_NONE */
	UFFDWP_CODEC_NONE,         /* raw pages, written without a copy */
	UFFDWP_CODEC_LZ4,          /* LZ4: fast, about 2x on text-like data */
	UFFDWP_CODEC_ZSTD,         /* zstd at codec_level (0: zstd's default, 3) */
};

/* The side buffer's size when uffdwp_snapshot_opts.side_buffer is 0. */
#define UFFDWP_SNAPSHOT_SIDE_BUFFER_DEFAULT ((size_t)64 << 20)

struct uffdwp_snapshot_opts {
	size_t sz;                  /* sizeof(struct uffdwp_snapshot_opts) */
	/*
	 * The sink: fn if not NULL, else the file descriptor fd (> 0: 0
	 * means "unset", so a zeroed struct names no sink; to write to
	 * descriptor 0, pass a dup(2) of it), which receives a snapshot
	 * file (uffdwp-snapshot(5)) written sequentially: a regular file, a
	 * pipe or a socket (blocking or not). The fd stays the caller's; it
	 * is neither closed nor synced, nor are its flags changed.
	 */
	int fd;
	uffdwp_snapshot_sink_fn fn;
	void *arg;
	/* Bytes of side buffer for copy-before-write, rounded down to pages
	 * (at least one); 0: UFFDWP_SNAPSHOT_SIDE_BUFFER_DEFAULT. Allocated
	 * lazily: only what writers use is ever touched. Begin checks that
	 * the process's memory cgroup has room for it (or for the regions,
	 * if smaller): -ENOMEM rather than the OOM killer mid-snapshot. */
	size_t side_buffer;
	/*
	 * Without a tracker the snapshot opens its own context on the regions
	 * (which must not be registered with another one: -EBUSY) with this
	 * backend (AUTO: kernel if usable with UFFDWP_FEATURE_WP_UNPOPULATED,
	 * else emulated) and runs an engine in this mode (AUTO: in-thread
	 * where possible; CALLER is not allowed).
	 */
	enum uffdwp_backend backend;
	enum uffdwp_engine_mode engine_mode;
	/*
	 * With a write tracker tracking exactly the snapshot's regions, the
	 * snapshot resets the tracker at its instant, so that the next
	 * snapshot can be incremental. SYNC and EMULATED trackers lend the
	 * snapshot their context (copy-before-write on their faults). An
	 * ASYNC tracker's faults never reach user space: a full snapshot
	 * then protects the regions with its own emulated context (mprotect;
	 * backend and engine_mode are ignored), and an incremental one
	 * copies the written pages during begin (its pause and extra memory
	 * grow with the written set; nothing is protected after begin):
	 *   parent_id 0: a full snapshot;
	 *   parent_id = uffdwp_snapshot_id() of the previous snapshot taken
	 *   with this tracker, which must have succeeded and been ended,
	 *   with no reset of the tracker since (uffdwp_tracker_reset(), a
	 *   collect or bitmap with reset, a range added or removed): an
	 *   incremental snapshot holding only the pages written since; its
	 *   begin pause grows with the written pages, not with the regions.
	 *   Any other parent_id (older, made up) is refused with -EINVAL.
	 * A snapshot that failed or was cancelled leaves the tracker reset
	 * without a saved parent: the next one must be full (a begin refused
	 * by its argument checks, -EINVAL or -EBUSY, leaves it untouched).
	 */
	struct uffdwp_tracker *tracker;
	uint64_t parent_id;
	/*
	 * The fd sink's codec (ignored with fn): 0 is UFFDWP_CODEC_DEFAULT,
	 * raw pages. codec_level: for UFFDWP_CODEC_ZSTD 0 (the default) or
	 * 1 .. 19 and more (ZSTD_maxCLevel()); else 0. Anything else: -EINVAL.
	 */
	enum uffdwp_codec codec;
	int codec_level;
	/*
	 * A context of yours to snapshot through instead of one of the
	 * snapshot's own (no tracker; backend and engine_mode are then
	 * ignored): typically one on another process (uffdwp_remote_open()),
	 * whose memory the regions then name and is read with
	 * process_vm_readv(2). The snapshot registers the regions with it,
	 * runs a handler-thread engine on it and unregisters them at end; the
	 * context stays yours. A remote target that exits makes the snapshot
	 * fail with -ESRCH; pages it unmapped meanwhile are skipped, not
	 * failed (events says which ranges).
	 */
	struct uffdwp *context;
	/* With context: called from the engine thread for each event other
	 * than a page fault that the context reports (REMOVE, UNMAP ... when
	 * opened with their UFFDWP_FEATURE_EVENT_* bits); NULL: ignored. */
	uffdwp_fault_fn events;
};

/*
 * Begin a snapshot of nregions regions ([addr, addr + len), page-aligned,
 * non-overlapping, in any order): returns once every page to save is
 * write-protected (the snapshot instant), with *snap set and the saving
 * under way in a thread of the snapshot's own. With an in-thread engine (the
 * default), a thread that writes the regions while begin protects waits
 * for the instant; the calling thread (and a signal handler on it) never
 * waits.
 * Errors: -EINVAL bad arguments (no sink: fn NULL and fd <= 0; unaligned
 * or overlapping regions, nregions 0, sz too small, engine mode CALLER,
 * parent_id without tracker or not the tracker's last saved snapshot, an
 * unknown codec or level, a region in hugetlbfs memory (snapshots save
 * base pages; not supported yet), a
 * tracker whose ranges are not exactly the regions: checked before
 * anything changes, the tracker keeps its answer); -E2BIG non-zero bytes
 * in opts past the fields this library knows;
 * -EBUSY a region overlaps one of a snapshot of this process not yet
 * ended (whatever its backend), or is registered with another context,
 * or the tracker serves a snapshot not yet ended; -EOPNOTSUPP the backend
 * or tracker method cannot copy-before-write; -ENOMEM (also: the memory
 * cgroup has less room than the side buffer); -EAGAIN (no
 * thread); -EFAULT or -ENOENT (tracker) a region was unmapped or
 * discarded while begin collected; and what uffdwp_open(),
 * uffdwp_register() and uffdwp_writeprotect() return. On failure nothing
 * is left protected.
 */
UFFDWP_API int uffdwp_snapshot_begin(struct uffdwp_snapshot **snap,
				     const struct uffdwp_snapshot_region *regions,
				     size_t nregions, const struct uffdwp_snapshot_opts *opts);

/* The snapshot's id (non-zero): the file's snapshot_id, and the parent_id
 * of the next incremental snapshot. 0 for NULL. */
UFFDWP_API uint64_t uffdwp_snapshot_id(const struct uffdwp_snapshot *snap);

/* How a snapshot works. */
struct uffdwp_snapshot_method {
	size_t sz;                              /* sizeof(struct uffdwp_snapshot_method) */
	enum uffdwp_backend backend;            /* KERNEL or EMULATED */
	enum uffdwp_engine_mode engine_mode;    /* without tracker: its own engine's
						   mode (never AUTO); with one: AUTO */
	enum uffdwp_track_method track_method;  /* with tracker: the tracker's
						   method; without: AUTO */
	int incremental;                        /* 1: parent_id was given */
};

/* Fill *m (m->sz set by the caller; fields past it are left alone).
 * Returns 0, or -EINVAL (NULL, or sz smaller than up to track_method). */
UFFDWP_API int uffdwp_snapshot_method(const struct uffdwp_snapshot *snap,
				      struct uffdwp_snapshot_method *m);

/*
 * A file descriptor that poll(2) reports readable (POLLIN) once the
 * snapshot has finished (saved, failed or cancelled). Do not read or close
 * it; it is valid until uffdwp_snapshot_end(). -EINVAL for NULL.
 */
UFFDWP_API int uffdwp_snapshot_fd(const struct uffdwp_snapshot *snap);

/*
 * Wait up to timeout_ms (-1: without limit) for the snapshot to finish.
 * Returns 0 when it has been saved completely (the sink has every byte),
 * -ETIMEDOUT when it is still running, -EINVAL for NULL, or the error that
 * stopped it (the first one: -ECANCELED after uffdwp_snapshot_cancel(),
 * even if the sink failed after it; the sink's errno, e.g. -EPIPE,
 * -ENOSPC; -ESTALE part of a region was discarded, unmapped or moved, or
 * MAP_SHARED memory of it was shared with a forked child; -EFAULT or
 * -ENOENT a region was unmapped), or -ECHILD
 * in a child forked during the snapshot: the snapshot belongs to the
 * parent, and the child's copy is inert (cancel does nothing there, end
 * returns -ECHILD and frees nothing; the child's memory is not protected).
 */
UFFDWP_API int uffdwp_snapshot_wait(struct uffdwp_snapshot *snap, int timeout_ms);

struct uffdwp_snapshot_progress {
	size_t sz;                /* sizeof(struct uffdwp_snapshot_progress) */
	uint64_t pages_total;     /* pages the snapshot saves */
	uint64_t pages_done;      /* of them, handed to the sink */
	uint64_t pages_copied;    /* saved through the side buffer (copy-before-write) */
	uint64_t writer_waits;    /* times a writer waited: side buffer full, or its
				     page was being saved */
	uint64_t side_peak;       /* most bytes of side buffer memory at once (slots
				     in use, or populated just ahead of the writers) */
	uint64_t bytes_out;       /* bytes written to the fd sink */
	uint64_t begin_ns;        /* how long uffdwp_snapshot_begin() took, from its
				     call to its return: the caller's pause */
	int finished;             /* 1 once uffdwp_snapshot_wait() would not block */
};

/* Fill *p (p->sz set by the caller); any thread, any time until end.
 * Returns 0 or -EINVAL (sz too small). */
UFFDWP_API int uffdwp_snapshot_progress(const struct uffdwp_snapshot *snap,
					struct uffdwp_snapshot_progress *p);

/* Stop a running snapshot: pages not yet saved are let go unsaved and
 * waiting writers released; the snapshot finishes with -ECANCELED (unless
 * it had already finished), even while its saver waits for room in a
 * stalled pipe or socket (not inside a callback sink, which it waits
 * for). The fd sink is left incomplete (no trailer). */
UFFDWP_API void uffdwp_snapshot_cancel(struct uffdwp_snapshot *snap);

/*
 * Wait for the snapshot to finish, let go of its regions (a snapshot
 * without tracker unregisters them and stops its engine here; a tracker's
 * interposer is removed) and free it. Returns what
 * uffdwp_snapshot_wait(snap, -1) would. NULL is fine (returns 0).
 */
UFFDWP_API int uffdwp_snapshot_end(struct uffdwp_snapshot *snap);

/* ------------------------------------------------------------------------
 * Lazy restore of snapshot files (src/snapfile.c)
 * ------------------------------------------------------------------------ */

/*
 * Restore the chain lazily into a fresh private anonymous mapping of its
 * image (as uffdwp_snapshot_restore_mapping() lays it out) and return at
 * once: the mapping is registered for MISSING faults with the kernel's
 * userfaultfd, and a thread of the restore fills a page from the files on
 * its first touch (the touching thread waits for that page and the 64
 * around it, which share its decoding) while it fills the rest in address
 * order; zero pages are left unpopulated. The files keep one descriptor each
 * until uffdwp_lazy_restore_end(); a file's index (uffdwp-snapshot(5))
 * finds its pages without reading it (a file without one, e.g. version 1,
 * is scanned, and so checked whole, by this call). Headers, trailers,
 * indexes and the links are checked before this returns; a record's
 * checksum when it is read: a damaged record found later fails the
 * restore (uffdwp_lazy_restore_wait() says why), and its page and every
 * page not yet filled then read as zero, so no thread stays blocked.
 * Once every page is there the mapping is ordinary memory. Do not
 * discard (MADV_DONTNEED) or unmap it before the restore has finished; a
 * child forked meanwhile sees the pages not filled yet as zero.
 * On success *mapping, *mapping_len (yours to munmap(2) after
 * uffdwp_lazy_restore_end()) and *lr are set. Returns 0 or a negative
 * errno: as uffdwp_snapshot_restore_mapping(), and -EOPNOTSUPP where the
 * kernel's userfaultfd cannot be opened (the emulated backend has no
 * MISSING faults); -EINVAL the files' page size is not this machine's;
 * -EMFILE a chain longer than the descriptors this process may open.
 */
struct uffdwp_lazy_restore;

UFFDWP_API int uffdwp_snapshot_restore_lazy(const char *const *paths, size_t npaths,
					    void **mapping, size_t *mapping_len,
					    struct uffdwp_lazy_restore **lr,
					    struct uffdwp_snapshot_error *err);

/*
 * Wait up to timeout_ms (-1: without limit) for every page to be filled.
 * Returns 0 when they are, -ETIMEDOUT when still loading, or the error
 * that stopped the restore (-EBADMSG a damaged record, the errno of
 * pread(2), -ECANCELED after uffdwp_lazy_restore_end() with cancel).
 */
UFFDWP_API int uffdwp_lazy_restore_wait(struct uffdwp_lazy_restore *lr, int timeout_ms);

/* Progress as for a live snapshot (p->sz set by the caller): pages_total,
 * pages_done (filled), pages_copied (of them, filled on a fault), begin_ns
 * (how long uffdwp_snapshot_restore_lazy() took), finished. Returns 0 or
 * -EINVAL (sz too small). */
UFFDWP_API int uffdwp_lazy_restore_progress(const struct uffdwp_lazy_restore *lr,
					    struct uffdwp_snapshot_progress *p);

/*
 * Wait for the restore to finish (cancel non-zero: stop filling at once; pages not
 * filled then read as zero), close the files and free lr; the mapping
 * stays. Returns what uffdwp_lazy_restore_wait(lr, -1) would. NULL is
 * fine (returns 0).
 */
UFFDWP_API int uffdwp_lazy_restore_end(struct uffdwp_lazy_restore *lr, int cancel);

#ifdef __cplusplus
}
#endif

#endif /* UFFDWP_H */
