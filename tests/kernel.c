/* SPDX-License-Identifier: MIT */
/*
 * Behaviour that exists only on the kernel backend: the UFFDIO_API
 * handshake, fork and non-cooperative events, -EAGAIN while the address
 * space changes, SIGBUS mode, and how opening fares for an unprivileged user.
 */
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <fcntl.h>
#include "test.h"

/* UFFDIO_API may be called once per fd; unknown feature bits are refused. */
TEST(api_once_per_fd, ON_KERNEL)
{
	struct uffdwp *ctx = test_open(backend, 0);
	struct uffdio_api api = { .api = UFFD_API };

	CHECK_EQ(ioctl(uffdwp_fd(ctx), UFFDIO_API, &api), -1);
	CHECK_EQ(errno, EINVAL);
	uffdwp_close(ctx);
}

/* Unknown feature bits: the library refuses them before the kernel sees
 * them, and the kernel would refuse them too. */
TEST(api_bad_feature_bits, ON_KERNEL)
{
	struct uffdwp_opts o = { .sz = sizeof(o), .backend = backend,
				 .features = UINT64_C(1) << 62 };
	struct uffdwp *ctx = test_open(backend, 0);
	struct uffdwp *bad = NULL;
	struct uffdio_api api = { .api = UFFD_API, .features = UINT64_C(1) << 62 };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	CHECK_RET(uffdwp_open(&bad, &o), -EINVAL);
	if (fd >= 0) { /* root here; else /dev/userfaultfd was the way in */
		CHECK_EQ(ioctl(fd, UFFDIO_API, &api), -1);
		CHECK_EQ(errno, EINVAL);
		close(fd);
	}
	uffdwp_close(ctx);
}

/* fork() while EVENT_FORK is on blocks until the event is read; the test
 * forks from a helper thread so it can watch that happen. */
struct forker {
	pthread_t thread;
	char *addr;  /* the child writes here, then exits */
	pid_t child;
};

static void *forker_main(void *arg)
{
	struct forker *f = arg;

	f->child = fork();
	if (f->child == 0) {
		alarm(10); /* a child left blocked must not outlive the test */
		*f->addr = 77;
		_exit(*f->addr == 77 ? 0 : 1);
	}
	return NULL;
}

static int child_status(pid_t pid)
{
	int status;

	CHECK_EQ(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* With EVENT_FORK the child inherits the protection, and its faults arrive
 * on a new userfaultfd delivered with the fork event. */
TEST(wp_fork_with_event, ON_KERNEL)
{
	char *mem = test_map(1, true);
	struct uffdwp *ctx = test_open(backend, UFFDWP_FEATURE_EVENT_FORK |
						UFFDWP_FEATURE_WP_UNPOPULATED);
	struct forker f = { .addr = mem };
	struct uffdwp_event ev;
	struct uffd_msg msg;
	struct uffdio_writeprotect wp;
	struct pollfd pfd;

	CHECK_OK(uffdwp_register(ctx, mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	CHECK_EQ(pthread_create(&f.thread, NULL, forker_main, &f), 0);
	ev = test_read_event(ctx);
	CHECK_EQ(ev.type, UFFDWP_EVENT_FORK);
	CHECK(ev.fork.fd >= 0);
	pthread_join(f.thread, NULL);
	CHECK(f.child > 0);

	/* The child's write faults on the child's descriptor. */
	pfd = (struct pollfd){ .fd = ev.fork.fd, .events = POLLIN };
	CHECK_EQ(poll(&pfd, 1, 5000), 1);
	CHECK_EQ(read(ev.fork.fd, &msg, sizeof(msg)), (ssize_t)sizeof(msg));
	CHECK_EQ(msg.event, UFFD_EVENT_PAGEFAULT);
	CHECK(msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP);
	CHECK_EQ(msg.arg.pagefault.address, (uintptr_t)mem);
	wp = (struct uffdio_writeprotect){ .range = { (uintptr_t)mem, test_page() } };
	CHECK_EQ(ioctl(ev.fork.fd, UFFDIO_WRITEPROTECT, &wp), 0);
	CHECK_EQ(child_status(f.child), 0);
	close(ev.fork.fd);
	/* The parent's page stays protected: its own write would fault. */
	CHECK_EQ(mem[0], 1);
	uffdwp_close(ctx);
}

/* The seed's EAGAIN: while a fork event is unread the address space is
 * changing; the call fails until the event has been read. */
TEST(wp_eagain_while_fork_event_pending, ON_KERNEL)
{
	char *mem = test_map(1, true);
	struct uffdwp *ctx = test_open(backend, UFFDWP_FEATURE_EVENT_FORK |
						UFFDWP_FEATURE_WP_UNPOPULATED);
	struct forker f = { .addr = mem };
	struct uffdwp_event ev;

	CHECK_OK(uffdwp_register(ctx, mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_EQ(pthread_create(&f.thread, NULL, forker_main, &f), 0);
	CHECK(test_wait_fd(ctx, 5000));  /* the fork event is pending */
	CHECK_RET(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP),
		  -EAGAIN);
	CHECK_RET(uffdwp_copy(ctx, mem, mem, test_page(), 0), -EAGAIN);
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), 1);
	CHECK_EQ(ev.type, UFFDWP_EVENT_FORK);
	/* Reading the event lets fork() finish; once it has returned the
	 * address space is stable again. */
	pthread_join(f.thread, NULL);
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), 0));
	close(ev.fork.fd); /* the child's protection goes with it */
	CHECK_EQ(child_status(f.child), 0);
	uffdwp_close(ctx);
}

/* Non-cooperative events on write-protected memory. The call that causes
 * an event waits until it is read, so it runs in a helper thread while the
 * test reads every event it raises. */
enum mm_change { DO_MADV_DONTNEED, DO_MUNMAP, DO_MREMAP };

struct mm_changer {
	pthread_t thread;
	enum mm_change what;
	char *addr, *new_addr;
	size_t len;
	sem_t done;
};

static void *mm_changer_main(void *arg)
{
	struct mm_changer *c = arg;

	switch (c->what) {
	case DO_MADV_DONTNEED:
		madvise(c->addr, c->len, MADV_DONTNEED);
		break;
	case DO_MUNMAP:
		munmap(c->addr, c->len);
		break;
	case DO_MREMAP:
		c->new_addr = mremap(c->addr, c->len, c->len, MREMAP_MAYMOVE | MREMAP_FIXED,
				     c->new_addr);
		break;
	}
	sem_post(&c->done);
	return NULL;
}

/* Run the change; return the first event of type `want` among those it
 * raised (all of them are read, so the change can complete). */
static struct uffdwp_event change_and_collect(struct uffdwp *ctx, struct mm_changer *c,
					      enum uffdwp_event_type want)
{
	struct uffdwp_event found = { .type = 0 }, ev;

	sem_init(&c->done, 0, 0);
	CHECK_EQ(pthread_create(&c->thread, NULL, mm_changer_main, c), 0);
	for (int waited_ms = 0; sem_trywait(&c->done) != 0; waited_ms += 10) {
		CHECK(waited_ms < 5000);
		if (test_wait_fd(ctx, 10) && uffdwp_read_events(ctx, &ev, 1) == 1 &&
		    ev.type == want && found.type == 0)
			found = ev;
	}
	pthread_join(c->thread, NULL);
	sem_destroy(&c->done);
	if (found.type != want)
		FAIL("no event of type 0x%x", want);
	return found;
}

TEST(events_with_wp, ON_KERNEL)
{
	size_t page = test_page();
	char *mem = test_map(4, true);
	char *target = test_map(4, false);
	struct uffdwp *ctx = test_open(backend, UFFDWP_FEATURE_EVENT_REMOVE |
						UFFDWP_FEATURE_EVENT_UNMAP |
						UFFDWP_FEATURE_EVENT_REMAP |
						UFFDWP_FEATURE_WP_UNPOPULATED);
	struct mm_changer c = { .addr = mem, .len = page, .what = DO_MADV_DONTNEED };
	struct uffdwp_event ev;

	CHECK_OK(uffdwp_register(ctx, mem, 4 * page, UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, 4 * page, UFFDWP_WRITEPROTECT_MODE_WP));

	ev = change_and_collect(ctx, &c, UFFDWP_EVENT_REMOVE);
	CHECK_EQ(ev.remove.start, (uintptr_t)mem);
	CHECK_EQ(ev.remove.end, (uintptr_t)mem + page);

	c = (struct mm_changer){ .addr = mem + 2 * page, .len = 2 * page,
				 .new_addr = target, .what = DO_MREMAP };
	ev = change_and_collect(ctx, &c, UFFDWP_EVENT_REMAP);
	CHECK(c.new_addr == target);
	CHECK_EQ(ev.remap.from, (uintptr_t)mem + 2 * page);
	CHECK_EQ(ev.remap.to, (uintptr_t)target);
	CHECK_EQ(ev.remap.len, 2 * page);

	c = (struct mm_changer){ .addr = mem + page, .len = page, .what = DO_MUNMAP };
	ev = change_and_collect(ctx, &c, UFFDWP_EVENT_UNMAP);
	CHECK_EQ(ev.remove.start, (uintptr_t)mem + page);
	CHECK_EQ(ev.remove.end, (uintptr_t)mem + 2 * page);
	uffdwp_close(ctx);
}

/* SIGBUS mode: no message; the faulting thread gets SIGBUS at the address
 * and can resolve the fault itself. */
static int sigbus_fd;
static volatile sig_atomic_t sigbus_count;
static volatile uintptr_t sigbus_addr;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	struct uffdio_writeprotect wp;
	uintptr_t page = (uintptr_t)si->si_addr & ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1);

	sigbus_count++;
	sigbus_addr = (uintptr_t)si->si_addr;
	wp = (struct uffdio_writeprotect){ .range = { page, (uint64_t)sysconf(_SC_PAGESIZE) } };
	if (ioctl(sigbus_fd, UFFDIO_WRITEPROTECT, &wp) != 0)
		_exit(3);
}

TEST(sigbus_wp, ON_KERNEL)
{
	char *mem = test_map(1, true);
	struct uffdwp *ctx = test_open(backend, UFFDWP_FEATURE_SIGBUS |
						UFFDWP_FEATURE_WP_UNPOPULATED);
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
	struct uffdwp_event ev;

	CHECK_OK(sigaction(SIGBUS, &sa, NULL));
	sigbus_fd = uffdwp_fd(ctx);
	CHECK_OK(uffdwp_register(ctx, mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	((volatile char *)mem)[100] = 55;
	CHECK_EQ(sigbus_count, 1);
	CHECK_EQ(sigbus_addr, (uintptr_t)mem + 100);
	CHECK_EQ(mem[100], 55);
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	uffdwp_close(ctx);
}

/* An unprivileged user, with vm.unprivileged_userfaultfd=0 and a root-only
 * /dev/userfaultfd, still gets a working context through the syscall with
 * UFFD_USER_MODE_ONLY; the probe says exactly that. */
TEST(unprivileged_open, ON_KERNEL)
{
	struct uffdwp_probe p = { .sz = sizeof(p) };
	struct uffdwp *ctx;
	char *mem;
	struct test_writer *w;

	if (getuid() != 0)
		SKIP("needs root to drop privileges");
	CHECK_OK(setresgid(65534, 65534, 65534));
	CHECK_OK(setresuid(65534, 65534, 65534));
	CHECK_OK(uffdwp_probe(&p));
	if (access("/dev/userfaultfd", R_OK | W_OK) != 0)
		CHECK(p.dev_error == -EACCES || p.dev_error == -ENOENT);
	if (p.unprivileged_userfaultfd == 0 && p.syscall_error == 0)
		CHECK_EQ(p.syscall_user_mode_only, 1);
	if (p.dev_error && p.syscall_error)
		SKIP("this machine refuses userfaultfd to unprivileged users");
	ctx = test_open(backend, 0);
	mem = test_map(1, true);
	CHECK_OK(uffdwp_register(ctx, mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	w = test_writer_start(mem, 4);
	(void)test_read_event(ctx);
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), 0));
	test_writer_join(w);
	uffdwp_close(ctx);
}
