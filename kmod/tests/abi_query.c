// SPDX-License-Identifier: GPL-2.0
/*
 * The commands that change nothing: VMSUBST_IOC_QUERY_MAPPERS (who maps a
 * range, truncation of the report) and VMSUBST_IOC_QUERY_PAGES (cached,
 * mapped, dirty and writeback pages).
 */
#include "harness.h"

#define ABI_FAMILY ABI_FAMILY_QUERY
#define ABI_CMD	   (&CMD_QUERY)

/* ---- VMSUBST_IOC_QUERY_MAPPERS -------------------------------------------- */

GENERIC(qm, "query", &CMD_QUERY)
RESERVED(qm, "query", &CMD_QUERY)
FILE_RANGE(qm, "query", &CMD_QUERY)
REGULAR_FILE(qm, "query", &CMD_QUERY)
ARRAY_CASES(qm_mappers, "query: mappers", struct vmsubst_query_mappers, mappers,
	    VMSUBST_MAPPERS_MAX, &CMD_QUERY)

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

TEST(qm_own, NEED_RO, "query: finds our shared and private exec mappings")
{
	const struct vmsubst_mapper *ms, *mp;
	struct qm_result res;
	void *shared, *priv;
	char comm[16];

	self_comm(comm);
	shared = mmap(NULL, 2 * c->page, PROT_READ, MAP_SHARED, c->ro_fd, 0);
	priv = mmap(NULL, c->page, PROT_READ | PROT_EXEC,
		    MAP_PRIVATE | MAP_LOCKED, c->ro_fd, c->page);
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
		fail(desc,
		     "shared: pid %d flags %#x end %llx offset %llu comm %.16s",
		     ms->pid, ms->flags, (unsigned long long)ms->end,
		     (unsigned long long)ms->offset, ms->comm);
	else if (mp->pid != getpid() ||
		 mp->flags != (VMSUBST_MAP_EXEC | VMSUBST_MAP_LOCKED) ||
		 mp->offset != (uint64_t)c->page || strcmp(mp->comm, comm))
		fail(desc, "private: pid %d flags %#x offset %llu comm %.16s",
		     mp->pid, mp->flags, (unsigned long long)mp->offset,
		     mp->comm);
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

TEST(qm_range, NEED_RO, "query: only mappings of the range, none beyond EOF")
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
		else if (qm_call(c, desc, &res, c->page - 1, 1,
				 ARRAY_SIZE(res.m))) {
			if (res.r.mappers.total != 1)
				fail(desc, "page 0: %llu mappers",
				     (unsigned long long)res.r.mappers.total);
			else if (qm_call(c, desc, &res, c->ro_size + c->page, 1,
					 ARRAY_SIZE(res.m))) {
				if (res.r.mappers.total)
					fail(desc, "beyond EOF: %llu mappers",
					     (unsigned long long)
						     res.r.mappers.total);
				else
					pass(desc);
			}
		}
	}
	munmap(map, c->page);
}

TEST(qm_truncated, NEED_RO, "query: truncated to its capacity, total exact")
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

/* ---- VMSUBST_IOC_QUERY_PAGES ---------------------------------------------- */

#undef ABI_CMD
#define ABI_CMD (&CMD_QPAGES)

GENERIC(qp, "query pages", &CMD_QPAGES)
RESERVED(qp, "query pages", &CMD_QPAGES)
FILE_RANGE(qp, "query pages", &CMD_QPAGES)
REGULAR_FILE(qp, "query pages", &CMD_QPAGES)
ARRAY_CASES(qp_ranges, "query pages: ranges", struct vmsubst_query_pages,
	    ranges, VMSUBST_RANGES_MAX, &CMD_QPAGES)

TEST(qp_ro_clean, NEED_RO,
     "query pages: a read file is cached, our page mapped, none dirty")
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
	else if (r.ranges.count || r.ranges.total ||
		 !all_fill(out, sizeof(out)))
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

TEST(qp_beyond_eof, NEED_RO,
     "query pages: a range beyond EOF gives all-zero counts")
{
	struct vmsubst_query_pages r;

	if (!read_all(c->ro_fd, c->ro_size) ||
	    !qpages(c, desc, &r, c->ro_fd, c->ro_size + c->page, c->page, NULL,
		    0))
		return;
	if (r.pages_cached || r.pages_mapped || r.pages_dirty ||
	    r.pages_writeback || r.ranges.count || r.ranges.total)
		fail(desc, QP_FMT, QP(&r));
	else
		pass(desc);
}

/* Only the pages of the range count: one byte, one page. */
TEST(qp_ro_bounded, NEED_RO, "query pages: one byte counts its page only")
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

TEST(qp_rw_dirty, NEED_RW,
     "query pages: written without fsync: dirty, reported, nothing changed")
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
