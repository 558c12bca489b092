/* SPDX-License-Identifier: MIT */
/*
 * The fault-signal layer: the one place that decides what happens to a
 * SIGSEGV (emulated backend) or SIGBUS (kernel SIGBUS contexts, in-thread
 * engines). Both backends use it; neither installs a handler of its own.
 *
 *  - A handler is installed once per signal, when the first user needs it,
 *    and never removed: a fault raised while a context was open may be
 *    delivered after it closed (the writer was preempted between the fault
 *    and the delivery), and must then retry its write, not meet a default
 *    action that kills the process.
 *  - Each signal has one claimant (emulated.c for SIGSEGV, engine.c for
 *    SIGBUS) that finds the fault's owner among the open contexts without
 *    locks (the emulated range table, the registry below) and answers:
 *    handled (retry the write), protected by an open context with nobody
 *    resolving it now or kept protected by its resolver (wait), or not
 *    found protected. A claimant holds no context while the handler waits,
 *    so a program's handler may leave the wait with siglongjmp().
 *  - A generation counts every un-protect, unregister and close
 *    (uffdwp__unprotect_begin/end around each), engine start, and what a
 *    kept writer waits for (a snapshot's side buffer freeing slots). One
 *    rule for a fault no claimant handled:
 *      not protected           -> retry the write, once per generation: a
 *                                 second fault at the same page with no
 *                                 un-protect in between is a real one;
 *      protected, owned by an
 *      open context            -> wait for the generation to change (its
 *                                 resolver un-protects, closes or starts),
 *                                 then retry;
 *      otherwise               -> the action installed before ours, as the
 *                                 kernel would have delivered it.
 *  - fork(): the modules' locks are taken before fork and released after,
 *    in one order (uffdwp__at_fork).
 *
 * Everything here is async-signal-safe unless said otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "backend.h"

uint64_t uffdwp__clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t uffdwp__now_ns(void)
{
	return uffdwp__clock_ns(CLOCK_MONOTONIC);
}

/* ---------------------------------------------------------------------------
 * Futexes and a lock usable in a signal handler
 * ------------------------------------------------------------------------- */

/* The read section of the emulated range table may not sleep: every sleep
 * of the library passes through here and checks (see uffdwp__no_sleep). */
static __thread unsigned no_sleep_depth __attribute__((tls_model("initial-exec")));

void uffdwp__no_sleep_enter(void)
{
	no_sleep_depth++;
}

void uffdwp__no_sleep_exit(void)
{
	no_sleep_depth--;
}

void uffdwp__futex_wait(_Atomic uint32_t *word, uint32_t expected)
{
	UFFDWP__ASSERT(no_sleep_depth == 0);
	syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

void uffdwp__futex_wake(_Atomic uint32_t *word, int count)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

/* 0 free, 1 held, 2 held with waiters. */
void uffdwp__lock(uffdwp__lock_t *l)
{
	uint32_t c = 0;

	if (atomic_compare_exchange_strong(l, &c, 1))
		return;
	if (c != 2)
		c = atomic_exchange(l, 2);
	while (c != 0) {
		uffdwp__futex_wait(l, 2);
		c = atomic_exchange(l, 2);
	}
}

void uffdwp__unlock(uffdwp__lock_t *l)
{
	if (atomic_exchange(l, 0) == 2)
		uffdwp__futex_wake(l, 1);
}

/* ---------------------------------------------------------------------------
 * The generation
 * ------------------------------------------------------------------------- */

static struct {
	_Atomic uint32_t active;   /* un-protects in progress */
	_Atomic uint32_t seq;      /* bumped as each ends */
	_Atomic uint32_t waiters;  /* threads in uffdwp__wait_generation */
} gen;

void uffdwp__unprotect_begin(void)
{
	atomic_fetch_add(&gen.active, 1);
}

void uffdwp__unprotect_end(void)
{
	atomic_fetch_add(&gen.seq, 1);
	atomic_fetch_sub(&gen.active, 1);
	if (atomic_load(&gen.waiters))
		uffdwp__futex_wake(&gen.seq, INT32_MAX);
}

void uffdwp__generation_move(void)
{
	atomic_fetch_add(&gen.seq, 1);
	if (atomic_load(&gen.waiters))
		uffdwp__futex_wake(&gen.seq, INT32_MAX);
}

uint32_t uffdwp__generation(void)
{
	return atomic_load(&gen.seq);
}

/* Sleep until the generation moves past seen (it moves in a fork child
 * too: a handler that ran meanwhile may have forked), with the interrupted
 * code's signal mask, so that the thread still takes signals while it waits (as a
 * writer blocked in the kernel does). A signal handler that leaves the wait
 * with siglongjmp() leaves gen.waiters counted: every later un-protect then
 * pays a futex wake it may not need, nothing worse. */
static void wait_generation(uint32_t seen, const ucontext_t *uc)
{
	sigset_t mask;

	pthread_sigmask(SIG_SETMASK, &uc->uc_sigmask, &mask);
	atomic_fetch_add(&gen.waiters, 1);
	while (atomic_load(&gen.seq) == seen)
		uffdwp__futex_wait(&gen.seq, seen);
	atomic_fetch_sub(&gen.waiters, 1);
	pthread_sigmask(SIG_SETMASK, &mask, NULL);
}

/* ---------------------------------------------------------------------------
 * The registry: open contexts a SIGBUS handler looks through
 * ------------------------------------------------------------------------- */

static struct {
	_Atomic(void *) owner;
	_Atomic uint32_t pins;
} registry[UFFDWP__REGISTRY_SLOTS];
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

static int registry_add(void *owner)
{
	int ret = -EMFILE;

	pthread_mutex_lock(&registry_lock);
	for (int i = 0; i < UFFDWP__REGISTRY_SLOTS; i++)
		if (!atomic_load(&registry[i].owner)) {
			atomic_store(&registry[i].owner, owner);
			ret = i;
			break;
		}
	pthread_mutex_unlock(&registry_lock);
	return ret;
}

void uffdwp__registry_wait_unpinned(int slot)
{
	while (atomic_load(&registry[slot].pins))
		sched_yield();
}

static void *registry_pin(int slot)
{
	void *owner;

	if (!atomic_load_explicit(&registry[slot].owner, memory_order_relaxed))
		return NULL;
	atomic_fetch_add(&registry[slot].pins, 1);
	owner = atomic_load(&registry[slot].owner);
	if (!owner)
		atomic_fetch_sub(&registry[slot].pins, 1);
	return owner;
}

static void registry_unpin(int slot)
{
	atomic_fetch_sub(&registry[slot].pins, 1);
}

/* ---------------------------------------------------------------------------
 * Handing a fault that is not ours to the previous action
 * ------------------------------------------------------------------------- */

/* The action a handler of ours replaced. */
struct chained {
	struct sigaction previous;
	_Atomic bool spent;  /* its SA_RESETHAND was used up */
};

/*
 * As the kernel would have delivered it: SA_RESETHAND spends the handler
 * once; it runs with the interrupted mask plus its own sa_mask (not our
 * handler's: a handler that longjmps out would keep that). One difference,
 * on purpose: the signal itself stays unblocked even without SA_NODEFER,
 * so that a write-protect fault inside the previous handler still reaches
 * ours (and blocks, or is resolved, like any writer's).
 */
static void chain_signal(struct chained *c, int sig, siginfo_t *si, ucontext_t *uc)
{
	const struct sigaction *prev = &c->previous;
	bool from_fault = si->si_code > 0;
	bool spent = (prev->sa_flags & SA_RESETHAND) && atomic_exchange(&c->spent, true);
	void (*handler)(int) = spent ? SIG_DFL : prev->sa_handler;
	sigset_t mask;

	if (handler == SIG_IGN && !from_fault)
		return;
	if (handler == SIG_DFL || handler == SIG_IGN) {
		/* The default action, as if we had never been installed: a
		 * fault re-executes and dies of the signal, with a core (the
		 * kernel forces the default on a fault even when the signal
		 * is ignored); a sent signal is sent again. Our handler is
		 * gone after this, and so is the process. */
		struct sigaction dfl = { .sa_handler = SIG_DFL };

		sigaction(sig, &dfl, NULL);
		if (!from_fault)
			raise(sig);
		return;
	}
	sigorset(&mask, &uc->uc_sigmask, &prev->sa_mask);
	sigdelset(&mask, sig);
	pthread_sigmask(SIG_SETMASK, &mask, NULL);
	if (prev->sa_flags & SA_SIGINFO)
		prev->sa_sigaction(sig, si, uc);
	else
		handler(sig);
}

/* ---------------------------------------------------------------------------
 * The handlers
 * ------------------------------------------------------------------------- */

enum { SEGV_INDEX, BUS_INDEX, NSIGNALS };

static struct {
	_Atomic uffdwp__claim_fn claim;
	/* What ours replaced when last installed; a new one when the program
	 * replaced ours and we are installed again (the old is kept: a handler
	 * may still be reading it). */
	struct chained *_Atomic chained;
} handlers[NSIGNALS];
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

/* The page this thread last retried as "not protected", and the generation
 * then: a second fault there with no un-protect in between is not ours.
 * Initial-exec TLS: no allocation on first use in a handler. */
static __thread uintptr_t retried_page __attribute__((tls_model("initial-exec")));
static __thread uint32_t retried_seq __attribute__((tls_model("initial-exec")));

static bool retry_unprotected(uintptr_t page, uint32_t seq)
{
	if (atomic_load(&gen.active)) {
		sched_yield();  /* the un-protect in progress is what we wait for */
		return true;
	}
	if (retried_page == page && retried_seq == seq) {
		retried_page = 0;
		return false;
	}
	retried_page = page;
	retried_seq = seq;
	return true;
}

static void on_fault(int sig, siginfo_t *si, void *ucv)
{
	int saved_errno = errno;
	int index = sig == SIGSEGV ? SEGV_INDEX : BUS_INDEX;
	ucontext_t *uc = ucv;
	/* Read first: an un-protect that ends after this moves it. */
	struct uffdwp__fault f = {
		.addr = (uintptr_t)si->si_addr,
		.seq = uffdwp__generation(),
		.uc = uc,
	};
	bool fault = sig == SIGSEGV ? si->si_code == SEGV_ACCERR : si->si_code == BUS_ADRERR;
	enum uffdwp__claim c = fault ? atomic_load(&handlers[index].claim)(&f) : UFFDWP__NOT_OURS;
	bool ours = true;

	if (c == UFFDWP__WAIT)
		wait_generation(f.seq, uc);
	else if (c == UFFDWP__FOREIGN)
		ours = false;
	else if (c == UFFDWP__NOT_OURS)
		ours = fault && retry_unprotected(f.addr & ~(uintptr_t)(uffdwp__page_size() - 1),
						  f.seq);
	errno = saved_errno;  /* the previous handler sees it too */
	if (!ours)
		chain_signal(atomic_load(&handlers[index].chained), sig, si, uc);
}

void uffdwp__block_async_signals(sigset_t *old)
{
	sigset_t all;

	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGILL);
	sigdelset(&all, SIGFPE);
	pthread_sigmask(SIG_SETMASK, &all, old);
}

int uffdwp__signals_install(int sig, uffdwp__claim_fn claim)
{
	int index = sig == SIGSEGV ? SEGV_INDEX : BUS_INDEX;
	struct sigaction sa = {
		.sa_sigaction = on_fault,
		/* SA_NODEFER: a signal handler that interrupts a blocked writer
		 * may itself write protected memory and block in turn. */
		.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER,
	};
	struct sigaction cur;
	struct chained *c;
	int ret = 0;

	/* Asynchronous signals wait while a handler holds a lock; every
	 * wait restores the interrupted mask. */
	sigfillset(&sa.sa_mask);
	sigdelset(&sa.sa_mask, SIGSEGV);
	sigdelset(&sa.sa_mask, SIGBUS);
	sigdelset(&sa.sa_mask, SIGILL);
	sigdelset(&sa.sa_mask, SIGFPE);
	sigdelset(&sa.sa_mask, SIGTRAP);
	pthread_mutex_lock(&install_lock);
	if (sigaction(sig, NULL, &cur) < 0) {
		ret = -errno;
	} else if (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != on_fault) {
		c = uffdwp__private_alloc(sizeof(*c));
		if (!c) {
			ret = -ENOMEM;
		} else {
			c->previous = cur;
			atomic_store(&handlers[index].claim, claim);
			atomic_store(&handlers[index].chained, c);
			if (sigaction(sig, &sa, NULL) < 0)
				ret = -errno;
		}
	}
	pthread_mutex_unlock(&install_lock);
	return ret;
}

/* ---------------------------------------------------------------------------
 * SIGBUS: kernel contexts with UFFD_FEATURE_SIGBUS
 * ------------------------------------------------------------------------- */

/* A thread faulting this many times in a row on one page makes the
 * claimant check (pagemap) that it can be a write-protect fault. */
#define SIGBUS_REPEATS_BEFORE_CHECK 8

/* The page this thread last faulted on in a row, and how often. */
static __thread uintptr_t sigbus_last_page __attribute__((tls_model("initial-exec")));
static __thread unsigned sigbus_repeats __attribute__((tls_model("initial-exec")));

/* /proc/self/pagemap: bit 63 present, bit 57 uffd write-protected (also
 * set on the marker of a protected page never touched). */
#define PAGEMAP_PRESENT (1ull << 63)
#define PAGEMAP_UFFD_WP (1ull << 57)

/* page's /proc/self/pagemap entry, or unknown if it cannot be read. */
static uint64_t pagemap_entry(uintptr_t page, size_t page_size, uint64_t unknown)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t entry = unknown;

	if (fd < 0)
		return unknown;
	if (pread(fd, &entry, sizeof(entry), (off_t)(page / page_size * sizeof(entry))) !=
	    (ssize_t)sizeof(entry))
		entry = unknown;
	close(fd);
	return entry;
}

/*
 * Could a write to page be failing for write-protection? A missing page (a
 * range registered for missing faults too) or a file page beyond the end
 * of its file is neither present nor marked; a page a protector has just
 * un-protected again is present, and its write will succeed on retry.
 * Unknown counts as yes.
 */
static bool page_can_be_wp_fault(uintptr_t page, size_t page_size)
{
	return pagemap_entry(page, page_size, PAGEMAP_PRESENT) &
	       (PAGEMAP_PRESENT | PAGEMAP_UFFD_WP);
}

/*
 * The context that registered the address resolves the fault through its
 * in-thread engine. A protected page of an open context with no engine
 * running waits (for an un-protect, unregister, close or engine start),
 * as a write on any other context waits in the kernel. A failed
 * un-protect retries the write: it faults again rather than die.
 */
static enum uffdwp__claim sigbus_claim(const struct uffdwp__fault *f)
{
	uint64_t t0 = uffdwp__now_ns();
	size_t page_size = uffdwp__page_size();
	uintptr_t page = f->addr & ~(uintptr_t)(page_size - 1);
	bool owned = false;

	/* A fault that keeps coming back to one page may be no write-protect
	 * fault at all (a missing page, a truncated file in a registered
	 * range): un-protecting would loop forever. Check, then. (Repeats are
	 * legitimate too: another thread re-protecting the page each time.) */
	if (page != sigbus_last_page) {
		sigbus_last_page = page;
		sigbus_repeats = 0;
	} else if (++sigbus_repeats >= SIGBUS_REPEATS_BEFORE_CHECK) {
		sigbus_repeats = 0;
		if (!page_can_be_wp_fault(page, page_size))
			return UFFDWP__FOREIGN;
	}
	for (int slot = 0; slot < UFFDWP__REGISTRY_SLOTS; slot++) {
		struct uffdwp *ctx = registry_pin(slot);
		enum uffdwp__resolved r = UFFDWP__NOT_MINE;
		void *eng;

		if (!ctx)
			continue;
		if (uffdwp__context_covers(ctx, f->addr)) {
			eng = atomic_load(&ctx->inthread_engine);
			if (eng)
				r = ctx->inthread_resolve(eng, f->addr, t0);
			else
				owned = true;
		}
		registry_unpin(slot);
		if (r == UFFDWP__FAILED)
			sched_yield();
		if (r == UFFDWP__KEPT)
			return UFFDWP__WAIT;
		if (r != UFFDWP__NOT_MINE)
			return UFFDWP__RETRY;
	}
	if (owned && (pagemap_entry(page, page_size, PAGEMAP_UFFD_WP) & PAGEMAP_UFFD_WP))
		return UFFDWP__WAIT;
	return UFFDWP__NOT_OURS;
}

int uffdwp__sigbus_install(void)
{
	return uffdwp__signals_install(SIGBUS, sigbus_claim);
}

int uffdwp__sigbus_join(struct uffdwp *ctx)
{
	int slot = registry_add(ctx), ret;

	if (slot < 0)
		return slot;
	ret = uffdwp__sigbus_install();
	if (ret < 0) {
		atomic_store(&registry[slot].owner, NULL);
		return ret;
	}
	ctx->registry_slot = slot;
	return 0;
}

void uffdwp__sigbus_leave(struct uffdwp *ctx)
{
	void *owner = ctx;
	int slot = ctx->registry_slot;

	if (slot >= 0 && atomic_compare_exchange_strong(&registry[slot].owner, &owner, NULL))
		uffdwp__registry_wait_unpinned(slot);
}

/* ---------------------------------------------------------------------------
 * fork()
 * ------------------------------------------------------------------------- */

/* Set once per module, read by fork() in any thread. */
static struct {
	void (*_Atomic prepare)(void), (*_Atomic parent)(void), (*_Atomic child)(void);
} fork_hooks[UFFDWP__FORK_ORDERS];
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

/* Locks are taken in increasing order before fork: a module's lock may be
 * held while it calls into a module of higher order, never the reverse. */
static void prepare_fork(void)
{
	for (int i = 0; i < UFFDWP__FORK_ORDERS; i++) {
		if (i == UFFDWP__FORK_PRIVATE) {
			/* Taken under the modules' locks, never around them. */
			pthread_mutex_lock(&install_lock);
			pthread_mutex_lock(&registry_lock);
		}
		void (*fn)(void) = atomic_load(&fork_hooks[i].prepare);

		if (fn)
			fn();
	}
}

static void unlock_after_fork(bool child)
{
	for (int i = UFFDWP__FORK_ORDERS - 1; i >= 0; i--) {
		void (*fn)(void) = atomic_load(child ? &fork_hooks[i].child : &fork_hooks[i].parent);

		if (fn)
			fn();
		if (i == UFFDWP__FORK_PRIVATE) {
			pthread_mutex_unlock(&registry_lock);
			pthread_mutex_unlock(&install_lock);
		}
	}
}

static void parent_after_fork(void)
{
	unlock_after_fork(false);
}

static void child_after_fork(void)
{
	/* The parent's kernel contexts resolve nothing here: their fds act on
	 * the parent's memory (un-protecting through one would un-protect the
	 * parent's page and leave the child's protected). */
	for (int i = 0; i < UFFDWP__REGISTRY_SLOTS; i++) {
		atomic_store(&registry[i].owner, NULL);
		atomic_store(&registry[i].pins, 0);
	}
	atomic_store(&gen.active, 0);
	atomic_store(&gen.waiters, 0);
	/* A wait that fork() interrupted (a program's handler that ran during
	 * it forked) ends: what it waited for was the parent's. A futex wait
	 * the kernel restarts (SA_RESTART) sees the new value too. */
	atomic_fetch_add(&gen.seq, 1);
	unlock_after_fork(true);
}

static void register_fork_handlers(void)
{
	pthread_atfork(prepare_fork, parent_after_fork, child_after_fork);
}

static void private_prepare(void)
{
	uffdwp__private_prepare_fork();
}

void uffdwp__at_fork(enum uffdwp__fork_order order, const struct uffdwp__fork_hooks *hooks)
{
	static const struct uffdwp__fork_hooks private_hooks = {
		private_prepare, uffdwp__private_after_fork, uffdwp__private_after_fork,
	};

	const struct uffdwp__fork_hooks *set[] = { hooks, &private_hooks };
	enum uffdwp__fork_order at[] = { order, UFFDWP__FORK_PRIVATE };

	for (int i = 0; i < 2; i++) {
		atomic_store(&fork_hooks[at[i]].prepare, set[i]->prepare);
		atomic_store(&fork_hooks[at[i]].parent, set[i]->parent);
		atomic_store(&fork_hooks[at[i]].child, set[i]->child);
	}
	pthread_once(&fork_once, register_fork_handlers);
}
