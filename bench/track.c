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
 * write and the best collect (other work on a small VM adds noise). Rows per
 * written page: write (first writes), collect (collect + reset), total.
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
	{ "raw-async", raw_async_setup, raw_async_collect, raw_async_teardown, 0, false },
	{ "mprotect", mp_setup, mp_collect, mp_teardown, 0, false },
	{ "async", lib_setup, lib_collect, lib_teardown, UFFDWP_TRACK_ASYNC, false },
	{ "sync", lib_setup, lib_collect, lib_teardown, UFFDWP_TRACK_SYNC, true },
	{ "emulated", lib_setup, lib_collect, lib_teardown, UFFDWP_TRACK_EMULATED, true },
};

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
	long found;
};

/* Rounds of write + collect-with-reset: one to settle, then the best of
 * the timed ones. */
static int measure(struct bench *b, const struct subject *s, char *mem, size_t len,
		   const struct pattern *p, struct timing *tm)
{
	void *state;
	int ret;

	lib_method = s->method;
	ret = s->setup(b, mem, len, &state);
	if (ret < 0)
		return ret;
	unsigned rounds = 1 + (b->opts->repeat > 2 ? b->opts->repeat : 2);

	tm->write_ns = tm->collect_ns = UINT64_MAX;
	tm->found = 0;
	for (unsigned round = 0; round < rounds && ret >= 0; round++) {
		uint64_t t0 = bench_now_ns(), t1, t2;

		for (size_t i = 0; i < p->n; i++)
			((volatile char *)mem)[p->pages[i] * b->page] = (char)round;
		t1 = bench_now_ns();
		tm->found = s->collect(state);
		t2 = bench_now_ns();
		if (tm->found < 0)
			ret = (int)tm->found;
		else if (round > 0 && t1 - t0 < tm->write_ns)
			tm->write_ns = t1 - t0;
		if (round > 0 && t2 - t1 < tm->collect_ns)
			tm->collect_ns = t2 - t1;
	}
	s->teardown(state);
	if (ret >= 0 && (size_t)tm->found != p->n)
		return -EIO;  /* a tracker that misses writes measures nothing */
	return ret;
}

static const char *size_name(struct bench *b, size_t len)
{
	return len >= ((size_t)1 << 30) ? bench_strdup(b, "%zuG", len >> 30)
					: bench_strdup(b, "%zuM", len >> 20);
}

static int run_region(struct bench *b, size_t len, bool big)
{
	static const double fractions[] = { 0.001, 0.01, 0.1, 1.0 };
	static const char *const fraction_names[] = { "0.1%", "1%", "10%", "100%" };
	size_t npages = len / b->page;
	const char *sz = size_name(b, len);
	char *mem = bench_map(len, true);

	if (!mem)
		return -errno;
	for (size_t f = 0; f < 4; f++) {
		for (int clustered = 0; clustered < 2; clustered++) {
			const char *cfg = bench_strdup(b, "%s/%s/%s", sz, fraction_names[f],
						       clustered ? "clust" : "rand");
			size_t k = (size_t)((double)npages * fractions[f]);
			struct pattern p;
			int ret = make_pattern(npages, k ? k : 1, clustered, &p);

			if (ret < 0) {
				munmap(mem, len);
				return ret;
			}
			for (size_t i = 0; i < sizeof(subjects) / sizeof(subjects[0]); i++) {
				const struct subject *s = &subjects[i];
				const char *name = bench_strdup(b, "%s/%s", cfg, s->name);
				bool full = !strcmp(s->name, "async") || !strcmp(s->name, "raw-async");
				struct timing tm;

				if (s->small_only && big) {
					bench_skip(b, name, "slow per fault: small region only");
					continue;
				}
				bench_note(b, "%s", name);
				ret = measure(b, s, mem, len, &p, &tm);
				if (ret < 0) {
					bench_skip(b, name, "%s", ret == -EIO ? "reported the wrong "
						   "number of pages" : ret == -ENOMEM ? "mprotect: "
						   "ENOMEM (vm.max_map_count)" : strerror(-ret));
					continue;
				}
				if (full) {
					bench_row(b, &(struct bench_row){
						.name = bench_strdup(b, "%s/write", name),
						.unit = "page", .ops = p.n, .ns = tm.write_ns,
						.baseline = bench_strdup(b, "%s/raw-async/write", cfg) });
					bench_row(b, &(struct bench_row){
						.name = bench_strdup(b, "%s/collect", name),
						.unit = "page", .ops = p.n, .ns = tm.collect_ns,
						.baseline = bench_strdup(b, "%s/raw-async/collect", cfg) });
				}
				bench_row(b, &(struct bench_row){
					.name = bench_strdup(b, "%s/total", name), .unit = "page",
					.ops = p.n, .ns = tm.write_ns + tm.collect_ns,
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
	munmap(mem, len);
	return 0;
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
