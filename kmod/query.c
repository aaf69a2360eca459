// SPDX-License-Identifier: GPL-2.0
/*
 * The questions that change nothing.
 * VMSUBST_IOC_QUERY_MAPPERS: which processes map a range of a file, and how
 * (text, shared, locked), from the file's reverse map.
 * VMSUBST_IOC_QUERY_PAGES: what of a range is cached, mapped, dirty or under
 * writeback, from the file's page cache.
 */
#include <linux/fs.h>

#include "vmsubst.h"

int vmsubst_cmd_query_mappers(struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_query_mappers *req = &ucmd->cmd.query_mappers;
	struct file *file = ucmd->file;
	pgoff_t first, last;

	if (vmsubst_clamp_range(i_size_read(file_inode(file)), req->offset,
				ucmd->end, &first, &last))
		vmsubst_rmap_report(file->f_mapping, first, last,
				    &ucmd->io.out[0]);
	return 0;
}

int vmsubst_cmd_query_pages(struct vmsubst_ucmd *ucmd)
{
	struct vmsubst_query_pages *req = &ucmd->cmd.query_pages;
	struct vmsubst_page_states st = {};
	struct file *file = ucmd->file;
	pgoff_t first, last;
	int ret;

	if (vmsubst_clamp_range(i_size_read(file_inode(file)), req->offset,
				ucmd->end, &first, &last)) {
		ret = vmsubst_pages_states(file->f_mapping, first, last, &st,
					   &ucmd->io.out[0], false);
		if (ret)
			return ret;
	}

	req->pages_cached = st.cached;
	req->pages_mapped = st.mapped;
	req->pages_dirty = st.dirty;
	req->pages_writeback = st.writeback;
	return 0;
}
