/* SPDX-License-Identifier: MIT */
/*
 * The snapshot file format: pure encode and decode, no system calls and no
 * knowledge of memory, so that it can be fuzzed on its own. The byte-by-byte
 * description is man/uffdwp-snapshot.5; in short (all integers little-endian):
 *
 *   header   "UFFDWPSN" version flags page_size region_count
 *            snapshot_id parent_id time_ns {addr len}[region_count] sum
 *   records  in any order, each: tag flags addr body sum
 *              PAGE  body = the page's contents (page_size bytes)
 *              ZERO  body = npages: a run of pages that read as zero
 *   trailer  tag "TRLR": record_count page_count zero_count stream_sum, sum
 *
 * Every record carries a checksum of its own bytes, seeded with the snapshot
 * id (a record spliced in from another snapshot fails); the trailer's
 * stream_sum chains the header's and every record's checksum in stream order
 * (dropped, duplicated or reordered records fail). A page of a region that no
 * record names is zero in a full snapshot (parent_id 0) and unchanged from the
 * parent in an incremental one; so a writer may omit zero pages from a full
 * snapshot, but must record a page that became zero in an incremental one
 * with a ZERO record. Writers should use ZERO records in both cases (they are
 * 32 bytes for any run of pages, and let `info` count the zero pages).
 *
 * Errors, everywhere below (negative errno values):
 *   -EINVAL   the caller's mistake (encoder: bad header, address outside the
 *             regions, call out of order);
 *   -ENOSPC   the caller's buffer is too small (nothing was consumed);
 *   -EBADMSG  the stream is corrupt: bad magic, a checksum mismatch, a field
 *             out of range, an address outside the regions, totals that do
 *             not match, bytes after the trailer;
 *   -ENOTSUP  the stream is a format version (or has header flags) this
 *             reader does not know;
 *   -ENODATA  the stream ends before its trailer (truncated, or still being
 *             written);
 *   -ENOMEM   the decoder could not allocate its (bounded) buffers;
 *   other     whatever the decoder's read function returned.
 */
#ifndef UFFDWP_FORMAT_H
#define UFFDWP_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "uffdwp.h"

#define UFFDWP__FORMAT_HIDDEN __attribute__((visibility("hidden")))

#define UFFDWP__FORMAT_MAGIC     "UFFDWPSN"  /* 8 bytes, no terminator on the wire */
#define UFFDWP__FORMAT_MAGIC_LEN 8
#define UFFDWP__FORMAT_VERSION   1

/* Limits a reader enforces before trusting a size read from the stream. */
#define UFFDWP__FORMAT_MIN_PAGE_SIZE 512u
#define UFFDWP__FORMAT_MAX_PAGE_SIZE (1u << 20)
#define UFFDWP__FORMAT_MAX_REGIONS   (1u << 20)

/* Sizes on the wire. */
#define UFFDWP__FORMAT_HEADER_FIXED  48  /* the header before its regions */
#define UFFDWP__FORMAT_REGION_SIZE   16
#define UFFDWP__FORMAT_HEAD_SIZE     16  /* a record's tag, flags, addr */
#define UFFDWP__FORMAT_SUM_SIZE      8   /* a record's closing checksum */
#define UFFDWP__FORMAT_ZERO_SIZE     32
#define UFFDWP__FORMAT_TRAILER_SIZE  56

/* The record tags: four ASCII letters, read as a little-endian u32. */
#define UFFDWP__FORMAT_TAG_PAGE    0x45474150u  /* "PAGE" */
#define UFFDWP__FORMAT_TAG_ZERO    0x4f52455au  /* "ZERO" */
#define UFFDWP__FORMAT_TAG_TRAILER 0x524c5254u  /* "TRLR" */

static inline size_t uffdwp__format_header_size(uint32_t region_count)
{
	return UFFDWP__FORMAT_HEADER_FIXED + (size_t)region_count * UFFDWP__FORMAT_REGION_SIZE +
	       UFFDWP__FORMAT_SUM_SIZE;
}

static inline size_t uffdwp__format_page_record_size(uint32_t page_size)
{
	return UFFDWP__FORMAT_HEAD_SIZE + (size_t)page_size + UFFDWP__FORMAT_SUM_SIZE;
}

/*
 * The format's 64-bit checksum of len bytes (any alignment) with a seed.
 * Four independent multiply-rotate lanes over little-endian 8-byte words,
 * several GB/s; it detects every change confined to one 8-byte word and
 * others with high probability. Not cryptographic: it finds corruption, it
 * does not resist an attacker.
 */
uint64_t uffdwp__sum64(const void *data, size_t len, uint64_t seed) UFFDWP__FORMAT_HIDDEN;

/* What a header says. regions: sorted by address, non-overlapping. */
struct uffdwp__format_header {
	uint32_t version;      /* UFFDWP__FORMAT_VERSION when encoding */
	uint32_t page_size;    /* a power of two within the limits above */
	uint64_t snapshot_id;  /* non-zero */
	uint64_t parent_id;    /* 0: a full snapshot; else the snapshot this one increments */
	uint64_t time_ns;      /* the snapshot instant, CLOCK_REALTIME, as the writer chose */
	uint32_t region_count; /* 1 .. UFFDWP__FORMAT_MAX_REGIONS */
	const struct uffdwp_snapshot_region *regions;
};

/* What a trailer says (and what an encoder or decoder has counted so far). */
struct uffdwp__format_totals {
	uint64_t record_count;  /* PAGE and ZERO records, the trailer not counted */
	uint64_t page_count;    /* PAGE records */
	uint64_t zero_count;    /* pages covered by ZERO records */
	uint64_t stream_sum;    /* the chain of the header's and records' checksums */
};

/*
 * True when totals t can describe a stream of header h with no page named
 * twice: no more PAGE records than records, and no more pages (stored and
 * zero) than the regions hold. A reader checks it before it trusts a
 * trailer's counts (a zero count of 2^60 over 12 pages is a lie).
 */
bool uffdwp__format_totals_fit(const struct uffdwp__format_header *h,
			       const struct uffdwp__format_totals *t) UFFDWP__FORMAT_HIDDEN;

/* True when len bytes at data are all zero. */
bool uffdwp__format_is_zero(const void *data, size_t len) UFFDWP__FORMAT_HIDDEN;

/* ---- encoding -------------------------------------------------------------
 * An encoder turns one snapshot into bytes, one piece at a time, into the
 * caller's buffers: the header first, then PAGE/ZERO records in any order,
 * then the trailer. It keeps no pointer to those buffers. Calls on one
 * encoder must be made in the order the bytes go out, one at a time; only
 * uffdwp__format_page_sum() may run concurrently with them.
 */
struct uffdwp__encoder {
	/* private: set by uffdwp__encoder_init() */
	struct uffdwp__format_header header;  /* regions stay the caller's */
	struct uffdwp__format_totals totals;
	uint64_t offset;  /* bytes encoded so far */
	enum { UFFDWP__ENC_HEADER, UFFDWP__ENC_RECORDS, UFFDWP__ENC_DONE } state;
};

/*
 * Start encoding a snapshot described by h. h->regions must stay valid and
 * unchanged until the trailer is encoded. Returns 0, or -EINVAL when h is
 * not a valid header (version, page size, ids, regions unsorted, overlapping,
 * empty, unaligned or wrapping).
 */
int uffdwp__encoder_init(struct uffdwp__encoder *enc,
			 const struct uffdwp__format_header *h) UFFDWP__FORMAT_HIDDEN;

/*
 * Encode the header into buf: returns its size, uffdwp__format_header_size(
 * region_count), or -ENOSPC (cap too small), -EINVAL (not the first call).
 */
ssize_t uffdwp__encode_header(struct uffdwp__encoder *enc, void *buf,
			      size_t cap) UFFDWP__FORMAT_HIDDEN;

/*
 * Encode a PAGE record for the page at addr whose contents are page
 * (page_size bytes) into buf: returns uffdwp__format_page_record_size(), or
 * -ENOSPC, or -EINVAL (addr unaligned or outside the regions, header not yet
 * encoded, trailer already encoded).
 */
ssize_t uffdwp__encode_page(struct uffdwp__encoder *enc, uint64_t addr, const void *page,
			    void *buf, size_t cap) UFFDWP__FORMAT_HIDDEN;

/*
 * The same PAGE record without copying the page: fills head
 * (UFFDWP__FORMAT_HEAD_SIZE bytes) and tail (UFFDWP__FORMAT_SUM_SIZE bytes);
 * the record on the wire is head, the page, tail (e.g. one writev(2)).
 * Returns 0 or -EINVAL as uffdwp__encode_page().
 */
int uffdwp__encode_page_frame(struct uffdwp__encoder *enc, uint64_t addr, const void *page,
			      void *head, void *tail) UFFDWP__FORMAT_HIDDEN;

/*
 * The checksum a PAGE record for (addr, page) carries: pure, safe to call
 * from any thread while the encoder is in use (e.g. right after copying a
 * page, while it is in cache), then pass it to
 * uffdwp__encode_page_frame_summed().
 */
uint64_t uffdwp__format_page_sum(const struct uffdwp__encoder *enc, uint64_t addr,
				 const void *page) UFFDWP__FORMAT_HIDDEN;

/* uffdwp__encode_page_frame() with the record checksum computed beforehand. */
int uffdwp__encode_page_frame_summed(struct uffdwp__encoder *enc, uint64_t addr,
				     uint64_t sum, void *head, void *tail) UFFDWP__FORMAT_HIDDEN;

/*
 * Encode a ZERO record: npages pages from addr read as zero; the run must
 * lie in one region. Returns UFFDWP__FORMAT_ZERO_SIZE, -ENOSPC or -EINVAL.
 */
ssize_t uffdwp__encode_zero(struct uffdwp__encoder *enc, uint64_t addr, uint64_t npages,
			    void *buf, size_t cap) UFFDWP__FORMAT_HIDDEN;

/*
 * Encode the trailer, which ends the stream: returns
 * UFFDWP__FORMAT_TRAILER_SIZE, -ENOSPC or -EINVAL (header not encoded, or
 * trailer already encoded). enc->totals then holds what it says.
 */
ssize_t uffdwp__encode_trailer(struct uffdwp__encoder *enc, void *buf,
			       size_t cap) UFFDWP__FORMAT_HIDDEN;

/* ---- decoding -------------------------------------------------------------
 * A decoder walks one stream from a buffer or a read function and checks
 * everything before handing it out. Its memory is bounded by the format's
 * limits and by the bytes actually present, never by a size the stream
 * claims. The first error is sticky: later calls return it again.
 */

/*
 * Read up to len bytes into buf: returns the number read (0 only at the end
 * of the stream) or a negative errno, which the decoder passes through.
 */
typedef ssize_t (*uffdwp__read_fn)(void *arg, void *buf, size_t len);

enum uffdwp__record_type {
	UFFDWP__RECORD_PAGE = 1,
	UFFDWP__RECORD_ZERO,
};

struct uffdwp__record {
	enum uffdwp__record_type type;
	uint64_t offset;   /* where the record starts in the stream */
	uint64_t addr;     /* page-aligned, inside a region */
	uint64_t npages;   /* PAGE: 1; ZERO: the run's length, inside one region */
	const void *data;  /* PAGE: page_size bytes, valid until the next call */
};

struct uffdwp__decoder {
	/* public once uffdwp__decode_header() returned 0 */
	struct uffdwp__format_header header;  /* regions owned by the decoder */
	uint64_t offset;                      /* bytes consumed so far */
	struct uffdwp__format_totals totals;  /* counted so far; the trailer's at the end */
	/* the first error: its errno, the offset of the field or record at
	 * fault, and a sentence saying what is wrong */
	int error;
	uint64_t error_offset;
	char error_msg[160];

	/* private */
	const unsigned char *buf;  /* buffer source */
	size_t len;
	uffdwp__read_fn read;      /* read-function source */
	void *read_arg;
	struct uffdwp_snapshot_region *owned_regions;
	unsigned char *page;       /* page_size bytes, for PAGE records */
	enum { UFFDWP__DEC_HEADER, UFFDWP__DEC_RECORDS, UFFDWP__DEC_DONE } state;
};

/* Decode the stream held in buf[0..len) (the decoder keeps the pointer). */
void uffdwp__decoder_init_buffer(struct uffdwp__decoder *dec, const void *buf,
				 size_t len) UFFDWP__FORMAT_HIDDEN;

/* Decode the stream that fn returns, reading no further than it needs. */
void uffdwp__decoder_init_reader(struct uffdwp__decoder *dec, uffdwp__read_fn fn,
				 void *arg) UFFDWP__FORMAT_HIDDEN;

/*
 * Decode and check the header: returns 0 (dec->header is then valid) or a
 * negative errno (see the top of this file).
 */
int uffdwp__decode_header(struct uffdwp__decoder *dec) UFFDWP__FORMAT_HIDDEN;

/*
 * Decode the next record into *rec: returns 1 for a PAGE or ZERO record, 0
 * when the trailer has been read and checked (the totals and stream checksum
 * match, and nothing follows it), or a negative errno. Decodes the header
 * first if uffdwp__decode_header() was not called.
 */
int uffdwp__decode_next(struct uffdwp__decoder *dec,
			struct uffdwp__record *rec) UFFDWP__FORMAT_HIDDEN;

/* Free what the decoder allocated; it may then be initialised again. */
void uffdwp__decoder_release(struct uffdwp__decoder *dec) UFFDWP__FORMAT_HIDDEN;

/*
 * Check a trailer on its own (its tag, flags and checksum), e.g. one read
 * from the end of a file: buf holds UFFDWP__FORMAT_TRAILER_SIZE bytes.
 * Returns 0 and fills *t, -ENODATA when buf does not hold a trailer tag (the
 * stream is truncated or unfinished), -EBADMSG when it is damaged. The stream
 * checksum it carries can only be checked by decoding the whole stream.
 */
int uffdwp__decode_trailer(const struct uffdwp__format_header *h, const void *buf,
			   struct uffdwp__format_totals *t) UFFDWP__FORMAT_HIDDEN;

#endif
