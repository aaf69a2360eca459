// SPDX-License-Identifier: GPL-2.0-only
/*
 * The pedigree index's walk of one filesystem (see native.h for the contract).
 *
 * Why in C: mapping a file is four system calls (openat, fstat, FIEMAP,
 * close). Made one at a time from JavaScript, each pays a round trip through
 * node's fs bindings and allocates result objects, which costs more than the
 * system calls themselves. Here a chunk of the tree is walked on a worker
 * thread and comes back as flat arrays.
 *
 * A step has three phases:
 *   1. plan (one thread): directories are opened and read, each entry
 *      becomes an item; a directory's own item is complete at once, a file's
 *      or other entry's is a task;
 *   2. map (up to w->threads threads): the tasks are claimed in blocks and
 *      mapped with openat relative to their directory's fd — the system calls
 *      are the cost, and they run in parallel on several CPUs;
 *   3. assemble (one thread): the items, in plan order, become the chunk.
 *
 * State between steps: the stack of directories still to read (full paths,
 * opened by path as the JavaScript walk does) and the directory being
 * planned, whose entries were all read into one buffer when it was opened.
 * Directories opened during a step stay open until its end (their tasks use
 * their fds), at most VS_WALK_STEP_DIRS of them.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/fiemap.h>

#include "native.h"

/* Extents per FIEMAP call: nearly every file fits in one call. */
#define VS_WALK_FIEMAP_BATCH 512u
#define VS_NOT_ON_DISK                                    \
	(FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | \
	 FIEMAP_EXTENT_DATA_INLINE)
#define VS_OPEN_FLAGS \
	(O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
/* Directories one step may hold open. */
#define VS_WALK_STEP_DIRS 256u
/* Tasks a thread claims at a time, and the fewest tasks worth another thread. */
#define VS_WALK_CLAIM		 32u
#define VS_WALK_TASKS_PER_THREAD 256u

enum { VS_ITEM_SKIP = 255 };

struct vs_extents {
	struct vs_walk_extent *v;
	size_t n, cap;
};

/* One entry of the step: a record to be, unless it ends as VS_ITEM_SKIP. */
struct vs_walk_item {
	uint64_t ino;
	uint64_t size;
	int64_t ctime_ns;
	uint32_t dir; /* the open directory (w->open) a task is relative to */
	uint32_t parent;   /* directory number of the directory holding it */
	uint32_t name_off; /* in w->names */
	uint32_t name_len;
	uint32_t ext_start; /* in the extents of worker `worker` */
	uint32_t ext_count;
	uint8_t worker;
	uint8_t task; /* 0: complete; else the d_type to map in phase 2 */
	uint8_t kind; /* enum vs_walk_kind or VS_ITEM_SKIP */
};

struct vs_walk_worker {
	struct vs_walk *w;
	unsigned index;
	struct fiemap *fm;
	struct vs_extents ext;
	int err;
	pthread_t thread;
};

struct vs_walk_pending {
	char *path;
	uint32_t parent;   /* directory number of the directory holding it */
	uint32_t name_off; /* where its name starts in path */
};

struct vs_walk {
	uint64_t dev;
	uint64_t max_entries;
	uint64_t seen;
	uint32_t next_dir;
	unsigned threads;
	unsigned flags; /* VS_WALK_F_* */
	/* Cleared after an EPERM from O_NOATIME (not the owner, no CAP_FOWNER). Atomic. */
	bool noatime;

	struct vs_walk_pending *stack;
	size_t depth, stack_cap;

	/* Directories open in this step. */
	DIR **open;
	size_t nr_open, open_cap;

	/* The directory being planned: open[cur], its number and path, its entries
	 * (one d_type byte, the name, a NUL each; pos is the next one). */
	bool have_dir;
	uint32_t cur;
	uint32_t dir_num;
	char *dir_path;
	char *dents;
	size_t dents_len, dents_cap, pos;

	/* This step's items and their names (NUL after each). */
	struct vs_walk_item *items;
	size_t nr_items, items_cap, nr_tasks;
	char *names;
	size_t names_len, names_cap;
	size_t next_task; /* atomic: the next unclaimed item in phase 2 */

	struct vs_walk_worker workers[VS_WALK_MAX_THREADS];
};

/* ---- small helpers ------------------------------------------------------------- */

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
	size_t n = *cap ? *cap : 64;
	void *q;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	q = realloc(*p, n * size);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = n;
	return 0;
}

/* Strict UTF-8 (RFC 3629: no overlong forms, surrogates or values past U+10FFFF). */
static bool valid_utf8(const unsigned char *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		const unsigned char c = s[i];
		unsigned char lo = 0x80, hi = 0xbf;
		size_t n, k;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			if (c == 0xe0)
				lo = 0xa0;
			else if (c == 0xed)
				hi = 0x9f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			if (c == 0xf0)
				lo = 0x90;
			else if (c == 0xf4)
				hi = 0x8f;
		} else {
			return false;
		}
		if (len - i - 1 < n)
			return false;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (k = 2; k <= n; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return false;
		i += n + 1;
	}
	return true;
}

static void set_stat(struct vs_walk_item *it, const struct stat *st)
{
	it->ino = st->st_ino;
	it->size = (uint64_t)st->st_size;
	it->ctime_ns =
		(int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

static int open_noatime(struct vs_walk *w, int dirfd, const char *path,
			int flags)
{
	int fd;

	if (__atomic_load_n(&w->noatime, __ATOMIC_RELAXED)) {
		fd = openat(dirfd, path, flags | O_NOATIME);
		if (fd >= 0 || errno != EPERM)
			return fd;
		__atomic_store_n(&w->noatime, false, __ATOMIC_RELAXED);
	}
	return openat(dirfd, path, flags);
}

/* ---- FIEMAP ------------------------------------------------------------------------ */

struct extent_sink {
	struct vs_extents *out;
	bool delalloc;
};

static int collect_extent(void *ctx, const struct vs_extent *e)
{
	struct extent_sink *sink = ctx;
	struct vs_extents *out = sink->out;

	if (e->flags & FIEMAP_EXTENT_DELALLOC) {
		sink->delalloc = true;
		return 1;
	}
	if (e->flags & VS_NOT_ON_DISK)
		return 0;
	if (grow((void **)&out->v, &out->cap, out->n + 1, sizeof(*out->v)))
		return -ENOMEM;
	out->v[out->n++] = (struct vs_walk_extent){
		.physical = e->physical,
		.logical = e->logical,
		.length = e->length,
		.flags = (e->flags & FIEMAP_EXTENT_SHARED) ?
				 VS_WALK_EXTENT_SHARED :
				 0,
	};
	return 0;
}

/* A record with no extents. */
static void no_extents(struct vs_walk_worker *wk, struct vs_walk_item *it)
{
	it->worker = (uint8_t)wk->index;
	it->ext_start = (uint32_t)wk->ext.n;
	it->ext_count = 0;
}

/*
 * Appends fd's extents to the worker's; sets it->ext_*; 0 or -errno (then
 * none were added). Without FIEMAP_FLAG_SYNC first (unless VS_WALK_F_SYNC):
 * it would write back every file's dirty pages and wait, and on ext4 only
 * delayed allocations need it.
 */
static int map_extents(struct vs_walk_worker *wk, struct vs_walk_item *it,
		       int fd)
{
	const size_t before = wk->ext.n;
	struct extent_sink sink = { .out = &wk->ext };
	const uint32_t first =
		(wk->w->flags & VS_WALK_F_SYNC) ? FIEMAP_FLAG_SYNC : 0;
	int ret;

	ret = vs_fiemap_batched(fd, first, wk->fm, VS_WALK_FIEMAP_BATCH,
				collect_extent, &sink);
	if (ret == 1 && sink.delalloc) {
		wk->ext.n = before;
		sink.delalloc = false;
		ret = vs_fiemap_batched(fd, FIEMAP_FLAG_SYNC, wk->fm,
					VS_WALK_FIEMAP_BATCH, collect_extent,
					&sink);
		/* Still delayed after a sync (a racing writer): those have no place yet. */
		if (ret == 1 && sink.delalloc)
			ret = 0;
	}
	if (ret < 0) {
		wk->ext.n = before;
		return ret;
	}
	it->worker = (uint8_t)wk->index;
	it->ext_start = (uint32_t)before;
	it->ext_count = (uint32_t)(wk->ext.n - before);
	return 0;
}

/* ---- phase 1: plan -------------------------------------------------------------------- */

static struct vs_walk_item *add_item(struct vs_walk *w, uint32_t parent,
				     const char *name, size_t name_len)
{
	struct vs_walk_item *it;

	if (grow((void **)&w->items, &w->items_cap, w->nr_items + 1,
		 sizeof(*it)) ||
	    grow((void **)&w->names, &w->names_cap, w->names_len + name_len + 1,
		 1))
		return NULL;
	it = &w->items[w->nr_items++];
	memset(it, 0, sizeof(*it));
	it->parent = parent;
	it->name_off = (uint32_t)w->names_len;
	it->name_len = (uint32_t)name_len;
	it->kind = VS_ITEM_SKIP;
	memcpy(w->names + w->names_len, name, name_len);
	w->names[w->names_len + name_len] = '\0';
	w->names_len += name_len + 1;
	return it;
}

static int push_dir(struct vs_walk *w, const char *dir, const char *name,
		    size_t name_len, uint32_t parent)
{
	const size_t dir_len = strlen(dir);
	const size_t sep = dir_len > 0 && dir[dir_len - 1] == '/' ? 0 : 1;
	struct vs_walk_pending *p;
	char *path;

	if (grow((void **)&w->stack, &w->stack_cap, w->depth + 1,
		 sizeof(*w->stack)))
		return -ENOMEM;
	path = malloc(dir_len + sep + name_len + 1);
	if (!path)
		return -ENOMEM;
	memcpy(path, dir, dir_len);
	if (sep)
		path[dir_len] = '/';
	memcpy(path + dir_len + sep, name, name_len + 1);
	p = &w->stack[w->depth++];
	p->path = path;
	p->parent = parent;
	p->name_off = (uint32_t)(dir_len + sep);
	return 0;
}

/* Reads every entry of d into w->dents; 0 or -errno. */
static int read_entries(struct vs_walk *w, DIR *d)
{
	struct dirent *de;

	w->dents_len = 0;
	w->pos = 0;
	for (;;) {
		size_t len;

		errno = 0;
		de = readdir(d);
		if (!de)
			return errno ? -errno : 0;
		if (de->d_name[0] == '.' &&
		    (de->d_name[1] == '\0' ||
		     (de->d_name[1] == '.' && de->d_name[2] == '\0')))
			continue;
		len = strlen(de->d_name);
		if (grow((void **)&w->dents, &w->dents_cap,
			 w->dents_len + len + 2, 1))
			return -ENOMEM;
		w->dents[w->dents_len] = (char)de->d_type;
		memcpy(w->dents + w->dents_len + 1, de->d_name, len + 1);
		w->dents_len += len + 2;
	}
}

/*
 * Opens the next directory of the stack: its item (its own record, or only
 * its entry in its parent when it is another filesystem's or unreadable),
 * and it becomes the directory being planned. 0 or -ENOMEM: what cannot be
 * opened is left out.
 */
static int visit_dir(struct vs_walk *w)
{
	struct vs_walk_pending p = w->stack[--w->depth];
	const char *name = p.path + p.name_off;
	struct vs_walk_item *it;
	struct stat st;
	DIR *d;
	int fd, ret = 0;

	fd = open_noatime(w, AT_FDCWD, p.path, VS_OPEN_FLAGS | O_DIRECTORY);
	if (fd < 0)
		goto out;
	if (fstat(fd, &st) < 0) {
		close(fd);
		goto out;
	}
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		goto out;
	}
	it = add_item(w, p.parent, name, strlen(name));
	if (!it || grow((void **)&w->open, &w->open_cap, w->nr_open + 1,
			sizeof(*w->open))) {
		closedir(d);
		ret = -ENOMEM;
		goto out;
	}
	set_stat(it, &st);
	if (st.st_dev != w->dev || read_entries(w, d) < 0) {
		closedir(d);
		w->dents_len = 0;
		/* The root has no entry to keep. */
		it->kind = p.parent == VS_WALK_NO_PARENT ? VS_ITEM_SKIP :
							   VS_WALK_ENTRY;
		goto out;
	}
	/* A directory FIEMAP refuses (XFS: EOPNOTSUPP) is still walked: its files are what matter. */
	if (w->flags & VS_WALK_F_NO_DIR_FIEMAP) {
		no_extents(&w->workers[0], it);
	} else {
		ret = map_extents(&w->workers[0], it, fd);
		if (ret == -ENOMEM) {
			closedir(d);
			w->dents_len = 0;
			goto out;
		}
		if (ret < 0) {
			no_extents(&w->workers[0], it);
			ret = 0;
		}
	}
	it->kind = VS_WALK_DIR;
	w->open[w->nr_open] = d;
	w->cur = (uint32_t)w->nr_open++;
	w->have_dir = true;
	w->dir_num = w->next_dir++;
	w->dir_path = p.path;
	return 0;
out:
	free(p.path);
	return ret;
}

/* Plans one entry of the current directory. 0 or -errno (-ENOMEM, -E2BIG). */
static int plan_entry(struct vs_walk *w)
{
	unsigned char type = (unsigned char)w->dents[w->pos];
	const char *name = w->dents + w->pos + 1;
	const size_t name_len = strlen(name);
	struct vs_walk_item *it;
	struct stat st;

	w->pos += name_len + 2;
	if (++w->seen > w->max_entries)
		return -E2BIG;
	if (!valid_utf8((const unsigned char *)name, name_len))
		return 0;
	if (type == DT_UNKNOWN) {
		/* A filesystem without d_type: the type decides what is planned. */
		if (fstatat(dirfd(w->open[w->cur]), name, &st,
			    AT_SYMLINK_NOFOLLOW) < 0)
			return 0;
		type = S_ISDIR(st.st_mode) ? DT_DIR :
		       S_ISREG(st.st_mode) ? DT_REG :
					     DT_LNK;
	}
	if (type == DT_DIR)
		return push_dir(w, w->dir_path, name, name_len, w->dir_num);
	it = add_item(w, w->dir_num, name, name_len);
	if (!it)
		return -ENOMEM;
	it->dir = w->cur;
	it->task = type;
	w->nr_tasks++;
	return 0;
}

static void end_dir(struct vs_walk *w)
{
	w->have_dir = false;
	free(w->dir_path);
	w->dir_path = NULL;
	w->dents_len = 0;
	w->pos = 0;
}

/* 1: the step is full, 0: the tree is done, or -errno. */
static int plan(struct vs_walk *w, size_t max_records)
{
	int ret;

	for (;;) {
		if (w->have_dir) {
			while (w->pos < w->dents_len) {
				if (w->nr_items >= max_records)
					return 1;
				ret = plan_entry(w);
				if (ret < 0)
					return ret;
			}
			end_dir(w);
		}
		if (w->depth == 0)
			return 0;
		if (w->nr_items >= max_records ||
		    w->nr_open >= VS_WALK_STEP_DIRS)
			return 1;
		ret = visit_dir(w);
		if (ret < 0)
			return ret;
	}
}

/* ---- phase 2: map ----------------------------------------------------------------------- */

static int map_task(struct vs_walk_worker *wk, struct vs_walk_item *it)
{
	struct vs_walk *w = wk->w;
	const int dfd = dirfd(w->open[it->dir]);
	const char *name = w->names + it->name_off;
	struct stat st;
	int fd;

	if (it->task != DT_REG) {
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			set_stat(it, &st);
			it->kind = VS_WALK_ENTRY;
		}
		return 0;
	}
	fd = open_noatime(w, dfd, name, VS_OPEN_FLAGS);
	if (fd < 0)
		return 0;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return 0;
	}
	set_stat(it, &st);
	it->kind = VS_WALK_ENTRY;
	if (st.st_dev == w->dev && S_ISREG(st.st_mode)) {
		const int ret = map_extents(wk, it, fd);

		if (ret == -ENOMEM) {
			close(fd);
			return ret;
		}
		if (ret == 0)
			it->kind = VS_WALK_FILE;
	}
	close(fd);
	return 0;
}

static void *map_tasks(void *arg)
{
	struct vs_walk_worker *wk = arg;
	struct vs_walk *w = wk->w;

	for (;;) {
		const size_t first = __atomic_fetch_add(
			&w->next_task, VS_WALK_CLAIM, __ATOMIC_RELAXED);
		size_t i;

		if (first >= w->nr_items)
			return NULL;
		for (i = first; i < first + VS_WALK_CLAIM && i < w->nr_items;
		     i++) {
			if (!w->items[i].task)
				continue;
			wk->err = map_task(wk, &w->items[i]);
			if (wk->err < 0)
				return NULL;
		}
	}
}

/* Maps every task on up to w->threads threads (fewer when there is little to do). */
static int map_all(struct vs_walk *w)
{
	unsigned want = w->threads, started = 1, i;
	sigset_t all, old;
	int err = 0;

	if (want > 1 + w->nr_tasks / VS_WALK_TASKS_PER_THREAD)
		want = (unsigned)(1 + w->nr_tasks / VS_WALK_TASKS_PER_THREAD);
	w->next_task = 0;
	for (i = 0; i < want; i++)
		w->workers[i].err = 0;
	/* Helpers take no signals: they belong to the process's own threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (i = 1; i < want; i++) {
		if (pthread_create(&w->workers[i].thread, NULL, map_tasks,
				   &w->workers[i]) != 0)
			break; /* fewer threads do the same work */
		started++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	map_tasks(&w->workers[0]);
	for (i = 1; i < started; i++)
		pthread_join(w->workers[i].thread, NULL);
	for (i = 0; i < started; i++)
		if (w->workers[i].err < 0)
			err = w->workers[i].err;
	return err;
}

/* ---- phase 3: assemble ------------------------------------------------------------------- */

static int assemble(struct vs_walk *w, struct vs_walk_chunk *c)
{
	size_t i;

	for (i = 0; i < w->nr_items; i++) {
		const struct vs_walk_item *it = &w->items[i];
		const struct vs_extents *ext = &w->workers[it->worker].ext;
		struct vs_walk_record *r;

		if (it->kind == VS_ITEM_SKIP)
			continue;
		if (grow((void **)&c->records, &c->records_cap, c->count + 1,
			 sizeof(*r)) ||
		    grow((void **)&c->names, &c->names_cap,
			 c->names_len + it->name_len + 1, 1) ||
		    grow((void **)&c->extents, &c->extents_cap,
			 c->nr_extents + it->ext_count, sizeof(*c->extents)))
			return -ENOMEM;
		memcpy(c->names + c->names_len, w->names + it->name_off,
		       it->name_len + 1);
		c->names_len += it->name_len + 1;
		if (it->ext_count)
			memcpy(c->extents + c->nr_extents,
			       ext->v + it->ext_start,
			       it->ext_count * sizeof(*c->extents));
		c->nr_extents += it->ext_count;
		r = &c->records[c->count++];
		r->ino = it->ino;
		r->size = it->size;
		r->ctime_ns = it->ctime_ns;
		r->kind = it->kind;
		r->parent = it->parent;
		r->extents = it->ext_count;
		r->name_len = it->name_len;
	}
	return 0;
}

/* Closes the step's directories except the one still being planned. */
static void end_step(struct vs_walk *w)
{
	size_t i;

	for (i = 0; i < w->nr_open; i++)
		if (!(w->have_dir && i == w->cur))
			closedir(w->open[i]);
	if (w->have_dir) {
		w->open[0] = w->open[w->cur];
		w->cur = 0;
		w->nr_open = 1;
	} else {
		w->nr_open = 0;
	}
	w->nr_items = 0;
	w->nr_tasks = 0;
	w->names_len = 0;
	for (i = 0; i < w->threads; i++)
		w->workers[i].ext.n = 0;
}

/* ---- the interface ---------------------------------------------------------------------- */

int vs_walk_open(const char *root, uint64_t dev, uint64_t max_entries,
		 unsigned threads, unsigned flags, struct vs_walk **out)
{
	struct vs_walk *w;
	unsigned i;

	if (flags & ~VS_WALK_F_ALL)
		return -EINVAL;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->dev = dev;
	w->flags = flags;
	w->max_entries = max_entries;
	w->noatime = true;
	w->threads = threads < 1		   ? 1 :
		     threads > VS_WALK_MAX_THREADS ? VS_WALK_MAX_THREADS :
						     threads;
	for (i = 0; i < w->threads; i++) {
		w->workers[i].w = w;
		w->workers[i].index = i;
		w->workers[i].fm = malloc(sizeof(struct fiemap) +
					  VS_WALK_FIEMAP_BATCH *
						  sizeof(struct fiemap_extent));
		if (!w->workers[i].fm) {
			vs_walk_close(w);
			return -ENOMEM;
		}
	}
	/* The root: its path as given, an empty name. */
	if (grow((void **)&w->stack, &w->stack_cap, 1, sizeof(*w->stack)) ||
	    !(w->stack[0].path = strdup(root))) {
		vs_walk_close(w);
		return -ENOMEM;
	}
	w->stack[0].parent = VS_WALK_NO_PARENT;
	w->stack[0].name_off = (uint32_t)strlen(root);
	w->depth = 1;
	*out = w;
	return 0;
}

int vs_walk_next(struct vs_walk *w, struct vs_walk_chunk *c, size_t max_records)
{
	int more, ret;

	c->count = 0;
	c->nr_extents = 0;
	c->names_len = 0;
	more = plan(w, max_records);
	ret = more < 0 ? more : map_all(w);
	if (ret == 0)
		ret = assemble(w, c);
	end_step(w);
	return ret < 0 ? ret : more;
}

uint64_t vs_walk_seen(const struct vs_walk *w)
{
	return w->seen;
}

void vs_walk_close(struct vs_walk *w)
{
	unsigned i;

	if (!w)
		return;
	end_dir(w);
	end_step(w);
	while (w->depth > 0)
		free(w->stack[--w->depth].path);
	for (i = 0; i < VS_WALK_MAX_THREADS; i++) {
		free(w->workers[i].fm);
		free(w->workers[i].ext.v);
	}
	free(w->stack);
	free(w->open);
	free(w->dents);
	free(w->items);
	free(w->names);
	free(w);
}

void vs_walk_chunk_free(struct vs_walk_chunk *c)
{
	free(c->records);
	free(c->extents);
	free(c->names);
	*c = (struct vs_walk_chunk){ 0 };
}
