// SPDX-License-Identifier: GPL-2.0-only
/*
 * FS_IOC_FIEMAP: the file → block map the pedigree index is built from.
 *
 * The extent array of one call is bounded (VS_FIEMAP_BATCH), so a file with
 * millions of extents costs a few hundred calls rather than one huge
 * allocation. Each call starts where the previous batch's last extent ended.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include <linux/fiemap.h>
#include <linux/fs.h>

#include "native.h"

#define VS_FIEMAP_BATCH 256u

int vs_fiemap(int fd, vs_extent_cb cb, void *ctx)
{
	const size_t size = sizeof(struct fiemap) +
			    VS_FIEMAP_BATCH * sizeof(struct fiemap_extent);
	struct fiemap *fm;
	uint64_t start = 0;
	int ret = 0;

	fm = malloc(size);
	if (!fm)
		return -ENOMEM;

	for (;;) {
		const struct fiemap_extent *last;
		uint64_t next;
		uint32_t i;

		memset(fm, 0, size);
		fm->fm_start = start;
		fm->fm_length = FIEMAP_MAX_OFFSET - start;
		/* SYNC on every batch: delayed allocations get their blocks. */
		fm->fm_flags = FIEMAP_FLAG_SYNC;
		fm->fm_extent_count = VS_FIEMAP_BATCH;

		if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0) {
			ret = -errno;
			break;
		}
		if (fm->fm_mapped_extents == 0)
			break;

		for (i = 0; i < fm->fm_mapped_extents; i++) {
			const struct fiemap_extent *fe = &fm->fm_extents[i];
			const struct vs_extent extent = {
				.logical = fe->fe_logical,
				.physical = fe->fe_physical,
				.length = fe->fe_length,
				.flags = fe->fe_flags,
			};

			ret = cb(ctx, &extent);
			if (ret != 0)
				goto out;
		}

		last = &fm->fm_extents[fm->fm_mapped_extents - 1];
		if (last->fe_flags & FIEMAP_EXTENT_LAST)
			break;
		next = last->fe_logical + last->fe_length;
		/* A filesystem that reports no progress must not loop forever. */
		if (next <= start || next < last->fe_logical)
			break;
		start = next;
	}
out:
	free(fm);
	return ret;
}
