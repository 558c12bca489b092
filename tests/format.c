/* SPDX-License-Identifier: MIT */
/*
 * The snapshot format (src/format.c): checksum, encoder, decoder, and every
 * way a stream can be damaged. Backend-independent.
 */
#include "format_fixture.h"
#include "../fuzz/harness.h"

/* Decode s to the end through the buffer decoder; returns 0 or the error
 * and leaves the decoder's findings in *dec. */
static int decode_stream(const struct fx_stream *s, struct uffdwp__decoder *dec)
{
	return fx_decode(s->buf, s->len, dec);
}

TEST(format_sum64_detects_every_bit_flip, ON_NONE)
{
	size_t len = test_page();
	unsigned char *page = malloc(len);
	uint64_t sum;

	CHECK(page);
	fx_page_contents(page, 5);
	sum = uffdwp__sum64(page, len, 42);
	CHECK_EQ(uffdwp__sum64(page, len, 42), sum);  /* deterministic */
	CHECK(uffdwp__sum64(page, len, 43) != sum);   /* seeded */
	for (size_t bit = 0; bit < len * 8; bit++) {
		page[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		if (uffdwp__sum64(page, len, 42) == sum)
			FAIL("flipping bit %zu went unnoticed", bit);
		page[bit / 8] ^= (unsigned char)(1u << (bit % 8));
	}
	/* a tail of zeros is not the same as no tail */
	memset(page, 0, 64);
	CHECK(uffdwp__sum64(page, 33, 0) != uffdwp__sum64(page, 40, 0));
	CHECK(uffdwp__sum64(page, 0, 0) != uffdwp__sum64(page, 1, 0));
	free(page);
}

TEST(format_roundtrip, ON_NONE)
{
	unsigned char *image = calloc(1, fx_image_size()), *page = malloc(test_page());
	struct uffdwp__decoder dec;
	struct uffdwp__record rec;
	struct fx_stream s;
	size_t i = 0;
	int ret;

	CHECK(image && page);
	fx_build(&s, 0x1111, 0, fx_full_records, fx_full_count, image);
	uffdwp__decoder_init_buffer(&dec, s.buf, s.len);
	CHECK_OK(uffdwp__decode_header(&dec));
	CHECK_EQ(dec.header.version, UFFDWP__FORMAT_VERSION);
	CHECK_EQ(dec.header.page_size, test_page());
	CHECK_EQ(dec.header.snapshot_id, 0x1111);
	CHECK_EQ(dec.header.parent_id, 0);
	CHECK_EQ(dec.header.time_ns, 1700000000123456789ull);
	CHECK_EQ(dec.header.region_count, FX_REGIONS);
	CHECK(!memcmp(dec.header.regions, fx_regions(), FX_REGIONS * sizeof(*fx_regions())));
	while ((ret = uffdwp__decode_next(&dec, &rec)) == 1) {
		const struct fx_record *want = &fx_full_records[i];

		CHECK(i < fx_full_count);
		CHECK_EQ(rec.type, want->type);
		CHECK_EQ(rec.offset, s.record_at[i]);
		CHECK_EQ(rec.addr, fx_addr(want->page));
		CHECK_EQ(rec.npages, want->npages);
		if (rec.type == UFFDWP__RECORD_PAGE) {
			fx_page_contents(page, want->fill);
			CHECK(!memcmp(rec.data, page, test_page()));
		}
		i++;
	}
	CHECK_OK(ret);
	CHECK_EQ(i, fx_full_count);
	CHECK_EQ(dec.totals.record_count, fx_full_count);
	CHECK_EQ(dec.totals.page_count, 4);
	CHECK_EQ(dec.totals.zero_count, 5);
	CHECK_EQ(dec.offset, s.len);
	CHECK_OK(uffdwp__decode_next(&dec, &rec));  /* stays at the end */
	uffdwp__decoder_release(&dec);
	/* and the same through a read function returning odd chunks */
	CHECK_OK(harness_decode(s.buf, s.len));
	free(s.buf);
	free(image);
	free(page);
}

TEST(format_empty_snapshot_is_valid, ON_NONE)
{
	struct uffdwp__decoder dec;
	struct fx_stream s;

	fx_build(&s, 7, 3, NULL, 0, NULL);
	CHECK_EQ(s.len, uffdwp__format_header_size(FX_REGIONS) + UFFDWP__FORMAT_TRAILER_SIZE);
	CHECK_OK(decode_stream(&s, &dec));
	CHECK_EQ(dec.totals.record_count, 0);
	free(s.buf);
}

TEST(format_page_frame_matches_page_record, ON_NONE)
{
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = (uint32_t)test_page(),
		.snapshot_id = 9, .region_count = FX_REGIONS, .regions = fx_regions(),
	};
	size_t rec_size = uffdwp__format_page_record_size((uint32_t)test_page());
	unsigned char *page = malloc(test_page()), *whole = malloc(rec_size + 4096);
	unsigned char head[UFFDWP__FORMAT_HEAD_SIZE], tail[UFFDWP__FORMAT_SUM_SIZE];
	unsigned char head2[UFFDWP__FORMAT_HEAD_SIZE], tail2[UFFDWP__FORMAT_SUM_SIZE];
	struct uffdwp__encoder a, b, c;

	CHECK(page && whole);
	fx_page_contents(page, 77);
	CHECK_OK(uffdwp__encoder_init(&a, &h));
	CHECK_OK(uffdwp__encoder_init(&b, &h));
	CHECK_OK(uffdwp__encoder_init(&c, &h));
	CHECK(uffdwp__encode_header(&a, whole, rec_size + 4096) > 0);
	CHECK(uffdwp__encode_header(&b, whole, rec_size + 4096) > 0);
	CHECK(uffdwp__encode_header(&c, whole, rec_size + 4096) > 0);
	CHECK_EQ(uffdwp__encode_page(&a, fx_addr(5), page, whole, rec_size), rec_size);
	CHECK_OK(uffdwp__encode_page_frame(&b, fx_addr(5), page, head, tail));
	CHECK(!memcmp(whole, head, sizeof(head)));
	CHECK(!memcmp(whole + sizeof(head), page, test_page()));
	CHECK(!memcmp(whole + sizeof(head) + test_page(), tail, sizeof(tail)));
	CHECK_OK(uffdwp__encode_page_frame_summed(&c, fx_addr(5),
						  uffdwp__format_page_sum(&c, fx_addr(5), page),
						  head2, tail2));
	CHECK(!memcmp(head, head2, sizeof(head)) && !memcmp(tail, tail2, sizeof(tail)));
	CHECK(!memcmp(&a.totals, &b.totals, sizeof(a.totals)));
	CHECK(!memcmp(&a.totals, &c.totals, sizeof(a.totals)));
	CHECK_EQ(a.offset, b.offset);
	free(page);
	free(whole);
}

TEST(format_encoder_rejects_bad_input, ON_NONE)
{
	size_t ps = test_page();
	struct uffdwp_snapshot_region r[3] = {
		{ 16 * ps, 4 * ps }, { 32 * ps, 4 * ps }, { 64 * ps, 4 * ps },
	};
	struct uffdwp__format_header good = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = (uint32_t)ps,
		.snapshot_id = 5, .region_count = 3, .regions = r,
	}, h;
	unsigned char *buf = malloc(ps * 4), *page = calloc(1, ps);
	struct uffdwp__encoder enc;

	CHECK(buf && page);
#define REJECT(field, value) do { h = good; h.field = value; \
		CHECK_RET(uffdwp__encoder_init(&enc, &h), -EINVAL); } while (0)
	REJECT(version, 0);
	REJECT(version, UFFDWP__FORMAT_VERSION + 1);
	REJECT(page_size, (uint32_t)ps + 8);
	REJECT(page_size, 256);
	REJECT(page_size, UFFDWP__FORMAT_MAX_PAGE_SIZE * 2);
	REJECT(snapshot_id, 0);
	REJECT(parent_id, 5);
	REJECT(region_count, 0);
	REJECT(region_count, UFFDWP__FORMAT_MAX_REGIONS + 1);
	REJECT(regions, NULL);
#undef REJECT
	r[1].addr = 8 * ps;  /* unsorted */
	CHECK_RET(uffdwp__encoder_init(&enc, &good), -EINVAL);
	r[1].addr = 18 * ps;  /* overlapping */
	CHECK_RET(uffdwp__encoder_init(&enc, &good), -EINVAL);
	r[1].addr = 32 * ps + 1;  /* unaligned */
	CHECK_RET(uffdwp__encoder_init(&enc, &good), -EINVAL);
	r[1].addr = 32 * ps;
	r[1].len = 0;  /* empty */
	CHECK_RET(uffdwp__encoder_init(&enc, &good), -EINVAL);
	r[1].len = 4 * ps;
	r[2].addr = UINT64_MAX - ps + 1;  /* wraps */
	CHECK_RET(uffdwp__encoder_init(&enc, &good), -EINVAL);
	r[2].addr = 64 * ps;
	r[1].addr = 20 * ps;  /* adjacent is fine */
	CHECK_OK(uffdwp__encoder_init(&enc, &good));
	r[1].addr = 32 * ps;

	CHECK_OK(uffdwp__encoder_init(&enc, &good));
	/* records before the header */
	CHECK_RET(uffdwp__encode_page(&enc, 16 * ps, page, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_zero(&enc, 16 * ps, 1, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_trailer(&enc, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_header(&enc, buf, uffdwp__format_header_size(3) - 1), -ENOSPC);
	CHECK_EQ(uffdwp__encode_header(&enc, buf, ps * 4), uffdwp__format_header_size(3));
	CHECK_RET(uffdwp__encode_header(&enc, buf, ps * 4), -EINVAL);
	/* addresses */
	CHECK_RET(uffdwp__encode_page(&enc, 16 * ps + 8, page, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_page(&enc, 20 * ps, page, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_page(&enc, 15 * ps, page, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_page(&enc, 68 * ps, page, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_zero(&enc, 33 * ps, 4, buf, ps * 4), -EINVAL);  /* runs out */
	CHECK_RET(uffdwp__encode_zero(&enc, 33 * ps, 0, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_zero(&enc, 33 * ps, UINT64_MAX, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_page(&enc, 17 * ps, page, buf, ps), -ENOSPC);
	CHECK_RET(uffdwp__encode_zero(&enc, 17 * ps, 1, buf, UFFDWP__FORMAT_ZERO_SIZE - 1), -ENOSPC);
	CHECK_EQ(enc.totals.record_count, 0);  /* nothing refused was counted */
	CHECK_EQ(uffdwp__encode_zero(&enc, 33 * ps, 3, buf, ps * 4), UFFDWP__FORMAT_ZERO_SIZE);
	CHECK_RET(uffdwp__encode_trailer(&enc, buf, UFFDWP__FORMAT_TRAILER_SIZE - 1), -ENOSPC);
	CHECK_EQ(uffdwp__encode_trailer(&enc, buf, ps * 4), UFFDWP__FORMAT_TRAILER_SIZE);
	/* nothing after the trailer */
	CHECK_RET(uffdwp__encode_page(&enc, 16 * ps, page, buf, ps * 4), -EINVAL);
	CHECK_RET(uffdwp__encode_trailer(&enc, buf, ps * 4), -EINVAL);
	free(buf);
	free(page);
}

/* Every proper prefix of a stream is a truncated stream, never a crash. */
TEST(format_truncation_at_every_byte, ON_NONE)
{
	struct uffdwp__decoder dec;
	struct fx_stream s;

	fx_build(&s, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	for (size_t len = 0; len < s.len; len++) {
		int ret = fx_decode(s.buf, len, &dec);

		if (ret != -ENODATA)
			FAIL("stream cut at %zu of %zu bytes: got %d (%s), want -ENODATA", len, s.len,
			     ret, dec.error_msg);
		if (!strstr(dec.error_msg, "truncated"))
			FAIL("cut at %zu: message \"%s\"", len, dec.error_msg);
	}
	free(s.buf);
}

/* Cut at each record boundary and in the middle of each record: the error
 * names the record where the stream ends, through a reader as well. */
TEST(format_truncation_at_record_boundaries, ON_NONE)
{
	struct uffdwp__decoder dec;
	struct fx_stream s;

	fx_build(&s, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	for (size_t i = 0; i <= s.nrecords; i++) {
		size_t start = s.record_at[i];
		size_t end = i < s.nrecords ? s.record_at[i + 1] : s.len;
		size_t cuts[] = { start, start + 1, start + (end - start) / 2, end - 1 };

		for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
			CHECK_RET(fx_decode(s.buf, cuts[c], &dec), -ENODATA);
			CHECK_EQ(dec.error_offset, start);
			CHECK_RET(harness_decode(s.buf, cuts[c]), -ENODATA);
		}
	}
	/* the header too */
	CHECK_RET(fx_decode(s.buf, s.header_len - 1, &dec), -ENODATA);
	CHECK_EQ(dec.error_offset, 0);
	free(s.buf);
}

/*
 * One bit flipped in each byte: in a record or the trailer it is -EBADMSG
 * at that record's offset; in the header -EBADMSG, or -ENOTSUP (version,
 * flags), or -ENODATA (a region count grown past the end of the stream).
 */
TEST(format_bit_flip_in_every_byte, ON_NONE)
{
	struct uffdwp__decoder dec;
	struct fx_stream s;
	size_t rec = 0;

	fx_build(&s, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	for (size_t at = 0; at < s.len; at++) {
		unsigned char bit = (unsigned char)(1u << (at % 8));
		int ret;

		s.buf[at] ^= bit;
		ret = fx_decode(s.buf, s.len, &dec);
		s.buf[at] ^= bit;
		if (at < s.header_len) {
			if (ret != -EBADMSG && ret != -ENOTSUP && ret != -ENODATA)
				FAIL("flip in header byte %zu: %d (%s)", at, ret, dec.error_msg);
			continue;
		}
		while (rec < s.nrecords && at >= s.record_at[rec + 1])
			rec++;
		if (ret != -EBADMSG || dec.error_offset != s.record_at[rec])
			FAIL("flip at byte %zu (record at %zu): %d at %llu (%s)", at, s.record_at[rec],
			     ret, (unsigned long long)dec.error_offset, dec.error_msg);
	}
	CHECK_OK(fx_decode(s.buf, s.len, &dec));  /* restored intact */
	free(s.buf);
}

TEST(format_bad_magic_version_flags, ON_NONE)
{
	struct uffdwp__decoder dec;
	struct fx_stream s;

	fx_build(&s, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	s.buf[0] = 'X';
	CHECK_RET(fx_decode(s.buf, s.len, &dec), -EBADMSG);
	CHECK(strstr(dec.error_msg, "magic"));
	s.buf[0] = 'U';
	s.buf[8] = 3;  /* version 3, checksum fixed: still refused as unknown */
	harness_fix_checksums(s.buf, s.len);
	CHECK_RET(fx_decode(s.buf, s.len, &dec), -ENOTSUP);
	CHECK(strstr(dec.error_msg, "version 3"));
	CHECK_EQ(dec.error_offset, 8);
	s.buf[8] = 0;
	harness_fix_checksums(s.buf, s.len);
	CHECK_RET(fx_decode(s.buf, s.len, &dec), -ENOTSUP);
	s.buf[8] = UFFDWP__FORMAT_VERSION;
	s.buf[12] = 1;  /* header flags */
	harness_fix_checksums(s.buf, s.len);
	CHECK_RET(fx_decode(s.buf, s.len, &dec), -ENOTSUP);
	s.buf[12] = 0;
	harness_fix_checksums(s.buf, s.len);
	CHECK_OK(fx_decode(s.buf, s.len, &dec));
	free(s.buf);
}

/* Fields out of range behind valid checksums: the structural checks. */
TEST(format_absurd_fields, ON_NONE)
{
	struct uffdwp__decoder dec;
	struct fx_stream s;
	size_t zero_at;
	unsigned char *copy;

	fx_build(&s, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	copy = malloc(s.len);
	CHECK(copy);
	zero_at = s.record_at[2];  /* fx_full_records[2] is a ZERO record */

#define MUTATE(at, width, value, want, text) do {                                  \
		memcpy(copy, s.buf, s.len);                                        \
		if ((width) == 8)                                                  \
			harness_store64(copy + (at), (value));                     \
		else {                                                             \
			uint32_t v32_ = htole32((uint32_t)(value));                \
			memcpy(copy + (at), &v32_, 4);                             \
		}                                                                  \
		harness_fix_checksums(copy, s.len);                                \
		CHECK_RET(fx_decode(copy, s.len, &dec), want);                     \
		if (!strstr(dec.error_msg, text))                                  \
			FAIL("message \"%s\" lacks \"%s\"", dec.error_msg, text);  \
	} while (0)

	MUTATE(16, 4, 3000, -EBADMSG, "page size");
	MUTATE(16, 4, 1u << 31, -EBADMSG, "page size");
	MUTATE(20, 4, 0, -EBADMSG, "region count");
	MUTATE(20, 4, UINT32_MAX, -EBADMSG, "region count");
	/* a region count the stream cannot back: truncated, after at most a
	 * chunk of allocation */
	MUTATE(20, 4, UFFDWP__FORMAT_MAX_REGIONS, -ENODATA, "truncated");
	MUTATE(24, 8, 0, -EBADMSG, "snapshot id");
	MUTATE(48 + 8, 8, 0, -EBADMSG, "region 0");             /* empty */
	MUTATE(48 + 16, 8, 0, -EBADMSG, "region 1");            /* before region 0 */
	MUTATE(48 + 16, 8, UINT64_MAX - test_page() + 1, -EBADMSG, "region 1"); /* wraps */
	MUTATE(48, 8, 64 * test_page() + 8, -EBADMSG, "region 0"); /* unaligned */
	/* records: addresses outside the regions, unaligned, runs too long */
	MUTATE(s.record_at[0] + 8, 8, 0, -EBADMSG, "outside");
	MUTATE(s.record_at[0] + 8, 8, fx_addr(7) + 64, -EBADMSG, "outside");
	MUTATE(s.record_at[0] + 8, 8, fx_regions()[1].addr + fx_regions()[1].len, -EBADMSG,
	       "outside");
	MUTATE(s.record_at[0] + 8, 8, fx_addr(3) + test_page(), -EBADMSG, "outside"); /* the gap */
	MUTATE(zero_at + 16, 8, 0, -EBADMSG, "outside");
	MUTATE(zero_at + 16, 8, 4, -EBADMSG, "outside");  /* crosses the region's end */
	MUTATE(zero_at + 16, 8, UINT64_MAX, -EBADMSG, "outside");
	MUTATE(zero_at, 4, 0x4b4e554a, -EBADMSG, "tag");         /* "JUNK" */
	MUTATE(zero_at + 4, 4, 1, -EBADMSG, "flags");
	/* the trailer's totals */
	MUTATE(s.record_at[s.nrecords] + 16, 8, fx_full_count + 1, -EBADMSG, "trailer counts");
	MUTATE(s.record_at[s.nrecords] + 24, 8, 0, -EBADMSG, "trailer counts");
	MUTATE(s.record_at[s.nrecords] + 32, 8, 4, -EBADMSG, "trailer counts");
	MUTATE(s.record_at[s.nrecords] + 8, 8, 1, -EBADMSG, "trailer address");
#undef MUTATE
	free(copy);
	free(s.buf);
}

/* Records moved, dropped, repeated or spliced from another snapshot. */
TEST(format_records_moved_dropped_repeated_spliced, ON_NONE)
{
	struct uffdwp__decoder dec;
	struct fx_stream s, other;
	size_t zero = UFFDWP__FORMAT_ZERO_SIZE;
	unsigned char *copy;
	size_t a, b, len;

	fx_build(&s, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	fx_build(&other, 0x9999, 0, fx_full_records, fx_full_count, NULL);
	copy = malloc(s.len * 2);
	CHECK(copy);

	/* swap the two ZERO records (2 and 4): each is intact, the order is not */
	a = s.record_at[2];
	b = s.record_at[4];
	memcpy(copy, s.buf, s.len);
	memcpy(copy + a, s.buf + b, zero);
	memcpy(copy + b, s.buf + a, zero);
	CHECK_RET(fx_decode(copy, s.len, &dec), -EBADMSG);
	CHECK(strstr(dec.error_msg, "stream checksum"));
	CHECK_EQ(dec.error_offset, s.record_at[s.nrecords]);

	/* drop record 2 */
	memcpy(copy, s.buf, a);
	memcpy(copy + a, s.buf + a + zero, s.len - a - zero);
	CHECK_RET(fx_decode(copy, s.len - zero, &dec), -EBADMSG);
	CHECK(strstr(dec.error_msg, "trailer counts"));

	/* repeat record 2 */
	memcpy(copy, s.buf, a + zero);
	memcpy(copy + a + zero, s.buf + a, s.len - a);
	CHECK_RET(fx_decode(copy, s.len + zero, &dec), -EBADMSG);

	/* record 2 of another snapshot, byte for byte the same but its checksum */
	memcpy(copy, s.buf, s.len);
	memcpy(copy + a, other.buf + other.record_at[2], zero);
	CHECK_RET(fx_decode(copy, s.len, &dec), -EBADMSG);
	CHECK(strstr(dec.error_msg, "record checksum"));
	CHECK_EQ(dec.error_offset, a);

	/* bytes after the trailer */
	memcpy(copy, s.buf, s.len);
	copy[s.len] = 0;
	CHECK_RET(fx_decode(copy, s.len + 1, &dec), -EBADMSG);
	CHECK(strstr(dec.error_msg, "after the trailer") || strstr(dec.error_msg, "follows"));
	CHECK_RET(harness_decode(copy, s.len + 1), -EBADMSG);

	/* two streams back to back */
	len = s.len;
	memcpy(copy, s.buf, len);
	memcpy(copy + len, s.buf, len);
	CHECK_RET(fx_decode(copy, 2 * len, &dec), -EBADMSG);
	free(copy);
	free(s.buf);
	free(other.buf);
}

/* Naming the same huge run over and over cannot wrap the zero page count. */
TEST(format_zero_count_overflow, ON_NONE)
{
	const uint32_t page = UFFDWP__FORMAT_MIN_PAGE_SIZE;
	struct uffdwp_snapshot_region huge = { 0, UINT64_C(1) << 63 };
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = page, .snapshot_id = 1,
		.region_count = 1, .regions = &huge,
	};
	size_t records = (UINT64_MAX / (huge.len / page)) + 1, cap = (records + 8) * 64;
	unsigned char *buf = malloc(cap);
	struct uffdwp__decoder dec;
	struct uffdwp__encoder enc;
	size_t len;

	CHECK(buf);
	CHECK_OK(uffdwp__encoder_init(&enc, &h));
	len = (size_t)uffdwp__encode_header(&enc, buf, cap);
	for (size_t i = 0; i < records; i++)  /* the encoder does not look for repeats */
		len += (size_t)uffdwp__encode_zero(&enc, 0, huge.len / page, buf + len, cap - len);
	len += (size_t)uffdwp__encode_trailer(&enc, buf + len, cap - len);
	CHECK_RET(fx_decode(buf, len, &dec), -EBADMSG);
	CHECK(strstr(dec.error_msg, "overflows"));
	free(buf);
}

struct failing_source {
	const unsigned char *data;
	size_t len, pos, fail_at;
};

static ssize_t read_then_fail(void *arg, void *buf, size_t len)
{
	struct failing_source *s = arg;

	if (s->pos >= s->fail_at)
		return -EIO;
	if (len > s->fail_at - s->pos)
		len = s->fail_at - s->pos;
	memcpy(buf, s->data + s->pos, len);
	s->pos += len;
	return (ssize_t)len;
}

TEST(format_reader_errors_pass_through, ON_NONE)
{
	struct uffdwp__decoder dec;
	struct uffdwp__record rec;
	struct fx_stream s;

	fx_build(&s, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	for (size_t fail_at = 0; fail_at < s.len; fail_at += 97) {
		struct failing_source src = { s.buf, s.len, 0, fail_at };
		int ret;

		uffdwp__decoder_init_reader(&dec, read_then_fail, &src);
		while ((ret = uffdwp__decode_next(&dec, &rec)) == 1)
			;
		CHECK_RET(ret, -EIO);
		CHECK_RET(uffdwp__decode_next(&dec, &rec), -EIO);  /* sticky */
		uffdwp__decoder_release(&dec);
	}
	free(s.buf);
}

TEST(format_decode_trailer_alone, ON_NONE)
{
	struct uffdwp__format_totals t;
	struct uffdwp__decoder dec;
	struct fx_stream s;
	unsigned char *trailer;

	fx_build(&s, 0x1111, 0, fx_full_records, fx_full_count, NULL);
	uffdwp__decoder_init_buffer(&dec, s.buf, s.len);
	CHECK_OK(uffdwp__decode_header(&dec));
	trailer = s.buf + s.len - UFFDWP__FORMAT_TRAILER_SIZE;
	CHECK_OK(uffdwp__decode_trailer(&dec.header, trailer, &t));
	CHECK_EQ(t.record_count, fx_full_count);
	CHECK_EQ(t.page_count, 4);
	CHECK_EQ(t.zero_count, 5);
	/* a page's tail, not a trailer */
	CHECK_RET(uffdwp__decode_trailer(&dec.header, s.buf + s.record_at[1], &t), -ENODATA);
	trailer[20] ^= 1;
	CHECK_RET(uffdwp__decode_trailer(&dec.header, trailer, &t), -EBADMSG);
	uffdwp__decoder_release(&dec);
	free(s.buf);
}

/* Batches: every codec round-trips, incompressible pages are stored raw,
 * and a damaged compressed batch is reported with its offset. */
TEST(format_batch_codecs, ON_NONE)
{
	static const struct { enum uffdwp__codec_id id; int level; } codecs[] = {
		{ UFFDWP__CODEC_NONE, 0 }, { UFFDWP__CODEC_LZ4, 0 },
		{ UFFDWP__CODEC_ZSTD, 0 }, { UFFDWP__CODEC_ZSTD, 19 },
	};
	const size_t ps = test_page(), n = 8;
	struct uffdwp_snapshot_region region = { 64 * ps, 16 * ps };
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = (uint32_t)ps, .snapshot_id = 9,
		.region_count = 1, .regions = &region,
	};
	size_t cap = 2 * uffdwp__format_batch_bound((uint32_t)ps, n) + 4096;
	unsigned char *text = malloc(n * ps), *noise = malloc(n * ps), *buf = malloc(cap);
	uint64_t x = 88172645463325252ull;

	CHECK(text && noise && buf);
	for (size_t i = 0; i < n * ps; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		noise[i] = (unsigned char)x;
		text[i] = "key=value; "[i % 11];
	}
	for (size_t k = 0; k < sizeof(codecs) / sizeof(codecs[0]); k++) {
		struct uffdwp__encoder enc;
		struct uffdwp__decoder dec;
		struct uffdwp__record rec;
		struct uffdwp__codec c;
		size_t len, second;
		ssize_t got;

		CHECK_OK(uffdwp__codec_init(&c, codecs[k].id, codecs[k].level));
		CHECK_OK(uffdwp__encoder_init(&enc, &h));
		len = (size_t)uffdwp__encode_header(&enc, buf, cap);
		got = uffdwp__encode_batch(&enc, region.addr, n, text, &c, buf + len, cap - len);
		CHECK(got > 0);
		if (codecs[k].id != UFFDWP__CODEC_NONE)
			CHECK((size_t)got < n * ps / 4);  /* text compresses */
		len += (size_t)got;
		second = len;
		got = uffdwp__encode_batch(&enc, region.addr + n * ps, n, noise, &c, buf + len,
					   cap - len);
		/* noise is stored raw, whatever the codec */
		CHECK_EQ(got, UFFDWP__FORMAT_HEAD_SIZE + UFFDWP__FORMAT_BATCH_FIXED + n * ps +
			      UFFDWP__FORMAT_SUM_SIZE);
		CHECK_EQ(harness_load32(buf + second + UFFDWP__FORMAT_HEAD_SIZE), UFFDWP__CODEC_NONE);
		len += (size_t)got;
		len += (size_t)uffdwp__encode_trailer(&enc, buf + len, cap - len);
		CHECK_EQ(enc.totals.page_count, 2 * n);

		uffdwp__decoder_init_buffer(&dec, buf, len);
		CHECK_EQ(uffdwp__decode_next(&dec, &rec), 1);
		CHECK(rec.type == UFFDWP__RECORD_PAGE && rec.npages == n && rec.addr == region.addr);
		CHECK(!memcmp(rec.data, text, n * ps));
		CHECK_EQ(uffdwp__decode_next(&dec, &rec), 1);
		CHECK(!memcmp(rec.data, noise, n * ps));
		CHECK_EQ(uffdwp__decode_next(&dec, &rec), 0);
		uffdwp__decoder_release(&dec);

		/* damage inside the compressed bytes, checksums fixed: decoding fails */
		if (codecs[k].id != UFFDWP__CODEC_NONE) {
			size_t at = UFFDWP__FORMAT_HEAD_SIZE + UFFDWP__FORMAT_BATCH_FIXED +
				    uffdwp__format_header_size(1);

			for (size_t i = 0; i < 16; i++)
				buf[at + i] ^= 0xa5;
			harness_fix_checksums(buf, len);
			CHECK_RET(fx_decode(buf, len, &dec), -EBADMSG);
			CHECK_EQ(dec.error_offset, uffdwp__format_header_size(1));
			if (!strstr(dec.error_msg, "compressed batch") && !strstr(dec.error_msg, "batch"))
				FAIL("%s", dec.error_msg);
		}
		uffdwp__codec_release(&c);
	}
	/* batches need version 2; bad codecs and levels are refused */
	{
		struct uffdwp__encoder enc;
		struct uffdwp__codec c;

		h.version = 1;
		CHECK_OK(uffdwp__codec_init(&c, UFFDWP__CODEC_LZ4, 0));
		CHECK_OK(uffdwp__encoder_init(&enc, &h));
		uffdwp__encode_header(&enc, buf, cap);
		CHECK_RET(uffdwp__encode_batch(&enc, region.addr, 1, text, &c, buf, cap), -EINVAL);
		CHECK_RET(uffdwp__codec_init(&c, 7, 0), -EINVAL);
		CHECK_RET(uffdwp__codec_init(&c, UFFDWP__CODEC_ZSTD, 99), -EINVAL);
		CHECK_RET(uffdwp__codec_init(&c, UFFDWP__CODEC_LZ4, 3), -EINVAL);
	}
	free(text);
	free(noise);
	free(buf);
}

/* A BATCH's fields out of range behind valid checksums. */
TEST(format_batch_absurd_fields, ON_NONE)
{
	const size_t ps = test_page();
	struct uffdwp_snapshot_region region = { 64 * ps, 4 * ps };
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = (uint32_t)ps, .snapshot_id = 9,
		.region_count = 1, .regions = &region,
	};
	size_t cap = uffdwp__format_batch_bound((uint32_t)ps, 2) + 4096, len, at;
	unsigned char *buf = malloc(cap), *copy = malloc(cap), *pages = calloc(2, ps);
	struct uffdwp__encoder enc;
	struct uffdwp__decoder dec;
	struct uffdwp__codec c;
	struct { size_t off; uint32_t v; } bad[] = {
		{ 0, 3 },                 /* codec */
		{ 4, 0 },                 /* no pages */
		{ 4, 3 },                 /* more pages than stored: does not decode */
		{ 4, 100000 },            /* over the batch limit */
	};

	CHECK(buf && copy && pages);
	memset(pages, 'a', 2 * ps);
	CHECK_OK(uffdwp__codec_init(&c, UFFDWP__CODEC_LZ4, 0));
	CHECK_OK(uffdwp__encoder_init(&enc, &h));
	len = (size_t)uffdwp__encode_header(&enc, buf, cap);
	at = len + UFFDWP__FORMAT_HEAD_SIZE;
	len += (size_t)uffdwp__encode_batch(&enc, region.addr + ps, 2, pages, &c, buf + len,
					    cap - len);
	len += (size_t)uffdwp__encode_trailer(&enc, buf + len, cap - len);
	CHECK_OK(fx_decode(buf, len, &dec));
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		uint32_t v = htole32(bad[k].v);

		memcpy(copy, buf, len);
		memcpy(copy + at + bad[k].off, &v, 4);
		harness_fix_checksums(copy, len);
		CHECK_RET(fx_decode(copy, len, &dec), -EBADMSG);
		CHECK_EQ(dec.error_offset, at - UFFDWP__FORMAT_HEAD_SIZE);
	}
	/* a run past the region's end */
	memcpy(copy, buf, len);
	harness_store64(copy + at - 8, region.addr + 3 * ps);
	harness_fix_checksums(copy, len);
	CHECK_RET(fx_decode(copy, len, &dec), -EBADMSG);
	CHECK(strstr(dec.error_msg, "outside"));
	/* a stored length past the end of the stream */
	memcpy(copy, buf, len);
	harness_store64(copy + at + 8, UINT64_MAX);
	CHECK(fx_decode(copy, len, &dec) < 0);
	uffdwp__codec_release(&c);
	free(buf);
	free(copy);
	free(pages);
}

/* The index: one entry per batch, zero run, or run of consecutive PAGE
 * records; sorted; read alone from the end of the stream; checked when the
 * stream is decoded front to back; damage is refused. */
TEST(format_index, ON_NONE)
{
	const size_t ps = test_page();
	struct uffdwp_snapshot_region regions[2] = { { 64 * ps, 8 * ps }, { 128 * ps, 8 * ps } };
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = (uint32_t)ps, .snapshot_id = 9,
		.region_count = 2, .regions = regions,
	};
	size_t cap = 64 * ps, len, index_at, trailer_at;
	unsigned char *buf = malloc(cap), *copy = malloc(cap), *page = malloc(4 * ps);
	struct uffdwp__index_entry *entries;
	struct uffdwp__encoder enc;
	struct uffdwp__decoder dec;
	struct uffdwp__codec c;
	uint64_t count;

	CHECK(buf && copy && page);
	memset(page, 'p', 4 * ps);
	CHECK_OK(uffdwp__codec_init(&c, UFFDWP__CODEC_LZ4, 0));
	CHECK_OK(uffdwp__encoder_init(&enc, &h));
	CHECK_OK(uffdwp__encoder_keep_index(&enc));
	len = (size_t)uffdwp__encode_header(&enc, buf, cap);
	/* second region first: the index is sorted anyway */
	len += (size_t)uffdwp__encode_batch(&enc, regions[1].addr, 4, page, &c, buf + len, cap - len);
	for (size_t i = 0; i < 3; i++)  /* three PAGE records: one entry */
		len += (size_t)uffdwp__encode_page(&enc, regions[0].addr + (2 + i) * ps, page,
						   buf + len, cap - len);
	len += (size_t)uffdwp__encode_zero(&enc, regions[0].addr, 2, buf + len, cap - len);
	len += (size_t)uffdwp__encode_page(&enc, regions[0].addr + 7 * ps, page, buf + len,
					   cap - len);
	index_at = len;
	CHECK_EQ(uffdwp__encoder_index_size(&enc), uffdwp__format_index_size(4));
	len += (size_t)uffdwp__encode_index(&enc, buf + len, cap - len);
	trailer_at = len;
	len += (size_t)uffdwp__encode_trailer(&enc, buf + len, cap - len);
	uffdwp__encoder_release(&enc);
	uffdwp__codec_release(&c);

	CHECK_OK(fx_decode(buf, len, &dec));
	CHECK_OK(uffdwp__decode_index(&h, buf + index_at, trailer_at - index_at, index_at,
				      &entries, &count));
	CHECK_EQ(count, 4);
	CHECK(entries[0].addr == regions[0].addr && entries[0].kind == UFFDWP__INDEX_ZERO &&
	      entries[0].npages == 2);
	CHECK(entries[1].addr == regions[0].addr + 2 * ps &&
	      entries[1].kind == UFFDWP__INDEX_PAGES && entries[1].npages == 3 &&
	      entries[1].bytes == 3 * uffdwp__format_page_record_size((uint32_t)ps));
	CHECK(entries[2].kind == UFFDWP__INDEX_PAGES && entries[2].npages == 1);
	CHECK(entries[3].addr == regions[1].addr && entries[3].kind == UFFDWP__INDEX_BATCH &&
	      entries[3].offset == uffdwp__format_header_size(2));
	/* a record found through the index decodes alone */
	{
		struct uffdwp__record rec;

		uffdwp__decoder_init_record(&dec, &h, buf + entries[3].offset, entries[3].bytes,
					    entries[3].offset);
		CHECK_EQ(uffdwp__decode_next(&dec, &rec), 1);
		CHECK(rec.npages == 4 && rec.offset == entries[3].offset && !memcmp(rec.data, page, ps));
		uffdwp__decoder_release(&dec);
	}
	free(entries);
	/* no index where the trailer follows a record */
	CHECK_RET(uffdwp__decode_index(&h, buf + index_at - 32, 32, index_at - 32, &entries,
				       &count), -ENODATA);
	/* damage in the index, checksums fixed: refused both ways */
	{
		static const struct { size_t at; uint64_t v; } bad[] = {
			{ 24 + 40 * 1, 0 },           /* entry 1's address: unsorted, overlaps */
			{ 24 + 40 * 0 + 32, 9 },      /* entry 0's kind */
			{ 24 + 40 * 3 + 16, 1 << 30 },/* entry 3's offset: past the index */
			{ 16, 5 },                    /* the leading count */
			{ 24 + 40 * 2 + 8, 2 },       /* entry 2's pages: not what the records say */
		};

		for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
			memcpy(copy, buf, len);
			if (bad[k].at % 8 == 0 && bad[k].at >= 24 && (bad[k].at - 24) % 40 == 32) {
				uint32_t v32 = htole32((uint32_t)bad[k].v);

				memcpy(copy + index_at + bad[k].at, &v32, 4);
			} else {
				harness_store64(copy + index_at + bad[k].at, bad[k].v);
			}
			harness_fix_checksums(copy, len);
			CHECK_RET(fx_decode(copy, len, &dec), -EBADMSG);
			CHECK_EQ(dec.error_offset, index_at);
			CHECK(uffdwp__decode_index(&h, copy + index_at, trailer_at - index_at, index_at,
						   &entries, &count) < 0);
		}
	}
	free(buf);
	free(copy);
	free(page);
}
