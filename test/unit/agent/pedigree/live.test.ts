/**
 * The live pedigree index on a writable directory of the host's own
 * filesystem: chokidar events re-map a written, renamed or removed file, and
 * fresh() catches what no event reported yet.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
  unlinkSync,
  writeFileSync,
  statSync,
  appendFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsIndex } from '../../../../agent/src/pedigree/live.js';
import type { Mount } from '../../../../agent/src/pedigree/mounts.js';
import type { Fiemap } from '../../../../agent/src/pedigree/walk.js';

const Live = suite('live pedigree index (chokidar)');
const C = { dir: '', fs: undefined as FsIndex | undefined, fiemap: undefined as Fiemap | undefined };

async function until<T>(what: string, f: () => T | undefined, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The file the index says owns the first block of `path`'s first extent, as seen by FIEMAP now. */
function ownerOfFirstBlock(fs: FsIndex, path: string): string | undefined {
  const f = fs.byPath.get(path);
  const e = f?.extents[0];
  if (!e) return undefined;
  return fs.index.lookup([{ offset: e.diskStart, length: 1 }]).files[0]?.file.path;
}

Live.before(async () => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-live-'));
  mkdirSync(join(C.dir, 'sub'));
  for (let i = 0; i < 20; i++) writeFileSync(join(C.dir, 'sub', `f${i}`), Buffer.alloc(8192, i));
  C.fiemap = (await import('../../../../agent/src/native/index.js')).fiemap;
  const mount: Mount = { mountPoint: C.dir, devNum: '0:0', root: '/', fsType: 'ext4', readOnly: false };
  C.fs = await FsIndex.build(mount, 0, C.fiemap);
  await C.fs.watching;
});
Live.after(async () => {
  await C.fs?.close();
  rmSync(C.dir, { recursive: true, force: true });
});

Live('the initial walk maps every file and directory entry', () => {
  const fs = C.fs!;
  const f3 = join(C.dir, 'sub', 'f3');
  assert.ok(fs.byPath.get(f3)!.extents.length > 0);
  assert.is(ownerOfFirstBlock(fs, f3), f3);
  assert.is(fs.byPath.get(join(C.dir, 'sub'))!.entries!.get('f3'), statSync(f3).ino);
});

Live('a written file is mapped, with its directory entry', async () => {
  const fs = C.fs!;
  const p = join(C.dir, 'sub', 'new.bin');
  writeFileSync(p, Buffer.alloc(16384, 7));
  await until(
    'new.bin indexed',
    () => (fs.byPath.get(p)?.size === 16384 && fs.byPath.get(p)!.extents.length > 0) || undefined,
  );
  assert.is(ownerOfFirstBlock(fs, p), p);
  assert.is(fs.byPath.get(join(C.dir, 'sub'))!.entries!.get('new.bin'), statSync(p).ino);
});

Live('a renamed file moves in the index', async () => {
  const fs = C.fs!;
  const from = join(C.dir, 'sub', 'f5');
  const to = join(C.dir, 'sub', 'f5-renamed');
  const disk = fs.byPath.get(from)!.extents[0]!.diskStart;
  renameSync(from, to);
  await until('rename indexed', () => (fs.byPath.has(to) && !fs.byPath.has(from)) || undefined);
  assert.is(fs.index.lookup([{ offset: disk, length: 1 }]).files[0]?.file.path, to);
  const entries = fs.byPath.get(join(C.dir, 'sub'))!.entries!;
  assert.ok(entries.has('f5-renamed') && !entries.has('f5'));
});

Live('a removed file leaves the index: its blocks map to nothing', async () => {
  const fs = C.fs!;
  const p = join(C.dir, 'sub', 'f9');
  const disk = fs.byPath.get(p)!.extents[0]!.diskStart;
  unlinkSync(p);
  await until('removal indexed', () => !fs.byPath.has(p) || undefined);
  const r = fs.index.lookup([{ offset: disk, length: 4096 }]);
  assert.equal(
    r.files.filter((f) => f.file.path === p),
    [],
  );
});

Live('fresh() catches changes no event has delivered yet', async () => {
  const mount: Mount = { mountPoint: C.dir, devNum: '0:0', root: '/', fsType: 'ext4', readOnly: false };
  const fs = await FsIndex.build(mount, 0, C.fiemap!, { watch: false });
  const grown = join(C.dir, 'sub', 'f1');
  appendFileSync(grown, Buffer.alloc(65536, 1));
  mkdirSync(join(C.dir, 'late'));
  writeFileSync(join(C.dir, 'late', 'x'), Buffer.alloc(4096, 2));
  writeFileSync(join(C.dir, 'sub', 'y'), Buffer.alloc(4096, 3));
  unlinkSync(join(C.dir, 'sub', 'f2'));
  assert.ok((await fs.fresh()) >= 4);
  assert.is(fs.byPath.get(grown)!.size, 8192 + 65536);
  const total = fs.byPath.get(grown)!.extents.reduce((n, e) => n + e.length, 0);
  assert.ok(total >= 8192 + 65536, `${total} bytes mapped`);
  assert.ok(fs.byPath.has(join(C.dir, 'late', 'x')));
  assert.is(ownerOfFirstBlock(fs, join(C.dir, 'sub', 'y')), join(C.dir, 'sub', 'y'));
  assert.not.ok(fs.byPath.has(join(C.dir, 'sub', 'f2')));
  assert.is(await fs.fresh(), 0);
});

Live.run();
