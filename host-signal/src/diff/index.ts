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
 *
 * Two plain files are compared in native code instead when the addon loads
 * (compareSpan: pread into cache-sized buffers and memcmp on the libuv thread
 * pool, several spans at once); the ranges found are hashed, reading both
 * images again, while the later spans are compared. Same ranges either way.
 */
import { createHash, hash, type Hash } from 'node:crypto';
import { readSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { MAX_RANGE_BYTES, MAX_RANGES } from '@vmsubst/common/protocol/schema';
import { DiffError } from '../errors.js';
import { loadNativeDiff, nativeStatus, type NativeDiff, type NativeStatus } from '../native/index.js';
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
  /**
   * The new bytes of each range, in order, when the differ kept them (the
   * native comparison, up to RETAIN_BYTES in all): the bundle writer then
   * need not read the patched image again. Not enumerable.
   */
  readonly newData?: readonly Buffer[];
  /**
   * Whether the native comparison's addon loaded, when two plain files made
   * it a candidate (absent otherwise); a failure was also warned about on
   * stderr, and the JavaScript comparison ran instead. Not enumerable.
   */
  readonly native?: NativeStatus;
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
  /** Compare in native code when both sources are files and the addon loads (default true). */
  native?: boolean;
}

/** Bytes of one native comparison job; the jobs run NATIVE_JOBS at a time. */
const NATIVE_SPAN = 64 << 20;
const NATIVE_JOBS = Math.max(2, Math.min(4, availableParallelism()));
/** The largest read made to hash a changed range. */
const HASH_READ = 4 << 20;
/** The new bytes of the changed ranges kept in memory for the bundle writer, at most (else it reads them again). */
const RETAIN_BYTES = 64 << 20;
const SLAB_BYTES = 4 << 20;

interface OpenRange {
  offset: number;
  length: number;
  old: Hash;
  new: Hash;
}

export async function diffSources(
  base: BlockSource,
  patched: BlockSource,
  options: DiffOptions = {},
): Promise<DiffResult> {
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
    throw new RangeError(
      `range cap ${maxRangeBytes} must be a multiple of ${blockSize} and at most ${MAX_RANGE_BYTES}`,
    );
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
      throw tooScattered(maxRanges);
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

  // The chunks to read: the union of both images' data, block aligned.
  const union = mergeSegments([await segmentsOf(base), await segmentsOf(patched)], blockSize, size);
  const readBytes = union.reduce((n, [, l]) => n + l, 0);

  const candidate = options.native !== false && base.fd !== undefined && patched.fd !== undefined;
  const native = candidate ? loadNativeDiff() : undefined;
  const status = candidate ? nativeStatus() : undefined;
  const withStatus = (result: DiffResult): DiffResult =>
    status ? Object.defineProperty(result, 'native', { value: status, enumerable: false }) : result;
  if (native && blockSize <= native.blockMax) {
    const found = await diffNative(native, base, patched, union, blockSize, maxRangeBytes, maxRanges, (d) =>
      options.onProgress?.(d, readBytes),
    );
    options.onProgress?.(readBytes, readBytes);
    const result: DiffResult = { size, blockSize, ranges: found.ranges, changedBytes: found.changedBytes, readBytes };
    if (found.newData) Object.defineProperty(result, 'newData', { value: found.newData, enumerable: false });
    return withStatus(result);
  }

  // Two buffer pairs: one being compared, one being filled.
  const pairs = [0, 1].map(() => [Buffer.allocUnsafe(chunkSize), Buffer.allocUnsafe(chunkSize)] as const);
  const chunks: [number, number][] = [];
  for (const [start, length] of union) {
    for (let p = start; p < start + length; p += chunkSize) chunks.push([p, Math.min(chunkSize, start + length - p)]);
  }

  const read = async (slot: number, [position, want]: [number, number]): Promise<{ a: Buffer; b: Buffer }> => {
    const [bufA, bufB] = pairs[slot]!;
    const [na, nb] = await Promise.all([
      base.readInto(bufA.subarray(0, want), position),
      patched.readInto(bufB.subarray(0, want), position),
    ]);
    if (na !== want || nb !== want) {
      throw shrank(position);
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
  return withStatus({ size, blockSize, ranges, changedBytes, readBytes });
}

/**
 * The native comparison: the union of data segments is cut into jobs of at
 * most NATIVE_SPAN bytes, NATIVE_JOBS compared at once on the thread pool.
 * The main thread takes the jobs' runs in order while the later jobs are
 * still being compared: merges runs that abut across a job boundary, cuts
 * them at maxRangeBytes and hashes each range, reading both files again
 * (synchronously: the blocks were just read and come from the page cache).
 * The new bytes are kept, up to RETAIN_BYTES in all, for the bundle writer.
 */
async function diffNative(
  native: NativeDiff,
  base: BlockSource,
  patched: BlockSource,
  union: readonly [number, number][],
  blockSize: number,
  maxRangeBytes: number,
  maxRanges: number,
  onProgress: (done: number) => void,
): Promise<{ ranges: DiffRange[]; changedBytes: number; newData?: Buffer[] }> {
  const jobs: [number, number][] = [];
  for (const [start, length] of union) {
    for (let p = start; p < start + length; p += NATIVE_SPAN) jobs.push([p, Math.min(NATIVE_SPAN, start + length - p)]);
  }
  const results = jobs.map(() => {
    let settle!: { resolve: (runs: Float64Array) => void; reject: (e: unknown) => void };
    const promise = new Promise<Float64Array>((resolve, reject) => (settle = { resolve, reject }));
    promise.catch(() => undefined); // awaited in order below; a later job's failure must not go unhandled meanwhile
    return { promise, ...settle };
  });
  let next = 0;
  let failed = false;
  let done = 0;
  const compareJob = async (i: number): Promise<Float64Array> => {
    const [offset, length] = jobs[i]!;
    // Only the image's last block can be partial (its size is not a multiple of the block size): compared here.
    const whole = length - (length % blockSize);
    let runs: Float64Array;
    try {
      runs = await native.compareSpan(base.fd!, patched.fd!, offset, whole, blockSize);
    } catch (e) {
      if ((e as { code?: string }).code === 'EIO' && /short read/.test((e as Error).message)) {
        throw shrank(offset);
      }
      throw e;
    }
    if (whole < length) {
      const [a, b] = await Promise.all([
        readTail(base, offset + whole, length - whole),
        readTail(patched, offset + whole, length - whole),
      ]);
      if (!a.equals(b)) runs = Float64Array.from([...runs, offset + whole, length - whole]);
    }
    return runs;
  };
  const worker = async (): Promise<void> => {
    while (next < jobs.length && !failed) {
      const i = next++;
      try {
        results[i]!.resolve(await compareJob(i));
      } catch (e) {
        failed = true;
        results[i]!.reject(e);
        for (let k = next; k < jobs.length; k++) results[k]!.reject(e);
        next = jobs.length;
      }
    }
  };
  const workers = Promise.all(Array.from({ length: Math.min(NATIVE_JOBS, jobs.length) }, worker));

  const ranges: DiffRange[] = [];
  let changedBytes = 0;
  let newData: Buffer[] | undefined = [];
  const retained = new Retained();
  const scratch = Buffer.allocUnsafe(HASH_READ);
  const emit = (offset: number, length: number): void => {
    for (let p = 0; p < length; p += maxRangeBytes) {
      if (ranges.length === maxRanges) {
        throw tooScattered(maxRanges);
      }
      const r = { offset: offset + p, length: Math.min(maxRangeBytes, length - p) };
      const keep = newData !== undefined ? retained.take(r.length) : undefined;
      if (keep === undefined) newData = undefined;
      const hashes = hashRange(base.fd!, patched.fd!, r.offset, r.length, scratch, keep);
      ranges.push({ ...r, oldSha256: hashes.old, newSha256: hashes.new });
      changedBytes += r.length;
      newData?.push(hashes.data!);
    }
  };
  // The last run seen; it may go on in the next job.
  let open: [number, number] | undefined;
  try {
    for (let i = 0; i < jobs.length; i++) {
      const runs = await results[i]!.promise;
      for (let k = 0; k < runs.length; k += 2) {
        const offset = runs[k]!;
        const length = runs[k + 1]!;
        if (open && open[0] + open[1] === offset) {
          open[1] += length;
          continue;
        }
        if (open) emit(open[0], open[1]);
        open = [offset, length];
      }
      done += jobs[i]![1];
      onProgress(done);
    }
    if (open) emit(open[0], open[1]);
  } finally {
    failed = true;
    await workers;
  }
  return { ranges, changedBytes, ...(newData ? { newData } : {}) };
}

/**
 * The sha256 of [offset, offset + length) of both files, read synchronously
 * through `scratch`; with `keep` the new bytes are read into `keep` and
 * returned too. One-shot hashes (crypto.hash) up to HASH_READ bytes: a few
 * microseconds less per range than a Hash object, which shows with
 * thousands of small ranges.
 */
function hashRange(
  fdA: number,
  fdB: number,
  offset: number,
  length: number,
  scratch: Buffer,
  keep: Buffer | undefined,
): { old: string; new: string; data?: Buffer } {
  const readFull = (fd: number, buf: Buffer, position: number): Buffer => {
    for (let done = 0; done < buf.length;) {
      const n = readSync(fd, buf, done, buf.length - done, position + done);
      if (n === 0) throw shrank(position + done);
      done += n;
    }
    return buf;
  };
  if (length <= HASH_READ) {
    const old = hash('sha256', readFull(fdA, scratch.subarray(0, length), offset));
    const data = readFull(fdB, keep ?? scratch.subarray(0, length), offset);
    return { old, new: hash('sha256', data), ...(keep ? { data: keep } : {}) };
  }
  const hashA = createHash('sha256');
  const hashB = createHash('sha256');
  for (let p = 0; p < length; p += HASH_READ) {
    const want = Math.min(HASH_READ, length - p);
    hashA.update(readFull(fdA, scratch.subarray(0, want), offset + p));
    hashB.update(readFull(fdB, keep ? keep.subarray(p, p + want) : scratch.subarray(0, want), offset + p));
  }
  return { old: hashA.digest('hex'), new: hashB.digest('hex'), ...(keep ? { data: keep } : {}) };
}

/**
 * Hands out buffers for the kept new bytes from 4 MiB slabs (a separate
 * allocation per small range costs more than its read), up to RETAIN_BYTES.
 */
class Retained {
  #slab = Buffer.alloc(0);
  #used = 0;
  #total = 0;
  /** A buffer of `length` bytes, or undefined once the limit would be passed. */
  take(length: number): Buffer | undefined {
    if (this.#total + length > RETAIN_BYTES) return undefined;
    this.#total += length;
    if (length > SLAB_BYTES / 4) return Buffer.allocUnsafe(length);
    if (this.#used + length > this.#slab.length) {
      this.#slab = Buffer.allocUnsafe(SLAB_BYTES);
      this.#used = 0;
    }
    this.#used += length;
    return this.#slab.subarray(this.#used - length, this.#used);
  }
}

async function readTail(source: BlockSource, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  if ((await source.readInto(buf, position)) !== length) throw shrank(position);
  return buf;
}

/** An image got shorter while it was being read. */
function shrank(offset: number): DiffError {
  return new DiffError(`short read at offset ${offset}: an image shrank while it was being compared`);
}

function tooScattered(maxRanges: number): DiffError {
  return new DiffError(
    `the change is too scattered: more than ${maxRanges} ranges`,
    `one substitution carries at most ${maxRanges} ranges; split the patch into several smaller ones`,
  );
}

async function segmentsOf(source: BlockSource): Promise<readonly Segment[] | undefined> {
  return source.dataSegments ? await source.dataSegments() : undefined;
}

/**
 * The union of several segment lists (undefined: all of [0, size)), widened
 * to whole blocks, clipped to the size, overlapping and touching ones merged.
 */
export function mergeSegments(
  lists: readonly (readonly Segment[] | undefined)[],
  blockSize: number,
  size: number,
): [number, number][] {
  if (lists.some((l) => l === undefined)) return size > 0 ? [[0, size]] : [];
  const all = lists
    .flatMap((l) => l!)
    .map(
      ([o, l]) =>
        [Math.floor(o / blockSize) * blockSize, Math.min(size, Math.ceil((o + l) / blockSize) * blockSize)] as [
          number,
          number,
        ],
    );
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
export async function diffImages(
  basePath: string,
  patchedPath: string,
  options: DiffOptions = {},
): Promise<DiffResult> {
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
    throw new DiffError(
      `cannot open the ${role} image: ${(e as Error).message}`,
      'give the path of a raw or qcow2 image file',
      { cause: e },
    );
  }
  if (format === 'qcow2') return Object.assign(await Qcow2Source.open(path), { format } as const);
  try {
    return Object.assign(await FileSource.open(path), { format } as const);
  } catch (e) {
    throw new DiffError(
      `cannot open the ${role} image: ${(e as Error).message}`,
      'give the path of a raw or qcow2 image file',
      { cause: e },
    );
  }
}
