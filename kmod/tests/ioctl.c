// SPDX-License-Identifier: GPL-2.0
/*
 * Thin wrappers of each command (its arguments filled with 0xcc, then the
 * valid ones set), what every command's generic cases need of it (struct
 * cmd_desc), and those cases.
 */
#include "harness.h"

const char *errname(int err)
{
	const char *name = err ? strerrorname_np(err) : "0";

	return name ? name : "?";
}

bool all_fill(const void *p, size_t len)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < len; i++)
		if (b[i] != FILL)
			return false;
	return true;
}

bool all_zero(const void *p, size_t len)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < len; i++)
		if (b[i])
			return false;
	return true;
}

int xioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) ? errno : 0;
}

uint64_t uptr(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

void array_init(struct vmsubst_array *a, void *items, uint32_t cap)
{
	a->addr = uptr(items);
	a->cap = cap;
}

bool array_untouched(const struct vmsubst_array *a)
{
	return FILLED(a->count) && FILLED(a->total);
}

bool inv_untouched(const struct vmsubst_invalidate_range *r)
{
	return all_fill((const char *)r + INV_OUT,
			VMSUBST_INVALIDATE_RANGE_SIZE_VER0 - INV_OUT) &&
	       array_untouched(&r->outcomes) && array_untouched(&r->mappers) &&
	       FILLED(r->pages_refaulted);
}

void inv_init(struct vmsubst_invalidate_range *r, int fd, uint64_t offset,
	      uint64_t length, uint32_t flags)
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

void expect_inv_errno(struct ctx *c, const char *desc,
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
bool invalidate(struct ctx *c, const char *desc,
		struct vmsubst_invalidate_range *r, int fd, uint64_t offset,
		uint64_t length, uint32_t flags)
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
int errno_unprivileged(int dev, unsigned long cmd, void *arg,
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

void report_unprivileged(const char *desc, int got)
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

uint64_t root_ino = 2;

void bd_init(struct vmsubst_invalidate_bdev *r, int fd, uint64_t offset,
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

bool bd_untouched(const void *p)
{
	const struct vmsubst_invalidate_bdev *r = p;

	return array_untouched(&r->kept) && FILLED(r->pages_cached) &&
	       FILLED(r->pages_dropped) && FILLED(r->pages_kept);
}

void bd_valid(struct ctx *c, void *arg)
{
	bd_init(arg, c->bdev_fd >= 0 ? c->bdev_fd : c->base_fd, 0, c->page, 0);
}

void ri_init(struct vmsubst_revalidate_inodes *r, int fd, const uint64_t *inos,
	     uint32_t n, uint32_t flags)
{
	memset(r, FILL, sizeof(*r));
	r->size = sizeof(*r);
	r->flags = flags;
	r->fd = fd;
	r->nr_inodes = n;
	r->inodes = uptr(inos);
	array_init(&r->in_use, NULL, 0);
}

bool ri_untouched(const void *p)
{
	const struct vmsubst_revalidate_inodes *r = p;

	return array_untouched(&r->in_use) && FILLED(r->evicted) &&
	       FILLED(r->not_cached);
}

void ri_valid(struct ctx *c, void *arg)
{
	ri_init(arg, c->base_fd, &root_ino, 1, 0);
}

void rd_init(struct vmsubst_revalidate_dentries *r, int fd, const void *names,
	     uint32_t nr, uint32_t names_size, uint32_t flags)
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

bool rd_untouched(const void *p)
{
	const struct vmsubst_revalidate_dentries *r = p;

	return FILLED(r->dropped) && FILLED(r->not_cached) && FILLED(r->busy) &&
	       FILLED(r->mountpoints);
}

void rd_valid(struct ctx *c, void *arg)
{
	rd_init(arg, c->dir_fd, NULL, 0, 0, 0);
}

void qm_init(struct vmsubst_query_mappers *r, int fd, uint64_t offset,
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

bool qm_untouched(const void *p)
{
	return array_untouched(
		&((const struct vmsubst_query_mappers *)p)->mappers);
}

void qm_valid(struct ctx *c, void *arg)
{
	qm_init(arg, c->base_fd, 0, c->page, NULL, 0);
}

void pm_init(struct vmsubst_pin_mappers *r, int fd, uint64_t offset,
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

bool pm_untouched(const void *p)
{
	const struct vmsubst_pin_mappers *r = p;

	return array_untouched(&r->pinned) && array_untouched(&r->unpinned) &&
	       FILLED(r->bytes_copied) && FILLED(r->bytes_private) &&
	       FILLED(r->bytes_failed) && FILLED(r->status) &&
	       FILLED(r->mappings) && FILLED(r->cursor_mm) &&
	       FILLED(r->cursor_addr);
}

void pm_valid(struct ctx *c, void *arg)
{
	pm_init(arg, c->base_fd, 0, c->page, 1);
}

void qp_init(struct vmsubst_query_pages *r, int fd, uint64_t offset,
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

bool qp_untouched(const void *p)
{
	const struct vmsubst_query_pages *r = p;

	return array_untouched(&r->ranges) && FILLED(r->pages_cached) &&
	       FILLED(r->pages_mapped) && FILLED(r->pages_dirty) &&
	       FILLED(r->pages_writeback);
}

void qp_valid(struct ctx *c, void *arg)
{
	qp_init(arg, c->base_fd, 0, c->page, NULL, 0);
}

bool ir_untouched(const void *p)
{
	return inv_untouched(p);
}

void ir_valid(struct ctx *c, void *arg)
{
	inv_init(arg, c->base_fd, 0, c->page, 0);
}

const struct cmd_desc CMD_INV = {
	.cmd = VMSUBST_IOC_INVALIDATE_RANGE,
	.size = sizeof(struct vmsubst_invalidate_range),
	.ver0 = VMSUBST_INVALIDATE_RANGE_SIZE_VER0,
	.reserved = offsetof(struct vmsubst_invalidate_range, reserved0),
	.init = ir_valid,
	.untouched = ir_untouched,
};

const struct cmd_desc CMD_BDEV = {
	.cmd = VMSUBST_IOC_INVALIDATE_BDEV,
	.size = sizeof(struct vmsubst_invalidate_bdev),
	.ver0 = VMSUBST_INVALIDATE_BDEV_SIZE_VER0,
	.reserved = offsetof(struct vmsubst_invalidate_bdev, reserved0),
	.init = bd_valid,
	.untouched = bd_untouched,
};

const struct cmd_desc CMD_INODES = {
	.cmd = VMSUBST_IOC_REVALIDATE_INODES,
	.size = sizeof(struct vmsubst_revalidate_inodes),
	.ver0 = VMSUBST_REVALIDATE_INODES_SIZE_VER0,
	.init = ri_valid,
	.untouched = ri_untouched,
};

const struct cmd_desc CMD_DENTRIES = {
	.cmd = VMSUBST_IOC_REVALIDATE_DENTRIES,
	.size = sizeof(struct vmsubst_revalidate_dentries),
	.ver0 = VMSUBST_REVALIDATE_DENTRIES_SIZE_VER0,
	.reserved = offsetof(struct vmsubst_revalidate_dentries, reserved0),
	.init = rd_valid,
	.untouched = rd_untouched,
	.dir_fd = true,
};

const struct cmd_desc CMD_QUERY = {
	.cmd = VMSUBST_IOC_QUERY_MAPPERS,
	.size = sizeof(struct vmsubst_query_mappers),
	.ver0 = VMSUBST_QUERY_MAPPERS_SIZE_VER0,
	.reserved = offsetof(struct vmsubst_query_mappers, reserved0),
	.init = qm_valid,
	.untouched = qm_untouched,
};

const struct cmd_desc CMD_PIN = {
	.cmd = VMSUBST_IOC_PIN_MAPPERS,
	.size = sizeof(struct vmsubst_pin_mappers),
	.ver0 = VMSUBST_PIN_MAPPERS_SIZE_VER0,
	.init = pm_valid,
	.untouched = pm_untouched,
};

const struct cmd_desc CMD_QPAGES = {
	.cmd = VMSUBST_IOC_QUERY_PAGES,
	.size = sizeof(struct vmsubst_query_pages),
	.ver0 = VMSUBST_QUERY_PAGES_SIZE_VER0,
	.reserved = offsetof(struct vmsubst_query_pages, reserved0),
	.init = qp_valid,
	.untouched = qp_untouched,
};

/* The call must fail with @want and leave every output and @buf as filled. */
void expect_errno_buf(struct ctx *c, const char *desc, void *arg, int want,
		      const void *buf, size_t len)
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

void expect_errno(struct ctx *c, const char *desc, void *arg, int want)
{
	expect_errno_buf(c, desc, arg, want, NULL, 0);
}

/* Runs a call that must succeed; reports and returns false if not. */
bool expect_ok(struct ctx *c, const char *desc, void *arg)
{
	int got = xioctl(c->dev, c->cmd->cmd, arg);

	if (got) {
		fail(desc, "errno got %s want 0", errname(got));
		return false;
	}
	return true;
}

void g_null(struct ctx *c, const char *desc)
{
	int got = xioctl(c->dev, c->cmd->cmd, NULL);

	if (got != EFAULT)
		fail(desc, "errno got %s want EFAULT", errname(got));
	else
		pass(desc);
}

void g_small(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.size = c->cmd->ver0 - 8;
	expect_errno(c, desc, &a, EINVAL);
}

void g_huge(struct ctx *c, const char *desc)
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

void g_big_dirty(struct ctx *c, const char *desc)
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

void g_flag(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.flags |= 1U << 31;
	expect_errno(c, desc, &a, EOPNOTSUPP);
}

void g_reserved(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	*(uint32_t *)((char *)&a + c->cmd->reserved) = 1;
	expect_errno(c, desc, &a, EINVAL);
}

void g_badfd(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.fd = -1; /* fd is the third member of every command */
	expect_errno(c, desc, &a, EBADF);
}

void g_closedfd(struct ctx *c, const char *desc)
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

void g_opath(struct ctx *c, const char *desc)
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

void g_eperm(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	report_unprivileged(desc, errno_unprivileged(c->dev, c->cmd->cmd, &a,
						     c->cmd->untouched));
}

void g_fd_dir(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.fd = c->dir_fd;
	expect_errno(c, desc, &a, EISDIR);
}

void g_fd_chardev(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.ir.fd = c->dev;
	expect_errno(c, desc, &a, EINVAL);
}

/* A directory or file of the filesystem @kind, opened read-only. */
int open_kind(struct ctx *c, enum need kind, bool dir)
{
	char d[PATH_MAX];

	if (!dir)
		return open(c->path[kind], O_RDONLY | O_CLOEXEC);
	snprintf(d, sizeof(d), "%s", c->path[kind]);
	*strrchr(d, '/') = 0;
	return open(d[0] ? d : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

void fd_case(struct ctx *c, const char *desc, enum need kind, bool dir,
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

void g_dax(struct ctx *c, const char *desc)
{
	fd_case(c, desc, NEED_DAX, false, 0, EMEDIUMTYPE);
}

void g_nobdev(struct ctx *c, const char *desc)
{
	fd_case(c, desc, NEED_NOBDEV, c->cmd->dir_fd, 0, ENOTBLK);
}

void g_rw_noforce(struct ctx *c, const char *desc)
{
	fd_case(c, desc, NEED_RW, c->cmd->dir_fd, 0, EACCES);
}

void g_len0(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	/* offset and length sit at the same place in every file-range struct. */
	a.qm.length = 0;
	expect_errno(c, desc, &a, EINVAL);
}

void g_wrap(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.qm.offset = UINT64_MAX - c->page + 1;
	a.qm.length = 2 * c->page;
	expect_errno(c, desc, &a, EOVERFLOW);
}

void g_past_max(struct ctx *c, const char *desc)
{
	union anyarg a;

	c->cmd->init(c, &a);
	a.qm.offset = LLONG_MAX;
	a.qm.length = 1;
	expect_errno(c, desc, &a, EOVERFLOW);
}

static_assert(offsetof(struct vmsubst_invalidate_range, offset) ==
		      offsetof(struct vmsubst_query_mappers, offset),
	      "layout");

static_assert(offsetof(struct vmsubst_invalidate_bdev, offset) ==
		      offsetof(struct vmsubst_query_mappers, offset),
	      "layout");

static_assert(offsetof(struct vmsubst_pin_mappers, length) ==
		      offsetof(struct vmsubst_query_mappers, length),
	      "layout");

static_assert(offsetof(struct vmsubst_query_pages, length) ==
		      offsetof(struct vmsubst_query_mappers, length),
	      "layout");

static_assert(sizeof(struct vmsubst_query_pages) ==
		      VMSUBST_QUERY_PAGES_SIZE_VER0,
	      "layout");

static_assert(sizeof(struct vmsubst_pin_mappers) ==
		      VMSUBST_PIN_MAPPERS_SIZE_VER1,
	      "layout");

/* An output array of the command at @off: cap above @max, or no address. */
void array_case(struct ctx *c, const char *desc, size_t off, uint32_t cap,
		bool null_addr, int want)
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

/* Runs one page query that must succeed; reports and returns false if not. */
bool qpages(struct ctx *c, const char *desc, struct vmsubst_query_pages *r,
	    int fd, uint64_t offset, uint64_t length, void *items, uint32_t cap)
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
