// SPDX-License-Identifier: GPL-2.0-only
/*
 * /dev/vmsubst: opened once by the caller, one ioctl per call. The argument
 * of each ioctl is the uapi struct itself (kmod/include/uapi/linux/vmsubst.h),
 * filled and read by the glue (glue/kmod.cc): no field of it is restated here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>

#include "native.h"

int vs_kmod_open(const char *dev_path)
{
	int fd = open(dev_path, O_RDWR | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

int vs_kmod_ioctl(int dev_fd, unsigned long cmd, void *arg)
{
	return ioctl(dev_fd, cmd, arg) < 0 ? -errno : 0;
}
