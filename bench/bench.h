/* SPDX-License-Identifier: MIT */
/*
 * The benchmark harness of `uffdwp bench` (bench/harness.c) and what a
 * suite needs from it. A suite is one file, bench/NAME.c, that registers
 * itself with BENCH_SUITE(); nothing else is edited to add one:
 *
 *   BENCH_SUITE(track, "write tracker: collect and reset")
 *   {
 *       size_t len = b->opts->region_size;
 *       ...
 *       bench_row(b, &(struct bench_row){ .name = "async/collect", .unit = "page",
 *                                         .ops = pages, .ns = elapsed,
 *                                         .baseline = "pagemap-raw" });
 *       return 0;
 *   }
 *
 * The body sees `struct bench *b`. It returns 0, or a negative errno when
 * it could not measure at all (the command then exits 1); a measurement
 * that does not apply on this machine is a bench_skip() row, not a failure.
 *
 * Rows are printed when the suite returns - as a table by default, as JSON
 * with --json (schema: uffdwp-bench(1)) - so a row's baseline may be
 * measured before or after it; the ratio is ns_per_op(row) /
 * ns_per_op(baseline), both from this run. Suites print nothing
 * themselves (progress may go to stderr through bench_note()).
 */
#ifndef UFFDWP_BENCH_H
#define UFFDWP_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Options common to every suite (set by the command line). */
struct bench_opts {
	size_t region_size;  /* --size: bytes of memory a suite works on (default 256 MiB) */
	bool quick;          /* --quick: a smoke run, a few seconds in all (1/16 the size) */
	bool json;           /* --json */
	bool verbose;        /* -v: bench_note() goes to stderr */
	unsigned repeat;     /* --repeat: runs of each measurement; the best is kept (default 1) */
	const char *rows;    /* --rows: only rows whose name contains this (NULL: all) */
};

/* One measurement. Strings must outlive the suite's run (literals, or
 * bench_strdup()). */
struct bench_row {
	const char *name;      /* unique in its suite, e.g. "engine-thread/kernel/seq" */
	const char *unit;      /* what one op is: "page", "snapshot", ... */
	uint64_t ops;          /* how many ops were timed */
	uint64_t ns;           /* their total wall time */
	/* Optional per-op latencies (NULL: no percentile columns). */
	const struct bench_lat *lat;
	/* Optional: the name of a row of the same suite to compute ratio against. */
	const char *baseline;
	/* Optional: a short remark shown after the row ("2 writers", "THP"). */
	const char *note;
};

/* Per-op latency recorder: a log-linear histogram (32 sub-buckets per
 * power of two: percentiles within ~3 %), fixed size, no allocation, so a
 * timing thread can own one and recorders merge after the run. */
#define BENCH_LAT_SUB 32
#define BENCH_LAT_BUCKETS (64 * BENCH_LAT_SUB)
struct bench_lat {
	uint64_t count, sum_ns, min_ns, max_ns;
	uint64_t bucket[BENCH_LAT_BUCKETS];
};

struct bench;  /* the run of one suite: rows, options */

struct bench_suite {
	const char *name;
	const char *summary;
	int (*run)(struct bench *b);
};

/* What a suite's body can read. */
struct bench {
	const struct bench_opts *opts;
	size_t page;  /* sysconf(_SC_PAGESIZE) */
	struct bench_state *state;  /* the harness's own */
};

#define BENCH_SUITE(name_, summary_)                                               \
	static int bench_suite_##name_(struct bench *b);                            \
	static const struct bench_suite bench_suite_entry_##name_                   \
		__attribute__((used, section("uffdwp_bench_suites"),                \
			       aligned(sizeof(void *)))) =                          \
		{ #name_, summary_, bench_suite_##name_ };                          \
	static int bench_suite_##name_(struct bench *b)

/* --- timing --- */

/* CLOCK_MONOTONIC in ns. */
static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* --- latency recorder (harness.c) --- */

void bench_lat_reset(struct bench_lat *lat);
void bench_lat_add(struct bench_lat *lat, uint64_t ns);
/* into += from */
void bench_lat_merge(struct bench_lat *into, const struct bench_lat *from);
/* The q-quantile (0 <= q <= 1) in ns; 0 when empty. */
uint64_t bench_lat_quantile(const struct bench_lat *lat, double q);

/* --- results (harness.c) --- */

/* Record a row (copied). */
void bench_row(struct bench *b, const struct bench_row *row);

/* Record that a measurement could not run here, and why (printf format). */
void bench_skip(struct bench *b, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Declare a target: row's ns/op must be at most max_ratio times baseline's.
 * Printed after the rows with the measured ratio and "met"/"MISSED"; a
 * missed target is reported, it does not fail the command. Rows that were
 * skipped make the target "n/a".
 */
void bench_target(struct bench *b, const char *row, const char *baseline, double max_ratio);

/* Should the row of this name be measured (--rows)? Suites that check it
 * before measuring make --rows fast; rows recorded anyway are dropped. */
bool bench_selected(const struct bench *b, const char *name);

/* Progress or remarks, to stderr with -v only (never mixes with --json). */
void bench_note(struct bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A copy of s that lives until the suite's rows are printed. */
const char *bench_strdup(struct bench *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* --- memory helpers (harness.c) --- */

/*
 * mmap len bytes of private anonymous memory in small pages
 * (MADV_NOHUGEPAGE, so a fault is one page), every page written once when
 * populate. Returns NULL on failure (errno set).
 */
void *bench_map(size_t len, bool populate);

/*
 * An array of the page indexes 0..npages-1, in order or shuffled (a fixed
 * seed: every run and every row sees the same order). free() it. NULL on
 * ENOMEM.
 */
size_t *bench_page_order(size_t npages, bool shuffled);

#endif
