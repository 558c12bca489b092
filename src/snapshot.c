/* SPDX-License-Identifier: MIT */
/*
 * Live snapshots: a point-in-time copy of memory regions, saved by a thread
 * of ours while the program keeps writing them.
 *
 * The set. The pages to save are a sorted list of runs (the regions for a
 * full snapshot, the tracker's written runs for an incremental one), each
 * page with a one-byte state:
 *
 *   PENDING  protected, not saved: its memory still holds the snapshot's
 *            contents, and nobody may write it until someone claims it;
 *   CLAIMED  one party (the saver thread, or one faulting writer) is copying
 *            it; everybody else who wants the page waits for DONE;
 *   DONE     its snapshot contents are safe (handed to the sink, or copied
 *            into the side buffer); it may be un-protected.
 *
 * A page moves PENDING -> CLAIMED by one compare-and-swap, so exactly one
 * party copies it, and it is copied while still protected, so the copy is
 * never torn: the saver un-protects a page only after copying it, and a
 * writer that faults on it meanwhile waits for DONE (for the length of one
 * batch read, not for the sink) before its write is let through.
 *
 * Copy-before-write. A writer faulting on a PENDING page claims it, copies
 * it into a slot of the side buffer, publishes the slot and goes on at once.
 * The side buffer is a ring of slots: a writer reserves a free slot (the
 * count `avail`; when it is 0 the writer sleeps on it: back-pressure; one
 * in a signal handler waits outside it, see before_write()), takes the
 * next ring index, copies, and marks the slot with its sequence number.
 * The saver consumes slots strictly in ring order and frees them in that
 * order, so a slot handed out is always one already consumed. All of this
 * is lock-free and async-signal-safe (atomics, memcpy and futexes), because
 * with the in-thread engine it runs in the faulting thread's signal handler.
 *
 * The saver reads live memory with process_vm_readv(2) on itself rather
 * than memcpy: a region unmapped under us then yields EFAULT and a clean
 * error instead of a crash. It reads a batch of contiguous pages, then
 * un-protects them (own context) and marks them DONE, and only then
 * encodes and writes them, so writers never wait for the sink unless the
 * side buffer is full.
 *
 * Without a tracker the snapshot opens its own context and engine, protects
 * the regions at begin and un-protects each page once saved. With a tracker
 * (SYNC or EMULATED) it borrows the tracker's context: an interposer copies
 * before the tracker un-protects; the saver never un-protects (a clean page
 * must stay protected for the tracker), and the begin instant is the
 * tracker's reset.
 *
 * Begin with a tracker. A write fault on a page of the set while begin is
 * still collecting must wait for the set, and it waits in the tracker's
 * engine thread: the thread that reads the tracker's events. Begin's
 * collect meanwhile retries -EAGAIN for as long as an event (munmap or
 * MADV_DONTNEED on the regions) is unread, so such a wait could last
 * forever. It therefore also wakes on every new message of the tracker's
 * context, and a write-protect that answers -EAGAIN (an event is pending)
 * fails the snapshot and lets the writer go: the engine reads the event,
 * the collect ends, begin returns the error.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "backend.h"
#include "format.h"
#include "maps.h"
#include "opts.h"
#include "snapshot.h"
#include "tracker.h"

enum { PAGE_PENDING = 0, PAGE_CLAIMED = 1, PAGE_DONE = 2 };

/* Pages per saver batch: 512 KiB with 4 KiB pages (fits a core's L2, so the
 * checksum and the write re-read the batch from cache) and 3 iovecs a page,
 * well under IOV_MAX. */
#define BATCH 128

/* At most this many pages from a batch's first page to its last: pages in
 * between were saved by writers, and one un-protect covers the span. */
#define SPAN (4 * BATCH)

/* Runs collected from the tracker per call. */
#define COLLECT_CHUNK 256

/* Side buffer slots kept populated ahead of the writers (MADV_POPULATE_WRITE),
 * so a copy-before-write never waits for the kernel to allocate its slot. */
#define POPULATE_AHEAD 512

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  /* Linux 5.14 */
#endif

/* The saver thread's start gate; before GO, begin may ask it to protect
 * part of the regions (HELP) and waits for HELPED. */
enum { GATE_WAIT = 0, GATE_GO = 1, GATE_ABORT = 2, GATE_HELP = 3, GATE_HELPED = 4 };

/* Begin protects this much alone first, and timed: the rest is shared
 * with the saver only if it would take longer than PARALLEL_PROTECT_NS
 * (4 KiB pages), not when it is cheap (transparent huge pages: one entry
 * per 2 MiB), where waking a thread costs more than it saves. */
#define PROTECT_PROBE ((uint64_t)16 << 20)
#define PARALLEL_PROTECT_NS 1000000

/* Where begin splits the protection between two threads: a multiple of
 * the PMD size, so that no transparent huge page is protected in two
 * halves (that would split its mapping). */
#define PROTECT_ALIGN ((uint64_t)2 << 20)

struct run {
	uint64_t addr;
	uint64_t npages;
	uint64_t first;  /* index of its first page in the state array */
};

struct uffdwp_snapshot {
	size_t page;
	pid_t owner;  /* the process that began it: a fork child's copy is inert */

	/* The set of pages to save. */
	struct run *runs;
	size_t nruns;
	uint64_t total;
	_Atomic uint8_t *state;
	size_t state_len;  /* bytes mapped for state */

	/* The regions, sorted: the file header's. */
	struct uffdwp_snapshot_region *regions;
	size_t nregions;

	/* The sink. */
	int fd;
	int sink_fd;        /* what the saver writes: fd, or (a pipe) a non-blocking
			       description of its own for the same pipe, so that
			       a stop can interrupt a wait for room */
	bool sink_socket;   /* send(2) with MSG_DONTWAIT */
	uffdwp_snapshot_sink_fn fn;
	void *arg;
	struct uffdwp__encoder enc;
	enum uffdwp__codec_id codec;  /* NONE: zero-copy PAGE records */
	int codec_level;
	struct uffdwp__batcher batcher;  /* else pages go through it */
	uint64_t id, parent_id, time_ns;

	/* Where the faults come from. */
	struct uffdwp *ctx;
	bool own_ctx;
	bool borrowed_ctx;  /* own_ctx, but the caller's context (opts.context) */
	pid_t pid;          /* whose memory: 0 this process, else the context's target */
	uffdwp_fault_fn events;  /* opts.events (borrowed context) */
	struct uffdwp_engine *eng;
	struct uffdwp_tracker *tracker;
	size_t granule;  /* tracker: bytes the interposer is called for */
	uint64_t tracker_resets;  /* the tracker's reset count at the instant */
	enum uffdwp_backend backend;
	enum uffdwp_engine_mode engine_mode;  /* own context: the engine's */
	enum uffdwp_track_method tracker_method;

	/*
	 * Emulated backend (which sees no madvise(2)): which pages of the set
	 * were present or swapped at the instant (a bitmap by set index), and
	 * /proc/self/pagemap to tell, after a copy, that such a page was not
	 * discarded meanwhile (see check_resident()).
	 */
	int pagemap_fd;
	_Atomic uint64_t *resident;
	uint64_t zero_pfn;  /* the shared zero page's frame, 0 if hidden */

	struct uffdwp_snapshot *next_live;  /* the registry of live snapshots */
	bool listed;

	/* The side buffer: a ring of nslots page-sized slots (see the top). */
	unsigned char *side;
	size_t nslots;
	uint64_t *slot_addr;
	_Atomic uint64_t *slot_seq;  /* k + 1 once ring index k is published */
	_Atomic uint32_t avail;      /* free slots */
	_Atomic uint32_t avail_gen, avail_waiters;  /* slots were freed (or stop) */
	_Atomic uint64_t head;       /* ring indexes handed out */
	uint64_t tail;               /* saver only: ring indexes consumed */
	_Atomic uint64_t side_peak;  /* slots */
	size_t populated;            /* saver only: slots [0, populated) are populated */

	/* Wake-ups. */
	_Atomic uint32_t done_gen, done_waiters;    /* a page became DONE */
	_Atomic uint32_t pub_gen, saver_sleeping;   /* a slot was published */
	_Atomic uint32_t ready;   /* the set is known (or the snapshot stops) */
	_Atomic uint32_t instant; /* every page is protected (or the snapshot stops) */
	_Atomic bool inthread_writers;  /* in-thread engine: writers fault in a handler */
	pid_t begin_tid;          /* the threads that protect: they never wait for */
	_Atomic pid_t saver_tid;  /* the instant (wait_instant()) */
	int ready_efd;            /* tracker: readable once ready */
	int ready_ep;             /* tracker: ready_efd and, kernel backend,
				     the context's fd edge-triggered (see the top) */
	_Atomic uint32_t gate;    /* GATE_*: the saver may start */
	uint64_t help_from, help_to;  /* GATE_HELP: the saver protects these bytes of
					 the regions laid end to end */
	int help_ret;
	_Atomic int stop;         /* 0, or the error that stops the snapshot */
	int stop_efd;             /* readable once stop is set */

	/* Progress. */
	_Atomic uint64_t done, copied, waits, bytes_out;
	uint64_t begin_ns;
	_Atomic int finished;
	int result;
	int efd;

	pthread_t thread;
	bool thread_started;
	bool vm_readv;  /* process_vm_readv works here */
	bool unread[BATCH];  /* remote: pages of the batch that were unmapped */
	bool frozen;    /* nobody writes the memory: encode it in place */
	unsigned char *copy;  /* ASYNC incremental: the set, copied at begin */
	bool interposed;      /* SYNC/EMULATED tracker: our interposer is in */

	/* The saver's buffers. */
	unsigned char *bounce;               /* BATCH pages */
	uint64_t claimed[BATCH];             /* set indexes of the batch */
	uint64_t claimed_addr[BATCH];        /* their addresses */
	const struct run *claimed_run[BATCH];
	struct iovec iov[3 * BATCH + 1];
	unsigned char heads[BATCH][UFFDWP__FORMAT_HEAD_SIZE];
	unsigned char tails[BATCH][UFFDWP__FORMAT_SUM_SIZE];
	unsigned char zeros[BATCH][UFFDWP__FORMAT_ZERO_SIZE];
};

/* ---- small async-signal-safe primitives -------------------------------- */

static void futex_wait(_Atomic uint32_t *word, uint32_t expected)
{
	syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/*
 * Copy a page of the program's memory that write-protection holds still.
 * The kernel (or the emulated backend) orders the writer's earlier and
 * later writes with this copy, an edge ThreadSanitizer cannot see; so under
 * TSan the copy is made with uninstrumented volatile loads (which the
 * compiler cannot turn back into an intercepted memcpy).
 */
#if UFFDWP__UNDER_TSAN
__attribute__((no_sanitize("thread")))
static void copy_held_page(void *dst, const void *src, size_t len)
{
	const volatile uint64_t *from = src;
	uint64_t *to = dst;

	for (size_t i = 0; i < len / sizeof(*to); i++)
		to[i] = from[i];
}
#else
static void copy_held_page(void *dst, const void *src, size_t len)
{
	memcpy(dst, src, len);
}
#endif

/* Another process's page, held still by its protection: a target that
 * died or unmapped it leaves zeros (the saver finds out on its own read). */
static void read_remote(struct uffdwp_snapshot *s, void *dst, uint64_t addr, size_t len)
{
	struct iovec local = { dst, len }, remote = { (void *)(uintptr_t)addr, len };

	if (process_vm_readv(s->pid, &local, 1, &remote, 1, 0) != (ssize_t)len)
		memset(dst, 0, len);
}

/* Tell every waiter that a page became DONE (or that the snapshot stops). */
static void wake_done_waiters(struct uffdwp_snapshot *s)
{
	atomic_fetch_add(&s->done_gen, 1);
	if (atomic_load(&s->done_waiters))
		futex_wake_all(&s->done_gen);
}

/* The set is known: release the writers that wait for it. */
static void set_ready(struct uffdwp_snapshot *s)
{
	const uint64_t one = 1;

	atomic_store(&s->ready, 1);
	if (s->ready_efd >= 0)
		while (write(s->ready_efd, &one, sizeof(one)) < 0 && errno == EINTR)
			;
}

/* Every page is protected: release the in-thread writers that wait for it
 * (wait_instant()). */
static void set_instant(struct uffdwp_snapshot *s)
{
	atomic_store(&s->instant, 1);
	futex_wake_all(&s->instant);
}

/* Stop the snapshot with error err (the first error wins) and release every
 * thread waiting on it. */
static void stop_with(struct uffdwp_snapshot *s, int err)
{
	const uint64_t one = 1;
	int none = 0;

	atomic_compare_exchange_strong(&s->stop, &none, err);
	if (s->stop_efd >= 0)
		while (write(s->stop_efd, &one, sizeof(one)) < 0 && errno == EINTR)
			;
	wake_done_waiters(s);
	atomic_fetch_add(&s->avail_gen, 1);
	futex_wake_all(&s->avail_gen);
	uffdwp__generation_move();  /* kept writers fault again, and go on */
	set_ready(s);
	set_instant(s);
	atomic_fetch_add(&s->pub_gen, 1);
	futex_wake_all(&s->pub_gen);
}

/* The state index of the page at addr, or -1 if it is not in the set. */
static int64_t page_index(const struct uffdwp_snapshot *s, uint64_t addr)
{
	size_t lo = 0, hi = s->nruns;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct run *r = &s->runs[mid];

		if (addr < r->addr)
			hi = mid;
		else if (addr >= r->addr + r->npages * s->page)
			lo = mid + 1;
		else
			return (int64_t)(r->first + (addr - r->addr) / s->page);
	}
	return -1;
}

/* Wait until page idx is DONE, or the snapshot stops. */
static void wait_done(struct uffdwp_snapshot *s, int64_t idx)
{
	atomic_fetch_add_explicit(&s->waits, 1, memory_order_relaxed);
	for (;;) {
		uint32_t gen = atomic_load(&s->done_gen);

		if (atomic_load(&s->state[idx]) == PAGE_DONE || atomic_load(&s->stop))
			return;
		atomic_fetch_add(&s->done_waiters, 1);
		futex_wait(&s->done_gen, gen);
		atomic_fetch_sub(&s->done_waiters, 1);
	}
}

/* Take a free slot of the side buffer. With wait, sleep while there is none
 * (back-pressure). False when the snapshot stops meanwhile, or without
 * wait when there is none. */
static bool reserve_slot(struct uffdwp_snapshot *s, bool wait)
{
	bool waited = false;
	uint32_t a;

	for (;;) {
		/* Loaded before stop and avail are checked: a stop or a free
		 * after the checks changes it, so the futex wait returns. */
		uint32_t gen = atomic_load(&s->avail_gen);

		if (atomic_load(&s->stop))
			return false;
		a = atomic_load(&s->avail);
		if (a == 0) {
			if (!wait)
				return false;
			if (!waited)
				atomic_fetch_add_explicit(&s->waits, 1, memory_order_relaxed);
			waited = true;
			atomic_fetch_add(&s->avail_waiters, 1);
			futex_wait(&s->avail_gen, gen);
			atomic_fetch_sub(&s->avail_waiters, 1);
			continue;
		}
		if (atomic_compare_exchange_weak(&s->avail, &a, a - 1))
			break;
	}
	/* Record the high-water mark of slots in use. */
	uint64_t used = s->nslots - (a - 1), peak = atomic_load(&s->side_peak);

	while (used > peak && !atomic_compare_exchange_weak(&s->side_peak, &peak, used))
		;
	return true;
}

/* n slots are free again (consumed, or reserved and not used): wake the
 * writers that wait for room, and let the kept ones fault again. */
static void free_slots(struct uffdwp_snapshot *s, uint32_t n)
{
	/* A kept writer read the generation before it found no room: the
	 * first free after that finds avail 0, and moves the generation. */
	bool none = atomic_fetch_add(&s->avail, n) == 0;

	atomic_fetch_add(&s->avail_gen, 1);
	if (atomic_load(&s->avail_waiters))
		futex_wake_all(&s->avail_gen);
	if (none)
		uffdwp__generation_move();
}

/* Bits of a /proc/self/pagemap entry (Documentation/admin-guide/mm/pagemap.rst). */
#define PM_PRESENT  (UINT64_C(1) << 63)
#define PM_SWAPPED  (UINT64_C(1) << 62)
#define PM_PFN_MASK ((UINT64_C(1) << 55) - 1)  /* 0 without CAP_SYS_ADMIN */

/*
 * The emulated backend sees no madvise(MADV_DONTNEED): a discarded page
 * keeps its PROT_READ, its next write faults and would copy zeros into
 * the snapshot. So, just before a page that held memory at the instant
 * (present, and not the shared zero page where its frame number can be
 * read, or swapped) is copied, it must still hold memory: present or
 * swapped. Not caught (uffdwp_snapshot(3)): a page discarded during the
 * copy itself; one discarded and then read (the zero page is mapped, and
 * without CAP_SYS_ADMIN its frame number reads 0); a shared page punched
 * out (MADV_REMOVE) and re-read; a region replaced by a new mapping that
 * the program wrote before we copied it. Checks entries [first, first + n)
 * of the set, at addr; async-signal-safe. False when one was discarded.
 */
static bool check_resident(struct uffdwp_snapshot *s, uint64_t first, uint64_t addr, size_t n)
{
	uint64_t e[64];

	while (n) {
		size_t k = n < 64 ? n : 64;
		ssize_t got = pread(s->pagemap_fd, e, k * sizeof(e[0]),
				    (off_t)(addr / s->page * sizeof(e[0])));

		if (got != (ssize_t)(k * sizeof(e[0])))
			return false;
		for (size_t i = 0; i < k; i++) {
			uint64_t bit = first + i;
			bool held = atomic_load_explicit(&s->resident[bit / 64],
							 memory_order_relaxed) &
				    (UINT64_C(1) << (bit % 64));
			bool zero = s->zero_pfn && (e[i] & PM_PFN_MASK) == s->zero_pfn;

			if (held && !(e[i] & PM_SWAPPED) && (!(e[i] & PM_PRESENT) || zero))
				return false;
		}
		first += k;
		addr += k * s->page;
		n -= k;
	}
	return true;
}

/* The page this thread was last kept waiting on, and the snapshot that
 * kept it (before_write()). Initial-exec: nothing allocated in a handler. */
static __thread uint64_t kept_page __attribute__((tls_model("initial-exec")));
static __thread uint64_t kept_by __attribute__((tls_model("initial-exec")));

/*
 * A writer is about to write the page at addr (a fault on a protected
 * page): make sure the snapshot has its contents first. Runs in the faulting
 * thread (in a signal handler: in_handler) or in an engine thread. True
 * when the page may be written; false when an in-handler writer found no
 * room for it in the side buffer: it must not sleep for room there, where
 * it holds its context and takes no signals (a program's handler leaving
 * with siglongjmp() would leave the context held, and a close waiting, for
 * ever). The page is then left protected and unclaimed, and the writer
 * waits for room outside (UFFDWP_KEEP), taking signals, and faults again.
 */
static bool before_write(struct uffdwp_snapshot *s, uint64_t addr, bool in_handler)
{
	uint8_t expected = PAGE_PENDING;
	bool reserved = false;
	int64_t idx;

	if (atomic_load(&s->stop))
		return true;
	idx = page_index(s, addr);
	if (idx < 0)
		return true;
	/* In a handler the slot comes first: a writer that claimed the page
	 * could not give the claim back to writers waiting for DONE. A page
	 * never returns to PENDING, so one seen past it is not claimed here. */
	if (in_handler && atomic_load(&s->state[idx]) == PAGE_PENDING) {
		if (reserve_slot(s, false)) {
			reserved = true;
		} else if (atomic_load(&s->stop)) {
			return true;
		} else if (gettid() != atomic_load(&s->saver_tid)) {
			/* It faults again at every generation move: one wait. */
			if (kept_page != addr || kept_by != s->id) {
				atomic_fetch_add_explicit(&s->waits, 1, memory_order_relaxed);
				kept_page = addr;
				kept_by = s->id;
			}
			return false;
		}
		/* The saver is never kept (only it makes room): it claims the
		 * page and sleeps for a slot below, as a handler thread does. */
	}
	if (!atomic_compare_exchange_strong(&s->state[idx], &expected, PAGE_CLAIMED)) {
		if (reserved)
			free_slots(s, 1);
		if (expected == PAGE_CLAIMED)
			wait_done(s, idx);
		return true;
	}
	if (!reserved && !reserve_slot(s, true)) {
		atomic_store(&s->state[idx], PAGE_DONE);
		return true;
	}
	uint64_t k = atomic_fetch_add(&s->head, 1);
	size_t slot = (size_t)(k % s->nslots);

	if (s->resident && !check_resident(s, (uint64_t)idx, addr, 1))
		stop_with(s, -ESTALE);
	if (s->pid)
		read_remote(s, s->side + slot * s->page, addr, s->page);
	else
		copy_held_page(s->side + slot * s->page, (const void *)(uintptr_t)addr, s->page);
	s->slot_addr[slot] = addr;
	atomic_store_explicit(&s->slot_seq[slot], k + 1, memory_order_release);
	atomic_fetch_add_explicit(&s->copied, 1, memory_order_relaxed);
	atomic_store(&s->state[idx], PAGE_DONE);
	wake_done_waiters(s);
	atomic_fetch_add(&s->pub_gen, 1);
	if (atomic_load(&s->saver_sleeping))
		futex_wake_all(&s->pub_gen);
	return true;
}

/*
 * [start, end) of the regions was discarded (MADV_DONTNEED), unmapped or
 * moved: the kernel tells before it discards, and lets the caller go on
 * as soon as the event is read, so a page there that is not saved yet is
 * lost, and one being saved may be read after the discard. Which of the
 * two happened first cannot be told in time, so any such change to the
 * regions while the snapshot runs makes it fail.
 */
static void on_change(void *arg, uintptr_t start, uintptr_t end)
{
	struct uffdwp_snapshot *s = arg;

	/* Another process's snapshot whose caller takes the events (uffdwp
	 * core notes the ranges): it goes on, skipping what is gone. */
	if (s->pid && s->events)
		return;
	for (size_t i = 0; i < s->nregions; i++)
		if (start < s->regions[i].addr + s->regions[i].len && s->regions[i].addr < end) {
			stop_with(s, -ESTALE);
			return;
		}
}

/* The engine's callback (own context). */
/*
 * An in-thread writer that faults while begin still protects sleeps until
 * the instant (a fork() child's writers wait for fork() the same way):
 * copying and un-protecting from every writer at full speed took the CPUs
 * and page-table locks from the protection, and made begin 1-5x fork()'s
 * on 4 KiB pages. The wait is bounded by begin, which never waits for a
 * writer; a handler thread does not wait (it also reads the events whose
 * reading the protection may need).
 */
static void wait_instant(struct uffdwp_snapshot *s)
{
	pid_t self;

	if (!atomic_load(&s->inthread_writers) || atomic_load(&s->instant))
		return;
	/* The threads that set the instant (a program's signal handler on
	 * begin's thread, the saver writing its state where the regions
	 * cover the heap) copy their page and go on. */
	self = gettid();
	if (self == s->begin_tid || self == atomic_load(&s->saver_tid))
		return;
	while (!atomic_load(&s->instant))
		futex_wait(&s->instant, 0);
}

static int on_fault(void *arg, const struct uffdwp_event *ev)
{
	struct uffdwp_snapshot *s = arg;

	if (ev->type != UFFDWP_EVENT_PAGEFAULT && s->events)
		s->events(s->arg, ev);
	switch (ev->type) {
	case UFFDWP_EVENT_PAGEFAULT:
		wait_instant(s);
		if (!before_write(s, ev->pagefault.address & ~(uint64_t)(s->page - 1),
				  atomic_load(&s->inthread_writers)))
			return UFFDWP_KEEP;
		break;
	case UFFDWP_EVENT_REMOVE:
	case UFFDWP_EVENT_UNMAP:
		on_change(s, (uintptr_t)ev->remove.start, (uintptr_t)ev->remove.end);
		break;
	case UFFDWP_EVENT_REMAP:
		on_change(s, (uintptr_t)ev->remap.from,
			  (uintptr_t)(ev->remap.from + ev->remap.len));
		break;
	default:
		break;
	}
	return UFFDWP_RESOLVE;
}

/*
 * Tracker: a fault that arrives while begin is still collecting waits for
 * the set (part of the begin pause), unless an event is pending that only
 * this thread, the tracker's engine, can read: then the snapshot fails
 * (see the top). Every new message on the context wakes the wait, and a
 * message that arrived before it is still reported by epoll_wait().
 */
static void wait_ready(struct uffdwp_snapshot *s, uintptr_t page)
{
	struct epoll_event ev;

	while (!atomic_load(&s->ready)) {
		/* The page faulted, so it is protected already: protecting it
		 * again changes nothing, but fails while an event is unread. */
		if (uffdwp_backend(s->ctx) == UFFDWP_BACKEND_KERNEL &&
		    uffdwp_writeprotect(s->ctx, (void *)page, s->page,
					UFFDWP_WRITEPROTECT_MODE_WP) == -EAGAIN) {
			stop_with(s, -EFAULT);
			return;
		}
		if (epoll_wait(s->ready_ep, &ev, 1, -1) < 0 && errno != EINTR) {
			stop_with(s, -errno);
			return;
		}
	}
}

/* The tracker's interposer: called for a whole granule. */
static void on_tracked_write(void *arg, uintptr_t page)
{
	struct uffdwp_snapshot *s = arg;

	wait_ready(s, page);
	for (size_t off = 0; off < s->granule; off += s->page)
		before_write(s, page + off, false);
}

/* ---- the sink ---------------------------------------------------------- */

/* One write of the sink; a pipe or socket never blocks (see open_sink()). */
static ssize_t sink_write(struct uffdwp_snapshot *s, struct iovec *iov, int cnt)
{
	if (s->sink_socket) {
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)cnt };

		return sendmsg(s->sink_fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	return writev(s->sink_fd, iov, cnt);
}

static int write_all(struct uffdwp_snapshot *s, struct iovec *iov, int cnt)
{
	while (cnt > 0) {
		int stop = atomic_load(&s->stop);
		ssize_t n;

		/* Cancelled (or failed elsewhere): the sink stays incomplete. */
		if (stop)
			return stop;
		n = sink_write(s, iov, cnt > IOV_MAX ? IOV_MAX : cnt);
		if (n < 0) {
			struct pollfd p[2] = { { .fd = s->sink_fd, .events = POLLOUT },
					       { .fd = s->stop_efd, .events = POLLIN } };

			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				return -errno;
			/* No room in the pipe or socket: wait for room or stop. */
			if (poll(p, s->stop_efd >= 0 ? 2 : 1, -1) < 0 && errno != EINTR)
				return -errno;
			continue;
		}
		atomic_fetch_add_explicit(&s->bytes_out, (uint64_t)n, memory_order_relaxed);
		while (cnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

static int write_buf(struct uffdwp_snapshot *s, void *buf, size_t len)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };

	return write_all(s, &iov, 1);
}

/*
 * Encodes pages into PAGE and ZERO records and gathers them for one
 * writev(2); zero pages at consecutive addresses of one run share a ZERO
 * record. At most BATCH pages between flushes.
 */
struct emitter {
	int niov, nhead, nzero;
	uint64_t zaddr, zpages;  /* a pending zero run */
	const struct run *zrun;
};

/* Queue what the batcher encoded (finishing its staged run first, so that
 * the stream stays in encoding order). */
static int flush_batched(struct uffdwp_snapshot *s, struct emitter *e)
{
	const void *data;
	size_t len;
	int ret;

	if (s->codec == UFFDWP__CODEC_NONE)
		return 0;
	ret = uffdwp__batcher_finish(&s->batcher);
	len = uffdwp__batcher_take(&s->batcher, &data);
	if (!ret && len)
		s->iov[e->niov++] = (struct iovec){ (void *)data, len };
	return ret;
}

static int flush_zero(struct uffdwp_snapshot *s, struct emitter *e)
{
	ssize_t n;

	if (!e->zpages)
		return 0;
	n = flush_batched(s, e);
	if (n)
		return (int)n;
	n = uffdwp__encode_zero(&s->enc, e->zaddr, e->zpages, s->zeros[e->nzero],
				UFFDWP__FORMAT_ZERO_SIZE);
	if (n < 0)
		return (int)n;
	s->iov[e->niov++] = (struct iovec){ s->zeros[e->nzero++], (size_t)n };
	e->zpages = 0;
	return 0;
}

static int emit_page(struct uffdwp_snapshot *s, struct emitter *e, const struct run *r,
		     uint64_t addr, const void *data)
{
	uint64_t sum;
	int ret;

	if (uffdwp__format_is_zero(data, s->page)) {
		if (e->zpages && e->zrun == r && e->zaddr + e->zpages * s->page == addr) {
			e->zpages++;
			return 0;
		}
		ret = flush_zero(s, e);
		e->zaddr = addr;
		e->zpages = 1;
		e->zrun = r;
		return ret;
	}
	ret = flush_zero(s, e);
	if (ret)
		return ret;
	if (s->codec != UFFDWP__CODEC_NONE)
		return uffdwp__batcher_add(&s->batcher, addr, data);
	sum = uffdwp__format_page_sum(&s->enc, addr, data);
	ret = uffdwp__encode_page_frame_summed(&s->enc, addr, sum, s->heads[e->nhead],
					       s->tails[e->nhead]);
	if (ret)
		return ret;
	s->iov[e->niov++] = (struct iovec){ s->heads[e->nhead], UFFDWP__FORMAT_HEAD_SIZE };
	s->iov[e->niov++] = (struct iovec){ (void *)data, s->page };
	s->iov[e->niov++] = (struct iovec){ s->tails[e->nhead++], UFFDWP__FORMAT_SUM_SIZE };
	return 0;
}

static int emit_flush(struct uffdwp_snapshot *s, struct emitter *e)
{
	int ret = flush_zero(s, e);

	if (!ret)
		ret = flush_batched(s, e);
	if (!ret && e->niov)
		ret = write_all(s, s->iov, e->niov);
	if (s->codec != UFFDWP__CODEC_NONE)
		uffdwp__batcher_reset(&s->batcher);
	*e = (struct emitter){ 0 };
	return ret;
}

/* Populate the side buffer up to POPULATE_AHEAD slots past the last one
 * handed out. Only the first pass over the ring needs it; on a kernel
 * without MADV_POPULATE_WRITE writers just populate their slots themselves. */
static void populate_side(struct uffdwp_snapshot *s)
{
	uint64_t want = atomic_load_explicit(&s->head, memory_order_relaxed) + POPULATE_AHEAD;

	if (want > s->nslots)
		want = s->nslots;
	if (want <= s->populated)
		return;
	if (madvise(s->side + s->populated * s->page, (want - s->populated) * s->page,
		    MADV_POPULATE_WRITE) < 0) {
		s->populated = s->nslots;
		return;
	}
	s->populated = want;
	/* Populated slots are memory in use, whether or not filled yet. */
	uint64_t peak = atomic_load(&s->side_peak);

	while (want > peak && !atomic_compare_exchange_weak(&s->side_peak, &peak, want))
		;
}

/* Hand the ready slots of the side buffer to the sink, in ring order, and
 * free them. */
static int drain_side(struct uffdwp_snapshot *s)
{
	for (;;) {
		struct emitter e = { 0 };
		size_t n = 0;
		int ret = 0;

		while (n < BATCH) {
			size_t slot = (size_t)((s->tail + n) % s->nslots);

			if (atomic_load_explicit(&s->slot_seq[slot], memory_order_acquire) !=
			    s->tail + n + 1)
				break;
			const void *data = s->side + slot * s->page;
			uint64_t addr = s->slot_addr[slot];

			if (s->fn)
				ret = s->fn(s->arg, addr, data, s->page);
			else
				ret = emit_page(s, &e, &s->runs[0], addr, data);
			if (ret)
				return ret;
			/* A ZERO record per slot: slots are not contiguous runs. */
			if (!s->fn && (ret = flush_zero(s, &e)))
				return ret;
			n++;
		}
		if (n == 0)
			return 0;
		if (!s->fn && (ret = emit_flush(s, &e)))
			return ret;
		s->tail += n;
		atomic_fetch_add(&s->done, n);
		free_slots(s, (uint32_t)n);
	}
}

/* The address of set index idx, in run r. */
static uint64_t addr_of(const struct uffdwp_snapshot *s, const struct run *r, uint64_t idx)
{
	return r->addr + (idx - r->first) * s->page;
}

/* Another process's pages: what it unmapped meanwhile is marked in
 * s->unread and skipped (its UNMAP event went to opts.events); -ESRCH when
 * it is gone. */
static int read_pages_remote(struct uffdwp_snapshot *s, const struct iovec *remote,
			     size_t nremote)
{
	unsigned char *to = s->bounce;
	size_t i = 0;

	memset(s->unread, 0, sizeof(s->unread));
	for (size_t k = 0; k < nremote; k++) {
		for (size_t off = 0; off < remote[k].iov_len;) {
			struct iovec local = { to, remote[k].iov_len - off };
			struct iovec from = { (char *)remote[k].iov_base + off, local.iov_len };
			ssize_t got = process_vm_readv(s->pid, &local, 1, &from, 1, 0);

			if (got < 0 && errno == ESRCH)
				return -ESRCH;
			if (got <= 0) {  /* the first page is gone: skip it */
				s->unread[i] = true;
				got = (ssize_t)s->page;
			}
			got -= got % (ssize_t)s->page;
			to += got;
			off += (size_t)got;
			i += (size_t)got / s->page;
		}
	}
	return 0;
}

/* Emulated backend: before the n claimed pages are copied, -ESTALE if one
 * of them was discarded (check_resident()), else 0. */
static int still_resident(struct uffdwp_snapshot *s, size_t n)
{
	for (size_t i = 0, j; s->resident && i < n; i = j) {
		for (j = i + 1; j < n && s->claimed[j] == s->claimed[j - 1] + 1 &&
				s->claimed_addr[j] == s->claimed_addr[j - 1] + s->page; j++)
			;
		if (!check_resident(s, s->claimed[i], s->claimed_addr[i], j - i))
			return -ESTALE;
	}
	return 0;
}

/* Copy the n claimed pages into the bounce buffer, one after the other:
 * -EFAULT when part of them is no longer mapped, -ESTALE when discarded. */
static int read_pages(struct uffdwp_snapshot *s, size_t n)
{
	struct iovec remote[BATCH];
	size_t nremote = 0;

	for (size_t i = 0; i < n; i++) {
		void *at = (void *)(uintptr_t)s->claimed_addr[i];

		if (nremote && (char *)remote[nremote - 1].iov_base +
				       remote[nremote - 1].iov_len == at)
			remote[nremote - 1].iov_len += s->page;
		else
			remote[nremote++] = (struct iovec){ at, s->page };
	}
	if (s->pid)
		return read_pages_remote(s, remote, nremote);
	if (still_resident(s, n))
		return -ESTALE;
	if (s->vm_readv) {
		struct iovec local = { s->bounce, n * s->page };
		ssize_t got = process_vm_readv(getpid(), &local, 1, remote, nremote, 0);

		if (got == (ssize_t)local.iov_len)
			return 0;
		if (got >= 0 || errno == EFAULT || errno == ENOMEM || errno == ESRCH)
			return -EFAULT;
		/* Forbidden here (seccomp, old kernel): plain reads from now on,
		 * and an unmapped region becomes a crash rather than an error. */
		s->vm_readv = false;
	}
	for (size_t i = 0, off = 0; i < nremote; off += remote[i].iov_len, i++)
		copy_held_page(s->bounce + off, remote[i].iov_base, remote[i].iov_len);
	return 0;
}

/* Un-protect [addr, addr + len) once saved. -EAGAIN: an event on the
 * regions is unread; the engine reads it (and, for a change to the
 * regions, stops us). Another process's range partly unmapped meanwhile
 * (its snapshot goes on: on_change()) is un-protected page by page. */
static int unprotect(struct uffdwp_snapshot *s, uint64_t addr, uint64_t len)
{
	int ret;

	while ((ret = uffdwp_writeprotect(s->ctx, (void *)(uintptr_t)addr, len, 0)) == -EAGAIN &&
	       !atomic_load(&s->stop))
		sched_yield();
	if (ret != -ENOENT || !s->pid)
		return ret;
	for (uint64_t off = 0; off < len; off += s->page)
		while (uffdwp_writeprotect(s->ctx, (void *)(uintptr_t)(addr + off), s->page, 0) ==
			       -EAGAIN && !atomic_load(&s->stop))
			sched_yield();
	return 0;
}

/* Save the n pages claimed in s->claimed, in address order. */
static int save_batch(struct uffdwp_snapshot *s, size_t n)
{
	struct emitter e = { 0 };
	int ret = s->frozen || s->copy ? 0 : read_pages(s, n);

	if (ret)
		return ret;
	/* The copy is ours: let the writers go before the sink is written,
	 * with one call for the whole span (own context: one run). Pages in
	 * it that are not ours are DONE (the claim loop stops at a page a
	 * writer is copying), and un-protecting a DONE page early is
	 * harmless. */
	if (s->own_ctx) {
		uint64_t first = s->claimed_addr[0], last = s->claimed_addr[n - 1];

		ret = unprotect(s, first, last + s->page - first);
		if (ret)
			return atomic_load(&s->stop) ? atomic_load(&s->stop) : ret;
	}
	for (size_t i = 0; i < n; i++)
		atomic_store(&s->state[s->claimed[i]], PAGE_DONE);
	wake_done_waiters(s);

	for (size_t i = 0, j; i < n && !ret; i = j) {
		uint64_t addr = s->claimed_addr[i];
		const unsigned char *data =
			s->frozen ? (const unsigned char *)(uintptr_t)addr :
			s->copy   ? s->copy + s->claimed[i] * s->page : s->bounce + i * s->page;

		/* A stretch [i, j) contiguous in memory and in one run: one
		 * call of the callback sink. */
		if (s->pid && s->unread[i]) {
			j = i + 1;
			continue;
		}
		for (j = i + 1; j < n && s->claimed_run[j] == s->claimed_run[i] &&
				s->claimed_addr[j] == s->claimed_addr[j - 1] + s->page &&
				!(s->pid && s->unread[j]); j++)
			;
		if (s->fn) {
			ret = s->fn(s->arg, addr, data, (j - i) * s->page);
			continue;
		}
		for (size_t k = 0; k < j - i && !ret; k++)
			ret = emit_page(s, &e, s->claimed_run[i], addr + k * s->page,
					data + k * s->page);
	}
	if (!ret && !s->fn)
		ret = emit_flush(s, &e);
	if (!ret)
		atomic_fetch_add(&s->done, n);
	return ret;
}

/* Sleep until a writer publishes a slot (or the snapshot stops). */
static void wait_published(struct uffdwp_snapshot *s)
{
	size_t slot = (size_t)(s->tail % s->nslots);

	atomic_store(&s->saver_sleeping, 1);
	uint32_t gen = atomic_load(&s->pub_gen);

	if (atomic_load(&s->slot_seq[slot]) != s->tail + 1 && !atomic_load(&s->stop))
		futex_wait(&s->pub_gen, gen);
	atomic_store(&s->saver_sleeping, 0);
}

/* The saver's work: everything from the header to the trailer. */
static int save_all(struct uffdwp_snapshot *s)
{
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION,
		.page_size = (uint32_t)s->page,
		.snapshot_id = s->id,
		.parent_id = s->parent_id,
		.time_ns = s->time_ns,
		.region_count = (uint32_t)s->nregions,
		.regions = s->regions,
	};
	uint64_t cursor = 0;
	size_t r = 0;
	int ret;

	if (!s->fn) {
		size_t hlen = uffdwp__format_header_size(h.region_count);
		unsigned char *buf = uffdwp__private_alloc(hlen);

		if (!buf)
			return -ENOMEM;
		ret = uffdwp__encoder_init(&s->enc, &h);
		if (!ret)
			ret = uffdwp__encoder_keep_index(&s->enc);
		if (!ret && s->codec != UFFDWP__CODEC_NONE)
			ret = uffdwp__batcher_init(&s->batcher, &s->enc, s->codec, s->codec_level,
						   BATCH);
		if (!ret) {
			ssize_t n = uffdwp__encode_header(&s->enc, buf, hlen);

			ret = n < 0 ? (int)n : write_buf(s, buf, (size_t)n);
		}
		uffdwp__private_free(buf);
		if (ret)
			return ret;
	}
	while (!atomic_load(&s->stop)) {
		populate_side(s);
		ret = drain_side(s);
		if (ret)
			return ret;
		if (cursor < s->total) {
			size_t n = 0;

			/*
			 * Claim up to BATCH pages, skipping those writers saved,
			 * and stop at one a writer is still copying (it must stay
			 * protected until DONE). With our own context, within
			 * SPAN pages of one run, so that one un-protect covers
			 * them; with a tracker nothing is un-protected and a
			 * batch may gather many small runs.
			 */
			for (; cursor < s->total && n < BATCH; cursor++) {
				uint8_t expected = PAGE_PENDING;

				while (cursor >= s->runs[r].first + s->runs[r].npages)
					r++;
				if (n && s->own_ctx &&
				    (&s->runs[r] != s->claimed_run[0] ||
				     cursor - s->claimed[0] >= SPAN))
					break;
				if (atomic_compare_exchange_strong(&s->state[cursor], &expected,
								   PAGE_CLAIMED)) {
					s->claimed[n] = cursor;
					s->claimed_run[n] = &s->runs[r];
					s->claimed_addr[n++] = addr_of(s, &s->runs[r], cursor);
				} else if (expected == PAGE_CLAIMED && n && s->own_ctx) {
					break;
				}
			}
			if (n && (ret = save_batch(s, n)))
				return ret;
			continue;
		}
		if (atomic_load(&s->done) == s->total)
			break;
		wait_published(s);
	}
	/* Every page is read. An event read before now (a discard, unmap or
	 * remap: its memory may have changed before we read it) must have
	 * stopped us before the trailer says the snapshot is whole. */
	if (s->eng && (uffdwp_features(s->ctx) & UFFDWP_FEATURE_EVENT_REMOVE))
		uffdwp_engine_flush(s->eng);
	else if (s->tracker)
		uffdwp__tracker_flush(s->tracker);
	ret = atomic_load(&s->stop);
	if (ret)
		return ret;
	if (!s->fn) {
		size_t cap = uffdwp__encoder_index_size(&s->enc) + UFFDWP__FORMAT_TRAILER_SIZE;
		unsigned char *buf = uffdwp__private_alloc(cap);
		ssize_t n = buf ? uffdwp__encode_index(&s->enc, buf, cap) : -ENOMEM, m = 0;

		if (n >= 0)
			m = uffdwp__encode_trailer(&s->enc, buf + n, cap - (size_t)n);
		ret = n < 0 ? (int)n : m < 0 ? (int)m : write_buf(s, buf, (size_t)(n + m));
		uffdwp__private_free(buf);
	}
	return ret;
}

/* Let go of the memory: nothing protected by us stays protected, and no
 * fault handler of ours runs after this returns. */
static void release_memory(struct uffdwp_snapshot *s)
{
	if (s->own_ctx) {
		/*
		 * The engine stops while the ranges are still registered: a
		 * writer whose fault is delivered late (preempted between the
		 * fault and its handler) is then still recognised as ours and
		 * let through. After a complete snapshot every page is already
		 * un-protected; otherwise un-protect them all first, since a
		 * fault after the engine stops would be nobody's.
		 */
		bool clear = true;

		if (atomic_load(&s->stop) || atomic_load(&s->done) != s->total)
			for (size_t i = 0; i < s->nregions; i++)
				if (uffdwp_writeprotect(s->ctx,
							(void *)(uintptr_t)s->regions[i].addr,
							s->regions[i].len, 0) < 0)
					clear = false;
		/* Part of a region unmapped: unregistering clears the rest. */
		for (size_t i = 0; i < s->nregions && !clear; i++)
			uffdwp_unregister(s->ctx, (void *)(uintptr_t)s->regions[i].addr,
					  s->regions[i].len);
		uffdwp_engine_stop(s->eng);
		s->eng = NULL;
		for (size_t i = 0; i < s->nregions; i++)
			uffdwp_unregister(s->ctx, (void *)(uintptr_t)s->regions[i].addr,
					  s->regions[i].len);
		if (!s->borrowed_ctx)
			uffdwp_close(s->ctx);
		s->ctx = NULL;
		s->own_ctx = false;
	}
	if (s->tracker) {
		/* On return our interposer is not running and never will. */
		if (s->interposed)
			uffdwp__tracker_set_interposer(s->tracker, NULL, NULL, NULL);
		s->interposed = false;
		/* Saved whole: the next snapshot may be its incremental, unless
		 * the tracker was reset since our instant. */
		if (atomic_load(&s->finished) && s->result == 0)
			uffdwp__tracker_set_parent(s->tracker, s->id, s->tracker_resets);
		s->tracker = NULL;
	}
}

/* Protect bytes [from, to) of the regions laid end to end. */
static int protect_part(struct uffdwp_snapshot *s, uint64_t from, uint64_t to)
{
	uint64_t off = 0;
	int ret = 0;

	for (size_t i = 0; i < s->nregions && !ret && off < to; i++) {
		uint64_t len = s->regions[i].len;
		uint64_t a = from > off ? from - off : 0, b = to - off < len ? to - off : len;

		if (a < b)
			ret = uffdwp_writeprotect(s->ctx, (void *)(uintptr_t)(s->regions[i].addr + a),
						  (size_t)(b - a), UFFDWP_WRITEPROTECT_MODE_WP);
		off += len;
	}
	return ret;
}

/* CPUs this thread may run on (its affinity: a container's cpuset), by a
 * system call: sysconf(_SC_NPROCESSORS_ONLN) reads a file in /sys, a
 * fifth of a millisecond of the pause. */
static int usable_cpus(void)
{
	cpu_set_t set;

	return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
}

/*
 * Protect every region: the instant. UFFDIO_WRITEPROTECT takes the mm lock
 * for reading (fork() takes it for writing), so on the kernel backend two
 * threads protect two halves at once: begin and the saver, which is
 * waiting for its gate anyway. mprotect() (emulated) takes it for writing:
 * one thread.
 */
static int protect_regions(struct uffdwp_snapshot *s)
{
	uint64_t bytes = 0, probe, mid, off = 0, t0, dt;
	int ret;

	for (size_t i = 0; i < s->nregions; i++)
		bytes += s->regions[i].len;
	probe = bytes < 4 * PROTECT_PROBE ? bytes : PROTECT_PROBE;
	t0 = uffdwp__now_ns();
	ret = protect_part(s, 0, probe);
	dt = uffdwp__now_ns() - t0;
	if (ret || probe == bytes)
		return ret;
	if (s->backend != UFFDWP_BACKEND_KERNEL || usable_cpus() < 2 ||
	    dt * ((bytes - probe) / probe) < PARALLEL_PROTECT_NS)
		return protect_part(s, probe, bytes);
	/* The middle of the rest, moved up to a PROTECT_ALIGN address. */
	mid = probe + (bytes - probe) / 2;
	for (size_t i = 0; i < s->nregions; i++) {
		uint64_t len = s->regions[i].len;

		if (mid < off + len) {
			uint64_t at = s->regions[i].addr + (mid - off);
			uint64_t up = (at + PROTECT_ALIGN - 1) & ~(PROTECT_ALIGN - 1);

			mid = off + (up - s->regions[i].addr < len ? up - s->regions[i].addr : len);
			break;
		}
		off += len;
	}
	s->help_from = mid;
	s->help_to = bytes;
	atomic_store(&s->gate, GATE_HELP);
	futex_wake_all(&s->gate);
	ret = protect_part(s, probe, mid);
	while (atomic_load(&s->gate) == GATE_HELP)
		futex_wait(&s->gate, GATE_HELP);
	return ret ? ret : s->help_ret;
}

static void *saver_main(void *arg)
{
	struct uffdwp_snapshot *s = arg;
	uint64_t one = 1;
	int ret;

	atomic_store(&s->saver_tid, gettid());
	bool populated = s->frozen;

	for (;;) {
		uint32_t gate = atomic_load(&s->gate);

		if (gate == GATE_GO || gate == GATE_ABORT)
			break;
		if (gate == GATE_HELP) {
			s->help_ret = protect_part(s, s->help_from, s->help_to);
			atomic_store(&s->gate, GATE_HELPED);
			futex_wake_all(&s->gate);
		} else if (!populated) {
			/* Meanwhile begin is protecting: the first slots are
			 * ready before the first fault. */
			populate_side(s);
			populated = true;
		} else {
			futex_wait(&s->gate, gate);
		}
	}
	if (atomic_load(&s->gate) == GATE_ABORT)
		return NULL;
	ret = save_all(s);
	if (ret)
		stop_with(s, ret);
	/* Our own description of a pipe: its reader sees the end of the
	 * stream once the caller closes theirs. */
	if (s->sink_fd != s->fd) {
		close(s->sink_fd);
		s->sink_fd = -1;
	}
	/* The memory is let go in uffdwp_snapshot_end(), not here: a writer
	 * whose fault was raised while its page was protected but whose
	 * signal handler runs late (the thread was preempted in between)
	 * must still find the engine that recognises the fault as ours.
	 * The first error wins: a cancel that interrupted a write to the
	 * sink is -ECANCELED, not the write's error. */
	s->result = ret ? atomic_load(&s->stop) : 0;
	atomic_store(&s->finished, 1);
	while (write(s->efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
	return NULL;
}

/* ---- begin ------------------------------------------------------------- */

static int by_addr(const void *a, const void *b)
{
	const struct uffdwp_snapshot_region *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

struct page_check {
	size_t page;
	bool other;  /* a mapping of another page size seen */
};

static bool of_page_size(void *arg, const struct uffdwp__mapping *m)
{
	struct page_check *c = arg;

	c->other = m->page != c->page;
	return !c->other;
}

/* Copy, sort and check the regions. */
static int take_regions(struct uffdwp_snapshot *s, const struct uffdwp_snapshot_region *regions,
			size_t n)
{
	uint64_t mask = s->page - 1;

	if (!regions || n == 0 || n > UFFDWP__FORMAT_MAX_REGIONS)
		return -EINVAL;
	s->regions = uffdwp__private_calloc(n, sizeof(*regions));
	if (!s->regions)
		return -ENOMEM;
	memcpy(s->regions, regions, n * sizeof(*regions));
	s->nregions = n;
	qsort(s->regions, n, sizeof(*regions), by_addr);
	for (size_t i = 0; i < n; i++) {
		const struct uffdwp_snapshot_region *g = &s->regions[i];

		if ((g->addr & mask) || (g->len & mask) || g->len == 0 ||
		    g->addr + g->len < g->addr)
			return -EINVAL;
		if (i && s->regions[i - 1].addr + s->regions[i - 1].len > g->addr)
			return -EINVAL;
		/* Saved, copied and un-protected in base pages: hugetlbfs
		 * memory would fail mid-save (its pages split no further).
		 * (PROCMAP_QUERY tells page sizes for a few microseconds.) */
		if (!s->pid) {
			struct page_check c = { .page = s->page };

			if (uffdwp__walk_mappings(g->addr, g->addr + g->len,
						  UFFDWP__MAPS_PAGE_SIZES, of_page_size, &c) == 0 &&
			    c.other)
				return -EINVAL;
		}
	}
	return 0;
}

/* The page state array (zero = PENDING), mapped so that it costs nothing
 * until touched. */
static int alloc_state(struct uffdwp_snapshot *s)
{
	s->state_len = (size_t)s->total ? (size_t)s->total : 1;
	s->state = mmap(NULL, s->state_len, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (s->state == MAP_FAILED) {
		s->state = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* Append a run, merging it with the last one when contiguous within one
 * region (a ZERO record must lie in one region). The caller has room. */
static void add_run(struct uffdwp_snapshot *s, uint64_t addr, uint64_t npages,
		    bool starts_region)
{
	struct run *last = s->nruns ? &s->runs[s->nruns - 1] : NULL;

	if (last && !starts_region && last->addr + last->npages * s->page == addr) {
		last->npages += npages;
	} else {
		s->runs[s->nruns] = (struct run){ addr, npages, s->total };
		s->nruns++;
	}
	s->total += npages;
}

/* The regions as the set (a full snapshot). */
static int set_from_regions(struct uffdwp_snapshot *s)
{
	s->runs = uffdwp__private_calloc(s->nregions, sizeof(*s->runs));
	if (!s->runs)
		return -ENOMEM;
	for (size_t i = 0; i < s->nregions; i++)
		add_run(s, s->regions[i].addr, s->regions[i].len / s->page, true);
	return alloc_state(s);
}

/* The tracker's written runs as the set, resetting the tracker (an
 * incremental snapshot). Runs never cross a tracked range, and the tracker
 * tracks exactly the regions, so no run crosses a region. */
static int set_from_tracker(struct uffdwp_snapshot *s)
{
	struct uffdwp_run chunk[COLLECT_CHUNK];
	size_t cap = 0;
	uintptr_t cursor = 0;
	int n;

	while ((n = uffdwp_tracker_collect(s->tracker, &cursor, chunk, COLLECT_CHUNK,
					   UFFDWP_COLLECT_RESET)) > 0) {
		if (s->nruns + (size_t)n > cap) {
			size_t ncap = cap ? 2 * cap : 4 * COLLECT_CHUNK;
			struct run *nr = uffdwp__private_realloc(s->runs, ncap * sizeof(*nr));

			if (!nr)
				return -ENOMEM;
			s->runs = nr;
			cap = ncap;
		}
		for (int i = 0; i < n; i++) {
			uint64_t addr = (uintptr_t)chunk[i].addr;
			const struct uffdwp_snapshot_region key = { addr, 0 };
			const struct uffdwp_snapshot_region *g = NULL;

			/* The region at or before addr must hold the run. */
			for (size_t lo = 0, hi = s->nregions; lo < hi;) {
				size_t mid = lo + (hi - lo) / 2;

				if (by_addr(&s->regions[mid], &key) <= 0) {
					g = &s->regions[mid];
					lo = mid + 1;
				} else {
					hi = mid;
				}
			}
			if (!g || addr + chunk[i].len > g->addr + g->len)
				return -EINVAL;
			add_run(s, addr, chunk[i].len / s->page, addr == g->addr);
		}
	}
	return n < 0 ? n : alloc_state(s);
}

static uint64_t new_id(void)
{
	static _Atomic uint64_t counter;
	uint64_t id = 0;

	if (getrandom(&id, sizeof(id), GRND_NONBLOCK) != sizeof(id))
		id = uffdwp__clock_ns(CLOCK_REALTIME) ^ ((uint64_t)getpid() << 32);
	id += atomic_fetch_add(&counter, 1) * UINT64_C(0x9e3779b97f4a7c15);
	return id ? id : 1;
}

/* Open our own context and engine on the regions (no tracker). */
static int open_own(struct uffdwp_snapshot *s, const struct uffdwp_snapshot_opts *o)
{
	const uint64_t need = UFFDWP_FEATURE_PAGEFAULT_FLAG_WP | UFFDWP_FEATURE_WP_UNPOPULATED;
	struct uffdwp_engine_opts eo = { .sz = sizeof(eo), .mode = o->engine_mode,
					 .fn = on_fault, .arg = s };
	int ret = -EOPNOTSUPP;

	if (o->context) {
		/* In-thread modes would run in the context's process, which
		 * may not be ours: a handler thread of ours serves it. */
		s->ctx = o->context;
		s->borrowed_ctx = true;
		s->events = o->events;
		eo.mode = UFFDWP_ENGINE_THREAD;
		ret = 0;
	} else if (o->engine_mode == UFFDWP_ENGINE_CALLER) {
		return -EINVAL;
	} else if (o->backend == UFFDWP_BACKEND_AUTO || o->backend == UFFDWP_BACKEND_KERNEL) {
		/* Never-touched pages must fault too (WP_UNPOPULATED); SIGBUS
		 * lets the faulting thread copy its own page (in-thread). */
		/* The events tell of a region discarded, unmapped or moved
		 * under us (on_change()). */
		struct uffdwp_opts uo = { .sz = sizeof(uo), .backend = UFFDWP_BACKEND_KERNEL,
					  .features = need | UFFDWP_FEATURE_THREAD_ID |
						      UFFDWP_FEATURE_EVENT_REMOVE |
						      UFFDWP_FEATURE_EVENT_UNMAP |
						      UFFDWP_FEATURE_EVENT_REMAP };

		if (o->engine_mode != UFFDWP_ENGINE_THREAD)
			uo.features |= UFFDWP_FEATURE_SIGBUS;
		ret = uffdwp_open(&s->ctx, &uo);
		if (ret == -EOPNOTSUPP && o->engine_mode == UFFDWP_ENGINE_AUTO) {
			uo.features &= ~UFFDWP_FEATURE_SIGBUS;
			ret = uffdwp_open(&s->ctx, &uo);
		}
		if (ret < 0 && (o->backend == UFFDWP_BACKEND_KERNEL || ret == -EINVAL ||
				ret == -ENOMEM || ret == -EMFILE || ret == -ENFILE))
			return ret;
	}
	if (ret < 0) {
		struct uffdwp_opts uo = { .sz = sizeof(uo), .backend = UFFDWP_BACKEND_EMULATED };

		if (o->backend != UFFDWP_BACKEND_AUTO && o->backend != UFFDWP_BACKEND_EMULATED)
			return -EINVAL;
		ret = uffdwp_open(&s->ctx, &uo);
		if (ret < 0)
			return ret;
	}
	s->own_ctx = true;  /* from here on, destroy() closes it */
	if (!(uffdwp_features(s->ctx) & UFFDWP_FEATURE_WP_UNPOPULATED))
		return -EOPNOTSUPP;
	for (size_t i = 0; i < s->nregions; i++) {
		ret = uffdwp_register(s->ctx, (void *)(uintptr_t)s->regions[i].addr,
				      s->regions[i].len, UFFDWP_REGISTER_MODE_WP);
		if (ret)
			return ret;
	}
	ret = uffdwp_engine_start(&s->eng, s->ctx, &eo);
	if (!ret)
		s->engine_mode = uffdwp_engine_mode(s->eng);
	return ret;
}

/* The side buffer and the saver's bounce buffer. */
static int alloc_buffers(struct uffdwp_snapshot *s, size_t side_bytes)
{
	s->nslots = side_bytes / s->page;
	if (s->nslots == 0)
		s->nslots = 1;
	if (s->nslots > UINT32_MAX)
		s->nslots = UINT32_MAX;
	s->side = mmap(NULL, s->nslots * s->page, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (s->side == MAP_FAILED) {
		s->side = NULL;
		return -ENOMEM;
	}
	s->slot_addr = uffdwp__private_calloc(s->nslots, sizeof(*s->slot_addr));
	s->slot_seq = uffdwp__private_calloc(s->nslots, sizeof(*s->slot_seq));
	s->bounce = uffdwp__private_alloc(BATCH * s->page);
	if (!s->slot_addr || !s->slot_seq || !s->bounce)
		return -ENOMEM;
	atomic_store(&s->avail, (uint32_t)s->nslots);
	return 0;
}

/* Tracker: what wait_ready() sleeps on. */
static int watch_context(struct uffdwp_snapshot *s)
{
	struct epoll_event ready = { .events = EPOLLIN }, ctx = { .events = EPOLLIN | EPOLLET };

	s->ready_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->ready_efd < 0)
		return -errno;
	s->ready_ep = epoll_create1(EPOLL_CLOEXEC);
	if (s->ready_ep < 0)
		return -errno;
	if (epoll_ctl(s->ready_ep, EPOLL_CTL_ADD, s->ready_efd, &ready) < 0)
		return -errno;
	if (uffdwp_backend(s->ctx) == UFFDWP_BACKEND_KERNEL &&
	    epoll_ctl(s->ready_ep, EPOLL_CTL_ADD, uffdwp_fd(s->ctx), &ctx) < 0)
		return -errno;
	return 0;
}

/* ---- the live snapshots of this process --------------------------------- */

/*
 * Every snapshot from begin to end, whatever its backend: two snapshots of
 * the same memory are refused (-EBUSY) even where their backends cannot
 * see each other's protection (a kernel context and the emulation), and a
 * fork(2) finds the running ones (fork_prepare()).
 */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uffdwp_snapshot *live;
static pthread_once_t live_once = PTHREAD_ONCE_INIT;
static bool live_atfork;

/* Whether two snapshots' sorted regions overlap. */
static bool overlaps(const struct uffdwp_snapshot *a, const struct uffdwp_snapshot *b)
{
	if (a->pid != b->pid)
		return false;  /* addresses of different processes */
	for (size_t i = 0, j = 0; i < a->nregions && j < b->nregions;) {
		const struct uffdwp_snapshot_region *x = &a->regions[i], *y = &b->regions[j];

		if (x->addr + x->len <= y->addr)
			i++;
		else if (y->addr + y->len <= x->addr)
			j++;
		else
			return true;
	}
	return false;
}

static bool found_shared(void *arg, const struct uffdwp__mapping *m)
{
	*(bool *)arg = m->shared;
	return !m->shared;
}

/* Whether part of s's regions is a MAP_SHARED mapping; true when the
 * mappings cannot be read (it cannot be ruled out). */
static bool shares_memory(const struct uffdwp_snapshot *s)
{
	bool shared = false;

	for (size_t i = 0; i < s->nregions && !shared; i++)
		if (uffdwp__walk_mappings(s->regions[i].addr, s->regions[i].addr + s->regions[i].len,
					  0, found_shared, &shared) < 0)
			return true;
	return shared;
}

/*
 * A child forked while a snapshot runs shares the MAP_SHARED part of its
 * regions, unprotected (protection is per process): its writes would reach
 * pages not yet saved. Such a snapshot fails with -ESTALE before the child
 * exists. Private memory is the child's own copy and needs nothing.
 */
static void fork_prepare(void)
{
	pid_t self = getpid();

	pthread_mutex_lock(&live_lock);
	for (struct uffdwp_snapshot *s = live; s; s = s->next_live)
		if (s->owner == self && !s->pid && !atomic_load(&s->finished) &&
		    !atomic_load(&s->stop) && shares_memory(s))
			stop_with(s, -ESTALE);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&live_lock);
}

/* The child's copies are inert (uffdwp_snapshot_wait(): -ECHILD) and
 * never ended: they must not make its own snapshots -EBUSY. */
static void fork_child(void)
{
	live = NULL;
	pthread_mutex_unlock(&live_lock);
}

static void register_atfork(void)
{
	live_atfork = pthread_atfork(fork_prepare, fork_parent, fork_child) == 0;
}

/* Enter s in the registry: -EBUSY if a live snapshot overlaps it. */
static int list_live(struct uffdwp_snapshot *s)
{
	int ret = 0;

	pthread_once(&live_once, register_atfork);
	if (!live_atfork)
		return -ENOMEM;  /* pthread_atfork()'s only failure */
	pthread_mutex_lock(&live_lock);
	for (struct uffdwp_snapshot *o = live; o && !ret; o = o->next_live)
		if (overlaps(o, s))
			ret = -EBUSY;
	if (!ret) {
		s->next_live = live;
		live = s;
		s->listed = true;
	}
	pthread_mutex_unlock(&live_lock);
	return ret;
}

static void unlist_live(struct uffdwp_snapshot *s)
{
	pthread_mutex_lock(&live_lock);
	for (struct uffdwp_snapshot **p = &live; *p; p = &(*p)->next_live)
		if (*p == s) {
			*p = s->next_live;
			break;
		}
	pthread_mutex_unlock(&live_lock);
	s->listed = false;
}

/* ---- room for the side buffer ------------------------------------------- */

static bool read_text(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return false;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return true;
}

/*
 * What the memory cgroup at dir can still take, in bytes: its limit less
 * its usage, inactive page cache counted as free (it is reclaimed first;
 * read only when the rest is short of need); UINT64_MAX without a limit.
 */
static uint64_t cgroup_room(const char *dir, bool v2, uint64_t need)
{
	char path[PATH_MAX + 32], buf[8192];
	unsigned long long limit, usage, cache = 0;
	const char *p;

	snprintf(path, sizeof(path), "%s/%s", dir, v2 ? "memory.max" : "memory.limit_in_bytes");
	if (!read_text(path, buf, sizeof(buf)) || sscanf(buf, "%llu", &limit) != 1)
		return UINT64_MAX;  /* "max", or no such file: no limit here */
	snprintf(path, sizeof(path), "%s/%s", dir, v2 ? "memory.current" : "memory.usage_in_bytes");
	if (!read_text(path, buf, sizeof(buf)) || sscanf(buf, "%llu", &usage) != 1)
		return UINT64_MAX;
	snprintf(path, sizeof(path), "%s/memory.stat", dir);
	if (usage < limit && limit - usage >= need)
		return limit - usage;
	if (read_text(path, buf, sizeof(buf)) &&
	    (p = strstr(buf, v2 ? "\ninactive_file " : "\ntotal_inactive_file ")))
		sscanf(strchr(p + 1, ' '), "%llu", &cache);
	if (cache > usage)
		cache = usage;
	return usage - cache >= limit ? 0 : limit - (usage - cache);
}

/*
 * -ENOMEM when the process's memory cgroup (v1 or v2, this one and its
 * ancestors) has less room than need: the side buffer filling up would
 * then have the process killed by the OOM killer in the middle of a
 * snapshot, where failing at begin is a clean error. The room can shrink
 * later (other processes of the cgroup); this catches the configuration
 * that can never work.
 */
static int check_room(uint64_t need)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	char *line = NULL, dir[PATH_MAX], cg[PATH_MAX] = "";
	size_t cap = 0;
	const char *base = NULL;
	uint64_t room = UINT64_MAX;
	bool v2 = false;

	if (!f)
		return 0;
	while (getline(&line, &cap, f) > 0) {
		char *ctrl = strchr(line, ':'), *path = ctrl ? strchr(ctrl + 1, ':') : NULL;

		if (!path)
			continue;
		*path++ = '\0';
		path[strcspn(path, "\n")] = '\0';
		ctrl++;
		if (!strcmp(ctrl, "memory") || strstr(ctrl, ",memory") ||
		    !strncmp(ctrl, "memory,", 7)) {
			base = "/sys/fs/cgroup/memory";  /* v1 wins: it is the one in force */
			v2 = false;
			snprintf(cg, sizeof(cg), "%s", path);
			break;
		}
		if (!*ctrl && line[0] == '0') {
			base = access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0 ?
				       "/sys/fs/cgroup" : "/sys/fs/cgroup/unified";
			v2 = true;
			snprintf(cg, sizeof(cg), "%s", path);
		}
	}
	free(line);
	fclose(f);
	while (base && *cg) {
		char *slash = strrchr(cg, '/');
		uint64_t r;

		snprintf(dir, sizeof(dir), "%s%s", base, cg);
		r = cgroup_room(dir, v2, need);
		room = r < room ? r : room;
		if (!slash || slash == cg)
			break;
		*slash = '\0';
	}
	return room < need ? -ENOMEM : 0;
}

/* ---- the sink and the instant ------------------------------------------- */

/*
 * What the saver writes to. A blocking pipe or FIFO would keep it in a
 * write(2) for as long as the reader stalls, where no cancel can reach it:
 * it gets a non-blocking description of its own for the same pipe
 * (/proc/self/fd; the caller's O_NONBLOCK flag, shared with the caller,
 * is left alone), a socket send(2)s with MSG_DONTWAIT, and either then
 * waits in poll(2) for room or for a stop. A regular file never stalls.
 * Without /proc the pipe is written as given and a cancel waits for room.
 */
static void open_sink(struct uffdwp_snapshot *s)
{
	struct stat st;
	char path[64];
	int fd;

	s->sink_fd = s->fd;
	if (s->fn || fstat(s->fd, &st) < 0)
		return;
	if (S_ISSOCK(st.st_mode)) {
		s->sink_socket = true;
		return;
	}
	if (!S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode))
		return;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", s->fd);
	fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd >= 0)
		s->sink_fd = fd;
}

/* Open /proc/self/pagemap for check_resident() and learn the zero page's
 * frame; without /proc nothing is checked. */
static int open_pagemap(struct uffdwp_snapshot *s)
{
	uint64_t e;
	void *scratch = mmap(NULL, s->page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	s->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (s->pagemap_fd >= 0) {
		s->resident = uffdwp__private_calloc((size_t)(s->total + 63) / 64, sizeof(*s->resident));
		if (!s->resident) {
			close(s->pagemap_fd);
			s->pagemap_fd = -1;
		}
	}
	/* A page read and never written maps the zero page. */
	if (scratch != MAP_FAILED) {
		if (s->pagemap_fd >= 0 && *(volatile char *)scratch == 0 &&
		    pread(s->pagemap_fd, &e, sizeof(e),
			  (off_t)((uintptr_t)scratch / s->page * sizeof(e))) == sizeof(e) &&
		    (e & PM_PRESENT))
			s->zero_pfn = e & PM_PFN_MASK;
		munmap(scratch, s->page);
	}
	return s->pagemap_fd >= 0 && !s->resident ? -ENOMEM : 0;
}

/*
 * Emulated backend: mark the pages of the set that hold memory now
 * (check_resident()). Called before the instant and again after it, and
 * the marks add up: a writer may copy a page meanwhile (it checks the
 * marks so far), and neither call waits for the writers.
 */
static int note_resident(struct uffdwp_snapshot *s)
{
	uint64_t e[512];

	if (!s->resident)
		return 0;
	for (size_t r = 0; r < s->nruns; r++) {
		const struct run *run = &s->runs[r];

		for (uint64_t done = 0; done < run->npages;) {
			uint64_t k = run->npages - done < 512 ? run->npages - done : 512;
			uint64_t addr = run->addr + done * s->page;
			ssize_t got = pread(s->pagemap_fd, e, k * sizeof(e[0]),
					    (off_t)(addr / s->page * sizeof(e[0])));

			if (got != (ssize_t)(k * sizeof(e[0])))
				return got < 0 ? -errno : -EFAULT;
			for (uint64_t i = 0; i < k; i++) {
				uint64_t bit = run->first + done + i;

				bool zero = s->zero_pfn && (e[i] & PM_PFN_MASK) == s->zero_pfn;

				if ((e[i] & PM_SWAPPED) || ((e[i] & PM_PRESENT) && !zero))
					atomic_fetch_or_explicit(&s->resident[bit / 64],
								 UINT64_C(1) << (bit % 64),
								 memory_order_relaxed);
			}
			done += k;
		}
	}
	return 0;
}

static int start_saver(struct uffdwp_snapshot *s)
{
	sigset_t old;
	int ret;

	/* The saver takes no asynchronous signals: a closed pipe is EPIPE,
	 * not SIGPIPE, and the program's handlers never run on our thread.
	 * A write it makes to protected memory still reaches the fault
	 * handler (its own state is in private memory: it makes none of
	 * its own). */
	uffdwp__block_async_signals(&old);
	ret = -pthread_create(&s->thread, NULL, saver_main, s);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	s->thread_started = ret == 0;
	return ret;
}

static void destroy(struct uffdwp_snapshot *s)
{
	if (s->thread_started) {
		/* Begin never fails while the saver helps it (it waits for
		 * HELPED): any gate but GO stops the saver. */
		if (atomic_load(&s->gate) != GATE_GO) {
			atomic_store(&s->gate, GATE_ABORT);
			futex_wake_all(&s->gate);
		}
		pthread_join(s->thread, NULL);
	}
	if (s->tracker || s->own_ctx)
		release_memory(s);
	if (s->listed)
		unlist_live(s);
	if (s->sink_fd >= 0 && s->sink_fd != s->fd)
		close(s->sink_fd);
	if (s->pagemap_fd >= 0)
		close(s->pagemap_fd);
	if (s->stop_efd >= 0)
		close(s->stop_efd);
	if (s->efd >= 0)
		close(s->efd);
	if (s->ready_ep >= 0)
		close(s->ready_ep);
	if (s->ready_efd >= 0)
		close(s->ready_efd);
	if (s->state)
		munmap(s->state, s->state_len);
	if (s->side)
		munmap(s->side, s->nslots * s->page);
	if (s->copy)
		munmap(s->copy, (size_t)s->total * s->page);
	uffdwp__private_free(s->resident);
	uffdwp__private_free(s->slot_addr);
	uffdwp__private_free(s->slot_seq);
	uffdwp__private_free(s->bounce);
	uffdwp__batcher_release(&s->batcher);
	uffdwp__encoder_release(&s->enc);
	uffdwp__private_free(s->runs);
	uffdwp__private_free(s->regions);
	uffdwp__private_free(s);
}

/* A snapshot with nothing opened yet (destroy() may take it from here). */
static struct uffdwp_snapshot *create(void)
{
	struct uffdwp_snapshot *s = uffdwp__private_alloc(sizeof(*s));

	if (!s)
		return NULL;
	s->page = uffdwp__page_size();
	s->fd = s->sink_fd = -1;
	s->efd = s->stop_efd = s->ready_efd = s->ready_ep = s->pagemap_fd = -1;
	s->vm_readv = true;
	s->id = new_id();
	s->owner = getpid();
	return s;
}

/* The instant with a tracker: reset it (full) or collect what was written
 * since the parent (incremental); every page of the set ends protected. */
static int begin_async(struct uffdwp_snapshot *s, struct uffdwp_tracker *t,
		       const struct uffdwp_snapshot_opts *o);

static int begin_tracked(struct uffdwp_snapshot *s, struct uffdwp_tracker *t,
			 const struct uffdwp_snapshot_opts *o)
{
	int ret;

	s->tracker_method = uffdwp_tracker_method(t);
	/* Before anything changes: a reset of more than the regions would
	 * lose the tracker's answer for the rest, and an incremental of
	 * another parent would restore to the wrong memory. */
	if (!uffdwp__tracker_tracks_exactly(t, s->regions, s->nregions) ||
	    (s->parent_id && s->parent_id != uffdwp__tracker_parent(t)))
		return -EINVAL;
	if (s->tracker_method == UFFDWP_TRACK_ASYNC)
		return begin_async(s, t, o);
	s->ctx = uffdwp__tracker_context(t);
	s->backend = uffdwp_backend(s->ctx);
	s->granule = uffdwp_tracker_granule(t);
	ret = watch_context(s);
	if (!ret)
		ret = uffdwp__tracker_set_interposer(t, on_tracked_write, on_change, s);
	if (ret)
		return ret;
	s->interposed = true;
	s->tracker = t;
	ret = start_saver(s);
	if (ret)
		return ret;
	if (s->parent_id) {
		ret = set_from_tracker(s);
	} else {
		ret = uffdwp_tracker_reset(t, NULL, 0);
		if (!ret)
			ret = set_from_regions(s);
	}
	s->time_ns = uffdwp__clock_ns(CLOCK_REALTIME);
	s->tracker_resets = uffdwp__tracker_resets(t);
	/* Writers wait for the set (wait_ready()): one pass suffices. */
	if (!ret && s->backend == UFFDWP_BACKEND_EMULATED)
		ret = open_pagemap(s);
	if (!ret)
		ret = note_resident(s);
	return ret ? ret : atomic_load(&s->stop);  /* a writer gave up waiting */
}

/* The instant without a tracker: our own context protects the regions. */
static int begin_own(struct uffdwp_snapshot *s, const struct uffdwp_snapshot_opts *o)
{
	int ret = set_from_regions(s);

	if (!ret)
		ret = open_own(s, o);
	if (!ret)
		ret = start_saver(s);
	if (ret)
		return ret;
	s->backend = uffdwp_backend(s->ctx);
	set_ready(s);  /* faults need nothing more than the set */
	if (s->backend == UFFDWP_BACKEND_EMULATED) {
		ret = open_pagemap(s);
		if (!ret)
			ret = note_resident(s);
	}
	/* Read by faulting threads: engine_mode was set after the engine
	 * could run. */
	atomic_store(&s->inthread_writers, s->engine_mode == UFFDWP_ENGINE_INTHREAD);
	if (!ret)
		ret = protect_regions(s);
	if (!ret)
		set_instant(s);
	s->time_ns = uffdwp__clock_ns(CLOCK_REALTIME);
	/* Pages that came to hold memory just before the instant. */
	if (!ret)
		ret = note_resident(s);
	return ret;
}

/* Copy the set (an ASYNC incremental's) into s->copy, set index order. */
static int copy_set(struct uffdwp_snapshot *s)
{
	struct iovec remote[256];
	size_t n = 0, r = 0;

	if (!s->total)
		return 0;
	s->copy = mmap(NULL, (size_t)s->total * s->page, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (s->copy == MAP_FAILED) {
		s->copy = NULL;
		return -ENOMEM;
	}
	/* Faulting the copy in is most of its cost in 4 KiB pages. */
	madvise(s->copy, (size_t)s->total * s->page, MADV_HUGEPAGE);
	/* Runs in set order are laid end to end in the copy: a batch of
	 * them is one local buffer. */
	while (r < s->nruns) {
		uint64_t first = s->runs[r].first;
		size_t bytes = 0;

		for (n = 0; n < 256 && r < s->nruns; n++, r++) {
			remote[n] = (struct iovec){ (void *)(uintptr_t)s->runs[r].addr,
						    (size_t)s->runs[r].npages * s->page };
			bytes += remote[n].iov_len;
		}
		struct iovec local = { s->copy + first * s->page, bytes };
		ssize_t got = process_vm_readv(getpid(), &local, 1, remote, n, 0);

		if (got != (ssize_t)bytes)
			return -EFAULT;  /* unmapped under us */
	}
	atomic_store(&s->side_peak, s->total);
	return 0;
}

/*
 * An ASYNC tracker resolves write faults in the kernel: nothing reaches us
 * to copy before a write. So:
 *  - a full snapshot protects the regions a second way, with its own
 *    emulated context (mprotect and SIGSEGV). Permissions are checked
 *    before userfaultfd write-protection, so a write faults to us first,
 *    copies its page, and is then marked written for the tracker by the
 *    kernel. The tracker is reset just before the regions are protected:
 *    a write in between is in the snapshot and also in the next
 *    incremental, never in neither;
 *  - an incremental copies the pages written since its parent during
 *    begin (collected with reset, so later writes are the next one's):
 *    the written set is small by definition, and after begin nothing is
 *    protected, nothing faults, and the saver saves the copy. Its pause
 *    and its extra memory grow with the written pages.
 */
static int begin_async(struct uffdwp_snapshot *s, struct uffdwp_tracker *t,
		       const struct uffdwp_snapshot_opts *o)
{
	int ret;

	s->tracker = t;
	if (!s->parent_id) {
		struct uffdwp_snapshot_opts own = *o;

		own.backend = UFFDWP_BACKEND_EMULATED;
		ret = uffdwp_tracker_reset(t, NULL, 0);
		s->tracker_resets = uffdwp__tracker_resets(t);
		return ret ? ret : begin_own(s, &own);
	}
	s->backend = UFFDWP_BACKEND_KERNEL;
	ret = start_saver(s);
	if (!ret)
		ret = set_from_tracker(s);
	s->time_ns = uffdwp__clock_ns(CLOCK_REALTIME);
	s->tracker_resets = uffdwp__tracker_resets(t);
	return ret ? ret : copy_set(s);
}

int uffdwp_snapshot_begin(struct uffdwp_snapshot **snap,
			  const struct uffdwp_snapshot_region *regions, size_t nregions,
			  const struct uffdwp_snapshot_opts *opts)
{
	uint64_t t0 = uffdwp__now_ns();
	struct uffdwp_snapshot_opts o = { 0 };
	enum uffdwp__codec_id codec;
	struct uffdwp_snapshot *s;
	uint64_t bytes = 0;
	size_t side;
	int ret;

	if (!snap || !opts)
		return -EINVAL;
	ret = uffdwp__opts_check(opts, opts->sz,
				 UFFDWP__OPTS_END(struct uffdwp_snapshot_opts, parent_id), sizeof(o));
	if (ret)
		return ret;
	UFFDWP__OPTS_COPY(o, opts);
	/* fd 0 means "unset" (a zeroed struct names no sink, never stdin). */
	if ((!o.fn && o.fd <= 0) || (o.parent_id && !o.tracker) || (o.context && o.tracker))
		return -EINVAL;
	if (uffdwp__codec_choose(o.codec, o.codec_level, &codec) < 0)
		return -EINVAL;
	s = create();
	if (!s)
		return -ENOMEM;
	s->fd = o.fd;
	s->fn = o.fn;
	s->arg = o.arg;
	s->parent_id = o.parent_id;
	s->codec = codec;
	s->codec_level = o.codec_level;
	s->pid = o.context ? o.context->pid : 0;  /* before list_live(): overlaps() */
	s->begin_tid = gettid();
	ret = take_regions(s, regions, nregions);
	if (!ret) {
		struct uffdwp__format_header h = {
			.version = UFFDWP__FORMAT_VERSION, .page_size = (uint32_t)s->page,
			.snapshot_id = s->id, .parent_id = s->parent_id,
			.region_count = (uint32_t)s->nregions, .regions = s->regions,
		};

		/* The encoder's own check of the header, before anything is
		 * protected (the saver encodes it again with the instant). */
		ret = uffdwp__encoder_init(&s->enc, &h);
	}
	side = o.side_buffer ? o.side_buffer : UFFDWP_SNAPSHOT_SIDE_BUFFER_DEFAULT;
	for (size_t i = 0; !ret && i < s->nregions; i++)
		bytes += s->regions[i].len;
	/* The side buffer never holds more than the regions. */
	if (!ret)
		ret = check_room((bytes < side ? bytes : side) + BATCH * s->page);
	if (!ret)
		ret = alloc_buffers(s, side);
	if (!ret) {
		s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		s->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (s->efd < 0 || s->stop_efd < 0)
			ret = -errno;
	}
	if (!ret)
		ret = list_live(s);
	if (ret)
		goto fail;
	open_sink(s);
	ret = o.tracker ? begin_tracked(s, o.tracker, &o) : begin_own(s, &o);
	if (ret)
		goto fail;
	set_ready(s);
	atomic_store(&s->gate, GATE_GO);
	futex_wake_all(&s->gate);
	*snap = s;
	/* The pause as the caller sees it: from the call to the return. */
	s->begin_ns = uffdwp__now_ns() - t0;
	return 0;
fail:
	stop_with(s, ret);  /* releases writers waiting for the instant */
	destroy(s);
	return ret;
}

uint64_t uffdwp_snapshot_id(const struct uffdwp_snapshot *snap)
{
	return snap ? snap->id : 0;
}

int uffdwp_snapshot_fd(const struct uffdwp_snapshot *snap)
{
	return snap ? snap->efd : -EINVAL;
}

int uffdwp_snapshot_method(const struct uffdwp_snapshot *snap, struct uffdwp_snapshot_method *m)
{
	struct uffdwp_snapshot_method out = { 0 };

	if (!snap || !m || m->sz < UFFDWP__OPTS_END(struct uffdwp_snapshot_method, track_method))
		return -EINVAL;
	out.sz = m->sz;
	out.backend = snap->backend;
	out.engine_mode = snap->engine_mode;
	out.track_method = snap->tracker_method;
	out.incremental = snap->parent_id != 0;
	memcpy(m, &out, m->sz < sizeof(out) ? m->sz : sizeof(out));
	return 0;
}

int uffdwp_snapshot_wait(struct uffdwp_snapshot *snap, int timeout_ms)
{
	struct pollfd p = { .fd = snap ? snap->efd : -1, .events = POLLIN };

	if (!snap)
		return -EINVAL;
	if (getpid() != snap->owner)
		return -ECHILD;  /* its saver thread runs in the parent only */

	while (!atomic_load(&snap->finished)) {
		int n = poll(&p, 1, timeout_ms);

		if (n < 0 && errno != EINTR)
			return -errno;
		if (n == 0)
			return -ETIMEDOUT;
	}
	return snap->result;
}

int uffdwp_snapshot_progress(const struct uffdwp_snapshot *snap,
			     struct uffdwp_snapshot_progress *p)
{
	if (!snap || !p || p->sz < offsetof(struct uffdwp_snapshot_progress, finished) +
					   sizeof(p->finished))
		return -EINVAL;
	p->pages_total = snap->total;
	p->pages_done = atomic_load(&snap->done);
	p->pages_copied = atomic_load(&snap->copied);
	p->writer_waits = atomic_load(&snap->waits);
	p->side_peak = atomic_load(&snap->side_peak) * snap->page;
	p->bytes_out = atomic_load(&snap->bytes_out);
	p->begin_ns = snap->begin_ns;
	p->finished = atomic_load(&snap->finished);
	return 0;
}

void uffdwp_snapshot_cancel(struct uffdwp_snapshot *snap)
{
	/* In a fork child stopping would signal the parent's descriptors. */
	if (snap && getpid() == snap->owner && !atomic_load(&snap->finished))
		stop_with(snap, -ECANCELED);
}

int uffdwp_snapshot_end(struct uffdwp_snapshot *snap)
{
	int ret;

	if (!snap)
		return 0;
	ret = uffdwp_snapshot_wait(snap, -1);
	if (ret != -ECHILD)  /* a child's copy has no thread to join: left as is */
		destroy(snap);
	return ret;
}

int uffdwp__snapshot_write_frozen(int fd, const struct uffdwp_snapshot_region *regions,
				  size_t nregions)
{
	struct uffdwp_snapshot *s = create();
	int ret;

	if (!s)
		return -ENOMEM;
	s->fd = s->sink_fd = fd;
	s->frozen = true;
	s->time_ns = uffdwp__clock_ns(CLOCK_REALTIME);
	set_ready(s);
	ret = take_regions(s, regions, nregions);
	if (!ret)
		ret = alloc_buffers(s, s->page);
	if (!ret)
		ret = set_from_regions(s);
	if (!ret)
		ret = save_all(s);
	destroy(s);
	return ret;
}
