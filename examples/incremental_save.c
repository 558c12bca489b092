/* SPDX-License-Identifier: MIT */
/*
 * incremental_save: dirty-page tracking for an incremental save.
 *
 * A table of records lives in one mapping. The first save writes the whole
 * table; every later save writes only the pages changed since the previous
 * save, found with a write tracker (collect with reset: a page written
 * while a save runs goes into this save or the next, never nowhere). At the
 * end the saved image is replayed and compared with the live table.
 *
 *   incremental_save [FILE]   (default: a temporary file, removed at exit)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uffdwp.h>

#define NRECORDS 100000

struct record {
	uint64_t id;
	uint64_t balance;
	char name[48];
};

/* Save the pages of runs at their offsets in the file. Returns bytes written or -errno. */
static long save_runs(int fd, const char *base, const struct uffdwp_run *runs, int n)
{
	long total = 0;

	for (int i = 0; i < n; i++) {
		off_t off = (const char *)runs[i].addr - base;

		if (pwrite(fd, runs[i].addr, runs[i].len, off) != (ssize_t)runs[i].len)
			return -errno;
		total += (long)runs[i].len;
	}
	return total;
}

/* An incremental save: only what changed since the last one. */
static long save_changes(struct uffdwp_tracker *t, int fd, const char *base)
{
	struct uffdwp_run runs[64];
	uintptr_t cursor = 0;
	long total = 0;
	int n;

	while ((n = uffdwp_tracker_collect(t, &cursor, runs, 64, UFFDWP_COLLECT_RESET)) > 0) {
		long w = save_runs(fd, base, runs, n);

		if (w < 0)
			return w;
		total += w;
	}
	return n < 0 ? n : total;
}

int main(int argc, char **argv)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t len = (NRECORDS * sizeof(struct record) + page - 1) / page * page;
	char path[] = "/tmp/incremental_saveXXXXXX";
	const char *file = argc > 1 ? argv[1] : path;
	struct uffdwp_tracker *t;
	struct record *table;
	unsigned seed = 1;
	char *image;
	int fd, ret;

	table = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (table == MAP_FAILED)
		return perror("mmap"), 1;
	for (size_t i = 0; i < NRECORDS; i++) {
		table[i].id = i;
		snprintf(table[i].name, sizeof(table[i].name), "account %zu", i);
	}
	fd = argc > 1 ? open(file, O_RDWR | O_CREAT | O_TRUNC, 0644) : mkstemp(path);
	if (fd < 0)
		return perror(file), 1;
	if (argc == 1)
		unlink(path);

	ret = uffdwp_tracker_create(&t, NULL);
	if (ret == 0)
		ret = uffdwp_tracker_add(t, table, len);
	if (ret < 0) {
		fprintf(stderr, "tracker: %s\n", strerror(-ret));
		return 1;
	}
	printf("tracking %zu KiB with the %s method\n", len >> 10,
	       uffdwp_track_method_name(uffdwp_tracker_method(t)));

	/* The full save: from now on the tracker knows what changes. */
	if (pwrite(fd, table, len, 0) != (ssize_t)len)
		return perror("pwrite"), 1;
	printf("save 0: %zu KiB (full)\n", len >> 10);

	for (int round = 1; round <= 5; round++) {
		long saved;

		/* Some work: a few hundred random updates. */
		for (int k = 0; k < 50 * round; k++)
			table[rand_r(&seed) % NRECORDS].balance += (uint64_t)k;
		saved = save_changes(t, fd, (const char *)table);
		if (saved < 0) {
			fprintf(stderr, "save: %s\n", strerror((int)-saved));
			return 1;
		}
		printf("save %d: %ld KiB (%.1f%% of the table)\n", round, saved >> 10,
		       100.0 * (double)saved / (double)len);
	}

	/* The file now equals the table. */
	image = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	if (image == MAP_FAILED)
		return perror("mmap file"), 1;
	ret = memcmp(image, table, len) ? 1 : 0;
	printf("%s\n", ret ? "MISMATCH: the saved image differs" : "saved image matches the table");
	munmap(image, len);
	uffdwp_tracker_destroy(t);
	close(fd);
	munmap(table, len);
	return ret;
}
