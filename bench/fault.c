/* SPDX-License-Identifier: MIT */
/*
 * uffdwp bench fault: what one write fault on a protected page costs.
 *
 * Writer threads write the first byte of each page of a populated region
 * (in order, or shuffled) while something resolves the faults: the engine
 * in each mode on each backend, and, measured in the same run, the
 * baselines written here by hand on raw system calls - a handler thread
 * (poll + read + ioctl), UFFD_FEATURE_SIGBUS + ioctl in the writer,
 * mprotect + SIGSEGV, the copy-on-write fault after fork(), and the
 * asynchronous write-protect fault the kernel resolves itself. The
 * handler-thread rows cost tens of microseconds a page here, so they write
 * only the first SLOW_PAGES_DIVISOR-th of the region (the row says so).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "uffdwp.h"
#include "bench.h"

#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)  /* 6.7; the installed headers may be older */
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#define SLOW_PAGES_DIVISOR 4
#define MAX_WRITERS 2

/* One measurement: the region, how it is written, and what resolves. */
struct fault_run {
	struct bench *b;
	char *mem;
	size_t len, npages;      /* npages: how many of the region's pages are written */
	const size_t *order;     /* page indexes, npages of them */
	int writers;
	/* the mechanism's state */
	int uffd, stop_fd;
	pthread_t handler;
	struct uffdwp *ctx;
	struct uffdwp_engine *eng;
	enum uffdwp_engine_mode mode;
	bool with_fn;
	pid_t child;
	int child_pipe;
	double faults_per_batch;  /* engine rows that read batches, else 0 */
};

/* A mechanism: make the region fault (and start what resolves), then undo.
 * setup returns 0, a negative errno, or 1 with *why set to skip the row. */
struct mechanism {
	int (*setup)(struct fault_run *r, const char **why);
	void (*teardown)(struct fault_run *r);
};

/* --- the writers --- */

struct writer {
	pthread_t thread;
	const struct fault_run *r;
	int index;
	uint64_t start_ns, end_ns;
	struct bench_lat lat;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	const struct fault_run *r = w->r;
	size_t page = r->b->page;

	w->start_ns = bench_now_ns();
	/* Interleaved: with two writers both fault at once, all the time. */
	for (size_t i = (size_t)w->index; i < r->npages; i += (size_t)r->writers) {
		uint64_t t = bench_now_ns();

		((volatile char *)r->mem)[r->order[i] * page] = 2;
		bench_lat_add(&w->lat, bench_now_ns() - t);
	}
	w->end_ns = bench_now_ns();
	return NULL;
}

/* --- raw userfaultfd, by hand --- */

static int raw_uffd_open(uint64_t features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0 && errno == EPERM)
		fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api) < 0 || (api.features & features) != features) {
		close(fd);
		return -EOPNOTSUPP;
	}
	return fd;
}

static int raw_protect(struct fault_run *r, uint64_t features, const char **why)
{
	struct uffdio_register reg = {
		.range = { (uintptr_t)r->mem, r->len }, .mode = UFFDIO_REGISTER_MODE_WP,
	};
	struct uffdio_writeprotect wp = {
		.range = { (uintptr_t)r->mem, r->len }, .mode = UFFDIO_WRITEPROTECT_MODE_WP,
	};

	r->uffd = raw_uffd_open(features);
	if (r->uffd < 0) {
		*why = r->uffd == -EOPNOTSUPP ? "the kernel lacks the feature"
					      : "userfaultfd unavailable";
		return 1;
	}
	if (ioctl(r->uffd, UFFDIO_REGISTER, &reg) < 0 || ioctl(r->uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
		int err = -errno;

		close(r->uffd);
		return err;
	}
	return 0;
}

/* The handler thread everybody writes: poll, read one message, un-protect
 * (which wakes the writer). */
static void *raw_poll_handler(void *arg)
{
	struct fault_run *r = arg;
	struct pollfd p[2] = { { .fd = r->uffd, .events = POLLIN },
			       { .fd = r->stop_fd, .events = POLLIN } };

	for (;;) {
		struct uffd_msg msg;
		struct uffdio_writeprotect wp;

		if (poll(p, 2, -1) < 0)
			continue;
		if (p[1].revents)
			return NULL;
		if (read(r->uffd, &msg, sizeof(msg)) != (ssize_t)sizeof(msg))
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		wp.range.start = msg.arg.pagefault.address & ~(uint64_t)(r->b->page - 1);
		wp.range.len = r->b->page;
		wp.mode = 0;
		while (ioctl(r->uffd, UFFDIO_WRITEPROTECT, &wp) < 0 && errno == EAGAIN)
			;
	}
}

static int raw_poll_setup(struct fault_run *r, const char **why)
{
	int ret = raw_protect(r, 0, why);

	if (ret)
		return ret;
	r->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (r->stop_fd < 0) {
		ret = -errno;
		close(r->uffd);
		return ret;
	}
	ret = -pthread_create(&r->handler, NULL, raw_poll_handler, r);
	if (ret < 0) {
		close(r->stop_fd);
		close(r->uffd);
	}
	return ret;
}

static void raw_poll_teardown(struct fault_run *r)
{
	uint64_t one = 1;

	if (write(r->stop_fd, &one, sizeof(one)) < 0)
		abort();  /* an eventfd write cannot fail here */
	pthread_join(r->handler, NULL);
	close(r->stop_fd);
	close(r->uffd);
}

/* The signal handlers' view of the run (set before they can fire). */
static int raw_sigbus_uffd;
static size_t handler_page_size;

/* SIGBUS mode by hand: the writer un-protects its own page. */
static void raw_on_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	uint64_t page = (uintptr_t)si->si_addr & ~(uint64_t)(handler_page_size - 1);
	struct uffdio_writeprotect wp = { .range = { page, handler_page_size } };

	while (ioctl(raw_sigbus_uffd, UFFDIO_WRITEPROTECT, &wp) < 0 && errno == EAGAIN)
		;
	errno = saved;
}

static struct sigaction saved_action;

static int raw_sigbus_setup(struct fault_run *r, const char **why)
{
	struct sigaction sa = { .sa_sigaction = raw_on_sigbus, .sa_flags = SA_SIGINFO };
	int ret = raw_protect(r, UFFD_FEATURE_SIGBUS, why);

	if (ret)
		return ret;
	raw_sigbus_uffd = r->uffd;
	handler_page_size = r->b->page;
	sigaction(SIGBUS, &sa, &saved_action);
	return 0;
}

static void raw_sigbus_teardown(struct fault_run *r)
{
	sigaction(SIGBUS, &saved_action, NULL);
	close(r->uffd);
}

/* mprotect + SIGSEGV: the emulation's mechanism, bare. */
static char *mprotect_region;
static size_t mprotect_len;
static _Atomic int mprotect_error;

static void on_sigsegv(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	uintptr_t page = (uintptr_t)si->si_addr & ~(uintptr_t)(handler_page_size - 1);

	if (mprotect((void *)page, handler_page_size, PROT_READ | PROT_WRITE) < 0) {
		/* Past vm.max_map_count: give up on the row, not the process. */
		mprotect_error = errno;
		mprotect(mprotect_region, mprotect_len, PROT_READ | PROT_WRITE);
	}
	errno = saved;
}

static int mprotect_setup(struct fault_run *r, const char **why)
{
	struct sigaction sa = { .sa_sigaction = on_sigsegv, .sa_flags = SA_SIGINFO };

	mprotect_region = r->mem;
	mprotect_len = r->len;
	handler_page_size = r->b->page;
	mprotect_error = 0;
	sigaction(SIGSEGV, &sa, &saved_action);
	return mprotect(r->mem, r->len, PROT_READ) < 0 ? -errno : 0;
}

static void mprotect_teardown(struct fault_run *r)
{
	sigaction(SIGSEGV, &saved_action, NULL);
}

/* fork(): the parent's writes each copy a page the child shares. */
static int fork_setup(struct fault_run *r, const char **why)
{
	int p[2];

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	r->child = fork();
	if (r->child < 0) {
		close(p[0]);
		close(p[1]);
		return -errno;
	}
	if (r->child == 0) {
		char c;

		close(p[1]);
		while (read(p[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(p[0]);
	r->child_pipe = p[1];
	return 0;
}

static void fork_teardown(struct fault_run *r)
{
	close(r->child_pipe);
	waitpid(r->child, NULL, 0);
}

/* Asynchronous write-protect: the kernel resolves the fault itself. */
static int async_setup(struct fault_run *r, const char **why)
{
	return raw_protect(r, UFFD_FEATURE_WP_ASYNC, why);
}

static void close_uffd(struct fault_run *r)
{
	close(r->uffd);
}

/* --- the engine --- */

static _Atomic uint64_t callback_calls;

static int count_fault(void *arg, const struct uffdwp_event *ev)
{
	atomic_fetch_add_explicit(&callback_calls, 1, memory_order_relaxed);
	return UFFDWP_RESOLVE;
}

static int engine_setup_on(struct fault_run *r, enum uffdwp_backend backend, const char **why)
{
	struct uffdwp_opts o = { .sz = sizeof(o), .backend = backend };
	struct uffdwp_engine_opts eo = { .sz = sizeof(eo), .mode = r->mode,
					 .fn = r->with_fn ? count_fault : NULL };
	int ret;

	if (backend == UFFDWP_BACKEND_KERNEL && r->mode == UFFDWP_ENGINE_INTHREAD)
		o.features = UFFDWP_FEATURE_SIGBUS;
	ret = uffdwp_open(&r->ctx, &o);
	if (ret < 0) {
		*why = bench_strdup(r->b, "%s backend: %s", uffdwp_backend_name(backend),
				    strerror(-ret));
		return 1;
	}
	ret = uffdwp_register(r->ctx, r->mem, r->len, UFFDWP_REGISTER_MODE_WP);
	if (ret == 0)
		ret = uffdwp_writeprotect(r->ctx, r->mem, r->len, UFFDWP_WRITEPROTECT_MODE_WP);
	if (ret == 0)
		ret = uffdwp_engine_start(&r->eng, r->ctx, &eo);
	if (ret < 0)
		uffdwp_close(r->ctx);
	return ret;
}

static int kernel_engine_setup(struct fault_run *r, const char **why)
{
	return engine_setup_on(r, UFFDWP_BACKEND_KERNEL, why);
}

static int emulated_engine_setup(struct fault_run *r, const char **why)
{
	return engine_setup_on(r, UFFDWP_BACKEND_EMULATED, why);
}

static void engine_teardown(struct fault_run *r)
{
	struct uffdwp_engine_stats st = { .sz = sizeof(st) };

	/* Faults per read tell whether batching happened. */
	if (uffdwp_engine_stats(r->eng, &st) == 0 && st.batches)
		r->faults_per_batch = (double)st.faults / (double)st.batches;
	uffdwp_engine_stop(r->eng);
	uffdwp_close(r->ctx);
}

static const struct mechanism raw_poll = { raw_poll_setup, raw_poll_teardown };
static const struct mechanism raw_sigbus = { raw_sigbus_setup, raw_sigbus_teardown };
static const struct mechanism mprotect_sigsegv = { mprotect_setup, mprotect_teardown };
static const struct mechanism fork_cow = { fork_setup, fork_teardown };
static const struct mechanism wp_async = { async_setup, close_uffd };
static const struct mechanism kernel_engine = { kernel_engine_setup, engine_teardown };
static const struct mechanism emulated_engine = { emulated_engine_setup, engine_teardown };
static int nothing_setup(struct fault_run *r, const char **why) { return 0; }
static void nothing_teardown(struct fault_run *r) { }
static const struct mechanism no_fault = { nothing_setup, nothing_teardown };

/* --- one row --- */

struct row_spec {
	const char *name;          /* without the order suffix */
	const struct mechanism *m;
	enum uffdwp_engine_mode mode;
	bool with_fn;
	int writers;
	bool slow;                 /* a handler thread: a part of the region only */
	const char *baseline;      /* without the order suffix */
};

/* Start the writers and join them; in CALLER mode this thread is the
 * program's event loop meanwhile: poll the fd, dispatch. */
static void run_writers(struct fault_run *r, struct writer *w, uint64_t *ns,
			struct bench_lat *lat)
{
	uint64_t first = UINT64_MAX, last = 0;

	for (int i = 0; i < r->writers; i++) {
		w[i] = (struct writer){ .r = r, .index = i };
		bench_lat_reset(&w[i].lat);
		pthread_create(&w[i].thread, NULL, writer_main, &w[i]);
	}
	if (r->mode == UFFDWP_ENGINE_CALLER) {
		/* The 1 ms timeout only bounds how late the end is noticed. */
		for (int i = 0; i < r->writers; i++) {
			struct pollfd p = { .fd = uffdwp_fd(r->ctx), .events = POLLIN };

			while (pthread_tryjoin_np(w[i].thread, NULL) == EBUSY)
				if (poll(&p, 1, 1) > 0)
					uffdwp_engine_dispatch(r->eng);
		}
	} else {
		for (int i = 0; i < r->writers; i++)
			pthread_join(w[i].thread, NULL);
	}
	bench_lat_reset(lat);
	for (int i = 0; i < r->writers; i++) {
		first = w[i].start_ns < first ? w[i].start_ns : first;
		last = w[i].end_ns > last ? w[i].end_ns : last;
		bench_lat_merge(lat, &w[i].lat);
	}
	*ns = last - first;
}

static const char *row_note(struct bench *b, const struct row_spec *spec,
			    double faults_per_batch)
{
	char batch[48] = "";

	if (faults_per_batch > 0)
		snprintf(batch, sizeof(batch), "%.2f faults/read; ", faults_per_batch);
	if (spec->slow)
		return bench_strdup(b, "%sfirst 1/%d of the region", batch, SLOW_PAGES_DIVISOR);
	return faults_per_batch > 0 ? bench_strdup(b, "%.2f faults/read", faults_per_batch) : NULL;
}

/* What the runs of one row found so far. */
struct row_result {
	const char *name;
	const char *skipped;     /* why, once a run could not measure */
	uint64_t best_ns;        /* UINT64_MAX before the first run */
	size_t npages;
	double faults_per_batch;
	struct bench_lat lat;    /* of the best run */
};

/* One run of one row; res keeps the best. Returns 0 or a negative errno
 * (a row that cannot run here is marked skipped, not an error). */
static int measure_once(struct bench *b, const struct row_spec *spec, const size_t *order,
			struct row_result *res, struct bench_lat *scratch)
{
	size_t region_pages = b->opts->region_size / b->page;
	struct fault_run r = {
		.b = b, .len = b->opts->region_size, .order = order, .writers = spec->writers,
		.mode = spec->mode, .with_fn = spec->with_fn,
		.npages = spec->slow ? region_pages / SLOW_PAGES_DIVISOR : region_pages,
	};
	struct writer w[MAX_WRITERS];
	const char *why = NULL;
	uint64_t ns;
	int ret;

	if (r.npages == 0)
		r.npages = 1;
	r.mem = bench_map(r.len, true);
	if (!r.mem)
		return -errno;
	ret = spec->m->setup(&r, &why);
	if (ret != 0) {
		munmap(r.mem, r.len);
		res->skipped = ret == 1 ? why : bench_strdup(b, "setup failed: %s", strerror(-ret));
		return 0;
	}
	run_writers(&r, w, &ns, scratch);
	spec->m->teardown(&r);
	munmap(r.mem, r.len);
	if (spec->m == &mprotect_sigsegv && mprotect_error) {
		res->skipped = bench_strdup(b, "mprotect: %s (vm.max_map_count?)",
					    strerror(mprotect_error));
		return 0;
	}
	if (ns < res->best_ns) {
		res->best_ns = ns;
		res->npages = r.npages;
		res->faults_per_batch = r.faults_per_batch;
		res->lat = *scratch;
	}
	return 0;
}

static const struct row_spec rows[] = {
	{ "plain-write", &no_fault, 0, false, 1, false, NULL },
	{ "raw-poll", &raw_poll, 0, false, 1, true, NULL },
	{ "raw-poll/2writers", &raw_poll, 0, false, 2, true, NULL },
	{ "raw-sigbus", &raw_sigbus, 0, false, 1, false, NULL },
	{ "mprotect-sigsegv", &mprotect_sigsegv, 0, false, 1, false, NULL },
	{ "fork-cow", &fork_cow, 0, false, 1, false, NULL },
	{ "wp-async", &wp_async, 0, false, 1, false, NULL },
	{ "engine-inthread/kernel", &kernel_engine, UFFDWP_ENGINE_INTHREAD, false, 1, false,
	  "raw-sigbus" },
	{ "engine-inthread/kernel+fn", &kernel_engine, UFFDWP_ENGINE_INTHREAD, true, 1, false,
	  "raw-sigbus" },
	{ "engine-inthread/emulated", &emulated_engine, UFFDWP_ENGINE_INTHREAD, true, 1, false,
	  "mprotect-sigsegv" },
	{ "engine-thread/kernel", &kernel_engine, UFFDWP_ENGINE_THREAD, true, 1, true,
	  "raw-poll" },
	{ "engine-thread/kernel/2writers", &kernel_engine, UFFDWP_ENGINE_THREAD, true, 2, true,
	  "raw-poll/2writers" },
	{ "engine-thread/emulated", &emulated_engine, UFFDWP_ENGINE_THREAD, true, 1, true,
	  "raw-poll" },
	{ "engine-caller/kernel", &kernel_engine, UFFDWP_ENGINE_CALLER, true, 1, true,
	  "raw-poll" },
	{ "engine-caller/emulated", &emulated_engine, UFFDWP_ENGINE_CALLER, true, 1, true,
	  "raw-poll" },
};

#define NROWS (sizeof(rows) / sizeof(rows[0]))

/* Every row of one order, --repeat times over, the rows interleaved so
 * that the machine's drift (other load, frequency) hits baselines and
 * engine rows alike; each row keeps its best run. */
static int measure_order(struct bench *b, bool shuffled, struct row_result *res,
			 struct bench_lat *scratch)
{
	const char *suffix = shuffled ? "random" : "seq";
	size_t *order = bench_page_order(b->opts->region_size / b->page, shuffled);
	int ret = 0;

	if (!order)
		return -ENOMEM;
	for (size_t i = 0; i < NROWS; i++)
		res[i] = (struct row_result){
			.name = bench_strdup(b, "%s/%s", rows[i].name, suffix),
			.best_ns = UINT64_MAX,
		};
	for (unsigned rep = 0; rep < b->opts->repeat && ret == 0; rep++)
		for (size_t i = 0; i < NROWS && ret == 0; i++)
			/* The slow rows write the first pages *in this order*:
			 * a random sample of the region when shuffled. */
			if (!res[i].skipped && bench_selected(b, res[i].name))
				ret = measure_once(b, &rows[i], order, &res[i], scratch);
	free(order);
	for (size_t i = 0; i < NROWS && ret == 0; i++) {
		const struct row_spec *spec = &rows[i];

		if (res[i].skipped) {
			bench_skip(b, res[i].name, "%s", res[i].skipped);
			continue;
		}
		bench_row(b, &(struct bench_row){
			.name = res[i].name, .unit = "page", .ops = res[i].npages,
			.ns = res[i].best_ns, .lat = &res[i].lat,
			.baseline = spec->baseline ? bench_strdup(b, "%s/%s", spec->baseline, suffix)
						   : NULL,
			.note = row_note(b, spec, res[i].faults_per_batch),
		});
	}
	return ret;
}

BENCH_SUITE(fault, "cost of a write fault on a protected page, per mode and baseline")
{
	struct row_result *res = malloc(NROWS * sizeof(*res));
	struct bench_lat *scratch = malloc(sizeof(*scratch));
	int ret = res && scratch ? 0 : -ENOMEM;

	for (int shuffled = 0; shuffled <= 1 && ret == 0; shuffled++)
		ret = measure_order(b, shuffled, res, scratch);
	free(scratch);
	free(res);
	bench_target(b, "engine-inthread/kernel/seq", "raw-sigbus/seq", 1.15);
	bench_target(b, "engine-inthread/kernel/seq", "mprotect-sigsegv/seq", 1.0);
	bench_target(b, "engine-inthread/kernel+fn/seq", "raw-sigbus/seq", 1.15);
	bench_target(b, "engine-inthread/kernel/random", "mprotect-sigsegv/random", 1.0);
	bench_target(b, "engine-thread/kernel/seq", "raw-poll/seq", 1.1);
	bench_target(b, "engine-thread/kernel/random", "raw-poll/random", 1.1);
	bench_target(b, "engine-thread/kernel/2writers/seq", "raw-poll/2writers/seq", 0.6);
	bench_target(b, "engine-thread/kernel/2writers/random", "raw-poll/2writers/random", 0.6);
	return ret;
}
