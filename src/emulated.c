/* SPDX-License-Identifier: MIT */
/*
 * The emulated backend: userfaultfd write-protect semantics in user space,
 * with mprotect(2) and a process-wide SIGSEGV handler.
 *
 * How it fits together:
 *  - Every registration is a `struct emu_range` (one per mapping of uniform
 *    protection) holding one bit per page: 1 = protected by us. A bit is set
 *    before its page is made read-only and cleared only after the page is
 *    writable again, so a page that is read-only because of us always has
 *    its bit set.
 *  - The ranges of all contexts form one sorted, immutable table, published
 *    through an atomic pointer. The signal handler reads it lock-free inside
 *    an epoch-counted read section; writers (register, unregister, close)
 *    build a new table, publish it, and free the old one only after every
 *    read section that could see it has ended (an RCU-like grace period).
 *  - A write to a protected page raises SIGSEGV; the fault-signal layer
 *    (signals.c) asks emulated_claim(), which finds the range in a read
 *    section, pins the owning context and leaves the read section; then,
 *    outside it, runs the in-thread hook if there is one, or queues a
 *    waiter record on the context, makes its eventfd readable and sleeps
 *    on a futex until un-protect or uffdwp_wake() wakes it; it then returns
 *    and the write is retried, just as the kernel retries the faulting
 *    instruction. The queued waiters *are* the pending events, as in the
 *    kernel: an event is reported once, and a waiter woken before it was
 *    read takes its event with it.
 *  - Waiter records come from a pool in private memory, never from the
 *    writer's stack: a signal handler that interrupts the wait may leave it
 *    with siglongjmp(), and the record must stay valid until a wake
 *    recycles it.
 *  - All of the backend's state is in private memory (private.c): a
 *    program may protect its whole heap, and the fault path must not write
 *    there.
 *  - Every change (register, unregister, protect, un-protect, close) is
 *    serialised by one lock. It is a futex lock rather than a pthread mutex
 *    because the engine's in-thread hook un-protects from the signal handler.
 *    mprotect(2) takes the process's mmap lock anyway, so one lock costs no
 *    parallelism.
 *
 * Differences from the kernel that cannot be removed are listed in
 * man/uffdwp_emulated.7.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "backend.h"
#include "maps.h"

#define BITS_PER_WORD (8 * sizeof(unsigned long))

typedef uffdwp__lock_t emu_lock;
#define lock uffdwp__lock
#define unlock uffdwp__unlock

/* ---------------------------------------------------------------------------
 * State
 * ------------------------------------------------------------------------- */

struct emu_ctx;

/* One registration: [start, end) of one context, uniform protection. */
struct emu_range {
	uintptr_t start, end;
	size_t page;  /* the mapping's page size (huge for hugetlbfs): one bit each */
	int prot;  /* the mapping's protection when registered; un-protect restores it */
	/* NULL only for a range that close() could not unpublish (out of
	 * memory): un-protected and no longer anyone's. */
	struct emu_ctx *_Atomic owner;
	struct emu_range *link;  /* on a list of ranges being made or retired */
	_Atomic unsigned long bits[];  /* one bit per page: 1 = protected by us */
};

/* Immutable once published: the ranges of every context, sorted by start. */
struct emu_table {
	size_t n;
	struct emu_range *ranges[];
};

/* A thread blocked on a fault. From the pool (below), linked on its
 * context's queue while the fault is pending; whoever unlinks it wakes it
 * and gives it back to the pool. */
struct emu_waiter {
	struct emu_waiter *prev, *next;
	uintptr_t page;
	uint32_t tid;
	bool reported;          /* its event was read */
	_Atomic uint32_t seq;   /* bumped by the wake; the sleeper waits for that */
	uint32_t index;         /* its own pool index + 1 */
	_Atomic uint32_t free_next;  /* on the free list: the next's index + 1, or 0 */
};

/* The fault hook and its argument, swapped as one pointer. */
struct emu_hook {
	uffdwp__fault_hook fn;
	void *arg;
};

struct emu_ctx {
	struct uffdwp *ctx;
	struct emu_ctx *next;              /* all contexts, under emu.lock */
	_Atomic(struct emu_hook *) hook;
	/* Fault handlers using this context outside a read section (queueing,
	 * running the hook): close and a hook change wait for none. */
	_Atomic uint32_t users;
	_Atomic bool closing;              /* no waiter may queue any more */
	emu_lock waiters_lock;             /* guards everything below */
	struct emu_waiter *head, *tail;    /* in fault order */
	size_t unreported;                 /* waiters whose event is unread */
};

static struct {
	emu_lock lock;        /* serialises every change to ranges, bits, table, contexts */
	emu_lock grace_lock;  /* one grace period at a time */
	_Atomic(struct emu_table *) table;
	_Atomic unsigned long epoch;
	_Atomic unsigned long readers[2];  /* read sections in progress, per epoch parity */
	struct emu_ctx *contexts;
} emu;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static size_t page_size(void)
{
	return uffdwp__page_size();
}

static size_t page_index(const struct emu_range *r, uintptr_t addr)
{
	return (addr - r->start) / r->page;
}

static bool page_protected(struct emu_range *r, uintptr_t page)
{
	size_t i = page_index(r, page);

	return atomic_load(&r->bits[i / BITS_PER_WORD]) & (1UL << (i % BITS_PER_WORD));
}

static void set_bits(struct emu_range *r, uintptr_t a, uintptr_t b, bool value)
{
	for (size_t i = page_index(r, a), n = page_index(r, b); i < n; i++) {
		unsigned long bit = 1UL << (i % BITS_PER_WORD);

		if (value)
			atomic_fetch_or(&r->bits[i / BITS_PER_WORD], bit);
		else
			atomic_fetch_and(&r->bits[i / BITS_PER_WORD], ~bit);
	}
}

/* ---------------------------------------------------------------------------
 * Read sections and grace periods (the handler's lock-free lookups)
 * ------------------------------------------------------------------------- */

static unsigned long reader_enter(void)
{
	for (;;) {
		unsigned long e = atomic_load(&emu.epoch);

		atomic_fetch_add(&emu.readers[e & 1], 1);
		if (atomic_load(&emu.epoch) == e) {
			uffdwp__no_sleep_enter();
			return e;
		}
		atomic_fetch_sub(&emu.readers[e & 1], 1);
	}
}

static void reader_exit(unsigned long e)
{
	uffdwp__no_sleep_exit();
	atomic_fetch_sub(&emu.readers[e & 1], 1);
}

/* Wait until no read section that began before the call is in progress.
 * Read sections never sleep (uffdwp__futex_wait asserts it: the hook and
 * the waits run outside them), so this is short, whatever the program's
 * callbacks do. */
static void wait_for_readers(void)
{
	unsigned long e;

	lock(&emu.grace_lock);
	e = atomic_fetch_add(&emu.epoch, 1);
	while (atomic_load(&emu.readers[e & 1]) != 0)
		sched_yield();
	unlock(&emu.grace_lock);
}

/* Index of the first range in t whose end is above addr (t->n if none). */
static size_t first_range_ending_after(const struct emu_table *t, uintptr_t addr)
{
	size_t lo = 0, hi = t ? t->n : 0;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (t->ranges[mid]->end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct emu_range *find_range(const struct emu_table *t, uintptr_t addr)
{
	size_t i = first_range_ending_after(t, addr);

	return t && i < t->n && t->ranges[i]->start <= addr ? t->ranges[i] : NULL;
}

/* ---------------------------------------------------------------------------
 * The kernel's view of the mappings (maps.c)
 * ------------------------------------------------------------------------- */

static int walk_mappings(uintptr_t lo, uintptr_t hi, uffdwp__mapping_fn fn, void *arg)
{
	return uffdwp__walk_mappings(lo, hi, 0, fn, arg);
}

/* Whether [lo, hi) is mapped without holes (msync reports holes as ENOMEM). */
static bool fully_mapped(uintptr_t lo, uintptr_t hi)
{
	return msync((void *)lo, hi - lo, MS_ASYNC) == 0;
}

/* ---------------------------------------------------------------------------
 * Protection changes (callers hold emu.lock)
 * ------------------------------------------------------------------------- */

/* Bits made true to the kernel's page protections after a failed mprotect
 * (which may have changed part of its range): a bit stays set only where
 * the page is mapped read-only while its range is writable. A failed call
 * never sets a bit: bits are set before protecting, so a page we protected
 * has one. Holes lose their bits (the memory is gone). */
struct resync {
	struct emu_range *r;
	uintptr_t cursor;
};

static bool resync_mapping(void *arg, const struct uffdwp__mapping *m)
{
	struct resync *rs = arg;
	bool protected_by_us = (rs->r->prot & PROT_WRITE) &&
			       m->prot == (rs->r->prot & ~PROT_WRITE);

	set_bits(rs->r, rs->cursor, m->start, false);
	if (!protected_by_us)
		set_bits(rs->r, m->start, m->end, false);
	rs->cursor = m->end;
	return true;
}

static void resync_bits(struct emu_range *r, uintptr_t a, uintptr_t b)
{
	struct resync rs = { r, a };

	uffdwp__unprotect_begin();
	if (walk_mappings(a, b, resync_mapping, &rs) == 0)
		set_bits(r, rs.cursor, b, false);
	uffdwp__unprotect_end();
}

/* One mprotect over [a, b) of r, with the bits ordered around it. */
static int mprotect_pages(struct emu_range *r, uintptr_t a, uintptr_t b, bool protect)
{
	int ret;

	if (protect) {
		set_bits(r, a, b, true);
		ret = mprotect((void *)a, b - a, r->prot & ~PROT_WRITE);
	} else {
		uffdwp__unprotect_begin();
		ret = mprotect((void *)a, b - a, r->prot);
		if (ret == 0)
			set_bits(r, a, b, false);
		uffdwp__unprotect_end();
	}
	return ret == 0 ? 0 : -errno;
}

/* The first page of r in [from, to) whose bit is `value`, or to. */
static uintptr_t next_page_with_bit(struct emu_range *r, uintptr_t from, uintptr_t to, bool value)
{
	size_t i = page_index(r, from), n = page_index(r, to);

	while (i < n) {
		unsigned long word = atomic_load(&r->bits[i / BITS_PER_WORD]);
		unsigned long look = (value ? word : ~word) >> (i % BITS_PER_WORD);

		if (look) {
			i += (size_t)__builtin_ctzl(look);
			break;
		}
		i += BITS_PER_WORD - i % BITS_PER_WORD;
	}
	return i < n ? r->start + i * r->page : to;
}

/*
 * A protection change over [a, b) of r, mapping by mapping. Only memory
 * that is ours is changed. A mapping is ours when its protection is one we
 * set: the registered one (writable, not protected), or the registered one
 * without PROT_WRITE on the pages whose bit says we protected them. Anything
 * else inside r was put there by the program after unmapping part of the
 * registration (a PROT_NONE guard page; a read-only mapping where we had
 * protected nothing): the kernel forgets a registration on munmap, and so
 * do we, and we never touch it. Adjacent memory that is ours is changed
 * with one mprotect, so a checkerboard is merged back in one call.
 */
struct change {
	struct emu_range *r;
	bool protect;
	bool stop_at_foreign;        /* as UFFDIO_WRITEPROTECT: -ENOENT there */
	bool foreign;                /* met a mapping that is not ours */
	bool any;                    /* some of [a, b) is ours */
	uintptr_t cursor;            /* the end of the last mapping seen */
	uintptr_t run_start, run_end;  /* ours, not yet changed */
	int error;
};

static bool flush_run(struct change *c)
{
	if (c->run_end > c->run_start)
		c->error = mprotect_pages(c->r, c->run_start, c->run_end, c->protect);
	c->run_start = c->run_end = 0;
	return c->error == 0;
}

static bool extend_run_of_ours(struct change *c, uintptr_t a, uintptr_t b)
{
	c->any = true;
	if (c->run_end != a && !flush_run(c))
		return false;
	if (c->run_end == 0)
		c->run_start = a;
	c->run_end = b;
	return true;
}

/* The kernel stops a protection change at the first mapping that is not
 * registered (having changed those before it); close goes on past it. */
static bool found_foreign(struct change *c)
{
	c->foreign = true;
	return flush_run(c) && !c->stop_at_foreign;
}

static bool change_mapping(void *arg, const struct uffdwp__mapping *m)
{
	struct change *c = arg;
	struct emu_range *r = c->r;
	bool writable_range = r->prot & PROT_WRITE;

	set_bits(r, c->cursor, m->start, false);  /* a hole: that memory is gone */
	c->cursor = m->end;
	if (m->prot == r->prot) {
		/* As registered: none of it is protected, whatever its bits say. */
		if (writable_range)
			set_bits(r, m->start, m->end, false);
		return extend_run_of_ours(c, m->start, m->end);
	}
	if (!writable_range || m->prot != (r->prot & ~PROT_WRITE)) {
		set_bits(r, m->start, m->end, false);
		return found_foreign(c);
	}
	/* Read-only: ours where the bit is set, the program's elsewhere. */
	for (uintptr_t x = m->start; x < m->end;) {
		uintptr_t y = next_page_with_bit(r, x, m->end, false);

		if (y > x && !extend_run_of_ours(c, x, y))
			return false;
		if (y < m->end && !found_foreign(c))
			return false;
		x = next_page_with_bit(r, y, m->end, true);
	}
	return true;
}

/*
 * Protect or un-protect what is ours in [a, b) of r (see struct change).
 * Unmapped holes are skipped, as the kernel skips them. Returns 0; 1 when
 * nothing in [a, b) is ours; -ENOENT at a mapping that is not ours when
 * stop_at_foreign (what came before it is changed, as the kernel does);
 * -ENOMEM when the split mappings would
 * exceed vm.max_map_count; another -errno from mprotect or from reading
 * the mappings. On failure the bits are re-read from the kernel, so every
 * page reported protected is read-only and vice versa.
 */
static int change_pages(struct emu_range *r, uintptr_t a, uintptr_t b, bool protect,
			bool stop_at_foreign)
{
	struct change c = { .r = r, .protect = protect, .stop_at_foreign = stop_at_foreign,
			    .cursor = a };
	int ret = walk_mappings(a, b, change_mapping, &c);

	if (ret == 0 && c.error == 0 && !(c.foreign && stop_at_foreign)) {
		flush_run(&c);
		set_bits(r, c.cursor, b, false);
	}
	if (ret == 0)
		ret = c.error;
	if (ret < 0) {
		resync_bits(r, a, b);
		return ret;
	}
	if (c.foreign && stop_at_foreign)
		return -ENOENT;
	return c.any ? 0 : 1;
}

/* Close and the fork child: the whole of r writable again, holes and all.
 * Un-protecting a whole range only merges mappings, so it cannot run into
 * vm.max_map_count; what still fails is left as it is (bits resynced). */
static void unprotect_all(struct emu_range *r)
{
	change_pages(r, r->start, r->end, false, false);
}

/* Whether the ranges of ec cover [start, end) without gaps. */
static bool covered(const struct emu_table *t, struct emu_ctx *ec, uintptr_t start, uintptr_t end)
{
	uintptr_t cursor = start;

	for (size_t i = first_range_ending_after(t, start); t && i < t->n && cursor < end; i++) {
		struct emu_range *r = t->ranges[i];

		if (r->start > cursor || r->owner != ec)
			return false;
		cursor = r->end;
	}
	return cursor >= end;
}

/* For a range with gaps in our registrations: like the kernel, -ENOENT
 * unless every mapped page of [start, end) is ours and one is mapped. */
struct ownership_check {
	const struct emu_table *t;
	struct emu_ctx *ec;
	bool any_mapped, all_ours;
};

static bool check_mapping_ours(void *arg, const struct uffdwp__mapping *m)
{
	struct ownership_check *oc = arg;

	oc->any_mapped = true;
	if (!covered(oc->t, oc->ec, m->start, m->end))
		oc->all_ours = false;
	return oc->all_ours;
}

/* -EINVAL, as the kernel, when [start, end) cuts a huge page of ec's. */
static int check_huge_alignment(const struct emu_table *t, struct emu_ctx *ec,
				uintptr_t start, uintptr_t end)
{
	for (size_t i = first_range_ending_after(t, start); t && i < t->n; i++) {
		struct emu_range *r = t->ranges[i];

		if (r->start >= end)
			break;
		if (r->owner == ec && ((start > r->start ? start : 0) | (end < r->end ? end : 0)) &
				      (r->page - 1))
			return -EINVAL;
	}
	return 0;
}

static int change_protection(struct emu_ctx *ec, uintptr_t start, uintptr_t end, bool protect)
{
	const struct emu_table *t = atomic_load(&emu.table);
	bool any = false;
	int ret = check_huge_alignment(t, ec, start, end);

	if (ret < 0)
		return ret;
	if (!covered(t, ec, start, end)) {
		struct ownership_check oc = { t, ec, false, true };

		ret = walk_mappings(start, end, check_mapping_ours, &oc);
		if (ret < 0)
			return ret;
		if (!oc.any_mapped || !oc.all_ours)
			return -ENOENT;
	}
	for (size_t i = first_range_ending_after(t, start); t && i < t->n; i++) {
		struct emu_range *r = t->ranges[i];
		uintptr_t a = r->start > start ? r->start : start;
		uintptr_t b = r->end < end ? r->end : end;

		if (r->start >= end)
			break;
		if (r->owner != ec)
			continue;
		ret = change_pages(r, a, b, protect, true);
		if (ret == 1)
			continue;  /* a hole: skipped, as the kernel does */
		if (ret < 0)
			return ret;
		any = true;
	}
	return any ? 0 : -ENOENT;
}

/* ---------------------------------------------------------------------------
 * The waiter pool: lock-free, async-signal-safe, never unmapped
 * ------------------------------------------------------------------------- */

#define POOL_CHUNK 256     /* waiters per chunk */
#define POOL_CHUNKS 4096   /* at most this many chunks: a million blocked writers */

static struct {
	struct emu_waiter *_Atomic chunks[POOL_CHUNKS];
	_Atomic uint32_t nchunks;
	/* Top of the free list: (tag << 32) | (index + 1); the tag makes a
	 * compare-and-swap fail after any other pop or push (ABA). */
	_Atomic uint64_t free_top;
} pool;

static struct emu_waiter *pool_at(uint32_t index1)
{
	return &atomic_load(&pool.chunks[(index1 - 1) / POOL_CHUNK])[(index1 - 1) % POOL_CHUNK];
}

static void pool_put(struct emu_waiter *w)
{
	uint64_t top = atomic_load(&pool.free_top);

	do
		atomic_store_explicit(&w->free_next, (uint32_t)top, memory_order_relaxed);
	while (!atomic_compare_exchange_weak(&pool.free_top, &top,
					     ((top >> 32) + 1) << 32 | w->index));
}

/* A waiter record, or NULL when no memory is left. */
static struct emu_waiter *pool_get(void)
{
	uint64_t top = atomic_load(&pool.free_top);
	struct emu_waiter *chunk;
	uint32_t c;

	while ((uint32_t)top) {
		struct emu_waiter *w = pool_at((uint32_t)top);
		uint64_t next = ((top >> 32) + 1) << 32 | atomic_load(&w->free_next);

		if (atomic_compare_exchange_weak(&pool.free_top, &top, next))
			return w;
	}
	c = atomic_fetch_add(&pool.nchunks, 1);
	if (c >= POOL_CHUNKS)
		return NULL;
	chunk = uffdwp__private_map(POOL_CHUNK * sizeof(*chunk));
	if (!chunk)
		return NULL;  /* the slot stays empty: never indexed */
	for (uint32_t i = 0; i < POOL_CHUNK; i++)
		chunk[i].index = c * POOL_CHUNK + i + 1;
	atomic_store(&pool.chunks[c], chunk);
	for (uint32_t i = 1; i < POOL_CHUNK; i++)
		pool_put(&chunk[i]);
	return &chunk[0];
}

/* ---------------------------------------------------------------------------
 * Waiters and events
 * ------------------------------------------------------------------------- */

static void eventfd_set(struct emu_ctx *ec)
{
	uint64_t one = 1;

	(void)!write(ec->ctx->fd, &one, sizeof(one));
}

static void eventfd_clear(struct emu_ctx *ec)
{
	uint64_t count;

	(void)!read(ec->ctx->fd, &count, sizeof(count));
}

static void unlink_waiter(struct emu_ctx *ec, struct emu_waiter *w)
{
	*(w->prev ? &w->prev->next : &ec->head) = w->next;
	*(w->next ? &w->next->prev : &ec->tail) = w->prev;
	if (!w->reported && --ec->unreported == 0)
		eventfd_clear(ec);
}

/* Wake every thread waiting on a page in [start, end). A record whose
 * thread left its wait with siglongjmp() is recycled the same way. */
static void wake_waiters(struct emu_ctx *ec, uintptr_t start, uintptr_t end)
{
	struct emu_waiter *w, *next;

	lock(&ec->waiters_lock);
	for (w = ec->head; w; w = next) {
		next = w->next;
		if (w->page < start || w->page >= end)
			continue;
		unlink_waiter(ec, w);
		atomic_fetch_add(&w->seq, 1);
		uffdwp__futex_wake(&w->seq, 1);
		pool_put(w);
	}
	unlock(&ec->waiters_lock);
}

static struct uffdwp_event fault_event(struct emu_ctx *ec, uintptr_t page, uint32_t tid)
{
	struct uffdwp_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.type = UFFDWP_EVENT_PAGEFAULT;
	ev.pagefault.flags = UFFDWP_PAGEFAULT_FLAG_WRITE | UFFDWP_PAGEFAULT_FLAG_WP;
	ev.pagefault.address = page;
	ev.pagefault.tid = (ec->ctx->features & UFFDWP_FEATURE_THREAD_ID) ? tid : 0;
	return ev;
}

/* ---------------------------------------------------------------------------
 * The SIGSEGV claimant (called by the fault-signal layer, signals.c)
 * ------------------------------------------------------------------------- */

/*
 * Queue w as a pending fault unless an un-protect ended, or is under way,
 * since the fault's handler began: it may have cleared the page's bit after
 * our lookup, and its wake may have passed already. (An unrelated
 * un-protect costs a spurious retry.) Checked under the lock the wake
 * takes, after the un-protect's end. Returns whether w was queued.
 */
static bool enqueue_waiter(struct emu_ctx *ec, struct emu_waiter *w, uint32_t seq)
{
	bool queued = false;

	lock(&ec->waiters_lock);
	if (uffdwp__generation() == seq && !atomic_load(&ec->closing)) {
		w->next = NULL;
		w->prev = ec->tail;
		*(ec->tail ? &ec->tail->next : &ec->head) = w;
		ec->tail = w;
		if (ec->unreported++ == 0)
			eventfd_set(ec);
		queued = true;
	}
	unlock(&ec->waiters_lock);
	return queued;
}

/* Sleep until woken, with the interrupted code's signal mask so the thread
 * still receives signals while it waits (as a kernel waiter does). */
static void wait_until_woken(struct emu_waiter *w, uint32_t seq, const ucontext_t *uc)
{
	sigset_t mask;

	pthread_sigmask(SIG_SETMASK, &uc->uc_sigmask, &mask);
	while (atomic_load(&w->seq) == seq)
		uffdwp__futex_wait(&w->seq, seq);
	pthread_sigmask(SIG_SETMASK, &mask, NULL);
}

/* Resolve in the faulting thread (hook) or queue and block. ec is pinned. */
static enum uffdwp__claim handle_fault(struct emu_ctx *ec, struct emu_hook *hook,
				       uintptr_t page, size_t page_len,
				       const struct uffdwp__fault *f)
{
	uint32_t tid = (uint32_t)gettid();
	struct emu_waiter *w;
	uint32_t seq;

	if (hook) {
		struct uffdwp_event ev = fault_event(ec, page, tid);
		int ret = hook->fn(hook->arg, ec->ctx, &ev, page_len);

		/* Resolved; or failed, and then the write retries rather than
		 * sleep where nothing would wake it; or kept, and the writer
		 * waits for the generation unpinned, so a signal handler may
		 * leave that wait with siglongjmp(). */
		atomic_fetch_sub(&ec->users, 1);
		if (ret < 0)
			sched_yield();
		return ret > 0 ? UFFDWP__WAIT : UFFDWP__RETRY;
	}
	w = pool_get();
	if (!w) {
		atomic_fetch_sub(&ec->users, 1);
		sched_yield();  /* no memory for a record: fault again */
		return UFFDWP__RETRY;
	}
	w->page = page;
	w->tid = tid;
	w->reported = false;
	seq = atomic_load(&w->seq);
	if (!enqueue_waiter(ec, w, f->seq)) {
		pool_put(w);
		atomic_fetch_sub(&ec->users, 1);
		return UFFDWP__RETRY;
	}
	/* From here the record, not ec, is what the wait needs. */
	atomic_fetch_sub(&ec->users, 1);
	wait_until_woken(w, seq, f->uc);
	return UFFDWP__RETRY;
}

static enum uffdwp__claim emulated_claim(const struct uffdwp__fault *f)
{
	unsigned long epoch = reader_enter();
	struct emu_range *r = find_range(atomic_load(&emu.table), f->addr);
	size_t page_len = r ? r->page : page_size();
	uintptr_t page = f->addr & ~(uintptr_t)(page_len - 1);
	struct emu_ctx *ec = r ? atomic_load(&r->owner) : NULL;
	struct emu_hook *hook;

	if (!ec || !(r->prot & PROT_WRITE) || !page_protected(r, page)) {
		reader_exit(epoch);
		return UFFDWP__NOT_OURS;
	}
	/* Pinned before the read section ends: close waits for the pin. */
	atomic_fetch_add(&ec->users, 1);
	hook = atomic_load(&ec->hook);
	reader_exit(epoch);
	return handle_fault(ec, hook, page, page_len, f);
}

/* Called with emu.lock held. */
static int install_handler(void)
{
	return uffdwp__signals_install(SIGSEGV, emulated_claim);
}

/* ---------------------------------------------------------------------------
 * Table changes (callers hold emu.lock; they free what they retire only
 * after unlocking and wait_for_readers())
 * ------------------------------------------------------------------------- */

static struct emu_table *table_alloc(size_t n)
{
	struct emu_table *t = uffdwp__private_alloc(sizeof(*t) + n * sizeof(t->ranges[0]));

	if (t)
		t->n = 0;
	return t;
}

static struct emu_range *range_alloc(uintptr_t start, uintptr_t end, size_t page, int prot,
				     struct emu_ctx *owner)
{
	size_t pages = (end - start) / page;
	size_t words = (pages + BITS_PER_WORD - 1) / BITS_PER_WORD;
	struct emu_range *r = uffdwp__private_alloc(sizeof(*r) + words * sizeof(r->bits[0]));

	if (!r)
		return NULL;
	r->start = start;
	r->end = end;
	r->page = page;
	r->prot = prot;
	r->owner = owner;
	return r;
}

/* A copy of [start, end) of r, with its bits. */
static struct emu_range *range_slice(struct emu_range *r, uintptr_t start, uintptr_t end)
{
	struct emu_range *s = range_alloc(start, end, r->page, r->prot, r->owner);

	if (!s)
		return NULL;
	for (uintptr_t p = start; p < end; p += r->page)
		if (page_protected(r, p))
			set_bits(s, p, p + r->page, true);
	return s;
}

static int compare_ranges(const void *a, const void *b)
{
	const struct emu_range *x = *(struct emu_range *const *)a;
	const struct emu_range *y = *(struct emu_range *const *)b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* Publish t (sorted here) and return the table it replaces. */
static struct emu_table *table_publish(struct emu_table *t)
{
	qsort(t->ranges, t->n, sizeof(t->ranges[0]), compare_ranges);
	return atomic_exchange(&emu.table, t);
}

/* What a change leaves to free after the grace period. */
struct retired {
	struct emu_table *table;
	struct emu_range *ranges;  /* linked through link */
};

static void retire_range(struct retired *old, struct emu_range *r)
{
	r->link = old->ranges;
	old->ranges = r;
}

static void free_range_list(struct emu_range *r)
{
	while (r) {
		struct emu_range *next = r->link;

		uffdwp__private_free(r);
		r = next;
	}
}

static void retired_free(struct retired *old)
{
	wait_for_readers();
	free_range_list(old->ranges);
	uffdwp__private_free(old->table);
}

/* ---------------------------------------------------------------------------
 * Register
 * ------------------------------------------------------------------------- */

/* Registration's scratch lists are private memory too: registering while
 * the program's heap is protected must not fault with emu.lock held (the
 * in-thread hook that resolves it takes that lock). */
static void *private_grow(void *old, size_t used, size_t size)
{
	void *p = uffdwp__private_alloc(size);

	if (p && old)
		memcpy(p, old, used);
	if (p)
		uffdwp__private_free(old);
	return p;
}

struct mapping_list {
	struct uffdwp__mapping *v;
	size_t n, cap;
	int error;
};

static bool collect_mapping(void *arg, const struct uffdwp__mapping *m)
{
	struct mapping_list *l = arg;
	struct uffdwp__mapping *last = l->n ? &l->v[l->n - 1] : NULL;

	if (last && last->end == m->start && last->prot == m->prot && last->page == m->page &&
	    last->file == m->file) {
		last->end = m->end;
		return true;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 16;
		struct uffdwp__mapping *v = private_grow(l->v, l->n * sizeof(*v), cap * sizeof(*v));

		if (!v) {
			l->error = -ENOMEM;
			return false;
		}
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = *m;
	return true;
}

/* New ranges, growing as registration finds unregistered mapped parts. */
struct range_list {
	struct emu_range **v;
	size_t n;
};

static void range_list_free(struct range_list *l)
{
	for (size_t k = 0; k < l->n; k++)
		uffdwp__private_free(l->v[k]);
	uffdwp__private_free(l->v);
	l->v = NULL;
	l->n = 0;
}

static int range_list_add(struct range_list *l, uintptr_t start, uintptr_t end,
			  const struct uffdwp__mapping *m, struct emu_ctx *owner)
{
	struct emu_range **v = private_grow(l->v, l->n * sizeof(*v), (l->n + 1) * sizeof(*v));

	if (!v)
		return -ENOMEM;
	l->v = v;
	v[l->n] = range_alloc(start, end, m->page, m->prot, owner);
	if (!v[l->n])
		return -ENOMEM;
	l->n++;
	return 0;
}

/* The parts of the mappings that ec has not registered yet, as new ranges.
 * -EBUSY when another context holds a mapped part (the kernel's answer). */
static int new_ranges(const struct emu_table *t, struct emu_ctx *ec,
		      const struct mapping_list *maps, struct range_list *out)
{
	for (size_t m = 0; m < maps->n; m++) {
		uintptr_t cursor = maps->v[m].start, end = maps->v[m].end;
		size_t i = first_range_ending_after(t, cursor);

		while (cursor < end) {
			struct emu_range *r = t && i < t->n ? t->ranges[i] : NULL;
			uintptr_t gap_end = r && r->start < end ? r->start : end;
			int ret;

			if (cursor < gap_end) {
				ret = range_list_add(out, cursor, gap_end, &maps->v[m], ec);
				if (ret < 0)
					return ret;
				cursor = gap_end;
				continue;
			}
			if (r->owner != ec)
				return -EBUSY;
			cursor = r->end;
			i++;
		}
	}
	return 0;
}

static int emu_register_range(struct uffdwp *ctx, uintptr_t start, size_t len,
			      unsigned mode, uint64_t *ioctls)
{
	struct emu_ctx *ec = ctx->priv;
	struct mapping_list maps = { 0 };
	struct range_list added = { 0 };
	struct retired old = { 0 };
	const struct emu_table *t;
	struct emu_table *nt = NULL;
	int ret;

	if (mode & UFFDWP_REGISTER_MODE_MISSING)
		return -EOPNOTSUPP;
	lock(&emu.lock);
	t = atomic_load(&emu.table);
	ret = uffdwp__walk_mappings(start, start + len,
				    UFFDWP__MAPS_CLASSIFY | UFFDWP__MAPS_PAGE_SIZES, collect_mapping,
				    &maps);
	if (ret == 0)
		ret = maps.error;
	for (size_t m = 0; ret == 0 && m < maps.n; m++)
		if (maps.v[m].file)
			ret = -EINVAL;  /* the kernel's answer: only anonymous, shmem, hugetlbfs */
	for (size_t m = 0; ret == 0 && m < maps.n; m++)
		if ((maps.v[m].start | maps.v[m].end) & (maps.v[m].page - 1))
			ret = -EINVAL;  /* not aligned to the huge pages */
	if (ret == 0 && maps.n == 0)
		ret = -EINVAL;  /* the kernel's answer for a range with nothing mapped */
	if (ret == 0)
		ret = new_ranges(t, ec, &maps, &added);
	if (ret == 0 && added.n) {
		nt = table_alloc((t ? t->n : 0) + added.n);
		if (!nt)
			ret = -ENOMEM;
	}
	if (ret == 0 && nt) {
		for (size_t i = 0; t && i < t->n; i++)
			nt->ranges[nt->n++] = t->ranges[i];
		for (size_t k = 0; k < added.n; k++)
			nt->ranges[nt->n++] = added.v[k];
		uffdwp__private_free(added.v);
		added = (struct range_list){ 0 };
		old.table = table_publish(nt);
	}
	unlock(&emu.lock);
	range_list_free(&added);
	uffdwp__private_free(maps.v);
	retired_free(&old);
	if (ret == 0 && ioctls)
		*ioctls = UFFDWP_IOCTL_WAKE | UFFDWP_IOCTL_WRITEPROTECT;
	return ret;
}

/* ---------------------------------------------------------------------------
 * Unregister
 * ------------------------------------------------------------------------- */

static bool any_mapping(void *arg, const struct uffdwp__mapping *m)
{
	*(bool *)arg = true;
	return false;
}

/*
 * Remove [start, end) from the ranges of ec that overlap it (un-protected
 * first), replacing each by what remains of it. Called with emu.lock held.
 */
static int remove_ranges(struct emu_ctx *ec, uintptr_t start, uintptr_t end,
			 struct retired *old)
{
	const struct emu_table *t = atomic_load(&emu.table);
	struct emu_table *nt;
	struct emu_range *made = NULL;  /* the slices, freed if we fail */
	size_t i, first = first_range_ending_after(t, start), overlapping = 0;

	for (i = first; t && i < t->n && t->ranges[i]->start < end; i++) {
		struct emu_range *r = t->ranges[i];
		uintptr_t a = r->start > start ? r->start : start;
		uintptr_t b = r->end < end ? r->end : end;
		int ret;

		if (r->owner != ec)
			continue;
		ret = change_pages(r, a, b, false, false);
		if (ret < 0)
			return ret;
		overlapping++;
	}
	if (!overlapping)
		return 0;
	nt = table_alloc(t->n + overlapping);  /* each may split in two */
	if (!nt)
		return -ENOMEM;
	for (i = 0; i < t->n; i++) {
		struct emu_range *r = t->ranges[i], *slice[2] = { NULL, NULL };

		if (r->owner != ec || r->end <= start || r->start >= end) {
			nt->ranges[nt->n++] = r;
			continue;
		}
		if (r->start < start && !(slice[0] = range_slice(r, r->start, start)))
			goto nomem;
		if (r->end > end && !(slice[1] = range_slice(r, end, r->end))) {
			uffdwp__private_free(slice[0]);
			goto nomem;
		}
		for (int k = 0; k < 2; k++)
			if (slice[k]) {
				nt->ranges[nt->n++] = slice[k];
				slice[k]->link = made;
				made = slice[k];
			}
		retire_range(old, r);
	}
	old->table = table_publish(nt);
	return 0;
nomem:
	free_range_list(made);
	uffdwp__private_free(nt);
	old->ranges = NULL;  /* still published */
	return -ENOMEM;
}

static int emu_unregister_range(struct uffdwp *ctx, uintptr_t start, size_t len)
{
	struct emu_ctx *ec = ctx->priv;
	uintptr_t end = start + len;
	struct retired old = { 0 };
	const struct emu_table *t;
	bool mapped = fully_mapped(start, end);
	int ret = 0;

	lock(&emu.lock);
	if (!mapped)
		ret = walk_mappings(start, end, any_mapping, &mapped);
	if (ret == 0 && !mapped)
		ret = -EINVAL;  /* the kernel's answer when nothing is mapped */
	/* Like the kernel: another context's registration is not ours to drop. */
	t = atomic_load(&emu.table);
	for (size_t i = first_range_ending_after(t, start); ret == 0 && t && i < t->n &&
	     t->ranges[i]->start < end; i++)
		if (t->ranges[i]->owner != ec)
			ret = -EINVAL;
	if (ret == 0)
		ret = check_huge_alignment(t, ec, start, end);
	if (ret == 0)
		ret = remove_ranges(ec, start, end, &old);
	unlock(&emu.lock);
	/* Even on failure: pages may have been un-protected before it, and a
	 * writer woken on a page still protected just faults again. */
	wake_waiters(ec, start, end);
	retired_free(&old);
	return ret;
}

/* ---------------------------------------------------------------------------
 * The other operations
 * ------------------------------------------------------------------------- */

static int emu_writeprotect(struct uffdwp *ctx, uintptr_t start, size_t len, unsigned mode)
{
	struct emu_ctx *ec = ctx->priv;
	bool protect = mode & UFFDWP_WRITEPROTECT_MODE_WP;
	int ret;

	lock(&emu.lock);
	ret = change_protection(ec, start, start + len, protect);
	unlock(&emu.lock);
	if (ret == 0 && !protect && !(mode & UFFDWP_WRITEPROTECT_MODE_DONTWAKE))
		wake_waiters(ec, start, start + len);
	return ret;
}

/* Like UFFDIO_WAKE: wakes whatever waits in the range, registered or not. */
static int emu_wake(struct uffdwp *ctx, uintptr_t start, size_t len)
{
	wake_waiters(ctx->priv, start, start + len);
	return 0;
}

static int emu_copy(struct uffdwp *ctx, uintptr_t dst, const void *src, size_t len,
		    unsigned mode)
{
	return -EOPNOTSUPP;  /* no missing-page faults to resolve */
}

/* Events are copied out in batches after the lock is dropped: ev may itself
 * be protected memory, and a fault under waiters_lock would deadlock. */
#define EVENT_BATCH 32

static int emu_read_events(struct uffdwp *ctx, struct uffdwp_event *ev, size_t max)
{
	struct emu_ctx *ec = ctx->priv;
	size_t done = 0;

	while (done < max) {
		struct uffdwp_event batch[EVENT_BATCH];
		size_t n = 0;

		lock(&ec->waiters_lock);
		for (struct emu_waiter *w = ec->head; w && n < EVENT_BATCH && done + n < max;
		     w = w->next) {
			if (w->reported)
				continue;
			w->reported = true;
			batch[n++] = fault_event(ec, w->page, w->tid);
		}
		ec->unreported -= n;
		if (n && ec->unreported == 0)
			eventfd_clear(ec);
		unlock(&ec->waiters_lock);
		if (n == 0)
			break;
		memcpy(ev + done, batch, n * sizeof(batch[0]));
		done += n;
	}
	return done ? (int)done : -EAGAIN;
}

/* Once it returns, no fault handler uses what ec's hook or ec itself was
 * before the call: a handler pins ec inside a read section, before it loads
 * the hook, and unpins it when done (it may run the hook for long). */
static void wait_for_unpinned(struct emu_ctx *ec)
{
	wait_for_readers();
	while (atomic_load(&ec->users))
		sched_yield();
}

static int emu_set_fault_hook(struct uffdwp *ctx, uffdwp__fault_hook fn, void *arg)
{
	struct emu_ctx *ec = ctx->priv;
	struct emu_hook *h = NULL, *old;

	if (fn) {
		h = uffdwp__private_alloc(sizeof(*h));
		if (!h)
			return -ENOMEM;
		h->fn = fn;
		h->arg = arg;
	}
	old = atomic_exchange(&ec->hook, h);
	if (old) {
		wait_for_unpinned(ec);
		uffdwp__private_free(old);
	}
	return 0;
}

/* ---------------------------------------------------------------------------
 * fork(): the child gets its memory back writable and empty contexts
 * ------------------------------------------------------------------------- */

static void atfork_prepare(void)
{
	lock(&emu.grace_lock);
	lock(&emu.lock);
}

static void atfork_parent(void)
{
	unlock(&emu.lock);
	unlock(&emu.grace_lock);
}

/*
 * In the child only the forking thread exists, so nobody could ever
 * resolve a fault: like the kernel without UFFDWP_FEATURE_EVENT_FORK, the
 * child's memory is neither registered nor protected. Each context stays
 * open but empty, with an event fd of its own (the inherited one is shared
 * with the parent). The waiters' records go back to the pool.
 */
static void atfork_child(void)
{
	struct emu_table *t = atomic_exchange(&emu.table, NULL);

	for (size_t i = 0; t && i < t->n; i++) {
		unprotect_all(t->ranges[i]);
		uffdwp__private_free(t->ranges[i]);
	}
	uffdwp__private_free(t);
	for (struct emu_ctx *ec = emu.contexts; ec; ec = ec->next) {
		int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

		if (fd >= 0) {
			dup3(fd, ec->ctx->fd, O_CLOEXEC);
			close(fd);
		}
		while (ec->head) {
			struct emu_waiter *w = ec->head;

			ec->head = w->next;
			pool_put(w);
		}
		ec->tail = NULL;
		ec->unreported = 0;
		atomic_store(&ec->users, 0);
		atomic_store(&ec->waiters_lock, 0);
	}
	atomic_store(&emu.readers[0], 0);
	atomic_store(&emu.readers[1], 0);
	atomic_store(&emu.lock, 0);
	atomic_store(&emu.grace_lock, 0);
}

static void init_once_per_process(void)
{
	static const struct uffdwp__fork_hooks hooks = {
		atfork_prepare, atfork_parent, atfork_child,
	};

	uffdwp__at_fork(UFFDWP__FORK_EMULATED, &hooks);
}

/* ---------------------------------------------------------------------------
 * Open and close
 * ------------------------------------------------------------------------- */

static int emu_open(struct uffdwp *ctx, uint64_t features)
{
	struct emu_ctx *ec;
	int ret;

	if (features & ~UFFDWP__EMULATED_FEATURES)
		return -EOPNOTSUPP;
	ec = uffdwp__private_alloc(sizeof(*ec));
	if (!ec)
		return -ENOMEM;
	ec->ctx = ctx;
	ctx->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ctx->fd < 0) {
		ret = -errno;
		uffdwp__private_free(ec);
		return ret;
	}
	ctx->features = features ? features : UFFDWP__EMULATED_FEATURES;
	ctx->priv = ec;
	pthread_once(&init_once, init_once_per_process);
	lock(&emu.lock);
	ret = install_handler();
	if (ret == 0) {
		ec->next = emu.contexts;
		emu.contexts = ec;
	}
	unlock(&emu.lock);
	if (ret < 0) {
		close(ctx->fd);
		uffdwp__private_free(ec);
	}
	return ret;
}

/*
 * Un-protect and drop every range of the context, then wake every thread
 * blocked on it: they retry their writes, which now succeed. The SIGSEGV
 * handler stays installed (signals.c): a fault raised before the close and
 * delivered after it finds the page writable and retries.
 */
static void emu_close(struct uffdwp *ctx)
{
	struct emu_ctx *ec = ctx->priv;
	struct retired old = { 0 };
	const struct emu_table *t;
	struct emu_table *nt;
	struct emu_ctx **pp;

	lock(&emu.lock);
	t = atomic_load(&emu.table);
	nt = table_alloc(t ? t->n : 0);
	for (size_t i = 0; t && i < t->n; i++) {
		struct emu_range *r = t->ranges[i];

		if (r->owner != ec) {
			if (nt)
				nt->ranges[nt->n++] = r;
			continue;
		}
		unprotect_all(r);
		if (nt)
			retire_range(&old, r);
		else
			r->owner = NULL;  /* out of memory: stays published, leaked */
	}
	if (nt)
		old.table = table_publish(nt);
	for (pp = &emu.contexts; *pp != ec; pp = &(*pp)->next)
		;
	*pp = ec->next;
	unlock(&emu.lock);

	retired_free(&old);  /* after it, no handler can newly reach ec */
	atomic_store(&ec->closing, true);
	wake_waiters(ec, 0, UINTPTR_MAX);
	wait_for_unpinned(ec);  /* handlers that reached it before */
	uffdwp__private_free(atomic_load(&ec->hook));
	close(ctx->fd);
	uffdwp__private_free(ec);
}

const struct uffdwp__backend_ops uffdwp__emulated_ops = {
	.open = emu_open,
	.close = emu_close,
	.register_range = emu_register_range,
	.unregister_range = emu_unregister_range,
	.writeprotect = emu_writeprotect,
	.wake = emu_wake,
	.copy = emu_copy,
	.read_events = emu_read_events,
	.set_fault_hook = emu_set_fault_hook,
};
