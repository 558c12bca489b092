/* SPDX-License-Identifier: MIT */
/*
 * Snapshot files on disk: info, verify and restore (uffdwp_snapshot_file_*,
 * uffdwp_snapshot_restore_*). The bytes are format.c's business; this file
 * does the I/O around it and turns a decoder's findings into a
 * struct uffdwp_snapshot_error.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "backend.h"
#include "format.h"

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

/*
 * Make [p, p + len) of memory of any kind read as zero (zero_mapping() for
 * each mapping it spans, as /proc/self/maps describes them). Returns 0 or a
 * negative errno when the maps cannot be read.
 */
static int zero_memory(unsigned char *p, uint64_t len, size_t page)
{
	uintptr_t lo = (uintptr_t)p, hi = lo + len;
	FILE *maps = fopen("/proc/self/maps", "re");
	size_t cap = 0;
	char *line = NULL;

	if (!maps)
		return -errno;
	while (lo < hi && getline(&line, &cap, maps) > 0) {
		unsigned long start, end, inode;
		char perms[5];

		if (sscanf(line, "%lx-%lx %4s %*s %*s %lu", &start, &end, perms, &inode) != 4 ||
		    end <= lo)
			continue;
		if (start > lo)
			break;  /* a hole: the caller checked there is none */
		end = end < hi ? end : hi;
		zero_mapping(lo, end, perms[3] == 's', inode == 0, page);
		lo = end;
	}
	free(line);
	fclose(maps);
	/* Whatever the maps did not cover (they changed under us) the slow way. */
	if (lo < hi)
		zero_by_writing((unsigned char *)lo, hi - lo, page);
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
