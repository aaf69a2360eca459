/**
 * Applying a bundle to a drive of a running QEMU, always through QEMU's own
 * block layer so its caches stay coherent. Two modes (docs/apply-modes.md):
 *
 *   nbd      the new blocks are written into the drive's node through a
 *            writable NBD export; the guest is paused for the writes only.
 *   overlay  the new blocks go into a qcow2 overlay that is put on top of
 *            the drive's node with blockdev-snapshot; the guest is paused for
 *            that switch only. --commit merges it back with block-commit.
 *
 * Both verify while the guest runs, under a dirty bitmap; at the pause the
 * bitmap says whether the guest wrote anything since, and if it did the
 * ranges are verified again while paused (docs/design.md, "Pausing").
 *
 *   [recover what an interrupted apply left]              recover.ts
 *   query-status, query-block / query-named-block-nodes   find the node
 *   state file: what is about to be made                   state-file.ts
 *   nbd-server-start {unix: <private dir>/nbd.sock}        QEMU has one NBD server
 *   block-export-add {type: nbd, writable: nbd mode}       writable needs share-rw=on
 *   block-dirty-bitmap-add {persistent: false}             guest writes from now on
 *   verify (NBD reads), [prepare], [build + blockdev-add the overlay], NBD flush
 *   stop → bitmap clean? (else verify again) → write | blockdev-snapshot → cont
 *   flush; remove bitmap, export, NBD server, socket directory, state file
 *
 * The state file is written before anything is made in the VM and updated
 * around the pause, so an apply killed at any point (SIGKILL) leaves a record
 * of exactly what to remove and whether to resume: `vmsubst recover`, or the
 * next apply on the VM, which recovers first.
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, realpath, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { CancelledError, QmpError, TargetError } from '../errors.js';
import { NbdClient, REQUEST_BYTES } from '../nbd/client.js';
import { QmpClient } from '../qmp/client.js';
import { MIGRATION_STATES, Qemu, type BlockInfo, type StatusInfo } from '../qmp/commands.js';
import type { Manifest } from '@vmsubst/common/bundle/schema';
import type { QmpEvent } from '../qmp/client.js';
import { checkTargetSize, inspectTarget, loadRanges, ms, refuseMismatch, writeRanges, type ApplyProgress, type BlockTarget, type BundleData, type RangeState, type Substitution } from './core.js';
import { alignedClusterSize, buildOverlay } from './overlay.js';
import { recoverVm, removeLeftovers, type Present, type RecoveryReport } from './recover.js';
import { processStart, stateDir, StateStore, type ApplyRecord, type ApplyRecordPhase } from './state-file.js';

export interface DriveSelector {
  /** qdev id of the device (`-device virtio-blk-pci,id=vblk0`) or a legacy -drive id. */
  device?: string;
  /** Block node name (`-blockdev …,node-name=disk0`). */
  node?: string;
}

export type QemuMode = 'nbd' | 'overlay';

export interface QemuApplyOptions extends DriveSelector {
  /** Default 'nbd'. */
  mode?: QemuMode;
  /** overlay: the qcow2 file to create; default beside the drive's image file. */
  overlayPath?: string;
  /** overlay: merge the overlay into the drive's node afterwards (block-commit) and remove it. */
  commit?: boolean;
  /**
   * Runs once the ranges are verified, before the guest is paused for the
   * change (the two-phase `prepare`); not called when nothing is to be written.
   */
  beforeWrite?: () => Promise<void>;
  onProgress?: ApplyProgress;
  /** Cancels before anything is written; once writing has begun it completes. */
  signal?: AbortSignal;
  /** Where the private NBD socket directory is made; default os.tmpdir(). QEMU must be able to create a socket there. */
  workDir?: string;
  /** Where the per-VM state file goes (what the apply is about to make, for recovery after a crash); default VMSUBST_STATE_DIR or /run/vmsubst. */
  stateDir?: string;
  /** QMP connect/greeting timeout; default 10 s. */
  timeoutMs?: number;
  /** How long a --commit may take; default 10 min. */
  commitTimeoutMs?: number;
}

export interface ResolvedDrive {
  nodeName: string;
  /** The device id, when the node is attached to one. */
  device?: string;
  /** Virtual size, when QEMU reported it. */
  size?: number;
  readOnly: boolean;
  /** The node's image file name and format driver (e.g. raw), as QEMU reports them. */
  filename: string;
  format: string;
}

export interface OverlayOutcome {
  path: string;
  node: string;
  clusterSize: number;
  /** The backing file recorded in the overlay: the drive's image, as blockdev-snapshot-sync would record it. */
  backing: { name: string; format: string };
  /** Merged back by block-commit and removed (--commit). */
  committed: boolean;
  commitMs?: number;
}

export interface QemuApplyResult extends Substitution {
  id: string;
  mode: QemuMode;
  target: { kind: 'qemu'; qmp: string; node: string; device?: string };
  /** VM run state before the apply (query-status). */
  vmStatus: string;
  /** How long the guest was paused (stop sent → cont answered), in ms; null when it was not running and was left as it was. */
  pauseMs: number | null;
  /** How long the disk held some new ranges and some old ones: the writes (nbd), 0 for the atomic switch (overlay). */
  windowMs: number | null;
  /** At the pause: 'clean' (no guest write since the verification) or 'reverified' (there was one: verified again while paused). */
  recheck: 'clean' | 'reverified' | null;
  resumed: boolean;
  overlay?: OverlayOutcome;
  elapsedMs: number;
  /** Problems while cleaning up (export, NBD server, temp dir) that did not affect the result. */
  warnings: string[];
  /** What an earlier, interrupted apply on this VM had left, removed first. */
  recovered?: RecoveryReport;
}

/** The short device id from a qdev path: /machine/peripheral/vblk0/virtio-backend → vblk0. */
export function deviceId(info: BlockInfo): string | undefined {
  const m = /^\/machine\/peripheral\/([^/]+)/.exec(info.qdev ?? '');
  if (m) return m[1];
  return info.device !== '' ? info.device : info.qdev;
}

/** Finds the block node to export from --device, --node, or the only drive there is. */
export async function resolveDrive(qemu: Qemu, selector: DriveSelector): Promise<ResolvedDrive> {
  if (selector.device !== undefined && selector.node !== undefined) {
    throw new TargetError('give either a device or a node, not both');
  }
  if (selector.node !== undefined) {
    const nodes = await qemu.queryNamedBlockNodes();
    const node = nodes.find((n) => n['node-name'] === selector.node);
    if (!node) {
      const names = nodes.map((n) => n['node-name']).filter((n): n is string => !!n && !n.startsWith('#'));
      throw new TargetError(`QEMU has no block node named '${selector.node}'`, names.length ? `named nodes: ${names.join(', ')}` : 'QEMU reports no named block nodes');
    }
    const attached = (await qemu.queryBlock()).find((b) => b.inserted?.['node-name'] === selector.node);
    const drive: ResolvedDrive = { nodeName: selector.node, size: node.image['virtual-size'], readOnly: node.ro, filename: node.file, format: node.drv };
    const dev = attached ? deviceId(attached) : undefined;
    if (dev !== undefined) drive.device = dev;
    return drive;
  }
  const blocks = await qemu.queryBlock();
  const candidates = blocks.filter((b) => b.inserted);
  const describe = (b: BlockInfo): string => `${deviceId(b) ?? '?'} (node ${b.inserted?.['node-name'] ?? '?'})`;
  let chosen: BlockInfo | undefined;
  if (selector.device !== undefined) {
    const id = selector.device;
    chosen = blocks.find((b) => deviceId(b) === id || b.qdev === id || b.device === id);
    if (!chosen) {
      throw new TargetError(`QEMU has no block device '${id}'`, candidates.length ? `block devices: ${candidates.map(describe).join(', ')}` : 'this VM has no block devices with a medium');
    }
    if (!chosen.inserted) throw new TargetError(`block device '${id}' has no medium inserted`);
  } else {
    if (candidates.length !== 1) {
      throw new TargetError(
        candidates.length === 0 ? 'this VM has no block device with a medium' : `this VM has ${candidates.length} block devices; say which one`,
        candidates.length ? `use --device or --node; block devices: ${candidates.map(describe).join(', ')}` : undefined,
      );
    }
    chosen = candidates[0]!;
  }
  const inserted = chosen.inserted!;
  const nodeName = inserted['node-name'];
  if (!nodeName) throw new TargetError(`block device '${deviceId(chosen)}' has no node name`, 'use --node with the name of its format node');
  const drive: ResolvedDrive = { nodeName, size: inserted.image['virtual-size'], readOnly: inserted.ro, filename: inserted.file, format: inserted.drv };
  const dev = deviceId(chosen);
  if (dev !== undefined) drive.device = dev;
  return drive;
}

/** Where the overlay goes by default: beside the drive's image, named after it and the bundle. */
export function defaultOverlayPath(drive: ResolvedDrive, id: string): string {
  if (!isAbsolute(drive.filename)) {
    throw new TargetError(
      `the drive's image is not a local file (${drive.filename.slice(0, 80)}), so there is no default place for the overlay`,
      'give --overlay PATH, a new file QEMU can open',
    );
  }
  return join(dirname(drive.filename), `${basename(drive.filename)}.vmsubst-${id.slice(0, 12)}.qcow2`);
}


/**
 * A fault-injection point for the crash-recovery tests (VMSUBST_FAULT): the process kills itself there, as a SIGKILL from outside would.
 * crash-mid-write: the first NBD write request (REQUEST_BYTES at most) is written, then the process dies; no other write is sent.
 */
export type ApplyFault = 'crash-while-paused' | 'crash-after-overlay-add' | 'crash-mid-write';

function faultPoint(at: ApplyFault): void {
  if (process.env['VMSUBST_FAULT'] === at) process.kill(process.pid, 'SIGKILL');
}

/** The target, or with VMSUBST_FAULT=crash-mid-write one that dies after its first write request (the others wait for that). */
function faultedWrites(target: BlockTarget): BlockTarget {
  if (process.env['VMSUBST_FAULT'] !== 'crash-mid-write') return target;
  let first = true;
  return {
    ...target,
    async write(offset, data) {
      if (!first) return new Promise<void>(() => undefined);
      first = false;
      await target.write(offset, data.subarray(0, Math.min(data.length, REQUEST_BYTES)));
      faultPoint('crash-mid-write');
    },
  };
}

/**
 * One apply's footprint in the VM: the record of what it is about to make
 * (written before it makes any of it, see state-file.ts), which of those
 * things exist so far, and the one clean-up that removes them.
 */
class Footprint {
  readonly present: Present = { overlayNode: false, overlayFile: false, bitmap: false, export: false, nbdServer: false, socketDir: false };
  nbd: NbdClient | undefined;
  /** Keep the state file whatever the clean-up does (the VM could not be resumed). */
  keepRecord = false;

  private constructor(
    private readonly qemu: Qemu,
    private readonly store: StateStore,
    readonly file: string,
    readonly record: ApplyRecord,
  ) {}

  static async record(qemu: Qemu, store: StateStore, record: ApplyRecord): Promise<Footprint> {
    const file = await store.fileFor(record.qmp);
    await store.write(file, record);
    return new Footprint(qemu, store, file, record);
  }

  /** Records that the apply has (or no longer has) the VM paused. */
  async setPaused(paused: boolean): Promise<void> {
    this.record.paused = paused;
    await this.store.write(this.file, this.record);
  }

  /** Records where the write is; `durable: false` inside the pause (see StateStore.write). */
  async setPhase(phase: ApplyRecordPhase, durable = true): Promise<void> {
    this.record.phase = phase;
    await this.store.write(this.file, this.record, { durable });
  }

  /**
   * Removes what exists of the footprint (the overlay only when the apply
   * failed: after a success it is the drive's top layer), then the state file;
   * what cannot be removed is returned as warnings and the state file stays,
   * so that `vmsubst recover` can finish the job.
   */
  async cleanUp(succeeded: boolean): Promise<string[]> {
    const warnings: string[] = [];
    if (this.nbd) await this.nbd.disconnect().catch((e: Error) => warnings.push(`NBD disconnect: ${e.message}`));
    const present = succeeded ? { ...this.present, overlayNode: false, overlayFile: false } : this.present;
    const { failed } = await removeLeftovers(this.qemu, this.record, present);
    warnings.push(...failed);
    if (failed.length > 0 || this.keepRecord) {
      this.store.release(this.file);
      if (failed.length > 0) warnings.push(`the state file ${this.file} is kept: run 'vmsubst recover --qmp ${this.record.qmp}' once the cause is fixed`);
    } else {
      await this.store.remove(this.file).catch((e: Error) => warnings.push(`removing the state file ${this.file}: ${e.message}`));
    }
    return warnings;
  }
}

export async function applyToQemu(bundle: BundleData, qmpPath: string, options: QemuApplyOptions = {}): Promise<QemuApplyResult> {
  const started = performance.now();
  const mode = options.mode ?? 'nbd';
  const { manifest } = bundle;
  if (!bundle.verified) throw new TargetError('the bundle\'s data has not been verified', 'open the bundle with data verification');
  if (mode !== 'overlay' && (options.overlayPath !== undefined || options.commit)) {
    throw new TargetError('an overlay path and commit go with the overlay mode only');
  }
  const store = new StateStore(stateDir(options.stateDir));
  const qmp = await QmpClient.connect(qmpPath, options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {});
  const qemu = new Qemu(qmp);
  let keepOpen = false;
  let result: QemuApplyResult;
  try {
    // 1. What an earlier apply on this VM left behind (it was killed) goes first.
    // An interrupted write of this very bundle is completed with it (already open and verified).
    const recovery = await recoverVm(qemu, qmpPath, store, { bundle });
    const recovered = recovery.status === 'nothing-to-do' ? undefined : recovery;

    // 2. The VM and the drive.
    const status = await qemu.queryStatus();
    if (MIGRATION_STATES.has(status.status)) {
      throw new TargetError(`the VM is in state '${status.status}'; its disk must not be written now`, 'apply before or after the migration, on the host where the VM runs');
    }
    const drive = await resolveDrive(qemu, options);
    const what = `drive ${drive.device ?? drive.nodeName}`;
    if (drive.size !== undefined) checkTargetSize(manifest, drive.size, what);
    if (drive.readOnly && mode === 'nbd') {
      throw new TargetError(`${what} is read-only in QEMU`, 'attach the disk read-write (the guest may still mount it read-only), or use --mode overlay, which does not write into it');
    }
    const base: QemuApplyResult = {
      id: manifest.id,
      mode,
      target: { kind: 'qemu', qmp: qmpPath, node: drive.nodeName, ...(drive.device !== undefined ? { device: drive.device } : {}) },
      vmStatus: status.status,
      status: 'no-changes',
      ranges: manifest.ranges.length,
      rangesWritten: 0,
      rangesAlreadyNew: 0,
      bytesWritten: 0,
      verifiedBytes: 0,
      timingsMs: { verify: 0, write: 0 },
      pauseMs: null,
      windowMs: null,
      recheck: null,
      resumed: false,
      elapsedMs: 0,
      warnings: [],
      ...(recovered ? { recovered } : {}),
    };
    if (manifest.ranges.length === 0) {
      result = base;
    } else {
      const overlayPath = mode === 'overlay' ? (options.overlayPath ?? defaultOverlayPath(drive, manifest.id)) : undefined;
      if (overlayPath !== undefined && (await lstat(overlayPath).then(() => true, () => false))) {
        throw new TargetError(`${overlayPath} exists already`, 'an overlay is a new file, never a replaced one: choose another --overlay path, or remove this one');
      }
      if (options.signal?.aborted) throw new CancelledError();
      result = await changeDrive(bundle, qemu, store, { ...options, qmpPath, mode, drive, status, base, overlayPath });
      keepOpen = result.overlay !== undefined && options.commit === true;
    }
  } finally {
    if (!keepOpen) qmp.close();
  }
  if (result.overlay && options.commit) {
    try {
      await commitApplied(qemu, result, options.commitTimeoutMs);
    } finally {
      qmp.close();
    }
  }
  result.elapsedMs = Math.round(performance.now() - started);
  return result;
}

interface ChangeContext extends QemuApplyOptions {
  qmpPath: string;
  mode: QemuMode;
  drive: ResolvedDrive;
  status: StatusInfo;
  base: QemuApplyResult;
  overlayPath: string | undefined;
}

/** Steps 3 to 7: record, export, verify, prepare, pause and change, clean up (docs/apply-modes.md). */
async function changeDrive(bundle: BundleData, qemu: Qemu, store: StateStore, c: ChangeContext): Promise<QemuApplyResult> {
  const { manifest } = bundle;
  const { drive, status, base, mode } = c;
  const what = `drive ${drive.device ?? drive.nodeName}`;
  const tag = `vmsubst-${randomBytes(6).toString('hex')}`;
  const socketDir = join(c.workDir ?? tmpdir(), `${tag}.d`);

  // 3. The record of everything the apply is about to make, before it makes any of it.
  const fp = await Footprint.record(qemu, store, {
    format: 1,
    pid: process.pid,
    'pid-start': processStart(process.pid) ?? '?',
    'started-at': new Date().toISOString(),
    qmp: await realpath(c.qmpPath).catch(() => resolve(c.qmpPath)),
    uuid: await qemu.queryUuid(),
    bundle: { id: manifest.id, ...(bundle.path !== undefined ? { path: resolve(bundle.path) } : {}) },
    mode,
    node: drive.nodeName,
    'socket-dir': socketDir,
    'nbd-socket': join(socketDir, 'nbd.sock'),
    export: tag,
    bitmap: tag,
    ...(c.overlayPath !== undefined ? { overlay: { node: `${tag}-overlay`, path: c.overlayPath } } : {}),
    'was-running': status.running,
    paused: false,
    phase: 'verifying',
  });
  let succeeded = false;
  try {
    // 4. The private NBD server and export, and the bitmap that watches guest writes.
    const { target, nbd } = await exportDrive(qemu, fp, manifest, what, mode === 'nbd');

    // 5. Verify while the guest runs.
    const t0 = performance.now();
    let { states, verifiedBytes } = await inspectTarget(manifest, target, c.onProgress);
    let verify = ms(performance.now() - t0);
    refuseMismatch(manifest, states);
    const alreadyNew = (s: readonly RangeState[]): number => s.filter((x) => x === 'new').length;
    if (alreadyNew(states) === manifest.ranges.length) {
      succeeded = true;
      return { ...base, status: 'already-applied', rangesAlreadyNew: manifest.ranges.length, verifiedBytes, timingsMs: { verify, write: 0 } };
    }
    if (c.signal?.aborted) throw new CancelledError();
    if (c.beforeWrite) await c.beforeWrite();

    // 6. Everything the pause needs, made ready while the guest runs.
    let overlay: OverlayOutcome | undefined;
    let preloaded: Awaited<ReturnType<typeof loadRanges>>;
    if (mode === 'overlay') {
      overlay = await addOverlay(bundle, qemu, fp, drive);
      faultPoint('crash-after-overlay-add');
    } else {
      preloaded = await loadRanges(bundle, states);
    }
    // `stop` flushes every drive of the VM: flushing now, while the guest runs, leaves that flush
    // little to write. (A read-only export may not offer flush; then the pause pays for it.)
    if (nbd.canFlush) await nbd.flush();

    // 7. The pause: confirm the verification still holds, then change the disk.
    if (status.running) await fp.setPaused(true);
    let pausedAt: number | undefined;
    let pauseMs: number | null = null;
    let windowMs: number | null = null;
    let recheck: 'clean' | 'reverified' | null = null;
    let written = { rangesWritten: 0, bytesWritten: 0 };
    let failure: unknown;
    let t1 = 0;
    try {
      // QMP runs one monitor's commands in order, so the bitmap is read after `stop` has
      // drained the guest's I/O; sending both at once saves a round trip inside the pause.
      if (status.running) pausedAt = performance.now();
      const [, dirty] = await Promise.all([status.running ? qemu.stop() : Promise.resolve(), qemu.dirtyBytes(drive.nodeName, fp.record.bitmap)]);
      faultPoint('crash-while-paused');
      if (dirty === 0) {
        recheck = 'clean';
      } else {
        // The guest wrote to the disk since the verification: verify again, now that it cannot.
        recheck = 'reverified';
        const t = performance.now();
        ({ states, verifiedBytes } = await inspectTarget(manifest, target));
        verify = ms(verify + performance.now() - t);
        refuseMismatch(manifest, states);
      }
      t1 = performance.now();
      if (overlay) {
        await qemu.blockdevSnapshot(drive.nodeName, overlay.node);
        windowMs = 0;
        written = { rangesWritten: states.filter((x) => x === 'old').length, bytesWritten: 0 };
      } else if (alreadyNew(states) < manifest.ranges.length) {
        // From here the disk may hold a mix: recorded before the first write request, so that
        // recovery completes the write before it resumes the guest (one rename, no fsync).
        await fp.setPhase('writing', false);
        written = await writeRanges(bundle, faultedWrites(target), states, { flush: false, ...(preloaded ? { preloaded } : {}), ...(c.onProgress ? { onProgress: c.onProgress } : {}) });
        windowMs = ms(performance.now() - t1);
      }
    } catch (e) {
      failure = e;
    }
    if (failure !== undefined && fp.record.phase === 'writing') {
      // The disk may hold a mix of old and new ranges: the guest must not run on it. Left as it is
      // (paused), with the record, for recover to complete the write with the bundle.
      fp.keepRecord = true;
      throw new TargetError(
        `the write into ${what} failed part-way: ${(failure as Error).message}; the disk may hold some of the bundle's new ranges and some old ones, so the VM was ${pausedAt !== undefined ? 'left paused' : 'left as it was (not running)'}`,
        `once the cause is fixed, run 'vmsubst recover --qmp ${c.qmpPath}${c.stateDir !== undefined ? ` --state-dir ${c.stateDir}` : ''}': it completes the write with the bundle, then resumes the VM (or apply the same bundle again, which recovers first)`,
        { cause: failure },
      );
    }
    if (pausedAt !== undefined) {
      try {
        await qemu.cont();
      } catch (e) {
        fp.keepRecord = true;
        const before = failure instanceof Error ? ` (after: ${failure.message})` : '';
        throw new TargetError(`could not resume the VM: ${(e as Error).message}${before}`, `the VM is paused: resume it with {"execute":"cont"} on ${c.qmpPath}, or run 'vmsubst recover --qmp ${c.qmpPath}'`, { cause: e });
      }
      pauseMs = ms(performance.now() - pausedAt);
      await fp.setPaused(false);
    }
    if (failure !== undefined) throw failure;
    // Durability: the guest reads the new blocks from QEMU already; the flush only makes them survive a host crash.
    if (mode === 'nbd' && written.rangesWritten > 0) {
      await nbd.flush();
      await fp.setPhase('written');
    }
    const write = ms(performance.now() - t1);
    if (overlay) {
      // Into the overlay, which the drive now reads first.
      written.bytesWritten = manifest.ranges.filter((_r, i) => states[i] === 'old').reduce((n, r) => n + r.length, 0);
    }
    succeeded = true;
    return {
      ...base,
      status: 'applied',
      rangesWritten: written.rangesWritten,
      rangesAlreadyNew: alreadyNew(states),
      bytesWritten: written.bytesWritten,
      verifiedBytes,
      timingsMs: { verify, write },
      pauseMs,
      windowMs,
      recheck,
      resumed: pausedAt !== undefined,
      ...(overlay ? { overlay } : {}),
    };
  } finally {
    base.warnings.push(...(await fp.cleanUp(succeeded)));
  }
}

/** nbd-server-start in the recorded directory, block-export-add, block-dirty-bitmap-add, and the NBD connection. */
async function exportDrive(qemu: Qemu, fp: Footprint, manifest: Manifest, what: string, writable: boolean): Promise<{ target: BlockTarget; nbd: NbdClient }> {
  const rec = fp.record;
  await mkdir(rec['socket-dir'], { mode: 0o700 });
  fp.present.socketDir = true;
  try {
    await qemu.nbdServerStartUnix(rec['nbd-socket']);
  } catch (e) {
    if (e instanceof QmpError && /already running/i.test(e.desc)) {
      throw new TargetError(
        'an NBD server is already running in this QEMU (QEMU has only one), so vmsubst cannot export the drive',
        'another job (a backup, a migration, another vmsubst) is using it: wait for it to finish, or stop it with nbd-server-stop if it is stale',
        { cause: e },
      );
    }
    throw e;
  }
  fp.present.nbdServer = true;
  try {
    await qemu.blockExportAdd({ id: rec.export, nodeName: rec.node, name: rec.export, writable });
  } catch (e) {
    if (e instanceof QmpError && /permission|conflict|share-rw/i.test(e.desc)) {
      throw new TargetError(
        `QEMU refused a writable export of ${what}: ${e.desc}`,
        'the virtio-blk device must share write access: start it with share-rw=on (-device virtio-blk-pci,drive=…,share-rw=on), or hot-plug it again with that property; or use --mode overlay, which does not write into the drive',
        { cause: e },
      );
    }
    throw e;
  }
  fp.present.export = true;
  await qemu.dirtyBitmapAdd(rec.node, rec.bitmap);
  fp.present.bitmap = true;
  // The same query is made inside the pause: made once now, its reply's validator is compiled
  // (tens of ms on the first use in a process) while the guest runs.
  await qemu.dirtyBytes(rec.node, rec.bitmap);

  const nbd = await NbdClient.connect(rec['nbd-socket'], { exportName: rec.export });
  fp.nbd = nbd;
  checkTargetSize(manifest, nbd.size, `the NBD export of ${what}`);
  if (writable && nbd.readOnly) throw new TargetError(`QEMU exported ${what} read-only`);
  return { nbd, target: { size: nbd.size, read: (o, l) => nbd.read(o, l), write: (o, d) => nbd.write(o, d), flush: () => nbd.flush() } };
}

/** Writes the overlay file beside its destination and opens it as a node (blockdev-add, no backing yet). */
async function addOverlay(bundle: BundleData, qemu: Qemu, fp: Footprint, drive: ResolvedDrive): Promise<OverlayOutcome> {
  const ov = fp.record.overlay!;
  const clusterSize = alignedClusterSize(bundle.manifest);
  const backing = { name: drive.filename, format: drive.format };
  fp.present.overlayFile = true; // buildOverlay removes what it wrote if it fails; a crash leaves it for recover
  await buildOverlay(bundle, ov.path, { clusterSize, backing });
  await qemu.blockdevAddQcow2(ov.node, ov.path);
  fp.present.overlayNode = true;
  return { path: ov.path, node: ov.node, clusterSize, backing, committed: false };
}

/**
 * Commits the overlay an overlay-mode apply left in use (see commitOverlay),
 * over `qemu` or a new connection to the result's QMP socket. A failure is
 * added to the result's warnings: the overlay stays in use, which is consistent.
 */
export async function commitApplied(qemu: Qemu | undefined, result: QemuApplyResult, timeoutMs = 600_000): Promise<void> {
  const overlay = result.overlay;
  if (!overlay || overlay.committed) return;
  let own: QmpClient | undefined;
  try {
    if (!qemu) {
      own = await QmpClient.connect(result.target.qmp);
      qemu = new Qemu(own);
    }
    const t = performance.now();
    await commitOverlay(qemu, overlay, result.target.node, timeoutMs);
    overlay.committed = true;
    overlay.commitMs = ms(performance.now() - t);
  } catch (e) {
    result.warnings.push(
      `commit: ${(e as Error).message}; the overlay stays in use (the guest sees the new blocks either way): commit it later with block-commit, see docs/apply-modes.md`,
    );
  } finally {
    own?.close();
  }
}

/**
 * Merges an overlay into the node below it while the guest runs (an active
 * block-commit: a mirror of the overlay into its backing node), pivots the
 * drive back to that node (block-job-complete), deletes the overlay node and
 * removes its file. A failure leaves the overlay in use, which is consistent.
 */
export async function commitOverlay(qemu: Qemu, overlay: OverlayOutcome, baseNode: string, timeoutMs: number): Promise<void> {
  const job = `${overlay.node}-commit`;
  const events = jobEvents(qemu, job, timeoutMs);
  try {
    await qemu.qmp.execute('block-commit', { 'job-id': job, device: overlay.node, 'base-node': baseNode });
    await events.next('BLOCK_JOB_READY');
    await qemu.qmp.execute('block-job-complete', { device: job });
    const done = await events.next('BLOCK_JOB_COMPLETED');
    const error = done.data?.['error'];
    if (typeof error === 'string') throw new TargetError(`block-commit failed: ${error}`);
  } finally {
    events.close();
  }
  await qemu.blockdevDel(overlay.node);
  await unlink(overlay.path);
}

/** Collects a block job's events from the moment it is called, so none is missed between commands. */
function jobEvents(qemu: Qemu, job: string, timeoutMs: number): { next(name: string): Promise<QmpEvent>; close(): void } {
  const seen: QmpEvent[] = [];
  let wake: (() => void) | undefined;
  const onEvent = (e: QmpEvent): void => {
    if (e.data?.['device'] !== job) return;
    seen.push(e);
    wake?.();
  };
  qemu.qmp.on('event', onEvent);
  const deadline = Date.now() + timeoutMs;
  return {
    async next(name) {
      for (;;) {
        const i = seen.findIndex((e) => e.event === name || e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_CANCELLED' || e.event === 'BLOCK_JOB_ERROR');
        if (i >= 0) {
          const e = seen.splice(i, 1)[0]!;
          if (e.event !== name) {
            const error = e.data?.['error'];
            throw new TargetError(`block job ${job}: ${e.event}${typeof error === 'string' ? `: ${error}` : ''} while waiting for ${name}`);
          }
          return e;
        }
        const left = deadline - Date.now();
        if (left <= 0) throw new TargetError(`block job ${job}: no ${name} within ${timeoutMs} ms`, `the job is still running: see query-block-jobs; cancel it with block-job-cancel ${job}`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
    },
    close() {
      qemu.qmp.off('event', onEvent);
    },
  };
}
