/* SPDX-License-Identifier: MIT */
/*
 * `uffdwp bench track`: the write tracker against two hand-written trackers
 * measured in the same run:
 *  - raw-async: WP_ASYNC + PAGEMAP_SCAN driven by raw syscalls (what the
 *    tracker's ASYNC method must not be much slower than);
 *  - mprotect: mprotect(2) + SIGSEGV with a bitmap (what trackers without
 *    userfaultfd do: Boehm GC, faabric).
 *
 * For regions of 64 MiB and 1 GiB (one region of --size when given, 1/16
 * of 64 MiB with --quick), 0.1 %, 1 %, 10 % and 100 % of the pages written,
 * scattered at random or in 64-page clusters, each tracker does a round of
 * "write one byte in each chosen page, collect with reset" once to settle
 * page tables and VMAs, then max(2, --repeat) times timed, keeping the best
 * write and the best collect (other work on a small VM adds noise). The
 * library's async tracker and raw-async, whose ratios are the tight targets,
 * take turns round by round on two regions of the same size, so noise hits
 * both alike, and get max(PAIRED_ROUNDS, --repeat) timed rounds (cheap:
 * about 1 us per written page). Rows per written page: write (first writes), collect
 * (collect + reset), total.
 * SYNC and EMULATED pay a handler-thread round trip per first write, so
 * they run on the smaller region only, to keep the suite near a minute.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "bench.h"
#include "kernel_abi.h"
#include "uffdwp.h"

#define DEFAULT_SIZE ((size_t)256 << 20)  /* the harness's: --size not given */
#define CLUSTER 64                        /* pages per cluster */
#define VEC 256                           /* PAGEMAP_SCAN vector, as the tracker's */
#define PAIRED_ROUNDS 5                   /* timed rounds of the async pair */

/* Which pages a round writes. */
struct pattern {
	size_t *pages;
	size_t n;
};

/* One tracker under test: set up on a region, do rounds, tear down. */
struct subject {
	const char *name;
	int (*setup)(struct bench *b, char *mem, size_t len, void **state);
	/* Collect with reset; returns the number of written pages found. */
	long (*collect)(void *state);
	void (*teardown)(void *state);
	enum uffdwp_track_method method;  /* for the library's trackers */
	bool small_only;                  /* too slow per fault for the big region */
	bool paired;                      /* raw-async and async: measured in turns,
					     with write and collect rows */
};

/* --- the library's tracker --- */

struct lib_state {
	struct uffdwp_tracker *t;
	struct uffdwp_run runs[VEC];
};

static enum uffdwp_track_method lib_method;

static int lib_setup(struct bench *b, char *mem, size_t len, void **state)
{
	struct uffdwp_tracker_opts o = { .sz = sizeof(o), .method = lib_method };
	struct lib_state *s = calloc(1, sizeof(*s));
	int ret;

	if (!s)
		return -ENOMEM;
	ret = uffdwp_tracker_create(&s->t, &o);
	if (ret == 0)
		ret = uffdwp_tracker_add(s->t, mem, len);
	if (ret < 0) {
		uffdwp_tracker_destroy(s->t);
		free(s);
		return ret;
	}
	*state = s;
	return 0;
}

static long lib_collect(void *state)
{
	struct lib_state *s = state;
	uintptr_t cur = 0;
	long bytes = 0;
	int n;

	while ((n = uffdwp_tracker_collect(s->t, &cur, s->runs, VEC, UFFDWP_COLLECT_RESET)) > 0)
		for (int i = 0; i < n; i++)
			bytes += (long)s->runs[i].len;
	return n < 0 ? n : bytes / sysconf(_SC_PAGESIZE);
}

static void lib_teardown(void *state)
{
	struct lib_state *s = state;

	uffdwp_tracker_destroy(s->t);
	free(s);
}

/* --- raw WP_ASYNC + PAGEMAP_SCAN --- */

struct raw_async {
	int uffd, pagemap;
	uintptr_t start, end;
};

static int raw_async_setup(struct bench *b, char *mem, size_t len, void **state)
{
	struct raw_async *s = calloc(1, sizeof(*s));
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED };
	struct uffdio_register reg = { .range = { (uintptr_t)mem, len },
				       .mode = UFFDIO_REGISTER_MODE_WP };
	struct uffdio_writeprotect wp = { .range = { (uintptr_t)mem, len },
					  .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	int ret = 0;

	if (!s)
		return -ENOMEM;
	s->start = (uintptr_t)mem;
	s->end = s->start + len;
	s->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	s->uffd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (s->uffd < 0 || s->pagemap < 0 || ioctl(s->uffd, UFFDIO_API, &api) < 0 ||
	    !(api.features & UFFD_FEATURE_WP_ASYNC) || ioctl(s->uffd, UFFDIO_REGISTER, &reg) < 0 ||
	    ioctl(s->uffd, UFFDIO_WRITEPROTECT, &wp) < 0)
		ret = errno ? -errno : -EOPNOTSUPP;
	if (ret < 0) {
		close(s->uffd);
		close(s->pagemap);
		free(s);
		return ret;
	}
	*state = s;
	return 0;
}

static long raw_async_collect(void *state)
{
	struct raw_async *s = state;
	struct page_region vec[VEC];
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		.start = s->start,
		.end = s->end,
		.vec = (uintptr_t)vec,
		.vec_len = VEC,
		.category_mask = PAGE_IS_WRITTEN,
		.return_mask = PAGE_IS_WRITTEN,
	};
	long bytes = 0;

	while (arg.start < s->end) {
		int n = ioctl(s->pagemap, PAGEMAP_SCAN, &arg);

		if (n < 0)
			return -errno;
		for (int i = 0; i < n; i++)
			bytes += (long)(vec[i].end - vec[i].start);
		arg.start = arg.walk_end;
	}
	return bytes / sysconf(_SC_PAGESIZE);
}

static void raw_async_teardown(void *state)
{
	struct raw_async *s = state;

	close(s->uffd);
	close(s->pagemap);
	free(s);
}

/* --- raw mprotect + SIGSEGV --- */

/* The signal handler's view: one tracked region at a time. */
static struct {
	uintptr_t start, end;
	size_t page;
	_Atomic uint64_t *bits;
	struct sigaction old;
	volatile sig_atomic_t failed;  /* an mprotect failed: vm.max_map_count */
} mp;

static void mp_handler(int sig, siginfo_t *si, void *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr & ~(uintptr_t)(mp.page - 1);
	size_t i;

	if (a < mp.start || a >= mp.end) {
		sigaction(SIGSEGV, &mp.old, NULL);  /* not ours: crash as usual */
		return;
	}
	i = (a - mp.start) / mp.page;
	atomic_fetch_or_explicit(&mp.bits[i / 64], UINT64_C(1) << (i % 64), memory_order_relaxed);
	/* Each page un-protected alone splits a mapping; past
	 * vm.max_map_count that fails and the write would fault forever:
	 * give up tracking (one mprotect of the whole region merges it). */
	if (mprotect((void *)a, mp.page, PROT_READ | PROT_WRITE) < 0) {
		mp.failed = 1;
		mprotect((void *)mp.start, mp.end - mp.start, PROT_READ | PROT_WRITE);
	}
}

static int mp_setup(struct bench *b, char *mem, size_t len, void **state)
{
	struct sigaction sa = { .sa_sigaction = mp_handler, .sa_flags = SA_SIGINFO };

	mp.start = (uintptr_t)mem;
	mp.end = mp.start + len;
	mp.page = b->page;
	mp.failed = 0;
	mp.bits = calloc((len / b->page + 63) / 64, sizeof(*mp.bits));
	if (!mp.bits)
		return -ENOMEM;
	sigaction(SIGSEGV, &sa, &mp.old);
	if (mprotect(mem, len, PROT_READ) < 0)
		return -errno;
	*state = &mp;
	return 0;
}

static long mp_collect(void *state)
{
	size_t n = (mp.end - mp.start) / mp.page;
	long pages = 0;

	if (mp.failed)
		return -ENOMEM;
	for (size_t w = 0; w < (n + 63) / 64; w++) {
		uint64_t bits = atomic_load_explicit(&mp.bits[w], memory_order_relaxed);

		while (bits) {
			/* One run of set bits inside this word per mprotect. */
			unsigned lo = (unsigned)__builtin_ctzll(bits);
			uint64_t above = ~bits & (~UINT64_C(0) << lo);
			unsigned hi = above ? (unsigned)__builtin_ctzll(above) : 64;
			uint64_t mask = (hi == 64 ? ~UINT64_C(0) : (UINT64_C(1) << hi) - 1) &
					(~UINT64_C(0) << lo);

			/* Protect first, then clear: no write is lost. */
				if (mprotect((void *)(mp.start + (w * 64 + lo) * mp.page),
				     (hi - lo) * mp.page, PROT_READ) < 0)
				return -errno;
			atomic_fetch_and_explicit(&mp.bits[w], ~mask, memory_order_relaxed);
			pages += hi - lo;
			bits &= ~mask;
		}
	}
	return pages;
}

static void mp_teardown(void *state)
{
	mprotect((void *)mp.start, mp.end - mp.start, PROT_READ | PROT_WRITE);
	sigaction(SIGSEGV, &mp.old, NULL);
	free(mp.bits);
	mp.bits = NULL;
}

/* --- the measurements --- */

static const struct subject subjects[] = {
	{ "raw-async", raw_async_setup, raw_async_collect, raw_async_teardown, 0, false, true },
	{ "mprotect", mp_setup, mp_collect, mp_teardown, 0, false, false },
	{ "async", lib_setup, lib_collect, lib_teardown, UFFDWP_TRACK_ASYNC, false, true },
	{ "sync", lib_setup, lib_collect, lib_teardown, UFFDWP_TRACK_SYNC, true, false },
	{ "emulated", lib_setup, lib_collect, lib_teardown, UFFDWP_TRACK_EMULATED, true, false },
};

#define NSUBJECTS (sizeof(subjects) / sizeof(subjects[0]))

/* The pages a round writes: k pages at random, or in clusters of CLUSTER
 * pages at random cluster positions; sorted by neither (write order is
 * the pattern's). */
static int make_pattern(size_t npages, size_t k, bool clustered, struct pattern *p)
{
	size_t nclusters = (npages + CLUSTER - 1) / CLUSTER;
	size_t *order = bench_page_order(clustered ? nclusters : npages, true);

	if (!order)
		return -ENOMEM;
	p->n = 0;
	if (!clustered) {
		p->pages = order;
		p->n = k;
		return 0;
	}
	p->pages = malloc(k * sizeof(*p->pages));
	if (!p->pages) {
		free(order);
		return -ENOMEM;
	}
	for (size_t c = 0; p->n < k && c < nclusters; c++)
		for (size_t i = 0; i < CLUSTER && p->n < k; i++)
			if (order[c] * CLUSTER + i < npages)
				p->pages[p->n++] = order[c] * CLUSTER + i;
	free(order);
	return 0;
}

struct timing {
	uint64_t write_ns, collect_ns;
	int ret;  /* 0, or why the subject was not measured (-EIO: wrong count) */
};

/*
 * Rounds of write + collect-with-reset: one to settle, then the best of
 * the timed ones. The n (at most 2) subjects given together, a tracker and
 * its baseline, take turns round by round, each on its own region, so that
 * a burst of noise on the shared machine hits both rather than one.
 */
static void measure(struct bench *b, const struct subject *const subj[], char *const mem[],
		    size_t n, size_t len, const struct pattern *p, struct timing tm[])
{
	unsigned timed = n > 1 ? PAIRED_ROUNDS : 2;
	unsigned rounds = 1 + (b->opts->repeat > timed ? b->opts->repeat : timed);
	void *state[2];
	bool up[2];

	for (size_t k = 0; k < n; k++) {
		tm[k] = (struct timing){ .write_ns = UINT64_MAX, .collect_ns = UINT64_MAX };
		lib_method = subj[k]->method;
		tm[k].ret = subj[k]->setup(b, mem[k], len, &state[k]);
		up[k] = tm[k].ret == 0;
	}
	for (unsigned round = 0; round < rounds; round++) {
		for (size_t k = 0; k < n; k++) {
			uint64_t t0, t1, t2;
			long found;

			if (tm[k].ret < 0)
				continue;
			t0 = bench_now_ns();
			for (size_t i = 0; i < p->n; i++)
				((volatile char *)mem[k])[p->pages[i] * b->page] = (char)round;
			t1 = bench_now_ns();
			found = subj[k]->collect(state[k]);
			t2 = bench_now_ns();
			if (found < 0 || (size_t)found != p->n) {
				/* A tracker that misses writes measures nothing. */
				tm[k].ret = found < 0 ? (int)found : -EIO;
				continue;
			}
			if (round > 0 && t1 - t0 < tm[k].write_ns)
				tm[k].write_ns = t1 - t0;
			if (round > 0 && t2 - t1 < tm[k].collect_ns)
				tm[k].collect_ns = t2 - t1;
		}
	}
	for (size_t k = 0; k < n; k++)
		if (up[k])
			subj[k]->teardown(state[k]);
}

static const char *size_name(struct bench *b, size_t len)
{
	return len >= ((size_t)1 << 30) ? bench_strdup(b, "%zuG", len >> 30)
					: bench_strdup(b, "%zuM", len >> 20);
}

/* Measure every subject on one pattern: the paired ones together (the
 * second on mem2), the others alone. */
static void measure_all(struct bench *b, char *mem, char *mem2, size_t len, bool big,
			const struct pattern *p, struct timing tm[NSUBJECTS])
{
	const struct subject *pair[2];
	char *pair_mem[2] = { mem, mem2 };
	struct timing pair_tm[2];
	size_t at[2], npair = 0;

	for (size_t i = 0; i < NSUBJECTS; i++) {
		const struct subject *s = &subjects[i];

		if (s->paired) {
			at[npair] = i;
			pair[npair++] = s;
		} else if (s->small_only && big) {
			tm[i].ret = -E2BIG;
		} else {
			measure(b, &s, &mem, 1, len, p, &tm[i]);
		}
	}
	measure(b, pair, pair_mem, npair, len, p, pair_tm);
	for (size_t k = 0; k < npair; k++)
		tm[at[k]] = pair_tm[k];
}

static int run_region(struct bench *b, size_t len, bool big)
{
	static const double fractions[] = { 0.001, 0.01, 0.1, 1.0 };
	static const char *const fraction_names[] = { "0.1%", "1%", "10%", "100%" };
	size_t npages = len / b->page;
	const char *sz = size_name(b, len);
	char *mem = bench_map(len, true), *mem2 = bench_map(len, true);
	int ret = 0;

	if (!mem || !mem2) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t f = 0; f < 4; f++) {
		for (int clustered = 0; clustered < 2; clustered++) {
			const char *cfg = bench_strdup(b, "%s/%s/%s", sz, fraction_names[f],
						       clustered ? "clust" : "rand");
			size_t k = (size_t)((double)npages * fractions[f]);
			struct timing tm[NSUBJECTS];
			struct pattern p;

			ret = make_pattern(npages, k ? k : 1, clustered, &p);
			if (ret < 0)
				goto out;
			bench_note(b, "%s", cfg);
			measure_all(b, mem, mem2, len, big, &p, tm);
			for (size_t i = 0; i < NSUBJECTS; i++) {
				const struct subject *s = &subjects[i];
				const char *name = bench_strdup(b, "%s/%s", cfg, s->name);

				if (tm[i].ret < 0) {
					bench_skip(b, name, "%s", tm[i].ret == -E2BIG ?
						   "slow per fault: small region only" :
						   tm[i].ret == -EIO ? "reported the wrong number of pages" :
						   tm[i].ret == -ENOMEM ? "mprotect: ENOMEM (vm.max_map_count)" :
						   strerror(-tm[i].ret));
					continue;
				}
				if (s->paired) {
					bench_row(b, &(struct bench_row){
						.name = bench_strdup(b, "%s/write", name),
						.unit = "page", .ops = p.n, .ns = tm[i].write_ns,
						.baseline = bench_strdup(b, "%s/raw-async/write", cfg) });
					bench_row(b, &(struct bench_row){
						.name = bench_strdup(b, "%s/collect", name),
						.unit = "page", .ops = p.n, .ns = tm[i].collect_ns,
						.baseline = bench_strdup(b, "%s/raw-async/collect", cfg) });
				}
				bench_row(b, &(struct bench_row){
					.name = bench_strdup(b, "%s/total", name), .unit = "page",
					.ops = p.n, .ns = tm[i].write_ns + tm[i].collect_ns,
					.baseline = bench_strdup(b, "%s/mprotect/total", cfg) });
			}
			bench_target(b, bench_strdup(b, "%s/async/write", cfg),
				     bench_strdup(b, "%s/raw-async/write", cfg), 1.15);
			bench_target(b, bench_strdup(b, "%s/async/collect", cfg),
				     bench_strdup(b, "%s/raw-async/collect", cfg), 1.2);
			bench_target(b, bench_strdup(b, "%s/async/total", cfg),
				     bench_strdup(b, "%s/mprotect/total", cfg), 0.2);
			free(p.pages);
		}
	}
out:
	if (mem)
		munmap(mem, len);
	if (mem2)
		munmap(mem2, len);
	return ret;
}

BENCH_SUITE(track, "write tracker: first writes, collect + reset, against raw async and mprotect")
{
	size_t small = (size_t)64 << 20, big = (size_t)1 << 30;
	int ret;

	if (b->opts->quick)
		return run_region(b, small / 16, false);
	if (b->opts->region_size != DEFAULT_SIZE)
		return run_region(b, b->opts->region_size, b->opts->region_size > small);
	ret = run_region(b, small, false);
	return ret < 0 ? ret : run_region(b, big, true);
}
