/**
 * Just enough of ext4's on-disk layout to reason about metadata blocks:
 * where the superblock, group descriptors, bitmaps and inode tables are, and
 * which inode numbers a changed inode-table block holds. Read from the disk
 * itself (O_DIRECT), never from the guest's caches, so it describes the new
 * blocks after a substitution.
 */
import { isUtf8 } from 'node:buffer';
import type { ByteRange } from '../protocol/schema.js';

export const EXT4_SUPER_MAGIC = 0xef53;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_FLEX_BG = 0x200;
/** More groups than this is a disk far bigger than we are told about: stop. */
const MAX_GROUPS = 1 << 20;

export interface Ext4Group {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  /** bg_flags: INODE_UNINIT (0x1), BLOCK_UNINIT (0x2), INODE_ZEROED (0x4). */
  flags: number;
  /** Inodes at the end of the group's table never used (meaningful with gdt_csum or metadata_csum). */
  itableUnused: number;
}

export interface Ext4Layout {
  /** Byte offset of the filesystem on the disk (the partition start). */
  start: number;
  blockSize: number;
  blocksCount: number;
  inodeSize: number;
  inodesPerGroup: number;
  firstDataBlock: number;
  descSize: number;
  /** s_feature_compat, s_feature_incompat, s_feature_ro_compat. */
  features: { compat: number; incompat: number; roCompat: number };
  groups: Ext4Group[];
}

export type Reader = (offset: number, length: number) => Promise<Buffer>;

export async function readExt4Layout(read: Reader, start: number): Promise<Ext4Layout | undefined> {
  const sb = await read(start + 1024, 1024);
  if (sb.readUInt16LE(0x38) !== EXT4_SUPER_MAGIC) return undefined;
  const blockSize = 1024 << sb.readUInt32LE(0x18);
  const blocksCount =
    sb.readUInt32LE(0x04) + (sb.readUInt32LE(0x60) & INCOMPAT_64BIT ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
  const firstDataBlock = sb.readUInt32LE(0x14);
  const blocksPerGroup = sb.readUInt32LE(0x20);
  const inodesPerGroup = sb.readUInt32LE(0x28);
  const inodeSize = sb.readUInt16LE(0x58) || 128;
  const incompat = sb.readUInt32LE(0x60);
  const descSize = incompat & INCOMPAT_64BIT ? Math.max(32, sb.readUInt16LE(0xfe)) : 32;
  if (blocksPerGroup === 0 || inodesPerGroup === 0) return undefined;
  const nGroups = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  if (nGroups <= 0 || nGroups > MAX_GROUPS) return undefined;
  void INCOMPAT_FLEX_BG; // flex_bg only moves tables; the descriptors say where they are
  const gdtOffset = start + (firstDataBlock + 1) * blockSize;
  const gdt = await read(gdtOffset, nGroups * descSize);
  const groups: Ext4Group[] = [];
  for (let g = 0; g < nGroups; g++) {
    const d = g * descSize;
    const hi = (off: number): number => (descSize >= 64 ? gdt.readUInt32LE(d + off) * 2 ** 32 : 0);
    const hi16 = (off: number): number => (descSize >= 64 ? gdt.readUInt16LE(d + off) * 65536 : 0);
    groups.push({
      blockBitmap: gdt.readUInt32LE(d + 0x0) + hi(0x20),
      inodeBitmap: gdt.readUInt32LE(d + 0x4) + hi(0x24),
      inodeTable: gdt.readUInt32LE(d + 0x8) + hi(0x28),
      flags: gdt.readUInt16LE(d + 0x12),
      itableUnused: gdt.readUInt16LE(d + 0x1c) + hi16(0x32),
    });
  }
  const features = { compat: sb.readUInt32LE(0x5c), incompat, roCompat: sb.readUInt32LE(0x64) };
  return { start, blockSize, blocksCount, inodeSize, inodesPerGroup, firstDataBlock, descSize, features, groups };
}

export type MetadataKind = 'superblock-or-descriptors' | 'block-bitmap' | 'inode-bitmap' | 'inode-table' | 'other';

/** Inode numbers whose on-disk inodes lie in a disk byte range. */
export function inodesIn(layout: Ext4Layout, r: ByteRange): number[] {
  const out: number[] = [];
  const tableBytes = layout.inodesPerGroup * layout.inodeSize;
  layout.groups.forEach((grp, g) => {
    const tStart = layout.start + grp.inodeTable * layout.blockSize;
    const s = Math.max(r.offset, tStart);
    const e = Math.min(r.offset + r.length, tStart + tableBytes);
    if (s >= e) return;
    const first = Math.floor((s - tStart) / layout.inodeSize);
    const last = Math.ceil((e - tStart) / layout.inodeSize) - 1;
    for (let i = first; i <= last; i++) out.push(g * layout.inodesPerGroup + i + 1);
  });
  return out;
}

/** What kinds of metadata a changed range touches (ranges outside file data only). */
export function classify(layout: Ext4Layout, r: ByteRange): MetadataKind[] {
  const kinds = new Set<MetadataKind>();
  const bs = layout.blockSize;
  const hit = (block: number, count: number): boolean => {
    const s = layout.start + block * bs;
    return r.offset < s + count * bs && s < r.offset + r.length;
  };
  const gdtBlocks = Math.ceil((layout.groups.length * layout.descSize) / bs);
  if (r.offset < layout.start + 1024 + 1024 || hit(layout.firstDataBlock, 1 + gdtBlocks))
    kinds.add('superblock-or-descriptors');
  const tableBlocks = Math.ceil((layout.inodesPerGroup * layout.inodeSize) / bs);
  for (const g of layout.groups) {
    if (hit(g.blockBitmap, 1)) kinds.add('block-bitmap');
    if (hit(g.inodeBitmap, 1)) kinds.add('inode-bitmap');
    if (hit(g.inodeTable, tableBlocks)) kinds.add('inode-table');
  }
  if (kinds.size === 0) kinds.add('other');
  return [...kinds];
}

/**
 * Entries of one ext4 directory block (linear format; htree leaves use it too,
 * and an htree root's fake entries parse as "." and ".."). Returns name → inode.
 * Entries with inode 0 (deleted, or the metadata_csum tail) are skipped; a
 * corrupt rec_len ends the block. With `utf8Only`, names that are not UTF-8
 * (which no path the guest's walk can open) are left out.
 */
export function parseDirBlock(block: Buffer, out = new Map<string, number>(), utf8Only = false): Map<string, number> {
  let off = 0;
  while (off + 8 <= block.length) {
    const ino = block.readUInt32LE(off);
    const recLen = block.readUInt16LE(off + 4);
    const nameLen = block.readUInt8(off + 6);
    if (recLen < 8 || off + recLen > block.length || 8 + nameLen > recLen) break;
    if (ino !== 0 && nameLen > 0) {
      if (utf8Only) {
        // Valid UTF-8 decodes as it is stored; anything else is left out.
        if (isUtf8(block.subarray(off + 8, off + 8 + nameLen))) {
          const name = block.toString('utf8', off + 8, off + 8 + nameLen);
          if (name !== '.' && name !== '..') out.set(name, ino);
        }
        off += recLen;
        continue;
      }
      const name = block.toString('latin1', off + 8, off + 8 + nameLen);
      if (name !== '.' && name !== '..') out.set(Buffer.from(name, 'latin1').toString('utf8'), ino);
    }
    off += recLen;
  }
  return out;
}
