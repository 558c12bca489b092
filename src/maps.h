/* SPDX-License-Identifier: MIT */
/*
 * The process's own mappings, as the kernel describes them: the one place
 * that reads /proc/self/maps (or asks it with PROCMAP_QUERY).
 */
#ifndef UFFDWP_MAPS_H
#define UFFDWP_MAPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "backend.h"

/* One mapping (a VMA), clipped to the walked interval. */
struct uffdwp__mapping {
	uintptr_t start, end;
	int prot;     /* PROT_READ | PROT_WRITE | PROT_EXEC */
	bool shared;
	bool anonymous;  /* no file behind it (inode 0): not shmem, not a file */
	size_t page;  /* its page size: the huge page size on hugetlbfs
		       * (with UFFDWP__MAPS_PAGE_SIZES) */
	/* Backed by a file that is neither shmem nor hugetlbfs (only with
	 * UFFDWP__MAPS_CLASSIFY): memory userfaultfd cannot write-protect. */
	bool file;
};

/* Called for each mapping in address order; returns false to stop. */
typedef bool (*uffdwp__mapping_fn)(void *arg, const struct uffdwp__mapping *m);

/* Fill in struct uffdwp__mapping.file (costs a statfs per file mapping). */
#define UFFDWP__MAPS_CLASSIFY 1u
/* Fill in struct uffdwp__mapping.page truly: without PROCMAP_QUERY this reads
 * smaps, which walks every page table; otherwise page is the base page. */
#define UFFDWP__MAPS_PAGE_SIZES 2u

/*
 * Walk the mappings overlapping [lo, hi). Uses PROCMAP_QUERY (Linux 6.11:
 * about a microsecond per mapping, whatever the process's size) and falls
 * back to reading /proc/self/maps and smaps. Async-signal-safe: no malloc,
 * no stdio, no locks. Returns 0, or a negative errno when the kernel's
 * description cannot be read.
 */
int uffdwp__walk_mappings(uintptr_t lo, uintptr_t hi, unsigned flags, uffdwp__mapping_fn fn,
			  void *arg) UFFDWP__HIDDEN;

/* The page size of the mapping holding addr (the huge page size on
 * hugetlbfs), or the system's when it cannot be told. Async-signal-safe. */
size_t uffdwp__page_size_at(uintptr_t addr) UFFDWP__HIDDEN;

#endif
