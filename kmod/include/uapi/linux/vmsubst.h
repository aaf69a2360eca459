/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * vmsubst: the ioctl ABI of /dev/vmsubst, the guest half of live block substitution.
 *
 * This header is the only definition of the ABI. The kernel module and the
 * agent's N-API addon both include it, so struct layouts and _IOWR numbers are
 * computed by the compiler on both sides.
 */
#ifndef _UAPI_LINUX_VMSUBST_H
#define _UAPI_LINUX_VMSUBST_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* Bumped on any incompatible change; compatible growth extends structs instead. */
#define VMSUBST_ABI_VERSION 1

#define VMSUBST_IOC_MAGIC 0xB5

/**
 * DOC: errno contract
 *
 * Every command takes a pointer to a struct whose first member is
 * ``__u32 size`` (the caller's sizeof) followed by ``__u32 flags``.
 * The kernel reads the struct with copy_struct_from_user(), so older and
 * newer callers keep working as structs grow at the tail. ``size``, not the
 * size encoded in the command number, decides: the module matches commands
 * by type, number and direction only, so a caller built against a grown
 * struct still reaches an older module.
 *
 * Lists the caller passes in (inode numbers, names) are an address and a
 * count. Lists the kernel reports are a &struct vmsubst_array: the caller
 * provides the memory and its capacity, the kernel says how many entries it
 * wrote and how many exist, so a short buffer truncates the report instead
 * of failing the command. Every count and capacity has a documented maximum.
 *
 * ===============  ==========================================================
 * ENOTTY           unknown command
 * EPERM            caller lacks CAP_SYS_ADMIN (checked before anything else)
 * EFAULT           the argument pointer, an input list, or an output array
 *                  (``cap`` entries from ``addr``; ``addr`` 0 with ``cap``
 *                  > 0 included) is invalid. Output arrays are checked before
 *                  any work; a fault while writing results afterwards also
 *                  gives EFAULT, and then the work has been done
 * EINVAL           ``size`` is smaller than the first published version of
 *                  the struct (``*_SIZE_VER0``), a reserved field is
 *                  non-zero, ``length`` is 0, flags contradict each other,
 *                  a list is malformed or a count is outside its range (see
 *                  each struct: ``nr_inodes`` 0, ``max_pages``), a
 *                  file-range command's ``fd`` is not a regular file, or
 *                  VMSUBST_PIN_F_RESUME comes with a struct too small to
 *                  hold the cursor (``size`` below
 *                  VMSUBST_PIN_MAPPERS_SIZE_VER1)
 * E2BIG            ``size`` is larger than the kernel knows and the unknown
 *                  tail is not all zero, or ``size`` exceeds the page size;
 *                  or an input list's count or an output array's ``cap``
 *                  exceeds its documented maximum
 * EOPNOTSUPP       ``flags`` has a bit the kernel does not know
 * EBADF            ``fd`` is not an open file descriptor (O_PATH included)
 * EISDIR           a file-range command's ``fd`` is a directory
 * ENOTDIR          VMSUBST_IOC_REVALIDATE_DENTRIES: ``fd`` is not a directory
 * ENOTBLK          the filesystem of ``fd`` is not backed by a block device;
 *                  VMSUBST_IOC_INVALIDATE_BDEV: ``fd`` is not a block device
 * EMEDIUMTYPE      the file is DAX (no page cache); or
 *                  VMSUBST_IOC_REVALIDATE_INODES on a filesystem whose
 *                  inodes cannot be looked up by number (only ext2/3/4)
 * EACCES           a state-changing command on a filesystem mounted
 *                  read-write, or on a block device held by one (or held
 *                  exclusively by anything the module cannot identify as a
 *                  read-only filesystem), without the command's F_FORCE flag
 *                  (VMSUBST_IOC_INVALIDATE_RANGE: without F_FORCE or
 *                  F_UNLESS_DIRTY)
 * EBUSY            VMSUBST_IOC_INVALIDATE_RANGE with
 *                  VMSUBST_INVALIDATE_F_UNLESS_DIRTY: a page of the range is
 *                  dirty or under writeback; nothing was changed (no page
 *                  unmapped, none dropped, no output written)
 * EOVERFLOW        ``offset + length`` overflows or exceeds the largest
 *                  file offset (LLONG_MAX)
 * ENXIO            VMSUBST_IOC_INVALIDATE_BDEV: the range runs past the end
 *                  of the device
 * ENOMEM           no memory for the copies of the lists and reports
 * EINTR            a fatal signal arrived; partial counts are not returned
 * EIO (or other)   VMSUBST_INVALIDATE_F_REFAULT_SYNC: reading the range back
 *                  failed; the invalidation itself was done
 * ===============  ==========================================================
 *
 * File ranges beyond the file's size are clamped to it; a range wholly
 * beyond it succeeds with all counts zero. Output fields are written only on
 * success. Everything from a struct's first output member to the end of the
 * caller's struct is written back, input members inside that region (the
 * ``addr`` and ``cap`` of an array, the VER1 inputs of
 * &struct vmsubst_invalidate_range) with the values the caller passed.
 */

/**
 * struct vmsubst_array - an array the kernel fills, in the caller's memory
 * @addr:  in: user address of the first entry; may be 0 when @cap is 0
 * @cap:   in: entries the memory at @addr holds; at most the documented
 *         maximum of the member (E2BIG above it)
 * @count: out: entries written, min(@cap, @total)
 * @total: out: entries that exist; @total > @count means the report was
 *         truncated (the command itself was carried out in full)
 *
 * Entries are written zero-padded; unused capacity is not touched.
 */
struct vmsubst_array {
	__u64 addr;
	__u32 cap;
	__u32 count;
	__u64 total;
};

/* ---- VMSUBST_IOC_VERSION ------------------------------------------------- */

/**
 * struct vmsubst_version - VMSUBST_IOC_VERSION
 * @size:        in: sizeof(struct vmsubst_version)
 * @flags:       in: must be 0
 * @abi_version: out: VMSUBST_ABI_VERSION of the running module
 * @features:    out: VMSUBST_FEATURE_* bits the module implements
 * @module_version: out: NUL-terminated module version string
 */
struct vmsubst_version {
	__u32 size;
	__u32 flags;
	__u32 abi_version;
	__u32 reserved0;
	__u64 features;
	char module_version[32];
};

#define VMSUBST_VERSION_SIZE_VER0 56 /* sizeof first published struct */

#define VMSUBST_FEATURE_INVALIDATE_RANGE	(1ULL << 0)
/* ZAP/DROP/REFAULT/REPORT_MAPPERS flags and the VER1 tail of the struct. */
#define VMSUBST_FEATURE_INVALIDATE_RANGE_V1	(1ULL << 1)
#define VMSUBST_FEATURE_INVALIDATE_BDEV		(1ULL << 2)
#define VMSUBST_FEATURE_REVALIDATE_INODES	(1ULL << 3)
#define VMSUBST_FEATURE_REVALIDATE_DENTRIES	(1ULL << 4)
#define VMSUBST_FEATURE_QUERY_MAPPERS		(1ULL << 5)
#define VMSUBST_FEATURE_PIN_MAPPERS		(1ULL << 6)
/* VMSUBST_IOC_QUERY_PAGES. */
#define VMSUBST_FEATURE_QUERY_PAGES		(1ULL << 7)
/* VMSUBST_INVALIDATE_F_UNLESS_DIRTY. */
#define VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY	(1ULL << 8)
/* VMSUBST_PIN_F_RESUME and the VER1 cursor of struct vmsubst_pin_mappers. */
#define VMSUBST_FEATURE_PIN_CURSOR		(1ULL << 9)
/*
 * VMSUBST_IOC_REVALIDATE_DENTRIES takes a directory of an overlay mount;
 * VMSUBST_IOC_REVALIDATE_INODES takes VMSUBST_INODES_F_UNHASH_BUSY.
 */
#define VMSUBST_FEATURE_REVALIDATE_REPLACED	(1ULL << 10)
/* VMSUBST_IOC_QUERY_OPENERS. */
#define VMSUBST_FEATURE_QUERY_OPENERS		(1ULL << 11)

/* ---- report records shared by several commands --------------------------- */

/* VMSUBST_PAGE_*: the state of a page range that was not simply dropped. */
/* The pages left the page cache anyway (only with VMSUBST_PAGE_PINNED). */
#define VMSUBST_PAGE_DROPPED	(1U << 0)
#define VMSUBST_PAGE_DIRTY	(1U << 1)	/* not written back yet */
#define VMSUBST_PAGE_WRITEBACK	(1U << 2)	/* being written back */
#define VMSUBST_PAGE_LOCKED	(1U << 3)	/* I/O in flight */
/*
 * Pinned for DMA (pin_user_pages, O_DIRECT from it, RDMA): dropped from the
 * cache by default (VMSUBST_PAGE_DROPPED set), but the pinner keeps
 * using the old copy; kept when only F_DROP is given.
 */
#define VMSUBST_PAGE_PINNED	(1U << 4)
/* Mapped into a process; only F_DROP without F_ZAP leaves such pages. */
#define VMSUBST_PAGE_MAPPED	(1U << 5)
/*
 * Could not be released for no reason above: on a block device, buffers in
 * use (the ext4 superblock, group descriptors, the journal superblock are
 * held for the life of the mount).
 */
#define VMSUBST_PAGE_BUSY	(1U << 6)

/**
 * struct vmsubst_page_range - pages that were not simply dropped
 * @offset:    byte offset of the first page (in the file or on the device)
 * @length:    bytes, a whole number of pages
 * @state:     VMSUBST_PAGE_* bits; adjacent pages with equal bits are merged
 * @reserved0: written as 0
 */
struct vmsubst_page_range {
	__u64 offset;
	__u64 length;
	__u32 state;
	__u32 reserved0;
};

#define VMSUBST_RANGES_MAX 4096	/* cap of any array of vmsubst_page_range */

#define VMSUBST_MAP_EXEC	(1U << 0)	/* VM_EXEC */
#define VMSUBST_MAP_SHARED	(1U << 1)	/* MAP_SHARED (VM_MAYSHARE) */
#define VMSUBST_MAP_LOCKED	(1U << 2)	/* VM_LOCKED: mlock() */
#define VMSUBST_MAP_WRITE	(1U << 3)	/* VM_WRITE */

/**
 * struct vmsubst_mapper - one mapping (VMA) of a file range
 * @pid:    thread-group id of the owner of the address space, in the
 *          caller's pid namespace; 0 if it exited or is not visible there
 * @flags:  VMSUBST_MAP_*
 * @start:  first address of the mapping
 * @end:    address after its last byte
 * @offset: file offset mapped at @start
 * @comm:   the owner's command name, NUL-padded; empty when @pid is 0
 *
 * The owner is mm->owner: the task a shared address space (CLONE_VM without
 * CLONE_THREAD, vfork) is charged to, normally the thread-group leader.
 */
struct vmsubst_mapper {
	__s32 pid;
	__u32 flags;
	__u64 start;
	__u64 end;
	__u64 offset;
	char comm[16];
};

#define VMSUBST_MAPPERS_MAX 4096	/* cap of any array of vmsubst_mapper */

/* ---- VMSUBST_IOC_INVALIDATE_RANGE ---------------------------------------- */

/*
 * Allow invalidation on a read-write mount (the caller takes the risk): pages
 * dirty or under writeback are kept and reported, never waited for or lost,
 * but the caller has said that the host's write and the guest's own writes
 * do not overlap.
 */
#define VMSUBST_INVALIDATE_F_FORCE		(1U << 0)
/*
 * The steps. Neither ZAP nor DROP selects both, the behaviour of every
 * caller before they existed.
 * ZAP:  unmap the range from every process (even_cows = 0: private
 *       copy-on-write copies stay), so mappers fault again;
 * DROP: remove the pages from the page cache. With ZAP, mapped pages are
 *       unmapped and dropped, and locked and writeback pages waited for;
 *       without it, only pages nobody maps, locks or writes back go (the
 *       rest is reported, VMSUBST_PAGE_MAPPED and friends).
 */
#define VMSUBST_INVALIDATE_F_ZAP		(1U << 1)
#define VMSUBST_INVALIDATE_F_DROP		(1U << 2)
/* Afterwards, start readahead of the range (POSIX_FADV_WILLNEED)... */
#define VMSUBST_INVALIDATE_F_REFAULT_ASYNC	(1U << 3)
/* ...or read it back into the page cache before returning. Not both. */
#define VMSUBST_INVALIDATE_F_REFAULT_SYNC	(1U << 4)
/* Fill @mappers with the mappings of the range (before the zap). */
#define VMSUBST_INVALIDATE_F_REPORT_MAPPERS	(1U << 5)
/*
 * Only if no page of the range is dirty or under writeback: checked under
 * the same locks as the invalidation (i_rwsem, invalidate_lock), before any
 * page is unmapped or dropped; if one is, the call fails with EBUSY having
 * changed nothing. Permitted on a read-write mount without F_FORCE: the
 * guest's unwritten data cannot be lost, and nothing the guest wrote can be
 * written back over the host's blocks from this range. With F_FORCE too, the
 * check still applies. Write faults are held off during the call for
 * filesystems whose ->page_mkwrite takes invalidate_lock (ext4, XFS); pages
 * dirtied through a mapping made writable before are dirty already (the
 * kernel write-protects clean shared pages), so the check sees them.
 */
#define VMSUBST_INVALIDATE_F_UNLESS_DIRTY	(1U << 6)
#define VMSUBST_INVALIDATE_F_ALL					\
	(VMSUBST_INVALIDATE_F_FORCE | VMSUBST_INVALIDATE_F_ZAP |	\
	 VMSUBST_INVALIDATE_F_DROP | VMSUBST_INVALIDATE_F_REFAULT_ASYNC |	\
	 VMSUBST_INVALIDATE_F_REFAULT_SYNC |				\
	 VMSUBST_INVALIDATE_F_REPORT_MAPPERS |				\
	 VMSUBST_INVALIDATE_F_UNLESS_DIRTY)

/**
 * struct vmsubst_invalidate_range - VMSUBST_IOC_INVALIDATE_RANGE
 * @size:          in: sizeof(struct vmsubst_invalidate_range); VER0 callers
 *                 get the VER0 behaviour and members
 * @flags:         in: VMSUBST_INVALIDATE_F_*
 * @fd:            in: an open regular file on the substituted filesystem
 * @reserved0:     in: must be 0
 * @offset:        in: first byte of the range (rounded down to a page)
 * @length:        in: bytes in the range, > 0 (rounded up to a page)
 * @pages_cached:  out: pages of the range in the page cache before the call
 * @pages_mapped:  out: of those, pages mapped into some process before the call
 * @pages_dropped: out: pages removed from the page cache
 * @pages_kept:    out: pages DROP tried to remove and could not (dirty,
 *                 buffers in use; without ZAP also mapped, locked,
 *                 writeback, pinned); GUP-pinned pages are removed by
 *                 default and counted as dropped, though their pinner keeps
 *                 the old copy
 * @outcomes:      VER1, out: struct vmsubst_page_range of every page that was
 *                 kept, or dropped while pinned; cap <= VMSUBST_RANGES_MAX
 * @mappers:       VER1, out: with VMSUBST_INVALIDATE_F_REPORT_MAPPERS, struct
 *                 vmsubst_mapper of every mapping of the range, taken before
 *                 the zap; cap <= VMSUBST_MAPPERS_MAX; count and total are 0
 *                 without the flag
 * @pages_refaulted: VER1, out: with F_REFAULT_SYNC, pages read back into the
 *                 page cache; with F_REFAULT_ASYNC, pages readahead was
 *                 started for; else 0
 *
 * Under i_rwsem and filemap_invalidate_lock the module zaps the range's
 * page-table entries and then drops the pages from the page cache, so the
 * next access reads the new blocks from the disk. The refault runs after
 * both locks are released.
 */
struct vmsubst_invalidate_range {
	__u32 size;
	__u32 flags;
	__s32 fd;
	__u32 reserved0;
	__u64 offset;
	__u64 length;
	__u64 pages_cached;
	__u64 pages_mapped;
	__u64 pages_dropped;
	__u64 pages_kept;
	/* VER1 */
	struct vmsubst_array outcomes;
	struct vmsubst_array mappers;
	__u64 pages_refaulted;
};

#define VMSUBST_INVALIDATE_RANGE_SIZE_VER0 64 /* sizeof first published struct */
#define VMSUBST_INVALIDATE_RANGE_SIZE_VER1 120 /* + outcomes, mappers, refault */

/* ---- VMSUBST_IOC_INVALIDATE_BDEV ----------------------------------------- */

/* Allow it while a read-write filesystem (or an unknown holder) has the device. */
#define VMSUBST_BDEV_F_FORCE	(1U << 0)
#define VMSUBST_BDEV_F_ALL	(VMSUBST_BDEV_F_FORCE)

/**
 * struct vmsubst_invalidate_bdev - VMSUBST_IOC_INVALIDATE_BDEV
 * @size:          in: sizeof(struct vmsubst_invalidate_bdev)
 * @flags:         in: VMSUBST_BDEV_F_*
 * @fd:            in: the block device, opened by the caller (the partition
 *                 the filesystem lives on: a whole disk and its partitions
 *                 have separate caches)
 * @reserved0:     in: must be 0
 * @offset:        in: first byte on the device (rounded down to a page)
 * @length:        in: bytes, > 0 (rounded up to a page); the range must lie
 *                 within the device (ENXIO)
 * @kept:          out: struct vmsubst_page_range of the pages that stayed,
 *                 mostly VMSUBST_PAGE_BUSY: buffers the filesystem holds for
 *                 the life of the mount; cap <= VMSUBST_RANGES_MAX
 * @pages_cached:  out: pages of the range in the buffer cache before the call
 * @pages_dropped: out: pages removed
 * @pages_kept:    out: pages that stayed
 *
 * Drops the block device's page cache, where filesystems keep metadata
 * (ext4: inode tables, directory and extent blocks, bitmaps), after
 * invalidate_bh_lrus() released the per-CPU buffer-head references, under
 * filemap_invalidate_lock. Allowed whether or not a filesystem is mounted on
 * the device; a read-write one needs VMSUBST_BDEV_F_FORCE.
 */
struct vmsubst_invalidate_bdev {
	__u32 size;
	__u32 flags;
	__s32 fd;
	__u32 reserved0;
	__u64 offset;
	__u64 length;
	struct vmsubst_array kept;
	__u64 pages_cached;
	__u64 pages_dropped;
	__u64 pages_kept;
};

#define VMSUBST_INVALIDATE_BDEV_SIZE_VER0 80

/* ---- VMSUBST_IOC_REVALIDATE_INODES --------------------------------------- */

/* Allow it on a read-write mount. */
#define VMSUBST_INODES_F_FORCE	(1U << 0)
/*
 * Take a non-directory inode that stays in use out of the inode hash: its
 * users keep it, the next lookup of the number reads the inode table again.
 * For numbers the new image gives to another file (the old file was
 * replaced and its number reused): without it, a lookup of the new name
 * would find the old in-core inode. VMSUBST_FEATURE_REVALIDATE_REPLACED.
 */
#define VMSUBST_INODES_F_UNHASH_BUSY	(1U << 1)
#define VMSUBST_INODES_F_ALL	(VMSUBST_INODES_F_FORCE | VMSUBST_INODES_F_UNHASH_BUSY)

#define VMSUBST_INODES_MAX 1024	/* cap of @nr_inodes and of @in_use */

/* VMSUBST_INODE_*: why an inode is in use. */
/* A dentry of it is in use: an open file, a cwd, an exec'd program, a mount. */
#define VMSUBST_INODE_OPEN	(1U << 0)
#define VMSUBST_INODE_MAPPED	(1U << 1)	/* mmap()ed by some process */
#define VMSUBST_INODE_WRITERS	(1U << 2)	/* open for writing */
#define VMSUBST_INODE_DIRTY	(1U << 3)	/* inode or pages not written back */
/* A directory whose dentry has cached children (revalidate dentries first). */
#define VMSUBST_INODE_CHILDREN	(1U << 4)
#define VMSUBST_INODE_ROOT	(1U << 5)	/* the filesystem root: never evicted */
#define VMSUBST_INODE_CALLER	(1U << 6)	/* the inode of @fd: never evicted */
/* Referenced by the kernel for none of the reasons above (quota, journal). */
#define VMSUBST_INODE_REFERENCED (1U << 7)

/**
 * struct vmsubst_inode_status - an inode that could not be evicted
 * @ino:     the inode number, as passed in
 * @reasons: VMSUBST_INODE_*
 * @refs:    references held apart from the module's own
 */
struct vmsubst_inode_status {
	__u64 ino;
	__u32 reasons;
	__u32 refs;
};

/**
 * struct vmsubst_revalidate_inodes - VMSUBST_IOC_REVALIDATE_INODES
 * @size:       in: sizeof(struct vmsubst_revalidate_inodes)
 * @flags:      in: VMSUBST_INODES_F_*
 * @fd:         in: any open file on the mounted filesystem (ext2/3/4)
 * @nr_inodes:  in: entries at @inodes, 1..VMSUBST_INODES_MAX
 * @inodes:     in: user address of __u64 inode numbers
 * @in_use:     out: struct vmsubst_inode_status of every cached inode that
 *              stays because it is in use; cap <= VMSUBST_INODES_MAX
 * @evicted:    out: inodes evicted, so that the next access reads them from
 *              the disk again (the in-core copy, ext4's extent cache and
 *              block map included)
 * @not_cached: out: numbers with no inode in the cache: nothing to drop
 *
 * For each number: the unused dentries of a cached inode are pruned
 * (d_prune_aliases), it is marked I_DONTCACHE so the last reference evicts
 * it, and the module's reference is put. An inode still in use after the
 * prune is reported instead of evicted; it is evicted when its last user
 * lets go. The filesystem root and @fd's own inode are reported and left
 * alone. An inode read while the call runs may be read from stale buffers:
 * drop the block device's buffers first (VMSUBST_IOC_INVALIDATE_BDEV).
 */
struct vmsubst_revalidate_inodes {
	__u32 size;
	__u32 flags;
	__s32 fd;
	__u32 nr_inodes;
	__u64 inodes;
	struct vmsubst_array in_use;
	__u32 evicted;
	__u32 not_cached;
};

#define VMSUBST_REVALIDATE_INODES_SIZE_VER0 56

/* ---- VMSUBST_IOC_REVALIDATE_DENTRIES ------------------------------------- */

/* Allow it on a read-write mount. */
#define VMSUBST_DENTRIES_F_FORCE	(1U << 0)
/*
 * Unhash named non-directory dentries even while in use: new lookups of the
 * name read the directory again, current users keep the old inode (as after
 * a rename over it). Needs names. Busy directories always stay.
 */
#define VMSUBST_DENTRIES_F_UNHASH_BUSY	(1U << 1)
#define VMSUBST_DENTRIES_F_ALL						\
	(VMSUBST_DENTRIES_F_FORCE | VMSUBST_DENTRIES_F_UNHASH_BUSY)

#define VMSUBST_NAMES_MAX	1024		/* cap of @nr_names */
#define VMSUBST_NAMES_SIZE_MAX	(256 * 1024)	/* cap of @names_size */

/**
 * struct vmsubst_revalidate_dentries - VMSUBST_IOC_REVALIDATE_DENTRIES
 * @size:        in: sizeof(struct vmsubst_revalidate_dentries)
 * @flags:       in: VMSUBST_DENTRIES_F_*
 * @fd:          in: an open directory on the mounted filesystem, or on an
 *               overlay mount (VMSUBST_FEATURE_REVALIDATE_REPLACED): there
 *               the overlay's own dentries of those names go, F_FORCE is not
 *               needed (its upper layer is the guest's, and is not replaced)
 * @nr_names:    in: names at @names, 0..VMSUBST_NAMES_MAX; 0 drops every
 *               unused child of the directory, negative ones included, and
 *               leaves all counts 0
 * @names:       in: user address of @nr_names NUL-terminated names, back to
 *               back, exactly @names_size bytes; each 1..255 bytes, no '/',
 *               not "." or ".." (EINVAL otherwise, before anything is done)
 * @names_size:  in: bytes at @names, <= VMSUBST_NAMES_SIZE_MAX; 0 without names
 * @reserved0:   in: must be 0
 * @dropped:     out: names unhashed, negative dentries included: the next
 *               lookup reads the directory from the disk
 * @not_cached:  out: names with no dentry in the cache
 * @busy:        out: names in use and left in place
 * @mountpoints: out: names that are mount points or have mounts below, never
 *               touched
 *
 * Each name lands in exactly one of the four counts. Unused child dentries
 * of a named directory are dropped first. A dentry is unhashed only while
 * nobody else holds it (or, with F_UNHASH_BUSY, if it is not a directory),
 * and never with a mount on or below it, so no mount is ever detached.
 */
struct vmsubst_revalidate_dentries {
	__u32 size;
	__u32 flags;
	__s32 fd;
	__u32 nr_names;
	__u64 names;
	__u32 names_size;
	__u32 reserved0;
	__u32 dropped;
	__u32 not_cached;
	__u32 busy;
	__u32 mountpoints;
};

#define VMSUBST_REVALIDATE_DENTRIES_SIZE_VER0 48

/* ---- VMSUBST_IOC_QUERY_MAPPERS ------------------------------------------- */

/**
 * struct vmsubst_query_mappers - VMSUBST_IOC_QUERY_MAPPERS
 * @size:      in: sizeof(struct vmsubst_query_mappers)
 * @flags:     in: must be 0
 * @fd:        in: an open regular file
 * @reserved0: in: must be 0
 * @offset:    in: first byte of the range
 * @length:    in: bytes, > 0
 * @mappers:   out: struct vmsubst_mapper of every mapping (VMA) of any page
 *             of the range, clamped to the file's size; cap <=
 *             VMSUBST_MAPPERS_MAX
 *
 * A snapshot: processes map and unmap concurrently.
 */
struct vmsubst_query_mappers {
	__u32 size;
	__u32 flags;
	__s32 fd;
	__u32 reserved0;
	__u64 offset;
	__u64 length;
	struct vmsubst_array mappers;
};

#define VMSUBST_QUERY_MAPPERS_SIZE_VER0 56

/* ---- VMSUBST_IOC_QUERY_PAGES --------------------------------------------- */

/**
 * struct vmsubst_query_pages - VMSUBST_IOC_QUERY_PAGES
 * @size:            in: sizeof(struct vmsubst_query_pages)
 * @flags:           in: must be 0
 * @fd:              in: an open regular file
 * @reserved0:       in: must be 0
 * @offset:          in: first byte of the range (rounded down to a page)
 * @length:          in: bytes, > 0 (rounded up to a page)
 * @ranges:          out: struct vmsubst_page_range of the pages that are
 *                   dirty or under writeback (VMSUBST_PAGE_DIRTY,
 *                   VMSUBST_PAGE_WRITEBACK; adjacent pages with equal bits
 *                   merged); cap <= VMSUBST_RANGES_MAX
 * @pages_cached:    out: pages of the range in the page cache
 * @pages_mapped:    out: of those, pages mapped into some process
 * @pages_dirty:     out: pages written and not yet written back (write(2)
 *                   without fsync, or a shared writable mapping)
 * @pages_writeback: out: pages being written back; a page redirtied during
 *                   its writeback counts in both
 *
 * Asks, changes nothing: no lock of the file is taken and no page is
 * touched beyond a reference held while its state is read. A snapshot,
 * like QUERY_MAPPERS: the guest may dirty a page right after the call. Before
 * the hypervisor writes, a non-zero @pages_dirty or @pages_writeback means
 * the guest holds data for this range that is not on the disk yet, and a
 * substitution there would lose it or be overwritten by it; to act on a
 * range only while it is clean, under the file's locks, invalidate it with
 * VMSUBST_INVALIDATE_F_UNLESS_DIRTY. Allowed on any mount; needs no F_FORCE.
 */
struct vmsubst_query_pages {
	__u32 size;
	__u32 flags;
	__s32 fd;
	__u32 reserved0;
	__u64 offset;
	__u64 length;
	struct vmsubst_array ranges;
	__u64 pages_cached;
	__u64 pages_mapped;
	__u64 pages_dirty;
	__u64 pages_writeback;
};

#define VMSUBST_QUERY_PAGES_SIZE_VER0 88

/* ---- VMSUBST_IOC_PIN_MAPPERS --------------------------------------------- */

#define VMSUBST_PIN_PAGES_MAX	(1U << 20)	/* cap of @max_pages: 4 GiB of copies */
#define VMSUBST_PIN_RESULTS_MAX	4096		/* cap of @pinned */
#define VMSUBST_PIN_VMAS_MAX	65536		/* private mappings visited per call */

/* VMSUBST_PIN_R_*: struct vmsubst_pin_result flags. */
#define VMSUBST_PIN_R_EXITED	(1U << 0)	/* the address space went away */
#define VMSUBST_PIN_R_PARTIAL	(1U << 1)	/* bytes_failed > 0, or budget hit */

/**
 * struct vmsubst_pin_result - what pinning did to one address space
 * @pid:           as in &struct vmsubst_mapper
 * @flags:         VMSUBST_PIN_R_*
 * @bytes_copied:  private copies this call made
 * @bytes_private: already private before the call (written to, or pinned
 *                 by an earlier call): nothing to do
 * @bytes_failed:  could not be pinned: the page could not be faulted in
 *                 (beyond the end of the file, memory, a guard mapping), or
 *                 the mapping changed under the call
 * @comm:          as in &struct vmsubst_mapper
 */
struct vmsubst_pin_result {
	__s32 pid;
	__u32 flags;
	__u64 bytes_copied;
	__u64 bytes_private;
	__u64 bytes_failed;
	char comm[16];
};

/* VMSUBST_PIN_S_*: struct vmsubst_pin_mappers status. */
/* @max_pages copies were made and work remains: call again. */
#define VMSUBST_PIN_S_BUDGET	(1U << 0)
/*
 * Some private mappings were not visited: more than VMSUBST_PIN_VMAS_MAX, or
 * mapped while the call ran. Call again, with VMSUBST_PIN_F_RESUME and the
 * cursor this call returned, to continue after them (without it, a call
 * starts over from the first mapping).
 */
#define VMSUBST_PIN_S_TRUNCATED	(1U << 1)

/*
 * VMSUBST_PIN_F_*: struct vmsubst_pin_mappers flags.
 * RESUME: visit only the private mappings after @cursor_mm/@cursor_addr, as
 * the previous call returned them; (0, 0) is before the first, so a loop can
 * pass F_RESUME from its first call on. Needs the VER1 struct (EINVAL
 * otherwise).
 */
#define VMSUBST_PIN_F_RESUME	(1U << 0)
#define VMSUBST_PIN_F_ALL	(VMSUBST_PIN_F_RESUME)

/**
 * struct vmsubst_pin_mappers - VMSUBST_IOC_PIN_MAPPERS
 * @size:          in: sizeof(struct vmsubst_pin_mappers); VER0 callers
 *                 cannot resume and always start at the first mapping
 * @flags:         in: VMSUBST_PIN_F_*
 * @fd:            in: an open regular file
 * @max_pages:     in: most pages to copy in this call,
 *                 1..VMSUBST_PIN_PAGES_MAX (EINVAL otherwise)
 * @offset:        in: first byte of the range
 * @length:        in: bytes, > 0
 * @pinned:        out: one struct vmsubst_pin_result per address space with a
 *                 private mapping of the range; cap <= VMSUBST_PIN_RESULTS_MAX
 * @unpinned:      out: struct vmsubst_mapper of the shared mappings of the
 *                 range, which cannot get private copies; cap <=
 *                 VMSUBST_MAPPERS_MAX
 * @bytes_copied:  out: sum over @pinned
 * @bytes_private: out: sum over @pinned
 * @bytes_failed:  out: sum over @pinned
 * @status:        out: VMSUBST_PIN_S_*
 * @mappings:      out: private mappings this call finished (the cursor moved
 *                 past them); a mapping the budget cut short is not counted
 *                 and is visited again by the next call
 * @cursor_mm:     VER1, in: with VMSUBST_PIN_F_RESUME, where to continue;
 *                 out: the position of the last mapping finished, or the
 *                 value passed in (0 without F_RESUME) when none was. An
 *                 opaque key of an address space, stable while it lives,
 *                 not a kernel address
 * @cursor_addr:   VER1, in/out: with @cursor_mm, the first address of the
 *                 part of that mapping that maps the range
 *
 * Gives every process that maps the range privately (MAP_PRIVATE: program
 * text and data, shared libraries) its own copy of each page of it, through
 * the kernel's write-fault path as a ptrace write does (FOLL_WRITE |
 * FOLL_FORCE, nothing written: the copy has the file's content). After the
 * file's blocks change and its page cache is invalidated, those processes
 * keep running on the old image while new execs read the new one. Costs the
 * copied memory, charged to each process. Pages already private are only
 * counted, so calling again after VMSUBST_PIN_S_BUDGET continues cheaply.
 * Needs no F_FORCE: nothing on the filesystem changes.
 *
 * Order and resumption: a call visits the private mappings of the range in
 * the order of (@cursor_mm, @cursor_addr), at most VMSUBST_PIN_VMAS_MAX of
 * them, the first ones after the cursor with VMSUBST_PIN_F_RESUME. Calling
 * with F_RESUME and the returned cursor until neither VMSUBST_PIN_S_BUDGET
 * nor VMSUBST_PIN_S_TRUNCATED is reported visits every private mapping that
 * existed from the first call to the last exactly once; the sum of
 * @mappings over the calls counts them. Under concurrent map and unmap: a
 * mapping removed before its turn is not visited (nothing to pin); one
 * added during the sequence is visited if it sorts after the cursor of the
 * call that finds it, else only by a new sequence (without F_RESUME), as
 * one mapped after the last call is; a mapping split or moved (mprotect,
 * mremap) is visited by its new position. @unpinned reports the shared
 * mappings on every call.
 */
struct vmsubst_pin_mappers {
	__u32 size;
	__u32 flags;
	__s32 fd;
	__u32 max_pages;
	__u64 offset;
	__u64 length;
	struct vmsubst_array pinned;
	struct vmsubst_array unpinned;
	__u64 bytes_copied;
	__u64 bytes_private;
	__u64 bytes_failed;
	__u32 status;
	__u32 mappings;
	/* VER1 */
	__u64 cursor_mm;
	__u64 cursor_addr;
};

#define VMSUBST_PIN_MAPPERS_SIZE_VER0 112
#define VMSUBST_PIN_MAPPERS_SIZE_VER1 128 /* + cursor */

/* ---- VMSUBST_IOC_QUERY_OPENERS ------------------------------------------- */

#define VMSUBST_OPENERS_FILES_MAX 1024	/* cap of nr_fds */
#define VMSUBST_OPENERS_MAX 65536	/* cap of any array of vmsubst_opener */

/**
 * struct vmsubst_opener - a descriptor of another process that refers to one
 * of the files
 * @pid:     thread-group id of the process, in the caller's pid namespace
 * @file:    index in the caller's list of the (first) fd of that file
 * @fd:      the descriptor's number in that process
 * @f_flags: the open file's flags (O_ACCMODE, O_APPEND, ...), as
 *           /proc/PID/fdinfo shows them
 * @pos:     the open file's position: where its next read(2) starts
 * @comm:    the name of the task whose table holds the descriptor
 */
struct vmsubst_opener {
	__s32 pid;
	__u32 file;
	__s32 fd;
	__u32 f_flags;
	__u64 pos;
	char comm[16];
};

/**
 * struct vmsubst_query_openers - VMSUBST_IOC_QUERY_OPENERS
 * @size:    in: sizeof(struct vmsubst_query_openers)
 * @flags:   in: must be 0
 * @fds:     in: user address of @nr_fds __s32, each an open regular file
 * @nr_fds:  in: 1..VMSUBST_OPENERS_FILES_MAX (EINVAL for 0, E2BIG above)
 * @tasks:   out: descriptor tables read (one per thread group, and one per
 *           thread that unshared its table)
 * @openers: out: struct vmsubst_opener of every descriptor, of any process
 *           but the caller's, whose open file is one of the files' inodes;
 *           cap <= VMSUBST_OPENERS_MAX
 *
 * Who holds a file open: the question /proc/PID/fd answers one process and
 * one descriptor at a time, asked in one call for many files. One pass over
 * the tasks of the caller's pid namespace, in pid order, each descriptor
 * table read under its task's lock; between tasks nothing is held. The
 * caller's own thread group is not reported (it holds the fds passed in).
 * A file opened through an overlay mount is the overlay's inode, not the
 * lower file's: pass the overlay's file to find those. A snapshot: a
 * descriptor opened or closed during the pass may or may not be reported.
 * Changes nothing; needs no F_FORCE.
 */
struct vmsubst_query_openers {
	__u32 size;
	__u32 flags;
	__u64 fds;
	__u32 nr_fds;
	__u32 tasks;
	struct vmsubst_array openers;
};

#define VMSUBST_QUERY_OPENERS_SIZE_VER0 48

/* ---- command numbers ----------------------------------------------------- */

#define VMSUBST_IOC_VERSION \
	_IOWR(VMSUBST_IOC_MAGIC, 0x00, struct vmsubst_version)
/*
 * Encodes the VER0 size, so the number stays what it was when the struct
 * grew; the module ignores the size bits of every command anyway.
 */
#define VMSUBST_IOC_INVALIDATE_RANGE					\
	_IOC(_IOC_READ | _IOC_WRITE, VMSUBST_IOC_MAGIC, 0x01,		\
	     VMSUBST_INVALIDATE_RANGE_SIZE_VER0)
#define VMSUBST_IOC_INVALIDATE_BDEV \
	_IOWR(VMSUBST_IOC_MAGIC, 0x02, struct vmsubst_invalidate_bdev)
#define VMSUBST_IOC_REVALIDATE_INODES \
	_IOWR(VMSUBST_IOC_MAGIC, 0x03, struct vmsubst_revalidate_inodes)
#define VMSUBST_IOC_REVALIDATE_DENTRIES \
	_IOWR(VMSUBST_IOC_MAGIC, 0x04, struct vmsubst_revalidate_dentries)
#define VMSUBST_IOC_QUERY_MAPPERS \
	_IOWR(VMSUBST_IOC_MAGIC, 0x05, struct vmsubst_query_mappers)
/* Encodes the VER0 size, as VMSUBST_IOC_INVALIDATE_RANGE does. */
#define VMSUBST_IOC_PIN_MAPPERS						\
	_IOC(_IOC_READ | _IOC_WRITE, VMSUBST_IOC_MAGIC, 0x06,		\
	     VMSUBST_PIN_MAPPERS_SIZE_VER0)
#define VMSUBST_IOC_QUERY_PAGES \
	_IOWR(VMSUBST_IOC_MAGIC, 0x07, struct vmsubst_query_pages)
#define VMSUBST_IOC_QUERY_OPENERS \
	_IOWR(VMSUBST_IOC_MAGIC, 0x08, struct vmsubst_query_openers)

#endif /* _UAPI_LINUX_VMSUBST_H */
