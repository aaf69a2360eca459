import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, writeSync } from 'node:fs';
import {
  FileSource,
  bufferSource,
  diffImages,
  diffSources,
  mergeSegments,
  openImage,
  type BlockSource,
  type Segment,
} from '../../../../host-signal/src/diff/index.js';
import { DiffError } from '../../../../host-signal/src/errors.js';
import { MAX_RANGE_BYTES } from '@vmsubst/common/protocol/schema';
import { KiB, MiB, TempDir, image, patch, sha256 } from '../fixtures.js';

const Diff = suite('diff');
const B = 4 * KiB;

const diff = (a: Buffer, b: Buffer, opts = {}) => diffSources(bufferSource(a), bufferSource(b), opts);

Diff('identical images give no ranges', async () => {
  const base = image(1 * MiB);
  const r = await diff(base, Buffer.from(base));
  assert.equal(r.ranges, []);
  assert.is(r.changedBytes, 0);
  assert.is(r.size, 1 * MiB);
  assert.is(r.blockSize, B);
});

Diff('one changed byte gives one block-sized range with old and new hashes', async () => {
  const base = image(1 * MiB);
  const patched = patch(base, [[3 * B + 17, 1]]);
  const r = await diff(base, patched);
  assert.is(r.ranges.length, 1);
  const [range] = r.ranges;
  assert.equal({ offset: range!.offset, length: range!.length }, { offset: 3 * B, length: B });
  assert.is(range!.oldSha256, sha256(base.subarray(3 * B, 4 * B)));
  assert.is(range!.newSha256, sha256(patched.subarray(3 * B, 4 * B)));
  assert.is(r.changedBytes, B);
});

Diff('adjacent changed blocks merge into one range', async () => {
  const base = image(1 * MiB);
  const patched = patch(base, [[10 * B + 5, 2 * B]]); // touches blocks 10, 11, 12
  const r = await diff(base, patched);
  assert.equal(
    r.ranges.map((x) => [x.offset, x.length]),
    [[10 * B, 3 * B]],
  );
  assert.is(r.ranges[0]!.newSha256, sha256(patched.subarray(10 * B, 13 * B)));
});

Diff('separate changes give separate, sorted ranges', async () => {
  const base = image(1 * MiB);
  const patched = patch(base, [
    [0, 1],
    [2 * B, 1],
    [100 * B, B],
  ]);
  const r = await diff(base, patched);
  assert.equal(
    r.ranges.map((x) => [x.offset, x.length]),
    [
      [0, B],
      [2 * B, B],
      [100 * B, B],
    ],
  );
});

Diff('a run crossing a read-chunk boundary stays one range', async () => {
  const base = image(256 * KiB);
  const patched = patch(base, [[64 * KiB - B, 2 * B]]);
  const r = await diff(base, patched, { chunkSize: 64 * KiB });
  assert.equal(
    r.ranges.map((x) => [x.offset, x.length]),
    [[64 * KiB - B, 2 * B]],
  );
  assert.is(r.ranges[0]!.oldSha256, sha256(base.subarray(64 * KiB - B, 64 * KiB + B)));
});

Diff('a run longer than the cap is split at the cap', async () => {
  const base = image(1 * MiB);
  const patched = patch(base, [[0, 5 * B]]);
  const r = await diff(base, patched, { maxRangeBytes: 2 * B });
  assert.equal(
    r.ranges.map((x) => [x.offset, x.length]),
    [
      [0, 2 * B],
      [2 * B, 2 * B],
      [4 * B, B],
    ],
  );
  for (const x of r.ranges) assert.is(x.newSha256, sha256(patched.subarray(x.offset, x.offset + x.length)));
});

Diff("the default cap is the protocol's MAX_RANGE_BYTES", async () => {
  const size = MAX_RANGE_BYTES + 2 * B;
  const base = Buffer.alloc(size);
  const patched = Buffer.alloc(size, 1);
  const r = await diff(base, patched);
  assert.equal(
    r.ranges.map((x) => [x.offset, x.length]),
    [
      [0, MAX_RANGE_BYTES],
      [MAX_RANGE_BYTES, 2 * B],
    ],
  );
});

Diff('a partial last block is a range ending the image', async () => {
  const base = image(10 * B + 100);
  const patched = patch(base, [[10 * B + 99, 1]]);
  const r = await diff(base, patched);
  assert.equal(
    r.ranges.map((x) => [x.offset, x.length]),
    [[10 * B, 100]],
  );
});

Diff('images of different sizes are refused with DiffError', async () => {
  const err = await diff(image(2 * B), image(3 * B)).catch((e: unknown) => e);
  assert.instance(err, DiffError);
  assert.is((err as DiffError).code, 'E_VMSUBST_DIFF');
  assert.match((err as DiffError).message, /differ in size/);
});

Diff('more ranges than a substitution carries is refused', async () => {
  const base = image(64 * B);
  const edits: [number, number][] = [];
  for (let i = 0; i < 64; i += 2) edits.push([i * B, 1]);
  const err = await diff(base, patch(base, edits), { maxRanges: 8 }).catch((e: unknown) => e);
  assert.instance(err, DiffError);
  assert.match((err as Error).message, /too scattered/);
});

Diff('progress reaches the image size', async () => {
  const base = image(1 * MiB);
  const seen: [number, number][] = [];
  await diff(base, Buffer.from(base), {
    chunkSize: 256 * KiB,
    onProgress: (d: number, t: number) => seen.push([d, t]),
  });
  assert.equal(seen, [
    [256 * KiB, MiB],
    [512 * KiB, MiB],
    [768 * KiB, MiB],
    [MiB, MiB],
  ]);
});

const Files = suite('diff: image files');
const tmp = new TempDir();
Files.after(() => tmp.remove());

Files('diffImages compares two files', async () => {
  const base = image(5 * MiB);
  const patched = patch(base, [[4 * MiB + 3, 1]]);
  const r = await diffImages(tmp.file('a.img', base), tmp.file('b.img', patched));
  assert.equal(
    r.ranges.map((x) => [x.offset, x.length]),
    [[4 * MiB, B]],
  );
});

Files('the native comparison finds exactly the ranges and hashes of the JavaScript one', async () => {
  // 130 MiB + 512 bytes: three native jobs (64 MiB), a run across a job boundary, a run longer
  // than the cap, alternating blocks, a partial last block; sparse, with a hole against data.
  const size = 130 * MiB + 512;
  const base = image(size);
  base.fill(0, 100 * MiB, 110 * MiB);
  const patched = patch(base, [
    [5000, 1],
    [64 * MiB - 3 * B, 6 * B],
    [70 * MiB, 3 * MiB],
    [size - 100, 1],
  ]);
  for (let i = 0; i < 64; i += 2) patched[90 * MiB + i * B + 7] = ~base[90 * MiB + i * B + 7]! & 0xff;
  patched.fill(0x11, 105 * MiB, 105 * MiB + B);
  const a = tmp.file('na.img', base);
  const b = tmp.file('nb.img', patched);
  execFileSync('fallocate', ['--dig-holes', a]);
  const opts = { maxRangeBytes: MiB };
  const open = async () => [await FileSource.open(a), await FileSource.open(b)] as const;
  const [a1, b1] = await open();
  const seen: number[] = [];
  const fast = await diffSources(a1, b1, { ...opts, onProgress: (d) => seen.push(d) });
  const [a2, b2] = await open();
  const slow = await diffSources(a2, b2, { ...opts, native: false });
  await Promise.all([a1, b1, a2, b2].map((x) => x.close()));
  assert.equal(fast, slow);
  assert.is(slow.newData, undefined);
  assert.equal(fast.newData?.length, fast.ranges.length, 'the native comparison keeps the new bytes');
  fast.ranges.forEach((r, i) =>
    assert.ok(fast.newData![i]!.equals(patched.subarray(r.offset, r.offset + r.length)), `new bytes of range ${i}`),
  );
  assert.is(fast.ranges.length, 1 + 1 + 3 + 32 + 1 + 1);
  assert.ok(
    fast.ranges.some((r) => r.offset < 64 * MiB && r.offset + r.length > 64 * MiB),
    'a range across the job boundary',
  );
  assert.equal(fast.ranges.at(-1)!.offset + fast.ranges.at(-1)!.length, size, 'the partial last block');
  assert.is(seen.at(-1), fast.readBytes);
});

Files('a missing image is a DiffError naming its role', async () => {
  const err = await diffImages(tmp.file('nope.img'), tmp.file('a.img')).catch((e: unknown) => e);
  assert.instance(err, DiffError);
  assert.match((err as Error).message, /base image/);
});

Diff('mergeSegments widens to blocks, merges overlaps and treats unknown as everything', () => {
  assert.equal(mergeSegments([[[100, 10]], [[4096, 1]]], B, 16 * B), [[0, 2 * B]]);
  assert.equal(mergeSegments([[[0, B]], [[3 * B, B]]], B, 16 * B), [
    [0, B],
    [3 * B, B],
  ]);
  assert.equal(mergeSegments([[[15 * B, 2 * B]], []], B, 16 * B), [[15 * B, B]]);
  assert.equal(mergeSegments([[[0, B]], undefined], B, 16 * B), [[0, 16 * B]]);
  assert.equal(mergeSegments([[], []], B, 16 * B), []);
});

/** A buffer source that declares where its data is (the rest must be zeros). */
function sparseSource(data: Buffer, segments: Segment[]): BlockSource {
  return { ...bufferSource(data), dataSegments: async () => segments };
}

Diff('holes: only the union of data is read, and a hole against data is compared', async () => {
  const size = 64 * B;
  const base = Buffer.alloc(size);
  const patched = Buffer.alloc(size);
  image(4 * B).copy(base, 8 * B); // base data, patched hole: changed
  image(B).copy(patched, 20 * B); // base hole, patched data: changed
  Buffer.alloc(B, 0).copy(base, 30 * B); // base zeros written, patched hole: equal
  const shared = image(2 * B);
  shared.copy(base, 40 * B);
  shared.copy(patched, 40 * B);
  patched[41 * B + 5] = patched[41 * B + 5]! ^ 1; // both data, one byte differs
  const sparse = await diffSources(
    sparseSource(base, [
      [8 * B, 4 * B],
      [30 * B, B],
      [40 * B, 2 * B],
    ]),
    sparseSource(patched, [
      [20 * B, B],
      [40 * B, 2 * B],
    ]),
    { chunkSize: 2 * B },
  );
  const dense = await diff(base, patched);
  assert.equal(sparse.ranges, dense.ranges);
  assert.equal(
    sparse.ranges.map((r) => [r.offset / B, r.length / B]),
    [
      [8, 4],
      [20, 1],
      [41, 1],
    ],
  );
  assert.is(sparse.readBytes, 8 * B);
  assert.is(dense.readBytes, size);
});

Files('sparse files: SEEK_DATA/SEEK_HOLE skip holes, same ranges as a full read', async () => {
  const size = 32 * MiB;
  const make = (name: string, writes: [number, Buffer][]): string => {
    const path = tmp.file(name);
    execFileSync('truncate', ['-s', String(size), path]);
    const fd = openSync(path, 'r+');
    for (const [at, data] of writes) writeSync(fd, data, 0, data.length, at);
    closeSync(fd);
    return path;
  };
  const common = image(MiB);
  const a = make('sa.img', [
    [0, common],
    [8 * MiB, image(MiB)],
    [20 * MiB, Buffer.alloc(MiB)],
  ]);
  const b = make('sb.img', [
    [0, patch(common, [[5000, 1]])],
    [24 * MiB, image(B)],
  ]);
  const src = await FileSource.open(a);
  const segs = await src.dataSegments();
  await src.close();
  if (segs === undefined) throw new Error('the native addon is not built: SEEK_DATA cannot be tested (make addon)');
  assert.ok(segs.length >= 2 && segs.every(([o]) => o < size));
  const r = await diffImages(a, b);
  assert.equal(
    r.ranges.map((x) => [x.offset, x.length]),
    [
      [B, B],
      [8 * MiB, MiB],
      [24 * MiB, B],
    ],
  );
  assert.ok(r.readBytes < 8 * MiB, `read ${r.readBytes} bytes of ${size}`);
});

Files('qcow2 inputs (compressed, and with a backing file) give the same ranges as raw', async () => {
  const base = image(4 * MiB);
  const patched = patch(base, [
    [MiB + 10, 1],
    [3 * MiB, 2 * B],
  ]);
  const rawA = tmp.file('qa.img', base);
  const rawB = tmp.file('qb.img', patched);
  const qA = tmp.file('qa.qcow2');
  const qB = tmp.file('qb.qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', rawA, qA]);
  execFileSync('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', rawB, qB]);
  const want = (await diffImages(rawA, rawB)).ranges;
  assert.is(want.length, 2);
  assert.equal((await diffImages(qA, qB)).ranges, want);
  assert.equal((await diffImages(rawA, qB)).ranges, want);
  // An overlay on the raw base, written through QEMU's own block layer.
  const overlay = tmp.file('ov.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', rawA, '-F', 'raw', overlay]);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a ${2 * MiB} ${B}`, overlay], { stdio: 'ignore' });
  const ov = await diffImages(rawA, overlay);
  assert.equal(
    ov.ranges.map((x) => [x.offset, x.length]),
    [[2 * MiB, B]],
  );
  const img = await openImage(overlay, 'patched');
  try {
    assert.is(img.format, 'qcow2');
    assert.is(img.size, 4 * MiB);
  } finally {
    await img.close();
  }
});

Files('a file that is not a qcow2 image although it says so is a DiffError', async () => {
  const bad = Buffer.alloc(MiB);
  bad.write('QFI\xfb', 0, 'latin1');
  const err = await diffImages(tmp.file('bad.qcow2', bad), tmp.file('bad.qcow2')).catch((e: unknown) => e);
  assert.instance(err, DiffError);
  assert.match((err as Error).message, /qemu-nbd/);
});

Diff.run();
Files.run();
