/* SPDX-License-Identifier: MIT */
/*
 * Checking a caller's options struct (every one starts with size_t sz),
 * both ways, as libbpf's OPTS_VALID does: a caller built against an older
 * header passes a smaller sz and gets the defaults for the fields it does
 * not know; a caller built against a newer header passes a larger sz, and
 * the bytes this library does not know must then be zero, or the caller
 * asked for something this library cannot do.
 */
#ifndef UFFDWP_OPTS_H
#define UFFDWP_OPTS_H

#include <errno.h>
#include <stddef.h>
#include <string.h>

/*
 * opts (sz bytes as the caller says) against a library that knows `known`
 * bytes of it and needs at least `min`: 0, -EINVAL (sz < min) or -E2BIG (a
 * byte past `known` is not zero).
 */
static inline int uffdwp__opts_check(const void *opts, size_t sz, size_t min, size_t known)
{
	const unsigned char *p = opts;

	if (sz < min)
		return -EINVAL;
	for (size_t i = known; i < sz; i++)
		if (p[i])
			return -E2BIG;
	return 0;
}

/* The struct's size up to and including field. */
#define UFFDWP__OPTS_END(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

/* Copy the caller's opts (sz bytes, checked) over a zeroed local of the
 * library's own size: fields the caller does not know keep 0 (defaults). */
#define UFFDWP__OPTS_COPY(dst, src)                                             \
	memcpy(&(dst), (src), (src)->sz < sizeof(dst) ? (src)->sz : sizeof(dst))

#endif
