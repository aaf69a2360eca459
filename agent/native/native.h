/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The syscall layer of the vmsubst-agent addon.
 *
 * Every function here is plain C, does syscalls only, never allocates a
 * JavaScript value and reports failure as a negative errno. binding.cc is the
 * only caller; it turns -errno into a JavaScript Error with code, syscall and
 * errno, the way node's fs does.
 *
 * Functions documented as "thread-safe" may run on the libuv thread pool.
 * None of them keep state between calls.
 */
#ifndef VMSUBST_AGENT_NATIVE_H
#define VMSUBST_AGENT_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- vsock.c: AF_VSOCK stream sockets ------------------------------------ */

struct vs_vsock_addr {
	uint32_t cid;
	uint32_t port;
};

/*
 * A non-blocking, close-on-exec AF_VSOCK stream socket bound to cid:port and
 * listening. Returns the fd, or -errno; *failed_syscall names the call that
 * failed ("socket", "bind", "listen", "getsockname") and *bound receives the
 * address actually bound (the port differs when port is VMADDR_PORT_ANY).
 */
int vs_vsock_listen(uint32_t cid, uint32_t port, int backlog,
		    struct vs_vsock_addr *bound, const char **failed_syscall);

/*
 * Start a non-blocking connect to cid:port. Returns the fd (the connect is
 * complete or in progress: wait for writability, then call
 * vs_sock_connect_result()), or -errno with *failed_syscall set.
 * timeout_ms > 0 sets the kernel's connect timeout (SO_VM_SOCKETS_CONNECT_TIMEOUT,
 * default 2 s) so that long timeouts are honoured by the transport too.
 */
/*
 * Binds the socket first when local_port is not VS_VSOCK_PORT_NONE:
 * VS_VSOCK_PORT_RESERVED takes the first free port of 1023 down to 512 (the
 * kernel lets only CAP_NET_BIND_SERVICE bind below 1024: -EACCES otherwise),
 * any other value that port.
 */
#define VS_VSOCK_PORT_NONE 0xffffffffu
#define VS_VSOCK_PORT_RESERVED 0xfffffffeu
int vs_vsock_connect(uint32_t cid, uint32_t port, uint32_t timeout_ms,
		     uint32_t local_port, const char **failed_syscall);

/*
 * After a non-blocking connect signalled writability or an error: 0 when the
 * socket is connected, else -errno (the pending SO_ERROR, or ENOTCONN).
 */
int vs_sock_connect_result(int fd);

/*
 * accept4() one connection from a listening AF_VSOCK socket, non-blocking and
 * close-on-exec. Returns the new fd and the peer's address, or -errno
 * (-EAGAIN when the accept queue is empty).
 */
int vs_vsock_accept(int listen_fd, struct vs_vsock_addr *peer);

/* getsockname()/getpeername() of a vsock socket. 0 or -errno. */
int vs_vsock_local_addr(int fd, struct vs_vsock_addr *addr);
int vs_vsock_peer_addr(int fd, struct vs_vsock_addr *addr);

/*
 * IOCTL_VM_SOCKETS_GET_LOCAL_CID on dev_path (normally /dev/vsock).
 * 0 or -errno with *failed_syscall set ("open" or "ioctl").
 */
int vs_vsock_local_cid(const char *dev_path, uint32_t *cid,
		       const char **failed_syscall);

/* One sd_notify(3) datagram to socket_path ("/path" or "@abstract"). 0 or -errno. */
int vs_sd_notify(const char *socket_path, const char *message, size_t len);

/* close() that retries nothing (Linux closes the fd even on EINTR). */
int vs_close(int fd);
/* dup(2), close-on-exec. */
int vs_dup(int fd);

/* ---- fiemap.c: FS_IOC_FIEMAP ---------------------------------------------- */

struct vs_extent {
	uint64_t logical;
	uint64_t physical;
	uint64_t length;
	uint32_t flags;
};

/* Called once per extent, in logical order; a non-zero return stops the walk
 * and becomes vs_fiemap()'s return value. */
typedef int (*vs_extent_cb)(void *ctx, const struct vs_extent *extent);

/*
 * Every extent of the open file fd, fetched in bounded batches with
 * FIEMAP_FLAG_SYNC until an extent carries FIEMAP_EXTENT_LAST or the kernel
 * maps no more. 0, -errno of the ioctl, or the callback's non-zero value.
 * Thread-safe.
 */
int vs_fiemap(int fd, vs_extent_cb cb, void *ctx);

/* ---- seek.c: data segments of a sparse file ------------------------------ */

/* Called for each data segment [offset, offset + length); a non-zero return
 * stops the walk and becomes vs_data_segments()'s return value. */
typedef int (*vs_segment_cb)(void *ctx, int64_t offset, int64_t length);

/*
 * The data segments of the open file fd within [0, size), found with
 * lseek(SEEK_DATA) and lseek(SEEK_HOLE), in order. A filesystem without
 * SEEK_DATA yields one segment covering everything. 0, -errno of lseek, or
 * the callback's non-zero value. Moves the file offset. Thread-safe.
 */
int vs_data_segments(int fd, int64_t size, vs_segment_cb cb, void *ctx);

/* ---- compare.c: changed blocks between two files ------------------------ */

/*
 * Bytes read from each file per step: both buffers stay in a core's cache
 * between the read and the memcmp. Measured on the development machine (AMD
 * EPYC, page cache warm), 2 x 792 MiB on one thread: 16 KiB 340 ms, 32 KiB
 * 210 ms, 64 KiB 170 ms, 128 KiB 330 ms, 256 KiB 420 ms, 1 MiB 1370 ms.
 */
#define VS_COMPARE_BUF (64u * 1024u)

/* A run of differing blocks: [offset, offset + length). */
struct vs_run {
	uint64_t offset;
	uint64_t length;
};

/*
 * Compares [offset, offset + length) of the open files fd_a and fd_b block by
 * block (block_size divides VS_COMPARE_BUF and length) and stores each run of
 * differing blocks in runs[], in order, adjacent differing blocks merged;
 * *nruns says how many. A span of n blocks has at most (n + 1) / 2 runs.
 * 0, -EINVAL (sizes), -ENOMEM, -errno of pread, -ENODATA when a file ends
 * inside the span, or -E2BIG when more than max_runs runs were found (the
 * first max_runs are stored). Thread-safe; does not move the file offsets.
 */
int vs_compare_span(int fd_a, int fd_b, uint64_t offset, uint64_t length, uint32_t block_size,
		    struct vs_run *runs, size_t max_runs, size_t *nruns);

struct fiemap;

/*
 * The loop behind vs_fiemap() with the caller's buffer: fm has room for
 * `batch` extents and is reused for every call; `flags` are the fm_flags
 * (FIEMAP_FLAG_SYNC or 0). Same return values. Thread-safe.
 */
int vs_fiemap_batched(int fd, uint32_t flags, struct fiemap *fm, uint32_t batch,
		      vs_extent_cb cb, void *ctx);

/* ---- walk.c: the pedigree index's walk of one filesystem ------------------ */

/*
 * A depth-first walk of the tree under a root directory that never leaves
 * the root's filesystem (st_dev), mapping every regular file and directory
 * with FIEMAP. It runs in steps (vs_walk_next), each filling a chunk of
 * records, so that a caller can consume one chunk while the next is walked
 * and memory stays bounded by the chunk size.
 *
 * Per directory: open(path, O_DIRECTORY | O_NOFOLLOW), fstat, every entry
 * read (readdir) before any is used, FIEMAP of the directory itself. Per
 * regular file: openat(dir fd, name, O_NOFOLLOW), fstat, FIEMAP, close —
 * spread over up to `threads` threads within a step. Other entries:
 * fstatat(AT_SYMLINK_NOFOLLOW) for their inode number. Files and
 * directories are opened with O_NOATIME where the caller may. FIEMAP runs
 * without FIEMAP_FLAG_SYNC; a file that has delayed-allocation extents is
 * mapped again with it, so every extent has its disk place.
 *
 * What cannot be opened, read or mapped is left out as it would be by
 * open(2)-ing each path: a directory that cannot be opened or read is not
 * descended into, a file that cannot be opened has no entry, one that
 * cannot be mapped keeps only its entry in its directory. A directory whose
 * FIEMAP fails (XFS: EOPNOTSUPP) is walked all the same, with no extents. A name that is not
 * valid UTF-8 is counted but left out (the index keys files by string path).
 */

enum vs_walk_kind {
	VS_WALK_ENTRY = 0,	/* only a name → inode entry of its directory */
	VS_WALK_FILE = 1,	/* a mapped regular file (and its entry) */
	VS_WALK_DIR = 2,	/* a mapped directory (and its entry, unless the root) */
};

#define VS_WALK_NO_PARENT UINT32_MAX
#define VS_WALK_MAX_THREADS 8u

struct vs_walk_record {
	uint64_t ino;
	uint64_t size;
	int64_t ctime_ns;
	uint32_t kind;		/* enum vs_walk_kind */
	uint32_t parent;	/* directory number of the directory holding it */
	uint32_t extents;	/* extents of this record, next in the chunk's extent array */
	uint32_t name_len;	/* bytes of the name, next in the chunk's names (NUL after each) */
};

/* vs_walk_open flags. */
/* Directories are not mapped (their blocks are metadata the agent reads only on ext2/3/4). */
#define VS_WALK_F_NO_DIR_FIEMAP 0x1u
/* Every file is mapped with FIEMAP_FLAG_SYNC (XFS: delayed allocations get their blocks first). */
#define VS_WALK_F_SYNC 0x2u
#define VS_WALK_F_ALL (VS_WALK_F_NO_DIR_FIEMAP | VS_WALK_F_SYNC)

/* vs_walk_extent flags. */
/* FIEMAP_EXTENT_SHARED: the blocks are shared with another file (reflink) or snapshot. */
#define VS_WALK_EXTENT_SHARED 0x1u

struct vs_walk_extent {
	uint64_t physical;
	uint64_t logical;
	uint64_t length;
	uint32_t flags;		/* VS_WALK_EXTENT_* */
	uint32_t pad;
};

/*
 * What one step produced. Directories are numbered 0, 1, … in the order
 * their VS_WALK_DIR records appear, across chunks (the root is 0); a
 * directory's record comes before any record it holds. Extents with
 * FIEMAP_EXTENT_UNKNOWN, _DELALLOC or _DATA_INLINE have no disk place and
 * are left out.
 */
struct vs_walk_chunk {
	struct vs_walk_record *records;
	size_t count, records_cap;
	struct vs_walk_extent *extents;
	size_t nr_extents, extents_cap;
	char *names;
	size_t names_len, names_cap;
};

struct vs_walk;

/*
 * A walk of the tree at root on device dev (st_dev of root: the caller's
 * lstat of it), stopping with -E2BIG after max_entries directory entries,
 * using up to threads (1..VS_WALK_MAX_THREADS) threads per step, with
 * flags VS_WALK_F_*. 0 with *out set, -EINVAL for an unknown flag, or -ENOMEM.
 */
int vs_walk_open(const char *root, uint64_t dev, uint64_t max_entries, unsigned threads,
		 unsigned flags, struct vs_walk **out);

/*
 * Walks on until chunk holds about max_records records or the tree ends;
 * chunk's arrays grow as needed and are reset first. 1 when more remains,
 * 0 when the walk is complete, -E2BIG past max_entries, -ENOMEM, or the
 * -errno of pthread_create. One thread at a time may step a given walk.
 */
int vs_walk_next(struct vs_walk *w, struct vs_walk_chunk *chunk, size_t max_records);

/* Directory entries seen so far (max_entries bounds it). */
uint64_t vs_walk_seen(const struct vs_walk *w);

/* Frees a walk (closing its open directories) and a chunk's arrays. */
void vs_walk_close(struct vs_walk *w);
void vs_walk_chunk_free(struct vs_walk_chunk *chunk);


/* ---- direct_io.c: O_DIRECT reads ------------------------------------------ */

/* Alignment of O_DIRECT reads: offset, length and memory. 4096 covers both
 * 512-byte and 4096-byte logical block sizes. */
#define VS_DIRECT_ALIGN 4096u

struct vs_direct_read {
	void *base;	/* posix_memalign()ed; free() it; NULL if nothing read */
	size_t skip;	/* offset of the first requested byte in base */
	size_t got;	/* requested bytes that were read (< length: short read) */
};

/*
 * Read [offset, offset + length) of path with O_DIRECT by reading the
 * enclosing VS_DIRECT_ALIGN-aligned span into an aligned buffer. Returns 0
 * (check out->got against length: the file or device may end early), or
 * -errno with *failed_syscall set ("open", "read", "posix_memalign").
 * On error out->base is NULL. Thread-safe.
 */
int vs_read_direct(const char *path, uint64_t offset, size_t length,
		   struct vs_direct_read *out, const char **failed_syscall);

/* ---- devctl.c: /dev/vmsubst ioctls ---------------------------------------- */

/*
 * Every function opens dev_path (normally /dev/vmsubst), issues one ioctl and
 * closes it again. 0 or -errno with *failed_syscall set ("open" or "ioctl").
 * All are thread-safe. The errno contract is the kmod's uapi header
 * (kmod/include/uapi/linux/vmsubst.h), which is also where every record type
 * named below is defined.
 */

struct vs_kmod_version_info {
	uint32_t abi_version;
	uint64_t features;
	char module_version[33];	/* always NUL-terminated */
};

/*
 * A report the kernel fills: cap entries of the command's record type at
 * items (the caller's memory); count entries written, total that exist
 * (total > count: the kernel had more than cap to say).
 */
struct vs_report {
	void *items;
	uint32_t cap;
	uint32_t count;
	uint64_t total;
};

struct vs_invalidate_result {
	uint64_t pages_cached;
	uint64_t pages_mapped;
	uint64_t pages_dropped;
	uint64_t pages_kept;
	uint64_t pages_refaulted;
};

struct vs_bdev_result {
	uint64_t pages_cached;
	uint64_t pages_dropped;
	uint64_t pages_kept;
};

struct vs_inodes_result {
	uint32_t evicted;
	uint32_t not_cached;
};

struct vs_dentries_result {
	uint32_t dropped;
	uint32_t not_cached;
	uint32_t busy;
	uint32_t mountpoints;
};

struct vs_pin_totals {
	uint64_t bytes_copied;
	uint64_t bytes_private;
	uint64_t bytes_failed;
	uint32_t status;	/* VMSUBST_PIN_S_* */
	uint32_t mappings;
};

/*
 * Where VMSUBST_IOC_PIN_MAPPERS resumes (VMSUBST_PIN_F_RESUME): opaque,
 * passed back as the previous call returned it; { 0, 0 } is the start.
 */
struct vs_pin_cursor {
	uint64_t mm;
	uint64_t addr;
};

struct vs_pages_result {
	uint64_t pages_cached;
	uint64_t pages_mapped;
	uint64_t pages_dirty;
	uint64_t pages_writeback;
};

/* VMSUBST_IOC_VERSION. */
int vs_kmod_version(const char *dev_path, struct vs_kmod_version_info *out,
		    const char **failed_syscall);

/*
 * VMSUBST_IOC_INVALIDATE_RANGE for the open file file_fd. outcomes (struct
 * vmsubst_page_range) and mappers (struct vmsubst_mapper, filled with
 * VMSUBST_INVALIDATE_F_REPORT_MAPPERS) may be NULL.
 */
int vs_invalidate_range(const char *dev_path, int file_fd, uint64_t offset,
			uint64_t length, uint32_t flags,
			struct vs_report *outcomes, struct vs_report *mappers,
			struct vs_invalidate_result *out,
			const char **failed_syscall);

/* VMSUBST_IOC_INVALIDATE_BDEV; kept (struct vmsubst_page_range) may be NULL. */
int vs_invalidate_bdev(const char *dev_path, int bdev_fd, uint64_t offset,
		       uint64_t length, uint32_t flags, struct vs_report *kept,
		       struct vs_bdev_result *out, const char **failed_syscall);

/*
 * VMSUBST_IOC_REVALIDATE_INODES of nr_inodes numbers through fd (any file on
 * the filesystem); in_use (struct vmsubst_inode_status) may be NULL.
 */
int vs_revalidate_inodes(const char *dev_path, int fd, const uint64_t *inodes,
			 uint32_t nr_inodes, uint32_t flags,
			 struct vs_report *in_use, struct vs_inodes_result *out,
			 const char **failed_syscall);

/*
 * VMSUBST_IOC_REVALIDATE_DENTRIES in the directory dir_fd: nr_names
 * NUL-terminated names packed into names_size bytes, or none (names NULL,
 * both counts 0) for every unused child.
 */
int vs_revalidate_dentries(const char *dev_path, int dir_fd, const char *names,
			   uint32_t nr_names, uint32_t names_size,
			   uint32_t flags, struct vs_dentries_result *out,
			   const char **failed_syscall);

/* VMSUBST_IOC_QUERY_MAPPERS; mappers holds struct vmsubst_mapper. */
int vs_query_mappers(const char *dev_path, int fd, uint64_t offset,
		     uint64_t length, struct vs_report *mappers,
		     const char **failed_syscall);

/*
 * VMSUBST_IOC_PIN_MAPPERS; pinned holds struct vmsubst_pin_result, unpinned
 * struct vmsubst_mapper; either may be NULL. Can take long (it copies up to
 * max_pages pages): run it off the event loop. With cursor non-NULL the call
 * resumes after *cursor (VMSUBST_PIN_F_RESUME) and *cursor is updated to
 * where the next call resumes; NULL starts at the first mapping.
 */
int vs_pin_mappers(const char *dev_path, int fd, uint64_t offset,
		   uint64_t length, uint32_t max_pages,
		   struct vs_pin_cursor *cursor,
		   struct vs_report *pinned, struct vs_report *unpinned,
		   struct vs_pin_totals *out, const char **failed_syscall);

/*
 * VMSUBST_IOC_QUERY_PAGES: cached, mapped, dirty and writeback pages of a
 * range; ranges (struct vmsubst_page_range of the dirty and writeback runs)
 * may be NULL. Changes nothing.
 */
int vs_query_pages(const char *dev_path, int fd, uint64_t offset,
		   uint64_t length, struct vs_report *ranges,
		   struct vs_pages_result *out, const char **failed_syscall);

#ifdef __cplusplus
}
#endif

#endif /* VMSUBST_AGENT_NATIVE_H */
