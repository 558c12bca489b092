/* SPDX-License-Identifier: MIT */
/* Helpers shared by the tests. */
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <time.h>
#include "test.h"

size_t test_page(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

struct uffdwp *test_open(enum uffdwp_backend backend, uint64_t features)
{
	struct uffdwp_opts o = { .sz = sizeof(o), .backend = backend, .features = features };
	struct uffdwp *ctx;
	int ret = uffdwp_open(&ctx, &o);

	if (ret == -EOPNOTSUPP)
		SKIP("%s backend lacks a requested feature (0x%llx)",
		     uffdwp_backend_name(backend), (unsigned long long)features);
	if (ret < 0 && backend == UFFDWP_BACKEND_KERNEL && ret != -EINVAL && ret != -ENOMEM)
		SKIP("kernel userfaultfd unavailable here: %s", strerror(-ret));
	if (ret < 0)
		FAIL("uffdwp_open(%s): %s", uffdwp_backend_name(backend), strerror(-ret));
	CHECK_EQ(uffdwp_backend(ctx), backend);
	return ctx;
}

char *test_map(size_t npages, bool touch)
{
	size_t len = npages * test_page();
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		FAIL("mmap %zu pages: %s", npages, strerror(errno));
	if (touch)
		memset(p, 1, len);
	return p;
}

enum test_mem test_mem = MEM_ANON;

static size_t huge_page_size(void)
{
	static size_t huge;
	FILE *f;
	char line[128];
	long kb = 0;

	if (huge)
		return huge;
	f = fopen("/proc/meminfo", "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Hugepagesize: %ld kB", &kb) == 1)
			break;
	fclose(f);
	huge = (size_t)kb * 1024;
	return huge;
}

size_t test_mem_page(void)
{
	if (test_mem != MEM_HUGETLB)
		return test_page();
	if (!huge_page_size())
		SKIP("no hugetlbfs on this kernel");
	return huge_page_size();
}

static void *mmap_hugetlb(size_t len)
{
	return mmap(NULL, len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
}

/* Reserve the huge pages a mapping needs when too few are free (root can),
 * and shrink the pool back at once: pages in use stay allocated to us.
 * Suites run side by side (gcc, ASan, TSan) take turns with a lock, or one
 * would shrink the pool under another's reservation. */
static void *map_hugetlb(size_t len)
{
	void *mem = mmap_hugetlb(len);
	int lock;
	FILE *f;
	long have = 0;

	if (mem != MAP_FAILED)
		return mem;
	lock = open("/tmp/uffdwp-test-hugepages.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0666);
	if (lock >= 0)
		flock(lock, LOCK_EX);
	mem = mmap_hugetlb(len);  /* freed while we waited for the lock? */
	if (mem != MAP_FAILED) {
		close(lock);
		return mem;
	}
	f = fopen("/proc/sys/vm/nr_hugepages", "r+");
	if (!f) {
		close(lock);
		SKIP("no free huge pages and /proc/sys/vm/nr_hugepages not writable");
	}
	if (fscanf(f, "%ld", &have) != 1)
		have = 0;
	fclose(f);
	/* Pages another test process still maps after it put the count back
	 * stay as surplus pages, and raising the count turns them into pool
	 * pages first: raise it further until the mapping fits. */
	for (long extra = (long)(len / huge_page_size()); extra <= 64 * (long)(len / huge_page_size());
	     extra *= 2) {
		f = fopen("/proc/sys/vm/nr_hugepages", "w");
		if (f) {
			fprintf(f, "%ld\n", have + extra);
			fclose(f);
		}
		mem = mmap_hugetlb(len);
		if (mem != MAP_FAILED)
			break;
	}
	f = fopen("/proc/sys/vm/nr_hugepages", "w");
	if (f) {
		fprintf(f, "%ld\n", have);
		fclose(f);
	}
	close(lock);  /* also releases it */
	if (mem == MAP_FAILED)
		SKIP("%zu huge pages could not be reserved: %s", len / huge_page_size(),
		     strerror(errno));
	return mem;
}

static void *map_shmem(size_t len)
{
	int fd = memfd_create("uffdwp-test", MFD_CLOEXEC);
	void *mem;

	if (fd < 0)
		FAIL("memfd_create: %s", strerror(errno));
	if (ftruncate(fd, (off_t)len) < 0)
		FAIL("ftruncate %zu: %s", len, strerror(errno));
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return mem;
}

char *test_mem_map(size_t len, bool touch)
{
	char *mem;

	if (len == 0 || len % test_mem_page())
		FAIL("test_mem_map: %zu is not a multiple of the %zu-byte page", len,
		     test_mem_page());
	switch (test_mem) {
	case MEM_SHMEM: mem = map_shmem(len); break;
	case MEM_HUGETLB: mem = map_hugetlb(len); break;
	default:
		mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
	}
	if (mem == MAP_FAILED)
		FAIL("mmap %zu bytes: %s", len, strerror(errno));
	if (touch)
		memset(mem, 1, len);
	return mem;
}

void test_mem_unmap(void *p, size_t len)
{
	if (munmap(p, len) < 0)
		FAIL("munmap: %s", strerror(errno));
}

static bool swap_active(void)
{
	FILE *f = fopen("/proc/swaps", "r");
	char line[256];
	int lines = 0;

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		lines++;
	fclose(f);
	return lines > 1; /* a header, then one line per swap area */
}

#define TEST_SWAP_FILE "/var/tmp/uffdwp-test.swap"  /* not tmpfs: swap needs a disk */
#define TEST_SWAP_SIZE (64 << 20)

static void swap_file_off(void)
{
	swapoff(TEST_SWAP_FILE);
	unlink(TEST_SWAP_FILE);
}

/* A swap area is a file whose first page says so: version 1, its last
 * usable page, and "SWAPSPACE2" at the end of that page (mkswap(8)). */
static bool make_swap_file(void)
{
	size_t page = test_page();
	char *header = calloc(1, page);
	uint32_t fields[3] = { 1, (uint32_t)(TEST_SWAP_SIZE / page - 1), 0 };
	int fd = open(TEST_SWAP_FILE, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
	bool ok;

	CHECK(header != NULL);
	memcpy(header + 1024, fields, sizeof(fields));
	memcpy(header + page - 10, "SWAPSPACE2", 10);
	ok = fd >= 0 && fallocate(fd, 0, 0, TEST_SWAP_SIZE) == 0 &&
	     pwrite(fd, header, page, 0) == (ssize_t)page && fsync(fd) == 0;
	if (fd >= 0)
		close(fd);
	free(header);
	return ok;
}

/* MADV_PAGEOUT passes over a page that is not on an LRU list yet, and a
 * page just faulted in waits in the per-CPU batch of the CPU that faulted
 * it; the madvise drains only its own CPU's batch. So a test that pages out
 * runs on one CPU, from before it faults its pages in. Under load, 7 runs in
 * 200 found a page still present after the madvise without this. */
static void pin_to_current_cpu(void)
{
	cpu_set_t one;
	int cpu = sched_getcpu();

	CHECK(cpu >= 0);
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	CHECK_OK(sched_setaffinity(0, sizeof(one), &one));
}

void test_need_swap(void)
{
	pin_to_current_cpu();
	if (swap_active())
		return;
	if (geteuid() != 0)
		SKIP("no swap is active and only root could add some");
	swap_file_off(); /* what an interrupted earlier run left */
	if (!make_swap_file()) {
		unlink(TEST_SWAP_FILE);
		SKIP("cannot make a swap file in /var/tmp: %s", strerror(errno));
	}
	test_cleanup(swap_file_off);
	if (swapon(TEST_SWAP_FILE, 0) != 0)
		SKIP("swapon: %s", strerror(errno));
}

uint64_t test_pagemap_entry(const void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t entry = 0;
	off_t at = (off_t)((uintptr_t)addr / test_page() * sizeof(entry));
	bool read_ok;

	CHECK(fd >= 0);
	read_ok = pread(fd, &entry, sizeof(entry), at) == (ssize_t)sizeof(entry);
	close(fd);
	CHECK(read_ok);
	return entry;
}

void test_page_out(void *addr, size_t npages)
{
	size_t page = test_page();

	CHECK_OK(madvise(addr, npages * page, MADV_PAGEOUT));
	for (size_t i = 0; i < npages; i++)
		if (!(test_pagemap_entry((char *)addr + i * page) & (UINT64_C(1) << 62)))  /* swapped */
			FAIL("page %zu of %zu still present after MADV_PAGEOUT", i, npages);
}

char test_thread_state(pid_t tid)
{
	char path[64], buf[256], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = '\0';
	p = strrchr(buf, ')');  /* the name before it may hold anything */
	return p && p[1] == ' ' ? p[2] : '?';
}

bool test_wait_fd(struct uffdwp *ctx, int timeout_ms)
{
	struct pollfd p = { .fd = uffdwp_fd(ctx), .events = POLLIN };
	int n;

	do
		n = poll(&p, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	return n == 1 && (p.revents & POLLIN);
}

struct uffdwp_event test_read_event(struct uffdwp *ctx)
{
	struct uffdwp_event ev;

	if (!test_wait_fd(ctx, 5000))
		FAIL("no event within 5 s");
	CHECK_RET(uffdwp_read_events(ctx, &ev, 1), 1);
	return ev;
}

struct test_writer {
	pthread_t thread;
	volatile char *addr;
	char value;
	sem_t done;
};

static void *writer_main(void *arg)
{
	struct test_writer *w = arg;

	/* Atomic so that a test may look at the byte while the writer is
	 * blocked in this very store (TSan would call that a race). */
	__atomic_store_n(w->addr, w->value, __ATOMIC_RELAXED);
	sem_post(&w->done);
	return NULL;
}

struct test_writer *test_writer_start(volatile char *addr, char value)
{
	struct test_writer *w = calloc(1, sizeof(*w));

	CHECK(w != NULL);
	w->addr = addr;
	w->value = value;
	sem_init(&w->done, 0, 0);
	CHECK_EQ(pthread_create(&w->thread, NULL, writer_main, w), 0);
	return w;
}

bool test_sem_wait(sem_t *sem, int timeout_ms)
{
	struct timespec ts;
	int ret;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	do
		ret = sem_timedwait(sem, &ts);
	while (ret < 0 && errno == EINTR);
	return ret == 0;
}

bool test_writer_done(struct test_writer *w, int timeout_ms)
{
	if (!test_sem_wait(&w->done, timeout_ms))
		return false;
	sem_post(&w->done); /* stays "done" for later calls */
	return true;
}

void test_writer_join(struct test_writer *w)
{
	CHECK(test_writer_done(w, 5000));
	pthread_join(w->thread, NULL);
	sem_destroy(&w->done);
	free(w);
}

void test_forbid(const struct test_forbidden *rules, size_t n)
{
	struct sock_filter filter[4 + 6 * 16];
	struct sock_fprog prog = { 0, filter };
	size_t k = 0;

	if (n > 16)
		FAIL("test_forbid: at most 16 rules");
	filter[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
						   offsetof(struct seccomp_data, arch));
	filter[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
	filter[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	for (size_t i = 0; i < n; i++) {
		unsigned ret = SECCOMP_RET_ERRNO | (unsigned)rules[i].errno_value;

		filter[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
							   offsetof(struct seccomp_data, nr));
		if (!rules[i].ioctl) {
			filter[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
								   (unsigned)rules[i].nr, 0, 1);
			filter[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ret);
			continue;
		}
		filter[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
							   (unsigned)rules[i].nr, 0, 3);
		filter[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
							   offsetof(struct seccomp_data, args[1]));
		filter[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
							   (unsigned)rules[i].ioctl, 0, 1);
		filter[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ret);
	}
	filter[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	prog.len = (unsigned short)k;
	CHECK_OK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
	CHECK_OK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog));
}

void test_forbid_userfaultfd(void)
{
	static const struct test_forbidden rules[] = {
		{ .nr = __NR_userfaultfd, .errno_value = ENOSYS },
		{ .nr = __NR_ioctl, .ioctl = 0xAA00 /* USERFAULTFD_IOC_NEW */, .errno_value = EACCES },
	};

	test_forbid(rules, 2);
}

int test_in_child(void (*fn)(void *), void *arg, int timeout_s)
{
	struct pollfd exited = { .events = POLLIN };
	int status;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid < 0)
		FAIL("fork: %s", strerror(errno));
	if (pid == 0) {
		fn(arg);
		fflush(NULL);
		_exit(0);
	}
	exited.fd = (int)syscall(SYS_pidfd_open, pid, 0);
	CHECK(exited.fd >= 0);
	if (poll(&exited, 1, timeout_s * 1000) != 1) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		FAIL("the child hung for %d s", timeout_s);
	}
	close(exited.fd);
	if (waitpid(pid, &status, 0) != pid)
		FAIL("waitpid: %s", strerror(errno));
	return status;
}

void test_check_exited_0(int status)
{
	if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
		SKIP("skipped in its child (the reason is above)");
	if (WIFSIGNALED(status))
		FAIL("the child died of signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
}
