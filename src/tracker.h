/* SPDX-License-Identifier: MIT */
/*
 * The write tracker's internal interface, for the live snapshots
 * (src/snapshot.c): an incremental snapshot works on the same regions as a
 * tracker, protects and saves only what the tracker says was written, and
 * must see every later first write (copy-before-write). That needs
 * synchronous faults, so this works with the SYNC and EMULATED methods only:
 * under ASYNC a write never faults.
 *
 * What a SYNC/EMULATED tracker guarantees, and what the snapshot builds on:
 *  - a clean page (not written since its last reset) is write-protected;
 *  - a written page is un-protected by the tracker's fault handler after
 *    it has marked the page written, so it is never both clean and writable;
 *  - a collect with UFFDWP_COLLECT_RESET re-protects exactly the pages it
 *    reports, before it clears their bits.
 * So "install an interposer, then collect-with-reset" leaves every page
 * protected and calls the interposer on the first later write to each.
 */
#ifndef UFFDWP_TRACKER_H
#define UFFDWP_TRACKER_H

#include <stdint.h>
#include "backend.h"

/*
 * The context a SYNC or EMULATED tracker registered its ranges with (its
 * own, opened by uffdwp_tracker_create() and closed by destroy), or NULL for
 * ASYNC. Protecting more of the tracked pages through it is allowed: a write
 * to such a page faults, runs the interposer and is then recorded as a
 * write. Un-protecting through it is not (a write would go unseen).
 */
struct uffdwp *uffdwp__tracker_context(struct uffdwp_tracker *t) UFFDWP__HIDDEN;

/*
 * Install fn to run on every write fault of the tracker, in the thread that
 * resolves it (the tracker's engine thread), before the tracker marks the
 * page written and un-protects it; the faulting writer stays blocked until
 * fn returns. page is the start of the faulting page (of its huge page with
 * UFFDWP_TRACK_HUGE). change (may be NULL) is called, in the same thread,
 * for every remove, unmap or remap event over [start, end) before the
 * tracker applies it: the memory there may be discarded or gone. fn may block (snapshot back-pressure): meanwhile other
 * faults of this tracker wait, collects and resets do not. fn must not call
 * the tracker itself. NULL removes the interposer; on return from a call
 * that removes it, the old fn is not running and will not run again. There
 * is one at a time: installing over another fails with -EBUSY. On return from a call that installs fn, every fault that did not
 * (and will not) run fn has already marked and un-protected its page, so a
 * collect with reset begun after it re-protects that page: "install, then
 * reset" needs no quiesced writers. It waits for a fault being handled, fn
 * included. Returns 0, -EBUSY (another is installed) or -EOPNOTSUPP for
 * an ASYNC tracker.
 */
int uffdwp__tracker_set_interposer(struct uffdwp_tracker *t,
				   void (*fn)(void *arg, uintptr_t page),
				   void (*change)(void *arg, uintptr_t start, uintptr_t end),
				   void *arg) UFFDWP__HIDDEN;

/*
 * Lineage, for incremental snapshots. uffdwp__tracker_resets() counts the
 * tracker's resets (collects with reset, uffdwp_tracker_reset(), bitmaps
 * with reset) and changes of its ranges: "written since" means since the
 * last of them. A snapshot that saved every tracked page as of reset
 * number `resets` records itself with uffdwp__tracker_set_parent(), which
 * is ignored if another reset came since; uffdwp__tracker_parent() is the
 * id an incremental snapshot may name as its parent now, or 0 (any reset
 * after it: the pages written before that reset are unknown).
 */
uint64_t uffdwp__tracker_resets(struct uffdwp_tracker *t) UFFDWP__HIDDEN;
void uffdwp__tracker_set_parent(struct uffdwp_tracker *t, uint64_t id, uint64_t resets)
	UFFDWP__HIDDEN;
uint64_t uffdwp__tracker_parent(struct uffdwp_tracker *t) UFFDWP__HIDDEN;

/*
 * Whether the tracker's ranges cover exactly the union of regions (sorted
 * by address, disjoint), however either side is split.
 */
bool uffdwp__tracker_tracks_exactly(struct uffdwp_tracker *t,
				    const struct uffdwp_snapshot_region *regions, size_t n)
	UFFDWP__HIDDEN;

/*
 * SYNC and EMULATED: wait until every event the tracker's engine had read
 * when the call began has been applied. munmap(2), madvise(MADV_DONTNEED)
 * or an mmap(2) over tracked memory returns once the engine has read its
 * event, possibly before the tracker has applied it; after this call the
 * next collect sees it. It waits for a fault being handled, interposer
 * included: not from the interposer, nor while the interposer waits for
 * the caller. Returns 0 (at once under ASYNC, where nothing lags), or
 * -ECHILD.
 */
int uffdwp__tracker_flush(struct uffdwp_tracker *t) UFFDWP__HIDDEN;

#endif
