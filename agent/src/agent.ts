/**
 * The agent's lifecycle: start the configured transports, give every accepted
 * stream a Session, route commands to their handlers (handlers/), stop cleanly.
 */
import type { Duplex } from 'node:stream';
import type { KeyObject } from 'node:crypto';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import {
  PROTOCOL_VERSION,
  type ArgsOf,
  type CommandName,
  type GreetingBody,
  type ReturnOf,
} from '@vmsubst/common/protocol/schema';
import { encode } from '@vmsubst/common/protocol/codec';
import { Session } from './session.js';
import type { SubstituteDeps } from './substitution/substitute.js';
import { CAPABILITIES, handlers, type AgentServices, type Handler, type HandlerContext } from './handlers/index.js';
import type { Peer, Transport } from './transport/transport.js';
import { UnixTransport } from './transport/unix.js';
import { SerialTransport, type AdoptStream } from './transport/serial.js';
import { VsockTransport, type VsockListen } from './transport/vsock.js';
import { Journal } from './journal/journal.js';
import { ReportStore } from './journal/reports.js';
import { PedigreeService } from './pedigree/live.js';
import { AgentError, messageOf } from './errors.js';
import { Gate, hypervisorSide, loadTrustedKeys, readIdentity } from './trust/gate.js';
import { Grants } from './trust/grants.js';

export { loadTrustedKeys };

export const AGENT_VERSION = '0.1.0';

/** The system as the agent sees it: the real implementations live in native/ and are wired in main.ts. */
export interface AgentDeps extends Omit<SubstituteDeps, 'invalidateRange' | 'invalidateBatch' | 'queryDirty'> {
  invalidateRange(
    fd: number,
    offset: bigint,
    length: bigint,
    flags: number,
    device: string,
  ): ReturnType<SubstituteDeps['invalidateRange']>;
  queryDirty(fd: number, offset: number, length: number, device: string): ReturnType<SubstituteDeps['queryDirty']>;
  invalidateBatch?(
    files: Parameters<NonNullable<SubstituteDeps['invalidateBatch']>>[0],
    device: string,
  ): ReturnType<NonNullable<SubstituteDeps['invalidateBatch']>>;
  vsockListen?: VsockListen;
  adoptStream?: AdoptStream;
  /** dup(2): the virtio-serial port stays open while its streams come and go. */
  dupFd?: (fd: number) => number;
  /** Signal-driven I/O (F_SETOWN, O_ASYNC) for the serial port's descriptor; optional. */
  notifyAsync?: (fd: number) => void;
}

export class Agent {
  readonly #transports: Transport[] = [];
  readonly #streams = new Set<Duplex>();
  /** Open stream connections (vsock, unix) per pool: the hypervisor's side, and everyone else. */
  readonly #connections = { hypervisor: 0, other: 0 };
  #busy: Promise<unknown> = Promise.resolve();
  #journal: Journal | undefined;
  #trusted = new Map<string, KeyObject>();
  #grants: Grants | undefined;
  #gate: Gate | undefined;
  /** What the handlers work with; set by start(). */
  #services: AgentServices | undefined;
  /** Live block → file indexes, built on a filesystem's first substitution and kept current. */
  #pedigree: PedigreeService | undefined;

  constructor(
    private readonly config: Config,
    private readonly deps: AgentDeps,
    private readonly log: Logger,
  ) {}

  get greeting(): GreetingBody {
    return { version: AGENT_VERSION, protocol: PROTOCOL_VERSION, capabilities: [...CAPABILITIES] };
  }

  async start(): Promise<void> {
    const { config, deps, log } = this;
    this.#trusted = loadTrustedKeys(config.trustedKeys, config.trustedKeyDir ?? undefined);
    const journal = Journal.open(config.stateDir);
    journal.onSettleError = (e) =>
      log.error(
        'the journal record of the last answer could not be fsynced: it is written, a guest crash may lose it',
        {
          file: journal.path,
          error: e instanceof Error ? e.message : String(e),
        },
      );
    this.#journal = journal;
    this.#grants = new Grants(config.stateDir);
    if (this.#grants.corrupt.length > 0)
      log.warn('unreadable lines in the replay record; they were skipped', {
        file: this.#grants.path,
        lines: this.#grants.corrupt,
      });
    this.#gate = new Gate({
      trusted: this.#trusted,
      hypervisorChannels: config.trust.hypervisorChannels,
      requireSignature: config.trust.requireSignature,
      grants: this.#grants,
      identity: () => readIdentity(deps.sysRoot),
    });
    log.info('trust', {
      keys: [...this.#trusted.keys()],
      unsignedFrom: config.trust.requireSignature ? [] : config.trust.hypervisorChannels,
      customization: config.customization.allow,
    });
    this.#services = {
      greeting: this.greeting,
      config,
      log,
      procRoot: deps.procRoot,
      journal: this.#journal,
      reports: new ReportStore(config.stateDir),
      grants: this.#grants,
      gate: this.#gate,
      substituteDeps: () => this.#substituteDeps(),
    };
    this.#pedigree = new PedigreeService(deps.fiemap, {
      readDirect: deps.readDirect,
      onBuilt: (mount, how) => log.info('pedigree index built', { mountPoint: mount.mountPoint, ...how }),
    });
    for (const c of this.#journal.corrupt) {
      log.error('the journal has a corrupt line; its record is ignored (vmsubst-agent status lists it)', {
        journal: this.#journal.path,
        line: c.line,
        reason: c.reason,
        excerpt: c.excerpt,
      });
    }
    if (this.#journal.tornBytes > 0)
      log.warn('the journal ended in a torn line (a write cut short); it was cut off', {
        journal: this.#journal.path,
        bytes: this.#journal.tornBytes,
      });
    for (const id of this.#journal.interrupted) {
      log.warn("a substitution was interrupted; the host's retry will complete it", { id });
    }
    if (config.unix) this.#transports.push(new UnixTransport(config.unix));
    if (config.vsock) {
      if (!deps.vsockListen)
        throw new AgentError(
          'E_VMSUBST_TRANSPORT',
          'vsock requested but no vsock support is available',
          'is the native addon built? or start with --no-vsock',
        );
      this.#transports.push(new VsockTransport(config.vsock.port, config.vsock.allowCids, deps.vsockListen, log));
    }
    if (config.serial) {
      if (!deps.adoptStream)
        throw new AgentError(
          'E_VMSUBST_TRANSPORT',
          'virtio-serial requested but stream adoption is unavailable',
          'is the native addon built? or start with --no-serial',
        );
      if (!deps.dupFd)
        throw new AgentError(
          'E_VMSUBST_TRANSPORT',
          'virtio-serial requested but dup() is unavailable',
          'is the native addon built? or start with --no-serial',
        );
      this.#transports.push(
        new SerialTransport(config.serial, deps.adoptStream, log, deps.dupFd, undefined, deps.notifyAsync),
      );
    }
    for (const mountPoint of config.indexAtStart) {
      // In the background: a substitution arriving meanwhile joins the build (PedigreeService.get).
      const started = deps.now();
      this.#pedigree.warm(mountPoint, deps.sysRoot, deps.procRoot).then(
        () => log.info('index ready at start', { mountPoint, ms: Math.round(deps.now() - started) }),
        (e: unknown) =>
          log.warn('could not build the index at start; it will be built on first use', {
            mountPoint,
            error: messageOf(e),
          }),
      );
    }
    for (const t of this.#transports) {
      await t.start((stream, peer) => {
        // Two pools, so a flood from unprivileged peers never locks the hypervisor's side out.
        const pool = hypervisorSide(peer, config.trust.hypervisorChannels) ? 'hypervisor' : 'other';
        if (peer.transport !== 'serial' && this.#connections[pool] >= config.maxConnections) {
          log.warn('refused a connection: too many open', { peer: peer.description, max: config.maxConnections, pool });
          stream.end(
            encode({
              error: { class: 'Busy', desc: `${config.maxConnections} connections are open already; retry later` },
            }),
          );
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
        new Session(
          stream,
          peer,
          this.greeting,
          {
            dispatch: (name, args) => this.#dispatch(name, args, peer),
            whyNot: (name) => this.#gate!.whyNot(name, peer),
          },
          log,
          config.idleTimeoutSec * 1000,
        );
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

  /** Runs a command's handler (handlers/), the substitution steps one at a time. */
  #dispatch<C extends CommandName>(name: C, args: ArgsOf<C>, peer: Peer): Promise<ReturnOf<C>> {
    const handler: Handler<C> = handlers[name];
    const ctx: HandlerContext = { ...this.#services!, peer };
    return handler.exclusive ? this.#exclusive(() => handler.run(args, ctx)) : handler.run(args, ctx);
  }

  /** One substitution step at a time across all channels; the others queue. */
  #exclusive<T>(f: () => Promise<T>): Promise<T> {
    const run = this.#busy.catch(() => undefined).then(f);
    this.#busy = run;
    return run;
  }

  #substituteDeps(): SubstituteDeps {
    const { deps, config } = this;
    const { invalidateBatch, ...rest } = deps;
    const skipInvalidate = process.env['VMSUBST_FAULT'] === 'skip-invalidate';
    return {
      ...rest,
      // The fault injection below replaces the module's calls: the batch would bypass it.
      ...(invalidateBatch && !skipInvalidate
        ? { invalidateBatch: (files) => invalidateBatch(files, config.kmodDevice) }
        : {}),
      ...(this.#pedigree ? { pedigree: this.#pedigree } : {}),
      policies: config.policies,
      invalidateRange: skipInvalidate
        ? async () => ({ pagesCached: 0n, pagesMapped: 0n, pagesDropped: 0n, pagesKept: 0n }) // fault injection: the module is never called (the read-back test)
        : (fd, offset, length, flags) => deps.invalidateRange(fd, offset, length, flags, config.kmodDevice),
      queryDirty: (fd, offset, length) => deps.queryDirty(fd, offset, length, config.kmodDevice),
    };
  }
}
