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
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/nospec.h>
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

/**
 * struct vmsubst_ioctl_op - one ioctl command
 * @cmd:         the command number, as published
 * @size:        sizeof the struct this module knows
 * @min_size:    sizeof the first published struct; smaller is -EINVAL
 * @out_offset:  first output member; everything from it to the end of the
 *               caller's struct is copied back on success
 * @valid_flags: the struct's flags this module implements
 * @in:          the list the command reads, if any
 * @out:         the arrays the command fills, if any
 * @execute:     runs the command on the kernel copy of the struct
 */
struct vmsubst_ioctl_op {
	unsigned int cmd;
	unsigned int size;
	unsigned int min_size;
	unsigned int out_offset;
	u32 valid_flags;
	struct vmsubst_list_desc in;
	struct vmsubst_list_desc out[VMSUBST_MAX_OUT];
	int (*execute)(union vmsubst_cmd *cmd, struct vmsubst_io *io);
};

#define VMSUBST_OP(_ioctl, _struct, _min_size, _first_out, _flags, _fn, ...) \
	[_IOC_NR(_ioctl)] = {						\
		.cmd = _ioctl,						\
		.size = sizeof(_struct),				\
		.min_size = _min_size,					\
		.out_offset = offsetof(_struct, _first_out),		\
		.valid_flags = _flags,					\
		.execute = _fn,						\
		__VA_ARGS__						\
	}

#define VMSUBST_IN(_struct, _addr, _count, _elem_size, _max)		\
	.in = {								\
		.offset = offsetof(_struct, _addr),			\
		.count = offsetof(_struct, _count),			\
		.elem_size = _elem_size,				\
		.max = _max,						\
	}

#define VMSUBST_OUT(_i, _struct, _array, _elem, _max)			\
	.out[_i] = {							\
		.offset = offsetof(_struct, _array),			\
		.elem_size = sizeof(_elem),				\
		.max = _max,						\
	}

#define VMSUBST_ASSERT_STRUCT(_struct, _ver0, _first_out)		\
	static_assert(offsetof(_struct, flags) ==			\
		      offsetof(struct vmsubst_cmd_hdr, flags));		\
	static_assert(sizeof(_struct) >= (_ver0));			\
	static_assert(sizeof(_struct) % 8 == 0);			\
	static_assert(offsetof(_struct, _first_out) < (_ver0))

VMSUBST_ASSERT_STRUCT(struct vmsubst_version, VMSUBST_VERSION_SIZE_VER0,
		      abi_version);
VMSUBST_ASSERT_STRUCT(struct vmsubst_invalidate_range,
		      VMSUBST_INVALIDATE_RANGE_SIZE_VER0, pages_cached);
VMSUBST_ASSERT_STRUCT(struct vmsubst_invalidate_bdev,
		      VMSUBST_INVALIDATE_BDEV_SIZE_VER0, kept);
VMSUBST_ASSERT_STRUCT(struct vmsubst_revalidate_inodes,
		      VMSUBST_REVALIDATE_INODES_SIZE_VER0, in_use);
VMSUBST_ASSERT_STRUCT(struct vmsubst_revalidate_dentries,
		      VMSUBST_REVALIDATE_DENTRIES_SIZE_VER0, dropped);
VMSUBST_ASSERT_STRUCT(struct vmsubst_query_mappers,
		      VMSUBST_QUERY_MAPPERS_SIZE_VER0, mappers);
VMSUBST_ASSERT_STRUCT(struct vmsubst_pin_mappers,
		      VMSUBST_PIN_MAPPERS_SIZE_VER0, pinned);
VMSUBST_ASSERT_STRUCT(struct vmsubst_query_pages,
		      VMSUBST_QUERY_PAGES_SIZE_VER0, ranges);
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
static_assert(sizeof_field(struct vmsubst_mapper, comm) == TASK_COMM_LEN);
static_assert(sizeof_field(struct vmsubst_pin_result, comm) == TASK_COMM_LEN);
/* The list descriptors store offsets and sizes in 16 bits. */
static_assert(sizeof(union vmsubst_cmd) <= U16_MAX);

#define VMSUBST_FEATURES						\
	(VMSUBST_FEATURE_INVALIDATE_RANGE |				\
	 VMSUBST_FEATURE_INVALIDATE_RANGE_V1 |				\
	 VMSUBST_FEATURE_INVALIDATE_BDEV |				\
	 VMSUBST_FEATURE_REVALIDATE_INODES |				\
	 VMSUBST_FEATURE_REVALIDATE_DENTRIES |				\
	 VMSUBST_FEATURE_QUERY_MAPPERS |				\
	 VMSUBST_FEATURE_PIN_MAPPERS |					\
	 VMSUBST_FEATURE_QUERY_PAGES |					\
	 VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY |			\
	 VMSUBST_FEATURE_PIN_CURSOR |					\
	 VMSUBST_FEATURE_REVALIDATE_REPLACED)

static int vmsubst_cmd_version(union vmsubst_cmd *cmd, struct vmsubst_io *io)
{
	struct vmsubst_version *ver = &cmd->version;

	if (ver->reserved0)
		return -EINVAL;

	ver->abi_version = VMSUBST_ABI_VERSION;
	ver->features = VMSUBST_FEATURES;
	/* Padded: the whole array goes back to the caller. */
	strscpy_pad(ver->module_version, VMSUBST_MODULE_VERSION,
		    sizeof(ver->module_version));
	return 0;
}

static const struct vmsubst_ioctl_op vmsubst_ops[] = {
	VMSUBST_OP(VMSUBST_IOC_VERSION, struct vmsubst_version,
		   VMSUBST_VERSION_SIZE_VER0, abi_version, 0,
		   vmsubst_cmd_version),
	VMSUBST_OP(VMSUBST_IOC_INVALIDATE_RANGE,
		   struct vmsubst_invalidate_range,
		   VMSUBST_INVALIDATE_RANGE_SIZE_VER0, pages_cached,
		   VMSUBST_INVALIDATE_F_ALL, vmsubst_cmd_invalidate_range,
		   VMSUBST_OUT(0, struct vmsubst_invalidate_range, outcomes,
			       struct vmsubst_page_range, VMSUBST_RANGES_MAX),
		   VMSUBST_OUT(1, struct vmsubst_invalidate_range, mappers,
			       struct vmsubst_mapper, VMSUBST_MAPPERS_MAX)),
	VMSUBST_OP(VMSUBST_IOC_INVALIDATE_BDEV, struct vmsubst_invalidate_bdev,
		   VMSUBST_INVALIDATE_BDEV_SIZE_VER0, kept,
		   VMSUBST_BDEV_F_ALL, vmsubst_cmd_invalidate_bdev,
		   VMSUBST_OUT(0, struct vmsubst_invalidate_bdev, kept,
			       struct vmsubst_page_range, VMSUBST_RANGES_MAX)),
	VMSUBST_OP(VMSUBST_IOC_REVALIDATE_INODES,
		   struct vmsubst_revalidate_inodes,
		   VMSUBST_REVALIDATE_INODES_SIZE_VER0, in_use,
		   VMSUBST_INODES_F_ALL, vmsubst_cmd_revalidate_inodes,
		   VMSUBST_IN(struct vmsubst_revalidate_inodes, inodes,
			      nr_inodes, sizeof(__u64), VMSUBST_INODES_MAX),
		   VMSUBST_OUT(0, struct vmsubst_revalidate_inodes, in_use,
			       struct vmsubst_inode_status,
			       VMSUBST_INODES_MAX)),
	VMSUBST_OP(VMSUBST_IOC_REVALIDATE_DENTRIES,
		   struct vmsubst_revalidate_dentries,
		   VMSUBST_REVALIDATE_DENTRIES_SIZE_VER0, dropped,
		   VMSUBST_DENTRIES_F_ALL, vmsubst_cmd_revalidate_dentries,
		   VMSUBST_IN(struct vmsubst_revalidate_dentries, names,
			      names_size, 1, VMSUBST_NAMES_SIZE_MAX)),
	VMSUBST_OP(VMSUBST_IOC_QUERY_MAPPERS, struct vmsubst_query_mappers,
		   VMSUBST_QUERY_MAPPERS_SIZE_VER0, mappers, 0,
		   vmsubst_cmd_query_mappers,
		   VMSUBST_OUT(0, struct vmsubst_query_mappers, mappers,
			       struct vmsubst_mapper, VMSUBST_MAPPERS_MAX)),
	VMSUBST_OP(VMSUBST_IOC_PIN_MAPPERS, struct vmsubst_pin_mappers,
		   VMSUBST_PIN_MAPPERS_SIZE_VER0, pinned, VMSUBST_PIN_F_ALL,
		   vmsubst_cmd_pin_mappers,
		   VMSUBST_OUT(0, struct vmsubst_pin_mappers, pinned,
			       struct vmsubst_pin_result,
			       VMSUBST_PIN_RESULTS_MAX),
		   VMSUBST_OUT(1, struct vmsubst_pin_mappers, unpinned,
			       struct vmsubst_mapper, VMSUBST_MAPPERS_MAX)),
	VMSUBST_OP(VMSUBST_IOC_QUERY_PAGES, struct vmsubst_query_pages,
		   VMSUBST_QUERY_PAGES_SIZE_VER0, ranges, 0,
		   vmsubst_cmd_query_pages,
		   VMSUBST_OUT(0, struct vmsubst_query_pages, ranges,
			       struct vmsubst_page_range, VMSUBST_RANGES_MAX)),
};

static struct vmsubst_array *vmsubst_array_at(union vmsubst_cmd *buf,
					      const struct vmsubst_list_desc *d)
{
	return (struct vmsubst_array *)((u8 *)buf + d->offset);
}

/*
 * Copies the input list in and sets up the output arrays, before the
 * command runs: a bad address or an over-long list fails the call before
 * anything has changed. @buf members the caller did not pass (its struct is
 * older) read as zero, so they describe no list.
 */
static int vmsubst_io_prepare(const struct vmsubst_ioctl_op *op,
			      union vmsubst_cmd *buf, struct vmsubst_io *io)
{
	unsigned int i;

	for (i = 0; i < VMSUBST_MAX_OUT; i++) {
		const struct vmsubst_list_desc *d = &op->out[i];
		struct vmsubst_out *o = &io->out[i];
		struct vmsubst_array *a;

		o->elem_size = d->elem_size;
		if (!d->offset)
			continue;
		a = vmsubst_array_at(buf, d);
		if (a->cap > d->max)
			return -E2BIG;
		if (!a->cap)
			continue;
		if (!a->addr ||
		    !access_ok(u64_to_user_ptr(a->addr),
			       (size_t)a->cap * d->elem_size))
			return -EFAULT;
		/* Zeroed: padding and reserved members go out as 0. */
		o->items = kvcalloc(a->cap, d->elem_size, GFP_KERNEL);
		if (!o->items)
			return -ENOMEM;
		o->cap = a->cap;
	}

	if (op->in.offset) {
		u64 addr = *(u64 *)((u8 *)buf + op->in.offset);
		u32 n = *(u32 *)((u8 *)buf + op->in.count);
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

/* Reports the output arrays: entries to the caller, counts into @buf. */
static int vmsubst_io_finish(const struct vmsubst_ioctl_op *op,
			     union vmsubst_cmd *buf, struct vmsubst_io *io)
{
	unsigned int i;

	for (i = 0; i < VMSUBST_MAX_OUT; i++) {
		const struct vmsubst_list_desc *d = &op->out[i];
		struct vmsubst_out *o = &io->out[i];
		struct vmsubst_array *a;

		if (!d->offset)
			continue;
		a = vmsubst_array_at(buf, d);
		a->count = o->count;
		a->total = o->total;
		if (o->count &&
		    copy_to_user(u64_to_user_ptr(a->addr), o->items,
				 (size_t)o->count * o->elem_size))
			return -EFAULT;
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

static long vmsubst_ioctl(struct file *filp, unsigned int cmd,
			  unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	const struct vmsubst_ioctl_op *op;
	struct vmsubst_io io = {};
	union vmsubst_cmd buf;
	unsigned int nr;
	u32 usize;
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
	if (_IOC_TYPE(cmd) != VMSUBST_IOC_MAGIC || nr >= ARRAY_SIZE(vmsubst_ops))
		return -ENOTTY;
	op = &vmsubst_ops[array_index_nospec(nr, ARRAY_SIZE(vmsubst_ops))];
	if (!op->execute || _IOC_DIR(cmd) != _IOC_DIR(op->cmd))
		return -ENOTTY;

	if (get_user(usize, (u32 __user *)uarg))
		return -EFAULT;
	if (usize < op->min_size)
		return -EINVAL;
	/* Bounds the zero check of an unknown tail, as openat2() does. */
	if (usize > PAGE_SIZE)
		return -E2BIG;
	ret = copy_struct_from_user(&buf, op->size, uarg, usize);
	if (ret)
		return ret;
	if (buf.hdr.flags & ~op->valid_flags)
		return -EOPNOTSUPP;

	ret = vmsubst_io_prepare(op, &buf, &io);
	if (!ret)
		ret = op->execute(&buf, &io);
	if (!ret)
		ret = vmsubst_io_finish(op, &buf, &io);
	vmsubst_io_free(&io);
	if (ret)
		return ret;

	/* Never write past what the caller said it has. */
	if (copy_to_user(uarg + op->out_offset, (u8 *)&buf + op->out_offset,
			 min_t(u32, usize, op->size) - op->out_offset))
		return -EFAULT;
	return 0;
}

static const struct file_operations vmsubst_fops = {
	.owner		= THIS_MODULE,
	.unlocked_ioctl	= vmsubst_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

static struct miscdevice vmsubst_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "vmsubst",
	.fops	= &vmsubst_fops,
	.mode	= 0600,
};
module_misc_device(vmsubst_misc);

MODULE_DESCRIPTION("Guest page cache invalidation for live VM block substitution");
MODULE_AUTHOR("vmsubst developers");
MODULE_LICENSE("GPL");
MODULE_VERSION(VMSUBST_MODULE_VERSION);
