/**
 * One conversation with the host over one stream: frames lines, validates
 * every request against the protocol schema, runs commands one at a time and
 * writes exactly one reply per request.
 */
import type { Duplex } from 'node:stream';
import { argsValidator, encode, isCommandName, LineDecoder, validateRequest } from '@vmsubst/common/protocol/codec';
import {
  type ArgsOf,
  type CommandName,
  type ErrorClass,
  type GreetingBody,
  type Request,
} from '@vmsubst/common/protocol/schema';
import { CommandError, messageOf } from './errors.js';
import type { Logger } from './log.js';
import type { Peer } from './transport/transport.js';

/** Requests read ahead of the one running; beyond this the stream is paused. */
export const MAX_QUEUED = 64;
/**
 * Bytes of requests read ahead (their lines; the parsed values cost a few times more): beyond this
 * the stream is paused too, so 64 requests of 1 MiB each cannot pile up 64 MiB per connection.
 */
export const MAX_QUEUED_BYTES = 4 << 20;

/** Runs a command whose arguments the session has validated against the schema. */
export type Dispatch = <C extends CommandName>(name: C, args: ArgsOf<C>) => Promise<unknown>;

export interface SessionHandlers {
  dispatch: Dispatch;
  /** Why this peer may not send the command at all (trust/gate.ts), or undefined; asked before its arguments are read. */
  whyNot(name: string): string | undefined;
}

export class Session {
  readonly #decoder = new LineDecoder();
  #queue: Promise<void> = Promise.resolve();
  #pending = 0;
  #queuedBytes = 0;
  #paused = false;

  constructor(
    private readonly stream: Duplex,
    private readonly peer: Peer,
    greeting: GreetingBody,
    private readonly handlers: SessionHandlers,
    private readonly log: Logger,
    idleMs = 0,
  ) {
    stream.on('data', (chunk: Buffer) => this.#onData(chunk));
    if (idleMs > 0 && peer.greets) this.#watchIdle(idleMs);
    stream.on('error', (err: Error) => log.debug('stream error', { peer: peer.description, error: err.message }));
    if (peer.greets) this.#send({ vmsubst: greeting });
  }

  #onData(chunk: Buffer): void {
    for (const frame of this.#decoder.push(chunk)) {
      // Every reply, errors included, goes through the queue: replies keep the order of requests.
      if (frame.kind === 'invalid') {
        const reason = frame.reason;
        this.#enqueue(async () => this.#sendError('InvalidMessage', reason), frame.bytes);
        continue;
      }
      const problems = validateRequest.problems(frame.value);
      if (problems.length > 0) {
        const id = idOf(frame.value);
        this.#enqueue(
          async () => this.#sendError('InvalidMessage', `not a valid request: ${problems.join('; ')}`, id),
          frame.bytes,
        );
        continue;
      }
      const req = frame.value as Request;
      this.#enqueue(() => this.#run(req), frame.bytes);
    }
  }

  /** Closes a stream connection that neither sends nor waits for a reply for idleMs. */
  #watchIdle(idleMs: number): void {
    let last = Date.now();
    this.stream.on('data', () => (last = Date.now()));
    const timer = setInterval(
      () => {
        if (this.#pending > 0)
          last = Date.now(); // a long substitution is not idleness
        else if (Date.now() - last >= idleMs) {
          this.log.info('closing an idle connection', { peer: this.peer.description, idleSec: idleMs / 1000 });
          this.stream.destroy();
        }
      },
      Math.min(idleMs, 1000),
    );
    timer.unref();
    this.stream.once('close', () => clearInterval(timer));
  }

  /** Requests and bytes read but not yet answered. */
  get queued(): { requests: number; bytes: number; paused: boolean } {
    return { requests: this.#pending, bytes: this.#queuedBytes, paused: this.#paused };
  }

  /** Queues work; a peer that sends faster than we answer is paused (bounded memory: requests and bytes). */
  #enqueue(work: () => Promise<void>, bytes: number): void {
    this.#pending++;
    this.#queuedBytes += bytes;
    if (!this.#paused && (this.#pending >= MAX_QUEUED || this.#queuedBytes >= MAX_QUEUED_BYTES)) {
      this.#paused = true;
      this.stream.pause();
    }
    this.#queue = this.#queue.then(work).finally(() => {
      this.#pending--;
      this.#queuedBytes -= bytes;
      if (this.#paused && this.#pending <= MAX_QUEUED / 2 && this.#queuedBytes <= MAX_QUEUED_BYTES / 2) {
        this.#paused = false;
        this.stream.resume();
      }
    });
  }

  async #run(req: Request): Promise<void> {
    const { execute: name, id } = req;
    if (!isCommandName(name)) {
      this.#sendError('CommandNotFound', `the command '${name}' does not exist`, id);
      return;
    }
    const refused = this.handlers.whyNot(name);
    if (refused !== undefined) {
      this.log.warn('refused an unauthorized request', { command: name, peer: this.peer.description });
      this.#sendError('Unauthorized', refused, id);
      return;
    }
    await this.#runCommand(name, req.arguments ?? {}, id);
  }

  async #runCommand<C extends CommandName>(name: C, args: unknown, id: string | number | undefined): Promise<void> {
    const validator = argsValidator(name);
    if (!validator.is(args)) {
      this.#sendError('InvalidArguments', `${name}: ${validator.problems(args).join('; ')}`, id);
      return;
    }
    try {
      const started = Date.now();
      const ret = await this.handlers.dispatch(name, args);
      // The answer first: the log line (a write to journald) is not on the host's path.
      this.#send(id === undefined ? { return: ret } : { return: ret, id });
      if (name !== 'hello' && name !== 'ping') {
        this.log.info(`${name} done`, { peer: this.peer.description, ms: Date.now() - started });
      }
    } catch (e) {
      if (e instanceof CommandError) {
        this.#sendError(e.errorClass, e.message, id, e.data);
        this.log.warn(`${name} failed`, {
          class: e.errorClass,
          code: e.code,
          desc: e.message,
          ...(e.hint !== undefined ? { hint: e.hint } : {}),
        });
      } else {
        this.#sendError('GenericError', messageOf(e), id);
        this.log.error(`${name} failed unexpectedly`, {
          error: e instanceof Error ? (e.stack ?? e.message) : String(e),
        });
      }
    }
  }

  #sendError(cls: ErrorClass, desc: string, id?: string | number, data?: unknown): void {
    const error = data === undefined ? { class: cls, desc } : { class: cls, desc, data };
    this.#send(id === undefined ? { error } : { error, id });
  }

  #send(msg: unknown): void {
    if (this.stream.destroyed || !this.stream.writable) return;
    this.stream.write(encode(msg));
  }
}

function idOf(value: unknown): string | number | undefined {
  if (value && typeof value === 'object' && 'id' in value) {
    const id = (value as { id: unknown }).id;
    if ((typeof id === 'string' && id.length <= 128) || Number.isInteger(id)) return id as string | number;
  }
  return undefined;
}
