/* SPDX-License-Identifier: MIT */
/* What this machine supports, and why. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>
#include "backend.h"
#include "kernel_abi.h"

static const char *const feature_names[] = {
	"PAGEFAULT_FLAG_WP", "EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE",
	"MISSING_HUGETLBFS", "MISSING_SHMEM", "EVENT_UNMAP", "SIGBUS",
	"THREAD_ID", "MINOR_HUGETLBFS", "MINOR_SHMEM", "EXACT_ADDRESS",
	"WP_HUGETLBFS_SHMEM", "WP_UNPOPULATED", "POISON", "WP_ASYNC", "MOVE",
};

const char *uffdwp_feature_name(uint64_t feature)
{
	for (size_t i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]); i++)
		if (feature == UINT64_C(1) << i)
			return feature_names[i];
	return NULL;
}

static long read_long(const char *path)
{
	char buf[32] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? strtol(buf, NULL, 10) : -1;
}

/* The bracketed word of /sys/kernel/mm/transparent_hugepage/enabled. */
static void read_thp_mode(char *out, size_t cap)
{
	char buf[128] = "";
	int fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY | O_CLOEXEC);
	char *open_bracket, *close_bracket;
	ssize_t n;

	out[0] = '\0';
	if (fd < 0)
		return;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	open_bracket = strchr(buf, '[');
	close_bracket = open_bracket ? strchr(open_bracket, ']') : NULL;
	if (close_bracket && (size_t)(close_bracket - open_bracket) <= cap)
		snprintf(out, cap, "%.*s", (int)(close_bracket - open_bracket - 1), open_bracket + 1);
}

/* Does PAGEMAP_SCAN answer? An empty scan of one mapped page is enough. */
static int pagemap_scan_works(void)
{
	struct page_region region;
	/* The page holding this stack frame is certainly mapped. */
	uintptr_t start = (uintptr_t)&region & ~(uintptr_t)(uffdwp__page_size() - 1);
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.start = start,
		.end = start + uffdwp__page_size(),
		.vec = (uintptr_t)&region,
		.vec_len = 1,
		.category_anyof_mask = PAGE_IS_PRESENT,
		.return_mask = PAGE_IS_PRESENT,
	};
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	long ret;

	if (fd < 0)
		return 0;
	ret = ioctl(fd, PAGEMAP_SCAN, &arg);
	close(fd);
	return ret >= 0;
}

int uffdwp_probe(struct uffdwp_probe *p)
{
	struct utsname u;
	size_t sz;

	if (!p || p->sz < sizeof(*p))
		return -EINVAL;
	sz = p->sz;
	memset(p, 0, sizeof(*p));
	p->sz = sz;
	if (uname(&u) == 0)
		snprintf(p->kernel_release, sizeof(p->kernel_release), "%s", u.release);
	uffdwp__kernel_probe(p);
	p->unprivileged_userfaultfd = (int)read_long("/proc/sys/vm/unprivileged_userfaultfd");
	p->max_map_count = read_long("/proc/sys/vm/max_map_count");
	read_thp_mode(p->thp_mode, sizeof(p->thp_mode));
	p->pagemap_scan = pagemap_scan_works();
	p->emulated_features = UFFDWP__EMULATED_FEATURES;
	p->auto_backend = (p->kernel_features & UFFDWP_FEATURE_PAGEFAULT_FLAG_WP)
				  ? UFFDWP_BACKEND_KERNEL
				  : UFFDWP_BACKEND_EMULATED;
	return 0;
}
