/* SPDX-License-Identifier: MIT */
/*
 * The write tracker, on every method: ASYNC and SYNC run as kernel tests,
 * EMULATED as an emulated one (so `-b emulated` selects it). Each
 * TRACK_TEST body takes the method.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include "test.h"
#include "tracker.h"

#define TRACK_TEST_TIMEOUT(fn_, timeout_)                                         \
	static void fn_(enum uffdwp_track_method method);                          \
	TEST_TIMEOUT(fn_##_async, ON_KERNEL, timeout_) { fn_(UFFDWP_TRACK_ASYNC); }  \
	TEST_TIMEOUT(fn_##_sync, ON_KERNEL, timeout_) { fn_(UFFDWP_TRACK_SYNC); }    \
	TEST_TIMEOUT(fn_##_emulated, ON_EMULATED, timeout_) { fn_(UFFDWP_TRACK_EMULATED); } \
	static void fn_(enum uffdwp_track_method method)

#define TRACK_TEST(fn_) TRACK_TEST_TIMEOUT(fn_, 30)

/* For what exists only on the methods with synchronous faults. */
#define SYNC_TRACK_TEST(fn_)                                                     \
	static void fn_(enum uffdwp_track_method method);                          \
	TEST(fn_##_sync, ON_KERNEL) { fn_(UFFDWP_TRACK_SYNC); }                     \
	TEST(fn_##_emulated, ON_EMULATED) { fn_(UFFDWP_TRACK_EMULATED); }           \
	static void fn_(enum uffdwp_track_method method)

static struct uffdwp_tracker *open_tracker(enum uffdwp_track_method method, unsigned flags)
{
	struct uffdwp_tracker_opts o = { .sz = sizeof(o), .method = method, .flags = flags };
	struct uffdwp_tracker *t = NULL;
	int ret = uffdwp_tracker_create(&t, &o);

	if (ret == -EOPNOTSUPP)
		SKIP("the %s method is not available here", uffdwp_track_method_name(method));
	if (ret < 0)
		FAIL("uffdwp_tracker_create(%s): %s", uffdwp_track_method_name(method),
		     strerror(-ret));
	CHECK_EQ(uffdwp_tracker_method(t), method);
	return t;
}

/* Every written page of one full pass, as a string of '.' and 'W' over
 * [base, base + npages pages), so a mismatch prints readably. Runs outside
 * the window fail the test. */
static void collect_pattern(struct uffdwp_tracker *t, char *base, size_t npages,
			    unsigned flags, char *pattern)
{
	struct uffdwp_run runs[4];
	uintptr_t cur = 0, last_end = 0;
	int n;

	memset(pattern, '.', npages);
	pattern[npages] = '\0';
	while ((n = uffdwp_tracker_collect(t, &cur, runs, 4, flags)) > 0) {
		for (int i = 0; i < n; i++) {
			uintptr_t a = (uintptr_t)runs[i].addr;

			CHECK(runs[i].len > 0 && runs[i].len % test_page() == 0);
			CHECK(a >= (uintptr_t)base &&
			      a + runs[i].len <= (uintptr_t)base + npages * test_page());
			CHECK(a >= last_end);  /* in address order, no repeats */
			last_end = a + runs[i].len;
			for (size_t p = (a - (uintptr_t)base) / test_page();
			     p < (a + runs[i].len - (uintptr_t)base) / test_page(); p++)
				pattern[p] = 'W';
		}
	}
	CHECK_RET(n, 0);
}

#define CHECK_PATTERN(t, base, npages, flags, want) do {                          \
	char got_[(npages) + 1];                                                    \
	collect_pattern(t, base, npages, flags, got_);                              \
	if (strcmp(got_, want))                                                     \
		FAIL("written pages: got %s, want %s", got_, want);                 \
} while (0)

TRACK_TEST(tracker_collect_and_reset)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	char *mem = test_map(16, true);
	size_t page = test_page();

	CHECK_OK(uffdwp_tracker_add(t, mem, 16 * page));
	CHECK_PATTERN(t, mem, 16, 0, "................");
	mem[3 * page] = 2;
	mem[4 * page + 100] = 2;
	mem[10 * page + page - 1] = 2;
	CHECK_EQ(mem[5 * page], 1);  /* reads are not writes */
	/* Without reset, asking twice gives the same answer. */
	CHECK_PATTERN(t, mem, 16, 0, "...WW.....W.....");
	CHECK_PATTERN(t, mem, 16, UFFDWP_COLLECT_RESET, "...WW.....W.....");
	CHECK_PATTERN(t, mem, 16, 0, "................");
	mem[4 * page] = 3;
	mem[15 * page] = 3;
	CHECK_PATTERN(t, mem, 16, UFFDWP_COLLECT_RESET, "....W..........W");
	CHECK_EQ(mem[4 * page + 100], 2);  /* the data survived */
	uffdwp_tracker_destroy(t);
	/* Destroy leaves the memory writable. */
	mem[7 * page] = 4;
	CHECK_EQ(mem[7 * page], 4);
}

/* The anchors' trap: never-touched anonymous pages are skipped by a plain
 * protect, so their first write would go unseen. */
TRACK_TEST(tracker_never_touched_pages)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	char *mem = test_map(8, false);
	size_t page = test_page();

	CHECK_OK(uffdwp_tracker_add(t, mem, 8 * page));
	CHECK_EQ(mem[2 * page], 0);  /* a read maps the zero page: not a write */
	mem[5 * page] = 1;
	mem[7 * page] = 1;
	CHECK_PATTERN(t, mem, 8, UFFDWP_COLLECT_RESET, ".....W.W");
	mem[2 * page] = 1;
	CHECK_PATTERN(t, mem, 8, UFFDWP_COLLECT_RESET, "..W.....");
	uffdwp_tracker_destroy(t);
}

/* Many runs, a small output array: the cursor resumes, nothing is reported
 * twice or lost, and the reset applies only to what was reported. */
TRACK_TEST(tracker_cursor_iterates)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	const size_t npages = 1024;
	char *mem = test_map(npages, true);
	size_t page = test_page(), seen = 0, calls = 0;
	struct uffdwp_run runs[7];
	uintptr_t cur = 0;
	int n;

	CHECK_OK(uffdwp_tracker_add(t, mem, npages * page));
	for (size_t p = 0; p < npages; p += 4)
		mem[p * page] = 2;
	while ((n = uffdwp_tracker_collect(t, &cur, runs, 7, UFFDWP_COLLECT_RESET)) > 0) {
		calls++;
		for (int i = 0; i < n; i++) {
			CHECK_EQ(runs[i].len, page);
			if (seen < npages / 4)
				CHECK_EQ((char *)runs[i].addr, mem + seen * 4 * page);
			else  /* the page written during the pass */
				CHECK_EQ((char *)runs[i].addr, mem + (npages - 2) * page);
			seen++;
			/* Written while the pass goes on: after the cursor, so
			 * reported by this same pass. */
			if (seen == 100)
				mem[(npages - 2) * page] = 3;
		}
	}
	CHECK_RET(n, 0);
	CHECK_EQ(seen, npages / 4 + 1);
	CHECK(calls >= npages / 4 / 7);
	CHECK_RET(uffdwp_tracker_collect(t, &cur, runs, 7, 0), 0);  /* the pass is over */
	cur = 0;
	CHECK_RET(uffdwp_tracker_collect(t, &cur, runs, 7, 0), 0);  /* all were reset */
	uffdwp_tracker_destroy(t);
}

TRACK_TEST(tracker_bitmap_and_reset)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	const size_t npages = 130;  /* three bitmap words, the last partial */
	char *mem = test_map(npages, true);
	size_t page = test_page();
	uint64_t bits[3];

	CHECK_OK(uffdwp_tracker_add(t, mem, npages * page));
	mem[0] = 2;
	mem[64 * page] = 2;
	mem[65 * page] = 2;
	mem[129 * page] = 2;
	memset(bits, 0xff, sizeof(bits));
	CHECK_EQ(uffdwp_tracker_bitmap(t, mem, npages * page, bits, 0), 4);
	CHECK_EQ(bits[0], 1);
	CHECK_EQ(bits[1], 3);
	CHECK_EQ(bits[2], 2);
	/* A window: page 64 of mem is bit 0; only the window is reset. */
	CHECK_EQ(uffdwp_tracker_bitmap(t, mem + 64 * page, page, bits, UFFDWP_COLLECT_RESET), 1);
	CHECK_EQ(bits[0], 1);
	CHECK_EQ(uffdwp_tracker_bitmap(t, mem, npages * page, bits, 0), 3);
	CHECK_EQ(bits[1], 2);
	CHECK_OK(uffdwp_tracker_reset(t, mem + 65 * page, page));
	CHECK_EQ(uffdwp_tracker_bitmap(t, mem, npages * page, bits, 0), 2);
	CHECK_OK(uffdwp_tracker_reset(t, NULL, 0));
	CHECK_EQ(uffdwp_tracker_bitmap(t, mem, npages * page, bits, 0), 0);
	/* Reset pages are protected again: their next write is seen. */
	mem[129 * page] = 3;
	CHECK_EQ(uffdwp_tracker_bitmap(t, mem, npages * page, bits, 0), 1);
	CHECK_EQ(bits[2], 2);
	/* Outside every tracked range: clean. */
	CHECK_EQ(uffdwp_tracker_bitmap(t, mem - 4 * page, 4 * page, bits, 0), 0);
	uffdwp_tracker_destroy(t);
}

TRACK_TEST(tracker_add_remove)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	char *mem = test_map(32, true);
	size_t page = test_page();

	CHECK_RET(uffdwp_tracker_add(t, mem + 1, page), -EINVAL);
	CHECK_RET(uffdwp_tracker_add(t, mem, 0), -EINVAL);
	CHECK_OK(uffdwp_tracker_add(t, mem + 16 * page, 8 * page));
	CHECK_OK(uffdwp_tracker_add(t, mem, 8 * page));
	CHECK_RET(uffdwp_tracker_add(t, mem + 4 * page, 8 * page), -EEXIST);
	CHECK_RET(uffdwp_tracker_add(t, mem + 23 * page, 2 * page), -EEXIST);
	CHECK_OK(uffdwp_tracker_add(t, mem + 8 * page, 4 * page));  /* adjacent is fine */
	for (size_t p = 0; p < 32; p += 3)
		mem[p * page] = 2;
	/* Runs stop at range boundaries and skip untracked memory. */
	CHECK_PATTERN(t, mem, 32, 0, "W..W..W..W........W..W..........");
	CHECK_RET(uffdwp_tracker_remove(t, mem + 16 * page, 4 * page), -ENOENT);
	CHECK_OK(uffdwp_tracker_remove(t, mem + 8 * page, 4 * page));
	CHECK_RET(uffdwp_tracker_remove(t, mem + 8 * page, 4 * page), -ENOENT);
	CHECK_PATTERN(t, mem, 32, UFFDWP_COLLECT_RESET, "W..W..W...........W..W..........");
	/* A removed range is writable and never reported. */
	mem[9 * page] = 5;
	mem[17 * page] = 5;
	CHECK_PATTERN(t, mem, 32, 0, ".................W..............");
	/* And it can be tracked again, clean. */
	CHECK_OK(uffdwp_tracker_add(t, mem + 8 * page, 4 * page));
	CHECK_PATTERN(t, mem, 32, 0, ".................W..............");
	uffdwp_tracker_destroy(t);
}

TEST(tracker_bad_arguments, ON_NONE)
{
	struct uffdwp_tracker_opts o = { .sz = sizeof(o) };
	struct uffdwp_tracker *t = NULL;
	struct uffdwp_run run;
	uintptr_t cur = 0;
	uint64_t bits;

	CHECK_RET(uffdwp_tracker_create(NULL, NULL), -EINVAL);
	o.sz = 4;
	CHECK_RET(uffdwp_tracker_create(&t, &o), -EINVAL);
	o.sz = sizeof(o);
	o.method = (enum uffdwp_track_method)9;
	CHECK_RET(uffdwp_tracker_create(&t, &o), -EINVAL);
	o.method = UFFDWP_TRACK_AUTO;
	o.flags = 1u << 7;
	CHECK_RET(uffdwp_tracker_create(&t, &o), -EINVAL);
	CHECK(t == NULL);
	CHECK_OK(uffdwp_tracker_create(&t, NULL));
	CHECK(uffdwp_tracker_method(t) != UFFDWP_TRACK_AUTO);
	CHECK_RET(uffdwp_tracker_collect(t, NULL, &run, 1, 0), -EINVAL);
	CHECK_RET(uffdwp_tracker_collect(t, &cur, &run, 0, 0), -EINVAL);
	CHECK_RET(uffdwp_tracker_collect(t, &cur, &run, 1, 1u << 4), -EINVAL);
	CHECK_RET(uffdwp_tracker_collect(t, &cur, &run, 1, 0), 0);  /* nothing tracked */
	CHECK_RET(uffdwp_tracker_bitmap(t, (void *)(uintptr_t)test_page(), 1, &bits, 0), -EINVAL);
	CHECK_RET(uffdwp_tracker_reset(t, NULL, test_page()), -EINVAL);
	CHECK_RET(uffdwp_tracker_remove(t, (void *)(uintptr_t)test_page(), test_page()), -ENOENT);
	CHECK(!strcmp(uffdwp_track_method_name(UFFDWP_TRACK_ASYNC), "async"));
	CHECK(!strcmp(uffdwp_track_method_name((enum uffdwp_track_method)9), "?"));
	uffdwp_tracker_destroy(t);
	uffdwp_tracker_destroy(NULL);
}

/* AUTO takes the cheapest method this machine has: async on 6.7+. */
TEST(tracker_auto_prefers_async, ON_KERNEL)
{
	struct uffdwp_probe p = { .sz = sizeof(p) };
	struct uffdwp_tracker *t;

	CHECK_OK(uffdwp_probe(&p));
	CHECK_OK(uffdwp_tracker_create(&t, NULL));
	if ((p.kernel_features & UFFDWP_FEATURE_WP_ASYNC) && p.pagemap_scan)
		CHECK_EQ(uffdwp_tracker_method(t), UFFDWP_TRACK_ASYNC);
	else if (p.kernel_features)
		CHECK_EQ(uffdwp_tracker_method(t), UFFDWP_TRACK_SYNC);
	else
		CHECK_EQ(uffdwp_tracker_method(t), UFFDWP_TRACK_EMULATED);
	CHECK_EQ(uffdwp_tracker_granule(t), test_page());
	uffdwp_tracker_destroy(t);
}

/*
 * MADV_DONTNEED changes a page (it reads as zero afterwards) without a
 * write. Whatever each method says about the discard itself, the page's
 * next write must be seen: the kernel drops write-protection with the
 * page, and a tracker that missed it would lose every later write.
 */
TRACK_TEST(tracker_madv_dontneed)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	char *mem = test_map(4, true);
	size_t page = test_page();

	CHECK_OK(uffdwp_tracker_add(t, mem, 4 * page));
	CHECK_OK(madvise(mem + page, page, MADV_DONTNEED));
	CHECK_EQ(mem[page], 0);
	/* ASYNC: the discard counts as a write (the page-table entry is
	 * gone, so PAGEMAP_SCAN cannot tell it from one). SYNC: the kernel's
	 * remove event says so. EMULATED cannot see it (no such event). */
	/* SYNC: madvise() returns once the engine thread has read the
	 * event; flush waits until it has been applied. */
	CHECK_OK(uffdwp__tracker_flush(t));
	if (method == UFFDWP_TRACK_EMULATED)
		CHECK_PATTERN(t, mem, 4, UFFDWP_COLLECT_RESET, "....");
	else
		CHECK_PATTERN(t, mem, 4, UFFDWP_COLLECT_RESET, ".W..");
	mem[page] = 7;
	CHECK_PATTERN(t, mem, 4, UFFDWP_COLLECT_RESET, ".W..");
	mem[page] = 8;
	CHECK_PATTERN(t, mem, 4, UFFDWP_COLLECT_RESET, ".W..");
	CHECK_PATTERN(t, mem, 4, UFFDWP_COLLECT_RESET, "....");
	CHECK_EQ(mem[page], 8);
	uffdwp_tracker_destroy(t);
}

/* A 2 MiB-aligned region backed by transparent huge pages, or a skip. */
static char *map_thp(size_t *len)
{
	size_t huge = 2u << 20;
	char *raw = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *mem;

	CHECK(raw != MAP_FAILED);
	mem = (char *)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
	if (madvise(mem, huge, MADV_HUGEPAGE) < 0)
		SKIP("no transparent huge pages: %s", strerror(errno));
	memset(mem, 1, huge);
	*len = huge;
	return mem;
}

/* Does /proc/self/smaps say [mem, mem+len) is backed by a huge page? */
static bool is_thp(const char *mem)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[256];
	bool in = false, thp = false;

	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi, kb;

		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
			in = lo <= (uintptr_t)mem && (uintptr_t)mem < hi;
		else if (in && sscanf(line, "AnonHugePages: %lu kB", &kb) == 1)
			thp = kb > 0;
	}
	fclose(f);
	return thp;
}

/* Memory already in a huge page: by default tracked page by page all the
 * same (one write = one page, not 2 MiB). */
TRACK_TEST(tracker_thp_exact)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	size_t len, page = test_page(), npages;
	char *mem = map_thp(&len);

	npages = len / page;
	if (!is_thp(mem))
		SKIP("the kernel gave no huge page for the test region");
	CHECK_OK(uffdwp_tracker_add(t, mem, len));
	mem[5 * page] = 2;
	{
		uint64_t bits[npages / 64];

		CHECK_EQ(uffdwp_tracker_bitmap(t, mem, len, bits, UFFDWP_COLLECT_RESET), 1);
		CHECK_EQ(bits[0], 1u << 5);
		mem[(npages - 1) * page] = 2;
		CHECK_EQ(uffdwp_tracker_bitmap(t, mem, len, bits, UFFDWP_COLLECT_RESET), 1);
		CHECK_EQ(bits[npages / 64 - 1], UINT64_C(1) << 63);
	}
	uffdwp_tracker_destroy(t);
}

/* UFFDWP_TRACK_HUGE: huge pages stay, answers may cover a whole huge page
 * (SYNC, EMULATED: exactly the granule around each written page). */
TRACK_TEST(tracker_thp_granule)
{
	struct uffdwp_tracker *t = open_tracker(method, UFFDWP_TRACK_HUGE);
	size_t len, page = test_page(), granule = uffdwp_tracker_granule(t);
	char *mem = map_thp(&len);
	struct uffdwp_run runs[4];
	uintptr_t cur = 0;

	if (method == UFFDWP_TRACK_ASYNC)
		CHECK_EQ(granule, page);
	else
		CHECK_EQ(granule, len);
	CHECK_OK(uffdwp_tracker_add(t, mem, len));
	CHECK(is_thp(mem));  /* not split by the tracker */
	mem[5 * page] = 2;
	CHECK_RET(uffdwp_tracker_collect(t, &cur, runs, 4, UFFDWP_COLLECT_RESET), 1);
	CHECK((char *)runs[0].addr <= mem + 5 * page);
	CHECK((char *)runs[0].addr + runs[0].len >= mem + 6 * page);
	CHECK_EQ((uintptr_t)runs[0].addr % granule, 0);
	CHECK_EQ(runs[0].len % granule, 0);
	cur = 0;
	CHECK_RET(uffdwp_tracker_collect(t, &cur, runs, 4, 0), 0);
	mem[9 * page] = 2;  /* protected again after the reset */
	cur = 0;
	CHECK_RET(uffdwp_tracker_collect(t, &cur, runs, 4, 0), 1);
	/* A range not aligned to the granule cannot be tracked in granules. */
	if (granule > page)
		CHECK_RET(uffdwp_tracker_add(t, mem - page, page), -EINVAL);
	uffdwp_tracker_destroy(t);
}

/* Swapped-out pages keep their protection (a swap entry carries the
 * uffd-wp bit); a page swapped out is not a write, and its write after
 * swap-in is seen. */
TRACK_TEST(tracker_swapped_out_pages)
{
	struct uffdwp_tracker *t;
	char *mem;
	size_t page = test_page();

	test_need_swap();
	t = open_tracker(method, 0);
	mem = test_map(8, true);
	CHECK_OK(uffdwp_tracker_add(t, mem, 8 * page));
	mem[page] = 2;
	test_page_out(mem, 8);
	CHECK_PATTERN(t, mem, 8, UFFDWP_COLLECT_RESET, ".W......");
	CHECK_EQ(mem[3 * page], 1);  /* swap-in by a read */
	CHECK_PATTERN(t, mem, 8, 0, "........");
	mem[3 * page] = 2;
	mem[6 * page] = 2;
	CHECK_PATTERN(t, mem, 8, UFFDWP_COLLECT_RESET, "...W..W.");
	uffdwp_tracker_destroy(t);
}

/* fork(): the child is not tracked (its writes complete and reach no
 * report, its tracker calls fail) and the parent's tracking goes on. */
TRACK_TEST(tracker_fork)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	char *mem = test_map(8, true);
	size_t page = test_page();
	struct uffdwp_run run;
	uintptr_t cur = 0;
	int status;
	pid_t pid;

	CHECK_OK(uffdwp_tracker_add(t, mem, 8 * page));
	mem[0] = 2;
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		/* The child: plain memory. A hang here is the timeout's. */
		for (size_t p = 0; p < 8; p++)
			mem[p * page] = 9;
		if (uffdwp_tracker_collect(t, &cur, &run, 1, UFFDWP_COLLECT_RESET) != -ECHILD)
			_exit(3);
		uffdwp_tracker_destroy(t);
		_exit(mem[7 * page] == 9 ? 0 : 4);
	}
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
	CHECK_EQ(mem[7 * page], 1);  /* the child's writes were its own */
	CHECK_PATTERN(t, mem, 8, UFFDWP_COLLECT_RESET, "W.......");
	/* After the fork the pages are shared copy-on-write: the parent's
	 * first write copies them, and is still seen. */
	mem[2 * page] = 3;
	mem[0] = 3;
	CHECK_PATTERN(t, mem, 8, UFFDWP_COLLECT_RESET, "W.W.....");
	uffdwp_tracker_destroy(t);
}

/* munmap or mremap of tracked memory: collect says so (-ENOENT), nothing
 * hangs or crashes, and the range can then be removed. */
TRACK_TEST(tracker_unmap_and_remap)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	char *mem = test_map(16, true), *moved, *place = test_map(8, false);
	size_t page = test_page();
	struct uffdwp_run run;
	uintptr_t cur = 0;

	CHECK_OK(uffdwp_tracker_add(t, mem, 8 * page));
	CHECK_OK(uffdwp_tracker_add(t, mem + 8 * page, 8 * page));
	mem[page] = 2;
	CHECK_OK(munmap(mem + 2 * page, 2 * page));
	CHECK_RET(uffdwp_tracker_collect(t, &cur, &run, 1, UFFDWP_COLLECT_RESET), -ENOENT);
	CHECK_OK(uffdwp_tracker_remove(t, mem, 8 * page));
	cur = 0;
	CHECK_RET(uffdwp_tracker_collect(t, &cur, &run, 1, 0), 0);
	/* mremap moves the second range away; writing there completes. */
	moved = mremap(mem + 8 * page, 8 * page, 8 * page, MREMAP_MAYMOVE | MREMAP_FIXED, place);
	CHECK(moved == place);
	/* The emulation's protection is mprotect(2)'s, which moves with the
	 * memory (uffdwp_emulated(7)); the kernel's registration does not. */
	if (method != UFFDWP_TRACK_EMULATED) {
		moved[0] = 3;
		CHECK_EQ(moved[0], 3);
	}
	cur = 0;
	CHECK_RET(uffdwp_tracker_collect(t, &cur, &run, 1, 0), -ENOENT);
	CHECK_OK(uffdwp_tracker_remove(t, mem + 8 * page, 8 * page));
	/* New memory mapped over a tracked place is not ours either: ASYNC
	 * and SYNC notice; the emulation cannot (uffdwp_tracker(3)). */
	CHECK_OK(uffdwp_tracker_add(t, place, 8 * page));
	CHECK(mmap(place, 8 * page, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED);
	place[0] = 4;
	/* SYNC hears of it through an unmap event, read by the engine
	 * thread before mmap() returns and applied by the time flush does. */
	CHECK_OK(uffdwp__tracker_flush(t));
	cur = 0;
	CHECK_RET(uffdwp_tracker_collect(t, &cur, &run, 1, 0),
		  method == UFFDWP_TRACK_EMULATED ? 0 : -ENOENT);
	CHECK_OK(uffdwp_tracker_remove(t, place, 8 * page));
	uffdwp_tracker_destroy(t);
}

/* --- no lost write under collect-and-reset (the kernel's pagemap
 * "transact" test, in our own words) --- */

#define TX_PAGES 256
#define TX_WRITERS 2

struct transact {
	char *mem;
	size_t page;
	atomic_bool stop;
	atomic_ulong writes;
	struct tx_writer_arg {
		struct transact *tx;
		size_t index;
	} writer[TX_WRITERS];
	pthread_t thread[TX_WRITERS];
};

static _Atomic uint64_t *tx_counter(struct transact *tx, size_t p)
{
	return (_Atomic uint64_t *)(tx->mem + p * tx->page);
}

/* Writer w increments the counters of pages w, w + TX_WRITERS, ... in a
 * pseudo-random order, so writes hit pages the collector is re-protecting. */
static void *tx_writer(void *arg)
{
	struct tx_writer_arg *me = arg;
	struct transact *tx = me->tx;
	size_t w = me->index;
	uint32_t x = 2463534242u + (uint32_t)w;

	while (!atomic_load(&tx->stop)) {
		size_t p;

		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p = (x % (TX_PAGES / TX_WRITERS)) * TX_WRITERS + w;
		atomic_fetch_add_explicit(tx_counter(tx, p), 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&tx->writes, 1, memory_order_relaxed);
	}
	return NULL;
}

static void tx_start(struct transact *tx)
{
	for (size_t w = 0; w < TX_WRITERS; w++) {
		tx->writer[w] = (struct tx_writer_arg){ tx, w };
		CHECK_EQ(pthread_create(&tx->thread[w], NULL, tx_writer, &tx->writer[w]), 0);
	}
}

static void tx_stop(struct transact *tx)
{
	atomic_store(&tx->stop, true);
	for (size_t w = 0; w < TX_WRITERS; w++)
		pthread_join(tx->thread[w], NULL);
}

/* Record, for every page reported, its counter as read after the report. */
static int tx_collect(struct uffdwp_tracker *t, struct transact *tx, uint64_t *seen,
		      bool *reported)
{
	struct uffdwp_run runs[16];
	uintptr_t cur = 0;
	int n, total = 0;

	while ((n = uffdwp_tracker_collect(t, &cur, runs, 16, UFFDWP_COLLECT_RESET)) > 0) {
		for (int i = 0; i < n; i++) {
			size_t a = (size_t)((char *)runs[i].addr - tx->mem) / tx->page;

			for (size_t p = a; p < a + runs[i].len / tx->page; p++) {
				seen[p] = atomic_load(tx_counter(tx, p));
				if (reported)
					reported[p] = true;
			}
		}
		total += n;
	}
	CHECK_RET(n, 0);
	return total;
}

TRACK_TEST_TIMEOUT(tracker_no_lost_write, 60)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	struct transact tx = { .mem = test_map(TX_PAGES, false), .page = test_page() };
	uint64_t seen[TX_PAGES] = { 0 };
	bool reported[TX_PAGES] = { false };
	unsigned long collects = 0, min_writes = 20000;
	struct timespec t0, now;

	CHECK_OK(uffdwp_tracker_add(t, tx.mem, TX_PAGES * tx.page));
	tx_start(&tx);
	/* At least 2 s and enough writes that many raced a reset. */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		tx_collect(t, &tx, seen, NULL);
		collects++;
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec - t0.tv_sec < 2 ||
		 (atomic_load(&tx.writes) < min_writes && now.tv_sec - t0.tv_sec < 20));
	tx_stop(&tx);
	CHECK(atomic_load(&tx.writes) >= min_writes);
	CHECK(collects > 10);
	/* The final pass must name every page changed since it was last
	 * reported; a page it does not name must hold what was seen then. */
	tx_collect(t, &tx, seen, reported);
	for (size_t p = 0; p < TX_PAGES; p++)
		if (!reported[p] && atomic_load(tx_counter(&tx, p)) != seen[p])
			FAIL("page %zu: counter %llu, last reported at %llu: a write was lost "
			     "(%lu collects, %lu writes)", p,
			     (unsigned long long)atomic_load(tx_counter(&tx, p)),
			     (unsigned long long)seen[p], collects, atomic_load(&tx.writes));
	/* And once quiet, nothing is left to report. */
	CHECK_EQ(tx_collect(t, &tx, seen, NULL), 0);
	uffdwp_tracker_destroy(t);
}

/* --- the snapshot's hook (src/tracker.h) --- */

struct interposed {
	atomic_int calls;
	_Atomic uintptr_t last;
};

static void count_fault(void *arg, uintptr_t page)
{
	struct interposed *in = arg;

	atomic_store(&in->last, page);
	atomic_fetch_add(&in->calls, 1);
}

TRACK_TEST(tracker_interposer)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	struct interposed in = { 0 };
	char *mem = test_map(8, true);
	size_t page = test_page();

	if (method == UFFDWP_TRACK_ASYNC) {
		CHECK(uffdwp__tracker_context(t) == NULL);
		CHECK_RET(uffdwp__tracker_set_interposer(t, count_fault, NULL, &in), -EOPNOTSUPP);
		uffdwp_tracker_destroy(t);
		return;
	}
	CHECK(uffdwp__tracker_context(t) != NULL);
	CHECK_OK(uffdwp_tracker_add(t, mem, 8 * page));
	mem[0] = 2;  /* written before the snapshot begins */
	CHECK_OK(uffdwp__tracker_set_interposer(t, count_fault, NULL, &in));
	CHECK_RET(uffdwp__tracker_set_interposer(t, count_fault, NULL, &in), -EBUSY);
	CHECK_OK(uffdwp_tracker_reset(t, NULL, 0));
	/* Every first write after the reset, once per page, including the
	 * page that was written before it. */
	mem[0] = 3;
	mem[0] = 4;
	mem[5 * page + 1] = 3;
	CHECK_EQ(atomic_load(&in.calls), 2);
	CHECK_EQ(atomic_load(&in.last), (uintptr_t)(mem + 5 * page));
	CHECK_PATTERN(t, mem, 8, 0, "W....W..");
	/* A page protected through the tracker's context faults into the
	 * interposer and is then written and tracked as usual. */
	CHECK_OK(uffdwp_writeprotect(uffdwp__tracker_context(t), mem + 5 * page, page,
				     UFFDWP_WRITEPROTECT_MODE_WP));
	mem[5 * page] = 4;
	CHECK_EQ(atomic_load(&in.calls), 3);
	CHECK_OK(uffdwp__tracker_set_interposer(t, NULL, NULL, NULL));
	mem[7 * page] = 3;
	CHECK_EQ(atomic_load(&in.calls), 3);
	CHECK_PATTERN(t, mem, 8, 0, "W....W.W");
	uffdwp_tracker_destroy(t);
}

/*
 * The snapshot's "install the interposer, then collect with reset" must
 * leave every page either protected or already passed through the new
 * interposer, with writers running and nobody quiesced: a fault whose
 * handler looked for the interposer before it was installed must not
 * un-protect its page after the reset. The check: right after each reset,
 * every page reported written must have been seen by this round's
 * interposer (the handler calls it before marking the page). A page marked
 * but not seen is writable and clean for the snapshot: its later writes
 * would be missed.
 */
struct ip_round {
	_Atomic bool seen[TX_PAGES];
	char *mem;
	size_t page;
};

static void ip_record(void *arg, uintptr_t page)
{
	struct ip_round *ip = arg;

	atomic_store(&ip->seen[(page - (uintptr_t)ip->mem) / ip->page], true);
}

SYNC_TRACK_TEST(tracker_interposer_installed_under_writers)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	struct transact tx = { .mem = test_map(TX_PAGES, true), .page = test_page() };
	struct ip_round ip = { .mem = tx.mem, .page = tx.page };
	unsigned long rounds = 0, marked = 0;
	struct timespec t0, now;

	CHECK_OK(uffdwp_tracker_add(t, tx.mem, TX_PAGES * tx.page));
	tx_start(&tx);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		struct uffdwp_run runs[16];
		uintptr_t cur = 0;
		int n;

		/* On return the previous round's calls are over. */
		CHECK_OK(uffdwp__tracker_set_interposer(t, NULL, NULL, NULL));
		for (size_t p = 0; p < TX_PAGES; p++)
			atomic_store(&ip.seen[p], false);
		CHECK_OK(uffdwp__tracker_set_interposer(t, ip_record, NULL, &ip));
		CHECK_OK(uffdwp_tracker_reset(t, NULL, 0));
		while ((n = uffdwp_tracker_collect(t, &cur, runs, 16, 0)) > 0) {
			for (int i = 0; i < n; i++) {
				size_t a = (size_t)((char *)runs[i].addr - tx.mem) / tx.page;

				for (size_t p = a; p < a + runs[i].len / tx.page; p++) {
					marked++;
					if (!atomic_load(&ip.seen[p]))
						FAIL("round %lu: page %zu written after the reset "
						     "without the interposer", rounds, p);
				}
			}
		}
		CHECK_RET(n, 0);
		rounds++;
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec - t0.tv_sec < 2);
	CHECK_OK(uffdwp__tracker_set_interposer(t, NULL, NULL, NULL));
	tx_stop(&tx);
	CHECK(rounds > 10);
	CHECK(marked > 0);  /* writes did land between resets */
	uffdwp_tracker_destroy(t);
}

/* Runs never cross the boundary of a tracked range, even between two
 * adjacent ranges written on both sides of it (the snapshot relies on it:
 * one run, one region). */
TRACK_TEST(tracker_runs_stop_at_range_boundary)
{
	struct uffdwp_tracker *t = open_tracker(method, 0);
	char *mem = test_map(8, true);
	size_t page = test_page();
	struct uffdwp_run runs[4];
	uintptr_t cur = 0;

	CHECK_OK(uffdwp_tracker_add(t, mem, 4 * page));
	CHECK_OK(uffdwp_tracker_add(t, mem + 4 * page, 4 * page));
	mem[2 * page] = 2;
	mem[3 * page] = 2;
	mem[4 * page] = 2;
	CHECK_RET(uffdwp_tracker_collect(t, &cur, runs, 4, UFFDWP_COLLECT_RESET), 2);
	CHECK_EQ((char *)runs[0].addr, mem + 2 * page);
	CHECK_EQ(runs[0].len, 2 * page);
	CHECK_EQ((char *)runs[1].addr, mem + 4 * page);
	CHECK_EQ(runs[1].len, page);
	uffdwp_tracker_destroy(t);
}
