/* SPDX-License-Identifier: MIT */
/*
 * Snapshot files (src/snapfile.c): info, verify, and restoring chains into a
 * file, a fresh mapping and memory in place. Backend-independent.
 */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include "format_fixture.h"

#define ERR_INIT { .sz = sizeof(struct uffdwp_snapshot_error) }

struct chain {
	struct fx_stream full, incr;
	char *full_path, *incr_path;
	unsigned char *after_full, *after_incr;  /* the images each should restore to */
};

static void make_chain(struct chain *c)
{
	c->after_full = calloc(1, fx_image_size());
	c->after_incr = malloc(fx_image_size());
	CHECK(c->after_full && c->after_incr);
	fx_build(&c->full, 0x1111, 0, fx_full_records, fx_full_count, c->after_full);
	memcpy(c->after_incr, c->after_full, fx_image_size());
	fx_build(&c->incr, 0x2222, 0x1111, fx_incr_records, fx_incr_count, c->after_incr);
	c->full_path = fx_write_file("full.snap", c->full.buf, c->full.len);
	c->incr_path = fx_write_file("incr.snap", c->incr.buf, c->incr.len);
}

static void free_chain(struct chain *c)
{
	free(c->full.buf);
	free(c->incr.buf);
	free(c->after_full);
	free(c->after_incr);
	fx_cleanup();
}

TEST(format_file_info, ON_NONE)
{
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct uffdwp_snapshot_region regions[FX_REGIONS + 1];
	struct chain c;

	make_chain(&c);
	CHECK_OK(uffdwp_snapshot_file_info(c.full_path, &info, regions, FX_REGIONS + 1, &err));
	CHECK_EQ(info.version, UFFDWP__FORMAT_VERSION);
	CHECK_EQ(info.page_size, test_page());
	CHECK_EQ(info.snapshot_id, 0x1111);
	CHECK_EQ(info.parent_id, 0);
	CHECK_EQ(info.time_ns, 1700000000123456789ull);
	CHECK_EQ(info.region_count, FX_REGIONS);
	CHECK_EQ(info.region_bytes, fx_image_size());
	CHECK_EQ(info.record_count, fx_full_count);
	CHECK_EQ(info.page_count, 4);
	CHECK_EQ(info.zero_count, 5);
	CHECK_EQ(info.file_size, c.full.len);
	CHECK(!memcmp(regions, fx_regions(), FX_REGIONS * sizeof(regions[0])));
	CHECK_EQ(err.message[0], '\0');

	CHECK_OK(uffdwp_snapshot_file_info(c.incr_path, &info, NULL, 0, NULL));
	CHECK_EQ(info.parent_id, 0x1111);
	CHECK_EQ(info.zero_count, 1);

	/* argument checks */
	CHECK_RET(uffdwp_snapshot_file_info(NULL, &info, NULL, 0, NULL), -EINVAL);
	CHECK_RET(uffdwp_snapshot_file_info(c.full_path, NULL, NULL, 0, NULL), -EINVAL);
	CHECK_RET(uffdwp_snapshot_file_info(c.full_path, &info, NULL, 1, NULL), -EINVAL);
	info.sz = 8;
	CHECK_RET(uffdwp_snapshot_file_info(c.full_path, &info, NULL, 0, NULL), -EINVAL);
	info.sz = sizeof(info);
	err.sz = 8;
	CHECK_RET(uffdwp_snapshot_file_info(c.full_path, &info, NULL, 0, &err), -EINVAL);
	err.sz = sizeof(err);
	CHECK_RET(uffdwp_snapshot_file_info("/nonexistent/x.snap", &info, NULL, 0, &err), -ENOENT);
	CHECK_EQ(err.message[0], '\0');  /* not the contents' fault */
	CHECK_RET(uffdwp_snapshot_file_info("/tmp", &info, NULL, 0, &err), -EISDIR);
	free_chain(&c);
}

/* info finds truncation from the size alone, at every record boundary. */
TEST(format_file_info_truncated, ON_NONE)
{
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct chain c;

	make_chain(&c);
	for (size_t i = 0; i <= c.full.nrecords; i++) {
		size_t cuts[] = { c.full.record_at[i], c.full.record_at[i] + 5, c.full.len - 1 };

		for (size_t k = 0; k < 3; k++) {
			char *path = fx_write_file("cut.snap", c.full.buf, cuts[k]);
			int ret = uffdwp_snapshot_file_info(path, &info, NULL, 0, &err);

			if (ret != -ENODATA && ret != -EBADMSG)
				FAIL("cut at %zu: %d", cuts[k], ret);
			CHECK(err.message[0]);
			free(path);
		}
	}
	/* a record cut out of the middle: the trailer is intact, the size is not */
	{
		size_t at = c.full.record_at[2], zero = UFFDWP__FORMAT_ZERO_SIZE;
		unsigned char *holed = malloc(c.full.len);
		char *path;

		CHECK(holed);
		memcpy(holed, c.full.buf, at);
		memcpy(holed + at, c.full.buf + at + zero, c.full.len - at - zero);
		path = fx_write_file("holed.snap", holed, c.full.len - zero);
		CHECK_RET(uffdwp_snapshot_file_info(path, &info, NULL, 0, &err), -EBADMSG);
		CHECK(strstr(err.message, fx_version == 1 ? "totals" : "lost"));
		free(holed);
		free(path);
	}
	/* the whole stream but its trailer: the end does not look like one */
	{
		char *path = fx_write_file("notrailer.snap", c.full.buf,
					   c.full.record_at[c.full.nrecords]);

		CHECK_RET(uffdwp_snapshot_file_info(path, &info, NULL, 0, &err), -ENODATA);
		CHECK(strstr(err.message, "no trailer"));
		free(path);
	}
	free_chain(&c);
}

TEST(format_file_verify, ON_NONE)
{
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct chain c;
	char *path;

	make_chain(&c);
	CHECK_OK(uffdwp_snapshot_file_verify(c.full_path, &info, &err));
	CHECK_EQ(info.page_count, 4);
	CHECK_EQ(info.zero_count, 5);
	CHECK_EQ(info.file_size, c.full.len);
	CHECK_OK(uffdwp_snapshot_file_verify(c.incr_path, NULL, NULL));

	/* a flipped bit inside the third record's body */
	c.full.buf[c.full.record_at[3] + 100] ^= 0x10;
	path = fx_write_file("flip.snap", c.full.buf, c.full.len);
	CHECK_RET(uffdwp_snapshot_file_verify(path, &info, &err), -EBADMSG);
	CHECK_EQ(err.offset, c.full.record_at[3]);
	CHECK(strstr(err.message, "checksum"));
	/* info does not read the pages: it still succeeds */
	CHECK_OK(uffdwp_snapshot_file_info(path, &info, NULL, 0, NULL));
	c.full.buf[c.full.record_at[3] + 100] ^= 0x10;
	free(path);

	/* truncated in the middle of a page */
	path = fx_write_file("cut.snap", c.full.buf, c.full.record_at[4] - 10);
	CHECK_RET(uffdwp_snapshot_file_verify(path, NULL, &err), -ENODATA);
	CHECK_EQ(err.offset, c.full.record_at[3]);
	CHECK(strstr(err.message, "truncated"));
	free(path);

	/* not a snapshot at all */
	path = fx_write_file("text.snap", "hello, world\n", 13);
	CHECK_RET(uffdwp_snapshot_file_verify(path, NULL, &err), -ENODATA);
	free(path);
	path = fx_write_file("junk.snap", c.full.buf + 1, c.full.len - 1);
	CHECK_RET(uffdwp_snapshot_file_verify(path, NULL, &err), -EBADMSG);
	CHECK(strstr(err.message, "magic"));
	free(path);
	free_chain(&c);
}

/* Every record valid, the trailer agrees, but one page is named twice. */
TEST(format_file_verify_page_twice, ON_NONE)
{
	static const struct fx_record twice[] = {
		{ UFFDWP__RECORD_PAGE, 0, 1, 1 },
		{ UFFDWP__RECORD_PAGE, 1, 1, 2 },
		{ UFFDWP__RECORD_PAGE, 5, 1, 3 },
		{ UFFDWP__RECORD_ZERO, 1, 3, 0 },  /* page 1 again */
	};
	static const struct fx_record once[] = {
		{ UFFDWP__RECORD_PAGE, 0, 1, 1 },
		{ UFFDWP__RECORD_PAGE, 1, 1, 2 },
		{ UFFDWP__RECORD_PAGE, 5, 1, 3 },
		{ UFFDWP__RECORD_ZERO, 2, 2, 0 },
	};
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct fx_stream s;
	char *path;

	fx_build(&s, 0x33, 0, twice, 4, NULL);
	path = fx_write_file("twice.snap", s.buf, s.len);
	CHECK_RET(uffdwp_snapshot_file_verify(path, NULL, &err), -EBADMSG);
	CHECK(strstr(err.message, "twice"));
	CHECK_EQ(err.offset, s.record_at[3]);
	free(s.buf);
	free(path);

	fx_build(&s, 0x33, 0, once, 4, NULL);
	path = fx_write_file("once.snap", s.buf, s.len);
	CHECK_OK(uffdwp_snapshot_file_verify(path, NULL, &err));
	free(s.buf);
	free(path);
	fx_cleanup();
}

static void check_image_file(const char *path, const unsigned char *want)
{
	unsigned char *got = malloc(fx_image_size() + 1);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;

	CHECK(got && fd >= 0);
	CHECK_OK(fstat(fd, &st));
	CHECK_EQ(st.st_size, fx_image_size());
	CHECK_EQ(read(fd, got, fx_image_size() + 1), fx_image_size());
	for (size_t p = 0; p < FX_PAGES; p++)
		if (memcmp(got + p * test_page(), want + p * test_page(), test_page()))
			FAIL("%s: page %zu of the image differs", path, p);
	close(fd);
	free(got);
}

TEST(format_restore_chain_to_fd, ON_NONE)
{
	struct uffdwp_snapshot_error err = ERR_INIT;
	char *image_path;
	struct chain c;
	int fd;

	make_chain(&c);
	image_path = fx_write_file("image", "stale contents, longer than nothing", 35);
	fd = open(image_path, O_WRONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_OK(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path }, 1, fd, &err));
	check_image_file(image_path, c.after_full);
	CHECK_OK(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path, c.incr_path }, 2,
					    fd, &err));
	check_image_file(image_path, c.after_incr);
	close(fd);
	CHECK_RET(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path }, 1, -1, &err),
		  -EBADF);
	/* a target that cannot be written: err points past the files */
	fd = open(image_path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(uffdwp_snapshot_restore_fd((const char *const[]){ c.full_path }, 1, fd, &err) < 0);
	CHECK_EQ(err.file, 1);
	CHECK_EQ(err.message[0], '\0');
	close(fd);
	check_image_file(image_path, c.after_incr);  /* untouched */
	free(image_path);
	free_chain(&c);
}

TEST(format_restore_chain_to_mapping, ON_NONE)
{
	struct uffdwp_snapshot_error err = ERR_INIT;
	unsigned char *image;
	size_t len;
	struct chain c;

	make_chain(&c);
	CHECK_OK(uffdwp_snapshot_restore_mapping((const char *const[]){ c.full_path }, 1,
						 (void **)&image, &len, &err));
	CHECK_EQ(len, fx_image_size());
	CHECK(!memcmp(image, c.after_full, len));
	munmap(image, len);
	CHECK_OK(uffdwp_snapshot_restore_mapping((const char *const[]){ c.full_path, c.incr_path },
						 2, (void **)&image, &len, &err));
	CHECK(!memcmp(image, c.after_incr, len));
	CHECK(memcmp(c.after_full, c.after_incr, len));  /* the incremental did change it */
	munmap(image, len);
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ c.full_path }, 1, NULL,
						  &len, &err), -EINVAL);
	CHECK_RET(uffdwp_snapshot_restore_mapping(NULL, 0, (void **)&image, &len, &err), -EINVAL);
	free_chain(&c);
}

/* Restoring in place: the fixture's regions are remapped to real memory by
 * building the chain over the addresses of a mapping of our own. */
TEST(format_restore_in_place, ON_NONE)
{
	static const struct fx_record full[] = {
		{ UFFDWP__RECORD_PAGE, 2, 1, 40 },
		{ UFFDWP__RECORD_ZERO, 0, 1, 0 },
		{ UFFDWP__RECORD_PAGE, 3, 1, 41 },
	};
	size_t ps = test_page();
	char *mem = test_map(8, true);
	struct uffdwp_snapshot_region region = { (uint64_t)(uintptr_t)mem, 4 * ps };
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = (uint32_t)ps,
		.snapshot_id = 0x77, .region_count = 1, .regions = &region,
	};
	struct uffdwp_snapshot_error err = ERR_INIT;
	unsigned char *buf = malloc(8 * ps), *page = malloc(ps);
	struct uffdwp__encoder enc;
	size_t len = 0;
	char *path;

	CHECK(buf && page);
	CHECK_OK(uffdwp__encoder_init(&enc, &h));
	len += (size_t)uffdwp__encode_header(&enc, buf, 8 * ps);
	for (size_t i = 0; i < 3; i++) {
		uint64_t addr = region.addr + full[i].page * ps;

		fx_page_contents(page, full[i].fill);
		len += (size_t)(full[i].type == UFFDWP__RECORD_PAGE
			? uffdwp__encode_page(&enc, addr, page, buf + len, 8 * ps - len)
			: uffdwp__encode_zero(&enc, addr, 1, buf + len, 8 * ps - len));
	}
	len += (size_t)uffdwp__encode_trailer(&enc, buf + len, 8 * ps - len);
	CHECK_EQ(len, enc.offset);
	path = fx_write_file("inplace.snap", buf, len);

	memset(mem, 0x5a, 8 * ps);
	CHECK_OK(uffdwp_snapshot_restore_in_place((const char *const[]){ path }, 1, &err));
	for (size_t i = 0; i < ps; i++)
		CHECK(mem[i] == 0 && mem[ps + i] == 0);  /* zero record, and a page no record names */
	fx_page_contents(page, 40);
	CHECK(!memcmp(mem + 2 * ps, page, ps));
	fx_page_contents(page, 41);
	CHECK(!memcmp(mem + 3 * ps, page, ps));
	for (size_t i = 4 * ps; i < 8 * ps; i++)
		CHECK(mem[i] == 0x5a);  /* outside the region: untouched */
	munmap(mem, 8 * ps);
	free(buf);
	free(page);
	free(path);
	fx_cleanup();
}

TEST(format_restore_broken_chains, ON_NONE)
{
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct fx_stream other, moved;
	struct uffdwp_snapshot_region regions[FX_REGIONS];
	struct uffdwp__encoder enc;
	struct uffdwp__format_header h;
	char *other_path, *moved_path, *cut_path;
	unsigned char *image;
	size_t len;
	struct chain c;

	make_chain(&c);
	/* an incremental alone */
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ c.incr_path }, 1,
						  (void **)&image, &len, &err), -EINVAL);
	CHECK(strstr(err.message, "full snapshot"));
	/* an incremental on another parent */
	fx_build(&other, 0x3333, 0x4444, fx_incr_records, fx_incr_count, NULL);
	other_path = fx_write_file("other.snap", other.buf, other.len);
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ c.full_path, other_path },
						  2, (void **)&image, &len, &err), -EINVAL);
	CHECK_EQ(err.file, 1);
	CHECK(strstr(err.message, "parent 0x4444"));
	CHECK(strstr(err.message, "0x1111"));
	/* the right order matters too */
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ c.incr_path, c.full_path },
						  2, (void **)&image, &len, &err), -EINVAL);
	/* the same file twice: a full snapshot where an incremental belongs */
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ c.full_path, c.full_path },
						  2, (void **)&image, &len, &err), -EINVAL);
	CHECK_EQ(err.file, 1);

	/* an incremental on the right parent, over other regions */
	memcpy(regions, fx_regions(), sizeof(regions));
	regions[1].len -= test_page();
	h = (struct uffdwp__format_header){
		.version = UFFDWP__FORMAT_VERSION, .page_size = (uint32_t)test_page(),
		.snapshot_id = 0x5555, .parent_id = 0x1111, .region_count = FX_REGIONS,
		.regions = regions,
	};
	moved.buf = malloc(4096 + UFFDWP__FORMAT_TRAILER_SIZE);
	CHECK(moved.buf);
	CHECK_OK(uffdwp__encoder_init(&enc, &h));
	moved.len = (size_t)uffdwp__encode_header(&enc, moved.buf, 4096);
	moved.len += (size_t)uffdwp__encode_trailer(&enc, moved.buf + moved.len, 4096);
	moved_path = fx_write_file("moved.snap", moved.buf, moved.len);
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ c.full_path, moved_path },
						  2, (void **)&image, &len, &err), -EINVAL);
	CHECK(strstr(err.message, "regions"));

	/* a truncated link: found before anything is written */
	cut_path = fx_write_file("cut.snap", c.incr.buf, c.incr.len - 1);
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ c.full_path, cut_path },
						  2, (void **)&image, &len, &err), -ENODATA);
	CHECK_EQ(err.file, 1);
	/* a corrupt page in the second file: found while replaying */
	c.incr.buf[c.incr.record_at[2] + 40] ^= 1;
	free(fx_write_file("incr.snap", c.incr.buf, c.incr.len));
	CHECK_RET(uffdwp_snapshot_restore_mapping((const char *const[]){ c.full_path, c.incr_path },
						  2, (void **)&image, &len, &err), -EBADMSG);
	CHECK_EQ(err.file, 1);
	CHECK_EQ(err.offset, c.incr.record_at[2]);
	free(other.buf);
	free(moved.buf);
	free(other_path);
	free(moved_path);
	free(cut_path);
	free_chain(&c);
}

/* Chains whose files are of different versions and codecs restore byte for
 * byte: version 1 files (what older uffdwp wrote) keep working. */
TEST(format_chains_mix_versions_and_codecs, ON_NONE)
{
	static const struct { uint32_t version; enum uffdwp__codec_id codec; int level; } kinds[] = {
		{ 1, UFFDWP__CODEC_NONE, 0 }, { 2, UFFDWP__CODEC_NONE, 0 },
		{ 2, UFFDWP__CODEC_LZ4, 0 }, { 2, UFFDWP__CODEC_ZSTD, 3 },
	};
	const size_t nkinds = sizeof(kinds) / sizeof(kinds[0]);
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct uffdwp__codec codec;
	struct fx_stream full, incr;
	unsigned char *want = malloc(fx_image_size()), *image;
	size_t len;

	CHECK(want);
	for (size_t a = 0; a < nkinds; a++) {
		for (size_t b = 0; b < nkinds; b++) {
			char *paths[2];
			struct uffdwp_snapshot_info info = { .sz = sizeof(info) };

			memset(want, 0, fx_image_size());
			fx_version = kinds[a].version;
			CHECK_OK(uffdwp__codec_init(&codec, kinds[a].codec, kinds[a].level));
			fx_codec = fx_version >= 2 && kinds[a].codec ? &codec : NULL;
			fx_build(&full, 0x1111, 0, fx_full_records, fx_full_count, want);
			uffdwp__codec_release(&codec);
			fx_version = kinds[b].version;
			CHECK_OK(uffdwp__codec_init(&codec, kinds[b].codec, kinds[b].level));
			fx_codec = fx_version >= 2 && kinds[b].codec ? &codec : NULL;
			fx_build(&incr, 0x2222, 0x1111, fx_incr_records, fx_incr_count, want);
			uffdwp__codec_release(&codec);
			fx_codec = NULL;
			paths[0] = fx_write_file("full.snap", full.buf, full.len);
			paths[1] = fx_write_file("incr.snap", incr.buf, incr.len);
			CHECK_OK(uffdwp_snapshot_file_info(paths[0], &info, NULL, 0, &err));
			CHECK_EQ(info.version, kinds[a].version);
			CHECK_OK(uffdwp_snapshot_file_verify(paths[1], &info, &err));
			CHECK_OK(uffdwp_snapshot_restore_mapping((const char *const *)paths, 2,
								 (void **)&image, &len, &err));
			if (memcmp(image, want, len))
				FAIL("chain of kinds %zu and %zu restored wrong", a, b);
			munmap(image, len);
			free(paths[0]);
			free(paths[1]);
			free(full.buf);
			free(incr.buf);
		}
	}
	fx_version = UFFDWP__FORMAT_VERSION;
	free(want);
	fx_cleanup();
}
