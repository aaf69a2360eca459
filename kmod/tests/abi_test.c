// SPDX-License-Identifier: GPL-2.0
/*
 * abi_test: the /dev/vmsubst ioctl ABI, from userspace, with TAP output.
 *
 * Usage: abi_test [FILE...]   (as root, vmsubst.ko loaded)
 *
 * Each FILE is classified by where it lives; at most one of each kind:
 *   - on a read-only mounted block-device filesystem (ext4 -o ro), of at
 *     least 3 pages: page cache counting, dropping, unmapping;
 *   - on a read-write mounted block-device filesystem: EACCES without
 *     VMSUBST_INVALIDATE_F_FORCE, and dirty versus clean pages with it
 *     (a temporary file is made next to FILE; FILE itself is not written);
 *   - on a filesystem without a block device (tmpfs): ENOTBLK.
 * Cases for a kind not given are skipped with the reason.
 *
 * Output members are filled with 0xcc before every call; a failing call must
 * leave them so. Exit status is 0 when every case passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/capability.h>

#include <uapi/linux/vmsubst.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define FILL 0xcc

/* Exit codes of the capability-dropping child that are not an errno. */
#define CHILD_SUCCEEDED 250
#define CHILD_TOUCHED	251
#define CHILD_CAPSET	252

enum need { NEED_NONE, NEED_RO, NEED_RW, NEED_NOBDEV };

struct ctx {
	int dev;
	long page;
	int base_fd;			/* a regular file, for argument checks */
	const char *path[4];		/* indexed by enum need */
	int ro_fd;
	off_t ro_size;
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

static int xioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) ? errno : 0;
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
	return all_fill((const char *)r + INV_OUT, sizeof(*r) - INV_OUT);
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
	else if (!(v.features & VMSUBST_FEATURE_INVALIDATE_RANGE))
		fail(desc, "features %#llx lack INVALIDATE_RANGE",
		     (unsigned long long)v.features);
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

struct test {
	const char *desc;
	enum need need;
	void (*fn)(struct ctx *c, const char *desc);
};

static const struct test tests[] = {
	{ "unknown command number returns ENOTTY", NEED_NONE, t_unknown_nr },
	{ "foreign ioctl type returns ENOTTY", NEED_NONE, t_foreign_type },
	{ "known number with wrong direction returns ENOTTY", NEED_NONE, t_wrong_dir },
	{ "version: NULL argument returns EFAULT", NEED_NONE, t_ver_null },
	{ "version: size below VER0 returns EINVAL", NEED_NONE, t_ver_small },
	{ "version: size 0 returns EINVAL", NEED_NONE, t_ver_zero_size },
	{ "version: larger size, non-zero tail returns E2BIG", NEED_NONE, t_ver_big_dirty },
	{ "version: larger size, zero tail succeeds, tail untouched", NEED_NONE, t_ver_big_clean },
	{ "version: size above a page returns E2BIG", NEED_NONE, t_ver_huge },
	{ "version: unknown flag returns EOPNOTSUPP", NEED_NONE, t_ver_flag },
	{ "version: non-zero reserved0 returns EINVAL", NEED_NONE, t_ver_reserved },
	{ "version: ABI 1, INVALIDATE_RANGE, module version string", NEED_NONE, t_ver_ok },
	{ "invalidate: NULL argument returns EFAULT", NEED_NONE, t_inv_null },
	{ "invalidate: size below VER0 returns EINVAL", NEED_NONE, t_inv_small },
	{ "invalidate: unknown flag returns EOPNOTSUPP", NEED_NONE, t_inv_flag },
	{ "invalidate: non-zero reserved0 returns EINVAL", NEED_NONE, t_inv_reserved },
	{ "invalidate: length 0 returns EINVAL", NEED_NONE, t_inv_len0 },
	{ "invalidate: offset + length wrapping returns EOVERFLOW", NEED_NONE, t_inv_wrap },
	{ "invalidate: end past LLONG_MAX returns EOVERFLOW", NEED_NONE, t_inv_past_max },
	{ "invalidate: fd -1 returns EBADF", NEED_NONE, t_inv_fd_neg },
	{ "invalidate: closed fd returns EBADF", NEED_NONE, t_inv_fd_closed },
	{ "invalidate: O_PATH fd returns EBADF", NEED_NONE, t_inv_fd_path },
	{ "invalidate: directory fd returns EISDIR", NEED_NONE, t_inv_dir },
	{ "invalidate: character device fd returns EINVAL", NEED_NONE, t_inv_chardev },
	{ "no CAP_SYS_ADMIN: version returns EPERM", NEED_NONE, t_eperm_version },
	{ "no CAP_SYS_ADMIN: unknown command returns EPERM", NEED_NONE, t_eperm_unknown },
	{ "no CAP_SYS_ADMIN: invalidate returns EPERM", NEED_NONE, t_eperm_invalidate },
	{ "no block device: returns ENOTBLK", NEED_NOBDEV, t_nobdev },
	{ "no block device: with F_FORCE returns ENOTBLK", NEED_NOBDEV, t_nobdev_force },
	{ "rw mount: without F_FORCE returns EACCES", NEED_RW, t_rw_noforce },
	{ "rw mount: F_FORCE keeps dirty pages, drops them once clean", NEED_RW, t_rw_dirty },
	{ "ro mount: read file, every cached page dropped", NEED_RO, t_ro_drop },
	{ "ro mount: second call finds nothing cached", NEED_RO, t_ro_again },
	{ "ro mount: range beyond EOF gives all-zero counts", NEED_RO, t_ro_beyond_eof },
	{ "ro mount: range past EOF clamped to the file", NEED_RO, t_ro_clamp },
	{ "ro mount: unaligned byte drops its page only", NEED_RO, t_ro_bounded },
	{ "ro mount: mapped pages counted, zapped, refault right", NEED_RO, t_ro_mapped },
	{ "ro mount: private COW copy survives (even_cows 0)", NEED_RO, t_ro_private_cow },
	{ "ro mount: F_FORCE accepted", NEED_RO, t_ro_force },
};

static const char *const need_name[] = {
	[NEED_RO] = "a file on a read-only block-device filesystem",
	[NEED_RW] = "a file on a read-write block-device filesystem",
	[NEED_NOBDEV] = "a file on a filesystem without a block device",
};

static enum need classify(const char *path, struct stat *st)
{
	struct statvfs vfs;

	if (stat(path, st) || statvfs(path, &vfs)) {
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
	return vfs.f_flag & ST_RDONLY ? NEED_RO : NEED_RW;
}

int main(int argc, char **argv)
{
	struct ctx c = { .ro_fd = -1 };
	struct stat st;

	setvbuf(stdout, NULL, _IOLBF, 0);
	c.page = sysconf(_SC_PAGESIZE);

	for (int i = 1; i < argc; i++) {
		enum need kind = classify(argv[i], &st);

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
			c.ro_fd = open(argv[i], O_RDONLY | O_CLOEXEC);
			if (c.ro_fd < 0) {
				printf("Bail out! %s: %s\n", argv[i],
				       strerror(errno));
				return 1;
			}
		}
	}

	c.dev = open("/dev/vmsubst", O_RDWR | O_CLOEXEC);
	if (c.dev < 0) {
		printf("Bail out! /dev/vmsubst: %s\n", strerror(errno));
		return 1;
	}
	/* Argument checks run on a file that would otherwise be accepted. */
	c.base_fd = c.ro_fd >= 0 ? c.ro_fd : open("/proc/self/exe",
						  O_RDONLY | O_CLOEXEC);
	if (c.base_fd < 0) {
		printf("Bail out! /proc/self/exe: %s\n", strerror(errno));
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
		t->fn(&c, t->desc);
	}
	return failures ? 1 : 0;
}
