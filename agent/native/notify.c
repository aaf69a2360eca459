// SPDX-License-Identifier: GPL-2.0
/*
 * sd_notify(3) without libsystemd: one datagram to the AF_UNIX socket named
 * by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace).
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "native.h"

int vs_sd_notify(const char *socket_path, const char *message, size_t len)
{
	struct sockaddr_un addr;
	size_t plen = strlen(socket_path);
	socklen_t alen;
	ssize_t n;
	int fd, err = 0;

	if (plen == 0 || plen >= sizeof(addr.sun_path))
		return -EINVAL;
	if (socket_path[0] != '/' && socket_path[0] != '@')
		return -EAFNOSUPPORT; /* vsock: addresses are not supported here */
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, socket_path, plen);
	if (addr.sun_path[0] == '@')
		addr.sun_path[0] = '\0';
	alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);

	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	n = sendto(fd, message, len, MSG_NOSIGNAL, (struct sockaddr *)&addr,
		   alen);
	if (n < 0)
		err = -errno;
	else if ((size_t)n != len)
		err = -EMSGSIZE;
	close(fd);
	return err;
}
