/* SPDX-License-Identifier: MIT */
/*
 * The kernel backend: the only file that speaks userfaultfd ioctls.
 * Every call converts the kernel's -1/errno into a negative errno once.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "backend.h"
#include "kernel_abi.h"

static int sys_ret(long ret)
{
	return ret < 0 ? -errno : (int)ret;
}

/* ioctl that retries EINTR (a signal arriving while the kernel walks a
 * large range must not surface as a failure). */
static int uffd_ioctl(int fd, unsigned long req, void *arg)
{
	int ret;

	do
		ret = sys_ret(ioctl(fd, req, arg));
	while (ret == -EINTR);
	return ret;
}

/* Why opening failed, for uffdwp_probe() and for choosing the error. */
struct open_attempt {
	int dev_error;       /* 0 or -errno of /dev/userfaultfd */
	int syscall_error;   /* 0 or -errno of userfaultfd(2) */
	int user_mode_only;  /* the syscall needed UFFD_USER_MODE_ONLY */
};

/*
 * A new non-blocking userfaultfd. /dev/userfaultfd comes first: it obeys
 * file permissions whatever vm.unprivileged_userfaultfd says. Then the
 * syscall; when it is refused (EPERM: unprivileged with the sysctl at 0),
 * again with UFFD_USER_MODE_ONLY, which only traps user-mode faults - all
 * that write-protection needs.
 */
static int new_uffd(struct open_attempt *why)
{
	const int flags = O_CLOEXEC | O_NONBLOCK;
	int dev, fd;

	*why = (struct open_attempt){ 0 };
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev >= 0) {
		fd = sys_ret(ioctl(dev, USERFAULTFD_IOC_NEW, flags));
		close(dev);
		if (fd >= 0)
			return fd;
		why->dev_error = fd;
	} else {
		why->dev_error = -errno;
	}
	fd = sys_ret(syscall(__NR_userfaultfd, flags));
	if (fd == -EPERM) {
		fd = sys_ret(syscall(__NR_userfaultfd, flags | UFFD_USER_MODE_ONLY));
		why->user_mode_only = fd >= 0;
	}
	if (fd >= 0)
		return fd;
	why->syscall_error = fd;
	/* The most telling obstacle: a refusal of the syscall beats "not
	 * implemented"; a missing device node says nothing. */
	if (fd != -ENOSYS)
		return fd;
	if (why->dev_error != -ENOENT)
		return why->dev_error;
	return -ENOSYS;
}

/* UFFDIO_API on fd (allowed once per fd). Returns 0 and the features and
 * ioctls the kernel reports, or a negative errno. */
static int handshake(int fd, uint64_t features, uint64_t *got, uint64_t *ioctls)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int ret = uffd_ioctl(fd, UFFDIO_API, &api);

	if (ret < 0)
		return ret;
	*got = api.features;
	if (ioctls)
		*ioctls = api.ioctls;
	return 0;
}

/* The features this kernel offers, asked once on a throwaway fd (UFFDIO_API
 * can be called only once per fd) and remembered. */
static int available_features(uint64_t *out)
{
	static _Atomic uint64_t cached;  /* 0 = not known yet */
	struct open_attempt why;
	uint64_t features = atomic_load_explicit(&cached, memory_order_relaxed);
	int fd, ret;

	if (features) {
		*out = features;
		return 0;
	}
	fd = new_uffd(&why);
	if (fd < 0)
		return fd;
	ret = handshake(fd, 0, &features, NULL);
	close(fd);
	if (ret < 0)
		return ret;
	atomic_store_explicit(&cached, features, memory_order_relaxed);
	*out = features;
	return 0;
}

/*
 * fork(). A child inherits every descriptor, and a userfaultfd acts on the
 * address space it was created in: a child holding a copy of ours could
 * change the parent's protections, and it keeps the file open, so the
 * parent's close would no longer release it: the parent's memory would stay
 * registered and protected, its writers blocked until the child exits. So
 * in the child each open context gets a new, empty userfaultfd of its own
 * (with the same features) in place of the inherited one, as the emulated
 * backend gives the child empty contexts. The parent's memory in the child
 * is the kernel's business: without EVENT_FORK it is neither registered nor
 * protected; with it, the parent receives the child's context as an event.
 * (Only fork(): a raw clone() without CLONE_VM runs no atfork handlers.)
 */
static struct {
	pthread_mutex_t lock;
	struct uffdwp **ctx;  /* the open kernel contexts */
	size_t n, cap;
} open_contexts = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void fork_prepare(void)
{
	pthread_mutex_lock(&open_contexts.lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&open_contexts.lock);
}

/* Replace the inherited fd of ctx. When no new userfaultfd can be had, the
 * descriptor is pointed at /dev/null: every call then fails (-ENOTTY), and
 * still none reaches the parent. */
static void replace_in_child(struct uffdwp *ctx)
{
	struct open_attempt why;
	uint64_t got;
	int fd = new_uffd(&why);

	if (fd >= 0 && handshake(fd, ctx->features, &got, NULL) < 0) {
		close(fd);
		fd = -1;
	}
	if (fd < 0)
		fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd < 0 || dup3(fd, ctx->fd, O_CLOEXEC) < 0)
		close(ctx->fd);  /* at least let go of the parent's */
	if (fd >= 0)
		close(fd);
}

static void fork_child(void)
{
	for (size_t i = 0; i < open_contexts.n; i++)
		replace_in_child(open_contexts.ctx[i]);
	pthread_mutex_unlock(&open_contexts.lock);
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static int fork_handlers_error;

static void install_fork_handlers(void)
{
	fork_handlers_error = -pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static int remember_context(struct uffdwp *ctx)
{
	int ret = 0;

	pthread_once(&fork_once, install_fork_handlers);
	if (fork_handlers_error)
		return fork_handlers_error;
	pthread_mutex_lock(&open_contexts.lock);
	if (open_contexts.n == open_contexts.cap) {
		size_t cap = open_contexts.cap ? 2 * open_contexts.cap : 8;
		struct uffdwp **grown = realloc(open_contexts.ctx, cap * sizeof(*grown));

		if (grown) {
			open_contexts.ctx = grown;
			open_contexts.cap = cap;
		} else {
			ret = -ENOMEM;
		}
	}
	if (ret == 0)
		open_contexts.ctx[open_contexts.n++] = ctx;
	pthread_mutex_unlock(&open_contexts.lock);
	return ret;
}

static void forget_context(struct uffdwp *ctx)
{
	pthread_mutex_lock(&open_contexts.lock);
	for (size_t i = 0; i < open_contexts.n; i++) {
		if (open_contexts.ctx[i] == ctx) {
			open_contexts.ctx[i] = open_contexts.ctx[--open_contexts.n];
			break;
		}
	}
	pthread_mutex_unlock(&open_contexts.lock);
}

static int kernel_open(struct uffdwp *ctx, uint64_t want)
{
	struct open_attempt why;
	uint64_t available, got;
	bool defaults = want == 0;
	int fd, ret;

	ret = available_features(&available);
	if (ret < 0)
		return ret;
	if (!(available & UFFDWP_FEATURE_PAGEFAULT_FLAG_WP))
		return -EOPNOTSUPP;  /* before 5.7: no write-protect at all */
	if (defaults)
		want = UFFDWP_FEATURES_DEFAULT & available;
	if (want & ~available)
		return -EOPNOTSUPP;
	fd = new_uffd(&why);
	if (fd < 0)
		return fd;
	ret = handshake(fd, want, &got, NULL);
	/* Older kernels dropped known-but-disabled bits silently: trust only
	 * what came back. */
	if (ret == 0 && (want & ~got))
		ret = -EOPNOTSUPP;
	if (ret < 0) {
		close(fd);
		return ret;
	}
	ctx->fd = fd;
	/* The kernel answers with every feature it has; those in force are
	 * the ones asked for. */
	ctx->features = want;
	ret = remember_context(ctx);
	if (ret < 0)
		close(fd);
	return ret;
}

static void kernel_close(struct uffdwp *ctx)
{
	forget_context(ctx);
	/* Releasing the fd unregisters every range, clears their protection
	 * and wakes every waiting thread (userfaultfd_release). fork() made no
	 * other reference to it: see fork_child(). */
	close(ctx->fd);
}

static int kernel_register(struct uffdwp *ctx, uintptr_t start, size_t len, unsigned mode,
			   uint64_t *ioctls)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = ((mode & UFFDWP_REGISTER_MODE_WP) ? UFFDIO_REGISTER_MODE_WP : 0) |
			((mode & UFFDWP_REGISTER_MODE_MISSING) ? UFFDIO_REGISTER_MODE_MISSING : 0),
	};
	int ret = uffd_ioctl(ctx->fd, UFFDIO_REGISTER, &reg);

	if (ret == 0 && ioctls)
		*ioctls = reg.ioctls;
	return ret;
}

static int kernel_unregister(struct uffdwp *ctx, uintptr_t start, size_t len)
{
	struct uffdio_range range = { .start = start, .len = len };
	int ret = uffd_ioctl(ctx->fd, UFFDIO_UNREGISTER, &range);

	/* The kernel wakes waiters on unregister only for MISSING ranges; a
	 * writer blocked on a WP fault would sleep forever. Its retry then
	 * finds the range unregistered and unprotected. */
	if (ret == 0)
		ret = uffd_ioctl(ctx->fd, UFFDIO_WAKE, &range);
	return ret;
}

static int kernel_writeprotect(struct uffdwp *ctx, uintptr_t start, size_t len, unsigned mode)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = start, .len = len },
		.mode = ((mode & UFFDWP_WRITEPROTECT_MODE_WP) ? UFFDIO_WRITEPROTECT_MODE_WP : 0) |
			((mode & UFFDWP_WRITEPROTECT_MODE_DONTWAKE) ?
				 UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0),
	};

	return uffd_ioctl(ctx->fd, UFFDIO_WRITEPROTECT, &wp);
}

static int kernel_wake(struct uffdwp *ctx, uintptr_t start, size_t len)
{
	struct uffdio_range range = { .start = start, .len = len };

	return uffd_ioctl(ctx->fd, UFFDIO_WAKE, &range);
}

static int kernel_copy(struct uffdwp *ctx, uintptr_t dst, const void *src, size_t len,
		       unsigned mode)
{
	struct uffdio_copy copy = {
		.dst = dst,
		.src = (uintptr_t)src,
		.len = len,
		.mode = ((mode & UFFDWP_COPY_MODE_DONTWAKE) ? UFFDIO_COPY_MODE_DONTWAKE : 0) |
			((mode & UFFDWP_COPY_MODE_WP) ? UFFDIO_COPY_MODE_WP : 0),
	};

	return uffd_ioctl(ctx->fd, UFFDIO_COPY, &copy);
}

static void convert_msg(const struct uffd_msg *m, struct uffdwp_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->type = (enum uffdwp_event_type)m->event;
	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT:
		ev->pagefault.flags = m->arg.pagefault.flags;
		ev->pagefault.address = m->arg.pagefault.address;
		ev->pagefault.tid = m->arg.pagefault.feat.ptid;
		break;
	case UFFD_EVENT_FORK:
		ev->fork.fd = (int)m->arg.fork.ufd;
		break;
	case UFFD_EVENT_REMAP:
		ev->remap.from = m->arg.remap.from;
		ev->remap.to = m->arg.remap.to;
		ev->remap.len = m->arg.remap.len;
		break;
	case UFFD_EVENT_REMOVE:
	case UFFD_EVENT_UNMAP:
		ev->remove.start = m->arg.remove.start;
		ev->remove.end = m->arg.remove.end;
		break;
	}
}

static int kernel_read_events(struct uffdwp *ctx, struct uffdwp_event *ev, size_t max)
{
	struct uffd_msg msg[64];
	size_t want = max < 64 ? max : 64;
	ssize_t n;

	do
		n = read(ctx->fd, msg, want * sizeof(msg[0]));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	n /= (ssize_t)sizeof(msg[0]);
	for (ssize_t i = 0; i < n; i++)
		convert_msg(&msg[i], &ev[i]);
	return (int)n;
}

/* Fill the kernel half of a probe: how opening fares, and the handshake. */
void uffdwp__kernel_probe(struct uffdwp_probe *p)
{
	struct open_attempt why;
	int fd = new_uffd(&why);

	p->dev_error = why.dev_error;
	p->syscall_error = why.syscall_error;
	p->syscall_user_mode_only = why.user_mode_only;
	p->kernel_features = 0;
	p->kernel_ioctls = 0;
	if (fd < 0)
		return;
	/* The syscall is the fallback: say whether it works too, on its own. */
	if (why.dev_error == 0) {
		int sfd = sys_ret(syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK));

		if (sfd == -EPERM) {
			sfd = sys_ret(syscall(__NR_userfaultfd,
					      O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
			p->syscall_user_mode_only = sfd >= 0;
		}
		if (sfd >= 0)
			close(sfd);
		else
			p->syscall_error = sfd;
	}
	if (handshake(fd, 0, &p->kernel_features, &p->kernel_ioctls) < 0)
		p->kernel_features = 0;
	close(fd);
}

const struct uffdwp__backend_ops uffdwp__kernel_ops = {
	.open = kernel_open,
	.close = kernel_close,
	.register_range = kernel_register,
	.unregister_range = kernel_unregister,
	.writeprotect = kernel_writeprotect,
	.wake = kernel_wake,
	.copy = kernel_copy,
	.read_events = kernel_read_events,
	.set_fault_hook = NULL,
};
