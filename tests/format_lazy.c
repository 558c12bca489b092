/* SPDX-License-Identifier: MIT */
/*
 * Lazy restore (uffdwp_snapshot_restore_lazy): the same image as a full
 * restore, for chains of every version and codec, with and without index,
 * while threads read it as it loads; a damaged record fails the restore
 * without leaving a reader blocked; cancel. MISSING faults need the
 * kernel's userfaultfd: where it cannot be opened the call must say
 * -EOPNOTSUPP, and the tests skip.
 */
#include <pthread.h>
#include <sys/mman.h>
#include "format_fixture.h"

#define ERR_INIT { .sz = sizeof(struct uffdwp_snapshot_error) }

struct reader {
	const unsigned char *image, *want;
	size_t len;
	unsigned seed;
	pthread_t thread;
	bool wrong;
};

/* Touch the image at random pages while it loads, against the expected. */
static void *reader_main(void *arg)
{
	struct reader *r = arg;
	size_t ps = test_page();

	for (int i = 0; i < 200; i++) {
		size_t page = (size_t)rand_r(&r->seed) % (r->len / ps);
		size_t at = page * ps + (size_t)rand_r(&r->seed) % ps;

		if (r->image[at] != r->want[at])
			r->wrong = true;
	}
	return NULL;
}

static void lazy_or_skip(int ret)
{
	if (ret == -EOPNOTSUPP)
		SKIP("no kernel userfaultfd here: a lazy restore cannot run");
	CHECK_OK(ret);
}

TEST(format_lazy_restore_matches_full, ON_NONE)
{
	static const struct { uint32_t version; enum uffdwp__codec_id codec; bool indexed; } kinds[] = {
		{ 1, UFFDWP__CODEC_NONE, false }, { 2, UFFDWP__CODEC_NONE, true },
		{ 2, UFFDWP__CODEC_LZ4, true }, { 2, UFFDWP__CODEC_ZSTD, false },
	};
	const size_t nkinds = sizeof(kinds) / sizeof(kinds[0]);
	struct uffdwp_snapshot_error err = ERR_INIT;
	unsigned char *want = malloc(fx_image_size());

	CHECK(want);
	for (size_t a = 0; a < nkinds; a++) {
		for (size_t b = 0; b < nkinds; b++) {
			struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };
			struct reader readers[2];
			struct uffdwp_lazy_restore *lr;
			struct fx_stream full, incr;
			struct uffdwp__codec codec;
			unsigned char *image;
			char *paths[2];
			size_t len;

			memset(want, 0, fx_image_size());
			for (int k = 0; k < 2; k++) {
				size_t which = k ? b : a;

				fx_version = kinds[which].version;
				fx_indexed = kinds[which].indexed;
				CHECK_OK(uffdwp__codec_init(&codec, kinds[which].codec, 0));
				fx_codec = kinds[which].codec ? &codec : NULL;
				if (k == 0)
					fx_build(&full, 0x1111, 0, fx_full_records, fx_full_count, want);
				else
					fx_build(&incr, 0x2222, 0x1111, fx_incr_records, fx_incr_count,
						 want);
				uffdwp__codec_release(&codec);
			}
			fx_codec = NULL;
			paths[0] = fx_write_file("full.snap", full.buf, full.len);
			paths[1] = fx_write_file("incr.snap", incr.buf, incr.len);
			lazy_or_skip(uffdwp_snapshot_restore_lazy((const char *const *)paths, 2,
								  (void **)&image, &len, &lr, &err));
			CHECK_EQ(len, fx_image_size());
			for (int k = 0; k < 2; k++) {
				readers[k] = (struct reader){ .image = image, .want = want, .len = len,
							      .seed = (unsigned)(a * 7 + b + k) };
				CHECK_OK(pthread_create(&readers[k].thread, NULL, reader_main,
							&readers[k]));
			}
			for (int k = 0; k < 2; k++) {
				pthread_join(readers[k].thread, NULL);
				if (readers[k].wrong)
					FAIL("kinds %zu, %zu: a page read while loading differs", a, b);
			}
			CHECK_OK(uffdwp_lazy_restore_wait(lr, -1));
			CHECK_OK(uffdwp_lazy_restore_progress(lr, &p));
			CHECK_EQ(p.pages_done, FX_PAGES);
			CHECK_EQ(p.pages_total, FX_PAGES);
			CHECK(p.finished);
			CHECK_OK(uffdwp_lazy_restore_end(lr, 0));
			if (memcmp(image, want, len))
				FAIL("kinds %zu, %zu: the image differs", a, b);
			image[0] ^= 1;  /* ordinary memory now */
			munmap(image, len);
			free(paths[0]);
			free(paths[1]);
			free(full.buf);
			free(incr.buf);
		}
	}
	fx_version = UFFDWP__FORMAT_VERSION;
	fx_indexed = false;
	free(want);
	fx_cleanup();
}

/* A record damaged behind a sound index: the call succeeds (it does not
 * read records), the restore fails when it meets it, nobody hangs. */
TEST(format_lazy_restore_damaged_record, ON_NONE)
{
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct uffdwp_lazy_restore *lr;
	struct fx_stream full;
	volatile unsigned char sum = 0;
	unsigned char *image;
	char *path;
	size_t len;

	fx_indexed = true;
	fx_build(&full, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	fx_indexed = false;
	full.buf[full.record_at[3] + 100] ^= 0x20;  /* inside a PAGE record's page */
	path = fx_write_file("full.snap", full.buf, full.len);
	lazy_or_skip(uffdwp_snapshot_restore_lazy((const char *const[]){ path }, 1,
						  (void **)&image, &len, &lr, &err));
	for (size_t i = 0; i < len; i += test_page())
		sum += image[i];  /* every page, none blocks */
	CHECK_RET(uffdwp_lazy_restore_wait(lr, -1), -EBADMSG);
	CHECK_RET(uffdwp_lazy_restore_end(lr, 0), -EBADMSG);
	munmap(image, len);
	/* verify says the same, with the offset */
	CHECK_RET(uffdwp_snapshot_file_verify(path, NULL, &err), -EBADMSG);
	CHECK_EQ(err.offset, full.record_at[3]);
	(void)sum;
	free(path);
	free(full.buf);
	fx_cleanup();
}

/* A damaged index is refused by the call, before anything is mapped. */
TEST(format_lazy_restore_checks_headers_and_index, ON_NONE)
{
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct uffdwp_lazy_restore *lr;
	struct fx_stream full;
	unsigned char *image;
	char *path;
	size_t len;

	fx_indexed = true;
	fx_build(&full, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	fx_indexed = false;
	full.buf[full.record_at[full.nrecords] - 30] ^= 1;  /* in the index's entries */
	path = fx_write_file("full.snap", full.buf, full.len);
	CHECK_RET(uffdwp_snapshot_restore_lazy((const char *const[]){ path }, 1, (void **)&image,
					       &len, &lr, &err), -EBADMSG);
	CHECK(strstr(err.message, "index"));
	free(path);
	/* an incremental alone is no chain */
	fx_build(&full, 0x2222, 0x1111, fx_incr_records, fx_incr_count, NULL);
	path = fx_write_file("incr.snap", full.buf, full.len);
	CHECK_RET(uffdwp_snapshot_restore_lazy((const char *const[]){ path }, 1, (void **)&image,
					       &len, &lr, &err), -EINVAL);
	CHECK_RET(uffdwp_snapshot_restore_lazy(NULL, 1, (void **)&image, &len, &lr, &err),
		  -EINVAL);
	free(path);
	free(full.buf);
	fx_cleanup();
}

/*
 * A full snapshot of one region of npages pages, with an index, in file
 * `name`: `stored` pages of bytes `fill`, one every `step` pages from the
 * start, then a ZERO record over the rest (if any). Returns its path.
 */
static char *region_file(const char *name, size_t npages, size_t stored, size_t step,
			 unsigned char fill)
{
	const size_t ps = test_page();
	struct uffdwp_snapshot_region region = { 1u << 30, npages * ps };
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = (uint32_t)ps, .snapshot_id = 5,
		.region_count = 1, .regions = &region,
	};
	size_t cap = stored * (ps + 64) + 8192, len = 0;
	unsigned char *buf = malloc(cap), *page = malloc(ps);
	struct uffdwp__encoder enc;
	char *path;

	CHECK(buf && page);
	memset(page, fill, ps);
	CHECK_OK(uffdwp__encoder_init(&enc, &h));
	CHECK_OK(uffdwp__encoder_keep_index(&enc));
	len += (size_t)uffdwp__encode_header(&enc, buf, cap);
	for (size_t i = 0; i < stored; i++)
		len += (size_t)uffdwp__encode_page(&enc, region.addr + i * step * ps, page,
						   buf + len, cap - len);
	if (stored * step < npages)
		len += (size_t)uffdwp__encode_zero(&enc, region.addr + stored * step * ps,
						   npages - stored * step, buf + len, cap - len);
	len += (size_t)uffdwp__encode_index(&enc, buf + len, cap - len);
	len += (size_t)uffdwp__encode_trailer(&enc, buf + len, cap - len);
	uffdwp__encoder_release(&enc);
	path = fx_write_file(name, buf, len);
	free(buf);
	free(page);
	return path;
}

/* Cancel while loading: end returns, the memory reads (zero where not
 * loaded), nothing hangs. A large region so that the fill is under way. */
TEST(format_lazy_restore_cancel, ON_NONE)
{
	const size_t ps = test_page(), npages = 16384;
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct uffdwp_lazy_restore *lr;
	char *path = region_file("big.snap", npages, npages, 1, 7);
	volatile unsigned sum = 0;
	unsigned char *image;
	size_t image_len;
	int ret;

	lazy_or_skip(uffdwp_snapshot_restore_lazy((const char *const[]){ path }, 1,
						  (void **)&image, &image_len, &lr, &err));
	CHECK_EQ(image[image_len - 1], 7);  /* the last page, on demand */
	ret = uffdwp_lazy_restore_end(lr, 1);
	CHECK(ret == 0 || ret == -ECANCELED);
	for (size_t i = 0; i < image_len; i += ps)
		sum += image[i];
	(void)sum;
	CHECK_EQ(image[image_len - 1], 7);
	munmap(image, image_len);
	free(path);
	fx_cleanup();
}

/* Zero pages are left out of the fill (not populated), and one touched
 * while loading still reads as zero. */
TEST(format_lazy_restore_leaves_zero_pages_unpopulated, ON_NONE)
{
	const size_t ps = test_page(), npages = 16384, stored = 64;
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct uffdwp_lazy_restore *lr;
	char *path = region_file("sparse.snap", npages, stored, 2, 9);
	uint64_t rss = fx_rss_bytes();
	unsigned char *image;
	size_t image_len;

	lazy_or_skip(uffdwp_snapshot_restore_lazy((const char *const[]){ path }, 1,
						  (void **)&image, &image_len, &lr, &err));
	CHECK_EQ(image[image_len - 1], 0);   /* a zero page touched while loading */
	CHECK_EQ(image[2 * ps], 9);
	CHECK_OK(uffdwp_lazy_restore_end(lr, 0));
	if (fx_rss_bytes() - rss > npages / 4 * ps)
		FAIL("RSS grew by %llu KiB for %zu stored pages of %zu",
		     (unsigned long long)((fx_rss_bytes() - rss) >> 10), stored, npages);
	for (size_t i = 0; i < npages; i += 37)
		CHECK_EQ(image[i * ps], i < 2 * stored && i % 2 == 0 ? 9 : 0);
	munmap(image, image_len);
	free(path);
	fx_cleanup();
}

static void lazy_without_userfaultfd(void *path)
{
	struct uffdwp_snapshot_error err = ERR_INIT;
	struct uffdwp_lazy_restore *lr = NULL;
	void *image = NULL;
	size_t len = 0;

	test_forbid_userfaultfd();
	CHECK_RET(uffdwp_snapshot_restore_lazy((const char *const[]){ path }, 1, &image, &len, &lr,
					       &err),
		  -EOPNOTSUPP);
	CHECK(image == NULL && lr == NULL);
}

/* Where the kernel's userfaultfd cannot be opened (a sandbox), a lazy
 * restore is -EOPNOTSUPP, as documented, and leaves nothing behind. */
TEST(format_lazy_restore_without_userfaultfd, ON_NONE)
{
	char *path = region_file("forbidden.snap", 64, 16, 2, 5);

	test_check_exited_0(test_in_child(lazy_without_userfaultfd, path, 20));
	free(path);
	fx_cleanup();
}
