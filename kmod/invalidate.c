// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_INVALIDATE_RANGE: after the hypervisor has replaced a file's
 * blocks, drop the guest's cached copies of them so that running processes
 * fault in, and new readers and execs read, the new contents.
 */
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/limits.h>
#include <linux/lockdep.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/pagemap.h>
#include <linux/pagevec.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>

#include "vmsubst.h"

struct vmsubst_counts {
	u64 cached;
	u64 mapped;
	u64 dropped;
	u64 kept;
};

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

static int vmsubst_count_cached(struct address_space *mapping, pgoff_t first,
				pgoff_t last, struct vmsubst_counts *c)
{
	struct folio_batch fbatch;
	pgoff_t index = first;
	pgoff_t lo, hi;
	unsigned int i;

	/* Without both, write(2) or a fault could add pages behind the count. */
	lockdep_assert_held_write(&mapping->host->i_rwsem);
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

static int vmsubst_drop_cached(struct address_space *mapping, pgoff_t first,
			       pgoff_t last, struct vmsubst_counts *c)
{
	struct folio_batch fbatch;
	pgoff_t index = first;
	pgoff_t lo, hi;
	unsigned int i;

	/* Keeps faults and readahead from refilling what was just dropped. */
	lockdep_assert_held_write(&mapping->invalidate_lock);

	folio_batch_init(&fbatch);
	while (index <= last &&
	       filemap_get_folios(mapping, &index, last, &fbatch)) {
		for (i = 0; i < folio_batch_count(&fbatch); i++) {
			vmsubst_folio_clamp(fbatch.folios[i], first, last,
					    &lo, &hi);
			/*
			 * One call per folio, because a ranged call's -EBUSY
			 * does not say which folios stayed. Our batch
			 * reference does not make the folio busy: only a
			 * dirty folio or busy buffers do. Any failure leaves
			 * the folio cached, so it is reported as kept.
			 */
			if (invalidate_inode_pages2_range(mapping, lo, hi))
				c->kept += hi - lo + 1;
			else
				c->dropped += hi - lo + 1;
		}
		folio_batch_release(&fbatch);
		if (fatal_signal_pending(current))
			return -EINTR;
		cond_resched();
	}
	return 0;
}

/*
 * Drops the page cache of [@start, @end) of @file, clamped to its size.
 * The range is widened to whole pages.
 */
static int vmsubst_invalidate_file(struct file *file, loff_t start, loff_t end,
				   struct vmsubst_counts *c)
{
	struct inode *inode = file_inode(file);
	struct address_space *mapping = file->f_mapping;
	pgoff_t first, last;
	loff_t isize;
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

	isize = i_size_read(inode);
	if (start >= isize)
		goto out;
	end = min(end, isize);
	first = start >> PAGE_SHIFT;
	last = (end - 1) >> PAGE_SHIFT;

	/* Before the unmap, while folio_mapped() still tells who maps what. */
	ret = vmsubst_count_cached(mapping, first, last, c);
	if (ret)
		goto out;

	/*
	 * One walk of i_mmap for the whole range instead of one per folio
	 * inside invalidate_inode_pages2_range(). even_cows = 0: a process's
	 * private copy-on-write copies are its own data (written .data, for
	 * one), not a cache of the file; zapping them would corrupt it.
	 */
	unmap_mapping_range(mapping, (loff_t)first << PAGE_SHIFT,
			    (loff_t)(last - first + 1) << PAGE_SHIFT, 0);

	ret = vmsubst_drop_cached(mapping, first, last, c);
out:
	filemap_invalidate_unlock(mapping);
	inode_unlock(inode);
	return ret;
}

static int vmsubst_check_file(struct file *file, bool force)
{
	struct inode *inode = file_inode(file);
	struct super_block *sb = inode->i_sb;

	if (S_ISDIR(inode->i_mode))
		return -EISDIR;
	if (!S_ISREG(inode->i_mode))
		return -EINVAL;
	/* Only a block device can have its blocks replaced under us. */
	if (!sb->s_bdev)
		return -ENOTBLK;
	if (IS_DAX(inode))
		return -EMEDIUMTYPE;
	/*
	 * A writable filesystem can write its own cached state back over the
	 * substituted blocks; only the caller can know that it will not.
	 */
	if (!sb_rdonly(sb) && !force)
		return -EACCES;
	return 0;
}

int vmsubst_cmd_invalidate_range(union vmsubst_cmd *cmd)
{
	struct vmsubst_invalidate_range *req = &cmd->invalidate_range;
	struct vmsubst_counts c = {};
	struct file *file;
	u64 end;
	int ret;

	if (req->reserved0 || !req->length)
		return -EINVAL;
	if (check_add_overflow(req->offset, req->length, &end) ||
	    end > LLONG_MAX)
		return -EOVERFLOW;

	/* fget() refuses O_PATH files: they grant no access to contents. */
	file = fget(req->fd);
	if (!file)
		return -EBADF;
	ret = vmsubst_check_file(file, req->flags & VMSUBST_INVALIDATE_F_FORCE);
	if (!ret)
		ret = vmsubst_invalidate_file(file, req->offset, end, &c);
	fput(file);
	if (ret)
		return ret;

	req->pages_cached = c.cached;
	req->pages_mapped = c.mapped;
	req->pages_dropped = c.dropped;
	req->pages_kept = c.kept;
	return 0;
}
