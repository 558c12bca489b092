/* SPDX-License-Identifier: MIT */
/* Write-protection on each memory type, and what a fork() child inherits. */
#include <fcntl.h>
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

TEST(memtype_shmem, ON_BOTH)
{
	size_t len = 4 * test_page();
	int fd = memfd_create("uffdwp-test", MFD_CLOEXEC);
	struct uffdwp *ctx = test_open(backend, 0);
	char *mem;

	CHECK(fd >= 0);
	CHECK_OK(ftruncate(fd, (off_t)len));
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(mem != MAP_FAILED);
	memset(mem, 1, len);
	CHECK(uffdwp_features(ctx) & UFFDWP_FEATURE_WP_HUGETLBFS_SHMEM);
	round_trip(ctx, mem, len, 2 * test_page() + 5, test_page());
	uffdwp_close(ctx);
}

/* Reserve huge pages for this test if none are free (root can), and give
 * back what it took. Skips only when none can be had. */
static long huge_page_size(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	long kb = 0;

	CHECK(f != NULL);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Hugepagesize: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb * 1024;
}

static char *map_hugetlb(size_t len)
{
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);

	if (mem == MAP_FAILED) {
		FILE *f = fopen("/proc/sys/vm/nr_hugepages", "r+");
		long have = 0;

		if (!f)
			SKIP("no huge pages and /proc/sys/vm/nr_hugepages not writable");
		if (fscanf(f, "%ld", &have) != 1)
			have = 0;
		rewind(f);
		fprintf(f, "%ld\n", have + 2);
		fclose(f);
		mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		f = fopen("/proc/sys/vm/nr_hugepages", "w");
		if (f) { /* pages in use stay allocated; the pool shrinks back later */
			fprintf(f, "%ld\n", have);
			fclose(f);
		}
		if (mem == MAP_FAILED)
			SKIP("no huge page could be reserved: %s", strerror(errno));
	}
	memset(mem, 1, len);
	return mem;
}

TEST(memtype_hugetlb, ON_BOTH)
{
	long huge = huge_page_size();
	struct uffdwp *ctx = test_open(backend, 0);
	char *mem;

	if (huge <= 0)
		SKIP("no hugetlbfs on this kernel");
	mem = map_hugetlb((size_t)huge);
	/* A range that is not huge-page aligned is refused. */
	CHECK_OK(uffdwp_register(ctx, mem, (size_t)huge, UFFDWP_REGISTER_MODE_WP));
	CHECK_RET(uffdwp_writeprotect(ctx, mem, test_page(), UFFDWP_WRITEPROTECT_MODE_WP),
		  -EINVAL);
	CHECK_OK(uffdwp_unregister(ctx, mem, (size_t)huge));
	round_trip(ctx, mem, (size_t)huge, 3 * test_page() + 1, (size_t)huge);
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
