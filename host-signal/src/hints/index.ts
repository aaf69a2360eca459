/**
 * File hints: which files of the patched image each changed range belongs
 * to, and for each changed ELF file whether its code is the base's. All on
 * the host, from the image files, with debugfs (ext4) and xfs_db (XFS), no
 * mount, no root:
 *
 *   1. the filesystems: a bare ext4 or XFS, or such filesystems in the
 *      partitions of an MBR or GPT (partitions.ts), identified by their
 *      superblocks' UUIDs;
 *   2. per ext4 filesystem, the changed blocks that are file data: superblock,
 *      descriptors, bitmaps, inode tables, the journal, extent-tree blocks
 *      and free blocks are set aside by reading the patched filesystem's own
 *      metadata (the agent's Ext4Classifier, the same code the guest runs);
 *   3. owners: icheck on a few of the remaining blocks, then each owner's
 *      whole block list (debugfs `blocks`) settles every block it holds, so a
 *      large change costs a few debugfs runs, not one icheck per block;
 *   4. paths (ncheck) and types (stat): regular files only;
 *   5. ELF: each changed regular file is dumped from the patched image; an ELF
 *      one is dumped from the base image by path too, and the two are compared
 *      (elf.ts): code-unchanged only when no executable byte (and none of the
 *      tables the loader reads at run time) changed.
 *
 * On XFS (xfs.ts) steps 2–4 are one xfs_db run: `blockget -n` then
 * `blockuse -n` per run of changed blocks gives each block's type and owner
 * (`data` of an inode; anything else is metadata or free, counted in a note:
 * the agent refuses XFS metadata changes); `ncheck -i` the paths; each
 * owner's mode, size and extents (`inode`, `bmap`), and the base file's by
 * `path`, and the bytes are read from the images through those extents.
 */
import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ext4Classifier } from '@vmsubst/common/pedigree/classify';
import type { DiffRange } from '../diff/index.js';
import type { BlockSource } from '../diff/source.js';
import type { BaseFilesystem, FileEntry } from '@vmsubst/common/bundle/schema';
import { MAX_FILES } from '@vmsubst/common/bundle/version';
import { HintError } from '../errors.js';
import { Debugfs, debugfsAvailable, quote } from './debugfs.js';
import { compareElf, isElf } from './elf.js';
import { baseFilesystems, filesystemAt, readerOf, xfsAt, type ImageReader } from './partitions.js';
import { extractFilesystem, readXfsFile, S_IFMT, S_IFREG, XfsDb, xfsDbAvailable, type XfsInode } from './xfs.js';

export { Debugfs, debugfsAvailable } from './debugfs.js';
export { compareElf, elfCode, isElf, type CodeRange, type CodeVerdict, type ElfCode } from './elf.js';
export {
  baseFilesystems,
  ext4At,
  filesystemAt,
  findFilesystems,
  partitions,
  readerOf,
  xfsAt,
  type ImageReader,
  type Partition,
} from './partitions.js';
export { XfsDb, xfsDbAvailable } from './xfs.js';

/** Changed blocks looked at per filesystem at most (16 GiB of 4 KiB blocks). */
export const MAX_HINT_BLOCKS = 1 << 22;
/** Samples icheck is asked about per round. */
const SAMPLES_PER_ROUND = 1000;
/** Files larger than this are not dumped for the ELF check (their verdict is code-changed). */
const MAX_ELF_BYTES = 1 << 30;

export interface HintImage {
  path: string;
  source: BlockSource;
}

export interface Hints {
  filesystems: BaseFilesystem[];
  files: FileEntry[];
  /** Per range (same order as the ranges given), indexes into `files`. */
  rangeFiles: number[][];
  /** Why some part was skipped, for people. */
  notes: string[];
}

export interface HintOptions {
  onProgress?: (step: string) => void;
}

interface Found {
  fs: number;
  ino: number;
  path: string;
  ranges: Set<number>;
  elf?: FileEntry['elf'];
  change?: string;
}

export async function computeHints(
  base: HintImage,
  patched: HintImage,
  ranges: readonly DiffRange[],
  options: HintOptions = {},
): Promise<Hints> {
  const filesystems = await baseFilesystems(base.source);
  const notes: string[] = [];
  const rangeFiles: number[][] = ranges.map(() => []);
  if (filesystems.length === 0) {
    notes.push('no ext4 or XFS filesystem in the base image (bare, or in an MBR/GPT partition): no file hints');
    return { filesystems, files: [], rangeFiles, notes };
  }
  const found: Found[] = [];
  const tmp = await mkdtemp(join(tmpdir(), 'vmsubst-hints-'));
  try {
    for (const [k, fs] of filesystems.entries()) {
      const where = fs.partition !== undefined ? `partition ${fs.partition}` : 'the image';
      const now = await filesystemAt(readerOf(patched.source), fs.offset);
      if (!now || now.type !== fs.type) {
        notes.push(`filesystem ${k} (${where}): the patched image has no ${fs.type} there; no hints for it`);
        continue;
      }
      if (now.uuid !== fs.uuid)
        notes.push(`filesystem ${k} (${where}): UUID ${fs.uuid} in the base, ${now.uuid} in the patched image`);
      const bs = now['block-size'];
      // Changed blocks inside this filesystem, and the range each belongs to.
      const blockRange = new Map<number, number>();
      const fsEnd = fs.offset + now.size;
      let tooMany = false;
      ranges.forEach((r, i) => {
        const from = Math.max(r.offset, fs.offset);
        const to = Math.min(r.offset + r.length, fsEnd);
        if (from >= to || tooMany) return;
        for (let b = Math.floor((from - fs.offset) / bs); b < Math.ceil((to - fs.offset) / bs); b++) {
          blockRange.set(b, i);
          if (blockRange.size > MAX_HINT_BLOCKS) tooMany = true;
        }
      });
      if (tooMany) {
        notes.push(`filesystem ${k} (${where}): more than ${MAX_HINT_BLOCKS} changed blocks; no hints for it`);
        continue;
      }
      if (blockRange.size === 0) continue;
      if (fs.type === 'xfs') {
        options.onProgress?.(`filesystem ${k}: xfs_db on ${blockRange.size} blocks`);
        for (const f of await xfsHints(tmp, k, where, fs.offset, base, patched, blockRange, notes)) found.push(f);
        continue;
      }
      if (!(await debugfsAvailable())) {
        notes.push(`filesystem ${k} (${where}): ext4, and debugfs (e2fsprogs) is not installed: no hints for it`);
        continue;
      }
      options.onProgress?.(`filesystem ${k}: classifying ${blockRange.size} blocks`);
      const candidates = await dataCandidates(
        patched.source,
        fs.offset,
        [...blockRange.keys()].sort((a, b) => a - b),
      );
      const dfs = new Debugfs(patched.path, fs.offset);
      options.onProgress?.(`filesystem ${k}: owners of ${candidates.length} blocks`);
      const owners = await owningInodes(dfs, candidates);
      const inodes = [...new Set(owners.values())].filter((i) => i >= 11).sort((a, b) => a - b);
      const types = await dfs.stat(inodes);
      const regular = inodes.filter((i) => types.get(i)?.type === 'regular');
      const paths = await dfs.ncheck(regular);
      const byIno = new Map<number, Found[]>();
      for (const ino of regular) {
        for (const path of paths.get(ino) ?? []) {
          const f: Found = { fs: k, ino, path, ranges: new Set() };
          found.push(f);
          byIno.set(ino, [...(byIno.get(ino) ?? []), f]);
        }
      }
      for (const [block, ino] of owners) {
        for (const f of byIno.get(ino) ?? []) f.ranges.add(blockRange.get(block)!);
      }
      options.onProgress?.(`filesystem ${k}: ELF code of ${regular.length} files`);
      await elfVerdicts(tmp, k, dfs, new Debugfs(base.path, fs.offset), regular, types, byIno, notes);
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  found.sort((a, b) => a.fs - b.fs || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  if (found.length > MAX_FILES) {
    notes.push(`${found.length} changed files, more than a manifest lists (${MAX_FILES}); no hints`);
    return { filesystems, files: [], rangeFiles, notes };
  }
  const files: FileEntry[] = found.map((f, idx) => {
    for (const r of f.ranges) rangeFiles[r]!.push(idx);
    const e: FileEntry = { path: f.path, filesystem: f.fs, inode: f.ino };
    if (f.elf !== undefined) e.elf = f.elf;
    if (f.change !== undefined) e['elf-change'] = f.change;
    return e;
  });
  for (const list of rangeFiles) list.sort((a, b) => a - b);
  return { filesystems, files, rangeFiles, notes };
}

/**
 * One XFS filesystem's changed files: owners and types from the patched
 * image's block-usage map, ELF verdicts from both images' extents. A
 * filesystem in a partition is copied out first (xfs_db takes no offset).
 */
async function xfsHints(
  tmp: string,
  k: number,
  where: string,
  offset: number,
  base: HintImage,
  patched: HintImage,
  blockRange: ReadonlyMap<number, number>,
  notes: string[],
): Promise<Found[]> {
  if (!(await xfsDbAvailable())) {
    notes.push(`filesystem ${k} (${where}): XFS, and xfs_db (xfsprogs) is not installed: no hints for it`);
    return [];
  }
  const readBase = readerOf(base.source);
  const readPatched = readerOf(patched.source);
  const geoP = await xfsAt(readPatched, offset);
  const geoB = await xfsAt(readBase, offset);
  if (!geoP || !geoB) return [];
  const imageOf = async (img: HintImage, read: ImageReader, size: number, name: string): Promise<string> => {
    if (offset === 0) return img.path;
    const to = join(tmp, `${name}${k}.xfs`);
    await extractFilesystem(read, offset, size, to);
    return to;
  };
  const dbP = new XfsDb(await imageOf(patched, readPatched, geoP.size, 'p'), {
    blockSize: geoP['block-size'],
    agBlocks: geoP.agBlocks,
    agBlkLog: geoP.agBlkLog,
  });
  const use = await dbP.blockUse([...blockRange.keys()].sort((a, b) => a - b));
  const owned = new Map<number, number[]>();
  const other = new Map<string, number>();
  for (const [block, u] of use) {
    if (u.type === 'data' && u.ino !== undefined) owned.set(u.ino, [...(owned.get(u.ino) ?? []), block]);
    else other.set(u.type, (other.get(u.type) ?? 0) + 1);
  }
  const unknown = blockRange.size - use.size;
  if (unknown > 0) other.set('unreported', unknown);
  if (other.size > 0) {
    const list = [...other]
      .sort((a, b) => b[1] - a[1])
      .map(([t, n]) => `${t} ${n}`)
      .join(', ');
    notes.push(
      `filesystem ${k} (${where}): XFS changed blocks that are no regular file's data (${list}): metadata or free space; the agent refuses XFS metadata changes (RestartRequired)`,
    );
  }
  const inodes = [...owned.keys()].sort((a, b) => a - b);
  const info = await dbP.inodes(inodes);
  const regular = inodes.filter((i) => ((info.get(i)?.mode ?? 0) & S_IFMT) === S_IFREG);
  const paths = await dbP.paths(regular);
  const found: Found[] = [];
  const dbB = new XfsDb(await imageOf(base, readBase, geoB.size, 'b'), {
    blockSize: geoB['block-size'],
    agBlocks: geoB.agBlocks,
    agBlkLog: geoB.agBlkLog,
  });
  const elfFiles: { f: Found; now: XfsInode }[] = [];
  for (const ino of regular) {
    const now = info.get(ino)!;
    const head = now.size >= 4 ? await readXfsFile(readPatched, offset, geoP['block-size'], now, 4) : undefined;
    const elf = head !== undefined && isElf(head);
    for (const path of paths.get(ino) ?? []) {
      const f: Found = { fs: k, ino, path, ranges: new Set(owned.get(ino)!.map((b) => blockRange.get(b)!)) };
      found.push(f);
      if (!elf) continue;
      if (now.size > MAX_ELF_BYTES) {
        f.elf = 'code-changed';
        f.change = `larger than ${MAX_ELF_BYTES} bytes: not compared`;
        notes.push(
          `filesystem ${k}: ${path} is larger than ${MAX_ELF_BYTES} bytes: not read, taken as an ELF file whose code changed (the cautious class)`,
        );
      } else elfFiles.push({ f, now });
    }
  }
  const was = await dbB.inodes(elfFiles.map((e) => e.f.path));
  for (const { f, now } of elfFiles) {
    const b = was.get(f.path);
    const before =
      b && (b.mode & S_IFMT) === S_IFREG && b.size <= MAX_ELF_BYTES
        ? await readXfsFile(readBase, offset, geoB['block-size'], b)
        : undefined;
    const v = compareElf(before, await readXfsFile(readPatched, offset, geoP['block-size'], now));
    f.elf = v.elf;
    if (v.elf === 'code-changed') f.change = v.change;
  }
  return found;
}

/** The blocks (sorted) that may be some file's data: not ext4 metadata, not free, not the journal or an extent tree. */
async function dataCandidates(patched: BlockSource, offset: number, blocks: number[]): Promise<number[]> {
  const cls = await Ext4Classifier.open(readerOf(patched), offset);
  if (!cls) return blocks;
  const out: number[] = [];
  for (const b of blocks) {
    const c = await cls.classify(b);
    if (c.class === 'unknown' || c.class === 'directory') out.push(b);
  }
  return out;
}

/** block → inode for each block some inode owns; `blocks` sorted. */
async function owningInodes(dfs: Debugfs, blocks: readonly number[]): Promise<Map<number, number>> {
  const owners = new Map<number, number>();
  let unresolved = [...blocks];
  const known = new Set<number>();
  while (unresolved.length > 0) {
    // The first block of every run of consecutive unresolved blocks, then evenly spread others.
    const sample: number[] = [];
    for (let i = 0; i < unresolved.length && sample.length < SAMPLES_PER_ROUND; i++) {
      if (i === 0 || unresolved[i - 1]! + 1 !== unresolved[i]) sample.push(unresolved[i]!);
    }
    if (sample.length < SAMPLES_PER_ROUND) {
      const step = Math.max(1, Math.floor(unresolved.length / (SAMPLES_PER_ROUND - sample.length)));
      const have = new Set(sample);
      for (let i = step; i < unresolved.length && sample.length < SAMPLES_PER_ROUND; i += step)
        if (!have.has(unresolved[i]!)) sample.push(unresolved[i]!);
    }
    const got = await dfs.icheck(sample);
    const fresh = [...new Set(got.values())].filter((ino) => !known.has(ino));
    fresh.forEach((ino) => known.add(ino));
    const lists = await dfs.blocks(fresh);
    const wanted = new Set(unresolved);
    for (const [ino, list] of lists) for (const b of list) if (wanted.has(b)) owners.set(b, ino);
    // icheck also finds blocks `blocks` does not list (a directory's, an xattr block).
    for (const [b, ino] of got) owners.set(b, ino);
    const sampled = new Set(sample);
    const before = unresolved.length;
    unresolved = unresolved.filter((b) => !owners.has(b) && !sampled.has(b));
    if (unresolved.length >= before) throw new HintError('debugfs made no progress mapping blocks to inodes');
  }
  return owners;
}

async function elfVerdicts(
  tmp: string,
  k: number,
  patched: Debugfs,
  base: Debugfs,
  regular: readonly number[],
  types: ReadonlyMap<number, { size: number }>,
  byIno: ReadonlyMap<number, { path: string; elf?: FileEntry['elf']; change?: string }[]>,
  notes: string[],
): Promise<void> {
  const small = regular.filter(
    (ino) => (types.get(ino)?.size ?? 0) <= MAX_ELF_BYTES && (types.get(ino)?.size ?? 0) >= 4,
  );
  const big = regular.filter((ino) => (types.get(ino)?.size ?? 0) > MAX_ELF_BYTES);
  const p = (ino: number): string => join(tmp, `p${k}-${ino}`);
  const b = (ino: number, i: number): string => join(tmp, `b${k}-${ino}-${i}`);
  await patched.dump(small.map((ino) => [`<${ino}>`, p(ino)] as const));
  const elf: number[] = [];
  for (const ino of small) {
    const head = await readHead(p(ino));
    if (head && isElf(head)) elf.push(ino);
    else await rm(p(ino), { force: true });
  }
  for (const ino of big) {
    for (const f of byIno.get(ino) ?? []) {
      f.elf = 'code-changed';
      f.change = `larger than ${MAX_ELF_BYTES} bytes: not compared`;
    }
    notes.push(
      `filesystem ${k}: inode ${ino} is larger than ${MAX_ELF_BYTES} bytes: not read, taken as an ELF file whose code changed (the cautious class)`,
    );
  }
  const baseItems: (readonly [string, string])[] = [];
  for (const ino of elf) {
    (byIno.get(ino) ?? []).forEach((f, i) => {
      try {
        baseItems.push([quote(f.path), b(ino, i)]);
      } catch {
        /* unquotable path: compared as missing from the base */
      }
    });
  }
  await base.dump(baseItems);
  for (const ino of elf) {
    const now = await readFile(p(ino));
    for (const [i, f] of (byIno.get(ino) ?? []).entries()) {
      const was = await readFile(b(ino, i)).catch(() => undefined);
      const v = compareElf(was, now);
      f.elf = v.elf;
      if (v.elf === 'code-changed') f.change = v.change;
      await rm(b(ino, i), { force: true });
    }
    await rm(p(ino), { force: true });
  }
}

async function readHead(path: string): Promise<Buffer | undefined> {
  try {
    if ((await stat(path)).size < 4) return undefined;
    const h = await open(path, 'r');
    try {
      const buf = Buffer.alloc(4);
      await h.read(buf, 0, 4, 0);
      return buf;
    } finally {
      await h.close();
    }
  } catch {
    return undefined;
  }
}
