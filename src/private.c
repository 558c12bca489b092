/* SPDX-License-Identifier: MIT */
/*
 * The library's private memory: everything a fault path writes (emulated
 * range bits and tables, waiter records, engines, contexts) lives in
 * mappings of its own, never in the program's heap. A program may protect
 * its whole heap (a whole-heap snapshot); if the fault path wrote there,
 * it would fault on its own state and deadlock or die. The same mappings
 * are refused by uffdwp_register() (-EBUSY), so they are never protected.
 *
 * Memory comes from chunks mapped here and never unmapped (their address
 * ranges stay known to uffdwp__private_overlaps(), which a registration
 * asks without locks). Blocks are powers of two from 64 bytes, each with
 * a 16-byte header giving its class; freed blocks go on their class's free
 * list (large ones after MADV_DONTNEED gave their pages back).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "backend.h"

#define MIN_SHIFT 6           /* 64-byte blocks */
#define MAX_SHIFT 40          /* 1 TiB: more than any bitmap needs */
#define DONTNEED_SHIFT 16     /* blocks of 64 KiB and more give pages back on free */
#define ARENA_SIZE ((size_t)4 << 20)
#define MAX_CHUNKS 512

struct block_header {
	size_t shift;
	size_t zeroed;  /* while free: its interior pages were given back
			   (MADV_DONTNEED), so reuse clears only the edges */
};

struct free_block {
	struct free_block *next;
};

static struct {
	/* Every chunk ever mapped: appended to without locks (a slot is
	 * claimed, then published by a non-zero end). */
	struct {
		_Atomic uintptr_t start, end;
	} chunks[MAX_CHUNKS];
	_Atomic size_t nchunks;

	pthread_mutex_t lock;  /* the arena and free lists below */
	char *bump, *bump_end;
	struct free_block *free[MAX_SHIFT + 1];
} priv = { .lock = PTHREAD_MUTEX_INITIALIZER };

void *uffdwp__private_map(size_t len)
{
	size_t i = atomic_fetch_add(&priv.nchunks, 1);
	void *p;

	if (i >= MAX_CHUNKS) {
		atomic_fetch_sub(&priv.nchunks, 1);
		return NULL;
	}
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		 -1, 0);
	if (p == MAP_FAILED)
		p = NULL;
	/* A failed slot stays empty (end 0): it overlaps nothing. */
	atomic_store(&priv.chunks[i].start, (uintptr_t)p);
	atomic_store(&priv.chunks[i].end, p ? (uintptr_t)p + len : 0);
	return p;
}

bool uffdwp__private_overlaps(uintptr_t start, size_t len)
{
	size_t n = atomic_load(&priv.nchunks);

	for (size_t i = 0; i < n && i < MAX_CHUNKS; i++) {
		uintptr_t end = atomic_load(&priv.chunks[i].end);

		if (end && start < end && start + len > atomic_load(&priv.chunks[i].start))
			return true;
	}
	return false;
}

static size_t class_of(size_t size)
{
	size_t shift = MIN_SHIFT;

	size += sizeof(struct block_header);
	while (shift < MAX_SHIFT && ((size_t)1 << shift) < size)
		shift++;
	return ((size_t)1 << shift) >= size ? shift : 0;
}

/* A new block of class shift, from the arena or a chunk of its own. */
static void *carve(size_t shift)
{
	size_t size = (size_t)1 << shift;
	char *p;

	if (size >= ARENA_SIZE)
		return uffdwp__private_map(size);
	if ((size_t)(priv.bump_end - priv.bump) < size) {
		p = uffdwp__private_map(ARENA_SIZE);
		if (!p)
			return NULL;
		priv.bump = p;
		priv.bump_end = p + ARENA_SIZE;
	}
	/* Blocks in an arena are carved in any order of sizes: align each
	 * to 16 bytes only (the header's alignment), not to its size. */
	p = priv.bump;
	priv.bump += size;
	return p;
}

/*
 * The whole pages of a block of class shift past its header: what a large
 * block gives back on free (MADV_DONTNEED), so what reads as zero when it
 * is reused. A block in an arena is aligned to 16 bytes only: its edges
 * are not.
 */
static void block_pages(struct block_header *h, size_t shift, char **start, char **end)
{
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t last = (uintptr_t)h + ((uintptr_t)1 << shift);
	uintptr_t a = ((uintptr_t)(h + 1) + page - 1) & ~(page - 1);
	uintptr_t b = last & ~(page - 1);

	a = a < last ? a : last;
	*start = (char *)a;
	*end = (char *)(b > a ? b : a);
}

void *uffdwp__private_alloc(size_t size)
{
	size_t shift = class_of(size);
	struct block_header *h;
	bool fresh = false;

	if (!shift)
		return NULL;
	pthread_mutex_lock(&priv.lock);
	h = (struct block_header *)priv.free[shift];
	if (h) {
		priv.free[shift] = priv.free[shift]->next;
	} else {
		h = carve(shift);
		fresh = true;
	}
	pthread_mutex_unlock(&priv.lock);
	if (!h)
		return NULL;
	/* Fresh memory reads as zero, and so do the pages a large freed
	 * block gave back (MADV_DONTNEED; it fails on locked memory, after
	 * mlockall()): clear the rest. */
	if (!fresh && !h->zeroed) {
		memset(h, 0, (size_t)1 << shift);
	} else if (!fresh) {
		char *a, *b, *end = (char *)h + ((size_t)1 << shift);

		block_pages(h, shift, &a, &b);
		memset(h, 0, (size_t)(a - (char *)h));
		memset(b, 0, (size_t)(end - b));
	}
	h->shift = shift;
	h->zeroed = false;
	return h + 1;
}

void *uffdwp__private_calloc(size_t n, size_t size)
{
	return size && n > SIZE_MAX / size ? NULL : uffdwp__private_alloc(n * size);
}

void *uffdwp__private_realloc(void *p, size_t size)
{
	size_t have;
	void *q;

	if (!p)
		return uffdwp__private_alloc(size);
	have = ((size_t)1 << ((struct block_header *)p - 1)->shift) - sizeof(struct block_header);
	if (size <= have)
		return p;
	q = uffdwp__private_alloc(size);
	if (q) {
		memcpy(q, p, have);
		uffdwp__private_free(p);
	}
	return q;
}

void uffdwp__private_free(void *p)
{
	struct block_header *h;
	size_t shift;

	if (!p)
		return;
	h = (struct block_header *)p - 1;
	shift = h->shift;
	h->zeroed = false;
	if (shift >= DONTNEED_SHIFT) {
		char *a, *b;

		block_pages(h, shift, &a, &b);
		h->zeroed = b > a && madvise(a, (size_t)(b - a), MADV_DONTNEED) == 0;
	}
	pthread_mutex_lock(&priv.lock);
	((struct free_block *)h)->next = priv.free[shift];
	priv.free[shift] = (struct free_block *)h;
	pthread_mutex_unlock(&priv.lock);
}

/* fork(): the child's copy of the lock may be held by a thread it lacks. */
void uffdwp__private_prepare_fork(void)
{
	pthread_mutex_lock(&priv.lock);
}

void uffdwp__private_after_fork(void)
{
	pthread_mutex_unlock(&priv.lock);
}
