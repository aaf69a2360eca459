/**
 * Filesystems decided per mount (agent/src/pedigree/filesystems.ts), the walk on filesystems that
 * refuse FIEMAP on directories or share blocks (pedigree/walk.ts, native/walk.c), and the restart
 * reasons of a metadata change (substitution/metadata.ts). Fake sysfs trees for the stacking and
 * btrfs cases; a real XFS image, loop-mounted read-only, for the walk (skipped, with the reason,
 * where it cannot be mounted).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fiemap } from '../../../../agent/src/native/index.js';
import {
  decideFilesystems,
  describeRefusals,
  fsVerdict,
  refusalsFor,
} from '../../../../agent/src/pedigree/filesystems.js';
import type { DiskLayout, Mount } from '../../../../agent/src/pedigree/mounts.js';
import { readMounts } from '../../../../agent/src/pedigree/mounts.js';
import {
  FIEMAP_EXTENT_SHARED,
  walkMount,
  walkOptions,
  type Fiemap,
  type IndexedFile,
} from '../../../../agent/src/pedigree/walk.js';
import { restartReasons, type TouchedFs } from '../../../../agent/src/substitution/metadata.js';
import { ROOT } from '../../../helpers/paths.js';

const MiB = 1 << 20;
const layout: DiskLayout = {
  name: 'vdb',
  devNum: '254:16',
  sizeBytes: 256 * MiB,
  parts: [
    { name: 'vdb', devNum: '254:16', startBytes: 0, sizeBytes: 256 * MiB },
    { name: 'vdb1', devNum: '254:17', startBytes: MiB, sizeBytes: 127 * MiB },
    { name: 'vdb2', devNum: '254:18', startBytes: 128 * MiB, sizeBytes: 128 * MiB },
  ],
};
const mount = (devNum: string, mountPoint: string, fsType: string, source = ''): Mount => ({
  devNum,
  mountPoint,
  fsType,
  root: '/',
  readOnly: true,
  source,
});
const noRead = (): Promise<Buffer> => Promise.reject(new Error('not read'));

function sysTree(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'vmsubst-sys-'));
  for (const [p, text] of Object.entries(files)) {
    mkdirSync(join(dir, p, '..'), { recursive: true });
    if (p.endsWith('/')) mkdirSync(join(dir, p), { recursive: true });
    else writeFileSync(join(dir, p), text);
  }
  return dir;
}

const Verdict = suite('filesystems: verdict per filesystem type');
Verdict('ext2/3/4 take data and metadata, XFS data only, the rest is refused with the reason', () => {
  for (const t of ['ext2', 'ext3', 'ext4']) assert.is(fsVerdict(t).handling, 'data-and-metadata');
  assert.is(fsVerdict('xfs').handling, 'data-only');
  assert.match(fsVerdict('xfs').reason!, /buffer cache/);
  assert.match(fsVerdict('btrfs').reason!, /logical addresses.*checksummed.*copy-on-write/);
  assert.match(fsVerdict('zfs').reason!, /checksummed/);
  assert.match(fsVerdict('f2fs').reason!, /log-structured/);
  assert.is(fsVerdict('vfat').handling, 'refused');
  assert.match(fsVerdict('vfat').reason!, /vfat: not a filesystem vmsubst understands/);
});
Verdict.run();

const Decide = suite('filesystems: each filesystem of the disk tied to its device');
Decide('mounted partitions: ext4 and XFS by device number', async () => {
  const sys = sysTree({ 'block/vdb/': '' });
  try {
    const d = await decideFilesystems(layout, [mount('254:17', '/a', 'ext4'), mount('254:18', '/b', 'xfs')], {
      sysRoot: sys,
      read: noRead,
    });
    assert.equal(
      d.map((x) => [x.part.name, x.mount, x.handling]),
      [
        ['vdb1', '/a', 'data-and-metadata'],
        ['vdb2', '/b', 'data-only'],
      ],
    );
    assert.equal(refusalsFor(d, [{ offset: 2 * MiB, length: 4096 }]), []);
  } finally {
    rmSync(sys, { recursive: true });
  }
});

Decide('btrfs shows an anonymous device: tied to the disk through /sys/fs/btrfs/UUID/devices', async () => {
  const sys = sysTree({ 'block/vdb/': '', 'fs/btrfs/6b1f3c1e-b7f5/devices/vdb2': '' });
  try {
    const mounts = [mount('0:33', '/data', 'btrfs', '/dev/vdb2')];
    const d = await decideFilesystems(layout, mounts, { sysRoot: sys, read: noRead });
    const b = d.find((x) => x.part.name === 'vdb2');
    assert.ok(b, JSON.stringify(d));
    assert.is(b.handling, 'refused');
    assert.is(b.mount, '/data');
    assert.equal(refusalsFor(d, [{ offset: 2 * MiB, length: 4096 }]), [], 'a range on vdb1 is not refused');
    const r = refusalsFor(d, [{ offset: 130 * MiB, length: 4096 }]);
    assert.is(r.length, 1);
    assert.match(describeRefusals(r), /^vdb2 \(\/data\): btrfs: .*nothing was done/);
  } finally {
    rmSync(sys, { recursive: true });
  }
});

Decide('btrfs with neither sysfs nor a device source: tied by the superblock magic read from the disk', async () => {
  const sys = sysTree({ 'block/vdb/': '' });
  try {
    const sb = Buffer.alloc(4096);
    sb.write('_BHRfS_M', 0x40, 'latin1');
    const reads: number[] = [];
    const read = (o: number): Promise<Buffer> => {
      reads.push(o);
      return Promise.resolve(o === layout.parts[1]!.startBytes + 65536 ? sb : Buffer.alloc(4096));
    };
    const d = await decideFilesystems(layout, [mount('0:40', '/data', 'btrfs', 'none')], { sysRoot: sys, read });
    assert.equal(
      d.map((x) => [x.part.name, x.type, x.handling]),
      [['vdb1', 'btrfs', 'refused']],
    );
    assert.match(d[0]!.reason!, /btrfs superblock/);
    // Without a mounted btrfs nothing is read.
    reads.length = 0;
    assert.equal(await decideFilesystems(layout, [], { sysRoot: sys, read }), []);
    assert.equal(reads, []);
  } finally {
    rmSync(sys, { recursive: true });
  }
});

Decide('a device-mapper device stacked on a partition is refused, naming it', async () => {
  const sys = sysTree({
    'block/vdb/vdb1/holders/dm-0': '',
    'block/dm-0/dm/name': 'vg-root\n',
    'block/dm-0/dev': '253:0\n',
  });
  try {
    const d = await decideFilesystems(layout, [mount('253:0', '/srv', 'ext4')], { sysRoot: sys, read: noRead });
    assert.is(d.length, 1);
    assert.is(d[0]!.handling, 'refused');
    assert.is(d[0]!.mount, '/srv');
    assert.match(d[0]!.reason!, /device-mapper device dm-0 \(vg-root\), mounted at \/srv/);
    assert.is(refusalsFor(d, [{ offset: 2 * MiB, length: 4096 }]).length, 1);
  } finally {
    rmSync(sys, { recursive: true });
  }
});
Decide.run();

const Reasons = suite('filesystems: restart reasons of a metadata change');
const touched = (over: Partial<TouchedFs>): TouchedFs => ({
  part: layout.parts[1]!,
  devPath: '/dev/vdb1',
  mountPoint: '/a',
  readOnly: true,
  fsType: 'ext4',
  overlays: [],
  ranges: [{ offset: MiB, length: 4096, kinds: ['inode-table'] }],
  dirs: [],
  ...over,
});
Reasons(
  "read-only ext4 applies it; XFS never does, read-only or forced; an overlay over it refuses without the module's feature",
  () => {
    assert.equal(restartReasons(touched({}), false), []);
    assert.match(restartReasons(touched({ readOnly: false }), false)[0]!, /read-write/);
    assert.equal(restartReasons(touched({ readOnly: false }), true), []);
    assert.match(
      restartReasons(touched({ fsType: 'xfs' }), false)[0]!,
      /XFS keeps its metadata in its own buffer cache/,
    );
    assert.is(
      restartReasons(touched({ fsType: 'xfs' }), true).length,
      1,
      'force does not make XFS re-read its metadata',
    );
    assert.match(restartReasons(touched({ overlays: ['/'] }), false)[0]!, /overlay at \/ has its lower layer in \/a/);
    assert.equal(
      restartReasons(touched({ fsType: 'xfs', ranges: [] }), false),
      [],
      'no metadata range, nothing to restart for',
    );
  },
);
Reasons("an overlay over it: no reason once the module revalidates the overlay's dentries (overlaysFollow)", () => {
  assert.equal(restartReasons(touched({ overlays: ['/'], overlaysFollow: true }), false), []);
  assert.is(
    restartReasons(touched({ overlays: ['/'], overlaysFollow: false }), false).length,
    1,
    'an older module: still refused',
  );
  assert.match(
    restartReasons(touched({ overlays: ['/'], overlaysFollow: true, readOnly: false }), false)[0]!,
    /read-write/,
    'the lower mount still counts',
  );
});
Reasons.run();

const Walk = suite('filesystems: the walk where directories refuse FIEMAP and blocks are shared');
const C = { dir: '' };
Walk.before(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-fswalk-'));
  mkdirSync(join(C.dir, 'sub/deeper'), { recursive: true });
  writeFileSync(join(C.dir, 'top'), 'x'.repeat(10000));
  writeFileSync(join(C.dir, 'sub/deeper/leaf'), 'y'.repeat(5000));
  execFileSync('sync');
});
Walk.after(() => rmSync(C.dir, { recursive: true, force: true }));

const isDir = (fd: number): boolean => fstatSync(fd).isDirectory();
/** FIEMAP as XFS answers it: EOPNOTSUPP on a directory. */
const xfsLike: Fiemap = (fd) => {
  if (isDir(fd)) throw Object.assign(new Error('EOPNOTSUPP: FIEMAP'), { code: 'EOPNOTSUPP' });
  return fiemap(fd);
};

async function walk(fsType: string, fm: Fiemap): Promise<Map<string, IndexedFile>> {
  const out = new Map<string, IndexedFile>();
  await walkMount({ mountPoint: C.dir, devNum: '0:0', root: '/', fsType, readOnly: true }, 0, fm, (f) =>
    out.set(f.path, f),
  );
  return out;
}

Walk('walk options: directories mapped only on ext2/3/4, FIEMAP_FLAG_SYNC everywhere else', () => {
  assert.equal(walkOptions({ fsType: 'ext4' }), { dirExtents: true, sync: false });
  assert.equal(walkOptions({ fsType: 'xfs' }), { dirExtents: false, sync: true });
});

Walk('a directory whose FIEMAP fails is still walked: the root and every file are indexed (was: 0 files)', async () => {
  const files = await walk('ext4', xfsLike);
  assert.ok(files.has(join(C.dir, 'top')), [...files.keys()].join(' '));
  assert.ok(files.has(join(C.dir, 'sub/deeper/leaf')));
  assert.equal(files.get(C.dir)!.extents, []);
  assert.ok(files.get(join(C.dir, 'top'))!.extents.length > 0);
});

Walk('on XFS directories are never mapped, by the JavaScript walk and the addon alike', async () => {
  let dirCalls = 0;
  const counting: Fiemap = (fd) => {
    if (isDir(fd)) dirCalls++;
    return fiemap(fd);
  };
  const js = await walk('xfs', counting);
  assert.is(dirCalls, 0);
  const native = await walk('xfs', fiemap);
  assert.equal([...native.keys()].sort(), [...js.keys()].sort());
  for (const [p, f] of js) {
    assert.equal(native.get(p)!.extents, f.extents, p);
    if (f.kind === 'dir') assert.equal(f.extents, [], p);
  }
});

Walk('shared (reflinked) extents are marked', async () => {
  const sharing: Fiemap = (fd) => fiemap(fd).map((e) => ({ ...e, flags: e.flags | FIEMAP_EXTENT_SHARED }));
  const files = await walk('xfs', sharing);
  const top = files.get(join(C.dir, 'top'))!;
  assert.ok(top.extents.length > 0 && top.extents.every((e) => e.shared === true), JSON.stringify(top.extents));
  const plain = await walk('xfs', fiemap);
  assert.ok(plain.get(join(C.dir, 'top'))!.extents.every((e) => e.shared === undefined));
});
Walk.run();

const Real = suite('filesystems: a real XFS image, loop-mounted read-only');
const R = { mnt: '', loop: '', skip: '' };
Real.before(() => {
  const img = join(ROOT, 'build/disks/xfs-base.img');
  if (!existsSync(img)) {
    R.skip = `${img} missing (make guest builds it)`;
    return;
  }
  R.mnt = mkdtempSync(join(tmpdir(), 'vmsubst-xfs-'));
  try {
    R.loop = execFileSync('losetup', ['-f', '--show', '-r', img], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    }).trim();
    execFileSync('mount', ['-t', 'xfs', '-o', 'ro,norecovery', R.loop, R.mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    R.skip = `cannot loop-mount XFS here: ${(e as Error).message.split('\n')[0]}`;
  }
});
Real.after(() => {
  if (R.mnt && !R.skip) execFileSync('umount', [R.mnt]);
  if (R.loop) execFileSync('losetup', ['-d', R.loop]);
  if (R.mnt) rmSync(R.mnt, { recursive: true, force: true });
});

Real('the walk indexes every file of an XFS mount and its extents hold the file bytes on the disk', async () => {
  if (R.skip) return console.log(`  skipped: ${R.skip}`);
  const m = (await readMounts()).find((x) => x.mountPoint === R.mnt)!;
  assert.is(m.fsType, 'xfs');
  for (const fm of [fiemap, ((fd: number) => fiemap(fd)) as Fiemap]) {
    const files = new Map<string, IndexedFile>();
    await walkMount(m, 0, fm, (f) => files.set(f.path, f));
    const data = files.get(join(R.mnt, 'share/data.txt'));
    assert.ok(
      data && files.has(join(R.mnt, 'bin/vprog')) && files.has(join(R.mnt, 'etc/motd')),
      [...files.keys()].join(' '),
    );
    assert.equal(files.get(R.mnt)!.extents, [], 'the root directory is indexed, without extents');
    const fd = openSync(join(ROOT, 'build/disks/xfs-base.img'), 'r');
    try {
      const want = execFileSync('cat', [join(R.mnt, 'share/data.txt')]);
      for (const e of data.extents) {
        const buf = Buffer.alloc(Math.min(e.length, want.length - e.fileOffset));
        readSync(fd, buf, 0, buf.length, e.diskStart);
        assert.ok(buf.equals(want.subarray(e.fileOffset, e.fileOffset + buf.length)), `extent at ${e.diskStart}`);
      }
    } finally {
      closeSync(fd);
    }
  }
});
Real.run();
