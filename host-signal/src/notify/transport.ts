/**
 * Opening a byte stream to the guest agent:
 *
 *   serial:PATH     the host end of a virtio-serial port: the unix socket of the
 *                   QEMU chardev behind `-device virtserialport,name=org.vmsubst.0`
 *   unix:PATH       an agent listening on a unix socket (tests, containers)
 *   vsock:CID:PORT  AF_VSOCK, through the agent's native addon (loaded only here,
 *                   so the rest of the CLI works without it being built)
 */
import { createConnection } from 'node:net';
import type { Duplex } from 'node:stream';
import { TransportError, UsageError } from '../errors.js';

export type AgentTarget =
  | { kind: 'serial'; path: string }
  | { kind: 'unix'; path: string }
  | { kind: 'vsock'; cid: number; port: number };

export interface TransportOptions {
  /** Connect timeout; default 10 s. */
  timeoutMs?: number;
}

/** The shape of agent/src/native's facade that this module uses. */
interface VsockModule {
  vsockConnect(cid: number, port: number, opts?: { timeoutMs?: number }): Promise<Duplex>;
}

const NATIVE_MODULE = '../../../agent/src/native/index.js';
const U32_MAX = 0xffffffff;

export function parseAgentTarget(spec: string): AgentTarget {
  const colon = spec.indexOf(':');
  const scheme = colon === -1 ? '' : spec.slice(0, colon);
  const rest = colon === -1 ? '' : spec.slice(colon + 1);
  const syntax = 'the agent address is serial:PATH, unix:PATH or vsock:CID:PORT';
  switch (scheme) {
    case 'serial':
    case 'unix':
      if (rest === '') throw new UsageError(`'${spec}': missing socket path`, syntax);
      return { kind: scheme, path: rest };
    case 'vsock': {
      const m = /^(\d+):(\d+)$/.exec(rest);
      const cid = m ? Number(m[1]) : NaN;
      const port = m ? Number(m[2]) : NaN;
      if (!m || cid > U32_MAX || port > U32_MAX) throw new UsageError(`'${spec}': expected vsock:CID:PORT with decimal numbers`, syntax);
      return { kind: 'vsock', cid, port };
    }
    default:
      throw new UsageError(`'${spec}': unknown agent address`, syntax);
  }
}

export function formatAgentTarget(t: AgentTarget): string {
  return t.kind === 'vsock' ? `vsock:${t.cid}:${t.port}` : `${t.kind}:${t.path}`;
}

export async function openAgentStream(target: AgentTarget, options: TransportOptions = {}): Promise<Duplex> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  if (target.kind === 'vsock') return openVsock(target.cid, target.port, timeoutMs);
  const socket = createConnection({ path: target.path });
  return new Promise<Duplex>((resolve, reject) => {
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

async function openVsock(cid: number, port: number, timeoutMs: number): Promise<Duplex> {
  let mod: VsockModule;
  try {
    mod = (await import(new URL(NATIVE_MODULE, import.meta.url).href)) as VsockModule;
    if (typeof mod.vsockConnect !== 'function') throw new Error('the native module has no vsockConnect');
  } catch (e) {
    throw new TransportError(
      `vsock is unavailable: ${(e as Error).message}`,
      'vsock needs the native addon (build it with node-gyp, see the README); or reach the agent over serial:PATH',
      { cause: e },
    );
  }
  try {
    return await mod.vsockConnect(cid, port, { timeoutMs });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
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
        ? 'give the path of the chardev socket behind the VM\'s virtserialport: -chardev socket,id=vmsubst0,path=PATH,server=on,wait=off -device virtserialport,chardev=vmsubst0,name=org.vmsubst.0'
        : 'is vmsubst-agent listening on that unix socket?',
    );
  }
  if (err.code === 'ECONNREFUSED') return new TransportError(`nothing listens on ${where}`, 'is the VM (or the agent) running?');
  if (err.code === 'EACCES') return new TransportError(`permission denied connecting to ${where}`, 'run vmsubst as the user that owns the socket, or as root');
  return new TransportError(`cannot connect to ${where}: ${err.message}`);
}
