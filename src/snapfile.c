/* SPDX-License-Identifier: MIT */
/*
 * Snapshot files on disk: info, verify and restore (uffdwp_snapshot_file_*,
 * uffdwp_snapshot_restore_*). The bytes are format.c's business; this file
 * does the I/O around it and turns a decoder's findings into a
 * struct uffdwp_snapshot_error.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "backend.h"
#include "format.h"
#include "maps.h"

/* Read-ahead of the buffered reader the decoder pulls from. */
#define READ_BUFFER (256 * 1024)

/* Zeroes written at a time where a hole cannot be punched. */
#define ZERO_CHUNK (64 * 1024)

/* ---- errors ---------------------------------------------------------------- */

static int check_error_arg(struct uffdwp_snapshot_error *err)
{
	if (!err)
		return 0;
	if (err->sz < sizeof(*err))
		return -EINVAL;
	err->file = 0;
	err->offset = 0;
	err->message[0] = '\0';
	return 0;
}

/* Describe the first failure in err (if any) and return ret. */
__attribute__((format(printf, 5, 6)))
static int report(struct uffdwp_snapshot_error *err, size_t file, uint64_t offset, int ret,
		  const char *fmt, ...)
{
	va_list ap;

	if (!err || err->message[0])
		return ret;
	err->file = file;
	err->offset = offset;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return ret;
}

/* A failure that is not in the file's bytes: which file, no message. */
static int report_file(struct uffdwp_snapshot_error *err, size_t file, int ret)
{
	if (err && !err->message[0])
		err->file = file;
	return ret;
}

static int report_decoder(struct uffdwp_snapshot_error *err, size_t file,
			  const struct uffdwp__decoder *dec)
{
	return report(err, file, dec->error_offset, dec->error, "%s", dec->error_msg);
}

/* ---- one open snapshot file ---------------------------------------------------- */

struct snapshot_file {
	int fd;
	struct stat st;
	unsigned char *buf;  /* read-ahead for the decoder */
	size_t pos, end;
	struct uffdwp__decoder dec;
	struct uffdwp__format_totals totals;  /* the trailer's, once read */
};

static ssize_t buffered_read(void *arg, void *dst, size_t len)
{
	struct snapshot_file *f = arg;

	if (f->pos == f->end) {
		ssize_t n;

		/* Large reads go straight to the caller, small ones refill. */
		if (len >= READ_BUFFER) {
			n = read(f->fd, dst, len);
			return n < 0 ? -errno : n;
		}
		n = read(f->fd, f->buf, READ_BUFFER);
		if (n < 0)
			return -errno;
		f->pos = 0;
		f->end = (size_t)n;
		if (n == 0)
			return 0;
	}
	if (len > f->end - f->pos)
		len = f->end - f->pos;
	memcpy(dst, f->buf + f->pos, len);
	f->pos += len;
	return (ssize_t)len;
}

static void close_file(struct snapshot_file *f)
{
	uffdwp__decoder_release(&f->dec);
	free(f->buf);
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	f->buf = NULL;
}

/*
 * Open path and decode its header. need_seek: info and restore read the end
 * of the file first and restore reads it twice, so they take regular files
 * only (-ESPIPE); verify reads any stream once, front to back.
 */
static int open_file(struct snapshot_file *f, const char *path, size_t index, bool need_seek,
		     struct uffdwp_snapshot_error *err)
{
	int ret;

	memset(f, 0, sizeof(*f));
	uffdwp__decoder_init_reader(&f->dec, buffered_read, f);
	/* Failures before the first byte is read are not the contents' fault:
	 * they leave err->message empty. O_NONBLOCK: opening a FIFO that has
	 * no writer must not hang; reads block again below. */
	f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (f->fd < 0 || fstat(f->fd, &f->st) < 0)
		return report_file(err, index, -errno);
	if (S_ISDIR(f->st.st_mode))
		return report_file(err, index, -EISDIR);
	if (need_seek && !S_ISREG(f->st.st_mode))
		return report_file(err, index, -ESPIPE);
	/* A FIFO without a writer now reads as an empty stream (-ENODATA). */
	if (fcntl(f->fd, F_SETFL, 0) < 0)
		return report_file(err, index, -errno);
	f->buf = malloc(READ_BUFFER);
	if (!f->buf)
		return report_file(err, index, -ENOMEM);
	ret = uffdwp__decode_header(&f->dec);
	return ret < 0 ? report_decoder(err, index, &f->dec) : 0;
}

/*
 * Read and check the trailer at the end of the regular file (whose header
 * is decoded), and that the file's size is what the trailer's totals make it.
 */
static int read_trailer(struct snapshot_file *f, size_t index, struct uffdwp_snapshot_error *err)
{
	const struct uffdwp__format_header *h = &f->dec.header;
	uint64_t header_size = uffdwp__format_header_size(h->region_count);
	uint64_t size = (uint64_t)f->st.st_size;
	unsigned char raw[UFFDWP__FORMAT_TRAILER_SIZE];
	uint64_t at, pages, zeros, expected;
	struct uffdwp__format_totals *t = &f->totals;
	ssize_t n;
	int ret;

	if (size < header_size + UFFDWP__FORMAT_TRAILER_SIZE)
		return report(err, index, size, -ENODATA,
			      "truncated: %llu bytes leave no room for records and a trailer",
			      (unsigned long long)size);
	at = size - UFFDWP__FORMAT_TRAILER_SIZE;
	n = pread(f->fd, raw, sizeof(raw), (off_t)at);
	if (n < 0)
		return report(err, index, at, -errno, "read error: %s", strerror(errno));
	if ((size_t)n < sizeof(raw))
		return report(err, index, at, -ENODATA, "truncated while being read");
	ret = uffdwp__decode_trailer(h, raw, t);
	if (ret == -ENODATA)
		return report(err, index, at, ret, "no trailer at the end: the file is truncated "
			      "or its snapshot is still being written");
	if (ret < 0)
		return report(err, index, at, ret, "the trailer is damaged (checksum mismatch)");
	if (!uffdwp__format_totals_fit(h, t))
		return report(err, index, at, -EBADMSG,
			      "the trailer counts %llu records, %llu pages and %llu zero pages: "
			      "more than the regions hold", (unsigned long long)t->record_count,
			      (unsigned long long)t->page_count, (unsigned long long)t->zero_count);
	/* Version 2 records its offset (compressed records have no fixed size). */
	if (h->version >= 2) {
		if (t->trailer_offset != at)
			return report(err, index, at, -EBADMSG,
				      "the trailer says it starts at byte %llu: bytes were lost or "
				      "added before it", (unsigned long long)t->trailer_offset);
		return 0;
	}
	if (__builtin_mul_overflow(t->page_count, uffdwp__format_page_record_size(h->page_size),
				   &pages) ||
	    __builtin_mul_overflow(t->record_count - t->page_count, UFFDWP__FORMAT_ZERO_SIZE,
				   &zeros) ||
	    __builtin_add_overflow(pages, zeros, &expected) ||
	    __builtin_add_overflow(expected, header_size + UFFDWP__FORMAT_TRAILER_SIZE, &expected) ||
	    expected != size)
		return report(err, index, at, -EBADMSG,
			      "the file is %llu bytes, not what its trailer's totals make it "
			      "(%llu records, %llu of them pages)",
			      (unsigned long long)size, (unsigned long long)t->record_count,
			      (unsigned long long)t->page_count);
	return 0;
}

static void fill_info(struct uffdwp_snapshot_info *info, const struct snapshot_file *f,
		      uint64_t file_size)
{
	const struct uffdwp__format_header *h = &f->dec.header;
	size_t sz = info->sz;

	memset(info, 0, sizeof(*info));
	info->sz = sz;
	info->version = h->version;
	info->page_size = h->page_size;
	info->snapshot_id = h->snapshot_id;
	info->parent_id = h->parent_id;
	info->time_ns = h->time_ns;
	info->region_count = h->region_count;
	for (uint32_t i = 0; i < h->region_count; i++)
		info->region_bytes += h->regions[i].len;
	info->record_count = f->totals.record_count;
	info->page_count = f->totals.page_count;
	info->zero_count = f->totals.zero_count;
	info->file_size = file_size;
}

int uffdwp_snapshot_file_info(const char *path, struct uffdwp_snapshot_info *info,
			      struct uffdwp_snapshot_region *regions, size_t max_regions,
			      struct uffdwp_snapshot_error *err)
{
	struct snapshot_file f;
	int ret = check_error_arg(err);

	if (ret < 0 || !path || !info || info->sz < sizeof(*info) || (max_regions && !regions))
		return -EINVAL;
	ret = open_file(&f, path, 0, true, err);
	if (ret == 0)
		ret = read_trailer(&f, 0, err);
	if (ret == 0) {
		const struct uffdwp__format_header *h = &f.dec.header;

		fill_info(info, &f, (uint64_t)f.st.st_size);
		for (size_t i = 0; i < max_regions && i < h->region_count; i++)
			regions[i] = h->regions[i];
	}
	close_file(&f);
	return ret;
}

/* ---- the checks of every record: verify's, and restore's first pass ---------- */

/* The pages a file names, as runs, to find a page named twice. */
struct page_run {
	uint64_t addr, npages;
	uint64_t offset;  /* of the record that starts the run */
};

struct run_list {
	struct page_run *runs;
	size_t n, cap;
};

/* Add a record's pages; a record continuing the last run extends it, so a
 * sequential writer's file costs a handful of runs. */
static int note_run(struct run_list *l, const struct uffdwp__record *rec, uint32_t page_size)
{
	struct page_run *last = l->n ? &l->runs[l->n - 1] : NULL;

	if (last && last->addr + last->npages * page_size == rec->addr) {
		last->npages += rec->npages;
		return 0;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 256;
		struct page_run *grown = realloc(l->runs, cap * sizeof(*grown));

		if (!grown)
			return -ENOMEM;
		l->runs = grown;
		l->cap = cap;
	}
	l->runs[l->n++] = (struct page_run){ rec->addr, rec->npages, rec->offset };
	return 0;
}

static int by_addr(const void *a, const void *b)
{
	const struct page_run *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* The first run that overlaps the one before it in address order, or NULL. */
static const struct page_run *find_overlap(struct run_list *l, uint32_t page_size)
{
	if (l->n < 2)
		return NULL;
	qsort(l->runs, l->n, sizeof(*l->runs), by_addr);
	for (size_t i = 1; i < l->n; i++) {
		const struct page_run *prev = &l->runs[i - 1];

		/* Runs lie inside regions, so the end cannot wrap. */
		if (l->runs[i].addr < prev->addr + prev->npages * page_size)
			return &l->runs[i];
	}
	return NULL;
}

/*
 * Decode every record of the open file up to and including its trailer:
 * every checksum, address and count, and no page named twice. The one
 * definition of a sound file, for verify and for restore (which replays
 * only files that passed it). Returns 0 or a negative errno, described in err.
 */
static int check_records(struct snapshot_file *f, size_t index, struct uffdwp_snapshot_error *err)
{
	struct run_list runs = { 0 };
	const struct page_run *twice;
	struct uffdwp__record rec;
	int ret;

	while ((ret = uffdwp__decode_next(&f->dec, &rec)) == 1) {
		ret = note_run(&runs, &rec, f->dec.header.page_size);
		if (ret < 0) {
			report_file(err, index, ret);
			break;
		}
	}
	if (ret < 0 && f->dec.error)
		report_decoder(err, index, &f->dec);
	if (ret == 0) {
		twice = find_overlap(&runs, f->dec.header.page_size);
		if (twice)
			ret = report(err, index, twice->offset, -EBADMSG,
				     "page 0x%llx is recorded twice (again in the record here)",
				     (unsigned long long)twice->addr);
	}
	free(runs.runs);
	return ret;
}

int uffdwp_snapshot_file_verify(const char *path, struct uffdwp_snapshot_info *info,
				struct uffdwp_snapshot_error *err)
{
	struct snapshot_file f;
	int ret = check_error_arg(err);

	if (ret < 0 || !path || (info && info->sz < sizeof(*info)))
		return -EINVAL;
	ret = open_file(&f, path, 0, false, err);
	if (ret == 0)
		ret = check_records(&f, 0, err);
	if (ret == 0 && info) {
		f.totals = f.dec.totals;
		fill_info(info, &f, f.dec.offset);
	}
	close_file(&f);
	return ret;
}

/* ---- restore --------------------------------------------------------------- */

/*
 * A restore reads the chain twice, one file open at a time (so a chain of
 * any length needs one descriptor and one read buffer): first every file is
 * checked whole, as verify checks it, with the links between files; only
 * then is the target prepared and each file replayed into it. What the
 * first pass saw of each file is kept to make sure the second reads the
 * same file.
 */
struct file_identity {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
};

static struct file_identity identity_of(const struct stat *st)
{
	return (struct file_identity){ st->st_dev, st->st_ino, st->st_size, st->st_mtim };
}

static bool same_identity(const struct file_identity *a, const struct file_identity *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Where a chain's pages go: the image, or memory at the recorded addresses. */
struct target {
	enum { TARGET_FD, TARGET_MAPPING, TARGET_IN_PLACE } kind;
	int fd;
	struct stat fd_st;  /* TARGET_FD: the file, which must be no file of the chain */
	unsigned char *mapping;
	struct uffdwp__format_header header;  /* the head's, regions owned */
	uint64_t *image_offset;  /* of each region in the image */
	uint64_t image_size;
};

/* Where the byte at addr (inside a region) lies in the image. */
static uint64_t image_offset(const struct target *t, uint64_t addr)
{
	const struct uffdwp__format_header *h = &t->header;
	uint32_t lo = 0, hi = h->region_count;

	/* the last region that starts at or before addr */
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (h->regions[mid].addr <= addr)
			lo = mid;
		else
			hi = mid;
	}
	return t->image_offset[lo] + (addr - h->regions[lo].addr);
}

static int pwrite_all(int fd, const void *data, size_t len, uint64_t at)
{
	const unsigned char *p = data;

	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)at);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
		at += (uint64_t)n;
	}
	return 0;
}

/* Make len bytes of the image file at `at` read as zero. */
static int zero_fd(int fd, uint64_t at, uint64_t len)
{
	static const unsigned char zeros[ZERO_CHUNK];

	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)at, (off_t)len) == 0)
		return 0;
	if (errno != EOPNOTSUPP && errno != ENOSYS)
		return -errno;
	while (len) {
		size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
		int ret = pwrite_all(fd, zeros, n, at);

		if (ret < 0)
			return ret;
		at += n;
		len -= n;
	}
	return 0;
}

/*
 * Make [p, p + len) of a private anonymous mapping of ours read as zero
 * without populating it: MADV_DONTNEED gives such a mapping fresh zero pages
 * on the next touch (so a ZERO record over 4 GiB costs a page-table walk,
 * not 4 GiB of memory); only the partial system pages at the ends (a file's
 * page size may be smaller) are written.
 */
static void zero_own_mapping(unsigned char *p, uint64_t len)
{
	uintptr_t mask = uffdwp__page_size() - 1;
	uintptr_t start = (uintptr_t)p, end = start + len;
	uintptr_t lo = (start + mask) & ~mask, hi = end & ~mask;

	if (lo >= hi) {
		memset(p, 0, len);
		return;
	}
	memset(p, 0, lo - start);
	memset((void *)hi, 0, end - hi);
	/* Cannot fail on a page-aligned range of a mapping we made. */
	madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Write zeros over the pages of [p, p + len) that are not zero already. */
static void zero_by_writing(unsigned char *p, uint64_t len, size_t page)
{
	for (uint64_t off = 0; off < len; off += page)
		if (!uffdwp__format_is_zero(p + off, page))
			memset(p + off, 0, page);
}

/*
 * Make [lo, hi) of one mapping read as zero, populating nothing that was
 * not populated: private anonymous memory is dropped (MADV_DONTNEED gives it
 * fresh zero pages on the next touch); shared memory (shmem, a shared file)
 * has the range punched out (MADV_REMOVE, which every mapper then sees as
 * zero, as it would have seen written zeros). A private file mapping would
 * revert to the file under either, so it, and whatever refuses the advice
 * (mlocked or huge-page memory), is written: reading a page first costs
 * nothing extra there, and only pages that are not zero are written.
 * Reading never-touched anonymous memory is not free (this kernel counts
 * the zero pages it maps in RSS), which is why it is dropped instead.
 */
static void zero_mapping(uintptr_t lo, uintptr_t hi, bool shared, bool anonymous, size_t page)
{
	int advice = shared ? MADV_REMOVE : anonymous ? MADV_DONTNEED : -1;

	if (advice < 0 || madvise((void *)lo, hi - lo, advice) < 0)
		zero_by_writing((unsigned char *)lo, hi - lo, page);
}

struct zero_walk {
	uintptr_t next;  /* the first byte not zeroed yet */
	size_t page;
};

static bool zero_one_mapping(void *arg, const struct uffdwp__mapping *m)
{
	struct zero_walk *z = arg;

	if (m->start > z->next)
		return false;  /* a hole: the caller checked there is none */
	zero_mapping(m->start, m->end, m->shared, m->anonymous, z->page);
	z->next = m->end;
	return true;
}

/*
 * Make [p, p + len) of memory of any kind read as zero (zero_mapping() for
 * each mapping it spans). Returns 0 or a negative errno when the mappings
 * cannot be read.
 */
static int zero_memory(unsigned char *p, uint64_t len, size_t page)
{
	uintptr_t hi = (uintptr_t)p + len;
	struct zero_walk z = { .next = (uintptr_t)p, .page = page };
	int ret = uffdwp__walk_mappings(z.next, hi, 0, zero_one_mapping, &z);

	if (ret < 0)
		return ret;
	/* Whatever the walk did not cover (the mappings changed under us)
	 * the slow way. */
	if (z.next < hi)
		zero_by_writing((unsigned char *)z.next, hi - z.next, page);
	return 0;
}

/*
 * Apply one record. Zero runs are written only when later_file: the head of
 * a chain is a full snapshot, whose target starts out zero.
 */
static int apply(const struct target *t, const struct uffdwp__record *rec, bool later_file)
{
	uint64_t page_size = t->header.page_size;
	uint64_t len = rec->npages * page_size;
	uint64_t at = t->kind == TARGET_IN_PLACE ? rec->addr : image_offset(t, rec->addr);

	if (rec->type == UFFDWP__RECORD_ZERO && !later_file)
		return 0;
	switch (t->kind) {
	case TARGET_FD:
		return rec->type == UFFDWP__RECORD_PAGE ? pwrite_all(t->fd, rec->data, len, at)
							: zero_fd(t->fd, at, len);
	case TARGET_MAPPING:
		if (rec->type == UFFDWP__RECORD_PAGE)
			memcpy(t->mapping + at, rec->data, len);
		else
			zero_own_mapping(t->mapping + at, len);
		return 0;
	case TARGET_IN_PLACE:
		if (rec->type == UFFDWP__RECORD_PAGE) {
			memcpy((void *)(uintptr_t)at, rec->data, len);
			return 0;
		}
		return zero_memory((unsigned char *)(uintptr_t)at, len, page_size);
	}
	return -EINVAL;
}

static bool same_regions(const struct uffdwp__format_header *a,
			 const struct uffdwp__format_header *b)
{
	return a->region_count == b->region_count &&
	       !memcmp(a->regions, b->regions, a->region_count * sizeof(*a->regions));
}

/* Keep the head's header (its regions copied) once its file is closed. */
static int keep_head(struct target *t, const struct uffdwp__format_header *h)
{
	size_t bytes = h->region_count * sizeof(*h->regions);
	struct uffdwp_snapshot_region *regions = malloc(bytes);

	t->image_offset = malloc(h->region_count * sizeof(*t->image_offset));
	if (!regions || !t->image_offset) {
		free(regions);
		return -ENOMEM;
	}
	memcpy(regions, h->regions, bytes);
	t->header = *h;
	t->header.regions = regions;
	for (uint32_t r = 0; r < h->region_count; r++) {
		t->image_offset[r] = t->image_size;
		t->image_size += h->regions[r].len;
	}
	return 0;
}

/* Check file i's header against the chain so far (and keep the head's). */
static int check_link(struct target *t, size_t i, const struct uffdwp__format_header *h,
		      uint64_t prev_id, struct uffdwp_snapshot_error *err)
{
	if (i == 0) {
		if (h->parent_id)
			return report(err, 0, 0, -EINVAL,
				      "snapshot 0x%llx is incremental (its parent is 0x%llx): "
				      "a chain must start with a full snapshot",
				      (unsigned long long)h->snapshot_id,
				      (unsigned long long)h->parent_id);
		return report_file(err, 0, keep_head(t, h));
	}
	if (h->parent_id != prev_id)
		return report(err, i, 0, -EINVAL,
			      "snapshot 0x%llx has parent 0x%llx, but the file before it "
			      "in the chain is snapshot 0x%llx",
			      (unsigned long long)h->snapshot_id, (unsigned long long)h->parent_id,
			      (unsigned long long)prev_id);
	if (h->page_size != t->header.page_size || !same_regions(h, &t->header))
		return report(err, i, 0, -EINVAL,
			      "snapshot 0x%llx has other regions or another page size "
			      "than its parent", (unsigned long long)h->snapshot_id);
	return 0;
}

/* The first pass: check every file whole, and the links. */
static int check_chain(const char *const *paths, size_t npaths, struct target *t,
		       struct file_identity *ids, struct uffdwp_snapshot_error *err)
{
	uint64_t prev_id = 0;

	for (size_t i = 0; i < npaths; i++) {
		struct snapshot_file f;
		int ret = paths[i] ? open_file(&f, paths[i], i, true, err)
				   : report_file(err, i, -EINVAL);

		if (ret == 0)
			ret = read_trailer(&f, i, err);
		if (ret == 0)
			ret = check_link(t, i, &f.dec.header, prev_id, err);
		if (ret == 0 && t->kind == TARGET_FD && f.st.st_dev == t->fd_st.st_dev &&
		    f.st.st_ino == t->fd_st.st_ino)
			ret = report(err, npaths, 0, -EINVAL,
				     "the restore target is file %zu of the chain (%s): "
				     "restoring into it would destroy it", i, paths[i]);
		if (ret == 0)
			ret = check_records(&f, i, err);
		if (ret == 0) {
			ids[i] = identity_of(&f.st);
			prev_id = f.dec.header.snapshot_id;
		}
		if (paths[i])
			close_file(&f);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* The second pass: replay every record of every (checked) file. */
static int replay(const char *const *paths, size_t npaths, const struct target *t,
		  const struct file_identity *ids, struct uffdwp_snapshot_error *err)
{
	for (size_t i = 0; i < npaths; i++) {
		struct uffdwp__record rec;
		struct snapshot_file f;
		int ret = open_file(&f, paths[i], i, true, err);
		struct file_identity now = identity_of(&f.st);

		if (ret == 0 && !same_identity(&ids[i], &now))
			ret = report(err, i, 0, -ESTALE,
				     "the file changed while the chain was being restored");
		while (ret == 0 && (ret = uffdwp__decode_next(&f.dec, &rec)) == 1) {
			ret = apply(t, &rec, i > 0);
			if (ret < 0)
				report_file(err, npaths, ret);  /* the target's failure */
		}
		if (ret < 0 && f.dec.error)
			report_decoder(err, i, &f.dec);
		close_file(&f);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/*
 * Check the chain, lay out the image from the head's header, call
 * prepare(), replay; on a failed replay call undo() (if any).
 */
static int restore(const char *const *paths, size_t npaths, struct target *t,
		   int (*prepare)(struct target *t), void (*undo)(struct target *t),
		   struct uffdwp_snapshot_error *err)
{
	struct file_identity *ids;
	int ret;

	if (!paths || npaths == 0)
		return -EINVAL;
	ids = calloc(npaths, sizeof(*ids));
	if (!ids)
		return -ENOMEM;
	ret = check_chain(paths, npaths, t, ids, err);
	if (ret == 0) {
		ret = prepare(t);
		if (ret < 0)
			report_file(err, npaths, ret);
	}
	if (ret == 0) {
		ret = replay(paths, npaths, t, ids, err);
		if (ret < 0 && undo)
			undo(t);
	}
	free(t->image_offset);
	free((void *)t->header.regions);
	free(ids);
	return ret;
}

static int prepare_fd(struct target *t)
{
	if (t->image_size > INT64_MAX)
		return -EFBIG;
	/* Empty first, so that every page the chain does not write is a hole. */
	if (ftruncate(t->fd, 0) < 0 || ftruncate(t->fd, (off_t)t->image_size) < 0)
		return -errno;
	return 0;
}

int uffdwp_snapshot_restore_fd(const char *const *paths, size_t npaths, int fd,
			       struct uffdwp_snapshot_error *err)
{
	struct target t = { .kind = TARGET_FD, .fd = fd };
	int ret = check_error_arg(err), flags;

	if (ret < 0)
		return ret;
	flags = fd < 0 ? -1 : fcntl(fd, F_GETFL);
	/* Writes go to offsets: O_APPEND would put every page at the end. */
	if (flags < 0 || (flags & O_PATH) || (flags & O_ACCMODE) == O_RDONLY)
		return report_file(err, npaths, -EBADF);
	if (flags & O_APPEND)
		return report(err, npaths, 0, -EINVAL,
			      "the restore target is open with O_APPEND: pages go to offsets");
	if (fstat(fd, &t.fd_st) < 0)
		return report_file(err, npaths, -errno);
	if (!S_ISREG(t.fd_st.st_mode))
		return report_file(err, npaths, -ESPIPE);
	return restore(paths, npaths, &t, prepare_fd, NULL, err);
}

static int prepare_mapping(struct target *t)
{
	void *p;

	if (t->image_size > SIZE_MAX)
		return -ENOMEM;
	p = mmap(NULL, (size_t)t->image_size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	t->mapping = p;
	return 0;
}

static void unmap(struct target *t)
{
	munmap(t->mapping, (size_t)t->image_size);
	t->mapping = NULL;
}

int uffdwp_snapshot_restore_mapping(const char *const *paths, size_t npaths, void **mapping,
				    size_t *mapping_len, struct uffdwp_snapshot_error *err)
{
	struct target t = { .kind = TARGET_MAPPING };
	int ret = check_error_arg(err);

	if (ret < 0 || !mapping || !mapping_len)
		return -EINVAL;
	ret = restore(paths, npaths, &t, prepare_mapping, unmap, err);
	if (ret < 0)
		return ret;
	*mapping = t.mapping;
	*mapping_len = (size_t)t.image_size;
	return 0;
}

/* -EFAULT unless every byte of the regions is mapped (mincore(2) says
 * ENOMEM for an unmapped page), so a crafted file cannot crash us. */
static int check_mapped(const struct uffdwp__format_header *h)
{
	size_t page = uffdwp__page_size();
	unsigned char vec[256];

	for (uint32_t r = 0; r < h->region_count; r++) {
		uint64_t addr = h->regions[r].addr, end = addr + h->regions[r].len;

		while (addr < end) {
			uint64_t len = end - addr < sizeof(vec) * page ? end - addr
								      : sizeof(vec) * page;

			if (mincore((void *)(uintptr_t)addr, (size_t)len, vec) < 0)
				return errno == ENOMEM ? -EFAULT : -errno;
			addr += len;
		}
	}
	return 0;
}

static int prepare_in_place(struct target *t)
{
	const struct uffdwp__format_header *h = &t->header;
	int ret;

	if (h->page_size != uffdwp__page_size())
		return -EINVAL;
	ret = check_mapped(h);
	if (ret < 0)
		return ret;
	for (uint32_t r = 0; r < h->region_count && ret == 0; r++)
		ret = zero_memory((unsigned char *)(uintptr_t)h->regions[r].addr,
				  h->regions[r].len, h->page_size);
	return ret;
}

int uffdwp_snapshot_restore_in_place(const char *const *paths, size_t npaths,
				     struct uffdwp_snapshot_error *err)
{
	struct target t = { .kind = TARGET_IN_PLACE };
	int ret = check_error_arg(err);

	return ret < 0 ? ret : restore(paths, npaths, &t, prepare_in_place, NULL, err);
}

/* ---- lazy restore -------------------------------------------------------------- */

/*
 * The chain's files stay open, each with its index (read from the file's
 * end, or built by scanning a file that has none). A page's contents come
 * from the last file whose index names it, else are zero (the head is a
 * full snapshot). One thread serves MISSING faults first and fills the
 * rest in address order, a window of pages at a time, then unregisters
 * the mapping: from then on it is ordinary memory.
 */

/* Pages filled between two looks at the fault queue: a fault waits for at
 * most this many (one poll(2) per step costs ~1 % of their copying). */
#define LAZY_STEP 16

/* Pages filled around a faulted one (aligned), when they are not yet. */
#define LAZY_AROUND 64

/* fill_pages() serves both with one stage. */
_Static_assert(LAZY_STEP <= LAZY_AROUND, "the stage holds LAZY_AROUND pages");

/* Bytes of PAGE records read at once for a run of them. */
#define LAZY_WINDOW (256 * 1024)

/* What a file was last read and decoded for. */
struct lazy_cursor {
	/* the bytes last read: [window_at, window_at + window_len) */
	unsigned char *window;
	uint64_t window_at;
	size_t window_len, window_cap;
	struct uffdwp__decoder dec;  /* of the record last decoded from the window */
	uint64_t decoded_at;         /* its offset, or UINT64_MAX */
	const void *dec_data;        /* its pages */
};
enum { CURSOR_FILL, CURSOR_FAULT };

struct lazy_file {
	int fd;
	struct uffdwp__format_header header;  /* regions: the chain's (the head's copy) */
	struct uffdwp__index_entry *entries;
	uint64_t count;
	/* One for the fill in address order, one for faults, so that a fault
	 * elsewhere does not make the fill read and decode its batch again. */
	struct lazy_cursor cursor[2];
};

struct uffdwp_lazy_restore {
	struct target image;  /* TARGET_MAPPING: the layout and the mapping */
	struct lazy_file *files;
	size_t nfiles;
	struct uffdwp *ctx;
	unsigned char *zeros;  /* a page of them */
	unsigned char *stage;  /* LAZY_AROUND pages on their way in */
	unsigned char *state;  /* per page: PAGE_* (this restore's thread only) */
	uint64_t total;        /* pages */
	_Atomic uint64_t done, faulted;
	_Atomic int stop;
	uint64_t begin_ns;
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;
	pthread_cond_t finished_cond;
	bool finished;
	int error;
};

/* The index of a file without one: scan it (which also checks it whole). */
static int scan_index(struct snapshot_file *f, struct lazy_file *lf, size_t index,
		      struct uffdwp_snapshot_error *err)
{
	struct uffdwp__record rec;
	size_t cap = 0;
	int ret;

	while ((ret = uffdwp__decode_next(&f->dec, &rec)) == 1) {
		if (lf->count == cap) {
			size_t grown_cap = cap ? cap * 2 : 64;
			struct uffdwp__index_entry *grown = realloc(lf->entries,
								    grown_cap * sizeof(*grown));

			if (!grown)
				return report_file(err, index, -ENOMEM);
			lf->entries = grown;
			cap = grown_cap;
		}
		/* a record at a time: uffdwp__decoder_init_record() reads either kind */
		lf->entries[lf->count++] = (struct uffdwp__index_entry){
			rec.addr, rec.npages, rec.offset, f->dec.offset - rec.offset,
			rec.type == UFFDWP__RECORD_ZERO ? UFFDWP__INDEX_ZERO : UFFDWP__INDEX_BATCH,
		};
	}
	if (ret < 0)
		return report_decoder(err, index, &f->dec);
	uffdwp__index_sort(lf->entries, lf->count);
	for (uint64_t i = 1; i < lf->count; i++)
		if (lf->entries[i].addr < lf->entries[i - 1].addr +
		    lf->entries[i - 1].npages * f->dec.header.page_size)
			return report(err, index, lf->entries[i].offset, -EBADMSG,
				      "page 0x%llx is recorded twice (again in the record here)",
				      (unsigned long long)lf->entries[i].addr);
	return 0;
}

/* Read the index that ends right before the trailer, if there is one. */
static int read_index(struct snapshot_file *f, struct lazy_file *lf, size_t index,
		      struct uffdwp_snapshot_error *err)
{
	const struct uffdwp__format_header *h = &f->dec.header;
	uint64_t trailer = f->totals.trailer_offset, count, start;
	unsigned char tail[16], *buf;
	size_t size;
	int ret;

	if (h->version < 2 || trailer < uffdwp__format_header_size(h->region_count) + 16 ||
	    pread(f->fd, tail, sizeof(tail), (off_t)(trailer - 16)) != (ssize_t)sizeof(tail))
		return -ENODATA;
	memcpy(&count, tail, 8);
	count = le64toh(count);
	if (count > (trailer - uffdwp__format_header_size(h->region_count)) /
		    UFFDWP__FORMAT_INDEX_ENTRY)
		return -ENODATA;
	size = uffdwp__format_index_size(count);
	start = trailer - size;
	buf = malloc(size);
	if (!buf)
		return report_file(err, index, -ENOMEM);
	ret = pread(f->fd, buf, size, (off_t)start) == (ssize_t)size
		? uffdwp__decode_index(h, buf, size, start, &lf->entries, &lf->count)
		: -ENODATA;
	free(buf);
	if (ret == -EBADMSG)
		return report(err, index, start, ret, "the index is damaged");
	if (ret == -ENOMEM)
		return report_file(err, index, ret);
	return ret;
}

/* Make [at, at + len) of the file readable in the cursor's window. */
static int load_window(struct lazy_file *file, struct lazy_cursor *lf, uint64_t at, size_t len)
{
	ssize_t n;

	if (at >= lf->window_at && at - lf->window_at + len <= lf->window_len)
		return 0;
	if (len > lf->window_cap) {
		unsigned char *grown = realloc(lf->window, len);

		if (!grown)
			return -ENOMEM;
		lf->window = grown;
		lf->window_cap = len;
	}
	lf->window_len = 0;
	lf->decoded_at = UINT64_MAX;
	do
		n = pread(file->fd, lf->window, len, (off_t)at);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if ((size_t)n < len)
		return -ENODATA;  /* the file shrank under us */
	lf->window_at = at;
	lf->window_len = len;
	return 0;
}

/*
 * The contents of the page at addr (an address of the regions) as the chain
 * says: *data points at page_size bytes valid until the next call.
 */
static int page_source(struct uffdwp_lazy_restore *lr, uint64_t addr, int which,
		       const void **data)
{
	uint32_t ps = lr->image.header.page_size;

	for (size_t i = lr->nfiles; i-- > 0;) {
		struct lazy_file *file = &lr->files[i];
		struct lazy_cursor *lf = &file->cursor[which];
		const struct uffdwp__index_entry *e = uffdwp__index_find(file->entries, file->count,
									 addr, ps);
		uint64_t page = e ? (addr - e->addr) / ps : 0, at, bytes, first;
		struct uffdwp__record rec;
		int ret;

		if (!e)
			continue;
		if (e->kind == UFFDWP__INDEX_ZERO) {
			*data = lr->zeros;
			return 0;
		}
		/* a run of PAGE records: the page's own, read a window ahead */
		at = e->offset;
		bytes = e->bytes;
		first = e->addr;
		if (e->kind == UFFDWP__INDEX_PAGES) {
			uint64_t size = uffdwp__format_page_record_size(ps);
			uint64_t window = LAZY_WINDOW / size ? LAZY_WINDOW / size : 1;

			at += page * size;
			first = addr;
			if (at < lf->window_at || at + size > lf->window_at + lf->window_len) {
				uint64_t left = e->npages - page;

				ret = load_window(file, lf, at,
						  (size_t)((left < window ? left : window) * size));
				if (ret < 0)
					return ret;
			}
			bytes = size;
			page = 0;
		} else {
			ret = load_window(file, lf, at, (size_t)bytes);
			if (ret < 0)
				return ret;
		}
		if (lf->decoded_at != at) {
			uffdwp__decoder_init_record(&lf->dec, &file->header,
						    lf->window + (at - lf->window_at), (size_t)bytes, at);
			ret = uffdwp__decode_next(&lf->dec, &rec);
			if (ret != 1 || rec.addr != first || rec.type != UFFDWP__RECORD_PAGE)
				return ret < 0 ? ret : -EBADMSG;
			lf->decoded_at = at;
			lf->dec_data = rec.data;
		}
		*data = (const unsigned char *)lf->dec_data + page * ps;
		return 0;
	}
	*data = lr->zeros;  /* no record names it: zero in the full snapshot */
	return 0;
}

/* The address of the regions that image page i holds. */
static uint64_t page_addr(const struct uffdwp_lazy_restore *lr, uint64_t i)
{
	const struct uffdwp__format_header *h = &lr->image.header;
	uint64_t off = i * h->page_size;
	uint32_t lo = 0, hi = h->region_count;

	/* the last region whose image offset is at or before off */
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (lr->image.image_offset[mid] <= off)
			lo = mid;
		else
			hi = mid;
	}
	return h->regions[lo].addr + (off - lr->image.image_offset[lo]);
}

/* Record the first error; later pages are filled with zeros so that no
 * thread of the program stays blocked on them. */
static void lazy_fail(struct uffdwp_lazy_restore *lr, int err)
{
	pthread_mutex_lock(&lr->lock);
	if (!lr->error)
		lr->error = err;
	pthread_mutex_unlock(&lr->lock);
}

/* Copy image pages [i, i + n) from stage, none of them present yet. */
static int copy_run(struct uffdwp_lazy_restore *lr, uint64_t i, uint64_t n,
		    const unsigned char *stage)
{
	uint32_t ps = lr->image.header.page_size;
	unsigned char *dst = lr->image.mapping + i * ps;
	int ret;

	do
		ret = uffdwp_copy(lr->ctx, dst, stage, n * ps, 0);
	while (ret == -EAGAIN);
	if (ret != -EEXIST)
		return ret;
	/*
	 * Only this thread fills pages, and none of these was there: an
	 * interrupted copy (-EAGAIN) placed the first ones. Page by page;
	 * -EEXIST is then one of ours (its waiters were woken by that copy,
	 * or are woken here).
	 */
	for (uint64_t k = 0; k < n; k++) {
		do
			ret = uffdwp_copy(lr->ctx, dst + k * ps, stage + k * ps, ps, 0);
		while (ret == -EAGAIN);
		if (ret == -EEXIST)
			ret = uffdwp_wake(lr->ctx, dst + k * ps, ps);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/*
 * The state of each image page (lr->state): not filled yet; copied in; or
 * left out because it is zero. A page left out is not populated: a touch
 * while the mapping is registered still faults and gets a zero page then,
 * and after the fill (unregistered) it is ordinary never-touched memory.
 */
enum { PAGE_EMPTY, PAGE_FILLED, PAGE_ZERO_LEFT };

/* Copy in the pages of [i, i + n) that are EMPTY and marked in want[]
 * (their contents at stage + k * page size). */
static int place(struct uffdwp_lazy_restore *lr, uint64_t i, uint64_t n,
		 const unsigned char *stage, const bool *want)
{
	uint32_t ps = lr->image.header.page_size;

	for (uint64_t k = 0, run; k < n; k += run) {
		if (!want[k]) {
			run = 1;
			continue;
		}
		for (run = 1; k + run < n && want[k + run]; run++)
			;
		int ret = copy_run(lr, i + k, run, stage + k * ps);

		if (ret < 0)
			return ret;
		memset(lr->state + i + k, PAGE_FILLED, run);
	}
	return 0;
}

/*
 * Fill image pages [i, i + n) (n at most LAZY_AROUND) that are not filled
 * yet, leaving zero pages out, except page `faulted` (UINT64_MAX: none),
 * which a thread waits for: it is filled even when zero. Returns how many
 * pages became filled or left out, or a negative errno.
 */
static int64_t fill_pages(struct uffdwp_lazy_restore *lr, uint64_t i, uint64_t n,
			  uint64_t faulted)
{
	uint32_t ps = lr->image.header.page_size;
	bool on_fault = faulted != UINT64_MAX, want[LAZY_AROUND] = { false };
	int64_t newly = 0;
	int ret;

	/* Only this thread reads the files; the lock guards the error. */
	pthread_mutex_lock(&lr->lock);
	ret = lr->error;
	pthread_mutex_unlock(&lr->lock);
	for (uint64_t k = 0; k < n; k++) {
		const void *data = lr->zeros;

		if (lr->state[i + k] == PAGE_FILLED ||
		    (lr->state[i + k] == PAGE_ZERO_LEFT && i + k != faulted))
			continue;
		if (ret == 0 && lr->state[i + k] == PAGE_EMPTY) {  /* after an error: zeros */
			ret = page_source(lr, page_addr(lr, i + k),
					  on_fault ? CURSOR_FAULT : CURSOR_FILL, &data);
			if (ret < 0) {
				lazy_fail(lr, ret);
				data = lr->zeros;
			}
		}
		newly += lr->state[i + k] == PAGE_EMPTY;
		if (data == lr->zeros && i + k != faulted) {
			lr->state[i + k] = PAGE_ZERO_LEFT;
			continue;
		}
		memcpy(lr->stage + k * ps, data, ps);
		want[k] = true;
	}
	ret = place(lr, i, n, lr->stage, want);
	return ret < 0 ? ret : newly;
}

/* Serve every queued MISSING fault. */
static int serve_faults(struct uffdwp_lazy_restore *lr, int timeout_ms)
{
	struct pollfd p = { .fd = uffdwp_fd(lr->ctx), .events = POLLIN };
	struct uffdwp_event ev[16];
	uint32_t ps = lr->image.header.page_size;
	int n;

	if (poll(&p, 1, timeout_ms) <= 0)
		return 0;
	while ((n = uffdwp_read_events(lr->ctx, ev, 16)) > 0) {
		for (int k = 0; k < n; k++) {
			uint64_t at = ev[k].pagefault.address - (uint64_t)(uintptr_t)lr->image.mapping;
			if (ev[k].type != UFFDWP_EVENT_PAGEFAULT || at >= lr->image.image_size)
				continue;
			uint64_t first;
			int64_t filled;

			if (lr->state[at / ps] == PAGE_FILLED) {
				/* filled since the fault was queued: let it go */
				uffdwp_wake(lr->ctx, lr->image.mapping + at / ps * ps, ps);
				continue;
			}
			/* With the pages around it: decoding a batch for one
			 * page would be repeated by the next fault nearby. */
			first = at / ps / LAZY_AROUND * LAZY_AROUND;
			filled = fill_pages(lr, first, lr->total - first < LAZY_AROUND
						       ? lr->total - first : LAZY_AROUND, at / ps);
			if (filled < 0)
				return (int)filled;
			atomic_fetch_add(&lr->done, (uint64_t)filled);
			atomic_fetch_add(&lr->faulted, (uint64_t)filled);
		}
	}
	return n == -EAGAIN ? 0 : n;
}

static void *lazy_main(void *arg)
{
	struct uffdwp_lazy_restore *lr = arg;
	uint64_t next = 0;
	int ret = 0;

	while (!ret && next < lr->total && !atomic_load(&lr->stop)) {
		uint64_t n = lr->total - next < LAZY_STEP ? lr->total - next : LAZY_STEP;
		int64_t filled;

		ret = serve_faults(lr, 0);
		if (ret)
			break;
		filled = fill_pages(lr, next, n, UINT64_MAX);
		if (filled < 0)
			ret = (int)filled;
		else
			atomic_fetch_add(&lr->done, (uint64_t)filled);
		next += n;
	}
	if (ret < 0)
		lazy_fail(lr, ret);
	/* Every page is there (or the restore stopped): the mapping becomes
	 * ordinary memory; a thread still waiting on a page is woken and
	 * finds it (or, after a stop, a zero page). */
	uffdwp_unregister(lr->ctx, lr->image.mapping, (size_t)lr->image.image_size);
	pthread_mutex_lock(&lr->lock);
	if (!lr->error && atomic_load(&lr->stop) && atomic_load(&lr->done) < lr->total)
		lr->error = -ECANCELED;
	lr->finished = true;
	pthread_cond_broadcast(&lr->finished_cond);
	pthread_mutex_unlock(&lr->lock);
	return NULL;
}

static void lazy_free(struct uffdwp_lazy_restore *lr)
{
	for (size_t i = 0; i < lr->nfiles; i++) {
		struct lazy_file *lf = &lr->files[i];

		if (lf->fd >= 0)
			close(lf->fd);
		for (int c = 0; c < 2; c++) {
			uffdwp__decoder_release(&lf->cursor[c].dec);
			free(lf->cursor[c].window);
		}
		free(lf->entries);
	}
	free(lr->files);
	if (lr->ctx)
		uffdwp_close(lr->ctx);
	free(lr->zeros);
	free(lr->stage);
	free(lr->state);
	free(lr->image.image_offset);
	free((void *)lr->image.header.regions);
	pthread_mutex_destroy(&lr->lock);
	pthread_cond_destroy(&lr->finished_cond);
	free(lr);
}

/* Open file i of the chain for a lazy restore: header, trailer, link, index. */
static int lazy_open(struct uffdwp_lazy_restore *lr, const char *path, size_t i,
		     uint64_t *prev_id, struct uffdwp_snapshot_error *err)
{
	struct lazy_file *lf = &lr->files[i];
	struct snapshot_file f;
	int ret = path ? open_file(&f, path, i, true, err) : report_file(err, i, -EINVAL);

	if (ret == 0)
		ret = read_trailer(&f, i, err);
	if (ret == 0)
		ret = check_link(&lr->image, i, &f.dec.header, *prev_id, err);
	if (ret == 0) {
		ret = read_index(&f, lf, i, err);
		if (ret == -ENODATA)  /* none: scan (and check) the file instead */
			ret = scan_index(&f, lf, i, err);
	}
	if (ret == 0) {
		*prev_id = f.dec.header.snapshot_id;
		lf->header = lr->image.header;  /* the same regions and page size */
		lf->header.version = f.dec.header.version;
		lf->header.snapshot_id = f.dec.header.snapshot_id;
		lf->fd = f.fd;
		f.fd = -1;  /* kept */
	}
	if (path)
		close_file(&f);
	return ret;
}

int uffdwp_snapshot_restore_lazy(const char *const *paths, size_t npaths, void **mapping,
				 size_t *mapping_len, struct uffdwp_lazy_restore **lrp,
				 struct uffdwp_snapshot_error *err)
{
	struct uffdwp_opts o = { .sz = sizeof(o), .backend = UFFDWP_BACKEND_KERNEL };
	uint64_t t0 = uffdwp__now_ns(), prev_id = 0;
	struct uffdwp_lazy_restore *lr;
	int ret = check_error_arg(err);

	if (ret < 0 || !paths || npaths == 0 || !mapping || !mapping_len || !lrp)
		return -EINVAL;
	lr = calloc(1, sizeof(*lr));
	if (!lr)
		return -ENOMEM;
	lr->image.kind = TARGET_MAPPING;
	pthread_mutex_init(&lr->lock, NULL);
	pthread_cond_init(&lr->finished_cond, NULL);
	lr->files = calloc(npaths, sizeof(*lr->files));
	if (!lr->files) {
		lazy_free(lr);
		return -ENOMEM;
	}
	for (size_t i = 0; i < npaths; i++)
		lr->files[i].fd = -1;
	lr->nfiles = npaths;
	for (size_t i = 0; i < npaths && ret == 0; i++)
		ret = lazy_open(lr, paths[i], i, &prev_id, err);
	if (ret == 0) {
		lr->zeros = calloc(1, lr->image.header.page_size);
		lr->stage = malloc((size_t)LAZY_AROUND * lr->image.header.page_size);
		ret = lr->zeros && lr->stage ? prepare_mapping(&lr->image) : -ENOMEM;
		if (ret < 0)
			report_file(err, npaths, ret);
	}
	if (ret == 0) {
		/* MISSING faults need the kernel's userfaultfd */
		ret = uffdwp_open(&lr->ctx, &o);
		if (ret < 0)
			ret = report(err, npaths, 0, -EOPNOTSUPP, "a lazy restore needs the kernel's "
				     "userfaultfd (%s)", strerror(-ret));
		else if (lr->image.header.page_size != uffdwp__page_size())
			ret = report(err, npaths, 0, -EINVAL, "a lazy restore needs the files' page "
				     "size (%u) to be this machine's", lr->image.header.page_size);
		else
			ret = report_file(err, npaths,
					  /* WP too: the library registers nothing without
					   * it; nothing is protected, so it costs nothing */
					  uffdwp_register(lr->ctx, lr->image.mapping,
							  (size_t)lr->image.image_size,
							  UFFDWP_REGISTER_MODE_MISSING |
								  UFFDWP_REGISTER_MODE_WP));
	}
	if (ret == 0) {
		lr->total = lr->image.image_size / lr->image.header.page_size;
		lr->state = lr->total <= SIZE_MAX ? calloc((size_t)lr->total, 1) : NULL;
		ret = lr->state ? -pthread_create(&lr->thread, NULL, lazy_main, lr) : -ENOMEM;
		lr->thread_started = ret == 0;
		if (ret < 0)
			report_file(err, npaths, ret);
	}
	if (ret < 0) {
		if (lr->image.mapping)
			unmap(&lr->image);
		lazy_free(lr);
		return ret;
	}
	lr->begin_ns = uffdwp__now_ns() - t0;
	*mapping = lr->image.mapping;
	*mapping_len = (size_t)lr->image.image_size;
	*lrp = lr;
	return 0;
}

int uffdwp_lazy_restore_wait(struct uffdwp_lazy_restore *lr, int timeout_ms)
{
	struct timespec until;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &until);
	if (timeout_ms > 0) {
		until.tv_sec += timeout_ms / 1000;
		until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
	}
	pthread_mutex_lock(&lr->lock);
	while (!lr->finished && ret == 0) {
		if (timeout_ms < 0)
			pthread_cond_wait(&lr->finished_cond, &lr->lock);
		else if (timeout_ms == 0 ||
			 pthread_cond_timedwait(&lr->finished_cond, &lr->lock, &until) == ETIMEDOUT)
			ret = lr->finished ? 0 : -ETIMEDOUT;
	}
	if (ret == 0)
		ret = lr->error;
	pthread_mutex_unlock(&lr->lock);
	return ret;
}

int uffdwp_lazy_restore_progress(const struct uffdwp_lazy_restore *lr,
				 struct uffdwp_snapshot_progress *p)
{
	struct uffdwp_lazy_restore *m = (struct uffdwp_lazy_restore *)lr;
	size_t sz;

	if (!p || p->sz < sizeof(*p))
		return -EINVAL;
	sz = p->sz;
	memset(p, 0, sizeof(*p));
	p->sz = sz;
	p->pages_total = lr->total;
	p->pages_done = atomic_load(&m->done);
	p->pages_copied = atomic_load(&m->faulted);
	p->begin_ns = lr->begin_ns;
	pthread_mutex_lock(&m->lock);
	p->finished = lr->finished;
	pthread_mutex_unlock(&m->lock);
	return 0;
}

int uffdwp_lazy_restore_end(struct uffdwp_lazy_restore *lr, int cancel)
{
	int ret;

	if (!lr)
		return 0;
	if (cancel)
		atomic_store(&lr->stop, 1);
	ret = uffdwp_lazy_restore_wait(lr, -1);
	if (lr->thread_started)
		pthread_join(lr->thread, NULL);
	lazy_free(lr);
	return ret;
}
