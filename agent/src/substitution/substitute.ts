/**
 * `substitute`, and the two phases `prepare` / `commit`: the host replaces
 * blocks of one of our disks. Plan (which files, which policy for the
 * processes mapping them), pin where the policy says so while the old blocks
 * are still on disk, then — once the host has written — verify that the new
 * blocks are visible and make the kernel forget what it cached, so running
 * processes fault the new content in and new execs read it.
 */
import { CommandError, messageOf } from '../errors.js';
import type {
  ArgsOf,
  ByteRange,
  FileReport,
  Mapper,
  MetadataReport,
  PinOutcome,
  Policies,
  RestartOutcome,
  ReturnOf,
} from '@vmsubst/common/protocol/schema';
import { PedigreeIndex, mountsOfDisk, type Fiemap } from '../pedigree/index.js';
import type { PedigreeService } from '../pedigree/live.js';
import { readDiskLayout, readMounts, type DiskLayout, type Mount } from '../pedigree/mounts.js';
import { findMappers, keyOf, type MapperInfo } from '../proc/mappers.js';
import { procUsers, type FileUsers } from '../proc/users.js';
import type { InvalidateFile, InvalidateFileResult } from '../native/kmod.js';
import { resolveDisk, type ResolvedDisk } from './resolve.js';
import { checkRanges, verifyRanges, type DiskReader } from './verify.js';
import { openChanged } from './open-changed.js';
import {
  applyMetadata,
  planMetadata,
  plannedOnly,
  restartReasons,
  splitAtPartitions,
  type AppliedMetadata,
  type MetadataOps,
  type MetadataPlan,
} from './metadata.js';
import { decideFilesystems, describeRefusals, refusalsFor } from '../pedigree/filesystems.js';
import { buildPlan, type FilePlan, type PlanResult } from './plan.js';
import type { PinReport } from './pin.js';
import { ReadbackCheck, describeStale } from './readback.js';
import { addReaders, refuseScriptReaders } from './readers.js';
import { predictReplaced } from './stale.js';
import { invalidateFiles, refuseGuestDirty } from './invalidate.js';
import { followOverlays } from './overlay.js';
import { restartsForReplaced } from './replaced.js';

export interface InvalidateCounts {
  pagesCached: bigint;
  pagesMapped: bigint;
  pagesDropped: bigint;
  pagesKept: bigint;
}

/** What the substitution needs from the system; the real parts are the defaults in agent.ts. */
export interface SubstituteDeps {
  readDirect: DiskReader;
  metadata: MetadataOps;
  fiemap: Fiemap;
  /** The agent's live index; without it the disk's filesystems are walked for this substitution. */
  pedigree?: PedigreeService;
  invalidateRange(fd: number, offset: bigint, length: bigint, flags: number): Promise<InvalidateCounts>;
  /**
   * The same for many files in one call (open by path and check the inode, each range, close; the
   * module's KmodDevice.invalidateFiles). Without it, file by file through invalidateRange.
   */
  invalidateBatch?(files: readonly InvalidateFile[]): Promise<InvalidateFileResult[]>;
  /** INVALIDATE_F_FORCE: the host forced a substitution under a read-write mount (dirty pages are kept, not refused). */
  forceFlag: number;
  /**
   * INVALIDATE_F_UNLESS_DIRTY: a data-only substitution under a read-write mount, refused by the
   * module (EBUSY, nothing changed) when a page of the range is dirty or under writeback.
   */
  unlessDirtyFlag: number;
  /** Pages of a file range the guest wrote and has not written back (the module's QUERY_PAGES; changes nothing). */
  queryDirty(fd: number, offset: number, length: number): Promise<{ dirty: number; writeback: number }>;
  /** INVALIDATE_F_DROP alone: pages nobody maps are dropped, mapped pages stay (the `report` policy). */
  dropOnlyFlag: number;
  /** INVALIDATE_F_REFAULT_ASYNC: the new content of a changed executable is read ahead after the drop. */
  refaultFlag: number;
  /** Gives the processes mapping `path` private copies of their pages (the `pin` policy). */
  pin(path: string): Promise<PinReport>;
  /** Restarts a systemd unit (the `restart` policy). */
  restartUnit(unit: string): Promise<RestartOutcome>;
  /** Policies from the agent's configuration; a notification's own come first. */
  policies?: Policies;
  /** Who maps and who holds open the changed files: the module when present, else a /proc scan of procRoot. */
  users?: FileUsers;
  procRoot: string;
  sysRoot: string;
  devRoot: string;
  now(): number;
}

type Args = ArgsOf<'substitute'>;

interface Mapped {
  disk: ResolvedDisk;
  layout: DiskLayout;
  mounts: Mount[];
  metadata: MetadataPlan;
  planned: PlanResult;
  unmapped: ByteRange[];
  mapMs: number;
  classifyMs: number;
  /** When mapping started (the disk probe before it is verification time). */
  mapStart: number;
}

/**
 * Finds the files and metadata behind the changed ranges and decides per file what happens (no
 * verification). With `refuse`, a range on a filesystem vmsubst cannot substitute under (btrfs,
 * device-mapper, ..., reflinked blocks) fails the command as `Unsupported` before anything is done;
 * a dry run lists it in the plan instead.
 */
async function mapAndPlan(
  args: Omit<Args, 'dry-run'>,
  deps: SubstituteDeps,
  beforeWrite: boolean,
  refuse = true,
): Promise<Mapped> {
  checkRanges(args.ranges);
  const t0 = deps.now();
  const disk = await resolveDisk(args.disk, args.ranges, deps.readDirect, deps.sysRoot, deps.devRoot, beforeWrite);
  const layout = await readDiskLayout(disk.name, deps.sysRoot);
  const allMounts = await readMounts(deps.procRoot);
  // Cut at partition bounds first: each piece then belongs to one filesystem (metadata.ts).
  const changed = splitAtPartitions(
    args.ranges.map(({ offset, length }) => ({ offset, length })),
    layout,
  );
  const decisions = await decideFilesystems(layout, allMounts, {
    sysRoot: deps.sysRoot,
    read: (o, l) => deps.readDirect(disk.path, o, l),
  });
  const refused = refusalsFor(decisions, changed);
  if (refuse && refused.length > 0) {
    throw new CommandError('Unsupported', describeRefusals(refused), {
      filesystems: refused.map((d) => ({ device: d.part.name, mount: d.mount, type: d.type, reason: d.reason })),
    });
  }
  // A refused filesystem is neither walked nor classified: its ranges are `unsupported` in the plan.
  const refusedDevs = new Set(decisions.filter((d) => d.handling === 'refused').map((d) => d.part.devNum));
  const mounts = allMounts.filter((mt) => !refusedDevs.has(mt.devNum));
  const found = deps.pedigree
    ? await deps.pedigree.lookup(layout, mounts, changed, !beforeWrite)
    : (await PedigreeIndex.build(layout, mounts, deps.fiemap)).lookup(changed);
  const { files } = found;
  // The lookup merges adjacent unmapped pieces (the gap before a partition and its superblock
  // become one range again): cut them once more, or planMetadata and the plan would see a
  // range that lies in no partition and count the superblock as "outside any filesystem".
  const unmapped = splitAtPartitions(found.unmapped, layout);
  const t1 = deps.now();
  const dirHits = files.filter((f) => f.file.kind === 'dir');
  const metadata = await planMetadata(disk, layout, mounts, unmapped, dirHits, deps.readDirect, deps.devRoot);
  await followOverlays(metadata.filesystems, deps.metadata);
  const planned = await buildPlan({
    files,
    unmapped,
    metadata,
    changed,
    hints: args.hints ?? [],
    policies: { notification: args.policies, config: deps.policies },
    diskPath: disk.path,
    read: deps.readDirect,
    procRoot: deps.procRoot,
    users: deps.users ?? procUsers(deps.procRoot),
  });
  // Reflinked (shared) blocks: writing them changes every file that shares them.
  const shared = files.flatMap((f) =>
    f.file.extents.some(
      (e) => e.shared && f.ranges.some((r) => r.offset < e.fileOffset + e.length && r.offset + r.length > e.fileOffset),
    )
      ? [
          `${f.file.path}: its changed blocks are shared with other files or snapshots (reflink, FIEMAP_EXTENT_SHARED); writing them would change every file that shares them`,
        ]
      : [],
  );
  if (refuse && shared.length > 0)
    throw new CommandError(
      'Unsupported',
      `${shared.join('; ')}. nothing was done; unshare the file (copy it) in the golden image`,
    );
  const unsupported = [
    ...refused.map((d) => `${d.part.name}${d.mount ? ` (${d.mount})` : ''}: ${d.reason}`),
    ...shared,
  ];
  const inRefused = (off: number): (typeof refused)[number] | undefined =>
    refused.find((d) => off >= d.part.startBytes && off < d.part.startBytes + d.part.sizeBytes);
  planned.plan.blocks = planned.plan.blocks.map((b) => {
    const d = b.class === 'outside-filesystems' || b.class === 'unknown' ? inRefused(b.offset) : undefined;
    return d
      ? { offset: b.offset, length: b.length, class: 'unsupported' as const, ...(d.mount ? { mount: d.mount } : {}) }
      : b;
  });
  planned.plan.filesystems = decisions.map((d) => ({
    device: d.part.name,
    ...(d.mount ? { mount: d.mount } : {}),
    type: d.type,
    handling: d.handling,
    ...(d.reason ? { reason: d.reason } : {}),
  }));
  planned.plan.unsupported = unsupported;
  await addReaders(
    planned,
    deps.procRoot,
    args.force ?? false,
    beforeWrite ? 'before-write' : 'after-write',
    deps.users ?? procUsers(deps.procRoot),
  );
  if (metadata.filesystems.length > 0 && args.hints?.length) {
    const stale = await predictReplaced(
      metadata.filesystems.map((f) => f.mountPoint),
      args.hints,
      files,
      deps.procRoot,
    );
    if (stale.length > 0) planned.plan.stale = stale;
    const units = await restartsForReplaced(
      stale,
      args.hints,
      metadata.filesystems.map((f) => f.mountPoint),
      { notification: args.policies, config: deps.policies },
      deps.procRoot,
    );
    if (units.length > 0) planned.plan.units = [...new Set([...planned.plan.units, ...units])].sort();
  }
  return {
    disk,
    layout,
    mounts,
    metadata,
    planned,
    unmapped,
    mapMs: t1 - t0,
    classifyMs: deps.now() - t1,
    mapStart: t0,
  };
}

function refuseRestartRequired(m: Mapped, force: boolean): void {
  for (const fs of m.metadata.filesystems) {
    const reasons = restartReasons(fs, force);
    if (reasons.length === 0) continue;
    const rw = !fs.readOnly && fs.fsType !== 'xfs' && fs.overlays.length === 0;
    throw new CommandError(
      'RestartRequired',
      rw
        ? `${fs.mountPoint} is mounted read-write and the substitution changes its metadata ` +
            `(${fs.ranges
              .flatMap((r) => r.kinds)
              .filter((k, i, a) => a.indexOf(k) === i)
              .join(', ')}); ` +
            'the guest must be restarted (or remounted read-only), or the host must force it'
        : `${reasons.join('; ')}. nothing was done`,
      { mount: fs.mountPoint, plan: m.planned.plan },
    );
  }
}

function emptyReport(f: FilePlan, mappers: Mapper[]): FileReport {
  return {
    path: f.hit.file.path,
    ino: f.hit.file.ino,
    ranges: f.hit.ranges,
    'pages-cached': 0,
    'pages-mapped': 0,
    'pages-dropped': 0,
    'pages-kept': 0,
    mappers,
  };
}

/** Before anything is done no inode is found in use. */
function withoutInUse(planned: AppliedMetadata): MetadataReport {
  return { ...planned, inodes: { ...planned.inodes, 'in-use': [] } };
}

const plainMappers = (ms: MapperInfo[] | undefined): Mapper[] => (ms ?? []).map(({ pid, comm }) => ({ pid, comm }));

/** A dry run: the plan, before the host writes; nothing is verified or changed. */
export async function planSubstitution(args: Args, deps: SubstituteDeps): Promise<ReturnOf<'substitute'>> {
  const t0 = deps.now();
  const m = await mapAndPlan(args, deps, true, false);
  return {
    id: args.id,
    device: m.disk.path,
    'dry-run': true,
    'verified-bytes': 0,
    files: m.planned.files.map((f) => emptyReport(f, plainMappers(m.planned.mappers.get(keyOf(f.hit.file))))),
    unmapped: m.unmapped,
    ...(m.metadata.ranges.length > 0 ? { metadata: withoutInUse(plannedOnly(m.metadata)) } : {}),
    plan: m.planned.plan,
    'timings-ms': { verify: 0, map: m.mapMs, classify: m.classifyMs, invalidate: m.classifyMs, total: deps.now() - t0 },
  };
}

/** Phase one: plan, and pin the processes whose policy is `pin` while the disk still holds the old blocks. */
export async function prepareSubstitution(
  args: ArgsOf<'prepare'>,
  deps: SubstituteDeps,
): Promise<Omit<ReturnOf<'prepare'>, 'token'>> {
  const t0 = deps.now();
  const m = await mapAndPlan(args, deps, true);
  refuseRestartRequired(m, args.force ?? false);
  refuseScriptReaders(m.planned);
  if (!args.force) await refuseGuestDirty(m.planned.files, deps);
  const t1 = deps.now();
  const pinned = await pinPlanned(m.planned.files, deps, false);
  return {
    id: args.id,
    device: m.disk.path,
    plan: m.planned.plan,
    pinned,
    'timings-ms': { map: m.mapMs, classify: m.classifyMs, pin: deps.now() - t1, total: deps.now() - t0 },
  };
}

async function pinPlanned(files: FilePlan[], deps: SubstituteDeps, late: boolean): Promise<PinOutcome[]> {
  const out: PinOutcome[] = [];
  for (const f of files) {
    if (f.planned.policy !== 'pin' || f.planned.mappers.length === 0) continue;
    const path = f.hit.file.path;
    try {
      const r = await deps.pin(path);
      for (const p of r.processes) {
        const detail = [
          p['bytes-failed'] > 0 ? `${p['bytes-failed']} bytes could not be copied` : '',
          late
            ? 'pinned after the host wrote: pages that were not cached come from the new blocks (use prepare/commit)'
            : '',
        ]
          .filter(Boolean)
          .join('; ');
        out.push({
          pid: p.pid,
          comm: p.comm,
          path,
          'bytes-copied': p['bytes-copied'],
          status: p.exited ? 'exited' : 'pinned',
          ...(detail ? { detail } : {}),
        });
      }
      for (const s of r['shared-unpinned'])
        out.push({
          pid: s.pid,
          comm: s.comm,
          path,
          'bytes-copied': 0,
          status: 'failed',
          detail: 'maps the file shared: cannot be pinned',
        });
    } catch (e) {
      for (const p of f.planned.mappers)
        out.push({ pid: p.pid, comm: p.comm, path, 'bytes-copied': 0, status: 'failed', detail: messageOf(e) });
    }
  }
  return out;
}

/**
 * The substitution proper, after the host wrote: verify → map → classify → act through the module in
 * the bottom-up order → restart units → report. `pinned` comes from prepare; without it (one-shot
 * substitute) the `pin` policy is applied here, late.
 */
export async function substitute(
  args: Omit<Args, 'dry-run'>,
  deps: SubstituteDeps,
  pinned?: PinOutcome[],
): Promise<ReturnOf<'substitute'>> {
  const t0 = deps.now();
  // Mapped first (nothing is changed by it; the ranges are checked before anything is read), so the
  // verification's O_DIRECT reads can hash each file piece for the read-back check as they go:
  // nothing is read twice, nothing kept but the hashes.
  const m = await mapAndPlan(args, deps, false);
  const tv = deps.now();
  const readback = ReadbackCheck.of(m.planned.files.map((f) => ({ hit: f.hit, policy: f.planned.policy })));
  const verifiedBytes = await verifyRanges(deps.readDirect, m.disk.path, args.ranges, (offset, data) =>
    readback.observe(offset, data),
  );
  const t1 = deps.now();
  const force = args.force ?? false;
  refuseRestartRequired(m, force);
  const files = m.planned.files;
  if (!force) await refuseGuestDirty(files, deps);
  const t2 = deps.now();

  const pins = pinned ?? (await pinPlanned(files, deps, true));
  const reports: FileReport[] = files.map((f) => emptyReport(f, []));
  const dropFilePages = (gone?: ReadonlySet<string>): Promise<void> =>
    invalidateFiles(files, reports, deps, force, gone);

  let metadata: AppliedMetadata | undefined;
  if (m.metadata.filesystems.length > 0) {
    try {
      metadata = (await applyMetadata(m.metadata, deps.metadata, deps.readDirect, m.disk.path, force, dropFilePages))
        .report;
    } finally {
      // Inodes and directories were rewritten under the index: rebuild it on next use.
      for (const p of mountsOfDisk(m.layout, m.mounts)) await deps.pedigree?.forget(p.mount.devNum);
    }
  } else {
    await dropFilePages();
  }
  const restarted: RestartOutcome[] = [];
  for (const unit of m.planned.plan.units) restarted.push(await deps.restartUnit(unit));
  const t3 = deps.now();

  // The end-to-end invariant: success only when every changed file range reads back, through the
  // filesystem, as what was verified on the disk.
  const rb = await readback.check((path, expect) => openChanged(path, 'file', expect));
  const tr = deps.now();
  if (rb.stale.length > 0) {
    throw new CommandError(
      'Stale',
      `after the invalidation ${rb.stale.length} file${rb.stale.length === 1 ? '' : 's'} still read${rb.stale.length === 1 ? 's' : ''} other content than the disk holds, ` +
        `through the filesystem: ${describeStale(rb.stale)}. the guest sees old content there: the substitution did not take effect. ` +
        'check that vmsubst.ko is loaded and matches the kernel (vmsubst-agent status), then notify again (same id); a reboot of the guest clears its caches',
      { files: rb.stale, 'timings-ms': { verify: t1 - tv, map: m.mapMs, module: t3 - t2, readback: tr - t3 } },
    );
  }

  const inUse = metadata?.inodes['in-use'] ?? [];
  const keys = [...files.map((f) => f.hit.file), ...inUse.map((u) => ({ dev: u.dev, ino: u.ino }))];
  // The plan's scan of /proc already found the files' mappers (invalidation unmaps no vma); scan
  // again only for inodes the metadata steps found in use.
  const mappers = inUse.length > 0 ? await findMappers(keys, deps.procRoot) : m.planned.mappers;
  files.forEach((f, i) => {
    reports[i]!.mappers = plainMappers(mappers.get(keyOf(f.hit.file)));
  });
  const metadataReport = metadata && {
    ...metadata,
    inodes: {
      ...metadata.inodes,
      'in-use': inUse.map(({ dev, ...u }) => ({
        ...u,
        mappers: plainMappers(mappers.get(keyOf({ dev, ino: u.ino }))),
      })),
    },
  };
  const t4 = deps.now();
  return {
    id: args.id,
    device: m.disk.path,
    'dry-run': false,
    'verified-bytes': verifiedBytes,
    files: reports,
    unmapped: m.unmapped,
    ...(metadataReport ? { metadata: metadataReport } : {}),
    plan: m.planned.plan,
    ...(pins.length > 0 ? { pinned: pins } : {}),
    ...(restarted.length > 0 ? { restarted } : {}),
    readback: rb.readback,
    'timings-ms': {
      verify: t1 - tv + (m.mapStart - t0),
      map: m.mapMs,
      classify: m.classifyMs,
      module: t3 - t2,
      readback: tr - t3,
      invalidate: m.classifyMs + (t3 - t2),
      report: t4 - tr,
      total: deps.now() - t0,
    },
  };
}
