/* SPDX-License-Identifier: MIT */
/*
 * The emulated backend: what only it has to get right (the SIGSEGV handler
 * shared with the rest of the process, vm.max_map_count, fork, the
 * fallback from AUTO) and the differences from the kernel that cannot be
 * removed, each shown on both backends where it exists on both.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "test.h"
#include "backend.h"  /* set_fault_hook: the engine's in-thread entry point */


static char *map_pages(size_t npages, int prot)
{
	char *p = mmap(NULL, npages * test_page(), prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		FAIL("mmap %zu pages: %s", npages, strerror(errno));
	return p;
}

static struct uffdwp *open_protected(enum uffdwp_backend backend, char *mem, size_t npages)
{
	struct uffdwp *ctx = test_open(backend, 0);
	size_t len = npages * test_page();

	CHECK_OK(uffdwp_register(ctx, mem, len, UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, len, UFFDWP_WRITEPROTECT_MODE_WP));
	return ctx;
}

/* ------------------------------------------------------------------------
 * The in-thread hook
 * ------------------------------------------------------------------------ */

struct hook_log {
	atomic_int calls;
	atomic_int failures;
	bool keep;                  /* return 1: keep the page protected */
	uint64_t last_address, last_flags;
	uint32_t last_tid;
	unsigned char *faulted;     /* one byte per page of base, or NULL */
	char *base;
};

/* Resolve in the faulting thread, as the engine's in-thread mode does. */
static int resolving_hook(void *arg, struct uffdwp *ctx, const struct uffdwp_event *ev,
			  size_t page_len)
{
	struct hook_log *log = arg;
	uintptr_t page = ev->pagefault.address;

	atomic_fetch_add(&log->calls, 1);
	log->last_address = page;
	log->last_flags = ev->pagefault.flags;
	log->last_tid = ev->pagefault.tid;
	if (log->keep)
		return 1;
	if (log->faulted)
		log->faulted[(page - (uintptr_t)log->base) / test_page()] = 1;
	if (uffdwp_writeprotect(ctx, (void *)page, test_page(), 0) < 0) {
		atomic_fetch_add(&log->failures, 1);
		return -1;
	}
	return 0;
}

static void set_hook(struct uffdwp *ctx, struct hook_log *log)
{
	CHECK_OK(ctx->ops->set_fault_hook(ctx, log ? resolving_hook : NULL, log));
}

TEST(hook_resolves_in_faulting_thread, ON_EMULATED)
{
	char *mem = test_map(2, true);
	struct uffdwp *ctx = open_protected(backend, mem, 2);
	struct hook_log log = { 0 };
	struct uffdwp_event ev;
	struct test_writer *w;

	set_hook(ctx, &log);
	((volatile char *)mem)[test_page() + 7] = 5;
	CHECK_EQ(mem[test_page() + 7], 5);
	CHECK_EQ(atomic_load(&log.calls), 1);
	CHECK_EQ(log.last_address, (uintptr_t)mem + test_page());
	CHECK_EQ(log.last_flags, UFFDWP_PAGEFAULT_FLAG_WRITE | UFFDWP_PAGEFAULT_FLAG_WP);
	CHECK_EQ(log.last_tid, gettid());
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);

	/* A hook that keeps the page leaves the writer waiting, with nothing
	 * queued, until an un-protect. */
	log.keep = true;
	w = test_writer_start(mem, 6);
	for (int tries = 0; atomic_load(&log.calls) < 2; tries++) {
		CHECK(tries < 5000);
		usleep(1000);
	}
	CHECK(!test_writer_done(w, 50));
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), 0));
	test_writer_join(w);
	CHECK_EQ(mem[0], 6);
	set_hook(ctx, NULL);
	uffdwp_close(ctx);
}

/* ------------------------------------------------------------------------
 * vm.max_map_count: a checkerboard over 1 GiB
 * ------------------------------------------------------------------------ */

static long read_max_map_count(void)
{
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

/*
 * Protect every other page of 1 GiB, one call each: each needs two more
 * mappings, so past vm.max_map_count the calls fail. Each must fail with
 * -ENOMEM and leave the truth: afterwards, writing every page faults
 * exactly on the pages whose protect call succeeded.
 */
TEST_TIMEOUT(checkerboard_past_max_map_count, ON_EMULATED, 120)
{
	size_t page = test_page(), npages = ((size_t)1 << 30) / page, refused = 0;
	unsigned char *reported = calloc(npages, 1), *faulted = calloc(npages, 1);
	char *mem = map_pages(npages, PROT_READ | PROT_WRITE);
	struct hook_log log = { .faulted = faulted, .base = mem };
	struct uffdwp *ctx = test_open(backend, 0);
	long limit = read_max_map_count();

	CHECK(reported && faulted);
	CHECK_OK(uffdwp_register(ctx, mem, npages * page, UFFDWP_REGISTER_MODE_WP));
	/* A 3-page block at the end: un-protecting its middle needs a split. */
	CHECK_OK(uffdwp_writeprotect(ctx, mem + (npages - 3) * page, 3 * page,
				     UFFDWP_WRITEPROTECT_MODE_WP));
	for (size_t i = 0; i < 3; i++)
		reported[npages - 3 + i] = 1;
	for (size_t i = 0; i + 4 < npages; i += 2) {
		int ret = uffdwp_writeprotect(ctx, mem + i * page, page,
					      UFFDWP_WRITEPROTECT_MODE_WP);

		if (ret == 0) {
			reported[i] = 1;
			continue;
		}
		CHECK_RET(ret, -ENOMEM);
		if (++refused == 64)
			break;
	}
	if (refused) {
		/* At the limit, un-protect that must split fails cleanly too. */
		CHECK_RET(uffdwp_writeprotect(ctx, mem + (npages - 2) * page, page, 0), -ENOMEM);
	} else if (limit > 0 && (size_t)limit < npages / 2) {
		FAIL("%zu mappings fitted under vm.max_map_count=%ld", npages / 2, limit);
	}
	/* Writes in address order: resolving the checkerboard first frees
	 * the mappings the 3-page block needs to be split. */
	set_hook(ctx, &log);
	for (size_t i = 0; i < npages; i++)
		((volatile char *)mem)[i * page] = 1;
	CHECK_EQ(atomic_load(&log.failures), 0);
	for (size_t i = 0; i < npages; i++)
		if (reported[i] != faulted[i])
			FAIL("page %zu: protect reported %d, write faulted %d (%zu refused)",
			     i, reported[i], faulted[i], refused);
	printf("%zu protect calls refused with ENOMEM (vm.max_map_count=%ld)\n", refused, limit);
	set_hook(ctx, NULL);
	uffdwp_close(ctx);
	munmap(mem, npages * page);
}

/* ------------------------------------------------------------------------
 * The SIGSEGV handler shared with the rest of the process
 * ------------------------------------------------------------------------ */

static char *foreign_page;
static atomic_int foreign_faults;

/* The program's own handler, installed before the library's: makes its own
 * read-only page writable. */
static void foreign_handler(int sig, siginfo_t *si, void *uc)
{
	if ((char *)si->si_addr >= foreign_page && (char *)si->si_addr < foreign_page + test_page()) {
		atomic_fetch_add(&foreign_faults, 1);
		mprotect(foreign_page, test_page(), PROT_READ | PROT_WRITE);
	}
}

TEST(foreign_sigsegv_reaches_previous_handler, ON_EMULATED)
{
	struct sigaction sa = { .sa_sigaction = foreign_handler, .sa_flags = SA_SIGINFO };
	char *mem = test_map(1, true);
	struct hook_log log = { 0 };
	struct uffdwp *ctx;

	foreign_page = map_pages(1, PROT_READ);
	CHECK_OK(sigaction(SIGSEGV, &sa, NULL));
	ctx = open_protected(backend, mem, 1);
	set_hook(ctx, &log);

	((volatile char *)foreign_page)[3] = 1;   /* not ours: forwarded */
	((volatile char *)mem)[3] = 1;            /* ours */
	CHECK_EQ(atomic_load(&foreign_faults), 1);
	CHECK_EQ(atomic_load(&log.calls), 1);
	CHECK_EQ(foreign_page[3], 1);

	/* The library's handler stays after the last close (a fault raised
	 * before the close may be delivered after it); foreign faults still
	 * reach the program's. */
	uffdwp_close(ctx);
	CHECK_OK(mprotect(foreign_page, test_page(), PROT_READ));
	((volatile char *)foreign_page)[4] = 1;
	CHECK_EQ(atomic_load(&foreign_faults), 2);
}

/* A program's handler that makes any faulting page writable, and counts. */
static atomic_int program_faults;
static sigset_t program_mask;  /* the signal mask its last call ran with */

static void unprotecting_handler(int sig, siginfo_t *si, void *uc)
{
	uintptr_t page = (uintptr_t)si->si_addr & ~(uintptr_t)(test_page() - 1);

	pthread_sigmask(SIG_SETMASK, NULL, &program_mask);
	atomic_fetch_add(&program_faults, 1);
	mprotect((void *)page, test_page(), PROT_READ | PROT_WRITE);
}

/* arg: true to close the context after the first forwarded fault. */
static void resethand_child(void *arg)
{
	struct sigaction sa = { .sa_sigaction = unprotecting_handler,
				.sa_flags = SA_SIGINFO | SA_RESETHAND };
	char *mem = test_map(1, true), *foreign = map_pages(2, PROT_READ);
	struct rlimit no_core = { 0, 0 };
	struct uffdwp *ctx;

	setrlimit(RLIMIT_CORE, &no_core);
	CHECK_OK(sigaction(SIGSEGV, &sa, NULL));
	ctx = open_protected(UFFDWP_BACKEND_EMULATED, mem, 1);
	foreign[0] = 1;  /* the program's handler, once */
	CHECK_EQ(atomic_load(&program_faults), 1);
	if (arg)
		uffdwp_close(ctx);  /* changes nothing: the handler stays */
	foreign[test_page()] = 1;  /* SA_RESETHAND: the default action now */
	_exit(3);
}

/* A previous handler installed with SA_RESETHAND runs once, as the kernel
 * would run it; the next foreign fault gets the default action. */
TEST(previous_handler_sa_resethand, ON_EMULATED)
{
	int status;

	status = test_in_child(resethand_child, NULL, 20);
	CHECK(WIFSIGNALED(status));
	CHECK_EQ(WTERMSIG(status), SIGSEGV);
	status = test_in_child(resethand_child, (void *)1, 20);
	CHECK(WIFSIGNALED(status));
	CHECK_EQ(WTERMSIG(status), SIGSEGV);
}

/* The previous handler runs with the mask the kernel would give it (the
 * interrupted mask plus its sa_mask), not with the library's handler's,
 * except that SIGSEGV stays unblocked (see uffdwp_emulated(7)). */
TEST(previous_handler_signal_mask, ON_EMULATED)
{
	struct sigaction sa = { .sa_sigaction = unprotecting_handler, .sa_flags = SA_SIGINFO };
	char *mem = test_map(1, true), *foreign = map_pages(1, PROT_READ);
	struct uffdwp *ctx;
	sigset_t none;

	sigemptyset(&none);
	CHECK_OK(pthread_sigmask(SIG_SETMASK, &none, NULL));
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	CHECK_OK(sigaction(SIGSEGV, &sa, NULL));
	ctx = open_protected(backend, mem, 1);
	foreign[0] = 1;
	CHECK_EQ(atomic_load(&program_faults), 1);
	CHECK(sigismember(&program_mask, SIGUSR2));
	CHECK(!sigismember(&program_mask, SIGUSR1));
	CHECK(!sigismember(&program_mask, SIGINT));
	CHECK(!sigismember(&program_mask, SIGSEGV));
	uffdwp_close(ctx);
}

static void write_to(void *addr)
{
	struct rlimit no_core = { 0, 0 };

	setrlimit(RLIMIT_CORE, &no_core);  /* the test must not litter cores */
	*(volatile char *)addr = 1;
}

/* arg: the protection of the page written to; PROT_NONE stands for a wild
 * pointer (the page is unmapped). */
static void crash_with_context_open(void *arg)
{
	char *mem = test_map(1, true);
	int prot = (int)(intptr_t)arg;
	char *target = map_pages(1, prot);
	struct uffdwp *ctx;

	if (prot == PROT_NONE)
		CHECK_OK(munmap(target, test_page()));
	signal(SIGSEGV, SIG_DFL);  /* sanitizers install their own */
	ctx = open_protected(UFFDWP_BACKEND_EMULATED, mem, 1);
	(void)ctx;
	write_to(target);
	_exit(3);  /* survived: wrong */
}

/* A real crash, a wild pointer or a write to the program's own read-only
 * page, still dies of SIGSEGV while the library's handler is installed. */
TEST(real_crash_dies_of_sigsegv, ON_EMULATED)
{
	int status = test_in_child(crash_with_context_open, (void *)(intptr_t)PROT_NONE, 20);

	CHECK(WIFSIGNALED(status));
	CHECK_EQ(WTERMSIG(status), SIGSEGV);
	status = test_in_child(crash_with_context_open, (void *)(intptr_t)PROT_READ, 20);
	CHECK(WIFSIGNALED(status));
	CHECK_EQ(WTERMSIG(status), SIGSEGV);
}

/* A thread whose own stack gets protected: the fault can only be delivered
 * on its alternate signal stack (SA_ONSTACK). */
enum { STACK_PAGES = 64 };

struct stack_case {
	char *stack, *altstack;
	uintptr_t frame;     /* the writer's frame address, reported before the protect */
	sem_t ready, go;
	atomic_bool done;
};

static __attribute__((noinline)) void touch_stack(void)
{
	volatile char buf[3 * 1024];

	for (size_t i = 0; i < sizeof(buf); i += 256)
		buf[i] = (char)i;
}

static void *stack_writer_main(void *arg)
{
	struct stack_case *sc = arg;
	stack_t ss = { .ss_sp = sc->altstack, .ss_size = 16 * test_page() };

	CHECK_OK(sigaltstack(&ss, NULL));
	sc->frame = (uintptr_t)__builtin_frame_address(0);
	sem_post(&sc->ready);
	while (sem_wait(&sc->go) < 0)
		;
	touch_stack();
	atomic_store(&sc->done, true);
	return NULL;
}

TEST(fault_on_own_stack_uses_alternate_stack, ON_EMULATED)
{
	size_t page = test_page();
	struct stack_case sc = { .stack = map_pages(STACK_PAGES, PROT_READ | PROT_WRITE),
				 .altstack = map_pages(16, PROT_READ | PROT_WRITE) };
	struct uffdwp *ctx = test_open(backend, 0);
	pthread_attr_t attr;
	pthread_t t;
	char *lo;
	int events = 0;

	if (UFFDWP__UNDER_TSAN)
		SKIP("TSan refuses pthread_attr_setstack (pthread_create: EINVAL)");
	sem_init(&sc.ready, 0, 0);
	sem_init(&sc.go, 0, 0);
	CHECK_EQ(pthread_attr_init(&attr), 0);
	CHECK_EQ(pthread_attr_setstack(&attr, sc.stack, STACK_PAGES * page), 0);
	CHECK_EQ(pthread_create(&t, &attr, stack_writer_main, &sc), 0);
	CHECK_OK(sem_wait(&sc.ready));
	/* The page of the writer's frame and those below: what it writes next. */
	lo = (char *)(sc.frame & ~(uintptr_t)(page - 1)) - 7 * page;
	CHECK(lo >= sc.stack);
	CHECK_OK(uffdwp_register(ctx, lo, 8 * page, UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, lo, 8 * page, UFFDWP_WRITEPROTECT_MODE_WP));
	sem_post(&sc.go);
	while (!atomic_load(&sc.done)) {
		struct uffdwp_event ev;

		if (!test_wait_fd(ctx, 100))
			continue;
		CHECK_RET(uffdwp_read_events(ctx, &ev, 1), 1);
		CHECK(ev.pagefault.address >= (uintptr_t)lo &&
		      ev.pagefault.address < (uintptr_t)lo + 8 * page);
		CHECK_OK(uffdwp_writeprotect(ctx, (void *)(uintptr_t)ev.pagefault.address,
					     page, 0));
		events++;
	}
	pthread_join(t, NULL);
	CHECK(events > 0);
	uffdwp_close(ctx);
}

/* ------------------------------------------------------------------------
 * Several contexts, many threads, table changes under faults
 * ------------------------------------------------------------------------ */

enum { CONTEXTS = 3, WRITERS = 6, PAGES_PER_WRITER = 8 };

struct resolver {
	pthread_t thread;
	struct uffdwp *ctx;
	char *mem;
	size_t len;
	atomic_bool stop;
	atomic_int events, wrong_address;
};

static void *resolver_main(void *arg)
{
	struct resolver *r = arg;

	while (!atomic_load(&r->stop)) {
		struct uffdwp_event ev[16];
		int n;

		if (!test_wait_fd(r->ctx, 20))
			continue;
		n = uffdwp_read_events(r->ctx, ev, 16);
		for (int i = 0; i < n; i++) {
			uintptr_t a = ev[i].pagefault.address;

			if (a < (uintptr_t)r->mem || a >= (uintptr_t)r->mem + r->len)
				atomic_fetch_add(&r->wrong_address, 1);
			uffdwp_writeprotect(r->ctx, (void *)a, test_page(), 0);
			atomic_fetch_add(&r->events, 1);
		}
	}
	return NULL;
}

struct page_writer {
	pthread_t thread;
	char *pages;
	char value;
};

static void *page_writer_main(void *arg)
{
	struct page_writer *w = arg;

	for (size_t i = 0; i < PAGES_PER_WRITER; i++)
		((volatile char *)w->pages)[i * test_page() + 1] = w->value;
	return NULL;
}

/* Registers and unregisters other memory in a loop: the handler's lookup
 * table is replaced under the faults. */
struct churner {
	pthread_t thread;
	struct uffdwp *ctx;
	atomic_bool stop;
	atomic_int errors;
};

static void *churner_main(void *arg)
{
	struct churner *c = arg;
	char *mem = test_map(4, true);

	while (!atomic_load(&c->stop)) {
		if (uffdwp_register(c->ctx, mem, 4 * test_page(), UFFDWP_REGISTER_MODE_WP) < 0 ||
		    uffdwp_unregister(c->ctx, mem + test_page(), test_page()) < 0 ||
		    uffdwp_unregister(c->ctx, mem, 4 * test_page()) < 0)
			atomic_fetch_add(&c->errors, 1);
	}
	return NULL;
}

TEST(several_contexts_many_threads, ON_BOTH)
{
	size_t per_ctx = WRITERS * PAGES_PER_WRITER, page = test_page();
	struct resolver res[CONTEXTS];
	struct page_writer wr[CONTEXTS][WRITERS];
	struct churner churn = { 0 };

	churn.ctx = test_open(backend, 0);
	CHECK_EQ(pthread_create(&churn.thread, NULL, churner_main, &churn), 0);
	for (int c = 0; c < CONTEXTS; c++) {
		memset(&res[c], 0, sizeof(res[c]));
		res[c].mem = test_map(per_ctx, true);
		res[c].len = per_ctx * page;
		res[c].ctx = open_protected(backend, res[c].mem, per_ctx);
		CHECK_EQ(pthread_create(&res[c].thread, NULL, resolver_main, &res[c]), 0);
	}
	for (int c = 0; c < CONTEXTS; c++)
		for (int i = 0; i < WRITERS; i++) {
			wr[c][i] = (struct page_writer){
				.pages = res[c].mem + (size_t)i * PAGES_PER_WRITER * page,
				.value = (char)(c * WRITERS + i + 1),
			};
			CHECK_EQ(pthread_create(&wr[c][i].thread, NULL, page_writer_main,
						&wr[c][i]), 0);
		}
	for (int c = 0; c < CONTEXTS; c++)
		for (int i = 0; i < WRITERS; i++)
			pthread_join(wr[c][i].thread, NULL);
	atomic_store(&churn.stop, true);
	pthread_join(churn.thread, NULL);
	CHECK_EQ(atomic_load(&churn.errors), 0);
	for (int c = 0; c < CONTEXTS; c++) {
		atomic_store(&res[c].stop, true);
		pthread_join(res[c].thread, NULL);
		CHECK_EQ(atomic_load(&res[c].events), (int)per_ctx);
		CHECK_EQ(atomic_load(&res[c].wrong_address), 0);
		for (size_t p = 0; p < per_ctx; p++)
			CHECK_EQ(res[c].mem[p * page + 1], c * WRITERS + (int)(p / PAGES_PER_WRITER) + 1);
		uffdwp_close(res[c].ctx);
	}
	uffdwp_close(churn.ctx);
}

/* Closing with writers blocked on several pages, some already un-protected
 * with DONTWAKE: every writer finishes and no page stays protected. */
TEST(close_releases_everything, ON_BOTH)
{
	enum { N = 4 };
	char *mem = test_map(N, true);
	struct uffdwp *ctx;
	struct test_writer *w[N];

	ctx = open_protected(backend, mem, N);
	for (int i = 0; i < N; i++)
		w[i] = test_writer_start(mem + (size_t)i * test_page(), (char)(10 + i));
	for (int i = 0; i < N; i++)
		test_read_event(ctx);
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_DONTWAKE));
	for (int i = 0; i < N; i++)
		CHECK(!test_writer_done(w[i], i == 0 ? 100 : 0));
	uffdwp_close(ctx);
	for (int i = 0; i < N; i++) {
		test_writer_join(w[i]);
		CHECK_EQ(mem[(size_t)i * test_page()], 10 + i);
	}
	for (int i = 0; i < N; i++)
		((volatile char *)mem)[(size_t)i * test_page() + 1] = 1;  /* nothing protected */
}

/* ------------------------------------------------------------------------
 * munmap under a registration; fork
 * ------------------------------------------------------------------------ */

/* Holes are skipped and memory that is gone is -ENOENT, as in the kernel. */
TEST(munmap_under_registration, ON_BOTH)
{
	size_t page = test_page();
	char *mem = test_map(4, true);
	struct uffdwp *ctx = open_protected(backend, mem, 4);

	CHECK_OK(munmap(mem + page, page));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, 3 * page, 0));
	mem[0] = 1;
	mem[2 * page] = 1;
	CHECK_RET(uffdwp_writeprotect(ctx, mem + page, page, UFFDWP_WRITEPROTECT_MODE_WP), -ENOENT);
	CHECK_RET(uffdwp_unregister(ctx, mem + page, page), -EINVAL);
	CHECK_OK(munmap(mem, 4 * page));
	CHECK_RET(uffdwp_writeprotect(ctx, mem, 4 * page, 0), -ENOENT);
	CHECK_RET(uffdwp_unregister(ctx, mem, 4 * page), -EINVAL);
	uffdwp_close(ctx);
}

/* What close(), and a fork child, leave writable: every page, including
 * those past a hole that munmap made inside the registration. */
static void write_past_hole(void *arg)
{
	char *mem = arg;

	((volatile char *)mem)[2 * test_page()] = 5;
	((volatile char *)mem)[0] = 5;
}

TEST(unprotect_past_a_hole_on_close_and_fork, ON_BOTH)
{
	size_t page = test_page();
	char *mem = test_map(3, true);
	struct uffdwp *ctx = open_protected(backend, mem, 3);
	int status;

	CHECK_OK(munmap(mem + page, page));
	status = test_in_child(write_past_hole, mem, 20);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	uffdwp_close(ctx);
	write_past_hole(mem);  /* no context left: a fault here would kill us */
	CHECK_EQ(mem[2 * page], 5);
}

struct fork_case {
	struct uffdwp *ctx;
	char *mem;
};

static void child_gets_empty_context(void *arg)
{
	struct fork_case *fc = arg;
	struct pollfd p = { .fd = uffdwp_fd(fc->ctx), .events = POLLIN };

	/* The parent's pending fault is not the child's. */
	CHECK_EQ(poll(&p, 1, 0), 0);
	CHECK_RET(uffdwp_writeprotect(fc->ctx, fc->mem, test_page(), 0), -ENOENT);
	((volatile char *)fc->mem)[2 * test_page()] = 9;  /* neither page is protected */
	((volatile char *)fc->mem)[0] = 9;
	/* The context is the child's own now: it works on the child's memory. */
	CHECK_OK(uffdwp_register(fc->ctx, fc->mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(fc->ctx, fc->mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(fc->ctx, fc->mem, test_page(), 0));
	uffdwp_close(fc->ctx);
}

/* The emulation's fork(): the child's memory is writable, its contexts are
 * open, empty and its own; the parent's blocked writer stays blocked. */
TEST(fork_child_gets_empty_contexts, ON_EMULATED)
{
	char *mem = test_map(3, true);
	struct fork_case fc = { open_protected(backend, mem, 3), mem };
	struct test_writer *w = test_writer_start(mem + 2 * test_page(), 4);
	struct uffdwp_event ev = test_read_event(fc.ctx);
	int status = test_in_child(child_gets_empty_context, &fc, 20);

	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(!test_writer_done(w, 0));
	CHECK_OK(uffdwp_writeprotect(fc.ctx, (void *)(uintptr_t)ev.pagefault.address,
				     test_page(), 0));
	test_writer_join(w);
	CHECK_EQ(mem[2 * test_page()], 4);
	uffdwp_close(fc.ctx);
}

/* ------------------------------------------------------------------------
 * The differences from the kernel
 * ------------------------------------------------------------------------ */

struct blocked_read {
	int fd;
	char *buf;
	ssize_t ret;
	int err;
};

static void *read_into(void *arg)
{
	struct blocked_read *b = arg;

	b->ret = read(b->fd, b->buf, 8);
	b->err = errno;
	return NULL;
}

/* A syscall writing into protected memory: the kernel blocks it until the
 * page is resolved; the emulation cannot see it and it fails with EFAULT. */
TEST(syscall_into_protected_buffer, ON_BOTH)
{
	char *mem = test_map(1, true);
	struct uffdwp *ctx = open_protected(backend, mem, 1);
	struct blocked_read b = { .buf = mem };
	struct uffdwp_event ev;
	pthread_t t;
	int pipefd[2];

	CHECK_OK(pipe(pipefd));
	CHECK_EQ(write(pipefd[1], "12345678", 8), 8);
	b.fd = pipefd[0];
	CHECK_EQ(pthread_create(&t, NULL, read_into, &b), 0);
	if (backend == UFFDWP_BACKEND_KERNEL) {
		ev = test_read_event(ctx);
		CHECK_EQ(ev.pagefault.address, (uintptr_t)mem);
		CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), 0));
		pthread_join(t, NULL);
		CHECK_EQ(b.ret, 8);
		CHECK(!memcmp(mem, "12345678", 8));
	} else {
		pthread_join(t, NULL);
		CHECK_EQ(b.ret, -1);
		CHECK_EQ(b.err, EFAULT);
		CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	}
	uffdwp_close(ctx);
}

static char *signal_page;
static sem_t signal_handled;
static atomic_bool blocked_write_done;

static void *write_first_page(void *mem)
{
	*(volatile char *)mem = 1;
	atomic_store(&blocked_write_done, true);
	return NULL;
}

/* A program's signal handler that writes protected memory. */
static void writing_handler(int sig)
{
	*(volatile char *)signal_page = 7;
	sem_post(&signal_handled);
}

/*
 * A writer blocked on a fault still receives signals, and its signal
 * handler may write protected memory in turn: that fault is queued too and
 * both complete once resolved, on both backends. (What a handler may not
 * do on the emulation: write protected memory while it interrupts a
 * uffdwp call in the same thread; see uffdwp_emulated(7).)
 */
TEST(signal_handler_of_blocked_writer_writes_protected, ON_BOTH)
{
	size_t page = test_page();
	char *mem = test_map(2, true);
	struct uffdwp *ctx = open_protected(backend, mem, 2);
	struct sigaction sa = { .sa_handler = writing_handler };
	struct uffdwp_event ev;
	pthread_t writer;

	if (UFFDWP__UNDER_TSAN)
		SKIP("TSan defers signal handlers past the fault, and runs them with SIGSEGV blocked");
	signal_page = mem + page;
	sem_init(&signal_handled, 0, 0);
	CHECK_OK(sigaction(SIGUSR1, &sa, NULL));
	CHECK_EQ(pthread_create(&writer, NULL, write_first_page, mem), 0);
	ev = test_read_event(ctx);
	CHECK_EQ(ev.pagefault.address, (uintptr_t)mem);
	CHECK_EQ(pthread_kill(writer, SIGUSR1), 0);
	ev = test_read_event(ctx);
	CHECK_EQ(ev.pagefault.address, (uintptr_t)mem + page);
	CHECK_OK(uffdwp_writeprotect(ctx, mem + page, page, 0));
	CHECK_OK(sem_wait(&signal_handled));
	CHECK(!atomic_load(&blocked_write_done));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, page, 0));
	pthread_join(writer, NULL);
	CHECK_EQ(mem[0], 1);
	CHECK_EQ(mem[page], 7);
	uffdwp_close(ctx);
}

/* What only the kernel has is refused, never silently dropped. */
TEST(kernel_only_features_refused, ON_EMULATED)
{
	static const uint64_t kernel_only[] = {
		UFFDWP_FEATURE_EVENT_FORK, UFFDWP_FEATURE_EVENT_REMAP,
		UFFDWP_FEATURE_EVENT_REMOVE, UFFDWP_FEATURE_EVENT_UNMAP,
		UFFDWP_FEATURE_SIGBUS, UFFDWP_FEATURE_WP_ASYNC,
	};
	struct uffdwp_opts o = { .sz = sizeof(o), .backend = backend };
	char *mem = test_map(1, true), src[1] = { 0 };
	struct uffdwp *ctx;

	for (size_t i = 0; i < sizeof(kernel_only) / sizeof(kernel_only[0]); i++) {
		o.features = kernel_only[i];
		CHECK_RET(uffdwp_open(&ctx, &o), -EOPNOTSUPP);
	}
	ctx = test_open(backend, 0);
	CHECK_RET(uffdwp_register(ctx, mem, test_page(),
				  UFFDWP_REGISTER_MODE_WP | UFFDWP_REGISTER_MODE_MISSING),
		  -EOPNOTSUPP);
	CHECK_OK(uffdwp_register(ctx, mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_RET(uffdwp_copy(ctx, mem, src, test_page(), 0), -EOPNOTSUPP);
	uffdwp_close(ctx);
}

/* ------------------------------------------------------------------------
 * AUTO falls back when the kernel path is forbidden
 * ------------------------------------------------------------------------ */

static void auto_round_trip_without_userfaultfd(void *arg)
{
	struct uffdwp_opts o = { .sz = sizeof(o), .backend = UFFDWP_BACKEND_AUTO };
	char *mem = test_map(2, true);
	struct test_writer *w;
	struct uffdwp_event ev;
	struct uffdwp *ctx;

	test_forbid_userfaultfd();
	CHECK_EQ(syscall(__NR_userfaultfd, O_CLOEXEC), -1);
	CHECK_EQ(errno, ENOSYS);
	o.backend = UFFDWP_BACKEND_KERNEL;
	CHECK(uffdwp_open(&ctx, &o) < 0);
	o.backend = UFFDWP_BACKEND_AUTO;
	CHECK_OK(uffdwp_open(&ctx, &o));
	CHECK_EQ(uffdwp_backend(ctx), UFFDWP_BACKEND_EMULATED);
	CHECK_EQ(uffdwp_features(ctx) & UFFDWP_FEATURES_DEFAULT, UFFDWP_FEATURES_DEFAULT);

	CHECK_OK(uffdwp_register(ctx, mem, 2 * test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, 2 * test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	w = test_writer_start(mem + test_page() + 1, 42);
	ev = test_read_event(ctx);
	CHECK_EQ(ev.type, UFFDWP_EVENT_PAGEFAULT);
	CHECK_EQ(ev.pagefault.flags, UFFDWP_PAGEFAULT_FLAG_WRITE | UFFDWP_PAGEFAULT_FLAG_WP);
	CHECK_EQ(ev.pagefault.address, (uintptr_t)mem + test_page());
	CHECK(ev.pagefault.tid != 0 && ev.pagefault.tid != (uint32_t)gettid());
	CHECK(!test_writer_done(w, 50));
	CHECK_OK(uffdwp_writeprotect(ctx, mem + test_page(), test_page(), 0));
	test_writer_join(w);
	CHECK_EQ(mem[test_page() + 1], 42);
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	uffdwp_close(ctx);
}

TEST(auto_falls_back_without_userfaultfd, ON_NONE)
{
	int status = test_in_child(auto_round_trip_without_userfaultfd, NULL, 20);

	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
