// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_INVALIDATE_BDEV: the fd kinds, the device's end, a device a
 * read-write filesystem holds, and what stays of a mounted ext4's buffers.
 */
#include "harness.h"

#define ABI_FAMILY ABI_FAMILY_BDEV
#define ABI_CMD	   (&CMD_BDEV)

GENERIC(bd, "bdev", &CMD_BDEV)
RESERVED(bd, "bdev", &CMD_BDEV)
FILE_RANGE(bd, "bdev", &CMD_BDEV)

static void bd_fd_case(struct ctx *c, const char *desc, int fd, int want)
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, fd, 0, c->page, 0);
	expect_errno(c, desc, &r, want);
}

TEST(bd_regular, NEED_NONE, "bdev: regular file fd returns ENOTBLK")
{
	bd_fd_case(c, desc, c->base_fd, ENOTBLK);
}

TEST(bd_chardev, NEED_NONE, "bdev: character device fd returns ENOTBLK")
{
	bd_fd_case(c, desc, c->dev, ENOTBLK);
}

TEST(bd_dir, NEED_NONE, "bdev: directory fd returns ENOTBLK")
{
	bd_fd_case(c, desc, c->dir_fd, ENOTBLK);
}

ARRAY_CASES(bd_kept, "bdev: kept", struct vmsubst_invalidate_bdev, kept,
	    VMSUBST_RANGES_MAX, &CMD_BDEV)

static off_t bdev_size(int fd)
{
	return lseek(fd, 0, SEEK_END);
}

TEST(bd_past_end, NEED_BDEV,
     "bdev: range past the end of the device returns ENXIO")
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, c->bdev_fd, bdev_size(c->bdev_fd) - c->page, 2 * c->page,
		0);
	expect_errno(c, desc, &r, ENXIO);
}

TEST(bd_at_end, NEED_BDEV,
     "bdev: range starting at the end of the device returns ENXIO")
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, c->bdev_fd, bdev_size(c->bdev_fd), 1, 0);
	expect_errno(c, desc, &r, ENXIO);
}

TEST(bd_rw_noforce, NEED_RWBDEV,
     "bdev: device of a rw mount without F_FORCE returns EACCES")
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, c->rwbdev_fd, 0, c->page, 0);
	expect_errno(c, desc, &r, EACCES);
}

TEST(bd_rw_force, NEED_RWBDEV,
     "bdev: device of a rw mount with F_FORCE keeps the superblock")
{
	struct vmsubst_invalidate_bdev r;

	/* The superblock page: pinned by the mounted filesystem, kept. */
	bd_init(&r, c->rwbdev_fd, 0, c->page, VMSUBST_BDEV_F_FORCE);
	if (!expect_ok(c, desc, &r))
		return;
	if (r.pages_kept != 1 || r.kept.total != 1 || r.kept.count != 0)
		fail(desc, "cached %llu dropped %llu kept %llu, ranges %llu",
		     (unsigned long long)r.pages_cached,
		     (unsigned long long)r.pages_dropped,
		     (unsigned long long)r.pages_kept,
		     (unsigned long long)r.kept.total);
	else
		pass(desc);
}

TEST(bd_superblock, NEED_BDEV,
     "bdev: ro ext4 keeps the superblock page, reported BUSY")
{
	struct vmsubst_page_range kept[8];
	struct vmsubst_invalidate_bdev r;
	uint64_t sum = 0;

	memset(kept, FILL, sizeof(kept));
	bd_init(&r, c->bdev_fd, 0, 1 << 20, 0);
	array_init(&r.kept, kept, ARRAY_SIZE(kept));
	if (!expect_ok(c, desc, &r))
		return;
	for (uint32_t i = 0; i < r.kept.count && i < ARRAY_SIZE(kept); i++)
		sum += kept[i].length / c->page;
	if (r.kept.count < 1 || kept[0].offset != 0 ||
	    !(kept[0].state & VMSUBST_PAGE_BUSY) || kept[0].reserved0)
		fail(desc, "kept %u/%llu, first at %llu length %llu state %#x",
		     r.kept.count, (unsigned long long)r.kept.total,
		     (unsigned long long)kept[0].offset,
		     (unsigned long long)kept[0].length, kept[0].state);
	else if (r.kept.total != r.kept.count || sum != r.pages_kept ||
		 r.pages_cached != r.pages_kept + r.pages_dropped)
		fail(desc,
		     "ranges %u/%llu cover %llu pages; cached %llu dropped %llu kept %llu",
		     r.kept.count, (unsigned long long)r.kept.total,
		     (unsigned long long)sum,
		     (unsigned long long)r.pages_cached,
		     (unsigned long long)r.pages_dropped,
		     (unsigned long long)r.pages_kept);
	else if (!all_fill(&kept[r.kept.count],
			   (ARRAY_SIZE(kept) - r.kept.count) * sizeof(kept[0])))
		fail(desc, "wrote past kept.count");
	else {
		printf("# superblock page kept: %u ranges, %llu pages kept, %llu dropped\n",
		       r.kept.count, (unsigned long long)r.pages_kept,
		       (unsigned long long)r.pages_dropped);
		pass(desc);
	}
}

TEST(bd_truncated, NEED_BDEV,
     "bdev: no kept array still counts the kept ranges")
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, c->bdev_fd, 0, 1 << 20, 0);
	if (!expect_ok(c, desc, &r))
		return;
	if (r.kept.count != 0 || r.kept.total < 1 || r.pages_kept < 1)
		fail(desc, "kept count %u total %llu pages %llu", r.kept.count,
		     (unsigned long long)r.kept.total,
		     (unsigned long long)r.pages_kept);
	else
		pass(desc);
}

TEST(bd_drops_data, NEED_BDEV,
     "bdev: pages read through the device node are dropped")
{
	off_t size = bdev_size(c->bdev_fd), start = size - 16 * c->page;
	struct vmsubst_invalidate_bdev r;
	char buf[4096];

	/* The device's last 64 KiB, read through its page cache. */
	for (off_t o = start; o < size; o += sizeof(buf))
		if (pread(c->bdev_fd, buf, sizeof(buf), o) !=
		    (ssize_t)sizeof(buf)) {
			fail(desc, "pread: %s", strerror(errno));
			return;
		}
	bd_init(&r, c->bdev_fd, start, size - start, 0);
	if (!expect_ok(c, desc, &r))
		return;
	if (r.pages_cached != 16 || r.pages_dropped != 16 || r.pages_kept ||
	    r.kept.total)
		fail(desc, "cached %llu dropped %llu kept %llu",
		     (unsigned long long)r.pages_cached,
		     (unsigned long long)r.pages_dropped,
		     (unsigned long long)r.pages_kept);
	else
		pass(desc);
}
