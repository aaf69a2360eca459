/**
 * The pedigree index: which file owns each block of a disk. Built by walking
 * every filesystem mounted from the disk (or one of its partitions) and asking
 * FIEMAP for each regular file's extents, translated to disk offsets.
 */
import type { ByteRange } from '@vmsubst/common/protocol/schema';
import type { DiskLayout, Mount } from './mounts.js';
import { walkMount, type Fiemap, type IndexedFile } from './walk.js';

export { MAX_FILES, type ExtentInfo, type Fiemap, type IndexedFile } from './walk.js';

export interface Piece {
  diskStart: number;
  diskEnd: number;
  fileOffset: number;
  file: IndexedFile;
}

export interface FileHit {
  file: IndexedFile;
  /** File-relative byte ranges whose disk blocks changed. */
  ranges: ByteRange[];
}

export class PedigreeIndex {
  #pieces: Piece[];
  constructor(pieces: Piece[]) {
    this.#pieces = pieces.sort((a, b) => a.diskStart - b.diskStart);
  }

  /** The index's pieces for `files` (one per extent). */
  static piecesOf(files: Iterable<IndexedFile>): Piece[] {
    const out: Piece[] = [];
    for (const file of files)
      for (const e of file.extents)
        out.push({ diskStart: e.diskStart, diskEnd: e.diskStart + e.length, fileOffset: e.fileOffset, file });
    return out;
  }

  /** Drops `old`'s pieces and inserts `next`'s: one file re-mapped, in O(extents · log n + n). */
  replace(old: IndexedFile | undefined, next: IndexedFile | undefined): void {
    if (old) {
      for (const e of old.extents) {
        const i = this.#firstEndingAfter(e.diskStart);
        for (let j = i; j < this.#pieces.length && this.#pieces[j]!.diskStart <= e.diskStart; j++) {
          if (this.#pieces[j]!.file === old) {
            this.#pieces.splice(j, 1);
            break;
          }
        }
      }
    }
    if (next) {
      for (const p of PedigreeIndex.piecesOf([next])) {
        // A stale owner of the same blocks (freed, then reused) is dropped: blocks have one owner.
        const i = this.#firstEndingAfter(p.diskStart);
        while (i < this.#pieces.length && this.#pieces[i]!.diskStart < p.diskEnd) this.#pieces.splice(i, 1);
        this.#pieces.splice(i, 0, p);
      }
    }
  }

  /** Replaces every piece (a fresh build). */
  replaceAll(pieces: Piece[]): void {
    this.#pieces = pieces.sort((a, b) => a.diskStart - b.diskStart);
  }

  /** Every piece, in disk order (for statistics and tests). */
  pieces(): readonly Piece[] {
    return this.#pieces;
  }

  get size(): number {
    return this.#pieces.length;
  }

  /** Maps changed disk ranges to files; what maps to no file comes back as `unmapped`. */
  lookup(changed: ByteRange[]): { files: FileHit[]; unmapped: ByteRange[] } {
    const byFile = new Map<IndexedFile, ByteRange[]>();
    const unmapped: ByteRange[] = [];
    for (const r of changed) {
      const start = r.offset;
      const end = r.offset + r.length;
      let cursor = start;
      for (let i = this.#firstEndingAfter(start); i < this.#pieces.length; i++) {
        const p = this.#pieces[i]!;
        if (p.diskStart >= end) break;
        const s = Math.max(start, p.diskStart);
        const e = Math.min(end, p.diskEnd);
        if (s > cursor) unmapped.push({ offset: cursor, length: s - cursor });
        const list = byFile.get(p.file) ?? [];
        list.push({ offset: p.fileOffset + (s - p.diskStart), length: e - s });
        byFile.set(p.file, list);
        cursor = Math.max(cursor, e);
      }
      if (cursor < end) unmapped.push({ offset: cursor, length: end - cursor });
    }
    const files = [...byFile].map(([file, ranges]) => ({ file, ranges: mergeRanges(ranges) }));
    files.sort((a, b) => a.file.path.localeCompare(b.file.path));
    return { files, unmapped: mergeRanges(unmapped) };
  }

  #firstEndingAfter(offset: number): number {
    // Pieces do not overlap, so diskEnd is sorted like diskStart.
    let lo = 0;
    let hi = this.#pieces.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#pieces[mid]!.diskEnd <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Indexes every filesystem mounted from `disk` (whole or partition). */
  static async build(disk: DiskLayout, mounts: Mount[], fiemap: Fiemap): Promise<PedigreeIndex> {
    const files: IndexedFile[] = [];
    for (const { mount, startBytes } of mountsOfDisk(disk, mounts))
      await walkMount(mount, startBytes, fiemap, (f) => files.push(f));
    return new PedigreeIndex(PedigreeIndex.piecesOf(files));
  }
}

/** One mount per filesystem of `disk`, preferring a mount of the filesystem's root (every file reachable). */
export function mountsOfDisk(
  disk: DiskLayout,
  mounts: Mount[],
): { mount: Mount; startBytes: number; sizeBytes: number }[] {
  const out: { mount: Mount; startBytes: number; sizeBytes: number }[] = [];
  const done = new Set<string>();
  for (const part of disk.parts) {
    const mount = primaryMount(mounts, part.devNum);
    if (!mount || done.has(part.devNum)) continue;
    done.add(part.devNum);
    out.push({ mount, startBytes: part.startBytes, sizeBytes: part.sizeBytes });
  }
  return out;
}

/** The mount an index of device `devNum` is built through: the first that shows the filesystem's root, else the first. */
export function primaryMount(mounts: Mount[], devNum: string): Mount | undefined {
  return mounts.find((m) => m.devNum === devNum && m.root === '/') ?? mounts.find((m) => m.devNum === devNum);
}

/** Sorts and coalesces overlapping or touching ranges. */
export function mergeRanges(ranges: ByteRange[]): ByteRange[] {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      out.push({ ...r });
    }
  }
  return out;
}
