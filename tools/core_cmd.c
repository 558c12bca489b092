/* SPDX-License-Identifier: MIT */
/*
 * uffdwp core [-o FILE] [--json] [-q] PID: an ELF core of a running process,
 * taken with a pause of milliseconds (uffdwp(1)).
 *
 * During the stop (uffdwp_remote_attach): the threads' registers, the
 * mappings, a context inside the target, a live snapshot of its anonymous,
 * shmem and hugetlbfs memory begun (protected), and the small rest copied
 * (private file-backed mappings that hold changes, ELF headers, the vDSO:
 * sync write-protect cannot register file-backed memory). Then the target
 * runs on, and the snapshot's sink writes each page at its place in the
 * core while the writers' first writes are saved before they land.
 *
 * Which mappings hold contents follows the kernel's and gdb's default
 * coredump_filter (0x33): private and shared anonymous memory, hugetlbfs,
 * private file mappings that were written (or the first page when it is
 * an ELF header); the others get a PT_LOAD without contents.
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "commands.h"
#include "elfcore.h"
#include "remote.h"
#include "uffdwp.h"

/* How a mapping's contents reach the core. */
enum how {
	HOW_NONE,     /* a PT_LOAD without contents */
	HOW_PROTECT,  /* saved live through the snapshot */
	HOW_COPY,     /* copied whole during the stop */
	HOW_HEADER,   /* its first page copied during the stop (an ELF header) */
};

struct mapping {
	uint64_t start, end, offset;
	char perms[5];
	char *path;        /* "" for anonymous */
	bool written;      /* smaps: Anonymous > 0 */
	bool dontdump, hugetlb;
	enum how how;
	unsigned char *copy;  /* HOW_COPY / HOW_HEADER: the bytes */
};

struct core {
	pid_t pid;
	size_t page;
	struct mapping *maps;
	size_t nmaps;
	struct uffdwp__core_segment *segs;  /* one per mapping, same order */
	int fd;
	const char *path;
	/* Ranges the target discarded during the save (engine thread). */
	uint64_t (*discarded)[2];
	size_t ndiscarded, discarded_cap;
	pthread_mutex_t lock;
	int sink_error;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The whole of a small /proc file, NUL-terminated; NULL on failure. */
static char *read_proc(pid_t pid, const char *name, size_t *len)
{
	char path[64];
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || !buf) {
		if (fd >= 0)
			close(fd);
		free(buf);
		return NULL;
	}
	for (;;) {
		ssize_t got;

		if (n + 1 >= cap) {
			char *b = realloc(buf, cap * 2);

			if (!b)
				break;
			buf = b;
			cap *= 2;
		}
		got = read(fd, buf + n, cap - n - 1);
		if (got <= 0)
			break;
		n += (size_t)got;
	}
	close(fd);
	buf[n] = 0;
	if (len)
		*len = n;
	return buf;
}

/* One line of /proc/PID/maps into m; false if it does not parse. */
static bool parse_map_line(const char *line, struct mapping *m)
{
	unsigned long long start, end, offset;
	int name_at = 0;
	char perms[5];

	if (sscanf(line, "%llx-%llx %4s %llx %*s %*s%n", &start, &end, perms, &offset,
		   &name_at) < 4)
		return false;
	while (line[name_at] == ' ')
		name_at++;
	*m = (struct mapping){ .start = start, .end = end, .offset = offset };
	memcpy(m->perms, perms, sizeof(perms));
	m->path = strndup(line + name_at, strcspn(line + name_at, "\n"));
	return m->path != NULL;
}

/* What smaps says of the mappings (read before the stop: it walks page
 * tables, and the written/dontdump flags of a mapping do not change while
 * it stays): Anonymous > 0, VmFlags dd and ht, matched by address. */
struct smaps_info {
	uint64_t start, end;
	bool written, dontdump, hugetlb;
};

static struct smaps_info *read_smaps(pid_t pid, size_t *count)
{
	char *text = read_proc(pid, "smaps", NULL), *line, *save = NULL;
	struct smaps_info *info = NULL, *cur = NULL;
	size_t n = 0, cap = 0;

	*count = 0;
	if (!text)
		return NULL;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		unsigned long long a, b;
		unsigned long kb;

		if (sscanf(line, "%llx-%llx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			if (n == cap) {
				struct smaps_info *ni = realloc(info, (cap ? 2 * cap : 64) * sizeof(*ni));

				if (!ni)
					break;
				info = ni;
				cap = cap ? 2 * cap : 64;
			}
			cur = &info[n++];
			*cur = (struct smaps_info){ .start = a, .end = b };
		} else if (cur && sscanf(line, "Anonymous: %lu kB", &kb) == 1) {
			cur->written = kb > 0;
		} else if (cur && !strncmp(line, "VmFlags:", 8)) {
			cur->dontdump = strstr(line, " dd") != NULL;
			cur->hugetlb = strstr(line, " ht") != NULL;
		}
	}
	free(text);
	*count = n;
	return info;
}

static bool anonymous_shared(const char *path)
{
	return !*path || !strncmp(path, "/dev/zero", 9) || !strncmp(path, "/SYSV", 5) ||
	       !strncmp(path, "/memfd:", 7) || !strncmp(path, "[anon_shmem", 11);
}

/* Decide how each mapping goes into the core (see the top). */
static void classify(struct mapping *m, const struct smaps_info *info, size_t ninfo)
{
	const struct smaps_info *si = NULL;
	bool file = m->path[0] == '/';
	bool priv = m->perms[3] == 'p';

	for (size_t i = 0; i < ninfo; i++)
		if (info[i].start == m->start && info[i].end == m->end)
			si = &info[i];
	/* Unknown to the earlier smaps: assume written, as dumping more
	 * is the safe side. */
	m->written = si ? si->written : true;
	m->dontdump = si && si->dontdump;
	m->hugetlb = si && si->hugetlb;
	m->how = HOW_NONE;
	if (m->perms[0] != 'r' || m->dontdump || !strcmp(m->path, "[vvar]") ||
	    !strcmp(m->path, "[vvar_vclock]") || !strcmp(m->path, "[vsyscall]"))
		return;
	if (!strcmp(m->path, "[vdso]"))
		m->how = HOW_COPY;
	else if (m->hugetlb)
		m->how = HOW_PROTECT;
	else if (!priv)
		m->how = anonymous_shared(m->path) ? HOW_PROTECT : HOW_NONE;
	else if (!file)
		m->how = HOW_PROTECT;
	else if (m->written)
		m->how = HOW_COPY;
	else if (m->offset == 0)
		m->how = HOW_HEADER;  /* kept only if it starts with ELFMAG */
}

/* The mappings, read while the target is stopped. */
static int read_mappings(struct core *c, const struct smaps_info *info, size_t ninfo)
{
	size_t cap = 0;
	char *text = read_proc(c->pid, "maps", NULL), *line, *save = NULL;
	int ret = 0;

	if (!text)
		return -ESRCH;
	for (line = strtok_r(text, "\n", &save); line && !ret; line = strtok_r(NULL, "\n", &save)) {
		struct mapping m;

		if (!parse_map_line(line, &m))
			continue;
		if (c->nmaps == cap) {
			struct mapping *nm = realloc(c->maps, (cap ? 2 * cap : 64) * sizeof(*nm));

			if (!nm) {
				free(m.path);
				ret = -ENOMEM;
				break;
			}
			c->maps = nm;
			cap = cap ? 2 * cap : 64;
		}
		classify(&m, info, ninfo);
		c->maps[c->nmaps++] = m;
	}
	free(text);
	return ret;
}

/* Copy what the snapshot cannot protect, while the target is stopped. */
static int copy_stopped(struct core *c)
{
	for (size_t i = 0; i < c->nmaps; i++) {
		struct mapping *m = &c->maps[i];
		size_t len = m->how == HOW_HEADER ? c->page : (size_t)(m->end - m->start);
		struct iovec local, remote;

		if (m->how != HOW_COPY && m->how != HOW_HEADER)
			continue;
		m->copy = malloc(len);
		if (!m->copy)
			return -ENOMEM;
		local = (struct iovec){ m->copy, len };
		remote = (struct iovec){ (void *)(uintptr_t)m->start, len };
		if (process_vm_readv(c->pid, &local, 1, &remote, 1, 0) != (ssize_t)len) {
			/* Unreadable (a file truncated under its mapping): no
			 * contents, as the kernel's core would have none. */
			free(m->copy);
			m->copy = NULL;
			m->how = HOW_NONE;
			continue;
		}
		if (m->how == HOW_HEADER && memcmp(m->copy, ELFMAG, SELFMAG)) {
			free(m->copy);
			m->copy = NULL;
			m->how = HOW_NONE;
		}
	}
	return 0;
}

static bool all_zero(const unsigned char *p, size_t len)
{
	return p[0] == 0 && !memcmp(p, p + 1, len - 1);
}

static int pwrite_all(int fd, const unsigned char *data, size_t len, uint64_t off)
{
	while (len) {
		ssize_t got = pwrite(fd, data, len, (off_t)off);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			return got < 0 ? -errno : -EIO;
		data += got;
		off += (uint64_t)got;
		len -= (size_t)got;
	}
	return 0;
}

/* Write len bytes at off, leaving zero pages out (the file is sparse):
 * one write per run of non-zero pages. */
static int write_at(struct core *c, const unsigned char *data, size_t len, uint64_t off)
{
	size_t run = 0;  /* start of the pending non-zero run */
	int ret = 0;

	for (size_t at = 0; at < len && !ret; at += c->page) {
		size_t n = len - at < c->page ? len - at : c->page;

		if (!all_zero(data + at, n))
			continue;
		if (at > run)
			ret = pwrite_all(c->fd, data + run, at - run, off + run);
		run = at + n;
	}
	if (!ret && len > run)
		ret = pwrite_all(c->fd, data + run, len - run, off + run);
	return ret;
}

/* The segment holding addr (the mappings are sorted and disjoint). */
static const struct uffdwp__core_segment *segment_of(const struct core *c, uint64_t addr)
{
	size_t lo = 0, hi = c->nmaps;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (addr < c->segs[mid].vaddr)
			hi = mid;
		else if (addr >= c->segs[mid].vaddr + c->segs[mid].memsz)
			lo = mid + 1;
		else
			return &c->segs[mid];
	}
	return NULL;
}

/* The snapshot's sink: each page at its place in the core. */
static int sink(void *arg, uint64_t addr, const void *data, size_t len)
{
	struct core *c = arg;
	const struct uffdwp__core_segment *s = segment_of(c, addr);

	if (!s || addr + len > s->vaddr + s->filesz)
		return -EINVAL;
	return write_at(c, data, len, s->offset + (addr - s->vaddr));
}

/* The snapshot's other events: a discarded or moved range is noted. */
static int on_event(void *arg, const struct uffdwp_event *ev)
{
	struct core *c = arg;
	uint64_t start, end;

	if (ev->type == UFFDWP_EVENT_REMOVE || ev->type == UFFDWP_EVENT_UNMAP) {
		start = ev->remove.start;
		end = ev->remove.end;
	} else if (ev->type == UFFDWP_EVENT_REMAP) {
		start = ev->remap.from;
		end = ev->remap.from + ev->remap.len;
	} else {
		if (ev->type == UFFDWP_EVENT_FORK)
			close(ev->fork.fd);
		return 0;
	}
	pthread_mutex_lock(&c->lock);
	if (c->ndiscarded == c->discarded_cap) {
		size_t cap = c->discarded_cap ? 2 * c->discarded_cap : 16;
		void *n = realloc(c->discarded, cap * sizeof(*c->discarded));

		if (!n) {
			c->sink_error = -ENOMEM;
			pthread_mutex_unlock(&c->lock);
			return 0;
		}
		c->discarded = n;
		c->discarded_cap = cap;
	}
	c->discarded[c->ndiscarded][0] = start;
	c->discarded[c->ndiscarded][1] = end;
	c->ndiscarded++;
	pthread_mutex_unlock(&c->lock);
	return 0;
}

/* The process notes' facts, from /proc. */
static void read_process(pid_t pid, struct uffdwp__core_process *p)
{
	char *stat = read_proc(pid, "stat", NULL), *status = read_proc(pid, "status", NULL);
	size_t len = 0;
	char *cmd = read_proc(pid, "cmdline", &len);

	memset(p, 0, sizeof(*p));
	p->pid = pid;
	if (stat) {
		char *open = strchr(stat, '('), *close_ = strrchr(stat, ')');

		if (open && close_ && close_ > open) {
			size_t n = (size_t)(close_ - open - 1);

			memcpy(p->fname, open + 1, n < sizeof(p->fname) - 1 ? n : sizeof(p->fname) - 1);
			/* state ppid pgrp session tty tpgid flags ... nice is field 19 */
			long nice = 0;
			unsigned long flags = 0;
			int ppid = 0, pgrp = 0, sid = 0;

			sscanf(close_ + 2, "%c %d %d %d %*d %*d %lu %*u %*u %*u %*u %*u %*u %*d %*d %*d %ld",
			       &p->state, &ppid, &pgrp, &sid, &flags, &nice);
			p->ppid = ppid;
			p->pgrp = pgrp;
			p->sid = sid;
			p->flags = flags;
			p->nice = (int)nice;
		}
	}
	if (status) {
		char *u = strstr(status, "\nUid:"), *g = strstr(status, "\nGid:");

		if (u)
			p->uid = (uid_t)strtoul(u + 5, NULL, 10);
		if (g)
			p->gid = (gid_t)strtoul(g + 5, NULL, 10);
	}
	if (cmd) {
		size_t n = len < sizeof(p->psargs) - 1 ? len : sizeof(p->psargs) - 1;

		for (size_t i = 0; i < n; i++)
			p->psargs[i] = cmd[i] ? cmd[i] : ' ';
		while (n && p->psargs[n - 1] == ' ')
			p->psargs[--n] = 0;
	}
	free(stat);
	free(status);
	free(cmd);
}

/* Every note, in the kernel's order. */
static int make_notes(struct core *c, struct uffdwp_remote *r, const char *auxv, size_t auxv_len,
		      struct uffdwp__notes *n)
{
	struct uffdwp__core_process proc;
	struct uffdwp__core_file *files = calloc(c->nmaps ? c->nmaps : 1, sizeof(*files));
	const struct uffdwp__remote_thread *t;
	/* A live process has no "signal that killed it": as gcore, none. */
	const siginfo_t no_signal = { 0 };
	size_t nfiles = 0;
	int ret = 0;

	if (!files)
		return -ENOMEM;
	read_process(c->pid, &proc);
	for (size_t i = 0; i < c->nmaps; i++)
		if (c->maps[i].path[0] == '/')
			files[nfiles++] = (struct uffdwp__core_file){
				c->maps[i].start, c->maps[i].end, c->maps[i].offset / c->page,
				c->maps[i].path };
	for (size_t i = 0; !ret && (t = uffdwp__remote_thread(r, i)); i++) {
		struct uffdwp__core_thread ct = {
			.tid = t->tid, .regs = &t->regs, .fpregs = &t->fpregs,
			.xstate = t->xstate, .xstate_len = t->xstate_len,
			.sighold = t->sigmask,
		};

		ret = uffdwp__note_prstatus(n, &proc, &ct);
		if (!ret && i == 0) {
			ret = uffdwp__note_prpsinfo(n, &proc);
			if (!ret)
				ret = uffdwp__note_add(n, "CORE", NT_SIGINFO, &no_signal,
						       sizeof(no_signal));
			if (!ret && auxv)
				ret = uffdwp__note_add(n, "CORE", NT_AUXV, auxv, auxv_len);
			if (!ret)
				ret = uffdwp__note_file(n, files, nfiles, c->page);
		}
		if (!ret)
			ret = uffdwp__note_regsets(n, &ct);
	}
	if (!ret && c->ndiscarded)
		ret = uffdwp__note_add(n, "UFFDWP", UFFDWP__NT_DISCARDED, c->discarded,
				       c->ndiscarded * sizeof(c->discarded[0]));
	free(files);
	return ret;
}

/* Why pid refused us (err from uffdwp_remote_open or _attach), in one
 * sentence. */
static void explain(pid_t pid, int err, char *why, size_t len)
{
	char *status = read_proc(pid, "status", NULL);
	char *scope = read_proc(1, "../sys/kernel/yama/ptrace_scope", NULL);
	char *sysctl = read_proc(1, "../sys/vm/unprivileged_userfaultfd", NULL);
	char *t = status ? strstr(status, "\nTracerPid:") : NULL;
	char *u = status ? strstr(status, "\nUid:") : NULL;
	long tracer = t ? strtol(t + 11, NULL, 10) : 0;
	unsigned long uid = u ? strtoul(u + 5, NULL, 10) : 0;

	if (err == -ESRCH)
		snprintf(why, len, "no such process");
	else if (err == -EPERM && tracer)
		snprintf(why, len, "it is already traced by process %ld", tracer);
	else if (err == -EPERM && u && uid != (unsigned long)geteuid() && geteuid() != 0)
		snprintf(why, len, "it belongs to uid %lu and we run as uid %lu without CAP_SYS_PTRACE",
			 uid, (unsigned long)geteuid());
	else if (err == -EPERM && scope && atoi(scope) > 0)
		snprintf(why, len, "Yama's kernel.yama.ptrace_scope is %d: only %s may trace it",
			 atoi(scope), atoi(scope) == 1 ? "its ancestors or CAP_SYS_PTRACE" :
				      atoi(scope) == 2 ? "CAP_SYS_PTRACE" : "nobody");
	else if (err == -EPERM)
		snprintf(why, len, "ptrace is refused (the target is not dumpable, or a security "
			 "module forbids it)");
	else if (err == -EACCES)
		snprintf(why, len, "its userfaultfd(2) was refused (vm.unprivileged_userfaultfd=%s "
			 "and the target lacks CAP_SYS_PTRACE, or a seccomp filter forbids it)",
			 sysctl ? strtok(sysctl, "\n") : "?");
	else if (err == -ENOSYS)
		snprintf(why, len, "its kernel has no userfaultfd");
	else if (err == -ENOEXEC)
		snprintf(why, len, "no rt_sigreturn trampoline found in its code (needed to undo our "
			 "system call should we be killed)");
	else if (err == -EBUSY)
		snprintf(why, len, "every thread is stopped by job control (SIGSTOP)");
	else if (err == -EOPNOTSUPP)
		snprintf(why, len, "userfaultfd write-protection is missing here (kernel or "
			 "architecture)");
	else
		snprintf(why, len, "%s", strerror(-err));
	free(status);
	free(scope);
	free(sysctl);
}

struct summary {
	pid_t pid;
	size_t threads, segments;
	uint64_t inject_ns;  /* the context's creation: one thread stalled at most this */
	uint64_t pause_ns, total_ns, pages, copied, waits, bytes, discarded;
};

static void print_summary(const struct summary *s, const char *path, bool json)
{
	if (json) {
		printf("{\"pid\": %d, \"file\": \"%s\", \"threads\": %zu, \"segments\": %zu, "
		       "\"pause_ns\": %llu, \"inject_ns\": %llu, \"total_ns\": %llu, \"pages\": %llu, \"faults\": %llu, "
		       "\"writer_waits\": %llu, \"bytes\": %llu, \"discarded_ranges\": %llu}\n",
		       s->pid, path, s->threads, s->segments, (unsigned long long)s->pause_ns,
		       (unsigned long long)s->inject_ns, (unsigned long long)s->total_ns, (unsigned long long)s->pages,
		       (unsigned long long)s->copied, (unsigned long long)s->waits,
		       (unsigned long long)s->bytes, (unsigned long long)s->discarded);
		return;
	}
	printf("core of %d: %s, %zu threads, %zu segments; pause %.2f ms (one thread %.2f ms "
	       "before); pages %llu, faults %llu; %.1f MiB in %.2f s%s\n",
	       s->pid, path, s->threads, s->segments, s->pause_ns / 1e6, s->inject_ns / 1e6,
	       (unsigned long long)s->pages, (unsigned long long)s->copied,
	       s->bytes / 1048576.0, s->total_ns / 1e9,
	       s->discarded ? " (ranges discarded meanwhile are listed in the core)" : "");
}

static void progress_line(struct uffdwp_snapshot *snap, size_t page)
{
	struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };

	if (uffdwp_snapshot_progress(snap, &p) == 0 && p.pages_total)
		fprintf(stderr, "\rsaving: %llu / %llu MiB (%3.0f%%), %llu faults ",
			(unsigned long long)(p.pages_done * page >> 20),
			(unsigned long long)(p.pages_total * page >> 20),
			100.0 * (double)p.pages_done / (double)p.pages_total,
			(unsigned long long)p.pages_copied);
}

static int usage(FILE *to, int status)
{
	fprintf(to, "usage: uffdwp core [-o FILE] [--json] [-q] PID\n");
	return status;
}

static void free_core(struct core *c)
{
	for (size_t i = 0; i < c->nmaps; i++) {
		free(c->maps[i].path);
		free(c->maps[i].copy);
	}
	free(c->maps);
	free(c->segs);
	free(c->discarded);
	pthread_mutex_destroy(&c->lock);
}

/* Registering a mapping the kernel refuses (e.g. a range the target
 * registered itself) makes it one to copy during the stop instead. Those
 * registered stay so: the snapshot's own registration of the same range
 * with the same context is then a no-op, and unregistering (which walks
 * every page table entry, as protecting does) is left to its end. */
static void check_registrable(struct core *c, struct uffdwp *ctx)
{
	for (size_t i = 0; i < c->nmaps; i++) {
		struct mapping *m = &c->maps[i];

		if (m->how != HOW_PROTECT)
			continue;
		if (uffdwp_register(ctx, (void *)(uintptr_t)m->start, m->end - m->start,
				    UFFDWP_REGISTER_MODE_WP) < 0)
			m->how = HOW_COPY;
	}
}

/* The segments, placed; returns the notes' offset (the end of the memory). */
static uint64_t layout(struct core *c)
{
	for (size_t i = 0; i < c->nmaps; i++) {
		const struct mapping *m = &c->maps[i];
		uint64_t len = m->end - m->start;

		c->segs[i] = (struct uffdwp__core_segment){
			.vaddr = m->start, .memsz = len,
			.filesz = m->how == HOW_NONE ? 0 : m->how == HOW_HEADER ? c->page : len,
			.flags = (m->perms[0] == 'r' ? PF_R : 0) | (m->perms[1] == 'w' ? PF_W : 0) |
				 (m->perms[2] == 'x' ? PF_X : 0),
		};
	}
	return uffdwp__core_layout(c->segs, c->nmaps, c->page);
}

/* Begin the live snapshot of the protected mappings (none: *snap NULL). */
static int begin_snapshot(struct core *c, struct uffdwp *ctx, struct uffdwp_snapshot **snap)
{
	struct uffdwp_snapshot_region *regions = calloc(c->nmaps ? c->nmaps : 1, sizeof(*regions));
	struct uffdwp_snapshot_opts o = {
		.sz = sizeof(o), .fd = -1, .fn = sink, .arg = c, .context = ctx, .events = on_event,
	};
	size_t n = 0;
	int ret = 0;

	*snap = NULL;
	if (!regions)
		return -ENOMEM;
	for (size_t i = 0; i < c->nmaps; i++)
		if (c->maps[i].how == HOW_PROTECT)
			regions[n++] = (struct uffdwp_snapshot_region){
				c->maps[i].start, c->maps[i].end - c->maps[i].start };
	if (n)
		ret = uffdwp_snapshot_begin(snap, regions, n, &o);
	free(regions);
	return ret;
}

/* What happens while the target is stopped, in order; 0 or a negative
 * errno. */
static int while_stopped(struct core *c, struct uffdwp *ctx, struct uffdwp_snapshot **snap,
			 uint64_t *notes_at, const struct smaps_info *info, size_t ninfo)
{
	int ret = read_mappings(c, info, ninfo);

	if (ret)
		return ret;
	check_registrable(c, ctx);
	ret = copy_stopped(c);
	if (ret)
		return ret;
	if (c->nmaps + 1 >= PN_XNUM)
		return -E2BIG;
	c->segs = calloc(c->nmaps ? c->nmaps : 1, sizeof(*c->segs));
	if (!c->segs)
		return -ENOMEM;
	*notes_at = layout(c);
	if (ftruncate(c->fd, (off_t)*notes_at) < 0)
		return -errno;
	return begin_snapshot(c, ctx, snap);
}

int cmd_core(int argc, char **argv)
{
	const char *out = NULL;
	bool json = false, quiet = false;
	char default_path[64], why[256];
	pid_t pid = 0;
	struct core c = { .fd = -1, .page = (size_t)sysconf(_SC_PAGESIZE) };
	struct uffdwp_remote *r = NULL;
	struct uffdwp *ctx = NULL;
	struct uffdwp_snapshot *snap = NULL;
	struct uffdwp__notes notes = { 0 };
	struct summary sum = { 0 };
	char *auxv = NULL;
	size_t auxv_len = 0;
	uint64_t notes_at = 0;
	/* Events: a range discarded or moved during the save is noted. */
	struct uffdwp_opts uo = { .sz = sizeof(uo), .backend = UFFDWP_BACKEND_KERNEL,
				  .features = UFFDWP_FEATURE_WP_UNPOPULATED |
					      UFFDWP_FEATURE_WP_HUGETLBFS_SHMEM |
					      UFFDWP_FEATURE_THREAD_ID | UFFDWP_FEATURE_EVENT_REMOVE |
					      UFFDWP_FEATURE_EVENT_UNMAP | UFFDWP_FEATURE_EVENT_REMAP };
	struct smaps_info *info = NULL;
	size_t ninfo = 0;
	uint64_t t0 = now_ns();
	int ret, status = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-o") && i + 1 < argc)
			out = argv[++i];
		else if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "-q"))
			quiet = true;
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
			return usage(stdout, 0);
		else if (argv[i][0] != '-' && !pid && atoi(argv[i]) > 0)
			pid = atoi(argv[i]);
		else
			return usage(stderr, 2);
	}
	if (!pid)
		return usage(stderr, 2);
	if (!out) {
		snprintf(default_path, sizeof(default_path), "core.%d", pid);
		out = default_path;
	}
	c.pid = pid;
	c.path = out;
	pthread_mutex_init(&c.lock, NULL);

	c.fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (c.fd < 0) {
		fprintf(stderr, "uffdwp core: %s: %s\n", out, strerror(errno));
		free_core(&c);
		return 1;
	}
	info = read_smaps(pid, &ninfo);
	/* Set at exec and never changed: read before the stop, not in it. */
	auxv = read_proc(pid, "auxv", &auxv_len);
	/* The context first: it stalls one thread, not all. */
	uint64_t t_open = now_ns();

	ret = uffdwp_remote_open(pid, &ctx, &uo);
	sum.inject_ns = now_ns() - t_open;
	if (ret) {
		explain(pid, ret, why, sizeof(why));
		fprintf(stderr, "uffdwp core: cannot protect the memory of process %d: %s; "
			"it was left untouched\n", pid, why);
		goto out;
	}
	ret = uffdwp_remote_attach(&r, pid);
	if (ret) {
		explain(pid, ret, why, sizeof(why));
		fprintf(stderr, "uffdwp core: cannot stop process %d: %s; it was left untouched\n",
			pid, why);
		goto out;
	}
	/* --- the target is stopped: keep this short --- */
	ret = while_stopped(&c, ctx, &snap, &notes_at, info, ninfo);
	uffdwp_remote_resume(r);
	/* --- the target runs --- */
	sum.pause_ns = uffdwp_remote_pause_ns(r);
	if (ret) {
		fprintf(stderr, "uffdwp core: %s\n", strerror(-ret));
		goto out;
	}
	for (size_t i = 0; i < c.nmaps && !ret; i++)
		if (c.maps[i].copy)
			ret = write_at(&c, c.maps[i].copy, c.segs[i].filesz, c.segs[i].offset);
	if (ret && snap)
		uffdwp_snapshot_cancel(snap);

	/* The save: progress on a terminal, the target watched. */
	while (snap && !ret) {
		struct pollfd p[2] = { { uffdwp_snapshot_fd(snap), POLLIN, 0 },
				       { uffdwp_remote_pidfd(r), POLLIN, 0 } };

		if (poll(p, 2, 200) < 0 && errno != EINTR)
			break;
		if (p[0].revents)
			break;
		if (p[1].revents) {  /* the target exited: nothing more to read */
			uffdwp_snapshot_cancel(snap);
			ret = -ESRCH;
			break;
		}
		if (!quiet && !json && isatty(2))
			progress_line(snap, c.page);
	}
	if (!quiet && !json && isatty(2))
		fprintf(stderr, "\r\033[K");
	if (snap) {
		struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };

		uffdwp_snapshot_progress(snap, &p);
		sum.pages = p.pages_total;
		sum.copied = p.pages_copied;
		sum.waits = p.writer_waits;
		int sret = uffdwp_snapshot_end(snap);

		snap = NULL;
		if (!ret)
			ret = sret;
	}
	if (ret == -ESRCH) {
		fprintf(stderr, "uffdwp core: process %d exited during the save; no core written\n", pid);
		goto out;
	}
	if (!ret)
		ret = c.sink_error;
	if (ret) {
		fprintf(stderr, "uffdwp core: saving failed: %s; no core written\n", strerror(-ret));
		goto out;
	}
	ret = make_notes(&c, r, auxv, auxv_len, &notes);
	if (!ret) {
		size_t hlen = uffdwp__core_headers_size(c.nmaps);
		unsigned char *h = malloc(hlen);

		if (!h) {
			ret = -ENOMEM;
		} else {
			uffdwp__core_headers(h, c.segs, c.nmaps, notes_at, notes.len, c.page);
			if (pwrite(c.fd, h, hlen, 0) != (ssize_t)hlen ||
			    pwrite(c.fd, notes.data, notes.len, (off_t)notes_at) != (ssize_t)notes.len)
				ret = -errno ? -errno : -EIO;
			free(h);
		}
	}
	if (ret) {
		fprintf(stderr, "uffdwp core: %s: %s\n", out, strerror(-ret));
		goto out;
	}
	sum.pid = pid;
	sum.threads = uffdwp_remote_threads(r);
	sum.segments = c.nmaps;
	sum.bytes = notes_at + notes.len;
	sum.discarded = c.ndiscarded;
	sum.total_ns = now_ns() - t0;
	print_summary(&sum, out, json);
	status = 0;
out:
	if (snap)
		uffdwp_snapshot_end(snap);
	if (status)
		unlink(out);  /* no partial core is left behind */
	uffdwp_close(ctx);
	uffdwp_remote_free(r);
	if (c.fd >= 0)
		close(c.fd);
	uffdwp__notes_free(&notes);
	free(auxv);
	free(info);
	free_core(&c);
	return status;
}
