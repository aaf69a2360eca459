/**
 * The fast walk behind the pedigree index: every file and directory of one
 * mounted filesystem, with its inode and FIEMAP extents as disk byte ranges.
 *
 * Two implementations with the same result:
 *  - the addon's walk (`fiemap.walkTree`, agent/native/walk.c), used when the
 *    addon has it: the tree is walked in C on the libuv thread pool, files
 *    mapped on several threads, and each step comes back as flat typed
 *    arrays; this module turns them into IndexedFiles while the next step
 *    runs;
 *  - a JavaScript walk, for an addon without it (and any `fiemap` given
 *    alone): synchronous tight loops (readdirSync, openSync, fstatSync, the
 *    addon's FIEMAP, closeSync) in batches, yielding to the event loop
 *    between batches.
 * Either way the agent still answers requests while a large tree is indexed.
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, type Dirent } from 'node:fs';
import { join } from 'node:path';
import {
  TREE_WALK_DIR,
  TREE_WALK_ENTRY,
  TREE_WALK_EXTENT_SHARED,
  type TreeWalkStep,
  type WalkOptions,
  type WalkTree,
} from '../native/index.js';
import type { Mount } from './mounts.js';

export interface ExtentInfo {
  logical: bigint;
  physical: bigint;
  length: bigint;
  flags: number;
}
/** FIEMAP of one open file, and the addon's whole-tree walk when it has one. */
export interface Fiemap {
  (fd: number): ExtentInfo[];
  walkTree?: WalkTree | undefined;
}

/** FIEMAP flags whose extents have no stable place on the disk. */
const FIEMAP_EXTENT_UNKNOWN = 0x2;
const FIEMAP_EXTENT_DELALLOC = 0x4;
const FIEMAP_EXTENT_DATA_INLINE = 0x200;
export const NOT_ON_DISK = FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_INLINE;
/** Blocks shared with another file (reflink) or a snapshot: substituting them changes every sharer. */
export const FIEMAP_EXTENT_SHARED = 0x2000;

const EXT_TYPES = new Set(['ext2', 'ext3', 'ext4']);

/**
 * How a filesystem is walked. Directories are mapped only on ext2/3/4, whose directory blocks the
 * metadata pipeline reads back (XFS refuses FIEMAP on a directory with EOPNOTSUPP, and a directory's
 * blocks mean nothing the agent can use elsewhere). Files are mapped with FIEMAP_FLAG_SYNC on every
 * other filesystem, so that nothing is left in delayed allocation (XFS).
 */
export function walkOptions(mount: Pick<Mount, 'fsType'>): Required<WalkOptions> {
  const ext = EXT_TYPES.has(mount.fsType);
  return { dirExtents: ext, sync: !ext };
}

/** Upper bound on entries walked per filesystem, so a huge tree cannot stall the agent. */
export const MAX_FILES = 2_000_000;
/** Files mapped between two yields to the event loop. */
export const WALK_BATCH = 4096;
/** Records per step of the addon's walk: bounds its memory, and one step is consumed while the next runs. */
export const WALK_STEP = 8192;

const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;

export interface IndexedFile {
  path: string;
  dev: number;
  ino: number;
  mount: Mount;
  kind: 'file' | 'dir';
  /** For directories: each entry's name and inode number, as the guest saw them when indexed. */
  entries?: Map<string, number>;
  /** Where the file's extents lie on the disk (byte offsets), for reading them back raw; `shared`: FIEMAP_EXTENT_SHARED. */
  extents: { diskStart: number; fileOffset: number; length: number; shared?: true }[];
  /** ctime in ns and size when indexed: a change means the extents must be read again. */
  ctimeNs?: bigint;
  size?: number;
}

const yieldNow = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Reads the extents of the open `fd` into `file` (disk offsets: `partStart` added). */
export function addExtents(file: IndexedFile, fd: number, partStart: number, fiemap: Fiemap): void {
  for (const e of fiemap(fd)) {
    if (e.flags & NOT_ON_DISK) continue;
    const x: IndexedFile['extents'][number] = {
      diskStart: partStart + Number(e.physical),
      fileOffset: Number(e.logical),
      length: Number(e.length),
    };
    if (e.flags & FIEMAP_EXTENT_SHARED) x.shared = true;
    file.extents.push(x);
  }
}

/** A directory's extents when its filesystem's walk maps directories; none when FIEMAP refuses (EOPNOTSUPP). */
function addDirExtents(dir: IndexedFile, fd: number, partStart: number, fiemap: Fiemap): void {
  if (!walkOptions(dir.mount).dirExtents) return;
  try {
    addExtents(dir, fd, partStart, fiemap);
  } catch {
    dir.extents = [];
  }
}

/**
 * Maps one path (file or directory itself, not its children): undefined when
 * it is gone, not a file or directory, or on another filesystem than `dev`.
 */
export function mapPath(
  path: string,
  mount: Mount,
  dev: number,
  partStart: number,
  fiemap: Fiemap,
  withEntries = true,
): IndexedFile | undefined {
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
    const file: IndexedFile = {
      path,
      dev,
      ino: Number(st.ino),
      mount,
      kind,
      extents: [],
      ctimeNs: st.ctimeNs,
      size: Number(st.size),
    };
    if (kind === 'dir') {
      file.entries = withEntries ? readEntries(path) : new Map();
      addDirExtents(file, fd, partStart, fiemap);
    } else {
      addExtents(file, fd, partStart, fiemap);
    }
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
export async function walkMount(
  mount: Mount,
  partStart: number,
  fiemap: Fiemap,
  emit: (f: IndexedFile) => void,
): Promise<number> {
  const root = lstatSync(mount.mountPoint);
  const dev = root.dev;
  if (fiemap.walkTree) return walkNative(fiemap.walkTree, mount, dev, partStart, emit);
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
      dirFile = {
        path: dir,
        dev,
        ino: Number(st.ino),
        mount,
        kind: 'dir',
        entries: new Map(),
        extents: [],
        ctimeNs: st.ctimeNs,
        size: Number(st.size),
      };
      addDirExtents(dirFile, dfd, partStart, fiemap);
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
        const file: IndexedFile = {
          path,
          dev,
          ino,
          mount,
          kind: 'file',
          extents: [],
          ctimeNs: st.ctimeNs,
          size: Number(st.size),
        };
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

/** A directory met by the native walk: its IndexedFile and the prefix of its children's paths. */
interface WalkedDir {
  file: IndexedFile;
  prefix: string;
}

/**
 * walkMount through the addon: steps of WALK_STEP records, the next one
 * running on the thread pool while this one becomes IndexedFiles.
 */
async function walkNative(
  walkTree: WalkTree,
  mount: Mount,
  dev: number,
  partStart: number,
  emit: (f: IndexedFile) => void,
): Promise<number> {
  const walk = walkTree(mount.mountPoint, dev, MAX_FILES, walkOptions(mount));
  const dirs: WalkedDir[] = [];
  // What join(root, name) gives, without a join per file (the root may be given unnormalized).
  const rootPrefix = join(mount.mountPoint, '.');
  let step: Promise<TreeWalkStep> | undefined;
  try {
    let next = walk.next(WALK_STEP);
    for (;;) {
      const s = await next;
      step = undefined;
      if (!s.done) step = next = walk.next(WALK_STEP);
      addStep(s, dirs, mount, dev, partStart, rootPrefix === '/' ? '/' : rootPrefix + '/', emit);
      if (s.done) return s.seen;
    }
  } finally {
    // A step still running when this fails: its result is not wanted.
    step?.catch(() => undefined);
    walk.close();
  }
}

/**
 * A number read from a Float64Array is a double, which V8 boxes (a heap
 * number per field); the same value as a small integer is stored inline, as
 * it is when it comes from node's fs. Most inode numbers, sizes and offsets
 * are small: this keeps the index's memory per extent what the JavaScript
 * walk's is.
 */
const small = (v: number): number => (v <= 0x3fff_ffff ? v | 0 : v);

function addStep(
  s: TreeWalkStep,
  dirs: WalkedDir[],
  mount: Mount,
  dev: number,
  partStart: number,
  rootPrefix: string,
  emit: (f: IndexedFile) => void,
): void {
  const { records, ctimeNs, extents } = s;
  const names = s.names.split('\0');
  const n = records.length / 5;
  let x = 0;
  for (let i = 0; i < n; i++) {
    const r = i * 5;
    const kind = records[r]!;
    const parentNum = records[r + 1]!;
    const ino = small(records[r + 2]!);
    const name = names[i]!;
    const parent = parentNum >= 0 ? dirs[parentNum] : undefined;
    if (kind === TREE_WALK_ENTRY) {
      parent?.file.entries!.set(name, ino);
      continue;
    }
    const path = parent ? parent.prefix + name : mount.mountPoint;
    // Most files have one extent: an array literal is allocated at its size, a push would reserve room for 17.
    const count = records[r + 4]!;
    let fileExtents: IndexedFile['extents'];
    if (count === 1 && !(extents[x + 3]! & TREE_WALK_EXTENT_SHARED)) {
      fileExtents = [
        {
          diskStart: small(partStart + extents[x]!),
          fileOffset: small(extents[x + 1]!),
          length: small(extents[x + 2]!),
        },
      ];
      x += 4;
    } else {
      fileExtents = [];
      for (let e = 0; e < count; e++, x += 4) {
        const ext: IndexedFile['extents'][number] = {
          diskStart: small(partStart + extents[x]!),
          fileOffset: small(extents[x + 1]!),
          length: small(extents[x + 2]!),
        };
        if (extents[x + 3]! & TREE_WALK_EXTENT_SHARED) ext.shared = true;
        fileExtents.push(ext);
      }
    }
    const size = small(records[r + 3]!);
    let file: IndexedFile;
    if (kind === TREE_WALK_DIR) {
      file = {
        path,
        dev,
        ino,
        mount,
        kind: 'dir',
        entries: new Map(),
        extents: fileExtents,
        ctimeNs: ctimeNs[i]!,
        size,
      };
      dirs.push({ file, prefix: parent ? path + '/' : rootPrefix });
    } else {
      file = { path, dev, ino, mount, kind: 'file', extents: fileExtents, ctimeNs: ctimeNs[i]!, size };
    }
    parent?.file.entries!.set(name, ino);
    emit(file);
  }
}
