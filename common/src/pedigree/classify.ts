/**
 * What an ext4 block that no file owns is: superblock or group descriptors
 * (with the reserved descriptor blocks of the resize inode), a block or inode
 * bitmap, part of an inode table, the journal, an extent-tree block of some
 * inode, free — or "unknown" (allocated, owner not found here: an xattr block,
 * a file the index could not open). Computed from raw reads of the disk, as
 * debugfs would (icheck, testb, stats), without e2fsprogs in the guest.
 */
import type { Reader } from './ext4.js';
import { EXT4_SUPER_MAGIC } from './ext4.js';

export type BlockClass =
  | 'superblock'
  | 'group-descriptors'
  | 'block-bitmap'
  | 'inode-bitmap'
  | 'inode-table'
  | 'journal'
  | 'extent-tree'
  | 'directory'
  | 'free'
  | 'unknown';

export interface Classified {
  class: BlockClass;
  /** The owning inode, where one is known (journal 8, resize 7, an extent tree's inode). */
  ino?: number;
}

const INCOMPAT_64BIT = 0x80;
const INCOMPAT_META_BG = 0x10;
const RO_COMPAT_SPARSE_SUPER = 0x1;
const BG_INODE_UNINIT = 0x1;
const BG_BLOCK_UNINIT = 0x2;
const EXT4_EXTENTS_FL = 0x80000;
const EXTENT_MAGIC = 0xf30a;
const JOURNAL_INO = 8;
const RESIZE_INO = 7;
/** More groups than this is not a disk we are told about: refuse. */
const MAX_GROUPS = 1 << 20;
/** Extent trees deeper than this are corrupt (ext4 allows 5). */
const MAX_DEPTH = 5;

interface Group {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  flags: number;
  itableUnused: number;
}

function isPowerOf(n: number, b: number): boolean {
  while (n > 1 && n % b === 0) n /= b;
  return n === 1;
}

export class Ext4Classifier {
  readonly blockSize: number;
  readonly blocksCount: number;
  readonly #firstDataBlock: number;
  readonly #blocksPerGroup: number;
  readonly #inodesPerGroup: number;
  readonly #inodeSize: number;
  readonly #gdtBlocks: number;
  readonly #reservedGdt: number;
  readonly #sparse: boolean;
  readonly #groups: Group[];
  readonly #tableBlocks: number;
  /** Blocks of inode-owned metadata found by the inode scan: block → class and inode. */
  #owned: Map<number, Classified> | undefined;
  readonly #bitmaps = new Map<number, Buffer>();

  private constructor(
    private readonly read: Reader,
    private readonly start: number,
    sb: Buffer,
    gdt: Buffer,
  ) {
    this.blockSize = 1024 << sb.readUInt32LE(0x18);
    const incompat = sb.readUInt32LE(0x60);
    this.blocksCount = sb.readUInt32LE(0x04) + (incompat & INCOMPAT_64BIT ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
    this.#firstDataBlock = sb.readUInt32LE(0x14);
    this.#blocksPerGroup = sb.readUInt32LE(0x20);
    this.#inodesPerGroup = sb.readUInt32LE(0x28);
    this.#inodeSize = sb.readUInt16LE(0x58) || 128;
    this.#reservedGdt = sb.readUInt16LE(0xce);
    this.#sparse = (sb.readUInt32LE(0x64) & RO_COMPAT_SPARSE_SUPER) !== 0;
    const descSize = incompat & INCOMPAT_64BIT ? Math.max(32, sb.readUInt16LE(0xfe)) : 32;
    const n = gdt.length / descSize;
    this.#gdtBlocks = Math.ceil(gdt.length / this.blockSize);
    this.#groups = [];
    for (let g = 0; g < n; g++) {
      const d = g * descSize;
      const hi32 = (off: number): number => (descSize >= 64 ? gdt.readUInt32LE(d + off) * 2 ** 32 : 0);
      const hi16 = (off: number): number => (descSize >= 64 ? gdt.readUInt16LE(d + off) * 65536 : 0);
      this.#groups.push({
        blockBitmap: gdt.readUInt32LE(d) + hi32(0x20),
        inodeBitmap: gdt.readUInt32LE(d + 0x4) + hi32(0x24),
        inodeTable: gdt.readUInt32LE(d + 0x8) + hi32(0x28),
        flags: gdt.readUInt16LE(d + 0x12),
        itableUnused: gdt.readUInt16LE(d + 0x1c) + hi16(0x32),
      });
    }
    this.#tableBlocks = Math.ceil((this.#inodesPerGroup * this.#inodeSize) / this.blockSize);
  }

  /** Reads the superblock and descriptors at byte `start`; undefined when it is not ext4 (or uses meta_bg). */
  static async open(read: Reader, start = 0): Promise<Ext4Classifier | undefined> {
    const sb = await read(start + 1024, 1024);
    if (sb.readUInt16LE(0x38) !== EXT4_SUPER_MAGIC) return undefined;
    const incompat = sb.readUInt32LE(0x60);
    if (incompat & INCOMPAT_META_BG) return undefined;
    const blockSize = 1024 << sb.readUInt32LE(0x18);
    const blocksCount = sb.readUInt32LE(0x04) + (incompat & INCOMPAT_64BIT ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
    const firstDataBlock = sb.readUInt32LE(0x14);
    const bpg = sb.readUInt32LE(0x20);
    if (bpg === 0 || sb.readUInt32LE(0x28) === 0) return undefined;
    const n = Math.ceil((blocksCount - firstDataBlock) / bpg);
    if (n <= 0 || n > MAX_GROUPS) return undefined;
    const descSize = incompat & INCOMPAT_64BIT ? Math.max(32, sb.readUInt16LE(0xfe)) : 32;
    const gdt = await read(start + (firstDataBlock + 1) * blockSize, n * descSize);
    return new Ext4Classifier(read, start, sb, gdt);
  }

  #hasSuper(g: number): boolean {
    if (!this.#sparse || g <= 1) return true;
    return isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7);
  }

  /** The class from the filesystem's fixed geometry alone, if the block is one of those. */
  #geometry(block: number): Classified | undefined {
    const g = Math.floor((block - this.#firstDataBlock) / this.#blocksPerGroup);
    if (block < this.#firstDataBlock) return { class: 'superblock' }; // the boot block of a 1 KiB-block filesystem
    if (g >= 0 && g < this.#groups.length && this.#hasSuper(g)) {
      const first = this.#firstDataBlock + g * this.#blocksPerGroup;
      if (block === first) return { class: 'superblock' };
      if (block <= first + this.#gdtBlocks) return { class: 'group-descriptors' };
      if (block <= first + this.#gdtBlocks + this.#reservedGdt) return { class: 'group-descriptors', ino: RESIZE_INO };
    }
    for (const grp of this.#groups) {
      if (block === grp.blockBitmap) return { class: 'block-bitmap' };
      if (block === grp.inodeBitmap) return { class: 'inode-bitmap' };
      if (block >= grp.inodeTable && block < grp.inodeTable + this.#tableBlocks) return { class: 'inode-table' };
    }
    return undefined;
  }

  async #isFree(block: number): Promise<boolean> {
    const g = Math.floor((block - this.#firstDataBlock) / this.#blocksPerGroup);
    const grp = this.#groups[g];
    if (!grp) return false;
    if (grp.flags & BG_BLOCK_UNINIT) return true; // only the group's own metadata is in use, tested above
    let bm = this.#bitmaps.get(g);
    if (!bm) {
      bm = await this.read(this.start + grp.blockBitmap * this.blockSize, this.blockSize);
      this.#bitmaps.set(g, bm);
    }
    const bit = (block - this.#firstDataBlock) % this.#blocksPerGroup;
    return (bm[bit >> 3]! & (1 << (bit & 7))) === 0;
  }

  /** Blocks owned by inodes but not their data: the journal's, extent-tree blocks, the resize inode's. */
  async #inodeOwned(): Promise<Map<number, Classified>> {
    if (this.#owned) return this.#owned;
    const owned = new Map<number, Classified>();
    const bs = this.blockSize;
    const readBlock = (b: number): Promise<Buffer> => this.read(this.start + b * bs, bs);
    const walk = async (ino: number, node: Buffer, off: number, depth: number, journal: boolean): Promise<void> => {
      if (node.readUInt16LE(off) !== EXTENT_MAGIC || depth > MAX_DEPTH) return;
      const entries = node.readUInt16LE(off + 2);
      const d = node.readUInt16LE(off + 6);
      for (let i = 0; i < entries; i++) {
        const e = off + 12 + i * 12;
        if (e + 12 > node.length) break;
        if (d === 0) {
          if (!journal) continue;
          let len = node.readUInt16LE(e + 4);
          if (len > 32768) len -= 32768;
          const phys = node.readUInt16LE(e + 6) * 2 ** 32 + node.readUInt32LE(e + 8);
          for (let b = 0; b < len; b++) owned.set(phys + b, { class: 'journal', ino });
        } else {
          const child = node.readUInt32LE(e + 4) + node.readUInt16LE(e + 8) * 2 ** 32;
          if (child === 0 || child >= this.blocksCount) continue;
          owned.set(child, { class: 'extent-tree', ino });
          await walk(ino, await readBlock(child), 0, depth + 1, journal);
        }
      }
    };
    for (const [g, grp] of this.#groups.entries()) {
      if (grp.flags & BG_INODE_UNINIT) continue;
      const used = this.#inodesPerGroup - grp.itableUnused;
      if (used <= 0) continue;
      const bitmap = await readBlock(grp.inodeBitmap);
      const table = await this.read(this.start + grp.inodeTable * bs, used * this.#inodeSize);
      for (let i = 0; i < used; i++) {
        if ((bitmap[i >> 3]! & (1 << (i & 7))) === 0) continue;
        const ino = g * this.#inodesPerGroup + i + 1;
        const off = i * this.#inodeSize;
        const flags = table.readUInt32LE(off + 0x20);
        if (ino === RESIZE_INO) {
          const dind = table.readUInt32LE(off + 0x28 + 13 * 4);
          if (dind) owned.set(dind, { class: 'group-descriptors', ino });
          continue;
        }
        if (!(flags & EXT4_EXTENTS_FL)) continue;
        const journal = ino === JOURNAL_INO;
        const depth = table.readUInt16LE(off + 0x28 + 6);
        if (depth > 0 || journal) await walk(ino, table, off + 0x28, 0, journal);
      }
    }
    this.#owned = owned;
    return owned;
  }

  /** The class of one block (filesystem block number) that no file's data owns. */
  async classify(block: number): Promise<Classified> {
    if (block < 0 || block >= this.blocksCount) return { class: 'unknown' };
    const geo = this.#geometry(block);
    if (geo) return geo;
    if (await this.#isFree(block)) return { class: 'free' };
    const owned = (await this.#inodeOwned()).get(block);
    return owned ?? { class: 'unknown' };
  }
}
