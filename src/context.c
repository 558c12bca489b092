/* SPDX-License-Identifier: MIT */
/*
 * uffdwp_open/close and the core calls. Arguments are checked once, here;
 * the backends receive only well-formed requests.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include "backend.h"

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

static int open_backend(struct uffdwp **out, const struct uffdwp__backend_ops *ops,
			enum uffdwp_backend backend, uint64_t features)
{
	struct uffdwp *ctx = calloc(1, sizeof(*ctx));
	int ret;

	if (!ctx)
		return -ENOMEM;
	ctx->ops = ops;
	ctx->backend = backend;
	ctx->fd = -1;
	ret = ops->open(ctx, features);
	if (ret < 0) {
		free(ctx);
		return ret;
	}
	*out = ctx;
	return 0;
}

int uffdwp_open(struct uffdwp **ctx, const struct uffdwp_opts *opts)
{
	struct uffdwp_opts o = { .sz = sizeof(o) };
	int ret;

	if (!ctx)
		return -EINVAL;
	if (opts) {
		if (opts->sz < offsetof(struct uffdwp_opts, features) + sizeof(opts->features))
			return -EINVAL;
		o.backend = opts->backend;
		o.features = opts->features;
	}
	if (o.features & ~UFFDWP__KNOWN_FEATURES)
		return -EINVAL;
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

int uffdwp__open_fd(struct uffdwp **out, int fd, pid_t pid, uint64_t features)
{
	struct uffdwp *ctx = calloc(1, sizeof(*ctx));
	int ret;

	if (!ctx) {
		close(fd);
		return -ENOMEM;
	}
	ctx->ops = &uffdwp__kernel_ops;
	ctx->backend = UFFDWP_BACKEND_KERNEL;
	ctx->pid = pid;
	ret = uffdwp__kernel_adopt(ctx, fd, features ? features | UFFDWP_FEATURE_PAGEFAULT_FLAG_WP : 0);
	if (ret < 0) {
		free(ctx);
		return ret;
	}
	*out = ctx;
	return 0;
}

void uffdwp_close(struct uffdwp *ctx)
{
	if (!ctx)
		return;
	ctx->ops->close(ctx);
	free(ctx);
}

int uffdwp_fd(const struct uffdwp *ctx)
{
	return ctx->fd;
}

uint64_t uffdwp_features(const struct uffdwp *ctx)
{
	return ctx->features;
}

enum uffdwp_backend uffdwp_backend(const struct uffdwp *ctx)
{
	return ctx->backend;
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
	return ctx->ops->register_range(ctx, (uintptr_t)addr, len, mode, ioctls);
}

int uffdwp_register(struct uffdwp *ctx, void *addr, size_t len, unsigned mode)
{
	return uffdwp_register_ioctls(ctx, addr, len, mode, NULL);
}

int uffdwp_unregister(struct uffdwp *ctx, void *addr, size_t len)
{
	int ret = check_range(ctx, addr, len);

	return ret ? ret : ctx->ops->unregister_range(ctx, (uintptr_t)addr, len);
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
	return ctx->ops->writeprotect(ctx, (uintptr_t)addr, len, mode);
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

/* Below this many bytes a second thread costs more than it saves. */
#define PARALLEL_PROTECT_MIN ((uint64_t)64 << 20)
#define PARALLEL_PROTECT_MAX_THREADS 4

struct protect_share {
	struct uffdwp *ctx;
	const struct uffdwp_snapshot_region *regions;
	size_t nregions;
	uint64_t from, to;  /* byte offsets into the regions laid end to end */
	int ret;
};

/* Protect the bytes [from, to) of the regions laid end to end. */
static void *protect_share(void *arg)
{
	struct protect_share *p = arg;
	uint64_t at = 0;

	for (size_t i = 0; i < p->nregions && !p->ret; at += p->regions[i].len, i++) {
		uint64_t lo = p->from > at ? p->from - at : 0;
		uint64_t hi = p->to - at < p->regions[i].len ? p->to - at : p->regions[i].len;

		if (p->to <= at)
			break;
		if (lo >= hi)
			continue;
		p->ret = uffdwp_writeprotect(p->ctx, (void *)(uintptr_t)(p->regions[i].addr + lo),
					     (size_t)(hi - lo), UFFDWP_WRITEPROTECT_MODE_WP);
	}
	return NULL;
}

int uffdwp__protect_regions(struct uffdwp *ctx, const struct uffdwp_snapshot_region *regions,
			    size_t nregions)
{
	struct protect_share share[PARALLEL_PROTECT_MAX_THREADS];
	pthread_t thread[PARALLEL_PROTECT_MAX_THREADS];
	bool started[PARALLEL_PROTECT_MAX_THREADS] = { false };
	uint64_t total = 0, page = uffdwp__page_size();
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	sigset_t all, old;
	size_t n = 1;
	int ret = 0;

	for (size_t i = 0; i < nregions; i++)
		total += regions[i].len;
	/* The kernel protects under the mm lock taken for reading: shares
	 * run in parallel. mprotect (emulated) takes it for writing. */
	if (ctx->backend == UFFDWP_BACKEND_KERNEL && total >= PARALLEL_PROTECT_MIN && cpus > 1)
		n = cpus < PARALLEL_PROTECT_MAX_THREADS ? (size_t)cpus : PARALLEL_PROTECT_MAX_THREADS;
	/* Our threads take none of the program's signals. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (size_t k = 0; k < n; k++) {
		share[k] = (struct protect_share){
			.ctx = ctx, .regions = regions, .nregions = nregions,
			.from = total / n * k / page * page,
			.to = k + 1 == n ? total : total / n * (k + 1) / page * page,
		};
		/* The caller's thread takes share 0; a thread that cannot be
		 * created leaves its share to the caller. */
		if (k && pthread_create(&thread[k], NULL, protect_share, &share[k]) == 0)
			started[k] = true;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	protect_share(&share[0]);
	for (size_t k = 0; k < n; k++) {
		if (started[k])
			pthread_join(thread[k], NULL);
		else if (k)
			protect_share(&share[k]);
		if (!ret)
			ret = share[k].ret;
	}
	return ret;
}
