// SPDX-License-Identifier: GPL-2.0
/*
 * abi_test: the /dev/vmsubst ioctl ABI, from userspace, with TAP output.
 *
 * Usage: abi_test [--bdev DEVICE] [--only TEXT] [--list] [FILE...]
 *        (as root, vmsubst.ko loaded)
 *
 * Each FILE is classified by where it lives; at most one of each kind:
 *   - on a read-only mounted ext2/3/4 filesystem, of at least 3 pages: page
 *     cache counting, dropping, unmapping, refaulting, the mappers of the
 *     file, pinning them, inode and dentry revalidation (a tmpfs is mounted
 *     over the file's directory for a moment to test mount points, when
 *     that directory is not the filesystem's root);
 *   - on a read-write mounted block-device filesystem: EACCES without the
 *     F_FORCE flags, and dirty versus clean pages with them (a temporary
 *     file is made next to FILE; FILE itself is not written);
 *   - on a filesystem without a block device (tmpfs): ENOTBLK;
 *   - on a block-device filesystem other than ext2/3/4 (vfat): EMEDIUMTYPE
 *     from inode revalidation;
 *   - a DAX file (statx STATX_ATTR_DAX, e.g. ext4 -o dax on pmem):
 *     EMEDIUMTYPE from the file-range commands.
 * DEVICE is the block device of the read-only filesystem; without --bdev it
 * is found from the file (st_dev, /sys/dev/block/MAJ:MIN/uevent, /dev/NAME).
 * The block device of the read-write file is found the same way. Nothing
 * is ever written to a block device.
 * Cases for a kind not given are skipped with the reason.
 *
 * Output members and output arrays are filled with 0xcc before every call;
 * a failing call must leave them so. Exit status is 0 when every case passed.
 *
 * --only TEXT runs the cases whose name or description contains TEXT;
 * --list prints every case's name and description, in the order they run.
 * The cases live in one file per ioctl family (abi_*.c), registered by
 * TEST() (harness.h); this file is the runner.
 */
#include "harness.h"

#define ABI_TESTS_MAX 512

static struct abi_test *tests[ABI_TESTS_MAX];
static size_t ntests;
static unsigned int test_no;
static unsigned int failures;

void abi_register(struct abi_test *t)
{
	if (ntests == ABI_TESTS_MAX) {
		printf("Bail out! more than %d cases: raise ABI_TESTS_MAX\n",
		       ABI_TESTS_MAX);
		exit(1);
	}
	tests[ntests++] = t;
}

/* Families in their order, each file's cases in the order they are written. */
static int test_cmp(const void *a, const void *b)
{
	const struct abi_test *x = *(struct abi_test *const *)a;
	const struct abi_test *y = *(struct abi_test *const *)b;

	if (x->family != y->family)
		return x->family - y->family;
	return x->order - y->order;
}

static bool selected(const struct abi_test *t, const char *only)
{
	return !only || strstr(t->name, only) || strstr(t->desc, only);
}

void pass(const char *desc)
{
	printf("ok %u - %s\n", ++test_no, desc);
}

void fail(const char *desc, const char *fmt, ...)
{
	va_list ap;

	printf("not ok %u - %s # ", ++test_no, desc);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	failures++;
}

void skip(const char *desc, const char *why)
{
	printf("ok %u - %s # SKIP %s\n", ++test_no, desc, why);
}

static const char *const need_name[] = {
	[NEED_RO] = "a file on a read-only ext2/3/4 filesystem",
	[NEED_RW] = "a file on a read-write block-device filesystem",
	[NEED_NOBDEV] = "a file on a filesystem without a block device",
	[NEED_OTHERFS] =
		"a file on a block-device filesystem other than ext2/3/4",
	[NEED_DAX] = "a DAX file",
	[NEED_BDEV] = "the block device of the read-only filesystem",
	[NEED_RWBDEV] = "the block device of the read-write filesystem",
	[NEED_RO_SUBDIR] = "a read-only file below the root of its filesystem",
};

#ifndef STATX_ATTR_DAX
#define STATX_ATTR_DAX 0x00200000
#endif

static enum need classify(const char *path, struct stat *st)
{
	struct statvfs vfs;
	struct statfs fs;
	struct statx stx;

	if (stat(path, st) || statvfs(path, &vfs) || statfs(path, &fs) ||
	    statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &stx)) {
		printf("Bail out! %s: %s\n", path, strerror(errno));
		exit(1);
	}
	if (!S_ISREG(st->st_mode)) {
		printf("Bail out! %s: not a regular file\n", path);
		exit(1);
	}
	/* Filesystems without a block device get an anonymous dev_t. */
	if (major(st->st_dev) == 0)
		return NEED_NOBDEV;
	if ((stx.stx_attributes_mask & STATX_ATTR_DAX) &&
	    (stx.stx_attributes & STATX_ATTR_DAX))
		return NEED_DAX;
	if (fs.f_type != EXT4_MAGIC)
		return NEED_OTHERFS;
	return vfs.f_flag & ST_RDONLY ? NEED_RO : NEED_RW;
}

/* ro_dir, and ro_parent when the directory is not its filesystem's root. */
static void ro_dirs(struct ctx *c)
{
	struct stat d, p;
	char *slash;

	snprintf(c->ro_dir, sizeof(c->ro_dir), "%s", c->path[NEED_RO]);
	slash = strrchr(c->ro_dir, '/');
	if (!slash)
		snprintf(c->ro_dir, sizeof(c->ro_dir), ".");
	else if (slash == c->ro_dir)
		slash[1] = 0;
	else
		*slash = 0;
	if (!realpath(c->ro_dir, c->ro_parent))
		return;
	snprintf(c->ro_dir, sizeof(c->ro_dir), "%s", c->ro_parent);
	slash = strrchr(c->ro_parent, '/');
	if (!slash || !slash[1])
		goto none;
	snprintf(c->ro_dirname, sizeof(c->ro_dirname), "%s", slash + 1);
	if (slash == c->ro_parent)
		slash[1] = 0;
	else
		*slash = 0;
	if (stat(c->ro_dir, &d) || stat(c->ro_parent, &p) ||
	    d.st_dev != p.st_dev)
		goto none;
	c->path[NEED_RO_SUBDIR] = c->ro_dir;
	return;
none:
	c->ro_parent[0] = 0;
}

int main(int argc, char **argv)
{
	struct ctx c = { .ro_fd = -1, .bdev_fd = -1, .rwbdev_fd = -1 };
	const char *bdev = NULL, *only = NULL;
	bool list = false;
	size_t planned = 0;
	struct stat st;

	setvbuf(stdout, NULL, _IOLBF, 0);
	c.page = sysconf(_SC_PAGESIZE);

	for (int i = 1; i < argc; i++) {
		enum need kind;

		if (!strcmp(argv[i], "--bdev") && i + 1 < argc) {
			bdev = argv[++i];
			continue;
		}
		if (!strcmp(argv[i], "--only") && i + 1 < argc) {
			only = argv[++i];
			continue;
		}
		if (!strcmp(argv[i], "--list")) {
			list = true;
			continue;
		}
		kind = classify(argv[i], &st);
		if (c.path[kind]) {
			printf("Bail out! %s and %s: both %s\n", c.path[kind],
			       argv[i], need_name[kind]);
			return 1;
		}
		c.path[kind] = argv[i];
		if (kind == NEED_RO) {
			if (st.st_size < 3 * c.page) {
				printf("Bail out! %s: smaller than 3 pages\n",
				       argv[i]);
				return 1;
			}
			c.ro_size = st.st_size;
			c.ro_ino = st.st_ino;
			c.ro_fd = open(argv[i], O_RDONLY | O_CLOEXEC);
			if (c.ro_fd < 0) {
				printf("Bail out! %s: %s\n", argv[i],
				       strerror(errno));
				return 1;
			}
		}
	}

	qsort(tests, ntests, sizeof(*tests), test_cmp);
	if (list) {
		for (size_t i = 0; i < ntests; i++)
			if (selected(tests[i], only))
				printf("%s\t%s\n", tests[i]->name,
				       tests[i]->desc);
		return 0;
	}

	if (c.path[NEED_RO])
		ro_dirs(&c);
	if (bdev)
		snprintf(c.bdev_path[0], PATH_MAX, "%s", bdev);
	else if (c.path[NEED_RO])
		bdev_of(c.path[NEED_RO], c.bdev_path[0], PATH_MAX);
	if (c.bdev_path[0][0]) {
		c.bdev_fd = open(c.bdev_path[0], O_RDONLY | O_CLOEXEC);
		if (c.bdev_fd < 0) {
			printf("Bail out! %s: %s\n", c.bdev_path[0],
			       strerror(errno));
			return 1;
		}
		c.path[NEED_BDEV] = c.bdev_path[0];
		printf("# block device %s\n", c.bdev_path[0]);
	}
	if (c.path[NEED_RW] &&
	    bdev_of(c.path[NEED_RW], c.bdev_path[1], PATH_MAX)) {
		c.rwbdev_fd = open(c.bdev_path[1], O_RDONLY | O_CLOEXEC);
		if (c.rwbdev_fd >= 0)
			c.path[NEED_RWBDEV] = c.bdev_path[1];
	}

	c.dev = open("/dev/vmsubst", O_RDWR | O_CLOEXEC);
	if (c.dev < 0) {
		printf("Bail out! /dev/vmsubst: %s\n", strerror(errno));
		return 1;
	}
	/* Argument checks run on a file that would otherwise be accepted. */
	c.base_fd = c.ro_fd >= 0 ? c.ro_fd :
				   open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	c.dir_fd = open(c.ro_fd >= 0 ? c.ro_dir : "/",
			O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c.base_fd < 0 || c.dir_fd < 0) {
		printf("Bail out! /proc/self/exe or a directory: %s\n",
		       strerror(errno));
		return 1;
	}

	for (size_t i = 0; i < ntests; i++)
		planned += selected(tests[i], only);
	printf("1..%zu\n", planned);
	for (size_t i = 0; i < ntests; i++) {
		const struct abi_test *t = tests[i];

		if (!selected(t, only))
			continue;
		if (t->need != NEED_NONE && !c.path[t->need]) {
			char why[96];

			snprintf(why, sizeof(why), "needs %s",
				 need_name[t->need]);
			skip(t->desc, why);
			continue;
		}
		c.cmd = t->cmd;
		t->fn(&c, t->desc);
	}
	return failures ? 1 : 0;
}
