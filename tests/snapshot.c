/* SPDX-License-Identifier: MIT */
/*
 * Live snapshots (uffdwp_snapshot_begin(3)) on both backends: what a
 * snapshot restores to must be the memory at its instant, whatever the
 * writers do meanwhile, whatever the sink, and failures must end cleanly.
 */
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include "backend.h"  /* UFFDWP__UNDER_TSAN */
#include "snapshot.h"
#include "test.h"

/* How long a writer that must stay blocked is watched (no event to wait
 * for: this bounds a negative result, as in core.c). */
#define STILL_BLOCKED_MS 200

/* A file for a snapshot, unlinked at once (so that a failing test leaves
 * nothing behind) and named by /proc/self/fd for the readers. */
struct snapfile {
	char path[64];
	int fd;
};

static void snapfile_open(struct snapfile *f)
{
	char tmpl[] = "/tmp/uffdwp-test-snap-XXXXXX";

	f->fd = mkstemp(tmpl);
	if (f->fd < 0)
		FAIL("mkstemp: %s", strerror(errno));
	unlink(tmpl);
	snprintf(f->path, sizeof(f->path), "/proc/self/fd/%d", f->fd);
}

static void snapfile_close(struct snapfile *f)
{
	close(f->fd);
}

/* Distinct contents for every page, so a page saved at the wrong address or
 * from the wrong instant is seen; every fourth page left zero (ZERO records). */
static void fill(char *mem, size_t npages, unsigned seed)
{
	for (size_t i = 0; i < npages; i++) {
		uint64_t *w = (uint64_t *)(mem + i * test_page());

		for (size_t j = 0; j < test_page() / sizeof(*w); j++)
			w[j] = i % 4 == 3 ? 0 : (seed * 0x9e3779b97f4a7c15ull) ^ (i << 20) ^ j;
	}
}

static struct uffdwp_snapshot_opts file_opts(enum uffdwp_backend backend, int fd)
{
	return (struct uffdwp_snapshot_opts){ .sz = sizeof(struct uffdwp_snapshot_opts),
					      .fd = fd, .backend = backend };
}

/* Restore a chain into a fresh mapping and compare it with want (len bytes);
 * the files must also pass verify. */
static void check_restores_to(const char *const *paths, size_t n, const void *want, size_t len)
{
	struct uffdwp_snapshot_error err = { .sz = sizeof(err) };
	void *image;
	size_t image_len;

	for (size_t i = 0; i < n; i++) {
		int ret = uffdwp_snapshot_file_verify(paths[i], NULL, &err);

		if (ret)
			FAIL("verify %s: %s (%s at %llu)", paths[i], strerror(-ret), err.message,
			     (unsigned long long)err.offset);
	}
	int ret = uffdwp_snapshot_restore_mapping(paths, n, &image, &image_len, &err);

	if (ret)
		FAIL("restore: %s (%s)", strerror(-ret), err.message);
	CHECK_EQ(image_len, len);
	for (size_t off = 0; off < len; off += test_page())
		if (memcmp((char *)image + off, (const char *)want + off, test_page()))
			FAIL("restored page %zu differs from the snapshot instant",
			     off / test_page());
	munmap(image, image_len);
}

static struct uffdwp_snapshot *begin1(void *mem, size_t len, const struct uffdwp_snapshot_opts *o)
{
	struct uffdwp_snapshot_region r = { (uintptr_t)mem, len };
	struct uffdwp_snapshot *snap = NULL;
	int ret = uffdwp_snapshot_begin(&snap, &r, 1, o);

	if (ret == -EOPNOTSUPP || (ret < 0 && o->backend == UFFDWP_BACKEND_KERNEL &&
				   (ret == -ENOSYS || ret == -EPERM || ret == -EACCES)))
		SKIP("snapshot on %s: %s", uffdwp_backend_name(o->backend), strerror(-ret));
	CHECK_OK(ret);
	return snap;
}

/* ---- a sink that can be held: the saver blocks in it until released ---- */

struct held_sink {
	sem_t entered;       /* posted when the saver first calls in */
	sem_t release;
	atomic_bool held;
	char *image;         /* where the pages go, by offset from base */
	uint64_t base;
	size_t len;
	uint8_t *seen;       /* per page: times passed */
};

static int held_sink_fn(void *arg, uint64_t addr, const void *data, size_t len)
{
	struct held_sink *h = arg;

	if (atomic_exchange(&h->held, false)) {
		sem_post(&h->entered);
		while (sem_wait(&h->release) < 0 && errno == EINTR)
			;
	}
	if (addr < h->base || addr + len > h->base + h->len || len % test_page())
		return -ERANGE;
	memcpy(h->image + (addr - h->base), data, len);
	for (size_t i = 0; i < len / test_page(); i++)
		h->seen[(addr - h->base) / test_page() + i]++;
	return 0;
}

static void held_sink_init(struct held_sink *h, void *mem, size_t len)
{
	sem_init(&h->entered, 0, 0);
	sem_init(&h->release, 0, 0);
	atomic_store(&h->held, true);
	h->image = test_map(len / test_page(), false);
	h->base = (uintptr_t)mem;
	h->len = len;
	h->seen = calloc(len / test_page(), 1);
	CHECK(h->seen != NULL);
}

static void held_sink_wait_entered(struct held_sink *h)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 5;
	if (sem_timedwait(&h->entered, &ts) < 0)
		FAIL("the saver never reached the sink");
}

static struct uffdwp_snapshot_opts held_opts(enum uffdwp_backend backend, struct held_sink *h)
{
	return (struct uffdwp_snapshot_opts){ .sz = sizeof(struct uffdwp_snapshot_opts),
					      .fn = held_sink_fn, .arg = h, .backend = backend };
}

/* Keep mem's contents in ref, begin a snapshot of it into the held sink h
 * and return once the saver is held inside its first batch. */
static struct uffdwp_snapshot *begin_held(enum uffdwp_backend backend, char *mem, size_t len,
					  char *ref, struct held_sink *h)
{
	memcpy(ref, mem, len);
	held_sink_init(h, mem, len);
	struct uffdwp_snapshot_opts o = held_opts(backend, h);
	struct uffdwp_snapshot *snap = begin1(mem, len, &o);

	held_sink_wait_entered(h);
	return snap;
}

/* A thread writing a byte into each of npages pages, then done. */
struct page_writer {
	pthread_t thread;
	char *mem;
	size_t npages;
	char value;
	atomic_bool done;
};

static void *page_writer_main(void *arg)
{
	struct page_writer *w = arg;

	for (size_t i = 0; i < w->npages; i++)
		((volatile char *)w->mem)[i * test_page() + 8] = w->value;
	atomic_store(&w->done, true);
	return NULL;
}

static void page_writer_start(struct page_writer *w, char *mem, size_t npages, char value)
{
	*w = (struct page_writer){ .mem = mem, .npages = npages, .value = value };
	CHECK_EQ(pthread_create(&w->thread, NULL, page_writer_main, w), 0);
}

static bool page_writer_done_within(struct page_writer *w, int ms)
{
	for (int waited = 0; waited < ms; waited++) {
		if (atomic_load(&w->done))
			return true;
		usleep(1000);
	}
	return atomic_load(&w->done);
}

/* ---- the tests ---------------------------------------------------------- */

TEST(snapshot_quiet_memory, ON_BOTH)
{
	const size_t npages = 300;
	char *mem = test_map(npages, false);
	struct snapfile f;
	struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };

	fill(mem, npages, 1);
	snapfile_open(&f);
	struct uffdwp_snapshot_opts o = file_opts(backend, f.fd);
	struct uffdwp_snapshot *snap = begin1(mem, npages * test_page(), &o);
	uint64_t id = uffdwp_snapshot_id(snap);

	CHECK(id != 0);
	CHECK(uffdwp_snapshot_fd(snap) >= 0);
	CHECK_OK(uffdwp_snapshot_wait(snap, 10000));
	CHECK_OK(uffdwp_snapshot_progress(snap, &p));
	CHECK_EQ(p.pages_total, npages);
	CHECK_EQ(p.pages_done, npages);
	CHECK_EQ(p.finished, 1);
	CHECK_OK(uffdwp_snapshot_end(snap));

	const char *paths[] = { f.path };

	check_restores_to(paths, 1, mem, npages * test_page());
	CHECK_OK(uffdwp_snapshot_file_info(f.path, &info, NULL, 0, NULL));
	CHECK_EQ(info.snapshot_id, id);
	CHECK_EQ(info.parent_id, 0);
	CHECK_EQ(info.page_count, npages - npages / 4);
	CHECK_EQ(info.zero_count, npages / 4);
	/* The memory is ours again: writable without faults. */
	memset(mem, 7, npages * test_page());
	snapfile_close(&f);
}

TEST(snapshot_bad_arguments, ON_NONE)
{
	char *mem = test_map(4, true);
	struct uffdwp_snapshot_region r = { (uintptr_t)mem, 4 * test_page() };
	struct uffdwp_snapshot_region two[2] = { r, { (uintptr_t)mem + test_page(), test_page() } };
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = -1 };
	struct uffdwp_snapshot *snap = NULL;

	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, NULL), -EINVAL);
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);  /* no sink */
	o.fd = 1;
	CHECK_RET(uffdwp_snapshot_begin(NULL, &r, 1, &o), -EINVAL);
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 0, &o), -EINVAL);
	CHECK_RET(uffdwp_snapshot_begin(&snap, two, 2, &o), -EINVAL);  /* overlap */
	r.addr += 1;
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	r.addr -= 1;
	r.len = 0;
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	r.len = 4 * test_page();
	o.parent_id = 5;  /* incremental without a tracker */
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	o.parent_id = 0;
	o.engine_mode = UFFDWP_ENGINE_CALLER;
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	o.engine_mode = UFFDWP_ENGINE_AUTO;
	o.sz = 8;
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	CHECK(snap == NULL);
	CHECK_OK(uffdwp_snapshot_end(NULL));
	/* Nothing was left protected. */
	memset(mem, 2, 4 * test_page());
}

TEST(snapshot_region_busy, ON_BOTH)
{
	char *mem = test_map(8, true);
	struct uffdwp *ctx = test_open(backend, 0);
	struct uffdwp_snapshot_opts o = file_opts(backend, 1);
	struct uffdwp_snapshot_region r = { (uintptr_t)mem, 8 * test_page() };
	struct uffdwp_snapshot *snap = NULL;

	CHECK_OK(uffdwp_register(ctx, mem + 4 * test_page(), 4 * test_page(),
				 UFFDWP_REGISTER_MODE_WP));
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EBUSY);
	/* The part that was ours is writable again. */
	memset(mem, 3, 4 * test_page());
	uffdwp_close(ctx);
}

/* Every write after begin goes through copy-before-write while the saver is
 * held in the sink; the writer never waits for the sink (the side buffer is
 * large enough) and the snapshot is the memory at the instant. */
TEST(snapshot_copy_before_write, ON_BOTH)
{
	const size_t npages = 512;
	size_t len = npages * test_page();
	char *mem = test_map(npages, false);
	char *ref = test_map(npages, false);
	struct held_sink h;
	struct page_writer w;
	struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };

	fill(mem, npages, 2);
	struct uffdwp_snapshot *snap = begin_held(backend, mem, len, ref, &h);

	page_writer_start(&w, mem, npages, 'w');
	if (!page_writer_done_within(&w, 5000))
		FAIL("a writer waited for a held sink with room in the side buffer");
	pthread_join(w.thread, NULL);
	CHECK_OK(uffdwp_snapshot_progress(snap, &p));
	/* All but the batch the saver had read before the sink held it. */
	CHECK(p.pages_copied > 0);
	CHECK(p.pages_copied <= npages);
	CHECK(p.side_peak >= p.pages_copied * test_page());
	CHECK_EQ(p.finished, 0);
	CHECK_RET(uffdwp_snapshot_wait(snap, 0), -ETIMEDOUT);
	sem_post(&h.release);
	CHECK_OK(uffdwp_snapshot_end(snap));
	CHECK(memcmp(h.image, ref, len) == 0);
	for (size_t i = 0; i < npages; i++)
		if (h.seen[i] != 1)
			FAIL("page %zu passed to the sink %u times", i, h.seen[i]);
}

/* A side buffer of 4 pages: the writer copies 4 pages, then waits for the
 * sink (back-pressure) and goes on once it drains. */
TEST(snapshot_back_pressure, ON_BOTH)
{
	const size_t npages = 1024;  /* well past the saver's first batch */
	size_t len = npages * test_page();
	char *mem = test_map(npages, false);
	char *ref = test_map(npages, false);
	struct held_sink h;
	struct page_writer w;
	struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };

	fill(mem, npages, 3);
	memcpy(ref, mem, len);
	held_sink_init(&h, mem, len);
	struct uffdwp_snapshot_opts o = held_opts(backend, &h);

	o.side_buffer = 4 * test_page();
	struct uffdwp_snapshot *snap = begin1(mem, len, &o);

	held_sink_wait_entered(&h);
	/* Write from the end: pages the saver has not claimed. */
	page_writer_start(&w, mem + (npages / 2) * test_page(), npages / 2, 'b');
	CHECK(!page_writer_done_within(&w, STILL_BLOCKED_MS));
	CHECK_OK(uffdwp_snapshot_progress(snap, &p));
	CHECK_EQ(p.side_peak, 4 * test_page());
	CHECK_EQ(p.pages_copied, 4);
	CHECK(p.writer_waits >= 1);
	sem_post(&h.release);
	CHECK(page_writer_done_within(&w, 10000));
	pthread_join(w.thread, NULL);
	CHECK_OK(uffdwp_snapshot_end(snap));
	CHECK(memcmp(h.image, ref, len) == 0);
}

/*
 * The consistency test: accounts spread over many pages, writer threads
 * moving money between them under a lock (the total holds only between
 * transfers), snapshots begun under that lock. Each file must restore to
 * the reference copy taken under the lock, and so to the invariant.
 */
#define ACCOUNTS_PER_PAGE 8
struct bank {
	pthread_mutex_t lock;
	int64_t *acct;     /* in the snapshotted memory */
	size_t naccts;
	size_t stride;     /* in int64_t: accounts spread across pages */
	atomic_bool stop;
	atomic_ulong transfers;
};

static void *teller(void *arg)
{
	struct bank *b = arg;
	unsigned seed = (unsigned)(uintptr_t)&seed;

	while (!atomic_load(&b->stop)) {
		size_t from = (size_t)rand_r(&seed) % b->naccts;
		size_t to = (size_t)rand_r(&seed) % b->naccts;
		int64_t amount = rand_r(&seed) % 100;

		pthread_mutex_lock(&b->lock);
		b->acct[from * b->stride] -= amount;
		b->acct[to * b->stride] += amount;
		pthread_mutex_unlock(&b->lock);
		atomic_fetch_add(&b->transfers, 1);
	}
	return NULL;
}

static int64_t total_of(const int64_t *acct, size_t n, size_t stride)
{
	int64_t sum = 0;

	for (size_t i = 0; i < n; i++)
		sum += acct[i * stride];
	return sum;
}

/* A tracker of the given method, skipping the test where it is missing. */
static struct uffdwp_tracker *tracker_or_skip(enum uffdwp_track_method method)
{
	struct uffdwp_tracker_opts to = { .sz = sizeof(to), .method = method };
	struct uffdwp_tracker *t;
	int ret = uffdwp_tracker_create(&t, &to);

	if (ret == -EOPNOTSUPP)
		SKIP("tracker method %s unavailable", uffdwp_track_method_name(method));
	CHECK_OK(ret);
	return t;
}

/* The tracker method that goes with a backend for synchronous faults. */
static enum uffdwp_track_method sync_method(enum uffdwp_backend backend)
{
	return backend == UFFDWP_BACKEND_KERNEL ? UFFDWP_TRACK_SYNC : UFFDWP_TRACK_EMULATED;
}

/*
 * Tellers move money between accounts under a lock while snapshots are
 * taken under that lock: every snapshot restores to the reference copied
 * under the same lock hold, and its total is right. With a tracker method
 * (not AUTO) the rounds are a chain, a full snapshot then incrementals,
 * and the whole chain is restored each round.
 */
static void consistent_rounds(enum uffdwp_backend backend, enum uffdwp_track_method method)
{
	const size_t npages = 2048, nthreads = 3, rounds = 4;
	size_t len = npages * test_page();
	char *mem = test_map(npages, true);
	char *ref = test_map(npages, false);
	struct bank b = { .acct = (int64_t *)mem, .stride = test_page() / sizeof(int64_t) /
							    ACCOUNTS_PER_PAGE };
	struct uffdwp_tracker *t = method ? tracker_or_skip(method) : NULL;
	struct snapfile f[4];
	const char *paths[4];
	pthread_t th[3];
	unsigned long during = 0;
	uint64_t parent = 0;

	b.naccts = npages * ACCOUNTS_PER_PAGE;
	pthread_mutex_init(&b.lock, NULL);
	for (size_t i = 0; i < b.naccts; i++)
		b.acct[i * b.stride] = 1000;
	const int64_t total = total_of(b.acct, b.naccts, b.stride);

	if (t)
		CHECK_OK(uffdwp_tracker_add(t, mem, len));
	for (size_t i = 0; i < nthreads; i++)
		CHECK_EQ(pthread_create(&th[i], NULL, teller, &b), 0);
	for (size_t round = 0; round < rounds; round++) {
		struct uffdwp_snapshot *snap;
		unsigned long before;

		snapfile_open(&f[round]);
		paths[round] = f[round].path;
		struct uffdwp_snapshot_opts o = file_opts(backend, f[round].fd);

		/* A small side buffer, so that back-pressure is exercised too. */
		o.side_buffer = 64 * test_page();
		o.tracker = t;
		o.parent_id = parent;
		pthread_mutex_lock(&b.lock);
		memcpy(ref, mem, len);
		snap = begin1(mem, len, &o);
		pthread_mutex_unlock(&b.lock);
		before = atomic_load(&b.transfers);
		/* The tellers get to write before the snapshot ends (on two
		 * CPUs a small one can otherwise finish before they run). */
		for (long spins = 0; atomic_load(&b.transfers) == before; spins++) {
			CHECK(spins < 10000000);
			sched_yield();
		}
		if (t)
			parent = uffdwp_snapshot_id(snap);
		CHECK_OK(uffdwp_snapshot_end(snap));
		during += atomic_load(&b.transfers) - before;
		CHECK_EQ(total_of((int64_t *)ref, b.naccts, b.stride), total);
		if (t)
			check_restores_to(paths, round + 1, ref, len);
		else
			check_restores_to(&paths[round], 1, ref, len);
	}
	CHECK(during >= rounds);  /* the tellers did run during every round */
	atomic_store(&b.stop, true);
	for (size_t i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_lock(&b.lock);
	CHECK_EQ(total_of(b.acct, b.naccts, b.stride), total);
	pthread_mutex_unlock(&b.lock);
	for (size_t round = 0; round < rounds; round++)
		snapfile_close(&f[round]);
	uffdwp_tracker_destroy(t);
}

TEST_TIMEOUT(snapshot_consistent_under_writers, ON_BOTH, 60)
{
	consistent_rounds(backend, UFFDWP_TRACK_AUTO);
}

TEST_TIMEOUT(snapshot_consistent_chain_sync_tracker, ON_BOTH, 60)
{
	consistent_rounds(backend, sync_method(backend));
}

/* Incrementals on the async tracker: the written set copied at begin. */
TEST_TIMEOUT(snapshot_consistent_chain_async_tracker, ON_KERNEL, 60)
{
	consistent_rounds(backend, UFFDWP_TRACK_ASYNC);
}

/* The fd sink may be a pipe (or a socket): the file comes out whole and in
 * order; here a reader copies the stream into a file at its own pace. */
struct pump {
	pthread_t thread;
	int from, to;
	int error;
};

static void *pump_main(void *arg)
{
	struct pump *p = arg;
	char buf[65536];
	ssize_t n;

	usleep(20000);  /* start late: the saver must meet a full pipe */
	while ((n = read(p->from, buf, sizeof(buf))) > 0)
		if (write(p->to, buf, (size_t)n) != n) {
			p->error = errno ? errno : EIO;
			break;
		}
	if (n < 0)
		p->error = errno;
	return NULL;
}

static void snapshot_through(enum uffdwp_backend backend, int rfd, int wfd)
{
	const size_t npages = 1024;
	size_t len = npages * test_page();
	char *mem = test_map(npages, false);
	char *ref = test_map(npages, false);
	struct snapfile f;
	struct pump pump;
	struct page_writer w;

	fill(mem, npages, 4);
	memcpy(ref, mem, len);
	snapfile_open(&f);
	pump = (struct pump){ .from = rfd, .to = f.fd };
	CHECK_EQ(pthread_create(&pump.thread, NULL, pump_main, &pump), 0);
	struct uffdwp_snapshot_opts o = file_opts(backend, wfd);
	struct uffdwp_snapshot *snap = begin1(mem, len, &o);

	page_writer_start(&w, mem, npages, 'p');
	pthread_join(w.thread, NULL);
	CHECK_OK(uffdwp_snapshot_end(snap));
	close(wfd);
	pthread_join(pump.thread, NULL);
	CHECK_EQ(pump.error, 0);
	close(rfd);

	const char *paths[] = { f.path };

	check_restores_to(paths, 1, ref, len);
	snapfile_close(&f);
}

TEST(snapshot_pipe_sink, ON_BOTH)
{
	int p[2];

	CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
	snapshot_through(backend, p[0], p[1]);
}

TEST(snapshot_nonblocking_socket_sink, ON_BOTH)
{
	int sv[2];

	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
	snapshot_through(backend, sv[0], sv[1]);
}

/* A reader that goes away: the snapshot fails with EPIPE, the process is
 * not killed by SIGPIPE, the memory is let go. */
TEST(snapshot_sink_closed, ON_BOTH)
{
	const size_t npages = 256;
	char *mem = test_map(npages, true);
	int p[2];

	CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
	close(p[0]);
	struct uffdwp_snapshot_opts o = file_opts(backend, p[1]);
	struct uffdwp_snapshot *snap = begin1(mem, npages * test_page(), &o);

	CHECK_RET(uffdwp_snapshot_wait(snap, 10000), -EPIPE);
	CHECK_RET(uffdwp_snapshot_end(snap), -EPIPE);
	memset(mem, 5, npages * test_page());
	close(p[1]);
}

/* The callback sink sees every page once, with the instant's contents;
 * an error it returns stops the snapshot with that error. */
TEST(snapshot_callback_sink, ON_BOTH)
{
	const size_t npages = 700;
	size_t len = npages * test_page();
	char *mem = test_map(npages, false);
	char *ref = test_map(npages, false);
	struct held_sink h;
	struct page_writer w;

	fill(mem, npages, 5);
	memcpy(ref, mem, len);
	held_sink_init(&h, mem, len);
	atomic_store(&h.held, false);
	struct uffdwp_snapshot_opts o = held_opts(backend, &h);
	struct uffdwp_snapshot *snap = begin1(mem, len, &o);

	page_writer_start(&w, mem, npages, 'c');
	pthread_join(w.thread, NULL);
	CHECK_OK(uffdwp_snapshot_end(snap));
	CHECK(memcmp(h.image, ref, len) == 0);
	for (size_t i = 0; i < npages; i++)
		if (h.seen[i] != 1)
			FAIL("page %zu passed to the sink %u times", i, h.seen[i]);

	/* A sink that fails: the snapshot reports the sink's error. */
	struct held_sink bad;

	held_sink_init(&bad, mem, test_page());  /* any page past the first is "out of range" */
	atomic_store(&bad.held, false);
	o = held_opts(backend, &bad);
	snap = begin1(mem, len, &o);
	CHECK_RET(uffdwp_snapshot_end(snap), -ERANGE);
	memset(mem, 9, len);
}

TEST(snapshot_cancel, ON_BOTH)
{
	const size_t npages = 1024;
	size_t len = npages * test_page();
	char *mem = test_map(npages, true);
	struct held_sink h;
	struct page_writer w;
	struct pollfd pfd;

	held_sink_init(&h, mem, len);
	struct uffdwp_snapshot_opts o = held_opts(backend, &h);

	o.side_buffer = 2 * test_page();
	struct uffdwp_snapshot *snap = begin1(mem, len, &o);

	held_sink_wait_entered(&h);
	/* A writer stuck on back-pressure must be released by the cancel. */
	page_writer_start(&w, mem + (npages / 2) * test_page(), npages / 2, 'x');
	CHECK(!page_writer_done_within(&w, STILL_BLOCKED_MS));
	uffdwp_snapshot_cancel(snap);
	CHECK(page_writer_done_within(&w, 5000));
	pthread_join(w.thread, NULL);
	sem_post(&h.release);
	pfd = (struct pollfd){ .fd = uffdwp_snapshot_fd(snap), .events = POLLIN };
	CHECK_EQ(poll(&pfd, 1, 5000), 1);
	CHECK_RET(uffdwp_snapshot_wait(snap, 0), -ECANCELED);
	CHECK_RET(uffdwp_snapshot_end(snap), -ECANCELED);
	/* Nothing stays protected. */
	page_writer_start(&w, mem, npages, 'y');
	CHECK(page_writer_done_within(&w, 5000));
	pthread_join(w.thread, NULL);
}

/* A region unmapped while it is being saved: a clean error, no hang, no
 * crash. */
TEST(snapshot_region_unmapped, ON_BOTH)
{
	const size_t npages = 1024;
	size_t len = npages * test_page();
	char *mem = test_map(npages, true);
	struct held_sink h;

	held_sink_init(&h, mem, len);
	struct uffdwp_snapshot_opts o = held_opts(backend, &h);
	struct uffdwp_snapshot *snap = begin1(mem, len, &o);

	held_sink_wait_entered(&h);
	CHECK_EQ(munmap(mem + len / 2, len / 2), 0);
	sem_post(&h.release);
	int ret = uffdwp_snapshot_end(snap);

	if (ret != -EFAULT && ret != -ENOENT && ret != -ESTALE)
		FAIL("end after munmap: %d (%s), want ESTALE, EFAULT or ENOENT", ret,
		     strerror(-ret));
	/* The half still mapped is writable. */
	memset(mem, 4, len / 2);
}

/* fork() during a snapshot: the child's memory is its own and writable; the
 * parent's snapshot is unaffected and still the instant's. */
TEST(snapshot_fork_during, ON_BOTH)
{
	const size_t npages = 1024;
	size_t len = npages * test_page();
	char *mem = test_map(npages, false);
	char *ref = test_map(npages, false);
	struct held_sink h;
	int status;
	pid_t pid;

	fill(mem, npages, 6);
	struct uffdwp_snapshot *snap = begin_held(backend, mem, len, ref, &h);

	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		/* Bounded: a child stuck on a protected page is killed. */
		alarm(10);
		memset(mem, 'k', len);
		for (size_t i = 0; i < len; i++)
			if (mem[i] != 'k')
				_exit(2);
		/* The snapshot is the parent's: inert here. */
		uffdwp_snapshot_cancel(snap);
		if (uffdwp_snapshot_wait(snap, -1) != -ECHILD ||
		    uffdwp_snapshot_end(snap) != -ECHILD)
			_exit(3);
		_exit(0);
	}
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
	/* The parent writes too, while the saver is still held. */
	memset(mem + len / 2, 'p', len / 2);
	sem_post(&h.release);
	CHECK_OK(uffdwp_snapshot_end(snap));
	CHECK(memcmp(h.image, ref, len) == 0);
}

/*
 * Incremental snapshots with a tracker: a full snapshot, then writes, then
 * an incremental one holding only what was written, with writers running
 * through both; the chain restores to the second instant.
 */
static void incremental_chain(enum uffdwp_track_method method)
{
	const size_t npages = 1024;
	size_t len = npages * test_page();
	char *mem = test_map(npages, true);
	char *ref = test_map(npages, false);
	struct uffdwp_tracker *t = tracker_or_skip(method);
	struct snapfile f[3];
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
	uint64_t parent = 0;

	fill(mem, npages, 7);
	CHECK_OK(uffdwp_tracker_add(t, mem, len));
	for (size_t round = 0; round < 3; round++) {
		struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .tracker = t,
						  .parent_id = parent };
		struct uffdwp_snapshot_region r = { (uintptr_t)mem, len };
		struct uffdwp_snapshot *snap;
		struct page_writer w;
		size_t written = round == 0 ? 0 : 10 * round;

		/* Between snapshots: change a few pages (and zero one). */
		for (size_t i = 0; i < written; i++)
			mem[(i * 37 % npages) * test_page() + 1] = (char)(round + 1);
		if (round == 2)
			memset(mem, 0, test_page());
		memcpy(ref, mem, len);
		snapfile_open(&f[round]);
		o.fd = f[round].fd;
		CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
		struct uffdwp_snapshot_method m = { .sz = sizeof(m) };

		CHECK_OK(uffdwp_snapshot_method(snap, &m));
		CHECK_EQ(m.track_method, method);
		CHECK_EQ(m.incremental, round > 0);
		if (round == 1) {  /* one snapshot at a time per tracker */
			struct uffdwp_snapshot *second = NULL;

			CHECK_RET(uffdwp_snapshot_begin(&second, &r, 1, &o), -EBUSY);
			CHECK(second == NULL);
		}
		/* A writer through the saving: copy-before-write with the tracker. */
		page_writer_start(&w, mem, npages, (char)(0x40 + round));
		pthread_join(w.thread, NULL);
		uint64_t parent_before = parent;

		parent = uffdwp_snapshot_id(snap);
		CHECK_OK(uffdwp_snapshot_end(snap));
		CHECK_OK(uffdwp_snapshot_file_info(f[round].path, &info, NULL, 0, NULL));
		CHECK_EQ(info.parent_id, round == 0 ? 0 : parent_before);

		const char *paths[] = { f[0].path, f[1].path, f[2].path };

		check_restores_to(paths, round + 1, ref, len);
	}
	/* Two quiet rounds: the first saves what the last writer wrote, the
	 * second only the one page written since. */
	struct snapfile q[2];

	for (size_t round = 0; round < 2; round++) {
		struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .tracker = t,
						  .parent_id = parent };
		struct uffdwp_snapshot_region r = { (uintptr_t)mem, len };
		struct uffdwp_snapshot *snap;

		snapfile_open(&q[round]);
		o.fd = q[round].fd;
		mem[5 * test_page()] = (char)('q' + round);
		memcpy(ref, mem, len);
		CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
		parent = uffdwp_snapshot_id(snap);
		CHECK_OK(uffdwp_snapshot_end(snap));
		CHECK_OK(uffdwp_snapshot_file_info(q[round].path, &info, NULL, 0, NULL));
		CHECK_EQ(info.page_count + info.zero_count, round == 0 ? npages : 1);

		const char *paths[] = { f[0].path, f[1].path, f[2].path, q[0].path, q[1].path };

		check_restores_to(paths, 4 + round, ref, len);
	}
	snapfile_close(&q[0]);
	snapfile_close(&q[1]);
	for (size_t i = 0; i < 3; i++)
		snapfile_close(&f[i]);
	uffdwp_tracker_destroy(t);
}

TEST_TIMEOUT(snapshot_incremental_chain, ON_BOTH, 60)
{
	incremental_chain(sync_method(backend));
}

TEST_TIMEOUT(snapshot_incremental_chain_async, ON_KERNEL, 60)
{
	incremental_chain(UFFDWP_TRACK_ASYNC);
}

/* The tracker must track exactly the regions: covering less or more is
 * refused before anything changes, and the tracker keeps its answer. */
TEST(snapshot_tracker_must_match_regions, ON_BOTH)
{
	const size_t npages = 16;
	size_t page = test_page();
	char *mem = test_map(npages, true);
	struct uffdwp_tracker_opts to = {
		.sz = sizeof(to),
		.method = backend == UFFDWP_BACKEND_KERNEL ? UFFDWP_TRACK_SYNC
							   : UFFDWP_TRACK_EMULATED,
	};
	struct uffdwp_snapshot_region half = { (uintptr_t)mem, npages / 2 * page };
	struct uffdwp_snapshot_region all = { (uintptr_t)mem, npages * page };
	struct uffdwp_snapshot_region split[2] = {
		{ (uintptr_t)mem + npages / 2 * page, npages / 2 * page },
		{ (uintptr_t)mem, npages / 2 * page },
	};
	struct uffdwp_snapshot *snap = NULL;
	struct uffdwp_tracker *t;
	struct uffdwp_run run;
	struct snapfile f;
	uintptr_t cur = 0;
	int ret = uffdwp_tracker_create(&t, &to);

	if (ret == -EOPNOTSUPP)
		SKIP("tracker method %s unavailable", uffdwp_track_method_name(to.method));
	CHECK_OK(ret);
	CHECK_OK(uffdwp_tracker_add(t, mem, npages / 2 * page));
	mem[page] = 2;
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = 1, .tracker = t };

	CHECK_RET(uffdwp_snapshot_begin(&snap, &all, 1, &o), -EINVAL);  /* tracks less */
	CHECK_OK(uffdwp_tracker_add(t, mem + npages / 2 * page, npages / 2 * page));
	CHECK_RET(uffdwp_snapshot_begin(&snap, &half, 1, &o), -EINVAL); /* tracks more */
	CHECK(snap == NULL);
	/* Nothing was reset: the write is still reported. */
	CHECK_RET(uffdwp_tracker_collect(t, &cur, &run, 1, 0), 1);
	CHECK(run.addr == mem + page);
	/* The same memory split differently is a match. */
	snapfile_open(&f);
	o.fd = f.fd;
	CHECK_OK(uffdwp_snapshot_begin(&snap, split, 2, &o));
	CHECK_OK(uffdwp_snapshot_end(snap));
	snapfile_close(&f);
	uffdwp_tracker_destroy(t);
}

/* An ASYNC tracker never faults, so it cannot copy-before-write. */
/* The fork() baseline's writer: the same file format from frozen memory. */
TEST(snapshot_frozen_writer, ON_NONE)
{
	const size_t npages = 100;
	char *mem = test_map(npages, false);
	struct uffdwp_snapshot_region r = { (uintptr_t)mem, npages * test_page() };
	struct snapfile f;

	fill(mem, npages, 8);
	snapfile_open(&f);
	CHECK_OK(uffdwp__snapshot_write_frozen(f.fd, &r, 1));

	const char *paths[] = { f.path };

	check_restores_to(paths, 1, mem, npages * test_page());
	CHECK_RET(uffdwp__snapshot_write_frozen(f.fd, &r, 0), -EINVAL);
	snapfile_close(&f);
}

/* Several regions, two of them adjacent, in any order, with zero pages at
 * their edges: ZERO records never cross a region, and the image is the
 * regions end to end in address order. */
TEST(snapshot_several_regions, ON_BOTH)
{
	const size_t page = test_page();
	char *mem = test_map(16, false);
	char *want = test_map(12, false);
	struct uffdwp_snapshot_region r[3] = {
		{ (uintptr_t)mem + 10 * page, 2 * page },
		{ (uintptr_t)mem, 4 * page },
		{ (uintptr_t)mem + 4 * page, 4 * page },
	};
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
	struct snapfile f;

	memset(mem + 1 * page, 'a', page);
	memset(mem + 6 * page, 'b', page);
	memset(mem + 11 * page, 'c', page);
	memcpy(want, mem, 8 * page);
	memcpy(want + 8 * page, mem + 10 * page, 2 * page);
	snapfile_open(&f);
	struct uffdwp_snapshot_opts o = file_opts(backend, f.fd);
	struct uffdwp_snapshot *snap = NULL;
	int ret = uffdwp_snapshot_begin(&snap, r, 3, &o);

	if (ret == -EOPNOTSUPP)
		SKIP("no snapshot on this backend");
	CHECK_OK(ret);
	memset(mem + 6 * page, 'x', 2 * page);  /* after the instant */
	CHECK_OK(uffdwp_snapshot_end(snap));

	const char *paths[] = { f.path };

	check_restores_to(paths, 1, want, 10 * page);
	CHECK_OK(uffdwp_snapshot_file_info(f.path, &info, NULL, 0, NULL));
	CHECK_EQ(info.region_count, 3);
	CHECK_EQ(info.page_count, 3);
	CHECK_EQ(info.zero_count, 7);
	snapfile_close(&f);
}

/* ---- memory unmapped while an incremental begin is collecting ---------- */

/* Writes one page over and over: it runs without a fault until begin
 * re-protects the page, then blocks in the snapshot's interposer. */
struct spinner {
	pthread_t thread;
	volatile char *addr;
	_Atomic pid_t tid;
	atomic_bool stop;
};

static void *spinner_main(void *arg)
{
	struct spinner *sp = arg;

	atomic_store(&sp->tid, gettid());
	while (!atomic_load(&sp->stop))
		*sp->addr += 1;
	return NULL;
}

/* Once the spinner sleeps (on its fault, held by the interposer while
 * begin still collects), unmap the end of the region. */
struct unmapper {
	pthread_t thread;
	struct spinner *sp;
	char *addr;
	size_t len;
	bool saw_blocked;
};

static void *unmapper_main(void *arg)
{
	struct unmapper *u = arg;

	for (int i = 0; i < 200000 && !u->saw_blocked; i++) {
		char st = test_thread_state(atomic_load(&u->sp->tid));

		u->saw_blocked = st == 'S' || st == 'D';
	}
	munmap(u->addr, u->len);
	return NULL;
}

/*
 * The hang reported against incremental snapshots: a writer faults while
 * begin's collect-with-reset runs, so the tracker's engine thread waits in
 * the interposer for the set; then munmap raises an event that only that
 * thread reads, and the collect's write-protects answer -EAGAIN until it
 * is read. Begin (or, if the munmap came after it, end) must fail with
 * EFAULT or ENOENT, never hang.
 */
TEST_TIMEOUT(snapshot_unmap_during_incremental_begin, ON_BOTH, 30)
{
	const size_t npages = 16384;  /* every other page written: 8192 runs */
	const size_t page = test_page(), len = npages * page;
	char *mem = test_map(npages, false);
	struct uffdwp_tracker_opts to = {
		.sz = sizeof(to),
		.method = backend == UFFDWP_BACKEND_KERNEL ? UFFDWP_TRACK_SYNC
							   : UFFDWP_TRACK_EMULATED,
	};
	struct uffdwp_snapshot_region r = { (uintptr_t)mem, len };
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o) };
	struct uffdwp_snapshot *snap = NULL;
	struct uffdwp_tracker *t;
	struct spinner sp = { .addr = mem };
	struct unmapper u = { .sp = &sp, .addr = mem + len / 2, .len = len / 2 };
	int ret = uffdwp_tracker_create(&t, &to);

	if (ret == -EOPNOTSUPP)
		SKIP("tracker method %s unavailable", uffdwp_track_method_name(to.method));
	CHECK_OK(ret);
	CHECK_OK(uffdwp_tracker_add(t, mem, len));
	o.tracker = t;
	o.fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	CHECK(o.fd >= 0);
	CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
	o.parent_id = uffdwp_snapshot_id(snap);
	CHECK_OK(uffdwp_snapshot_end(snap));
	snap = NULL;

	for (size_t i = 0; i < npages; i += 2)
		mem[i * page] = 1;
	CHECK_EQ(pthread_create(&sp.thread, NULL, spinner_main, &sp), 0);
	while (!atomic_load(&sp.tid))
		sched_yield();
	CHECK_EQ(pthread_create(&u.thread, NULL, unmapper_main, &u), 0);
	ret = uffdwp_snapshot_begin(&snap, &r, 1, &o);
	if (ret == 0) {
		/* The munmap came after begin: the saver meets it. */
		pthread_join(u.thread, NULL);
		ret = uffdwp_snapshot_end(snap);
	} else {
		pthread_join(u.thread, NULL);
	}
	if (ret != -EFAULT && ret != -ENOENT)
		FAIL("munmap during an incremental snapshot: %d (%s), want EFAULT or ENOENT",
		     ret, strerror(-ret));
	atomic_store(&sp.stop, true);
	pthread_join(sp.thread, NULL);
	if (!u.saw_blocked)
		fprintf(stderr, "note: the writer was not seen blocked during begin\n");
	close(o.fd);
	uffdwp_tracker_destroy(t);
}

/* ---- issue 9: never call a wrong snapshot good --------------------------- */

/* A region whose last memory-type page lies well past the saver's first
 * batch (the held sink stops the saver inside it). */
static size_t far_region_len(void)
{
	size_t len = 1024 * test_page();

	return len > 4 * test_mem_page() ? len : 4 * test_mem_page();
}

/* The outcome of a snapshot whose memory changed behind its back: it may
 * fail with a clear error, or hold exactly the memory at its instant. */
static void check_failed_or_exact(int ret, const struct held_sink *h, const char *ref,
				  const char *what)
{
	if (ret == -ESTALE || ret == -EFAULT || ret == -ENOENT)
		return;
	if (ret)
		FAIL("%s: end returned %d (%s)", what, ret, strerror(-ret));
	for (size_t off = 0; off < h->len; off += test_page())
		if (memcmp(h->image + off, ref + off, test_page()))
			FAIL("%s: end returned 0, but page %zu is not the instant's", what,
			     off / test_page());
}

/*
 * MADV_DONTNEED on a page not yet saved, then a write: the kernel drops
 * the page's protection with the page and lets the madvise caller go once
 * its event is read; the emulated backend sees no madvise at all. Never
 * a success with the new contents or with zeros.
 */
TEST_MEM(snapshot_discard_during_save, ON_BOTH, ON_ANON | ON_SHMEM)
{
	size_t len = far_region_len(), unit = test_mem_page();
	char *mem = test_mem_map(len, false);
	char *ref = test_map(len / test_page(), false);
	struct held_sink h;

	memset(mem, 0x11, len);
	struct uffdwp_snapshot *snap = begin_held(backend, mem, len, ref, &h);

	CHECK_EQ(madvise(mem + len - unit, unit, MADV_DONTNEED), 0);
	memset(mem + len - unit, 0x77, unit);
	sem_post(&h.release);
	check_failed_or_exact(uffdwp_snapshot_end(snap), &h, ref, "discard");
	test_mem_unmap(mem, len);
}

/* munmap, and mremap away, of memory not yet saved (the saver finds
 * nothing there, or an event tells of it). */
TEST_MEM(snapshot_unmap_or_move_during_save, ON_BOTH, ON_ANON | ON_SHMEM)
{
	size_t len = far_region_len(), unit = test_mem_page();

	for (int move = 0; move < 2; move++) {
		char *mem = test_mem_map(len, true);
		char *ref = test_map(len / test_page(), false);
		struct held_sink h;

		struct uffdwp_snapshot *snap = begin_held(backend, mem, len, ref, &h);

		if (move) {
			char *away = test_mem_map(unit, false);
			char *to = mremap(mem + len - unit, unit, unit, MREMAP_MAYMOVE | MREMAP_FIXED,
					  away);

			CHECK(to == away);
			test_mem_unmap(away, unit);
		} else {
			CHECK_EQ(munmap(mem + len - unit, unit), 0);
		}
		sem_post(&h.release);
		check_failed_or_exact(uffdwp_snapshot_end(snap), &h, ref,
				      move ? "mremap" : "munmap");
		test_mem_unmap(mem, len - unit);
	}
}

/* Unmapped and replaced by new memory in the same place, which the
 * program writes: only the kernel backend can see it (its unmap event);
 * uffdwp_emulated(7) says why the emulation cannot. */
TEST(snapshot_replaced_during_save, ON_KERNEL)
{
	size_t len = far_region_len();
	char *mem = test_map(len / test_page(), true);
	char *ref = test_map(len / test_page(), false);
	char *last = mem + len - test_page();
	struct held_sink h;

	struct uffdwp_snapshot *snap = begin_held(backend, mem, len, ref, &h);

	CHECK(mmap(last, test_page(), PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == last);
	memset(last, 0x77, test_page());
	sem_post(&h.release);
	check_failed_or_exact(uffdwp_snapshot_end(snap), &h, ref, "replaced");
}

/*
 * MAP_SHARED memory written by a child forked during the snapshot: the
 * child's mapping is not protected (protection is per process), so its
 * writes reach pages not yet saved. The snapshot must fail, not keep them.
 */
TEST_MEM(snapshot_shared_written_by_child, ON_BOTH, ON_SHMEM)
{
	size_t len = far_region_len();
	char *mem = test_mem_map(len, true);
	char *ref = test_map(len / test_page(), false);
	struct held_sink h;
	int status;
	pid_t pid;

	struct uffdwp_snapshot *snap = begin_held(backend, mem, len, ref, &h);

	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		alarm(10);
		memset(mem + len / 2, 0x77, len / 2);
		_exit(0);
	}
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	sem_post(&h.release);
	check_failed_or_exact(uffdwp_snapshot_end(snap), &h, ref, "child wrote shared memory");
	test_mem_unmap(mem, len);
}

/* An incremental snapshot must name the tracker's last saved snapshot:
 * an older one, a made-up one, or one from before a reset is refused
 * before anything changes (the right one still works after). */
TEST(snapshot_wrong_parent_refused, ON_BOTH)
{
	const size_t npages = 64;
	size_t len = npages * test_page();
	char *mem = test_map(npages, true);
	struct uffdwp_snapshot_region r = { (uintptr_t)mem, len };
	struct uffdwp_tracker *t = tracker_or_skip(sync_method(backend));
	struct uffdwp_snapshot *snap = NULL;
	uint64_t first, second;
	int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	int ret;

	CHECK(fd > 0);
	CHECK_OK(uffdwp_tracker_add(t, mem, len));
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o), .fd = fd, .tracker = t };

	CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
	first = uffdwp_snapshot_id(snap);
	CHECK_OK(uffdwp_snapshot_end(snap));
	o.parent_id = first ^ 1;  /* made up */
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	mem[0] = 2;
	o.parent_id = first;
	CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
	second = uffdwp_snapshot_id(snap);
	CHECK_OK(uffdwp_snapshot_end(snap));
	o.parent_id = first;  /* older */
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	/* The refusals changed nothing: the right parent still works. */
	mem[test_page()] = 3;
	o.parent_id = second;
	CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
	second = uffdwp_snapshot_id(snap);
	CHECK_OK(uffdwp_snapshot_end(snap));
	/* A reset by the program: the writes before it are unknown. */
	mem[2 * test_page()] = 4;
	CHECK_OK(uffdwp_tracker_reset(t, NULL, 0));
	o.parent_id = second;
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	/* A cancelled snapshot is no parent either. */
	o.parent_id = 0;
	CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &o));
	first = uffdwp_snapshot_id(snap);
	uffdwp_snapshot_cancel(snap);
	ret = uffdwp_snapshot_end(snap);
	CHECK(ret == 0 || ret == -ECANCELED);
	o.parent_id = first;
	if (ret == -ECANCELED)
		CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	uffdwp_tracker_destroy(t);
	close(fd);
}

/* A zero-initialised options struct names no sink: never descriptor 0. */
TEST(snapshot_zeroed_opts_not_stdin, ON_NONE)
{
	char *mem = test_map(4, true);
	struct uffdwp_snapshot_region r = { (uintptr_t)mem, 4 * test_page() };
	struct uffdwp_snapshot_opts o = { .sz = sizeof(o) };
	struct uffdwp_snapshot *snap = NULL;
	int p[2];
	char c;

	/* Descriptor 0 of this test's process becomes a pipe we can look into. */
	CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
	CHECK_EQ(dup2(p[1], 0), 0);
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &o), -EINVAL);
	CHECK(snap == NULL);
	uffdwp_snapshot_end(snap);
	CHECK_EQ(read(p[0], &c, 1), -1);
	CHECK_EQ(errno, EAGAIN);
}

/* Options from a newer caller: zero bytes past what the library knows are
 * fine, anything else is refused, the same way for every options struct. */
TEST(opts_from_a_newer_caller, ON_NONE)
{
	char *mem = test_map(4, true);
	struct uffdwp_snapshot_region r = { (uintptr_t)mem, 4 * test_page() };
	struct {
		struct uffdwp_snapshot_opts o;
		uint64_t newer;
	} so = { .o = { .sz = sizeof(so), .fd = 1, .backend = UFFDWP_BACKEND_EMULATED } };
	struct {
		struct uffdwp_tracker_opts o;
		uint64_t newer;
	} to = { .o = { .sz = sizeof(to), .method = UFFDWP_TRACK_EMULATED } };
	struct {
		struct uffdwp_engine_opts o;
		uint64_t newer;
	} eo = { .o = { .sz = sizeof(eo), .mode = UFFDWP_ENGINE_THREAD } };
	struct {
		struct uffdwp_opts o;
		uint64_t newer;
	} uo = { .o = { .sz = sizeof(uo), .backend = UFFDWP_BACKEND_EMULATED }, .newer = 1 };
	struct uffdwp *opened = NULL;
	struct uffdwp_snapshot *snap = NULL;
	struct uffdwp_tracker *t = NULL;
	struct uffdwp_engine *eng = NULL;
	struct uffdwp *ctx = test_open(UFFDWP_BACKEND_EMULATED, 0);

	so.o.fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	so.newer = 1;
	CHECK_RET(uffdwp_snapshot_begin(&snap, &r, 1, &so.o), -E2BIG);
	to.newer = 1;
	CHECK_RET(uffdwp_tracker_create(&t, &to.o), -E2BIG);
	eo.newer = 1;
	CHECK_RET(uffdwp_engine_start(&eng, ctx, &eo.o), -E2BIG);
	CHECK_RET(uffdwp_open(&opened, &uo.o), -E2BIG);
	CHECK_RET(uffdwp_remote_open(getppid(), &opened, &uo.o), -E2BIG);
	CHECK(snap == NULL && t == NULL && eng == NULL && opened == NULL);
	uo.newer = 0;
	CHECK_OK(uffdwp_open(&opened, &uo.o));
	uffdwp_close(opened);
	so.newer = to.newer = eo.newer = 0;
	CHECK_OK(uffdwp_snapshot_begin(&snap, &r, 1, &so.o));
	CHECK_OK(uffdwp_snapshot_end(snap));
	CHECK_OK(uffdwp_tracker_create(&t, &to.o));
	uffdwp_tracker_destroy(t);
	CHECK_OK(uffdwp_engine_start(&eng, ctx, &eo.o));
	uffdwp_engine_stop(eng);
	uffdwp_close(ctx);
	close(so.o.fd);
}

/* Which backend and method a snapshot uses. */
TEST(snapshot_method_reported, ON_BOTH)
{
	char *mem = test_map(4, true);
	struct uffdwp_snapshot_opts o = file_opts(backend, open("/dev/null", O_WRONLY));
	struct uffdwp_snapshot *snap = begin1(mem, 4 * test_page(), &o);
	struct uffdwp_snapshot_method m = { .sz = sizeof(m) };

	CHECK_OK(uffdwp_snapshot_method(snap, &m));
	CHECK_EQ(m.backend, backend);
	CHECK(m.engine_mode == UFFDWP_ENGINE_THREAD || m.engine_mode == UFFDWP_ENGINE_INTHREAD);
	CHECK_EQ(m.track_method, UFFDWP_TRACK_AUTO);
	CHECK_EQ(m.incremental, 0);
	CHECK_RET(uffdwp_snapshot_method(NULL, &m), -EINVAL);
	m.sz = 4;
	CHECK_RET(uffdwp_snapshot_method(snap, &m), -EINVAL);
	CHECK_OK(uffdwp_snapshot_end(snap));
	close(o.fd);
}

/* Two snapshots of the same memory are refused whatever their backends
 * (each backend alone cannot see the other's protection). */
TEST(snapshot_overlap_across_backends, ON_KERNEL)
{
	char *mem = test_map(8, true);
	struct uffdwp_snapshot_region r = { (uintptr_t)mem + 2 * test_page(), 4 * test_page() };
	struct uffdwp_snapshot_opts k = file_opts(UFFDWP_BACKEND_KERNEL, open("/dev/null", O_WRONLY));
	struct uffdwp_snapshot_opts e = file_opts(UFFDWP_BACKEND_EMULATED, k.fd);
	struct uffdwp_snapshot *a = begin1(mem, 4 * test_page(), &k), *b = NULL;

	CHECK_RET(uffdwp_snapshot_begin(&b, &r, 1, &e), -EBUSY);
	CHECK_OK(uffdwp_snapshot_end(a));
	a = begin1(mem, 4 * test_page(), &e);
	CHECK_RET(uffdwp_snapshot_begin(&b, &r, 1, &k), -EBUSY);
	CHECK(b == NULL);
	/* Disjoint memory is fine. */
	r.addr += 2 * test_page();
	r.len = 2 * test_page();
	CHECK_OK(uffdwp_snapshot_begin(&b, &r, 1, &k));
	CHECK_OK(uffdwp_snapshot_end(b));
	CHECK_OK(uffdwp_snapshot_end(a));
	close(k.fd);
}

struct closer {
	int fd;
	sem_t stop;
};

/* The hang detector: closes the pipe's read end after 10 s at most. */
static void *closer_main(void *arg)
{
	struct closer *c = arg;

	test_sem_wait(&c->stop, 10000);
	close(c->fd);
	return NULL;
}

/* Cancel reaches a saver blocked on a stalled pipe (nobody reads it). */
TEST(snapshot_cancel_stalled_pipe, ON_BOTH)
{
	const size_t npages = 1024;
	char *mem = test_map(npages, false);
	struct closer c;
	pthread_t th;
	int p[2];

	fill(mem, npages, 9);
	CHECK_EQ(pipe(p), 0);  /* blocking, as most callers' pipes are */
	struct uffdwp_snapshot_opts o = file_opts(backend, p[1]);
	struct uffdwp_snapshot *snap = begin1(mem, npages * test_page(), &o);
	struct uffdwp_snapshot_progress pr = { .sz = sizeof(pr) };

	/* The pipe holds 64 KiB: wait until the saver has written half of
	 * that (the header shares the pipe's first buffer, so 16 pages of
	 * records never fit); it then stalls on the full pipe. */
	do {
		usleep(1000);
		CHECK_OK(uffdwp_snapshot_progress(snap, &pr));
	} while (pr.bytes_out < 8 * test_page());
	CHECK_RET(uffdwp_snapshot_wait(snap, 0), -ETIMEDOUT);
	c.fd = p[0];
	sem_init(&c.stop, 0, 0);
	CHECK_EQ(pthread_create(&th, NULL, closer_main, &c), 0);
	uffdwp_snapshot_cancel(snap);
	CHECK_RET(uffdwp_snapshot_end(snap), -ECANCELED);
	sem_post(&c.stop);
	pthread_join(th, NULL);
	close(p[1]);
}

/* NULL handles: a clear error, not a crash. */
TEST(snapshot_null_handles, ON_NONE)
{
	struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };

	CHECK_RET(uffdwp_snapshot_wait(NULL, 0), -EINVAL);
	CHECK_EQ(uffdwp_snapshot_id(NULL), 0);
	CHECK_RET(uffdwp_snapshot_fd(NULL), -EINVAL);
	CHECK_RET(uffdwp_snapshot_progress(NULL, &p), -EINVAL);
	uffdwp_snapshot_cancel(NULL);
	CHECK_OK(uffdwp_snapshot_end(NULL));
}

/*
 * The reported pause is the caller's: from the call to the return. Begin's
 * last step wakes the saver; a saver that the scheduler runs first, on the
 * caller's CPU, keeps the caller waiting inside that wake until it blocks.
 * begin_ns left the wake out (2.9 ms reported of a caller's 4.4-12.3 ms).
 * Here the saver runs first by construction: the caller is SCHED_FIFO on
 * one CPU (the threads begin creates inherit both), and a watcher on
 * another CPU raises every thread begin creates above it.
 */
enum { BOOST_PRIO = 50, CALLER_PRIO = 10 };

struct booster {
	pthread_t thread;
	int cpu;            /* the watcher's own */
	pid_t known[256];   /* threads there before begin */
	size_t nknown;
	sem_t ready;
	_Atomic bool stop;
	_Atomic int boosted;
};

static bool booster_knows(const struct booster *b, pid_t tid)
{
	for (size_t i = 0; i < b->nknown; i++)
		if (b->known[i] == tid)
			return true;
	return false;
}

/* Calls fn for each thread of this process. */
static void for_each_thread(void (*fn)(struct booster *, pid_t), struct booster *b)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;

	CHECK(d != NULL);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			fn(b, (pid_t)atoi(e->d_name));
	closedir(d);
}

static void booster_learn(struct booster *b, pid_t tid)
{
	CHECK(b->nknown < sizeof(b->known) / sizeof(b->known[0]));
	b->known[b->nknown++] = tid;
}

static void booster_raise(struct booster *b, pid_t tid)
{
	struct sched_param sp = { .sched_priority = BOOST_PRIO };

	if (booster_knows(b, tid))
		return;
	booster_learn(b, tid);
	/* A thread that ended meanwhile: ESRCH. */
	if (sched_setscheduler(tid, SCHED_FIFO, &sp) == 0)
		atomic_fetch_add(&b->boosted, 1);
}

static void *booster_main(void *arg)
{
	struct booster *b = arg;
	cpu_set_t own;

	CPU_ZERO(&own);
	CPU_SET(b->cpu, &own);
	CHECK_OK(sched_setaffinity(0, sizeof(own), &own));
	for_each_thread(booster_learn, b);
	sem_post(&b->ready);
	while (!atomic_load(&b->stop))
		for_each_thread(booster_raise, b);
	return NULL;
}

TEST(snapshot_begin_ns_is_the_callers_pause, ON_BOTH)
{
	const size_t npages = 16384;
	char *mem = test_map(npages, true);
	struct uffdwp_snapshot_opts o = file_opts(backend, open("/dev/null", O_WRONLY));
	struct uffdwp_snapshot_progress p = { .sz = sizeof(p) };
	struct sched_param fifo = { .sched_priority = CALLER_PRIO }, other = { 0 };
	struct booster b = { .cpu = -1 };
	int caller_cpu = sched_getcpu();
	struct timespec a, c;
	cpu_set_t all, one;

	CHECK_OK(sched_getaffinity(0, sizeof(all), &all));
	for (int cpu = 0; cpu < CPU_SETSIZE && b.cpu < 0; cpu++)
		if (cpu != caller_cpu && CPU_ISSET(cpu, &all))
			b.cpu = cpu;
	if (b.cpu < 0)
		SKIP("one CPU: the saver cannot be made to run first on the caller's");
	CPU_ZERO(&one);
	CPU_SET(caller_cpu, &one);
	CHECK_OK(sched_setaffinity(0, sizeof(one), &one));
	if (sched_setscheduler(0, SCHED_FIFO, &fifo) < 0)
		SKIP("SCHED_FIFO refused (%s): the saver cannot be made to run first",
		     strerror(errno));
	sem_init(&b.ready, 0, 0);
	CHECK_EQ(pthread_create(&b.thread, NULL, booster_main, &b), 0);
	while (sem_wait(&b.ready) < 0)
		;

	clock_gettime(CLOCK_MONOTONIC, &a);
	struct uffdwp_snapshot *snap = begin1(mem, npages * test_page(), &o);

	clock_gettime(CLOCK_MONOTONIC, &c);
	CHECK_OK(sched_setscheduler(0, SCHED_OTHER, &other));
	CHECK_OK(sched_setaffinity(0, sizeof(all), &all));
	atomic_store(&b.stop, true);
	pthread_join(b.thread, NULL);
	CHECK(atomic_load(&b.boosted) > 0);  /* the saver at least */
	CHECK_OK(uffdwp_snapshot_progress(snap, &p));
	uint64_t wall = (uint64_t)(c.tv_sec - a.tv_sec) * 1000000000u +
			(uint64_t)(c.tv_nsec - a.tv_nsec);

	/* Nothing of ours can run on that CPU between begin's clock and
	 * ours: 1 ms is slack for the hypervisor. */
	if (p.begin_ns == 0 || p.begin_ns > wall || wall - p.begin_ns > 1000000)
		FAIL("begin_ns %llu, the caller waited %llu ns", (unsigned long long)p.begin_ns,
		     (unsigned long long)wall);
	CHECK_OK(uffdwp_snapshot_end(snap));
	close(o.fd);
}

/* Our memory cgroup's directory (v1 or v2) into path; false if none. */
static bool memory_cgroup_dir(char *path, size_t size, bool *v2)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	char line[512];
	bool found = false;

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		char *ctrl = strchr(line, ':'), *cg = ctrl ? strchr(ctrl + 1, ':') : NULL;

		if (!cg)
			continue;
		*cg++ = '\0';
		cg[strcspn(cg, "\n")] = '\0';
		if (strstr(ctrl + 1, "memory")) {
			snprintf(path, size, "/sys/fs/cgroup/memory%s", cg);
			*v2 = false;
			found = true;
		} else if (!ctrl[1] && access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0) {
			snprintf(path, size, "/sys/fs/cgroup%s", cg);
			*v2 = true;
			found = true;
		}
	}
	fclose(f);
	return found;
}

static bool write_file(const char *dir, const char *name, const char *text)
{
	char path[600];
	int fd;
	bool ok;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
	close(fd);
	return ok;
}

/* The cgroup's memory usage in bytes, or 0. */
static unsigned long long cgroup_usage(const char *dir, bool v2)
{
	char path[700], buf[64];
	unsigned long long n = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, v2 ? "memory.current" : "memory.usage_in_bytes");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t got = read(fd, buf, sizeof(buf) - 1);

	close(fd);
	if (got > 0) {
		buf[got] = '\0';
		n = strtoull(buf, NULL, 10);
	}
	return n;
}

/*
 * A snapshot in a memory cgroup with less room than its side buffer: begin
 * fails with -ENOMEM instead of the OOM killer ending the process once
 * writers fill the buffer. Runs in a child moved into a cgroup of its own
 * holding 24 MiB of touched memory, limited to its usage plus 16 MiB, no
 * swap.
 */
TEST(snapshot_side_buffer_over_cgroup_room, ON_BOTH)
{
	const size_t mib = 1 << 20, npages = 24 * mib / test_page();
	char parent[512], dir[600];
	bool v2;
	int status;
	pid_t pid;

	if (!memory_cgroup_dir(parent, sizeof(parent), &v2))
		SKIP("no memory cgroup controller for this process");
	snprintf(dir, sizeof(dir), "%s/uffdwp-test-%d", parent, (int)getpid());
	if (mkdir(dir, 0755) < 0)
		SKIP("cannot make a memory cgroup under %s: %s", parent, strerror(errno));
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		char text[32];

		alarm(20);
		snprintf(text, sizeof(text), "%d", (int)getpid());
		if (!write_file(dir, "cgroup.procs", text))
			_exit(3);
		char *mem = test_map(npages, true);
		struct held_sink h;

		held_sink_init(&h, mem, npages * test_page());
		snprintf(text, sizeof(text), "%llu", cgroup_usage(dir, v2) + 16 * mib);
		if (!(v2 ? write_file(dir, "memory.max", text) &&
				   write_file(dir, "memory.swap.max", "0")
			 : write_file(dir, "memory.limit_in_bytes", text) &&
				   (write_file(dir, "memory.memsw.limit_in_bytes", text) ||
				    access("/proc/swaps", F_OK) != 0)))
			_exit(6);
		struct uffdwp_snapshot_opts o = held_opts(backend, &h);
		struct uffdwp_snapshot_region r = { (uintptr_t)mem, npages * test_page() };
		struct uffdwp_snapshot *snap;
		int ret = uffdwp_snapshot_begin(&snap, &r, 1, &o);

		if (ret == -ENOMEM)
			_exit(0);
		if (ret)
			_exit(4);
		/* Fill the side buffer while the saver is held. */
		held_sink_wait_entered(&h);
		memset(mem, 2, npages * test_page());
		sem_post(&h.release);
		uffdwp_snapshot_end(snap);
		_exit(5);
	}
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	rmdir(dir);
	if (WIFSIGNALED(status))
		FAIL("the child died of signal %d (the OOM killer: SIGKILL)", WTERMSIG(status));
	CHECK(WIFEXITED(status));
	if (WEXITSTATUS(status) == 3)
		SKIP("cannot move a process into %s", dir);
	if (WEXITSTATUS(status) == 6)
		SKIP("cannot set the memory limits of %s", dir);
	CHECK_EQ(WEXITSTATUS(status), 0);
}

/* A region large enough that the kernel backend protects it in two halves
 * (begin and the saver at once), starting off a huge-page boundary: every
 * page is protected at the instant, whichever thread protected it. */
TEST_TIMEOUT(snapshot_protected_in_two_halves, ON_BOTH, 120)
{
	const size_t npages = (66u << 20) / test_page() + 3;
	size_t len = npages * test_page();
	char *mem = test_map(npages, false);
	char *ref = test_map(npages, false);
	struct snapfile f;
	struct page_writer w;

	/* Sparse (one page in 64 holds data, the rest never touched), so
	 * that a loaded machine is not slowed down by faulting it all in. */
	for (size_t i = 0; i < npages; i += 64) {
		memset(mem + i * test_page(), (int)(1 + i % 251), test_page());
		memcpy(ref + i * test_page(), mem + i * test_page(), test_page());
	}
	snapfile_open(&f);
	struct uffdwp_snapshot_opts o = file_opts(backend, f.fd);
	struct uffdwp_snapshot *snap = begin1(mem, len, &o);

	/* Pages of both halves written after the instant: the first, the
	 * last, and 63 between. */
	for (size_t i = 0; i < npages; i += npages / 64)
		page_writer_start(&w, mem + i * test_page(), 1, 0x5a), pthread_join(w.thread, NULL);
	page_writer_start(&w, mem + (npages - 1) * test_page(), 1, 0x5b);
	pthread_join(w.thread, NULL);
	CHECK_OK(uffdwp_snapshot_end(snap));

	const char *paths[] = { f.path };

	check_restores_to(paths, 1, ref, len);
	snapfile_close(&f);
}

/* Snapshots save, copy and un-protect base pages: hugetlbfs memory (whose
 * pages split no further) is refused at begin with -EINVAL, on its own or
 * beside ordinary memory, and left as it was. (It used to begin, then fail
 * the save with -EINVAL after the instant.) */
TEST_MEM(snapshot_huge_pages_refused, ON_BOTH, ON_HUGETLB)
{
	size_t len = 2 * test_mem_page();
	char *mem = test_mem_map(len, true);
	char *plain = test_map(4, true);
	struct uffdwp_snapshot_region both[2] = {
		{ (uintptr_t)plain, 4 * test_page() }, { (uintptr_t)mem, len },
	};
	struct uffdwp_snapshot *snap = NULL;
	struct snapfile f;

	snapfile_open(&f);
	struct uffdwp_snapshot_opts o = file_opts(backend, f.fd);

	CHECK_RET(uffdwp_snapshot_begin(&snap, &both[1], 1, &o), -EINVAL);
	CHECK_RET(uffdwp_snapshot_begin(&snap, both, 2, &o), -EINVAL);
	CHECK(snap == NULL);
	mem[len - 1] = 2;  /* not protected: would block or fault otherwise */
	plain[0] = 2;
	CHECK_EQ(lseek(f.fd, 0, SEEK_END), 0);
	/* The ordinary memory alone still snapshots. */
	snap = begin1(plain, 4 * test_page(), &o);
	CHECK_OK(uffdwp_snapshot_end(snap));
	snapfile_close(&f);
	test_mem_unmap(mem, len);
}

static char *volatile handler_region;
static size_t handler_pages;
static _Atomic unsigned long handler_writes;

static void write_a_page(int sig)
{
	unsigned long n = atomic_fetch_add(&handler_writes, 1);

	(void)sig;
	handler_region[(n * 7919 % handler_pages) * test_page()] ^= 1;
}

/*
 * In-thread writers that fault while begin protects sleep until the instant;
 * the thread running begin must not: a program's signal handler that runs
 * on it (here a 100 us timer) and writes the regions would wait for an
 * instant only its own thread can reach. Each begin must return and each
 * snapshot complete.
 */
TEST_TIMEOUT(snapshot_signal_handler_writes_during_begin, ON_KERNEL, 60)
{
	const size_t npages = 65536;  /* 256 MiB: begin lasts milliseconds */
	struct sigaction sa = { .sa_handler = write_a_page, .sa_flags = SA_RESTART };
	struct itimerval every = { { 0, 100 }, { 0, 100 } }, off = { { 0, 0 }, { 0, 0 } };
	struct uffdwp_snapshot_region r;
	unsigned long before;

	if (UFFDWP__UNDER_TSAN)
		SKIP("TSan defers signal handlers past the fault, and runs them with SIGBUS blocked");
	handler_pages = npages;
	handler_region = test_map(npages, true);
	r = (struct uffdwp_snapshot_region){ (uintptr_t)handler_region, npages * test_page() };
	CHECK_OK(sigaction(SIGALRM, &sa, NULL));
	for (int round = 0; round < 5; round++) {
		int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
		struct uffdwp_snapshot_opts o = file_opts(backend, fd);
		struct uffdwp_snapshot *snap = NULL;

		before = atomic_load(&handler_writes);
		CHECK_OK(setitimer(ITIMER_REAL, &every, NULL));
		int ret = uffdwp_snapshot_begin(&snap, &r, 1, &o);

		CHECK_OK(setitimer(ITIMER_REAL, &off, NULL));
		CHECK_OK(ret);
		CHECK_OK(uffdwp_snapshot_end(snap));
		close(fd);
		if (atomic_load(&handler_writes) == before)
			FAIL("round %d: the timer never fired during begin", round);
	}
	signal(SIGALRM, SIG_DFL);
}
