/**
 * Real ext4 images for the bundle and hint suites, made on the host with
 * mkfs.ext4 -d and patched with dd and debugfs -w (no mount, no root):
 *
 *   progA, progB  two builds of a tiny C program differing in one string (.rodata only:
 *                 no executable byte changes, code-unchanged)
 *   progC         progA's source plus one function (code-changed: code, sections and symbols move)
 *   base.img      /bin/same = progA, /bin/grown = progA, /etc/conf.txt, /share/filler
 *   patched.img   /bin/same rewritten in place with progB (same inode, same blocks),
 *                 /etc/conf.txt rewritten in place, /bin/grown replaced by a new inode
 *                 holding progC (written beside it and renamed over it)
 *
 * `partitioned()` wraps a filesystem image in an MBR or GPT disk, written by
 * hand here because no partitioning tool is installed on these machines.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  copyFileSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';

export const UUID = '6b1f3c1e-0000-4000-8000-00000000b002';

const PROGRAM = `#include <stdio.h>
static const char banner[] = "vmsubst test program " VARIANT;
#ifdef EXTRA
__attribute__((noinline)) int extra(int x) { return x * 3 + 7; }
#endif
int main(int argc, char **argv) {
  (void)argv;
#ifdef EXTRA
  printf("%s %d\\n", banner, extra(argc));
#else
  printf("%s %d\\n", banner, argc * 3);
#endif
  return 0;
}
`;

export interface ElfPrograms {
  progA: string;
  progB: string;
  progC: string;
}

export function buildPrograms(dir: string): ElfPrograms {
  const src = join(dir, 'prog.c');
  writeFileSync(src, PROGRAM);
  const cc = (out: string, defs: string[]): string => {
    const path = join(dir, out);
    execFileSync('gcc', ['-O2', '-Wl,--build-id=none', ...defs, '-o', path, src], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    return path;
  };
  const progs = {
    progA: cc('progA', ['-DVARIANT="A"']),
    progB: cc('progB', ['-DVARIANT="B"']),
    progC: cc('progC', ['-DVARIANT="A"', '-DEXTRA']),
  };
  if (statSync(progs.progA).size !== statSync(progs.progB).size)
    throw new Error('progA and progB differ in size: the code-unchanged fixture needs equal sizes');
  return progs;
}

export const debugfs = (image: string, cmd: string): string =>
  execFileSync('debugfs', ['-R', cmd, image], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
    maxBuffer: 1 << 26,
  });

/** Overwrites a file's blocks inside an ext4 image with `content` (same size), as an in-place patch lands. */
export function rewriteInPlace(image: string, path: string, content: Buffer): void {
  const blocks = debugfs(image, `blocks ${path}`)
    .trim()
    .split(/\s+/)
    .filter((w) => /^\d+$/.test(w))
    .map(Number);
  if (blocks.length !== Math.ceil(content.length / 4096))
    throw new Error(`${path}: ${blocks.length} blocks for ${content.length} bytes`);
  const fd = openSync(image, 'r+');
  try {
    blocks.forEach((b, i) => writeSync(fd, content, i * 4096, Math.min(4096, content.length - i * 4096), b * 4096));
  } finally {
    closeSync(fd);
  }
}

export interface Ext4Pair {
  base: string;
  patched: string;
  progs: ElfPrograms;
}

/** base.img and patched.img (see the file comment) in `dir`, `sizeMiB` each. */
export function buildExt4Pair(dir: string, sizeMiB = 24): Ext4Pair {
  const progs = buildPrograms(dir);
  const tree = join(dir, 'tree');
  mkdirSync(join(tree, 'bin'), { recursive: true });
  mkdirSync(join(tree, 'etc'), { recursive: true });
  mkdirSync(join(tree, 'share'), { recursive: true });
  copyFileSync(progs.progA, join(tree, 'bin', 'same'));
  copyFileSync(progs.progA, join(tree, 'bin', 'grown'));
  writeFileSync(join(tree, 'etc', 'conf.txt'), 'setting = 1\n');
  writeFileSync(join(tree, 'share', 'filler'), Buffer.alloc(300 * 1024, 'x'));
  const base = join(dir, 'base.img');
  const patched = join(dir, 'patched.img');
  execFileSync(
    'mkfs.ext4',
    ['-q', '-F', '-b', '4096', '-L', 'hint-test', '-U', UUID, '-E', 'root_owner=0:0', '-d', tree, base, `${sizeMiB}M`],
    { stdio: 'ignore' },
  );
  execFileSync('cp', ['--sparse=always', base, patched]);
  rewriteInPlace(patched, '/bin/same', readFileSync(progs.progB));
  rewriteInPlace(patched, '/etc/conf.txt', Buffer.from('setting = 2\n'));
  execFileSync('debugfs', ['-w', '-f', '-', patched], {
    input: `write ${progs.progC} /bin/grown.new\nunlink /bin/grown\nln /bin/grown.new /bin/grown\nunlink /bin/grown.new\n`,
    stdio: ['pipe', 'ignore', 'ignore'],
  });
  // The old inode of /bin/grown is now unlinked: free it (and its blocks), as the kernel would.
  execFileSync('sh', ['-c', `e2fsck -fy "${patched}" >/dev/null 2>&1; [ $? -le 1 ]`]);
  return { base, patched, progs };
}

const MiB = 1 << 20;

/** A disk image holding `fsImage` as partition 1 at 1 MiB, in an MBR or a GPT; sparse. */
export function partitioned(fsImage: string, out: string, table: 'mbr' | 'gpt'): { offset: number } {
  const fsSize = statSync(fsImage).size;
  const offset = MiB;
  const total = offset + fsSize + MiB;
  writeFileSync(out, Buffer.alloc(0));
  execFileSync('truncate', ['-s', String(total), out]);
  const fd = openSync(out, 'r+');
  try {
    const sectors = total / 512;
    const mbr = Buffer.alloc(512);
    const entry = (type: number, start: number, count: number): void => {
      mbr[446 + 4] = type;
      mbr.writeUInt32LE(start, 446 + 8);
      mbr.writeUInt32LE(count, 446 + 12);
    };
    if (table === 'mbr') entry(0x83, offset / 512, fsSize / 512);
    else entry(0xee, 1, Math.min(sectors - 1, 0xffffffff));
    mbr.writeUInt16LE(0xaa55, 510);
    writeSync(fd, mbr, 0, 512, 0);
    if (table === 'gpt') {
      const entries = Buffer.alloc(128 * 128);
      // Linux filesystem data GUID (mixed-endian on disk), a unique GUID, first/last LBA, name.
      Buffer.from('af3dc60f838472478e793d69d8477de4', 'hex').copy(entries, 0);
      Buffer.from('00112233445566778899aabbccddeeff', 'hex').copy(entries, 16);
      entries.writeBigUInt64LE(BigInt(offset / 512), 32);
      entries.writeBigUInt64LE(BigInt((offset + fsSize) / 512 - 1), 40);
      const hdr = Buffer.alloc(92);
      hdr.write('EFI PART', 0, 'latin1');
      hdr.writeUInt32LE(0x00010000, 8);
      hdr.writeUInt32LE(92, 12);
      hdr.writeBigUInt64LE(1n, 24);
      hdr.writeBigUInt64LE(BigInt(sectors - 1), 32);
      hdr.writeBigUInt64LE(34n, 40);
      hdr.writeBigUInt64LE(BigInt(sectors - 34), 48);
      hdr.writeBigUInt64LE(2n, 72);
      hdr.writeUInt32LE(128, 80);
      hdr.writeUInt32LE(128, 84);
      hdr.writeUInt32LE(crc32(entries), 88);
      hdr.writeUInt32LE(crc32(hdr), 16);
      writeSync(fd, hdr, 0, 92, 512);
      writeSync(fd, entries, 0, entries.length, 1024);
    }
    // Copy the filesystem's data (its holes stay holes).
    const src = openSync(fsImage, 'r');
    try {
      const buf = Buffer.alloc(MiB);
      for (let pos = 0; pos < fsSize; pos += MiB) {
        const n = readSync(src, buf, 0, MiB, pos);
        if (!buf.subarray(0, n).every((b) => b === 0)) writeSync(fd, buf, 0, n, offset + pos);
      }
    } finally {
      closeSync(src);
    }
  } finally {
    closeSync(fd);
  }
  return { offset };
}

/** Reads `length` bytes of an image file at `offset` (synchronous, for tests). */
export function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}
