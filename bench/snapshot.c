/* SPDX-License-Identifier: MIT */
/*
 * `uffdwp bench snapshot`: live snapshots against fork(), in the same run,
 * on the same region under the same writer load.
 *
 * Regions of 1 GiB and 4 GiB (--size: that one size; --quick: 32 MiB and
 * 128 MiB), transparent huge pages, every page non-zero, saved to a fresh
 * file on tmpfs (/dev/shm, else /tmp). Writer loads: idle (none), moderate
 * (one thread writing a page every ~50 us) and saturating (one thread
 * writing pages as fast as it can; the VM has 2 CPUs, so the other one is
 * left to the snapshot). A writer writes the pages in a fixed shuffled
 * order and times each first write: that is the stall per first write
 * (copy-before-write for the live snapshot, copy-on-write after fork()).
 *
 *  live:  uffdwp_snapshot_begin() .. finished; begin = the call.
 *  fork:  fork() .. the child has written the same file format from its
 *         frozen copy and exited; begin = the fork() call.
 *  incremental: a SYNC tracker on the region (exact pages), 1 % or 10 % of
 *         the pages written at random ("scattered") or in 64-page runs
 *         ("clustered"), then an incremental snapshot; its begin is
 *         compared with fork()'s on the same memory. (Its parent is a
 *         placeholder id: only the begin and the save are measured.)
 *
 * Baselines: memcpy of the region into a warm buffer (single thread) and a
 * plain write(2) of the region to a fresh tmpfs file (the kernel's ceiling
 * here). Peak extra memory goes in the notes: the side buffer's high-water
 * mark plus bookkeeping for the live snapshot, the pages copied on write
 * for fork().
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "bench.h"
#include "snapshot.h"
#include "uffdwp.h"

#define DEFAULT_SIZE ((size_t)256 << 20)  /* the harness's: --size not given */
#define QUICK_SIZE (DEFAULT_SIZE / 16)
#define CLUSTER 64
#define MODERATE_GAP_NS 50000

enum load { IDLE, MODERATE, SATURATING };
static const char *const load_names[] = { "idle", "moderate", "saturating" };

struct writer {
	pthread_t thread;
	char *mem;
	size_t page;
	const size_t *order;  /* page indexes, shuffled */
	size_t npages;
	enum load load;
	atomic_bool start, stop;
	struct bench_lat lat;  /* first writes */
	uint64_t first_writes;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	size_t i = 0;

	while (!atomic_load(&w->start))
		;
	while (!atomic_load_explicit(&w->stop, memory_order_relaxed) && i < w->npages) {
		volatile char *p = w->mem + w->order[i++] * w->page;
		uint64_t t0 = bench_now_ns();

		*p = (char)(*p + 1);
		bench_lat_add(&w->lat, bench_now_ns() - t0);
		w->first_writes++;
		if (w->load == MODERATE) {
			struct timespec gap = { 0, MODERATE_GAP_NS };

			nanosleep(&gap, NULL);
		}
	}
	return NULL;
}

static int writer_start(struct writer *w, char *mem, size_t page, const size_t *order,
			size_t npages, enum load load)
{
	*w = (struct writer){ .mem = mem, .page = page, .order = order, .npages = npages,
			      .load = load };
	bench_lat_reset(&w->lat);
	if (load == IDLE)
		return 0;
	return -pthread_create(&w->thread, NULL, writer_main, w);
}

static void writer_go(struct writer *w)
{
	atomic_store(&w->start, true);
}

static void writer_stop(struct writer *w)
{
	if (w->load == IDLE)
		return;
	atomic_store(&w->stop, true);
	atomic_store(&w->start, true);
	pthread_join(w->thread, NULL);
}

static char *map_region(size_t len)
{
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED)
		return NULL;
	madvise(mem, len, MADV_HUGEPAGE);
	return mem;
}

/* Every page non-zero (no zero-page elision to flatter anyone). */
static void fill(char *mem, size_t len, size_t page, unsigned seed)
{
	for (size_t off = 0; off < len; off += page)
		memset(mem + off, (int)(1 + (off / page + seed) % 251), page);
}

static int open_sink(const char *path)
{
	return open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
}

struct outcome {
	uint64_t begin_ns, total_ns;
	uint64_t extra_bytes;
	struct bench_lat lat;
	uint64_t first_writes;
};

static int run_live(struct bench *b, char *mem, size_t len, const size_t *order,
		    enum load load, const char *path, struct outcome *out)
{
	struct uffdwp_snapshot_region region = { (uintptr_t)mem, len };
	struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };
	struct uffdwp_snapshot *snap;
	struct writer w;
	int fd = open_sink(path), ret;

	if (fd < 0)
		return -errno;
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = fd };

	ret = writer_start(&w, mem, b->page, order, len / b->page, load);
	if (ret) {
		close(fd);
		return ret;
	}
	uint64_t t0 = bench_now_ns();

	ret = uffdwp_snapshot_begin(&snap, &region, 1, &o);
	uint64_t t1 = bench_now_ns();

	writer_go(&w);
	if (!ret) {
		ret = uffdwp_snapshot_wait(snap, -1);
		out->total_ns = bench_now_ns() - t0;
		uffdwp_snapshot_progress(snap, &p);
		int end = uffdwp_snapshot_end(snap);

		ret = ret ? ret : end;
	}
	writer_stop(&w);
	close(fd);
	unlink(path);
	out->begin_ns = t1 - t0;
	/* Side buffer high-water mark; page states (a byte each); the
	 * saver's batch buffer; the side buffer's slot tables. */
	out->extra_bytes = p.side_peak + p.pages_total + 128 * b->page +
			   (UFFDWP_SNAPSHOT_SIDE_BUFFER_DEFAULT / b->page) * 16;
	out->lat = w.lat;
	out->first_writes = w.first_writes;
	return ret;
}

static int run_fork(struct bench *b, char *mem, size_t len, const size_t *order,
		    enum load load, const char *path, struct outcome *out)
{
	struct uffdwp_snapshot_region region = { (uintptr_t)mem, len };
	struct writer w;
	int fd = open_sink(path), ret, status;
	pid_t pid;

	if (fd < 0)
		return -errno;
	ret = writer_start(&w, mem, b->page, order, len / b->page, load);
	if (ret) {
		close(fd);
		return ret;
	}
	uint64_t t0 = bench_now_ns();

	pid = fork();
	if (pid == 0)
		_exit(uffdwp__snapshot_write_frozen(fd, &region, 1) ? 1 : 0);
	uint64_t t1 = bench_now_ns();

	writer_go(&w);
	ret = pid < 0 ? -errno : 0;
	if (pid > 0) {
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		out->total_ns = bench_now_ns() - t0;
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			ret = -EIO;
	}
	writer_stop(&w);
	close(fd);
	unlink(path);
	out->begin_ns = t1 - t0;
	/* Each page first-written while the child lived was copied. */
	out->extra_bytes = w.first_writes * b->page;
	out->lat = w.lat;
	out->first_writes = w.first_writes;
	return ret;
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

static uint64_t memcpy_ns(const char *mem, size_t len)
{
	char *dst = malloc(len);
	uint64_t t0, ns;

	if (!dst)
		return 0;
	memset(dst, 1, len);  /* warm: faulted in (not 0: malloc+memset(0) becomes calloc) */
	t0 = bench_now_ns();
	memcpy(dst, mem, len);
	/* The copy is used: the compiler may not drop it. */
	__asm__ volatile("" : : "r"(dst) : "memory");
	ns = bench_now_ns() - t0;
	free(dst);
	return ns;
}

static uint64_t tmpfs_write_ns(const char *mem, size_t len, const char *path)
{
	const size_t chunk = (size_t)512 << 10;
	int fd = open_sink(path);
	uint64_t t0, ns = 0;

	if (fd < 0)
		return 0;
	t0 = bench_now_ns();
	for (size_t off = 0; off < len; off += chunk)
		if (write(fd, mem + off, len - off < chunk ? len - off : chunk) < 0)
			break;
	ns = bench_now_ns() - t0;
	close(fd);
	unlink(path);
	return ns;
}

static const char *mib(struct bench *b, uint64_t bytes)
{
	return bench_strdup(b, "%.1f MiB", (double)bytes / (1 << 20));
}

/*
 * A fresh region of huge pages for each measurement: un-protecting single
 * pages (and copy-on-write after fork) splits huge page mappings, which
 * would make every later run protect and fork 512 times more entries.
 */
static char *fresh_region(struct bench *b, char *old, size_t len)
{
	char *mem;

	munmap(old, len);
	mem = map_region(len);
	if (mem)
		fill(mem, len, b->page, 0);
	return mem;
}

/* Full snapshots under each load, and the baselines, on one region. */
static int full_snapshots(struct bench *b, const char *cfg, char **memp, size_t len,
			  const size_t *order, const char *path)
{
	char *mem = *memp;
	uint64_t npages = len / b->page;
	const char *name = bench_strdup(b, "%s/memcpy", cfg);

	if (bench_selected(b, name))
		bench_row(b, &(struct bench_row){ .name = name, .unit = "page", .ops = npages,
						  .ns = memcpy_ns(mem, len),
						  .note = "single thread, warm destination" });
	name = bench_strdup(b, "%s/tmpfs-write", cfg);
	if (bench_selected(b, name))
		bench_row(b, &(struct bench_row){ .name = name, .unit = "page", .ops = npages,
						  .ns = tmpfs_write_ns(mem, len, path),
						  .baseline = bench_strdup(b, "%s/memcpy", cfg),
						  .note = "write(2) to a fresh file: the ceiling" });
	for (enum load load = IDLE; load <= SATURATING; load++) {
		const char *lc = bench_strdup(b, "%s/%s", cfg, load_names[load]);
		struct outcome live = { 0 }, frk = { 0 };
		int ret;

		if (!bench_selected(b, lc))
			continue;
		bench_note(b, "%s: live", lc);
		mem = *memp = fresh_region(b, mem, len);
		if (!mem)
			return -ENOMEM;
		ret = run_live(b, mem, len, order, load, path, &live);
		if (ret) {
			bench_skip(b, bench_strdup(b, "%s/live/begin", lc), "live snapshot: %s",
				   strerror(-ret));
			continue;
		}
		bench_note(b, "%s: fork", lc);
		mem = *memp = fresh_region(b, mem, len);
		if (!mem)
			return -ENOMEM;
		ret = run_fork(b, mem, len, order, load, path, &frk);
		if (ret)
			return ret;
		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/fork/begin", lc), .unit = "snapshot",
			.ops = 1, .ns = frk.begin_ns });
		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/live/begin", lc), .unit = "snapshot",
			.ops = 1, .ns = live.begin_ns,
			.baseline = bench_strdup(b, "%s/fork/begin", lc) });
		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/fork/total", lc), .unit = "page",
			.ops = npages, .ns = frk.total_ns,
			.note = bench_strdup(b, "extra memory %s", mib(b, frk.extra_bytes)) });
		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/live/total", lc), .unit = "page",
			.ops = npages, .ns = live.total_ns,
			.baseline = bench_strdup(b, "%s/memcpy", cfg),
			.note = bench_strdup(b, "extra memory %s (fork %s): %s",
					     mib(b, live.extra_bytes), mib(b, frk.extra_bytes),
					     live.extra_bytes <= UFFDWP_SNAPSHOT_SIDE_BUFFER_DEFAULT +
						     npages + (4u << 20) ? "met" : "MISSED") });
		bench_target(b, bench_strdup(b, "%s/live/begin", lc),
			     bench_strdup(b, "%s/fork/begin", lc), 1.0);
		if (load == IDLE) {
			bench_target(b, bench_strdup(b, "%s/live/total", lc),
				     bench_strdup(b, "%s/memcpy", cfg), 2.0);
			continue;
		}
		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/fork/stall", lc), .unit = "first write",
			.ops = frk.first_writes, .ns = frk.lat.sum_ns, .lat = &frk.lat,
			.note = "copy-on-write fault" });
		bench_row(b, &(struct bench_row){
			.name = bench_strdup(b, "%s/live/stall", lc), .unit = "first write",
			.ops = live.first_writes, .ns = live.lat.sum_ns, .lat = &live.lat,
			.baseline = bench_strdup(b, "%s/fork/stall", lc),
			.note = "copy-before-write, or none once saved" });
		bench_target(b, bench_strdup(b, "%s/live/stall", lc),
			     bench_strdup(b, "%s/fork/stall", lc), 0.7);
	}
	return 0;
}

/* Incremental snapshots through a SYNC tracker on the same region. */
static int incremental(struct bench *b, const char *cfg, char *mem, size_t len,
		       const size_t *order, const char *path)
{
	static const struct { const char *name; unsigned permille; bool clustered; } cases[] = {
		{ "1%-scattered", 10, false }, { "1%-clustered", 10, true },
		{ "10%-scattered", 100, false }, { "10%-clustered", 100, true },
	};
	struct uffdwp_tracker_opts to = { .sz = sizeof(to), .method = UFFDWP_TRACK_SYNC };
	struct uffdwp_tracker *t;
	size_t npages = len / b->page;
	int ret;

	if (!bench_selected(b, bench_strdup(b, "%s/incremental", cfg)))
		return 0;
	ret = uffdwp_tracker_create(&t, &to);
	if (ret) {
		bench_skip(b, bench_strdup(b, "%s/incremental", cfg), "SYNC tracker: %s",
			   strerror(-ret));
		return 0;
	}
	ret = uffdwp_tracker_add(t, mem, len);
	if (ret) {
		uffdwp_tracker_destroy(t);
		bench_skip(b, bench_strdup(b, "%s/incremental", cfg), "tracker_add: %s",
			   strerror(-ret));
		return 0;
	}
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "%s/incremental/fork-begin", cfg),
					  .unit = "snapshot", .ops = 1, .ns = fork_pause(),
					  .note = "fork() of the tracked memory" });
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		size_t nwrite = npages * cases[c].permille / 1000;
		struct uffdwp_snapshot_region region = { (uintptr_t)mem, len };
		struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };
		struct uffdwp_snapshot *snap;
		int fd = open_sink(path);

		if (fd < 0) {
			ret = -errno;
			break;
		}
		/* Clean slate, then the written pages (untimed). */
		uffdwp_tracker_reset(t, NULL, 0);
		for (size_t i = 0; i < nwrite; i++) {
			size_t pg = cases[c].clustered
				? (order[i / CLUSTER] / CLUSTER * CLUSTER + i % CLUSTER) % npages
				: order[i];

			mem[pg * b->page]++;
		}
		struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = fd, .tracker = t,
						  .parent_id = 1 };
		uint64_t t0 = bench_now_ns();

		ret = uffdwp_snapshot_begin(&snap, &region, 1, &o);
		uint64_t t1 = bench_now_ns();

		if (!ret) {
			ret = uffdwp_snapshot_wait(snap, -1);
			uint64_t t2 = bench_now_ns();

			uffdwp_snapshot_progress(snap, &p);
			uffdwp_snapshot_end(snap);
			bench_row(b, &(struct bench_row){
				.name = bench_strdup(b, "%s/incremental/%s/begin", cfg, cases[c].name),
				.unit = "snapshot", .ops = 1, .ns = t1 - t0,
				.baseline = bench_strdup(b, "%s/incremental/fork-begin", cfg),
				.note = bench_strdup(b, "%llu pages saved in %.1f ms",
						     (unsigned long long)p.pages_total,
						     (double)(t2 - t0) / 1e6) });
			bench_target(b, bench_strdup(b, "%s/incremental/%s/begin", cfg,
						     cases[c].name),
				     bench_strdup(b, "%s/incremental/fork-begin", cfg),
				     cases[c].permille == 10 ? 0.1 : 1.0);
		}
		close(fd);
		unlink(path);
		if (ret)
			break;
	}
	uffdwp_tracker_destroy(t);
	return ret;
}

BENCH_SUITE(snapshot, "live snapshots against fork(): pause, stall, memory, throughput")
{
	size_t sizes[2] = { (size_t)1 << 30, (size_t)4 << 30 };
	size_t nsizes = 2;
	char path[64];
	int ret = 0;

	if (b->opts->quick && b->opts->region_size == QUICK_SIZE) {
		sizes[0] = (size_t)32 << 20;
		sizes[1] = (size_t)128 << 20;
	} else if (b->opts->region_size != DEFAULT_SIZE) {
		sizes[0] = b->opts->region_size;
		nsizes = 1;
	}
	snprintf(path, sizeof(path), "%s/uffdwp-bench-%d.snap",
		 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
	for (size_t s = 0; s < nsizes && !ret; s++) {
		size_t len = sizes[s], npages = len / b->page;
		const char *cfg = len >= (1u << 30) ? bench_strdup(b, "%zuG", len >> 30)
						     : bench_strdup(b, "%zuM", len >> 20);
		char *mem = map_region(len);
		size_t *order = bench_page_order(npages, true);

		if (!mem || !order) {
			bench_skip(b, cfg, "cannot map %s", mib(b, len));
			if (mem)
				munmap(mem, len);
			free(order);
			continue;
		}
		fill(mem, len, b->page, 0);
		ret = full_snapshots(b, cfg, &mem, len, order, path);
		if (!ret && mem)
			ret = incremental(b, cfg, mem, len, order, path);
		if (mem)
			munmap(mem, len);
		free(order);
	}
	return ret;
}
