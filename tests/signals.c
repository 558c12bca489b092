/* SPDX-License-Identifier: MIT */
/*
 * The fault-signal layer (src/signals.c, uffdwp_engine(3), uffdwp_emulated(7)):
 * what happens to a fault whose context closes, whose engine stops, whose
 * un-protect fails, whose writer leaves with siglongjmp(), and to the
 * library's own state when the program protects its heap. Each test is the
 * regression test of one defect of issue 9 (named in its comment).
 */
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include "test.h"
#include "backend.h"  /* UFFDWP__UNDER_TSAN, the private allocator */

/* Features for a context whose faults an engine in mode can resolve. */
static uint64_t features_for(enum uffdwp_backend backend, enum uffdwp_engine_mode mode)
{
	uint64_t f = UFFDWP_FEATURE_WP_UNPOPULATED | UFFDWP_FEATURE_THREAD_ID;

	if (backend == UFFDWP_BACKEND_EMULATED)
		return 0;
	if (test_mem != MEM_ANON)
		f |= UFFDWP_FEATURE_WP_HUGETLBFS_SHMEM;
	if (mode == UFFDWP_ENGINE_INTHREAD)
		f = (f & ~UFFDWP_FEATURE_THREAD_ID) | UFFDWP_FEATURE_SIGBUS;
	return f;
}

static struct uffdwp_engine *start_engine(struct uffdwp *ctx, enum uffdwp_engine_mode mode,
					  uffdwp_fault_fn fn, void *arg)
{
	struct uffdwp_engine_opts o = { .sz = sizeof(o), .mode = mode, .fn = fn, .arg = arg };
	struct uffdwp_engine *eng = NULL;

	CHECK_OK(uffdwp_engine_start(&eng, ctx, &o));
	return eng;
}

/* Writers that write the pages of a region in turn until told to stop. */
struct writers {
	char *mem;
	size_t len, page;
	pthread_t thread[4];
	int n;
	_Atomic int next_id;  /* each writer its own byte of every page */
	_Atomic bool stop;
	_Atomic unsigned long writes;
};

static void *writer_main(void *arg)
{
	struct writers *w = arg;
	size_t npages = w->len / w->page, me = (size_t)atomic_fetch_add(&w->next_id, 1);

	for (unsigned long i = 0; !atomic_load(&w->stop); i++) {
		((volatile char *)w->mem)[(i % npages) * w->page + me] = (char)i;
		atomic_fetch_add(&w->writes, 1);
	}
	return NULL;
}

static void writers_start(struct writers *w, char *mem, size_t len, int n)
{
	w->mem = mem;
	w->len = len;
	w->page = test_mem_page();
	w->n = n;
	atomic_store(&w->stop, false);
	for (int i = 0; i < n; i++)
		CHECK_EQ(pthread_create(&w->thread[i], NULL, writer_main, w), 0);
}

static void writers_join(struct writers *w)
{
	atomic_store(&w->stop, true);
	for (int i = 0; i < w->n; i++)
		pthread_join(w->thread[i], NULL);
}

static double elapsed_s(const struct timespec *since)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - since->tv_sec) + (now.tv_nsec - since->tv_nsec) / 1e9;
}

/* What the kernel queues for a write fault (SIGSEGV on a read-only page,
 * SIGBUS on a SIGBUS context), queued to this thread by hand: the
 * delivery of a fault raised earlier. */
static void deliver_fault_signal(int sig, int code, void *addr)
{
	siginfo_t si = { .si_signo = sig, .si_code = code };

	si.si_addr = addr;
	CHECK_OK(syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), sig, &si));
}

/* ------------------------------------------------------------------------
 * Item 2: the last close while writers fault
 * ------------------------------------------------------------------------ */

struct close_loop {
	enum uffdwp_backend backend;
	size_t len;
};

/* Writers fault while this thread opens, protects and closes, over and
 * over: each close releases writers whose faults may not be delivered
 * yet. (The emulated backend used to put the previous SIGSEGV action back
 * on the last close, and such a fault then killed the process.) */
static void close_while_faulting(void *arg)
{
	struct close_loop *c = arg;
	char *mem = test_mem_map(c->len, true);
	struct writers w = { 0 };
	struct timespec t0;
	int cycles = 0;

	signal(SIGSEGV, SIG_DFL);  /* sanitizers install their own */
	writers_start(&w, mem, c->len, 4);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (; cycles < 20000 && elapsed_s(&t0) < 3; cycles++) {
		struct uffdwp *ctx = test_open(c->backend, 0);

		CHECK_OK(uffdwp_register(ctx, mem, c->len, UFFDWP_REGISTER_MODE_WP));
		CHECK_OK(uffdwp_writeprotect(ctx, mem, c->len, UFFDWP_WRITEPROTECT_MODE_WP));
		uffdwp_close(ctx);
	}
	writers_join(&w);
	printf("%d open-protect-close cycles, %lu writes\n", cycles, atomic_load(&w.writes));
	if (c->backend == UFFDWP_BACKEND_EMULATED) {
		/* The same, made certain: the signal of a write fault raised
		 * while the page was protected, delivered after the close. */
		struct uffdwp *ctx = test_open(c->backend, 0);

		CHECK_OK(uffdwp_register(ctx, mem, c->len, UFFDWP_REGISTER_MODE_WP));
		CHECK_OK(uffdwp_writeprotect(ctx, mem, c->len, UFFDWP_WRITEPROTECT_MODE_WP));
		uffdwp_close(ctx);
		deliver_fault_signal(SIGSEGV, SEGV_ACCERR, mem);
		mem[0] = 2;  /* the retried write */
	}
}

TEST_MEM(last_close_while_writers_fault, ON_BOTH, ON_ALLMEM)
{
	struct close_loop c = { backend, (test_mem == MEM_HUGETLB ? 2 : 16) * test_mem_page() };

	test_check_exited_0(test_in_child(close_while_faulting, &c, 20));
}

/* ------------------------------------------------------------------------
 * Item 3: a SIGBUS delivered after its engine stopped
 * ------------------------------------------------------------------------ */

static void exit_42(int sig)
{
	_exit(42);
}

static void deliver_sigbus(void *addr)
{
	deliver_fault_signal(SIGBUS, BUS_ADRERR, addr);
}

struct late_sigbus {
	char *page;
	_Atomic pid_t tid;
	_Atomic bool done;
};

static void *late_sigbus_writer(void *arg)
{
	struct late_sigbus *l = arg;

	atomic_store(&l->tid, gettid());
	deliver_sigbus(l->page);
	atomic_store(&l->done, true);
	return NULL;
}

/* Polls every 50 us, for 5 s at most: the race tests below go through
 * their window a thousand times and more. */
enum { POLL_US = 50, POLL_TRIES = 5000000 / POLL_US };

static void wait_asleep(_Atomic pid_t *tid)
{
	for (int tries = 0; !atomic_load(tid) || test_thread_state(atomic_load(tid)) != 'S';
	     tries++) {
		CHECK(tries < POLL_TRIES);
		usleep(POLL_US);
	}
}

static void wait_at_least(_Atomic int *v, int want)
{
	for (int tries = 0; atomic_load(v) < want; tries++) {
		CHECK(tries < POLL_TRIES);
		usleep(POLL_US);
	}
}

/*
 * A write-protect SIGBUS raised while the engine ran and delivered after
 * uffdwp_engine_stop(), the page still protected: the writer waits for the
 * page's resolver (here the program's un-protect) instead of reaching the
 * previous action. touch: a populated page, or a never-touched one
 * (WP_UNPOPULATED). Then, the page un-protected, a late SIGBUS at it
 * (never touched: not even present) retries instead of killing.
 */
static void sigbus_after_stop(void *arg)
{
	bool touch = arg != NULL;
	size_t len = test_mem_page();
	struct uffdwp *ctx = test_open(UFFDWP_BACKEND_KERNEL,
				       features_for(UFFDWP_BACKEND_KERNEL, UFFDWP_ENGINE_INTHREAD));
	struct sigaction previous = { .sa_handler = exit_42 };
	struct late_sigbus l = { .page = test_mem_map(len, touch) };
	pthread_t t;

	CHECK_OK(sigaction(SIGBUS, &previous, NULL));
	CHECK_OK(uffdwp_register(ctx, l.page, len, UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, l.page, len, UFFDWP_WRITEPROTECT_MODE_WP));
	uffdwp_engine_stop(start_engine(ctx, UFFDWP_ENGINE_INTHREAD, NULL, NULL));
	CHECK_EQ(pthread_create(&t, NULL, late_sigbus_writer, &l), 0);
	wait_asleep(&l.tid);
	CHECK(!atomic_load(&l.done));
	CHECK_OK(uffdwp_writeprotect(ctx, l.page, len, 0));
	pthread_join(t, NULL);
	deliver_sigbus(l.page);  /* not protected any more: retried */
	uffdwp_close(ctx);
}

TEST_MEM(late_sigbus_after_engine_stop_waits, ON_KERNEL, ON_ALLMEM)
{
	test_check_exited_0(test_in_child(sigbus_after_stop, (void *)1, 20));
}

TEST_MEM(late_sigbus_after_engine_stop_never_touched, ON_KERNEL, ON_ANON | ON_SHMEM)
{
	test_check_exited_0(test_in_child(sigbus_after_stop, NULL, 20));
}

/* ------------------------------------------------------------------------
 * Item 5: an un-protect that fails must not leave the writer asleep
 * ------------------------------------------------------------------------ */

/* hugetlbfs: the engine used to un-protect base pages of a huge page
 * (-EINVAL) and leave the writer blocked (THREAD) or dead (kernel
 * INTHREAD). */
static void engine_on_huge_pages(enum uffdwp_backend backend, enum uffdwp_engine_mode mode)
{
	size_t len = 2 * test_mem_page();
	char *mem = test_mem_map(len, true);
	struct uffdwp *ctx = test_open(backend, features_for(backend, mode));
	struct uffdwp_engine_stats st = { .sz = sizeof(st) };
	struct uffdwp_engine *eng;
	struct test_writer *w;

	CHECK_OK(uffdwp_register(ctx, mem, len, UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, len, UFFDWP_WRITEPROTECT_MODE_WP));
	eng = start_engine(ctx, mode, NULL, NULL);
	w = test_writer_start(mem + test_mem_page() + 4096 + 5, 9);
	if (!test_writer_done(w, 10000))
		FAIL("the writer is still blocked after 10 s");
	test_writer_join(w);
	CHECK_EQ(mem[test_mem_page() + 4096 + 5], 9);
	/* Counted once the waking call returns: maybe after the writer ran. */
	for (int tries = 0; (uffdwp_engine_stats(eng, &st), st.resolved) < 1; tries++) {
		CHECK(tries < 5000);
		usleep(1000);
	}
	CHECK_EQ(st.errors, 0);
	CHECK_EQ(st.resolved, 1);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

TEST_MEM(engine_thread_resolves_huge_pages, ON_BOTH, ON_HUGETLB)
{
	engine_on_huge_pages(backend, UFFDWP_ENGINE_THREAD);
}

TEST_MEM(engine_inthread_resolves_huge_pages, ON_BOTH, ON_HUGETLB)
{
	engine_on_huge_pages(backend, UFFDWP_ENGINE_INTHREAD);
}

/* ------------------------------------------------------------------------
 * Item 6: siglongjmp out of a handler that interrupted a blocked writer
 * ------------------------------------------------------------------------ */

enum { JUMPER_ROUNDS = 1000 };

struct jumper {
	char *mem;  /* two pages: A, B */
	size_t page;
	sigjmp_buf env;
	sem_t go;  /* posted when a round's pages are protected */
	_Atomic pid_t tid;
	_Atomic int rounds_done;
};

static struct jumper *the_jumper;

static void jump_out(int sig)
{
	siglongjmp(the_jumper->env, 1);
}

/* Each round: write A (blocks); the program's signal handler leaves that
 * wait with siglongjmp; write B instead (blocks until resolved). */
static void *jumper_main(void *arg)
{
	struct jumper *j = arg;

	atomic_store(&j->tid, gettid());
	for (volatile int round = 0; round < JUMPER_ROUNDS; round++) {
		while (sem_wait(&j->go) < 0)
			;
		if (sigsetjmp(j->env, 1) == 0)
			((volatile char *)j->mem)[0] = (char)round;
		((volatile char *)j->mem)[j->page] = (char)round;
		atomic_store(&j->rounds_done, round + 1);
	}
	return NULL;
}

TEST_MEM(siglongjmp_out_of_blocked_write, ON_BOTH, ON_ALLMEM)
{
	struct jumper j = { .page = test_mem_page() };
	struct sigaction sa = { .sa_handler = jump_out };
	struct uffdwp *ctx = test_open(backend, features_for(backend, UFFDWP_ENGINE_THREAD));
	struct uffdwp_event ev;
	pthread_t t;

	if (UFFDWP__UNDER_TSAN)
		SKIP("TSan defers signal handlers past the fault");
	j.mem = test_mem_map(2 * j.page, true);
	sem_init(&j.go, 0, 0);
	the_jumper = &j;
	CHECK_OK(sigaction(SIGUSR1, &sa, NULL));
	CHECK_OK(uffdwp_register(ctx, j.mem, 2 * j.page, UFFDWP_REGISTER_MODE_WP));
	CHECK_EQ(pthread_create(&t, NULL, jumper_main, &j), 0);
	for (int round = 0; round < JUMPER_ROUNDS; round++) {
		CHECK_OK(uffdwp_writeprotect(ctx, j.mem, 2 * j.page, UFFDWP_WRITEPROTECT_MODE_WP));
		sem_post(&j.go);
		ev = test_read_event(ctx);
		CHECK_EQ(ev.pagefault.address, (uintptr_t)j.mem);
		wait_asleep(&j.tid);
		CHECK_EQ(pthread_kill(t, SIGUSR1), 0);
		ev = test_read_event(ctx);
		CHECK_EQ(ev.pagefault.address, (uintptr_t)j.mem + j.page);
		CHECK_OK(uffdwp_writeprotect(ctx, j.mem + j.page, j.page, 0));
		wait_at_least(&j.rounds_done, round + 1);
		/* The abandoned wait on A: whatever is left of it goes. */
		CHECK_OK(uffdwp_writeprotect(ctx, j.mem, j.page, 0));
		CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	}
	pthread_join(t, NULL);
	CHECK_EQ(j.mem[j.page], (char)(JUMPER_ROUNDS - 1));
	uffdwp_close(ctx);
}

/* ------------------------------------------------------------------------
 * Item 7: a sleeping in-thread callback stops nobody else
 * ------------------------------------------------------------------------ */

struct sleeper {
	sem_t entered, release, others_done;
};

static int sleep_in_callback(void *arg, const struct uffdwp_event *ev)
{
	struct sleeper *s = arg;

	if (ev->type == UFFDWP_EVENT_PAGEFAULT) {
		sem_post(&s->entered);
		while (sem_wait(&s->release) < 0)
			;
	}
	return UFFDWP_RESOLVE;
}

/* Register on an unrelated context, and fork, while the callback sleeps. */
static void *unrelated_work(void *arg)
{
	struct sleeper *s = arg;
	struct uffdwp *other = test_open(UFFDWP_BACKEND_EMULATED, 0);
	char *mem = test_map(2, true);
	int status;
	pid_t pid;

	CHECK_OK(uffdwp_register(other, mem, 2 * test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_unregister(other, mem, 2 * test_page()));
	uffdwp_close(other);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		_exit(0);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	sem_post(&s->others_done);
	return NULL;
}

TEST(sleeping_inthread_callback_blocks_nobody_else, ON_EMULATED)
{
	struct uffdwp *ctx = test_open(backend, 0);
	char *mem = test_map(1, true);
	struct uffdwp_engine *eng;
	struct test_writer *w;
	struct sleeper s;
	pthread_t t;
	bool done;

	sem_init(&s.entered, 0, 0);
	sem_init(&s.release, 0, 0);
	sem_init(&s.others_done, 0, 0);
	CHECK_OK(uffdwp_register(ctx, mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	eng = start_engine(ctx, UFFDWP_ENGINE_INTHREAD, sleep_in_callback, &s);
	w = test_writer_start(mem, 3);
	CHECK(test_sem_wait(&s.entered, 10000));
	CHECK_EQ(pthread_create(&t, NULL, unrelated_work, &s), 0);
	done = test_sem_wait(&s.others_done, 10000);
	sem_post(&s.release);
	pthread_join(t, NULL);
	if (!done)
		FAIL("register and fork waited for a sleeping callback of another context");
	test_writer_join(w);
	CHECK_EQ(mem[0], 3);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

/* ------------------------------------------------------------------------
 * Item 8: engine start and stop across fork()
 * ------------------------------------------------------------------------ */

struct churner {
	enum uffdwp_backend backend;
	struct uffdwp *ctx;
	_Atomic bool stop;
	_Atomic unsigned long cycles;
};

static void *start_stop_loop(void *arg)
{
	struct churner *c = arg;

	while (!atomic_load(&c->stop)) {
		uffdwp_engine_stop(start_engine(c->ctx, UFFDWP_ENGINE_THREAD, NULL, NULL));
		atomic_fetch_add(&c->cycles, 1);
	}
	return NULL;
}

/* CALLER: no thread to create in the child (ASan's own thread registry
 * does not survive a fork while the parent creates threads); it takes the
 * same lock as any mode. */
static void child_starts_an_engine(void *arg)
{
	struct churner *c = arg;
	struct uffdwp *ctx = test_open(c->backend, 0);

	uffdwp_engine_stop(start_engine(ctx, UFFDWP_ENGINE_CALLER, NULL, NULL));
	uffdwp_close(ctx);
}

TEST_TIMEOUT(engine_start_stop_across_fork, ON_BOTH, 120)
{
	struct churner c = { .backend = backend, .ctx = test_open(backend, 0) };
	pthread_t t;

	CHECK_EQ(pthread_create(&t, NULL, start_stop_loop, &c), 0);
	/* Past the engine's first start (its pthread_once): glibc restarts a
	 * once that a fork interrupted in the child, TSan's interceptor does
	 * not. */
	while (atomic_load(&c.cycles) == 0)
		sched_yield();
	for (int i = 0; i < 200; i++)
		test_check_exited_0(test_in_child(child_starts_an_engine, &c, 10));
	atomic_store(&c.stop, true);
	pthread_join(t, NULL);
	printf("%lu start/stop cycles during 200 forks\n", atomic_load(&c.cycles));
	uffdwp_close(c.ctx);
}

/* A fork child's copy of an in-thread engine: stopping it in the child
 * removes its hook there, and the child's context works without it (the
 * fault is queued and read as on any context without an engine). */
static struct uffdwp *forked_ctx;
static struct uffdwp_engine *forked_eng;

static void child_stops_inherited_engine(void *arg)
{
	char *mem = test_map(1, true);
	struct uffdwp_event ev;
	struct test_writer *w;

	uffdwp_engine_stop(forked_eng);
	CHECK_OK(uffdwp_register(forked_ctx, mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(forked_ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	w = test_writer_start(mem, 4);
	ev = test_read_event(forked_ctx);
	CHECK_EQ(ev.pagefault.address, (uintptr_t)mem);
	CHECK_OK(uffdwp_writeprotect(forked_ctx, mem, test_page(), 0));
	test_writer_join(w);
	uffdwp_close(forked_ctx);
}

TEST(fork_child_stops_inherited_inthread_engine, ON_EMULATED)
{
	forked_ctx = test_open(backend, 0);
	forked_eng = start_engine(forked_ctx, UFFDWP_ENGINE_INTHREAD, NULL, NULL);
	test_check_exited_0(test_in_child(child_stops_inherited_engine, NULL, 20));
	uffdwp_engine_stop(forked_eng);
	uffdwp_close(forked_ctx);
}

/* ------------------------------------------------------------------------
 * Item 15: the program protects its own heap
 * ------------------------------------------------------------------------ */

/* The [heap] mappings (one or several, back to back), page-aligned. */
static bool find_heap(uintptr_t *start, uintptr_t *end)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[256];
	uintptr_t a, b;
	bool found = false;

	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f))
		if (strstr(line, "[heap]") && sscanf(line, "%lx-%lx", &a, &b) == 2) {
			if (!found)
				*start = a;
			*end = b;
			found = true;
		}
	fclose(f);
	return found;
}

struct heap_writer {
	pthread_t thread;
	char *buf;  /* in [heap] */
	_Atomic bool stop;
	_Atomic unsigned long writes;
};

static void *heap_writer_main(void *arg)
{
	struct heap_writer *h = arg;

	for (unsigned long i = 0; !atomic_load(&h->stop); i++) {
		h->buf[i % 512] = (char)i;
		atomic_fetch_add(&h->writes, 1);
	}
	return NULL;
}

/*
 * The whole [heap] protected while threads write their buffers there and
 * this thread allocates: every fault must be resolved and the process
 * survive. (The library kept fault-path state in the heap: its engine,
 * its emulated tables, its waiters.)
 */
static void protect_the_heap(enum uffdwp_backend backend, enum uffdwp_engine_mode mode)
{
	struct heap_writer h[2];
	struct uffdwp *ctx = test_open(backend, features_for(backend, mode));
	struct uffdwp_engine *eng;
	void *blocks[64];
	uintptr_t start, end;
	struct timespec t0;

	for (int i = 0; i < 2; i++) {
		memset(&h[i], 0, sizeof(h[i]));
		h[i].buf = malloc(512);
	}
	if (!find_heap(&start, &end))
		SKIP("no [heap] mapping (a sanitizer's allocator does not use brk)");
	CHECK((uintptr_t)h[0].buf >= start && (uintptr_t)h[0].buf < end);
	CHECK_OK(uffdwp_register(ctx, (void *)start, end - start, UFFDWP_REGISTER_MODE_WP));
	eng = start_engine(ctx, mode, NULL, NULL);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_create(&h[i].thread, NULL, heap_writer_main, &h[i]), 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int round = 0; elapsed_s(&t0) < 1; round++) {
		CHECK_OK(uffdwp_writeprotect(ctx, (void *)start, end - start,
					     UFFDWP_WRITEPROTECT_MODE_WP));
		for (int i = 0; i < 64; i++)
			blocks[i] = malloc(64 + (size_t)(i + round) % 256);
		for (int i = 0; i < 64; i++)
			free(blocks[i]);
	}
	for (int i = 0; i < 2; i++) {
		atomic_store(&h[i].stop, true);
		pthread_join(h[i].thread, NULL);
		CHECK(atomic_load(&h[i].writes) > 0);
	}
	CHECK_OK(uffdwp_writeprotect(ctx, (void *)start, end - start, 0));
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

TEST(protect_the_heap_thread, ON_BOTH)
{
	protect_the_heap(backend, UFFDWP_ENGINE_THREAD);
}

TEST(protect_the_heap_inthread, ON_BOTH)
{
	protect_the_heap(backend, UFFDWP_ENGINE_INTHREAD);
}

/*
 * Live snapshots of the whole [heap] while threads write there and this
 * thread allocates. The snapshot kept its state, and the tracker its bits
 * and locks, in the heap: the saver died of SIGBUS or SIGSEGV at its first
 * write (it also blocked those signals). Each snapshot must also be the
 * heap at its instant: a marker written just before begin and overwritten
 * just after restores to its old value. Restores come last, the tracker
 * gone: the emulated one keeps clean heap pages read-only, where a
 * system call (restore's reads into its buffers) fails with EFAULT.
 */
enum { HEAP_ROUNDS = 100 };

static char heap_marker(int round)
{
	return (char)('a' + round % 26);
}

static void snapshot_the_heap(enum uffdwp_backend backend, enum uffdwp_engine_mode mode,
			      bool tracked)
{
	struct heap_writer h[2];
	struct uffdwp_tracker *t = NULL;
	size_t page = test_page(), marker_len = 3 * page;
	char *marker = malloc(marker_len);
	int fds[HEAP_ROUNDS];
	uintptr_t start, end;

	for (int i = 0; i < 2; i++) {
		memset(&h[i], 0, sizeof(h[i]));
		h[i].buf = malloc(512);
	}
	if (!find_heap(&start, &end))
		SKIP("no [heap] mapping (a sanitizer's allocator does not use brk)");
	CHECK((uintptr_t)marker >= start && (uintptr_t)marker + marker_len <= end);
	if (tracked) {
		struct uffdwp_tracker_opts to = {
			.sz = sizeof(to),
			.method = backend == UFFDWP_BACKEND_KERNEL ? UFFDWP_TRACK_SYNC
								   : UFFDWP_TRACK_EMULATED,
		};

		CHECK_OK(uffdwp_tracker_create(&t, &to));
		CHECK_OK(uffdwp_tracker_add(t, (void *)start, end - start));
	}
	for (int i = 0; i < 2; i++)
		CHECK_EQ(pthread_create(&h[i].thread, NULL, heap_writer_main, &h[i]), 0);
	for (int round = 0; round < HEAP_ROUNDS; round++) {
		struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .backend = backend,
						  .engine_mode = mode, .tracker = t };
		struct uffdwp_snapshot_region r = { start, end - start };
		struct uffdwp_snapshot *snap = NULL;
		void *blocks[64];

		fds[round] = o.fd = memfd_create("uffdwp-test-heap", MFD_CLOEXEC);
		CHECK(o.fd >= 0);
		memset(marker, heap_marker(round), marker_len);
		CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
		memset(marker, 0xee, marker_len);
		for (int i = 0; i < 64; i++)
			blocks[i] = malloc(64 + (size_t)(i + round) % 256);
		for (int i = 0; i < 64; i++)
			free(blocks[i]);
		CHECK_OK(uffdwp_snapshot_end(snap));
	}
	for (int i = 0; i < 2; i++) {
		atomic_store(&h[i].stop, true);
		pthread_join(h[i].thread, NULL);
		CHECK(atomic_load(&h[i].writes) > 0);
	}
	uffdwp_tracker_destroy(t);
	for (int round = 0; round < HEAP_ROUNDS; round++) {
		char path[64];
		const char *const paths[] = { path };
		void *image;
		size_t image_len;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fds[round]);
		CHECK_OK(uffdwp_snapshot_restore_mapping(paths, 1, &image, &image_len, NULL));
		CHECK_EQ(image_len, end - start);
		for (size_t i = 0; i < marker_len; i++)
			if (((char *)image)[(uintptr_t)marker - start + i] != heap_marker(round))
				FAIL("round %d: marker byte %zu is not the instant's", round, i);
		munmap(image, image_len);
		close(fds[round]);
	}
}

/*
 * The same, the saver's allocations forced into the main arena
 * (M_ARENA_MAX 1): its index and batch buffers, malloc'd there, made the
 * saver fault on the heap while a one-page side buffer was full, and wait
 * for room only it makes. A writer writes all over an 8 MiB heap block.
 */
struct heap_sweeper {
	pthread_t thread;
	char *block;
	size_t len;
	_Atomic bool stop;
};

static void *heap_sweeper_main(void *arg)
{
	struct heap_sweeper *w = arg;

	for (size_t i = 0; !atomic_load(&w->stop); i++)
		w->block[(i * 4096 + i % 4096) % w->len]++;
	return NULL;
}

static void snapshot_heap_one_arena(void *arg)
{
	enum uffdwp_engine_mode mode = (enum uffdwp_engine_mode)(uintptr_t)arg;
	struct heap_sweeper w = { .len = 8 << 20 };
	int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	uintptr_t start, end;

	/* The block in [heap]: below the mmap threshold. */
	if (mallopt(M_ARENA_MAX, 1) != 1 || mallopt(M_MMAP_THRESHOLD, 16 << 20) != 1)
		SKIP("malloc(3) takes no mallopt() here (a sanitizer's allocator)");
	w.block = malloc(w.len);
	CHECK(w.block != NULL);
	memset(w.block, 1, w.len);
	if (!find_heap(&start, &end))
		SKIP("no [heap] mapping (a sanitizer's allocator does not use brk)");
	CHECK((uintptr_t)w.block >= start && (uintptr_t)w.block + w.len <= end);
	CHECK_EQ(pthread_create(&w.thread, NULL, heap_sweeper_main, &w), 0);
	for (int round = 0; round < 30; round++) {
		struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = fd, .engine_mode = mode,
						  .side_buffer = test_page(),
						  .codec = UFFDWP_CODEC_ZSTD };
		struct uffdwp_snapshot_region r = { start, end - start };
		struct uffdwp_snapshot *snap = NULL;

		CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
		CHECK_OK(uffdwp_snapshot_end(snap));
	}
	atomic_store(&w.stop, true);
	pthread_join(w.thread, NULL);
	close(fd);
}

TEST(snapshot_the_heap_one_arena, ON_NONE)
{
	test_check_exited_0(test_in_child(snapshot_heap_one_arena,
					  (void *)(uintptr_t)UFFDWP_ENGINE_AUTO, 20));
	test_check_exited_0(test_in_child(snapshot_heap_one_arena,
					  (void *)(uintptr_t)UFFDWP_ENGINE_THREAD, 20));
}

TEST(snapshot_the_heap_inthread, ON_BOTH)
{
	snapshot_the_heap(backend, UFFDWP_ENGINE_AUTO, false);
}

TEST(snapshot_the_heap_thread, ON_BOTH)
{
	snapshot_the_heap(backend, UFFDWP_ENGINE_THREAD, false);
}

TEST(snapshot_the_heap_tracked, ON_BOTH)
{
	snapshot_the_heap(backend, UFFDWP_ENGINE_AUTO, true);
}

/* ------------------------------------------------------------------------
 * Item 16: uffdwp_close() while its engine runs
 * ------------------------------------------------------------------------ */

static void close_then_stop(enum uffdwp_backend backend, enum uffdwp_engine_mode mode)
{
	size_t len = 4 * test_mem_page();
	char *mem = test_mem_map(len, true);
	struct uffdwp *ctx = test_open(backend, features_for(backend, mode));
	struct writers w = { 0 };
	struct uffdwp_engine *eng;

	CHECK_OK(uffdwp_register(ctx, mem, len, UFFDWP_REGISTER_MODE_WP));
	eng = start_engine(ctx, mode, NULL, NULL);
	writers_start(&w, mem, len, 2);
	for (int i = 0; i < 200; i++) {
		CHECK_OK(uffdwp_writeprotect(ctx, mem, len, UFFDWP_WRITEPROTECT_MODE_WP));
		if (mode == UFFDWP_ENGINE_CALLER)
			CHECK(uffdwp_engine_dispatch(eng) >= 0);
		sched_yield();
	}
	uffdwp_close(ctx);  /* the engine still runs */
	writers_join(&w);
	if (mode == UFFDWP_ENGINE_CALLER)
		CHECK_RET(uffdwp_engine_dispatch(eng), -EBADF);
	CHECK_OK(uffdwp_engine_flush(eng));
	uffdwp_engine_stop(eng);
}

TEST_MEM(close_with_engine_running_thread, ON_BOTH, ON_ANON | ON_SHMEM)
{
	close_then_stop(backend, UFFDWP_ENGINE_THREAD);
}

TEST_MEM(close_with_engine_running_inthread, ON_BOTH, ON_ANON | ON_SHMEM)
{
	close_then_stop(backend, UFFDWP_ENGINE_INTHREAD);
}

TEST_MEM(close_with_engine_running_caller, ON_BOTH, ON_ANON | ON_SHMEM)
{
	close_then_stop(backend, UFFDWP_ENGINE_CALLER);
}

/* The library's own memory (where its fault path writes) cannot be
 * registered: protecting it would stop the fault path itself. */
TEST(register_refuses_library_memory, ON_BOTH)
{
	struct uffdwp *ctx = test_open(backend, 0);
	char *own = uffdwp__private_alloc(64);
	uintptr_t page = (uintptr_t)own & ~(uintptr_t)(test_page() - 1);

	CHECK(own != NULL);
	CHECK_RET(uffdwp_register(ctx, (void *)page, test_page(), UFFDWP_REGISTER_MODE_WP),
		  -EBUSY);
	/* Nor a range that only overlaps it. */
	CHECK_RET(uffdwp_register(ctx, (void *)(page - test_page()), 2 * test_page(),
				  UFFDWP_REGISTER_MODE_WP), -EBUSY);
	uffdwp__private_free(own);
	uffdwp_close(ctx);
}

/* ------------------------------------------------------------------------
 * Item 22: a writer whose page is kept protected in its signal handler
 * waits there holding nothing, and takes signals
 * ------------------------------------------------------------------------ */

struct kept_round {
	struct jumper *j;
	sem_t fault_on_a;  /* posted by the callback at each fault on page A */
};

/* Keeps page A protected, resolves B. */
static int keep_page_a(void *arg, const struct uffdwp_event *ev)
{
	struct kept_round *k = arg;

	if (ev->type != UFFDWP_EVENT_PAGEFAULT || ev->pagefault.address != (uintptr_t)k->j->mem)
		return UFFDWP_RESOLVE;
	sem_post(&k->fault_on_a);  /* async-signal-safe */
	return UFFDWP_KEEP;
}

/* In-thread UFFDWP_KEEP left the page writable (it counted as RESOLVE);
 * a kept page must leave its writer waiting, as on a handler thread, and
 * a signal handler of the program's must run meanwhile and may leave with
 * siglongjmp(), after which closing does not wait for ever. */
TEST_MEM(inthread_keep_waits_taking_signals, ON_BOTH, ON_ALLMEM)
{
	struct jumper j = { .page = test_mem_page() };
	struct kept_round k = { .j = &j };
	struct sigaction sa = { .sa_handler = jump_out };
	struct uffdwp *ctx = test_open(backend, features_for(backend, UFFDWP_ENGINE_INTHREAD));
	struct uffdwp_engine_stats st = { .sz = sizeof(st) };
	struct uffdwp_engine *eng;
	pthread_t t;

	j.mem = test_mem_map(2 * j.page, true);
	sem_init(&j.go, 0, 0);
	sem_init(&k.fault_on_a, 0, 0);
	the_jumper = &j;
	CHECK_OK(sigaction(SIGUSR1, &sa, NULL));
	CHECK_OK(uffdwp_register(ctx, j.mem, 2 * j.page, UFFDWP_REGISTER_MODE_WP));
	eng = start_engine(ctx, UFFDWP_ENGINE_INTHREAD, keep_page_a, &k);
	CHECK_EQ(pthread_create(&t, NULL, jumper_main, &j), 0);
	for (int round = 0; round < JUMPER_ROUNDS; round++) {
		CHECK_OK(uffdwp_writeprotect(ctx, j.mem, 2 * j.page, UFFDWP_WRITEPROTECT_MODE_WP));
		sem_post(&j.go);
		if (!test_sem_wait(&k.fault_on_a, 5000))
			FAIL("round %d: no fault on the kept page", round);
		wait_asleep(&j.tid);
		/* Asleep in the write of A, not past the round. */
		CHECK_EQ(atomic_load(&j.rounds_done), round);
		/* (TSan defers signal handlers past the fault: there, the
		 * un-protect of A is what releases the writer.) */
		if (UFFDWP__UNDER_TSAN)
			CHECK_OK(uffdwp_writeprotect(ctx, j.mem, j.page, 0));
		else
			CHECK_EQ(pthread_kill(t, SIGUSR1), 0);
		wait_at_least(&j.rounds_done, round + 1);
	}
	pthread_join(t, NULL);
	CHECK_EQ(j.mem[j.page], (char)(JUMPER_ROUNDS - 1));
	CHECK_OK(uffdwp_engine_stats(eng, &st));
	CHECK(st.kept >= JUMPER_ROUNDS);
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

/* A kept writer whose signal handler forks: in the child, the wait it
 * returns to was the parent's, and the write must go on (it waited for
 * ever on the kernel backend: nothing moves the generation there). Each
 * round a new writer writes its own value over the last round's. */
enum { FORK_ROUNDS = 1000 };

struct fork_in_wait {
	char *mem;
	pid_t parent;
	char value;  /* this round's */
	_Atomic pid_t tid, child;
};

static struct fork_in_wait *the_fork_in_wait;

static void fork_from_handler(int sig)
{
	pid_t pid = fork();

	if (pid > 0)
		atomic_store(&the_fork_in_wait->child, pid);
}

static void *fork_in_wait_writer(void *arg)
{
	struct fork_in_wait *f = arg;

	atomic_store(&f->tid, gettid());
	((volatile char *)f->mem)[0] = f->value;  /* kept */
	if (getpid() != f->parent)
		_exit(((volatile char *)f->mem)[0] == f->value ? 0 : 1);
	return NULL;
}

/* The child's status; kills it if it still runs after 10 s. */
static int reap_within_10s(pid_t child)
{
	int status = 0;

	for (int tries = 0; waitpid(child, &status, WNOHANG) == 0; tries++) {
		if (tries == 10000000 / POLL_US) {
			kill(child, SIGKILL);
			waitpid(child, &status, 0);
			FAIL("the fork child's writer still waits after 10 s");
		}
		usleep(POLL_US);
	}
	return status;
}

TEST(kept_writer_forks_from_its_handler, ON_BOTH)
{
	struct jumper j = { .page = test_page() };
	struct kept_round k = { .j = &j };
	struct fork_in_wait f = { .parent = getpid() };
	/* SA_RESTART: the kernel restarts the interrupted futex wait. */
	struct sigaction sa = { .sa_handler = fork_from_handler, .sa_flags = SA_RESTART };
	struct uffdwp *ctx = test_open(backend, features_for(backend, UFFDWP_ENGINE_INTHREAD));
	struct uffdwp_engine *eng;
	pthread_t t;

	if (UFFDWP__UNDER_TSAN)
		SKIP("TSan defers signal handlers past the fault");
	j.mem = f.mem = test_map(2, true);
	sem_init(&k.fault_on_a, 0, 0);
	the_fork_in_wait = &f;
	CHECK_OK(sigaction(SIGUSR1, &sa, NULL));
	CHECK_OK(uffdwp_register(ctx, j.mem, 2 * j.page, UFFDWP_REGISTER_MODE_WP));
	eng = start_engine(ctx, UFFDWP_ENGINE_INTHREAD, keep_page_a, &k);
	for (int round = 0; round < FORK_ROUNDS; round++) {
		char before = j.mem[0];

		CHECK_OK(uffdwp_writeprotect(ctx, j.mem, 2 * j.page, UFFDWP_WRITEPROTECT_MODE_WP));
		f.value = (char)(before + 1);
		atomic_store(&f.tid, 0);
		atomic_store(&f.child, 0);
		CHECK_EQ(pthread_create(&t, NULL, fork_in_wait_writer, &f), 0);
		if (!test_sem_wait(&k.fault_on_a, 5000))
			FAIL("round %d: no fault on the kept page", round);
		wait_asleep(&f.tid);
		CHECK_EQ(pthread_kill(t, SIGUSR1), 0);
		for (int tries = 0; !atomic_load(&f.child); tries++) {
			CHECK(tries < POLL_TRIES);
			usleep(POLL_US);
		}
		test_check_exited_0(reap_within_10s(atomic_load(&f.child)));
		/* The parent's writer still waits, until the page is resolved. */
		CHECK_EQ(j.mem[0], before);
		CHECK_OK(uffdwp_writeprotect(ctx, j.mem, j.page, 0));
		pthread_join(t, NULL);
		CHECK_EQ(j.mem[0], f.value);
	}
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
}

/* A writer that finds the side buffer full. */
struct roomless {
	char *mem;
	size_t page;
	sigjmp_buf env;
	sem_t handler_ran;
	int waits;          /* on the second page: each but the last left by a signal */
	_Atomic pid_t tid;
	_Atomic int tries;  /* of the second page's write */
	_Atomic int stage;  /* 1: first page written; 2: left the second write; 3: done */
};

static struct roomless *the_roomless;

static void note_and_jump(int sig)
{
	sem_post(&the_roomless->handler_ran);
	siglongjmp(the_roomless->env, 1);
}

enum {
	ROOMLESS_PAGES = 1024, ROOMLESS_FIRST = 1000,  /* far past the saver */
	ROOMLESS_JUMPS = 1000,  /* signals that leave the wait */
};

static void *roomless_main(void *arg)
{
	struct roomless *r = arg;
	volatile char *mem = r->mem;

	atomic_store(&r->tid, gettid());
	mem[ROOMLESS_FIRST * r->page] = 1;  /* takes the one slot */
	atomic_store(&r->stage, 1);
	for (volatile int n = 0; n < r->waits; n++) {
		atomic_store(&r->tries, n + 1);
		if (sigsetjmp(r->env, 1) == 0)
			mem[(ROOMLESS_FIRST + 1) * r->page] = 2;  /* no room: waits */
	}
	atomic_store(&r->stage, 2);
	mem[(ROOMLESS_FIRST + 2) * r->page] = 3;  /* no room until the cancel */
	atomic_store(&r->stage, 3);
	return NULL;
}

/* An in-thread writer waiting for room in a live snapshot's side buffer (a
 * one-page buffer, a saver stalled on a pipe nobody reads) ran no signal
 * handlers: it slept inside the library's handler. It must take signals,
 * leave with siglongjmp() (a thousand times, each into a new wait), and
 * the cancel and end still return at once. */
TEST(snapshot_writer_without_room_takes_signals, ON_BOTH)
{
	/* (TSan defers signal handlers past the fault: there, the cancel
	 * releases the one wait.) */
	struct roomless r = { .page = test_page(), .waits = UFFDWP__UNDER_TSAN ? 1 : ROOMLESS_JUMPS };
	struct sigaction sa = { .sa_handler = note_and_jump };
	struct uffdwp_snapshot_progress pr = { .sz = sizeof(pr) };
	struct uffdwp_snapshot_region region;
	struct uffdwp_snapshot *snap = NULL;
	pthread_t t;
	int p[2], ret;

	r.mem = test_map(ROOMLESS_PAGES, true);
	memset(r.mem, 7, ROOMLESS_PAGES * r.page);
	sem_init(&r.handler_ran, 0, 0);
	the_roomless = &r;
	CHECK_OK(sigaction(SIGUSR1, &sa, NULL));
	CHECK_EQ(pipe(p), 0);
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = p[1], .backend = backend,
					  .side_buffer = r.page };

	region = (struct uffdwp_snapshot_region){ (uintptr_t)r.mem, ROOMLESS_PAGES * r.page };
	ret = uffdwp_snapshot_begin(&snap, &region, 1, &o);
	if (ret == -EOPNOTSUPP)
		SKIP("no live snapshot on %s", uffdwp_backend_name(backend));
	CHECK_OK(ret);
	/* The saver fills the pipe (64 KiB) and stalls. */
	do {
		usleep(1000);
		CHECK_OK(uffdwp_snapshot_progress(snap, &pr));
	} while (pr.bytes_out < 8 * r.page);
	CHECK_EQ(pthread_create(&t, NULL, roomless_main, &r), 0);
	wait_at_least(&r.tries, 1);
	wait_asleep(&r.tid);
	CHECK_EQ(atomic_load(&r.stage), 1);
	/* Un-protects elsewhere wake it to fault again: still one wait. */
	struct uffdwp *other = test_open(UFFDWP_BACKEND_EMULATED, 0);
	char *elsewhere = test_map(1, true);

	CHECK_OK(uffdwp_register(other, elsewhere, r.page, UFFDWP_REGISTER_MODE_WP));
	for (int i = 0; i < 100; i++)
		CHECK_OK(uffdwp_writeprotect(other, elsewhere, r.page, 0));
	uffdwp_close(other);
	wait_asleep(&r.tid);
	CHECK_EQ(atomic_load(&r.stage), 1);
	CHECK_OK(uffdwp_snapshot_progress(snap, &pr));
	CHECK_EQ(pr.pages_copied, 1);
	CHECK_EQ(pr.writer_waits, 1);
	for (int n = 1; n <= r.waits && !UFFDWP__UNDER_TSAN; n++) {
		wait_at_least(&r.tries, n);
		wait_asleep(&r.tid);
		CHECK_EQ(atomic_load(&r.stage), 1);
		CHECK_EQ(pthread_kill(t, SIGUSR1), 0);
		if (!test_sem_wait(&r.handler_ran, 5000))
			FAIL("wait %d for room ran no signal handler in 5 s", n);
	}
	if (!UFFDWP__UNDER_TSAN) {
		wait_at_least(&r.stage, 2);
		wait_asleep(&r.tid);
		CHECK_EQ(atomic_load(&r.stage), 2);
	}
	uffdwp_snapshot_cancel(snap);
	CHECK_RET(uffdwp_snapshot_end(snap), -ECANCELED);
	pthread_join(t, NULL);
	/* Left by the siglongjmp(), or written after the cancel. */
	CHECK_EQ(r.mem[(ROOMLESS_FIRST + 1) * r.page], UFFDWP__UNDER_TSAN ? 2 : 7);
	CHECK_EQ(r.mem[(ROOMLESS_FIRST + 2) * r.page], 3);
	close(p[0]);
	close(p[1]);
}

/* A large block given back (MADV_DONTNEED) and taken again reads as zero,
 * edges included: a block in an arena is not page-aligned, and the
 * give-back failed on it (EINVAL), so a reused block kept its old bytes
 * (a snapshot's slot sequence numbers: a slot counted twice, the saver
 * waiting for ever). The give-back also fails on locked memory. */
static void private_blocks_reused(void *unused)
{
	const size_t sizes[] = { 64 << 10, 100 << 10, 300 << 10, 1 << 20 };

	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		/* Carved before it: the large block starts off a page boundary
		 * (unless a new arena begins with it). */
		void *spacer = uffdwp__private_alloc(100);
		unsigned char *a = uffdwp__private_alloc(sizes[k]), *b;

		CHECK(spacer != NULL && a != NULL);
		memset(a, 0xa5, sizes[k]);
		uffdwp__private_free(a);
		b = uffdwp__private_alloc(sizes[k]);
		CHECK(b == a);  /* the same block, from its class's free list */
		for (size_t i = 0; i < sizes[k]; i++)
			if (b[i])
				FAIL("%zu-byte block: byte %zu reads %#x after reuse", sizes[k], i, b[i]);
		uffdwp__private_free(b);
		uffdwp__private_free(spacer);
	}
}

TEST(private_memory_reused_reads_zero, ON_NONE)
{
	private_blocks_reused(NULL);
}

static void private_blocks_reused_locked(void *unused)
{
	if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
		SKIP("mlockall: %s", strerror(errno));
	private_blocks_reused(NULL);
}

TEST(private_memory_reused_reads_zero_when_locked, ON_NONE)
{
	test_check_exited_0(test_in_child(private_blocks_reused_locked, NULL, 20));
}
