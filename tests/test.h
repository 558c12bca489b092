/* SPDX-License-Identifier: MIT */
/*
 * The test framework. Each TEST() lands in a table (the "uffdwp_tests"
 * linker section); the runner (runner.c) forks each test once per backend
 * and memory type it names, with a timeout. Inside a test, a failed check prints file:line and
 * both values and ends the child with status 1; SKIP() ends it with 77 and a
 * reason. Returning from the test body is a pass.
 */
#ifndef UFFDWP_TEST_H
#define UFFDWP_TEST_H

#include <errno.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include "uffdwp.h"

#define ON_KERNEL   (1u << UFFDWP_BACKEND_KERNEL)
#define ON_EMULATED (1u << UFFDWP_BACKEND_EMULATED)
#define ON_BOTH     (ON_KERNEL | ON_EMULATED)
#define ON_NONE     0u  /* backend-independent: runs once, backend == AUTO */

/* The memory types a test can run over, as the kernel's uffd unit tests do. */
enum test_mem { MEM_ANON, MEM_SHMEM, MEM_HUGETLB, MEM_COUNT };

#define ON_ANON    (1u << MEM_ANON)    /* private anonymous, base pages */
#define ON_SHMEM   (1u << MEM_SHMEM)   /* a shared memfd */
#define ON_HUGETLB (1u << MEM_HUGETLB) /* private anonymous MAP_HUGETLB */
#define ON_ALLMEM  (ON_ANON | ON_SHMEM | ON_HUGETLB)

/* The memory type this run of the test is on (set by the runner). */
extern enum test_mem test_mem;

struct test_case {
	const char *name;
	void (*fn)(enum uffdwp_backend backend);
	unsigned backends;
	unsigned mems;  /* ON_ANON... */
	unsigned timeout_s;
	const char *file;  /* the runner orders tests by file and line */
	int line;
};

#define TEST_MEM_TIMEOUT(fn_, backends_, mems_, timeout_)                         \
	static void fn_(enum uffdwp_backend backend);                             \
	static const struct test_case test_case_##fn_                              \
		__attribute__((used, section("uffdwp_tests"), aligned(sizeof(void *)))) = \
		{ #fn_, fn_, backends_, mems_, timeout_, __FILE__, __LINE__ };            \
	static void fn_(enum uffdwp_backend backend)

/* A test run once per backend in backends_ and memory type in mems_; the
 * body maps its memory with test_mem_map(). */
#define TEST_MEM(fn_, backends_, mems_) TEST_MEM_TIMEOUT(fn_, backends_, mems_, 30)
/* Plain tests run on anonymous memory only. */
#define TEST_TIMEOUT(fn_, backends_, timeout_) TEST_MEM_TIMEOUT(fn_, backends_, ON_ANON, timeout_)
#define TEST(fn_, backends_) TEST_TIMEOUT(fn_, backends_, 30)

#define TEST_EXIT_SKIP 77

_Noreturn void test_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
_Noreturn void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define FAIL(...) test_fail(__FILE__, __LINE__, __VA_ARGS__)
#define SKIP(...) test_skip(__VA_ARGS__)

#define CHECK(cond) do { if (!(cond)) FAIL("check failed: %s", #cond); } while (0)

#define CHECK_EQ(a, b) do {                                                     \
	long long a_ = (long long)(a), b_ = (long long)(b);                         \
	if (a_ != b_)                                                               \
		FAIL("%s == %s: %lld != %lld", #a, #b, a_, b_);                     \
} while (0)

/* expr must return exactly err (a negative errno, or 0). */
#define CHECK_RET(expr, err) do {                                               \
	long long r_ = (long long)(expr), e_ = (long long)(err);                    \
	if (r_ != e_)                                                               \
		FAIL("%s: got %lld (%s), want %lld (%s)", #expr, r_,                \
		     r_ < 0 ? strerror((int)-r_) : "ok", e_,                        \
		     e_ < 0 ? strerror((int)-e_) : "ok");                           \
} while (0)

#define CHECK_OK(expr) CHECK_RET(expr, 0)

/* Run fn when the test ends, passed, failed or skipped (last in, first
 * out): for changes to the machine that must not outlive the test. */
void test_cleanup(void (*fn)(void));

/* --- helpers (util.c) --- */

size_t test_page(void);

/* Open a context on backend with features (0 = defaults); skips the test
 * when the kernel backend cannot be opened on this machine, or a requested
 * feature is missing. */
struct uffdwp *test_open(enum uffdwp_backend backend, uint64_t features);

/* mmap npages of private anonymous memory, every byte set to 1 unless
 * !touch (then never touched, all zero). Fails the test on error. */
char *test_map(size_t npages, bool touch);

/* The page size of this run's memory type: the base page, or the huge page
 * size for MEM_HUGETLB. */
size_t test_mem_page(void);

/* Map len bytes (a multiple of test_mem_page()) of this run's memory type,
 * readable and writable, every byte set to 1 unless !touch. Skips the test
 * when the machine lacks the type (hugetlb: pages are reserved for the test
 * when root can); fails it on any other error. */
char *test_mem_map(size_t len, bool touch);
void test_mem_unmap(void *p, size_t len);

/* A system call made to fail, as a sandbox or an older kernel would:
 * syscall nr fails with errno_value; for ioctl, only request `ioctl`
 * (0: every ioctl). */
struct test_forbidden {
	long nr;
	unsigned long ioctl;
	int errno_value;
};

/* Install a seccomp filter failing each of rules in this process (for a
 * test's child: it cannot be undone). */
void test_forbid(const struct test_forbidden *rules, size_t n);

/* A sandbox without userfaultfd (test_forbid): the syscall is ENOSYS, and
 * creating one through /dev/userfaultfd (USERFAULTFD_IOC_NEW) EACCES. */
void test_forbid_userfaultfd(void);

/* Run fn(arg) in a child process, which must end within timeout_s (a hang
 * detector: it is killed and the test fails): returns its wait status
 * (exit 0 when fn returned; a test failure inside it exits 1). */
int test_in_child(void (*fn)(void *), void *arg, int timeout_s);

/* Fail the test unless status (a wait status) is an exit with status 0;
 * skip it if the child skipped (77). */
void test_check_exited_0(int status);

/* Make sure swap is active, for tests of swapped-out pages: if none is,
 * and we are root, a swap file is made and enabled for this test only.
 * Skips when neither is possible. Pins the calling thread to its CPU (see
 * test_page_out), so call it before faulting in the pages to swap. */
void test_need_swap(void);

/* The page's /proc/self/pagemap entry (bit 62: swapped, bit 57: uffd-wp). */
uint64_t test_pagemap_entry(const void *addr);

/* Swap out npages at addr with MADV_PAGEOUT, after test_need_swap; fails
 * the test unless /proc/self/pagemap then shows every page swapped. */
void test_page_out(void *addr, size_t npages);

/* The state letter of a thread of ours in /proc (S: sleeping), or '?'. */
char test_thread_state(pid_t tid);

/* Wait up to timeout_ms for the context's fd to be readable; true if it is. */
bool test_wait_fd(struct uffdwp *ctx, int timeout_ms);

/* Read exactly one event, waiting up to 5 s for it; fails the test otherwise. */
struct uffdwp_event test_read_event(struct uffdwp *ctx);

/* sem_timedwait for up to timeout_ms, through EINTR; true if posted. */
bool test_sem_wait(sem_t *sem, int timeout_ms);

/* A thread that writes `value` at `addr` and then posts that it is done. */
struct test_writer;
struct test_writer *test_writer_start(volatile char *addr, char value);
/* True if the writer finished within timeout_ms. */
bool test_writer_done(struct test_writer *w, int timeout_ms);
/* Join and free (the write must have completed). */
void test_writer_join(struct test_writer *w);

#endif
