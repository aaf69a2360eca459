// SPDX-License-Identifier: GPL-2.0
/*
 * Who maps a file: a walk of the file's reverse map, mapping->i_mmap, the
 * interval tree of every VMA that maps some page of it.
 *
 * The walks hold i_mmap_lock_read(), which keeps every VMA in the tree, its
 * mm_struct and their fields stable. They fill kernel memory only: the
 * dispatcher copies the report to the caller after the lock is gone, since a
 * fault on user memory takes mmap_lock, which ranks above i_mmap_rwsem.
 */
#include <linux/fs.h>
#include <linux/interval_tree_generic.h>
#include <linux/mm.h>
#include <linux/once.h>
#include <linux/random.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/siphash.h>

#include "vmsubst.h"

/*
 * vma_interval_tree_iter_first/next are not exported. This is a private,
 * read-only instance of the same tree (mm/interval_tree.c: same node, same
 * key functions), used for lookups only; insertion and removal stay the
 * kernel's.
 */
static inline unsigned long vmsubst_vma_start_pgoff(struct vm_area_struct *v)
{
	return v->vm_pgoff;
}

static inline unsigned long vmsubst_vma_last_pgoff(struct vm_area_struct *v)
{
	return v->vm_pgoff + vma_pages(v) - 1;
}

INTERVAL_TREE_DEFINE(struct vm_area_struct, shared.rb, unsigned long,
		     shared.rb_subtree_last, vmsubst_vma_start_pgoff,
		     vmsubst_vma_last_pgoff, static inline, vmsubst_vma_it)

#define vmsubst_for_each_vma(vma, mapping, first, last)                        \
	for (vma = vmsubst_vma_it_iter_first(&(mapping)->i_mmap, first, last); \
	     vma; vma = vmsubst_vma_it_iter_next(vma, first, last))

/*
 * The task an address space is charged to, mm->owner (CONFIG_MEMCG, set by
 * every Debian kernel): its thread-group id in the caller's pid namespace
 * and its name. Without CONFIG_MEMCG there is no owner; the report says 0
 * and the agent matches the mapping through /proc/PID/maps instead.
 */
void vmsubst_mm_owner(struct mm_struct *mm, __s32 *pid,
		      char (*comm)[TASK_COMM_LEN])
{
#ifdef CONFIG_MEMCG
	struct task_struct *owner;

	/* Task structs are freed after a grace period; mm->owner is RCU. */
	rcu_read_lock();
	owner = rcu_dereference(mm->owner);
	if (owner) {
		*pid = task_tgid_vnr(owner);
		if (*pid)
			get_task_comm(*comm, owner);
	}
	rcu_read_unlock();
#endif
}

/*
 * MAP_SHARED is VM_MAYSHARE. VM_SHARED is cleared when the file was opened
 * read-only, yet such a mapping still shows the page cache, cannot take a
 * private copy, and is reported as shared.
 */
static void vmsubst_mapper_fill(struct vmsubst_mapper *m,
				struct vm_area_struct *vma)
{
	unsigned long vm_flags = vma->vm_flags;

	m->start = vma->vm_start;
	m->end = vma->vm_end;
	m->offset = (u64)vma->vm_pgoff << PAGE_SHIFT;
	m->flags = (vm_flags & VM_EXEC ? VMSUBST_MAP_EXEC : 0) |
		   (vm_flags & VM_MAYSHARE ? VMSUBST_MAP_SHARED : 0) |
		   (vm_flags & VM_LOCKED ? VMSUBST_MAP_LOCKED : 0) |
		   (vm_flags & VM_WRITE ? VMSUBST_MAP_WRITE : 0);
	vmsubst_mm_owner(vma->vm_mm, &m->pid, &m->comm);
}

/* Every mapping of pages [@first, @last] of @mapping, into @mappers. */
void vmsubst_rmap_report(struct address_space *mapping, pgoff_t first,
			 pgoff_t last, struct vmsubst_out *mappers)
{
	struct vm_area_struct *vma;
	struct vmsubst_mapper *m;

	/*
	 * Bounded by the tree, which only the kernel grows; entries beyond
	 * the caller's capacity are counted, not stored.
	 */
	i_mmap_lock_read(mapping);
	vmsubst_for_each_vma(vma, mapping, first, last) {
		m = vmsubst_out_next(mappers);
		if (m)
			vmsubst_mapper_fill(m, vma);
		cond_resched();
	}
	i_mmap_unlock_read(mapping);
}

/*
 * The key PIN_MAPPERS orders address spaces by and hands out in its cursor:
 * a keyed hash of the mm_struct's address, stable while it lives, that
 * tells user space nothing about kernel addresses. The key is drawn once
 * per module load.
 */
u64 vmsubst_mm_key(const struct mm_struct *mm)
{
	static siphash_key_t key;

	get_random_once(&key, sizeof(key));
	return siphash_1u64((u64)(unsigned long)mm, &key);
}

static int vmsubst_pos_cmp(u64 key_a, u64 addr_a, u64 key_b, u64 addr_b)
{
	if (key_a != key_b)
		return key_a < key_b ? -1 : 1;
	if (addr_a != addr_b)
		return addr_a < addr_b ? -1 : 1;
	return 0;
}

/* The order of the walk: by key (so by address space), then by address. */
int vmsubst_ref_cmp(const void *a, const void *b)
{
	const struct vmsubst_vma_ref *x = a, *y = b;

	return vmsubst_pos_cmp(x->key, x->start, y->key, y->start);
}

/* The part of a private @vma that maps pages [@first, @last], keyed. */
static void vmsubst_ref_fill(struct vmsubst_vma_ref *ref,
			     struct vm_area_struct *vma, pgoff_t first,
			     pgoff_t last)
{
	pgoff_t lo = max(first, vmsubst_vma_start_pgoff(vma));
	pgoff_t hi = min(last, vmsubst_vma_last_pgoff(vma));

	ref->mm = vma->vm_mm;
	ref->key = vmsubst_mm_key(vma->vm_mm);
	ref->start = vma->vm_start + ((lo - vma->vm_pgoff) << PAGE_SHIFT);
	ref->end = vma->vm_start + ((hi - vma->vm_pgoff + 1) << PAGE_SHIFT);
}

static bool vmsubst_ref_after(const struct vmsubst_vma_ref *ref,
			      const struct vmsubst_pin_cursor *after)
{
	return !after->valid || vmsubst_pos_cmp(ref->key, ref->start,
						after->key, after->addr) > 0;
}

/*
 * @refs[0..@n) is a max-heap by vmsubst_ref_cmp(): @refs[0] is the largest.
 * Moves the entry at @i down to its place.
 */
static void vmsubst_heap_sift_down(struct vmsubst_vma_ref *refs, size_t n,
				   size_t i)
{
	size_t big, l, r;

	for (;;) {
		big = i;
		l = 2 * i + 1;
		r = l + 1;
		if (l < n && vmsubst_ref_cmp(&refs[l], &refs[big]) > 0)
			big = l;
		if (r < n && vmsubst_ref_cmp(&refs[r], &refs[big]) > 0)
			big = r;
		if (big == i)
			return;
		swap(refs[i], refs[big]);
		i = big;
	}
}

static void vmsubst_heap_sift_up(struct vmsubst_vma_ref *refs, size_t i)
{
	size_t parent;

	while (i) {
		parent = (i - 1) / 2;
		if (vmsubst_ref_cmp(&refs[i], &refs[parent]) <= 0)
			return;
		swap(refs[i], refs[parent]);
		i = parent;
	}
}

/*
 * How many private mappings of the range there are after @after, for
 * sizing a collection.
 */
size_t vmsubst_rmap_count_private(struct address_space *mapping, pgoff_t first,
				  pgoff_t last,
				  const struct vmsubst_pin_cursor *after)
{
	struct vm_area_struct *vma;
	struct vmsubst_vma_ref ref;
	size_t n = 0;

	i_mmap_lock_read(mapping);
	vmsubst_for_each_vma(vma, mapping, first, last) {
		if (!(vma->vm_flags & VM_MAYSHARE)) {
			vmsubst_ref_fill(&ref, vma, first, last);
			if (vmsubst_ref_after(&ref, after))
				n++;
		}
		cond_resched();
	}
	i_mmap_unlock_read(mapping);
	return n;
}

/*
 * The first @max private mappings of pages [@first, @last] after @after, in
 * the order of vmsubst_ref_cmp(), into @refs (unsorted), each narrowed to
 * the addresses that map the range and holding an mmgrab() reference on
 * its mm (the caller mmdrop()s them); every shared mapping goes to @shared.
 * Returns the number of private mappings after @after, of which
 * min(@max, return) were stored.
 *
 * The tree is in file-offset order, not ours: the smallest @max are kept
 * in a max-heap, O(mappings * log @max), and in no more memory than @max
 * entries however many mappings there are.
 */
size_t vmsubst_rmap_collect_private(struct address_space *mapping,
				    pgoff_t first, pgoff_t last,
				    const struct vmsubst_pin_cursor *after,
				    struct vmsubst_vma_ref *refs, size_t max,
				    struct vmsubst_out *shared)
{
	struct vm_area_struct *vma;
	struct vmsubst_vma_ref ref;
	struct vmsubst_mapper *m;
	size_t n = 0, i;

	i_mmap_lock_read(mapping);
	vmsubst_for_each_vma(vma, mapping, first, last) {
		if (vma->vm_flags & VM_MAYSHARE) {
			m = vmsubst_out_next(shared);
			if (m)
				vmsubst_mapper_fill(m, vma);
			cond_resched();
			continue;
		}
		vmsubst_ref_fill(&ref, vma, first, last);
		if (!vmsubst_ref_after(&ref, after))
			goto next;
		if (n < max) {
			refs[n] = ref;
			vmsubst_heap_sift_up(refs, n);
		} else if (max && vmsubst_ref_cmp(&ref, &refs[0]) < 0) {
			refs[0] = ref;
			vmsubst_heap_sift_down(refs, max, 0);
		}
		n++;
next:
		cond_resched();
	}
	/*
	 * Each VMA kept is still in the tree, so its mm is alive; the
	 * references are taken only now, for the entries that stayed.
	 */
	for (i = 0; i < min(n, max); i++)
		mmgrab(refs[i].mm);
	i_mmap_unlock_read(mapping);
	return n;
}
