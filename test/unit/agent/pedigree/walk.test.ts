/**
 * The addon's walk of a filesystem (agent/native/walk.c) against the
 * JavaScript walk it replaces, on real trees in the temp directory: both must
 * index the same files, directories, entries and extents, whatever the tree
 * holds (symlinks, sparse, empty and freshly written files, deep trees, odd
 * names, mount points, what the walker may not open).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  fsyncSync,
  lstatSync,
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
import { fileURLToPath } from 'node:url';
import {
  fiemap,
  isNativeError,
  nativeAddonPath,
  walkTree,
  TREE_WALK_DIR,
  TREE_WALK_FILE,
  type NativeError,
  type TreeWalkStep,
} from '../../../../agent/src/native/index.js';
import type { Mount } from '../../../../agent/src/pedigree/mounts.js';
import { ROOT } from '../../../helpers/paths.js';
import { walkMount, type Fiemap, type IndexedFile } from '../../../../agent/src/pedigree/walk.js';

const Walk = suite('native walk of a filesystem');
const C = { dir: '', mounted: '' };

function skip(test: string, reason: string): void {
  console.log(`  skipped: ${test}: ${reason}`);
}

const mountOf = (dir: string): Mount => ({
  mountPoint: dir,
  devNum: '0:0',
  root: '/',
  fsType: 'ext4',
  readOnly: false,
});
/** FIEMAP alone: walkMount takes the JavaScript walk. */
const jsOnly: Fiemap = (fd) => fiemap(fd);

/** Every indexed path → a comparable view of its IndexedFile. */
async function walkWith(dir: string, fm: Fiemap, partStart = 0): Promise<Map<string, IndexedFile>> {
  const out = new Map<string, IndexedFile>();
  await walkMount(mountOf(dir), partStart, fm, (f) => {
    assert.not.ok(out.has(f.path), `${f.path} emitted twice`);
    out.set(f.path, f);
  });
  return out;
}

function view(f: IndexedFile): unknown {
  return { ...f, mount: undefined, ctimeNs: String(f.ctimeNs), entries: f.entries ? [...f.entries].sort() : undefined };
}

async function assertSameAsJs(dir: string, partStart = 0): Promise<Map<string, IndexedFile>> {
  const js = await walkWith(dir, jsOnly, partStart);
  const native = await walkWith(dir, fiemap, partStart);
  assert.equal([...native.keys()].sort(), [...js.keys()].sort());
  for (const [path, f] of js) assert.equal(view(native.get(path)!), view(f), path);
  return native;
}

function writeSynced(path: string, chunks: { offset: number; data: Buffer }[]): void {
  const fd = openSync(path, 'w');
  try {
    for (const c of chunks) writeSync(fd, c.data, 0, c.data.length, c.offset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

Walk.before(() => {
  C.dir = mkdtempSync(join(tmpdir(), 'vmsubst-walk-'));
});
Walk.after(() => {
  if (C.mounted) spawnSync('umount', [C.mounted]);
  rmSync(C.dir, { recursive: true, force: true });
});

Walk('the addon has the walk (else the index falls back to the JavaScript walk)', () => {
  assert.type(walkTree, 'function');
  assert.is(fiemap.walkTree, walkTree);
});

Walk('files, empty and sparse files, symlinks and a fifo: the same index as the JavaScript walk', async () => {
  const d = join(C.dir, 'kinds');
  mkdirSync(join(d, 'sub'), { recursive: true });
  writeSynced(join(d, 'small'), [{ offset: 0, data: Buffer.from('hello\n') }]);
  writeSynced(join(d, 'sub', 'big'), [{ offset: 0, data: Buffer.alloc(3 << 20, 7) }]);
  writeFileSync(join(d, 'empty'), '');
  writeSynced(join(d, 'sparse'), [{ offset: 1 << 20, data: Buffer.alloc(4096, 1) }]);
  symlinkSync('small', join(d, 'link-to-file'));
  symlinkSync('sub', join(d, 'link-to-dir'));
  symlinkSync('nowhere', join(d, 'dangling'));
  spawnSync('mkfifo', [join(d, 'fifo')]);
  const idx = await assertSameAsJs(d, 1 << 30);
  assert.equal(
    [...idx.values()]
      .filter((f) => f.kind === 'file')
      .map((f) => f.path)
      .sort(),
    ['big', 'empty', 'small', 'sparse'].map((n) => join(d, n === 'big' ? 'sub/big' : n)).sort(),
  );
  assert.equal(idx.get(join(d, 'empty'))!.extents, []);
  const sparse = idx.get(join(d, 'sparse'))!;
  assert.equal(
    sparse.extents.map((e) => [e.fileOffset, e.length]),
    [[1 << 20, 4096]],
  );
  const fd = openSync(join(d, 'sparse'), 'r');
  try {
    assert.is(sparse.extents[0]!.diskStart, (1 << 30) + Number(fiemap(fd)[0]!.physical));
  } finally {
    closeSync(fd);
  }
  const entries = idx.get(d)!.entries!;
  for (const n of ['link-to-file', 'link-to-dir', 'dangling', 'fifo', 'sub', 'small'])
    assert.is(entries.get(n), lstatSync(join(d, n)).ino, n);
  assert.is(idx.get(join(d, 'sub'))!.extents.length > 0, true);
  assert.is(
    idx.get(join(d, 'sub', 'big'))!.extents.reduce((n, e) => n + e.length, 0),
    3 << 20,
  );
});

Walk('a file written a moment ago (delayed allocation) is mapped to its blocks', async () => {
  const d = join(C.dir, 'fresh');
  mkdirSync(d);
  writeFileSync(join(d, 'new'), Buffer.alloc(256 << 10, 3)); // no fsync: the blocks are not allocated yet
  const idx = await walkWith(d, fiemap);
  const f = idx.get(join(d, 'new'))!;
  assert.is(
    f.extents.reduce((n, e) => n + e.length, 0),
    256 << 10,
  );
  await assertSameAsJs(d);
});

Walk('a deep tree and a wide directory', async () => {
  const d = join(C.dir, 'deep');
  let p = d;
  for (let i = 0; i < 120; i++) p = join(p, `level${i}`);
  mkdirSync(p, { recursive: true });
  writeSynced(join(p, 'bottom'), [{ offset: 0, data: Buffer.from('deep') }]);
  const wide = join(d, 'wide');
  mkdirSync(wide);
  for (let i = 0; i < 5000; i++) writeFileSync(join(wide, `w${i}`), i % 7 === 0 ? '' : `${i}`);
  const idx = await assertSameAsJs(d);
  assert.ok(idx.has(join(p, 'bottom')));
  assert.is(idx.get(wide)!.entries!.size, 5000);
  assert.is([...idx.keys()].filter((k) => k.startsWith(wide + '/')).length, 5000);
});

Walk(
  'names with newlines and non-ASCII are indexed; names that are not UTF-8 are left out, as by the JavaScript walk',
  async () => {
    const d = join(C.dir, 'names');
    mkdirSync(d);
    writeFileSync(join(d, 'two\nlines'), 'x');
    writeFileSync(join(d, 'zürich ✓'), 'x');
    mkdirSync(join(d, 'dir\nwith newline'));
    writeFileSync(join(d, 'dir\nwith newline', 'inner'), 'x');
    // Latin-1 bytes: not UTF-8.
    writeFileSync(Buffer.concat([Buffer.from(d + '/bad-'), Buffer.from([0xe9, 0xff])]), 'x');
    mkdirSync(Buffer.concat([Buffer.from(d + '/baddir-'), Buffer.from([0xc0, 0xaf])]));
    const idx = await assertSameAsJs(d);
    assert.ok(idx.has(join(d, 'two\nlines')));
    assert.ok(idx.has(join(d, 'zürich ✓')));
    assert.ok(idx.has(join(d, 'dir\nwith newline', 'inner')));
    assert.equal([...idx.get(d)!.entries!.keys()].sort(), ['dir\nwith newline', 'two\nlines', 'zürich ✓']);
  },
);

Walk('another filesystem mounted inside is not walked', async () => {
  const d = join(C.dir, 'mnt-outer');
  mkdirSync(join(d, 'inner'), { recursive: true });
  writeFileSync(join(d, 'outside'), 'x');
  const r = spawnSync('mount', ['-t', 'tmpfs', 'vmsubst-walk-test', join(d, 'inner')], { encoding: 'utf8' });
  if (r.status !== 0)
    return skip('mount-point boundary', `cannot mount a tmpfs here (${(r.stderr || String(r.error)).trim()})`);
  C.mounted = join(d, 'inner');
  writeFileSync(join(d, 'inner', 'on-tmpfs'), 'x');
  try {
    const idx = await assertSameAsJs(d);
    assert.ok(idx.has(join(d, 'outside')));
    assert.not.ok(idx.has(join(d, 'inner')));
    assert.not.ok(idx.has(join(d, 'inner', 'on-tmpfs')));
  } finally {
    spawnSync('umount', [C.mounted]);
    C.mounted = '';
  }
});

Walk('what the walker may not open is left out the same way (run as nobody)', async () => {
  if (process.getuid?.() !== 0) return skip('unreadable entries', 'needs root to run a walk as another user');
  const d = join(C.dir, 'perm');
  mkdirSync(join(d, 'locked'), { recursive: true });
  mkdirSync(join(d, 'listable-only'));
  writeFileSync(join(d, 'locked', 'hidden'), 'x');
  writeFileSync(join(d, 'listable-only', 'unreachable'), 'x');
  writeFileSync(join(d, 'secret'), 'x');
  writeFileSync(join(d, 'public'), 'root owns this: O_NOATIME is refused to others');
  chmodSync(join(d, 'locked'), 0o000);
  chmodSync(join(d, 'listable-only'), 0o644);
  chmodSync(join(d, 'secret'), 0o000);
  chmodSync(C.dir, 0o755);
  // nobody runs a copy in this world-readable scratch directory: one bundled file and the addon,
  // so the test does not depend on where the checkout sits (a clone in /root is mode 0700).
  const runner = join(C.dir, 'runner');
  mkdirSync(runner, { mode: 0o755 });
  const script = join(runner, 'walk-compare.mjs');
  const bundled = spawnSync(
    join(ROOT, 'node_modules/.bin/esbuild'),
    [
      fileURLToPath(new URL('../../../helpers/walk-compare.js', import.meta.url)),
      '--bundle',
      '--platform=node',
      '--format=esm',
      '--log-level=warning',
      `--outfile=${script}`,
      "--banner:js=import { createRequire as __r } from 'node:module'; const require = __r(import.meta.url);",
    ],
    { encoding: 'utf8' },
  );
  assert.is(bundled.status, 0, bundled.stderr);
  copyFileSync(nativeAddonPath(), join(runner, 'vmsubst_native.node'));
  chmodSync(script, 0o644);
  chmodSync(join(runner, 'vmsubst_native.node'), 0o644);
  const r = spawnSync(process.execPath, [script, d], {
    uid: 65534,
    gid: 65534,
    encoding: 'utf8',
    cwd: runner,
    env: { ...process.env, VMSUBST_NATIVE_PATH: join(runner, 'vmsubst_native.node') },
  });
  if (r.error || (r.status !== 0 && /EACCES|permission denied/i.test(r.stderr) && !r.stdout)) {
    return skip(
      'unreadable entries',
      `nobody cannot run node on this checkout (${(r.stderr || String(r.error)).trim().split('\n')[0]})`,
    );
  }
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { same: boolean; paths: string[]; entries: string[] };
  assert.ok(out.same, r.stdout);
  assert.equal(out.paths, [d, join(d, 'listable-only'), join(d, 'public')].sort());
  assert.equal(out.entries, ['listable-only', 'public']);
});

Walk('the budget: past maxEntries the walk fails with E2BIG and says so', async () => {
  const d = join(C.dir, 'budget');
  mkdirSync(d);
  for (let i = 0; i < 10; i++) writeFileSync(join(d, `f${i}`), 'x');
  const w = walkTree!(d, lstatSync(d).dev, 5);
  const err = await w.next(1000).then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(isNativeError(err), String(err));
  assert.is((err as NativeError).code, 'E2BIG');
  assert.match((err as NativeError).message, /more than 5 entries under/);
  assert.throws(() => w.next(1000), /closed/);
  w.close();
});

Walk('steps: bounded, one at a time, directories before what they hold, nothing after close', async () => {
  const d = join(C.dir, 'steps');
  for (let i = 0; i < 5; i++) {
    mkdirSync(join(d, `d${i}`), { recursive: true });
    for (let j = 0; j < 50; j++) writeFileSync(join(d, `d${i}`, `f${j}`), 'x');
  }
  const w = walkTree!(d, lstatSync(d).dev, 1000);
  const steps: TreeWalkStep[] = [];
  let dirs = 0;
  for (;;) {
    const p = w.next(20);
    assert.throws(() => w.next(20), /already running/);
    const s = await p;
    steps.push(s);
    const n = s.records.length / 5;
    assert.ok(n <= 21, `${n} records in a step of 20`);
    assert.is(s.names.split('\0').length, n + 1);
    for (let i = 0; i < n; i++) {
      assert.ok(s.records[i * 5 + 1]! < dirs, 'a record comes after its directory');
      if (s.records[i * 5] === TREE_WALK_DIR) dirs++;
    }
    if (s.done) break;
  }
  assert.is(dirs, 6);
  assert.is(
    steps.reduce(
      (n, s) => n + [...s.records.filter((_, i) => i % 5 === 0)].filter((k) => k === TREE_WALK_FILE).length,
      0,
    ),
    250,
  );
  assert.is(steps[steps.length - 1]!.seen, 255);
  w.close();
  assert.throws(() => w.next(20), /closed/);
  w.close(); // twice is harmless
});

Walk('closing while a step runs frees the walk when the step ends', async () => {
  const d = join(C.dir, 'steps');
  const w = walkTree!(d, lstatSync(d).dev, 1000);
  const p = w.next(10);
  w.close();
  const s = await p;
  assert.ok(s.records.length > 0);
  assert.throws(() => w.next(10), /closed/);
});

Walk('bad arguments are refused before anything runs', () => {
  assert.throws(() => walkTree!('', 0, 10), TypeError);
  assert.throws(() => walkTree!(C.dir, -1, 10), RangeError);
  assert.throws(() => walkTree!(C.dir, 0, 1.5), RangeError);
  const w = walkTree!(C.dir, lstatSync(C.dir).dev, 10);
  assert.throws(() => w.next(0), RangeError);
  w.close();
});

Walk('a root that is gone or not a directory yields nothing', async () => {
  const file = join(C.dir, 'plain');
  writeFileSync(file, 'x');
  const w = walkTree!(file, lstatSync(file).dev, 10);
  const s = await w.next(10);
  assert.is(s.records.length, 0);
  assert.ok(s.done);
  w.close();
  assert.equal([...(await walkWith(file, fiemap)).keys()], []);
});

Walk.run();
