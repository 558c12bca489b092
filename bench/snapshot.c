/* SPDX-License-Identifier: MIT */
/*
 * `uffdwp bench snapshot`: live snapshots against a fork() child writing
 * the same format to the same sink, in the same run, on the same memory
 * under the same writers (issue 12's matrix).
 *
 * Cells: size {1 GiB, 4 GiB} (--size: that one; --quick: 64 MiB and a
 * subset) x pages {4 KiB (MADV_NOHUGEPAGE), THP (MADV_HUGEPAGE)} x write
 * pattern {uniform random, skewed (Zipf, s = 0.99, hot pages spread over
 * the region), sequential} x writers {1, one per CPU} x sink {a fresh file
 * on tmpfs (/dev/shm), a fresh file on disk (/var/tmp)}. Every page is
 * non-zero. Writers write 8 bytes at a time, each write timed, from the
 * call that starts the snapshot until it is saved:
 *
 *  live:  uffdwp_snapshot_begin() .. uffdwp_snapshot_wait(); begin = the
 *         call (what the caller waits; writers run meanwhile).
 *  fork:  fork() .. the child has written the file from its frozen copy
 *         and exited; begin = fork()'s return in the parent.
 *
 * Per cell: begin, writes per second during the save (a "write" row: ns
 * per write over the save), write latency p50/p99/p99.9, total time, peak
 * extra memory (live: side buffer high-water mark and bookkeeping; fork:
 * the pages written while the child lived, each copied once). Idle cells
 * (no writer) give the save throughput. A "raw-wp" row is the cheapest
 * begin the kernel allows: one write-protect call over the populated
 * region from a fresh context, no snapshot around it.
 *
 * Incremental (4 KiB pages, the async tracker): a full snapshot, then
 * 0.1 %, 1 %, 10 % of the pages written at random, then an incremental
 * snapshot; its begin against fork()'s on the same memory, and the
 * kernel's floor: one PAGEMAP_SCAN pass finding and re-protecting the same
 * number of written pages ("raw-scan"). Writer throughput with the
 * tracker armed (just reset) against the same memory untracked.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "bench.h"
#include "snapshot.h"
#include "uffdwp.h"

#define DEFAULT_SIZE ((size_t)256 << 20)  /* the harness's: --size not given */
#define QUICK_SIZE (DEFAULT_SIZE / 16)
#define MAX_WRITERS 8
#define UNTRACKED_MS 300  /* each tracked/untracked throughput run */

enum pattern { UNIFORM, SKEWED, SEQUENTIAL, NPATTERNS };
static const char *const pattern_names[] = { "uniform", "skewed", "sequential" };

/* Ranks of a Zipf(s) distribution over n items by inverse CDF. */
struct zipf {
	double *cdf;
	size_t n;
};

static int zipf_init(struct zipf *z, size_t n, double s)
{
	double sum = 0;

	z->cdf = malloc(n * sizeof(*z->cdf));
	if (!z->cdf)
		return -ENOMEM;
	z->n = n;
	for (size_t i = 0; i < n; i++)
		z->cdf[i] = sum += 1.0 / pow((double)(i + 1), s);
	for (size_t i = 0; i < n; i++)
		z->cdf[i] /= sum;
	return 0;
}

static size_t zipf_rank(const struct zipf *z, double u)
{
	size_t lo = 0, hi = z->n - 1;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (z->cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct load {
	char *mem;
	size_t page, npages;
	enum pattern pattern;
	const size_t *perm;     /* rank -> page (skewed: hot pages spread) */
	const struct zipf *zipf;
	_Atomic uint64_t *written;  /* bitmap of pages written (extra memory of fork) */
	atomic_bool go, stop;
};

struct writer {
	pthread_t thread;
	struct load *load;
	unsigned id, nwriters;
	uint64_t writes;
	struct bench_lat lat;
};

static uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct load *l = w->load;
	uint64_t rng = 0x9e3779b97f4a7c15ull * (w->id + 1);
	size_t seq = l->npages / w->nwriters * w->id;

	while (!atomic_load(&l->go))
		;
	while (!atomic_load_explicit(&l->stop, memory_order_relaxed)) {
		size_t pg;

		switch (l->pattern) {
		case UNIFORM:
			pg = xorshift(&rng) % l->npages;
			break;
		case SKEWED:
			pg = l->perm[zipf_rank(l->zipf, (double)(xorshift(&rng) >> 11) / 9007199254740992.0)];
			break;
		default:
			pg = seq++ % l->npages;
		}
		volatile uint64_t *p = (volatile uint64_t *)(l->mem + pg * l->page) +
				       (xorshift(&rng) % (l->page / sizeof(uint64_t)));
		uint64_t t0 = bench_now_ns();

		*p = *p + 1;
		bench_lat_add(&w->lat, bench_now_ns() - t0);
		w->writes++;
		atomic_fetch_or_explicit(&l->written[pg / 64], UINT64_C(1) << (pg % 64),
					 memory_order_relaxed);
	}
	return NULL;
}

struct outcome {
	uint64_t begin_ns, total_ns, writes, extra_bytes;
	struct bench_lat lat;
};

struct crew {
	struct writer w[MAX_WRITERS];
	unsigned n;
};

static int crew_start(struct crew *c, struct load *l, unsigned n)
{
	memset(l->written, 0, (l->npages + 63) / 64 * sizeof(*l->written));
	atomic_store(&l->go, false);
	atomic_store(&l->stop, false);
	c->n = 0;
	for (unsigned i = 0; i < n; i++) {
		c->w[i] = (struct writer){ .load = l, .id = i, .nwriters = n };
		bench_lat_reset(&c->w[i].lat);
		if (pthread_create(&c->w[i].thread, NULL, writer_main, &c->w[i]))
			return -EAGAIN;
		c->n++;
	}
	return 0;
}

static void crew_stop(struct crew *c, struct load *l, struct outcome *out)
{
	atomic_store(&l->stop, true);
	atomic_store(&l->go, true);
	bench_lat_reset(&out->lat);
	out->writes = 0;
	for (unsigned i = 0; i < c->n; i++) {
		pthread_join(c->w[i].thread, NULL);
		bench_lat_merge(&out->lat, &c->w[i].lat);
		out->writes += c->w[i].writes;
	}
}

static uint64_t pages_written(const struct load *l)
{
	uint64_t n = 0;

	for (size_t i = 0; i < (l->npages + 63) / 64; i++)
		n += (uint64_t)__builtin_popcountll(atomic_load(&l->written[i]));
	return n;
}

static int open_sink(const char *path)
{
	return open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
}

static int run_live(struct load *l, unsigned nwriters, const char *path, struct outcome *out)
{
	struct uffdwp_snapshot_region region = { (uintptr_t)l->mem, l->npages * l->page };
	struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };
	struct uffdwp_snapshot *snap;
	struct crew c;
	int fd = open_sink(path), ret;

	if (fd < 0)
		return -errno;
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = fd };

	ret = crew_start(&c, l, nwriters);
	atomic_store(&l->go, true);
	uint64_t t0 = bench_now_ns();

	if (!ret)
		ret = uffdwp_snapshot_begin(&snap, &region, 1, &o);
	uint64_t t1 = bench_now_ns();

	if (!ret) {
		ret = uffdwp_snapshot_wait(snap, -1);
		out->total_ns = bench_now_ns() - t0;
		uffdwp_snapshot_progress(snap, &p);
		int end = uffdwp_snapshot_end(snap);

		ret = ret ? ret : end;
	}
	crew_stop(&c, l, out);
	close(fd);
	unlink(path);
	out->begin_ns = t1 - t0;
	/* Side buffer high-water mark; page states (a byte each); the
	 * saver's batch buffer; the side buffer's slot tables. */
	out->extra_bytes = p.side_peak + p.pages_total + 128 * l->page +
			   (UFFDWP_SNAPSHOT_SIDE_BUFFER_DEFAULT / l->page) * 16;
	return ret;
}

static int run_fork(struct load *l, unsigned nwriters, const char *path, struct outcome *out)
{
	struct uffdwp_snapshot_region region = { (uintptr_t)l->mem, l->npages * l->page };
	struct crew c;
	int fd = open_sink(path), ret, status;
	pid_t pid;

	if (fd < 0)
		return -errno;
	ret = crew_start(&c, l, nwriters);
	atomic_store(&l->go, true);
	uint64_t t0 = bench_now_ns();

	pid = ret ? -1 : fork();
	if (pid == 0)
		_exit(uffdwp__snapshot_write_frozen(fd, &region, 1) ? 1 : 0);
	uint64_t t1 = bench_now_ns();

	/* Pages written before the fork() call are not copied: count from here. */
	memset(l->written, 0, (l->npages + 63) / 64 * sizeof(*l->written));
	ret = ret ? ret : pid < 0 ? -errno : 0;
	if (pid > 0) {
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		out->total_ns = bench_now_ns() - t0;
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			ret = -EIO;
	}
	out->extra_bytes = pages_written(l) * l->page;
	crew_stop(&c, l, out);
	close(fd);
	unlink(path);
	out->begin_ns = t1 - t0;
	return ret;
}

/* The cheapest begin the kernel allows: one write-protect call over the
 * region (populated) from a fresh context. 0 when not possible. */
static uint64_t raw_wp_ns(char *mem, size_t len)
{
	struct uffdwp_opts o = { .sz = sizeof(o), .backend = UFFDWP_BACKEND_KERNEL,
				 .features = UFFDWP_FEATURE_WP_UNPOPULATED };
	struct uffdwp *ctx;
	uint64_t ns = 0;

	if (uffdwp_open(&ctx, &o))
		return 0;
	if (!uffdwp_register(ctx, mem, len, UFFDWP_REGISTER_MODE_WP)) {
		uint64_t t0 = bench_now_ns();

		if (!uffdwp_writeprotect(ctx, mem, len, UFFDWP_WRITEPROTECT_MODE_WP))
			ns = bench_now_ns() - t0;
	}
	uffdwp_close(ctx);
	return ns;
}

/* The fork() pause alone: the child exits at once. */
static uint64_t fork_pause(void)
{
	uint64_t t0 = bench_now_ns();
	pid_t pid = fork();
	uint64_t t1 = bench_now_ns();
	int status;

	if (pid == 0)
		_exit(0);
	if (pid > 0)
		waitpid(pid, &status, 0);
	return t1 - t0;
}

static const char *mib(struct bench *b, uint64_t bytes)
{
	return bench_strdup(b, "%.1f MiB", (double)bytes / (1 << 20));
}

/* Every page non-zero (no zero-page elision to flatter anyone). */
static void fill(char *mem, size_t len, size_t page)
{
	for (size_t off = 0; off < len; off += page)
		memset(mem + off, (int)(1 + (off / page) % 251), page);
}

/*
 * A region of len bytes in the page kind asked for. THP cells get a fresh
 * one for every run: un-protecting single pages (and copy-on-write after
 * fork) splits huge page mappings, and the next run would protect and
 * fork 512 times more entries.
 */
static char *region(char *old, size_t len, bool thp)
{
	char *mem;

	if (old)
		munmap(old, len);
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return NULL;
	madvise(mem, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	fill(mem, len, sysconf(_SC_PAGESIZE));
	return mem;
}

static double load_average(void)
{
	double avg = 0;
	FILE *f = fopen("/proc/loadavg", "re");

	if (f) {
		if (fscanf(f, "%lf", &avg) != 1)
			avg = 0;
		fclose(f);
	}
	return avg;
}

/* Rows and targets of one cell (live against fork). */
static void cell_rows(struct bench *b, const char *cell, bool thp, unsigned nwriters,
		      enum pattern pattern, size_t npages, const struct outcome *live,
		      const struct outcome *frk, const char *raw)
{
	const char *n = bench_strdup(b, "load %.2f", load_average());
	uint64_t mem_cap = UFFDWP_SNAPSHOT_SIDE_BUFFER_DEFAULT + npages * b->page / 100;

	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "%s/fork/begin", cell),
					  .unit = "snapshot", .ops = 1, .ns = frk->begin_ns });
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "%s/live/begin", cell),
					  .unit = "snapshot", .ops = 1, .ns = live->begin_ns,
					  .baseline = bench_strdup(b, "%s/fork/begin", cell),
					  .note = raw ? bench_strdup(b, "%s; kernel floor: %s", n, raw)
						      : n });
	bench_target(b, bench_strdup(b, "%s/live/begin", cell),
		     bench_strdup(b, "%s/fork/begin", cell), thp ? 0.05 : 0.5);
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "%s/fork/total", cell),
					  .unit = "page", .ops = npages, .ns = frk->total_ns,
					  .note = bench_strdup(b, "extra memory %s",
							       mib(b, frk->extra_bytes)) });
	bench_row(b, &(struct bench_row){
		.name = bench_strdup(b, "%s/live/total", cell), .unit = "page", .ops = npages,
		.ns = live->total_ns, .baseline = bench_strdup(b, "%s/fork/total", cell),
		.note = bench_strdup(b, "extra memory %s (fork %s), cap %s: %s",
				     mib(b, live->extra_bytes), mib(b, frk->extra_bytes),
				     mib(b, mem_cap),
				     live->extra_bytes <= mem_cap ? "met" : "MISSED") });
	bench_target(b, bench_strdup(b, "%s/live/total", cell),
		     bench_strdup(b, "%s/fork/total", cell), 1.0);
	if (!nwriters)
		return;
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "%s/fork/write", cell),
					  .unit = "write", .ops = frk->writes,
					  .ns = frk->total_ns, .lat = &frk->lat });
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "%s/live/write", cell),
					  .unit = "write", .ops = live->writes,
					  .ns = live->total_ns, .lat = &live->lat,
					  .baseline = bench_strdup(b, "%s/fork/write", cell),
					  .note = "ns per write over the save: 1/throughput" });
	bench_target(b, bench_strdup(b, "%s/live/write", cell),
		     bench_strdup(b, "%s/fork/write", cell), pattern == SKEWED ? 0.5 : 1.0);
	for (int q = 0; q < 2; q++) {
		double qq = q ? 0.999 : 0.99;
		const char *tag = q ? "p99.9" : "p99";

		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/fork/%s", cell, tag), .unit = "write",
			.ops = 1, .ns = bench_lat_quantile(&frk->lat, qq) });
		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/live/%s", cell, tag), .unit = "write",
			.ops = 1, .ns = bench_lat_quantile(&live->lat, qq),
			.baseline = bench_strdup(b, "%s/fork/%s", cell, tag) });
		bench_target(b, bench_strdup(b, "%s/live/%s", cell, tag),
			     bench_strdup(b, "%s/fork/%s", cell, tag), 1.0);
	}
}

/* One cell: live then fork on the same memory, same writers, same sink. */
static int cell(struct bench *b, const char *cell, char **memp, size_t len, bool thp,
		struct load *l, unsigned nwriters, const char *path)
{
	struct outcome live = { 0 }, frk = { 0 };
	const char *raw = NULL;
	int ret;

	if (!bench_selected(b, cell))
		return 0;
	bench_note(b, "%s", cell);
	if (thp && !(l->mem = *memp = region(*memp, len, thp)))
		return -ENOMEM;
	ret = run_live(l, nwriters, path, &live);
	if (ret) {
		bench_skip(b, bench_strdup(b, "%s/live/begin", cell), "live snapshot: %s",
			   strerror(-ret));
		return 0;
	}
	if (thp && !(l->mem = *memp = region(*memp, len, thp)))
		return -ENOMEM;
	ret = run_fork(l, nwriters, path, &frk);
	if (ret)
		return ret;
	if (!nwriters) {
		uint64_t ns;

		if (thp && !(l->mem = *memp = region(*memp, len, thp)))
			return -ENOMEM;
		ns = raw_wp_ns(l->mem, len);
		raw = ns ? bench_strdup(b, "one write-protect call %.2f ms", ns / 1e6) : NULL;
	}
	cell_rows(b, cell, thp, nwriters, l->pattern, len / b->page, &live, &frk, raw);
	return 0;
}

/* Writes per second for ms milliseconds with the crew of one writer. */
static uint64_t write_rate_ns(struct load *l)
{
	struct crew c;
	struct outcome o;
	struct timespec d = { 0, UNTRACKED_MS * 1000000L };

	if (crew_start(&c, l, 1))
		return 0;
	uint64_t t0 = bench_now_ns();

	atomic_store(&l->go, true);
	nanosleep(&d, NULL);
	crew_stop(&c, l, &o);
	return o.writes ? (bench_now_ns() - t0) / o.writes : 0;
}

/* Incrementals on the async tracker, 4 KiB pages. */
static int incremental(struct bench *b, const char *cfg, struct load *l, const char *path)
{
	static const unsigned permille10[] = { 1, 10, 100 };  /* tenths of a percent */
	struct uffdwp_tracker_opts to = { .sz = sizeof(to), .method = UFFDWP_TRACK_ASYNC };
	struct uffdwp_snapshot_region r = { (uintptr_t)l->mem, l->npages * l->page };
	struct uffdwp_tracker *t;
	uint64_t parent = 0;
	int ret;

	if (!bench_selected(b, bench_strdup(b, "%s/incremental", cfg)))
		return 0;
	l->pattern = UNIFORM;
	uint64_t untracked = write_rate_ns(l);

	ret = uffdwp_tracker_create(&t, &to);
	if (!ret)
		ret = uffdwp_tracker_add(t, l->mem, l->npages * l->page);
	if (ret) {
		uffdwp_tracker_destroy(t);
		bench_skip(b, bench_strdup(b, "%s/incremental", cfg), "async tracker: %s",
			   strerror(-ret));
		return 0;
	}
	uffdwp_tracker_reset(t, NULL, 0);
	uint64_t tracked = write_rate_ns(l);

	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "%s/incremental/untracked-write", cfg),
					  .unit = "write", .ops = 1, .ns = untracked,
					  .note = "one uniform writer, no tracker" });
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "%s/incremental/tracked-write", cfg),
					  .unit = "write", .ops = 1, .ns = tracked,
					  .baseline = bench_strdup(b, "%s/incremental/untracked-write", cfg),
					  .note = "async tracker, just reset: throughput = 1/ns" });
	bench_target(b, bench_strdup(b, "%s/incremental/tracked-write", cfg),
		     bench_strdup(b, "%s/incremental/untracked-write", cfg), 1.0 / 0.9);
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "%s/incremental/fork-begin", cfg),
					  .unit = "snapshot", .ops = 1, .ns = fork_pause(),
					  .note = bench_strdup(b, "fork() of the tracked memory; load %.2f",
							       load_average()) });
	for (int round = -1; round < 3 && !ret; round++) {
		struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };
		struct uffdwp_snapshot *snap;
		int fd = open_sink(path);
		size_t nwrite = round < 0 ? 0 : l->npages * permille10[round] / 1000;
		uint64_t rng = 12345;

		if (fd < 0)
			return -errno;
		for (size_t i = 0; i < nwrite; i++)
			l->mem[(xorshift(&rng) % l->npages) * l->page] += 1;
		struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = fd, .tracker = t,
						  .parent_id = parent };
		uint64_t t0 = bench_now_ns();

		ret = uffdwp_snapshot_begin(&snap, &r, 1, &o);
		uint64_t t1 = bench_now_ns();

		if (!ret) {
			parent = uffdwp_snapshot_id(snap);
			ret = uffdwp_snapshot_wait(snap, -1);
			uffdwp_snapshot_progress(snap, &p);
			int end = uffdwp_snapshot_end(snap);

			ret = ret ? ret : end;
		}
		close(fd);
		unlink(path);
		if (ret || round < 0)
			continue;
		const char *name = bench_strdup(b, "%s/incremental/%u.%u%%/begin", cfg,
						permille10[round] / 10, permille10[round] % 10);

		bench_row(b, &(struct bench_row){
			.name = name, .unit = "snapshot", .ops = 1, .ns = t1 - t0,
			.baseline = bench_strdup(b, "%s/incremental/fork-begin", cfg),
			.note = bench_strdup(b, "%llu pages copied at begin; load %.2f",
					     (unsigned long long)p.pages_total, load_average()) });
		if (permille10[round] >= 10)
			bench_target(b, name, bench_strdup(b, "%s/incremental/fork-begin", cfg),
				     permille10[round] == 10 ? 0.1 : 0.5);
	}
	/* The kernel's floor for each: the same number of pages written, then
	 * one collect-with-reset pass (PAGEMAP_SCAN get and re-protect), no
	 * snapshot around it. */
	for (int round = 0; round < 3 && !ret; round++) {
		size_t nwrite = l->npages * permille10[round] / 1000;
		uint64_t rng = 777, t0;

		for (size_t i = 0; i < nwrite; i++)
			l->mem[(xorshift(&rng) % l->npages) * l->page] += 1;
		t0 = bench_now_ns();
		ret = uffdwp_tracker_reset(t, NULL, 0);
		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/incremental/%u.%u%%/raw-scan", cfg,
					     permille10[round] / 10, permille10[round] % 10),
			.unit = "snapshot", .ops = 1, .ns = bench_now_ns() - t0,
			.baseline = bench_strdup(b, "%s/incremental/fork-begin", cfg),
			.note = bench_strdup(b, "the written pages found and re-protected "
					     "(PAGEMAP_SCAN), nothing else; load %.2f",
					     load_average()) });
	}
	uffdwp_tracker_destroy(t);
	if (ret)
		bench_skip(b, bench_strdup(b, "%s/incremental", cfg), "snapshot: %s",
			   strerror(-ret));
	return 0;
}

BENCH_SUITE(snapshot, "live snapshots against fork(): pause, writers, memory, throughput")
{
	size_t sizes[2] = { (size_t)1 << 30, (size_t)4 << 30 };
	size_t nsizes = 2;
	bool quick = b->opts->quick;
	unsigned ncpu = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
	const char *sinks[2][2] = { { "tmpfs", "/dev/shm" }, { "disk", "/var/tmp" } };
	int ret = 0;

	if (ncpu < 1)
		ncpu = 1;
	if (ncpu > MAX_WRITERS)
		ncpu = MAX_WRITERS;
	if (quick && b->opts->region_size == QUICK_SIZE) {
		sizes[0] = QUICK_SIZE;
		nsizes = 1;
	} else if (b->opts->region_size != DEFAULT_SIZE) {
		sizes[0] = b->opts->region_size;
		nsizes = 1;
	}
	for (size_t s = 0; s < nsizes && !ret; s++) {
		size_t len = sizes[s], npages = len / b->page;
		const char *sz = len >= (1u << 30) ? bench_strdup(b, "%zuG", len >> 30)
						    : bench_strdup(b, "%zuM", len >> 20);
		struct zipf z;
		size_t *perm = bench_page_order(npages, true);
		struct load l = { .page = b->page, .npages = npages, .perm = perm, .zipf = &z };

		l.written = calloc((npages + 63) / 64, sizeof(*l.written));
		if (!perm || !l.written || zipf_init(&z, npages, 0.99)) {
			bench_skip(b, sz, "no memory for the writers' tables");
			free(perm);
			free(l.written);
			continue;
		}
		for (int thp = 0; thp < 2 && !ret; thp++) {
			const char *pg = thp ? "thp" : "4k";
			char *mem = region(NULL, len, thp);

			if (!mem) {
				bench_skip(b, bench_strdup(b, "%s/%s", sz, pg), "cannot map %s",
					   mib(b, len));
				continue;
			}
			l.mem = mem;
			for (int k = 0; k < 2 && !ret; k++) {
				char path[96];
				const char *cfg = bench_strdup(b, "%s/%s/%s", sz, pg, sinks[k][0]);

				if (quick && k)
					continue;
				snprintf(path, sizeof(path), "%s/uffdwp-bench-%d.snap",
					 access(sinks[k][1], W_OK) == 0 ? sinks[k][1] : "/tmp",
					 (int)getpid());
				l.pattern = UNIFORM;
				ret = cell(b, bench_strdup(b, "%s/idle", cfg), &mem, len, thp, &l,
					   0, path);
				for (int pat = 0; pat < NPATTERNS && !ret; pat++) {
					unsigned nw[2] = { 1, ncpu };

					if (quick && pat == SEQUENTIAL)
						continue;
					l.pattern = (enum pattern)pat;
					for (int w = 0; w < 2 && !ret; w++) {
						if ((w && ncpu == 1) || (quick && w))
							continue;
						ret = cell(b, bench_strdup(b, "%s/%s/%uw", cfg,
									   pattern_names[pat], nw[w]),
							   &mem, len, thp, &l, nw[w], path);
					}
				}
				if (!ret && !thp && k == 0) {
					char ipath[96];

					snprintf(ipath, sizeof(ipath), "%s", path);
					ret = incremental(b, bench_strdup(b, "%s/4k", sz), &l, ipath);
				}
			}
			munmap(mem, len);
		}
		free(z.cdf);
		free(perm);
		free(l.written);
	}
	return ret;
}
