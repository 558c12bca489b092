/* SPDX-License-Identifier: MIT */
/*
 * Stress: worker threads increment per-page counters under mutexes that
 * live inside the protected pages, while protector threads write-protect
 * and un-protect random slices of those pages and the engine resolves every
 * fault. Every lock, unlock and increment is a write that may fault at any
 * moment; in the end the counters must add up to the increments made.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include "test.h"

#define STRESS_PAGES 64
#define STRESS_WORKERS 4
#define STRESS_PROTECTORS 2
#define STRESS_SECONDS 3

/* The head of each page. */
struct counted_page {
	pthread_mutex_t lock;
	uint64_t count;
};

struct stress {
	struct uffdwp *ctx;
	char *mem;
	size_t page;
	_Atomic bool stop;
	_Atomic uint64_t increments;  /* what the workers did, counted apart */
	_Atomic uint64_t protects;
};

static struct counted_page *page_at(const struct stress *s, size_t i)
{
	return (struct counted_page *)(void *)(s->mem + i * s->page);
}

/* xorshift: each thread its own cheap random sequence. */
static uint64_t next_random(uint64_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 7;
	*state ^= *state << 17;
	return *state;
}

static void *worker(void *arg)
{
	struct stress *s = arg;
	uint64_t rnd = (uint64_t)(uintptr_t)&rnd | 1, done = 0;

	while (!atomic_load_explicit(&s->stop, memory_order_relaxed)) {
		struct counted_page *p = page_at(s, next_random(&rnd) % STRESS_PAGES);

		pthread_mutex_lock(&p->lock);
		p->count++;
		pthread_mutex_unlock(&p->lock);
		done++;
	}
	s->increments += done;
	return NULL;
}

static void *protector(void *arg)
{
	struct stress *s = arg;
	uint64_t rnd = (uint64_t)(uintptr_t)&rnd | 1;

	while (!atomic_load_explicit(&s->stop, memory_order_relaxed)) {
		size_t first = next_random(&rnd) % STRESS_PAGES;
		size_t n = 1 + next_random(&rnd) % (STRESS_PAGES - first);
		unsigned mode = next_random(&rnd) % 4 ? UFFDWP_WRITEPROTECT_MODE_WP : 0;
		int ret = uffdwp_writeprotect(s->ctx, s->mem + first * s->page, n * s->page, mode);

		if (ret < 0)
			FAIL("uffdwp_writeprotect: %s", strerror(-ret));
		s->protects++;
	}
	return NULL;
}

static void stress(enum uffdwp_backend backend, enum uffdwp_engine_mode mode)
{
	struct stress s = { .page = test_page() };
	struct uffdwp_engine_opts eo = { .sz = sizeof(eo), .mode = mode };
	pthread_t workers[STRESS_WORKERS], protectors[STRESS_PROTECTORS];
	struct uffdwp_engine_stats st = { .sz = sizeof(st) };
	struct uffdwp_engine *eng;
	struct timespec end, now;
	uint64_t sum = 0;

	s.ctx = test_open(backend, backend == UFFDWP_BACKEND_KERNEL &&
					   mode == UFFDWP_ENGINE_INTHREAD
				   ? UFFDWP_FEATURE_SIGBUS | UFFDWP_FEATURE_WP_UNPOPULATED : 0);
	s.mem = test_map(STRESS_PAGES, true);
	for (size_t i = 0; i < STRESS_PAGES; i++) {
		pthread_mutex_init(&page_at(&s, i)->lock, NULL);
		page_at(&s, i)->count = 0;
	}
	CHECK_OK(uffdwp_register(s.ctx, s.mem, STRESS_PAGES * s.page, UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_engine_start(&eng, s.ctx, &eo));
	for (int i = 0; i < STRESS_WORKERS; i++)
		CHECK_EQ(pthread_create(&workers[i], NULL, worker, &s), 0);
	for (int i = 0; i < STRESS_PROTECTORS; i++)
		CHECK_EQ(pthread_create(&protectors[i], NULL, protector, &s), 0);

	/* The run's length; this thread only watches the clock. */
	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += STRESS_SECONDS;
	do {
		struct timespec tick = { .tv_nsec = 10 * 1000 * 1000 };

		nanosleep(&tick, NULL);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec < end.tv_sec || (now.tv_sec == end.tv_sec && now.tv_nsec < end.tv_nsec));

	s.stop = true;
	for (int i = 0; i < STRESS_PROTECTORS; i++)
		pthread_join(protectors[i], NULL);
	/* The engine still runs: workers faulting now get resolved. */
	for (int i = 0; i < STRESS_WORKERS; i++)
		pthread_join(workers[i], NULL);
	CHECK_OK(uffdwp_engine_stats(eng, &st));
	uffdwp_engine_stop(eng);

	for (size_t i = 0; i < STRESS_PAGES; i++)
		sum += page_at(&s, i)->count;
	printf("%llu increments, %llu protect calls, %llu faults, %llu batches\n",
	       (unsigned long long)s.increments, (unsigned long long)s.protects,
	       (unsigned long long)st.faults, (unsigned long long)st.batches);
	CHECK_EQ(sum, s.increments);
	CHECK(s.increments > 0);
	CHECK(st.faults > 0);  /* the protectors really got in the way */
	CHECK_EQ(st.errors, 0);
	uffdwp_close(s.ctx);
}

TEST(stress_counters_thread, ON_BOTH)
{
	stress(backend, UFFDWP_ENGINE_THREAD);
}

TEST(stress_counters_inthread, ON_BOTH)
{
	stress(backend, UFFDWP_ENGINE_INTHREAD);
}

/* ------------------------------------------------------------------------
 * The signal window: contexts closed and engines stopped while writers
 * fault, wake and leave their waits with siglongjmp(), with fork() at
 * every step of a cycle and madvise/munmap under the faults. Nothing may
 * die, hang or lose a write. UFFDWP_SOAK_CYCLES sets the number of cycles
 * (make soak); sanitizer builds run a tenth.
 * ------------------------------------------------------------------------ */

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include "backend.h"  /* UFFDWP__UNDER_TSAN */

#define WINDOW_CYCLES 10000  /* per backend: 20,000 in all */
#define WINDOW_PAGES 8       /* the last one is unmapped and mapped again */
#define WINDOW_WRITERS 2
#define WINDOW_STEPS 5       /* where a cycle forks: see window_cycle() */

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

struct window {
	enum uffdwp_backend backend;
	char *mem;
	size_t page, len;
	_Atomic bool stop;
	_Atomic unsigned long jumps;
	_Atomic unsigned started;  /* writers whose jump buffer is set */
	pthread_t writer[WINDOW_WRITERS];
	/* Each writer's last value, written at its own byte of every page. */
	unsigned char last[WINDOW_WRITERS];
};

static __thread sigjmp_buf *window_env;

static void window_jump(int sig)
{
	siglongjmp(*window_env, 1);
}

static void *window_writer(void *arg)
{
	struct window *w = arg;
	sigjmp_buf env;
	volatile unsigned long i = 0;
	size_t me;

	window_env = &env;
	me = atomic_fetch_add(&w->started, 1);
	if (sigsetjmp(env, 1))
		atomic_fetch_add(&w->jumps, 1);
	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		unsigned char v = (unsigned char)++i;

		/* Every page but the last, which comes and goes. */
		((volatile unsigned char *)w->mem)[(i % (WINDOW_PAGES - 1)) * w->page + me] = v;
		w->last[me] = v;
		/* Leave the CPU to the cycles now and then: what matters is that
		 * writes keep faulting, not how many there are. */
		if (i % 16 == 0)
			sched_yield();
	}
	/* The final values, past every madvise of the run. */
	for (size_t p = 0; p < WINDOW_PAGES - 1; p++)
		((volatile unsigned char *)w->mem)[p * w->page + me] = w->last[me];
	return NULL;
}

static void fork_here(void)
{
	int status;
	pid_t pid = fork();

	CHECK(pid >= 0);
	if (pid == 0)
		_exit(0);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* One cycle: open, register, protect, start an engine, disturb the
 * faults, then stop and close in either order. Forks at step fork_at
 * (WINDOW_STEPS: never). */
static void window_cycle(struct window *w, unsigned long cycle, int fork_at, uint64_t *errors)
{
	static const enum uffdwp_engine_mode modes[] = {
		UFFDWP_ENGINE_THREAD, UFFDWP_ENGINE_INTHREAD, UFFDWP_ENGINE_CALLER,
	};
	enum uffdwp_engine_mode mode = modes[cycle % 3];
	struct uffdwp_engine_opts eo = { .sz = sizeof(eo), .mode = mode };
	struct uffdwp_engine_stats st = { .sz = sizeof(st) };
	uint64_t features = 0;
	struct uffdwp_engine *eng;
	struct uffdwp *ctx;
	char *hole = w->mem + (WINDOW_PAGES - 1) * w->page;

	if (w->backend == UFFDWP_BACKEND_KERNEL)
		features = UFFDWP_FEATURE_WP_UNPOPULATED |
			   (mode == UFFDWP_ENGINE_INTHREAD ? UFFDWP_FEATURE_SIGBUS : 0);
	ctx = test_open(w->backend, features);
	if (fork_at == 0)
		fork_here();
	CHECK_OK(uffdwp_register(ctx, w->mem, w->len, UFFDWP_REGISTER_MODE_WP));
	if (fork_at == 1)
		fork_here();
	CHECK_OK(uffdwp_writeprotect(ctx, w->mem, w->len, UFFDWP_WRITEPROTECT_MODE_WP));
	if (fork_at == 2)
		fork_here();
	CHECK_OK(uffdwp_engine_start(&eng, ctx, &eo));
	if (fork_at == 3)
		fork_here();
	if (cycle % 4 == 0)
		pthread_kill(w->writer[cycle / 4 % WINDOW_WRITERS], SIGUSR1);
	if (mode == UFFDWP_ENGINE_CALLER)
		CHECK(uffdwp_engine_dispatch(eng) >= 0);
	CHECK_OK(madvise(w->mem + (cycle % (WINDOW_PAGES - 1)) * w->page, w->page,
			 MADV_DONTNEED));
	CHECK_OK(munmap(hole, w->page));
	CHECK(mmap(hole, w->page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == hole);
	if (mode == UFFDWP_ENGINE_CALLER)
		CHECK(uffdwp_engine_dispatch(eng) >= 0);
	if (fork_at == 4)
		fork_here();
	CHECK_OK(uffdwp_engine_stats(eng, &st));
	*errors += st.errors;
	if (cycle & 1) {
		uffdwp_engine_stop(eng);
		uffdwp_close(ctx);
	} else {
		uffdwp_close(ctx);  /* the engine runs on to the close */
		uffdwp_engine_stop(eng);
	}
}

static unsigned long window_cycles(void)
{
	const char *env = getenv("UFFDWP_SOAK_CYCLES");
	unsigned long n = env ? strtoul(env, NULL, 10) : WINDOW_CYCLES;

	return UFFDWP__UNDER_TSAN || UNDER_ASAN ? n / 10 : n;
}

TEST_TIMEOUT(stress_signal_window, ON_BOTH, 180)
{
	struct window w = { .backend = backend, .page = test_page() };
	struct sigaction sa = { .sa_handler = window_jump };
	unsigned long cycles = window_cycles();
	struct timespec t0, t1;
	uint64_t errors = 0;

	w.len = WINDOW_PAGES * w.page;
	w.mem = test_map(WINDOW_PAGES, true);
	CHECK_OK(sigaction(SIGUSR1, &sa, NULL));
	for (int i = 0; i < WINDOW_WRITERS; i++)
		CHECK_EQ(pthread_create(&w.writer[i], NULL, window_writer, &w), 0);
	while (atomic_load(&w.started) < WINDOW_WRITERS)
		sched_yield();
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (unsigned long c = 0; c < cycles; c++)
		window_cycle(&w, c, c % 8 == 0 ? (int)(c / 8 % WINDOW_STEPS) : WINDOW_STEPS,
			     &errors);
	atomic_store(&w.stop, true);
	for (int i = 0; i < WINDOW_WRITERS; i++)
		pthread_join(w.writer[i], NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%lu cycles in %.1f s, %lu siglongjmps out of handlers\n", cycles,
	       (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9,
	       (unsigned long)atomic_load(&w.jumps));
	CHECK_EQ(errors, 0);
	for (size_t p = 0; p < WINDOW_PAGES - 1; p++)
		for (int i = 0; i < WINDOW_WRITERS; i++)
			CHECK_EQ((unsigned char)w.mem[p * w.page + (size_t)i], w.last[i]);
}
