import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { bufferSource, diffImages, diffSources } from '../../../host-signal/src/diff/index.js';
import { DiffError } from '../../../host-signal/src/errors.js';
import { MAX_RANGE_BYTES } from '../../../agent/src/protocol/schema.js';
import { KiB, MiB, TempDir, image, patch, sha256 } from './fixtures.js';

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
  assert.equal(r.ranges.map((x) => [x.offset, x.length]), [[10 * B, 3 * B]]);
  assert.is(r.ranges[0]!.newSha256, sha256(patched.subarray(10 * B, 13 * B)));
});

Diff('separate changes give separate, sorted ranges', async () => {
  const base = image(1 * MiB);
  const patched = patch(base, [[0, 1], [2 * B, 1], [100 * B, B]]);
  const r = await diff(base, patched);
  assert.equal(r.ranges.map((x) => [x.offset, x.length]), [[0, B], [2 * B, B], [100 * B, B]]);
});

Diff('a run crossing a read-chunk boundary stays one range', async () => {
  const base = image(256 * KiB);
  const patched = patch(base, [[64 * KiB - B, 2 * B]]);
  const r = await diff(base, patched, { chunkSize: 64 * KiB });
  assert.equal(r.ranges.map((x) => [x.offset, x.length]), [[64 * KiB - B, 2 * B]]);
  assert.is(r.ranges[0]!.oldSha256, sha256(base.subarray(64 * KiB - B, 64 * KiB + B)));
});

Diff('a run longer than the cap is split at the cap', async () => {
  const base = image(1 * MiB);
  const patched = patch(base, [[0, 5 * B]]);
  const r = await diff(base, patched, { maxRangeBytes: 2 * B });
  assert.equal(r.ranges.map((x) => [x.offset, x.length]), [[0, 2 * B], [2 * B, 2 * B], [4 * B, B]]);
  for (const x of r.ranges) assert.is(x.newSha256, sha256(patched.subarray(x.offset, x.offset + x.length)));
});

Diff('the default cap is the protocol\'s MAX_RANGE_BYTES', async () => {
  const size = MAX_RANGE_BYTES + 2 * B;
  const base = Buffer.alloc(size);
  const patched = Buffer.alloc(size, 1);
  const r = await diff(base, patched);
  assert.equal(r.ranges.map((x) => [x.offset, x.length]), [[0, MAX_RANGE_BYTES], [MAX_RANGE_BYTES, 2 * B]]);
});

Diff('a partial last block is a range ending the image', async () => {
  const base = image(10 * B + 100);
  const patched = patch(base, [[10 * B + 99, 1]]);
  const r = await diff(base, patched);
  assert.equal(r.ranges.map((x) => [x.offset, x.length]), [[10 * B, 100]]);
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
  await diff(base, Buffer.from(base), { chunkSize: 256 * KiB, onProgress: (d: number, t: number) => seen.push([d, t]) });
  assert.equal(seen, [[256 * KiB, MiB], [512 * KiB, MiB], [768 * KiB, MiB], [MiB, MiB]]);
});

const Files = suite('diff: image files');
const tmp = new TempDir();
Files.after(() => tmp.remove());

Files('diffImages compares two files', async () => {
  const base = image(5 * MiB);
  const patched = patch(base, [[4 * MiB + 3, 1]]);
  const r = await diffImages(tmp.file('a.img', base), tmp.file('b.img', patched));
  assert.equal(r.ranges.map((x) => [x.offset, x.length]), [[4 * MiB, B]]);
});

Files('a missing image is a DiffError naming its role', async () => {
  const err = await diffImages(tmp.file('nope.img'), tmp.file('a.img')).catch((e: unknown) => e);
  assert.instance(err, DiffError);
  assert.match((err as Error).message, /base image/);
});

Diff.run();
Files.run();
