/* SPDX-License-Identifier: MIT */
/*
 * /proc/self/maps and smaps, read without malloc or stdio: usable in a
 * signal handler (the emulated backend's registration and resync, the
 * engine learning a mapping's page size on its fault path).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "backend.h"

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

/* Parse the head of a maps line, "start-end rwxp ...": false if it is not one
 * (an smaps field line). */
static bool parse_mapping(const char *line, struct mapping *m)
{
	const char *p = line;

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
	return true;
}

struct maps_walk {
	uintptr_t lo, hi;
	mapping_fn fn;
	void *arg;
	struct mapping pending;  /* smaps: reported once its page size is known */
	bool have_pending, done;
};

static void report_pending(struct maps_walk *w)
{
	struct mapping m = w->pending;

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
	struct mapping m;
	const char *p;

	if (parse_mapping(line, &m)) {
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

int uffdwp__walk_mappings(const char *path, uintptr_t lo, uintptr_t hi, mapping_fn fn,
			  void *arg)
{
	struct maps_walk w = { .lo = lo, .hi = hi, .fn = fn, .arg = arg };
	char buf[4096], line[80];
	size_t used = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

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
				/* Only the head of a line matters; paths are dropped. */
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


static bool note_page_size(void *arg, const struct mapping *m)
{
	*(size_t *)arg = m->page;
	return false;
}

size_t uffdwp__page_size_at(uintptr_t addr)
{
	size_t page = uffdwp__page_size();

	uffdwp__walk_mappings("/proc/self/smaps", addr, addr + 1, note_page_size, &page);
	return page;
}
