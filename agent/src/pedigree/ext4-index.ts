/**
 * The pedigree index of a read-only ext4 filesystem, built from its on-disk
 * metadata (as debugfs reads it) instead of one open, fstat and FIEMAP per
 * file: the inode tables are read in large sequential reads, directories
 * are parsed from their blocks, and each file's extents come from the extent
 * tree in its inode. The result is what walkMount gives on the same mount:
 * the same paths, inodes, kinds, entries, sizes, ctimes and extents (disk
 * byte offsets), adjacent extents coalesced where FIEMAP may coalesce them.
 *
 * Only for a filesystem mounted read-only: on a read-write mount the disk may
 * lag the page cache. Anything this reader does not handle (inline data,
 * encryption, casefolding, bigalloc, meta_bg, block-mapped files, a journal
 * to replay) or finds corrupt (a directory loop, an extent tree too deep,
 * an inode out of range) throws a RawIndexError: the caller falls back to the
 * walk.
 */
import { lstatSync } from 'node:fs';
import { join } from 'node:path';
import { parseDirBlock, readExt4Layout, type Ext4Layout, type Reader } from '@vmsubst/common/pedigree/ext4';
import type { Mount } from './mounts.js';
import { AgentError } from '../errors.js';
import { MAX_FILES, type IndexedFile } from './walk.js';

/** The raw build cannot read this filesystem's metadata; the caller falls back to the FIEMAP walk. */
export class RawIndexError extends AgentError {
  constructor(message: string) {
    super('E_VMSUBST_RAW_INDEX', message, 'the index is built by walking the mount instead (slower, same result)');
  }
}

const INCOMPAT_FILETYPE = 0x2;
const INCOMPAT_EXTENTS = 0x40;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_MMP = 0x100;
const INCOMPAT_FLEX_BG = 0x200;
const INCOMPAT_EA_INODE = 0x400;
const INCOMPAT_CSUM_SEED = 0x2000;
const INCOMPAT_LARGEDIR = 0x4000;
/** Incompatible features whose metadata this reader understands (not: compression, recover, journal_dev, meta_bg, dirdata, inline_data, encrypt, casefold). */
const INCOMPAT_SUPPORTED =
  INCOMPAT_FILETYPE |
  INCOMPAT_EXTENTS |
  INCOMPAT_64BIT |
  INCOMPAT_MMP |
  INCOMPAT_FLEX_BG |
  INCOMPAT_EA_INODE |
  INCOMPAT_CSUM_SEED |
  INCOMPAT_LARGEDIR;
/** Read-only-compatible features that do not change how files are found (everything known but bigalloc 0x200). */
const RO_COMPAT_SUPPORTED =
  0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x400 | 0x1000 | 0x2000 | 0x8000 | 0x10000;
const RO_COMPAT_GDT_CSUM = 0x10;
const RO_COMPAT_METADATA_CSUM = 0x400;
const BG_INODE_UNINIT = 0x1;

const ROOT_INO = 2;
const EXT4_EXTENTS_FL = 0x80000;
const EXT4_INLINE_DATA_FL = 0x10000000;
const EXTENT_MAGIC = 0xf30a;
/** Extent trees deeper than this are corrupt (ext4 allows 5). */
const MAX_EXTENT_DEPTH = 5;
/** Entries per extent-tree node: a 64 KiB block holds at most this many. */
const MAX_NODE_ENTRIES = 65536 / 12;
/** A directory larger than this is not one a guest made: refuse rather than read it. */
const MAX_DIR_BYTES = 256 << 20;
/** The inode tables held at once; a filesystem with more falls back to the walk. */
const MAX_TABLE_BYTES = 1 << 30;
/** Bytes per read of the inode tables (adjacent tables, as flex_bg lays them out, are read together). */
const TABLE_READ = 8 << 20;
const S_IFMT = 0xf000;
const S_IFDIR = 0x4000;
const S_IFREG = 0x8000;

type Extent = IndexedFile['extents'][number];

/** See walk.ts: small integers are stored inline by V8, doubles boxed. */
const small = (v: number): number => (v <= 0x3fff_ffff ? v | 0 : v);

/** The reasons this reader cannot index the filesystem, from its superblock alone (empty: it can). */
export function unsupportedFeatures(layout: Ext4Layout): string[] {
  const out: string[] = [];
  const { incompat, roCompat } = layout.features;
  if (incompat & ~INCOMPAT_SUPPORTED)
    out.push(
      `incompat features 0x${(incompat & ~INCOMPAT_SUPPORTED).toString(16)} (inline_data, encryption, casefold, meta_bg, a journal to replay, …)`,
    );
  if (roCompat & ~RO_COMPAT_SUPPORTED)
    out.push(`ro_compat features 0x${(roCompat & ~RO_COMPAT_SUPPORTED).toString(16)} (bigalloc, …)`);
  return out;
}

interface Tables {
  /** Per group: its inode table's used part (undefined: no inode in use). */
  tables: (Buffer | undefined)[];
}

/** Reads the used part of every group's inode table, merging adjacent tables into large reads. */
async function readTables(read: Reader, layout: Ext4Layout): Promise<Tables> {
  const { blockSize: bs, inodeSize, inodesPerGroup: ipg } = layout;
  const trustUnused = (layout.features.roCompat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM)) !== 0;
  const spans: { g: number; offset: number; length: number }[] = [];
  let total = 0;
  for (const [g, grp] of layout.groups.entries()) {
    if (trustUnused && grp.flags & BG_INODE_UNINIT) continue;
    const used = trustUnused ? ipg - grp.itableUnused : ipg;
    if (used <= 0) continue;
    if (used > ipg) throw new RawIndexError(`group ${g}: ${grp.itableUnused} unused inodes of ${ipg}`);
    const length = Math.ceil((used * inodeSize) / bs) * bs;
    total += length;
    if (total > MAX_TABLE_BYTES) throw new RawIndexError(`inode tables larger than ${MAX_TABLE_BYTES} bytes`);
    spans.push({ g, offset: grp.inodeTable * bs, length });
  }
  const tables: (Buffer | undefined)[] = new Array(layout.groups.length).fill(undefined);
  spans.sort((a, b) => a.offset - b.offset);
  for (let i = 0; i < spans.length;) {
    // One read for a run of tables that follow each other on the disk.
    let j = i + 1;
    let end = spans[i]!.offset + spans[i]!.length;
    while (j < spans.length && spans[j]!.offset === end && end - spans[i]!.offset + spans[j]!.length <= TABLE_READ)
      end += spans[j++]!.length;
    const buf = await read(spans[i]!.offset, end - spans[i]!.offset);
    for (let k = i; k < j; k++) {
      const s = spans[k]!;
      const at = s.offset - spans[i]!.offset;
      tables[s.g] = buf.subarray(at, at + s.length);
    }
    i = j;
  }
  return { tables };
}

type Leaf = { logical: number; physical: number; length: number; unwritten: boolean };

/** The leaf extents of a node of depth 0 (a leaf), as filesystem blocks. */
function extentLeavesNow(node: Buffer, off: number, out: Leaf[] = []): Leaf[] {
  if (node.readUInt16LE(off) !== EXTENT_MAGIC) throw new RawIndexError('extent tree: bad magic');
  const entries = node.readUInt16LE(off + 2);
  if (entries > MAX_NODE_ENTRIES) throw new RawIndexError('extent tree: too wide');
  for (let i = 0; i < entries; i++) {
    const e = off + 12 + i * 12;
    if (e + 12 > node.length) throw new RawIndexError('extent tree: entries past the node');
    let length = node.readUInt16LE(e + 4);
    const unwritten = length > 32768;
    if (unwritten) length -= 32768;
    if (length === 0) continue;
    out.push({
      logical: node.readUInt32LE(e),
      physical: node.readUInt16LE(e + 6) * 2 ** 32 + node.readUInt32LE(e + 8),
      length,
      unwritten,
    });
  }
  return out;
}

/** The leaf extents of an extent tree rooted at `node[off..]`, in file order, as filesystem blocks. */
export async function extentLeaves(
  node: Buffer,
  off: number,
  readBlock: (block: number) => Promise<Buffer>,
  out: Leaf[] = [],
  depth = 0,
): Promise<Leaf[]> {
  if (node.readUInt16LE(off) !== EXTENT_MAGIC) throw new RawIndexError('extent tree: bad magic');
  const entries = node.readUInt16LE(off + 2);
  const d = node.readUInt16LE(off + 6);
  if (depth > MAX_EXTENT_DEPTH || d > MAX_EXTENT_DEPTH || entries > MAX_NODE_ENTRIES)
    throw new RawIndexError('extent tree: too deep or too wide');
  if (d === 0) return extentLeavesNow(node, off, out);
  for (let i = 0; i < entries; i++) {
    const e = off + 12 + i * 12;
    if (e + 12 > node.length) throw new RawIndexError('extent tree: entries past the node');
    const child = node.readUInt32LE(e + 4) + node.readUInt16LE(e + 8) * 2 ** 32;
    await extentLeaves(await readBlock(child), 0, readBlock, out, depth + 1);
  }
  return out;
}

/**
 * Indexes the filesystem on `read` (the partition itself, byte 0 = its
 * start) as mounted at `mount`, calling `emit` for every regular file and
 * directory under the mount's root. `mounts` are the system's mounts: those
 * inside this one hide what lies under them, as they do for the walk.
 */
export async function buildExt4Index(
  read: Reader,
  mount: Mount,
  partStart: number,
  mounts: Mount[],
  emit: (f: IndexedFile) => void,
): Promise<number> {
  const layout = await readExt4Layout(read, 0);
  if (!layout) throw new RawIndexError('no ext2/3/4 superblock (bad magic or geometry)');
  const unsupported = unsupportedFeatures(layout);
  if (unsupported.length > 0) throw new RawIndexError(`unsupported: ${unsupported.join('; ')}`);
  const dev = lstatSync(mount.mountPoint).dev;
  // Mounts inside this one: what the walk sees there is the other filesystem's root.
  const prefix0 = join(mount.mountPoint, '.');
  const under = prefix0 === '/' ? '/' : prefix0 + '/';
  const covered = new Map<string, number>();
  for (const m of mounts) {
    const mp = join(m.mountPoint, '.');
    if (!mp.startsWith(under) || mp === prefix0) continue;
    const st = lstatSync(mp, { throwIfNoEntry: false });
    if (!st) continue;
    if (st.dev === dev) throw new RawIndexError(`${mp}: a bind mount of the same filesystem inside it`);
    covered.set(mp, st.ino);
  }

  const { blockSize: bs, inodeSize, inodesPerGroup: ipg } = layout;
  const inodesCount = layout.groups.length * ipg;
  const { tables } = await readTables(read, layout);
  const readBlock = (block: number): Promise<Buffer> => {
    if (block === 0 || block >= layout.blocksCount) throw new RawIndexError(`block ${block} out of range`);
    return read(block * bs, bs);
  };
  const inode = (ino: number): { t: Buffer; o: number } => {
    if (!Number.isInteger(ino) || ino < 1 || ino > inodesCount) throw new RawIndexError(`inode ${ino} out of range`);
    const g = Math.floor((ino - 1) / ipg);
    const o = ((ino - 1) % ipg) * inodeSize;
    const t = tables[g];
    if (!t || o + inodeSize > t.length)
      throw new RawIndexError(`inode ${ino} is in an unused part of its group's table`);
    return { t, o };
  };
  const mode = (ino: number): number => {
    const { t, o } = inode(ino);
    return t.readUInt16LE(o) & S_IFMT;
  };
  const ctimeNs = (t: Buffer, o: number): bigint => {
    let sec = t.readInt32LE(o + 0x0c);
    let nsec = 0;
    if (inodeSize > 128 && t.readUInt16LE(o + 0x80) >= 8) {
      const extra = t.readUInt32LE(o + 0x84);
      sec += (extra & 3) * 2 ** 32;
      nsec = extra >>> 2;
    }
    return BigInt(sec) * 1_000_000_000n + BigInt(nsec);
  };
  /** Leaf extents as disk byte ranges; contiguous ones coalesced. */
  const toExtents = (leaves: Leaf[]): Extent[] => {
    if (leaves.length === 1) {
      // Most files have one extent: an array literal is allocated at its size, a push would reserve room for 17.
      const l = leaves[0]!;
      return [
        {
          diskStart: small(partStart + l.physical * bs),
          fileOffset: small(l.logical * bs),
          length: small(l.length * bs),
        },
      ];
    }
    const out: Extent[] = [];
    let last: Extent | undefined;
    for (const l of leaves) {
      const diskStart = partStart + l.physical * bs;
      const fileOffset = l.logical * bs;
      const length = l.length * bs;
      if (last && last.fileOffset + last.length === fileOffset && last.diskStart + last.length === diskStart) {
        last.length = small(last.length + length);
        continue;
      }
      last = { diskStart: small(diskStart), fileOffset: small(fileOffset), length: small(length) };
      out.push(last);
    }
    return out;
  };
  /** The inode's extents: at once when the inode holds them all (most do), else after reading the tree's blocks. */
  const extentsOf = (ino: number, t: Buffer, o: number): Extent[] | Promise<Extent[]> => {
    const flags = t.readUInt32LE(o + 0x20);
    if (flags & EXT4_INLINE_DATA_FL) throw new RawIndexError(`inode ${ino}: inline data`);
    if (!(flags & EXT4_EXTENTS_FL)) {
      // A block-mapped (ext2/3) inode: only an empty one is understood here.
      for (let i = 0; i < 15; i++)
        if (t.readUInt32LE(o + 0x28 + i * 4) !== 0) throw new RawIndexError(`inode ${ino}: block-mapped (no extents)`);
      return [];
    }
    if (t.readUInt16LE(o + 0x28 + 6) === 0) return toExtents(extentLeavesNow(t, o + 0x28));
    return extentLeaves(t, o + 0x28, readBlock).then(toExtents);
  };
  const sizeOf = (t: Buffer, o: number): number => small(t.readUInt32LE(o + 0x04) + t.readUInt32LE(o + 0x6c) * 2 ** 32);
  /** A directory's entries, name → inode, from its blocks. */
  const entriesOf = async (ino: number, extents: Extent[]): Promise<Map<string, number>> => {
    const entries = new Map<string, number>();
    let bytes = 0;
    for (const e of extents) {
      bytes += e.length;
      if (e.diskStart - partStart + e.length > layout.blocksCount * bs)
        throw new RawIndexError(`directory inode ${ino}: blocks past the filesystem's end`);
      if (bytes > MAX_DIR_BYTES) throw new RawIndexError(`directory inode ${ino} larger than ${MAX_DIR_BYTES} bytes`);
      const buf = await read(e.diskStart - partStart, e.length);
      for (let b = 0; b + bs <= buf.length; b += bs) parseDirBlock(buf.subarray(b, b + bs), entries, true);
    }
    return entries;
  };

  // The mount's root: its path inside the filesystem, from the root directory down.
  let rootIno = ROOT_INO;
  for (const name of mount.root.split('/').filter((n) => n !== '')) {
    if (mode(rootIno) !== S_IFDIR) throw new RawIndexError(`${mount.root}: not a directory on the disk`);
    const { t, o } = inode(rootIno);
    const next = (await entriesOf(rootIno, await extentsOf(rootIno, t, o))).get(name);
    if (next === undefined) throw new RawIndexError(`${mount.root}: not found on the disk`);
    rootIno = next;
  }
  if (mode(rootIno) !== S_IFDIR) throw new RawIndexError(`${mount.root}: not a directory on the disk`);

  // A directory is visited once: a second visit is a loop (directories have one parent).
  const visited = new Set<number>();
  const stack: { ino: number; path: string; prefix: string }[] = [
    { ino: rootIno, path: mount.mountPoint, prefix: under },
  ];
  let seen = 0;
  while (stack.length > 0) {
    const { ino, path, prefix } = stack.pop()!;
    if (visited.has(ino)) throw new RawIndexError(`directory inode ${ino} reached twice (a loop)`);
    visited.add(ino);
    const { t, o } = inode(ino);
    const extents = await extentsOf(ino, t, o);
    const entries = await entriesOf(ino, extents);
    const dir: IndexedFile = {
      path,
      dev,
      ino: small(ino),
      mount,
      kind: 'dir',
      entries,
      extents,
      ctimeNs: ctimeNs(t, o),
      size: sizeOf(t, o),
    };
    for (const [name, child] of entries) {
      if (++seen > MAX_FILES) throw new RawIndexError(`more than ${MAX_FILES} entries under ${mount.mountPoint}`);
      const childPath = prefix + name;
      const over = covered.get(childPath);
      if (over !== undefined) {
        entries.set(name, over);
        continue;
      }
      entries.set(name, small(child));
      const m = mode(child);
      if (m === S_IFDIR) {
        stack.push({ ino: child, path: childPath, prefix: childPath + '/' });
      } else if (m === S_IFREG) {
        const c = inode(child);
        const ex = extentsOf(child, c.t, c.o);
        emit({
          path: childPath,
          dev,
          ino: small(child),
          mount,
          kind: 'file',
          extents: Array.isArray(ex) ? ex : await ex,
          ctimeNs: ctimeNs(c.t, c.o),
          size: sizeOf(c.t, c.o),
        });
      }
    }
    emit(dir);
  }
  return seen;
}
