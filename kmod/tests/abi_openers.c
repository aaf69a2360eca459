// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_QUERY_OPENERS: who holds files open through a descriptor. The
 * argument checks of a command that takes a list of fds, and the report: a
 * child's descriptor with its position and flags, the caller's own left out,
 * a file passed twice named by its first index, truncation.
 */
#include "harness.h"

#define ABI_FAMILY ABI_FAMILY_OPENERS
#define ABI_CMD	   (&CMD_OPENERS)

static void qo_init(struct vmsubst_query_openers *r, const int32_t *fds,
		    uint32_t nr, void *items, uint32_t cap)
{
	memset(r, FILL, sizeof(*r));
	r->size = sizeof(*r);
	r->flags = 0;
	r->fds = uptr(fds);
	r->nr_fds = nr;
	array_init(&r->openers, items, cap);
}

static bool qo_untouched(const void *p)
{
	const struct vmsubst_query_openers *r = p;

	return FILLED(r->tasks) && array_untouched(&r->openers);
}

static void qo_valid(struct ctx *c, void *arg)
{
	static int32_t fds[1];

	fds[0] = c->base_fd;
	qo_init(arg, fds, 1, NULL, 0);
}

const struct cmd_desc CMD_OPENERS = {
	.cmd = VMSUBST_IOC_QUERY_OPENERS,
	.size = sizeof(struct vmsubst_query_openers),
	.ver0 = VMSUBST_QUERY_OPENERS_SIZE_VER0,
	.init = qo_valid,
	.untouched = qo_untouched,
};

/* ---- arguments ------------------------------------------------------------ */

CASE(qo_null, NEED_NONE, "openers: NULL argument returns EFAULT", g_null,
     &CMD_OPENERS)
CASE(qo_small, NEED_NONE, "openers: size below VER0 returns EINVAL", g_small,
     &CMD_OPENERS)
CASE(qo_huge, NEED_NONE, "openers: size above a page returns E2BIG", g_huge,
     &CMD_OPENERS)
CASE(qo_big_dirty, NEED_NONE,
     "openers: larger size, non-zero tail returns E2BIG", g_big_dirty,
     &CMD_OPENERS)
CASE(qo_flag, NEED_NONE, "openers: unknown flag returns EOPNOTSUPP", g_flag,
     &CMD_OPENERS)
CASE(qo_eperm, NEED_NONE, "no CAP_SYS_ADMIN: openers returns EPERM", g_eperm,
     &CMD_OPENERS)
ARRAY_CASES(qo_array, "openers:", struct vmsubst_query_openers, openers,
	    VMSUBST_OPENERS_MAX, &CMD_OPENERS)

/* One list of fds: the call fails with @want and reports nothing. */
static void qo_list_case(struct ctx *c, const char *desc, const int32_t *fds,
			 uint32_t nr, int want)
{
	struct vmsubst_query_openers r;

	qo_init(&r, fds, nr, NULL, 0);
	expect_errno(c, desc, &r, want);
}

TEST(qo_none, NEED_NONE, "openers: an empty list returns EINVAL")
{
	int32_t fd = c->base_fd;

	qo_list_case(c, desc, &fd, 0, EINVAL);
}

TEST(qo_too_many, NEED_NONE, "openers: more fds than the maximum return E2BIG")
{
	int32_t fd = c->base_fd;

	/* Refused on the count, before the list is read. */
	qo_list_case(c, desc, &fd, VMSUBST_OPENERS_FILES_MAX + 1, E2BIG);
}

TEST(qo_list_null, NEED_NONE,
     "openers: a list without an address returns EFAULT")
{
	qo_list_case(c, desc, NULL, 1, EFAULT);
}

TEST(qo_badfd, NEED_NONE, "openers: fd -1 in the list returns EBADF")
{
	int32_t fds[2] = { c->base_fd, -1 };

	qo_list_case(c, desc, fds, 2, EBADF);
}

TEST(qo_opath, NEED_NONE, "openers: an O_PATH fd returns EBADF")
{
	int32_t fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		fail(desc, "open O_PATH: %s", strerror(errno));
		return;
	}
	qo_list_case(c, desc, &fd, 1, EBADF);
	close(fd);
}

TEST(qo_dir, NEED_NONE, "openers: a directory fd returns EISDIR")
{
	int32_t fds[2] = { c->base_fd, c->dir_fd };

	qo_list_case(c, desc, fds, 2, EISDIR);
}

TEST(qo_chardev, NEED_NONE, "openers: a character device fd returns EINVAL")
{
	int32_t fd = c->dev;

	qo_list_case(c, desc, &fd, 1, EINVAL);
}

/* ---- the report ----------------------------------------------------------- */

/*
 * A child that opens @path read-only as fd 40, reads @pos bytes (its
 * position), says so and waits to be killed. Returns its pid, or -1.
 */
static pid_t child_holding(const char *path, size_t pos)
{
	int ready[2];
	char b;
	pid_t pid;

	if (pipe2(ready, O_CLOEXEC))
		return -1;
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -1;
	if (!pid) {
		char buf[64];
		int fd = open(path, O_RDONLY | O_CLOEXEC);

		close(ready[0]);
		if (fd < 0 || dup2(fd, 40) != 40 ||
		    read(40, buf, pos) != (ssize_t)pos)
			_exit(1);
		if (write(ready[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(ready[1]);
	/* EOF when the child failed: only it had the write end. */
	if (read(ready[0], &b, 1) != 1) {
		close(ready[0]);
		waitpid(pid, NULL, 0);
		return -1;
	}
	close(ready[0]);
	return pid;
}

static void child_end(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

/* The entry of @pid's descriptor @fd; any of @pid's when @fd is -1. */
static const struct vmsubst_opener *opener_of(const struct vmsubst_opener *o,
					      uint32_t n, pid_t pid, int fd)
{
	for (uint32_t i = 0; i < n; i++)
		if (o[i].pid == pid && (fd < 0 || o[i].fd == fd))
			return &o[i];
	return NULL;
}

TEST(qo_child, NEED_RO,
     "openers: a child's descriptor, its position and flags; not the caller's")
{
	struct vmsubst_opener o[8];
	struct vmsubst_query_openers r;
	const struct vmsubst_opener *hit;
	char comm[16];
	int32_t fds[2];
	int other;
	pid_t pid;

	if (c->ro_size < 64) {
		skip(desc, "the read-only file is shorter than 64 bytes");
		return;
	}
	pid = child_holding(c->path[NEED_RO], 7);
	if (pid < 0) {
		fail(desc, "child: %s", strerror(errno));
		return;
	}
	self_comm(comm);
	/* The same file twice (a second fd of ours): reported under index 0. */
	other = open(c->path[NEED_RO], O_RDONLY | O_CLOEXEC);
	fds[0] = c->ro_fd;
	fds[1] = other;
	memset(o, FILL, sizeof(o));
	qo_init(&r, fds, 2, o, ARRAY_SIZE(o));
	if (other < 0)
		fail(desc, "open: %s", strerror(errno));
	else if (!expect_ok(c, desc, &r))
		;
	/* The child also inherited our descriptors of the file: fd 40 is its own. */
	else if (!(hit = opener_of(o, r.openers.count, pid, 40)))
		fail(desc, "child %d not reported (%u/%llu openers)", pid,
		     r.openers.count, (unsigned long long)r.openers.total);
	else if (opener_of(o, r.openers.count, getpid(), -1))
		fail(desc, "the caller's own descriptors were reported");
	else if (hit->fd != 40 || hit->pos != 7 || hit->file != 0 ||
		 (hit->f_flags & O_ACCMODE) != O_RDONLY ||
		 strcmp(hit->comm, comm))
		fail(desc, "fd %d pos %llu file %u flags %#o comm %.16s",
		     hit->fd, (unsigned long long)hit->pos, hit->file,
		     hit->f_flags, hit->comm);
	else if (r.tasks < 2 || r.openers.total != r.openers.count)
		fail(desc, "tasks %u, count %u total %llu", r.tasks,
		     r.openers.count, (unsigned long long)r.openers.total);
	else if (!all_fill(&o[r.openers.count],
			   (ARRAY_SIZE(o) - r.openers.count) * sizeof(o[0])))
		fail(desc, "wrote past openers.count");
	else
		pass(desc);
	if (other >= 0)
		close(other);
	child_end(pid);
}

TEST(qo_truncated, NEED_RO, "openers: truncated to its capacity, total exact")
{
	struct vmsubst_opener o[2];
	struct vmsubst_query_openers r;
	pid_t pid[2];
	int32_t fd = c->ro_fd;

	pid[0] = child_holding(c->path[NEED_RO], 1);
	pid[1] = child_holding(c->path[NEED_RO], 2);
	if (pid[0] < 0 || pid[1] < 0) {
		fail(desc, "child: %s", strerror(errno));
		goto out;
	}
	memset(o, FILL, sizeof(o));
	qo_init(&r, &fd, 1, o, 1);
	if (!expect_ok(c, desc, &r))
		goto out;
	if (r.openers.count != 1 || r.openers.total < 2)
		fail(desc, "count %u total %llu", r.openers.count,
		     (unsigned long long)r.openers.total);
	else if (!all_fill(&o[1], sizeof(o[1])))
		fail(desc, "wrote past the capacity");
	else
		pass(desc);
out:
	for (int i = 0; i < 2; i++)
		if (pid[i] > 0)
			child_end(pid[i]);
}
