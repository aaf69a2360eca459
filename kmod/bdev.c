// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_INVALIDATE_BDEV: drop a block device's own page cache, the
 * buffer cache where filesystems keep metadata (ext4: inode tables,
 * directory and extent blocks, bitmaps), so that the next read of those
 * blocks sees what the hypervisor wrote.
 */
#include <linux/blkdev.h>
#include <linux/buffer_head.h>
#include <linux/fs.h>
#include <linux/lockdep.h>
#include <linux/pagemap.h>

#include "compat.h"
#include "vmsubst.h"

static int vmsubst_invalidate_bdev_locked(struct address_space *mapping,
					  pgoff_t first, pgoff_t last,
					  struct vmsubst_page_counts *c,
					  struct vmsubst_out *kept)
{
	int ret;

	lockdep_assert_held_write(&mapping->invalidate_lock);

	ret = vmsubst_pages_count(mapping, first, last, c);
	if (ret)
		return ret;
	/*
	 * A page stays only if it is dirty or one of its buffers is busy
	 * (referenced, dirty or locked: buffer_busy()), which is what a
	 * filesystem's pinned metadata looks like.
	 */
	return vmsubst_pages_drop(mapping, first, last, c, kept);
}

int vmsubst_cmd_invalidate_bdev(struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_invalidate_bdev *req = &ucmd->cmd.invalidate_bdev;
	struct address_space *mapping = ucmd->file->f_mapping;
	struct vmsubst_page_counts c = {};
	pgoff_t first, last;
	u64 end = ucmd->end;
	int ret;

	/* The device's size: its page cache never extends past it. */
	if (end > i_size_read(mapping->host))
		return -ENXIO;
	if (!(req->flags & VMSUBST_BDEV_F_FORCE) &&
	    vmsubst_bdev_held_writable(vmsubst_file_bdev(ucmd->file)))
		return -EACCES;
	vmsubst_clamp_range(end, req->offset, end, &first, &last);

	/*
	 * The per-CPU LRUs of recently used buffer heads each hold a
	 * reference, which makes their buffers busy. The filesystem takes new
	 * ones while the call runs; those pages are reported kept.
	 */
	invalidate_bh_lrus();

	/*
	 * As BLKDISCARD does: holds off reads and readahead through the
	 * device node. A filesystem's own metadata reads (sb_bread()) take no
	 * such lock and can bring a block back at any time, from the new
	 * contents once the hypervisor is done; a buffer read during the
	 * substitution is why the agent runs this again at the end.
	 */
	filemap_invalidate_lock(mapping);
	ret = vmsubst_invalidate_bdev_locked(mapping, first, last, &c,
					     &ucmd->io.out[0]);
	filemap_invalidate_unlock(mapping);
	if (ret)
		return ret;

	req->pages_cached = c.cached;
	req->pages_dropped = c.dropped;
	req->pages_kept = c.kept;
	return 0;
}
