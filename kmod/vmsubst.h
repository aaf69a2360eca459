/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmsubst: declarations shared by the ioctl dispatcher and the commands.
 */
#ifndef VMSUBST_H
#define VMSUBST_H

#include <linux/types.h>
#include <uapi/linux/vmsubst.h>

#define VMSUBST_MODULE_VERSION "0.1.0"

/* The leading members every command struct shares. */
struct vmsubst_cmd_hdr {
	__u32 size;
	__u32 flags;
};

/*
 * Kernel copy of any command's argument. The dispatcher fills it from user
 * memory and copies the output back, so commands never touch user memory.
 */
union vmsubst_cmd {
	struct vmsubst_cmd_hdr hdr;
	struct vmsubst_version version;
	struct vmsubst_invalidate_range invalidate_range;
};

int vmsubst_cmd_invalidate_range(union vmsubst_cmd *cmd);

#endif /* VMSUBST_H */
