/* SPDX-License-Identifier: MIT */
/*
 * The fuzzing corpus (fuzz/corpus) as a regression test: every file goes
 * through the same harness as the fuzzer, so `make check` replays what the
 * fuzzer found without clang. Files named good-* must decode cleanly.
 */
#include <dirent.h>
#include <libgen.h>
#include "format_fixture.h"
#include "../fuzz/harness.h"

/* The corpus beside this source file, or under the working directory. */
static DIR *open_corpus(char *dir, size_t cap)
{
	char here[512];
	DIR *d;

	snprintf(here, sizeof(here), "%s", __FILE__);
	snprintf(dir, cap, "%s/../fuzz/corpus", dirname(here));
	d = opendir(dir);
	if (d)
		return d;
	snprintf(dir, cap, "fuzz/corpus");
	return opendir(dir);
}

TEST(format_corpus_replay, ON_NONE)
{
	char dir[600], path[900];
	size_t files = 0, good = 0;
	struct dirent *e;
	DIR *d = open_corpus(dir, sizeof(dir));

	if (!d)
		FAIL("no fuzz/corpus beside %s or in the working directory", __FILE__);
	while ((e = readdir(d))) {
		unsigned char *data;
		size_t len;
		int ret;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		data = fx_read_file(path, &len);
		ret = harness_run(data, len);  /* abort()s on a broken invariant */
		if (!strncmp(e->d_name, "good-", 5)) {
			if (ret != 0)
				FAIL("%s: %s", e->d_name, strerror(-ret));
			good++;
		}
		free(data);
		files++;
	}
	closedir(d);
	CHECK(files >= 9);
	CHECK(good >= 3);
	printf("%zu corpus files, %zu of them good\n", files, good);
}
