// SPDX-License-Identifier: GPL-2.0
/*
 * vmsubst: /dev/vmsubst, the guest half of live block substitution.
 *
 * The hypervisor replaces disk blocks under the running guest; the guest
 * agent then asks this module to drop what the kernel cached from the old
 * blocks. This file owns the device and the ioctl ABI: privilege check,
 * dispatch, and every copy from and to user memory, the lists a command
 * takes and reports included.
 */
#include <linux/build_bug.h>
#include <linux/capability.h>
#include <linux/dcache.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/limits.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/nospec.h>
#include <linux/overflow.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/stddef.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "vmsubst.h"

/**
 * struct vmsubst_list_desc - where a command struct describes a list
 * @offset:    an output list: offsetof its struct vmsubst_array; an input
 *             list: offsetof its __u64 address. 0 when there is none (the
 *             size member lives there)
 * @count:     an input list: offsetof its __u32 element count
 * @elem_size: bytes per element
 * @max:       the documented cap of the count or capacity
 */
struct vmsubst_list_desc {
	u16 offset;
	u16 count;
	u16 elem_size;
	u32 max;
};

/* The kind of file a command's fd must be; the dispatcher checks it. */
enum vmsubst_file_kind {
	VMSUBST_FILE_NONE,    /* the command takes no fd */
	VMSUBST_FILE_ANY,     /* any open file (the command checks its sb) */
	VMSUBST_FILE_REGULAR, /* vmsubst_check_file() */
	VMSUBST_FILE_BLOCK,   /* a block device node: ENOTBLK */
	VMSUBST_FILE_DIR,     /* a directory: ENOTDIR */
};

/**
 * struct vmsubst_ioctl_op - one ioctl command
 * @ioctl_num:   the command number, as published; only its direction is
 *               compared, not its size bits
 * @size:        sizeof the struct this module knows
 * @min_size:    offsetofend() of the last member of the first published
 *               struct (its *_SIZE_VER0); a smaller size is -EINVAL
 * @out_offset:  first output member; everything from it to the end of the
 *               caller's struct is copied back on success
 * @valid_flags: the struct's flags this module implements
 * @reserved:    offsetof a __u32 that must be 0 (-EINVAL); 0 when none
 * @range:       offsetof a __u64 offset followed by a __u64 length, checked
 *               into &struct vmsubst_ucmd.end; 0 when none
 * @fd:          offsetof the __s32 fd, resolved into &struct vmsubst_ucmd.file
 * @file:        the kind of file @fd must be; VMSUBST_FILE_NONE: no fd
 * @in:          the list the command reads, if any
 * @out:         the arrays the command fills, if any
 * @check:       the command's own argument checks, before @fd is resolved
 * @execute:     runs the command on the kernel copy of the struct
 */
struct vmsubst_ioctl_op {
	unsigned int ioctl_num;
	unsigned int size;
	unsigned int min_size;
	unsigned int out_offset;
	u32 valid_flags;
	u16 reserved;
	u16 range;
	u16 fd;
	enum vmsubst_file_kind file;
	struct vmsubst_list_desc in;
	struct vmsubst_list_desc out[VMSUBST_MAX_OUT];
	int (*check)(const struct vmsubst_ucmd *ucmd);
	int (*execute)(struct vmsubst_ucmd *ucmd);
};

/* The first command number; the table is indexed from it. */
#define VMSUBST_CMD_BASE 0x00

/*
 * The layout the table relies on: flags where the dispatcher reads them, the
 * first output member inside the first published struct, and that struct's
 * size where the table's offsetofend() puts it.
 */
#define VMSUBST_ASSERT_STRUCT(_struct, _ver0, _last_ver0, _first_out) \
	static_assert(offsetof(_struct, flags) ==                     \
		      offsetof(struct vmsubst_cmd_hdr, flags));       \
	static_assert(offsetofend(_struct, _last_ver0) == (_ver0));   \
	static_assert(sizeof(_struct) >= (_ver0));                    \
	static_assert(sizeof(_struct) % 8 == 0);                      \
	static_assert(offsetof(_struct, _first_out) < (_ver0))

/* A file-range command: an fd, and a length right after the offset. */
#define VMSUBST_ASSERT_FILE_RANGE(_struct)                     \
	static_assert(__same_type(((_struct *)0)->fd, __s32)); \
	static_assert(offsetof(_struct, length) ==             \
		      offsetofend(_struct, offset));           \
	static_assert(__same_type(((_struct *)0)->length, __u64))

VMSUBST_ASSERT_STRUCT(struct vmsubst_version, VMSUBST_VERSION_SIZE_VER0,
		      module_version, abi_version);
VMSUBST_ASSERT_STRUCT(struct vmsubst_invalidate_range,
		      VMSUBST_INVALIDATE_RANGE_SIZE_VER0, pages_kept,
		      pages_cached);
VMSUBST_ASSERT_STRUCT(struct vmsubst_invalidate_bdev,
		      VMSUBST_INVALIDATE_BDEV_SIZE_VER0, pages_kept, kept);
VMSUBST_ASSERT_STRUCT(struct vmsubst_revalidate_inodes,
		      VMSUBST_REVALIDATE_INODES_SIZE_VER0, not_cached, in_use);
VMSUBST_ASSERT_STRUCT(struct vmsubst_revalidate_dentries,
		      VMSUBST_REVALIDATE_DENTRIES_SIZE_VER0, mountpoints,
		      dropped);
VMSUBST_ASSERT_STRUCT(struct vmsubst_query_mappers,
		      VMSUBST_QUERY_MAPPERS_SIZE_VER0, mappers, mappers);
VMSUBST_ASSERT_STRUCT(struct vmsubst_pin_mappers, VMSUBST_PIN_MAPPERS_SIZE_VER0,
		      mappings, pinned);
VMSUBST_ASSERT_STRUCT(struct vmsubst_query_pages, VMSUBST_QUERY_PAGES_SIZE_VER0,
		      pages_writeback, ranges);
VMSUBST_ASSERT_STRUCT(struct vmsubst_query_openers,
		      VMSUBST_QUERY_OPENERS_SIZE_VER0, openers, tasks);
VMSUBST_ASSERT_FILE_RANGE(struct vmsubst_invalidate_range);
VMSUBST_ASSERT_FILE_RANGE(struct vmsubst_invalidate_bdev);
VMSUBST_ASSERT_FILE_RANGE(struct vmsubst_query_mappers);
VMSUBST_ASSERT_FILE_RANGE(struct vmsubst_pin_mappers);
VMSUBST_ASSERT_FILE_RANGE(struct vmsubst_query_pages);
static_assert(__same_type(((struct vmsubst_revalidate_inodes *)0)->fd, __s32));
static_assert(__same_type(((struct vmsubst_revalidate_dentries *)0)->fd,
			  __s32));
static_assert(sizeof(struct vmsubst_query_pages) ==
	      VMSUBST_QUERY_PAGES_SIZE_VER0);
static_assert(sizeof(struct vmsubst_pin_mappers) ==
	      VMSUBST_PIN_MAPPERS_SIZE_VER1);
static_assert(offsetof(struct vmsubst_pin_mappers, cursor_mm) ==
	      VMSUBST_PIN_MAPPERS_SIZE_VER0);
static_assert(sizeof(struct vmsubst_invalidate_range) ==
	      VMSUBST_INVALIDATE_RANGE_SIZE_VER1);
static_assert(offsetof(struct vmsubst_invalidate_range, outcomes) ==
	      VMSUBST_INVALIDATE_RANGE_SIZE_VER0);
static_assert(sizeof(struct vmsubst_array) == 24);
static_assert(sizeof(struct vmsubst_page_range) == 24);
static_assert(sizeof(struct vmsubst_mapper) == 48);
static_assert(sizeof(struct vmsubst_inode_status) == 16);
static_assert(sizeof(struct vmsubst_pin_result) == 48);
static_assert(sizeof(struct vmsubst_opener) == 40);
static_assert(sizeof_field(struct vmsubst_opener, comm) == TASK_COMM_LEN);
static_assert(__same_type(((struct vmsubst_query_openers *)0)->nr_fds, __u32));
static_assert(sizeof_field(struct vmsubst_mapper, comm) == TASK_COMM_LEN);
static_assert(sizeof_field(struct vmsubst_pin_result, comm) == TASK_COMM_LEN);
/* The list descriptors store offsets and sizes in 16 bits. */
static_assert(sizeof(union vmsubst_cmd) <= U16_MAX);

#define VMSUBST_FEATURES                                                       \
	(VMSUBST_FEATURE_INVALIDATE_RANGE |                                    \
	 VMSUBST_FEATURE_INVALIDATE_RANGE_V1 |                                 \
	 VMSUBST_FEATURE_INVALIDATE_BDEV | VMSUBST_FEATURE_REVALIDATE_INODES | \
	 VMSUBST_FEATURE_REVALIDATE_DENTRIES | VMSUBST_FEATURE_QUERY_MAPPERS | \
	 VMSUBST_FEATURE_PIN_MAPPERS | VMSUBST_FEATURE_QUERY_PAGES |           \
	 VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY |                             \
	 VMSUBST_FEATURE_PIN_CURSOR | VMSUBST_FEATURE_REVALIDATE_REPLACED |    \
	 VMSUBST_FEATURE_QUERY_OPENERS)

static int vmsubst_cmd_version(struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_version *ver = &ucmd->cmd.version;

	ver->abi_version = VMSUBST_ABI_VERSION;
	ver->features = VMSUBST_FEATURES;
	/* Padded: the whole array goes back to the caller. */
	strscpy_pad(ver->module_version, VMSUBST_MODULE_VERSION,
		    sizeof(ver->module_version));
	return 0;
}

/*
 * One entry per command, at its number. @min_size is where the first
 * published struct ended; @out lists the struct vmsubst_array members in the
 * order the command's &struct vmsubst_io.out uses them.
 */
static const struct vmsubst_ioctl_op vmsubst_ops[] = {
	[_IOC_NR(VMSUBST_IOC_VERSION) - VMSUBST_CMD_BASE] = {
		.ioctl_num = VMSUBST_IOC_VERSION,
		.size = sizeof(struct vmsubst_version),
		.min_size = offsetofend(struct vmsubst_version, module_version),
		.out_offset = offsetof(struct vmsubst_version, abi_version),
		.reserved = offsetof(struct vmsubst_version, reserved0),
		.execute = vmsubst_cmd_version,
	},
	[_IOC_NR(VMSUBST_IOC_INVALIDATE_RANGE) - VMSUBST_CMD_BASE] = {
		.ioctl_num = VMSUBST_IOC_INVALIDATE_RANGE,
		.size = sizeof(struct vmsubst_invalidate_range),
		.min_size = offsetofend(struct vmsubst_invalidate_range,
					pages_kept),
		.out_offset = offsetof(struct vmsubst_invalidate_range,
				       pages_cached),
		.valid_flags = VMSUBST_INVALIDATE_F_ALL,
		.reserved = offsetof(struct vmsubst_invalidate_range, reserved0),
		.range = offsetof(struct vmsubst_invalidate_range, offset),
		.fd = offsetof(struct vmsubst_invalidate_range, fd),
		.file = VMSUBST_FILE_REGULAR,
		.out = {
			{
				.offset = offsetof(struct vmsubst_invalidate_range,
						   outcomes),
				.elem_size = sizeof(struct vmsubst_page_range),
				.max = VMSUBST_RANGES_MAX,
			},
			{
				.offset = offsetof(struct vmsubst_invalidate_range,
						   mappers),
				.elem_size = sizeof(struct vmsubst_mapper),
				.max = VMSUBST_MAPPERS_MAX,
			},
		},
		.check = vmsubst_cmd_invalidate_range_check,
		.execute = vmsubst_cmd_invalidate_range,
	},
	[_IOC_NR(VMSUBST_IOC_INVALIDATE_BDEV) - VMSUBST_CMD_BASE] = {
		.ioctl_num = VMSUBST_IOC_INVALIDATE_BDEV,
		.size = sizeof(struct vmsubst_invalidate_bdev),
		.min_size = offsetofend(struct vmsubst_invalidate_bdev,
					pages_kept),
		.out_offset = offsetof(struct vmsubst_invalidate_bdev, kept),
		.valid_flags = VMSUBST_BDEV_F_ALL,
		.reserved = offsetof(struct vmsubst_invalidate_bdev, reserved0),
		.range = offsetof(struct vmsubst_invalidate_bdev, offset),
		.fd = offsetof(struct vmsubst_invalidate_bdev, fd),
		.file = VMSUBST_FILE_BLOCK,
		.out = {
			{
				.offset = offsetof(struct vmsubst_invalidate_bdev,
						   kept),
				.elem_size = sizeof(struct vmsubst_page_range),
				.max = VMSUBST_RANGES_MAX,
			},
		},
		.execute = vmsubst_cmd_invalidate_bdev,
	},
	[_IOC_NR(VMSUBST_IOC_REVALIDATE_INODES) - VMSUBST_CMD_BASE] = {
		.ioctl_num = VMSUBST_IOC_REVALIDATE_INODES,
		.size = sizeof(struct vmsubst_revalidate_inodes),
		.min_size = offsetofend(struct vmsubst_revalidate_inodes,
					not_cached),
		.out_offset = offsetof(struct vmsubst_revalidate_inodes, in_use),
		.valid_flags = VMSUBST_INODES_F_ALL,
		.fd = offsetof(struct vmsubst_revalidate_inodes, fd),
		.file = VMSUBST_FILE_ANY,
		.in = {
			.offset = offsetof(struct vmsubst_revalidate_inodes,
					   inodes),
			.count = offsetof(struct vmsubst_revalidate_inodes,
					  nr_inodes),
			.elem_size = sizeof(__u64),
			.max = VMSUBST_INODES_MAX,
		},
		.out = {
			{
				.offset = offsetof(struct vmsubst_revalidate_inodes,
						   in_use),
				.elem_size = sizeof(struct vmsubst_inode_status),
				.max = VMSUBST_INODES_MAX,
			},
		},
		.check = vmsubst_cmd_revalidate_inodes_check,
		.execute = vmsubst_cmd_revalidate_inodes,
	},
	[_IOC_NR(VMSUBST_IOC_REVALIDATE_DENTRIES) - VMSUBST_CMD_BASE] = {
		.ioctl_num = VMSUBST_IOC_REVALIDATE_DENTRIES,
		.size = sizeof(struct vmsubst_revalidate_dentries),
		.min_size = offsetofend(struct vmsubst_revalidate_dentries,
					mountpoints),
		.out_offset = offsetof(struct vmsubst_revalidate_dentries,
				       dropped),
		.valid_flags = VMSUBST_DENTRIES_F_ALL,
		.reserved = offsetof(struct vmsubst_revalidate_dentries,
				     reserved0),
		.fd = offsetof(struct vmsubst_revalidate_dentries, fd),
		.file = VMSUBST_FILE_DIR,
		.in = {
			.offset = offsetof(struct vmsubst_revalidate_dentries,
					   names),
			.count = offsetof(struct vmsubst_revalidate_dentries,
					  names_size),
			.elem_size = 1,
			.max = VMSUBST_NAMES_SIZE_MAX,
		},
		.check = vmsubst_cmd_revalidate_dentries_check,
		.execute = vmsubst_cmd_revalidate_dentries,
	},
	[_IOC_NR(VMSUBST_IOC_QUERY_MAPPERS) - VMSUBST_CMD_BASE] = {
		.ioctl_num = VMSUBST_IOC_QUERY_MAPPERS,
		.size = sizeof(struct vmsubst_query_mappers),
		.min_size = offsetofend(struct vmsubst_query_mappers, mappers),
		.out_offset = offsetof(struct vmsubst_query_mappers, mappers),
		.reserved = offsetof(struct vmsubst_query_mappers, reserved0),
		.range = offsetof(struct vmsubst_query_mappers, offset),
		.fd = offsetof(struct vmsubst_query_mappers, fd),
		.file = VMSUBST_FILE_REGULAR,
		.out = {
			{
				.offset = offsetof(struct vmsubst_query_mappers,
						   mappers),
				.elem_size = sizeof(struct vmsubst_mapper),
				.max = VMSUBST_MAPPERS_MAX,
			},
		},
		.execute = vmsubst_cmd_query_mappers,
	},
	[_IOC_NR(VMSUBST_IOC_PIN_MAPPERS) - VMSUBST_CMD_BASE] = {
		.ioctl_num = VMSUBST_IOC_PIN_MAPPERS,
		.size = sizeof(struct vmsubst_pin_mappers),
		.min_size = offsetofend(struct vmsubst_pin_mappers, mappings),
		.out_offset = offsetof(struct vmsubst_pin_mappers, pinned),
		.valid_flags = VMSUBST_PIN_F_ALL,
		.range = offsetof(struct vmsubst_pin_mappers, offset),
		.fd = offsetof(struct vmsubst_pin_mappers, fd),
		.file = VMSUBST_FILE_REGULAR,
		.out = {
			{
				.offset = offsetof(struct vmsubst_pin_mappers,
						   pinned),
				.elem_size = sizeof(struct vmsubst_pin_result),
				.max = VMSUBST_PIN_RESULTS_MAX,
			},
			{
				.offset = offsetof(struct vmsubst_pin_mappers,
						   unpinned),
				.elem_size = sizeof(struct vmsubst_mapper),
				.max = VMSUBST_MAPPERS_MAX,
			},
		},
		.check = vmsubst_cmd_pin_mappers_check,
		.execute = vmsubst_cmd_pin_mappers,
	},
	[_IOC_NR(VMSUBST_IOC_QUERY_PAGES) - VMSUBST_CMD_BASE] = {
		.ioctl_num = VMSUBST_IOC_QUERY_PAGES,
		.size = sizeof(struct vmsubst_query_pages),
		.min_size = offsetofend(struct vmsubst_query_pages,
					pages_writeback),
		.out_offset = offsetof(struct vmsubst_query_pages, ranges),
		.reserved = offsetof(struct vmsubst_query_pages, reserved0),
		.range = offsetof(struct vmsubst_query_pages, offset),
		.fd = offsetof(struct vmsubst_query_pages, fd),
		.file = VMSUBST_FILE_REGULAR,
		.out = {
			{
				.offset = offsetof(struct vmsubst_query_pages,
						   ranges),
				.elem_size = sizeof(struct vmsubst_page_range),
				.max = VMSUBST_RANGES_MAX,
			},
		},
		.execute = vmsubst_cmd_query_pages,
	},
	[_IOC_NR(VMSUBST_IOC_QUERY_OPENERS) - VMSUBST_CMD_BASE] = {
		.ioctl_num = VMSUBST_IOC_QUERY_OPENERS,
		.size = sizeof(struct vmsubst_query_openers),
		.min_size = offsetofend(struct vmsubst_query_openers, openers),
		.out_offset = offsetof(struct vmsubst_query_openers, tasks),
		.in = {
			.offset = offsetof(struct vmsubst_query_openers, fds),
			.count = offsetof(struct vmsubst_query_openers, nr_fds),
			.elem_size = sizeof(__s32),
			.max = VMSUBST_OPENERS_FILES_MAX,
		},
		.out = {
			{
				.offset = offsetof(struct vmsubst_query_openers,
						   openers),
				.elem_size = sizeof(struct vmsubst_opener),
				.max = VMSUBST_OPENERS_MAX,
			},
		},
		.check = vmsubst_cmd_query_openers_check,
		.execute = vmsubst_cmd_query_openers,
	},
};

/*
 * Reads the caller's struct into @ucmd->cmd: at least the first published
 * size, at most a page; members the caller's older struct lacks read as
 * zero, and a newer struct's unknown tail must be zero (E2BIG), as
 * copy_struct_from_user() has it.
 */
static int vmsubst_copy_in(const struct vmsubst_ioctl_op *op,
			   struct vmsubst_ucmd *ucmd)
{
	int ret;

	if (get_user(ucmd->user_size, (u32 __user *)ucmd->ubuffer))
		return -EFAULT;
	if (ucmd->user_size < op->min_size)
		return -EINVAL;
	/* Bounds the zero check of an unknown tail, as openat2() does. */
	if (ucmd->user_size > PAGE_SIZE)
		return -E2BIG;
	ret = copy_struct_from_user(&ucmd->cmd, op->size, ucmd->ubuffer,
				    ucmd->user_size);
	if (ret)
		return ret;
	if (ucmd->cmd.hdr.flags & ~op->valid_flags)
		return -EOPNOTSUPP;
	return 0;
}

static void *vmsubst_cmd_at(struct vmsubst_ucmd *ucmd, unsigned int offset)
{
	return (u8 *)&ucmd->cmd + offset;
}

static struct vmsubst_array *vmsubst_array_at(struct vmsubst_ucmd *ucmd,
					      const struct vmsubst_list_desc *d)
{
	return vmsubst_cmd_at(ucmd, d->offset);
}

/*
 * Copies the input list in and sets up the output arrays, before the
 * command runs: a bad address or an over-long list fails the call before
 * anything has changed. Members the caller did not pass (its struct is
 * older) read as zero, so they describe no list.
 */
static int vmsubst_io_prepare(const struct vmsubst_ioctl_op *op,
			      struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_io *io = &ucmd->io;
	unsigned int i;

	for (i = 0; i < VMSUBST_MAX_OUT; i++) {
		const struct vmsubst_list_desc *d = &op->out[i];
		struct vmsubst_out *o = &io->out[i];
		struct vmsubst_array *a;

		o->elem_size = d->elem_size;
		if (!d->offset)
			continue;
		a = vmsubst_array_at(ucmd, d);
		if (a->cap > d->max)
			return -E2BIG;
		if (!a->cap)
			continue;
		if (!a->addr || !access_ok(u64_to_user_ptr(a->addr),
					   (size_t)a->cap * d->elem_size))
			return -EFAULT;
		/* Zeroed: padding and reserved members go out as 0. */
		o->items = kvcalloc(a->cap, d->elem_size, GFP_KERNEL);
		if (!o->items)
			return -ENOMEM;
		o->cap = a->cap;
	}

	if (op->in.offset) {
		u64 addr = *(u64 *)vmsubst_cmd_at(ucmd, op->in.offset);
		u32 n = *(u32 *)vmsubst_cmd_at(ucmd, op->in.count);
		void *p;

		if (n > op->in.max)
			return -E2BIG;
		if (n) {
			p = vmemdup_user(u64_to_user_ptr(addr),
					 (size_t)n * op->in.elem_size);
			if (IS_ERR(p))
				return PTR_ERR(p);
			io->in = p;
			io->in_bytes = (size_t)n * op->in.elem_size;
		}
	}
	return 0;
}

static void vmsubst_io_free(struct vmsubst_io *io)
{
	unsigned int i;

	for (i = 0; i < VMSUBST_MAX_OUT; i++)
		kvfree(io->out[i].items);
	kvfree(io->in);
}

static int vmsubst_check_range(u64 offset, u64 length, u64 *end)
{
	if (!length)
		return -EINVAL;
	if (check_add_overflow(offset, length, end) || *end > LLONG_MAX)
		return -EOVERFLOW;
	return 0;
}

/* A regular file whose blocks can be replaced and whose pages are cached. */
static int vmsubst_check_file(struct file *file)
{
	struct inode *inode = file_inode(file);

	if (S_ISDIR(inode->i_mode))
		return -EISDIR;
	if (!S_ISREG(inode->i_mode))
		return -EINVAL;
	/* Only a block device can have its blocks replaced under us. */
	if (!inode->i_sb->s_bdev)
		return -ENOTBLK;
	if (IS_DAX(inode))
		return -EMEDIUMTYPE;
	return 0;
}

static int vmsubst_check_kind(struct file *file, enum vmsubst_file_kind kind)
{
	switch (kind) {
	case VMSUBST_FILE_REGULAR:
		return vmsubst_check_file(file);
	case VMSUBST_FILE_BLOCK:
		return S_ISBLK(file_inode(file)->i_mode) ? 0 : -ENOTBLK;
	case VMSUBST_FILE_DIR:
		return d_is_dir(file->f_path.dentry) ? 0 : -ENOTDIR;
	default:
		return 0;
	}
}

/*
 * The checks every command shares, in the order the errno contract was
 * written in: a reserved member, the command's own checks, the range, then
 * the fd and its kind. On success @ucmd->file holds a reference when the
 * command takes an fd.
 */
static int vmsubst_check_args(const struct vmsubst_ioctl_op *op,
			      struct vmsubst_ucmd *ucmd)
{
	int ret;

	if (op->reserved && *(u32 *)vmsubst_cmd_at(ucmd, op->reserved))
		return -EINVAL;
	if (op->check) {
		ret = op->check(ucmd);
		if (ret)
			return ret;
	}
	if (op->range) {
		u64 *range = vmsubst_cmd_at(ucmd, op->range);

		ret = vmsubst_check_range(range[0], range[1], &ucmd->end);
		if (ret)
			return ret;
	}
	if (op->file == VMSUBST_FILE_NONE)
		return 0;

	/* fget() refuses O_PATH files: they grant no access to contents. */
	ucmd->file = fget(*(s32 *)vmsubst_cmd_at(ucmd, op->fd));
	if (!ucmd->file)
		return -EBADF;
	return vmsubst_check_kind(ucmd->file, op->file);
}

/*
 * Reports a command that succeeded: the entries of each output array, their
 * counts into the struct, then the struct from its first output member on.
 * Never writes past what the caller said it has.
 */
static int vmsubst_respond(const struct vmsubst_ioctl_op *op,
			   struct vmsubst_ucmd *ucmd)
{
	unsigned int i;

	for (i = 0; i < VMSUBST_MAX_OUT; i++) {
		const struct vmsubst_list_desc *d = &op->out[i];
		struct vmsubst_out *o = &ucmd->io.out[i];
		struct vmsubst_array *a;

		if (!d->offset)
			continue;
		a = vmsubst_array_at(ucmd, d);
		a->count = o->count;
		a->total = o->total;
		if (o->count && copy_to_user(u64_to_user_ptr(a->addr), o->items,
					     (size_t)o->count * o->elem_size))
			return -EFAULT;
	}

	if (copy_to_user(ucmd->ubuffer + op->out_offset,
			 vmsubst_cmd_at(ucmd, op->out_offset),
			 min_t(u32, ucmd->user_size, op->size) -
				 op->out_offset))
		return -EFAULT;
	return 0;
}

static long vmsubst_ioctl(struct file *filp, unsigned int cmd,
			  unsigned long arg)
{
	struct vmsubst_ucmd ucmd = { .ubuffer = (void __user *)arg };
	const struct vmsubst_ioctl_op *op;
	unsigned int nr;
	int ret;

	/*
	 * Checked per call, not only at open: the 0600 node limits who opens
	 * the device, but an open fd can be passed to a less privileged task.
	 */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;

	/*
	 * The size bits of @cmd are not compared: the struct's own size
	 * member decides, so that a caller built against a grown struct
	 * reaches this module and gets a precise answer from
	 * copy_struct_from_user() instead of -ENOTTY.
	 */
	nr = _IOC_NR(cmd);
	/* Below the base, the unsigned difference wraps past the table too. */
	if (_IOC_TYPE(cmd) != VMSUBST_IOC_MAGIC ||
	    nr - VMSUBST_CMD_BASE >= ARRAY_SIZE(vmsubst_ops))
		return -ENOTTY;
	op = &vmsubst_ops[array_index_nospec(nr - VMSUBST_CMD_BASE,
					     ARRAY_SIZE(vmsubst_ops))];
	if (!op->execute || _IOC_DIR(cmd) != _IOC_DIR(op->ioctl_num))
		return -ENOTTY;

	ret = vmsubst_copy_in(op, &ucmd);
	if (!ret)
		ret = vmsubst_io_prepare(op, &ucmd);
	if (!ret)
		ret = vmsubst_check_args(op, &ucmd);
	if (!ret)
		ret = op->execute(&ucmd);
	if (!ret)
		ret = vmsubst_respond(op, &ucmd);
	if (ucmd.file)
		fput(ucmd.file);
	vmsubst_io_free(&ucmd.io);
	return ret;
}

static const struct file_operations vmsubst_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = vmsubst_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice vmsubst_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "vmsubst",
	.fops = &vmsubst_fops,
	.mode = 0600,
};
module_misc_device(vmsubst_misc);

MODULE_DESCRIPTION(
	"Guest page cache invalidation for live VM block substitution");
MODULE_AUTHOR("vmsubst developers");
MODULE_LICENSE("GPL");
MODULE_VERSION(VMSUBST_MODULE_VERSION);
