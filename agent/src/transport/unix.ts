/** A unix-socket listener: for local tools and for tests that run the real agent without a VM. */
import { createServer, type Server } from 'node:net';
import { chmod, unlink } from 'node:fs/promises';
import type { ConnectionHandler, Transport } from './transport.js';

export class UnixTransport implements Transport {
  readonly name: string;
  #server: Server | undefined;
  constructor(private readonly path: string) {
    this.name = `unix:${path}`;
  }

  async start(onConnection: ConnectionHandler): Promise<void> {
    await unlink(this.path).catch(() => undefined);
    const server = createServer((sock) =>
      onConnection(sock, { transport: 'unix', description: `unix ${this.path}`, greets: true }),
    );
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => resolve());
    });
    await chmod(this.path, 0o600);
    this.#server = server;
  }

  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await unlink(this.path).catch(() => undefined);
  }
}
