/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmsubst: declarations shared by the ioctl dispatcher and the commands.
 */
#ifndef VMSUBST_H
#define VMSUBST_H

#include <linux/sched.h>
#include <linux/types.h>
#include <uapi/linux/vmsubst.h>

#define VMSUBST_MODULE_VERSION "0.4.0"

struct address_space;
struct file;

/* The leading members every command struct shares. */
struct vmsubst_cmd_hdr {
	__u32 size;
	__u32 flags;
};

/*
 * Kernel copy of any command's argument. The dispatcher fills it from user
 * memory and copies the output back, so commands never touch user memory.
 */
union vmsubst_cmd {
	struct vmsubst_cmd_hdr hdr;
	struct vmsubst_version version;
	struct vmsubst_invalidate_range invalidate_range;
	struct vmsubst_invalidate_bdev invalidate_bdev;
	struct vmsubst_revalidate_inodes revalidate_inodes;
	struct vmsubst_revalidate_dentries revalidate_dentries;
	struct vmsubst_query_mappers query_mappers;
	struct vmsubst_pin_mappers pin_mappers;
	struct vmsubst_query_pages query_pages;
	struct vmsubst_query_openers query_openers;
};

/**
 * struct vmsubst_out - kernel side of a struct vmsubst_array
 * @items:     zeroed kernel buffer of @cap entries; NULL when @cap is 0
 * @elem_size: bytes per entry
 * @cap:       entries @items holds (the caller's capacity)
 * @count:     entries filled
 * @total:     entries reported, @count included
 *
 * The dispatcher allocates it before the command and copies @count entries
 * to the caller after it, so a command fills it under any lock it holds.
 */
struct vmsubst_out {
	void *items;
	size_t elem_size;
	u32 cap;
	u32 count;
	u64 total;
};

#define VMSUBST_MAX_OUT 2

/**
 * struct vmsubst_io - lists a command receives and reports
 * @in:       the command's input list, copied from the caller; NULL if none
 * @in_bytes: size of @in
 * @out:      the command's output arrays, in the order of its table entry
 */
struct vmsubst_io {
	const void *in;
	size_t in_bytes;
	struct vmsubst_out out[VMSUBST_MAX_OUT];
};

/*
 * The next free entry of @out, or NULL when it is full. Counts the entry in
 * @out->total either way, so callers report everything and store what fits.
 */
static inline void *vmsubst_out_next(struct vmsubst_out *out)
{
	out->total++;
	if (out->count >= out->cap)
		return NULL;
	return (u8 *)out->items + (size_t)out->count++ * out->elem_size;
}

/* ---- pagecache.c: counting and dropping the pages of a mapping ---------- */

struct vmsubst_page_counts {
	u64 cached;
	u64 mapped;
	u64 dropped;
	u64 kept;
};

int vmsubst_pages_count(struct address_space *mapping, pgoff_t first,
			pgoff_t last, struct vmsubst_page_counts *c);
int vmsubst_pages_drop(struct address_space *mapping, pgoff_t first,
		       pgoff_t last, struct vmsubst_page_counts *c,
		       struct vmsubst_out *outcomes);
int vmsubst_pages_drop_unused(struct file *file, pgoff_t first, pgoff_t last,
			      struct vmsubst_page_counts *c,
			      struct vmsubst_out *outcomes);

/**
 * struct vmsubst_page_states - what a look at a range of a mapping found
 * @cached:    pages in the page cache
 * @mapped:    of those, mapped into some process
 * @dirty:     dirty (flag or xarray tag)
 * @writeback: under writeback (flag or xarray tag)
 */
struct vmsubst_page_states {
	u64 cached;
	u64 mapped;
	u64 dirty;
	u64 writeback;
};

int vmsubst_pages_states(struct address_space *mapping, pgoff_t first,
			 pgoff_t last, struct vmsubst_page_states *st,
			 struct vmsubst_out *ranges, bool stop_at_dirty);

/* ---- rmap.c: who maps a file -------------------------------------------- */

struct vmsubst_mapper;

/**
 * struct vmsubst_vma_ref - a private mapping to pin, found by the rmap walk
 * @mm:    its address space, with an mmgrab() reference
 * @key:   vmsubst_mm_key() of @mm: the order of the walk, and the cursor
 * @start: first address of the part that maps the range
 * @end:   address after it
 */
struct vmsubst_vma_ref {
	struct mm_struct *mm;
	u64 key;
	unsigned long start;
	unsigned long end;
};

/* A position in the order of (key, start); @valid false: before the first. */
struct vmsubst_pin_cursor {
	bool valid;
	u64 key;
	u64 addr;
};

void vmsubst_rmap_report(struct address_space *mapping, pgoff_t first,
			 pgoff_t last, struct vmsubst_out *mappers);
u64 vmsubst_mm_key(const struct mm_struct *mm);
int vmsubst_ref_cmp(const void *a, const void *b);
size_t vmsubst_rmap_count_private(struct address_space *mapping, pgoff_t first,
				  pgoff_t last,
				  const struct vmsubst_pin_cursor *after);
size_t vmsubst_rmap_collect_private(struct address_space *mapping,
				    pgoff_t first, pgoff_t last,
				    const struct vmsubst_pin_cursor *after,
				    struct vmsubst_vma_ref *refs, size_t max,
				    struct vmsubst_out *shared);
void vmsubst_mm_owner(struct mm_struct *mm, __s32 *pid,
		      char (*comm)[TASK_COMM_LEN]);

/* ---- the range clamp the file-range commands share (invalidate.c) ------- */

bool vmsubst_clamp_range(loff_t size, u64 start, u64 end, pgoff_t *first,
			 pgoff_t *last);

/* ---- the commands (main.c dispatches them) ------------------------------ */

/**
 * struct vmsubst_ucmd - one call of a command, as the dispatcher hands it on
 * @ubuffer:   the caller's struct
 * @user_size: its size member: the bytes of it the caller has
 * @cmd:       the kernel copy of it; members past @user_size read as zero
 * @file:      the file of the command's fd, of the kind its table entry
 *             names; NULL for a command without an fd. The dispatcher holds
 *             the reference and puts it after the reply
 * @end:       a file-range command's offset + length: no overflow, at most
 *             LLONG_MAX
 * @io:        the lists the command receives and reports
 *
 * A command reads its arguments from @cmd and writes its results there and
 * into @io; it never touches user memory.
 */
struct vmsubst_ucmd {
	void __user *ubuffer;
	u32 user_size;
	union vmsubst_cmd cmd;
	struct file *file;
	u64 end;
	struct vmsubst_io io;
};

/*
 * A command's own argument checks, run by the dispatcher after the common
 * ones on the struct and before it resolves the fd: a contradiction fails
 * the call before any file is looked at.
 */
int vmsubst_cmd_invalidate_range_check(const struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_revalidate_inodes_check(const struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_revalidate_dentries_check(const struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_pin_mappers_check(const struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_query_openers_check(const struct vmsubst_ucmd *ucmd);

int vmsubst_cmd_invalidate_range(struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_invalidate_bdev(struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_revalidate_inodes(struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_revalidate_dentries(struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_query_mappers(struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_pin_mappers(struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_query_pages(struct vmsubst_ucmd *ucmd);
int vmsubst_cmd_query_openers(struct vmsubst_ucmd *ucmd);

#endif /* VMSUBST_H */
