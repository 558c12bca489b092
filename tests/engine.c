/* SPDX-License-Identifier: MIT */
/* The fault-resolution engine (uffdwp_engine(3)): each mode, the callback's
 * choices, events, -EAGAIN, stopping, idling and statistics. */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include "test.h"

/* How long a writer that should stay blocked is given to (wrongly) finish. */
#define STILL_BLOCKED_MS 200

/* A context on backend whose faults can reach an engine in mode: in-thread
 * on the kernel needs SIGBUS. */
static struct uffdwp *open_for(enum uffdwp_backend backend, enum uffdwp_engine_mode mode,
			       uint64_t extra_features)
{
	uint64_t f = UFFDWP_FEATURE_WP_UNPOPULATED | UFFDWP_FEATURE_THREAD_ID | extra_features;

	if (backend == UFFDWP_BACKEND_EMULATED)
		return test_open(backend, extra_features ? f : 0);
	if (mode == UFFDWP_ENGINE_INTHREAD)
		f = UFFDWP_FEATURE_SIGBUS | UFFDWP_FEATURE_WP_UNPOPULATED | extra_features;
	return test_open(backend, f);
}

static struct uffdwp_engine *start(struct uffdwp *ctx, enum uffdwp_engine_mode mode,
				   uffdwp_fault_fn fn, void *arg)
{
	struct uffdwp_engine_opts o = { .sz = sizeof(o), .mode = mode, .fn = fn, .arg = arg };
	struct uffdwp_engine *eng = NULL;

	CHECK_OK(uffdwp_engine_start(&eng, ctx, &o));
	CHECK(eng != NULL);
	return eng;
}

static struct uffdwp_engine_stats stats_of(struct uffdwp_engine *eng)
{
	struct uffdwp_engine_stats st = { .sz = sizeof(st) };

	CHECK_OK(uffdwp_engine_stats(eng, &st));
	return st;
}

static char *protected_pages(struct uffdwp *ctx, size_t npages)
{
	char *mem = test_map(npages, true);

	CHECK_OK(uffdwp_register(ctx, mem, npages * test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, npages * test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	return mem;
}

/* What a callback saw. Written by whichever thread runs it, read after. */
struct seen {
	_Atomic unsigned faults, forks, removes, unmaps;
	_Atomic uintptr_t last_address;
	_Atomic uint32_t last_tid;
	_Atomic int fork_fd;
	uintptr_t keep_page;   /* faults on this page are kept */
	sem_t fault_seen;      /* posted for each fault */
	char *mem;             /* in-thread: the page's old content is checked */
	_Atomic int old_value;
};

static void seen_init(struct seen *s)
{
	memset(s, 0, sizeof(*s));
	s->fork_fd = -1;
	sem_init(&s->fault_seen, 0, 0);
}

static int record(void *arg, const struct uffdwp_event *ev)
{
	struct seen *s = arg;

	switch (ev->type) {
	case UFFDWP_EVENT_PAGEFAULT:
		s->last_address = (uintptr_t)ev->pagefault.address;
		s->last_tid = ev->pagefault.tid;
		if (s->mem)
			s->old_value = *(volatile char *)(uintptr_t)ev->pagefault.address;
		s->faults++;
		sem_post(&s->fault_seen);  /* async-signal-safe */
		return ev->pagefault.address == s->keep_page ? UFFDWP_KEEP : UFFDWP_RESOLVE;
	case UFFDWP_EVENT_FORK:
		s->fork_fd = ev->fork.fd;
		s->forks++;
		break;
	case UFFDWP_EVENT_REMOVE:
		s->removes++;
		break;
	case UFFDWP_EVENT_UNMAP:
		s->unmaps++;
		break;
	default:
		break;
	}
	return UFFDWP_RESOLVE;
}

static void wait_sem(sem_t *sem, int timeout_ms)
{
	if (!test_sem_wait(sem, timeout_ms))
		FAIL("not posted within %d ms", timeout_ms);
}

/* Writers on every page of mem, each on its own thread; all must finish. */
static void write_all_pages_from_threads(char *mem, size_t npages, char value)
{
	struct test_writer *w[16];

	CHECK(npages <= 16);
	for (size_t i = 0; i < npages; i++)
		w[i] = test_writer_start(mem + i * test_page() + 3, value);
	for (size_t i = 0; i < npages; i++)
		test_writer_join(w[i]);
	for (size_t i = 0; i < npages; i++)
		CHECK_EQ(mem[i * test_page() + 3], value);
}

TEST(engine_thread_resolves, ON_BOTH)
{
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_THREAD, 0);
	char *mem = protected_pages(ctx, 8);
	struct seen s;
	struct uffdwp_engine *eng;

	seen_init(&s);
	s.keep_page = UINTPTR_MAX;
	eng = start(ctx, UFFDWP_ENGINE_THREAD, record, &s);
	CHECK_EQ(uffdwp_engine_mode(eng), UFFDWP_ENGINE_THREAD);
	write_all_pages_from_threads(mem, 8, 9);
	CHECK_EQ(s.faults, 8);
	CHECK(s.last_tid != 0 && s.last_tid != (uint32_t)gettid());
	/* Resolved pages stay writable: no new fault. */
	mem[5] = 1;
	CHECK_EQ(s.faults, 8);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

/* The faulting thread resolves its own fault: the callback runs in it,
 * before the page is writable (it reads the old content). */
TEST(engine_inthread_resolves, ON_BOTH)
{
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_INTHREAD, 0);
	char *mem = protected_pages(ctx, 4);
	size_t page = test_page();
	struct uffdwp_engine *eng;
	struct uffdwp_event ev;
	struct seen s;

	seen_init(&s);
	s.keep_page = UINTPTR_MAX;
	s.mem = mem;
	eng = start(ctx, UFFDWP_ENGINE_INTHREAD, record, &s);
	CHECK_EQ(uffdwp_engine_mode(eng), UFFDWP_ENGINE_INTHREAD);
	for (int i = 0; i < 4; i++)
		((volatile char *)mem)[(size_t)i * page + 7] = (char)(20 + i);
	CHECK_EQ(s.faults, 4);
	CHECK_EQ(s.last_address, (uintptr_t)mem + 3 * page);
	CHECK_EQ(s.last_tid, (uint32_t)gettid());
	CHECK_EQ(s.old_value, 1);  /* test_map's content: seen before the write */
	CHECK_EQ(mem[3 * page + 7], 23);
	/* Threads other than the caller resolve their own too. */
	CHECK_OK(uffdwp_writeprotect(ctx, mem, 4 * page, UFFDWP_WRITEPROTECT_MODE_WP));
	s.mem = NULL;
	write_all_pages_from_threads(mem, 4, 11);
	CHECK_EQ(s.faults, 8);
	CHECK_EQ(stats_of(eng).resolved, 8);
	/* Nothing was queued on the fd. */
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

/* A SIGBUS that is not a write-protect fault of ours goes to the handler
 * installed before the engine's. */
static void exit_42_on_sigbus(int sig)
{
	_exit(42);
}

/* A shared file mapping of two pages whose file holds one: a write to
 * the second raises a SIGBUS that is no write-protect fault. */
static char *page_beyond_eof(void)
{
	char path[] = "/tmp/uffdwp-engine-XXXXXX";
	int fd = mkstemp(path);
	char *map;

	CHECK(fd >= 0);
	unlink(path);
	CHECK_OK(ftruncate(fd, (off_t)test_page()));
	map = mmap(NULL, 2 * test_page(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(map != MAP_FAILED);
	close(fd);
	return map + test_page();
}

/* Runs child in a fork child with an in-thread engine started after
 * previous was installed; returns the child's wait status. */
static int foreign_sigbus_in_child(const struct sigaction *previous, void (*child)(void))
{
	struct uffdwp *ctx = open_for(UFFDWP_BACKEND_KERNEL, UFFDWP_ENGINE_INTHREAD, 0);
	struct uffdwp_engine *eng;
	int status;
	pid_t pid;

	CHECK_OK(sigaction(SIGBUS, previous, NULL));
	eng = start(ctx, UFFDWP_ENGINE_INTHREAD, NULL, NULL);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		child();
		_exit(0);
	}
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
	return status;
}

static char *beyond_eof;

static void write_beyond_eof(void)
{
	*(volatile char *)beyond_eof = 1;
}

TEST(engine_inthread_foreign_sigbus_forwarded, ON_KERNEL)
{
	struct sigaction previous = { .sa_handler = exit_42_on_sigbus };
	int status;

	beyond_eof = page_beyond_eof();
	status = foreign_sigbus_in_child(&previous, write_beyond_eof);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 42);
}

/* The previous handler runs with its own sa_mask added, as the kernel
 * would have run it. */
static void exit_42_if_usr1_blocked(int sig, siginfo_t *si, void *uc)
{
	sigset_t now;

	pthread_sigmask(SIG_SETMASK, NULL, &now);
	_exit(sigismember(&now, SIGUSR1) ? 42 : 43);
}

TEST(engine_inthread_forward_previous_mask, ON_KERNEL)
{
	struct sigaction previous = { .sa_sigaction = exit_42_if_usr1_blocked,
				      .sa_flags = SA_SIGINFO };
	int status;

	sigemptyset(&previous.sa_mask);
	sigaddset(&previous.sa_mask, SIGUSR1);
	beyond_eof = page_beyond_eof();
	status = foreign_sigbus_in_child(&previous, write_beyond_eof);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 42);
}

/* SA_RESETHAND on the previous handler: it runs once, then the default
 * action applies - the re-executed write dies of SIGBUS. */
static volatile sig_atomic_t resethand_calls;

static void return_once(int sig)
{
	if (++resethand_calls > 1)
		_exit(43);  /* run twice: SA_RESETHAND ignored */
}

TEST(engine_inthread_forward_previous_resethand, ON_KERNEL)
{
	struct sigaction previous = { .sa_handler = return_once, .sa_flags = SA_RESETHAND };
	int status;

	beyond_eof = page_beyond_eof();
	status = foreign_sigbus_in_child(&previous, write_beyond_eof);
	CHECK(WIFSIGNALED(status));
	CHECK_EQ(WTERMSIG(status), SIGBUS);
}

/* A write-protect SIGBUS delivered late - after its page was un-protected
 * and its engine stopped, because the writer was preempted in between -
 * retries the write instead of reaching the previous handler; a second
 * SIGBUS at the same page in a row is a real one and is forwarded. The
 * late delivery is made by queueing the kernel's own siginfo to ourselves. */
static void deliver_late_sigbus(void *addr)
{
	siginfo_t si = { .si_signo = SIGBUS, .si_code = BUS_ADRERR };

	si.si_addr = addr;
	CHECK_OK(syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), SIGBUS, &si));
}

TEST(engine_inthread_late_sigbus_retried, ON_KERNEL)
{
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_INTHREAD, 0);
	struct sigaction previous = { .sa_handler = exit_42_on_sigbus };
	char *mem = test_map(1, true);
	struct uffdwp_engine *eng;
	int status;
	pid_t pid;

	CHECK_OK(sigaction(SIGBUS, &previous, NULL));
	CHECK_OK(uffdwp_register(ctx, mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	eng = start(ctx, UFFDWP_ENGINE_INTHREAD, NULL, NULL);
	uffdwp_engine_stop(eng);
	/* In a child, where the previous handler may end the process. */
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		deliver_late_sigbus(mem);  /* present, not protected: retried */
		/* The thread's next SIGBUS at that page: the retry failed. */
		deliver_late_sigbus(mem + 1);
		_exit(0);
	}
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 42);
	uffdwp_close(ctx);
}

/* "In a row" means the thread's very next SIGBUS: a late SIGBUS at a page
 * retried long ago, with other SIGBUS in between, is retried again. */
TEST(engine_inthread_late_sigbus_retried_again_later, ON_KERNEL)
{
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_INTHREAD, 0);
	struct sigaction previous = { .sa_handler = exit_42_on_sigbus };
	char *mem = protected_pages(ctx, 2);
	size_t page = test_page();
	struct uffdwp_engine *eng;

	CHECK_OK(uffdwp_writeprotect(ctx, mem, page, 0));
	CHECK_OK(sigaction(SIGBUS, &previous, NULL));
	eng = start(ctx, UFFDWP_ENGINE_INTHREAD, NULL, NULL);
	uffdwp_engine_stop(eng);
	deliver_late_sigbus(mem);  /* retried */
	eng = start(ctx, UFFDWP_ENGINE_INTHREAD, NULL, NULL);
	((volatile char *)mem)[page] = 3;  /* a SIGBUS the engine resolves */
	CHECK_EQ(stats_of(eng).resolved, 1);
	uffdwp_engine_stop(eng);
	deliver_late_sigbus(mem);  /* not in a row: retried again, not forwarded */
	CHECK_EQ(mem[page], 3);
	uffdwp_close(ctx);
}

/* A fork child has none of the parent's in-thread engines. With
 * EVENT_FORK and the fork fd kept open, the child's copy stays protected;
 * its write-protect SIGBUS goes to the previous handler instead of being
 * "resolved" through the parent's context, which would un-protect the
 * parent's page and leave the child faulting forever. */
static bool page_write_protected(const void *addr)
{
	return test_pagemap_entry(addr) & (1ull << 57);
}

TEST(engine_inthread_fork_child_has_no_engine, ON_KERNEL)
{
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_INTHREAD, UFFDWP_FEATURE_EVENT_FORK);
	struct sigaction previous = { .sa_handler = exit_42_on_sigbus };
	char *mem = protected_pages(ctx, 1);
	struct uffdwp_engine *eng;
	struct pollfd exited;
	struct seen s;
	int status;
	pid_t pid;

	seen_init(&s);
	CHECK_OK(sigaction(SIGBUS, &previous, NULL));
	eng = start(ctx, UFFDWP_ENGINE_INTHREAD, record, &s);
	pid = fork();  /* returns once the engine has read the fork event */
	CHECK(pid >= 0);
	if (pid == 0) {
		((volatile char *)mem)[0] = 1;
		_exit(0);
	}
	exited.fd = (int)syscall(SYS_pidfd_open, pid, 0);
	exited.events = POLLIN;
	CHECK(exited.fd >= 0);
	if (poll(&exited, 1, 5000) != 1) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		FAIL("the child is still faulting after 5 s");
	}
	close(exited.fd);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 42);
	CHECK(page_write_protected(mem));  /* the parent's page untouched */
	CHECK_OK(uffdwp_engine_flush(eng));
	CHECK_EQ(s.forks, 1);
	CHECK_EQ(s.faults, 0);
	close(s.fork_fd);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

/* A missing-page fault (a range registered for those too) is no
 * write-protect fault: un-protecting cannot fix it, so after a few
 * fruitless retries it goes to the previous handler instead of looping.
 * That handler fills the page, which ends the fault. */
static struct uffdwp *missing_ctx;
static volatile sig_atomic_t missing_forwarded;

static void fill_missing_page(int sig, siginfo_t *si, void *uc)
{
	static char zeros[1 << 16];
	uintptr_t page = (uintptr_t)si->si_addr & ~(uintptr_t)(test_page() - 1);

	missing_forwarded++;
	if (uffdwp_copy(missing_ctx, (void *)page, zeros, test_page(), 0) < 0)
		_exit(3);
}

TEST(engine_inthread_missing_fault_forwarded, ON_KERNEL)
{
	struct sigaction previous = { .sa_sigaction = fill_missing_page,
				      .sa_flags = SA_SIGINFO };
	char *never_touched = test_map(1, false);
	struct uffdwp_engine *eng;

	CHECK(test_page() <= 1 << 16);
	missing_ctx = open_for(backend, UFFDWP_ENGINE_INTHREAD, 0);
	CHECK_OK(uffdwp_register(missing_ctx, never_touched, test_page(),
				 UFFDWP_REGISTER_MODE_WP | UFFDWP_REGISTER_MODE_MISSING));
	CHECK_OK(sigaction(SIGBUS, &previous, NULL));
	eng = start(missing_ctx, UFFDWP_ENGINE_INTHREAD, NULL, NULL);
	((volatile char *)never_touched)[0] = 5;
	CHECK_EQ(missing_forwarded, 1);
	CHECK_EQ(never_touched[0], 5);
	CHECK_EQ(stats_of(eng).errors, 0);
	uffdwp_engine_stop(eng);
	uffdwp_close(missing_ctx);
}

TEST(engine_caller_dispatch, ON_BOTH)
{
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_CALLER, 0);
	char *mem = protected_pages(ctx, 2);
	struct uffdwp_engine *eng = start(ctx, UFFDWP_ENGINE_CALLER, NULL, NULL);
	struct test_writer *w;
	int handled = 0;

	CHECK_EQ(uffdwp_engine_dispatch(eng), 0);  /* nothing pending */
	w = test_writer_start(mem + test_page(), 4);
	/* No thread of ours: the writer waits for the caller. */
	CHECK(test_wait_fd(ctx, 5000));
	CHECK(!test_writer_done(w, STILL_BLOCKED_MS));
	while (!handled) {
		CHECK(test_wait_fd(ctx, 5000));
		handled = uffdwp_engine_dispatch(eng);
		CHECK(handled >= 0);
	}
	test_writer_join(w);
	CHECK_EQ(mem[test_page()], 4);
	CHECK_EQ(stats_of(eng).faults, 1);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

TEST(engine_auto_mode, ON_BOTH)
{
	struct uffdwp *ctx = test_open(backend, 0);
	struct uffdwp_engine *eng = start(ctx, UFFDWP_ENGINE_AUTO, NULL, NULL);

	CHECK_EQ(uffdwp_engine_mode(eng), backend == UFFDWP_BACKEND_EMULATED
						 ? UFFDWP_ENGINE_INTHREAD : UFFDWP_ENGINE_THREAD);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
	if (backend == UFFDWP_BACKEND_KERNEL) {
		ctx = open_for(backend, UFFDWP_ENGINE_INTHREAD, 0);
		eng = start(ctx, UFFDWP_ENGINE_AUTO, NULL, NULL);
		CHECK_EQ(uffdwp_engine_mode(eng), UFFDWP_ENGINE_INTHREAD);
		uffdwp_engine_stop(eng);
		uffdwp_close(ctx);
	}
}

TEST(engine_bad_arguments, ON_BOTH)
{
	struct uffdwp *ctx = test_open(backend, 0);
	struct uffdwp_engine_opts o = { .sz = sizeof(o) };
	struct uffdwp_engine *eng = NULL, *second = NULL;
	struct uffdwp_engine_stats st = { .sz = 1 };

	CHECK_RET(uffdwp_engine_start(NULL, ctx, &o), -EINVAL);
	CHECK_RET(uffdwp_engine_start(&eng, NULL, &o), -EINVAL);
	o.sz = 1;
	CHECK_RET(uffdwp_engine_start(&eng, ctx, &o), -EINVAL);
	o.sz = sizeof(o);
	o.mode = (enum uffdwp_engine_mode)9;
	CHECK_RET(uffdwp_engine_start(&eng, ctx, &o), -EINVAL);
	o.mode = UFFDWP_ENGINE_INTHREAD;
	if (backend == UFFDWP_BACKEND_KERNEL)  /* no SIGBUS feature */
		CHECK_RET(uffdwp_engine_start(&eng, ctx, &o), -EOPNOTSUPP);
	o.mode = UFFDWP_ENGINE_CALLER;
	CHECK_OK(uffdwp_engine_start(&eng, ctx, &o));
	CHECK_RET(uffdwp_engine_start(&second, ctx, &o), -EBUSY);
	CHECK_RET(uffdwp_engine_stats(eng, &st), -EINVAL);
	CHECK_RET(uffdwp_engine_dispatch(NULL), -EINVAL);
	uffdwp_engine_stop(eng);
	uffdwp_engine_stop(NULL);
	/* Stopped: the context takes a new engine. */
	CHECK_OK(uffdwp_engine_start(&eng, ctx, &o));
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
	if (backend == UFFDWP_BACKEND_KERNEL) {
		/* A SIGBUS context queues no fault: a reader would wait forever. */
		ctx = open_for(backend, UFFDWP_ENGINE_INTHREAD, 0);
		o.mode = UFFDWP_ENGINE_THREAD;
		CHECK_RET(uffdwp_engine_start(&eng, ctx, &o), -EOPNOTSUPP);
		o.mode = UFFDWP_ENGINE_CALLER;
		CHECK_RET(uffdwp_engine_start(&eng, ctx, &o), -EOPNOTSUPP);
		uffdwp_close(ctx);
	}
}

/* KEEP leaves the writer blocked until the caller un-protects. */
TEST(engine_keep_then_resolve, ON_BOTH)
{
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_THREAD, 0);
	char *mem = protected_pages(ctx, 3);
	size_t page = test_page();
	struct test_writer *kept, *other;
	struct uffdwp_engine *eng;
	struct seen s;

	seen_init(&s);
	s.keep_page = (uintptr_t)mem + page;
	eng = start(ctx, UFFDWP_ENGINE_THREAD, record, &s);
	kept = test_writer_start(mem + page, 6);
	wait_sem(&s.fault_seen, 5000);
	/* A later batch resolves around the kept page, never wakes it. */
	other = test_writer_start(mem + 2 * page, 7);
	test_writer_join(other);
	CHECK(!test_writer_done(kept, STILL_BLOCKED_MS));
	CHECK_EQ(stats_of(eng).kept, 1);
	CHECK_OK(uffdwp_writeprotect(ctx, mem + page, page, 0));
	test_writer_join(kept);
	CHECK_EQ(mem[page], 6);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

/* madvise/munmap in a registered range raise events that block the call
 * until read: the engine reads them and hands them to the callback. */
TEST(engine_events_passed, ON_KERNEL)
{
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_THREAD,
				      UFFDWP_FEATURE_EVENT_REMOVE | UFFDWP_FEATURE_EVENT_UNMAP);
	char *mem = protected_pages(ctx, 4);
	size_t page = test_page();
	struct uffdwp_engine *eng;
	struct seen s;

	seen_init(&s);
	eng = start(ctx, UFFDWP_ENGINE_THREAD, record, &s);
	/* These return once the engine has read their events; flush waits
	 * until it has handed them on. */
	CHECK_OK(madvise(mem, page, MADV_DONTNEED));
	CHECK_OK(uffdwp_engine_flush(eng));
	CHECK_EQ(s.removes, 1);
	CHECK_OK(munmap(mem + 3 * page, page));
	CHECK_OK(uffdwp_engine_flush(eng));
	CHECK_EQ(s.unmaps, 1);
	CHECK_RET(uffdwp_engine_flush(NULL), -EINVAL);
	CHECK_EQ(stats_of(eng).events, 2);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

/* -EAGAIN: the callback, while handling a fault, makes a fork event pend;
 * the un-protect then fails with -EAGAIN until the engine has read the
 * event (and passed it on) and fork() has returned. */
struct forking {
	struct seen seen;
	pthread_t forker;
	pid_t child;
	struct uffdwp *ctx;
};

static void *fork_child_exits(void *arg)
{
	struct forking *f = arg;

	f->child = fork();
	if (f->child == 0)
		_exit(0);
	return NULL;
}

static int fork_during_fault(void *arg, const struct uffdwp_event *ev)
{
	struct forking *f = arg;

	if (ev->type == UFFDWP_EVENT_PAGEFAULT && f->seen.faults == 0) {
		CHECK_EQ(pthread_create(&f->forker, NULL, fork_child_exits, f), 0);
		/* The fault itself is read: readable now means the fork event. */
		CHECK(test_wait_fd(f->ctx, 5000));
	}
	return record(&f->seen, ev);
}

TEST(engine_eagain_fork_event, ON_KERNEL)
{
	struct forking f = { 0 };
	struct uffdwp_engine *eng;
	struct test_writer *w;
	int status;
	char *mem;

	f.ctx = open_for(backend, UFFDWP_ENGINE_THREAD, UFFDWP_FEATURE_EVENT_FORK);
	mem = protected_pages(f.ctx, 1);
	seen_init(&f.seen);
	f.seen.keep_page = UINTPTR_MAX;
	eng = start(f.ctx, UFFDWP_ENGINE_THREAD, fork_during_fault, &f);
	w = test_writer_start(mem, 8);
	test_writer_join(w);
	CHECK_EQ(mem[0], 8);
	pthread_join(f.forker, NULL);
	CHECK_EQ(f.seen.forks, 1);
	CHECK(f.seen.fork_fd >= 0);
	CHECK(stats_of(eng).eagain >= 1);
	CHECK_EQ(stats_of(eng).errors, 0);
	close(f.seen.fork_fd);
	CHECK_EQ(waitpid(f.child, &status, 0), f.child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	uffdwp_engine_stop(eng);
	uffdwp_close(f.ctx);
}

/* Stop while faults are pending: every pending writer is released. */
struct gate {
	struct seen seen;
	sem_t release;
};

static int hold_first_fault(void *arg, const struct uffdwp_event *ev)
{
	struct gate *g = arg;

	if (ev->type == UFFDWP_EVENT_PAGEFAULT && g->seen.faults == 0) {
		record(&g->seen, ev);
		wait_sem(&g->release, 5000);
		return UFFDWP_RESOLVE;
	}
	return record(&g->seen, ev);
}

struct tid_writer {
	pthread_t thread;
	volatile char *addr;
	_Atomic pid_t tid;
	_Atomic bool done;
};

static void *tid_writer_main(void *arg)
{
	struct tid_writer *w = arg;

	w->tid = gettid();
	*w->addr = 2;
	w->done = true;
	return NULL;
}

TEST(engine_stop_releases_blocked_writers, ON_BOTH)
{
	enum { N = 6 };
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_THREAD, 0);
	char *mem = protected_pages(ctx, N);
	struct tid_writer w[N];
	struct uffdwp_engine *eng;
	struct gate g;

	seen_init(&g.seen);
	g.seen.keep_page = UINTPTR_MAX;
	sem_init(&g.release, 0, 0);
	eng = start(ctx, UFFDWP_ENGINE_THREAD, hold_first_fault, &g);
	memset(w, 0, sizeof(w));
	for (int i = 0; i < N; i++) {
		w[i].addr = mem + (size_t)i * test_page();
		CHECK_EQ(pthread_create(&w[i].thread, NULL, tid_writer_main, &w[i]), 0);
	}
	wait_sem(&g.seen.fault_seen, 5000);
	/* Every writer is asleep in its fault (the engine holds the first
	 * one in the callback; the others are queued). */
	for (int i = 0; i < N; i++)
		for (int tries = 0; !w[i].tid || test_thread_state(w[i].tid) != 'S'; tries++) {
			CHECK(tries < 5000);
			usleep(1000);
		}
	sem_post(&g.release);
	uffdwp_engine_stop(eng);
	/* None left blocked: each finishes without anyone resolving. */
	for (int i = 0; i < N; i++)
		pthread_join(w[i].thread, NULL);
	CHECK_EQ(g.seen.faults, N);
	uffdwp_close(ctx);
}

/* Stopping while writers keep faulting and pages keep being re-protected
 * neither hangs nor crashes; afterwards un-protecting releases everyone. */
struct churn {
	struct uffdwp *ctx;
	char *mem;
	size_t npages;
	_Atomic bool stop;
	_Atomic unsigned long writes;
	_Atomic unsigned writers;  /* each writer its own byte of each page */
};

static void *churn_writer(void *arg)
{
	struct churn *c = arg;
	size_t byte = c->writers++;

	for (unsigned long i = 0; !c->stop; i++) {
		((volatile char *)c->mem)[(i % c->npages) * test_page() + byte] = (char)i;
		c->writes++;
	}
	return NULL;
}

static void *churn_protector(void *arg)
{
	struct churn *c = arg;

	while (!c->stop)
		uffdwp_writeprotect(c->ctx, c->mem, c->npages * test_page(),
				    UFFDWP_WRITEPROTECT_MODE_WP);
	return NULL;
}

/* The program's own SIGBUS handler, installed before the engine: once
 * the in-thread engine has stopped, a write-protect SIGBUS lands here, and
 * this one resolves it too (else it would kill, as with no engine). */
static struct uffdwp *fallback_ctx;

static void fallback_resolve(int sig, siginfo_t *si, void *uc)
{
	uintptr_t page = (uintptr_t)si->si_addr & ~(uintptr_t)(test_page() - 1);

	if (uffdwp_writeprotect(fallback_ctx, (void *)page, test_page(), 0) < 0)
		_exit(3);
}

static void churn_and_stop(enum uffdwp_backend backend, enum uffdwp_engine_mode mode)
{
	struct churn c = { .npages = 16 };
	pthread_t writers[2], protector;
	struct uffdwp_engine *eng;
	unsigned long before;

	c.ctx = open_for(backend, mode, 0);
	c.mem = protected_pages(c.ctx, c.npages);
	if (uffdwp_features(c.ctx) & UFFDWP_FEATURE_SIGBUS) {
		struct sigaction sa = { .sa_sigaction = fallback_resolve,
					.sa_flags = SA_SIGINFO | SA_NODEFER };

		fallback_ctx = c.ctx;
		CHECK_OK(sigaction(SIGBUS, &sa, NULL));
	}
	eng = start(c.ctx, mode, NULL, NULL);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_create(&writers[i], NULL, churn_writer, &c), 0);
	CHECK_EQ(pthread_create(&protector, NULL, churn_protector, &c), 0);
	/* Stop once the writers are demonstrably making progress. */
	for (int tries = 0; c.writes < 1000; tries++) {
		CHECK(tries < 5000);
		usleep(1000);
	}
	uffdwp_engine_stop(eng);
	c.stop = true;
	pthread_join(protector, NULL);
	before = c.writes;
	/* Un-protecting wakes whoever faulted after the stop. */
	CHECK_OK(uffdwp_writeprotect(c.ctx, c.mem, c.npages * test_page(), 0));
	for (int i = 0; i < 2; i++)
		pthread_join(writers[i], NULL);
	CHECK(c.writes >= before);
	uffdwp_close(c.ctx);
}

TEST(engine_stop_while_faulting_thread, ON_BOTH)
{
	churn_and_stop(backend, UFFDWP_ENGINE_THREAD);
}

TEST(engine_stop_while_faulting_inthread, ON_BOTH)
{
	churn_and_stop(backend, UFFDWP_ENGINE_INTHREAD);
}

/* An idle handler thread sleeps: < 1 % of a CPU over 5 s, measured right
 * after a burst of faults (when it would be tempted to keep spinning). */
TEST_TIMEOUT(engine_idle_uses_no_cpu, ON_BOTH, 20)
{
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_THREAD, 0);
	char *mem = protected_pages(ctx, 8);
	struct uffdwp_engine *eng = start(ctx, UFFDWP_ENGINE_THREAD, NULL, NULL);
	struct timespec cpu0, cpu1, wall = { .tv_sec = 5 };
	double used_s;

	write_all_pages_from_threads(mem, 8, 3);
	CHECK_OK(clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu0));
	/* The measurement window itself; nothing is awaited. */
	while (nanosleep(&wall, &wall) < 0 && errno == EINTR)
		;
	CHECK_OK(clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu1));
	used_s = (double)(cpu1.tv_sec - cpu0.tv_sec) + (cpu1.tv_nsec - cpu0.tv_nsec) / 1e9;
	if (used_s >= 0.05)
		FAIL("idle engine used %.3f s of CPU in 5 s (limit 0.05 s)", used_s);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

TEST(engine_stats_counted, ON_BOTH)
{
	enum { N = 12 };
	struct uffdwp *ctx = open_for(backend, UFFDWP_ENGINE_THREAD, 0);
	char *mem = protected_pages(ctx, N);
	struct uffdwp_engine *eng = start(ctx, UFFDWP_ENGINE_THREAD, NULL, NULL);
	struct uffdwp_engine_stats st;
	uint64_t lat = 0, batches = 0;
	struct test_writer *w;

	for (int i = 0; i < N; i++) {
		w = test_writer_start(mem + (size_t)i * test_page(), 1);
		test_writer_join(w);
	}
	/* A resolution is counted when the waking call returns, which may be
	 * just after the woken writer has finished. */
	for (int tries = 0; (st = stats_of(eng)).resolved < N; tries++) {
		CHECK(tries < 5000);
		usleep(1000);
	}
	CHECK_EQ(st.faults, N);
	CHECK_EQ(st.resolved, N);
	CHECK_EQ(st.kept, 0);
	CHECK_EQ(st.events, 0);
	CHECK_EQ(st.errors, 0);
	for (int i = 0; i < UFFDWP_ENGINE_LATENCY_BUCKETS; i++)
		lat += st.latency_log2_ns[i];
	for (int i = 0; i < UFFDWP_ENGINE_BATCH_BUCKETS; i++)
		batches += st.batch_log2[i];
	CHECK_EQ(lat, N);
	CHECK_EQ(batches, st.batches);
	/* One writer at a time: one fault per batch. */
	CHECK_EQ(st.batches, N);
	CHECK_EQ(st.batch_log2[0], N);
	/* A resolution takes more than a nanosecond and less than a second. */
	CHECK_EQ(st.latency_log2_ns[0], 0);
	for (int i = 30; i < UFFDWP_ENGINE_LATENCY_BUCKETS; i++)
		CHECK_EQ(st.latency_log2_ns[i], 0);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}
