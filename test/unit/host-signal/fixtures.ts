/** Images and bundles for the host-signal unit suites. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const KiB = 1024;
export const MiB = 1024 * KiB;

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Random bytes (incompressible, like real images). */
export function image(size: number): Buffer {
  return randomBytes(size);
}

/** A copy of `base` with each [offset, length] range overwritten by different bytes. */
export function patch(base: Buffer, edits: readonly [number, number][]): Buffer {
  const out = Buffer.from(base);
  for (const [offset, length] of edits) {
    for (let i = offset; i < offset + length; i++) out[i] = out[i]! ^ 0xa5;
  }
  return out;
}

export class TempDir {
  readonly path = mkdtempSync(join(tmpdir(), 'vmsubst-unit-'));
  file(name: string, data?: Buffer): string {
    const p = join(this.path, name);
    if (data) writeFileSync(p, data);
    return p;
  }
  remove(): void {
    rmSync(this.path, { recursive: true, force: true });
  }
}

/**
 * A bundle exactly as format 1 (vmsubst before file hints and signatures)
 * wrote it: header version 1, a manifest with only the format 1 fields, no
 * room kept for a signature.
 */
export async function writeFormat1Bundle(path: string, base: Buffer, patched: Buffer): Promise<string> {
  const { diffSources, bufferSource } = await import('../../../host-signal/src/diff/index.js');
  const { layOut, encodeHeader, HEADER_BYTES } = await import('@vmsubst/common/bundle/format');
  const d = await diffSources(bufferSource(base), bufferSource(patched));
  const layout = layOut(
    {
      format: 1,
      'block-size': d.blockSize,
      base: { size: d.size, label: 'format one' },
      created: '2026-11-01T00:00:00.000Z',
      'tool-version': '0.0.9',
      ranges: d.ranges.map((r) => ({
        offset: r.offset,
        length: r.length,
        'old-sha256': r.oldSha256,
        'new-sha256': r.newSha256,
      })),
    },
    0,
  );
  const file = Buffer.alloc(layout.fileSize);
  encodeHeader(layout.manifestBytes.length, 1).copy(file, 0);
  layout.manifestBytes.copy(file, HEADER_BYTES);
  for (const r of layout.manifest.ranges) patched.copy(file, r['data-offset'], r.offset, r.offset + r.length);
  writeFileSync(path, file);
  return layout.manifest.id;
}
