/**
 * Signed bundles. A bundle travels from the management host to every
 * hypervisor host; an Ed25519 signature over its manifest lets each of them
 * check who made it before writing a block. The manifest carries every
 * range's new sha256 and the reader checks the data against those, so
 * signing the manifest covers the data too.
 *
 * The signature covers "vmsubst-manifest-v1\n" + the canonical JSON of the
 * manifest without `signature` (so it covers the id). The context string
 * keeps a manifest signature from being taken for a notification's
 * (protocol/signature.ts uses "vmsubst-substitute-v1\n"), and the other way round.
 */
import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { copyFile, open, rename, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { keyId } from '@vmsubst/common/protocol/signature';
import { BundleError } from '../errors.js';
import { BUNDLE_FORMAT, type Manifest } from '@vmsubst/common/bundle/schema';
import {
  HEADER_BYTES,
  canonicalJson,
  dataStart as dataStartFor,
  encodeHeader,
  manifestId,
} from '@vmsubst/common/bundle/format';
import { Bundle } from './reader.js';

export const MANIFEST_SIGNATURE_CONTEXT = 'vmsubst-manifest-v1\n';

export function manifestSignedBytes(m: Manifest): Buffer {
  const { signature: _omit, ...rest } = m;
  return Buffer.from(MANIFEST_SIGNATURE_CONTEXT + canonicalJson(rest), 'utf8');
}

/** The manifest with a signature by `privateKey` (replacing any earlier one). */
export function signManifest(m: Manifest, privateKey: KeyObject): Manifest {
  const { signature: _old, ...rest } = m;
  const unsigned = rest as Manifest;
  const sig = sign(null, manifestSignedBytes(unsigned), privateKey);
  return { ...unsigned, signature: { 'key-id': keyId(createPublicKey(privateKey)), ed25519: sig.toString('base64') } };
}

export type SignatureStatus =
  /** No signature in the manifest. */
  | { status: 'unsigned' }
  /** Signed by a trusted key and the signature verifies. */
  | { status: 'valid'; keyId: string }
  /** Signed, but no trusted key was given to check it with (or none has its id). */
  | { status: 'unverified'; keyId: string; reason: string }
  /** Signed by a trusted key's id, but the signature does not verify: the manifest was altered. */
  | { status: 'invalid'; keyId: string; reason: string };

export function checkManifestSignature(m: Manifest, trusted: ReadonlyMap<string, KeyObject>): SignatureStatus {
  const s = m.signature;
  if (!s) return { status: 'unsigned' };
  const key = trusted.get(s['key-id']);
  if (!key) {
    return {
      status: 'unverified',
      keyId: s['key-id'],
      reason:
        trusted.size === 0
          ? 'no trusted key given (--trusted-key)'
          : `signed with key ${s['key-id']}, which is not among the trusted keys`,
    };
  }
  const good = verify(null, manifestSignedBytes(m), key, Buffer.from(s.ed25519, 'base64'));
  return good
    ? { status: 'valid', keyId: s['key-id'] }
    : {
        status: 'invalid',
        keyId: s['key-id'],
        reason: `bad signature for key ${s['key-id']}: the manifest was altered after signing`,
      };
}

/**
 * Throws unless the manifest is validly signed by one of `trusted`. With no
 * trusted keys nothing is required (the caller decides whether to ask).
 */
export function requireTrustedSignature(
  m: Manifest,
  trusted: ReadonlyMap<string, KeyObject>,
  path: string,
): SignatureStatus {
  const v = checkManifestSignature(m, trusted);
  if (trusted.size === 0) return v;
  if (v.status === 'valid') return v;
  const why = v.status === 'unsigned' ? 'it is not signed' : v.reason;
  throw new BundleError(
    `${path}: refused: ${why}`,
    [],
    "sign it with 'vmsubst sign BUNDLE --key KEY' using a key whose public half is given to --trusted-key",
  );
}

/**
 * Signs the bundle at `path` in place (atomically: a copy is written and
 * renamed over it; with `output`, the signed copy goes there and `path` is
 * left alone). The bundle is fully checked first. The id of a format 2
 * bundle does not change. A format 1 bundle becomes format 2 (its id
 * changes), and when the signed manifest no longer fits before the data (a
 * bundle written without room for a signature) the data is moved and the id
 * changes with the data offsets; the result gives the previous id.
 */
export async function signBundle(
  path: string,
  privateKey: KeyObject,
  output = path,
): Promise<{ manifest: Manifest; moved: boolean; previousId: string }> {
  const bundle = await Bundle.open(path);
  let tmp = '';
  try {
    const old = bundle.manifest;
    // Format 1 readers would refuse the signature field: signing makes it a format 2 bundle.
    const body = { ...old, format: BUNDLE_FORMAT } as Manifest;
    const first = old.ranges[0]?.['data-offset'];
    let signed = signManifest({ ...body, id: manifestId(body) }, privateKey);
    let bytes = Buffer.from(canonicalJson(signed), 'utf8');
    let moved = false;
    if (first !== undefined && dataStartFor(bytes.length) > first) {
      // Move every range's data by the same whole number of 4 KiB pages.
      const shift = dataStartFor(bytes.length) - first;
      const ranges = old.ranges.map((r) => ({ ...r, 'data-offset': r['data-offset'] + shift }));
      const shifted = { ...body, ranges } as Manifest;
      signed = signManifest({ ...shifted, id: manifestId(shifted) }, privateKey);
      bytes = Buffer.from(canonicalJson(signed), 'utf8');
      if (dataStartFor(bytes.length) > ranges[0]!['data-offset'])
        throw new Error('internal: signed manifest does not fit after shifting the data');
      moved = true;
    }
    const start = first === undefined ? dataStartFor(bytes.length) : signed.ranges[0]!['data-offset'];
    tmp = join(dirname(output), `.${basename(output)}.${randomBytes(4).toString('hex')}.tmp`);
    const head = Buffer.alloc(start);
    encodeHeader(bytes.length, BUNDLE_FORMAT).copy(head, 0);
    bytes.copy(head, HEADER_BYTES);
    if (!moved && first !== undefined) {
      // Same data offsets: copy the file (reflink or copy_file_range where possible), rewrite its head.
      await copyFile(path, tmp);
      const out = await open(tmp, 'r+');
      try {
        await out.write(head, 0, head.length, 0);
        await out.sync();
      } finally {
        await out.close();
      }
    } else {
      const out = await open(tmp, 'wx', 0o644);
      try {
        await out.write(head, 0, head.length, 0);
        for (const [i, r] of signed.ranges.entries()) {
          const data = await bundle.readData(old.ranges[i]!);
          await out.write(data, 0, data.length, r['data-offset']);
        }
        const last = signed.ranges.at(-1);
        await out.truncate(last ? last['data-offset'] + last.length : start);
        await out.sync();
      } finally {
        await out.close();
      }
    }
    await bundle.close();
    // Check what was written before it replaces anything.
    await (await Bundle.open(tmp)).close();
    await rename(tmp, output);
    tmp = '';
    return { manifest: signed, moved, previousId: old.id };
  } finally {
    await bundle.close().catch(() => undefined);
    if (tmp) await rm(tmp, { force: true });
  }
}
