/**
 * `substitute`: the host has replaced blocks of one of our disks. Verify that
 * the new blocks are visible, find the files they belong to, and make the
 * kernel forget what it cached of those files, so running processes fault the
 * new content in and new execs read it.
 */
import { open } from 'node:fs/promises';
import { CommandError, errnoCode } from '../errors.js';
import type { ArgsOf, FileReport, ReturnOf } from '../protocol/schema.js';
import { PedigreeIndex, mountsOfDisk, type Fiemap } from '../pedigree/index.js';
import type { PedigreeService } from '../pedigree/live.js';
import { readDiskLayout, readMounts } from '../pedigree/mounts.js';
import { findMappers, keyOf } from '../proc/mappers.js';
import { resolveDisk } from '../disk/resolve.js';
import { verifyRanges, type DiskReader } from '../disk/verify.js';
import { applyMetadata, planMetadata, plannedOnly, type AppliedMetadata, type MetadataOps } from './metadata.js';

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
  forceFlag: number;
  procRoot: string;
  sysRoot: string;
  devRoot: string;
  now(): number;
}

export async function substitute(args: ArgsOf<'substitute'>, deps: SubstituteDeps): Promise<ReturnOf<'substitute'>> {
  const t0 = deps.now();
  const dryRun = args['dry-run'] ?? false;
  const disk = await resolveDisk(args.disk, args.ranges, deps.readDirect, deps.sysRoot, deps.devRoot);

  const verifiedBytes = await verifyRanges(deps.readDirect, disk.path, args.ranges);
  const t1 = deps.now();

  const layout = await readDiskLayout(disk.name, deps.sysRoot);
  const mounts = await readMounts(deps.procRoot);
  const changed = args.ranges.map(({ offset, length }) => ({ offset, length }));
  const { files, unmapped } = deps.pedigree
    ? await deps.pedigree.lookup(layout, mounts, changed)
    : (await PedigreeIndex.build(layout, mounts, deps.fiemap)).lookup(changed);
  const t2 = deps.now();

  const dirHits = files.filter((f) => f.file.kind === 'dir');
  const fileHits = files.filter((f) => f.file.kind === 'file');
  const plan = await planMetadata(disk, layout, mounts, unmapped, dirHits, deps.readDirect, deps.devRoot);
  const force = args.force ?? false;
  const rwMeta = plan.filesystems.find((fs) => !fs.readOnly);
  if (rwMeta && !force) {
    throw new CommandError(
      'RestartRequired',
      `${rwMeta.mountPoint} is mounted read-write and the substitution changes its metadata ` +
        `(${rwMeta.ranges.flatMap((r) => r.kinds).filter((k, i, a) => a.indexOf(k) === i).join(', ')}); ` +
        'the guest must be restarted (or remounted read-only), or the host must force it',
      { mount: rwMeta.mountPoint },
    );
  }

  const reports: FileReport[] = fileHits.map((hit) => ({
    path: hit.file.path,
    ino: hit.file.ino,
    ranges: hit.ranges,
    'pages-cached': 0,
    'pages-mapped': 0,
    'pages-dropped': 0,
    'pages-kept': 0,
    mappers: [],
  }));
  const dropFilePages = async (): Promise<void> => {
    for (const [i, hit] of fileHits.entries()) {
      const report = reports[i]!;
      const fh = await open(hit.file.path, 'r').catch((e: unknown) => {
        throw new CommandError('InvalidateFailed', `cannot open ${hit.file.path}: ${errnoCode(e) ?? String(e)}`);
      });
      try {
        // Data-only substitution on a read-write mount: the extents were checked above.
        const flags = hit.file.mount.readOnly ? 0 : deps.forceFlag;
        for (const r of hit.ranges) {
          const c = await deps.invalidateRange(fh.fd, BigInt(r.offset), BigInt(r.length), flags).catch((e: unknown) => {
            if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENODEV') {
              throw new CommandError('KmodUnavailable', 'the vmsubst kernel module is not loaded (/dev/vmsubst missing)');
            }
            throw new CommandError('InvalidateFailed', `invalidating ${hit.file.path} at ${r.offset}+${r.length}: ${(e as Error).message}`);
          });
          report['pages-cached'] += Number(c.pagesCached);
          report['pages-mapped'] += Number(c.pagesMapped);
          report['pages-dropped'] += Number(c.pagesDropped);
          report['pages-kept'] += Number(c.pagesKept);
        }
      } finally {
        await fh.close();
      }
    }
  };

  let metadata: AppliedMetadata | undefined = plan.ranges.length > 0 && dryRun ? plannedOnly(plan) : undefined;
  if (!dryRun) {
    if (plan.filesystems.length > 0) {
      try {
        metadata = (await applyMetadata(plan, deps.metadata, deps.readDirect, disk.path, force, dropFilePages)).report;
      } finally {
        // Inodes and directories were rewritten under the index: rebuild it on next use.
        for (const p of mountsOfDisk(layout, mounts)) await deps.pedigree?.forget(p.mount.devNum);
      }
    } else {
      await dropFilePages();
    }
  }
  const t3 = deps.now();

  const inUse = metadata?.inodes['in-use'] ?? [];
  const keys = [...fileHits.map((f) => f.file), ...inUse.map((u) => ({ dev: u.dev, ino: u.ino }))];
  const mappers = await findMappers(keys, deps.procRoot);
  fileHits.forEach((f, i) => {
    reports[i]!.mappers = mappers.get(keyOf(f.file)) ?? [];
  });
  const metadataReport = metadata && {
    ...metadata,
    inodes: {
      ...metadata.inodes,
      'in-use': inUse.map(({ dev, ...u }) => ({ ...u, mappers: mappers.get(keyOf({ dev, ino: u.ino })) ?? [] })),
    },
  };
  return {
    id: args.id,
    device: disk.path,
    'dry-run': dryRun,
    'verified-bytes': verifiedBytes,
    files: reports,
    unmapped,
    ...(metadataReport ? { metadata: metadataReport } : {}),
    'timings-ms': { verify: t1 - t0, map: t2 - t1, invalidate: t3 - t2, total: deps.now() - t0 },
  };
}
