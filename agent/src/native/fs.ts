/**
 * Files through the agent's addon: FIEMAP, the pedigree index's native walk
 * of a filesystem (agent/native/walk.c), and O_DIRECT reads.
 */
import { availableParallelism } from 'node:os';

import { binding } from './binding.js';
import { checkFd, checkInteger } from '@vmsubst/common/native/errors';

/** One FIEMAP extent, in bytes. `flags` are the kernel's fe_flags (see `constants.FIEMAP_EXTENT_*`). */
export interface Extent {
  logical: bigint;
  physical: bigint;
  length: bigint;
  flags: number;
}

/** Kinds of TreeWalkStep records. */
export const TREE_WALK_ENTRY = 0;
export const TREE_WALK_FILE = 1;
export const TREE_WALK_DIR = 2;

/**
 * One step of a native tree walk: flat arrays rather than an object per
 * file. Directories are numbered 0, 1, … in the order their TREE_WALK_DIR
 * records come, across steps (the root is 0); a directory's record comes
 * before the records it holds.
 */
export interface TreeWalkStep {
  /**
   * Five numbers per record: kind (TREE_WALK_ENTRY: only a name → inode
   * entry of its directory; TREE_WALK_FILE: a mapped regular file;
   * TREE_WALK_DIR: a mapped directory), parent directory number (-1 for the
   * root), inode, size in bytes, and how many extents follow in `extents`.
   */
  records: Float64Array;
  /** Each record's ctime in ns. */
  ctimeNs: BigInt64Array;
  /**
   * Four numbers per extent, in record order: physical, logical, length (bytes), flags
   * (TREE_WALK_EXTENT_SHARED); extents without a disk place left out.
   */
  extents: Float64Array;
  /** Each record's name followed by a NUL ('' for the root). */
  names: string;
  /** Directory entries seen so far. */
  seen: number;
  /** Nothing is left to walk. */
  done: boolean;
}

/** A walk in progress: one step at a time; close() when done or abandoned. */
export interface TreeWalk {
  next(maxRecords: number): Promise<TreeWalkStep>;
  close(): void;
}

/** Extent flag of a TreeWalkStep: FIEMAP_EXTENT_SHARED (reflink, snapshot). */
export const TREE_WALK_EXTENT_SHARED = 0x1;

/** How a filesystem is walked (pedigree/walk.ts chooses per filesystem type). */
export interface WalkOptions {
  /** Map directories with FIEMAP (default true; XFS refuses it with EOPNOTSUPP). */
  dirExtents?: boolean;
  /** FIEMAP_FLAG_SYNC on every file (default false: only files with delayed allocations are synced). */
  sync?: boolean;
}

export type WalkTree = (root: string, dev: number, maxEntries: number, opts?: WalkOptions) => TreeWalk;

/**
 * Every extent of the open file `fd`, in logical order (FS_IOC_FIEMAP with
 * FIEMAP_FLAG_SYNC, in bounded batches up to FIEMAP_EXTENT_LAST). Holes are
 * gaps between extents; an empty or fully sparse file has none. Synchronous.
 */
export function fiemap(fd: number): Extent[] {
  checkFd(fd);
  return binding().fiemap(fd);
}

/** Most threads one walk maps files with. */
export const WALK_THREADS_MAX: number = 4;

/**
 * Walks the tree at `root` without leaving device `dev` (st_dev of root, from
 * the caller's lstat), mapping every regular file and directory with FIEMAP
 * (see agent/native/walk.c). Each `next(n)` walks about n more records on the
 * libuv thread pool — files spread over up to `threads` threads — so the
 * event loop stays free and one step can be consumed while the next runs.
 * A step rejects with E2BIG past `maxEntries` directory entries; a failed or
 * closed walk rejects further steps.
 */
export const walkTree: WalkTree = (root, dev, maxEntries, opts = {}) => {
  if (typeof root !== 'string' || root === '') throw new TypeError('root must be a non-empty string');
  checkInteger('dev', dev, 0, Number.MAX_SAFE_INTEGER);
  checkInteger('maxEntries', maxEntries, 0, 2 ** 32);
  const threads = Math.max(1, Math.min(WALK_THREADS_MAX, availableParallelism()));
  // VS_WALK_F_NO_DIR_FIEMAP, VS_WALK_F_SYNC (agent/native/native.h)
  const flags = (opts.dirExtents === false ? 0x1 : 0) | (opts.sync ? 0x2 : 0);
  return new (binding().TreeWalk)(root, dev, maxEntries, threads, flags);
};
// The pedigree index is handed `fiemap`; the walk travels with it (pedigree/walk.ts).
fiemap.walkTree = walkTree;

/**
 * Read [offset, offset + length) of a file or block device with O_DIRECT, on
 * the libuv thread pool. Unaligned ranges are served from the enclosing
 * DIRECT_IO_ALIGN-aligned span. A range that runs past the end of the file or
 * device rejects with an EIO NativeError whose message says "short read".
 */
export async function readDirect(path: string, offset: number, length: number): Promise<Buffer> {
  if (typeof path !== 'string' || path === '') throw new TypeError('path must be a non-empty string');
  checkInteger('offset', offset, 0, Number.MAX_SAFE_INTEGER);
  checkInteger('length', length, 0, Number.MAX_SAFE_INTEGER);
  return binding().readDirect(path, offset, length);
}
