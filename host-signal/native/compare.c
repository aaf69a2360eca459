// SPDX-License-Identifier: GPL-2.0-only
/*
 * Block comparison of two open files over one span, for the host's differ:
 * both files are read with pread into buffers small enough to stay in the
 * CPU cache between the read and the memcmp, and each run of differing
 * blocks is recorded. The differ runs several spans at once on the libuv
 * thread pool.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host.h"

/* Reads exactly len bytes at off; -ENODATA when the file ends first. */
static int read_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENODATA;
		got += (size_t)n;
	}
	return 0;
}

/*
 * The read buffers of the calling thread, allocated at its first span and
 * kept for the thread's life (the libuv pool's threads live as long as the
 * process: at most 2 x VS_COMPARE_BUF each). Allocated per span, they came
 * back fresh from the allocator often enough that faulting their pages in
 * again was a fifth of the differ's page faults. 0 or -ENOMEM.
 */
static int thread_buffers(uint8_t **a, uint8_t **b)
{
	static __thread uint8_t *kept_a, *kept_b;

	if (!kept_a && posix_memalign((void **)&kept_a, 4096, VS_COMPARE_BUF))
		kept_a = NULL;
	if (kept_a && !kept_b &&
	    posix_memalign((void **)&kept_b, 4096, VS_COMPARE_BUF))
		kept_b = NULL;
	if (!kept_a || !kept_b)
		return -ENOMEM;
	*a = kept_a;
	*b = kept_b;
	return 0;
}

int vs_compare_span(int fd_a, int fd_b, uint64_t offset, uint64_t length,
		    uint32_t block_size, struct vs_run *runs, size_t max_runs,
		    size_t *nruns)
{
	uint8_t *a, *b;
	uint64_t pos = 0;
	size_t n = 0;
	int open = 0;
	int ret = 0;

	*nruns = 0;
	if (block_size == 0 || VS_COMPARE_BUF % block_size != 0 ||
	    length % block_size != 0)
		return -EINVAL;
	ret = thread_buffers(&a, &b);
	if (ret)
		return ret;
	/*
	 * Ask for the whole span of both files at once: from a cold cache the
	 * kernel then reads ahead of the loop below instead of at its pace.
	 * Advice only: its failure changes nothing.
	 */
	(void)posix_fadvise(fd_a, (off_t)offset, (off_t)length,
			    POSIX_FADV_WILLNEED);
	(void)posix_fadvise(fd_b, (off_t)offset, (off_t)length,
			    POSIX_FADV_WILLNEED);
	/* Each step reads VS_COMPARE_BUF bytes (less at the end): at most length / VS_COMPARE_BUF + 1 steps. */
	while (pos < length) {
		const size_t want = length - pos < VS_COMPARE_BUF ?
					    (size_t)(length - pos) :
					    VS_COMPARE_BUF;

		ret = read_full(fd_a, a, want, offset + pos);
		if (!ret)
			ret = read_full(fd_b, b, want, offset + pos);
		if (ret)
			break;
		if (memcmp(a, b, want) == 0) {
			open = 0;
		} else {
			for (size_t o = 0; o < want; o += block_size) {
				if (memcmp(a + o, b + o, block_size) == 0) {
					open = 0;
					continue;
				}
				if (open) {
					runs[n - 1].length += block_size;
					continue;
				}
				if (n == max_runs) {
					ret = -E2BIG;
					goto out;
				}
				runs[n].offset = offset + pos + o;
				runs[n].length = block_size;
				n++;
				open = 1;
			}
		}
		pos += want;
	}
out:
	*nruns = n;
	return ret;
}
