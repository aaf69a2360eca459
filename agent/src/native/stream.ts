/**
 * Streams over the agent's addon: an adopted fd (virtio-serial port, socket)
 * on the event loop. The stream classes are shared with the host's addon
 * (@vmsubst/common/native/stream).
 */
import type { Duplex } from 'node:stream';
import { NativeStream, type AdoptOptions } from '@vmsubst/common/native/stream';
import { checkFd } from '@vmsubst/common/native/errors';
import { binding } from './binding.js';

export { VsockSocket, type AdoptOptions, type VsockAddresses } from '@vmsubst/common/native/stream';

/**
 * Adopt an already-open, pollable, connected fd (a socket, or a character
 * device such as /dev/virtio-ports/org.vmsubst.0) into the event loop. The
 * stream owns the fd from then on and closes it on destroy; libuv puts it in
 * non-blocking mode. If adoption throws, the caller still owns the fd.
 *
 * A virtio-serial port reads as end-of-file while no host program has it
 * open (the kernel returns 0 and polls EPOLLHUP), so such a stream ends when
 * the host disconnects, or at once if it never connected; reopen the device
 * to wait for the next host connection.
 */
export function adoptStream(fd: number, options?: AdoptOptions): Duplex {
  checkFd(fd);
  return new NativeStream(fd, binding().StreamHandle, options);
}
