// SPDX-License-Identifier: GPL-2.0-only
/*
 * The agent's listening AF_VSOCK sockets (vsock.c has the helpers both
 * addons share): accept4() keeps each peer's CID and port, and the local
 * CID comes from /dev/vsock.
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

int vs_vsock_listen(uint32_t cid, uint32_t port, int backlog,
		    struct vs_vsock_addr *bound, const char **failed_syscall)
{
	struct sockaddr_vm sa;
	int fd, err;

	fd = vs_vsock_socket();
	if (fd < 0) {
		*failed_syscall = "socket";
		return fd;
	}
	vs_vsock_sockaddr(&sa, cid, port);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		*failed_syscall = "bind";
		return vs_fail(fd, -errno);
	}
	if (listen(fd, backlog) < 0) {
		*failed_syscall = "listen";
		return vs_fail(fd, -errno);
	}
	err = vs_vsock_local_addr(fd, bound);
	if (err < 0) {
		*failed_syscall = "getsockname";
		return vs_fail(fd, err);
	}
	return fd;
}

int vs_vsock_accept(int listen_fd, struct vs_vsock_addr *peer)
{
	struct sockaddr_vm sa;
	socklen_t len = sizeof(sa);
	int fd;

	memset(&sa, 0, sizeof(sa));
	fd = accept4(listen_fd, (struct sockaddr *)&sa, &len,
		     SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (sa.svm_family != AF_VSOCK)
		return vs_fail(fd, -EAFNOSUPPORT);
	peer->cid = sa.svm_cid;
	peer->port = sa.svm_port;
	return fd;
}

int vs_vsock_local_cid(const char *dev_path, uint32_t *cid,
		       const char **failed_syscall)
{
	unsigned int value = 0;
	int fd, ret = 0;

	fd = open(dev_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		*failed_syscall = "open";
		return -errno;
	}
	if (ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &value) < 0) {
		*failed_syscall = "ioctl";
		ret = -errno;
	}
	close(fd);
	if (ret == 0)
		*cid = value;
	return ret;
}
