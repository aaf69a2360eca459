/** Channels the agent listens on. Each hands accepted byte streams to the agent. */
import type { Duplex } from 'node:stream';

export interface Peer {
  transport: 'vsock' | 'serial' | 'unix';
  /** Human-readable peer, for logs: "vsock 2:1024", "serial /dev/virtio-ports/…". */
  description: string;
  /** Stream transports greet on connect; virtio-serial has no connect event. */
  greets: boolean;
  /** vsock: the peer's CID and source port (a port below 1024 takes privilege to bind). */
  cid?: number;
  port?: number;
}

export type ConnectionHandler = (stream: Duplex, peer: Peer) => void;

export interface Transport {
  readonly name: string;
  start(onConnection: ConnectionHandler): Promise<void>;
  stop(): Promise<void>;
}
