// SPDX-License-Identifier: GPL-2.0
/*
 * abi_test: the /dev/vmsubst ioctl ABI, from userspace, with TAP output.
 *
 * Usage: abi_test [--bdev DEVICE] [FILE...]   (as root, vmsubst.ko loaded)
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
 */
#define _GNU_SOURCE
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/capability.h>

#include <uapi/linux/vmsubst.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define FILL 0xcc
#define EXT4_MAGIC 0xEF53

/* Exit codes of the capability-dropping child that are not an errno. */
#define CHILD_SUCCEEDED 250
#define CHILD_TOUCHED	251
#define CHILD_CAPSET	252

enum need {
	NEED_NONE, NEED_RO, NEED_RW, NEED_NOBDEV, NEED_OTHERFS, NEED_DAX,
	NEED_BDEV, NEED_RWBDEV, NEED_RO_SUBDIR,
};

struct cmd_desc;

struct ctx {
	int dev;
	long page;
	int base_fd;			/* a regular file, for argument checks */
	int dir_fd;			/* a directory, for argument checks */
	const char *path[9];		/* indexed by enum need */
	char bdev_path[2][PATH_MAX];	/* found for NEED_BDEV, NEED_RWBDEV */
	int ro_fd;
	off_t ro_size;
	ino_t ro_ino;
	char ro_dir[PATH_MAX];		/* directory of the read-only file */
	char ro_parent[PATH_MAX];	/* its parent, on the same filesystem */
	char ro_dirname[NAME_MAX + 1];	/* name of ro_dir in ro_parent */
	const struct cmd_desc *cmd;	/* of generic cases */
};

static unsigned int test_no;
static unsigned int failures;

static void pass(const char *desc)
{
	printf("ok %u - %s\n", ++test_no, desc);
}

static void __attribute__((format(printf, 2, 3)))
fail(const char *desc, const char *fmt, ...)
{
	va_list ap;

	printf("not ok %u - %s # ", ++test_no, desc);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	failures++;
}

static void skip(const char *desc, const char *why)
{
	printf("ok %u - %s # SKIP %s\n", ++test_no, desc, why);
}

static const char *errname(int err)
{
	const char *name = err ? strerrorname_np(err) : "0";

	return name ? name : "?";
}

static bool all_fill(const void *p, size_t len)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < len; i++)
		if (b[i] != FILL)
			return false;
	return true;
}

static bool all_zero(const void *p, size_t len)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < len; i++)
		if (b[i])
			return false;
	return true;
}

#define FILLED(member) all_fill(&(member), sizeof(member))

static int xioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) ? errno : 0;
}

static uint64_t uptr(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

static void array_init(struct vmsubst_array *a, void *items, uint32_t cap)
{
	a->addr = uptr(items);
	a->cap = cap;
}

static bool array_untouched(const struct vmsubst_array *a)
{
	return FILLED(a->count) && FILLED(a->total);
}

/* Output region of each struct: checked to be untouched after a failure. */
#define VER_OUT offsetof(struct vmsubst_version, abi_version)
#define INV_OUT offsetof(struct vmsubst_invalidate_range, pages_cached)

static bool ver_untouched(const struct vmsubst_version *v)
{
	return all_fill(&v->abi_version, sizeof(v->abi_version)) &&
	       all_fill(&v->features, sizeof(v->features)) &&
	       all_fill(v->module_version, sizeof(v->module_version));
}

static bool inv_untouched(const struct vmsubst_invalidate_range *r)
{
	return all_fill((const char *)r + INV_OUT,
			VMSUBST_INVALIDATE_RANGE_SIZE_VER0 - INV_OUT) &&
	       array_untouched(&r->outcomes) && array_untouched(&r->mappers) &&
	       FILLED(r->pages_refaulted);
}

static void ver_init(struct vmsubst_version *v)
{
	memset(v, FILL, sizeof(*v));
	v->size = sizeof(*v);
	v->flags = 0;
	v->reserved0 = 0;
}

static void inv_init(struct vmsubst_invalidate_range *r, int fd,
		     uint64_t offset, uint64_t length, uint32_t flags)
{
	memset(r, FILL, sizeof(*r));
	r->size = sizeof(*r);
	r->flags = flags;
	r->fd = fd;
	r->reserved0 = 0;
	r->offset = offset;
	r->length = length;
	array_init(&r->outcomes, NULL, 0);
	array_init(&r->mappers, NULL, 0);
}

static void expect_ver_errno(struct ctx *c, const char *desc, unsigned long cmd,
			     struct vmsubst_version *v, int want)
{
	int got = xioctl(c->dev, cmd, v);

	if (got != want)
		fail(desc, "errno got %s want %s", errname(got), errname(want));
	else if (!ver_untouched(v))
		fail(desc, "output written on failure");
	else
		pass(desc);
}

static void expect_inv_errno(struct ctx *c, const char *desc,
			     struct vmsubst_invalidate_range *r, int want)
{
	int got = xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, r);

	if (got != want)
		fail(desc, "errno got %s want %s", errname(got), errname(want));
	else if (!inv_untouched(r))
		fail(desc, "output written on failure");
	else
		pass(desc);
}

/* Runs one invalidation that must succeed; reports and returns false if not. */
static bool invalidate(struct ctx *c, const char *desc,
		       struct vmsubst_invalidate_range *r, int fd,
		       uint64_t offset, uint64_t length, uint32_t flags)
{
	int got;

	inv_init(r, fd, offset, length, flags);
	got = xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, r);
	if (got) {
		fail(desc, "errno got %s want 0", errname(got));
		return false;
	}
	return true;
}

#define COUNTS_FMT "cached %llu mapped %llu dropped %llu kept %llu"
#define COUNTS(r) (unsigned long long)(r)->pages_cached,		\
		  (unsigned long long)(r)->pages_mapped,		\
		  (unsigned long long)(r)->pages_dropped,		\
		  (unsigned long long)(r)->pages_kept

static bool read_all(int fd, off_t size)
{
	char buf[65536];
	off_t done = 0;

	while (done < size) {
		ssize_t n = pread(fd, buf, sizeof(buf), done);

		if (n <= 0)
			return false;
		done += n;
	}
	return true;
}

/* Number of pages of [0, len) of @addr in the page cache; -1 on error. */
static long resident(void *addr, size_t len, long page, unsigned char *vec)
{
	long n = 0;

	if (mincore(addr, len, vec))
		return -1;
	for (size_t i = 0; i < (len + page - 1) / page; i++)
		n += vec[i] & 1;
	return n;
}

/* A "Field:" of the mapping of @pid starting at @start in smaps, in kB; -1 if absent. */
static long smaps_kb(pid_t pid, void *start, const char *field)
{
	char path[64], line[512], want[32];
	bool in = false;
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	snprintf(want, sizeof(want), "%lx-", (unsigned long)(uintptr_t)start);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		size_t flen = strlen(field);

		if (strchr(line, '-') && strchr(line, '-') < strchr(line, ' ') &&
		    line[0] != ' ') {
			if (in)
				break;
			in = !strncmp(line, want, strlen(want));
			continue;
		}
		if (in && !strncmp(line, field, flen) && line[flen] == ':') {
			kb = strtol(line + flen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return kb;
}

static void self_comm(char comm[16])
{
	FILE *f = fopen("/proc/self/comm", "re");

	memset(comm, 0, 16);
	if (f) {
		if (fgets(comm, 16, f))
			comm[strcspn(comm, "\n")] = 0;
		fclose(f);
	}
}

/* The /dev node of the block device @path lives on; false if none. */
static bool bdev_of(const char *path, char *out, size_t len)
{
	char uevent[64], line[256];
	struct stat st;
	bool found = false;
	FILE *f;

	if (stat(path, &st) || major(st.st_dev) == 0)
		return false;
	snprintf(uevent, sizeof(uevent), "/sys/dev/block/%u:%u/uevent",
		 major(st.st_dev), minor(st.st_dev));
	f = fopen(uevent, "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "DEVNAME=", 8)) {
			line[strcspn(line, "\n")] = 0;
			snprintf(out, len, "/dev/%s", line + 8);
			found = true;
		}
	}
	fclose(f);
	return found && access(out, R_OK) == 0;
}

/* ---- dispatch and struct handling ---------------------------------- */

static void t_unknown_nr(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;

	ver_init(&v);
	expect_ver_errno(c, desc,
			 _IOWR(VMSUBST_IOC_MAGIC, 0x3f, struct vmsubst_version),
			 &v, ENOTTY);
}

static void t_foreign_type(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;

	ver_init(&v);
	expect_ver_errno(c, desc, _IOWR('x', 0x00, struct vmsubst_version),
			 &v, ENOTTY);
}

static void t_wrong_dir(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;

	ver_init(&v);
	expect_ver_errno(c, desc,
			 _IOR(VMSUBST_IOC_MAGIC, 0x00, struct vmsubst_version),
			 &v, ENOTTY);
}

static void t_ver_null(struct ctx *c, const char *desc)
{
	int got = xioctl(c->dev, VMSUBST_IOC_VERSION, NULL);

	if (got != EFAULT)
		fail(desc, "errno got %s want EFAULT", errname(got));
	else
		pass(desc);
}

static void t_ver_small(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;

	ver_init(&v);
	v.size = VMSUBST_VERSION_SIZE_VER0 - 8;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, &v, EINVAL);
}

static void t_ver_zero_size(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;

	ver_init(&v);
	v.size = 0;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, &v, EINVAL);
}

struct big_version {
	struct vmsubst_version v;
	uint64_t tail[2];
};

static void t_ver_big_dirty(struct ctx *c, const char *desc)
{
	struct big_version b;

	ver_init(&b.v);
	b.v.size = sizeof(b);
	b.tail[0] = 0;
	b.tail[1] = 1;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, &b.v, E2BIG);
}

static void t_ver_big_clean(struct ctx *c, const char *desc)
{
	struct big_version b;
	int got;

	ver_init(&b.v);
	b.v.size = sizeof(b);
	memset(b.tail, 0, sizeof(b.tail));
	got = xioctl(c->dev, VMSUBST_IOC_VERSION, &b.v);
	if (got)
		fail(desc, "errno got %s want 0", errname(got));
	else if (b.v.abi_version != VMSUBST_ABI_VERSION)
		fail(desc, "abi_version %u", b.v.abi_version);
	else if (b.v.size != sizeof(b) || !all_zero(b.tail, sizeof(b.tail)))
		fail(desc, "size member or unknown tail was written");
	else
		pass(desc);
}

static void t_ver_huge(struct ctx *c, const char *desc)
{
	size_t len = 2 * c->page;
	struct vmsubst_version *v = calloc(1, len);

	if (!v) {
		fail(desc, "calloc: %s", strerror(errno));
		return;
	}
	ver_init(v);
	v->size = len;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, v, E2BIG);
	free(v);
}

static void t_ver_flag(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;

	ver_init(&v);
	v.flags = 1;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, &v, EOPNOTSUPP);
}

static void t_ver_reserved(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;

	ver_init(&v);
	v.reserved0 = 1;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, &v, EINVAL);
}

#define ALL_FEATURES							\
	(VMSUBST_FEATURE_INVALIDATE_RANGE |				\
	 VMSUBST_FEATURE_INVALIDATE_RANGE_V1 |				\
	 VMSUBST_FEATURE_INVALIDATE_BDEV |				\
	 VMSUBST_FEATURE_REVALIDATE_INODES |				\
	 VMSUBST_FEATURE_REVALIDATE_DENTRIES |				\
	 VMSUBST_FEATURE_QUERY_MAPPERS | VMSUBST_FEATURE_PIN_MAPPERS |	\
	 VMSUBST_FEATURE_QUERY_PAGES |					\
	 VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY |			\
	 VMSUBST_FEATURE_PIN_CURSOR |					\
	 VMSUBST_FEATURE_REVALIDATE_REPLACED)

static void t_ver_ok(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;
	int got;

	ver_init(&v);
	got = xioctl(c->dev, VMSUBST_IOC_VERSION, &v);
	if (got)
		fail(desc, "errno got %s want 0", errname(got));
	else if (v.abi_version != VMSUBST_ABI_VERSION)
		fail(desc, "abi_version got %u want %u", v.abi_version,
		     VMSUBST_ABI_VERSION);
	else if ((v.features & ALL_FEATURES) != ALL_FEATURES)
		fail(desc, "features %#llx lack some of %#llx",
		     (unsigned long long)v.features,
		     (unsigned long long)ALL_FEATURES);
	else if (!memchr(v.module_version, 0, sizeof(v.module_version)) ||
		 !v.module_version[0] ||
		 !all_zero(v.module_version + strlen(v.module_version),
			   sizeof(v.module_version) - strlen(v.module_version)))
		fail(desc, "module_version not a NUL-padded string");
	else if (v.reserved0 || v.size != sizeof(v) || v.flags)
		fail(desc, "input members changed");
	else {
		printf("# module_version %s features %#llx\n", v.module_version,
		       (unsigned long long)v.features);
		pass(desc);
	}
}

/* ---- invalidate: argument checks ----------------------------------- */

static void t_inv_null(struct ctx *c, const char *desc)
{
	int got = xioctl(c->dev, VMSUBST_IOC_INVALIDATE_RANGE, NULL);

	if (got != EFAULT)
		fail(desc, "errno got %s want EFAULT", errname(got));
	else
		pass(desc);
}

static void t_inv_small(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page, 0);
	r.size = VMSUBST_INVALIDATE_RANGE_SIZE_VER0 - 8;
	expect_inv_errno(c, desc, &r, EINVAL);
}

static void t_inv_flag(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page, 1U << 31);
	expect_inv_errno(c, desc, &r, EOPNOTSUPP);
}

static void t_inv_reserved(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page, 0);
	r.reserved0 = 1;
	expect_inv_errno(c, desc, &r, EINVAL);
}

static void t_inv_len0(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, 0, 0);
	expect_inv_errno(c, desc, &r, EINVAL);
}

static void t_inv_wrap(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, UINT64_MAX - c->page + 1, 2 * c->page, 0);
	expect_inv_errno(c, desc, &r, EOVERFLOW);
}

static void t_inv_past_max(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, LLONG_MAX, 1, 0);
	expect_inv_errno(c, desc, &r, EOVERFLOW);
}

static void t_inv_fd_neg(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, -1, 0, c->page, 0);
	expect_inv_errno(c, desc, &r, EBADF);
}

static void t_inv_fd_closed(struct ctx *c, const char *desc)
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

static void t_inv_fd_path(struct ctx *c, const char *desc)
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

static void t_inv_dir(struct ctx *c, const char *desc)
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

static void t_inv_chardev(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	/* The device itself: a character device, not a regular file. */
	inv_init(&r, c->dev, 0, c->page, 0);
	expect_inv_errno(c, desc, &r, EINVAL);
}

/* ---- privilege ------------------------------------------------------ */

static int drop_cap_sys_admin(void)
{
	struct __user_cap_header_struct hdr = {
		.version = _LINUX_CAPABILITY_VERSION_3,
	};
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

	if (syscall(SYS_capget, &hdr, data))
		return -1;
	data[CAP_TO_INDEX(CAP_SYS_ADMIN)].effective &=
		~CAP_TO_MASK(CAP_SYS_ADMIN);
	return syscall(SYS_capset, &hdr, data);
}

/* errno of @cmd in a child without CAP_SYS_ADMIN, or a CHILD_* code. */
static int errno_unprivileged(int dev, unsigned long cmd, void *arg,
			      bool (*untouched)(const void *))
{
	int status;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -1;
	if (!pid) {
		if (drop_cap_sys_admin())
			_exit(CHILD_CAPSET);
		if (!ioctl(dev, cmd, arg))
			_exit(CHILD_SUCCEEDED);
		_exit(untouched(arg) ? errno : CHILD_TOUCHED);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static bool ver_untouched_cb(const void *p)
{
	return ver_untouched(p);
}

static bool inv_untouched_cb(const void *p)
{
	return inv_untouched(p);
}

static void report_unprivileged(const char *desc, int got)
{
	if (got == EPERM)
		pass(desc);
	else if (got == CHILD_CAPSET)
		fail(desc, "capset failed in the child");
	else if (got == CHILD_TOUCHED)
		fail(desc, "output written on failure");
	else if (got == CHILD_SUCCEEDED)
		fail(desc, "errno got 0 want EPERM");
	else if (got < 0)
		fail(desc, "child did not exit normally");
	else
		fail(desc, "errno got %s want EPERM", errname(got));
}

static void t_eperm_version(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;

	ver_init(&v);
	report_unprivileged(desc, errno_unprivileged(c->dev, VMSUBST_IOC_VERSION,
						     &v, ver_untouched_cb));
}

static void t_eperm_unknown(struct ctx *c, const char *desc)
{
	struct vmsubst_version v;

	ver_init(&v);
	report_unprivileged(desc, errno_unprivileged(c->dev,
		_IOWR(VMSUBST_IOC_MAGIC, 0x3f, struct vmsubst_version),
		&v, ver_untouched_cb));
}

static void t_eperm_invalidate(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page, 0);
	report_unprivileged(desc, errno_unprivileged(c->dev,
		VMSUBST_IOC_INVALIDATE_RANGE, &r, inv_untouched_cb));
}

/* ---- filesystem without a block device ----------------------------- */

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

static void t_nobdev(struct ctx *c, const char *desc)
{
	nobdev(c, desc, 0);
}

static void t_nobdev_force(struct ctx *c, const char *desc)
{
	nobdev(c, desc, VMSUBST_INVALIDATE_F_FORCE);
}

/* ---- read-write block-device filesystem ---------------------------- */

/* A fresh file next to the given one, unlinked at once. */
static int rw_tmpfile(struct ctx *c)
{
	char tmpl[PATH_MAX];
	const char *slash = strrchr(c->path[NEED_RW], '/');
	int dirlen = slash ? (int)(slash - c->path[NEED_RW]) : 1;
	int fd;

	snprintf(tmpl, sizeof(tmpl), "%.*s/.abi_test.XXXXXX", dirlen,
		 slash ? c->path[NEED_RW] : ".");
	fd = mkostemp(tmpl, O_CLOEXEC);
	if (fd >= 0)
		unlink(tmpl);
	return fd;
}

static void t_rw_noforce(struct ctx *c, const char *desc)
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

static void t_rw_dirty(struct ctx *c, const char *desc)
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

static void t_rw_dirty_outcomes(struct ctx *c, const char *desc)
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
	    pwrite(fd, buf, len - c->page, c->page) != (ssize_t)(len - c->page)) {
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
		fail(desc, "outcomes %u/%llu: offset %llu length %llu state %#x",
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

/* ---- read-only block-device filesystem ----------------------------- */

static void t_ro_drop(struct ctx *c, const char *desc)
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

static void t_ro_again(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	if (!invalidate(c, desc, &r, c->ro_fd, 0, c->ro_size, 0))
		return;
	if (r.pages_cached || r.pages_mapped || r.pages_dropped || r.pages_kept)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else
		pass(desc);
}

static void t_ro_beyond_eof(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	if (!read_all(c->ro_fd, c->ro_size)) {
		fail(desc, "read: %s", strerror(errno));
		return;
	}
	if (!invalidate(c, desc, &r, c->ro_fd, c->ro_size + (1 << 20),
			c->page, 0))
		return;
	if (r.pages_cached || r.pages_mapped || r.pages_dropped || r.pages_kept)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else
		pass(desc);
}

static void t_ro_clamp(struct ctx *c, const char *desc)
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

static void t_ro_bounded(struct ctx *c, const char *desc)
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

static void t_ro_mapped(struct ctx *c, const char *desc)
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

static void t_ro_private_cow(struct ctx *c, const char *desc)
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

static void t_ro_force(struct ctx *c, const char *desc)
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

/* ---- the commands added with ABI features 1-6: generic cases ------------- */

union anyarg {
	struct vmsubst_invalidate_range ir;
	struct vmsubst_invalidate_bdev bd;
	struct vmsubst_revalidate_inodes ri;
	struct vmsubst_revalidate_dentries rd;
	struct vmsubst_query_mappers qm;
	struct vmsubst_pin_mappers pm;
	struct vmsubst_query_pages qp;
	uint64_t align[32];
};

/**
 * struct cmd_desc - what the generic cases need to know of a command
 * @cmd:       the command number
 * @size:      sizeof its struct
 * @ver0:      its *_SIZE_VER0
 * @reserved:  offsetof its reserved0, 0 when it has none
 * @init:      fills @arg with valid arguments and 0xcc outputs
 * @untouched: whether every output member of @arg still holds 0xcc
 */
struct cmd_desc {
	unsigned long cmd;
	size_t size;
	size_t ver0;
	size_t reserved;
	void (*init)(struct ctx *c, void *arg);
	bool (*untouched)(const void *arg);
};

static uint64_t root_ino = 2;

static int bdev_fd = -1;		/* NEED_BDEV, opened read-only */
static int rwbdev_fd = -1;		/* NEED_RWBDEV */

static void bd_init(struct vmsubst_invalidate_bdev *r, int fd, uint64_t offset,
		    uint64_t length, uint32_t flags)
{
	memset(r, FILL, sizeof(*r));
	r->size = sizeof(*r);
	r->flags = flags;
	r->fd = fd;
	r->reserved0 = 0;
	r->offset = offset;
	r->length = length;
	array_init(&r->kept, NULL, 0);
}

static bool bd_untouched(const void *p)
{
	const struct vmsubst_invalidate_bdev *r = p;

	return array_untouched(&r->kept) && FILLED(r->pages_cached) &&
	       FILLED(r->pages_dropped) && FILLED(r->pages_kept);
}

static void bd_valid(struct ctx *c, void *arg)
{
	bd_init(arg, bdev_fd >= 0 ? bdev_fd : c->base_fd, 0, c->page, 0);
}

static void ri_init(struct vmsubst_revalidate_inodes *r, int fd,
		    const uint64_t *inos, uint32_t n, uint32_t flags)
{
	memset(r, FILL, sizeof(*r));
	r->size = sizeof(*r);
	r->flags = flags;
	r->fd = fd;
	r->nr_inodes = n;
	r->inodes = uptr(inos);
	array_init(&r->in_use, NULL, 0);
}

static bool ri_untouched(const void *p)
{
	const struct vmsubst_revalidate_inodes *r = p;

	return array_untouched(&r->in_use) && FILLED(r->evicted) &&
	       FILLED(r->not_cached);
}

static void ri_valid(struct ctx *c, void *arg)
{
	ri_init(arg, c->base_fd, &root_ino, 1, 0);
}

static void rd_init(struct vmsubst_revalidate_dentries *r, int fd,
		    const void *names, uint32_t nr, uint32_t names_size,
		    uint32_t flags)
{
	memset(r, FILL, sizeof(*r));
	r->size = sizeof(*r);
	r->flags = flags;
	r->fd = fd;
	r->nr_names = nr;
	r->names = uptr(names);
	r->names_size = names_size;
	r->reserved0 = 0;
}

static bool rd_untouched(const void *p)
{
	const struct vmsubst_revalidate_dentries *r = p;

	return FILLED(r->dropped) && FILLED(r->not_cached) && FILLED(r->busy) &&
	       FILLED(r->mountpoints);
}

static void rd_valid(struct ctx *c, void *arg)
{
	rd_init(arg, c->dir_fd, NULL, 0, 0, 0);
}

static void qm_init(struct vmsubst_query_mappers *r, int fd, uint64_t offset,
		    uint64_t length, void *items, uint32_t cap)
{
	memset(r, FILL, sizeof(*r));
	r->size = sizeof(*r);
	r->flags = 0;
	r->fd = fd;
	r->reserved0 = 0;
	r->offset = offset;
	r->length = length;
	array_init(&r->mappers, items, cap);
}

static bool qm_untouched(const void *p)
{
	return array_untouched(&((const struct vmsubst_query_mappers *)p)->mappers);
}

static void qm_valid(struct ctx *c, void *arg)
{
	qm_init(arg, c->base_fd, 0, c->page, NULL, 0);
}

static void pm_init(struct vmsubst_pin_mappers *r, int fd, uint64_t offset,
		    uint64_t length, uint32_t max_pages)
{
	memset(r, FILL, sizeof(*r));
	r->size = sizeof(*r);
	r->flags = 0;
	r->fd = fd;
	r->max_pages = max_pages;
	r->offset = offset;
	r->length = length;
	array_init(&r->pinned, NULL, 0);
	array_init(&r->unpinned, NULL, 0);
}

static bool pm_untouched(const void *p)
{
	const struct vmsubst_pin_mappers *r = p;

	return array_untouched(&r->pinned) && array_untouched(&r->unpinned) &&
	       FILLED(r->bytes_copied) && FILLED(r->bytes_private) &&
	       FILLED(r->bytes_failed) && FILLED(r->status) &&
	       FILLED(r->mappings) && FILLED(r->cursor_mm) &&
	       FILLED(r->cursor_addr);
}

static void pm_valid(struct ctx *c, void *arg)
{
	pm_init(arg, c->base_fd, 0, c->page, 1);
}

static void qp_init(struct vmsubst_query_pages *r, int fd, uint64_t offset,
		    uint64_t length, void *items, uint32_t cap)
{
	memset(r, FILL, sizeof(*r));
	r->size = sizeof(*r);
	r->flags = 0;
	r->fd = fd;
	r->reserved0 = 0;
	r->offset = offset;
	r->length = length;
	array_init(&r->ranges, items, cap);
}

static bool qp_untouched(const void *p)
{
	const struct vmsubst_query_pages *r = p;

	return array_untouched(&r->ranges) && FILLED(r->pages_cached) &&
	       FILLED(r->pages_mapped) && FILLED(r->pages_dirty) &&
	       FILLED(r->pages_writeback);
}

static void qp_valid(struct ctx *c, void *arg)
{
	qp_init(arg, c->base_fd, 0, c->page, NULL, 0);
}

static bool ir_untouched(const void *p)
{
	return inv_untouched(p);
}

static void ir_valid(struct ctx *c, void *arg)
{
	inv_init(arg, c->base_fd, 0, c->page, 0);
}

static const struct cmd_desc CMD_INV = {
	VMSUBST_IOC_INVALIDATE_RANGE, sizeof(struct vmsubst_invalidate_range),
	VMSUBST_INVALIDATE_RANGE_SIZE_VER0,
	offsetof(struct vmsubst_invalidate_range, reserved0),
	ir_valid, ir_untouched,
};
static const struct cmd_desc CMD_BDEV = {
	VMSUBST_IOC_INVALIDATE_BDEV, sizeof(struct vmsubst_invalidate_bdev),
	VMSUBST_INVALIDATE_BDEV_SIZE_VER0,
	offsetof(struct vmsubst_invalidate_bdev, reserved0),
	bd_valid, bd_untouched,
};
static const struct cmd_desc CMD_INODES = {
	VMSUBST_IOC_REVALIDATE_INODES, sizeof(struct vmsubst_revalidate_inodes),
	VMSUBST_REVALIDATE_INODES_SIZE_VER0, 0, ri_valid, ri_untouched,
};
static const struct cmd_desc CMD_DENTRIES = {
	VMSUBST_IOC_REVALIDATE_DENTRIES,
	sizeof(struct vmsubst_revalidate_dentries),
	VMSUBST_REVALIDATE_DENTRIES_SIZE_VER0,
	offsetof(struct vmsubst_revalidate_dentries, reserved0),
	rd_valid, rd_untouched,
};
static const struct cmd_desc CMD_QUERY = {
	VMSUBST_IOC_QUERY_MAPPERS, sizeof(struct vmsubst_query_mappers),
	VMSUBST_QUERY_MAPPERS_SIZE_VER0,
	offsetof(struct vmsubst_query_mappers, reserved0),
	qm_valid, qm_untouched,
};
static const struct cmd_desc CMD_PIN = {
	VMSUBST_IOC_PIN_MAPPERS, sizeof(struct vmsubst_pin_mappers),
	VMSUBST_PIN_MAPPERS_SIZE_VER0, 0, pm_valid, pm_untouched,
};
static const struct cmd_desc CMD_QPAGES = {
	VMSUBST_IOC_QUERY_PAGES, sizeof(struct vmsubst_query_pages),
	VMSUBST_QUERY_PAGES_SIZE_VER0,
	offsetof(struct vmsubst_query_pages, reserved0),
	qp_valid, qp_untouched,
};

/* The call must fail with @want and leave every output and @buf as filled. */
static void expect_errno_buf(struct ctx *c, const char *desc, void *arg,
			     int want, const void *buf, size_t len)
{
	int got = xioctl(c->dev, c->cmd->cmd, arg);

	if (got != want)
		fail(desc, "errno got %s want %s", errname(got), errname(want));
	else if (!c->cmd->untouched(arg))
		fail(desc, "output written on failure");
	else if (buf && !all_fill(buf, len))
		fail(desc, "output array written on failure");
	else
		pass(desc);
}

static void expect_errno(struct ctx *c, const char *desc, void *arg, int want)
{
	expect_errno_buf(c, desc, arg, want, NULL, 0);
}

/* Runs a call that must succeed; reports and returns false if not. */
static bool expect_ok(struct ctx *c, const char *desc, void *arg)
{
	int got = xioctl(c->dev, c->cmd->cmd, arg);

	if (got) {
		fail(desc, "errno got %s want 0", errname(got));
		return false;
	}
	return true;
}

static void g_null(struct ctx *c, const char *desc)
{
	int got = xioctl(c->dev, c->cmd->cmd, NULL);

	if (got != EFAULT)
		fail(desc, "errno got %s want EFAULT", errname(got));
	else
		pass(desc);
}

static void g_small(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.size = c->cmd->ver0 - 8;
	expect_errno(c, desc, &a, EINVAL);
}

static void g_huge(struct ctx *c, const char *desc)
{
	size_t len = 2 * c->page;
	void *p = calloc(1, len);

	if (!p) {
		fail(desc, "calloc: %s", strerror(errno));
		return;
	}
	c->cmd->init(c, p);
	*(uint32_t *)p = len;
	expect_errno(c, desc, p, E2BIG);
	free(p);
}

static void g_big_dirty(struct ctx *c, const char *desc)
{
	struct {
		union anyarg a;
		uint64_t tail[4];
	} b;

	memset(&b, 0, sizeof(b));
	c->cmd->init(c, &b.a);
	b.a.ir.size = c->cmd->size + 16;
	memset((char *)&b + c->cmd->size, 0, 16);
	((char *)&b)[c->cmd->size + 9] = 1;
	expect_errno(c, desc, &b, E2BIG);
}

static void g_flag(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.flags |= 1U << 31;
	expect_errno(c, desc, &a, EOPNOTSUPP);
}

static void g_reserved(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	*(uint32_t *)((char *)&a + c->cmd->reserved) = 1;
	expect_errno(c, desc, &a, EINVAL);
}

static void g_badfd(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.fd = -1;	/* fd is the third member of every command */
	expect_errno(c, desc, &a, EBADF);
}

static void g_closedfd(struct ctx *c, const char *desc)
{
	union anyarg a;
	int fd = dup(c->base_fd);

	if (fd < 0 || close(fd)) {
		fail(desc, "dup/close: %s", strerror(errno));
		return;
	}
	c->cmd->init(c, &a);
	a.ir.fd = fd;
	expect_errno(c, desc, &a, EBADF);
}

static void g_opath(struct ctx *c, const char *desc)
{
	union anyarg a;
	int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		fail(desc, "open O_PATH: %s", strerror(errno));
		return;
	}
	c->cmd->init(c, &a);
	a.ir.fd = fd;
	expect_errno(c, desc, &a, EBADF);
	close(fd);
}

/* errno of the command in a child without CAP_SYS_ADMIN. */
static int errno_unprivileged(int dev, unsigned long cmd, void *arg,
			      bool (*untouched)(const void *));
static void report_unprivileged(const char *desc, int got);

static void g_eperm(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	report_unprivileged(desc, errno_unprivileged(c->dev, c->cmd->cmd, &a,
						     c->cmd->untouched));
}

static void g_fd_dir(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.fd = c->dir_fd;
	expect_errno(c, desc, &a, EISDIR);
}

static void g_fd_chardev(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.fd = c->dev;
	expect_errno(c, desc, &a, EINVAL);
}

/* A directory or file of the filesystem @kind, opened read-only. */
static int open_kind(struct ctx *c, enum need kind, bool dir)
{
	char d[PATH_MAX];

	if (!dir)
		return open(c->path[kind], O_RDONLY | O_CLOEXEC);
	snprintf(d, sizeof(d), "%s", c->path[kind]);
	*strrchr(d, '/') = 0;
	return open(d[0] ? d : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

static void fd_case(struct ctx *c, const char *desc, enum need kind, bool dir,
		    uint32_t flags, int want)
{
	union anyarg a;
	int fd = open_kind(c, kind, dir);

	if (fd < 0) {
		fail(desc, "open: %s", strerror(errno));
		return;
	}
	c->cmd->init(c, &a);
	a.ir.fd = fd;
	a.ir.flags = flags;
	expect_errno(c, desc, &a, want);
	close(fd);
}

static void g_dax(struct ctx *c, const char *desc)
{
	fd_case(c, desc, NEED_DAX, false, 0, EMEDIUMTYPE);
}

static void g_nobdev(struct ctx *c, const char *desc)
{
	fd_case(c, desc, NEED_NOBDEV, c->cmd == &CMD_DENTRIES, 0, ENOTBLK);
}

static void g_rw_noforce(struct ctx *c, const char *desc)
{
	fd_case(c, desc, NEED_RW, c->cmd == &CMD_DENTRIES, 0, EACCES);
}

static void g_len0(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	/* offset and length sit at the same place in every file-range struct. */
	a.qm.length = 0;
	expect_errno(c, desc, &a, EINVAL);
}

static void g_wrap(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.qm.offset = UINT64_MAX - c->page + 1;
	a.qm.length = 2 * c->page;
	expect_errno(c, desc, &a, EOVERFLOW);
}

static void g_past_max(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.qm.offset = LLONG_MAX;
	a.qm.length = 1;
	expect_errno(c, desc, &a, EOVERFLOW);
}

static_assert(offsetof(struct vmsubst_invalidate_range, offset) ==
	      offsetof(struct vmsubst_query_mappers, offset), "layout");
static_assert(offsetof(struct vmsubst_invalidate_bdev, offset) ==
	      offsetof(struct vmsubst_query_mappers, offset), "layout");
static_assert(offsetof(struct vmsubst_pin_mappers, length) ==
	      offsetof(struct vmsubst_query_mappers, length), "layout");
static_assert(offsetof(struct vmsubst_query_pages, length) ==
	      offsetof(struct vmsubst_query_mappers, length), "layout");
static_assert(sizeof(struct vmsubst_query_pages) ==
	      VMSUBST_QUERY_PAGES_SIZE_VER0, "layout");
static_assert(sizeof(struct vmsubst_pin_mappers) ==
	      VMSUBST_PIN_MAPPERS_SIZE_VER1, "layout");

/* An output array of the command at @off: cap above @max, or no address. */
static void array_case(struct ctx *c, const char *desc, size_t off,
		       uint32_t cap, bool null_addr, int want)
{
	static struct vmsubst_mapper items[2];
	struct vmsubst_array *arr;
	union anyarg a;

	memset(items, FILL, sizeof(items));
	c->cmd->init(c, &a);
	arr = (struct vmsubst_array *)((char *)&a + off);
	array_init(arr, null_addr ? NULL : items, cap);
	expect_errno_buf(c, desc, &a, want, items, sizeof(items));
}

#define ARRAY_TOO_BIG(_name, _struct, _member, _max)			\
	static void _name##_big(struct ctx *c, const char *desc)	\
	{								\
		array_case(c, desc, offsetof(_struct, _member),		\
			   (_max) + 1, false, E2BIG);			\
	}								\
	static void _name##_null(struct ctx *c, const char *desc)	\
	{								\
		array_case(c, desc, offsetof(_struct, _member), 1,	\
			   true, EFAULT);				\
	}

ARRAY_TOO_BIG(a_outcomes, struct vmsubst_invalidate_range, outcomes,
	      VMSUBST_RANGES_MAX)
ARRAY_TOO_BIG(a_inv_mappers, struct vmsubst_invalidate_range, mappers,
	      VMSUBST_MAPPERS_MAX)
ARRAY_TOO_BIG(a_kept, struct vmsubst_invalidate_bdev, kept, VMSUBST_RANGES_MAX)
ARRAY_TOO_BIG(a_in_use, struct vmsubst_revalidate_inodes, in_use,
	      VMSUBST_INODES_MAX)
ARRAY_TOO_BIG(a_qm, struct vmsubst_query_mappers, mappers, VMSUBST_MAPPERS_MAX)
ARRAY_TOO_BIG(a_pinned, struct vmsubst_pin_mappers, pinned,
	      VMSUBST_PIN_RESULTS_MAX)
ARRAY_TOO_BIG(a_unpinned, struct vmsubst_pin_mappers, unpinned,
	      VMSUBST_MAPPERS_MAX)
ARRAY_TOO_BIG(a_qp_ranges, struct vmsubst_query_pages, ranges,
	      VMSUBST_RANGES_MAX)

/* ---- invalidate VER1 ------------------------------------------------------ */

static void t_inv_refault_both(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_range r;

	inv_init(&r, c->base_fd, 0, c->page,
		 VMSUBST_INVALIDATE_F_REFAULT_ASYNC |
		 VMSUBST_INVALIDATE_F_REFAULT_SYNC);
	expect_inv_errno(c, desc, &r, EINVAL);
}

static void t_inv_ver0_size(struct ctx *c, const char *desc)
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

static void t_inv_number(struct ctx *c, const char *desc)
{
	/* The number published before VER1, size bits included. */
	if (VMSUBST_IOC_INVALIDATE_RANGE != 0xc040b501UL)
		fail(desc, "VMSUBST_IOC_INVALIDATE_RANGE is %#lx",
		     (unsigned long)VMSUBST_IOC_INVALIDATE_RANGE);
	else
		pass(desc);
	(void)c;
}

static void t_ro_refault_sync(struct ctx *c, const char *desc)
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
		fail(desc, "%ld of %zu pages resident after the call", n, npages);
	else
		pass(desc);
out:
	if (map != MAP_FAILED)
		munmap(map, c->ro_size);
	free(vec);
}

static void t_ro_refault_async(struct ctx *c, const char *desc)
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

static void t_ro_drop_only(struct ctx *c, const char *desc)
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
		fail(desc, "outcomes %u/%llu: offset %llu length %llu state %#x",
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

static void t_ro_zap_only(struct ctx *c, const char *desc)
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
	if (r.pages_dropped || r.pages_kept || r.pages_mapped != r.pages_cached ||
	    !r.pages_cached)
		fail(desc, COUNTS_FMT, COUNTS(&r));
	else if (rss_before <= 0 || rss_after != 0)
		fail(desc, "Rss %ld kB before, %ld kB after", rss_before, rss_after);
	else
		pass(desc);
out:
	munmap(map, c->ro_size);
}

static void t_ro_report_mappers(struct ctx *c, const char *desc)
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
		fail(desc, "mapper pid %d %llx-%llx offset %llu flags %#x comm %.16s",
		     m[0].pid, (unsigned long long)m[0].start,
		     (unsigned long long)m[0].end,
		     (unsigned long long)m[0].offset, m[0].flags, m[0].comm);
	else
		pass(desc);
	munmap(map, c->page);
}

static void t_inv_mappers_without_flag(struct ctx *c, const char *desc)
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

static void t_rw_dirty_outcomes(struct ctx *c, const char *desc);

/* ---- invalidate bdev -------------------------------------------------------- */

static void bd_fd_case(struct ctx *c, const char *desc, int fd, int want)
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, fd, 0, c->page, 0);
	expect_errno(c, desc, &r, want);
}

static void t_bd_regular(struct ctx *c, const char *desc)
{
	bd_fd_case(c, desc, c->base_fd, ENOTBLK);
}

static void t_bd_chardev(struct ctx *c, const char *desc)
{
	bd_fd_case(c, desc, c->dev, ENOTBLK);
}

static void t_bd_dir(struct ctx *c, const char *desc)
{
	bd_fd_case(c, desc, c->dir_fd, ENOTBLK);
}

static off_t bdev_size(int fd)
{
	return lseek(fd, 0, SEEK_END);
}

static void t_bd_past_end(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, bdev_fd, bdev_size(bdev_fd) - c->page, 2 * c->page, 0);
	expect_errno(c, desc, &r, ENXIO);
}

static void t_bd_at_end(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, bdev_fd, bdev_size(bdev_fd), 1, 0);
	expect_errno(c, desc, &r, ENXIO);
}

static void t_bd_rw_noforce(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, rwbdev_fd, 0, c->page, 0);
	expect_errno(c, desc, &r, EACCES);
}

static void t_bd_rw_force(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_bdev r;

	/* The superblock page: pinned by the mounted filesystem, kept. */
	bd_init(&r, rwbdev_fd, 0, c->page, VMSUBST_BDEV_F_FORCE);
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

static void t_bd_superblock(struct ctx *c, const char *desc)
{
	struct vmsubst_page_range kept[8];
	struct vmsubst_invalidate_bdev r;
	uint64_t sum = 0;

	memset(kept, FILL, sizeof(kept));
	bd_init(&r, bdev_fd, 0, 1 << 20, 0);
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
		fail(desc, "ranges %u/%llu cover %llu pages; cached %llu dropped %llu kept %llu",
		     r.kept.count, (unsigned long long)r.kept.total,
		     (unsigned long long)sum, (unsigned long long)r.pages_cached,
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

static void t_bd_truncated(struct ctx *c, const char *desc)
{
	struct vmsubst_invalidate_bdev r;

	bd_init(&r, bdev_fd, 0, 1 << 20, 0);
	if (!expect_ok(c, desc, &r))
		return;
	if (r.kept.count != 0 || r.kept.total < 1 || r.pages_kept < 1)
		fail(desc, "kept count %u total %llu pages %llu", r.kept.count,
		     (unsigned long long)r.kept.total,
		     (unsigned long long)r.pages_kept);
	else
		pass(desc);
}

static void t_bd_drops_data(struct ctx *c, const char *desc)
{
	off_t size = bdev_size(bdev_fd), start = size - 16 * c->page;
	struct vmsubst_invalidate_bdev r;
	char buf[4096];

	/* The device's last 64 KiB, read through its page cache. */
	for (off_t o = start; o < size; o += sizeof(buf))
		if (pread(bdev_fd, buf, sizeof(buf), o) != (ssize_t)sizeof(buf)) {
			fail(desc, "pread: %s", strerror(errno));
			return;
		}
	bd_init(&r, bdev_fd, start, size - start, 0);
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

/* ---- revalidate inodes -------------------------------------------------------- */

static void t_ri_none(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_inodes r;

	ri_init(&r, c->base_fd, &root_ino, 0, 0);
	expect_errno(c, desc, &r, EINVAL);
}

static void t_ri_too_many(struct ctx *c, const char *desc)
{
	static uint64_t inos[VMSUBST_INODES_MAX + 1];
	struct vmsubst_revalidate_inodes r;

	ri_init(&r, c->base_fd, inos, ARRAY_SIZE(inos), 0);
	expect_errno(c, desc, &r, E2BIG);
}

static void t_ri_null_list(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_inodes r;

	ri_init(&r, c->base_fd, NULL, 1, 0);
	expect_errno(c, desc, &r, EFAULT);
}

static void t_ri_otherfs(struct ctx *c, const char *desc)
{
	fd_case(c, desc, NEED_OTHERFS, false, 0, EMEDIUMTYPE);
}

struct ri_result {
	struct vmsubst_revalidate_inodes r;
	struct vmsubst_inode_status st[4];
};

/* One revalidation of @inos through @fd that must succeed. */
static bool ri_call(struct ctx *c, const char *desc, struct ri_result *res,
		    int fd, const uint64_t *inos, uint32_t n, uint32_t flags)
{
	memset(res->st, FILL, sizeof(res->st));
	ri_init(&res->r, fd, inos, n, flags);
	array_init(&res->r.in_use, res->st, ARRAY_SIZE(res->st));
	return expect_ok(c, desc, &res->r);
}

static char other_file[PATH_MAX];
static ino_t other_ino;
static ino_t ro_ino_skip;

static int find_other_cb(const char *path, const struct stat *st, int type,
			 struct FTW *ftw)
{
	(void)ftw;
	if (type != FTW_F || !S_ISREG(st->st_mode) || (st->st_mode & 0111) ||
	    st->st_nlink != 1 || st->st_ino == ro_ino_skip ||
	    strstr(path, "lost+found"))
		return 0;
	snprintf(other_file, sizeof(other_file), "%s", path);
	other_ino = st->st_ino;
	return 1;
}

/*
 * Another regular file on the read-only filesystem, near the test's file:
 * not executable (a test program may be running it), not hard-linked.
 */
static bool find_other(struct ctx *c)
{
	if (other_file[0])
		return true;
	if (nftw(c->ro_dir, find_other_cb, 8, FTW_PHYS | FTW_MOUNT) == 1)
		return true;
	return c->ro_parent[0] &&
	       nftw(c->ro_parent, find_other_cb, 8, FTW_PHYS | FTW_MOUNT) == 1;
}

static void t_ri_unused(struct ctx *c, const char *desc)
{
	struct ri_result res;
	struct stat st;
	uint64_t ino;

	if (!find_other(c)) {
		skip(desc, "no other regular file on the read-only filesystem");
		return;
	}
	/* Cached now, and unused: nothing keeps it open. */
	if (stat(other_file, &st)) {
		fail(desc, "stat %s: %s", other_file, strerror(errno));
		return;
	}
	ino = st.st_ino;
	if (!ri_call(c, desc, &res, c->dir_fd, &ino, 1, 0))
		return;
	if (res.r.evicted != 1 || res.r.not_cached || res.r.in_use.total) {
		fail(desc, "%s: evicted %u not_cached %u in_use %llu (reasons %#x)",
		     other_file, res.r.evicted, res.r.not_cached,
		     (unsigned long long)res.r.in_use.total, res.st[0].reasons);
		return;
	}
	/* Gone from the inode cache: a second call finds nothing. */
	if (!ri_call(c, desc, &res, c->dir_fd, &ino, 1, 0))
		return;
	if (res.r.evicted || res.r.not_cached != 1)
		fail(desc, "second call: evicted %u not_cached %u", res.r.evicted,
		     res.r.not_cached);
	else if (stat(other_file, &st) || st.st_ino != ino)
		fail(desc, "the file does not read back");
	else
		pass(desc);
}

static void t_ri_open(struct ctx *c, const char *desc)
{
	uint64_t ino = c->ro_ino;
	struct ri_result res;
	void *map;

	/* ro_fd holds it open; a mapping adds MAPPED. */
	map = mmap(NULL, c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (map == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		return;
	}
	if (!ri_call(c, desc, &res, c->dir_fd, &ino, 1, 0))
		goto out;
	if (res.r.evicted || res.r.not_cached || res.r.in_use.count != 1 ||
	    res.r.in_use.total != 1)
		fail(desc, "evicted %u not_cached %u in_use %u/%llu",
		     res.r.evicted, res.r.not_cached, res.r.in_use.count,
		     (unsigned long long)res.r.in_use.total);
	else if (res.st[0].ino != ino ||
		 res.st[0].reasons != (VMSUBST_INODE_OPEN | VMSUBST_INODE_MAPPED) ||
		 res.st[0].refs < 1)
		fail(desc, "ino %llu reasons %#x refs %u",
		     (unsigned long long)res.st[0].ino, res.st[0].reasons,
		     res.st[0].refs);
	else if (!all_fill(&res.st[1], sizeof(res.st) - sizeof(res.st[0])))
		fail(desc, "wrote past in_use.count");
	else if (!read_all(c->ro_fd, c->ro_size))
		fail(desc, "the open file no longer reads");
	else
		pass(desc);
out:
	munmap(map, c->page);
}

static void t_ri_root_caller(struct ctx *c, const char *desc)
{
	uint64_t inos[4] = { 2, c->ro_ino, 0, UINT64_MAX };
	struct ri_result res;

	/* Through ro_fd: its own inode is the caller's. */
	if (!ri_call(c, desc, &res, c->ro_fd, inos, 4, 0))
		return;
	if (res.r.evicted || res.r.not_cached != 2 || res.r.in_use.count != 2)
		fail(desc, "evicted %u not_cached %u in_use %u", res.r.evicted,
		     res.r.not_cached, res.r.in_use.count);
	else if (res.st[0].ino != 2 || res.st[0].reasons != VMSUBST_INODE_ROOT ||
		 res.st[1].ino != c->ro_ino ||
		 res.st[1].reasons != VMSUBST_INODE_CALLER)
		fail(desc, "reasons %#x %#x", res.st[0].reasons,
		     res.st[1].reasons);
	else
		pass(desc);
}

static void t_ri_truncated(struct ctx *c, const char *desc)
{
	uint64_t inos[2] = { 2, c->ro_ino };
	struct vmsubst_inode_status st[1];
	struct vmsubst_revalidate_inodes r;

	memset(st, FILL, sizeof(st));
	ri_init(&r, c->ro_fd, inos, 2, 0);
	array_init(&r.in_use, st, 1);
	if (!expect_ok(c, desc, &r))
		return;
	if (r.in_use.count != 1 || r.in_use.total != 2 || st[0].ino != 2)
		fail(desc, "in_use %u/%llu", r.in_use.count,
		     (unsigned long long)r.in_use.total);
	else
		pass(desc);
}

static void t_ri_rw_force(struct ctx *c, const char *desc)
{
	struct ri_result res;
	struct stat st;
	uint64_t ino;
	int fd = open_kind(c, NEED_RW, true);

	if (fd < 0 || stat(c->path[NEED_RW], &st)) {
		fail(desc, "open: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	ino = st.st_ino;
	if (ri_call(c, desc, &res, fd, &ino, 1, VMSUBST_INODES_F_FORCE)) {
		if (res.r.evicted + res.r.not_cached + res.r.in_use.total != 1)
			fail(desc, "evicted %u not_cached %u in_use %llu",
			     res.r.evicted, res.r.not_cached,
			     (unsigned long long)res.r.in_use.total);
		else
			pass(desc);
	}
	close(fd);
}

/* ---- revalidate dentries ----------------------------------------------------- */

struct names {
	char buf[2048];
	uint32_t size;
	uint32_t nr;
};

static void names_add(struct names *n, const char *name)
{
	size_t len = strlen(name) + 1;

	memcpy(n->buf + n->size, name, len);
	n->size += len;
	n->nr++;
}

static void rd_names_case(struct ctx *c, const char *desc, const void *names,
			  uint32_t nr, uint32_t size, uint32_t flags, int want)
{
	struct vmsubst_revalidate_dentries r;

	rd_init(&r, c->dir_fd, names, nr, size, flags);
	expect_errno(c, desc, &r, want);
}

static void t_rd_dot(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, ".", 1, 2, 0, EINVAL);
}

static void t_rd_dotdot(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, "..", 1, 3, 0, EINVAL);
}

static void t_rd_slash(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, "a/b", 1, 4, 0, EINVAL);
}

static void t_rd_empty(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, "a\0\0", 2, 3, 0, EINVAL);
}

static void t_rd_no_nul(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, "abc", 1, 3, 0, EINVAL);
}

static void t_rd_extra_bytes(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, "a\0b", 1, 3, 0, EINVAL);
}

static void t_rd_fewer_names(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, "a", 2, 2, 0, EINVAL);
}

static void t_rd_long_name(struct ctx *c, const char *desc)
{
	char name[NAME_MAX + 2];

	memset(name, 'n', NAME_MAX + 1);
	name[NAME_MAX + 1] = 0;
	rd_names_case(c, desc, name, 1, sizeof(name), 0, EINVAL);
}

static void t_rd_too_many(struct ctx *c, const char *desc)
{
	static char names[2 * (VMSUBST_NAMES_MAX + 1)];

	for (size_t i = 0; i < sizeof(names); i += 2)
		memcpy(names + i, "x", 2);
	rd_names_case(c, desc, names, VMSUBST_NAMES_MAX + 1, sizeof(names), 0,
		      E2BIG);
}

static void t_rd_too_long(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, "x", 1, VMSUBST_NAMES_SIZE_MAX + 1, 0, E2BIG);
}

static void t_rd_null_names(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, NULL, 1, 2, 0, EFAULT);
}

static void t_rd_size_without_names(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, "x", 0, 2, 0, EINVAL);
}

static void t_rd_unhash_without_names(struct ctx *c, const char *desc)
{
	rd_names_case(c, desc, NULL, 0, 0, VMSUBST_DENTRIES_F_UNHASH_BUSY,
		      EINVAL);
}

static void t_rd_notdir(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_dentries r;

	rd_init(&r, c->base_fd, NULL, 0, 0, 0);
	expect_errno(c, desc, &r, ENOTDIR);
}

/* One revalidation of @n in @dir that must succeed. */
static bool rd_call(struct ctx *c, const char *desc,
		    struct vmsubst_revalidate_dentries *r, const char *dir,
		    const struct names *n, uint32_t flags)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	bool ok;

	if (fd < 0) {
		fail(desc, "open %s: %s", dir, strerror(errno));
		return false;
	}
	rd_init(r, fd, n ? n->buf : NULL, n ? n->nr : 0, n ? n->size : 0,
		flags);
	ok = expect_ok(c, desc, r);
	close(fd);
	return ok;
}

#define RD_FMT "dropped %u not_cached %u busy %u mountpoints %u"
#define RD(r) (r)->dropped, (r)->not_cached, (r)->busy, (r)->mountpoints

static bool rd_is(const struct vmsubst_revalidate_dentries *r, uint32_t dropped,
		  uint32_t not_cached, uint32_t busy, uint32_t mountpoints)
{
	return r->dropped == dropped && r->not_cached == not_cached &&
	       r->busy == busy && r->mountpoints == mountpoints;
}

static const char absent[] = ".abi_test-absent";

static void t_rd_negative(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_dentries r;
	struct names n = {};
	char path[PATH_MAX + sizeof(absent) + 1];
	struct stat st;

	names_add(&n, absent);
	snprintf(path, sizeof(path), "%s/%s", c->ro_dir, absent);
	/* The failed lookup leaves a negative dentry behind. */
	if (!stat(path, &st) || errno != ENOENT) {
		fail(desc, "stat %s did not fail with ENOENT", path);
		return;
	}
	if (!rd_call(c, desc, &r, c->ro_dir, &n, 0))
		return;
	if (!rd_is(&r, 1, 0, 0, 0)) {
		fail(desc, RD_FMT, RD(&r));
		return;
	}
	if (!rd_call(c, desc, &r, c->ro_dir, &n, 0))
		return;
	if (!rd_is(&r, 0, 1, 0, 0))
		fail(desc, "second call: " RD_FMT, RD(&r));
	else
		pass(desc);
}

static void t_rd_whole_dir(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_dentries r;
	struct names n = {};
	char path[PATH_MAX + sizeof(absent) + 1];
	struct stat st;

	names_add(&n, absent);
	snprintf(path, sizeof(path), "%s/%s", c->ro_dir, absent);
	stat(path, &st);
	/* No names: every unused child goes, the negative one included. */
	if (!rd_call(c, desc, &r, c->ro_dir, NULL, 0))
		return;
	if (!rd_is(&r, 0, 0, 0, 0)) {
		fail(desc, RD_FMT, RD(&r));
		return;
	}
	if (!rd_call(c, desc, &r, c->ro_dir, &n, 0))
		return;
	if (!rd_is(&r, 0, 1, 0, 0))
		fail(desc, "the negative dentry survived: " RD_FMT, RD(&r));
	else
		pass(desc);
}

static void t_rd_unused_file(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_dentries r;
	char dir[PATH_MAX];
	struct names n = {};
	struct stat st;

	if (!find_other(c)) {
		skip(desc, "no other regular file on the read-only filesystem");
		return;
	}
	snprintf(dir, sizeof(dir), "%s", other_file);
	*strrchr(dir, '/') = 0;
	names_add(&n, strrchr(other_file, '/') + 1);
	if (stat(other_file, &st)) {
		fail(desc, "stat: %s", strerror(errno));
		return;
	}
	if (!rd_call(c, desc, &r, dir, &n, 0))
		return;
	if (!rd_is(&r, 1, 0, 0, 0))
		fail(desc, RD_FMT, RD(&r));
	else if (stat(other_file, &st) || st.st_ino != other_ino)
		fail(desc, "the name does not look up again");
	else
		pass(desc);
}

static void t_rd_busy(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_dentries r;
	struct names n = {};

	names_add(&n, strrchr(c->path[NEED_RO], '/') + 1);
	if (!rd_call(c, desc, &r, c->ro_dir, &n, 0))
		return;
	if (!rd_is(&r, 0, 0, 1, 0))
		fail(desc, RD_FMT, RD(&r));
	else
		pass(desc);
}

static void t_rd_unhash_busy(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_dentries r;
	struct names n = {};
	struct stat st;

	names_add(&n, strrchr(c->path[NEED_RO], '/') + 1);
	if (!rd_call(c, desc, &r, c->ro_dir, &n,
		     VMSUBST_DENTRIES_F_UNHASH_BUSY))
		return;
	/* The name is looked up anew; the open file reads on. */
	if (!rd_is(&r, 1, 0, 0, 0))
		fail(desc, RD_FMT, RD(&r));
	else if (stat(c->path[NEED_RO], &st) || st.st_ino != c->ro_ino)
		fail(desc, "the name does not look up again");
	else if (!read_all(c->ro_fd, c->ro_size))
		fail(desc, "the open file no longer reads");
	else
		pass(desc);
}

static void t_rd_mountpoint(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_dentries r;
	struct names n = {};
	bool ok;

	/* A mount over the test file's directory, for the moment of the call. */
	if (mount("abi_test", c->ro_dir, "tmpfs", MS_NOSUID | MS_NODEV,
		  "size=64k")) {
		fail(desc, "mount tmpfs on %s: %s", c->ro_dir, strerror(errno));
		return;
	}
	names_add(&n, c->ro_dirname);
	ok = rd_call(c, desc, &r, c->ro_parent, &n,
		     VMSUBST_DENTRIES_F_UNHASH_BUSY);
	if (umount2(c->ro_dir, MNT_DETACH)) {
		fail(desc, "umount %s: %s", c->ro_dir, strerror(errno));
		return;
	}
	if (!ok)
		return;
	if (!rd_is(&r, 0, 0, 0, 1))
		fail(desc, RD_FMT, RD(&r));
	else
		pass(desc);
}

static char nested[PATH_MAX];

static int find_nested_cb(const char *path, const struct stat *st, int type,
			  struct FTW *ftw)
{
	(void)st;
	if (type != FTW_D || ftw->level != 2 || strstr(path, "lost+found"))
		return 0;
	snprintf(nested, sizeof(nested), "%s", path);
	return 1;
}

static void t_rd_submount(struct ctx *c, const char *desc)
{
	char top[PATH_MAX], dir[PATH_MAX], *slash;
	struct vmsubst_revalidate_dentries r;
	struct names n = {};
	bool ok;

	/*
	 * TOP/A/B on the read-only filesystem: a mount on B, and the name A
	 * asked about in TOP. A is busy (B holds it) and has a mount below.
	 */
	snprintf(top, sizeof(top), "%s", c->ro_parent[0] ? c->ro_parent : c->ro_dir);
	if (nftw(top, find_nested_cb, 8, FTW_PHYS | FTW_MOUNT) != 1) {
		skip(desc, "no directory two levels below the file's");
		return;
	}
	snprintf(dir, sizeof(dir), "%s", nested);
	slash = strrchr(dir, '/');
	*slash = 0;
	names_add(&n, strrchr(dir, '/') + 1);
	if (mount("abi_test", nested, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k")) {
		fail(desc, "mount tmpfs on %s: %s", nested, strerror(errno));
		return;
	}
	ok = rd_call(c, desc, &r, top, &n, VMSUBST_DENTRIES_F_UNHASH_BUSY);
	if (umount2(nested, MNT_DETACH)) {
		fail(desc, "umount %s: %s", nested, strerror(errno));
		return;
	}
	if (!ok)
		return;
	if (!rd_is(&r, 0, 0, 0, 1))
		fail(desc, "%s: " RD_FMT, dir, RD(&r));
	else
		pass(desc);
}

static void t_rd_rw_force(struct ctx *c, const char *desc)
{
	struct vmsubst_revalidate_dentries r;
	char dir[PATH_MAX];
	struct names n = {};

	snprintf(dir, sizeof(dir), "%s", c->path[NEED_RW]);
	*strrchr(dir, '/') = 0;
	names_add(&n, absent);
	if (!rd_call(c, desc, &r, dir[0] ? dir : "/", &n,
		     VMSUBST_DENTRIES_F_FORCE))
		return;
	if (r.dropped + r.not_cached != 1)
		fail(desc, RD_FMT, RD(&r));
	else
		pass(desc);
}

/* ---- query mappers -------------------------------------------------------------- */

struct qm_result {
	struct vmsubst_query_mappers r;
	struct vmsubst_mapper m[4];
};

static bool qm_call(struct ctx *c, const char *desc, struct qm_result *res,
		    uint64_t offset, uint64_t length, uint32_t cap)
{
	memset(res->m, FILL, sizeof(res->m));
	qm_init(&res->r, c->ro_fd, offset, length, res->m, cap);
	return expect_ok(c, desc, &res->r);
}

static const struct vmsubst_mapper *find_mapper(const struct qm_result *res,
						const void *start)
{
	for (uint32_t i = 0; i < res->r.mappers.count; i++)
		if (res->m[i].start == uptr(start))
			return &res->m[i];
	return NULL;
}

static void t_qm_own(struct ctx *c, const char *desc)
{
	const struct vmsubst_mapper *ms, *mp;
	struct qm_result res;
	void *shared, *priv;
	char comm[16];

	self_comm(comm);
	shared = mmap(NULL, 2 * c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	priv = mmap(NULL, c->page, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_LOCKED,
		    c->ro_fd, c->page);
	if (shared == MAP_FAILED || priv == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		goto out;
	}
	if (!qm_call(c, desc, &res, 0, c->ro_size, ARRAY_SIZE(res.m)))
		goto out;
	ms = find_mapper(&res, shared);
	mp = find_mapper(&res, priv);
	if (res.r.mappers.count != 2 || res.r.mappers.total != 2 || !ms || !mp)
		fail(desc, "mappers %u/%llu", res.r.mappers.count,
		     (unsigned long long)res.r.mappers.total);
	else if (ms->pid != getpid() || ms->flags != VMSUBST_MAP_SHARED ||
		 ms->end != uptr(shared) + 2 * c->page || ms->offset != 0 ||
		 strcmp(ms->comm, comm))
		fail(desc, "shared: pid %d flags %#x end %llx offset %llu comm %.16s",
		     ms->pid, ms->flags, (unsigned long long)ms->end,
		     (unsigned long long)ms->offset, ms->comm);
	else if (mp->pid != getpid() ||
		 mp->flags != (VMSUBST_MAP_EXEC | VMSUBST_MAP_LOCKED) ||
		 mp->offset != (uint64_t)c->page || strcmp(mp->comm, comm))
		fail(desc, "private: pid %d flags %#x offset %llu comm %.16s",
		     mp->pid, mp->flags, (unsigned long long)mp->offset, mp->comm);
	else if (!all_fill(&res.m[2], 2 * sizeof(res.m[0])))
		fail(desc, "wrote past mappers.count");
	else
		pass(desc);
out:
	if (shared != MAP_FAILED)
		munmap(shared, 2 * c->page);
	if (priv != MAP_FAILED)
		munmap(priv, c->page);
}

static void t_qm_range(struct ctx *c, const char *desc)
{
	struct qm_result res;
	void *map;

	/* Maps page 0 only; page 2 has no mapper, page 0 one. */
	map = mmap(NULL, c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (map == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		return;
	}
	if (qm_call(c, desc, &res, 2 * c->page, 1, ARRAY_SIZE(res.m))) {
		if (res.r.mappers.total || res.r.mappers.count)
			fail(desc, "page 2: %llu mappers",
			     (unsigned long long)res.r.mappers.total);
		else if (qm_call(c, desc, &res, c->page - 1, 1, ARRAY_SIZE(res.m))) {
			if (res.r.mappers.total != 1)
				fail(desc, "page 0: %llu mappers",
				     (unsigned long long)res.r.mappers.total);
			else if (qm_call(c, desc, &res, c->ro_size + c->page, 1,
					 ARRAY_SIZE(res.m))) {
				if (res.r.mappers.total)
					fail(desc, "beyond EOF: %llu mappers",
					     (unsigned long long)res.r.mappers.total);
				else
					pass(desc);
			}
		}
	}
	munmap(map, c->page);
}

static void t_qm_truncated(struct ctx *c, const char *desc)
{
	struct qm_result res;
	void *a, *b;

	a = mmap(NULL, c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	b = mmap(NULL, c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (a == MAP_FAILED || b == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
	} else if (qm_call(c, desc, &res, 0, c->ro_size, 1)) {
		if (res.r.mappers.count != 1 || res.r.mappers.total != 2)
			fail(desc, "mappers %u/%llu", res.r.mappers.count,
			     (unsigned long long)res.r.mappers.total);
		else if (!all_fill(&res.m[1], 3 * sizeof(res.m[0])))
			fail(desc, "wrote past the capacity");
		else
			pass(desc);
	}
	if (a != MAP_FAILED)
		munmap(a, c->page);
	if (b != MAP_FAILED)
		munmap(b, c->page);
}

/* ---- pin mappers ------------------------------------------------------------------ */

static void t_pm_zero_budget(struct ctx *c, const char *desc)
{
	struct vmsubst_pin_mappers r;

	pm_init(&r, c->base_fd, 0, c->page, 0);
	expect_errno(c, desc, &r, EINVAL);
}

static void t_pm_big_budget(struct ctx *c, const char *desc)
{
	struct vmsubst_pin_mappers r;

	pm_init(&r, c->base_fd, 0, c->page, VMSUBST_PIN_PAGES_MAX + 1);
	expect_errno(c, desc, &r, EINVAL);
}

/*
 * A child that maps the read-only file privately, reads every page, and
 * then answers the parent: 'c' checks that its mapping still holds the
 * file's old content and that every page is still present in its page
 * tables (mincore: a private copy survives an invalidation, the file's page
 * does not). The answer is 'y' or 'n'.
 */
struct child {
	pid_t pid;
	int to, from;
	void *map;
};

static void child_main(struct ctx *c, int in, int out)
{
	size_t npages = (c->ro_size + c->page - 1) / c->page;
	unsigned char *vec = calloc(npages, 1);
	char *want = malloc(c->ro_size), cmd;
	volatile char sum = 0;
	char *map;

	map = mmap(NULL, c->ro_size, PROT_READ, MAP_PRIVATE, c->ro_fd, 0);
	if (map == MAP_FAILED || !vec || !want ||
	    pread(c->ro_fd, want, c->ro_size, 0) != c->ro_size)
		_exit(1);
	for (off_t i = 0; i < c->ro_size; i += c->page)
		sum += map[i];
	if (write(out, &map, sizeof(map)) != sizeof(map))
		_exit(1);
	while (read(in, &cmd, 1) == 1) {
		char ok = 'y';

		/* Residency first: reading the mapping would fault it back. */
		if (resident(map, c->ro_size, c->page, vec) != (long)npages ||
		    memcmp(map, want, c->ro_size))
			ok = 'n';
		if (write(out, &ok, 1) != 1)
			_exit(1);
	}
	_exit(0);
}

static bool child_start(struct ctx *c, struct child *ch)
{
	int to[2], from[2];

	if (pipe2(to, O_CLOEXEC) || pipe2(from, O_CLOEXEC))
		return false;
	fflush(stdout);
	ch->pid = fork();
	if (ch->pid < 0)
		return false;
	if (!ch->pid) {
		close(to[1]);
		close(from[0]);
		child_main(c, to[0], from[1]);
	}
	close(to[0]);
	close(from[1]);
	ch->to = to[1];
	ch->from = from[0];
	return read(ch->from, &ch->map, sizeof(ch->map)) == sizeof(ch->map);
}

static char child_check(struct child *ch)
{
	char ans = '?';

	if (write(ch->to, "c", 1) != 1 || read(ch->from, &ans, 1) != 1)
		return '?';
	return ans;
}

static void child_stop(struct child *ch)
{
	if (ch->pid <= 0)
		return;
	close(ch->to);
	close(ch->from);
	kill(ch->pid, SIGKILL);
	waitpid(ch->pid, NULL, 0);
	ch->pid = 0;
}

struct pm_result {
	struct vmsubst_pin_mappers r;
	struct vmsubst_pin_result p[4];
	struct vmsubst_mapper u[4];
};

static bool pm_call(struct ctx *c, const char *desc, struct pm_result *res,
		    uint32_t max_pages)
{
	memset(res->p, FILL, sizeof(res->p));
	memset(res->u, FILL, sizeof(res->u));
	pm_init(&res->r, c->ro_fd, 0, c->ro_size, max_pages);
	array_init(&res->r.pinned, res->p, ARRAY_SIZE(res->p));
	array_init(&res->r.unpinned, res->u, ARRAY_SIZE(res->u));
	return expect_ok(c, desc, &res->r);
}

static const struct vmsubst_pin_result *find_pinned(const struct pm_result *res,
						    pid_t pid)
{
	for (uint32_t i = 0; i < res->r.pinned.count; i++)
		if (res->p[i].pid == pid)
			return &res->p[i];
	return NULL;
}

static void t_pm_child(struct ctx *c, const char *desc)
{
	uint64_t bytes = (uint64_t)(c->ro_size + c->page - 1) / c->page * c->page;
	const struct vmsubst_pin_result *p;
	struct vmsubst_invalidate_range inv;
	struct child ch = {}, control = {};
	struct pm_result res;
	void *shared = MAP_FAILED;
	long anon;

	if (!child_start(c, &ch)) {
		fail(desc, "child: %s", strerror(errno));
		goto out;
	}
	/* Our own shared mapping is reported, never pinned. */
	shared = mmap(NULL, c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (shared == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		goto out;
	}
	if (!pm_call(c, desc, &res, VMSUBST_PIN_PAGES_MAX))
		goto out;
	/* Maps the file after the pin: the control, nothing pinned. */
	if (!child_start(c, &control)) {
		fail(desc, "child: %s", strerror(errno));
		goto out;
	}
	p = find_pinned(&res, ch.pid);
	anon = smaps_kb(ch.pid, ch.map, "Anonymous");
	if (!p || p->bytes_copied != bytes || p->bytes_failed || p->flags)
		fail(desc, "child %d: %s copied %llu private %llu failed %llu flags %#x",
		     ch.pid, p ? "found" : "missing",
		     p ? (unsigned long long)p->bytes_copied : 0ULL,
		     p ? (unsigned long long)p->bytes_private : 0ULL,
		     p ? (unsigned long long)p->bytes_failed : 0ULL,
		     p ? p->flags : 0);
	else if (anon * 1024 != (long)bytes)
		fail(desc, "child's mapping has %ld kB anonymous, want %llu",
		     anon, (unsigned long long)bytes / 1024);
	else if (res.r.unpinned.count != 1 || res.u[0].pid != getpid() ||
		 res.u[0].start != uptr(shared) ||
		 res.u[0].flags != VMSUBST_MAP_SHARED)
		fail(desc, "unpinned %u/%llu", res.r.unpinned.count,
		     (unsigned long long)res.r.unpinned.total);
	else if (res.r.status || res.r.bytes_copied < bytes ||
		 res.r.mappings < 1)
		fail(desc, "status %#x copied %llu mappings %u", res.r.status,
		     (unsigned long long)res.r.bytes_copied, res.r.mappings);
	else if (!invalidate(c, desc, &inv, c->ro_fd, 0, c->ro_size, 0))
		goto out;
	else if (child_check(&ch) != 'y')
		fail(desc, "the pinned child lost its copy to the invalidation");
	else if (child_check(&control) != 'n')
		fail(desc, "the unpinned child kept its pages (want them dropped)");
	else
		pass(desc);
out:
	if (shared != MAP_FAILED)
		munmap(shared, c->page);
	child_stop(&ch);
	child_stop(&control);
}

static void t_pm_again(struct ctx *c, const char *desc)
{
	uint64_t bytes = (uint64_t)(c->ro_size + c->page - 1) / c->page * c->page;
	const struct vmsubst_pin_result *p;
	struct child ch = {};
	struct pm_result res;

	if (!child_start(c, &ch)) {
		fail(desc, "child: %s", strerror(errno));
		goto out;
	}
	if (!pm_call(c, desc, &res, VMSUBST_PIN_PAGES_MAX) ||
	    !pm_call(c, desc, &res, VMSUBST_PIN_PAGES_MAX))
		goto out;
	p = find_pinned(&res, ch.pid);
	if (!p || p->bytes_copied || p->bytes_private != bytes)
		fail(desc, "second pin: copied %llu private %llu",
		     p ? (unsigned long long)p->bytes_copied : 0ULL,
		     p ? (unsigned long long)p->bytes_private : 0ULL);
	else
		pass(desc);
out:
	child_stop(&ch);
}

static void t_pm_budget(struct ctx *c, const char *desc)
{
	const struct vmsubst_pin_result *p;
	struct child ch = {};
	struct pm_result res;

	if (!child_start(c, &ch)) {
		fail(desc, "child: %s", strerror(errno));
		goto out;
	}
	if (!pm_call(c, desc, &res, 1))
		goto out;
	p = find_pinned(&res, ch.pid);
	if (!(res.r.status & VMSUBST_PIN_S_BUDGET) ||
	    res.r.bytes_copied != (uint64_t)c->page || res.r.pinned.total != 1 ||
	    !p || !(p->flags & VMSUBST_PIN_R_PARTIAL))
		fail(desc, "status %#x copied %llu pinned %llu flags %#x",
		     res.r.status, (unsigned long long)res.r.bytes_copied,
		     (unsigned long long)res.r.pinned.total, p ? p->flags : 0);
	else
		pass(desc);
out:
	child_stop(&ch);
}

static void t_pm_beyond_eof(struct ctx *c, const char *desc)
{
	struct vmsubst_pin_mappers r;

	pm_init(&r, c->ro_fd, c->ro_size + c->page, c->page, 1);
	if (!expect_ok(c, desc, &r))
		return;
	if (r.pinned.total || r.unpinned.total || r.bytes_copied ||
	    r.mappings || r.status)
		fail(desc, "something was pinned beyond EOF");
	else
		pass(desc);
}

/* ---- query pages, invalidate F_UNLESS_DIRTY ---------------------------- */

#define QP_FMT "cached %llu mapped %llu dirty %llu writeback %llu"
#define QP(r) (unsigned long long)(r)->pages_cached,			\
	      (unsigned long long)(r)->pages_mapped,			\
	      (unsigned long long)(r)->pages_dirty,			\
	      (unsigned long long)(r)->pages_writeback

/* Runs one page query that must succeed; reports and returns false if not. */
static bool qpages(struct ctx *c, const char *desc,
		   struct vmsubst_query_pages *r, int fd, uint64_t offset,
		   uint64_t length, void *items, uint32_t cap)
{
	int got;

	qp_init(r, fd, offset, length, items, cap);
	got = xioctl(c->dev, VMSUBST_IOC_QUERY_PAGES, r);
	if (got) {
		fail(desc, "query pages: errno got %s want 0", errname(got));
		return false;
	}
	return true;
}

static void t_qp_ro_clean(struct ctx *c, const char *desc)
{
	uint64_t npages = (c->ro_size + c->page - 1) / c->page;
	struct vmsubst_query_pages r, again;
	struct vmsubst_page_range out[1];
	volatile char sum;
	char *map;

	if (!read_all(c->ro_fd, c->ro_size)) {
		fail(desc, "read: %s", strerror(errno));
		return;
	}
	map = mmap(NULL, c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	if (map == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		return;
	}
	sum = map[0];
	(void)sum;
	memset(out, FILL, sizeof(out));
	if (!qpages(c, desc, &r, c->ro_fd, 0, c->ro_size, out, ARRAY_SIZE(out)))
		goto out;
	if (r.pages_cached != npages || r.pages_mapped < 1 ||
	    r.pages_mapped > npages || r.pages_dirty || r.pages_writeback)
		fail(desc, QP_FMT, QP(&r));
	else if (r.ranges.count || r.ranges.total || !all_fill(out, sizeof(out)))
		fail(desc, "ranges %u/%llu reported for a clean file",
		     r.ranges.count, (unsigned long long)r.ranges.total);
	else if (r.size != sizeof(r) || r.flags || r.fd != c->ro_fd ||
		 r.reserved0 || r.offset || r.length != (uint64_t)c->ro_size ||
		 r.ranges.addr != uptr(out) || r.ranges.cap != ARRAY_SIZE(out))
		fail(desc, "input members changed");
	else if (!qpages(c, desc, &again, c->ro_fd, 0, c->ro_size, NULL, 0))
		goto out;
	else if (again.pages_cached != r.pages_cached ||
		 again.pages_mapped != r.pages_mapped)
		fail(desc, "a second query differs: " QP_FMT, QP(&again));
	else
		pass(desc);
out:
	munmap(map, c->page);
}

static void t_qp_beyond_eof(struct ctx *c, const char *desc)
{
	struct vmsubst_query_pages r;

	if (!read_all(c->ro_fd, c->ro_size) ||
	    !qpages(c, desc, &r, c->ro_fd, c->ro_size + c->page, c->page,
		    NULL, 0))
		return;
	if (r.pages_cached || r.pages_mapped || r.pages_dirty ||
	    r.pages_writeback || r.ranges.count || r.ranges.total)
		fail(desc, QP_FMT, QP(&r));
	else
		pass(desc);
}

/* Only the pages of the range count: one byte, one page. */
static void t_qp_ro_bounded(struct ctx *c, const char *desc)
{
	struct vmsubst_query_pages r;

	if (!read_all(c->ro_fd, c->ro_size) ||
	    !qpages(c, desc, &r, c->ro_fd, c->page + 1, 1, NULL, 0))
		return;
	if (r.pages_cached != 1 || r.pages_dirty || r.pages_writeback)
		fail(desc, QP_FMT, QP(&r));
	else
		pass(desc);
}

static void t_qp_rw_dirty(struct ctx *c, const char *desc)
{
	const uint64_t npages = 4;
	struct vmsubst_page_range out[2];
	struct vmsubst_query_pages r;
	size_t len = npages * c->page;
	char *buf = malloc(len), *back = malloc(len);
	int fd = rw_tmpfile(c);

	if (fd < 0 || !buf || !back) {
		fail(desc, "temporary file: %s", strerror(errno));
		goto out;
	}
	memset(buf, 'q', len);
	if (pwrite(fd, buf, len, 0) != (ssize_t)len || fdatasync(fd)) {
		fail(desc, "write: %s", strerror(errno));
		goto out;
	}
	memset(out, FILL, sizeof(out));
	if (!qpages(c, desc, &r, fd, 0, len, out, ARRAY_SIZE(out)))
		goto out;
	if (r.pages_cached != npages || r.pages_dirty || r.pages_writeback ||
	    r.ranges.total) {
		fail(desc, "written and synced: " QP_FMT, QP(&r));
		goto out;
	}
	/* Pages 1 and 3 written again, not synced: two dirty runs. */
	memset(buf, 'Q', len);
	if (pwrite(fd, buf, c->page, c->page) != c->page ||
	    pwrite(fd, buf, c->page, 3 * c->page) != c->page) {
		fail(desc, "write: %s", strerror(errno));
		goto out;
	}
	memset(out, FILL, sizeof(out));
	if (!qpages(c, desc, &r, fd, 0, len, out, 1))
		goto out;
	if (r.pages_cached != npages || r.pages_dirty != 2 || r.pages_writeback)
		fail(desc, "written without fsync: " QP_FMT, QP(&r));
	else if (r.ranges.count != 1 || r.ranges.total != 2 ||
		 out[0].offset != (uint64_t)c->page ||
		 out[0].length != (uint64_t)c->page ||
		 out[0].state != VMSUBST_PAGE_DIRTY || out[0].reserved0)
		fail(desc, "ranges %u/%llu: offset %llu length %llu state %#x",
		     r.ranges.count, (unsigned long long)r.ranges.total,
		     (unsigned long long)out[0].offset,
		     (unsigned long long)out[0].length, out[0].state);
	else if (!all_fill(&out[1], sizeof(out[1])))
		fail(desc, "wrote past ranges.count");
	else if (!qpages(c, desc, &r, fd, 0, len, NULL, 0))
		goto out;
	else if (r.pages_cached != npages || r.pages_dirty != 2)
		fail(desc, "the query changed something: " QP_FMT, QP(&r));
	else if (pread(fd, back, len, 0) != (ssize_t)len || back[0] != 'q' ||
		 back[c->page] != 'Q' || back[2 * c->page] != 'q' ||
		 back[3 * c->page] != 'Q')
		fail(desc, "the file's contents changed");
	else if (fdatasync(fd))
		fail(desc, "fdatasync: %s", strerror(errno));
	else if (!qpages(c, desc, &r, fd, 0, len, NULL, 0))
		goto out;
	else if (r.pages_cached != npages || r.pages_dirty || r.pages_writeback)
		fail(desc, "after fdatasync: " QP_FMT, QP(&r));
	else
		pass(desc);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	free(back);
}

/*
 * Page 0 clean and mapped, pages 1-3 dirty. UNLESS_DIRTY over the whole
 * range: EBUSY, and nothing unmapped or dropped; over page 0 alone: done;
 * after fdatasync, over the whole range: done.
 */
static void t_ud_rw(struct ctx *c, const char *desc)
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
	    pwrite(fd, buf, len - c->page, c->page) != (ssize_t)(len - c->page)) {
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
		fail(desc, "dirty range: errno got %s want EBUSY", errname(errno));
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
static void t_ud_rw_force(struct ctx *c, const char *desc)
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
		 VMSUBST_INVALIDATE_F_FORCE | VMSUBST_INVALIDATE_F_UNLESS_DIRTY);
	expect_inv_errno(c, desc, &r, EBUSY);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
}

static void t_ud_ro(struct ctx *c, const char *desc)
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

/* ---- pin: the cursor ---------------------------------------------------- */

static void t_pm_resume_ver0(struct ctx *c, const char *desc)
{
	struct vmsubst_pin_mappers r;

	pm_init(&r, c->base_fd, 0, c->page, 1);
	r.size = VMSUBST_PIN_MAPPERS_SIZE_VER0;
	r.flags = VMSUBST_PIN_F_RESUME;
	expect_errno(c, desc, &r, EINVAL);
}

/* One resumed call: @key/@addr in and out. */
static bool pm_resume(struct ctx *c, const char *desc, struct pm_result *res,
		      uint64_t offset, uint64_t length, uint32_t max_pages,
		      uint64_t *key, uint64_t *addr)
{
	memset(res->p, FILL, sizeof(res->p));
	memset(res->u, FILL, sizeof(res->u));
	pm_init(&res->r, c->ro_fd, offset, length, max_pages);
	res->r.flags = VMSUBST_PIN_F_RESUME;
	res->r.cursor_mm = *key;
	res->r.cursor_addr = *addr;
	array_init(&res->r.pinned, res->p, ARRAY_SIZE(res->p));
	array_init(&res->r.unpinned, res->u, ARRAY_SIZE(res->u));
	if (!expect_ok(c, desc, &res->r))
		return false;
	*key = res->r.cursor_mm;
	*addr = res->r.cursor_addr;
	return true;
}

/*
 * max_pages 1 over one mapping of npages: each call copies one page and
 * says BUDGET; the cursor stays before the cut mapping until its last page.
 */
static void t_pm_budget_resume(struct ctx *c, const char *desc)
{
	uint64_t npages = (c->ro_size + c->page - 1) / c->page;
	uint64_t key = 0, addr = 0, copied = 0, visited = 0;
	struct child ch = {};
	struct pm_result res;
	unsigned int calls = 0;

	if (!child_start(c, &ch)) {
		fail(desc, "child: %s", strerror(errno));
		goto out;
	}
	do {
		if (!pm_resume(c, desc, &res, 0, c->ro_size, 1, &key, &addr))
			goto out;
		calls++;
		copied += res.r.bytes_copied;
		visited += res.r.mappings;
		if ((res.r.status & VMSUBST_PIN_S_BUDGET) &&
		    (res.r.mappings || key || addr)) {
			fail(desc, "call %u: BUDGET, yet the cursor moved", calls);
			goto out;
		}
	} while ((res.r.status & (VMSUBST_PIN_S_BUDGET |
				  VMSUBST_PIN_S_TRUNCATED)) &&
		 calls <= npages + 1);
	if (calls != npages || copied != npages * c->page || visited != 1 ||
	    res.r.status || addr != uptr(ch.map) || !key)
		fail(desc, "%u calls for %llu pages: copied %llu visited %llu status %#x",
		     calls, (unsigned long long)npages,
		     (unsigned long long)copied, (unsigned long long)visited,
		     res.r.status);
	else if (smaps_kb(ch.pid, ch.map, "Anonymous") * 1024 !=
		 (long)(npages * c->page))
		fail(desc, "the child's mapping is not all private copies");
	else
		pass(desc);
out:
	child_stop(&ch);
}

static bool sysctl_read(const char *path, unsigned long *val)
{
	FILE *f = fopen(path, "r");
	bool ok = f && fscanf(f, "%lu", val) == 1;

	if (f)
		fclose(f);
	return ok;
}

static bool sysctl_write(const char *path, unsigned long val)
{
	FILE *f = fopen(path, "w");
	bool ok = f && fprintf(f, "%lu\n", val) > 0;

	if (f && fclose(f))
		ok = false;
	return ok;
}

/*
 * Of @n pages from page @first of @region, how many are present and
 * anonymous: a private copy (/proc/self/pagemap: bit 63 present, bit 61
 * file-page or shared-anon); -1 on error.
 */
static long private_pages(struct ctx *c, char *region, size_t first, size_t n)
{
	uint64_t *e = calloc(n, sizeof(*e));
	off_t at = (off_t)((uptr(region) / c->page + first) * sizeof(*e));
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	long priv = -1;

	if (fd >= 0 && e &&
	    pread(fd, e, n * sizeof(*e), at) == (ssize_t)(n * sizeof(*e))) {
		priv = 0;
		for (size_t i = 0; i < n; i++)
			priv += (e[i] >> 63 & 1) && !(e[i] >> 61 & 1);
	}
	if (fd >= 0)
		close(fd);
	free(e);
	return priv;
}

#define MAX_MAP_COUNT "/proc/sys/vm/max_map_count"
#define MANY_EXTRA 64	/* mappings beyond VMSUBST_PIN_VMAS_MAX */

static double ms_since(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (t1.tv_sec - t0->tv_sec) * 1e3 +
	       (t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/*
 * More private mappings of one page than one call visits: separate VMAs
 * of page 0 of the file, side by side (the same file offset each, so the
 * kernel cannot merge them), in our own address space. Resumed calls reach
 * and copy every one; the last ones, out of the first call's reach, are
 * private copies only after the second call.
 */
static void t_pm_many(struct ctx *c, const char *desc)
{
	const size_t n = VMSUBST_PIN_VMAS_MAX + MANY_EXTRA;
	uint64_t key = 0, addr = 0, copied = 0, visited = 0;
	uint32_t first_status = 0, first_mappings = 0;
	unsigned long old_max = 0;
	long tail_after_first = -1, priv, tail;
	char *region = MAP_FAILED;
	unsigned int calls = 0;
	struct timespec t0;
	struct pm_result res;
	double ms;

	if (!sysctl_read(MAX_MAP_COUNT, &old_max)) {
		fail(desc, MAX_MAP_COUNT ": %s", strerror(errno));
		return;
	}
	if (old_max < n + 1024 && !sysctl_write(MAX_MAP_COUNT, n + 1024)) {
		fail(desc, "raising " MAX_MAP_COUNT ": %s", strerror(errno));
		return;
	}
	region = mmap(NULL, n * c->page, PROT_NONE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (region == MAP_FAILED) {
		fail(desc, "mmap: %s", strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		if (mmap(region + i * c->page, c->page, PROT_READ,
			 MAP_PRIVATE | MAP_FIXED, c->ro_fd, 0) == MAP_FAILED) {
			fail(desc, "mapping %zu: %s", i, strerror(errno));
			goto out;
		}

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		if (!pm_resume(c, desc, &res, 0, c->page, VMSUBST_PIN_PAGES_MAX,
			       &key, &addr))
			goto out;
		calls++;
		copied += res.r.bytes_copied;
		visited += res.r.mappings;
		if (calls == 1) {
			first_status = res.r.status;
			first_mappings = res.r.mappings;
			tail_after_first = private_pages(c, region, n - MANY_EXTRA,
							 MANY_EXTRA);
		}
	} while ((res.r.status & (VMSUBST_PIN_S_BUDGET |
				  VMSUBST_PIN_S_TRUNCATED)) && calls < 16);
	ms = ms_since(&t0);
	printf("# pin: %llu private mappings, %llu KiB copied, in %u calls, %.0f ms\n",
	       (unsigned long long)visited, (unsigned long long)copied / 1024,
	       calls, ms);
	priv = private_pages(c, region, 0, n);
	tail = private_pages(c, region, n - MANY_EXTRA, MANY_EXTRA);

	if (first_mappings != VMSUBST_PIN_VMAS_MAX ||
	    first_status != VMSUBST_PIN_S_TRUNCATED)
		fail(desc, "first call: mappings %u status %#x", first_mappings,
		     first_status);
	else if (tail_after_first != 0)
		fail(desc, "after the first call %ld of the last %d are private",
		     tail_after_first, MANY_EXTRA);
	else if (calls != 2 || res.r.status || visited != n ||
		 copied != n * c->page)
		fail(desc, "%u calls, status %#x, visited %llu of %zu, copied %llu",
		     calls, res.r.status, (unsigned long long)visited, n,
		     (unsigned long long)copied);
	else if (priv != (long)n || tail != MANY_EXTRA)
		fail(desc, "private copies: %ld of %zu, %ld of the last %d",
		     priv, n, tail, MANY_EXTRA);
	else if (addr != uptr(region + (n - 1) * c->page))
		fail(desc, "cursor at %#llx, the last mapping is at %p",
		     (unsigned long long)addr, region + (n - 1) * c->page);
	else if (!pm_resume(c, desc, &res, 0, c->page, VMSUBST_PIN_PAGES_MAX,
			    &key, &addr))
		goto out;
	else if (res.r.mappings || res.r.status || res.r.pinned.total ||
		 addr != uptr(region + (n - 1) * c->page))
		fail(desc, "after the last cursor: mappings %u status %#x",
		     res.r.mappings, res.r.status);
	else {
		/* A VER0 caller: the first VMSUBST_PIN_VMAS_MAX, no cursor. */
		pm_init(&res.r, c->ro_fd, 0, c->page, VMSUBST_PIN_PAGES_MAX);
		res.r.size = VMSUBST_PIN_MAPPERS_SIZE_VER0;
		if (!expect_ok(c, desc, &res.r))
			goto out;
		if (res.r.mappings != VMSUBST_PIN_VMAS_MAX ||
		    res.r.status != VMSUBST_PIN_S_TRUNCATED ||
		    res.r.bytes_copied ||
		    res.r.bytes_private != (uint64_t)VMSUBST_PIN_VMAS_MAX * c->page)
			fail(desc, "VER0 call: mappings %u status %#x copied %llu private %llu",
			     res.r.mappings, res.r.status,
			     (unsigned long long)res.r.bytes_copied,
			     (unsigned long long)res.r.bytes_private);
		else if (!FILLED(res.r.cursor_mm) || !FILLED(res.r.cursor_addr))
			fail(desc, "VER0 call: written past its %d bytes",
			     VMSUBST_PIN_MAPPERS_SIZE_VER0);
		else
			pass(desc);
	}
out:
	if (region != MAP_FAILED)
		munmap(region, n * c->page);
	if (old_max && old_max < n + 1024 && !sysctl_write(MAX_MAP_COUNT, old_max))
		printf("# could not restore " MAX_MAP_COUNT " to %lu\n", old_max);
}

struct test {
	const char *desc;
	enum need need;
	void (*fn)(struct ctx *c, const char *desc);
	const struct cmd_desc *cmd;
};

/* The cases every command added after VERSION and INVALIDATE_RANGE gets. */
#define GENERIC(_name, _cmd)						\
	{ _name ": NULL argument returns EFAULT", NEED_NONE, g_null, _cmd }, \
	{ _name ": size below VER0 returns EINVAL", NEED_NONE, g_small, _cmd }, \
	{ _name ": size above a page returns E2BIG", NEED_NONE, g_huge, _cmd }, \
	{ _name ": larger size, non-zero tail returns E2BIG", NEED_NONE, g_big_dirty, _cmd }, \
	{ _name ": unknown flag returns EOPNOTSUPP", NEED_NONE, g_flag, _cmd }, \
	{ _name ": fd -1 returns EBADF", NEED_NONE, g_badfd, _cmd },	\
	{ _name ": closed fd returns EBADF", NEED_NONE, g_closedfd, _cmd }, \
	{ _name ": O_PATH fd returns EBADF", NEED_NONE, g_opath, _cmd }, \
	{ "no CAP_SYS_ADMIN: " _name " returns EPERM", NEED_NONE, g_eperm, _cmd }

#define RESERVED(_name, _cmd)						\
	{ _name ": non-zero reserved0 returns EINVAL", NEED_NONE, g_reserved, _cmd }

#define FILE_RANGE(_name, _cmd)						\
	{ _name ": length 0 returns EINVAL", NEED_NONE, g_len0, _cmd },	\
	{ _name ": offset + length wrapping returns EOVERFLOW", NEED_NONE, g_wrap, _cmd }, \
	{ _name ": end past LLONG_MAX returns EOVERFLOW", NEED_NONE, g_past_max, _cmd }

#define REGULAR_FILE(_name, _cmd)					\
	{ _name ": directory fd returns EISDIR", NEED_NONE, g_fd_dir, _cmd }, \
	{ _name ": character device fd returns EINVAL", NEED_NONE, g_fd_chardev, _cmd }, \
	{ _name ": no block device returns ENOTBLK", NEED_NOBDEV, g_nobdev, _cmd }, \
	{ _name ": DAX file returns EMEDIUMTYPE", NEED_DAX, g_dax, _cmd }

static const struct test tests[] = {
	{ "unknown command number returns ENOTTY", NEED_NONE, t_unknown_nr, NULL },
	{ "foreign ioctl type returns ENOTTY", NEED_NONE, t_foreign_type, NULL },
	{ "known number with wrong direction returns ENOTTY", NEED_NONE, t_wrong_dir, NULL },
	{ "version: NULL argument returns EFAULT", NEED_NONE, t_ver_null, NULL },
	{ "version: size below VER0 returns EINVAL", NEED_NONE, t_ver_small, NULL },
	{ "version: size 0 returns EINVAL", NEED_NONE, t_ver_zero_size, NULL },
	{ "version: larger size, non-zero tail returns E2BIG", NEED_NONE, t_ver_big_dirty, NULL },
	{ "version: larger size, zero tail succeeds, tail untouched", NEED_NONE, t_ver_big_clean, NULL },
	{ "version: size above a page returns E2BIG", NEED_NONE, t_ver_huge, NULL },
	{ "version: unknown flag returns EOPNOTSUPP", NEED_NONE, t_ver_flag, NULL },
	{ "version: non-zero reserved0 returns EINVAL", NEED_NONE, t_ver_reserved, NULL },
	{ "version: ABI 1, every feature, module version string", NEED_NONE, t_ver_ok, NULL },
	{ "invalidate: NULL argument returns EFAULT", NEED_NONE, t_inv_null, NULL },
	{ "invalidate: size below VER0 returns EINVAL", NEED_NONE, t_inv_small, NULL },
	{ "invalidate: unknown flag returns EOPNOTSUPP", NEED_NONE, t_inv_flag, NULL },
	{ "invalidate: non-zero reserved0 returns EINVAL", NEED_NONE, t_inv_reserved, NULL },
	{ "invalidate: length 0 returns EINVAL", NEED_NONE, t_inv_len0, NULL },
	{ "invalidate: offset + length wrapping returns EOVERFLOW", NEED_NONE, t_inv_wrap, NULL },
	{ "invalidate: end past LLONG_MAX returns EOVERFLOW", NEED_NONE, t_inv_past_max, NULL },
	{ "invalidate: fd -1 returns EBADF", NEED_NONE, t_inv_fd_neg, NULL },
	{ "invalidate: closed fd returns EBADF", NEED_NONE, t_inv_fd_closed, NULL },
	{ "invalidate: O_PATH fd returns EBADF", NEED_NONE, t_inv_fd_path, NULL },
	{ "invalidate: directory fd returns EISDIR", NEED_NONE, t_inv_dir, NULL },
	{ "invalidate: character device fd returns EINVAL", NEED_NONE, t_inv_chardev, NULL },
	{ "invalidate: command number unchanged by VER1", NEED_NONE, t_inv_number, NULL },
	{ "invalidate: size above a page returns E2BIG", NEED_NONE, g_huge, &CMD_INV },
	{ "invalidate: larger size, non-zero tail returns E2BIG", NEED_NONE, g_big_dirty, &CMD_INV },
	{ "invalidate: DAX file returns EMEDIUMTYPE", NEED_DAX, g_dax, &CMD_INV },
	{ "invalidate: REFAULT_ASYNC with REFAULT_SYNC returns EINVAL", NEED_NONE, t_inv_refault_both, NULL },
	{ "invalidate: outcomes cap above the maximum returns E2BIG", NEED_NONE, a_outcomes_big, &CMD_INV },
	{ "invalidate: outcomes without an address returns EFAULT", NEED_NONE, a_outcomes_null, &CMD_INV },
	{ "invalidate: mappers cap above the maximum returns E2BIG", NEED_NONE, a_inv_mappers_big, &CMD_INV },
	{ "invalidate: mappers without an address returns EFAULT", NEED_NONE, a_inv_mappers_null, &CMD_INV },
	{ "no CAP_SYS_ADMIN: version returns EPERM", NEED_NONE, t_eperm_version, NULL },
	{ "no CAP_SYS_ADMIN: unknown command returns EPERM", NEED_NONE, t_eperm_unknown, NULL },
	{ "no CAP_SYS_ADMIN: invalidate returns EPERM", NEED_NONE, t_eperm_invalidate, NULL },
	{ "no block device: returns ENOTBLK", NEED_NOBDEV, t_nobdev, NULL },
	{ "no block device: with F_FORCE returns ENOTBLK", NEED_NOBDEV, t_nobdev_force, NULL },
	{ "rw mount: without F_FORCE returns EACCES", NEED_RW, t_rw_noforce, NULL },
	{ "rw mount: F_FORCE keeps dirty pages, drops them once clean", NEED_RW, t_rw_dirty, NULL },
	{ "ro mount: read file, every cached page dropped", NEED_RO, t_ro_drop, NULL },
	{ "ro mount: second call finds nothing cached", NEED_RO, t_ro_again, NULL },
	{ "ro mount: range beyond EOF gives all-zero counts", NEED_RO, t_ro_beyond_eof, NULL },
	{ "ro mount: range past EOF clamped to the file", NEED_RO, t_ro_clamp, NULL },
	{ "ro mount: unaligned byte drops its page only", NEED_RO, t_ro_bounded, NULL },
	{ "ro mount: mapped pages counted, zapped, refault right", NEED_RO, t_ro_mapped, NULL },
	{ "ro mount: private COW copy survives (even_cows 0)", NEED_RO, t_ro_private_cow, NULL },
	{ "ro mount: F_FORCE accepted", NEED_RO, t_ro_force, NULL },
	{ "ro mount: a VER0-sized caller works, nothing written past it", NEED_RO, t_inv_ver0_size, NULL },
	{ "ro mount: F_REFAULT_SYNC reads every page back", NEED_RO, t_ro_refault_sync, NULL },
	{ "ro mount: F_REFAULT_ASYNC reports the pages it read ahead", NEED_RO, t_ro_refault_async, NULL },
	{ "ro mount: F_DROP alone keeps a mapped page, reported MAPPED", NEED_RO, t_ro_drop_only, NULL },
	{ "ro mount: F_ZAP alone unmaps, drops nothing", NEED_RO, t_ro_zap_only, NULL },
	{ "ro mount: F_REPORT_MAPPERS reports our own mapping", NEED_RO, t_ro_report_mappers, NULL },
	{ "ro mount: no mappers reported without F_REPORT_MAPPERS", NEED_RO, t_inv_mappers_without_flag, NULL },
	{ "rw mount: F_FORCE reports the dirty pages as one DIRTY range", NEED_RW, t_rw_dirty_outcomes, NULL },

	GENERIC("bdev", &CMD_BDEV),
	RESERVED("bdev", &CMD_BDEV),
	FILE_RANGE("bdev", &CMD_BDEV),
	{ "bdev: regular file fd returns ENOTBLK", NEED_NONE, t_bd_regular, &CMD_BDEV },
	{ "bdev: character device fd returns ENOTBLK", NEED_NONE, t_bd_chardev, &CMD_BDEV },
	{ "bdev: directory fd returns ENOTBLK", NEED_NONE, t_bd_dir, &CMD_BDEV },
	{ "bdev: kept cap above the maximum returns E2BIG", NEED_NONE, a_kept_big, &CMD_BDEV },
	{ "bdev: kept without an address returns EFAULT", NEED_NONE, a_kept_null, &CMD_BDEV },
	{ "bdev: range past the end of the device returns ENXIO", NEED_BDEV, t_bd_past_end, &CMD_BDEV },
	{ "bdev: range starting at the end of the device returns ENXIO", NEED_BDEV, t_bd_at_end, &CMD_BDEV },
	{ "bdev: device of a rw mount without F_FORCE returns EACCES", NEED_RWBDEV, t_bd_rw_noforce, &CMD_BDEV },
	{ "bdev: device of a rw mount with F_FORCE keeps the superblock", NEED_RWBDEV, t_bd_rw_force, &CMD_BDEV },
	{ "bdev: ro ext4 keeps the superblock page, reported BUSY", NEED_BDEV, t_bd_superblock, &CMD_BDEV },
	{ "bdev: no kept array still counts the kept ranges", NEED_BDEV, t_bd_truncated, &CMD_BDEV },
	{ "bdev: pages read through the device node are dropped", NEED_BDEV, t_bd_drops_data, &CMD_BDEV },

	GENERIC("inodes", &CMD_INODES),
	{ "inodes: no inode numbers returns EINVAL", NEED_NONE, t_ri_none, &CMD_INODES },
	{ "inodes: more than the maximum returns E2BIG", NEED_NONE, t_ri_too_many, &CMD_INODES },
	{ "inodes: list without an address returns EFAULT", NEED_NONE, t_ri_null_list, &CMD_INODES },
	{ "inodes: in_use cap above the maximum returns E2BIG", NEED_NONE, a_in_use_big, &CMD_INODES },
	{ "inodes: in_use without an address returns EFAULT", NEED_NONE, a_in_use_null, &CMD_INODES },
	{ "inodes: no block device returns ENOTBLK", NEED_NOBDEV, g_nobdev, &CMD_INODES },
	{ "inodes: rw mount without F_FORCE returns EACCES", NEED_RW, g_rw_noforce, &CMD_INODES },
	{ "inodes: not ext2/3/4 returns EMEDIUMTYPE", NEED_OTHERFS, t_ri_otherfs, &CMD_INODES },
	{ "inodes: an unused file is evicted, then not cached", NEED_RO, t_ri_unused, &CMD_INODES },
	{ "inodes: an open, mapped file is in use: OPEN | MAPPED", NEED_RO, t_ri_open, &CMD_INODES },
	{ "inodes: root and caller are in use, 0 and 2^64-1 not cached", NEED_RO, t_ri_root_caller, &CMD_INODES },
	{ "inodes: in_use truncated to its capacity, total exact", NEED_RO, t_ri_truncated, &CMD_INODES },
	{ "inodes: rw mount with F_FORCE", NEED_RW, t_ri_rw_force, &CMD_INODES },

	GENERIC("dentries", &CMD_DENTRIES),
	RESERVED("dentries", &CMD_DENTRIES),
	{ "dentries: name \".\" returns EINVAL", NEED_NONE, t_rd_dot, &CMD_DENTRIES },
	{ "dentries: name \"..\" returns EINVAL", NEED_NONE, t_rd_dotdot, &CMD_DENTRIES },
	{ "dentries: name with '/' returns EINVAL", NEED_NONE, t_rd_slash, &CMD_DENTRIES },
	{ "dentries: empty name returns EINVAL", NEED_NONE, t_rd_empty, &CMD_DENTRIES },
	{ "dentries: name without NUL returns EINVAL", NEED_NONE, t_rd_no_nul, &CMD_DENTRIES },
	{ "dentries: bytes after the last name return EINVAL", NEED_NONE, t_rd_extra_bytes, &CMD_DENTRIES },
	{ "dentries: fewer names than nr_names returns EINVAL", NEED_NONE, t_rd_fewer_names, &CMD_DENTRIES },
	{ "dentries: name of 256 bytes returns EINVAL", NEED_NONE, t_rd_long_name, &CMD_DENTRIES },
	{ "dentries: more names than the maximum returns E2BIG", NEED_NONE, t_rd_too_many, &CMD_DENTRIES },
	{ "dentries: names_size above the maximum returns E2BIG", NEED_NONE, t_rd_too_long, &CMD_DENTRIES },
	{ "dentries: names without an address returns EFAULT", NEED_NONE, t_rd_null_names, &CMD_DENTRIES },
	{ "dentries: names_size without names returns EINVAL", NEED_NONE, t_rd_size_without_names, &CMD_DENTRIES },
	{ "dentries: F_UNHASH_BUSY without names returns EINVAL", NEED_NONE, t_rd_unhash_without_names, &CMD_DENTRIES },
	{ "dentries: regular file fd returns ENOTDIR", NEED_NONE, t_rd_notdir, &CMD_DENTRIES },
	{ "dentries: no block device returns ENOTBLK", NEED_NOBDEV, g_nobdev, &CMD_DENTRIES },
	{ "dentries: rw mount without F_FORCE returns EACCES", NEED_RW, g_rw_noforce, &CMD_DENTRIES },
	{ "dentries: a negative dentry is dropped, then not cached", NEED_RO, t_rd_negative, &CMD_DENTRIES },
	{ "dentries: no names drops unused children, negative ones too", NEED_RO, t_rd_whole_dir, &CMD_DENTRIES },
	{ "dentries: an unused file's dentry is dropped, looks up again", NEED_RO, t_rd_unused_file, &CMD_DENTRIES },
	{ "dentries: an open file's dentry is busy", NEED_RO, t_rd_busy, &CMD_DENTRIES },
	{ "dentries: F_UNHASH_BUSY drops it, the open file reads on", NEED_RO, t_rd_unhash_busy, &CMD_DENTRIES },
	{ "dentries: a mount point is never touched", NEED_RO_SUBDIR, t_rd_mountpoint, &CMD_DENTRIES },
	{ "dentries: a directory with a mount below is never touched", NEED_RO, t_rd_submount, &CMD_DENTRIES },
	{ "dentries: rw mount with F_FORCE", NEED_RW, t_rd_rw_force, &CMD_DENTRIES },

	GENERIC("query", &CMD_QUERY),
	RESERVED("query", &CMD_QUERY),
	FILE_RANGE("query", &CMD_QUERY),
	REGULAR_FILE("query", &CMD_QUERY),
	{ "query: mappers cap above the maximum returns E2BIG", NEED_NONE, a_qm_big, &CMD_QUERY },
	{ "query: mappers without an address returns EFAULT", NEED_NONE, a_qm_null, &CMD_QUERY },
	{ "query: finds our shared and private exec mappings", NEED_RO, t_qm_own, &CMD_QUERY },
	{ "query: only mappings of the range, none beyond EOF", NEED_RO, t_qm_range, &CMD_QUERY },
	{ "query: truncated to its capacity, total exact", NEED_RO, t_qm_truncated, &CMD_QUERY },

	GENERIC("pin", &CMD_PIN),
	FILE_RANGE("pin", &CMD_PIN),
	REGULAR_FILE("pin", &CMD_PIN),
	{ "pin: max_pages 0 returns EINVAL", NEED_NONE, t_pm_zero_budget, &CMD_PIN },
	{ "pin: max_pages above the maximum returns EINVAL", NEED_NONE, t_pm_big_budget, &CMD_PIN },
	{ "pin: pinned cap above the maximum returns E2BIG", NEED_NONE, a_pinned_big, &CMD_PIN },
	{ "pin: pinned without an address returns EFAULT", NEED_NONE, a_pinned_null, &CMD_PIN },
	{ "pin: unpinned cap above the maximum returns E2BIG", NEED_NONE, a_unpinned_big, &CMD_PIN },
	{ "pin: unpinned without an address returns EFAULT", NEED_NONE, a_unpinned_null, &CMD_PIN },
	{ "pin: a child's private mapping is copied, survives invalidation", NEED_RO, t_pm_child, &CMD_PIN },
	{ "pin: a second pin finds the pages private, copies nothing", NEED_RO, t_pm_again, &CMD_PIN },
	{ "pin: max_pages 1 copies one page and says BUDGET", NEED_RO, t_pm_budget, &CMD_PIN },
	{ "pin: a range beyond EOF pins nothing", NEED_RO, t_pm_beyond_eof, &CMD_PIN },
	{ "pin: F_RESUME with a VER0-sized struct returns EINVAL", NEED_NONE, t_pm_resume_ver0, &CMD_PIN },
	{ "pin: F_RESUME after BUDGET finishes the cut mapping, one page a call", NEED_RO, t_pm_budget_resume, &CMD_PIN },
	{ "pin: > VMSUBST_PIN_VMAS_MAX private mappings, F_RESUME reaches and pins every one", NEED_RO, t_pm_many, &CMD_PIN },

	GENERIC("query pages", &CMD_QPAGES),
	RESERVED("query pages", &CMD_QPAGES),
	FILE_RANGE("query pages", &CMD_QPAGES),
	REGULAR_FILE("query pages", &CMD_QPAGES),
	{ "query pages: ranges cap above the maximum returns E2BIG", NEED_NONE, a_qp_ranges_big, &CMD_QPAGES },
	{ "query pages: ranges without an address returns EFAULT", NEED_NONE, a_qp_ranges_null, &CMD_QPAGES },
	{ "query pages: a read file is cached, our page mapped, none dirty", NEED_RO, t_qp_ro_clean, &CMD_QPAGES },
	{ "query pages: a range beyond EOF gives all-zero counts", NEED_RO, t_qp_beyond_eof, &CMD_QPAGES },
	{ "query pages: one byte counts its page only", NEED_RO, t_qp_ro_bounded, &CMD_QPAGES },
	{ "query pages: written without fsync: dirty, reported, nothing changed", NEED_RW, t_qp_rw_dirty, &CMD_QPAGES },
	{ "rw mount: F_UNLESS_DIRTY: EBUSY with dirty pages, changes nothing; done once clean", NEED_RW, t_ud_rw, NULL },
	{ "rw mount: F_FORCE | F_UNLESS_DIRTY still refuses a dirty page", NEED_RW, t_ud_rw_force, NULL },
	{ "ro mount: F_UNLESS_DIRTY drops a clean file", NEED_RO, t_ud_ro, NULL },
};

static const char *const need_name[] = {
	[NEED_RO] = "a file on a read-only ext2/3/4 filesystem",
	[NEED_RW] = "a file on a read-write block-device filesystem",
	[NEED_NOBDEV] = "a file on a filesystem without a block device",
	[NEED_OTHERFS] = "a file on a block-device filesystem other than ext2/3/4",
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
	if (stat(c->ro_dir, &d) || stat(c->ro_parent, &p) || d.st_dev != p.st_dev)
		goto none;
	c->path[NEED_RO_SUBDIR] = c->ro_dir;
	return;
none:
	c->ro_parent[0] = 0;
}

int main(int argc, char **argv)
{
	struct ctx c = { .ro_fd = -1 };
	const char *bdev = NULL;
	struct stat st;

	setvbuf(stdout, NULL, _IOLBF, 0);
	c.page = sysconf(_SC_PAGESIZE);

	for (int i = 1; i < argc; i++) {
		enum need kind;

		if (!strcmp(argv[i], "--bdev") && i + 1 < argc) {
			bdev = argv[++i];
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

	if (c.path[NEED_RO]) {
		ro_dirs(&c);
		ro_ino_skip = c.ro_ino;
	}
	if (bdev)
		snprintf(c.bdev_path[0], PATH_MAX, "%s", bdev);
	else if (c.path[NEED_RO])
		bdev_of(c.path[NEED_RO], c.bdev_path[0], PATH_MAX);
	if (c.bdev_path[0][0]) {
		bdev_fd = open(c.bdev_path[0], O_RDONLY | O_CLOEXEC);
		if (bdev_fd < 0) {
			printf("Bail out! %s: %s\n", c.bdev_path[0], strerror(errno));
			return 1;
		}
		c.path[NEED_BDEV] = c.bdev_path[0];
		printf("# block device %s\n", c.bdev_path[0]);
	}
	if (c.path[NEED_RW] &&
	    bdev_of(c.path[NEED_RW], c.bdev_path[1], PATH_MAX)) {
		rwbdev_fd = open(c.bdev_path[1], O_RDONLY | O_CLOEXEC);
		if (rwbdev_fd >= 0)
			c.path[NEED_RWBDEV] = c.bdev_path[1];
	}

	c.dev = open("/dev/vmsubst", O_RDWR | O_CLOEXEC);
	if (c.dev < 0) {
		printf("Bail out! /dev/vmsubst: %s\n", strerror(errno));
		return 1;
	}
	/* Argument checks run on a file that would otherwise be accepted. */
	c.base_fd = c.ro_fd >= 0 ? c.ro_fd : open("/proc/self/exe",
						  O_RDONLY | O_CLOEXEC);
	c.dir_fd = open(c.ro_fd >= 0 ? c.ro_dir : "/",
			O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c.base_fd < 0 || c.dir_fd < 0) {
		printf("Bail out! /proc/self/exe or a directory: %s\n",
		       strerror(errno));
		return 1;
	}

	printf("1..%zu\n", ARRAY_SIZE(tests));
	for (size_t i = 0; i < ARRAY_SIZE(tests); i++) {
		const struct test *t = &tests[i];

		if (t->need != NEED_NONE && !c.path[t->need]) {
			char why[96];

			snprintf(why, sizeof(why), "needs %s", need_name[t->need]);
			skip(t->desc, why);
			continue;
		}
		c.cmd = t->cmd;
		t->fn(&c, t->desc);
	}
	return failures ? 1 : 0;
}
