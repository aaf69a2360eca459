/**
 * Who may do what (docs/design.md, "Trust"). Every host process is vsock CID 2, so the CID alone
 * trusts any host user or container. A request that changes the guest or reads its state
 * (substitute, its dry run, prepare, commit, abort, report, stale) is accepted only
 *   - signed by a trusted key (an envelope: this command, these arguments, once, in time, this VM), or
 *   - over a channel only the hypervisor's side can open: the virtio-serial port (its host end is the
 *     VMM's chardev), vsock from a privileged source port (< 1024: only CAP_NET_BIND_SERVICE binds
 *     one), the agent's unix socket (0600, root in the guest) — each can be struck from the list;
 * and with `requireSignature`, signed on every channel. Anyone the CID allow-list admits may `hello`
 * and `ping`. Customization is accepted only signed, and only the kinds the configuration allows.
 * `commit` and `abort` must in addition come from whoever prepared: prepare's token, or signed.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { createPublicKey, type KeyObject } from 'node:crypto';
import { AgentError, CommandError, errnoCode } from '../errors.js';
import { checkEnvelope, keyId, type GuestIdentity, type SignedCommand } from '@vmsubst/common/protocol/signature';
import type { Envelope } from '@vmsubst/common/protocol/schema';
import type { Peer } from '../transport/transport.js';
import type { Grants } from './grants.js';

/** Channels whose peer can only be the hypervisor's side; see the module comment. */
export type HypervisorChannel = 'serial' | 'vsock-privileged-port' | 'unix';
export const HYPERVISOR_CHANNELS: readonly HypervisorChannel[] = ['serial', 'vsock-privileged-port', 'unix'];

/** Ports below this can be bound only with CAP_NET_BIND_SERVICE (Linux, AF_VSOCK included). */
export const PRIVILEGED_PORT_LIMIT = 1024;

/** Reads the trusted public keys (files, and *.pub in a directory); a key that is not Ed25519 stops the agent. */
export function loadTrustedKeys(paths: readonly string[], dir?: string): Map<string, KeyObject> {
  const files = [...paths];
  if (dir !== undefined) {
    let names: string[] = [];
    try {
      names = readdirSync(dir)
        .filter((n) => n.endsWith('.pub'))
        .sort();
    } catch (e) {
      if (errnoCode(e) !== 'ENOENT') throw e;
    }
    files.push(...names.map((n) => join(dir, n)));
  }
  const keys = new Map<string, KeyObject>();
  for (const p of files) {
    const key = createPublicKey(readFileSync(p));
    if (key.asymmetricKeyType !== 'ed25519')
      throw new AgentError(
        'E_VMSUBST_TRUSTED_KEY',
        `${p}: an ${key.asymmetricKeyType} key; trusted keys must be Ed25519`,
        'make the signing key with vmsubst keygen (Ed25519), or remove this file',
      );
    keys.set(keyId(key), key);
  }
  return keys;
}

/** The guest's SMBIOS UUID and disk serials, read from sysfs each time (disks come and go). */
export function readIdentity(sysRoot: string): GuestIdentity {
  let vmUuid: string | undefined;
  try {
    const u = readFileSync(join(sysRoot, 'class/dmi/id/product_uuid'), 'utf8').trim().toLowerCase();
    if (/^[0-9a-f-]{36}$/.test(u) && !/^[0-]+$/.test(u)) vmUuid = u;
  } catch {
    /* no SMBIOS (or not readable): only disk serials identify this guest */
  }
  const diskSerials = new Set<string>();
  let disks: string[] = [];
  try {
    disks = readdirSync(join(sysRoot, 'block'));
  } catch {
    /* none */
  }
  for (const d of disks) {
    try {
      const s = readFileSync(join(sysRoot, 'block', d, 'serial'), 'utf8').trim();
      if (s !== '') diskSerials.add(s);
    } catch {
      /* not a virtio disk with a serial */
    }
  }
  return { vmUuid, diskSerials };
}

/** Is this peer the hypervisor's side, given the channels the configuration counts as such? */
export function hypervisorSide(peer: Peer, channels: readonly HypervisorChannel[]): boolean {
  switch (peer.transport) {
    case 'serial':
      return channels.includes('serial');
    case 'unix':
      return channels.includes('unix');
    case 'vsock':
      return channels.includes('vsock-privileged-port') && peer.port !== undefined && peer.port < PRIVILEGED_PORT_LIMIT;
  }
}

export interface GateOptions {
  trusted: ReadonlyMap<string, KeyObject>;
  hypervisorChannels: readonly HypervisorChannel[];
  requireSignature: boolean;
  grants: Grants;
  identity: () => GuestIdentity;
  nowSec?: () => number;
}

export interface Admission {
  /** The key that signed the request, when signed. */
  signedBy?: string;
  /** The envelope's nonce was seen before for this id and command (the caller decides: journal answer or refusal). */
  replayOf?: { id: string; command: string };
  /** Records the envelope's nonce; call once the request is going to be acted on. */
  commit(): void;
}

const READ_ONLY = new Set(['hello', 'ping']);

export class Gate {
  constructor(private readonly o: GateOptions) {}

  /** Why `peer` may not send `command` at all (it could neither sign nor speak for the hypervisor), or undefined. */
  whyNot(command: string, peer: Peer): string | undefined {
    if (READ_ONLY.has(command) || this.o.trusted.size > 0) return undefined;
    if (this.o.requireSignature)
      return `every change must be signed and this agent trusts no key: ${peer.description} may only hello and ping`;
    if (hypervisorSide(peer, this.o.hypervisorChannels)) return undefined;
    return `${peer.description} is not the hypervisor's side and this agent trusts no signing key: it may only hello and ping`;
  }

  /**
   * Admits a state-changing request or throws Unauthorized. `args.signature` is checked when
   * present (a bad envelope is refused even on a trusted channel); otherwise the channel decides.
   */
  admit(
    command: SignedCommand,
    args: { id?: string; signature?: Envelope | undefined; customization?: unknown },
    peer: Peer,
  ): Admission {
    const refuse = (why: string): never => {
      throw new CommandError('Unauthorized', why);
    };
    const nowSec = this.o.nowSec ?? (() => Math.floor(Date.now() / 1000));
    if (args.signature !== undefined) {
      if (this.o.trusted.size === 0)
        refuse('the request is signed but this agent trusts no key (add its public key to /etc/vmsubst/trusted.d/)');
      const v = checkEnvelope(
        command,
        args as Record<string, unknown> & { signature: Envelope },
        this.o.trusted,
        this.o.identity(),
        nowSec(),
      );
      if (!v.ok) return refuse(v.reason);
      const earlier = this.o.grants.seen(v.nonce);
      const grants = this.o.grants;
      return {
        signedBy: v.keyId,
        ...(earlier ? { replayOf: earlier } : {}),
        commit: () => {
          if (!earlier) grants.useNonce(v.nonce, v.expiresAt, args.id ?? command, command);
        },
      };
    }
    if (this.o.requireSignature)
      refuse(`the request is not signed and this agent requires a signature on every channel (requireSignature)`);
    if (!hypervisorSide(peer, this.o.hypervisorChannels)) {
      refuse(
        `${peer.description} is not the hypervisor's side (${peer.transport === 'vsock' ? 'source port not below 1024: any host process can open it' : `channel '${peer.transport}' is not trusted by the configuration`}); ` +
          `unsigned it may only hello and ping: sign the request (vmsubst notify --sign KEY) or send it as root on the host`,
      );
    }
    if (args.customization !== undefined)
      refuse('customization is accepted only in a signed notification (vmsubst notify --sign KEY)');
    return { commit: () => undefined };
  }
}
