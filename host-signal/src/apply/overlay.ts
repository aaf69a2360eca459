/**
 * A bundle as a qcow2 overlay (a "delta disk"): an image that allocates
 * exactly the clusters the bundle changes and reads through to its backing
 * file everywhere else, so OVERLAY over BASE reads identical to PATCHED.
 *
 * A qcow2 cluster is the unit of allocation: where a cluster is larger than
 * the bundle's blocks, the unchanged part of a changed cluster must be copied
 * from the base (a cluster that is allocated hides its backing file
 * entirely). `vmsubst export --qcow2` fills from the base image given with
 * --base; the overlay apply mode picks a cluster size that never needs a fill
 * (see qemu.ts), since the running disk's neighbouring blocks may change.
 */
import { createHash, type Hash } from 'node:crypto';
import { relative, dirname, isAbsolute, resolve } from 'node:path';
import type { Manifest } from '@vmsubst/common/bundle/schema';
import { BaseMismatchError, BundleError, TargetError } from '../errors.js';
import { writeQcow2, type Qcow2Written } from '../qcow2/writer.js';
import { openImage, readExactly } from '../diff/index.js';
import {
  checkTargetSize,
  inspectTarget,
  refuseMismatch,
  type ApplyProgress,
  type BlockTarget,
  type BundleData,
} from './core.js';

/** QEMU's default qcow2 cluster size, and the largest the overlay mode uses. */
export const DEFAULT_CLUSTER_SIZE = 64 << 10;

/**
 * The largest power of two, up to `max`, that every range starts on and
 * ends on (or ends at the end of the disk): a qcow2 cluster of that size is
 * never partly changed, so the overlay needs no fill from the base.
 */
export function alignedClusterSize(manifest: Manifest, max = DEFAULT_CLUSTER_SIZE): number {
  let size = max;
  for (const r of manifest.ranges) {
    const end = r.offset + r.length;
    while (size > 1 && (r.offset % size !== 0 || (end % size !== 0 && end !== manifest.base.size))) size /= 2;
  }
  return size;
}

/** The virtual clusters a bundle's ranges touch, ascending. */
export function changedClusters(manifest: Manifest, clusterSize: number): number[] {
  const out: number[] = [];
  for (const r of manifest.ranges) {
    const first = Math.floor(r.offset / clusterSize);
    const last = Math.floor((r.offset + r.length - 1) / clusterSize);
    for (let c = Math.max(first, (out.at(-1) ?? -1) + 1); c <= last; c++) out.push(c);
  }
  return out;
}

export interface BuildOverlayOptions {
  clusterSize: number;
  /** Recorded as the overlay's backing file. */
  backing?: { name: string; format: string };
  /** Reads the base content of a partly changed cluster; absent: such clusters are an error. */
  fill?: (offset: number, length: number) => Promise<Buffer>;
  onProgress?: (done: number, total: number) => void;
}

/** Writes the overlay; each range's data is hashed again as it is copied. */
export async function buildOverlay(
  bundle: BundleData,
  path: string,
  options: BuildOverlayOptions,
): Promise<Qcow2Written> {
  const { manifest } = bundle;
  const cs = options.clusterSize;
  const ranges = manifest.ranges;
  const size = manifest.base.size;
  const hashes = new Map<number, Hash>();
  let next = 0; // first range that may still overlap the next span
  const content = async (first: number, count: number): Promise<Buffer> => {
    const start = first * cs;
    const end = Math.min(size, (first + count) * cs);
    const buf = Buffer.alloc(count * cs);
    while (next < ranges.length && ranges[next]!.offset + ranges[next]!.length <= start) next++;
    const parts: { index: number; at: number; from: number; length: number }[] = [];
    let covered = 0;
    for (let i = next; i < ranges.length && ranges[i]!.offset < end; i++) {
      const r = ranges[i]!;
      const a = Math.max(start, r.offset);
      const b = Math.min(end, r.offset + r.length);
      parts.push({ index: i, at: a - start, from: a - r.offset, length: b - a });
      covered += b - a;
    }
    if (covered < end - start) {
      if (!options.fill)
        throw new TargetError(`the cluster at ${start} is only partly changed and no base was given to fill it`);
      (await options.fill(start, end - start)).copy(buf, 0);
    }
    for (const p of parts) {
      const r = ranges[p.index]!;
      const data = await bundle.readData(r, p.from, p.length);
      let h = hashes.get(p.index);
      if (!h) hashes.set(p.index, (h = createHash('sha256')));
      h.update(data);
      if (p.from + p.length === r.length) {
        hashes.delete(p.index);
        if (h.digest('hex') !== r['new-sha256']) {
          throw new BundleError(
            `the bundle's data for the range at offset ${r.offset} changed after it was verified`,
            [],
            'do not modify a bundle while it is being used; run the command again',
          );
        }
      }
      data.copy(buf, p.at);
    }
    return buf;
  };
  return writeQcow2(path, {
    virtualSize: size,
    clusterSize: cs,
    clusters: changedClusters(manifest, cs),
    content,
    ...(options.backing ? { backing: options.backing } : {}),
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
  });
}

/**
 * The name to record for a backing file: as given when absolute; when
 * relative, relative to the overlay's directory, which is how QEMU resolves it.
 */
export function backingName(backing: string, overlayPath: string): string {
  if (isAbsolute(backing)) return backing;
  return relative(dirname(resolve(overlayPath)), resolve(backing)) || '.';
}

export interface ExportOptions {
  /**
   * The bundle's base image (raw or qcow2): checked against the old hashes, and the source of partly changed clusters.
   */
  base: string;
  /** What the overlay names as its backing file; default the base image (see backingName). */
  backing?: string;
  /** Record no backing file (the overlay is then meant for blockdev-add with an explicit backing). */
  noBacking?: boolean;
  clusterSize?: number;
  onProgress?: ApplyProgress;
}

export interface ExportResult extends Qcow2Written {
  id: string;
  backing: { name: string; format: 'raw' | 'qcow2' } | null;
  /** Bytes of the overlay's clusters copied from the base (partly changed clusters). */
  filledBytes: number;
  changedBytes: number;
}

/** `vmsubst export --qcow2`: checks the base holds every range's old content, then writes the overlay. */
export async function exportOverlay(bundle: BundleData, out: string, options: ExportOptions): Promise<ExportResult> {
  const { manifest } = bundle;
  if (!bundle.verified)
    throw new BundleError("the bundle's data has not been verified", [], 'open the bundle with data verification');
  const source = await openImage(options.base, 'base'); // raw, or qcow2 read through qemu-nbd
  try {
    checkTargetSize(manifest, source.size, `base image ${options.base}`);
    const base: BlockTarget = {
      size: source.size,
      read: (offset, length) => readExactly(source, offset, length),
      write: () => Promise.reject(new Error('the base image is never written')),
      flush: () => Promise.resolve(),
    };
    const { states } = await inspectTarget(manifest, base, options.onProgress);
    refuseMismatch(manifest, states);
    const alreadyNew = manifest.ranges.filter((_r, i) => states[i] === 'new');
    if (alreadyNew.length > 0) {
      throw new BaseMismatchError(
        `${options.base} is not this bundle's base: ${alreadyNew.length} of ${manifest.ranges.length} ranges ` +
          `already hold the new content (is it the patched image?)`,
        alreadyNew.map((r) => ({ offset: r.offset, length: r.length })),
        'give the image the bundle was made from; nothing was written',
      );
    }
    const clusterSize = options.clusterSize ?? DEFAULT_CLUSTER_SIZE;
    const backing = options.noBacking
      ? null
      : { name: backingName(options.backing ?? options.base, out), format: source.format };
    const written = await buildOverlay(bundle, out, {
      clusterSize,
      ...(backing ? { backing } : {}),
      fill: (offset, length) => base.read(offset, length),
      ...(options.onProgress ? { onProgress: (d: number, t: number) => options.onProgress!('write', d, t) } : {}),
    });
    const changedBytes = manifest.ranges.reduce((n, r) => n + r.length, 0);
    const allocated = changedClusters(manifest, clusterSize).reduce(
      (n, c) => n + Math.min(clusterSize, manifest.base.size - c * clusterSize),
      0,
    );
    return { ...written, id: manifest.id, backing, filledBytes: allocated - changedBytes, changedBytes };
  } finally {
    await source.close?.();
  }
}
