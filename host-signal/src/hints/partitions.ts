/**
 * Where the ext4 and XFS filesystems of a disk image are: a bare filesystem at byte
 * 0, or the primary partitions of an MBR, or the entries of a GPT (512-byte
 * sectors, then 4096-byte). Logical partitions inside an MBR extended
 * partition, LVM and RAID are not looked into (docs/bundle-format.md).
 * Each filesystem's identity comes from its superblock: UUID, label, size.
 */
import type { BaseFilesystem } from '@vmsubst/common/bundle/schema';
import type { BlockSource } from '../diff/source.js';

/** Reads `length` bytes at `offset` (zeros past the end are fine). */
export type ImageReader = (offset: number, length: number) => Promise<Buffer>;

const EXT4_MAGIC = 0xef53;
const XFS_MAGIC = 0x58465342; // "XFSB", big-endian like all of XFS's superblock
const INCOMPAT_64BIT = 0x80;
const MBR_EXTENDED = new Set([0x05, 0x0f, 0x85]);
const MBR_GPT_PROTECTIVE = 0xee;
/** A GPT declares 128 entries as a rule; more than this is not a table we read. */
const MAX_GPT_ENTRIES = 1024;

export interface Partition {
  number: number;
  table: 'mbr' | 'gpt';
  offset: number;
  size: number;
}

/** The ext4 superblock's identity at byte `offset`, or undefined when there is no ext4 there. */
export async function ext4At(read: ImageReader, offset: number): Promise<Omit<BaseFilesystem, 'offset'> | undefined> {
  const sb = await read(offset + 1024, 1024);
  if (sb.length < 1024 || sb.readUInt16LE(0x38) !== EXT4_MAGIC) return undefined;
  const logBlock = sb.readUInt32LE(0x18);
  if (logBlock > 6) return undefined;
  const blockSize = 1024 << logBlock;
  const incompat = sb.readUInt32LE(0x60);
  const blocks = sb.readUInt32LE(0x04) + (incompat & INCOMPAT_64BIT ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
  if (blocks === 0) return undefined;
  const u = sb.subarray(0x68, 0x78).toString('hex');
  const uuid = `${u.slice(0, 8)}-${u.slice(8, 12)}-${u.slice(12, 16)}-${u.slice(16, 20)}-${u.slice(20)}`;
  const rawLabel = sb.subarray(0x78, 0x88);
  const nul = rawLabel.indexOf(0);
  const label = rawLabel.subarray(0, nul === -1 ? 16 : nul).toString('utf8');
  return { type: 'ext4', size: blocks * blockSize, 'block-size': blockSize, uuid, ...(label !== '' ? { label } : {}) };
}

/**
 * The XFS superblock's identity at byte `offset` (sb_uuid, sb_fname; size =
 * sb_dblocks × sb_blocksize, the data device), or undefined when there is no
 * XFS there. `agBlocks`/`agBlkLog` convert linear blocks to XFS fsblocks.
 */
export async function xfsAt(
  read: ImageReader,
  offset: number,
): Promise<(Omit<BaseFilesystem, 'offset'> & { agBlocks: number; agBlkLog: number }) | undefined> {
  const sb = await read(offset, 512);
  if (sb.length < 512 || sb.readUInt32BE(0) !== XFS_MAGIC) return undefined;
  const blockSize = sb.readUInt32BE(4);
  const blocks = Number(sb.readBigUInt64BE(8));
  const agBlocks = sb.readUInt32BE(84);
  const agCount = sb.readUInt32BE(88);
  const agBlkLog = sb[124]!;
  if (blockSize < 1024 || blockSize > 65536 || (blockSize & (blockSize - 1)) !== 0) return undefined;
  if (
    blocks === 0 ||
    agBlocks === 0 ||
    agCount === 0 ||
    agBlkLog > 31 ||
    2 ** agBlkLog < agBlocks ||
    !Number.isSafeInteger(blocks * blockSize)
  )
    return undefined;
  const u = sb.subarray(32, 48).toString('hex');
  const uuid = `${u.slice(0, 8)}-${u.slice(8, 12)}-${u.slice(12, 16)}-${u.slice(16, 20)}-${u.slice(20)}`;
  const rawLabel = sb.subarray(108, 120);
  const nul = rawLabel.indexOf(0);
  const label = rawLabel.subarray(0, nul === -1 ? 12 : nul).toString('utf8');
  return {
    type: 'xfs',
    size: blocks * blockSize,
    'block-size': blockSize,
    uuid,
    ...(label !== '' ? { label } : {}),
    agBlocks,
    agBlkLog,
  };
}

/** The identity of the ext4 or XFS filesystem at byte `offset`, without XFS's geometry. */
export async function filesystemAt(
  read: ImageReader,
  offset: number,
): Promise<Omit<BaseFilesystem, 'offset'> | undefined> {
  const ext4 = await ext4At(read, offset);
  if (ext4) return ext4;
  const xfs = await xfsAt(read, offset);
  if (!xfs) return undefined;
  const { agBlocks: _a, agBlkLog: _l, ...id } = xfs;
  return id;
}

/** The partitions of an MBR or GPT partition table; empty when there is none. */
export async function partitions(read: ImageReader, imageSize: number): Promise<Partition[]> {
  const mbr = await read(0, 512);
  if (mbr.length < 512 || mbr.readUInt16LE(510) !== 0xaa55) return [];
  const entries = [0, 1, 2, 3].map((i) => {
    const e = 446 + 16 * i;
    return { number: i + 1, type: mbr[e + 4]!, start: mbr.readUInt32LE(e + 8), sectors: mbr.readUInt32LE(e + 12) };
  });
  if (entries.some((e) => e.type === MBR_GPT_PROTECTIVE)) {
    for (const sector of [512, 4096]) {
      const gpt = await gptPartitions(read, sector, imageSize);
      if (gpt) return gpt;
    }
    return [];
  }
  return entries
    .filter(
      (e) => e.type !== 0 && !MBR_EXTENDED.has(e.type) && e.sectors > 0 && (e.start + e.sectors) * 512 <= imageSize,
    )
    .map((e) => ({ number: e.number, table: 'mbr' as const, offset: e.start * 512, size: e.sectors * 512 }));
}

async function gptPartitions(read: ImageReader, sector: number, imageSize: number): Promise<Partition[] | undefined> {
  const hdr = await read(sector, 92);
  if (hdr.length < 92 || hdr.subarray(0, 8).toString('latin1') !== 'EFI PART') return undefined;
  const hdrSize = hdr.readUInt32LE(12);
  if (hdrSize < 92 || hdrSize > sector) return undefined;
  const full = await read(sector, hdrSize);
  // zlib loads only for a GPT: every diff reads the base's partitions, few images have one.
  const { crc32 } = await import('node:zlib');
  const check = Buffer.from(full);
  check.writeUInt32LE(0, 16);
  if (crc32(check) !== full.readUInt32LE(16)) return undefined;
  const entriesLba = Number(full.readBigUInt64LE(72));
  const count = full.readUInt32LE(80);
  const entrySize = full.readUInt32LE(84);
  if (entrySize < 128 || entrySize > 4096 || count > MAX_GPT_ENTRIES) return undefined;
  const table = await read(entriesLba * sector, count * entrySize);
  if (crc32(table) !== full.readUInt32LE(88)) return undefined;
  const out: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const e = table.subarray(i * entrySize, (i + 1) * entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    if (last < first || (last + 1) * sector > imageSize) continue;
    out.push({ number: i + 1, table: 'gpt', offset: first * sector, size: (last - first + 1) * sector });
  }
  return out;
}

/** Every ext4 and XFS filesystem of the image: bare, or in a partition. */
export async function findFilesystems(read: ImageReader, imageSize: number): Promise<BaseFilesystem[]> {
  const bare = await filesystemAt(read, 0);
  if (bare) return bare.size <= imageSize ? [{ ...bare, offset: 0 }] : [];
  const found: BaseFilesystem[] = [];
  for (const p of await partitions(read, imageSize)) {
    const fs = await filesystemAt(read, p.offset);
    if (fs && fs.size <= p.size)
      found.push({ ...fs, offset: p.offset, partition: p.number, 'partition-table': p.table });
  }
  return found;
}

export function readerOf(source: BlockSource): ImageReader {
  return async (offset, length) => {
    const buf = Buffer.alloc(length);
    if (offset < source.size) await source.readInto(buf.subarray(0, Math.min(length, source.size - offset)), offset);
    return buf;
  };
}

/** The base image's filesystems (its identity in the manifest). */
export function baseFilesystems(base: BlockSource): Promise<BaseFilesystem[]> {
  return findFilesystems(readerOf(base), base.size);
}
