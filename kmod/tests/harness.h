/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The harness of abi_test: the run context, the TEST() registry, and the
 * helpers the test files share (thin wrappers of each command in ioctl.c,
 * system helpers in sys.c).
 *
 * A test file names its family (the order the families run in) and the
 * command its generic cases use, then declares one TEST() per case:
 *
 *	#define ABI_FAMILY ABI_FAMILY_BDEV
 *	#define ABI_CMD (&CMD_BDEV)
 *
 *	TEST(bd_regular, NEED_NONE, "bdev: regular file fd returns ENOTBLK")
 *	{
 *		... c is the struct ctx, desc the description ...
 *	}
 *
 * Cases run in the order of the families, then of the file. Every command's
 * arguments are filled with 0xcc before the call (the *_init() wrappers), so
 * a failing call must leave its outputs so.
 */
#ifndef ABI_TEST_HARNESS_H
#define ABI_TEST_HARNESS_H

#define _GNU_SOURCE
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
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
#define FILL	      0xcc
#define EXT4_MAGIC    0xEF53

/* Exit codes of the capability-dropping child that are not an errno. */
#define CHILD_SUCCEEDED 250
#define CHILD_TOUCHED	251
#define CHILD_CAPSET	252

enum need {
	NEED_NONE,
	NEED_RO,
	NEED_RW,
	NEED_NOBDEV,
	NEED_OTHERFS,
	NEED_DAX,
	NEED_BDEV,
	NEED_RWBDEV,
	NEED_RO_SUBDIR,
};

struct cmd_desc;

struct ctx {
	int dev;
	long page;
	int base_fd;		     /* a regular file, for argument checks */
	int dir_fd;		     /* a directory, for argument checks */
	const char *path[9];	     /* indexed by enum need */
	char bdev_path[2][PATH_MAX]; /* found for NEED_BDEV, NEED_RWBDEV */
	int bdev_fd;		     /* NEED_BDEV, opened read-only, or -1 */
	int rwbdev_fd;		     /* NEED_RWBDEV, or -1 */
	int ro_fd;
	off_t ro_size;
	ino_t ro_ino;
	char ro_dir[PATH_MAX];	       /* directory of the read-only file */
	char ro_parent[PATH_MAX];      /* its parent, on the same filesystem */
	char ro_dirname[NAME_MAX + 1]; /* name of ro_dir in ro_parent */
	const struct cmd_desc *cmd;    /* of generic cases */
};

/* ---- the registry ------------------------------------------------------- */

/* The order the test files run in. */
enum abi_family {
	ABI_FAMILY_DISPATCH,
	ABI_FAMILY_INVALIDATE,
	ABI_FAMILY_BDEV,
	ABI_FAMILY_REVALIDATE,
	ABI_FAMILY_QUERY,
	ABI_FAMILY_PIN,
	ABI_FAMILY_OPENERS,
};

/**
 * struct abi_test - one case
 * @name:   its identifier, for --only
 * @desc:   the TAP description
 * @need:   the kind of file it needs; skipped without one
 * @fn:     runs it and reports through pass(), fail() or skip()
 * @cmd:    the command of a generic case (c->cmd while it runs)
 * @family: enum abi_family of its file
 * @order:  its place in its file
 */
struct abi_test {
	const char *name;
	const char *desc;
	enum need need;
	void (*fn)(struct ctx *c, const char *desc);
	const struct cmd_desc *cmd;
	int family;
	int order;
};

void abi_register(struct abi_test *t);

#define ABI_REGISTER(_id, _need, _desc, _fn, _cmd)                        \
	static struct abi_test abi_test_##_id = {                         \
		.name = #_id,                                             \
		.desc = _desc,                                            \
		.need = _need,                                            \
		.fn = _fn,                                                \
		.cmd = _cmd,                                              \
		.family = ABI_FAMILY,                                     \
		.order = __COUNTER__,                                     \
	};                                                                \
	static void __attribute__((constructor)) abi_register_##_id(void) \
	{                                                                 \
		abi_register(&abi_test_##_id);                            \
	}

/* A case with its own body; c->cmd is the file's ABI_CMD. */
#define TEST(_id, _need, _desc)                                  \
	static void test_##_id(struct ctx *c, const char *desc); \
	ABI_REGISTER(_id, _need, _desc, test_##_id, ABI_CMD)     \
	static void test_##_id(struct ctx *c, const char *desc)

/* A case that runs a shared function on the command @_cmd. */
#define CASE(_id, _need, _desc, _fn, _cmd) \
	ABI_REGISTER(_id, _need, _desc, _fn, _cmd)

/* The cases every command added after VERSION and INVALIDATE_RANGE gets. */
#define GENERIC(_id, _name, _cmd)                                              \
	CASE(_id##_null, NEED_NONE, _name ": NULL argument returns EFAULT",    \
	     g_null, _cmd)                                                     \
	CASE(_id##_small, NEED_NONE, _name ": size below VER0 returns EINVAL", \
	     g_small, _cmd)                                                    \
	CASE(_id##_huge, NEED_NONE, _name ": size above a page returns E2BIG", \
	     g_huge, _cmd)                                                     \
	CASE(_id##_big_dirty, NEED_NONE,                                       \
	     _name ": larger size, non-zero tail returns E2BIG", g_big_dirty,  \
	     _cmd)                                                             \
	CASE(_id##_flag, NEED_NONE, _name ": unknown flag returns EOPNOTSUPP", \
	     g_flag, _cmd)                                                     \
	CASE(_id##_badfd, NEED_NONE, _name ": fd -1 returns EBADF", g_badfd,   \
	     _cmd)                                                             \
	CASE(_id##_closedfd, NEED_NONE, _name ": closed fd returns EBADF",     \
	     g_closedfd, _cmd)                                                 \
	CASE(_id##_opath, NEED_NONE, _name ": O_PATH fd returns EBADF",        \
	     g_opath, _cmd)                                                    \
	CASE(_id##_eperm, NEED_NONE,                                           \
	     "no CAP_SYS_ADMIN: " _name " returns EPERM", g_eperm, _cmd)

#define RESERVED(_id, _name, _cmd)      \
	CASE(_id##_reserved, NEED_NONE, \
	     _name ": non-zero reserved0 returns EINVAL", g_reserved, _cmd)

#define FILE_RANGE(_id, _name, _cmd)                                           \
	CASE(_id##_len0, NEED_NONE, _name ": length 0 returns EINVAL", g_len0, \
	     _cmd)                                                             \
	CASE(_id##_wrap, NEED_NONE,                                            \
	     _name ": offset + length wrapping returns EOVERFLOW", g_wrap,     \
	     _cmd)                                                             \
	CASE(_id##_past_max, NEED_NONE,                                        \
	     _name ": end past LLONG_MAX returns EOVERFLOW", g_past_max, _cmd)

#define REGULAR_FILE(_id, _name, _cmd)                                         \
	CASE(_id##_fd_dir, NEED_NONE, _name ": directory fd returns EISDIR",   \
	     g_fd_dir, _cmd)                                                   \
	CASE(_id##_fd_chardev, NEED_NONE,                                      \
	     _name ": character device fd returns EINVAL", g_fd_chardev, _cmd) \
	CASE(_id##_nobdev, NEED_NOBDEV,                                        \
	     _name ": no block device returns ENOTBLK", g_nobdev, _cmd)        \
	CASE(_id##_dax, NEED_DAX, _name ": DAX file returns EMEDIUMTYPE",      \
	     g_dax, _cmd)

/* An output array: a cap above @_max is E2BIG, no address EFAULT. */
#define ARRAY_CASES(_id, _what, _struct, _member, _max, _cmd)               \
	static void _id##_big(struct ctx *c, const char *desc)              \
	{                                                                   \
		array_case(c, desc, offsetof(_struct, _member), (_max) + 1, \
			   false, E2BIG);                                   \
	}                                                                   \
	static void _id##_null(struct ctx *c, const char *desc)             \
	{                                                                   \
		array_case(c, desc, offsetof(_struct, _member), 1, true,    \
			   EFAULT);                                         \
	}                                                                   \
	CASE(_id##_big, NEED_NONE,                                          \
	     _what " cap above the maximum returns E2BIG", _id##_big, _cmd) \
	CASE(_id##_null, NEED_NONE,                                         \
	     _what " without an address returns EFAULT", _id##_null, _cmd)

/* ---- reporting (harness.c) ---------------------------------------------- */

void pass(const char *desc);
void __attribute__((format(printf, 2, 3)))
fail(const char *desc, const char *fmt, ...);
void skip(const char *desc, const char *why);

/* ---- the commands' arguments -------------------------------------------- */

#define FILLED(member) all_fill(&(member), sizeof(member))

/* Output region of each struct: checked to be untouched after a failure. */
#define VER_OUT offsetof(struct vmsubst_version, abi_version)

#define INV_OUT offsetof(struct vmsubst_invalidate_range, pages_cached)

#define COUNTS_FMT "cached %llu mapped %llu dropped %llu kept %llu"

#define COUNTS(r)                                       \
	(unsigned long long)(r)->pages_cached,          \
		(unsigned long long)(r)->pages_mapped,  \
		(unsigned long long)(r)->pages_dropped, \
		(unsigned long long)(r)->pages_kept

union anyarg {
	struct vmsubst_invalidate_range ir;
	struct vmsubst_invalidate_bdev bd;
	struct vmsubst_revalidate_inodes ri;
	struct vmsubst_revalidate_dentries rd;
	struct vmsubst_query_mappers qm;
	struct vmsubst_pin_mappers pm;
	struct vmsubst_query_pages qp;
	struct vmsubst_query_openers qo;
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
 * @dir_fd:    its fd is a directory (the generic fd cases open one)
 */
struct cmd_desc {
	unsigned long cmd;
	size_t size;
	size_t ver0;
	size_t reserved;
	void (*init)(struct ctx *c, void *arg);
	bool (*untouched)(const void *arg);
	bool dir_fd;
};

#define QP_FMT "cached %llu mapped %llu dirty %llu writeback %llu"

#define QP(r)                                          \
	(unsigned long long)(r)->pages_cached,         \
		(unsigned long long)(r)->pages_mapped, \
		(unsigned long long)(r)->pages_dirty,  \
		(unsigned long long)(r)->pages_writeback

extern uint64_t root_ino;
extern const struct cmd_desc CMD_INV;
extern const struct cmd_desc CMD_BDEV;
extern const struct cmd_desc CMD_INODES;
extern const struct cmd_desc CMD_DENTRIES;
extern const struct cmd_desc CMD_QUERY;
extern const struct cmd_desc CMD_PIN;
extern const struct cmd_desc CMD_QPAGES;
extern const struct cmd_desc CMD_OPENERS;

/* ---- ioctl.c: thin wrappers of each command, and the generic cases ---- */

const char *errname(int err);
/* errno of @cmd in a child without CAP_SYS_ADMIN, or a CHILD_* code. */
int errno_unprivileged(int dev, unsigned long cmd, void *arg,
		       bool (*untouched)(const void *));
bool all_fill(const void *p, size_t len);
bool all_zero(const void *p, size_t len);
int xioctl(int fd, unsigned long cmd, void *arg);
uint64_t uptr(const void *p);
void array_init(struct vmsubst_array *a, void *items, uint32_t cap);
bool array_untouched(const struct vmsubst_array *a);
bool inv_untouched(const struct vmsubst_invalidate_range *r);
void inv_init(struct vmsubst_invalidate_range *r, int fd, uint64_t offset,
	      uint64_t length, uint32_t flags);
void expect_inv_errno(struct ctx *c, const char *desc,
		      struct vmsubst_invalidate_range *r, int want);
bool invalidate(struct ctx *c, const char *desc,
		struct vmsubst_invalidate_range *r, int fd, uint64_t offset,
		uint64_t length, uint32_t flags);
void report_unprivileged(const char *desc, int got);
void bd_init(struct vmsubst_invalidate_bdev *r, int fd, uint64_t offset,
	     uint64_t length, uint32_t flags);
bool bd_untouched(const void *p);
void bd_valid(struct ctx *c, void *arg);
void ri_init(struct vmsubst_revalidate_inodes *r, int fd, const uint64_t *inos,
	     uint32_t n, uint32_t flags);
bool ri_untouched(const void *p);
void ri_valid(struct ctx *c, void *arg);
void rd_init(struct vmsubst_revalidate_dentries *r, int fd, const void *names,
	     uint32_t nr, uint32_t names_size, uint32_t flags);
bool rd_untouched(const void *p);
void rd_valid(struct ctx *c, void *arg);
void qm_init(struct vmsubst_query_mappers *r, int fd, uint64_t offset,
	     uint64_t length, void *items, uint32_t cap);
bool qm_untouched(const void *p);
void qm_valid(struct ctx *c, void *arg);
void pm_init(struct vmsubst_pin_mappers *r, int fd, uint64_t offset,
	     uint64_t length, uint32_t max_pages);
bool pm_untouched(const void *p);
void pm_valid(struct ctx *c, void *arg);
void qp_init(struct vmsubst_query_pages *r, int fd, uint64_t offset,
	     uint64_t length, void *items, uint32_t cap);
bool qp_untouched(const void *p);
void qp_valid(struct ctx *c, void *arg);
bool ir_untouched(const void *p);
void ir_valid(struct ctx *c, void *arg);
void expect_errno_buf(struct ctx *c, const char *desc, void *arg, int want,
		      const void *buf, size_t len);
void expect_errno(struct ctx *c, const char *desc, void *arg, int want);
bool expect_ok(struct ctx *c, const char *desc, void *arg);
void g_null(struct ctx *c, const char *desc);
void g_small(struct ctx *c, const char *desc);
void g_huge(struct ctx *c, const char *desc);
void g_big_dirty(struct ctx *c, const char *desc);
void g_flag(struct ctx *c, const char *desc);
void g_reserved(struct ctx *c, const char *desc);
void g_badfd(struct ctx *c, const char *desc);
void g_closedfd(struct ctx *c, const char *desc);
void g_opath(struct ctx *c, const char *desc);
void g_eperm(struct ctx *c, const char *desc);
void g_fd_dir(struct ctx *c, const char *desc);
void g_fd_chardev(struct ctx *c, const char *desc);
int open_kind(struct ctx *c, enum need kind, bool dir);
void fd_case(struct ctx *c, const char *desc, enum need kind, bool dir,
	     uint32_t flags, int want);
void g_dax(struct ctx *c, const char *desc);
void g_nobdev(struct ctx *c, const char *desc);
void g_rw_noforce(struct ctx *c, const char *desc);
void g_len0(struct ctx *c, const char *desc);
void g_wrap(struct ctx *c, const char *desc);
void g_past_max(struct ctx *c, const char *desc);
void array_case(struct ctx *c, const char *desc, size_t off, uint32_t cap,
		bool null_addr, int want);
bool qpages(struct ctx *c, const char *desc, struct vmsubst_query_pages *r,
	    int fd, uint64_t offset, uint64_t length, void *items,
	    uint32_t cap);

/* ---- sys.c: files, mappings, block devices ---------------------------- */

bool read_all(int fd, off_t size);
long resident(void *addr, size_t len, long page, unsigned char *vec);
long smaps_kb(pid_t pid, void *start, const char *field);
void self_comm(char comm[16]);
bool bdev_of(const char *path, char *out, size_t len);
int rw_tmpfile(struct ctx *c);

#endif /* ABI_TEST_HARNESS_H */
