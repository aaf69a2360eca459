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
import { MAX_RANGE_BYTES, MAX_RANGES } from '@vmsubst/common/protocol/limits';
import { DiffError } from '../errors.js';
// Not native/index.js: its vsock half loads node:stream, which the differ does not need.
import { nativeStatus, type NativeStatus } from '../native/binding.js';
import { loadNativeDiff, type NativeDiff } from '../native/diff.js';
import { FileSource, probeFormat, type BlockSource, type Segment } from './source.js';
import type { Qcow2Source } from './qcow2.js';

export { FileSource, bufferSource, probeFormat, readExactly, type BlockSource, type Segment } from './source.js';

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

/** Bytes of one native comparison job; NATIVE_JOBS of them are queued at a time. */
const NATIVE_SPAN = 64 << 20;
/**
 * Jobs queued on the thread pool at once. More than the pool has threads (4 unless
 * UV_THREADPOOL_SIZE says otherwise): a thread that finishes a job takes the next one itself,
 * while the main thread is busy hashing a range and cannot queue one. Measured on the 2 GiB bench
 * pair (2 cores), 6 runs each, interleaved: diffSources median 192 ms with 2 queued, 174 with
 * 4, 171 with 8, 166 with 16. Each queued job holds at most one run list (128 KiB for a 64 MiB
 * span).
 */
const NATIVE_JOBS = 16;
/**
 * The largest read made to hash a changed range: small enough that the bytes
 * are hashed while still in the core's cache (and the scratch buffer stays
 * there). 2 GiB bench pair, 17.6 MiB changed, interleaved: diffSources
 * median 281 ms with 256 KiB, 302 ms with 4 MiB.
 */
const HASH_READ = 256 << 10;
/** The new bytes of the changed ranges kept in memory for the bundle writer, at most (else it reads them again). */
const RETAIN_BYTES = 64 << 20;
const SLAB_BYTES = 4 << 20;

/** The options of one diff, checked, with their defaults filled in. */
interface Settings {
  blockSize: number;
  chunkSize: number;
  maxRangeBytes: number;
  maxRanges: number;
}

/** Checks the options against each other and the two images against each other. */
function settingsFor(base: BlockSource, patched: BlockSource, options: DiffOptions): Settings {
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
  return { blockSize, chunkSize, maxRangeBytes, maxRanges };
}

export async function diffSources(
  base: BlockSource,
  patched: BlockSource,
  options: DiffOptions = {},
): Promise<DiffResult> {
  const settings = settingsFor(base, patched, options);
  const { blockSize } = settings;
  const size = base.size;
  // The chunks to read: the union of both images' data, block aligned.
  const union = mergeSegments([await segmentsOf(base), await segmentsOf(patched)], blockSize, size);
  const readBytes = union.reduce((n, [, l]) => n + l, 0);

  const candidate = options.native !== false && base.fd !== undefined && patched.fd !== undefined;
  const native = candidate ? loadNativeDiff() : undefined;
  const status = candidate ? nativeStatus() : undefined;
  const withStatus = (result: DiffResult): DiffResult =>
    status ? Object.defineProperty(result, 'native', { value: status, enumerable: false }) : result;
  if (native && blockSize <= native.blockMax) {
    const found = await diffNative(native, base, patched, union, settings, (d) => options.onProgress?.(d, readBytes));
    options.onProgress?.(readBytes, readBytes);
    const result: DiffResult = { size, blockSize, ranges: found.ranges, changedBytes: found.changedBytes, readBytes };
    if (found.newData) Object.defineProperty(result, 'newData', { value: found.newData, enumerable: false });
    return withStatus(result);
  }
  const found = await diffInJs(base, patched, union, settings, options.onProgress);
  return withStatus({ size, blockSize, ranges: found.ranges, changedBytes: found.changedBytes, readBytes });
}

/**
 * Runs of changed blocks into ranges: a run grows while the blocks abut and
 * the range stays under the cap, each range hashing its old and new bytes.
 */
class RangeBuilder {
  readonly ranges: DiffRange[] = [];
  changedBytes = 0;
  #open: { offset: number; length: number; old: Hash; new: Hash } | undefined;

  constructor(
    private readonly maxRangeBytes: number,
    private readonly maxRanges: number,
  ) {}

  /** The blocks at `offset` differ: `a` is the old content, `b` the new. */
  changed(offset: number, a: Buffer, b: Buffer): void {
    this.changedBytes += a.length;
    const open = this.#open;
    if (open && open.offset + open.length === offset && open.length + a.length <= this.maxRangeBytes) {
      open.length += a.length;
    } else {
      this.close();
      this.#open = { offset, length: a.length, old: createHash('sha256'), new: createHash('sha256') };
    }
    this.#open!.old.update(a);
    this.#open!.new.update(b);
  }

  /** Equal bytes (or a common hole) come next: the open range, if any, ends. */
  close(): void {
    const open = this.#open;
    if (!open) return;
    this.ranges.push({
      offset: open.offset,
      length: open.length,
      oldSha256: open.old.digest('hex'),
      newSha256: open.new.digest('hex'),
    });
    this.#open = undefined;
    if (this.ranges.length > this.maxRanges) throw tooScattered(this.maxRanges);
  }
}

/**
 * The JavaScript comparison: chunk by chunk through two buffer pairs, the
 * next pair read while the current one is compared; an equal chunk costs one
 * memcmp, a different one is compared block by block.
 */
async function diffInJs(
  base: BlockSource,
  patched: BlockSource,
  union: readonly [number, number][],
  { blockSize, chunkSize, maxRangeBytes, maxRanges }: Settings,
  onProgress: Progress | undefined,
): Promise<{ ranges: DiffRange[]; changedBytes: number }> {
  const size = base.size;
  const builder = new RangeBuilder(maxRangeBytes, maxRanges);
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
    if (position !== previousEnd) builder.close();
    previousEnd = position + length;
    compareChunk(builder, position, a, b, blockSize);
    onProgress?.(position + length, size);
  }
  builder.close();
  if (previousEnd < size || size === 0) onProgress?.(size, size);
  return { ranges: builder.ranges, changedBytes: builder.changedBytes };
}

/** One chunk pair: equal as a whole (one memcmp), else block by block. */
function compareChunk(builder: RangeBuilder, position: number, a: Buffer, b: Buffer, blockSize: number): void {
  if (a.equals(b)) {
    builder.close();
    return;
  }
  for (let o = 0; o < a.length; o += blockSize) {
    const end = Math.min(o + blockSize, a.length);
    const blockA = a.subarray(o, end);
    const blockB = b.subarray(o, end);
    if (blockA.equals(blockB)) builder.close();
    else builder.changed(position + o, blockA, blockB);
  }
}

/**
 * The native comparison: the union of data segments is cut into jobs of at
 * most NATIVE_SPAN bytes, NATIVE_JOBS queued at once on the thread pool
 * (nativeJobs). The main thread takes the jobs' runs in order while the later
 * jobs are still being compared: merges runs that abut across a job boundary,
 * cuts them at maxRangeBytes and hashes each range (NativeRanges).
 */
async function diffNative(
  native: NativeDiff,
  base: BlockSource,
  patched: BlockSource,
  union: readonly [number, number][],
  { blockSize, maxRangeBytes, maxRanges }: Settings,
  onProgress: (done: number) => void,
): Promise<{ ranges: DiffRange[]; changedBytes: number; newData?: Buffer[] }> {
  const jobs: [number, number][] = [];
  for (const [start, length] of union) {
    for (let p = start; p < start + length; p += NATIVE_SPAN) jobs.push([p, Math.min(NATIVE_SPAN, start + length - p)]);
  }
  const compared = nativeJobs(jobs, (offset, length) => compareJob(native, base, patched, offset, length, blockSize));
  const out = new NativeRanges(base.fd!, patched.fd!, maxRangeBytes, maxRanges, (b) => native.prefault(b));
  let done = 0;
  try {
    for (let i = 0; i < jobs.length; i++) {
      const runs = await compared.results[i]!;
      for (let k = 0; k < runs.length; k += 2) out.run(runs[k]!, runs[k + 1]!);
      done += jobs[i]![1];
      onProgress(done);
    }
    out.flush();
  } finally {
    await compared.stop();
  }
  return out.result();
}

/** One job of the native comparison: the changed runs of [offset, offset + length), as offset/length pairs. */
async function compareJob(
  native: NativeDiff,
  base: BlockSource,
  patched: BlockSource,
  offset: number,
  length: number,
  blockSize: number,
): Promise<Float64Array> {
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
}

/**
 * Runs `work` over the jobs, NATIVE_JOBS started at a time, in order; each
 * job's result is a promise awaited in order by the caller. After a failure
 * no further job starts and every later result rejects with it. `stop()`
 * starts no more jobs and waits for those running.
 */
function nativeJobs<T>(
  jobs: readonly [number, number][],
  work: (offset: number, length: number) => Promise<T>,
): { results: Promise<T>[]; stop(): Promise<void> } {
  const settles: { resolve: (v: T) => void; reject: (e: unknown) => void }[] = [];
  const results = jobs.map((_, i) => {
    const promise = new Promise<T>((resolve, reject) => (settles[i] = { resolve, reject }));
    promise.catch(() => undefined); // awaited in order; a later job's failure must not go unhandled meanwhile
    return promise;
  });
  let next = 0;
  let stopped = false;
  const worker = async (): Promise<void> => {
    while (next < jobs.length && !stopped) {
      const i = next++;
      try {
        settles[i]!.resolve(await work(...jobs[i]!));
      } catch (e) {
        stopped = true;
        for (let k = i; k < jobs.length; k++) settles[k]!.reject(e);
        next = jobs.length;
      }
    }
  };
  const workers = Promise.all(Array.from({ length: Math.min(NATIVE_JOBS, jobs.length) }, worker));
  return {
    results,
    async stop() {
      stopped = true;
      await workers;
    },
  };
}

/**
 * The native comparison's runs into ranges: abutting runs merge (they may
 * continue across a job boundary), each range is cut at the cap and hashed by
 * reading both files again (synchronously: the blocks were just read and come
 * from the page cache). The new bytes are kept, up to RETAIN_BYTES in all, for
 * the bundle writer. Their buffers are faulted in by `prefault` when allocated
 * (NativeDiff.prefault).
 */
class NativeRanges {
  readonly #ranges: DiffRange[] = [];
  #changedBytes = 0;
  #newData: Buffer[] | undefined = [];
  readonly #retained: Retained;
  readonly #scratch: Buffer;
  /** The last run seen; it may go on in the next job. */
  #open: [number, number] | undefined;

  constructor(
    private readonly fdA: number,
    private readonly fdB: number,
    private readonly maxRangeBytes: number,
    private readonly maxRanges: number,
    prefault: (buffer: Buffer) => Buffer,
  ) {
    this.#retained = new Retained(prefault);
    this.#scratch = prefault(Buffer.allocUnsafe(HASH_READ));
  }

  run(offset: number, length: number): void {
    const open = this.#open;
    if (open && open[0] + open[1] === offset) {
      open[1] += length;
      return;
    }
    if (open) this.#emit(open[0], open[1]);
    this.#open = [offset, length];
  }

  flush(): void {
    if (this.#open) this.#emit(this.#open[0], this.#open[1]);
    this.#open = undefined;
  }

  result(): { ranges: DiffRange[]; changedBytes: number; newData?: Buffer[] } {
    return {
      ranges: this.#ranges,
      changedBytes: this.#changedBytes,
      ...(this.#newData ? { newData: this.#newData } : {}),
    };
  }

  #emit(offset: number, length: number): void {
    for (let p = 0; p < length; p += this.maxRangeBytes) {
      if (this.#ranges.length === this.maxRanges) throw tooScattered(this.maxRanges);
      const r = { offset: offset + p, length: Math.min(this.maxRangeBytes, length - p) };
      const keep = this.#newData !== undefined ? this.#retained.take(r.length) : undefined;
      if (keep === undefined) this.#newData = undefined;
      const hashes = hashRange(this.fdA, this.fdB, r.offset, r.length, this.#scratch, keep);
      this.#ranges.push({ ...r, oldSha256: hashes.old, newSha256: hashes.new });
      this.#changedBytes += r.length;
      this.#newData?.push(hashes.data!);
    }
  }
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
 * Each allocation goes through `prefault` (one system call for its pages
 * instead of a fault per page as it is filled).
 */
class Retained {
  #slab: Buffer = Buffer.alloc(0);
  #used = 0;
  #total = 0;
  constructor(private readonly prefault: (buffer: Buffer) => Buffer) {}
  /** A buffer of `length` bytes, or undefined once the limit would be passed. */
  take(length: number): Buffer | undefined {
    if (this.#total + length > RETAIN_BYTES) return undefined;
    this.#total += length;
    if (length > SLAB_BYTES / 4) return this.prefault(Buffer.allocUnsafe(length));
    if (this.#used + length > this.#slab.length) {
      this.#slab = this.prefault(Buffer.allocUnsafe(SLAB_BYTES));
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
  // qemu-nbd and the NBD client load only for a qcow2 image.
  if (format === 'qcow2') {
    const { Qcow2Source } = await import('./qcow2.js');
    return Object.assign(await Qcow2Source.open(path), { format } as const);
  }
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
