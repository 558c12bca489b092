/* SPDX-License-Identifier: MIT */
/*
 * Another process (uffdwp_remote_attach(3)) and `uffdwp core`: the target
 * (tests/targets/bank.c) holds invariants only at consistent instants, and
 * checks by itself that stops, injected system calls and our deaths change
 * nothing of its registers, signal mask and blocking system calls.
 */
#include <elf.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include "backend.h"
#include "remote.h"
#include "test.h"

#define TOTAL (1ull << 62)  /* as in bank.c */
#define MOVERS 3
#define PAIR_SIZE 8192      /* struct pair in bank.c: two pages of 4 KiB */
#define REPLY_MS 20000      /* a target's reply: only a hang detector */

#define SPARE_PAGES 64     /* as in bank.c */

struct target {
	pid_t pid;
	int in, out;  /* its stdin (ours to write), its stdout (ours to read) */
	uint64_t pairs, sweep, spare;
	size_t sweep_pages;
};

/* build/tests/run -> build/NAME */
static void build_path(char *out, size_t len, const char *name)
{
	char exe[PATH_MAX - 64];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;

	CHECK(n > 0);
	exe[n] = 0;
	slash = strrchr(exe, '/');
	*slash = 0;                /* build/tests */
	slash = strrchr(exe, '/');
	*slash = 0;                /* build */
	snprintf(out, len, "%s/%s", exe, name);
}

static bool read_line(int fd, char *buf, size_t len, int timeout_ms)
{
	size_t n = 0;

	while (n + 1 < len) {
		struct pollfd p = { fd, POLLIN, 0 };

		if (poll(&p, 1, timeout_ms) <= 0)
			return false;
		if (read(fd, buf + n, 1) != 1)
			return false;
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = 0;
	return true;
}

/* In the target before exec: its userfaultfd(2) answers EPERM, as under
 * vm.unprivileged_userfaultfd=0 or a sandbox's seccomp filter. */
static void forbid_userfaultfd(void)
{
	static const struct test_forbidden rule = { .nr = __NR_userfaultfd, .errno_value = EPERM };

	test_forbid(&rule, 1);
}

static void target_start_with(struct target *t, bool no_userfaultfd)
{
	int in[2], out[2];
	char path[PATH_MAX], line[256];

	if (test_page() != PAIR_SIZE / 2)
		SKIP("bank.c lays its pairs out for 4 KiB pages");
	build_path(path, sizeof(path), "tests/targets/bank");
	CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0);
	t->pid = fork();
	CHECK(t->pid >= 0);
	if (t->pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		if (no_userfaultfd)
			forbid_userfaultfd();
		execl(path, path, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	t->in = in[1];
	t->out = out[0];
	if (!read_line(t->out, line, sizeof(line), REPLY_MS))
		FAIL("the target did not start (%s)", path);
	unsigned long pairs, sweep, spare;
	int pid;

	CHECK(sscanf(line, "ready %d %lx %lx %zu %lx", &pid, &pairs, &sweep, &t->sweep_pages,
		     &spare) == 5);
	CHECK_EQ(pid, t->pid);
	t->pairs = pairs;
	t->sweep = sweep;
	t->spare = spare;
}

static void target_start(struct target *t)
{
	target_start_with(t, false);
}

/* Send a command and expect a reply starting with want. */
static void target_cmd(struct target *t, char cmd, const char *want)
{
	char line[256];

	CHECK(write(t->in, &cmd, 1) == 1);
	if (!read_line(t->out, line, sizeof(line), REPLY_MS))
		FAIL("the target did not answer '%c' (left protected or stopped?)", cmd);
	if (strncmp(line, want, strlen(want)))
		FAIL("the target answered '%s' to '%c'", line, cmd);
}

/* Its state letter in /proc and its tracer. */
static void target_free_and_running(struct target *t)
{
	char path[64], buf[4096];
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/status", t->pid);
	fd = open(path, O_RDONLY);
	CHECK(fd >= 0);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	CHECK(n > 0);
	buf[n] = 0;
	CHECK(strstr(buf, "\nTracerPid:\t0\n") != NULL);
	CHECK(strstr(buf, "\nState:\tT") == NULL);
}

/* Everything still works, then it ends with status 0 (its own checks). */
static void target_quit(struct target *t)
{
	int status;

	target_free_and_running(t);
	target_cmd(t, 'w', "wrote");
	target_cmd(t, 'p', "fed");
	target_cmd(t, 'q', "bye 0");
	CHECK(waitpid(t->pid, &status, 0) == t->pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(t->in);
	close(t->out);
}

/* Run build/uffdwp with args; returns its exit status (or -signal). */
static int run_tool(char *const args[], char *err, size_t err_len, pid_t *child_out,
		    bool wait_for_it)
{
	char path[PATH_MAX];
	int errp[2], status;
	pid_t child;

	build_path(path, sizeof(path), "uffdwp");
	CHECK(pipe2(errp, O_CLOEXEC) == 0);
	child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		char *argv[16] = { path };

		for (int i = 0; args[i] && i < 14; i++)
			argv[i + 1] = args[i];
		dup2(errp[1], 2);
		int devnull = open("/dev/null", O_WRONLY);

		dup2(devnull, 1);
		execv(path, argv);
		_exit(127);
	}
	close(errp[1]);
	if (child_out)
		*child_out = child;
	if (!wait_for_it) {
		close(errp[0]);
		return 0;
	}
	size_t n = 0;
	ssize_t got;

	while (err && n + 1 < err_len && (got = read(errp[0], err + n, err_len - n - 1)) > 0)
		n += (size_t)got;
	if (err)
		err[n] = 0;
	close(errp[0]);
	CHECK(waitpid(child, &status, 0) == child);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

/* ---- reading a core ---------------------------------------------------- */

struct core_file {
	int fd;
	Elf64_Phdr *ph;
	size_t nph;
};

static void core_open(struct core_file *c, const char *path)
{
	Elf64_Ehdr eh;

	c->fd = open(path, O_RDONLY);
	CHECK(c->fd >= 0);
	CHECK(pread(c->fd, &eh, sizeof(eh), 0) == sizeof(eh));
	CHECK(!memcmp(eh.e_ident, ELFMAG, SELFMAG) && eh.e_type == ET_CORE);
	c->nph = eh.e_phnum;
	c->ph = calloc(c->nph, sizeof(*c->ph));
	CHECK(pread(c->fd, c->ph, c->nph * sizeof(*c->ph), (off_t)eh.e_phoff) ==
	      (ssize_t)(c->nph * sizeof(*c->ph)));
}

/* The target's memory at addr as the core has it. */
static void core_read(struct core_file *c, uint64_t addr, void *buf, size_t len)
{
	for (size_t i = 0; i < c->nph; i++) {
		const Elf64_Phdr *p = &c->ph[i];

		if (p->p_type == PT_LOAD && addr >= p->p_vaddr &&
		    addr + len <= p->p_vaddr + p->p_filesz) {
			CHECK(pread(c->fd, buf, len, (off_t)(p->p_offset + addr - p->p_vaddr)) ==
			      (ssize_t)len);
			return;
		}
	}
	FAIL("address 0x%llx is not in the core", (unsigned long long)addr);
}

static void core_close(struct core_file *c)
{
	close(c->fd);
	free(c->ph);
}

/* The invariants of bank.c at one instant. */
static void check_instant(struct core_file *c, const struct target *t)
{
	size_t page = test_page();
	uint64_t *sweep = malloc(t->sweep_pages * page);

	for (int i = 0; i <= MOVERS; i++) {
		uint64_t a, b;

		core_read(c, t->pairs + (uint64_t)i * PAIR_SIZE, &a, sizeof(a));
		core_read(c, t->pairs + (uint64_t)i * PAIR_SIZE + PAIR_SIZE / 2, &b, sizeof(b));
		if (a + b != TOTAL && a + b != TOTAL - 1)
			FAIL("pair %d: a %llu + b %llu is off by %lld: not one instant", i,
			     (unsigned long long)a, (unsigned long long)b,
			     (long long)(TOTAL - (a + b)));
	}
	/* The sweeper's words, in order: a run of k + 1, then k. */
	CHECK(sweep != NULL);
	core_read(c, t->sweep, sweep, t->sweep_pages * page);
	for (size_t j = 1; j < t->sweep_pages * page / sizeof(*sweep); j++)
		if (sweep[j] != sweep[j - 1] && (sweep[j] + 1 != sweep[j - 1] || sweep[0] != sweep[j - 1]))
			FAIL("sweep word %zu: %llu after %llu (word 0: %llu): not one instant", j,
			     (unsigned long long)sweep[j], (unsigned long long)sweep[j - 1],
			     (unsigned long long)sweep[0]);
	free(sweep);
}

static void core_path(char *out, size_t len)
{
	snprintf(out, len, "/tmp/uffdwp-test-core-%d", getpid());
}

static void remove_core(void)
{
	char path[64];

	core_path(path, sizeof(path));
	unlink(path);
}

static bool kernel_wp_available(void)
{
	struct uffdwp_probe p = { .sz = sizeof(p) };

	return uffdwp_probe(&p) == 0 &&
	       (p.kernel_features & UFFDWP_FEATURE_WP_UNPOPULATED);
}

static void need_remote(void)
{
	if (!kernel_wp_available())
		SKIP("no kernel userfaultfd write-protect with WP_UNPOPULATED here");
}

/* ---- the tests ----------------------------------------------------------- */

/* Cores taken while every thread writes: each one is a single instant. */
TEST_TIMEOUT(core_is_one_instant, ON_NONE, 120)
{
	struct target t;
	char path[64], pid[16], err[512];

	need_remote();
	target_start(&t);
	core_path(path, sizeof(path));
	test_cleanup(remove_core);
	snprintf(pid, sizeof(pid), "%d", t.pid);
	for (int round = 0; round < 5; round++) {
		char *args[] = { "core", "-q", "-o", path, pid, NULL };
		struct core_file c;
		int st = run_tool(args, err, sizeof(err), NULL, true);

		if (st != 0)
			FAIL("uffdwp core exited %d: %s", st, err);
		core_open(&c, path);
		check_instant(&c, &t);
		core_close(&c);
	}
	target_quit(&t);
}

/* gdb reads the core as it reads gcore's: every thread's stack, the values. */
TEST_TIMEOUT(core_gdb_backtraces, ON_NONE, 120)
{
	static const char *const frames[] = { "mover", "sweeper", "sleeper", "reader", "main" };
	struct target t;
	char path[64], pid[16], err[512], exe[PATH_MAX], cmd[PATH_MAX * 2 + 256];
	char *out = malloc(1 << 16);
	size_t n = 0;
	FILE *f;

	need_remote();
	if (system("gdb --version >/dev/null 2>&1") != 0)
		SKIP("gdb is not installed (.ci/run installs it: apt-get install gdb)");
	target_start(&t);
	core_path(path, sizeof(path));
	test_cleanup(remove_core);
	snprintf(pid, sizeof(pid), "%d", t.pid);
	char *args[] = { "core", "-q", "-o", path, pid, NULL };
	int st = run_tool(args, err, sizeof(err), NULL, true);

	if (st != 0)
		FAIL("uffdwp core exited %d: %s", st, err);
	build_path(exe, sizeof(exe), "tests/targets/bank");
	snprintf(cmd, sizeof(cmd),
		 "gdb -nx -batch -ex 'thread apply all bt' -ex 'p pairs[3].a + pairs[3].b' "
		 "-ex 'info threads' %s %s 2>&1", exe, path);
	f = popen(cmd, "r");
	CHECK(f != NULL && out != NULL);
	while (n + 1 < (1 << 16) && fgets(out + n, (int)((1 << 16) - n), f))
		n += strlen(out + n);
	pclose(f);
	for (size_t i = 0; i < sizeof(frames) / sizeof(frames[0]); i++)
		if (!strstr(out, frames[i]))
			FAIL("no frame of %s in gdb's backtraces:\n%s", frames[i], out);
	if (strstr(out, "warning:") || strstr(out, "too small"))
		FAIL("gdb warned:\n%s", out);
	/* 8 threads: main, 3 movers, sweeper, sleeper, reader (+ registers). */
	int threads = 0;

	for (const char *p = out; (p = strstr(p, "\nThread ")); p++)
		threads++;
	CHECK(threads >= 7);
	char want1[64], want2[64];

	snprintf(want1, sizeof(want1), "= %llu\n", TOTAL);
	snprintf(want2, sizeof(want2), "= %llu\n", TOTAL - 1);
	if (!strstr(out, want1) && !strstr(out, want2))
		FAIL("gdb's pairs[3].a + pairs[3].b is not the invariant:\n%s", out);
	free(out);
	target_quit(&t);
}

/* SIGKILL the tool at random moments: the target runs on, unprotected. */
TEST_TIMEOUT(core_tool_killed_anytime, ON_NONE, 180)
{
	struct target t;
	char path[64], pid[16];

	need_remote();
	target_start(&t);
	core_path(path, sizeof(path));
	test_cleanup(remove_core);
	snprintf(pid, sizeof(pid), "%d", t.pid);
	for (int round = 0; round < 20; round++) {
		char *args[] = { "core", "-q", "-o", path, pid, NULL };
		struct timespec ts = { 0, 0 };
		uint32_t r = 0;
		pid_t tool;
		int status;

		CHECK(getrandom(&r, sizeof(r), 0) == sizeof(r));
		/* A random moment: from before the stop to the end of the save. */
		ts.tv_nsec = (long)(r % 40000) * 1000;
		run_tool(args, NULL, 0, &tool, false);
		nanosleep(&ts, NULL);
		kill(tool, SIGKILL);
		CHECK(waitpid(tool, &status, 0) == tool);
		/* Every page writable again, nothing stopped, nothing traced. */
		target_cmd(&t, 'w', "wrote");
		target_free_and_running(&t);
	}
	target_quit(&t);
}

struct queuer {
	pid_t pid;
	_Atomic int stop;
	int sent;
};

/* Queue SIGUSR1 to the target without pause until told to stop. */
static void *queue_signals(void *arg)
{
	struct queuer *q = arg;

	while (!atomic_load(&q->stop))
		if (sigqueue(q->pid, SIGUSR1, (union sigval){ .sival_int = 4242 }) == 0)
			q->sent++;
		else
			sched_yield();  /* its queue is full: let it drain */
	return NULL;
}

/* Signals sent to the target while cores are taken arrive as they were
 * sent (bank.c checks si_code and the value): none is lost or remade. */
TEST_TIMEOUT(core_signals_arrive_as_sent, ON_NONE, 120)
{
	struct target t;
	struct queuer q = { 0 };
	char path[64], pid[16], err[512], line[64];
	pthread_t thread;
	int seen = 0;

	need_remote();
	target_start(&t);
	core_path(path, sizeof(path));
	test_cleanup(remove_core);
	snprintf(pid, sizeof(pid), "%d", t.pid);
	q.pid = t.pid;
	CHECK(pthread_create(&thread, NULL, queue_signals, &q) == 0);
	for (int round = 0; round < 5; round++) {
		char *args[] = { "core", "-q", "-o", path, pid, NULL };
		int st = run_tool(args, err, sizeof(err), NULL, true);

		if (st != 0)
			FAIL("uffdwp core exited %d: %s", st, err);
	}
	atomic_store(&q.stop, 1);
	pthread_join(thread, NULL);
	CHECK(q.sent > 0);
	CHECK(write(t.in, "s", 1) == 1);
	CHECK(read_line(t.out, line, sizeof(line), REPLY_MS));
	CHECK(sscanf(line, "signals %d", &seen) == 1);
	CHECK(seen > 0);
	target_quit(&t);  /* fails if a signal arrived changed */
}

/* A caller who may not trace the target gets the reason; the target goes on. */
TEST_TIMEOUT(core_unprivileged_caller, ON_NONE, 60)
{
	struct target t;
	char pid[16], err[1024];
	int errp[2], status;
	pid_t child;

	if (geteuid() != 0)
		SKIP("needs root, to drop to nobody against a root-owned target");
	target_start(&t);
	snprintf(pid, sizeof(pid), "%d", t.pid);
	CHECK(pipe(errp) == 0);
	child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		char tool[PATH_MAX], out[64];
		int fd;

		build_path(tool, sizeof(tool), "uffdwp");
		snprintf(out, sizeof(out), "/tmp/uffdwp-test-core-nobody-%d", getpid());
		/* Opened as root: nobody may not reach a clone made under a
		 * private directory (mktemp -d), only run the tool itself. */
		fd = open(tool, O_RDONLY | O_CLOEXEC);
		dup2(errp[1], 2);
		if (setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			_exit(126);
		char *argv[] = { tool, "core", "-q", "-o", out, pid, NULL };

		fexecve(fd, argv, environ);
		_exit(127);
	}
	close(errp[1]);
	ssize_t n = read(errp[0], err, sizeof(err) - 1);

	err[n > 0 ? n : 0] = 0;
	close(errp[0]);
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 1);
	if (!strstr(err, "belongs to uid 0") || !strstr(err, "left untouched"))
		FAIL("not the precise reason: %s", err);
	target_quit(&t);
}

/* A target whose userfaultfd is forbidden gets the reason, and goes on. */
TEST_TIMEOUT(core_userfaultfd_forbidden_in_target, ON_NONE, 60)
{
	struct target t;
	char path[64], pid[16], err[1024];
	struct uffdwp *ctx;

	need_remote();
	target_start_with(&t, true);
	CHECK_RET(uffdwp_remote_open(t.pid, &ctx, NULL), -EACCES);
	core_path(path, sizeof(path));
	test_cleanup(remove_core);
	snprintf(pid, sizeof(pid), "%d", t.pid);
	char *args[] = { "core", "-q", "-o", path, pid, NULL };
	int st = run_tool(args, err, sizeof(err), NULL, true);

	CHECK_EQ(st, 1);
	if (!strstr(err, "userfaultfd(2) was refused") || !strstr(err, "left untouched"))
		FAIL("not the precise reason: %s", err);
	CHECK(access(path, F_OK) != 0);  /* no file left behind */
	target_quit(&t);
}

/* ---- through the library: a remote snapshot whose sink we hold ---------- */

struct held_sink {
	sem_t entered, release;
	_Atomic int calls;
	/* The events the snapshot passed on (engine thread). */
	pthread_mutex_t lock;
	struct uffdwp_event events[8];
	int nevents;
};

static int held_sink_fn(void *arg, uint64_t addr, const void *data, size_t len)
{
	struct held_sink *h = arg;

	if (atomic_fetch_add(&h->calls, 1) == 0) {
		sem_post(&h->entered);
		while (sem_wait(&h->release) < 0 && errno == EINTR)
			;
	}
	return 0;
}

static int held_events_fn(void *arg, const struct uffdwp_event *ev)
{
	struct held_sink *h = arg;

	pthread_mutex_lock(&h->lock);
	if (h->nevents < 8)
		h->events[h->nevents++] = *ev;
	pthread_mutex_unlock(&h->lock);
	return 0;
}

/* Begin a snapshot of the target's sweep and spare pages, through a
 * context with remove and unmap events; the sink holds the saver at its
 * first batch until released. */
static struct uffdwp_snapshot *remote_snapshot(struct target *t, struct held_sink *h,
					       struct uffdwp **ctx)
{
	struct uffdwp_snapshot_region regions[2] = {
		{ t->sweep, t->sweep_pages * test_page() },
		{ t->spare, SPARE_PAGES * test_page() },
	};
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = -1, .fn = held_sink_fn, .arg = h,
					  .events = held_events_fn };
	struct uffdwp_opts co = { .sz = sizeof(co),
				  .features = UFFDWP_FEATURE_WP_UNPOPULATED |
					      UFFDWP_FEATURE_EVENT_REMOVE | UFFDWP_FEATURE_EVENT_UNMAP };
	struct uffdwp_remote *r;
	struct uffdwp_snapshot *snap;

	sem_init(&h->entered, 0, 0);
	sem_init(&h->release, 0, 0);
	pthread_mutex_init(&h->lock, NULL);
	CHECK_OK(uffdwp_remote_open(t->pid, ctx, &co));
	CHECK_OK(uffdwp_remote_attach(&r, t->pid));
	o.context = *ctx;
	CHECK_OK(uffdwp_snapshot_begin(&snap, regions, 2, &o));
	CHECK_OK(uffdwp_remote_resume(r));
	CHECK(uffdwp_remote_pause_ns(r) > 0);
	uffdwp_remote_free(r);
	CHECK(test_sem_wait(&h->entered, REPLY_MS));
	return snap;
}

/* The target discards and unmaps memory mid-save: the snapshot says which
 * ranges (the core notes them), skips what is gone and completes. */
TEST_TIMEOUT(remote_discard_mid_save, ON_NONE, 60)
{
	struct target t;
	struct held_sink h = { 0 };
	struct uffdwp *ctx;
	struct uffdwp_snapshot *snap;
	size_t page = test_page();
	bool removed = false, unmapped = false;

	need_remote();
	target_start(&t);
	snap = remote_snapshot(&t, &h, &ctx);
	target_cmd(&t, 'd', "discarded");
	target_cmd(&t, 'u', "unmapped");
	CHECK(t.spare > t.sweep);  /* saved after the held batch of sweep pages */
	sem_post(&h.release);
	CHECK_OK(uffdwp_snapshot_end(snap));
	for (int i = 0; i < h.nevents; i++) {
		const struct uffdwp_event *ev = &h.events[i];

		if (ev->type == UFFDWP_EVENT_REMOVE && ev->remove.start == t.spare &&
		    ev->remove.end == t.spare + SPARE_PAGES / 4 * page)
			removed = true;
		if (ev->type == UFFDWP_EVENT_UNMAP &&
		    ev->remove.start == t.spare + SPARE_PAGES / 2 * page &&
		    ev->remove.end == t.spare + SPARE_PAGES * page)
			unmapped = true;
	}
	CHECK(removed && unmapped);
	uffdwp_close(ctx);
	target_quit(&t);
}

/* The target exits mid-save: the snapshot ends with -ESRCH, nothing hangs. */
TEST_TIMEOUT(remote_target_exits_mid_save, ON_NONE, 60)
{
	struct target t;
	struct held_sink h = { 0 };
	struct uffdwp *ctx;
	struct uffdwp_snapshot *snap;
	int status;

	need_remote();
	target_start(&t);
	snap = remote_snapshot(&t, &h, &ctx);
	CHECK(write(t.in, "x", 1) == 1);
	CHECK(waitpid(t.pid, &status, 0) == t.pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 3);
	sem_post(&h.release);
	CHECK_RET(uffdwp_snapshot_end(snap), -ESRCH);
	uffdwp_close(ctx);
	close(t.in);
	close(t.out);
}

/* The target forks mid-save: the save completes, both run on. */
TEST_TIMEOUT(remote_target_forks_mid_save, ON_NONE, 60)
{
	struct target t;
	struct held_sink h = { 0 };
	struct uffdwp *ctx;
	struct uffdwp_snapshot *snap;

	need_remote();
	target_start(&t);
	snap = remote_snapshot(&t, &h, &ctx);
	target_cmd(&t, 'f', "forked");
	sem_post(&h.release);
	CHECK_OK(uffdwp_snapshot_end(snap));
	CHECK(atomic_load(&h.calls) > 0);
	uffdwp_close(ctx);
	target_quit(&t);
}

/* We die at every step of the injected system calls: the target's thread
 * is put back by its rt_sigreturn frame, or by the kernel's detach. */
TEST_TIMEOUT(remote_dies_mid_injection, ON_NONE, 120)
{
	need_remote();
	for (int step = 1; step <= 8; step++) {
		struct target t;
		pid_t child;
		int status;

		target_start(&t);
		child = fork();
		CHECK(child >= 0);
		if (child == 0) {
			struct uffdwp *ctx;

			uffdwp__remote_die_at = step;
			if (uffdwp_remote_open(t.pid, &ctx, NULL))
				_exit(2);
			_exit(1);  /* the step was never reached */
		}
		CHECK(waitpid(child, &status, 0) == child);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			FAIL("step %d: the injector ended with status 0x%x", step, status);
		target_quit(&t);
	}
}

/* Bad arguments, and ourselves. */
TEST(remote_bad_arguments, ON_NONE)
{
	struct uffdwp_remote *r;
	struct uffdwp *ctx;

	CHECK_RET(uffdwp_remote_attach(NULL, 1), -EINVAL);
	CHECK_RET(uffdwp_remote_attach(&r, 0), -EINVAL);
	CHECK_RET(uffdwp_remote_attach(&r, getpid()), -EINVAL);
	CHECK_RET(uffdwp_remote_attach(&r, INT_MAX), -ESRCH);
	CHECK_RET(uffdwp_remote_open(1, NULL, NULL), -EINVAL);
	CHECK_RET(uffdwp_remote_open(0, &ctx, NULL), -EINVAL);
	CHECK_RET(uffdwp_remote_open(getpid(), &ctx, NULL), -EINVAL);
	CHECK_RET(uffdwp_remote_open(INT_MAX, &ctx, NULL), -ESRCH);
	struct uffdwp_opts sigbus = { .sz = sizeof(sigbus), .features = UFFDWP_FEATURE_SIGBUS };

	CHECK_RET(uffdwp_remote_open(1, &ctx, &sigbus), -EOPNOTSUPP);
	uffdwp_remote_free(NULL);
}

