/* SPDX-License-Identifier: MIT */
/*
 * The core API in one page: protect a buffer, let a thread write to it, see
 * the write-protect fault arrive on the context's descriptor, resolve it.
 *
 *   cc protect.c $(pkg-config --cflags --libs uffdwp)
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uffdwp.h>

static void *writer(void *page)
{
	strcpy(page, "written after the fault was resolved");
	return NULL;
}

static int fail(const char *what, int err)
{
	fprintf(stderr, "%s: %s\n", what, strerror(-err));
	return 1;
}

int main(void)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	struct uffdwp *ctx;
	struct uffdwp_event ev;
	struct pollfd pfd;
	pthread_t thread;
	char *buf;
	int ret;

	buf = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return fail("mmap", -errno);
	ret = uffdwp_open(&ctx, NULL);
	if (ret < 0)
		return fail("uffdwp_open", ret);
	printf("backend: %s\n", uffdwp_backend_name(uffdwp_backend(ctx)));

	ret = uffdwp_register(ctx, buf, page, UFFDWP_REGISTER_MODE_WP);
	if (ret == 0)
		ret = uffdwp_writeprotect(ctx, buf, page, UFFDWP_WRITEPROTECT_MODE_WP);
	if (ret < 0)
		return fail("protect", ret);

	pthread_create(&thread, NULL, writer, buf);

	/* The writer is now blocked in its write; its fault is an event. */
	pfd = (struct pollfd){ .fd = uffdwp_fd(ctx), .events = POLLIN };
	if (poll(&pfd, 1, 5000) != 1)
		return fail("poll", -ETIMEDOUT);
	ret = uffdwp_read_events(ctx, &ev, 1);
	if (ret < 0)
		return fail("uffdwp_read_events", ret);
	printf("fault: %s at page +%zu by thread %u\n",
	       (ev.pagefault.flags & UFFDWP_PAGEFAULT_FLAG_WP) ? "write-protect" : "other",
	       (size_t)(ev.pagefault.address - (uintptr_t)buf), ev.pagefault.tid);

	/* Un-protecting wakes the writer; its write then completes. */
	ret = uffdwp_writeprotect(ctx, buf, page, 0);
	if (ret < 0)
		return fail("unprotect", ret);
	pthread_join(thread, NULL);
	printf("buffer: %s\n", buf);

	uffdwp_close(ctx);
	munmap(buf, page);
	return 0;
}
