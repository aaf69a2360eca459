/**
 * A QMP client over a unix socket: greeting, capability negotiation, then
 * commands matched to replies by id. Asynchronous events are emitted as
 * 'event' and never confused with replies.
 *
 * QEMU serves one client per monitor socket; a second client connects but gets
 * no greeting until the first leaves, hence the greeting timeout's hint.
 */
import { EventEmitter } from 'node:events';
import { createConnection } from 'node:net';
import type { Duplex } from 'node:stream';
import { LineDecoder } from '@vmsubst/common/protocol/codec';
import { QmpError, TargetError, TimeoutError } from '../errors.js';

/** QMP replies can be large (query-qmp-schema is several MiB). */
const MAX_QMP_LINE = 64 << 20;

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpConnectOptions {
  /** For the connect and the greeting; default 10 s. */
  timeoutMs?: number;
  /** Default timeout of each command; default 60 s. */
  commandTimeoutMs?: number;
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

type Message = Record<string, unknown>;

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  readonly #stream: Duplex;
  readonly #decoder = new LineDecoder(MAX_QMP_LINE);
  readonly #pending = new Map<string, Pending>();
  #seq = 0;
  #closed: Error | undefined;
  #greetingWaiter: ((msg: Message) => void) | undefined;
  #greeting: QmpGreeting | undefined;

  private constructor(
    stream: Duplex,
    private readonly commandTimeoutMs: number,
  ) {
    super();
    this.#stream = stream;
    stream.on('data', (chunk: Buffer) => this.#onData(chunk));
    stream.on('error', (err: Error) => this.#fail(new QmpError('Disconnected', err.message)));
    stream.on('close', () => {
      this.#fail(new QmpError('Disconnected', 'the QMP connection closed'));
      this.emit('close');
    });
  }

  /** Connects to a QMP unix socket and negotiates capabilities. */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const socket = createConnection({ path });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(
              new TimeoutError(
                `no connection to QMP socket ${path} within ${timeoutMs} ms`,
                'is QEMU running with -qmp unix:PATH,server=on,wait=off?',
              ),
            ),
          timeoutMs,
        );
        socket.once('connect', () => {
          clearTimeout(timer);
          resolve();
        });
        socket.once('error', (err: NodeJS.ErrnoException) => {
          clearTimeout(timer);
          reject(connectError(path, err));
        });
      });
    } catch (e) {
      socket.destroy();
      throw e;
    }
    return QmpClient.over(socket, options);
  }

  /** Runs the QMP handshake over an already-connected stream. */
  static async over(stream: Duplex, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const client = new QmpClient(stream, options.commandTimeoutMs ?? 60_000);
    try {
      const greeting = await new Promise<Message>((resolve, reject) => {
        const timer = setTimeout(() => {
          client.#greetingWaiter = undefined;
          reject(
            new TimeoutError(
              `no QMP greeting within ${timeoutMs} ms`,
              'QEMU serves one client per QMP socket: is another client (libvirt, another vmsubst) connected? Give this VM a second -qmp socket',
            ),
          );
        }, timeoutMs);
        client.#greetingWaiter = (msg) => {
          clearTimeout(timer);
          resolve(msg);
        };
        stream.once('close', () => {
          clearTimeout(timer);
          reject(new QmpError('Disconnected', 'the QMP connection closed before the greeting'));
        });
      });
      const body = greeting['QMP'];
      if (!isGreeting(body)) throw new QmpError('ProtocolError', 'the peer is not a QMP server (no QMP greeting)');
      client.#greeting = body;
      await client.execute('qmp_capabilities', {});
      return client;
    } catch (e) {
      client.close();
      throw e;
    }
  }

  get greeting(): QmpGreeting {
    return this.#greeting!;
  }

  get closed(): boolean {
    return this.#closed !== undefined;
  }

  /** Runs a command; resolves with its `return` value, rejects with QmpError on an `error` reply. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = this.commandTimeoutMs): Promise<T> {
    if (this.#closed) return Promise.reject(this.#closed);
    const id = `vmsubst-${++this.#seq}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new TimeoutError(`QMP ${command}: no reply within ${timeoutMs} ms`, 'QEMU may be hung; check the VM'));
      }, timeoutMs);
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg: Message = { execute: command, id };
      if (args !== undefined) msg['arguments'] = args;
      this.#stream.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Resolves with the next event called `name` (optionally matching `filter`). */
  waitEvent(name: string, timeoutMs: number, filter: (e: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent): void => {
        if (e.event !== name || !filter(e)) return;
        clearTimeout(timer);
        this.off('event', onEvent);
        resolve(e);
      };
      const timer = setTimeout(() => {
        this.off('event', onEvent);
        reject(new TimeoutError(`no ${name} event within ${timeoutMs} ms`, 'QEMU may be hung; check the VM'));
      }, timeoutMs);
      this.on('event', onEvent);
    });
  }

  close(): void {
    this.#fail(new QmpError('Disconnected', 'client closed'));
    this.#stream.destroy();
  }

  #onData(chunk: Buffer): void {
    for (const frame of this.#decoder.push(chunk)) {
      if (frame.kind !== 'message') continue;
      const msg = frame.value;
      if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) continue;
      this.#onMessage(msg as Message);
    }
  }

  #onMessage(msg: Message): void {
    if ('QMP' in msg) {
      const waiter = this.#greetingWaiter;
      this.#greetingWaiter = undefined;
      waiter?.(msg);
      return;
    }
    if (typeof msg['event'] === 'string') {
      this.emit('event', msg as unknown as QmpEvent);
      return;
    }
    if (!('return' in msg) && !('error' in msg)) return;
    let key = typeof msg['id'] === 'string' ? msg['id'] : undefined;
    // QEMU answers a request it could not parse without an id; blame the only one outstanding.
    if (key === undefined && this.#pending.size === 1) key = [...this.#pending.keys()][0];
    const pending = key === undefined ? undefined : this.#pending.get(key);
    if (!pending || key === undefined) return;
    this.#pending.delete(key);
    clearTimeout(pending.timer);
    if ('error' in msg) {
      const err = msg['error'] as { class?: unknown; desc?: unknown } | null;
      pending.reject(
        new QmpError(String(err?.class ?? 'GenericError'), String(err?.desc ?? 'unknown error'), pending.command),
      );
    } else {
      pending.resolve(msg['return']);
    }
  }

  #fail(err: Error): void {
    if (this.#closed) return;
    this.#closed = err;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(new QmpError('Disconnected', `the QMP connection closed while '${p.command}' was pending`, p.command));
    }
    this.#pending.clear();
  }
}

function isGreeting(v: unknown): v is QmpGreeting {
  if (v === null || typeof v !== 'object') return false;
  const g = v as { version?: { qemu?: unknown }; capabilities?: unknown };
  return typeof g.version?.qemu === 'object' && Array.isArray(g.capabilities);
}

function connectError(path: string, err: NodeJS.ErrnoException): Error {
  switch (err.code) {
    case 'ENOENT':
      return new TargetError(
        `no QMP socket at ${path}`,
        'start QEMU with -qmp unix:PATH,server=on,wait=off and pass that PATH to --qmp',
      );
    case 'ECONNREFUSED':
      return new TargetError(`nothing listens on ${path}`, 'the VM is not running, or its QMP socket path is stale');
    case 'EACCES':
      return new TargetError(
        `permission denied connecting to ${path}`,
        'run vmsubst as the user that owns the VM, or as root',
      );
    default:
      return new TargetError(`cannot connect to QMP socket ${path}: ${err.message}`);
  }
}
