// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_INVALIDATE_RANGE: after the hypervisor has replaced a file's
 * blocks, drop the guest's cached copies of them so that running processes
 * fault in, and new readers and execs read, the new contents.
 *
 * Also the range clamp every file-range command shares.
 */
#include <linux/fadvise.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/limits.h>
#include <linux/lockdep.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/pagemap.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>

#include "vmsubst.h"

/*
 * The pages of [@start, @end) that lie within @size bytes, widened to whole
 * pages. False when none do.
 */
bool vmsubst_clamp_range(loff_t size, u64 start, u64 end, pgoff_t *first,
			 pgoff_t *last)
{
	if (start >= size)
		return false;
	end = min_t(u64, end, size);
	*first = start >> PAGE_SHIFT;
	*last = (end - 1) >> PAGE_SHIFT;
	return true;
}

struct vmsubst_invalidate {
	u32 flags;
	pgoff_t first;
	pgoff_t last;
	struct vmsubst_page_counts counts;
	struct vmsubst_out *outcomes;
	struct vmsubst_out *mappers;
};

/* The caller holds i_rwsem and invalidate_lock; see vmsubst_invalidate_file(). */
static int vmsubst_invalidate_locked(struct file *file,
				     struct vmsubst_invalidate *inv)
{
	struct address_space *mapping = file->f_mapping;
	bool zap = inv->flags & VMSUBST_INVALIDATE_F_ZAP;
	bool drop = inv->flags & VMSUBST_INVALIDATE_F_DROP;
	int ret;

	lockdep_assert_held_write(&mapping->host->i_rwsem);
	lockdep_assert_held_write(&mapping->invalidate_lock);

	/*
	 * Before anything changes, and under both locks: no write(2) can
	 * dirty a page of the range until they are released, nor a write
	 * fault where ->page_mkwrite takes invalidate_lock (ext4, XFS).
	 */
	if (inv->flags & VMSUBST_INVALIDATE_F_UNLESS_DIRTY) {
		struct vmsubst_page_states st = {};
		struct vmsubst_out none = {};

		ret = vmsubst_pages_states(mapping, inv->first, inv->last, &st,
					   &none, true);
		if (ret)
			return ret;
		if (st.dirty || st.writeback)
			return -EBUSY;
	}

	/* Before the unmap, while folio_mapped() still tells who maps what. */
	ret = vmsubst_pages_count(mapping, inv->first, inv->last, &inv->counts);
	if (ret)
		return ret;
	if (inv->flags & VMSUBST_INVALIDATE_F_REPORT_MAPPERS)
		vmsubst_rmap_report(mapping, inv->first, inv->last,
				    inv->mappers);

	/*
	 * One walk of i_mmap for the whole range instead of one per folio
	 * inside invalidate_inode_pages2_range(). even_cows = 0: a process's
	 * private copy-on-write copies are its own data (written .data, or
	 * pages pinned by VMSUBST_IOC_PIN_MAPPERS), not a cache of the file;
	 * zapping them would corrupt it.
	 */
	if (zap)
		unmap_mapping_range(
			mapping, (loff_t)inv->first << PAGE_SHIFT,
			(loff_t)(inv->last - inv->first + 1) << PAGE_SHIFT, 0);
	if (!drop)
		return 0;
	if (!zap)
		return vmsubst_pages_drop_unused(file, inv->first, inv->last,
						 &inv->counts, inv->outcomes);
	return vmsubst_pages_drop(mapping, inv->first, inv->last, &inv->counts,
				  inv->outcomes);
}

/*
 * Drops the page cache of [@start, @end) of @file, clamped to its size.
 * The range is widened to whole pages. False in *@any when nothing of the
 * file lies in it.
 */
static int vmsubst_invalidate_file(struct file *file, u64 start, u64 end,
				   struct vmsubst_invalidate *inv, bool *any)
{
	struct inode *inode = file_inode(file);
	struct address_space *mapping = file->f_mapping;
	int ret = 0;

	/*
	 * i_rwsem holds off write(2) and truncate, which add and dirty pages
	 * without invalidate_lock; invalidate_lock holds off page faults,
	 * readahead and ->page_mkwrite, which could otherwise refill the
	 * range from the old blocks in flight or dirty a page between the
	 * count and the drop. Hits on pages already cached take neither, so
	 * those are unmapped again under the folio lock by
	 * invalidate_inode_pages2_range().
	 */
	inode_lock(inode);
	filemap_invalidate_lock(mapping);
	*any = vmsubst_clamp_range(i_size_read(inode), start, end, &inv->first,
				   &inv->last);
	if (*any)
		ret = vmsubst_invalidate_locked(file, inv);
	filemap_invalidate_unlock(mapping);
	inode_unlock(inode);
	return ret;
}

/*
 * Reads the range back in, after the locks are gone: readahead fills the
 * cache with the new blocks in large requests, and with @sync every page is
 * waited for. Returns the pages refaulted or -errno.
 */
static long vmsubst_refault(struct file *file, pgoff_t first, pgoff_t last,
			    bool sync)
{
	struct address_space *mapping = file->f_mapping;
	pgoff_t index = first;
	long done = 0;
	int ret;

	ret = vfs_fadvise(file, (loff_t)first << PAGE_SHIFT,
			  (loff_t)(last - first + 1) << PAGE_SHIFT,
			  POSIX_FADV_WILLNEED);
	if (ret)
		return ret;
	if (!sync)
		return last - first + 1;

	while (index <= last) {
		struct folio *folio = read_mapping_folio(mapping, index, file);

		if (IS_ERR(folio))
			return PTR_ERR(folio);
		done += min(folio_next_index(folio) - 1, last) - index + 1;
		index = folio_next_index(folio);
		folio_put(folio);
		if (fatal_signal_pending(current))
			return -EINTR;
		cond_resched();
	}
	return done;
}

int vmsubst_cmd_invalidate_range_check(const struct vmsubst_ucmd *ucmd)
{
	u32 flags = ucmd->cmd.invalidate_range.flags;

	if ((flags & VMSUBST_INVALIDATE_F_REFAULT_ASYNC) &&
	    (flags & VMSUBST_INVALIDATE_F_REFAULT_SYNC))
		return -EINVAL;
	return 0;
}

int vmsubst_cmd_invalidate_range(struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_invalidate_range *req = &ucmd->cmd.invalidate_range;
	struct vmsubst_invalidate inv = {
		.flags = req->flags,
		.outcomes = &ucmd->io.out[0],
		.mappers = &ucmd->io.out[1],
	};
	struct file *file = ucmd->file;
	long refaulted = 0;
	bool any = false;
	int ret;

	/* Neither step named: both, as for callers that predate the flags. */
	if (!(inv.flags &
	      (VMSUBST_INVALIDATE_F_ZAP | VMSUBST_INVALIDATE_F_DROP)))
		inv.flags |= VMSUBST_INVALIDATE_F_ZAP |
			     VMSUBST_INVALIDATE_F_DROP;

	/*
	 * A writable filesystem can write its own cached state back over the
	 * substituted blocks; only the caller can know that it will not, or
	 * have the module check, under the locks, that no page of the range
	 * holds data of the guest's that is not on the disk yet.
	 */
	if (!sb_rdonly(file_inode(file)->i_sb) &&
	    !(inv.flags &
	      (VMSUBST_INVALIDATE_F_FORCE | VMSUBST_INVALIDATE_F_UNLESS_DIRTY)))
		return -EACCES;
	ret = vmsubst_invalidate_file(file, req->offset, ucmd->end, &inv, &any);
	if (!ret && any &&
	    (inv.flags & (VMSUBST_INVALIDATE_F_REFAULT_ASYNC |
			  VMSUBST_INVALIDATE_F_REFAULT_SYNC))) {
		refaulted = vmsubst_refault(
			file, inv.first, inv.last,
			inv.flags & VMSUBST_INVALIDATE_F_REFAULT_SYNC);
		if (refaulted < 0)
			ret = refaulted;
	}
	if (ret)
		return ret;

	req->pages_cached = inv.counts.cached;
	req->pages_mapped = inv.counts.mapped;
	req->pages_dropped = inv.counts.dropped;
	req->pages_kept = inv.counts.kept;
	req->pages_refaulted = refaulted;
	return 0;
}
