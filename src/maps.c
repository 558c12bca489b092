/* SPDX-License-Identifier: MIT */
/*
 * The process's own mappings. PROCMAP_QUERY answers for one address in about
 * a microsecond (measured here, with 2,000 mappings or 20); reading
 * /proc/self/maps costs 13 us with 20 mappings and 220 us with 2,000, so it
 * is only the fallback for kernels before 6.11.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/magic.h>
#include "kernel_abi.h"
#include "maps.h"

/* ---------------------------------------------------------------------------
 * Classifying a file mapping
 * ------------------------------------------------------------------------- */

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Whether the mapping named `name` (with inode != 0) is a plain file, not
 * shmem or hugetlbfs. A deleted file is judged by its directory's file
 * system; a name that cannot be looked up at all is given the benefit of
 * the doubt. */
static bool plain_file(const char *name)
{
	static const char deleted[] = " (deleted)";
	char path[PATH_MAX];
	size_t n = strlen(name);
	struct statfs fs;
	char *slash;

	/* memfd, shared anonymous memory, SysV shm (all shmem); MAP_HUGETLB */
	if (name[0] != '/' || starts_with(name, "/memfd:") || starts_with(name, "/dev/zero") ||
	    starts_with(name, "/SYSV") || starts_with(name, "/anon_hugepage") || n >= sizeof(path))
		return false;
	memcpy(path, name, n + 1);
	if (n > sizeof(deleted) - 1 && !strcmp(path + n - (sizeof(deleted) - 1), deleted)) {
		slash = strrchr(path, '/');
		*(slash == path ? slash + 1 : slash) = '\0';
	}
	if (statfs(path, &fs) < 0)
		return false;
	return fs.f_type != TMPFS_MAGIC && fs.f_type != HUGETLBFS_MAGIC;
}

/* ---------------------------------------------------------------------------
 * PROCMAP_QUERY
 * ------------------------------------------------------------------------- */

/* The descriptor of /proc/self/maps for queries, with the pid that opened
 * it in the high half (a fork child must not ask about its parent's):
 * one word, so a reader never pairs one process's fd with another's pid. */
static _Atomic uint64_t query_fd_of_pid;
static _Atomic bool query_unsupported;

static int query_fd(void)
{
	uint64_t pid = (uint64_t)getpid(), cur = atomic_load(&query_fd_of_pid), mine;
	int fd;

	for (;;) {
		if (cur && cur >> 32 == pid)
			return (int)(uint32_t)cur;
		fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		mine = pid << 32 | (uint32_t)fd;
		if (atomic_compare_exchange_strong(&query_fd_of_pid, &cur, mine)) {
			if (cur)  /* inherited from the parent: its copy is ours to close */
				close((int)(uint32_t)cur);
			return fd;
		}
		close(fd);
	}
}

/* Returns 0 when the walk ended, 1 when PROCMAP_QUERY is not available, or
 * a negative errno. */
static int query_walk(uintptr_t lo, uintptr_t hi, unsigned flags, uffdwp__mapping_fn fn,
		      void *arg)
{
	bool classify = flags & UFFDWP__MAPS_CLASSIFY;
	char name[classify ? PATH_MAX : 1];
	int fd = query_fd();

	if (fd < 0)
		return fd;
	for (uintptr_t addr = lo; addr < hi;) {
		struct procmap_query q = {
			.size = sizeof(q),
			.query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
			.query_addr = addr,
			.vma_name_addr = classify ? (uintptr_t)name : 0,
			.vma_name_size = classify ? sizeof(name) : 0,
		};
		struct uffdwp__mapping m;

		if (ioctl(fd, PROCMAP_QUERY, &q) < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOENT)
				return 0;  /* nothing at or above addr */
			if (errno == ENOTTY || errno == EINVAL)
				return 1;
			return -errno;
		}
		if (q.vma_start >= hi)
			return 0;
		m.start = q.vma_start > lo ? q.vma_start : lo;
		m.end = q.vma_end < hi ? q.vma_end : hi;
		m.prot = (q.vma_flags & PROCMAP_QUERY_VMA_READABLE ? PROT_READ : 0) |
			 (q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE ? PROT_WRITE : 0) |
			 (q.vma_flags & PROCMAP_QUERY_VMA_EXECUTABLE ? PROT_EXEC : 0);
		m.shared = q.vma_flags & PROCMAP_QUERY_VMA_SHARED;
		m.anonymous = q.inode == 0;
		m.page = q.vma_page_size ? q.vma_page_size : uffdwp__page_size();
		m.file = classify && q.inode && q.vma_name_size &&
			 m.page == uffdwp__page_size() && plain_file(name);
		if (!fn(arg, &m))
			return 0;
		addr = q.vma_end;
	}
	return 0;
}

/* ---------------------------------------------------------------------------
 * The fallback: /proc/self/maps and smaps, read without malloc or stdio
 * ------------------------------------------------------------------------- */

static uintptr_t parse_number(const char **p, unsigned base)
{
	uintptr_t v = 0;

	for (;; (*p)++) {
		char c = **p;

		if (c >= '0' && c <= '9')
			v = v * base + (uintptr_t)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			v = v * base + (uintptr_t)(c - 'a' + 10);
		else
			return v;
	}
}

static void skip_field(const char **p)
{
	while (**p && **p != ' ')
		(*p)++;
	while (**p == ' ')
		(*p)++;
}

/* Parse a maps line, "start-end rwxp offset dev inode path": false if it is
 * not one (an smaps field line). */
static bool parse_mapping(const char *line, unsigned flags, struct uffdwp__mapping *m)
{
	const char *p = line;
	uintptr_t inode;

	m->start = parse_number(&p, 16);
	if (p == line || *p++ != '-')
		return false;
	m->end = parse_number(&p, 16);
	if (*p++ != ' ' || strlen(p) < 4)
		return false;
	m->prot = (p[0] == 'r' ? PROT_READ : 0) | (p[1] == 'w' ? PROT_WRITE : 0) |
		  (p[2] == 'x' ? PROT_EXEC : 0);
	m->shared = p[3] == 's';
	m->page = uffdwp__page_size();
	skip_field(&p);  /* perms */
	skip_field(&p);  /* offset */
	skip_field(&p);  /* device */
	inode = parse_number(&p, 10);
	m->anonymous = inode == 0;
	m->file = false;
	if (!(flags & UFFDWP__MAPS_CLASSIFY))
		return true;
	while (*p == ' ')
		p++;
	m->file = inode && plain_file(p);
	return true;
}

struct maps_walk {
	uintptr_t lo, hi;
	unsigned flags;
	uffdwp__mapping_fn fn;
	void *arg;
	struct uffdwp__mapping pending;  /* smaps: reported once its page size is known */
	bool have_pending, done;
};

static void report_pending(struct maps_walk *w)
{
	struct uffdwp__mapping m = w->pending;

	if (!w->have_pending)
		return;
	w->have_pending = false;
	m.start = m.start > w->lo ? m.start : w->lo;
	m.end = m.end < w->hi ? m.end : w->hi;
	if (!w->fn(w->arg, &m))
		w->done = true;
}

static void walk_line(struct maps_walk *w, const char *line)
{
	struct uffdwp__mapping m;
	const char *p;

	if (parse_mapping(line, w->flags, &m)) {
		report_pending(w);
		if (w->done || m.start >= w->hi) {
			w->done = true;
			return;
		}
		w->pending = m;
		w->have_pending = m.end > w->lo;
		return;
	}
	if (w->have_pending && !strncmp(line, "KernelPageSize:", 15)) {
		p = line + 15;
		while (*p == ' ')
			p++;
		w->pending.page = (size_t)parse_number(&p, 10) * 1024;
	}
}

/* smaps gives each mapping's page size, and walks its page tables: slow,
 * so only when asked for. */
static int file_walk(uintptr_t lo, uintptr_t hi, unsigned flags, uffdwp__mapping_fn fn,
		     void *arg)
{
	struct maps_walk w = { .lo = lo, .hi = hi, .flags = flags, .fn = fn, .arg = arg };
	/* Paths longer than the line are left unclassified (not "file"). */
	char buf[4096], line[256];
	size_t used = 0;
	int fd = open(flags & UFFDWP__MAPS_PAGE_SIZES ? "/proc/self/smaps" : "/proc/self/maps",
		      O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	while (!w.done) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n && !w.done; i++) {
			if (buf[i] != '\n') {
				if (used < sizeof(line) - 1)
					line[used++] = buf[i];
				continue;
			}
			line[used] = '\0';
			used = 0;
			walk_line(&w, line);
		}
	}
	if (!w.done)
		report_pending(&w);
	close(fd);
	return 0;
}

int uffdwp__walk_mappings(uintptr_t lo, uintptr_t hi, unsigned flags, uffdwp__mapping_fn fn,
			  void *arg)
{
	if (!atomic_load_explicit(&query_unsupported, memory_order_relaxed)) {
		int ret = query_walk(lo, hi, flags, fn, arg);

		if (ret <= 0)
			return ret;
		atomic_store_explicit(&query_unsupported, true, memory_order_relaxed);
	}
	return file_walk(lo, hi, flags, fn, arg);
}

static bool take_page_size(void *arg, const struct uffdwp__mapping *m)
{
	*(size_t *)arg = m->page;
	return false;
}

size_t uffdwp__page_size_at(uintptr_t addr)
{
	size_t page = uffdwp__page_size();

	uffdwp__walk_mappings(addr, addr + 1, UFFDWP__MAPS_PAGE_SIZES, take_page_size, &page);
	return page;
}
