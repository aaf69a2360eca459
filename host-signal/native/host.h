/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The syscall layer of the host's addon (vmsubst_host.node): the differ's
 * hole detection and block comparison, and the connecting side of AF_VSOCK.
 * Plain C, syscalls only, failure as a negative errno, like the agent's
 * native.h, whose vsock socket helpers this addon shares.
 */
#ifndef VMSUBST_HOST_NATIVE_H
#define VMSUBST_HOST_NATIVE_H

#include "native.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- vsock_connect.c: AF_VSOCK client sockets ----------------------------- */

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
#define VS_VSOCK_PORT_NONE     0xffffffffu
#define VS_VSOCK_PORT_RESERVED 0xfffffffeu
int vs_vsock_connect(uint32_t cid, uint32_t port, uint32_t timeout_ms,
		     uint32_t local_port, const char **failed_syscall);

/*
 * After a non-blocking connect signalled writability or an error: 0 when the
 * socket is connected, else -errno (the pending SO_ERROR, or ENOTCONN).
 */
int vs_sock_connect_result(int fd);

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
 * Measured again under kernel 6.18: alone, 256 KiB read faster than 64 KiB
 * (120-170 ms against 155-210 ms), but in the differ (two spans at once
 * while the main thread hashes) slower: 2 GiB bench pair 390-450 ms
 * against 300-335 ms, interleaved.
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
int vs_compare_span(int fd_a, int fd_b, uint64_t offset, uint64_t length,
		    uint32_t block_size, struct vs_run *runs, size_t max_runs,
		    size_t *nruns);

/* ---- prefault.c: a buffer's pages in one call ---------------------------- */

/*
 * Faults in (for writing) the whole pages of [addr, addr + length), with
 * madvise(MADV_POPULATE_WRITE): one system call instead of one fault per
 * page; the 2 MiB-aligned stretches inside are asked for as transparent huge
 * pages first (MADV_HUGEPAGE, advice). 0, or -errno of the populate
 * (-EINVAL before Linux 5.14). Advice only: the memory is usable either way.
 * Thread-safe.
 */
int vs_prefault(void *addr, size_t length);

#ifdef __cplusplus
}
#endif

#endif /* VMSUBST_HOST_NATIVE_H */
