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
 * Errors: -EINVAL bad opts (sz, backend, unknown feature bits);
 * -EOPNOTSUPP a requested feature is missing from the chosen backend;
 * -ENOSYS the kernel has no userfaultfd (KERNEL backend);
 * -EPERM / -EACCES neither /dev/userfaultfd nor the syscall may be used
 * (uffdwp_probe() says which obstacle); -EMFILE, -ENOMEM.
 * AUTO falls back to the emulated backend on any kernel-side failure except
 * -EINVAL, -EMFILE and -ENOMEM.
 */
UFFDWP_API int uffdwp_open(struct uffdwp **ctx, const struct uffdwp_opts *opts);

/*
 * Close a context: every range still registered is un-protected and
 * unregistered, and every thread blocked on one of its faults is woken.
 * NULL is fine.
 */
UFFDWP_API void uffdwp_close(struct uffdwp *ctx);

/*
 * The context's file descriptor, always valid while the context is open:
 * poll(2) reports POLLIN while events are pending. It is non-blocking and
 * close-on-exec; do not read or close it yourself.
 */
UFFDWP_API int uffdwp_fd(const struct uffdwp *ctx);

/* The features in force (UFFDWP_FEATURE_*). */
UFFDWP_API uint64_t uffdwp_features(const struct uffdwp *ctx);

/* The backend in use: UFFDWP_BACKEND_KERNEL or UFFDWP_BACKEND_EMULATED. */
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
 * another context; -EOPNOTSUPP the memory type or mode is not supported
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
 * MODE_DONTWAKE). Errors: -EINVAL as for uffdwp_writeprotect(); -ENOENT
 * (emulated backend) the range is not registered.
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
 * Called for each page fault and each other event (fork, remap, remove,
 * unmap; the return value is then ignored). In UFFDWP_ENGINE_INTHREAD mode
 * it runs inside a signal handler in the faulting thread and must be
 * async-signal-safe (and may not return UFFDWP_KEEP).
 */
typedef int (*uffdwp_fault_fn)(void *arg, const struct uffdwp_event *ev);

struct uffdwp_engine_opts {
	size_t sz;                     /* sizeof(struct uffdwp_engine_opts) */
	enum uffdwp_engine_mode mode;  /* AUTO by default */
	uffdwp_fault_fn fn;            /* NULL: resolve every fault at once */
	void *arg;
};

/*
 * Start an engine over ctx. THREAD starts a handler thread; INTHREAD makes
 * faulting threads resolve their own faults (kernel: needs a context opened
 * with UFFDWP_FEATURE_SIGBUS); CALLER leaves polling uffdwp_fd() to the
 * caller, who calls uffdwp_engine_dispatch(). One engine per context.
 * Errors: -EINVAL bad opts; -EOPNOTSUPP mode impossible on this context;
 * -EBUSY the context already has an engine; -ENOMEM; -EAGAIN (thread).
 */
UFFDWP_API int uffdwp_engine_start(struct uffdwp_engine **eng, struct uffdwp *ctx,
				   const struct uffdwp_engine_opts *opts);

/*
 * Stop and free: returns once no fault is left unresolved and no thread of
 * the engine runs. NULL is fine.
 */
UFFDWP_API void uffdwp_engine_stop(struct uffdwp_engine *eng);

/*
 * CALLER mode: handle every pending event without blocking. Returns the
 * number handled (0 if none), or a negative errno.
 */
UFFDWP_API int uffdwp_engine_dispatch(struct uffdwp_engine *eng);

/* The mode in force (never AUTO). */
UFFDWP_API enum uffdwp_engine_mode uffdwp_engine_mode(const struct uffdwp_engine *eng);

/* (statistics and tuning: defined with src/engine.c) */

/* ------------------------------------------------------------------------
 * Write tracker: which pages changed since the last reset (src/tracker.c)
 * ------------------------------------------------------------------------ */

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

struct uffdwp_tracker_opts {
	size_t sz;                        /* sizeof(struct uffdwp_tracker_opts) */
	enum uffdwp_track_method method;  /* AUTO by default */
	unsigned flags;                   /* UFFDWP_TRACK_* flags */
};

UFFDWP_API int uffdwp_tracker_create(struct uffdwp_tracker **t,
				     const struct uffdwp_tracker_opts *opts);
UFFDWP_API void uffdwp_tracker_destroy(struct uffdwp_tracker *t);

/* Start tracking [addr, addr+len): every page counts as clean from now. */
UFFDWP_API int uffdwp_tracker_add(struct uffdwp_tracker *t, void *addr, size_t len);

/*
 * Written runs, from *cursor (0 = the start; updated to where to resume),
 * at most max of them; with UFFDWP_COLLECT_RESET the pages reported become
 * clean again atomically. Returns the number of runs, 0 when done.
 */
UFFDWP_API int uffdwp_tracker_collect(struct uffdwp_tracker *t, uintptr_t *cursor,
				      struct uffdwp_run *runs, size_t max, unsigned flags);

/* (the rest of the tracker API: defined with src/tracker.c) */

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
 * optional struct uffdwp_snapshot_error.
 *
 * Errors common to them: -EINVAL bad arguments (NULL path, sz too small);
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
	size_t file;            /* which file of a chain, from 0 */
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
 * with the same page size and regions. The chain's headers and trailers
 * are checked before anything is written; a corrupt record found while
 * replaying stops the restore with an error, leaving the target partly
 * restored (verify first when that matters). Errors, besides the common
 * ones: -EINVAL npaths is 0, or the files do not form a chain (err says
 * which link is broken).
 *
 * The image of a snapshot is its regions laid end to end in address order:
 * the byte at address A of region i is at offset (len of regions 0..i-1) +
 * (A - addr of region i); its size is info.region_bytes.
 */

/*
 * Restore the chain into the regular file open for writing as fd: it is
 * truncated to the image size, zero pages are left as holes (or punched
 * out when a later file zeroes them), and it is not synced. Returns 0 or a
 * negative errno (above; -EBADF, -ENOSPC, -EFBIG ... from the writes).
 */
UFFDWP_API int uffdwp_snapshot_restore_fd(const char *const *paths, size_t npaths, int fd,
					  struct uffdwp_snapshot_error *err);

/*
 * Restore the chain into a fresh private anonymous mapping holding the
 * image: on success *mapping and *mapping_len describe it (yours to
 * munmap(2)); on failure nothing stays mapped. Returns 0 or a negative
 * errno (above; -ENOMEM when the image cannot be mapped).
 */
UFFDWP_API int uffdwp_snapshot_restore_mapping(const char *const *paths, size_t npaths,
					       void **mapping, size_t *mapping_len,
					       struct uffdwp_snapshot_error *err);

/*
 * Restore the chain into the memory at the addresses it was taken from
 * (a program restoring its own state): every region must be mapped
 * writable in this process, with the recorded page size, or the process
 * crashes. The regions are zeroed first (the full snapshot at the head of
 * the chain says that a page no record names is zero). Returns 0 or a
 * negative errno (above; -EINVAL the recorded page size is not this
 * machine's).
 */
UFFDWP_API int uffdwp_snapshot_restore_in_place(const char *const *paths, size_t npaths,
						struct uffdwp_snapshot_error *err);

/* ------------------------------------------------------------------------
 * Live snapshots (src/snapshot.c)
 * ------------------------------------------------------------------------ */

#ifdef __cplusplus
}
#endif

#endif /* UFFDWP_H */
