/**
 * Signed notifications. vsock and virtio-serial carry no authentication, so a
 * guest can require that every `substitute` is signed with an Ed25519 key it
 * trusts. The signature covers the canonical JSON of the arguments without
 * the `signature` field, behind a context string, so a signature made for one
 * purpose cannot be replayed as another.
 */
import { createHash, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { canonicalJson } from './canonical.js';
import type { SubstituteArgs } from './schema.js';

export const SIGNATURE_CONTEXT = 'vmsubst-substitute-v1\n';

export function signedBytes(args: SubstituteArgs): Buffer {
  const { signature: _omit, ...rest } = args;
  return Buffer.from(SIGNATURE_CONTEXT + canonicalJson(rest), 'utf8');
}

/** Short, stable name of a public key: the first 16 hex digits of the sha256 of its raw bytes. */
export function keyId(key: KeyObject): string {
  const raw = key.export({ format: 'der', type: 'spki' });
  return createHash('sha256').update(raw).digest('hex').slice(0, 16);
}

export function signArgs(args: SubstituteArgs, privateKey: KeyObject): SubstituteArgs {
  const pub = createPublicKey(privateKey);
  const { signature: _old, ...rest } = args;
  const sig = sign(null, signedBytes(rest as SubstituteArgs), privateKey);
  return { ...rest, signature: { 'key-id': keyId(pub), ed25519: sig.toString('base64') } } as SubstituteArgs;
}

export type Verdict = { ok: true; keyId: string } | { ok: false; reason: string };

/** Checks `args` against the trusted keys; with none configured every notification passes. */
export function checkSignature(args: SubstituteArgs, trusted: ReadonlyMap<string, KeyObject>): Verdict {
  if (trusted.size === 0) return { ok: true, keyId: '' };
  const s = args.signature;
  if (!s) return { ok: false, reason: 'the notification is not signed and this agent requires a signature' };
  const key = trusted.get(s['key-id']);
  if (!key) return { ok: false, reason: `signed with key ${s['key-id']}, which this agent does not trust` };
  const good = verify(null, signedBytes(args), key, Buffer.from(s.ed25519, 'base64'));
  return good ? { ok: true, keyId: s['key-id'] } : { ok: false, reason: `bad signature for key ${s['key-id']}` };
}
