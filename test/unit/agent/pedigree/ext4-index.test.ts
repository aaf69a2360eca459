/**
 * The pedigree index built from a read-only ext4 filesystem's on-disk
 * metadata (agent/src/pedigree/ext4-index.ts) against the FIEMAP walk of the
 * same filesystem, loop-mounted read-only: images made by mkfs.ext4 -d with
 * hard links, symlinks, a fifo, sparse, empty and preallocated files, an
 * extent tree with index blocks, a deep tree and an htree directory; 64-bit
 * and 32-bit descriptors. Corrupt metadata (bad magic, a directory loop) ends
 * in a RawIndexError and the walk, never a hang.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  closeSync,
  copyFileSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fiemap, readDirect } from '../../../../agent/src/native/index.js';
import { buildExt4Index, RawIndexError } from '../../../../agent/src/pedigree/ext4-index.js';
import { FsIndex } from '../../../../agent/src/pedigree/live.js';
import { readMounts, type Mount } from '../../../../agent/src/pedigree/mounts.js';
import { walkMount, type IndexedFile } from '../../../../agent/src/pedigree/walk.js';
import { readAt } from '../../../helpers/ext4-images.js';

const Raw = suite('pedigree index from ext4 metadata (the FIEMAP walk as oracle)');
const C = { dir: '', tree: '', mounted: [] as { mnt: string; loop: string }[], skip: '' };

function skip(test: string, reason: string): void {
  console.log(`  skipped: ${test}: ${reason}`);
}

/** Awaits `fn` and asserts it rejects with a RawIndexError whose message matches `re`. */
async function rejectsRaw(fn: () => Promise<unknown>, re: RegExp): Promise<void> {
  try {
    await fn();
  } catch (e) {
    assert.instance(e, RawIndexError);
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('resolved; a RawIndexError was expected');
}

/** The tree every image holds. */
function buildTree(tree: string): void {
  mkdirSync(join(tree, 'sub', 'inner'), { recursive: true });
  writeFileSync(join(tree, 'small'), 'hello\n');
  writeFileSync(join(tree, 'empty'), '');
  writeFileSync(join(tree, 'sub', 'big'), Buffer.alloc(3 << 20, 7));
  linkSync(join(tree, 'small'), join(tree, 'sub', 'hardlink'));
  symlinkSync('small', join(tree, 'link-to-file'));
  symlinkSync('sub', join(tree, 'link-to-dir'));
  symlinkSync('x'.repeat(200), join(tree, 'slow-symlink'));
  spawnSync('mkfifo', [join(tree, 'fifo')]);
  writeFileSync(join(tree, 'zürich ✓'), 'name');
  // Sparse: data at 1 MiB only; and 12 separate extents (more than the inode holds: an index block).
  let fd = openSync(join(tree, 'sparse'), 'w');
  writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 1 << 20);
  closeSync(fd);
  fd = openSync(join(tree, 'sub', 'fragmented'), 'w');
  for (let i = 0; i < 12; i++) writeSync(fd, Buffer.alloc(4096, i + 1), 0, 4096, i * 3 * 4096);
  closeSync(fd);
  let p = join(tree, 'deep');
  for (let i = 0; i < 60; i++) p = join(p, `level${i}`);
  mkdirSync(p, { recursive: true });
  writeFileSync(join(p, 'bottom'), 'deep');
  mkdirSync(join(tree, 'wide'));
  for (let i = 0; i < 3000; i++)
    writeFileSync(join(tree, 'wide', `entry-with-a-longer-name-${i}`), i % 5 === 0 ? '' : `${i}`);
}

/** An image of the tree with mkfs options `opts`; directories indexed (htree) by e2fsck -D. */
function makeImage(name: string, opts: string[]): string {
  const img = join(C.dir, `${name}.img`);
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', '4096', ...opts, '-E', 'root_owner=0:0', '-d', C.tree, img, '64M'], {
    stdio: 'ignore',
  });
  execFileSync('sh', ['-c', `e2fsck -fyD "${img}" >/dev/null 2>&1; [ $? -le 1 ]`]);
  // A preallocated (unwritten) extent, which FIEMAP reports and the index keeps.
  spawnSync('debugfs', ['-w', '-R', 'fallocate /empty 0 15', img], { stdio: 'ignore' });
  // A ctime with nanoseconds (mkfs -d writes whole seconds).
  spawnSync('debugfs', ['-w', '-R', 'sif /small ctime_extra 0x12345678', img], { stdio: 'ignore' });
  return img;
}

/** Loop-mounts `img` read-only; its Mount as /proc/self/mountinfo gives it. */
function mountRo(img: string): Mount {
  const mnt = join(C.dir, `mnt-${C.mounted.length}`);
  mkdirSync(mnt);
  const loop = execFileSync('losetup', ['-f', '--show', '-r', img], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  }).trim();
  try {
    execFileSync('mount', ['-t', 'ext4', '-o', 'ro', loop, mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    execFileSync('losetup', ['-d', loop]);
    throw e;
  }
  C.mounted.push({ mnt, loop });
  return { mountPoint: mnt, devNum: '', root: '/', fsType: 'ext4', readOnly: true };
}

async function mountInfo(mnt: string): Promise<Mount> {
  const m = (await readMounts()).find((x) => x.mountPoint === mnt);
  if (!m) throw new Error(`${mnt} not in mountinfo`);
  return m;
}

/** Extents with contiguous neighbours coalesced: FIEMAP may or may not merge them (the kernel's extent cache). */
function coalesced(extents: IndexedFile['extents']): IndexedFile['extents'] {
  const out: IndexedFile['extents'] = [];
  for (const e of extents) {
    const last = out[out.length - 1];
    if (last && last.fileOffset + last.length === e.fileOffset && last.diskStart + last.length === e.diskStart)
      last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

function view(f: IndexedFile): unknown {
  return {
    ...f,
    mount: undefined,
    extents: coalesced(f.extents),
    ctimeNs: String(f.ctimeNs),
    entries: f.entries ? [...f.entries].sort() : undefined,
  };
}

function byPath(files: Iterable<IndexedFile>): Map<string, IndexedFile> {
  const out = new Map<string, IndexedFile>();
  for (const f of files) {
    assert.not.ok(out.has(f.path), `${f.path} emitted twice`);
    out.set(f.path, f);
  }
  return out;
}

async function walked(mount: Mount, partStart: number): Promise<Map<string, IndexedFile>> {
  const files: IndexedFile[] = [];
  await walkMount(mount, partStart, fiemap, (f) => files.push(f));
  return byPath(files);
}

function assertSame(raw: Map<string, IndexedFile>, walk: Map<string, IndexedFile>): void {
  assert.equal([...raw.keys()].sort(), [...walk.keys()].sort());
  for (const [path, f] of walk) assert.equal(view(raw.get(path)!), view(f), path);
}

Raw.before(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-rawidx-'));
  C.tree = join(C.dir, 'tree');
  buildTree(C.tree);
  const probe = spawnSync('losetup', ['-f'], { encoding: 'utf8' });
  if (probe.status !== 0) C.skip = `loop devices unavailable: ${(probe.stderr || String(probe.error)).trim()}`;
});
Raw.after(() => {
  for (const { mnt, loop } of C.mounted.reverse()) {
    spawnSync('umount', [mnt]);
    spawnSync('losetup', ['-d', loop]);
  }
  rmSync(C.dir, { recursive: true, force: true });
});

for (const [name, opts] of [
  ['64bit, metadata_csum, flex_bg', ['-O', '64bit,metadata_csum,flex_bg']],
  ['32-bit descriptors, no metadata_csum, no flex_bg', ['-O', '^64bit,^metadata_csum,^flex_bg', '-N', '8192']],
] as const) {
  Raw(`${name}: the same records as the FIEMAP walk of the read-only mount`, async () => {
    if (C.skip) return skip(name, C.skip);
    const img = makeImage(name.replace(/[^a-z0-9]+/gi, '-'), [...opts]);
    const mount = await mountInfo(mountRo(img).mountPoint);
    const partStart = 1 << 30;
    const files: IndexedFile[] = [];
    await buildExt4Index(
      (o, l) => readDirect(C.mounted[C.mounted.length - 1]!.loop, o, l),
      mount,
      partStart,
      await readMounts(),
      (f) => files.push(f),
    );
    const raw = byPath(files);
    const walk = await walked(mount, partStart);
    assertSame(raw, walk);
    const m = mount.mountPoint;
    // What the tree holds is there: hard links under both names, no symlink or fifo, the htree directory whole.
    assert.is(raw.get(join(m, 'sub', 'hardlink'))!.ino, raw.get(join(m, 'small'))!.ino);
    assert.equal(
      coalesced(raw.get(join(m, 'sub', 'hardlink'))!.extents),
      coalesced(raw.get(join(m, 'small'))!.extents),
    );
    for (const n of ['link-to-file', 'link-to-dir', 'slow-symlink', 'fifo']) {
      assert.not.ok(raw.has(join(m, n)), n);
      assert.ok(raw.get(m)!.entries!.has(n), n);
    }
    assert.is(raw.get(join(m, 'wide'))!.entries!.size, 3000);
    assert.equal(
      raw.get(join(m, 'sparse'))!.extents.map((e) => [e.fileOffset, e.length]),
      [[1 << 20, 4096]],
    );
    assert.is(raw.get(join(m, 'sub', 'fragmented'))!.extents.length, 12);
    assert.ok(raw.has(join(m, 'deep', ...Array.from({ length: 60 }, (_, i) => `level${i}`), 'bottom')));
    assert.ok(raw.has(join(m, 'zürich ✓')));
    assert.is(raw.get(join(m, 'small'))!.ctimeNs! % 1_000_000_000n, BigInt(0x12345678 >>> 2));
    assert.ok(raw.get(join(m, 'empty'))!.extents.length > 0, 'the preallocated extent');
  });
}

Raw('FsIndex.build takes the raw build for a read-only ext4 mount and says so', async () => {
  if (C.skip) return skip('FsIndex builder', C.skip);
  const img = makeImage('fsindex', []);
  const mount = await mountInfo(mountRo(img).mountPoint);
  const raw = await FsIndex.build(mount, 0, fiemap, { readDirect });
  assert.equal(raw.builtWith, { builder: 'ext4-raw' });
  const walk = await FsIndex.build(mount, 0, fiemap);
  assert.equal(walk.builtWith, { builder: 'walk' });
  assertSame(raw.byPath, walk.byPath);
  assert.is(raw.index.size, walk.index.size);
  // Nothing changed since: re-validation re-maps nothing (ctime and size as lstat gives them).
  assert.is(await raw.fresh(), 0);
});

Raw('a bind mount of a subdirectory: the subtree under its root, at the bind mount point', async () => {
  if (C.skip) return skip('bind mount root', C.skip);
  const img = makeImage('bind', []);
  const top = mountRo(img).mountPoint;
  const bind = join(C.dir, 'bind');
  mkdirSync(bind);
  execFileSync('mount', ['--bind', join(top, 'sub'), bind]);
  C.mounted.push({ mnt: bind, loop: '' });
  const mount = await mountInfo(bind);
  assert.is(mount.root, '/sub');
  const raw = await FsIndex.build(mount, 0, fiemap, { readDirect });
  assert.equal(raw.builtWith, { builder: 'ext4-raw' });
  const walk = await FsIndex.build(mount, 0, fiemap);
  assertSame(raw.byPath, walk.byPath);
  assert.ok(raw.byPath.has(join(bind, 'big')));
});

Raw('a read-write mount is walked (the disk may lag the page cache)', async () => {
  if (C.skip) return skip('read-write', C.skip);
  const mount = { ...(await mountInfo(C.mounted[0]!.mnt)), readOnly: false };
  const fs = await FsIndex.build(mount, 0, fiemap, { readDirect, watch: false });
  assert.equal(fs.builtWith, { builder: 'walk' });
});

Raw('a bad superblock: RawIndexError, and FsIndex.build falls back to the walk with the reason', async () => {
  if (C.skip) return skip('bad magic', C.skip);
  const mount = await mountInfo(C.mounted[0]!.mnt);
  const zeroSuper = async (path: string, o: number, l: number): Promise<Buffer> => {
    const b = Buffer.from(await readDirect(path, o, l));
    if (o <= 1024 + 0x38 && o + l > 1024 + 0x38) b.writeUInt16LE(0, 1024 + 0x38 - o);
    return b;
  };
  await rejectsRaw(
    () =>
      buildExt4Index(
        (o, l) => zeroSuper(C.mounted[0]!.loop, o, l),
        mount,
        0,
        [],
        () => undefined,
      ),
    /superblock/,
  );
  const fs = await FsIndex.build(mount, 0, fiemap, { readDirect: zeroSuper });
  assert.is(fs.builtWith.builder, 'walk');
  assert.match(fs.builtWith.fallback ?? '', /superblock/);
  assertSame(fs.byPath, await walked(mount, 0));
});

Raw('a directory loop on the disk: RawIndexError, not a hang', async () => {
  const img = join(C.dir, 'loop.img');
  copyFileSync(makeImage('loop-src', []), img);
  // /sub/inner/back → /sub: the tree is no longer a tree.
  execFileSync('debugfs', ['-w', '-R', 'link /sub /sub/inner/back', img], { stdio: 'ignore' });
  const mount: Mount = { mountPoint: C.dir, devNum: '0:0', root: '/', fsType: 'ext4', readOnly: true };
  let n = 0;
  await rejectsRaw(
    () =>
      buildExt4Index(
        async (o, l) => readAt(img, o, l),
        mount,
        0,
        [],
        () => n++,
      ),
    /loop/,
  );
  assert.ok(n < 10_000);
});

Raw('an ext2 filesystem (block-mapped files) is refused', async () => {
  const img = join(C.dir, 'ext2.img');
  execFileSync('mkfs.ext2', ['-q', '-F', '-b', '4096', '-d', C.tree, img, '64M'], { stdio: 'ignore' });
  const mount: Mount = { mountPoint: C.dir, devNum: '0:0', root: '/', fsType: 'ext2', readOnly: true };
  await rejectsRaw(
    () =>
      buildExt4Index(
        async (o, l) => readAt(img, o, l),
        mount,
        0,
        [],
        () => undefined,
      ),
    /block-mapped/,
  );
});

Raw.run();
