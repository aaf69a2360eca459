/**
 * The pieces of "never success while the guest sees old content", without a guest: the read-back
 * check's hashing from the verification's bytes, the script test for open readers, and the
 * `stale` scan over a fake /proc (pinned, old-inode, mixed).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ReadbackCheck, describeStale } from '../../../../agent/src/substitution/readback.js';
import { isScript, parseFdinfo } from '../../../../agent/src/proc/readers.js';
import { staleProcesses } from '../../../../agent/src/substitution/stale.js';
import { devToMapsField } from '../../../../agent/src/proc/mappers.js';
import type { FileHit } from '../../../../agent/src/pedigree/index.js';
import type { JournalEntry } from '../../../../agent/src/journal/journal.js';

const R = suite('read-back: file pieces hashed from the verified disk bytes');
const dir = mkdtempSync(join(tmpdir(), 'vmsubst-invariant-'));
R.after(() => rmSync(dir, { recursive: true, force: true }));

/** A 3-block file whose blocks lie out of order on a 16-block "disk". */
function world(content: Buffer): { hit: FileHit; disk: Buffer; path: string } {
  const path = join(dir, `f${Math.random().toString(16).slice(2)}`);
  writeFileSync(path, content);
  const st = statSync(path);
  const disk = Buffer.alloc(16 * 4096, 0xee);
  content.subarray(0, 8192).copy(disk, 8 * 4096); // file blocks 0-1 at disk blocks 8-9
  content.subarray(8192).copy(disk, 3 * 4096); // file block 2 (short: 100 bytes) at disk block 3
  const file = {
    path,
    dev: Number(st.dev),
    ino: Number(st.ino),
    kind: 'file' as const,
    size: content.length,
    mount: { mountPoint: dir } as never,
    extents: [
      { diskStart: 8 * 4096, fileOffset: 0, length: 8192 },
      { diskStart: 3 * 4096, fileOffset: 8192, length: 4096 },
    ],
  };
  return { hit: { file, ranges: [{ offset: 4096, length: 8192 }] }, disk, path };
}
const feed = (c: ReadbackCheck, disk: Buffer, ranges: [number, number][]): void => {
  for (const [o, l] of ranges) c.observe(o, disk.subarray(o, o + l));
};
const openIno = (path: string) => open(path, 'r');

R('the file reads back as the disk: nothing stale, bytes counted up to the file end', async () => {
  const content = Buffer.concat([Buffer.alloc(8192, 1), Buffer.alloc(100, 2)]);
  const w = world(content);
  const c = ReadbackCheck.of([{ hit: w.hit, policy: 'remap' }]);
  assert.is(c.pieces, 2);
  feed(c, w.disk, [
    [3 * 4096, 4096],
    [8 * 4096, 8192],
  ]);
  const r = await c.check(openIno);
  assert.equal(r.stale, []);
  assert.equal(r.readback, { files: 1, bytes: 4096 + 100 });
});

R('a page that still reads old content is stale: named by file range, no content', async () => {
  const content = Buffer.concat([Buffer.alloc(8192, 1), Buffer.alloc(100, 2)]);
  const w = world(content);
  const c = ReadbackCheck.of([{ hit: w.hit, policy: 'remap' }]);
  w.disk[9 * 4096 + 7] = 9; // the disk holds new bytes the file (its cache) does not show
  feed(c, w.disk, [
    [3 * 4096, 4096],
    [8 * 4096, 8192],
  ]);
  const r = await c.check(openIno);
  assert.equal(r.stale, [{ path: w.path, ino: w.hit.file.ino, ranges: [{ offset: 4096, length: 4096 }] }]);
  assert.match(describeStale(r.stale), new RegExp(`inode ${w.hit.file.ino}\\) at 4096\\+4096`));
  const again = ReadbackCheck.of([{ hit: w.hit, policy: 'report' }]);
  feed(again, w.disk, [
    [3 * 4096, 4096],
    [8 * 4096, 8192],
  ]);
  const m = await again.check(openIno);
  assert.equal(m.stale, [], 'under report the kept pages are expected');
  assert.is(m.readback.mixed?.[0]?.path, w.path);
});

R('a path that names another inode now is skipped, not failed', async () => {
  const w = world(Buffer.alloc(8292, 1));
  const c = ReadbackCheck.of([{ hit: w.hit, policy: 'remap' }]);
  feed(c, w.disk, [
    [3 * 4096, 4096],
    [8 * 4096, 8192],
  ]);
  const r = await c.check(async () => {
    const { SwappedFileError } = await import('../../../../agent/src/substitution/open-changed.js');
    throw new SwappedFileError('replaced');
  });
  assert.equal(r.stale, []);
  assert.match(r.readback.skipped?.[0]?.reason ?? '', /another inode/);
});

const S = suite('readers and stale processes');
S('fdinfo and the script test: named on the command line, or a shell past byte 0', () => {
  assert.equal(parseFdinfo('pos:\t57\nflags:\t0100000\nmnt_id:\t30\n'), { pos: 57, flags: 0o100000 });
  const info = { pos: 57, flags: 0o100000 };
  assert.match(
    isScript(['sh', '/mnt/data/bin/loop.sh'], '/', '/mnt/data/bin/loop.sh', 'sh', '/bin/busybox', info) ?? '',
    /command line/,
  );
  assert.match(
    isScript(['sh', 'bin/loop.sh'], '/mnt/data', '/mnt/data/bin/loop.sh', 'sh', undefined, info) ?? '',
    /command line/,
  );
  assert.match(isScript(['bash'], '/', '/x.sh', 'bash', '/usr/bin/bash', info) ?? '', /shell/);
  assert.is(
    isScript(['tail', '-f', '/var/log/x'], '/', '/var/log/x', 'tail', '/usr/bin/tail', info),
    undefined,
    'a program reading data',
  );
  assert.match(
    isScript(['/bin/sh', '/opt/run.sh'], '/', '/opt/run.sh', 'run.sh', '/bin/dash', info) ?? '',
    /#! script/,
  );
  assert.is(
    isScript(['sh', '/x.sh'], '/', '/x.sh', 'sh', '/bin/sh', { pos: 10, flags: 2 }),
    undefined,
    'opened for writing',
  );
  assert.is(isScript(['bash'], '/', '/x.sh', 'bash', undefined, { pos: 0, flags: 0 }), undefined, 'not read into');
});

S('stale over a fake /proc: pinned from the journal, old inode, mixed under report', async () => {
  const proc = join(dir, 'proc');
  const files = join(dir, 'files');
  mkdirSync(files, { recursive: true });
  for (const n of ['prog', 'data', 'lib']) writeFileSync(join(files, n), n);
  const st = (n: string) => statSync(join(files, n));
  const dev = devToMapsField(Number(st('prog').dev));
  const line = (n: string, ino: number | bigint, suffix = '') =>
    `00400000-00401000 r-xp 00000000 ${dev} ${ino}   ${join(files, n)}${suffix}`;
  const mk = (pid: number, comm: string, maps: string[]): void => {
    mkdirSync(join(proc, String(pid)), { recursive: true });
    writeFileSync(join(proc, String(pid), 'maps'), maps.join('\n') + '\n');
    writeFileSync(join(proc, String(pid), 'comm'), comm + '\n');
    writeFileSync(join(proc, String(pid), 'cgroup'), pid === 10 ? '0::/system.slice/prog.service\n' : '0::/\n');
  };
  mk(10, 'prog', [line('prog', st('prog').ino)]);
  mk(11, 'reader', [line('data', st('data').ino)]);
  mk(12, 'old', [line('lib', 999999), line('gone', 5, ' (deleted)')]);
  mk(13, 'clean', [line('lib', st('lib').ino), '7f00-7f10 rw-s 00000000 00:01 77   /dev/shm/x (deleted)']);
  const entries: JournalEntry[] = [
    {
      id: 'b'.repeat(16),
      state: 'done',
      last: {
        t: '',
        id: 'b'.repeat(16),
        phase: 'done',
        report: {
          plan: { files: [{ path: join(files, 'data'), ino: Number(st('data').ino), policy: 'report' }] },
          pinned: [],
        },
      },
    },
    {
      id: 'a'.repeat(16),
      state: 'done',
      last: {
        t: '',
        id: 'a'.repeat(16),
        phase: 'done',
        report: {
          pinned: [{ pid: 10, comm: 'prog', path: join(files, 'prog'), 'bytes-copied': 4096, status: 'pinned' }],
        },
      },
    },
  ];
  const r = await staleProcesses(entries, proc);
  const rows = r.processes.map(
    (p) => `${p.pid} ${p.comm} ${p.why} ${p.file.slice(files.length)}${p.unit ? ` ${p.unit}` : ''}`,
  );
  assert.equal(rows, [
    '10 prog pinned /prog prog.service',
    '11 reader mixed /data',
    '12 old old-inode /gone',
    '12 old old-inode /lib',
  ]);
  assert.is(r.sources.processes, 4);
});

S(
  'stale through an overlay: a file mapped from the lower layer is current there; one copied up or replaced is not',
  async () => {
    const proc = join(dir, 'proc-ovl');
    const [ovl, lower, upper] = ['ovl', 'lower', 'upper'].map((n) => join(dir, n, 'bin'));
    for (const d of [ovl, lower, upper]) mkdirSync(d!, { recursive: true });
    // The overlay's own view (a stat of it answers with the overlay's device), and the layers under it.
    for (const n of ['x', 'y', 'z']) writeFileSync(join(ovl!, n), `view ${n}`);
    for (const n of ['x', 'y', 'z']) writeFileSync(join(lower!, n), `lower ${n}`);
    writeFileSync(join(upper!, 'y'), 'copied up');
    const lowerOf = (n: string) => statSync(join(lower!, n));
    const dev = devToMapsField(Number(lowerOf('x').dev));
    mkdirSync(join(proc, 'self'), { recursive: true });
    writeFileSync(
      join(proc, 'self', 'mountinfo'),
      `40 1 0:99 / ${join(dir, 'ovl')} ro,relatime - overlay overlay rw,lowerdir=${join(dir, 'lower')},` +
        `upperdir=${join(dir, 'upper')},workdir=${join(dir, 'work')}\n`,
    );
    const mk = (pid: number, n: string, ino: number | bigint): void => {
      mkdirSync(join(proc, String(pid)), { recursive: true });
      writeFileSync(
        join(proc, String(pid), 'maps'),
        `00400000-00401000 r-xp 00000000 ${dev} ${ino}   ${join(ovl!, n)}\n`,
      );
      writeFileSync(join(proc, String(pid), 'comm'), `p${n}\n`);
      writeFileSync(join(proc, String(pid), 'cgroup'), '0::/\n');
    };
    mk(20, 'x', lowerOf('x').ino); // maps the lower file the overlay still shows
    mk(21, 'y', lowerOf('y').ino); // maps the lower file, but the overlay now shows the copied-up one
    mk(22, 'z', 999999); // maps a lower inode no longer at that path
    const r = await staleProcesses([], proc);
    assert.equal(
      r.processes.map((p) => `${p.pid} ${p.why} ${p.file.slice(ovl!.length)}`),
      ['21 old-inode /y', '22 old-inode /z'],
    );
  },
);

R.run();
S.run();
