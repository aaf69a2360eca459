/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The syscall layer of the vmsubst-agent addon.
 *
 * Every function here is plain C, does syscalls only, never allocates a
 * JavaScript value and reports failure as a negative errno. The glue (glue/)
 * is the only caller; it turns -errno into a JavaScript Error with code,
 * syscall and errno, the way node's fs does. The host's addon
 * (host-signal/native) shares the vsock socket helpers.
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

/* ---- vsock.c: AF_VSOCK helpers both addons share ------------------------- */

struct vs_vsock_addr {
	uint32_t cid;
	uint32_t port;
};

struct sockaddr_vm;

/* A zeroed AF_VSOCK address cid:port. */
void vs_vsock_sockaddr(struct sockaddr_vm *sa, uint32_t cid, uint32_t port);
/* A non-blocking, close-on-exec AF_VSOCK stream socket, or -errno. */
int vs_vsock_socket(void);
/* Closes fd without letting close() clobber the errno being reported: returns err. */
int vs_fail(int fd, int err);

/* getsockname()/getpeername() of a vsock socket. 0 or -errno. */
int vs_vsock_local_addr(int fd, struct vs_vsock_addr *addr);
int vs_vsock_peer_addr(int fd, struct vs_vsock_addr *addr);

/* close() that retries nothing (Linux closes the fd even on EINTR). */
int vs_close(int fd);
/* dup(2), close-on-exec. */
int vs_dup(int fd);
/*
 * Signal-driven I/O on fd (F_SETOWN this process, O_ASYNC): the kernel sends
 * SIGIO when it becomes ready. A virtio-serial port also signals its host
 * side connecting. The caller must handle SIGIO first (its default ends the
 * process). 0 or -errno.
 */
int vs_notify_async(int fd);

/* ---- vsock_listen.c: the agent's listening side ---------------------------- */

/*
 * A non-blocking, close-on-exec AF_VSOCK stream socket bound to cid:port and
 * listening. Returns the fd, or -errno; *failed_syscall names the call that
 * failed ("socket", "bind", "listen", "getsockname") and *bound receives the
 * address actually bound (the port differs when port is VMADDR_PORT_ANY).
 */
int vs_vsock_listen(uint32_t cid, uint32_t port, int backlog,
		    struct vs_vsock_addr *bound, const char **failed_syscall);

/*
 * accept4() one connection from a listening AF_VSOCK socket, non-blocking and
 * close-on-exec. Returns the new fd and the peer's address, or -errno
 * (-EAGAIN when the accept queue is empty).
 */
int vs_vsock_accept(int listen_fd, struct vs_vsock_addr *peer);

/*
 * IOCTL_VM_SOCKETS_GET_LOCAL_CID on dev_path (normally /dev/vsock).
 * 0 or -errno with *failed_syscall set ("open" or "ioctl").
 */
int vs_vsock_local_cid(const char *dev_path, uint32_t *cid,
		       const char **failed_syscall);

/* ---- notify.c -------------------------------------------------------------- */

/* One sd_notify(3) datagram to socket_path ("/path" or "@abstract"). 0 or -errno. */
int vs_sd_notify(const char *socket_path, const char *message, size_t len);

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
	VS_WALK_ENTRY = 0, /* only a name → inode entry of its directory */
	VS_WALK_FILE = 1,  /* a mapped regular file (and its entry) */
	VS_WALK_DIR =
		2, /* a mapped directory (and its entry, unless the root) */
};

#define VS_WALK_NO_PARENT   UINT32_MAX
#define VS_WALK_MAX_THREADS 8u

struct vs_walk_record {
	uint64_t ino;
	uint64_t size;
	int64_t ctime_ns;
	uint32_t kind;	 /* enum vs_walk_kind */
	uint32_t parent; /* directory number of the directory holding it */
	uint32_t extents; /* extents of this record, next in the chunk's extent array */
	uint32_t name_len; /* bytes of the name, next in the chunk's names (NUL after each) */
};

/* vs_walk_open flags. */
/* Directories are not mapped (their blocks are metadata the agent reads only on ext2/3/4). */
#define VS_WALK_F_NO_DIR_FIEMAP 0x1u
/* Every file is mapped with FIEMAP_FLAG_SYNC (XFS: delayed allocations get their blocks first). */
#define VS_WALK_F_SYNC 0x2u
#define VS_WALK_F_ALL  (VS_WALK_F_NO_DIR_FIEMAP | VS_WALK_F_SYNC)

/* vs_walk_extent flags. */
/* FIEMAP_EXTENT_SHARED: the blocks are shared with another file (reflink) or snapshot. */
#define VS_WALK_EXTENT_SHARED 0x1u

struct vs_walk_extent {
	uint64_t physical;
	uint64_t logical;
	uint64_t length;
	uint32_t flags; /* VS_WALK_EXTENT_* */
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
int vs_walk_open(const char *root, uint64_t dev, uint64_t max_entries,
		 unsigned threads, unsigned flags, struct vs_walk **out);

/*
 * Walks on until chunk holds about max_records records or the tree ends;
 * chunk's arrays grow as needed and are reset first. 1 when more remains,
 * 0 when the walk is complete, -E2BIG past max_entries, -ENOMEM, or the
 * -errno of pthread_create. One thread at a time may step a given walk.
 */
int vs_walk_next(struct vs_walk *w, struct vs_walk_chunk *chunk,
		 size_t max_records);

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
	void *base;  /* posix_memalign()ed; free() it; NULL if nothing read */
	size_t skip; /* offset of the first requested byte in base */
	size_t got;  /* requested bytes that were read (< length: short read) */
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
 * open(dev_path, O_RDWR | O_CLOEXEC) of the kmod's device (normally
 * /dev/vmsubst): the fd, or -errno. The caller keeps it for many calls.
 */
int vs_kmod_open(const char *dev_path);

/*
 * One ioctl on the device: arg is the command's uapi struct, its size field
 * set by the caller. 0 or -errno; the errno contract is the uapi header's.
 * Thread-safe.
 */
int vs_kmod_ioctl(int dev_fd, unsigned long cmd, void *arg);

#ifdef __cplusplus
}
#endif

#endif /* VMSUBST_AGENT_NATIVE_H */
