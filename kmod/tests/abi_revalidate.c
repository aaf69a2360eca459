// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_REVALIDATE_INODES and VMSUBST_IOC_REVALIDATE_DENTRIES: list
 * checks, eviction of unused inodes and dentries, what stays in use, and
 * mount points.
 */
#include "harness.h"

#define ABI_FAMILY ABI_FAMILY_REVALIDATE
#define ABI_CMD	   (&CMD_INODES)

/* ---- VMSUBST_IOC_REVALIDATE_INODES --------------------------------------- */

GENERIC(ri, "inodes", &CMD_INODES)

TEST(ri_none, NEED_NONE, "inodes: no inode numbers returns EINVAL")
{
	struct vmsubst_revalidate_inodes r;

	ri_init(&r, c->base_fd, &root_ino, 0, 0);
	expect_errno(c, desc, &r, EINVAL);
}

TEST(ri_too_many, NEED_NONE, "inodes: more than the maximum returns E2BIG")
{
	static uint64_t inos[VMSUBST_INODES_MAX + 1];
	struct vmsubst_revalidate_inodes r;

	ri_init(&r, c->base_fd, inos, ARRAY_SIZE(inos), 0);
	expect_errno(c, desc, &r, E2BIG);
}

TEST(ri_null_list, NEED_NONE, "inodes: list without an address returns EFAULT")
{
	struct vmsubst_revalidate_inodes r;

	ri_init(&r, c->base_fd, NULL, 1, 0);
	expect_errno(c, desc, &r, EFAULT);
}

ARRAY_CASES(ri_in_use, "inodes: in_use", struct vmsubst_revalidate_inodes,
	    in_use, VMSUBST_INODES_MAX, &CMD_INODES)
CASE(ri_nobdev, NEED_NOBDEV, "inodes: no block device returns ENOTBLK",
     g_nobdev, &CMD_INODES)
CASE(ri_rw_noforce, NEED_RW, "inodes: rw mount without F_FORCE returns EACCES",
     g_rw_noforce, &CMD_INODES)

TEST(ri_otherfs, NEED_OTHERFS, "inodes: not ext2/3/4 returns EMEDIUMTYPE")
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
	ro_ino_skip = c->ro_ino;
	if (nftw(c->ro_dir, find_other_cb, 8, FTW_PHYS | FTW_MOUNT) == 1)
		return true;
	return c->ro_parent[0] &&
	       nftw(c->ro_parent, find_other_cb, 8, FTW_PHYS | FTW_MOUNT) == 1;
}

TEST(ri_unused, NEED_RO, "inodes: an unused file is evicted, then not cached")
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
		fail(desc,
		     "%s: evicted %u not_cached %u in_use %llu (reasons %#x)",
		     other_file, res.r.evicted, res.r.not_cached,
		     (unsigned long long)res.r.in_use.total, res.st[0].reasons);
		return;
	}
	/* Gone from the inode cache: a second call finds nothing. */
	if (!ri_call(c, desc, &res, c->dir_fd, &ino, 1, 0))
		return;
	if (res.r.evicted || res.r.not_cached != 1)
		fail(desc, "second call: evicted %u not_cached %u",
		     res.r.evicted, res.r.not_cached);
	else if (stat(other_file, &st) || st.st_ino != ino)
		fail(desc, "the file does not read back");
	else
		pass(desc);
}

TEST(ri_open, NEED_RO, "inodes: an open, mapped file is in use: OPEN | MAPPED")
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
		 res.st[0].reasons !=
			 (VMSUBST_INODE_OPEN | VMSUBST_INODE_MAPPED) ||
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

TEST(ri_root_caller, NEED_RO,
     "inodes: root and caller are in use, 0 and 2^64-1 not cached")
{
	uint64_t inos[4] = { 2, c->ro_ino, 0, UINT64_MAX };
	struct ri_result res;

	/* Through ro_fd: its own inode is the caller's. */
	if (!ri_call(c, desc, &res, c->ro_fd, inos, 4, 0))
		return;
	if (res.r.evicted || res.r.not_cached != 2 || res.r.in_use.count != 2)
		fail(desc, "evicted %u not_cached %u in_use %u", res.r.evicted,
		     res.r.not_cached, res.r.in_use.count);
	else if (res.st[0].ino != 2 ||
		 res.st[0].reasons != VMSUBST_INODE_ROOT ||
		 res.st[1].ino != c->ro_ino ||
		 res.st[1].reasons != VMSUBST_INODE_CALLER)
		fail(desc, "reasons %#x %#x", res.st[0].reasons,
		     res.st[1].reasons);
	else
		pass(desc);
}

TEST(ri_truncated, NEED_RO,
     "inodes: in_use truncated to its capacity, total exact")
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

TEST(ri_rw_force, NEED_RW, "inodes: rw mount with F_FORCE")
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

/* ---- VMSUBST_IOC_REVALIDATE_DENTRIES ------------------------------------- */

#undef ABI_CMD
#define ABI_CMD (&CMD_DENTRIES)

GENERIC(rd, "dentries", &CMD_DENTRIES)
RESERVED(rd, "dentries", &CMD_DENTRIES)

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

TEST(rd_dot, NEED_NONE, "dentries: name \".\" returns EINVAL")
{
	rd_names_case(c, desc, ".", 1, 2, 0, EINVAL);
}

TEST(rd_dotdot, NEED_NONE, "dentries: name \"..\" returns EINVAL")
{
	rd_names_case(c, desc, "..", 1, 3, 0, EINVAL);
}

TEST(rd_slash, NEED_NONE, "dentries: name with '/' returns EINVAL")
{
	rd_names_case(c, desc, "a/b", 1, 4, 0, EINVAL);
}

TEST(rd_empty, NEED_NONE, "dentries: empty name returns EINVAL")
{
	rd_names_case(c, desc, "a\0\0", 2, 3, 0, EINVAL);
}

TEST(rd_no_nul, NEED_NONE, "dentries: name without NUL returns EINVAL")
{
	rd_names_case(c, desc, "abc", 1, 3, 0, EINVAL);
}

TEST(rd_extra_bytes, NEED_NONE,
     "dentries: bytes after the last name return EINVAL")
{
	rd_names_case(c, desc, "a\0b", 1, 3, 0, EINVAL);
}

TEST(rd_fewer_names, NEED_NONE,
     "dentries: fewer names than nr_names returns EINVAL")
{
	rd_names_case(c, desc, "a", 2, 2, 0, EINVAL);
}

TEST(rd_long_name, NEED_NONE, "dentries: name of 256 bytes returns EINVAL")
{
	char name[NAME_MAX + 2];

	memset(name, 'n', NAME_MAX + 1);
	name[NAME_MAX + 1] = 0;
	rd_names_case(c, desc, name, 1, sizeof(name), 0, EINVAL);
}

TEST(rd_too_many, NEED_NONE,
     "dentries: more names than the maximum returns E2BIG")
{
	static char names[2 * (VMSUBST_NAMES_MAX + 1)];

	for (size_t i = 0; i < sizeof(names); i += 2)
		memcpy(names + i, "x", 2);
	rd_names_case(c, desc, names, VMSUBST_NAMES_MAX + 1, sizeof(names), 0,
		      E2BIG);
}

TEST(rd_too_long, NEED_NONE,
     "dentries: names_size above the maximum returns E2BIG")
{
	rd_names_case(c, desc, "x", 1, VMSUBST_NAMES_SIZE_MAX + 1, 0, E2BIG);
}

TEST(rd_null_names, NEED_NONE,
     "dentries: names without an address returns EFAULT")
{
	rd_names_case(c, desc, NULL, 1, 2, 0, EFAULT);
}

TEST(rd_size_without_names, NEED_NONE,
     "dentries: names_size without names returns EINVAL")
{
	rd_names_case(c, desc, "x", 0, 2, 0, EINVAL);
}

TEST(rd_unhash_without_names, NEED_NONE,
     "dentries: F_UNHASH_BUSY without names returns EINVAL")
{
	rd_names_case(c, desc, NULL, 0, 0, VMSUBST_DENTRIES_F_UNHASH_BUSY,
		      EINVAL);
}

TEST(rd_notdir, NEED_NONE, "dentries: regular file fd returns ENOTDIR")
{
	struct vmsubst_revalidate_dentries r;

	rd_init(&r, c->base_fd, NULL, 0, 0, 0);
	expect_errno(c, desc, &r, ENOTDIR);
}

CASE(rd_nobdev, NEED_NOBDEV, "dentries: no block device returns ENOTBLK",
     g_nobdev, &CMD_DENTRIES)
CASE(rd_rw_noforce, NEED_RW,
     "dentries: rw mount without F_FORCE returns EACCES", g_rw_noforce,
     &CMD_DENTRIES)

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

TEST(rd_negative, NEED_RO,
     "dentries: a negative dentry is dropped, then not cached")
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

TEST(rd_whole_dir, NEED_RO,
     "dentries: no names drops unused children, negative ones too")
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

TEST(rd_unused_file, NEED_RO,
     "dentries: an unused file's dentry is dropped, looks up again")
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

TEST(rd_busy, NEED_RO, "dentries: an open file's dentry is busy")
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

TEST(rd_unhash_busy, NEED_RO,
     "dentries: F_UNHASH_BUSY drops it, the open file reads on")
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

TEST(rd_mountpoint, NEED_RO_SUBDIR, "dentries: a mount point is never touched")
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

TEST(rd_submount, NEED_RO,
     "dentries: a directory with a mount below is never touched")
{
	char top[PATH_MAX], dir[PATH_MAX], *slash;
	struct vmsubst_revalidate_dentries r;
	struct names n = {};
	bool ok;

	/*
	 * TOP/A/B on the read-only filesystem: a mount on B, and the name A
	 * asked about in TOP. A is busy (B holds it) and has a mount below.
	 */
	snprintf(top, sizeof(top), "%s",
		 c->ro_parent[0] ? c->ro_parent : c->ro_dir);
	if (nftw(top, find_nested_cb, 8, FTW_PHYS | FTW_MOUNT) != 1) {
		skip(desc, "no directory two levels below the file's");
		return;
	}
	snprintf(dir, sizeof(dir), "%s", nested);
	slash = strrchr(dir, '/');
	*slash = 0;
	names_add(&n, strrchr(dir, '/') + 1);
	if (mount("abi_test", nested, "tmpfs", MS_NOSUID | MS_NODEV,
		  "size=64k")) {
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

TEST(rd_rw_force, NEED_RW, "dentries: rw mount with F_FORCE")
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
