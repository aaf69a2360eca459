/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmsubst: the kernel interfaces that changed after 6.1, in one place.
 * kmod/README.md has the table; every guard here is built against the
 * Debian 6.1 and 6.12 headers by `make check-flavours`.
 */
#ifndef VMSUBST_COMPAT_H
#define VMSUBST_COMPAT_H

#include <linux/blkdev.h>
#include <linux/dcache.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/rcupdate.h>
#include <linux/version.h>

/* 6.5 dropped the vmas argument. */
static inline long vmsubst_gup_remote(struct mm_struct *mm, unsigned long start,
				      unsigned long nr_pages,
				      unsigned int gup_flags,
				      struct page **pages)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
	return get_user_pages_remote(mm, start, nr_pages, gup_flags, pages,
				     NULL);
#else
	return get_user_pages_remote(mm, start, nr_pages, gup_flags, pages,
				     NULL, NULL);
#endif
}

/*
 * The block device behind a block-device file. The file's f_mapping is the
 * device's page cache on every version (bd_inode->i_mapping before 6.10,
 * bd_mapping after), and its host is the bdev inode, so neither field is
 * needed.
 */
static inline struct block_device *vmsubst_file_bdev(struct file *file)
{
	return I_BDEV(file->f_mapping->host);
}

/*
 * Whether something that may write to @bdev holds it: a filesystem mounted
 * read-write, or an exclusive holder the module cannot identify as a
 * read-only filesystem (a partition's mount holding the whole disk, md, dm,
 * btrfs). An advisory snapshot: a remount can change it a moment later.
 */
static inline bool vmsubst_bdev_held_writable(struct block_device *bdev)
{
	bool writable;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
	/* Since 6.6 a mounted filesystem's holder is its super_block. */
	mutex_lock(&bdev->bd_holder_lock);
	if (bdev->bd_holder_ops == &fs_holder_ops)
		writable = !sb_rdonly((struct super_block *)bdev->bd_holder);
	else
		writable = bdev->bd_holder != NULL;
	mutex_unlock(&bdev->bd_holder_lock);
#else
	struct super_block *sb;

	/*
	 * mount_bdev() and get_tree_bdev() set bd_super; super_blocks are
	 * freed after an RCU grace period, so reading one that is being
	 * unmounted is safe (mark_buffer_write_io_error() does the same).
	 */
	rcu_read_lock();
	sb = READ_ONCE(bdev->bd_super);
	if (sb)
		writable = !sb_rdonly(sb);
	else
		writable = READ_ONCE(bdev->bd_holder) != NULL;
	rcu_read_unlock();
#endif
	return writable;
}

/* 6.8 turned the list of a dentry's children into an hlist. */
static inline bool vmsubst_dentry_has_children(struct dentry *dentry)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 8, 0)
	return !hlist_empty(&dentry->d_children);
#else
	return !list_empty(&dentry->d_subdirs);
#endif
}

#endif /* VMSUBST_COMPAT_H */
