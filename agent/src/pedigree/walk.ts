/**
 * The fast walk behind the pedigree index: every file and directory of one
 * mounted filesystem, with its inode and FIEMAP extents as disk byte ranges.
 *
 * Synchronous tight loops (readdirSync, openSync, fstatSync, the addon's
 * FIEMAP, closeSync) in batches, yielding to the event loop between batches:
 * the per-file cost is a handful of system calls with no promise or
 * thread-pool hop in between, and the agent still answers requests while a
 * large tree is indexed.
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, type Dirent } from 'node:fs';
import { join } from 'node:path';
import type { Mount } from './mounts.js';

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
export const NOT_ON_DISK = FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_INLINE;

/** Upper bound on entries walked per filesystem, so a huge tree cannot stall the agent. */
export const MAX_FILES = 2_000_000;
/** Files mapped between two yields to the event loop. */
export const WALK_BATCH = 4096;

const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;

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
  /** ctime in ns and size when indexed: a change means the extents must be read again. */
  ctimeNs?: bigint;
  size?: number;
}

const yieldNow = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Reads the extents of the open `fd` into `file` (disk offsets: `partStart` added). */
export function addExtents(file: IndexedFile, fd: number, partStart: number, fiemap: Fiemap): void {
  for (const e of fiemap(fd)) {
    if (e.flags & NOT_ON_DISK) continue;
    file.extents.push({ diskStart: partStart + Number(e.physical), fileOffset: Number(e.logical), length: Number(e.length) });
  }
}

/**
 * Maps one path (file or directory itself, not its children): undefined when
 * it is gone, not a file or directory, or on another filesystem than `dev`.
 */
export function mapPath(path: string, mount: Mount, dev: number, partStart: number, fiemap: Fiemap, withEntries = true): IndexedFile | undefined {
  let fd: number;
  try {
    fd = openSync(path, OPEN_FLAGS);
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd, { bigint: true });
    if (Number(st.dev) !== dev) return undefined;
    const kind = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : undefined;
    if (!kind) return undefined;
    const file: IndexedFile = { path, dev, ino: Number(st.ino), mount, kind, extents: [], ctimeNs: st.ctimeNs, size: Number(st.size) };
    if (kind === 'dir') file.entries = withEntries ? readEntries(path) : new Map();
    addExtents(file, fd, partStart, fiemap);
    return file;
  } finally {
    closeSync(fd);
  }
}

/** A directory's entries, name → inode (lstat of each: node's readdir does not expose d_ino). */
export function readEntries(dir: string): Map<string, number> {
  const entries = new Map<string, number>();
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return entries;
  }
  for (const name of names) {
    const st = lstatSync(join(dir, name), { throwIfNoEntry: false });
    if (st) entries.set(name, st.ino);
  }
  return entries;
}

/**
 * Walks one mounted filesystem, never crossing into another mount, calling
 * `emit` for every regular file and directory mapped.
 */
export async function walkMount(mount: Mount, partStart: number, fiemap: Fiemap, emit: (f: IndexedFile) => void): Promise<number> {
  const root = lstatSync(mount.mountPoint);
  const dev = root.dev;
  // A directory's own inode is set in its parent's entries when the directory is visited.
  const stack: { dir: string; parent?: Map<string, number>; name?: string }[] = [{ dir: mount.mountPoint }];
  let seen = 0;
  let sinceYield = 0;
  while (stack.length > 0) {
    const { dir, parent, name } = stack.pop()!;
    let list: Dirent[];
    let dfd: number;
    try {
      dfd = openSync(dir, OPEN_FLAGS | constants.O_DIRECTORY);
    } catch {
      continue;
    }
    let dirFile: IndexedFile;
    try {
      const st = fstatSync(dfd, { bigint: true });
      if (parent) parent.set(name!, Number(st.ino));
      if (Number(st.dev) !== dev) continue;
      list = readdirSync(dir, { withFileTypes: true });
      dirFile = { path: dir, dev, ino: Number(st.ino), mount, kind: 'dir', entries: new Map(), extents: [], ctimeNs: st.ctimeNs, size: Number(st.size) };
      addExtents(dirFile, dfd, partStart, fiemap);
    } catch {
      continue;
    } finally {
      closeSync(dfd);
    }
    const entries = dirFile.entries!;
    for (const entry of list) {
      if (++seen > MAX_FILES) throw new Error(`more than ${MAX_FILES} entries under ${mount.mountPoint}`);
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        stack.push({ dir: path, parent: entries, name: entry.name });
        continue;
      }
      if (!entry.isFile()) {
        const st = lstatSync(path, { throwIfNoEntry: false });
        if (!st) continue;
        entries.set(entry.name, st.ino);
        continue;
      }
      let fd: number;
      try {
        fd = openSync(path, OPEN_FLAGS);
      } catch {
        continue;
      }
      try {
        const st = fstatSync(fd, { bigint: true });
        const ino = Number(st.ino);
        entries.set(entry.name, ino);
        if (Number(st.dev) !== dev || !st.isFile()) continue;
        const file: IndexedFile = { path, dev, ino, mount, kind: 'file', extents: [], ctimeNs: st.ctimeNs, size: Number(st.size) };
        addExtents(file, fd, partStart, fiemap);
        emit(file);
      } catch {
        // raced with a removal or a FIEMAP the filesystem refuses: the file is not indexed
      } finally {
        closeSync(fd);
      }
      if (++sinceYield >= WALK_BATCH) {
        sinceYield = 0;
        await yieldNow();
      }
    }
    emit(dirFile);
  }
  return seen;
}
