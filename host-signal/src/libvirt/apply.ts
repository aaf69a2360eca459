/**
 * Applying a bundle to a disk of a libvirt domain through libvirt's public API
 * only (docs/libvirt.md): no QMP behind libvirt's back, so the domain is not
 * tainted and libvirt keeps knowing its disk.
 *
 *   virsh domstate, dumpxml              running? which disk? its chain (top first)
 *   read the chain read-only             verify the old blocks (raw: the file; qcow2: qemu-nbd --force-share)
 *   [prepare]                            the agent pins while the old blocks are on disk
 *   write the overlay                    exactly the changed clusters; backing = the current top, with its format
 *   virsh suspend                        then verify again: the guest cannot write the ranges any more
 *   virsh snapshot-create-as --disk-only --no-metadata --reuse-external   the switch (atomic for the guest)
 *   virsh resume
 *   [--commit] virsh blockcommit --active --shallow --pivot, then the overlay file is removed
 *
 * A failure once the overlay is written removes it and leaves the chain as it
 * was; the domain is resumed if this apply paused it.
 */
import { lstat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Manifest } from '@vmsubst/common/bundle/schema';
import { CancelledError, TargetError } from '../errors.js';
import { FileSource, readExactly, type BlockSource } from '../diff/index.js';
import { Qcow2Source } from '../diff/qcow2.js';
import {
  checkTargetSize,
  inspectTarget,
  ms,
  nothingDone,
  refuseMismatch,
  type ApplyProgress,
  type BlockTarget,
  type BundleData,
  type RangeState,
  type Substitution,
} from '../apply/core.js';
import { alignedClusterSize, buildOverlay } from '../apply/overlay.js';
import { UndoStack } from '../apply/undo.js';
import { describeDisk, parseDomainXml, type ChainImage, type DomainDisk, type DomainInfo } from './domain.js';
import { Virsh } from './virsh.js';

export interface DiskSelector {
  /** The disk's target (vda, vdb…). */
  target?: string;
  /** The disk's <serial>. */
  serial?: string;
}

export interface LibvirtApplyOptions extends DiskSelector {
  /** libvirt connection URI; default libvirt's default. */
  connect?: string;
  /** Where the overlay goes; default beside the disk's bottom image. */
  overlayDir?: string;
  /** Merge the overlay down afterwards (active block commit + pivot) and remove it. */
  commit?: boolean;
  beforeWrite?: () => Promise<void>;
  onProgress?: ApplyProgress;
  signal?: AbortSignal;
  commitTimeoutMs?: number;
  /** The virsh to use (tests); default one for `connect`. */
  virsh?: Virsh;
}

export interface LibvirtOverlay {
  path: string;
  clusterSize: number;
  backing: { name: string; format: string };
  committed: boolean;
  commitMs?: number;
}

export interface LibvirtApplyResult extends Substitution {
  id: string;
  mode: 'overlay';
  target: { kind: 'libvirt'; domain: string; connect?: string; disk: string; serial?: string; image: string };
  /** The domain's state before the apply (virsh domstate). */
  vmStatus: string;
  /** suspend → resume answered, in ms; null when the domain was paused already and left so. */
  pauseMs: number | null;
  /** 0: the switch is one atomic graph change for the guest; null when nothing was switched. */
  windowMs: number | null;
  resumed: boolean;
  overlay?: LibvirtOverlay;
  /** Images in the disk's chain afterwards (1: a single image). */
  chainLength: number;
  elapsedMs: number;
  warnings: string[];
}

/** The running domain, its live XML and the disk the bundle goes to. */
export interface LibvirtTarget {
  virsh: Virsh;
  domain: string;
  state: string;
  info: DomainInfo;
  disk: DomainDisk;
}

/** Resolves the domain and its disk; refuses a domain that is not running and a disk vmsubst cannot read. */
export async function resolveLibvirt(
  manifest: Manifest,
  domain: string,
  options: Pick<LibvirtApplyOptions, 'connect' | 'virsh' | 'target' | 'serial'>,
): Promise<LibvirtTarget> {
  const virsh = options.virsh ?? new Virsh(options.connect !== undefined ? { connect: options.connect } : {});
  const state = await virsh.domainState(domain);
  if (state !== 'running' && state !== 'paused') {
    throw new TargetError(
      `domain ${domain} is ${state}: there is no running disk to substitute`,
      'start it first, or write its image offline (vmsubst apply BUNDLE --image PATH for a raw image, or ' +
        'vmsubst export --qcow2 for an overlay); nothing was written',
    );
  }
  const info = parseDomainXml(await virsh.dumpXml(domain));
  const disk = await selectDisk(manifest, info, options);
  return { virsh, domain, state, info, disk };
}

/** The disk by target, by serial, or the one whose filesystems are the bundle's base's (ambiguity is an error). */
export async function selectDisk(manifest: Manifest, info: DomainInfo, sel: DiskSelector): Promise<DomainDisk> {
  const disks = info.disks.filter((d) => d.device === 'disk');
  const listed = (ds: DomainDisk[]): string => (ds.length ? ds.map(describeDisk).join(', ') : 'none');
  if (sel.target !== undefined || sel.serial !== undefined) {
    const d = disks.find(
      (x) =>
        (sel.target === undefined || x.target === sel.target) && (sel.serial === undefined || x.serial === sel.serial),
    );
    if (!d) {
      const what = sel.target !== undefined ? `target ${sel.target}` : `serial ${sel.serial}`;
      throw new TargetError(
        `domain ${info.name} has no disk with ${what}`,
        `its disks: ${listed(disks)}; give --disk TARGET or --disk-serial S of one of them`,
      );
    }
    return d;
  }
  const matching: DomainDisk[] = [];
  for (const d of disks) if (await matchesBase(manifest, d)) matching.push(d);
  if (matching.length === 1) return matching[0]!;
  throw new TargetError(
    matching.length === 0
      ? `no disk of domain ${info.name} holds the bundle's base (its size and filesystem identity)`
      : `${matching.length} disks of domain ${info.name} match the bundle's base: ${listed(matching)}`,
    `say which with --disk TARGET or --disk-serial S; its disks: ${listed(disks)}`,
  );
}

/**
 * Whether the disk's current content is the bundle's base by identity: the same size and, when the bundle names
 * its filesystems, the same filesystem UUIDs at the same offsets; without them, every range old or new.
 */
export async function matchesBase(manifest: Manifest, disk: DomainDisk): Promise<boolean> {
  let source: BlockSource;
  try {
    source = await openChain(disk);
  } catch {
    return false;
  }
  try {
    if (source.size !== manifest.base.size) return false;
    const fss = manifest.base.filesystems ?? [];
    if (fss.length === 0) {
      const { states } = await inspectTarget(manifest, readOnly(source));
      return states.every((s) => s !== 'neither');
    }
    for (const fs of fss) if ((await filesystemUuid(source, fs.type, fs.offset)) !== fs.uuid) return false;
    return true;
  } catch {
    return false;
  } finally {
    await source.close?.();
  }
}

/** The UUID of the ext4 or XFS superblock at `offset`, or undefined. */
async function filesystemUuid(source: BlockSource, type: 'ext4' | 'xfs', offset: number): Promise<string | undefined> {
  const at = type === 'ext4' ? offset + 1024 : offset;
  const sb = await readExactly(source, at, 512);
  const ok = type === 'ext4' ? sb.readUInt16LE(56) === 0xef53 : sb.toString('latin1', 0, 4) === 'XFSB';
  if (!ok) return undefined;
  const hex = sb.subarray(type === 'ext4' ? 104 : 32, (type === 'ext4' ? 104 : 32) + 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The disk's current content, read-only, through its whole chain, without a lock (the VM runs). */
export async function openChain(disk: DomainDisk): Promise<BlockSource> {
  const top = disk.chain[0];
  if (!top?.path || (top.type !== 'file' && top.type !== 'block')) {
    throw new TargetError(
      `disk ${disk.target} is not a local file or block device (${top?.type ?? 'no source'}), so vmsubst cannot read it`,
      'substitute disks whose image is on this host',
    );
  }
  if (top.format === 'qcow2') return Qcow2Source.open(top.path, { imageOpts: chainImageOpts(disk.chain) });
  if (top.format === 'raw') return FileSource.open(top.path);
  throw new TargetError(`disk ${disk.target} has format ${top.format}`, 'vmsubst reads raw and qcow2 images');
}

/**
 * The chain as qemu-nbd --image-opts: each image with its format and `locking=off` (QEMU holds the images; a read
 * takes no lock and writes nothing), each backing given explicitly, as libvirt gives it to QEMU.
 */
export function chainImageOpts(chain: readonly ChainImage[]): string {
  const esc = (v: string): string => v.replace(/,/g, ',,');
  const parts: string[] = [];
  chain.forEach((img, i) => {
    const at = 'backing.'.repeat(i);
    if (!img.path) throw new TargetError(`the disk's chain has an image that is not a local file (${img.type})`);
    parts.push(`${at}driver=${img.format}`, `${at}file.driver=${img.type === 'block' ? 'host_device' : 'file'}`);
    parts.push(`${at}file.filename=${esc(img.path)}`, `${at}file.locking=off`);
  });
  return parts.join(',');
}

const readOnly = (source: BlockSource): BlockTarget => ({
  size: source.size,
  read: (offset, length) => readExactly(source, offset, length),
  write: () => Promise.reject(new Error('the disk is read, never written, here')),
  flush: () => Promise.resolve(),
});

/** Why the disk cannot take an overlay, or undefined when it can. */
export function noOverlay(disk: DomainDisk): string | undefined {
  const top = disk.chain[0];
  if (top?.type === 'block')
    return `is the block device ${top.path}: it cannot take an overlay (vmsubst stacks image files)`;
  if (top?.type !== 'file')
    return `is a ${top?.type ?? 'source-less'} disk: it cannot take an overlay (vmsubst stacks image files)`;
  if (disk.shareable)
    return 'is <shareable/>: libvirt puts no qcow2 overlay on a shared disk ("shared access … requires use of supported storage format")';
  return undefined;
}

/** Where the overlay goes: --overlay-dir or beside the chain's bottom image, named after it and the bundle. */
export function overlayPathFor(disk: DomainDisk, id: string, overlayDir?: string): string {
  const bottom = disk.chain.at(-1)?.path ?? disk.chain[0]!.path!;
  return join(overlayDir ?? dirname(disk.chain[0]!.path!), `${basename(bottom)}.vmsubst-${id.slice(0, 12)}.qcow2`);
}

export async function applyToLibvirt(
  bundle: BundleData,
  domain: string,
  options: LibvirtApplyOptions = {},
): Promise<LibvirtApplyResult> {
  const started = performance.now();
  const { manifest } = bundle;
  if (!bundle.verified)
    throw new TargetError("the bundle's data has not been verified", 'open the bundle with data verification');
  const t = await resolveLibvirt(manifest, domain, {
    ...options,
    ...(options.target !== undefined ? { target: options.target } : {}),
  });
  const top = t.disk.chain[0];
  const cannot = noOverlay(t.disk);
  if (cannot !== undefined || !top?.path) {
    throw new TargetError(
      `disk ${t.disk.target} of domain ${domain} ${cannot ?? 'has no image'}; nothing was written`,
      'write into it in place with --mode nbd --allow-taint (through QMP passthrough: libvirt marks the domain ' +
        "tainted 'custom-monitor'; the disk must be <shareable/>)",
    );
  }
  const result: LibvirtApplyResult = {
    id: manifest.id,
    mode: 'overlay',
    target: {
      kind: 'libvirt',
      domain: t.info.name,
      ...(options.connect !== undefined ? { connect: options.connect } : {}),
      disk: t.disk.target,
      ...(t.disk.serial !== undefined ? { serial: t.disk.serial } : {}),
      image: top.path,
    },
    vmStatus: t.state,
    ...nothingDone(manifest),
    pauseMs: null,
    windowMs: null,
    resumed: false,
    chainLength: t.disk.chain.length,
    elapsedMs: 0,
    warnings: [],
  };
  const done = (): LibvirtApplyResult => ({ ...result, elapsedMs: Math.round(performance.now() - started) });
  if (manifest.ranges.length === 0) return done();
  const overlayPath = overlayPathFor(t.disk, manifest.id, options.overlayDir);

  // Verify while the guest runs.
  const t0 = performance.now();
  const source = await openChain(t.disk);
  let states: RangeState[];
  try {
    checkTargetSize(manifest, source.size, `disk ${t.disk.target}`);
    const inspected = await inspectTarget(manifest, readOnly(source), options.onProgress);
    refuseMismatch(manifest, inspected.states);
    states = inspected.states;
    result.verifiedBytes = inspected.verifiedBytes;
  } finally {
    await source.close?.();
  }
  result.timingsMs.verify = ms(performance.now() - t0);
  result.rangesAlreadyNew = states.filter((s) => s === 'new').length;
  if (result.rangesAlreadyNew === manifest.ranges.length) {
    result.status = 'already-applied';
    // Applied earlier without --commit: the top is this bundle's overlay (said in the result); --commit merges it down.
    if (t.disk.chain.length > 1 && top.path === overlayPath) {
      const below = t.disk.chain[1]!;
      result.overlay = {
        path: top.path,
        clusterSize: alignedClusterSize(manifest),
        backing: { name: below.path ?? below.type, format: below.format },
        committed: false,
      };
      if (options.commit) await commitLibvirt(t.virsh, result, options.commitTimeoutMs);
    }
    return done();
  }
  if (await exists(overlayPath)) {
    throw new TargetError(
      `${overlayPath} exists already; nothing was written`,
      'an overlay is a new file, never a replaced one: remove it if it is a leftover, or give another --overlay-dir',
    );
  }
  if (options.signal?.aborted) throw new CancelledError('cancelled before writing');
  if (options.beforeWrite) await options.beforeWrite();

  const undo = new UndoStack();
  try {
    await switchOnto(bundle, t, overlayPath, result, undo);
  } catch (e) {
    const { failed } = await undo.unwind();
    if (failed.length > 0 && e instanceof Error) e.message += `; cleaning up also failed: ${failed.join('; ')}`;
    throw e;
  }
  if (options.commit) await commitLibvirt(t.virsh, result, options.commitTimeoutMs);
  return done();
}

/** Writes the overlay, pauses, verifies again, switches, resumes. Each step registers its undo on `undo`. */
async function switchOnto(
  bundle: BundleData,
  t: LibvirtTarget,
  overlayPath: string,
  result: LibvirtApplyResult,
  undo: UndoStack,
): Promise<void> {
  const { manifest } = bundle;
  const top = t.disk.chain[0]!;
  const clusterSize = alignedClusterSize(manifest);
  const backing = { name: top.path!, format: top.format };
  const w0 = performance.now();
  const keepOverlay = undo.defer(`overlay ${overlayPath}`, () => unlink(overlayPath).catch(ignoreMissing));
  await buildOverlay(bundle, overlayPath, { clusterSize, backing });
  const running = t.state === 'running';
  const pausedAt = performance.now();
  if (running) {
    await t.virsh.suspend(t.domain);
    undo.defer(`resume ${t.domain}`, () => t.virsh.resume(t.domain));
  }
  // Paused, QEMU has flushed its writes: the ranges are read as the guest left them.
  const again = await openChain(t.disk);
  try {
    const { states } = await inspectTarget(manifest, readOnly(again));
    refuseMismatch(manifest, states);
    result.rangesWritten = states.filter((s) => s === 'old').length;
    result.bytesWritten = manifest.ranges.filter((_r, i) => states[i] === 'old').reduce((n, r) => n + r.length, 0);
  } finally {
    await again.close?.();
  }
  const others = t.info.disks.filter((d) => d.target !== t.disk.target).map((d) => d.target);
  await t.virsh.snapshotOnto(t.domain, t.disk.target, overlayPath, others);
  // The overlay is the disk's top now: it stays, whatever happens next.
  keepOverlay();
  const undone = await undo.unwind();
  result.pauseMs = running ? ms(performance.now() - pausedAt) : null;
  result.resumed = running && undone.failed.length === 0;
  if (undone.failed.length > 0)
    throw new TargetError(
      `the disk was switched onto ${overlayPath}, but ${undone.failed.join('; ')}`,
      `resume the domain: virsh resume ${t.domain}`,
    );
  result.status = 'applied';
  result.windowMs = 0;
  result.timingsMs.write = ms(performance.now() - w0);
  result.overlay = { path: overlayPath, clusterSize, backing, committed: false };
  result.chainLength = t.disk.chain.length + 1;
}

/**
 * Merges the overlay a libvirt apply put on top down into the image below it (virsh blockcommit --active --shallow
 * --pivot) and removes its file. A failure is a warning: the overlay stays in use, which is consistent.
 */
export async function commitLibvirt(virsh: Virsh, result: LibvirtApplyResult, timeoutMs = 600_000): Promise<void> {
  const overlay = result.overlay;
  if (!overlay || overlay.committed) return;
  const t = performance.now();
  try {
    await virsh.blockCommit(result.target.domain, result.target.disk, timeoutMs);
    overlay.committed = true;
    overlay.commitMs = ms(performance.now() - t);
    result.chainLength -= 1;
    await unlink(overlay.path).catch((e: Error) => result.warnings.push(`removing ${overlay.path}: ${e.message}`));
  } catch (e) {
    result.warnings.push(
      `commit: ${(e as Error).message}; the overlay stays in use (the guest sees the new blocks either way): ` +
        `virsh blockcommit ${result.target.domain} ${result.target.disk} --active --shallow --pivot`,
    );
  }
}

const exists = (p: string): Promise<boolean> =>
  lstat(p).then(
    () => true,
    () => false,
  );

const ignoreMissing = (e: NodeJS.ErrnoException): void => {
  if (e.code !== 'ENOENT') throw e;
};
