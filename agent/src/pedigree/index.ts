/**
 * The pedigree index: which file owns each block of a disk. Built by walking
 * every filesystem mounted from the disk (or one of its partitions) and asking
 * FIEMAP for each regular file's extents, translated to disk offsets.
 */
import { lstat, opendir, open } from 'node:fs/promises';
import { join } from 'node:path';
import type { ByteRange } from '../protocol/schema.js';
import type { DiskLayout, Mount } from './mounts.js';

export interface ExtentInfo {
  logical: bigint;
  physical: bigint;
  length: bigint;
  flags: number;
}
export type Fiemap = (fd: number) => ExtentInfo[];

/** FIEMAP flags whose extents have no stable place on the disk. */
const FIEMAP_EXTENT_UNKNOWN = 0x2;
const FIEMAP_EXTENT_DELALLOC = 0x4;
const FIEMAP_EXTENT_DATA_INLINE = 0x200;
const NOT_ON_DISK = FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_INLINE;

/** Upper bound on files walked per filesystem, so a huge tree cannot stall the agent. */
export const MAX_FILES = 2_000_000;

export interface IndexedFile {
  path: string;
  dev: number;
  ino: number;
  mount: Mount;
  kind: 'file' | 'dir';
  /** For directories: each entry's name and inode number, as the guest saw them when indexed. */
  entries?: Map<string, number>;
  /** Where the file's extents lie on the disk (byte offsets), for reading them back raw. */
  extents: { diskStart: number; fileOffset: number; length: number }[];
}

interface Piece {
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
  readonly #pieces: Piece[];
  constructor(pieces: Piece[]) {
    this.#pieces = pieces.sort((a, b) => a.diskStart - b.diskStart);
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
    const pieces: Piece[] = [];
    const done = new Set<string>();
    // Prefer a mount of the filesystem's root, so every file is reachable.
    const ordered = [...mounts].sort((a, b) => Number(b.root === '/') - Number(a.root === '/'));
    for (const part of disk.parts) {
      const mount = ordered.find((m) => m.devNum === part.devNum);
      if (!mount || done.has(part.devNum)) continue;
      done.add(part.devNum);
      await indexMount(mount, part.startBytes, fiemap, pieces);
    }
    return new PedigreeIndex(pieces);
  }
}

async function indexMount(mount: Mount, partStart: number, fiemap: Fiemap, out: Piece[]): Promise<void> {
  const rootStat = await lstat(mount.mountPoint);
  const stack = [mount.mountPoint];
  let files = 0;
  const addExtents = (file: IndexedFile, fd: number): void => {
    for (const e of fiemap(fd)) {
      if (e.flags & NOT_ON_DISK) continue;
      const diskStart = partStart + Number(e.physical);
      const piece = { diskStart, diskEnd: diskStart + Number(e.length), fileOffset: Number(e.logical), file };
      out.push(piece);
      file.extents.push({ diskStart, fileOffset: piece.fileOffset, length: Number(e.length) });
    }
  };
  while (stack.length > 0) {
    const dir = stack.pop()!;
    const handle = await opendir(dir).catch(() => undefined);
    if (!handle) continue;
    const dirStat = await lstat(dir).catch(() => undefined);
    const dirFile: IndexedFile | undefined = dirStat && {
      path: dir, dev: dirStat.dev, ino: dirStat.ino, mount, kind: 'dir', entries: new Map(), extents: [],
    };
    for await (const entry of handle) {
      if (++files > MAX_FILES) throw new Error(`more than ${MAX_FILES} entries under ${mount.mountPoint}`);
      const path = join(dir, entry.name);
      if (!entry.isFile()) {
        const st = await lstat(path).catch(() => undefined);
        if (!st) continue;
        dirFile?.entries!.set(entry.name, st.ino);
        if (st.isDirectory() && st.dev === rootStat.dev) stack.push(path); // never cross into another mount
        continue;
      }
      const fh = await open(path, 'r').catch(() => undefined);
      if (!fh) continue;
      try {
        const st = await fh.stat();
        dirFile?.entries!.set(entry.name, st.ino);
        if (st.dev !== rootStat.dev) continue;
        addExtents({ path, dev: st.dev, ino: st.ino, mount, kind: 'file', extents: [] }, fh.fd);
      } finally {
        await fh.close();
      }
    }
    if (dirFile && dirFile.dev === rootStat.dev) {
      const fh = await open(dir, 'r').catch(() => undefined);
      if (fh) {
        try {
          addExtents(dirFile, fh.fd);
        } finally {
          await fh.close();
        }
      }
    }
  }
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
