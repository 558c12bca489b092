/* SPDX-License-Identifier: MIT */
/*
 * The conformance suite for the core API, one statement of the seed
 * (UFFDIO_WRITEPROTECT(2const)) at a time, on both backends.
 */
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "test.h"

/* How long a blocked writer is given to (wrongly) complete before we call
 * it blocked. A negative result has no event to wait for; this bounds it. */
#define STILL_BLOCKED_MS 200

/* npages pages of this run's memory type (test_mem_page() each), all 1s. */
static char *map_pages(size_t npages)
{
	return test_mem_map(npages * test_mem_page(), true);
}

static struct uffdwp *open_registered(enum uffdwp_backend backend, uint64_t features,
				      char *mem, size_t npages)
{
	struct uffdwp *ctx = test_open(backend, features);

	CHECK_OK(uffdwp_register(ctx, mem, npages * test_mem_page(), UFFDWP_REGISTER_MODE_WP));
	return ctx;
}

TEST(open_close, ON_BOTH)
{
	struct uffdwp *ctx = test_open(backend, 0);
	uint64_t f = uffdwp_features(ctx);

	CHECK(uffdwp_fd(ctx) >= 0);
	CHECK(f & UFFDWP_FEATURE_PAGEFAULT_FLAG_WP);
	CHECK_EQ(f & ~UFFDWP_FEATURES_DEFAULT, 0);
	/* On this class of machine every default exists on both backends. */
	CHECK(f & UFFDWP_FEATURE_WP_UNPOPULATED);
	CHECK(f & UFFDWP_FEATURE_THREAD_ID);
	uffdwp_close(ctx);
	uffdwp_close(NULL);
}

TEST(open_bad_arguments, ON_NONE)
{
	CHECK_RET(uffdwp_fd(NULL), -EINVAL);
	CHECK_EQ(uffdwp_features(NULL), 0);
	CHECK_EQ(uffdwp_backend(NULL), UFFDWP_BACKEND_AUTO);
	uffdwp_close(NULL);
	struct uffdwp_opts o = { .sz = sizeof(o) };
	struct uffdwp *ctx = NULL;

	CHECK_RET(uffdwp_open(NULL, NULL), -EINVAL);
	o.sz = 1;
	CHECK_RET(uffdwp_open(&ctx, &o), -EINVAL);
	o.sz = sizeof(o);
	o.features = UINT64_C(1) << 40;
	CHECK_RET(uffdwp_open(&ctx, &o), -EINVAL);
	o.features = 0;
	o.backend = (enum uffdwp_backend)7;
	CHECK_RET(uffdwp_open(&ctx, &o), -EINVAL);
	CHECK(ctx == NULL);
}

TEST(open_exact_features, ON_BOTH)
{
	struct uffdwp *ctx = test_open(backend, UFFDWP_FEATURE_THREAD_ID);

	/* Exactly what was asked for, plus the write-protect feature itself. */
	CHECK_EQ(uffdwp_features(ctx),
		 UFFDWP_FEATURE_THREAD_ID | UFFDWP_FEATURE_PAGEFAULT_FLAG_WP);
	uffdwp_close(ctx);
}

TEST(open_missing_feature, ON_EMULATED)
{
	struct uffdwp_opts o = { .sz = sizeof(o), .backend = backend,
				 .features = UFFDWP_FEATURE_EVENT_FORK };
	struct uffdwp *ctx = NULL;

	CHECK_RET(uffdwp_open(&ctx, &o), -EOPNOTSUPP);
	o.features = UFFDWP_FEATURE_WP_ASYNC;
	CHECK_RET(uffdwp_open(&ctx, &o), -EOPNOTSUPP);
}

TEST(register_ioctls, ON_BOTH)
{
	char *mem = test_map(4, true);
	struct uffdwp *ctx = test_open(backend, 0);
	uint64_t ioctls = 0;

	CHECK_OK(uffdwp_register_ioctls(ctx, mem, 4 * test_page(), UFFDWP_REGISTER_MODE_WP,
					&ioctls));
	CHECK(ioctls & UFFDWP_IOCTL_WRITEPROTECT);
	CHECK(ioctls & UFFDWP_IOCTL_WAKE);
	CHECK_OK(uffdwp_unregister(ctx, mem, 4 * test_page()));
	/* Unregistering what is not registered is no error. */
	CHECK_OK(uffdwp_unregister(ctx, mem, 4 * test_page()));
	uffdwp_close(ctx);
}

TEST(register_bad_arguments, ON_BOTH)
{
	char *mem = test_map(4, true);
	struct uffdwp *ctx = test_open(backend, 0);
	size_t page = test_page();

	CHECK_RET(uffdwp_register(ctx, mem + 1, page, UFFDWP_REGISTER_MODE_WP), -EINVAL);
	CHECK_RET(uffdwp_register(ctx, mem, page + 1, UFFDWP_REGISTER_MODE_WP), -EINVAL);
	CHECK_RET(uffdwp_register(ctx, mem, 0, UFFDWP_REGISTER_MODE_WP), -EINVAL);
	CHECK_RET(uffdwp_register(ctx, mem, page, 0), -EINVAL);
	CHECK_RET(uffdwp_register(ctx, mem, page, UFFDWP_REGISTER_MODE_WP | (1u << 5)), -EINVAL);
	CHECK_RET(uffdwp_register(ctx, (void *)(uintptr_t)-page, 2 * page,
				  UFFDWP_REGISTER_MODE_WP), -EINVAL);
	/* Nothing mapped there: the kernel says EINVAL (no VMA), not ENOENT. */
	CHECK_OK(munmap(mem + 3 * page, page));
	CHECK_RET(uffdwp_register(ctx, mem + 3 * page, page, UFFDWP_REGISTER_MODE_WP), -EINVAL);
	CHECK_RET(uffdwp_unregister(ctx, mem + 3 * page, page), -EINVAL);
	uffdwp_close(ctx);
}

/* The seed: MODE_WP protects; a write then raises a fault (WP flag) and
 * does not complete until the range is un-protected, which wakes it. */
TEST_MEM(wp_fault_and_unprotect_wakes, ON_BOTH, ON_ALLMEM)
{
	char *mem = map_pages(2);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 2);
	size_t page = test_mem_page();
	struct test_writer *w;
	struct uffdwp_event ev;

	CHECK_OK(uffdwp_writeprotect(ctx, mem, 2 * page, UFFDWP_WRITEPROTECT_MODE_WP));
	w = test_writer_start(mem + page + 8, 42);
	ev = test_read_event(ctx);
	CHECK_EQ(ev.type, UFFDWP_EVENT_PAGEFAULT);
	CHECK(ev.pagefault.flags & UFFDWP_PAGEFAULT_FLAG_WP);
	CHECK(ev.pagefault.flags & UFFDWP_PAGEFAULT_FLAG_WRITE);
	CHECK_EQ(ev.pagefault.address, (uintptr_t)(mem + page));
	CHECK(ev.pagefault.tid != 0);
	CHECK(ev.pagefault.tid != (uint32_t)gettid());
	CHECK(!test_writer_done(w, STILL_BLOCKED_MS));
	/* The write has not happened (test_map wrote 1s). */
	CHECK_EQ(__atomic_load_n(&mem[page + 8], __ATOMIC_RELAXED), 1);
	CHECK_OK(uffdwp_writeprotect(ctx, mem + page, page, 0));
	test_writer_join(w);
	CHECK_EQ(mem[page + 8], 42);
	/* The other page is still protected: reads never block... */
	CHECK_EQ(mem[0], 1);
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	/* ...and an un-protected page takes writes without any event. */
	mem[page] = 7;
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	uffdwp_close(ctx);
}

/* The seed: DONTWAKE un-protects without waking; uffdwp_wake() wakes. */
TEST_MEM(wp_dontwake_then_wake, ON_BOTH, ON_ALLMEM)
{
	char *mem = map_pages(1);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 1);
	struct test_writer *w;

	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_mem_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	w = test_writer_start(mem, 5);
	(void)test_read_event(ctx);
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_mem_page(), UFFDWP_WRITEPROTECT_MODE_DONTWAKE));
	CHECK(!test_writer_done(w, STILL_BLOCKED_MS));
	CHECK_OK(uffdwp_wake(ctx, mem, test_mem_page()));
	test_writer_join(w);
	CHECK_EQ(mem[0], 5);
	uffdwp_close(ctx);
}

TEST(wp_bad_modes_and_ranges, ON_BOTH)
{
	char *mem = test_map(2, true);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 2);
	size_t page = test_page();

	/* DONTWAKE "can be specified only if MODE_WP is not specified". */
	CHECK_RET(uffdwp_writeprotect(ctx, mem, page, UFFDWP_WRITEPROTECT_MODE_WP |
						       UFFDWP_WRITEPROTECT_MODE_DONTWAKE), -EINVAL);
	CHECK_RET(uffdwp_writeprotect(ctx, mem, page, 1u << 2), -EINVAL);
	CHECK_RET(uffdwp_writeprotect(ctx, mem + 1, page, UFFDWP_WRITEPROTECT_MODE_WP), -EINVAL);
	CHECK_RET(uffdwp_writeprotect(ctx, mem, page - 1, UFFDWP_WRITEPROTECT_MODE_WP), -EINVAL);
	CHECK_RET(uffdwp_writeprotect(ctx, mem, 0, UFFDWP_WRITEPROTECT_MODE_WP), -EINVAL);
	CHECK_RET(uffdwp_writeprotect(ctx, (void *)(uintptr_t)-page, 2 * page,
				      UFFDWP_WRITEPROTECT_MODE_WP), -EINVAL);
	CHECK_RET(uffdwp_writeprotect(ctx, (void *)(UINT64_C(1) << 60), page,
				      UFFDWP_WRITEPROTECT_MODE_WP), -EINVAL);
	CHECK_RET(uffdwp_wake(ctx, mem, 0), -EINVAL);
	CHECK_RET(uffdwp_wake(ctx, mem + 1, page), -EINVAL);
	/* Nothing was protected by the failed calls. */
	mem[0] = 2;
	mem[page] = 2;
	uffdwp_close(ctx);
}

/* The seed's ENOENT: not mapped, or not registered in WP mode. */
TEST(wp_enoent, ON_BOTH)
{
	char *mem = test_map(3, true);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 1);
	size_t page = test_page();

	/* Mapped but not registered. */
	CHECK_RET(uffdwp_writeprotect(ctx, mem + page, page, UFFDWP_WRITEPROTECT_MODE_WP), -ENOENT);
	/* Partly registered. */
	CHECK_RET(uffdwp_writeprotect(ctx, mem, 2 * page, UFFDWP_WRITEPROTECT_MODE_WP), -ENOENT);
	/* Not mapped at all. */
	CHECK_OK(munmap(mem + 2 * page, page));
	CHECK_RET(uffdwp_writeprotect(ctx, mem + 2 * page, page, UFFDWP_WRITEPROTECT_MODE_WP),
		  -ENOENT);
	/* Registered memory unmapped under us. */
	CHECK_OK(munmap(mem, page));
	CHECK_RET(uffdwp_writeprotect(ctx, mem, page, UFFDWP_WRITEPROTECT_MODE_WP), -ENOENT);
	uffdwp_close(ctx);
}

/* The seed's EFAULT is the kernel's "generic fault" (it reads a bad
 * argument pointer); the library always passes a valid one, so it is
 * provoked on the raw descriptor to show it passes through unchanged. */
TEST(wp_efault_raw, ON_KERNEL)
{
	struct uffdwp *ctx = test_open(backend, 0);
	/* UFFDIO_WRITEPROTECT = _IOWR(0xAA, 0x06, 24-byte struct) */
	unsigned long req = (3UL << 30) | (24UL << 16) | (0xAAUL << 8) | 0x06;

	CHECK_EQ(syscall(SYS_ioctl, uffdwp_fd(ctx), req, (void *)8), -1);
	CHECK_EQ(errno, EFAULT);
	uffdwp_close(ctx);
}

TEST(read_events_contract, ON_BOTH)
{
	struct uffdwp *ctx = test_open(backend, 0);
	struct uffdwp_event ev;

	CHECK_RET(uffdwp_read_events(ctx, &ev, 0), -EINVAL);
	CHECK_RET(uffdwp_read_events(ctx, NULL, 1), -EINVAL);
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	CHECK(!test_wait_fd(ctx, 0));
	uffdwp_close(ctx);
}

/* Default features protect never-touched pages too. */
TEST(wp_unpopulated_default, ON_BOTH)
{
	char *mem = test_map(1, false);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 1);
	struct test_writer *w;
	struct uffdwp_event ev;

	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	w = test_writer_start(mem, 9);
	ev = test_read_event(ctx);
	CHECK(ev.pagefault.flags & UFFDWP_PAGEFAULT_FLAG_WP);
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), 0));
	test_writer_join(w);
	CHECK_EQ(mem[0], 9);
	uffdwp_close(ctx);
}

/* The kernel trap: without WP_UNPOPULATED the kernel silently skips pages
 * that were never touched, and a write to one does not fault. */
TEST(wp_unpopulated_off_skips_untouched, ON_KERNEL)
{
	char *mem = test_map(2, false);
	struct uffdwp *ctx = open_registered(backend, UFFDWP_FEATURE_PAGEFAULT_FLAG_WP, mem, 2);
	struct test_writer *w;
	struct uffdwp_event ev;

	CHECK_EQ(uffdwp_features(ctx) & UFFDWP_FEATURE_WP_UNPOPULATED, 0);
	mem[test_page()] = 1; /* populate the second page only */
	CHECK_OK(uffdwp_writeprotect(ctx, mem, 2 * test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	mem[0] = 3; /* never touched: not protected, completes at once */
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	w = test_writer_start(mem + test_page(), 4); /* populated: faults */
	ev = test_read_event(ctx);
	CHECK_EQ(ev.pagefault.address, (uintptr_t)(mem + test_page()));
	CHECK_OK(uffdwp_writeprotect(ctx, mem + test_page(), test_page(), 0));
	test_writer_join(w);
	uffdwp_close(ctx);
}

/* Many threads on one page: all block, one un-protect wakes them all. */
TEST_MEM(many_threads_same_page, ON_BOTH, ON_ALLMEM)
{
	enum { THREADS = 8 };
	char *mem = map_pages(1);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 1);
	struct test_writer *w[THREADS];
	struct uffdwp_event ev[THREADS];
	int seen = 0;

	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_mem_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	for (int i = 0; i < THREADS; i++)
		w[i] = test_writer_start(mem + i, (char)(10 + i));
	/* At least one event; the others may be queued too. */
	while (seen == 0 || (test_wait_fd(ctx, 50) && seen < THREADS)) {
		int n;

		CHECK(test_wait_fd(ctx, 5000));
		n = uffdwp_read_events(ctx, ev, THREADS);
		CHECK(n >= 1);
		for (int i = 0; i < n; i++)
			CHECK_EQ(ev[i].pagefault.address, (uintptr_t)mem);
		seen += n;
	}
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_mem_page(), 0));
	for (int i = 0; i < THREADS; i++)
		test_writer_join(w[i]);
	for (int i = 0; i < THREADS; i++)
		CHECK_EQ(mem[i], 10 + i);
	uffdwp_close(ctx);
}

/* Many threads on different pages: one event each, resolved one by one. */
TEST_MEM(many_threads_different_pages, ON_BOTH, ON_ALLMEM)
{
	enum { THREADS = 16 };
	char *mem = map_pages(THREADS);
	size_t page = test_mem_page();
	struct uffdwp *ctx = open_registered(backend, 0, mem, THREADS);
	struct test_writer *w[THREADS];
	bool faulted[THREADS] = { false };

	CHECK_OK(uffdwp_writeprotect(ctx, mem, THREADS * page, UFFDWP_WRITEPROTECT_MODE_WP));
	for (int i = 0; i < THREADS; i++)
		w[i] = test_writer_start(mem + i * page, (char)(20 + i));
	for (int resolved = 0; resolved < THREADS;) {
		struct uffdwp_event ev[THREADS];
		int n;

		CHECK(test_wait_fd(ctx, 5000));
		n = uffdwp_read_events(ctx, ev, THREADS);
		CHECK(n >= 1);
		for (int i = 0; i < n; i++) {
			size_t idx = (ev[i].pagefault.address - (uintptr_t)mem) / page;

			CHECK(idx < THREADS);
			CHECK(!faulted[idx]);
			faulted[idx] = true;
			CHECK_OK(uffdwp_writeprotect(ctx, mem + idx * page, page, 0));
			resolved++;
		}
	}
	for (int i = 0; i < THREADS; i++) {
		test_writer_join(w[i]);
		CHECK_EQ(mem[i * page], 20 + i);
	}
	uffdwp_close(ctx);
}

TEST_MEM(unregister_wakes_and_unprotects, ON_BOTH, ON_ALLMEM)
{
	char *mem = map_pages(1);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 1);
	struct test_writer *w;

	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_mem_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	w = test_writer_start(mem, 6);
	(void)test_read_event(ctx);
	CHECK_OK(uffdwp_unregister(ctx, mem, test_mem_page()));
	test_writer_join(w);
	CHECK_EQ(mem[0], 6);
	CHECK_RET(uffdwp_writeprotect(ctx, mem, test_mem_page(), UFFDWP_WRITEPROTECT_MODE_WP), -ENOENT);
	uffdwp_close(ctx);
}

TEST_MEM(close_wakes_and_unprotects, ON_BOTH, ON_ALLMEM)
{
	char *mem = map_pages(2);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 2);
	struct test_writer *w;

	CHECK_OK(uffdwp_writeprotect(ctx, mem, 2 * test_mem_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	w = test_writer_start(mem, 8);
	(void)test_read_event(ctx);
	uffdwp_close(ctx);
	test_writer_join(w);
	CHECK_EQ(mem[0], 8);
	mem[test_mem_page()] = 8; /* would block forever if still protected */
}

/* Two contexts cannot own the same range. */
TEST_MEM(register_busy, ON_BOTH, ON_ALLMEM)
{
	char *mem = map_pages(1);
	struct uffdwp *a = open_registered(backend, 0, mem, 1);
	struct uffdwp *b = test_open(backend, 0);

	CHECK_RET(uffdwp_register(b, mem, test_mem_page(), UFFDWP_REGISTER_MODE_WP), -EBUSY);
	uffdwp_close(b);
	uffdwp_close(a);
}

/* A fork() child that lives on (no exec) must not hold the parent's memory:
 * after the parent's close, its writers run at once. (The child kept the
 * inherited userfaultfd open, so close released nothing and writers slept
 * until the child exited.) */
TEST_MEM(close_with_forked_child_alive, ON_BOTH, ON_ALLMEM)
{
	char *mem = map_pages(2);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 2);
	struct test_writer *w;
	int go[2], status;
	pid_t child;
	char c = 0;

	CHECK_OK(uffdwp_writeprotect(ctx, mem, 2 * test_mem_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	CHECK_OK(pipe(go));
	child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		close(go[1]);
		_exit(read(go[0], &c, 1) == 0 ? 0 : 1);  /* lives until the parent is done */
	}
	close(go[0]);
	uffdwp_close(ctx);
	w = test_writer_start(mem + test_mem_page(), 9);
	CHECK(test_writer_done(w, 5000));
	test_writer_join(w);
	CHECK_EQ(mem[test_mem_page()], 9);
	close(go[1]);
	CHECK_EQ(waitpid(child, &status, 0), child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The child's copy of a context is empty and its own: it cannot un-protect
 * the parent's memory (a userfaultfd acts on the address space it was
 * created in, so the inherited one would have). */
TEST_MEM(forked_child_context_is_its_own, ON_BOTH, ON_ALLMEM)
{
	char *mem = map_pages(1);
	struct uffdwp *ctx = open_registered(backend, 0, mem, 1);
	struct test_writer *w;
	struct uffdwp_event ev;
	int status;
	pid_t child;

	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_mem_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		int ret = uffdwp_writeprotect(ctx, mem, test_mem_page(), 0);

		uffdwp_close(ctx);
		_exit(ret == -ENOENT ? 0 : 10 + (ret < 0 ? -ret : 0));
	}
	CHECK_EQ(waitpid(child, &status, 0), child);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
	/* Still protected in the parent, still ours to resolve. */
	w = test_writer_start(mem, 4);
	ev = test_read_event(ctx);
	CHECK_EQ(ev.pagefault.address, (uintptr_t)mem);
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_mem_page(), 0));
	test_writer_join(w);
	CHECK_EQ(mem[0], 4);
	uffdwp_close(ctx);
}

/* The same for a write tracker's own context: destroying it with a forked
 * child alive leaves the tracked memory writable. */
TEST(tracker_destroy_with_forked_child_alive, ON_BOTH)
{
	struct uffdwp_tracker_opts o = {
		.sz = sizeof(o),
		.method = backend == UFFDWP_BACKEND_KERNEL ? UFFDWP_TRACK_SYNC
							   : UFFDWP_TRACK_EMULATED,
	};
	char *mem = test_map(4, true);
	struct uffdwp_tracker *t;
	struct test_writer *w;
	int go[2], status, ret;
	pid_t child;
	char c = 0;

	ret = uffdwp_tracker_create(&t, &o);
	if (ret == -EOPNOTSUPP)
		SKIP("the %s tracker is not available here", uffdwp_track_method_name(o.method));
	CHECK_OK(ret);
	CHECK_OK(uffdwp_tracker_add(t, mem, 4 * test_page()));
	CHECK_OK(pipe(go));
	child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		close(go[1]);
		_exit(read(go[0], &c, 1) == 0 ? 0 : 1);
	}
	close(go[0]);
	uffdwp_tracker_destroy(t);
	w = test_writer_start(mem + 2 * test_page(), 5);
	CHECK(test_writer_done(w, 5000));
	test_writer_join(w);
	close(go[1]);
	CHECK_EQ(waitpid(child, &status, 0), child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
