// SPDX-License-Identifier: GPL-2.0
/*
 * VMSUBST_IOC_QUERY_OPENERS: which processes hold some of the files open,
 * through a descriptor, in one pass over the tasks. A process reading a
 * script as it runs it reads on at its old offset after a substitution; the
 * agent has to find such readers, and /proc/PID/fd makes that one syscall
 * per descriptor of every process.
 */
#include <linux/bsearch.h>
#include <linux/fdtable.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/string.h>

#include "vmsubst.h"

/* One file asked about: its inode, and where it stood in the caller's list. */
struct vmsubst_wanted {
	const struct inode *inode;
	u32 index;
};

/* What the descriptor callback needs: the sorted files, the task, the report. */
struct vmsubst_openers_pass {
	const struct vmsubst_wanted *wanted;
	size_t nr;
	pid_t pid;
	char comm[TASK_COMM_LEN];
	struct vmsubst_out *out;
};

static int vmsubst_wanted_cmp(const void *a, const void *b)
{
	const struct vmsubst_wanted *x = a, *y = b;

	if (x->inode != y->inode)
		return x->inode < y->inode ? -1 : 1;
	/* Equal inodes: the first fd of the file names it. */
	return x->index < y->index ? -1 : x->index > y->index;
}

static int vmsubst_inode_cmp(const void *key, const void *elt)
{
	const struct inode *k = key;
	const struct vmsubst_wanted *w = elt;

	return k == w->inode ? 0 : k < w->inode ? -1 : 1;
}

/*
 * iterate_fd() calls this under the table's file_lock (and the task's
 * alloc_lock): no sleeping, no user memory, only the kernel report.
 */
static int vmsubst_opener_visit(const void *arg, struct file *file,
				unsigned int fd)
{
	const struct vmsubst_openers_pass *pass = arg;
	const struct vmsubst_wanted *w;
	struct vmsubst_opener *o;

	w = bsearch(file_inode(file), pass->wanted, pass->nr,
		    sizeof(*pass->wanted), vmsubst_inode_cmp);
	if (!w)
		return 0;
	/* bsearch may land on any of equal inodes: report the first. */
	while (w > pass->wanted && w[-1].inode == w->inode)
		w--;
	o = vmsubst_out_next(pass->out);
	if (o) {
		o->pid = pass->pid;
		o->file = w->index;
		o->fd = fd;
		o->f_flags = file->f_flags;
		o->pos = READ_ONCE(file->f_pos);
		memcpy(o->comm, pass->comm, sizeof(o->comm));
	}
	return 0;
}

/*
 * The next task at or after pid @*nr in @ns, with a reference; @*nr is moved
 * past it. NULL when no pid is left. Every task has a pid of its own, so
 * threads come too; the caller skips the ones that share their leader's
 * table.
 */
static struct task_struct *vmsubst_next_task(struct pid_namespace *ns, int *nr)
{
	struct task_struct *task = NULL;
	struct pid *pid;

	rcu_read_lock();
	while (!task) {
		pid = find_ge_pid(*nr, ns);
		if (!pid)
			break;
		/* Strictly increasing, at most pid_max: the walk ends. */
		*nr = pid_nr_ns(pid, ns) + 1;
		task = pid_task(pid, PIDTYPE_PID);
	}
	if (task)
		get_task_struct(task);
	rcu_read_unlock();
	return task;
}

/* Reads @task's descriptor table into the report, unless another task's covers it. */
static bool vmsubst_visit_task(struct task_struct *task,
			       struct vmsubst_openers_pass *pass,
			       struct pid_namespace *ns)
{
	struct files_struct *files;
	bool read = false;

	if (same_thread_group(task, current))
		return false;
	pass->pid = task_tgid_nr_ns(task, ns);
	if (!pass->pid)
		return false;
	__get_task_comm(pass->comm, sizeof(pass->comm), task);

	/* task->files stays while the task's alloc_lock is held (exit_files()). */
	task_lock(task);
	files = task->files;
	/* A thread sharing its leader's table: the leader's visit reports it. */
	if (files && (thread_group_leader(task) ||
		      files != READ_ONCE(task->group_leader->files))) {
		iterate_fd(files, 0, vmsubst_opener_visit, pass);
		read = true;
	}
	task_unlock(task);
	return read;
}

int vmsubst_cmd_query_openers_check(const struct vmsubst_ucmd *ucmd)
{
	return ucmd->cmd.query_openers.nr_fds ? 0 : -EINVAL;
}

int vmsubst_cmd_query_openers(struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_query_openers *req = &ucmd->cmd.query_openers;
	struct pid_namespace *ns = task_active_pid_ns(current);
	struct vmsubst_openers_pass pass = { .out = &ucmd->io.out[0] };
	struct vmsubst_wanted *wanted;
	struct file **files;
	struct task_struct *task;
	const s32 *fds = ucmd->io.in;
	u32 i, nr = req->nr_fds, held = 0;
	int next = 1, ret = 0;

	files = kvcalloc(nr, sizeof(*files), GFP_KERNEL);
	wanted = kvcalloc(nr, sizeof(*wanted), GFP_KERNEL);
	if (!files || !wanted) {
		ret = -ENOMEM;
		goto out;
	}
	/* The references keep the inodes, whose addresses are the keys, alive. */
	for (i = 0; i < nr; i++) {
		files[i] = fget(fds[i]);
		if (!files[i]) {
			ret = -EBADF;
			goto out;
		}
		held++;
		if (!S_ISREG(file_inode(files[i])->i_mode)) {
			ret = S_ISDIR(file_inode(files[i])->i_mode) ? -EISDIR :
								      -EINVAL;
			goto out;
		}
		wanted[i].inode = file_inode(files[i]);
		wanted[i].index = i;
	}
	sort(wanted, nr, sizeof(*wanted), vmsubst_wanted_cmp, NULL);
	pass.wanted = wanted;
	pass.nr = nr;

	req->tasks = 0;
	while ((task = vmsubst_next_task(ns, &next))) {
		if (vmsubst_visit_task(task, &pass, ns))
			req->tasks++;
		put_task_struct(task);
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		cond_resched();
	}
out:
	for (i = 0; i < held; i++)
		fput(files[i]);
	kvfree(wanted);
	kvfree(files);
	return ret;
}
