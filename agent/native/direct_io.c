// SPDX-License-Identifier: GPL-2.0-only
/*
 * O_DIRECT reads: the agent's proof that new blocks are visible on the disk
 * itself, bypassing the page cache it is about to invalidate.
 *
 * O_DIRECT needs the file offset, the length and the memory address aligned
 * to the device's logical block size, so an arbitrary byte range is served
 * by reading its enclosing VS_DIRECT_ALIGN-aligned span into an aligned
 * buffer; the caller slices the requested bytes out of it (out->skip).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "native.h"

#define VS_ALIGN ((uint64_t)VS_DIRECT_ALIGN)

int vs_read_direct(const char *path, uint64_t offset, size_t length,
		   struct vs_direct_read *out, const char **failed_syscall)
{
	uint64_t span_start, span_end, want_end;
	size_t span, done = 0;
	void *base = NULL;
	int fd, err;

	memset(out, 0, sizeof(*out));

	/* pread() takes a signed off_t: the whole span must stay below it. */
	if (length > (uint64_t)INT64_MAX - VS_ALIGN ||
	    offset > (uint64_t)INT64_MAX - VS_ALIGN - length) {
		*failed_syscall = "read";
		return -EOVERFLOW;
	}
	want_end = offset + length;
	span_start = offset & ~(VS_ALIGN - 1);
	span_end = (want_end + VS_ALIGN - 1) & ~(VS_ALIGN - 1);
#if SIZE_MAX < UINT64_MAX
	if (span_end - span_start > SIZE_MAX) {
		*failed_syscall = "read";
		return -EOVERFLOW;
	}
#endif
	span = (size_t)(span_end - span_start);

	fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0) {
		*failed_syscall = "open";
		return -errno;
	}

	if (span > 0) {
		err = posix_memalign(&base, VS_DIRECT_ALIGN, span);
		if (err != 0) {
			close(fd);
			*failed_syscall = "posix_memalign";
			return -err;
		}
	}

	while (done < span) {
		ssize_t n = pread(fd, (char *)base + done, span - done,
				  (off_t)(span_start + done));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			close(fd);
			free(base);
			*failed_syscall = "read";
			return err;
		}
		if (n == 0)
			break; /* end of file or device */
		done += (size_t)n;
		/* A partial block means end of file; the next pread would be
		 * unaligned and fail with EINVAL rather than return 0. */
		if ((size_t)n % VS_DIRECT_ALIGN != 0)
			break;
	}
	close(fd);

	out->base = base;
	out->skip = (size_t)(offset - span_start);
	if (done > out->skip)
		out->got = done - out->skip < length ? done - out->skip :
						       length;
	return 0;
}
