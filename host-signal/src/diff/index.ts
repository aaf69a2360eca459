/**
 * Changed-block computation between a base image and its patched copy.
 *
 * Only where either image holds data is read (SEEK_DATA/SEEK_HOLE on raw
 * files, `qemu-img map` on qcow2): a hole in both images is zeros in both,
 * equal by definition, while a hole in one and data in the other is read from
 * both (the hole reads as zeros) and compared like any other bytes.
 * The data is read in large chunks; a chunk that is byte-identical is
 * skipped with one memcmp (Buffer.equals), otherwise it is compared block by
 * block. Runs of changed blocks become ranges, split so that none exceeds the
 * protocol's MAX_RANGE_BYTES, each with the sha256 of its old and new bytes.
 * The next chunk pair is read while the current one is compared.
 */
import { createHash, type Hash } from 'node:crypto';
import { MAX_RANGE_BYTES, MAX_RANGES } from '../../../agent/src/protocol/schema.js';
import { DiffError } from '../errors.js';
import { FileSource, type BlockSource, type Segment } from './source.js';
import { Qcow2Source, probeFormat } from './qcow2.js';

export { FileSource, bufferSource, readExactly, type BlockSource, type Segment } from './source.js';
export { Qcow2Source, probeFormat } from './qcow2.js';

export const DEFAULT_BLOCK_SIZE = 4096;
/**
 * Bytes read from each image per step. 1 MiB keeps both buffer pairs (4 MiB)
 * in the CPU cache between the read and the compare; 4 MiB reads measured
 * twice as slow warm here (docs/design.md, "Reading the images").
 */
export const DEFAULT_CHUNK_SIZE = 1 << 20;

export interface DiffRange {
  offset: number;
  length: number;
  oldSha256: string;
  newSha256: string;
}

export interface DiffResult {
  /** Size of both images in bytes. */
  size: number;
  blockSize: number;
  /** Sorted, non-overlapping; adjacent only where a run was split at the cap. */
  ranges: DiffRange[];
  changedBytes: number;
  /** Bytes read from each image: where either holds data (the whole size when holes are not known). */
  readBytes: number;
}

export type Progress = (done: number, total: number) => void;

export interface DiffOptions {
  blockSize?: number;
  /** Bytes read from each image per step; a multiple of blockSize. */
  chunkSize?: number;
  /** Longest range; a multiple of blockSize. */
  maxRangeBytes?: number;
  /** More ranges than this is an error: one substitution could not carry them. */
  maxRanges?: number;
  onProgress?: Progress;
}

interface OpenRange {
  offset: number;
  length: number;
  old: Hash;
  new: Hash;
}

export async function diffSources(base: BlockSource, patched: BlockSource, options: DiffOptions = {}): Promise<DiffResult> {
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  const maxRangeBytes = options.maxRangeBytes ?? MAX_RANGE_BYTES;
  const maxRanges = options.maxRanges ?? MAX_RANGES;
  if (!Number.isInteger(blockSize) || blockSize < 512 || (blockSize & (blockSize - 1)) !== 0) {
    throw new RangeError(`block size ${blockSize} is not a power of two >= 512`);
  }
  if (chunkSize < blockSize || chunkSize % blockSize !== 0) {
    throw new RangeError(`chunk size ${chunkSize} is not a multiple of the block size ${blockSize}`);
  }
  if (maxRangeBytes < blockSize || maxRangeBytes % blockSize !== 0 || maxRangeBytes > MAX_RANGE_BYTES) {
    throw new RangeError(`range cap ${maxRangeBytes} must be a multiple of ${blockSize} and at most ${MAX_RANGE_BYTES}`);
  }
  if (base.size !== patched.size) {
    throw new DiffError(
      `the images differ in size: base ${base.size} bytes, patched ${patched.size} bytes`,
      'block substitution needs a patched image of exactly the base size; patch a copy of the base without resizing it',
    );
  }

  const size = base.size;
  const ranges: DiffRange[] = [];
  let changedBytes = 0;
  let open: OpenRange | undefined;

  const close = (): void => {
    if (!open) return;
    ranges.push({
      offset: open.offset,
      length: open.length,
      oldSha256: open.old.digest('hex'),
      newSha256: open.new.digest('hex'),
    });
    open = undefined;
    if (ranges.length > maxRanges) {
      throw new DiffError(
        `the change is too scattered: more than ${maxRanges} ranges`,
        `one substitution carries at most ${maxRanges} ranges; split the patch into several smaller ones`,
      );
    }
  };

  const changed = (offset: number, a: Buffer, b: Buffer): void => {
    changedBytes += a.length;
    if (open && open.offset + open.length === offset && open.length + a.length <= maxRangeBytes) {
      open.length += a.length;
    } else {
      close();
      open = { offset, length: a.length, old: createHash('sha256'), new: createHash('sha256') };
    }
    open.old.update(a);
    open.new.update(b);
  };

  // Two buffer pairs: one being compared, one being filled.
  const pairs = [0, 1].map(() => [Buffer.allocUnsafe(chunkSize), Buffer.allocUnsafe(chunkSize)] as const);

  // The chunks to read: the union of both images' data, block aligned, cut at chunkSize.
  const union = mergeSegments([await segmentsOf(base), await segmentsOf(patched)], blockSize, size);
  const chunks: [number, number][] = [];
  for (const [start, length] of union) {
    for (let p = start; p < start + length; p += chunkSize) chunks.push([p, Math.min(chunkSize, start + length - p)]);
  }
  const readBytes = union.reduce((n, [, l]) => n + l, 0);

  const read = async (slot: number, [position, want]: [number, number]): Promise<{ a: Buffer; b: Buffer }> => {
    const [bufA, bufB] = pairs[slot]!;
    const [na, nb] = await Promise.all([
      base.readInto(bufA.subarray(0, want), position),
      patched.readInto(bufB.subarray(0, want), position),
    ]);
    if (na !== want || nb !== want) {
      throw new DiffError(`short read at offset ${position}: an image shrank while it was being compared`);
    }
    return { a: bufA.subarray(0, want), b: bufB.subarray(0, want) };
  };

  let slot = 0;
  let next = chunks.length > 0 ? read(slot, chunks[0]!) : undefined;
  let previousEnd = 0;
  for (let c = 0; c < chunks.length; c++) {
    const [position, length] = chunks[c]!;
    const { a, b } = await next!;
    const following = chunks[c + 1];
    next = following ? read(slot ^ 1, following) : undefined;
    // Keep a rejected prefetch from being reported as unhandled while this chunk is compared.
    next?.catch(() => undefined);
    slot ^= 1;
    // A hole common to both images lies between: equal, so it ends any open range.
    if (position !== previousEnd) close();
    previousEnd = position + length;

    if (a.equals(b)) {
      close();
    } else {
      for (let o = 0; o < a.length; o += blockSize) {
        const end = Math.min(o + blockSize, a.length);
        const blockA = a.subarray(o, end);
        const blockB = b.subarray(o, end);
        if (blockA.equals(blockB)) close();
        else changed(position + o, blockA, blockB);
      }
    }
    options.onProgress?.(position + length, size);
  }
  close();
  if (previousEnd < size || size === 0) options.onProgress?.(size, size);
  return { size, blockSize, ranges, changedBytes, readBytes };
}

async function segmentsOf(source: BlockSource): Promise<readonly Segment[] | undefined> {
  return source.dataSegments ? await source.dataSegments() : undefined;
}

/**
 * The union of several segment lists (undefined: all of [0, size)), widened
 * to whole blocks, clipped to the size, overlapping and touching ones merged.
 */
export function mergeSegments(lists: readonly (readonly Segment[] | undefined)[], blockSize: number, size: number): [number, number][] {
  if (lists.some((l) => l === undefined)) return size > 0 ? [[0, size]] : [];
  const all = lists.flatMap((l) => l!).map(([o, l]) => [Math.floor(o / blockSize) * blockSize, Math.min(size, Math.ceil((o + l) / blockSize) * blockSize)] as [number, number]);
  all.sort((x, y) => x[0] - y[0]);
  const out: [number, number][] = [];
  for (const [start, end] of all) {
    if (end <= start) continue;
    const last = out.at(-1);
    if (last && start <= last[0] + last[1]) last[1] = Math.max(last[1], end - last[0]);
    else out.push([start, end - start]);
  }
  return out;
}

/** An opened image: a raw file, or a qcow2 read through qemu-nbd. */
export type ImageSource = (FileSource | Qcow2Source) & { readonly format: 'raw' | 'qcow2' };

/** Compares two image files (raw or qcow2, in any combination). */
export async function diffImages(basePath: string, patchedPath: string, options: DiffOptions = {}): Promise<DiffResult> {
  const base = await openImage(basePath, 'base');
  try {
    const patched = await openImage(patchedPath, 'patched');
    try {
      return await diffSources(base, patched, options);
    } finally {
      await patched.close();
    }
  } finally {
    await base.close();
  }
}

/** Opens a raw or qcow2 image (told apart by the qcow2 magic) for reading. */
export async function openImage(path: string, role: string): Promise<ImageSource> {
  let format: 'raw' | 'qcow2';
  try {
    format = await probeFormat(path);
  } catch (e) {
    throw new DiffError(`cannot open the ${role} image: ${(e as Error).message}`, 'give the path of a raw or qcow2 image file', { cause: e });
  }
  if (format === 'qcow2') return Object.assign(await Qcow2Source.open(path), { format } as const);
  try {
    return Object.assign(await FileSource.open(path), { format } as const);
  } catch (e) {
    throw new DiffError(`cannot open the ${role} image: ${(e as Error).message}`, 'give the path of a raw or qcow2 image file', { cause: e });
  }
}
