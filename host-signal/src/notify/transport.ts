/**
 * Opening a byte stream to the guest agent:
 *
 *   serial:PATH     the host end of a virtio-serial port: the unix socket of the
 *                   QEMU chardev behind `-device virtserialport,name=org.vmsubst.0`
 *   unix:PATH       an agent listening on a unix socket (tests, containers)
 *   vsock:CID:PORT  AF_VSOCK, through the host's native addon (loaded at the
 *                   first vsock connection, so the rest of the CLI works
 *                   without it being built)
 *   hvsock:PATH:PORT hybrid vsock: the unix socket of a VMM's vsock muxer
 *                   (Firecracker `uds_path`, Cloud Hypervisor `--vsock socket=`,
 *                   vhost-device-vsock `uds-path`). The host sends
 *                   `CONNECT <port>\n`, the muxer answers `OK <number>\n` and
 *                   from then on the stream is the guest's vsock port. The
 *                   number differs between implementations (the host-side port
 *                   in Firecracker and Cloud Hypervisor, the guest port in
 *                   vhost-device-vsock), so it is only checked to be a number.
 *                   A muxer with no guest listener on that port closes the
 *                   connection without a reply.
 */
import { createConnection, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TimeoutError, TransportError, UsageError } from '../errors.js';
import { vsockConnect } from '../native/index.js';

export type AgentTarget =
  | { kind: 'serial'; path: string }
  | { kind: 'unix'; path: string }
  | { kind: 'vsock'; cid: number; port: number }
  | { kind: 'hvsock'; path: string; port: number };

export interface TransportOptions {
  /** Connect timeout (for hvsock: connect and the CONNECT/OK handshake); default 10 s. */
  timeoutMs?: number;
}

/** The longest reply line a muxer may send to CONNECT ("OK 4294967295\n" is 14 bytes). */
const MAX_HANDSHAKE_LINE = 64;

const U32_MAX = 0xffffffff;

export function parseAgentTarget(spec: string): AgentTarget {
  const colon = spec.indexOf(':');
  const scheme = colon === -1 ? '' : spec.slice(0, colon);
  const rest = colon === -1 ? '' : spec.slice(colon + 1);
  const syntax = 'the agent address is serial:PATH, unix:PATH, vsock:CID:PORT or hvsock:PATH:PORT';
  switch (scheme) {
    case 'serial':
    case 'unix':
      if (rest === '') throw new UsageError(`'${spec}': missing socket path`, syntax);
      return { kind: scheme, path: rest };
    case 'vsock': {
      const m = /^(\d+):(\d+)$/.exec(rest);
      const cid = m ? Number(m[1]) : NaN;
      const port = m ? Number(m[2]) : NaN;
      if (!m || cid > U32_MAX || port > U32_MAX)
        throw new UsageError(`'${spec}': expected vsock:CID:PORT with decimal numbers`, syntax);
      return { kind: 'vsock', cid, port };
    }
    case 'hvsock': {
      // The path may itself hold colons: the port is after the last one.
      const m = /^(.+):(\d+)$/.exec(rest);
      const port = m ? Number(m[2]) : NaN;
      if (!m || port > U32_MAX)
        throw new UsageError(
          `'${spec}': expected hvsock:PATH:PORT (the VMM's vsock unix socket and the guest's vsock port)`,
          syntax,
        );
      return { kind: 'hvsock', path: m[1]!, port };
    }
    default:
      throw new UsageError(`'${spec}': unknown agent address`, syntax);
  }
}

export function formatAgentTarget(t: AgentTarget): string {
  switch (t.kind) {
    case 'vsock':
      return `vsock:${t.cid}:${t.port}`;
    case 'hvsock':
      return `hvsock:${t.path}:${t.port}`;
    default:
      return `${t.kind}:${t.path}`;
  }
}

export async function openAgentStream(target: AgentTarget, options: TransportOptions = {}): Promise<Duplex> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  if (target.kind === 'vsock') return openVsock(target.cid, target.port, timeoutMs);
  const deadline = Date.now() + timeoutMs;
  const socket = await connectUnix(target, timeoutMs);
  if (target.kind !== 'hvsock') return socket;
  try {
    await hybridHandshake(socket, target, Math.max(1, deadline - Date.now()));
  } catch (e) {
    socket.destroy();
    throw e;
  }
  return socket;
}

function connectUnix(target: Exclude<AgentTarget, { kind: 'vsock' }>, timeoutMs: number): Promise<Socket> {
  const socket = createConnection({ path: target.path });
  return new Promise<Socket>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new TransportError(`no connection to ${formatAgentTarget(target)} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      reject(socketError(target, err));
    });
  });
}

/**
 * The hybrid vsock handshake: `CONNECT <port>\n`, then one line `OK <n>\n`.
 * Bytes after that line already belong to the guest's stream (an agent greets
 * at once), so they are put back in front of it.
 */
function hybridHandshake(
  socket: Socket,
  target: Extract<AgentTarget, { kind: 'hvsock' }>,
  timeoutMs: number,
): Promise<void> {
  const where = formatAgentTarget(target);
  return new Promise<void>((resolve, reject) => {
    let got = Buffer.alloc(0);
    const done = (err?: Error): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(
      () =>
        done(
          new TimeoutError(
            `${where}: no answer to 'CONNECT ${target.port}' within ${timeoutMs} ms`,
            `is ${target.path} the vsock socket of the VM's hypervisor (Firecracker uds_path, Cloud Hypervisor --vsock socket=)?`,
          ),
        ),
      timeoutMs,
    );
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      const nl = got.indexOf(0x0a);
      if (nl === -1) {
        if (got.length > MAX_HANDSHAKE_LINE)
          done(refused(target, `an over-long reply to CONNECT (${got.length} bytes without a newline)`));
        return;
      }
      const line = got.subarray(0, nl).toString('latin1').replace(/\r$/, '');
      const rest = got.subarray(nl + 1);
      if (!/^OK \d+$/.test(line)) {
        done(refused(target, `the reply '${printable(line)}' to CONNECT (expected 'OK <port>')`));
        return;
      }
      socket.pause();
      if (rest.length > 0) socket.unshift(rest);
      done();
    };
    const onClose = (): void =>
      done(
        new TransportError(
          `${where}: the hypervisor closed the connection instead of answering 'CONNECT ${target.port}'${got.length ? ` (after '${printable(got.toString('latin1'))}')` : ''}`,
          `nothing listens on vsock port ${target.port} in the guest: is vmsubst-agent running there with --vsock-port ${target.port}?`,
        ),
      );
    const onError = (err: Error): void => done(new TransportError(`${where}: ${err.message}`));
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.once('error', onError);
    socket.write(`CONNECT ${target.port}\n`);
  });
}

function refused(target: Extract<AgentTarget, { kind: 'hvsock' }>, what: string): TransportError {
  return new TransportError(
    `${formatAgentTarget(target)}: ${what}`,
    `${target.path} does not speak the hybrid vsock protocol (CONNECT <port> / OK <port>): give the VMM's vsock socket, or another kind of address`,
  );
}

function printable(s: string): string {
  const t = s.replace(/[^\x20-\x7e]/g, '.');
  return t.length > 40 ? `${t.slice(0, 40)}…` : t;
}

async function openVsock(cid: number, port: number, timeoutMs: number): Promise<Duplex> {
  try {
    // As root, from a port below 1024: the agent knows then that the hypervisor's side (root on
    // the host), not any host process, is speaking, and accepts unsigned changes.
    const privileged = process.getuid?.() === 0;
    return await vsockConnect(cid, port, { timeoutMs, ...(privileged ? { localPort: 'reserved' as const } : {}) });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === undefined) {
      throw new TransportError(
        `vsock is unavailable: ${err.message}`,
        "vsock needs the host's native addon (`make addon`, see the README); or reach the agent over serial:PATH",
        { cause: e },
      );
    }
    const hint =
      err.code === 'ENODEV' || err.code === 'EAFNOSUPPORT'
        ? 'this host has no vsock transport: load vhost_vsock (/dev/vhost-vsock) or use serial:PATH'
        : `is vmsubst-agent listening on vsock port ${port} in the guest with CID ${cid}?`;
    throw new TransportError(`cannot connect to vsock:${cid}:${port}: ${err.message}`, hint, { cause: e });
  }
}

function socketError(target: Exclude<AgentTarget, { kind: 'vsock' }>, err: NodeJS.ErrnoException): TransportError {
  const where = formatAgentTarget(target);
  if (err.code === 'ENOENT') {
    return new TransportError(
      `no socket at ${target.path}`,
      target.kind === 'serial'
        ? "give the path of the chardev socket behind the VM's virtserialport: -chardev socket,id=vmsubst0,path=PATH,server=on,wait=off -device virtserialport,chardev=vmsubst0,name=org.vmsubst.0"
        : target.kind === 'hvsock'
          ? "give the VM's hybrid vsock socket (Firecracker: vsock.uds_path; Cloud Hypervisor: --vsock socket=PATH)"
          : 'is vmsubst-agent listening on that unix socket?',
    );
  }
  if (err.code === 'ECONNREFUSED')
    return new TransportError(`nothing listens on ${where}`, 'is the VM (or the agent) running?');
  if (err.code === 'EACCES')
    return new TransportError(
      `permission denied connecting to ${where}`,
      'run vmsubst as the user that owns the socket, or as root',
    );
  return new TransportError(`cannot connect to ${where}: ${err.message}`);
}
