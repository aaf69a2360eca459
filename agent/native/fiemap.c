// SPDX-License-Identifier: GPL-2.0-only
/*
 * FS_IOC_FIEMAP: the file → block map the pedigree index is built from.
 *
 * The extent array of one call is bounded (the caller's buffer), so a file
 * with millions of extents costs a few hundred calls rather than one huge
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

int vs_fiemap_batched(int fd, uint32_t flags, struct fiemap *fm, uint32_t batch,
		      vs_extent_cb cb, void *ctx)
{
	uint64_t start = 0;

	for (;;) {
		const struct fiemap_extent *last;
		uint64_t next;
		uint32_t i;
		int ret;

		/* Only the header is input: the kernel writes the extents it maps. */
		memset(fm, 0, sizeof(*fm));
		fm->fm_start = start;
		fm->fm_length = FIEMAP_MAX_OFFSET - start;
		fm->fm_flags = flags;
		fm->fm_extent_count = batch;

		if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0)
			return -errno;
		if (fm->fm_mapped_extents == 0)
			return 0;

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
				return ret;
		}

		last = &fm->fm_extents[fm->fm_mapped_extents - 1];
		if (last->fe_flags & FIEMAP_EXTENT_LAST)
			return 0;
		next = last->fe_logical + last->fe_length;
		/* A filesystem that reports no progress must not loop forever. */
		if (next <= start || next < last->fe_logical)
			return 0;
		start = next;
	}
}

int vs_fiemap(int fd, vs_extent_cb cb, void *ctx)
{
	struct fiemap *fm;
	int ret;

	fm = malloc(sizeof(struct fiemap) +
		    VS_FIEMAP_BATCH * sizeof(struct fiemap_extent));
	if (!fm)
		return -ENOMEM;
	/* SYNC on every batch: delayed allocations get their blocks. */
	ret = vs_fiemap_batched(fd, FIEMAP_FLAG_SYNC, fm, VS_FIEMAP_BATCH, cb,
				ctx);
	free(fm);
	return ret;
}
