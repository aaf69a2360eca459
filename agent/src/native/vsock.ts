/**
 * The agent's sockets: the vsock listener (the Listener wrap accepts with
 * accept4(), so each connection knows its peer's CID and port), this
 * machine's CID, dup(2), and sd_notify(3). Connecting is the host's
 * (host-signal/src/native).
 */
import { EventEmitter } from 'node:events';

import { binding, constants } from './binding.js';
import { checkInteger, nativeError, isNativeError, U32_MAX, type NativeError } from '@vmsubst/common/native/errors';
import { VsockSocket, type AdoptOptions, type Listener } from '@vmsubst/common/native/stream';

export const DEFAULT_VSOCK_DEVICE = '/dev/vsock';

/** Listens for vsock connections; emits 'connection' (VsockSocket), 'error' and 'close'. */
export interface VsockServer extends EventEmitter {
  readonly port: number;
  readonly cid: number;
  close(): void;
  ref(): this;
  unref(): this;
}

// Accept errors that mean "out of resources now": retrying at once would spin.
const ACCEPT_BACKOFF_CODES = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);
const ACCEPT_BACKOFF_MS = 100;

class VsockServerImpl extends EventEmitter implements VsockServer {
  readonly port: number;
  readonly cid: number;
  #listener: Listener | null;
  #backoff: NodeJS.Timeout | null = null;
  #refed = true;
  readonly #socketOptions: AdoptOptions;

  constructor(fd: number, cid: number, port: number, socketOptions: AdoptOptions) {
    super();
    this.cid = cid;
    this.port = port;
    this.#socketOptions = socketOptions;
    this.#listener = new (binding().Listener)(fd, (err, connFd, peerCid, peerPort) => {
      this.#onConnection(err, connFd, peerCid, peerPort);
    });
  }

  #onConnection(err: NativeError | null, fd?: number, peerCid?: number, peerPort?: number): void {
    if (err !== null || fd === undefined || peerCid === undefined || peerPort === undefined) {
      const error = err ?? nativeError('EPROTO', 'accept', 'protocol error, accept (no fd)');
      if (ACCEPT_BACKOFF_CODES.has(error.code)) this.#pause();
      this.emit('error', error);
      return;
    }
    let socket: VsockSocket;
    try {
      const native = binding();
      const local = native.vsockAddresses(fd);
      socket = new VsockSocket(
        fd,
        {
          localCid: local.localCid,
          localPort: local.localPort,
          remoteCid: peerCid,
          remotePort: peerPort,
        },
        native.StreamHandle,
        this.#socketOptions,
      );
    } catch (e) {
      binding().closeFd(fd);
      // A peer that vanished between accept and getpeername is not the server's failure.
      if (isNativeError(e) && e.code === 'ENOTCONN') return;
      this.emit('error', e);
      return;
    }
    this.emit('connection', socket);
  }

  #pause(): void {
    const listener = this.#listener;
    if (listener === null || this.#backoff !== null) return;
    listener.stop();
    this.#backoff = setTimeout(() => {
      this.#backoff = null;
      this.#listener?.start();
    }, ACCEPT_BACKOFF_MS);
    if (!this.#refed) this.#backoff.unref();
  }

  close(): void {
    const listener = this.#listener;
    if (listener === null) return;
    this.#listener = null;
    if (this.#backoff !== null) {
      clearTimeout(this.#backoff);
      this.#backoff = null;
    }
    listener.close(() => this.emit('close'));
  }

  ref(): this {
    this.#refed = true;
    this.#listener?.ref();
    this.#backoff?.ref();
    return this;
  }

  unref(): this {
    this.#refed = false;
    this.#listener?.unref();
    this.#backoff?.unref();
    return this;
  }
}

export interface VsockListenOptions extends AdoptOptions {
  /** Local CID to bind (default VMADDR_CID_ANY). */
  cid?: number;
  /** listen() backlog (default 128; the kernel caps it at somaxconn). */
  backlog?: number;
}

/**
 * Listen on vsock `port` (constants.VMADDR_PORT_ANY picks a free one; read it
 * back from server.port). Throws a NativeError synchronously when AF_VSOCK is
 * unavailable or the port is taken.
 */
export function vsockListen(port: number, opts: VsockListenOptions = {}): VsockServer {
  const cid = opts.cid ?? constants.VMADDR_CID_ANY;
  const backlog = opts.backlog ?? 128;
  checkInteger('port', port, 0, U32_MAX);
  checkInteger('cid', cid, 0, U32_MAX);
  checkInteger('backlog', backlog, 0, 65535);
  const bound = binding().vsockListen(cid, port, backlog);
  try {
    return new VsockServerImpl(bound.fd, bound.cid, bound.port, {
      allowHalfOpen: opts.allowHalfOpen ?? false,
    });
  } catch (err) {
    binding().closeFd(bound.fd);
    throw err;
  }
}

/** dup(2) with close-on-exec: a second descriptor of the same open file. */
export function dupFd(fd: number): number {
  checkInteger('fd', fd, 0, 0x7fffffff);
  return binding().dupFd(fd);
}

/**
 * Signal-driven I/O on `fd` (F_SETOWN, O_ASYNC): the process gets SIGIO when the descriptor
 * becomes ready, and for a virtio-serial port when its host side connects. SIGIO must be
 * handled before (its default action ends the process).
 */
export function notifyAsync(fd: number): void {
  checkInteger('fd', fd, 0, 0x7fffffff);
  if (process.listenerCount('SIGIO') === 0) throw new Error('notifyAsync: handle SIGIO first');
  binding().notifyAsync(fd);
}

/** This machine's CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock). */
export function localCid(devPath: string = DEFAULT_VSOCK_DEVICE): number {
  return binding().localCid(devPath);
}

/** sd_notify(3): sends `message` ("READY=1", "WATCHDOG=1", ...) to the AF_UNIX socket `socketPath`. */
export function sdNotify(socketPath: string, message: string): void {
  binding().sdNotify(socketPath, message);
}
