/**
 * The persistent pedigree index: each mounted filesystem is walked once (on
 * first use) and then kept current by chokidar — a written, added, renamed or
 * removed file is re-mapped alone, with its directory's entry map.
 *
 * Correctness over freshness: before a lookup, `fresh()` re-validates every
 * indexed path against the inode, ctime and size it was indexed with (one
 * lstat each, in sync batches) and re-maps what changed, so a watcher event
 * still in flight cannot leave a substitution acting on a stale view. A
 * filesystem whose mount changed (unmounted, remounted elsewhere, another
 * device) is rebuilt from scratch, and `forget()` drops a filesystem after a
 * substitution rewrote its metadata.
 */
import { lstatSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import type { ByteRange } from '@vmsubst/common/protocol/schema';
import { PedigreeIndex, mergeRanges, mountsOfDisk, primaryMount, type FileHit } from './index.js';
import { buildExt4Index } from './ext4-index.js';
import { devicePath, readMounts, type DiskLayout, type Mount } from './mounts.js';
import { mapPath, walkMount, WALK_BATCH, type Fiemap, type IndexedFile } from './walk.js';

/** Reads [offset, offset + length) of a file or block device, bypassing the page cache. */
export type DirectReader = (path: string, offset: number, length: number) => Promise<Buffer>;

export interface BuildOptions {
  /** Watch the tree for changes (default: only a read-write mount). */
  watch?: boolean;
  /**
   * Reads the filesystem's device: with it, a read-only ext2/3/4 mount is
   * indexed from its on-disk metadata (ext4-index.ts), not walked.
   */
  readDirect?: DirectReader;
  /** The filesystem's device node (default: found in sysfs from the mount's device number). */
  device?: string;
  /** The system's mounts (default: /proc/self/mountinfo), for the mounts inside this one. */
  mounts?: Mount[];
  /** Told how each index was built (for the agent's log). */
  onBuilt?: (mount: Mount, how: BuiltWith & { files: number; ms: number }) => void;
}

/** Which way an index was built, and why not from the disk when it was walked. */
export interface BuiltWith {
  builder: 'ext4-raw' | 'walk';
  /** Why the raw build was not used (unset when it was, or was never tried: a read-write mount). */
  fallback?: string;
}

const EXT_TYPES = new Set(['ext2', 'ext3', 'ext4']);

const yieldNow = (): Promise<void> => new Promise((r) => setImmediate(r));

/** One filesystem's live index. */
export class FsIndex {
  readonly index = new PedigreeIndex([]);
  readonly byPath = new Map<string, IndexedFile>();
  #watcher: FSWatcher | undefined;
  #dev = 0;
  /** Resolves when chokidar has finished its initial scan and reports every change. */
  watching: Promise<void> = Promise.resolve();
  /** Updates applied from watcher events (for tests and statistics). */
  updates = 0;
  /** How the index was built. */
  builtWith: BuiltWith = { builder: 'walk' };

  private constructor(
    readonly mount: Mount,
    readonly partStart: number,
    private readonly fiemap: Fiemap,
  ) {}

  static async build(mount: Mount, partStart: number, fiemap: Fiemap, opts: BuildOptions = {}): Promise<FsIndex> {
    const fs = new FsIndex(mount, partStart, fiemap);
    const t0 = performance.now();
    fs.#dev = lstatSync(mount.mountPoint).dev;
    let files: IndexedFile[] = [];
    if (mount.readOnly && EXT_TYPES.has(mount.fsType) && opts.readDirect) {
      const readDirect = opts.readDirect;
      try {
        const device = opts.device ?? (await devicePath(mount.devNum));
        if (!device) throw new Error(`no device node for ${mount.devNum}`);
        await buildExt4Index(
          (o, l) => readDirect(device, o, l),
          mount,
          partStart,
          opts.mounts ?? (await readMounts()),
          (f) => files.push(f),
        );
        fs.builtWith = { builder: 'ext4-raw' };
      } catch (err) {
        files = [];
        fs.builtWith = { builder: 'walk', fallback: err instanceof Error ? err.message : String(err) };
      }
    }
    if (fs.builtWith.builder === 'walk') await walkMount(mount, partStart, fiemap, (f) => files.push(f));
    for (const f of files) fs.byPath.set(f.path, f);
    fs.index.replaceAll(PedigreeIndex.piecesOf(files));
    opts.onBuilt?.(mount, { ...fs.builtWith, files: files.length, ms: Math.round(performance.now() - t0) });
    // Watches (inotify) hold references on the inodes they watch, which would keep a
    // substitution from evicting them. A read-only filesystem cannot change under the guest
    // (only a substitution changes it, and fresh() re-validates before every lookup), so it is
    // not watched.
    // The watcher's own scan runs in the background: nothing waits for it, fresh() covers the gap.
    if (opts.watch ?? !mount.readOnly) fs.watching = fs.#watch().catch(() => undefined);
    return fs;
  }

  async #watch(): Promise<void> {
    const w = watch(this.mount.mountPoint, {
      ignoreInitial: true,
      followSymlinks: false,
      persistent: false,
      alwaysStat: false,
    });
    this.#watcher = w;
    const remap = (path: string): void => {
      this.remap(path);
    };
    w.on('add', remap).on('change', remap).on('addDir', remap).on('unlink', remap).on('unlinkDir', remap);
    w.on('error', () => undefined); // fresh() re-validates before every lookup
    await new Promise<void>((resolve) => w.once('ready', () => resolve()));
  }

  /** Re-maps one path (gone → removed) and its directory's entry for it. */
  remap(path: string): void {
    this.updates++;
    const old = this.byPath.get(path);
    const next = mapPath(path, this.mount, this.#dev, this.partStart, this.fiemap);
    if (old && next && old.kind === 'dir' && next.kind === 'dir' && old.ino === next.ino) {
      // A directory's children are re-mapped by their own events; keep the object metadata.ts holds.
      old.entries = next.entries;
      old.ctimeNs = next.ctimeNs;
      old.size = next.size;
      this.index.replace(old, undefined);
      old.extents = next.extents;
      this.index.replace(undefined, old);
    } else {
      this.index.replace(old, next);
      if (next) this.byPath.set(path, next);
      else this.byPath.delete(path);
      if (old?.kind === 'dir' && !next) {
        // A removed or renamed-away directory: everything under it goes (adds come as their own events).
        const prefix = path + '/';
        for (const [p, f] of this.byPath) {
          if (p.startsWith(prefix)) {
            this.index.replace(f, undefined);
            this.byPath.delete(p);
          }
        }
      }
    }
    const parent = path === this.mount.mountPoint ? undefined : this.byPath.get(dirname(path));
    if (parent?.kind === 'dir') {
      if (next) parent.entries?.set(basename(path), next.ino);
      else parent.entries?.delete(basename(path));
      const p = mapPath(parent.path, this.mount, this.#dev, this.partStart, this.fiemap, false);
      if (p) {
        this.index.replace(parent, undefined);
        // ctime and size stay as they were: only this entry was patched, so fresh() re-reads the whole directory.
        parent.extents = p.extents;
        this.index.replace(undefined, parent);
      }
    }
  }

  /**
   * Re-validates every indexed path (inode, ctime, size) and every directory's
   * entries; re-maps what changed. Returns how many paths were re-mapped.
   */
  async fresh(): Promise<number> {
    let changed = 0;
    let n = 0;
    const dirs: IndexedFile[] = [];
    for (const f of [...this.byPath.values()]) {
      const st = lstatSync(f.path, { bigint: true, throwIfNoEntry: false });
      if (!st || Number(st.ino) !== f.ino || st.ctimeNs !== f.ctimeNs || Number(st.size) !== f.size) {
        this.remap(f.path);
        changed++;
      }
      if (f.kind === 'dir' && this.byPath.get(f.path) === f) dirs.push(f);
      if (++n % WALK_BATCH === 0) await yieldNow();
    }
    // Names added since indexing (a changed directory has a new ctime and was re-read above).
    for (const d of dirs) {
      for (const [name] of d.entries ?? []) {
        const p = d.path === '/' ? `/${name}` : `${d.path}/${name}`;
        if (this.byPath.has(p)) continue;
        const st = lstatSync(p, { throwIfNoEntry: false });
        if (!st || st.dev !== this.#dev || !(st.isFile() || st.isDirectory())) continue;
        if (st.isDirectory()) {
          await walkMount({ ...this.mount, mountPoint: p }, this.partStart, this.fiemap, (f) => {
            this.index.replace(this.byPath.get(f.path), f);
            this.byPath.set(f.path, f);
          });
        } else {
          this.remap(p);
        }
        changed++;
      }
    }
    return changed;
  }

  async close(): Promise<void> {
    await this.watching;
    await this.#watcher?.close();
    this.#watcher = undefined;
  }
}

/** The agent's live indexes, one per mounted block-backed filesystem, built on first use. */
export class PedigreeService {
  readonly #fs = new Map<string, { key: string; fs: Promise<FsIndex> }>();

  constructor(
    private readonly fiemap: Fiemap,
    private readonly opts: BuildOptions = {},
  ) {}

  /**
   * The live index of `mount` (partition starting at `partStart` of its disk). `afterWrite`: the
   * host may already have written the disk (a one-shot substitute), so an index read raw from it
   * may describe blocks the guest does not see yet.
   *
   * On a read-only mount nothing changes the filesystem under the guest but a substitution this
   * agent performs (after a metadata one it forgets the index), so an index built before the write
   * is used as it is: no pass over its paths. A read-write mount is re-checked path by path
   * (fresh()); a remount between the two is a new index. A raw ext4 index built after the write is
   * brought to the guest's view by that pass too.
   */
  async get(mount: Mount, partStart: number, afterWrite = false): Promise<FsIndex> {
    const key = `${mount.mountPoint}\0${mount.root}\0${partStart}\0${mount.readOnly ? 'ro' : 'rw'}`;
    const have = this.#fs.get(mount.devNum);
    if (have && have.key === key) {
      const fs = await have.fs;
      if (!mount.readOnly) await fs.fresh();
      return fs;
    }
    if (have) await (await have.fs.catch(() => undefined))?.close();
    const fs = FsIndex.build(mount, partStart, this.fiemap, this.opts).then(async (f) => {
      if (f.builtWith.builder === 'ext4-raw' && afterWrite) await f.fresh();
      return f;
    });
    this.#fs.set(mount.devNum, { key, fs });
    fs.catch(() => this.#fs.delete(mount.devNum));
    return fs;
  }

  /**
   * Builds the index of the filesystem mounted at `mountPoint` now, as a
   * substitution of its disk would (same mount, same partition offset), so
   * that the first substitution finds it ready, or joins the build under way.
   */
  async warm(mountPoint: string, sysRoot = '/sys', procRoot = '/proc'): Promise<FsIndex> {
    const mounts = await readMounts(procRoot);
    const top = mounts.filter((m) => m.mountPoint === mountPoint).at(-1);
    if (!top) throw new Error(`${mountPoint} is not a mount point`);
    const mount = primaryMount(mounts, top.devNum)!;
    // A partition's offset on its disk, as the disk's layout gives it (readDiskLayout); a whole disk starts at 0.
    const start = await readFile(`${sysRoot}/dev/block/${top.devNum}/start`, 'utf8').catch(() => undefined);
    return this.get(mount, start === undefined ? 0 : Number(start.trim()) * 512);
  }

  /** Drops a filesystem's index (its metadata was substituted): the next use rebuilds it. */
  async forget(devNum: string): Promise<void> {
    const have = this.#fs.get(devNum);
    this.#fs.delete(devNum);
    await (await have?.fs.catch(() => undefined))?.close();
  }

  /** Maps changed disk ranges to files through the live indexes of `disk`'s filesystems. */
  async lookup(
    disk: DiskLayout,
    mounts: Mount[],
    changed: ByteRange[],
    afterWrite = false,
  ): Promise<{ files: FileHit[]; unmapped: ByteRange[] }> {
    const parts = mountsOfDisk(disk, mounts);
    const files: FileHit[] = [];
    let rest = changed.map((r) => ({ ...r }));
    for (const p of parts) {
      const fs = await this.get(p.mount, p.startBytes, afterWrite);
      const inside: ByteRange[] = [];
      const outside: ByteRange[] = [];
      const pEnd = p.startBytes + p.sizeBytes;
      for (const r of rest) {
        const s = Math.max(r.offset, p.startBytes);
        const e = Math.min(r.offset + r.length, pEnd);
        if (s >= e) {
          outside.push(r);
          continue;
        }
        inside.push({ offset: s, length: e - s });
        if (r.offset < s) outside.push({ offset: r.offset, length: s - r.offset });
        if (e < r.offset + r.length) outside.push({ offset: e, length: r.offset + r.length - e });
      }
      const res = fs.index.lookup(inside);
      files.push(...res.files);
      rest = [...outside, ...res.unmapped];
    }
    files.sort((a, b) => a.file.path.localeCompare(b.file.path));
    return { files, unmapped: mergeRanges(rest) };
  }

  async close(): Promise<void> {
    const all = [...this.#fs.values()];
    this.#fs.clear();
    for (const { fs } of all) await (await fs.catch(() => undefined))?.close();
  }
}
