// SPDX-License-Identifier: GPL-2.0-only
/*
 * SEEK_DATA / SEEK_HOLE: where a sparse file holds data. The host's differ
 * reads only these segments of an image; a hole reads as zeros, so skipping
 * holes common to both images changes no result.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/types.h>
#include <unistd.h>

#include "host.h"

int vs_data_segments(int fd, int64_t size, vs_segment_cb cb, void *ctx)
{
	int64_t pos = 0;

	while (pos < size) {
		off_t data = lseek(fd, pos, SEEK_DATA);
		off_t hole;
		int ret;

		if (data < 0) {
			if (errno == ENXIO)
				return 0; /* only a hole from pos to the end */
			if (errno == EINVAL && pos == 0) {
				/* No SEEK_DATA on this filesystem: all of it is data. */
				return cb(ctx, 0, size);
			}
			return -errno;
		}
		if (data >= size)
			return 0;
		hole = lseek(fd, data, SEEK_HOLE);
		if (hole < 0)
			return -errno;
		if (hole > size)
			hole = size;
		ret = cb(ctx, data, hole - data);
		if (ret)
			return ret;
		pos = hole;
	}
	return 0;
}
