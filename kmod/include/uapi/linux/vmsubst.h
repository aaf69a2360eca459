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
 * ===============  ==========================================================
 * ENOTTY           unknown command
 * EPERM            caller lacks CAP_SYS_ADMIN (checked before anything else)
 * EFAULT           the argument pointer (or a pointer inside it) is invalid
 * EINVAL           ``size`` is smaller than the first published version of
 *                  the struct (``*_SIZE_VER0``), a reserved field is
 *                  non-zero, or ``length`` is 0
 * E2BIG            ``size`` is larger than the kernel knows and the unknown
 *                  tail is not all zero, or ``size`` exceeds the page size
 * EOPNOTSUPP       ``flags`` has a bit the kernel does not know
 * EBADF            ``fd`` is not an open file descriptor (O_PATH included)
 * EISDIR/EINVAL    ``fd`` is a directory / not a regular file
 * ENOTBLK          the file's filesystem is not backed by a block device
 * EMEDIUMTYPE      the file is DAX (no page cache to invalidate)
 * EACCES           the filesystem is mounted read-write and
 *                  VMSUBST_INVALIDATE_F_FORCE was not given
 * EOVERFLOW        ``offset + length`` overflows or exceeds the largest
 *                  file offset (LLONG_MAX)
 * EINTR            a fatal signal arrived; partial counts are not returned
 * ===============  ==========================================================
 *
 * Ranges beyond the file's size are clamped to it; a range wholly beyond
 * it succeeds with all counts zero. Output fields are written only on success.
 */

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

#define VMSUBST_FEATURE_INVALIDATE_RANGE (1ULL << 0)

/* Allow invalidation on a read-write mount (the caller takes the risk). */
#define VMSUBST_INVALIDATE_F_FORCE	(1U << 0)
#define VMSUBST_INVALIDATE_F_ALL	(VMSUBST_INVALIDATE_F_FORCE)

/**
 * struct vmsubst_invalidate_range - VMSUBST_IOC_INVALIDATE_RANGE
 * @size:          in: sizeof(struct vmsubst_invalidate_range)
 * @flags:         in: VMSUBST_INVALIDATE_F_*
 * @fd:            in: an open regular file on the substituted filesystem
 * @reserved0:     in: must be 0
 * @offset:        in: first byte of the range (rounded down to a page)
 * @length:        in: bytes in the range, > 0 (rounded up to a page)
 * @pages_cached:  out: pages of the range in the page cache before the call
 * @pages_mapped:  out: of those, pages mapped into some process before the call
 * @pages_dropped: out: pages removed from the page cache
 * @pages_kept:    out: pages that could not be removed (dirty, or buffers
 *                in use); GUP-pinned pages are removed and counted as
 *                dropped, though their pinner keeps the old copy
 *
 * Under filemap_invalidate_lock the module zaps the range's page-table
 * entries with even_cows = 0 (private copy-on-write copies survive, so
 * running processes keep their own data) and then drops the pages from the
 * page cache, so the next access reads the new blocks from the disk.
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
};

#define VMSUBST_INVALIDATE_RANGE_SIZE_VER0 64 /* sizeof first published struct */

#define VMSUBST_IOC_VERSION \
	_IOWR(VMSUBST_IOC_MAGIC, 0x00, struct vmsubst_version)
#define VMSUBST_IOC_INVALIDATE_RANGE \
	_IOWR(VMSUBST_IOC_MAGIC, 0x01, struct vmsubst_invalidate_range)

#endif /* _UAPI_LINUX_VMSUBST_H */
