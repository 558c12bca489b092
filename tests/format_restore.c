/* SPDX-License-Identifier: MIT */
/*
 * Restoring hostile and unusual snapshot files (src/snapfile.c): a restore
 * checks the whole chain before it writes anything, shares verify's notion
 * of a sound file, keeps zero pages unpopulated, never destroys its inputs,
 * never hangs on a FIFO, and works for chains of any length. Also what a
 * killed, starved or disconnected writer leaves behind. Backend-independent
 * except where a live snapshot makes the damaged file.
 */
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include "format_fixture.h"
#include "../fuzz/harness.h"

#define ERR_INIT { .sz = sizeof(struct uffdwp_snapshot_error) }

/* ---- building files of any shape ------------------------------------------ */

struct builder {
	struct uffdwp__encoder enc;
	unsigned char *buf;
	size_t len, cap;
	uint32_t page;
};

static void b_reserve(struct builder *b, size_t more)
{
	if (b->len + more <= b->cap)
		return;
	b->cap = (b->len + more) * 2;
	b->buf = realloc(b->buf, b->cap);
	CHECK(b->buf);
}

static void b_begin(struct builder *b, uint64_t id, uint64_t parent, uint32_t page,
		    const struct uffdwp_snapshot_region *regions, uint32_t n)
{
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = page, .snapshot_id = id,
		.parent_id = parent, .region_count = n, .regions = regions,
	};

	memset(b, 0, sizeof(*b));
	b->page = page;
	CHECK_OK(uffdwp__encoder_init(&b->enc, &h));
	b_reserve(b, uffdwp__format_header_size(n));
	b->len = (size_t)uffdwp__encode_header(&b->enc, b->buf, b->cap);
}

static void b_page(struct builder *b, uint64_t addr, unsigned char fill)
{
	unsigned char *page = malloc(b->page);
	ssize_t got;

	CHECK(page);
	memset(page, fill, b->page);
	b_reserve(b, uffdwp__format_page_record_size(b->page));
	got = uffdwp__encode_page(&b->enc, addr, page, b->buf + b->len, b->cap - b->len);
	CHECK(got > 0);
	b->len += (size_t)got;
	free(page);
}

static void b_zero(struct builder *b, uint64_t addr, uint64_t npages)
{
	ssize_t got;

	b_reserve(b, UFFDWP__FORMAT_ZERO_SIZE);
	got = uffdwp__encode_zero(&b->enc, addr, npages, b->buf + b->len, b->cap - b->len);
	CHECK(got > 0);
	b->len += (size_t)got;
}

/* Finish the stream, write it as file name; returns its path (free it). */
static char *b_file(struct builder *b, const char *name)
{
	char *path;

	b_reserve(b, UFFDWP__FORMAT_TRAILER_SIZE);
	b->len += (size_t)uffdwp__encode_trailer(&b->enc, b->buf + b->len, b->cap - b->len);
	path = fx_write_file(name, b->buf, b->len);
	free(b->buf);
	b->buf = NULL;
	return path;
}

/* ---- helpers ---------------------------------------------------------------- */

/* Resident memory of this process, bytes (/proc/self/statm). */
static uint64_t rss_bytes(void)
{
	unsigned long long size, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	CHECK(f);
	CHECK_EQ(fscanf(f, "%llu %llu", &size, &resident), 2);
	fclose(f);
	return resident * test_page();
}

static bool file_is(const char *path, const void *want, size_t len)
{
	size_t got_len;
	unsigned char *got = fx_read_file(path, &got_len);
	bool same = got_len == len && !memcmp(got, want, len);

	free(got);
	return same;
}

/* The command beside the test runner: build/uffdwp for build/tests/run. */
static const char *tool_path(void)
{
	static char path[4096];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 16);
	char *slash;

	CHECK(n > 0);
	path[n] = '\0';
	slash = strrchr(path, '/');
	CHECK(slash);
	*slash = '\0';
	slash = strrchr(path, '/');
	CHECK(slash);
	strcpy(slash, "/uffdwp");
	if (access(path, X_OK) < 0)
		SKIP("the command is not built beside the test runner (%s)", path);
	return path;
}

/* Run `uffdwp ARGS...` (NULL-terminated); returns its exit status, its
 * stderr in out (NUL-terminated, truncated to cap). */
static int run_tool(char *out, size_t cap, ...)
{
	const char *argv[16] = { "uffdwp" };
	const char *tool = tool_path();
	int pipefd[2], status, argc = 1;
	size_t used = 0;
	va_list ap;
	pid_t pid;

	va_start(ap, cap);
	while (argc < 15 && (argv[argc] = va_arg(ap, const char *)))
		argc++;
	va_end(ap);
	argv[argc] = NULL;
	CHECK_OK(pipe2(pipefd, O_CLOEXEC));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		dup2(null, 1);
		dup2(pipefd[1], 2);
		execv(tool, (char *const *)argv);
		_exit(127);
	}
	close(pipefd[1]);
	for (;;) {
		ssize_t n = read(pipefd[0], out + used, cap - 1 - used);

		if (n <= 0)
			break;
		used += (size_t)n;
	}
	out[used] = '\0';
	close(pipefd[0]);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status));
	return WEXITSTATUS(status);
}

/* The fixture's full + incremental chain; the incremental's records are
 * PAGE, ZERO, PAGE, so a record after the first can be damaged. */
struct chain {
	struct fx_stream full, incr;
	char *full_path, *incr_path;
	unsigned char *after_incr;
};

static void make_chain(struct chain *c)
{
	unsigned char *after_full = calloc(1, fx_image_size());

	c->after_incr = malloc(fx_image_size());
	CHECK(after_full && c->after_incr);
	fx_build(&c->full, 0x1111, 0, fx_full_records, fx_full_count, after_full);
	memcpy(c->after_incr, after_full, fx_image_size());
	fx_build(&c->incr, 0x2222, 0x1111, fx_incr_records, fx_incr_count, c->after_incr);
	c->full_path = fx_write_file("full.snap", c->full.buf, c->full.len);
	c->incr_path = fx_write_file("incr.snap", c->incr.buf, c->incr.len);
	free(after_full);
}

static void free_chain(struct chain *c)
{
	free(c->full.buf);
	free(c->incr.buf);
	free(c->full_path);
	free(c->incr_path);
	free(c->after_incr);
	fx_cleanup();
}

/* ---- item 11: verify the whole chain before writing anything ---------------- */

/* A chain whose memory lies in a mapping of ours, so it restores in place. */
TEST(format_restore_checks_before_writing, ON_NONE)
{
	size_t ps = test_page();
	unsigned char *mem = (unsigned char *)test_map(8, false), *before = malloc(8 * ps);
	struct uffdwp_snapshot_region region = { (uint64_t)(uintptr_t)mem, 8 * ps };
	struct uffdwp_snapshot_error err = ERR_INIT;
	char *full, *incr, *image_path;
	size_t second_record, len;
	unsigned char *bytes;
	struct builder b;
	int fd;

	CHECK(before);
	b_begin(&b, 0x10, 0, (uint32_t)ps, &region, 1);
	b_page(&b, region.addr, 0x11);
	b_page(&b, region.addr + 3 * ps, 0x33);
	full = b_file(&b, "full.snap");
	b_begin(&b, 0x20, 0x10, (uint32_t)ps, &region, 1);
	b_page(&b, region.addr + ps, 0x22);
	second_record = b.len;
	b_page(&b, region.addr + 2 * ps, 0x44);
	incr = b_file(&b, "incr.snap");

	/* the second record of the incremental is damaged */
	bytes = fx_read_file(incr, &len);
	bytes[second_record + UFFDWP__FORMAT_HEAD_SIZE + 7] ^= 0x01;
	free(fx_write_file("incr.snap", bytes, len));
	free(bytes);

	memset(mem, 0x5a, 8 * ps);
	memcpy(before, mem, 8 * ps);
	CHECK_RET(uffdwp_snapshot_restore_in_place((const char *const[]){ full, incr }, 2, &err),
		  -EBADMSG);
	CHECK_EQ(err.file, 1);
	CHECK_EQ(err.offset, second_record);
	CHECK(!memcmp(mem, before, 8 * ps));  /* not one byte written */

	/* the same for an image file: its old contents stay */
	image_path = fx_write_file("image", "old contents", 12);
	fd = open(image_path, O_WRONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_RET(uffdwp_snapshot_restore_fd((const char *const[]){ full, incr }, 2, fd, &err),
		  -EBADMSG);
	close(fd);
	CHECK(file_is(image_path, "old contents", 12));
	munmap(mem, 8 * ps);
	free(before);
	free(full);
	free(incr);
	free(image_path);
	fx_cleanup();
}

/*
 * In place over fresh memory: pages the chain says are zero stay
 * unpopulated (the first 256 pages are stored, the other 16,128 are zero in
 * the full snapshot and zeroed again by the incremental).
 */
TEST(format_restore_in_place_keeps_zero_pages_unpopulated, ON_NONE)
{
	const size_t npages = 16384, stored = 256;
	size_t ps = test_page();
	unsigned char *mem = (unsigned char *)test_map(npages, false);
	struct uffdwp_snapshot_region region = { (uint64_t)(uintptr_t)mem, npages * ps };
	struct uffdwp_snapshot_error err = ERR_INIT;
	char *full, *incr;
	struct builder b;
	uint64_t rss;

	b_begin(&b, 0x10, 0, (uint32_t)ps, &region, 1);
	for (size_t i = 0; i < stored; i++)
		b_page(&b, region.addr + i * ps, (unsigned char)(i | 1));
	b_zero(&b, region.addr + stored * ps, npages - stored);
	full = b_file(&b, "full.snap");
	b_begin(&b, 0x20, 0x10, (uint32_t)ps, &region, 1);
	b_zero(&b, region.addr + npages / 2 * ps, npages / 2);
	incr = b_file(&b, "incr.snap");

	rss = rss_bytes();
	CHECK_OK(uffdwp_snapshot_restore_in_place((const char *const[]){ full, incr }, 2, &err));
	/* a quarter of the region: sanitizer shadow memory included */
	if (rss_bytes() - rss > npages / 4 * ps)
		FAIL("RSS grew by %llu KiB restoring %zu stored pages of %zu",
		     (unsigned long long)((rss_bytes() - rss) >> 10), stored, npages);
	for (size_t i = 0; i < npages; i += 97)
		CHECK_EQ(mem[i * ps + 5], i < stored ? (unsigned char)(i | 1) : 0);
	munmap(mem, npages * ps);
	free(full);
	free(incr);
	fx_cleanup();
}

/* In place over shared memory that holds data: zero records do zero it. */
TEST(format_restore_in_place_over_shared_memory, ON_NONE)
{
	size_t ps = test_page();
	unsigned char *mem = mmap(NULL, 8 * ps, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct uffdwp_snapshot_region region = { (uint64_t)(uintptr_t)mem, 8 * ps };
	struct uffdwp_snapshot_error err = ERR_INIT;
	char *full, *incr;
	struct builder b;

	CHECK(mem != MAP_FAILED);
	b_begin(&b, 0x10, 0, (uint32_t)ps, &region, 1);
	b_page(&b, region.addr + 2 * ps, 0x22);
	b_page(&b, region.addr + 5 * ps, 0x55);
	full = b_file(&b, "full.snap");
	b_begin(&b, 0x20, 0x10, (uint32_t)ps, &region, 1);
	b_zero(&b, region.addr + 5 * ps, 1);
	incr = b_file(&b, "incr.snap");
	memset(mem, 0x7e, 8 * ps);
	CHECK_OK(uffdwp_snapshot_restore_in_place((const char *const[]){ full, incr }, 2, &err));
	for (size_t p = 0; p < 8; p++)
		for (size_t i = 0; i < ps; i += 511)
			CHECK_EQ(mem[p * ps + i], p == 2 ? 0x22 : 0);
	munmap(mem, 8 * ps);
	free(full);
	free(incr);
	fx_cleanup();
}

/* ---- item 19: restore and verify agree; bounded work ------------------------ */

TEST(format_restore_rejects_what_verify_rejects, ON_NONE)
{
	static const struct fx_record twice[] = {
		{ UFFDWP__RECORD_PAGE, 0, 1, 1 },
		{ UFFDWP__RECORD_PAGE, 1, 1, 2 },
		{ UFFDWP__RECORD_ZERO, 1, 3, 0 },  /* page 1 again */
	};
	struct uffdwp_snapshot_error err = ERR_INIT;
	char out[1024], *path, *image_path;
	struct fx_stream s;
	unsigned char *image;
	size_t len;
	int fd;

	fx_build(&s, 0x33, 0, twice, 3, NULL);
	path = fx_write_file("twice.snap", s.buf, s.len);
	CHECK_RET(uffdwp_snapshot_file_verify(path, NULL, &err), -EBADMSG);
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ path }, 1,
						  (void **)&image, &len, &err), -EBADMSG);
	CHECK(strstr(err.message, "twice"));
	CHECK_EQ(err.offset, s.record_at[2]);
	image_path = fx_write_file("image", "old", 3);
	fd = open(image_path, O_WRONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_RET(uffdwp_snapshot_restore_fd((const char *const[]){ path }, 1, fd, &err),
		  -EBADMSG);
	close(fd);
	CHECK(file_is(image_path, "old", 3));
	CHECK_EQ(run_tool(out, sizeof(out), "snapshot", "restore", "-o", image_path, path, NULL), 1);
	CHECK(strstr(out, "twice"));
	CHECK(file_is(image_path, "old", 3));
	free(s.buf);
	free(path);
	free(image_path);
	fx_cleanup();
}

/*
 * 300 bytes of files: a full snapshot of a 1 GiB region with no records and
 * an incremental zeroing all of it. The mapping it restores to must not be
 * populated by the zeroing.
 */
TEST(format_restore_mapping_huge_zero_run, ON_NONE)
{
	const uint64_t gib = UINT64_C(1) << 30;
	size_t ps = test_page();
	struct uffdwp_snapshot_region region = { 1024 * gib, gib };
	struct uffdwp_snapshot_error err = ERR_INIT;
	unsigned char *image;
	char *full, *incr;
	struct builder b;
	uint64_t rss;
	size_t len;

	b_begin(&b, 0x10, 0, (uint32_t)ps, &region, 1);
	full = b_file(&b, "full.snap");
	b_begin(&b, 0x20, 0x10, (uint32_t)ps, &region, 1);
	b_zero(&b, region.addr, gib / ps);
	incr = b_file(&b, "incr.snap");
	rss = rss_bytes();
	CHECK_OK(uffdwp_snapshot_restore_mapping((const char *const[]){ full, incr }, 2,
						 (void **)&image, &len, &err));
	CHECK_EQ(len, gib);
	if (rss_bytes() - rss > 64u << 20)
		FAIL("RSS grew by %llu MiB for an image of zeros",
		     (unsigned long long)((rss_bytes() - rss) >> 20));
	CHECK(image[0] == 0 && image[len / 2] == 0 && image[len - 1] == 0);
	munmap(image, len);
	free(full);
	free(incr);
	fx_cleanup();
}

/* A file page smaller than the system's: zero runs that start and end
 * inside a system page restore exactly. */
TEST(format_restore_mapping_small_pages, ON_NONE)
{
	const uint32_t small = UFFDWP__FORMAT_MIN_PAGE_SIZE;
	const size_t npages = 64;
	struct uffdwp_snapshot_region region = { 1u << 20, npages * small };
	struct uffdwp_snapshot_error err = ERR_INIT;
	unsigned char want[64 * 512];
	unsigned char *image;
	char *full, *incr;
	struct builder b;
	size_t len;

	b_begin(&b, 0x10, 0, small, &region, 1);
	for (size_t i = 0; i < npages; i++)
		b_page(&b, region.addr + i * small, (unsigned char)(i + 1));
	full = b_file(&b, "full.snap");
	b_begin(&b, 0x20, 0x10, small, &region, 1);
	b_zero(&b, region.addr + 3 * small, 30);  /* from inside one system page to inside another */
	b_page(&b, region.addr + 40 * small, 0xee);
	incr = b_file(&b, "incr.snap");
	for (size_t i = 0; i < npages; i++)
		memset(want + i * small, i >= 3 && i < 33 ? 0 : i == 40 ? 0xee : (int)(i + 1), small);
	CHECK_OK(uffdwp_snapshot_restore_mapping((const char *const[]){ full, incr }, 2,
						 (void **)&image, &len, &err));
	CHECK_EQ(len, sizeof(want));
	CHECK(!memcmp(image, want, len));
	munmap(image, len);
	/* in place needs this machine's page size */
	CHECK_RET(uffdwp_snapshot_restore_in_place((const char *const[]){ full }, 1, &err),
		  -EINVAL);
	free(full);
	free(incr);
	fx_cleanup();
}

/* A trailer (checksum and file size right) that counts more pages than
 * the regions hold. */
TEST(format_info_rejects_impossible_counts, ON_NONE)
{
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
	struct uffdwp_snapshot_error err = ERR_INIT;
	size_t trailer, counts[][2] = { { 0, FX_PAGES - 4 + 1 }, { 0, UINT64_C(1) << 60 },
					{ 5, 5 } };
	struct fx_stream s;

	fx_build(&s, 0x44, 0, fx_full_records, fx_full_count, NULL);
	trailer = s.record_at[s.nrecords];
	for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
		unsigned char *copy = malloc(s.len);
		char *path;

		CHECK(copy);
		memcpy(copy, s.buf, s.len);
		/* k == 2: more pages than records */
		if (k == 2)
			harness_store64(copy + trailer + UFFDWP__FORMAT_HEAD_SIZE + 8,
					harness_load64(copy + trailer + UFFDWP__FORMAT_HEAD_SIZE) + 1);
		else
			harness_store64(copy + trailer + UFFDWP__FORMAT_HEAD_SIZE + 16,
					counts[k][1]);
		harness_fix_checksums(copy, s.len);
		path = fx_write_file("lie.snap", copy, s.len);
		CHECK_RET(uffdwp_snapshot_file_info(path, &info, NULL, 0, &err), -EBADMSG);
		CHECK_EQ(err.offset, trailer);
		CHECK_RET(uffdwp_snapshot_file_verify(path, NULL, &err), -EBADMSG);
		free(path);
		free(copy);
	}
	free(s.buf);
	fx_cleanup();
}

/* ---- item 20: never destroy an input, never hang ---------------------------- */

TEST(format_restore_refuses_an_input_as_target, ON_NONE)
{
	struct uffdwp_snapshot_error err = ERR_INIT;
	char out[1024], *link_path, *sym_path;
	struct chain c;
	int fd;

	make_chain(&c);
	/* the library, given a descriptor of an input */
	fd = open(c.incr_path, O_WRONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_RET(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path, c.incr_path }, 2,
					     fd, &err), -EINVAL);
	close(fd);
	CHECK_EQ(err.file, 2);
	CHECK(strstr(err.message, "file 1 of the chain"));
	CHECK(file_is(c.incr_path, c.incr.buf, c.incr.len));

	/* the command, by the same path, a hard link and a symbolic link */
	CHECK(asprintf(&link_path, "%s.hard", c.full_path) > 0);
	CHECK(asprintf(&sym_path, "%s.sym", c.full_path) > 0);
	CHECK_OK(link(c.full_path, link_path));
	CHECK_OK(symlink(c.full_path, sym_path));
	CHECK_EQ(run_tool(out, sizeof(out), "snapshot", "restore", "-o", c.full_path,
			  c.full_path, NULL), 1);
	CHECK(strstr(out, "destroy"));
	CHECK_EQ(run_tool(out, sizeof(out), "snapshot", "restore", "-o", link_path, c.full_path,
			  c.incr_path, NULL), 1);
	CHECK_EQ(run_tool(out, sizeof(out), "snapshot", "restore", "-o", sym_path, c.full_path,
			  NULL), 1);
	CHECK(file_is(c.full_path, c.full.buf, c.full.len));
	CHECK(file_is(c.incr_path, c.incr.buf, c.incr.len));
	/* and a fresh image still works */
	unlink(link_path);
	unlink(sym_path);
	CHECK_EQ(run_tool(out, sizeof(out), "snapshot", "restore", "-o", link_path, c.full_path,
			  c.incr_path, NULL), 0);
	CHECK(file_is(link_path, c.after_incr, fx_image_size()));
	free(link_path);
	free(sym_path);
	free_chain(&c);
}

TEST_TIMEOUT(format_fifo_never_hangs, ON_NONE, 10)
{
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
	struct uffdwp_snapshot_error err = ERR_INIT;
	char out[1024], *fifo, *image_path;
	unsigned char *image;
	struct chain c;
	int pipefd[2];
	size_t len;

	make_chain(&c);
	image_path = fx_write_file("image", "", 0);
	CHECK(asprintf(&fifo, "%s.fifo", c.full_path) > 0);
	CHECK_OK(mkfifo(fifo, 0600));
	/* nobody writes the FIFO: info and restore need a regular file, verify
	 * sees an empty stream */
	CHECK_RET(uffdwp_snapshot_file_info(fifo, &info, NULL, 0, &err), -ESPIPE);
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ c.full_path, fifo }, 2,
						  (void **)&image, &len, &err), -ESPIPE);
	CHECK_EQ(err.file, 1);
	CHECK_RET(uffdwp_snapshot_file_verify(fifo, NULL, &err), -ENODATA);
	CHECK_EQ(run_tool(out, sizeof(out), "snapshot", "info", fifo, NULL), 1);
	CHECK(strstr(out, "regular file"));
	/* nobody reads the FIFO: restoring into it is refused at once */
	CHECK_EQ(run_tool(out, sizeof(out), "snapshot", "restore", "-o", fifo, c.full_path, NULL),
		 1);
	CHECK(strstr(out, "regular file"));
	/* a pipe as the library's target */
	CHECK_OK(pipe(pipefd));
	CHECK_RET(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path }, 1, pipefd[1],
					     &err), -ESPIPE);
	close(pipefd[0]);
	close(pipefd[1]);
	unlink(fifo);
	free(fifo);
	free(image_path);
	free_chain(&c);
}

/* Item 22 and 20: the target descriptor's mode is checked, as documented. */
TEST(format_restore_fd_checks_its_descriptor, ON_NONE)
{
	struct uffdwp_snapshot_error err = ERR_INIT;
	char *image_path;
	struct chain c;
	int fd;

	make_chain(&c);
	image_path = fx_write_file("image", "old contents", 12);
	fd = open(image_path, O_WRONLY | O_APPEND | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_RET(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path }, 1, fd, &err),
		  -EINVAL);
	CHECK(strstr(err.message, "O_APPEND"));
	close(fd);
	fd = open(image_path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_RET(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path }, 1, fd, &err),
		  -EBADF);
	CHECK_EQ(err.file, 1);
	close(fd);
	fd = open(image_path, O_PATH | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_RET(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path }, 1, fd, &err),
		  -EBADF);
	close(fd);
	CHECK(file_is(image_path, "old contents", 12));
	free(image_path);
	free_chain(&c);
}

/* ---- item 22: chains longer than the descriptor limit --------------------------- */

TEST_TIMEOUT(format_restore_long_chain, ON_NONE, 120)
{
	const size_t links = 1100;
	struct rlimit lim;
	struct uffdwp_snapshot_error err = ERR_INIT;
	unsigned char *want = calloc(1, fx_image_size()), *image;
	const char **paths = calloc(links, sizeof(*paths));
	size_t len;

	CHECK(want && paths);
	/* the default limit, whatever the runner inherited */
	CHECK_OK(getrlimit(RLIMIT_NOFILE, &lim));
	if (lim.rlim_cur > 1024) {
		lim.rlim_cur = 1024;
		CHECK_OK(setrlimit(RLIMIT_NOFILE, &lim));
	}
	for (size_t i = 0; i < links; i++) {
		struct fx_record rec = { UFFDWP__RECORD_PAGE, i % FX_PAGES, 1,
					 (unsigned char)(i * 7 + 1) };
		struct fx_stream s;
		char name[32];

		if (i == 0)
			fx_build(&s, 1, 0, fx_full_records, fx_full_count, want);
		else
			fx_build(&s, i + 1, i, &rec, 1, want);
		snprintf(name, sizeof(name), "link%04zu.snap", i);
		paths[i] = fx_write_file(name, s.buf, s.len);
		free(s.buf);
	}
	CHECK_OK(uffdwp_snapshot_restore_mapping(paths, links, (void **)&image, &len, &err));
	CHECK_EQ(len, fx_image_size());
	CHECK(!memcmp(image, want, len));
	munmap(image, len);
	for (size_t i = 0; i < links; i++)
		free((void *)paths[i]);
	free(paths);
	free(want);
	fx_cleanup();
}

/* ---- adversarial: damaged files never write the target --------------------------- */

/*
 * Every single-bit flip in the header, record heads and trailer of the
 * incremental (and a sample inside its pages), and every truncation at or
 * near a record boundary: the restore fails with a negative errno and the
 * image file keeps its old contents.
 */
TEST_TIMEOUT(format_restore_damaged_files_change_nothing, ON_NONE, 60)
{
	struct uffdwp_snapshot_error err = ERR_INIT;
	char *image_path;
	struct chain c;
	size_t tried = 0;
	int fd;

	make_chain(&c);
	image_path = fx_write_file("image", "old contents", 12);
	fd = open(image_path, O_WRONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	for (size_t at = 0; at < c.incr.len; at++) {
		bool structure = at < c.incr.header_len;
		char *path;
		int ret;

		for (size_t r = 0; r <= c.incr.nrecords && !structure; r++)
			structure = at - c.incr.record_at[r] < UFFDWP__FORMAT_HEAD_SIZE + 8 ||
				    (r < c.incr.nrecords && c.incr.record_at[r + 1] - at <= 8);
		if (!structure && at % 61)
			continue;
		c.incr.buf[at] ^= (unsigned char)(1u << (at % 8));
		path = fx_write_file("incr.snap", c.incr.buf, c.incr.len);
		c.incr.buf[at] ^= (unsigned char)(1u << (at % 8));
		ret = uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path, path }, 2, fd,
						 &err);
		if (ret >= 0)
			FAIL("a flipped bit at byte %zu restored", at);
		free(path);
		tried++;
	}
	for (size_t r = 0; r <= c.incr.nrecords; r++) {
		size_t cuts[] = { c.incr.record_at[r], c.incr.record_at[r] + 1,
				  c.incr.record_at[r] + UFFDWP__FORMAT_HEAD_SIZE, c.incr.len - 1 };

		for (size_t k = 0; k < 4; k++) {
			char *path = fx_write_file("incr.snap", c.incr.buf, cuts[k]);

			CHECK(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path, path },
							 2, fd, &err) < 0);
			free(path);
		}
	}
	close(fd);
	CHECK(file_is(image_path, "old contents", 12));
	printf("%zu damaged files refused\n", tried);
	free(image_path);
	free_chain(&c);
}

/* Regions that are not mapped here: in place refuses instead of crashing. */
TEST(format_restore_in_place_unmapped_region, ON_NONE)
{
	size_t ps = test_page();
	char *mem = test_map(4, true);
	struct uffdwp_snapshot_region region = { (uint64_t)(uintptr_t)mem, 4 * ps };
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct builder b;
	char *path;

	b_begin(&b, 0x10, 0, (uint32_t)ps, &region, 1);
	b_page(&b, region.addr + ps, 0x11);
	path = b_file(&b, "full.snap");
	CHECK_OK(munmap(mem + 2 * ps, ps));  /* a hole in the middle */
	memset(mem, 0x5a, ps);
	CHECK_RET(uffdwp_snapshot_restore_in_place((const char *const[]){ path }, 1, &err),
		  -EFAULT);
	CHECK_EQ(mem[0], 0x5a);
	munmap(mem, 4 * ps);
	free(path);
	fx_cleanup();
}

/* ---- what a killed, starved or disconnected writer leaves --------------------------- */

/* Fill npages of fresh memory with non-zero bytes that do not compress. */
static unsigned char *busy_memory(size_t npages)
{
	unsigned char *mem = (unsigned char *)test_map(npages, false);
	uint64_t x = 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < npages * test_page(); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		mem[i] = (unsigned char)(x | 1);
	}
	return mem;
}

/* A saver killed half way: the partial file is refused by every reader. */
TEST(format_killed_writer_partial_file, ON_BOTH)
{
	const size_t npages = 1024;
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
	struct uffdwp_snapshot_error err = ERR_INIT;
	unsigned char *got = malloc(256 << 10), *image;
	int pipefd[2], status;
	size_t have = 0, len;
	char *path;
	pid_t pid;

	CHECK(got);
	CHECK_OK(pipe(pipefd));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		unsigned char *mem = busy_memory(npages);
		struct uffdwp_snapshot_region r = { (uint64_t)(uintptr_t)mem, npages * test_page() };
		struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = pipefd[1],
						  .backend = backend };
		struct uffdwp_snapshot *snap;

		close(pipefd[0]);
		if (uffdwp_snapshot_begin(&snap, &r, 1, &o) < 0)
			_exit(3);
		uffdwp_snapshot_end(snap);
		_exit(0);
	}
	close(pipefd[1]);
	while (have < (256u << 10)) {
		ssize_t n = read(pipefd[0], got + have, (256u << 10) - have);

		if (n <= 0)
			break;
		have += (size_t)n;
	}
	kill(pid, SIGKILL);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	close(pipefd[0]);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
		SKIP("the %s backend cannot snapshot here", uffdwp_backend_name(backend));
	CHECK_EQ(have, 256u << 10);
	path = fx_write_file("partial.snap", got, have);
	CHECK_RET(uffdwp_snapshot_file_verify(path, NULL, &err), -ENODATA);
	CHECK(strstr(err.message, "truncated"));
	CHECK_RET(uffdwp_snapshot_file_info(path, &info, NULL, 0, &err), -ENODATA);
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ path }, 1,
						  (void **)&image, &len, &err), -ENODATA);
	free(got);
	free(path);
	fx_cleanup();
}

/* A snapshot into a pipe whose reader is gone: -EPIPE, and no SIGPIPE. */
TEST(format_save_to_closed_pipe, ON_BOTH)
{
	const size_t npages = 256;
	unsigned char *mem = busy_memory(npages);
	struct uffdwp_snapshot_region r = { (uint64_t)(uintptr_t)mem, npages * test_page() };
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .backend = backend };
	struct uffdwp_snapshot *snap;
	int pipefd[2], ret;

	CHECK_OK(pipe(pipefd));
	close(pipefd[0]);
	o.fd = pipefd[1];
	ret = uffdwp_snapshot_begin(&snap, &r, 1, &o);
	if (ret == -EOPNOTSUPP || ret == -ENOSYS)
		SKIP("the %s backend cannot snapshot here", uffdwp_backend_name(backend));
	CHECK_OK(ret);
	CHECK_RET(uffdwp_snapshot_end(snap), -EPIPE);
	close(pipefd[1]);
	munmap(mem, npages * test_page());
}

/* A private tmpfs of 256 KiB at dir, in a mount namespace of this test's
 * own (the mount dies with the test process). Skips unless root. */
static void small_tmpfs(char *dir, size_t cap)
{
	snprintf(dir, cap, "/tmp/uffdwp-enospc-XXXXXX");
	CHECK(mkdtemp(dir));
	if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    mount("uffdwp-test", dir, "tmpfs", 0, "size=256k") < 0) {
		rmdir(dir);
		SKIP("cannot mount a private tmpfs: %s", strerror(errno));
	}
}

static void drop_tmpfs(const char *dir)
{
	umount2(dir, MNT_DETACH);
	rmdir(dir);
}

/* A full disk during a save, and during a restore. */
TEST(format_save_and_restore_on_a_full_disk, ON_BOTH)
{
	const size_t npages = 512;  /* 2 MiB of pages, 256 KiB of disk */
	unsigned char *mem = busy_memory(npages);
	struct uffdwp_snapshot_region r = { (uint64_t)(uintptr_t)mem, npages * test_page() };
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .backend = backend };
	struct uffdwp_snapshot_error err = ERR_INIT;
	char dir[64], file[128], out[1024], *good, *image;
	struct uffdwp_snapshot *snap;
	struct stat st;
	int fd, ret;

	small_tmpfs(dir, sizeof(dir));
	snprintf(file, sizeof(file), "%s/full.snap", dir);
	fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	o.fd = fd;
	ret = uffdwp_snapshot_begin(&snap, &r, 1, &o);
	if (ret == -EOPNOTSUPP || ret == -ENOSYS) {
		drop_tmpfs(dir);
		SKIP("the %s backend cannot snapshot here", uffdwp_backend_name(backend));
	}
	CHECK_OK(ret);
	CHECK_RET(uffdwp_snapshot_end(snap), -ENOSPC);
	close(fd);
	CHECK_RET(uffdwp_snapshot_file_verify(file, NULL, &err), -ENODATA);
	unlink(file);

	/* the same snapshot saved where there is room, restored where there is none */
	good = fx_write_file("good.snap", "", 0);
	fd = open(good, O_WRONLY | O_TRUNC | O_CLOEXEC);
	CHECK(fd >= 0);
	o.fd = fd;
	CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
	CHECK_OK(uffdwp_snapshot_end(snap));
	close(fd);
	fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK_RET(uffdwp_snapshot_restore_fd((const char *const[]){ good }, 1, fd, &err),
		  -ENOSPC);
	CHECK_EQ(err.file, 1);
	close(fd);
	unlink(file);
	/* the command removes the image it created */
	image = file;
	CHECK_EQ(run_tool(out, sizeof(out), "snapshot", "restore", "-o", image, good, NULL), 1);
	CHECK(strstr(out, strerror(ENOSPC)));
	CHECK(stat(image, &st) < 0 && errno == ENOENT);
	drop_tmpfs(dir);
	munmap(mem, npages * test_page());
	free(good);
	fx_cleanup();
}
