// SPDX-License-Identifier: GPL-2.0
/*
 * The questions that change nothing.
 * VMSUBST_IOC_QUERY_MAPPERS: which processes map a range of a file, and how
 * (text, shared, locked), from the file's reverse map.
 * VMSUBST_IOC_QUERY_PAGES: what of a range is cached, mapped, dirty or under
 * writeback, from the file's page cache.
 */
#include <linux/file.h>
#include <linux/fs.h>

#include "vmsubst.h"

int vmsubst_cmd_query_mappers(union vmsubst_cmd *cmd, struct vmsubst_io *io)
{
	struct vmsubst_query_mappers *req = &cmd->query_mappers;
	pgoff_t first, last;
	struct file *file;
	u64 end;
	int ret;

	if (req->reserved0)
		return -EINVAL;
	ret = vmsubst_check_range(req->offset, req->length, &end);
	if (ret)
		return ret;

	file = fget(req->fd);
	if (!file)
		return -EBADF;
	ret = vmsubst_check_file(file);
	if (!ret && vmsubst_clamp_range(i_size_read(file_inode(file)),
					req->offset, end, &first, &last))
		vmsubst_rmap_report(file->f_mapping, first, last, &io->out[0]);
	fput(file);
	return ret;
}

int vmsubst_cmd_query_pages(union vmsubst_cmd *cmd, struct vmsubst_io *io)
{
	struct vmsubst_query_pages *req = &cmd->query_pages;
	struct vmsubst_page_states st = {};
	pgoff_t first, last;
	struct file *file;
	u64 end;
	int ret;

	if (req->reserved0)
		return -EINVAL;
	ret = vmsubst_check_range(req->offset, req->length, &end);
	if (ret)
		return ret;

	file = fget(req->fd);
	if (!file)
		return -EBADF;
	ret = vmsubst_check_file(file);
	if (!ret && vmsubst_clamp_range(i_size_read(file_inode(file)),
					req->offset, end, &first, &last))
		ret = vmsubst_pages_states(file->f_mapping, first, last, &st,
					   &io->out[0], false);
	fput(file);
	if (ret)
		return ret;

	req->pages_cached = st.cached;
	req->pages_mapped = st.mapped;
	req->pages_dirty = st.dirty;
	req->pages_writeback = st.writeback;
	return 0;
}
