/**
 * The agent's lifecycle: start the configured transports, give every accepted
 * stream a Session, route commands to their handlers, stop cleanly.
 */
import type { Duplex } from 'node:stream';
import type { Config } from './config.js';
import type { Logger } from './log.js';
import { PROTOCOL_VERSION, type CommandName, type GreetingBody } from './protocol/schema.js';
import { Session } from './session.js';
import { substitute, type SubstituteDeps } from './commands/substitute.js';
import { customize } from './commands/customize.js';
import type { Transport } from './transport/transport.js';
import { UnixTransport } from './transport/unix.js';
import { SerialTransport, type AdoptStream } from './transport/serial.js';
import { VsockTransport, type VsockListen } from './transport/vsock.js';
import type { ArgsOf, ReturnOf } from './protocol/schema.js';
import { Journal } from './journal/journal.js';
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
  #trusted = new Map<string, KeyObject>();
  /** Live block → file indexes, built on a filesystem's first substitution and kept current. */
  #pedigree: PedigreeService | undefined;

  constructor(
    private readonly config: Config,
    private readonly deps: AgentDeps,
    private readonly log: Logger,
  ) {}

  get greeting(): GreetingBody {
    return { version: AGENT_VERSION, protocol: PROTOCOL_VERSION, capabilities: ['hello', 'ping', 'substitute'] };
  }

  async start(): Promise<void> {
    const { config, deps, log } = this;
    this.#trusted = loadTrustedKeys(config.trustedKeys);
    if (this.#trusted.size > 0) log.info('signed notifications required', { keys: [...this.#trusted.keys()] });
    this.#journal = Journal.open(config.stateDir);
    this.#pedigree = new PedigreeService(deps.fiemap);
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
      case 'substitute': {
        // One substitution at a time across all channels.
        const run = this.#busy.catch(() => undefined).then(() => this.#journaled(args as ArgsOf<'substitute'>, peer));
        this.#busy = run;
        return run;
      }
      case 'prepare':
      case 'commit':
      case 'abort':
        throw new CommandError('CommandNotFound', `'${name}' is not available in this agent`);
    }
  }

  /** Answers a known id from the journal; otherwise runs it between begin and done/failed records. */
  async #journaled(args: ArgsOf<'substitute'>, peer: string): Promise<ReturnOf<'substitute'>> {
    const verdict = checkSignature(args, this.#trusted);
    if (!verdict.ok) {
      this.log.warn('refused an unauthorized substitution', { peer, id: args.id, reason: verdict.reason });
      throw new CommandError('Unauthorized', verdict.reason);
    }
    const journal = this.#journal!;
    const dryRun = args['dry-run'] ?? false;
    const entry = journal.get(args.id);
    // Only a retry of the latest substitution is answered from the journal. The same bundle
    // applied again after others (A→B, B→A, A→B) changed the disk again and must run again.
    if (!dryRun && entry?.state === 'done' && entry.last.phase === 'done' && journal.latest() === entry) {
      this.log.info('substitute answered from the journal', { id: args.id });
      return { ...(entry.last.report as ReturnOf<'substitute'>), replayed: true };
    }
    if (dryRun) return this.#substitute(args);
    journal.begin(args.id, peer);
    if (process.env['VMSUBST_FAULT'] === 'crash-after-begin') process.kill(process.pid, 'SIGKILL'); // fault injection for the recovery test
    try {
      const substituted = await this.#substitute(args);
      // Customization comes after the blocks, so a file it writes is not overwritten by them.
      const report = args.customization
        ? { ...substituted, customization: await customize(args.customization, { ...this.config.customization, root: '/', procSys: '/proc/sys' }) }
        : substituted;
      const final = entry?.state === 'interrupted' ? { ...report, recovered: true } : report;
      journal.done(args.id, final);
      return final;
    } catch (e) {
      journal.failed(args.id, e instanceof CommandError ? { class: e.errorClass, desc: e.message } : { class: 'GenericError', desc: String((e as Error).message) });
      throw e;
    }
  }

  #substitute(args: ArgsOf<'substitute'>): ReturnType<typeof substitute> {
    const { deps, config } = this;
    this.log.info('substitute', { id: args.id, ranges: args.ranges.length, dryRun: args['dry-run'] ?? false });
    return substitute(args, {
      ...deps,
      ...(this.#pedigree ? { pedigree: this.#pedigree } : {}),
      invalidateRange: (fd, offset, length, flags) => deps.invalidateRange(fd, offset, length, flags, config.kmodDevice),
    });
  }
}
