/**
 * Removing what an apply created in a VM: the one cleanup helper, used at the
 * end of every apply (removeLeftovers, with what that apply knows it made) and
 * after an apply that died (recoverVm, with what QEMU and the host show is
 * still there of what the state file says it was about to make).
 *
 * What an apply makes, in order: the socket directory, QEMU's NBD server on a
 * socket in it, the export, the dirty bitmap on the drive's node, and in
 * overlay mode the overlay file and its block node; then, around the change,
 * it pauses the VM. Recovery removes, last made first:
 *
 *   overlay node   blockdev-del, only when no device uses it (once
 *                  blockdev-snapshot has run it is the drive's top layer: the
 *                  substitution is in place and the overlay stays)
 *   overlay file   when its node is gone and no process has it open; and the
 *                  writer's temporary file beside it
 *   bitmap         block-dirty-bitmap-remove, when the node has it
 *   export         block-export-del (hard), when QEMU lists it
 *   NBD server     nbd-server-stop, when its socket is in vmsubst's directory
 *                  (QEMU has one server: another job's is never stopped)
 *   socket dir     rm -r
 *
 * and resumes the VM only when the record says the apply paused it (it was
 * running, and `stop` was about to be sent) and QEMU says it is paused.
 */
import { lstat, readdir, rm, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { TargetError } from '../errors.js';
import type { Qemu } from '../qmp/commands.js';
import { fileOpeners } from './locks.js';
import type { ApplyRecord, StateStore } from './state-file.js';

/** Which of an apply's objects exist, so are to be removed. */
export interface Present {
  overlayNode: boolean;
  overlayFile: boolean;
  bitmap: boolean;
  export: boolean;
  nbdServer: boolean;
  socketDir: boolean;
}

export interface Removal {
  /** What was removed, e.g. "export vmsubst-…". */
  removed: string[];
  /** What could not be removed, with QEMU's or the system's reason. */
  failed: string[];
}

/** Removes the objects marked present, last made first. Never throws: failures are listed. */
export async function removeLeftovers(qemu: Qemu, rec: Pick<ApplyRecord, 'node' | 'socket-dir' | 'export' | 'bitmap' | 'overlay'>, present: Present): Promise<Removal> {
  const out: Removal = { removed: [], failed: [] };
  const step = async (on: boolean, what: string, fn: () => Promise<unknown>): Promise<void> => {
    if (!on) return;
    try {
      await fn();
      out.removed.push(what);
    } catch (e) {
      out.failed.push(`${what}: ${(e as Error).message}`);
    }
  };
  const ov = rec.overlay;
  if (ov) {
    await step(present.overlayNode, `overlay node ${ov.node}`, () => qemu.blockdevDel(ov.node));
    await step(present.overlayFile, `overlay file ${ov.path}`, () => removeOverlayFile(ov.path));
  }
  await step(present.bitmap, `dirty bitmap ${rec.node}/${rec.bitmap}`, () => qemu.dirtyBitmapRemove(rec.node, rec.bitmap));
  await step(present.export, `NBD export ${rec.export}`, () => qemu.blockExportDel(rec.export, 'hard'));
  await step(present.nbdServer, 'NBD server', () => qemu.nbdServerStop());
  await step(present.socketDir, `socket directory ${rec['socket-dir']}`, () => rm(rec['socket-dir'], { recursive: true, force: true }));
  return out;
}

/** The overlay, and the qcow2 writer's temporary file beside it (.NAME.XXXXXXXX.tmp) if a build was cut short. */
async function removeOverlayFile(path: string): Promise<void> {
  await unlink(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
  for (const tmp of await writerTemporaries(path)) await unlink(tmp);
}

/** The qcow2 writer's temporary files for `path` (host-signal/src/qcow2/writer.ts names them .NAME.XXXXXXXX.tmp). */
async function writerTemporaries(path: string): Promise<string[]> {
  const prefix = `.${basename(path)}.`;
  const names = await readdir(dirname(path)).catch(() => [] as string[]);
  return names.filter((n) => n.startsWith(prefix) && /^[0-9a-f]{8}\.tmp$/.test(n.slice(prefix.length))).map((n) => join(dirname(path), n));
}

const exists = (path: string): Promise<boolean> => lstat(path).then(() => true, () => false);
const isSocket = (path: string): Promise<boolean> => lstat(path).then((s) => s.isSocket(), () => false);

/** What of the record's objects QEMU and the host still show; `kept` says what stays on purpose, and why. */
export async function findLeftovers(qemu: Qemu, rec: ApplyRecord): Promise<{ present: Present; kept: string[]; switched: boolean }> {
  const kept: string[] = [];
  const nodes = await qemu.queryNamedBlockNodes();
  const exportsNow = await qemu.queryBlockExports();
  const drive = nodes.find((n) => n['node-name'] === rec.node);
  const present: Present = {
    overlayNode: false,
    overlayFile: false,
    bitmap: drive?.['dirty-bitmaps']?.some((b) => b.name === rec.bitmap) ?? false,
    export: exportsNow.some((e) => e.id === rec.export),
    nbdServer: await isSocket(rec['nbd-socket']),
    socketDir: await exists(rec['socket-dir']),
  };
  let switched = false;
  const ov = rec.overlay;
  if (ov) {
    const inUse = (await qemu.queryBlock()).some((b) => b.inserted?.['node-name'] === ov.node);
    if (inUse) {
      switched = true;
      kept.push(`overlay node ${ov.node} (${ov.path}): it is the drive's top layer (the switch completed), so it stays; commit it as after any overlay apply (docs/apply-modes.md)`);
    } else {
      present.overlayNode = nodes.some((n) => n['node-name'] === ov.node);
      // QEMU holds the file while the node exists; anyone else holding it keeps it.
      const held = (await exists(ov.path)) ? (await fileOpeners(ov.path)).filter((o) => !(present.overlayNode && o.comm.startsWith('qemu'))) : [];
      if (held.length > 0) kept.push(`overlay file ${ov.path}: open in ${held.map((o) => `${o.comm}[${o.pid}]`).join(', ')}, so it stays`);
      else present.overlayFile = (await exists(ov.path)) || (await writerTemporaries(ov.path)).length > 0;
    }
  }
  return { present, kept, switched };
}

export interface RecoveryReport {
  /** nothing-to-do: no record; recovered: leftovers removed (or none found) and the record removed; stale: the record was for a VM no longer at this socket. */
  status: 'nothing-to-do' | 'recovered' | 'stale';
  qmp: string;
  stateFile: string;
  /** The interrupted apply, as recorded. */
  interrupted?: { pid: number; startedAt: string; bundle: { id: string; path?: string }; mode: 'nbd' | 'overlay'; node: string };
  removed: string[];
  kept: string[];
  /** `cont` was sent: the apply had paused the VM and it was still paused. */
  resumed: boolean;
  /** query-status after recovery. */
  vmStatus?: string;
  notes: string[];
}

/**
 * Reads the VM's state file and undoes what the apply that wrote it left: see
 * the module comment. Over `qemu`, a connection to the VM at `qmpPath` (QEMU
 * serves one client per monitor socket, so an apply recovers on its own
 * connection). Throws TargetError when that apply is still running, or when
 * something could not be removed (the record is then kept, for another try).
 */
export async function recoverVm(qemu: Qemu, qmpPath: string, store: StateStore): Promise<RecoveryReport> {
  const found = await store.read(qmpPath);
  const report: RecoveryReport = { status: 'nothing-to-do', qmp: qmpPath, stateFile: found?.file ?? (await store.fileFor(qmpPath)), removed: [], kept: [], resumed: false, notes: [] };
  if (!found) return report;
  const { file, record: rec } = found;
  report.interrupted = { pid: rec.pid, startedAt: rec['started-at'], bundle: rec.bundle, mode: rec.mode, node: rec.node };
  if (store.isLive(file, rec)) {
    throw new TargetError(
      `an apply (pid ${rec.pid}, started ${rec['started-at']}) is still working on the VM at ${qmpPath}`,
      'wait for it to finish: it removes what it made itself. Recover only after it has ended (or was killed)',
    );
  }
  const uuid = await qemu.queryUuid();
  if (uuid !== rec.uuid) {
    await store.remove(file);
    report.status = 'stale';
    report.vmStatus = (await qemu.queryStatus()).status;
    report.notes.push(`the VM at this socket (UUID ${uuid}) is not the one the interrupted apply worked on (UUID ${rec.uuid}): what it made went with that VM; the state file was removed`);
    return report;
  }
  report.status = 'recovered';
  let removal: Removal = { removed: [], failed: [] };
  let switched = false;
  try {
    const left = await findLeftovers(qemu, rec);
    report.kept = left.kept;
    switched = left.switched;
    removal = await removeLeftovers(qemu, rec, left.present);
    report.removed = removal.removed;
  } finally {
    // Resumed whatever the removal did: a paused guest is the worst thing to leave.
    const status = await qemu.queryStatus();
    if (rec.paused && rec['was-running'] && status.status === 'paused') {
      await qemu.cont();
      report.resumed = true;
    } else if (rec.paused && rec['was-running']) {
      report.notes.push(`the apply had paused the VM; it is '${status.status}' now (resumed by someone else), so it was left as it is`);
    }
    report.vmStatus = (await qemu.queryStatus()).status;
  }
  // The writes happen inside the pause, or with no pause when the VM was not running.
  if (rec.mode === 'nbd' && (rec.paused || !rec['was-running'])) {
    const how = rec.bundle.path !== undefined ? `apply ${rec.bundle.path} (bundle ${rec.bundle.id.slice(0, 12)}) again` : `apply bundle ${rec.bundle.id.slice(0, 12)} again`;
    report.notes.push(`the apply was interrupted where it may have been writing: the disk may hold some of the bundle's new ranges and some old ones; ${how} to complete it (it writes only the ranges still old), then tell the guest`);
  } else if (switched) {
    report.notes.push('the overlay switch had completed: the bundle\'s blocks are in place; tell the guest (vmsubst notify)');
  } else {
    report.notes.push('the interrupted apply had not changed the disk');
  }
  if (removal.failed.length > 0) {
    throw new TargetError(
      `recovery of the VM at ${qmpPath} could not remove: ${removal.failed.join('; ')}${report.removed.length ? ` (removed: ${report.removed.join(', ')})` : ''}${report.resumed ? '; the VM was resumed' : ''}`,
      `the state file ${file} is kept: fix the cause and run 'vmsubst recover --qmp ${qmpPath}' again`,
    );
  }
  await store.remove(file);
  return report;
}

