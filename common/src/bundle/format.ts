/**
 * The bundle file layout, pure functions only.
 *
 *   0   8  magic "VMSUBST\0"
 *   8   4  format version, u32 big-endian
 *  12   4  manifest length in bytes, u32 big-endian
 *  16   n  manifest, canonical JSON (UTF-8)
 *      ..  zero padding to the next 4 KiB boundary (the data start)
 *      ..  each range's new bytes at its `data-offset`, 4 KiB aligned, in range
 *          order; the file ends where the last range's data ends
 *
 * Canonical JSON is JSON.stringify with object keys sorted at every level and
 * no whitespace; a manifest's `id` is the sha256 of the canonical manifest
 * without `id` and `signature`, so any change to the manifest changes or
 * breaks the id, while signing a bundle keeps it. The writer leaves room for a
 * signature (SIGNATURE_RESERVE) before the data, so `vmsubst sign` rewrites
 * only the head of the file. docs/bundle-format.md is the full description.
 */
import { createHash } from 'node:crypto';
import type { BundleRange, Manifest, ManifestBody } from './schema.js';
import { BUNDLE_FORMAT, READABLE_FORMATS } from './version.js';

export const BUNDLE_MAGIC = Buffer.from('VMSUBST\0', 'latin1');
export const HEADER_BYTES = 16;
export const DATA_ALIGN = 4096;
export const MAX_MANIFEST_BYTES = 16 << 20;
/** Bytes kept free after the manifest for a signature added later (`,"signature":{…}` is about 140). */
export const SIGNATURE_RESERVE = 256;

export function alignUp(n: number, to = DATA_ALIGN): number {
  return Math.ceil(n / to) * to;
}

export { canonicalJson } from '../protocol/canonical.js';
import { canonicalJson } from '../protocol/canonical.js';

export function manifestId(manifest: ManifestBody | Manifest): string {
  const { id: _id, signature: _signature, ...body } = manifest as Manifest;
  return createHash('sha256').update(canonicalJson(body)).digest('hex');
}

export function encodeHeader(manifestLength: number, version = BUNDLE_FORMAT): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  BUNDLE_MAGIC.copy(header, 0);
  header.writeUInt32BE(version, 8);
  header.writeUInt32BE(manifestLength, 12);
  return header;
}

export interface Header {
  version: number;
  manifestLength: number;
}

/** Parses the fixed header; returns a problem string instead of throwing. */
export function decodeHeader(buf: Buffer): Header | string {
  if (buf.length < HEADER_BYTES) return `file too short for a bundle header (${buf.length} bytes)`;
  if (!buf.subarray(0, 8).equals(BUNDLE_MAGIC)) return 'not a vmsubst bundle (bad magic)';
  const version = buf.readUInt32BE(8);
  if (!READABLE_FORMATS.includes(version)) {
    return `unsupported bundle format version ${version} (this vmsubst reads versions ${READABLE_FORMATS.join(', ')}); use a newer vmsubst`;
  }
  const manifestLength = buf.readUInt32BE(12);
  if (manifestLength === 0 || manifestLength > MAX_MANIFEST_BYTES)
    return `manifest length ${manifestLength} out of bounds`;
  return { version, manifestLength };
}

/** Where the data section starts for a manifest of this many bytes. */
export function dataStart(manifestLength: number): number {
  return alignUp(HEADER_BYTES + manifestLength);
}

export interface Layout {
  manifest: Manifest;
  manifestBytes: Buffer;
  dataStart: number;
  fileSize: number;
}

/**
 * Assigns data offsets and the id. The data start depends on the manifest's
 * length, which depends on the offsets' digits: iterate to the fixed point
 * (offsets only grow, so this ends, in practice after one or two rounds).
 */
export function layOut(
  body: Omit<ManifestBody, 'ranges'> & { ranges: Omit<BundleRange, 'data-offset'>[] },
  reserve = body.ranges.length > 0 ? SIGNATURE_RESERVE : 0,
): Layout {
  let start = dataStart(reserve);
  for (;;) {
    let cursor = start;
    const ranges: BundleRange[] = body.ranges.map((r) => {
      const placed: BundleRange = { ...r, 'data-offset': cursor };
      cursor = alignUp(cursor + r.length);
      return placed;
    });
    const withoutId: ManifestBody = { ...body, ranges };
    const manifest: Manifest = { ...withoutId, id: manifestId(withoutId) };
    const manifestBytes = Buffer.from(canonicalJson(manifest), 'utf8');
    const needed = dataStart(manifestBytes.length + reserve);
    if (needed <= start) {
      const last = ranges.at(-1);
      const fileSize = last ? last['data-offset'] + last.length : start;
      return { manifest, manifestBytes, dataStart: start, fileSize };
    }
    start = needed;
  }
}
