// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_INVALIDATE_RANGE: argument checks, a filesystem without a
 * block device, read-write and read-only mounts, the VER1 steps and
 * reports, and F_UNLESS_DIRTY.
 */
#include "harness.h"

#define ABI_FAMILY ABI_FAMILY_INVALIDATE
#define ABI_CMD	   (&CMD_INV)

TEST(inv_null, NEED_NONE, "invalidate: NULL argument returns EFAULT")
{
	int got = xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, NULL);

	if (got != EFAULT)
		fail(desc, "errno got %s want EFAULT", errname(got));
	else
		pass(desc);
}

TEST(inv_small, NEED_NONE, "invalidate: size below VER0 returns EINVAL")
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page, 0);
	r.size = VMSUBST_INVALIDATE_RANGE_SIZE_VER0 - 8;
	expect_inv_errno(c, desc, &r, EINVAL);
}

TEST(inv_flag, NEED_NONE, "invalidate: unknown flag returns EOPNOTSUPP")
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page, 1U << 31);
	expect_inv_errno(c, desc, &r, EOPNOTSUPP);
}

TEST(inv_reserved, NEED_NONE, "invalidate: non-zero reserved0 returns EINVAL")
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page, 0);
	r.reserved0 = 1;
	expect_inv_errno(c, desc, &r, EINVAL);
}

TEST(inv_len0, NEED_NONE, "invalidate: length 0 returns EINVAL")
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, 0, 0);
	expect_inv_errno(c, desc, &r, EINVAL);
}

TEST(inv_wrap, NEED_NONE,
     "invalidate: offset + length wrapping returns EOVERFLOW")
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, UINT64_MAX - c->page + 1, 2 * c->page, 0);
	expect_inv_errno(c, desc, &r, EOVERFLOW);
}

TEST(inv_past_max, NEED_NONE,
     "invalidate: end past LLONG_MAX returns EOVERFLOW")
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, LLONG_MAX, 1, 0);
	expect_inv_errno(c, desc, &r, EOVERFLOW);
}

TEST(inv_fd_neg, NEED_NONE, "invalidate: fd -1 returns EBADF")
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, -1, 0, c->page, 0);
	expect_inv_errno(c, desc, &r, EBADF);
}

TEST(inv_fd_closed, NEED_NONE, "invalidate: closed fd returns EBADF")
{
	struct vmsubst_invalidate_range r;
	int fd = dup(c->base_fd);

	if (fd < 0 || close(fd)) {
		fail(desc, "dup/close: %s", strerror(errno));
		return;
	}
	inv_init(&r, fd, 0, c->page, 0);
	expect_inv_errno(c, desc, &r, EBADF);
}

TEST(inv_fd_path, NEED_NONE, "invalidate: O_PATH fd returns EBADF")
{
	char self[32];
	struct vmsubst_invalidate_range r;
	int fd;

	snprintf(self, sizeof(self), "/proc/self/fd/%d", c->base_fd);
	fd = open(self, O_PATH | O_CLOEXEC);
	if (fd < 0) {
		fail(desc, "open O_PATH: %s", strerror(errno));
		return;
	}
	inv_init(&r, fd, 0, c->page, 0);
	expect_inv_errno(c, desc, &r, EBADF);
	close(fd);
}

TEST(inv_dir, NEED_NONE, "invalidate: directory fd returns EISDIR")
{
	struct vmsubst_invalidate_range r;
	int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		fail(desc, "open /: %s", strerror(errno));
		return;
	}
	inv_init(&r, fd, 0, c->page, 0);
	expect_inv_errno(c, desc, &r, EISDIR);
	close(fd);
}

TEST(inv_chardev, NEED_NONE, "invalidate: character device fd returns EINVAL")
{
	struct vmsubst_invalidate_range r;

	/* The device itself: a character device, not a regular file. */
	inv_init(&r, c->dev, 0, c->page, 0);
	expect_inv_errno(c, desc, &r, EINVAL);
}

CASE(inv_huge, NEED_NONE, "invalidate: size above a page returns E2BIG", g_huge,
     &CMD_INV)
CASE(inv_big_dirty, NEED_NONE,
     "invalidate: larger size, non-zero tail returns E2BIG", g_big_dirty,
     &CMD_INV)
CASE(inv_dax, NEED_DAX, "invalidate: DAX file returns EMEDIUMTYPE", g_dax,
     &CMD_INV)
ARRAY_CASES(inv_outcomes, "invalidate: outcomes",
	    struct vmsubst_invalidate_range, outcomes, VMSUBST_RANGES_MAX,
	    &CMD_INV)
ARRAY_CASES(inv_mappers, "invalidate: mappers", struct vmsubst_invalidate_range,
	    mappers, VMSUBST_MAPPERS_MAX, &CMD_INV)

static bool inv_untouched_cb(const void *p)
{
	return inv_untouched(p);
}

TEST(eperm_invalidate, NEED_NONE, "no CAP_SYS_ADMIN: invalidate returns EPERM")
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page, 0);
	report_unprivileged(
		desc, errno_unprivileged(c->dev, VMSUBST_IOC_INVALIDATE_RANGE,
					 &r, inv_untouched_cb));
}

static void nobdev(struct ctx *c, const char *desc, uint32_t flags)
{
	struct vmsubst_invalidate_range r;
	int fd = open(c->path[NEED_NOBDEV], O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		fail(desc, "open: %s", strerror(errno));
		return;
	}
	inv_init(&r, fd, 0, c->page, flags);
	expect_inv_errno(c, desc, &r, ENOTBLK);
	close(fd);
}

TEST(nobdev, NEED_NOBDEV, "no block device: returns ENOTBLK")
{
	nobdev(c, desc, 0);
}

TEST(nobdev_force, NEED_NOBDEV, "no block device: with F_FORCE returns ENOTBLK")
{
	nobdev(c, desc, VMSUBST_INVALIDATE_F_FORCE);
}

TEST(rw_noforce, NEED_RW, "rw mount: without F_FORCE returns EACCES")
{
	struct vmsubst_invalidate_range r;
	int fd = open(c->path[NEED_RW], O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		fail(desc, "open: %s", strerror(errno));
		return;
	}
	inv_init(&r, fd, 0, c->page, 0);
	expect_inv_errno(c, desc, &r, EACCES);
	close(fd);
}

TEST(rw_dirty, NEED_RW,
     "rw mount: F_FORCE keeps dirty pages, drops them once clean")
{
	const uint64_t npages = 4;
	struct vmsubst_invalidate_range r;
	size_t len = npages * c->page;
	char *buf = malloc(len);
	int fd = rw_tmpfile(c);

	if (fd < 0 || !buf) {
		fail(desc, "temporary file: %s", strerror(errno));
		goto out;
	}
	memset(buf, 'd', len);
	if (pwrite(fd, buf, len, 0) != (ssize_t)len) {
		fail(desc, "pwrite: %s", strerror(errno));
		goto out;
	}
	/* Not synced: the pages are dirty and must survive. */
	if (!invalidate(c, desc, &r, fd, 0, len, VMSUBST_INVALIDATE_F_FORCE))
		goto out;
	if (r.pages_cached != npages || r.pages_kept != npages ||
	    r.pages_dropped != 0) {
		fail(desc, COUNTS_FMT, COUNTS(&r));
		goto out;
	}
	if (fdatasync(fd)) {
		fail(desc, "fdatasync: %s", strerror(errno));
		goto out;
	}
	/* Written back: now they are clean and go. */
	if (!invalidate(c, desc, &r, fd, 0, len, VMSUBST_INVALIDATE_F_FORCE))
		goto out;
	if (r.pages_cached != npages || r.pages_dropped != npages ||
	    r.pages_kept != 0)
		fail(desc, "after fdatasync " COUNTS_FMT, COUNTS(&r));
	else
		pass(desc);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
}

TEST(rw_dirty_outcomes, NEED_RW,
     "rw mount: F_FORCE reports the dirty pages as one DIRTY range")
{
	const uint64_t npages = 4;
	struct vmsubst_page_range out[2];
	struct vmsubst_invalidate_range r;
	size_t len = npages * c->page;
	char *buf = malloc(len);
	int fd = rw_tmpfile(c);

	memset(out, FILL, sizeof(out));
	if (fd < 0 || !buf) {
		fail(desc, "temporary file: %s", strerror(errno));
		goto out;
	}
	memset(buf, 'd', len);
	/* One clean page, then three dirty ones. */
	if (pwrite(fd, buf, c->page, 0) != c->page || fdatasync(fd) ||
	    pwrite(fd, buf, len - c->page, c->page) !=
		    (ssize_t)(len - c->page)) {
		fail(desc, "write: %s", strerror(errno));
		goto out;
	}
	inv_init(&r, fd, 0, len, VMSUBST_INVALIDATE_F_FORCE);
	array_init(&r.outcomes, out, ARRAY_SIZE(out));
	if (xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, &r)) {
		fail(desc, "errno got %s want 0", errname(errno));
		goto out;
	}
	if (r.pages_dropped != 1 || r.pages_kept != npages - 1)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else if (r.outcomes.count != 1 || r.outcomes.total != 1 ||
		 out[0].offset != (uint64_t)c->page ||
		 out[0].length != (npages - 1) * c->page ||
		 out[0].state != VMSUBST_PAGE_DIRTY)
		fail(desc,
		     "outcomes %u/%llu: offset %llu length %llu state %#x",
		     r.outcomes.count, (unsigned long long)r.outcomes.total,
		     (unsigned long long)out[0].offset,
		     (unsigned long long)out[0].length, out[0].state);
	else if (!all_fill(&out[1], sizeof(out[1])))
		fail(desc, "wrote past outcomes.count");
	else
		pass(desc);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
}

TEST(ro_drop, NEED_RO, "ro mount: read file, every cached page dropped")
{
	uint64_t npages = (c->ro_size + c->page - 1) / c->page;
	struct vmsubst_invalidate_range r;

	if (!read_all(c->ro_fd, c->ro_size)) {
		fail(desc, "read: %s", strerror(errno));
		return;
	}
	if (!invalidate(c, desc, &r, c->ro_fd, 0, c->ro_size, 0))
		return;
	if (r.pages_cached < 1 || r.pages_cached > npages ||
	    r.pages_dropped != r.pages_cached || r.pages_kept != 0 ||
	    r.pages_mapped != 0)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else
		pass(desc);
}

TEST(ro_again, NEED_RO, "ro mount: second call finds nothing cached")
{
	struct vmsubst_invalidate_range r;

	if (!invalidate(c, desc, &r, c->ro_fd, 0, c->ro_size, 0))
		return;
	if (r.pages_cached || r.pages_mapped || r.pages_dropped || r.pages_kept)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else
		pass(desc);
}

TEST(ro_beyond_eof, NEED_RO, "ro mount: range beyond EOF gives all-zero counts")
{
	struct vmsubst_invalidate_range r;

	if (!read_all(c->ro_fd, c->ro_size)) {
		fail(desc, "read: %s", strerror(errno));
		return;
	}
	if (!invalidate(c, desc, &r, c->ro_fd, c->ro_size + (1 << 20), c->page,
			0))
		return;
	if (r.pages_cached || r.pages_mapped || r.pages_dropped || r.pages_kept)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else
		pass(desc);
}

TEST(ro_clamp, NEED_RO, "ro mount: range past EOF clamped to the file")
{
	uint64_t npages = (c->ro_size + c->page - 1) / c->page;
	struct vmsubst_invalidate_range r;

	/* The file is cached from the case before; the range runs far past EOF. */
	if (!read_all(c->ro_fd, c->ro_size)) {
		fail(desc, "read: %s", strerror(errno));
		return;
	}
	if (!invalidate(c, desc, &r, c->ro_fd, 0, 1ULL << 40, 0))
		return;
	if (r.pages_cached != npages || r.pages_dropped != npages ||
	    r.pages_kept != 0)
		fail(desc, "want %llu pages, " COUNTS_FMT,
		     (unsigned long long)npages, COUNTS(&r));
	else
		pass(desc);
}

TEST(ro_bounded, NEED_RO, "ro mount: unaligned byte drops its page only")
{
	size_t len = c->ro_size;
	size_t npages = (len + c->page - 1) / c->page;
	struct vmsubst_invalidate_range r;
	unsigned char *vec = calloc(npages, 1);
	void *map = MAP_FAILED;
	long n;

	if (!vec || !read_all(c->ro_fd, c->ro_size)) {
		fail(desc, "read: %s", strerror(errno));
		goto out;
	}
	/* An unaligned byte inside page 1 takes out page 1 only. */
	if (!invalidate(c, desc, &r, c->ro_fd, c->page + 1, 1, 0))
		goto out;
	if (r.pages_cached != 1 || r.pages_dropped != 1 || r.pages_kept != 0) {
		fail(desc, COUNTS_FMT, COUNTS(&r));
		goto out;
	}
	/* mincore() of a fresh, untouched mapping reports the page cache. */
	map = mmap(NULL, len, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (map == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		goto out;
	}
	n = resident(map, len, c->page, vec);
	if (n != (long)npages - 1 || (vec[1] & 1) || !(vec[0] & 1) ||
	    !(vec[2] & 1))
		fail(desc, "resident %ld of %zu, pages 0-2: %d%d%d", n, npages,
		     vec[0] & 1, vec[1] & 1, vec[2] & 1);
	else
		pass(desc);
out:
	if (map != MAP_FAILED)
		munmap(map, len);
	free(vec);
}

TEST(ro_mapped, NEED_RO,
     "ro mount: mapped pages counted, zapped, refault right")
{
	size_t len = c->ro_size;
	size_t npages = (len + c->page - 1) / c->page;
	struct vmsubst_invalidate_range r;
	unsigned char *vec = calloc(npages, 1);
	char *want = malloc(len);
	volatile char sum = 0;
	char *map;
	long n;

	map = mmap(NULL, len, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (map == MAP_FAILED || !vec || !want ||
	    pread(c->ro_fd, want, len, 0) != (ssize_t)len) {
		fail(desc, "setup: %s", strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < len; i += c->page)
		sum += map[i];
	if (!invalidate(c, desc, &r, c->ro_fd, 0, len, 0))
		goto out;
	if (r.pages_cached != npages || r.pages_mapped != npages ||
	    r.pages_dropped != npages || r.pages_kept != 0) {
		fail(desc, COUNTS_FMT, COUNTS(&r));
		goto out;
	}
	n = resident(map, len, c->page, vec);
	if (n != 0) {
		fail(desc, "%ld pages still cached after the drop", n);
		goto out;
	}
	/* The zapped mapping refaults from the disk and still reads right. */
	if (memcmp(map, want, len))
		fail(desc, "mapping reads wrong data after refault");
	else
		pass(desc);
out:
	if (map != MAP_FAILED)
		munmap(map, len);
	free(want);
	free(vec);
}

TEST(ro_private_cow, NEED_RO,
     "ro mount: private COW copy survives (even_cows 0)")
{
	static const char mark[] = "private copy-on-write data";
	size_t len = c->ro_size;
	struct vmsubst_invalidate_range r;
	char *want = malloc(len);
	char *map;

	map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, c->ro_fd, 0);
	if (map == MAP_FAILED || !want ||
	    pread(c->ro_fd, want, len, 0) != (ssize_t)len) {
		fail(desc, "setup: %s", strerror(errno));
		goto out;
	}
	/* Page 0 becomes the process's own copy; page 1 stays the file's. */
	memcpy(map, mark, sizeof(mark));
	if (map[c->page] != want[c->page]) {
		fail(desc, "mapping differs from the file before the call");
		goto out;
	}
	if (!invalidate(c, desc, &r, c->ro_fd, 0, len, 0))
		goto out;
	if (r.pages_dropped != r.pages_cached || r.pages_kept != 0)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else if (memcmp(map, mark, sizeof(mark)))
		fail(desc, "the private copy was discarded (even_cows != 0)");
	else if (memcmp(map + sizeof(mark), want + sizeof(mark),
			len - sizeof(mark)))
		fail(desc, "the rest of the mapping reads wrong data");
	else
		pass(desc);
out:
	if (map != MAP_FAILED)
		munmap(map, len);
	free(want);
}

TEST(ro_force, NEED_RO, "ro mount: F_FORCE accepted")
{
	struct vmsubst_invalidate_range r;

	if (!invalidate(c, desc, &r, c->ro_fd, 0, c->ro_size,
			VMSUBST_INVALIDATE_F_FORCE))
		return;
	if (r.pages_dropped != r.pages_cached || r.pages_kept != 0)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else
		pass(desc);
}

TEST(inv_refault_both, NEED_NONE,
     "invalidate: REFAULT_ASYNC with REFAULT_SYNC returns EINVAL")
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page,
		 VMSUBST_INVALIDATE_F_REFAULT_ASYNC |
			 VMSUBST_INVALIDATE_F_REFAULT_SYNC);
	expect_inv_errno(c, desc, &r, EINVAL);
}

TEST(inv_ver0_size, NEED_RO,
     "ro mount: a VER0-sized caller works, nothing written past it")
{
	struct vmsubst_invalidate_range r;
	int got;

	/* A caller built before VER1: 64 bytes, the tail is not its memory. */
	inv_init(&r, c->ro_fd, 0, c->ro_size, 0);
	r.size = VMSUBST_INVALIDATE_RANGE_SIZE_VER0;
	memset((char *)&r + VMSUBST_INVALIDATE_RANGE_SIZE_VER0, FILL,
	       sizeof(r) - VMSUBST_INVALIDATE_RANGE_SIZE_VER0);
	read_all(c->ro_fd, c->ro_size);
	got = xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, &r);
	if (got)
		fail(desc, "errno got %s want 0", errname(got));
	else if (!all_fill((char *)&r + VMSUBST_INVALIDATE_RANGE_SIZE_VER0,
			   sizeof(r) - VMSUBST_INVALIDATE_RANGE_SIZE_VER0))
		fail(desc, "wrote past the VER0 size");
	else if (r.pages_cached < 1 || r.pages_dropped != r.pages_cached)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else
		pass(desc);
}

TEST(inv_number, NEED_NONE, "invalidate: command number unchanged by VER1")
{
	/* The number published before VER1, size bits included. */
	if (VMSUBST_IOC_INVALIDATE_RANGE != 0xc040b501UL)
		fail(desc, "VMSUBST_IOC_INVALIDATE_RANGE is %#lx",
		     (unsigned long)VMSUBST_IOC_INVALIDATE_RANGE);
	else
		pass(desc);
	(void)c;
}

TEST(ro_refault_sync, NEED_RO, "ro mount: F_REFAULT_SYNC reads every page back")
{
	size_t npages = (c->ro_size + c->page - 1) / c->page;
	unsigned char *vec = calloc(npages, 1);
	struct vmsubst_invalidate_range r;
	void *map = MAP_FAILED;
	long n;

	read_all(c->ro_fd, c->ro_size);
	if (!vec || !invalidate(c, desc, &r, c->ro_fd, 0, c->ro_size,
				VMSUBST_INVALIDATE_F_REFAULT_SYNC))
		goto out;
	map = mmap(NULL, c->ro_size, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	n = map == MAP_FAILED ? -1 : resident(map, c->ro_size, c->page, vec);
	if (r.pages_dropped != npages || r.pages_refaulted != npages)
		fail(desc, COUNTS_FMT " refaulted %llu", COUNTS(&r),
		     (unsigned long long)r.pages_refaulted);
	else if (n != (long)npages)
		fail(desc, "%ld of %zu pages resident after the call", n,
		     npages);
	else
		pass(desc);
out:
	if (map != MAP_FAILED)
		munmap(map, c->ro_size);
	free(vec);
}

TEST(ro_refault_async, NEED_RO,
     "ro mount: F_REFAULT_ASYNC reports the pages it read ahead")
{
	size_t npages = (c->ro_size + c->page - 1) / c->page;
	struct vmsubst_invalidate_range r;

	/* Two pages into the file: readahead starts from the range's start. */
	if (!invalidate(c, desc, &r, c->ro_fd, c->page, c->ro_size,
			VMSUBST_INVALIDATE_F_REFAULT_ASYNC))
		return;
	if (r.pages_refaulted != npages - 1)
		fail(desc, "refaulted %llu want %zu",
		     (unsigned long long)r.pages_refaulted, npages - 1);
	else
		pass(desc);
}

TEST(ro_drop_only, NEED_RO,
     "ro mount: F_DROP alone keeps a mapped page, reported MAPPED")
{
	size_t npages = (c->ro_size + c->page - 1) / c->page;
	struct vmsubst_page_range out[4];
	struct vmsubst_invalidate_range r;
	volatile char sum;
	char *map;
	int got;

	memset(out, FILL, sizeof(out));
	read_all(c->ro_fd, c->ro_size);
	map = mmap(NULL, c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (map == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		return;
	}
	sum = map[0];
	(void)sum;
	/* Without ZAP the mapped page 0 stays; every other page goes. */
	inv_init(&r, c->ro_fd, 0, c->ro_size, VMSUBST_INVALIDATE_F_DROP);
	array_init(&r.outcomes, out, ARRAY_SIZE(out));
	got = xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, &r);
	if (got)
		fail(desc, "errno got %s want 0", errname(got));
	else if (r.pages_kept != 1 || r.pages_dropped != npages - 1)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else if (r.outcomes.count != 1 || r.outcomes.total != 1 ||
		 out[0].offset != 0 || out[0].length != (uint64_t)c->page ||
		 !(out[0].state & VMSUBST_PAGE_MAPPED) ||
		 (out[0].state & VMSUBST_PAGE_DROPPED) || out[0].reserved0)
		fail(desc,
		     "outcomes %u/%llu: offset %llu length %llu state %#x",
		     r.outcomes.count, (unsigned long long)r.outcomes.total,
		     (unsigned long long)out[0].offset,
		     (unsigned long long)out[0].length, out[0].state);
	else if (!all_fill(&out[1], sizeof(out) - sizeof(out[0])))
		fail(desc, "wrote past outcomes.count");
	else if (smaps_kb(getpid(), map, "Rss") != c->page / 1024)
		fail(desc, "the mapped page was unmapped");
	else
		pass(desc);
	munmap(map, c->page);
}

TEST(ro_zap_only, NEED_RO, "ro mount: F_ZAP alone unmaps, drops nothing")
{
	struct vmsubst_invalidate_range r;
	volatile char sum = 0;
	char *map;
	long rss_before, rss_after;

	map = mmap(NULL, c->ro_size, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (map == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		return;
	}
	for (off_t i = 0; i < c->ro_size; i += c->page)
		sum += map[i];
	rss_before = smaps_kb(getpid(), map, "Rss");
	if (!invalidate(c, desc, &r, c->ro_fd, 0, c->ro_size,
			VMSUBST_INVALIDATE_F_ZAP))
		goto out;
	rss_after = smaps_kb(getpid(), map, "Rss");
	if (r.pages_dropped || r.pages_kept ||
	    r.pages_mapped != r.pages_cached || !r.pages_cached)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else if (rss_before <= 0 || rss_after != 0)
		fail(desc, "Rss %ld kB before, %ld kB after", rss_before,
		     rss_after);
	else
		pass(desc);
out:
	munmap(map, c->ro_size);
}

TEST(ro_report_mappers, NEED_RO,
     "ro mount: F_REPORT_MAPPERS reports our own mapping")
{
	struct vmsubst_mapper m[4];
	struct vmsubst_invalidate_range r;
	char comm[16];
	void *map;
	int got;

	memset(m, FILL, sizeof(m));
	self_comm(comm);
	map = mmap(NULL, c->page, PROT_READ, MAP_SHARED, c->ro_fd, c->page);
	if (map == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		return;
	}
	inv_init(&r, c->ro_fd, 0, c->ro_size,
		 VMSUBST_INVALIDATE_F_REPORT_MAPPERS);
	array_init(&r.mappers, m, ARRAY_SIZE(m));
	got = xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, &r);
	if (got)
		fail(desc, "errno got %s want 0", errname(got));
	else if (r.mappers.count != 1 || r.mappers.total != 1)
		fail(desc, "mappers count %u total %llu", r.mappers.count,
		     (unsigned long long)r.mappers.total);
	else if (m[0].pid != getpid() || m[0].start != uptr(map) ||
		 m[0].end != uptr(map) + c->page ||
		 m[0].offset != (uint64_t)c->page ||
		 m[0].flags != VMSUBST_MAP_SHARED || strcmp(m[0].comm, comm))
		fail(desc,
		     "mapper pid %d %llx-%llx offset %llu flags %#x comm %.16s",
		     m[0].pid, (unsigned long long)m[0].start,
		     (unsigned long long)m[0].end,
		     (unsigned long long)m[0].offset, m[0].flags, m[0].comm);
	else
		pass(desc);
	munmap(map, c->page);
}

TEST(inv_mappers_without_flag, NEED_RO,
     "ro mount: no mappers reported without F_REPORT_MAPPERS")
{
	struct vmsubst_mapper m[1];
	struct vmsubst_invalidate_range r;
	void *map;
	int got;

	memset(m, FILL, sizeof(m));
	map = mmap(NULL, c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (map == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		return;
	}
	inv_init(&r, c->ro_fd, 0, c->ro_size, 0);
	array_init(&r.mappers, m, ARRAY_SIZE(m));
	got = xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, &r);
	if (got)
		fail(desc, "errno got %s want 0", errname(got));
	else if (r.mappers.count || r.mappers.total || !all_fill(m, sizeof(m)))
		fail(desc, "mappers reported without F_REPORT_MAPPERS");
	else
		pass(desc);
	munmap(map, c->page);
}

/*
 * Page 0 clean and mapped, pages 1-3 dirty. UNLESS_DIRTY over the whole
 * range: EBUSY, and nothing unmapped or dropped; over page 0 alone: done;
 * after fdatasync, over the whole range: done.
 */
TEST(ud_rw, NEED_RW,
     "rw mount: F_UNLESS_DIRTY: EBUSY with dirty pages, changes nothing; done once clean")
{
	const uint64_t npages = 4;
	struct vmsubst_invalidate_range r;
	struct vmsubst_query_pages q;
	size_t len = npages * c->page;
	char *buf = malloc(len), *map = MAP_FAILED;
	volatile char sum;
	int fd = rw_tmpfile(c);

	if (fd < 0 || !buf) {
		fail(desc, "temporary file: %s", strerror(errno));
		goto out;
	}
	memset(buf, 'u', len);
	if (pwrite(fd, buf, c->page, 0) != c->page || fdatasync(fd) ||
	    pwrite(fd, buf, len - c->page, c->page) !=
		    (ssize_t)(len - c->page)) {
		fail(desc, "write: %s", strerror(errno));
		goto out;
	}
	map = mmap(NULL, c->page, PROT_READ, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		goto out;
	}
	sum = map[0];
	(void)sum;
	if (!qpages(c, desc, &q, fd, 0, len, NULL, 0))
		goto out;
	if (q.pages_cached != npages || q.pages_mapped != 1 ||
	    q.pages_dirty != npages - 1) {
		fail(desc, "before: " QP_FMT, QP(&q));
		goto out;
	}
	inv_init(&r, fd, 0, len, VMSUBST_INVALIDATE_F_UNLESS_DIRTY);
	if (xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, &r) != EBUSY) {
		fail(desc, "dirty range: errno got %s want EBUSY",
		     errname(errno));
		goto out;
	}
	if (!inv_untouched(&r)) {
		fail(desc, "output written on failure");
		goto out;
	}
	if (!qpages(c, desc, &q, fd, 0, len, NULL, 0))
		goto out;
	if (q.pages_cached != npages || q.pages_mapped != 1 ||
	    q.pages_dirty != npages - 1) {
		fail(desc, "EBUSY changed something: " QP_FMT, QP(&q));
		goto out;
	}
	/* The clean page alone: no F_FORCE needed, unmapped and dropped. */
	if (!invalidate(c, desc, &r, fd, 0, c->page,
			VMSUBST_INVALIDATE_F_UNLESS_DIRTY))
		goto out;
	if (r.pages_cached != 1 || r.pages_mapped != 1 ||
	    r.pages_dropped != 1 || r.pages_kept) {
		fail(desc, "clean page: " COUNTS_FMT, COUNTS(&r));
		goto out;
	}
	if (fdatasync(fd)) {
		fail(desc, "fdatasync: %s", strerror(errno));
		goto out;
	}
	if (!invalidate(c, desc, &r, fd, 0, len,
			VMSUBST_INVALIDATE_F_UNLESS_DIRTY))
		goto out;
	if (r.pages_cached != npages - 1 || r.pages_dropped != npages - 1 ||
	    r.pages_kept)
		fail(desc, "after fdatasync: " COUNTS_FMT, COUNTS(&r));
	else if (!qpages(c, desc, &q, fd, 0, len, NULL, 0))
		goto out;
	else if (q.pages_cached)
		fail(desc, "left cached: " QP_FMT, QP(&q));
	else if (map[0] != 'u')
		fail(desc, "the mapping reads %#x after the refault", map[0]);
	else
		pass(desc);
out:
	if (map != MAP_FAILED)
		munmap(map, c->page);
	if (fd >= 0)
		close(fd);
	free(buf);
}

/* F_FORCE keeps its meaning; with F_UNLESS_DIRTY the check still applies. */
TEST(ud_rw_force, NEED_RW,
     "rw mount: F_FORCE | F_UNLESS_DIRTY still refuses a dirty page")
{
	struct vmsubst_invalidate_range r;
	char *buf = malloc(c->page);
	int fd = rw_tmpfile(c);

	if (fd < 0 || !buf) {
		fail(desc, "temporary file: %s", strerror(errno));
		goto out;
	}
	memset(buf, 'f', c->page);
	if (pwrite(fd, buf, c->page, 0) != c->page) {
		fail(desc, "write: %s", strerror(errno));
		goto out;
	}
	inv_init(&r, fd, 0, c->page,
		 VMSUBST_INVALIDATE_F_FORCE |
			 VMSUBST_INVALIDATE_F_UNLESS_DIRTY);
	expect_inv_errno(c, desc, &r, EBUSY);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
}

TEST(ud_ro, NEED_RO, "ro mount: F_UNLESS_DIRTY drops a clean file")
{
	struct vmsubst_invalidate_range r;
	struct vmsubst_query_pages q;

	if (!read_all(c->ro_fd, c->ro_size)) {
		fail(desc, "read: %s", strerror(errno));
		return;
	}
	if (!invalidate(c, desc, &r, c->ro_fd, 0, c->ro_size,
			VMSUBST_INVALIDATE_F_UNLESS_DIRTY) ||
	    !qpages(c, desc, &q, c->ro_fd, 0, c->ro_size, NULL, 0))
		return;
	if (r.pages_cached < 1 || r.pages_dropped != r.pages_cached ||
	    r.pages_kept)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else if (q.pages_cached)
		fail(desc, "left cached: " QP_FMT, QP(&q));
	else
		pass(desc);
}
