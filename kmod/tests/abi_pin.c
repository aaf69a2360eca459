// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_PIN_MAPPERS: the budget, a child's private mapping copied and
 * kept across an invalidation, and the cursor over more private mappings
 * than one call visits.
 */
#include "harness.h"

#define ABI_FAMILY ABI_FAMILY_PIN
#define ABI_CMD	   (&CMD_PIN)

GENERIC(pm, "pin", &CMD_PIN)
FILE_RANGE(pm, "pin", &CMD_PIN)
REGULAR_FILE(pm, "pin", &CMD_PIN)

TEST(pm_zero_budget, NEED_NONE, "pin: max_pages 0 returns EINVAL")
{
	struct vmsubst_pin_mappers r;

	pm_init(&r, c->base_fd, 0, c->page, 0);
	expect_errno(c, desc, &r, EINVAL);
}

TEST(pm_big_budget, NEED_NONE,
     "pin: max_pages above the maximum returns EINVAL")
{
	struct vmsubst_pin_mappers r;

	pm_init(&r, c->base_fd, 0, c->page, VMSUBST_PIN_PAGES_MAX + 1);
	expect_errno(c, desc, &r, EINVAL);
}

ARRAY_CASES(pm_pinned, "pin: pinned", struct vmsubst_pin_mappers, pinned,
	    VMSUBST_PIN_RESULTS_MAX, &CMD_PIN)
ARRAY_CASES(pm_unpinned, "pin: unpinned", struct vmsubst_pin_mappers, unpinned,
	    VMSUBST_MAPPERS_MAX, &CMD_PIN)

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

TEST(pm_child, NEED_RO,
     "pin: a child's private mapping is copied, survives invalidation")
{
	uint64_t bytes =
		(uint64_t)(c->ro_size + c->page - 1) / c->page * c->page;
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
		fail(desc,
		     "child %d: %s copied %llu private %llu failed %llu flags %#x",
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
		fail(desc,
		     "the pinned child lost its copy to the invalidation");
	else if (child_check(&control) != 'n')
		fail(desc,
		     "the unpinned child kept its pages (want them dropped)");
	else
		pass(desc);
out:
	if (shared != MAP_FAILED)
		munmap(shared, c->page);
	child_stop(&ch);
	child_stop(&control);
}

TEST(pm_again, NEED_RO,
     "pin: a second pin finds the pages private, copies nothing")
{
	uint64_t bytes =
		(uint64_t)(c->ro_size + c->page - 1) / c->page * c->page;
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

TEST(pm_budget, NEED_RO, "pin: max_pages 1 copies one page and says BUDGET")
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
	    res.r.bytes_copied != (uint64_t)c->page ||
	    res.r.pinned.total != 1 || !p ||
	    !(p->flags & VMSUBST_PIN_R_PARTIAL))
		fail(desc, "status %#x copied %llu pinned %llu flags %#x",
		     res.r.status, (unsigned long long)res.r.bytes_copied,
		     (unsigned long long)res.r.pinned.total, p ? p->flags : 0);
	else
		pass(desc);
out:
	child_stop(&ch);
}

TEST(pm_beyond_eof, NEED_RO, "pin: a range beyond EOF pins nothing")
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

TEST(pm_resume_ver0, NEED_NONE,
     "pin: F_RESUME with a VER0-sized struct returns EINVAL")
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
TEST(pm_budget_resume, NEED_RO,
     "pin: F_RESUME after BUDGET finishes the cut mapping, one page a call")
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
			fail(desc, "call %u: BUDGET, yet the cursor moved",
			     calls);
			goto out;
		}
	} while ((res.r.status &
		  (VMSUBST_PIN_S_BUDGET | VMSUBST_PIN_S_TRUNCATED)) &&
		 calls <= npages + 1);
	if (calls != npages || copied != npages * c->page || visited != 1 ||
	    res.r.status || addr != uptr(ch.map) || !key)
		fail(desc,
		     "%u calls for %llu pages: copied %llu visited %llu status %#x",
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

#define MANY_EXTRA 64 /* mappings beyond VMSUBST_PIN_VMAS_MAX */

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
TEST(pm_many, NEED_RO,
     "pin: > VMSUBST_PIN_VMAS_MAX private mappings, F_RESUME reaches and pins every one")
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
			tail_after_first = private_pages(
				c, region, n - MANY_EXTRA, MANY_EXTRA);
		}
	} while ((res.r.status &
		  (VMSUBST_PIN_S_BUDGET | VMSUBST_PIN_S_TRUNCATED)) &&
		 calls < 16);
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
		fail(desc,
		     "after the first call %ld of the last %d are private",
		     tail_after_first, MANY_EXTRA);
	else if (calls != 2 || res.r.status || visited != n ||
		 copied != n * c->page)
		fail(desc,
		     "%u calls, status %#x, visited %llu of %zu, copied %llu",
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
		    res.r.bytes_private !=
			    (uint64_t)VMSUBST_PIN_VMAS_MAX * c->page)
			fail(desc,
			     "VER0 call: mappings %u status %#x copied %llu private %llu",
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
	if (old_max && old_max < n + 1024 &&
	    !sysctl_write(MAX_MAP_COUNT, old_max))
		printf("# could not restore " MAX_MAP_COUNT " to %lu\n",
		       old_max);
}
