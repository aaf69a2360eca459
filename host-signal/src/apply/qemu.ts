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
import { lstat, realpath, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { CancelledError, TargetError } from '../errors.js';
import { NbdClient, REQUEST_BYTES } from '../nbd/client.js';
import { QmpClient } from '../qmp/client.js';
import { MIGRATION_STATES, Qemu, type BlockInfo, type StatusInfo } from '../qmp/commands.js';
import type { Manifest } from '@vmsubst/common/bundle/schema';
import type { QmpEvent } from '../qmp/client.js';
import {
  checkTargetSize,
  inspectTarget,
  loadRanges,
  ms,
  nothingDone,
  refuseMismatch,
  writeRanges,
  type ApplyProgress,
  type BlockTarget,
  type BundleData,
  type RangeState,
  type Substitution,
} from './core.js';
import { alignedClusterSize, buildOverlay } from './overlay.js';
import { deferRemoval, nbdTarget, openExport, recoverVm, type Present, type RecoveryReport } from './recover.js';
import { processStart, stateDir, StateStore, type ApplyRecord, type ApplyRecordPhase } from './state-file.js';
import { UndoStack } from './undo.js';

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
  /**
   * Where the private NBD socket directory is made; default os.tmpdir(). QEMU must be able to create a socket there.
   */
  workDir?: string;
  /**
   * Where the per-VM state file goes (what the apply is about to make, for recovery after a crash); default
   * VMSUBST_STATE_DIR or /run/vmsubst.
   */
  stateDir?: string;
  /** QMP connect/greeting timeout; default 10 s. */
  timeoutMs?: number;
  /** How long a --commit may take; default 10 min. */
  commitTimeoutMs?: number;
  /** QEMU's user and group, when QEMU does not run as this process's (it creates the NBD socket). */
  socketOwner?: { uid: number; gid: number };
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
  /**
   * How long the guest was paused (stop sent → cont answered), in ms; null when it was not running and was left as it
   * was.
   */
  pauseMs: number | null;
  /** How long the disk held some new ranges and some old ones: the writes (nbd), 0 for the atomic switch (overlay). */
  windowMs: number | null;
  /**
   * At the pause: 'clean' (no guest write since the verification) or 'reverified' (there was one: verified again while
   * paused).
   */
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
      throw new TargetError(
        `QEMU has no block node named '${selector.node}'`,
        names.length ? `named nodes: ${names.join(', ')}` : 'QEMU reports no named block nodes',
      );
    }
    const attached = (await qemu.queryBlock()).find((b) => b.inserted?.['node-name'] === selector.node);
    const drive: ResolvedDrive = {
      nodeName: selector.node,
      size: node.image['virtual-size'],
      readOnly: node.ro,
      filename: node.file,
      format: node.drv,
    };
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
      throw new TargetError(
        `QEMU has no block device '${id}'`,
        candidates.length
          ? `block devices: ${candidates.map(describe).join(', ')}`
          : 'this VM has no block devices with a medium',
      );
    }
    if (!chosen.inserted) throw new TargetError(`block device '${id}' has no medium inserted`);
  } else {
    if (candidates.length !== 1) {
      throw new TargetError(
        candidates.length === 0
          ? 'this VM has no block device with a medium'
          : `this VM has ${candidates.length} block devices; say which one`,
        candidates.length ? `use --device or --node; block devices: ${candidates.map(describe).join(', ')}` : undefined,
      );
    }
    chosen = candidates[0]!;
  }
  const inserted = chosen.inserted!;
  const nodeName = inserted['node-name'];
  if (!nodeName)
    throw new TargetError(
      `block device '${deviceId(chosen)}' has no node name`,
      'use --node with the name of its format node',
    );
  const drive: ResolvedDrive = {
    nodeName,
    size: inserted.image['virtual-size'],
    readOnly: inserted.ro,
    filename: inserted.file,
    format: inserted.drv,
  };
  const dev = deviceId(chosen);
  if (dev !== undefined) drive.device = dev;
  return drive;
}

/** Where the overlay goes by default: beside the drive's image, named after it and the bundle. */
export function defaultOverlayPath(drive: ResolvedDrive, id: string): string {
  if (!isAbsolute(drive.filename)) {
    throw new TargetError(
      `the drive's image is not a local file (${drive.filename.slice(0, 80)}), so there is no default place for ` +
        `the overlay`,
      'give --overlay PATH, a new file QEMU can open',
    );
  }
  return join(dirname(drive.filename), `${basename(drive.filename)}.vmsubst-${id.slice(0, 12)}.qcow2`);
}

/**
 * A fault-injection point for the crash-recovery tests (VMSUBST_FAULT): the process kills itself there, as a
 * SIGKILL from outside would. crash-mid-write: the first NBD write request (REQUEST_BYTES at most) is written,
 * then the process dies; no other write is sent.
 */
export type ApplyFault = 'crash-while-paused' | 'crash-after-overlay-add' | 'crash-mid-write';

function faultPoint(at: ApplyFault): void {
  if (process.env['VMSUBST_FAULT'] === at) process.kill(process.pid, 'SIGKILL');
}

/**
 * The target, or with VMSUBST_FAULT=crash-mid-write one that dies after its first write request (the others
 * wait for that).
 */
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
 * (written before it makes any of it, see state-file.ts) and the undo stack
 * on which each of those things registers its removal the moment it exists.
 * The state file's own removal is registered first, so it runs last: the file
 * stays when anything could not be removed, or when the VM must not simply
 * run on (keepRecord), so that `vmsubst recover` can finish the job.
 */
class Footprint {
  readonly undo = new UndoStack();
  private readonly warnings: string[] = [];
  private keep = false;

  private constructor(
    readonly qemu: Qemu,
    private readonly store: StateStore,
    readonly file: string,
    readonly record: ApplyRecord,
  ) {
    this.undo.defer('state file', (failed) => this.removeRecord(failed));
  }

  static async record(qemu: Qemu, store: StateStore, record: ApplyRecord): Promise<Footprint> {
    const file = await store.fileFor(record.qmp);
    await store.write(file, record);
    return new Footprint(qemu, store, file, record);
  }

  /** Registers the removal of one of the recorded objects, just made (see deferRemoval). */
  made(what: keyof Present): () => void {
    return deferRemoval(this.undo, this.qemu, this.record, what);
  }

  /** A problem of the clean-up that does not affect the result. */
  warn(text: string): void {
    this.warnings.push(text);
  }

  /** Keep the state file whatever the clean-up does (the VM was left paused, or could not be resumed). */
  keepRecord(): void {
    this.keep = true;
  }

  /** Records that the apply has (or no longer has) the VM paused. */
  async setPaused(paused: boolean): Promise<void> {
    this.record.paused = paused;
    await this.store.write(this.file, this.record);
  }

  /** Records where the write is. */
  async setPhase(phase: ApplyRecordPhase): Promise<void> {
    this.record.phase = phase;
    await this.store.write(this.file, this.record);
  }

  /** Undoes what exists of the footprint, last made first; what could not be undone comes back as warnings. */
  async cleanUp(): Promise<string[]> {
    const { failed } = await this.undo.unwind();
    return [...failed, ...this.warnings];
  }

  private async removeRecord(failed: readonly string[]): Promise<void> {
    if (failed.length > 0 || this.keep) {
      this.store.release(this.file);
      if (failed.length > 0) {
        this.warn(
          `the state file ${this.file} is kept: run 'vmsubst recover --qmp ${this.record.qmp}' once the cause is fixed`,
        );
      }
      return;
    }
    await this.store
      .remove(this.file)
      .catch((e: Error) => this.warn(`removing the state file ${this.file}: ${e.message}`));
  }
}

export async function applyToQemu(
  bundle: BundleData,
  qmpPath: string,
  options: QemuApplyOptions = {},
): Promise<QemuApplyResult> {
  const qmp = await QmpClient.connect(qmpPath, options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {});
  try {
    return await applyToMonitor(bundle, new Qemu(qmp), qmpPath, options);
  } finally {
    qmp.close();
  }
}

/**
 * applyToQemu over a monitor that is already open (QMP reached through libvirt: --allow-taint); `label` names the VM
 * in its state file and results, as the QMP socket's path does.
 */
export async function applyToMonitor(
  bundle: BundleData,
  qemu: Qemu,
  label: string,
  options: QemuApplyOptions = {},
): Promise<QemuApplyResult> {
  const started = performance.now();
  const mode = checkRequest(bundle, options);
  const store = new StateStore(stateDir(options.stateDir));
  const result = await applyOver(bundle, qemu, store, { ...options, qmpPath: label, mode });
  // --commit: merged over the same connection, once the apply has removed what it made.
  if (result.overlay && options.commit) await commitApplied(qemu, result, options.commitTimeoutMs);
  return { ...result, elapsedMs: Math.round(performance.now() - started) };
}

/** The request itself: a verified bundle, and the overlay's options only with the overlay mode. */
function checkRequest(bundle: BundleData, options: QemuApplyOptions): QemuMode {
  const mode = options.mode ?? 'nbd';
  if (!bundle.verified)
    throw new TargetError("the bundle's data has not been verified", 'open the bundle with data verification');
  if (mode !== 'overlay' && (options.overlayPath !== undefined || options.commit)) {
    throw new TargetError('an overlay path and commit go with the overlay mode only');
  }
  return mode;
}

interface ApplyContext extends QemuApplyOptions {
  qmpPath: string;
  mode: QemuMode;
}

/** Steps 1 and 2 (recover, find the drive), then the change, over an open QMP connection. */
async function applyOver(bundle: BundleData, qemu: Qemu, store: StateStore, c: ApplyContext): Promise<QemuApplyResult> {
  const { manifest } = bundle;
  // 1. What an earlier apply on this VM left behind (it was killed) goes first.
  // An interrupted write of this very bundle is completed with it (already open and verified).
  const recovery = await recoverVm(qemu, c.qmpPath, store, { bundle });
  const { status, drive, what } = await findDrive(qemu, manifest, c);
  const base = baseResult(manifest, c, status, drive, recovery);
  if (manifest.ranges.length === 0) return base;
  const overlayPath = await newOverlayPath(manifest, c, drive);
  if (c.signal?.aborted) throw new CancelledError();
  return changeDrive(bundle, qemu, store, { ...c, drive, what, status, base, overlayPath });
}

/** 2. The VM and the drive: not migrating, the base's size, writable for the nbd mode. */
async function findDrive(
  qemu: Qemu,
  manifest: Manifest,
  c: ApplyContext,
): Promise<{ status: StatusInfo; drive: ResolvedDrive; what: string }> {
  const status = await qemu.queryStatus();
  if (MIGRATION_STATES.has(status.status)) {
    throw new TargetError(
      `the VM is in state '${status.status}'; its disk must not be written now`,
      'apply before or after the migration, on the host where the VM runs',
    );
  }
  const drive = await resolveDrive(qemu, c);
  const what = `drive ${drive.device ?? drive.nodeName}`;
  if (drive.size !== undefined) checkTargetSize(manifest, drive.size, what);
  if (drive.readOnly && c.mode === 'nbd') {
    throw new TargetError(
      `${what} is read-only in QEMU`,
      'attach the disk read-write (the guest may still mount it read-only), or use --mode overlay, which does not ' +
        'write into it',
    );
  }
  return { status, drive, what };
}

/** The result of an apply that changes nothing; the others add to it. */
function baseResult(
  manifest: Manifest,
  c: ApplyContext,
  status: StatusInfo,
  drive: ResolvedDrive,
  recovery: RecoveryReport,
): QemuApplyResult {
  return {
    id: manifest.id,
    mode: c.mode,
    target: {
      kind: 'qemu',
      qmp: c.qmpPath,
      node: drive.nodeName,
      ...(drive.device !== undefined ? { device: drive.device } : {}),
    },
    vmStatus: status.status,
    ...nothingDone(manifest),
    pauseMs: null,
    windowMs: null,
    recheck: null,
    resumed: false,
    elapsedMs: 0,
    warnings: [],
    ...(recovery.status !== 'nothing-to-do' ? { recovered: recovery } : {}),
  };
}

/** The overlay mode's new file: --overlay, or beside the drive's image; never one that exists. */
async function newOverlayPath(manifest: Manifest, c: ApplyContext, drive: ResolvedDrive): Promise<string | undefined> {
  if (c.mode !== 'overlay') return undefined;
  const path = c.overlayPath ?? defaultOverlayPath(drive, manifest.id);
  if (
    await lstat(path).then(
      () => true,
      () => false,
    )
  ) {
    throw new TargetError(
      `${path} exists already`,
      'an overlay is a new file, never a replaced one: choose another --overlay path, or remove this one',
    );
  }
  return path;
}

interface ChangeContext extends ApplyContext {
  drive: ResolvedDrive;
  /** "drive ID", for messages. */
  what: string;
  status: StatusInfo;
  /** The result so far; the clean-up's warnings are added to its `warnings`. */
  base: QemuApplyResult;
  overlayPath: string | undefined;
}

/** Steps 3 to 8: record, export, verify, prepare, pause and change, finish; then clean up (docs/apply-modes.md). */
async function changeDrive(
  bundle: BundleData,
  qemu: Qemu,
  store: StateStore,
  c: ChangeContext,
): Promise<QemuApplyResult> {
  // 3. The record of everything the apply is about to make, before it makes any of it.
  const fp = await Footprint.record(qemu, store, await applyRecord(bundle, qemu, c));
  try {
    return await changeRecorded(bundle, fp, c);
  } finally {
    c.base.warnings.push(...(await fp.cleanUp()));
  }
}

/** What the apply is about to make (state-file.ts), under fresh names. */
async function applyRecord(bundle: BundleData, qemu: Qemu, c: ChangeContext): Promise<ApplyRecord> {
  const tag = `vmsubst-${randomBytes(6).toString('hex')}`;
  const socketDir = join(c.workDir ?? tmpdir(), `${tag}.d`);
  return {
    format: 1,
    pid: process.pid,
    'pid-start': processStart(process.pid) ?? '?',
    'started-at': new Date().toISOString(),
    qmp: await realpath(c.qmpPath).catch(() => resolve(c.qmpPath)),
    uuid: await qemu.queryUuid(),
    bundle: { id: bundle.manifest.id, ...(bundle.path !== undefined ? { path: resolve(bundle.path) } : {}) },
    mode: c.mode,
    node: c.drive.nodeName,
    'socket-dir': socketDir,
    'nbd-socket': join(socketDir, 'nbd.sock'),
    export: tag,
    bitmap: tag,
    ...(c.overlayPath !== undefined ? { overlay: { node: `${tag}-overlay`, path: c.overlayPath } } : {}),
    'was-running': c.status.running,
    paused: false,
    phase: 'verifying',
  };
}

/** Steps 4 to 8, each making things that `fp` undoes. */
async function changeRecorded(bundle: BundleData, fp: Footprint, c: ChangeContext): Promise<QemuApplyResult> {
  const { manifest } = bundle;
  // 4. The private NBD server and export, and the bitmap that watches guest writes.
  const s: Steps = { bundle, fp, c, ...(await exportDrive(fp, manifest, c.what, c.mode === 'nbd', c.socketOwner)) };

  // 5. Verify while the guest runs.
  const live = await verifyRanges(manifest, s.target, c.onProgress);
  if (countOf(live.states, 'new') === manifest.ranges.length) {
    const timingsMs = { verify: live.verifyMs, write: 0 };
    return {
      ...c.base,
      status: 'already-applied',
      rangesAlreadyNew: manifest.ranges.length,
      verifiedBytes: live.verifiedBytes,
      timingsMs,
    };
  }
  if (c.signal?.aborted) throw new CancelledError();
  if (c.beforeWrite) await c.beforeWrite();

  // 6. Everything the pause needs, made ready while the guest runs.
  const ready = await prepareChange(s, live);

  // 7. The pause: confirm the verification still holds, change the disk, resume.
  const changed = await pauseAndChange(s, live, ready);

  // 8. Durability and the result.
  return finish(s, changed, ready);
}

/** What every step from the export on works with. */
interface Steps {
  bundle: BundleData;
  fp: Footprint;
  c: ChangeContext;
  /** The drive, through the NBD export. */
  target: BlockTarget;
  nbd: NbdClient;
}

const countOf = (states: readonly RangeState[], state: RangeState): number => states.filter((s) => s === state).length;

/** The ranges' states as read from the target, checked to be old or new. */
interface Verified {
  states: RangeState[];
  verifiedBytes: number;
  /** Time spent verifying, this and any earlier verification of the same apply. */
  verifyMs: number;
}

async function verifyRanges(
  manifest: Manifest,
  target: BlockTarget,
  onProgress?: ApplyProgress,
  spentMs = 0,
): Promise<Verified> {
  const t = performance.now();
  const { states, verifiedBytes } = await inspectTarget(manifest, target, onProgress);
  const verifyMs = ms(spentMs + performance.now() - t);
  refuseMismatch(manifest, states);
  return { states, verifiedBytes, verifyMs };
}

/** 4. nbd-server-start in the recorded directory, block-export-add, block-dirty-bitmap-add, and the NBD connection. */
async function exportDrive(
  fp: Footprint,
  manifest: Manifest,
  what: string,
  writable: boolean,
  owner?: { uid: number; gid: number },
): Promise<{ target: BlockTarget; nbd: NbdClient }> {
  const { qemu, record: rec } = fp;
  await openExport(
    qemu,
    rec,
    fp.undo,
    writable,
    {
      busy: (e) =>
        new TargetError(
          'an NBD server is already running in this QEMU (QEMU has only one), so vmsubst cannot export the drive',
          'another job (a backup, a migration, another vmsubst) is using it: wait for it to finish, or stop it with ' +
            'nbd-server-stop if it is stale',
          { cause: e },
        ),
      refused: (e) =>
        new TargetError(
          `QEMU refused a writable export of ${what}: ${e.desc}`,
          'the virtio-blk device must share write access: start it with share-rw=on ' +
            '(-device virtio-blk-pci,drive=…,share-rw=on), or hot-plug it again with that property; ' +
            'or use --mode overlay, which does not write into the drive',
          { cause: e },
        ),
    },
    owner,
  );
  await qemu.dirtyBitmapAdd(rec.node, rec.bitmap);
  fp.made('bitmap');
  // The same query is made inside the pause: made once now, its reply's validator is compiled
  // (tens of ms on the first use in a process) while the guest runs.
  await qemu.dirtyBytes(rec.node, rec.bitmap);

  const nbd = await NbdClient.connect(rec['nbd-socket'], { exportName: rec.export });
  fp.undo.defer('NBD connection', () => nbd.disconnect().catch((e: Error) => fp.warn(`NBD disconnect: ${e.message}`)));
  checkTargetSize(manifest, nbd.size, `the NBD export of ${what}`);
  if (writable && nbd.readOnly) throw new TargetError(`QEMU exported ${what} read-only`);
  return { nbd, target: nbdTarget(nbd) };
}

/** What the pause needs: the overlay node (overlay mode), or the new bytes read ahead when they are few (nbd). */
interface Ready {
  overlay?: { outcome: OverlayOutcome; handOver: () => void };
  preloaded?: Awaited<ReturnType<typeof loadRanges>>;
}

/** 6. The overlay made and opened, or the data read ahead; and QEMU's drives flushed. */
async function prepareChange({ bundle, fp, c, nbd }: Steps, live: Verified): Promise<Ready> {
  const ready: Ready =
    c.mode === 'overlay'
      ? { overlay: await addOverlay(bundle, fp, c.drive) }
      : { preloaded: await loadRanges(bundle, live.states) };
  if (ready.overlay) faultPoint('crash-after-overlay-add');
  // `stop` flushes every drive of the VM: flushing now, while the guest runs, leaves that flush
  // little to write. (A read-only export may not offer flush; then the pause pays for it.)
  if (nbd.canFlush) await nbd.flush();
  return ready;
}

/**
 * Writes the overlay file beside its destination and opens it as a node (blockdev-add, no backing yet).
 * `handOver` forgets their removal once the overlay is the drive's top layer.
 */
async function addOverlay(
  bundle: BundleData,
  fp: Footprint,
  drive: ResolvedDrive,
): Promise<NonNullable<Ready['overlay']>> {
  const ov = fp.record.overlay!;
  const clusterSize = alignedClusterSize(bundle.manifest);
  const backing = { name: drive.filename, format: drive.format };
  // buildOverlay removes what it wrote if it fails; a crash leaves it for recover
  const forgetFile = fp.made('overlayFile');
  await buildOverlay(bundle, ov.path, { clusterSize, backing });
  await fp.qemu.blockdevAddQcow2(ov.node, ov.path);
  const forgetNode = fp.made('overlayNode');
  return {
    outcome: { path: ov.path, node: ov.node, clusterSize, backing, committed: false },
    handOver: () => {
      forgetNode();
      forgetFile();
    },
  };
}

type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown };
const settle = <T>(p: Promise<T>): Promise<Settled<T>> =>
  p.then(
    (value): Settled<T> => ({ ok: true, value }),
    (error: unknown): Settled<T> => ({ ok: false, error }),
  );

/** What the pause did to the disk. */
interface Changed {
  /** The verification the change relied on: the one made while the guest ran, or again inside the pause. */
  verified: Verified;
  recheck: 'clean' | 'reverified';
  written: { rangesWritten: number; bytesWritten: number };
  windowMs: number | null;
  /** When the change began (performance.now()). */
  changeStart: number;
}

/**
 * 7. Pauses the guest (when it runs), changes the disk, resumes it. A write
 * that failed part-way leaves the VM held, with the record, for recover.
 */
async function pauseAndChange(
  s: Steps,
  live: Verified,
  ready: Ready,
): Promise<Changed & { pauseMs: number | null; resumed: boolean }> {
  const { fp, c } = s;
  const running = c.status.running;
  if (running) await fp.setPaused(true);
  const pausedAt = running ? performance.now() : undefined;
  const change = await settle(changePaused(s, live, ready));
  if (!change.ok && fp.record.phase === 'writing') {
    // The disk may hold a mix of old and new ranges: the guest must not run on it. Left as it is
    // (paused), with the record, for recover to complete the write with the bundle.
    fp.keepRecord();
    throw partWay(c, change.error, pausedAt !== undefined);
  }
  const pauseMs = pausedAt !== undefined ? await resume(fp, c, pausedAt, change) : null;
  if (!change.ok) throw change.error;
  return { ...change.value, pauseMs, resumed: pausedAt !== undefined };
}

/** Inside the pause: the bitmap says whether the verification still holds; then the switch, or the write. */
async function changePaused({ bundle, fp, c, target }: Steps, live: Verified, ready: Ready): Promise<Changed> {
  const { manifest } = bundle;
  // QMP runs one monitor's commands in order, so the bitmap is read after `stop` has
  // drained the guest's I/O; sending both at once saves a round trip inside the pause.
  const stop = c.status.running ? fp.qemu.stop() : Promise.resolve();
  const [, dirty] = await Promise.all([stop, fp.qemu.dirtyBytes(c.drive.nodeName, fp.record.bitmap)]);
  faultPoint('crash-while-paused');
  // The guest wrote to the disk since the verification: verify again, now that it cannot.
  const recheck = dirty === 0 ? 'clean' : 'reverified';
  const verified = dirty === 0 ? live : await verifyRanges(manifest, target, undefined, live.verifyMs);
  const changeStart = performance.now();
  const unchanged = { verified, recheck, changeStart } as const;
  if (ready.overlay) {
    await fp.qemu.blockdevSnapshot(c.drive.nodeName, ready.overlay.outcome.node);
    ready.overlay.handOver();
    return { ...unchanged, windowMs: 0, written: { rangesWritten: countOf(verified.states, 'old'), bytesWritten: 0 } };
  }
  if (countOf(verified.states, 'new') === manifest.ranges.length) {
    return { ...unchanged, windowMs: null, written: { rangesWritten: 0, bytesWritten: 0 } };
  }
  // From here the disk may hold a mix: recorded before the first write request, so that
  // recovery completes the write before it resumes the guest.
  await fp.setPhase('writing');
  const written = await writeRanges(bundle, faultedWrites(target), verified.states, {
    flush: false,
    ...(ready.preloaded ? { preloaded: ready.preloaded } : {}),
    ...(c.onProgress ? { onProgress: c.onProgress } : {}),
  });
  return { ...unchanged, windowMs: ms(performance.now() - changeStart), written };
}

/** The error of a write that failed part-way, the VM held. */
function partWay(c: ChangeContext, failure: unknown, paused: boolean): TargetError {
  const stateDirOption = c.stateDir !== undefined ? ` --state-dir ${c.stateDir}` : '';
  return new TargetError(
    `the write into ${c.what} failed part-way: ${(failure as Error).message}; the disk may hold some of the ` +
      `bundle's new ranges and some old ones, so the VM was ${paused ? 'left paused' : 'left as it was (not running)'}`,
    `once the cause is fixed, run 'vmsubst recover --qmp ${c.qmpPath}${stateDirOption}': it completes the write ` +
      'with the bundle, then resumes the VM (or apply the same bundle again, which recovers first)',
    { cause: failure },
  );
}

/** `cont`, then the record says the VM runs again; returns how long it was paused. A failure keeps the record. */
async function resume(fp: Footprint, c: ChangeContext, pausedAt: number, change: Settled<unknown>): Promise<number> {
  try {
    await fp.qemu.cont();
  } catch (e) {
    fp.keepRecord();
    const before = !change.ok && change.error instanceof Error ? ` (after: ${change.error.message})` : '';
    throw new TargetError(
      `could not resume the VM: ${(e as Error).message}${before}`,
      `the VM is paused: resume it with {"execute":"cont"} on ${c.qmpPath}, or run 'vmsubst recover --qmp ` +
        `${c.qmpPath}'`,
      { cause: e },
    );
  }
  const pauseMs = ms(performance.now() - pausedAt);
  await fp.setPaused(false);
  return pauseMs;
}

/** 8. The nbd mode's flush (durability: the guest reads the new blocks from QEMU already), and the result. */
async function finish(
  { bundle, fp, c, nbd }: Steps,
  changed: Changed & { pauseMs: number | null; resumed: boolean },
  ready: Ready,
): Promise<QemuApplyResult> {
  const { manifest } = bundle;
  const { verified, written } = changed;
  if (c.mode === 'nbd' && written.rangesWritten > 0) {
    await nbd.flush();
    await fp.setPhase('written');
  }
  const write = ms(performance.now() - changed.changeStart);
  const overlay = ready.overlay?.outcome;
  // Overlay: the bytes went into the overlay, which the drive now reads first.
  const bytesWritten = overlay
    ? manifest.ranges.filter((_r, i) => verified.states[i] === 'old').reduce((n, r) => n + r.length, 0)
    : written.bytesWritten;
  return {
    ...c.base,
    status: 'applied',
    rangesWritten: written.rangesWritten,
    rangesAlreadyNew: countOf(verified.states, 'new'),
    bytesWritten,
    verifiedBytes: verified.verifiedBytes,
    timingsMs: { verify: verified.verifyMs, write },
    pauseMs: changed.pauseMs,
    windowMs: changed.windowMs,
    recheck: changed.recheck,
    resumed: changed.resumed,
    ...(overlay ? { overlay } : {}),
  };
}

/**
 * Commits the overlay an overlay-mode apply left in use (see commitOverlay),
 * over `qemu` or a new connection to the result's QMP socket. A failure is
 * added to the result's warnings: the overlay stays in use, which is consistent.
 */
export async function commitApplied(
  qemu: Qemu | undefined,
  result: QemuApplyResult,
  timeoutMs = 600_000,
): Promise<void> {
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
      `commit: ${(e as Error).message}; the overlay stays in use (the guest sees the new blocks either way): ` +
        `commit it later with block-commit, see docs/apply-modes.md`,
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
export async function commitOverlay(
  qemu: Qemu,
  overlay: OverlayOutcome,
  baseNode: string,
  timeoutMs: number,
): Promise<void> {
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
function jobEvents(
  qemu: Qemu,
  job: string,
  timeoutMs: number,
): { next(name: string): Promise<QmpEvent>; close(): void } {
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
        const i = seen.findIndex(
          (e) =>
            e.event === name ||
            e.event === 'BLOCK_JOB_COMPLETED' ||
            e.event === 'BLOCK_JOB_CANCELLED' ||
            e.event === 'BLOCK_JOB_ERROR',
        );
        if (i >= 0) {
          const e = seen.splice(i, 1)[0]!;
          if (e.event !== name) {
            const error = e.data?.['error'];
            throw new TargetError(
              `block job ${job}: ${e.event}${typeof error === 'string' ? `: ${error}` : ''} while waiting for ${name}`,
            );
          }
          return e;
        }
        const left = deadline - Date.now();
        if (left <= 0)
          throw new TargetError(
            `block job ${job}: no ${name} within ${timeoutMs} ms`,
            `the job is still running: see query-block-jobs; cancel it with block-job-cancel ${job}`,
          );
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
