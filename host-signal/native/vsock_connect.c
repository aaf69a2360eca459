// SPDX-License-Identifier: GPL-2.0-only
/*
 * The connecting side of AF_VSOCK, for the host's notifications: a
 * non-blocking connect, optionally from a reserved source port.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#include "host.h"

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

		if (setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv,
			       sizeof(tv)) < 0) {
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
