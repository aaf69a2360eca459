// SPDX-License-Identifier: GPL-2.0
/*
 * vmsubst: /dev/vmsubst, the guest half of live block substitution.
 *
 * The hypervisor replaces disk blocks under the running guest; the guest
 * agent then asks this module to drop what the kernel cached from the old
 * blocks. This file owns the device and the ioctl ABI: privilege check,
 * dispatch, and every copy from and to user memory.
 */
#include <linux/build_bug.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/nospec.h>
#include <linux/stddef.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "vmsubst.h"

/**
 * struct vmsubst_ioctl_op - one ioctl command
 * @cmd:         the command number, as published
 * @size:        sizeof the struct this module knows
 * @min_size:    sizeof the first published struct; smaller is -EINVAL
 * @out_offset:  first output member; everything from it to the end of the
 *               caller's struct is copied back on success
 * @valid_flags: the struct's flags this module implements
 * @execute:     runs the command on the kernel copy of the struct
 */
struct vmsubst_ioctl_op {
	unsigned int cmd;
	unsigned int size;
	unsigned int min_size;
	unsigned int out_offset;
	u32 valid_flags;
	int (*execute)(union vmsubst_cmd *cmd);
};

#define VMSUBST_OP(_ioctl, _struct, _min_size, _first_out, _flags, _fn)	\
	[_IOC_NR(_ioctl)] = {						\
		.cmd = _ioctl,						\
		.size = sizeof(_struct),				\
		.min_size = _min_size,					\
		.out_offset = offsetof(_struct, _first_out),		\
		.valid_flags = _flags,					\
		.execute = _fn,						\
	}

static_assert(offsetof(struct vmsubst_version, flags) ==
	      offsetof(struct vmsubst_cmd_hdr, flags));
static_assert(offsetof(struct vmsubst_invalidate_range, flags) ==
	      offsetof(struct vmsubst_cmd_hdr, flags));
static_assert(sizeof(struct vmsubst_version) >= VMSUBST_VERSION_SIZE_VER0);
static_assert(sizeof(struct vmsubst_invalidate_range) >=
	      VMSUBST_INVALIDATE_RANGE_SIZE_VER0);
static_assert(offsetof(struct vmsubst_version, abi_version) <
	      VMSUBST_VERSION_SIZE_VER0);
static_assert(offsetof(struct vmsubst_invalidate_range, pages_cached) <
	      VMSUBST_INVALIDATE_RANGE_SIZE_VER0);

static int vmsubst_cmd_version(union vmsubst_cmd *cmd)
{
	struct vmsubst_version *ver = &cmd->version;

	if (ver->reserved0)
		return -EINVAL;

	ver->abi_version = VMSUBST_ABI_VERSION;
	ver->features = VMSUBST_FEATURE_INVALIDATE_RANGE;
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
		   VMSUBST_INVALIDATE_F_ALL, vmsubst_cmd_invalidate_range),
};

static long vmsubst_ioctl(struct file *filp, unsigned int cmd,
			  unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	const struct vmsubst_ioctl_op *op;
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

	ret = op->execute(&buf);
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
