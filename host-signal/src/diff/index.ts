/**
 * Changed-block computation between a base image and its patched copy.
 *
 * Both images are read in large chunks; a chunk that is byte-identical is
 * skipped with one memcmp (Buffer.equals), otherwise it is compared block by
 * block. Runs of changed blocks become ranges, split so that none exceeds the
 * protocol's MAX_RANGE_BYTES, each with the sha256 of its old and new bytes.
 * The next chunk pair is read while the current one is compared.
 */
import { createHash, type Hash } from 'node:crypto';
import { MAX_RANGE_BYTES, MAX_RANGES } from '../../../agent/src/protocol/schema.js';
import { DiffError } from '../errors.js';
import { FileSource, type BlockSource } from './source.js';

export { FileSource, bufferSource, readExactly, type BlockSource } from './source.js';

export const DEFAULT_BLOCK_SIZE = 4096;
export const DEFAULT_CHUNK_SIZE = 4 << 20;

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
  const read = async (slot: number, position: number): Promise<{ a: Buffer; b: Buffer }> => {
    const [bufA, bufB] = pairs[slot]!;
    const want = Math.min(chunkSize, size - position);
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
  let next = size > 0 ? read(slot, 0) : undefined;
  for (let position = 0; position < size; position += chunkSize) {
    const { a, b } = await next!;
    const following = position + chunkSize;
    next = following < size ? read(slot ^ 1, following) : undefined;
    // Keep a rejected prefetch from being reported as unhandled while this chunk is compared.
    next?.catch(() => undefined);
    slot ^= 1;

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
    options.onProgress?.(Math.min(following, size), size);
  }
  close();
  if (size === 0) options.onProgress?.(0, 0);
  return { size, blockSize, ranges, changedBytes };
}

/** Compares two raw image files. */
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

async function openImage(path: string, role: string): Promise<FileSource> {
  try {
    return await FileSource.open(path);
  } catch (e) {
    throw new DiffError(`cannot open the ${role} image: ${(e as Error).message}`, 'give the path of a raw image file (convert qcow2 with `qemu-img convert -O raw`)', { cause: e });
  }
}
