/* SPDX-License-Identifier: MIT */
/*
 * What memory a context may change: only what it registered and what is
 * still that registration's mapping. Both backends answer as the kernel.
 */
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include "test.h"

/* The protection of the mapping holding addr, from /proc/self/maps. */
static int prot_of(const void *addr)
{
	FILE *f = fopen("/proc/self/maps", "r");
	unsigned long lo, hi;
	char perms[5];
	int prot = -1;

	CHECK(f != NULL);
	while (fscanf(f, "%lx-%lx %4s%*[^\n]", &lo, &hi, perms) == 3) {
		if ((uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
			prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
			       (perms[2] == 'x' ? PROT_EXEC : 0);
			break;
		}
	}
	fclose(f);
	return prot;
}

static void map_fixed(char *addr, int prot)
{
	CHECK(mmap(addr, test_page(), prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
	      addr);
}

/*
 * The program unmaps part of a registration and maps a guard page and a
 * read-only page there. They are not the context's: the kernel forgot that
 * part of the registration at munmap, so changing them is -ENOENT, and
 * neither un-protect nor close ever makes them writable. (On the emulated
 * backend a read-only mapping put where the context had protected a page
 * cannot be told from that page: see uffdwp_emulated(7). The test puts the
 * read-only page where nothing was protected, and a guard where something was.)
 */
static void foreign_mappings_scenario(enum uffdwp_backend backend)
{
	size_t page = test_page();
	char *mem = test_map(5, true);
	struct uffdwp *ctx = test_open(backend, 0);
	char *guard = mem + page, *readonly = mem + 2 * page, *protected_guard = mem + 3 * page;

	CHECK_OK(uffdwp_register(ctx, mem, 5 * page, UFFDWP_REGISTER_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, mem, 5 * page, UFFDWP_WRITEPROTECT_MODE_WP));
	CHECK_OK(uffdwp_writeprotect(ctx, guard, 2 * page, 0));
	CHECK_OK(munmap(guard, 3 * page));
	map_fixed(guard, PROT_NONE);
	map_fixed(readonly, PROT_READ);
	map_fixed(protected_guard, PROT_NONE);

	for (char *p = guard; p < mem + 4 * page; p += page) {
		CHECK_RET(uffdwp_writeprotect(ctx, p, page, 0), -ENOENT);
		CHECK_RET(uffdwp_writeprotect(ctx, p, page, UFFDWP_WRITEPROTECT_MODE_WP), -ENOENT);
	}
	CHECK_EQ(prot_of(guard), PROT_NONE);
	CHECK_EQ(prot_of(readonly), PROT_READ);
	CHECK_EQ(prot_of(protected_guard), PROT_NONE);
	/* A call over the whole registration stops at the first mapping that
	 * is not its (the kernel's -ENOENT), and changes none of them. */
	CHECK_RET(uffdwp_writeprotect(ctx, mem, 5 * page, 0), -ENOENT);
	CHECK_RET(uffdwp_writeprotect(ctx, mem, 5 * page, UFFDWP_WRITEPROTECT_MODE_WP), -ENOENT);
	CHECK_EQ(prot_of(guard), PROT_NONE);
	CHECK_EQ(prot_of(readonly), PROT_READ);
	CHECK_EQ(prot_of(protected_guard), PROT_NONE);
	/* What is still the registration's stays the context's. */
	CHECK_OK(uffdwp_writeprotect(ctx, mem + 4 * page, page, UFFDWP_WRITEPROTECT_MODE_WP));
	uffdwp_close(ctx);
	CHECK_EQ(prot_of(guard), PROT_NONE);
	CHECK_EQ(prot_of(readonly), PROT_READ);
	CHECK_EQ(prot_of(protected_guard), PROT_NONE);
	mem[0] = 2;           /* writable again: would block or crash if not */
	mem[4 * page] = 2;
}

TEST(foreign_mappings_in_a_hole_are_left_alone, ON_BOTH)
{
	foreign_mappings_scenario(backend);
}

/* Where a plain file is mapped for writing, both backends refuse to
 * register it as the kernel does (-EINVAL): write-protection covers
 * anonymous memory, shmem and hugetlbfs only. A tmpfs file is shmem. */
static void check_file_mapping(enum uffdwp_backend backend, const char *dir, int want)
{
	char path[256];
	size_t len = 2 * test_page();
	int fd, flags[2] = { MAP_PRIVATE, MAP_SHARED };

	snprintf(path, sizeof(path), "%s/uffdwp-test-XXXXXX", dir);
	fd = mkstemp(path);
	CHECK(fd >= 0);
	unlink(path);
	CHECK_OK(ftruncate(fd, (off_t)len));
	for (int i = 0; i < 2; i++) {
		struct uffdwp *ctx = test_open(backend, 0);
		char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, flags[i], fd, 0);

		CHECK(mem != MAP_FAILED);
		mem[0] = 1;
		if (want == 0 && flags[i] == MAP_PRIVATE) {
			/* private tmpfs: the kernel takes it only as shmem allows */
			munmap(mem, len);
			uffdwp_close(ctx);
			continue;
		}
		CHECK_RET(uffdwp_register(ctx, mem, len, UFFDWP_REGISTER_MODE_WP), want);
		uffdwp_close(ctx);
		CHECK_OK(munmap(mem, len));
	}
	close(fd);
}

TEST(register_file_backed_refused, ON_BOTH)
{
	struct statfs fs;

	CHECK_OK(statfs("/var/tmp", &fs));
	if (fs.f_type == TMPFS_MAGIC)
		SKIP("/var/tmp is tmpfs here: no disk file system to map a plain file from");
	check_file_mapping(backend, "/var/tmp", -EINVAL);
}

TEST(register_tmpfs_file_accepted, ON_BOTH)
{
	struct statfs fs;

	if (statfs("/dev/shm", &fs) < 0 || fs.f_type != TMPFS_MAGIC)
		SKIP("no tmpfs at /dev/shm");
	check_file_mapping(backend, "/dev/shm", 0);
}

/* The same judgements on a kernel without PROCMAP_QUERY (before 6.11): the
 * mappings are then read from /proc/self/smaps. */
#define PROCMAP_QUERY_NR 0xc0686611UL  /* _IOWR('f', 17, struct procmap_query) */

static void without_procmap_query(void *arg)
{
	static const struct test_forbidden rules[] = {
		{ SYS_ioctl, PROCMAP_QUERY_NR, ENOTTY },
	};
	struct statfs fs;

	(void)arg;
	test_forbid(rules, 1);
	foreign_mappings_scenario(UFFDWP_BACKEND_EMULATED);
	if (statfs("/var/tmp", &fs) == 0 && fs.f_type != TMPFS_MAGIC)
		check_file_mapping(UFFDWP_BACKEND_EMULATED, "/var/tmp", -EINVAL);
	check_file_mapping(UFFDWP_BACKEND_EMULATED, "/dev/shm", 0);
}

TEST(ownership_without_procmap_query, ON_EMULATED)
{
	test_check_exited_0(test_in_child(without_procmap_query, NULL, 20));
}
