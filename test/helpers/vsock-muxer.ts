/**
 * STAND-IN for a hypervisor's hybrid vsock muxer (Firecracker's `uds_path`,
 * Cloud Hypervisor's `--vsock socket=`). Neither hypervisor runs here (both
 * need KVM, and these machines have none usable), so this small unix-socket
 * server plays the muxer's host side of the protocol: it reads one line
 * `CONNECT <port>\n`, answers `OK <host port>\n` (numbers from 1073741824 up,
 * as Firecracker assigns them) and then splices the connection to whatever
 * stands for the guest's vsock port: the real agent on a unix socket, or the
 * chardev socket of a QEMU guest's virtio-serial port. With no listener on the
 * port it closes the connection without a word, as the real muxers do.
 *
 * `behaviour` makes it misbehave for the refusal tests: answer garbage, or
 * never answer.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export type MuxerBehaviour = 'ok' | 'garbage' | 'silent' | 'close';

export interface Muxer {
  path: string;
  /** CONNECT lines received, in order. */
  readonly connects: string[];
  behaviour: MuxerBehaviour;
  close(): Promise<void>;
}

/** `ports` maps a guest vsock port to the unix socket that stands for its listener. */
export async function startMuxer(
  path: string,
  ports: Map<number, string>,
  behaviour: MuxerBehaviour = 'ok',
): Promise<Muxer> {
  const connects: string[] = [];
  const sockets = new Set<Socket>();
  let nextHostPort = 1 << 30;
  const muxer: Muxer = { path, connects, behaviour, close: () => close(server, sockets) };
  const server = createServer((sock) => {
    sockets.add(sock);
    sock.once('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    let got = '';
    const onData = (chunk: Buffer): void => {
      got += chunk.toString('latin1');
      const nl = got.indexOf('\n');
      if (nl === -1) return;
      sock.off('data', onData);
      sock.pause();
      const line = got.slice(0, nl);
      connects.push(line);
      const m = /^CONNECT (\d+)$/.exec(line);
      const target = m ? ports.get(Number(m[1])) : undefined;
      switch (muxer.behaviour) {
        case 'garbage':
          sock.end('HELLO THERE\n');
          return;
        case 'silent':
          return;
        case 'close':
          sock.destroy();
          return;
      }
      if (!target) {
        sock.destroy();
        return;
      }
      const guest = createConnection({ path: target });
      sockets.add(guest);
      guest.once('close', () => sockets.delete(guest));
      guest.once('connect', () => {
        sock.write(`OK ${nextHostPort++}\n`);
        const rest = got.slice(nl + 1);
        if (rest) guest.write(Buffer.from(rest, 'latin1'));
        sock.pipe(guest);
        guest.pipe(sock);
        sock.resume();
      });
      guest.on('error', () => sock.destroy());
      guest.once('close', () => sock.destroy());
      sock.once('close', () => guest.destroy());
    };
    sock.on('data', onData);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  return muxer;
}

function close(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  return new Promise((r) => server.close(() => r()));
}
