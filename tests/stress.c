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
