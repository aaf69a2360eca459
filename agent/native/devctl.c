// SPDX-License-Identifier: GPL-2.0-only
/*
 * The ioctls of /dev/vmsubst. Struct layouts and command numbers come from
 * the kernel module's uapi header; nothing here restates them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/vmsubst.h>

#include "native.h"

_Static_assert(sizeof(((struct vs_kmod_version_info *)0)->module_version) ==
	       sizeof(((struct vmsubst_version *)0)->module_version) + 1,
	       "module_version must have room for a terminating NUL");

static int vs_dev_open(const char *dev_path, const char **failed_syscall)
{
	int fd = open(dev_path, O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		*failed_syscall = "open";
		return -errno;
	}
	return fd;
}

static int vs_dev_ioctl(int fd, unsigned long cmd, void *arg,
			const char **failed_syscall)
{
	int ret = 0;

	if (ioctl(fd, cmd, arg) < 0) {
		*failed_syscall = "ioctl";
		ret = -errno;
	}
	close(fd);
	return ret;
}

int vs_kmod_version(const char *dev_path, struct vs_kmod_version_info *out,
		    const char **failed_syscall)
{
	struct vmsubst_version v;
	int fd, ret;

	fd = vs_dev_open(dev_path, failed_syscall);
	if (fd < 0)
		return fd;

	memset(&v, 0, sizeof(v));
	v.size = sizeof(v);
	ret = vs_dev_ioctl(fd, VMSUBST_IOC_VERSION, &v, failed_syscall);
	if (ret < 0)
		return ret;

	memset(out, 0, sizeof(*out));
	out->abi_version = v.abi_version;
	out->features = v.features;
	/* The kernel promises a NUL; a truncated copy must not overrun anyway. */
	memcpy(out->module_version, v.module_version,
	       strnlen(v.module_version, sizeof(v.module_version)));
	return 0;
}

int vs_invalidate_range(const char *dev_path, int file_fd, uint64_t offset,
			uint64_t length, uint32_t flags,
			struct vs_invalidate_result *out,
			const char **failed_syscall)
{
	struct vmsubst_invalidate_range r;
	int fd, ret;

	fd = vs_dev_open(dev_path, failed_syscall);
	if (fd < 0)
		return fd;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.flags = flags;
	r.fd = file_fd;
	r.offset = offset;
	r.length = length;
	ret = vs_dev_ioctl(fd, VMSUBST_IOC_INVALIDATE_RANGE, &r, failed_syscall);
	if (ret < 0)
		return ret;

	out->pages_cached = r.pages_cached;
	out->pages_mapped = r.pages_mapped;
	out->pages_dropped = r.pages_dropped;
	out->pages_kept = r.pages_kept;
	return 0;
}
