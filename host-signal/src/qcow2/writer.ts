/**
 * Writing a qcow2 (version 3) image that allocates exactly a given set of
 * clusters, optionally naming a backing file: the "delta disk" of a bundle.
 * Layout (qemu docs/interop/qcow2.txt):
 *
 *   cluster 0        header, header extensions (backing format, end), backing file name
 *   L1 table         one entry per L2 table's worth of the virtual disk
 *   refcount table   offsets of the refcount blocks
 *   refcount blocks  16-bit refcounts (refcount_order 4), 1 for every cluster in the file
 *   L2 tables        only those covering an allocated cluster
 *   data clusters    in virtual order, so the data is written sequentially
 *
 * Every allocated cluster has refcount 1, so L1 and L2 entries carry
 * QCOW_OFLAG_COPIED, as QEMU writes them. The file is written beside its
 * destination and renamed into place: a failure leaves no partial image.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { TargetError } from '../errors.js';

const MAGIC = 0x514649fb; // "QFI\xfb"
const HEADER_V3_BYTES = 104;
const EXT_BACKING_FORMAT = 0xe2792aca;
const OFLAG_COPIED = 1n << 63n;
const REFCOUNT_ORDER = 4; // 16-bit refcounts, QEMU's default
const MAX_BACKING_NAME = 1023; // QEMU refuses longer names
/** Bytes of cluster data assembled and written per request. */
const WRITE_CHUNK = 4 << 20;

export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;

export interface Qcow2Spec {
  virtualSize: number;
  clusterSize: number;
  /** Recorded in the header; QEMU opens it when the image is used on its own. */
  backing?: { name: string; format: string };
  /** Virtual cluster indices to allocate, ascending, no duplicates. */
  clusters: readonly number[];
  /**
   * The content of `count` consecutive allocated clusters starting at virtual
   * cluster `first`: exactly count × clusterSize bytes.
   */
  content(first: number, count: number): Promise<Buffer>;
  onProgress?: (done: number, total: number) => void;
}

export interface Qcow2Written {
  path: string;
  fileSize: number;
  clusterSize: number;
  dataClusters: number;
}

/** log2 of a valid cluster size, or an error naming the valid ones. */
export function clusterBits(size: number): number {
  const bits = Math.log2(size);
  if (!Number.isInteger(bits) || bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
    throw new TargetError(
      `cluster size ${size} is not a power of two between ${1 << MIN_CLUSTER_BITS} and ${1 << MAX_CLUSTER_BITS}`,
    );
  }
  return bits;
}

interface Layout {
  l1Offset: number;
  l1Size: number;
  refTableOffset: number;
  refTableClusters: number;
  refBlocksOffset: number;
  refBlocks: number;
  /** L1 index → host offset of its L2 table. */
  l2Offsets: Map<number, number>;
  dataOffset: number;
  totalClusters: number;
}

function layout(spec: Qcow2Spec): Layout {
  const cs = spec.clusterSize;
  const l2Entries = cs / 8;
  const l1Size = Math.ceil(spec.virtualSize / (cs * l2Entries));
  const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
  const l2Tables = [...new Set(spec.clusters.map((c) => Math.floor(c / l2Entries)))];
  const fixed = 1 + l1Clusters + l2Tables.length + spec.clusters.length;
  const perBlock = (cs * 8) / (1 << REFCOUNT_ORDER);
  let refBlocks = 1;
  let refTableClusters = 1;
  for (;;) {
    const blocks = Math.ceil((fixed + refTableClusters + refBlocks) / perBlock);
    const tableClusters = Math.ceil((blocks * 8) / cs);
    if (blocks === refBlocks && tableClusters === refTableClusters) break;
    refBlocks = blocks;
    refTableClusters = tableClusters;
  }
  const l1Offset = cs;
  const refTableOffset = l1Offset + l1Clusters * cs;
  const refBlocksOffset = refTableOffset + refTableClusters * cs;
  const l2Start = refBlocksOffset + refBlocks * cs;
  const l2Offsets = new Map(l2Tables.map((t, i) => [t, l2Start + i * cs] as const));
  return {
    l1Offset,
    l1Size,
    refTableOffset,
    refTableClusters,
    refBlocksOffset,
    refBlocks,
    l2Offsets,
    dataOffset: l2Start + l2Tables.length * cs,
    totalClusters: fixed + refTableClusters + refBlocks,
  };
}

function header(spec: Qcow2Spec, bits: number, l: Layout): Buffer {
  const cs = spec.clusterSize;
  const h = Buffer.alloc(cs);
  h.writeUInt32BE(MAGIC, 0);
  h.writeUInt32BE(3, 4);
  h.writeUInt32BE(bits, 20);
  h.writeBigUInt64BE(BigInt(spec.virtualSize), 24);
  h.writeUInt32BE(0, 32); // no encryption
  h.writeUInt32BE(l.l1Size, 36);
  h.writeBigUInt64BE(BigInt(l.l1Offset), 40);
  h.writeBigUInt64BE(BigInt(l.refTableOffset), 48);
  h.writeUInt32BE(l.refTableClusters, 56);
  // no snapshots; no incompatible, compatible or autoclear features
  h.writeUInt32BE(REFCOUNT_ORDER, 96);
  h.writeUInt32BE(HEADER_V3_BYTES, 100);
  let pos = HEADER_V3_BYTES;
  if (spec.backing) {
    const name = Buffer.from(spec.backing.name, 'utf8');
    const format = Buffer.from(spec.backing.format, 'utf8');
    if (name.length === 0 || name.length > MAX_BACKING_NAME)
      throw new TargetError(`backing file name of ${name.length} bytes; 1 to ${MAX_BACKING_NAME} are allowed`);
    h.writeUInt32BE(EXT_BACKING_FORMAT, pos);
    h.writeUInt32BE(format.length, pos + 4);
    pos += 8;
    if (pos + format.length + 8 + name.length > cs)
      throw new TargetError(
        `the backing file name does not fit in a ${cs}-byte header cluster`,
        'use a larger cluster size or a shorter backing name',
      );
    format.copy(h, pos);
    pos += Math.ceil(format.length / 8) * 8;
    pos += 8; // end-of-extensions marker: type 0, length 0
    name.copy(h, pos);
    h.writeBigUInt64BE(BigInt(pos), 8);
    h.writeUInt32BE(name.length, 16);
  }
  return h;
}

/** Writes the image to `path` (replacing nothing: an existing file is an error). */
export async function writeQcow2(path: string, spec: Qcow2Spec): Promise<Qcow2Written> {
  const bits = clusterBits(spec.clusterSize);
  const cs = spec.clusterSize;
  for (let i = 0; i < spec.clusters.length; i++) {
    const c = spec.clusters[i]!;
    if (!Number.isSafeInteger(c) || c < 0 || c * cs >= spec.virtualSize || (i > 0 && c <= spec.clusters[i - 1]!)) {
      throw new TargetError(
        `cluster list is not ascending inside the ${spec.virtualSize}-byte disk (at index ${i}: ${c})`,
      );
    }
  }
  const l = layout(spec);
  const head = header(spec, bits, l);
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  let handle;
  try {
    handle = await open(path, 'wx'); // claims the name: an existing file is never replaced
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new TargetError(
      err.code === 'EEXIST' ? `${path} exists already` : `cannot create ${path}: ${err.message}`,
      err.code === 'EEXIST' ? 'choose another output file, or remove this one' : undefined,
      { cause: e },
    );
  }
  await handle.close();
  let out;
  try {
    out = await open(tmp, 'wx', 0o644);
    const writeAt = async (buf: Buffer, pos: number): Promise<void> => {
      let done = 0;
      while (done < buf.length) done += (await out!.write(buf, done, buf.length - done, pos + done)).bytesWritten;
    };

    // Data clusters, in runs of consecutive virtual clusters.
    const perChunk = Math.max(1, WRITE_CHUNK / cs);
    const total = spec.clusters.length * cs;
    for (let i = 0; i < spec.clusters.length;) {
      let n = 1;
      while (i + n < spec.clusters.length && n < perChunk && spec.clusters[i + n] === spec.clusters[i]! + n) n++;
      const data = await spec.content(spec.clusters[i]!, n);
      if (data.length !== n * cs) throw new Error(`qcow2 content for ${n} clusters is ${data.length} bytes`);
      await writeAt(data, l.dataOffset + i * cs);
      i += n;
      spec.onProgress?.(i * cs, total);
    }

    // L2 tables and L1.
    const l2Entries = cs / 8;
    const l2 = new Map<number, Buffer>();
    spec.clusters.forEach((c, i) => {
      const t = Math.floor(c / l2Entries);
      let table = l2.get(t);
      if (!table) l2.set(t, (table = Buffer.alloc(cs)));
      table.writeBigUInt64BE(BigInt(l.dataOffset + i * cs) | OFLAG_COPIED, (c % l2Entries) * 8);
    });
    const l1 = Buffer.alloc(l.refTableOffset - l.l1Offset);
    for (const [t, offset] of l.l2Offsets) {
      await writeAt(l2.get(t)!, offset);
      l1.writeBigUInt64BE(BigInt(offset) | OFLAG_COPIED, t * 8);
    }
    await writeAt(l1, l.l1Offset);

    // Refcounts: every cluster of the file is used once.
    const refTable = Buffer.alloc(l.refTableClusters * cs);
    const refBlocks = Buffer.alloc(l.refBlocks * cs);
    for (let c = 0; c < l.totalClusters; c++) refBlocks.writeUInt16BE(1, c * 2);
    for (let b = 0; b < l.refBlocks; b++) refTable.writeBigUInt64BE(BigInt(l.refBlocksOffset + b * cs), b * 8);
    await writeAt(refTable, l.refTableOffset);
    await writeAt(refBlocks, l.refBlocksOffset);

    await writeAt(head, 0);
    await out.datasync();
    await out.close();
    out = undefined;
    await rename(tmp, path);
  } catch (e) {
    await out?.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw e;
  }
  return { path, fileSize: l.totalClusters * cs, clusterSize: cs, dataClusters: spec.clusters.length };
}
