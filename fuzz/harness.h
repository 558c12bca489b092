/* SPDX-License-Identifier: MIT */
/*
 * The snapshot decoder's fuzzing harness, shared by the libFuzzer target
 * (fuzz/fuzz_decode.c) and the corpus regression test (tests/format_corpus.c),
 * which also borrows harness_fix_checksums() to craft streams.
 *
 * harness_run() decodes an input twice as it is (from a buffer, and through a
 * read function returning uneven chunks) and twice more after
 * harness_fix_checksums(), so that mutations reach the checks that lie behind
 * the checksums. It abort()s when the two ways of decoding disagree or when
 * a record handed out breaks the decoder's contract.
 */
#ifndef UFFDWP_FUZZ_HARNESS_H
#define UFFDWP_FUZZ_HARNESS_H

#include <endian.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "format.h"

static inline uint64_t harness_load64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

static inline uint32_t harness_load32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static inline void harness_store64(unsigned char *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, sizeof(v));
}

/* The checksums as uffdwp-snapshot(5) defines them, written from the page. */
static inline uint64_t harness_record_sum(uint32_t version, uint64_t id,
					  const unsigned char *record, size_t body)
{
	uint64_t seed = uffdwp__format_sum(version, record, UFFDWP__FORMAT_HEAD_SIZE, id);

	return uffdwp__format_sum(version, record + UFFDWP__FORMAT_HEAD_SIZE, body, seed);
}

static inline uint64_t harness_chain(uint32_t version, uint64_t id, uint64_t stream_sum,
				     uint64_t record_sum)
{
	unsigned char pair[16];

	harness_store64(pair, stream_sum);
	harness_store64(pair + 8, record_sum);
	return uffdwp__format_sum(version, pair, sizeof(pair), id);
}

/*
 * Rewrite, in place, every checksum of the stream (header, records, the
 * trailer's stream checksum and its own) as far as its structure can be
 * followed; all other bytes stay as they are.
 */
static inline void harness_fix_checksums(unsigned char *p, size_t len)
{
	uint32_t version, page_size, regions;
	uint64_t id, stream;
	size_t at;

	if (len < UFFDWP__FORMAT_HEADER_FIXED)
		return;
	version = harness_load32(p + 8);
	page_size = harness_load32(p + 16);
	regions = harness_load32(p + 20);
	id = harness_load64(p + 24);
	if (regions > UFFDWP__FORMAT_MAX_REGIONS)
		return;
	at = uffdwp__format_header_size(regions) - UFFDWP__FORMAT_SUM_SIZE;
	if (at + UFFDWP__FORMAT_SUM_SIZE > len)
		return;
	stream = uffdwp__format_sum(version, p, at, 0);
	harness_store64(p + at, stream);
	at += UFFDWP__FORMAT_SUM_SIZE;
	while (len - at >= UFFDWP__FORMAT_HEAD_SIZE) {
		uint32_t tag = harness_load32(p + at);
		size_t body;
		uint64_t sum;

		if (tag == UFFDWP__FORMAT_TAG_PAGE && page_size <= UFFDWP__FORMAT_MAX_PAGE_SIZE)
			body = page_size;
		else if (tag == UFFDWP__FORMAT_TAG_ZERO)
			body = 8;
		else if (tag == UFFDWP__FORMAT_TAG_TRAILER)
			body = 32;
		else if (tag == UFFDWP__FORMAT_TAG_INDEX && version >= 2 &&
			 len - at >= UFFDWP__FORMAT_HEAD_SIZE + 8 &&
			 harness_load64(p + at + UFFDWP__FORMAT_HEAD_SIZE) <=
				 len / UFFDWP__FORMAT_INDEX_ENTRY)
			body = 16 + UFFDWP__FORMAT_INDEX_ENTRY *
					    (size_t)harness_load64(p + at + UFFDWP__FORMAT_HEAD_SIZE);
		else if (tag == UFFDWP__FORMAT_TAG_BATCH && version >= 2 &&
			 len - at >= UFFDWP__FORMAT_HEAD_SIZE + UFFDWP__FORMAT_BATCH_FIXED &&
			 harness_load64(p + at + UFFDWP__FORMAT_HEAD_SIZE + 8) <= len)
			body = UFFDWP__FORMAT_BATCH_FIXED +
			       (size_t)harness_load64(p + at + UFFDWP__FORMAT_HEAD_SIZE + 8);
		else
			return;
		if (len - at < UFFDWP__FORMAT_HEAD_SIZE + body + UFFDWP__FORMAT_SUM_SIZE)
			return;
		if (tag == UFFDWP__FORMAT_TAG_TRAILER)
			harness_store64(p + at + UFFDWP__FORMAT_HEAD_SIZE + 24, stream);
		if (tag == UFFDWP__FORMAT_TAG_BATCH)  /* stored bytes seeded by head + fields */
			sum = uffdwp__format_sum(version, p + at + UFFDWP__FORMAT_HEAD_SIZE +
						 UFFDWP__FORMAT_BATCH_FIXED,
						 body - UFFDWP__FORMAT_BATCH_FIXED,
						 harness_record_sum(version, id, p + at,
								    UFFDWP__FORMAT_BATCH_FIXED));
		else
			sum = harness_record_sum(version, id, p + at, body);
		harness_store64(p + at + UFFDWP__FORMAT_HEAD_SIZE + body, sum);
		if (tag == UFFDWP__FORMAT_TAG_TRAILER)
			return;
		stream = harness_chain(version, id, stream, sum);
		at += UFFDWP__FORMAT_HEAD_SIZE + body + UFFDWP__FORMAT_SUM_SIZE;
	}
}

struct harness_source {
	const unsigned char *data;
	size_t len, pos;
	unsigned step;  /* varies the chunk sizes */
};

static inline ssize_t harness_read(void *arg, void *buf, size_t len)
{
	struct harness_source *s = arg;
	size_t n = 1 + s->step++ % 7;

	if (s->step % 5 == 0)
		n = len;  /* now and then, everything asked for */
	if (n > len)
		n = len;
	if (n > s->len - s->pos)
		n = s->len - s->pos;
	memcpy(buf, s->data + s->pos, n);
	s->pos += n;
	return (ssize_t)n;
}

static inline void harness_check(bool ok)
{
	if (!ok)
		abort();
}

/* A record must be what format.h promises. */
static inline void harness_check_record(const struct uffdwp__decoder *dec,
					const struct uffdwp__record *rec, uint64_t prev_offset,
					size_t len)
{
	const struct uffdwp__format_header *h = &dec->header;
	bool inside = false;

	harness_check(rec->offset >= prev_offset && rec->offset < len && dec->offset <= len);
	harness_check(rec->addr % h->page_size == 0 && rec->npages >= 1);
	harness_check((rec->type == UFFDWP__RECORD_PAGE) == (rec->data != NULL));
	harness_check(rec->type == UFFDWP__RECORD_ZERO || h->version >= 2 || rec->npages == 1);
	for (uint32_t i = 0; i < h->region_count && !inside; i++) {
		const struct uffdwp_snapshot_region *r = &h->regions[i];

		inside = rec->addr >= r->addr && rec->addr - r->addr < r->len &&
			 rec->npages <= (r->len - (rec->addr - r->addr)) / h->page_size;
	}
	harness_check(inside);
}

/*
 * The index read from the end of a decoded stream (if it has one) agrees
 * with the records: each entry's record decodes alone, at its address.
 * Reading an index anywhere else is safe.
 */
static inline void harness_check_index(const struct uffdwp__format_header *h,
				       const unsigned char *data, size_t len, uint64_t trailer,
				       bool sound)
{
	struct uffdwp__index_entry *entries = NULL;
	uint64_t count = 0, start;
	int ret;

	if (trailer < 16 || trailer > len)
		return;
	count = harness_load64(data + trailer - 16);
	if (count > trailer / UFFDWP__FORMAT_INDEX_ENTRY)
		return;
	start = trailer - uffdwp__format_index_size(count);
	if (start > trailer)
		return;
	ret = uffdwp__decode_index(h, data + start, (size_t)(trailer - start), start, &entries,
				   &count);
	harness_check(ret == 0 || ret == -ENODATA || ret == -EBADMSG || ret == -ENOMEM);
	if (ret < 0)
		return;
	for (uint64_t i = 0; i < count; i++) {
		struct uffdwp__decoder dec = { 0 };
		struct uffdwp__record rec;
		const struct uffdwp__index_entry *e = &entries[i];
		uint64_t bytes = e->kind == UFFDWP__INDEX_PAGES
			? uffdwp__format_page_record_size(h->page_size) : e->bytes;

		harness_check(uffdwp__index_find(entries, count, e->addr, h->page_size) == e);
		if (e->kind == UFFDWP__INDEX_ZERO)
			continue;
		uffdwp__decoder_init_record(&dec, h, data + e->offset, (size_t)bytes, e->offset);
		ret = uffdwp__decode_next(&dec, &rec);
		/* in a sound stream the index points at real records */
		if (sound)
			harness_check(ret == 1 && rec.addr == e->addr && rec.offset == e->offset);
		uffdwp__decoder_release(&dec);
	}
	free(entries);
}

/* Decode data both ways and insist on the same outcome; returns it. */
static inline int harness_decode(const unsigned char *data, size_t len)
{
	struct harness_source src = { .data = data, .len = len };
	struct uffdwp__decoder from_buffer, from_reader;
	struct uffdwp__record a, b;
	uint64_t prev_offset = 0;
	int ra, rb;

	uffdwp__decoder_init_buffer(&from_buffer, data, len);
	uffdwp__decoder_init_reader(&from_reader, harness_read, &src);
	do {
		ra = uffdwp__decode_next(&from_buffer, &a);
		rb = uffdwp__decode_next(&from_reader, &b);
		harness_check(ra == rb);
		if (ra != 1)
			break;
		harness_check_record(&from_buffer, &a, prev_offset, len);
		harness_check(a.type == b.type && a.offset == b.offset && a.addr == b.addr &&
			      a.npages == b.npages);
		if (a.type == UFFDWP__RECORD_PAGE)
			harness_check(!memcmp(a.data, b.data,
					      a.npages * from_buffer.header.page_size));
		prev_offset = a.offset;
	} while (1);
	if (ra < 0) {
		harness_check(from_buffer.error == ra && from_reader.error == ra);
		harness_check(from_buffer.error_offset == from_reader.error_offset);
		harness_check(from_buffer.error_msg[0] != '\0');
		harness_check(!strcmp(from_buffer.error_msg, from_reader.error_msg));
		/* the error is sticky */
		harness_check(uffdwp__decode_next(&from_buffer, &a) == ra);
	} else {
		struct uffdwp__format_totals alone;

		harness_check(from_buffer.offset == len && from_reader.offset == len);
		harness_check(!memcmp(&from_buffer.totals, &from_reader.totals,
				      sizeof(from_buffer.totals)));
		/* what a reader that seeks to the end finds agrees */
		harness_check(uffdwp__decode_trailer(&from_buffer.header,
						     data + len - UFFDWP__FORMAT_TRAILER_SIZE,
						     &alone) == 0);
		harness_check(!memcmp(&alone, &from_buffer.totals, sizeof(alone)));
		if (from_buffer.header.version >= 2)
			harness_check_index(&from_buffer.header, data, len,
					    from_buffer.totals.trailer_offset, true);
	}
	/* and a trailer read alone from the end of any stream is safe */
	if (from_buffer.header.regions && len >= UFFDWP__FORMAT_TRAILER_SIZE) {
		struct uffdwp__format_totals alone;
		int r = uffdwp__decode_trailer(&from_buffer.header,
					       data + len - UFFDWP__FORMAT_TRAILER_SIZE, &alone);

		harness_check(r == 0 || r == -ENODATA || r == -EBADMSG);
		if (from_buffer.header.version >= 2)
			harness_check_index(&from_buffer.header, data, len,
					    len - UFFDWP__FORMAT_TRAILER_SIZE, false);
	}
	uffdwp__decoder_release(&from_buffer);
	uffdwp__decoder_release(&from_reader);
	return ra;
}

/*
 * Decode data as it is and with its checksums fixed. Returns the outcome of
 * the data as it is (0 or a negative errno).
 */
static inline int harness_run(const unsigned char *data, size_t len)
{
	int ret = harness_decode(data, len);
	unsigned char *fixed = malloc(len ? len : 1);

	if (fixed) {
		memcpy(fixed, data, len);
		harness_fix_checksums(fixed, len);
		harness_decode(fixed, len);
		free(fixed);
	}
	return ret;
}

#endif
