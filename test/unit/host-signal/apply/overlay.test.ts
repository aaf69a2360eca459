/**
 * The qcow2 delta disk, read back by a small independent qcow2 reader (the
 * integration suite checks the same files with qemu-img): the header, the
 * L1/L2 tables, the refcounts, and the content of every allocated cluster.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  alignedClusterSize,
  buildOverlay,
  changedClusters,
  type BundleData,
} from '../../../../host-signal/src/apply/index.js';
import { planBundle, type BundleRange, type Manifest } from '../../../../host-signal/src/bundle/index.js';
import { bufferSource, diffSources } from '../../../../host-signal/src/diff/index.js';
import { BundleError, TargetError } from '../../../../host-signal/src/errors.js';
import { KiB, TempDir, image, patch } from '../fixtures.js';

const SIZE = 1024 * KiB;
const EDITS: [number, number][] = [
  [100, 1],
  [68 * KiB, 8 * KiB],
  [512 * KiB, 1],
  [SIZE - 1, 1],
];

async function memoryBundle(base: Buffer, patched: Buffer, tamper = false): Promise<BundleData> {
  const d = await diffSources(bufferSource(base), bufferSource(patched));
  const { manifest } = planBundle({ base: { size: base.length }, blockSize: d.blockSize, ranges: d.ranges });
  return {
    manifest,
    verified: true,
    async readData(r: BundleRange, from = 0, length = r.length - from) {
      const out = Buffer.from(patched.subarray(r.offset + from, r.offset + from + length));
      if (tamper) out[0] = out[0]! ^ 1;
      return out;
    },
  };
}

/** Reads a qcow2 v3 file: header fields, backing name, and virtual cluster → content of the allocated ones. */
function readQcow2(file: Buffer) {
  assert.is(file.readUInt32BE(0), 0x514649fb, 'magic');
  assert.is(file.readUInt32BE(4), 3, 'version');
  const bits = file.readUInt32BE(20);
  const cs = 1 << bits;
  const size = Number(file.readBigUInt64BE(24));
  const l1Size = file.readUInt32BE(36);
  const l1 = Number(file.readBigUInt64BE(40));
  const rt = Number(file.readBigUInt64BE(48));
  const rtClusters = file.readUInt32BE(56);
  assert.is(file.readUInt32BE(96), 4, 'refcount order');
  const bOff = Number(file.readBigUInt64BE(8));
  const backing = bOff === 0 ? undefined : file.subarray(bOff, bOff + file.readUInt32BE(16)).toString();
  const copied = 1n << 63n;
  const used = new Set<number>([0]);
  for (let i = 0; i < Math.ceil((l1Size * 8) / cs); i++) used.add(l1 / cs + i);
  for (let i = 0; i < rtClusters; i++) used.add(rt / cs + i);
  const clusters = new Map<number, Buffer>();
  for (let i = 0; i < l1Size; i++) {
    const e = file.readBigUInt64BE(l1 + i * 8);
    if (e === 0n) continue;
    assert.ok((e & copied) !== 0n, 'L1 entries carry COPIED');
    const l2 = Number(e & ~copied);
    used.add(l2 / cs);
    for (let j = 0; j < cs / 8; j++) {
      const d = file.readBigUInt64BE(l2 + j * 8);
      if (d === 0n) continue;
      assert.ok((d & copied) !== 0n, 'L2 entries carry COPIED');
      const at = Number(d & ~copied);
      used.add(at / cs);
      clusters.set(i * (cs / 8) + j, file.subarray(at, at + cs));
    }
  }
  // Every cluster of the file is used once, and the refcounts say so.
  const refcount = (c: number): number => {
    const block = Number(file.readBigUInt64BE(rt + Math.floor(c / (cs / 2)) * 8));
    return block === 0 ? 0 : file.readUInt16BE(block + (c % (cs / 2)) * 2);
  };
  for (let b = 0; b < rtClusters * (cs / 8); b++) {
    const block = Number(file.readBigUInt64BE(rt + b * 8));
    if (block !== 0) used.add(block / cs);
  }
  assert.is(file.length, used.size * cs, 'the file holds exactly the clusters it uses');
  for (let c = 0; c < file.length / cs; c++) assert.is(refcount(c), 1, `refcount of cluster ${c}`);
  return { cs, size, backing, clusters };
}

const O = suite('qcow2 overlay');
let tmp: TempDir;
O.before.each(() => {
  tmp = new TempDir();
});
O.after.each(() => tmp.remove());

O('the overlay allocates exactly the changed clusters; each reads as PATCHED, filled from the base', async () => {
  const base = image(SIZE);
  const patched = patch(base, EDITS);
  const bundle = await memoryBundle(base, patched);
  for (const cs of [512, 4 * KiB, 64 * KiB]) {
    const path = tmp.file(`o-${cs}.qcow2`);
    const w = await buildOverlay(bundle, path, {
      clusterSize: cs,
      backing: { name: 'base.img', format: 'raw' },
      fill: async (offset, length) => Buffer.from(base.subarray(offset, offset + length)),
    });
    const q = readQcow2(readFileSync(path));
    assert.is(q.cs, cs);
    assert.is(q.size, SIZE);
    assert.is(q.backing, 'base.img');
    assert.equal([...q.clusters.keys()], changedClusters(bundle.manifest, cs));
    assert.is(w.dataClusters, q.clusters.size);
    for (const [c, data] of q.clusters)
      assert.ok(data.equals(patched.subarray(c * cs, (c + 1) * cs)), `cluster ${c} of ${cs}`);
  }
});

O('a partly changed cluster without a fill source is an error, and no file is left', async () => {
  const base = image(SIZE);
  const bundle = await memoryBundle(base, patch(base, EDITS));
  const path = tmp.file('nofill.qcow2');
  const err = await buildOverlay(bundle, path, { clusterSize: 64 * KiB }).catch((e: unknown) => e);
  assert.instance(err, TargetError);
  assert.match((err as Error).message, /partly changed/);
  assert.equal(readdirSync(tmp.path), []);
});

O('bundle data that no longer matches its hash is refused, and no file is left', async () => {
  const base = image(SIZE);
  const bundle = await memoryBundle(base, patch(base, EDITS), true);
  const path = tmp.file('tampered.qcow2');
  assert.instance(await buildOverlay(bundle, path, { clusterSize: 4 * KiB }).catch((e: unknown) => e), BundleError);
  assert.equal(readdirSync(tmp.path), []);
});

O('the overlay mode cluster size: the largest power of two up to 64K every range starts and ends on', () => {
  const m = (ranges: [number, number][], size = SIZE): Manifest =>
    ({ base: { size }, ranges: ranges.map(([offset, length]) => ({ offset, length })) }) as unknown as Manifest;
  assert.is(alignedClusterSize(m([[0, 64 * KiB]])), 64 * KiB);
  assert.is(alignedClusterSize(m([[8 * KiB, 64 * KiB]])), 8 * KiB);
  assert.is(
    alignedClusterSize(
      m([
        [4 * KiB, 4 * KiB],
        [128 * KiB, 64 * KiB],
      ]),
    ),
    4 * KiB,
  );
  assert.is(alignedClusterSize(m([[SIZE - 4 * KiB, 4 * KiB]])), 4 * KiB);
  assert.is(
    alignedClusterSize(m([[16 * KiB, 1000]], 16 * KiB + 1000)),
    16 * KiB,
    'a range ending the disk may end anywhere',
  );
});

O.run();
