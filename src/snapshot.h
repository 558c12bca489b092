/* SPDX-License-Identifier: MIT */
/* Live snapshots: what the command and the benchmarks use besides the API. */
#ifndef UFFDWP_SNAPSHOT_H
#define UFFDWP_SNAPSHOT_H

#include <stddef.h>
#include "uffdwp.h"

/*
 * Write a full snapshot file of regions to fd, in the calling thread,
 * straight from memory that nobody writes meanwhile (a fork() child's copy:
 * the baseline the live snapshot is measured against). The same encoder
 * and zero-page elision as a live snapshot, without protection, side
 * buffer or thread. Returns 0 or a negative errno (-EINVAL bad regions,
 * -ENOMEM, the errno of writev(2)).
 */
int uffdwp__snapshot_write_frozen(int fd, const struct uffdwp_snapshot_region *regions,
				  size_t nregions) __attribute__((visibility("hidden")));

#endif
