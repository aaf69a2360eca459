/**
 * Connecting to a guest's vsock port without blocking the event loop
 * (host-signal/native/vsock_connect.c and the Connector wrap), as a Duplex
 * stream shared in shape with the agent's vsock sockets.
 */
import { checkInteger, nativeError, U32_MAX } from '@vmsubst/common/native/errors';
import { VsockSocket, type AdoptOptions } from '@vmsubst/common/native/stream';
import { hostBinding, type HostBinding } from './binding.js';

export { VsockSocket } from '@vmsubst/common/native/stream';

export interface VsockConnectOptions extends AdoptOptions {
  /**
   * Give up after this many milliseconds (rejects with ETIMEDOUT). Without
   * it the transport's own connect timeout applies (2 s on Linux).
   */
  timeoutMs?: number;
  /**
   * The local port to bind first: 'reserved' takes a free one below 1024
   * (needs CAP_NET_BIND_SERVICE: EACCES otherwise), which tells the guest
   * agent the peer is privileged; a number that port; default any.
   */
  localPort?: number | 'reserved';
}

const VSOCK_PORT_NONE = 0xffffffff;
const VSOCK_PORT_RESERVED = 0xfffffffe;

// The kernel's connect timeout is set a little past ours, so that our timer,
// not the transport, decides when a long timeout ends.
const KERNEL_TIMEOUT_SLACK_MS = 1000;

/** Connect to cid:port without blocking the event loop. */
export function vsockConnect(cid: number, port: number, opts: VsockConnectOptions = {}): Promise<VsockSocket> {
  return new Promise<VsockSocket>((resolve, reject) => {
    const { timeoutMs } = opts;
    let fd: number;
    let native: HostBinding;
    try {
      native = hostBinding();
      checkInteger('cid', cid, 0, U32_MAX);
      checkInteger('port', port, 0, U32_MAX);
      if (timeoutMs !== undefined) checkInteger('timeoutMs', timeoutMs, 1, U32_MAX - KERNEL_TIMEOUT_SLACK_MS);
      const { localPort } = opts;
      if (typeof localPort === 'number') checkInteger('localPort', localPort, 0, VSOCK_PORT_RESERVED - 1);
      fd = native.vsockConnectStart(
        cid,
        port,
        timeoutMs === undefined ? 0 : timeoutMs + KERNEL_TIMEOUT_SLACK_MS,
        localPort === undefined ? VSOCK_PORT_NONE : localPort === 'reserved' ? VSOCK_PORT_RESERVED : localPort,
      );
    } catch (err) {
      reject(err);
      return;
    }

    let timer: NodeJS.Timeout | undefined;
    let connector: { cancel(): void };
    try {
      connector = new native.Connector(fd, cid, port, (err, connectedFd) => {
        if (timer !== undefined) clearTimeout(timer);
        if (err !== null || connectedFd === undefined) {
          reject(err ?? nativeError('EPROTO', 'connect', `protocol error, connect vsock ${cid}:${port}`));
          return;
        }
        try {
          resolve(
            new VsockSocket(connectedFd, native.vsockAddresses(connectedFd), native.StreamHandle, {
              allowHalfOpen: opts.allowHalfOpen ?? false,
            }),
          );
        } catch (e) {
          native.closeFd(connectedFd);
          reject(e);
        }
      });
    } catch (err) {
      native.closeFd(fd);
      reject(err);
      return;
    }
    if (timeoutMs !== undefined) {
      timer = setTimeout(() => {
        connector.cancel(); // closes the socket; no completion callback follows
        reject(
          nativeError(
            'ETIMEDOUT',
            'connect',
            `connection timed out, connect vsock ${cid}:${port} (after ${timeoutMs} ms)`,
          ),
        );
      }, timeoutMs);
    }
  });
}
