// SPDX-License-Identifier: GPL-2.0
/*
 * Files, mappings and block devices, for the cases that need more than an
 * ioctl: reading a file through, residency, smaps, the device of a file.
 */
#include "harness.h"

bool read_all(int fd, off_t size)
{
	char buf[65536];
	off_t done = 0;

	while (done < size) {
		ssize_t n = pread(fd, buf, sizeof(buf), done);

		if (n <= 0)
			return false;
		done += n;
	}
	return true;
}

/* Number of pages of [0, len) of @addr in the page cache; -1 on error. */
long resident(void *addr, size_t len, long page, unsigned char *vec)
{
	long n = 0;

	if (mincore(addr, len, vec))
		return -1;
	for (size_t i = 0; i < (len + page - 1) / page; i++)
		n += vec[i] & 1;
	return n;
}

/* A "Field:" of the mapping of @pid starting at @start in smaps, in kB; -1 if absent. */
long smaps_kb(pid_t pid, void *start, const char *field)
{
	char path[64], line[512], want[32];
	bool in = false;
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	snprintf(want, sizeof(want), "%lx-", (unsigned long)(uintptr_t)start);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		size_t flen = strlen(field);

		if (strchr(line, '-') &&
		    strchr(line, '-') < strchr(line, ' ') && line[0] != ' ') {
			if (in)
				break;
			in = !strncmp(line, want, strlen(want));
			continue;
		}
		if (in && !strncmp(line, field, flen) && line[flen] == ':') {
			kb = strtol(line + flen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return kb;
}

void self_comm(char comm[16])
{
	FILE *f = fopen("/proc/self/comm", "re");

	memset(comm, 0, 16);
	if (f) {
		if (fgets(comm, 16, f))
			comm[strcspn(comm, "\n")] = 0;
		fclose(f);
	}
}

/* The /dev node of the block device @path lives on; false if none. */
bool bdev_of(const char *path, char *out, size_t len)
{
	char uevent[64], line[256];
	struct stat st;
	bool found = false;
	FILE *f;

	if (stat(path, &st) || major(st.st_dev) == 0)
		return false;
	snprintf(uevent, sizeof(uevent), "/sys/dev/block/%u:%u/uevent",
		 major(st.st_dev), minor(st.st_dev));
	f = fopen(uevent, "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "DEVNAME=", 8)) {
			line[strcspn(line, "\n")] = 0;
			snprintf(out, len, "/dev/%s", line + 8);
			found = true;
		}
	}
	fclose(f);
	return found && access(out, R_OK) == 0;
}

/* A fresh file next to the given one, unlinked at once. */
int rw_tmpfile(struct ctx *c)
{
	char tmpl[PATH_MAX];
	const char *slash = strrchr(c->path[NEED_RW], '/');
	int dirlen = slash ? (int)(slash - c->path[NEED_RW]) : 1;
	int fd;

	snprintf(tmpl, sizeof(tmpl), "%.*s/.abi_test.XXXXXX", dirlen,
		 slash ? c->path[NEED_RW] : ".");
	fd = mkostemp(tmpl, O_CLOEXEC);
	if (fd >= 0)
		unlink(tmpl);
	return fd;
}
