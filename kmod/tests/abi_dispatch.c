// SPDX-License-Identifier: GPL-2.0
/*
 * The dispatcher and VMSUBST_IOC_VERSION: unknown numbers, types and
 * directions, the size and flags contract every command shares, and the
 * privilege check.
 */
#include "harness.h"

#define ABI_FAMILY ABI_FAMILY_DISPATCH
#define ABI_CMD	   NULL

static bool ver_untouched(const struct vmsubst_version *v)
{
	return all_fill(&v->abi_version, sizeof(v->abi_version)) &&
	       all_fill(&v->features, sizeof(v->features)) &&
	       all_fill(v->module_version, sizeof(v->module_version));
}

static void ver_init(struct vmsubst_version *v)
{
	memset(v, FILL, sizeof(*v));
	v->size = sizeof(*v);
	v->flags = 0;
	v->reserved0 = 0;
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

TEST(unknown_nr, NEED_NONE, "unknown command number returns ENOTTY")
{
	struct vmsubst_version v;

	ver_init(&v);
	expect_ver_errno(c, desc,
			 _IOWR(VMSUBST_IOC_MAGIC, 0x3f, struct vmsubst_version),
			 &v, ENOTTY);
}

TEST(foreign_type, NEED_NONE, "foreign ioctl type returns ENOTTY")
{
	struct vmsubst_version v;

	ver_init(&v);
	expect_ver_errno(c, desc, _IOWR('x', 0x00, struct vmsubst_version), &v,
			 ENOTTY);
}

TEST(wrong_dir, NEED_NONE, "known number with wrong direction returns ENOTTY")
{
	struct vmsubst_version v;

	ver_init(&v);
	expect_ver_errno(c, desc,
			 _IOR(VMSUBST_IOC_MAGIC, 0x00, struct vmsubst_version),
			 &v, ENOTTY);
}

TEST(ver_null, NEED_NONE, "version: NULL argument returns EFAULT")
{
	int got = xioctl(c->dev, VMSUBST_IOC_VERSION, NULL);

	if (got != EFAULT)
		fail(desc, "errno got %s want EFAULT", errname(got));
	else
		pass(desc);
}

TEST(ver_small, NEED_NONE, "version: size below VER0 returns EINVAL")
{
	struct vmsubst_version v;

	ver_init(&v);
	v.size = VMSUBST_VERSION_SIZE_VER0 - 8;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, &v, EINVAL);
}

TEST(ver_zero_size, NEED_NONE, "version: size 0 returns EINVAL")
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

TEST(ver_big_dirty, NEED_NONE,
     "version: larger size, non-zero tail returns E2BIG")
{
	struct big_version b;

	ver_init(&b.v);
	b.v.size = sizeof(b);
	b.tail[0] = 0;
	b.tail[1] = 1;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, &b.v, E2BIG);
}

TEST(ver_big_clean, NEED_NONE,
     "version: larger size, zero tail succeeds, tail untouched")
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

TEST(ver_huge, NEED_NONE, "version: size above a page returns E2BIG")
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

TEST(ver_flag, NEED_NONE, "version: unknown flag returns EOPNOTSUPP")
{
	struct vmsubst_version v;

	ver_init(&v);
	v.flags = 1;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, &v, EOPNOTSUPP);
}

TEST(ver_reserved, NEED_NONE, "version: non-zero reserved0 returns EINVAL")
{
	struct vmsubst_version v;

	ver_init(&v);
	v.reserved0 = 1;
	expect_ver_errno(c, desc, VMSUBST_IOC_VERSION, &v, EINVAL);
}

#define ALL_FEATURES                                                           \
	(VMSUBST_FEATURE_INVALIDATE_RANGE |                                    \
	 VMSUBST_FEATURE_INVALIDATE_RANGE_V1 |                                 \
	 VMSUBST_FEATURE_INVALIDATE_BDEV | VMSUBST_FEATURE_REVALIDATE_INODES | \
	 VMSUBST_FEATURE_REVALIDATE_DENTRIES | VMSUBST_FEATURE_QUERY_MAPPERS | \
	 VMSUBST_FEATURE_PIN_MAPPERS | VMSUBST_FEATURE_QUERY_PAGES |           \
	 VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY |                             \
	 VMSUBST_FEATURE_PIN_CURSOR | VMSUBST_FEATURE_REVALIDATE_REPLACED)

TEST(ver_ok, NEED_NONE, "version: ABI 1, every feature, module version string")
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

static bool ver_untouched_cb(const void *p)
{
	return ver_untouched(p);
}

TEST(eperm_version, NEED_NONE, "no CAP_SYS_ADMIN: version returns EPERM")
{
	struct vmsubst_version v;

	ver_init(&v);
	report_unprivileged(desc,
			    errno_unprivileged(c->dev, VMSUBST_IOC_VERSION, &v,
					       ver_untouched_cb));
}

TEST(eperm_unknown, NEED_NONE,
     "no CAP_SYS_ADMIN: unknown command returns EPERM")
{
	struct vmsubst_version v;

	ver_init(&v);
	report_unprivileged(desc,
			    errno_unprivileged(c->dev,
					       _IOWR(VMSUBST_IOC_MAGIC, 0x3f,
						     struct vmsubst_version),
					       &v, ver_untouched_cb));
}
