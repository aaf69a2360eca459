/**
 * Streams over connected fds adopted into node's own libuv loop
 * (uv_pipe_open): no thread per socket, and reads, writes and backpressure
 * work like a net.Socket's.
 *
 * NativeStream and VsockSocket take the StreamHandle class of the addon that
 * made the fd, so that the host's facade (host-signal/src/native), whose
 * addon shares the glue (agent/native/glue/stream.cc), uses them too.
 */
import { Duplex } from 'node:stream';

import { isNativeError, nativeError, type NativeError } from './errors.js';

type ErrorCallback = (err: NativeError | null) => void;

/** The glue's uv_pipe_t wrap (StreamHandle in stream.cc). */
export interface StreamHandle {
  readStart(): void;
  readStop(): void;
  write(chunks: Buffer[], cb: ErrorCallback): void;
  shutdown(cb: ErrorCallback): void;
  close(cb?: () => void): void;
  ref(): void;
  unref(): void;
}

export type StreamHandleClass = new (
  fd: number,
  onread: (err: NativeError | null, chunk: Buffer | null) => void,
) => StreamHandle;

/** The glue's uv_poll_t wrap of a listening vsock socket (Listener in vsock.cc). */
export interface Listener {
  start(): void;
  stop(): void;
  close(cb?: () => void): void;
  ref(): void;
  unref(): void;
}

/** The host glue's wrap of a connect in progress (Connector in host-signal/native/glue/connect.cc). */
export interface Connector {
  cancel(): void;
}

export interface AdoptOptions {
  /**
   * Keep the writable side open after the peer's EOF (default false, like
   * net.Socket: the stream ends its side too, then closes).
   */
  allowHalfOpen?: boolean;
}

/**
 * A connected fd adopted into libuv as a stream.Duplex. Reading starts when
 * the stream is read and stops while its buffer is full; end() half-closes
 * (shutdown(SHUT_WR); on a character device or pipe it only flushes);
 * destroy() closes the fd.
 */
export class NativeStream extends Duplex {
  #handle: StreamHandle | null;
  #reading = false;

  /** Takes ownership of fd on success; `Handle` is the StreamHandle of the addon that made fd. */
  constructor(fd: number, Handle: StreamHandleClass, options: AdoptOptions = {}) {
    super({ allowHalfOpen: options.allowHalfOpen ?? false });
    this.#handle = new Handle(fd, (err, chunk) => {
      this.#onRead(err, chunk);
    });
  }

  #onRead(err: NativeError | null, chunk: Buffer | null): void {
    if (err !== null) {
      this.#reading = false;
      this.destroy(err);
      return;
    }
    if (chunk === null) {
      this.#reading = false; // libuv stops reading at EOF by itself
      this.push(null);
      return;
    }
    if (!this.push(chunk)) this.#stopReading();
  }

  #stopReading(): void {
    if (this.#reading && this.#handle !== null) {
      this.#handle.readStop();
      this.#reading = false;
    }
  }

  override _read(): void {
    if (this.#reading || this.#handle === null) return;
    try {
      this.#handle.readStart();
      this.#reading = true;
    } catch (err) {
      this.destroy(err instanceof Error ? err : new Error(String(err)));
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#writeChunks([chunk], callback);
  }

  override _writev(
    chunks: Array<{ chunk: Buffer; encoding: BufferEncoding }>,
    callback: (error?: Error | null) => void,
  ): void {
    this.#writeChunks(
      chunks.map((c) => c.chunk),
      callback,
    );
  }

  #writeChunks(chunks: Buffer[], callback: (error?: Error | null) => void): void {
    if (this.#handle === null) {
      callback(nativeError('EBADF', 'write', 'bad file descriptor, write (stream is closed)'));
      return;
    }
    try {
      this.#handle.write(chunks, callback);
    } catch (err) {
      callback(err instanceof Error ? err : new Error(String(err)));
    }
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.#handle === null) {
      callback();
      return;
    }
    // Like net.Socket: a peer that already went away makes shutdown fail
    // with ENOTCONN, which is not an error for ending our side.
    const done = (err: NativeError | null): void => {
      callback(err !== null && err.code !== 'ENOTCONN' ? err : null);
    };
    try {
      this.#handle.shutdown(done);
    } catch (err) {
      done(isNativeError(err) ? err : nativeError('EIO', 'shutdown', String(err)));
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const handle = this.#handle;
    this.#handle = null;
    this.#reading = false;
    if (handle === null) {
      callback(error);
      return;
    }
    handle.close(() => callback(error));
  }

  /** Let the process exit while this stream is open (like net.Socket#unref). */
  unref(): this {
    this.#handle?.unref();
    return this;
  }

  ref(): this {
    this.#handle?.ref();
    return this;
  }
}

export interface VsockAddresses {
  localCid: number;
  localPort: number;
  remoteCid: number;
  remotePort: number;
}

/**
 * A connected AF_VSOCK stream. Created by vsockConnect() and VsockServer.
 * The addresses are the kernel's: remoteCid/remotePort from accept4() or
 * getpeername(), localCid/localPort from getsockname() — which reports
 * VMADDR_CID_ANY as the localCid of an auto-bound client socket (localCid()
 * gives this machine's CID).
 */
export class VsockSocket extends NativeStream {
  readonly remoteCid: number;
  readonly remotePort: number;
  readonly localCid: number;
  readonly localPort: number;

  /** Takes ownership of fd on success. Not meant to be called directly. */
  constructor(fd: number, addresses: VsockAddresses, Handle: StreamHandleClass, options?: AdoptOptions) {
    super(fd, Handle, options);
    this.remoteCid = addresses.remoteCid;
    this.remotePort = addresses.remotePort;
    this.localCid = addresses.localCid;
    this.localPort = addresses.localPort;
  }
}
