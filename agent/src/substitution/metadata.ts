/**
 * The metadata half of a substitution, bottom-up so that no stale cache can
 * refill another (kmod/README.md): block-device buffers of the changed
 * metadata blocks → dentries of changed directories → inodes → (file pages,
 * in substitute.ts) → block-device buffers again, for anything a concurrent
 * lookup pulled back in meanwhile.
 */
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { CHANGED_FILE_FLAGS, openChanged } from './open-changed.js';
import type { ByteRange, ClassifiedRange, MetadataReport } from '@vmsubst/common/protocol/schema';
import type { FileHit, IndexedFile } from '../pedigree/index.js';
import type { DiskLayout } from '../pedigree/mounts.js';
import { classify, inodesIn, parseDirBlock, readExt4Layout, type Ext4Layout } from '@vmsubst/common/pedigree/ext4';
import { CommandError, messageOf } from '../errors.js';
import type { DiskReader } from './verify.js';
import { overlayLowers, revalidateOverlayViews, type OverlayLower } from './overlay.js';
import { detachReused } from './inodes-reused.js';

/** Upper bound on a directory read back raw (its blocks); bigger ones fall back to dropping all children. */
const MAX_DIR_BYTES = 64 << 20;

export interface BdevResult {
  pagesDropped: number;
  /** Partition-relative byte ranges that stayed cached (pinned buffers). */
  kept: ByteRange[];
}
export interface InodeResult {
  evicted: number;
  notCached: number;
  inUse: { ino: number; reasons: string[] }[];
}
export interface DentryResult {
  dropped: number;
  busy: number;
  mountpoints: number;
}

/** The module's metadata operations, as the agent needs them. */
export interface MetadataOps {
  invalidateBdev(bdevFd: number, ranges: ByteRange[], force: boolean): Promise<BdevResult>;
  revalidateDentries(dirFd: number, names: string[], force: boolean): Promise<DentryResult>;
  /** `unhashBusy`: an inode that stays in use no longer answers to its number (inodes-reused.ts). */
  revalidateInodes(fsFd: number, inos: number[], force: boolean, unhashBusy?: boolean): Promise<InodeResult>;
  /**
   * Whether revalidateDentries takes a directory of an overlay mount and revalidateInodes takes
   * `unhashBusy` (the module's feature).
   */
  revalidatesReplaced?(): Promise<boolean> | boolean;
}

interface InUseInode {
  ino: number;
  path?: string;
  reasons: string[];
  'number-reused-by'?: string;
  dev: number;
}

/** One filesystem (partition) touched by the substitution. */
export interface TouchedFs {
  part: DiskLayout['parts'][number];
  devPath: string;
  mountPoint: string;
  readOnly: boolean;
  fsType: string;
  ext4?: Ext4Layout;
  /** Overlay mounts whose lower layer lies in this filesystem (they keep their own dentries of it). */
  overlays: string[];
  /** Those overlays' lowerdirs in this filesystem. */
  overlayLowers?: OverlayLower[];
  /** The agent revalidates the overlays' dentries too (overlay.ts): they need no restart. */
  overlaysFollow?: boolean;
  /** Disk-relative metadata ranges inside this partition. */
  ranges: ClassifiedRange[];
  dirs: FileHit[];
}

export interface MetadataPlan {
  filesystems: TouchedFs[];
  ranges: ClassifiedRange[];
}

const kindsOf = (fs: TouchedFs): string => [...new Set(fs.ranges.flatMap((r) => r.kinds))].join(', ');

/**
 * Why this filesystem's metadata change needs a restart (none: the agent applies it): a read-write
 * mount (unless the host forces it); XFS always (its metadata lives in its own buffer cache, which
 * nothing outside XFS can make re-read); an overlay over it (its dentries of the lower files are its
 * own) unless the module revalidates those too (`overlaysFollow`, overlay.ts).
 */
export function restartReasons(fs: TouchedFs, force: boolean): string[] {
  if (fs.ranges.length === 0 && fs.dirs.length === 0) return [];
  if (fs.fsType === 'xfs') {
    return [
      `${fs.mountPoint} is XFS and the substitution changes blocks no file's data covers (metadata: inodes, directories, ` +
        "allocation btrees, log): XFS keeps its metadata in its own buffer cache, not the block device's page cache, so the " +
        'guest cannot be made to re-read it; restart the guest (or unmount and mount it again) to use the new blocks',
    ];
  }
  const out: string[] = [];
  if (!fs.readOnly && !force)
    out.push(`${fs.mountPoint} is mounted read-write and its metadata changes (${kindsOf(fs)})`);
  for (const ov of fs.overlaysFollow ? [] : fs.overlays) {
    out.push(
      `the overlay at ${ov} has its lower layer in ${fs.mountPoint}, whose metadata changes (${kindsOf(fs)}): the overlay keeps its own dentries of the lower files, so a replaced or added file would not be seen through it`,
    );
  }
  return out;
}

/**
 * Cuts every range at the partitions' bounds, so that each piece lies wholly inside one partition
 * (or wholly outside all). A range is counted as a filesystem's metadata only when it lies inside
 * its partition: a bundle range that straddles a partition's start (the partition table's tail and
 * the superblock in one run of changed blocks) would otherwise belong to no filesystem, and a
 * metadata change under a read-write mount would pass as "outside any filesystem".
 */
export function splitAtPartitions<R extends ByteRange>(ranges: readonly R[], layout: DiskLayout): R[] {
  const cuts = [
    ...new Set(
      layout.parts
        .filter((p) => !(p.startBytes === 0 && p.name === layout.name))
        .flatMap((p) => [p.startBytes, p.startBytes + p.sizeBytes]),
    ),
  ].sort((a, b) => a - b);
  const out: R[] = [];
  for (const r of ranges) {
    let offset = r.offset;
    const end = r.offset + r.length;
    for (const c of cuts) {
      if (c <= offset) continue;
      if (c >= end) break;
      out.push({ ...r, offset, length: c - offset });
      offset = c;
    }
    out.push({ ...r, offset, length: end - offset });
  }
  return out;
}

/** Groups the metadata side of a substitution by filesystem, classifying every range. */
export async function planMetadata(
  disk: { path: string },
  layout: DiskLayout,
  mounts: {
    devNum: string;
    mountPoint: string;
    readOnly: boolean;
    root: string;
    fsType?: string;
    superOptions?: string[];
  }[],
  unmapped: ByteRange[],
  dirHits: FileHit[],
  read: DiskReader,
  devRoot: string,
): Promise<MetadataPlan> {
  const filesystems: TouchedFs[] = [];
  const all: ClassifiedRange[] = [];
  // A range is a filesystem's only when it lies inside its partition: cut at the bounds (a no-op
  // when the caller did so already).
  unmapped = splitAtPartitions(unmapped, layout);
  // Whole disk last: a partition claims its ranges first.
  const parts = [...layout.parts].sort(
    (a, b) =>
      Number(a.startBytes === 0 && a.name === layout.name) - Number(b.startBytes === 0 && b.name === layout.name),
  );
  const claimed = new Set<ByteRange>();
  for (const part of parts) {
    const mount =
      mounts.find((m) => m.devNum === part.devNum && m.root === '/') ?? mounts.find((m) => m.devNum === part.devNum);
    const inPart = (r: { offset: number; length: number }): boolean =>
      r.offset >= part.startBytes && r.offset + r.length <= part.startBytes + part.sizeBytes;
    const ranges = unmapped.filter((r) => !claimed.has(r) && inPart(r));
    ranges.forEach((r) => claimed.add(r));
    const dirs = dirHits.filter((d) => d.file.mount.devNum === part.devNum);
    if (!mount || (ranges.length === 0 && dirs.length === 0)) continue;
    const ext4 = await readExt4Layout((o, l) => read(disk.path, o, l), part.startBytes).catch(() => undefined);
    const classified = ranges.map((r) => ({
      ...r,
      kinds: ext4 ? classify(ext4, r) : (['other'] as ClassifiedRange['kinds']),
    }));
    for (const d of dirs) {
      for (const e of d.file.extents) classified.push({ offset: e.diskStart, length: e.length, kinds: ['directory'] });
    }
    all.push(...classified);
    const under = (p: string): boolean =>
      mounts.some(
        (x) =>
          x.devNum === part.devNum &&
          (p === x.mountPoint || p.startsWith(x.mountPoint === '/' ? '/' : x.mountPoint + '/')),
      );
    const lowers = overlayLowers(mounts, under);
    const overlays = [...new Set(lowers.map((l) => l.overlay))];
    filesystems.push({
      part,
      devPath: `${devRoot}/${part.name}`,
      mountPoint: mount.mountPoint,
      readOnly: mount.readOnly,
      fsType: mount.fsType ?? 'unknown',
      overlays,
      overlayLowers: lowers,
      ...(ext4 ? { ext4 } : {}),
      ranges: classified,
      dirs,
    });
  }
  // Unmapped ranges outside any mounted filesystem (free space of an unmounted partition, the
  // partition table): nothing in the guest caches them but the whole-disk buffer cache.
  for (const r of unmapped) if (!claimed.has(r)) all.push({ ...r, kinds: ['other'] });
  return { filesystems, ranges: all.sort((a, b) => a.offset - b.offset) };
}

/**
 * Runs the metadata steps around `dropFilePages`, which the caller supplies (step 4). It gets the
 * indexed files (`goneKey`) whose name the new directory blocks give to another inode, or to none.
 */
export async function applyMetadata(
  plan: MetadataPlan,
  ops: MetadataOps,
  read: DiskReader,
  diskPath: string,
  force: boolean,
  dropFilePages: (gone: ReadonlySet<string>) => Promise<void>,
): Promise<{
  report: Omit<MetadataReport, 'inodes'> & {
    inodes: Omit<MetadataReport['inodes'], 'in-use'> & { 'in-use': InUseInode[] };
  };
}> {
  const report = {
    ranges: plan.ranges,
    'bdev-pages-dropped': 0,
    pinned: [] as ClassifiedRange[],
    dentries: [] as MetadataReport['dentries'],
    inodes: { evicted: 0, 'not-cached': 0, 'in-use': [] as InUseInode[] },
  };
  const bdevFds = new Map<TouchedFs, Awaited<ReturnType<typeof open>>>();
  try {
    for (const fs of plan.filesystems) {
      bdevFds.set(
        fs,
        await open(fs.devPath, CHANGED_FILE_FLAGS).catch((e: unknown) => {
          throw new CommandError('InvalidateFailed', `cannot open ${fs.devPath}: ${messageOf(e)}`);
        }),
      );
    }
    const dropBdev = async (final: boolean): Promise<void> => {
      for (const fs of plan.filesystems) {
        const rel = fs.ranges.map((r) => ({ offset: r.offset - fs.part.startBytes, length: r.length }));
        if (rel.length === 0) continue;
        const r = await ops.invalidateBdev(bdevFds.get(fs)!.fd, rel, force && !fs.readOnly);
        report['bdev-pages-dropped'] += r.pagesDropped;
        if (final) {
          for (const k of r.kept) {
            const offset = k.offset + fs.part.startBytes;
            report.pinned.push({
              offset,
              length: k.length,
              kinds: fs.ext4 ? classify(fs.ext4, { offset, length: k.length }) : ['other'],
            });
          }
        }
      }
    };

    // 1. Buffers first: everything below reads metadata through them.
    await dropBdev(false);

    // 2. Dentries of changed directories, by name, from the directory's new blocks on disk.
    const staleInodes = new Map<string, { fs: TouchedFs; ino: number; path?: string }>();
    const newOwners = new Map<string, string>(); // inode number → the path that names it now
    const gone = new Set<string>(); // goneKey of the indexed files whose name left them
    for (const fs of plan.filesystems) {
      for (const hit of fs.dirs) {
        const dir = hit.file;
        const names = await changedNames(dir, read, diskPath);
        for (const n of names.replaced) {
          staleInodes.set(`${fs.part.devNum}:${n.ino}`, { fs, ino: n.ino, path: `${dir.path}/${n.name}` });
          gone.add(goneKey(`${dir.path}/${n.name}`, n.ino));
        }
        for (const n of names.added) newOwners.set(`${fs.part.devNum}:${n.ino}`, `${dir.path}/${n.name}`);
        staleInodes.set(`${fs.part.devNum}:${dir.ino}`, { fs, ino: dir.ino, path: dir.path });
        const fh = await openChanged(dir.path, 'dir').catch(() => undefined);
        if (!fh) continue; // the directory itself went away: its parent's entry covers it
        try {
          // The overlays' dentries first: each holds the lower one, which would stay busy.
          report.dentries.push(...(await revalidateOverlayViews(fs, dir.path, names.all, ops)));
          const r = await ops.revalidateDentries(fh.fd, names.all, force && !fs.readOnly);
          report.dentries.push({
            dir: dir.path,
            names: names.all,
            dropped: r.dropped,
            busy: r.busy,
            mountpoints: r.mountpoints,
          });
        } finally {
          await fh.close();
        }
      }
    }

    // 3. Inodes: those in changed inode-table blocks, plus the ones names no longer point to.
    for (const fs of plan.filesystems) {
      if (fs.ext4) {
        for (const r of fs.ranges) {
          if (!r.kinds.includes('inode-table')) continue;
          for (const ino of inodesIn(fs.ext4, r)) {
            const key = `${fs.part.devNum}:${ino}`;
            if (!staleInodes.has(key)) staleInodes.set(key, { fs, ino });
          }
        }
      }
      const mine = [...staleInodes.values()].filter((s) => s.fs === fs);
      if (mine.length === 0) continue;
      const root = await open(fs.mountPoint, CHANGED_FILE_FLAGS | constants.O_DIRECTORY);
      try {
        const r = await ops.revalidateInodes(
          root.fd,
          mine.map((s) => s.ino),
          force && !fs.readOnly,
        );
        report.inodes.evicted += r.evicted;
        report.inodes['not-cached'] += r.notCached;
        const st = await root.stat();
        await detachReused(fs, root.fd, r.inUse, mine, newOwners, ops, force);
        for (const u of r.inUse) {
          const path = mine.find((s) => s.ino === u.ino)?.path;
          const reusedBy = newOwners.get(`${fs.part.devNum}:${u.ino}`);
          const reused = reusedBy !== undefined && reusedBy !== path ? { 'number-reused-by': reusedBy } : {};
          report.inodes['in-use'].push({
            ino: u.ino,
            ...(path ? { path } : {}),
            reasons: u.reasons,
            ...reused,
            dev: st.dev,
          });
        }
      } finally {
        await root.close();
      }
    }

    // 4. File pages.
    await dropFilePages(gone);

    // 5. Buffers again: a lookup racing with steps 2-3 may have read a block back in.
    await dropBdev(true);
  } finally {
    for (const fh of bdevFds.values()) await fh.close();
  }
  return { report };
}

/** The key of an indexed file (its path and inode) in the set `dropFilePages` gets. */
export const goneKey = (path: string, ino: number): string => `${ino}:${path}`;

/**
 * Names in a directory whose entry changed: read the directory's blocks raw
 * from the disk (the new content) and compare with what the guest saw.
 */
async function changedNames(
  dir: IndexedFile,
  read: DiskReader,
  diskPath: string,
): Promise<{ all: string[]; replaced: { name: string; ino: number }[]; added: { name: string; ino: number }[] }> {
  const before = dir.entries ?? new Map<string, number>();
  const after = new Map<string, number>();
  let bytes = 0;
  for (const e of dir.extents) {
    bytes += e.length;
    if (bytes > MAX_DIR_BYTES) return { all: [], replaced: [], added: [] }; // fall back: drop every unused child
    parseDirBlock(await read(diskPath, e.diskStart, e.length), after);
  }
  const all = new Set<string>();
  const replaced: { name: string; ino: number }[] = [];
  for (const [name, ino] of before) {
    if (after.get(name) !== ino) {
      all.add(name);
      replaced.push({ name, ino });
    }
  }
  const added: { name: string; ino: number }[] = [];
  for (const [name, ino] of after) {
    if (before.get(name) === ino) continue;
    all.add(name);
    added.push({ name, ino });
  }
  return { all: [...all].sort(), replaced, added };
}

export type AppliedMetadata = Awaited<ReturnType<typeof applyMetadata>>['report'];

/** What a dry run reports: the classified ranges, nothing done. */
export function plannedOnly(plan: MetadataPlan): AppliedMetadata {
  return {
    ranges: plan.ranges,
    'bdev-pages-dropped': 0,
    pinned: [],
    dentries: [],
    inodes: { evicted: 0, 'not-cached': 0, 'in-use': [] },
  };
}
