/**
 * File hints and ELF layout verdicts on real ext4 images (mkfs.ext4 -d,
 * patched with dd and debugfs -w), checked against debugfs (icheck, ncheck,
 * stats) and readelf; the base identity of bare, MBR and GPT images.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { diffImages, FileSource } from '../../../host-signal/src/diff/index.js';
import { baseFilesystems, compareElf, computeHints, elfLayout, findFilesystems, type Hints } from '../../../host-signal/src/hints/index.js';
import type { DiffResult } from '../../../host-signal/src/diff/index.js';
import { UUID, buildExt4Pair, debugfs, partitioned, type Ext4Pair } from '../../helpers/ext4-images.js';
import { TempDir } from './fixtures.js';

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

const readelf = (args: string[], file: string): string => execFileSync('readelf', ['-W', ...args, file], { encoding: 'utf8' });

// ---- ELF layout ------------------------------------------------------------------

const Elf = suite('hints: ELF layout (readelf as oracle)');
Elf.before(() => {
  C.pair = buildExt4Pair(tmp.path);
});

Elf('a one-constant change keeps the layout; readelf agrees', () => {
  const { progA, progB } = C.pair.progs;
  assert.is.not(readFileSync(progA).equals(readFileSync(progB)), true);
  assert.equal(compareElf(readFileSync(progA), readFileSync(progB)), { layout: 'same-layout' });
  for (const what of [['-l'], ['-S'], ['-s']]) {
    assert.is(readelf(what, progA).replace(/progA/g, 'X'), readelf(what, progB).replace(/progB/g, 'X'), `readelf ${what[0]} differs`);
  }
});

Elf('an added function is a new layout; readelf agrees', () => {
  const { progA, progC } = C.pair.progs;
  const v = compareElf(readFileSync(progA), readFileSync(progC));
  assert.is(v.layout, 'new-layout');
  assert.ok(v.layout === 'new-layout' && v.change.length > 0);
  assert.is.not(readelf(['-S', '-s'], progA).replace(/progA/g, 'X'), readelf(['-S', '-s'], progC).replace(/progC/g, 'X'));
});

Elf('the parser sees the sections and symbols readelf lists', () => {
  const { progC } = C.pair.progs;
  const layout = elfLayout(readFileSync(progC));
  const sections = layout.lines.filter((l) => l.startsWith('shdr ')).map((l) => /name=(\S*)/.exec(l)![1]);
  const shnum = Number(/Number of section headers:\s+(\d+)/.exec(readelf(['-h'], progC))![1]);
  assert.is(sections.length, shnum);
  for (const name of ['.text', '.dynsym', '.symtab', '.rodata', '.data']) assert.ok(sections.includes(name), `${name} missing`);
  const syms = layout.lines.filter((l) => l.startsWith('sym .symtab '));
  const symtabCount = Number(/Symbol table '\.symtab' contains (\d+) entries/.exec(readelf(['-s'], progC))![1]);
  assert.is(syms.length, symtabCount);
  const extra = syms.find((l) => l.startsWith('sym .symtab extra '));
  const oracle = /^\s*\d+:\s+([0-9a-f]+)\s+(\d+)\s+FUNC\s+GLOBAL\s+\S+\s+\S+\s+extra$/m.exec(readelf(['-s'], progC));
  assert.ok(extra && oracle, 'the added function is in .symtab');
  assert.is(/value=([0-9a-f]+)/.exec(extra!)![1], BigInt(`0x${oracle![1]}`).toString(16));
  assert.is(/size=([0-9a-f]+)/.exec(extra!)![1], Number(oracle![2]).toString(16));
});

Elf('a truncated ELF file is judged new-layout with the reason', () => {
  const a = readFileSync(C.pair.progs.progA);
  const v = compareElf(a, a.subarray(0, 200));
  assert.is(v.layout, 'new-layout');
  assert.match(v.layout === 'new-layout' ? v.change : '', /patched: .*past the end/);
  assert.equal(compareElf(undefined, a), { layout: 'new-layout', change: 'not in the base image' });
  assert.equal(compareElf(Buffer.from('#!/bin/sh\n'), a), { layout: 'new-layout', change: 'not an ELF file in the base image' });
});

Elf.run();

// ---- hints on a bare ext4 image ----------------------------------------------------

const Bare = suite('hints: bare ext4 image (debugfs as oracle)');
Bare.before(async () => {
  C.pair ??= buildExt4Pair(tmp.path);
  Object.assign(C, await hintsFor(C.pair.base, C.pair.patched));
});

Bare('the base identity is the superblock UUID and label', () => {
  assert.equal(C.hints.filesystems, [{ type: 'ext4', offset: 0, size: 24 << 20, 'block-size': 4096, uuid: UUID, label: 'hint-test' }]);
  assert.match(debugfs(C.pair.base, 'stats'), new RegExp(`Filesystem UUID:\\s+${UUID}`));
});

Bare('the changed files and their verdicts', () => {
  const byPath = Object.fromEntries(C.hints.files.map((f) => [f.path, f]));
  assert.equal(Object.keys(byPath).sort(), ['/bin/grown', '/bin/same', '/etc/conf.txt']);
  assert.is(byPath['/bin/same']!.elf, 'same-layout');
  assert.is(byPath['/bin/grown']!.elf, 'new-layout');
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
    for (const line of debugfs(C.pair.patched, `icheck ${blocks.join(' ')}`).split('\n').slice(1)) {
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
      assert.equal(fss, [{ type: 'ext4', offset, size: 24 << 20, 'block-size': 4096, uuid: UUID, label: 'hint-test', partition: 1, 'partition-table': table }]);
    } finally {
      await src.close();
    }
    // debugfs reads the same filesystem at that offset.
    assert.match(execFileSync('debugfs', ['-R', 'stats', `${base}?offset=${offset}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), new RegExp(UUID));
    const { hints } = await hintsFor(base, patched);
    const verdicts = Object.fromEntries(hints.files.map((f) => [f.path, f.elf ?? 'data']));
    assert.equal(verdicts, { '/bin/grown': 'new-layout', '/bin/same': 'same-layout', '/etc/conf.txt': 'data' });
  });
}

Parts('an image with neither ext4 nor a partition table has no filesystems', async () => {
  const junk = Buffer.alloc(1 << 20, 7);
  assert.equal(await findFilesystems(async (o, l) => junk.subarray(o, o + l), junk.length), []);
  const path = tmp.file('junk.img', junk);
  const { hints } = await hintsFor(path, path);
  assert.equal(hints.filesystems, []);
  assert.match(hints.notes.join('\n'), /no ext4 filesystem/);
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
