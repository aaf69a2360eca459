/**
 * File hints and ELF code verdicts on real ext4 images (mkfs.ext4 -d,
 * patched with dd and debugfs -w), checked against debugfs (icheck, ncheck,
 * stats) and readelf; the base identity of bare, MBR and GPT images.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../../../helpers/paths.js';
import { diffImages, FileSource } from '../../../../host-signal/src/diff/index.js';
import {
  baseFilesystems,
  compareElf,
  computeHints,
  elfCode,
  findFilesystems,
  type Hints,
} from '../../../../host-signal/src/hints/index.js';
import type { DiffResult } from '../../../../host-signal/src/diff/index.js';
import { UUID, buildExt4Pair, debugfs, partitioned, type Ext4Pair } from '../../../helpers/ext4-images.js';
import { TempDir } from '../fixtures.js';

const tmp = new TempDir();
const C = {} as { pair: Ext4Pair; diff: DiffResult; hints: Hints };

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

const readelf = (args: string[], file: string): string =>
  execFileSync('readelf', ['-W', ...args, file], { encoding: 'utf8' });

// ---- ELF code verdicts -------------------------------------------------------------

/** The four builds of test/fixtures/libvx.c the guest suite uses (build-libvx-disks.sh): v1, rodata, moved, added. */
function buildLibvx(dir: string): Record<'v1' | 'rodata' | 'moved' | 'added', string> {
  const src = join(ROOT, 'test/fixtures/libvx.c');
  const cc = (name: string, defs: string[]): string => {
    const out = join(dir, `libvx-${name}.so`);
    execFileSync(
      'gcc',
      ['-shared', '-fPIC', '-O2', '-s', '-Wl,--build-id=none', '-Wl,-soname,libvx.so', ...defs, '-o', out, src],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    return out;
  };
  return {
    v1: cc('v1', ['-DVX_VERSION=v1']),
    rodata: cc('rodata', ['-DVX_VERSION=v2']),
    moved: cc('moved', ['-DVX_VERSION=v2', '-DMOVED']),
    added: cc('added', ['-DVX_VERSION=v2', '-DADDED']),
  };
}

/** readelf's executable PT_LOADs: [offset, filesz]. */
function executableSegments(file: string): [number, number][] {
  return readelf(['-l'], file)
    .split('\n')
    .filter((l) => /^\s*LOAD\s/.test(l) && /\sR?W?\s?E\s+0x/.test(l))
    .map((l) => l.trim().split(/\s+/))
    .map((f) => [Number(f[1]), Number(f[4])]);
}

const Elf = suite('hints: ELF code verdicts on gcc output (readelf as oracle)');
const L = {} as { lib: Record<'v1' | 'rodata' | 'moved' | 'added', string> };
Elf.before(() => {
  C.pair = buildExt4Pair(tmp.path);
  L.lib = buildLibvx(tmp.path);
});

Elf('the parser finds the executable segments readelf lists, and the run-time tables', () => {
  for (const f of [L.lib.v1, C.pair.progs.progC]) {
    const code = elfCode(readFileSync(f));
    const segs = code.ranges.filter((r) => r.what.startsWith('executable segment')).map((r) => [r.offset, r.size]);
    assert.equal(segs, executableSegments(f), f);
    assert.ok(segs.length >= 1, `${f}: no executable segment`);
    const tables = code.ranges
      .filter((r) => r.what.startsWith('section '))
      .map((r) => /^section (\S+)/.exec(r.what)![1]);
    for (const name of ['.dynamic', '.dynsym', '.dynstr', '.gnu.hash', '.eh_frame'])
      assert.ok(tables.includes(name), `${f}: ${name} missing from ${tables.join(' ')}`);
    assert.not.ok(tables.includes('.rodata') || tables.includes('.data'), '.rodata and .data may change under remap');
  }
});

Elf('only a string changed (.rodata): code-unchanged', () => {
  const [a, b] = [readFileSync(L.lib.v1), readFileSync(L.lib.rodata)];
  assert.not.ok(a.equals(b));
  assert.equal(compareElf(a, b), { elf: 'code-unchanged' });
  const { progA, progB } = C.pair.progs;
  assert.not.ok(readFileSync(progA).equals(readFileSync(progB)));
  assert.equal(compareElf(readFileSync(progA), readFileSync(progB)), { elf: 'code-unchanged' });
});

Elf(
  "instructions moved inside a function (same sections, symbols, sizes: the user's case): code-changed, at the first moved byte",
  () => {
    // What the older verdict compared is equal: the layout is the same.
    assert.is(readelf(['-S', '-l', '--dyn-syms'], L.lib.v1), readelf(['-S', '-l', '--dyn-syms'], L.lib.moved));
    const [a, b] = [readFileSync(L.lib.v1), readFileSync(L.lib.moved)];
    const v = compareElf(a, b);
    assert.is(v.elf, 'code-changed');
    const at = Number(
      /bytes differ from file offset (0x[0-9a-f]+)/.exec(v.elf === 'code-changed' ? v.change : '')?.[1],
    );
    assert.match(v.elf === 'code-changed' ? v.change : '', /^executable segment/);
    let first = 0;
    while (a[first] === b[first]) first++;
    assert.is(at, first, 'the first differing byte of the file, which lies in the executable segment');
    const [[off, size]] = executableSegments(L.lib.v1) as [[number, number]];
    assert.ok(at >= off && at < off + size);
  },
);

Elf('a function added before the others: code-changed', () => {
  const v = compareElf(readFileSync(L.lib.v1), readFileSync(L.lib.added));
  assert.is(v.elf, 'code-changed');
  assert.ok(v.elf === 'code-changed' && v.change.length > 0);
  const p = compareElf(readFileSync(C.pair.progs.progA), readFileSync(C.pair.progs.progC));
  assert.is(p.elf, 'code-changed');
});

Elf(
  'one byte flipped: in the code → changed there; in .dynstr (lazy binding reads it) → changed; in .rodata → unchanged',
  () => {
    const a = readFileSync(L.lib.v1);
    const code = elfCode(a);
    const seg = code.ranges.find((r) => r.what.startsWith('executable segment'))!;
    const flip = (at: number): Buffer => {
      const b = Buffer.from(a);
      b[at] = b[at]! ^ 0xff;
      return b;
    };
    const inCode = compareElf(a, flip(seg.offset + 5));
    assert.equal(inCode, {
      elf: 'code-changed',
      change: `${seg.what}: bytes differ from file offset 0x${(seg.offset + 5).toString(16)} (range 0x${seg.offset.toString(16)}+0x${seg.size.toString(16)})`,
    });
    const dynstr = code.ranges.find((r) => r.what.startsWith('section .dynstr'))!;
    const inDynstr = compareElf(a, flip(dynstr.offset + 1));
    assert.is(inDynstr.elf, 'code-changed');
    assert.match(inDynstr.elf === 'code-changed' ? inDynstr.change : '', /^section \.dynstr/);
    const rodata = /\.rodata\s+PROGBITS\s+[0-9a-f]+\s+([0-9a-f]+)/.exec(readelf(['-S'], L.lib.v1))!;
    assert.equal(compareElf(a, flip(parseInt(rodata[1]!, 16))), { elf: 'code-unchanged' });
  },
);

Elf('a changed program header is code-changed, even with the same bytes', () => {
  const a = readFileSync(L.lib.v1);
  const b = Buffer.from(a);
  const phoff = Number(b.readBigUInt64LE(32));
  // The last program header's p_align (a field nothing else reads here).
  const phnum = b.readUInt16LE(56);
  const p = phoff + (phnum - 1) * 56;
  b.writeBigUInt64LE(b.readBigUInt64LE(p + 48) * 2n, p + 48);
  const v = compareElf(a, b);
  assert.is(v.elf, 'code-changed');
  assert.match(v.elf === 'code-changed' ? v.change : '', /^program headers: phdr /);
});

Elf(
  'a dynamically linked file without section headers is taken as changed; a static one is judged by its segments',
  () => {
    const strip = (buf: Buffer): Buffer => {
      const b = Buffer.from(buf);
      b.writeUInt16LE(0, 60); // e_shnum
      return b;
    };
    const a = strip(readFileSync(L.lib.v1));
    const v = compareElf(a, strip(readFileSync(L.lib.rodata)));
    assert.is(v.elf, 'code-changed');
    assert.match(v.elf === 'code-changed' ? v.change : '', /without section headers/);
    const vprog = join(tmp.path, 'vprog-static');
    execFileSync('gcc', ['-static', '-O2', '-DVERSION="v1"', '-o', vprog, join(ROOT, 'test/fixtures/vprog.c')]);
    const s = strip(readFileSync(vprog));
    assert.equal(compareElf(s, Buffer.from(s)), { elf: 'code-unchanged' });
  },
);

Elf('a truncated or foreign file is code-changed with the reason', () => {
  const a = readFileSync(C.pair.progs.progA);
  const v = compareElf(a, a.subarray(0, 200));
  assert.is(v.elf, 'code-changed');
  assert.match(v.elf === 'code-changed' ? v.change : '', /patched: .*past the end/);
  assert.equal(compareElf(undefined, a), { elf: 'code-changed', change: 'not in the base image' });
  assert.equal(compareElf(Buffer.from('#!/bin/sh\n'), a), {
    elf: 'code-changed',
    change: 'not an ELF file in the base image',
  });
});

Elf.run();

// ---- hints on a bare ext4 image ----------------------------------------------------

const Bare = suite('hints: bare ext4 image (debugfs as oracle)');
Bare.before(async () => {
  C.pair ??= buildExt4Pair(tmp.path);
  Object.assign(C, await hintsFor(C.pair.base, C.pair.patched));
});

Bare('the base identity is the superblock UUID and label', () => {
  assert.equal(C.hints.filesystems, [
    { type: 'ext4', offset: 0, size: 24 << 20, 'block-size': 4096, uuid: UUID, label: 'hint-test' },
  ]);
  assert.match(debugfs(C.pair.base, 'stats'), new RegExp(`Filesystem UUID:\\s+${UUID}`));
});

Bare('the changed files and their verdicts', () => {
  const byPath = Object.fromEntries(C.hints.files.map((f) => [f.path, f]));
  assert.equal(Object.keys(byPath).sort(), ['/bin/grown', '/bin/same', '/etc/conf.txt']);
  assert.is(byPath['/bin/same']!.elf, 'code-unchanged');
  assert.is(byPath['/bin/grown']!.elf, 'code-changed');
  assert.ok(byPath['/bin/grown']!['elf-change']);
  assert.is(byPath['/etc/conf.txt']!.elf, undefined);
  for (const f of C.hints.files) {
    const ino = Number(/^Inode: (\d+)/m.exec(debugfs(C.pair.patched, `stat ${f.path}`))![1]);
    assert.is(f.inode, ino, `${f.path}: inode`);
  }
});

Bare('every range maps to exactly the regular files debugfs icheck/ncheck name for its blocks', () => {
  for (const [i, r] of C.diff.ranges.entries()) {
    const blocks = Array.from({ length: r.length / 4096 }, (_, k) => r.offset / 4096 + k);
    const inodes = new Set<number>();
    for (const line of debugfs(C.pair.patched, `icheck ${blocks.join(' ')}`)
      .split('\n')
      .slice(1)) {
      const m = /^\d+\s+(\d+)\s*$/.exec(line.trim());
      if (m && Number(m[1]) >= 11) inodes.add(Number(m[1]));
    }
    const expected = new Set<string>();
    for (const ino of inodes) {
      if (!/Type: regular/.test(debugfs(C.pair.patched, `stat <${ino}>`))) continue;
      for (const line of debugfs(C.pair.patched, `ncheck ${ino}`).split('\n').slice(1)) {
        const m = /^\d+\t(.*)$/.exec(line);
        if (m) expected.add(m[1]!.replace(/^\/+/, '/'));
      }
    }
    const got = new Set(C.hints.rangeFiles[i]!.map((k) => C.hints.files[k]!.path));
    assert.equal([...got].sort(), [...expected].sort(), `range ${i} at ${r.offset}`);
  }
  // Metadata ranges exist (the replaced inode, directory, bitmaps) and map to no file.
  assert.ok(C.hints.rangeFiles.some((l) => l.length === 0));
});

Bare('identical images give no files and no notes', async () => {
  const { hints } = await hintsFor(C.pair.base, C.pair.base);
  assert.equal(hints.files, []);
  assert.equal(hints.notes, []);
});

Bare.run();

// ---- partitioned images --------------------------------------------------------------

const Parts = suite('hints: MBR and GPT partitioned images');
Parts.before(() => {
  C.pair ??= buildExt4Pair(tmp.path);
});

for (const table of ['mbr', 'gpt'] as const) {
  Parts(`${table}: the filesystem is found at its partition and hints carry over`, async () => {
    const base = tmp.file(`${table}-base.img`);
    const patched = tmp.file(`${table}-patched.img`);
    const { offset } = partitioned(C.pair.base, base, table);
    partitioned(C.pair.patched, patched, table);
    const src = await FileSource.open(base);
    try {
      const fss = await baseFilesystems(src);
      assert.equal(fss, [
        {
          type: 'ext4',
          offset,
          size: 24 << 20,
          'block-size': 4096,
          uuid: UUID,
          label: 'hint-test',
          partition: 1,
          'partition-table': table,
        },
      ]);
    } finally {
      await src.close();
    }
    // debugfs reads the same filesystem at that offset.
    assert.match(
      execFileSync('debugfs', ['-R', 'stats', `${base}?offset=${offset}`], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }),
      new RegExp(UUID),
    );
    const { hints } = await hintsFor(base, patched);
    const verdicts = Object.fromEntries(hints.files.map((f) => [f.path, f.elf ?? 'data']));
    assert.equal(verdicts, { '/bin/grown': 'code-changed', '/bin/same': 'code-unchanged', '/etc/conf.txt': 'data' });
  });
}

Parts('an image with neither ext4, XFS nor a partition table has no filesystems', async () => {
  const junk = Buffer.alloc(1 << 20, 7);
  assert.equal(await findFilesystems(async (o, l) => junk.subarray(o, o + l), junk.length), []);
  const path = tmp.file('junk.img', junk);
  const { hints } = await hintsFor(path, path);
  assert.equal(hints.filesystems, []);
  assert.match(hints.notes.join('\n'), /no ext4 or XFS filesystem/);
});

Parts('a GPT with a bad header checksum is not trusted', async () => {
  const img = tmp.file('badgpt.img');
  partitioned(C.pair.base, img, 'gpt');
  const buf = readFileSync(img);
  buf[512 + 40] = buf[512 + 40]! ^ 1;
  assert.equal(await findFilesystems(async (o, l) => buf.subarray(o, o + l), buf.length), []);
});

Parts.after(() => tmp.remove());
Parts.run();
