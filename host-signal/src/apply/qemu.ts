/**
 * Applying a bundle to a drive of a running QEMU, through QEMU's own block
 * layer so its caches stay coherent: a writable NBD export of the drive's
 * node on a private unix socket, the guest paused (`stop`) while the ranges
 * are verified and written, and resumed (`cont`) whatever happens.
 *
 *   query-status, query-block / query-named-block-nodes   find the node
 *   nbd-server-start {unix: <private dir>/nbd.sock}        QEMU has one NBD server
 *   block-export-add {type: nbd, writable: true}           needs share-rw=on on the device
 *   stop → verify → write → flush → cont                   the pause window
 *   block-export-del, nbd-server-stop, remove the dir
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { CancelledError, QmpError, TargetError } from '../errors.js';
import { NbdClient } from '../nbd/client.js';
import { QmpClient } from '../qmp/client.js';
import { MIGRATION_STATES, Qemu, type BlockInfo } from '../qmp/commands.js';
import { checkTargetSize, substitute, type ApplyProgress, type BlockTarget, type BundleData, type Substitution } from './core.js';

export interface DriveSelector {
  /** qdev id of the device (`-device virtio-blk-pci,id=vblk0`) or a legacy -drive id. */
  device?: string;
  /** Block node name (`-blockdev …,node-name=disk0`). */
  node?: string;
}

export interface QemuApplyOptions extends DriveSelector {
  onProgress?: ApplyProgress;
  /** Cancels before anything is written; once writing has begun it completes. */
  signal?: AbortSignal;
  /** Where the private NBD socket directory is made; default os.tmpdir(). QEMU must be able to create a socket there. */
  workDir?: string;
  /** QMP connect/greeting timeout; default 10 s. */
  timeoutMs?: number;
}

export interface ResolvedDrive {
  nodeName: string;
  /** The device id, when the node is attached to one. */
  device?: string;
  /** Virtual size, when QEMU reported it. */
  size?: number;
  readOnly: boolean;
}

export interface QemuApplyResult extends Substitution {
  id: string;
  target: { kind: 'qemu'; qmp: string; node: string; device?: string };
  /** VM run state before the apply (query-status). */
  vmStatus: string;
  /** How long the guest was paused, in ms; null when it was not running and was left as it was. */
  pauseMs: number | null;
  resumed: boolean;
  elapsedMs: number;
  /** Problems while cleaning up (export, NBD server, temp dir) that did not affect the result. */
  warnings: string[];
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
    const drive: ResolvedDrive = { nodeName: selector.node, size: node.image['virtual-size'], readOnly: node.ro };
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
  const drive: ResolvedDrive = { nodeName, size: inserted.image['virtual-size'], readOnly: inserted.ro };
  const dev = deviceId(chosen);
  if (dev !== undefined) drive.device = dev;
  return drive;
}

export async function applyToQemu(bundle: BundleData, qmpPath: string, options: QemuApplyOptions = {}): Promise<QemuApplyResult> {
  const started = performance.now();
  const { manifest } = bundle;
  const warnings: string[] = [];
  const cleanup = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      warnings.push(`${what}: ${(e as Error).message}`);
    }
  };

  const qmp = await QmpClient.connect(qmpPath, options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {});
  const qemu = new Qemu(qmp);
  let dir: string | undefined;
  let serverStarted = false;
  let exportId: string | undefined;
  let nbd: NbdClient | undefined;
  let result: QemuApplyResult;
  try {
    const status = await qemu.queryStatus();
    if (MIGRATION_STATES.has(status.status)) {
      throw new TargetError(`the VM is in state '${status.status}'; its disk must not be written now`, 'apply before or after the migration, on the host where the VM runs');
    }
    const drive = await resolveDrive(qemu, options);
    const what = `drive ${drive.device ?? drive.nodeName}`;
    if (drive.size !== undefined) checkTargetSize(manifest, drive.size, what);
    if (drive.readOnly) throw new TargetError(`${what} is read-only in QEMU`, 'attach the disk read-write (the guest may still mount it read-only)');
    if (options.signal?.aborted) throw new CancelledError();

    dir = await mkdtemp(join(options.workDir ?? tmpdir(), 'vmsubst-'));
    const socketPath = join(dir, 'nbd.sock');
    try {
      await qemu.nbdServerStartUnix(socketPath);
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
    serverStarted = true;

    const name = `vmsubst-${randomBytes(6).toString('hex')}`;
    try {
      await qemu.blockExportAdd({ id: name, nodeName: drive.nodeName, name, writable: true });
    } catch (e) {
      if (e instanceof QmpError && /permission|conflict|share-rw/i.test(e.desc)) {
        throw new TargetError(
          `QEMU refused a writable export of ${what}: ${e.desc}`,
          'the virtio-blk device must share write access: start it with share-rw=on (-device virtio-blk-pci,drive=…,share-rw=on), or hot-plug it again with that property',
          { cause: e },
        );
      }
      throw e;
    }
    exportId = name;

    nbd = await NbdClient.connect(socketPath, { exportName: name });
    checkTargetSize(manifest, nbd.size, `the NBD export of ${what}`);
    if (nbd.readOnly) throw new TargetError(`QEMU exported ${what} read-only`);
    const client = nbd;
    const target: BlockTarget = {
      size: client.size,
      read: (offset, length) => client.read(offset, length),
      write: (offset, data) => client.write(offset, data),
      flush: () => client.flush(),
    };

    if (options.signal?.aborted) throw new CancelledError();
    const wasRunning = status.running;
    let pausedAt: number | undefined;
    let outcome: Substitution | undefined;
    let failure: unknown;
    try {
      if (wasRunning) {
        pausedAt = performance.now();
        await qemu.stop();
      }
      outcome = await substitute(bundle, target, { onProgress: options.onProgress, signal: options.signal });
    } catch (e) {
      failure = e;
    }
    let pauseMs: number | null = null;
    if (pausedAt !== undefined) {
      try {
        await qemu.cont();
      } catch (e) {
        const before = failure instanceof Error ? ` (after: ${failure.message})` : '';
        throw new TargetError(
          `could not resume the VM: ${(e as Error).message}${before}`,
          `the VM is paused: resume it with {"execute":"cont"} on ${qmpPath}`,
          { cause: e },
        );
      }
      pauseMs = Math.round((performance.now() - pausedAt) * 10) / 10;
    }
    if (failure !== undefined) throw failure;
    result = {
      ...outcome!,
      id: manifest.id,
      target: drive.device !== undefined ? { kind: 'qemu', qmp: qmpPath, node: drive.nodeName, device: drive.device } : { kind: 'qemu', qmp: qmpPath, node: drive.nodeName },
      vmStatus: status.status,
      pauseMs,
      resumed: pausedAt !== undefined,
      elapsedMs: 0,
      warnings,
    };
  } finally {
    if (nbd) await cleanup('NBD disconnect', () => nbd!.disconnect());
    if (exportId !== undefined) await cleanup('block-export-del', () => qemu.blockExportDel(exportId!, 'hard'));
    if (serverStarted) await cleanup('nbd-server-stop', () => qemu.nbdServerStop());
    if (dir !== undefined) await cleanup('removing the socket directory', () => rm(dir!, { recursive: true, force: true }));
    qmp.close();
  }
  result.elapsedMs = Math.round(performance.now() - started);
  return result;
}
