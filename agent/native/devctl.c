// SPDX-License-Identifier: GPL-2.0-only
/*
 * The ioctls of /dev/vmsubst. Struct layouts, limits and command numbers come
 * from the kernel module's uapi header; nothing here restates them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
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

/* Opens dev_path, issues cmd, closes it. 0 or -errno. */
static int vs_dev_call(const char *dev_path, unsigned long cmd, void *arg,
		       const char **failed_syscall)
{
	int fd, ret = 0;

	fd = vs_dev_open(dev_path, failed_syscall);
	if (fd < 0)
		return fd;
	if (ioctl(fd, cmd, arg) < 0) {
		*failed_syscall = "ioctl";
		ret = -errno;
	}
	close(fd);
	return ret;
}

static void vs_array_in(struct vmsubst_array *a, const struct vs_report *r)
{
	a->addr = r ? (uint64_t)(uintptr_t)r->items : 0;
	a->cap = r ? r->cap : 0;
}

static void vs_array_out(struct vs_report *r, const struct vmsubst_array *a)
{
	if (!r)
		return;
	r->count = a->count;
	r->total = a->total;
}

int vs_kmod_version(const char *dev_path, struct vs_kmod_version_info *out,
		    const char **failed_syscall)
{
	struct vmsubst_version v;
	int ret;

	memset(&v, 0, sizeof(v));
	v.size = sizeof(v);
	ret = vs_dev_call(dev_path, VMSUBST_IOC_VERSION, &v, failed_syscall);
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
			struct vs_report *outcomes, struct vs_report *mappers,
			struct vs_invalidate_result *out,
			const char **failed_syscall)
{
	struct vmsubst_invalidate_range r;
	int ret;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.flags = flags;
	r.fd = file_fd;
	r.offset = offset;
	r.length = length;
	vs_array_in(&r.outcomes, outcomes);
	vs_array_in(&r.mappers, mappers);
	ret = vs_dev_call(dev_path, VMSUBST_IOC_INVALIDATE_RANGE, &r,
			  failed_syscall);
	if (ret < 0)
		return ret;

	out->pages_cached = r.pages_cached;
	out->pages_mapped = r.pages_mapped;
	out->pages_dropped = r.pages_dropped;
	out->pages_kept = r.pages_kept;
	out->pages_refaulted = r.pages_refaulted;
	vs_array_out(outcomes, &r.outcomes);
	vs_array_out(mappers, &r.mappers);
	return 0;
}

int vs_invalidate_bdev(const char *dev_path, int bdev_fd, uint64_t offset,
		       uint64_t length, uint32_t flags, struct vs_report *kept,
		       struct vs_bdev_result *out, const char **failed_syscall)
{
	struct vmsubst_invalidate_bdev r;
	int ret;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.flags = flags;
	r.fd = bdev_fd;
	r.offset = offset;
	r.length = length;
	vs_array_in(&r.kept, kept);
	ret = vs_dev_call(dev_path, VMSUBST_IOC_INVALIDATE_BDEV, &r,
			  failed_syscall);
	if (ret < 0)
		return ret;

	out->pages_cached = r.pages_cached;
	out->pages_dropped = r.pages_dropped;
	out->pages_kept = r.pages_kept;
	vs_array_out(kept, &r.kept);
	return 0;
}

int vs_revalidate_inodes(const char *dev_path, int fd, const uint64_t *inodes,
			 uint32_t nr_inodes, uint32_t flags,
			 struct vs_report *in_use, struct vs_inodes_result *out,
			 const char **failed_syscall)
{
	struct vmsubst_revalidate_inodes r;
	int ret;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.flags = flags;
	r.fd = fd;
	r.nr_inodes = nr_inodes;
	r.inodes = (uint64_t)(uintptr_t)inodes;
	vs_array_in(&r.in_use, in_use);
	ret = vs_dev_call(dev_path, VMSUBST_IOC_REVALIDATE_INODES, &r,
			  failed_syscall);
	if (ret < 0)
		return ret;

	out->evicted = r.evicted;
	out->not_cached = r.not_cached;
	vs_array_out(in_use, &r.in_use);
	return 0;
}

int vs_revalidate_dentries(const char *dev_path, int dir_fd, const char *names,
			   uint32_t nr_names, uint32_t names_size,
			   uint32_t flags, struct vs_dentries_result *out,
			   const char **failed_syscall)
{
	struct vmsubst_revalidate_dentries r;
	int ret;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.flags = flags;
	r.fd = dir_fd;
	r.nr_names = nr_names;
	r.names = (uint64_t)(uintptr_t)names;
	r.names_size = names_size;
	ret = vs_dev_call(dev_path, VMSUBST_IOC_REVALIDATE_DENTRIES, &r,
			  failed_syscall);
	if (ret < 0)
		return ret;

	out->dropped = r.dropped;
	out->not_cached = r.not_cached;
	out->busy = r.busy;
	out->mountpoints = r.mountpoints;
	return 0;
}

int vs_query_mappers(const char *dev_path, int fd, uint64_t offset,
		     uint64_t length, struct vs_report *mappers,
		     const char **failed_syscall)
{
	struct vmsubst_query_mappers r;
	int ret;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.fd = fd;
	r.offset = offset;
	r.length = length;
	vs_array_in(&r.mappers, mappers);
	ret = vs_dev_call(dev_path, VMSUBST_IOC_QUERY_MAPPERS, &r,
			  failed_syscall);
	if (ret < 0)
		return ret;

	vs_array_out(mappers, &r.mappers);
	return 0;
}

int vs_pin_mappers(const char *dev_path, int fd, uint64_t offset,
		   uint64_t length, uint32_t max_pages,
		   struct vs_pin_cursor *cursor,
		   struct vs_report *pinned, struct vs_report *unpinned,
		   struct vs_pin_totals *out, const char **failed_syscall)
{
	struct vmsubst_pin_mappers r;
	int ret;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.fd = fd;
	if (cursor) {
		r.flags = VMSUBST_PIN_F_RESUME;
		r.cursor_mm = cursor->mm;
		r.cursor_addr = cursor->addr;
	}
	r.max_pages = max_pages;
	r.offset = offset;
	r.length = length;
	vs_array_in(&r.pinned, pinned);
	vs_array_in(&r.unpinned, unpinned);
	ret = vs_dev_call(dev_path, VMSUBST_IOC_PIN_MAPPERS, &r,
			  failed_syscall);
	if (ret < 0)
		return ret;

	out->bytes_copied = r.bytes_copied;
	out->bytes_private = r.bytes_private;
	out->bytes_failed = r.bytes_failed;
	out->status = r.status;
	out->mappings = r.mappings;
	if (cursor) {
		cursor->mm = r.cursor_mm;
		cursor->addr = r.cursor_addr;
	}
	vs_array_out(pinned, &r.pinned);
	vs_array_out(unpinned, &r.unpinned);
	return 0;
}

int vs_query_pages(const char *dev_path, int fd, uint64_t offset,
		   uint64_t length, struct vs_report *ranges,
		   struct vs_pages_result *out, const char **failed_syscall)
{
	struct vmsubst_query_pages r;
	int ret;

	memset(&r, 0, sizeof(r));
	r.size = sizeof(r);
	r.fd = fd;
	r.offset = offset;
	r.length = length;
	vs_array_in(&r.ranges, ranges);
	ret = vs_dev_call(dev_path, VMSUBST_IOC_QUERY_PAGES, &r,
			  failed_syscall);
	if (ret < 0)
		return ret;

	out->pages_cached = r.pages_cached;
	out->pages_mapped = r.pages_mapped;
	out->pages_dirty = r.pages_dirty;
	out->pages_writeback = r.pages_writeback;
	vs_array_out(ranges, &r.ranges);
	return 0;
}
