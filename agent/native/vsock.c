// SPDX-License-Identifier: GPL-2.0-only
/*
 * AF_VSOCK stream sockets, non-blocking and close-on-exec from birth, so
 * the glue can hand them to libuv and no fd leaks into spawned children.
 * This file has what both sides use (socket helpers, addresses, close,
 * dup); the listening side is the agent's (vsock_listen.c), the connecting
 * side the host's (host-signal/native/vsock_connect.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#include "native.h"

void vs_vsock_sockaddr(struct sockaddr_vm *sa, uint32_t cid, uint32_t port)
{
	memset(sa, 0, sizeof(*sa));
	sa->svm_family = AF_VSOCK;
	sa->svm_cid = cid;
	sa->svm_port = port;
}

int vs_vsock_socket(void)
{
	int fd =
		socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	return fd < 0 ? -errno : fd;
}

int vs_fail(int fd, int err)
{
	close(fd);
	return err;
}

static int vs_vsock_name(int fd, struct vs_vsock_addr *addr, int peer)
{
	struct sockaddr_vm sa;
	socklen_t len = sizeof(sa);
	int ret;

	memset(&sa, 0, sizeof(sa));
	ret = peer ? getpeername(fd, (struct sockaddr *)&sa, &len) :
		     getsockname(fd, (struct sockaddr *)&sa, &len);
	if (ret < 0)
		return -errno;
	if (sa.svm_family != AF_VSOCK)
		return -EAFNOSUPPORT;
	addr->cid = sa.svm_cid;
	addr->port = sa.svm_port;
	return 0;
}

int vs_vsock_local_addr(int fd, struct vs_vsock_addr *addr)
{
	return vs_vsock_name(fd, addr, 0);
}

int vs_vsock_peer_addr(int fd, struct vs_vsock_addr *addr)
{
	return vs_vsock_name(fd, addr, 1);
}

int vs_close(int fd)
{
	return close(fd) < 0 ? -errno : 0;
}

int vs_dup(int fd)
{
	int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);

	return nfd < 0 ? -errno : nfd;
}

int vs_notify_async(int fd)
{
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0)
		return -errno;
	if (fcntl(fd, F_SETOWN, getpid()) < 0)
		return -errno;
	return fcntl(fd, F_SETFL, flags | O_ASYNC) < 0 ? -errno : 0;
}
