/**
 * Classification of blocks no file owns, and the index's owners, against
 * debugfs (icheck, testb) on images made by mkfs.ext4 -d. The owner check
 * loop-mounts the image read-only (skipped, with the reason, where loop
 * devices are unavailable).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ext4Classifier } from '@vmsubst/common/pedigree/classify';
import { FsIndex } from '../../../agent/src/pedigree/live.js';
import { mapBlocks, parseBlocks } from '../../../agent/src/cli/map.js';
import { readAt } from '../../helpers/ext4-images.js';

const C = { dir: '', img: '', mnt: '', loop: '', blocks: 0, mountError: '' };
const Cls = suite('ext4 block classification (debugfs as oracle)');

const debugfs = (cmd: string): string =>
  execFileSync('debugfs', ['-R', cmd, C.img], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
    maxBuffer: 1 << 26,
  });

/** icheck for every block: block → inode (undefined: no inode owns it). */
function icheckAll(blocks: number[]): Map<number, number | undefined> {
  const out = new Map<number, number | undefined>();
  for (let i = 0; i < blocks.length; i += 2000) {
    const text = debugfs(`icheck ${blocks.slice(i, i + 2000).join(' ')}`);
    for (const line of text.split('\n').slice(1)) {
      const m = /^(\d+)\s+(\d+|<block not found>)/.exec(line.trim());
      if (m) out.set(Number(m[1]), m[2]!.startsWith('<') ? undefined : Number(m[2]));
    }
  }
  return out;
}

function inUse(count: number): Set<number> {
  const used = new Set<number>([0]); // debugfs refuses block 0; it holds the superblock
  for (const line of debugfs(`testb 1 ${count - 1}`).split('\n')) {
    const m = /^Block (\d+) marked in use/.exec(line.trim());
    if (m) used.add(Number(m[1]));
  }
  return used;
}

Cls.before(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-cls-'));
  const tree = join(C.dir, 'tree');
  for (let d = 0; d < 8; d++) {
    mkdirSync(join(tree, `d${d}`), { recursive: true });
    for (let i = 0; i < 60; i++)
      writeFileSync(join(tree, `d${d}`, `f${i}`), Buffer.alloc(100 + (((d * 60 + i) * 331) % 20000), d + i));
  }
  // A sparse file with more data extents than fit in the inode: an extent tree with an index block.
  const fd = openSync(join(tree, 'sparse.bin'), 'w');
  for (let i = 0; i < 12; i++) writeSync(fd, Buffer.alloc(4096, i + 1), 0, 4096, i * 3 * 4096);
  closeSync(fd);
  C.img = join(C.dir, 'fs.img');
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-N', '1024', '-d', tree, C.img, '48M'], { stdio: 'ignore' });
  C.blocks = (48 << 20) / 4096;
  C.mnt = join(C.dir, 'mnt');
  mkdirSync(C.mnt);
  try {
    C.loop = execFileSync('losetup', ['-f', '--show', '-r', C.img], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    }).trim();
    execFileSync('mount', ['-t', 'ext4', '-o', 'ro', C.loop, C.mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    C.mountError = `loop mount unavailable: ${(e as Error).message.split('\n')[0]}`;
    if (C.loop) execFileSync('losetup', ['-d', C.loop]);
    C.loop = '';
  }
});
Cls.after(() => {
  if (C.loop) {
    execFileSync('umount', [C.mnt]);
    execFileSync('losetup', ['-d', C.loop]);
  }
  rmSync(C.dir, { recursive: true, force: true });
});

Cls('every block: free, metadata or inode-owned exactly where debugfs says', async () => {
  const cls = (await Ext4Classifier.open(async (o, l) => readAt(C.img, o, l)))!;
  assert.ok(cls);
  assert.is(cls.blocksCount, C.blocks);
  const all = Array.from({ length: C.blocks }, (_, i) => i);
  const owner = icheckAll(all);
  const used = inUse(C.blocks);
  const seen = new Set<string>();
  for (const b of all) {
    const c = await cls.classify(b);
    seen.add(c.class);
    const ino = owner.get(b);
    if (!used.has(b)) {
      assert.is(c.class, 'free', `block ${b}`);
    } else if (c.class === 'free') {
      assert.unreachable(`block ${b} is in use (debugfs) but classified free`);
    } else if (c.ino !== undefined) {
      assert.is(ino, c.ino, `block ${b} (${c.class})`);
    } else if (c.class === 'unknown') {
      // file or directory data: the classifier leaves it to the index
      assert.ok((ino !== undefined && ino > 10) || ino === 2, `block ${b} unknown but icheck says ${ino}`);
    } else {
      assert.is(ino, undefined, `block ${b} (${c.class}) is owned by inode ${ino}`);
    }
  }
  for (const k of [
    'superblock',
    'group-descriptors',
    'block-bitmap',
    'inode-bitmap',
    'inode-table',
    'journal',
    'extent-tree',
    'free',
  ]) {
    assert.ok(seen.has(k), `no ${k} block found`);
  }
});

Cls('the index names the inode debugfs finds for every data block', async () => {
  if (!C.loop) {
    console.log(`  skipped: ${C.mountError}`);
    return;
  }
  const mount = { mountPoint: C.mnt, devNum: '0:0', root: '/', fsType: 'ext4', readOnly: true };
  const { fiemap } = await import('../../../agent/src/native/index.js');
  const fs = await FsIndex.build(mount, 0, fiemap, { watch: false });
  const owner = icheckAll(Array.from({ length: C.blocks }, (_, i) => i));
  let owned = 0;
  for (const [b, ino] of owner) {
    const hit = fs.index.lookup([{ offset: b * 4096, length: 4096 }]).files[0];
    if (hit) {
      owned++;
      assert.is(hit.file.ino, ino, `block ${b}: ${hit.file.path}`);
    } else if (ino !== undefined && ino >= 11) {
      // Only extent-tree blocks of a file are not data FIEMAP reports.
      const c = await (await Ext4Classifier.open(async (o, l) => readAt(C.img, o, l)))!.classify(b);
      assert.equal(c, { class: 'extent-tree', ino }, `block ${b}`);
    }
  }
  assert.ok(owned > 480, `${owned} owned blocks`);
  const sparse = fs.byPath.get(join(C.mnt, 'sparse.bin'))!;
  const third = sparse.extents.find((e) => e.fileOffset === 2 * 3 * 4096)!;
  const r = fs.index.lookup([{ offset: third.diskStart, length: 4096 }]);
  assert.equal(
    r.files.map((f) => [f.file.path, f.ranges]),
    [[sparse.path, [{ offset: 6 * 4096, length: 4096 }]]],
  );
});

Cls('map on the loop device: owners and classes, byte suffix', async () => {
  if (!C.loop) {
    console.log(`  skipped: ${C.mountError}`);
    return;
  }
  const native = await import('../../../agent/src/native/index.js');
  const rep = await mapBlocks(C.loop, '0-2', native);
  assert.is(rep.mountPoint, C.mnt);
  assert.is(rep.rows[0]!.class, 'superblock');
  const f = Number(/Inode: (\d+)/.exec(debugfs('stat /d3/f7'))![1]);
  const blk = Number(debugfs('blocks /d3/f7').trim().split(/\s+/)[0]);
  const byBytes = await mapBlocks(C.loop, `${blk * 4096}B-${blk * 4096 + 4095}B`, native);
  assert.equal(byBytes.rows, [
    { block: blk, count: 1, class: 'file', path: join(C.mnt, 'd3', 'f7'), ino: f, offset: 0 },
  ]);
});

Cls('parses block lists', () => {
  assert.equal(parseBlocks('1-3,7,8192B-12287B', 4096), [
    [1, 3],
    [7, 7],
    [2, 2],
  ]);
  assert.throws(() => parseBlocks('5-2', 4096));
  assert.throws(() => parseBlocks('x', 4096));
});

Cls.run();
