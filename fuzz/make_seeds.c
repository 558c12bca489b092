/* SPDX-License-Identifier: MIT */
/*
 * Writes the fuzzer's seed corpus into the directory argv[1]: small streams
 * (page size 512, the format's minimum, to keep them small) of the current
 * format version, sound ones named good-v2-* and a few damaged ones. Built
 * and run by `make fuzz-seeds`. The version 1 files of fuzz/corpus (good-full,
 * good-incremental, ...) were written by the version 1 encoder and are kept
 * as they are: they are the old files a reader must still accept.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "format.h"

#define PAGE 512u
#define CAP  (64 * 1024)

struct seed {
	unsigned char buf[CAP];
	size_t len;
	struct uffdwp__encoder enc;
};

static void check(ssize_t ret, const char *what)
{
	if (ret < 0) {
		fprintf(stderr, "make_seeds: %s: %s\n", what, strerror((int)-ret));
		exit(1);
	}
}

static void begin(struct seed *s, uint64_t id, uint64_t parent,
		  const struct uffdwp_snapshot_region *regions, uint32_t n)
{
	struct uffdwp__format_header h = {
		.version = UFFDWP__FORMAT_VERSION, .page_size = PAGE, .snapshot_id = id,
		.parent_id = parent, .time_ns = 1700000000000000000ull, .region_count = n,
		.regions = regions,
	};
	ssize_t got;

	check(uffdwp__encoder_init(&s->enc, &h), "header");
	got = uffdwp__encode_header(&s->enc, s->buf, CAP);
	check(got, "header");
	s->len = (size_t)got;
}

static void page(struct seed *s, uint64_t addr, unsigned char fill)
{
	unsigned char contents[PAGE];
	ssize_t got;

	for (size_t i = 0; i < PAGE; i++)
		contents[i] = (unsigned char)(fill + i);
	got = uffdwp__encode_page(&s->enc, addr, contents, s->buf + s->len, CAP - s->len);
	check(got, "page");
	s->len += (size_t)got;
}

static void zero(struct seed *s, uint64_t addr, uint64_t npages)
{
	ssize_t got = uffdwp__encode_zero(&s->enc, addr, npages, s->buf + s->len, CAP - s->len);

	check(got, "zero");
	s->len += (size_t)got;
}

/* A BATCH of n pages from addr, compressed with codec (raw if it does not
 * shrink); noise: contents that do not compress. */
static void batch(struct seed *s, uint64_t addr, uint32_t n, enum uffdwp__codec_id codec,
		  bool noise)
{
	unsigned char contents[8 * PAGE];
	struct uffdwp__codec c;
	uint32_t x = 2463534242u;
	ssize_t got;

	for (size_t i = 0; i < n * PAGE; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		contents[i] = noise ? (unsigned char)x : (unsigned char)"snapshot "[i % 9];
	}
	check(uffdwp__codec_init(&c, codec, 0), "codec");
	got = uffdwp__encode_batch(&s->enc, addr, n, contents, &c, s->buf + s->len, CAP - s->len);
	check(got, "batch");
	s->len += (size_t)got;
	uffdwp__codec_release(&c);
}

static void end(struct seed *s)
{
	ssize_t got = uffdwp__encode_trailer(&s->enc, s->buf + s->len, CAP - s->len);

	check(got, "trailer");
	s->len += (size_t)got;
}

static void save(const char *dir, const char *name, const void *buf, size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
		fprintf(stderr, "make_seeds: %s: %s\n", path, strerror(errno));
		exit(1);
	}
}

int main(int argc, char **argv)
{
	static const struct uffdwp_snapshot_region two[] = {
		{ 0x10000, 4 * PAGE }, { 0x40000, 8 * PAGE },
	};
	static struct uffdwp_snapshot_region many[40];
	static struct seed s;
	unsigned char copy[CAP];

	if (argc != 2) {
		fprintf(stderr, "usage: make_seeds DIR\n");
		return 2;
	}
	begin(&s, 0x1111, 0, two, 2);
	page(&s, 0x40000 + 3 * PAGE, 1);
	zero(&s, 0x10000, 2);
	page(&s, 0x10000 + 3 * PAGE, 2);
	zero(&s, 0x40000 + 4 * PAGE, 4);
	end(&s);
	save(argv[1], "good-v2-full", s.buf, s.len);

	/* damaged copies of it */
	memcpy(copy, s.buf, s.len);
	save(argv[1], "v2-cut-mid-page", copy, s.len / 2);
	copy[100] ^= 4;
	save(argv[1], "v2-flip-in-record", copy, s.len);
	memcpy(copy, s.buf, s.len);
	copy[8] = 9;
	save(argv[1], "v2-version-9", copy, s.len);

	begin(&s, 0x2222, 0x1111, two, 2);
	zero(&s, 0x40000 + 3 * PAGE, 1);
	page(&s, 0x10000, 3);
	end(&s);
	save(argv[1], "good-v2-incremental", s.buf, s.len);

	begin(&s, 0x3333, 0, two, 2);
	end(&s);
	save(argv[1], "good-v2-empty", s.buf, s.len);
	save(argv[1], "v2-cut-header", s.buf, 30);

	for (size_t i = 0; i < sizeof(many) / sizeof(many[0]); i++)
		many[i] = (struct uffdwp_snapshot_region){ 0x100000 + i * 4 * PAGE, 2 * PAGE };
	begin(&s, 0x4444, 0x3333, many, sizeof(many) / sizeof(many[0]));
	page(&s, many[39].addr + PAGE, 4);
	zero(&s, many[0].addr, 2);
	zero(&s, many[17].addr + PAGE, 1);
	end(&s);
	save(argv[1], "good-v2-many-regions", s.buf, s.len);
	s.buf[s.len] = 0;
	save(argv[1], "v2-data-after-trailer", s.buf, s.len + 1);

	/* batches of each codec, one stored raw, and a damaged compressed one */
	begin(&s, 0x5555, 0, two, 2);
	batch(&s, 0x40000, 4, UFFDWP__CODEC_LZ4, false);
	batch(&s, 0x10000, 2, UFFDWP__CODEC_ZSTD, false);
	batch(&s, 0x40000 + 4 * PAGE, 3, UFFDWP__CODEC_LZ4, true);
	batch(&s, 0x10000 + 2 * PAGE, 1, UFFDWP__CODEC_NONE, false);
	zero(&s, 0x40000 + 7 * PAGE, 1);
	end(&s);
	save(argv[1], "good-v2-batches", s.buf, s.len);
	memcpy(copy, s.buf, s.len);
	copy[uffdwp__format_header_size(2) + UFFDWP__FORMAT_HEAD_SIZE +
	     UFFDWP__FORMAT_BATCH_FIXED + 5] ^= 0x40;
	save(argv[1], "v2-flip-in-lz4-batch", copy, s.len);

	/* with an index before the trailer, as the saver writes it */
	begin(&s, 0x6666, 0, two, 2);
	check(uffdwp__encoder_keep_index(&s.enc), "index");
	page(&s, 0x10000, 5);
	page(&s, 0x10000 + PAGE, 6);
	batch(&s, 0x40000, 3, UFFDWP__CODEC_ZSTD, false);
	zero(&s, 0x40000 + 5 * PAGE, 3);
	check(uffdwp__encode_index(&s.enc, s.buf + s.len, CAP - s.len), "index");
	s.len += uffdwp__encoder_index_size(&s.enc);
	uffdwp__encoder_release(&s.enc);
	end(&s);
	save(argv[1], "good-v2-indexed", s.buf, s.len);
	return 0;
}
