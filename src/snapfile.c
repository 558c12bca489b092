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
	uint64_t size;     /* for regular files; else 0 */
	bool regular;
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

/* Open path and decode its header. */
static int open_file(struct snapshot_file *f, const char *path, size_t index,
		     struct uffdwp_snapshot_error *err)
{
	struct stat st;
	int ret;

	memset(f, 0, sizeof(*f));
	uffdwp__decoder_init_reader(&f->dec, buffered_read, f);
	/* Failures before the first byte is read are not the contents' fault:
	 * they leave err->message empty. */
	f->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (f->fd < 0 || fstat(f->fd, &st) < 0)
		return report_file(err, index, -errno);
	if (S_ISDIR(st.st_mode))
		return report_file(err, index, -EISDIR);
	f->regular = S_ISREG(st.st_mode);
	f->size = f->regular ? (uint64_t)st.st_size : 0;
	f->buf = malloc(READ_BUFFER);
	if (!f->buf)
		return report_file(err, index, -ENOMEM);
	ret = uffdwp__decode_header(&f->dec);
	return ret < 0 ? report_decoder(err, index, &f->dec) : 0;
}

/*
 * Read and check the trailer at the end of the file (whose header is
 * decoded), and that the file's size is what the trailer's totals make it.
 */
static int read_trailer(struct snapshot_file *f, size_t index, struct uffdwp_snapshot_error *err)
{
	const struct uffdwp__format_header *h = &f->dec.header;
	uint64_t header_size = uffdwp__format_header_size(h->region_count);
	unsigned char raw[UFFDWP__FORMAT_TRAILER_SIZE];
	uint64_t at, pages, zeros, expected;
	struct uffdwp__format_totals *t = &f->totals;
	ssize_t n;
	int ret;

	if (!f->regular)
		return report_file(err, index, -ESPIPE);  /* info needs the end first */
	if (f->size < header_size + UFFDWP__FORMAT_TRAILER_SIZE)
		return report(err, index, f->size, -ENODATA,
			      "truncated: %llu bytes leave no room for records and a trailer",
			      (unsigned long long)f->size);
	at = f->size - UFFDWP__FORMAT_TRAILER_SIZE;
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
	if (t->page_count > t->record_count ||
	    __builtin_mul_overflow(t->page_count, uffdwp__format_page_record_size(h->page_size),
				   &pages) ||
	    __builtin_mul_overflow(t->record_count - t->page_count, UFFDWP__FORMAT_ZERO_SIZE,
				   &zeros) ||
	    __builtin_add_overflow(pages, zeros, &expected) ||
	    __builtin_add_overflow(expected, header_size + UFFDWP__FORMAT_TRAILER_SIZE, &expected) ||
	    expected != f->size)
		return report(err, index, at, -EBADMSG,
			      "the file is %llu bytes, not what its trailer's totals make it "
			      "(%llu records, %llu of them pages)",
			      (unsigned long long)f->size, (unsigned long long)t->record_count,
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
	ret = open_file(&f, path, 0, err);
	if (ret == 0)
		ret = read_trailer(&f, 0, err);
	if (ret == 0) {
		const struct uffdwp__format_header *h = &f.dec.header;

		fill_info(info, &f, f.size);
		for (size_t i = 0; i < max_regions && i < h->region_count; i++)
			regions[i] = h->regions[i];
	}
	close_file(&f);
	return ret;
}

/* ---- verify ---------------------------------------------------------------- */

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

int uffdwp_snapshot_file_verify(const char *path, struct uffdwp_snapshot_info *info,
				struct uffdwp_snapshot_error *err)
{
	struct run_list runs = { 0 };
	const struct page_run *twice;
	struct uffdwp__record rec;
	struct snapshot_file f;
	int ret = check_error_arg(err);

	if (ret < 0 || !path || (info && info->sz < sizeof(*info)))
		return -EINVAL;
	ret = open_file(&f, path, 0, err);
	while (ret == 0 && (ret = uffdwp__decode_next(&f.dec, &rec)) == 1)
		ret = note_run(&runs, &rec, f.dec.header.page_size);
	if (ret < 0 && f.dec.error)
		report_decoder(err, 0, &f.dec);
	if (ret == 0) {
		twice = find_overlap(&runs, f.dec.header.page_size);
		if (twice)
			ret = report(err, 0, twice->offset, -EBADMSG,
				     "page 0x%llx is recorded twice (again in the record here)",
				     (unsigned long long)twice->addr);
	}
	if (ret == 0 && info) {
		f.totals = f.dec.totals;
		fill_info(info, &f, f.dec.offset);
	}
	free(runs.runs);
	close_file(&f);
	return ret;
}

/* ---- restore --------------------------------------------------------------- */

/* Where a chain's pages go: the image, or memory at the recorded addresses. */
struct target {
	enum { TARGET_FD, TARGET_MAPPING, TARGET_IN_PLACE } kind;
	int fd;
	unsigned char *mapping;
	const struct uffdwp__format_header *header;
	uint64_t *image_offset;  /* of each region in the image */
	uint64_t image_size;
};

/* Where the byte at addr (inside a region) lies in the image. */
static uint64_t image_offset(const struct target *t, uint64_t addr)
{
	const struct uffdwp__format_header *h = t->header;
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
 * Apply one record. Zero runs are written only when later_file: the head of
 * a chain is a full snapshot, whose target starts out zero.
 */
static int apply(const struct target *t, const struct uffdwp__record *rec, bool later_file)
{
	uint64_t page_size = t->header->page_size;
	uint64_t len = rec->npages * page_size;
	uint64_t at = t->kind == TARGET_IN_PLACE ? rec->addr : image_offset(t, rec->addr);

	if (rec->type == UFFDWP__RECORD_ZERO && !later_file)
		return 0;
	switch (t->kind) {
	case TARGET_FD:
		return rec->type == UFFDWP__RECORD_PAGE ? pwrite_all(t->fd, rec->data, len, at)
							: zero_fd(t->fd, at, len);
	case TARGET_MAPPING:
	case TARGET_IN_PLACE: {
		unsigned char *dst = t->kind == TARGET_MAPPING ? t->mapping + at
							      : (unsigned char *)(uintptr_t)at;

		if (rec->type == UFFDWP__RECORD_PAGE)
			memcpy(dst, rec->data, len);
		else
			memset(dst, 0, len);
		return 0;
	}
	}
	return -EINVAL;
}

static bool same_regions(const struct uffdwp__format_header *a,
			 const struct uffdwp__format_header *b)
{
	return a->region_count == b->region_count &&
	       !memcmp(a->regions, b->regions, a->region_count * sizeof(*a->regions));
}

/* Open every file of the chain and check its header, trailer and links. */
static int open_chain(struct snapshot_file *files, const char *const *paths, size_t npaths,
		      struct uffdwp_snapshot_error *err)
{
	for (size_t i = 0; i < npaths; i++) {
		const struct uffdwp__format_header *h = &files[i].dec.header, *prev;
		int ret = paths[i] ? open_file(&files[i], paths[i], i, err)
				   : report_file(err, i, -EINVAL);

		if (ret == 0)
			ret = read_trailer(&files[i], i, err);
		if (ret < 0)
			return ret;
		if (i == 0) {
			if (h->parent_id)
				return report(err, 0, 0, -EINVAL,
					      "snapshot 0x%llx is incremental (its parent is 0x%llx): "
					      "a chain must start with a full snapshot",
					      (unsigned long long)h->snapshot_id,
					      (unsigned long long)h->parent_id);
			continue;
		}
		prev = &files[i - 1].dec.header;
		if (h->parent_id != prev->snapshot_id)
			return report(err, i, 0, -EINVAL,
				      "snapshot 0x%llx has parent 0x%llx, but the file before it "
				      "in the chain is snapshot 0x%llx",
				      (unsigned long long)h->snapshot_id,
				      (unsigned long long)h->parent_id,
				      (unsigned long long)prev->snapshot_id);
		if (h->page_size != prev->page_size || !same_regions(h, prev))
			return report(err, i, 0, -EINVAL,
				      "snapshot 0x%llx has other regions or another page size "
				      "than its parent", (unsigned long long)h->snapshot_id);
	}
	return 0;
}

/* Replay every record of every file of the (opened, checked) chain. */
static int replay(struct snapshot_file *files, size_t npaths, const struct target *t,
		  struct uffdwp_snapshot_error *err)
{
	for (size_t i = 0; i < npaths; i++) {
		struct uffdwp__record rec;
		int ret;

		while ((ret = uffdwp__decode_next(&files[i].dec, &rec)) == 1) {
			ret = apply(t, &rec, i > 0);
			if (ret < 0)
				return report_file(err, npaths, ret);  /* the target's failure */
		}
		if (ret < 0)
			return report_decoder(err, i, &files[i].dec);
	}
	return 0;
}

/*
 * Open and check the chain, lay out the image from the head's header, call
 * prepare(), replay; on a failed replay call undo() (if any).
 */
static int restore(const char *const *paths, size_t npaths, struct target *t,
		   int (*prepare)(struct target *t), void (*undo)(struct target *t),
		   struct uffdwp_snapshot_error *err)
{
	struct snapshot_file *files;
	int ret = check_error_arg(err);

	if (ret < 0 || !paths || npaths == 0)
		return -EINVAL;
	files = calloc(npaths, sizeof(*files));
	if (!files)
		return -ENOMEM;
	for (size_t i = 0; i < npaths; i++)
		files[i].fd = -1;
	ret = open_chain(files, paths, npaths, err);
	if (ret == 0) {
		const struct uffdwp__format_header *h = &files[0].dec.header;

		t->header = h;
		t->image_offset = malloc(h->region_count * sizeof(*t->image_offset));
		if (!t->image_offset)
			ret = -ENOMEM;
		for (uint32_t r = 0; ret == 0 && r < h->region_count; r++) {
			t->image_offset[r] = t->image_size;
			t->image_size += h->regions[r].len;
		}
	}
	if (ret == 0) {
		ret = prepare(t);
		if (ret < 0)
			report_file(err, npaths, ret);
	}
	if (ret == 0) {
		ret = replay(files, npaths, t, err);
		if (ret < 0 && undo)
			undo(t);
	}
	free(t->image_offset);
	t->header = NULL;  /* it belonged to the files */
	for (size_t i = 0; i < npaths; i++)
		close_file(&files[i]);
	free(files);
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

	if (fd < 0)
		return -EBADF;
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
	int ret;

	if (!mapping || !mapping_len)
		return -EINVAL;
	ret = restore(paths, npaths, &t, prepare_mapping, unmap, err);
	if (ret < 0)
		return ret;
	*mapping = t.mapping;
	*mapping_len = (size_t)t.image_size;
	return 0;
}

static int prepare_in_place(struct target *t)
{
	const struct uffdwp__format_header *h = t->header;

	if (h->page_size != (uint64_t)sysconf(_SC_PAGESIZE))
		return -EINVAL;
	for (uint32_t r = 0; r < h->region_count; r++)
		memset((void *)(uintptr_t)h->regions[r].addr, 0, h->regions[r].len);
	return 0;
}

int uffdwp_snapshot_restore_in_place(const char *const *paths, size_t npaths,
				     struct uffdwp_snapshot_error *err)
{
	struct target t = { .kind = TARGET_IN_PLACE };

	return restore(paths, npaths, &t, prepare_in_place, NULL, err);
}
