/**
 * The verify-then-write logic shared by every target (a QEMU drive through
 * NBD, a raw image file): check the size, read each range and classify it as
 * holding the old bytes, the new bytes or neither; refuse if any holds
 * neither, do nothing if all hold the new bytes, otherwise write the ranges
 * that still hold the old bytes and flush. Nothing is written unless every
 * range was verified first.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { BundleRange, Manifest } from '@vmsubst/common/bundle/schema';
import { BaseMismatchError, BundleError, CancelledError, TargetError } from '../errors.js';

/** Bytes read from or written to a target per request. */
export const IO_CHUNK = 4 << 20;
/** Requests kept in flight, so the target's latency overlaps with hashing and with itself. */
export const IO_DEPTH = 4;
/** Writes kept in flight: many small ones (a bundle of small ranges) or IO_DEPTH full chunks. */
const WRITE_DEPTH = 32;
const WRITE_BYTES_IN_FLIGHT = IO_DEPTH * IO_CHUNK;

/** Where the blocks go. */
export interface BlockTarget {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  /** Makes the writes durable. */
  flush(): Promise<void>;
}

/** What the core needs of a bundle (Bundle provides it). */
export interface BundleData {
  readonly manifest: Manifest;
  /** Where the bundle is, when it is a file (recorded for recovery). */
  readonly path?: string;
  /** True once every range's data matched its new-sha256. */
  readonly verified: boolean;
  readData(range: BundleRange, from?: number, length?: number): Promise<Buffer>;
}

export type RangeState = 'old' | 'new' | 'neither';
export type ApplyPhase = 'verify' | 'write';
export type ApplyProgress = (phase: ApplyPhase, done: number, total: number) => void;

export interface Inspection {
  states: RangeState[];
  /** Bytes read from the target to classify the ranges. */
  verifiedBytes: number;
}

export type SubstitutionStatus = 'applied' | 'already-applied' | 'no-changes';

export interface Substitution {
  status: SubstitutionStatus;
  ranges: number;
  rangesWritten: number;
  /** Ranges that already held the new bytes (an earlier, interrupted apply). */
  rangesAlreadyNew: number;
  bytesWritten: number;
  verifiedBytes: number;
  /** Time spent reading and hashing the target's ranges, and writing plus flushing, in ms. */
  timingsMs: { verify: number; write: number };
}

export interface SubstituteOptions {
  onProgress?: ApplyProgress;
  /** Checked after verifying, before the first write. */
  signal?: AbortSignal;
}

/** A substitution's counts before anything is read or written (the result of one that changes nothing). */
export function nothingDone(manifest: Manifest): Substitution {
  return {
    status: 'no-changes',
    ranges: manifest.ranges.length,
    rangesWritten: 0,
    rangesAlreadyNew: 0,
    bytesWritten: 0,
    verifiedBytes: 0,
    timingsMs: { verify: 0, write: 0 },
  };
}

/** Refuses a target whose size is not the base image's. */
export function checkTargetSize(manifest: Manifest, size: number, what: string): void {
  if (size !== manifest.base.size) {
    throw new BaseMismatchError(
      `target is not based on this bundle's base: ${what} is ${size} bytes, the base image was ` +
        `${manifest.base.size} bytes`,
      [],
      'apply the bundle to a disk cloned from the image it was made from; nothing was written',
    );
  }
}

/** Reads every range of the target and classifies it against the manifest's hashes. */
export async function inspectTarget(
  manifest: Manifest,
  target: BlockTarget,
  onProgress?: ApplyProgress,
): Promise<Inspection> {
  const jobs: { range: number; offset: number; length: number }[] = [];
  manifest.ranges.forEach((r, range) => {
    for (let pos = 0; pos < r.length; pos += IO_CHUNK)
      jobs.push({ range, offset: r.offset + pos, length: Math.min(IO_CHUNK, r.length - pos) });
  });
  const total = jobs.reduce((n, j) => n + j.length, 0);
  const hashes = manifest.ranges.map(() => createHash('sha256'));
  let done = 0;
  // Reads complete in any order but are hashed in order: a window of IO_DEPTH outstanding reads.
  const window: Promise<Buffer>[] = [];
  let next = 0;
  for (const job of jobs) {
    while (window.length < IO_DEPTH && next < jobs.length) {
      const j = jobs[next++]!;
      const p = target.read(j.offset, j.length);
      p.catch(() => undefined); // awaited below; keeps a later failure from being reported as unhandled
      window.push(p);
    }
    const data = await window.shift()!;
    hashes[job.range]!.update(data);
    done += job.length;
    onProgress?.('verify', done, total);
  }
  const states = manifest.ranges.map((r, i): RangeState => {
    const digest = hashes[i]!.digest('hex');
    return digest === r['old-sha256'] ? 'old' : digest === r['new-sha256'] ? 'new' : 'neither';
  });
  return { states, verifiedBytes: done };
}

/** Throws BaseMismatchError naming the first few ranges that hold neither content. */
export function refuseMismatch(manifest: Manifest, states: readonly RangeState[]): void {
  const bad = manifest.ranges.filter((_r, i) => states[i] === 'neither');
  if (bad.length === 0) return;
  const shown = bad.slice(0, 4).map((r) => `${r.length} bytes at offset ${r.offset}`);
  if (bad.length > shown.length) shown.push(`and ${bad.length - shown.length} more`);
  throw new BaseMismatchError(
    `target is not based on this bundle's base: ${bad.length} of ${manifest.ranges.length} ranges hold neither the ` +
      `old nor the new content (${shown.join(', ')}); nothing was written`,
    bad.map((r) => ({ offset: r.offset, length: r.length })),
  );
}

/** Most bundle data held in memory so that a pause covers only the writes (larger bundles are read while paused). */
export const PRELOAD_MAX = 256 << 20;

/**
 * Reads and checks the data of the ranges marked 'old', so writing it later needs no reads; undefined when it is too
 * large.
 */
export async function loadRanges(
  bundle: BundleData,
  states: readonly RangeState[],
  max = PRELOAD_MAX,
): Promise<Map<BundleRange, Buffer> | undefined> {
  const todo = bundle.manifest.ranges.filter((_r, i) => states[i] === 'old');
  if (todo.reduce((n, r) => n + r.length, 0) > max) return undefined;
  const out = new Map<BundleRange, Buffer>();
  for (const r of todo) out.set(r, await checkedData(bundle, r));
  return out;
}

async function checkedData(bundle: BundleData, r: BundleRange): Promise<Buffer> {
  const data = await bundle.readData(r);
  if (createHash('sha256').update(data).digest('hex') !== r['new-sha256']) {
    throw new BundleError(
      `the bundle's data for the range at offset ${r.offset} changed after it was verified`,
      [],
      'do not modify a bundle while it is being applied; re-run apply',
    );
  }
  return data;
}

export interface WriteOptions {
  onProgress?: ApplyProgress;
  /** Data from loadRanges (already checked); other ranges are read and checked just before they are written. */
  preloaded?: ReadonlyMap<BundleRange, Buffer>;
  /** Flush the target at the end (default true). */
  flush?: boolean;
}

/**
 * Writes the ranges marked 'old', each checked against its new-sha256 just
 * before it is written, with up to IO_DEPTH writes in flight; then flushes.
 * A failure part-way leaves some ranges new and some old, which a second
 * apply completes (it writes only the ranges still holding old content).
 */
export async function writeRanges(
  bundle: BundleData,
  target: BlockTarget,
  states: readonly RangeState[],
  options: WriteOptions = {},
): Promise<{ rangesWritten: number; bytesWritten: number }> {
  const { onProgress, preloaded } = options;
  const todo = bundle.manifest.ranges.filter((_r, i) => states[i] === 'old');
  const total = todo.reduce((n, r) => n + r.length, 0);
  let bytesWritten = 0;
  let bytesInFlight = 0;
  const inflight = new Set<Promise<void>>();
  let failure: unknown;
  const submit = async (offset: number, chunk: Buffer): Promise<void> => {
    while (inflight.size >= WRITE_DEPTH || (inflight.size > 0 && bytesInFlight + chunk.length > WRITE_BYTES_IN_FLIGHT))
      await Promise.race(inflight);
    if (failure !== undefined) return;
    bytesInFlight += chunk.length;
    const p: Promise<void> = target
      .write(offset, chunk)
      .then(
        () => {
          bytesWritten += chunk.length;
          onProgress?.('write', bytesWritten, total);
        },
        (e: unknown) => {
          failure ??= e;
        },
      )
      .finally(() => {
        bytesInFlight -= chunk.length;
        inflight.delete(p);
      });
    inflight.add(p);
  };
  for (const r of todo) {
    if (failure !== undefined) break;
    let data: Buffer;
    try {
      data = preloaded?.get(r) ?? (await checkedData(bundle, r));
    } catch (e) {
      failure ??= e;
      break;
    }
    for (let pos = 0; pos < r.length && failure === undefined; pos += IO_CHUNK) {
      await submit(r.offset + pos, data.subarray(pos, Math.min(r.length, pos + IO_CHUNK)));
    }
  }
  await Promise.all(inflight);
  if (failure !== undefined) {
    if (bytesWritten === 0) throw failure;
    throw new TargetError(
      `writing failed after ${bytesWritten} of ${total} bytes: ${(failure as Error).message}`,
      'the disk now holds some new ranges and some old ones; once the cause is fixed, apply the same bundle again ' +
        'to write the rest',
      { cause: failure },
    );
  }
  if (todo.length > 0 && options.flush !== false) await target.flush();
  return { rangesWritten: todo.length, bytesWritten };
}

/** Verify, then write what is needed. The caller holds the target still (VM paused, or image not in use). */
export async function substitute(
  bundle: BundleData,
  target: BlockTarget,
  options: SubstituteOptions = {},
): Promise<Substitution> {
  const { manifest } = bundle;
  if (!bundle.verified)
    throw new BundleError("the bundle's data has not been verified", [], 'open the bundle with data verification');
  checkTargetSize(manifest, target.size, 'the target');
  const ranges = manifest.ranges.length;
  if (ranges === 0) {
    return {
      status: 'no-changes',
      ranges,
      rangesWritten: 0,
      rangesAlreadyNew: 0,
      bytesWritten: 0,
      verifiedBytes: 0,
      timingsMs: { verify: 0, write: 0 },
    };
  }
  const t0 = performance.now();
  const { states, verifiedBytes } = await inspectTarget(manifest, target, options.onProgress);
  const verify = ms(performance.now() - t0);
  refuseMismatch(manifest, states);
  const rangesAlreadyNew = states.filter((s) => s === 'new').length;
  if (rangesAlreadyNew === ranges) {
    return {
      status: 'already-applied',
      ranges,
      rangesWritten: 0,
      rangesAlreadyNew,
      bytesWritten: 0,
      verifiedBytes,
      timingsMs: { verify, write: 0 },
    };
  }
  if (options.signal?.aborted) throw new CancelledError('cancelled before writing');
  const t1 = performance.now();
  const { rangesWritten, bytesWritten } = await writeRanges(
    bundle,
    target,
    states,
    options.onProgress ? { onProgress: options.onProgress } : {},
  );
  return {
    status: 'applied',
    ranges,
    rangesWritten,
    rangesAlreadyNew,
    bytesWritten,
    verifiedBytes,
    timingsMs: { verify, write: ms(performance.now() - t1) },
  };
}

/** Milliseconds to one decimal, as results report them. */
export const ms = (n: number): number => Math.round(n * 10) / 10;
