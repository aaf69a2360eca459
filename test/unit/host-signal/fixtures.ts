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
