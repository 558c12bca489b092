/* SPDX-License-Identifier: MIT */
/*
 * The snapshot file format: encoder, decoder and checksum. Pure computation
 * on bytes (no system calls, no knowledge of memory), so the decoder can be
 * fuzzed on its own: see format.h for the contract and uffdwp-snapshot(5)
 * for the bytes.
 *
 * The encoder runs in a live snapshot's saver while the program's memory
 * is protected, maybe its whole heap: what it allocates (the index, the
 * batcher's buffers, the zstd context) comes from the library's private
 * memory (backend.h), never from malloc(3). The decoder runs in restore
 * and verify, on no protected memory, and uses malloc(3).
 */
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lz4.h>
#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY  /* ZSTD_createCCtx_advanced(), in libzstd since 1.3 */
#include <zstd.h>
#include "backend.h"  /* the private allocator */
#include "format.h"

/* On x86-64, libxxhash picks the widest vector unit (SSE2, AVX2, AVX-512)
 * at run time; the result is the same XXH3 everywhere. */
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#define XXH3_SEEDED XXH3_64bits_withSeed_dispatch
#else
#define XXH3_SEEDED XXH3_64bits_withSeed
#endif

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
	/* Version 1 stores one page per record; a version 2 BATCH many. */
	return (h->version >= 2 || t->page_count <= t->record_count) &&
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

uint64_t uffdwp__format_sum(uint32_t version, const void *data, size_t len, uint64_t seed)
{
	return version == 1 ? uffdwp__sum64(data, len, seed) : XXH3_SEEDED(data, len, seed);
}

/* A record's checksum: its body, seeded with its head and the snapshot id. */
static uint64_t record_sum(const struct uffdwp__format_header *h, const unsigned char *head,
			   const void *body, size_t body_len)
{
	uint64_t seed = uffdwp__format_sum(h->version, head, UFFDWP__FORMAT_HEAD_SIZE,
					   h->snapshot_id);

	return uffdwp__format_sum(h->version, body, body_len, seed);
}

/* Chain one more record checksum into the stream checksum. */
static uint64_t chain(const struct uffdwp__format_header *h, uint64_t stream_sum, uint64_t sum)
{
	unsigned char pair[16];

	store64(pair, stream_sum);
	store64(pair + 8, sum);
	return uffdwp__format_sum(h->version, pair, sizeof(pair), h->snapshot_id);
}

/* ---- encoder -------------------------------------------------------------- */

/*
 * The rule that turns records into index entries, for the encoder that
 * writes the index and the decoder that checks it: a PAGE record right
 * after the last entry's run of PAGE records, for the next page, extends
 * it (true: *last extended); anything else starts an entry.
 */
static bool index_extend(struct uffdwp__index_entry *last, enum uffdwp__index_kind kind,
			 uint64_t addr, uint64_t offset, uint64_t bytes, uint32_t page_size)
{
	if (kind != UFFDWP__INDEX_PAGES || !last || last->kind != UFFDWP__INDEX_PAGES ||
	    last->offset + last->bytes != offset || last->addr + last->npages * page_size != addr)
		return false;
	last->npages++;
	last->bytes += bytes;
	return true;
}

/* An entry as it is on the wire. */
static void put_entry(unsigned char *p, const struct uffdwp__index_entry *e)
{
	store64(p, e->addr);
	store64(p + 8, e->npages);
	store64(p + 16, e->offset);
	store64(p + 24, e->bytes);
	store32(p + 32, e->kind);
	store32(p + 36, 0);
}

/* Note a record just encoded (at enc->offset) in the index being kept. */
static void index_note(struct uffdwp__encoder *enc, enum uffdwp__index_kind kind, uint64_t addr,
		       uint64_t npages, uint64_t bytes)
{
	struct uffdwp__index_entry *last = enc->index_n ? &enc->index[enc->index_n - 1] : NULL;

	if (!enc->indexing || enc->index_error ||
	    index_extend(last, kind, addr, enc->offset, bytes, enc->header.page_size))
		return;
	if (enc->index_n == enc->index_cap) {
		size_t cap = enc->index_cap ? enc->index_cap * 2 : 64;
		struct uffdwp__index_entry *grown = uffdwp__private_realloc(enc->index,
									   cap * sizeof(*grown));

		if (!grown) {
			enc->index_error = -ENOMEM;
			return;
		}
		enc->index = grown;
		enc->index_cap = cap;
	}
	enc->index[enc->index_n++] = (struct uffdwp__index_entry){
		addr, npages, enc->offset, bytes, kind };
}

int uffdwp__encoder_keep_index(struct uffdwp__encoder *enc)
{
	if (enc->header.version < 2 || enc->state == UFFDWP__ENC_DONE)
		return -EINVAL;
	enc->indexing = true;
	return 0;
}

void uffdwp__encoder_release(struct uffdwp__encoder *enc)
{
	uffdwp__private_free(enc->index);
	enc->index = NULL;
	enc->index_n = enc->index_cap = 0;
}

size_t uffdwp__encoder_index_size(const struct uffdwp__encoder *enc)
{
	return uffdwp__format_index_size(enc->index_n);
}

static int by_entry_addr(const void *a, const void *b)
{
	const struct uffdwp__index_entry *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

void uffdwp__index_sort(struct uffdwp__index_entry *e, size_t n)
{
	qsort(e, n, sizeof(*e), by_entry_addr);
}

const struct uffdwp__index_entry *uffdwp__index_find(const struct uffdwp__index_entry *e,
						     size_t n, uint64_t addr, uint32_t page_size)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (addr < e[mid].addr)
			hi = mid;
		else if (addr - e[mid].addr >= e[mid].npages * page_size)
			lo = mid + 1;
		else
			return &e[mid];
	}
	return NULL;
}

ssize_t uffdwp__encode_index(struct uffdwp__encoder *enc, void *buf, size_t cap)
{
	size_t size = uffdwp__encoder_index_size(enc);
	unsigned char *p = buf, *e;
	uint64_t sum;

	if (!enc->indexing || enc->state != UFFDWP__ENC_RECORDS)
		return -EINVAL;
	if (enc->index_error)
		return enc->index_error;
	if (cap < size)
		return -ENOSPC;
	uffdwp__index_sort(enc->index, enc->index_n);
	put_head(p, UFFDWP__FORMAT_TAG_INDEX, 0);
	store64(p + UFFDWP__FORMAT_HEAD_SIZE, enc->index_n);
	e = p + UFFDWP__FORMAT_HEAD_SIZE + 8;
	for (size_t i = 0; i < enc->index_n; i++, e += UFFDWP__FORMAT_INDEX_ENTRY)
		put_entry(e, &enc->index[i]);
	store64(e, enc->index_n);
	sum = record_sum(&enc->header, p, p + UFFDWP__FORMAT_HEAD_SIZE,
			 size - UFFDWP__FORMAT_HEAD_SIZE - UFFDWP__FORMAT_SUM_SIZE);
	store64(e + 8, sum);
	enc->totals.stream_sum = chain(&enc->header, enc->totals.stream_sum, sum);
	enc->offset += size;
	enc->indexing = false;  /* one index, last before the trailer */
	return (ssize_t)size;
}

int uffdwp__encoder_init(struct uffdwp__encoder *enc, const struct uffdwp__format_header *h)
{
	if (!enc || !h || h->version < UFFDWP__FORMAT_VERSION_MIN ||
	    h->version > UFFDWP__FORMAT_VERSION || !page_size_ok(h->page_size) ||
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
	enc->totals.stream_sum = uffdwp__format_sum(h->version, p, summed, 0);
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
	return record_sum(&enc->header, head, page, enc->header.page_size);
}

int uffdwp__encode_page_frame_summed(struct uffdwp__encoder *enc, uint64_t addr, uint64_t sum,
				     void *head, void *tail)
{
	struct uffdwp__format_totals *t = &enc->totals;

	if (enc->state != UFFDWP__ENC_RECORDS || !run_inside(&enc->header, addr, 1))
		return -EINVAL;
	put_head(head, UFFDWP__FORMAT_TAG_PAGE, addr);
	store64(tail, sum);
	index_note(enc, UFFDWP__INDEX_PAGES, addr, 1,
		   uffdwp__format_page_record_size(enc->header.page_size));
	t->record_count++;
	t->page_count++;
	t->stream_sum = chain(&enc->header, t->stream_sum, sum);
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
	sum = record_sum(&enc->header, p, p + UFFDWP__FORMAT_HEAD_SIZE, ZERO_BODY);
	store64(p + UFFDWP__FORMAT_HEAD_SIZE + ZERO_BODY, sum);
	index_note(enc, UFFDWP__INDEX_ZERO, addr, npages, UFFDWP__FORMAT_ZERO_SIZE);
	t->record_count++;
	t->zero_count += npages;
	t->stream_sum = chain(&enc->header, t->stream_sum, sum);
	enc->offset += UFFDWP__FORMAT_ZERO_SIZE;
	return UFFDWP__FORMAT_ZERO_SIZE;
}

static void *zstd_alloc(void *opaque, size_t size)
{
	return uffdwp__private_alloc(size);
}

static void zstd_free(void *opaque, void *p)
{
	uffdwp__private_free(p);
}

static const ZSTD_customMem private_zstd_memory = { zstd_alloc, zstd_free, NULL };

int uffdwp__codec_init(struct uffdwp__codec *c, enum uffdwp__codec_id id, int level)
{
	memset(c, 0, sizeof(*c));
	switch (id) {
	case UFFDWP__CODEC_NONE:
	case UFFDWP__CODEC_LZ4:
		if (level)
			return -EINVAL;
		break;
	case UFFDWP__CODEC_ZSTD:
		if (level < 0 || level > ZSTD_maxCLevel())
			return -EINVAL;
		c->zstd = ZSTD_createCCtx_advanced(private_zstd_memory);
		if (!c->zstd)
			return -ENOMEM;
		break;
	default:
		return -EINVAL;
	}
	c->id = id;
	c->level = level;
	return 0;
}

void uffdwp__codec_release(struct uffdwp__codec *c)
{
	ZSTD_freeCCtx(c->zstd);
	c->zstd = NULL;
}

static size_t compress_bound(size_t raw)
{
	size_t lz4 = (size_t)LZ4_compressBound((int)raw), zstd = ZSTD_compressBound(raw);

	return lz4 > zstd ? (lz4 > raw ? lz4 : raw) : (zstd > raw ? zstd : raw);
}

size_t uffdwp__format_batch_bound(uint32_t page_size, uint64_t npages)
{
	return UFFDWP__FORMAT_HEAD_SIZE + UFFDWP__FORMAT_BATCH_FIXED +
	       compress_bound((size_t)(npages * page_size)) + UFFDWP__FORMAT_SUM_SIZE;
}

/* Compress raw into dst (room for compress_bound()): the compressed size,
 * or 0 when it is not smaller than raw (then the batch goes raw). */
static size_t compress(struct uffdwp__codec *c, const void *raw, size_t len, void *dst,
		       size_t cap)
{
	size_t n = 0;

	if (c->id == UFFDWP__CODEC_LZ4) {
		int got = LZ4_compress_default(raw, dst, (int)len, (int)cap);

		n = got > 0 ? (size_t)got : 0;
	} else if (c->id == UFFDWP__CODEC_ZSTD) {
		n = ZSTD_compressCCtx(c->zstd, dst, cap, raw, len, c->level);
		if (ZSTD_isError(n))
			n = 0;
	}
	return n < len ? n : 0;
}

/* A BATCH's checksum: its stored bytes, seeded with the sum of its head and
 * fixed fields (so the stored bytes are checked before they are decoded). */
static uint64_t batch_sum(const struct uffdwp__format_header *h, const unsigned char *head,
			  const unsigned char *fixed, const void *stored, size_t len)
{
	return uffdwp__format_sum(h->version, stored, len,
				  record_sum(h, head, fixed, UFFDWP__FORMAT_BATCH_FIXED));
}

ssize_t uffdwp__encode_batch(struct uffdwp__encoder *enc, uint64_t addr, uint64_t npages,
			     const void *pages, struct uffdwp__codec *c, void *buf, size_t cap)
{
	const struct uffdwp__format_header *h = &enc->header;
	struct uffdwp__format_totals *t = &enc->totals;
	unsigned char *p = buf, *fixed = p + UFFDWP__FORMAT_HEAD_SIZE;
	unsigned char *stored = fixed + UFFDWP__FORMAT_BATCH_FIXED;
	size_t raw, len, size;
	uint32_t codec;
	uint64_t sum;

	if (enc->state != UFFDWP__ENC_RECORDS || h->version < 2 || !run_inside(h, addr, npages) ||
	    npages > UFFDWP__FORMAT_MAX_BATCH_BYTES / h->page_size)
		return -EINVAL;
	raw = (size_t)npages * h->page_size;
	if (cap < uffdwp__format_batch_bound(h->page_size, npages))
		return -ENOSPC;
	len = compress(c, pages, raw, stored, compress_bound(raw));
	codec = len ? (uint32_t)c->id : UFFDWP__CODEC_NONE;
	if (!len) {
		memcpy(stored, pages, raw);
		len = raw;
	}
	put_head(p, UFFDWP__FORMAT_TAG_BATCH, addr);
	store32(fixed, codec);
	store32(fixed + 4, (uint32_t)npages);
	store64(fixed + 8, len);
	sum = batch_sum(h, p, fixed, stored, len);
	store64(stored + len, sum);
	size = UFFDWP__FORMAT_HEAD_SIZE + UFFDWP__FORMAT_BATCH_FIXED + len + UFFDWP__FORMAT_SUM_SIZE;
	index_note(enc, UFFDWP__INDEX_BATCH, addr, npages, size);
	t->record_count++;
	t->page_count += npages;
	t->stream_sum = chain(h, t->stream_sum, sum);
	enc->offset += size;
	return (ssize_t)size;
}

int uffdwp__codec_choose(enum uffdwp_codec codec, int level, enum uffdwp__codec_id *id)
{
	switch (codec) {
	case UFFDWP_CODEC_DEFAULT:
	case UFFDWP_CODEC_NONE:
		*id = UFFDWP__CODEC_NONE;
		return level ? -EINVAL : 0;
	case UFFDWP_CODEC_LZ4:
		*id = UFFDWP__CODEC_LZ4;
		return level ? -EINVAL : 0;
	case UFFDWP_CODEC_ZSTD:
		*id = UFFDWP__CODEC_ZSTD;
		return level < 0 || level > ZSTD_maxCLevel() ? -EINVAL : 0;
	}
	return -EINVAL;
}

int uffdwp__batcher_init(struct uffdwp__batcher *b, struct uffdwp__encoder *enc,
			 enum uffdwp__codec_id id, int level, uint32_t max_pages)
{
	uint32_t page = enc->header.page_size;
	int ret;

	memset(b, 0, sizeof(*b));
	if (max_pages == 0 || max_pages > UFFDWP__FORMAT_MAX_BATCH_BYTES / page)
		return -EINVAL;
	ret = uffdwp__codec_init(&b->codec, id, level);
	if (ret < 0)
		return ret;
	b->enc = enc;
	b->max_pages = max_pages;
	/* Worst case: every page its own record. */
	b->out_cap = (size_t)max_pages * uffdwp__format_batch_bound(page, 1);
	b->stage = uffdwp__private_alloc((size_t)max_pages * page);
	b->out = uffdwp__private_alloc(b->out_cap);
	if (!b->stage || !b->out) {
		uffdwp__batcher_release(b);
		return -ENOMEM;
	}
	return 0;
}

int uffdwp__batcher_finish(struct uffdwp__batcher *b)
{
	ssize_t n;

	if (!b->staged)
		return 0;
	n = uffdwp__encode_batch(b->enc, b->first, b->staged, b->stage, &b->codec,
				 b->out + b->out_len, b->out_cap - b->out_len);
	if (n < 0)
		return (int)n;
	b->out_len += (size_t)n;
	b->staged = 0;
	return 0;
}

int uffdwp__batcher_add(struct uffdwp__batcher *b, uint64_t addr, const void *page)
{
	uint32_t size = b->enc->header.page_size;
	int ret;

	if (b->added == b->max_pages)
		return -ENOSPC;
	if (b->staged && (addr != b->first + (uint64_t)b->staged * size ||
			  !run_inside(&b->enc->header, b->first, b->staged + 1))) {
		ret = uffdwp__batcher_finish(b);
		if (ret < 0)
			return ret;
	}
	if (!b->staged)
		b->first = addr;
	memcpy(b->stage + (size_t)b->staged * size, page, size);
	b->staged++;
	b->added++;
	return 0;
}

size_t uffdwp__batcher_take(struct uffdwp__batcher *b, const void **data)
{
	size_t n = b->out_len - b->out_taken;

	*data = b->out + b->out_taken;
	b->out_taken = b->out_len;
	return n;
}

void uffdwp__batcher_reset(struct uffdwp__batcher *b)
{
	b->out_len = b->out_taken = 0;
	b->added = b->staged;
}

void uffdwp__batcher_release(struct uffdwp__batcher *b)
{
	uffdwp__codec_release(&b->codec);
	uffdwp__private_free(b->stage);
	uffdwp__private_free(b->out);
	b->stage = b->out = NULL;
}

ssize_t uffdwp__encode_trailer(struct uffdwp__encoder *enc, void *buf, size_t cap)
{
	const struct uffdwp__format_totals *t = &enc->totals;
	unsigned char *p = buf, *body = p + UFFDWP__FORMAT_HEAD_SIZE;

	if (enc->state != UFFDWP__ENC_RECORDS)
		return -EINVAL;
	if (cap < UFFDWP__FORMAT_TRAILER_SIZE)
		return -ENOSPC;
	enc->totals.trailer_offset = enc->header.version >= 2 ? enc->offset : 0;
	put_head(p, UFFDWP__FORMAT_TAG_TRAILER, t->trailer_offset);
	store64(body, t->record_count);
	store64(body + 8, t->page_count);
	store64(body + 16, t->zero_count);
	store64(body + 24, t->stream_sum);
	store64(body + TRAILER_BODY,
		record_sum(&enc->header, p, body, TRAILER_BODY));
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

void uffdwp__decoder_init_record(struct uffdwp__decoder *dec, const struct uffdwp__format_header *h,
				 const void *buf, size_t len, uint64_t offset)
{
	/* What it allocated for earlier records is kept for the next. */
	unsigned char *stored = dec->stored, *batch = dec->batch;
	size_t stored_cap = dec->stored_cap, batch_cap = dec->batch_cap;
	void *zstd = dec->zstd;

	uffdwp__decoder_init_buffer(dec, buf, len);
	dec->stored = stored;
	dec->batch = batch;
	dec->stored_cap = stored_cap;
	dec->batch_cap = batch_cap;
	dec->zstd = zstd;
	dec->header = *h;
	dec->base = offset;
	dec->state = UFFDWP__DEC_RECORDS;
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
	free(dec->stored);
	free(dec->batch);
	ZSTD_freeDCtx(dec->zstd);
	dec->owned_regions = NULL;
	dec->header.regions = NULL;
	dec->page = NULL;
	dec->stored = dec->batch = NULL;
	dec->stored_cap = dec->batch_cap = 0;
	dec->zstd = NULL;
}

/* Record the first error (with its offset and a sentence) and return it. */
__attribute__((format(printf, 4, 5)))
static int fail(struct uffdwp__decoder *dec, int err, uint64_t offset, const char *fmt, ...)
{
	va_list ap;

	if (dec->error)
		return dec->error;
	dec->error = err;
	dec->error_offset = dec->base + offset;
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
	if (load64(sum) != uffdwp__format_sum(h->version, *raw, summed, 0))
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
	if (h->version < UFFDWP__FORMAT_VERSION_MIN || h->version > UFFDWP__FORMAT_VERSION) {
		ret = fail(dec, -ENOTSUP, HDR_VERSION,
			   "format version %u is not supported (this reader knows versions %u to %u)",
			   h->version, UFFDWP__FORMAT_VERSION_MIN, UFFDWP__FORMAT_VERSION);
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
	if (t->trailer_offset != (dec->header.version >= 2 ? start : 0))
		return fail(dec, -EBADMSG, start, "the trailer address field (0x%llx) is not %s",
			    (unsigned long long)t->trailer_offset,
			    dec->header.version >= 2 ? "its own offset" : "0");
	got = read_some(dec, &extra, 1);
	if (got < 0)
		return fail(dec, (int)got, dec->offset, "read error: %s", strerror((int)-got));
	if (got > 0)
		return fail(dec, -EBADMSG, start + UFFDWP__FORMAT_TRAILER_SIZE,
			    "data follows the trailer");
	return 0;
}

/* Make *buf hold at least n bytes (n within the format's batch limit). */
static int grow(struct uffdwp__decoder *dec, unsigned char **buf, size_t *cap, size_t n)
{
	unsigned char *grown;

	if (n <= *cap)
		return 0;
	grown = realloc(*buf, n);
	if (!grown)
		return fail(dec, -ENOMEM, dec->offset, "out of memory for a batch");
	*buf = grown;
	*cap = n;
	return 0;
}

/*
 * Check count index entries at p (wire layout) for a stream of header h
 * whose index starts at index_offset; fill out (if not NULL). NULL when
 * sound, else why not.
 */
static const char *check_index(const struct uffdwp__format_header *h, const unsigned char *p,
			       uint64_t count, uint64_t index_offset,
			       struct uffdwp__index_entry *out)
{
	uint64_t end = 0;

	for (uint64_t i = 0; i < count; i++, p += UFFDWP__FORMAT_INDEX_ENTRY) {
		struct uffdwp__index_entry e = {
			load64(p), load64(p + 8), load64(p + 16), load64(p + 24), load32(p + 32),
		};

		if (e.kind < UFFDWP__INDEX_PAGES || e.kind > UFFDWP__INDEX_ZERO || load32(p + 36))
			return "has an entry of unknown kind";
		if (!run_inside(h, e.addr, e.npages))
			return "has an entry outside the regions";
		if (i && e.addr < end)
			return "is not sorted, or its entries overlap";
		if (e.bytes == 0 || e.offset < uffdwp__format_header_size(h->region_count) ||
		    e.offset > index_offset || e.bytes > index_offset - e.offset)
			return "has an entry pointing outside the records";
		if (e.kind == UFFDWP__INDEX_PAGES &&
		    e.bytes != e.npages * (uint64_t)uffdwp__format_page_record_size(h->page_size))
			return "has a page run of the wrong size";
		end = e.addr + e.npages * h->page_size;
		if (out)
			out[i] = e;
	}
	return NULL;
}

int uffdwp__decode_index(const struct uffdwp__format_header *h, const void *buf, size_t len,
			 uint64_t offset, struct uffdwp__index_entry **entries, uint64_t *count)
{
	const unsigned char *p = buf;
	uint64_t n;
	size_t size;

	if (h->version < 2 || len < uffdwp__format_index_size(0) ||
	    load32(p) != UFFDWP__FORMAT_TAG_INDEX)
		return -ENODATA;
	n = load64(p + UFFDWP__FORMAT_HEAD_SIZE);
	if (n > (len - uffdwp__format_index_size(0)) / UFFDWP__FORMAT_INDEX_ENTRY)
		return -EBADMSG;
	size = uffdwp__format_index_size(n);
	if (size != len || load32(p + 4) || load64(p + 8) ||
	    load64(p + size - 16) != n ||
	    load64(p + size - 8) != record_sum(h, p, p + UFFDWP__FORMAT_HEAD_SIZE,
					       size - UFFDWP__FORMAT_HEAD_SIZE - 8))
		return -EBADMSG;
	*entries = malloc(n ? n * sizeof(**entries) : 1);
	if (!*entries)
		return -ENOMEM;
	if (check_index(h, p + UFFDWP__FORMAT_HEAD_SIZE + 8, n, offset, *entries)) {
		free(*entries);
		*entries = NULL;
		return -EBADMSG;
	}
	*count = n;
	return 0;
}

/* Add an entry the records call for to the decoder's digest of them. */
static void digest_entry(struct uffdwp__decoder *dec, const struct uffdwp__index_entry *e)
{
	unsigned char wire[UFFDWP__FORMAT_INDEX_ENTRY];

	put_entry(wire, e);
	dec->index_digest += XXH3_64bits(wire, sizeof(wire));
	dec->index_count++;
}

/*
 * The entries the records decoded so far call for, by the encoder's rule,
 * summed as an order-free digest (the index is sorted, the records are
 * not): constant memory, and the index must match it exactly.
 */
static void expect_entry(struct uffdwp__decoder *dec, enum uffdwp__index_kind kind,
			 uint64_t addr, uint64_t npages, uint64_t offset, uint64_t bytes)
{
	uint32_t ps = dec->header.page_size;

	if (index_extend(dec->index_have_last ? &dec->index_last : NULL, kind, addr, offset,
			 bytes, ps))
		return;
	if (dec->index_have_last)
		digest_entry(dec, &dec->index_last);
	dec->index_last = (struct uffdwp__index_entry){ addr, npages, offset, bytes, kind };
	dec->index_have_last = true;
}

/* The rest of an INDEX record met in the stream: checked, then chained. */
static int skip_index(struct uffdwp__decoder *dec, const unsigned char *head, uint64_t start)
{
	const struct uffdwp__format_header *h = &dec->header;
	struct uffdwp__format_totals *seen = &dec->totals;
	unsigned char count[8], tail[16];
	const char *problem;
	uint64_t n, bytes, digest = 0;
	int ret = read_exact(dec, count, sizeof(count), start, "the index");

	if (ret < 0)
		return ret;
	n = load64(count);
	/* Each entry stands for one record or more: a count beyond that is a
	 * lie, and allocation stays bounded by the stream. */
	if (dec->index_seen || load32(head + 4) || load64(head + 8) || n > seen->record_count)
		return fail(dec, -EBADMSG, start, "bad index record (%llu entries)",
			    (unsigned long long)n);
	bytes = n * UFFDWP__FORMAT_INDEX_ENTRY;
	ret = grow(dec, &dec->stored, &dec->stored_cap, (size_t)bytes + 8 + sizeof(tail));
	if (ret < 0)
		return ret;
	memcpy(dec->stored, count, 8);
	ret = read_exact(dec, dec->stored + 8, (size_t)bytes, start, "the index");
	if (ret == 0)
		ret = read_exact(dec, tail, sizeof(tail), start, "the index");
	if (ret < 0)
		return ret;
	memcpy(dec->stored + 8 + bytes, tail, 8);
	if (load64(tail) != n ||
	    load64(tail + 8) != record_sum(h, head, dec->stored, (size_t)bytes + 16))
		return fail(dec, -EBADMSG, start, "index checksum mismatch");
	problem = check_index(h, dec->stored + 8, n, start, NULL);
	if (problem)
		return fail(dec, -EBADMSG, start, "the index %s", problem);
	if (dec->index_have_last)
		digest_entry(dec, &dec->index_last);
	dec->index_have_last = false;
	for (uint64_t i = 0; i < n; i++)
		digest += XXH3_64bits(dec->stored + 8 + i * UFFDWP__FORMAT_INDEX_ENTRY,
				      UFFDWP__FORMAT_INDEX_ENTRY);
	if (n != dec->index_count || digest != dec->index_digest)
		return fail(dec, -EBADMSG, start, "the index does not match the records "
			    "(%llu entries, the records call for %llu)", (unsigned long long)n,
			    (unsigned long long)dec->index_count);
	seen->stream_sum = chain(h, seen->stream_sum, load64(tail + 8));
	dec->index_seen = true;
	return 0;
}

/* Hand out a checked record: its run must lie in a region; count it. */
static int accept_record(struct uffdwp__decoder *dec, struct uffdwp__record *rec,
			 enum uffdwp__index_kind kind, uint64_t start, uint64_t addr,
			 uint64_t npages, const void *data, uint64_t sum)
{
	static const char *const what[] = { "", "page", "batch", "zero" };
	enum uffdwp__record_type type = kind == UFFDWP__INDEX_ZERO ? UFFDWP__RECORD_ZERO
								    : UFFDWP__RECORD_PAGE;
	const struct uffdwp__format_header *h = &dec->header;
	struct uffdwp__format_totals *seen = &dec->totals;
	uint64_t *count = type == UFFDWP__RECORD_PAGE ? &seen->page_count : &seen->zero_count;

	if (dec->index_seen)
		return fail(dec, -EBADMSG, start, "a record after the index");
	if (!run_inside(h, addr, npages))
		return fail(dec, -EBADMSG, start,
			    "%s record for 0x%llx (%llu pages) is unaligned or outside the regions",
			    what[kind], (unsigned long long)addr, (unsigned long long)npages);
	/* Only a stream naming pages over and over could wrap a count. */
	if (*count + npages < *count)
		return fail(dec, -EBADMSG, start, "the %s page count overflows",
			    type == UFFDWP__RECORD_PAGE ? "stored" : "zero");
	*rec = (struct uffdwp__record){ type, dec->base + start, addr, npages, data };
	if (h->version >= 2)
		expect_entry(dec, kind, addr, npages, start, dec->offset - start);
	seen->record_count++;
	*count += npages;
	seen->stream_sum = chain(h, seen->stream_sum, sum);
	return 1;
}

/*
 * The rest of a BATCH record whose head is read: check its fixed fields and
 * checksum, then decode its pages into *data. Returns the pages' count or
 * a negative errno.
 */
static int64_t decode_batch(struct uffdwp__decoder *dec, const unsigned char *head,
			    uint64_t start, const void **data)
{
	const struct uffdwp__format_header *h = &dec->header;
	unsigned char fixed[UFFDWP__FORMAT_BATCH_FIXED], sum[UFFDWP__FORMAT_SUM_SIZE];
	const unsigned char *stored;
	uint32_t codec, npages;
	uint64_t len, raw;
	int ret = read_exact(dec, fixed, sizeof(fixed), start, "a batch record");

	if (ret < 0)
		return ret;
	codec = load32(fixed);
	npages = load32(fixed + 4);
	len = load64(fixed + 8);
	raw = (uint64_t)npages * h->page_size;
	if (npages == 0 || raw > UFFDWP__FORMAT_MAX_BATCH_BYTES || codec > UFFDWP__CODEC_ZSTD ||
	    (codec == UFFDWP__CODEC_NONE ? len != raw : len == 0 || len >= raw))
		return fail(dec, -EBADMSG, start,
			    "bad batch record: codec %u, %u pages, %llu bytes stored", codec,
			    npages, (unsigned long long)len);
	if (dec->buf) {
		if (dec->len - dec->offset < len) {
			dec->offset = dec->len;
			return truncated(dec, start, "a batch record");
		}
		stored = dec->buf + dec->offset;
		dec->offset += len;
	} else {
		ret = grow(dec, &dec->stored, &dec->stored_cap, (size_t)len);
		if (ret == 0)
			ret = read_exact(dec, dec->stored, (size_t)len, start, "a batch record");
		if (ret < 0)
			return ret;
		stored = dec->stored;
	}
	ret = read_exact(dec, sum, sizeof(sum), start, "a record's checksum");
	if (ret < 0)
		return ret;
	dec->batch_sum = batch_sum(h, head, fixed, stored, (size_t)len);
	if (load64(sum) != dec->batch_sum)
		return fail(dec, -EBADMSG, start, "record checksum mismatch");
	if (codec == UFFDWP__CODEC_NONE) {
		*data = stored;
		return npages;
	}
	ret = grow(dec, &dec->batch, &dec->batch_cap, (size_t)raw);
	if (ret < 0)
		return ret;
	if (codec == UFFDWP__CODEC_LZ4) {
		ret = LZ4_decompress_safe((const char *)stored, (char *)dec->batch, (int)len,
					  (int)raw) == (int)raw ? 0 : -1;
	} else {
		size_t n;

		if (!dec->zstd && !(dec->zstd = ZSTD_createDCtx()))
			return fail(dec, -ENOMEM, start, "out of memory for a zstd decoder");
		n = ZSTD_decompressDCtx(dec->zstd, dec->batch, (size_t)raw, stored, (size_t)len);
		ret = !ZSTD_isError(n) && n == raw ? 0 : -1;
	}
	if (ret < 0)
		return fail(dec, -EBADMSG, start,
			    "corrupt compressed batch (%s): it does not decode to %u pages",
			    codec == UFFDWP__CODEC_LZ4 ? "lz4" : "zstd", npages);
	*data = dec->batch;
	return npages;
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
next:
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
	case UFFDWP__FORMAT_TAG_INDEX:
		if (h->version < 2)
			return fail(dec, -EBADMSG, start, "unknown record tag 0x%08x (an index "
				    "needs version 2)", tag);
		ret = skip_index(dec, head, start);
		if (ret < 0)
			return ret;
		goto next;
	case UFFDWP__FORMAT_TAG_BATCH:
		if (h->version >= 2) {
			int64_t n;

			if (flags)
				return fail(dec, -EBADMSG, start, "record flags 0x%x are unknown", flags);
			n = decode_batch(dec, head, start, &data);
			if (n < 0)
				return (int)n;
			return accept_record(dec, rec, UFFDWP__INDEX_BATCH, start, addr, (uint64_t)n,
					     data, dec->batch_sum);
		}
		return fail(dec, -EBADMSG, start, "unknown record tag 0x%08x (a batch needs "
			    "version 2)", tag);
	default:
		return fail(dec, -EBADMSG, start, "unknown record tag 0x%08x", tag);
	}
	if (ret < 0)
		return ret;
	ret = read_exact(dec, sum, sizeof(sum), start, "a record's checksum");
	if (ret < 0)
		return ret;
	record = record_sum(h, head, data, body_len);
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

		t.trailer_offset = addr;
		ret = check_trailer(dec, &t, start);
		if (ret < 0)
			return ret;
		dec->totals = t;
		dec->state = UFFDWP__DEC_DONE;
		return 0;
	}

	if (tag == UFFDWP__FORMAT_TAG_PAGE)
		return accept_record(dec, rec, UFFDWP__INDEX_PAGES, start, addr, 1, data, record);
	return accept_record(dec, rec, UFFDWP__INDEX_ZERO, start, addr, load64(body), NULL, record);
}

int uffdwp__decode_trailer(const struct uffdwp__format_header *h, const void *buf,
			   struct uffdwp__format_totals *t)
{
	const unsigned char *p = buf, *body = p + UFFDWP__FORMAT_HEAD_SIZE;

	if (load32(p) != UFFDWP__FORMAT_TAG_TRAILER)
		return -ENODATA;
	if (load32(p + 4) || (h->version < 2 && load64(p + 8)) ||
	    load64(body + TRAILER_BODY) != record_sum(h, p, body, TRAILER_BODY))
		return -EBADMSG;
	t->trailer_offset = load64(p + 8);
	t->record_count = load64(body);
	t->page_count = load64(body + 8);
	t->zero_count = load64(body + 16);
	t->stream_sum = load64(body + 24);
	return 0;
}
