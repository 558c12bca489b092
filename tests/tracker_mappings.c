/* SPDX-License-Identifier: MIT */
/*
 * The emulated tracker and the process's mapping budget: every page it
 * un-protects costs two mappings, and vm.max_map_count is the program's too.
 */
#include <pthread.h>
#include <sys/mman.h>
#include "test.h"

static long count_mappings(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	long n = 0;
	int c;

	CHECK(f != NULL);
	while ((c = fgetc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

static struct uffdwp_tracker *emulated_tracker(char *mem, size_t len)
{
	struct uffdwp_tracker_opts o = { .sz = sizeof(o), .method = UFFDWP_TRACK_EMULATED };
	struct uffdwp_tracker *t;

	CHECK_OK(uffdwp_tracker_create(&t, &o));
	CHECK_OK(uffdwp_tracker_add(t, mem, len));
	return t;
}

/* Every written page is reported (runs may be coarser than the writes). */
static void check_reported(struct uffdwp_tracker *t, char *mem, size_t npages, size_t stride)
{
	size_t page = test_page(), words = (npages + 63) / 64;
	uint64_t *bitmap = calloc(words, sizeof(*bitmap));

	CHECK(bitmap != NULL);
	CHECK(uffdwp_tracker_bitmap(t, mem, npages * page, bitmap, UFFDWP_COLLECT_RESET) > 0);
	for (size_t i = 0; i < npages; i += stride)
		if (!(bitmap[i / 64] & (UINT64_C(1) << (i % 64))))
			FAIL("page %zu written but not reported", i);
	free(bitmap);
}

/* 65,536 scattered writes would take 131,072 mappings one page at a time,
 * twice the default vm.max_map_count: the tracker coarsens instead, every
 * write completes and is reported, and the mappings stay few. */
TEST_TIMEOUT(tracker_emulated_scattered_writes_stay_within_map_count, ON_NONE, 120)
{
	size_t page = test_page(), npages = 131072, stride = 2;
	char *mem = test_map(npages, true);
	long before = count_mappings();
	struct uffdwp_tracker *t = emulated_tracker(mem, npages * page);

	for (size_t i = 0; i < npages; i += stride)
		mem[i * page] = 2;
	CHECK(count_mappings() - before < 20000);
	check_reported(t, mem, npages, stride);
	uffdwp_tracker_destroy(t);
	CHECK_OK(munmap(mem, npages * page));
}

static long saved_max_map_count;

static void write_max_map_count(long value)
{
	FILE *f = fopen("/proc/sys/vm/max_map_count", "w");

	if (f) {
		fprintf(f, "%ld\n", value);
		fclose(f);
	}
}

static void restore_max_map_count(void)
{
	write_max_map_count(saved_max_map_count);
}

struct widen_case {
	char *mem;
	size_t npages, stride;
	sem_t done;
};

static void *write_scattered(void *arg)
{
	struct widen_case *c = arg;

	for (size_t i = 0; i < c->npages; i += c->stride)
		c->mem[i * test_page()] = 2;
	sem_post(&c->done);
	return NULL;
}

/* When the kernel refuses to split one more mapping (-ENOMEM past
 * vm.max_map_count) the tracker widens the block it un-protects until the
 * kernel accepts: the writer completes instead of faulting for ever. The
 * sysctl is the machine's: this thread gives the writer 20 s and puts the
 * old value back either way, before the runner could kill us. */
TEST_TIMEOUT(tracker_emulated_past_max_map_count_widens, ON_NONE, 60)
{
	struct widen_case c = { .npages = 16384, .stride = 2 };
	size_t len = c.npages * test_page();
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r+");
	struct uffdwp_tracker *t;
	pthread_t writer;
	bool done;

	if (!f || fscanf(f, "%ld", &saved_max_map_count) != 1)
		SKIP("vm.max_map_count cannot be read or written here");
	fclose(f);
	c.mem = test_map(c.npages, true);
	CHECK_OK(sem_init(&c.done, 0, 0));
	t = emulated_tracker(c.mem, len);
	test_cleanup(restore_max_map_count);
	write_max_map_count(count_mappings() + 1000);
	CHECK_OK(pthread_create(&writer, NULL, write_scattered, &c));
	done = test_sem_wait(&c.done, 20000);
	restore_max_map_count();
	if (!done)
		FAIL("the writes did not complete in 20 s");
	CHECK_OK(pthread_join(writer, NULL));
	check_reported(t, c.mem, c.npages, c.stride);
	uffdwp_tracker_destroy(t);
}
