/* SPDX-License-Identifier: MIT */
/*
 * uffdwp bench core: `uffdwp core` against gcore on the same target in the
 * same run. The target (a child of ours) maps SIZE bytes in 4 KiB pages
 * (MADV_NOHUGEPAGE) or THP, touches them all, and runs writer threads that
 * store at random addresses at full speed, counting their stores, and a
 * heartbeat thread that records the longest gap it saw (what a stall looks
 * like from inside).
 *
 * Rows: core/pause (first thread stopped to last resumed, as the tool
 * measures it) against gcore/stall (the longest heartbeat gap while gcore
 * ran: it stops the process for its whole run); core/throughput-during-save
 * against the writers' own rate just before (ratio: ns per store, so a
 * ratio of 2 is half the throughput). The writers store anywhere (the worst
 * case: nearly every page is first written while still protected), then,
 * as a second target, within a hot set of 1/64 of the memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include "bench.h"

#define WRITERS 2
#define RATE_WINDOW_NS 300000000ull  /* the writers' rate before a save */
#define CORE_PATH "/var/tmp/uffdwp-bench-core"

/* Shared between the target and us (MAP_SHARED). */
struct shared {
	_Atomic uint64_t stores[WRITERS];
	_Atomic uint64_t max_gap_ns;
	_Atomic int ready, stop;
};

struct target_args {
	struct shared *sh;
	uint64_t *mem;
	size_t words;  /* the writers store at random among these */
	int id;
};

/* The hot-set variant: writers store among the first 1/HOT_FRACTION of
 * the memory (a server's working set), the rest is only read by the core. */
#define HOT_FRACTION 64

static void *writer(void *arg)
{
	struct target_args *a = arg;
	uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(a->id + 1), n = 0;

	while (!atomic_load_explicit(&a->sh->stop, memory_order_relaxed)) {
		for (int i = 0; i < 256; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			a->mem[x % a->words] = n + (uint64_t)i;
		}
		n += 256;
		atomic_store_explicit(&a->sh->stores[a->id], n, memory_order_relaxed);
	}
	return NULL;
}

static void *heartbeat(void *arg)
{
	struct shared *sh = arg;
	uint64_t last = bench_now_ns();

	while (!atomic_load_explicit(&sh->stop, memory_order_relaxed)) {
		uint64_t now = bench_now_ns(), gap = now - last;

		if (gap > atomic_load_explicit(&sh->max_gap_ns, memory_order_relaxed))
			atomic_store_explicit(&sh->max_gap_ns, gap, memory_order_relaxed);
		last = now;
	}
	return NULL;
}

static _Noreturn void target_main(struct shared *sh, size_t len, bool thp, bool hot)
{
	struct target_args a[WRITERS];
	pthread_t t[WRITERS + 1];
	uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (mem == MAP_FAILED)
		_exit(1);
	madvise(mem, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	memset(mem, 1, len);
	for (int i = 0; i < WRITERS; i++) {
		a[i] = (struct target_args){ sh, mem, len / sizeof(*mem) / (hot ? HOT_FRACTION : 1), i };
		pthread_create(&t[i], NULL, writer, &a[i]);
	}
	pthread_create(&t[WRITERS], NULL, heartbeat, sh);
	atomic_store(&sh->ready, 1);
	for (int i = 0; i <= WRITERS; i++)
		pthread_join(t[i], NULL);
	_exit(0);
}

static uint64_t stores(struct shared *sh)
{
	uint64_t n = 0;

	for (int i = 0; i < WRITERS; i++)
		n += atomic_load(&sh->stores[i]);
	return n;
}

/* Run a command to its end; 0 or -1. Its stdout into out (if not NULL). */
static int run(char *const argv[], char *out, size_t out_len)
{
	int p[2], status;
	pid_t child;
	size_t n = 0;
	ssize_t got;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	child = fork();
	if (child < 0)
		return -1;
	if (child == 0) {
		int devnull = open("/dev/null", O_WRONLY);

		dup2(p[1], 1);
		dup2(devnull, 2);
		execvp(argv[0], argv);
		_exit(127);
	}
	close(p[1]);
	while (out && n + 1 < out_len && (got = read(p[0], out + n, out_len - n - 1)) > 0)
		n += (size_t)got;
	if (out)
		out[n] = 0;
	close(p[0]);
	waitpid(child, &status, 0);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static uint64_t json_u64(const char *json, const char *key)
{
	char k[64];
	const char *at;

	snprintf(k, sizeof(k), "\"%s\": ", key);
	at = strstr(json, k);
	return at ? strtoull(at + strlen(k), NULL, 10) : 0;
}

static bool have_gcore(void)
{
	return system("command -v gcore >/dev/null 2>&1") == 0;
}

/* One target: its rate, our core, gcore (not for the hot-set variant,
 * whose pause is the same). */
static int measure(struct bench *b, size_t len, bool thp, bool hot)
{
	const char *cfg = bench_strdup(b, "%zuM/%s%s", len >> 20, thp ? "thp" : "4k",
				       hot ? "/hot-set" : "");
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char pid[16], json[1024];
	uint64_t t0, s0, rate_ns, save_ns, save_stores;
	pid_t target;
	int ret = 0;

	if (sh == MAP_FAILED)
		return -ENOMEM;
	target = fork();
	if (target < 0)
		return -errno;
	if (target == 0)
		target_main(sh, len, thp, hot);
	while (!atomic_load(&sh->ready))
		usleep(10000);  /* the target populating its memory: nothing to wait on */
	snprintf(pid, sizeof(pid), "%d", target);

	/* The writers' own rate. */
	t0 = bench_now_ns();
	s0 = stores(sh);
	usleep(RATE_WINDOW_NS / 1000);
	rate_ns = bench_now_ns() - t0;
	uint64_t rate_stores = stores(sh) - s0;

	/* Our core. */
	char *core_argv[] = { "/proc/self/exe", "core", "--json", "-o", CORE_PATH, pid, NULL };

	atomic_store(&sh->max_gap_ns, 0);
	t0 = bench_now_ns();
	s0 = stores(sh);
	if (run(core_argv, json, sizeof(json)) < 0) {
		bench_skip(b, bench_strdup(b, "%s/core/pause", cfg), "uffdwp core failed");
		ret = 0;
		goto out;
	}
	save_ns = bench_now_ns() - t0;
	save_stores = stores(sh) - s0;
	uint64_t our_gap = atomic_load(&sh->max_gap_ns);

	unlink(CORE_PATH);
	bench_row(b, &(struct bench_row){
		.name = bench_strdup(b, "%s/writers/before", cfg), .unit = "store",
		.ops = rate_stores, .ns = rate_ns,
		.note = hot ? "2 writers, random 8-byte stores in the first 1/64" :
			      "2 writers, random 8-byte stores anywhere" });
	bench_row(b, &(struct bench_row){
		.name = bench_strdup(b, "%s/writers/during-core", cfg), .unit = "store",
		.ops = save_stores, .ns = save_ns,
		.baseline = bench_strdup(b, "%s/writers/before", cfg),
		.note = bench_strdup(b, "save %.2f s, %llu faults", save_ns / 1e9,
				     (unsigned long long)json_u64(json, "faults")) });
	bench_target(b, bench_strdup(b, "%s/writers/during-core", cfg),
		     bench_strdup(b, "%s/writers/before", cfg), 2.0);

	if (hot)
		goto out;
	/* gcore on the same target. */
	if (!have_gcore()) {
		bench_skip(b, bench_strdup(b, "%s/gcore/stall", cfg), "gcore is not installed");
	} else {
		char *gcore_argv[] = { "gcore", "-o", CORE_PATH "-gcore", pid, NULL };
		char gpath[128];

		atomic_store(&sh->max_gap_ns, 0);
		t0 = bench_now_ns();
		run(gcore_argv, NULL, 0);
		uint64_t gcore_ns = bench_now_ns() - t0;

		snprintf(gpath, sizeof(gpath), CORE_PATH "-gcore.%s", pid);
		unlink(gpath);
		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/gcore/stall", cfg), .unit = "core", .ops = 1,
			.ns = atomic_load(&sh->max_gap_ns),
			.note = bench_strdup(b, "gcore ran %.2f s", gcore_ns / 1e9) });
	}
	bench_row(b, &(struct bench_row){
		.name = bench_strdup(b, "%s/core/pause", cfg), .unit = "core", .ops = 1,
		.ns = json_u64(json, "pause_ns"),
		.baseline = have_gcore() ? bench_strdup(b, "%s/gcore/stall", cfg) : NULL,
		.note = bench_strdup(b, "longest heartbeat gap %.1f ms", our_gap / 1e6) });
	/* The targets are for these sizes; --quick shrinks them. */
	if (!thp && have_gcore() && !b->opts->quick)
		bench_target(b, bench_strdup(b, "%s/core/pause", cfg),
			     bench_strdup(b, "%s/gcore/stall", cfg), len >= ((size_t)2 << 30) ? 0.01 : 0.05);
out:
	atomic_store(&sh->stop, 1);
	kill(target, SIGKILL);
	waitpid(target, NULL, 0);
	munmap(sh, sizeof(*sh));
	return ret;
}

BENCH_SUITE(core, "uffdwp core against gcore: the target's pause and its writers' throughput")
{
	const size_t sizes[] = { (size_t)512 << 20, (size_t)2 << 30 };

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		for (int thp = 0; thp < 2; thp++) {
			size_t len = b->opts->quick ? sizes[i] / 16 : sizes[i];
			int ret;

			bench_note(b, "core: %zu MiB %s", len >> 20, thp ? "THP" : "4 KiB pages");
			ret = measure(b, len, thp, false);
			if (!ret)
				ret = measure(b, len, thp, true);
			if (ret)
				return ret;
		}
	return 0;
}
