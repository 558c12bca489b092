/* SPDX-License-Identifier: MIT */
/* Write-protection on each memory type, and what a fork() child inherits. */
#include <sys/mman.h>
#include <sys/wait.h>
#include "test.h"

/* Protect [mem, mem+len), have a thread write at mem+offset, check the
 * fault reports the start of the faulting page of size mapping_page,
 * un-protect that page and check the write landed. */
static void round_trip(struct uffdwp *ctx, char *mem, size_t len, size_t offset,
		       size_t mapping_page)
{
	struct test_writer *w;
	struct uffdwp_event ev;
	uintptr_t fault_page;

	CHECK_OK(uffdwp_register(ctx, mem, len, UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, len, UFFDWP_WRITEPROTECT_MODE_WP));
	w = test_writer_start(mem + offset, 33);
	ev = test_read_event(ctx);
	CHECK(ev.pagefault.flags & UFFDWP_PAGEFAULT_FLAG_WP);
	fault_page = (uintptr_t)(mem + offset) & ~(uintptr_t)(mapping_page - 1);
	CHECK_EQ(ev.pagefault.address, fault_page);
	CHECK_OK(uffdwp_writeprotect(ctx, (void *)fault_page, mapping_page, 0));
	test_writer_join(w);
	CHECK_EQ(mem[offset], 33);
}

/* A round trip on each memory type; the fault reports the start of the
 * mapping's page, which for hugetlbfs is the huge page. */
TEST_MEM(memtype_round_trip, ON_BOTH, ON_ALLMEM)
{
	size_t page = test_mem_page();
	size_t len = 2 * page;
	char *mem = test_mem_map(len, true);
	struct uffdwp *ctx = test_open(backend, 0);

	if (test_mem != MEM_ANON)
		CHECK(uffdwp_features(ctx) & UFFDWP_FEATURE_WP_HUGETLBFS_SHMEM);
	round_trip(ctx, mem, len, page + page / 2 + 1, page);
	uffdwp_close(ctx);
}

/* A range that cuts a huge page is refused, as the kernel refuses it. */
TEST_MEM(memtype_hugetlb_unaligned, ON_BOTH, ON_HUGETLB)
{
	size_t huge = test_mem_page();
	char *mem = test_mem_map(huge, true);
	struct uffdwp *ctx = test_open(backend, 0);

	CHECK_OK(uffdwp_register(ctx, mem, huge, UFFDWP_REGISTER_MODE_WP));
	CHECK_RET(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP),
		  -EINVAL);
	CHECK_RET(uffdwp_writeprotect(ctx, mem + test_page(), huge - test_page(), 0), -EINVAL);
	uffdwp_close(ctx);
}

/* Without EVENT_FORK a fork() child gets its memory unprotected (the kernel
 * drops the WP bits; the emulation does the same) and the parent keeps its
 * protection. */
TEST(wp_fork_child_unprotected, ON_BOTH)
{
	char *mem = test_map(1, true);
	struct uffdwp *ctx = test_open(backend, 0);
	struct test_writer *w;
	struct uffdwp_event ev;
	int status;
	pid_t pid;

	CHECK_OK(uffdwp_register(ctx, mem, test_page(), UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		alarm(10);
		((volatile char *)mem)[0] = 2;
		_exit(mem[0] == 2 ? 0 : 1);
	}
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), -EAGAIN);
	w = test_writer_start(mem, 3);
	ev = test_read_event(ctx);
	CHECK_EQ(ev.pagefault.address, (uintptr_t)mem);
	CHECK_OK(uffdwp_writeprotect(ctx, mem, test_page(), 0));
	test_writer_join(w);
	uffdwp_close(ctx);
}
