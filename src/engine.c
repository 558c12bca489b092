/* SPDX-License-Identifier: MIT */
/*
 * The fault-resolution engine: the loop every user of write-protection
 * writes by hand, done once (uffdwp_engine(3)).
 *
 * THREAD: one handler thread reads faults in batches (up to BATCH_MAX per
 * read), hands each to the callback, then un-protects the batch's pages -
 * sorted and merged into runs, one un-protect-and-wake ioctl per run.
 * It sleeps in poll(2) on the context's fd and an eventfd (stop) when idle;
 * when faults follow each other closely it spins on the fd for a while
 * instead, because in a VM every sleep/wake pair of the handler costs tens
 * of microseconds (BRIEF §4: 42-46 us per fault with poll, 17-18 busy).
 *
 * INTHREAD: the faulting thread resolves its own fault. Kernel backend: the
 * context has UFFD_FEATURE_SIGBUS, so a write to a protected page raises
 * SIGBUS in the writer; the fault-signal layer (signals.c) asks
 * sigbus_claim(), which finds the context through the lock-free registry
 * and un-protects. Emulated backend: the backend's fault hook, called from
 * its SIGSEGV claimant.
 *
 * The engine lives in private memory (private.c): its handler thread and
 * signal handlers write it, and the program may protect its own heap.
 *
 * CALLER: uffdwp_engine_dispatch() runs one pass of the THREAD loop's body.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include "backend.h"
#include "maps.h"
#include "opts.h"

/* Events read at once (the kernel backend reads at most 64 per call). */
#define BATCH_MAX 64

/* The handler thread spins on the fd, for up to this long, when the last
 * gap between faults was shorter: a burst is going on. A budget that
 * followed the gaps more tightly (a few gaps long) measured worse: the
 * writers' wake-up latency has a long tail, and every spin that ends a
 * moment too early costs a full sleep/wake round trip. */
#define SPIN_NS 100000

/* -EAGAIN from an un-protect lasts as long as the address-space change
 * (a fork copies the whole mm with it pending): give up only after this.
 * Most end within microseconds (the event is read, the forker returns), so
 * the first EAGAIN_YIELD_NS are waited out yielding; after that each retry
 * sleeps EAGAIN_SLEEP_NS, so that a long fork does not cost a whole CPU. */
#define EAGAIN_GIVE_UP_NS (10ull * 1000000000ull)
#define EAGAIN_YIELD_NS 1000000ull
#define EAGAIN_SLEEP_NS 100000l

#define EVENT_FEATURES (UFFDWP_FEATURE_EVENT_FORK | UFFDWP_FEATURE_EVENT_REMAP | \
			UFFDWP_FEATURE_EVENT_REMOVE | UFFDWP_FEATURE_EVENT_UNMAP)

struct engine_counters {
	_Atomic uint64_t faults, resolved, kept, events, eagain, errors, batches;
	_Atomic uint64_t latency_log2_ns[UFFDWP_ENGINE_LATENCY_BUCKETS];
	_Atomic uint64_t batch_log2[UFFDWP_ENGINE_BATCH_BUCKETS];
};

struct uffdwp_engine {
	struct uffdwp *ctx;
	enum uffdwp_engine_mode mode;
	uffdwp_fault_fn fn;
	void *arg;
	uintptr_t page_mask;
	size_t page;

	/* Held from reading events to having handled them: one reader at a
	 * time, and uffdwp_engine_flush() waits on it. */
	pthread_mutex_t read_lock;
	/* Faults read while an un-protect waited out -EAGAIN: handled next. */
	struct uffdwp_event deferred[BATCH_MAX];
	size_t ndeferred;

	pthread_t thread;         /* valid while stop_fd >= 0 */
	int stop_fd;              /* eventfd: wakes the handler thread; -1: no thread */
	_Atomic bool stopping;

	bool sigbus;              /* kernel INTHREAD: ctx->inthread_engine is us */
	bool hooked;              /* emulated INTHREAD: the backend's fault hook is ours */
	bool inherited;           /* a fork child's copy: none of it runs here */

	struct engine_counters stats;
	struct uffdwp_engine *next_started;  /* all engines, for "one per context" */
};

static pthread_mutex_t engines_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uffdwp_engine *engines_started;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* fork() while another thread starts or stops an engine: the child's copy
 * of the lock must not stay held by a thread it does not have. */
static void engines_lock_before_fork(void)
{
	pthread_mutex_lock(&engines_lock);
}

static void engines_unlock_in_parent(void)
{
	pthread_mutex_unlock(&engines_lock);
}

/*
 * A fork child has none of the parent's engines: their handler threads
 * are not there, and their contexts' fds still act on the parent's memory
 * (the SIGBUS registry is emptied in the child). Each stays attached to
 * its context, inert: stopping it, or closing the context, takes down what
 * is left of it in the child (an emulated hook) and reads no event.
 */
static void engines_forget_in_child(void)
{
	for (struct uffdwp_engine *e = engines_started; e; e = e->next_started) {
		e->inherited = true;
		atomic_store(&e->ctx->inthread_engine, NULL);
	}
	pthread_mutex_unlock(&engines_lock);
}

static void init_once_per_process(void)
{
	static const struct uffdwp__fork_hooks hooks = {
		engines_lock_before_fork, engines_unlock_in_parent, engines_forget_in_child,
	};

	uffdwp__at_fork(UFFDWP__FORK_ENGINE, &hooks);
}

static unsigned log2_floor(uint64_t v)
{
	return v ? 63u - (unsigned)__builtin_clzll(v) : 0;
}

static void count(_Atomic uint64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static void count_latency(struct uffdwp_engine *eng, uint64_t since_ns, uint64_t nfaults)
{
	unsigned b = log2_floor(uffdwp__now_ns() - since_ns);

	if (b >= UFFDWP_ENGINE_LATENCY_BUCKETS)
		b = UFFDWP_ENGINE_LATENCY_BUCKETS - 1;
	count(&eng->stats.latency_log2_ns[b], nfaults);
}

/* ---------------------------------------------------------------------------
 * Resolving: un-protect, waiting out -EAGAIN
 * ------------------------------------------------------------------------- */

static void pass_event(struct uffdwp_engine *eng, const struct uffdwp_event *ev)
{
	count(&eng->stats.events, 1);
	if (eng->fn)
		eng->fn(eng->arg, ev);
	else if (ev->type == UFFDWP_EVENT_FORK)
		close(ev->fork.fd);  /* nobody wants the child's faults */
}

/*
 * While an un-protect fails with -EAGAIN, the event that made the address
 * space change may be pending: read what is pending, pass the non-fault
 * events on (reading a fork event is what lets fork() finish), keep the
 * faults for later. Returns true if anything was read.
 */
static bool absorb_pending_events(struct uffdwp_engine *eng)
{
	struct uffdwp_event ev[BATCH_MAX];
	size_t room = BATCH_MAX - eng->ndeferred;
	int n;

	if (room == 0)
		return false;
	n = uffdwp_read_events(eng->ctx, ev, room);
	for (int i = 0; i < n; i++) {
		if (ev[i].type == UFFDWP_EVENT_PAGEFAULT)
			eng->deferred[eng->ndeferred++] = ev[i];
		else
			pass_event(eng, &ev[i]);
	}
	return n > 0;
}

/*
 * uffdwp_writeprotect() that rides out -EAGAIN. in_signal: called from a
 * signal handler, where the events are read by another thread (or there
 * are none), so only yield. Once the event is read the kernel still says
 * -EAGAIN until the forking thread has returned from the change; yielding
 * lets it run.
 */
static int writeprotect_retrying(struct uffdwp_engine *eng, uintptr_t start, size_t len,
				 unsigned mode, bool in_signal)
{
	uint64_t first = 0, waited;
	int ret;

	while ((ret = uffdwp_writeprotect(eng->ctx, (void *)start, len, mode)) == -EAGAIN) {
		count(&eng->stats.eagain, 1);
		if (!in_signal && absorb_pending_events(eng))
			continue;
		if (!first)
			first = uffdwp__now_ns();
		waited = uffdwp__now_ns() - first;
		if (waited > EAGAIN_GIVE_UP_NS)
			break;
		if (waited < EAGAIN_YIELD_NS) {
			sched_yield();
		} else {
			struct timespec nap = { .tv_nsec = EAGAIN_SLEEP_NS };

			nanosleep(&nap, NULL);  /* async-signal-safe */
		}
	}
	return ret;
}

/*
 * writeprotect_retrying() over [*start, *start + *len), widened to the
 * huge pages of a hugetlbfs mapping when the kernel (or the emulation)
 * refuses to split one (-EINVAL): faults and runs come in base pages, a
 * hugetlbfs page is protected as a whole. *start and *len say what was
 * asked last.
 */
static int writeprotect_pages(struct uffdwp_engine *eng, uintptr_t *start, size_t *len,
			      unsigned mode, bool in_signal)
{
	int ret = writeprotect_retrying(eng, *start, *len, mode, in_signal);
	size_t huge;

	if (ret != -EINVAL)
		return ret;
	huge = uffdwp__page_size_at(*start);
	if (huge <= eng->page)
		return ret;
	*len = ((*start + *len + huge - 1) & ~(uintptr_t)(huge - 1)) - (*start & ~(uintptr_t)(huge - 1));
	*start &= ~(uintptr_t)(huge - 1);
	return writeprotect_retrying(eng, *start, *len, mode, in_signal);
}

/* Un-protect [start, start+len) and wake its writers; false if any page
 * of it stays protected. A range partly unmapped or unregistered meanwhile
 * fails as a whole with -ENOENT: then page by page, so the pages still
 * ours are not left protected. Pages that are gone need nothing: unmap
 * and unregister wake their writers. On any other failure the writers are
 * woken all the same: they fault again and come back to us, rather than
 * sleep where nothing would wake them. */
static bool unprotect_run(struct uffdwp_engine *eng, uintptr_t start, size_t len)
{
	int ret = writeprotect_pages(eng, &start, &len, 0, false);
	bool ok = true;

	if (ret == -ENOENT && len > eng->page) {
		for (size_t off = 0; off < len; off += eng->page)
			ok &= unprotect_run(eng, start + off, eng->page);
		return ok;
	}
	if (ret < 0 && ret != -ENOENT)
		uffdwp_wake(eng->ctx, (void *)start, len);
	return ret == 0 || ret == -ENOENT;
}

static void sort_pages(uintptr_t *p, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		uintptr_t v = p[i];
		size_t j = i;

		for (; j > 0 && p[j - 1] > v; j--)
			p[j] = p[j - 1];
		p[j] = v;
	}
}

/*
 * Resolve a batch: the pages (they may repeat: two threads faulting on one
 * page) are sorted and merged into runs of adjacent pages, and each run is
 * un-protected and woken by one ioctl. Un-protecting every run with
 * DONTWAKE and then waking the batch's span with one UFFDIO_WAKE was
 * measured too: it costs one more ioctl per batch (k + 1 against k), wakes
 * the first writers later, and the span also wakes writers whose faults
 * are not read yet (they fault again) and must be split around kept pages.
 * Merging adjacent pages is where a batch saves ioctls.
 */
static void resolve_pages(struct uffdwp_engine *eng, uintptr_t *pages, size_t n,
			  uint64_t read_ns)
{
	size_t failed = 0;

	if (n == 0)
		return;
	sort_pages(pages, n);
	for (size_t i = 0; i < n;) {
		size_t j = i + 1;

		while (j < n && pages[j] <= pages[j - 1] + eng->page)
			j++;
		if (!unprotect_run(eng, pages[i], pages[j - 1] + eng->page - pages[i]))
			failed += j - i;
		i = j;
	}
	count(&eng->stats.resolved, n - failed);
	count(&eng->stats.errors, failed);
	count_latency(eng, read_ns, n);
}

/* Hand a batch to the callback and resolve what it does not keep. */
static void handle_batch(struct uffdwp_engine *eng, const struct uffdwp_event *ev, size_t n,
			 uint64_t read_ns)
{
	uintptr_t pages[BATCH_MAX];
	size_t npages = 0;
	unsigned b = log2_floor(n);

	count(&eng->stats.batches, 1);
	count(&eng->stats.batch_log2[b < UFFDWP_ENGINE_BATCH_BUCKETS ? b
					: UFFDWP_ENGINE_BATCH_BUCKETS - 1], 1);
	for (size_t i = 0; i < n; i++) {
		if (ev[i].type != UFFDWP_EVENT_PAGEFAULT) {
			pass_event(eng, &ev[i]);
			continue;
		}
		count(&eng->stats.faults, 1);
		if (eng->fn && eng->fn(eng->arg, &ev[i]) == UFFDWP_KEEP)
			count(&eng->stats.kept, 1);
		else
			pages[npages++] = (uintptr_t)ev[i].pagefault.address & eng->page_mask;
	}
	resolve_pages(eng, pages, npages, read_ns);
}

/*
 * Handle everything pending, batch by batch, until the fd has nothing more.
 * Returns the number of events handled, or a negative errno from reading.
 * Called with read_lock held.
 */
static int drain_locked(struct uffdwp_engine *eng)
{
	struct uffdwp_event ev[BATCH_MAX];
	int total = 0;

	for (;;) {
		uint64_t read_ns = uffdwp__now_ns();
		int n;

		if (eng->ndeferred) {
			n = (int)eng->ndeferred;
			memcpy(ev, eng->deferred, (size_t)n * sizeof(ev[0]));
			eng->ndeferred = 0;
		} else {
			n = uffdwp_read_events(eng->ctx, ev, BATCH_MAX);
			if (n == -EAGAIN)
				return total;
			if (n < 0)
				return total ? total : n;
		}
		handle_batch(eng, ev, (size_t)n, read_ns);
		total += n;
	}
}

/* drain_locked() under read_lock. The lock is taken per drain, not for
 * the handler thread's life, so that flush can slip in between. */
static int drain(struct uffdwp_engine *eng)
{
	int ret;

	pthread_mutex_lock(&eng->read_lock);
	ret = drain_locked(eng);
	pthread_mutex_unlock(&eng->read_lock);
	return ret;
}

/* ---------------------------------------------------------------------------
 * THREAD mode
 * ------------------------------------------------------------------------- */

/* Sleep until the fd or the stop eventfd is readable. */
static void wait_for_events(struct uffdwp_engine *eng)
{
	struct pollfd p[2] = {
		{ .fd = uffdwp_fd(eng->ctx), .events = POLLIN },
		{ .fd = eng->stop_fd, .events = POLLIN },
	};

	while (poll(p, 2, -1) < 0 && errno == EINTR)
		;
}

/*
 * Spin for up to spin_ns, draining the fd: catches the next fault of a
 * burst without the sleep/wake round trip. Returns true if it handled any.
 * Each turn yields: when CPUs are scarce the writer just woken may be
 * waiting for this very CPU, and a spin that holds it delays the fault it
 * is waiting for (measured: p99 went from ~25 us to ~120 us).
 */
static bool spin_for_events(struct uffdwp_engine *eng, uint64_t spin_ns)
{
	uint64_t deadline = uffdwp__now_ns() + spin_ns;

	do {
		if (drain(eng) > 0)
			return true;
		sched_yield();
	} while (uffdwp__now_ns() < deadline && !atomic_load_explicit(&eng->stopping,
							       memory_order_relaxed));
	return false;
}

static void *handler_thread(void *arg)
{
	struct uffdwp_engine *eng = arg;
	bool burst = false;  /* the last gap was short: spin before sleeping */

	for (;;) {
		/* Loaded before draining: the last drain sees every fault that
		 * was pending when stop was asked. */
		bool stopping = atomic_load(&eng->stopping);
		uint64_t idle_since;

		drain(eng);
		if (stopping)
			break;
		idle_since = uffdwp__now_ns();
		if (burst && spin_for_events(eng, SPIN_NS))
			continue;
		wait_for_events(eng);
		burst = uffdwp__now_ns() - idle_since < SPIN_NS;
	}
	return NULL;
}

static int start_thread(struct uffdwp_engine *eng)
{
	sigset_t old;
	int ret;

	eng->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (eng->stop_fd < 0)
		return -errno;
	/* The thread takes no asynchronous signal: the program's handlers
	 * run in the program's threads, and poll is not interrupted. */
	uffdwp__block_async_signals(&old);
	ret = -pthread_create(&eng->thread, NULL, handler_thread, eng);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret < 0) {
		close(eng->stop_fd);
		eng->stop_fd = -1;
	}
	return ret;
}

static void stop_thread(struct uffdwp_engine *eng)
{
	uint64_t one = 1;

	atomic_store(&eng->stopping, true);
	while (write(eng->stop_fd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
	pthread_join(eng->thread, NULL);
	close(eng->stop_fd);
	eng->stop_fd = -1;
}

/* ---------------------------------------------------------------------------
 * INTHREAD mode, kernel backend: resolving a SIGBUS
 * ------------------------------------------------------------------------- */

/*
 * Resolve a SIGBUS at addr if it belongs to eng. Without a callback the
 * un-protect itself tells: it fails with -ENOENT outside eng's ranges.
 * With one, ownership must be known before the callback runs, so it is
 * asked first by protecting the page again: a no-op on a protected page
 * that fails the same way outside eng's ranges (and if the program
 * un-protected the page meanwhile, the un-protect below restores that,
 * unless fn keeps the page: uffdwp_engine(3) tells programs to update what
 * fn reads before they un-protect).
 */
static enum uffdwp__resolved sigbus_resolve(void *arg, uintptr_t addr, uint64_t t0)
{
	struct uffdwp_engine *eng = arg;
	uintptr_t page = addr & eng->page_mask;
	size_t len = eng->page;
	int ret;

	if (eng->fn) {
		struct uffdwp_event ev = {
			.type = UFFDWP_EVENT_PAGEFAULT,
			.pagefault = {
				.flags = UFFDWP_PAGEFAULT_FLAG_WRITE | UFFDWP_PAGEFAULT_FLAG_WP,
				.tid = (uint32_t)gettid(),
			},
		};

		if (writeprotect_pages(eng, &page, &len, UFFDWP_WRITEPROTECT_MODE_WP, true) < 0)
			return UFFDWP__NOT_MINE;
		ev.pagefault.address = page;
		if (eng->fn(eng->arg, &ev) == UFFDWP_KEEP) {
			count(&eng->stats.faults, 1);
			count(&eng->stats.kept, 1);
			return UFFDWP__KEPT;
		}
	}
	/* DONTWAKE: on a SIGBUS context nobody sleeps on a fault. */
	ret = writeprotect_pages(eng, &page, &len, UFFDWP_WRITEPROTECT_MODE_DONTWAKE, true);
	if (ret == -ENOENT && !eng->fn)
		return UFFDWP__NOT_MINE;
	count(&eng->stats.faults, 1);
	if (ret < 0) {
		count(&eng->stats.errors, 1);
		return UFFDWP__FAILED;
	}
	count(&eng->stats.resolved, 1);
	count_latency(eng, t0, 1);
	return UFFDWP__RESOLVED;
}

/* Called with engines_lock held. The context is in the SIGBUS registry
 * from its open to its close (signals.c); from now on the layer hands
 * its faults to us, and a fault of it with no engine running waits. */
static int sigbus_attach(struct uffdwp_engine *eng)
{
	struct uffdwp *ctx = eng->ctx;
	/* The program may have installed a SIGBUS handler of its own since
	 * the context opened: ours goes in front of it again. */
	int ret = uffdwp__sigbus_install();

	if (ret < 0)
		return ret;
	ctx->inthread_resolve = sigbus_resolve;
	atomic_store(&ctx->inthread_engine, eng);
	eng->sigbus = true;
	return 0;
}

/* Called with engines_lock held: returns once no handler uses eng. */
static void sigbus_detach(struct uffdwp_engine *eng)
{
	atomic_store(&eng->ctx->inthread_engine, NULL);
	uffdwp__registry_wait_unpinned(eng->ctx->registry_slot);
	eng->sigbus = false;
}

/* ---------------------------------------------------------------------------
 * INTHREAD mode, emulated backend: the backend's fault hook
 * ------------------------------------------------------------------------- */

/* Called in the faulting thread from the backend's SIGSEGV claimant, which
 * has already found that the page is one of ctx's protected pages; page:
 * the mapping's page size. A failure is returned (the write retries); a
 * kept page returns 1 (the writer waits for the generation). */
static int emulated_hook(void *arg, struct uffdwp *ctx, const struct uffdwp_event *ev,
			 size_t page)
{
	struct uffdwp_engine *eng = arg;
	uint64_t t0 = uffdwp__now_ns();
	uintptr_t start = (uintptr_t)ev->pagefault.address & ~(uintptr_t)(page - 1);
	int ret;

	count(&eng->stats.faults, 1);
	if (eng->fn && eng->fn(eng->arg, ev) == UFFDWP_KEEP) {
		count(&eng->stats.kept, 1);
		return 1;
	}
	/* Waking costs little here and releases any writer of this page
	 * that queued before the hook was installed. */
	ret = uffdwp_writeprotect(ctx, (void *)start, page, 0);
	if (ret < 0) {
		count(&eng->stats.errors, 1);
		return ret;
	}
	count(&eng->stats.resolved, 1);
	count_latency(eng, t0, 1);
	return 0;
}

/* ---------------------------------------------------------------------------
 * The API
 * ------------------------------------------------------------------------- */

static void unlink_engine(struct uffdwp_engine *eng)
{
	for (struct uffdwp_engine **p = &engines_started; *p; p = &(*p)->next_started)
		if (*p == eng) {
			*p = eng->next_started;
			return;
		}
}

/* The mode to run in, or a negative errno. */
static int choose_mode(const struct uffdwp *ctx, enum uffdwp_engine_mode asked)
{
	bool emulated = uffdwp_backend(ctx) == UFFDWP_BACKEND_EMULATED;
	bool sigbus = uffdwp_features(ctx) & UFFDWP_FEATURE_SIGBUS;

	switch (asked) {
	case UFFDWP_ENGINE_AUTO:
		return emulated || sigbus ? UFFDWP_ENGINE_INTHREAD : UFFDWP_ENGINE_THREAD;
	case UFFDWP_ENGINE_THREAD:
	case UFFDWP_ENGINE_CALLER:
		/* A SIGBUS context never queues a fault: nothing to read. */
		return sigbus ? -EOPNOTSUPP : (int)asked;
	case UFFDWP_ENGINE_INTHREAD:
		return emulated || sigbus ? (int)asked : -EOPNOTSUPP;
	}
	return -EINVAL;
}

/* Set up the chosen mode; called with engines_lock held. */
static int start_mode(struct uffdwp_engine *eng)
{
	bool events = uffdwp_features(eng->ctx) & EVENT_FEATURES;
	int ret;

	switch (eng->mode) {
	case UFFDWP_ENGINE_THREAD:
		return start_thread(eng);
	case UFFDWP_ENGINE_CALLER:
		return 0;
	case UFFDWP_ENGINE_INTHREAD:
		if (uffdwp_backend(eng->ctx) == UFFDWP_BACKEND_EMULATED) {
			ret = eng->ctx->ops->set_fault_hook(eng->ctx, emulated_hook, eng);
			if (ret < 0)
				return ret;
			eng->hooked = true;
			/* Faults queued before the hook: resolve them now. */
			drain(eng);
			return 0;
		}
		ret = sigbus_attach(eng);
		if (ret < 0)
			return ret;
		/* Faults that waited for a resolver retry, and find us. */
		uffdwp__generation_move();
		/* Events still come through the fd; fork() waits for its. */
		if (events) {
			ret = start_thread(eng);
			if (ret < 0)
				sigbus_detach(eng);
		}
		return ret;
	default:
		return -EINVAL;
	}
}

/* Undo start_mode(); called with engines_lock held. Once it returns no
 * thread of the engine runs and no signal handler uses it. */
static void stop_mode(struct uffdwp_engine *eng)
{
	if (eng->sigbus)
		sigbus_detach(eng);
	if (eng->hooked) {
		/* Returns once no handler runs our hook any more. */
		eng->ctx->ops->set_fault_hook(eng->ctx, NULL, NULL);
		eng->hooked = false;
	}
	if (eng->stop_fd >= 0 && eng->inherited) {
		close(eng->stop_fd);  /* its thread is the parent's */
		eng->stop_fd = -1;
	} else if (eng->stop_fd >= 0) {
		stop_thread(eng);
	}
}

/* uffdwp_close() with an engine still running: the engine stops, and
 * stays allocated (without a context) for uffdwp_engine_stop(). */
static void detach_on_close(struct uffdwp *ctx)
{
	struct uffdwp_engine *eng;

	pthread_mutex_lock(&engines_lock);
	eng = ctx->engine;
	if (eng) {
		stop_mode(eng);
		unlink_engine(eng);
		ctx->engine = NULL;
		eng->ctx = NULL;
	}
	pthread_mutex_unlock(&engines_lock);
}

int uffdwp_engine_start(struct uffdwp_engine **out, struct uffdwp *ctx,
			const struct uffdwp_engine_opts *opts)
{
	struct uffdwp_engine_opts o = { .sz = sizeof(o) };
	struct uffdwp_engine *eng;
	int mode, ret;

	if (!out || !ctx)
		return -EINVAL;
	if (opts) {
		ret = uffdwp__opts_check(opts, opts->sz,
					 UFFDWP__OPTS_END(struct uffdwp_engine_opts, arg), sizeof(o));
		if (ret)
			return ret;
		o.mode = opts->mode;
		o.fn = opts->fn;
		o.arg = opts->arg;
	}
	mode = choose_mode(ctx, o.mode);
	if (mode < 0)
		return mode;
	pthread_once(&init_once, init_once_per_process);
	eng = uffdwp__private_alloc(sizeof(*eng));
	if (!eng)
		return -ENOMEM;
	eng->ctx = ctx;
	eng->mode = (enum uffdwp_engine_mode)mode;
	eng->fn = o.fn;
	eng->arg = o.arg;
	eng->page = uffdwp__page_size();
	eng->page_mask = ~(uintptr_t)(eng->page - 1);
	eng->stop_fd = -1;
	pthread_mutex_init(&eng->read_lock, NULL);

	pthread_mutex_lock(&engines_lock);
	ret = ctx->engine ? -EBUSY : start_mode(eng);
	if (ret == 0) {
		eng->next_started = engines_started;
		engines_started = eng;
		ctx->engine = eng;
		ctx->engine_detach = detach_on_close;
	}
	pthread_mutex_unlock(&engines_lock);
	if (ret < 0) {
		pthread_mutex_destroy(&eng->read_lock);
		uffdwp__private_free(eng);
		return ret;
	}
	*out = eng;
	return 0;
}

void uffdwp_engine_stop(struct uffdwp_engine *eng)
{
	bool drain_left;

	if (!eng)
		return;
	pthread_mutex_lock(&engines_lock);
	/* Without a context it stopped already, when its context closed. A
	 * fork child's copy of a parent's engine reads nothing: the events
	 * on a kernel fd are the parent's. */
	drain_left = eng->ctx && !eng->inherited;
	if (eng->ctx) {
		stop_mode(eng);
		unlink_engine(eng);
		eng->ctx->engine = NULL;
	}
	pthread_mutex_unlock(&engines_lock);
	/* What the thread did not see (CALLER mode; emulated faults that
	 * queued while the hook was going away). A SIGBUS context queues no
	 * fault, so this reads nothing there. */
	if (drain_left)
		drain(eng);
	pthread_mutex_destroy(&eng->read_lock);
	uffdwp__private_free(eng);
}

int uffdwp_engine_dispatch(struct uffdwp_engine *eng)
{
	if (!eng || eng->mode != UFFDWP_ENGINE_CALLER)
		return -EINVAL;
	if (!eng->ctx || eng->inherited)
		return -EBADF;  /* its context was closed (or is the parent's) */
	return drain(eng);
}

int uffdwp_engine_flush(struct uffdwp_engine *eng)
{
	if (!eng)
		return -EINVAL;
	/* Whoever read an event holds the lock until it has handled it. */
	pthread_mutex_lock(&eng->read_lock);
	pthread_mutex_unlock(&eng->read_lock);
	return 0;
}

enum uffdwp_engine_mode uffdwp_engine_mode(const struct uffdwp_engine *eng)
{
	return eng->mode;
}

int uffdwp_engine_stats(const struct uffdwp_engine *eng, struct uffdwp_engine_stats *st)
{
	const struct engine_counters *c;
	struct uffdwp_engine_stats s = { 0 };
	size_t n;

	if (!eng || !st || st->sz < offsetof(struct uffdwp_engine_stats, batches) +
				       sizeof(st->batches))
		return -EINVAL;
	c = &eng->stats;
	s.faults = atomic_load(&c->faults);
	s.resolved = atomic_load(&c->resolved);
	s.kept = atomic_load(&c->kept);
	s.events = atomic_load(&c->events);
	s.eagain = atomic_load(&c->eagain);
	s.errors = atomic_load(&c->errors);
	s.batches = atomic_load(&c->batches);
	for (size_t i = 0; i < UFFDWP_ENGINE_LATENCY_BUCKETS; i++)
		s.latency_log2_ns[i] = atomic_load(&c->latency_log2_ns[i]);
	for (size_t i = 0; i < UFFDWP_ENGINE_BATCH_BUCKETS; i++)
		s.batch_log2[i] = atomic_load(&c->batch_log2[i]);
	n = st->sz < sizeof(s) ? st->sz : sizeof(s);
	s.sz = st->sz;
	memcpy(st, &s, n);
	return 0;
}
