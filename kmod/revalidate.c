// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_REVALIDATE_INODES and VMSUBST_IOC_REVALIDATE_DENTRIES: drop
 * the in-core copies of metadata the hypervisor replaced, so that the next
 * lookup or access reads it from the disk again.
 *
 * Both work on live, shared VFS objects through their own reference counts
 * and locks, and never force anything: an object in use stays, and is
 * reported. Both hold only a reference to the caller's file between entries.
 */
#include <linux/dcache.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/limits.h>
#include <linux/magic.h>
#include <linux/mount.h>
#include <linux/namei.h>
#include <linux/pagemap.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/spinlock.h>
#include <linux/string.h>

#include "compat.h"
#include "vmsubst.h"

/* A filesystem whose metadata the hypervisor may replace, if @force allows. */
static int vmsubst_check_sb(struct super_block *sb, bool force)
{
	if (!sb->s_bdev)
		return -ENOTBLK;
	/*
	 * On a writable filesystem the in-core copy can be newer than the
	 * disk; dropping it is the caller's decision.
	 */
	if (!sb_rdonly(sb) && !force)
		return -EACCES;
	return 0;
}

/* ---- inodes ---------------------------------------------------------------- */

/*
 * Why @inode is still referenced after its unused dentries were pruned. A
 * remaining alias is held by someone: an open file, a cwd, an mm's exe_file,
 * a mount, or, for a directory, its cached children.
 */
static u32 vmsubst_inode_reasons(struct inode *inode)
{
	struct dentry *alias;
	u32 reasons = 0;

	if (mapping_mapped(inode->i_mapping))
		reasons |= VMSUBST_INODE_MAPPED;
	if (atomic_read(&inode->i_writecount) > 0)
		reasons |= VMSUBST_INODE_WRITERS;
	spin_lock(&inode->i_lock);
	if (inode->i_state & I_DIRTY_ALL)
		reasons |= VMSUBST_INODE_DIRTY;
	spin_unlock(&inode->i_lock);
	if (mapping_tagged(inode->i_mapping, PAGECACHE_TAG_DIRTY))
		reasons |= VMSUBST_INODE_DIRTY;

	alias = d_find_any_alias(inode);
	if (alias) {
		spin_lock(&alias->d_lock);
		if (d_is_dir(alias) && vmsubst_dentry_has_children(alias))
			reasons |= VMSUBST_INODE_CHILDREN;
		else
			reasons |= VMSUBST_INODE_OPEN;
		spin_unlock(&alias->d_lock);
		dput(alias);
	}
	return reasons ?: VMSUBST_INODE_REFERENCED;
}

struct vmsubst_inode_counts {
	u32 evicted;
	u32 not_cached;
};

static void vmsubst_revalidate_inode(struct super_block *sb, u64 ino,
				     struct inode *caller, bool unhash_busy,
				     struct vmsubst_inode_counts *c,
				     struct vmsubst_out *in_use)
{
	struct vmsubst_inode_status *st;
	struct inode *inode = NULL;
	u32 reasons = 0;
	int refs;

	/* A number that does not fit ino_t (32-bit kernels) names nothing. */
	if (ino == (unsigned long)ino)
		inode = ilookup(sb, ino);
	if (!inode) {
		c->not_cached++;
		return;
	}

	if (inode == d_inode(sb->s_root)) {
		reasons = VMSUBST_INODE_ROOT;
	} else if (inode == caller) {
		reasons = VMSUBST_INODE_CALLER;
	} else {
		/* Each unused dentry holds a reference; drop those first. */
		d_prune_aliases(inode);
		if (atomic_read(&inode->i_count) > 1)
			reasons = vmsubst_inode_reasons(inode);
		/*
		 * Used or not, the last iput() evicts it rather than moving
		 * it to the LRU, writing it back first if it is dirty
		 * (iput_final()); its dentries are killed at their last dput().
		 */
		d_mark_dontcache(inode);
	}

	/*
	 * Its users keep it (an unhashed inode is evicted at its last iput(),
	 * generic_drop_inode()); iget of the number reads it anew.
	 */
	if (reasons && unhash_busy && !S_ISDIR(inode->i_mode) &&
	    reasons != VMSUBST_INODE_ROOT && reasons != VMSUBST_INODE_CALLER)
		remove_inode_hash(inode);

	if (reasons) {
		/* Not counting the reference ilookup() gave us. */
		refs = atomic_read(&inode->i_count) - 1;
		st = vmsubst_out_next(in_use);
		if (st) {
			st->ino = ino;
			st->reasons = reasons;
			st->refs = max(refs, 0);
		}
	} else {
		c->evicted++;
	}
	iput(inode);
}

int vmsubst_cmd_revalidate_inodes_check(const struct vmsubst_ucmd *ucmd)
{
	return ucmd->cmd.revalidate_inodes.nr_inodes ? 0 : -EINVAL;
}

int vmsubst_cmd_revalidate_inodes(struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_revalidate_inodes *req = &ucmd->cmd.revalidate_inodes;
	struct vmsubst_inode_counts c = {};
	struct file *file = ucmd->file;
	const u64 *inos = ucmd->io.in;
	struct super_block *sb;
	u32 i;
	int ret;

	sb = file_inode(file)->i_sb;
	ret = vmsubst_check_sb(sb, req->flags & VMSUBST_INODES_F_FORCE);
	/*
	 * ilookup() finds inodes by number only where the filesystem hashes
	 * them by number (iget_locked()); ext2/3/4 do. Elsewhere every number
	 * would read as "not cached", a silent lie.
	 */
	if (!ret && sb->s_magic != EXT4_SUPER_MAGIC)
		ret = -EMEDIUMTYPE;

	/* The open file pins the superblock and its root. */
	for (i = 0; !ret && i < req->nr_inodes; i++) {
		vmsubst_revalidate_inode(sb, inos[i], file_inode(file),
					 req->flags &
						 VMSUBST_INODES_F_UNHASH_BUSY,
					 &c, &ucmd->io.out[0]);
		if (fatal_signal_pending(current))
			ret = -EINTR;
		cond_resched();
	}
	if (ret)
		return ret;

	req->evicted = c.evicted;
	req->not_cached = c.not_cached;
	return 0;
}

/* ---- dentries ------------------------------------------------------------- */

/*
 * Where names may be revalidated: a filesystem vmsubst_check_sb() accepts,
 * or an overlay mount. An overlay's dentry holds its lower dentry and inode
 * (ovl_entry, ovl_inode), and an ext4 lower never asks to be revalidated
 * (no DCACHE_OP_REVALIDATE): the overlay's dentry of a replaced lower file
 * would name the old inode for good and keep the lower dentry busy. The
 * caller unhashes those first, as memory pressure or a failed
 * ovl_dentry_revalidate() would; the next lookup goes down to the lower
 * layer again, and an upper (copied-up) entry still wins there. Nothing of
 * the upper layer is touched, so a writable overlay needs no force.
 */
static int vmsubst_check_dentries_sb(struct super_block *sb, bool force)
{
	if (sb->s_magic == OVERLAYFS_SUPER_MAGIC)
		return 0;
	return vmsubst_check_sb(sb, force);
}

static bool vmsubst_name_ok(const char *name, size_t len)
{
	if (!len || len > NAME_MAX || memchr(name, '/', len))
		return false;
	return !(name[0] == '.' && (len == 1 || (len == 2 && name[1] == '.')));
}

/* @nr NUL-terminated valid names filling exactly @size bytes. */
static int vmsubst_check_names(const char *names, size_t size, u32 nr)
{
	const char *p = names, *end = names + size;
	size_t len;
	u32 i;

	if (!nr)
		return size ? -EINVAL : 0;
	for (i = 0; i < nr; i++) {
		len = strnlen(p, end - p);
		if (len == end - p || !vmsubst_name_ok(p, len))
			return -EINVAL;
		p += len + 1;
	}
	return p == end ? 0 : -EINVAL;
}

struct vmsubst_dentry_counts {
	u32 dropped;
	u32 not_cached;
	u32 busy;
	u32 mountpoints;
};

/*
 * Unhashes @dentry if nobody but the caller holds it, or @even_busy; never
 * with a mount on it. A dentry whose only reference is ours has no children
 * (each holds one on its parent) and so nothing mounted below it. That is
 * why this is __d_drop() and not d_invalidate(): d_invalidate() detaches
 * the mounts it finds below, in every namespace, where path_has_submounts()
 * sees only the caller's mount.
 */
static bool vmsubst_try_unhash(struct dentry *dentry, bool even_busy)
{
	bool done = false;

	spin_lock(&dentry->d_lock);
	if (!d_mountpoint(dentry) &&
	    (dentry->d_lockref.count == 1 || even_busy)) {
		__d_drop(dentry);
		done = true;
	}
	spin_unlock(&dentry->d_lock);
	return done;
}

static void vmsubst_revalidate_name(const struct path *dir, const char *name,
				    size_t len, bool unhash_busy,
				    struct vmsubst_dentry_counts *c)
{
	struct qstr q = QSTR_INIT(name, len);
	struct dentry *dentry;
	struct path path;

	dentry = d_hash_and_lookup(dir->dentry, &q);
	/* An error is a name the filesystem's d_hash refuses: not cached. */
	if (IS_ERR_OR_NULL(dentry)) {
		c->not_cached++;
		return;
	}
	if (d_mountpoint(dentry)) {
		c->mountpoints++;
		goto out;
	}
	/* Unused children first, so that an unused directory can go too. */
	if (d_is_dir(dentry))
		shrink_dcache_parent(dentry);
	if (vmsubst_try_unhash(dentry, unhash_busy && !d_is_dir(dentry))) {
		/* Our dput() below frees it, and its inode reference. */
		c->dropped++;
		goto out;
	}
	path.mnt = dir->mnt;
	path.dentry = dentry;
	if (d_mountpoint(dentry) ||
	    (d_is_dir(dentry) && path_has_submounts(&path)))
		c->mountpoints++;
	else
		c->busy++;
out:
	dput(dentry);
}

int vmsubst_cmd_revalidate_dentries_check(const struct vmsubst_ucmd *ucmd)
{
	const struct vmsubst_revalidate_dentries *req =
		&ucmd->cmd.revalidate_dentries;

	if (req->nr_names > VMSUBST_NAMES_MAX)
		return -E2BIG;
	if (!req->nr_names &&
	    (req->names_size || (req->flags & VMSUBST_DENTRIES_F_UNHASH_BUSY)))
		return -EINVAL;
	/* All names are checked before any is acted on. */
	return vmsubst_check_names(ucmd->io.in, ucmd->io.in_bytes,
				   req->nr_names);
}

int vmsubst_cmd_revalidate_dentries(struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_revalidate_dentries *req =
		&ucmd->cmd.revalidate_dentries;
	bool unhash_busy = req->flags & VMSUBST_DENTRIES_F_UNHASH_BUSY;
	struct vmsubst_dentry_counts c = {};
	struct file *file = ucmd->file;
	const char *name = ucmd->io.in;
	size_t len;
	u32 i;
	int ret;

	ret = vmsubst_check_dentries_sb(file_inode(file)->i_sb,
					req->flags & VMSUBST_DENTRIES_F_FORCE);
	if (ret)
		return ret;

	/* Kills only unused dentries, which mounts never are. */
	if (!req->nr_names)
		shrink_dcache_parent(file->f_path.dentry);

	for (i = 0; i < req->nr_names; i++) {
		len = strlen(name);
		vmsubst_revalidate_name(&file->f_path, name, len, unhash_busy,
					&c);
		name += len + 1;
		if (fatal_signal_pending(current))
			return -EINTR;
		cond_resched();
	}

	req->dropped = c.dropped;
	req->not_cached = c.not_cached;
	req->busy = c.busy;
	req->mountpoints = c.mountpoints;
	return 0;
}
