/**
 * AF_VSOCK listener. vsock carries no authentication, so the peer's CID is
 * checked against an allow-list (by default only the host, CID 2) before a
 * single byte is read. Every host process is CID 2: what a peer may do is
 * decided per request by trust/gate.ts (its source port, or a signature).
 */
import type { VsockServer, VsockSocket } from '../native/index.js';
import type { Logger } from '../log.js';
import { encode } from '@vmsubst/common/protocol/codec';
import type { ConnectionHandler, Transport } from './transport.js';

export interface VsockListen {
  (port: number): VsockServer;
}

export class VsockTransport implements Transport {
  readonly name: string;
  #server: VsockServer | undefined;
  constructor(
    private readonly port: number,
    private readonly allowCids: readonly number[],
    private readonly listen: VsockListen,
    private readonly log: Logger,
  ) {
    this.name = `vsock:${port}`;
  }

  async start(onConnection: ConnectionHandler): Promise<void> {
    const server = this.listen(this.port);
    server.on('connection', (sock: VsockSocket) => {
      const who = `vsock ${sock.remoteCid}:${sock.remotePort}`;
      if (!this.allowCids.includes(sock.remoteCid)) {
        this.log.warn('refused connection from a CID not in the allow-list', { peer: who, allow: this.allowCids });
        sock.end(
          encode({
            error: { class: 'GenericError', desc: `CID ${sock.remoteCid} is not allowed to talk to this agent` },
          }),
        );
        return;
      }
      onConnection(sock, {
        transport: 'vsock',
        description: who,
        greets: true,
        cid: sock.remoteCid,
        port: sock.remotePort,
      });
    });
    server.on('error', (err: Error) => this.log.error('vsock listener failed', { error: err.message }));
    this.#server = server;
  }

  async stop(): Promise<void> {
    this.#server?.close();
    this.#server = undefined;
  }
}
