/**
 * File hints on XFS images (xfs_db -r, no mount): the filesystem suite's
 * fixtures from test/fixtures/build-fs-disks.sh (make guest) — xfs-patched
 * rewrites /bin/vprog's and /share/data.txt's changed blocks in place,
 * xfs-added adds /etc/added.conf — bare and inside GPT/MBR partitions.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../../../helpers/paths.js';
import { diffImages, FileSource } from '../../../../host-signal/src/diff/index.js';
import { baseFilesystems, compareElf, computeHints, type Hints } from '../../../../host-signal/src/hints/index.js';
import type { DiffResult } from '../../../../host-signal/src/diff/index.js';
import { partitioned } from '../../../helpers/ext4-images.js';
import { TempDir } from '../fixtures.js';

const DISKS = join(ROOT, 'build/disks');
const UUID = '6b1f3c1e-0000-4000-8000-00000000a0f5';
const missing = ['xfs-base.img', 'xfs-patched.img', 'xfs-added.img', 'vprog-v1', 'vprog-v2']
  .map((f) => join(DISKS, f))
  .filter((p) => !existsSync(p));
const xfsDb = ((): boolean => {
  try {
    execFileSync('xfs_db', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const skip =
  missing.length > 0
    ? `${missing.join(', ')} missing (run make guest)`
    : !xfsDb
      ? 'xfs_db (xfsprogs) not installed'
      : undefined;
const img = (n: string): string => join(DISKS, n);
const tmp = new TempDir();

async function hintsFor(base: string, patched: string): Promise<{ diff: DiffResult; hints: Hints }> {
  const diff = await diffImages(base, patched);
  const b = await FileSource.open(base);
  const p = await FileSource.open(patched);
  try {
    return { diff, hints: await computeHints({ path: base, source: b }, { path: patched, source: p }, diff.ranges) };
  } finally {
    await b.close();
    await p.close();
  }
}

/** The inode number of a path, by xfs_db itself (a v5 inode records its own number). */
function inodeOf(image: string, path: string): number {
  const out = execFileSync('xfs_db', ['-r', '-c', `path ${path}`, '-c', 'print v3.inumber', image], {
    encoding: 'utf8',
  });
  const m = /v3\.inumber = (\d+)/.exec(out);
  assert.ok(m, `xfs_db path ${path}: ${out.slice(0, 200)}`);
  return Number(m![1]);
}

const X = suite('hints: XFS images (xfs_db)');
const C = {} as { patched: { diff: DiffResult; hints: Hints }; added: { diff: DiffResult; hints: Hints } };
X.before(async () => {
  if (skip) return;
  C.patched = await hintsFor(img('xfs-base.img'), img('xfs-patched.img'));
  C.added = await hintsFor(img('xfs-base.img'), img('xfs-added.img'));
});
X.after(() => tmp.remove());

X('the base identity is the XFS superblock: type, UUID, label, block size', async () => {
  if (skip) return console.log(`  skipped: ${skip}`);
  const b = await FileSource.open(img('xfs-base.img'));
  try {
    const [fs, ...rest] = await baseFilesystems(b);
    assert.equal(rest.length, 0);
    assert.equal(
      { type: fs!.type, uuid: fs!.uuid, label: fs!.label, offset: fs!.offset, bs: fs!['block-size'] },
      { type: 'xfs', uuid: UUID, label: 'vmsubst-xfs', offset: 0, bs: 4096 },
    );
    const blkid = execFileSync('xfs_db', ['-r', '-c', 'sb 0', '-c', 'print dblocks blocksize', img('xfs-base.img')], {
      encoding: 'utf8',
    });
    const dblocks = Number(/dblocks = (\d+)/.exec(blkid)![1]);
    assert.equal(fs!.size, dblocks * 4096);
  } finally {
    await b.close();
  }
});

X('the in-place rewritten files are found with their paths and inodes, every range attributed', () => {
  if (skip) return console.log(`  skipped: ${skip}`);
  const { diff, hints } = C.patched;
  assert.equal(
    hints.files.map((f) => f.path),
    ['/bin/vprog', '/share/data.txt'],
    hints.notes.join('\n'),
  );
  for (const f of hints.files) {
    assert.equal(f.filesystem, 0);
    assert.equal(f.inode, inodeOf(img('xfs-patched.img'), f.path), f.path);
  }
  assert.equal(hints.rangeFiles.length, diff.ranges.length);
  hints.rangeFiles.forEach((list, i) =>
    assert.ok(
      list.length === 1,
      `range ${i} (${diff.ranges[i]!.offset}) → ${JSON.stringify(list)}; notes: ${hints.notes.join(' | ')}`,
    ),
  );
  assert.not.ok(
    hints.notes.some((n) => n.includes('metadata')),
    `a pure data change reported metadata: ${hints.notes.join(' | ')}`,
  );
});

X("the ELF file gets the verdict the images' own files give; the text file none", () => {
  if (skip) return console.log(`  skipped: ${skip}`);
  const vprog = C.patched.hints.files.find((f) => f.path === '/bin/vprog')!;
  const expected = compareElf(readFileSync(img('vprog-v1')), readFileSync(img('vprog-v2')));
  assert.equal(vprog.elf, expected.elf);
  if (expected.elf === 'code-changed') assert.equal(vprog['elf-change'], expected.change);
  assert.equal(C.patched.hints.files.find((f) => f.path === '/share/data.txt')!.elf, undefined);
});

X('an added file is found by its data block; the metadata blocks are noted as refused', () => {
  if (skip) return console.log(`  skipped: ${skip}`);
  const { hints } = C.added;
  assert.equal(
    hints.files.map((f) => f.path),
    ['/etc/added.conf'],
    hints.notes.join('\n'),
  );
  assert.equal(hints.files[0]!.elf, undefined);
  assert.ok(
    hints.notes.some((n) => /no regular file's data/.test(n) && /refuses XFS metadata/.test(n)),
    hints.notes.join('\n'),
  );
});

for (const table of ['gpt', 'mbr'] as const) {
  X(`an XFS in a ${table.toUpperCase()} partition: the same files, the partition recorded`, async () => {
    if (skip) return console.log(`  skipped: ${skip}`);
    const base = join(tmp.path, `${table}-base.img`);
    const patched = join(tmp.path, `${table}-patched.img`);
    const { offset } = partitioned(img('xfs-base.img'), base, table);
    partitioned(img('xfs-patched.img'), patched, table);
    const { hints } = await hintsFor(base, patched);
    assert.equal(
      hints.filesystems.map((f) => [f.type, f.uuid, f.offset, f.partition, f['partition-table']]),
      [['xfs', UUID, offset, 1, table]],
    );
    assert.equal(
      hints.files.map((f) => [f.path, f.elf === undefined ? 'none' : 'elf']),
      C.patched.hints.files.map((f) => [f.path, f.elf === undefined ? 'none' : 'elf']),
    );
    assert.equal(
      hints.files.map((f) => f.elf),
      C.patched.hints.files.map((f) => f.elf),
    );
  });
}

X.run();
