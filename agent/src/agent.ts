/**
 * The agent's lifecycle: start the configured transports, give every accepted
 * stream a Session, route commands to their handlers, stop cleanly.
 */
import type { Duplex } from 'node:stream';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import { PROTOCOL_VERSION, type CommandName, type GreetingBody } from './protocol/schema.js';
import { Session } from './session.js';
import { planSubstitution, prepareSubstitution, substitute, type SubstituteDeps } from './substitution/substitute.js';
import { customize } from './substitution/customize.js';
import type { Transport } from './transport/transport.js';
import { UnixTransport } from './transport/unix.js';
import { SerialTransport, type AdoptStream } from './transport/serial.js';
import { VsockTransport, type VsockListen } from './transport/vsock.js';
import type { ArgsOf, ReturnOf } from './protocol/schema.js';
import { Journal } from './journal/journal.js';
import { boundReport, ReportStore } from './journal/reports.js';
import { PedigreeService } from './pedigree/live.js';
import { CommandError } from './errors.js';
import { randomBytes, type KeyObject } from 'node:crypto';
import { Gate, hypervisorSide, loadTrustedKeys, readIdentity, type Admission } from './trust/gate.js';
import { Grants } from './trust/grants.js';
import type { Peer } from './transport/transport.js';
import type { SignedCommand } from './protocol/signature.js';
import { encode } from './protocol/codec.js';
import { staleProcesses } from './substitution/stale.js';

export { loadTrustedKeys };

export const AGENT_VERSION = '0.1.0';

/** The system as the agent sees it: the real implementations live in native/ and are wired in main.ts. */
export interface AgentDeps extends Omit<SubstituteDeps, 'invalidateRange' | 'queryDirty'> {
  invalidateRange(fd: number, offset: bigint, length: bigint, flags: number, device: string): ReturnType<SubstituteDeps['invalidateRange']>;
  queryDirty(fd: number, offset: number, length: number, device: string): ReturnType<SubstituteDeps['queryDirty']>;
  vsockListen?: VsockListen;
  adoptStream?: AdoptStream;
  /** dup(2): the virtio-serial port stays open while its streams come and go. */
  dupFd?: (fd: number) => number;
}

export class Agent {
  readonly #transports: Transport[] = [];
  readonly #streams = new Set<Duplex>();
  /** Open stream connections (vsock, unix) per pool: the hypervisor's side, and everyone else. */
  readonly #connections = { hypervisor: 0, other: 0 };
  #busy: Promise<unknown> = Promise.resolve();
  #journal: Journal | undefined;
  #reports: ReportStore | undefined;
  #trusted = new Map<string, KeyObject>();
  #grants: Grants | undefined;
  #gate: Gate | undefined;
  /** Live block → file indexes, built on a filesystem's first substitution and kept current. */
  #pedigree: PedigreeService | undefined;

  constructor(
    private readonly config: Config,
    private readonly deps: AgentDeps,
    private readonly log: Logger,
  ) {}

  get greeting(): GreetingBody {
    return { version: AGENT_VERSION, protocol: PROTOCOL_VERSION, capabilities: ['hello', 'ping', 'substitute', 'prepare', 'commit', 'abort', 'two-phase', 'plan', 'envelope-v2', 'report', 'elf-code', 'stale', 'readback', 'readers'] };
  }

  async start(): Promise<void> {
    const { config, deps, log } = this;
    this.#trusted = loadTrustedKeys(config.trustedKeys, config.trustedKeyDir ?? undefined);
    this.#journal = Journal.open(config.stateDir);
    this.#grants = new Grants(config.stateDir);
    if (this.#grants.corrupt.length > 0) log.warn('unreadable lines in the replay record; they were skipped', { file: this.#grants.path, lines: this.#grants.corrupt });
    this.#gate = new Gate({
      trusted: this.#trusted,
      hypervisorChannels: config.trust.hypervisorChannels,
      requireSignature: config.trust.requireSignature,
      grants: this.#grants,
      identity: () => readIdentity(deps.sysRoot),
    });
    log.info('trust', { keys: [...this.#trusted.keys()], unsignedFrom: config.trust.requireSignature ? [] : config.trust.hypervisorChannels, customization: config.customization.allow });
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
      if (!deps.dupFd) throw new Error('virtio-serial requested but dup() is unavailable');
      this.#transports.push(new SerialTransport(config.serial, deps.adoptStream, log, deps.dupFd));
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
        // Two pools, so a flood from unprivileged peers never locks the hypervisor's side out.
        const pool = hypervisorSide(peer, config.trust.hypervisorChannels) ? 'hypervisor' : 'other';
        if (peer.transport !== 'serial' && this.#connections[pool] >= config.maxConnections) {
          log.warn('refused a connection: too many open', { peer: peer.description, max: config.maxConnections, pool });
          stream.end(encode({ error: { class: 'Busy', desc: `${config.maxConnections} connections are open already; retry later` } }));
          setTimeout(() => stream.destroy(), 1000).unref();
          return;
        }
        if (peer.transport !== 'serial') this.#connections[pool]++;
        this.#streams.add(stream);
        stream.once('close', () => {
          this.#streams.delete(stream);
          if (peer.transport !== 'serial') this.#connections[pool]--;
        });
        if (peer.transport !== 'serial') log.info('connection', { peer: peer.description });
        new Session(stream, peer, this.greeting, {
          dispatch: (name, args) => this.#dispatch(name as CommandName, args, peer),
          whyNot: (name) => this.#gate!.whyNot(name, peer),
        }, log, config.idleTimeoutSec * 1000);
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
    this.#grants?.close();
  }

  async #dispatch(name: CommandName, args: unknown, peer: Peer): Promise<unknown> {
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
        return this.#exclusive(() => this.#commit(args as ArgsOf<'commit'>, peer));
      case 'abort':
        return this.#exclusive(() => this.#abort(args as ArgsOf<'abort'>, peer));
      case 'report': {
        const a = args as ArgsOf<'report'>;
        this.#admitRead('report', a, peer);
        return this.#reports!.page(a.id, a.offset, a.limit);
      }
      case 'stale': {
        // Paths and processes of the guest: admitted like `report` (the hypervisor's side, or signed).
        const a = args as ArgsOf<'stale'>;
        this.#admitRead('stale', a, peer);
        return staleProcesses(this.#journal!.recent(64), this.deps.procRoot);
      }
    }
  }

  /** One substitution step at a time across all channels; the others queue. */
  #exclusive<T>(f: () => Promise<T>): Promise<T> {
    const run = this.#busy.catch(() => undefined).then(f);
    this.#busy = run;
    return run;
  }

  /** Admits a request or throws Unauthorized (trust/gate.ts); refusals are logged. */
  #admit(command: SignedCommand, args: ArgsOf<'substitute'> | ArgsOf<'prepare'> | ArgsOf<'commit'> | ArgsOf<'report'> | ArgsOf<'stale'>, peer: Peer): Admission {
    try {
      return this.#gate!.admit(command, args, peer);
    } catch (e) {
      this.log.warn('refused an unauthorized request', { command, peer: peer.description, id: 'id' in args ? args.id : undefined, reason: (e as Error).message });
      throw e;
    }
  }

  /** Reading a report (paths, processes) takes what a substitution takes: the hypervisor's side, or a signature. */
  #admitRead(command: 'report' | 'stale', args: ArgsOf<'report'> | ArgsOf<'stale'>, peer: Peer): void {
    const a = this.#admit(command, args, peer);
    if (a.replayOf) this.#refuseReplay(a, command, 'id' in args ? args.id : command, peer);
    a.commit();
  }

  /** A replayed envelope is refused unless it asks again for what the journal already holds. */
  #refuseReplay(a: Admission, command: SignedCommand, id: string, peer: Peer): never {
    const why = `replayed envelope: its nonce was used already (${a.replayOf!.command} of ${a.replayOf!.id}); sign the request again`;
    this.log.warn('refused an unauthorized request', { command, peer: peer.description, id, reason: why });
    throw new CommandError('Unauthorized', why);
  }

  /** commit and abort come from whoever prepared: prepare's token, or a valid signature. */
  #admitPhase(command: 'commit' | 'abort', args: ArgsOf<'commit'>, peer: Peer): Admission {
    const a = this.#admit(command, args, peer);
    if (a.signedBy !== undefined) return a;
    if (args.token !== undefined && this.#grants!.tokenMatches(args.id, args.token)) return a;
    const why = args.token === undefined
      ? `${command} must carry the token prepare returned (or be signed)`
      : `the token does not belong to the prepare of ${args.id}`;
    this.log.warn('refused an unauthorized request', { command, peer: peer.description, id: args.id, reason: why });
    throw new CommandError('Unauthorized', why);
  }

  /** A fresh token for a prepared id, recorded (hashed) before it is returned. */
  #newToken(id: string): string {
    const token = randomBytes(16).toString('hex');
    this.#grants!.setToken(id, token);
    return token;
  }

  /** The one-shot `substitute` (the host wrote first); with dry-run, the plan only, outside the journal. */
  async #substituteOnce(args: ArgsOf<'substitute'>, peer: Peer): Promise<ReturnOf<'substitute'>> {
    const a = this.#admit('substitute', args, peer);
    if (a.replayOf) {
      const entry = this.#journal!.get(args.id);
      const answerable = a.replayOf.id === args.id && a.replayOf.command === 'substitute' && entry?.last.phase === 'done' && this.#journal!.latest() === entry;
      if (!answerable) this.#refuseReplay(a, 'substitute', args.id, peer);
    }
    a.commit();
    if (args['dry-run']) {
      this.log.info('plan', { id: args.id, ranges: args.ranges.length });
      return this.#bounded(args.id, await planSubstitution(args, this.#substituteDeps()));
    }
    return this.#journaled(args, peer.description, undefined);
  }

  /** Phase one: plan and pin. A repeated prepare of the same id is answered from the journal. */
  async #prepare(args: ArgsOf<'prepare'>, peer: Peer): Promise<ReturnOf<'prepare'>> {
    const a = this.#admit('prepare', args, peer);
    const journal = this.#journal!;
    const entry = journal.get(args.id);
    if (a.replayOf && !(a.replayOf.id === args.id && a.replayOf.command === 'prepare' && entry?.last.phase === 'prepared')) {
      this.#refuseReplay(a, 'prepare', args.id, peer);
    }
    a.commit();
    if (entry?.last.phase === 'prepared') {
      // A retry (the host lost the answer, or resent before it came): the same answer, with a token of its own.
      this.log.info('prepare answered from the journal', { id: args.id });
      return { ...this.#bounded(args.id, { ...(entry.last.report as Omit<ReturnOf<'prepare'>, 'token'>), replayed: true }), token: this.#newToken(args.id) };
    }
    this.log.info('prepare', { id: args.id, ranges: args.ranges.length });
    const report = await prepareSubstitution(args, this.#substituteDeps());
    journal.prepared(args.id, peer.description, args, report);
    for (const p of report.pinned) this.log.info('pinned', { id: args.id, pid: p.pid, comm: p.comm, path: p.path, bytes: p['bytes-copied'], status: p.status });
    // The journal keeps prepare's full answer (commit and abort need every pin); the reply is bounded.
    return { ...this.#bounded(args.id, report), token: this.#newToken(args.id) };
  }

  /** Phase two: the host has written; substitute with prepare's arguments and pins. */
  async #commit(args: ArgsOf<'commit'>, peer: Peer): Promise<ReturnOf<'substitute'>> {
    const { id } = args;
    const a = this.#admitPhase('commit', args, peer);
    const entry = this.#journal!.get(id);
    if (a.replayOf && !(a.replayOf.id === id && a.replayOf.command === 'commit' && entry?.last.phase === 'done' && this.#journal!.latest() === entry)) {
      this.#refuseReplay(a, 'commit', id, peer);
    }
    a.commit();
    const last = entry?.last;
    if (last?.phase === 'prepared') {
      return this.#journaled(last.args as ArgsOf<'substitute'>, peer.description, (last.report as ReturnOf<'prepare'>).pinned);
    }
    if (last?.phase === 'begin' && last.args !== undefined) {
      // A commit cut short (agent crash): its arguments are in the journal; run it again. The pins
      // of prepare live on in the processes; none are taken now that the disk holds new blocks.
      return this.#journaled(last.args as ArgsOf<'substitute'>, peer.description, []);
    }
    if (last?.phase === 'done' && this.#journal!.latest() === entry) {
      this.log.info('commit answered from the journal', { id });
      return { ...(last.report as ReturnOf<'substitute'>), replayed: true };
    }
    const why = last === undefined ? 'was never prepared' : last.phase === 'aborted' ? 'was aborted' : `is ${entry!.state}, not prepared`;
    throw new CommandError('NotPrepared', `substitution ${id} ${why}; send prepare first`);
  }

  async #abort(args: ArgsOf<'abort'>, peer: Peer): Promise<ReturnOf<'abort'>> {
    const { id } = args;
    const a = this.#admitPhase('abort', args, peer);
    if (a.replayOf) this.#refuseReplay(a, 'abort', id, peer);
    a.commit();
    const journal = this.#journal!;
    const last = journal.get(id)?.last;
    if (last?.phase === 'prepared') {
      journal.aborted(id);
      const pins = (last.report as ReturnOf<'prepare'>).pinned;
      this.log.info('aborted', { id, peer: peer.description, pinsKept: pins.length });
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
      invalidateRange: process.env['VMSUBST_FAULT'] === 'skip-invalidate'
        ? async () => ({ pagesCached: 0n, pagesMapped: 0n, pagesDropped: 0n, pagesKept: 0n }) // fault injection: the module is never called (the read-back test)
        : (fd, offset, length, flags) => deps.invalidateRange(fd, offset, length, flags, config.kmodDevice),
      queryDirty: (fd, offset, length) => deps.queryDirty(fd, offset, length, config.kmodDevice),
    };
  }
}
