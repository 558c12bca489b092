/* SPDX-License-Identifier: MIT */
/*
 * uffdwp_open/close and the core calls. Arguments are checked once, here;
 * the backends receive only well-formed requests.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include "backend.h"
#include "opts.h"

/* The end of user space: ranges reaching past it are rejected with -EINVAL,
 * as the kernel does. x86_64 is taken with 4-level paging (the kernel's
 * TASK_SIZE_MAX); elsewhere the kernel is left to judge. */
#if defined(__x86_64__)
#define USER_SPACE_END UINT64_C(0x7ffffffff000)
#else
#define USER_SPACE_END (UINT64_C(1) << 56)
#endif

size_t uffdwp__page_size(void)
{
	static _Atomic size_t page;  /* 0 until first asked; any thread may ask */
	size_t size = atomic_load_explicit(&page, memory_order_relaxed);

	if (!size) {
		size = (size_t)sysconf(_SC_PAGESIZE);
		atomic_store_explicit(&page, size, memory_order_relaxed);
	}
	return size;
}

const char *uffdwp_backend_name(enum uffdwp_backend backend)
{
	switch (backend) {
	case UFFDWP_BACKEND_AUTO: return "auto";
	case UFFDWP_BACKEND_KERNEL: return "kernel";
	case UFFDWP_BACKEND_EMULATED: return "emulated";
	}
	return "?";
}

/* ---------------------------------------------------------------------------
 * What a kernel SIGBUS context registered: the SIGBUS claimant asks it to
 * find a fault's context without a syscall, and to tell a protected page
 * of ours with no engine running from another userfaultfd's (the kernel
 * has no side-effect-free way to ask).
 * ------------------------------------------------------------------------- */

static pthread_mutex_t ranges_lock = PTHREAD_MUTEX_INITIALIZER;  /* all changes */

static bool tracks_ranges(const struct uffdwp *ctx)
{
	return ctx->backend == UFFDWP_BACKEND_KERNEL && (ctx->features & UFFDWP_FEATURE_SIGBUS);
}

bool uffdwp__context_covers(struct uffdwp *ctx, uintptr_t addr)
{
	const struct uffdwp__range_set *set;
	size_t lo = 0, hi;
	bool found;

	atomic_fetch_add(&ctx->sigbus_range_readers, 1);
	set = atomic_load(&ctx->sigbus_ranges);
	hi = set ? set->n : 0;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (set->r[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	found = set && lo < set->n && set->r[lo].start <= addr;
	atomic_fetch_sub(&ctx->sigbus_range_readers, 1);
	return found;
}

/* Append [start, end) to a set being built in address order, merged with
 * the last range when they touch. */
static void append_range(struct uffdwp__range_set *set, uintptr_t start, uintptr_t end)
{
	if (set->n && set->r[set->n - 1].end >= start) {
		if (end > set->r[set->n - 1].end)
			set->r[set->n - 1].end = end;
		return;
	}
	set->r[set->n].start = start;
	set->r[set->n].end = end;
	set->n++;
}

/* Publish the set with [a, b) added (add) or taken out. 0 or -ENOMEM. */
static int change_ranges(struct uffdwp *ctx, uintptr_t a, uintptr_t b, bool add)
{
	struct uffdwp__range_set *old, *set;
	bool placed = false;
	size_t n;

	pthread_mutex_lock(&ranges_lock);
	old = atomic_load(&ctx->sigbus_ranges);
	n = old ? old->n : 0;
	/* Taking out splits at most one range in two. */
	set = uffdwp__private_alloc(sizeof(*set) + (n + 1) * sizeof(set->r[0]));
	if (!set) {
		pthread_mutex_unlock(&ranges_lock);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		uintptr_t s = old->r[i].start, e = old->r[i].end;

		if (add) {
			if (!placed && a <= s) {
				append_range(set, a, b);
				placed = true;
			}
			append_range(set, s, e);
		} else if (e <= a || s >= b) {
			append_range(set, s, e);
		} else {
			if (s < a)
				append_range(set, s, a);
			if (e > b)
				append_range(set, b, e);
		}
	}
	if (add && !placed)
		append_range(set, a, b);
	atomic_store(&ctx->sigbus_ranges, set);
	while (atomic_load(&ctx->sigbus_range_readers))
		sched_yield();  /* lookups are a few loads long */
	uffdwp__private_free(old);
	pthread_mutex_unlock(&ranges_lock);
	return 0;
}

static void ranges_prepare_fork(void)
{
	pthread_mutex_lock(&ranges_lock);
}

static void ranges_after_fork(void)
{
	pthread_mutex_unlock(&ranges_lock);
}

static void init_once_per_process(void)
{
	static const struct uffdwp__fork_hooks hooks = {
		ranges_prepare_fork, ranges_after_fork, ranges_after_fork,
	};

	uffdwp__at_fork(UFFDWP__FORK_CONTEXT, &hooks);
}

/* ---------------------------------------------------------------------------
 * Open and close
 * ------------------------------------------------------------------------- */

/* A context on a new descriptor of the backend's, or (kernel, adopt >= 0)
 * on a userfaultfd of process pid that no handshake has touched yet
 * (uffdwp__open_fd). */
static int open_context(struct uffdwp **out, const struct uffdwp__backend_ops *ops,
			enum uffdwp_backend backend, uint64_t features, int adopt, pid_t pid)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct uffdwp *ctx;
	int ret;

	pthread_once(&once, init_once_per_process);
	ctx = uffdwp__private_alloc(sizeof(*ctx));
	if (!ctx) {
		if (adopt >= 0)
			close(adopt);
		return -ENOMEM;
	}
	ctx->ops = ops;
	ctx->backend = backend;
	ctx->fd = -1;
	ctx->registry_slot = -1;
	ctx->pid = pid;
	ret = adopt >= 0 ? uffdwp__kernel_adopt(ctx, adopt, features) : ops->open(ctx, features);
	if (ret == 0 && tracks_ranges(ctx)) {
		ret = uffdwp__sigbus_join(ctx);
		if (ret < 0)
			ops->close(ctx);
	}
	if (ret < 0) {
		uffdwp__private_free(ctx);
		return ret;
	}
	*out = ctx;
	return 0;
}

static int open_backend(struct uffdwp **out, const struct uffdwp__backend_ops *ops,
			enum uffdwp_backend backend, uint64_t features)
{
	return open_context(out, ops, backend, features, -1, 0);
}

int uffdwp__open_fd(struct uffdwp **out, int fd, pid_t pid, uint64_t features)
{
	return open_context(out, &uffdwp__kernel_ops, UFFDWP_BACKEND_KERNEL,
			    features ? features | UFFDWP_FEATURE_PAGEFAULT_FLAG_WP : 0, fd, pid);
}

int uffdwp__take_opts(struct uffdwp_opts *o, const struct uffdwp_opts *opts)
{
	int ret;

	*o = (struct uffdwp_opts){ .sz = sizeof(*o) };
	if (opts) {
		ret = uffdwp__opts_check(opts, opts->sz,
					 UFFDWP__OPTS_END(struct uffdwp_opts, features), sizeof(*o));
		if (ret)
			return ret;
		UFFDWP__OPTS_COPY(*o, opts);
		o->sz = sizeof(*o);
	}
	return o->features & ~UFFDWP__KNOWN_FEATURES ? -EINVAL : 0;
}

int uffdwp_open(struct uffdwp **ctx, const struct uffdwp_opts *opts)
{
	struct uffdwp_opts o;
	int ret;

	if (!ctx)
		return -EINVAL;
	ret = uffdwp__take_opts(&o, opts);
	if (ret)
		return ret;
	if (o.features)
		o.features |= UFFDWP_FEATURE_PAGEFAULT_FLAG_WP;

	switch (o.backend) {
	case UFFDWP_BACKEND_KERNEL:
		return open_backend(ctx, &uffdwp__kernel_ops, o.backend, o.features);
	case UFFDWP_BACKEND_EMULATED:
		return open_backend(ctx, &uffdwp__emulated_ops, o.backend, o.features);
	case UFFDWP_BACKEND_AUTO:
		ret = open_backend(ctx, &uffdwp__kernel_ops, UFFDWP_BACKEND_KERNEL, o.features);
		if (ret == 0 || ret == -EINVAL || ret == -EMFILE || ret == -ENFILE || ret == -ENOMEM)
			return ret;
		return open_backend(ctx, &uffdwp__emulated_ops, UFFDWP_BACKEND_EMULATED,
				    o.features);
	}
	return -EINVAL;
}

/*
 * An engine still running is stopped first (it stays allocated for
 * uffdwp_engine_stop()). Then the backend un-protects and wakes; the
 * generation moves, so that writers waiting in the fault-signal layer retry;
 * only then does the context leave the SIGBUS registry, so that a fault
 * arriving meanwhile still finds it (and waits, rather than being taken
 * for a foreign one).
 */
void uffdwp_close(struct uffdwp *ctx)
{
	if (!ctx)
		return;
	if (ctx->engine_detach)
		ctx->engine_detach(ctx);
	uffdwp__unprotect_begin();
	ctx->ops->close(ctx);
	uffdwp__unprotect_end();
	uffdwp__sigbus_leave(ctx);
	uffdwp__private_free(atomic_load(&ctx->sigbus_ranges));
	uffdwp__private_free(ctx);
}

int uffdwp_fd(const struct uffdwp *ctx)
{
	return ctx ? ctx->fd : -EINVAL;
}

uint64_t uffdwp_features(const struct uffdwp *ctx)
{
	return ctx ? ctx->features : 0;
}

enum uffdwp_backend uffdwp_backend(const struct uffdwp *ctx)
{
	return ctx ? ctx->backend : UFFDWP_BACKEND_AUTO;
}

/* The seed's range rules: page-aligned start and length, not empty, no
 * wrap-around, inside user space. */
static int check_range(const struct uffdwp *ctx, const void *addr, size_t len)
{
	uintptr_t start = (uintptr_t)addr, mask = uffdwp__page_size() - 1;

	if (!ctx || (start & mask) || (len & mask) || len == 0)
		return -EINVAL;
	if (start + len < start || start + len > USER_SPACE_END)
		return -EINVAL;
	return 0;
}

int uffdwp_register_ioctls(struct uffdwp *ctx, void *addr, size_t len, unsigned mode,
			   uint64_t *ioctls)
{
	int ret = check_range(ctx, addr, len);

	if (ret)
		return ret;
	if (!(mode & UFFDWP_REGISTER_MODE_WP) ||
	    (mode & ~(UFFDWP_REGISTER_MODE_WP | UFFDWP_REGISTER_MODE_MISSING)))
		return -EINVAL;
	/* The library's own state: protecting it would stop its fault path.
	 * (Another process's addresses are not ours.) */
	if (!ctx->pid && uffdwp__private_overlaps((uintptr_t)addr, len))
		return -EBUSY;
	if (tracks_ranges(ctx)) {
		ret = change_ranges(ctx, (uintptr_t)addr, (uintptr_t)addr + len, true);
		if (ret < 0)
			return ret;
	}
	ret = ctx->ops->register_range(ctx, (uintptr_t)addr, len, mode, ioctls);
	/* On failure the range stays noted: more than is registered only
	 * makes a fault on it wait rather than be forwarded, and no fault
	 * comes from memory no context registered. */
	return ret;
}

int uffdwp_register(struct uffdwp *ctx, void *addr, size_t len, unsigned mode)
{
	return uffdwp_register_ioctls(ctx, addr, len, mode, NULL);
}

int uffdwp_unregister(struct uffdwp *ctx, void *addr, size_t len)
{
	int ret = check_range(ctx, addr, len);

	if (ret)
		return ret;
	uffdwp__unprotect_begin();
	ret = ctx->ops->unregister_range(ctx, (uintptr_t)addr, len);
	uffdwp__unprotect_end();
	/* Out of memory here leaves the range noted: harmless, as above. */
	if (ret == 0 && tracks_ranges(ctx))
		change_ranges(ctx, (uintptr_t)addr, (uintptr_t)addr + len, false);
	return ret;
}

int uffdwp_writeprotect(struct uffdwp *ctx, void *addr, size_t len, unsigned mode)
{
	int ret = check_range(ctx, addr, len);

	if (ret)
		return ret;
	if (mode & ~(UFFDWP_WRITEPROTECT_MODE_WP | UFFDWP_WRITEPROTECT_MODE_DONTWAKE))
		return -EINVAL;
	/* The seed: DONTWAKE "can be specified only if MODE_WP is not". */
	if ((mode & UFFDWP_WRITEPROTECT_MODE_WP) && (mode & UFFDWP_WRITEPROTECT_MODE_DONTWAKE))
		return -EINVAL;
	if (mode & UFFDWP_WRITEPROTECT_MODE_WP)
		return ctx->ops->writeprotect(ctx, (uintptr_t)addr, len, mode);
	uffdwp__unprotect_begin();
	ret = ctx->ops->writeprotect(ctx, (uintptr_t)addr, len, mode);
	uffdwp__unprotect_end();
	return ret;
}

int uffdwp_wake(struct uffdwp *ctx, void *addr, size_t len)
{
	int ret = check_range(ctx, addr, len);

	return ret ? ret : ctx->ops->wake(ctx, (uintptr_t)addr, len);
}

int uffdwp_copy(struct uffdwp *ctx, void *dst, const void *src, size_t len, unsigned mode)
{
	int ret = check_range(ctx, dst, len);

	if (ret)
		return ret;
	if (!src || (mode & ~(UFFDWP_COPY_MODE_DONTWAKE | UFFDWP_COPY_MODE_WP)))
		return -EINVAL;
	return ctx->ops->copy(ctx, (uintptr_t)dst, src, len, mode);
}

int uffdwp_read_events(struct uffdwp *ctx, struct uffdwp_event *ev, size_t max)
{
	if (!ctx || !ev || max == 0)
		return -EINVAL;
	return ctx->ops->read_events(ctx, ev, max);
}
