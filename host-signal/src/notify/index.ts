/**
 * Telling the guest agent that blocks were substituted: connect, `hello`,
 * then `substitute` with the bundle's ranges and new hashes (or the two
 * phases, `prepare` before the write and `commit` after). The agent verifies
 * the blocks are visible, invalidates its caches and reports.
 */
import type { Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import type {
  AbortReport,
  ArgsOf,
  CommandName,
  DiskRef,
  Envelope,
  GreetingBody,
  PhaseArgs,
  Policies,
  PrepareArgs,
  PrepareReport,
  ReturnOf,
  SubstituteArgs,
  SubstituteReport,
} from '@vmsubst/common/protocol/schema';
import { olderAgentArgs, substituteArgs } from '../bundle/index.js';
import type { KeyObject } from 'node:crypto';
import type { Customization, FeatureName } from '@vmsubst/common/protocol/schema';
import { MAX_REPORT_PAGE_BYTES } from '@vmsubst/common/protocol/schema';
import { signArgs, type SignedCommand } from '@vmsubst/common/protocol/signature';
import type { Manifest } from '@vmsubst/common/bundle/schema';
import { AgentError, ProtocolError, TimeoutError, UsageError } from '../errors.js';
import { LineDecoder, validateReply } from '@vmsubst/common/protocol/codec';
import { AgentClient } from './client.js';
import { formatAgentTarget, openAgentStream, parseAgentTarget, type AgentTarget } from './transport.js';

export { AgentClient } from './client.js';
export {
  formatAgentTarget,
  openAgentStream,
  parseAgentTarget,
  type AgentTarget,
  type TransportOptions,
} from './transport.js';

export interface ConnectOptions {
  /** Connect timeout; default 10 s. */
  connectTimeoutMs?: number;
  /** For the hello exchange; default 10 s. */
  helloTimeoutMs?: number;
  /** For each command (verification reads the blocks); default 120 s. */
  timeoutMs?: number;
  /** Opens the stream; default openAgentStream. */
  connect?: (target: AgentTarget) => Promise<Duplex>;
  /**
   * Resend an unanswered substitute/prepare/commit/abort after this many ms
   * (then twice as long, …), same substitution id: the agent answers a repeat
   * from its journal. Default 2000 ms on virtio-serial, which can drop a
   * request while the guest reopens the port; off on the other channels,
   * which are reliable streams. 0 turns it off.
   */
  resendMs?: number;
  /** Sign every state-changing request with a fresh envelope (makeSigner). */
  signer?: Signer;
}

/**
 * Signs requests for one VM: each substitute, prepare, commit and abort gets its own envelope
 * (a fresh nonce, a validity window, the VM's identity), so a resend or a retry is signed anew.
 */
export interface Signer {
  key: KeyObject;
  target: Envelope['target'];
  /** Seconds each envelope is valid; default an hour. */
  lifetimeSec?: number;
}

/** A signer for the VM with this disk (its serial) and, when known, SMBIOS UUID (QMP query-uuid). */
export function makeSigner(key: KeyObject, disk: DiskRef, vmUuid?: string): Signer {
  const target: Envelope['target'] = {
    ...(vmUuid !== undefined ? { 'vm-uuid': vmUuid } : {}),
    ...(disk.serial !== undefined ? { 'disk-serial': disk.serial } : {}),
  };
  if (Object.keys(target).length === 0) {
    throw new UsageError(
      'a signed request names the VM it is for, and this one has no identity to name',
      'give --disk-serial SERIAL (the virtio disk serial), or --qmp SOCK of a VM started with -uuid',
    );
  }
  return { key, target };
}

/** Default resend interval on a channel that can lose a request (virtio-serial). */
export const SERIAL_RESEND_MS = 2000;

export interface NotifyOptions extends ConnectOptions {
  /** Ask for the plan only: the agent verifies nothing and changes nothing. */
  dryRun?: boolean;
  /** Customization for the guest to apply after the blocks (hostname, files, sysctl). */
  customization?: Customization;
  /** Policies for processes mapping changed files, overriding the agent's configuration. */
  policies?: Policies;
  /** Proceed where the agent would refuse: metadata under a read-write mount, dirty pages, a script being executed. */
  force?: boolean;
}

export interface NotifyResult {
  target: string;
  agent: GreetingBody;
  report: SubstituteReport;
  elapsedMs: number;
  /** Connections opened (1 unless the channel failed and the notification was retried). */
  attempts: number;
  /** Requests sent again on a connection because no reply came in time. */
  resends: number;
}

export interface RetryOptions {
  /** Connections to try before giving up (same substitution id each time); default 3. */
  attempts?: number;
  /** Pause before the first retry, doubled for each later one; default 1000 ms. */
  retryDelayMs?: number;
  /** Told of each failed attempt that will be retried. */
  onRetry?: (attempt: number, err: Error) => void;
}

/** The agent's arguments for this bundle, for substitute and prepare alike (signed when sent: Signer). */
export function notificationArgs(
  manifest: Manifest,
  disk: DiskRef,
  options: Omit<NotifyOptions, keyof ConnectOptions> = {},
): SubstituteArgs {
  const args = substituteArgs(manifest, disk, {
    ...(options.dryRun ? { dryRun: true } : {}),
    ...(options.customization ? { customization: options.customization } : {}),
    ...(options.policies ? { policies: options.policies } : {}),
  });
  return options.force ? { ...args, force: true } : args;
}

/**
 * One open conversation with a guest agent: connected and greeted. The
 * two-phase substitution runs over one connection: prepare (the agent plans
 * and pins while the disk holds the old blocks), the host writes, then
 * commit, or abort if the write failed.
 */
export class AgentConnection {
  private constructor(
    readonly target: string,
    readonly agent: GreetingBody,
    readonly client: AgentClient,
    readonly refusal: () => { class: string; desc: string } | undefined,
    readonly resendMs: number,
    readonly signer: Signer | undefined,
  ) {}

  /** Requests resent on this connection because no reply came in time. */
  get resends(): number {
    return this.client.resends;
  }

  static async open(target: string | AgentTarget, options: ConnectOptions = {}): Promise<AgentConnection> {
    const where = typeof target === 'string' ? parseAgentTarget(target) : target;
    const connect =
      options.connect ??
      ((t: AgentTarget) =>
        openAgentStream(t, options.connectTimeoutMs !== undefined ? { timeoutMs: options.connectTimeoutMs } : {}));
    const stream = await connect(where);
    const client = new AgentClient(stream, options.timeoutMs ?? 120_000);
    const refusal = watchRefusal(stream);
    try {
      const agent = await AgentConnection.#explain(refusal, () => client.hello(options.helloTimeoutMs ?? 10_000));
      const resendMs = options.resendMs ?? (where.kind === 'serial' ? SERIAL_RESEND_MS : 0);
      return new AgentConnection(formatAgentTarget(where), agent, client, refusal, resendMs, options.signer);
    } catch (e) {
      client.close();
      throw e;
    }
  }

  /**
   * Whether the agent announced this capability: a command by its name (`prepare`, `report`,
   * `stale`), or a feature (`elf-code`; protocol/schema.ts `Features`).
   */
  supports(capability: CommandName | FeatureName): boolean {
    return this.agent.capabilities.includes(capability);
  }

  /** The arguments as this agent understands them: an older agent (no "elf-code") gets the older class names. */
  #forAgent<T extends SubstituteArgs | PrepareArgs>(args: T): T {
    return this.supports('elf-code') ? args : olderAgentArgs(args);
  }

  async substitute(args: SubstituteArgs): Promise<SubstituteReport> {
    const report = await this.#run('substitute', this.#sign('substitute', this.#forAgent(args)));
    if (report.id !== args.id)
      throw new ProtocolError(`the agent reported on substitution ${report.id}, not ${args.id}`);
    return report;
  }

  async prepare(args: PrepareArgs): Promise<PrepareReport> {
    if (!this.supports('prepare')) {
      throw new AgentError(
        'CommandNotFound',
        `the agent at ${this.target} (version ${this.agent.version}) has no two-phase substitution`,
      );
    }
    const report = await this.#run('prepare', this.#sign('prepare', this.#forAgent(args)));
    if (report.id !== args.id) throw new ProtocolError(`the agent prepared substitution ${report.id}, not ${args.id}`);
    return report;
  }

  /** `token` is prepare's: it binds the commit to that prepare (a signed commit needs none). */
  commit(id: string, token?: string): Promise<SubstituteReport> {
    return this.#run('commit', this.#sign('commit', { id, ...(token !== undefined ? { token } : {}) }));
  }

  abort(id: string, token?: string): Promise<AbortReport> {
    return this.#run('abort', this.#sign('abort', { id, ...(token !== undefined ? { token } : {}) }));
  }

  #sign<A extends SubstituteArgs | PrepareArgs | PhaseArgs | ArgsOf<'report'> | ArgsOf<'stale'>>(
    command: SignedCommand,
    args: A,
  ): A {
    if (!this.signer) return args;
    return signArgs(command, args as A & Record<string, unknown>, this.signer.key, {
      target: this.signer.target,
      ...(this.signer.lifetimeSec !== undefined ? { lifetimeSec: this.signer.lifetimeSec } : {}),
    });
  }

  /**
   * The full report of a substitution whose answer was `truncated` (too large for one message):
   * fetched page by page with `report` and parsed.
   */
  async fullReport<T = SubstituteReport>(id: string, pageBytes = MAX_REPORT_PAGE_BYTES): Promise<T> {
    const { json } = await this.fullReportBytes(id, pageBytes);
    return JSON.parse(json.toString('utf8')) as T;
  }

  /**
   * The kept report's JSON exactly as the agent stored it, and how many pages it took. Each page
   * states the report's size: a size that changes between pages (a later step of the same id
   * replaced the report meanwhile) or pages that do not add up to it fail the read.
   */
  async fullReportBytes(id: string, pageBytes = MAX_REPORT_PAGE_BYTES): Promise<{ json: Buffer; pages: number }> {
    if (!this.supports('report')) {
      throw new AgentError(
        'CommandNotFound',
        `the agent at ${this.target} (version ${this.agent.version}) keeps no full reports`,
        undefined,
        'update vmsubst-agent in the guest: an agent that keeps full reports announces the capability "report" in its greeting',
      );
    }
    const parts: Buffer[] = [];
    let total: number | undefined;
    let pages = 0;
    for (let offset = 0; ;) {
      const page = await this.#run('report', this.#sign('report', { id, offset, limit: pageBytes }));
      pages++;
      if (total !== undefined && page.bytes !== total) {
        throw new ProtocolError(
          `the report of ${id} changed while it was read (${total} bytes, then ${page.bytes})`,
          'a later step of the same substitution replaced it: read it again',
        );
      }
      total = page.bytes;
      const data = Buffer.from(page.data, 'base64');
      if (page.offset !== offset || (data.length === 0 && !page.done)) {
        throw new ProtocolError(
          `the agent answered the report page at ${offset} with ${data.length} bytes at ${page.offset}`,
          'the agent is misbehaving; read the report again',
        );
      }
      parts.push(data);
      offset += data.length;
      if (page.done) break;
    }
    const json = Buffer.concat(parts);
    if (json.length !== total)
      throw new ProtocolError(
        `the report of ${id} is ${total} bytes, the pages add up to ${json.length}`,
        'read the report again',
      );
    return { json, pages };
  }

  /** Every process in the guest still running old content (pinned, old inode, mixed). */
  async stale(): Promise<ReturnOf<'stale'>> {
    if (!this.supports('stale'))
      throw new AgentError(
        'CommandNotFound',
        `the agent at ${this.target} (version ${this.agent.version}) cannot list processes running old content (no 'stale' capability)`,
      );
    return this.#run('stale', this.#sign('stale', {}));
  }

  close(): void {
    this.client.close();
  }

  #run<C extends CommandName>(command: C, args: ArgsOf<C>): Promise<ReturnOf<C>> {
    return AgentConnection.#explain(this.refusal, () =>
      this.client.execute(command, args, this.resendMs > 0 ? { resendMs: this.resendMs } : {}),
    );
  }

  /** An agent that refuses a connection says why in an error line without an id, then closes: report that rather than "connection closed". */
  static async #explain<T>(
    refusal: () => { class: string; desc: string } | undefined,
    f: () => Promise<T>,
  ): Promise<T> {
    try {
      return await f();
    } catch (e) {
      const why = refusal();
      if (why && !(e instanceof AgentError)) throw new AgentError(why.class, why.desc);
      throw e;
    }
  }
}

/**
 * Whether a failed exchange may be tried again on a new connection: the
 * channel failed once open (closed, no reply in time) or the agent was busy.
 * An answer from the agent (refusal, mismatch) is final, and so is a channel
 * that cannot be opened at all (no socket, nothing listening): retrying would
 * only delay the error.
 */
export function retryable(e: unknown): boolean {
  if (e instanceof AgentError) return e.errorClass === 'Busy';
  return e instanceof TimeoutError || (e instanceof ProtocolError && /closed the connection/.test(e.message));
}

/**
 * Runs `f` on a fresh connection, retrying on a new one when the channel
 * fails (see retryable). `f` must be safe to repeat: every substitution
 * command is, by its id.
 */
export async function withAgent<T>(
  target: string | AgentTarget,
  options: ConnectOptions & RetryOptions,
  f: (conn: AgentConnection) => Promise<T>,
): Promise<{ value: T; conn: AgentConnection; attempts: number; resends: number }> {
  const attempts = Math.max(1, options.attempts ?? 3);
  let delay = options.retryDelayMs ?? 1000;
  let resends = 0;
  for (let attempt = 1; ; attempt++) {
    let conn: AgentConnection | undefined;
    try {
      conn = await AgentConnection.open(target, options);
      const value = await f(conn);
      return { value, conn, attempts: attempt, resends: resends + conn.resends };
    } catch (e) {
      if (attempt >= attempts || !retryable(e)) throw e;
      options.onRetry?.(attempt, e as Error);
      await new Promise((r) => setTimeout(r, delay));
      delay *= 2;
    } finally {
      if (conn) {
        resends += conn.resends;
        conn.close();
      }
    }
  }
}

/**
 * The command that fetches the whole report of an answer the agent cut to fit one message, for the
 * person reading a `truncated` answer. `signed`: the request that got the answer was signed, so the
 * fetch must be too (over a channel that is not the hypervisor's side).
 */
export function reportFetchCommand(id: string, target: string, signed?: { diskSerial?: string }): string {
  const sign = signed
    ? ` --sign KEY${signed.diskSerial !== undefined ? ` --disk-serial ${signed.diskSerial}` : ''}`
    : '';
  return `vmsubst report ${id} --to ${target}${sign}`;
}

/** What to tell the reader of an answer that carries `truncated`; undefined when the answer is whole. */
export function truncationNote(
  answer: { id: string; truncated?: { 'report-bytes': number; counts: Record<string, number> } },
  target: string,
  signed?: { diskSerial?: string },
): string | undefined {
  const t = answer.truncated;
  if (!t) return undefined;
  const cut = Object.entries(t.counts)
    .map(([path, n]) => `${path} ${n}`)
    .join(', ');
  return `the agent's answer was cut to fit one message (${cut ? `true lengths: ${cut}; ` : ''}the whole report is ${t['report-bytes']} bytes); fetch it with: ${reportFetchCommand(answer.id, target, signed)}`;
}

/** One-shot notification: connect, hello, `substitute` (the host has written the blocks already). */
export async function notify(
  source: Manifest | { readonly manifest: Manifest },
  target: string | AgentTarget,
  disk: DiskRef,
  options: NotifyOptions & RetryOptions = {},
): Promise<NotifyResult> {
  const started = performance.now();
  const manifest = 'manifest' in source ? source.manifest : source;
  const args = notificationArgs(manifest, disk, options);
  const { value: report, conn, attempts, resends } = await withAgent(target, options, (c) => c.substitute(args));
  return {
    target: conn.target,
    agent: conn.agent,
    report,
    elapsedMs: Math.round(performance.now() - started),
    attempts,
    resends,
  };
}

/** Remembers the last error reply without an id seen on `stream`. */
function watchRefusal(stream: Duplex): () => { class: string; desc: string } | undefined {
  const decoder = new LineDecoder();
  let last: { class: string; desc: string } | undefined;
  stream.on('data', (chunk: Buffer) => {
    for (const frame of decoder.push(chunk)) {
      if (frame.kind !== 'message') continue;
      const msg = frame.value;
      if (validateReply.is(msg) && 'error' in msg && msg.id === undefined)
        last = { class: msg.error.class, desc: msg.error.desc };
    }
  });
  return () => last;
}
