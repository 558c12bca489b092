/* SPDX-License-Identifier: MIT */
/*
 * The snapshot file format: encoder, decoder and checksum. Pure computation
 * on bytes (no system calls, no knowledge of memory), so the decoder can be
 * fuzzed on its own: see format.h for the contract and uffdwp-snapshot(5)
 * for the bytes.
 */
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "format.h"

/* Odd 64-bit constants (the golden ratio and the splitmix64 finalizer's). */
#define K1 UINT64_C(0x9e3779b97f4a7c15)
#define K2 UINT64_C(0xbf58476d1ce4e5b9)
#define K3 UINT64_C(0x94d049bb133111eb)

#define SUM_BLOCK 32  /* four lanes of one 8-byte word */

/* Header offsets (format.h has the sizes). */
#define HDR_MAGIC       0
#define HDR_VERSION     8
#define HDR_FLAGS       12
#define HDR_PAGE_SIZE   16
#define HDR_REGIONS_N   20
#define HDR_SNAPSHOT_ID 24
#define HDR_PARENT_ID   32
#define HDR_TIME_NS     40

/* Body sizes of the records. */
#define ZERO_BODY    8
#define TRAILER_BODY 32

/* Header bytes the decoder reads (and allocates) at a time. */
#define REGION_CHUNK (4096 * UFFDWP__FORMAT_REGION_SIZE)

static inline uint64_t load64(const void *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

static inline uint32_t load32(const void *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static inline void store64(void *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, sizeof(v));
}

static inline void store32(void *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, sizeof(v));
}

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

/*
 * One lane step. For a fixed word it is a bijection of the lane (rotate, xor,
 * multiply by an odd constant), and for a fixed lane a bijection of the word:
 * so a change confined to one word always changes the result.
 */
static inline uint64_t lane_step(uint64_t lane, uint64_t word)
{
	return (rotl64(lane, 23) ^ word) * K1;
}

static inline void sum_block(uint64_t lane[4], const unsigned char *p)
{
	lane[0] = lane_step(lane[0], load64(p));
	lane[1] = lane_step(lane[1], load64(p + 8));
	lane[2] = lane_step(lane[2], load64(p + 16));
	lane[3] = lane_step(lane[3], load64(p + 24));
}

uint64_t uffdwp__sum64(const void *data, size_t len, uint64_t seed)
{
	const unsigned char *p = data;
	uint64_t lane[4] = { seed ^ K1, seed ^ K2, seed ^ K3, ~seed };
	size_t tail = len % SUM_BLOCK;
	uint64_t h;

	for (const unsigned char *end = p + (len - tail); p < end; p += SUM_BLOCK)
		sum_block(lane, p);
	if (tail) {
		unsigned char last[SUM_BLOCK] = { 0 };

		memcpy(last, p, tail);
		sum_block(lane, last);
	}
	/* The length tells a zero-padded tail from real zero bytes. */
	h = (uint64_t)len * K3;
	for (int i = 0; i < 4; i++)
		h = rotl64((h ^ lane[i]) * K2, 31);
	h ^= h >> 30;
	h *= K2;
	h ^= h >> 27;
	h *= K3;
	h ^= h >> 31;
	return h;
}

/* ---- shared checks -------------------------------------------------------- */

static bool page_size_ok(uint32_t page_size)
{
	return page_size >= UFFDWP__FORMAT_MIN_PAGE_SIZE &&
	       page_size <= UFFDWP__FORMAT_MAX_PAGE_SIZE &&
	       (page_size & (page_size - 1)) == 0;
}

/* NULL when region i is well-formed and after region i-1, else why not. */
static const char *region_problem(const struct uffdwp_snapshot_region *regions, uint32_t i,
				  uint32_t page_size)
{
	const struct uffdwp_snapshot_region *r = &regions[i];

	if (r->len == 0)
		return "is empty";
	if (r->addr % page_size || r->len % page_size)
		return "is not page-aligned";
	if (r->len > UINT64_MAX - r->addr)
		return "wraps around the address space";
	if (i > 0 && r->addr < regions[i - 1].addr + regions[i - 1].len)
		return "overlaps or precedes the region before it";
	return NULL;
}

/* The region holding addr, or NULL (regions sorted, non-overlapping). */
static const struct uffdwp_snapshot_region *find_region(const struct uffdwp__format_header *h,
							uint64_t addr)
{
	uint32_t lo = 0, hi = h->region_count;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct uffdwp_snapshot_region *r = &h->regions[mid];

		if (addr < r->addr)
			hi = mid;
		else if (addr - r->addr >= r->len)
			lo = mid + 1;
		else
			return r;
	}
	return NULL;
}

/* True if npages pages from addr are page-aligned and inside one region. */
static bool run_inside(const struct uffdwp__format_header *h, uint64_t addr, uint64_t npages)
{
	const struct uffdwp_snapshot_region *r;

	if (addr % h->page_size || npages == 0)
		return false;
	r = find_region(h, addr);
	return r && npages <= (r->addr + r->len - addr) / h->page_size;
}

bool uffdwp__format_totals_fit(const struct uffdwp__format_header *h,
			       const struct uffdwp__format_totals *t)
{
	uint64_t pages = 0, named;

	/* Regions are sorted and disjoint inside 2^64 bytes: no overflow. */
	for (uint32_t i = 0; i < h->region_count; i++)
		pages += h->regions[i].len / h->page_size;
	return t->page_count <= t->record_count &&
	       !__builtin_add_overflow(t->page_count, t->zero_count, &named) && named <= pages;
}

bool uffdwp__format_is_zero(const void *data, size_t len)
{
	const unsigned char *p = data;

	return len == 0 || (p[0] == 0 && !memcmp(p, p + 1, len - 1));
}

static void put_head(unsigned char *head, uint32_t tag, uint64_t addr)
{
	store32(head, tag);
	store32(head + 4, 0);  /* record flags: none defined */
	store64(head + 8, addr);
}

/* A record's checksum: its body, seeded with its head and the snapshot id. */
static uint64_t record_sum(uint64_t snapshot_id, const unsigned char *head, const void *body,
			   size_t body_len)
{
	return uffdwp__sum64(body, body_len,
			     uffdwp__sum64(head, UFFDWP__FORMAT_HEAD_SIZE, snapshot_id));
}

/* Chain one more record checksum into the stream checksum. */
static uint64_t chain(uint64_t snapshot_id, uint64_t stream_sum, uint64_t sum)
{
	unsigned char pair[16];

	store64(pair, stream_sum);
	store64(pair + 8, sum);
	return uffdwp__sum64(pair, sizeof(pair), snapshot_id);
}

/* ---- encoder -------------------------------------------------------------- */

int uffdwp__encoder_init(struct uffdwp__encoder *enc, const struct uffdwp__format_header *h)
{
	if (!enc || !h || h->version != UFFDWP__FORMAT_VERSION || !page_size_ok(h->page_size) ||
	    h->snapshot_id == 0 || h->parent_id == h->snapshot_id ||
	    h->region_count == 0 || h->region_count > UFFDWP__FORMAT_MAX_REGIONS || !h->regions)
		return -EINVAL;
	for (uint32_t i = 0; i < h->region_count; i++)
		if (region_problem(h->regions, i, h->page_size))
			return -EINVAL;
	memset(enc, 0, sizeof(*enc));
	enc->header = *h;
	enc->state = UFFDWP__ENC_HEADER;
	return 0;
}

ssize_t uffdwp__encode_header(struct uffdwp__encoder *enc, void *buf, size_t cap)
{
	const struct uffdwp__format_header *h = &enc->header;
	size_t size = uffdwp__format_header_size(h->region_count);
	size_t summed = size - UFFDWP__FORMAT_SUM_SIZE;
	unsigned char *p = buf;

	if (enc->state != UFFDWP__ENC_HEADER)
		return -EINVAL;
	if (cap < size)
		return -ENOSPC;
	memcpy(p + HDR_MAGIC, UFFDWP__FORMAT_MAGIC, UFFDWP__FORMAT_MAGIC_LEN);
	store32(p + HDR_VERSION, h->version);
	store32(p + HDR_FLAGS, 0);
	store32(p + HDR_PAGE_SIZE, h->page_size);
	store32(p + HDR_REGIONS_N, h->region_count);
	store64(p + HDR_SNAPSHOT_ID, h->snapshot_id);
	store64(p + HDR_PARENT_ID, h->parent_id);
	store64(p + HDR_TIME_NS, h->time_ns);
	for (uint32_t i = 0; i < h->region_count; i++) {
		unsigned char *r = p + UFFDWP__FORMAT_HEADER_FIXED + (size_t)i * UFFDWP__FORMAT_REGION_SIZE;

		store64(r, h->regions[i].addr);
		store64(r + 8, h->regions[i].len);
	}
	enc->totals.stream_sum = uffdwp__sum64(p, summed, 0);
	store64(p + summed, enc->totals.stream_sum);
	enc->offset += size;
	enc->state = UFFDWP__ENC_RECORDS;
	return (ssize_t)size;
}

uint64_t uffdwp__format_page_sum(const struct uffdwp__encoder *enc, uint64_t addr,
				 const void *page)
{
	unsigned char head[UFFDWP__FORMAT_HEAD_SIZE];

	put_head(head, UFFDWP__FORMAT_TAG_PAGE, addr);
	return record_sum(enc->header.snapshot_id, head, page, enc->header.page_size);
}

int uffdwp__encode_page_frame_summed(struct uffdwp__encoder *enc, uint64_t addr, uint64_t sum,
				     void *head, void *tail)
{
	struct uffdwp__format_totals *t = &enc->totals;

	if (enc->state != UFFDWP__ENC_RECORDS || !run_inside(&enc->header, addr, 1))
		return -EINVAL;
	put_head(head, UFFDWP__FORMAT_TAG_PAGE, addr);
	store64(tail, sum);
	t->record_count++;
	t->page_count++;
	t->stream_sum = chain(enc->header.snapshot_id, t->stream_sum, sum);
	enc->offset += uffdwp__format_page_record_size(enc->header.page_size);
	return 0;
}

int uffdwp__encode_page_frame(struct uffdwp__encoder *enc, uint64_t addr, const void *page,
			      void *head, void *tail)
{
	/* Checked before the checksum is spent on a page that will be refused. */
	if (enc->state != UFFDWP__ENC_RECORDS || !run_inside(&enc->header, addr, 1))
		return -EINVAL;
	return uffdwp__encode_page_frame_summed(enc, addr, uffdwp__format_page_sum(enc, addr, page),
						head, tail);
}

ssize_t uffdwp__encode_page(struct uffdwp__encoder *enc, uint64_t addr, const void *page,
			    void *buf, size_t cap)
{
	size_t size = uffdwp__format_page_record_size(enc->header.page_size);
	unsigned char *p = buf;
	int ret;

	if (cap < size)
		return -ENOSPC;
	ret = uffdwp__encode_page_frame(enc, addr, page, p,
					p + UFFDWP__FORMAT_HEAD_SIZE + enc->header.page_size);
	if (ret < 0)
		return ret;
	memcpy(p + UFFDWP__FORMAT_HEAD_SIZE, page, enc->header.page_size);
	return (ssize_t)size;
}

ssize_t uffdwp__encode_zero(struct uffdwp__encoder *enc, uint64_t addr, uint64_t npages,
			    void *buf, size_t cap)
{
	struct uffdwp__format_totals *t = &enc->totals;
	unsigned char *p = buf;
	uint64_t sum;

	if (enc->state != UFFDWP__ENC_RECORDS || !run_inside(&enc->header, addr, npages))
		return -EINVAL;
	if (cap < UFFDWP__FORMAT_ZERO_SIZE)
		return -ENOSPC;
	put_head(p, UFFDWP__FORMAT_TAG_ZERO, addr);
	store64(p + UFFDWP__FORMAT_HEAD_SIZE, npages);
	sum = record_sum(enc->header.snapshot_id, p, p + UFFDWP__FORMAT_HEAD_SIZE, ZERO_BODY);
	store64(p + UFFDWP__FORMAT_HEAD_SIZE + ZERO_BODY, sum);
	t->record_count++;
	t->zero_count += npages;
	t->stream_sum = chain(enc->header.snapshot_id, t->stream_sum, sum);
	enc->offset += UFFDWP__FORMAT_ZERO_SIZE;
	return UFFDWP__FORMAT_ZERO_SIZE;
}

ssize_t uffdwp__encode_trailer(struct uffdwp__encoder *enc, void *buf, size_t cap)
{
	const struct uffdwp__format_totals *t = &enc->totals;
	unsigned char *p = buf, *body = p + UFFDWP__FORMAT_HEAD_SIZE;

	if (enc->state != UFFDWP__ENC_RECORDS)
		return -EINVAL;
	if (cap < UFFDWP__FORMAT_TRAILER_SIZE)
		return -ENOSPC;
	put_head(p, UFFDWP__FORMAT_TAG_TRAILER, 0);
	store64(body, t->record_count);
	store64(body + 8, t->page_count);
	store64(body + 16, t->zero_count);
	store64(body + 24, t->stream_sum);
	store64(body + TRAILER_BODY,
		record_sum(enc->header.snapshot_id, p, body, TRAILER_BODY));
	enc->offset += UFFDWP__FORMAT_TRAILER_SIZE;
	enc->state = UFFDWP__ENC_DONE;
	return UFFDWP__FORMAT_TRAILER_SIZE;
}

/* ---- decoder -------------------------------------------------------------- */

static void decoder_init(struct uffdwp__decoder *dec)
{
	memset(dec, 0, sizeof(*dec));
	dec->state = UFFDWP__DEC_HEADER;
}

void uffdwp__decoder_init_buffer(struct uffdwp__decoder *dec, const void *buf, size_t len)
{
	decoder_init(dec);
	dec->buf = buf;
	dec->len = len;
}

void uffdwp__decoder_init_reader(struct uffdwp__decoder *dec, uffdwp__read_fn fn, void *arg)
{
	decoder_init(dec);
	dec->read = fn;
	dec->read_arg = arg;
}

void uffdwp__decoder_release(struct uffdwp__decoder *dec)
{
	free(dec->owned_regions);
	free(dec->page);
	dec->owned_regions = NULL;
	dec->header.regions = NULL;
	dec->page = NULL;
}

/* Record the first error (with its offset and a sentence) and return it. */
__attribute__((format(printf, 4, 5)))
static int fail(struct uffdwp__decoder *dec, int err, uint64_t offset, const char *fmt, ...)
{
	va_list ap;

	if (dec->error)
		return dec->error;
	dec->error = err;
	dec->error_offset = offset;
	va_start(ap, fmt);
	vsnprintf(dec->error_msg, sizeof(dec->error_msg), fmt, ap);
	va_end(ap);
	return err;
}

/*
 * Read up to n bytes: returns how many were read (fewer only at the end of
 * the stream), or the read function's negative errno.
 */
static ssize_t read_some(struct uffdwp__decoder *dec, void *dst, size_t n)
{
	size_t got = 0;

	if (dec->buf) {
		size_t left = dec->len - (size_t)dec->offset;

		got = n < left ? n : left;
		memcpy(dst, dec->buf + dec->offset, got);
		dec->offset += got;
		return (ssize_t)got;
	}
	while (got < n) {
		ssize_t r = dec->read(dec->read_arg, (unsigned char *)dst + got, n - got);

		if (r == -EINTR)
			continue;
		if (r < 0)
			return r;
		if (r == 0)
			break;
		if ((size_t)r > n - got)
			return -EIO;  /* a read function that overran its buffer */
		got += (size_t)r;
		dec->offset += (uint64_t)r;
	}
	return (ssize_t)got;
}

/* The stream ended inside the item (header, record) that began at start. */
static int truncated(struct uffdwp__decoder *dec, uint64_t start, const char *what)
{
	return fail(dec, -ENODATA, start, "truncated: the stream ends %llu bytes into %s",
		    (unsigned long long)(dec->offset - start), what);
}

/* Read exactly n bytes of the item that began at start, described by what. */
static int read_exact(struct uffdwp__decoder *dec, void *dst, size_t n, uint64_t start,
		      const char *what)
{
	ssize_t got = read_some(dec, dst, n);

	if (got < 0)
		return fail(dec, (int)got, dec->offset, "read error: %s", strerror((int)-got));
	if ((size_t)got < n)
		return truncated(dec, start, what);
	return 0;
}

/* The bytes of the current record's page: in place for a buffer source. */
static int read_page(struct uffdwp__decoder *dec, const void **data, uint64_t start)
{
	size_t n = dec->header.page_size;

	if (dec->buf) {
		if (dec->len - dec->offset < n) {
			dec->offset = dec->len;
			return truncated(dec, start, "a page record");
		}
		*data = dec->buf + dec->offset;
		dec->offset += n;
		return 0;
	}
	*data = dec->page;
	return read_exact(dec, dec->page, n, start, "a page record");
}

/* Read the regions and the checksum; raw holds the fixed part on entry. */
static int decode_regions(struct uffdwp__decoder *dec, unsigned char **raw)
{
	struct uffdwp__format_header *h = &dec->header;
	size_t summed = uffdwp__format_header_size(h->region_count) - UFFDWP__FORMAT_SUM_SIZE;
	size_t have = UFFDWP__FORMAT_HEADER_FIXED;
	unsigned char sum[UFFDWP__FORMAT_SUM_SIZE];
	struct uffdwp_snapshot_region *regions;
	int ret;

	/* Grown a chunk at a time, so a lying region count costs at most one
	 * chunk more than the bytes actually present. */
	while (have < summed) {
		size_t chunk = summed - have < REGION_CHUNK ? summed - have : REGION_CHUNK;
		unsigned char *grown = realloc(*raw, have + chunk);

		if (!grown)
			return fail(dec, -ENOMEM, dec->offset, "out of memory for the header");
		*raw = grown;
		ret = read_exact(dec, *raw + have, chunk, 0, "the header");
		if (ret < 0)
			return ret;
		have += chunk;
	}
	ret = read_exact(dec, sum, sizeof(sum), 0, "the header");
	if (ret < 0)
		return ret;
	if (load64(sum) != uffdwp__sum64(*raw, summed, 0))
		return fail(dec, -EBADMSG, 0, "header checksum mismatch");

	regions = malloc((size_t)h->region_count * sizeof(*regions));
	if (!regions)
		return fail(dec, -ENOMEM, 0, "out of memory for %u regions", h->region_count);
	dec->owned_regions = regions;
	h->regions = regions;
	for (uint32_t i = 0; i < h->region_count; i++) {
		size_t at = UFFDWP__FORMAT_HEADER_FIXED + (size_t)i * UFFDWP__FORMAT_REGION_SIZE;
		const char *problem;

		regions[i].addr = load64(*raw + at);
		regions[i].len = load64(*raw + at + 8);
		problem = region_problem(regions, i, h->page_size);
		if (problem)
			return fail(dec, -EBADMSG, at, "region %u (0x%llx, %llu bytes) %s", i,
				    (unsigned long long)regions[i].addr,
				    (unsigned long long)regions[i].len, problem);
	}
	dec->totals.stream_sum = load64(sum);
	return 0;
}

int uffdwp__decode_header(struct uffdwp__decoder *dec)
{
	struct uffdwp__format_header *h = &dec->header;
	unsigned char *raw;
	uint32_t flags;
	int ret;

	if (dec->error)
		return dec->error;
	if (dec->state != UFFDWP__DEC_HEADER)
		return 0;
	raw = malloc(UFFDWP__FORMAT_HEADER_FIXED);
	if (!raw)
		return fail(dec, -ENOMEM, 0, "out of memory for the header");
	ret = read_exact(dec, raw, UFFDWP__FORMAT_HEADER_FIXED, 0, "the header");
	if (ret < 0)
		goto out;
	ret = -EBADMSG;
	if (memcmp(raw + HDR_MAGIC, UFFDWP__FORMAT_MAGIC, UFFDWP__FORMAT_MAGIC_LEN)) {
		fail(dec, ret, HDR_MAGIC, "not a uffdwp snapshot (bad magic)");
		goto out;
	}
	h->version = load32(raw + HDR_VERSION);
	flags = load32(raw + HDR_FLAGS);
	h->page_size = load32(raw + HDR_PAGE_SIZE);
	h->region_count = load32(raw + HDR_REGIONS_N);
	h->snapshot_id = load64(raw + HDR_SNAPSHOT_ID);
	h->parent_id = load64(raw + HDR_PARENT_ID);
	h->time_ns = load64(raw + HDR_TIME_NS);
	/* A newer version may lay out the rest differently: say so rather than
	 * call it corrupt. */
	if (h->version != UFFDWP__FORMAT_VERSION) {
		ret = fail(dec, -ENOTSUP, HDR_VERSION,
			   "format version %u is not supported (this reader knows version %u)",
			   h->version, UFFDWP__FORMAT_VERSION);
		goto out;
	}
	if (flags) {
		ret = fail(dec, -ENOTSUP, HDR_FLAGS, "header flags 0x%x are unknown to this reader",
			   flags);
		goto out;
	}
	if (!page_size_ok(h->page_size)) {
		fail(dec, ret, HDR_PAGE_SIZE, "bad page size %u", h->page_size);
		goto out;
	}
	if (h->region_count == 0 || h->region_count > UFFDWP__FORMAT_MAX_REGIONS) {
		fail(dec, ret, HDR_REGIONS_N, "bad region count %u (limit %u)", h->region_count,
		     UFFDWP__FORMAT_MAX_REGIONS);
		goto out;
	}
	if (h->snapshot_id == 0 || h->parent_id == h->snapshot_id) {
		fail(dec, ret, HDR_SNAPSHOT_ID, "bad snapshot id 0x%llx (parent 0x%llx)",
		     (unsigned long long)h->snapshot_id, (unsigned long long)h->parent_id);
		goto out;
	}
	ret = decode_regions(dec, &raw);
	if (ret < 0)
		goto out;
	if (!dec->buf) {
		dec->page = malloc(h->page_size);
		if (!dec->page) {
			ret = fail(dec, -ENOMEM, dec->offset, "out of memory for a page");
			goto out;
		}
	}
	dec->state = UFFDWP__DEC_RECORDS;
out:
	free(raw);
	return ret;
}

/* Check the trailer read at start against what the stream held. */
static int check_trailer(struct uffdwp__decoder *dec, const struct uffdwp__format_totals *t,
			 uint64_t start)
{
	const struct uffdwp__format_totals *seen = &dec->totals;
	unsigned char extra;
	ssize_t got;

	if (!uffdwp__format_totals_fit(&dec->header, t))
		return fail(dec, -EBADMSG, start,
			    "the trailer counts %llu records, %llu pages and %llu zero pages: "
			    "more than the regions hold", (unsigned long long)t->record_count,
			    (unsigned long long)t->page_count, (unsigned long long)t->zero_count);
	if (t->record_count != seen->record_count || t->page_count != seen->page_count ||
	    t->zero_count != seen->zero_count)
		return fail(dec, -EBADMSG, start,
			    "the trailer counts %llu records (%llu pages, %llu zero pages), "
			    "the stream holds %llu (%llu, %llu)",
			    (unsigned long long)t->record_count, (unsigned long long)t->page_count,
			    (unsigned long long)t->zero_count,
			    (unsigned long long)seen->record_count,
			    (unsigned long long)seen->page_count,
			    (unsigned long long)seen->zero_count);
	if (t->stream_sum != seen->stream_sum)
		return fail(dec, -EBADMSG, start,
			    "stream checksum mismatch: records were lost, repeated or reordered");
	got = read_some(dec, &extra, 1);
	if (got < 0)
		return fail(dec, (int)got, dec->offset, "read error: %s", strerror((int)-got));
	if (got > 0)
		return fail(dec, -EBADMSG, start + UFFDWP__FORMAT_TRAILER_SIZE,
			    "data follows the trailer");
	return 0;
}

int uffdwp__decode_next(struct uffdwp__decoder *dec, struct uffdwp__record *rec)
{
	const struct uffdwp__format_header *h = &dec->header;
	unsigned char head[UFFDWP__FORMAT_HEAD_SIZE], body[TRAILER_BODY], sum[UFFDWP__FORMAT_SUM_SIZE];
	struct uffdwp__format_totals *seen = &dec->totals;
	uint64_t start, addr, record;
	const void *data = body;
	size_t body_len;
	uint32_t tag, flags;
	ssize_t got;
	int ret;

	ret = uffdwp__decode_header(dec);
	if (ret < 0)
		return ret;
	if (dec->state == UFFDWP__DEC_DONE)
		return 0;

	start = dec->offset;
	got = read_some(dec, head, sizeof(head));
	if (got == 0)
		return fail(dec, -ENODATA, start,
			    "truncated: the stream ends after %llu records, without a trailer",
			    (unsigned long long)seen->record_count);
	if (got > 0 && (size_t)got < sizeof(head))
		return fail(dec, -ENODATA, start,
			    "truncated: the stream ends %zd bytes into a record", got);
	if (got < 0)
		return fail(dec, (int)got, start, "read error: %s", strerror((int)-got));
	tag = load32(head);
	flags = load32(head + 4);
	addr = load64(head + 8);

	switch (tag) {
	case UFFDWP__FORMAT_TAG_PAGE:
		ret = read_page(dec, &data, start);
		body_len = h->page_size;
		break;
	case UFFDWP__FORMAT_TAG_ZERO:
		body_len = ZERO_BODY;
		ret = read_exact(dec, body, body_len, start, "a zero record");
		break;
	case UFFDWP__FORMAT_TAG_TRAILER:
		body_len = TRAILER_BODY;
		ret = read_exact(dec, body, body_len, start, "the trailer");
		break;
	default:
		return fail(dec, -EBADMSG, start, "unknown record tag 0x%08x", tag);
	}
	if (ret < 0)
		return ret;
	ret = read_exact(dec, sum, sizeof(sum), start, "a record's checksum");
	if (ret < 0)
		return ret;
	record = record_sum(h->snapshot_id, head, data, body_len);
	if (load64(sum) != record)
		return fail(dec, -EBADMSG, start, "record checksum mismatch");
	if (flags)
		return fail(dec, -EBADMSG, start, "record flags 0x%x are unknown", flags);

	if (tag == UFFDWP__FORMAT_TAG_TRAILER) {
		struct uffdwp__format_totals t = {
			.record_count = load64(body),
			.page_count = load64(body + 8),
			.zero_count = load64(body + 16),
			.stream_sum = load64(body + 24),
		};

		if (addr)
			return fail(dec, -EBADMSG, start, "trailer address field is not 0");
		ret = check_trailer(dec, &t, start);
		if (ret < 0)
			return ret;
		dec->totals = t;
		dec->state = UFFDWP__DEC_DONE;
		return 0;
	}

	rec->type = tag == UFFDWP__FORMAT_TAG_PAGE ? UFFDWP__RECORD_PAGE : UFFDWP__RECORD_ZERO;
	rec->offset = start;
	rec->addr = addr;
	rec->npages = tag == UFFDWP__FORMAT_TAG_PAGE ? 1 : load64(body);
	rec->data = tag == UFFDWP__FORMAT_TAG_PAGE ? data : NULL;
	if (!run_inside(h, addr, rec->npages))
		return fail(dec, -EBADMSG, start,
			    "%s record for 0x%llx (%llu pages) is unaligned or outside the regions",
			    tag == UFFDWP__FORMAT_TAG_PAGE ? "page" : "zero",
			    (unsigned long long)addr, (unsigned long long)rec->npages);
	/* Only a stream naming pages over and over could wrap the count. */
	if (seen->zero_count + rec->npages < seen->zero_count)
		return fail(dec, -EBADMSG, start, "the zero page count overflows");
	seen->record_count++;
	if (rec->type == UFFDWP__RECORD_PAGE)
		seen->page_count++;
	else
		seen->zero_count += rec->npages;
	seen->stream_sum = chain(h->snapshot_id, seen->stream_sum, record);
	return 1;
}

int uffdwp__decode_trailer(const struct uffdwp__format_header *h, const void *buf,
			   struct uffdwp__format_totals *t)
{
	const unsigned char *p = buf, *body = p + UFFDWP__FORMAT_HEAD_SIZE;

	if (load32(p) != UFFDWP__FORMAT_TAG_TRAILER)
		return -ENODATA;
	if (load32(p + 4) || load64(p + 8) ||
	    load64(body + TRAILER_BODY) != record_sum(h->snapshot_id, p, body, TRAILER_BODY))
		return -EBADMSG;
	t->record_count = load64(body);
	t->page_count = load64(body + 8);
	t->zero_count = load64(body + 16);
	t->stream_sum = load64(body + 24);
	return 0;
}
