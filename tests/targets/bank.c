/* SPDX-License-Identifier: MIT */
/*
 * A target for the core tests (tests/core_dump.c): a process whose memory
 * holds invariants only at consistent instants, so that a core taken at one
 * instant satisfies them and one taken piecemeal does not.
 *
 *  - movers: each moves 1 from its counter a to its counter b, on different
 *    pages: at every instant a + b is TOTAL or TOTAL - 1 (between the two
 *    stores); under a shared lock, the shared pair likewise (the last);
 *  - a sweeper writes round k into every word of page 0, 1, ... N-1, then
 *    round k + 1: at every instant the pages read k+1 ... k+1 k ... k;
 *  - a sleeper in nanosleep(2), a reader blocked in read(2) on a pipe and a
 *    thread holding values in callee-saved and vector registers check that
 *    whatever is done to them (a stop, an injected system call) changes
 *    nothing: no EINTR, the right byte, the same registers, the same mask;
 *  - SIGUSR1 queued to it (sigqueue, value SIGNAL_VALUE) arrives as sent:
 *    si_code SI_QUEUE and the value, counted (the 's' command says how many).
 *
 * Prints one line "ready PID PAIRS SWEEP NPAGES SPARE" (addresses in hex),
 * then obeys single-letter commands on stdin, answering one line each:
 *   w  write every page of its memory (hangs if any is still protected)
 *   p  feed the reader one byte and wait for it
 *   q  stop, check everything, exit 0 (1 and a message on stderr if wrong)
 *   x  exit at once (status 3)
 *   f  fork a child that exits at once; reply when reaped
 *   d  MADV_DONTNEED the first SPARE_PAGES / 4 pages of the spare region
 *   u  munmap its last SPARE_PAGES / 2 pages
 *   s  print how many SIGUSR1 arrived (all as sent, or a failure is noted)
 * (the spare region: SPARE_PAGES pages written once at start, then left)
 */
#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TOTAL (1ull << 62)  /* never reaches 0 in a test's life */
#define MOVERS 3

struct pair {        /* a on the first page, b on the second (4 KiB pages) */
	volatile uint64_t a;
	char pad[4096 - sizeof(uint64_t)];
	volatile uint64_t b;
	char pad2[4096 - sizeof(uint64_t)];
};

static struct pair *pairs;   /* MOVERS + 1: the last one shared, under lock */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *sweep;
static size_t sweep_pages, page;
#define SPARE_PAGES 64
static char *spare;
static atomic_int stop, failures;
static int pipefd[2];
static atomic_int got_byte = -1;
#define SIGNAL_VALUE 4242
static atomic_int signals_seen, signals_wrong;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	if (si->si_code == SI_QUEUE && si->si_value.sival_int == SIGNAL_VALUE)
		atomic_fetch_add(&signals_seen, 1);
	else
		atomic_fetch_add(&signals_wrong, 1);
}

static void fail(const char *what)
{
	fprintf(stderr, "bank: %s\n", what);
	atomic_fetch_add(&failures, 1);
}

static void *mover(void *arg)
{
	struct pair *p = arg;
	struct pair *shared = &pairs[MOVERS];

	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		for (int i = 0; i < 1000; i++) {
			p->a--;
			p->b++;
		}
		pthread_mutex_lock(&lock);
		shared->a--;
		shared->b++;
		pthread_mutex_unlock(&lock);
	}
	return NULL;
}

static void *sweeper(void *arg)
{
	for (uint64_t round = 1; !atomic_load_explicit(&stop, memory_order_relaxed); round++)
		for (size_t i = 0; i < sweep_pages; i++) {
			volatile uint64_t *w = (volatile uint64_t *)((char *)sweep + i * page);

			for (size_t j = 0; j < page / sizeof(*w); j++)
				w[j] = round;
		}
	return NULL;
}

/* SIGUSR1 goes to the other threads: here a handler would end the sleep
 * or the read with EINTR by design, which is not what they check. */
static void block_usr1(void)
{
	sigset_t usr1;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
}

static void *sleeper(void *arg)
{
	block_usr1();
	while (!atomic_load(&stop)) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };

		while (nanosleep(&ts, &ts) != 0)
			if (errno == EINTR)  /* nobody sends us a signal */
				fail("nanosleep returned EINTR");
	}
	return NULL;
}

static void *reader(void *arg)
{
	char c;
	ssize_t n;

	block_usr1();
	for (;;) {
		n = read(pipefd[0], &c, 1);
		if (n == 1 && c == 'q')
			return NULL;
		if (n != 1) {
			fail("read on the pipe did not return its byte");
			return NULL;
		}
		atomic_store(&got_byte, c);
	}
}

/* Values kept in registers across a long loop: an injected system call or
 * a stop that lost any of them breaks the equalities. */
__attribute__((target("avx2")))
static void *registers(void *arg)
{
	__m256i va = _mm256_set1_epi64x(7), vb = _mm256_set1_epi64x(7);
	__m256i one = _mm256_set1_epi64x(1);
	uint64_t x = 11, y = 11;
	double d = 0.5, e = 0.5;

	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		__asm__ volatile("" : "+x"(va), "+x"(vb), "+x"(d), "+x"(e), "+r"(x), "+r"(y));
		va = _mm256_add_epi64(va, one);
		vb = _mm256_add_epi64(vb, one);
		x += 3;
		y += 3;
		d += 1.0;
		e += 1.0;
		__m256i ne = _mm256_xor_si256(va, vb);

		if (!_mm256_testz_si256(ne, ne) || x != y || d != e) {
			fail("a register changed under us");
			return NULL;
		}
	}
	return NULL;
}

static bool have_avx2(void)
{
	return __builtin_cpu_supports("avx2");
}

int main(void)
{
	pthread_t movers[MOVERS], sw, sl, rd, rg;
	sigset_t mask, now;
	char cmd;

	page = (size_t)sysconf(_SC_PAGESIZE);
	sweep_pages = 256;
	setvbuf(stdout, NULL, _IOLBF, 0);
	/* A signal mask to be found unchanged at the end. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	struct sigaction sa = { .sa_sigaction = on_usr1, .sa_flags = SA_SIGINFO | SA_RESTART };

	sigaction(SIGUSR1, &sa, NULL);
	/* First, so above the others: a save in address order reaches it last. */
	spare = mmap(NULL, SPARE_PAGES * page, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pairs = mmap(NULL, (MOVERS + 1) * sizeof(*pairs), PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	sweep = mmap(NULL, sweep_pages * page, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pairs == MAP_FAILED || sweep == MAP_FAILED || spare == MAP_FAILED || pipe(pipefd) < 0)
		return 2;
	memset(spare, 0x77, SPARE_PAGES * page);
	for (int i = 0; i <= MOVERS; i++)
		pairs[i].a = TOTAL;
	for (int i = 0; i < MOVERS; i++)
		pthread_create(&movers[i], NULL, mover, &pairs[i]);
	pthread_create(&sw, NULL, sweeper, NULL);
	pthread_create(&sl, NULL, sleeper, NULL);
	pthread_create(&rd, NULL, reader, NULL);
	if (have_avx2())
		pthread_create(&rg, NULL, registers, NULL);
	printf("ready %d %lx %lx %zu %lx\n", getpid(), (unsigned long)pairs, (unsigned long)sweep,
	       sweep_pages, (unsigned long)spare);

	while (read(0, &cmd, 1) == 1) {
		switch (cmd) {
		case 'w':
			for (int i = 0; i <= MOVERS; i++)
				memset(pairs[i].pad, 0x5a, sizeof(pairs[i].pad));
			memset(sweep, 0x5a, sweep_pages * page);
			printf("wrote\n");
			break;
		case 'p':
			if (write(pipefd[1], "p", 1) != 1)
				fail("pipe write");
			while (atomic_load(&got_byte) != 'p')
				sched_yield();
			atomic_store(&got_byte, -1);
			printf("fed\n");
			break;
		case 'f': {
			pid_t child = fork();

			if (child == 0)
				_exit(0);
			waitpid(child, NULL, 0);
			printf("forked\n");
			break;
		}
		case 'x':
			_exit(3);
		case 's':
			printf("signals %d\n", atomic_load(&signals_seen));
			break;
		case 'd':
			printf("%s\n", madvise(spare, SPARE_PAGES / 4 * page, MADV_DONTNEED) ?
					       "madvise failed" : "discarded");
			break;
		case 'u':
			printf("%s\n", munmap(spare + SPARE_PAGES / 2 * page, SPARE_PAGES / 2 * page) ?
					       "munmap failed" : "unmapped");
			break;
		case 'q':
			atomic_store(&stop, 1);
			if (write(pipefd[1], "q", 1) != 1)
				fail("pipe write");
			for (int i = 0; i < MOVERS; i++)
				pthread_join(movers[i], NULL);
			pthread_join(sw, NULL);
			pthread_join(sl, NULL);
			pthread_join(rd, NULL);
			if (have_avx2())
				pthread_join(rg, NULL);
			pthread_sigmask(SIG_BLOCK, NULL, &now);
			if (!sigismember(&now, SIGUSR2) || sigismember(&now, SIGUSR1))
				fail("the signal mask changed");
			if (atomic_load(&signals_wrong))
				fail("a SIGUSR1 arrived changed (si_code or value)");
			printf("bye %d\n", atomic_load(&failures));
			return atomic_load(&failures) ? 1 : 0;
		}
	}
	return 0;
}
