// SPDX-License-Identifier: GPL-2.0
/*
 * Counting and dropping the cached pages of a range of a mapping, a file's
 * or a block device's, with a report of every page that did not simply go.
 */
#include <linux/fadvise.h>
#include <linux/fs.h>
#include <linux/lockdep.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/pagemap.h>
#include <linux/pagevec.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/xarray.h>

#include "vmsubst.h"

/*
 * The part of @folio inside [@first, @last], so that a large folio
 * straddling the range is counted for the pages the caller asked about.
 */
static void vmsubst_folio_clamp(struct folio *folio, pgoff_t first,
				pgoff_t last, pgoff_t *lo, pgoff_t *hi)
{
	*lo = max(folio->index, first);
	*hi = min(folio_next_index(folio) - 1, last);
}

/* Why @folio might stay in the cache, as VMSUBST_PAGE_* bits. */
static u32 vmsubst_folio_state(struct folio *folio)
{
	u32 state = 0;

	if (folio_test_dirty(folio))
		state |= VMSUBST_PAGE_DIRTY;
	if (folio_test_writeback(folio))
		state |= VMSUBST_PAGE_WRITEBACK;
	if (folio_test_locked(folio))
		state |= VMSUBST_PAGE_LOCKED;
	if (folio_maybe_dma_pinned(folio))
		state |= VMSUBST_PAGE_PINNED;
	if (folio_mapped(folio))
		state |= VMSUBST_PAGE_MAPPED;
	return state;
}

/*
 * Builds the outcome report: page runs with the same state become one
 * vmsubst_page_range. @pending holds the run being extended; state 0 means
 * none (a cleanly dropped page ends a run and is not reported).
 */
struct vmsubst_outcomes {
	struct vmsubst_out *out;
	pgoff_t lo;
	pgoff_t hi;
	u32 state;
};

static void vmsubst_outcome_flush(struct vmsubst_outcomes *oc)
{
	struct vmsubst_page_range *r;

	if (!oc->state)
		return;
	r = vmsubst_out_next(oc->out);
	if (r) {
		r->offset = (u64)oc->lo << PAGE_SHIFT;
		r->length = (u64)(oc->hi - oc->lo + 1) << PAGE_SHIFT;
		r->state = oc->state;
	}
	oc->state = 0;
}

static void vmsubst_outcome_add(struct vmsubst_outcomes *oc, pgoff_t lo,
				pgoff_t hi, u32 state)
{
	if (oc->state && oc->state == state && oc->hi + 1 == lo) {
		oc->hi = hi;
		return;
	}
	vmsubst_outcome_flush(oc);
	oc->lo = lo;
	oc->hi = hi;
	oc->state = state;
}

int vmsubst_pages_count(struct address_space *mapping, pgoff_t first,
			pgoff_t last, struct vmsubst_page_counts *c)
{
	struct folio_batch fbatch;
	pgoff_t index = first;
	pgoff_t lo, hi;
	unsigned int i;

	/* Without it, a fault or readahead could add pages behind the count. */
	lockdep_assert_held_write(&mapping->invalidate_lock);

	folio_batch_init(&fbatch);
	while (index <= last &&
	       filemap_get_folios(mapping, &index, last, &fbatch)) {
		for (i = 0; i < folio_batch_count(&fbatch); i++) {
			struct folio *folio = fbatch.folios[i];

			vmsubst_folio_clamp(folio, first, last, &lo, &hi);
			c->cached += hi - lo + 1;
			if (folio_mapped(folio))
				c->mapped += hi - lo + 1;
		}
		folio_batch_release(&fbatch);
		if (fatal_signal_pending(current))
			return -EINTR;
		cond_resched();
	}
	return 0;
}

/*
 * invalidate_inode_pages2_range(), which unmaps mapped pages, waits for
 * locked and writeback ones and drops pinned ones; our batch reference
 * does not stop it (only a dirty folio or busy buffers do). One call per
 * folio, because a ranged call's -EBUSY does not say which folios stayed.
 */
static void vmsubst_drop_batch(struct address_space *mapping,
			       struct folio_batch *fbatch, pgoff_t first,
			       pgoff_t last, struct vmsubst_page_counts *c,
			       struct vmsubst_outcomes *oc)
{
	unsigned int i;
	pgoff_t lo, hi;
	u32 state;

	for (i = 0; i < folio_batch_count(fbatch); i++) {
		struct folio *folio = fbatch->folios[i];

		vmsubst_folio_clamp(folio, first, last, &lo, &hi);
		state = folio_maybe_dma_pinned(folio) ? VMSUBST_PAGE_PINNED : 0;
		if (!invalidate_inode_pages2_range(mapping, lo, hi)) {
			c->dropped += hi - lo + 1;
			vmsubst_outcome_add(
				oc, lo, hi,
				state ? state | VMSUBST_PAGE_DROPPED : 0);
			continue;
		}
		/* Still ours to look at: the reason it stayed. */
		state = vmsubst_folio_state(folio) &
			(VMSUBST_PAGE_DIRTY | VMSUBST_PAGE_WRITEBACK |
			 VMSUBST_PAGE_LOCKED);
		c->kept += hi - lo + 1;
		vmsubst_outcome_add(oc, lo, hi, state ?: VMSUBST_PAGE_BUSY);
	}
}

int vmsubst_pages_drop(struct address_space *mapping, pgoff_t first,
		       pgoff_t last, struct vmsubst_page_counts *c,
		       struct vmsubst_out *outcomes)
{
	struct vmsubst_outcomes oc = { .out = outcomes };
	struct folio_batch fbatch;
	pgoff_t index = first;
	int ret = 0;

	/* Keeps faults and readahead from refilling what was just dropped. */
	lockdep_assert_held_write(&mapping->invalidate_lock);

	folio_batch_init(&fbatch);
	while (index <= last &&
	       filemap_get_folios(mapping, &index, last, &fbatch)) {
		vmsubst_drop_batch(mapping, &fbatch, first, last, c, &oc);
		folio_batch_release(&fbatch);
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		cond_resched();
	}
	vmsubst_outcome_flush(&oc);
	return ret;
}

/*
 * Drops only what nobody uses: POSIX_FADV_DONTNEED, which skips pages that
 * are mapped, locked, dirty (it starts their writeback), under writeback,
 * or referenced, after draining the per-CPU LRU batches whose references
 * would otherwise keep recently read pages (lru_add_drain_all() is not
 * exported). What is left of the range afterwards was kept; @c->cached must
 * already hold the count from before.
 */
int vmsubst_pages_drop_unused(struct file *file, pgoff_t first, pgoff_t last,
			      struct vmsubst_page_counts *c,
			      struct vmsubst_out *outcomes)
{
	struct address_space *mapping = file->f_mapping;
	struct vmsubst_outcomes oc = { .out = outcomes };
	struct folio_batch fbatch;
	pgoff_t index = first;
	pgoff_t lo, hi;
	unsigned int i;
	int ret;

	lockdep_assert_held_write(&mapping->invalidate_lock);

	ret = vfs_fadvise(file, (loff_t)first << PAGE_SHIFT,
			  (loff_t)(last - first + 1) << PAGE_SHIFT,
			  POSIX_FADV_DONTNEED);
	if (ret)
		return ret;

	folio_batch_init(&fbatch);
	while (index <= last &&
	       filemap_get_folios(mapping, &index, last, &fbatch)) {
		for (i = 0; i < folio_batch_count(&fbatch); i++) {
			struct folio *folio = fbatch.folios[i];

			vmsubst_folio_clamp(folio, first, last, &lo, &hi);
			c->kept += hi - lo + 1;
			vmsubst_outcome_add(&oc, lo, hi,
					    vmsubst_folio_state(folio) ?:
						    VMSUBST_PAGE_BUSY);
		}
		folio_batch_release(&fbatch);
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		cond_resched();
	}
	vmsubst_outcome_flush(&oc);
	/* Reclaim may have taken some meanwhile; they count as dropped too. */
	c->dropped = c->cached > c->kept ? c->cached - c->kept : 0;
	return ret;
}

/* Entries looked at per RCU read section of vmsubst_pages_states(). */
#define VMSUBST_STATES_BATCH 64

/*
 * Counts the pages of [@first, @last] of @mapping: cached, mapped, dirty,
 * under writeback, and reports the runs of dirty and writeback pages into
 * @ranges. Takes no lock of the file and changes nothing: a walk of the
 * page cache xarray under RCU, as the lookups of mm/filemap.c do, holding a
 * folio reference only while its flags are read (a reference that fails or
 * a folio that moved sends the walk back to the same index). Dirty and
 * writeback are the xarray tags or the folio flags, whichever says so: the
 * tags lag the flags briefly at both ends of a writeback.
 *
 * Bounded by the range; the RCU section is left every
 * VMSUBST_STATES_BATCH entries to reschedule and to see a fatal signal.
 * With @stop_at_dirty the walk ends at the first dirty or writeback page
 * (the counts then cover the range up to it).
 */
int vmsubst_pages_states(struct address_space *mapping, pgoff_t first,
			 pgoff_t last, struct vmsubst_page_states *st,
			 struct vmsubst_out *ranges, bool stop_at_dirty)
{
	struct vmsubst_outcomes oc = { .out = ranges };
	XA_STATE(xas, &mapping->i_pages, first);
	unsigned int seen = 0;
	struct folio *folio;
	pgoff_t lo, hi, next;
	u64 nr;
	u32 state;
	int ret = 0;

	rcu_read_lock();
	xas_for_each(&xas, folio, last) {
		if (xas_retry(&xas, folio))
			continue;
		/* A shadow entry: the page was evicted, nothing cached. */
		if (xa_is_value(folio))
			goto next;

		state = 0;
		if (xas_get_mark(&xas, PAGECACHE_TAG_DIRTY))
			state |= VMSUBST_PAGE_DIRTY;
		if (xas_get_mark(&xas, PAGECACHE_TAG_WRITEBACK))
			state |= VMSUBST_PAGE_WRITEBACK;
		if (!folio_try_get(folio)) {
			xas_reset(&xas);
			goto next;
		}
		if (unlikely(folio != xas_reload(&xas))) {
			folio_put(folio);
			xas_reset(&xas);
			goto next;
		}
		if (folio_test_dirty(folio))
			state |= VMSUBST_PAGE_DIRTY;
		if (folio_test_writeback(folio))
			state |= VMSUBST_PAGE_WRITEBACK;
		vmsubst_folio_clamp(folio, first, last, &lo, &hi);
		nr = hi - lo + 1;
		st->cached += nr;
		if (folio_mapped(folio))
			st->mapped += nr;
		next = folio_next_index(folio);
		/* Not the last reference: the page cache holds one. */
		folio_put(folio);

		if (state & VMSUBST_PAGE_DIRTY)
			st->dirty += nr;
		if (state & VMSUBST_PAGE_WRITEBACK)
			st->writeback += nr;
		/* A clean page ends the run being built. */
		vmsubst_outcome_add(&oc, lo, hi, state);
		if (state && stop_at_dirty)
			break;
		/* Past the whole folio: a large one is counted once. */
		xas_set(&xas, next);
next:
		if (++seen % VMSUBST_STATES_BATCH)
			continue;
		xas_pause(&xas);
		rcu_read_unlock();
		if (fatal_signal_pending(current))
			return -EINTR;
		cond_resched();
		rcu_read_lock();
	}
	rcu_read_unlock();
	vmsubst_outcome_flush(&oc);
	return ret;
}
