/**
 * The invalidation: the kernel module drops the cached pages of every changed file range (the
 * processes mapping them fault the new content in, or keep their pages under the `report` policy),
 * after a last check that the guest has nothing of its own in those pages.
 */
import { CommandError, errnoCode, messageOf, reasonOf } from '../errors.js';
import type { FileReport } from '@vmsubst/common/protocol/schema';
import { openChanged, swappedError, SwappedFileError } from './open-changed.js';
import type { InvalidateFileResult } from '../native/kmod.js';
import { goneKey } from './metadata.js';
import type { FilePlan } from './plan.js';
import type { InvalidateCounts, SubstituteDeps } from './substitute.js';

/**
 * Nothing lost: a changed range of a file on a read-write mount whose pages the guest wrote and has
 * not written back (dirty, or under writeback) would be overwritten by them later, or mix with the
 * new blocks. Asks the module (QUERY_PAGES: no write, no fsync) and refuses with GuestDirty, naming
 * each such file, before anything is written. The module checks again, atomically, at commit.
 */
export async function refuseGuestDirty(
  files: readonly FilePlan[],
  deps: Pick<SubstituteDeps, 'queryDirty'>,
): Promise<void> {
  const dirty: { path: string; 'pages-dirty': number; 'pages-writeback': number }[] = [];
  for (const f of files) {
    if (f.hit.file.mount.readOnly) continue;
    const fh = await openChanged(f.hit.file.path, 'file', { dev: f.hit.file.dev, ino: f.hit.file.ino }).catch(
      (e: unknown) => {
        throw new CommandError('InvalidateFailed', `cannot open ${f.hit.file.path}: ${reasonOf(e)}`);
      },
    );
    try {
      let d = 0;
      let w = 0;
      for (const r of f.hit.ranges) {
        const q = await deps.queryDirty(fh.fd, r.offset, r.length).catch((e: unknown) => {
          throw new CommandError(
            errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENODEV' ? 'KmodUnavailable' : 'InvalidateFailed',
            `cannot ask the module whether the guest wrote ${f.hit.file.path} (${messageOf(e)}); a read-write mount needs vmsubst.ko 0.3.0 or newer`,
          );
        });
        d += q.dirty;
        w += q.writeback;
      }
      if (d + w > 0) dirty.push({ path: f.hit.file.path, 'pages-dirty': d, 'pages-writeback': w });
    } finally {
      await fh.close();
    }
  }
  if (dirty.length === 0) return;
  throw new CommandError(
    'GuestDirty',
    `${dirty.map((x) => `${x.path} (${x['pages-dirty']} dirty, ${x['pages-writeback']} under writeback)`).join(', ')}: ` +
      'the guest wrote these files and has not written the pages back: the new blocks would be overwritten by them, or mixed with them. ' +
      'nothing was done; let the guest write back (sync), or stop the writer, and apply again',
    { files: dirty },
  );
}

/**
 * Drops the cached pages of every changed range of the files, adding the module's counts to their
 * reports. On a read-write mount a page the guest dirtied meanwhile refuses it (GuestDirty), unless forced.
 *
 * `gone` (metadata.ts, goneKey): the files whose name the new directory blocks give to another inode
 * or to none. Such a file's path reaches the new inode now (or nothing): its old inode is skipped.
 * The inode step evicted it when unused; a process still holding it keeps its cached pages (its
 * blocks may belong to another file now) and is reported in use, and by `stale`.
 */
export async function invalidateFiles(
  files: readonly FilePlan[],
  reports: FileReport[],
  deps: InvalidateDeps,
  force: boolean,
  gone: ReadonlySet<string> = new Set(),
): Promise<void> {
  if (deps.invalidateBatch)
    return invalidateBatched(files, reports, { ...deps, invalidateBatch: deps.invalidateBatch }, force, gone);
  for (const [i, f] of files.entries()) {
    const hit = f.hit;
    const report = reports[i]!;
    const left = gone.has(goneKey(hit.file.path, hit.file.ino));
    const fh = await openChanged(hit.file.path, 'file', { dev: hit.file.dev, ino: hit.file.ino }).catch(
      (e: unknown) => {
        if (left && (e instanceof SwappedFileError || errnoCode(e) === 'ENOENT')) return undefined;
        throw new CommandError('InvalidateFailed', `cannot open ${hit.file.path}: ${reasonOf(e)}`);
      },
    );
    if (!fh) continue;
    try {
      const { flags, stopIfKept } = flagsFor(f, deps, force);
      for (const r of hit.ranges) {
        const c = await deps.invalidateRange(fh.fd, BigInt(r.offset), BigInt(r.length), flags).catch((e: unknown) => {
          throw ioctlFailure(f, r, e, force);
        });
        addCounts(report, c);
        if (stopIfKept && c.pagesKept > 0n) throw keptFailure(f, r, c.pagesKept);
      }
    } finally {
      await fh.close();
    }
  }
}

type InvalidateDeps = Pick<
  SubstituteDeps,
  'invalidateRange' | 'invalidateBatch' | 'forceFlag' | 'unlessDirtyFlag' | 'dropOnlyFlag' | 'refaultFlag'
>;

/**
 * The module's flags for a file: on a read-write mount (a data-only substitution: the extents were
 * checked above) the module refuses a range the guest dirtied meanwhile, unless the host forced it,
 * and pages kept there fail the substitution; `report` only drops what nobody maps; changed code is
 * read ahead after the drop.
 */
function flagsFor(f: FilePlan, deps: InvalidateDeps, force: boolean): { flags: number; stopIfKept: boolean } {
  const rw = !f.hit.file.mount.readOnly;
  let flags = !rw ? 0 : force ? deps.forceFlag : deps.unlessDirtyFlag;
  if (f.planned.policy === 'report') flags |= deps.dropOnlyFlag;
  else if (f.planned.class !== 'data') flags |= deps.refaultFlag;
  return { flags, stopIfKept: rw && !force && f.planned.policy !== 'report' };
}

function addCounts(report: FileReport, c: InvalidateCounts): void {
  report['pages-cached'] += Number(c.pagesCached);
  report['pages-mapped'] += Number(c.pagesMapped);
  report['pages-dropped'] += Number(c.pagesDropped);
  report['pages-kept'] += Number(c.pagesKept);
}

function ioctlFailure(f: FilePlan, r: { offset: number; length: number }, e: unknown, force: boolean): CommandError {
  const path = f.hit.file.path;
  if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENODEV')
    return new CommandError('KmodUnavailable', 'the vmsubst kernel module is not loaded (/dev/vmsubst missing)');
  if (!f.hit.file.mount.readOnly && !force && errnoCode(e) === 'EBUSY') {
    return new CommandError(
      'GuestDirty',
      `${path}: the guest wrote pages of the changed range at ${r.offset}+${r.length} that are not on the disk yet; its cache was left as it was. let the guest write back (sync) and apply again`,
      { files: [{ path }] },
    );
  }
  return new CommandError('InvalidateFailed', `invalidating ${path} at ${r.offset}+${r.length}: ${messageOf(e)}`);
}

function keptFailure(f: FilePlan, r: { offset: number; length: number }, kept: bigint): CommandError {
  const path = f.hit.file.path;
  return new CommandError(
    'GuestDirty',
    `${path}: ${kept} pages of the changed range at ${r.offset}+${r.length} could not be dropped (written by the guest while it ran); the guest may see a mix. let it write back (sync) and apply again`,
    { files: [{ path, 'pages-kept': Number(kept) }] },
  );
}

/** Files per batch: the addon's bound. */
const BATCH_FILES = 4096;

/**
 * invalidateFiles through the module's batch call: a few thread-pool jobs for the whole substitution
 * instead of four per file. Same order, same refusals and errors as file by file: the batch stops
 * at the first file that fails, which is reported (or, for a name the patch gave away, skipped),
 * and the rest is sent again.
 */
async function invalidateBatched(
  files: readonly FilePlan[],
  reports: FileReport[],
  deps: InvalidateDeps & Required<Pick<InvalidateDeps, 'invalidateBatch'>>,
  force: boolean,
  gone: ReadonlySet<string>,
): Promise<void> {
  const items = files.map((f) => ({
    path: f.hit.file.path,
    dev: f.hit.file.dev,
    ino: f.hit.file.ino,
    ranges: f.hit.ranges.map((r): [bigint, bigint] => [BigInt(r.offset), BigInt(r.length)]),
    ...flagsFor(f, deps, force),
  }));
  let start = 0;
  while (start < items.length) {
    const batch: InvalidateFileResult[] = await deps.invalidateBatch(items.slice(start, start + BATCH_FILES));
    let next = start + batch.length;
    for (const [j, res] of batch.entries()) {
      if (res.state === 'pending') {
        next = start + j;
        break;
      }
      const f = files[start + j]!;
      const hit = f.hit;
      const left = gone.has(goneKey(hit.file.path, hit.file.ino));
      if (res.state === 'swapped') {
        if (left) continue;
        const e = swappedError(hit.file.path, 'file', hit.file.ino, res.nowMode ?? 0, res.nowIno ?? 0);
        throw new CommandError('InvalidateFailed', `cannot open ${hit.file.path}: ${reasonOf(e)}`);
      }
      if (res.state === 'open-failed') {
        if (left && errnoCode(res.error) === 'ENOENT') continue;
        throw new CommandError('InvalidateFailed', `cannot open ${hit.file.path}: ${reasonOf(res.error)}`);
      }
      addCounts(reports[start + j]!, res);
      const r = hit.ranges[res.range] ?? hit.ranges[0]!;
      if (res.state === 'ioctl-failed') throw ioctlFailure(f, r, res.error, force);
      if (items[start + j]!.stopIfKept && res.pagesKept > 0n) throw keptFailure(f, r, res.pagesKept);
    }
    start = next;
  }
}
