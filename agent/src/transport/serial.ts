/**
 * virtio-serial port (/dev/virtio-ports/NAME), the channel qemu-guest-agent
 * uses too. The port reads end-of-file while no host side is connected, so the
 * stream is made anew after a short pause; a missing port is waited for.
 *
 * The port itself stays open the whole time, as qemu-guest-agent keeps it: the
 * guest's virtio-console driver discards what the host sends to a port no
 * guest process holds open, so closing it between two host connections would
 * lose a request. One descriptor holds the port; each stream reads a dup() of
 * it, and destroying a stream closes only the dup.
 *
 * With `notifyAsync` (signal-driven I/O on the held descriptor), the kernel's
 * SIGIO for the host side connecting makes the stream anew at once: a host
 * that connects during the pause is answered without waiting it out.
 */
import { closeSync, openSync, constants } from 'node:fs';
import type { Duplex } from 'node:stream';
import { messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import type { ConnectionHandler, Transport } from './transport.js';

export type AdoptStream = (fd: number) => Duplex;
/** dup(2); injectable for tests. */
export type Dup = (fd: number) => number;
/** Arms SIGIO for a descriptor (F_SETOWN, O_ASYNC); injectable for tests. */
export type NotifyAsync = (fd: number) => void;

export class SerialTransport implements Transport {
  readonly name: string;
  #stopped = false;
  #stream: Duplex | undefined;
  #timer: NodeJS.Timeout | undefined;
  #missingLogged = false;
  /** The descriptor that keeps the port open for the agent's lifetime. */
  #held: number | undefined;
  #onConnection: ConnectionHandler | undefined;
  /** SIGIO: the port became ready or its host side connected; in the pause, make the stream now. */
  readonly #onSignal = (): void => {
    if (this.#stopped || this.#stream !== undefined || this.#timer === undefined || !this.#onConnection) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#open(this.#onConnection);
  };

  constructor(
    private readonly path: string,
    private readonly adopt: AdoptStream,
    private readonly log: Logger,
    private readonly dup: Dup,
    private readonly reopenMs = 250,
    private readonly notifyAsync?: NotifyAsync,
  ) {
    this.name = `serial:${path}`;
  }

  async start(onConnection: ConnectionHandler): Promise<void> {
    this.#stopped = false;
    this.#onConnection = onConnection;
    this.#open(onConnection);
  }

  /** Signal-driven wake-up on the held descriptor, once; without it the pause is waited out. */
  #arm(fd: number): void {
    if (!this.notifyAsync || process.listeners('SIGIO').includes(this.#onSignal)) return;
    // The handler first: SIGIO's default action ends the process. It stays for the process's
    // lifetime, since the descriptor may outlive stop() in a dup a stream still holds.
    process.on('SIGIO', this.#onSignal);
    try {
      this.notifyAsync(fd);
    } catch (e) {
      this.log.warn('no SIGIO for the serial port; a host connecting waits for the next reopen', {
        path: this.path,
        error: messageOf(e),
      });
    }
  }

  #open(onConnection: ConnectionHandler): void {
    if (this.#stopped) return;
    let fd: number;
    try {
      if (this.#held === undefined) {
        this.#held = openSync(this.path, constants.O_RDWR | constants.O_NONBLOCK | constants.O_NOCTTY);
        this.#arm(this.#held);
      }
      fd = this.dup(this.#held);
    } catch (e) {
      if (!this.#missingLogged) {
        this.log.warn('serial port not available yet; waiting for it', { path: this.path, error: messageOf(e) });
        this.#missingLogged = true;
      }
      this.#timer = setTimeout(() => this.#open(onConnection), 1000);
      return;
    }
    this.#missingLogged = false;
    const stream = this.adopt(fd);
    this.#stream = stream;
    let reopened = false;
    const reopen = (): void => {
      if (reopened) return;
      reopened = true;
      this.#stream = undefined;
      stream.destroy();
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#open(onConnection);
      }, this.reopenMs);
    };
    stream.on('end', reopen);
    stream.on('close', reopen);
    stream.on('error', reopen);
    onConnection(stream, { transport: 'serial', description: `serial ${this.path}`, greets: false });
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#stream?.destroy();
    if (this.#held !== undefined) closeSync(this.#held);
    this.#held = undefined;
  }
}
