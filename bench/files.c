/* SPDX-License-Identifier: MIT */
/*
 * uffdwp bench files: snapshot files with codecs (uffdwp-snapshot(5)).
 *
 * Three contents of --size bytes: the demo's store (64-byte records as
 * `uffdwp demo` lays them out), an in-memory SQLite database (its
 * serialized pages: tables of rows with text and numbers, an index), and
 * random bytes (incompressible). For each, and each codec:
 *   size/CODEC/CONTENT   the file's bytes per byte of memory (the "ns/op"
 *                        column holds file bytes, one op per memory byte),
 *                        against size/raw/CONTENT (the region itself);
 *   save/PLACE/CODEC/CONTENT  a live snapshot into a file on tmpfs (/dev/shm)
 *                        or on disk (/var/tmp, fdatasync included), per
 *                        byte of memory, against write/PLACE/CONTENT: the raw
 *                        region written with write(2) to the same place in
 *                        the same run;
 * and checksum/xxh3 (the format's version 2 checksum) and checksum/sum64
 * (version 1's) against memcpy of the same bytes (one core). Then, from the
 * content's lz4 file on tmpfs:
 *   lazy/first-access/CONTENT  uffdwp_snapshot_restore_lazy() until a read
 *                        of a page in the middle returns, against a 1 ms
 *                        budget row (lazy/1ms-budget);
 *   lazy/loaded/CONTENT  until every page is there, while a reader reads
 *                        64-byte records at random, against lazy/full/CONTENT:
 *                        uffdwp_snapshot_restore_mapping() (which checks
 *                        the whole file first) and the same reads;
 *   lazy/reads/CONTENT   those reads during the fill, per read, against
 *                        lazy/full-reads/CONTENT, the same reads on loaded
 *                        memory.
 * Targets (issue 11): lz4 saves to disk at least as fast as write(2) on the
 * store and SQLite (ratio <= 1.0), and at 0.9x on random bytes (<= 1.11);
 * zstd files at most half the raw size on the store and SQLite; the
 * checksum at least twice memcpy's bandwidth (<= 0.5); the first access of
 * a lazy restore within 1 ms of the call, and the whole region loaded in at
 * most 1.2x the time of a full restore.
 */
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "bench.h"
#include "format.h"
#include "uffdwp.h"

struct content {
	const char *name;
	int (*make)(unsigned char *mem, size_t len);
};

/* The demo's store: key, version, five payload words, a check word. */
static int make_store(unsigned char *mem, size_t len)
{
	uint64_t *w = (uint64_t *)mem;

	for (size_t i = 0; i < len / 64; i++) {
		uint64_t rnd = i * 0x2545f4914f6cdd1dull, h = i * 0x9e3779b97f4a7c15ull ^ 1;

		w[8 * i] = i;
		w[8 * i + 1] = 1;
		for (int k = 0; k < 5; k++) {
			w[8 * i + 2 + k] = rnd + (uint64_t)k;
			h = (h ^ (rnd + (uint64_t)k)) * 0xff51afd7ed558ccdull;
		}
		w[8 * i + 7] = h;
	}
	return 0;
}

static int make_random(unsigned char *mem, size_t len)
{
	uint64_t x = 0x9e3779b97f4a7c15ull, *w = (uint64_t *)mem;

	for (size_t i = 0; i < len / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x;
	}
	return 0;
}

/* The size of the main database: page_count * page_size. */
static sqlite3_int64 database_bytes(sqlite3 *db)
{
	sqlite3_int64 v[2] = { 0, 0 };
	const char *pragmas[2] = { "PRAGMA page_count", "PRAGMA page_size" };

	for (int i = 0; i < 2; i++) {
		sqlite3_stmt *st;

		if (sqlite3_prepare_v2(db, pragmas[i], -1, &st, NULL) != SQLITE_OK)
			return -1;
		if (sqlite3_step(st) == SQLITE_ROW)
			v[i] = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
	}
	return v[0] * v[1];
}

/*
 * An in-memory SQLite database grown to len bytes (an orders table with
 * names, cities, amounts, dates and notes, and an index on the customer),
 * serialized into mem: the pages SQLite holds in memory.
 */
static int make_sqlite(unsigned char *mem, size_t len)
{
	static const char *const names[] = { "alice", "bob", "carol", "dave", "erin", "frank",
					     "grace", "heidi", "ivan", "judy", "mallory", "oscar" };
	static const char *const cities[] = { "Paris", "Lyon", "Berlin", "Madrid", "Oslo",
					      "Turin", "Porto", "Ghent" };
	sqlite3 *db;
	sqlite3_stmt *st;
	sqlite3_int64 size = 0;
	unsigned char *image;
	uint64_t x = 88172645463325252ull;
	int ret = -EIO;

	if (sqlite3_open(":memory:", &db) != SQLITE_OK)
		return -ENOMEM;
	if (sqlite3_exec(db, "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, city TEXT,"
			     " amount REAL, day TEXT, note TEXT);"
			     "CREATE INDEX by_customer ON orders(customer);", NULL, NULL, NULL) ||
	    sqlite3_prepare_v2(db, "INSERT INTO orders(customer, city, amount, day, note) "
			       "VALUES(?, ?, ?, ?, ?)", -1, &st, NULL))
		goto out;
	while (size < (sqlite3_int64)len) {
		sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
		for (int i = 0; i < 20000; i++) {
			char day[16], note[64];

			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			snprintf(day, sizeof(day), "2026-%02u-%02u", (unsigned)(x % 12) + 1,
				 (unsigned)(x >> 8) % 28 + 1);
			snprintf(note, sizeof(note), "order %llu for %s, ref %06llu",
				 (unsigned long long)(x >> 20) % 100000, names[(x >> 4) % 12],
				 (unsigned long long)(x >> 30) % 1000000);
			sqlite3_bind_text(st, 1, names[x % 12], -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 2, cities[(x >> 12) % 8], -1, SQLITE_STATIC);
			sqlite3_bind_double(st, 3, (double)((x >> 16) % 100000) / 100);
			sqlite3_bind_text(st, 4, day, -1, SQLITE_TRANSIENT);
			sqlite3_bind_text(st, 5, note, -1, SQLITE_TRANSIENT);
			if (sqlite3_step(st) != SQLITE_DONE)
				goto fin;
			sqlite3_reset(st);
		}
		sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
		size = database_bytes(db);
		if (size <= 0)
			goto fin;
	}
	image = sqlite3_serialize(db, "main", &size, 0);
	if (image) {
		memcpy(mem, image, len);
		sqlite3_free(image);
		ret = 0;
	}
fin:
	sqlite3_finalize(st);
out:
	sqlite3_close(db);
	return ret;
}

static const struct content contents[] = {
	{ "store", make_store },
	{ "sqlite", make_sqlite },
	{ "random", make_random },
};

static const struct {
	const char *name;
	enum uffdwp_codec codec;
	int level;
} codecs[] = {
	{ "none", UFFDWP_CODEC_NONE, 0 },
	{ "lz4", UFFDWP_CODEC_LZ4, 0 },
	{ "zstd:1", UFFDWP_CODEC_ZSTD, 1 },
	{ "zstd:3", UFFDWP_CODEC_ZSTD, 3 },
};

static const struct {
	const char *name, *dir;
	bool sync;
} places[] = {
	{ "tmpfs", "/dev/shm", false },
	{ "disk", "/var/tmp", true },
};

/* Time a live snapshot of mem into path with a codec; *size gets the file's. */
static int save(const char *path, bool sync, unsigned char *mem, size_t len,
		enum uffdwp_codec codec, int level, uint64_t *ns, uint64_t *size)
{
	struct uffdwp_snapshot_region r = { (uint64_t)(uintptr_t)mem, len };
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .codec = codec, .codec_level = level };
	struct uffdwp_snapshot *snap;
	struct stat st;
	uint64_t t0;
	int ret;

	o.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (o.fd < 0)
		return -errno;
	t0 = bench_now_ns();
	ret = uffdwp_snapshot_begin(&snap, &r, 1, &o);
	if (ret == 0)
		ret = uffdwp_snapshot_end(snap);
	if (ret == 0 && sync && fdatasync(o.fd) < 0)
		ret = -errno;
	*ns = bench_now_ns() - t0;
	if (ret == 0 && fstat(o.fd, &st) < 0)
		ret = -errno;
	*size = ret == 0 ? (uint64_t)st.st_size : 0;
	close(o.fd);
	unlink(path);
	return ret;
}

/* Time write(2) of the raw region into path. */
static int write_raw(const char *path, bool sync, const unsigned char *mem, size_t len,
		     uint64_t *ns)
{
	const size_t chunk = (size_t)1 << 20;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), ret = 0;
	uint64_t t0;

	if (fd < 0)
		return -errno;
	t0 = bench_now_ns();
	for (size_t off = 0; off < len && !ret; off += chunk)
		if (write(fd, mem + off, len - off < chunk ? len - off : chunk) < 0)
			ret = -errno;
	if (!ret && sync && fdatasync(fd) < 0)
		ret = -errno;
	*ns = bench_now_ns() - t0;
	close(fd);
	unlink(path);
	return ret;
}

/* The best of `repeat` runs of memcpy, xxh3 and sum64 over mem. */
static void checksums(struct bench *b, const unsigned char *mem, size_t len)
{
	unsigned char *dst = malloc(len);
	uint64_t best[3] = { UINT64_MAX, UINT64_MAX, UINT64_MAX }, sink = 0;

	if (!dst) {
		bench_skip(b, "checksum/xxh3", "no memory for the memcpy baseline");
		return;
	}
	memset(dst, 1, len);
	for (unsigned r = 0; r < (b->opts->repeat ? b->opts->repeat : 1) + 1; r++) {
		uint64_t t0 = bench_now_ns(), t;

		memcpy(dst, mem, len);
		__asm__ volatile("" : : "r"(dst) : "memory");
		t = bench_now_ns();
		best[0] = t - t0 < best[0] ? t - t0 : best[0];
		sink ^= uffdwp__format_sum(2, mem, len, 0);
		t0 = bench_now_ns();
		best[1] = t0 - t < best[1] ? t0 - t : best[1];
		sink ^= uffdwp__format_sum(1, mem, len, 0);
		t = bench_now_ns();
		best[2] = t - t0 < best[2] ? t - t0 : best[2];
	}
	__asm__ volatile("" : : "r"(sink));
	bench_row(b, &(struct bench_row){ .name = "checksum/memcpy", .unit = "byte", .ops = len,
					  .ns = best[0] });
	bench_row(b, &(struct bench_row){ .name = "checksum/xxh3", .unit = "byte", .ops = len,
					  .ns = best[1], .baseline = "checksum/memcpy",
					  .note = bench_strdup(b, "%.1f GB/s",
							       (double)len / best[1]) });
	bench_row(b, &(struct bench_row){ .name = "checksum/sum64", .unit = "byte", .ops = len,
					  .ns = best[2], .baseline = "checksum/memcpy",
					  .note = "version 1" });
	bench_target(b, "checksum/xxh3", "checksum/memcpy", 0.5);
	free(dst);
}

static uint64_t random_reads(const unsigned char *mem, size_t len, uint64_t n, uint64_t *x)
{
	uint64_t sum = 0;

	for (uint64_t i = 0; i < n; i++) {
		*x ^= *x << 13;
		*x ^= *x >> 7;
		*x ^= *x << 17;
		sum += mem[(*x % (len / 64)) * 64];
	}
	return sum;
}

/* Lazy against full restore of the file at path (len bytes of memory). */
static void lazy_rows(struct bench *b, const char *content, const char *path, size_t len)
{
	const char *full = bench_strdup(b, "lazy/full/%s", content);
	const char *full_reads = bench_strdup(b, "lazy/full-reads/%s", content);
	uint64_t best_first = UINT64_MAX, best_loaded = UINT64_MAX, best_full = UINT64_MAX;
	uint64_t reads = 0, reads_ns = 0, full_reads_ns = 0, x = 1, sink = 0;
	unsigned repeat = b->opts->repeat ? b->opts->repeat : 1;

	for (unsigned r = 0; r < repeat; r++) {
		struct uffdwp_lazy_restore *lr;
		uint64_t t0 = bench_now_ns(), t1, t2, n = 0;
		unsigned char *image;
		size_t image_len;
		int ret = uffdwp_snapshot_restore_lazy((const char *const[]){ path }, 1,
						       (void **)&image, &image_len, &lr, NULL);

		if (ret < 0) {
			bench_skip(b, bench_strdup(b, "lazy/first-access/%s", content),
				   "lazy restore: %s", strerror(-ret));
			return;
		}
		sink += image[image_len / 2];
		t1 = bench_now_ns();
		while (uffdwp_lazy_restore_wait(lr, 0) == -ETIMEDOUT) {
			sink += random_reads(image, image_len, 64, &x);
			n += 64;
		}
		t2 = bench_now_ns();
		uffdwp_lazy_restore_end(lr, 0);
		munmap(image, image_len);
		best_first = t1 - t0 < best_first ? t1 - t0 : best_first;
		if (t2 - t0 < best_loaded) {
			best_loaded = t2 - t0;
			reads = n;
			reads_ns = t2 - t1;
		}
	}
	for (unsigned r = 0; r < repeat; r++) {
		uint64_t t0 = bench_now_ns(), t1;
		unsigned char *image;
		size_t image_len;
		int ret = uffdwp_snapshot_restore_mapping((const char *const[]){ path }, 1,
							  (void **)&image, &image_len, NULL);

		if (ret < 0) {
			bench_skip(b, full, "restore: %s", strerror(-ret));
			return;
		}
		t1 = bench_now_ns();
		sink += random_reads(image, image_len, reads ? reads : 64, &x);
		full_reads_ns = bench_now_ns() - t1;
		munmap(image, image_len);
		best_full = bench_now_ns() - t0 < best_full ? bench_now_ns() - t0 : best_full;
	}
	__asm__ volatile("" : : "r"(sink));
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "lazy/first-access/%s", content),
					  .unit = "restore", .ops = 1, .ns = best_first,
					  .baseline = "lazy/1ms-budget" });
	bench_row(b, &(struct bench_row){ .name = full, .unit = "restore", .ops = 1,
					  .ns = best_full, .note = "restore_mapping + reads" });
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "lazy/loaded/%s", content),
					  .unit = "restore", .ops = 1, .ns = best_loaded,
					  .baseline = full,
					  .note = bench_strdup(b, "%.1f MiB", (double)len / (1 << 20)) });
	bench_row(b, &(struct bench_row){ .name = full_reads, .unit = "read",
					  .ops = reads ? reads : 64, .ns = full_reads_ns });
	bench_row(b, &(struct bench_row){ .name = bench_strdup(b, "lazy/reads/%s", content),
					  .unit = "read", .ops = reads ? reads : 1, .ns = reads_ns,
					  .baseline = full_reads, .note = "during the fill" });
	bench_target(b, bench_strdup(b, "lazy/first-access/%s", content), "lazy/1ms-budget", 1.0);
	bench_target(b, bench_strdup(b, "lazy/loaded/%s", content), full, 1.2);
}

static int one_content(struct bench *b, const struct content *c, unsigned char *mem, size_t len)
{
	const char *raw_size = bench_strdup(b, "size/raw/%s", c->name);
	int ret = c->make(mem, len);

	if (ret < 0) {
		bench_skip(b, raw_size, "could not make the %s content: %s", c->name,
			   strerror(-ret));
		return 0;
	}
	bench_row(b, &(struct bench_row){ .name = raw_size, .unit = "byte", .ops = len,
					  .ns = len, .note = "ns column: file bytes" });
	for (size_t p = 0; p < sizeof(places) / sizeof(places[0]); p++) {
		const char *path = bench_strdup(b, "%s/uffdwp-bench-files.%d", places[p].dir,
						(int)getpid());
		const char *raw = bench_strdup(b, "write/%s/%s", places[p].name, c->name);
		uint64_t raw_ns = UINT64_MAX;

		for (unsigned r = 0; r < (b->opts->repeat ? b->opts->repeat : 1); r++) {
			uint64_t ns = 0;

			ret = write_raw(path, places[p].sync, mem, len, &ns);
			if (ret < 0) {
				bench_skip(b, raw, "%s: %s", path, strerror(-ret));
				break;
			}
			raw_ns = ns < raw_ns ? ns : raw_ns;
		}
		if (ret < 0)
			continue;
		bench_row(b, &(struct bench_row){ .name = raw, .unit = "byte", .ops = len,
						  .ns = raw_ns, .note = "write(2) of the region" });
		for (size_t k = 0; k < sizeof(codecs) / sizeof(codecs[0]); k++) {
			const char *row = bench_strdup(b, "save/%s/%s/%s", places[p].name,
						       codecs[k].name, c->name);
			uint64_t best = UINT64_MAX, size = 0;

			if (!bench_selected(b, row))
				continue;
			for (unsigned r = 0; r < (b->opts->repeat ? b->opts->repeat : 1); r++) {
				uint64_t ns = 0;

				ret = save(path, places[p].sync, mem, len, codecs[k].codec,
					   codecs[k].level, &ns, &size);
				if (ret < 0)
					break;
				best = ns < best ? ns : best;
			}
			if (ret < 0) {
				bench_skip(b, row, "snapshot: %s", strerror(-ret));
				continue;
			}
			bench_row(b, &(struct bench_row){ .name = row, .unit = "byte", .ops = len,
							  .ns = best, .baseline = raw,
							  .note = bench_strdup(b, "%.0f MB/s",
									       len * 1e3 / best) });
			if (p == 0)
				bench_row(b, &(struct bench_row){
					.name = bench_strdup(b, "size/%s/%s", codecs[k].name, c->name),
					.unit = "byte", .ops = len, .ns = size, .baseline = raw_size,
					.note = bench_strdup(b, "%.1f MiB", (double)size / (1 << 20)) });
		}
		if (p == 1)
			bench_target(b, bench_strdup(b, "save/disk/lz4/%s", c->name), raw,
				     strcmp(c->name, "random") ? 1.0 : 1 / 0.9);
	}
	if (strcmp(c->name, "random"))
		bench_target(b, bench_strdup(b, "size/zstd:3/%s", c->name), raw_size, 0.5);
	if (bench_selected(b, bench_strdup(b, "lazy/loaded/%s", c->name))) {
		const char *path = bench_strdup(b, "/dev/shm/uffdwp-bench-lazy.%d", (int)getpid());
		uint64_t ns, size;

		ret = save(path, false, mem, len, UFFDWP_CODEC_LZ4, 0, &ns, &size);
		if (ret == 0) {
			/* save() removed it: write it again and keep it for the rows */
			int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
			struct uffdwp_snapshot_region r = { (uint64_t)(uintptr_t)mem, len };
			struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = fd,
							  .codec = UFFDWP_CODEC_LZ4 };
			struct uffdwp_snapshot *snap;

			ret = fd < 0 ? -errno : uffdwp_snapshot_begin(&snap, &r, 1, &o);
			if (ret == 0)
				ret = uffdwp_snapshot_end(snap);
			if (fd >= 0)
				close(fd);
		}
		if (ret == 0)
			lazy_rows(b, c->name, path, len);
		else
			bench_skip(b, bench_strdup(b, "lazy/loaded/%s", c->name), "save: %s",
				   strerror(-ret));
		unlink(path);
	}
	return 0;
}

BENCH_SUITE(files, "snapshot files: size and save speed per codec, checksum speed")
{
	size_t len = b->opts->region_size;
	unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED)
		return -errno;
	bench_row(b, &(struct bench_row){ .name = "lazy/1ms-budget", .unit = "restore", .ops = 1,
					  .ns = 1000000, .note = "the first access's target" });
	for (size_t c = 0; c < sizeof(contents) / sizeof(contents[0]); c++) {
		int ret = one_content(b, &contents[c], mem, len);

		if (ret < 0) {
			munmap(mem, len);
			return ret;
		}
		if (c == 0)
			checksums(b, mem, len);
	}
	munmap(mem, len);
	return 0;
}
