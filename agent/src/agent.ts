/**
 * The agent's lifecycle: start the configured transports, give every accepted
 * stream a Session, route commands to their handlers, stop cleanly.
 */
import type { Duplex } from 'node:stream';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import { PROTOCOL_VERSION, type CommandName, type GreetingBody } from './protocol/schema.js';
import { Session } from './session.js';
import { planSubstitution, prepareSubstitution, substitute, type SubstituteDeps } from './commands/substitute.js';
import { customize } from './commands/customize.js';
import type { Transport } from './transport/transport.js';
import { UnixTransport } from './transport/unix.js';
import { SerialTransport, type AdoptStream } from './transport/serial.js';
import { VsockTransport, type VsockListen } from './transport/vsock.js';
import type { ArgsOf, ReturnOf } from './protocol/schema.js';
import { Journal } from './journal/journal.js';
import { boundReport, ReportStore } from './journal/reports.js';
import { PedigreeService } from './pedigree/live.js';
import { CommandError } from './errors.js';
import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { checkSignature, keyId } from './protocol/signature.js';

/** Reads the trusted public keys; a key that is not Ed25519 stops the agent at start. */
export function loadTrustedKeys(paths: readonly string[]): Map<string, KeyObject> {
  const keys = new Map<string, KeyObject>();
  for (const p of paths) {
    const key = createPublicKey(readFileSync(p));
    if (key.asymmetricKeyType !== 'ed25519') throw new Error(`${p}: an ${key.asymmetricKeyType} key; trusted keys must be Ed25519`);
    keys.set(keyId(key), key);
  }
  return keys;
}

export const AGENT_VERSION = '0.1.0';

/** The system as the agent sees it: the real implementations live in native/ and are wired in main.ts. */
export interface AgentDeps extends Omit<SubstituteDeps, 'invalidateRange'> {
  invalidateRange(fd: number, offset: bigint, length: bigint, flags: number, device: string): ReturnType<SubstituteDeps['invalidateRange']>;
  vsockListen?: VsockListen;
  adoptStream?: AdoptStream;
}

export class Agent {
  readonly #transports: Transport[] = [];
  readonly #streams = new Set<Duplex>();
  #busy: Promise<unknown> = Promise.resolve();
  #journal: Journal | undefined;
  #reports: ReportStore | undefined;
  #trusted = new Map<string, KeyObject>();
  /** Live block → file indexes, built on a filesystem's first substitution and kept current. */
  #pedigree: PedigreeService | undefined;

  constructor(
    private readonly config: Config,
    private readonly deps: AgentDeps,
    private readonly log: Logger,
  ) {}

  get greeting(): GreetingBody {
    return { version: AGENT_VERSION, protocol: PROTOCOL_VERSION, capabilities: ['hello', 'ping', 'substitute', 'prepare', 'commit', 'abort', 'two-phase', 'plan', 'report'] };
  }

  async start(): Promise<void> {
    const { config, deps, log } = this;
    this.#trusted = loadTrustedKeys(config.trustedKeys);
    if (this.#trusted.size > 0) log.info('signed notifications required', { keys: [...this.#trusted.keys()] });
    this.#journal = Journal.open(config.stateDir);
    this.#reports = new ReportStore(config.stateDir);
    this.#pedigree = new PedigreeService(deps.fiemap, {
      readDirect: deps.readDirect,
      onBuilt: (mount, how) => log.info('pedigree index built', { mountPoint: mount.mountPoint, ...how }),
    });
    for (const c of this.#journal.corrupt) {
      log.error('the journal has a corrupt line; its record is ignored (vmsubst-agent status lists it)', { journal: this.#journal.path, line: c.line, reason: c.reason, excerpt: c.excerpt });
    }
    if (this.#journal.tornBytes > 0) log.warn('the journal ended in a torn line (a write cut short); it was cut off', { journal: this.#journal.path, bytes: this.#journal.tornBytes });
    for (const id of this.#journal.interrupted) {
      log.warn('a substitution was interrupted; the host\'s retry will complete it', { id });
    }
    if (config.unix) this.#transports.push(new UnixTransport(config.unix));
    if (config.vsock) {
      if (!deps.vsockListen) throw new Error('vsock requested but no vsock support is available');
      this.#transports.push(new VsockTransport(config.vsock.port, config.vsock.allowCids, deps.vsockListen, log));
    }
    if (config.serial) {
      if (!deps.adoptStream) throw new Error('virtio-serial requested but stream adoption is unavailable');
      this.#transports.push(new SerialTransport(config.serial, deps.adoptStream, log));
    }
    for (const mountPoint of config.indexAtStart) {
      // In the background: a substitution arriving meanwhile joins the build (PedigreeService.get).
      const started = deps.now();
      this.#pedigree.warm(mountPoint, deps.sysRoot, deps.procRoot).then(
        () => log.info('index ready at start', { mountPoint, ms: Math.round(deps.now() - started) }),
        (e: unknown) => log.warn('could not build the index at start; it will be built on first use', { mountPoint, error: (e as Error).message }),
      );
    }
    for (const t of this.#transports) {
      await t.start((stream, peer) => {
        this.#streams.add(stream);
        stream.once('close', () => this.#streams.delete(stream));
        if (peer.transport !== 'serial') log.info('connection', { peer: peer.description });
        new Session(stream, peer, this.greeting, (name, args) => this.#dispatch(name as CommandName, args, peer.description), log, config.idleTimeoutSec * 1000);
      });
      log.info('listening', { on: t.name });
    }
  }

  async stop(): Promise<void> {
    for (const t of this.#transports.splice(0)) await t.stop();
    for (const s of this.#streams) s.destroy();
    await this.#busy.catch(() => undefined);
    await this.#pedigree?.close();
    this.#journal?.close();
  }

  async #dispatch(name: CommandName, args: unknown, peer: string): Promise<unknown> {
    switch (name) {
      case 'hello':
        return this.greeting;
      case 'ping':
        return {};
      case 'substitute':
        return this.#exclusive(() => this.#substituteOnce(args as ArgsOf<'substitute'>, peer));
      case 'prepare':
        return this.#exclusive(() => this.#prepare(args as ArgsOf<'prepare'>, peer));
      case 'commit':
        return this.#exclusive(() => this.#commit((args as ArgsOf<'commit'>).id, peer));
      case 'abort':
        return this.#exclusive(() => this.#abort((args as ArgsOf<'abort'>).id, peer));
      case 'report': {
        const a = args as ArgsOf<'report'>;
        return this.#reports!.page(a.id, a.offset, a.limit);
      }
    }
  }

  /** One substitution step at a time across all channels; the others queue. */
  #exclusive<T>(f: () => Promise<T>): Promise<T> {
    const run = this.#busy.catch(() => undefined).then(f);
    this.#busy = run;
    return run;
  }

  #authorize(args: ArgsOf<'substitute'> | ArgsOf<'prepare'>, peer: string): void {
    const verdict = checkSignature(args, this.#trusted);
    if (!verdict.ok) {
      this.log.warn('refused an unauthorized substitution', { peer, id: args.id, reason: verdict.reason });
      throw new CommandError('Unauthorized', verdict.reason);
    }
  }

  /** The one-shot `substitute` (the host wrote first); with dry-run, the plan only, outside the journal. */
  async #substituteOnce(args: ArgsOf<'substitute'>, peer: string): Promise<ReturnOf<'substitute'>> {
    this.#authorize(args, peer);
    if (args['dry-run']) {
      this.log.info('plan', { id: args.id, ranges: args.ranges.length });
      return this.#bounded(args.id, await planSubstitution(args, this.#substituteDeps()));
    }
    return this.#journaled(args, peer, undefined);
  }

  /** Phase one: plan and pin. A repeated prepare of the same id is answered from the journal. */
  async #prepare(args: ArgsOf<'prepare'>, peer: string): Promise<ReturnOf<'prepare'>> {
    this.#authorize(args, peer);
    const journal = this.#journal!;
    const entry = journal.get(args.id);
    if (entry?.last.phase === 'prepared') {
      this.log.info('prepare answered from the journal', { id: args.id });
      return this.#bounded(args.id, { ...(entry.last.report as ReturnOf<'prepare'>), replayed: true });
    }
    this.log.info('prepare', { id: args.id, ranges: args.ranges.length });
    const report = await prepareSubstitution(args, this.#substituteDeps());
    journal.prepared(args.id, peer, args, report);
    for (const p of report.pinned) this.log.info('pinned', { id: args.id, pid: p.pid, comm: p.comm, path: p.path, bytes: p['bytes-copied'], status: p.status });
    // The journal keeps prepare's full answer (commit and abort need every pin); the reply is bounded.
    return this.#bounded(args.id, report);
  }

  /** Phase two: the host has written; substitute with prepare's arguments and pins. */
  async #commit(id: string, peer: string): Promise<ReturnOf<'substitute'>> {
    const entry = this.#journal!.get(id);
    const last = entry?.last;
    if (last?.phase === 'prepared') {
      return this.#journaled(last.args as ArgsOf<'substitute'>, peer, (last.report as ReturnOf<'prepare'>).pinned);
    }
    if (last?.phase === 'begin' && last.args !== undefined) {
      // A commit cut short (agent crash): its arguments are in the journal; run it again. The pins
      // of prepare live on in the processes; none are taken now that the disk holds new blocks.
      return this.#journaled(last.args as ArgsOf<'substitute'>, peer, []);
    }
    if (last?.phase === 'done' && this.#journal!.latest() === entry) {
      this.log.info('commit answered from the journal', { id });
      return { ...(last.report as ReturnOf<'substitute'>), replayed: true };
    }
    const why = last === undefined ? 'was never prepared' : last.phase === 'aborted' ? 'was aborted' : `is ${entry!.state}, not prepared`;
    throw new CommandError('NotPrepared', `substitution ${id} ${why}; send prepare first`);
  }

  async #abort(id: string, peer: string): Promise<ReturnOf<'abort'>> {
    const journal = this.#journal!;
    const last = journal.get(id)?.last;
    if (last?.phase === 'prepared') {
      journal.aborted(id);
      const pins = (last.report as ReturnOf<'prepare'>).pinned;
      this.log.info('aborted', { id, peer, pinsKept: pins.length });
      return {
        id,
        status: 'aborted',
        'pins-kept': pins,
        detail: pins.length > 0 ? 'pinned processes keep their private copies of the old pages (the same content as the disk); freed when they exit' : 'nothing had been changed',
      };
    }
    if (last?.phase === 'done' || last?.phase === 'begin') return { id, status: 'committed', 'pins-kept': [], detail: 'already committed: the new blocks are in use; apply the reverse bundle to undo' };
    return { id, status: 'not-prepared', 'pins-kept': [], detail: last?.phase === 'aborted' ? 'already aborted' : 'nothing was prepared under this id' };
  }

  /** Answers a known id from the journal; otherwise runs it between begin and done/failed records. */
  async #journaled(args: ArgsOf<'substitute'>, peer: string, pinned: ReturnOf<'prepare'>['pinned'] | undefined): Promise<ReturnOf<'substitute'>> {
    const journal = this.#journal!;
    const entry = journal.get(args.id);
    // Only a retry of the latest substitution is answered from the journal. The same bundle
    // applied again after others (A→B, B→A, A→B) changed the disk again and must run again.
    if (entry?.state === 'done' && entry.last.phase === 'done' && journal.latest() === entry) {
      this.log.info('substitute answered from the journal', { id: args.id });
      return { ...(entry.last.report as ReturnOf<'substitute'>), replayed: true };
    }
    journal.begin(args.id, peer, pinned !== undefined ? args : undefined);
    if (process.env['VMSUBST_FAULT'] === 'crash-after-begin') process.kill(process.pid, 'SIGKILL'); // fault injection for the recovery test
    try {
      this.log.info('substitute', { id: args.id, ranges: args.ranges.length, twoPhase: pinned !== undefined });
      const substituted = await substitute(args, this.#substituteDeps(), pinned);
      // Customization comes after the blocks, so a file it writes is not overwritten by them.
      const report = args.customization
        ? { ...substituted, customization: await customize(args.customization, { ...this.config.customization, root: '/', procSys: '/proc/sys' }) }
        : substituted;
      const final = this.#bounded(args.id, entry?.state === 'interrupted' ? { ...report, recovered: true } : report);
      journal.done(args.id, final);
      return final;
    } catch (e) {
      journal.failed(args.id, e instanceof CommandError ? { class: e.errorClass, desc: e.message } : { class: 'GenericError', desc: String((e as Error).message) });
      throw e;
    }
  }

  /** The answer cut to fit one message (journal/reports.ts); the full report is kept for `report`. */
  #bounded<T extends object>(id: string, report: T): T {
    const b = boundReport(report);
    if (b.truncated) {
      this.#reports!.save(id, b.full);
      this.log.info('report truncated to fit one message; the full report is kept', { id, bytes: b.full.length, dir: this.#reports!.dir });
    }
    return b.answer;
  }

  #substituteDeps(): SubstituteDeps {
    const { deps, config } = this;
    return {
      ...deps,
      ...(this.#pedigree ? { pedigree: this.#pedigree } : {}),
      policies: config.policies,
      invalidateRange: (fd, offset, length, flags) => deps.invalidateRange(fd, offset, length, flags, config.kmodDevice),
    };
  }
}
