/* SPDX-License-Identifier: MIT */
/*
 * The write tracker: which pages were written since they were last reset.
 *
 * Three methods, one interface:
 *  - ASYNC: a context with WP_ASYNC + WP_UNPOPULATED. The kernel resolves
 *    write faults itself and remembers the page as written; PAGEMAP_SCAN on
 *    /proc/self/pagemap lists written pages and re-protects them in the same
 *    walk, under the page-table lock, so a racing write is either before the
 *    walk reached its page (reported) or after (faults again). No thread, no
 *    bitmap: the page tables are the state.
 *  - SYNC and EMULATED: a context of the kernel or the emulated backend and
 *    an engine thread. A clean page is write-protected; its first write
 *    faults, the fault handler sets the page's bit and un-protects it. A
 *    collect with reset re-protects the pages whose bits are set and only
 *    then clears the bits.
 *
 * The SYNC invariant, "a clean bit means a protected page", must survive a
 * fault handled while a collect runs. If the handler set a bit, a collect
 * then re-protected the page and cleared the bit, and the handler's
 * un-protect came last, the page would be clean and writable: every later
 * write lost. So the handler marks and un-protects under fault_lock, and a
 * collect re-protects and clears under it too. This is why the handler
 * un-protects the page itself and returns UFFDWP_KEEP rather than leaving
 * the un-protect to the engine, which would do it after the lock is gone.
 *
 * The snapshot's interposer (tracker.h) needs one more step: "install it,
 * then collect with reset" must leave no page writable whose fault skipped
 * it. The handler holds interposer_lock from looking the interposer up
 * until its page is marked and un-protected, and installing takes that
 * lock: a fault that looked before the install has marked its page before
 * the install returns, so the reset after it re-protects the page.
 *
 * SYNC also asks for the kernel's remove, unmap and remap events.
 * MADV_DONTNEED drops an anonymous page together with its protection, so
 * its next writes would go unseen: the remove event marks the pages written
 * and "discarded". The event arrives before the kernel discards the pages,
 * so a collect in between would re-protect them too early; a discarded page
 * is therefore reported and re-protected by every collect until its next
 * write fault proves it protected again. Unmap and remap events mark a
 * range lost (collect: -ENOENT), which catches a mapping replaced in place.
 * While such an event is unread, write-protect calls fail with EAGAIN. A
 * collect then drops fault_lock and retries; the fault handler, running in
 * the engine thread that would read the event, reads pending events itself.
 *
 * Per collect call: a load of the fork generation, collect_lock, and per
 * tracked range an msync(2) probe (PAGEMAP_SCAN walks over an unmapped hole
 * without a word, and SYNC's unmap event lands a moment after munmap
 * returns) plus the scan itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "backend.h"
#include "kernel_abi.h"
#include "opts.h"
#include "tracker.h"

/* Output vector of one PAGEMAP_SCAN call, on the stack (6 KiB). */
#define SCAN_VEC 256

struct range {
	uintptr_t start, end;
	_Atomic uint64_t *bits;       /* SYNC/EMULATED: one bit per granule, 1 = written */
	_Atomic uint64_t *discarded;  /* with remove events: MADV_DONTNEED seen, not
					 written since */
	bool lost;                    /* SYNC: unmapped or moved (an event said so) */
};

/* Faults read by the handler itself while waiting out EAGAIN; each writer
 * thread has at most one pending, so this bounds threads, not pages. */
#define STASH_MAX 1024

struct uffdwp_tracker {
	enum uffdwp_track_method method;
	unsigned flags;
	size_t page;
	size_t granule;          /* the unit of a SYNC/EMULATED bit */
	unsigned generation;     /* fork_generation in the process that owns it */
	struct uffdwp *ctx;
	struct uffdwp_engine *eng;  /* SYNC, EMULATED */
	int pagemap_fd;             /* ASYNC */

	/* Serialises collects, resets, add and remove with each other; the
	 * ranges array only changes under both locks. */
	pthread_mutex_t collect_lock;
	/* A fault's mark-and-unprotect against a collect's protect-and-clear
	 * (see the top of the file). */
	pthread_mutex_t fault_lock;
	struct range *ranges;    /* sorted by start, disjoint */
	size_t nranges;
	uintptr_t stash[STASH_MAX];  /* engine thread only */
	size_t nstash;
	/* EMULATED: blocks un-protected and not re-protected since, each
	 * about two mappings of the process's (fault_lock). */
	size_t unprotected_blocks;

	/* Held by the fault handler from reading the interposer until its
	 * page is marked and un-protected (see the top); taken before
	 * fault_lock. */
	pthread_mutex_t interposer_lock;
	void (*interposer)(void *arg, uintptr_t page);
	void (*interposer_change)(void *arg, uintptr_t start, uintptr_t end);
	void *interposer_arg;

	/* Lineage for incremental snapshots (collect_lock): resets counts
	 * every reset and every change of the ranges; parent_id is the
	 * snapshot that saved every page as of reset number parent_at. */
	uint64_t resets;
	uint64_t parent_id, parent_at;
};

/* --- fork detection --- */

/*
 * Bumped in the child of every fork(2), so a tracker whose generation is
 * not the current one was inherited: its descriptors are the parent's (a
 * scan through the inherited pagemap fd would read and reset the parent's
 * pages) and its engine thread was not copied. Cheaper per call than
 * comparing getpid().
 */
static _Atomic unsigned fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static bool atfork_registered;

static void forked_child(void)
{
	atomic_fetch_add_explicit(&fork_generation, 1, memory_order_relaxed);
}

static void register_atfork(void)
{
	atfork_registered = pthread_atfork(NULL, NULL, forked_child) == 0;
}

static bool inherited(const struct uffdwp_tracker *t)
{
	return atomic_load_explicit(&fork_generation, memory_order_relaxed) != t->generation;
}

static int check_caller(const struct uffdwp_tracker *t)
{
	return inherited(t) ? -ECHILD : 0;
}

/* --- runs being filled for the caller --- */

struct out {
	struct uffdwp_run *runs;
	size_t max, n;
	uintptr_t floor;  /* the start of the range being scanned */
};

/* Append [start, start+len), extending the last run when it touches it
 * inside the same range (runs never cross a range boundary). False when
 * there is no room. */
static bool emit(struct out *o, uintptr_t start, size_t len)
{
	struct uffdwp_run *last = o->n ? &o->runs[o->n - 1] : NULL;

	if (last && (uintptr_t)last->addr >= o->floor &&
	    (uintptr_t)last->addr + last->len == start) {
		last->len += len;
		return true;
	}
	if (o->n == o->max)
		return false;
	o->runs[o->n].addr = (void *)start;
	o->runs[o->n].len = len;
	o->n++;
	return true;
}

const char *uffdwp_track_method_name(enum uffdwp_track_method method)
{
	switch (method) {
	case UFFDWP_TRACK_AUTO: return "auto";
	case UFFDWP_TRACK_ASYNC: return "async";
	case UFFDWP_TRACK_SYNC: return "sync";
	case UFFDWP_TRACK_EMULATED: return "emulated";
	}
	return "?";
}

enum uffdwp_track_method uffdwp_tracker_method(const struct uffdwp_tracker *t)
{
	return t->method;
}

size_t uffdwp_tracker_granule(const struct uffdwp_tracker *t)
{
	return t->granule;
}

struct uffdwp *uffdwp__tracker_context(struct uffdwp_tracker *t)
{
	return t->method == UFFDWP_TRACK_ASYNC ? NULL : t->ctx;
}

int uffdwp__tracker_set_interposer(struct uffdwp_tracker *t,
				   void (*fn)(void *arg, uintptr_t page),
				   void (*change)(void *arg, uintptr_t start, uintptr_t end),
				   void *arg)
{
	int ret = 0;

	if (t->method == UFFDWP_TRACK_ASYNC)
		return -EOPNOTSUPP;
	pthread_mutex_lock(&t->interposer_lock);
	if (fn && t->interposer) {
		ret = -EBUSY;  /* one snapshot at a time per tracker */
	} else {
		t->interposer = fn;
		t->interposer_change = fn ? change : NULL;
		t->interposer_arg = arg;
	}
	pthread_mutex_unlock(&t->interposer_lock);
	return ret;
}

uint64_t uffdwp__tracker_resets(struct uffdwp_tracker *t)
{
	uint64_t n;

	pthread_mutex_lock(&t->collect_lock);
	n = t->resets;
	pthread_mutex_unlock(&t->collect_lock);
	return n;
}

void uffdwp__tracker_set_parent(struct uffdwp_tracker *t, uint64_t id, uint64_t resets)
{
	pthread_mutex_lock(&t->collect_lock);
	if (t->resets == resets) {
		t->parent_id = id;
		t->parent_at = resets;
	}
	pthread_mutex_unlock(&t->collect_lock);
}

uint64_t uffdwp__tracker_parent(struct uffdwp_tracker *t)
{
	uint64_t id;

	pthread_mutex_lock(&t->collect_lock);
	id = t->parent_at == t->resets ? t->parent_id : 0;
	pthread_mutex_unlock(&t->collect_lock);
	return id;
}

bool uffdwp__tracker_tracks_exactly(struct uffdwp_tracker *t,
				    const struct uffdwp_snapshot_region *regions, size_t n)
{
	size_t k = 0, i = 0;
	bool same = true;

	pthread_mutex_lock(&t->collect_lock);
	/* Both lists are sorted and disjoint; compare them as unions, so a
	 * range split differently on either side still matches. */
	while (same && (k < t->nranges || i < n)) {
		uintptr_t a_start, a_end, b_start, b_end;

		if (k == t->nranges || i == n) {
			same = false;
			break;
		}
		a_start = t->ranges[k].start;
		a_end = t->ranges[k++].end;
		while (k < t->nranges && t->ranges[k].start == a_end)
			a_end = t->ranges[k++].end;
		b_start = (uintptr_t)regions[i].addr;
		b_end = b_start + regions[i++].len;
		while (i < n && (uintptr_t)regions[i].addr == b_end)
			b_end += regions[i++].len;
		same = a_start == b_start && a_end == b_end;
	}
	pthread_mutex_unlock(&t->collect_lock);
	return same;
}

int uffdwp__tracker_flush(struct uffdwp_tracker *t)
{
	int ret = check_caller(t);

	return ret || t->method == UFFDWP_TRACK_ASYNC ? ret : uffdwp_engine_flush(t->eng);
}

/* --- bitmaps (SYNC, EMULATED) --- */

/* Set (or clear) bits [a, b). */
static void change_bits(_Atomic uint64_t *bits, size_t a, size_t b, bool set)
{
	while (a < b) {
		size_t end = (a | 63) + 1 < b ? (a | 63) + 1 : b;
		uint64_t mask = (end - a == 64) ? ~UINT64_C(0)
						: ((UINT64_C(1) << (end - a)) - 1) << (a % 64);

		if (set)
			atomic_fetch_or_explicit(&bits[a / 64], mask, memory_order_relaxed);
		else
			atomic_fetch_and_explicit(&bits[a / 64], ~mask, memory_order_relaxed);
		a = end;
	}
}

/* The first index in [i, n) whose page is written or discarded (set), or
 * neither (!set); n if none. */
static size_t next_run_edge(const struct range *r, size_t i, size_t n, bool set)
{
	while (i < n) {
		uint64_t w = atomic_load_explicit(&r->bits[i / 64], memory_order_relaxed);

		if (r->discarded)
			w |= atomic_load_explicit(&r->discarded[i / 64], memory_order_relaxed);
		if (!set)
			w = ~w;
		w &= ~UINT64_C(0) << (i % 64);
		if (w) {
			i = (i & ~(size_t)63) + (size_t)__builtin_ctzll(w);
			return i < n ? i : n;
		}
		i = (i | 63) + 1;
	}
	return n;
}

/* --- ranges --- */

/* The index of the first range ending after addr. */
static size_t first_range_after(const struct uffdwp_tracker *t, uintptr_t addr)
{
	size_t lo = 0, hi = t->nranges;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (t->ranges[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The range holding addr, or NULL. */
static struct range *find_range(struct uffdwp_tracker *t, uintptr_t addr)
{
	size_t k = first_range_after(t, addr);

	return k < t->nranges && t->ranges[k].start <= addr ? &t->ranges[k] : NULL;
}

/* --- the fault handler (SYNC, EMULATED), in the engine thread --- */

/* Apply a non-fault event to the ranges it overlaps (interposer_lock and
 * fault_lock held). */
static void apply_event_locked(struct uffdwp_tracker *t, const struct uffdwp_event *ev)
{
	uintptr_t lo, hi;

	if (ev->type == UFFDWP_EVENT_REMOVE || ev->type == UFFDWP_EVENT_UNMAP) {
		lo = (uintptr_t)ev->remove.start;
		hi = (uintptr_t)ev->remove.end;
	} else if (ev->type == UFFDWP_EVENT_REMAP) {
		lo = (uintptr_t)ev->remap.from;
		hi = lo + (uintptr_t)ev->remap.len;
		/* The kernel moved the registration with the memory (it tells
		 * us once the move is done): the new place is not tracked, so
		 * it must not stay protected. */
		uffdwp_unregister(t->ctx, (void *)(uintptr_t)ev->remap.to,
				  (size_t)ev->remap.len);
	} else {
		return;
	}
	/* Both locks held (see on_event and absorb_events): the snapshot's
	 * pages there may already be gone. */
	if (t->interposer_change)
		t->interposer_change(t->interposer_arg, lo, hi);
	for (size_t k = first_range_after(t, lo); k < t->nranges && t->ranges[k].start < hi; k++) {
		struct range *r = &t->ranges[k];
		uintptr_t a = lo > r->start ? lo : r->start, b = hi < r->end ? hi : r->end;
		size_t i = (a - r->start) / t->granule;
		size_t j = (b - r->start + t->granule - 1) / t->granule;

		if (ev->type != UFFDWP_EVENT_REMOVE) {
			r->lost = true;
		} else {
			/* Remove events come only with the feature that made
			 * add() allocate discarded. */
			change_bits(r->bits, i, j, true);
			change_bits(r->discarded, i, j, true);
		}
	}
}

/* Read what is pending while an un-protect says EAGAIN (fault_lock held):
 * events are applied, faults kept for later. False when nothing was read. */
static bool absorb_events(struct uffdwp_tracker *t)
{
	struct uffdwp_event ev[16];
	size_t room = STASH_MAX - t->nstash;
	int n = room ? uffdwp_read_events(t->ctx, ev, room < 16 ? room : 16) : 0;

	for (int i = 0; i < n; i++) {
		if (ev[i].type == UFFDWP_EVENT_PAGEFAULT)
			t->stash[t->nstash++] = (uintptr_t)ev[i].pagefault.address;
		else
			apply_event_locked(t, &ev[i]);
	}
	return n > 0;
}

/*
 * EMULATED: mprotect splits a mapping around every page it un-protects,
 * and the process may hold only vm.max_map_count mappings (65,530 by
 * default), which the program needs for itself: past the limit its own
 * mmap() fails. So once COARSE_AFTER blocks are un-protected since their
 * reset, a fault un-protects and reports COARSE_GRANULES granules around
 * it (like UFFDWP_TRACK_HUGE: coarser answers, never a missed write), and
 * when mprotect still says -ENOMEM the block widens until the kernel
 * accepts it: un-protecting a block that reaches a writable neighbour adds
 * no mapping.
 */
#define COARSE_AFTER 8192
#define COARSE_GRANULES 64

/* The block of width granules * t->granule around addr, clipped to the
 * range holding it (fault_lock held). */
static void block_around(struct uffdwp_tracker *t, uintptr_t addr, size_t granules,
			 uintptr_t *lo, uintptr_t *hi)
{
	uintptr_t width = (uintptr_t)granules * t->granule;
	struct range *r = find_range(t, addr);

	*lo = addr & ~(width - 1);
	*hi = *lo + width;
	if (r && *lo < r->start)
		*lo = r->start;
	if (r && *hi > r->end)
		*hi = r->end;
}

/* Un-protect [lo, hi) and mark what of it is tracked (fault_lock held).
 * The ranges may have changed since the block was chosen: it is clipped
 * again to the range that holds lo now. */
static int mark_and_unprotect_block(struct uffdwp_tracker *t, uintptr_t lo, uintptr_t hi)
{
	struct range *r = find_range(t, lo);
	size_t i, j;
	int ret;

	if (r && hi > r->end)
		hi = r->end;
	i = r ? (lo - r->start) / t->granule : 0;
	j = r ? (hi - r->start) / t->granule : 0;

	/* Not tracked (a fault left over from a removed range, or memory
	 * unmapped under us): un-protect all the same, so nobody stays
	 * asleep on a page we will never mark; the writer retries and sees
	 * what is there now. */
	if (r)
		change_bits(r->bits, i, j, true);
	while ((ret = uffdwp_writeprotect(t->ctx, (void *)lo, hi - lo, 0)) == -EAGAIN)
		if (!absorb_events(t))
			sched_yield();  /* read; the changing thread must run */
	if (ret == 0 && r) {
		t->unprotected_blocks++;
		/* Protected until this fault: a discard is behind us. */
		if (r->discarded)
			change_bits(r->discarded, i, j, false);
	}
	return ret;
}

static void mark_and_unprotect(struct uffdwp_tracker *t, uintptr_t addr)
{
	uintptr_t block = addr & ~(uintptr_t)(t->granule - 1), lo = block, hi = block + t->granule;
	size_t granules = 1;
	int ret;

	pthread_mutex_lock(&t->interposer_lock);
	pthread_mutex_lock(&t->fault_lock);
	if (find_range(t, block) && t->method == UFFDWP_TRACK_EMULATED &&
	    t->unprotected_blocks >= COARSE_AFTER)
		granules = COARSE_GRANULES;
	for (;;) {
		struct range *r;

		block_around(t, block, granules, &lo, &hi);
		/* The interposer sees every page before it becomes writable
		 * (without fault_lock: it may wait for the snapshot's saver). */
		pthread_mutex_unlock(&t->fault_lock);
		for (uintptr_t g = lo; t->interposer && g < hi; g += t->granule)
			t->interposer(t->interposer_arg, g);
		pthread_mutex_lock(&t->fault_lock);
		ret = mark_and_unprotect_block(t, lo, hi);
		r = find_range(t, block);
		if (ret != -ENOMEM || !r || (lo <= r->start && hi >= r->end))
			break;
		granules *= COARSE_GRANULES;
	}
	if (ret < 0)
		uffdwp_wake(t->ctx, (void *)lo, hi - lo);
	pthread_mutex_unlock(&t->fault_lock);
	pthread_mutex_unlock(&t->interposer_lock);
}

static int on_event(void *arg, const struct uffdwp_event *ev)
{
	struct uffdwp_tracker *t = arg;

	if (ev->type != UFFDWP_EVENT_PAGEFAULT) {
		if (ev->type == UFFDWP_EVENT_FORK)
			close(ev->fork.fd);  /* not asked for; never tracked */
		pthread_mutex_lock(&t->interposer_lock);
		pthread_mutex_lock(&t->fault_lock);
		apply_event_locked(t, ev);
		pthread_mutex_unlock(&t->fault_lock);
		pthread_mutex_unlock(&t->interposer_lock);
		return UFFDWP_RESOLVE;
	}
	mark_and_unprotect(t, (uintptr_t)ev->pagefault.address);
	while (t->nstash)
		mark_and_unprotect(t, t->stash[--t->nstash]);
	return UFFDWP_KEEP;
}

/* --- scanning one tracked range --- */

/* ASYNC: PAGEMAP_SCAN [from, to), resuming from walk_end while the output
 * vector fills. Sets *next to where to resume (to when done). The vector is
 * never longer than the room left, so every region the kernel reports (and,
 * with reset, re-protects) reaches the caller. */
static int scan_async(struct uffdwp_tracker *t, uintptr_t from, uintptr_t to, struct out *o,
		      bool reset, uintptr_t *next)
{
	struct page_region vec[SCAN_VEC];

	while (from < to && o->n < o->max) {
		size_t room = o->max - o->n;
		struct pm_scan_arg arg = {
			.size = sizeof(arg),
			.flags = PM_SCAN_CHECK_WPASYNC | (reset ? PM_SCAN_WP_MATCHING : 0),
			.start = from,
			.end = to,
			.vec = (uintptr_t)vec,
			.vec_len = room < SCAN_VEC ? room : SCAN_VEC,
			.category_mask = PAGE_IS_WRITTEN,
			.return_mask = PAGE_IS_WRITTEN,
		};
		int n;

		do
			n = ioctl(t->pagemap_fd, PAGEMAP_SCAN, &arg);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			/* EPERM: a mapping in the range is not ours (replaced). */
			return errno == EPERM ? -ENOENT : -errno;
		for (int i = 0; i < n; i++)
			emit(o, vec[i].start, vec[i].end - vec[i].start);
		if (arg.walk_end <= from)
			return -EIO;  /* no progress: the kernel broke its contract */
		from = arg.walk_end;
	}
	*next = from;
	return 0;
}

/* SYNC/EMULATED: the runs of set bits in [from, to) (granule-aligned
 * within r). With reset each run is re-protected, then its bits cleared,
 * under fault_lock. Sets *next as scan_async() does. */
static int scan_bits(struct uffdwp_tracker *t, struct range *r, uintptr_t from, uintptr_t to,
		     struct out *o, bool reset, uintptr_t *next)
{
	size_t g = t->granule;
	size_t i = (from - r->start) / g, n = (to - r->start + g - 1) / g;
	int ret = 0;

	pthread_mutex_lock(&t->fault_lock);
	*next = to;
	while (!r->lost && (i = next_run_edge(r, i, n, true)) < n) {
		size_t j = next_run_edge(r, i, n, false);
		uintptr_t a = r->start + i * g;

		if (o->n == o->max) {
			*next = a;
			break;
		}
		if (reset) {
			ret = uffdwp_writeprotect(t->ctx, (void *)a, (j - i) * g,
						  UFFDWP_WRITEPROTECT_MODE_WP);
			if (ret == -EAGAIN) {
				/* An event is unread: let the engine thread,
				 * which may be waiting for fault_lock, read it. */
				pthread_mutex_unlock(&t->fault_lock);
				sched_yield();
				pthread_mutex_lock(&t->fault_lock);
				ret = 0;
				continue;
			}
			if (ret < 0)
				break;
			if (t->unprotected_blocks)
				t->unprotected_blocks--;
			/* Discarded pages stay reported (see the top). */
			change_bits(r->bits, i, j, false);
		}
		emit(o, a, (j - i) * g);
		i = j;
	}
	if (r->lost)
		ret = -ENOENT;
	pthread_mutex_unlock(&t->fault_lock);
	return ret;
}

/*
 * Collect from *pos up to limit into o (collect_lock held). Returns 1 when
 * o filled up before the end (resume from *pos), 0 when the pass reached
 * limit, or a negative errno.
 */
static int collect_locked(struct uffdwp_tracker *t, uintptr_t *pos, uintptr_t limit,
			  struct out *o, bool reset)
{
	for (size_t k = first_range_after(t, *pos); k < t->nranges; k++) {
		struct range *r = &t->ranges[k];
		uintptr_t from = *pos > r->start ? *pos : r->start;
		uintptr_t to = r->end < limit ? r->end : limit;
		uintptr_t next;
		int ret;

		if (from >= limit)
			break;
		/* msync(2) fails with ENOMEM when part of the range is not
		 * mapped: a walk of the mappings only, the one way to notice
		 * munmap and mremap here (PAGEMAP_SCAN skips holes silently;
		 * SYNC's unmap event may not be applied yet). */
		if (msync((void *)from, to - from, MS_ASYNC) < 0)
			return -ENOENT;
		o->floor = r->start;
		ret = t->method == UFFDWP_TRACK_ASYNC ? scan_async(t, from, to, o, reset, &next)
						      : scan_bits(t, r, from, to, o, reset, &next);
		if (ret < 0)
			return ret;
		*pos = next;
		if (next < to)
			return 1;
	}
	*pos = limit;
	return 0;
}

int uffdwp_tracker_collect(struct uffdwp_tracker *t, uintptr_t *cursor,
			   struct uffdwp_run *runs, size_t max, unsigned flags)
{
	struct out o = { .runs = runs, .max = max < INT32_MAX ? max : INT32_MAX };
	int ret;

	if (!t || !cursor || !runs || max == 0 || (flags & ~UFFDWP_COLLECT_RESET))
		return -EINVAL;
	ret = check_caller(t);
	if (ret)
		return ret;
	pthread_mutex_lock(&t->collect_lock);
	ret = collect_locked(t, cursor, UINTPTR_MAX, &o, flags & UFFDWP_COLLECT_RESET);
	if (flags & UFFDWP_COLLECT_RESET)
		t->resets++;
	pthread_mutex_unlock(&t->collect_lock);
	return ret < 0 ? ret : (int)o.n;
}

/* Check a caller's window [addr, addr+len). */
static int check_window(const struct uffdwp_tracker *t, const void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr;

	if (!t || ((a | len) & (t->page - 1)) || len == 0 || a + len < a)
		return -EINVAL;
	return check_caller(t);
}

/*
 * A whole pass over [base, limit): the number of written pages in it, with
 * bitmap (non-NULL) their bits set relative to base, or a negative errno.
 */
static long collect_window(struct uffdwp_tracker *t, uintptr_t base, uintptr_t limit,
			   uint64_t *bitmap, bool reset)
{
	struct uffdwp_run runs[64];
	uintptr_t pos = base;
	long count = 0;
	int more;

	pthread_mutex_lock(&t->collect_lock);
	do {
		struct out o = { .runs = runs, .max = 64 };

		more = collect_locked(t, &pos, limit, &o, reset);
		for (size_t k = 0; more >= 0 && k < o.n; k++) {
			/* A huge granule may stick out of the window. */
			uintptr_t a = (uintptr_t)runs[k].addr, b = a + runs[k].len;

			a = a < base ? base : a;
			b = b > limit ? limit : b;
			for (size_t i = (a - base) / t->page; bitmap && i < (b - base) / t->page; i++)
				bitmap[i / 64] |= UINT64_C(1) << (i % 64);
			count += (long)((b - a) / t->page);
		}
	} while (more == 1);
	if (reset)
		t->resets++;
	pthread_mutex_unlock(&t->collect_lock);
	return more < 0 ? more : count;
}

long uffdwp_tracker_bitmap(struct uffdwp_tracker *t, void *addr, size_t len,
			   uint64_t *bitmap, unsigned flags)
{
	int ret;

	if (!bitmap || (flags & ~UFFDWP_COLLECT_RESET))
		return -EINVAL;
	ret = check_window(t, addr, len);
	if (ret)
		return ret;
	memset(bitmap, 0, (len / t->page + 63) / 64 * sizeof(*bitmap));
	return collect_window(t, (uintptr_t)addr, (uintptr_t)addr + len, bitmap,
			      flags & UFFDWP_COLLECT_RESET);
}

int uffdwp_tracker_reset(struct uffdwp_tracker *t, void *addr, size_t len)
{
	long ret;

	if (addr)
		ret = check_window(t, addr, len);
	else
		ret = !t || len ? -EINVAL : check_caller(t);
	if (ret)
		return (int)ret;
	ret = collect_window(t, (uintptr_t)addr, addr ? (uintptr_t)addr + len : UINTPTR_MAX,
			     NULL, true);
	return ret < 0 ? (int)ret : 0;
}

/* --- adding and removing ranges --- */

int uffdwp_tracker_add(struct uffdwp_tracker *t, void *addr, size_t len)
{
	uintptr_t start = (uintptr_t)addr, end = start + len;
	struct range r = { .start = start, .end = end };
	struct range *grown;
	size_t k;
	int ret = check_window(t, addr, len);

	if (ret)
		return ret;
	if ((start | len) & (t->granule - 1))
		return -EINVAL;
	pthread_mutex_lock(&t->collect_lock);
	k = first_range_after(t, start);
	if (k < t->nranges && t->ranges[k].start < end) {
		ret = -EEXIST;
		goto out;
	}
	/* Under fault_lock too: the engine thread reads the array. */
	pthread_mutex_lock(&t->fault_lock);
	grown = uffdwp__private_realloc(t->ranges, (t->nranges + 1) * sizeof(*grown));
	if (grown)
		t->ranges = grown;
	pthread_mutex_unlock(&t->fault_lock);
	if (!grown) {
		ret = -ENOMEM;
		goto out;
	}
	if (t->method != UFFDWP_TRACK_ASYNC) {
		size_t words = (len / t->granule + 63) / 64;
		bool removes = uffdwp_features(t->ctx) & UFFDWP_FEATURE_EVENT_REMOVE;

		r.bits = uffdwp__private_calloc(words, sizeof(*r.bits));
		r.discarded = removes ? uffdwp__private_calloc(words, sizeof(*r.discarded)) : NULL;
		if (!r.bits || (removes && !r.discarded)) {
			ret = -ENOMEM;
			goto out_free;
		}
	}
	/* Exact tracking: a huge page would be protected and reported whole.
	 * Failure is harmless (no THP in this kernel, or nothing mapped, which
	 * registering reports). */
	if (!(t->flags & UFFDWP_TRACK_HUGE))
		madvise(addr, len, MADV_NOHUGEPAGE);
	ret = uffdwp_register(t->ctx, addr, len, UFFDWP_REGISTER_MODE_WP);
	if (ret < 0)
		goto out_free;
	/* Before WP_UNPOPULATED (6.4) protecting skips never-touched pages;
	 * reading maps them to the zero page, which can be protected. */
	if (t->method != UFFDWP_TRACK_EMULATED &&
	    !(uffdwp_features(t->ctx) & UFFDWP_FEATURE_WP_UNPOPULATED) &&
	    madvise(addr, len, MADV_POPULATE_READ) < 0) {
		ret = -errno;
		goto out_unregister;
	}
	/* In the table before it is protected, so its first fault finds it. */
	pthread_mutex_lock(&t->fault_lock);
	memmove(&t->ranges[k + 1], &t->ranges[k], (t->nranges - k) * sizeof(r));
	t->ranges[k] = r;
	t->nranges++;
	ret = uffdwp_writeprotect(t->ctx, addr, len, UFFDWP_WRITEPROTECT_MODE_WP);
	if (ret < 0) {
		t->nranges--;
		memmove(&t->ranges[k], &t->ranges[k + 1], (t->nranges - k) * sizeof(r));
	}
	pthread_mutex_unlock(&t->fault_lock);
	if (ret == 0) {
		t->resets++;  /* a new range has no parent's pages */
		goto out;
	}
out_unregister:
	uffdwp_unregister(t->ctx, addr, len);
out_free:
	uffdwp__private_free(r.bits);
	uffdwp__private_free(r.discarded);
out:
	pthread_mutex_unlock(&t->collect_lock);
	return ret;
}

int uffdwp_tracker_remove(struct uffdwp_tracker *t, void *addr, size_t len)
{
	uintptr_t start = (uintptr_t)addr;
	struct range *r;
	int ret = check_window(t, addr, len);

	if (ret)
		return ret;
	pthread_mutex_lock(&t->collect_lock);
	r = find_range(t, start);
	if (!r || r->start != start || r->end != start + len) {
		pthread_mutex_unlock(&t->collect_lock);
		return -ENOENT;
	}
	/* Un-protects and wakes blocked writers; it fails only when the
	 * memory is gone already, which is what remove is for too. */
	uffdwp_unregister(t->ctx, addr, len);
	pthread_mutex_lock(&t->fault_lock);
	uffdwp__private_free(r->bits);
	uffdwp__private_free(r->discarded);
	t->nranges--;
	memmove(r, r + 1, (size_t)(&t->ranges[t->nranges] - r) * sizeof(*r));
	pthread_mutex_unlock(&t->fault_lock);
	t->resets++;
	pthread_mutex_unlock(&t->collect_lock);
	return 0;
}

/* --- creating and destroying --- */

/* The PMD huge-page size, or the page when THP is absent. */
static size_t huge_size(size_t page)
{
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "re");
	unsigned long size = 0;

	if (f) {
		if (fscanf(f, "%lu", &size) != 1)
			size = 0;
		fclose(f);
	}
	return size > page && !(size & (size - 1)) ? size : page;
}

static int open_ctx(struct uffdwp_tracker *t, enum uffdwp_backend backend, uint64_t features)
{
	struct uffdwp_opts o = { .sz = sizeof(o), .backend = backend, .features = features };

	return uffdwp_open(&t->ctx, &o);
}

static int start_async(struct uffdwp_tracker *t)
{
	const uint64_t need = UFFDWP_FEATURE_WP_ASYNC | UFFDWP_FEATURE_WP_UNPOPULATED;
	struct pm_scan_arg probe = { .size = sizeof(probe) };
	int ret;

	/* shmem too where the kernel can; anonymous memory without. */
	ret = open_ctx(t, UFFDWP_BACKEND_KERNEL, need | UFFDWP_FEATURE_WP_HUGETLBFS_SHMEM);
	if (ret == -EOPNOTSUPP)
		ret = open_ctx(t, UFFDWP_BACKEND_KERNEL, need);
	if (ret < 0)
		return ret;
	t->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (t->pagemap_fd < 0)
		return -errno;
	/* An empty scan: ENOTTY before 6.7. */
	if (ioctl(t->pagemap_fd, PAGEMAP_SCAN, &probe) < 0)
		return errno == ENOTTY || errno == EINVAL ? -EOPNOTSUPP : -errno;
	return 0;
}

static int start_engine(struct uffdwp_tracker *t, enum uffdwp_backend backend)
{
	/* A handler thread: the fault handler blocks on fault_lock and may
	 * block in the interposer, neither allowed in a signal handler. */
	struct uffdwp_engine_opts eo = {
		.sz = sizeof(eo), .mode = UFFDWP_ENGINE_THREAD, .fn = on_event, .arg = t,
	};
	const uint64_t events = UFFDWP_FEATURE_EVENT_REMOVE | UFFDWP_FEATURE_EVENT_UNMAP |
				UFFDWP_FEATURE_EVENT_REMAP;
	int ret = -EOPNOTSUPP;

	/* The defaults (WP_UNPOPULATED where there is one), with events on the
	 * kernel; the emulation has none. */
	if (backend == UFFDWP_BACKEND_KERNEL) {
		struct uffdwp_probe p = { .sz = sizeof(p) };

		uffdwp_probe(&p);
		ret = open_ctx(t, backend, (UFFDWP_FEATURES_DEFAULT & p.kernel_features) |
					   (events & p.kernel_features));
	}
	if (ret == -EOPNOTSUPP)
		ret = open_ctx(t, backend, 0);

	return ret < 0 ? ret : uffdwp_engine_start(&t->eng, t->ctx, &eo);
}

static int start(struct uffdwp_tracker *t, enum uffdwp_track_method method)
{
	int ret;

	t->method = method;
	t->granule = t->page;
	if (method == UFFDWP_TRACK_ASYNC)
		return start_async(t);
	if (t->flags & UFFDWP_TRACK_HUGE)
		t->granule = huge_size(t->page);
	ret = start_engine(t, method == UFFDWP_TRACK_SYNC ? UFFDWP_BACKEND_KERNEL
							  : UFFDWP_BACKEND_EMULATED);
	if (ret < 0 && method == UFFDWP_TRACK_SYNC && ret != -EINVAL && ret != -ENOMEM &&
	    ret != -EMFILE && ret != -ENFILE && ret != -EAGAIN)
		ret = -EOPNOTSUPP;  /* no usable kernel userfaultfd */
	return ret;
}

/* Undo start(), whatever stage it reached. */
static void stop(struct uffdwp_tracker *t)
{
	uffdwp_engine_stop(t->eng);
	uffdwp_close(t->ctx);
	if (t->pagemap_fd >= 0)
		close(t->pagemap_fd);
	t->eng = NULL;
	t->ctx = NULL;
	t->pagemap_fd = -1;
}

int uffdwp_tracker_create(struct uffdwp_tracker **out, const struct uffdwp_tracker_opts *opts)
{
	struct uffdwp_tracker *t;
	enum uffdwp_track_method method = UFFDWP_TRACK_AUTO;
	unsigned flags = 0;
	int ret;

	if (!out)
		return -EINVAL;
	if (opts) {
		ret = uffdwp__opts_check(opts, opts->sz,
					 UFFDWP__OPTS_END(struct uffdwp_tracker_opts, flags),
					 sizeof(*opts));
		if (ret)
			return ret;
		method = opts->method;
		flags = opts->flags;
	}
	if ((unsigned)method > UFFDWP_TRACK_EMULATED || (flags & ~UFFDWP_TRACK_HUGE))
		return -EINVAL;
	pthread_once(&atfork_once, register_atfork);
	if (!atfork_registered)
		return -ENOMEM;  /* pthread_atfork()'s only failure */
	t = uffdwp__private_alloc(sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->flags = flags;
	t->page = uffdwp__page_size();
	t->generation = atomic_load_explicit(&fork_generation, memory_order_relaxed);
	t->pagemap_fd = -1;
	pthread_mutex_init(&t->collect_lock, NULL);
	pthread_mutex_init(&t->fault_lock, NULL);
	pthread_mutex_init(&t->interposer_lock, NULL);
	if (method != UFFDWP_TRACK_AUTO) {
		ret = start(t, method);
	} else {
		/* The cheapest that works here; a failure that would hit every
		 * method (bad memory, no descriptors) is returned as is. */
		ret = start(t, UFFDWP_TRACK_ASYNC);
		for (method = UFFDWP_TRACK_SYNC; ret < 0 && ret != -ENOMEM && ret != -EMFILE &&
						 method <= UFFDWP_TRACK_EMULATED; method++) {
			stop(t);
			ret = start(t, method);
		}
	}
	if (ret < 0) {
		uffdwp_tracker_destroy(t);
		return ret;
	}
	*out = t;
	return 0;
}

void uffdwp_tracker_destroy(struct uffdwp_tracker *t)
{
	if (!t)
		return;
	if (!inherited(t)) {
		stop(t);  /* closing the context un-protects and unregisters all */
	} else {
		/* A fork child's copy: the engine thread was not copied, so
		 * the engine and context cannot be stopped; release the
		 * descriptors and let the rest go with the process. */
		if (t->ctx)
			close(uffdwp_fd(t->ctx));
		if (t->pagemap_fd >= 0)
			close(t->pagemap_fd);
	}
	for (size_t k = 0; k < t->nranges; k++) {
		uffdwp__private_free(t->ranges[k].bits);
		uffdwp__private_free(t->ranges[k].discarded);
	}
	uffdwp__private_free(t->ranges);
	pthread_mutex_destroy(&t->collect_lock);
	pthread_mutex_destroy(&t->fault_lock);
	pthread_mutex_destroy(&t->interposer_lock);
	uffdwp__private_free(t);
}
