// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_PIN_MAPPERS: before the hypervisor replaces a file's blocks,
 * give every process that maps the file privately its own copy of each
 * mapped page, so that after the invalidation it keeps running on the old
 * image (invalidation never zaps private copies) while new execs read the
 * new one: the semantics of replacing a program by rename.
 *
 * The copy is made by the kernel's own write-fault path, as a ptrace write
 * (access_process_vm()) makes it: get_user_pages_remote() with FOLL_WRITE |
 * FOLL_FORCE breaks copy-on-write on a private mapping, read-only text
 * included, and copies the page; nothing is written to it. The references
 * GUP returns are put at once: the copy is the point, not the reference.
 */
#include <linux/fs.h>
#include <linux/lockdep.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/pagemap.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/sort.h>

#include "compat.h"
#include "vmsubst.h"

/* Pages per get_user_pages_remote() call, and per hold of mmap_lock. */
#define VMSUBST_PIN_CHUNK 32

struct vmsubst_pin {
	struct address_space *mapping;
	u64 budget; /* pages that may still be copied */
	u32 status; /* VMSUBST_PIN_S_* */
};

/* Pages, summed into a struct vmsubst_pin_result in bytes. */
struct vmsubst_pin_stats {
	u64 copied;
	u64 was_private;
	u64 failed;
};

/*
 * Is the VMA at @addr still a private mapping of the file? The rmap walk
 * that found it let go of i_mmap_rwsem; the process may have unmapped or
 * replaced it since.
 */
static struct vm_area_struct *vmsubst_pin_vma(struct mm_struct *mm,
					      unsigned long addr,
					      struct address_space *mapping)
{
	struct vm_area_struct *vma;

	/* Not mmap_assert_locked(): under DEBUG_VM it needs the unexported dump_mm(). */
	lockdep_assert_held(&mm->mmap_lock);
	vma = find_vma(mm, addr);
	if (!vma || vma->vm_start > addr || !vma->vm_file ||
	    vma->vm_file->f_mapping != mapping || (vma->vm_flags & VM_MAYSHARE))
		return NULL;
	return vma;
}

/*
 * Pins up to VMSUBST_PIN_CHUNK pages from @addr, no further than @end.
 * Returns the pages dealt with (> 0), or 0 when the budget ran out first.
 */
static unsigned long vmsubst_pin_chunk(struct mm_struct *mm, unsigned long addr,
				       unsigned long end,
				       struct vmsubst_pin *pin,
				       struct vmsubst_pin_stats *st)
{
	struct page *pages[VMSUBST_PIN_CHUNK];
	bool anon[VMSUBST_PIN_CHUNK];
	unsigned long nr, i, j, run, ok;
	long got, k;

	lockdep_assert_held(&mm->mmap_lock);
	nr = min_t(unsigned long, (end - addr) >> PAGE_SHIFT,
		   VMSUBST_PIN_CHUNK);

	/*
	 * Which pages are the file's and which already private (written to,
	 * or pinned before)? A read fault maps the file's page where none is
	 * mapped yet; the copy below needs it anyway.
	 */
	got = vmsubst_gup_remote(mm, addr, nr, FOLL_FORCE, pages);
	if (got <= 0) {
		/* Beyond the end of the file, or no memory: skip the page. */
		st->failed++;
		return 1;
	}
	for (k = 0; k < got; k++) {
		anon[k] = PageAnon(pages[k]);
		put_page(pages[k]);
	}

	for (i = 0; i < got; i = j) {
		if (anon[i]) {
			st->was_private++;
			j = i + 1;
			continue;
		}
		for (j = i; j < got && !anon[j]; j++)
			;
		if (!pin->budget) {
			pin->status |= VMSUBST_PIN_S_BUDGET;
			return i;
		}
		run = min_t(u64, j - i, pin->budget);
		/* The write fault copies each page; it is the process's now. */
		k = vmsubst_gup_remote(mm, addr + (i << PAGE_SHIFT), run,
				       FOLL_WRITE | FOLL_FORCE, pages);
		for (ok = 0; k > 0 && ok < k; ok++) {
			if (PageAnon(pages[ok]))
				st->copied++;
			else
				st->failed++;
			put_page(pages[ok]);
		}
		st->failed += run - ok;
		pin->budget -= run;
		j = i + run;
	}
	return got;
}

/* Pins [@ref->start, @ref->end) of @mm; @mm has an mmget() reference. */
static int vmsubst_pin_ref(struct mm_struct *mm,
			   const struct vmsubst_vma_ref *ref,
			   struct vmsubst_pin *pin,
			   struct vmsubst_pin_stats *st)
{
	unsigned long addr = ref->start, end, done;
	struct vm_area_struct *vma;

	while (addr < ref->end) {
		if (fatal_signal_pending(current))
			return -EINTR;
		/* One chunk per hold: a writer of this mm waits for one chunk at most. */
		if (mmap_read_lock_killable(mm))
			return -EINTR;
		vma = vmsubst_pin_vma(mm, addr, pin->mapping);
		if (!vma) {
			mmap_read_unlock(mm);
			st->failed += (ref->end - addr) >> PAGE_SHIFT;
			return 0;
		}
		end = min(ref->end, vma->vm_end);
		done = vmsubst_pin_chunk(mm, addr, end, pin, st);
		mmap_read_unlock(mm);
		if (!done)
			return 0;
		addr += done << PAGE_SHIFT;
		cond_resched();
	}
	return 0;
}

/*
 * Pins the mappings @refs[0..@n) of one address space, in order. Stops
 * early on a fatal signal (-EINTR) or when the budget is spent; *@done is
 * how many mappings were finished, the one the budget cut short not
 * included.
 */
static int vmsubst_pin_mm(const struct vmsubst_vma_ref *refs, size_t n,
			  struct vmsubst_pin *pin,
			  struct vmsubst_pin_result *res, size_t *done)
{
	struct mm_struct *mm = refs[0].mm;
	struct vmsubst_pin_stats st = {};
	int ret = 0;
	size_t i;

	*done = 0;
	vmsubst_mm_owner(mm, &res->pid, &res->comm);
	/* Our mmgrab() keeps the struct; this keeps the address space. */
	if (!mmget_not_zero(mm)) {
		res->flags |= VMSUBST_PIN_R_EXITED;
		*done = n;
		return 0;
	}
	for (i = 0; i < n; i++) {
		ret = vmsubst_pin_ref(mm, &refs[i], pin, &st);
		if (ret || (pin->status & VMSUBST_PIN_S_BUDGET))
			break;
		*done = i + 1;
	}
	mmput(mm);

	res->bytes_copied = st.copied << PAGE_SHIFT;
	res->bytes_private = st.was_private << PAGE_SHIFT;
	res->bytes_failed = st.failed << PAGE_SHIFT;
	if (st.failed || (pin->status & VMSUBST_PIN_S_BUDGET))
		res->flags |= VMSUBST_PIN_R_PARTIAL;
	return ret;
}

static int vmsubst_pin_file(struct file *file, pgoff_t first, pgoff_t last,
			    struct vmsubst_pin_mappers *req,
			    struct vmsubst_pin_cursor *cursor,
			    struct vmsubst_io *io)
{
	struct vmsubst_pin pin = {
		.mapping = file->f_mapping,
		.budget = req->max_pages,
	};
	struct vmsubst_vma_ref *refs = NULL;
	struct vmsubst_pin_result res, *slot;
	size_t n, found, i, j, done;
	int ret = 0;

	/*
	 * Sized by a first walk, filled by a second with the first n after
	 * the cursor. Mappings made in between beyond the size are left for
	 * the next call, like those beyond VMSUBST_PIN_VMAS_MAX.
	 */
	n = min_t(size_t,
		  vmsubst_rmap_count_private(pin.mapping, first, last, cursor),
		  VMSUBST_PIN_VMAS_MAX);
	if (n) {
		refs = kvcalloc(n, sizeof(*refs), GFP_KERNEL);
		if (!refs)
			return -ENOMEM;
	}
	found = vmsubst_rmap_collect_private(pin.mapping, first, last, cursor,
					     refs, n, &io->out[1]);
	if (found > n)
		pin.status |= VMSUBST_PIN_S_TRUNCATED;
	n = min(n, found);

	/* One lock cycle and one result per address space, in cursor order. */
	sort(refs, n, sizeof(*refs), vmsubst_ref_cmp, NULL);
	for (i = 0; i < n; i = j) {
		for (j = i + 1; j < n && refs[j].mm == refs[i].mm; j++)
			;
		if (ret || (pin.status & VMSUBST_PIN_S_BUDGET))
			continue;
		memset(&res, 0, sizeof(res));
		ret = vmsubst_pin_mm(&refs[i], j - i, &pin, &res, &done);
		if (done) {
			cursor->valid = true;
			cursor->key = refs[i + done - 1].key;
			cursor->addr = refs[i + done - 1].start;
		}
		req->mappings += done;
		req->bytes_copied += res.bytes_copied;
		req->bytes_private += res.bytes_private;
		req->bytes_failed += res.bytes_failed;
		slot = vmsubst_out_next(&io->out[0]);
		if (slot)
			*slot = res;
	}

	for (i = 0; i < n; i++)
		mmdrop(refs[i].mm);
	kvfree(refs);
	req->status = pin.status;
	return ret;
}

int vmsubst_cmd_pin_mappers_check(const struct vmsubst_ucmd *ucmd)
{
	const struct vmsubst_pin_mappers *req = &ucmd->cmd.pin_mappers;

	if (!req->max_pages || req->max_pages > VMSUBST_PIN_PAGES_MAX)
		return -EINVAL;
	/* A VER0 caller has no cursor to resume from. */
	if ((req->flags & VMSUBST_PIN_F_RESUME) &&
	    req->size < VMSUBST_PIN_MAPPERS_SIZE_VER1)
		return -EINVAL;
	return 0;
}

int vmsubst_cmd_pin_mappers(struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_pin_mappers *req = &ucmd->cmd.pin_mappers;
	struct vmsubst_pin_cursor cursor = {};
	struct file *file = ucmd->file;
	pgoff_t first, last;
	int ret = 0;

	/* (0, 0), what a call that finished nothing returns, is the start. */
	if ((req->flags & VMSUBST_PIN_F_RESUME) &&
	    (req->cursor_mm || req->cursor_addr)) {
		cursor.valid = true;
		cursor.key = req->cursor_mm;
		cursor.addr = req->cursor_addr;
	}

	req->bytes_copied = 0;
	req->bytes_private = 0;
	req->bytes_failed = 0;
	req->status = 0;
	req->mappings = 0;
	if (vmsubst_clamp_range(i_size_read(file_inode(file)), req->offset,
				ucmd->end, &first, &last))
		ret = vmsubst_pin_file(file, first, last, req, &cursor,
				       &ucmd->io);
	/* Where the next call resumes: unchanged when nothing was finished. */
	req->cursor_mm = cursor.key;
	req->cursor_addr = cursor.addr;
	return ret;
}
