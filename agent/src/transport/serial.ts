/**
 * virtio-serial port (/dev/virtio-ports/NAME), the channel qemu-guest-agent
 * uses too. The port reads end-of-file while no host side is connected, so the
 * transport reopens it after a short pause; a missing port is waited for.
 */
import { openSync, constants } from 'node:fs';
import type { Duplex } from 'node:stream';
import type { Logger } from '../log.js';
import type { ConnectionHandler, Transport } from './transport.js';

export type AdoptStream = (fd: number) => Duplex;

export class SerialTransport implements Transport {
  readonly name: string;
  #stopped = false;
  #stream: Duplex | undefined;
  #timer: NodeJS.Timeout | undefined;
  #missingLogged = false;

  constructor(
    private readonly path: string,
    private readonly adopt: AdoptStream,
    private readonly log: Logger,
    private readonly reopenMs = 250,
  ) {
    this.name = `serial:${path}`;
  }

  async start(onConnection: ConnectionHandler): Promise<void> {
    this.#stopped = false;
    this.#open(onConnection);
  }

  #open(onConnection: ConnectionHandler): void {
    if (this.#stopped) return;
    let fd: number;
    try {
      fd = openSync(this.path, constants.O_RDWR | constants.O_NONBLOCK | constants.O_NOCTTY);
    } catch (e) {
      if (!this.#missingLogged) {
        this.log.warn('serial port not available yet; waiting for it', { path: this.path, error: (e as Error).message });
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
      this.#timer = setTimeout(() => this.#open(onConnection), this.reopenMs);
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
  }
}
