import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  isQemuLock,
  locksOn,
  substitute,
  type BlockTarget,
  type BundleData,
} from '../../../../host-signal/src/apply/index.js';
import { planBundle, type BundleRange } from '../../../../host-signal/src/bundle/index.js';
import { bufferSource, diffSources } from '../../../../host-signal/src/diff/index.js';
import { BaseMismatchError, BundleError, CancelledError, TargetError } from '../../../../host-signal/src/errors.js';
import { KiB, image, patch } from '../fixtures.js';

const B = 4 * KiB;
const SIZE = 256 * KiB;

/** A bundle held in memory: the manifest plus the patched image as its data. */
async function memoryBundle(base: Buffer, patched: Buffer, verified = true): Promise<BundleData> {
  const d = await diffSources(bufferSource(base), bufferSource(patched));
  const { manifest } = planBundle({ base: { size: base.length }, blockSize: d.blockSize, ranges: d.ranges });
  return {
    manifest,
    verified,
    async readData(r: BundleRange, from = 0, length = r.length - from) {
      return Buffer.from(patched.subarray(r.offset + from, r.offset + from + length));
    },
  };
}

/** A disk in memory that records every write. */
function memoryTarget(disk: Buffer): BlockTarget & { writes: [number, number][]; flushes: number } {
  const t = {
    size: disk.length,
    writes: [] as [number, number][],
    flushes: 0,
    async read(offset: number, length: number) {
      return Buffer.from(disk.subarray(offset, offset + length));
    },
    async write(offset: number, data: Buffer) {
      t.writes.push([offset, data.length]);
      data.copy(disk, offset);
    },
    async flush() {
      t.flushes++;
    },
  };
  return t;
}

const Core = suite('apply: verify then write');
const EDITS: [number, number][] = [
  [B, 1],
  [10 * B, 2 * B],
  [40 * B, 1],
];

Core('writes exactly the changed ranges, then flushes', async () => {
  const base = image(SIZE);
  const patched = patch(base, EDITS);
  const disk = Buffer.from(base);
  const target = memoryTarget(disk);
  const r = await substitute(await memoryBundle(base, patched), target);
  assert.is(r.status, 'applied');
  assert.equal(target.writes, [
    [B, B],
    [10 * B, 2 * B],
    [40 * B, B],
  ]);
  assert.is(target.flushes, 1);
  assert.is(r.bytesWritten, 4 * B);
  assert.is(r.rangesWritten, 3);
  assert.ok(disk.equals(patched));
});

Core('a disk that already holds the new blocks is reported already-applied and not written', async () => {
  const base = image(SIZE);
  const patched = patch(base, EDITS);
  const target = memoryTarget(Buffer.from(patched));
  const r = await substitute(await memoryBundle(base, patched), target);
  assert.is(r.status, 'already-applied');
  assert.equal(target.writes, []);
  assert.is(target.flushes, 0);
  assert.is(r.bytesWritten, 0);
});

Core('a range holding neither old nor new content refuses the whole bundle and writes nothing', async () => {
  const base = image(SIZE);
  const patched = patch(base, EDITS);
  const disk = patch(base, [[10 * B + 100, 1]]); // the guest wrote into a changed block
  const before = Buffer.from(disk);
  const target = memoryTarget(disk);
  const err = await substitute(await memoryBundle(base, patched), target).catch((e: unknown) => e);
  assert.instance(err, BaseMismatchError);
  assert.match(
    (err as Error).message,
    /not based on this bundle's base: 1 of 3 ranges hold neither.*8192 bytes at offset 40960/,
  );
  assert.equal((err as BaseMismatchError).ranges, [{ offset: 10 * B, length: 2 * B }]);
  assert.equal(target.writes, []);
  assert.ok(disk.equals(before));
});

Core('a partly applied disk gets only the ranges still holding old content', async () => {
  const base = image(SIZE);
  const patched = patch(base, EDITS);
  const disk = Buffer.from(base);
  patched.copy(disk, B, B, 2 * B); // the first range was written by an interrupted apply
  const target = memoryTarget(disk);
  const r = await substitute(await memoryBundle(base, patched), target);
  assert.is(r.status, 'applied');
  assert.is(r.rangesAlreadyNew, 1);
  assert.equal(target.writes, [
    [10 * B, 2 * B],
    [40 * B, B],
  ]);
  assert.ok(disk.equals(patched));
});

Core('a target of another size is refused before anything is read', async () => {
  const base = image(SIZE);
  const target = memoryTarget(Buffer.alloc(SIZE * 2));
  let reads = 0;
  const read = target.read;
  target.read = (o, l) => (reads++, read(o, l));
  const err = await substitute(await memoryBundle(base, patch(base, EDITS)), target).catch((e: unknown) => e);
  assert.instance(err, BaseMismatchError);
  assert.match(
    (err as Error).message,
    /target is not based on this bundle's base: the target is 524288 bytes, the base image was 262144 bytes/,
  );
  assert.is(reads, 0);
});

Core('an unverified bundle is refused', async () => {
  const base = image(SIZE);
  const err = await substitute(
    await memoryBundle(base, patch(base, EDITS), false),
    memoryTarget(Buffer.from(base)),
  ).catch((e: unknown) => e);
  assert.instance(err, BundleError);
});

Core('bundle data that no longer matches its hash is never written', async () => {
  const base = image(SIZE);
  const patched = patch(base, EDITS);
  const bundle = await memoryBundle(base, patched);
  const evil: BundleData = {
    ...bundle,
    manifest: bundle.manifest,
    verified: true,
    readData: async (r) => Buffer.alloc(r.length, 7),
  };
  const target = memoryTarget(Buffer.from(base));
  const err = await substitute(evil, target).catch((e: unknown) => e);
  assert.instance(err, BundleError);
  assert.equal(target.writes, []);
});

Core('a write failing part-way is reported with how to finish, and a second run completes the disk', async () => {
  const base = image(SIZE);
  const patched = patch(base, EDITS);
  const bundle = await memoryBundle(base, patched);
  const disk = Buffer.from(base);
  const target = memoryTarget(disk);
  const write = target.write;
  target.write = async (offset, data) => {
    if (offset === 40 * B) throw new Error('EIO');
    return write(offset, data);
  };
  const err = await substitute(bundle, target).catch((e: unknown) => e);
  assert.instance(err, TargetError);
  assert.match((err as Error).message, /writing failed after 12288 of 16384 bytes: EIO/);
  assert.match((err as TargetError).hint ?? '', /apply the same bundle again/);
  target.write = write;
  const r = await substitute(bundle, target);
  assert.is(r.rangesWritten, 1);
  assert.is(r.rangesAlreadyNew, 2);
  assert.ok(disk.equals(patched));
});

Core('cancellation before writing writes nothing', async () => {
  const base = image(SIZE);
  const target = memoryTarget(Buffer.from(base));
  const ac = new AbortController();
  ac.abort();
  const err = await substitute(await memoryBundle(base, patch(base, EDITS)), target, { signal: ac.signal }).catch(
    (e: unknown) => e,
  );
  assert.instance(err, CancelledError);
  assert.equal(target.writes, []);
});

Core('progress reports the verify and write phases', async () => {
  const base = image(SIZE);
  const phases = new Set<string>();
  let lastWrite = 0;
  await substitute(await memoryBundle(base, patch(base, EDITS)), memoryTarget(Buffer.from(base)), {
    onProgress: (phase, done) => {
      phases.add(phase);
      if (phase === 'write') lastWrite = done;
    },
  });
  assert.equal([...phases], ['verify', 'write']);
  assert.is(lastWrite, 4 * B);
});

const Locks = suite('apply: /proc/locks');
const dev = (major: number, minor: number): bigint => BigInt((major << 8) | minor);

Locks('finds OFD locks on the file by device and inode', () => {
  const text = '1: OFDLCK ADVISORY  READ  -1 fe:00:2154772 100 101\n2: POSIX  ADVISORY  WRITE 812 08:01:99 0 EOF\n';
  assert.equal(locksOn(text, dev(0xfe, 0), 2154772n), [
    { kind: 'OFDLCK', access: 'READ', pid: -1, start: 100, end: 101 },
  ]);
  assert.equal(locksOn(text, dev(8, 1), 99n), [{ kind: 'POSIX', access: 'WRITE', pid: 812, start: 0, end: Infinity }]);
});

Locks("tells QEMU's permission-byte locks from other locks", () => {
  const text =
    '1: OFDLCK ADVISORY  READ  -1 fe:00:7 100 101\n2: OFDLCK ADVISORY  WRITE -1 fe:00:7 0 EOF\n3: POSIX  ADVISORY  READ 9 fe:00:7 100 100\n';
  assert.equal(locksOn(text, dev(0xfe, 0), 7n).map(isQemuLock), [true, false, false]);
});

Locks('ignores locks on other files and blocked-waiter markers', () => {
  const text = '1: FLOCK  ADVISORY  WRITE 77 fe:00:5 0 EOF\n1: -> FLOCK  ADVISORY  WRITE 78 fe:00:5 0 EOF\n';
  assert.equal(locksOn(text, dev(0xfe, 0), 6n), []);
  assert.is(locksOn(text, dev(0xfe, 0), 5n).length, 2);
});

Core.run();
Locks.run();
