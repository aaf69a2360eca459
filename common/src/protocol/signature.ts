/**
 * Signed envelopes. A state-changing request that does not come over a channel only the
 * hypervisor's side can open must be signed with an Ed25519 key the guest trusts. The
 * signature covers, behind a context string:
 *   - the command's name (a `prepare` signature is not a `substitute` one),
 *   - its arguments without `signature` (canonical JSON),
 *   - a nonce (the agent accepts an envelope once),
 *   - issued-at and expires-at (seconds; an old envelope is worthless),
 *   - the target VM's identity (its SMBIOS UUID and/or the disk serial).
 * So a captured envelope cannot be replayed later, against another VM, or as another command.
 */
import { createHash, createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { canonicalJson } from './canonical.js';
import type { Envelope } from './schema.js';

export const SIGNATURE_CONTEXT = 'vmsubst-envelope-v2\n';
/** The longest validity window the agent accepts (and the longest it keeps a nonce). */
export const MAX_ENVELOPE_LIFETIME_SEC = 24 * 3600;
/** Clock difference tolerated between the signer and the guest. */
export const CLOCK_SKEW_SEC = 300;
/** Default validity of an envelope the host makes. */
export const DEFAULT_ENVELOPE_LIFETIME_SEC = 3600;

/** Commands that carry envelopes. */
export type SignedCommand = 'substitute' | 'prepare' | 'commit' | 'abort' | 'report' | 'stale';

type Signable = { signature?: Envelope | undefined } & Record<string, unknown>;
type EnvelopeFields = Omit<Envelope, 'key-id' | 'ed25519'>;

export function signedBytes(command: SignedCommand, args: Signable, fields: EnvelopeFields): Buffer {
  const { signature: _omit, ...rest } = args;
  const { nonce, 'issued-at': issuedAt, 'expires-at': expiresAt, target } = fields;
  return Buffer.from(
    SIGNATURE_CONTEXT +
      canonicalJson({ command, args: rest, nonce, 'issued-at': issuedAt, 'expires-at': expiresAt, target }),
    'utf8',
  );
}

/** Short, stable name of a public key: the first 16 hex digits of the sha256 of its raw bytes. */
export function keyId(key: KeyObject): string {
  const raw = key.export({ format: 'der', type: 'spki' });
  return createHash('sha256').update(raw).digest('hex').slice(0, 16);
}

export interface SignOptions {
  /** The VM the envelope is for: at least one of its SMBIOS UUID and the disk serial. */
  target: Envelope['target'];
  /** Seconds of validity from now (default an hour, at most a day). */
  lifetimeSec?: number;
  /** Seconds since the epoch; for tests. */
  now?: number;
  nonce?: string;
}

/** Returns `args` with a fresh envelope for `command`. */
export function signArgs<A extends Signable>(
  command: SignedCommand,
  args: A,
  privateKey: KeyObject,
  options: SignOptions,
): A & { signature: Envelope } {
  const now = options.now ?? Math.floor(Date.now() / 1000);
  const lifetime = Math.min(options.lifetimeSec ?? DEFAULT_ENVELOPE_LIFETIME_SEC, MAX_ENVELOPE_LIFETIME_SEC);
  const fields: EnvelopeFields = {
    nonce: options.nonce ?? randomBytes(16).toString('hex'),
    'issued-at': now,
    'expires-at': now + lifetime,
    target: options.target,
  };
  const { signature: _old, ...rest } = args;
  const sig = sign(null, signedBytes(command, rest, fields), privateKey);
  return {
    ...rest,
    signature: { 'key-id': keyId(createPublicKey(privateKey)), ed25519: sig.toString('base64'), ...fields },
  } as A & { signature: Envelope };
}

/** What the guest knows of itself, to check an envelope's target. */
export interface GuestIdentity {
  /** SMBIOS system UUID, lower case; undefined when the firmware gives none (or all zeros). */
  vmUuid: string | undefined;
  /** Serials of the guest's disks. */
  diskSerials: ReadonlySet<string>;
}

export type Verdict = { ok: true; keyId: string; nonce: string; expiresAt: number } | { ok: false; reason: string };

/**
 * Checks an envelope: a trusted key, a good signature over this command and these arguments, inside
 * its window, for this VM. The nonce is the caller's to check (it needs the journal).
 */
export function checkEnvelope(
  command: SignedCommand,
  args: Signable,
  trusted: ReadonlyMap<string, KeyObject>,
  identity: GuestIdentity,
  nowSec: number = Math.floor(Date.now() / 1000),
): Verdict {
  const s = args.signature;
  if (!s) return { ok: false, reason: 'the request is not signed' };
  const key = trusted.get(s['key-id']);
  if (!key) return { ok: false, reason: `signed with key ${s['key-id']}, which this agent does not trust` };
  if (!verify(null, signedBytes(command, args, s), key, Buffer.from(s.ed25519, 'base64'))) {
    return {
      ok: false,
      reason: `bad signature for key ${s['key-id']} (altered, or signed for another command than '${command}')`,
    };
  }
  if (s['expires-at'] - s['issued-at'] > MAX_ENVELOPE_LIFETIME_SEC || s['expires-at'] < s['issued-at']) {
    return {
      ok: false,
      reason: `the envelope's validity window is longer than ${MAX_ENVELOPE_LIFETIME_SEC} s or inverted`,
    };
  }
  if (s['issued-at'] > nowSec + CLOCK_SKEW_SEC)
    return {
      ok: false,
      reason: `the envelope is issued in the future (${s['issued-at'] - nowSec} s ahead of the guest's clock)`,
    };
  if (s['expires-at'] < nowSec) return { ok: false, reason: `the envelope expired ${nowSec - s['expires-at']} s ago` };
  const t = s.target;
  if (t['vm-uuid'] !== undefined && t['vm-uuid'].toLowerCase() !== identity.vmUuid) {
    return {
      ok: false,
      reason: `the envelope is for VM ${t['vm-uuid']}, not this one${identity.vmUuid ? '' : ' (this guest has no SMBIOS UUID)'}`,
    };
  }
  if (t['disk-serial'] !== undefined) {
    if (!identity.diskSerials.has(t['disk-serial']))
      return {
        ok: false,
        reason: `the envelope is for disk serial '${t['disk-serial']}', which this guest does not have`,
      };
    const disk = (args as { disk?: { serial?: string } }).disk;
    if (disk?.serial !== undefined && disk.serial !== t['disk-serial'])
      return {
        ok: false,
        reason: `the envelope is for disk serial '${t['disk-serial']}' but the request names '${disk.serial}'`,
      };
  }
  return { ok: true, keyId: s['key-id'], nonce: s.nonce, expiresAt: s['expires-at'] };
}
