/* SPDX-License-Identifier: MIT */
/* The command's handling of bad arguments: an exit status of 2 and a
 * message, at once (never a run that does not end). */
#include <limits.h>
#include <sys/wait.h>
#include "test.h"

/* Run build/uffdwp (beside the test runner's directory) with argv; returns
 * its exit status, failing the test if it does not exit within 10 s. */
static int run_tool(const char *const *argv)
{
	char self[PATH_MAX], tool[PATH_MAX + 16];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	int status;
	pid_t pid;

	CHECK(n > 0);
	self[n] = '\0';
	*strrchr(self, '/') = '\0';  /* BUILD/tests */
	snprintf(tool, sizeof(tool), "%s/../uffdwp", self);
	fflush(NULL);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		alarm(10);  /* SIGALRM ends a run that would not stop */
		execv(tool, (char *const *)argv);
		_exit(127);
	}
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status))
		FAIL("%s %s did not exit (signal %d)", tool, argv[1], WTERMSIG(status));
	return WEXITSTATUS(status);
}

TEST(cli_bench_bad_repeat, ON_NONE)
{
	static const char *const bad[] = { "-1", "0", "x3", "1001", "" };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *argv[] = { "uffdwp", "bench", "fault", "--repeat", bad[i], NULL };

		CHECK_EQ(run_tool(argv), 2);
	}
}

/* --size in MiB is shifted to bytes: huge values used to wrap into a small
 * store; negative, zero and non-numeric ones were taken by atol(). */
TEST(cli_demo_bad_size, ON_NONE)
{
	static const char *const bad[] = { "18446744073709551615", "17592186044416", "-1", "0",
					   "12x", "" };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *argv[] = { "uffdwp", "demo", "--size", bad[i], NULL };

		CHECK_EQ(run_tool(argv), 2);
	}
}
