/* SPDX-License-Identifier: MIT */
/*
 * uffdwp demo: a live snapshot of an in-memory store that never stops
 * writing, beside the same snapshot taken with fork().
 *
 *   uffdwp demo [--size MIB] [--writers N] [--dir DIR] [--thp] [--keep]
 *
 * The store is an array of 64-byte records, each holding its key, a version
 * and a checksum of both; writer threads rewrite records (each writer its
 * own) at full speed and time every write, first uniformly at random, then
 * skewed (Zipf, s = 0.99: a few hot records take most writes, as in most
 * stores). Both snapshots are begun with the writers held at a quiescent
 * point, where a reference copy of the store is taken; the file is then
 * restored and must equal that copy, record for record. The store is in
 * 4 KiB pages (MADV_NOHUGEPAGE), as most programs' memory is; --thp asks
 * for transparent huge pages instead.
 *
 * Live: uffdwp_snapshot_begin() protects the store and a thread of the
 * library writes the file while the writers go on; a first write to a page
 * not yet saved copies it aside. fork(): the child writes the same file
 * format from its frozen copy; the parent's writers pay copy-on-write
 * instead. Each row of the table marks the side that did better.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "uffdwp.h"
#include "snapshot.h"
#include "commands.h"

struct record {
	uint64_t key;
	uint64_t version;
	uint64_t payload[5];
	uint64_t check;
};

/* Writer latency: log-linear histogram, 16 sub-buckets per power of two. */
#define LAT_SUB 16
#define LAT_BUCKETS (64 * LAT_SUB)

struct latency {
	uint64_t count;
	uint64_t bucket[LAT_BUCKETS];
};

struct writer {
	pthread_t thread;
	struct store *st;
	size_t index;  /* which records it owns */
	uint64_t seed;
	struct latency lat;
};

struct store {
	struct record *rec;
	size_t nrec;
	size_t len;
	size_t page;
	uint8_t *touched;      /* per page: written while measuring */
	atomic_bool stop;
	atomic_bool pause;     /* writers: stop at the next record and wait */
	atomic_int paused;
	atomic_bool measuring; /* writers: time each write, mark pages */
	atomic_bool skewed;    /* writers: Zipf instead of uniform */
	atomic_ulong writes;
	struct writer *w;
	int nwriters;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t record_check(const struct record *r)
{
	uint64_t h = r->key * 0x9e3779b97f4a7c15ull ^ r->version;

	for (int i = 0; i < 5; i++)
		h = (h ^ r->payload[i]) * 0xff51afd7ed558ccdull;
	return h;
}

static unsigned lat_index(uint64_t ns)
{
	unsigned log2, sub;

	if (ns < LAT_SUB)
		return (unsigned)ns;
	log2 = 63u - (unsigned)__builtin_clzll(ns);
	sub = (unsigned)(ns >> (log2 - 4)) & (LAT_SUB - 1);
	return (log2 - 3) * LAT_SUB + sub;
}

static uint64_t lat_value(unsigned idx)
{
	unsigned log2 = idx / LAT_SUB + 3, sub = idx % LAT_SUB;

	if (idx < LAT_SUB)
		return idx;
	return ((uint64_t)(LAT_SUB + sub)) << (log2 - 4);
}

static uint64_t lat_quantile(const struct latency *l, double q)
{
	uint64_t want = (uint64_t)(q * (double)l->count), seen = 0;

	for (unsigned i = 0; i < LAT_BUCKETS; i++) {
		seen += l->bucket[i];
		if (seen > want)
			return lat_value(i);
	}
	return 0;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void write_record(struct record *r, uint64_t key, uint64_t rnd)
{
	r->version++;
	for (int i = 0; i < 5; i++)
		r->payload[i] = rnd + (uint64_t)i;
	r->key = key;
	r->check = record_check(r);
}

/*
 * A record of a writer's own, n of them: uniform, or Zipf(s = 0.99) by the
 * continuous inverse of its CDF, H(x) = (x^(1-s) - 1) / (1 - s), with rank
 * r scattered over the store by a multiplicative permutation (so the hot
 * records are not all on the first pages).
 */
static size_t pick(uint64_t rnd, size_t n, bool skewed)
{
	const double s = 0.99, e = 1 - s;
	double u, x;

	if (!skewed)
		return (size_t)(rnd % n);
	u = (double)(rnd >> 11) / 9007199254740992.0;
	x = pow(1 + u * (pow((double)n, e) - 1), 1 / e);  /* in [1, n] */
	size_t rank = (size_t)x - 1 < n ? (size_t)x - 1 : n - 1;

	return (size_t)(((unsigned __int128)rank * 0x9e3779b97f4a7c15ull) % n);
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct store *st = w->st;
	unsigned long n = 0;

	while (!atomic_load_explicit(&st->stop, memory_order_relaxed)) {
		if (atomic_load_explicit(&st->pause, memory_order_acquire)) {
			atomic_fetch_add(&st->paused, 1);
			while (atomic_load(&st->pause))
				sched_yield();
			atomic_fetch_sub(&st->paused, 1);
		}
		uint64_t rnd = xorshift(&w->seed);
		/* Writers own disjoint records (every nwriters-th): two
		 * writing one record at once would tear it. */
		size_t i = pick(rnd, st->nrec / (size_t)st->nwriters,
				atomic_load_explicit(&st->skewed, memory_order_relaxed)) *
				   (size_t)st->nwriters + w->index;

		if (atomic_load_explicit(&st->measuring, memory_order_relaxed)) {
			uint64_t t0 = now_ns();

			write_record(&st->rec[i], i, rnd);
			uint64_t dt = now_ns() - t0;

			w->lat.bucket[lat_index(dt)]++;
			w->lat.count++;
			st->touched[i * sizeof(struct record) / st->page] = 1;
		} else {
			write_record(&st->rec[i], i, rnd);
		}
		if (++n % 1024 == 0)
			atomic_fetch_add_explicit(&st->writes, 1024, memory_order_relaxed);
	}
	return NULL;
}

/* Hold every writer between two records. */
static void quiesce(struct store *st)
{
	atomic_store(&st->pause, true);
	while (atomic_load(&st->paused) != st->nwriters)
		sched_yield();
}

static void resume(struct store *st)
{
	atomic_store(&st->pause, false);
	/* Every writer out of its wait before a later quiesce counts them:
	 * one still counted there would let that quiesce return while it
	 * writes. */
	while (atomic_load(&st->paused) != 0)
		sched_yield();
}

static void start_measuring(struct store *st)
{
	for (int i = 0; i < st->nwriters; i++)
		memset(&st->w[i].lat, 0, sizeof(st->w[i].lat));
	memset(st->touched, 0, st->len / st->page);
	atomic_store(&st->measuring, true);
}

/* Stop timing; merge the writers' histograms into *all. */
static void stop_measuring(struct store *st, struct latency *all, uint64_t *pages_touched)
{
	quiesce(st);
	atomic_store(&st->measuring, false);
	memset(all, 0, sizeof(*all));
	for (int i = 0; i < st->nwriters; i++) {
		all->count += st->w[i].lat.count;
		for (unsigned b = 0; b < LAT_BUCKETS; b++)
			all->bucket[b] += st->w[i].lat.bucket[b];
	}
	*pages_touched = 0;
	for (size_t p = 0; p < st->len / st->page; p++)
		*pages_touched += st->touched[p];
	resume(st);
}

static void progress_bar(const char *what, uint64_t done, uint64_t total, uint64_t t0)
{
	char bar[41];
	double frac = total ? (double)done / (double)total : 1.0;
	double secs = (double)(now_ns() - t0) / 1e9;
	int fill = (int)(frac * 40);

	if (!isatty(STDERR_FILENO))
		return;
	memset(bar, '#', (size_t)fill);
	memset(bar + fill, '.', (size_t)(40 - fill));
	bar[40] = '\0';
	fprintf(stderr, "\r  %-6s [%s] %3.0f%%  %6.0f MiB/s ", what, bar, frac * 100,
		secs > 0 ? (double)done / secs / (1 << 20) : 0.0);
	fflush(stderr);
}

static void progress_done(void)
{
	if (isatty(STDERR_FILENO))
		fprintf(stderr, "\r%78s\r", "");
}

struct result {
	const char *name;
	double pause_ms, total_ms;
	struct latency lat;
	uint64_t extra_bytes;
	uint64_t pages_touched;
	uint64_t file_bytes;
	bool verified;
	char detail[320];
};

/* Restore the file and compare it with the reference, and check every
 * record's own checksum. */
static bool verify(const char *path, const void *ref, size_t len, char *why, size_t cap)
{
	struct uffdwp_snapshot_error err = { .sz = sizeof(err) };
	const char *paths[] = { path };
	void *image;
	size_t image_len;
	int ret = uffdwp_snapshot_file_verify(path, NULL, &err);

	if (!ret)
		ret = uffdwp_snapshot_restore_mapping(paths, 1, &image, &image_len, &err);
	if (ret) {
		snprintf(why, cap, "%s (%.200s)", strerror(-ret), err.message);
		return false;
	}
	bool same = image_len == len && memcmp(image, ref, len) == 0;
	const struct record *r = image;

	for (size_t i = 0; same && i < len / sizeof(*r); i++)
		same = r[i].check == record_check(&r[i]);
	if (!same)
		snprintf(why, cap, "the restored store differs from the snapshot instant");
	munmap(image, image_len);
	return same;
}

static uint64_t file_size(int fd)
{
	struct stat sb;

	return fstat(fd, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

static int run_live(struct store *st, void *ref, const char *path, struct result *res)
{
	struct uffdwp_snapshot_region region = { (uintptr_t)st->rec, st->len };
	struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };
	struct uffdwp_snapshot *snap;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int ret;

	if (fd < 0)
		return -errno;
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = fd };

	quiesce(st);
	memcpy(ref, st->rec, st->len);
	start_measuring(st);
	uint64_t t0 = now_ns();

	ret = uffdwp_snapshot_begin(&snap, &region, 1, &o);
	uint64_t t1 = now_ns();

	resume(st);
	if (ret) {
		close(fd);
		return ret;
	}
	while (uffdwp_snapshot_wait(snap, 50) == -ETIMEDOUT) {
		uffdwp_snapshot_progress(snap, &p);
		progress_bar("live", p.pages_done * st->page, p.pages_total * st->page, t0);
	}
	uint64_t t2 = now_ns();

	uffdwp_snapshot_progress(snap, &p);
	ret = uffdwp_snapshot_end(snap);
	progress_done();
	stop_measuring(st, &res->lat, &res->pages_touched);
	res->file_bytes = file_size(fd);
	close(fd);
	if (ret)
		return ret;
	res->name = "live";
	res->pause_ms = (double)(t1 - t0) / 1e6;
	res->total_ms = (double)(t2 - t0) / 1e6;
	/* The side buffer's high-water mark, the page states (a byte a page)
	 * and the saver's batch buffer. */
	res->extra_bytes = p.side_peak + p.pages_total + (512u << 10);
	snprintf(res->detail, sizeof(res->detail),
		 "%llu of %llu pages copied before write, %llu writer waits",
		 (unsigned long long)p.pages_copied, (unsigned long long)p.pages_total,
		 (unsigned long long)p.writer_waits);
	res->verified = verify(path, ref, st->len, res->detail, sizeof(res->detail));
	return 0;
}

static int run_fork(struct store *st, void *ref, const char *path, struct result *res)
{
	struct uffdwp_snapshot_region region = { (uintptr_t)st->rec, st->len };
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int status;
	pid_t pid;

	if (fd < 0)
		return -errno;
	quiesce(st);
	memcpy(ref, st->rec, st->len);
	start_measuring(st);
	uint64_t t0 = now_ns();

	pid = fork();
	if (pid == 0)
		_exit(uffdwp__snapshot_write_frozen(fd, &region, 1) ? 1 : 0);
	uint64_t t1 = now_ns();

	resume(st);
	if (pid < 0) {
		close(fd);
		return -errno;
	}
	for (;;) {
		pid_t done = waitpid(pid, &status, WNOHANG);

		if (done == pid)
			break;
		if (done < 0 && errno != EINTR) {
			close(fd);
			return -errno;
		}
		progress_bar("fork", file_size(fd), st->len, t0);
		usleep(50000);
	}
	uint64_t t2 = now_ns();

	progress_done();
	stop_measuring(st, &res->lat, &res->pages_touched);
	res->file_bytes = file_size(fd);
	close(fd);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return -EIO;
	res->name = "fork()";
	res->pause_ms = (double)(t1 - t0) / 1e6;
	res->total_ms = (double)(t2 - t0) / 1e6;
	/* Every page the writers touched while the child lived was copied
	 * on write (the child's page tables come on top). */
	res->extra_bytes = res->pages_touched * st->page;
	snprintf(res->detail, sizeof(res->detail), "%llu pages copied on write",
		 (unsigned long long)res->pages_touched);
	res->verified = verify(path, ref, st->len, res->detail, sizeof(res->detail));
	return 0;
}

/* One row of the table: live's and fork()'s values, and which side did
 * better (lower wins, or higher with more_wins). */
static void print_row(const char *name, double live, double frk, const char *unit,
		      bool more_wins)
{
	bool live_wins = more_wins ? live > frk : live < frk;
	const char *win = live == frk ? "tie" : live_wins ? "live" : "fork()";

	printf("  %-24s %12.2f %-3s %12.2f %-3s   %s\n", name, live, unit, frk, unit, win);
}

static void print_results(const char *title, const struct result *live,
			  const struct result *frk)
{
	static const struct { const char *name; double q; } qs[] = {
		{ "write latency p50", 0.5 }, { "write latency p99", 0.99 },
		{ "write latency p99.9", 0.999 },
	};

	printf("\n  %-24s %16s %16s   %s\n", title, "live", "fork()", "better");
	print_row("begin pause", live->pause_ms, frk->pause_ms, "ms", false);
	print_row("total time", live->total_ms, frk->total_ms, "ms", false);
	for (size_t k = 0; k < 3; k++)
		print_row(qs[k].name, (double)lat_quantile(&live->lat, qs[k].q) / 1e3,
			  (double)lat_quantile(&frk->lat, qs[k].q) / 1e3, "us", false);
	print_row("writes/s during save", (double)live->lat.count / live->total_ms / 1e3,
		  (double)frk->lat.count / frk->total_ms / 1e3, "M", true);
	print_row("peak extra memory", (double)live->extra_bytes / (1 << 20),
		  (double)frk->extra_bytes / (1 << 20), "MiB", false);
	printf("  %-24s %16s %16s\n", "verified at instant", live->verified ? "yes" : "NO",
	       frk->verified ? "yes" : "NO");
	printf("  live: %s\n  fork(): %s\n", live->detail, frk->detail);
}

/* Sizes past this would wrap size_t once shifted to bytes (and no machine
 * has 64 TiB for the two copies). */
#define DEMO_MAX_MIB (1L << 26)
#define DEMO_MAX_WRITERS 64

/* A decimal count in 1..max, or -1: atol() took "-1" and wrapped huge ones. */
static long parse_count(const char *arg, long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (!isdigit((unsigned char)arg[0]) || *end || errno || v == 0 || v > (unsigned long)max)
		return -1;
	return (long)v;
}

static int usage(void)
{
	fprintf(stderr, "usage: uffdwp demo [--size MIB] [--writers N] [--dir DIR] [--thp] [--keep]\n");
	return 2;
}

int cmd_demo(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "writers", required_argument, NULL, 'w' },
		{ "dir", required_argument, NULL, 'd' },
		{ "keep", no_argument, NULL, 'k' },
		{ "thp", no_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	long size_mib = 1024, nwriters = 2;
	bool keep = false, thp = false;
	struct store st = { .page = (size_t)sysconf(_SC_PAGESIZE) };
	struct result res[2][2] = { 0 };
	char live_path[512], fork_path[512];
	int opt, ret, status = 0;

	while ((opt = getopt_long(argc, argv, "s:w:d:kth", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': size_mib = parse_count(optarg, DEMO_MAX_MIB); break;
		case 'w': nwriters = parse_count(optarg, DEMO_MAX_WRITERS); break;
		case 'd': dir = optarg; break;
		case 'k': keep = true; break;
		case 't': thp = true; break;
		default: return usage();
		}
	}
	if (size_mib <= 0 || nwriters <= 0 || optind != argc)
		return usage();
	st.len = (size_t)size_mib << 20;
	st.nrec = st.len / sizeof(struct record);
	st.nwriters = (int)nwriters;
	snprintf(live_path, sizeof(live_path), "%s/uffdwp-demo-live.snap", dir);
	snprintf(fork_path, sizeof(fork_path), "%s/uffdwp-demo-fork.snap", dir);

	st.rec = mmap(NULL, st.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *ref = mmap(NULL, st.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	st.touched = calloc(st.len / st.page, 1);
	st.w = calloc((size_t)nwriters, sizeof(*st.w));
	if (st.rec == MAP_FAILED || ref == MAP_FAILED || !st.touched || !st.w) {
		fprintf(stderr, "uffdwp demo: out of memory for a %ld MiB store\n", size_mib);
		return 1;
	}
	/* 4 KiB pages by default, as most programs' memory is (THP is
	 * "madvise" on most systems). */
	madvise(st.rec, st.len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	madvise(ref, st.len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	for (size_t i = 0; i < st.nrec; i++)
		write_record(&st.rec[i], i, i * 0x2545f4914f6cdd1dull);

	printf("uffdwp demo: a %ld MiB store of %zu records in %s pages, %ld writers at full\n"
	       "speed, snapshotted live to %s, then with fork() to %s\n",
	       size_mib, st.nrec, thp ? "transparent huge" : "4 KiB", nwriters, live_path,
	       fork_path);
	for (int i = 0; i < st.nwriters; i++) {
		st.w[i].st = &st;
		st.w[i].index = (size_t)i;
		st.w[i].seed = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
		if (pthread_create(&st.w[i].thread, NULL, writer_main, &st.w[i])) {
			fprintf(stderr, "uffdwp demo: cannot start writers\n");
			return 1;
		}
	}
	usleep(200000);  /* let the writers reach full speed */
	printf("  writers: %.0f M writes/s before the snapshots\n",
	       (double)atomic_load(&st.writes) / 0.2 / 1e6);

	for (int skewed = 0; skewed < 2 && !status; skewed++) {
		atomic_store(&st.skewed, skewed);
		ret = run_live(&st, ref, live_path, &res[skewed][0]);
		if (ret) {
			fprintf(stderr, "uffdwp demo: live snapshot: %s\n", strerror(-ret));
			status = 1;
			break;
		}
		ret = run_fork(&st, ref, fork_path, &res[skewed][1]);
		if (ret) {
			fprintf(stderr, "uffdwp demo: fork snapshot: %s\n", strerror(-ret));
			status = 1;
		}
	}
	atomic_store(&st.stop, true);
	for (int i = 0; i < st.nwriters; i++)
		pthread_join(st.w[i].thread, NULL);
	for (int skewed = 0; skewed < 2 && !status; skewed++) {
		print_results(skewed ? "skewed writers (Zipf)" : "uniform writers",
			      &res[skewed][0], &res[skewed][1]);
		if (!res[skewed][0].verified || !res[skewed][1].verified)
			status = 1;
	}
	if (!keep) {
		unlink(live_path);
		unlink(fork_path);
	}
	munmap(ref, st.len);
	munmap(st.rec, st.len);
	free(st.touched);
	free(st.w);
	return status;
}
