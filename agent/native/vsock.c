// SPDX-License-Identifier: GPL-2.0-only
/*
 * AF_VSOCK stream sockets, non-blocking and close-on-exec from birth, so
 * binding.cc can hand them to libuv and no fd leaks into spawned children.
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

static void vs_vsock_sockaddr(struct sockaddr_vm *sa, uint32_t cid,
			      uint32_t port)
{
	memset(sa, 0, sizeof(*sa));
	sa->svm_family = AF_VSOCK;
	sa->svm_cid = cid;
	sa->svm_port = port;
}

static int vs_vsock_socket(void)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	return fd < 0 ? -errno : fd;
}

/* Close fd without letting close() clobber the errno being reported. */
static int vs_fail(int fd, int err)
{
	close(fd);
	return err;
}

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

/* Binds fd to a free reserved port, from the top down, as bindresvport(3) does. */
static int vs_vsock_bind_reserved(int fd)
{
	struct sockaddr_vm sa;
	uint32_t p;

	for (p = 1023; p >= 512; p--) {
		vs_vsock_sockaddr(&sa, VMADDR_CID_ANY, p);
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return 0;
		if (errno != EADDRINUSE)
			return -errno;
	}
	return -EADDRINUSE;
}

int vs_vsock_connect(uint32_t cid, uint32_t port, uint32_t timeout_ms,
		     uint32_t local_port, const char **failed_syscall)
{
	struct sockaddr_vm sa;
	int fd, err;

	fd = vs_vsock_socket();
	if (fd < 0) {
		*failed_syscall = "socket";
		return fd;
	}
	if (local_port == VS_VSOCK_PORT_RESERVED) {
		err = vs_vsock_bind_reserved(fd);
		if (err < 0) {
			*failed_syscall = "bind";
			return vs_fail(fd, err);
		}
	} else if (local_port != VS_VSOCK_PORT_NONE) {
		vs_vsock_sockaddr(&sa, VMADDR_CID_ANY, local_port);
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			*failed_syscall = "bind";
			return vs_fail(fd, -errno);
		}
	}
	if (timeout_ms > 0) {
		struct timeval tv = {
			.tv_sec = timeout_ms / 1000,
			.tv_usec = (timeout_ms % 1000) * 1000,
		};

		if (setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT,
			       &tv, sizeof(tv)) < 0) {
			*failed_syscall = "setsockopt";
			return vs_fail(fd, -errno);
		}
	}
	vs_vsock_sockaddr(&sa, cid, port);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 &&
	    errno != EINPROGRESS) {
		*failed_syscall = "connect";
		return vs_fail(fd, -errno);
	}
	return fd;
}

int vs_sock_connect_result(int fd)
{
	struct sockaddr_vm sa;
	socklen_t len = sizeof(int);
	int soerr = 0;

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
		return -errno;
	if (soerr != 0)
		return -soerr;
	/* Writable without an error can still mean "closed": ask the kernel. */
	len = sizeof(sa);
	if (getpeername(fd, (struct sockaddr *)&sa, &len) < 0)
		return -errno;
	return 0;
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

static int vs_vsock_name(int fd, struct vs_vsock_addr *addr, int peer)
{
	struct sockaddr_vm sa;
	socklen_t len = sizeof(sa);
	int ret;

	memset(&sa, 0, sizeof(sa));
	ret = peer ? getpeername(fd, (struct sockaddr *)&sa, &len)
		   : getsockname(fd, (struct sockaddr *)&sa, &len);
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

int vs_close(int fd)
{
	return close(fd) < 0 ? -errno : 0;
}

int vs_dup(int fd)
{
	int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);

	return nfd < 0 ? -errno : nfd;
}
