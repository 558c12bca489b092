/* SPDX-License-Identifier: MIT */
/*
 * The test runner: runs every TEST() in its own child process, once per
 * backend and memory type it applies to, with a timeout; prints the child's output when it
 * fails or skips; ends with "tests: N passed, N failed, N skipped" and exits
 * non-zero on any failure or when nothing passed.
 *
 *   run [-l] [-f SUBSTRING] [-b kernel|emulated] [-m anon|shmem|hugetlb]
 *       [-t TIMEOUT_SCALE]
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <time.h>
#include "test.h"

extern const struct test_case __start_uffdwp_tests[], __stop_uffdwp_tests[];

/* Undo steps a test registered (test_cleanup), run however it ends. */
static void (*cleanups[8])(void);
static int ncleanups;

void test_cleanup(void (*fn)(void))
{
	if (ncleanups == (int)(sizeof(cleanups) / sizeof(cleanups[0])))
		FAIL("too many cleanups");
	cleanups[ncleanups++] = fn;
}

static _Noreturn void end_test(int status)
{
	while (ncleanups > 0)
		cleanups[--ncleanups]();
	fflush(NULL);
	_exit(status);
}

_Noreturn void test_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	end_test(1);
}

_Noreturn void test_skip(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	end_test(TEST_EXIT_SKIP);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

enum outcome { PASSED, FAILED, SKIPPED };

/* Append what the child wrote to out (bounded), until EOF or the deadline. */
static bool drain(int fd, char *out, size_t cap, size_t *used, double deadline)
{
	for (;;) {
		int left_ms = (int)((deadline - now()) * 1000);
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char buf[4096];
		ssize_t n;

		if (left_ms <= 0)
			return false;
		if (poll(&p, 1, left_ms) <= 0)
			continue;
		n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			return true;
		if (*used + (size_t)n >= cap)
			n = (ssize_t)(cap - 1 - *used);
		memcpy(out + *used, buf, (size_t)n);
		*used += (size_t)n;
		out[*used] = '\0';
	}
}

static enum outcome run_one(const struct test_case *t, enum uffdwp_backend be,
			    enum test_mem mem, double scale, char *out, size_t cap)
{
	double deadline = now() + t->timeout_s * scale;
	size_t used = 0;
	int pipefd[2], status;
	pid_t pid;

	out[0] = '\0';
	fflush(NULL);
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		snprintf(out, cap, "pipe: %s\n", strerror(errno));
		return FAILED;
	}
	pid = fork();
	if (pid < 0) {
		snprintf(out, cap, "fork: %s\n", strerror(errno));
		return FAILED;
	}
	if (pid == 0) {
		setpgid(0, 0);
		dup2(pipefd[1], STDOUT_FILENO);
		dup2(pipefd[1], STDERR_FILENO);
		setvbuf(stdout, NULL, _IOLBF, 0);
		test_mem = mem;
		t->fn(be);
		end_test(0);
	}
	setpgid(pid, pid);
	close(pipefd[1]);
	if (!drain(pipefd[0], out, cap, &used, deadline)) {
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		close(pipefd[0]);
		snprintf(out + used, cap - used, "timed out after %.0f s\n",
			 t->timeout_s * scale);
		return FAILED;
	}
	close(pipefd[0]);
	waitpid(pid, &status, 0);
	kill(-pid, SIGKILL); /* anything the test left behind */
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return PASSED;
	if (WIFEXITED(status) && WEXITSTATUS(status) == TEST_EXIT_SKIP)
		return SKIPPED;
	used = strlen(out);
	if (WIFSIGNALED(status))
		snprintf(out + used, cap - used, "killed by signal %d (%s)\n",
			 WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		snprintf(out + used, cap - used, "exit status %d\n", WEXITSTATUS(status));
	return FAILED;
}

static int by_file_and_line(const void *a, const void *b)
{
	const struct test_case *x = *(const struct test_case *const *)a;
	const struct test_case *y = *(const struct test_case *const *)b;
	int c = strcmp(x->file, y->file);

	return c ? c : x->line - y->line;
}

static void usage(void)
{
	fprintf(stderr, "usage: run [-l] [-f SUBSTRING] [-b kernel|emulated] "
		"[-m anon|shmem|hugetlb] [-t TIMEOUT_SCALE]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static char out[1 << 16];
	const char *filter = NULL;
	static const char *const mem_names[MEM_COUNT] = { "anon", "shmem", "hugetlb" };
	unsigned only = ON_BOTH | 1u, only_mems = ON_ALLMEM;
	bool list = false;
	double scale = 1.0;
	int passed = 0, failed = 0, skipped = 0, opt;
	const char *env_scale = getenv("UFFDWP_TEST_TIMEOUT_SCALE");

	if (env_scale)
		scale = atof(env_scale);
	while ((opt = getopt(argc, argv, "lf:b:m:t:")) != -1) {
		switch (opt) {
		case 'l': list = true; break;
		case 'f': filter = optarg; break;
		case 't': scale = atof(optarg); break;
		case 'b':
			if (!strcmp(optarg, "kernel"))
				only = ON_KERNEL | 1u;
			else if (!strcmp(optarg, "emulated"))
				only = ON_EMULATED | 1u;
			else
				usage();
			break;
		case 'm':
			only_mems = 0;
			for (int m = 0; m < MEM_COUNT; m++)
				if (!strcmp(optarg, mem_names[m]))
					only_mems = 1u << m;
			if (!only_mems)
				usage();
			break;
		default: usage();
		}
	}
	if (scale <= 0)
		usage();
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);

	size_t ntests = (size_t)(__stop_uffdwp_tests - __start_uffdwp_tests);
	const struct test_case **order = calloc(ntests, sizeof(*order));

	if (!order)
		return 1;
	for (size_t i = 0; i < ntests; i++)
		order[i] = &__start_uffdwp_tests[i];
	/* In source order, so related tests run together and output is stable. */
	qsort(order, ntests, sizeof(*order), by_file_and_line);
	for (size_t i = 0; i < ntests; i++) {
		const struct test_case *t = order[i];

		for (int run = 0; run < (UFFDWP_BACKEND_EMULATED + 1) * MEM_COUNT; run++) {
			int be = run / MEM_COUNT;
			enum test_mem mem = (enum test_mem)(run % MEM_COUNT);
			unsigned bit = be == UFFDWP_BACKEND_AUTO ? 1u : 1u << be;
			bool applies = be == UFFDWP_BACKEND_AUTO ? t->backends == ON_NONE
								 : (t->backends & bit) != 0;
			char name[160];
			enum outcome o;
			double start;

			if (!applies || !(only & bit) || !(t->mems & only_mems & (1u << mem)))
				continue;
			/* anonymous memory keeps the plain name */
			snprintf(name, sizeof(name), "%s%s%s%s%s",
				 be == UFFDWP_BACKEND_AUTO ? "" : uffdwp_backend_name(be),
				 be == UFFDWP_BACKEND_AUTO ? "" : "/", t->name,
				 mem == MEM_ANON ? "" : "@", mem == MEM_ANON ? "" : mem_names[mem]);
			if (filter && !strstr(name, filter))
				continue;
			if (list) {
				printf("%s\n", name);
				continue;
			}
			start = now();
			o = run_one(t, be, mem, scale, out, sizeof(out));
			if (o == PASSED) {
				passed++;
				printf("PASS %s (%.2fs)\n", name, now() - start);
			} else if (o == SKIPPED) {
				skipped++;
				printf("SKIP %s: %s", name, out[0] ? out : "(no reason given)\n");
			} else {
				failed++;
				printf("FAIL %s (%.2fs)\n%s", name, now() - start, out);
			}
		}
	}
	free(order);
	if (list)
		return 0;
	printf("tests: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed || !passed ? 1 : 0;
}
