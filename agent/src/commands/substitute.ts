/**
 * `substitute`: the host has replaced blocks of one of our disks. Verify that
 * the new blocks are visible, find the files they belong to, and make the
 * kernel forget what it cached of those files, so running processes fault the
 * new content in and new execs read it.
 */
import { open } from 'node:fs/promises';
import { CommandError, errnoCode } from '../errors.js';
import type { ArgsOf, FileReport, ReturnOf } from '../protocol/schema.js';
import { PedigreeIndex, type Fiemap } from '../pedigree/index.js';
import { readDiskLayout, readMounts } from '../pedigree/mounts.js';
import { findMappers, keyOf } from '../proc/mappers.js';
import { resolveDisk } from '../disk/resolve.js';
import { verifyRanges, type DiskReader } from '../disk/verify.js';

export interface InvalidateCounts {
  pagesCached: bigint;
  pagesMapped: bigint;
  pagesDropped: bigint;
  pagesKept: bigint;
}

/** What the substitution needs from the system; the real parts are the defaults in agent.ts. */
export interface SubstituteDeps {
  readDirect: DiskReader;
  fiemap: Fiemap;
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
  const index = await PedigreeIndex.build(layout, mounts, deps.fiemap);
  const { files, unmapped } = index.lookup(args.ranges.map(({ offset, length }) => ({ offset, length })));
  const t2 = deps.now();

  const readWrite = files.filter((f) => !f.file.mount.readOnly);
  if (readWrite.length > 0 && unmapped.length > 0) {
    throw new CommandError(
      'InvalidArguments',
      `${readWrite[0]!.file.mount.mountPoint} is mounted read-write and the substitution also changes ` +
        `${unmapped.length} range(s) outside file data (metadata?); refusing: remount read-only or restart the guest`,
    );
  }

  const reports: FileReport[] = [];
  for (const hit of files) {
    const counts = { cached: 0n, mapped: 0n, dropped: 0n, kept: 0n };
    if (!dryRun) {
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
          counts.cached += c.pagesCached;
          counts.mapped += c.pagesMapped;
          counts.dropped += c.pagesDropped;
          counts.kept += c.pagesKept;
        }
      } finally {
        await fh.close();
      }
    }
    reports.push({
      path: hit.file.path,
      ino: hit.file.ino,
      ranges: hit.ranges,
      'pages-cached': Number(counts.cached),
      'pages-mapped': Number(counts.mapped),
      'pages-dropped': Number(counts.dropped),
      'pages-kept': Number(counts.kept),
      mappers: [],
    });
  }
  const t3 = deps.now();

  const mappers = await findMappers(files.map((f) => f.file), deps.procRoot);
  files.forEach((f, i) => {
    reports[i]!.mappers = mappers.get(keyOf(f.file)) ?? [];
  });

  return {
    id: args.id,
    device: disk.path,
    'dry-run': dryRun,
    'verified-bytes': verifiedBytes,
    files: reports,
    unmapped,
    'timings-ms': { verify: t1 - t0, map: t2 - t1, invalidate: t3 - t2, total: deps.now() - t0 },
  };
}
