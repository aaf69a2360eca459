/**
 * The host's side of the agent protocol: a client over any byte stream
 * (virtio-serial chardev socket, AF_VSOCK, unix socket).
 *
 * A virtio-serial port has no connect event, so a greeting may be stale or
 * missing; the client therefore starts with `hello` and matches replies by id,
 * skipping any line that is not the answer it waits for.
 */
import type { Duplex } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { LineDecoder, encode, returnValidator, validateReply } from '@vmsubst/common/protocol/codec';
import type { ArgsOf, CommandName, GreetingBody, ReturnOf } from '@vmsubst/common/protocol/schema';
import { AgentError, ProtocolError, TimeoutError } from '../errors.js';

interface Pending {
  command: CommandName;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
  resend?: NodeJS.Timeout;
}

export interface ExecuteOptions {
  /** How long to wait for the reply; default the client's. */
  timeoutMs?: number;
  /**
   * Send the same request line again (same message id, same arguments) when no
   * reply came within this many ms, then after twice as long, and so on (at
   * most every 30 s), until a reply or the timeout. Only for requests that are
   * safe to repeat: hello, ping, and substitute/prepare/commit/abort, which
   * the agent journals by substitution id and answers again from the journal.
   */
  resendMs?: number;
}

/** A resent request is sent again at most this far apart. */
const MAX_RESEND_MS = 30_000;

export class AgentClient {
  readonly #stream: Duplex;
  readonly #decoder = new LineDecoder();
  readonly #pending = new Map<string, Pending>();
  readonly #prefix = randomBytes(4).toString('hex');
  #seq = 0;
  #closed: Error | undefined;
  /** Requests sent again because no reply came in time (see ExecuteOptions.resendMs). */
  resends = 0;
  /** Torn or garbled lines the agent reported without an id (a lossy channel). */
  garbled = 0;

  constructor(
    stream: Duplex,
    private readonly defaultTimeoutMs = 60_000,
  ) {
    this.#stream = stream;
    stream.on('data', (chunk: Buffer) => this.#onData(chunk));
    stream.on('error', (err: Error) => this.#fail(err));
    stream.on('close', () => this.#fail(new ProtocolError('the agent closed the connection')));
    // A transport may hand the stream over paused, with bytes already read put back (hvsock).
    stream.resume();
  }

  /** Handshake; returns the agent's version and capabilities. */
  async hello(timeoutMs = 30_000, resendMs = 1000): Promise<GreetingBody> {
    // A virtio-serial port discards what arrives while the guest side is reopening it,
    // so an unanswered hello is sent again; hello has no effect, repeating it is safe.
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      try {
        return await this.execute('hello', {}, Math.max(1, Math.min(resendMs, left)));
      } catch (e) {
        if (!(e instanceof TimeoutError) || Date.now() >= deadline) {
          throw e instanceof TimeoutError ? new TimeoutError(`no reply to 'hello' within ${timeoutMs} ms`) : e;
        }
      }
    }
  }

  execute<C extends CommandName>(
    command: C,
    args: ArgsOf<C>,
    options: number | ExecuteOptions = {},
  ): Promise<ReturnOf<C>> {
    if (this.#closed) return Promise.reject(this.#closed);
    const { timeoutMs = this.defaultTimeoutMs, resendMs } =
      typeof options === 'number' ? { timeoutMs: options } : options;
    const id = `${this.#prefix}-${++this.#seq}`;
    const line = encode({ execute: command, arguments: args, id });
    return new Promise<ReturnOf<C>>((resolve, reject) => {
      const timer = setTimeout(() => {
        const p = this.#pending.get(id);
        if (p?.resend) clearTimeout(p.resend);
        this.#pending.delete(id);
        reject(new TimeoutError(`no reply to '${command}' within ${timeoutMs} ms`));
      }, timeoutMs);
      const pending: Pending = { command, resolve: resolve as (v: unknown) => void, reject, timer };
      this.#pending.set(id, pending);
      this.#stream.write(line);
      // The answer's validators (the reports of prepare and commit are large) load while the agent works.
      setImmediate(() => {
        validateReply.load();
        returnValidator(command).load();
      });
      if (resendMs !== undefined && resendMs > 0) {
        const again = (delay: number): void => {
          pending.resend = setTimeout(() => {
            if (this.#closed || !this.#pending.has(id)) return;
            this.resends++;
            this.#stream.write(line);
            again(Math.min(delay * 2, MAX_RESEND_MS));
          }, delay);
        };
        again(resendMs);
      }
    });
  }

  close(): void {
    this.#fail(new ProtocolError('client closed'));
    this.#stream.destroy();
  }

  #onData(chunk: Buffer): void {
    for (const frame of this.#decoder.push(chunk)) {
      if (frame.kind !== 'message') continue;
      const msg = frame.value;
      if (!validateReply.is(msg)) continue; // greeting or noise
      if (msg.id === undefined) {
        // An error without an id concerns the connection itself (refused peer), or a line the
        // agent could not read: on a lossy channel (virtio-serial reopened mid-line) that is the
        // torn remainder of one of our requests, which a resend repeats; not fatal.
        if ('error' in msg) {
          if (msg.error.class === 'InvalidMessage') this.garbled++;
          else this.#fail(new AgentError(msg.error.class, msg.error.desc, msg.error.data));
        }
        continue;
      }
      const pending = this.#pending.get(String(msg.id));
      if (!pending) continue;
      this.#pending.delete(String(msg.id));
      clearTimeout(pending.timer);
      if (pending.resend) clearTimeout(pending.resend);
      if ('error' in msg) {
        pending.reject(new AgentError(msg.error.class, msg.error.desc, msg.error.data));
        continue;
      }
      const problems = returnValidator(pending.command).problems(msg.return);
      if (problems.length > 0) {
        pending.reject(new ProtocolError(`malformed reply to '${pending.command}': ${problems.join('; ')}`));
      } else {
        pending.resolve(msg.return);
      }
    }
  }

  #fail(err: Error): void {
    if (this.#closed) return;
    this.#closed = err;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      if (p.resend) clearTimeout(p.resend);
      p.reject(err);
    }
    this.#pending.clear();
  }
}
