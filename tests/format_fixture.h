/* SPDX-License-Identifier: MIT */
/*
 * A small snapshot world for the format tests: two regions of the system
 * page size, streams encoded from a list of records, the image each chain
 * should restore to, and files in a scratch directory.
 *
 * The image is the regions laid end to end (uffdwp-snapshot(5)); a record
 * names pages by their index in it.
 */
#ifndef UFFDWP_FORMAT_FIXTURE_H
#define UFFDWP_FORMAT_FIXTURE_H

#include "test.h"
#include "format.h"

#define FX_REGIONS 2
#define FX_PAGES   12   /* 4 in the first region, 8 in the second */
#define FX_MAX_RECORDS 32

struct fx_record {
	enum uffdwp__record_type type;
	size_t page;     /* index of the (first) page in the image */
	size_t npages;   /* ZERO only */
	unsigned char fill;  /* PAGE: seeds the contents */
};

struct fx_stream {
	unsigned char *buf;
	size_t len;
	size_t record_at[FX_MAX_RECORDS + 1];  /* offsets; [nrecords] is the trailer's */
	size_t nrecords;
	size_t header_len;
};

/* The regions (static storage) and the address of image page i. */
const struct uffdwp_snapshot_region *fx_regions(void);
uint64_t fx_addr(size_t page);
size_t fx_image_size(void);

/* The contents fx_build() gives a PAGE record with this fill. */
void fx_page_contents(unsigned char *page, unsigned char fill);

/*
 * Encode a snapshot holding recs; when image is not NULL, apply them to it
 * (the caller zeroes it first for a full snapshot). Fails the test on any
 * encoder error. free(s->buf) when done.
 */
void fx_build(struct fx_stream *s, uint64_t id, uint64_t parent, const struct fx_record *recs,
	      size_t n, unsigned char *image);

/* The standard full snapshot (id 0x1111) and an incremental on it (0x2222). */
extern const struct fx_record fx_full_records[];
extern const size_t fx_full_count;
extern const struct fx_record fx_incr_records[];
extern const size_t fx_incr_count;

/* Decode a buffer to the end: 0 or the decoder's error; *dec is released. */
int fx_decode(const void *buf, size_t len, struct uffdwp__decoder *dec);

/* Write a file named name in a scratch directory (made on first use, removed
 * with its files by fx_cleanup()); returns its path, for the caller to free. */
char *fx_write_file(const char *name, const void *buf, size_t len);
void fx_cleanup(void);

/* The whole contents of the file at path (malloc'd, for the caller to free). */
unsigned char *fx_read_file(const char *path, size_t *len);

#endif
