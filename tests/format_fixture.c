/* SPDX-License-Identifier: MIT */
/* The format tests' fixture: see format_fixture.h. */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include "format_fixture.h"

/* Room for the largest stream the tests build. */
#define FX_CAPACITY(page) ((FX_MAX_RECORDS + 2) * ((page) + 64) + 4096)

const struct fx_record fx_full_records[] = {
	{ UFFDWP__RECORD_PAGE, 7, 1, 1 },
	{ UFFDWP__RECORD_PAGE, 0, 1, 2 },
	{ UFFDWP__RECORD_ZERO, 1, 2, 0 },
	{ UFFDWP__RECORD_PAGE, 4, 1, 3 },
	{ UFFDWP__RECORD_ZERO, 9, 3, 0 },
	{ UFFDWP__RECORD_PAGE, 3, 1, 4 },
};
const size_t fx_full_count = sizeof(fx_full_records) / sizeof(fx_full_records[0]);

const struct fx_record fx_incr_records[] = {
	{ UFFDWP__RECORD_PAGE, 5, 1, 9 },
	{ UFFDWP__RECORD_ZERO, 0, 1, 0 },   /* a page that became zero */
	{ UFFDWP__RECORD_PAGE, 7, 1, 10 },
};
const size_t fx_incr_count = sizeof(fx_incr_records) / sizeof(fx_incr_records[0]);

static char scratch[64];

const struct uffdwp_snapshot_region *fx_regions(void)
{
	static struct uffdwp_snapshot_region r[FX_REGIONS];

	r[0] = (struct uffdwp_snapshot_region){ 64 * test_page(), 4 * test_page() };
	r[1] = (struct uffdwp_snapshot_region){ 256 * test_page(), 8 * test_page() };
	return r;
}

uint64_t fx_addr(size_t page)
{
	const struct uffdwp_snapshot_region *r = fx_regions();

	return page < 4 ? r[0].addr + page * test_page() : r[1].addr + (page - 4) * test_page();
}

size_t fx_image_size(void)
{
	return FX_PAGES * test_page();
}

void fx_page_contents(unsigned char *page, unsigned char fill)
{
	for (size_t i = 0; i < test_page(); i++)
		page[i] = (unsigned char)(fill * 31 + i * 7 + (i >> 8));
}

void fx_build(struct fx_stream *s, uint64_t id, uint64_t parent, const struct fx_record *recs,
	      size_t n, unsigned char *image)
{
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION,
		.page_size = (uint32_t)test_page(),
		.snapshot_id = id,
		.parent_id = parent,
		.time_ns = 1700000000123456789ull,
		.region_count = FX_REGIONS,
		.regions = fx_regions(),
	};
	size_t cap = FX_CAPACITY(test_page());
	unsigned char *page = malloc(test_page());
	struct uffdwp__encoder enc;
	ssize_t got;

	CHECK(n <= FX_MAX_RECORDS);
	memset(s, 0, sizeof(*s));
	s->buf = malloc(cap);
	CHECK(s->buf && page);
	CHECK_OK(uffdwp__encoder_init(&enc, &h));
	got = uffdwp__encode_header(&enc, s->buf, cap);
	CHECK_EQ(got, uffdwp__format_header_size(FX_REGIONS));
	s->len = s->header_len = (size_t)got;
	for (size_t i = 0; i < n; i++) {
		const struct fx_record *r = &recs[i];
		unsigned char *dst = image ? image + r->page * test_page() : NULL;

		s->record_at[s->nrecords++] = s->len;
		if (r->type == UFFDWP__RECORD_PAGE) {
			fx_page_contents(page, r->fill);
			got = uffdwp__encode_page(&enc, fx_addr(r->page), page, s->buf + s->len,
						  cap - s->len);
			CHECK_EQ(got, uffdwp__format_page_record_size((uint32_t)test_page()));
			if (dst)
				memcpy(dst, page, test_page());
		} else {
			got = uffdwp__encode_zero(&enc, fx_addr(r->page), r->npages, s->buf + s->len,
						  cap - s->len);
			CHECK_EQ(got, UFFDWP__FORMAT_ZERO_SIZE);
			if (dst)
				memset(dst, 0, r->npages * test_page());
		}
		s->len += (size_t)got;
	}
	s->record_at[s->nrecords] = s->len;
	got = uffdwp__encode_trailer(&enc, s->buf + s->len, cap - s->len);
	CHECK_EQ(got, UFFDWP__FORMAT_TRAILER_SIZE);
	s->len += (size_t)got;
	CHECK_EQ(enc.offset, s->len);
	free(page);
}

int fx_decode(const void *buf, size_t len, struct uffdwp__decoder *dec)
{
	struct uffdwp__record rec;
	int ret;

	uffdwp__decoder_init_buffer(dec, buf, len);
	while ((ret = uffdwp__decode_next(dec, &rec)) == 1)
		;
	uffdwp__decoder_release(dec);
	return ret;
}

char *fx_write_file(const char *name, const void *buf, size_t len)
{
	char *path;
	int fd;

	if (!scratch[0]) {
		snprintf(scratch, sizeof(scratch), "/tmp/uffdwp-format-XXXXXX");
		CHECK(mkdtemp(scratch) != NULL);
	}
	CHECK(asprintf(&path, "%s/%s", scratch, name) > 0);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK_EQ(write(fd, buf, len), (ssize_t)len);
	close(fd);
	return path;
}

void fx_cleanup(void)
{
	DIR *d;
	struct dirent *e;

	if (!scratch[0])
		return;
	d = opendir(scratch);
	while (d && (e = readdir(d))) {
		char path[512];

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", scratch, e->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
	rmdir(scratch);
	scratch[0] = '\0';
}

unsigned char *fx_read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	unsigned char *buf;

	CHECK(fd >= 0);
	CHECK_OK(fstat(fd, &st));
	buf = malloc((size_t)st.st_size + 1);
	CHECK(buf);
	CHECK_EQ(read(fd, buf, (size_t)st.st_size + 1), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return buf;
}
